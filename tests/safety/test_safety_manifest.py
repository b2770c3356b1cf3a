"""DESIGN §8 / FAULTS A1-A7, A12: a poisoned source manifest cache.

`drsync scan SRC` writes the source's `.drsync/manifest/`; the test then rewrites one version's
entry list by hand (drsync-manifest/1), recomputes its digest in the index so the cache looks
consistent, and pushes. Entries are trusted from the cache for versions already recorded, so the
cache is what is read: every bad entry must be refused (exit 4), nothing written outside the
destination, nothing of that dataset published, the other dataset replicated.
"""

from __future__ import annotations

import json
import os

import pytest
from safety_helpers import (
    DS0,
    DS1,
    V3,
    V4,
    assert_failed,
    assert_ok,
    assert_replicated,
    new_env,
    published_files,
    push,
    run_drsync,
    tree_state,
)

from drsync import manifest as mf

ESCAPE = "../../../../../outside/evil.nc"  # relative to dst/<ds>/files/<dir>/: lands in outside/


def _mutate_name(row, rows):
    row[0] = ".."


def _mutate_name_slash(row, rows):
    row[0] = "var_0/../../../../../../outside"
    row[2] = f"{row[0]}_{V4}"


def _mutate_file_dotdot(row, rows):
    row[1] = ".."


def _mutate_file_slash(row, rows):
    row[1] = ESCAPE


def _mutate_file_absolute(row, rows):
    row[1] = "/tmp/evil.nc"


def _mutate_dir_dotdot(row, rows):
    row[2] = "../../outside"


def _mutate_dir_other_variable(row, rows):
    row[2] = f"var_1_{V4}"


def _mutate_dir_later_version(row, rows):
    row[2] = f"var_0_{int(V4) + 100}"


def _mutate_file_nul(row, rows):
    row[1] = "evil\x00.nc"


def _mutate_file_newline(row, rows):
    row[1] = "evil\n.nc"


def _mutate_file_dot_drsync(row, rows):
    row[1] = ".drsync"


def _mutate_digest_15_bytes(row, rows):
    row[5] = row[5][:30]


def _mutate_digest_upper(row, rows):
    row[5] = row[5].upper()


def _mutate_size_negative(row, rows):
    row[3] = -1


def _mutate_size_float(row, rows):
    row[3] = 4096.0


def _mutate_duplicate(row, rows):
    dup = list(row)
    dup[5] = "0" * 32
    rows.append(dup)


def _mutate_row_shape(row, rows):
    row.append("extra")


MUTATIONS = {
    "name-dotdot": _mutate_name,
    "name-slash": _mutate_name_slash,
    "file-dotdot": _mutate_file_dotdot,
    "file-slash-escape": _mutate_file_slash,
    "file-absolute": _mutate_file_absolute,
    "dir-dotdot": _mutate_dir_dotdot,
    "dir-other-variable": _mutate_dir_other_variable,
    "dir-later-version": _mutate_dir_later_version,
    "file-nul": _mutate_file_nul,
    "file-newline": _mutate_file_newline,
    "file-dot-drsync": _mutate_file_dot_drsync,
    "digest-15-bytes": _mutate_digest_15_bytes,
    "digest-uppercase": _mutate_digest_upper,
    "size-negative": _mutate_size_negative,
    "size-float": _mutate_size_float,
    "duplicate-entry": _mutate_duplicate,
    "row-shape": _mutate_row_shape,
}


def _mdir(env) -> str:
    return os.path.join(env.sds(DS0), ".drsync", "manifest")


def _poison_entries(env, mutate) -> None:
    """Rewrite v<V4>.json with ``mutate`` applied to its first row; refresh the index's digest so
    only the entry validation can catch it."""
    mdir = _mdir(env)
    with open(os.path.join(mdir, f"v{V4}.json")) as fh:
        doc = json.load(fh)
    assert doc["format"] == "drsync-manifest/1" and doc["entries"]
    rows = doc["entries"]
    mutate(rows[0], rows)
    with open(os.path.join(mdir, f"v{V4}.json"), "w") as fh:
        json.dump(doc, fh)
    # The digest the index would hold for these rows (same formula as drsync-manifest/1).
    entries = [mf.Entry(*r[:6]) for r in rows]
    with open(os.path.join(mdir, "index.json")) as fh:
        index = json.load(fh)
    index["versions"][V4]["digest"] = mf.version_digest(entries)
    with open(os.path.join(mdir, "index.json"), "w") as fh:
        json.dump(index, fh)


def _assert_contained(env, canary):
    assert tree_state(env.outside) == canary
    assert not os.path.lexists("/tmp/evil.nc")
    for root, dirs, files in os.walk(env.root):
        for n in dirs + files:
            assert "evil" not in n, os.path.join(root, n)


