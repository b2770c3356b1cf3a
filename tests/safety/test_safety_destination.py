"""DESIGN §8 / FAULTS B: a hostile destination (planted symlinks, unsafe state, odd `latest`).

Setup: the source has versions 1-3 and the destination a copy of them made by drsync; then the
source gains version 4 (so the next push has files to send and a version to publish), and the
destination is tampered with. Every case goes through the real CLI; the canary `outside` must be
identical afterwards, and when the run is refused the destination's published state too.
"""

from __future__ import annotations

import os
import stat

import pytest
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
    run_drsync,
    snapshot,
    tree_state,
    without_state,
)

from drsync import manifest as mf
from drsync.publish import Receiver


@pytest.fixture
def env(tmp_path):
    env = new_env(tmp_path, versions=3)
    assert_ok(push(env))
    for ds in env.generated:
        assert ds.add_version() == V4
    return env


def _refused(env, code, *names, cp=None):
    """Run a push and check it was refused with ``code`` leaving the destination as it was."""
    before_dst = without_state(tree_state(env.dds(DS0)))
    canary = tree_state(env.outside)
    cp = cp or push(env)
    line = assert_failed(cp, code, *names)
    assert tree_state(env.outside) == canary, "the canary outside the destination changed"
    assert without_state(tree_state(env.dds(DS0))) == before_dst, "the refused run changed the destination"
    return line


def _symlink_to_outside(env, path):
    os.symlink(env.outside, path)


# --- B1, B2: files/ or files/<var>_<v>/ planted as a symlink ----------------------------------------


def test_files_dir_symlink_to_outside(env):
    ds = env.dds(DS0)
    os.rename(os.path.join(ds, "files"), os.path.join(env.root, "files.moved"))
    _symlink_to_outside(env, os.path.join(ds, "files"))
    _refused(env, 4, DS0, "files")
    assert os.path.islink(os.path.join(ds, "files"))
    assert_replicated(env, DS1)


def test_files_dir_symlink_on_fresh_destination(env, tmp_path):
    """The planted link is there before the first push of the dataset."""
    dst = str(tmp_path / "fresh")
    ds = os.path.join(dst, DS0)
    os.makedirs(ds)
    _symlink_to_outside(env, os.path.join(ds, "files"))
    canary = tree_state(env.outside)
    cp = push(env, dst=dst)
    assert_failed(cp, 4, DS0, "files")
    assert tree_state(env.outside) == canary
    assert sorted(n for n in os.listdir(ds) if n != ".drsync") == ["files"]
    assert os.path.islink(os.path.join(ds, "files"))


def test_new_files_subdir_symlink_to_outside(env):
    """files/<var>_<v>/ that the push must create is already there, as a link to outside."""
    link = os.path.join(env.dds(DS0), "files", f"var_0_{V4}")
    _symlink_to_outside(env, link)
    _refused(env, 4, DS0, f"files/var_0_{V4}")
    assert os.path.islink(link)
    assert not os.path.exists(os.path.join(env.dds(DS0), f"v{V4}"))
    assert_replicated(env, DS1)


def test_existing_files_subdir_swapped_for_symlink(env):
    """A files/<var>_<v>/ of an already published version replaced by a link to outside (holding
    copies of the files): drsync must never publish new links that resolve through it."""
    fdir = os.path.join(env.dds(DS0), "files", f"var_0_{V1}")
    os.rename(fdir, os.path.join(env.outside, f"var_0_{V1}"))
    os.symlink(os.path.join(env.outside, f"var_0_{V1}"), fdir)
    canary = tree_state(env.outside)
    cp = push(env)
    assert cp.returncode == 4, f"exit {cp.returncode}: {cp.stdout} {cp.stderr}"
    assert_failed(cp, 4, DS0, f"var_0_{V1}")
    assert tree_state(env.outside) == canary
    assert not os.path.exists(os.path.join(env.dds(DS0), f"v{V4}"))


def test_symlink_below_destination_root(env, tmp_path):
    """A component between the destination root and the dataset is a symlink: never followed."""
    dst = str(tmp_path / "fresh")
    os.makedirs(dst)
    os.symlink(env.outside, os.path.join(dst, "CMIP6"))
    canary = tree_state(env.outside)
    cp = push(env, dst=dst)
    assert cp.returncode == 4, cp.stderr
    errs = [ln for ln in cp.stderr.splitlines() if ln.startswith("drsync: error: ")]
    assert len(errs) == 2 and "unsafe destination" in errs[0], cp.stderr  # one line per dataset
    assert tree_state(env.outside) == canary
    assert os.path.islink(os.path.join(dst, "CMIP6"))


# --- B3: drsync's own state ------------------------------------------------------------------------


@pytest.mark.parametrize("which", [".drsync", ".drsync/partial", ".drsync/staging", ".drsync/manifest"])
def test_state_dir_symlink_to_outside(env, which):
    path = os.path.join(env.dds(DS0), which)
    os.rename(path, path + ".moved") if os.path.lexists(path) else None
    _symlink_to_outside(env, path)
    _refused(env, 4, DS0, which.split("/")[-1])
    assert os.path.islink(path)
    assert_replicated(env, DS1)


@pytest.mark.parametrize("which", [".drsync", ".drsync/partial", ".drsync/staging"])
def test_state_dir_world_writable(env, which):
    path = os.path.join(env.dds(DS0), which)
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o777)
    _refused(env, 4, DS0, which.split("/")[-1])
    assert_replicated(env, DS1)


