"""The TCP connection to a remote node's sshd, made while the `drsync` command is still importing its
SSH library (~0.1 s of this process's CPU, with the machine's other core idle).

sshd takes ~10 ms from accepting a connection to sending its banner: it forks, re-executes itself
and loads its host keys. A socket connected at the start of the command has had that done by the
time the library is loaded, and the library then runs its handshake over that socket
(``asyncssh.connect(sock=...)``, paramiko's ``sock=``).

Where to connect is read before the SSH library (and its config parser) is loaded, from OpenSSH's
own reading of ``~/.ssh/config``: ``ssh -F ~/.ssh/config -G HOST`` prints the host name and port
after Host blocks and %-tokens. That is only a prediction. The run resolves its target as always
(ssh.resolve, with the backend's parser) and ``take`` hands the socket over only when the target
has the same host and port; otherwise the socket is closed and the run connects as it always did.
No early connection is made when:

- the config has ``Match`` or ``Include`` lines (``Match exec`` would run a user's command a
  second time, and an included file could hold one);
- ``ssh`` is not installed, fails, or does not answer within a second;
- the connection is not made by the time the library wants it (``take`` never waits).

Only the `drsync` command does this (cli._connect_early), for a push, pull or diff with one remote
node. A library caller's run connects the usual way.
"""

from __future__ import annotations

import os
import re
import time

from .spec import parse_spec

_UNSAFE_CONFIG = re.compile(r"^\s*(match|include)\b", re.IGNORECASE | re.MULTILINE)

# the connection started by start(), until a run takes it (take) or it is discarded
_pending = None


class Early:
    """A socket connected to ``host``:``port`` (the prediction it was made for)."""

    def __init__(self, host: str, port: int, sock) -> None:
        self.host, self.port, self.sock = host, port, sock

    def close(self) -> None:
        self.sock.close()


def predict(spec: str, config: str) -> tuple[str, int] | None:
    """(host, port) that the run will most likely connect to for node ``spec``, as OpenSSH reads
    the config file ``config`` (it may be absent); None when there is no safe prediction."""
    node = parse_spec(spec)
    if not os.path.exists(config):
        return node.host, node.port or 22
    import subprocess

    try:
        with open(config, encoding="utf-8", errors="replace") as f:
            if _UNSAFE_CONFIG.search(f.read()):
                return None
        out = subprocess.run(["ssh", "-F", config, "-G", node.host], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=1.0, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    got = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    try:
        return got["hostname"], node.port or int(got["port"])
    except (KeyError, ValueError):
        return None


def _connect(spec: str, config: str, timeout: float, sock_class) -> Early | None:
    from .keepalive import open_socket

    where = predict(spec, config)
    if where is None:
        return None
    try:
        return Early(*where, open_socket(*where, timeout, sock_class=sock_class))
    except OSError:
        return None  # the run's own connect reports it


def start(spec: str, *, backend: str, timeout: float, config: str) -> None:
    """Start connecting to the sshd of node ``spec`` on a helper thread (the prediction included)."""
    global _pending
    import socket

    from ..connecting import Connecting
    from .keepalive import WatchedSocket, connect_timeout

    discard()
    sock_class = WatchedSocket if backend == "paramiko" else socket.socket  # paramiko's watchdog reads it
    _pending = Connecting(_connect, spec, config, connect_timeout(timeout), sock_class)


def take(host: str, port: int):
    """The socket start() connected, when it is connected by now and to ``host``:``port`` (the
    target the run resolved); else None, and the early connection, if any, is closed."""
    global _pending
    early, _pending = _pending, None
    if early is None:
        return None
    if not early.wait(0):
        early.abandon()
        return None
    try:
        got = early.result()
    except Exception:  # noqa: BLE001 - the run's own connect reports what is wrong
        return None
    if got is None:
        return None
    if got.host.lower() != host.lower() or got.port != port:
        got.close()
        return None
    from .keepalive import WatchedSocket

    if isinstance(got.sock, WatchedSocket):
        got.sock.last_recv = time.monotonic()  # the watchdog's clock starts now, not at the connect
    return got.sock


def discard() -> None:
    """Close an early connection no run took."""
    global _pending
    early, _pending = _pending, None
    if early is not None:
        early.abandon()
