"""The `drsync` command starts the SSH channel of a push or pull before it imports the planning and
publishing machinery (cli._connect_early, ssh.prepare_channel), every read from sshd is acked at
once (quickack.py), and nothing of the SSH library outlives the run (so the process takes its
quick exit). All against the real sshd fixture."""

from __future__ import annotations

import collections
import sys
import threading

import invariants
import pytest
import treegen
from transport_helpers import spied_cli

import drsync
from drsync import cli
from drsync.transports import keepalive, quickack, ssh

AGENT = f"{sys.executable} -m drsync"
SHAPE = treegen.Shape(datasets=1, variables=2, files=6, versions=2, changed=0.25, added=2, removed=0)

EARLY = r"""
import json, sys
from drsync import cli
from drsync.transports import ssh
seen, opened = [], []
real = ssh._open
def spy(*args):  # the connection starts: is the planner loaded yet?
    seen.append({"sync": "drsync.sync" in sys.modules, "plan": "drsync.plan" in sys.modules})
    channel = real(*args)
    opened.append({"sync": "drsync.sync" in sys.modules})  # and once the agent is started?
    return channel
ssh._open = spy
cli.HANDSHAKE_HEAD_START = 120  # however slow this machine's handshake
code = cli.main(sys.argv[1:], freeze=True)
print(json.dumps({"code": code, "seen": seen, "opened": opened, "left": len(ssh._prepared)}))
"""


@pytest.mark.parametrize("command", ["push", "pull"])
def test_the_command_line_connects_before_it_loads_the_planner(tmp_path, sshd_server, ssh_client_env, command):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    treegen.make_node(src, SHAPE)
    remote_src, local_dst = (src, f"drsync-test:{dst}") if command == "push" else (f"drsync-test:{src}", dst)
    got = spied_cli(EARLY, [command, "-q", "--no-progress", "--drsync-path", AGENT, remote_src, local_dst])
    assert got["code"] == 0
    # one connection, started while neither the planner nor the sync driver was imported; the run
    # took it over (nothing left prepared) instead of connecting a second time
    assert got["seen"] == [{"sync": False, "plan": False}]
    # ... and the handshake had the interpreter to itself: the planner was imported only once the
    # remote agent was started (cli._give_way_to_handshake)
    assert got["opened"] == [{"sync": False}]
    assert got["left"] == 0
    invariants.check_converged(src, dst)


def test_an_early_channel_the_run_never_takes_is_closed(tmp_path, sshd_server, ssh_client_env, monkeypatch, capsys):
    closed = threading.Event()
    real_open = ssh._open

    def open_and_watch(*args):
        channel = real_open(*args)
        real_close = channel.close

        def close():
            real_close()
            closed.set()
        channel.close = close
        return channel

    monkeypatch.setattr(ssh, "_open", open_and_watch)
    code = cli.main(["push", "-q", "--drsync-path", AGENT, str(tmp_path / "missing"), f"drsync-test:{tmp_path / 'b'}"])
    assert code == 2 and "source does not exist" in capsys.readouterr().err
    assert closed.wait(60)  # the connection made meanwhile is not left open
    assert ssh._prepared == {}
    assert not (tmp_path / "b").exists()


def test_an_early_channel_carries_the_connections_own_error(tmp_path, sshd_server, ssh_client_env, capsys):
    (ssh_client_env / ".ssh" / "known_hosts").write_text("")  # the host key is unknown now
    src = str(tmp_path / "a")
    treegen.make_node(src, SHAPE)
    code = cli.main(["push", "-q", "--drsync-path", AGENT, "--retries", "0", src, f"drsync-test:{tmp_path / 'b'}"])
    err = capsys.readouterr().err
    assert code == 5 and "not in known_hosts" in err
    assert len(err.strip().splitlines()) == 1


def _push_watching_acks(tmp_path, monkeypatch, backend: str, watch) -> tuple[str, str]:
    """Push a small node over ssh with ``watch(sock)`` called on every quick ACK of the run (before
    the real one); the push must succeed. Returns (source, destination)."""
    real = quickack.ack_now

    def ack_now(sock):
        watch(sock)
        real(sock)

    monkeypatch.setattr(quickack, "ack_now", ack_now)
    monkeypatch.setattr(keepalive, "ack_now", ack_now)
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    treegen.make_node(src, SHAPE)
    r = drsync.push(src, f"drsync-test:{dst}", drsync.Options(drsync_path=AGENT, ssh_backend=backend))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    return src, dst


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_every_read_from_sshd_is_acked_at_once(tmp_path, sshd_server, ssh_client_env, monkeypatch, backend):
    """sshd sends small packets with Nagle's algorithm on; a delayed ACK would hold the next one 40 ms
    (the session's confirmation after authentication, measured: 44 ms -> 2 ms)."""
    acked: list[int] = []
    src, dst = _push_watching_acks(tmp_path, monkeypatch, backend, lambda sock: acked.append(sock.fileno()))
    # from the server's banner to the agent's last reply, each read of the run's socket: dozens of
    # them (a connection an earlier test closed may still ack its last reads meanwhile)
    assert max(collections.Counter(acked).values(), default=0) >= 10
    invariants.check_converged(src, dst)


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_the_runs_socket_sends_without_nagle(tmp_path, sshd_server, ssh_client_env, monkeypatch, backend):
    """Small SSH packets go out at once (TCP_NODELAY) with either backend: with Nagle on, paramiko's
    user-auth request and session open each waited ~40 ms for sshd's delayed ACK."""
    import socket

    seen: list[int] = []

    def nodelay(sock):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    _push_watching_acks(tmp_path, monkeypatch, backend, nodelay)
    assert len(seen) >= 10 and all(seen), seen


def test_quick_acks_reach_the_kernel_of_a_tcp_socket_only():
    import socket

    a, b = socket.socketpair()  # a Unix socket (a ProxyCommand's): no TCP option, no error
    quickack.ack_now(a)
    a.close(), b.close()
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    quickack.ack_now(client)
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
    for s in (client, peer, server):
        s.close()


def test_no_thread_of_the_ssh_library_outlives_a_run(tmp_path, sshd_server, ssh_client_env):
    """A thread left behind (asyncio's resolver pool) would send the `drsync` process through the
    interpreter's slow teardown instead of cli.leave's quick exit."""
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    treegen.make_node(src, SHAPE)
    before = set(threading.enumerate())
    assert drsync.push(src, f"drsync-test:{dst}", drsync.Options(drsync_path=AGENT)).exit_code == 0
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []
