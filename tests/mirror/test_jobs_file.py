"""The jobs file: what it accepts, and every mistake is exit 2 naming the file, the job and the key."""

import dataclasses
import os

import mirror_util as mu
import pytest

from drsync.errors import UsageError
from drsync.mirror import jobs as mj
from drsync.mirror.runner import backoff, run_every

GOOD = """
[defaults]
log = "logs/runs.jsonl"
metrics_dir = "/var/lib/node_exporter/textfile"
retries = 5
options = { jobs = 2, fsync = false }

[jobs.ceda-to-dkrz]
source = "esgf-a:/data/cmip6"
destination = "/data/cmip6"
datasets = ["CMIP6/CMIP/MOHC/*"]
exclude = ["*/fx/*"]

[jobs.ceda-to-dkrz.options]
jobs = 8
bwlimit = "200M"
delete = false
up_to = "v20200101"
checksum = true
link = false
ssh_backend = "paramiko"
accept_new = true
drsync_path = "/opt/drsync/bin/drsync"
state_dir = "state"
timeout = 30

[jobs.local]
source = "a"
destination = "b"
retries = 0
options = { bwlimit = 100 }
"""


def test_parses_every_key_with_defaults_and_relative_paths(tmp_path):
    path = mu.write(tmp_path / "jobs.toml", GOOD)
    f = mj.load_jobs(path)
    assert [j.name for j in f.jobs] == ["ceda-to-dkrz", "local"]
    ceda, local = f.jobs
    assert ceda.command == "pull" and local.command == "push"
    assert ceda.source == "esgf-a:/data/cmip6" and ceda.destination == "/data/cmip6"
    assert ceda.datasets == ("CMIP6/CMIP/MOHC/*",) and ceda.exclude == ("*/fx/*",)
    o = ceda.options
    assert (o.jobs, o.bwlimit, o.delete, o.up_to, o.checksum, o.link) == (8, 200 << 20, False, "20200101", True, False)
    assert (o.ssh_backend, o.accept_new, o.drsync_path) == ("paramiko", True, "/opt/drsync/bin/drsync")
    assert o.state_dir == str(tmp_path / "state")
    assert o.timeout == 30.0 and local.options.timeout == 60.0
    # the job's `retries` is the one budget: the library call itself does not retry again
    assert ceda.library_options().retries == 0
    assert o.fsync is False  # from [defaults].options, merged key by key
    assert o.datasets == ("CMIP6/CMIP/MOHC/*",) and o.exclude == ("*/fx/*",)
    assert ceda.retries == 5 and local.retries == 0
    assert ceda.log == str(tmp_path / "logs" / "runs.jsonl")
    assert ceda.metrics_dir == "/var/lib/node_exporter/textfile"
    assert local.source == str(tmp_path / "a") and local.local_destination == str(tmp_path / "b")
    assert local.options.bwlimit == 100 * 1024 and local.options.jobs == 2  # a bare number is KiB/s
    with pytest.raises(dataclasses.FrozenInstanceError):
        ceda.retries = 1


