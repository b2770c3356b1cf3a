"""Dataset discovery and the incremental manifest refresh on real temporary trees."""

from __future__ import annotations

import importlib
import json
import os

import pytest
import treegen
import xxhash
from unit_util import build, link, links_of, refresh, set_latest, write_file

from drsync import hashing, scan_versions
from drsync import manifest as mf
from drsync.errors import UnsafeInputError
from drsync.events import Recorder
from drsync.fsutil import Dir
from drsync.state import StateDir

# `drsync.scan` the attribute is the library's scan() function; the module is in sys.modules
scan = importlib.import_module("drsync.scan")

ONE = treegen.Shape(datasets=1)


@pytest.fixture
def one(tmp_path):
    """One generated dataset (TINY shape, 4 versions): (dataset object, its path)."""
    [ds] = treegen.make_node(str(tmp_path / "node"), ONE)
    return ds, ds.path


class Counter:
    """Counts calls of a wrapped function, remembering the first argument after ``skip``."""

    def __init__(self, monkeypatch, owner, name, skip=1):
        self.calls = []
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            self.calls.append(args[skip] if len(args) > skip else None)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)


def scan_counters(monkeypatch):
    versions = Counter(monkeypatch, scan_versions.Scanner, "scan_version", skip=1)  # (self, version)
    hashes = Counter(monkeypatch, scan_versions, "hash_file", skip=1)  # (dir, name)
    return versions, hashes


def hashed_files(monkeypatch):
    """Records (files dir, file) of every file hashed."""
    calls = []
    real = scan_versions.hash_file

    def wrapper(d, name, *size):
        calls.append((os.path.basename(d.path), name))
        return real(d, name, *size)

    monkeypatch.setattr(scan_versions, "hash_file", wrapper)
    return calls


# --- discovery ----------------------------------------------------------------------------------


def find(path):
    with Dir.open_root(path) as root:
        return scan.find_datasets(root)


def test_find_datasets_on_generated_node(nodes):
    src, _, generated = nodes
    assert find(src) == sorted(d.drs for d in generated)
    assert len(generated) == 2


def test_find_datasets_root_is_a_dataset(one):
    _, path = one
    assert find(path) == [""]


def test_find_datasets_stops_at_datasets_and_skips_state_and_symlinks(tmp_path):
    root = tmp_path / "root"
    build(str(root / "a" / "ds1"), {"1": {"x": {"f": ("1", b"1")}}})
    # a dataset-shaped tree below a dataset is not a separate dataset (the walk stops)
    build(str(root / "a" / "ds1" / "inner"), {"1": {"x": {"f": ("1", b"1")}}})
    # nor one inside .drsync, nor one behind a symlinked directory
    build(str(root / ".drsync" / "ds2"), {"1": {"x": {"f": ("1", b"1")}}})
    build(str(root / "b" / ".drsync" / "ds3"), {"1": {"x": {"f": ("1", b"1")}}})
    elsewhere = build(str(tmp_path / "elsewhere" / "ds4"), {"1": {"x": {"f": ("1", b"1")}}})
    os.symlink(elsewhere, root / "b" / "linked")
    os.symlink(str(tmp_path / "elsewhere"), root / "linkdir")
    # files/ alone or v<digits>/ alone is not a dataset
    os.makedirs(root / "c" / "files")
    os.makedirs(root / "d" / "v1")
    build(str(root / "e" / "f" / "g"), {"2": {"y": {"f": ("2", b"2")}}})
    assert find(str(root)) == ["a/ds1", "e/f/g"]


def test_symlinked_files_dir_is_refused(tmp_path):
    ds = tmp_path / "ds"
    build(str(tmp_path / "real"), {"1": {"x": {"f": ("1", b"1")}}})
    os.makedirs(ds / "v1" / "x")
    os.symlink("../../files/x_1/f", ds / "v1" / "x" / "f")
    os.symlink(tmp_path / "real" / "files", ds / "files")  # files/ as a symlink: never followed
    # found (so that it is reported), but refused when read
    assert "ds" in find(str(tmp_path))
    with pytest.raises(UnsafeInputError) as ei:
        refresh(str(ds))
    assert ei.value.exit_code == 4


