"""`python -m win_automation` runs the CLI (through the warm CLI process when one serves)."""

from win_automation.cli.launch import main

main()
