"""The agent protocol's framing: big messages travel compressed, and what comes back is checked."""

from __future__ import annotations

import io
import struct
import zlib

import pytest

from drsync.agent import protocol as p


def wire(*messages) -> bytes:
    out = io.BytesIO()
    stream = p.Stream(lambda n: b"", out.write)
    for m in messages:
        stream.send(m)
    return out.getvalue()


def reader(data: bytes) -> p.Stream:
    return p.Stream(io.BytesIO(data).read, None)


def test_big_message_is_compressed_and_round_trips():
    rows = [["tas", f"tas_{i}.nc", "tas_20100101", 4096, 1_600_000_000_000_000_000 + i, f"{i:032x}"]
            for i in range(3000)]
    big = {"op": "dest_publish", "versions": [["20100101", rows]]}
    small = {"ok": True}
    data = wire(big, small)
    plain = len(p.json.dumps(big, separators=(",", ":")))
    assert data[:1] == b"Z"
    assert len(data) < plain / 3  # the point of it: entry lists are cheap on the wire
    r = reader(data)
    assert r.recv() == big
    assert r.recv() == small
    assert data[-len(p.json.dumps(small, separators=(",", ":"))) - 5:][:1] == b"J"  # small ones stay plain


def frame(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">BI", kind[0], len(payload)) + payload


@pytest.mark.parametrize("payload, why", [
    (zlib.compress(b" " * (p.MAX_FRAME + 1), 9), "too large"),  # a zip bomb stops at MAX_FRAME
    (zlib.compress(b'{"ok": true}')[:-3], "truncated"),
    (b"not zlib at all", "malformed compressed"),
])
def test_bad_compressed_message_is_a_protocol_error(payload, why):
    with pytest.raises(p.ProtocolError, match=why):
        reader(frame(b"Z", payload)).recv()


def test_compressed_non_object_is_refused():
    with pytest.raises(p.ProtocolError, match="malformed message"):
        reader(frame(b"Z", zlib.compress(b"[1, 2]"))).recv()
