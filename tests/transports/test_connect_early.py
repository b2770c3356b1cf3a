"""A push to a remote node connects on a helper thread (drsync/connecting.py) while the local
source side gets ready: the source manifest, and what the plan of its newest version reads, are
loaded during the handshake, and used, not loaded again, by the plan. A source that fails first
is reported at once, and the connection made meanwhile is closed."""

from __future__ import annotations

import sys
import threading
import time

import invariants
import pytest
import treegen

import drsync
from drsync import connecting, state
from drsync.scan import DatasetManifest
from drsync.transports import remote, ssh

AGENT = f"{sys.executable} -m drsync"
SHAPE = treegen.Shape(datasets=1, variables=2, files=8, versions=3, changed=0.25, added=2, removed=0)
WAIT = 30  # seconds: only reached when the behaviour under test is missing


def test_the_source_side_loads_while_the_destination_connects(tmp_path, sshd_server, ssh_client_env, monkeypatch):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    [ds] = treegen.make_node(src, SHAPE)
    assert drsync.push(src, f"drsync-test:{dst}", drsync.Options(up_to=ds.versions[-2], drsync_path=AGENT)).exit_code == 0
    assert drsync.scan(src)  # a stored manifest, as on a node drsync serves
    order: list[str] = []
    warmed = threading.Event()
    real_warm, real_connect, real_load = DatasetManifest.warm, remote.connect_node, state.StateDir.load_entries
    loads: list[str] = []

    def warm(self):
        real_warm(self)
        order.append("source ready")
        warmed.set()

    def connect_node(spec, options, events):
        # connect only once the source side is ready: a run that connects first never gets here
        order.append("connect" if warmed.wait(WAIT) else "connect without waiting for the source")
        node = real_connect(spec, options, events)
        order.append("connected")
        return node

    def load_entries(self, version, info):
        loads.append(version)
        return real_load(self, version, info)

    monkeypatch.setattr(DatasetManifest, "warm", warm)
    monkeypatch.setattr(remote, "connect_node", connect_node)
    monkeypatch.setattr(state.StateDir, "load_entries", load_entries)
    r = drsync.push(src, f"drsync-test:{dst}", drsync.Options(drsync_path=AGENT))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert order == ["source ready", "connect", "connected"]
    assert r.plan.datasets[0].versions_to_add == (ds.versions[-1],)
    assert loads == [ds.versions[-1]]  # loaded ahead, once: the plan and the stage reuse it
    invariants.check_converged(src, dst)


def test_a_bad_source_is_reported_without_waiting_for_the_connection(tmp_path, sshd_server, ssh_client_env,
                                                                      monkeypatch):
    release, closed = threading.Event(), threading.Event()
    real_connect = remote.connect_node
    timeline: list[str] = []

    def connect_node(spec, options, events):
        timeline.append("released" if release.wait(WAIT) else "never released")
        node = real_connect(spec, options, events)
        real_close = node.close

        def close():
            real_close()
            closed.set()
        node.close = close
        return node

    monkeypatch.setattr(remote, "connect_node", connect_node)
    with pytest.raises(drsync.DrsyncError) as got:
        drsync.push(str(tmp_path / "missing"), f"drsync-test:{tmp_path / 'b'}", drsync.Options(drsync_path=AGENT))
    timeline.append("reported")
    assert got.value.exit_code == 2 and "source does not exist" in got.value.line()
    release.set()  # now the connection completes, with nobody to use it: it is closed
    assert closed.wait(WAIT)
    assert timeline == ["reported", "released"]


def test_connecting_hands_over_the_node_or_the_error():
    class Node:
        closed = False

        def close(self):
            self.closed = True

    node = Node()
    assert connecting.Connecting(lambda *a: node, "spec", None, None).result() is node
    assert not node.closed

    def refuse(*a):
        raise drsync.DrsyncError("host key mismatch")

    with pytest.raises(drsync.DrsyncError, match="host key mismatch"):
        connecting.Connecting(refuse, "spec", None, None).result()

    gate = threading.Event()
    late = Node()

    def slow(*a):
        gate.wait(WAIT)
        return late

    c = connecting.Connecting(slow, "spec", None, None)
    c.abandon()  # returns at once
    gate.set()
    c._thread.join(WAIT)
    assert late.closed


def test_waiting_for_prepared_channels_is_bounded(monkeypatch):
    """ssh.wait_prepared returns as soon as every prepared channel is open, or at its deadline with
    the handshake still running (it never turns a slow connection into a longer run)."""
    gate = threading.Event()
    monkeypatch.setattr(ssh, "_prepared", {})
    ssh._prepared["quick"] = connecting.Connecting(lambda *a: None, "spec")
    ssh._prepared["slow"] = slow = connecting.Connecting(lambda *a: gate.wait(WAIT), "spec")
    t0 = time.monotonic()
    ssh.wait_prepared(0.05)
    assert time.monotonic() - t0 < WAIT / 2 and not gate.is_set()
    assert not slow.wait(0)  # the deadline passed with the slow one still connecting
    assert ssh._prepared["quick"].wait(WAIT)  # (the quick one may not have been scheduled within 0.05 s)
    gate.set()
    assert slow.wait(WAIT)
    t0 = time.monotonic()
    ssh.wait_prepared(WAIT)  # both done: no wait at all
    assert time.monotonic() - t0 < WAIT / 2
