"""Dataset discovery and the incremental manifest refresh, with xxh3-128 digests.

Versions are immutable, so a version already recorded is trusted while its directory exists: a
refresh lists the dataset root and scans only versions it has not seen (O(versions) when nothing
changed). Each real file is hashed once; later versions reuse the digest recorded for it.
"""

from __future__ import annotations

import errno
import os
import stat

import xxhash

from . import layout
from . import manifest as mf
from .errors import SourceIOError, UnsafeInputError
from .events import Events
from .fsutil import Dir
from .state import StateDir

CHUNK = 1 << 20


def hash_fd(fd: int, size: int | None = None) -> str:
    """xxh3-128 of a whole open file, read from its start. With ``size`` (what an lstat said), a
    file of at most CHUNK bytes that still has that size is read with one call, not two."""
    h = xxhash.xxh3_128()
    offset = 0
    if size is not None and size < CHUNK:
        b = os.pread(fd, size + 1, 0)  # one byte more: a file that grew is read on below
        h.update(b)
        if len(b) == size:
            return h.hexdigest()
        offset = len(b)
    while True:
        b = os.pread(fd, CHUNK, offset)
        if not b:
            break
        h.update(b)
        offset += len(b)
    return h.hexdigest()


def hash_file(d: Dir, name: str, size: int | None = None) -> str:
    fd = d.open_read(name)
    try:
        return hash_fd(fd, size)
    finally:
        os.close(fd)


def is_dataset(d: Dir) -> bool:
    """A dataset holds ``files/`` and at least one ``v<digits>/`` (DESIGN §1)."""
    has_files = has_version = False
    for e in d.scandir():
        if e.name == layout.FILES and (e.is_dir(follow_symlinks=False) or e.is_symlink()):
            has_files = True  # a symlinked files/ is still a dataset: list_versions refuses it (exit 4)
        elif layout.is_version_dir(e.name) and e.is_dir(follow_symlinks=False):
            has_version = True
        if has_files and has_version:
            return True
    return False


def find_datasets(root: Dir, prefix: str = "") -> list[str]:
    """DRS paths of every dataset below ``root`` (``""`` if ``root`` is one), sorted. Symlinked
    directories and dot-directories are not entered; the walk stops at each dataset."""
    if is_dataset(root):
        return [prefix]
    found = []
    for e in sorted(root.scandir(), key=lambda e: e.name):
        if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
            continue
        try:
            layout.check_name(e.name)
        except UnsafeInputError:
            continue  # never descend into names drsync could not write back safely
        with root.open_dir(e.name) as sub:
            found.extend(find_datasets(sub, f"{prefix}/{e.name}" if prefix else e.name))
    return found


