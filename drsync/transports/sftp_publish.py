"""The destination half of the SFTP fallback: DESIGN §4's publish protocol over SFTP requests.

Same order as a local receiver: files into ``.drsync/partial/`` (pipelined writes, the digest of
the bytes sent checked, ``fsync@openssh.com`` when offered), ``posix-rename`` into ``files/<dir>/``;
``v<ver>`` built in ``.drsync/staging/`` (symlinks pipelined) and renamed into place, never over an
existing one; ``latest`` made in staging and renamed over; then the drsync-manifest/1 files, each
written to a temp name and renamed. See sftp.py for the limits of the fallback.
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import TYPE_CHECKING

import xxhash

from .. import layout
from .. import manifest as mf
from ..errors import ConflictError, DestinationIOError, DrsyncError, IntegrityError, UnsafeInputError
from ..fetch import Received, SourceChanged
from ..publish import LATEST_TMP, Receiver
from ..scan import DatasetManifest
from .sftp_wire import CHUNK, _check, _is_conn_error, _lost, _pipelined, _SSHException, _throttle

if TYPE_CHECKING:
    from .sftp import SftpNode

STATE = layout.STATE


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

