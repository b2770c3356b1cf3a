"""Over ssh the agent, too, builds the new versions' links while the files arrive: the client sends
the entries ahead of the files (dest_stage) and the publish request names them without rows."""

import json
import os
import shlex
import sys

import invariants
import pytest
import treegen
from planwatch import watch_stage_and_plan

import drsync

AGENT = f"{sys.executable} -m drsync"
SHAPE = treegen.Shape(datasets=1, variables=3, files=12, versions=2, changed=0.25, added=3, removed=0)


def _links(vdir: str) -> dict:
    return {f"{var}/{f}": os.readlink(os.path.join(vdir, var, f))
            for var in os.listdir(vdir) for f in os.listdir(os.path.join(vdir, var))}


def _older_pushed(tmp_path, backend: str):
    """SHAPE's node, and a remote node holding its older version: (src, remote, spec, dataset, options)."""
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    remote = str(tmp_path / "b")
    spec = f"drsync-test:{remote}"
    opts = drsync.Options(ssh_backend=backend, drsync_path=AGENT, retries=0)
    assert drsync.push(src, spec, drsync.Options(up_to=ds.versions[0], ssh_backend=backend,
                                                 drsync_path=AGENT)).exit_code == 0
    return src, remote, spec, ds, opts


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_agent_builds_links_before_the_files_are_in(tmp_path, sshd_server, ssh_client_env, backend):
    src, remote, spec, ds, opts = _older_pushed(tmp_path, backend)
    new = ds.versions[1]
    before = invariants.snapshot(remote)
    # The agent waits a second before flushing the received files, then dies right after that
    # flush: before any file is renamed into files/ and before any version is published. The
    # links must already be in staging by then; without dest_stage they are made only afterwards.
    dying = drsync.Options(ssh_backend=backend, retries=0,
                           drsync_path=f"env DRSYNC_FAULT_SLOW=before_fsync:1 DRSYNC_FAULT=after_fsync:1 {AGENT}")
    r = drsync.push(src, spec, dying)
    assert r.exit_code == 5, [e.line() for e in r.errors]
    rel = os.path.relpath(ds.path, src)
    staged = os.path.join(remote, rel, ".drsync", "staging", f"v{new}")
    assert os.path.isdir(staged), "the agent had not started the links while the files arrived"
    assert _links(staged) == _links(os.path.join(ds.path, f"v{new}"))
    invariants.check(src, remote, before)
    assert drsync.push(src, spec, opts).exit_code == 0
    invariants.check_converged(src, remote)


def test_an_agent_without_dest_stage_gets_the_entries_with_the_publish(tmp_path, sshd_server, ssh_client_env):
    src = str(tmp_path / "a")
    treegen.make_node(src, SHAPE)
    remote = str(tmp_path / "b")
    older = ("import sys; import drsync.agent.protocol as p; p.OPS = p.OPS - {'dest_stage'}; "
             "sys.argv = ['drsync', 'agent']; from drsync.cli import run; run()")
    opts = drsync.Options(drsync_path=f"{sys.executable} -c {shlex.quote(older)}", retries=0)
    r = drsync.push(src, f"drsync-test:{remote}", opts)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    invariants.check_converged(src, remote)


def test_each_link_travels_once(tmp_path, sshd_server, ssh_client_env, monkeypatch):
    """The entries go with dest_stage; dest_publish names the staged versions without rows."""
    from drsync.agent import protocol

    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    sent = []
    real = protocol.Stream.send_json  # what every message goes through, as the JSON text sent

    def send_json(self, payload):
        msg = json.loads(payload)
        if isinstance(msg, dict) and msg.get("op") in ("dest_stage", "dest_publish"):
            sent.append((msg["op"], [(v, rows) for v, rows in msg.get("versions") or []]))
        return real(self, payload)

    monkeypatch.setattr(protocol.Stream, "send_json", send_json)
    r = drsync.push(src, f"drsync-test:{tmp_path / 'b'}", drsync.Options(drsync_path=AGENT, retries=0))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    (stage_op, staged), (publish_op, published) = sent
    assert (stage_op, publish_op) == ("dest_stage", "dest_publish")
    assert [v for v, _ in staged] == [v for v, _ in published] == list(ds.versions)
    assert all(rows for _, rows in staged) and all(rows is None for _, rows in published)


