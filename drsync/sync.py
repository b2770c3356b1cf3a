"""push / pull / diff / scan between nodes: plan each dataset, then transfer, verify and publish.

Errors are collected per dataset (a conflict or an unsafe tree stops that dataset, the others go
on); the exit code is decided at the end from what was collected (STYLE habit 5).
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from dataclasses import dataclass, field

from . import layout
from . import manifest as mf
from .errors import ConflictError, DestinationIOError, DrsyncError, UsageError
from .events import Events
from .fsutil import Dir
from .plan import DatasetPlan, Options, Plan, diff_dataset
from .publish import Received, Receiver
from .scan import DatasetManifest, find_datasets, refresh
from .state import StateDir
from .transports.local import LocalSource

_SSH_SPEC = re.compile(r"^(?:[^@/:]+@)?(?:\[[^\]/]+\]|[^@/:\[\]]+)(?::\d+)?:")


@dataclass
class RunResult:
    """What a command did: the plan, the errors met, and (push/pull) what was transferred."""

    command: str
    plan: Plan
    dry_run: bool = False
    errors: list[DrsyncError] = field(default_factory=list)
    transferred: Received | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.errors:
            return max(e.exit_code for e in self.errors)
        if self.command == "diff" and not self.plan.in_sync:
            return 1
        return 0


def is_remote(spec: str) -> bool:
    """``[user@]host[:port]:/path`` is a remote node; anything else is a local path."""
    return bool(_SSH_SPEC.match(spec)) and not os.path.exists(spec)


def _local(spec: str) -> str:
    if is_remote(spec):
        raise UsageError(f"remote node {spec!r}: the ssh transport is not available in this build")
    return spec


def _select(paths: list[str], options: Options) -> list[str]:
    chosen = []
    for p in paths:
        if options.datasets and not any(fnmatch.fnmatchcase(p, g) for g in options.datasets):
            continue
        if any(fnmatch.fnmatchcase(p, g) for g in options.exclude):
            continue
        chosen.append(p)
    return chosen


def _open_source(path: str) -> tuple[Dir, list[str]]:
    try:
        root = Dir.open_root(_local(path))
    except FileNotFoundError:
        raise UsageError("source does not exist", path=path) from None
    except NotADirectoryError:
        raise UsageError("source is not a directory", path=path) from None
    found = find_datasets(root)
    return root, ["." if p == "" else p for p in found]


def _source_manifest(root: Dir, drs: str, options: Options, events: Events, *, save: bool):
    ds = root.walk_to(drs if drs != "." else "")
    state = None
    try:
        state = StateDir.open(ds, drs, options.state_dir, create=save)
    except (OSError, DrsyncError) as e:
        events.warning(f"{drs}: source manifest cache unavailable ({e}); scanning without it")
    return ds, refresh(ds, drs, state, save=save, events=events, durable=options.fsync)


def scan(path: str, options: Options = Options(), events: Events | None = None) -> list[DatasetManifest]:
    """Refresh and save the manifest of every (selected) dataset below ``path``."""
    events = events or Events()
    root, found = _open_source(path)
    out = []
    with root:
        for drs in _select(found, options):
            ds, man = _source_manifest(root, drs, options, events, save=True)
            ds.close()
            out.append(man)
    return out


def diff(source: str, destination: str, options: Options = Options(), events: Events | None = None) -> RunResult:
    """The plan as a report; writes nothing anywhere."""
    return _run("diff", source, destination, Options(**{**options.__dict__, "dry_run": True}), events)


def push(source: str, destination: str, options: Options = Options(), events: Events | None = None) -> RunResult:
    """Execute the plan: send what the destination lacks, then publish it (DESIGN §4)."""
    return _run("push", source, destination, options, events)


def pull(source: str, destination: str, options: Options = Options(), events: Events | None = None) -> RunResult:
    """Fetch from ``source`` into the local ``destination`` (local:local behaves like push)."""
    return _run("pull", source, destination, options, events)


def _run(command: str, source: str, destination: str, options: Options, events: Events | None) -> RunResult:
    events = events or Events()
    start = time.monotonic()
    src_root, found = _open_source(source)
    selected = _select(found, options)
    dst_path = _local(destination)
    plans: list[DatasetPlan] = []
    result = RunResult(command, Plan(source, destination), dry_run=options.dry_run,
                       transferred=None if options.dry_run else Received())
    dst_root = None
    try:
        if os.path.isdir(dst_path):
            dst_root = Dir.open_root(dst_path)
        elif not options.dry_run and selected:
            try:
                dst_root = Dir.open_root(dst_path, create=True)
            except OSError as e:
                raise DestinationIOError(f"cannot create destination: {e.strerror}", path=dst_path) from e
        elif os.path.exists(dst_path):
            raise UsageError("destination is not a directory", path=dst_path)
        for drs in selected:
            dplan = None
            try:
                dplan = _one_dataset(src_root, dst_root, drs, options, events, result)
            except DrsyncError as e:
                if e.dataset is None:
                    e.dataset = drs
                result.errors.append(e)
                if dplan is None:
                    dplan = DatasetPlan(path=drs, error=e)
            plans.append(dplan)
    finally:
        src_root.close()
        if dst_root is not None:
            dst_root.close()
    result.plan = Plan(source, destination, tuple(plans))
    result.seconds = time.monotonic() - start
    return result


def _one_dataset(src_root: Dir, dst_root: Dir | None, drs: str, options: Options, events: Events,
                 result: RunResult) -> DatasetPlan:
    sds, sman = _source_manifest(src_root, drs, options, events, save=not options.dry_run)
    rel = "" if drs == "." else drs
    with sds:
        if options.dry_run:
            dds = _try_walk(dst_root, rel) if dst_root is not None else None
            if dds is None:
                return _checked(diff_dataset(sman, None, options), result)
            with dds:
                state = StateDir.open(dds, drs, options.state_dir, create=False)
                dman = refresh(dds, drs, state, save=False, loose=True, events=events)
                return _checked(diff_dataset(sman, dman, options), result)
        try:
            dds = dst_root.walk_to(rel, create=True)
        except OSError as e:
            from .publish import _dest_error

            raise _dest_error(e, drs, os.path.join(dst_root.path, rel)) from e
        with dds:
            state = StateDir.open(dds, drs, options.state_dir, create=True)
            with state.lock(wait=options.wait):
                receiver = Receiver(dds, state, drs, events=events, durable=options.fsync)
                receiver.recover()
                dman = refresh(dds, drs, state, save=True, loose=True, events=events, durable=options.fsync)
                plan = _checked(diff_dataset(sman, dman, options), result)
                if plan.error is None and not plan.conflicts:
                    _execute(plan, sds, sman, dman, receiver, options, events, result)
                return plan


def _try_walk(root: Dir, rel: str) -> Dir | None:
    try:
        return root.walk_to(rel)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _checked(plan: DatasetPlan, result: RunResult) -> DatasetPlan:
    """Turn a plan's conflicts or error into collected errors; nothing of it will be written."""
    if plan.conflicts:
        result.errors.append(ConflictError(f"version(s) differ between the nodes: {', '.join(plan.conflicts)}",
                                           dataset=plan.path, path=f"v{plan.conflicts[0]}"))
    if plan.error is not None:
        result.errors.append(plan.error)
    return plan


