"""Run two jobs once through the CLI: what they copy, the run log, the metrics, --json, --dry-run."""

import json
import os
import shutil
import time

import mirror_util as mu
import treegen

from drsync.mirror import runlog

SHAPE = treegen.Shape(datasets=3)


def _jobs(tmp_path) -> str:
    return mu.write(tmp_path / "jobs.toml", f"""
[defaults]
log = "{tmp_path}/log/runs.jsonl"
metrics_dir = "{tmp_path}/metrics"

[jobs.everything]
source = "{tmp_path}/a"
destination = "{tmp_path}/b"
exclude = ["*/INST2/*"]

[jobs.one-institute]
source = "{tmp_path}/a"
destination = "{tmp_path}/c"
datasets = ["CMIP6/CMIP/INST1/*"]
options = {{ bwlimit = "500M", fsync = false }}
""")


def test_two_jobs_copy_what_they_name_log_and_export_metrics(tmp_path):
    gen = treegen.make_node(str(tmp_path / "a"), SHAPE)
    jobs = _jobs(tmp_path)
    before = time.time()
    r = mu.run_cli(jobs, "--json")
    assert r.returncode == 0, r.stderr
    # Exactly what each job names, each dataset identical to the source.
    assert mu.datasets_under(tmp_path / "b") == {treegen.dataset_path(0), treegen.dataset_path(1)}
    assert mu.datasets_under(tmp_path / "c") == {treegen.dataset_path(1)}
    for dst, indexes in (("b", (0, 1)), ("c", (1,))):
        for i in indexes:
            drs = treegen.dataset_path(i)
            assert mu.same_tree(tmp_path / "a" / drs, tmp_path / dst / drs)

    # stdout: one JSON object per job, the same records as the log.
    printed = [json.loads(line) for line in r.stdout.splitlines()]
    recs = runlog.read_records(str(tmp_path / "log" / "runs.jsonl"))
    assert printed == recs
    assert [x["job"] for x in recs] == ["everything", "one-institute"]
    real = [sum(len(f) for _, _, f in os.walk(tmp_path / "a" / g.drs / "files")) for g in gen]  # real files
    for rec, n, files in zip(recs, (2, 1), (real[0] + real[1], real[1])):
        assert set(rec) >= {"job", "start", "end", "status", "exit_code", "versions", "files", "bytes", "error"}
        assert rec["status"] == "ok" and rec["exit_code"] == 0 and rec["error"] is None
        assert rec["versions"] == 4 * n
        assert rec["files"] == files > 0
        assert rec["bytes"] == rec["files"] * SHAPE.size
        assert rec["start"].endswith("Z") and rec["start"] <= rec["end"]
    assert recs[0]["files"] == 2 * recs[1]["files"]

    m = mu.metric_values(tmp_path / "metrics" / "drsync-mirror-everything.prom")
    m.update(mu.metric_values(tmp_path / "metrics" / "drsync-mirror-one-institute.prom"))
    for rec in recs:
        job = rec["job"]
        assert before <= m[("drsync_last_success_timestamp_seconds", job)] <= time.time()
        assert m[("drsync_bytes_total", job)] == rec["bytes"]
        assert m[("drsync_files_total", job)] == rec["files"]
        assert m[("drsync_versions_total", job)] == rec["versions"]
        assert m[("drsync_errors_total", job)] == 0
        assert m[("drsync_duration_seconds", job)] > 0
    first = m

    # A new version at the source: the second run sends it, counters grow, one more log line each.
    for g in gen:
        g.add_version()
    r = mu.run_cli(jobs, "-q")
    assert r.returncode == 0 and r.stdout == ""
    recs = runlog.read_records(str(tmp_path / "log" / "runs.jsonl"))
    assert len(recs) == 4 and [x["versions"] for x in recs[2:]] == [2, 1]
    m = mu.metric_values(tmp_path / "metrics" / "drsync-mirror-everything.prom")
    m.update(mu.metric_values(tmp_path / "metrics" / "drsync-mirror-one-institute.prom"))
    for i, job in enumerate(("everything", "one-institute")):
        assert m[("drsync_bytes_total", job)] == first[("drsync_bytes_total", job)] + recs[2 + i]["bytes"]
        assert m[("drsync_bytes_total", job)] > first[("drsync_bytes_total", job)]
        assert m[("drsync_versions_total", job)] == first[("drsync_versions_total", job)] + recs[2 + i]["versions"]
        assert m[("drsync_runs_total", job)] == 2
        assert m[("drsync_last_success_timestamp_seconds", job)] > first[("drsync_last_success_timestamp_seconds",
                                                                          job)]
    for i in (0, 1):
        assert mu.same_tree(tmp_path / "a" / treegen.dataset_path(i), tmp_path / "b" / treegen.dataset_path(i))


def test_failed_run_counts_an_error_and_keeps_last_success(tmp_path):
    treegen.make_node(str(tmp_path / "a"), SHAPE)
    jobs = _jobs(tmp_path)
    assert mu.run_cli(jobs, "--job", "one-institute").returncode == 0
    prom = tmp_path / "metrics" / "drsync-mirror-one-institute.prom"
    ok = mu.metric_values(prom)
    # Make a conflict: the destination's copy of the published versions differs (other content).
    shutil.rmtree(tmp_path / "c")
    treegen.make_node(str(tmp_path / "c"), treegen.Shape(datasets=3, seed=7))
    r = mu.run_cli(jobs, "--job", "one-institute")
    assert r.returncode == 3, r.stderr
    assert "job one-institute" in r.stderr and "differ" in r.stderr
    rec = runlog.read_records(str(tmp_path / "log" / "runs.jsonl"))[-1]
    assert rec["status"] == "error" and rec["exit_code"] == 3 and "differ" in rec["error"]
    assert rec["attempts"] == 1  # a conflict is never retried
    m = mu.metric_values(prom)
    assert m[("drsync_errors_total", "one-institute")] == 1
    assert m[("drsync_runs_total", "one-institute")] == 2
    assert m[("drsync_last_exit_code", "one-institute")] == 3
    assert m[("drsync_last_success_timestamp_seconds", "one-institute")] == \
        ok[("drsync_last_success_timestamp_seconds", "one-institute")]
    assert not (tmp_path / "b").exists()  # --job ran only that job


def test_dry_run_prints_every_plan_and_writes_nothing(tmp_path):
    treegen.make_node(str(tmp_path / "a"), SHAPE)
    jobs = _jobs(tmp_path)
    r = mu.run_cli(jobs, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["job"] for d in docs] == ["everything", "one-institute"]
    assert [d["report"]["totals"]["versions_to_add"] for d in docs] == [8, 4]
    assert all(d["report"]["dry_run"] for d in docs)
    r = mu.run_cli(jobs, "--dry-run")
    assert r.returncode == 0 and "job everything" in r.stdout and "job one-institute" in r.stdout
    assert "versions to add" in r.stdout
    for name in ("b", "c", "log", "metrics"):
        assert not (tmp_path / name).exists()
