"""`python -m win_automation` runs the CLI (through the warm CLI process when one serves)."""

from win_automation.cli.launch import main

if __name__ == "__main__":  # as scripts/win-automation (multiprocessing's spawn runs it again)
    main()
elif __name__ == "__mp_main__":
    import win_automation.engines.hatchet  # noqa: F401
