"""FAULTS D2 and §7.2: SIGKILL a real `drsync push` at a uniformly random time, again and again.

Workload: 2 datasets x 3 variables x 150 files of 16 KiB, 3 versions (~1,400 real files, 22 MB);
each round starts from an empty destination or from one holding the first version. A push is
killed at U(0, T_full), T_full being the median of unkilled runs of the same round kind. After
every kill the checker (I1-I6) runs; then the round keeps pushing (killing again in most of the
attempts: the multi-kill variant) until a push completes, and checks convergence (I7), that the
completing push sent exactly the files still missing from files/, and that no file complete in
files/ after any kill was rewritten.

DRSYNC_KILLS sets the number of kills delivered (default 30; e.g. DRSYNC_KILLS=1000 for a soak),
DRSYNC_KILL_SEED the random seed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import time
from collections import Counter

import invariants
import treegen
from publish_helpers import (
    assert_not_rewritten,
    check_unpublished,
    env_with,
    make_canary,
    partial_files,
    push,
    push_cmd,
    real_files,
    report,
    source_files,
    state_dirs,
)

SHAPE = treegen.Shape(datasets=2, variables=3, files=300, versions=3, changed=0.5, size=16384)
KILLS = int(os.environ.get("DRSYNC_KILLS", "30"))
SEED = int(os.environ.get("DRSYNC_KILL_SEED", "20100101"))
MAX_ATTEMPTS = 5  # per round: at most 4 further kills after the first, then one push runs unkilled
MULTI_KILL = 0.7  # chance that a follow-up push of a round is killed too


def _start(src: str, dst: str) -> tuple[subprocess.Popen, float]:
    proc = subprocess.Popen(push_cmd(src, dst), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_with())
    return proc, time.monotonic()


def _timed_run(src: str, dst: str) -> float:
    proc, t0 = _start(src, dst)
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 0, err
    return took


def _versions(dst: str) -> int:
    return sum(1 for rel in invariants.datasets(dst) for n in os.listdir(os.path.join(dst, rel))
               if invariants.VDIR.fullmatch(n))


def _phase(dst: str, before: dict, src_latest: dict) -> str:
    """Which publish phase a kill landed in, judged from what it left (for the histogram)."""
    latest = {rel: os.readlink(os.path.join(dst, rel, "latest")) for rel in invariants.datasets(dst)
              if os.path.islink(os.path.join(dst, rel, "latest"))}
    if latest == src_latest:
        return "latest/manifest/cleanup"
    if _versions(dst) > sum(len(d["versions"]) for d in before.values()):
        return "versions"
    if any(os.listdir(d) for d in state_dirs(dst, "staging")):
        return "staging"
    if len(real_files(dst)) > sum(len(d["files"]) for d in before.values()):
        return "files"
    if partial_files(dst):
        return "partial"
    return "nothing visible (startup, scan)"


def test_random_sigkill_loop(fast_tmp):
    tmp_path = fast_tmp
    rng = random.Random(SEED)
    src = str(tmp_path / "src")
    gen = treegen.make_node(src, SHAPE)
    outside, canary = make_canary(str(tmp_path))
    bases = {"empty": str(tmp_path / "base-empty"), "v1": str(tmp_path / "base-v1")}
    os.makedirs(bases["empty"])
    report(push(src, bases["v1"], "--up-to", gen[0].versions[0]))
    src_latest = {ds.drs: f"v{ds.versions[-1]}" for ds in gen}
    wanted = source_files(src)

    def fresh(kind: str) -> str:
        dst = str(tmp_path / "dst")
        if os.path.exists(dst):
            shutil.rmtree(dst)
        shutil.copytree(bases[kind], dst, symlinks=True)
        return dst

    t_full = {}
    for kind in bases:
        runs = []
        for _ in range(3):
            dst = fresh(kind)
            runs.append(_timed_run(src, dst))
        t_full[kind] = statistics.median(runs)
        invariants.check_converged(src, dst)

    kills = 0
    rounds = 0
    phases: Counter = Counter()
    while kills < KILLS:
        kind = ("empty", "v1")[rounds % 2]
        rounds += 1
        dst = fresh(kind)
        before = invariants.snapshot(dst)
        complete: dict[str, tuple[int, int]] = {}
        for attempt in range(MAX_ATTEMPTS + 1):
            kill = attempt == 0 or (attempt < MAX_ATTEMPTS and rng.random() < MULTI_KILL)
            missing = wanted - set(real_files(dst))
            proc, t0 = _start(src, dst)
            if kill:
                time.sleep(max(0.0, t0 + rng.uniform(0, t_full[kind]) - time.monotonic()))
                proc.kill()  # SIGKILL; a no-op if the push already finished
            out, err = proc.communicate(timeout=120)
            if proc.returncode == -9:
                kills += 1
                invariants.check(src, dst, before)
                check_unpublished(src, dst)
                phases[_phase(dst, before, src_latest)] += 1
                for path, ino in real_files(dst).items():
                    complete.setdefault(path, ino)
                assert_not_rewritten(complete, dst)
                before = invariants.snapshot(dst)
                continue
            assert proc.returncode == 0, f"push exited {proc.returncode}: {err[-3000:]}"
            sent = json.loads(out)["transferred"]["files"]
            assert sent == len(missing), f"completing push sent {sent} files, {len(missing)} were missing"
            break
        else:
            raise AssertionError("no push completed")
        invariants.check(src, dst, before)
        invariants.check_converged(src, dst)
        assert_not_rewritten(complete, dst)
        assert set(real_files(dst)) == wanted
        assert partial_files(dst) == {}, "leftover bytes in .drsync/partial after convergence"
    assert invariants.tree_state(outside) == canary
    print(f"\nkill loop: {kills} kills in {rounds} rounds, T_full {t_full}, phases {dict(phases)}")
    assert sum(n for p, n in phases.items() if not p.startswith("nothing")) > 0, \
        f"no kill landed while the push was writing: {dict(phases)}"
