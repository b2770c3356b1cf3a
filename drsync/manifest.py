"""The drsync-manifest/1 model: frozen records, their JSON form, and strict validation on load.

A dataset's manifest is split in two (DESIGN §2): a small *index* (versions, `latest`, one digest
per version's entry list) and one *entry list* per version. A no-op compares two indexes and never
loads entries. Everything loaded, from disk or from a remote agent, is validated here: names,
digests and sizes from a peer are never trusted (FAULTS A12).
"""

from __future__ import annotations

import json
import re
from collections import namedtuple
from operator import itemgetter

import xxhash

from . import layout
from .errors import UnsafeInputError

FORMAT = "drsync-manifest/1"
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX = re.compile(r"[0-9a-f]*")
_BY_KEY = itemgetter(0, 1)  # (name, file): the order a version digest is taken in


def digests_valid(digests) -> bool:
    """True when every string is a digest as entries hold it (32 lowercase hex digits): two
    C-level passes, no call per digest."""
    return set(map(len, digests)) <= {32} and _HEX.fullmatch("".join(digests)) is not None


class Entry(namedtuple("Entry", "name file dir size mtime_ns digest")):
    """One link of a version: ``v<ver>/<name>/<file> -> ../../files/<dir>/<file>``.

    ``name``, ``file``: str; ``dir``: the files/ directory it points into, "<name>_<v'>";
    ``size``, ``mtime_ns``: int; ``digest``: xxh3-128, 32 lowercase hex digits.

    A named tuple, not a frozen dataclass: a large dataset loads hundreds of thousands of these,
    and a tuple is made in a tenth of the time (no ``object.__setattr__`` per field). The
    collections kind, not typing.NamedTuple: importing typing costs every run a few ms."""

    __slots__ = ()

    @property
    def key(self) -> str:
        return f"{self.name}/{self.file}"

    @property
    def real(self) -> tuple[str, str]:
        """The real file this entry references, as (files dir, file name)."""
        return (self.dir, self.file)


class StoredEntries(list):
    """An entry list read from a stored manifest file, keeping the bytes it was read from
    (``raw``: (version, bytes)): saving the same list for another node (a local push) writes those
    bytes instead of serialising every row again, and a message to a peer embeds its rows as they
    are (``rows_at``: where they start, or None; see entries_rows_bytes). Entry lists are never
    changed once made."""

    __slots__ = ("raw", "rows_at")


class VersionInfo(namedtuple("VersionInfo", "digest entries bytes")):
    """What the index keeps of a version: the digest (str) of its entry list, and counts (int)."""

    __slots__ = ()


class Loose(namedtuple("Loose", "size mtime_ns digest")):
    """A real file under files/ that no recorded version references yet (an interrupted run)."""

    __slots__ = ()


class Index(namedtuple("Index", "latest versions loose")):
    """The small part of a dataset's manifest: enough to decide a no-op. ``latest``: a version or
    None; ``versions``: {version: VersionInfo}; ``loose``: {(files dir, file): Loose}. Each index
    gets dicts of its own when none are given."""

    __slots__ = ()

    def __new__(cls, latest: str | None = None, versions: dict | None = None, loose: dict | None = None):
        return super().__new__(cls, latest, {} if versions is None else versions, {} if loose is None else loose)

    def sorted_versions(self) -> list[str]:
        return layout.sort_versions(self.versions)


def version_digest(entries: list[Entry]) -> str:
    """Digest of a version's content: names, targets, sizes and file digests (not mtimes, which
    another copy tool may not have kept)."""
    text = "".join([f"{e.name}\0{e.file}\0{e.dir}\0{e.size}\0{e.digest}\n" for e in sorted(entries, key=_BY_KEY)])
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogateescape"))  # = hashing row by row


def version_info(entries: list[Entry]) -> VersionInfo:
    return VersionInfo(version_digest(entries), len(entries), sum(e.size for e in entries))


# --- sizes-only manifests (the SFTP fallback, DESIGN §2) ----------------------------------------
# A tree walked over plain SFTP has no digests. Its entries carry UNKNOWN_DIGEST, which is not hex:
# `make_entry`/`index_from_json` refuse it, so it can only come from an SFTP walk made in this
# process, never from a file or an agent. Such a manifest is compared on sizes and link targets.
UNKNOWN_DIGEST = "unknown"


