"""win-automation: drive a Windows VM from Linux (SSH, Aloha, Playwright, durable workflows)."""

__version__ = "0.1.0"
