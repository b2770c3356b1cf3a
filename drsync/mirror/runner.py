"""Run mirror jobs: one library push/pull per job under the node lock, with retries on connection
failures, then one run-log line and a metrics update per job run.

Only a lost connection is retried (drsync.retry: exponential backoff and jitter): a refused host
key or login, a conflict, unsafe input, an I/O or integrity error would fail the same way again,
and a retry must never hide one of them. A run whose errors are all lost connections is retried as
a whole; the datasets that already made it are no-ops the second time (the plan finds nothing to
do), and partial files are resumed. The library call itself is made with ``retries=0``
(Job.library_options), so that the job's ``retries`` is the one budget.
"""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .. import sync
from ..errors import DestinationIOError, DrsyncError
from ..events import Events
from ..retry import Retries, backoff, retryable  # noqa: F401  (backoff, retryable: re-exported)
from . import metrics, runlog
from .jobs import Job
from .lock import NodeLock


@dataclass(frozen=True)
class Outcome:
    """What one library call (a whole job, or one dataset of it on a Dask worker) did."""

    exit_code: int
    versions: int = 0
    files: int = 0
    bytes: int = 0
    errors: tuple[str, ...] = ()  # one line each, worst first
    attempts: int = 1
    start: float = 0.0
    end: float = 0.0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobRun:
    """One job run, as the run log records it."""

    job: str
    start: float
    end: float
    exit_code: int
    versions: int = 0
    files: int = 0
    bytes: int = 0
    error: str | None = None
    attempts: int = 1
    errors: tuple[str, ...] = field(default=(), compare=False)

    @property
    def status(self) -> str:
        return "ok" if self.exit_code == 0 else "error"

    def record(self) -> dict:
        """The run-log object (DESIGN §7 field names)."""
        return {"job": self.job, "start": iso(self.start), "end": iso(self.end), "status": self.status,
                "exit_code": self.exit_code, "versions": self.versions, "files": self.files, "bytes": self.bytes,
                "error": self.error, "attempts": self.attempts}


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def call_with_retries(call: Callable[[], sync.RunResult], *, retries: int, what: str, events: Events,
                      sleep: Callable[[float], None] | None = None, rng: random.Random | None = None) -> Outcome:
    """Run ``call`` (a library push/pull) until it succeeds, fails for a reason other than a lost
    connection, or has been retried ``retries`` times. Returns the last attempt's outcome."""
    budget = Retries(retries, events, what, sleep=sleep, rng=rng)
    start = time.time()
    while True:
        result = None
        try:
            result = call()
            errors = list(result.errors)
        except DrsyncError as e:
            errors = [e]
        except OSError as e:
            errors = [DestinationIOError(f"{e.strerror or e}", path=e.filename)]
        if not budget.again(errors):
            return _outcome(result, errors, budget.attempts, start)


def _outcome(result: sync.RunResult | None, errors: list[DrsyncError], attempts: int, start: float) -> Outcome:
    errors = sorted(errors, key=lambda e: -e.exit_code)
    versions = files = nbytes = 0
    if result is not None:
        versions = sum(len(d.versions_to_add) for d in result.plan.datasets if d.error is None and not d.conflicts)
        if result.transferred is not None:
            files, nbytes = result.transferred.files, result.transferred.bytes
    return Outcome(exit_code=max((e.exit_code for e in errors), default=0), versions=versions, files=files,
                   bytes=nbytes, errors=tuple(e.line() for e in errors), attempts=attempts, start=start,
                   end=time.time())


def library_call(job: Job, *, wait: bool, events: Events, datasets: tuple[str, ...] | None = None,
                 dry_run: bool = False) -> Callable[[], sync.RunResult]:
    """The one library call a job makes: push, or pull when the source is remote and the
    destination local; ``datasets`` narrows it (one exact dataset per Dask task)."""
    options = job.library_options(wait=wait, dry_run=dry_run)
    if datasets is not None:
        options = replace(options, datasets=datasets)
    fn = sync.pull if job.command == "pull" else sync.push
    return lambda: fn(job.source, job.destination, options, events)


def plan_job(job: Job, events: Events | None = None) -> sync.RunResult:
    """``--dry-run``: the job's plan; writes nothing anywhere (no lock, no log, no metrics)."""
    return library_call(job, wait=True, events=events or Events(), dry_run=True)()


def summarize(job: Job, outcomes: list[Outcome], start: float, end: float | None = None) -> JobRun:
    """Fold the outcomes of a job (one serial call, or one per dataset) into its run record."""
    exit_code = max((o.exit_code for o in outcomes), default=0)
    worst = [line for o in sorted(outcomes, key=lambda o: -o.exit_code) for line in o.errors]
    error = None
    if worst:
        error = worst[0] + (f" (and {len(worst) - 1} more error(s))" if len(worst) > 1 else "")
    return JobRun(job=job.name, start=start, end=end if end is not None else max((o.end for o in outcomes),
                                                                                  default=time.time()),
                  exit_code=exit_code, versions=sum(o.versions for o in outcomes),
                  files=sum(o.files for o in outcomes), bytes=sum(o.bytes for o in outcomes), error=error,
                  attempts=max((o.attempts for o in outcomes), default=1), errors=tuple(worst))


def finish(job: Job, run: JobRun) -> JobRun:
    """Write the run's log line and metrics (each only when the job asks for it)."""
    if job.log:
        runlog.append_record(job.log, run.record())
    if job.metrics_dir:
        metrics.record_run(job.metrics_dir, job.name, end=run.end, duration=run.end - run.start,
                           exit_code=run.exit_code, versions=run.versions, files=run.files, nbytes=run.bytes)
    return run


def run_job(job: Job, *, wait: bool = True, events: Events | None = None,
            sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> JobRun:
    """Run one job once: node lock (local destination), the library call with retries, log, metrics."""
    events = events or Events()
    start = time.time()
    lock = None
    try:
        if job.local_destination is not None:
            lock = NodeLock.acquire(job.local_destination, job=job.name, wait=wait, events=events)
        outcome = call_with_retries(library_call(job, wait=wait, events=events), retries=job.retries,
                                    what=f"job {job.name}", events=events, sleep=sleep, rng=rng)
    except DrsyncError as e:  # the node lock: busy (exit 7) or unsafe
        outcome = Outcome(exit_code=e.exit_code, errors=(e.line(),), start=start, end=time.time())
    finally:
        if lock is not None:
            lock.release()
    return finish(job, summarize(job, [outcome], start))


def run_jobs(jobs: tuple[Job, ...] | list[Job], *, wait: bool = True, events: Events | None = None,
             on_run: Callable[[JobRun], None] | None = None, **kw) -> list[JobRun]:
    """Run each job once, one after the other (``on_run`` sees each record as it is made)."""
    runs = []
    for job in jobs:
        run = run_job(job, wait=wait, events=events, **kw)
        if on_run is not None:
            on_run(run)
        runs.append(run)
    return runs


def run_every(interval: float, run_round: Callable[[], object], *, rounds: int | None = None,
              sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> int:
    """``--every``: call ``run_round`` now and then every ``interval`` seconds from the previous
    start (a round longer than the interval starts the next one at once, never two at a time).
    Returns the number of rounds made when ``rounds`` is given; runs until interrupted otherwise."""
    made = 0
    while rounds is None or made < rounds:
        began = clock()
        run_round()
        made += 1
        if rounds is not None and made >= rounds:
            break
        sleep(max(0.0, began + interval - clock()))
    return made
