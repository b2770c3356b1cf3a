"""The drsync agent protocol: a versioned handshake and framed messages over a byte stream.

The remote half is drsync itself (`drsync agent`, like `rsync --server`): it speaks on its stdin
and stdout over the SSH channel. Frames are ``type (1 byte) | length (4 bytes, big-endian) |
payload``:

- ``J``: a JSON object (a request, a reply, or a "need" from a receiving agent);
- ``Z``: the same, zlib-compressed (messages over COMPRESS_OVER bytes: entry lists are mostly
  repeated names, so a version's 3,000 links cost ~60 KiB on the wire instead of ~300 KiB);
- ``F``: the header of one file's bytes: JSON ``{"ok": true}`` or ``{"ok": false, "reason": ...}``;
- ``D``: file bytes; a file's ``F`` is followed by exactly the bytes asked for, in ``D`` frames.

Handshake: the agent first writes one line ``DRSYNC-AGENT/<protocol> <drsync version>\\n``. Anything
else (a shell banner, "command not found") is reported as such, not as a JSON traceback.
"""

from __future__ import annotations

import json
import struct
import zlib

from ..errors import (
    ConflictError,
    ConnectionFailure,
    DestinationIOError,
    DrsyncError,
    IntegrityError,
    LockedError,
    UnsafeInputError,
    UsageError,
)

PROTOCOL = 1
GREETING = b"DRSYNC-AGENT/"
MAX_FRAME = 64 << 20
CHUNK = 4 << 20
COMPRESS_OVER = 4096
_HEAD = struct.Struct(">BI")

OPS = frozenset({"datasets", "manifest", "entries", "send", "dest_open", "dest_stage", "dest_receive",
                 "dest_publish", "dest_close", "bye"})

_ERRORS = {c.exit_code: c for c in (UsageError, ConflictError, UnsafeInputError, ConnectionFailure,
                                     DestinationIOError, LockedError, IntegrityError)}


class ProtocolError(ConnectionFailure):
    """The peer broke the protocol (or is not a drsync agent)."""


class PeerClosed(ProtocolError):
    """The stream ended in the middle of the protocol: the link dropped or the peer died (retried)."""

    retryable = True


class Stream:
    """Blocking framed I/O over two byte-stream callables (``read(n)`` returns up to n bytes, b''
    at EOF; ``write(b)``, which has taken the bytes when it returns; ``flush()``), and optionally
    ``readinto(view)`` (returns the count read into ``view``, 0 at EOF) for file data."""

    def __init__(self, read, write, flush=lambda: None, readinto=None):
        self._read = read
        self._write = write
        self._flush = flush
        self._readinto = readinto
        self._buf = bytearray()
        self._scratch: memoryview | None = None
        self.sent = 0
        self.received = 0

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._read(max(n - len(self._buf), 1 << 16))
            if not chunk:
                raise PeerClosed("connection closed by the remote end")
            self._buf += chunk
        with memoryview(self._buf) as view:
            out = bytes(view[:n])
        del self._buf[:n]
        self.received += n
        return out

    def scratch(self, n: int) -> memoryview:
        """A reusable buffer of ``n`` <= CHUNK bytes for file data (reading or sending a big file
        allocates nothing per chunk: fresh memory is slow to touch). Valid until the next call."""
        if self._scratch is None:
            from ..directio import aligned_buffer

            self._scratch = aligned_buffer(CHUNK)  # aligned: a big file's chunks are written O_DIRECT
        return self._scratch[:n]

    def read_into(self, view: memoryview) -> None:
        """Fill ``view`` exactly: first with what was read ahead, then straight from the stream
        (no intermediate copy when the stream has ``readinto``)."""
        n = len(view)
        pos = min(len(self._buf), n)
        if pos:
            with memoryview(self._buf) as ahead:
                view[:pos] = ahead[:pos]
            del self._buf[:pos]
        while pos < n:
            if self._readinto is not None:
                got = self._readinto(view[pos:])
            else:
                chunk = self._read(n - pos)
                got = len(chunk)
                view[pos:pos + got] = chunk
            if not got:
                raise PeerClosed("connection closed by the remote end")
            pos += got
        self.received += n

    def read_head(self) -> tuple[bytes, int]:
        """The next frame's type and length; its payload is read with read_exact or read_into."""
        kind, length = _HEAD.unpack(self.read_exact(_HEAD.size))
        if length > MAX_FRAME:
            raise ProtocolError(f"frame of {length} bytes is too large")
        return bytes([kind]), length

    def read_line(self, limit: int = 4096) -> bytes:
        while b"\n" not in self._buf:
            if len(self._buf) > limit:
                break
            chunk = self._read(1 << 12)
            if not chunk:
                break
            self._buf += chunk
        i = self._buf.find(b"\n")
        line = bytes(self._buf[: i + 1 if i >= 0 else len(self._buf)])
        del self._buf[: len(line)]
        return line

    def write_frame(self, kind: bytes, payload: bytes | memoryview) -> None:
        self._write(_HEAD.pack(kind[0], len(payload)) + bytes(payload) if len(payload) < 65536
                    else _HEAD.pack(kind[0], len(payload)))
        if len(payload) >= 65536:
            self._write(payload)
        self.sent += len(payload) + _HEAD.size

    def read_frame(self) -> tuple[bytes, bytes]:
        kind, length = self.read_head()
        return kind, self.read_exact(length)

    def send(self, obj: dict) -> None:
        self.send_json(json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode())

    def send_json(self, payload: bytes) -> None:
        """Send a message already encoded as JSON text (one object)."""
        if len(payload) > COMPRESS_OVER:
            self.write_frame(b"Z", zlib.compress(payload, 1))
        else:
            self.write_frame(b"J", payload)
        self._flush()

    def recv(self, parse=json.loads) -> dict:
        """The next message, parsed by ``parse`` (JSON text -> object)."""
        kind, payload = self.read_frame()
        if kind == b"Z":
            inflate = zlib.decompressobj()
            try:
                payload = inflate.decompress(payload, MAX_FRAME)
            except zlib.error as e:
                raise ProtocolError(f"malformed compressed message from the peer: {e}") from None
            if inflate.unconsumed_tail or not inflate.eof:
                raise ProtocolError("compressed message from the peer is too large or truncated")
        elif kind != b"J":
            raise ProtocolError(f"expected a message, got frame {kind!r}")
        try:
            obj = parse(payload)
        except ValueError as e:
            raise ProtocolError(f"malformed message from the peer: {e}") from None
        if not isinstance(obj, dict):
            raise ProtocolError("malformed message from the peer")
        return obj

    def flush(self) -> None:
        self._flush()


