"""Both backends ask for ssh.CIPHERS in that order, AES-GCM first (paramiko's own order starts with
aes128-ctr and a separate HMAC). Against the real sshd; a server without GCM still gets a connection."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from drsync.transports import ssh, ssh_paramiko
from drsync.transports.ssh import Target
from sshd import make_server


def _target(server) -> Target:
    return Target("drsync-test", server.host, server.port, server.user, (str(server.client_key),), True,
                  (str(server.known_hosts),))


def _ciphers(server) -> tuple[str, str]:
    client = ssh_paramiko.paramiko_client(_target(server), accept_new=False, timeout=30)
    try:
        t = client.get_transport()
        return t.local_cipher, t.remote_cipher
    finally:
        client.close()


def test_gcm_is_chosen_where_the_server_offers_it(sshd_server):
    assert ssh.CIPHERS[0] == "aes128-gcm@openssh.com"
    assert _ciphers(sshd_server) == (ssh.CIPHERS[0], ssh.CIPHERS[0])


def test_asyncssh_asks_for_the_same_ciphers(sshd_server, ssh_client_env):
    ch = ssh.open_channel(ssh.parse_spec("drsync-test:/"), backend="asyncssh",
                          drsync_path=f"{sys.executable} -m drsync", accept_new=False)
    try:
        assert ch.read(256).startswith(b"DRSYNC-AGENT/")
        got = (ch.conn.get_extra_info("send_cipher"), ch.conn.get_extra_info("recv_cipher"))
    finally:
        ch.close()
    assert got == (ssh.CIPHERS[0], ssh.CIPHERS[0])


def test_a_server_without_gcm_still_connects(tmp_path):
    server = make_server(Path(tempfile.mkdtemp(prefix="drsync-sshd-ctr-", dir=tmp_path)))
    server.extra_config = "Ciphers aes256-ctr,aes128-ctr\n"
    server.start("a")
    try:
        assert _ciphers(server) == ("aes128-ctr", "aes128-ctr")  # paramiko's own first choice
    finally:
        server.stop()
