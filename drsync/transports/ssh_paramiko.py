"""The paramiko backend of ssh.py, and the verified paramiko client the SFTP fallback shares:
both trust exactly the keys the asyncssh backend trusts (known_hosts read by known_hosts.py)."""

from __future__ import annotations

import os

from ..errors import ConnectionFailure
from . import keepalive, preconnect
from .known_hosts import host_key_name, known_keys, record_key, revoked_keys
from .linkerrors import connect_failure, lost
from .ssh import CIPHERS, Channel, Target, changed_key, revoked_key, unknown_key


def _transport(sock, **kwargs):
    """SSHClient.connect's transport_factory: a paramiko Transport offering ssh.CIPHERS first (those
    paramiko has), then its other ciphers in its own order."""
    import paramiko

    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    options.ciphers = tuple(c for c in CIPHERS if c in offered) + tuple(c for c in offered if c not in CIPHERS)
    return transport


def paramiko_client(target: Target, accept_new: bool, timeout: float = 60.0):
    """A connected ``paramiko.SSHClient`` whose host key was verified against known_hosts (unknown:
    refused unless ``accept_new``; changed or @revoked: always refused), watched for silence longer
    than ``timeout`` (keepalive.Watchdog). Shared by the agent channel and the SFTP fallback, so
    both trust exactly the same keys."""
    import paramiko

    client = paramiko.SSHClient()
    # known_hosts is read by asyncssh's matcher: paramiko's own parser chokes on @revoked and
    # @cert-authority lines. Both backends then trust exactly the same keys.
    name = host_key_name(target.host, target.port)
    for ktype, blob in known_keys(target.known_hosts, target.host, target.port):
        try:
            client.get_host_keys().add(name, ktype, paramiko.PKey.from_type_string(ktype, blob))
        except Exception:  # a key type paramiko cannot load: it cannot match either
            pass
    client.set_missing_host_key_policy(_policy(target, accept_new))
    wait = keepalive.connect_timeout(timeout)
    try:
        # the `drsync` command's early TCP connection, or a new one
        sock = preconnect.take(target.host, target.port) or keepalive.open_socket(target.host, target.port, wait)
    except OSError as e:
        raise connect_failure(target.host, target.port, e) from None
    try:
        client.connect(target.host, port=target.port, username=target.user,
                       key_filename=[p for p in target.identities if os.path.exists(p)] or None,
                       look_for_keys=not target.identities_only, allow_agent=not target.identities_only,
                       sock=sock, timeout=wait, banner_timeout=wait, auth_timeout=wait,
                       transport_factory=_transport)
    except ConnectionFailure:
        client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        raise changed_key(target, e.key.get_name(), e.key.asbytes()) from None
    except paramiko.AuthenticationException as e:
        client.close()
        raise ConnectionFailure(f"authentication failed for {target.user or ''}@{target.host}:{target.port}: {e}") from None
    except (OSError, EOFError, paramiko.SSHException) as e:
        client.close()
        sock.close()
        raise connect_failure(target.host, target.port, e) from None
    transport = client.get_transport()
    try:  # a key both listed and @revoked: revoked wins, as in OpenSSH
        _refuserevoked_key(target, transport.get_remote_server_key())
    except ConnectionFailure:
        client.close()
        raise
    keepalive.watch(transport, sock, timeout)
    return client


class ParamikoChannel(Channel):
    def __init__(self, target: Target, command: str, accept_new: bool, timeout: float):
        import paramiko

        self.target = target
        client = paramiko_client(target, accept_new, timeout)
        transport = client.get_transport()
        self.client = client
        try:
            self.chan = transport.open_session()
            self.chan.exec_command(command)
        except (OSError, EOFError, paramiko.SSHException) as e:
            client.close()
            stalled = keepalive.stalled(transport)
            raise (lost(target.host, e, stalled=stalled) if stalled else
                   connect_failure(target.host, target.port, e)) from None

    def _read(self, n: int) -> bytes:
        return self.chan.recv(n)

    def _write(self, data: bytes) -> None:
        self.chan.sendall(data)

    def _stalled(self, error: BaseException | None = None) -> float | None:
        return keepalive.stalled(self.client.get_transport())

    def stderr(self) -> str:
        out = b""
        self.chan.settimeout(2)
        try:
            while self.chan.recv_stderr_ready() or not self.chan.exit_status_ready():
                b = self.chan.recv_stderr(65536)
                if not b:
                    break
                out += b
        except Exception:
            pass
        return out.decode("utf-8", "replace")

    def exit_status(self) -> int | None:
        if self.chan.exit_status_ready() or self.chan.status_event.wait(5):
            return self.chan.recv_exit_status()
        return None

    def close(self) -> None:
        try:
            self.chan.shutdown_write()
        except Exception:
            pass
        self.client.close()


def _refuserevoked_key(target: Target, key) -> None:
    if key.asbytes() in revoked_keys(target.known_hosts, target.host, target.port):
        raise revoked_key(target, key.get_name(), key.asbytes())


def _policy(target: Target, accept_new: bool):
    """paramiko's missing-host-key policy: refuse (OpenSSH's ``yes``), or with ``accept_new``
    record an unknown key (never a changed one: paramiko raises BadHostKeyException before asking
    a policy about a known host). Built here so that importing this module never imports paramiko."""
    import paramiko

    class Refuse(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            _refuserevoked_key(target, key)
            raise unknown_key(target, key.get_name(), key.asbytes())

    class AcceptNew(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            _refuserevoked_key(target, key)
            record_key(target.known_hosts, target.host, target.port, key.get_name(), key.asbytes())

    return AcceptNew() if accept_new else Refuse()
