"""Big versions are linked by two threads, one variable directory each (publish.PARALLEL_LINKS, staging.Staging):
the tree is the same as the serial build, and an error in one thread still publishes nothing."""

from __future__ import annotations

import errno
import os

import invariants
import pytest
import treegen

import drsync
from drsync import publish
from drsync.fsutil import Dir

SHAPE = treegen.Shape(datasets=1, variables=4, files=30, versions=3, changed=0.2, added=5, removed=0)


@pytest.fixture
def threaded(monkeypatch):
    monkeypatch.setattr(publish, "PARALLEL_LINKS", 1)  # every version of this small shape


def test_threaded_build_gives_the_same_tree(tmp_path, threaded):
    src = str(tmp_path / "a")
    treegen.make_node(src, SHAPE)
    serial = str(tmp_path / "serial")
    threaded_dst = str(tmp_path / "threaded")
    assert drsync.push(src, threaded_dst).exit_code == 0
    publish.PARALLEL_LINKS = 10**9  # (restored by monkeypatch) the serial build, for comparison
    assert drsync.push(src, serial).exit_code == 0
    invariants.check_converged(src, threaded_dst)
    assert invariants.shape_of(threaded_dst) == invariants.shape_of(serial)
    assert any(kind == "link" for kind, _ in invariants.shape_of(serial).values())


def test_error_in_one_link_thread_publishes_nothing(tmp_path, threaded, monkeypatch):
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    dst = str(tmp_path / "b")
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[0])).exit_code == 0
    before = invariants.snapshot(dst)
    real = Dir.symlink
    victim = sorted(os.listdir(os.path.join(ds.path, f"v{ds.versions[1]}")))[-1]

    def symlink(self, target, name):
        if os.path.basename(self.path) == victim:
            raise OSError(errno.ENOSPC, "No space left on device", name)
        return real(self, target, name)

    monkeypatch.setattr(Dir, "symlink", symlink)
    result = drsync.push(src, dst)
    assert result.exit_code == 6  # I/O error on the destination, from the worker thread
    rel = os.path.relpath(ds.path, src)
    for v in ds.versions[1:]:
        assert not os.path.exists(os.path.join(dst, rel, f"v{v}"))
    assert os.readlink(os.path.join(dst, rel, "latest")) == f"v{ds.versions[0]}"
    invariants.check(src, dst, before)
    monkeypatch.setattr(Dir, "symlink", real)
    assert drsync.push(src, dst).exit_code == 0  # and the next run finishes the job
    invariants.check_converged(src, dst)
