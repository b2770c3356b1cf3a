"""Helpers for the unit tests: hand-built drslib datasets and a one-call manifest refresh."""

from __future__ import annotations

import importlib
import os

# `drsync.scan` the attribute is the library's scan() function; the module is in sys.modules
scan = importlib.import_module("drsync.scan")
from drsync.events import Events
from drsync.fsutil import Dir
from drsync.state import StateDir


def write_file(ds: str, var: str, version: str, file: str, data: bytes) -> str:
    """Write a real file ``files/<var>_<version>/<file>`` of dataset ``ds``."""
    d = os.path.join(ds, "files", f"{var}_{version}")
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, file)
    with open(p, "wb") as fh:
        fh.write(data)
    return p


def link(ds: str, version: str, var: str, file: str, owner: str | None = None, target: str | None = None) -> str:
    """Make ``v<version>/<var>/<file>`` -> ``../../files/<var>_<owner>/<file>`` (or ``target``)."""
    d = os.path.join(ds, f"v{version}", var)
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, file)
    os.symlink(target if target is not None else f"../../files/{var}_{owner or version}/{file}", p)
    return p


def set_latest(ds: str, target: str) -> None:
    p = os.path.join(ds, "latest")
    if os.path.islink(p) or os.path.exists(p):
        os.unlink(p)
    os.symlink(target, p)


def build(ds: str, spec: dict[str, dict[str, dict[str, tuple[str, bytes]]]], latest: str | None = "auto") -> str:
    """Build a dataset from ``{version: {var: {file: (owner_version, bytes)}}}``.

    A file owned by the version being built is written under files/; every entry is linked.
    ``latest`` defaults to the newest version; None leaves it out.
    """
    os.makedirs(ds, exist_ok=True)
    for version, variables in spec.items():
        os.makedirs(os.path.join(ds, f"v{version}"), exist_ok=True)
        for var, files in variables.items():
            for file, (owner, data) in files.items():
                real = os.path.join(ds, "files", f"{var}_{owner}", file)
                if not os.path.exists(real):
                    write_file(ds, var, owner, file, data)
                link(ds, version, var, file, owner)
    if latest == "auto":
        latest = max(spec, key=int) if spec else None
    if latest is not None:
        set_latest(ds, f"v{latest}")
    return ds


def refresh(path: str, drs: str = "", *, save: bool = True, loose: bool = False,
            events: Events | None = None) -> scan.DatasetManifest:
    """Refresh the manifest of the dataset at ``path`` (state in ``path/.drsync``)."""
    # The dataset handle stays open with the manifest (as in a run), so that a damaged stored entry
    # list can be rebuilt from the tree when it is needed; it is closed when the manifest goes.
    ds = Dir.open_root(path)
    try:
        state = StateDir.open(ds, drs, None, create=save)
        return scan.refresh(ds, drs, state, save=save, loose=loose, events=events)
    except BaseException:
        ds.close()
        raise


def links_of(ds: str, version: str) -> dict[tuple[str, str], str]:
    """``{(var, file): target}`` of every link of ``v<version>``, read straight from the tree."""
    out = {}
    vdir = os.path.join(ds, f"v{version}")
    for var in sorted(os.listdir(vdir)):
        for f in sorted(os.listdir(os.path.join(vdir, var))):
            out[(var, f)] = os.readlink(os.path.join(vdir, var, f))
    return out


def real_files(ds: str, version: str) -> set[tuple[str, str]]:
    """``{(files dir, file)}`` of every real file in ``files/*_<version>/``."""
    out = set()
    fdir = os.path.join(ds, "files")
    for d in os.listdir(fdir):
        if d.rpartition("_")[2] == version:
            out.update((d, f) for f in os.listdir(os.path.join(fdir, d)))
    return out
