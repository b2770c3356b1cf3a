"""FAULTS E3/E4: I/O errors at the destination are permanent and contained.

* E4 EACCES: one dataset's ``files/`` is mode 0o500. Root ignores modes, so as root the push runs
  under ``setpriv`` with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from its bounding and
  inheritable sets: a real EACCES from the kernel, not a simulation. Exit 6 naming the dataset and
  the path; the other dataset publishes its new version.
* E4 read-only: the whole destination is a read-only bind mount (EROFS) -> exit 6, nothing changed.
* E3 EIO on the flush: ``drsync.fsutil.Dir.syncfs`` monkeypatched in-process to raise EIO -> exit 6,
  the batch's partials discarded (never trusted after a failed flush), nothing published.
After each fault is removed, the same push completes and converges (I7).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import invariants
import treegen
from publish_helpers import env_with, make_canary, partial_files, real_files, report

import drsync
import drsync.fsutil

NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
SHAPE = treegen.Shape(datasets=2, variables=2, files=10, versions=1, changed=0.5, size=4096)


def _push(src: str, dst: str, *, drop_dac: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "drsync", "push", src, dst]
    if drop_dac and os.geteuid() == 0:
        argv = NO_DAC + argv
    return subprocess.run(argv, capture_output=True, text=True, env=env_with(), timeout=120, check=False)


def _error_lines(cp: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in cp.stderr, cp.stderr
    return [ln for ln in cp.stderr.splitlines() if ln.startswith("drsync: error: ")]


def _setup(root: str):
    src, dst = os.path.join(root, "src"), os.path.join(root, "dst")
    gen = treegen.make_node(src, SHAPE)
    report(invariants.run_drsync("push", "--json", src, dst, env=env_with()))
    new = [ds.add_version() for ds in gen]
    return src, dst, gen, new


def test_eacces_on_one_dataset(fast_tmp):
    src, dst, gen, new = _setup(str(fast_tmp))
    outside, canary = make_canary(str(fast_tmp))
    bad, good = gen
    files_dir = os.path.join(dst, bad.drs, "files")
    before = invariants.snapshot(dst)
    os.chmod(files_dir, 0o500)
    try:
        cp = _push(src, dst, drop_dac=True)
    finally:
        os.chmod(files_dir, 0o755)
    assert cp.returncode == 6, cp.stderr
    lines = _error_lines(cp)
    assert len(lines) == 1, cp.stderr
    assert "Permission denied" in lines[0] and bad.drs in lines[0] and "files/" in lines[0], lines
    # the failing dataset: nothing new published, latest unchanged
    bds = os.path.join(dst, bad.drs)
    assert not os.path.exists(os.path.join(bds, f"v{new[0]}"))
    assert os.readlink(os.path.join(bds, "latest")) == before[bad.drs]["latest"]
    # the other dataset is unaffected: its new version is published
    assert os.readlink(os.path.join(dst, good.drs, "latest")) == f"v{new[1]}"
    invariants.check(src, dst, before)
    assert invariants.tree_state(outside) == canary
    cp = _push(src, dst)
    assert cp.returncode == 0, cp.stderr
    invariants.check_converged(src, dst)


def test_read_only_destination(fast_tmp):
    src, dst, gen, _new = _setup(str(fast_tmp))
    before = invariants.snapshot(dst)
    files_before = real_files(dst)
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", dst, dst], check=True, capture_output=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", dst], check=True, capture_output=True)
            cp = _push(src, dst)
        finally:
            subprocess.run(["umount", dst], check=True, capture_output=True)
        reason = "Read-only file system"
    else:  # not root: modes are honoured, a read-only tree is made with chmod
        subprocess.run(["chmod", "-R", "a-w", dst], check=True)
        try:
            cp = _push(src, dst)
        finally:
            subprocess.run(["chmod", "-R", "u+w", dst], check=True)
        reason = "Permission denied"
    assert cp.returncode == 6, cp.stderr
    lines = _error_lines(cp)
    assert lines and all(reason in ln for ln in lines), cp.stderr
    assert {ln.split("(dataset ")[1].split(",")[0] for ln in lines} == {ds.drs for ds in gen}, lines
    assert invariants.snapshot(dst) == before and real_files(dst) == files_before
    cp = _push(src, dst)
    assert cp.returncode == 0, cp.stderr
    invariants.check_converged(src, dst)


def test_eio_on_flush(fast_tmp, monkeypatch):
    src, dst, gen, new = _setup(str(fast_tmp))
    before = invariants.snapshot(dst)
    files_before = real_files(dst)
    calls = []

    def failing_syncfs(self):
        calls.append(self.path)
        raise OSError(errno.EIO, os.strerror(errno.EIO), self.path)

    monkeypatch.setattr(drsync.fsutil.Dir, "syncfs", failing_syncfs)
    r = drsync.push(src, dst, drsync.Options())
    assert calls, "the flush was never reached"
    assert r.exit_code == 6, [e.line() for e in r.errors]
    assert len(r.errors) == len(gen)
    assert all("flush failed" in e.line() and "Input/output error" in e.line() for e in r.errors), \
        [e.line() for e in r.errors]
    assert partial_files(dst) == {}, "partials kept after a failed flush"
    assert real_files(dst) == files_before, "a file reached files/ after a failed flush"
    assert invariants.snapshot(dst) == before, "something was published after a failed flush"
    invariants.check(src, dst, before)
    monkeypatch.undo()
    r = drsync.push(src, dst, drsync.Options())
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert r.transferred.files == sum(ds.new_bytes(v)[0] for ds, v in zip(gen, new))
    invariants.check_converged(src, dst)
    shutil.rmtree(dst)
