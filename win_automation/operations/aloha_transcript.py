"""The exchanges of one Aloha job or command, as response.json records them, bounded however long
the task runs.

    transcript = Transcript()
    transcript.add(exchange)              # every attempt of every request, in order
    transcript.records                    # what response.json's `exchanges` holds
    transcript.dump(job_id=...)           # response.json's text

A task is followed by asking `/run_task` every aloha.poll_interval, and a running task answers
every ask the same 409: hours of identical records grew the artifact, and the process, without
bound. So:
- identical consecutive exchanges (same service, request and attempt; same status, content type,
  body hash and error) are one record: `count` of them, `seq`/`started_at` of the first,
  `last_seq`/`last_started_at` of the last, `duration_ms` the longest. Anything that differs (a
  state change, a retry, a new answer, the final one) starts a new record;
- a record's body, once KEEP_WHOLE records back, is cut to OLD_BODY_LIMIT (its length and hash
  stay whole);
- past MAX_RECORDS records, the oldest after the first HEAD (the health checks and the start: the
  evidence) are dropped, and counted in `exchanges_omitted` (their seq range, how many exchanges).
"""

from __future__ import annotations

import json
from typing import Any

from win_automation.adapters.aloha import Exchange

KEEP_WHOLE = 20  # the last records whose bodies are kept whole (up to adapters.aloha.BODY_LIMIT)
OLD_BODY_LIMIT = 1024  # the most of an older record's body kept
MAX_RECORDS = 1000  # at most about 1000 x (1 KiB + a probe) + 20 x 64 KiB: a few MiB
HEAD = 20  # the first records, never dropped (health checks and the start, with their retries)
_VARIES = frozenset({"started_at", "duration_ms"})  # what identical exchanges may differ in


class Transcript:
    """Records of exchanges, in order; not thread-safe (one job's requests are recorded in turn)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.total = 0  # exchanges added (the last one's seq)
        self.omitted: dict[str, int] | None = None
        self._last_key: dict[str, Any] | None = None

    def add(self, exchange: Exchange) -> None:
        self.total += 1
        seen = exchange.as_dict()
        key = {k: v for k, v in seen.items() if k not in _VARIES and k != "body"}
        if key == self._last_key and self.records:  # the body is the same: its hash is in the key
            last = self.records[-1]
            last["count"] += 1
            last["last_seq"], last["last_started_at"] = self.total, exchange.started_at
            last["duration_ms"] = max(last["duration_ms"], exchange.duration_ms)
            return
        self._last_key = key
        self.records.append(
            {
                "seq": self.total,
                "last_seq": self.total,
                "count": 1,
                **seen,
                "last_started_at": exchange.started_at,
            }
        )
        if len(self.records) > KEEP_WHOLE:
            _cut(self.records[-KEEP_WHOLE - 1])
        if len(self.records) > MAX_RECORDS:
            self._drop(self.records.pop(HEAD))

    def _drop(self, record: dict[str, Any]) -> None:
        if self.omitted is None:
            self.omitted = {"first_seq": record["seq"], "last_seq": record["last_seq"], "count": 0}
        self.omitted["last_seq"] = record["last_seq"]
        self.omitted["count"] += record["count"]

    def dump(self, **about: Any) -> str:
        """response.json: `about` (the task's length and hash, the outcome...) and the records."""
        whole = {
            **about,
            "exchanges_total": self.total,
            "exchanges_omitted": self.omitted,
            "exchanges": self.records,
        }
        return json.dumps(whole, indent=2, default=str) + "\n"


def _cut(record: dict[str, Any]) -> None:
    if (record["body_bytes"] or 0) > OLD_BODY_LIMIT:
        body = record["body"]
        record["body"] = (body if isinstance(body, str) else json.dumps(body))[:OLD_BODY_LIMIT]
