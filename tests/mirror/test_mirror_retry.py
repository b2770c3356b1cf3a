"""Retries: connection failures are retried with growing delays up to `retries`; conflicts never.

The job's host is a ~/.ssh/config alias on a port where nothing listens; the test's `sleep` (the
runner's backoff wait) opens a forwarder on that port to the real sshd after N failures, so the
server "comes back" at a known attempt without sleeping and hoping.
"""

import socket
import threading

import mirror_util as mu
import treegen
from sshd import _free_port, _pub_line

from drsync.errors import ConnectionFailure
from drsync.mirror import load_jobs, run_job, runlog
from drsync.mirror.runner import retryable


class Forwarder:
    """Accepts on ``listen`` and pipes each connection to ``target`` (127.0.0.1)."""

    def __init__(self, listen: int, target: int):
        self.sock = socket.create_server(("127.0.0.1", listen))
        self.target = target
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def _alias(home, server, port: int) -> None:
    """Add `drsync-flaky` (127.0.0.1:port, host key A) to the test HOME's ssh config."""
    dot = home / ".ssh"
    with open(dot / "config", "a") as fh:
        fh.write(f"Host drsync-flaky\n    HostName 127.0.0.1\n    Port {port}\n    User {server.user}\n"
                 f'    IdentityFile "{dot / "id_ed25519"}"\n    IdentitiesOnly yes\n'
                 f'    UserKnownHostsFile "{dot / "known_hosts"}"\n    StrictHostKeyChecking yes\n')
    with open(dot / "known_hosts", "a") as fh:
        fh.write(f"[127.0.0.1]:{port} {_pub_line(server.host_key_a_pub)}\n")


def _job(tmp_path, dest: str, retries: int):
    path = mu.write(tmp_path / "jobs.toml", f"""
[jobs.flaky]
source = "{tmp_path}/a"
destination = "{dest}"
retries = {retries}
log = "{tmp_path}/runs.jsonl"
options = {{ drsync_path = "{mu.AGENT}" }}
""")
    return load_jobs(path).jobs[0]


def test_connection_failures_are_retried_until_the_server_answers(tmp_path, sshd_server, ssh_client_env):
    treegen.make_node(str(tmp_path / "a"))
    port = _free_port()
    _alias(ssh_client_env, sshd_server, port)
    job = _job(tmp_path, f"drsync-flaky:{tmp_path}/remote", retries=4)
    delays, fwd = [], []

    def sleep(seconds):  # the runner's backoff wait: the server comes back after the 2nd failure
        delays.append(seconds)
        if len(delays) == 2:
            fwd.append(Forwarder(port, sshd_server.port))

    try:
        run = run_job(job, sleep=sleep)
    finally:
        for f in fwd:
            f.close()
    assert run.exit_code == 0, run.errors
    assert run.attempts == 3 and len(delays) == 2 and 0 < delays[0] <= delays[1]
    rec = runlog.read_records(str(tmp_path / "runs.jsonl"))[-1]
    assert rec["status"] == "ok" and rec["attempts"] == 3 and rec["files"] > 0 and rec["versions"] == 8
    for drs in mu.datasets_under(tmp_path / "a"):
        assert mu.same_tree(tmp_path / "a" / drs, tmp_path / "remote" / drs)


def test_retries_are_bounded_and_the_last_error_is_logged(tmp_path, sshd_server, ssh_client_env):
    treegen.make_node(str(tmp_path / "a"))
    port = _free_port()
    _alias(ssh_client_env, sshd_server, port)
    job = _job(tmp_path, f"drsync-flaky:{tmp_path}/remote", retries=2)
    delays = []
    run = run_job(job, sleep=delays.append)
    assert run.exit_code == 5 and run.attempts == 3 and len(delays) == 2
    rec = runlog.read_records(str(tmp_path / "runs.jsonl"))[-1]
    assert rec["status"] == "error" and rec["exit_code"] == 5 and str(port) in rec["error"]
    assert not (tmp_path / "remote").exists()


def test_a_conflict_is_never_retried(tmp_path, sshd_server, ssh_client_env):
    treegen.make_node(str(tmp_path / "a"))
    treegen.make_node(str(tmp_path / "remote"), treegen.Shape(seed=3))  # same versions, other bytes
    before = {drs: mu.same_tree(tmp_path / "a" / drs, tmp_path / "remote" / drs)
              for drs in mu.datasets_under(tmp_path / "a")}
    job = _job(tmp_path, f"drsync-test:{tmp_path}/remote", retries=5)
    delays = []
    run = run_job(job, sleep=delays.append)
    assert run.exit_code == 3 and run.attempts == 1 and delays == []
    assert "differ" in run.error
    assert {drs: mu.same_tree(tmp_path / "a" / drs, tmp_path / "remote" / drs)
            for drs in mu.datasets_under(tmp_path / "a")} == before


def test_only_lost_connections_are_retryable():
    from drsync.errors import ConflictError, ConnectionLost, LockedError, UnsafeInputError

    assert retryable([ConnectionLost("x"), ConnectionLost("y")])
    assert not retryable([])
    assert not retryable([ConnectionLost("x"), ConflictError("y")])
    assert not retryable([UnsafeInputError("x")]) and not retryable([LockedError("x")])
    # host key, authentication, agent handshake: exit 5 too, but permanent (FAULTS F9)
    assert not retryable([ConnectionFailure("host key mismatch")])
