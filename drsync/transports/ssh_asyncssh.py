"""The asyncssh backend of ssh.py (the default): an event loop on a helper thread, wrapped in
blocking calls; host keys verified against the same known_hosts entries as the paramiko backend."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading

from ..errors import ConnectionFailure
from . import keepalive, preconnect, quickack
from .known_hosts import host_key_name, known_keys, record_key, revoked_keys
from .linkerrors import connect_failure, lost
from .ssh import CIPHERS, Channel, Target, changed_key, revoked_key, unknown_key


def _library_dirs() -> list[str]:
    import sysconfig

    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    for base in ("/usr/local/lib", "/usr/lib", "/lib", "/usr/lib64", "/lib64"):
        dirs += [os.path.join(base, arch), base] if arch else [base]
    return dirs


_listings: dict[str, list[str]] = {}


def _listing(d: str) -> list[str]:
    """The ``lib*.so*`` names in directory ``d``, listed once per process (asyncssh asks for
    several libraries, and a distribution's library directory holds a thousand names)."""
    got = _listings.get(d)
    if got is None:
        try:
            got = sorted(n for n in os.listdir(d) if n.startswith("lib") and ".so" in n)
        except OSError:
            got = []
        _listings[d] = got
    return got


def _quick_find_library(name: str) -> str | None:
    """ctypes.util.find_library without its fallbacks that spawn ldconfig, gcc and ld (tens of ms):
    a look at the usual library directories, plus LD_LIBRARY_PATH."""
    versioned, bare = f"lib{name}.so.", f"lib{name}.so"
    for d in _library_dirs():
        names = _listing(d)
        # the versioned name first, like the soname find_library returns (a bare libX.so may be
        # a linker script)
        found = [n for n in names if n.startswith(versioned)] or [n for n in names if n == bare]
        if found:
            return found[0]
    return None


# asyncssh's X.509 certificate support (cryptography.x509: ~12 ms of import). OpenSSH has no X.509
# host keys or user certificates, and asyncssh is written to run without the module (it then
# reports X.509 as unavailable), so a run that is about to talk to sshd does not load it.
_X509 = "asyncssh.crypto.x509"


def _quiet_deprecated_algorithms() -> None:
    """Keep cryptography's deprecation warnings about algorithms asyncssh still supports (DSA in
    cryptography 51: raised as soon as asyncssh names the DSA classes, at import time) off
    stderr. They concern asyncssh's own code, which a drsync user cannot act on, and drsync's
    errors are one line each on stderr. Only warnings raised from asyncssh's modules are silenced."""
    import warnings

    try:
        from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:  # an older or newer cryptography without the class: nothing to quiet
        return
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)")


def import_asyncssh():
    """``import asyncssh``, without two costs a run against OpenSSH gains nothing from: the ~20 ms
    its post-quantum shim spends at import time asking ctypes.util.find_library for liboqs (which
    runs ldconfig and gcc; liboqs is still found, and used, wherever it is installed in a library
    directory), and its X.509 module (``_X509``, blocked the documented way: None in sys.modules)."""
    import sys

    if "asyncssh" in sys.modules:
        return sys.modules["asyncssh"]
    import ctypes.util

    _quiet_deprecated_algorithms()
    real = ctypes.util.find_library
    ctypes.util.find_library = _quick_find_library
    blocked = sys.modules.setdefault(_X509, None) is None
    try:
        import asyncssh
    finally:
        ctypes.util.find_library = real
        if blocked and sys.modules.get(_X509, 0) is None:
            del sys.modules[_X509]
    return asyncssh


def asyncssh_lookup(path: str, host: str) -> dict:
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


_QUICK_ACK_CLIENT = None


def _quick_ack_client(asyncssh):
    global _QUICK_ACK_CLIENT
    if _QUICK_ACK_CLIENT is None:
        _QUICK_ACK_CLIENT = quickack.asyncssh_client(asyncssh.SSHClient)
    return _QUICK_ACK_CLIENT


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
                      encryption_algs=list(CIPHERS),
                      compression_algs=None, client_factory=_quick_ack_client(asyncssh))
        if t.user:
            kwargs["username"] = t.user
        if t.identities:
            kwargs["client_keys"] = [p for p in t.identities if os.path.exists(p)]
            if t.identities_only:
                kwargs["agent_path"] = None
        sock = preconnect.take(t.host, t.port)  # the `drsync` command's early TCP connection
        try:
            conn = await asyncssh.connect(t.host, **kwargs, **({"sock": sock} if sock is not None else {}))
        except asyncssh.HostKeyNotVerifiable:
            try:
                key = await asyncssh.get_server_host_key(t.host, t.port)
            except (OSError, asyncssh.Error) as e:
                raise connect_failure(t.host, t.port, e) from None
            blob = key.public_data
            ktype = key.get_algorithm()
            if blob in revoked_keys(t.known_hosts, t.host, t.port):
                raise revoked_key(t, ktype, blob) from None
            if known_keys(t.known_hosts, t.host, t.port):
                raise changed_key(t, ktype, blob) from None
            if not accept_new:
                raise unknown_key(t, ktype, blob) from None
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
        # the thread asyncio started to resolve the host name would outlive the loop and keep the
        # `drsync` process from its quick exit (cli.leave): ~10 ms of teardown on every run
        with contextlib.suppress(Exception):
            self._call(self.loop.shutdown_default_executor(), 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
