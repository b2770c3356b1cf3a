"""Big files written around the page cache (``O_DIRECT``).

A receiver writes each new file once and then flushes it to disk before publishing (DESIGN §4):
the page cache only holds the bytes until that flush, and filling it costs memory the kernel must
find first. On the benchmark VM that is the whole cost of a big copy: fresh page-cache pages cost
~2 s of CPU per GiB to touch, against ~0.2 s per GiB to read the source into a reused buffer. So
the chunks of a big file go from one reused, page-aligned buffer straight to the disk; only a
file's unaligned tail goes through the page cache. The flush that follows (``syncfs``) still makes
it all durable, metadata included. Where the filesystem refuses ``O_DIRECT`` (or an alignment it
needs is stricter than ALIGN), the file is written through the page cache as before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading

from .fsutil import pwrite_all

ALIGN = 4096  # offsets, lengths and buffer addresses of direct writes (any logical block size up to 4 KiB)
MIN_SIZE = 1 << 20  # smaller files stay in the page cache: a direct write waits for the disk


def aligned_buffer(size: int) -> memoryview:
    """A page-aligned, reusable buffer (anonymous memory is mapped at page boundaries)."""
    import mmap  # here, not at the top: the agent imports this module at start-up

    return memoryview(mmap.mmap(-1, size))


_local = threading.local()


def thread_buffers(size: int) -> tuple[memoryview, memoryview]:
    """Two aligned buffers of ``size`` bytes, the calling thread's own, reused from file to file
    (threads copying at the same time never share one)."""
    got = getattr(_local, "buffers", None)
    if got is None or len(got[0]) != size:
        got = _local.buffers = (aligned_buffer(size), aligned_buffer(size))
    return got


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for ``fd``; False where the filesystem refuses it."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        return False
    return True


class Writer:
    """``pwrite`` for one file of ``size`` bytes written from ``offset`` on, around the page cache
    while offsets and lengths allow it. ``write`` takes chunks from an aligned_buffer() in order;
    any other bytes (or a tail shorter than ALIGN) go through the page cache."""

    def __init__(self, fd: int, size: int, offset: int = 0):
        self.fd = fd
        self.direct = size >= MIN_SIZE and offset % ALIGN == 0 and _set_direct(fd, True)

    def write(self, data: memoryview, pos: int) -> None:
        if self.direct:
            n = len(data) - len(data) % ALIGN if pos % ALIGN == 0 else 0
            if n:
                try:
                    pwrite_all(self.fd, data[:n], pos)
                    data, pos = data[n:], pos + n
                except OSError as e:
                    if e.errno != errno.EINVAL:  # EINVAL: an alignment this filesystem refuses
                        raise
            if len(data):  # the rest goes through the page cache, and so does all that follows
                self.stop()
        if len(data):
            pwrite_all(self.fd, data, pos)

    def stop(self) -> None:
        """Back to writes through the page cache, for this write and the ones after it. (A file's
        last write needs no stop: the receiver only sets its mode and times, then closes it.)"""
        if self.direct:
            self.direct = False
            _set_direct(self.fd, False)


class WriteBehind:
    """A Writer's chunks written on a helper thread, one at a time, while the caller reads the next
    one into another buffer: the disk's time and the reading overlap. A context manager; a write's
    error is raised by the next ``write`` or ``wait``, or on leaving the block."""

    def __init__(self, out: Writer):
        from queue import SimpleQueue  # only a local copy of a big file needs it

        self.out = out
        self._jobs: SimpleQueue = SimpleQueue()
        self._done: SimpleQueue = SimpleQueue()
        self._pending = False
        self._thread = threading.Thread(target=self._run, name="drsync-write-behind", daemon=True)

    def __enter__(self) -> WriteBehind:
        self._thread.start()
        return self

    def __exit__(self, kind, value, tb) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            self._jobs.put(None)
            self._thread.join()

    def write(self, data: memoryview, pos: int) -> None:
        """Start writing ``data`` at ``pos`` once the previous chunk is written; ``data`` must stay
        unchanged until the write after it (or ``wait``) returns."""
        self.wait()
        self._jobs.put((data, pos))
        self._pending = True

    def wait(self) -> None:
        """Until the chunk in flight is written."""
        if self._pending:
            self._pending = False
            error = self._done.get()
            if error is not None:
                raise error

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self.out.write(*job)
            except BaseException as e:  # handed to the caller's thread
                self._done.put(e)
            else:
                self._done.put(None)
