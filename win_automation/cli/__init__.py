"""The typer command line: parse, load config, call one function below, print, map errors.

May import engines (dispatch), workflows (their input models), operations, artifacts and core;
never adapters or the journal. Heavy libraries only inside commands.
"""
