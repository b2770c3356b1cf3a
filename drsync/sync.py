"""push / pull / diff / scan between nodes: plan each dataset, then transfer, verify and publish.

Errors are collected per dataset (a conflict or an unsafe tree stops that dataset, the others go
on); the exit code is decided at the end from what was collected (STYLE habit 5).
"""

from __future__ import annotations

import fnmatch
import sys
import time

from . import fdtable, layout, staging_fork
from . import manifest as mf
from .connecting import Connecting
from .errors import ConflictError, DrsyncError, UsageError
from .events import Events
from .fetch import Received
from .options import check_timeout  # noqa: F401  (re-exported: mirror jobs)
from .plan import DatasetPlan, Options, Plan, diff_dataset, versions_to_stage
from .retry import Retries
from .scan import DatasetManifest
from .transports.local import LocalDestination, LocalNode
from .transports.spec import is_remote


class RunResult:
    """What a command did: the plan, the errors met, and (push/pull) what was transferred.

    ``errors``: the DrsyncErrors collected; ``transferred``: a Received (None for diff);
    ``seconds``: wall time; ``durable``: False with --no-fsync (the report says so); ``attempts``:
    connections made, 1 + the retries after lost connections. (A plain class: a dataclass costs
    every run the import of ``dataclasses``.)"""

    def __init__(self, command: str, plan: Plan, dry_run: bool = False, errors: list[DrsyncError] | None = None,
                 transferred: Received | None = None, seconds: float = 0.0, durable: bool = True,
                 attempts: int = 1) -> None:
        self.command = command
        self.plan = plan
        self.dry_run = dry_run
        self.errors = [] if errors is None else errors
        self.transferred = transferred
        self.seconds = seconds
        self.durable = durable
        self.attempts = attempts

    def __repr__(self) -> str:
        return (f"RunResult(command={self.command!r}, exit_code={self.exit_code}, errors={self.errors!r}, "
                f"transferred={self.transferred!r}, attempts={self.attempts})")

    @property
    def exit_code(self) -> int:
        if self.errors:
            return max(e.exit_code for e in self.errors)
        if self.command == "diff" and not self.plan.in_sync:
            return 1
        return 0


def open_node(spec: str, options: Options, events: Events):
    """A node object for ``spec``: a local path, or ``[user@]host[:port]:PATH`` over ssh."""
    if is_remote(spec):
        from .transports.remote import connect_node

        return connect_node(spec, options, events)
    return LocalNode(spec, options, events)


def _select(paths: list[str], options: Options) -> list[str]:
    chosen = []
    for p in paths:
        if options.datasets and not any(fnmatch.fnmatchcase(p, g) for g in options.datasets):
            continue
        if any(fnmatch.fnmatchcase(p, g) for g in options.exclude):
            continue
        chosen.append(p)
    return chosen


def scan(path: str, options: Options = Options(), events: Events | None = None) -> list[DatasetManifest]:
    """Refresh and save the manifest of every (selected) dataset below ``path``."""
    node = open_node(path, options, events or Events())
    try:
        # `scan` is the explicit refresh: it also checks every stored entry list (and rebuilds a
        # damaged one), which push and diff skip to stay O(versions).
        return [node.source_manifest(drs, save=True, **({"validate": True} if isinstance(node, LocalNode) else {}))
                for drs in _select(node.datasets(), options)]
    finally:
        node.close()


def diff(source: str, destination: str, options: Options = Options(), events: Events | None = None) -> RunResult:
    """The plan as a report; writes nothing anywhere."""
    return _run("diff", source, destination, options._replace(dry_run=True), events)


def push(source: str, destination: str, options: Options = Options(), events: Events | None = None) -> RunResult:
    """Execute the plan: send what the destination lacks, then publish it (DESIGN §4)."""
    return _run("push", source, destination, options, events)


def pull(source: str, destination: str, options: Options = Options(), events: Events | None = None) -> RunResult:
    """Fetch from ``source`` into ``destination`` (the same plan and protocol as push)."""
    return _run("pull", source, destination, options, events)


