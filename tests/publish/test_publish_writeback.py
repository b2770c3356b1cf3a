"""A receiver that will flush starts writing back what is already dirty on the destination's
filesystem on a background thread (drsync/writeback.py): through a descriptor of its own, one at a
time per filesystem, never for a run that publishes nothing or runs with --no-fsync, and no thread
of it outlives the run."""

from __future__ import annotations

import ctypes
import os
import platform
import threading

import invariants
import pytest
import treegen

import drsync
from drsync import writeback
from drsync.fsutil import Dir

SHAPE = treegen.Shape(datasets=1, variables=3, files=8, versions=2, changed=0.25, added=2, removed=0)
KCMP_FILE = 0
SYS_KCMP = {"x86_64": 312, "aarch64": 272}[platform.machine()]


def _same_open_file(fd1: int, fd2: int) -> bool:
    """kcmp(2): do two descriptors of this process share one open file description (a dup)?"""
    libc = ctypes.CDLL(None, use_errno=True)
    pid = os.getpid()
    r = libc.syscall(SYS_KCMP, pid, pid, KCMP_FILE, fd1, fd2)
    assert r >= 0, os.strerror(ctypes.get_errno())
    return r == 0


def test_one_background_flush_at_a_time_through_its_own_open_file(tmp_path, monkeypatch):
    release, flushing = threading.Event(), threading.Event()
    seen = []

    def syncfs(self):
        seen.append((self.fd, os.path.samestat(os.fstat(self.fd), os.fstat(d.fd)),
                     _same_open_file(self.fd, d.fd)))
        flushing.set()
        release.wait(30)

    monkeypatch.setattr(Dir, "syncfs", syncfs)
    # a background flush an earlier test left running on this filesystem is not this test's one
    monkeypatch.setattr(writeback, "_running", {})
    d, other = Dir.open_root(str(tmp_path)), Dir.open_root(str(tmp_path))
    try:
        first = writeback.start(d)
        assert first is not None and flushing.wait(30)
        assert writeback.start(other) is None  # same filesystem, one still in flight
        [(fd, same_dir, shared)] = seen
        # the directory itself, but not a dup: a writeback error (EIO) is reported once per open
        # file, and the receiver's own flush must still see it
        assert same_dir and not shared
        release.set()
        first.join(30)
        assert not first.is_alive()
        with pytest.raises(OSError):
            os.fstat(fd)  # its descriptor was closed
        again = writeback.start(other)  # the previous one is done: a new one may start
        assert again is not None
        again.join(30)
    finally:
        release.set()
        d.close()
        other.close()


def _spy(monkeypatch) -> list:
    started = []
    real = writeback.start

    def start(d):
        t = real(d)
        started.append(t)
        return t

    monkeypatch.setattr(writeback, "start", start)
    return started


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "drsync-writeback" and t.is_alive()]


def test_a_publishing_push_starts_it_and_waits_for_it(tmp_path, monkeypatch):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    [ds] = treegen.make_node(src, SHAPE)
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[0])).exit_code == 0
    for t in threading.enumerate():
        if t.name == "drsync-writeback":
            t.join(30)
    started = _spy(monkeypatch)
    real_syncfs = Dir.syncfs

    def slow_syncfs(self):  # the background flush outlasts the receiver's own ones: it is waited for
        if threading.current_thread().name == "drsync-writeback":
            threading.Event().wait(0.5)
        real_syncfs(self)

    monkeypatch.setattr(Dir, "syncfs", slow_syncfs)
    r = drsync.push(src, dst, drsync.Options())
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert len(started) == 1 and started[0] is not None  # one per session, not per batch or version
    assert _threads() == []  # joined after the receiver's own flush
    invariants.check_converged(src, dst)


def test_nothing_to_publish_or_no_fsync_starts_none(tmp_path, monkeypatch):
    src, dst, dst2 = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")
    treegen.make_node(src, SHAPE)
    assert drsync.push(src, dst, drsync.Options()).exit_code == 0
    started = _spy(monkeypatch)
    assert drsync.push(src, dst, drsync.Options()).exit_code == 0  # a no-op
    r = drsync.push(src, dst2, drsync.Options(fsync=False))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert started == []
    invariants.check_converged(src, dst2)
