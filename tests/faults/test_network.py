"""FAULTS F5, F6, F9: network faults between drsync and a real sshd, through tests/netproxy.py.

* F5: a connection reset mid-file is retried with backoff and resumed from the partial file (bytes
  sent again are bounded by one in-flight window; complete files are not sent again); a reset on
  every connection ends with exit 5 after ``--retries`` attempts, nothing half-published.
* F6: a black-holed link (no RST, no FIN) is noticed within ``--timeout`` and ends with exit 5 in
  bounded time, or, when the link comes back, the retry resumes (the remote agent of the stalled
  connection gives the destination's lock up); a slow link that still moves bytes is not a stall.
* F9: authentication and host-key failures are exit 5 at once: one connection, one line, no retry.

Every fault is followed by the invariant checker (I1-I6), and a converged run by I7.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest
import treegen
from invariants import check, check_converged, snapshot
from netproxy import Fault, NetProxy, add_alias
from sshd import _keygen, _pub_line
from transport_helpers import AGENT, ALIAS, BACKENDS, PY, assert_one_error_line, ssh_env, wait_agents_gone

import drsync
import drsync.retry
from drsync.events import Recorder

MiB = 1 << 20
NET = "drsync-net"  # the ssh alias of the proxy in front of the test sshd
# What a cut can cost on top of the bytes needed: the protocol chunk the agent was reading (4 MiB)
# plus what the SSH window and the socket buffers held (a few MiB).
IN_FLIGHT = 8 * MiB


@pytest.fixture
def net(sshd_server, ssh_client_env):
    """A proxy in front of the test sshd, reachable as `drsync-net` (host key A in known_hosts)."""
    proxy = NetProxy(sshd_server.port)
    add_alias(ssh_client_env, NET, proxy.port, sshd_server.user, sshd_server.host_key_a_pub)
    try:
        yield proxy
    finally:
        proxy.close()  # aborts black-holed connections: their agents see EOF and exit
        wait_agents_gone(sshd_server)


@pytest.fixture
def delays(monkeypatch):
    """The library's backoff waits, recorded instead of slept."""
    got: list[float] = []
    monkeypatch.setattr(drsync.retry, "pause", got.append)
    return got


def _shape(size: int, files: int = 2, added: int = 0) -> treegen.Shape:
    return treegen.Shape(datasets=1, variables=1, files=files, versions=1, changed=0, added=added, removed=0,
                         size=size)


def _ends(command: str, tmp_path):
    """(source dir, destination dir, source spec, destination spec): the remote end over the proxy."""
    if command == "push":
        src, dst = tmp_path / "src", tmp_path / "remote"
        return str(src), str(dst), str(src), f"{NET}:{dst}"
    src, dst = tmp_path / "remote", tmp_path / "local"
    return str(src), str(dst), f"{NET}:{src}", str(dst)


def _data(link, command: str) -> int:
    """Bytes the proxy forwarded in the direction the files travel."""
    return link.up if command == "push" else link.down


