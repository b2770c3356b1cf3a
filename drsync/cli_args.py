"""The `drsync` command line's grammar: every subcommand, option and help text (argparse).

cli.py runs the commands; this module only describes them. A run builds just the subcommand it
names (``build_parser(only)``); ``drsync --help`` and an unknown command get the whole parser.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .errors import EXIT_CODES, EXIT_INTERRUPTED, DrsyncError
from .options import Options, check_timeout
from .retry import DEFAULT_RETRIES

DEFAULT_TIMEOUT = Options._field_defaults["timeout"]

EXIT_TABLE = "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items()) + \
    f"\n  {EXIT_INTERRUPTED} interrupted (SIGINT/SIGTERM); the next run resumes"

NODE_HELP = "a node is PATH (local) or [user@]host[:port]:PATH (ssh); it may be a node root or one dataset"



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


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's help layout, told the terminal width up front: argparse's own default asks
    shutil.get_terminal_size, and importing shutil (with bz2 and lzma) costs every run ~3 ms, since
    argparse builds a formatter for each option it adds, help or not."""

    def __init__(self, prog: str, **kwargs) -> None:
        if kwargs.get("width") is None:
            kwargs["width"] = _columns() - 2
        super().__init__(prog, **kwargs)


def _columns() -> int:
    """shutil.get_terminal_size().columns: $COLUMNS, else the terminal on stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


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
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"drsync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = _Formatter

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
                                       "not for interactive use.", formatter_class=fmt)

    if want("demo"):
        p = sub.add_parser("demo", help="build the shipped example and replicate it, printing each step",
                           description="Build node A (the thetao example at two versions), diff and push to node "
                                       "B, add a third version, diff and push again, then verify.",
                           formatter_class=fmt)
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
