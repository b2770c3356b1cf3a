"""The mirror jobs file: parse and check ``jobs.toml`` into frozen ``Job`` values.

Every mistake is a ``UsageError`` (exit 2) whose message names the file, the job and the key, so
a cron mail says exactly which line to fix. Relative local paths (nodes, ``log``,
``metrics_dir``, ``state_dir``) are taken relative to the jobs file's directory: cron and systemd
run from ``/``, not from where the file was written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

from ..rate import parse_rate  # noqa: F401  (re-exported for the jobs file)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import DrsyncError, UsageError
from ..plan import Options
from ..retry import DEFAULT_RETRIES
from ..sync import check_timeout, check_version_option, is_remote

JOB_KEYS = ("source", "destination", "datasets", "exclude", "options", "log", "metrics_dir", "retries")
OPTION_KEYS = ("jobs", "bwlimit", "delete", "up_to", "checksum", "link", "fsync", "ssh_backend", "accept_new",
               "drsync_path", "state_dir", "timeout")
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Job:
    """One named job: what to replicate from where to where, and how."""

    name: str
    source: str
    destination: str
    datasets: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    options: Options = field(default_factory=Options)  # datasets/exclude already filled in
    log: str | None = None
    metrics_dir: str | None = None
    retries: int = DEFAULT_RETRIES

    @property
    def command(self) -> str:
        """``pull`` when the source is remote and the destination local, ``push`` otherwise."""
        return "pull" if is_remote(self.source) and not is_remote(self.destination) else "push"

    @property
    def local_destination(self) -> str | None:
        """The destination path when it is on this machine (it gets the node lock), else None."""
        return None if is_remote(self.destination) else self.destination

    def library_options(self, *, wait: bool = True, dry_run: bool = False) -> Options:
        # retries=0: the runner retries the whole job (``retries``), one budget, not two nested ones
        return replace(self.options, wait=wait, dry_run=dry_run, retries=0)


@dataclass(frozen=True)
class JobsFile:
    path: str
    jobs: tuple[Job, ...]

    def select(self, names: list[str] | tuple[str, ...] | None) -> tuple[Job, ...]:
        """The jobs called ``names`` (all when empty), in the file's order; an unknown name is exit 2."""
        if not names:
            return self.jobs
        known = {j.name for j in self.jobs}
        for n in names:
            if n not in known:
                raise UsageError(f"no job named {n!r} (jobs: {', '.join(sorted(known)) or 'none'})", path=self.path)
        return tuple(j for j in self.jobs if j.name in names)


