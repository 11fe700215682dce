"""The journal's schema as versioned migrations: MIGRATIONS[n] takes `PRAGMA user_version` n to n+1.

Append a new tuple to change the schema; never edit one that has shipped. Journal.open applies the
missing ones in one exclusive transaction, so opening is idempotent and safe from many processes.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS jobs (
            job_id TEXT PRIMARY KEY, trace_id TEXT NOT NULL, workflow TEXT NOT NULL,
            engine TEXT NOT NULL, external_id TEXT, state TEXT NOT NULL, input_json TEXT NOT NULL,
            error TEXT, error_code INTEGER, created_at REAL NOT NULL, started_at REAL,
            finished_at REAL, updated_at REAL NOT NULL, owner_pid INTEGER, owner_start TEXT,
            owner_host TEXT, heartbeat_at REAL, cancel_requested INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)",
        "CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at)",
        "CREATE INDEX IF NOT EXISTS jobs_external ON jobs(engine, external_id)",
        """CREATE TABLE IF NOT EXISTS steps (
            job_id TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE, name TEXT NOT NULL,
            position INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            output_json TEXT, error TEXT, error_code INTEGER, started_at REAL, finished_at REAL,
            PRIMARY KEY (job_id, name))""",
        """CREATE TABLE IF NOT EXISTS events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, step TEXT,
            state TEXT NOT NULL, attempt INTEGER, message TEXT, ts REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id)",
    ),
    (
        # The owner's fence: every change of owner (resume, or marking a silent owner interrupted)
        # increments it, and an owner's writes carry the epoch it holds.
        "ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1",
    ),
    (
        # The job's artifact folder as an absolute path, recorded when the job is created, so
        # that every command finds it from any working directory (artifacts.out_dir may be
        # relative). NULL for jobs recorded before this column existed.
        "ALTER TABLE jobs ADD COLUMN artifacts_dir TEXT",
    ),
    (
        # The supervisor (jobs/breaker.py, jobs/supervision.py): one circuit breaker per VM, the
        # remediation ledger (claims with a lease, so two supervisors never repair the same thing
        # at once; the per-hour ceiling counts it) and each check's latest result.
        """CREATE TABLE IF NOT EXISTS breakers (
            name TEXT PRIMARY KEY, state TEXT NOT NULL, failures INTEGER NOT NULL DEFAULT 0,
            opened_at REAL, lease_owner TEXT, lease_until REAL, updated_at REAL NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS remediations (
            id INTEGER PRIMARY KEY AUTOINCREMENT, vm TEXT NOT NULL, check_name TEXT NOT NULL,
            action TEXT NOT NULL, owner TEXT NOT NULL, started_at REAL NOT NULL,
            lease_until REAL NOT NULL, finished_at REAL, outcome TEXT, detail TEXT)""",
        "CREATE INDEX IF NOT EXISTS remediations_check ON remediations(vm, check_name, started_at)",
        """CREATE TABLE IF NOT EXISTS check_status (
            vm TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL, cause TEXT, fix TEXT,
            latency_ms REAL, checked_at REAL NOT NULL, last_success_at REAL, last_error TEXT,
            last_error_at REAL, consecutive_failures INTEGER NOT NULL DEFAULT 0,
            remediations INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (vm, name))""",
    ),
)
