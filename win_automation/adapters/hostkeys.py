"""Host-key verification against the project's known-hosts file or a pinned fingerprint.

There is no AutoAddPolicy: an unknown key is refused with its type and SHA256 fingerprint and the
command that trusts it; a changed key is refused loudly; `record` (used by `ssh trust`) is the
only writer of the known-hosts file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import paramiko

from win_automation.errors import ConfigError, HostKeyError, StorageError
from win_automation.partfiles import fitting, owner_tag
from win_automation.regularfiles import NotRegularFile, open_regular

TRUST_COMMAND = "win-automation ssh trust"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's `SHA256:...` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def host_entry(host: str, port: int) -> str:
    """The known-hosts name of host:port (`[host]:port` unless the port is 22)."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass(frozen=True)
class PresentedKey:
    host: str
    port: int
    key_type: str
    fingerprint: str

    def describe(self) -> str:
        return f"{self.key_type} key {self.fingerprint}"

    @property
    def entry(self) -> str:
        """The known-hosts name (`[host]:port`)."""
        return host_entry(self.host, self.port)


MAX_LINE = 64 * 1024
"""The longest known-hosts line read (an RSA-16384 key is ~2.8 KB): a longer one is refused."""
MAX_FILE = 16 << 20
"""The largest known-hosts file read (a thousand hosts with three keys each is ~1 MiB): it is read
whole, so a bigger one (a file of garbage, a sparse file) is refused before it is read."""

# A line that is not blank and not a comment (comments cost nothing, however many there are).
_CONTENT = re.compile(r"^[ \t\r\f\v]*[^#\s][^\n]*", re.MULTILINE)


@dataclass
class _Line:
    number: int
    start: int  # the line's span in the file's text, without its line break
    end: int
    entry: paramiko.hostkeys.HostKeyEntry | None  # None: a marker or a key type paramiko does not know
    revoked: bool = False  # `@revoked`: the entry's key is refused for its hosts


@dataclass
class _File:
    text: str  # the whole file (a UTF-8 BOM dropped)
    lines: list[_Line]  # its lines that are not blank or comments, in order


def _bad(path: Path, number: int, what: str) -> HostKeyError:
    return HostKeyError(
        f"known-hosts file {path}: line {number}{what}; fix or delete that line (ssh.known_hosts)"
    )


def _parse(path: Path, number: int, text: str) -> tuple[paramiko.hostkeys.HostKeyEntry | None, bool]:
    """One known-hosts line that is not blank or a comment, checked: a line OpenSSH or paramiko
    could not read is an error naming it, never skipped (a truncated key would be read as another
    key). Its entry (None for a marker or an unknown key type) and whether it is `@revoked`."""
    line = text.strip()
    revoked = line.startswith("@revoked ")
    if revoked:
        line = line.removeprefix("@revoked").lstrip()
    elif line.startswith("@"):  # @cert-authority: certificates are not used
        return None, False
    fields = line.split()
    if len(fields) < 3:
        raise _bad(path, number, " is not `host key-type base64-key`")
    names, key_type, data = fields[:3]
    try:
        blob = base64.b64decode(data, validate=True)
    except ValueError:
        raise _bad(path, number, ": the key is not valid base64") from None
    try:
        key = paramiko.PKey.from_type_string(key_type, blob)
    except paramiko.UnknownKeyType:
        return None, False  # a type this client does not know: never matches, kept
    except Exception:  # each key class fails in its own way (nacl, struct, ...)
        key = None
    if key is None or key.asbytes() != blob:  # paramiko pads a short blob with zeros
        raise _bad(path, number, f": the {key_type[:40]} key is truncated or malformed")
    return paramiko.hostkeys.HostKeyEntry(names.split(","), key), revoked


def _text(path: Path) -> str:
    """The known-hosts file's text ("" when there is no file), at most MAX_FILE bytes."""
    try:
        with open_regular(path) as file:  # a FIFO would block the read, /dev/zero never ends
            size = os.fstat(file.fileno()).st_size
            data = file.read(min(size, MAX_FILE) + 1)  # a buffer of the file's size, not MAX_FILE's
            if size < len(data) <= MAX_FILE:  # it grew, or its size says nothing (/proc): read on
                data += file.read(MAX_FILE + 1 - len(data))
    except FileNotFoundError:
        return ""
    except NotRegularFile as exc:
        raise ConfigError(f"ssh.known_hosts: {path} is {exc.strerror}") from None
    except IsADirectoryError:
        raise ConfigError(f"ssh.known_hosts: {path} is not a regular file (a directory)") from None
    except OSError as exc:
        raise HostKeyError(f"cannot read known-hosts file {path}: {exc.strerror or exc}") from exc
    if size > MAX_FILE or len(data) > MAX_FILE:
        raise HostKeyError(
            f"known-hosts file {path} is larger than {MAX_FILE >> 20} MiB: not a known-hosts file;"
            " fix or delete it (ssh.known_hosts)"
        )
    if (nul := data.find(b"\0")) >= 0:
        raise _bad(path, data.count(b"\n", 0, nul) + 1, " is not text (binary data)")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a BOM (Windows editors) is not a name
    except UnicodeDecodeError as exc:
        raise _bad(path, data.count(b"\n", 0, exc.start) + 1, " is not text (not UTF-8)") from None


def _read(path: Path) -> _File:
    """The known-hosts file, every line that is not blank or a comment checked."""
    text = _text(path)
    lines: list[_Line] = []
    number, counted = 1, 0
    for match in _CONTENT.finditer(text):
        number += text.count("\n", counted, match.start())
        counted = match.start()
        if match.end() - match.start() > MAX_LINE:
            raise _bad(path, number, f" is longer than {MAX_LINE} bytes")
        entry, revoked = _parse(path, number, match.group())
        if entry is not None:
            lines.append(_Line(number, match.start(), match.end(), entry, revoked))
    return _File(text, lines)