def parse_duration(text: str) -> float:
    """``--every``: ``30s``, ``10m``, ``1h``, ``1d`` (a bare number is seconds)."""
    m = _DURATION.fullmatch(str(text).strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"not a duration: {text!r} (try 30s, 10m, 1h or 1d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


class _Where:
    """Builds the UsageError for one table of the file: ``<file>: [jobs.NAME] key: problem``."""

    def __init__(self, path: str, table: str):
        self.path = path
        self.table = table

    def error(self, key: str | None, problem: str) -> UsageError:
        where = f"[{self.table}] {key}" if key else f"[{self.table}]"
        return UsageError(f"{self.path}: {where}: {problem}", path=self.path)


def load_jobs(path: str) -> JobsFile:
    """Read and check a jobs file. Raises UsageError (exit 2) naming file, job and key."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"{path}: jobs file not found", path=path) from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read jobs file: {e.strerror}", path=path) from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}", path=path) from None
    return parse_jobs(doc, path)


def parse_jobs(doc: dict, path: str) -> JobsFile:
    """Check a parsed TOML document (``path`` only names it in messages and anchors relative paths)."""
    base = os.path.dirname(os.path.abspath(path))
    top = _Where(path, "top level")
    for key in doc:
        if key not in ("defaults", "jobs"):
            raise top.error(key, "unknown key (expected [defaults] and [jobs.NAME] tables)")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise top.error("defaults", "must be a table")
    dwhere = _Where(path, "defaults")
    _check_keys(defaults, dwhere)
    jobs_table = doc.get("jobs", {})
    if not isinstance(jobs_table, dict) or not jobs_table:
        raise top.error("jobs", "no jobs: add at least one [jobs.NAME] table")
    jobs = []
    for name, table in jobs_table.items():
        where = _Where(path, f"jobs.{name}")
        if not _JOB_NAME.fullmatch(name):
            raise where.error(None, "a job name may hold only letters, digits, '_', '.' and '-'")
        if not isinstance(table, dict):
            raise where.error(None, "must be a table")
        _check_keys(table, where)
        jobs.append(_job(name, defaults, table, where, dwhere, base))
    return JobsFile(path, tuple(jobs))


def _check_keys(table: dict, where: _Where) -> None:
    for key, value in table.items():
        if key not in JOB_KEYS:
            raise where.error(key, f"unknown key (known: {', '.join(JOB_KEYS)})")
        if key == "options":
            if not isinstance(value, dict):
                raise where.error("options", "must be a table, e.g. options = { jobs = 4, bwlimit = \"20M\" }")
            for k in value:
                if k not in OPTION_KEYS:
                    raise where.error(f"options.{k}", f"unknown option (known: {', '.join(OPTION_KEYS)})")


def _job(name: str, defaults: dict, table: dict, where: _Where, dwhere: _Where, base: str) -> Job:
    def get(key: str):
        """(value, where it came from): the job's own value wins over [defaults]."""
        if key in table:
            return table[key], where
        return defaults.get(key), dwhere

    values = {}
    for key in ("source", "destination"):
        v, w = get(key)
        if v is None:
            raise where.error(key, "missing (a node: PATH or [user@]host[:port]:PATH)")
        if not isinstance(v, str) or not v:
            raise w.error(key, "must be a non-empty string")
        values[key] = v if is_remote(v) else _local(v, base)
    if is_remote(values["source"]) and is_remote(values["destination"]):
        raise where.error("destination", "source and destination are both remote; one side must be local")
    for key in ("datasets", "exclude"):
        v, w = get(key)
        if v is None:
            values[key] = ()
        elif not isinstance(v, list) or not all(isinstance(g, str) and g for g in v):
            raise w.error(key, "must be a list of globs over DRS paths, e.g. [\"CMIP6/CMIP/*\"]")
        else:
            values[key] = tuple(v)
    for key in ("log", "metrics_dir"):
        v, w = get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise w.error(key, "must be a path")
        values[key] = _local(v, base) if v else None
    retries, w = get("retries")
    if retries is None:
        retries = DEFAULT_RETRIES
    elif isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise w.error("retries", f"must be a whole number >= 0, not {retries!r}")
    opts = Options(datasets=values["datasets"], exclude=values["exclude"])
    merged = {k: (v, dwhere) for k, v in (defaults.get("options") or {}).items()}
    merged.update({k: (v, where) for k, v in (table.get("options") or {}).items()})
    for key, (value, w) in merged.items():
        opts = _option(opts, key, value, w, base)
    return Job(name=name, source=values["source"], destination=values["destination"], datasets=values["datasets"],
               exclude=values["exclude"], options=opts, log=values["log"], metrics_dir=values["metrics_dir"],
               retries=retries)


def _option(opts: Options, key: str, value: object, w: _Where, base: str) -> Options:
    k = f"options.{key}"
    if key in ("delete", "checksum", "link", "fsync", "accept_new"):
        if not isinstance(value, bool):
            raise w.error(k, f"must be true or false, not {value!r}")
        return replace(opts, **{key: value})
    if key == "jobs":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise w.error(k, f"must be a whole number >= 1, not {value!r}")
        return replace(opts, jobs=value)
    if key == "bwlimit":
        try:
            return replace(opts, bwlimit=parse_rate(value))
        except ValueError as e:
            raise w.error(k, str(e)) from None
    if key == "up_to":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise w.error(k, f"must be a version such as \"20100101\", not {value!r}")
        try:
            return replace(opts, up_to=check_version_option(str(value)))
        except DrsyncError:
            raise w.error(k, f"must be a version such as \"20100101\" or \"v20100101\", not {value!r}") from None
    if key == "ssh_backend":
        if value not in ("asyncssh", "paramiko"):
            raise w.error(k, f"must be \"asyncssh\" or \"paramiko\", not {value!r}")
        return replace(opts, ssh_backend=value)
    if key == "timeout":
        try:
            return replace(opts, timeout=check_timeout(value))
        except DrsyncError as e:
            raise w.error(k, e.message) from None
    if key in ("drsync_path", "state_dir"):
        if not isinstance(value, str) or not value:
            raise w.error(k, "must be a non-empty string")
        return replace(opts, **{key: _local(value, base) if key == "state_dir" else value})
    raise w.error(k, "unknown option")  # pragma: no cover - _check_keys rejects it first


def _local(path: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))
