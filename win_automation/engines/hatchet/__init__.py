"""The Hatchet engine: the only modules besides adapters that import hatchet_sdk. `client` compiles
workflows and triggers/follows/cancels runs; `runtime` runs a task's step on the worker through the
shared state machine; `worker` is the `win-automation worker` process."""
