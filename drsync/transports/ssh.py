"""SSH connections to a node: asyncssh (default) or paramiko, with verified host keys.

This module holds what both backends share (node specs, ~/.ssh/config, the host-key refusals, the
buffered agent channel); ssh_asyncssh and ssh_paramiko hold one backend each, imported only when
used, so that a run never pays for the library it does not use.

Both backends read ``~/.ssh/config`` (Host aliases, HostName, Port, User, IdentityFile,
IdentitiesOnly, UserKnownHostsFile), use the agent and keys, and verify the server's host key
against known_hosts. An unknown key is refused unless ``--accept-new`` (OpenSSH's
``StrictHostKeyChecking=accept-new``): then it is appended atomically and verified from then on. A
changed key is always refused. Every failure here is a ConnectionFailure (exit 5); a lost or
stalled link is its retryable kind, ConnectionLost (linkerrors, keepalive: ``--timeout``).
"""

from __future__ import annotations

import os
import shlex
import time
from collections import namedtuple

from ..errors import ConnectionFailure, DrsyncError, UsageError
from .known_hosts import fingerprint, host_key_name
from .linkerrors import lost
from .spec import NodeSpec, parse_spec


class Target(namedtuple("Target", "alias host port user identities identities_only known_hosts")):
    """Where to connect after ~/.ssh/config has been applied: ``identities`` and ``known_hosts`` are
    tuples of paths, ``identities_only`` a bool."""

    __slots__ = ()


def config_path() -> str:
    return os.path.expanduser("~/.ssh/config")


def _paramiko_lookup(path: str, host: str) -> dict:
    import paramiko

    return paramiko.SSHConfig.from_path(path).lookup(host)


def resolve(spec: NodeSpec, backend: str = "paramiko") -> Target:
    """Apply ~/.ssh/config to ``spec``: with asyncssh's parser for the asyncssh backend, else (or
    if that fails) paramiko's. Both follow OpenSSH's rules (first value wins, Host patterns,
    %-expansion); the tests run the same aliases through both backends."""
    cfg = {}
    path = config_path()
    if os.path.exists(path):
        try:
            if backend != "asyncssh":
                raise LookupError
            from .ssh_asyncssh import asyncssh_lookup

            cfg = asyncssh_lookup(path, spec.host)
        except Exception:
            try:
                cfg = _paramiko_lookup(path, spec.host)
            except Exception as e:  # a broken config is the user's to fix: say so
                raise UsageError(f"cannot read {path}: {e}") from None
    host = cfg.get("hostname", spec.host)
    try:
        port = spec.port or int(cfg.get("port", 22))
    except ValueError:
        raise UsageError(f"cannot read {path}: bad Port {cfg.get('port')!r} for host {spec.host}") from None
    user = spec.user or cfg.get("user")
    identities = tuple(os.path.expanduser(p) for p in cfg.get("identityfile", []))
    only = str(cfg.get("identitiesonly", "no")).lower() == "yes"
    known = cfg.get("userknownhostsfile")
    files = tuple(os.path.expanduser(p) for p in (known.split() if isinstance(known, str) else known or [])) \
        or (os.path.expanduser("~/.ssh/known_hosts"),)
    return Target(spec.host, host, port, user, identities, only, files)


def unknown_key(target: Target, key_type: str, blob: bytes) -> ConnectionFailure:
    return ConnectionFailure(
        f"host key for {host_key_name(target.host, target.port)} is not in known_hosts "
        f"({key_type} {fingerprint(blob)}); check it with the server's administrator, then add it "
        f"(ssh-keyscan, or run once with --accept-new)")


def revoked_key(target: Target, key_type: str, blob: bytes) -> ConnectionFailure:
    return ConnectionFailure(
        f"host key for {host_key_name(target.host, target.port)} is marked @revoked in known_hosts "
        f"({key_type} {fingerprint(blob)}); refusing to connect")


def changed_key(target: Target, key_type: str, blob: bytes) -> ConnectionFailure:
    return ConnectionFailure(
        f"host key mismatch for {host_key_name(target.host, target.port)}: the server offers {key_type} "
        f"{fingerprint(blob)}, which differs from known_hosts ({', '.join(target.known_hosts)}); "
        f"it may be an attack, or the key was changed: verify, then edit known_hosts")


WRITE_BUFFER = 256 << 10

# The ciphers both backends ask for, in this order: AES-GCM first, the fastest on CPUs with AES-NI (one
# pass per packet; paramiko's own order starts with aes128-ctr and a separate HMAC: push of 384 MiB of
# big files 1.53 s -> 1.19 s median with paramiko, docs/performance.md, session 22). asyncssh offers
# exactly these; paramiko those it has, in this order, then its others in its own order.
CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
           "aes256-ctr")


