"""SSH connections to a node: asyncssh (default) or paramiko, with verified host keys.

Both backends read ``~/.ssh/config`` (Host aliases, HostName, Port, User, IdentityFile,
IdentitiesOnly, UserKnownHostsFile), use the agent and keys, and verify the server's host key
against known_hosts. An unknown key is refused unless ``--accept-new`` (OpenSSH's
``StrictHostKeyChecking=accept-new``): then it is appended atomically and verified from then on. A
changed key is always refused. Every failure here is a ConnectionFailure (exit 5); a lost or
stalled link is its retryable kind, ConnectionLost (linkerrors, keepalive: ``--timeout``).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shlex
import threading
from dataclasses import dataclass

from ..errors import ConnectionFailure, DrsyncError, UsageError
from . import keepalive
from .known_hosts import fingerprint, host_key_name, known_host_entries, known_keys, record_key, revoked_keys  # noqa: F401
from .linkerrors import connect_failure, lost

_SPEC = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?:\[(?P<host6>[^\]/]+)\]|(?P<host>[^@/:\[\]]+))(?::(?P<port>\d+))?:(?P<path>.*)$")


@dataclass(frozen=True)
class NodeSpec:
    user: str | None
    host: str
    port: int | None
    path: str

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}:{self.path}"


def parse_spec(spec: str) -> NodeSpec:
    m = _SPEC.match(spec)
    if not m:
        raise UsageError(f"not a node spec: {spec!r} (want [user@]host[:port]:/path)")
    path = m.group("path") or "."
    return NodeSpec(m.group("user"), m.group("host6") or m.group("host"),
                    int(m.group("port")) if m.group("port") else None, path)


@dataclass(frozen=True)
class Target:
    """Where to connect after ~/.ssh/config has been applied."""

    alias: str
    host: str
    port: int
    user: str | None
    identities: tuple[str, ...]
    identities_only: bool
    known_hosts: tuple[str, ...]


def _config_path() -> str:
    return os.path.expanduser("~/.ssh/config")


def _quick_find_library(name: str) -> str | None:
    """ctypes.util.find_library without its fallbacks that spawn ldconfig, gcc and ld (tens of ms):
    a glob of the usual library directories, plus LD_LIBRARY_PATH."""
    import glob
    import sysconfig

    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    for base in ("/usr/local/lib", "/usr/lib", "/lib", "/usr/lib64", "/lib64"):
        dirs += [os.path.join(base, arch), base] if arch else [base]
    for d in dirs:
        # the versioned name first, like the soname find_library returns (a bare libX.so may be
        # a linker script)
        found = sorted(glob.glob(os.path.join(d, f"lib{name}.so.*"))) or glob.glob(os.path.join(d, f"lib{name}.so"))
        if found:
            return os.path.basename(found[0])
    return None


def import_asyncssh():
    """``import asyncssh``, without the ~20 ms its post-quantum shim spends at import time asking
    ctypes.util.find_library for liboqs (which runs ldconfig and gcc). liboqs is still found, and
    used, wherever it is installed in a library directory."""
    import sys

    if "asyncssh" in sys.modules:
        return sys.modules["asyncssh"]
    import ctypes.util

    real = ctypes.util.find_library
    ctypes.util.find_library = _quick_find_library
    try:
        import asyncssh
    finally:
        ctypes.util.find_library = real
    return asyncssh


def _asyncssh_lookup(path: str, host: str) -> dict:
    """``path`` applied to ``host`` by asyncssh's own parser, in paramiko's lookup() shape.

    The asyncssh backend uses it so that it never imports paramiko (~0.1 s of start-up). Its
    loader is not a documented API and its signature changed in 2.19: any surprise raises, and
    the caller falls back to paramiko's parser."""
    import getpass

    SSHClientConfig = import_asyncssh().config.SSHClientConfig

    cfg = SSHClientConfig.load(None, [path], False, False, False, getpass.getuser(), (), host, ())
    out: dict = {"identityfile": list(cfg.get("IdentityFile", ()) or ()),
                 "identitiesonly": "yes" if cfg.get("IdentitiesOnly") else "no"}
    for key, name in (("hostname", "Hostname"), ("port", "Port"), ("user", "User"),
                      ("userknownhostsfile", "UserKnownHostsFile")):
        value = cfg.get(name)
        if value is not None:
            out[key] = value
    return out


