"""The example dataset of DESIGN §1 (thetao at three versions), built as real files and links."""

from __future__ import annotations

import os

DATASET = "CMIP6/CMIP/DEMO/demo-model/historical/r1i1p1f1/Omon/thetao/gn"
NAME = "thetao"
# version -> {file: generation}; a file is (re)written in the version where its generation is new.
VERSIONS = [
    ("20091023", {"thetao_1.nc": 1, "thetao_2.nc": 1, "thetao_3.nc": 1}),
    ("20100101", {"thetao_1.nc": 1, "thetao_2.nc": 1, "thetao_3.nc": 2, "thetao_4.nc": 2, "thetao_5.nc": 2}),
    ("20110101", {"thetao_1.nc": 1, "thetao_2.nc": 1, "thetao_3.nc": 2, "thetao_4.nc": 2, "thetao_5.nc": 3,
                  "thetao_6.nc": 3}),
]


def _content(file: str, generation: int) -> bytes:
    line = f"{file} generation {generation}: sea water potential temperature (demo data)\n".encode()
    return line * (2048 // len(line) + 1)


def add_version(node: str, number: int) -> str:
    """Publish version ``number`` (1-based) of the example into ``node``; return its version."""
    ds = os.path.join(node, DATASET)
    version, files = VERSIONS[number - 1]
    first_seen = {}
    for v, fs in VERSIONS[:number]:
        for f, gen in fs.items():
            first_seen.setdefault((f, gen), v)
    fdir = os.path.join(ds, "files", f"{NAME}_{version}")
    vdir = os.path.join(ds, f"v{version}", NAME)
    os.makedirs(vdir, exist_ok=True)
    for f, gen in files.items():
        owner = first_seen[(f, gen)]
        if owner == version:
            os.makedirs(fdir, exist_ok=True)
            with open(os.path.join(fdir, f), "wb") as fh:
                fh.write(_content(f, gen))
        os.symlink(f"../../files/{NAME}_{owner}/{f}", os.path.join(vdir, f))
    tmp = os.path.join(ds, ".latest.tmp")
    os.symlink(f"v{version}", tmp)
    os.replace(tmp, os.path.join(ds, "latest"))
    return version


def build_node(node: str, upto: int = 2) -> None:
    for n in range(1, upto + 1):
        add_version(node, n)
