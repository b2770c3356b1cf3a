"""The walk of a dataset's version directories that a manifest refresh has not recorded yet.

Each link is checked canonical (names, link kind, relative target into files/) and its real file
lstat'ed; a real file's digest is taken from the manifest's record of it (the owned keys of the
version owning its files dir) when the size agrees, else the file is hashed, once per scan however
many versions link to it. scan.refresh and DatasetManifest's rebuild of a damaged entry list use it.
"""

from __future__ import annotations

import errno
import os
import stat
from . import layout
from . import manifest as mf
from .errors import SourceIOError, UnsafeInputError
from .fsutil import Dir
from .hashing import hash_file

TYPE_CHECKING = False  # (no `typing` import at start-up: docs/performance.md)
if TYPE_CHECKING:
    from .scan import DatasetManifest


class Scanner:
    """Scans the versions a refresh has not seen yet, reusing digests of files already known."""

    def __init__(self, ds: Dir, man: DatasetManifest, old: mf.Index | None):
        self.ds = ds
        self.man = man
        self.old_loose = old.loose if old else {}
        self._files: Dir | None = None
        self._dirs: dict[str, Dir] = {}
        # "<files dir>\t<file>\t<size>" -> digest recorded for that real file at that size
        self._known: dict[str, str] = {}
        self._scanned: dict[tuple[str, str], mf.Entry] = {}  # real files lstat'ed by this scan
        self._loaded_versions: set[str] = set()

    def files_dir(self, dirname: str) -> Dir:
        d = self._dirs.get(dirname)
        if d is None:
            if self._files is None:
                self._files = self.ds.open_dir(layout.FILES)
            d = self._files.open_dir(dirname)
            self._dirs[dirname] = d
        return d

    def known(self, dirname: str, file: str, size: int) -> str | None:
        """The digest already recorded for this real file at this size, by the version owning its
        files dir. Read from that version's owned keys (mf.owned_key: files dir, file, size and
        digest), which the plan reads next anyway (DatasetManifest.warm): no Entry per row."""
        version = dirname.rpartition("_")[2]
        if version in self.man.index.versions and version not in self._loaded_versions:
            self._loaded_versions.add(version)
            try:
                keys = self.man.owned_keys(version)
            except UnsafeInputError:
                keys = ()
            cut = [key.rpartition("\t") for key in keys]
            # the keys come from a stored list checked against its own digest; what is taken from
            # them as digests must still look like digests (else the files are hashed)
            if mf.digests_valid([c[2] for c in cut]):
                known = self._known
                for head, _, digest in cut:
                    known.setdefault(head, digest)
        return self._known.get(f"{dirname}\t{file}\t{size}")

    def scan_version(self, version: str) -> list[mf.Entry]:
        drs = self.man.path
        entries: list[mf.Entry] = []
        try:
            vdir = self.ds.open_dir(f"v{version}")
        except OSError as e:
            raise UnsafeInputError(f"cannot open version directory: {e.strerror}", dataset=drs, path=f"v{version}")
        with vdir:
            for ne in sorted(vdir.scandir(), key=lambda x: x.name):
                name = ne.name
                layout.check_component(name, "variable name", dataset=drs, where=f"v{version}/{name}")
                if not ne.is_dir(follow_symlinks=False):
                    raise UnsafeInputError("non-canonical layout: version directory holds a non-directory",
                                           dataset=drs, path=f"v{version}/{name}")
                with vdir.open_dir(name) as nd:
                    entries += self.scan_links(nd, version, name)
        return entries

    def scan_links(self, nd: Dir, version: str, name: str) -> list[mf.Entry]:
        """The entries of ``v<version>/<name>/`` (open as ``nd``), in name order: scan_entry for
        each, with the checks that do not depend on the link's real file made on whole columns
        (names, link kinds, targets) and each real file stat'ed (and hashed) once per scan however
        many versions link to it. Anything a column check refuses goes through scan_entry, which
        raises the precise error."""
        found = sorted(nd.scandir(), key=lambda x: x.name)
        files = [fe.name for fe in found]
        if not layout.plain_names(files) or not all(fe.is_symlink() for fe in found):
            return [self.scan_entry(nd, version, name, fe.name, fe) for fe in found]
        prefix = f"../../{layout.FILES}/{name}_"
        cut = len(prefix)
        dirs: dict[str, str] = {}  # linked version -> its files dir, as parse_link returned it
        readlink = nd.readlink
        out = []
        for file in files:
            target = readlink(file)
            # canonical is prefix + <version> + "/" + file: parse_link checks each version once
            linked, sep, rest = target[cut:].partition("/")
            shaped = sep and rest == file and target.startswith(prefix)
            dirname = dirs.get(linked) if shaped else None
            if dirname is None:
                dirname = layout.parse_link(target, name, file, version, dataset=self.man.path)
                if shaped:
                    dirs[linked] = dirname
            out.append(self.real_entry(version, name, file, dirname))
        return out

    def scan_entry(self, nd: Dir, version: str, name: str, file: str, fe: os.DirEntry) -> mf.Entry:
        drs = self.man.path
        where = f"v{version}/{name}/{file}"
        layout.check_component(file, "file name", dataset=drs, where=where)
        if not fe.is_symlink():
            raise UnsafeInputError("non-canonical layout: version entry is not a symlink", dataset=drs, path=where)
        dirname = layout.parse_link(nd.readlink(file), name, file, version, dataset=drs)
        return self.real_entry(version, name, file, dirname)

    def real_entry(self, version: str, name: str, file: str, dirname: str) -> mf.Entry:
        """The entry of link ``v<version>/<name>/<file>`` into ``files/<dirname>/<file>``, checked
        canonical: its real file lstat'ed (a regular file), its digest taken from the manifest's
        record of that file when the size agrees, else hashed. Once per real file and scan."""
        got = self._scanned.get((dirname, file))
        if got is not None:
            return got
        drs = self.man.path
        where = f"v{version}/{name}/{file}"
        try:
            fdir = self.files_dir(dirname)
            st = fdir.lstat(file)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise UnsafeInputError("broken link: target missing or not a real file", dataset=drs,
                                       path=where) from e
            raise SourceIOError(f"cannot read: {e.strerror}", dataset=drs, path=where) from e
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeInputError("link target is not a regular file", dataset=drs, path=where)
        digest = self.known(dirname, file, st.st_size)
        if digest is None:
            loose = self.old_loose.get((dirname, file))
            if loose is not None and (loose.size, loose.mtime_ns) == (st.st_size, st.st_mtime_ns):
                digest = loose.digest
            else:
                try:
                    digest = hash_file(fdir, file, st.st_size)
                except OSError as e:
                    raise SourceIOError(f"cannot read: {e.strerror}", dataset=drs, path=f"files/{dirname}/{file}")
        entry = mf.Entry(name, file, dirname, st.st_size, st.st_mtime_ns, digest)
        self._known.setdefault(f"{dirname}\t{file}\t{st.st_size}", digest)
        self._scanned[entry.real] = entry
        return entry

    def scan_loose(self, versions: set[str]) -> dict[tuple[str, str], mf.Loose]:
        """Real files in files/ dirs of versions not (yet) recorded: an interrupted run's work."""
        loose: dict[tuple[str, str], mf.Loose] = {}
        try:
            files = self.ds.open_dir(layout.FILES)
        except FileNotFoundError:
            return loose
        with files:
            for de in files.scandir():
                name, _, version = de.name.rpartition("_")
                if not name or version in versions or not de.is_dir(follow_symlinks=False):
                    continue
                try:
                    layout.split_files_dir(de.name)
                except UnsafeInputError:
                    continue
                with files.open_dir(de.name) as fdir:
                    for fe in fdir.scandir():
                        if not fe.is_file(follow_symlinks=False):
                            continue
                        st = fe.stat(follow_symlinks=False)
                        old = self.old_loose.get((de.name, fe.name))
                        if old is not None and (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns):
                            loose[(de.name, fe.name)] = old
                        else:
                            loose[(de.name, fe.name)] = mf.Loose(st.st_size, st.st_mtime_ns, hash_file(fdir, fe.name))
        return loose

    def close(self) -> None:
        for d in self._dirs.values():
            d.close()
        if self._files is not None:
            self._files.close()