_STAGE_HEAD = b'{"op":"dest_stage","versions":['
_DECODER = json.JSONDecoder()


def stage_message(versions: list[tuple[str, bytes]]) -> bytes:
    """``{"op": "dest_stage", "versions": [[version, rows], ...]}`` with each version's entry rows
    embedded as the JSON text given (mf.entries_rows_bytes: a stored list's rows, as read)."""
    return _STAGE_HEAD + b",".join(b"[" + json.dumps(v).encode() + b"," + rows + b"]" for v, rows in versions) + b"]}"


def stage_version(payload: bytes) -> str | None:
    """The first version a message in stage_message's form names, read before the message is
    parsed (from its first bytes only); None for any other message."""
    at = len(_STAGE_HEAD)
    if not payload.startswith(_STAGE_HEAD + b"["):
        return None
    try:
        version = _DECODER.raw_decode(payload[at + 1:at + 65].decode("ascii"))[0]
    except ValueError:  # UnicodeDecodeError too
        return None
    return version if isinstance(version, str) else None


def read_stage_message(payload: bytes) -> tuple[dict, dict[str, bytes]] | None:
    """A message in exactly stage_message's form, parsed (one pass, as json.loads would), with the
    JSON text of each version's rows as it was sent (the agent stores it as its entry list, not
    serialised again). None for any other message or form: parse it as any message."""
    if not payload.startswith(_STAGE_HEAD):
        return None
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return None
    versions, rows_text = [], {}
    at = len(_STAGE_HEAD)
    try:
        while text.startswith("[", at):
            version, at = _DECODER.raw_decode(text, at + 1)
            if not text.startswith(",", at):
                return None
            rows, end = _DECODER.raw_decode(text, at + 1)
            if not isinstance(version, str) or not text.startswith("]", end):
                return None
            versions.append([version, rows])
            rows_text[version] = text[at + 1:end].encode()
            at = end + 1
            if text.startswith("]}", at):
                return ({"op": "dest_stage", "versions": versions}, rows_text) if at + 2 == len(text) else None
            if not text.startswith(",", at):
                return None
            at += 1
    except ValueError:
        return None
    return None


def error_to_json(e: DrsyncError) -> dict:
    return {"ok": False, "error": {"code": e.exit_code, "message": e.message, "dataset": e.dataset, "path": e.path}}


def raise_if_error(reply: dict) -> dict:
    """Turn an agent's error reply back into the same DrsyncError class on this side."""
    if reply.get("ok") is True:
        return reply
    err = reply.get("error") or {}
    code = err.get("code") if isinstance(err.get("code"), int) else 5
    cls = _ERRORS.get(code, ConnectionFailure)
    raise cls(f"remote: {err.get('message', 'agent error')}", dataset=err.get("dataset"), path=err.get("path"))
