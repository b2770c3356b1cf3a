"""FAULTS B8: a destination directory flipped between a real directory and a symlink to
``<outside>`` (renameat2 RENAME_EXCHANGE, tight loop in a thread) while real pushes run.

Bounded for the suite (DRSYNC_RACE_ITERS pushes per case, default 30, or 8 s per case);
`python tests/soak/soak.py` runs it longer.
"""

from __future__ import annotations

import os

import invariants
import pytest
from publish_helpers import make_canary
from race_helpers import Swapper, run_race

ITERS = int(os.environ.get("DRSYNC_RACE_ITERS", "30"))
SECONDS = float(os.environ.get("DRSYNC_RACE_SECONDS", "8"))


@pytest.mark.parametrize("which", ["files", "staging"])
def test_swap_race_never_escapes(fast_tmp, which):
    fig = run_race(str(fast_tmp), which=which, iters=ITERS, seconds=SECONDS)
    print(f"\nrace {which}: {fig}")
    assert fig["swaps"] > 100 * fig["runs"] / 10, f"the swapper barely ran: {fig}"


def test_swapper_catches_a_naive_writer(fast_tmp):
    """The harness can fail: a writer that opens ``<dir>/<name>`` by path while the swapper runs
    does land bytes in ``<outside>`` (what drsync's dir-fd, O_NOFOLLOW walk must never do)."""
    outside, canary = make_canary(str(fast_tmp))
    target = str(fast_tmp / "dst" / "files" / "var_1_20100101")
    sw = Swapper(target, str(fast_tmp / "parking"), outside)
    sw.start()
    try:
        for i in range(2000):
            try:
                with open(os.path.join(target, f"f{i}.nc"), "wb") as fh:
                    fh.write(b"x")
            except OSError:
                pass
            if invariants.tree_state(outside) != canary:
                break
    finally:
        sw.stop()
    assert invariants.tree_state(outside) != canary, "the swap race never exposed a path-based write"
