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


ROWS = [["tas", f"tas_{i}.nc", "tas_20100101", 4096, 1_600_000_000_000_000_000 + i, f"{i:032x}"] for i in range(50)]


def test_a_stage_message_is_read_with_each_versions_rows_as_sent():
    """The agent keeps a dest_stage's rows as their text (to store them as they came); what it
    parses is exactly what json.loads makes of the message."""
    spaced = p.json.dumps(ROWS[:3]).encode()  # not compact: kept as it is, not rewritten
    compact = p.json.dumps(ROWS, separators=(",", ":")).encode()
    payload = p.stage_message([("20100101", spaced), ("20100201", compact)])
    doc, text = p.read_stage_message(payload)
    assert doc == p.json.loads(payload) == {"op": "dest_stage", "versions": [["20100101", ROWS[:3]],
                                                                            ["20100201", ROWS]]}
    assert text == {"20100101": spaced, "20100201": compact}
    # through the stream, compressed, as the agent reads it
    got = {}

    def parse(data):
        doc, got["text"] = p.read_stage_message(data)
        return doc

    stream = io.BytesIO()
    p.Stream(lambda n: b"", stream.write).send_json(payload)
    assert reader(stream.getvalue()).recv(parse) == doc and got["text"] == text


@pytest.mark.parametrize("payload", [
    b'{"op":"dest_stage","versions":[]}',  # nothing staged
    b'{"op":"dest_stage","versions":[["20100101",[]]],"versions":[["20100201",[]]]}',  # a second key wins in json
    b'{"op":"dest_stage","versions":[["20100101",[]]],"x":1}',
    b'{"op":"dest_stage","versions":[["20100101",[]]]} ',
    b'{"op":"dest_stage","versions":[["20100101",[]]]}}',
    b'{"op":"dest_stage","versions":[["20100101",[]],1]}',
    b'{"op":"dest_stage","versions":[[20100101,[]]]}',  # not a version string
    b'{"op":"dest_stage","versions":[["20100101",[],[]]]}',
    b'{"op":"dest_stage","versions":[["20100101" ,[]]]}',
    b'{"op":"dest_stage","versions":[["20100101",[]]]',  # cut short
    b'{"op":"dest_stage","versions":[["20100101",[}]]}',
    b'{"op":"dest_stage","versions":[["\xff",[]]]}',  # not UTF-8
    b'{"op":"dest_publish","versions":[["20100101",[]]]}',
])
def test_any_other_form_is_left_to_json(payload):
    assert p.read_stage_message(payload) is None


def test_whatever_the_stage_reader_accepts_json_reads_the_same():
    """Mutations of a stage message (bytes dropped, doubled or replaced by JSON's own punctuation):
    each one the reader accepts parses, by json.loads, to the same message, and each version's rows
    text to its rows (the last of a version sent twice, as in the parsed message)."""
    import random

    rnd = random.Random(6)
    base = p.stage_message([("20100101", p.json.dumps(ROWS[:2]).encode()),
                            ("20100201", p.json.dumps(ROWS[2:4], separators=(",", ":")).encode())])
    accepted = 0
    for _ in range(20000):
        b = bytearray(base)
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(b))
            what = rnd.randrange(3)
            if what == 0:
                del b[i]
            elif what == 1:
                b.insert(i, b[i])
            else:
                b[i] = rnd.choice(b'[]{},:" 0"')
        got = p.read_stage_message(bytes(b))
        if got is None:
            continue
        accepted += 1
        doc, text = got
        assert doc == p.json.loads(bytes(b))
        assert {v: p.json.loads(t) for v, t in text.items()} == dict(doc["versions"])
    assert accepted > 100  # the mutations did reach the accepting path (e.g. a changed digest digit)
