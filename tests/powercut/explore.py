"""Power-loss exploration (FAULTS D6): trace a push, generate its crash states, check each one.

``trace_push`` runs a real ``drsync push`` under strace and returns the destination's operations;
``explore`` walks every crash point, replays the crash states of tests/powercut/crashstates.py,
and runs the independent checker of tests/invariants.py (I1-I6, unchanged) on every distinct
state; for a sample it also runs a real follow-up push and checks convergence (I7).
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
REPO = os.path.dirname(TESTS)
for sub in (HERE, TESTS, os.path.join(TESTS, "publish")):
    if sub not in sys.path:
        sys.path.insert(0, sub)

import crashstates as cs
import invariants
import tracelog
import treegen
from publish_helpers import check_unpublished, env_with

PHASES = ("setup / lock", "receive into partial", "flush (syncfs of partials)", "rename into files/",
          "build version in staging", "version renamed into place", "latest", "manifest", "cleanup")
INVARIANTS = ("I1", "I2", "I3", "I4", "I5", "I6", "I7")


def harness_env() -> dict:
    """The environment of every drsync run: this checkout's code, no byte-code written."""
    env = env_with()
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# --- phases --------------------------------------------------------------------------------------
def classify(ops: list[tracelog.Op]) -> None:
    """Set each op's publish phase from the paths it touches (barriers take the phase of the
    changes they flush)."""
    prev = before_latest = PHASES[0]
    manifest_seen = False
    for o in ops:
        p, p2 = o.path or "", o.path2 or ""
        if o.kind == "syncfs":
            ph = PHASES[2] if prev in (PHASES[0], PHASES[1]) else prev
            if prev == PHASES[6] and before_latest == PHASES[4]:
                ph = PHASES[4]  # the version's flush, which also covers the new latest link made with it
        elif o.kind == "fsync":
            ph = PHASES[7] if "/.drsync/manifest" in p else prev
        elif p.endswith("/.drsync/lock") or p == ".drsync/lock":
            ph = PHASES[8] if manifest_seen else PHASES[0]
        elif "/.drsync/manifest/" in p:
            ph = PHASES[7]
            manifest_seen = True
        elif o.kind == "rename" and "/.drsync/partial/" in p and "/files/" in p2:
            ph = PHASES[3]
        elif o.kind == "rename" and re.search(r"/\.drsync/staging/v\d+$", p):
            ph = PHASES[5]
        elif p.endswith("/.latest.drsync-tmp") or p2.endswith("/latest") or p2 == "latest":
            ph = PHASES[6] if o.kind in ("symlink", "rename") else PHASES[8]
        elif o.kind in ("unlink", "rmdir") and "/.drsync/staging/" in p:
            ph = PHASES[8]
        elif "/.drsync/staging/v" in p and o.kind in ("mkdir", "symlink"):
            ph = PHASES[4]
        elif "/.drsync/partial/" in p:
            ph = PHASES[1]
        elif o.kind == "mkdir" and re.search(r"/files(/[^/]+)?$", p) and prev != PHASES[0]:
            ph = PHASES[3]
        elif o.kind == "mkdir":
            ph = PHASES[0]
        else:
            ph = prev
        if ph == PHASES[6] and prev != PHASES[6]:
            before_latest = prev
        o.phase = ph
        prev = ph


# --- workloads -----------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    src: str
    dst: str
    before_tree: tracelog.Tree  # the destination before the traced run
    before_snap: dict  # invariants.snapshot of it
    ops: list[tracelog.Op]
    outside_writes: int
    traced_seconds: float
    new_files: int
    new_links: int
    unsafe: object = None  # Figures of the same trace explored without its barriers (the report's)


def make_workload(work: str, name: str, shape: treegen.Shape, published: int, *, fault: str | None = None) -> Workload:
    """Source with ``published`` versions pushed (untraced) to the destination, then one more
    version added to the source and its push traced. ``published=0``: an initial copy of every
    version into an empty destination. ``fault``: first a push of the new version killed by the
    fault hook at that step (DRSYNC_FAULT), so the traced push recovers and resumes."""
    env = harness_env()
    root = os.path.join(work, name)
    src, dst = os.path.join(root, "src"), os.path.join(root, "dst")
    os.makedirs(root)
    (gen,) = treegen.make_node(src, shape, versions=max(published, 1))
    if published:
        _push(src, dst, env, 0)
        gen.add_version()
    else:
        os.makedirs(dst)
        for _ in range(shape.versions - 1):
            gen.add_version()
    if fault:
        _push(src, dst, dict(env, DRSYNC_FAULT=fault), 137)
    base = tracelog.Tree.scan(dst)
    snap = invariants.snapshot(dst)
    log = os.path.join(root, "strace.log")
    t0 = time.monotonic()
    tracelog.record(tracelog.push_argv(src, dst), log, env=env)
    took = time.monotonic() - t0
    ops, rec = tracelog.parse(log, base.copy(), dst)
    os.unlink(log)
    classify(ops)
    # what the run changed outside the destination: only the source's own state (its manifest cache)
    stray = sorted(p for p in rec.outside_paths
                   if not (p.startswith(src + "/") and "/.drsync/" in p + "/") and not p.startswith("/dev/"))
    if stray:
        raise AssertionError(f"the push wrote outside the destination and the source's .drsync: {stray[:5]}")
    return Workload(name, src, dst, base, snap, ops, rec.outside_writes, took,
                    new_files=_files_moved(ops),
                    new_links=sum(1 for o in ops if o.kind == "symlink" and o.phase == PHASES[4]))


