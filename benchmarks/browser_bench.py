"""Browser job speed: a screenshot job through win-automation against a bare Playwright script.

Run: .venv/bin/python benchmarks/browser_bench.py [--rounds 15]

Starts the tests' real Playwright server (tests/fixture_playwright.py: scripts/windows/launch-server.js
run by the playwright wheel's Node, Debian's Chromium) and a local web page, then alternates:

- ours: `dispatch.run_job(playwright-screenshot)` on the local engine: journal rows, connect, a
  fresh context and page, load, screenshot, `screenshot.png` written, fsynced and hashed into the
  job's manifest, context closed;
- bare: the same with Playwright for Python alone (`sync_playwright()`, `connect`, `new_context`,
  `new_page`, `goto`, `screenshot(path=...)`, close), as a user's script would.

Both start their Playwright driver per job. Prints the medians and the ratio (target at most 1.3x).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fixture_playwright import PlaywrightServer, WebServer  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from win_automation.engines.dispatch import run_job  # noqa: E402
from workflows.playwright_screenshot import playwright_screenshot  # noqa: E402


def bare(server: PlaywrightServer, url: str, out: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.connect(f"ws://127.0.0.1:{server.port}/{server.ws_path}")
        context = browser.new_context()
        page = context.new_page()
        page.goto(url)
        page.screenshot(path=str(out))
        context.close()
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    server, web = PlaywrightServer().start(), WebServer()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = server.config(Path(tmp))
            model = playwright_screenshot.parse_input({"url": web.url("/")})
            ours: list[float] = []
            theirs: list[float] = []
            bare(server, web.url("/"), Path(tmp) / "warm.png")  # warm both paths once
            run_job(config, playwright_screenshot, model)
            for i in range(args.rounds):
                start = time.perf_counter()
                outcome = run_job(config, playwright_screenshot, model)
                ours.append(time.perf_counter() - start)
                assert outcome.exit_code == 0, outcome.error
                start = time.perf_counter()
                bare(server, web.url("/"), Path(tmp) / f"bare-{i}.png")
                theirs.append(time.perf_counter() - start)
    finally:
        server.close()
        web.close()
    a, b = statistics.median(ours) * 1000, statistics.median(theirs) * 1000
    print(f"screenshot job through win-automation (journal, manifest): median {a:.0f} ms")
    print(f"bare Playwright script, same server and page:             median {b:.0f} ms")
    print(f"ratio: {a / b:.2f}x (target at most 1.3x) over {args.rounds} alternating rounds")


if __name__ == "__main__":
    main()