# --- B4: a planted partial file --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "dir"])
def test_partial_symlink_to_victim_is_removed(env, where):
    """Links planted where partials go: at ``partial/<dir>/<file>`` (to a victim file), or at
    ``partial/<dir>`` itself (to a victim directory). Removed, never written through."""
    src_ds = env.sds(DS0)
    victim = os.path.join(env.outside, "victim")
    victim_dir = os.path.join(env.outside, "victim-dir")
    os.makedirs(victim_dir, exist_ok=True)
    partial = os.path.join(env.dds(DS0), ".drsync", "partial")
    os.makedirs(partial, exist_ok=True)
    planted = []
    for var in ("var_0", "var_1"):
        dirname = f"{var}_{V4}"
        if where == "dir":
            os.symlink(victim_dir, os.path.join(partial, dirname))
            planted.append(os.path.join(partial, dirname))
            continue
        os.makedirs(os.path.join(partial, dirname))
        for f in sorted(os.listdir(os.path.join(src_ds, "files", dirname))):
            os.symlink(victim, os.path.join(partial, dirname, f))
            planted.append(os.path.join(partial, dirname, f))
    assert planted
    canary = tree_state(env.outside)

    cp = push(env)

    assert_ok(cp)
    assert tree_state(env.outside) == canary, "the victim was written through a planted partial link"
    assert not any(os.path.islink(p) for p in planted)
    assert_replicated(env, DS0)
    assert_replicated(env, DS1)


# --- B5: `latest` --------------------------------------------------------------------------------


def test_latest_real_directory_is_never_replaced(env):
    ds = env.dds(DS0)
    latest = os.path.join(ds, "latest")
    os.unlink(latest)
    os.makedirs(os.path.join(latest, "var_0"))
    with open(os.path.join(latest, "var_0", "keep.txt"), "wb") as fh:
        fh.write(b"an old tree's latest directory\n")
    _refused(env, 4, DS0, "latest")
    assert os.path.isdir(latest) and not os.path.islink(latest)
    assert os.listdir(os.path.join(latest, "var_0")) == ["keep.txt"]
    assert not os.path.exists(os.path.join(ds, f"v{V4}"))
    assert_replicated(env, DS1)


@pytest.mark.parametrize("target", ["v20990101", "outside-abs", "../../outside", "v20100101/../../x"])
def test_latest_bad_link(env, target):
    latest = os.path.join(env.dds(DS0), "latest")
    os.unlink(latest)
    target = env.outside if target == "outside-abs" else target
    os.symlink(target, latest)
    _refused(env, 4, DS0, "latest")
    assert os.readlink(latest) == target
    assert_replicated(env, DS1)


# --- B6: an empty v<ver> already at the destination -------------------------------------------------


def test_empty_version_dir_is_never_replaced(env):
    vdir = os.path.join(env.dds(DS0), f"v{V4}")
    os.mkdir(vdir)
    before = snapshot(env.dds(DS0))
    canary = tree_state(env.outside)
    cp = push(env)
    assert cp.returncode in (3, 4), cp.stderr
    assert_failed(cp, cp.returncode, DS0, f"v{V4}")
    assert os.path.isdir(vdir) and os.listdir(vdir) == [], "the empty version directory was replaced"
    assert os.readlink(os.path.join(env.dds(DS0), "latest")) == f"v{V3}"
    assert snapshot(env.dds(DS0)) == before
    assert tree_state(env.outside) == canary
    assert_replicated(env, DS1)


def test_empty_version_dir_on_fresh_destination(env, tmp_path):
    dst = str(tmp_path / "fresh")
    vdir = os.path.join(dst, DS0, f"v{V4}")
    os.makedirs(vdir)
    cp = push(env, dst=dst)
    assert cp.returncode in (3, 4), cp.stderr
    assert_failed(cp, cp.returncode, DS0, f"v{V4}")
    assert os.listdir(vdir) == []
    assert not os.path.lexists(os.path.join(dst, DS0, "latest"))


def test_publish_never_renames_over_empty_version_dir(env):
    """Library level (the race the plan cannot see: the directory appears after planning):
    Receiver.publish_version must refuse rather than let rename() replace an empty directory."""
    from drsync.errors import ConflictError, UnsafeInputError
    from drsync.fsutil import Dir
    from drsync.state import StateDir

    ds_path = env.dds(DS0)
    vdir = os.path.join(ds_path, f"v{V4}")
    os.mkdir(vdir)
    entries = [mf.Entry("var_0", "x.nc", f"var_0_{V1}", 1, 1, "0" * 32)]
    with Dir.open_root(ds_path) as ds:
        state = StateDir.open(ds, DS0, None, create=True)
        rec = Receiver(ds, state, DS0, durable=False)
        with pytest.raises((ConflictError, UnsafeInputError)):
            rec.publish_version(V4, entries)
    assert os.listdir(vdir) == []


# --- B7: the destination root itself is a symlink --------------------------------------------------


def test_destination_root_symlink_is_followed_once(env, tmp_path):
    real = str(tmp_path / "real-dst")
    os.makedirs(real)
    link = str(tmp_path / "dst-link")
    os.symlink(real, link)
    canary = tree_state(env.outside)
    cp = push(env, dst=link)
    assert_ok(cp)
    assert os.path.islink(link)
    env.dst = real
    assert_replicated(env, DS0)
    assert_replicated(env, DS1)
    assert tree_state(env.outside) == canary
    assert run_drsync("verify", real).returncode == 0


def test_clean_push_after_setup_succeeds(env):
    """Control for this file's fixture: untampered, the same push succeeds."""
    assert_ok(push(env))
    assert_replicated(env, DS0)
    assert os.readlink(os.path.join(env.dds(DS0), "latest")) == f"v{V4}"
    assert stat.S_IMODE(os.stat(os.path.join(env.dds(DS0), ".drsync")).st_mode) & 0o022 == 0
