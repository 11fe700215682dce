"""Browser jobs through the CLI against the real launch-server.js (the wheel's Node, Debian's
Chromium): a screenshot of a page the tests serve (the PNG decoded: size and pixels), a trace that
opens, scripts that succeed, fail or misbehave, and every bad input, each a one-line error with
its exit code and the artifacts written so far kept. The wsPath appears nowhere: not in output,
logs, the journal file, the artifacts (trace.zip entries included) or the manifest."""

from __future__ import annotations

import io
import json
import sqlite3
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from fixture_playwright import PlaywrightServer, WebServer
from fixture_sshd import free_port


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of a non-interlaced 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6)
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, ul = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + left) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + up) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif ftype == 4:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else ul)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r) for r in rows]


def pixel(rows: list[bytes], x: int, y: int, bpp: int) -> tuple[int, int, int]:
    r, g, b = rows[y][x * bpp : x * bpp + 3]
    return r, g, b


def assert_no_ws_path(ws_path: str, tmp_path: Path, *texts: str) -> None:
    """Nowhere: not in the texts, the journal file, any artifact (zip entries too), the manifest."""
    for text in texts:
        assert ws_path not in text
    journal = tmp_path / "data" / "journal.sqlite3"
    assert journal.exists()
    with sqlite3.connect(journal) as db:  # rows, and the file's bytes (WAL included)
        db.execute("PRAGMA wal_checkpoint(FULL)")
    for path in [journal, *(tmp_path / "data").glob("journal.sqlite3*")]:
        assert ws_path.encode() not in path.read_bytes()
    for path in (tmp_path / "artifacts").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert ws_path.encode() not in data, path
            if path.suffix == ".zip":
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    for name in archive.namelist():
                        assert ws_path.encode() not in archive.read(name), (path, name)


def job_folder(tmp_path: Path) -> Path:
    (folder,) = [p for p in (tmp_path / "artifacts").iterdir() if p.is_dir()]
    return folder


def manifest_names(folder: Path) -> set[str]:
    return {a["path"] for a in json.loads((folder / "manifest.json").read_text())["artifacts"]}


def test_screenshot_png_and_trace(cli, pw_server: PlaywrightServer, web: WebServer, tmp_path: Path) -> None:
    run = cli(
        "playwright",
        "screenshot",
        web.url("/"),
        "--trace",
        "--wait-for",
        "#ready",
        "--json",
        env=pw_server.env(),
    )
    assert run.code == 0, run.stderr
    outcome = json.loads(run.stdout)
    assert outcome["state"] == "succeeded"
    folder = Path(outcome["artifacts_dir"])
    assert manifest_names(folder) == {"screenshot.png", "trace.zip"}
    width, height, rows = png_pixels((folder / "screenshot.png").read_bytes())
    assert (width, height) == (1280, 720)  # Playwright's default viewport
    bpp = len(rows[0]) // width
    assert pixel(rows, 20, 20, bpp) == (0, 0, 255)  # inside the blue box
    assert pixel(rows, 600, 400, bpp) == (255, 0, 0)  # the red page
    with zipfile.ZipFile(folder / "trace.zip") as trace:
        names = trace.namelist()
        assert "trace.trace" in names and "trace.network" in names
        events = [json.loads(line) for line in trace.read("trace.trace").splitlines() if line.strip()]
        assert any(e.get("type") == "context-options" for e in events)
        assert any(web.url("/") in json.dumps(e) for e in events)
        assert any(n.startswith("resources/") for n in names)  # screencast frames and snapshots
    step = outcome["outputs"]["screenshot"]
    assert step["size_bytes"] == (folder / "screenshot.png").stat().st_size
    assert_no_ws_path(pw_server.ws_path, tmp_path, run.stdout, run.stderr)


def test_screenshot_full_page(cli, pw_server: PlaywrightServer, web: WebServer) -> None:
    run = cli("playwright", "screenshot", web.url("/tall"), "--full-page", env=pw_server.env())
    assert run.code == 0, run.stderr
    png = [line for line in run.stdout.splitlines() if line.startswith("screenshot.png: ")]
    width, height, _ = png_pixels(Path(png[0].split(": ", 1)[1]).read_bytes())
    assert width == 1280 and height == 3000


def test_wait_for_a_late_element(cli, pw_server: PlaywrightServer, web: WebServer) -> None:
    run = cli("playwright", "screenshot", web.url("/slow-ready"), "--wait-for", "#late", env=pw_server.env())
    assert run.code == 0, run.stderr


