"""One contract, three transports (DESIGN §5/§6): local paths, ssh with asyncssh, ssh with paramiko.

Every case runs the same steps with the same assertions on every transport; only the way the
destination is named (a path, or ``drsync-test:/abs/path``) and the ssh flags differ. The remote
directory of the ssh transports is on this machine's disk, so it is inspected directly.
"""

from __future__ import annotations

import os

import pytest

import drsync
import treegen
from invariants import check, check_converged, snapshot
from transport_helpers import (TRANSPORTS, assert_identical, drop_newest_version, error_lines, latest_at, listing,
                               make_transport, real_file_inodes, tree_diff, versions_at)

ZERO_TOTALS = {"versions_to_add": 0, "files_to_send": 0, "bytes_to_send": 0, "links_to_make": 0, "naive_bytes": 0,
               "conflicts": 0}


@pytest.fixture(params=TRANSPORTS)
def tp(request):
    """The transport under test (for ssh: the sshd fixture and a throwaway HOME)."""
    if request.param == "local":
        return make_transport("local")
    home = request.getfixturevalue("ssh_client_env")
    return make_transport(request.param, home)


@pytest.fixture
def src_nodes(tmp_path):
    """A source node: 2 datasets x 3 versions (TINY shape), and a fresh destination path."""
    src = str(tmp_path / "src")
    gen = treegen.make_node(src, treegen.TINY, versions=3)
    return src, str(tmp_path / "dst"), gen


def _by_path(doc):
    return {d["path"]: d for d in doc["datasets"]}


def _push_ok(tp, src, dst, *flags):
    code, doc, err = tp.run_json("push", *flags, src, tp.node(dst))
    assert code == 0, err
    assert error_lines(err) == []
    return doc


def test_initial_push_exact_then_diff_in_sync(tp, src_nodes):
    src, dst, gen = src_nodes
    code, doc, err = tp.run_json("push", src, tp.node(dst))
    assert code == 0, err
    assert doc["format"] == "drsync-report/1" and doc["command"] == "push" and doc["dry_run"] is False
    assert doc["destination"] == tp.node(dst)
    total_files = sum(len(os.listdir(os.path.join(ds.path, "files", d)))
                      for ds in gen for d in os.listdir(os.path.join(ds.path, "files")))
    assert doc["totals"]["files_to_send"] == total_files
    assert doc["transferred"]["files"] == total_files
    assert doc["transferred"]["bytes"] == total_files * treegen.TINY.size
    assert {d["path"]: d["versions_to_add"] for d in doc["datasets"]} == {ds.drs: ds.versions for ds in gen}
    assert_identical(src, dst)
    for ds in gen:
        assert latest_at(os.path.join(dst, ds.drs)) == f"v{ds.versions[-1]}"
    check(src, dst, {})

    # diff afterwards: in sync, exit 0, every total zero
    code, doc, err = tp.run_json("diff", src, tp.node(dst))
    assert code == 0, err
    assert doc["command"] == "diff" and doc["dry_run"] is True
    assert {k: doc["totals"][k] for k in ZERO_TOTALS} == ZERO_TOTALS
    assert doc["totals"]["datasets"] == len(gen)
    assert "transferred" not in doc
    # and the human report exits 0 too
    r = tp.run("diff", src, tp.node(dst))
    assert r.returncode == 0, r.stderr
    check_converged(src, dst)


