"""`drsync agent`: the remote half, serving one client over stdin/stdout (like `rsync --server`).

It wraps a `LocalNode`, so a remote node runs exactly the local scan, safety checks and publish
protocol. Only the operations in `protocol.OPS` are served; every name and entry a client sends is
validated again here (defence in depth: FAULTS F8).
"""

from __future__ import annotations

import os
import sys

import xxhash

from .. import __version__, directio, layout, staging_fork
from .. import manifest as mf
from ..errors import DestinationIOError, DrsyncError, UsageError
from ..events import Events
from ..fetch import Announced, SourceChanged
from ..fsutil import fault_point
from ..plan import Options
from ..transports.local import LocalNode
from . import protocol as p
from . import pipes, silence


class _Forward(Events):
    """Collects warnings; they travel back in the next reply."""

    def __init__(self) -> None:
        self.pending: list[str] = []

    def warning(self, message: str) -> None:
        self.pending.append(message)


def versions_from_request(req: dict, drs: str, staged: dict | None = None) -> list:
    """``[[version, entry rows], ...]`` of a request, validated; rows of ``None`` name a version
    whose entries came with dest_stage (``staged``)."""
    versions = []
    for v, rows in req.get("versions") or []:
        layout.check_version(v, dataset=drs)
        if rows is None and staged is not None and v in staged:
            versions.append((v, staged[v]))
            continue
        versions.append((v, mf.entries_from_json({"format": mf.FORMAT, "version": v, "entries": rows}, v, drs)))
    return versions


def rows_to_entries(rows, drs: str) -> list[mf.Entry]:
    """Validate ``[name, file, dir, size, mtime_ns, digest]`` rows (version-independent checks)."""
    out = []
    if not isinstance(rows, list):
        raise UsageError("malformed request: entry list")
    for row in rows:
        e = mf.make_entry(row, str(10 ** (layout.MAX_VERSION_DIGITS) - 1), drs)
        out.append(e)
    return out


