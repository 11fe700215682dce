"""`win-automation worker` and `--engine` as users meet them before any engine is involved: what to
set when Hatchet is not configured, one-line errors with exit 2, the token never shown."""

from __future__ import annotations

import pytest
from fake_hatchet import make_token


def test_worker_without_hatchet_says_what_to_set_and_that_local_works(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("worker")
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "HATCHET_CLIENT_TOKEN" in result.stderr and "local engine" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["worker"], {"HATCHET_CLIENT_TOKEN": "sekret-token-value"}, "is not a JWT"),
        (["worker", "--label", "novalue"], {}, "--label: expected key=value"),
        (["worker", "--label", "vm=x\udcffy"], {}, "--label vm=x\\udcffy: not valid UTF-8"),  # argv b"\xff"
        (["worker", "--name", "w\udcff"], {}, "--name w\\udcff: not valid UTF-8"),
        (["worker", "--grace", "soon"], {}, "--grace: must be a duration"),
        (
            ["worker", "--metrics", "--metrics-interval", "0s"],
            {},
            "--metrics-interval: must be more than zero",
        ),
        (["run", "ping", "--engine", "remote"], {}, "--engine: must be one of local, hatchet"),
        (["run", "ping", "--no-wait"], {}, "--no-wait: only with the hatchet engine"),
        (
            ["run", "ping", "--engine", "hatchet"],
            {},
            "hatchet.token (environment HATCHET_CLIENT_TOKEN) is not set",
        ),
    ],
)
def test_bad_worker_and_engine_options_are_one_line_exit_2(cli, args, env, message) -> None:  # type: ignore[no-untyped-def]
    result = cli(*args, env=env)
    assert result.code == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "sekret-token-value" not in result.stderr + result.stdout


def test_unreachable_engine_is_a_connect_error_and_no_job_is_recorded(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    token = make_token("http://127.0.0.1:9", "127.0.0.1:9")
    env = {"HATCHET_CLIENT_TOKEN": token, "HATCHET_CLIENT_HOST_PORT": "127.0.0.1:9"}
    result = cli("run", "ping", "--engine", "hatchet", env=env, timeout=90)
    assert result.code == 3, result.stderr
    assert "Hatchet at 127.0.0.1:9 is not reachable" in result.stderr
    assert token not in result.stderr
    listed = cli("jobs", "list", "--json")
    assert listed.code == 0 and listed.stdout.strip() == "[]"


def test_worker_refuses_an_engine_too_old_for_the_sdk(cli) -> None:  # type: ignore[no-untyped-def]
    from fake_hatchet import FakeHatchet

    engine = FakeHatchet(version="v0.70.2").start()
    try:
        result = cli("worker", env=engine.env(), timeout=90)
    finally:
        engine.stop()
    assert result.code == 2, result.stderr
    assert "is v0.70.2; hatchet-sdk 1.43 needs v0.78.23 or newer" in result.stderr
    assert "Traceback" not in result.stderr and not engine.workflows


def test_worker_with_an_unreachable_engine_exits_3(cli) -> None:  # type: ignore[no-untyped-def]
    token = make_token("http://127.0.0.1:9", "127.0.0.1:9")
    result = cli("worker", env={"HATCHET_CLIENT_TOKEN": token, "HATCHET_CLIENT_HOST_PORT": "127.0.0.1:9"})
    assert result.code == 3, result.stderr
    assert "Hatchet at 127.0.0.1:9 is not reachable" in result.stderr and token not in result.stderr