def _files_moved(ops) -> int:
    """Files moved into files/: one per file renamed there, and the partials created in each
    partial directory renamed there whole."""
    into = [o for o in ops if o.kind == "rename" and o.phase == PHASES[3]]
    dirs = {o.ino for o in into}
    made_in = [o.parent for o in ops if o.kind == "creat" and o.parent in dirs]
    filled = set(made_in)
    return len(made_in) + sum(1 for o in into if o.ino not in filled)


def _push(src: str, dst: str, env: dict, expect: int) -> None:
    cp = subprocess.run(tracelog.push_argv(src, dst), env=env, capture_output=True, text=True, check=False)
    if cp.returncode != expect:
        raise RuntimeError(f"untraced push exited {cp.returncode}, not {expect}: {cp.stderr[-2000:]}")


def without_barriers(ops: list[tracelog.Op]) -> list[tracelog.Op]:
    """The same trace with every fsync/fdatasync/syncfs removed (the harness must then fail)."""
    out = []
    for o in ops:
        if not o.barrier:
            out.append(dataclasses.replace(o, index=len(out)))
    return out


# --- exploration ---------------------------------------------------------------------------------
@dataclass
class Figures:
    ops: Counter = field(default_factory=Counter)
    barriers: Counter = field(default_factory=Counter)
    points: Counter = field(default_factory=Counter)
    generated: Counter = field(default_factory=Counter)
    distinct: Counter = field(default_factory=Counter)  # states first seen at a crash point of the phase
    in_phase: Counter = field(default_factory=Counter)  # distinct states among the phase's crash points
    by_variant: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    failure_examples: list[str] = field(default_factory=list)
    i1_examples: list[str] = field(default_factory=list)  # the first few I1 failures (a version on lost data)
    failed_states: int = 0
    converge_runs: int = 0
    converge_failures: int = 0
    converge_examples: list[str] = field(default_factory=list)
    exposures: list[str] = field(default_factory=list)
    strict_states: int = 0  # states of the stricter inode lens (outside the model), and their failures
    strict_failures: Counter = field(default_factory=Counter)
    strict_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0


def short(text: str) -> str:
    """Messages without the generated dataset's long DRS path (``<ds>/`` instead)."""
    return re.sub(r"CMIP6/CMIP/INST(\d+)/model-\1/historical/r1i1p1f1/Amon/ds_\1/gn(?=/|\b)", "<ds>", text)


def describe(o: tracelog.Op) -> str:
    what = f"#{o.index} {o.syscall or o.kind}"
    if o.kind == "rename":
        return short(f"{what} {o.path} -> {o.path2}")
    if o.kind == "symlink":
        return short(f"{what} {o.path} -> {o.target!r}")
    if o.kind == "write":
        return short(f"{what} {o.path} [{o.offset}, +{len(o.data)})")
    return short(f"{what} {o.path or '(all)'}")


def _invariant(e: Exception) -> str:
    # the checker raises OSError on what it cannot read (a link to a missing file): "other"
    m = re.match(r"(I[1-7])", str(e)) if isinstance(e, AssertionError) else None
    return m.group(1) if m else "other"


def _check(wl: Workload, state: cs.State, here: str, blobs: str, hasher: cs.Hasher) -> Exception | None:
    """The checker (I1-I6, and the unpublished-dataset check) on one state; its failure or None."""
    cs.materialize(state, here, blobs=blobs, hasher=hasher)
    try:
        invariants.check(wl.src, here, wl.before_snap)
        check_unpublished(wl.src, here)
    except (AssertionError, OSError) as e:
        return e
    finally:
        cs.remove(here)
    return None


def converge(src: str, state: cs.State, where: str) -> None:
    """A real follow-up push into the crash state, then I1-I6 against the state's own published
    part and I7 (raises AssertionError)."""
    cs.materialize(state, where)
    try:
        before = invariants.snapshot(where)
        cp = subprocess.run(tracelog.push_argv(src, where), env=harness_env(), capture_output=True, text=True,
                            timeout=300, check=False)
        assert cp.returncode == 0, f"I7: follow-up push exited {cp.returncode}: {cp.stderr[-500:]}"
        invariants.check(src, where, before)
        invariants.check_converged(src, where)
    finally:
        cs.remove(where)


