"""FAULTS D5: stale leftovers of an old crash. A partial is only reused once its digest checks out,
else discarded; a stale staging directory with the target's name and a stray tmp `latest` link are
removed (never followed); the run succeeds with the source's bytes."""

from __future__ import annotations

import os

import invariants
import pytest
import treegen
from publish_helpers import (
    KILLED,
    assert_not_rewritten,
    make_canary,
    make_pair,
    partial_files,
    push,
    real_files,
    report,
    state_dirs,
)

LATEST_TMP = ".latest.drsync-tmp"
MIB = 1 << 20


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def _converged(src, dst, outside, canary):
    invariants.check_converged(src, dst)
    assert set(real_files(dst)) == set(real_files(src))
    assert partial_files(dst) == {}, "a discarded partial was left behind"
    assert invariants.tree_state(outside) == canary


@pytest.mark.parametrize("damage", ["flip-in-prefix", "grown-past-size"])
def test_resumable_partial_with_wrong_bytes_is_discarded(tmp_path, damage):
    """A 3 MiB file killed after its first MiB; the partial is then damaged. Resuming it as is
    would publish wrong bytes: the run must notice (digest), fetch afresh and succeed."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    outside, canary = make_canary(str(tmp_path))
    size = 3 * MIB
    treegen.make_node(src, treegen.Shape(datasets=1, variables=1, files=1, versions=1, size=size))
    os.makedirs(dst)
    assert push(src, dst, fault="partial_write:1").returncode == KILLED
    (part, psize), = partial_files(dst).items()
    assert 0 < psize < size
    if damage == "flip-in-prefix":
        _flip(part, psize // 2)
    else:  # longer than the file itself: cannot be a prefix
        with open(part, "ab") as fh:
            fh.write(b"\0" * (size + 1 - psize))
    done = report(push(src, dst))
    assert done["transferred"]["files"] == 1
    if damage == "flip-in-prefix":
        assert done["transferred"]["bytes"] >= size, "the bad prefix cannot have been trusted"
    _converged(src, dst, outside, canary)


def test_complete_partials_with_wrong_bytes_or_planted_links_are_discarded(tmp_path):
    """Killed after the batch flush: whole partials wait for their rename. One gets a flipped
    byte (same size and name), one is replaced by a symlink to the canary outside."""
    src, dst, _ = make_pair(str(tmp_path), treegen.Shape(datasets=1, variables=2, files=6, versions=3), published=1)
    outside, canary = make_canary(str(tmp_path))
    before = invariants.snapshot(dst)
    assert push(src, dst, fault="after_fsync:1").returncode == KILLED
    parts = sorted(partial_files(dst))
    assert len(parts) >= 2, parts
    _flip(parts[0], 10)
    os.unlink(parts[1])
    os.symlink(os.path.join(outside, "secret.nc"), parts[1])
    missing = set(real_files(src)) - set(real_files(dst))
    done = report(push(src, dst))
    assert done["transferred"]["files"] == len(missing)
    invariants.check(src, dst, before)
    _converged(src, dst, outside, canary)


def _stale_pair(tmp_path):
    src, dst, gen = make_pair(str(tmp_path), treegen.Shape(datasets=1, variables=2, files=6, versions=4), published=2)
    ds = gen[0]
    return src, dst, os.path.join(dst, ds.drs), ds.versions


def test_stale_staging_dir_with_target_name_is_removed(tmp_path):
    src, dst, _, versions = _stale_pair(tmp_path)
    outside, canary = make_canary(str(tmp_path))
    before = invariants.snapshot(dst)
    kept = real_files(dst)
    staging, = state_dirs(dst, "staging")
    target = os.path.join(staging, f"v{versions[2]}")  # the name the run is about to build
    os.makedirs(os.path.join(target, "var_0"))
    os.symlink("../../files/var_0_20100101/not-in-source.nc", os.path.join(target, "var_0", "var_0_000000.nc"))
    os.symlink(os.path.join(outside, "secret.nc"), os.path.join(target, "var_0", "escape.nc"))
    os.symlink(os.path.join(outside, "sub"), os.path.join(target, "var_1"))  # a dir swapped for a link
    with open(os.path.join(target, "junk"), "wb") as fh:
        fh.write(b"stale")
    os.symlink(outside, os.path.join(staging, f"v{versions[3]}"))  # the next one: a link to outside

    done = report(push(src, dst))
    assert done["datasets"][0]["versions_to_add"] == versions[2:]
    invariants.check(src, dst, before)
    assert os.listdir(staging) == []
    assert_not_rewritten(kept, dst)
    _converged(src, dst, outside, canary)


@pytest.mark.parametrize("where", ["beside-latest", "in-staging"])
@pytest.mark.parametrize("work", [True, False], ids=["new-versions", "in-sync"])
def test_stray_latest_tmp_link_is_removed(tmp_path, where, work):
    src, dst, ds, versions = _stale_pair(tmp_path)
    outside, canary = make_canary(str(tmp_path))
    if not work:
        report(push(src, dst))
    before = invariants.snapshot(dst)
    staging, = state_dirs(dst, "staging")
    stray = os.path.join(ds if where == "beside-latest" else staging, LATEST_TMP)
    os.symlink(f"v{versions[0]}", stray)  # would move `latest` backwards if it were used
    also = os.path.join(ds if where == "in-staging" else staging, LATEST_TMP)
    os.symlink(outside, also)  # and one to the canary dir on the other side

    missing = set(real_files(src)) - set(real_files(dst))
    assert bool(missing) == work
    done = report(push(src, dst))
    assert done["transferred"]["files"] == len(missing)
    assert not os.path.lexists(stray) and not os.path.lexists(also)
    assert os.readlink(os.path.join(ds, "latest")) == f"v{versions[-1]}"
    invariants.check(src, dst, before)
    _converged(src, dst, outside, canary)


def test_stale_manifest_temp_file_is_removed(tmp_path):
    """A manifest write killed between its temp file and the rename leaves `.index.json.tmp<pid>`;
    the next run removes it (FAULTS §7.1 I6/I7: no leftovers after convergence)."""
    import drsync
    import treegen

    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    treegen.make_node(src)
    assert drsync.push(src, dst).exit_code == 0
    stale = []
    for dirpath, _, _ in os.walk(dst):
        if dirpath.endswith(os.path.join(".drsync", "manifest")):
            p = os.path.join(dirpath, ".index.json.tmp99999")
            with open(p, "w") as fh:
                fh.write('{"half": ')
            stale.append(p)
    assert stale
    assert drsync.push(src, dst).exit_code == 0
    assert not any(os.path.exists(p) for p in stale)
