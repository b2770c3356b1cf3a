"""The drsync-manifest/1 model: JSON round trips, strict validation, the version digest."""

from __future__ import annotations

import copy
import json

import pytest

from drsync import manifest as mf
from drsync.errors import UnsafeInputError

D1 = "0123456789abcdef0123456789abcdef"
D2 = "fedcba9876543210fedcba9876543210"


def entries():
    return [
        mf.Entry("tos_day", "a.nc", "tos_day_20100101", 10, 111, D1),
        mf.Entry("tos_day", "b.nc", "tos_day_20100201", 20, 222, D2),
        mf.Entry("x", "c.nc", "x_20100201", 0, 0, D1),
    ]


def roundtrip_entries(version, es):
    return mf.entries_from_json(mf.loads(mf.dumps(mf.entries_to_json(version, es))), version, "ds")


def index():
    es = entries()
    return mf.Index(
        latest="20100201",
        versions={"20100101": mf.version_info(es[:1]), "20100201": mf.version_info(es)},
        loose={("x_20100301", "d.nc"): mf.Loose(5, 555, D2)},
    )


# --- round trips --------------------------------------------------------------------------------


def test_entry_list_roundtrip():
    es = entries()
    back = roundtrip_entries("20100201", es)
    assert back == es
    assert all(isinstance(e, mf.Entry) for e in back)
    assert back[0].key == "tos_day/a.nc"
    assert back[0].real == ("tos_day_20100101", "a.nc")


def test_empty_entry_list_roundtrip():
    assert roundtrip_entries("1", []) == []


def test_index_roundtrip():
    idx = index()
    doc = mf.index_to_json(idx)
    assert doc["format"] == "drsync-manifest/1"
    back = mf.index_from_json(mf.loads(mf.dumps(doc)), "ds")
    assert back == idx
    assert back.latest == "20100201"
    assert back.versions["20100201"] == mf.VersionInfo(mf.version_digest(entries()), 3, 30)
    assert back.loose == {("x_20100301", "d.nc"): mf.Loose(5, 555, D2)}


def test_index_roundtrip_without_latest_or_loose():
    idx = mf.Index(None, {"1": mf.VersionInfo(D1, 0, 0)})
    doc = mf.index_to_json(idx)
    assert "loose" not in doc
    assert mf.index_from_json(json.loads(json.dumps(doc)), None) == idx


def test_index_versions_written_in_numeric_order():
    idx = mf.Index("10", {v: mf.VersionInfo(D1, 1, 1) for v in ["10", "9", "100", "2"]})
    doc = json.loads(mf.dumps(mf.index_to_json(idx)))
    assert list(doc["versions"]) == ["2", "9", "10", "100"]
    assert idx.sorted_versions() == ["2", "9", "10", "100"]


def test_plain_integer_versions_allow_older_dir():
    # dir version "2" is older than entry version "10" numerically (not as strings)
    row = ["x", "f", "x_2", 1, 1, D1]
    doc = {"format": mf.FORMAT, "version": "10", "entries": [row]}
    assert mf.entries_from_json(doc, "10", None)[0].dir == "x_2"


# --- validation of entry lists ------------------------------------------------------------------


def good_doc(version="20100201"):
    return mf.entries_to_json(version, entries())


def _reject_entries(doc, version="20100201"):
    with pytest.raises(UnsafeInputError) as ei:
        mf.entries_from_json(doc, version, "ds")
    assert ei.value.exit_code == 4
    return ei.value


def _with_row(i, col, value):
    doc = good_doc()
    doc["entries"][i][col] = value
    return doc


@pytest.mark.parametrize("digest", [D1[:-1], D1 + "0", "", D1.upper(), "g" * 32, None, 12])
def test_rejects_bad_digest(digest):
    _reject_entries(_with_row(0, 5, digest))


@pytest.mark.parametrize("size", [-1, 1.5, "10", None, True])
def test_rejects_bad_size(size):
    _reject_entries(_with_row(0, 3, size))