def _run(command: str, source: str, destination: str, options: Options, events: Events | None) -> RunResult:
    events = events or Events()
    fdtable.reserve()  # a batch of partial files open at once (the executable did this already)
    if is_remote(source) and is_remote(destination):
        raise UsageError("both nodes are remote; one side of a push or pull must be local")
    if options.retries < 0:
        raise UsageError(f"--retries wants a whole number >= 0, not {options.retries}")
    start = time.monotonic()
    result = RunResult(command, Plan(source, destination), dry_run=options.dry_run,
                       transferred=None if options.dry_run else Received(), durable=options.fsync)
    progress = _Progress()
    budget = Retries(options.retries, events)
    while True:
        try:
            _attempt(source, destination, options, events, result, progress)
            break
        except DrsyncError as e:  # a lost connection (anything else was collected per dataset)
            if budget.again(e):
                continue  # reconnect, re-plan; finished datasets are skipped, partial files resumed
            if progress.selected is None:
                raise  # not even connected: one error for the whole run, as before retries existed
            if progress.current is not None:
                e.dataset = e.dataset or progress.current
                progress.done[progress.current] = DatasetPlan(path=progress.current, error=e)
            result.errors.append(e)
            break
    result.attempts = budget.attempts
    result.plan = Plan(source, destination, tuple(progress.done[d] for d in progress.selected or ()
                                                  if d in progress.done))
    result.seconds = time.monotonic() - start
    return result


class _Progress:
    """What a run has got through, kept across the attempts of a retried run."""

    def __init__(self) -> None:
        self.selected: list[str] | None = None  # the datasets to do, listed once
        self.done: dict[str, DatasetPlan] = {}  # finished, or failed for good
        self.planned: dict[str, DatasetPlan] = {}  # first plan made (what the report shows)
        self.current: str | None = None  # the dataset in flight


def _attempt(source: str, destination: str, options: Options, events: Events, result: RunResult,
             progress: _Progress) -> None:
    """One attempt: connect, then every dataset not done yet. A retryable error (a lost connection)
    escapes, after the nodes are closed; any other error is collected for its dataset."""
    # a remote destination of a local source connects while the source side gets ready (connecting.py)
    early = Connecting(open_node, destination, options, events) \
        if is_remote(destination) and not is_remote(source) else None
    try:
        src = open_node(source, options, events)
    except BaseException:
        if early is not None:
            early.abandon()
        raise
    try:
        if progress.selected is None:
            found = src.datasets()
            progress.selected = _select(found, options)
            if found and not progress.selected:
                events.warning("no dataset matches --dataset/--exclude; nothing to do")
        if early is not None:
            _load_ahead(src, next((d for d in progress.selected if d not in progress.done), None), options)
            dst, early = early.result(), None
        else:
            dst = open_node(destination, options, events)
        try:
            for drs in progress.selected:
                if drs in progress.done:
                    continue
                progress.current = drs
                try:
                    plan = _one_dataset(src, dst, drs, options, events, result, progress.planned)
                    progress.done[drs] = progress.planned.get(drs, plan)
                except DrsyncError as e:
                    if e.dataset is None:
                        e.dataset = drs
                    if e.retryable:
                        raise
                    result.errors.append(e)
                    progress.done[drs] = DatasetPlan(path=drs, error=e)
                finally:
                    src.release_source(drs)
            progress.current = None
        finally:
            dst.close()
    finally:
        if early is not None:  # the source side failed before the destination was needed
            early.abandon()
        src.close()


def _load_ahead(src, drs: str | None, options: Options) -> None:
    """While the destination connects: the source manifest of the first dataset to do, and what a
    plan adding its latest version reads (DatasetManifest.warm). Both stay loaded for the dataset's
    turn. A failure here is left for that turn to meet again and report for its dataset."""
    if drs is None:
        return
    # The connecting thread needs the interpreter only for moments (a packet to answer), but would
    # wait up to a switch interval (5 ms) each time while this thread computes: make that short.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, 0.0002))
    try:
        src.source_manifest(drs, save=not options.dry_run).warm()
    except Exception:
        pass
    finally:
        sys.setswitchinterval(interval)


