"""Adapters: the only modules that import paramiko, httpx, playwright or qemu.qmp.

They open connections, translate the library's exceptions into `win_automation.errors` once
(`raise ... from exc`) and apply the connect-level retry policy. May import only core.
"""
