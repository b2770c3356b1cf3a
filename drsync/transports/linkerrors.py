"""Which SSH failures are a lost link (retried) and which are permanent, and the line naming each.

A link that was refused, reset, closed under a transfer or went silent is a ``ConnectionLost``:
trying again later may work, and the retry resumes from the partial files. A host key that is
unknown, changed or revoked, a failed authentication, an SSH peer drsync cannot agree with
(versions, algorithms) or a host name that does not exist is a plain ``ConnectionFailure``:
permanent, never retried (FAULTS F9: no retry storm against a server that said no).
"""

from __future__ import annotations

import errno
import socket

from ..errors import ConnectionFailure, ConnectionLost

# errno values of a network that failed rather than refused us for good
_TRANSIENT_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
                               errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
                               errno.EHOSTDOWN, errno.ENETRESET})


def text(e: BaseException) -> str:
    """An exception as words (some, like paramiko's closed-socket errors, have none)."""
    return str(e) or type(e).__name__


def is_transient(e: BaseException) -> bool:
    """True for a failure of the network itself (worth a retry), judged by the exception or, for
    an SSH library error that wraps one, by what it wraps."""
    seen = 0
    while e is not None and seen < 5:
        if _transient(e):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _transient(e: BaseException) -> bool:
    if isinstance(e, socket.gaierror):
        return e.errno == socket.EAI_AGAIN  # a name server that did not answer, not an unknown name
    if isinstance(e, (ConnectionError, TimeoutError, EOFError)):
        return True
    if isinstance(e, OSError):
        return e.errno in _TRANSIENT_ERRNOS
    try:
        import asyncssh
    except ImportError:  # pragma: no cover - a dependency
        return False
    return isinstance(e, asyncssh.ConnectionLost)


def connect_failure(host: str, port: int, e: BaseException) -> ConnectionFailure:
    """Connecting failed (before any agent ran): retryable only if the network failed."""
    cls = ConnectionLost if is_transient(e) else ConnectionFailure
    return cls(f"cannot connect to {host}:{port}: {text(e)}")


def lost(host: str, e: BaseException | None = None, *, stalled: float | None = None) -> ConnectionLost:
    """The link died under a run: reset, closed, or (``stalled``) silent for that many seconds."""
    if stalled:
        return ConnectionLost(f"connection to {host} stalled: no answer from the server for {stalled:g} s "
                              f"(--timeout {stalled:g})")
    return ConnectionLost(f"connection to {host} lost: {text(e) if e is not None else 'closed'}")
