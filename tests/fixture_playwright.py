"""A real Playwright browser server on loopback, and a web server with pages to point it at.

`PlaywrightServer` runs `scripts/windows/launch-server.js` itself with the `playwright` wheel's
own Node (`playwright/driver/node`) and its own playwright-core (`playwright/driver/package`), or
another playwright-core (`package=`, e.g. npm's previous minor for the version-mismatch test), with
Debian's `/usr/bin/chromium` as executablePath, on 127.0.0.1 and a free port, with a random wsPath
in a 0600 file, as on the VM.

Fixtures (registered in tests/conftest.py):
- `pw_server` (session): one shared server; `pw_server.env()` gives the WIN_AUTOMATION_PLAYWRIGHT_*
  variables that point win-automation at it, `pw_server.config()` a Config.
- `web` (session): a threaded HTTP server: `/` a red page with a blue 40x30 box at (10, 10) and
  a `#ready` element, `/slow` the same after 2 s, `/tall` a 3000 px tall page, `/never` a request
  that is never answered, `/slow-ready` a page whose `#late` element appears after 300 ms;
  `/pause-load` calls `web.pause()` and then is never answered (the browser paused mid-load), and
  `/pause-shot` a page that calls it (a synchronous request to `/pause`) as a screenshot begins
  (Playwright hides the caret of its `<input>`: the style change is observed), so the browser is
  paused while the screenshot is being taken. `web.pause` is a test's own (None: nothing paused).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import playwright
import pytest
from fixture_sshd import free_port

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_SERVER = ROOT / "scripts" / "windows" / "launch-server.js"
DRIVER = Path(playwright.__file__).parent / "driver"
NODE = DRIVER / "node"
PACKAGE = DRIVER / "package"
CHROMIUM = "/usr/bin/chromium"
PREVIOUS_MINOR = ROOT / ".cache" / "playwright-core-previous" / "node_modules" / "playwright-core"


class PlaywrightServer:
    """One launch-server.js process with its own directory, port and wsPath."""

    def __init__(
        self, *, package: Path = PACKAGE, channel: str | None = None, port: int | None = None
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wa-pw-"))
        self.port = port or free_port()
        self.ws_path = secrets.token_urlsafe(24)
        ws_file = self.dir / "ws-path"
        ws_file.write_text(self.ws_path + "\n", encoding="ascii")
        ws_file.chmod(0o600)
        settings: dict[str, Any] = {
            "package": str(package),
            "host": "127.0.0.1",
            "port": self.port,
            "wsPathFile": str(ws_file),
            "headless": True,
            "logFile": str(self.dir / "launch.log"),
        }
        if channel:
            settings["channel"] = channel
        else:
            settings["executablePath"] = CHROMIUM
        self.config_file = self.dir / "server.json"
        self.config_file.write_text(json.dumps(settings), encoding="utf-8")
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> PlaywrightServer:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(NODE), str(LAUNCH_SERVER), str(self.config_file)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"launch-server exited: {self.output()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"launch-server did not listen: {self.output()[-2000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the server and its browser (its process group): clients see the connection drop."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.proc is not None:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def env(self, **overrides: str) -> dict[str, str]:
        values = {
            "WIN_AUTOMATION_PLAYWRIGHT_HOST": "127.0.0.1",
            "WIN_AUTOMATION_PLAYWRIGHT_PORT": str(self.port),
            "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH": self.ws_path,
        }
        values.update(overrides)
        return values

    def config(self, tmp: Path, **playwright: Any) -> Any:
        from win_automation.config.schema import Config

        section = {"host": "127.0.0.1", "port": self.port, "ws_path": self.ws_path, **playwright}
        return Config.model_validate(
            {
                "playwright": section,
                "artifacts": {"out_dir": str(tmp / "artifacts")},
                "data": {"dir": str(tmp / "data")},
            }
        )


@pytest.fixture(scope="session")
def pw_server() -> Iterator[PlaywrightServer]:
    server = PlaywrightServer().start()
    try:
        yield server
    finally:
        server.close()


PAGE = b"""<!doctype html><html><head><style>
body { margin: 0; background: rgb(255, 0, 0); }
#box { position: absolute; left: 10px; top: 10px; width: 40px; height: 30px; background: rgb(0, 0, 255); }
</style></head><body><div id="box"></div><p id="ready">ready</p></body></html>"""
TALL = b"""<!doctype html><html><body style="margin:0"><div style="height:3000px;background:#0f0">
</div></body></html>"""
SLOW = b"""<!doctype html><html><body><script>
setTimeout(() => { const d = document.createElement('div'); d.id = 'late'; d.textContent = 'late';
document.body.appendChild(d); }, 300);</script></body></html>"""

PAUSE_SHOT = b"""<!doctype html><html><body><input id="field" value="x"><script>
const field = document.getElementById('field');
new MutationObserver(() => {
  const request = new XMLHttpRequest(); request.open('GET', '/pause', false); request.send();
}).observe(field, { attributes: true, attributeFilter: ['style'] });
</script></body></html>"""


class _Handler(http.server.BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, bytes]] = {
        "/": PAGE,
        "/tall": TALL,
        "/slow-ready": SLOW,
        "/pause-shot": PAUSE_SHOT,
    }

    def do_GET(self) -> None:
        if self.path in ("/pause", "/pause-load"):
            pause = self.server.pause  # type: ignore[attr-defined]
            if pause is not None:
                pause()
            if self.path == "/pause":
                self.send_response(204)
                self.end_headers()
                return
            self.path = "/never"
        if self.path == "/slow":
            time.sleep(2.0)
            self.path = "/"
        if self.path == "/never":
            self.server.hung.append(self.connection)  # type: ignore[attr-defined]
            time.sleep(60)
            return
        body = self.pages.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class WebServer:
    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.hung = []  # type: ignore[attr-defined]
        self.httpd.pause = None  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def web() -> Iterator[WebServer]:
    server = WebServer()
    try:
        yield server
    finally:
        server.close()
