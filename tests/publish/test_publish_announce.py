"""A receiver asks a streaming source for a batch (fetch.Announced) before it creates the batch's
partial files, so the bytes travel while the files are made: the agent's "need" on a push, the
client's "send" on a pull. What is asked is what is then read, resumed offsets included."""

from __future__ import annotations

import os
import subprocess
import sys

import invariants
import pytest
import treegen
from publish_helpers import half_sent

import drsync
from drsync import fetch, fsutil
from drsync.agent import protocol
from drsync.transports import local

AGENT = f"{sys.executable} -m drsync"
SHAPE = treegen.Shape(datasets=1, variables=2, files=6, versions=2, changed=0.5, added=1, removed=0)


def _log_creates(monkeypatch, log: list) -> None:
    real = fsutil.Dir.create_file

    def create_file(self, name, *a, **k):
        if os.path.basename(os.path.dirname(self.path)) == "partial":  # partial/<files dir>/<file>
            log.append(("create", name))
        return real(self, name, *a, **k)

    monkeypatch.setattr(fsutil.Dir, "create_file", create_file)


def test_the_batch_is_asked_for_before_its_partials_are_created(tmp_path, monkeypatch):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    _, to_send, resumed, head = half_sent(src, dst, SHAPE)
    log: list = []
    real_batch = local.LocalNode.fetch_batch

    def fetch_batch(self, drs):  # the local source, asked the way the remote ones are
        return fetch.Announced(lambda items: log.append(("ask", sorted((e.file, off) for e, off in items))),
                               real_batch(self, drs))

    monkeypatch.setattr(local.LocalNode, "fetch_batch", fetch_batch)
    _log_creates(monkeypatch, log)
    r = drsync.push(src, dst)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert log[0] == ("ask", sorted((e.file, len(head) if e is resumed else 0) for e in to_send))
    assert sorted(n for what, n in log[1:] if what == "create") == sorted(
        e.file for e in to_send if e is not resumed)  # the resumed one is appended to
    assert [what for what, _ in log].count("ask") == 1
    invariants.check_converged(src, dst)


def test_a_pull_asks_the_agent_before_creating_the_partials(tmp_path, sshd_server, ssh_client_env, monkeypatch):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    treegen.make_node(src, SHAPE)
    log: list = []
    real_send = protocol.Stream.send

    def send(self, obj):
        if obj.get("op") == "send":
            log.append(("ask", len(obj["files"])))
        return real_send(self, obj)

    monkeypatch.setattr(protocol.Stream, "send", send)
    _log_creates(monkeypatch, log)
    r = drsync.pull(f"drsync-test:{src}", dst, drsync.Options(drsync_path=AGENT))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    creates = [i for i, (what, _) in enumerate(log) if what == "create"]
    asks = [i for i, (what, _) in enumerate(log) if what == "ask"]
    assert creates and asks and asks[0] < creates[0]
    assert sum(log[i][1] for i in asks) == r.transferred.files == len(creates)
    invariants.check_converged(src, dst)


def test_a_fetch_reads_only_what_it_announced():
    asked: list = []
    reads: list = []
    f = fetch.Announced(asked.append, lambda items: reads.append(items) or [0o644] * len(items))
    a, b = object(), object()
    f.announce([(a, 0), (b, 5)])
    assert f([(a, 3, 0), (b, 4, 5)]) == [0o644, 0o644]
    assert asked == [[(a, 0), (b, 5)]]
    assert f([(a, 3, 0)]) == [0o644]  # without an announce it asks for itself
    assert asked[1] == [(a, 0)]
    f.announce([(a, 0)])
    with pytest.raises(RuntimeError):
        f([(b, 4, 0)])


def _mount_tmpfs(path: str) -> str | None:
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs with an inode limit"
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,nr_inodes=4096", "tmpfs", path],
                        capture_output=True, text=True, check=False, timeout=30)
    return None if cp.returncode == 0 else f"mount -t tmpfs failed: {cp.stderr.strip()}"


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_partial_that_cannot_be_created_after_the_ask_leaves_the_link_in_step(
        tmp_path, sshd_server, ssh_client_env, direction):
    """Out of inodes on the receiving side once the batch was asked for: the receiver still reads
    what the source sends (fetch.Announced, receive_files._drain), so the dataset fails as itself (exit
    6, "No space left", nothing published) and the next dataset goes through on the same
    connection."""
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    first, second = treegen.make_node(src, treegen.Shape(datasets=2, variables=2, files=6, versions=2, changed=0.5,
                                                        added=4, removed=0))
    assert first.drs < second.drs  # the full one comes first in the run
    full = os.path.join(dst, first.drs)
    os.makedirs(full)
    why = _mount_tmpfs(full)
    if why is not None:
        pytest.skip(why)
    try:
        def run(**kw):
            opts = drsync.Options(drsync_path=AGENT, retries=0, **kw)
            if direction == "push":
                return drsync.push(src, f"drsync-test:{dst}", opts)
            return drsync.pull(f"drsync-test:{src}", dst, opts)

        assert run(up_to=first.versions[0]).exit_code == 0
        st = os.statvfs(full)
        used = st.f_files - st.f_ffree
        # two inodes to spare: fewer than the new version's files, so a partial cannot be created
        subprocess.run(["mount", "-o", f"remount,nr_inodes={used + 2}", full], check=True, capture_output=True)
        before = invariants.snapshot(dst)
        r = run()
        assert r.exit_code == 6, [e.line() for e in r.errors]
        [err] = r.errors
        assert err.dataset == first.drs and "No space left" in err.line()
        assert r.attempts == 1  # no lost connection: the stream stayed in step
        assert os.readlink(os.path.join(full, "latest")) == f"v{first.versions[0]}"
        assert not os.path.exists(os.path.join(full, f"v{first.versions[1]}"))
        invariants.check(src, dst, before)
        assert os.readlink(os.path.join(dst, second.drs, "latest")) == f"v{second.versions[1]}"
        subprocess.run(["mount", "-o", "remount,nr_inodes=4096", full], check=True, capture_output=True)
        assert run().exit_code == 0
        invariants.check_converged(src, dst)
    finally:
        subprocess.run(["umount", "-l", full], capture_output=True, check=False)
