"""`diff` and `push --dry-run` write nothing: not at the destination, and `diff` not at the source."""

from __future__ import annotations

import os

import drsync
from e2e_util import assert_identical, cli_json, listing
from invariants import run_drsync


def _state_listing(node: str) -> dict:
    return {k: v for k, v in listing(node).items() if ".drsync" in k.split(os.sep)}


def test_diff_and_dry_run_do_not_create_a_missing_destination(nodes):
    src, dst, generated = nodes
    src_before = listing(src)
    code, doc, _ = cli_json("diff", "--json", src, dst)
    assert code == 1
    assert doc["totals"]["versions_to_add"] == 4 * len(generated)
    code, doc, _ = cli_json("push", "--dry-run", "--json", src, dst)
    assert code == 0
    assert doc["dry_run"] is True and "transferred" not in doc
    assert doc["totals"]["versions_to_add"] == 4 * len(generated)
    r = run_drsync("push", "-n", src, dst)
    assert r.returncode == 0 and "nothing was written" in r.stdout
    assert drsync.diff(src, dst).exit_code == 1
    assert drsync.push(src, dst, drsync.Options(dry_run=True)).exit_code == 0
    assert not os.path.lexists(dst)
    assert listing(src) == src_before  # nothing new at the source either (no .drsync)


def test_diff_and_dry_run_leave_a_destination_unchanged(pushed):
    src, dst, generated = pushed
    for ds in generated:
        ds.add_version()
    src_state = _state_listing(src)
    assert src_state  # the push left a manifest cache at the source
    src_before = listing(src)
    dst_before = listing(dst)
    code, doc, _ = cli_json("diff", "--json", src, dst)
    assert code == 1 and doc["totals"]["versions_to_add"] == len(generated)
    code, doc, _ = cli_json("diff", "--json", "--delete", src, dst)
    assert code == 1
    code, doc, _ = cli_json("push", "--dry-run", "--json", "--delete", src, dst)
    assert code == 0 and doc["totals"]["files_to_send"] > 0
    assert drsync.diff(src, dst).exit_code == 1
    assert listing(dst) == dst_before
    assert _state_listing(src) == src_state
    assert listing(src) == src_before
    # and the real push still has everything to do
    code, doc, _ = cli_json("push", "--json", src, dst)
    assert code == 0 and doc["transferred"]["files"] == doc["totals"]["files_to_send"] > 0
    assert_identical(src, dst)
