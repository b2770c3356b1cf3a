"""FAULTS F7: the remote half is missing, talks before the handshake, or speaks another protocol.

Each is exit 5 with one clear ``drsync: error:`` line (never a traceback), nothing written at the
destination, and no remote process left behind.
"""

from __future__ import annotations

import os
import shlex
import time

import pytest

import treegen
from drsync.agent import protocol
from transport_helpers import ALIAS, BACKENDS, PY, assert_one_error_line, run_cli, ssh_env, wait_agents_gone


@pytest.fixture
def src(tmp_path):
    path = str(tmp_path / "src")
    treegen.make_node(path, treegen.Shape(datasets=1, variables=1, files=3, versions=2))
    return path


def _push(backend, home, src, dst, drsync_path):
    return run_cli("push", "--ssh-backend", backend, "--drsync-path", drsync_path, src, f"{ALIAS}:{dst}",
                   env=ssh_env(home), timeout=60)


@pytest.mark.parametrize("backend", BACKENDS)
def test_drsync_not_installed_on_the_remote(backend, ssh_client_env, src, tmp_path):
    # DESIGN §2: no drsync on the remote is no longer an error: the SFTP fallback takes over and
    # says so once (tests/transports/test_sftp_fallback.py covers it in depth)
    dst = tmp_path / "dst"
    r = _push(backend, ssh_client_env, src, dst, str(tmp_path / "no" / "such" / "drsync"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("no drsync on the remote; using the SFTP fallback") == 1, r.stderr
    assert os.path.isdir(dst)


@pytest.mark.parametrize("backend", BACKENDS)
def test_junk_before_the_greeting(backend, sshd_server, ssh_client_env, src, tmp_path):
    # like a login shell that prints a banner: "hello", then a real agent
    script = f"echo hello from the shell; exec {shlex.quote(PY)} -m drsync \"$@\""
    drsync_path = f"sh -c {shlex.quote(script)} sh"
    dst = tmp_path / "dst"
    r = _push(backend, ssh_client_env, src, dst, drsync_path)
    assert r.returncode == 5, r.stderr
    line = assert_one_error_line(r.stderr)
    assert "did not answer as a drsync agent" in line and "hello from the shell" in line, line
    assert not os.path.lexists(dst)
    wait_agents_gone(sshd_server)


@pytest.mark.parametrize("backend", BACKENDS)
def test_agent_exits_before_the_handshake(backend, ssh_client_env, src, tmp_path):
    dst = tmp_path / "dst"
    r = _push(backend, ssh_client_env, src, dst, "sh -c 'echo broken >&2; exit 3' sh")
    assert r.returncode == 5, r.stderr
    line = assert_one_error_line(r.stderr)
    assert "exited before the handshake" in line and "broken" in line, line
    assert not os.path.lexists(dst)


@pytest.mark.parametrize("backend", BACKENDS)
def test_agent_of_another_protocol_version(backend, sshd_server, ssh_client_env, src, tmp_path):
    fake = tmp_path / "fake_agent.py"
    fake.write_text(
        "import sys, time\n"
        "sys.stdout.write('DRSYNC-AGENT/99 9.9\\n'); sys.stdout.flush()\n"
        "sys.stdin.buffer.read()  # wait for the client to go away\n"
    )
    dst = tmp_path / "dst"
    r = _push(backend, ssh_client_env, src, dst, f"{shlex.quote(PY)} {shlex.quote(str(fake))}")
    assert r.returncode == 5, r.stderr
    line = assert_one_error_line(r.stderr)
    assert "protocol 99" in line and f"this one {protocol.PROTOCOL}" in line, line
    assert not os.path.lexists(dst)
    # the fake agent saw its stdin close and is gone (it takes a moment to exit: poll, bounded)
    wait_agents_gone(sshd_server)
    deadline = time.monotonic() + 20
    while any("fake_agent" in _cmd(p) for p in _descendants(sshd_server)):
        assert time.monotonic() < deadline, "the fake agent outlived its client"
        time.sleep(0.02)


@pytest.mark.parametrize("backend", BACKENDS)
def test_garbage_greeting_line(backend, ssh_client_env, src, tmp_path):
    dst = tmp_path / "dst"
    r = _push(backend, ssh_client_env, src, dst, "sh -c 'echo DRSYNC-AGENT/x; cat >/dev/null' sh")
    assert r.returncode == 5, r.stderr
    line = assert_one_error_line(r.stderr)
    assert "greeting" in line, line
    assert not os.path.lexists(dst)


def _descendants(server):
    from transport_helpers import descendants

    return descendants(server.pid) if server.pid else []


def _cmd(pid):
    from transport_helpers import cmdline

    return cmdline(pid)
