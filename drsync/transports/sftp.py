"""The SFTP fallback (DESIGN §2): a node on a host where drsync is not installed.

`connect_node` opens one when the agent's handshake fails because drsync is missing on the remote
(exit 127, "not found"), and says so once. It always uses paramiko's SFTPClient (whatever
``--ssh-backend`` says), over a connection whose host key is verified exactly as the agent
channel's (`ssh.paramiko_client`).

Source half (pull): the tree is walked with one ``listdir_attr`` per directory and a readlink per
link (readlinks pipelined), every name and link checked as strictly as a local scan (exit 4).
Digests are unknown: the manifest is *sizes only* (entries carry ``mf.UNKNOWN_DIGEST``), the plan
compares names, link targets and sizes, and the local receiver hashes what it received and
records that.

Destination half (push): the publish protocol of DESIGN §4 in the same order, with SFTP requests:
files uploaded into ``.drsync/partial/`` (pipelined writes, digest of the bytes sent checked
against the source, ``fsync@openssh.com`` when offered), renamed into ``files/<dir>/`` with
``posix-rename@openssh.com``; ``v<ver>`` built in ``.drsync/staging/`` (symlinks pipelined) and
renamed into place (never over an existing one); ``latest`` made in staging and renamed over; then
the drsync-manifest/1 files, each written to a temp name and renamed, so that a later run with a
real agent trusts them. The destination manifest is read from ``.drsync/manifest/`` when valid;
versions it does not cover are walked sizes-only (and left out of the index written back, so an
agent rescans them).

Limits of the fallback (docs/ssh.md): no lock on the destination (do not run two pushes to the same
SFTP-only host at once), no resume of a partial file, ``--state-dir`` not supported, and SFTP gives
no O_NOFOLLOW: directories are lstat-checked before use, which leaves a window a local attacker on
the remote could race.
"""

from __future__ import annotations

import os
import posixpath
import socket
import stat

import xxhash

from .. import layout
from .. import manifest as mf
from ..errors import (
    ConflictError,
    ConnectionFailure,
    DestinationIOError,
    DrsyncError,
    IntegrityError,
    SourceIOError,
    UnsafeInputError,
    UsageError,
)
from ..events import Events
from ..plan import Options
from ..publish import LATEST_TMP, Received, Receiver, SourceChanged, fetch_each
from ..scan import DatasetManifest
from .ssh import paramiko_client, parse_spec, resolve

try:
    from paramiko import SSHException as _SSHException
except ImportError:  # pragma: no cover - paramiko is a dependency
    class _SSHException(Exception):
        pass

CHUNK = 256 << 10
WINDOW = 64  # requests in flight when pipelining readlink / symlink
STATE = layout.STATE


def _lost(host: str, e: BaseException) -> ConnectionFailure:
    return ConnectionFailure(f"connection to {host} lost: {e or type(e).__name__}")


def _is_conn_error(e: BaseException, sftp) -> bool:
    """A lost connection (exit 5), as opposed to an SFTP status error (which paramiko raises as a
    plain IOError, sometimes without an errno): decided by the transport, not the exception type."""
    import paramiko

    if isinstance(e, (EOFError, paramiko.SSHException, socket.timeout)):
        return True
    try:
        return not sftp.get_channel().get_transport().is_active()
    except (AttributeError, OSError):
        return True


class _Collector:
    """Receives the replies of pipelined requests (paramiko calls ``_async_response``)."""

    def __init__(self):
        self.got: dict[int, tuple[int, object]] = {}

    def _async_response(self, t, msg, num):
        self.got[num] = (t, msg)


def _pipelined(sftp, requests: list[tuple]) -> list[tuple[int, object]]:
    """Send ``(CMD, *args)`` requests with up to WINDOW in flight on one SFTPClient (one thread) and
    return their replies in order. Uses paramiko's request machinery, as its own prefetch does."""
    col = _Collector()
    nums: list[int] = []
    pending = 0
    i = 0
    while i < len(requests) or pending:
        while i < len(requests) and pending < WINDOW:
            cmd, *args = requests[i]
            nums.append(sftp._async_request(col, cmd, *args))
            pending += 1
            i += 1
        before = len(col.got)
        sftp._read_response()
        pending -= len(col.got) - before
    return [col.got[n] for n in nums]


