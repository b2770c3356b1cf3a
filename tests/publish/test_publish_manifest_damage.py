"""FAULTS D7: the destination's manifest is missing, truncated or has a flipped byte. It is never
trusted blindly: the next push rebuilds it by scanning (versions are immutable, so a rescan is
O(versions)), re-sends nothing that is present and verified, and `verify` stays clean."""

from __future__ import annotations

import json
import os
import re

import invariants
import pytest
import treegen
from publish_helpers import assert_not_rewritten, make_pair, push, real_files, report, state_dirs

SHAPE = treegen.Shape(datasets=2, variables=2, files=6, versions=3)


def _hex_digit_swap(data: bytes) -> bytes:
    """Change one hex digit inside the first version digest: still valid JSON, wrong content."""
    m = re.search(rb'"digest":"([0-9a-f]{32})"', data)
    assert m, data[:200]
    i = m.start(1) + 7
    return data[:i] + (b"0" if data[i:i + 1] != b"0" else b"1") + data[i + 1:]


def _latest_digit_swap(data: bytes) -> bytes:
    """`latest` names another (existing) version: valid JSON, wrong content."""
    doc = json.loads(data)
    older = min(doc["versions"], key=int)
    out = data.replace(f'"latest":"{doc["latest"]}"'.encode(), f'"latest":"{older}"'.encode())
    assert out != data
    return out


DAMAGE = {
    "deleted": None,
    "empty": lambda d: b"",
    "truncated": lambda d: d[: len(d) // 2],
    "flipped-first-byte": lambda d: bytes([d[0] ^ 0xFF]) + d[1:],
    "flipped-middle-byte": lambda d: d[: len(d) // 2] + bytes([d[len(d) // 2] ^ 0x01]) + d[len(d) // 2 + 1:],
    "digest-digit-changed": _hex_digit_swap,
    "latest-changed": _latest_digit_swap,
}


def _damage(path: str, how: str) -> None:
    if DAMAGE[how] is None:
        os.unlink(path)
        return
    with open(path, "rb") as fh:
        data = fh.read()
    new = DAMAGE[how](data)
    assert new != data
    with open(path, "wb") as fh:
        fh.write(new)


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_index_is_rebuilt_without_resending(tmp_path, how):
    src, dst, _ = make_pair(str(tmp_path), SHAPE, published=SHAPE.versions)
    manifests = state_dirs(dst, "manifest")
    assert len(manifests) == SHAPE.datasets
    index = os.path.join(manifests[0], "index.json")
    with open(index, "rb") as fh:
        good = json.loads(fh.read())
    kept = real_files(dst)
    before = invariants.snapshot(dst)
    _damage(index, how)

    done = report(push(src, dst))
    assert done["totals"]["versions_to_add"] == 0 and done["totals"]["conflicts"] == 0
    assert done["transferred"]["files"] == 0 and done["transferred"]["bytes"] == 0
    with open(index, "rb") as fh:
        assert json.loads(fh.read()) == good, "the index was not rebuilt to its true content"
    invariants.check(src, dst, before)
    invariants.check_converged(src, dst)  # diff exit 0, verify --checksum exit 0
    v = invariants.run_drsync("verify", dst)
    assert v.returncode == 0, v.stdout + v.stderr
    assert_not_rewritten(kept, dst)


@pytest.mark.parametrize("how", ["deleted", "truncated", "digest-digit-changed"])
def test_damaged_index_then_new_version_sends_only_new_files(tmp_path, how):
    """The same damage, but the source has moved on: only the new version's files travel."""
    src, dst, gen = make_pair(str(tmp_path), SHAPE, published=SHAPE.versions)
    for ds in gen:
        ds.add_version()
    for m in state_dirs(dst, "manifest"):
        _damage(os.path.join(m, "index.json"), how)
    kept = real_files(dst)
    before = invariants.snapshot(dst)
    missing = set(real_files(src)) - set(kept)
    assert missing
    done = report(push(src, dst))
    assert done["transferred"]["files"] == len(missing)
    assert done["totals"]["conflicts"] == 0
    invariants.check(src, dst, before)
    invariants.check_converged(src, dst)
    assert_not_rewritten(kept, dst)


@pytest.mark.parametrize("how", ["deleted", "truncated", "flipped-middle-byte"])
def test_damaged_entry_lists_then_new_version(tmp_path, how):
    """An older version's entry list (manifest/v<ver>.json) is damaged while a new version that
    reuses its files arrives. The push sends exactly the new files (it plans from the source's copy
    of the common versions and stays O(versions), so it need not read the damaged lists); a list
    that is missing is rescanned at once; a damaged one is named by `verify` and rebuilt by
    `drsync scan`, never trusted."""
    src, dst, gen = make_pair(str(tmp_path), SHAPE, published=SHAPE.versions)
    for ds in gen:
        ds.add_version()
    for m in state_dirs(dst, "manifest"):
        for name in os.listdir(m):
            if name.startswith("v") and name.endswith(".json"):
                _damage(os.path.join(m, name), how)
    kept = real_files(dst)
    before = invariants.snapshot(dst)
    missing = set(real_files(src)) - set(kept)
    done = report(push(src, dst))
    assert done["transferred"]["files"] == len(missing)
    invariants.check(src, dst, before)
    if how != "deleted":
        v = invariants.run_drsync("verify", dst)
        assert v.returncode == 1 and "manifest entry list missing or damaged" in v.stdout, v.stdout[-2000:]
        assert invariants.run_drsync("scan", dst).returncode == 0
    invariants.check_converged(src, dst)
    assert_not_rewritten(kept, dst)