class Agent:
    def __init__(self, stream: p.Stream):
        self.stream = stream
        self.events = _Forward()
        self.nodes: dict[tuple, LocalNode] = {}
        self.session = None
        self.session_drs = None
        self.client_timeout: float | None = None
        self._rows_text: dict[str, bytes] = {}  # a dest_stage's rows as sent, by version (_parse)
        self._stage_token: str | None = None  # the hash of a dest_stage whose links a child started

    def node(self, req: dict) -> LocalNode:
        root = req.get("root")
        if not isinstance(root, str) or not root or "\0" in root:
            raise UsageError("malformed request: root")
        opts = req.get("options") or {}
        options = Options(state_dir=opts.get("state_dir"), fsync=bool(opts.get("fsync", True)),
                          wait=bool(opts.get("wait", True)), checksum=bool(opts.get("checksum", False)))
        key = (root, options.state_dir, options.fsync, options.wait, options.checksum)
        node = self.nodes.get(key)
        if node is None:
            node = self.nodes[key] = LocalNode(root, options, self.events)
        return node

    @staticmethod
    def drs(req: dict) -> str:
        drs = req.get("drs")
        if drs == ".":
            return drs
        if not isinstance(drs, str):
            raise UsageError("malformed request: dataset")
        return layout.check_relpath(drs)

    @staticmethod
    def _man(man) -> dict:
        if man is None:
            return {"index": None}
        return {"index": mf.index_to_json(man.index), "latest_is_dir": man.latest_is_dir}

    # --- operations ---------------------------------------------------------------------------
    def op_datasets(self, req):
        return {"datasets": self.node(req).datasets()}

    def op_manifest(self, req):
        node, drs = self.node(req), self.drs(req)
        if req.get("dest"):
            man = node.peek_destination(drs)
            self._peeked = man
            return self._man(man)
        return self._man(node.source_manifest(drs, save=bool(req.get("save"))))

    def op_entries(self, req):
        drs = self.drs(req)
        if req.get("dest"):
            man = self.session.manifest if self.session is not None else getattr(self, "_peeked", None)
        else:
            man = self.node(req).source_manifest(drs, save=False)
        if man is None:
            raise UsageError("no manifest loaded for that dataset")
        versions = req.get("versions") or []
        return {"versions": {v: mf.entries_to_json(v, man.entries(v))["entries"] for v in versions
                             if v in man.index.versions}}

    def op_send(self, req):
        """Stream the requested files' bytes (pull): per file an F header, then the bytes."""
        node, drs = self.node(req), self.drs(req)
        node.source_manifest(drs, save=False)
        src = node.source(drs)
        for row in req.get("files") or []:
            dirname, file, size, offset = row
            layout.split_files_dir(dirname, dataset=drs)
            layout.check_name(file, "file name", dataset=drs)
            e = mf.Entry(dirname.rpartition("_")[0], file, dirname, int(size), 0, "0" * 32)
            send_file(self.stream, src, e, int(offset))
        return {}

    def op_dest_open(self, req):
        if self.session is not None:
            raise UsageError("a destination session is already open")
        node, drs = self.node(req), self.drs(req)
        self.session = node.open_destination(drs)
        self.session_drs = drs
        return self._man(self.session.manifest)

    def op_dest_receive(self, req):
        session = self._session()
        files = rows_to_entries(req.get("files"), self.session_drs)

        index = {id(e): i for i, e in enumerate(files)}

        def need(items):
            self.stream.send({"need": [[index[id(e)], off] for e, off in items]})

        fetch = Announced(need, lambda items: [recv_file(self.stream, e, fd, off) for e, fd, off in items])

        class _Client:  # the node the bytes come from: the client, streaming what the agent needs
            def fetch_batch(self, drs):
                return fetch

        got = session.receive(files, _Client(), self.session_drs)
        return {"files": got.files, "bytes": got.bytes}

    def op_dest_stage(self, req):
        """The new versions' entries, sent ahead of their files: the links are built in staging
        while the files arrive (Receiver.stage_versions, or the child _fork_stage started), and
        dest_publish names them without rows."""
        session = self._session()
        # kept with the rows' text as sent (protocol.read_stage_message): saved as it is at publish
        text = self._rows_text
        self.staged = {v: mf.with_rows_text(v, es, text[v]) if v in text else es
                       for v, es in versions_from_request(req, self.session_drs)}
        token, self._stage_token = self._stage_token, None
        session.stage(list(self.staged.items()), digest=token)
        return {}

    def _fork_stage(self, payload: bytes) -> None:
        """A dest_stage of one big version (staging_fork.FORK_LINKS rows or more): its links are started
        by a forked child before this process parses the message; the child parses the same bytes
        itself, and op_dest_stage then gives this process's entries, named by the message's hash, to
        share the tasks (staging_fork.py). Rows and versions are counted from the bytes, roughly (a
        name could hold the separators): a wrong guess only costs the child, which declines a
        message of several versions, or the thread for a big one."""
        self._stage_token = None
        version = p.stage_version(payload)
        if (self.session is None or version is None or b']],["' in payload  # another version follows
                or payload.count(b"],[") + 1 < staging_fork.FORK_LINKS):
            return
        drs = self.session_drs

        def load():  # in the child: what op_dest_stage makes of the message, for this one version
            got = p.read_stage_message(payload)
            versions = versions_from_request(got[0], drs) if got is not None else []
            return versions[0][1] if len(versions) == 1 and versions[0][0] == version else None

        self._stage_token = xxhash.xxh3_128_hexdigest(payload)
        self.session.stage_forked(version, self._stage_token, load)

    def op_dest_publish(self, req):
        session = self._session()
        drs = self.session_drs
        versions = versions_from_request(req, drs, getattr(self, "staged", None))
        index = mf.index_from_json(req.get("index"), drs)
        new_latest = req.get("new_latest")
        if new_latest is not None:
            layout.check_version(new_latest, dataset=drs)
        delete_versions = tuple(layout.check_version(v, dataset=drs) for v in req.get("delete_versions") or [])
        delete_files = []
        for d, f in req.get("delete_files") or []:
            layout.split_files_dir(d, dataset=drs)
            delete_files.append((d, layout.check_name(f, "file name", dataset=drs)))
        session.publish(versions, new_latest, delete_versions, tuple(delete_files), index)
        return {}

    def op_dest_close(self, req):
        if self.session is not None:
            self.session.close()
            self.session = None
        self.staged = None
        return {}

    def _parse(self, payload: bytes) -> dict:
        """A request's JSON text, parsed; a dest_stage's rows keep their text (self._rows_text). A
        dest_stage of one big version forks its link child first, before the parse (_fork_stage)."""
        self._fork_stage(payload)
        staged = p.read_stage_message(payload)
        if staged is None:
            self._rows_text = {}
            return p.json.loads(payload)
        doc, self._rows_text = staged
        return doc

    def silence_limit(self) -> float | None:
        """How long to wait for the client's bytes: bounded only while holding a destination's
        lock, and only when the client said its timeout (agent/silence.py)."""
        if self.session is None or self.client_timeout is None:
            return None
        return silence.MARGIN * self.client_timeout

    def _session(self):
        if self.session is None:
            raise UsageError("no destination session open")
        return self.session

    def serve(self) -> int:
        self.stream._write(f"{p.GREETING.decode()}{p.PROTOCOL} {__version__}\n".encode())
        self.stream.flush()
        hello = self.stream.recv()
        self.client_timeout = silence.client_timeout(hello)
        if hello.get("protocol") != p.PROTOCOL:
            self.stream.send({"ok": False, "error": {"code": 5, "message":
                              f"protocol mismatch: agent speaks {p.PROTOCOL}, client {hello.get('protocol')}"}})
            return 5
        self.stream.send({"ok": True, "version": __version__})
        while True:
            try:
                req = self.stream.recv(self._parse)
            except p.ProtocolError:
                break  # client went away: the session's lock is released on exit
            op = req.get("op")
            if op == "bye":
                self.stream.send({"ok": True})
                break
            if op not in p.OPS:
                self.stream.send({"ok": False, "error": {"code": 2, "message": f"operation not allowed: {op!r}"}})
                continue
            try:
                reply = {"ok": True, **getattr(self, f"op_{op}")(req)}
            except DrsyncError as e:
                reply = p.error_to_json(e)
            except OSError as e:
                reply = p.error_to_json(DestinationIOError(e.strerror or str(e), path=e.filename))
            except (ValueError, TypeError, KeyError) as e:
                reply = p.error_to_json(UsageError(f"malformed request: {e}"))
            if self.events.pending:
                reply["warnings"], self.events.pending = self.events.pending, []
            self.stream.send(reply)
        if self.session is not None:
            self.session.close()
        for node in self.nodes.values():
            node.close()
        return 0