# --- a first refresh ----------------------------------------------------------------------------


def test_refresh_records_every_version(one):
    gen, path = one
    man = refresh(path)
    assert man.index.sorted_versions() == gen.versions
    assert man.index.latest == gen.versions[-1]
    assert not man.latest_is_dir
    for v in gen.versions:
        links = links_of(path, v)
        es = man.entries(v)
        assert {(e.name, e.file): f"../../files/{e.dir}/{e.file}" for e in es} == links
        info = man.index.versions[v]
        assert info.entries == len(links)
        assert info.bytes == len(links) * ONE.size
    # digests are the xxh3-128 of the real bytes
    e = man.entries(gen.versions[-1])[0]
    with open(os.path.join(path, "files", e.dir, e.file), "rb") as fh:
        assert e.digest == xxhash.xxh3_128_hexdigest(fh.read())


def test_refresh_hashes_each_real_file_once(one, monkeypatch):
    gen, path = one
    versions, _ = scan_counters(monkeypatch)
    hashes = hashed_files(monkeypatch)
    refresh(path)
    assert versions.calls == gen.versions
    real = {(d, f) for d in os.listdir(os.path.join(path, "files"))
            for f in os.listdir(os.path.join(path, "files", d))}
    assert sorted(hashes) == sorted(real)  # each real file exactly once


def test_refresh_stats_each_real_file_once(one, monkeypatch):
    """Later versions link to the same real files: one lstat per real file, not one per link."""
    gen, path = one
    stats = []
    real_lstat = Dir.lstat

    def lstat(d, name):
        stats.append((os.path.basename(d.path), name))
        return real_lstat(d, name)

    monkeypatch.setattr(Dir, "lstat", lstat)
    man = refresh(path)
    files = [(d, f) for d, f in stats if d != "files" and "_" in d]
    assert sorted(files) == sorted(set(files))
    assert set(files) == {e.real for v in gen.versions for e in man.entries(v)}
    assert sum(len(man.entries(v)) for v in gen.versions) > len(files)  # the case the cache is for


def test_column_checks_give_what_the_entry_by_entry_scan_gives(one):
    """scan_links (names, kinds and targets checked per directory) against scan_entry per link."""
    gen, path = one
    with Dir.open_root(path) as ds:
        man = scan.DatasetManifest("", mf.Index(), _ds=ds)
        for v in gen.versions:
            fast, slow = scan_versions.Scanner(ds, man, None), scan_versions.Scanner(ds, man, None)
            with ds.open_dir(f"v{v}") as vdir:
                for var in sorted(vdir.listdir()):
                    with vdir.open_dir(var) as nd:
                        by_column = fast.scan_links(nd, v, var)
                        one_by_one = [slow.scan_entry(nd, v, var, fe.name, fe)
                                      for fe in sorted(nd.scandir(), key=lambda x: x.name)]
                    assert by_column == one_by_one
                    assert by_column  # every generated variable directory holds links


@pytest.mark.parametrize("written, told", [(0, 0), (5, 5), (5, 3), (5, 9), (3 << 20, 3 << 20), (3 << 20, 7)])
def test_hash_fd_reads_the_whole_file_whatever_size_it_is_told(tmp_path, written, told):
    """``size`` is what an lstat said a moment ago: a file that grew or shrank since is still
    hashed whole."""
    data = os.urandom(written)
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert hashing.hash_fd(fd, told) == xxhash.xxh3_128_hexdigest(data) == hashing.hash_fd(fd)
    finally:
        os.close(fd)


