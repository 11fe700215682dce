"""HTTP to ShowUI-Aloha's server (port 7887) and client (port 7888), with httpx.

    service = aloha_service("client", "http://127.0.0.1:7888", timeout=10.0)
    answer = service.request("POST", "/run_task", {"task": "..."}, record=exchanges.append)

- One `httpx.Client` per process and service (`aloha_service` keeps them), and one connection per
  request (none kept alive: the deadline below must know the request's socket to cut it).
  `trust_env=False`: no proxy from the environment stands between the host and its VM.
- Every attempt is reported to `record` as an `Exchange` (route, request body, status, answer
  body, timings, attempt), failures included, so a job's response.json holds them in order.
- Retries, as the product requires: 3 attempts under win_automation.retry's connect policy
  (waiting 500 ms, then 1 s), only on 502/503/504 and transient network errors (refused, reset or
  dropped before an answer, timeout on connect); never on another status, never on a success.
  Each retry is logged with its attempt number.
- Translation, once: no connection, a reset, a 502/503/504 -> ConnectError (exit 3, transient); a
  request accepted and not answered within the timeout -> NoAnswer (exit 3, not retried: the
  service may have acted on it). Any other status is returned as an `Answer`: what it means is
  for operations.aloha to say.
- Bodies are parsed as JSON only when they are JSON (win_automation.jsontext: nesting too deep is
  not JSON either): an HTML error page stays text. The whole exchange (connect, headers, body) is
  bounded by the timeout (adapters.http_deadline), and a body is read as it comes, at most
  MAX_ANSWER_BYTES (past it: exit 1). Requests ask for no compression (`Accept-Encoding:
  identity`) and a compressed answer is refused unread (exit 1): httpx would inflate each piece
  whole before the count sees it (500 MiB gzipped to 500 KiB held 140 MiB before the cut). A request
  given `stop` is abandoned within 0.1 s of it turning true (NoAnswer); one given `once` is a single
  attempt (never retried: within the timeout). An Exchange keeps at most BODY_LIMIT of an answer.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from win_automation import jsontext
from win_automation.adapters.http_deadline import Deadline, Stopped
from win_automation.adapters.resolve import NameNotResolved, lookup
from win_automation.durations import rfc3339
from win_automation.errors import ConnectError, NoAnswer, WinAutomationError
from win_automation.retry import CONNECT_POLICY, call_with_retry

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})
# The most of an answer kept in an Exchange (response.json): its JSON when its text is no longer,
# else its text cut there; its length and hash are whole.
BODY_LIMIT = 64 * 1024
MAX_ANSWER_BYTES = 16 << 20
"""The most of an answer read (Aloha's are JSON of a few KiB): past it, the request fails."""


class _Unfit(Exception):
    """An answer not read through: over MAX_ANSWER_BYTES, or compressed though asked for none."""


@dataclass
class Answer:
    """An HTTP answer: its status, and its body as JSON (`json` set) or as text."""

    status: int
    text: str
    content_type: str
    json: Any = None
    is_json: bool = False
    duration_ms: int = 0
    json_error: str | None = None
    """Why a JSON body (by its content type) is not usable JSON, in one line."""

    @property
    def digest(self) -> str:
        """`N bytes, sha256 abcdef012345`: how logs and errors may mention a body."""
        data = self.text.encode("utf-8", errors="replace")
        return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}"


@dataclass
class Exchange:
    """One attempt of one request, as response.json records it."""

    service: str
    method: str
    route: str
    request: Any
    attempt: int
    started_at: str
    duration_ms: int = 0
    status: int | None = None
    content_type: str | None = None
    body: Any = None
    body_bytes: int | None = None
    body_sha256: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return out


Record = Callable[[Exchange], None]


def _parse(response: httpx.Response, content: bytes, duration_ms: int) -> Answer:
    content_type = response.headers.get("content-type", "")
    text = content.decode(response.encoding or "utf-8", errors="replace")
    answer = Answer(response.status_code, text, content_type, duration_ms=duration_ms)
    if "html" not in content_type.lower():
        try:
            answer.json, answer.is_json = jsontext.loads(text), True
        except ValueError as exc:
            if "json" in content_type.lower():
                answer.json_error = str(exc)
    return answer