def _keys(lines: list[_Line]) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    for line in lines:
        # as HostKeys.load: a name already known with this key is not repeated
        if line.entry is not None and not line.revoked:
            names = [h for h in line.entry.hostnames if not keys.check(h, line.entry.key)]
            if names:
                keys._entries.append(paramiko.hostkeys.HostKeyEntry(names, line.entry.key))
    return keys


def _matches(pattern: str, name: str) -> bool:
    """OpenSSH's host pattern (`*` and `?` only; `[` is a plain character, as in `[h]:2`)."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), name) is not None


def _revoked(lines: list[_Line], key: paramiko.PKey, name: str) -> int | None:
    """The number of the `@revoked` line that names `key` for `name` (or a pattern matching it)."""
    for line in lines:
        entry = line.entry
        if (
            line.revoked
            and entry is not None
            and entry.key == key
            and any(_is(h, name) or _matches(h, name) for h in entry.hostnames)
        ):
            return line.number
    return None


def _is(hostname: str, name: str) -> bool:
    """Whether a known-hosts name is `name` (plainly or hashed, `|1|salt|hash`)."""
    return hostname == name or (
        hostname.startswith("|1|") and paramiko.HostKeys.hash_host(name, hostname) == hostname
    )


def known_types(path: Path, host: str, port: int) -> list[str]:
    """The key types recorded for host:port (to ask the server for one of them first)."""
    entry = _keys(_read(path).lines).lookup(host_entry(host, port))
    return list(entry.keys()) if entry is not None else []


def verify(
    key: paramiko.PKey, *, host: str, port: int, known_hosts: Path, pinned: str | None
) -> PresentedKey:
    """Accept `key` when it matches the pinned fingerprint or the known-hosts entry; else refuse."""
    presented = PresentedKey(host, port, key.get_name(), fingerprint(key))
    name = host_entry(host, port)
    if pinned is not None:
        if presented.fingerprint == pinned:
            return presented
        raise HostKeyError(
            f"HOST KEY MISMATCH for {name}: the server presented {presented.describe()}, but "
            f"ssh.host_key_fingerprint pins {pinned}. Someone may be intercepting the connection; "
            "refusing to connect"
        )
    lines = _read(known_hosts).lines
    revoked = _revoked(lines, key, name)
    if revoked is not None:
        raise HostKeyError(
            f"REVOKED host key for {name}: the server presented {presented.describe()}, which "
            f"{known_hosts} line {revoked} marks @revoked; refusing to connect"
        )
    recorded = _keys(lines).lookup(name)
    if recorded is None or not recorded.keys():
        raise HostKeyError(
            f"unknown host key for {name}: {presented.describe()}. If that is the VM's key, "
            f"trust it with `{TRUST_COMMAND}` (records it in {known_hosts})"
        )
    same_type = recorded.get(presented.key_type)
    if same_type is not None and same_type == key:
        return presented
    held = ", ".join(f"{t} {fingerprint(k)}" for t, k in recorded.items())
    raise HostKeyError(
        f"HOST KEY CHANGED for {name}: the server presented {presented.describe()}, but "
        f"{known_hosts} holds {held}. Someone may be intercepting the connection, or the VM was "
        f"reinstalled; refusing to connect (after checking, `{TRUST_COMMAND} --replace`)"
    )


def record(key: paramiko.PKey, *, host: str, port: int, known_hosts: Path, replace: bool = False) -> bool:
    """Write `key` for host:port into the known-hosts file; False when it was already there.

    A different key already recorded for the host is kept (HostKeyError) unless `replace`.
    """
    name = host_entry(host, port)
    known = _read(known_hosts)
    recorded = _keys(known.lines).lookup(name)
    if recorded is not None and recorded.get(key.get_name()) == key:
        return False
    if recorded is not None and recorded.keys() and not replace:
        raise HostKeyError(
            f"{known_hosts} already holds a different key for {name}; "
            f"pass --replace to replace it with {key.get_name()} {fingerprint(key)}"
        )
    # Every other line stays as it was (comments, markers, `@revoked` lines, other hosts, key
    # types paramiko does not know); a line naming this host among others loses this name only.
    kept: list[str] = []
    done = 0
    for line in known.lines:
        entry = line.entry
        if entry is None or line.revoked or not any(_is(h, name) for h in entry.hostnames):
            continue
        kept.append(known.text[done : line.start])
        others = [h for h in entry.hostnames if not _is(h, name)]
        if others:
            kept.append(paramiko.hostkeys.HostKeyEntry(others, entry.key).to_line().rstrip("\n"))
            done = line.end
        else:
            done = line.end + 1  # the line goes, with its line break
    kept.append(known.text[done:])
    text = "".join(kept)
    text += (
        "\n" if text and not text.endswith("\n") else ""
    ) + f"{name} {key.get_name()} {key.get_base64()}\n"
    _replace(known_hosts, text.encode("utf-8"))
    return True


def _replace(path: Path, data: bytes) -> None:
    """`path` replaced by a file holding `data` (0600): written to a new file of its own beside it
    (O_EXCL|O_NOFOLLOW: never a FIFO, a link or another's file planted there), synced, renamed."""
    tmp = path.with_name(f".tmp-{fitting(path.name, 6)}.{owner_tag()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o600)  # whatever the umask
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except OSError as exc:  # a full or read-only disk: the file is as it was, no temporary file left
        raise StorageError(f"ssh.known_hosts: cannot write {path}: {exc.strerror or exc}") from None