def test_refresh_saves_index_and_entry_lists(one):
    gen, path = one
    refresh(path)
    mdir = os.path.join(path, ".drsync", "manifest")
    # an entry list per version, and the derived list of the entries each version owns
    assert sorted(os.listdir(mdir)) == sorted(["index.json"] + [f"v{v}.json" for v in gen.versions]
                                              + [f"o{v}.json" for v in gen.versions])
    with open(os.path.join(mdir, "index.json")) as fh:
        doc = json.load(fh)
    assert doc["format"] == "drsync-manifest/1"
    assert doc["latest"] == gen.versions[-1]
    assert list(doc["versions"]) == gen.versions


def test_refresh_without_save_writes_nothing(one):
    _, path = one
    refresh(path, save=False)
    assert not os.path.exists(os.path.join(path, ".drsync"))


# --- incremental refresh ------------------------------------------------------------------------


def test_second_refresh_scans_no_version(one, monkeypatch):
    _gen, path = one
    first = refresh(path)
    versions, hashes = scan_counters(monkeypatch)
    loads = Counter(monkeypatch, StateDir, "load_entries")
    second = refresh(path)
    assert versions.calls == []
    assert hashes.calls == []
    assert loads.calls == []  # a no-op never loads entry lists either
    assert second.index.versions == first.index.versions
    assert second.index.latest == first.index.latest


def test_second_refresh_trusts_recorded_versions(one):
    gen, path = one
    first = refresh(path)
    e = first.entries(gen.versions[0])[0]
    # damage a real file behind the manifest's back: a recorded version is not read again
    with open(os.path.join(path, "files", e.dir, e.file), "wb"):
        pass
    second = refresh(path)
    assert second.index.versions == first.index.versions
    assert second.entries(gen.versions[0])[0].digest == e.digest


def test_new_version_scans_only_that_version(one, monkeypatch):
    gen, path = one
    first = refresh(path)
    new = gen.add_version()
    versions, _ = scan_counters(monkeypatch)
    hashes = hashed_files(monkeypatch)
    second = refresh(path)
    assert versions.calls == [new]
    # only the files new in that version are read; carried-over files reuse recorded digests
    assert sorted(hashes) == sorted(gen_real_files(path, new))
    assert hashes
    assert second.index.sorted_versions() == gen.versions
    assert second.index.latest == new
    for v in gen.versions[:-1]:
        assert second.index.versions[v] == first.index.versions[v]
    third_versions, third_hashes = scan_counters(monkeypatch)
    refresh(path)
    assert third_versions.calls == [] and third_hashes.calls == []


def gen_real_files(path, version):
    fdir = os.path.join(path, "files")
    return [(d, f) for d in os.listdir(fdir) if d.endswith("_" + version) for f in os.listdir(os.path.join(fdir, d))]


def test_removed_version_drops_out(one):
    gen, path = one
    import shutil

    refresh(path)
    shutil.rmtree(os.path.join(path, f"v{gen.versions[1]}"))
    man = refresh(path)
    assert man.index.sorted_versions() == [v for v in gen.versions if v != gen.versions[1]]
    assert not os.path.exists(os.path.join(path, ".drsync", "manifest", f"v{gen.versions[1]}.json"))


@pytest.mark.parametrize("damage", ["garbage", "empty", "missing", "wrong-format", "bad-digest"])
def test_damaged_index_makes_it_rescan(one, monkeypatch, damage):
    gen, path = one
    first = refresh(path)
    p = os.path.join(path, ".drsync", "manifest", "index.json")
    if damage == "missing":
        os.unlink(p)
    else:
        with open(p) as fh:
            doc = json.load(fh)
        data = {"garbage": b"{not json", "empty": b""}.get(damage)
        if damage == "wrong-format":
            doc["format"] = "drsync-manifest/0"
        if damage == "bad-digest":
            doc["versions"][gen.versions[0]]["digest"] = "zz"
        with open(p, "wb") as fh:
            fh.write(data if data is not None else json.dumps(doc).encode())
    versions, _ = scan_counters(monkeypatch)
    second = refresh(path)
    assert versions.calls == gen.versions
    assert second.index.versions == first.index.versions
    # and the rescan repaired the stored index
    versions.calls.clear()
    refresh(path)
    assert versions.calls == []


