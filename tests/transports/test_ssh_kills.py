"""FAULTS D / F5 over ssh: a real `drsync push` to `drsync-test:` killed at random moments, and the
remote agent killed mid-push. After every kill the published state at the remote (a directory on
this machine's disk) satisfies I1-I6; a clean run then converges (I7) without rewriting any file
that was already complete in files/.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

import treegen
from invariants import check, check_converged, snapshot
from transport_helpers import (AGENT, ALIAS, PY, agent_pids, assert_identical, error_lines, real_file_inodes,
                               run_cli, ssh_env, wait_agents_gone)

KILLS = 12


def _argv(backend, src, dst, *flags):
    return [PY, "-m", "drsync", "push", "--json", "--ssh-backend", backend, "--drsync-path", AGENT, *flags,
            src, f"{ALIAS}:{dst}"]


def test_client_sigkilled_at_random_moments(sshd_server, ssh_client_env, tmp_path):
    backend = "asyncssh"
    env = ssh_env(ssh_client_env)
    src = str(tmp_path / "src")
    gen = treegen.make_node(src, treegen.Shape(datasets=2, variables=3, files=120, versions=3, size=16384))
    remote = str(tmp_path / "remote")

    # T_full: one unkilled push of the same tree to a scratch remote
    t0 = time.monotonic()
    r = subprocess.run(_argv(backend, src, str(tmp_path / "scratch")), env=env, capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    t_full = time.monotonic() - t0
    assert r.returncode == 0, r.stderr

    rng = random.Random(20240607)
    killed = 0
    runs = 0
    window = t_full
    # at least KILLS kills, and on until one of them left a complete file (the resume checked below)
    while killed < KILLS or not real_file_inodes(remote):
        runs += 1
        assert runs < 3 * KILLS, f"only {killed} kills landed in {runs} runs"
        before = snapshot(remote)
        started = time.monotonic()
        p = subprocess.Popen(_argv(backend, src, remote), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, window))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        _, err = p.communicate(timeout=60)
        assert p.returncode in (0, -signal.SIGKILL), err.decode(errors="replace")
        if p.returncode == 0:
            # the push got through: aim the next kills inside such a run, and give it new work
            window = max(0.2, 0.9 * (time.monotonic() - started))
            for ds in gen:
                ds.add_version()
        # the agent notices its client is gone and exits (releasing the lock) before we look
        wait_agents_gone(sshd_server)
        check(src, remote, before)

    complete = real_file_inodes(remote)
    assert complete, "no kill let a single file arrive: the tree is too small for the kill window"
    code_src_files = len(real_file_inodes(src))

    r = subprocess.run(_argv(backend, src, remote), env=env, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    import json

    doc = json.loads(r.stdout)
    # nothing complete was sent again: exactly the missing files moved
    assert doc["transferred"]["files"] == code_src_files - len(complete), (doc["transferred"], len(complete))
    after = real_file_inodes(remote)
    assert {k: after.get(k) for k in complete} == complete, "a file complete in files/ was rewritten"
    assert_identical(src, remote)
    check_converged(src, remote)
    partial = [os.path.join(d, f) for d, _, fs in os.walk(remote) if os.sep + "partial" in d for f in fs]
    assert not partial, partial[:5]


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_remote_agent_killed_mid_push(backend, sshd_server, ssh_client_env, tmp_path):
    env = ssh_env(ssh_client_env)
    src = str(tmp_path / "src")
    treegen.make_node(src, treegen.Shape(datasets=2, variables=3, files=60, versions=2, size=16384))
    remote = str(tmp_path / "remote")
    wait_agents_gone(sshd_server)

    # --bwlimit stretches the push to a few seconds so the kill lands in the middle of it
    # --retries 0: this is D4 (the killed run's state); a retry after the kill is F5's business
    p = subprocess.Popen(_argv(backend, src, remote, "--bwlimit", "2M", "--retries", "0"), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not agent_pids(sshd_server):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the remote agent never started"
            time.sleep(0.02)
        time.sleep(1.0)
        assert p.poll() is None, "the push finished before the agent could be killed"
        pids = agent_pids(sshd_server)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = err.decode(errors="replace")
    assert p.returncode == 5, err
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert lines and all(ln.startswith("drsync: error: ") for ln in lines), err
    assert any("connection" in ln or "remote" in ln for ln in lines), err
    wait_agents_gone(sshd_server)
    check(src, remote, {})
    complete = real_file_inodes(remote)

    r = run_cli("push", "--ssh-backend", backend, "--drsync-path", AGENT, src, f"{ALIAS}:{remote}", env=env)
    assert r.returncode == 0, r.stderr
    after = real_file_inodes(remote)
    assert {k: after.get(k) for k in complete} == complete
    assert_identical(src, remote)
    check_converged(src, remote)
