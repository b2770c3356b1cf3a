"""Noticing a stalled SSH link within ``--timeout`` (FAULTS F6), with either backend.

A link is stalled when the server has sent nothing for ``timeout`` seconds although drsync asked.
drsync asks the way OpenSSH's ServerAliveInterval does: after a quarter of the timeout without a
byte from the server, a ``keepalive@openssh.com`` request that wants a reply. sshd answers it
itself, however busy the remote agent is, so slow work on the remote (a long scan, a flush) never
counts as a stall, and a slow link that still moves bytes never does either; a silent one does.

* asyncssh does this itself: ``keepalive_interval`` = timeout/4 and ``keepalive_count_max`` = 3
  drop the connection once the fourth quarter passes without an answer.
* paramiko's keepalives want no reply, so a :class:`Watchdog` thread does the same: the transport's
  socket notes when it last received; after a quiet quarter the watchdog sends the request, and at
  ``timeout`` it closes the transport, which wakes every read and write blocked on it.

Connecting (TCP, SSH handshake, authentication) gives up after ``CONNECT_TIMEOUT`` seconds, or
``timeout`` when that is shorter. ``timeout`` 0 turns all of this off.
"""

from __future__ import annotations

import socket
import threading
import time
import weakref

from .quickack import ack_now

CONNECT_TIMEOUT = 20.0
QUARTERS = 4  # keepalive requests go out every timeout/QUARTERS of silence


def connect_timeout(timeout: float) -> float:
    return min(CONNECT_TIMEOUT, timeout) if timeout else CONNECT_TIMEOUT


def asyncssh_options(timeout: float) -> dict:
    """asyncssh.connect() keyword arguments that drop a connection silent for ``timeout`` s."""
    if not timeout:
        return {"keepalive_interval": 0, "connect_timeout": CONNECT_TIMEOUT}
    return {"keepalive_interval": timeout / QUARTERS, "keepalive_count_max": QUARTERS - 1,
            "connect_timeout": connect_timeout(timeout)}


class WatchedSocket(socket.socket):
    """A TCP socket that remembers when it last received bytes (for the paramiko watchdog) and
    acknowledges them at once (quickack.py)."""

    last_recv = 0.0

    def recv(self, *args) -> bytes:
        data = super().recv(*args)
        self.last_recv = time.monotonic()
        ack_now(self)
        return data


def open_socket(host: str, port: int, timeout: float, sock_class=None) -> socket.socket:
    """Connect to ``host:port`` (each address in turn), giving up after ``timeout`` seconds each;
    the socket is a WatchedSocket unless ``sock_class`` says otherwise (preconnect: asyncio's
    transport reads a plain one).
    Nagle's algorithm is off (TCP_NODELAY, as asyncio sets it for asyncssh): paramiko writes an SSH
    exchange as several small packets, and with Nagle on the second waits for the ACK of the first,
    which sshd delays by 40 ms. Measured on loopback, paramiko's connection up to the agent's
    greeting: 187 ms -> 140 ms median (6 runs each; the user-auth request and the session open each
    waited ~40 ms)."""
    error: OSError | None = None
    for family, kind, proto, _, addr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = (sock_class or WatchedSocket)(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(addr)
        except OSError as e:
            sock.close()
            error = e
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(sock, WatchedSocket):
            sock.last_recv = time.monotonic()
        return sock
    raise error or OSError(f"no address for {host}")


class Watchdog:
    """Closes a paramiko transport whose server stays silent for ``timeout`` seconds, asking it for
    an answer after every quiet quarter of that. ``stalled`` tells afterwards that it did."""

    def __init__(self, transport, sock: WatchedSocket, timeout: float):
        self.transport = transport
        self.sock = sock
        self.timeout = timeout
        self.stalled = False
        self._probe: threading.Thread | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="drsync-ssh-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        quarter = self.timeout / QUARTERS
        tick = min(1.0, quarter / 2)
        while not self._stop.wait(tick):
            if not self.transport.is_active():
                return
            quiet = time.monotonic() - self.sock.last_recv
            if quiet >= self.timeout:
                self.stalled = True
                self.transport.close()  # wakes every blocked channel read and write
                return
            if quiet >= quarter and (self._probe is None or not self._probe.is_alive()):
                self._probe = threading.Thread(target=self._ask, name="drsync-ssh-keepalive", daemon=True)
                self._probe.start()

    def _ask(self) -> None:
        """One keepalive that wants a reply (OpenSSH answers even an unknown request); the reply's
        bytes are what the watchdog waits for. Returns when it comes or the transport closes."""
        try:
            self.transport.global_request("keepalive@openssh.com", wait=True)
        except Exception:  # the transport died meanwhile: the watchdog sees it
            pass

    def stop(self) -> None:
        self._stop.set()


_watchdogs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def watch(transport, sock: WatchedSocket, timeout: float) -> Watchdog | None:
    """Start a watchdog on a connected paramiko transport (none when ``timeout`` is 0)."""
    if not timeout:
        return None
    dog = _watchdogs[transport] = Watchdog(transport, sock, timeout)
    return dog


def stalled(transport) -> float | None:
    """The timeout, if the watchdog closed ``transport`` for silence; None otherwise."""
    dog = _watchdogs.get(transport) if transport is not None else None
    return dog.timeout if dog is not None and dog.stalled else None


def asyncssh_stalled(error: BaseException | None) -> bool:
    """True when asyncssh dropped the connection because its keepalives went unanswered."""
    import asyncssh

    return isinstance(error, asyncssh.ConnectionLost) and "keepalive" in str(error.reason)
