"""Shared helpers of the safety tests (DESIGN §8, FAULTS A, B, C, E1).

Every test works on a small generated source node (treegen.TINY: two datasets), a destination
node, and a canary directory ``outside`` next to the destination whose state must never change.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass

import invariants
import treegen
import xxhash
from invariants import run_drsync, snapshot, tree_state

DS0 = treegen.dataset_path(0)
DS1 = treegen.dataset_path(1)
V1, V2, V3, V4, V5 = (treegen.version_name(i) for i in range(5))


def make_canary(path: str) -> None:
    """A canary tree: files, a directory, a symlink, and the `victim` file of FAULTS B4."""
    os.makedirs(os.path.join(path, "sub"), exist_ok=True)
    for rel, data in (("victim", b"victim: must never change\n"), ("f", b"canary f\n"),
                      ("sub/g.nc", b"canary g\n" * 100)):
        with open(os.path.join(path, rel), "wb") as fh:
            fh.write(data)
    os.symlink("sub/g.nc", os.path.join(path, "link"))
    # fixed mtimes, so any touch shows
    for rel in ("victim", "f", "sub/g.nc", "sub", ""):
        os.utime(os.path.join(path, rel), ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))


@dataclass
class Env:
    root: str
    src: str
    dst: str
    outside: str
    generated: list  # treegen.Dataset objects of the source

    def sds(self, drs: str = DS0) -> str:
        return os.path.join(self.src, drs)

    def dds(self, drs: str = DS0) -> str:
        return os.path.join(self.dst, drs)


def new_env(tmp_path, *, versions: int | None = None, shape: treegen.Shape = treegen.TINY,
            base: str | None = None) -> Env:
    root = base or str(tmp_path)
    src = os.path.join(root, "src")
    dst = os.path.join(root, "dst")
    outside = os.path.join(root, "outside")
    generated = treegen.make_node(src, shape, versions)
    make_canary(outside)
    return Env(root, src, dst, outside, generated)


def error_lines(cp) -> list[str]:
    return [line for line in cp.stderr.splitlines() if line.startswith("drsync: error: ")]


def assert_failed(cp, code: int, *names: str) -> str:
    """The run exited ``code`` with exactly one ``drsync: error:`` line naming ``names``; every
    stderr line is a drsync line (a name with a newline must not forge a second line)."""
    assert cp.returncode == code, f"exit {cp.returncode}, wanted {code}\nstdout: {cp.stdout}\nstderr: {cp.stderr}"
    errs = error_lines(cp)
    assert len(errs) == 1, f"want one error line, got {errs!r}\nstderr: {cp.stderr}"
    for line in cp.stderr.splitlines():
        assert line.startswith("drsync: "), f"stray stderr line (unescaped name or traceback?): {line!r}"
        assert "Traceback" not in line
    for n in names:
        assert n in errs[0], f"error line does not name {n!r}: {errs[0]!r}"
    return errs[0]


def assert_ok(cp) -> None:
    assert cp.returncode == 0, f"exit {cp.returncode}\nstdout: {cp.stdout}\nstderr: {cp.stderr}"
    assert not error_lines(cp), cp.stderr


def push(env: Env, *extra: str, src: str | None = None, dst: str | None = None):
    return run_drsync("push", "--no-fsync", *extra, src or env.src, dst or env.dst)


def without_state(state: dict) -> dict:
    """A tree_state without drsync's own `.drsync` state directories."""
    return {p: v for p, v in state.items() if f"{os.sep}.drsync" not in p}


def published_files(ds: str) -> list[str]:
    """What of a destination dataset is visible: files/, v* and latest (names only)."""
    if not os.path.isdir(ds):
        return []
    return sorted(n for n in os.listdir(ds) if n != ".drsync")


def real_file(env: Env, var: str, version: str, drs: str = DS0) -> str:
    """The first real file of ``files/<var>_<version>/`` at the source."""
    d = os.path.join(env.src, drs, "files", f"{var}_{version}")
    return os.path.join(d, min(os.listdir(d)))


def digest_of(path: str) -> str:
    with open(path, "rb") as fh:
        return xxhash.xxh3_128_hexdigest(fh.read())


def assert_replicated(env: Env, drs: str) -> None:
    """Destination dataset ``drs`` holds exactly the source's published state."""
    s = snapshot(os.path.join(env.src, drs))["."]
    d = snapshot(os.path.join(env.dst, drs)).get(".")
    assert d is not None, f"{drs} not replicated"
    assert d == s, f"{drs} differs from the source"


def copy_node(src: str, dst: str) -> None:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".drsync"))


__all__ = [
    "DS0",
    "DS1",
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "Env",
    "assert_failed",
    "assert_ok",
    "assert_replicated",
    "copy_node",
    "digest_of",
    "error_lines",
    "invariants",
    "new_env",
    "published_files",
    "push",
    "re",
    "real_file",
    "run_drsync",
    "snapshot",
    "stat",
    "tree_state",
    "without_state",
]
