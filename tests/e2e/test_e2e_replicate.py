"""End to end: push / pull / diff between two local nodes, through the library and the real CLI."""

from __future__ import annotations

import json
import os

import drsync
from e2e_util import (DATASET_KEYS, LATEST_KEYS, TOP_KEYS, TOTALS_KEYS, TRANSFERRED_KEYS, assert_identical,
                      by_path, cli_json, drop_newest_version, inodes, latest_at, listing, real_files, tree_diff,
                      versions_at)
from invariants import check, check_converged, run_drsync, snapshot


def test_initial_push_cli_is_identical(nodes):
    src, dst, generated = nodes
    assert len(generated) == 2 and all(len(d.versions) == 4 for d in generated)
    assert tree_diff(src, dst).returncode != 0  # the destination does not exist yet
    r = run_drsync("push", src, dst)
    assert r.returncode == 0, r.stderr
    assert_identical(src, dst)
    for ds in generated:
        assert latest_at(os.path.join(dst, ds.drs)) == f"v{ds.versions[-1]}"
    check(src, dst, {})
    check_converged(src, dst)


def test_initial_push_library_reports_everything(nodes):
    src, dst, generated = nodes
    result = drsync.push(src, dst, drsync.Options())
    assert result.exit_code == 0
    assert_identical(src, dst)
    plans = {d.path: d for d in result.plan.datasets}
    assert set(plans) == {ds.drs for ds in generated}
    total_files = sum(len(real_files(ds.path)) for ds in generated)
    total_bytes = sum(os.path.getsize(p) for ds in generated for p in real_files(ds.path).values())
    for ds in generated:
        assert plans[ds.drs].versions_to_add == tuple(ds.versions)
    assert result.transferred.files == total_files
    assert result.transferred.bytes == total_bytes


def test_diff_json_in_sync_has_the_design_fields(pushed):
    src, dst, generated = pushed
    code, doc, _ = cli_json("diff", "--json", src, dst)
    assert code == 0
    assert set(doc) == TOP_KEYS  # no `transferred` for diff
    assert doc["format"] == "drsync-report/1"
    assert doc["command"] == "diff"
    assert doc["dry_run"] is True
    assert doc["source"] == src and doc["destination"] == dst
    assert len(doc["datasets"]) == len(generated)
    for d in doc["datasets"]:
        assert set(d) == DATASET_KEYS
        assert set(d["latest"]) == LATEST_KEYS
        assert d["versions_to_add"] == []
        assert d["files_to_send"] == d["bytes_to_send"] == d["links_to_make"] == d["naive_bytes"] == 0
        assert d["conflicts"] == [] and d["extra_versions"] == []
    for ds in generated:
        latest = by_path(doc)[ds.drs]["latest"]
        assert latest == {"source": ds.versions[-1], "destination": ds.versions[-1]}
    assert set(doc["totals"]) == TOTALS_KEYS
    assert doc["totals"]["datasets"] == len(generated)
    assert all(doc["totals"][k] == 0 for k in TOTALS_KEYS - {"datasets"})


def test_one_new_version(pushed):
    src, dst, generated = pushed
    new = {}
    for ds in generated:
        v = ds.add_version()
        new[ds.drs] = (v, *ds.new_bytes(v))
    before_ino = inodes(dst, generated)
    before = snapshot(dst)
    assert before_ino

    code, doc, _ = cli_json("diff", "--json", src, dst)
    assert code == 1
    for drs, (v, nfiles, nbytes) in new.items():
        d = by_path(doc)[drs]
        assert d["versions_to_add"] == [v]
        assert d["files_to_send"] == nfiles and nfiles > 0
        assert d["bytes_to_send"] == nbytes
        assert d["naive_bytes"] > d["bytes_to_send"]  # most entries reuse older files
        assert d["latest"]["destination"] != v
    assert doc["totals"]["versions_to_add"] == len(generated)
    assert doc["totals"]["files_to_send"] == sum(x[1] for x in new.values())
    assert doc["totals"]["bytes_to_send"] == sum(x[2] for x in new.values())

    code, doc, err = cli_json("push", "--json", src, dst)
    assert code == 0, err
    assert set(doc) == TOP_KEYS | {"transferred"}
    assert doc["command"] == "push" and doc["dry_run"] is False
    assert set(doc["transferred"]) == TRANSFERRED_KEYS
    assert doc["transferred"]["files"] == sum(x[1] for x in new.values())
    assert doc["transferred"]["bytes"] == sum(x[2] for x in new.values())

    after_ino = inodes(dst, generated)
    for path, ino in before_ino.items():
        assert after_ino.get(path) == ino, f"{path} was rewritten or removed"
    assert len(after_ino) == len(before_ino) + sum(x[1] for x in new.values())
    for ds in generated:
        assert latest_at(os.path.join(dst, ds.drs)) == f"v{new[ds.drs][0]}"
    assert_identical(src, dst)
    check(src, dst, before)


