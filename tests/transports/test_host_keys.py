"""FAULTS F1-F4, F9: host keys, authentication and refused connections, both backends, via the CLI.

Every failure is exit 5 with one ``drsync: error:`` line; nothing is written at the destination
(its directory is not even created) and known_hosts is never changed except by --accept-new
recording an *unknown* key.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import os
import re
import socket
import stat
import subprocess
from pathlib import Path

import pytest

import treegen
from sshd import SSH_KEYGEN
from transport_helpers import (AGENT, ALIAS, BACKENDS, assert_identical, assert_one_error_line, run_cli, ssh_env,
                               wait_agents_gone)

DRSYNC_PKG = Path(__file__).resolve().parents[2] / "drsync"


def _fingerprint(pub: Path) -> str:
    blob = base64.b64decode(pub.read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _key_b64(pub: Path) -> str:
    return pub.read_text().split()[1]


@pytest.fixture
def src(tmp_path):
    path = str(tmp_path / "src")
    treegen.make_node(path, treegen.Shape(datasets=1, variables=1, files=3, versions=2))
    return path


def _push(backend, home, src, dst, *flags, spec=None):
    return run_cli("push", "--ssh-backend", backend, "--drsync-path", AGENT, *flags, src,
                   spec or f"{ALIAS}:{dst}", env=ssh_env(home), timeout=120)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_host_key_refused_then_accept_new(backend, sshd_server, ssh_client_env, src, tmp_path):
    home = ssh_client_env
    kh = home / ".ssh" / "known_hosts"
    kh.write_bytes(b"")
    dst = tmp_path / "dst"

    r = _push(backend, home, src, dst)
    assert r.returncode == 5, r.stderr
    line = assert_one_error_line(r.stderr)
    name = f"[127.0.0.1]:{sshd_server.port}"
    assert line.startswith(f"drsync: error: host key for {name} is not in known_hosts ("), line
    assert f"ssh-ed25519 {_fingerprint(sshd_server.host_key_a_pub)}" in line, line
    assert not os.path.lexists(dst)
    assert kh.read_bytes() == b""

    # --accept-new: the key is recorded in OpenSSH format, mode 0600, and the push goes through
    r = _push(backend, home, src, dst, "--accept-new")
    assert r.returncode == 0, r.stderr
    assert kh.read_text() == f"{name} ssh-ed25519 {_key_b64(sshd_server.host_key_a_pub)}\n"
    assert stat.S_IMODE(os.stat(kh).st_mode) == 0o600
    assert_identical(src, dst)
    assert not [f for f in os.listdir(kh.parent) if "tmp" in f]  # no temp file left beside it

    # now verified, without --accept-new; the file is not touched again
    recorded = kh.read_bytes()
    r = _push(backend, home, src, dst)
    assert r.returncode == 0, r.stderr
    assert kh.read_bytes() == recorded
    # OpenSSH itself accepts what was recorded
    r = subprocess.run(["ssh", "-F", str(home / ".ssh" / "config"), ALIAS, "true"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_known_hosts_file(backend, sshd_server, ssh_client_env, src, tmp_path):
    home = ssh_client_env
    kh = home / ".ssh" / "known_hosts"
    kh.unlink()
    dst = tmp_path / "dst"
    r = _push(backend, home, src, dst)
    assert r.returncode == 5, r.stderr
    assert "is not in known_hosts" in assert_one_error_line(r.stderr)
    assert not os.path.lexists(kh) and not os.path.lexists(dst)
    r = _push(backend, home, src, dst, "--accept-new")
    assert r.returncode == 0, r.stderr
    assert kh.read_text().startswith(f"[127.0.0.1]:{sshd_server.port} ssh-ed25519 ")
    assert stat.S_IMODE(os.stat(kh).st_mode) == 0o600


@pytest.mark.parametrize("backend", BACKENDS)
def test_hashed_known_hosts_entry_is_honoured(backend, sshd_server, ssh_client_env, src, tmp_path):
    home = ssh_client_env
    kh = home / ".ssh" / "known_hosts"
    subprocess.run([SSH_KEYGEN, "-H", "-f", str(kh)], check=True, capture_output=True)
    assert kh.read_text().startswith("|1|")
    hashed = kh.read_bytes()
    r = _push(backend, home, src, tmp_path / "dst")
    assert r.returncode == 0, r.stderr
    assert kh.read_bytes() == hashed
    with sshd_server.changed_host_key():  # and a hashed entry for another key is a mismatch
        r = _push(backend, home, src, tmp_path / "dst2", "--accept-new")
        assert r.returncode == 5, r.stderr
        assert "host key mismatch" in assert_one_error_line(r.stderr)
    assert kh.read_bytes() == hashed


@pytest.mark.parametrize("backend", BACKENDS)
def test_changed_host_key_refused_even_with_accept_new(backend, sshd_server, ssh_client_env, src, tmp_path):
    home = ssh_client_env
    kh = home / ".ssh" / "known_hosts"
    before = kh.read_bytes()
    assert _key_b64(sshd_server.host_key_a_pub) in before.decode()
    dst = tmp_path / "dst"
    try:
        sshd_server.use_host_key("b")
        for flags in ((), ("--accept-new",)):
            r = _push(backend, home, src, dst, *flags)
            assert r.returncode == 5, (flags, r.stderr)
            line = assert_one_error_line(r.stderr)
            assert line.startswith("drsync: error: host key mismatch"), line
            assert _fingerprint(sshd_server.host_key_b_pub) in line, line
            assert not os.path.lexists(dst)
            assert kh.read_bytes() == before
    finally:
        sshd_server.use_host_key("a")
    # with key A back, the same HOME works
    r = _push(backend, home, src, dst)
    assert r.returncode == 0, r.stderr
    assert_identical(src, dst)


@pytest.mark.parametrize("backend", BACKENDS)
def test_revoked_host_key_refused_even_with_accept_new(backend, sshd_server, ssh_client_env, src, tmp_path):
    """``@revoked`` in known_hosts: the key is refused, and --accept-new must not re-admit it."""
    home = ssh_client_env
    kh = home / ".ssh" / "known_hosts"
    kh.write_text(f"@revoked [127.0.0.1]:{sshd_server.port} ssh-ed25519 {_key_b64(sshd_server.host_key_a_pub)}\n")
    before = kh.read_bytes()
    dst = tmp_path / "dst"
    for flags in ((), ("--accept-new",)):
        r = _push(backend, home, src, dst, *flags)
        assert r.returncode == 5, (flags, r.stderr)
        line = assert_one_error_line(r.stderr)
        assert "revoked" in line, line
        assert not os.path.lexists(dst)
        assert kh.read_bytes() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_authentication_failure(backend, sshd_server, ssh_client_env, src, tmp_path):
    home = ssh_client_env
    key = home / ".ssh" / "id_ed25519"  # the config's IdentityFile (IdentitiesOnly yes)
    key.unlink()
    (home / ".ssh" / "id_ed25519.pub").unlink()
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "stranger", "-f", str(key)], check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    kh_before = (home / ".ssh" / "known_hosts").read_bytes()
    dst = tmp_path / "dst"
    r = _push(backend, home, src, dst)
    assert r.returncode == 5, r.stderr
    line = assert_one_error_line(r.stderr)
    assert "authentication failed" in line, line
    assert not os.path.lexists(dst)
    assert (home / ".ssh" / "known_hosts").read_bytes() == kh_before


@pytest.mark.parametrize("backend", BACKENDS)
def test_connection_refused(backend, ssh_client_env, src, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dst = tmp_path / "dst"
    # a refused connection is retried (FAULTS F5, tests/faults/test_network.py); here: at once
    r = _push(backend, ssh_client_env, src, dst, "--retries", "0", spec=f"127.0.0.1:{port}:{dst}")
    assert r.returncode == 5, r.stderr
    line = assert_one_error_line(r.stderr)
    assert str(port) in line, line
    assert not os.path.lexists(dst)


def test_no_agent_left_behind(sshd_server):
    """The failures above leave no remote agent running."""
    wait_agents_gone(sshd_server, 10)


# --- F4: static audit ----------------------------------------------------------------------------
def _sources():
    out = sorted(DRSYNC_PKG.rglob("*.py"))
    assert any(p.name == "ssh.py" for p in out)
    return out


def test_audit_never_disables_host_key_checks():
    offences = []
    calls_to_connect = 0
    for path in _sources():
        text = path.read_text()
        tree = ast.parse(text, str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "known_hosts" and isinstance(kw.value, ast.Constant) and kw.value.value is None:
                        offences.append(f"{path}:{node.lineno}: known_hosts=None")
                func = node.func
                fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if fname == "connect" and "asyncssh" in ast.unparse(func):
                    calls_to_connect += 1
                    kws = {kw.arg for kw in node.keywords}
                    if "known_hosts" not in kws and None not in kws:
                        offences.append(f"{path}:{node.lineno}: asyncssh.connect without known_hosts")
            if isinstance(node, (ast.Name, ast.Attribute)):
                name = node.id if isinstance(node, ast.Name) else node.attr
                if name in ("AutoAddPolicy", "WarningPolicy"):
                    offences.append(f"{path}:{node.lineno}: {name}")
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(k, ast.Constant) and k.value == "known_hosts" and \
                            isinstance(v, ast.Constant) and v.value is None:
                        offences.append(f"{path}:{node.lineno}: {{'known_hosts': None}}")
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and \
                            t.slice.value == "known_hosts" and isinstance(node.value, ast.Constant) and \
                            node.value.value is None:
                        offences.append(f"{path}:{node.lineno}: [...]['known_hosts'] = None")
        for pat in (r"AutoAddPolicy", r"WarningPolicy", r"known_hosts\s*=\s*None"):
            for m in re.finditer(pat, text):
                offences.append(f"{path}: text {m.group(0)!r}")
    assert calls_to_connect >= 1, "the audit did not find the asyncssh.connect calls it is meant to check"
    assert not offences, offences


def test_audit_paramiko_uses_a_refusing_policy():
    """The paramiko path sets a missing-host-key policy that raises, never one that accepts."""
    text = (DRSYNC_PKG / "transports" / "ssh_paramiko.py").read_text()
    assert "set_missing_host_key_policy" in text
    from drsync.errors import ConnectionFailure
    from drsync.transports import ssh, ssh_paramiko

    target = ssh.Target("h", "127.0.0.1", 2222, None, (), False, ("/nonexistent/known_hosts",))

    class Key:
        def get_name(self):
            return "ssh-ed25519"

        def asbytes(self):
            return b"\0\0\0\x0bssh-ed25519" + b"\0\0\0 " + bytes(32)

    with pytest.raises(ConnectionFailure, match="not in known_hosts"):
        ssh_paramiko._policy(target, accept_new=False).missing_host_key(None, "[127.0.0.1]:2222", Key())