def test_index_lying_about_a_version_is_not_believed_for_entries(one):
    gen, path = one
    refresh(path)
    p = os.path.join(path, ".drsync", "manifest", "index.json")
    with open(p) as fh:
        doc = json.load(fh)
    doc["versions"][gen.versions[0]]["digest"] = "0" * 32  # well-formed, but not the entry list's digest
    with open(p, "w") as fh:
        json.dump(doc, fh)
    man = refresh(path)
    # the entry list does not match the index's digest: never handed out as that version's content
    try:
        es = man.entries(gen.versions[0])
    except UnsafeInputError:
        return
    assert man.index.versions[gen.versions[0]].digest == scan.mf.version_digest(es)


@pytest.mark.parametrize("damage", ["garbage", "missing", "other-content"])
def test_damaged_version_file_makes_it_rescan(one, monkeypatch, damage):
    gen, path = one
    first = refresh(path)
    victim = gen.versions[1]
    p = os.path.join(path, ".drsync", "manifest", f"v{victim}.json")
    if damage == "missing":
        os.unlink(p)
    elif damage == "garbage":
        with open(p, "wb") as fh:
            fh.write(b"\0\0\0")
    else:
        with open(p) as fh:
            doc = json.load(fh)
        doc["entries"] = doc["entries"][1:]  # valid, but not what the index recorded
        with open(p, "w") as fh:
            json.dump(doc, fh)
    versions, _ = scan_counters(monkeypatch)
    second = refresh(path)
    # a missing list is seen by the refresh itself; a damaged one when it is first needed
    assert second.entries(victim) == first.entries(victim)
    assert victim in versions.calls
    assert second.index.versions == first.index.versions


# --- `latest` -----------------------------------------------------------------------------------


def test_latest_as_old_style_directory(one):
    gen, path = one
    os.unlink(os.path.join(path, "latest"))
    old = os.path.join(path, "latest", "var_0")
    os.makedirs(old)
    os.symlink(f"../../files/var_0_{gen.versions[0]}/x.nc", os.path.join(old, "x.nc"))
    rec = Recorder()
    man = refresh(path, events=rec)
    assert man.index.latest == gen.versions[-1]
    assert man.latest_is_dir
    assert len(rec.warnings) == 1 and "latest" in rec.warnings[0]
    assert os.path.isdir(old) and not os.path.islink(os.path.join(path, "latest"))  # left alone


def test_latest_absolute_to_same_dataset(one):
    gen, path = one
    set_latest(path, os.path.join(os.path.abspath(path), f"v{gen.versions[1]}"))
    rec = Recorder()
    man = refresh(path, events=rec)
    assert man.index.latest == gen.versions[1]
    assert len(rec.warnings) == 1 and "absolute" in rec.warnings[0]


def test_latest_relative_reads_without_warning(one):
    gen, path = one
    set_latest(path, f"v{gen.versions[2]}")
    rec = Recorder()
    man = refresh(path, events=rec)
    assert man.index.latest == gen.versions[2]
    assert rec.warnings == []


def test_missing_latest_is_none(one):
    _gen, path = one
    os.unlink(os.path.join(path, "latest"))
    assert refresh(path).index.latest is None


@pytest.mark.parametrize("target", ["v20991231", "v1e3", "files", "../v20100101", "latest", "/nonexistent/v20100101",
                                    "ABS-OTHER"])
def test_bad_latest_is_unsafe(tmp_path, target):
    [gen] = treegen.make_node(str(tmp_path / "a"), ONE)
    [other] = treegen.make_node(str(tmp_path / "b"), ONE)
    if target == "ABS-OTHER":  # absolute, to a version of another dataset
        target = os.path.join(other.path, f"v{other.versions[0]}")
    set_latest(gen.path, target)
    with pytest.raises(UnsafeInputError) as ei:
        refresh(gen.path)
    assert ei.value.exit_code == 4


