"""A big new version's links are made by a forked child that parses the stored entry list itself, with
this process sharing the tasks once its files are in (staging_fork.py): the tree is the one the thread
builds, whatever stops the child the parent builds the version itself, a failed run leaves no child
behind, and a child whose parent was killed stops and lets the next run in."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import invariants
import pytest
import treegen
from publish_helpers import env_with

import drsync
from drsync import publish, staging, staging_fork
from drsync.errors import DestinationIOError
from drsync.fsutil import Dir

SHAPE = treegen.Shape(datasets=1, variables=4, files=30, versions=3, changed=0.2, added=5, removed=0)


@pytest.fixture
def forked(monkeypatch, tmp_path):
    """Every new version of SHAPE is forked for; returns the file where each link's maker wrote its pid."""
    monkeypatch.setattr(staging_fork, "FORK_LINKS", 1)
    makers = tmp_path / "makers"
    real = staging._share_or_symlink

    def share_or_symlink(prev, nd, target, file):
        fd = os.open(makers, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # a child's buffers are never flushed
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return real(prev, nd, target, file)

    monkeypatch.setattr(staging, "_share_or_symlink", share_or_symlink)
    return makers


def _pair(tmp_path):
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    dst = str(tmp_path / "b")
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[0])).exit_code == 0
    return src, dst, ds


def _pids(makers) -> set[int]:
    return {int(x) for x in makers.read_text().split()} if makers.exists() else set()


def test_forked_build_gives_the_tree_the_thread_builds(tmp_path, forked, monkeypatch):
    src, dst, ds = _pair(tmp_path)
    for v in ds.versions[1:]:  # one new version per run: what is forked for
        assert drsync.push(src, dst, drsync.Options(up_to=v)).exit_code == 0
    assert _pids(forked) - {os.getpid()}, "no link was made by a child"
    invariants.check_converged(src, dst)
    monkeypatch.setattr(staging_fork, "FORK_LINKS", 10**9)  # the thread, for comparison
    threaded = str(tmp_path / "threaded")
    assert drsync.push(src, threaded, drsync.Options(up_to=ds.versions[0])).exit_code == 0
    for v in ds.versions[1:]:
        assert drsync.push(src, threaded, drsync.Options(up_to=v)).exit_code == 0
    assert invariants.shape_of(dst) == invariants.shape_of(threaded)
    assert os.listdir(os.path.join(dst, os.path.relpath(ds.path, src), ".drsync", "staging")) == []


@pytest.mark.parametrize("how", ["error", "killed"])
def test_a_child_that_fails_leaves_the_version_to_the_parent(tmp_path, forked, monkeypatch, how):
    src, dst, ds = _pair(tmp_path)
    before = invariants.snapshot(dst)
    parent = os.getpid()
    real = Dir.symlink

    def symlink(self, target, name):
        if os.getpid() != parent:
            if how == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.EIO, "Input/output error", name)
        return real(self, target, name)

    monkeypatch.setattr(Dir, "symlink", symlink)
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[1])).exit_code == 0
    assert _pids(forked) - {parent}, "the child made no link"
    invariants.check(src, dst, before)
    assert drsync.push(src, dst).exit_code == 0
    invariants.check_converged(src, dst)


def test_a_real_error_is_met_by_the_parent_and_publishes_nothing(tmp_path, forked, monkeypatch):
    src, dst, ds = _pair(tmp_path)
    before = invariants.snapshot(dst)
    real = Dir.symlink
    victim = sorted(os.listdir(os.path.join(ds.path, f"v{ds.versions[1]}")))[-1]

    def symlink(self, target, name):  # in the child and in the parent alike: a full disk
        if os.path.basename(self.path) == victim:
            raise OSError(errno.ENOSPC, "No space left on device", name)
        return real(self, target, name)

    monkeypatch.setattr(Dir, "symlink", symlink)
    result = drsync.push(src, dst, drsync.Options(up_to=ds.versions[1]))
    assert result.exit_code == 6
    assert "No space left" in str(result.errors[0])
    rel = os.path.relpath(ds.path, src)
    assert not os.path.exists(os.path.join(dst, rel, f"v{ds.versions[1]}"))
    assert os.readlink(os.path.join(dst, rel, "latest")) == f"v{ds.versions[0]}"
    invariants.check(src, dst, before)
    monkeypatch.setattr(Dir, "symlink", real)
    assert drsync.push(src, dst).exit_code == 0
    invariants.check_converged(src, dst)


