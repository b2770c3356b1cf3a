"""First contact: push and pull over a real sshd through `drsync agent`, both backends."""

import os
import subprocess
import sys

import pytest

import drsync
import invariants
import treegen

AGENT = f"{sys.executable} -m drsync"


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_push_then_pull_over_ssh(tmp_path, sshd_server, ssh_client_env, backend):
    src = str(tmp_path / "a")
    gen = treegen.make_node(src)
    remote = tmp_path / "remote"
    opts = drsync.Options(ssh_backend=backend, drsync_path=AGENT)
    r = drsync.push(src, f"drsync-test:{remote}", opts)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert r.transferred.files == 60
    assert subprocess.run(["diff", "-r", "--no-dereference", "-x", ".drsync", src, str(remote)]).returncode == 0
    r = drsync.diff(src, f"drsync-test:{remote}", opts)
    assert r.exit_code == 0 and r.plan.in_sync
    for g in gen:
        g.add_version()
    r = drsync.push(src, f"drsync-test:{remote}", opts)
    assert r.exit_code == 0 and r.transferred.files == 16
    back = str(tmp_path / "back")
    r = drsync.pull(f"drsync-test:{remote}", back, opts)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert subprocess.run(["diff", "-r", "--no-dereference", "-x", ".drsync", src, back]).returncode == 0
    invariants.check_converged(src, back)
