"""FAULTS B8: swap a destination directory with a symlink to ``<outside>`` in a tight loop while
real pushes run. Shared by tests/faults/test_race.py and the soak harness (tests/soak/soak.py).

The swapper exchanges ``<target>`` (a real directory drsync is about to write into) with a
symlink ``<parking>/link -> <outside>`` using ``renameat2(RENAME_EXCHANGE)``: at every instant the
destination path is either the real directory or the link, never absent. The parking spot lives
outside the dataset, so when the loop stops (always with the real directory back in place) the
dataset looks as if nothing had happened. Every push must exit 0, 4 or 6, never with a traceback,
and ``<outside>`` must stay byte-, mode- and mtime-identical.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
import threading
import time

import invariants
import treegen
from publish_helpers import env_with, make_canary

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
RENAME_EXCHANGE = 2
ALLOWED = (0, 4, 6)

SHAPE = treegen.Shape(datasets=1, variables=2, files=30, versions=1, changed=0.5, added=4, removed=0, size=8192)


def exchange(a: str, b: str) -> None:
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a)


class Swapper(threading.Thread):
    """Exchange ``target`` and ``parking/link`` (-> outside) until stopped; count the swaps."""

    def __init__(self, target: str, parking: str, outside: str):
        super().__init__(daemon=True)
        self.target = target
        self.link = os.path.join(parking, "link")
        os.makedirs(target, exist_ok=True)
        os.makedirs(parking, exist_ok=True)
        if os.path.lexists(self.link):
            os.unlink(self.link)
        os.symlink(outside, self.link)
        self.swaps = 0
        self._stop_evt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._stop_evt.is_set():
                exchange(self.target, self.link)
                self.swaps += 1
                if self.swaps % 64 == 0:
                    time.sleep(0)  # let the GIL go now and then; the swaps themselves are syscalls
        except BaseException as e:  # noqa: BLE001  (surfaced by stop())
            self.error = e

    def stop(self) -> None:
        """Stop with the real directory back at ``target`` and the link parked."""
        self._stop_evt.set()
        self.join(10)
        assert not self.is_alive(), "swapper did not stop"
        if self.error is not None:
            raise self.error
        if os.path.islink(self.target):
            exchange(self.target, self.link)
        assert os.path.isdir(self.target) and not os.path.islink(self.target)
        os.unlink(self.link)


def _push(src: str, dst: str, up_to: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drsync", "push", "--up-to", up_to, src, dst],
                          capture_output=True, text=True, env=env_with(), timeout=120, check=False)


def run_race(root: str, *, which: str, iters: int, seconds: float) -> dict:
    """Push versions one by one into a destination while ``which`` ("files" or "staging") is
    swapped with a link to the canary. Returns figures; raises AssertionError on a violation."""
    src, dst = os.path.join(root, "src"), os.path.join(root, "dst")
    outside, canary = make_canary(root)
    (ds,) = treegen.make_node(src, SHAPE, versions=1)
    cp = _push(src, dst, ds.versions[0])
    assert cp.returncode == 0, cp.stderr
    dds = os.path.join(dst, ds.drs)
    parking = os.path.join(root, "parking")
    codes: dict[int, int] = {}
    swaps = 0
    runs = 0
    deadline = time.monotonic() + seconds
    while runs < iters and time.monotonic() < deadline:
        v = ds.add_version()
        if which == "files":
            target = os.path.join(dds, "files", f"{ds.variable(0)}_{v}")
        else:
            target = os.path.join(dds, ".drsync", "staging")
        sw = Swapper(target, parking, outside)
        if which == "staging":
            os.chmod(target, 0o700)
        sw.start()
        try:
            cp = _push(src, dst, v)
        finally:
            sw.stop()
        runs += 1
        swaps += sw.swaps
        codes[cp.returncode] = codes.get(cp.returncode, 0) + 1
        assert cp.returncode in ALLOWED, f"push exited {cp.returncode}: {cp.stderr[-3000:]}"
        assert "Traceback" not in cp.stderr, cp.stderr
        if cp.returncode:
            lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
            assert lines and all(ln.startswith(("drsync: error: ", "drsync: warning: ")) for ln in lines), cp.stderr
        assert invariants.tree_state(outside) == canary, f"I4: escape into <outside> during push {runs}"
        # nothing may point outside or be a link where a directory belongs once the swapper stopped
        for dirpath, dirnames, filenames in os.walk(dst):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                if os.path.islink(p):
                    t = os.readlink(p)
                    assert not os.path.isabs(t) and outside not in os.path.realpath(p), f"I4: {p} -> {t}"
    assert runs > 0
    # a clean run afterwards converges: the races left nothing that blocks the next push
    cp = subprocess.run([sys.executable, "-m", "drsync", "push", src, dst], capture_output=True, text=True, check=False,
                        env=env_with(), timeout=120)
    assert cp.returncode == 0, cp.stderr
    invariants.check_converged(src, dst)
    assert invariants.tree_state(outside) == canary
    shutil.rmtree(parking, ignore_errors=True)
    return {"which": which, "runs": runs, "swaps": swaps, "exit_codes": codes, "escapes": 0}


