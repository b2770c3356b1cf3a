"""Helpers shared by the crash tests of tests/publish (DESIGN §4, FAULTS D and §7).

Everything here looks at the trees from outside: the generator builds the nodes, drsync runs as a
real subprocess (``python -m drsync``), and the independent checker in tests/invariants.py judges.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import invariants
import treegen

# Every fault_point step of the publish path, in protocol order (drsync/publish.py,
# drsync/transports/local.py). On a local destination the "staging" steps (one per variable
# directory of a new version) run on a background thread during the file steps.
STEPS = ("cleanup", "partial_write", "after_digest", "before_fsync", "after_fsync", "after_rename",
         "staging", "staging_done", "after_version", "latest_tmp", "after_latest", "manifest")

KILLED = 137  # fault_point's os._exit code


def env_with(fault: str | None = None) -> dict:
    env = dict(os.environ)
    env.pop("DRSYNC_FAULT", None)
    if fault:
        env["DRSYNC_FAULT"] = fault
    # the subprocess must import this checkout's drsync, wherever pytest was started from
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def push(src: str, dst: str, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """``drsync push --json`` in a subprocess, optionally with the fault hook armed."""
    return invariants.run_drsync("push", "--json", *args, src, dst, env=env_with(fault))


def push_cmd(src: str, dst: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "drsync", "push", "--json", *args, src, dst]


def report(cp: subprocess.CompletedProcess) -> dict:
    assert cp.returncode == 0, f"push exited {cp.returncode}: {cp.stderr[-3000:]}"
    doc = json.loads(cp.stdout)
    assert doc["format"] == "drsync-report/1"
    return doc


def diff(src: str, dst: str) -> dict:
    cp = invariants.run_drsync("diff", "--json", src, dst, env=env_with())
    assert cp.returncode in (0, 1), f"diff exited {cp.returncode}: {cp.stderr[-3000:]}"
    return json.loads(cp.stdout)


def make_pair(root: str, shape: treegen.Shape, published: int, total: int | None = None):
    """A source node with ``total`` versions whose destination already holds the first
    ``published`` (pushed by an unkilled run). Returns (src, dst, generated datasets)."""
    src, dst = os.path.join(root, "node-a"), os.path.join(root, "node-b")
    gen = treegen.make_node(src, shape, versions=published)
    if published:
        report(push(src, dst))
    else:
        os.makedirs(dst, exist_ok=True)
    for _ in range((total if total is not None else shape.versions) - published):
        for ds in gen:
            ds.add_version()
    return src, dst, gen


def _walk(node: str):
    """Every (dirpath, dirnames, filenames) below ``node`` outside dot-directories (.drsync)."""
    for dirpath, dirnames, filenames in os.walk(node):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        yield dirpath, dirnames, filenames


def real_files(node: str) -> dict[str, tuple[int, int]]:
    """``<dataset>/files/<dir>/<file> -> (inode, size)`` of every regular file under a ``files/``.
    Walks the whole node, not only datasets with a visible version: a killed first push leaves
    files/ in a dataset that has no ``v*`` yet."""
    out = {}
    for dirpath, _, names in _walk(node):
        rel = os.path.relpath(dirpath, node)
        if os.path.basename(os.path.dirname(dirpath)) != "files":
            continue
        for n in names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            assert not os.path.islink(p), f"a symlink under files/: {p}"
            out[os.path.join(rel, n)] = (st.st_ino, st.st_size)
    return out


def check_unpublished(src: str, dst: str) -> None:
    """What invariants.check cannot see: a dataset with no visible version yet (a killed first
    push). Every real file there has the source's bytes; nothing but files/ and .drsync sits there."""
    seen = set(invariants.datasets(dst)) if os.path.isdir(dst) else set()
    for rel in invariants.datasets(src):
        ds = os.path.join(dst, rel)
        if rel in seen or not os.path.isdir(ds):
            continue
        for name in os.listdir(ds):
            assert name in ("files", "latest", ".drsync") or invariants.VDIR.fullmatch(name), \
                f"I6: stray {rel}/{name}"
        assert not os.path.lexists(os.path.join(ds, "latest")), f"I2: {rel}/latest without a version"
        for path in real_files(ds):
            s, d = os.path.join(src, rel, path), os.path.join(ds, path)
            assert os.path.isfile(s), f"I3: unexpected file {rel}/{path}"
            assert invariants._digest(d) == invariants._digest(s), f"I3: {rel}/{path} has the wrong bytes"