class DatasetManifest:
    """A dataset's refreshed manifest: the index, plus entry lists loaded on demand.

    ``path``: the DRS path; ``latest_is_dir``: an old tree whose `latest` is a directory of links
    (read-only); ``sizes_only``: walked over SFTP, some digests are mf.UNKNOWN_DIGEST (compare
    sizes); ``_loader``: version -> entries, for a manifest that lives on another machine; ``_ds``:
    the dataset, to rebuild a damaged stored entry list (FAULTS D7). (A plain class: a dataclass
    costs every run the import of ``dataclasses``.)"""

    def __init__(self, path: str, index: mf.Index, latest_is_dir: bool = False, sizes_only: bool = False,
                 _store: StateDir | None = None, _loader=None, _ds: Dir | None = None) -> None:
        self.path = path
        self.index = index
        self.latest_is_dir = latest_is_dir
        self.sizes_only = sizes_only
        self._entries: dict[str, list[mf.Entry]] = {}
        self._store = _store
        self._loader = _loader
        self._ds = _ds
        self._repaired: dict[str, list[mf.Entry]] = {}
        self._owned: dict[str, list[mf.Entry]] = {}
        self._owned_keys: dict[str, set[str]] = {}

    def __repr__(self) -> str:
        return f"DatasetManifest(path={self.path!r}, index={self.index!r}, sizes_only={self.sizes_only})"

    def entries(self, version: str) -> list[mf.Entry]:
        got = self._entries.get(version)
        if got is None:
            info = self.index.versions[version]
            if self._loader is not None:
                got = self._loader(version)
                if mf.version_digest(got) != info.digest:
                    raise UnsafeInputError("entry list does not match its index digest", dataset=self.path,
                                           path=f"v{version}")
            else:
                got = self._store.load_entries(version, info) if self._store else None
                if got is None and self._ds is not None and self._ds.fd >= 0:
                    got = self._rescan(version)
            if got is None:
                raise UnsafeInputError("manifest entry list missing or damaged; `drsync scan` rebuilds it",
                                       dataset=self.path, path=f"v{version}")
            self._entries[version] = got
        return got

    @property
    def local(self) -> bool:
        """True when entry lists are read from this machine, not fetched from a peer."""
        return self._loader is None

    def owned(self, version: str) -> list[mf.Entry]:
        """The entries of ``version`` whose real file is in its own files/ directories (mf.owned):
        all a later version linking into them needs. Read from the small stored owned list when it
        matches the index, so a new version costs O(its own files), not O(all entries)."""
        got = self._owned.get(version)
        if got is None:
            if version not in self._entries and self._loader is None and self._store is not None:
                got = self._store.load_owned(version, self.index.versions[version])
            if got is None:
                got = mf.owned(self.entries(version), version)
            self._owned[version] = got
        return got

    def owned_keys(self, version: str) -> set[str]:
        """The mf.owned_key of each entry of ``owned(version)``: what the plan compares a new
        version's entries with. Read straight from the stored owned list when it is usable (one
        split, no Entry per row), else made from the entries."""
        got = self._owned_keys.get(version)
        if got is None:
            if (version not in self._entries and version not in self._owned and self._loader is None
                    and self._store is not None):
                got = self._store.load_owned_keys(version, self.index.versions[version])
            if got is None:
                got = set(map(mf.owned_key, self.owned(version)))
            self._owned_keys[version] = got
        return got

    def warm(self) -> None:
        """Load what a plan adding the latest version reads of this side (plan.diff_dataset): that
        version's entries and the owned keys of every version they link into."""
        latest = self.index.latest
        if latest is None or latest not in self.index.versions or self.sizes_only or not self.local:
            return
        refs = {e.dir.rpartition("_")[2] for e in self.entries(latest)}
        for v in refs & self.index.versions.keys() - {latest}:
            self.owned_keys(v)

    def _rescan(self, version: str) -> list[mf.Entry]:
        """A missing or damaged stored entry list is never trusted: rebuild it from the tree."""
        scanner = _Scanner(self._ds, self, None)
        scanner._loaded_versions.add(version)  # never ask for the list being rebuilt
        try:
            got = scanner.scan_version(version)
        finally:
            scanner.close()
        self.index.versions[version] = mf.version_info(got)
        self._repaired[version] = got
        return got

    def real_files(self, version: str) -> dict[tuple[str, str], mf.Entry]:
        return {e.real: e for e in self.entries(version)}


def _check_component(name: str, what: str, drs: str, where: str) -> None:
    """check_name, with the error naming the entry's whole path in the dataset, not just ``name``."""
    try:
        layout.check_name(name, what, dataset=drs)
    except UnsafeInputError as e:
        e.path = where
        raise


class _Scanner:
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
                _check_component(name, "variable name", drs, f"v{version}/{name}")
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
        _check_component(file, "file name", drs, where)
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


def read_latest(ds: Dir, versions, drs: str, events: Events) -> tuple[str | None, bool]:
    """The version `latest` names, and whether `latest` is an old-style directory."""
    st = ds.try_lstat(layout.LATEST)
    if st is None:
        return None, False
    if stat.S_ISDIR(st.st_mode):
        events.warning(f"{drs or '.'}: `latest` is a directory (old layout): read as the newest version, never written")
        return (layout.sort_versions(versions)[-1] if versions else None), True
    if not stat.S_ISLNK(st.st_mode):
        raise UnsafeInputError("non-canonical layout: `latest` is neither a symlink nor a directory",
                               dataset=drs, path=layout.LATEST)
    target = ds.readlink(layout.LATEST)
    version = target[1:] if target.startswith("v") else None
    if target.startswith("/"):
        # drslib's `repair` writes an absolute link to a version directory of the same dataset.
        head, _, tail = target.rstrip("/").rpartition("/")
        if os.path.realpath(head) == os.path.realpath(ds.path) and layout.is_version_dir(tail):
            events.warning(f"{drs or '.'}: `latest` is an absolute link; read as {tail}")
            version = tail[1:]
    if version is None or not layout.is_version_dir(f"v{version}") or version not in versions:
        raise UnsafeInputError(f"`latest` does not name a version of this dataset: {target!r}",
                               dataset=drs, path=layout.LATEST)
    return version, False