SCRIPT_OK = """
from win_automation.operations.playwright_jobs import save_artifact

def run(page, context, input):
    page.goto(input["url"])
    save_artifact("box.txt", page.inner_text("#ready"))
    box = page.eval_on_selector("#box", "e => e.offsetWidth")
    return {"title": page.title(), "box": box, "n": input["n"]}
"""


def test_run_script(cli, pw_server: PlaywrightServer, web: WebServer, tmp_path: Path) -> None:
    script = tmp_path / "ok.py"
    script.write_text(SCRIPT_OK)
    run = cli(
        "playwright",
        "run",
        str(script),
        "--input",
        json.dumps({"url": web.url("/"), "n": 7}),
        "--json",
        env=pw_server.env(),
    )
    assert run.code == 0, run.stderr
    outcome = json.loads(run.stdout)
    assert outcome["outputs"]["run"]["result"] == {"title": "", "box": 40, "n": 7}
    folder = Path(outcome["artifacts_dir"])
    assert manifest_names(folder) == {"box.txt", "result.json", "trace.zip"}
    assert (folder / "box.txt").read_text() == "ready"
    assert json.loads((folder / "result.json").read_text())["box"] == 40
    assert_no_ws_path(pw_server.ws_path, tmp_path, run.stdout, run.stderr)


SCRIPT_FAILS = """
def run(page, context, input):
    page.goto(input)
    page.click("#box")
    raise ValueError("the box was not what we wanted")
"""


def test_failing_script_keeps_screenshot_and_trace(
    cli, pw_server: PlaywrightServer, web: WebServer, tmp_path: Path
) -> None:
    script = tmp_path / "fails.py"
    script.write_text(SCRIPT_FAILS)
    run = cli("playwright", "run", str(script), "--input", json.dumps(web.url("/")), env=pw_server.env())
    assert run.code == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "fails.py raised ValueError at line 5" in last
    assert (
        "the box was not what we wanted" in last and "kept: traceback.txt, trace.zip, screenshot.png" in last
    )
    folder = job_folder(tmp_path)
    assert manifest_names(folder) == {"traceback.txt", "screenshot.png", "trace.zip"}
    width, _height, rows = png_pixels((folder / "screenshot.png").read_bytes())
    assert pixel(rows, 20, 20, len(rows[0]) // width) == (0, 0, 255)  # the page as it was
    assert "Traceback" in (folder / "traceback.txt").read_text()
    with zipfile.ZipFile(folder / "trace.zip") as trace:
        assert "trace.trace" in trace.namelist()
    assert "Traceback" not in run.stderr
    jobs = cli("jobs", "list", "--state", "failed", "--json")
    assert json.loads(jobs.stdout)[0]["workflow"] == "playwright-run"
    assert_no_ws_path(pw_server.ws_path, tmp_path, run.stdout, run.stderr, jobs.stdout)


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("missing.py", None, "cannot read it"),
        ("notes.txt", "def run(page, context, input): pass\n", "not a Python script (.py)"),
        ("broken.py", "def run(page, context, input)\n    pass\n", "is not Python: expected ':' at line 1"),
        ("norun.py", "def main(page):\n    pass\n", "defines no top-level run(page, context, input)"),
        ("latin.py", None, "not UTF-8 text"),
    ],
)
def test_bad_scripts_refused_before_any_job(
    cli, pw_server: PlaywrightServer, tmp_path: Path, name: str, text: str | None, needle: str
) -> None:
    script = tmp_path / name
    if text is not None:
        script.write_text(text)
    elif name == "latin.py":
        script.write_bytes(b"# caf\xe9\ndef run(page, context, input): pass\n")
    run = cli("playwright", "run", str(script), env=pw_server.env())
    assert run.code == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: SCRIPT ")
    assert needle in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["not a url"], "url: Value error, must be an http:// or https:// URL"),
        (["ftp://example.com/x"], "must be an http:// or https:// URL"),
        (["http://127.0.0.1/", "--timeout", "soon"], "--timeout:"),
    ],
)
def test_screenshot_bad_input(cli, pw_server: PlaywrightServer, args: list[str], needle: str) -> None:
    run = cli("playwright", "screenshot", *args, env=pw_server.env())
    assert run.code == 2 and needle in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_bad_wait_for_selector(cli, pw_server: PlaywrightServer, web: WebServer, tmp_path: Path) -> None:
    run = cli("playwright", "screenshot", web.url("/"), "--wait-for", "div[[[", env=pw_server.env())
    assert run.code == 2
    last = run.stderr.strip().splitlines()[-1]
    assert "--wait-for 'div[[[' is not a valid selector" in last and "kept: screenshot.png" in last
    assert manifest_names(job_folder(tmp_path)) == {"screenshot.png"}


