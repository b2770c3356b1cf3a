"""The project's deterministic generator of drslib trees (tests and benchmarks).

A tree is a node root holding datasets; each dataset has variables, and each new version changes
a fraction of each variable's files, adds some and removes some. Same arguments, same bytes.

Shapes of DESIGN §9: SMALL, LARGE, BIG.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    datasets: int = 2
    variables: int = 2
    files: int = 6  # files per variable in the first version
    versions: int = 4
    changed: float = 0.25  # fraction of a variable's files replaced per new version
    added: int = 2  # files added per variable per new version
    removed: int = 1  # files dropped per variable per new version
    size: int = 4096  # bytes per file (BIG uses large files)
    seed: int = 0


SMALL = Shape(datasets=1, variables=5, files=400, versions=10, changed=0.10, added=20, removed=0, size=4096)
LARGE = Shape(datasets=1, variables=50, files=400, versions=10, changed=0.10, added=20, removed=0, size=4096)
BIG = Shape(datasets=1, variables=2, files=20, versions=4, changed=0.25, added=0, removed=0, size=32 << 20)
TINY = Shape()

FIRST_VERSION = 20100101


def dataset_path(i: int) -> str:
    return f"CMIP6/CMIP/INST{i}/model-{i}/historical/r1i1p1f1/Amon/ds_{i}/gn"


def version_name(n: int) -> str:
    """Version n (0-based) as YYYYMMDD-like digits that sort numerically."""
    return str(FIRST_VERSION + n * 100)


def _content(seed_text: str, size: int) -> bytes:
    rnd = random.Random(seed_text)
    block = rnd.randbytes(min(size, 65536))
    reps, rest = divmod(size, len(block)) if block else (0, 0)
    return block * reps + block[:rest]


class Dataset:
    """One generated dataset: its state (which real file each entry uses) at each version."""

    def __init__(self, root: str, index: int, shape: Shape):
        self.root = root
        self.index = index
        self.shape = shape
        self.drs = dataset_path(index)
        self.path = os.path.join(root, self.drs)
        self.rnd = random.Random(f"{shape.seed}-{index}")
        self.current: dict[str, dict[str, str]] = {}  # variable -> file -> owning version
        self.versions: list[str] = []
        self.counter = 0

    def variable(self, j: int) -> str:
        # a name with "_" inside, to exercise the split at the last "_"
        return f"var_{j}"

    def _write(self, var: str, version: str, file: str) -> None:
        d = os.path.join(self.path, "files", f"{var}_{version}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, file), "wb") as fh:
            fh.write(_content(f"{self.shape.seed}/{self.drs}/{var}/{version}/{file}", self.shape.size))

    def add_version(self) -> str:
        version = version_name(len(self.versions))
        s = self.shape
        for j in range(s.variables):
            var = self.variable(j)
            files = self.current.setdefault(var, {})
            if not files:
                for _ in range(s.files):
                    files[f"{var}_{self.counter:06d}.nc"] = version
                    self.counter += 1
            else:
                names = sorted(files)
                for name in self.rnd.sample(names, min(len(names), s.removed)):
                    del files[name]
                names = sorted(files)
                for name in self.rnd.sample(names, int(len(names) * s.changed)):
                    files[name] = version
                for _ in range(s.added):
                    files[f"{var}_{self.counter:06d}.nc"] = version
                    self.counter += 1
            vdir = os.path.join(self.path, f"v{version}", var)
            os.makedirs(vdir, exist_ok=True)
            for name, owner in files.items():
                if owner == version:
                    self._write(var, version, name)
                os.symlink(f"../../files/{var}_{owner}/{name}", os.path.join(vdir, name))
        tmp = os.path.join(self.path, ".latest.gen")
        os.symlink(f"v{version}", tmp)
        os.replace(tmp, os.path.join(self.path, "latest"))
        self.versions.append(version)
        return version

    def new_bytes(self, version: str) -> tuple[int, int]:
        """(files, bytes) that version ``version`` added under files/."""
        n = sum(1 for files in self.current.values() for owner in files.values() if owner == version)
        return n, n * self.shape.size


def make_node(root: str, shape: Shape = TINY, versions: int | None = None) -> list[Dataset]:
    """Generate ``shape.datasets`` datasets with ``versions`` (default ``shape.versions``) versions."""
    os.makedirs(root, exist_ok=True)
    out = []
    for i in range(shape.datasets):
        ds = Dataset(root, i, shape)
        for _ in range(shape.versions if versions is None else versions):
            ds.add_version()
        out.append(ds)
    return out


def flip_byte(path: str, offset: int = 0) -> None:
    """Change one byte of a real file in place, keeping its size and mtime: what no size or date
    check can see, only a digest."""
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
