"""Keepalives that expect an answer, as OpenSSH's ServerAliveInterval and ServerAliveCountMax.

paramiko's own keepalives ask for no reply: a VM that is paused, or a link that drops packets
without a reset, leaves the TCP connection open and a running command waiting on it until its
deadline (300 s by default, hours for some jobs). Here one thread per connection asks the server
every `interval` (a `keepalive@openssh.com` global request with want-reply, which OpenSSH, and
Windows' OpenSSH, answer with a failure: an answer all the same) and closes the transport when no
answer comes within `bound`; what waits on its channels then fails with `silence()`'s words.

Only time this process was running counts toward `bound`: a client paused itself (Ctrl-Z, a
suspended laptop) finds the answer waiting when it resumes, and keeps its connection. And, as
OpenSSH counts it, any packet from the server is an answer: on a slow link a transfer's data in
flight (its 8 MiB window, the buffers on the way) comes before the keepalive's reply, which can
take longer than `bound` to arrive from a server that is busy sending.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref

import paramiko
from paramiko.common import cMSG_GLOBAL_REQUEST
from paramiko.message import Message

from win_automation.config.schema import SSHConfig

log = logging.getLogger("win_automation.adapters.ssh")

STEP = 0.1  # how often a wait for an answer looks at the clock
_silent: weakref.WeakKeyDictionary[paramiko.Transport, float] = weakref.WeakKeyDictionary()


def stall_seconds(cfg: SSHConfig) -> float:
    """How long a server may leave a keepalive unanswered, or a transfer go without a byte moving:
    ssh.connect_timeout (the time a server has to answer at all) or two keepalive intervals,
    whichever is longer."""
    return max(cfg.connect_timeout, 2 * cfg.keepalive_interval)


def watch(transport: paramiko.Transport, cfg: SSHConfig, target: str) -> None:
    """Ask `transport`'s server for an answer every ssh.keepalive_interval; close it when one does
    not come within `stall_seconds(cfg)` of this process's running time."""
    args = (weakref.ref(transport), cfg.keepalive_interval, stall_seconds(cfg), target)
    threading.Thread(target=_watch, args=args, daemon=True, name="ssh-liveness").start()


def lost(transport: paramiko.Transport | None) -> str:
    """How a closed transport was lost, for an error: `stopped answering for Ns` when keepalives
    went unanswered, else `was lost`."""
    silent = None if transport is None else _silent.get(transport)
    return "was lost" if silent is None else f"stopped answering for {silent:g}s"


def _ask(transport: paramiko.Transport) -> threading.Event:
    """Ask for an answer; the event is set when it comes. paramiko's global_request(wait=True)
    waits for it with no bound, and its send waits out a key exchange (30 s, then gives up), so
    the request goes out from a thread of its own, the wait for it counted like the rest. During a
    key exchange nothing else may be sent: the exchange is then the question, and its end (the
    server's NEWKEYS: clear_to_send) the answer."""
    exchanged: threading.Event = transport.clear_to_send
    if not exchanged.is_set():
        return exchanged
    answered = threading.Event()
    message = Message()
    message.add_byte(cMSG_GLOBAL_REQUEST)
    message.add_string("keepalive@openssh.com")
    message.add_boolean(True)

    def send() -> None:
        with transport.clear_to_send_lock:  # as paramiko's _send_user_message, without its wait
            if not transport.clear_to_send.is_set():  # an exchange began meanwhile: ask next time
                answered.set()
                return
            transport.completion_event = answered  # what a reply (success or failure) sets
            with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
                transport._send_message(message)

    threading.Thread(target=send, daemon=True, name="ssh-liveness-ask").start()
    return answered


def _watch(ref: weakref.ref[paramiko.Transport], interval: float, bound: float, target: str) -> None:
    while True:
        time.sleep(interval)
        transport = ref()
        if transport is None or not transport.is_active():
            return
        answered = _ask(transport)
        waited, last, heard = 0.0, time.monotonic(), _received(transport)
        while not answered.wait(STEP):
            if not transport.is_active():
                return
            now = time.monotonic()
            waited += min(now - last, 2 * STEP)  # a long step: this process was paused, not the server
            last = now
            if (took := _received(transport)) != heard:  # the server is talking: the reply may follow
                waited, heard = 0.0, took
            if waited >= bound:
                _silent[transport] = bound
                log.warning(
                    "the VM stopped answering keepalives; connection closed",
                    extra={"op": "ssh.keepalive", "target": target, "silent_s": bound},
                )
                transport.close()
                return
        del transport


def _received(transport: paramiko.Transport) -> tuple[int, int]:
    """What the transport has taken in: paramiko's own count (bytes, packets) for its re-key,
    which a re-key resets; any change is the server sending."""
    packetizer = transport.packetizer
    return (
        getattr(packetizer, "_Packetizer__received_bytes", 0),
        getattr(packetizer, "_Packetizer__received_packets", 0),
    )
