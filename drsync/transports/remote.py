"""A node reached over SSH, served by `drsync agent` on the other end.

One connection per node for the whole run: manifests are exchanged as indexes (entry lists only
for versions that move), files stream in batches without a round trip per file, and a version's
links are one request. The agent applies the same checks as a local receiver; this side validates
everything it receives again (FAULTS A12) and re-reads the published state before reporting.
"""

from __future__ import annotations

import os
import time

from .. import manifest as mf
from ..agent import protocol as p
from ..agent.server import recv_file, send_file
from ..errors import ConnectionFailure, UsageError
from ..events import Events
from ..fetch import Announced, Received
from ..plan import Options
from ..scan import DatasetManifest
from .ssh import open_channel, parse_spec


class _Throttle:
    """``--bwlimit``: keep the average rate of bytes written under ``rate`` bytes per second."""

    def __init__(self, rate: int | None):
        self.rate = rate
        self.start = time.monotonic()
        self.count = 0

    def __call__(self, n: int) -> None:
        if not self.rate:
            return
        self.count += n
        ahead = self.count / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


_MISSING = "drsync is not installed on the remote"


class AgentMissing(ConnectionFailure):
    """The remote has no drsync (exit 127 or "not found"): connect_node falls back to SFTP."""


def _hint(channel, line: bytes) -> str:
    if line:  # the remote is alive and talking: do not wait for an exit status it will not send
        return (f"the remote did not answer as a drsync agent; it printed {line[:80]!r} "
                "(is the login shell printing text? is --drsync-path right?)")
    status = channel.exit_status()
    err = " ".join(channel.stderr().split())[:300]
    if status == 127 or "not found" in err:
        return (f"{_MISSING} (or not on its PATH): install it there, or name it "
                f"with --drsync-path ({err or 'exit 127'})")
    return f"the remote agent exited before the handshake (status {status}; {err or 'no message'})"


class Connection:
    """A handshaken agent session: request/reply plus file streams."""

    def __init__(self, channel, events: Events, bwlimit: int | None, timeout: float = 0):
        self.channel = channel
        self.events = events
        self._deferred: list = []  # on_reply of each request sent without waiting (send_deferred)
        throttle = _Throttle(bwlimit)

        def write(data: bytes) -> None:
            if not bwlimit:
                channel.write(data)
                return
            # about a second's worth at a time, sent at once: a throttled client is never silent
            # for long (an agent gives a destination's lock up when its client falls silent)
            step = max(bwlimit, 4096)
            for i in range(0, len(data), step):
                piece = data[i:i + step]
                throttle(len(piece))
                channel.write(piece)
                channel.flush()

        self.stream = p.Stream(channel.read, write, channel.flush)
        try:
            line = self.stream.read_line(256)
        except p.ProtocolError:
            line = b""
        if not line.startswith(p.GREETING):
            why = _hint(channel, line)
            raise (AgentMissing if why.startswith(_MISSING) else ConnectionFailure)(why)
        try:
            proto = int(line[len(p.GREETING):].split()[0])
        except (ValueError, IndexError):
            raise ConnectionFailure(f"malformed agent greeting {line[:80]!r}") from None
        if proto != p.PROTOCOL:
            raise ConnectionFailure(f"the remote drsync speaks agent protocol {proto}, this one {p.PROTOCOL}: "
                                    "install the same drsync version on both nodes")
        # the timeout lets the agent give a destination's lock up if this client falls silent. Its
        # answer is read before the first request's (settle): the first request goes out without
        # waiting for it, one network round trip less per connection.
        self.stream.send({"protocol": p.PROTOCOL, "timeout": timeout})
        self._deferred.append(p.raise_if_error)

    def send_deferred(self, payload: bytes, on_reply) -> None:
        """Send a request encoded as JSON text without waiting for its reply: ``on_reply(reply)``
        gets it before any later request's reply is read (settle), so the replies stay in step
        whatever the caller asks next."""
        self._request(self.stream.send_json, payload)
        self._deferred.append(on_reply)

    def _request(self, send, *args) -> None:
        """Send a request. When the link is found gone, the replies already owed are read first:
        the agent may have answered, then exited (it refused the hello), and that answer, not the
        lost connection, is what the user needs to hear."""
        try:
            send(*args)
        except ConnectionFailure:
            self.settle()
            raise

    def settle(self) -> None:
        """Read the replies of the deferred requests still unanswered, in order."""
        while self._deferred:
            self._deferred.pop(0)(self.message())

    def message(self) -> dict:
        """The agent's next message, its warnings passed on to the events."""
        msg = self.stream.recv()
        for w in msg.get("warnings") or []:
            self.events.warning(f"remote: {w}")
        return msg

    def reply(self) -> dict:
        return p.raise_if_error(self.message())

    def call(self, **req) -> dict:
        self._request(self.stream.send, req)
        self.settle()
        return self.reply()

    def call_then(self, first: dict, then: dict, after: tuple[dict, object] | None = None) -> dict:
        """Send two requests before reading either reply: one round trip instead of two (the agent
        answers in order). The first's error wins: it is raised even when the second also failed or
        the connection is lost before the second's reply. Returns the second's reply. ``after``, a
        (request, on_reply) pair, goes out in the same flight; its reply is read later (settle)."""
        self._request(self.stream.send, first)
        self._request(self.stream.send, then)
        if after is not None:
            self._request(self.stream.send, after[0])
        self.settle()
        if after is not None:
            self._deferred.append(after[1])  # answered after ``then``: read at the next settle
        one = self.message()
        try:
            two = self.message()
        except ConnectionFailure:
            p.raise_if_error(one)
            raise
        p.raise_if_error(one)
        return p.raise_if_error(two)

    def close(self) -> None:
        """Say bye and close, without waiting for an answer: the agent answers bye and exits, and
        nothing here depends on that, or on any answer still unread (a destination's session was
        closed, its lock released, by dest_close, whose answer RemoteDestination.close read)."""
        try:
            self.stream.send({"op": "bye"})
        except Exception:
            pass
        self.channel.close()


