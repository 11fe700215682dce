"""The job record: ids, states and transitions, the SQLite journal and its migrations, owner
processes, and the per-VM desktop lock. Imports only core (errors, log, config)."""
