"""Shared pieces of the SFTP fallback: pipelined requests over one SFTPClient, and how SFTP
failures map to drsync's errors (a lost connection is exit 5)."""

from __future__ import annotations

import socket

from ..errors import ConnectionLost

try:
    from paramiko import SSHException as _SSHException
except ImportError:  # pragma: no cover - paramiko is a dependency
    class _SSHException(Exception):
        pass

CHUNK = 256 << 10
WINDOW = 64  # requests in flight when pipelining readlink / symlink


def _lost(host: str, e: BaseException) -> ConnectionLost:
    return ConnectionLost(f"connection to {host} lost: {str(e) or type(e).__name__}")


def _is_conn_error(e: BaseException, sftp) -> bool:
    """A lost connection (exit 5), as opposed to an SFTP status error (which paramiko raises as a
    plain IOError, sometimes without an errno): decided by the transport, not the exception type."""
    import paramiko

    if isinstance(e, (EOFError, paramiko.SSHException, socket.timeout)):
        return True
    try:
        return not sftp.get_channel().get_transport().is_active()
    except (AttributeError, OSError):
        return True


class _Collector:
    """Receives the replies of pipelined requests (paramiko calls ``_async_response``)."""

    def __init__(self):
        self.got: dict[int, tuple[int, object]] = {}

    def _async_response(self, t, msg, num):
        self.got[num] = (t, msg)


def _pipelined(sftp, requests: list[tuple]) -> list[tuple[int, object]]:
    """Send ``(CMD, *args)`` requests with up to WINDOW in flight on one SFTPClient (one thread) and
    return their replies in order. Uses paramiko's request machinery, as its own prefetch does."""
    col = _Collector()
    nums: list[int] = []
    pending = 0
    i = 0
    while i < len(requests) or pending:
        while i < len(requests) and pending < WINDOW:
            cmd, *args = requests[i]
            nums.append(sftp._async_request(col, cmd, *args))
            pending += 1
            i += 1
        before = len(col.got)
        sftp._read_response()
        pending -= len(col.got) - before
    return [col.got[n] for n in nums]


def _check(sftp, reply) -> object:
    from paramiko.sftp import CMD_STATUS

    t, msg = reply
    if t == CMD_STATUS:
        sftp._convert_status(msg)  # raises IOError for anything but OK
    return msg



def _throttle(rate: int | None):
    from .remote import _Throttle

    return _Throttle(rate)