def test_rejects_negative_mtime():
    _reject_entries(_with_row(1, 4, -5))


def test_rejects_duplicate_entries():
    doc = good_doc()
    doc["entries"].append(list(doc["entries"][0]))
    err = _reject_entries(doc)
    assert "duplicate" in err.message
    # the same name/file twice, even when pointing into different files dirs
    doc = good_doc()
    row = list(doc["entries"][1])
    row[2] = "tos_day_20100101"
    doc["entries"][0][1] = row[1] = "same.nc"
    doc["entries"].append(row)
    _reject_entries(doc)


@pytest.mark.parametrize("col, value", [
    (0, ".."), (0, "."), (0, ""), (0, "a/b"), (0, ".drsync"), (0, "a\nb"),
    (1, ".."), (1, "../../etc/passwd"), (1, "a\0b"), (1, "x\udcff"),
    (2, ".."), (2, "../tos_day_20100101"), (2, "tos_day_20100101/.."),
])
def test_rejects_unsafe_names(col, value):
    _reject_entries(_with_row(0, col, value))


BAD_CELLS = ([(5, d) for d in (D1[:-1], D1 + "0", "", D1.upper(), "g" * 32, None, 12)]
             + [(3, s) for s in (-1, 1.5, "10", None, True)] + [(4, -5), (4, False)]
             + [(0, v) for v in ("..", ".", "", "a/b", ".drsync", "a\nb", 7)]
             + [(1, v) for v in ("..", "../../etc/passwd", "a\0b", "x\udcff", "n" * 256, "\u00e9" * 128, None)]
             + [(2, v) for v in ("..", "../tos_day_20100101", "tos_day_20100101/..", "tas_20100101",
                                 "tos_day_20100301", "tos_day_", "tos_day_1e3", "tos_day")])


def long_rows(n=500):
    return [["tos_day", f"f{i}.nc", "tos_day_20100101", i, i, D1] for i in range(n)]


@pytest.mark.parametrize("col, value", BAD_CELLS)
def test_whole_column_check_sees_a_bad_cell_anywhere(col, value):
    """The fast path checks columns at once; a bad cell in the last of many rows must fail it, and
    the row-by-row check then refuses the list."""
    rows = long_rows()
    rows[-1][col] = value
    assert not mf._columns_valid(rows, "20100201")
    _reject_entries({"format": mf.FORMAT, "version": "20100201", "entries": rows})


def test_whole_column_check_accepts_what_make_entry_accepts():
    rows = long_rows()
    rows[3][1] = "\u00e9" * 127  # 254 bytes of UTF-8: long, but within NAME_MAX
    rows[4][1] = "tos_day_20100101.nc"
    assert mf._columns_valid(rows, "20100201")
    got = mf.entries_from_json({"format": mf.FORMAT, "version": "20100201", "entries": rows}, "20100201", "ds")
    assert got == [mf.make_entry(r, "20100201", "ds") for r in rows]
    assert all(type(e) is mf.Entry for e in got) and got[3].file == rows[3][1]


def test_rejects_dir_of_other_variable():
    _reject_entries(_with_row(0, 2, "tas_20100101"))
    # name "tos" is not the name part of "tos_day_20100101"
    doc = {"format": mf.FORMAT, "version": "2", "entries": [["tos", "f", "tos_day_1", 1, 1, D1]]}
    _reject_entries(doc, "2")


def test_rejects_dir_of_later_version():
    _reject_entries(_with_row(0, 2, "tos_day_20100301"))
    doc = {"format": mf.FORMAT, "version": "9", "entries": [["x", "f", "x_10", 1, 1, D1]]}
    _reject_entries(doc, "9")


def test_rejects_malformed_rows_and_headers():
    doc = good_doc()
    doc["entries"][0] = doc["entries"][0][:5]
    _reject_entries(doc)
    doc = good_doc()
    doc["entries"][0] = "tos_day/a.nc"
    _reject_entries(doc)
    doc = good_doc()
    doc["format"] = "drsync-manifest/2"
    _reject_entries(doc)
    _reject_entries(good_doc("20100101"), "20100201")  # header names another version
    _reject_entries([], "20100201")


