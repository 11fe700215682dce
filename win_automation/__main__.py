"""`python -m win_automation` runs the CLI."""

from win_automation.cli.app import main

main()