class AlohaService:
    """One Aloha service (`server` or `client`) at `base_url`; thread-safe."""

    def __init__(self, name: str, base_url: str, timeout: float) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client = self._new_client()

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            trust_env=False,
            follow_redirects=False,
            headers={"Accept-Encoding": "identity"},
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def url(self, route: str) -> str:
        return self.base_url + route

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        route: str,
        body: Any = None,
        *,
        record: Record,
        stop: Callable[[], bool] | None = None,
        once: bool = False,
    ) -> Answer:
        """One request, retried under the rule above; every attempt is recorded. `stop`: abandon
        it (NoAnswer) as soon as that turns true (a cancel, a task's deadline). `once`: one
        attempt, not retried, so it ends within the timeout (a best-effort /stop after a failure)."""
        if once:
            return self._attempt(method, route, body, 1, record, stop)
        attempts = iter(range(1, CONNECT_POLICY.attempts + 1))
        return call_with_retry(
            lambda: self._attempt(method, route, body, next(attempts), record, stop),
            op=f"aloha.{self.name}{route}",
        )

    def _exchange(
        self, method: str, route: str, body: Any, stop: Callable[[], bool] | None
    ) -> tuple[httpx.Response, bytes]:
        """The answer and its body, read as it comes: at most MAX_ANSWER_BYTES (_Unfit), and
        all of it, headers included, within the timeout (httpx.ReadTimeout), not only each piece:
        an answer trickled a byte at a time would keep httpx's per-read timeout from passing."""
        deadline = Deadline(self.timeout, stop)
        url = httpx.URL(self.url(route))  # the name within the timeout (httpx's excludes the lookup)
        lookup(url.host, url.port or (443 if url.scheme == "https" else 80), deadline.timeout)  # its start
        with (
            deadline,
            self._client.stream(
                method, url, json=body, timeout=deadline.left(), extensions=deadline.extensions
            ) as response,
        ):
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise _Unfit(f"a body in content-encoding {encoding[:40]!r}, though asked for none")
            pieces, size = [], 0
            for piece in response.iter_bytes():
                size += len(piece)
                if size > MAX_ANSWER_BYTES:
                    raise _Unfit(f"over {MAX_ANSWER_BYTES // (1 << 20)} MiB")
                pieces.append(piece)
        deadline.check()  # a body without length ends when its socket is shut: not a whole one
        return response, b"".join(pieces)

    def _attempt(
        self,
        method: str,
        route: str,
        body: Any,
        attempt: int,
        record: Record,
        stop: Callable[[], bool] | None = None,
    ) -> Answer:
        where = f"the Aloha {self.name} at {self.base_url}"
        exchange = Exchange(self.name, method, route, body, attempt, rfc3339(time.time()))
        started = time.perf_counter()
        try:
            try:
                response, content = self._exchange(method, route, body, stop)
            finally:
                exchange.duration_ms = round((time.perf_counter() - started) * 1000)
        except Stopped:
            exchange.error = "abandoned unanswered: the caller stopped waiting"
            record(exchange)
            raise NoAnswer(
                f"{method} {route} to {where} was abandoned unanswered (cancelled, or the deadline passed)"
            ) from None
        except _Unfit as exc:
            exchange.error = str(exc)
            record(exchange)
            raise WinAutomationError(
                f"{where} answered {method} {route} with {exc} (not an answer of Aloha's: is another "
                "service on that port?); not retried"
            ) from None
        except NameNotResolved as exc:
            exchange.error = str(exc)
            record(exchange)
            raise ConnectError(f"cannot connect to {where}: {exc}") from exc
        except httpx.ConnectTimeout as exc:
            exchange.error = f"connect timeout after {self.timeout:g}s"
            record(exchange)
            raise ConnectError(f"connecting to {where} timed out after {self.timeout:g}s") from exc
        except httpx.ConnectError as exc:
            exchange.error = f"cannot connect: {exc}"
            record(exchange)
            raise ConnectError(f"cannot connect to {where}: {exc}") from exc
        except httpx.TimeoutException as exc:
            exchange.error = f"no answer within {self.timeout:g}s"
            record(exchange)
            raise NoAnswer(
                f"{where} took {method} {route} and did not answer within {self.timeout:g}s "
                "(aloha.request_timeout; not retried: it may have acted on it)"
            ) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            exchange.error = f"connection dropped: {exc}"
            record(exchange)
            raise ConnectError(f"{where} dropped the connection before answering {route}: {exc}") from exc
        except httpx.HTTPError as exc:
            exchange.error = f"{type(exc).__name__}: {exc}"
            record(exchange)
            raise ConnectError(f"{method} {route} to {where} failed: {exc}") from exc
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (win_automation.interrupts): on record too
            exchange.error = "interrupted before an answer (Ctrl-C or SIGTERM)"
            record(exchange)
            # The task's /stop goes on a new client: httpcore takes its pool's lock in a Python
            # __enter__, where the interrupt can land after the acquire(), and that lock stays
            # held for good (the next request, or the close, would wait forever). Not closed.
            self._client = self._new_client()
            raise
        answer = _parse(response, content, exchange.duration_ms)
        data = answer.text.encode("utf-8", errors="replace")
        exchange.status = answer.status
        exchange.content_type = answer.content_type
        whole = answer.is_json and len(data) <= BODY_LIMIT
        exchange.body = answer.json if whole else answer.text[:BODY_LIMIT]
        exchange.body_bytes = len(data)
        exchange.body_sha256 = hashlib.sha256(data).hexdigest()
        record(exchange)
        if answer.status in RETRY_STATUSES:
            raise ConnectError(f"{where} answered {answer.status} to {route} ({answer.digest})")
        return answer


_SERVICES: dict[tuple[str, str, float], AlohaService] = {}
_LOCK = threading.Lock()


def aloha_service(name: str, base_url: str, timeout: float) -> AlohaService:
    """The process-wide `AlohaService` (and its httpx.Client) for this service and address."""
    key = (name, base_url.rstrip("/"), timeout)
    with _LOCK:
        service = _SERVICES.get(key)
        if service is None:
            service = _SERVICES[key] = AlohaService(name, base_url, timeout)
        return service


def close_all() -> None:
    """Close every service's client (tests, process exit)."""
    with _LOCK:
        for service in _SERVICES.values():
            service.close()
        _SERVICES.clear()
