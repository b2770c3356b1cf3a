"""~/.ssh/config is applied the same way by both backends' parsers, and the asyncssh path does
not pay for importing paramiko."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from drsync.transports import ssh

CONFIG = """\
Host alias1
    HostName 127.0.0.1
    Port 2222
    User alice
    IdentityFile ~/.ssh/id_a
    IdentityFile %d/.ssh/id_%u
    IdentitiesOnly yes
    UserKnownHostsFile ~/.ssh/kh1 ~/.ssh/kh2

Host *.example.org
    User bob
    Port 2200

Host *
    IdentityFile ~/.ssh/id_default
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    dot = tmp_path / ".ssh"
    dot.mkdir(mode=0o700)
    (dot / "config").write_text(CONFIG)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("host", ["alias1", "x.example.org", "plain"])
def test_both_parsers_resolve_alike(home, host):
    spec = ssh.parse_spec(f"{host}:/data")
    assert ssh.resolve(spec, "asyncssh") == ssh.resolve(spec, "paramiko")


def test_alias_is_applied(home):
    t = ssh.resolve(ssh.parse_spec("alias1:/data"), "asyncssh")
    assert (t.host, t.port, t.user, t.identities_only) == ("127.0.0.1", 2222, "alice", True)
    assert t.identities[0] == str(home / ".ssh" / "id_a")
    assert t.known_hosts == (str(home / ".ssh" / "kh1"), str(home / ".ssh" / "kh2"))
    # the command line wins over the config, as with ssh(1)
    t = ssh.resolve(ssh.parse_spec("carol@alias1:2022:/data"), "asyncssh")
    assert (t.user, t.port) == ("carol", 2022)


def test_broken_config_is_a_usage_error(home):
    (home / ".ssh" / "config").write_text("Host a\n    Port notanumber\n")
    from drsync.errors import UsageError

    with pytest.raises(UsageError, match="cannot read"):
        ssh.resolve(ssh.parse_spec("a:/data"), "asyncssh")


def test_asyncssh_path_never_imports_paramiko(home):
    code = ("import sys; from drsync.transports import ssh; "
            "ssh.resolve(ssh.parse_spec('alias1:/d'), 'asyncssh'); "
            "print('paramiko' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, HOME=str(home)))
    assert out.stdout.strip() == "False"


def test_asyncssh_import_finds_libraries_without_spawning(monkeypatch):
    import ctypes.util

    from drsync.transports.ssh_asyncssh import _quick_find_library

    # what asyncssh's liboqs lookup gets: the same answer as find_library for libraries that exist
    # (a loadable soname), None for those that do not, and no subprocess either way
    import subprocess

    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("spawned a process"))
    for name in ("c", "z"):
        found = _quick_find_library(name)
        assert found is not None and found.startswith(f"lib{name}.so.")
        ctypes.CDLL(found)
    assert _quick_find_library("drsync-no-such-library") is None


def test_asyncssh_is_imported_without_its_x509_module():
    """X.509 is of no use against OpenSSH: import_asyncssh leaves cryptography.x509 unloaded, asyncssh
    knows it (no X.509 algorithms offered), and the block does not outlive the import."""
    code = ("import sys; from drsync.transports.ssh_asyncssh import import_asyncssh, _X509; a = import_asyncssh(); "
            "print('cryptography.x509' in sys.modules, a.public_key._x509_available, "
            "a.connection.get_default_x509_certificate_algs(), _X509 in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "[]", "False"]