def size_digest(entries: list[Entry]) -> str:
    """Digest of a version's names, targets and sizes only: what a sizes-only manifest can vouch for."""
    text = "".join([f"{e.name}\0{e.file}\0{e.dir}\0{e.size}\n" for e in sorted(entries, key=_BY_KEY)])
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogateescape"))


def size_info(entries: list[Entry]) -> VersionInfo:
    """The index record of a sizes-only version (its digest is a size_digest)."""
    return VersionInfo(size_digest(entries), len(entries), sum(e.size for e in entries))


# --- validation ---------------------------------------------------------------------------------


def _int(value, what: str, dataset: str | None) -> int:
    if type(value) is not int or value < 0:
        raise UnsafeInputError(f"malformed manifest: {what} is not a non-negative integer", dataset=dataset)
    return value


def _digest(value, dataset: str | None, where: str) -> str:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise UnsafeInputError("malformed manifest: digest is not 16 bytes of hex", dataset=dataset, path=where)
    return value


def make_entry(row, version: str, dataset: str | None) -> Entry:
    """Validate one ``[name, file, dir, size, mtime_ns, digest]`` row of version ``version``."""
    if not isinstance(row, list) or len(row) != 6:
        raise UnsafeInputError("malformed manifest entry", dataset=dataset, path=f"v{version}")
    name, file, dirname, size, mtime, digest = row
    layout.check_name(name, "variable name", dataset=dataset)
    layout.check_name(file, "file name", dataset=dataset)
    dname, dversion = layout.split_files_dir(dirname, dataset=dataset)
    where = f"v{version}/{name}/{file}"
    if dname != name or layout.version_key(dversion) > layout.version_key(version):
        raise UnsafeInputError(f"link target not canonical: files/{dirname}/{file}", dataset=dataset, path=where)
    return Entry(name, file, dirname, _int(size, "size", dataset), _int(mtime, "mtime", dataset),
                 _digest(digest, dataset, where))


def _columns_valid(rows: list, version: str) -> bool:
    """The checks of make_entry over whole columns at once (C-level passes, no call per row).
    False when a row may be bad: the caller then checks row by row for the precise message."""
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {6}:
        return False
    names, files, dirs, sizes, mtimes, digests = zip(*rows)
    if not layout.plain_names(files):
        return False
    for column in (sizes, mtimes):
        if set(map(type, column)) != {int} or min(column) < 0:
            return False
    if set(map(type, digests)) != {str} or not digests_valid(digests):
        return False
    for name, dirname in set(zip(names, dirs)):  # few distinct (variable, files dir) pairs
        if type(name) is not str or type(dirname) is not str or not layout.plain_name(name):
            return False
        dname, _, dversion = dirname.rpartition("_")
        if (dname != name or not layout.plain_name(dirname) or not layout.is_version(dversion)
                or layout.version_key(dversion) > layout.version_key(version)):
            return False
    return True