def test_latest_regular_file_is_unsafe(one):
    _, path = one
    os.unlink(os.path.join(path, "latest"))
    with open(os.path.join(path, "latest"), "w") as fh:
        fh.write("v20100101")
    with pytest.raises(UnsafeInputError):
        refresh(path)


# --- malformed trees ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["v1e3", "v20100101 ", "v1.0", "v" + "1" * 19])
def test_malformed_version_dir_is_unsafe(one, bad):
    _, path = one
    os.makedirs(os.path.join(path, bad))
    with pytest.raises(UnsafeInputError) as ei:
        refresh(path)
    assert ei.value.exit_code == 4


def test_version_dir_symlink_is_unsafe(one):
    gen, path = one
    os.symlink(f"v{gen.versions[0]}", os.path.join(path, "v20991231"))
    with pytest.raises(UnsafeInputError):
        refresh(path)


def test_link_with_missing_target_is_unsafe(one):
    gen, path = one
    v = gen.versions[-1]
    (_var, f), target = next(iter(links_of(path, v).items()))
    os.unlink(os.path.join(path, "files", target.split("/")[3], f))
    with pytest.raises(UnsafeInputError) as ei:
        refresh(path)
    assert ei.value.exit_code == 4
    assert f in ei.value.path


@pytest.mark.parametrize("target", [
    "../../files/x_1/../../../out/f", "/etc/passwd", "../../files/x_3/f", "../../files/y_1/f", "../../files/x_1/f/",
])
def test_non_canonical_link_is_unsafe(tmp_path, target):
    ds = str(tmp_path / "ds")
    build(ds, {"1": {"x": {"a": ("1", b"a")}}, "2": {"x": {"b": ("2", b"b")}}})
    write_file(ds, "x", "3", "f", b"later")
    write_file(ds, "y", "1", "f", b"other")
    link(ds, "2", "x", "f", target=target)
    with pytest.raises(UnsafeInputError) as ei:
        refresh(ds)
    assert ei.value.exit_code == 4


def test_link_to_symlink_in_files_is_unsafe(tmp_path):
    ds = str(tmp_path / "ds")
    build(ds, {"1": {"x": {"a": ("1", b"a")}}})
    os.symlink("/etc/hostname", os.path.join(ds, "files", "x_1", "f"))
    link(ds, "1", "x", "f")
    with pytest.raises(UnsafeInputError):
        refresh(ds)


def test_regular_file_in_version_dir_is_unsafe(tmp_path):
    ds = str(tmp_path / "ds")
    build(ds, {"1": {"x": {"a": ("1", b"a")}}})
    with open(os.path.join(ds, "v1", "x", "real.nc"), "wb") as fh:
        fh.write(b"not a link")
    with pytest.raises(UnsafeInputError):
        refresh(ds)


def test_plain_integer_versions(tmp_path):
    ds = str(tmp_path / "ds")
    build(ds, {"1": {"tos_day": {"a": ("1", b"a")}},
               "2": {"tos_day": {"a": ("1", b"a"), "b": ("2", b"bb")}},
               "10": {"tos_day": {"a": ("1", b"a"), "b": ("10", b"bbb")}}})
    man = refresh(ds)
    assert man.index.sorted_versions() == ["1", "2", "10"]
    assert man.index.latest == "10"
    assert {e.real: e.size for e in man.entries("10")} == {("tos_day_1", "a"): 1, ("tos_day_10", "b"): 3}


# --- loose files --------------------------------------------------------------------------------


def test_loose_scan_records_unpublished_files(one):
    gen, path = one
    refresh(path)
    write_file(path, "var_0", "20991231", "new.nc", b"interrupted")
    write_file(path, "var_1", "20991231", "other.nc", b"run")
    plain = refresh(path)
    assert plain.index.loose == {}
    man = refresh(path, loose=True)
    assert set(man.index.loose) == {("var_0_20991231", "new.nc"), ("var_1_20991231", "other.nc")}
    rec = man.index.loose[("var_0_20991231", "new.nc")]
    assert rec.size == len(b"interrupted")
    assert rec.digest == xxhash.xxh3_128_hexdigest(b"interrupted")
    # files of published versions are never loose
    assert all(d.rpartition("_")[2] not in gen.versions for d, _ in man.index.loose)