def test_wait_for_never_matches(cli, pw_server: PlaywrightServer, web: WebServer) -> None:
    run = cli(
        "playwright",
        "screenshot",
        web.url("/"),
        "--wait-for",
        "#absent",
        "--timeout",
        "3s",  # the page loads within it (CI: a loaded machine took over 1 s)
        env=pw_server.env(),
    )
    assert run.code == 124
    assert "--wait-for '#absent': no visible match within 3s" in run.stderr.strip().splitlines()[-1]


def test_page_never_loads(cli, pw_server: PlaywrightServer, web: WebServer, tmp_path: Path) -> None:
    run = cli(
        "playwright", "screenshot", web.url("/never"), "--trace", "--timeout", "1s", env=pw_server.env()
    )
    assert run.code == 124
    last = run.stderr.strip().splitlines()[-1]
    assert f"{web.url('/never')} did not load within 1s" in last and last.endswith("(kept: trace.zip)")
    assert manifest_names(job_folder(tmp_path)) == {"trace.zip"}  # a page still loading has no picture


def test_page_refused(cli, pw_server: PlaywrightServer) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    run = cli("playwright", "screenshot", url, env=pw_server.env())
    assert run.code == 1
    assert f"{url} did not load (net::ERR_CONNECTION_REFUSED" in run.stderr.strip().splitlines()[-1]


def test_server_down(cli, pw_server: PlaywrightServer, web: WebServer, tmp_path: Path) -> None:
    env = pw_server.env(WIN_AUTOMATION_PLAYWRIGHT_PORT=str(free_port()))
    run = cli("playwright", "screenshot", web.url("/"), env=env)
    assert run.code == 3
    assert "is not reachable (connection refused); fix:" in run.stderr.strip().splitlines()[-1]
    assert run.stderr.count("retrying after a transient failure") == 2  # the connect policy
    assert_no_ws_path(pw_server.ws_path, tmp_path, run.stdout, run.stderr)


def test_wrong_ws_path(cli, pw_server: PlaywrightServer, web: WebServer, tmp_path: Path) -> None:
    wrong = "x" * 32
    run = cli(
        "playwright", "screenshot", web.url("/"), env=pw_server.env(WIN_AUTOMATION_PLAYWRIGHT_WS_PATH=wrong)
    )
    assert run.code == 2
    assert "refused the wsPath (HTTP 400)" in run.stderr.strip().splitlines()[-1]
    assert_no_ws_path(wrong, tmp_path, run.stdout, run.stderr)


def test_no_ws_path(cli, pw_server: PlaywrightServer, web: WebServer) -> None:
    env = pw_server.env()
    del env["WIN_AUTOMATION_PLAYWRIGHT_WS_PATH"]
    run = cli("playwright", "screenshot", web.url("/"), env=env)
    assert run.code == 2
    assert "playwright.ws_path is not set; fix: export WIN_AUTOMATION_PLAYWRIGHT_WS_PATH" in run.stderr


def test_health_cli(cli, pw_server: PlaywrightServer) -> None:
    run = cli("playwright", "health", "--json", env=pw_server.env())
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is True and report["connect_ms"] > 0 and report["new_page_ms"] > 0
    down = cli("playwright", "health", env=pw_server.env(WIN_AUTOMATION_PLAYWRIGHT_PORT=str(free_port())))
    assert down.code == 3 and "not reachable" in down.stdout
    assert down.stderr.strip().splitlines()[-1].startswith("error: the Playwright server at")
    for text in (run.stdout, run.stderr, down.stdout, down.stderr):
        assert pw_server.ws_path not in text


def test_script_result_must_be_json(cli, pw_server: PlaywrightServer, tmp_path: Path) -> None:
    script = tmp_path / "setty.py"
    script.write_text("def run(page, context, input):\n    return {1, 2}\n")
    run = cli("playwright", "run", str(script), "--no-trace", env=pw_server.env())
    assert run.code == 1
    assert "setty.py: run() returned a value that is not JSON" in run.stderr.strip().splitlines()[-1]
    big = tmp_path / "big.py"
    big.write_text("def run(page, context, input):\n    return 'x' * 300000\n")
    run = cli("playwright", "run", str(big), "--no-trace", env=pw_server.env())
    assert run.code == 1 and "fix: write big results with save_artifact()" in run.stderr


def test_bad_input_json(cli, pw_server: PlaywrightServer, tmp_path: Path) -> None:
    script = tmp_path / "ok.py"
    script.write_text("def run(page, context, input):\n    return input\n")
    run = cli("playwright", "run", str(script), "--input", "{oops", env=pw_server.env())
    assert run.code == 2 and run.stderr.strip() == "error: --input: invalid JSON at line 1 column 2"
