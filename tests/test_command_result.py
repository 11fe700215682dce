"""Exit-code mapping of remote commands to the CLI's exit code."""

from __future__ import annotations

from win_automation.operations.command_result import cli_exit_code, describe_exit_code, signed32


def test_windows_codes_are_signed_and_mapped_into_0_255() -> None:
    assert signed32(3221225477) == -1073741819  # 0xC0000005, an access violation
    assert signed32(4294967295) == -1
    assert signed32(3) == 3
    assert [cli_exit_code(c) for c in (0, 1, 255, 256, 1000, -1, -1073741819)] == [
        0,
        1,
        255,
        255,
        255,
        255,
        255,
    ]
    assert describe_exit_code(-1073741819) == "-1073741819 (0xC0000005)"
    assert describe_exit_code(7) == "7"
