"""FAULTS D1: a kill at every named publish step, at its first and its last occurrence (and a
middle one for the steps that repeat per file or per version).

The destination already holds two versions; the source has two more. After each kill the
independent checker (I1-I6) must pass; the follow-up run must exit 0, converge (I7), send exactly
the files still missing from files/ and leave every file already complete there untouched (same
inode: never re-sent, never rewritten).
"""

from __future__ import annotations

import math
import os

import invariants
import pytest
import treegen
from publish_helpers import (
    KILLED,
    STEPS,
    assert_not_rewritten,
    check_unpublished,
    clone_pair,
    diff,
    make_canary,
    make_pair,
    partial_dirs,
    partial_files,
    push,
    real_files,
    report,
    source_files,
)

from drsync.receive_files import FLUSH_FILES
from drsync.staging import LINK_TASK

# Three datasets so that every per-dataset step (fsync, latest, manifest) repeats at least 3 times.
SHAPE = treegen.Shape(datasets=3, variables=2, files=6, versions=4, size=4096)
PUBLISHED = 2
PER_FILE_OR_VERSION = ("partial_write", "after_digest", "after_rename", "staging", "staging_done", "after_version")


def step_counts(src: str, dst: str) -> dict[str, int]:
    """How many times a clean push of the current plan reaches each step (see drsync/publish.py)."""
    plan = diff(src, dst)
    c = dict.fromkeys(STEPS, 0)
    for d in plan["datasets"]:
        files, versions = d["files_to_send"], len(d["versions_to_add"])
        work = bool(files or versions or d["latest"]["source"] != d["latest"]["destination"])
        c["cleanup"] += 1 + work  # recover() before the plan, and after the manifest
        for s in ("partial_write", "after_digest", "after_rename"):
            c[s] += files
        for s in ("before_fsync", "after_fsync"):
            c[s] += math.ceil(files / FLUSH_FILES)
        c["staging"] += versions * SHAPE.variables  # one per link task: a variable directory here (< LINK_TASK links)
        for s in ("staging_done", "after_version"):
            c[s] += versions
        for s in ("latest_tmp", "after_latest", "manifest"):
            c[s] += work
    return c


@pytest.fixture(scope="module")
def template(fast_tmp_module):
    """Destination with 2 versions, source with 4; cloned for every case."""
    src, dst, _ = make_pair(str(fast_tmp_module), SHAPE, published=PUBLISHED)
    counts = step_counts(src, dst)
    assert all(n >= 3 for n in counts.values()), counts  # every step repeats: first != middle != last
    return (src, dst), counts


CASES = [(step, which) for step in STEPS for which in ("first", "last")] + \
        [(step, "middle") for step in PER_FILE_OR_VERSION]


@pytest.mark.parametrize("step,which", CASES, ids=[f"{s}-{w}" for s, w in CASES])
def test_kill_at_step_then_resume(fast_tmp, template, step, which):
    pair, counts = template
    src, dst = clone_pair(pair, str(fast_tmp))
    outside, canary = make_canary(str(fast_tmp))
    n = {"first": 1, "middle": (counts[step] + 1) // 2, "last": counts[step]}[which]
    before = invariants.snapshot(dst)
    assert before and all(len(d["versions"]) == PUBLISHED for d in before.values())

    crashed = push(src, dst, fault=f"{step}:{n}")
    assert crashed.returncode == KILLED, f"{step}:{n} not reached (exit {crashed.returncode}): {crashed.stderr}"
    invariants.check(src, dst, before)
    check_unpublished(src, dst)

    after_crash = real_files(dst)
    missing = source_files(src) - set(after_crash)
    rerun = report(push(src, dst))
    assert rerun["transferred"]["files"] == len(missing), \
        f"rerun sent {rerun['transferred']['files']} files, {len(missing)} were missing from files/"
    invariants.check(src, dst, before)
    invariants.check_converged(src, dst)
    assert_not_rewritten(after_crash, dst)
    assert source_files(src) == set(real_files(dst))
    assert partial_files(dst) == {}, "leftover bytes in .drsync/partial after convergence"
    assert partial_dirs(dst) == [], "leftover directories in .drsync/partial after convergence"
    assert invariants.tree_state(outside) == canary


def test_step_counts_are_exact(fast_tmp, template):
    """The occurrence after the last one is never reached: the run completes (exit 0), which shows
    the 'last' cases above really hit the last occurrence of every step."""
    pair, counts = template
    for step in STEPS:
        src, dst = clone_pair(pair, str(fast_tmp / step))
        done = push(src, dst, fault=f"{step}:{counts[step] + 1}")
        assert done.returncode == 0, f"{step}:{counts[step] + 1} was reached; expected {counts[step]}: {done.stderr}"
        assert report(done)["transferred"]["files"] == counts["after_rename"]


def test_kill_between_two_link_tasks_of_one_variable_directory(fast_tmp):
    """A variable directory larger than LINK_TASK is built by several tasks (staging.link_tasks): a
    kill after the first leaves it half-built in staging. Nothing is published; the next run
    rebuilds it whole and converges."""
    shape = treegen.Shape(datasets=1, variables=2, files=LINK_TASK + 40, versions=2, changed=0.1, added=0,
                          removed=0, size=64)
    src, dst, [ds] = make_pair(str(fast_tmp), shape, published=1)
    before = invariants.snapshot(dst)
    crashed = push(src, dst, fault="staging:1")
    assert crashed.returncode == KILLED, crashed.stderr
    staged = os.path.join(dst, ds.drs, ".drsync", "staging", f"v{treegen.version_name(1)}")
    sizes = sorted(len(os.listdir(os.path.join(staged, name))) for name in os.listdir(staged))
    assert LINK_TASK in sizes and max(sizes) < LINK_TASK + 40  # a directory stopped between its tasks
    invariants.check(src, dst, before)
    check_unpublished(src, dst)
    report(push(src, dst))
    invariants.check(src, dst, before)
    invariants.check_converged(src, dst)
    assert os.listdir(os.path.join(dst, ds.drs, ".drsync", "staging")) == []