def list_versions(ds: Dir, drs: str) -> set[str]:
    """The version directories of a dataset, refusing malformed ones (``v1e3``) and links."""
    versions = set()
    for e in ds.scandir():
        if layout.is_version_dir(e.name):
            if not e.is_dir(follow_symlinks=False):
                raise UnsafeInputError("non-canonical layout: version is not a real directory", dataset=drs,
                                       path=e.name)
            versions.add(e.name[1:])
        elif layout.looks_like_version_dir(e.name):
            raise UnsafeInputError("malformed version directory name", dataset=drs, path=e.name)
        elif e.name == layout.FILES and not e.is_dir(follow_symlinks=False):
            raise UnsafeInputError("unsafe layout: files is not a real directory", dataset=drs, path=e.name)
    by_number: dict[int, str] = {}
    for v in versions:
        if int(v) in by_number:
            raise UnsafeInputError("two version directories with the same number", dataset=drs, path=f"v{v}")
        by_number[int(v)] = v
    return versions


def refresh(ds: Dir, drs: str, state: StateDir | None, *, save: bool, loose: bool = False,
            events: Events | None = None, durable: bool = True, checksum: bool = False,
            validate: bool = False) -> DatasetManifest:
    """Bring a dataset's manifest up to date with its tree and return it.

    With ``checksum`` nothing recorded is trusted: every version is rescanned and every real file
    re-read (``--checksum``), so a flipped byte shows up as a conflict instead of "in sync".

    ``validate`` also reads every stored entry list and rebuilds a damaged one from the tree
    (`drsync scan`: O(entries), where a plain refresh is O(versions)).

    ``save`` writes the refreshed manifest back (best effort on a read-only source); ``loose``
    also records real files of versions not yet published (wanted on a destination only).
    """
    events = events or Events()
    old = state.load_index() if state and not checksum else None
    on_disk = list_versions(ds, drs)
    stored = state.stored_versions() if old else set()  # a missing entry list means: rescan
    kept = {v: i for v, i in (old.versions.items() if old else ()) if v in on_disk and v in stored}
    man = DatasetManifest(drs, mf.Index(None, kept), _store=state, _ds=ds)
    scanner = _Scanner(ds, man, old)
    new_entries: dict[str, list[mf.Entry]] = {}
    try:
        for v in layout.sort_versions(on_disk - kept.keys()):
            entries = scanner.scan_version(v)
            new_entries[v] = entries
            man._entries[v] = entries
            man.index.versions[v] = mf.version_info(entries)
        loose_files = scanner.scan_loose(on_disk) if loose else {}
    finally:
        scanner.close()
    latest, latest_is_dir = read_latest(ds, on_disk, drs, events)
    if validate:
        for v in list(kept):
            entries = man.entries(v)  # a damaged stored list is rebuilt from the tree (FAULTS D7)
            if (state is not None and v not in man._repaired
                    and state.load_owned_keys(v, man.index.versions[v]) is None):
                new_entries[v] = entries  # (re)writes the derived owned list too (or its older form)
    new_entries.update(man._repaired)  # damaged lists rebuilt while scanning are saved too
    index = mf.Index(latest, man.index.versions, loose_files)
    man.index = index
    man.latest_is_dir = latest_is_dir
    if save and state is not None and (old is None or new_entries or mf.index_to_json(old) != mf.index_to_json(index)):
        try:
            state.save(index, new_entries, durable=durable)
        except OSError as e:
            events.warning(f"{drs or '.'}: manifest not saved ({e.strerror}); the next run rescans new versions")
    return man
