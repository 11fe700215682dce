"""Connecting to the VM: one attempt (socket, SSH handshake, host-key check, authentication),
and the host key alone for `ssh trust`. win_automation.adapters.ssh holds the connection that
uses these (retries, reconnects, channels) and the per-process pool.

The handshake prefers AES-GCM and the key types already recorded for the host, and is bounded by
ssh.connect_timeout (paramiko's own timeout returns silently); authentication tries the key file,
then the agent's keys, then the password, and raises AuthError naming what was tried.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable
from typing import Any

import paramiko
import paramiko.agent
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from paramiko.message import Message
from paramiko.pkey import PublicBlob

from win_automation.adapters import hostkeys, resolve, ssh_liveness
from win_automation.config.schema import SSHConfig
from win_automation.errors import AuthError, ConfigError, ConnectError
from win_automation.log import register_secret
from win_automation.regularfiles import NotRegularFile, open_regular
from win_automation.retry import call_with_retry

log = logging.getLogger("win_automation.adapters.ssh")

# Larger windows and packets than paramiko's 2 MiB/32 KiB: fewer window adjustments and fewer
# (Python-processed) packets. Much larger windows are slower: paramiko's buffers copy on each read.
WINDOW_SIZE = 8 * 1024 * 1024
MAX_PACKET_SIZE = 128 * 1024
# AES-GCM needs no separate MAC pass: the cheapest cipher paramiko offers.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")


def target(cfg: SSHConfig) -> str:
    return f"{cfg.user}@{cfg.host}:{cfg.port}"


def _open_socket(cfg: SSHConfig) -> socket.socket:
    try:
        sock = resolve.connect(cfg.host, cfg.port, cfg.connect_timeout)
    except resolve.NameNotResolved as exc:
        raise ConnectError(f"cannot connect to {cfg.host}:{cfg.port}: {exc}") from exc
    except TimeoutError as exc:
        raise ConnectError(
            f"connecting to {cfg.host}:{cfg.port} timed out after {cfg.connect_timeout:g}s"
        ) from exc
    except OSError as exc:
        raise ConnectError(f"cannot connect to {cfg.host}:{cfg.port}: {exc.strerror or exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def start_transport(cfg: SSHConfig) -> paramiko.Transport:
    """A transport whose key exchange is done (host key not yet verified, not authenticated)."""
    sock = _open_socket(cfg)
    transport = paramiko.Transport(
        sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE
    )
    options = transport.get_security_options()
    options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in options.ciphers) + tuple(
        c for c in options.ciphers if c not in PREFERRED_CIPHERS
    )
    if cfg.host_key_fingerprint is None:
        recorded = hostkeys.known_types(cfg.known_hosts, cfg.host, cfg.port)
        known = [t for t in recorded if t in options.key_types]
        options.key_types = tuple(known) + tuple(t for t in options.key_types if t not in known)
    # paramiko's start_client(timeout=) returns silently when the timeout passes: wait on its
    # event ourselves, so a server that accepts TCP and never speaks SSH is a connection fault.
    transport.banner_timeout = cfg.connect_timeout
    negotiated = threading.Event()
    try:
        transport.start_client(event=negotiated)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise ConnectError(f"SSH handshake with {cfg.host}:{cfg.port} failed: {exc}") from exc
    done = negotiated.wait(cfg.connect_timeout)
    if not done or not transport.is_active():
        failure = transport.get_exception()
        banner = bool(getattr(transport, "remote_version", ""))
        transport.close()
        if failure is not None and banner:
            raise ConnectError(f"SSH handshake with {cfg.host}:{cfg.port} failed: {failure}") from failure
        if _closed_by_peer(failure):
            raise ConnectError(
                f"{cfg.host}:{cfg.port} accepted the connection and closed it before any SSH handshake"
                " (is the VM's SSH server up yet? a port forward, as QEMU's, accepts for it)"
            ) from failure
        raise ConnectError(
            f"{cfg.host}:{cfg.port} accepted the connection but did not answer the SSH handshake"
            f" within {cfg.connect_timeout:g}s (is an SSH server listening there?)"
        ) from failure
    return transport


def _closed_by_peer(failure: BaseException | None) -> bool:
    """True when the handshake met the connection's end: EOF, or a reset (the peer closed with
    our banner unread), met as our banner went out or as theirs was read. A silent server's
    ends in a socket.timeout instead."""
    ends = (EOFError, ConnectionError)
    if isinstance(failure, paramiko.SSHException):
        failure = failure.__context__
    return isinstance(failure, ends)


MAX_KEY_FILE = 1 << 20
"""The largest key or certificate file read (a real one is a few KiB): a bigger one is refused
before it is read (paramiko reads it whole: a 2 GB file cost 2 GB of memory)."""

_KEY_CLASSES: tuple[tuple[type[Any], type[paramiko.PKey]], ...] = (
    (rsa.RSAPrivateKey, paramiko.RSAKey),
    (ed25519.Ed25519PrivateKey, paramiko.Ed25519Key),
    (ec.EllipticCurvePrivateKey, paramiko.ECDSAKey),
)


def _read_small(path: str, what: str) -> bytes:
    """`path`'s bytes, when it is a regular file of at most MAX_KEY_FILE bytes; else ConfigError
    (a FIFO, device or folder) or AuthError, one line starting with `what` (which names it)."""
    try:
        with open_regular(path) as file:
            data = file.read(MAX_KEY_FILE + 1)
    except FileNotFoundError as exc:
        raise AuthError(f"{what} does not exist") from exc
    except NotRegularFile as exc:
        raise ConfigError(f"{what} is {exc.strerror}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is not a regular file (a directory)") from None
    except OSError as exc:  # permission denied, a symlink loop, an I/O error
        raise AuthError(f"{what} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise AuthError(f"{what} is larger than {MAX_KEY_FILE >> 20} MiB (a key or certificate is a few KiB)")
    return data


def load_key(cfg: SSHConfig) -> paramiko.PKey:
    """The private key of ssh.key_file, with its certificate (`KEY-cert.pub`) when there is one;
    ConfigError or AuthError in one line naming the file and what is wrong with it."""
    assert cfg.key_file is not None
    path = str(cfg.key_file)
    data = _read_small(path, f"ssh.key_file: {path}")
    secret = cfg.key_passphrase.get_secret_value().encode() if cfg.key_passphrase is not None else None
    passphrase = secret or None
    try:
        with warnings.catch_warnings():  # cryptography warns that DSA keys are deprecated
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            try:
                loaded: Any = serialization.load_ssh_private_key(data, passphrase)
            except ValueError:
                loaded = serialization.load_pem_private_key(data, passphrase)
        key_class = next((k for t, k in _KEY_CLASSES if isinstance(loaded, t)), None)
        if key_class is None:
            # by name: cryptography 51 warns on any use of its dsa module's classes
            kind = type(loaded).__name__.removesuffix("PrivateKey")
            raise AuthError(f"ssh.key_file {path}: {kind} keys are not supported; use an ed25519 or RSA key")
        key = key_class(file_obj=io.StringIO(data.decode("ascii")), password=passphrase)
    except TypeError as exc:  # cryptography: "Password was not given but private key is encrypted"
        if passphrase is None:
            raise AuthError(
                f"ssh.key_file {path} is encrypted: set WIN_AUTOMATION_SSH_KEY_PASSPHRASE"
            ) from exc
        raise AuthError(
            f"ssh.key_file {path} is not encrypted: unset WIN_AUTOMATION_SSH_KEY_PASSPHRASE"
        ) from exc
    except paramiko.PasswordRequiredException as exc:
        raise AuthError(f"ssh.key_file {path} is encrypted: set WIN_AUTOMATION_SSH_KEY_PASSPHRASE") from exc
    except (paramiko.SSHException, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise AuthError(f"cannot load ssh.key_file {path} (wrong passphrase or not a private key)") from exc
    cert = f"{path}-cert.pub"
    if os.path.lexists(cert):  # as paramiko's from_path and OpenSSH: offered with the key
        text = _read_small(cert, f"ssh.key_file {path}: its certificate {cert}")
        try:
            key.load_certificate(Message(PublicBlob.from_string(text.decode("ascii")).key_blob))
        except Exception as exc:  # a blob fails in its own way (ValueError, struct, IndexError ...)
            raise AuthError(
                f"ssh.key_file {path}: its certificate {cert} is not an OpenSSH certificate of"
                " this key; fix or remove it"
            ) from exc
    return key


def _open_agent(timeout: float) -> paramiko.agent.AgentSSH | str:
    """The SSH agent at SSH_AUTH_SOCK, with its keys, each of its answers awaited at most
    `timeout` seconds (paramiko's Agent waits for ever: a paused agent held every command); or
    why there are no keys to try."""
    path = os.environ.get("SSH_AUTH_SOCK")
    if not path:
        return "none running: SSH_AUTH_SOCK is not set"
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    agent = paramiko.agent.AgentSSH()
    try:
        conn.connect(path)
        agent._connect(conn)
    except TimeoutError:
        conn.close()
        log.warning("the SSH agent did not answer", extra={"op": "ssh.agent", "timeout_s": timeout})
        return f"no answer within {timeout:g}s from the one at SSH_AUTH_SOCK"
    except (paramiko.SSHException, OSError) as exc:
        conn.close()
        return f"none answers at SSH_AUTH_SOCK: {getattr(exc, 'strerror', None) or exc}"
    if not agent.get_keys():
        agent._close()
        return "it holds no keys"
    return agent


def _authenticate(transport: paramiko.Transport, cfg: SSHConfig) -> str:
    """Try the key file, then the agent's keys, then the password; returns the method that worked."""
    tried: list[str] = []

    def attempt(method: str, fn: Callable[[], Any]) -> bool:
        tried.append(method)
        try:
            fn()
        except paramiko.AuthenticationException:
            return False
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"connection to {target(cfg)} failed during authentication: {exc}") from exc
        return bool(transport.is_authenticated())

    if cfg.key_file is not None:
        key = load_key(cfg)
        if attempt("key file", lambda: transport.auth_publickey(cfg.user, key)):
            return "key file"
    if cfg.use_agent:
        agent = _open_agent(cfg.connect_timeout)
        if isinstance(agent, str):
            tried.append(f"agent ({agent})")
        else:
            try:
                for agent_key in agent.get_keys():
                    if attempt("agent", functools.partial(transport.auth_publickey, cfg.user, agent_key)):
                        return "agent"
            finally:
                agent._close()
    if cfg.password is not None:
        secret = cfg.password.get_secret_value()
        register_secret(secret)
        if attempt("password", lambda: transport.auth_password(cfg.user, secret)):
            return "password"
    methods = ", ".join(dict.fromkeys(tried)) or "none configured (set ssh.key_file, the agent or a password)"
    raise AuthError(f"authentication as {target(cfg)} failed (tried: {methods})")


def connect_once(cfg: SSHConfig) -> paramiko.Transport:
    """One connection attempt: socket, handshake, host-key check, authentication."""
    transport = start_transport(cfg)
    try:
        hostkeys.verify(
            transport.get_remote_server_key(),
            host=cfg.host,
            port=cfg.port,
            known_hosts=cfg.known_hosts,
            pinned=cfg.host_key_fingerprint,
        )
        method = _authenticate(transport, cfg)
    except BaseException:
        transport.close()
        raise
    ssh_liveness.watch(transport, cfg, target(cfg))
    log.debug("connected", extra={"op": "ssh.connect", "target": target(cfg), "auth": method})
    return transport


def fetch_host_key(cfg: SSHConfig) -> tuple[paramiko.PKey, hostkeys.PresentedKey]:
    """The server's host key, without verifying or authenticating (for `ssh trust`)."""
    transport = call_with_retry(lambda: start_transport(cfg), op="ssh.trust")
    try:
        key = transport.get_remote_server_key()
    finally:
        transport.close()
    return key, hostkeys.PresentedKey(cfg.host, cfg.port, key.get_name(), hostkeys.fingerprint(key))
