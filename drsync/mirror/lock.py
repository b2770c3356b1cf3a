"""The node lock of a mirror job over a local destination: ``<destination>/.drsync-mirror.lock``.

The library already locks each destination dataset while it writes it; this lock covers a whole
job so that two overlapping mirror runs of one destination never interleave their datasets. It is
a ``flock``: the kernel drops it when the holder exits or is killed, so it is never stale and never
needs removing (removing a flocked file would let a waiter lock a dead inode). The file names its
holder (host, pid, since, job) for the message the second run prints.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time

from ..errors import DestinationIOError, LockedError, UnsafeInputError
from ..events import Events

LOCK_NAME = ".drsync-mirror.lock"


class NodeLock:
    """An exclusive flock on ``<destination>/.drsync-mirror.lock``; use as a context manager."""

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path

    @classmethod
    def acquire(cls, destination: str, *, job: str, wait: bool, poll: float = 0.2,
                events: Events | None = None) -> NodeLock:
        path = os.path.join(destination, LOCK_NAME)
        try:
            os.makedirs(destination, exist_ok=True)
            # O_NOFOLLOW: never lock (or create) through a planted symlink; O_NONBLOCK: a planted
            # FIFO must not hang the open; it is refused just below.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeInputError("unsafe destination: the mirror lock is a symlink", path=path) from None
            raise DestinationIOError(f"cannot open the mirror lock: {e.strerror}", path=path) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeInputError("unsafe destination: the mirror lock is not a regular file", path=path)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = describe_holder(os.pread(fd, 1024, 0))
                if not wait:
                    os.close(fd)
                    raise LockedError(f"destination {destination} is locked by another mirror run ({holder})",
                                      path=path) from None
                if not told and events is not None:
                    events.info(f"job {job}: waiting for the mirror lock of {destination} ({holder})")
                    told = True
                time.sleep(poll)
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "job": job,
                             "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode() + b"\n", 0)
        return cls(fd, path)

    def release(self) -> None:
        if self.fd >= 0:
            try:
                os.ftruncate(self.fd, 0)
            finally:
                os.close(self.fd)  # closing drops the flock
                self.fd = -1

    def __enter__(self) -> NodeLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def describe_holder(raw: bytes) -> str:
    """``host h, pid 123, job j, since 2024-...`` from the lock file's contents."""
    try:
        h = json.loads(raw.decode("utf-8", "replace") or "{}")
        return f"host {h['host']}, pid {h['pid']}, job {h.get('job', '?')}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
