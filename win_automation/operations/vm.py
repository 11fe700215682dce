"""`Vm`: the one object that stands for the Windows VM, in the spirit of fabric's `Connection`.

A step gets it as `ctx.vm`; the CLI's direct commands (`ssh put/get/trust`) build one with
`Vm(config)`. It carries the VM's settings (remote OS, default command timeout) and the job's
cancel check and live-output sink, so a workflow never touches an adapter:

    result = ctx.vm.powershell("Get-Service sshd")          # CommandResult, streamed to ctx.emit
    result = ctx.vm.run("dir C:\\", shell="cmd", timeout=30)
    ctx.vm.put(Path("tool.zip"), "C:/tools/tool.zip")       # verified by size and sha256
    digest = ctx.vm.sha256("C:/tools/tool.zip")

The SSH connection underneath is the adapter's per-process pool (one transport per VM); in a CLI
process (`share_connections()`, called for job commands) with `ssh.persist` on, commands go
through the VM's warm helper instead (win_automation.adapters.persist), shared by CLI calls, and
paramiko is never imported for them; so do downloads (`get`: the helper writes the file this
process opened), while uploads use the in-process connection. With
`ssh.warm_powershell`, PowerShell commands run in the warm session of a long-lived executor (the
warm helper, or this process's connection in a long-lived process such as the worker); a CLI call
that connects itself (no helper yet, or `ssh.persist` 0) runs one command and exits, so it keeps
the per-command path, which costs less than starting a session. A job
that is cancelled stops a running command within ~0.1 s: its remote process tree is killed, as
at a timeout, and the result says `cancelled`. Later capabilities (Aloha, the browser, QMP) hang
off this object the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from win_automation.adapters.execution import Executor
from win_automation.config import Config
from win_automation.operations import ssh as commands
from win_automation.operations.command_result import CommandResult, Shell
from win_automation.operations.output_stream import Files, TextSink

if TYPE_CHECKING:
    from win_automation.adapters import hostkeys
    from win_automation.adapters.ssh import SshConnection
    from win_automation.operations import transfers
    from win_automation.operations.aloha import Aloha
    from win_automation.operations.qemu import Qemu

Emit = Callable[[str, str], None]
"""Live output: `emit(stream, text)` with stream `stdout` or `stderr`."""


def _never() -> bool:
    return False


_SHARED = False


def share_connections(on: bool = True) -> None:
    """Let this process run its commands through the VM's warm helper (when `ssh.persist` > 0).
    The CLI's job commands turn it on; long-lived processes (the worker) keep their own."""
    global _SHARED
    _SHARED = on


