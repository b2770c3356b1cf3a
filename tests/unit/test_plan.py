"""The plan (DESIGN §3): diff_dataset on manifests refreshed from real trees."""

from __future__ import annotations

import os
import shutil

import pytest
import treegen
from unit_util import build, links_of, real_files, refresh, set_latest, write_file

from drsync.plan import Options, diff_dataset, versions_to_stage

ONE = treegen.Shape(datasets=1)


def gen(root, versions):
    [ds] = treegen.make_node(str(root), ONE, versions=versions)
    return ds


@pytest.fixture
def pair(tmp_path):
    """Source with 4 generated versions, destination with the first 2 (same bytes)."""
    s = gen(tmp_path / "a", 4)
    d = gen(tmp_path / "b", 2)
    return s, d


def manifests(s_path, d_path, d_loose=True):
    return refresh(s_path), refresh(d_path, loose=d_loose)


# --- versions to add ----------------------------------------------------------------------------


def test_versions_only_on_source_in_ascending_order(pair):
    s, d = pair
    sm, dm = manifests(s.path, d.path)
    plan = diff_dataset(sm, dm)
    assert plan.versions_to_add == tuple(s.versions[2:])
    assert versions_to_stage(sm, dm) == plan.versions_to_add  # what sync stages before the plan
    assert plan.conflicts == ()
    assert plan.extra_versions == ()
    assert plan.new_latest == s.versions[-1]
    assert plan.latest_source == s.versions[-1]
    assert plan.latest_destination == d.versions[-1]
    assert not plan.in_sync


def test_plain_integer_versions_added_in_numeric_order(tmp_path):
    spec = {v: {"x": {f"f{v}": (v, v.encode())}} for v in ["1", "2", "9", "10", "11"]}
    build(str(tmp_path / "a"), spec)
    build(str(tmp_path / "b"), {"1": spec["1"]})
    plan = diff_dataset(refresh(str(tmp_path / "a")), refresh(str(tmp_path / "b")))
    assert plan.versions_to_add == ("2", "9", "10", "11")
    assert plan.new_latest == "11"


def test_in_sync_when_equal(tmp_path):
    s = gen(tmp_path / "a", 3)
    d = gen(tmp_path / "b", 3)
    plan = diff_dataset(*manifests(s.path, d.path))
    assert plan.in_sync
    assert plan.versions_to_add == () and plan.files_to_send == () and plan.links_to_make == 0
    assert plan.new_latest is None


def test_empty_destination(tmp_path):
    s = gen(tmp_path / "a", 3)
    plan = diff_dataset(refresh(s.path), None)
    assert plan.versions_to_add == tuple(s.versions)
    assert {e.real for e in plan.files_to_send} == set().union(*(real_files(s.path, v) for v in s.versions))
    assert plan.new_latest == s.versions[-1]
    assert plan.latest_destination is None


# --- files to send, links, naive bytes ----------------------------------------------------------


def test_files_carried_over_are_not_sent(pair):
    s, d = pair
    plan = diff_dataset(*manifests(s.path, d.path))
    sent = [e.real for e in plan.files_to_send]
    assert len(sent) == len(set(sent))  # each real file once
    # exactly the real files the new versions own: nothing of v1/v2, which the destination holds
    assert set(sent) == real_files(s.path, s.versions[2]) | real_files(s.path, s.versions[3])
    # and the new versions do reference older files (so the saving is real)
    carried = [t for v in s.versions[2:] for t in links_of(s.path, v).values()
               if t.split("/")[3].rpartition("_")[2] in s.versions[:2]]
    assert carried
    assert plan.bytes_to_send == len(sent) * ONE.size


def test_links_and_naive_bytes_count_every_entry(pair):
    s, d = pair
    sm, dm = manifests(s.path, d.path)
    plan = diff_dataset(sm, dm)
    n_links = sum(len(links_of(s.path, v)) for v in s.versions[2:])
    assert plan.links_to_make == n_links
    sizes = sum(os.path.getsize(os.path.join(s.path, f"v{v}", var, f))  # dereferenced, like a naive copy
                for v in s.versions[2:] for (var, f) in links_of(s.path, v))
    assert plan.naive_bytes == sizes == n_links * ONE.size
    assert plan.naive_bytes > plan.bytes_to_send