def test_noop_push(pushed):
    src, dst, generated = pushed
    before = listing(dst)
    code, doc, err = cli_json("push", "--json", src, dst)
    assert code == 0, err
    assert doc["transferred"]["files"] == 0 and doc["transferred"]["bytes"] == 0
    assert doc["totals"]["versions_to_add"] == 0
    after = listing(dst)
    # Published content untouched (the state dir may be rewritten).
    pub = {k: v for k, v in before.items() if ".drsync" not in k.split(os.sep)}
    assert pub == {k: v for k, v in after.items() if ".drsync" not in k.split(os.sep)}
    r = run_drsync("push", src, dst)
    assert r.returncode == 0
    assert "in sync" in r.stdout


def test_pull_into_empty_node(nodes, tmp_path):
    src, _, generated = nodes
    dst = str(tmp_path / "pulled")
    code, doc, err = cli_json("pull", "--json", src, dst)
    assert code == 0, err
    assert doc["command"] == "pull"
    assert doc["transferred"]["files"] == sum(len(real_files(ds.path)) for ds in generated)
    assert_identical(src, dst)
    # and through the library, into another empty node
    dst2 = str(tmp_path / "pulled-lib")
    result = drsync.pull(src, dst2)
    assert result.exit_code == 0 and result.command == "pull"
    assert_identical(src, dst2)
    check_converged(src, dst2)


def test_extra_versions_kept_then_deleted(pushed):
    src, dst, generated = pushed
    extra = {}
    for ds in generated:
        extra[ds.drs] = ds.add_version()
    assert drsync.push(src, dst).exit_code == 0
    assert_identical(src, dst)
    for ds in generated:
        assert drop_newest_version(ds) == extra[ds.drs]
    assert tree_diff(src, dst).returncode == 1
    dst_files_before = {ds.drs: set(real_files(os.path.join(dst, ds.drs))) for ds in generated}

    # Without --delete: kept, and reported.
    code, doc, err = cli_json("push", "--json", src, dst)
    assert code == 0, err
    for ds in generated:
        d = by_path(doc)[ds.drs]
        assert d["extra_versions"] == [extra[ds.drs]]
        assert extra[ds.drs] in versions_at(os.path.join(dst, ds.drs))
        assert latest_at(os.path.join(dst, ds.drs)) == f"v{extra[ds.drs]}"  # never moves backwards
    code, doc, _ = cli_json("diff", "--json", src, dst)
    assert all(by_path(doc)[ds.drs]["extra_versions"] == [extra[ds.drs]] for ds in generated)

    # With --delete: the extra version and the files only it used are gone; shared files stay.
    code, doc, err = cli_json("push", "--json", "--delete", src, dst)
    assert code == 0, err
    for ds in generated:
        ddir = os.path.join(dst, ds.drs)
        assert extra[ds.drs] not in versions_at(ddir)
        assert latest_at(ddir) == f"v{ds.versions[-2]}"
        gone = dst_files_before[ds.drs] - set(real_files(ddir))
        assert gone and all(p.split(os.sep)[1].endswith("_" + extra[ds.drs]) for p in gone)
    assert_identical(src, dst)
    r = run_drsync("verify", "--checksum", dst)
    assert r.returncode == 0, r.stdout
    code, doc, _ = cli_json("diff", "--json", src, dst)
    assert code == 0 and all(d["extra_versions"] == [] for d in doc["datasets"])


