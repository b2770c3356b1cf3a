"""--checksum on push/diff distrusts every recorded digest (FAULTS H1), and never hides corruption."""

import os

import drsync
import treegen


def _flip_one_published_byte(dst: str) -> str:
    for dirpath, _, files in os.walk(dst):
        if "/files/" in dirpath + "/" and files and ".drsync" not in dirpath:
            p = os.path.join(dirpath, sorted(files)[0])
            treegen.flip_byte(p)
            return p
    raise AssertionError("no published file found")


def test_checksum_push_reports_a_flipped_byte_as_conflict_and_keeps_it_visible(tmp_path):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    treegen.make_node(src)
    assert drsync.push(src, dst).exit_code == 0
    flipped = _flip_one_published_byte(dst)
    # Without --checksum the manifest is trusted (fast no-op) ...
    assert drsync.diff(src, dst).exit_code == 0
    # ... with --checksum every byte is re-read, so the dataset is not "in sync".
    r = drsync.push(src, dst, drsync.Options(checksum=True))
    assert r.exit_code == 3
    assert any(d.conflicts for d in r.plan.datasets)
    # The checksum run must not have rewritten the destination's record: verify still sees it.
    v = drsync.verify(dst, checksum=True)
    assert v.exit_code == 1
    assert any(flipped.endswith(f.path) for f in v.findings), v.findings
