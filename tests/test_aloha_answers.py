"""What one answer from an Aloha service may cost (adapters.aloha), against the stand-in client on
loopback: a 500 MiB body, or a gzip of one, is refused in one line (exit 1, not retried) having
held at most the 16 MiB cap in memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from aloha_standin import AlohaClient, Fault

from win_automation.adapters import aloha as aloha_adapter
from win_automation.adapters.aloha import Exchange
from win_automation.errors import WinAutomationError

HUGE = 500 << 20


@pytest.fixture
def client() -> Iterator[AlohaClient]:
    standin = AlohaClient()
    yield standin
    standin.stop()
    aloha_adapter.close_all()


def peak_of(fn: Any) -> tuple[Any, int]:
    """What `fn` raised (or returned), and the most memory Python held meanwhile."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except WinAutomationError as exc:
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("gzip", "words", "cap"),
    [
        (False, "with over 16 MiB", 24 << 20),  # the 16 MiB read, then refused
        # httpx inflated each 64 KiB read whole before the cap was checked: 140 MiB held
        (True, "with a body in content-encoding 'gzip', though asked for none", 4 << 20),
    ],
)
def test_a_500_mib_answer_is_refused_in_one_line_holding_at_most_the_cap(
    client: AlohaClient, gzip: bool, words: str, cap: int
) -> None:
    fault = Fault("/run_task", status=200, content_type="application/json", size=HUGE, gzip=gzip)
    client.faults.append(fault)
    service = aloha_adapter.aloha_service("client", client.url, 30.0)
    exchanges: list[Exchange] = []
    error, peak = peak_of(
        lambda: service.request("POST", "/run_task", {"task": "t"}, record=exchanges.append)
    )
    assert isinstance(error, WinAutomationError) and error.exit_code == 1, error
    message = str(error)
    assert words in message and "not retried" in message and "\n" not in message, message
    assert peak < cap, f"{peak / (1 << 20):.1f} MiB held"
    [exchange] = exchanges  # not retried
    assert exchange.status is None and exchange.error is not None and exchange.error in message
    assert fault.sent < 64 << 20  # the rest was never read (socket buffers take a few MiB)


def test_requests_ask_for_no_compression(client: AlohaClient) -> None:
    service = aloha_adapter.aloha_service("client", client.url, 30.0)
    service.request("POST", "/stop", record=lambda _: None)
    assert client.headers[-1]["accept-encoding"] == "identity"
