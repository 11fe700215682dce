"""response.json's records (operations.aloha_transcript) stay bounded however long a task runs and
however its answers vary; the workflow tests (test_aloha.py) show it against the stand-ins."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from win_automation.adapters.aloha import Exchange
from win_automation.operations.aloha_transcript import HEAD, KEEP_WHOLE, MAX_RECORDS, Transcript

PROBE = {"task": "win-automation: is a task running?", "max_steps": 1}


def answer(status: int, body: Any, *, attempt: int = 1, at: int = 0, took: int = 3) -> Exchange:
    text = json.dumps(body)
    return Exchange(
        "client",
        "POST",
        "/run_task",
        PROBE,
        attempt,
        f"2026-11-22T10:00:{at % 60:02d}.000Z",
        duration_ms=took,
        status=status,
        content_type="application/json",
        body=body,
        body_bytes=len(text),
        body_sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


def test_identical_polls_are_one_record_with_their_count_first_and_last() -> None:
    transcript = Transcript()
    busy = {"status": "error", "message": "A task is already running"}
    for n in range(100_000):
        transcript.add(answer(409, busy, at=n, took=50 if n == 500 else 3))
    transcript.add(answer(200, {"status": "success"}, at=7))
    first, last = transcript.records
    assert (first["count"], first["seq"], first["last_seq"]) == (100_000, 1, 100_000)
    assert (first["started_at"], first["last_started_at"]) == (
        "2026-11-22T10:00:00.000Z",
        "2026-11-22T10:00:39.000Z",
    )
    assert first["duration_ms"] == 50  # the longest of them
    assert (last["count"], last["seq"], last["status"]) == (1, 100_001, 200)
    assert len(transcript.dump()) < 4096


def test_a_retry_or_an_error_is_not_folded_into_the_polls_around_it() -> None:
    transcript = Transcript()
    busy = {"status": "error"}
    dropped = answer(409, None, attempt=1)
    dropped.status, dropped.body_sha256, dropped.error = None, None, "connection dropped: reset"
    for exchange in [
        answer(409, busy),
        answer(409, busy),
        dropped,
        answer(409, busy, attempt=2),
        answer(409, busy),
    ]:
        transcript.add(exchange)
    assert [(r["status"], r["attempt"], r["count"]) for r in transcript.records] == [
        (409, 1, 2),
        (None, 1, 1),
        (409, 2, 1),
        (409, 1, 1),
    ]


def test_answers_that_all_differ_keep_the_start_and_the_last_records_and_count_the_rest() -> None:
    """A service whose every answer differs (a counter, a clock) cannot be folded: past
    MAX_RECORDS records the oldest after the first HEAD go, counted, and the file stays small."""
    transcript = Transcript()
    polls = 5 * MAX_RECORDS
    for n in range(polls):
        transcript.add(answer(409, {"status": "error", "n": n, "pad": "x" * 4096}, at=n))
    records = transcript.records
    assert len(records) == MAX_RECORDS and transcript.total == polls
    kept = [r["seq"] for r in records]
    dropped = polls - MAX_RECORDS
    assert kept == list(range(1, HEAD + 1)) + list(range(HEAD + dropped + 1, polls + 1))
    assert transcript.omitted == {"first_seq": HEAD + 1, "last_seq": HEAD + dropped, "count": dropped}
    assert all(len(r["body"]) <= 1024 for r in records[:-KEEP_WHOLE])
    assert all(r["body"]["n"] == r["seq"] - 1 for r in records[-KEEP_WHOLE:])  # the last ones whole
    dumped = json.loads(transcript.dump(job_id="j"))
    assert dumped["exchanges_total"] == polls and dumped["exchanges_omitted"]["count"] == dropped
    assert len(transcript.dump()) < MAX_RECORDS * 2048 + KEEP_WHOLE * 8192  # about 2 MB