def entries_from_json(doc, version: str, dataset: str | None) -> list[Entry]:
    """Parse and validate a version's entry list; duplicates are refused (FAULTS A7)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != version:
        raise UnsafeInputError("malformed manifest: bad entry list header", dataset=dataset, path=f"v{version}")
    rows = doc.get("entries", [])
    if not isinstance(rows, list):
        raise UnsafeInputError("malformed manifest: entries is not a list", dataset=dataset, path=f"v{version}")
    if not rows:
        return []
    if _columns_valid(rows, version):
        entries = list(map(Entry._make, rows))
    else:
        entries = [make_entry(row, version, dataset) for row in rows]  # raises the precise error
    if len(set(map(_BY_KEY, entries))) != len(entries):
        seen: set[str] = set()
        for e in entries:
            if e.key in seen:
                raise UnsafeInputError("duplicate entry in manifest", dataset=dataset, path=f"v{version}/{e.key}")
            seen.add(e.key)
    return entries


def owned(entries: list[Entry], version: str) -> list[Entry]:
    """The entries of ``version`` whose real file lives in its own ``files/<name>_<version>/``:
    the files that version added or changed. A later version that links into that directory
    needs only these to know what a peer holding ``version`` already has."""
    suffix = "_" + version
    return [e for e in entries if e.dir.endswith(suffix)]


def owned_key(e: Entry) -> str:
    """What a peer holding ``e``'s real file must match: files dir, file name, size and digest
    (not the mtime), as one string: the rows of a stored owned list are exactly these keys."""
    return f"{e.dir}\t{e.file}\t{e.size}\t{e.digest}"


def _rows_digest(rows: str, mtimes: str) -> str:
    return xxhash.xxh3_128_hexdigest(f"{rows}\0{mtimes}".encode("utf-8", "surrogateescape"))


def owned_to_json(version: str, of: str, entries: list[Entry]) -> dict:
    """The stored owned-entries list of ``version`` (derived, never authoritative): ``of`` is the
    index digest of the full list it was cut from. The entries are stored as text, one owned_key
    per line (names hold no tab or newline: layout.check_name) and their mtimes apart, so that the
    plan reads the keys with one split instead of building an Entry per row; ``digest`` guards
    both against damage."""
    rows = "\n".join([owned_key(e) for e in entries])
    mtimes = " ".join([str(e.mtime_ns) for e in entries])
    return {"format": FORMAT, "version": version, "of": of, "rows": rows, "mtimes": mtimes,
            "digest": _rows_digest(rows, mtimes)}


def _owned_rows(doc, version: str, of: str, dataset: str | None) -> tuple[str, str] | None:
    """The (rows, mtimes) text of a stored owned list in the current form; None when it is in the
    older form (a list of entries) or was cut from another entry list than the index names now."""
    if not isinstance(doc, dict) or doc.get("of") != of or doc.get("version") != version or "rows" not in doc:
        return None
    rows, mtimes = doc.get("rows"), doc.get("mtimes")
    if not isinstance(rows, str) or not isinstance(mtimes, str) or _rows_digest(rows, mtimes) != doc.get("digest"):
        raise UnsafeInputError("malformed manifest: owned entry list", dataset=dataset, path=f"v{version}")
    return rows, mtimes


def owned_keys_from_json(doc, version: str, of: str, dataset: str | None) -> set[str] | None:
    """The owned_keys of a stored owned list, for the plan's membership test, without an Entry
    per row: a key is only ever compared with keys of validated entries, never used as a path, so
    the digest check (damage) is the check it needs. None as in _owned_rows."""
    got = _owned_rows(doc, version, of, dataset)
    if got is None:
        return None
    return set(got[0].split("\n")) if got[0] else set()


def owned_from_json(doc, version: str, of: str, dataset: str | None) -> list[Entry] | None:
    """Parse a stored owned list into validated entries (either form); None when it was cut from
    another entry list than the one the index names now. Raises on a malformed or damaged one."""
    if not isinstance(doc, dict) or doc.get("of") != of:
        return None
    got = _owned_rows(doc, version, of, dataset)
    if got is not None:
        rows, mtimes = got
        lines = rows.split("\n") if rows else []
        times = mtimes.split(" ") if mtimes else []
        if len(times) != len(lines):
            raise UnsafeInputError("malformed manifest: owned entry list", dataset=dataset, path=f"v{version}")
        table = []
        for line, mtime in zip(lines, times):
            dirname, file, size, digest = line.split("\t")
            table.append([dirname.rpartition("_")[0], file, dirname, int(size), int(mtime), digest])
        entries = entries_from_json({"format": FORMAT, "version": version, "entries": table}, version, dataset)
        digest_ok = True
    else:  # the older form: full entry rows, guarded by their version digest
        entries = entries_from_json(doc, version, dataset)
        digest_ok = version_digest(entries) == doc.get("digest")
    suffix = "_" + version
    if not digest_ok or any(not e.dir.endswith(suffix) for e in entries):
        raise UnsafeInputError("malformed manifest: owned entry list", dataset=dataset, path=f"v{version}")
    return entries


def entries_bytes(version: str, entries: list[Entry]) -> bytes:
    """The stored form of a version's entry list: the bytes it was read from when it is a
    StoredEntries of that version, else freshly serialised."""
    raw = getattr(entries, "raw", None)
    if raw is not None and raw[0] == version:
        return raw[1]
    return dumps(entries_to_json(version, entries))


def _rows_head(version: str) -> bytes:
    """How a stored entry list in drsync's own form starts, up to its rows."""
    return b'{"format":"' + FORMAT.encode() + b'","version":' + json.dumps(version).encode() + b',"entries":'