def _execute(plan: DatasetPlan, sds: Dir, sman: DatasetManifest, dman: DatasetManifest, receiver: Receiver,
             options: Options, events: Events, result: RunResult) -> None:
    """Run the publish protocol for one dataset's plan."""
    drs = plan.path
    if plan.in_sync:
        return
    source = LocalSource(sds)
    try:
        events.start(drs, len(plan.files_to_send), plan.bytes_to_send)
        got = receiver.receive_files(list(plan.files_to_send), source.fetch_batch,
                                     link=source.link if options.link else None)
        result.transferred.files += got.files
        result.transferred.bytes += got.bytes
        versions = dict(dman.index.versions)
        new_entries: dict[str, list[mf.Entry]] = {}
        for v in plan.versions_to_add:
            entries = sman.entries(v)
            receiver.publish_version(v, entries)
            new_entries[v] = entries
            versions[v] = sman.index.versions[v]
        latest = dman.index.latest
        if plan.new_latest is not None:
            receiver.point_latest(plan.new_latest)
            latest = plan.new_latest
        if plan.delete_versions or plan.delete_files:
            receiver.delete(plan.delete_versions, plan.delete_files)
            for v in plan.delete_versions:
                versions.pop(v, None)
        loose = {k: x for k, x in dman.index.loose.items() if k[0].rpartition("_")[2] not in versions}
        receiver.write_manifest(mf.Index(latest, versions, loose), new_entries)
        receiver.recover()
    finally:
        source.close()
        events.finish(drs)


def check_version_option(value: str | None) -> str | None:
    """Validate ``--up-to``: digits, with or without the leading ``v``."""
    if value is None:
        return None
    v = value[1:] if value.startswith("v") else value
    try:
        return layout.check_version(v)
    except DrsyncError:
        raise UsageError(f"--up-to wants a version such as 20100101 or v20100101, not {value!r}") from None
