"""Step 1 of DESIGN §4 with ``partial/<files dir>/<file>``: the files directories of a new version
arrive in partial/ under their final names and are moved into ``files/`` with one rename each; a
files directory the destination already has is filled file by file. Partials an earlier drsync
left flat in partial/ are still resumed."""

from __future__ import annotations

import os

import invariants
import treegen
from publish_helpers import half_sent, make_pair, partial_dirs, partial_files, push, real_files, report

import drsync
from drsync import fsutil

SHAPE = treegen.Shape(datasets=1, variables=3, files=8, versions=2, changed=0.5, added=2, removed=0)


def _log_renames(monkeypatch) -> list[tuple[str, str]]:
    """(source path, destination path) of every rename made through fsutil.Dir."""
    log: list[tuple[str, str]] = []
    real = fsutil.Dir.rename

    def rename(self, name, dst, dst_name, **kw):
        log.append((os.path.join(self.path, name), os.path.join(dst.path, dst_name)))
        return real(self, name, dst, dst_name, **kw)

    monkeypatch.setattr(fsutil.Dir, "rename", rename)
    return log


def _into_files(log) -> list[tuple[str, str]]:
    return [(a, b) for a, b in log if f"{os.sep}partial{os.sep}" in a and f"{os.sep}files{os.sep}" in b]


def _one_file_already_there(tmp_path):
    """A destination with the first version, and one file of the new version already in
    files/var_0_<new>/ (what a run killed after renaming it leaves). Returns (src, dst, new version,
    that directory, the file's name, its inode)."""
    src, dst, [ds] = make_pair(str(tmp_path), SHAPE, published=1)
    new = ds.versions[-1]
    rel = os.path.relpath(ds.path, src)
    there = os.path.join(dst, rel, "files", f"var_0_{new}")
    os.makedirs(there)
    first = min(os.listdir(os.path.join(src, rel, "files", f"var_0_{new}")))
    os.link(os.path.join(src, rel, "files", f"var_0_{new}", first), os.path.join(there, first))
    kept = os.stat(os.path.join(there, first)).st_ino
    return src, dst, new, there, first, kept


def test_a_new_versions_files_dirs_are_moved_whole(tmp_path, monkeypatch):
    src, dst, [ds] = make_pair(str(tmp_path), SHAPE, published=1)
    new = ds.versions[-1]
    log = _log_renames(monkeypatch)
    r = drsync.push(src, dst)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    moves = _into_files(log)
    # one rename per files directory of the new version, each a whole directory
    assert sorted(os.path.basename(b) for _, b in moves) == [f"var_{i}_{new}" for i in range(SHAPE.variables)]
    assert all(os.path.basename(a) == os.path.basename(b) for a, b in moves)
    assert r.transferred.files == SHAPE.variables * 6  # 4 changed + 2 added per variable
    invariants.check_converged(src, dst)
    assert partial_files(dst) == {} and partial_dirs(dst) == []


def test_a_files_dir_already_there_is_filled_file_by_file(tmp_path, monkeypatch):
    """An interrupted run left one file of the new version in files/<dir>/ (renamed before the
    kill): that directory is not replaced, its missing files are renamed into it one by one, and
    the other directories still move whole."""
    src, dst, new, there, first, kept = _one_file_already_there(tmp_path)
    log = _log_renames(monkeypatch)
    r = drsync.push(src, dst)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    moves = _into_files(log)
    per_file = [b for _, b in moves if os.path.basename(os.path.dirname(b)) == f"var_0_{new}"]
    assert len(per_file) == 5 and first not in {os.path.basename(b) for b in per_file}
    whole = sorted(os.path.basename(b) for _, b in moves if b not in per_file)
    assert whole == [f"var_{i}_{new}" for i in range(1, SHAPE.variables)]
    assert os.stat(os.path.join(there, first)).st_ino == kept, "the file already there was replaced"
    invariants.check_converged(src, dst)
    assert partial_files(dst) == {} and partial_dirs(dst) == [], "an emptied partial directory was left"


def test_a_files_dir_that_appears_before_the_move_is_never_replaced(tmp_path, monkeypatch):
    """The check that files/<dir> is absent and the rename are two steps: a directory appearing
    between them (here: the check is made to miss it) must make the rename fail (RENAME_NOREPLACE),
    not replace it, and the files then go in one by one next to what was there."""
    src, dst, new, there, first, kept = _one_file_already_there(tmp_path)
    real = fsutil.Dir.try_lstat

    def try_lstat(self, name):
        if name == f"var_0_{new}" and os.path.basename(self.path) == "files":
            return None  # as if it appeared only after this look
        return real(self, name)

    monkeypatch.setattr(fsutil.Dir, "try_lstat", try_lstat)
    r = drsync.push(src, dst)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert os.stat(os.path.join(there, first)).st_ino == kept, "the directory already there was replaced"
    invariants.check_converged(src, dst)
    assert partial_files(dst) == {} and partial_dirs(dst) == []


def test_a_stray_file_in_a_partial_dir_is_not_published(tmp_path):
    """partial/<dir>/ holding a file the plan does not send (left by a run with another source):
    the directory is not moved whole, so the stray never reaches files/."""
    src, dst, [ds] = make_pair(str(tmp_path), SHAPE, published=1)
    new = ds.versions[-1]
    rel = os.path.relpath(ds.path, src)
    pdir = os.path.join(dst, rel, ".drsync", "partial", f"var_1_{new}")
    os.makedirs(pdir)
    with open(os.path.join(pdir, "stray.nc"), "wb") as fh:
        fh.write(b"not in any version")
    report(push(src, dst))
    invariants.check_converged(src, dst)
    assert not os.path.exists(os.path.join(dst, rel, "files", f"var_1_{new}", "stray.nc"))
    assert set(real_files(dst)) == set(real_files(src))


def test_a_flat_partial_of_an_earlier_drsync_is_resumed(tmp_path):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    _, to_send, resumed, head = half_sent(src, dst, SHAPE, flat=True)
    done = report(push(src, dst))
    sent = done["transferred"]
    assert sent["files"] == len(to_send)
    assert sent["bytes"] == sum(e.size for e in to_send) - len(head), "the flat partial was not resumed"
    invariants.check_converged(src, dst)
    assert partial_files(dst) == {} and partial_dirs(dst) == []