def _paramiko_lookup(path: str, host: str) -> dict:
    import paramiko

    return paramiko.SSHConfig.from_path(path).lookup(host)


def resolve(spec: NodeSpec, backend: str = "paramiko") -> Target:
    """Apply ~/.ssh/config to ``spec``: with asyncssh's parser for the asyncssh backend, else (or
    if that fails) paramiko's. Both follow OpenSSH's rules (first value wins, Host patterns,
    %-expansion); the tests run the same aliases through both backends."""
    cfg = {}
    path = _config_path()
    if os.path.exists(path):
        try:
            if backend != "asyncssh":
                raise LookupError
            cfg = _asyncssh_lookup(path, spec.host)
        except Exception:
            try:
                cfg = _paramiko_lookup(path, spec.host)
            except Exception as e:  # a broken config is the user's to fix: say so
                raise UsageError(f"cannot read {path}: {e}") from None
    host = cfg.get("hostname", spec.host)
    try:
        port = spec.port or int(cfg.get("port", 22))
    except ValueError:
        raise UsageError(f"cannot read {path}: bad Port {cfg.get('port')!r} for host {spec.host}") from None
    user = spec.user or cfg.get("user")
    identities = tuple(os.path.expanduser(p) for p in cfg.get("identityfile", []))
    only = str(cfg.get("identitiesonly", "no")).lower() == "yes"
    known = cfg.get("userknownhostsfile")
    files = tuple(os.path.expanduser(p) for p in (known.split() if isinstance(known, str) else known or [])) \
        or (os.path.expanduser("~/.ssh/known_hosts"),)
    return Target(spec.host, host, port, user, identities, only, files)


def _unknown(target: Target, key_type: str, blob: bytes) -> ConnectionFailure:
    return ConnectionFailure(
        f"host key for {host_key_name(target.host, target.port)} is not in known_hosts "
        f"({key_type} {fingerprint(blob)}); check it with the server's administrator, then add it "
        f"(ssh-keyscan, or run once with --accept-new)")


def _revoked(target: Target, key_type: str, blob: bytes) -> ConnectionFailure:
    return ConnectionFailure(
        f"host key for {host_key_name(target.host, target.port)} is marked @revoked in known_hosts "
        f"({key_type} {fingerprint(blob)}); refusing to connect")


def _mismatch(target: Target, key_type: str, blob: bytes) -> ConnectionFailure:
    return ConnectionFailure(
        f"host key mismatch for {host_key_name(target.host, target.port)}: the server offers {key_type} "
        f"{fingerprint(blob)}, which differs from known_hosts ({', '.join(target.known_hosts)}); "
        f"it may be an attack, or the key was changed: verify, then edit known_hosts")


WRITE_BUFFER = 256 << 10


class Channel:
    """A byte stream to the remote agent's stdin/stdout, plus its stderr and exit status.
    Backends implement ``_read``/``_write``; any failure there is a lost connection (exit 5,
    retryable), named as a stall when ``_stalled`` says the keepalives went unanswered."""

    target: Target
    wire_bytes = 0

    def _read(self, n: int) -> bytes: ...
    def _write(self, data: bytes) -> None: ...
    def _stalled(self, error: BaseException | None = None) -> float | None:
        """The --timeout when the link was dropped for silence (a stall, not a reset)."""

    def read(self, n: int) -> bytes:
        try:
            data = self._read(n)
        except DrsyncError:
            raise
        except Exception as e:
            raise lost(self.target.host, e, stalled=self._stalled(e)) from None
        if not data and self._stalled():
            raise lost(self.target.host, stalled=self._stalled())
        self.wire_bytes += len(data)
        return data

    def write(self, data: bytes) -> None:
        """Buffered: small frames (a file header, a 4 KiB file) go out together, so the cost of a
        call into the SSH library is paid per WRITE_BUFFER bytes, not per frame."""
        buf = self.__dict__.setdefault("_wbuf", bytearray())
        buf += data
        if len(buf) >= WRITE_BUFFER:
            self.flush()

    def flush(self) -> None:
        buf = self.__dict__.get("_wbuf")
        if not buf:
            return
        data = bytes(buf)
        buf.clear()
        self.wire_bytes += len(data)
        try:
            self._write(data)
        except DrsyncError:
            raise
        except Exception as e:
            raise lost(self.target.host, e, stalled=self._stalled(e)) from None

    def stderr(self) -> str: ...
    def exit_status(self) -> int | None: ...
    def close(self) -> None: ...


