"""A remote publish and its read-back (FAULTS F8) share one round trip (Connection.call_then): the
read-back is sent with the publish, and the agent answers the two in order. Against the real sshd
fixture and a real agent."""

from __future__ import annotations

import sys

import pytest
import treegen

import drsync
from drsync.errors import UsageError
from drsync.transports import remote

AGENT = f"{sys.executable} -m drsync"
SHAPE = treegen.Shape(datasets=1, variables=2, files=6, versions=3, changed=0.25, added=2, removed=0)


def _node(tmp_path, backend="asyncssh") -> remote.RemoteNode:
    return remote.RemoteNode(f"drsync-test:{tmp_path / 'remote'}",
                             drsync.Options(ssh_backend=backend, drsync_path=AGENT))


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_the_read_back_is_sent_before_the_publish_is_answered(tmp_path, sshd_server, ssh_client_env,
                                                              monkeypatch, backend):
    src = str(tmp_path / "src")
    (ds,) = treegen.make_node(src, SHAPE)
    spec = f"drsync-test:{tmp_path / 'remote'}"
    opts = drsync.Options(ssh_backend=backend, drsync_path=AGENT)
    assert drsync.push(src, spec, opts).exit_code == 0
    version = ds.add_version()
    drsync.scan(src)

    log = []
    real_send, real_message = remote.p.Stream.send, remote.Connection.message

    def send(self, obj):
        log.append(("send", obj.get("op")))
        return real_send(self, obj)

    def message(self):
        got = real_message(self)
        log.append(("reply", bool(got.get("ok"))))
        return got

    monkeypatch.setattr(remote.p.Stream, "send", send)
    monkeypatch.setattr(remote.Connection, "message", message)
    r = drsync.push(src, spec, opts)
    assert r.exit_code == 0, r.errors
    at = log.index(("send", "dest_publish"))
    assert log[at + 1] == ("send", "manifest"), log[at:]  # no reply read in between
    assert log[at + 2:at + 4] == [("reply", True), ("reply", True)], log[at:]
    assert (tmp_path / "remote" / ds.drs / f"v{version}").is_dir()


def test_the_first_requests_error_wins_and_the_replies_stay_in_step(tmp_path, sshd_server, ssh_client_env):
    (tmp_path / "remote").mkdir()
    node = _node(tmp_path)
    try:
        conn = node.conn
        # no destination session is open: the publish fails, the read-back after it succeeds
        with pytest.raises(UsageError, match="no destination session open"):
            conn.call_then({"op": "dest_publish", "versions": []}, {"op": "datasets", **node.base()})
        # the second's error when only the second fails
        with pytest.raises(UsageError, match="no destination session open"):
            conn.call_then({"op": "datasets", **node.base()}, {"op": "dest_publish", "versions": []})
        # both replies were read: the next call gets its own reply
        assert conn.call(op="datasets", **node.base()).get("datasets") == []
        assert conn.call_then({"op": "datasets", **node.base()},
                              {"op": "manifest", "dest": True, **node.base("x")}).get("index") is None
    finally:
        node.close()