def test_loose_scan_reuses_unchanged_digests(one, monkeypatch):
    _, path = one
    write_file(path, "var_0", "20991231", "new.nc", b"interrupted")
    refresh(path, loose=True)
    _, hashes = scan_counters(monkeypatch)
    man = refresh(path, loose=True)
    assert hashes.calls == []
    assert ("var_0_20991231", "new.nc") in man.index.loose
    # a changed loose file is hashed again
    p = write_file(path, "var_0", "20991231", "new.nc", b"interrupted, longer")
    man = refresh(path, loose=True)
    assert hashes.calls == ["new.nc"]
    assert man.index.loose[("var_0_20991231", "new.nc")].digest == xxhash.xxh3_128_hexdigest(b"interrupted, longer")
    assert os.path.exists(p)


def test_loose_scan_skips_symlinks_and_bad_dirs(one):
    _, path = one
    d = os.path.join(path, "files", "var_0_20991231")
    os.makedirs(d)
    os.symlink("/etc/hostname", os.path.join(d, "sneaky.nc"))
    os.makedirs(os.path.join(path, "files", "notaversion"))
    with open(os.path.join(path, "files", "notaversion", "f"), "w") as fh:
        fh.write("x")
    man = refresh(path, loose=True)
    assert man.index.loose == {}


def test_missing_version_file_is_rebuilt_and_saved(one, monkeypatch):
    gen, path = one
    first = refresh(path)
    victim = gen.versions[2]
    p = os.path.join(path, ".drsync", "manifest", f"v{victim}.json")
    os.unlink(p)
    versions, _ = scan_counters(monkeypatch)
    second = refresh(path)
    assert versions.calls == [victim]  # only that version, during the refresh
    assert os.path.exists(p)  # and saved again
    assert second.index.versions == first.index.versions
    versions.calls.clear()
    assert refresh(path).entries(victim) == first.entries(victim)
    assert versions.calls == []


def test_damaged_version_file_rebuilt_while_scanning_a_new_version(one, monkeypatch):
    gen, path = one
    refresh(path)
    victim = gen.versions[-1]
    p = os.path.join(path, ".drsync", "manifest", f"v{victim}.json")
    for name in (f"v{victim}.json", f"o{victim}.json"):  # the entry list and its owned list
        with open(os.path.join(path, ".drsync", "manifest", name), "wb") as fh:
            fh.write(b"{}")
    new = gen.add_version()  # references files of the damaged version: its digests are needed
    versions, _ = scan_counters(monkeypatch)
    man = refresh(path)
    assert versions.calls == [new, victim]
    assert len(man.entries(new)) == man.index.versions[new].entries
    with open(p, "rb") as fh:
        assert json.loads(fh.read())["version"] == victim  # repaired on disk


def test_owned_list_spares_reading_a_damaged_entry_list_when_scanning(one, monkeypatch):
    gen, path = one
    refresh(path)
    victim = gen.versions[-1]
    p = os.path.join(path, ".drsync", "manifest", f"v{victim}.json")
    with open(p, "wb") as fh:
        fh.write(b"{}")
    new = gen.add_version()  # links into files of the damaged version: its owned list has the digests
    versions, _ = scan_counters(monkeypatch)
    hashes = hashed_files(monkeypatch)
    man = refresh(path)
    assert versions.calls == [new]
    assert len(man.entries(new)) == man.index.versions[new].entries
    # only the files new in `new` were hashed: the digests of the victim's came from its owned list
    assert hashes and all(d.rpartition("_")[2] == new for d, _ in hashes)
    assert len(man.entries(victim)) == man.index.versions[victim].entries  # rebuilt when needed


