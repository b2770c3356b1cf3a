"""A TCP proxy for network-fault tests (FAULTS F5, F6, F9): client <-> proxy <-> sshd, loopback only.

The proxy listens on 127.0.0.1 on a free port and forwards every connection to a target port
(the sshd fixture's), running an asyncio loop in a background thread. What it does to the bytes
is a :class:`Fault`, switchable at any time with :meth:`NetProxy.set_fault`:

* ``pass``: forward everything;
* ``reset``: forward until ``after`` bytes have gone by on the connection, then reset both of its
  sockets (``SO_LINGER`` 0, so the peers see an RST, not a FIN);
* ``blackhole``: forward until ``after`` bytes, then forward nothing and read nothing more in
  either direction, sockets kept open (a silent partition: no RST, no FIN);
* ``slow``: forward at most ``rate`` bytes per second in each direction.

``direction`` says which bytes count towards ``after``: ``"up"`` (client to server), ``"down"``
or ``"both"``. ``first`` limits a fault to the first K connections (0-based index < K), so a retry
that reconnects gets a clean link (counted from the ``set_fault`` call). Every connection's
forwarded bytes are counted both ways (``links``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import struct
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
CHUNK = 64 << 10


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str = "pass"  # pass | reset | blackhole | slow
    after: int = 0  # bytes forwarded (counted per `direction`) before a reset or black hole
    direction: str = "up"  # up | down | both
    first: int | None = None  # only the first K connections made after set_fault; None: every one
    rate: int = 0  # slow: bytes per second per direction

    def __post_init__(self):
        assert self.kind in ("pass", "reset", "blackhole", "slow"), self.kind
        assert self.direction in ("up", "down", "both"), self.direction


@dataclasses.dataclass
class Link:
    """One proxied connection: its index, bytes forwarded each way, and what happened to it."""

    index: int
    up: int = 0
    down: int = 0
    fate: str = "open"  # open | closed | reset | blackholed
    fault: Fault = Fault()

    def counted(self) -> int:
        d = self.fault.direction
        return self.up if d == "up" else self.down if d == "down" else self.up + self.down


class NetProxy:
    """``with NetProxy(target_port) as proxy:`` ... ``proxy.port`` ... ``proxy.links``."""

    def __init__(self, target_port: int, fault: Fault = Fault()):
        self.target_port = target_port
        self.fault = fault
        self._since = 0  # index of the first connection made under the current fault
        self.links: list[Link] = []
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._writers: list[asyncio.StreamWriter] = []
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="netproxy", daemon=True)
        self.thread.start()
        ready.wait(10)
        self.port = self._server.sockets[0].getsockname()[1]

    # --- test side ------------------------------------------------------------------------------
    def set_fault(self, fault: Fault) -> None:
        """Applies to connections made from now on (a live connection keeps the fault it got)."""
        with self._lock:
            self.fault = fault
            self._since = len(self.links)

    @property
    def connections(self) -> int:
        return len(self.links)

    @property
    def bytes_up(self) -> int:
        return sum(link.up for link in self.links)

    @property
    def bytes_down(self) -> int:
        return sum(link.down for link in self.links)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> NetProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the loop thread ------------------------------------------------------------------------
    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self._stopping = asyncio.Event()
        self._server = self.loop.run_until_complete(asyncio.start_server(self._accept, HOST, 0))
        ready.set()
        self.loop.run_forever()

    async def _shutdown(self) -> None:
        self._stopping.set()
        self._server.close()
        for w in self._writers:
            w.transport.abort()
        await self._server.wait_closed()

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        with self._lock:
            link = Link(index=len(self.links))
            fault = self.fault
            link.fault = fault if fault.first is None or link.index - self._since < fault.first else Fault()
            self.links.append(link)
        try:
            sreader, swriter = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            cwriter.transport.abort()
            link.fate = "closed"
            return
        self._writers += [cwriter, swriter]
        holed = asyncio.Event()
        pumps = [asyncio.ensure_future(self._pump(link, "up", creader, swriter, holed, (cwriter, swriter))),
                 asyncio.ensure_future(self._pump(link, "down", sreader, cwriter, holed, (cwriter, swriter)))]
        struck = asyncio.ensure_future(holed.wait())
        pending = set(pumps)
        while pending and not holed.is_set():  # both directions, until both end (or a black hole)
            _, pending = await asyncio.wait(pending | {struck}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(struck)
        if holed.is_set():  # keep both sockets open, read nothing, until the proxy stops
            await self._stopping.wait()
        for p in [*pumps, struck]:
            p.cancel()
        for w in (cwriter, swriter):
            w.transport.abort()
        if link.fate == "open":
            link.fate = "closed"

    async def _pump(self, link: Link, way: str, reader, writer, holed: asyncio.Event, both) -> None:
        fault = link.fault
        counts = fault.direction in (way, "both")
        start = time.monotonic()
        sent = 0
        try:
            while not holed.is_set():
                data = await reader.read(CHUNK)
                if not data or holed.is_set():
                    break
                if fault.kind in ("reset", "blackhole") and counts:
                    room = fault.after - link.counted()
                    if room <= len(data):  # forward exactly up to the threshold, then strike
                        await self._forward(link, way, writer, data[:max(room, 0)])
                        if fault.kind == "reset":
                            _reset(*both)
                            link.fate = "reset"
                        else:
                            link.fate = "blackholed"
                            holed.set()
                        return
                await self._forward(link, way, writer, data)
                if fault.kind == "slow" and fault.rate:
                    sent += len(data)
                    ahead = sent / fault.rate - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except (ConnectionError, OSError):
            pass
        finally:
            if not holed.is_set() and link.fate == "open":
                try:  # pass the FIN on, so a clean close stays a clean close
                    if writer.can_write_eof():
                        writer.write_eof()
                except OSError:
                    pass

    @staticmethod
    async def _forward(link: Link, way: str, writer: asyncio.StreamWriter, data: bytes) -> None:
        if not data:
            return
        writer.write(data)
        await writer.drain()
        if way == "up":
            link.up += len(data)
        else:
            link.down += len(data)


def _reset(*writers: asyncio.StreamWriter) -> None:
    """Close both sockets with an RST (SO_LINGER on, timeout 0) instead of a FIN."""
    for w in writers:
        sock = w.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        w.transport.abort()


def add_alias(home: Path, alias: str, port: int, user: str, host_key_pub: Path) -> None:
    """Give the test HOME's ssh config a ``Host alias`` for 127.0.0.1:port, and known_hosts the real
    sshd's host key under ``[127.0.0.1]:port``: host keys are verified through the proxy too."""
    dot = Path(home) / ".ssh"
    with open(dot / "config", "a") as fh:
        fh.write(f"Host {alias}\n    HostName {HOST}\n    Port {port}\n    User {user}\n"
                 f'    IdentityFile "{dot / "id_ed25519"}"\n    IdentitiesOnly yes\n'
                 f'    UserKnownHostsFile "{dot / "known_hosts"}"\n    StrictHostKeyChecking yes\n')
    kind, b64 = Path(host_key_pub).read_text().split()[:2]
    with open(dot / "known_hosts", "a") as fh:
        fh.write(f"[{HOST}]:{port} {kind} {b64}\n")
    os.chmod(dot / "config", 0o600)