# --- validation of indexes ----------------------------------------------------------------------


def good_index_doc():
    return json.loads(mf.dumps(mf.index_to_json(index())))


def _reject_index(doc):
    with pytest.raises(UnsafeInputError) as ei:
        mf.index_from_json(doc, "ds")
    assert ei.value.exit_code == 4


def test_index_rejects_bad_versions():
    doc = good_index_doc()
    doc["versions"]["v1"] = doc["versions"].pop("20100101")
    _reject_index(doc)
    doc = good_index_doc()
    doc["versions"]["20100101"]["digest"] = D1[:30]
    _reject_index(doc)
    doc = good_index_doc()
    doc["versions"]["20100101"]["entries"] = -1
    _reject_index(doc)
    doc = good_index_doc()
    doc["versions"]["20100101"]["bytes"] = -1
    _reject_index(doc)
    doc = good_index_doc()
    doc["versions"]["20100101"] = [D1, 1, 1]
    _reject_index(doc)
    doc = good_index_doc()
    doc["versions"] = []
    _reject_index(doc)


def test_index_rejects_bad_header_and_latest():
    doc = good_index_doc()
    doc["format"] = "something-else"
    _reject_index(doc)
    _reject_index([])
    for latest in ["v20100201", "latest", "../x", "", 20100201]:
        doc = good_index_doc()
        doc["latest"] = latest
        _reject_index(doc)


@pytest.mark.parametrize("loose", [
    {"x_20100301/..": [1, 1, D1]},
    {"x_20100301/a/b": [1, 1, D1]},
    {"../x_1/f": [1, 1, D1]},
    {"x/f": [1, 1, D1]},
    {"x_20100301/f": [-1, 1, D1]},
    {"x_20100301/f": [1, 1, "nothex"]},
    {"x_20100301/f": [1, 1]},  # too short a record
    {"x_20100301/f": 7},
    ["x_20100301/f"],
])
def test_index_rejects_bad_loose(loose):
    doc = good_index_doc()
    doc["loose"] = loose
    _reject_index(doc)


# --- the version digest -------------------------------------------------------------------------


def test_version_digest_ignores_mtime_and_order():
    es = entries()
    base = mf.version_digest(es)
    assert len(base) == 32
    touched = [mf.Entry(e.name, e.file, e.dir, e.size, e.mtime_ns + 10**9, e.digest) for e in es]
    assert mf.version_digest(touched) == base
    assert mf.version_digest(list(reversed(es))) == base


@pytest.mark.parametrize("field, value", [
    ("digest", D2),
    ("size", 11),
    ("dir", "tos_day_20100201"),  # the same file name, another target
    ("file", "z.nc"),
    ("name", "tos_mon"),
])
def test_version_digest_changes_with_content(field, value):
    es = entries()
    base = mf.version_digest(es)
    changed = copy.copy(es)
    e = es[0]
    fields = {"name": e.name, "file": e.file, "dir": e.dir, "size": e.size, "mtime_ns": e.mtime_ns,
              "digest": e.digest}
    fields[field] = value
    changed[0] = mf.Entry(**fields)
    assert mf.version_digest(changed) != base


def test_version_digest_changes_with_membership():
    es = entries()
    assert mf.version_digest(es[:2]) != mf.version_digest(es)
    assert mf.version_digest([]) != mf.version_digest(es[:1])


def test_version_info_counts():
    es = entries()
    info = mf.version_info(es)
    assert info == mf.VersionInfo(mf.version_digest(es), 3, 30)


@pytest.mark.parametrize("rows", [7, {"a": 1}, "abc", None])
def test_rejects_entries_that_are_not_a_list(rows):
    doc = good_doc()
    doc["entries"] = rows
    _reject_entries(doc)