def _man(doc: dict, drs: str, loader) -> DatasetManifest | None:
    if doc.get("index") is None:
        return None
    man = DatasetManifest(drs, mf.index_from_json(doc["index"], drs), latest_is_dir=bool(doc.get("latest_is_dir")))
    man._loader = loader
    return man


class RemoteDestination:
    """A locked publish session run by the agent on the remote dataset."""

    def __init__(self, node: RemoteNode, drs: str, manifest: DatasetManifest):
        self.node = node
        self.drs = drs
        self.manifest = manifest
        self._staged_versions: set[str] = set()  # versions whose entries the agent holds
        self._stage_error: dict | None = None  # dest_stage's error reply, raised on first use
        self._closed = False  # the agent answered dest_close (sent with dest_publish, or by close())

    def stage(self, versions: list[tuple[str, list[mf.Entry]]]) -> None:
        """Send the new versions' entries ahead of their files, so that the agent builds the links
        while the files arrive. Not waited for (Connection.send_deferred): its answer is read
        before the next reply, at the latest dest_receive's."""
        if versions:
            # {"op": "dest_stage", "versions": [[v, rows], ...]}, the rows of a stored list embedded
            # as they were read (mf.entries_rows_bytes), not rebuilt and serialised again
            message = p.stage_message([(v, mf.entries_rows_bytes(v, es)) for v, es in versions])
            sent = {v for v, _ in versions}
            self.node.conn.send_deferred(message, lambda reply: self._stage_answered(sent, reply))

    def _stage_answered(self, sent: set[str], reply: dict) -> None:
        """An agent without dest_stage refuses the operation: the entries then go with dest_publish.
        Any other error is kept for _staged(): a session's close() settles this reply too, and must
        not raise it."""
        err = reply.get("error") or {}
        if not reply.get("ok") and not (err.get("code") == 2 and "not allowed" in str(err.get("message"))):
            self._stage_error = reply
        self._staged_versions = sent if reply.get("ok") else set()

    def _staged(self) -> set[str]:
        """The versions the agent holds from dest_stage (its answer read now if it was not yet)."""
        self.node.conn.settle()
        error, self._stage_error = self._stage_error, None
        if error is not None:
            p.raise_if_error(error)
        return self._staged_versions

    def receive(self, files: list[mf.Entry], src, drs: str, link=None) -> Received:
        conn = self.node.conn
        rows = mf.entries_to_json("0", files)["entries"]
        conn.stream.send({"op": "dest_receive", "files": rows})
        self._staged()
        source = src.source(drs)
        while True:
            msg = conn.message()
            if "need" not in msg:
                got = p.raise_if_error(msg)
                return Received(int(got.get("files", 0)), int(got.get("bytes", 0)))
            for i, offset in msg["need"]:
                e = files[i]
                send_file(conn.stream, source, e, offset)
                conn.events.advance(e.size - offset)
            conn.stream.flush()

    def publish(self, versions, new_latest, delete_versions, delete_files, index: mf.Index) -> None:
        staged = self._staged()
        publish = {"op": "dest_publish",
                   "versions": [[v, None if v in staged else mf.entries_to_json(v, es)["entries"]]
                                for v, es in versions],
                   "new_latest": new_latest, "delete_versions": list(delete_versions),
                   "delete_files": [list(x) for x in delete_files], "index": mf.index_to_json(index)}
        # Trust, but verify: read the published index back (FAULTS F8). The read-back goes with the
        # publish (one round trip); the agent reads it only after the publish has answered. The
        # session's close goes in the same flight (a session is closed after its publish, whatever
        # the publish's answer); close() reads its answer.
        back = self.node.conn.call_then(publish, {"op": "manifest", "dest": True, **self.node.base(self.drs)},
                                        ({"op": "dest_close"}, self._close_answered))
        got = mf.index_from_json(back["index"], self.drs) if back.get("index") else None
        if got is None or got.latest != index.latest or any(
                got.versions.get(v) != index.versions[v] for v, _ in versions):
            raise ConnectionFailure("the remote agent acknowledged a publish it did not make", dataset=self.drs)

    def _close_answered(self, reply: dict) -> None:
        self._closed = True
        p.raise_if_error(reply)

    def close(self) -> None:
        """End the session: the agent drops what it staged and releases the destination's lock.
        Its answer is waited for (a run that ends here leaves the destination unlocked)."""
        try:
            self.node.conn.settle()  # the answer of a dest_close sent with the publish, if it was
            if not self._closed:
                self.node.conn.call(op="dest_close")
        except ConnectionFailure:
            pass


