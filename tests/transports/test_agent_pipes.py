"""The agent widens the stdin pipe sshd runs it with (drsync/agent/pipes.py): a pushed file's bytes
cross it, 64 KiB at a time unless widened. Its stdout (a pull's files) is left as it was: wider, the
pull measured slower."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import drsync
from drsync.agent import pipes, protocol
from drsync.transports import remote
from transport_helpers import BACKENDS, agent_pids

GETPIPE_SZ = pipes.GETPIPE_SZ
DEFAULT = 1 << 16  # a new pipe's capacity on Linux


def _capacity(path: str, flags: int) -> int:
    fd = os.open(path, flags | os.O_NONBLOCK)
    try:
        return fcntl.fcntl(fd, GETPIPE_SZ)
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_agent_behind_sshd_has_a_wide_stdin_pipe(backend, tmp_path, sshd_server, ssh_client_env):
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


def test_an_unprivileged_user_is_never_pushed_over_the_pipe_limit():
    """pipes.py's promise: the kernel refuses a widening that would take the user's pipes past
    pipe-user-pages-soft, so an agent never leaves its user's next pipes shrunk to a few pages.
    pipes.py's own code, run by Debian's interpreter as an unprivileged user (nobody): new pipes are
    widened until one is refused, then one more is made."""
    body = textwrap.dedent("""
        held, widened = [], 0
        while True:
            r, w = os.pipe()
            held += [r, w]
            if not widen(r):
                break
            widened += 1
            if widened > 10000:
                raise SystemExit("no limit met")
        r, w = os.pipe()
        print(widened, fcntl.fcntl(r, GETPIPE_SZ))
    """)
    with open(pipes.__file__) as f:
        code = f.read() + body  # the module's own code, then the check (its names: widen, GETPIPE_SZ)
    with open("/proc/sys/fs/pipe-user-pages-soft") as f:
        soft = int(f.read())
    if os.getuid() != 0 or soft == 0 or not os.access("/usr/bin/python3", os.X_OK):
        pytest.fail("needs root (to run the check as nobody), /usr/bin/python3 and a pipe-user-pages-soft limit")
    r = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True, timeout=60,
                       cwd="/", preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
    assert r.returncode == 0, r.stderr
    widened, next_size = map(int, r.stdout.split())
    assert 0 < widened <= soft * 4096 // pipes.WIDTH  # refused at the soft limit, not before the first
    assert next_size == DEFAULT  # the user's next pipe is a whole 64 KiB one