def explore(wl: Workload, *, seed: int = 1, randoms: int = 3, drop_cap: int = 24, converge_budget: int = 0,
            ops: list[tracelog.Op] | None = None, scratch: str | None = None, max_failures: int | None = None,
            fig: Figures | None = None, strict: bool = False) -> Figures:
    """Check every distinct crash state of ``wl`` (or of ``ops``, e.g. without barriers)."""
    t0 = time.monotonic()
    ops = wl.ops if ops is None else ops
    fig = fig or Figures()
    rng = random.Random(seed)
    dur = cs.durable_at(ops)
    for o in ops:
        fig.ops[o.kind] += 1
        if o.barrier:
            fig.barriers["syncfs" if o.all_inodes else f"{o.syscall} of a {o.node_kind}"] += 1
    exposures = cs.inode_exposures(ops, dur)
    for entry, created, start, end in exposures:
        fig.exposures.append(f"{wl.name}: {describe(entry)} is durable from #{start} "
                             f"but the inode made by {describe(created)} is "
                             f"{'never flushed' if end >= cs.NEVER else f'flushed only at #{end}'}")
    base = cs.base_state(wl.before_tree)
    hasher = cs.Hasher()
    seen: set[str] = set()
    phase_seen: dict[str, set[str]] = {}
    converged: set[tuple[str, str]] = set()
    # scratch on tmpfs: many small trees, made and removed at once
    if scratch is None and os.access("/dev/shm", os.W_OK):
        scratch = "/dev/shm"
    tmp = tempfile.mkdtemp(prefix="drsync-powercut-", dir=scratch)
    blobs = os.path.join(tmp, "blobs")
    os.makedirs(blobs)
    here = os.path.join(tmp, "state")
    invariants.snapshot = _memo_source(invariants.snapshot, wl.src)
    try:
        for k, op in enumerate(ops):
            phase = op.phase
            fig.points[phase] += 1
            for cand in cs.variants(ops, dur, k, rng, drop_cap=drop_cap, randoms=randoms):
                state = cs.replay(base, ops, cand.chosen, cand.zero)
                fig.generated[phase] += 1
                h = hasher(state)
                mine = phase_seen.setdefault(phase, set())
                if h not in mine:
                    mine.add(h)
                    fig.in_phase[phase] += 1
                if h in seen:
                    continue
                seen.add(h)
                fig.distinct[phase] += 1
                vclass = cand.variant.split(":")[0]
                fig.by_variant[vclass] += 1
                e = _check(wl, state, here, blobs, hasher)
                if e is not None:
                    fig.failed_states += 1
                    fig.failures[_invariant(e)] += 1
                    extra = ""
                    if vclass == "drop-one":
                        extra = f", dropped {describe(ops[int(cand.variant.split(':')[1])])}"
                    msg = (f"{wl.name}: crash after {describe(op)} [{phase}], state {cand.variant}{extra}: "
                           f"{type(e).__name__}: {short(str(e))[:300]}")
                    if len(fig.failure_examples) < 12:
                        fig.failure_examples.append(msg)
                    if _invariant(e) == "I1" and len(fig.i1_examples) < 4:
                        fig.i1_examples.append(msg)
                if max_failures is not None and fig.failed_states >= max_failures:
                    return fig
                if fig.converge_runs < converge_budget and (phase, vclass) not in converged:
                    converged.add((phase, vclass))
                    fig.converge_runs += 1
                    try:
                        converge(wl.src, state, os.path.join(tmp, "converge"))
                    except AssertionError as e:
                        fig.converge_failures += 1
                        fig.failures[_invariant(e)] += 1
                        fig.converge_examples.append(f"{wl.name}: crash after {describe(op)}, state {cand.variant}: "
                                                     f"{short(str(e))[:300]}")
            if strict:
                for cand in cs.strict_variants(ops, k, exposures):
                    state = cs.replay(base, ops, cand.chosen, cand.zero, cand.clear)
                    fig.strict_states += 1
                    e = _check(wl, state, here, blobs, hasher)
                    if e is not None:
                        fig.strict_failures[_invariant(e)] += 1
                        if len(fig.strict_examples) < 4:
                            fig.strict_examples.append(f"{wl.name}: crash after {describe(op)} [{phase}], "
                                                       f"{describe(ops[int(cand.variant.split(':')[1])])} durable, "
                                                       f"its inode lost: {short(str(e))[:200]}")
    finally:
        invariants.snapshot = invariants.snapshot.__wrapped__
        cs.remove(tmp)
        fig.seconds += time.monotonic() - t0
    return fig


def _memo_source(snapshot, src: str):
    """invariants.snapshot, remembering the result for the source node only (immutable while the
    harness runs; the checker reads it once per state otherwise). The checker's code is unchanged."""
    cache: dict = {}

    def wrapped(node: str) -> dict:
        if node != src:
            return snapshot(node)
        if "v" not in cache:
            cache["v"] = snapshot(node)
        return cache["v"]

    wrapped.__wrapped__ = snapshot
    return wrapped
