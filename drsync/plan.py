"""The plan (DESIGN §3): a pure function of a source and a destination manifest.

Sorts every version into to-add / in-both (same or conflicting) / destination-only, then works out
which real files the destination lacks. Executing the plan is `sync`'s business; printing it is
`report`'s.
"""

from __future__ import annotations

from collections import namedtuple

from . import layout
from . import manifest as mf
from .errors import UnsafeInputError
from .manifest import Entry
from .options import Options
from .scan import DatasetManifest


class DatasetPlan(namedtuple("DatasetPlan", [
        "path", "versions_to_add", "files_to_send", "links_to_make", "naive_bytes", "conflicts", "extra_versions",
        "latest_source", "latest_destination", "new_latest", "delete_versions", "delete_files", "error"],
        defaults=[(), (), 0, 0, (), (), None, None, None, (), (), None])):
    """What one dataset needs. ``error`` set means: nothing of this dataset will be written.

    ``versions_to_add``, ``conflicts``, ``extra_versions``, ``delete_versions``: tuples of versions;
    ``files_to_send``: tuple of Entry; ``links_to_make``, ``naive_bytes``: int; ``latest_*``: the
    versions `latest` names on each side; ``new_latest``: what `latest` becomes (None: unchanged);
    ``delete_files``: ((files dir, file), ...); ``error``: a DrsyncError or None."""

    __slots__ = ()

    @property
    def bytes_to_send(self) -> int:
        return sum(e.size for e in self.files_to_send)

    @property
    def in_sync(self) -> bool:
        return not (self.versions_to_add or self.new_latest or self.delete_versions or self.delete_files
                    or self.conflicts or self.error)


class Plan(namedtuple("Plan", "source destination datasets", defaults=[()])):
    """A run's plan: one DatasetPlan per dataset, in order."""

    __slots__ = ()

    @property
    def in_sync(self) -> bool:
        return all(d.in_sync for d in self.datasets)


def _newer(a: str | None, b: str | None) -> bool:
    """True when version ``a`` is strictly newer than ``b`` (None is older than everything)."""
    if a is None:
        return False
    return b is None or layout.version_key(a) > layout.version_key(b)


def _held(have: tuple[int, str] | None, e: Entry) -> bool:
    """The destination holds ``e``'s real file: same size and digest (size only where a digest is
    unknown, in a sizes-only manifest of the SFTP fallback)."""
    if have is None or have[0] != e.size:
        return False
    return have[1] == e.digest or mf.UNKNOWN_DIGEST in (have[1], e.digest)


def _sizes_only(src: DatasetManifest, dst: DatasetManifest | None) -> bool:
    """SFTP fallback on either side: digests unknown, only names, link targets and sizes compare."""
    return src.sizes_only or (dst is not None and dst.sizes_only)


def _latest_is_dir(dst: DatasetManifest | None) -> bool:
    """The destination's `latest` is a directory (old layout): a plan that adds or moves anything
    there is refused (DatasetPlan.error)."""
    return dst is not None and dst.latest_is_dir


def _versions_diff(src: DatasetManifest, dst: DatasetManifest | None, options: Options):
    """The version-level half of a plan: (conflicts, extras, wanted, to_add), from the indexes alone
    (and, with a sizes-only side, the common versions' entry lists)."""
    sv = src.index.versions
    dv = dst.index.versions if dst else {}
    if _sizes_only(src, dst):
        # SFTP fallback: digests unknown on one side; compare names, link targets and sizes only
        # (both sides reduced to a size digest), never digests that are unknown.
        conflicts = tuple(layout.sort_versions(
            v for v in sv.keys() & dv.keys()
            if mf.size_digest(src.entries(v)) != mf.size_digest(dst.entries(v))))
    else:
        conflicts = tuple(layout.sort_versions(v for v in sv.keys() & dv.keys() if sv[v].digest != dv[v].digest))
    extras = tuple(layout.sort_versions(dv.keys() - sv.keys()))
    up_to = options.up_to
    wanted = [v for v in layout.sort_versions(sv) if up_to is None or layout.version_key(v) <= layout.version_key(up_to)]
    return conflicts, extras, wanted, tuple(v for v in wanted if v not in dv)


