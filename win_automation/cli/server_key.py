"""Which warm CLI process may run a call: the key in its socket's name
(`<data dir>/cli-server/<key>.sock`, win_automation.cli.launch).

The key hashes the interpreter (its binary, version and environment, its flags, warning options
and module path after the script's own folder), the package's location and version, the
launcher's protocol, the mtimes of the sources (see `source_stamp`), the installed distributions
(see `installed_mtimes`) and the process's credentials (see `credentials`): a server never runs
other code, or with other rights, than a fresh process would. Imported by the launcher: only
what every Python start-up has loaded.
"""

from __future__ import annotations

import os
import sys

from win_automation import __version__

PROTOCOL = 1
"""The launcher's protocol with the server (win_automation.cli.launch)."""


def package_dirs() -> tuple[str, str]:
    """The win_automation package folder and the workflows package beside it."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return package, os.path.join(os.path.dirname(package), "workflows")


def source_stamp(folders: tuple[str, ...]) -> str:
    """The newest mtime (ns), the sum of the mtimes and the count of the .py files and folders
    under `folders`: a removed or renamed module changes its folder's mtime and the count, and
    a file whose mtime moves at all the sum (one set in the future, by clock skew or an unpacked
    archive, would otherwise stay the newest, and later edits not change the key)."""
    newest = total = count = 0
    pending = list(folders)
    while pending:
        folder = pending.pop()
        try:
            entries = os.scandir(folder)
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            continue
        newest, total, count = max(newest, mtime), total + mtime, count + 1
        with entries:
            for entry in entries:
                if entry.name.endswith(".py"):
                    try:
                        mtime = entry.stat().st_mtime_ns
                    except OSError:
                        continue
                    newest, total, count = max(newest, mtime), total + mtime, count + 1
                elif entry.name != "__pycache__" and entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
    return f"{newest}:{total}:{count}"


def installed_mtimes() -> str:
    """The mtime (ns) of each site-packages folder on the module path: installing, upgrading or
    removing a distribution adds or removes its `.dist-info` folder there, and the server holds
    the imports of typer, pydantic, rich... of its start."""
    stamps = []
    for folder in sys.path[1:]:
        if folder.endswith(("site-packages", "dist-packages")):
            try:
                stamps.append(str(os.stat(folder).st_mtime_ns))
            except OSError:
                stamps.append("")
    return ",".join(stamps)


def _sha256(data: bytes) -> str:
    if sys.version_info >= (3, 12):  # the C module itself: hashlib's import costs the launcher ~2 ms
        from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]
    else:
        from _sha256 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    return str(sha256(data).hexdigest())


_CREDENTIALS = (b"Uid:", b"Gid:", b"Groups:", b"Cap", b"NoNewPrivs:", b"Seccomp", b"Cpus_allowed:", b"Mems_a")
_NAMESPACES = ("mnt", "pid", "user", "net", "ipc", "uts")


def read_file(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
    finally:
        os.close(fd)


def credentials() -> bytes:
    """What a process may do, beyond its uid: its ids and groups, capabilities, no_new_privs,
    seccomp and allowed CPUs and memory nodes (/proc/self/status), its namespaces and root
    folder, its resource limits, nice value and scheduling policy. A server runs a call with its
    own (a forked child cannot take on the caller's), so a caller whose differ gets a server of
    its own (~20 us): one with fewer capabilities (`setpriv`, a restricted service), other
    groups, a sandbox, `ulimit`, `nice`, `chrt` or `taskset` never runs as the server."""
    status = read_file("/proc/self/status").splitlines()
    fields = [line for line in status if line.startswith(_CREDENTIALS)]
    for name in _NAMESPACES:
        try:
            fields.append(os.fsencode(os.readlink("/proc/self/ns/" + name)))
        except OSError:
            fields.append(b"")
    try:
        root = os.stat("/")
        fields.append(b"%d:%d" % (root.st_dev, root.st_ino))
    except OSError:
        fields.append(b"")
    fields.append(read_file("/proc/self/limits"))
    try:
        fields.append(b"%d:%d" % (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)))
    except (AttributeError, OSError):
        fields.append(b"")
    return b"\0".join(fields)


def server_key() -> str:
    """Which server may run this call: the interpreter (its binary, version and environment:
    `python` and `python3` of one venv are one; its flags, warning options and module path
    after the script's own folder, so PYTHONPATH or -O get their own server), the package's
    location and version, the protocol, the sources' mtimes (see `source_stamp`), the installed
    distributions (see `installed_mtimes`) and the process's credentials (see `credentials`),
    hashed."""
    package, workflows = package_dirs()
    interpreter = (
        os.path.realpath(sys.executable),
        sys.version,
        sys.prefix,
        repr(tuple(sys.flags)),
        repr(sys.warnoptions),
        repr(sys.path[1:]),
        installed_mtimes(),
    )
    text = "\0".join((str(PROTOCOL), *interpreter, package, __version__, source_stamp((package, workflows))))
    return _sha256(os.fsencode(text) + b"\0" + credentials())[:20]
