"""FAULTS E1: a full disk at the destination (a real ENOSPC from a 2 MiB tmpfs).

Exit 6 naming "No space left", nothing half-published (every visible v* whole), `latest`
unchanged; after the filesystem is grown the same push completes and verifies.
"""

from __future__ import annotations

import os
import subprocess

import invariants
import pytest
import treegen
from safety_helpers import assert_failed, assert_ok, make_canary, run_drsync, snapshot, tree_state

SHAPE = treegen.Shape(datasets=1, variables=2, files=12, versions=1, changed=1.0, added=0, removed=0,
                      size=64 << 10)  # 1.5 MiB per version: the first fits in 2 MiB, the second does not
# big files are written around the page cache, a chunk on a helper thread while the next is read
# (drsync/directio.py): ~6 MiB per version, the first fits in 8 MiB, the second does not
BIG_SHAPE = treegen.Shape(datasets=1, variables=2, files=3, versions=1, changed=1.0, added=0, removed=0,
                          size=(1 << 20) + 3000)


def _mount(path: str, size: str) -> str | None:
    """Mount a tmpfs; return None on success, else the reason it is impossible here."""
    if os.geteuid() != 0:
        return "not root: cannot mount a size-limited tmpfs"
    try:
        cp = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True, check=False,
                            text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"mount failed: {e}"
    if cp.returncode != 0:
        return f"mount -t tmpfs failed: {cp.stderr.strip()}"
    return None


@pytest.mark.parametrize("shape, size, grown", [(SHAPE, "2m", "16m"), (BIG_SHAPE, "8m", "32m")],
                         ids=["small-files", "big-files"])
def test_full_disk_then_recovery(tmp_path, shape, size, grown):
    disk = str(tmp_path / "disk")
    os.makedirs(disk)
    why = _mount(disk, size)
    if why is not None:
        pytest.skip(why)
    try:
        src = str(tmp_path / "src")
        dst = os.path.join(disk, "dst")
        outside = os.path.join(disk, "outside")
        make_canary(outside)
        (ds,) = treegen.make_node(src, shape)
        assert_ok(run_drsync("push", src, dst))  # version 1 fits
        v1 = ds.versions[0]
        v2 = ds.add_version()
        before = snapshot(dst)
        canary = tree_state(outside)

        cp = run_drsync("push", src, dst)

        line = assert_failed(cp, 6, ds.drs)
        assert "No space left" in line, line
        dds = os.path.join(dst, ds.drs)
        assert not os.path.exists(os.path.join(dds, f"v{v2}")), "a version was published on a full disk"
        assert os.readlink(os.path.join(dds, "latest")) == f"v{v1}"
        invariants.check(src, dst, before)  # every visible v* whole, files/ right, nothing moved back
        assert snapshot(dst) == before
        assert tree_state(outside) == canary

        # grow the filesystem: the same push now completes, without a second error
        subprocess.run(["mount", "-o", f"remount,size={grown}", disk], check=True, capture_output=True)
        assert_ok(run_drsync("push", src, dst))
        assert os.readlink(os.path.join(dds, "latest")) == f"v{v2}"
        invariants.check_converged(src, dst)
        assert tree_state(outside) == canary
    finally:
        subprocess.run(["umount", "-l", disk], capture_output=True, check=False)
