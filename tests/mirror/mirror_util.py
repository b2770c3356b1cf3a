"""Helpers for the mirror tests: run the CLI, write jobs files, read metrics, compare trees."""

from __future__ import annotations

import os
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = f"{sys.executable} -m drsync"


def run_cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drsync", "mirror", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, **kw)


def popen_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "drsync", "mirror", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def write(path, text: str) -> str:
    with open(path, "w") as fh:
        fh.write(text)
    return str(path)


def metric_values(path) -> dict[tuple[str, str], float]:
    """(sample name, job label) -> value, parsed with prometheus_client's own parser."""
    with open(path) as fh:
        text = fh.read()
    return {(s.name, s.labels["job"]): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def datasets_under(root) -> set[str]:
    """The DRS paths of the datasets below ``root`` (a directory holding files/)."""
    out = set()
    for dirpath, dirnames, _ in os.walk(root):
        if "files" in dirnames:
            out.add(os.path.relpath(dirpath, root))
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if d != ".drsync"]
    return out


def same_tree(a, b) -> bool:
    return subprocess.run(["diff", "-r", "--no-dereference", "-x", ".drsync", str(a), str(b)],
                          capture_output=True).returncode == 0
