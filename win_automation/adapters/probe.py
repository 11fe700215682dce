"""Endpoint diagnosis: one probe, and a cause that tells apart every way an endpoint can be broken.

`probe_http(url, timeout)` (httpx) and `probe_tcp(host, port, timeout, speak=...)` (a socket) each
return a `Probe`: what answered, or which of these went wrong, with the time it took:

- `dns`: the name does not resolve;
- `refused`: nothing accepts connections there (with QEMU user-mode networking: QEMU does not
  forward that port at all, or the VM is not running);
- `dropped`: no answer to the connection within the timeout (a firewall drops the packets, or the
  host is unreachable);
- `closed`: connected, then closed at once with no bytes. That is what a QEMU user-mode forward
  shows when nothing listens on the port in the guest, or the guest firewall rejects it: QEMU
  accepts on the host, fails to connect in the guest and closes;
- `silent`: connected, but no answer within the timeout (the service hangs);
- `tls`: the TLS handshake failed (TLS spoken to plain HTTP or the reverse, a bad certificate);
- `protocol`: something answered, but not in the expected protocol (`wrong_service` when the
  first bytes say what it is, e.g. an SSH banner on an HTTP port);
- `http_status`: an HTTP answer with an error status (`status`, the first bytes of `body`).

An HTTP answer's status is the answer: of its body only the first BODY_LIMIT bytes are read, those
that came within the timeout (a body without end, or trickled, is neither waited for nor held).

Nothing here retries: a probe reports the first attempt as it was (the supervisor's breaker and
the next pass are the retry), and one probe never outlasts its timeout by more than a few ms
(an HTTP probe's status line and headers too, however slowly they come: adapters.http_deadline).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import httpx

from win_automation.adapters.http_deadline import Deadline
from win_automation.adapters.resolve import NameNotResolved, connect, lookup

Kind = Literal[
    "ok", "dns", "refused", "dropped", "closed", "silent", "tls", "protocol", "wrong_service", "http_status"
]
Speak = Literal["listen", "http2"]
"""What a TCP probe does once connected: `listen` waits for the server to speak first (SSH's
banner); `http2` sends the HTTP/2 preface and a SETTINGS frame, as a gRPC client does."""

BODY_LIMIT = 2048
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS_FRAME = 0x04


@dataclass
class Probe:
    """What one probe saw. `ok` means the transport worked: an HTTP probe can be ok with status 503
    only when `kind` is `http_status` (then `ok` is False); read `kind`."""

    target: str
    kind: Kind
    detail: str
    latency_ms: float
    status: int | None = None
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    first_bytes: bytes = b""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _oserror(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _chain_has(exc: BaseException, kind: type[BaseException]) -> bool:
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            return False
        if isinstance(current, kind):
            return True
        current = current.__cause__ or current.__context__
    return False


def name_of(first: bytes) -> str | None:
    """What service the first bytes a server sent betray, if any."""
    if first.startswith(b"SSH-"):
        return (
            "an SSH server (" + first.split(b"\r", 1)[0].split(b"\n", 1)[0].decode("ascii", "replace") + ")"
        )
    if first.startswith(b"HTTP/1.") or first.lstrip()[:1] == b"<":
        return "an HTTP/1 server"
    if first[:3] == b"\x00\x00\x12" or (len(first) >= 4 and first[3] == _SETTINGS_FRAME):
        return "an HTTP/2 (gRPC) server"
    if first[:1] == b"\x16":
        return "a TLS server"
    return None


def probe_tcp(host: str, port: int, timeout: float, *, speak: Speak = "listen") -> Probe:
    """Connect to host:port, then listen for the server's first bytes (or speak HTTP/2 first)."""
    target = f"{host}:{port}"
    started = time.perf_counter()
    deadline = started + timeout
    try:
        sock = connect(host, port, timeout)
    except NameNotResolved as exc:
        return Probe(target, "dns", str(exc), _ms(started))
    except TimeoutError:
        return Probe(target, "dropped", f"no answer to the connection within {timeout:g}s", _ms(started))
    except ConnectionRefusedError:
        return Probe(target, "refused", "connection refused", _ms(started))
    except OSError as exc:
        return Probe(target, "dropped", f"cannot connect: {exc.strerror or exc}", _ms(started))
    with sock:
        try:
            sock.settimeout(max(0.001, deadline - time.perf_counter()))
            if speak == "http2":
                sock.sendall(HTTP2_PREFACE)
            first = sock.recv(256)
        except TimeoutError:
            return Probe(target, "silent", f"connected, but no answer within {timeout:g}s", _ms(started))
        except OSError as exc:  # a reset right after the accept is the same as a close
            if isinstance(exc, ConnectionResetError | BrokenPipeError):
                first = b""
            else:
                return Probe(target, "protocol", f"connected, then {exc.strerror or exc}", _ms(started))
    latency = _ms(started)
    if not first:
        return Probe(target, "closed", "connected, then closed at once with no bytes", latency)
    expected = (
        first.startswith(b"SSH-") if speak == "listen" else len(first) >= 4 and first[3] == _SETTINGS_FRAME
    )
    if expected:
        return Probe(target, "ok", name_of(first) or "answered", latency, first_bytes=first)
    service = name_of(first)
    if service is not None:
        return Probe(target, "wrong_service", f"{service} answers here", latency, first_bytes=first)
    return Probe(target, "protocol", f"unexpected answer {first[:40]!r}", latency, first_bytes=first)


