"""A real OpenSSH ``sshd`` on 127.0.0.1 for tests (never a mock).

Fixtures (registered from tests/conftest.py):

* ``sshd_server`` (session scope) -> :class:`SshdServer`
* ``ssh_client_env`` (function scope) -> path of a throwaway HOME whose ``~/.ssh``
  is set up for the ``drsync-test`` alias.

Everything lives in a temporary directory that is removed at session end; the sshd
process is stopped at session end even when tests fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"  # sshd insists on being started by absolute path
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
PRIVSEP_DIR = "/run/sshd"
HOST = "127.0.0.1"
ALIAS = "drsync-test"
START_TIMEOUT = 10.0


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    os.chmod(path, 0o600)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _pub_line(pub_path: Path) -> str:
    """``ssh-ed25519 AAAA...`` (type and base64 only, comment dropped)."""
    kind, b64 = pub_path.read_text().split()[:2]
    return f"{kind} {b64}"


def known_hosts_line(port: int, pub_path: Path) -> str:
    """An OpenSSH known_hosts line for 127.0.0.1 on a non-standard port."""
    return f"[{HOST}]:{port} {_pub_line(pub_path)}\n"


def client_config_text(port: int, user: str, identity: Path, known_hosts: Path) -> str:
    return (
        f"Host {ALIAS}\n"
        f"    HostName {HOST}\n"
        f"    Port {port}\n"
        f"    User {user}\n"
        f'    IdentityFile "{identity}"\n'
        f"    IdentitiesOnly yes\n"
        f'    UserKnownHostsFile "{known_hosts}"\n'
        f"    GlobalKnownHostsFile /dev/null\n"
        f"    StrictHostKeyChecking yes\n"
        f"    PasswordAuthentication no\n"
        f"    KbdInteractiveAuthentication no\n"
        f"    BatchMode yes\n"
        f"    ConnectTimeout 10\n"
    )


@dataclasses.dataclass
class SshdServer:
    """A running sshd on 127.0.0.1. All paths are absolute."""

    host: str
    port: int
    user: str
    tmpdir: Path
    client_key: Path  # private key, ed25519, no passphrase, mode 0600
    client_pub: Path
    host_key_a: Path  # private host keys (A: normal, B: "changed" key)
    host_key_b: Path
    host_key_a_pub: Path
    host_key_b_pub: Path
    known_hosts: Path  # "[127.0.0.1]:PORT ssh-ed25519 ..." for key A
    known_hosts_b: Path  # the same for key B
    empty_known_hosts: Path  # an existing, empty file
    ssh_config: Path  # OpenSSH client config with the `drsync-test` alias
    sshd_config: Path
    authorized_keys: Path
    log: Path  # sshd's stderr (-e), appended across restarts
    alias: str = ALIAS
    current_host_key: str = "a"
    extra_config: str = ""  # more sshd_config lines (e.g. a narrower Ciphers), appended as they are
    _proc: subprocess.Popen | None = dataclasses.field(default=None, repr=False)

    # -- process control ---------------------------------------------------------

    def _write_config(self, which: str) -> None:
        key = self.host_key_a if which == "a" else self.host_key_b
        self.sshd_config.write_text(
            f"ListenAddress {HOST}\n"
            f"Port {self.port}\n"
            f"HostKey {key}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            f"PidFile {self.tmpdir / 'sshd.pid'}\n"
            "Subsystem sftp internal-sftp\n"
            "PermitRootLogin yes\n"
            "PermitUserEnvironment no\n"
            "AllowTcpForwarding no\n"
            "AllowAgentForwarding no\n"
            "X11Forwarding no\n"
            "PrintMotd no\n"
            "UseDNS no\n"
            "LogLevel ERROR\n"
            + self.extra_config
        )

    def start(self, which: str = "a") -> None:
        """Start sshd with host key ``which`` ('a' or 'b'); wait until it accepts."""
        if which not in ("a", "b"):
            raise ValueError(f"host key must be 'a' or 'b', not {which!r}")
        if self._proc is not None:
            raise RuntimeError("sshd already running")
        if not os.path.isdir(PRIVSEP_DIR):
            os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
            os.chmod(PRIVSEP_DIR, 0o755)
        self._write_config(which)
        check = subprocess.run([SSHD, "-t", "-f", str(self.sshd_config)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t rejected the config:\n{check.stderr}")
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.sshd_config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.current_host_key = which
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"sshd exited with {rc} at start:\n{self._log_since(offset)}")
            if self._banner_ok():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"sshd did not accept connections on {HOST}:{self.port} within "
                    f"{START_TIMEOUT}s:\n{self._log_since(offset)}"
                )
            time.sleep(0.05)

    def _banner_ok(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as s:
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop sshd (listener and any per-connection children it still has)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        # Wait until the port is closed so a restart cannot race the old listener.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._banner_ok():
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def use_host_key(self, which: str) -> None:
        """Restart sshd with host key 'a' or 'b' (same port). No-op if already so."""
        if which == self.current_host_key and self.running:
            return
        self.stop()
        self.start(which)

    @contextlib.contextmanager
    def changed_host_key(self) -> Iterator[SshdServer]:
        """Within the block the server presents host key B; key A is restored after."""
        self.use_host_key("b")
        try:
            yield self
        finally:
            self.use_host_key("a")

    def ssh_argv(self, *command: str) -> list[str]:
        """argv for running ``command`` over the OpenSSH client via the alias."""
        return ["ssh", "-F", str(self.ssh_config), ALIAS, *command]


def make_server(tmpdir: Path) -> SshdServer:
    """Generate keys/configs in ``tmpdir`` (not started)."""
    tmpdir = Path(tmpdir).resolve()
    user = getpass.getuser()
    port = _free_port()
    host_key_a = tmpdir / "ssh_host_ed25519_key_a"
    host_key_b = tmpdir / "ssh_host_ed25519_key_b"
    client_key = tmpdir / "id_ed25519"
    _keygen(host_key_a, "drsync-test-host-a")
    _keygen(host_key_b, "drsync-test-host-b")
    _keygen(client_key, "drsync-test-client")
    client_pub = client_key.with_name(client_key.name + ".pub")
    authorized_keys = tmpdir / "authorized_keys"
    authorized_keys.write_text(_pub_line(client_pub) + "\n")
    os.chmod(authorized_keys, 0o600)
    host_key_a_pub = host_key_a.with_name(host_key_a.name + ".pub")
    host_key_b_pub = host_key_b.with_name(host_key_b.name + ".pub")
    known_hosts = tmpdir / "known_hosts"
    known_hosts.write_text(known_hosts_line(port, host_key_a_pub))
    known_hosts_b = tmpdir / "known_hosts_b"
    known_hosts_b.write_text(known_hosts_line(port, host_key_b_pub))
    empty_known_hosts = tmpdir / "known_hosts_empty"
    empty_known_hosts.write_text("")
    ssh_config = tmpdir / "ssh_config"
    ssh_config.write_text(client_config_text(port, user, client_key, known_hosts))
    return SshdServer(
        host=HOST,
        port=port,
        user=user,
        tmpdir=tmpdir,
        client_key=client_key,
        client_pub=client_pub,
        host_key_a=host_key_a,
        host_key_b=host_key_b,
        host_key_a_pub=host_key_a_pub,
        host_key_b_pub=host_key_b_pub,
        known_hosts=known_hosts,
        known_hosts_b=known_hosts_b,
        empty_known_hosts=empty_known_hosts,
        ssh_config=ssh_config,
        sshd_config=tmpdir / "sshd_config",
        authorized_keys=authorized_keys,
        log=tmpdir / "sshd.log",
    )


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[SshdServer]:
    if not os.access(SSHD, os.X_OK):
        pytest.skip(f"{SSHD} not installed")
    tmpdir = Path(tempfile.mkdtemp(prefix="drsync-sshd-"))
    server = None
    try:
        server = make_server(tmpdir)
        server.start("a")
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture
def ssh_client_env(sshd_server: SshdServer, tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """A throwaway HOME whose ~/.ssh knows the `drsync-test` alias (host key A).

    Note: the OpenSSH ``ssh`` binary finds ``~/.ssh/config`` through the passwd
    entry, not $HOME, so with it pass ``-F $HOME/.ssh/config``; Python libraries
    (asyncssh, paramiko, os.path.expanduser) follow $HOME.
    """
    # Make sure a test that switched to key B and crashed does not leak that state.
    sshd_server.use_host_key("a")
    home = tmp_path / "home"
    dot_ssh = home / ".ssh"
    dot_ssh.mkdir(parents=True)
    os.chmod(home, 0o755)
    os.chmod(dot_ssh, 0o700)
    key = dot_ssh / "id_ed25519"
    shutil.copyfile(sshd_server.client_key, key)
    os.chmod(key, 0o600)
    shutil.copyfile(sshd_server.client_pub, dot_ssh / "id_ed25519.pub")
    os.chmod(dot_ssh / "id_ed25519.pub", 0o644)
    known_hosts = dot_ssh / "known_hosts"
    shutil.copyfile(sshd_server.known_hosts, known_hosts)
    os.chmod(known_hosts, 0o644)
    config = dot_ssh / "config"
    config.write_text(client_config_text(sshd_server.port, sshd_server.user, key, known_hosts))
    os.chmod(config, 0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("SSH_AGENT_PID", raising=False)
    yield home