def versions_to_stage(src: DatasetManifest, dst: DatasetManifest | None, options: Options = Options()) -> tuple[str, ...]:
    """The versions diff_dataset(src, dst, options) will add, when that plan is sure to go ahead (no
    conflict, no error); else (). What a receiver can start building (the links, in staging) before
    the rest of the plan, the files to send, is worked out: on a large version that rest is most of
    the plan's time. A sizes-only side (SFTP) has no staging: ()."""
    if _sizes_only(src, dst) or _latest_is_dir(dst):
        return ()
    conflicts, _extras, _wanted, to_add = _versions_diff(src, dst, options)
    return () if conflicts else to_add


def diff_dataset(src: DatasetManifest, dst: DatasetManifest | None, options: Options = Options()) -> DatasetPlan:
    """Compare one dataset's manifests. Loads entry lists only for versions that must move."""
    sv = src.index.versions
    dv = dst.index.versions if dst else {}
    d_latest = dst.index.latest if dst else None
    sizes_only = _sizes_only(src, dst)
    conflicts, extras, wanted, to_add = _versions_diff(src, dst, options)
    base = dict(path=src.path, latest_source=src.index.latest, latest_destination=d_latest,
                extra_versions=extras)
    if conflicts:
        return DatasetPlan(conflicts=conflicts, **base)

    up_to = options.up_to

    # What the destination already holds: files of its recorded versions that the new versions
    # reference, and loose files an interrupted run left in files/.
    held: dict[tuple[str, str], tuple[int, str]] = {}
    if dst:
        held.update({k: (x.size, x.digest) for k, x in dst.index.loose.items()})
    new_entries: list[Entry] = []
    referenced_versions: set[str] = set()
    for v in to_add:
        for e in src.entries(v):
            new_entries.append(e)
            referenced_versions.add(e.dir.rpartition("_")[2])
    common_refs = referenced_versions & dv.keys()
    if dst is not None and referenced_versions - common_refs - set(to_add):
        # Links into files/ of a version the destination lacks (deleted there, or never a version
        # of its own): what it holds of those can only be learnt from all its entry lists.
        held.update({e.real: (e.size, e.digest) for v in dv for e in dst.entries(v)})
    # A version on both sides without conflict has the same entry list on both: read the local
    # copy (the source's on a push) rather than fetching the other over the wire, and only its
    # owned entries: a link into files/<name>_<v>/ can only match one of those. Where digests are
    # known on both sides they are compared as mf.owned_key strings, read without an Entry each.
    held_keys: set[str] = set()
    for v in common_refs:
        side = src if v in sv and (src.local or not dst.local) else dst
        if not sizes_only:
            held_keys |= side.owned_keys(v)
        else:
            held.update({e.real: (e.size, e.digest) for e in side.owned(v)})
    send: dict[tuple[str, str], Entry] = {}
    for e in new_entries:
        if (e.real not in send and not (held_keys and mf.owned_key(e) in held_keys)
                and not _held(held.get(e.real), e)):
            send[e.real] = e

    # `latest` moves to the source's (or, with --up-to, the newest replicated version), never back.
    target = src.index.latest
    if target is not None and up_to is not None and layout.version_key(target) > layout.version_key(up_to):
        target = wanted[-1] if wanted else None
    delete_versions: tuple[str, ...] = ()
    delete_files: tuple[tuple[str, str], ...] = ()
    if options.delete and extras:
        delete_versions = extras
        remaining = (dv.keys() - set(extras)) | set(to_add)
        keep: set[tuple[str, str]] = {e.real for e in new_entries}
        for v in remaining & dv.keys():
            keep.update(e.real for e in dst.entries(v))
        doomed = {e.real for v in extras for e in dst.entries(v)} - keep
        delete_files = tuple(sorted(doomed))
    latest_doomed = d_latest in delete_versions
    new_latest = target if target is not None and (_newer(target, d_latest) or latest_doomed) else None
    if latest_doomed and new_latest is None:
        remaining_versions = layout.sort_versions((dv.keys() - set(extras)) | set(to_add))
        new_latest = remaining_versions[-1] if remaining_versions else None
    error = None
    if _latest_is_dir(dst) and (new_latest or to_add):
        error = UnsafeInputError("destination `latest` is a directory (old layout); drsync will not replace it",
                                 dataset=src.path, path=layout.LATEST)
    return DatasetPlan(
        versions_to_add=to_add,
        files_to_send=tuple(send.values()),
        links_to_make=len(new_entries),
        naive_bytes=sum(e.size for e in new_entries),
        new_latest=new_latest,
        delete_versions=delete_versions,
        delete_files=delete_files,
        error=error,
        **base,
    )