def test_naive_bytes_with_unequal_sizes(tmp_path):
    a = str(tmp_path / "a")
    build(a, {"1": {"x": {"p": ("1", b"p" * 100)}},
              "2": {"x": {"p": ("1", b"p" * 100), "q": ("2", b"q" * 7)}, "y": {"r": ("2", b"")}}})
    b = build(str(tmp_path / "b"), {"1": {"x": {"p": ("1", b"p" * 100)}}})
    plan = diff_dataset(refresh(a), refresh(b))
    assert plan.versions_to_add == ("2",)
    assert plan.naive_bytes == 107
    assert plan.links_to_make == 3
    assert sorted(e.real for e in plan.files_to_send) == [("x_2", "q"), ("y_2", "r")]
    assert plan.bytes_to_send == 7


def test_file_from_interrupted_run_is_not_sent(pair):
    s, d = pair
    new = s.versions[2]
    owned = sorted(real_files(s.path, new))
    (fdir, fname), (fdir2, fname2) = owned[0], owned[1]
    os.makedirs(os.path.join(d.path, "files", fdir))
    shutil.copyfile(os.path.join(s.path, "files", fdir, fname), os.path.join(d.path, "files", fdir, fname))
    # a second one, left half-written: it must still be sent
    with open(os.path.join(s.path, "files", fdir2, fname2), "rb") as fh:
        half = fh.read()[: ONE.size // 2]
    write_file(d.path, fdir2.rpartition("_")[0], new, fname2, half)
    sm, dm = manifests(s.path, d.path, d_loose=True)
    assert (fdir, fname) in dm.index.loose
    plan = diff_dataset(sm, dm)
    sent = {e.real for e in plan.files_to_send}
    assert (fdir, fname) not in sent
    assert (fdir2, fname2) in sent
    assert sent == (real_files(s.path, s.versions[2]) | real_files(s.path, s.versions[3])) - {(fdir, fname)}
    # without the loose scan the destination does not know it holds the file
    plan2 = diff_dataset(sm, refresh(d.path, loose=False))
    assert (fdir, fname) in {e.real for e in plan2.files_to_send}


def test_loose_file_with_other_bytes_same_size_is_sent(tmp_path):
    a = build(str(tmp_path / "a"), {"1": {"x": {"p": ("1", b"1111")}}, "2": {"x": {"q": ("2", b"2222")}}})
    b = build(str(tmp_path / "b"), {"1": {"x": {"p": ("1", b"1111")}}})
    write_file(b, "x", "2", "q", b"2223")
    plan = diff_dataset(refresh(a), refresh(b, loose=True))
    assert [e.real for e in plan.files_to_send] == [("x_2", "q")]


# --- conflicts ----------------------------------------------------------------------------------


def test_conflict_when_a_file_differs(pair):
    s, d = pair
    victim_version = d.versions[1]
    fdir, fname = min(real_files(d.path, victim_version))
    p = os.path.join(d.path, "files", fdir, fname)
    with open(p, "r+b") as fh:  # same size, one byte different
        b0 = fh.read(1)
        fh.seek(0)
        fh.write(bytes([b0[0] ^ 0xFF]))
    plan = diff_dataset(*manifests(s.path, d.path))
    assert plan.conflicts == (victim_version,)
    assert versions_to_stage(*manifests(s.path, d.path)) == ()  # a refused plan stages nothing
    assert plan.versions_to_add == ()
    assert plan.files_to_send == ()
    assert plan.links_to_make == 0
    assert plan.new_latest is None
    assert not plan.in_sync


def test_conflict_when_a_link_target_differs(tmp_path):
    a = build(str(tmp_path / "a"), {"1": {"x": {"p": ("1", b"same")}}, "2": {"x": {"p": ("1", b"same")}}})
    b = build(str(tmp_path / "b"), {"1": {"x": {"p": ("1", b"same")}}, "2": {"x": {"p": ("2", b"same")}}})
    plan = diff_dataset(refresh(a), refresh(b))
    assert plan.conflicts == ("2",)
    assert plan.versions_to_add == ()


def test_mtime_alone_is_no_conflict(tmp_path):
    s = gen(tmp_path / "a", 2)
    d = gen(tmp_path / "b", 2)
    for dirpath, _, files in os.walk(os.path.join(d.path, "files")):
        for f in files:
            os.utime(os.path.join(dirpath, f), ns=(10**18, 10**18))
    plan = diff_dataset(*manifests(s.path, d.path))
    assert plan.conflicts == ()
    assert plan.in_sync


# --- extras and --delete ------------------------------------------------------------------------


def extra_trees(tmp_path):
    """Source v1, v2; destination v1, v2 and an extra v3 with one carried-over and one new file."""
    v1 = {"x": {"p": ("1", b"p1")}}
    v2 = {"x": {"p": ("1", b"p1"), "q": ("2", b"q2")}}
    v3 = {"x": {"q": ("2", b"q2"), "r": ("3", b"r3")}, "y": {"s": ("3", b"s3")}}
    a = build(str(tmp_path / "a"), {"1": v1, "2": v2})
    b = build(str(tmp_path / "b"), {"1": v1, "2": v2, "3": v3})
    return a, b


def test_extra_version_is_kept(tmp_path):
    a, b = extra_trees(tmp_path)
    plan = diff_dataset(refresh(a), refresh(b))
    assert plan.extra_versions == ("3",)
    assert plan.delete_versions == ()
    assert plan.delete_files == ()
    assert plan.new_latest is None  # never backwards from 3 to 2
    assert plan.versions_to_add == ()
    assert plan.in_sync


def test_delete_removes_extra_versions_and_only_their_files(tmp_path):
    a, b = extra_trees(tmp_path)
    plan = diff_dataset(refresh(a), refresh(b), Options(delete=True))
    assert plan.delete_versions == ("3",)
    # x_2/q is also used by v2, which stays
    assert set(plan.delete_files) == {("x_3", "r"), ("y_3", "s")}
    assert plan.new_latest == "2"  # latest pointed at the deleted version
    assert not plan.in_sync


def test_delete_keeps_files_of_remaining_versions(tmp_path):
    # the extra version v2 owns x_2/b, which v3 (on both nodes) still uses
    v1 = {"x": {"a": ("1", b"a")}}
    v3 = {"x": {"a": ("1", b"a"), "b": ("2", b"b"), "c": ("3", b"c")}}
    a = build(str(tmp_path / "a"), {"1": v1, "3": v3})
    b = build(str(tmp_path / "b"), {"1": v1, "2": {"x": {"b": ("2", b"b"), "only2": ("2", b"o")}}, "3": v3})
    plan = diff_dataset(refresh(a), refresh(b), Options(delete=True))
    assert plan.extra_versions == ("2",)
    assert plan.delete_versions == ("2",)
    assert plan.delete_files == (("x_2", "only2"),)
    assert plan.new_latest is None  # latest 3 stays


def test_delete_keeps_files_the_new_versions_need(tmp_path):
    # destination has an extra v2 whose file the source's new v3 references
    v1 = {"x": {"a": ("1", b"a")}}
    a = build(str(tmp_path / "a"), {"1": v1, "3": {"x": {"a": ("1", b"a"), "b": ("2", b"b")}}})
    b = build(str(tmp_path / "b"), {"1": v1, "2": {"x": {"b": ("2", b"b"), "z": ("2", b"z")}}})
    plan = diff_dataset(refresh(a), refresh(b), Options(delete=True))
    assert plan.versions_to_add == ("3",)
    assert plan.delete_versions == ("2",)
    assert plan.delete_files == (("x_2", "z"),)
    assert plan.new_latest == "3"


# --- --up-to and latest -------------------------------------------------------------------------


def test_up_to_stops_at_that_version(tmp_path):
    s = gen(tmp_path / "a", 4)
    d = gen(tmp_path / "b", 1)
    sm, dm = manifests(s.path, d.path)
    plan = diff_dataset(sm, dm, Options(up_to=s.versions[2]))
    assert plan.versions_to_add == tuple(s.versions[1:3])
    assert versions_to_stage(sm, dm, Options(up_to=s.versions[2])) == plan.versions_to_add
    assert plan.new_latest == s.versions[2]
    assert {e.real for e in plan.files_to_send} == real_files(s.path, s.versions[1]) | real_files(s.path, s.versions[2])
    assert plan.links_to_make == sum(len(links_of(s.path, v)) for v in s.versions[1:3])


def test_up_to_between_versions(tmp_path):
    s = gen(tmp_path / "a", 4)
    d = gen(tmp_path / "b", 1)
    between = str(int(s.versions[1]) + 1)  # not a version of the source
    plan = diff_dataset(*manifests(s.path, d.path), Options(up_to=between))
    assert plan.versions_to_add == (s.versions[1],)
    assert plan.new_latest == s.versions[1]


def test_up_to_below_destination_latest_moves_nothing(tmp_path):
    s = gen(tmp_path / "a", 4)
    d = gen(tmp_path / "b", 3)
    plan = diff_dataset(*manifests(s.path, d.path), Options(up_to=s.versions[1]))
    assert plan.versions_to_add == ()
    assert plan.new_latest is None
    assert plan.in_sync


def test_latest_never_moves_backwards(tmp_path):
    s = gen(tmp_path / "a", 2)
    d = gen(tmp_path / "b", 4)
    plan = diff_dataset(*manifests(s.path, d.path))
    assert plan.latest_destination == d.versions[-1]
    assert plan.new_latest is None
    assert plan.extra_versions == tuple(d.versions[2:])
    assert plan.versions_to_add == ()


def test_latest_not_moved_back_when_source_latest_is_older(tmp_path):
    s = gen(tmp_path / "a", 3)
    d = gen(tmp_path / "b", 3)
    set_latest(s.path, f"v{s.versions[1]}")
    plan = diff_dataset(*manifests(s.path, d.path))
    assert plan.latest_source == s.versions[1]
    assert plan.new_latest is None
    assert plan.in_sync


def test_latest_moves_forward_without_new_versions(tmp_path):
    s = gen(tmp_path / "a", 3)
    d = gen(tmp_path / "b", 3)
    set_latest(d.path, f"v{d.versions[0]}")
    plan = diff_dataset(*manifests(s.path, d.path))
    assert plan.versions_to_add == ()
    assert plan.new_latest == s.versions[-1]
    assert not plan.in_sync


def test_old_style_latest_directory_on_destination_is_an_error(tmp_path):
    s = gen(tmp_path / "a", 3)
    d = gen(tmp_path / "b", 2)
    os.unlink(os.path.join(d.path, "latest"))
    os.makedirs(os.path.join(d.path, "latest"))
    plan = diff_dataset(*manifests(s.path, d.path))
    assert plan.error is not None and plan.error.exit_code == 4
    assert versions_to_stage(*manifests(s.path, d.path)) == ()  # refused: nothing staged either
    assert not plan.in_sync


def test_no_op_diff_loads_no_entry_list(tmp_path, monkeypatch):
    from drsync.state import StateDir

    s = gen(tmp_path / "a", 3)
    d = gen(tmp_path / "b", 3)
    refresh(s.path)
    refresh(d.path)
    sm, dm = manifests(s.path, d.path)  # fresh manifests from the saved state
    loads = []
    real = StateDir.load_entries
    monkeypatch.setattr(StateDir, "load_entries", lambda self, v, i: loads.append(v) or real(self, v, i))
    plan = diff_dataset(sm, dm, Options(delete=True))
    assert plan.in_sync
    assert loads == []
    # while a real difference does load what it needs
    set_latest(d.path, f"v{d.versions[0]}")
    assert diff_dataset(sm, refresh(d.path)).new_latest == s.versions[-1]


# --- a new version reads the owned lists of the versions it links into, not their whole lists ------


def _count_loads(monkeypatch):
    from drsync.state import StateDir

    calls = {"entries": [], "owned": [], "keys": []}
    real_entries, real_owned, real_keys = StateDir.load_entries, StateDir.load_owned, StateDir.load_owned_keys
    monkeypatch.setattr(StateDir, "load_entries",
                        lambda self, v, i: calls["entries"].append((self.drs, v)) or real_entries(self, v, i))
    monkeypatch.setattr(StateDir, "load_owned",
                        lambda self, v, i: calls["owned"].append(v) or real_owned(self, v, i))
    monkeypatch.setattr(StateDir, "load_owned_keys",
                        lambda self, v, i: calls["keys"].append(v) or real_keys(self, v, i))
    return calls


def test_new_version_reads_owned_lists_of_common_versions_only(tmp_path, monkeypatch):
    s = gen(tmp_path / "a", 4)
    d = gen(tmp_path / "b", 3)
    reference = diff_dataset(*manifests(s.path, d.path))  # entry lists fresh from the scan
    sm, dm = manifests(s.path, d.path)  # now both come from the saved state
    calls = _count_loads(monkeypatch)
    plan = diff_dataset(sm, dm)
    assert plan.versions_to_add == (s.versions[3],)
    # the full list of the new version only; the common versions it links into: the keys of their
    # owned lists, read without making an entry of each row
    assert [v for _, v in calls["entries"]] == [s.versions[3]]
    assert set(calls["keys"]) <= set(s.versions[:3]) and calls["keys"]
    assert calls["owned"] == []
    assert sorted(e.real for e in plan.files_to_send) == sorted(e.real for e in reference.files_to_send)
    assert {e.real for e in plan.files_to_send} == real_files(s.path, s.versions[3])


@pytest.mark.parametrize("damage", ["missing", "garbage", "rows", "other-list"])
def test_damaged_owned_list_falls_back_to_the_entry_list(tmp_path, monkeypatch, damage):
    s = gen(tmp_path / "a", 4)
    d = gen(tmp_path / "b", 3)
    reference = diff_dataset(*manifests(s.path, d.path))
    mdir = os.path.join(s.path, ".drsync", "manifest")
    for v in s.versions[:3]:
        p = os.path.join(mdir, f"o{v}.json")
        if damage == "missing":
            os.unlink(p)
        elif damage == "garbage":
            with open(p, "wb") as fh:
                fh.write(b"{not json")
        else:
            import json

            with open(p) as fh:
                doc = json.load(fh)
            if damage == "rows":
                doc["rows"] = doc["rows"].partition("\n")[2]  # a row lost: the digest no longer matches
            else:
                doc["of"] = "0" * 32  # cut from another entry list than the index names
            with open(p, "w") as fh:
                json.dump(doc, fh)
    sm, dm = manifests(s.path, d.path)
    calls = _count_loads(monkeypatch)
    plan = diff_dataset(sm, dm)
    assert sorted(e.real for e in plan.files_to_send) == sorted(e.real for e in reference.files_to_send)
    # the fallback read the whole lists of the referenced common versions
    assert {v for _, v in calls["entries"]} - {s.versions[3]}


def test_links_into_a_version_the_destination_lacks_use_all_its_lists(tmp_path):
    # v3 links into files/x_2/, and no node has a version 2; the destination holds x_2/b through v4
    v1 = {"x": {"a": ("1", b"a")}}
    v4 = {"x": {"b": ("2", b"b")}}
    a = build(str(tmp_path / "a"), {"1": v1, "3": {"x": {"a": ("1", b"a"), "b": ("2", b"b")}}, "4": v4})
    b = build(str(tmp_path / "b"), {"1": v1, "4": v4})
    plan = diff_dataset(refresh(a), refresh(b))
    assert plan.versions_to_add == ("3",)
    assert plan.files_to_send == ()  # x_2/b is already there, held by v4
    assert plan.links_to_make == 2