@pytest.mark.parametrize("body, job, key", [
    ('[jobs.x]\nsource = "a"\ndestination = "b"\nbogus = 1\n', "jobs.x", "bogus"),
    ('[jobs.x]\ndestination = "b"\n', "jobs.x", "source"),
    ('[jobs.x]\nsource = "a"\n', "jobs.x", "destination"),
    ('[jobs.x]\nsource = 3\ndestination = "b"\n', "jobs.x", "source"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\ndatasets = "CMIP6/*"\n', "jobs.x", "datasets"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\nexclude = [1]\n', "jobs.x", "exclude"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\nretries = -1\n', "jobs.x", "retries"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\nretries = true\n', "jobs.x", "retries"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\nlog = 5\n', "jobs.x", "log"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\nmetrics_dir = ""\n', "jobs.x", "metrics_dir"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\noptions = 3\n', "jobs.x", "options"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\noptions = { speed = 1 }\n', "jobs.x", "options.speed"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\noptions = { bwlimit = "fast" }\n', "jobs.x", "options.bwlimit"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\noptions = { bwlimit = 0 }\n', "jobs.x", "options.bwlimit"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\noptions = { jobs = 0 }\n', "jobs.x", "options.jobs"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\noptions = { delete = "yes" }\n', "jobs.x", "options.delete"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\noptions = { up_to = "latest" }\n', "jobs.x", "options.up_to"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\noptions = { ssh_backend = "libssh" }\n', "jobs.x",
     "options.ssh_backend"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\noptions = { drsync_path = "" }\n', "jobs.x", "options.drsync_path"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\noptions = { timeout = "1m" }\n', "jobs.x", "options.timeout"),
    ('[jobs.x]\nsource = "a"\ndestination = "b"\noptions = { timeout = 0.5 }\n', "jobs.x", "options.timeout"),
    ('[jobs.x]\nsource = "h1:/a"\ndestination = "h2:/b"\n', "jobs.x", "destination"),
    ('[defaults]\nretry = 3\n[jobs.x]\nsource = "a"\ndestination = "b"\n', "defaults", "retry"),
    ('[defaults]\noptions = { fsync = 1 }\n[jobs.x]\nsource = "a"\ndestination = "b"\n', "defaults",
     "options.fsync"),
    ('[jobs."bad name"]\nsource = "a"\ndestination = "b"\n', "jobs.bad name", None),
    ('[job.x]\nsource = "a"\n', "top level", "job"),
    ('[defaults]\nretries = 1\n', "top level", "jobs"),
])
def test_each_mistake_is_a_usage_error_naming_file_job_and_key(tmp_path, body, job, key):
    path = mu.write(tmp_path / "jobs.toml", body)
    with pytest.raises(UsageError) as exc:
        mj.load_jobs(path)
    msg = str(exc.value)
    assert exc.value.exit_code == 2
    assert path in msg and f"[{job}]" in msg
    if key is not None:
        assert f"] {key}:" in msg


def test_cli_reports_bad_file_with_exit_2_and_one_line(tmp_path):
    path = mu.write(tmp_path / "jobs.toml", '[jobs.nightly]\nsource = "a"\ndestination = "b"\n'
                                             'options = { bwlimit = "lots" }\n')
    r = mu.run_cli(path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drsync: error: ")
    assert path in lines[0] and "[jobs.nightly] options.bwlimit" in lines[0]
    assert not os.path.exists(tmp_path / "b")


@pytest.mark.parametrize("body", ["[jobs.x\nsource = 1", ""])
def test_invalid_toml_or_empty_file_is_exit_2(tmp_path, body):
    path = mu.write(tmp_path / "jobs.toml", body)
    r = mu.run_cli(path)
    assert r.returncode == 2 and path in r.stderr


def test_missing_file_and_unknown_job_are_exit_2(tmp_path):
    assert mu.run_cli(str(tmp_path / "nope.toml")).returncode == 2
    path = mu.write(tmp_path / "jobs.toml", '[jobs.x]\nsource = "a"\ndestination = "b"\n')
    r = mu.run_cli(path, "--job", "y")
    assert r.returncode == 2 and "'y'" in r.stderr
    r = mu.run_cli(path, "--every", "soon")
    assert r.returncode == 2 and "duration" in r.stderr


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("10m", 600), ("1h", 3600), ("1d", 86400), ("45", 45),
                                           ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert mj.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "1w", "h", "-5m"])
def test_parse_duration_refuses(text):
    with pytest.raises(UsageError):
        mj.parse_duration(text)


def test_backoff_grows_exponentially_with_bounded_jitter():
    import random

    rng = random.Random(1)
    for attempt in range(1, 8):
        d = backoff(attempt, rng, base=2.0, cap=60.0)
        full = min(60.0, 2.0 * 2 ** (attempt - 1))
        assert full / 2 <= d <= full


def test_every_starts_rounds_one_interval_apart():
    now = [0.0]
    slept = []
    starts = []

    def round_():
        starts.append(now[0])
        now[0] += 7  # each round takes 7 s

    def sleep(s):
        slept.append(s)
        now[0] += s

    made = run_every(60, round_, rounds=3, sleep=sleep, clock=lambda: now[0])
    assert made == 3 and starts == [0, 60, 120] and slept == [53, 53]
