"""The agent widens the stdin pipe sshd runs it with (drsync/agent/pipes.py): a pushed file's bytes
cross it, 64 KiB at a time unless widened. Its stdout (a pull's files) is left as it was: wider, the
pull measured slower."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys

import pytest

import drsync
from drsync.agent import pipes, protocol
from drsync.transports import remote
from transport_helpers import BACKENDS, agent_pids

GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
DEFAULT = 1 << 16  # a new pipe's capacity on Linux


def _capacity(path: str, flags: int) -> int:
    fd = os.open(path, flags | os.O_NONBLOCK)
    try:
        return fcntl.fcntl(fd, GETPIPE_SZ)
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_agent_behind_sshd_has_wide_pipes(backend, tmp_path, sshd_server, ssh_client_env):
    (tmp_path / "remote").mkdir()
    node = remote.RemoteNode(f"drsync-test:{tmp_path / 'remote'}",
                             drsync.Options(ssh_backend=backend, drsync_path=f"{sys.executable} -m drsync"))
    try:
        assert node.datasets() == []  # the agent has answered: it is past its start-up
        (pid,) = agent_pids(sshd_server)
        # the agent's own descriptors, opened anew through /proc: the same pipes, as sshd made them
        assert os.readlink(f"/proc/{pid}/fd/0").startswith("pipe:")
        assert _capacity(f"/proc/{pid}/fd/0", os.O_RDONLY) == pipes.WIDTH
        assert _capacity(f"/proc/{pid}/fd/1", os.O_WRONLY) == DEFAULT
    finally:
        node.close()


def test_an_agent_on_plain_pipes_widens_its_stdin():
    proc = subprocess.Popen([sys.executable, "-m", "drsync", "agent"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().startswith(protocol.GREETING)  # past main()'s widening
        assert fcntl.fcntl(proc.stdin.fileno(), GETPIPE_SZ) == pipes.WIDTH
        assert fcntl.fcntl(proc.stdout.fileno(), GETPIPE_SZ) == DEFAULT
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def test_what_is_not_a_pipe_is_left_alone(tmp_path):
    a, b = socket.socketpair()
    with a, b, open(tmp_path / "f", "wb") as f:
        assert pipes.widen(a.fileno(), f.fileno()) == {}
    r, w = os.pipe()
    try:
        assert pipes.widen(r, width=1 << 17) == {r: 1 << 17}
        assert fcntl.fcntl(w, GETPIPE_SZ) == 1 << 17  # one pipe: both ends see it
    finally:
        os.close(r)
        os.close(w)
