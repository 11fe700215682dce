"""Engines that run the workflow definitions: `local` (embedded, in-process, SQLite journal) here;
the Hatchet adapter and worker sit next to it."""