def _cli(backend: str, home, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    r = subprocess.run([PY, "-m", "drsync", "push", "--ssh-backend", backend, "--drsync-path", AGENT, *args],
                       capture_output=True, text=True, env=ssh_env(home), timeout=timeout, stdin=subprocess.DEVNULL,
                       check=False)
    return r, time.monotonic() - start


def _bounded(call, seconds: float):
    """``call()`` in a thread; a run still going after ``seconds`` fails the test instead of hanging it."""
    out: list = []
    worker = threading.Thread(target=lambda: out.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert out, f"the run did not end within {seconds} s"
    return out[0]


def _latest(node: str) -> str:
    return os.readlink(os.path.join(node, treegen.dataset_path(0), "latest"))


# --- F5: a reset mid-file --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("command", ["push", "pull"])
def test_reset_mid_file_is_retried_and_resumed(command, backend, net, tmp_path, delays):
    size = 24 * MiB
    src, dst, src_spec, dst_spec = _ends(command, tmp_path)
    treegen.make_node(src, _shape(size))
    run = getattr(drsync, command)
    options = drsync.Options(ssh_backend=backend, drsync_path=AGENT)

    # the wire bytes of an uncut run, through the same proxy, into a scratch destination
    scratch = tmp_path / "scratch"
    base = run(src_spec, f"{NET}:{scratch}" if command == "push" else str(scratch), options)
    assert base.exit_code == 0, [e.line() for e in base.errors]
    clean = _data(net.links[-1], command)

    # the first connection is reset after 40 MiB: file 1 is whole, file 2 two thirds there
    net.set_fault(Fault("reset", after=40 * MiB, direction="up" if command == "push" else "down", first=1))
    events = Recorder()
    before = snapshot(dst)
    r = run(src_spec, dst_spec, options, events)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    cut, resumed = net.links[-2:]
    assert cut.fate == "reset" and resumed.fate != "reset"
    assert r.attempts == 2 and len(delays) == 1 and 1.0 <= delays[0] <= 2.0, (r.attempts, delays)
    assert len(events.warnings) == 1 and "retry 1 of 3" in events.warnings[0], events.warnings
    resent = _data(cut, command) + _data(resumed, command) - clean
    assert resent <= IN_FLIGHT, f"{resent / MiB:.1f} MiB sent twice"  # not the 16 MiB of file 2 again
    assert r.transferred.bytes < size, r.transferred  # the retry resumed file 2, and did not send file 1
    assert r.plan.datasets[0].bytes_to_send == 2 * size  # the report shows the run's whole plan
    check(src, dst, before)
    check_converged(src, dst)


def test_reset_on_every_connection_ends_with_exit_5(net, ssh_client_env, tmp_path):
    # the CLI path, on one backend (the retry loop is the library's, the same for both)
    backend = "asyncssh"
    src, remote = str(tmp_path / "src"), str(tmp_path / "remote")
    gen = treegen.make_node(src, _shape(16 * MiB, files=1, added=2))
    r, _ = _cli(backend, ssh_client_env, src, f"{ALIAS}:{remote}")  # v1 published over a clean link
    assert r.returncode == 0, r.stderr
    v1 = _latest(remote)
    gen[0].add_version()  # 32 MiB more
    before = snapshot(remote)

    net.set_fault(Fault("reset", after=6 * MiB, direction="up"))
    r, took = _cli(backend, ssh_client_env, "--retries", "2", src, f"{NET}:{remote}")
    assert r.returncode == 5, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr
    assert [ln.split("; retry ")[-1][:6] for ln in lines[:2]] == ["1 of 2", "2 of 2"], r.stderr
    assert len(lines) == 3 and lines[2].startswith("drsync: error: connection"), r.stderr
    assert "dataset " + treegen.dataset_path(0) in lines[2], lines[2]
    assert net.connections == 3 and all(link.fate == "reset" for link in net.links), net.links
    assert took < 30, f"{took:.1f} s"  # backoff at most 2 + 4 s, and each attempt cut short
    check(src, remote, before)  # nothing half-published
    assert _latest(remote) == v1 and sorted(before[treegen.dataset_path(0)]["versions"]) == \
        sorted(n for n in os.listdir(os.path.join(remote, treegen.dataset_path(0))) if n.startswith("v"))

    r, _ = _cli(backend, ssh_client_env, src, f"{ALIAS}:{remote}")
    assert r.returncode == 0, r.stderr
    check_converged(src, remote)


# --- F6: a black-holed link ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_blackholed_link_ends_with_exit_5_in_bounded_time(backend, net, ssh_client_env, tmp_path):
    timeout = 3
    src, remote = str(tmp_path / "src"), str(tmp_path / "remote")
    treegen.make_node(src, _shape(16 * MiB))
    before = snapshot(remote)
    net.set_fault(Fault("blackhole", after=6 * MiB, direction="up"))
    r, took = _cli(backend, ssh_client_env, "--timeout", str(timeout), "--retries", "1", src, f"{NET}:{remote}",
                   timeout=60)  # a hang fails here (TimeoutExpired)
    assert r.returncode == 5, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2 and "retry 1 of 1" in lines[0], r.stderr
    assert lines[1].startswith("drsync: error: connection to 127.0.0.1 stalled") and "--timeout 3" in lines[1], lines
    assert net.connections == 2 and all(link.fate == "blackholed" for link in net.links), net.links
    # per attempt: the stall noticed within --timeout of the last byte, plus (the retry) the old
    # agent giving the lock up after 2 x --timeout of silence; backoff 1-2 s; connecting, starting
    assert 2 * timeout <= took < 4 * timeout + 2 + 20, f"{took:.1f} s"  # (+20: a loaded 2-core CI machine)
    check(src, remote, before)


@pytest.mark.parametrize("command,backend", [("push", "asyncssh"), ("push", "paramiko"), ("pull", "asyncssh")])
def test_stalled_link_that_comes_back_is_resumed(command, backend, net, tmp_path, delays):
    size = 12 * MiB
    src, dst, src_spec, dst_spec = _ends(command, tmp_path)
    treegen.make_node(src, _shape(size))
    net.set_fault(Fault("blackhole", after=16 * MiB, direction="up" if command == "push" else "down", first=1))
    events = Recorder()
    options = drsync.Options(ssh_backend=backend, drsync_path=AGENT, timeout=3)
    start = time.monotonic()
    r = _bounded(lambda: getattr(drsync, command)(src_spec, dst_spec, options, events), 60)
    took = time.monotonic() - start
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert r.attempts == 2 and net.links[0].fate == "blackholed", net.links
    assert len(events.warnings) == 1 and "stalled" in events.warnings[0], events.warnings
    # a push's retry waits for the stalled connection's agent to give the lock up (2 x --timeout)
    assert took < 3 * 3 + 20, f"{took:.1f} s"  # expected ~8-10 s; the slack is for a loaded CI machine
    assert r.transferred.bytes < 2 * size - 8 * MiB, r.transferred  # resumed, not restarted
    check_converged(src, dst)


@pytest.mark.parametrize("backend", BACKENDS)
def test_slow_link_is_not_a_stall(backend, net, tmp_path, delays):
    src, remote = str(tmp_path / "src"), str(tmp_path / "remote")
    treegen.make_node(src, _shape(2 * MiB))
    net.set_fault(Fault("slow", rate=1 * MiB))
    events = Recorder()
    start = time.monotonic()
    r = drsync.push(src, f"{NET}:{remote}", drsync.Options(ssh_backend=backend, drsync_path=AGENT, timeout=1),
                    events)
    took = time.monotonic() - start
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert took > 3.5, f"{took:.1f} s: the link was not slow"  # longer than --timeout, many times over
    assert r.attempts == 1 and not delays and not events.warnings, events.warnings
    check_converged(src, remote)


# --- F9: permanent failures ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("failure", ["authentication", "host key"])
def test_permanent_failures_are_not_retried(failure, backend, net, sshd_server, ssh_client_env, tmp_path):
    dot = ssh_client_env / ".ssh"
    if failure == "authentication":  # a key the server does not know
        for name in ("id_ed25519", "id_ed25519.pub"):
            (dot / name).unlink()
        _keygen(dot / "id_ed25519", "stranger")
    else:  # known_hosts holds key B for the proxy's address; the server shows key A
        kh = dot / "known_hosts"
        lines = [ln for ln in kh.read_text().splitlines() if not ln.startswith(f"[127.0.0.1]:{net.port} ")]
        kh.write_text("\n".join([*lines, f"[127.0.0.1]:{net.port} {_pub_line(sshd_server.host_key_b_pub)}"]) + "\n")
    src, remote = str(tmp_path / "src"), str(tmp_path / "remote")
    treegen.make_node(src, _shape(4096))
    r, took = _cli(backend, ssh_client_env, "--retries", "3", src, f"{NET}:{remote}")
    assert r.returncode == 5, r.stderr
    line = assert_one_error_line(r.stderr)  # no retry warnings either
    assert ("authentication failed" if failure == "authentication" else "host key mismatch") in line, line
    # asyncssh makes a second connection to name the key it refused; no retry either way
    assert net.connections == (2 if failure == "host key" and backend == "asyncssh" else 1), net.links
    assert took < 10, f"{took:.1f} s"
    assert not os.path.lexists(remote)


def test_report_of_a_retried_run_is_one_json_object(net, ssh_client_env, tmp_path):
    # --json stays one object on stdout; the retry is a warning on stderr
    src, remote = str(tmp_path / "src"), str(tmp_path / "remote")
    treegen.make_node(src, _shape(8 * MiB))
    net.set_fault(Fault("reset", after=10 * MiB, direction="up", first=1))
    r, _ = _cli("paramiko", ssh_client_env, "--json", src, f"{NET}:{remote}")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["totals"]["bytes_to_send"] == 16 * MiB and doc["transferred"]["bytes"] < 16 * MiB, doc
    assert "retry 1 of 3" in r.stderr and "drsync: error" not in r.stderr, r.stderr
    assert net.connections == 2