def _check(sftp, reply) -> object:
    from paramiko.sftp import CMD_STATUS

    t, msg = reply
    if t == CMD_STATUS:
        sftp._convert_status(msg)  # raises IOError for anything but OK
    return msg


class _Walker:
    """Reads one dataset's tree over SFTP, as strictly as scan.py reads a local one."""

    def __init__(self, sftp, dspath: str, drs: str, events: Events):
        self.sftp = sftp
        self.dspath = dspath
        self.drs = drs
        self.events = events
        self._files: dict[str, object] | None = None
        self._real: dict[str, dict[str, object]] = {}

    def p(self, *parts: str) -> str:
        return posixpath.join(self.dspath, *parts)

    def listdir(self, rel: str, where: str) -> dict[str, object]:
        try:
            return {a.filename: a for a in self.sftp.listdir_attr(self.p(rel) if rel else self.dspath)}
        except UnicodeDecodeError:
            raise UnsafeInputError("a name is not valid UTF-8", dataset=self.drs, path=where or ".") from None

    def versions(self, top: dict[str, object]) -> set[str]:
        """list_versions over SFTP: version dirs, refusing malformed ones and links."""
        drs = self.drs
        versions = set()
        for name, a in top.items():
            if layout.is_version_dir(name):
                if not stat.S_ISDIR(a.st_mode):
                    raise UnsafeInputError("non-canonical layout: version is not a real directory", dataset=drs,
                                           path=name)
                versions.add(name[1:])
            elif layout.looks_like_version_dir(name):
                raise UnsafeInputError("malformed version directory name", dataset=drs, path=name)
            elif name == layout.FILES and not stat.S_ISDIR(a.st_mode):
                raise UnsafeInputError("unsafe layout: files is not a real directory", dataset=drs, path=name)
        numbers: dict[int, str] = {}
        for v in versions:
            if int(v) in numbers:
                raise UnsafeInputError("two version directories with the same number", dataset=drs, path=f"v{v}")
            numbers[int(v)] = v
        return versions

    def files_dirs(self) -> dict[str, object]:
        if self._files is None:
            try:
                self._files = self.listdir(layout.FILES, layout.FILES)
            except FileNotFoundError:
                self._files = {}
        return self._files

    def real_files(self, dirname: str) -> dict[str, object] | None:
        """The real files of ``files/<dirname>`` (one listdir_attr), None if not a real directory."""
        got = self._real.get(dirname)
        if got is None:
            a = self.files_dirs().get(dirname)
            if a is None or not stat.S_ISDIR(a.st_mode):
                return None
            got = self._real[dirname] = self.listdir(f"{layout.FILES}/{dirname}", f"{layout.FILES}/{dirname}")
        return got

    def version(self, version: str) -> list[mf.Entry]:
        """The entries of ``v<version>``, sizes only (digest unknown)."""
        from paramiko.sftp import CMD_READLINK

        drs = self.drs
        vname = f"v{version}"
        links: list[tuple[str, str, str]] = []
        vlist = self.listdir(vname, vname)
        for name in sorted(vlist):
            where = f"{vname}/{name}"
            _component(name, "variable name", drs, where)
            if not stat.S_ISDIR(vlist[name].st_mode):
                raise UnsafeInputError("non-canonical layout: version directory holds a non-directory",
                                       dataset=drs, path=where)
            nlist = self.listdir(f"{vname}/{name}", where)
            for file in sorted(nlist):
                fwhere = f"{where}/{file}"
                _component(file, "file name", drs, fwhere)
                if not stat.S_ISLNK(nlist[file].st_mode):
                    raise UnsafeInputError("non-canonical layout: version entry is not a symlink", dataset=drs,
                                           path=fwhere)
                links.append((name, file, self.p(vname, name, file)))
        replies = _pipelined(self.sftp, [(CMD_READLINK, path) for _, _, path in links])
        entries = []
        for (name, file, _), reply in zip(links, replies):
            where = f"{vname}/{name}/{file}"
            msg = _check(self.sftp, reply)
            if msg.get_int() != 1:
                raise UnsafeInputError("unreadable link", dataset=drs, path=where)
            try:
                target = msg.get_string().decode("utf-8")
            except UnicodeDecodeError:
                raise UnsafeInputError("link target is not valid UTF-8", dataset=drs, path=where) from None
            dirname = layout.parse_link(target, name, file, version, dataset=drs)
            real = self.real_files(dirname)
            a = real.get(file) if real is not None else None
            if a is None:
                raise UnsafeInputError("broken link: target missing or not a real file", dataset=drs, path=where)
            if not stat.S_ISREG(a.st_mode):
                raise UnsafeInputError("link target is not a regular file", dataset=drs, path=where)
            entries.append(mf.Entry(name, file, dirname, a.st_size, int(a.st_mtime or 0) * 10**9,
                                    mf.UNKNOWN_DIGEST))
        return entries

    def latest(self, top: dict[str, object], versions: set[str]) -> tuple[str | None, bool]:
        """scan.read_latest over SFTP."""
        drs = self.drs
        a = top.get(layout.LATEST)
        if a is None:
            return None, False
        if stat.S_ISDIR(a.st_mode):
            self.events.warning(f"{drs}: `latest` is a directory (old layout): read as the newest version, never written")
            return (layout.sort_versions(versions)[-1] if versions else None), True
        if not stat.S_ISLNK(a.st_mode):
            raise UnsafeInputError("non-canonical layout: `latest` is neither a symlink nor a directory",
                                   dataset=drs, path=layout.LATEST)
        target = self.sftp.readlink(self.p(layout.LATEST))
        if not isinstance(target, str):
            raise UnsafeInputError("`latest` is not valid UTF-8", dataset=drs, path=layout.LATEST)
        version = target[1:] if target.startswith("v") else None
        if target.startswith("/"):
            head, _, tail = target.rstrip("/").rpartition("/")
            try:
                same = self.sftp.normalize(head) == self.sftp.normalize(self.dspath)
            except OSError:
                same = False
            if same and layout.is_version_dir(tail):
                self.events.warning(f"{drs}: `latest` is an absolute link; read as {tail}")
                version = tail[1:]
        if version is None or not layout.is_version_dir(f"v{version}") or version not in versions:
            raise UnsafeInputError(f"`latest` does not name a version of this dataset: {target!r}",
                                   dataset=drs, path=layout.LATEST)
        return version, False

    def loose(self, versions: set[str], known: dict[tuple[str, str], mf.Loose]) -> dict[tuple[str, str], mf.Loose]:
        """Real files in files/ dirs of versions not published (an interrupted run's work); the
        digest is the recorded one if size and mtime match, else unknown (compared by size)."""
        out: dict[tuple[str, str], mf.Loose] = {}
        for dirname, a in self.files_dirs().items():
            name, _, version = dirname.rpartition("_")
            if not name or version in versions or not stat.S_ISDIR(a.st_mode):
                continue
            try:
                layout.split_files_dir(dirname)
            except UnsafeInputError:
                continue
            for file, fa in (self.real_files(dirname) or {}).items():
                if not stat.S_ISREG(fa.st_mode):
                    continue
                mtime = int(fa.st_mtime or 0) * 10**9
                old = known.get((dirname, file))
                if old is not None and old.size == fa.st_size and old.mtime_ns // 10**9 == mtime // 10**9:
                    out[(dirname, file)] = old
                else:
                    out[(dirname, file)] = mf.Loose(fa.st_size, mtime, mf.UNKNOWN_DIGEST)
        return out


