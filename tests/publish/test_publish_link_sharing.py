"""A new version's links that the destination's previous published version already has, with the
same target, are hard links to those symlinks (staging.py): the same relative symlink under a
second name, with no inode to allocate. Everything else is a symlink of its own, and nothing is
ever shared with a tree outside the dataset."""

from __future__ import annotations

import errno
import os
import stat

import invariants
import pytest
import treegen

import drsync
from drsync import staging

SHAPE = treegen.Shape(datasets=1, variables=3, files=20, versions=3, changed=0.2, added=4, removed=1)


def _links(vdir: str) -> dict[str, os.stat_result]:
    out = {}
    for var in sorted(os.listdir(vdir)):
        for f in sorted(os.listdir(os.path.join(vdir, var))):
            st = os.lstat(os.path.join(vdir, var, f))
            assert stat.S_ISLNK(st.st_mode), (var, f)
            out[f"{var}/{f}"] = st
    return out


def _targets(vdir: str) -> dict[str, str]:
    return {k: os.readlink(os.path.join(vdir, k)) for k in _links(vdir)}


def test_unchanged_links_share_the_previous_versions_symlinks(tmp_path):
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    dst = str(tmp_path / "b")
    *older, prev, new = ds.versions
    assert drsync.push(src, dst, drsync.Options(up_to=prev)).exit_code == 0
    assert drsync.push(src, dst).exit_code == 0
    invariants.check_converged(src, dst)

    root = os.path.join(dst, ds.drs)
    old_links, new_links = _links(os.path.join(root, f"v{prev}")), _links(os.path.join(root, f"v{new}"))
    old_t, new_t = _targets(os.path.join(root, f"v{prev}")), _targets(os.path.join(root, f"v{new}"))
    same = {k for k in new_t if old_t.get(k) == new_t[k]}
    assert same and len(same) < len(new_t)  # the shape re-uses most links and changes some
    for k, st in new_links.items():
        if k in same:  # one inode, two names
            assert (st.st_ino, st.st_nlink) == (old_links[k].st_ino, 2), k
        else:  # changed or added: a symlink of its own, the old one untouched
            assert st.st_nlink == 1, k
            assert k not in old_links or old_links[k].st_ino != st.st_ino
    # the versions pushed in the first run, with nothing published before them, share nothing
    first = _links(os.path.join(root, f"v{older[0]}"))
    assert all(st.st_nlink == 1 for st in first.values())


@pytest.mark.parametrize("code", [errno.EMLINK, errno.EPERM])
def test_a_link_that_cannot_be_shared_is_made_as_a_symlink(tmp_path, monkeypatch, code):
    """A filesystem without hard links (EPERM) or an inode at its link limit (EMLINK): each link
    is then a new symlink, and the version is published as usual."""
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    dst = str(tmp_path / "b")
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[-2])).exit_code == 0
    tried = []

    def refuse(*args, **kwargs):
        tried.append(args)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(staging.os, "link", refuse)
    assert drsync.push(src, dst).exit_code == 0
    invariants.check_converged(src, dst)
    assert tried  # sharing was attempted ...
    links = _links(os.path.join(dst, ds.drs, f"v{ds.versions[-1]}"))
    assert all(st.st_nlink == 1 for st in links.values())  # ... and every link is its own


def test_a_previous_version_that_is_a_symlink_is_not_shared_from(tmp_path):
    """The previous version replaced by a symlink to a tree outside the dataset, holding links with
    the very targets of the new version: the new version never takes an inode from there, and
    the outside tree is left as it was."""
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    dst = str(tmp_path / "b")
    *_, prev, new = ds.versions
    assert drsync.push(src, dst, drsync.Options(up_to=prev)).exit_code == 0
    root = os.path.join(dst, ds.drs)
    outside = str(tmp_path / "outside")
    os.rename(os.path.join(root, f"v{prev}"), outside)
    os.symlink(outside, os.path.join(root, f"v{prev}"))
    before = {k: (st.st_ino, st.st_nlink) for k, st in _links(outside).items()}

    drsync.push(src, dst)  # refused or published: either way, nothing shared with the outside
    assert {k: (st.st_ino, st.st_nlink) for k, st in _links(outside).items()} == before
    vnew = os.path.join(root, f"v{new}")
    if os.path.isdir(vnew):
        inodes = {st.st_ino for st in _links(outside).values()}
        assert not inodes & {st.st_ino for st in _links(vnew).values()}


def test_previous_version_is_the_newest_published_below(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    for name in ("v9", "v20100101", "v20100301", "v20100201", "latest", "files", "vx", "v20100301.tmp"):
        (root / name).mkdir()
    with staging.Dir.open_root(str(root)) as d:
        assert staging.previous_version(d, "20100301") == "v20100201"
        assert staging.previous_version(d, "20100401") == "v20100301"
        assert staging.previous_version(d, "20100101") == "v9"  # numeric order, not text
        assert staging.previous_version(d, "9") is None
    assert staging.previous_version(None, "20100101") is None
