"""Engines: `dispatch` (the CLI's one entry for jobs), `recorder` (the one job state machine),
the embedded `local` engine with its `monitor`, the step `context`, and `hatchet/`.

May import: workflows (the registry only, never a workflow module by name), operations, the job
record (`jobs`), `artifacts` and core. Never the CLI.
"""
