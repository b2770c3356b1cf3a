"""The invariant checker of FAULTS.md §7.1, written independently of drsync's own code.

``snapshot(node)`` records a destination's published state; ``check(src, dst, before)`` asserts
I1-I6 after a fault; ``check_converged(src, dst)`` asserts I7 after a clean follow-up run.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import xxhash

VDIR = re.compile(r"v[0-9]+")


def _digest(path: str) -> str:
    with open(path, "rb") as fh:
        return xxhash.xxh3_128_hexdigest(fh.read())


def datasets(node: str) -> list[str]:
    """Dataset directories below a node (a dir with files/ and a v<digits>/)."""
    out = []
    for dirpath, dirnames, _ in os.walk(node):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and
                             not os.path.islink(os.path.join(dirpath, d)))
        if "files" in dirnames and any(VDIR.fullmatch(d) for d in dirnames):
            out.append(os.path.relpath(dirpath, node))
            dirnames[:] = []
    return out


def version_entries(ds: str, version_dir: str) -> dict[str, str]:
    """``var/file -> link target`` of one version directory."""
    out = {}
    vd = os.path.join(ds, version_dir)
    for var in sorted(os.listdir(vd)):
        for f in sorted(os.listdir(os.path.join(vd, var))):
            out[f"{var}/{f}"] = os.readlink(os.path.join(vd, var, f))
    return out


def snapshot(node: str) -> dict:
    """Published state: every (path, link target or digest) of every dataset, plus `latest`."""
    snap: dict = {}
    if not os.path.isdir(node):
        return snap
    for rel in datasets(node):
        ds = os.path.join(node, rel)
        entry: dict = {"versions": {}, "latest": None, "files": {}}
        for name in os.listdir(ds):
            if VDIR.fullmatch(name):
                entry["versions"][name] = version_entries(ds, name)
        if os.path.islink(os.path.join(ds, "latest")):
            entry["latest"] = os.readlink(os.path.join(ds, "latest"))
        for dirpath, _, files in os.walk(os.path.join(ds, "files")):
            for f in files:
                p = os.path.join(dirpath, f)
                entry["files"][os.path.relpath(p, ds)] = _digest(p)
        snap[rel] = entry
    return snap


def tree_state(path: str) -> dict:
    """Bytes, mode and mtime of everything below ``path`` (the canary of I4)."""
    out = {}
    for dirpath, dirnames, files in os.walk(path):
        for name in dirnames + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[p] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    out[p] = ("file", fh.read(), st.st_mode, st.st_mtime_ns)
            else:
                out[p] = ("dir", st.st_mode, st.st_mtime_ns)
    return out


def shape_of(root: str) -> dict:
    """Every path below ``root`` but the state dirs: its kind, and a link's target or a file's bytes."""
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".drsync"]
        for name in dirnames + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", None)
            else:
                with open(p, "rb") as fh:
                    out[rel] = ("file", fh.read())
    return out


def check(src: str, dst: str, before: dict) -> None:
    """I1-I6 on every dataset of ``dst`` (raises AssertionError naming the broken invariant)."""
    src_snap = snapshot(src)
    for rel in datasets(dst):
        ds = os.path.join(dst, rel)
        s = src_snap.get(rel)
        assert s is not None, f"I4: {rel} exists at the destination but not at the source"
        visible = [n for n in os.listdir(ds) if VDIR.fullmatch(n)]
        for name in visible:
            # I1: whole version: exactly the source's entries, canonical, resolving to right bytes.
            got = version_entries(ds, name)
            assert got == s["versions"].get(name), f"I1: {rel}/{name} is not whole or differs from the source"
            for key, target in got.items():
                var, f = key.split("/")
                assert re.fullmatch(rf"\.\./\.\./files/{re.escape(var)}_[0-9]+/{re.escape(f)}", target), \
                    f"I1: non-canonical link {rel}/{name}/{key} -> {target}"
                real = os.path.normpath(os.path.join(ds, name, var, target))
                assert real.startswith(ds + os.sep), f"I4: link leaves the dataset: {real}"
                st = os.lstat(real)
                assert stat.S_ISREG(st.st_mode), f"I1: {real} is not a regular file"
                rel_real = os.path.relpath(real, ds)
                assert _digest(real) == s["files"][rel_real], f"I1: {rel}/{rel_real} has the wrong bytes"
        # I2: latest exists if it existed, names a whole version, never moved backwards.
        b = before.get(rel)
        latest_path = os.path.join(ds, "latest")
        if b and b["latest"]:
            assert os.path.islink(latest_path), f"I2: {rel}/latest vanished"
        if os.path.lexists(latest_path):
            assert os.path.islink(latest_path), f"I2: {rel}/latest is not a symlink"
            target = os.readlink(latest_path)
            assert target in visible, f"I2: {rel}/latest -> {target} does not name a visible version"
            if b and b["latest"]:
                assert int(target[1:]) >= int(b["latest"][1:]), f"I2: {rel}/latest moved backwards"
        # I3: every real file has the source's bytes; no temp names outside .drsync.
        for dirpath, dirnames, files in os.walk(os.path.join(ds, "files")):
            for f in files:
                p = os.path.join(dirpath, f)
                relp = os.path.relpath(p, ds)
                assert relp in s["files"], f"I3: unexpected file {rel}/{relp}"
                assert _digest(p) == s["files"][relp], f"I3: {rel}/{relp} has the wrong bytes"
        for name in os.listdir(ds):
            assert name in ("files", "latest", ".drsync") or VDIR.fullmatch(name), f"I6: stray {rel}/{name}"
        # I5: what was published before is unchanged.
        if b:
            for vname, entries in b["versions"].items():
                assert version_entries(ds, vname) == entries, f"I5: published {rel}/{vname} changed"
            for relp, digest in b["files"].items():
                p = os.path.join(ds, relp)
                assert os.path.exists(p) and _digest(p) == digest, f"I5: published {rel}/{relp} changed"


def run_drsync(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "drsync", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def check_converged(src: str, dst: str) -> None:
    """I7: nothing left to do, verify --checksum clean, staging empty."""
    d = run_drsync("diff", "--json", src, dst)
    assert d.returncode == 0, f"I7: diff after convergence exited {d.returncode}: {d.stdout[-2000:]} {d.stderr}"
    v = run_drsync("verify", "--checksum", dst)
    assert v.returncode == 0, f"I7: verify exited {v.returncode}: {v.stdout[-2000:]}"
    for rel in datasets(dst):
        staging = os.path.join(dst, rel, ".drsync", "staging")
        assert not os.path.isdir(staging) or not os.listdir(staging), f"I7: staging not empty in {rel}"