@cache
def _tls_context() -> ssl.SSLContext:
    """One default context for every probe: building one costs about 15 ms (the CA bundle)."""
    return ssl.create_default_context()


def probe_http(url: str, timeout: float, *, method: str = "GET") -> Probe:
    """One HTTP request, no redirects followed, no retry; the cause when it did not answer."""
    started = time.perf_counter()
    deadline = Deadline(timeout)  # the whole probe: lookup, connect, headers and body
    parts = httpx.URL(url)
    if parts.host:  # the lookup within the timeout first (httpx's connect timeout excludes it)
        try:
            lookup(parts.host, parts.port or (443 if parts.scheme == "https" else 80), timeout)  # its start
        except NameNotResolved as exc:
            return Probe(url, "dns", str(exc), _ms(started))
    try:
        with (
            deadline,
            httpx.Client(
                timeout=deadline.left(), follow_redirects=False, trust_env=False, verify=_tls_context()
            ) as client,
            client.stream(
                method, url, headers={"Connection": "close"}, extensions=deadline.extensions
            ) as response,
        ):
            first = _first_bytes(response, deadline.deadline)
    except httpx.ConnectTimeout:
        return Probe(url, "dropped", f"no answer to the connection within {timeout:g}s", _ms(started))
    except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
        return Probe(url, "silent", f"connected, but no HTTP answer within {timeout:g}s", _ms(started))
    except httpx.ConnectError as exc:
        if _chain_has(exc, ssl.SSLError):
            return Probe(url, "tls", f"TLS handshake failed: {exc}", _ms(started))
        error = _oserror(exc)
        if isinstance(error, ConnectionRefusedError):
            return Probe(url, "refused", "connection refused", _ms(started))
        if isinstance(error, socket.gaierror):
            return Probe(url, "dns", f"the name {parts.host!r} does not resolve", _ms(started))
        if isinstance(error, ConnectionResetError):
            return _closed(url, parts, timeout, started)
        return Probe(url, "dropped", f"cannot connect: {exc}", _ms(started))
    except httpx.RemoteProtocolError as exc:
        text = str(exc)
        if "without sending" in text or "Server disconnected" in text:
            return _closed(url, parts, timeout, started)
        return _not_http(url, text, started)
    except (httpx.ReadError, httpx.WriteError) as exc:
        if isinstance(_oserror(exc), ConnectionResetError):
            return _closed(url, parts, timeout, started)
        return Probe(url, "protocol", f"the connection failed: {exc}", _ms(started))
    except httpx.HTTPError as exc:
        return Probe(url, "protocol", f"{type(exc).__name__}: {exc}", _ms(started))
    latency = _ms(started)
    body = first.decode(response.encoding or "utf-8", errors="replace")
    headers = {k.lower(): v for k, v in response.headers.items()}
    if response.status_code >= 400:
        return Probe(
            url, "http_status", f"HTTP {response.status_code}", latency, response.status_code, body, headers
        )
    return Probe(url, "ok", f"HTTP {response.status_code}", latency, response.status_code, body, headers)


def _first_bytes(response: httpx.Response, deadline: float) -> bytes:
    """Up to BODY_LIMIT bytes of the body, those that came by `deadline`: the status is the
    answer, the body only says more, so a body without end or trickled a byte at a time is not
    waited for (nor held)."""
    got = bytearray()
    with contextlib.suppress(httpx.HTTPError):  # cut short after the status: what came is enough
        for piece in response.iter_bytes():
            got += piece
            if len(got) >= BODY_LIMIT or time.monotonic() >= deadline:
                break
    return bytes(got[:BODY_LIMIT])


def _closed(url: str, parts: httpx.URL, timeout: float, started: float) -> Probe:
    """No HTTP answer before the close: a server that speaks first (SSH's banner, then its refusal
    of the request line) looks the same to h11, so listen once to tell it from a silent close."""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    again = probe_tcp(parts.host, port, min(timeout, 0.5), speak="listen")
    if again.first_bytes:
        service = name_of(again.first_bytes) or f"a server that speaks first ({again.first_bytes[:20]!r})"
        return Probe(
            url,
            "wrong_service",
            f"{service} answers here, not HTTP",
            _ms(started),
            first_bytes=again.first_bytes,
        )
    return Probe(url, "closed", "connected, then closed at once with no bytes", _ms(started))


def _not_http(url: str, text: str, started: float) -> Probe:
    """An answer h11 could not parse: name the service when its first bytes say what it is."""
    marker = "bytearray(b"
    first = b""
    if marker in text:
        raw = text.split(marker, 1)[1].rsplit(")", 1)[0]
        try:
            import ast

            first = bytes(ast.literal_eval("b" + raw))
        except (ValueError, SyntaxError):
            first = raw.encode("latin-1", "replace")
    service = name_of(first)
    if service is not None:
        return Probe(
            url, "wrong_service", f"{service} answers here, not HTTP", _ms(started), first_bytes=first
        )
    return Probe(url, "protocol", f"the answer is not HTTP ({text})", _ms(started), first_bytes=first)
