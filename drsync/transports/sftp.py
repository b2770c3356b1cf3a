"""The SFTP fallback (DESIGN §2): a node on a host where drsync is not installed.

`connect_node` opens one when the agent's handshake fails because drsync is missing on the remote
(exit 127, "not found"), and says so once. It always uses paramiko's SFTPClient (whatever
``--ssh-backend`` says), over a connection whose host key is verified exactly as the agent
channel's (`ssh_paramiko.paramiko_client`).

Source half (pull): `sftp_walk` reads a sizes-only manifest; `SftpSource` reads the files.
Destination half (push): `sftp_publish.SftpDestination` runs DESIGN §4's publish protocol over SFTP.
Shared request pipelining and error mapping: `sftp_wire`.

Limits of the fallback (docs/ssh.md): no lock on the destination (do not run two pushes to the same
SFTP-only host at once), no resume of a partial file, ``--state-dir`` not supported, and SFTP gives
no O_NOFOLLOW: directories are lstat-checked before use, which leaves a window a local attacker on
the remote could race.
"""

from __future__ import annotations

import os
import posixpath
import stat

from .. import layout
from .. import manifest as mf
from ..errors import (
    ConnectionFailure,
    DestinationIOError,
    DrsyncError,
    SourceIOError,
    UnsafeInputError,
    UsageError,
)
from ..events import Events
from ..fetch import SourceChanged, fetch_each
from ..plan import Options
from ..scan import DatasetManifest
from .sftp_publish import SftpDestination
from .sftp_walk import _is_dataset, _Walker
from .sftp_wire import CHUNK, _is_conn_error, _lost, _SSHException
from .ssh import parse_spec, resolve
from .ssh_paramiko import paramiko_client

STATE = layout.STATE




class SftpSource:
    """Reads real files of one dataset over SFTP (pipelined reads: paramiko's prefetch)."""

    def __init__(self, node: SftpNode, drs: str):
        self.node = node
        self.drs = drs

    def fetch_batch(self, items: list[tuple[mf.Entry, int, int]]) -> list:
        return fetch_each(self.fetch, items)

    def fetch(self, e: mf.Entry, fd: int, offset: int) -> int:
        sftp = self.node.sftp
        path = self.node.path(self.drs, layout.FILES, e.dir, e.file)
        try:
            f = sftp.open(path, "rb")
        except FileNotFoundError:
            raise SourceChanged("source file vanished during transfer") from None
        except OSError as err:
            if _is_conn_error(err, sftp):
                raise _lost(self.node.parsed.host, err) from None
            raise SourceIOError(f"cannot read: {err.strerror or err}", dataset=self.drs,
                                path=f"{layout.FILES}/{e.dir}/{e.file}") from None
        with f:
            st = f.stat()
            if not stat.S_ISREG(st.st_mode or 0) or st.st_size != e.size:
                raise SourceChanged("source file size changed since it was scanned")
            pos = offset
            if offset < e.size:
                f.seek(offset)
                f.prefetch(e.size)
                while pos < e.size:
                    b = f.read(min(CHUNK, e.size - pos))
                    if not b:
                        raise SourceChanged("source file shrank during transfer")
                    os.pwrite(fd, b, pos)
                    pos += len(b)
            return st.st_mode