def test_one_new_version_moves_exactly_the_new_files(tp, src_nodes):
    src, dst, gen = src_nodes
    _push_ok(tp, src, dst)
    before_inodes = real_file_inodes(dst)
    before = snapshot(dst)
    assert before_inodes
    new = {}
    for ds in gen:
        v = ds.add_version()
        new[ds.drs] = (v, ds.new_bytes(v))

    code, doc, err = tp.run_json("diff", src, tp.node(dst))
    assert code == 1, err  # work to do
    assert doc["totals"]["files_to_send"] == sum(n for _, (n, _) in new.values())

    doc = _push_ok(tp, src, dst)
    assert doc["transferred"]["files"] == sum(n for _, (n, _) in new.values())
    assert doc["transferred"]["bytes"] == sum(b for _, (_, b) in new.values())
    for ds in gen:
        d = _by_path(doc)[ds.drs]
        assert d["versions_to_add"] == [new[ds.drs][0]]
        assert d["files_to_send"] == new[ds.drs][1][0]
    assert_identical(src, dst)
    check(src, dst, before)
    after = real_file_inodes(dst)
    # every file that was there is the very same file (not rewritten), and only new ones were added
    assert {k: after.get(k) for k in before_inodes} == before_inodes
    assert len(after) - len(before_inodes) == sum(n for _, (n, _) in new.values())
    code, doc, _ = tp.run_json("diff", src, tp.node(dst))
    assert code == 0 and doc["totals"]["files_to_send"] == 0


def test_pull_back_into_an_empty_local_node(tp, src_nodes, tmp_path):
    src, dst, gen = src_nodes
    _push_ok(tp, src, dst)
    back = str(tmp_path / "back")
    code, doc, err = tp.run_json("pull", tp.node(dst), back)
    assert code == 0, err
    assert doc["command"] == "pull"
    assert doc["transferred"]["files"] == len(real_file_inodes(src))
    assert_identical(src, back)
    check_converged(src, back)
    # the library agrees, into a second empty node
    back2 = str(tmp_path / "back2")
    r = drsync.pull(tp.node(dst), back2, tp.options)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert_identical(src, back2)


def test_up_to_then_the_rest(tp, src_nodes):
    src, dst, gen = src_nodes
    upto = gen[0].versions[1]
    doc = _push_ok(tp, src, dst, "--up-to", upto)
    for ds in gen:
        ddir = os.path.join(dst, ds.drs)
        assert versions_at(ddir) == ds.versions[:2]
        assert latest_at(ddir) == f"v{upto}"
        assert _by_path(doc)[ds.drs]["versions_to_add"] == ds.versions[:2]
    check(src, dst, {})
    code, doc, _ = tp.run_json("diff", "--up-to", upto, src, tp.node(dst))
    assert code == 0 and doc["totals"]["versions_to_add"] == 0
    code, doc, _ = tp.run_json("diff", src, tp.node(dst))
    assert code == 1 and doc["totals"]["versions_to_add"] == len(gen)
    _push_ok(tp, src, dst)
    assert_identical(src, dst)


def test_delete_removes_extra_versions_only_with_the_flag(tp, src_nodes):
    src, dst, gen = src_nodes
    extra = {ds.drs: ds.add_version() for ds in gen}
    _push_ok(tp, src, dst)
    for ds in gen:
        assert drop_newest_version(ds) == extra[ds.drs]
    files_before = real_file_inodes(dst)

    doc = _push_ok(tp, src, dst)  # without --delete: kept, reported, latest never moves back
    for ds in gen:
        ddir = os.path.join(dst, ds.drs)
        assert _by_path(doc)[ds.drs]["extra_versions"] == [extra[ds.drs]]
        assert extra[ds.drs] in versions_at(ddir)
        assert latest_at(ddir) == f"v{extra[ds.drs]}"
    assert real_file_inodes(dst) == files_before

    _push_ok(tp, src, dst, "--delete")
    for ds in gen:
        ddir = os.path.join(dst, ds.drs)
        assert extra[ds.drs] not in versions_at(ddir)
        assert latest_at(ddir) == f"v{ds.versions[-2]}"
    after = real_file_inodes(dst)
    gone = set(files_before) - set(after)
    assert gone
    for p in gone:  # only files of the dropped version's own files/ dirs went away
        drs = next(ds.drs for ds in gen if p.startswith(ds.drs + os.sep))
        assert p.split(os.sep)[-2].rpartition("_")[2] == extra[drs], p
    assert {k: after[k] for k in after} == {k: files_before[k] for k in after}  # shared files untouched
    assert_identical(src, dst)
    check_converged(src, dst)


