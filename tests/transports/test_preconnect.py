"""The `drsync` command connects to the remote sshd while it still imports the SSH library
(drsync/transports/preconnect.py): where to connect is predicted with OpenSSH's own reading of
~/.ssh/config, and the run takes the socket only when its resolved target is the same host and port.
Against the real sshd fixture and loopback listeners."""

from __future__ import annotations

import os
import socket
import sys

import invariants
import pytest
import treegen
from transport_helpers import assert_one_error_line, spied_cli

from drsync.transports import preconnect

AGENT = f"{sys.executable} -m drsync"
SHAPE = treegen.Shape(datasets=1, variables=2, files=6, versions=2, changed=0.25, added=2, removed=0)


def test_predict_without_a_config_file_is_the_spec_itself(tmp_path):
    absent = str(tmp_path / "no-config")
    assert preconnect.predict("example.invalid:/data", absent) == ("example.invalid", 22)
    assert preconnect.predict("me@127.0.0.2:2222:/data", absent) == ("127.0.0.2", 2222)
    assert preconnect.predict("[::1]:2200:/data", absent) == ("::1", 2200)


def test_predict_reads_the_alias_as_openssh_does(tmp_path, sshd_server, ssh_client_env):
    config = str(ssh_client_env / ".ssh" / "config")
    assert preconnect.predict("drsync-test:/data", config) == (sshd_server.host, sshd_server.port)
    assert preconnect.predict("drsync-test:2201:/data", config) == (sshd_server.host, 2201)  # the spec's port wins
    assert preconnect.predict("not-an-alias:/data", config) == ("not-an-alias", 22)


@pytest.mark.parametrize("line", ["Match host drsync-test exec \"touch %d/ran\"", "  include other.conf",
                                  "MATCH all"])
def test_no_prediction_from_a_config_with_match_or_include(tmp_path, line):
    config = tmp_path / "config"
    config.write_text(f"Host drsync-test\n    HostName 127.0.0.1\n{line}\n")
    os.chmod(config, 0o600)
    assert preconnect.predict("drsync-test:/data", str(config)) is None
    assert not (tmp_path / "ran").exists()


def test_no_prediction_without_a_usable_ssh(tmp_path, monkeypatch):
    config = tmp_path / "config"
    config.write_text("Host drsync-test\n    HostName 127.0.0.1\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh binary here
    assert preconnect.predict("drsync-test:/data", str(config)) is None


@pytest.fixture
def listener():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(10)
        yield srv


def _start(port: int, tmp_path, backend: str = "asyncssh") -> None:
    preconnect.start(f"127.0.0.1:{port}:/data", backend=backend, timeout=10, config=str(tmp_path / "none"))
    assert preconnect._pending.wait(10)


def test_the_socket_goes_to_the_run_that_resolved_the_same_target(tmp_path, listener):
    port = listener.getsockname()[1]
    _start(port, tmp_path)
    sock = preconnect.take("127.0.0.1", port)
    try:
        assert sock is not None and sock.getpeername() == ("127.0.0.1", port)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        peer, _ = listener.accept()
        sock.sendall(b"SSH-2.0-probe\r\n")
        assert peer.recv(64) == b"SSH-2.0-probe\r\n"
        peer.close()
    finally:
        if sock is not None:
            sock.close()
    assert preconnect.take("127.0.0.1", port) is None  # taken once


@pytest.mark.parametrize("other", ["host", "port"])
def test_a_socket_to_another_target_is_closed_not_used(tmp_path, listener, other):
    port = listener.getsockname()[1]
    _start(port, tmp_path)
    host, wanted = ("127.0.0.2", port) if other == "host" else ("127.0.0.1", port + 1)
    assert preconnect.take(host, wanted) is None
    peer, _ = listener.accept()
    assert peer.recv(64) == b""  # the early connection was closed
    peer.close()


def test_paramiko_gets_a_watched_socket(tmp_path, listener):
    from drsync.transports.keepalive import WatchedSocket

    port = listener.getsockname()[1]
    _start(port, tmp_path, backend="paramiko")
    sock = preconnect.take("127.0.0.1", port)
    try:
        assert isinstance(sock, WatchedSocket) and sock.last_recv > 0
    finally:
        sock.close()


def test_a_failed_early_connect_leaves_the_run_to_connect(tmp_path, listener):
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now: the early connect is refused
    _start(port, tmp_path)
    assert preconnect.take("127.0.0.1", port) is None


RUN = r"""
import json, sys
from drsync import cli
from drsync.transports import preconnect
taken = []
real_take, real_predict = preconnect.take, preconnect.predict
def take(host, port):
    sock = real_take(host, port)
    taken.append(None if sock is None else list(sock.getpeername()[:2]))
    return sock
preconnect.take = take
if len(sys.argv) > 1 and sys.argv[1].startswith("--predict="):  # a wrong prediction, for the test
    where = sys.argv.pop(1).split("=", 1)[1].split(",")
    preconnect.predict = lambda spec, config: (where[0], int(where[1]))
code = cli.main(sys.argv[1:], freeze=True)
print(json.dumps({"code": code, "taken": taken}))
"""


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_the_command_runs_its_handshake_over_the_early_socket(tmp_path, sshd_server, ssh_client_env, backend):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    treegen.make_node(src, SHAPE)
    got = spied_cli(RUN, ["push", "-q", "--no-progress", "--ssh-backend", backend, "--drsync-path", AGENT, src,
                          f"drsync-test:{dst}"])
    assert got == {"code": 0, "taken": [[sshd_server.host, sshd_server.port]]}
    invariants.check_converged(src, dst)


def test_a_wrong_prediction_costs_nothing_but_the_early_socket(tmp_path, sshd_server, ssh_client_env, listener):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    treegen.make_node(src, SHAPE)
    decoy = listener.getsockname()[1]
    got = spied_cli(RUN, [f"--predict=127.0.0.1,{decoy}", "pull", "-q", "--no-progress", "--drsync-path",
                          AGENT, f"drsync-test:{src}", dst])
    assert got == {"code": 0, "taken": [None]}  # the run connected to the sshd itself
    peer, _ = listener.accept()
    assert peer.recv(64) == b""  # and closed the connection it had made to the decoy
    peer.close()
    invariants.check_converged(src, dst)


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_a_changed_host_key_is_refused_over_the_early_socket(tmp_path, sshd_server, ssh_client_env, backend):
    """The early socket carries the same handshake: the host key is checked on it as on any
    connection (FAULTS F2: exit 5, one line, nothing written, known_hosts untouched)."""
    src, dst = str(tmp_path / "a"), tmp_path / "b"
    treegen.make_node(src, SHAPE)
    known_hosts = ssh_client_env / ".ssh" / "known_hosts"
    before = known_hosts.read_bytes()
    try:
        sshd_server.use_host_key("b")
        got, stderr = spied_cli(RUN, ["push", "-q", "--no-progress", "--accept-new", "--ssh-backend", backend,
                                      "--drsync-path", AGENT, src, f"drsync-test:{dst}"], with_stderr=True)
    finally:
        sshd_server.use_host_key("a")
    assert got["code"] == 5
    assert got["taken"][0] == [sshd_server.host, sshd_server.port]  # the handshake ran on the early socket
    assert assert_one_error_line(stderr).startswith("drsync: error: host key mismatch"), stderr
    assert not os.path.lexists(dst)
    assert known_hosts.read_bytes() == before
