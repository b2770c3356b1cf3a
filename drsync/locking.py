"""One exclusive lock primitive: an ``flock`` on a file that names its holder.

The kernel drops an flock when its holder exits or is killed, so a lock left by a killed run is
never stale (FAULTS G2) and the file is never removed (removing a locked file would let a waiter
lock a dead inode). The file records host, pid and start time for the message a second run prints.
Used per destination dataset (``<state>/lock``) and per mirror destination node.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Callable

from .errors import DestinationIOError, LockedError, UnsafeInputError


def describe_holder(raw: bytes) -> str:
    """``host h, pid 123, job j, since 2024-...`` from a lock file's contents."""
    try:
        h = json.loads(raw.decode("utf-8", "replace") or "{}")
        job = f", job {h['job']}" if "job" in h else ""
        return f"host {h['host']}, pid {h['pid']}{job}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


class Lock:
    """An exclusive flock on ``name`` in the directory ``dir_fd``; use as a context manager."""

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def acquire(cls, dir_fd: int, name: str, *, path: str, what: str, wait: bool, poll: float = 0.2,
                dataset: str | None = None, record: dict | None = None,
                on_wait: Callable[[str], None] | None = None) -> Lock:
        """Take the lock, waiting (``wait``) or raising LockedError (exit 7) naming the holder.

        ``path`` and ``what`` ("destination", ...) are for messages; ``record`` adds fields to what
        the file says about the holder; ``on_wait`` is told once that the run is waiting."""
        try:
            # O_NOFOLLOW: never lock (or create) through a planted symlink; O_NONBLOCK: a planted
            # FIFO must not hang the open; it is refused just below.
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600,
                         dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeInputError(f"unsafe destination: the {what} lock is a symlink", dataset=dataset,
                                       path=path) from None
            raise DestinationIOError(f"cannot open the {what} lock: {e.strerror}", dataset=dataset,
                                     path=path) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeInputError(f"unsafe destination: the {what} lock is not a regular file", dataset=dataset,
                                   path=path)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = describe_holder(os.pread(fd, 1024, 0))
                if not wait:
                    os.close(fd)
                    raise LockedError(f"{what} is locked by {holder}", dataset=dataset, path=path) from None
                if not told and on_wait is not None:
                    on_wait(holder)
                    told = True
                time.sleep(poll)
        doc = {"host": os.uname().nodename, "pid": os.getpid(), **(record or {}),
               "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(doc).encode() + b"\n", 0)
        return cls(fd)

    def release(self) -> None:
        if self.fd >= 0:
            try:
                os.ftruncate(self.fd, 0)
            finally:
                os.close(self.fd)  # closing drops the flock
                self.fd = -1

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
