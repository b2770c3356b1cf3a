"""The agent never holds a destination's lock for a client that went silent (FAULTS F6).

A client whose link stalls gives up after its ``--timeout`` and reconnects. sshd may not notice the
dead TCP connection for a long time (no ClientAliveInterval, a black-holed route), and the old
agent would keep the destination's lock meanwhile, so the retry would wait for it, forever in the
worst case. The client therefore tells the agent its timeout in the handshake; while the agent
holds a destination session and waits for the client's bytes (a client with a session open is
streaming files to it, never silent for long), it waits at most twice that. Then it gives the
session up (the lock is released; partial files stay for the resume) and exits.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable

from .protocol import PeerClosed

MARGIN = 2  # the agent waits this many client timeouts: the client gives up first


def client_timeout(hello: dict) -> float | None:
    """The client's --timeout from its handshake message (None: an older client, or 0)."""
    t = hello.get("timeout")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        return None
    return float(t)


class GuardedInput:
    """``read(n)`` on a file descriptor that waits at most ``limit()`` seconds (None: forever);
    once a wait ran out, every later read fails at once."""

    def __init__(self, fd: int, limit: Callable[[], float | None] = lambda: None):
        self.fd = fd
        self.limit = limit
        self.gone: str | None = None

    def read(self, n: int) -> bytes:
        self._wait()
        return os.read(self.fd, n)

    def readinto(self, view: memoryview) -> int:
        self._wait()
        return os.readv(self.fd, [view])

    def _wait(self) -> None:
        if self.gone:
            raise PeerClosed(self.gone)
        limit = self.limit()
        if limit is not None and not select.select([self.fd], [], [], limit)[0]:
            self.gone = (f"the client sent nothing for {limit:g} s while this agent held a destination's "
                         "lock: giving the lock up")
            raise PeerClosed(self.gone)
