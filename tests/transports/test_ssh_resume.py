"""Resume over SSH: a transfer cut mid-file continues from the partial file, in both directions;
--bwlimit is honoured."""

import os
import subprocess
import sys
import time

import pytest

import drsync
import invariants
import treegen

AGENT = f"{sys.executable} -m drsync"
SHAPE = treegen.Shape(datasets=1, variables=1, files=1, versions=1, added=0, removed=0, size=24 << 20)


def _partials(node: str) -> list[int]:
    out = []
    for dirpath, _, files in os.walk(node):
        if os.path.join(".drsync", "partial") in dirpath:  # partial/<files dir>/<file>
            out += [os.path.getsize(os.path.join(dirpath, f)) for f in files]
    return out


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_pull_cut_mid_file_resumes(tmp_path, sshd_server, ssh_client_env, backend):
    remote = str(tmp_path / "remote")
    treegen.make_node(remote, SHAPE)
    local = str(tmp_path / "local")
    spec = f"drsync-test:{remote}"
    dying = drsync.Options(ssh_backend=backend, drsync_path=f"env DRSYNC_FAULT=send_chunk:3 {AGENT}",
                           retries=0)  # this test checks the partial one cut leaves
    r = drsync.pull(spec, local, dying)
    assert r.exit_code == 5, [e.line() for e in r.errors]
    assert not any(n.startswith("v") and n[1:].isdigit() for _, dirs, _ in os.walk(local) for n in dirs), \
        "nothing may be published"
    kept = _partials(local)
    assert kept and kept[0] >= 8 << 20, kept  # at least two of the three 4 MiB chunks arrived
    r = drsync.pull(spec, local, drsync.Options(ssh_backend=backend, drsync_path=AGENT))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert r.transferred.files == 1
    assert r.transferred.bytes == SHAPE.size - kept[0]  # continued, not restarted
    invariants.check_converged(remote, local)


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_push_cut_mid_file_resumes(tmp_path, sshd_server, ssh_client_env, backend):
    src = str(tmp_path / "src")
    treegen.make_node(src, SHAPE)
    remote = str(tmp_path / "remote")
    spec = f"drsync-test:{remote}"
    before = invariants.snapshot(remote)
    dying = drsync.Options(ssh_backend=backend, drsync_path=f"env DRSYNC_FAULT=recv_chunk:3 {AGENT}",
                           retries=0)  # this test checks the partial one cut leaves
    r = drsync.push(src, spec, dying)
    assert r.exit_code == 5, [e.line() for e in r.errors]
    invariants.check(src, remote, before)
    kept = _partials(remote)
    assert kept == [12 << 20], kept  # three whole chunks written before the agent died
    r = drsync.push(src, spec, drsync.Options(ssh_backend=backend, drsync_path=AGENT))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert r.transferred.bytes == SHAPE.size - kept[0]
    invariants.check_converged(src, remote)


def test_bwlimit_is_honoured(tmp_path, sshd_server, ssh_client_env):
    src = str(tmp_path / "src")
    treegen.make_node(src, treegen.Shape(datasets=1, variables=1, files=3, versions=1, size=1 << 20))
    remote = str(tmp_path / "remote")
    start = time.monotonic()
    r = drsync.push(src, f"drsync-test:{remote}", drsync.Options(drsync_path=AGENT, bwlimit=1 << 20))
    took = time.monotonic() - start
    assert r.exit_code == 0
    assert took >= 2.5, f"3 MiB at 1 MiB/s took only {took:.2f} s"
    assert subprocess.run(["diff", "-r", "--no-dereference", "-x", ".drsync", src, remote]).returncode == 0