class RemoteNode:
    """A node on another machine, driven through its agent."""

    def __init__(self, spec: str, options: Options, events: Events | None = None):
        self.spec = spec
        self.parsed = parse_spec(spec)
        self.options = options
        self.events = events or Events()
        channel = open_channel(self.parsed, backend=options.ssh_backend, drsync_path=options.drsync_path,
                               accept_new=options.accept_new, timeout=options.timeout)
        try:
            self.conn = Connection(channel, self.events, options.bwlimit, options.timeout)
        except BaseException:
            channel.close()
            raise

    @property
    def wire_bytes(self) -> int:
        return self.conn.channel.wire_bytes

    def base(self, drs: str | None = None) -> dict:
        d = {"root": self.parsed.path, "options": {"state_dir": self.options.state_dir, "fsync": self.options.fsync,
                                                   "wait": self.options.wait,
                                                   "checksum": self.options.checksum}}
        if drs is not None:
            d["drs"] = drs
        return d

    def _loader(self, drs: str, dest: bool):
        def load(version: str) -> list[mf.Entry]:
            got = self.conn.call(op="entries", versions=[version], dest=dest, **self.base(drs))
            rows = (got.get("versions") or {}).get(version)
            if rows is None:
                raise ConnectionFailure("the remote agent did not return the entries asked for", dataset=drs,
                                        path=f"v{version}")
            return mf.entries_from_json({"format": mf.FORMAT, "version": version, "entries": rows}, version, drs)
        return load

    # --- source half ---------------------------------------------------------------------------
    def datasets(self) -> list[str]:
        got = self.conn.call(op="datasets", **self.base())
        out = []
        for d in got.get("datasets") or []:
            if d != ".":
                from ..layout import check_relpath

                check_relpath(d)
            out.append(d)
        return out

    def source_manifest(self, drs: str, *, save: bool) -> DatasetManifest:
        got = self.conn.call(op="manifest", save=save, dest=False, **self.base(drs))
        man = _man(got, drs, self._loader(drs, False))
        if man is None:
            raise ConnectionFailure("the remote agent returned no manifest", dataset=drs)
        return man

    def fetch_batch(self, drs: str):
        conn = self.conn

        def ask(items):
            conn.stream.send({"op": "send", "files": [[e.dir, e.file, e.size, off] for e, off in items],
                              **self.base(drs)})

        def read(items):
            out = [recv_file(conn.stream, e, fd, off) for e, fd, off in items]
            conn.reply()
            return out
        return Announced(ask, read)

    def source(self, drs: str):
        raise UsageError("a push sends from a local node; use pull to fetch from a remote one")

    def linker(self, drs: str):
        return None

    def release_source(self, drs: str) -> None:
        pass

    # --- destination half ----------------------------------------------------------------------
    def peek_destination(self, drs: str) -> DatasetManifest | None:
        got = self.conn.call(op="manifest", dest=True, **self.base(drs))
        return _man(got, drs, self._loader(drs, True))

    def open_destination(self, drs: str) -> RemoteDestination:
        got = self.conn.call(op="dest_open", **self.base(drs))
        man = _man(got, drs, self._loader(drs, True))
        if man is None:
            man = DatasetManifest(drs, mf.Index())
        return RemoteDestination(self, drs, man)

    def close(self) -> None:
        self.conn.close()


def connect_node(spec: str, options: Options, events: Events):
    """A RemoteNode over the agent; where the remote has no drsync, an SftpNode (DESIGN §2), said once.
    The agent connection verified the host key before any fallback is tried."""
    try:
        return RemoteNode(spec, options, events)
    except AgentMissing as missing:
        from .sftp import SftpNode

        try:
            node = SftpNode(spec, options, events)
        except ConnectionFailure as e:
            raise ConnectionFailure(f"{missing.message}; the SFTP fallback failed too: {e.message}") from None
        events.warning(f"{node.parsed.host}: no drsync on the remote; using the SFTP fallback (sizes only, slower)")
        return node


__all__ = ["AgentMissing", "RemoteNode", "RemoteDestination", "connect_node", "os"]
