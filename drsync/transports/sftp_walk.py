"""The source half of the SFTP fallback: a dataset's manifest from an SFTP walk, sizes only.

One ``listdir_attr`` per directory and a readlink per link (pipelined); every name and link is
checked as strictly as a local scan (exit 4). Digests are unknown: entries carry
``mf.UNKNOWN_DIGEST`` and the plan compares names, link targets and sizes only.
"""

from __future__ import annotations

import posixpath
import stat

from .. import layout
from .. import manifest as mf
from ..errors import (
    UnsafeInputError,
)
from ..events import Events
from .sftp_wire import _check, _pipelined

STATE = layout.STATE


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
            layout.check_component(name, "variable name", dataset=drs, where=where)
            if not stat.S_ISDIR(vlist[name].st_mode):
                raise UnsafeInputError("non-canonical layout: version directory holds a non-directory",
                                       dataset=drs, path=where)
            nlist = self.listdir(f"{vname}/{name}", where)
            for file in sorted(nlist):
                fwhere = f"{where}/{file}"
                layout.check_component(file, "file name", dataset=drs, where=fwhere)
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


def _is_dataset(listing: dict[str, object]) -> bool:
    has_files = has_version = False
    for name, a in listing.items():
        if name == layout.FILES and (stat.S_ISDIR(a.st_mode) or stat.S_ISLNK(a.st_mode)):
            has_files = True
        elif layout.is_version_dir(name) and stat.S_ISDIR(a.st_mode):
            has_version = True
    return has_files and has_version