def test_a_new_versions_recorded_digests_come_from_the_owned_keys(one, monkeypatch):
    """The scanner looks a carried-over file's digest up in the owned keys of the version owning
    its files dir (the plan reads the same keys next), not in entries made from the owned list."""
    gen, path = one
    refresh(path)
    new = gen.add_version()
    monkeypatch.setattr(StateDir, "load_owned", lambda *a: pytest.fail("owned entries loaded"))
    hashes = hashed_files(monkeypatch)
    man = refresh(path, save=False)
    assert sorted(hashes) == sorted(gen_real_files(path, new))  # only the version's own files
    assert man._owned_keys.keys() >= {e.dir.rpartition("_")[2] for e in man.entries(new)} - {new}
    rescanned = scan.refresh(Dir.open_root(path), "", None, save=False)  # no manifest: all hashed
    assert man.entries(new) == rescanned.entries(new)


def test_owned_keys_whose_digests_are_not_digests_are_not_taken(one, monkeypatch):
    gen, path = one
    refresh(path)
    victim = gen.versions[-1]
    p, doc = _owned_doc(path, victim)
    # a stored list consistent with its own digest, but whose digest column is not hex
    doc["rows"] = "\n".join(row.rpartition("\t")[0] + "\t" + "z" * 32 for row in doc["rows"].split("\n"))
    doc["digest"] = mf._rows_digest(doc["rows"], doc["mtimes"])
    with open(p, "w") as fh:
        json.dump(doc, fh)
    new = gen.add_version()  # links into the victim's files
    hashes = hashed_files(monkeypatch)
    man = refresh(path, save=False)
    linked = {(e.dir, e.file) for e in man.entries(new) if e.dir.endswith("_" + victim)}
    assert linked and linked <= set(hashes)  # hashed, not taken from the bad keys
    rescanned = scan.refresh(Dir.open_root(path), "", None, save=False)
    assert man.entries(new) == rescanned.entries(new)


# --- the stored owned lists: keys read without an entry per row; the older form still read --------


def _owned_doc(path: str, version: str) -> tuple[str, dict]:
    p = os.path.join(path, ".drsync", "manifest", f"o{version}.json")
    with open(p) as fh:
        return p, json.load(fh)


def test_stored_owned_list_gives_the_same_entries_and_keys(one):
    from drsync import manifest as mf

    gen, path = one
    first = refresh(path)
    man = refresh(path)
    for v in gen.versions:
        expect = mf.owned(first.entries(v), v)
        state = man._store
        assert state.load_owned(v, man.index.versions[v]) == expect
        assert state.load_owned_keys(v, man.index.versions[v]) == {mf.owned_key(e) for e in expect}
        assert man.owned_keys(v) == {f"{e.dir}\t{e.file}\t{e.size}\t{e.digest}" for e in expect}


@pytest.mark.parametrize("damage", ["mtimes", "bad-name"])
def test_damaged_owned_list_rows_are_refused(one, damage):
    gen, path = one
    refresh(path)
    v = gen.versions[-1]
    p, doc = _owned_doc(path, v)
    if damage == "mtimes":
        doc["mtimes"] = doc["mtimes"].replace(doc["mtimes"][:3], "999", 1)  # digest no longer matches
    else:  # a name that would leave files/ (digest made to match: only validation can catch it)
        from drsync import manifest as mf

        doc["rows"] = doc["rows"].replace("\t", "/../x\t", 1)
        doc["digest"] = mf._rows_digest(doc["rows"], doc["mtimes"])
    with open(p, "w") as fh:
        json.dump(doc, fh)
    man = refresh(path)
    assert man._store.load_owned(v, man.index.versions[v]) is None
    if damage == "mtimes":
        assert man._store.load_owned_keys(v, man.index.versions[v]) is None
    assert len(man.owned(v)) > 0  # the plan and the scanner fall back to the full entry list


