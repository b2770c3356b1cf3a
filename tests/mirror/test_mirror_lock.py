"""The node lock: a second run of the same destination waits, or exits 7 with --no-wait naming the
holder; a SIGKILLed holder leaves no stale lock (flock dies with its process)."""

import os
import signal
import subprocess
import sys
import threading
import time

import mirror_util as mu
import treegen

from drsync.mirror import runlog
from drsync.mirror.lock import LOCK_NAME

HOLDER = ("import sys; from drsync.mirror.lock import NodeLock; "
          "l = NodeLock.acquire(sys.argv[1], job='holder', wait=False); print('locked', flush=True); "
          "sys.stdin.readline()")


def _setup(tmp_path):
    treegen.make_node(str(tmp_path / "a"))
    jobs = mu.write(tmp_path / "jobs.toml", f"""
[jobs.nightly]
source = "{tmp_path}/a"
destination = "{tmp_path}/b"
log = "{tmp_path}/runs.jsonl"
""")
    return jobs


def _hold(dest) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(dest)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=mu.REPO)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_no_wait_exits_7_naming_the_holder_and_sigkill_leaves_no_stale_lock(tmp_path):
    jobs = _setup(tmp_path)
    holder = _hold(tmp_path / "b")
    try:
        lock = tmp_path / "b" / LOCK_NAME
        assert oct(os.stat(lock).st_mode & 0o777) == "0o600"
        r = mu.run_cli(jobs, "--no-wait")
        assert r.returncode == 7, r.stderr
        assert f"pid {holder.pid}" in r.stderr and "job holder" in r.stderr
        assert mu.datasets_under(tmp_path / "b") == set()
        rec = runlog.read_records(str(tmp_path / "runs.jsonl"))[-1]
        assert rec["exit_code"] == 7 and rec["status"] == "error" and f"pid {holder.pid}" in rec["error"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's pid is still written in the file, but the kernel dropped its flock.
    assert str(holder.pid) in (tmp_path / "b" / LOCK_NAME).read_text()
    r = mu.run_cli(jobs, "--no-wait")
    assert r.returncode == 0, r.stderr
    assert mu.datasets_under(tmp_path / "b") == mu.datasets_under(tmp_path / "a") != set()
    for drs in mu.datasets_under(tmp_path / "a"):
        assert mu.same_tree(tmp_path / "a" / drs, tmp_path / "b" / drs)


def test_second_run_waits_for_the_first(tmp_path):
    jobs = _setup(tmp_path)
    holder = _hold(tmp_path / "b")
    waiting = mu.popen_cli(jobs, "-v")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(waiting.stderr), daemon=True)
    reader.start()
    try:
        # First it says it waits (however long its start-up takes on a loaded machine) ...
        deadline = time.monotonic() + 60
        while not any("waiting for the mirror lock" in line for line in lines):
            assert waiting.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        # ... then it waits as long as the lock is held: nothing written, still running.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert waiting.poll() is None
            assert mu.datasets_under(tmp_path / "b") == set()
            time.sleep(0.1)
    finally:
        holder.stdin.close()  # the holder ends and its lock goes with it
        holder.wait()
    waiting.wait(timeout=60)
    reader.join(timeout=60)
    err = "".join(lines)
    assert waiting.returncode == 0, err
    assert "waiting for the mirror lock" in err and f"pid {holder.pid}" in err
    assert mu.datasets_under(tmp_path / "b") == mu.datasets_under(tmp_path / "a") != set()
    assert len(runlog.read_records(str(tmp_path / "runs.jsonl"))) == 1


def test_lock_planted_as_symlink_is_refused(tmp_path):
    jobs = _setup(tmp_path)
    os.makedirs(tmp_path / "b")
    os.symlink(tmp_path / "elsewhere", tmp_path / "b" / LOCK_NAME)
    r = mu.run_cli(jobs)
    assert r.returncode == 4 and "symlink" in r.stderr
    assert not (tmp_path / "elsewhere").exists()
    assert mu.datasets_under(tmp_path / "b") == set()
