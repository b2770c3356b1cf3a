"""The node lock of a mirror job over a local destination: ``<destination>/.drsync-mirror.lock``.

The library already locks each destination dataset while it writes it; this lock covers a whole
job so that two overlapping mirror runs of one destination never interleave their datasets. It is
the same flock primitive (`drsync.locking`): never stale, naming its holder (host, pid, job, since).
"""

from __future__ import annotations

import os

from ..errors import DestinationIOError
from ..events import Events
from ..locking import Lock, describe_holder  # noqa: F401  (describe_holder: re-exported)

LOCK_NAME = ".drsync-mirror.lock"


class NodeLock(Lock):
    """An exclusive flock on ``<destination>/.drsync-mirror.lock``; use as a context manager."""

    @classmethod
    def acquire(cls, destination: str, *, job: str, wait: bool, poll: float = 0.2,
                events: Events | None = None) -> NodeLock:
        path = os.path.join(destination, LOCK_NAME)
        try:
            os.makedirs(destination, exist_ok=True)
            dfd = os.open(destination, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise DestinationIOError(f"cannot open the destination: {e.strerror}", path=destination) from None
        try:
            on_wait = (lambda holder: events.info(f"job {job}: waiting for the mirror lock of {destination} "
                                                  f"({holder})")) if events is not None else None
            lock = Lock.acquire(dfd, LOCK_NAME, path=path, what=f"destination {destination} (another mirror run)",
                                wait=wait, poll=poll, record={"job": job}, on_wait=on_wait)
        finally:
            os.close(dfd)
        return cls(lock.fd)
