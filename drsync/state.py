"""Where a dataset's drsync state lives (`.drsync/` or `--state-dir`), its manifest store and lock.

Layout of a state directory::

    manifest/index.json        the small index (versions, latest, per-version digests, loose files)
    manifest/v<version>.json   one entry list per version
    manifest/o<version>.json   the entries of that list whose real file is in the version's own
                               files/ directories, as lines of mf.owned_key text (derived; rebuilt
                               from v<version>.json if bad)
    partial/<dir>/<file>       files being received (resumed after a crash), moved into
                               files/<dir>/ once flushed: a new <dir> with one rename
    staging/                   version directories being built
    lock                       flock()ed by the run writing this dataset
"""

from __future__ import annotations

import errno
import os
import stat

import xxhash

from . import manifest as mf
from .errors import UnsafeInputError
from .fsutil import Dir
from .locking import Lock

STATE = ".drsync"


class StateDir:
    """A dataset's state directory, opened safely (never through a symlink, never group- or
    world-writable: FAULTS B3)."""

    def __init__(self, root: Dir, drs: str):
        self.dir = root
        self.drs = drs
        self._subdirs: dict[str, Dir] = {}

    @classmethod
    def open(cls, dataset: Dir, drs: str, state_root: str | None, *, create: bool) -> StateDir | None:
        """Open (or with ``create`` make) the state of ``dataset``; None if absent and not created."""
        try:
            if state_root is None:
                parent, name = dataset, STATE
            else:
                # Keyed by the dataset's absolute path so one --state-dir serves many datasets.
                key = xxhash.xxh3_64_hexdigest(os.path.realpath(dataset.path).encode("utf-8", "surrogateescape"))
                parent, name = Dir.open_root(state_root, create=create), key
            st = parent.try_lstat(name)
            if st is None:
                if not create:
                    return None
                d = parent.ensure_dir(name, 0o700)
            else:
                if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
                    raise UnsafeInputError("unsafe destination: state directory is not a directory",
                                           dataset=drs, path=os.path.join(parent.path, name))
                d = parent.open_dir(name)
            _check_private(d, drs)
            return cls(d, drs)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):  # O_DIRECTORY|O_NOFOLLOW on a link: ENOTDIR
                raise UnsafeInputError("unsafe destination: state directory is a symlink", dataset=drs,
                                       path=os.path.join(dataset.path, STATE)) from e
            raise

    def sub(self, name: str) -> Dir:
        """The subdirectory ``name`` (created on first use), checked like the state dir itself."""
        d = self._subdirs.get(name)
        if d is None:
            st = self.dir.try_lstat(name)
            if st is not None and (stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode)):
                raise UnsafeInputError(f"unsafe destination: {STATE}/{name} is not a directory",
                                       dataset=self.drs, path=os.path.join(self.dir.path, name))
            try:
                d = self.dir.ensure_dir(name, 0o700)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):  # O_DIRECTORY|O_NOFOLLOW on a link: ENOTDIR
                    raise UnsafeInputError(f"unsafe destination: {STATE}/{name} is a symlink",
                                           dataset=self.drs, path=os.path.join(self.dir.path, name)) from e
                raise
            _check_private(d, self.drs)
            self._subdirs[name] = d
        return d

    # --- the manifest store -------------------------------------------------------------------
    def load_index(self) -> mf.Index | None:
        """The stored index, or None when missing or unreadable (then the dataset is rescanned;
        a damaged manifest is never trusted: FAULTS D7)."""
        try:
            mdir = self.dir.open_dir("manifest")
        except OSError:
            return None
        with mdir:
            try:
                return mf.index_from_json(mf.loads(mdir.read_bytes("index.json")), self.drs)
            except (OSError, ValueError, UnsafeInputError, TypeError, AttributeError):
                return None

    def stored_versions(self) -> set[str]:
        """The versions that have a stored entry list (one listdir: O(versions))."""
        try:
            with self.dir.open_dir("manifest") as mdir:
                names = mdir.listdir()
        except OSError:
            return set()
        return {n[1:-5] for n in names if n.startswith("v") and n.endswith(".json")}

    def load_entries(self, version: str, expect: mf.VersionInfo) -> list[mf.Entry] | None:
        """A stored entry list, or None if missing, corrupt, or not matching the index's digest."""
        try:
            with self.dir.open_dir("manifest") as mdir:
                data = mdir.read_bytes(f"v{version}.json")
            doc = mf.loads(data)
            entries = mf.StoredEntries(mf.entries_from_json(doc, version, self.drs))
        except (OSError, ValueError, UnsafeInputError, TypeError):
            return None
        if mf.version_digest(entries) != expect.digest:
            return None
        entries.raw = (version, data)
        entries.rows_at = mf.stored_rows_at(version, doc, data)
        return entries

    def load_owned(self, version: str, expect: mf.VersionInfo) -> list[mf.Entry] | None:
        """The stored owned-entries list of a version (see mf.owned), or None if missing, damaged
        or cut from another entry list than the index names."""
        return self._load_owned(version, expect, mf.owned_from_json)

    def load_owned_keys(self, version: str, expect: mf.VersionInfo) -> set[str] | None:
        """The mf.owned_key of each entry of the stored owned list, read without making entries;
        None as load_owned, and for a list stored in the older form (made before the keys were)."""
        return self._load_owned(version, expect, mf.owned_keys_from_json)

    def _load_owned(self, version: str, expect: mf.VersionInfo, parse):
        try:
            with self.dir.open_dir("manifest") as mdir:
                return parse(mf.loads(mdir.read_bytes(f"o{version}.json")), version, expect.digest, self.drs)
        except (OSError, ValueError, UnsafeInputError, TypeError):
            return None

    def save(self, index: mf.Index, new_entries: dict[str, list[mf.Entry]], *, durable: bool = True) -> None:
        """Write the entry lists first, then the index that refers to them (each atomically)."""
        mdir = self.sub("manifest")
        for version, entries in new_entries.items():
            mdir.write_atomic(f"v{version}.json", mf.entries_bytes(version, entries), durable=durable)
            info = index.versions.get(version)
            if info is not None:
                own = mf.owned_to_json(version, info.digest, mf.owned(entries, version))
                mdir.write_atomic(f"o{version}.json", mf.dumps(own), durable=durable)
        mdir.write_atomic("index.json", mf.dumps(mf.index_to_json(index)), durable=durable)
        # Entry lists of versions no longer in the index are dropped (a deleted version).
        for name in mdir.listdir():
            if name[:1] in ("v", "o") and name.endswith(".json") and name[1:-5] not in index.versions:
                try:
                    mdir.unlink(name)
                except FileNotFoundError:
                    pass

    # --- the lock -----------------------------------------------------------------------------
    def lock(self, *, wait: bool, poll: float = 0.2) -> Lock:
        """The destination dataset's lock (``<state>/lock``): one writer at a time."""
        return Lock.acquire(self.dir.fd, "lock", path=os.path.join(self.dir.path, "lock"), what="destination",
                            wait=wait, poll=poll, dataset=self.drs)


def _check_private(d: Dir, drs: str) -> None:
    st = os.fstat(d.fd)
    if st.st_mode & 0o022:
        raise UnsafeInputError("unsafe destination: state directory is group- or world-writable",
                               dataset=drs, path=d.path)