BIG_CHUNK = 1 << 16  # file data chunks from this size on go through the stream's reused buffer


def send_file(stream: p.Stream, src, e: mf.Entry, offset: int) -> None:
    """Write one file's header and bytes [offset, size) to ``stream`` (pads if it shrank meanwhile,
    so the framing holds; the receiver's digest check then refuses it)."""
    try:
        fd, st = src.open_stat(e)
    except SourceChanged as why:
        stream.write_frame(b"F", p.json.dumps({"ok": False, "reason": str(why)}).encode())
        return
    try:
        stream.write_frame(b"F", p.json.dumps({"ok": True, "mode": st.st_mode}).encode())
        pos = offset
        while pos < e.size:
            want = min(p.CHUNK, e.size - pos)
            if want < BIG_CHUNK:
                chunk = os.pread(fd, want, pos) or bytes(want)
            else:
                buf = stream.scratch(want)
                got = os.preadv(fd, [buf], pos)
                chunk = buf[:got] if got else bytes(want)
            stream.write_frame(b"D", chunk)
            pos += len(chunk)
            fault_point("send_chunk")
    finally:
        os.close(fd)


def recv_file(stream: p.Stream, e: mf.Entry, fd: int, offset: int):
    """Read one file's header and bytes from ``stream`` into ``fd``; return its mode, or (mode,
    digest) for a whole file (offset 0: hashed as it arrives, see fetch.FetchBatch), or a
    SourceChanged."""
    kind, payload = stream.read_frame()
    if kind != b"F":
        raise p.ProtocolError(f"expected a file header, got frame {kind!r}")
    head = p.json.loads(payload)
    if not head.get("ok"):
        return SourceChanged(str(head.get("reason", "source file changed")))
    h = xxhash.xxh3_128() if offset == 0 else None
    out = directio.Writer(fd, e.size, offset)
    pos = offset
    while pos < e.size:
        kind, length = stream.read_head()
        if kind != b"D" or pos + length > e.size:
            raise p.ProtocolError("file data does not match the announced size")
        if length < BIG_CHUNK and not out.direct:
            data = stream.read_exact(length)
        else:  # straight into the stream's aligned buffer, then to the file: no copy in between
            data = stream.scratch(length)
            stream.read_into(data)
        out.write(data, pos)
        if h is not None:
            h.update(data)
        pos += length
        fault_point("recv_chunk")
    mode = head.get("mode")
    mode = mode if isinstance(mode, int) else 0o644
    return mode if h is None else (mode, h.hexdigest())


def main() -> int:
    """Entry point of `drsync agent`: serve on stdin/stdout until the client says bye."""
    stdin, stdout = sys.stdin.buffer.raw, sys.stdout.buffer
    pipes.widen(stdin.fileno())  # what a push streams in; stdout is left as it is (pipes.py)
    # Keep stray prints (none expected) from corrupting the protocol stream.
    sys.stdout = sys.stderr
    guarded = silence.GuardedInput(stdin.fileno())
    agent = Agent(p.Stream(guarded.read, stdout.write, stdout.flush, guarded.readinto))
    guarded.limit = agent.silence_limit
    return agent.serve()
