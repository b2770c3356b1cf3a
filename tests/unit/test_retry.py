"""The retry policy (drsync.retry) and which failures count as a lost link (transports.linkerrors)."""

from __future__ import annotations

import errno
import random
import socket

import asyncssh
import paramiko
import pytest

from drsync import cli
from drsync.errors import ConflictError, ConnectionFailure, ConnectionLost, DestinationIOError
from drsync.events import Recorder
from drsync.retry import Retries, backoff
from drsync.transports.linkerrors import connect_failure, is_transient, lost


def test_a_lost_connection_is_retried_within_the_budget_with_growing_waits():
    waits: list[float] = []
    events = Recorder()
    budget = Retries(3, events, "job x", sleep=waits.append, rng=random.Random(1))
    assert [budget.again(ConnectionLost("reset")) for _ in range(4)] == [True, True, True, False]
    assert budget.attempts == 4 and len(waits) == 3
    assert 1 <= waits[0] <= 2 and 2 <= waits[1] <= 4 and 4 <= waits[2] <= 8
    assert [w.split("; ")[1].split(" in ")[0] for w in events.warnings] == \
        ["retry 1 of 3", "retry 2 of 3", "retry 3 of 3"]
    assert all(w.startswith("job x: reset") for w in events.warnings)


@pytest.mark.parametrize("error", [ConnectionFailure("host key mismatch"), ConflictError("differs"),
                                   DestinationIOError("No space left on device")])
def test_a_permanent_failure_is_never_retried(error):
    waits: list[float] = []
    budget = Retries(5, Recorder(), sleep=waits.append)
    assert not budget.again(error)
    assert not budget.again([ConnectionLost("reset"), error])  # one permanent error decides
    assert waits == [] and budget.attempts == 1


def test_no_retries_means_one_attempt():
    assert not Retries(0, Recorder(), sleep=lambda s: None).again(ConnectionLost("reset"))


def test_backoff_is_capped():
    rng = random.Random(0)
    assert all(150 <= backoff(n, rng) <= 300 for n in range(10, 20))


def _wrapped(outer: Exception, inner: Exception) -> Exception:
    """``outer`` raised while handling ``inner``, as paramiko wraps a reset banner read."""
    outer.__context__ = inner
    return outer


@pytest.mark.parametrize("error,transient", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
    (ConnectionResetError(errno.ECONNRESET, "reset"), True),
    (TimeoutError("timed out"), True),
    (EOFError(), True),
    (OSError(errno.EHOSTUNREACH, "no route"), True),
    (socket.gaierror(socket.EAI_AGAIN, "try again"), True),
    (socket.gaierror(socket.EAI_NONAME, "unknown host"), False),
    (OSError(errno.EACCES, "denied"), False),
    (asyncssh.ConnectionLost("Connection lost"), True),
    (asyncssh.PermissionDenied("no"), False),
    (asyncssh.HostKeyNotVerifiable("no"), False),
    (asyncssh.ProtocolNotSupported("SSH-1.5"), False),
    (asyncssh.KeyExchangeFailed("no common algorithm"), False),
    (paramiko.AuthenticationException("no"), False),
    (paramiko.SSHException("Incompatible ssh peer"), False),
    (_wrapped(paramiko.SSHException("Error reading SSH protocol banner"), ConnectionResetError(104, "reset")), True),
])
def test_transient_or_permanent(error, transient):
    assert is_transient(error) is transient
    got = connect_failure("h", 22, error)
    assert isinstance(got, ConnectionFailure) and got.retryable is transient
    assert got.exit_code == 5 and got.line().startswith("cannot connect to h:22: ")


def test_lost_names_a_stall_and_a_wordless_error():
    assert lost("h", OSError()).line() == "connection to h lost: OSError"
    stalled = lost("h", stalled=3)
    assert stalled.retryable and "stalled" in stalled.line() and "--timeout 3" in stalled.line()


@pytest.mark.parametrize("flags", [["--retries", "-1"], ["--retries", "two"], ["--timeout", "0.5"],
                                   ["--timeout", "-3"], ["--timeout", "inf"], ["--timeout", "nan"]])
def test_bad_retries_or_timeout_is_a_usage_error(flags, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["push", *flags, "a", "b"])
    assert e.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_retries_and_timeout_reach_the_options():
    args = cli.build_parser().parse_args(["pull", "--retries", "0", "--timeout", "0", "h:/a", "b"])
    o = cli._options(args)
    assert (o.retries, o.timeout) == (0, 0.0)
    o = cli._options(cli.build_parser().parse_args(["push", "a", "b"]))
    assert (o.retries, o.timeout) == (3, 60.0)
