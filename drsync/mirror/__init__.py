"""Mirror jobs (DESIGN §7): a TOML file of named source -> destination jobs, run once, on a timer
(``--every``) or fanned out over a Dask cluster, with a node lock, retries on connection
failures, a JSON-lines run log and Prometheus textfile metrics.

    from drsync.mirror import load_jobs, run_jobs
    jobs = load_jobs("/etc/drsync/jobs.toml")
    runs = run_jobs(jobs.jobs)                 # one JobRun per job; also logged and exported
"""

from __future__ import annotations

from .jobs import Job, JobsFile, load_jobs, parse_duration
from .runner import JobRun, plan_job, run_every, run_job, run_jobs

__all__ = ["Job", "JobRun", "JobsFile", "load_jobs", "parse_duration", "plan_job", "run_every", "run_job",
           "run_jobs"]