def test_owned_list_in_the_older_form_is_read_and_rewritten_by_a_validating_refresh(one):
    from drsync import manifest as mf

    gen, path = one
    first = refresh(path)
    v = gen.versions[-1]
    expect = mf.owned(first.entries(v), v)
    p, doc = _owned_doc(path, v)
    older = mf.entries_to_json(v, expect)  # the form drsync wrote before the keys were stored
    older["of"], older["digest"] = doc["of"], mf.version_digest(expect)
    with open(p, "w") as fh:
        json.dump(older, fh)
    man = refresh(path)
    assert man._store.load_owned(v, man.index.versions[v]) == expect  # still read
    assert man._store.load_owned_keys(v, man.index.versions[v]) is None  # no keys stored in it
    assert man.owned_keys(v) == {mf.owned_key(e) for e in expect}  # made from its entries instead
    ds = Dir.open_root(path)
    with ds:
        scan.refresh(ds, "", StateDir.open(ds, "", None, create=False), save=True, validate=True)
    assert "rows" in _owned_doc(path, v)[1]  # upgraded in place


def test_a_loaded_entry_list_is_saved_as_the_bytes_it_was_read_from(one, tmp_path):
    """A local push writes the destination's entry list of a new version from the source's stored
    bytes; the same entries under another version, or a list made here, are serialised."""
    from drsync import manifest as mf

    gen, path = one
    refresh(path)
    man = refresh(path)
    v = gen.versions[-1]
    loaded = man.entries(v)
    with open(os.path.join(path, ".drsync", "manifest", f"v{v}.json"), "rb") as fh:
        stored = fh.read()
    assert isinstance(loaded, mf.StoredEntries) and mf.entries_bytes(v, loaded) == stored
    fresh = list(loaded)
    assert mf.entries_bytes(v, fresh) == mf.dumps(mf.entries_to_json(v, fresh))
    assert json.loads(mf.entries_bytes("20990101", loaded))["version"] == "20990101"  # not the raw bytes
    other = tmp_path / "other"
    other.mkdir()
    with Dir.open_root(str(other)) as ds:
        st = StateDir.open(ds, "", None, create=True)
        st.save(mf.Index(v, {v: man.index.versions[v]}), {v: loaded}, durable=False)
        again = st.load_entries(v, man.index.versions[v])
    assert again == loaded and again.raw[1] == stored


def test_a_loaded_entry_lists_rows_are_cut_from_its_bytes_only_in_drsyncs_own_form(one, monkeypatch):
    """A peer's dest_stage embeds a stored list's rows as they were read (entries_rows_bytes): the
    same rows as serialising them, from the stored bytes themselves; a list stored in another form
    (spaces, another key order, an extra key) is serialised instead."""
    from drsync import manifest as mf

    gen, path = one
    refresh(path)
    v = gen.versions[-1]
    where = os.path.join(path, ".drsync", "manifest", f"v{v}.json")
    with open(where, "rb") as fh:
        stored = fh.read()
    serialised = json.dumps(json.loads(stored)["entries"], separators=(",", ":")).encode()
    loaded = refresh(path).entries(v)
    assert loaded.rows_at is not None
    with monkeypatch.context() as m:  # cut out of the stored bytes: nothing serialised
        m.setattr(mf.json, "dumps", lambda *a, **k: pytest.fail("serialised the rows"))
        assert mf.entries_rows_bytes(v, loaded) == serialised
    assert mf.entries_rows_bytes("20990101", loaded) == serialised  # another version: serialised
    assert mf.entries_rows_bytes(v, list(loaded)) == serialised
    doc = json.loads(stored)
    for other in (json.dumps(doc, indent=1), json.dumps({"version": v, "format": mf.FORMAT, "entries": doc["entries"]}),
                  json.dumps({**doc, "extra": [[1]]}, separators=(",", ":"))):
        with open(where, "w") as fh:
            fh.write(other)
        again = refresh(path).entries(v)
        assert again.rows_at is None and mf.entries_rows_bytes(v, again) == serialised
