"""The `drsync` command line: one small function per command over the library API.

This is the only module that parses arguments, prints, draws progress bars and turns errors into
exit codes (DESIGN §6).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .errors import EXIT_CODES, DrsyncError, UsageError, escape
from .events import Events
from .plan import Options
from .retry import DEFAULT_RETRIES
from .sync import is_remote

DEFAULT_TIMEOUT = Options.timeout

EXIT_INTERRUPTED = 20

EXIT_TABLE = "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items()) + \
    f"\n  {EXIT_INTERRUPTED} interrupted (SIGINT/SIGTERM); the next run resumes"

NODE_HELP = "a node is PATH (local) or [user@]host[:port]:PATH (ssh); it may be a node root or one dataset"


class CliEvents(Events):
    """Warnings to stderr, info at -v, a tqdm byte bar with --progress."""

    def __init__(self, verbose: int, quiet: bool, progress: bool):
        self.verbose = verbose
        self.quiet = quiet
        self.progress = progress
        self.bar = None
        self.warned: set[str] = set()

    def warning(self, message: str) -> None:
        if message not in self.warned and not self.quiet:
            self.warned.add(message)
            print(f"drsync: warning: {escape(message)}", file=sys.stderr)

    def info(self, message: str) -> None:
        if self.verbose:
            print(f"drsync: {escape(message)}", file=sys.stderr)

    def start(self, dataset: str, files: int, nbytes: int) -> None:
        if self.progress and nbytes:
            from tqdm import tqdm

            self.bar = tqdm(total=nbytes, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=escape(dataset)[-40:], file=sys.stderr, leave=False)

    def advance(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def file_done(self, dataset: str, relpath: str) -> None:
        if self.verbose > 1:
            print(f"drsync: {escape(dataset)}: {escape(relpath)}", file=sys.stderr)

    def finish(self, dataset: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def parse_rate(text: str) -> int:
    """``--bwlimit`` as rsync reads it: a number of KiB/s, or with a K/M/G suffix."""
    from .rate import parse_rate as parse

    try:
        return parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _retries(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"want a whole number >= 0, not {text!r}")
    return n


def _timeout(text: str) -> float:
    from .sync import check_timeout

    try:
        return check_timeout(float(text))
    except (ValueError, DrsyncError):
        raise argparse.ArgumentTypeError(f"want seconds: 0 (never) or from 1 to 86400, not {text!r}") from None


def _common(p: argparse.ArgumentParser, *, transfer: bool) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr (repeat for more)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (" + ("drsync-report/1" if transfer else
                                                              "drsync-verify/1 or drsync-scan/1") + ")")
    p.add_argument("--dataset", action="append", default=[], metavar="GLOB",
                   help="only datasets whose DRS path matches GLOB (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip datasets whose DRS path matches GLOB (repeatable)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="keep drsync's state (manifest, partial files, staging) in DIR instead of "
                        "DATASET/.drsync; must be on the destination's filesystem")
    if not transfer:
        return
    p.add_argument("--up-to", metavar="V", help="replicate versions up to V only (e.g. 20100101)")
    p.add_argument("--delete", action="store_true",
                   help="remove versions only the destination has, and the files only they use")
    p.add_argument("--checksum", action="store_true", help="re-read every byte when checking (slow)")
    p.add_argument("--link", action="store_true", help="hard-link files instead of copying (same filesystem)")
    p.add_argument("--no-fsync", dest="fsync", action="store_false",
                   help="do not flush to disk (scratch copies only: not safe against power loss)")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="exit 7 instead of waiting when another run holds the destination's lock")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="reserved for parallel SSH channels; files already stream "
                   "back to back over one channel, so N is currently capped at 1")
    p.add_argument("--bwlimit", type=parse_rate, metavar="RATE", help="limit bandwidth, e.g. 20M (ssh)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: on when stderr is a terminal)")
    _ssh(p)


def _ssh(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ssh")
    g.add_argument("--ssh-backend", choices=("asyncssh", "paramiko"), default="asyncssh",
                   help="SSH library to use (default asyncssh)")
    g.add_argument("--accept-new", action="store_true",
                   help="record an unknown host key in known_hosts (never a changed one), like OpenSSH's "
                        "StrictHostKeyChecking=accept-new")
    g.add_argument("--drsync-path", default="drsync", metavar="CMD",
                   help="the drsync command on the remote node (default: drsync), like rsync's --rsync-path")
    g.add_argument("--retries", type=_retries, default=DEFAULT_RETRIES, metavar="N",
                   help="after a lost connection (refused, reset, dropped, or silent for --timeout), "
                        "reconnect and go on where the run stopped (finished datasets are skipped, partial "
                        "files resumed), at most N times per run, waiting 1-2 s, 2-4 s, 4-8 s ... in between "
                        f"(default {DEFAULT_RETRIES}; 0: give up at once). Host-key, authentication and other "
                        "permanent failures are never retried")
    g.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="count the connection as lost when the server has sent nothing for SECONDS although "
                        "drsync asked (an ssh keepalive goes out after a quarter of that and sshd itself answers "
                        "it, so a busy remote never times out); connecting gives up after 20 s, or SECONDS if "
                        f"shorter (default {DEFAULT_TIMEOUT:g}; 0: never, and a stalled link can hang the run)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` the one subcommand a command line names (the others
    are not built: a run does not pay for parsers it does not use)."""

    def want(name: str) -> bool:
        return only is None or only == name

    parser = argparse.ArgumentParser(
        prog="drsync",
        description="Replicate versioned datasets in the drslib layout between nodes, moving only "
                    "the files/ directories the destination lacks and publishing each version whole.",
        epilog=f"{NODE_HELP}.\n\n{EXIT_TABLE}\n\nExample: drsync demo; drsync diff /data/a /data/b; "
               "drsync push /data/a /data/b",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"drsync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    if want("diff"):
        p = sub.add_parser("diff", help="show what a push would do (writes nothing; exit 1 if there is work)",
                           description="Compare SRC and DST manifests and print the plan. Writes nothing anywhere.",
                           epilog=EXIT_TABLE, formatter_class=fmt)
        p.add_argument("source", metavar="SRC", help=NODE_HELP)
        p.add_argument("destination", metavar="DST")
        _common(p, transfer=True)

    for name, verb in (("push", "send SRC's missing versions to DST"), ("pull", "fetch SRC's missing versions into local DST")):
        if not want(name):
            continue
        p = sub.add_parser(name, help=verb, description=f"{verb[0].upper()}{verb[1:]}: copy the missing files/ "
                           "directories, then publish each version whole and move `latest`.",
                           epilog=EXIT_TABLE, formatter_class=fmt)
        p.add_argument("source", metavar="SRC", help=NODE_HELP)
        p.add_argument("destination", metavar="DST")
        p.add_argument("-n", "--dry-run", action="store_true", help="print the plan and write nothing")
        _common(p, transfer=True)

    if want("verify"):
        p = sub.add_parser("verify", help="check a node's datasets (exit 1 on any finding)",
                           description="Report broken, escaping or non-canonical links, orphaned files, a wrong "
                                       "`latest`, crash leftovers and manifest mismatches.",
                           epilog=EXIT_TABLE, formatter_class=fmt)
        p.add_argument("path", metavar="PATH")
        p.add_argument("--checksum", action="store_true", help="re-read every byte and compare with the manifest")
        _common(p, transfer=False)

    if want("scan"):
        p = sub.add_parser("scan", help="refresh and print the manifest of each dataset",
                           description="Refresh the manifest (only versions not seen before are read) and print a "
                                       "summary; --json prints the whole manifest.", epilog=EXIT_TABLE,
                           formatter_class=fmt)
        p.add_argument("path", metavar="PATH")
        _common(p, transfer=False)

    if want("agent"):
        p = sub.add_parser("agent", help="(internal) the remote half, spoken to over ssh",
                           description="Serve one drsync client on stdin/stdout. Started by drsync over ssh; "
                                       "not for interactive use.")

    if want("demo"):
        p = sub.add_parser("demo", help="build the shipped example and replicate it, printing each step",
                           description="Build node A (the thetao example at two versions), diff and push to node "
                                       "B, add a third version, diff and push again, then verify.")
        p.add_argument("directory", nargs="?", metavar="DIR", help="where to build the nodes (default: a new temp dir)")

    if want("mirror"):
        p = sub.add_parser("mirror", help="run the jobs of a jobs.toml file (cron, systemd timer, --every, Dask)",
                           description="Run each named job of JOBS (source, destination, dataset globs, options) "
                                       "once, under a lock per destination, with retries on connection failures, "
                                       "a JSON-lines run log and Prometheus textfile metrics (docs/mirror.md). "
                                       "Exit code: the highest of the jobs'.", epilog=EXIT_TABLE, formatter_class=fmt)
        p.add_argument("jobs_file", metavar="JOBS", help="the jobs file (TOML)")
        p.add_argument("--job", action="append", default=[], metavar="NAME", help="run only job NAME (repeatable)")
        p.add_argument("--every", metavar="DURATION", help="keep running: start the jobs every DURATION (30s, 10m, 1h, 1d)")
        p.add_argument("-n", "--dry-run", action="store_true", help="print every job's plan and write nothing")
        p.add_argument("--no-wait", dest="wait", action="store_false",
                       help="exit 7 instead of waiting when another run holds a destination's lock")
        p.add_argument("--scheduler", metavar="ADDRESS",
                       help="fan out over a Dask distributed scheduler, e.g. tcp://HOST:8786 (one task per dataset)")
        p.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr")
        p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
        p.add_argument("--json", action="store_true", help="print one JSON object per job run on stdout")
    return parser


def _options(args):
    from .sync import check_version_option

    return Options(
        up_to=check_version_option(getattr(args, "up_to", None)),
        delete=getattr(args, "delete", False),
        checksum=getattr(args, "checksum", False),
        link=getattr(args, "link", False),
        fsync=getattr(args, "fsync", True),
        wait=getattr(args, "wait", True),
        dry_run=getattr(args, "dry_run", False),
        datasets=tuple(args.dataset),
        exclude=tuple(args.exclude),
        state_dir=args.state_dir,
        jobs=getattr(args, "jobs", 1),
        bwlimit=getattr(args, "bwlimit", None),
        ssh_backend=getattr(args, "ssh_backend", "asyncssh"),
        accept_new=getattr(args, "accept_new", False),
        drsync_path=getattr(args, "drsync_path", "drsync"),
        retries=getattr(args, "retries", DEFAULT_RETRIES),
        timeout=getattr(args, "timeout", DEFAULT_TIMEOUT),
    )


def _events(args) -> CliEvents:
    progress = getattr(args, "progress", None)
    if progress is None:
        progress = sys.stderr.isatty() and not args.quiet and not args.json
    return CliEvents(args.verbose, args.quiet, progress)


def _print_result(args, result) -> int:
    from .report import render_json, render_text

    if args.json:
        print(render_json(result))
    elif not args.quiet:
        print(render_text(result, verbose=args.verbose > 0))
        if result.dry_run and result.command != "diff":
            print("dry run: nothing was written")
    for e in result.errors:
        print(f"drsync: error: {e.line()}", file=sys.stderr)
    return result.exit_code


def cmd_transfer(args) -> int:
    from . import sync

    fn = {"diff": sync.diff, "push": sync.push, "pull": sync.pull}[args.command]
    return _print_result(args, fn(args.source, args.destination, _options(args), _events(args)))


def cmd_verify(args) -> int:
    from .verify import verify

    result = verify(args.path, checksum=args.checksum, state_dir=args.state_dir, datasets=tuple(args.dataset),
                    exclude=tuple(args.exclude))
    if args.json:
        print(json.dumps({"format": "drsync-verify/1", "path": result.path, "datasets": result.datasets,
                          "checked_files": result.checked_files,
                          "findings": [{"dataset": f.dataset, "path": f.path, "problem": f.problem}
                                       for f in result.findings]}, indent=2, ensure_ascii=True))
    else:
        for f in result.findings:
            print(f"{escape(f.dataset)}: {escape(f.path)}: {escape(f.problem)}")
        if not args.quiet:
            print(f"verify: {len(result.datasets)} dataset(s), {result.checked_files} link(s) checked, "
                  f"{len(result.findings)} problem(s)")
    return result.exit_code


def cmd_scan(args) -> int:
    from . import manifest as mf
    from .sync import scan

    mans = scan(args.path, _options(args), _events(args))
    if args.json:
        doc = {"format": "drsync-scan/1", "path": args.path, "datasets": [
            {"path": m.path, "index": mf.index_to_json(m.index),
             "versions": {v: mf.entries_to_json(v, m.entries(v))["entries"] for v in m.index.sorted_versions()}}
            for m in mans]}
        print(json.dumps(doc, indent=2, ensure_ascii=True))
    elif not args.quiet:
        from .report import human_bytes

        for m in mans:
            vs = m.index.sorted_versions()
            entries = sum(m.index.versions[v].entries for v in vs)
            print(f"{escape(m.path)}: {len(vs)} version(s) {', '.join(vs)}; latest {m.index.latest}; "
                  f"{entries} entries, {human_bytes(sum(m.index.versions[v].bytes for v in vs))} referenced")
        print(f"scan: {len(mans)} dataset(s)")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    import tempfile

    directory = args.directory or tempfile.mkdtemp(prefix="drsync-demo-")
    os.makedirs(directory, exist_ok=True)
    return run_demo(directory, print)


def cmd_mirror(args) -> int:
    from .mirror import jobs as mj
    from .mirror import runner

    jobs = mj.load_jobs(args.jobs_file).select(args.job)
    events = CliEvents(args.verbose, args.quiet, False)
    if args.dry_run:
        from .report import render_text, to_json

        worst = 0
        for job in jobs:
            result = runner.plan_job(job, events)
            if args.json:
                print(json.dumps({"job": job.name, "dry_run": True, "report": to_json(result)}, ensure_ascii=True))
            elif not args.quiet:
                print(f"job {escape(job.name)} ({job.command}):")
                print(render_text(result))
            for e in result.errors:
                print(f"drsync: error: job {escape(job.name)}: {e.line()}", file=sys.stderr)
            worst = max(worst, result.exit_code)
        return worst

    def show(run) -> None:
        if args.json:
            print(json.dumps(run.record(), ensure_ascii=True), flush=True)
        elif not args.quiet:
            print(f"job {escape(run.job)}: {run.status}, {run.versions} version(s), {run.files} file(s), "
                  f"{run.bytes} byte(s) in {run.end - run.start:.2f} s"
                  + (f" after {run.attempts} attempts" if run.attempts > 1 else ""), flush=True)
        for line in run.errors:
            print(f"drsync: error: job {escape(run.job)}: {line}", file=sys.stderr, flush=True)

    def one_round() -> int:
        if args.scheduler:
            from .mirror.dask import run_jobs_dask

            runs = run_jobs_dask(jobs, args.scheduler, wait=args.wait, events=events, on_run=show)
        else:
            runs = runner.run_jobs(jobs, wait=args.wait, events=events, on_run=show)
        return max((r.exit_code for r in runs), default=0)

    if args.every:
        runner.run_every(mj.parse_duration(args.every), one_round)
    return one_round()


def cmd_agent(args) -> int:
    from .agent.server import main as agent_main

    return agent_main()


COMMANDS = {"agent": cmd_agent, "diff": cmd_transfer, "push": cmd_transfer, "pull": cmd_transfer, "verify": cmd_verify,
            "scan": cmd_scan, "demo": cmd_demo, "mirror": cmd_mirror}


def _quiet_library_logs() -> None:
    """asyncio and the SSH libraries log through `logging` (asyncio: "socket.send() raised
    exception." after a reset); with no handler Python prints those to stderr. A failure reaches
    the user as one `drsync: error:` line instead."""
    import logging

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["agent"]:
        command, args = cmd_agent, None  # the remote half, started per connection: no parser to build
    else:
        args = build_parser(argv[0] if argv and argv[0] in COMMANDS else None).parse_args(argv)
        command = COMMANDS[args.command]
        if args.command == "mirror" or any(isinstance(v, str) and is_remote(v) for v in vars(args).values()):
            _quiet_library_logs()  # only runs that may use an SSH library pay for importing logging
    try:
        return command(args)
    except DrsyncError as e:
        print(f"drsync: error: {e.line()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("drsync: error: interrupted; the next run resumes where this one stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FileExistsError as e:
        print(f"drsync: error: {escape(e)}", file=sys.stderr)
        return UsageError.exit_code
    except OSError as e:
        print(f"drsync: error: {escape(e.strerror or e)} (path {escape(e.filename)})", file=sys.stderr)
        return 6


def run() -> None:
    import signal

    # SIGTERM stops like SIGINT: at the next Python instruction, with the lock released.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    leave(main())


def leave(code: int) -> None:
    """Exit the command-line process without the interpreter's teardown, which frees every module
    and object one by one (about 10 ms on each run, a sixth of a no-op push). Safe once main() has
    returned: every file drsync writes is closed (and fsynced) by then, so what is left is stdio,
    the atexit hooks (run here) and other threads (with one still alive, the normal exit waits)."""
    import atexit
    import threading

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)  # a closed pipe: the normal exit reports it
    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    os._exit(code)
