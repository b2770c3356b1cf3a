"""Prometheus textfile metrics of mirror jobs, for node_exporter's textfile collector.

One file per job, ``<metrics_dir>/drsync-mirror-<job>.prom``, so jobs never rewrite each other's
numbers. Counters accumulate across runs: each update reads the previous values back from the
file (prometheus_client's own parser), adds this run, and writes the whole file again with
``write_to_textfile`` (temp file + rename: the collector never reads half a file). A small flock
beside it serialises two runs of one job updating at the same moment.
"""

from __future__ import annotations

import fcntl
import os

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

COUNTERS = {  # family name -> help; exposed with the _total suffix
    "drsync_bytes": "Bytes transferred by the mirror job.",
    "drsync_files": "Files transferred by the mirror job.",
    "drsync_versions": "Versions published by the mirror job.",
    "drsync_errors": "Runs of the mirror job that ended with an error.",
    "drsync_runs": "Runs of the mirror job.",
}
GAUGES = {
    "drsync_last_success_timestamp_seconds": "Unix time the mirror job last finished without error.",
    "drsync_last_run_timestamp_seconds": "Unix time the mirror job last finished.",
    "drsync_duration_seconds": "Wall-clock seconds of the mirror job's last run.",
    "drsync_last_exit_code": "Exit code of the mirror job's last run (0 = ok; DESIGN §6 table).",
}


def metrics_path(metrics_dir: str, job: str) -> str:
    return os.path.join(metrics_dir, f"drsync-mirror-{job}.prom")


def read_values(path: str, job: str) -> dict[str, float]:
    """Sample name -> value for ``job`` from an existing textfile ({} when there is none)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return {}
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("job") == job:
                    values[s.name] = s.value
    except ValueError:
        return {}  # a damaged file restarts the counters (Prometheus sees a counter reset)
    return values


class _Snapshot:
    """A collector that exposes one job's values once."""

    def __init__(self, job: str, values: dict[str, float]):
        self.job = job
        self.values = values

    def collect(self):
        for name, doc in COUNTERS.items():
            c = CounterMetricFamily(name, doc, labels=["job"])
            c.add_metric([self.job], self.values.get(f"{name}_total", 0.0))
            yield c
        for name, doc in GAUGES.items():
            if name in self.values:
                g = GaugeMetricFamily(name, doc, labels=["job"])
                g.add_metric([self.job], self.values[name])
                yield g


def record_run(metrics_dir: str, job: str, *, end: float, duration: float, exit_code: int, versions: int,
               files: int, nbytes: int) -> str:
    """Add one run of ``job`` to its textfile; returns the file's path."""
    os.makedirs(metrics_dir, exist_ok=True)
    path = metrics_path(metrics_dir, job)
    lock_fd = os.open(os.path.join(metrics_dir, f".drsync-mirror-{job}.prom.lock"),
                      os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        v = read_values(path, job)
        for name, add in (("drsync_bytes", nbytes), ("drsync_files", files), ("drsync_versions", versions),
                          ("drsync_errors", 1 if exit_code else 0), ("drsync_runs", 1)):
            v[f"{name}_total"] = v.get(f"{name}_total", 0.0) + add
        v["drsync_last_run_timestamp_seconds"] = end
        v["drsync_duration_seconds"] = duration
        v["drsync_last_exit_code"] = float(exit_code)
        if exit_code == 0:
            v["drsync_last_success_timestamp_seconds"] = end
        registry = CollectorRegistry()
        registry.register(_Snapshot(job, v))
        write_to_textfile(path, registry)
        os.chmod(path, 0o644)  # node_exporter usually runs as another user
    finally:
        os.close(lock_fd)
    return path
