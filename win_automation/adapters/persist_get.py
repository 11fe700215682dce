"""`ssh get` through the warm-connection helper (win_automation.adapters.persist_helper): the
download goes straight into the file whose descriptor came with the request."""

from __future__ import annotations

import base64
import struct
import threading
import time
from typing import Any

from win_automation.adapters import persist_wire as persist
from win_automation.adapters import sftp, sftp_download
from win_automation.adapters.ssh import SshConnection
from win_automation.errors import ConnectError, WinAutomationError

PROGRESS_EVERY = 0.1  # seconds between a download's progress frames


def get(
    conn: SshConnection,
    request: dict[str, Any],
    fds: list[int],
    send: Any,
    hint: Any,
    cancelled: threading.Event,
) -> dict[str, Any]:
    """`ssh get` through the helper: the pipelined SFTP download straight into the caller's
    open part file (its descriptor came with the request), hashed off the read path, while
    the VM runs the caller's hash command; answers with the size and sha256 downloaded, the
    remote size, and the hash command's outcome (the caller checks them and renames)."""
    if len(fds) != 1:
        raise ConnectError("the warm-connection helper got a get request without its file")
    remote = str(request["path"])
    hashed: dict[str, Any] = {}
    abandoned = threading.Event()

    def hash_remote() -> None:
        try:
            outcome = conn.exec(  # a cancelled get closes the hash's channel (see below)
                str(request["hash_command"]),
                timeout=request.get("hash_timeout"),
                cancelled=abandoned.is_set,
            )
            hashed["outcome"] = {
                "exit_status": outcome.exit_status,
                "stdout": base64.b64encode(outcome.stdout).decode("ascii"),
                "stderr": base64.b64encode(outcome.stderr).decode("ascii"),
            }
        except WinAutomationError as exc:
            hashed["error"] = persist.error_payload(exc)
        except Exception as exc:
            failure = ConnectError(f"cannot hash remote file {remote}: {exc}")
            hashed["error"] = persist.error_payload(failure)

    hasher = threading.Thread(target=hash_remote, name="remote-sha256", daemon=True)
    hasher.start()  # the VM hashes while the bytes travel
    shown = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - shown[0] >= PROGRESS_EVERY or done == total:
            shown[0] = now
            hint(b"P", struct.pack(">qq", done, total))

    try:
        with open(fds[0], "wb", buffering=0, closefd=False) as out:
            copied = sftp_download.download(
                conn,
                remote,
                out,
                progress if request.get("progress") else None,
                cancelled=cancelled.is_set,
                target=str(request.get("target") or "the local file"),
                on_start=lambda: send(b"S"),
            )
        expected = sftp.remote_size(conn, remote)
        while hasher.is_alive() and not cancelled.is_set():
            hasher.join(persist.CANCEL_POLL)
        if cancelled.is_set():
            raise ConnectError(f"SFTP download of {remote} was cancelled")
    finally:
        # Cancelled or failed: the hash's channel closes (Windows ends the hash with it);
        # else it held a session of the shared connection until the file was hashed.
        abandoned.set()
    return {"size": copied.size, "sha256": copied.sha256, "remote_size": expected, **hashed}