def source_files(src: str) -> set[str]:
    return set(real_files(src))


def assert_not_rewritten(before: dict[str, tuple[int, int]], dst: str) -> None:
    """Every file that was complete in files/ is still there, same inode (never re-sent)."""
    now = real_files(dst)
    gone = sorted(p for p in before if p not in now)
    assert not gone, f"files complete before were removed: {gone[:5]}"
    changed = sorted(p for p, (ino, _) in before.items() if now[p][0] != ino)
    assert not changed, f"files complete before were rewritten (new inode): {changed[:5]}"


def make_canary(root: str) -> tuple[str, dict]:
    """The ``<outside>`` canary of FAULTS §7.1 I4, next to the destination."""
    out = os.path.join(root, "outside")
    os.makedirs(os.path.join(out, "sub"), exist_ok=True)
    with open(os.path.join(out, "secret.nc"), "wb") as fh:
        fh.write(b"canary" * 100)
    os.symlink("secret.nc", os.path.join(out, "sub", "link"))
    return out, invariants.tree_state(out)


def state_dirs(node: str, sub: str) -> list[str]:
    """Every ``.drsync/<sub>`` directory below ``node`` (any dataset, published or not)."""
    out = []
    for dirpath, dirnames, _ in os.walk(node):
        if os.path.basename(dirpath) == ".drsync":
            if sub in dirnames:
                out.append(os.path.join(dirpath, sub))
            dirnames[:] = []
    return out


def partial_files(dst: str) -> dict[str, int]:
    """``path -> size`` of every file (or link) in any dataset's .drsync/partial/, at any depth
    (partials live in ``partial/<files dir>/``)."""
    out = {}
    for pdir in state_dirs(dst, "partial"):
        for dirpath, dirnames, names in os.walk(pdir):
            for n in names + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                out[os.path.join(dirpath, n)] = os.lstat(os.path.join(dirpath, n)).st_size
    return out


def partial_dirs(dst: str) -> list[str]:
    """The directories left in any dataset's .drsync/partial/ (none once a run has converged)."""
    return sorted(os.path.join(dirpath, d) for pdir in state_dirs(dst, "partial")
                  for dirpath, dirnames, _ in os.walk(pdir) for d in dirnames)


def clone_pair(template: tuple[str, str], root: str) -> tuple[str, str]:
    """Copy a prepared (src, dst) pair, links as links, metadata kept (cheaper than regenerating
    and re-pushing for every case)."""
    out = []
    for path in template:
        to = os.path.join(root, os.path.basename(path))
        shutil.copytree(path, to, symlinks=True)
        out.append(to)
    return out[0], out[1]


def half_sent(src: str, dst: str, shape, *, flat: bool = False):
    """A node of ``shape`` at ``src`` with its first version pushed to ``dst``, then what a run killed
    while sending the next leaves: the first half of one file to send, as ``partial/<dir>/<file>``
    (with ``flat``: under the flat name an earlier drsync gave it, Receiver.partial_name).
    Returns (dataset, files to send, that file, the bytes left in its partial)."""
    import drsync
    from drsync import publish

    [ds] = treegen.make_node(src, shape)
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[0])).exit_code == 0
    rel = os.path.relpath(ds.path, src)
    to_send = drsync.diff(src, dst).plan.datasets[0].files_to_send
    resumed = to_send[0]
    partial = os.path.join(dst, rel, ".drsync", "partial")
    os.makedirs(partial if flat else os.path.join(partial, resumed.dir), exist_ok=True)
    with open(os.path.join(src, rel, "files", resumed.dir, resumed.file), "rb") as fh:
        head = fh.read(resumed.size // 2)
    where = publish.Receiver.partial_name(resumed) if flat else os.path.join(resumed.dir, resumed.file)
    with open(os.path.join(partial, where), "wb") as fh:
        fh.write(head)
    return ds, to_send, resumed, head