def _refused_or_rescanned(env, cp, canary):
    """Either outcome is safe: refused (exit 4, nothing of the dataset published), or the damaged
    entry list was distrusted and rebuilt from the tree (exit 0, the tree replicated exactly)."""
    if cp.returncode == 4:
        assert_failed(cp, 4, DS0, f"v{V4}")
        assert published_files(env.dds(DS0)) == [], "something of the poisoned dataset was published"
    else:
        assert_ok(cp)
        assert_replicated(env, DS0)  # the tree, not the poisoned list
    _assert_contained(env, canary)
    assert_replicated(env, DS1)


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_poisoned_entry_list_is_refused_or_rescanned(tmp_path, case):
    env = new_env(tmp_path)
    assert_ok(run_drsync("scan", env.src))
    _poison_entries(env, MUTATIONS[case])
    canary = tree_state(env.outside)

    cp = push(env)

    _refused_or_rescanned(env, cp, canary)


@pytest.mark.parametrize("field", ["digest", "size"])
def test_cache_lying_with_valid_names_is_caught(tmp_path, field):
    """An entry list that passes validation but lies about a file's digest or size: the cache is
    what is read, and the receiver's check catches the lie: exit 8, the version not published."""
    env = new_env(tmp_path, versions=3)
    assert_ok(push(env))
    for ds in env.generated:
        ds.add_version()
    assert_ok(run_drsync("scan", env.src))

    def lie(row, rows):
        for r in rows:
            if r[2] == f"var_0_{V4}":
                if field == "digest":
                    r[5] = "0123456789abcdef" * 2
                else:
                    r[3] += 1
                return
        raise AssertionError("no file of the new version")

    _poison_entries(env, lie)
    before = published_files(env.dds(DS0))
    canary = tree_state(env.outside)

    cp = push(env)

    assert_failed(cp, 8, DS0, f"var_0_{V4}")
    assert not os.path.exists(os.path.join(env.dds(DS0), f"v{V4}"))
    assert os.readlink(os.path.join(env.dds(DS0), "latest")) == f"v{V3}"
    assert published_files(env.dds(DS0)) == before
    _assert_contained(env, canary)
    assert_replicated(env, DS1)


def _index_latest(doc):
    doc["latest"] = "../../outside"


def _index_version_key(doc):
    doc["versions"][f"{V4}/.."] = doc["versions"][V4]


def _index_digest_short(doc):
    doc["versions"][V4]["digest"] = doc["versions"][V4]["digest"][:30]


def _index_negative_bytes(doc):
    doc["versions"][V4]["bytes"] = -5


def _index_loose(doc):
    doc["loose"] = {"../../outside/evil.nc": [1, 1, "0" * 32]}


def _index_not_json(doc):
    return b"{\"format\": \"drsync-manifest/1\", \"versions\": {"


INDEX_MUTATIONS = {
    "latest-dotdot": _index_latest,
    "version-key-dotdot": _index_version_key,
    "digest-15-bytes": _index_digest_short,
    "negative-bytes": _index_negative_bytes,
    "loose-escape": _index_loose,
    "truncated": _index_not_json,
}


@pytest.mark.parametrize("case", sorted(INDEX_MUTATIONS))
def test_poisoned_index_is_not_trusted(tmp_path, case):
    """A malformed index is never trusted: drsync rescans the tree (versions are immutable, so the
    tree is the truth) and replicates correctly, writing nothing outside the destination."""
    env = new_env(tmp_path)
    assert_ok(run_drsync("scan", env.src))
    path = os.path.join(_mdir(env), "index.json")
    with open(path) as fh:
        doc = json.load(fh)
    raw = INDEX_MUTATIONS[case](doc)
    with open(path, "wb") as fh:
        fh.write(raw if raw is not None else json.dumps(doc).encode())
    canary = tree_state(env.outside)

    cp = push(env)

    if cp.returncode == 4:  # refusing is safe too; then nothing of the dataset is published
        assert_failed(cp, 4, DS0)
        assert published_files(env.dds(DS0)) == []
    else:
        assert_ok(cp)
        assert_replicated(env, DS0)
    assert_replicated(env, DS1)
    _assert_contained(env, canary)


def test_poisoned_entry_list_with_stale_digest_is_not_trusted(tmp_path):
    """The entry list no longer matches the index's digest (edited without updating the index):
    refused or rebuilt from the tree, never a partial publish."""
    env = new_env(tmp_path)
    assert_ok(run_drsync("scan", env.src))
    mdir = _mdir(env)
    with open(os.path.join(mdir, f"v{V4}.json")) as fh:
        doc = json.load(fh)
    doc["entries"][0][1] = ESCAPE
    with open(os.path.join(mdir, f"v{V4}.json"), "w") as fh:
        json.dump(doc, fh)
    canary = tree_state(env.outside)
    cp = push(env)
    _refused_or_rescanned(env, cp, canary)
