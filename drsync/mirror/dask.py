"""Fan mirror jobs out over a Dask distributed cluster: one task per (job, dataset).

Each task makes the same library call as a serial run, narrowed to one exact dataset
(``Options(datasets=(path,))``), with the same retries; the destination's per-dataset lock
(``.drsync/lock``, or the remote agent's) serialises tasks and other runs that touch the same
dataset. The submitting process holds each local destination's node lock for the whole fan-out,
so a serial mirror run of the same destination never interleaves with it. Results come back to
the submitting process, which writes the run log and metrics exactly as a serial run does.
Dask does the scheduling; there is none here.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import time
from dataclasses import replace

from .. import sync
from ..errors import DrsyncError
from ..events import Events, Recorder
from ..retry import Retries
from .jobs import Job
from .lock import NodeLock
from .runner import JobRun, Outcome, call_with_retries, finish, library_call, summarize


def list_datasets(job: Job) -> tuple[tuple[str, ...], Outcome | None]:
    """(the job's selected DRS paths, None), or ((), the failure). Runs on a worker."""
    budget = Retries(job.retries, Events(), f"job {job.name}")
    start = time.time()
    while True:
        try:
            node = sync.open_node(job.source, job.options, Events())
            try:
                found = node.datasets()
            finally:
                node.close()
            chosen = tuple(p for p in found
                           if (not job.datasets or any(fnmatch.fnmatchcase(p, g) for g in job.datasets))
                           and not any(fnmatch.fnmatchcase(p, g) for g in job.exclude))
            return chosen, None
        except DrsyncError as e:
            if not budget.again(e):
                return (), Outcome(exit_code=e.exit_code, errors=(e.line(),), attempts=budget.attempts, start=start,
                                   end=time.time())


def mirror_dataset(job: Job, drs: str, wait: bool) -> Outcome:
    """One (job, dataset) task: the job's library call on exactly ``drs``. Runs on a worker."""
    events = Recorder()
    # glob.escape: the selection is a glob, and a DRS path may hold '[' or '*'.
    outcome = call_with_retries(library_call(job, wait=wait, events=events, datasets=(glob.escape(drs),)),
                                retries=job.retries, what=f"job {job.name}: {drs}", events=events)
    return replace(outcome, warnings=tuple(events.warnings))


def _client(scheduler):
    """A ``distributed.Client`` for ``tcp://HOST:PORT``, or the client given; (client, ours)."""
    if isinstance(scheduler, str):
        from distributed import Client

        return Client(scheduler), True
    return scheduler, False


def run_jobs_dask(jobs: tuple[Job, ...] | list[Job], scheduler, *, wait: bool = True, events: Events | None = None,
                  on_run=None) -> list[JobRun]:
    """Run each job once over the cluster; returns one JobRun per job (also logged and exported)."""
    events = events or Events()
    client, ours = _client(scheduler)
    locks: dict[str, NodeLock] = {}
    failed: dict[str, Outcome] = {}
    try:
        starts = {}
        for job in jobs:
            starts[job.name] = time.time()
            dest = job.local_destination
            if dest is not None and os.path.realpath(dest) not in locks:
                try:
                    locks[os.path.realpath(dest)] = NodeLock.acquire(dest, job=job.name, wait=wait, events=events)
                except DrsyncError as e:
                    failed[job.name] = Outcome(exit_code=e.exit_code, errors=(e.line(),), start=time.time(),
                                               end=time.time())
        todo = [j for j in jobs if j.name not in failed]
        listings = client.gather([client.submit(list_datasets, j, pure=False) for j in todo])
        tasks: dict[str, list] = {}
        for job, (paths, error) in zip(todo, listings):
            if error is not None:
                failed[job.name] = error
                continue
            if not paths:
                events.warning(f"job {job.name}: no dataset matches its datasets/exclude globs; nothing to do")
            tasks[job.name] = [client.submit(mirror_dataset, job, p, wait, pure=False) for p in paths]
        runs = []
        for job in jobs:
            if job.name in failed:
                outcomes = [failed[job.name]]
            else:
                outcomes = client.gather(tasks[job.name])
            for o in outcomes:
                for w in o.warnings:
                    events.warning(w)
            run = finish(job, summarize(job, outcomes, starts[job.name],
                                        max((o.end for o in outcomes), default=time.time())))
            if on_run is not None:
                on_run(run)
            runs.append(run)
        return runs
    finally:
        for lock in locks.values():
            lock.release()
        if ours:
            client.close()