def _component(name: str, what: str, drs: str, where: str) -> None:
    try:
        layout.check_name(name, what, dataset=drs)
    except UnsafeInputError as e:
        e.path = where
        raise


def _is_dataset(listing: dict[str, object]) -> bool:
    has_files = has_version = False
    for name, a in listing.items():
        if name == layout.FILES and (stat.S_ISDIR(a.st_mode) or stat.S_ISLNK(a.st_mode)):
            has_files = True
        elif layout.is_version_dir(name) and stat.S_ISDIR(a.st_mode):
            has_version = True
    return has_files and has_version


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


class SftpDestination:
    """A publish session on one dataset of an SFTP-only host (no lock: see the module doc)."""

    def __init__(self, node: SftpNode, drs: str, manifest: DatasetManifest, walked: set[str]):
        self.node = node
        self.sftp = node.sftp
        self.drs = drs
        self.manifest = manifest
        self.walked = walked  # versions known by size only: never written into the index
        self.ds = node.path(drs)
        self.state = posixpath.join(self.ds, STATE)
        self._fsync = node.options.fsync

    # --- helpers ------------------------------------------------------------------------------------
    def _err(self, e: OSError, where: str) -> DrsyncError:
        if _is_conn_error(e, self.sftp):
            return _lost(self.node.parsed.host, e)
        return DestinationIOError(getattr(e, "strerror", None) or str(e), dataset=self.drs, path=where)

    def _lstat(self, path: str):
        try:
            return self.sftp.lstat(path)
        except FileNotFoundError:
            return None

    def _ensure_dir(self, path: str, where: str, mode: int = 0o755) -> None:
        a = self._lstat(path)
        if a is None:
            self.sftp.mkdir(path, mode)
            if mode != 0o755:
                self.sftp.chmod(path, mode)
        elif not stat.S_ISDIR(a.st_mode):
            raise UnsafeInputError("unsafe destination: a symlink or non-directory where a directory was expected",
                                   dataset=self.drs, path=where)

    def remove_tree(self, path: str) -> None:
        """Remove ``path`` and below, never following a link."""
        a = self._lstat(path)
        if a is None:
            return
        if stat.S_ISDIR(a.st_mode):
            for sub in self.sftp.listdir_attr(path):
                self.remove_tree(posixpath.join(path, sub.filename))
            self.sftp.rmdir(path)
        else:
            self.sftp.remove(path)

    def _write_atomic(self, directory: str, name: str, data: bytes) -> None:
        tmp = posixpath.join(directory, f".{name}.tmp")
        with self.sftp.open(tmp, "wb") as f:
            f.set_pipelined(True)
            f.write(data)
            self._sync(f)
        self.sftp.posix_rename(tmp, posixpath.join(directory, name))

    def _sync(self, f) -> None:
        """``fsync@openssh.com`` on an open file, when the server offers it (else said once)."""
        if not self._fsync:
            return
        from paramiko.sftp import CMD_EXTENDED

        f.flush()
        try:
            self.sftp._request(CMD_EXTENDED, "fsync@openssh.com", f.handle)
        except OSError as e:
            if _is_conn_error(e, self.sftp):
                raise
            self._fsync = False
            self.node.events.warning(f"{self.node.parsed.host}: the SFTP server cannot fsync; "
                                     "files are flushed when the server decides")

    def recover(self) -> None:
        """Remove a crashed run's staging leftovers and manifest temp files."""
        staging = posixpath.join(self.state, "staging")
        if self._lstat(staging) is not None:
            for a in self.sftp.listdir_attr(staging):
                self.remove_tree(posixpath.join(staging, a.filename))
        mdir = posixpath.join(self.state, "manifest")
        if self._lstat(mdir) is not None:
            for name in self.sftp.listdir(mdir):
                if name.startswith(".") and ".tmp" in name:
                    self.sftp.remove(posixpath.join(mdir, name))

    # --- step 1: files -------------------------------------------------------------------------------
    def receive(self, files: list[mf.Entry], src, drs: str, link=None) -> Received:
        try:
            return self._receive(files, src, drs)
        except (EOFError, _SSHException) as e:
            raise _lost(self.node.parsed.host, e) from None

    def _receive(self, files: list[mf.Entry], src, drs: str) -> Received:
        got = Received()
        if not files:
            return got
        source = src.source(drs)
        partial = posixpath.join(self.state, "partial")
        fdir = posixpath.join(self.ds, layout.FILES)
        try:
            self._ensure_dir(partial, f"{STATE}/partial", 0o700)
            self._ensure_dir(fdir, layout.FILES)
            made = {a.filename: a for a in self.sftp.listdir_attr(fdir)}
        except OSError as e:
            raise self._err(e, layout.FILES) from e
        throttle = _throttle(self.node.options.bwlimit)
        for e in files:
            where = f"{layout.FILES}/{e.dir}/{e.file}"
            ppath = posixpath.join(partial, Receiver.partial_name(e))
            reason = None
            for _ in range(2):  # one retry from scratch, as the local receiver
                try:
                    reason = self._upload(source, e, ppath, got, throttle)
                except OSError as err:
                    raise self._err(err, where) from err
                if reason is None:
                    break
            if reason is not None:
                try:
                    self.sftp.remove(ppath)
                except OSError:
                    pass
                raise IntegrityError(f"{reason} (after one retry)", dataset=self.drs, path=where)
            try:
                a = made.get(e.dir)
                if a is None:
                    self.sftp.mkdir(posixpath.join(fdir, e.dir))
                    made[e.dir] = self.sftp.lstat(posixpath.join(fdir, e.dir))
                elif not stat.S_ISDIR(a.st_mode):
                    raise UnsafeInputError("unsafe destination: not a real directory", dataset=self.drs,
                                           path=f"{layout.FILES}/{e.dir}")
                target = posixpath.join(fdir, e.dir, e.file)
                if self._lstat(target) is not None:
                    # already there (an interrupted run): keep it if it is the same bytes
                    if self._digest(target) != e.digest:
                        raise ConflictError("a different file is already published here", dataset=self.drs,
                                            path=where)
                    self.sftp.remove(ppath)
                else:
                    self.sftp.posix_rename(ppath, target)
            except OSError as err:
                raise self._err(err, where) from err
            got.files += 1
            self.node.events.file_done(self.drs, where)
        return got

    def _upload(self, source, e: mf.Entry, ppath: str, got: Received, throttle) -> str | None:
        """Send one file into its partial; None when its bytes matched the source's digest."""
        try:
            fd = source.open(e)
        except SourceChanged as why:
            return str(why)
        h = xxhash.xxh3_128()
        sent = 0
        try:
            mode = os.fstat(fd).st_mode
            with self.sftp.open(ppath, "wb") as f:
                f.set_pipelined(True)
                while sent < e.size:
                    b = os.pread(fd, min(CHUNK, e.size - sent), sent)
                    if not b:
                        break
                    throttle(len(b))
                    f.write(b)
                    h.update(b)
                    sent += len(b)
                    self.node.events.advance(len(b))
                if os.pread(fd, 1, sent):
                    sent = -1  # grew
                self._sync(f)
        finally:
            os.close(fd)
        got.bytes += max(sent, 0)
        if sent != e.size:
            return "source file size changed during transfer"
        if h.hexdigest() != e.digest:
            return "digest mismatch: the source changed during transfer"
        self.sftp.chmod(ppath, mode & 0o777)
        secs = e.mtime_ns // 10**9
        self.sftp.utime(ppath, (secs, secs))
        if self.sftp.stat(ppath).st_size != e.size:
            return "the SFTP server stored a different size"
        return None

    def _digest(self, path: str) -> str:
        h = xxhash.xxh3_128()
        with self.sftp.open(path, "rb") as f:
            f.prefetch()
            while True:
                b = f.read(CHUNK)
                if not b:
                    break
                h.update(b)
        return h.hexdigest()

    # --- steps 2-4 --------------------------------------------------------------------------------
    def publish(self, versions, new_latest, delete_versions, delete_files, index: mf.Index) -> None:
        try:
            self._publish(versions, new_latest, delete_versions, delete_files, index)
        except (EOFError, _SSHException) as e:
            raise _lost(self.node.parsed.host, e) from None

    def _publish(self, versions, new_latest, delete_versions, delete_files, index: mf.Index) -> None:
        for v, entries in versions:
            self._publish_version(v, entries)
        if new_latest is not None:
            self._point_latest(new_latest)
        if delete_versions or delete_files:
            self._delete(delete_versions, delete_files)
        self._write_manifest(index, dict(versions))
        try:
            self.recover()
        except OSError as e:
            raise self._err(e, STATE) from e

    def _publish_version(self, version: str, entries: list[mf.Entry]) -> None:
        from paramiko.sftp import CMD_SYMLINK

        vname = f"v{version}"
        staging = posixpath.join(self.state, "staging")
        try:
            if self._lstat(posixpath.join(self.ds, vname)) is not None:
                raise ConflictError("version already exists at the destination", dataset=self.drs, path=vname)
            fdirs = {a.filename: a for a in self.sftp.listdir_attr(posixpath.join(self.ds, layout.FILES))} \
                if entries else {}
            for dirname in sorted({e.dir for e in entries}):
                a = fdirs.get(dirname)
                if a is not None and not stat.S_ISDIR(a.st_mode):
                    raise UnsafeInputError("unsafe destination: not a real directory", dataset=self.drs,
                                           path=f"{layout.FILES}/{dirname}")
            self._ensure_dir(staging, f"{STATE}/staging", 0o700)
            vdir = posixpath.join(staging, vname)
            self.remove_tree(vdir)
            self.sftp.mkdir(vdir)
            requests = []
            for name in sorted({e.name for e in entries}):
                self.sftp.mkdir(posixpath.join(vdir, name))
            for e in entries:
                _, linked = layout.split_files_dir(e.dir, dataset=self.drs)
                # paramiko sends (target, link path) in the order OpenSSH's server expects
                requests.append((CMD_SYMLINK, layout.canonical_target(e.name, linked, e.file),
                                 posixpath.join(vdir, e.name, e.file)))
            for reply in _pipelined(self.sftp, requests):
                _check(self.sftp, reply)
            if self._lstat(posixpath.join(self.ds, vname)) is not None:
                raise ConflictError("version already exists at the destination", dataset=self.drs, path=vname)
            self.sftp.posix_rename(vdir, posixpath.join(self.ds, vname))
        except OSError as e:
            raise self._err(e, vname) from e

    def _point_latest(self, version: str) -> None:
        try:
            a = self._lstat(posixpath.join(self.ds, layout.LATEST))
            if a is not None and not stat.S_ISLNK(a.st_mode):
                raise UnsafeInputError("destination `latest` is not a symlink; drsync will not replace it",
                                       dataset=self.drs, path=layout.LATEST)
            staging = posixpath.join(self.state, "staging")
            self._ensure_dir(staging, f"{STATE}/staging", 0o700)
            tmp = posixpath.join(staging, LATEST_TMP)
            self.remove_tree(tmp)
            self.sftp.symlink(f"v{version}", tmp)
            self.sftp.posix_rename(tmp, posixpath.join(self.ds, layout.LATEST))
        except OSError as e:
            raise self._err(e, layout.LATEST) from e

    def _delete(self, versions: tuple[str, ...], files: tuple[tuple[str, str], ...]) -> None:
        staging = posixpath.join(self.state, "staging")
        try:
            self._ensure_dir(staging, f"{STATE}/staging", 0o700)
            for v in versions:
                doomed = posixpath.join(staging, f"deleted-v{v}")
                self.remove_tree(doomed)
                self.sftp.posix_rename(posixpath.join(self.ds, f"v{v}"), doomed)
                self.remove_tree(doomed)
            fdir = posixpath.join(self.ds, layout.FILES)
            for dirname in sorted({d for d, _ in files}):
                d = posixpath.join(fdir, dirname)
                a = self._lstat(d)
                if a is None or not stat.S_ISDIR(a.st_mode):
                    continue
                for dn, fn in files:
                    if dn == dirname and self._lstat(posixpath.join(d, fn)) is not None:
                        self.sftp.remove(posixpath.join(d, fn))
                if not self.sftp.listdir(d):
                    self.sftp.rmdir(d)
        except OSError as e:
            raise self._err(e, self.ds) from e

    def _write_manifest(self, index: mf.Index, new_entries: dict[str, list[mf.Entry]]) -> None:
        """drsync-manifest/1, as StateDir.save writes it: entry lists first, then the index. Versions
        known by size only and loose files of unknown digest are left out (an agent rescans them)."""
        versions = {v: i for v, i in index.versions.items() if v not in self.walked}
        loose = {k: x for k, x in index.loose.items() if x.digest != mf.UNKNOWN_DIGEST}
        mdir = posixpath.join(self.state, "manifest")
        try:
            self._ensure_dir(mdir, f"{STATE}/manifest", 0o700)
            for v, entries in new_entries.items():
                self._write_atomic(mdir, f"v{v}.json", mf.dumps(mf.entries_to_json(v, entries)))
            self._write_atomic(mdir, "index.json", mf.dumps(mf.index_to_json(mf.Index(index.latest, versions, loose))))
            for name in self.sftp.listdir(mdir):
                if name.startswith("v") and name.endswith(".json") and name[1:-5] not in versions:
                    self.sftp.remove(posixpath.join(mdir, name))
        except OSError as e:
            raise self._err(e, f"{STATE}/manifest") from e

    def close(self) -> None:
        pass


def _throttle(rate: int | None):
    from .remote import _Throttle

    return _Throttle(rate)


class SftpNode:
    """A node on a host without drsync, read and written over SFTP."""

    def __init__(self, spec: str, options: Options, events: Events | None = None):
        self.spec = spec
        self.parsed = parse_spec(spec)
        self.options = options
        self.events = events or Events()
        if options.state_dir is not None:
            raise UsageError("--state-dir is not supported by the SFTP fallback (no drsync on the remote)")
        self.client = paramiko_client(resolve(self.parsed), options.accept_new)
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
