"""The round trips of a run over ssh, against the real sshd fixture and a real agent. A remote publish,
its read-back (FAULTS F8) and the session's close share one (Connection.call_then): all three are sent
before any answer is read, and the agent answers in order. The first request does not wait for the
answer to the greeting's hello, nor does the run wait for the answer to its bye."""

from __future__ import annotations

import sys
import time

import pytest
import treegen

import drsync
from drsync.errors import UsageError
from drsync.transports import remote
from transport_helpers import BACKENDS

AGENT = f"{sys.executable} -m drsync"
SHAPE = treegen.Shape(datasets=1, variables=2, files=6, versions=3, changed=0.25, added=2, removed=0)


def _node(tmp_path, backend="asyncssh", agent=AGENT) -> remote.RemoteNode:
    return remote.RemoteNode(f"drsync-test:{tmp_path / 'remote'}",
                             drsync.Options(ssh_backend=backend, drsync_path=agent))


def _logged(monkeypatch) -> list:
    """Every request sent (its op; None for the hello) and every answer read (ok or not), in order."""
    log = []
    real_send, real_recv = remote.p.Stream.send, remote.p.Stream.recv

    def send(self, obj):
        log.append(("send", obj.get("op")))
        return real_send(self, obj)

    def recv(self):
        got = real_recv(self)
        log.append(("reply", bool(got.get("ok"))))
        return got

    monkeypatch.setattr(remote.p.Stream, "send", send)
    monkeypatch.setattr(remote.p.Stream, "recv", recv)
    return log


def _replicated_then_new_version(tmp_path, backend: str):
    """A source replicated to the remote node, then given a new version (scanned): what the next
    push publishes. Returns (src, spec, options, dataset, version)."""
    src = str(tmp_path / "src")
    (ds,) = treegen.make_node(src, SHAPE)
    spec = f"drsync-test:{tmp_path / 'remote'}"
    opts = drsync.Options(ssh_backend=backend, drsync_path=AGENT)
    assert drsync.push(src, spec, opts).exit_code == 0
    version = ds.add_version()
    drsync.scan(src)
    return src, spec, opts, ds, version


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_the_read_back_is_sent_before_the_publish_is_answered(tmp_path, sshd_server, ssh_client_env,
                                                              monkeypatch, backend):
    src, spec, opts, ds, version = _replicated_then_new_version(tmp_path, backend)

    log = _logged(monkeypatch)
    r = drsync.push(src, spec, opts)
    assert r.exit_code == 0, r.errors
    at = log.index(("send", "dest_publish"))
    # no answer read in between: the read-back and the close go in the publish's flight
    assert log[at + 1:at + 3] == [("send", "manifest"), ("send", "dest_close")], log[at:]
    assert log[at + 3:at + 6] == [("reply", True)] * 3, log[at:]
    assert log.count(("send", "dest_close")) == 1, log  # close() read its answer, sent no other
    assert log[-1] == ("send", "bye"), log[at:]  # and bye's answer is not waited for
    assert (tmp_path / "remote" / ds.drs / f"v{version}").is_dir()
    # the run left the destination unlocked: a run right after it is not refused
    ds.add_version()
    drsync.scan(src)
    assert drsync.push(src, spec, opts).exit_code == 0


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_the_first_request_does_not_wait_for_the_hellos_answer(tmp_path, sshd_server, ssh_client_env,
                                                                monkeypatch, backend):
    (tmp_path / "remote").mkdir()
    log = _logged(monkeypatch)
    node = _node(tmp_path, backend)
    try:
        assert node.datasets() == []
    finally:
        node.close()
    assert log == [("send", None), ("send", "datasets"), ("reply", True), ("reply", True), ("send", "bye")]


