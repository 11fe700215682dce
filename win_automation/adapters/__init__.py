"""Adapters: the only modules that import paramiko (and, elsewhere, httpx/playwright/hatchet_sdk).

They open connections, translate the library's exceptions into `win_automation.errors` once
(`raise ... from exc`) and apply the connect-level retry policy.
"""
