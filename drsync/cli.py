"""The `drsync` command line: one small function per command over the library API.

This module and its grammar (cli_args.py) are the only ones that parse arguments, print, draw progress
bars and turn errors into exit codes (DESIGN §6).
"""

from __future__ import annotations

import json
import os
import sys

from .errors import EXIT_INTERRUPTED, DrsyncError, UsageError, escape
from .events import Events
from .options import Options
from .transports.spec import is_remote


def build_parser(only: str | None = None):
    """The argument grammar (cli_args.build_parser), imported when a command line is parsed: the
    remote agent, started by every run over ssh, needs none of it (argparse and the help texts,
    ~4 ms)."""
    from .cli_args import build_parser as build

    return build(only)


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


def _options(args):
    """Options from a parsed command line: each option the command has, under the name it has in
    Options (the rest keep Options' defaults)."""
    from .sync import check_version_option

    given = {k: v for k, v in vars(args).items() if k in Options._fields}
    given.update(up_to=check_version_option(given.get("up_to")), datasets=tuple(args.dataset),
                 exclude=tuple(args.exclude))
    return Options(**given)


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
    import tempfile

    from .demo import run_demo

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


def _import_ssh_library(backend: str) -> None:
    """Import the SSH library a run over ssh is about to use now, so that _freeze_imports covers it."""
    if backend == "paramiko":
        import paramiko  # noqa: F401
    elif backend == "asyncssh":
        from .transports.ssh_asyncssh import import_asyncssh

        import_asyncssh()


TRANSFERS = ("diff", "push", "pull")


def _connect_early(args) -> None:
    """Start connecting to the remote node of a push, pull or diff now (ssh.prepare_channel),
    before the planning and publishing machinery is imported (_import_transfer): those imports,
    and then the local source's listing, run while the handshake, the remote login shell and the
    agent's start-up keep the connection busy. The run's own connect takes the channel over."""
    remote = [spec for spec in (args.source, args.destination) if is_remote(spec)]
    if len(remote) != 1:  # two remote nodes: the run refuses them
        _import_ssh_library(args.ssh_backend)
        return
    from .transports import preconnect, ssh

    # sshd's accept and start-up overlap the import of the SSH library that prepare_channel does
    preconnect.start(remote[0], backend=args.ssh_backend, timeout=args.timeout, config=ssh.config_path())
    ssh.prepare_channel(remote[0], backend=args.ssh_backend, drsync_path=args.drsync_path,
                       accept_new=args.accept_new, timeout=args.timeout)


# How long the command line lets the connection it started have the interpreter to itself (see
# _give_way_to_handshake); on loopback or a LAN the handshake takes ~0.05 s.
HANDSHAKE_HEAD_START = 0.2


def _give_way_to_handshake() -> None:
    """Wait until the early channel's remote command is started (at most HANDSHAKE_HEAD_START), then
    import the planning machinery and read the local source. Both threads need the interpreter: run
    beside the handshake, that work made it 10-20 ms slower (one new version SMALL over ssh,
    docs/performance.md), while the remote login shell and the agent's start-up that follow leave this
    process idle for longer than the work takes."""
    from .transports import ssh

    ssh.wait_prepared(HANDSHAKE_HEAD_START)


def _ssh_library_without_tls(backend: str, executable: bool):
    """Let asyncio load without the ssl module while the `drsync` executable imports asyncssh.
    asyncio imports ssl only to offer TLS, which a run over SSH never uses, and importing it
    initialises OpenSSL (~3 ms, ~160 pages of fresh memory). Blocked the documented way (None in
    sys.modules) for the import alone, then lifted, so that a later ``import ssl`` works; asyncio
    in this process then has no TLS. Library callers' processes are left alone (main(freeze))."""
    import contextlib

    if not executable or backend != "asyncssh" or "asyncio" in sys.modules or "ssl" in sys.modules:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def blocked():
        sys.modules["ssl"] = None
        try:
            yield
        finally:
            if sys.modules.get("ssl", 0) is None:
                del sys.modules["ssl"]

    return blocked()


def _import_transfer() -> None:
    """What a push, pull or diff runs on, imported before the freeze. While a connection is being
    made meanwhile, the interpreter switches threads every 0.2 ms, not 5 ms: the connecting thread
    needs it only for moments (a packet to answer), but would wait a whole interval each time."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, 0.0002))
    try:
        from . import report, sync  # noqa: F401
    finally:
        sys.setswitchinterval(interval)


def _freeze_imports(collecting: bool) -> None:
    """Move everything imported so far out of the garbage collector's sight (gc.freeze): modules,
    classes and functions live until the process exits, yet each full collection would walk them
    all again. After importing an SSH library (some 100,000 objects) a full collection costs ~10 ms,
    and a run's allocations trigger several. The collector is off while those imports run (main()),
    which spares the collections the imports themselves trigger (~10 ms on a run over ssh), and back
    on from here when it was on before (``collecting``). Only the `drsync` executable does this,
    once: a library caller's objects are not drsync's to freeze."""
    import gc

    gc.freeze()
    if collecting:
        gc.enable()


def _quiet_library_logs() -> None:
    """asyncio and the SSH libraries log through `logging` (asyncio: "socket.send() raised
    exception." after a reset); with no handler Python prints those to stderr. A failure reaches
    the user as one `drsync: error:` line instead."""
    import logging

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def main(argv: list[str] | None = None, *, freeze: bool = False) -> int:
    """Run one command; ``freeze`` (the `drsync` executable, run()): see _freeze_imports."""
    argv = sys.argv[1:] if argv is None else argv
    if freeze:
        import gc

        collecting = gc.isenabled()
        gc.disable()  # until _freeze_imports
    if argv == ["agent"]:
        command, args = cmd_agent, None  # the remote half, started per connection: no parser to build
        from .agent import server  # noqa: F401  (imported before the freeze)
    else:
        args = build_parser(argv[0] if argv and argv[0] in COMMANDS else None).parse_args(argv)
        command = COMMANDS[args.command]
        if args.command == "mirror" or any(isinstance(v, str) and is_remote(v) for v in vars(args).values()):
            _quiet_library_logs()  # only runs that may use an SSH library pay for importing logging
            backend = getattr(args, "ssh_backend", "asyncssh")
            if args.command in TRANSFERS:
                with _ssh_library_without_tls(backend, freeze):
                    _connect_early(args)
                _give_way_to_handshake()
            elif args.command != "mirror":
                with _ssh_library_without_tls(backend, freeze):
                    _import_ssh_library(backend)
        if args.command in TRANSFERS:
            _import_transfer()
    if freeze:
        _freeze_imports(collecting)
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
    finally:
        ssh = sys.modules.get("drsync.transports.ssh")
        if ssh is not None:
            ssh.discard_prepared()
        early = sys.modules.get("drsync.transports.preconnect")
        if early is not None:
            early.discard()


def run() -> None:
    import signal

    # SIGTERM stops like SIGINT: at the next Python instruction, with the lock released.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from . import fdtable, leftovers

    fdtable.reserve()  # before any thread starts: then growing the table waits for nothing

    leftovers.keeping = True  # what is still referenced at leave() is never freed one by one
    leave(main(freeze=True))


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
