"""DESIGN §4 step 1 / §9 "resume": a partial survives a kill and is resumed, not restarted."""

from __future__ import annotations

import os

import invariants
import treegen
from publish_helpers import KILLED, check_unpublished, partial_files, push, real_files, report

BIG = 48 << 20


def test_big_file_partial_is_resumed(fast_tmp):
    src, dst = str(fast_tmp / "src"), str(fast_tmp / "dst")
    treegen.make_node(src, treegen.Shape(datasets=1, variables=1, files=1, versions=1, size=BIG))
    os.makedirs(dst)
    before = invariants.snapshot(dst)

    crashed = push(src, dst, fault="partial_write:1")  # after the first MiB of the file
    assert crashed.returncode == KILLED, crashed.stderr
    invariants.check(src, dst, before)
    check_unpublished(src, dst)
    assert real_files(dst) == {}, "nothing may be in files/ before its bytes are whole and checked"
    parts = partial_files(dst)
    assert len(parts) == 1, parts
    (part_path, part_size), = parts.items()
    assert 0 < part_size < BIG, part_size
    assert os.path.basename(os.path.dirname(os.path.dirname(part_path))) == "partial"  # partial/<dir>/<file>

    rerun = report(push(src, dst))
    sent = rerun["transferred"]
    assert sent["files"] == 1
    assert sent["bytes"] < BIG, "the partial was thrown away: the transfer restarted"
    assert sent["bytes"] == BIG - part_size, "the resumed transfer must send exactly the missing tail"
    invariants.check(src, dst, before)
    invariants.check_converged(src, dst)
    assert partial_files(dst) == {}
    [(path, _)] = real_files(dst).items()
    with open(os.path.join(src, path), "rb") as a, open(os.path.join(dst, path), "rb") as b:
        assert a.read() == b.read()