def test_a_failed_run_stops_and_reaps_its_child(tmp_path, forked, monkeypatch):
    src, dst, ds = _pair(tmp_path)
    before = invariants.snapshot(dst)
    children = []
    real_init = staging_fork.ForkedStaging.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        children.append(self.pid)

    def receive_files(self, *args, **kwargs):
        raise DestinationIOError("flush failed: Input/output error", dataset=self.drs)

    monkeypatch.setattr(staging_fork.ForkedStaging, "__init__", init)
    monkeypatch.setattr(publish.Receiver, "receive_files", receive_files)
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[1])).exit_code == 6
    assert len(children) == 1
    with pytest.raises(ChildProcessError):  # reaped: neither running nor a zombie
        os.waitpid(children[0], os.WNOHANG)
    invariants.check(src, dst, before)
    rel = os.path.relpath(ds.path, src)
    assert os.listdir(os.path.join(dst, rel, ".drsync", "staging")) == []


RUNNER = """
import os, sys
from drsync import staging, staging_fork
staging_fork.FORK_LINKS = 1
staging.LINK_TASK = 1  # one link per task: many tasks, each a moment to see the parent gone
real, pidfile = staging_fork.ForkedStaging.__init__, sys.argv[1]
def init(self, *a, **k):
    real(self, *a, **k)
    with open(pidfile, "w") as fh:
        fh.write(str(self.pid))
staging_fork.ForkedStaging.__init__ = init
from drsync.cli import run
sys.argv = ["drsync", *sys.argv[2:]]
run()
"""


def test_a_child_whose_parent_is_killed_stops_and_frees_the_dataset(tmp_path):
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    dst = str(tmp_path / "b")
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[0])).exit_code == 0
    before = invariants.snapshot(dst)
    pidfile = tmp_path / "child"
    env = env_with("before_fsync:1")  # the parent dies as its first files are in
    env["DRSYNC_FAULT_SLOW"] = "staging:0.05"  # every task of the child: it is still at work then
    with open(tmp_path / "stderr", "w+") as err:  # a file, not a pipe: the child holds what it inherits
        code = subprocess.run([sys.executable, "-c", RUNNER, str(pidfile), "push", "--no-progress", "--up-to",
                               ds.versions[1], src, dst], env=env, stdout=subprocess.DEVNULL, stderr=err,
                              timeout=120).returncode
        err.seek(0)
        assert code == 137, err.read()
    child = int(pidfile.read_text())
    # 150-odd tasks of 50 ms each: left alone, the child would work for 7 s or more
    deadline = time.monotonic() + 2
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _running(child), "the orphaned child went on working"
    invariants.check(src, dst, before)
    assert drsync.push(src, dst).exit_code == 0  # the lock it shared is free: the next run finishes
    invariants.check_converged(src, dst)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan is reaped by whoever adopted it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_no_fork_to_spare_means_the_thread_builds_it(tmp_path, forked, monkeypatch):
    src, dst, ds = _pair(tmp_path)

    def fork():
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", fork)
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[1])).exit_code == 0
    assert _pids(forked) == {os.getpid()}
    assert drsync.push(src, dst).exit_code == 0
    invariants.check_converged(src, dst)


def test_a_damaged_stored_list_is_never_linked_from_by_the_child(tmp_path, forked):
    """FAULTS D7 in the child: the stored entry list of the new version has a flipped digest character.
    The child declines it (no link of its own); the parent rebuilds the list from the tree and the
    version is published right."""
    src, dst, ds = _pair(tmp_path)
    stored = os.path.join(ds.path, ".drsync", "manifest", f"v{ds.versions[1]}.json")
    data = open(stored, "rb").read()
    at = data.rindex(b'"') - 1  # the last character of the last row's digest
    with open(stored, "wb") as fh:
        fh.write(data[:at] + (b"0" if data[at:at + 1] != b"0" else b"1") + data[at + 1:])
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[1])).exit_code == 0
    assert _pids(forked) == {os.getpid()}, "the child linked from a damaged list"
    assert drsync.push(src, dst).exit_code == 0
    invariants.check_converged(src, dst)