class Channel:
    """A byte stream to the remote agent's stdin/stdout, plus its stderr and exit status.
    Backends implement ``_read``/``_write``; any failure there is a lost connection (exit 5,
    retryable), named as a stall when ``_stalled`` says the keepalives went unanswered."""

    target: Target
    wire_bytes = 0

    def _read(self, n: int) -> bytes: ...
    def _write(self, data: bytes) -> None: ...
    def _stalled(self, error: BaseException | None = None) -> float | None:
        """The --timeout when the link was dropped for silence (a stall, not a reset)."""

    def read(self, n: int) -> bytes:
        try:
            data = self._read(n)
        except DrsyncError:
            raise
        except Exception as e:
            raise lost(self.target.host, e, stalled=self._stalled(e)) from None
        if not data and self._stalled():
            raise lost(self.target.host, stalled=self._stalled())
        self.wire_bytes += len(data)
        return data

    def write(self, data: bytes) -> None:
        """Buffered: small frames (a file header, a 4 KiB file) go out together, so the cost of a
        call into the SSH library is paid per WRITE_BUFFER bytes, not per frame. A chunk of a big
        file (WRITE_BUFFER or more) goes to the library as it is, not copied twice through the
        buffer; the library has taken it when this returns (the caller may reuse its buffer)."""
        buf = self.__dict__.setdefault("_wbuf", bytearray())
        if len(data) >= WRITE_BUFFER:
            self.flush()
            self._hand_over(data)
            return
        buf += data
        if len(buf) >= WRITE_BUFFER:
            self.flush()

    def flush(self) -> None:
        buf = self.__dict__.get("_wbuf")
        if not buf:
            return
        data = bytes(buf)
        buf.clear()
        self._hand_over(data)

    def _hand_over(self, data) -> None:
        self.wire_bytes += len(data)
        try:
            self._write(data)
        except DrsyncError:
            raise
        except Exception as e:
            raise lost(self.target.host, e, stalled=self._stalled(e)) from None

    def stderr(self) -> str: ...
    def exit_status(self) -> int | None: ...
    def close(self) -> None: ...


def open_channel(spec: NodeSpec, *, backend: str, drsync_path: str, accept_new: bool,
                 timeout: float = 60.0) -> Channel:
    """Connect to ``spec``'s host and start ``<drsync_path> agent`` there; ``timeout``: --timeout.
    A channel prepare_channel() started with the same arguments is taken instead (once)."""
    early = _prepared.pop(_key(spec, backend, drsync_path, accept_new, timeout), None)
    if early is not None:
        return early.result()
    return _open(spec, backend, drsync_path, accept_new, timeout)


# channels started ahead of their run (prepare_channel), by their open_channel() arguments
_prepared: dict = {}


def _key(spec: NodeSpec, backend: str, drsync_path: str, accept_new: bool, timeout: float) -> tuple:
    return tuple(spec), backend, drsync_path, bool(accept_new), float(timeout)


def prepare_channel(spec: str, *, backend: str, drsync_path: str, accept_new: bool, timeout: float) -> None:
    """Start open_channel() for node ``spec`` on a helper thread now; the run's own open_channel()
    with the same arguments then takes it, with its result or its error. The `drsync` command does
    this before it imports the planning and publishing machinery, whose imports then overlap the
    handshake and the remote agent's start-up. The SSH library is imported here, on the caller's
    thread (the import is CPU work the helper thread could not overlap anyway)."""
    from ..connecting import Connecting

    parsed = parse_spec(spec)
    if backend == "paramiko":
        import paramiko  # noqa: F401
    elif backend == "asyncssh":
        from .ssh_asyncssh import import_asyncssh

        import_asyncssh()
    else:
        return  # open_channel reports the unknown backend
    key = _key(parsed, backend, drsync_path, accept_new, timeout)
    if key not in _prepared:
        _prepared[key] = Connecting(_open, parsed, backend, drsync_path, accept_new, timeout)


def wait_prepared(timeout: float) -> None:
    """Give the prepared channels' handshakes the interpreter: return once each has its remote command
    started (or has failed), or after ``timeout`` seconds. The handshake is CPU work in this process
    (key exchange, host-key check, signature: asyncssh or paramiko code on a helper thread) and waits
    for the interpreter whenever the caller's thread computes; the remote login shell and the agent's
    start-up that follow are idle time here, the better moment for the caller's own work."""
    deadline = time.monotonic() + timeout
    for early in list(_prepared.values()):
        early.wait(max(0.0, deadline - time.monotonic()))


def discard_prepared() -> None:
    """Close the prepared channels no run took (the run failed before it connected)."""
    while _prepared:
        _prepared.popitem()[1].abandon()


def _open(spec: NodeSpec, backend: str, drsync_path: str, accept_new: bool, timeout: float) -> Channel:
    target = resolve(spec, backend)
    command = f"{drsync_path} agent"
    if backend == "paramiko":
        from .ssh_paramiko import ParamikoChannel

        return ParamikoChannel(target, command, accept_new, timeout)
    if backend != "asyncssh":
        raise UsageError(f"unknown --ssh-backend {backend!r} (asyncssh or paramiko)")
    from .ssh_asyncssh import AsyncsshChannel

    return AsyncsshChannel(target, command, accept_new, timeout)


def quote(path: str) -> str:
    return shlex.quote(path)
