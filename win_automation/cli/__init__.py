"""The typer command line: parse, load config, call one library function, print, map errors."""