class SftpNode:
    """A node on a host without drsync, read and written over SFTP."""

    def __init__(self, spec: str, options: Options, events: Events | None = None):
        self.spec = spec
        self.parsed = parse_spec(spec)
        self.options = options
        self.events = events or Events()
        if options.state_dir is not None:
            raise UsageError("--state-dir is not supported by the SFTP fallback (no drsync on the remote)")
        self.client = paramiko_client(resolve(self.parsed), options.accept_new, options.timeout)
        try:
            self.sftp = self.client.open_sftp()
        except (OSError, EOFError, _SSHException) as e:
            self.client.close()
            raise ConnectionFailure(f"{self.parsed.host}: cannot start SFTP: {e or type(e).__name__}") from None
        self.root = self.parsed.path
        self._walked: dict[str, DatasetManifest] = {}

    def path(self, drs: str, *parts: str) -> str:
        base = self.root if drs in (".", "") else posixpath.join(self.root, drs)
        return posixpath.join(base, *parts) if parts else base

    def _guard(self, fn, *args):
        """Run ``fn``; a lost connection is exit 5, a read error on the source exit 6."""
        try:
            return fn(*args)
        except DrsyncError:
            raise
        except _SSHException as e:
            raise _lost(self.parsed.host, e) from None
        except OSError as e:
            if _is_conn_error(e, self.sftp):
                raise _lost(self.parsed.host, e) from None
            raise SourceIOError(f"cannot read: {getattr(e, 'strerror', None) or e}", path=getattr(e, "filename", None)
                                or self.root) from None
        except EOFError as e:
            raise _lost(self.parsed.host, e) from None

    # --- source half --------------------------------------------------------------------------------
    def datasets(self) -> list[str]:
        return self._guard(self._datasets)

    def _datasets(self) -> list[str]:
        try:
            a = self.sftp.stat(self.root)
        except FileNotFoundError:
            raise UsageError("source does not exist", path=self.spec) from None
        if not stat.S_ISDIR(a.st_mode):
            raise UsageError("not a directory", path=self.spec)
        return ["." if p == "" else p for p in self._find(self.root, "")]

    def _find(self, path: str, prefix: str) -> list[str]:
        try:
            listing = {a.filename: a for a in self.sftp.listdir_attr(path)}
        except UnicodeDecodeError:
            return []
        if _is_dataset(listing):
            return [prefix]
        found = []
        for name in sorted(listing):
            if name.startswith(".") or not stat.S_ISDIR(listing[name].st_mode):
                continue
            try:
                layout.check_name(name)
            except UnsafeInputError:
                continue
            found.extend(self._find(posixpath.join(path, name), f"{prefix}/{name}" if prefix else name))
        return found

    def source_manifest(self, drs: str, *, save: bool) -> DatasetManifest:
        got = self._walked.get(drs)
        if got is None:
            got = self._walked[drs] = self._guard(self._walk_source, drs)
        return got

    def _walk_source(self, drs: str) -> DatasetManifest:
        w = _Walker(self.sftp, self.path(drs), drs, self.events)
        top = w.listdir("", ".")
        versions = w.versions(top)
        man = DatasetManifest(drs, mf.Index(), sizes_only=True)
        for v in layout.sort_versions(versions):
            entries = w.version(v)
            man._entries[v] = entries
            man.index.versions[v] = mf.size_info(entries)
        latest, is_dir = w.latest(top, versions)
        man.index = mf.Index(latest, man.index.versions)
        man.latest_is_dir = is_dir
        return man

    def source(self, drs: str) -> SftpSource:
        return SftpSource(self, drs)

    def fetch_batch(self, drs: str):
        src = self.source(drs)
        return lambda items: self._guard(src.fetch_batch, items)

    def linker(self, drs: str):
        return None

    def release_source(self, drs: str) -> None:
        self._walked.pop(drs, None)

    # --- destination half ---------------------------------------------------------------------------
    def _walk_to(self, drs: str, create: bool) -> str | None:
        """The dataset's remote path; no component below the root may be a symlink (exit 4)."""
        root = self.root
        try:
            a = self.sftp.stat(root)
            if not stat.S_ISDIR(a.st_mode):
                raise UsageError("not a directory", path=self.spec)
        except FileNotFoundError:
            if not create:
                return None
            parts = [p for p in root.split("/") if p]
            cur = "/" if root.startswith("/") else ""
            for p in parts:
                cur = posixpath.join(cur, p) if cur else p
                try:
                    self.sftp.stat(cur)
                except FileNotFoundError:
                    self.sftp.mkdir(cur)
        cur = root
        for part in ([] if drs in (".", "") else drs.split("/")):
            layout.check_name(part, "dataset path", dataset=drs)
            cur = posixpath.join(cur, part)
            try:
                a = self.sftp.lstat(cur)
            except FileNotFoundError:
                if not create:
                    return None
                self.sftp.mkdir(cur)
                continue
            if not stat.S_ISDIR(a.st_mode):
                raise UnsafeInputError("unsafe destination: a symlink or non-directory where a directory was "
                                       "expected", dataset=drs, path=cur)
        return cur

    def _dest_manifest(self, drs: str, dspath: str) -> tuple[DatasetManifest, set[str]]:
        """The stored manifest where valid, the rest walked sizes-only."""
        w = _Walker(self.sftp, dspath, drs, self.events)
        top = w.listdir("", ".")
        on_disk = w.versions(top)
        index, stored = None, set()
        sa = top.get(STATE)
        if sa is not None and stat.S_ISDIR(sa.st_mode) and not sa.st_mode & 0o022:
            mdir = posixpath.join(dspath, STATE, "manifest")
            try:
                with self.sftp.open(posixpath.join(mdir, "index.json"), "rb") as f:
                    index = mf.index_from_json(mf.loads(f.read()), drs)
                stored = {n[1:-5] for n in self.sftp.listdir(mdir) if n.startswith("v") and n.endswith(".json")}
            except (OSError, ValueError, UnsafeInputError, TypeError, AttributeError) as e:
                if isinstance(e, OSError) and _is_conn_error(e, self.sftp):
                    raise
                index = None
        kept = {v: i for v, i in (index.versions.items() if index else ()) if v in on_disk and v in stored}
        man = DatasetManifest(drs, mf.Index())
        walked = set()
        versions = dict(kept)
        for v in layout.sort_versions(on_disk - kept.keys()):
            entries = w.version(v)
            man._entries[v] = entries
            versions[v] = mf.size_info(entries)
            walked.add(v)
        latest, is_dir = w.latest(top, on_disk)
        loose = w.loose(on_disk, index.loose if index else {})
        man.index = mf.Index(latest, versions, loose)
        man.latest_is_dir = is_dir
        man.sizes_only = bool(walked)
        man._loader = self._loader(drs, mdir=posixpath.join(dspath, STATE, "manifest"))
        return man, walked

    def _loader(self, drs: str, mdir: str):
        def load(version: str) -> list[mf.Entry]:
            def read():
                with self.sftp.open(posixpath.join(mdir, f"v{version}.json"), "rb") as f:
                    return mf.entries_from_json(mf.loads(f.read()), version, drs)
            try:
                return self._guard(read)
            except (ValueError, TypeError, SourceIOError):
                raise UnsafeInputError("manifest entry list missing or damaged", dataset=drs,
                                       path=f"v{version}") from None
        return load

    def peek_destination(self, drs: str) -> DatasetManifest | None:
        def peek():
            dspath = self._walk_to(drs, create=False)
            if dspath is None:
                return None
            return self._dest_manifest(drs, dspath)[0]
        return self._guard_dest(peek, drs)

    def open_destination(self, drs: str) -> SftpDestination:
        def open_():
            dspath = self._walk_to(drs, create=True)
            sess = SftpDestination(self, drs, DatasetManifest(drs, mf.Index()), set())
            a = sess._lstat(sess.state)
            if a is not None and (not stat.S_ISDIR(a.st_mode) or a.st_mode & 0o022):
                raise UnsafeInputError("unsafe destination: state directory is not a private directory",
                                       dataset=drs, path=sess.state)
            sess._ensure_dir(sess.state, STATE, 0o700)
            sess.recover()
            sess.manifest, sess.walked = self._dest_manifest(drs, dspath)
            return sess
        return self._guard_dest(open_, drs)

    def _guard_dest(self, fn, drs: str):
        try:
            return fn()
        except DrsyncError:
            raise
        except (OSError, EOFError, _SSHException) as e:
            if _is_conn_error(e, self.sftp):
                raise _lost(self.parsed.host, e) from None
            raise DestinationIOError(getattr(e, "strerror", None) or str(e), dataset=drs,
                                     path=getattr(e, "filename", None) or self.path(drs)) from None

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.client.close()
