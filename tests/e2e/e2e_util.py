"""Helpers of the end-to-end tests: tree listings, inode maps, source surgery, CLI wrappers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from invariants import run_drsync

# DESIGN §6: the field names of drsync-report/1, exactly.
TOP_KEYS = {"format", "command", "source", "destination", "dry_run", "datasets", "totals"}
DATASET_KEYS = {"path", "versions_to_add", "files_to_send", "bytes_to_send", "links_to_make", "naive_bytes",
                "conflicts", "extra_versions", "latest"}
TOTALS_KEYS = {"datasets", "versions_to_add", "files_to_send", "bytes_to_send", "links_to_make", "naive_bytes",
               "conflicts"}
LATEST_KEYS = {"source", "destination"}
TRANSFERRED_KEYS = {"files", "bytes", "seconds"}


def tree_diff(a: str, b: str) -> subprocess.CompletedProcess:
    """``diff -r --no-dereference -x .drsync A B`` (exit 0 when identical)."""
    return subprocess.run(["diff", "-r", "--no-dereference", "-x", ".drsync", a, b],
                          capture_output=True, text=True)


def assert_identical(a: str, b: str) -> None:
    r = tree_diff(a, b)
    assert r.returncode == 0, f"trees differ:\n{r.stdout[-3000:]}{r.stderr[-1000:]}"


def listing(path: str) -> dict:
    """Every path below ``path`` with its type, link target, bytes, mode and mtime (a write canary)."""
    out = {}
    if not os.path.lexists(path):
        return out
    for dirpath, dirnames, files in os.walk(path):
        for name in sorted(dirnames + files):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, path)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                with open(p, "rb") as fh:
                    out[rel] = ("file", fh.read(), st.st_mode, st.st_mtime_ns, st.st_ino)
            else:
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
    return out


def real_files(ds_path: str) -> dict[str, str]:
    """``files/<dir>/<file>`` relative path -> absolute path of every real file of a dataset."""
    out = {}
    base = os.path.join(ds_path, "files")
    for dirpath, _, files in os.walk(base):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, ds_path)] = p
    return out


def inodes(node: str, generated) -> dict[str, int]:
    """st_ino of every real file under every dataset's files/ (keyed by node-relative path)."""
    out = {}
    for ds in generated:
        for rel, p in real_files(os.path.join(node, ds.drs)).items():
            out[os.path.join(ds.drs, rel)] = os.stat(p).st_ino
    return out


def versions_at(ds_path: str) -> list[str]:
    return sorted(n[1:] for n in os.listdir(ds_path) if n.startswith("v") and n[1:].isdigit())


def latest_at(ds_path: str) -> str:
    return os.readlink(os.path.join(ds_path, "latest"))


def drop_newest_version(ds) -> str:
    """Remove a generated dataset's newest version from its tree by hand (the version directory,
    the files/ directories only it added) and point ``latest`` back at the previous version."""
    v = ds.versions[-1]
    shutil.rmtree(os.path.join(ds.path, f"v{v}"))
    for d in os.listdir(os.path.join(ds.path, "files")):
        if d.rpartition("_")[2] == v:
            shutil.rmtree(os.path.join(ds.path, "files", d))
    prev = ds.versions[-2]
    tmp = os.path.join(ds.path, ".latest.tmp")
    os.symlink(f"v{prev}", tmp)
    os.replace(tmp, os.path.join(ds.path, "latest"))
    return v


def cli_json(*args: str) -> tuple[int, dict, str]:
    """Run the CLI with ``--json``; return (exit code, parsed stdout, stderr)."""
    r = run_drsync(*args)
    try:
        doc = json.loads(r.stdout)
    except ValueError as e:  # pragma: no cover - the assertion message is the point
        raise AssertionError(f"not JSON (exit {r.returncode}): {r.stdout[-2000:]!r} {r.stderr[-2000:]!r}") from e
    return r.returncode, doc, r.stderr


def by_path(doc: dict) -> dict[str, dict]:
    return {d["path"]: d for d in doc["datasets"]}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("drsync: error: ")]