def _refusing_agent(tmp_path, then: str = "") -> str:
    """The command of a fake agent that greets, answers the hello with an error, runs ``then`` (Python
    source) and exits; with the remote directory made."""
    (tmp_path / "remote").mkdir()
    fake = tmp_path / "fake_agent.py"
    fake.write_text(
        "import sys\n"
        "from drsync.agent import protocol as p\n"
        "s = p.Stream(sys.stdin.buffer.raw.read, sys.stdout.buffer.write, sys.stdout.buffer.flush)\n"
        "sys.stdout.buffer.write(p.GREETING + b'%d fake\\n' % p.PROTOCOL)\n"
        "sys.stdout.buffer.flush()\n"
        "s.recv()\n"
        "s.send({'ok': False, 'error': {'code': 2, 'message': 'hello refused'}})\n" + then)
    return f"{sys.executable} {fake}"


def test_an_error_answer_to_the_hello_is_the_one_raised(tmp_path, sshd_server, ssh_client_env):
    """An agent that greets, then refuses the hello and exits: the first request's call raises the
    hello's error, not a lost connection."""
    node = _node(tmp_path, agent=_refusing_agent(tmp_path))
    try:
        with pytest.raises(UsageError, match="remote: hello refused"):
            node.datasets()
    finally:
        node.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_hello_is_raised_even_after_the_agent_has_gone(tmp_path, sshd_server, ssh_client_env, backend):
    """The same agent, but the first request is sent only after it has answered and exited, so that
    sending finds the channel closed: the answer already read off the wire is still what is raised,
    not the lost connection."""
    gone = tmp_path / "gone"
    node = _node(tmp_path, backend=backend, agent=_refusing_agent(tmp_path, then=f"open({str(gone)!r}, 'w').close()\n"))
    try:
        deadline = time.monotonic() + 30
        while not gone.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the agent's exit, then the channel's close, reach the client
        with pytest.raises(UsageError, match="remote: hello refused"):
            node.datasets()
    finally:
        node.close()


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
        # a third request in the same flight (as dest_close goes with a publish): the first's error
        # still wins, the third's answer is read by the next settle, and the replies stay in step
        answered = []
        with pytest.raises(UsageError, match="no destination session open"):
            conn.call_then({"op": "dest_publish", "versions": []}, {"op": "datasets", **node.base()},
                           ({"op": "datasets", **node.base()}, answered.append))
        assert answered == []
        conn.settle()
        assert [a.get("ok") for a in answered] == [True]
        assert conn.call(op="datasets", **node.base()).get("datasets") == []
        assert conn.call_then({"op": "datasets", **node.base()},
                              {"op": "manifest", "dest": True, **node.base("x")}).get("index") is None
    finally:
        node.close()


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_a_publish_that_fails_still_has_its_session_closed_once(tmp_path, sshd_server, ssh_client_env,
                                                                monkeypatch, backend):
    """dest_close goes in the publish's flight whatever the publish will answer: a publish refused
    at the destination (a version that appeared there meanwhile) closes its session all the same,
    once, and leaves the destination unlocked, its staging empty and nothing half-published."""
    src, spec, opts, ds, version = _replicated_then_new_version(tmp_path, backend)
    planted = tmp_path / "remote" / ds.drs / f"v{version}"
    real_publish = remote.RemoteDestination.publish

    def publish(self, *args, **kwargs):
        planted.mkdir()  # another writer's version, made between the plan and the publish
        return real_publish(self, *args, **kwargs)

    monkeypatch.setattr(remote.RemoteDestination, "publish", publish)
    log = _logged(monkeypatch)
    r = drsync.push(src, spec, opts)
    assert r.exit_code == 3 and "already exists" in str(r.errors[0]), r.errors
    assert log.count(("send", "dest_close")) == 1, log
    at = log.index(("send", "dest_publish"))
    assert log[at + 1:at + 3] == [("send", "manifest"), ("send", "dest_close")], log[at:]
    assert list(planted.iterdir()) == []  # the planted version untouched, none published over it
    assert (tmp_path / "remote" / ds.drs / "latest").resolve().name != f"v{version}"
    staging = tmp_path / "remote" / ds.drs / ".drsync" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    # unlocked: with the planted directory gone, the next run publishes the version
    monkeypatch.setattr(remote.RemoteDestination, "publish", real_publish)
    planted.rmdir()
    assert drsync.push(src, spec, opts).exit_code == 0
    assert (tmp_path / "remote" / ds.drs / "latest").resolve().name == f"v{version}"
