"""`win-automation vm status|screenshot|snapshot ...`: the QEMU VM from the host, through QMP.

Needs `vm.qmp_socket` (exit 2 when unset). A missing socket, a path that is not a socket or a dead
QEMU is one line, exit 3; a monitor that does not answer within `vm.qmp_timeout` exit 124, and a
snapshot save/load/delete not done within `vm.snapshot_timeout` exit 124 (QEMU may still complete
it); a snapshot that does not exist (load, delete) or already exists (save) exit 1, with nothing
changed; a bad snapshot name exit 2.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from win_automation.cli.output import print_json, print_table
from win_automation.cli.state import state

app = typer.Typer(
    help="The QEMU VM from the host: status, screenshots, snapshots (QMP).", no_args_is_help=True
)
snapshot_app = typer.Typer(help="Save, load, list and delete the VM's snapshots.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")

JSON = typer.Option(False, "--json", help="Print the result as JSON.")
NAME = typer.Argument(..., help="The snapshot's name (a letter, then letters, digits, . _ -).")


@app.command("status")
def status_cmd(ctx: typer.Context, as_json: bool = JSON) -> None:
    """The VM's run state (running, paused, guest crashed); exit 1 when the guest crashed."""
    from win_automation.operations.qemu import status

    result = status(state(ctx).config())
    if as_json:
        print_json(result.as_dict())
    else:
        note = "  (guest crashed)" if result.crashed else ""
        typer.echo(f"{result.status}{note}  running={str(result.running).lower()}  qmp={result.socket}")
    if result.crashed:
        raise typer.Exit(1)


@app.command("screenshot")
def screenshot_cmd(
    ctx: typer.Context,
    out: Path | None = typer.Option(
        None, "--out", help="PNG to write (default vm-screen-TIMESTAMP.png here); QEMU writes it."
    ),
    as_json: bool = JSON,
) -> None:
    """The VM's screen as QEMU shows it (works at the lock screen and with a hung guest)."""
    from win_automation.operations.qemu import Qemu

    config = state(ctx).config()
    if out is None:
        out = Path(f"vm-screen-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.png")
    shot = Qemu(config).screenshot(out)
    if as_json:
        print_json(shot.as_dict())
    else:
        typer.echo(f"{shot.path}  {shot.width}x{shot.height}  {shot.size_bytes} bytes  {shot.duration_ms} ms")


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context, as_json: bool = JSON) -> None:
    """The VM's snapshots, oldest first."""
    from win_automation.operations.qemu import Qemu

    snaps = Qemu(state(ctx).config()).snapshots()
    if as_json:
        print_json([s.as_dict() for s in snaps])
        return
    rows = [
        (
            s.name,
            datetime.fromtimestamp(s.created_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            f"{s.vm_state_bytes / 1048576:.1f} MiB",
            f"{s.vm_clock_seconds:.0f} s",
            ", ".join(s.devices),
        )
        for s in snaps
    ]
    print_table("snapshots", ["name", "created", "vm state", "vm clock", "disks"], rows)


@snapshot_app.command("save")
def snapshot_save(ctx: typer.Context, name: str = NAME, as_json: bool = JSON) -> None:
    """Save the whole VM (disks, memory, devices) as NAME; refused when NAME exists."""
    from win_automation.operations.qemu import Qemu

    snap = Qemu(state(ctx).config()).snapshot_save(name)
    _done("saved", snap.as_dict(), as_json)


@snapshot_app.command("load")
def snapshot_load(ctx: typer.Context, name: str = NAME, as_json: bool = JSON) -> None:
    """Put the VM back in snapshot NAME (what runs in it now is lost)."""
    from win_automation.operations.qemu import Qemu

    snap = Qemu(state(ctx).config()).snapshot_load(name)
    _done("loaded", snap.as_dict(), as_json)


@snapshot_app.command("delete")
def snapshot_delete(ctx: typer.Context, name: str = NAME, as_json: bool = JSON) -> None:
    """Delete snapshot NAME from every disk that holds it."""
    from win_automation.operations.qemu import Qemu

    snap = Qemu(state(ctx).config()).snapshot_delete(name)
    _done("deleted", snap.as_dict(), as_json)


def _done(verb: str, snap: dict[str, object], as_json: bool) -> None:
    if as_json:
        print_json({"action": verb, **snap})
    else:
        typer.echo(f"snapshot {snap['name']} {verb}")
