"""The sshd fixture starts a real OpenSSH server that real clients can (and must verifiably) reach."""

from __future__ import annotations

import asyncio
import os
import subprocess

import asyncssh
import paramiko
import pytest


def _run_ssh(argv, timeout=30):
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)


async def _asyncssh_echo(server, known_hosts):
    async with asyncssh.connect(
        server.host,
        port=server.port,
        username=server.user,
        client_keys=[str(server.client_key)],
        known_hosts=str(known_hosts),
        agent_path=None,
        config=None,
        connect_timeout=10,
    ) as conn:
        result = await conn.run("echo ok", check=True)
        return result.stdout


def asyncssh_echo(server, known_hosts):
    return asyncio.run(asyncio.wait_for(_asyncssh_echo(server, known_hosts), 30))


def paramiko_echo(server, known_hosts):
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            server.host,
            port=server.port,
            username=server.user,
            key_filename=str(server.client_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
        )
        _, stdout, _ = client.exec_command("echo ok", timeout=10)
        out = stdout.read().decode()
        assert stdout.channel.recv_exit_status() == 0
        return out
    finally:
        client.close()


def test_fixture_fields(sshd_server):
    s = sshd_server
    assert s.host == "127.0.0.1"
    assert s.running
    assert oct(os.stat(s.client_key).st_mode & 0o777) == "0o600"
    line = s.known_hosts.read_text()
    assert line.startswith(f"[127.0.0.1]:{s.port} ssh-ed25519 ")
    assert line.split()[2] == s.host_key_a_pub.read_text().split()[1]
    assert s.empty_known_hosts.read_text() == ""
    assert s.host_key_a_pub.read_text() != s.host_key_b_pub.read_text()
    assert "Host drsync-test" in s.ssh_config.read_text()
    cfg = s.sshd_config.read_text()
    for needed in ("PermitUserEnvironment no", "PasswordAuthentication no", "ListenAddress 127.0.0.1"):
        assert needed in cfg


def test_openssh_client_via_alias(sshd_server):
    r = _run_ssh(sshd_server.ssh_argv("true"))
    assert r.returncode == 0, r.stderr
    r = _run_ssh(sshd_server.ssh_argv("echo", "ok"))
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


def test_openssh_client_rejects_unknown_host(sshd_server):
    r = _run_ssh(
        [
            "ssh",
            "-F",
            str(sshd_server.ssh_config),
            "-o",
            f"UserKnownHostsFile={sshd_server.empty_known_hosts}",
            "drsync-test",
            "true",
        ]
    )
    assert r.returncode == 255
    assert "Host key verification failed" in r.stderr


def test_asyncssh_connects(sshd_server):
    assert asyncssh_echo(sshd_server, sshd_server.known_hosts) == "ok\n"


def test_paramiko_connects(sshd_server):
    assert paramiko_echo(sshd_server, sshd_server.known_hosts) == "ok\n"


def test_asyncssh_rejects_unknown_host(sshd_server):
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncssh_echo(sshd_server, sshd_server.empty_known_hosts)


def test_paramiko_rejects_unknown_host(sshd_server):
    with pytest.raises(paramiko.SSHException):
        paramiko_echo(sshd_server, sshd_server.empty_known_hosts)


def test_changed_host_key_is_rejected(sshd_server):
    port, pid_a = sshd_server.port, sshd_server.pid
    with sshd_server.changed_host_key():
        assert sshd_server.current_host_key == "b"
        assert sshd_server.port == port and sshd_server.pid != pid_a
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            asyncssh_echo(sshd_server, sshd_server.known_hosts)
        with pytest.raises(paramiko.BadHostKeyException):
            paramiko_echo(sshd_server, sshd_server.known_hosts)
        r = _run_ssh(sshd_server.ssh_argv("true"))
        assert r.returncode == 255
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr
        # The server is really up with key B: a known_hosts for B is accepted.
        assert asyncssh_echo(sshd_server, sshd_server.known_hosts_b) == "ok\n"
        assert paramiko_echo(sshd_server, sshd_server.known_hosts_b) == "ok\n"
    assert sshd_server.current_host_key == "a"
    assert asyncssh_echo(sshd_server, sshd_server.known_hosts) == "ok\n"
    assert paramiko_echo(sshd_server, sshd_server.known_hosts) == "ok\n"


def test_client_env_home(ssh_client_env, sshd_server):
    home = ssh_client_env
    assert os.environ["HOME"] == str(home)
    assert "SSH_AUTH_SOCK" not in os.environ
    dot_ssh = home / ".ssh"
    assert os.path.expanduser("~/.ssh") == str(dot_ssh)
    assert oct(os.stat(dot_ssh / "id_ed25519").st_mode & 0o777) == "0o600"
    assert (dot_ssh / "known_hosts").read_text() == sshd_server.known_hosts.read_text()
    # OpenSSH reads ~ from the passwd entry, so point it at the config explicitly.
    r = _run_ssh(["ssh", "-F", str(dot_ssh / "config"), "drsync-test", "echo", "ok"])
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


def test_client_env_asyncssh_defaults(ssh_client_env):
    """With no explicit options asyncssh uses ~/.ssh/{config,known_hosts,id_ed25519} from $HOME."""

    async def go():
        async with asyncssh.connect("drsync-test", agent_path=None, connect_timeout=10) as conn:
            return (await conn.run("echo ok", check=True)).stdout

    assert asyncio.run(asyncio.wait_for(go(), 30)) == "ok\n"