def stored_rows_at(version: str, doc: dict, data: bytes) -> int | None:
    """Where the rows of a stored entry list start in ``data`` (parsed as ``doc``), when the list
    is in drsync's own form: exactly the keys format, version and entries, in that order, written
    compactly. None otherwise."""
    head = _rows_head(version)
    return len(head) if list(doc) == ["format", "version", "entries"] and data.startswith(head) else None


def entries_rows_bytes(version: str, entries: list[Entry]) -> bytes:
    """The JSON text of a version's entry rows (``entries_to_json(...)["entries"]``): cut out of the
    bytes a StoredEntries was read from (then validated and digest-checked) when it is that
    version's list in drsync's own form, else serialised. A peer's message embeds it as it is."""
    raw = getattr(entries, "raw", None)
    at = getattr(entries, "rows_at", None)
    if raw is not None and raw[0] == version and at is not None:
        data = raw[1]
        return data[at:data.rindex(b"}")]
    return dumps(entries_to_json(version, entries)["entries"])


def with_rows_text(version: str, entries: list[Entry], rows: bytes) -> StoredEntries:
    """``entries`` of ``version``, validated, as parsed from ``rows`` (the JSON text of their rows, as
    a peer sent them), kept with the stored form of the list made around that text: saving them
    writes it as it is (entries_bytes), not every row serialised again."""
    out = StoredEntries(entries)
    head = _rows_head(version)
    out.raw = (version, head + rows + b"}")
    out.rows_at = len(head)
    return out


def entries_to_json(version: str, entries: list[Entry]) -> dict:
    return {
        "format": FORMAT,
        "version": version,
        "entries": [[e.name, e.file, e.dir, e.size, e.mtime_ns, e.digest] for e in entries],
    }


def index_from_json(doc, dataset: str | None) -> Index:
    """Parse and validate an index document."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UnsafeInputError("malformed manifest: not drsync-manifest/1", dataset=dataset)
    versions: dict[str, VersionInfo] = {}
    raw_versions = doc.get("versions")
    if not isinstance(raw_versions, dict):
        raise UnsafeInputError("malformed manifest: versions", dataset=dataset)
    for v, info in raw_versions.items():
        layout.check_version(v, dataset=dataset)
        if not isinstance(info, dict):
            raise UnsafeInputError("malformed manifest: version record", dataset=dataset, path=f"v{v}")
        versions[v] = VersionInfo(_digest(info.get("digest"), dataset, f"v{v}"),
                                  _int(info.get("entries"), "entries", dataset),
                                  _int(info.get("bytes"), "bytes", dataset))
    latest = doc.get("latest")
    if latest is not None:
        layout.check_version(latest, dataset=dataset)
    loose: dict[tuple[str, str], Loose] = {}
    raw_loose = doc.get("loose") or {}
    if not isinstance(raw_loose, dict):
        raise UnsafeInputError("malformed manifest: loose", dataset=dataset)
    for key, record in raw_loose.items():
        if not isinstance(record, list) or len(record) != 3:
            raise UnsafeInputError("malformed manifest: loose file record", dataset=dataset, path=f"files/{key}")
        size, mtime, digest = record
        dirname, _, file = key.partition("/")
        layout.split_files_dir(dirname, dataset=dataset)
        layout.check_name(file, "file name", dataset=dataset)
        loose[(dirname, file)] = Loose(_int(size, "size", dataset), _int(mtime, "mtime", dataset),
                                       _digest(digest, dataset, f"files/{key}"))
    return Index(latest, versions, loose)


def index_to_json(index: Index) -> dict:
    doc: dict = {
        "format": FORMAT,
        "latest": index.latest,
        "versions": {
            v: {"digest": i.digest, "entries": i.entries, "bytes": i.bytes}
            for v, i in sorted(index.versions.items(), key=lambda kv: layout.version_key(kv[0]))
        },
    }
    if index.loose:
        doc["loose"] = {f"{d}/{f}": [x.size, x.mtime_ns, x.digest] for (d, f), x in sorted(index.loose.items())}
    return doc


def dumps(doc) -> bytes:
    # surrogateescape keeps non-UTF-8 names round-trippable; they are refused on load anyway.
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()


def loads(data: bytes):
    return json.loads(data)
