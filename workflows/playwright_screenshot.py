"""`playwright-screenshot` (and `playwright-screenshot-headed`, a GUI job): a screenshot of a URL
taken by the browser on the VM.

One step, `screenshot`: connect to the VM's Playwright server (operations.playwright), load the
URL in a fresh context (its `load` event), wait for `wait_for` when given, write `screenshot.png`
(and `trace.zip` with `trace`) to the job's folder, close the context: all of it, from the
connect on, within `timeout_seconds` (plus JOB_GRACE for the cleanup; then the session is dropped).
A failure keeps what was written (the page as it was, the trace) and lists it in the error. The
headed variant is a GUI job: one per VM desktop, and it refuses a locked desktop before it starts.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from win_automation.definition import Step, StepContext, Workflow
from win_automation.operations.desktop import headed_twin
from win_automation.operations.playwright import browser_session
from win_automation.operations.playwright_jobs import take_screenshot


class ScreenshotInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(..., description="The page to load: an http(s) URL as the VM reaches it.")
    full_page: bool = Field(False, description="The whole scrollable page, not just the viewport.")
    wait_for: str | None = Field(None, min_length=1, description="A selector to wait for (visible).")
    trace: bool = Field(False, description="Record a Playwright trace (trace.zip).")
    timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="Deadline of the whole job: load, wait, shot."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
        return value


class ScreenshotOutput(BaseModel):
    url: str
    final_url: str
    title: str
    size_bytes: int
    duration_ms: int
    artifacts: list[str]


def screenshot(inp: ScreenshotInput, ctx: StepContext) -> ScreenshotOutput:
    with browser_session(
        ctx.config,
        ctx.artifacts,
        trace=inp.trace,
        timeout=inp.timeout_seconds,
        job_timeout=inp.timeout_seconds,  # the whole job: its timeout plus JOB_GRACE, then dropped
        cancelled=ctx.cancelled,
    ) as job:
        shot = take_screenshot(
            job,
            inp.url,
            full_page=inp.full_page,
            wait_for=inp.wait_for,
            timeout=inp.timeout_seconds,
            cancelled=ctx.cancelled,
        )
    ctx.log.info("screenshot taken", extra={"op": "playwright.screenshot", "bytes": shot.size_bytes})
    return ScreenshotOutput(
        url=inp.url,
        final_url=shot.final_url,
        title=shot.title,
        size_bytes=shot.size_bytes,
        duration_ms=shot.duration_ms,
        artifacts=job.written,
    )


ARTIFACT_TYPES = ("playwright",)
COUNTERS = ("playwright_sessions_total",)

playwright_screenshot = Workflow(
    name="playwright-screenshot",
    input=ScreenshotInput,
    artifact_types=ARTIFACT_TYPES,
    counters=COUNTERS,
    description="A screenshot of a URL, taken by the browser on the VM.",
    steps=(Step("screenshot", screenshot, ScreenshotOutput, timeout_seconds=3900),),
)

playwright_screenshot_headed = headed_twin(
    playwright_screenshot,
    description="A screenshot by the VM's headed browser (a GUI job: the VM desktop, one at a time).",
)
