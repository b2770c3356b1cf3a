"""DESIGN §8 / FAULTS C1, C3, C4, C5: conflicts, and a source that changes under drsync.

"Overwrite a published version", "leave `latest` pointing at a version that is not whole" and
"report success when a byte differs" are each checked here through the real CLI.
"""

from __future__ import annotations

import os

import pytest
import treegen
from safety_helpers import (
    DS0,
    DS1,
    V1,
    V3,
    V4,
    assert_failed,
    assert_ok,
    assert_replicated,
    new_env,
    push,
    real_file,
    run_drsync,
    snapshot,
    tree_state,
    without_state,
)


def _flip_byte(path: str, offset: int = 100) -> None:
    """Change one byte, keeping the size and the mtime."""
    treegen.flip_byte(path, offset)


# --- C4: the same version differs between the nodes -------------------------------------------------


def _other_node(tmp_path, change):
    """A second source node with versions 1-3 of the same generator, ``change``d in dataset 0."""
    other = str(tmp_path / "other")
    treegen.make_node(other, treegen.TINY, 3)
    change(os.path.join(other, DS0))
    return other


def _byte(ds):
    d = os.path.join(ds, "files", f"var_0_{V1}")
    _flip_byte(os.path.join(d, min(os.listdir(d))))


def _extra_entry(ds):
    with open(os.path.join(ds, "files", f"var_0_{V1}", "extra.nc"), "wb") as fh:
        fh.write(b"extra")
    os.symlink(f"../../files/var_0_{V1}/extra.nc", os.path.join(ds, f"v{V1}", "var_0", "extra.nc"))


def _other_target(ds):
    # the same file name, linked from an older files/ dir holding the same bytes at a new place
    vdir = os.path.join(ds, f"v{V3}", "var_0")
    for name in sorted(os.listdir(vdir)):
        target = os.readlink(os.path.join(vdir, name))
        if f"var_0_{V3}/" in target:
            src = os.path.join(ds, "files", f"var_0_{V3}", name)
            dst = os.path.join(ds, "files", f"var_0_{V1}", name)
            with open(src, "rb") as a, open(dst, "wb") as b:
                b.write(a.read())
            os.unlink(os.path.join(vdir, name))
            os.symlink(f"../../files/var_0_{V1}/{name}", os.path.join(vdir, name))
            return
    raise AssertionError("no file owned by version 3")


@pytest.mark.parametrize("change", [_byte, _extra_entry, _other_target], ids=["byte", "extra-entry", "link-target"])
def test_conflicting_version_is_never_overwritten(tmp_path, change):
    env = new_env(tmp_path)  # versions 1-4
    other = _other_node(tmp_path, change)
    assert_ok(push(env, src=other))  # the destination holds the *other* versions 1-3
    before = snapshot(env.dds(DS0))
    before_tree = without_state(tree_state(env.dds(DS0)))
    canary = tree_state(env.outside)

    cp = push(env)

    assert_failed(cp, 3, DS0, "v")
    assert snapshot(env.dds(DS0)) == before
    assert without_state(tree_state(env.dds(DS0))) == before_tree, "something of the conflicting dataset was written"
    assert not os.path.exists(os.path.join(env.dds(DS0), f"v{V4}"))
    assert os.readlink(os.path.join(env.dds(DS0), "latest")) == f"v{V3}"
    assert_replicated(env, DS1)  # the other dataset proceeds
    assert tree_state(env.outside) == canary
    d = run_drsync("diff", "--json", env.src, env.dst)
    assert d.returncode == 3


def test_destination_latest_newer_than_source(tmp_path):
    """C5: the destination has a newer version: `latest` never moves backwards; exit 0."""
    env = new_env(tmp_path)  # versions 1-4
    assert_ok(push(env))
    older = str(tmp_path / "older")
    treegen.make_node(older, treegen.TINY, 3)
    before = snapshot(env.dst)

    cp = push(env, src=older)

    assert_ok(cp)
    assert snapshot(env.dst) == before
    for drs in (DS0, DS1):
        assert os.readlink(os.path.join(env.dds(drs), "latest")) == f"v{V4}"


# --- C1, C3: the source changes after it was scanned -----------------------------------------------


@pytest.fixture
def scanned(tmp_path):
    """Destination at versions 1-3; the source gains version 4 and is scanned (digests cached)."""
    env = new_env(tmp_path, versions=3)
    assert_ok(push(env))
    for ds in env.generated:
        ds.add_version()
    assert_ok(run_drsync("scan", env.src))
    return env


def _assert_v4_not_published(env, before, canary):
    ds = env.dds(DS0)
    assert not os.path.exists(os.path.join(ds, f"v{V4}")), "the version using the changed file was published"
    assert os.readlink(os.path.join(ds, "latest")) == f"v{V3}"
    assert snapshot(ds) == before
    assert tree_state(env.outside) == canary
    assert_replicated(env, DS1)


def test_source_bytes_changed_after_scan(scanned):
    """C1: same size, mtime restored: the cached digest no longer matches -> exit 8."""
    env = scanned
    path = real_file(env, "var_0", V4)
    _flip_byte(path)
    before = snapshot(env.dds(DS0))
    canary = tree_state(env.outside)

    cp = push(env)

    line = assert_failed(cp, 8, DS0, os.path.basename(path))
    assert "digest" in line
    _assert_v4_not_published(env, before, canary)
    # the changed bytes were not accepted into files/ either
    assert not os.path.exists(os.path.join(env.dds(DS0), "files", f"var_0_{V4}", os.path.basename(path)))


@pytest.mark.parametrize("delta", [+1, -1], ids=["grew", "shrank"])
def test_source_size_changed_after_scan(scanned, delta):
    """C3: the receiver never accepts a byte count other than the manifest's size."""
    env = scanned
    path = real_file(env, "var_0", V4)
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.truncate(st.st_size + delta)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = snapshot(env.dds(DS0))
    canary = tree_state(env.outside)

    cp = push(env)

    assert cp.returncode != 0
    assert_failed(cp, cp.returncode, DS0, os.path.basename(path))
    _assert_v4_not_published(env, before, canary)
    p = os.path.join(env.dds(DS0), "files", f"var_0_{V4}", os.path.basename(path))
    assert not os.path.exists(p) or os.path.getsize(p) == st.st_size


def test_source_file_vanished_after_scan(scanned):
    """C2: a file vanishes between scan and send: not published, non-zero exit."""
    env = scanned
    path = real_file(env, "var_0", V4)
    os.unlink(path)
    before = snapshot(env.dds(DS0))
    canary = tree_state(env.outside)
    cp = push(env)
    assert cp.returncode != 0
    assert_failed(cp, cp.returncode, DS0, os.path.basename(path))
    _assert_v4_not_published(env, before, canary)


def test_checksum_push_after_destination_byte_flip_is_not_success(tmp_path):
    """H1: one byte flipped in a published file: `verify --checksum` names it (exit 1)."""
    env = new_env(tmp_path)
    assert_ok(push(env))
    d = os.path.join(env.dds(DS0), "files", f"var_0_{V1}")
    name = min(os.listdir(d))
    _flip_byte(os.path.join(d, name))
    v = run_drsync("verify", "--checksum", env.dst)
    assert v.returncode == 1
    assert name in v.stdout