# --- asyncssh ------------------------------------------------------------------------------------
class AsyncsshChannel(Channel):
    """asyncssh runs on an event loop in a helper thread; this wraps it in blocking calls."""

    def __init__(self, target: Target, command: str, accept_new: bool, timeout: float):
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="drsync-asyncssh", daemon=True)
        self.thread.start()
        self.target = target
        self.timeout = timeout
        try:
            # connect and authenticate (connect_timeout), then start the agent (keepalives)
            bound = keepalive.connect_timeout(timeout) + timeout + 5 if timeout else None
            self.conn, self.proc = self._call(self._open(command, accept_new), bound)
        except concurrent.futures.TimeoutError as e:
            self._stop()
            raise lost(target.host, e, stalled=timeout) from None
        except BaseException:
            self._stop()
            raise

    def _call(self, coro, timeout=None):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self, command: str, accept_new: bool):
        asyncssh = import_asyncssh()

        t = self.target
        existing = [f for f in t.known_hosts if os.path.exists(f)]
        # Never None (that would disable verification): no file means no trusted key at all.
        kwargs = dict(port=t.port, known_hosts=existing[0] if existing else ([], [], []),
                      config=[], **keepalive.asyncssh_options(self.timeout),
                      encryption_algs=["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                                       "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr"],
                      compression_algs=None)
        if t.user:
            kwargs["username"] = t.user
        if t.identities:
            kwargs["client_keys"] = [p for p in t.identities if os.path.exists(p)]
            if t.identities_only:
                kwargs["agent_path"] = None
        try:
            conn = await asyncssh.connect(t.host, **kwargs)
        except asyncssh.HostKeyNotVerifiable:
            try:
                key = await asyncssh.get_server_host_key(t.host, t.port)
            except (OSError, asyncssh.Error) as e:
                raise connect_failure(t.host, t.port, e) from None
            blob = key.public_data
            ktype = key.get_algorithm()
            if blob in revoked_keys(t.known_hosts, t.host, t.port):
                raise _revoked(t, ktype, blob) from None
            if known_keys(t.known_hosts, t.host, t.port):
                raise _mismatch(t, ktype, blob) from None
            if not accept_new:
                raise _unknown(t, ktype, blob) from None
            record_key(t.known_hosts, t.host, t.port, ktype, blob)
            kwargs["known_hosts"] = t.known_hosts[0]
            try:
                conn = await asyncssh.connect(t.host, **kwargs)  # now verified against the recorded key
            except asyncssh.HostKeyNotVerifiable as e:
                raise ConnectionFailure(f"host key for {host_key_name(t.host, t.port)} still not verifiable "
                                        f"after recording it: {e}") from None
            except asyncssh.PermissionDenied as e:
                raise ConnectionFailure(f"authentication failed for {t.user or ''}@{t.host}:{t.port}: "
                                        f"{e.reason}") from None
            except (OSError, asyncssh.Error) as e:
                raise connect_failure(t.host, t.port, e) from None
        except asyncssh.PermissionDenied as e:
            raise ConnectionFailure(f"authentication failed for {t.user or ''}@{t.host}:{t.port}: {e.reason}") from None
        except (OSError, asyncssh.Error) as e:
            raise connect_failure(t.host, t.port, e) from None
        try:
            proc = await conn.create_process(command, encoding=None)
        except (OSError, asyncssh.Error) as e:
            conn.close()
            raise connect_failure(t.host, t.port, e) from None
        return conn, proc

    async def _send(self, data: bytes):
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    def _read(self, n: int) -> bytes:
        return self._call(self.proc.stdout.read(n))

    def _write(self, data: bytes) -> None:
        self._call(self._send(data))

    def _stalled(self, error: BaseException | None = None) -> float | None:
        return self.timeout if keepalive.asyncssh_stalled(error) else None

    def stderr(self) -> str:
        done = getattr(self, "_done", None)
        if done is not None:  # proc.wait() collected what was left of stderr
            return (done.stderr or b"").decode("utf-8", "replace")
        try:
            return self._call(self.proc.stderr.read(65536), 2).decode("utf-8", "replace")
        except Exception:
            return ""

    def exit_status(self) -> int | None:
        try:
            self._done = self._call(self.proc.wait(), 5)
        except Exception:
            return None
        return self.proc.exit_status

    def close(self) -> None:
        try:
            self.proc.stdin.write_eof()
        except Exception:
            pass
        try:
            self.conn.close()
            self._call(self.conn.wait_closed(), 5)
        except Exception:
            pass
        self._stop()

    def _stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# --- paramiko ------------------------------------------------------------------------------------
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
        sock = keepalive.open_socket(target.host, target.port, wait)
    except OSError as e:
        raise connect_failure(target.host, target.port, e) from None
    try:
        client.connect(target.host, port=target.port, username=target.user,
                       key_filename=[p for p in target.identities if os.path.exists(p)] or None,
                       look_for_keys=not target.identities_only, allow_agent=not target.identities_only,
                       sock=sock, timeout=wait, banner_timeout=wait, auth_timeout=wait)
    except ConnectionFailure:
        client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        raise _mismatch(target, e.key.get_name(), e.key.asbytes()) from None
    except paramiko.AuthenticationException as e:
        client.close()
        raise ConnectionFailure(f"authentication failed for {target.user or ''}@{target.host}:{target.port}: {e}") from None
    except (OSError, EOFError, paramiko.SSHException) as e:
        client.close()
        sock.close()
        raise connect_failure(target.host, target.port, e) from None
    transport = client.get_transport()
    try:  # a key both listed and @revoked: revoked wins, as in OpenSSH
        _refuse_revoked(target, transport.get_remote_server_key())
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


def _refuse_revoked(target: Target, key) -> None:
    if key.asbytes() in revoked_keys(target.known_hosts, target.host, target.port):
        raise _revoked(target, key.get_name(), key.asbytes())


def _policy(target: Target, accept_new: bool):
    """paramiko's missing-host-key policy: refuse (OpenSSH's ``yes``), or with ``accept_new``
    record an unknown key (never a changed one: paramiko raises BadHostKeyException before asking
    a policy about a known host). Built here so that importing this module never imports paramiko."""
    import paramiko

    class Refuse(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            _refuse_revoked(target, key)
            raise _unknown(target, key.get_name(), key.asbytes())

    class AcceptNew(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            _refuse_revoked(target, key)
            record_key(target.known_hosts, target.host, target.port, key.get_name(), key.asbytes())

    return AcceptNew() if accept_new else Refuse()


def open_channel(spec: NodeSpec, *, backend: str, drsync_path: str, accept_new: bool,
                 timeout: float = 60.0) -> Channel:
    """Connect to ``spec``'s host and start ``<drsync_path> agent`` there; ``timeout``: --timeout."""
    target = resolve(spec, backend)
    command = f"{drsync_path} agent"
    if backend == "paramiko":
        return ParamikoChannel(target, command, accept_new, timeout)
    if backend != "asyncssh":
        raise UsageError(f"unknown --ssh-backend {backend!r} (asyncssh or paramiko)")
    return AsyncsshChannel(target, command, accept_new, timeout)


def quote(path: str) -> str:
    return shlex.quote(path)
