"""The public records are named tuples and plain classes, not dataclasses (importing `dataclasses`
costs every process ~10 ms); `Options` still honours docs/api.md's `dataclasses.replace` promise."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys

import pytest

import drsync
from drsync import manifest as mf
from drsync.plan import DatasetPlan, Plan


def test_options_work_with_the_dataclasses_functions():
    o = drsync.Options(timeout=5.0)
    assert dataclasses.is_dataclass(o) and dataclasses.is_dataclass(drsync.Options)
    changed = dataclasses.replace(o, delete=True, datasets=("a/*",))
    assert type(changed) is drsync.Options
    assert (changed.delete, changed.datasets, changed.timeout) == (True, ("a/*",), 5.0)
    assert o.delete is False  # the original is untouched
    assert [f.name for f in dataclasses.fields(o)] == list(drsync.Options._fields)
    assert dataclasses.asdict(o)["timeout"] == 5.0 and dataclasses.asdict(o)["ssh_backend"] == "asyncssh"
    with pytest.raises(TypeError):
        dataclasses.replace(o, no_such_option=1)
    assert o._replace(link=True) == dataclasses.replace(o, link=True)


def test_options_are_frozen_comparable_hashable_and_pickle():
    o = drsync.Options(up_to="20100101", retries=0)
    with pytest.raises(AttributeError):
        o.delete = True
    assert o == drsync.Options(up_to="20100101", retries=0) != drsync.Options()
    assert hash(o) == hash(drsync.Options(up_to="20100101", retries=0))
    assert pickle.loads(pickle.dumps(o)) == o  # Dask ships options to its workers
    assert "retries=0" in repr(o)


def test_plan_records_keep_their_defaults_and_properties():
    p = DatasetPlan(path="d")
    assert p.in_sync and p.bytes_to_send == 0 and p.files_to_send == () and p.error is None
    e = mf.Entry("v", "f.nc", "v_1", 7, 0, "0" * 32)
    q = DatasetPlan(path="d", versions_to_add=("1",), files_to_send=(e,))
    assert not q.in_sync and q.bytes_to_send == 7
    assert Plan("a", "b").datasets == () and Plan("a", "b").in_sync and not Plan("a", "b", (q,)).in_sync


def test_every_index_gets_dicts_of_its_own():
    a, b = mf.Index(), mf.Index()
    a.versions["1"] = mf.VersionInfo("0" * 32, 0, 0)
    assert b.versions == {} and b.loose == {} and a.latest is None


def test_a_local_run_and_the_agent_do_not_import_dataclasses(tmp_path):
    code = ("import sys, drsync; from drsync.agent import server; "
            "r = drsync.push(sys.argv[1], sys.argv[2]); print(r.exit_code, 'dataclasses' in sys.modules)")
    (tmp_path / "src").mkdir()
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "src"), str(tmp_path / "dst")],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["0", "False"], r.stderr
