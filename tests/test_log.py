"""The key=value log schema: required keys, encoding of hostile values, and redaction."""

from __future__ import annotations

import io
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from win_automation import log


def parse_line(line: str) -> dict[str, str]:
    """A reference parser for the schema: bare or double-quoted values with escapes."""
    out: dict[str, str] = {}
    pos = 0
    pattern = re.compile(r'([a-z_]+)=(?:"((?:[^"\\]|\\.)*)"|([^ "]*))(?: |$)')
    while pos < len(line):
        match = pattern.match(line, pos)
        assert match, f"unparseable at {pos}: {line[pos:]!r}"
        key, quoted, bare = match.groups()
        out[key] = bare if quoted is None else quoted.encode("ascii").decode("unicode_escape")
        pos = match.end()
    return out


def emit(level: int, msg: str, **extra: object) -> str:
    stream = io.StringIO()
    log.install(logging.DEBUG, stream)
    logging.getLogger("win_automation.adapters.ssh").log(level, msg, extra=extra)
    return stream.getvalue()


def test_required_keys_in_order_and_rfc3339() -> None:
    line = emit(logging.WARNING, "connected", op="connect", host="vm")
    assert line.endswith("\n") and line.count("\n") == 1
    assert re.match(
        r"^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=warn component=adapters\.ssh op=connect "
        r"msg=connected host=vm\n$",
        line,
    )


@pytest.mark.parametrize(
    ("level", "name"),
    [
        (logging.DEBUG, "debug"),
        (logging.INFO, "info"),
        (logging.WARNING, "warn"),
        (logging.ERROR, "error"),
        (logging.CRITICAL, "error"),
    ],
)
def test_level_names(level: int, name: str) -> None:
    assert f" level={name} " in emit(level, "x", op="o")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ('say "hi"', r'"say \"hi\""'),
        ("C:\\Windows", r'"C:\\Windows"'),
        ("line1\nline2", r'"line1\nline2"'),
        ("caf\u00e9 \u2603 \U0001f600", r'"caf\u00e9 \u2603 \U0001f600"'),
        ("", '""'),
        ("tab\there", r'"tab\there"'),
        (42, "42"),
    ],
)
def test_encoding_of_hostile_values(value: object, encoded: str) -> None:
    assert log.encode_value(value) == encoded


@given(st.text())
def test_any_value_round_trips_as_ascii_on_one_line(value: str) -> None:
    line = log.format_line([("msg", value), ("k", "v")])
    assert line.isascii() and "\n" not in line
    assert parse_line(line) == {"msg": value, "k": "v"}


def test_exception_becomes_err_and_duration_is_kept() -> None:
    stream = io.StringIO()
    log.install(logging.INFO, stream)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("win_automation.x").exception("failed", extra={"op": "run", "duration_ms": 12})
    fields = parse_line(stream.getvalue().rstrip("\n"))
    assert fields["err"] == "RuntimeError: boom\nsecond line"
    assert fields["duration_ms"] == "12"
    assert stream.getvalue().count("\n") == 1


def test_debug_is_off_unless_asked() -> None:
    stream = io.StringIO()
    log.install(logging.INFO, stream)
    logging.getLogger("win_automation.x").debug("hidden", extra={"op": "o"})
    assert stream.getvalue() == ""


def test_a_librarys_python_warning_is_a_debug_line_not_raw_stderr(capsys) -> None:  # type: ignore[no-untyped-def]
    """cryptography 51 warned on any use of its DSA classes: two raw lines around `ssh run`'s
    one-line error, which scripts read."""
    import warnings

    for level, shown in ((logging.WARNING, False), (logging.INFO, False), (logging.DEBUG, True)):
        stream = io.StringIO()
        log.install(level, stream)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("DSA is deprecated", UserWarning, stacklevel=1)
        assert capsys.readouterr().err == ""
        lines = stream.getvalue().splitlines()
        assert len(lines) == (1 if shown else 0), lines
        if shown:
            fields = parse_line(lines[0])
            assert fields["msg"] == "UserWarning: DSA is deprecated" and fields["level"] == "warn"
            assert fields["op"] == "warning" and fields["at"].startswith(__file__ + ":")


def test_registered_secrets_and_secretstr_never_appear() -> None:
    log.register_secret("tok-very-secret")
    line = emit(
        logging.INFO,
        "using token tok-very-secret",
        op="auth",
        header="Bearer tok-very-secret",
        password=SecretStr("pw-hidden"),
    )
    assert "tok-very-secret" not in line and "pw-hidden" not in line
    assert parse_line(line.rstrip("\n"))["header"] == "Bearer ***"
    assert parse_line(line.rstrip("\n"))["password"] == "***"


def test_terminal_commands_show_warnings_only_unless_asked(cli) -> None:  # type: ignore[no-untyped-def]
    quiet = cli("run", "ping")
    assert quiet.code == 0, quiet.stderr
    assert "level=info" not in quiet.stderr and "level=debug" not in quiet.stderr
    verbose = cli("-v", "run", "ping")
    assert verbose.code == 0 and "level=info" in verbose.stderr and "job queued" in verbose.stderr
    assert "level=debug" not in verbose.stderr
    long_form = cli("--verbose", "run", "ping")
    assert "level=info" in long_form.stderr
    debug = cli("--debug", "run", "ping")
    assert "level=debug" in debug.stderr and "level=info" in debug.stderr


def test_long_running_services_keep_info() -> None:
    from win_automation.cli.app import SERVICES, log_level

    assert {"worker", "supervisor"} <= SERVICES
    assert log_level("worker", verbose=False, debug=False) == logging.INFO
    assert log_level("run", verbose=False, debug=False) == logging.WARNING
    assert log_level("ssh", verbose=True, debug=False) == logging.INFO
    assert log_level("worker", verbose=False, debug=True) == logging.DEBUG
