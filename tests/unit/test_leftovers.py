"""The executable leaves the last datasets' manifests to its exit instead of freeing them one object at
a time (drsync/leftovers.py); a library caller's manifests are freed as soon as a run is done with them."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import pytest

import drsync
from drsync import leftovers


@pytest.fixture
def handed(monkeypatch):
    """(kind, weak reference, dataset) of every manifest handed over, in order."""
    seen = []
    real = leftovers.hand_over

    def spy(kind, obj):
        seen.append((kind, weakref.ref(obj), obj.path))
        real(kind, obj)

    monkeypatch.setattr(leftovers, "hand_over", spy)
    monkeypatch.setattr(leftovers, "_kept", {})
    return seen


def _alive(seen, kind):
    return [drs for k, ref, drs in seen if k == kind and ref() is not None]


@pytest.mark.parametrize("keeping", [True, False])
def test_only_the_last_manifest_of_each_kind_outlives_a_run(nodes, handed, monkeypatch, keeping):
    src, dst, generated = nodes  # two datasets
    monkeypatch.setattr(leftovers, "keeping", keeping)
    r = drsync.push(src, dst)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    gc.collect()  # (a cycle would only be freed by the collector; what is kept is referenced)
    for kind in ("source", "destination"):
        order = [drs for k, _, drs in handed if k == kind]
        assert sorted(order) == sorted(ds.drs for ds in generated)  # each dataset's, once
        # the executable keeps the last one, and frees the one before when the next comes;
        # a library caller keeps none
        assert _alive(handed, kind) == (order[-1:] if keeping else [])
    if keeping:
        assert {k: m.path for k, m in leftovers._kept.items()} == {"source": order[-1], "destination": order[-1]}


def test_the_executable_turns_keeping_on_and_a_library_caller_does_not():
    code = ("import drsync.cli as c, drsync.leftovers as l\n"
            "c.main(['diff', '-q', '/nonexistent-a', '/nonexistent-b'])\n"  # a library caller's main()
            "print(l.keeping, flush=True)\n"
            "c.main = lambda freeze: print(l.keeping, freeze, flush=True) or 0\n"
            "c.run()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-3:] == ["False", "True", "True"]