def test_up_to(nodes):
    src, dst, generated = nodes
    upto = generated[0].versions[1]
    code, doc, err = cli_json("push", "--json", "--up-to", upto, src, dst)
    assert code == 0, err
    for ds in generated:
        ddir = os.path.join(dst, ds.drs)
        assert versions_at(ddir) == ds.versions[:2]
        assert latest_at(ddir) == f"v{upto}"
        assert by_path(doc)[ds.drs]["versions_to_add"] == ds.versions[:2]
    # the v-prefixed spelling works too, and the rest arrives later
    code, doc, _ = cli_json("diff", "--json", "--up-to", f"v{upto}", src, dst)
    assert code == 0
    assert drsync.push(src, dst, drsync.Options(up_to=generated[0].versions[2])).exit_code == 0
    assert all(versions_at(os.path.join(dst, ds.drs)) == ds.versions[:3] for ds in generated)
    assert drsync.push(src, dst).exit_code == 0
    assert_identical(src, dst)


def test_link_makes_hard_links(nodes):
    src, dst, generated = nodes
    r = run_drsync("push", "--link", src, dst)
    assert r.returncode == 0, r.stderr
    assert_identical(src, dst)
    n = 0
    for ds in generated:
        for rel, p in real_files(ds.path).items():
            d = os.path.join(dst, ds.drs, rel)
            assert os.stat(d).st_ino == os.stat(p).st_ino, rel
            assert os.stat(d).st_nlink >= 2
            n += 1
    assert n > 0


def test_copy_is_not_a_hard_link(pushed):
    src, dst, generated = pushed
    for ds in generated:
        for rel, p in real_files(ds.path).items():
            assert os.stat(os.path.join(dst, ds.drs, rel)).st_ino != os.stat(p).st_ino


def test_copy_keeps_mtime_and_mode(nodes):
    src, dst, generated = nodes
    p0 = sorted(real_files(generated[0].path).values())[0]
    os.chmod(p0, 0o640)
    os.utime(p0, ns=(1_000_000_000_000_000_000, 1_000_000_000_123_456_789))
    assert drsync.push(src, dst).exit_code == 0
    for ds in generated:
        for rel, p in real_files(ds.path).items():
            s, d = os.stat(p), os.stat(os.path.join(dst, ds.drs, rel))
            assert d.st_mtime_ns == s.st_mtime_ns, rel
            assert (d.st_mode & 0o7777) == (s.st_mode & 0o7777), rel


def test_state_dir_keeps_destination_pristine(nodes, tmp_path):
    src, dst, generated = nodes
    state = str(tmp_path / "state")
    r = run_drsync("push", "--state-dir", state, src, dst)
    assert r.returncode == 0, r.stderr
    for ds in generated:
        assert not os.path.lexists(os.path.join(dst, ds.drs, ".drsync"))
    assert not any(".drsync" in dirs for _, dirs, _ in os.walk(dst))
    assert os.listdir(state)  # the state went there
    # diff -r with nothing excluded on the destination side: identical to the source's published tree
    r2 = run_drsync("diff", "--state-dir", state, "--json", src, dst)
    assert r2.returncode == 0, r2.stdout
    assert json.loads(r2.stdout)["totals"]["versions_to_add"] == 0
    for ds in generated:
        ds.add_version()
    r3 = run_drsync("push", "--state-dir", state, src, dst)
    assert r3.returncode == 0, r3.stderr
    assert not any(".drsync" in dirs for _, dirs, _ in os.walk(dst))
    assert_identical(src, dst)
    r4 = run_drsync("verify", "--state-dir", state, "--checksum", dst)
    assert r4.returncode == 0, r4.stdout


def test_single_dataset_and_dataset_filter(nodes, tmp_path):
    src, dst, generated = nodes
    one, other = generated
    code, doc, err = cli_json("push", "--json", "--dataset", one.drs, src, dst)
    assert code == 0, err
    assert [d["path"] for d in doc["datasets"]] == [one.drs]
    assert os.path.isdir(os.path.join(dst, one.drs))
    assert not os.path.exists(os.path.join(dst, other.drs))
    code, doc, _ = cli_json("diff", "--json", "--exclude", "*/ds_1/*", src, dst)
    assert code == 0 and [d["path"] for d in doc["datasets"]] == [one.drs]
    code, doc, _ = cli_json("diff", "--json", src, dst)
    assert code == 1 and by_path(doc)[other.drs]["versions_to_add"] == other.versions
    # a dataset directory as SRC and DST
    target = str(tmp_path / "single")
    r = run_drsync("push", other.path, target)
    assert r.returncode == 0, r.stderr
    assert_identical(other.path, target)
