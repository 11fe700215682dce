"""The Hatchet engine: the only modules besides adapters that import hatchet_sdk. `client` compiles
workflows and translates the engine's errors; `runs` triggers, follows and cancels runs; `runtime`
runs a task's step on the worker through the shared state machine; `worker` is the
`win-automation worker` process."""
