"""The Dask fan-out (one task per job and dataset) makes the same trees and log totals as a serial run."""

import mirror_util as mu
import pytest
import treegen

from drsync.mirror import load_jobs, runlog
from drsync.mirror.dask import run_jobs_dask

SHAPE = treegen.Shape(datasets=4)


def _jobs(tmp_path, tag: str) -> str:
    return mu.write(tmp_path / f"jobs-{tag}.toml", f"""
[defaults]
log = "{tmp_path}/{tag}.jsonl"
metrics_dir = "{tmp_path}/metrics-{tag}"

[jobs.most]
source = "{tmp_path}/a"
destination = "{tmp_path}/{tag}-b"
exclude = ["*/INST3/*"]

[jobs.two]
source = "{tmp_path}/a"
destination = "{tmp_path}/{tag}-c"
datasets = ["CMIP6/CMIP/INST1/*", "CMIP6/CMIP/INST2/*"]
""")


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def test_dask_run_equals_serial_run(tmp_path, cluster):
    treegen.make_node(str(tmp_path / "a"), SHAPE)
    assert mu.run_cli(_jobs(tmp_path, "serial")).returncode == 0
    r = mu.run_cli(_jobs(tmp_path, "dask"), "--scheduler", cluster.scheduler_address, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    for d in ("b", "c"):
        serial, fanned = tmp_path / f"serial-{d}", tmp_path / f"dask-{d}"
        assert mu.datasets_under(serial) == mu.datasets_under(fanned) != set()
        for drs in mu.datasets_under(serial):
            assert mu.same_tree(serial / drs, fanned / drs)
            assert mu.same_tree(tmp_path / "a" / drs, fanned / drs)
    assert len(mu.datasets_under(tmp_path / "dask-b")) == 3 and len(mu.datasets_under(tmp_path / "dask-c")) == 2
    keys = ("job", "status", "exit_code", "versions", "files", "bytes", "error")
    serial = [{k: x[k] for k in keys} for x in runlog.read_records(str(tmp_path / "serial.jsonl"))]
    fanned = [{k: x[k] for k in keys} for x in runlog.read_records(str(tmp_path / "dask.jsonl"))]
    assert serial == fanned and fanned[0]["versions"] == 12 and fanned[1]["files"] > 0
    m = mu.metric_values(tmp_path / "metrics-dask" / "drsync-mirror-two.prom")
    assert m[("drsync_bytes_total", "two")] == fanned[1]["bytes"]
    assert m[("drsync_last_success_timestamp_seconds", "two")] > 0


def test_dask_fan_out_with_a_client_reports_conflicts_per_dataset(tmp_path, cluster):
    from distributed import Client

    treegen.make_node(str(tmp_path / "a"), SHAPE)
    treegen.make_node(str(tmp_path / "x-c"), treegen.Shape(datasets=2, seed=5))  # INST0, INST1 conflict
    jobs = load_jobs(_jobs(tmp_path, "x")).jobs
    with Client(cluster) as client:
        runs = run_jobs_dask(jobs, client)
    most, two = runs
    assert most.exit_code == 0 and most.versions == 12
    # INST1 conflicts (nothing of it written), INST2 goes through: the other task is unaffected.
    assert two.exit_code == 3 and two.versions == 4 and "differ" in two.error
    drs2 = treegen.dataset_path(2)
    assert mu.same_tree(tmp_path / "a" / drs2, tmp_path / "x-c" / drs2)
    recs = runlog.read_records(str(tmp_path / "x.jsonl"))
    assert [(r["job"], r["status"]) for r in recs] == [("most", "ok"), ("two", "error")]