def _one_dataset(src, dst, drs: str, options: Options, events: Events, result: RunResult,
                 planned: dict[str, DatasetPlan]) -> DatasetPlan:
    sman = src.source_manifest(drs, save=not options.dry_run)
    if options.dry_run:
        return _checked(diff_dataset(sman, dst.peek_destination(drs), options), result)
    session = dst.open_destination(drs)
    try:
        staged = _stage_early(sman, session, options)
        plan = diff_dataset(sman, session.manifest, options)
        if plan.conflicts and not options.checksum and hasattr(session, "rescan"):
            # FAULTS D7: confirm a conflict against the tree, not a stored index with a flipped byte
            session.rescan()
            plan = diff_dataset(sman, session.manifest, options)
            if not plan.conflicts:
                session.save_manifest()  # the stored index lied; the tree agrees with the source
        plan = _checked(plan, result)
        if plan.error is None and not plan.conflicts and not plan.in_sync:
            # a retry after a lost connection re-plans (files that arrived meanwhile drop out); the
            # report keeps the first plan: what this run had to do
            planned.setdefault(drs, plan)
            _execute(plan, src, sman, session, options, events, result, staged)
        return plan
    finally:
        session.close()


def _stage_early(sman: DatasetManifest, session, options: Options) -> tuple[str, ...]:
    """Hand the receiver the new versions' entries as soon as the indexes say which versions those
    are and that the plan will go ahead (plan.versions_to_stage), before the rest of the plan: it
    builds their links in staging while the files to send are worked out and then arrive. Nothing
    staged is visible; a session closed without publishing removes it."""
    if not hasattr(session, "stage"):
        return ()
    versions = versions_to_stage(sman, session.manifest, options)
    if (len(versions) == 1 and hasattr(session, "stage_stored") and sman.local and not sman.sizes_only
            and sman.index.versions[versions[0]].entries >= staging_fork.FORK_LINKS):
        session.stage_stored(versions[0], sman)  # the links in a forked child: staging_fork.py
    elif versions:
        session.stage([(v, sman.entries(v)) for v in versions])
    return versions


def _checked(plan: DatasetPlan, result: RunResult) -> DatasetPlan:
    """Turn a plan's conflicts or error into collected errors; nothing of it will be written."""
    if plan.conflicts:
        result.errors.append(ConflictError(f"version(s) differ between the nodes: {', '.join(plan.conflicts)}",
                                           dataset=plan.path, path=f"v{plan.conflicts[0]}"))
    if plan.error is not None:
        result.errors.append(plan.error)
    return plan


def _execute(plan: DatasetPlan, src, sman: DatasetManifest, session, options: Options, events: Events,
             result: RunResult, staged: tuple[str, ...] = ()) -> None:
    """Run the publish protocol for one dataset's plan."""
    drs = plan.path
    dman = session.manifest
    events.start(drs, len(plan.files_to_send), plan.bytes_to_send)
    try:
        local = isinstance(src, LocalNode) and isinstance(session, LocalDestination)
        link = src.linker(drs) if options.link and local else None
        new = [(v, sman.entries(v)) for v in plan.versions_to_add]
        if hasattr(session, "stage") and not staged:  # (staged early: _stage_early)
            session.stage(new)  # the receiver builds the links while the files arrive
        got = session.receive(list(plan.files_to_send), src, drs, link)
        result.transferred.files += got.files
        result.transferred.bytes += got.bytes
        versions = dict(dman.index.versions)
        added = []
        for v, entries in new:
            if sman.sizes_only:  # SFTP fallback source: the receiver knows the digests now
                entries = session.resolve_digests(entries)
                versions[v] = mf.version_info(entries)
            else:
                versions[v] = sman.index.versions[v]
            added.append((v, entries))
        for v in plan.delete_versions:
            versions.pop(v, None)
        latest = plan.new_latest if plan.new_latest is not None else dman.index.latest
        loose = {k: x for k, x in dman.index.loose.items() if k[0].rpartition("_")[2] not in versions}
        session.publish(added, plan.new_latest, plan.delete_versions, plan.delete_files,
                        mf.Index(latest, versions, loose))
    finally:
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