def test_conflict_exit_3_nothing_of_that_dataset_written(tp, src_nodes, tmp_path):
    src, dst, gen = src_nodes
    # Another node holds versions 1-2 of the same generator, one byte of dataset 0's v1 differing.
    other = str(tmp_path / "other")
    treegen.make_node(other, treegen.TINY, versions=2)
    d0 = os.path.join(other, gen[0].drs, "files", f"var_0_{gen[0].versions[0]}")
    victim = os.path.join(d0, sorted(os.listdir(d0))[0])
    with open(victim, "r+b") as fh:
        b = fh.read(1)
        fh.seek(0)
        fh.write(bytes([b[0] ^ 0xFF]))
    _push_ok(tp, other, dst)
    ds0_before = listing(os.path.join(dst, gen[0].drs), skip_state=True)

    code, doc, err = tp.run_json("push", src, tp.node(dst))
    assert code == 3, err
    lines = error_lines(err)
    assert len(lines) == 1 and gen[0].drs in lines[0] and f"v{gen[0].versions[0]}" in lines[0], err
    conflicts = _by_path(doc)[gen[0].drs]["conflicts"]
    assert conflicts[0] == gen[0].versions[0] and set(conflicts) <= set(gen[0].versions[:2])
    assert _by_path(doc)[gen[1].drs]["conflicts"] == []
    assert doc["totals"]["conflicts"] == len(conflicts)
    assert listing(os.path.join(dst, gen[0].drs), skip_state=True) == ds0_before
    # the other dataset is replicated in full
    assert_identical(gen[1].path, os.path.join(dst, gen[1].drs))
    # diff keeps saying so, and writes nothing
    code, doc, _ = tp.run_json("diff", src, tp.node(dst))
    assert code == 3 and doc["totals"]["conflicts"] == len(conflicts)
    assert listing(os.path.join(dst, gen[0].drs), skip_state=True) == ds0_before


def test_unsafe_source_exit_4_other_dataset_replicated(tp, src_nodes):
    src, dst, gen = src_nodes
    ds0 = gen[0]
    v1, vlast = ds0.versions[0], ds0.versions[-1]
    with open(os.path.join(ds0.path, "files", f"var_0_{v1}", "extra.nc"), "wb") as fh:
        fh.write(b"real bytes\n")
    os.symlink(f"../../files/var_0_{v1}/./extra.nc", os.path.join(ds0.path, f"v{vlast}", "var_0", "extra.nc"))

    r = tp.run("push", src, tp.node(dst))
    assert r.returncode == 4, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and ds0.drs in lines[0] and "extra.nc" in lines[0], r.stderr
    assert not os.path.lexists(os.path.join(dst, ds0.drs))  # not even its directory
    assert_identical(gen[1].path, os.path.join(dst, gen[1].drs))
    code, doc, _ = tp.run_json("diff", src, tp.node(dst))
    assert code == 4
    assert not os.path.lexists(os.path.join(dst, ds0.drs))


def test_dry_run_writes_nothing_at_the_destination(tp, src_nodes):
    src, dst, gen = src_nodes
    # into a destination that does not exist: not even the root is created
    code, doc, err = tp.run_json("push", "--dry-run", src, tp.node(dst))
    assert code == 0, err
    assert doc["dry_run"] is True and doc["totals"]["versions_to_add"] == 3 * len(gen)
    assert "transferred" not in doc or not doc["transferred"]
    assert not os.path.lexists(dst)
    # into an existing one with work to do (a new version and --delete-able extras): nothing moves
    _push_ok(tp, src, dst, "--up-to", gen[0].versions[1])
    before = listing(dst)
    r = tp.run("push", "--dry-run", "--delete", src, tp.node(dst))
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout
    assert listing(dst) == before
    assert tree_diff(src, dst).returncode == 1
