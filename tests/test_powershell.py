"""PowerShell encoding, quoting, CLIXML stripping and output decoding (pure; property tests)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from win_automation.operations import powershell


@given(st.text())
def test_encode_round_trips_any_text(script: str) -> None:
    encoded = powershell.encode(script)
    assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    assert powershell.decode(encoded) == script


@given(st.text(), st.lists(st.text(), max_size=4))
def test_wrapped_script_holds_body_and_literal_args(body: str, args: list[str]) -> None:
    script = powershell.wrap_script(body, args, run_id="abc")
    assert script.startswith("# win-automation run abc\n$ProgressPreference='SilentlyContinue'")
    assert f"{powershell.BEGIN_MARKER}\n{body}\n{powershell.END_MARKER}" in script
    assert script.rstrip().endswith("exit 0")
    for arg in args:
        assert powershell.quote_literal(arg) in script


@given(st.text())
def test_quote_literal_doubles_every_kind_of_single_quote(value: str) -> None:
    quoted = powershell.quote_literal(value)
    inner = quoted[1:-1]
    # Undo the doubling: what is left is the original, and no lone quote ends the literal early.
    out, i = [], 0
    while i < len(inner):
        c = inner[i]
        if c in "'\u2018\u2019\u201a\u201b":
            assert inner[i + 1] == c
            i += 2
        else:
            i += 1
        out.append(c)
    assert "".join(out) == value


def test_needle_is_unique_per_run_and_a_prefix_of_the_encoding() -> None:
    a = powershell.wrap_script("Get-Date", run_id="1" * 32)
    b = powershell.wrap_script("Get-Date", run_id="2" * 32)
    na, nb = powershell.encoded_needle(a), powershell.encoded_needle(b)
    assert na != nb and len(na) >= 100
    assert powershell.encode(a).startswith(na) and powershell.encoded_command_line(a).count(na) == 1


def test_long_scripts_need_upload() -> None:
    assert not powershell.needs_upload(powershell.wrap_script("x" * 1000))
    assert powershell.needs_upload(powershell.wrap_script("x" * 20_000))


def test_strip_clixml_keeps_errors_drops_progress() -> None:
    stderr = (
        "#< CLIXML\r\n"
        '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
        '</TN><MS><I64 N="SourceId">1</I64></MS></Obj>'
        '<S S="Error">Cannot find path &apos;C:\\x&apos; because it does not exist._x000D__x000A_</S>'
        '<S S="Error">second &amp; line_x000D__x000A_</S></Objs>'
    )
    assert (
        powershell.strip_clixml(stderr)
        == "Cannot find path 'C:\\x' because it does not exist.\nsecond & line\n"
    )
    assert powershell.strip_clixml("plain error\n") == "plain error\n"


def test_decode_output_utf8_then_utf16_then_oem() -> None:
    assert powershell.decode_output("héllo ✓".encode()) == "héllo ✓"
    assert powershell.decode_output("\ufeffhi".encode()) == "hi"
    assert powershell.decode_output("héllo".encode("utf-16-le")) == "héllo"
    assert powershell.decode_output(b"\xff\xfe" + "ok".encode("utf-16-le")) == "ok"
    assert powershell.decode_output("Grüße".encode("cp437")) == "Grüße"
    assert powershell.decode_output("é".encode("cp850"), oem_codepage="cp850") == "é"


@given(st.text())
def test_decode_output_reads_any_utf8(text: str) -> None:
    assert powershell.decode_output(text.encode()) == text.removeprefix("\ufeff")


def test_kill_script_names_the_needle_and_taskkills_the_tree() -> None:
    script = powershell.kill_tree_script("it's-unique")
    assert "$needle = 'it''s-unique'" in script and "taskkill.exe /T /F /PID" in script
    assert "$_.ProcessId -ne $PID" in script