def test_the_agent_gets_the_entries_before_the_client_plans_the_files(tmp_path, sshd_server, ssh_client_env,
                                                                      monkeypatch):
    """sync._stage_early over ssh: dest_stage goes out as soon as the destination's index is in,
    before the client works out the files to send, and only once."""
    from drsync.transports.remote import RemoteDestination

    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    spec = f"drsync-test:{tmp_path / 'b'}"
    opts = drsync.Options(drsync_path=AGENT, retries=0)
    assert drsync.push(src, spec, drsync.Options(up_to=ds.versions[0], drsync_path=AGENT)).exit_code == 0
    events = watch_stage_and_plan(monkeypatch, RemoteDestination)
    r = drsync.push(src, spec, opts)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert events == [("stage", (ds.versions[1],)), ("plan", (ds.versions[1],))]
    invariants.check_converged(src, str(tmp_path / "b"))


def test_requests_after_dest_stage_get_their_own_replies(tmp_path, sshd_server, ssh_client_env):
    """dest_stage is not waited for; a request sent after it on the same connection (here the
    destination entry list a plan may fetch, then the session's close) still gets its own reply,
    not the stage's, and a second session on the connection works."""
    from drsync import Options as O
    from drsync.events import Events
    from drsync.transports.local import LocalNode
    from drsync.transports.remote import RemoteNode

    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    remote = str(tmp_path / "b")
    assert drsync.push(src, f"drsync-test:{remote}",
                       drsync.Options(up_to=ds.versions[0], drsync_path=AGENT)).exit_code == 0
    drs = os.path.relpath(ds.path, src)
    old, new = ds.versions
    before = invariants.snapshot(remote)
    local = LocalNode(src, O())
    sman = local.source_manifest(drs, save=False)
    node = RemoteNode(f"drsync-test:{remote}", O(drsync_path=AGENT, retries=0), Events())
    try:
        session = node.open_destination(drs)
        session.stage([(new, sman.entries(new))])
        assert session.manifest.entries(old) == sman.entries(old)  # its reply, not dest_stage's
        session.close()
        again = node.open_destination(drs)  # the connection is still in step
        assert set(again.manifest.index.versions) == {old}
        again.close()
    finally:
        node.close()
        local.close()
    invariants.check(src, remote, before)  # staged, never published: nothing visible changed


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_the_agent_stores_the_entry_rows_as_they_came(tmp_path, sshd_server, ssh_client_env, backend):
    """A new version's entry list is saved by the agent as the text the client sent with dest_stage
    (the source's stored rows, cut out as read), not serialised again: here the source's rows are
    written with spaces, which drsync's own serialiser never writes, and the agent's stored list
    has them too, and loads as the same entries (a no-op next, and `verify` clean)."""
    src, remote, spec, ds, opts = _older_pushed(tmp_path, backend)
    new = ds.versions[1]
    stored = os.path.join(ds.path, ".drsync", "manifest", f"v{new}.json")
    with open(stored, "rb") as f:
        doc = json.loads(f.read())
    head = json.dumps({k: doc[k] for k in ("format", "version")}, separators=(",", ":"))[:-1].encode()
    spaced = head + b',"entries":' + json.dumps(doc["entries"], separators=(", ", ": ")).encode() + b"}"
    with open(stored, "wb") as f:
        f.write(spaced)
    r = drsync.push(src, spec, opts)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    rel = os.path.relpath(ds.path, src)
    with open(os.path.join(remote, rel, ".drsync", "manifest", f"v{new}.json"), "rb") as f:
        assert f.read() == spaced
    invariants.check_converged(src, remote)
    again = drsync.push(src, spec, opts)
    assert again.exit_code == 0 and again.plan.in_sync
    assert drsync.verify(remote).exit_code == 0
