"""Dataset discovery and the incremental manifest refresh (the walk of new versions is
scan_versions.Scanner; digests are xxh3-128, hashing.py).

Versions are immutable, so a version already recorded is trusted while its directory exists: a
refresh lists the dataset root and scans only versions it has not seen (O(versions) when nothing
changed). Each real file is hashed once; later versions reuse the digest recorded for it.
"""

from __future__ import annotations

import os
import stat

from . import layout
from . import manifest as mf
from .errors import UnsafeInputError
from .events import Events
from .fsutil import Dir
from .scan_versions import Scanner
from .state import StateDir

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
                got = self.stored_entries(version)
                if got is None and self._ds is not None and self._ds.fd >= 0:
                    got = self._rescan(version)
            if got is None:
                raise UnsafeInputError("manifest entry list missing or damaged; `drsync scan` rebuilds it",
                                       dataset=self.path, path=f"v{version}")
            self._entries[version] = got
        return got

    def stored_entries(self, version: str) -> list[mf.Entry] | None:
        """The entries of ``version`` if loaded already or stored and matching the index's digest;
        None otherwise. Never rebuilds a list from the tree, never fetches one from a peer, caches
        nothing: for a forked helper (staging_fork.py) that reads what ``entries`` will read."""
        got = self._entries.get(version)
        if got is None and self._loader is None and self._store is not None:
            got = self._store.load_entries(version, self.index.versions[version])
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
        scanner = Scanner(self._ds, self, None)
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
    scanner = Scanner(ds, man, old)
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
