"""`drsync verify`: the health check of a node or dataset (DESIGN §6).

Finds broken links, links escaping the dataset or not canonical, orphaned real files, a `latest`
that is not the newest whole version, leftovers of crashed runs, and differences against the
manifest (sizes always; every byte with ``checksum``). It only reads.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections import namedtuple

from . import layout
from .errors import DrsyncError, UnsafeInputError, UsageError
from .fsutil import Dir
from .hashing import hash_file
from .scan import find_datasets, list_versions
from .state import StateDir


class Finding(namedtuple("Finding", "dataset path problem")):
    """One problem `verify` found: in ``dataset``, at ``path`` (relative to it), what is wrong."""

    __slots__ = ()


class VerifyResult:
    """What `verify` checked and found. (A plain class: a dataclass costs every run the import of
    ``dataclasses``.)"""

    def __init__(self, path: str, datasets: list[str] | None = None, findings: list[Finding] | None = None,
                 checked_files: int = 0) -> None:
        self.path = path
        self.datasets = [] if datasets is None else datasets
        self.findings = [] if findings is None else findings
        self.checked_files = checked_files

    def __repr__(self) -> str:
        return f"VerifyResult(path={self.path!r}, findings={self.findings!r}, checked_files={self.checked_files})"

    @property
    def exit_code(self) -> int:
        return 1 if self.findings else 0


def verify(path: str, *, checksum: bool = False, state_dir: str | None = None,
           datasets: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> VerifyResult:
    """Check every dataset below ``path`` (or those matching ``datasets`` and not ``exclude``)."""
    try:
        root = Dir.open_root(path)
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError("no such directory to verify", path=path) from None
    result = VerifyResult(path)
    with root:
        for drs in find_datasets(root):
            name = drs or "."
            if datasets and not any(fnmatch.fnmatchcase(name, g) for g in datasets):
                continue
            if any(fnmatch.fnmatchcase(name, g) for g in exclude):
                continue
            result.datasets.append(name)
            with root.walk_to(drs) as ds:
                _verify_dataset(ds, name, checksum, state_dir, result)
    return result


def _verify_dataset(ds: Dir, drs: str, checksum: bool, state_dir: str | None, result: VerifyResult) -> None:
    def find(where: str, problem: str) -> None:
        result.findings.append(Finding(drs, where, problem))

    try:
        versions = list_versions(ds, drs)
    except UnsafeInputError as e:
        find(e.path or ".", e.message)
        return
    recorded = {}
    try:
        state = StateDir.open(ds, drs, state_dir, create=False)
    except DrsyncError as e:
        find(e.path or layout.STATE, e.message)
        state = None
    index = state.load_index() if state else None
    referenced: set[tuple[str, str]] = set()
    whole: set[str] = set()
    files = ds.open_dir(layout.FILES)
    with files:
        for v in layout.sort_versions(versions):
            entries = None
            if index is not None and v in index.versions:
                entries = state.load_entries(v, index.versions[v])
                if entries is None:
                    find(f"{layout.STATE}/manifest/v{v}.json", "manifest entry list missing or damaged")
            recorded = {e.key: e for e in entries} if entries else {}
            ok = _verify_version(ds, files, drs, v, recorded, checksum, referenced, find, result)
            if ok:
                whole.add(v)
            if entries is not None:
                for key in recorded.keys() - _keys_on_disk(ds, v):
                    find(f"v{v}/{key}", "entry in manifest is missing from the tree")
        # Orphans: real files no version references.
        for de in sorted(files.scandir(), key=lambda x: x.name):
            if not de.is_dir(follow_symlinks=False):
                find(f"{layout.FILES}/{de.name}", "not a directory under files/")
                continue
            with files.open_dir(de.name) as fdir:
                for fe in sorted(fdir.listdir()):
                    if (de.name, fe) not in referenced:
                        find(f"{layout.FILES}/{de.name}/{fe}", "orphaned file: no version references it")
    _verify_latest(ds, drs, versions, whole, find)
    if state is not None:
        try:
            staging = state.dir.open_dir("staging")
        except OSError:
            staging = None
        if staging is not None:
            with staging:
                for name in staging.listdir():
                    find(f"{layout.STATE}/staging/{name}", "leftover of an interrupted run (the next push removes it)")


def _keys_on_disk(ds: Dir, v: str) -> set[str]:
    keys = set()
    with ds.open_dir(f"v{v}") as vdir:
        for name in vdir.listdir():
            st = vdir.lstat(name)
            if stat.S_ISDIR(st.st_mode):
                with vdir.open_dir(name) as nd:
                    keys.update(f"{name}/{f}" for f in nd.listdir())
    return keys


def _verify_version(ds, files, drs, v, recorded, checksum, referenced, find, result) -> bool:
    ok = True
    with ds.open_dir(f"v{v}") as vdir:
        for name in sorted(vdir.listdir()):
            where = f"v{v}/{name}"
            if not stat.S_ISDIR(vdir.lstat(name).st_mode):
                find(where, "version directory holds something that is not a variable directory")
                ok = False
                continue
            with vdir.open_dir(name) as nd:
                for file in sorted(nd.listdir()):
                    w = f"{where}/{file}"
                    if not stat.S_ISLNK(nd.lstat(file).st_mode):
                        find(w, "not a symlink")
                        ok = False
                        continue
                    target = nd.readlink(file)
                    try:
                        layout.check_name(name, dataset=drs)
                        layout.check_name(file, dataset=drs)
                        dirname = layout.parse_link(target, name, file, v, dataset=drs)
                    except UnsafeInputError as e:
                        find(w, f"{e.message}" if "escap" in e.message else f"link not canonical or escaping the dataset: {target!r}")
                        ok = False
                        continue
                    seen = (dirname, file) in referenced  # a real file is re-read and reported once
                    referenced.add((dirname, file))
                    try:
                        with files.open_dir(dirname) as fdir:
                            st = fdir.lstat(file)
                            if not stat.S_ISREG(st.st_mode):
                                raise FileNotFoundError
                            result.checked_files += 1
                            entry = recorded.get(f"{name}/{file}")
                            if entry is not None:
                                if entry.size != st.st_size:
                                    find(w, f"size {st.st_size} differs from the manifest's {entry.size}")
                                    ok = False
                                elif checksum and not seen and hash_file(fdir, file) != entry.digest:
                                    # bad bytes, not a half-made version: `latest` is not blamed for it
                                    find(f"{layout.FILES}/{dirname}/{file}", "digest mismatch: the bytes differ from the manifest")
                            elif checksum:
                                find(w, "no manifest entry to check the bytes against (run `drsync scan`)")
                    except OSError:
                        find(w, f"broken link: {target} does not exist")
                        ok = False
    return ok


def _verify_latest(ds: Dir, drs: str, versions: set[str], whole: set[str], find) -> None:
    st = ds.try_lstat(layout.LATEST)
    if st is None:
        if versions:
            find(layout.LATEST, "missing")
        return
    newest = layout.sort_versions(whole)[-1] if whole else None
    if stat.S_ISDIR(st.st_mode):
        find(layout.LATEST, "a directory (old layout), not a symlink")
        return
    if not stat.S_ISLNK(st.st_mode):
        find(layout.LATEST, "not a symlink")
        return
    target = ds.readlink(layout.LATEST)
    if os.path.isabs(target):
        find(layout.LATEST, f"absolute link {target!r}; drsync writes it relative")
        return
    if not layout.is_version_dir(target) or target[1:] not in versions:
        find(layout.LATEST, f"does not name a version of this dataset: {target!r}")
    elif target[1:] not in whole:
        find(layout.LATEST, f"points at {target}, which is not whole")
    elif target[1:] != newest:
        find(layout.LATEST, f"points at {target}, not the newest whole version v{newest}")
