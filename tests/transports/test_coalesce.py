"""asyncssh's packets leave in one socket write per loop turn (transports/coalesce.py): a big
file goes out in window-sized writes, not two writes per 32 KiB packet. Against the real sshd."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import os
import sys

import invariants
import treegen

import drsync
from drsync.transports.coalesce import coalesce_writes

AGENT = f"{sys.executable} -m drsync"


def test_one_write_per_loop_turn_in_order():
    class Conn:
        def __init__(self):
            self.sent = []

        def _send(self, data):
            self.sent.append(data)

    loop = asyncio.new_event_loop()
    try:
        conn = Conn()
        assert coalesce_writes(conn, loop)

        def turn():
            conn._send(b"ignore")
            conn._send(b"data")
            assert conn.sent == []  # nothing leaves during the turn that built the packets

        loop.call_soon(turn)
        loop.run_until_complete(asyncio.sleep(0.01))
        assert conn.sent == [b"ignoredata"]  # joined, in order, once the turn is over
        loop.call_soon(conn._send, b"more")
        loop.run_until_complete(asyncio.sleep(0.01))
        assert conn.sent == [b"ignoredata", b"more"]
    finally:
        loop.close()
    assert not coalesce_writes(object(), None)  # an asyncssh without _send is left alone


def test_big_file_leaves_in_window_sized_writes(tmp_path, sshd_server, ssh_client_env, monkeypatch):
    writes = []
    real = asyncio.selector_events._SelectorSocketTransport.write

    def counting(self, data):
        writes.append(len(data))
        return real(self, data)

    monkeypatch.setattr(asyncio.selector_events._SelectorSocketTransport, "write", counting)
    src, remote = str(tmp_path / "src"), str(tmp_path / "remote")
    treegen.make_node(src, treegen.Shape(datasets=1, variables=1, files=1, versions=1, added=0, removed=0,
                                         size=16 << 20))
    r = drsync.push(src, f"drsync-test:{remote}", drsync.Options(ssh_backend="asyncssh", drsync_path=AGENT))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    invariants.check_converged(src, remote)
    assert sum(writes) > 16 << 20
    # without coalescing: an empty MSG_IGNORE packet, then 32 KiB of data, each its own write (~16 KiB
    # each on average). With it, a write per window adjust of sshd's (~100-130 KiB, more when the agent
    # catches up); a slow destination disk keeps every write near one adjust, so the bound is 3x the
    # uncoalesced average, not the adjust's size.
    assert sum(writes) / len(writes) > 48 << 10, (len(writes), sum(writes))