class Vm:
    """The VM of `config` (`ssh.*`), for one job (its cancel check and live output) or one command."""

    def __init__(
        self,
        config: Config,
        *,
        cancelled: Callable[[], bool] = _never,
        emit: Emit | None = None,
    ) -> None:
        self.config = config
        self.cancelled = cancelled
        self.emit = emit
        self._shared: Executor | None = None

    @property
    def key(self) -> str:
        """`host:port`: the VM's identity for locks and Hatchet concurrency keys."""
        return self.config.ssh.vm_key

    @property
    def qemu(self) -> Qemu:
        """The QEMU process behind the VM (QMP, `vm.qmp_socket`): `ctx.vm.qemu.screenshot(path)`,
        snapshots, run state. ConfigError when vm.qmp_socket is not set."""
        from win_automation.operations.qemu import Qemu

        return Qemu(self.config)

    @property
    def connection(self) -> Executor:
        """What runs commands: the warm helper shared by CLI calls, or this process's connection."""
        ssh = self.config.ssh
        if _SHARED and ssh.persist > 0:
            if self._shared is None:
                from win_automation.adapters.persist import shared_connection

                self._shared = shared_connection(ssh, self.config.data.dir, ssh.persist)
            return self._shared
        return self.ssh

    @property
    def ssh(self) -> SshConnection:
        """This process's own SSH connection (transfers, host keys)."""
        from win_automation.adapters.ssh import get_connection

        return get_connection(self.config.ssh)

    @cached_property
    def aloha(self) -> Aloha:
        """The VM's ShowUI-Aloha server and client (operations.aloha), bound to the cancel check."""
        from win_automation.operations.aloha import Aloha

        return Aloha(self.config, cancelled=self.cancelled)

    def _warm(self, conn: Executor) -> bool:
        """Whether PowerShell runs in a warm session: ssh.warm_powershell, and an executor that
        outlives this command (the warm helper; this process's connection unless it is a CLI
        call's, which runs one command and exits)."""
        if not self.config.ssh.warm_powershell:
            return False
        if not _SHARED:
            return True
        from win_automation.adapters.persist import WarmConnection

        return isinstance(conn, WarmConnection)

    def _sinks(self, live: bool) -> tuple[TextSink | None, TextSink | None]:
        emit = self.emit
        if not live or emit is None:
            return None, None
        return (lambda text: emit("stdout", text)), (lambda text: emit("stderr", text))

    def run(
        self,
        command: str,
        *,
        shell: Shell = "cmd",
        timeout: float | None = None,
        live: bool = True,
        files: Files = (None, None),
    ) -> CommandResult:
        """Run `command` in cmd (as given to the VM's shell) or PowerShell; `live` streams its
        output to the job's live-output sink, `files` (stdout, stderr) to files as it arrives
        (the result then keeps only each stream's tail)."""
        on_out, on_err = self._sinks(live)
        conn = self.connection
        return commands.run_command(
            conn,
            command,
            shell=shell,
            remote_os=self.config.ssh.remote_os,
            timeout=timeout or self.config.ssh.command_timeout,
            on_stdout=on_out,
            on_stderr=on_err,
            cancelled=self.cancelled,
            files=files,
            warm=self._warm(conn),
        )

    def powershell(
        self,
        script: str,
        *,
        args: tuple[str, ...] = (),
        timeout: float | None = None,
        display: str | None = None,
        live: bool = True,
        files: Files = (None, None),
    ) -> CommandResult:
        """Run a PowerShell script with `args` (encoded, or uploaded and run with -File when long)."""
        on_out, on_err = self._sinks(live)
        conn = self.connection
        return commands.run_powershell(
            conn,
            script,
            args=args,
            remote_os=self.config.ssh.remote_os,
            timeout=timeout or self.config.ssh.command_timeout,
            on_stdout=on_out,
            on_stderr=on_err,
            display=display,
            cancelled=self.cancelled,
            files=files,
            warm=self._warm(conn),
        )

    def put(
        self, local: Path, remote: str, progress: transfers.Progress | None = None
    ) -> transfers.TransferResult:
        from win_automation.operations import transfers

        return transfers.put_file(
            self.ssh, local, remote, remote_os=self.config.ssh.remote_os, progress=progress
        )

    def get(
        self, remote: str, local: Path, progress: transfers.Progress | None = None
    ) -> transfers.TransferResult:
        from win_automation.operations import transfers

        # Through the warm helper when this process shares connections (the helper then writes the
        # file this process opened); else over this process's own connection.
        return transfers.get_file(
            self.connection, remote, local, remote_os=self.config.ssh.remote_os, progress=progress
        )

    def sha256(self, remote: str) -> str:
        from win_automation.operations import transfers

        return transfers.remote_sha256(self.ssh, remote, self.config.ssh.remote_os)

    def host_key(self) -> HostKey:
        """The key the VM presents, not verified: `ssh trust` shows it, then `trust` records it."""
        from win_automation.adapters.ssh_connect import fetch_host_key

        key, presented = fetch_host_key(self.config.ssh)
        return HostKey(key, presented)

    def trust(self, host_key: HostKey, *, replace: bool = False) -> bool:
        """Record `host_key` (as shown) in `ssh.known_hosts`; True when the file changed."""
        from win_automation.adapters import hostkeys

        cfg = self.config.ssh
        return hostkeys.record(
            host_key.key, host=cfg.host, port=cfg.port, known_hosts=cfg.known_hosts, replace=replace
        )


@dataclass(frozen=True)
class HostKey:
    """A host key as presented: the key itself (opaque above the adapters) and what to show."""

    key: Any
    presented: hostkeys.PresentedKey


def preload() -> None:
    """Import what a job's shared connection needs (its warm-helper client; no paramiko): for a
    process that forks calls (the warm CLI process), so each call does not import it again."""
    import win_automation.adapters.persist  # noqa: F401


def warm_helpers(config: Config) -> list[dict[str, Any]]:
    """The warm-connection helpers of this data dir (`ssh persist status`)."""
    from win_automation.adapters import persist_wire as persist

    return persist.helpers(config.data.dir)


def stop_warm_helpers(config: Config, vm: str | None = None) -> list[dict[str, Any]]:
    """Stop the warm-connection helpers (`ssh persist stop`)."""
    from win_automation.adapters import persist_wire as persist

    return persist.stop_helpers(config.data.dir, vm)
