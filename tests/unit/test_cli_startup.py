"""What the command line does to start and stop fast: one subcommand's parser instead of all of
them, and an exit that skips the interpreter's teardown but not stdio, atexit hooks or threads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drsync import cli

ARGVS = [
    ["push", "-q", "--no-progress", "--dataset", "a/*", "--up-to", "v20200101", "src", "host:/dst"],
    ["pull", "--retries", "0", "--timeout", "0", "--ssh-backend", "paramiko", "h:/a", "b"],
    ["diff", "--json", "--delete", "--checksum", "a", "b"],
    ["verify", "--checksum", "-v", "p"],
    ["scan", "--json", "p"],
    ["demo", "d"],
    ["mirror", "jobs.toml", "--job", "x", "--no-wait"],
]


@pytest.mark.parametrize("argv", ARGVS, ids=lambda a: a[0])
def test_one_subcommand_parser_parses_like_the_whole(argv):
    assert cli.build_parser(argv[0]).parse_args(argv) == cli.build_parser().parse_args(argv)


def test_an_unknown_command_still_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["pus", "a", "b"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for name in cli.COMMANDS:
        assert repr(name) in err


LEAVE = r"""
import atexit, sys, threading, time
from drsync import cli
atexit.register(lambda: open(sys.argv[1] + ".atexit", "w").write("ran"))
if sys.argv[2] == "thread":
    def late():
        time.sleep(0.3)
        open(sys.argv[1] + ".thread", "w").write("ran")
    threading.Thread(target=late).start()
sys.stdout.write("x" * 1_000_000 + "\nend\n")  # left in the buffer: leave() must flush it
sys.stderr.write("warned\n")
cli.leave(3)
"""


@pytest.mark.parametrize("mode", ["alone", "thread"])
def test_leave_flushes_stdio_runs_atexit_and_waits_for_threads(tmp_path, mode):
    mark = str(tmp_path / "m")
    r = subprocess.run([sys.executable, "-c", LEAVE, mark, mode], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert r.stdout == "x" * 1_000_000 + "\nend\n"
    assert r.stderr == "warned\n"
    assert open(mark + ".atexit").read() == "ran"
    if mode == "thread":
        assert open(mark + ".thread").read() == "ran"


FREEZE = r"""
import gc, sys
from drsync import cli
seen = {}
real = cli.COMMANDS["diff"]
def spy(args):  # what the command finds when it starts
    seen["frozen"] = gc.get_freeze_count()
    seen["ssh library"] = "asyncssh" in sys.modules
    seen["collecting"] = gc.isenabled()
    return 0
cli.COMMANDS["diff"] = spy
cli.main(["diff", "-q", sys.argv[1], "host:/b"], freeze=sys.argv[2] == "yes")
print(seen["frozen"] > 0, seen["ssh library"], seen["collecting"], gc.isenabled())
"""


@pytest.mark.parametrize("freeze", ["yes", "no"])
def test_the_executable_freezes_its_imports_ssh_library_included(tmp_path, freeze):
    """run() (the `drsync` executable) calls main(freeze=True): everything imported, the SSH library
    of a run over ssh included, is out of the collector's sight before the command starts, and the
    collector, off while those imports ran, is on again for the command. A library caller's main()
    leaves the collector alone."""
    r = subprocess.run([sys.executable, "-c", FREEZE, str(tmp_path), freeze], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(freeze == "yes"), "True", "True", "True"]


def test_parsing_a_command_line_does_not_ask_shutil(monkeypatch):
    """argparse asks shutil for the terminal width whenever it builds a formatter (once per option);
    drsync's formatter asks the terminal itself, sparing every run shutil's import (with bz2 and
    lzma). Same answer as shutil: $COLUMNS first."""
    import shutil

    from drsync import cli_args

    monkeypatch.setenv("COLUMNS", "57")
    assert cli_args._columns() == shutil.get_terminal_size().columns == 57
    import argparse

    assert cli_args._Formatter("drsync")._width == argparse.HelpFormatter("drsync")._width == 55
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a: pytest.fail("asked shutil"))
    for argv in ARGVS:
        cli.build_parser(argv[0]).parse_args(argv)
    assert cli.build_parser().format_help().startswith("usage: drsync [-h] [--version] COMMAND")


def test_the_agent_does_not_load_the_argument_grammar():
    """`drsync agent` starts on every run over ssh: it is served without building a parser, and
    without importing cli_args (argparse and the help texts) or dataclasses at all."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "drsync", "agent"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith("DRSYNC-AGENT/")
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "drsync.agent.server" in imported
    assert "drsync.cli_args" not in imported
    assert "dataclasses" not in imported  # nor dataclasses (inspect, ast, dis): tests/unit/test_records.py
    assert "queue" not in imported and "mmap" not in imported  # directio's, loaded when a big file comes


NO_TLS = r"""
import sys
from drsync import cli
seen = {}
def spy(args):  # what the command finds when it starts
    import asyncio.base_events
    seen["asyncssh"] = "asyncssh" in sys.modules
    seen["asyncio has tls"] = asyncio.base_events.ssl is not None
    seen["ssl blocked"] = "ssl" in sys.modules and sys.modules["ssl"] is None
    import ssl  # the block was lifted: a later import works
    seen["ssl importable"] = hasattr(ssl, "SSLContext")
    return 0
cli.COMMANDS["diff"] = spy
cli.main(["diff", "-q", sys.argv[1], "host:/b"], freeze=sys.argv[2] == "yes")
print(seen["asyncssh"], seen["asyncio has tls"], seen["ssl blocked"], seen["ssl importable"])
"""


@pytest.mark.parametrize("freeze", ["yes", "no"])
def test_the_executable_loads_asyncio_without_tls(tmp_path, freeze):
    """The `drsync` executable imports asyncssh with the ssl module blocked (asyncio's TLS, of no use
    over SSH, costs OpenSSL's initialisation), lifts the block afterwards, and a library caller's
    asyncio keeps its TLS."""
    r = subprocess.run([sys.executable, "-c", NO_TLS, str(tmp_path), freeze], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", str(freeze == "no"), "False", "True"]


QUIET_IMPORT = r"""
from drsync.transports.ssh_asyncssh import import_asyncssh
asyncssh = import_asyncssh()
import warnings
warnings.warn("drsync's own warnings still show", UserWarning)
print(asyncssh.__name__)
"""


def test_asyncssh_loads_without_cryptography_deprecation_noise():
    """cryptography 51 warns as soon as asyncssh names its DSA classes at import time; drsync keeps
    those warnings (asyncssh's, which a user cannot act on) off stderr, where its one-line errors go,
    even with every warning shown (-W always). Other warnings are left alone."""
    r = subprocess.run([sys.executable, "-W", "always", "-c", QUIET_IMPORT], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "asyncssh"
    assert "Cryptography" not in r.stderr and "DSA" not in r.stderr, r.stderr
    assert "drsync's own warnings still show" in r.stderr
