"""Write back what others left dirty on the destination's filesystem while the files arrive.

A receiver makes its batches durable with ``syncfs``, and syncfs writes back everything dirty on the
filesystem, not only drsync's files: the output of a tool that does not flush (an `rsync -a` or
`cp -a` a minute before), a job writing beside the node. Measured here with 380 new small files
(one SMALL version): syncfs took 8 ms on a clean filesystem, 30 ms after an `rsync -a` of one
version, 62-75 ms after a `cp -a` of a 23 MiB dataset. That work is owed whatever drsync does, but it
need not wait for the files: ``start`` begins it on a background thread as soon as a run knows it
will publish, so it overlaps the transfer, and the receiver's own flush later finds little left.

It is only an earlier start, never a promise: nothing is trusted to be durable because of it. It
flushes through a descriptor of its own (opened afresh, not dup'ed), because the kernel reports a
writeback error once per open file: the receiver's own ``syncfs`` must still see an EIO (FAULTS E3).
"""

from __future__ import annotations

import contextlib
import os
import threading

from .fsutil import Dir

_running: dict[int, threading.Thread] = {}  # st_dev -> the background writeback in flight there
_lock = threading.Lock()


def start(d: Dir) -> threading.Thread | None:
    """Start a background ``syncfs`` of the filesystem holding ``d``, unless one is still running
    there (datasets published one after another, a mirror's workers); the thread, to join once
    the receiver's own flush is done, or None."""
    try:
        dev = os.fstat(d.fd).st_dev
        with _lock:
            t = _running.get(dev)
            if t is not None and t.is_alive():
                return None
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=d.fd)  # a new open file
            own = Dir(fd, d.path)
            t = threading.Thread(target=_flush, args=(own,), name="drsync-writeback", daemon=True)
            try:
                t.start()
            except RuntimeError:  # no thread to be had: the receiver's own flush does it all
                own.close()
                return None
            _running[dev] = t
    except OSError:
        return None  # the receiver's own flush will say what is wrong
    return t


def _flush(d: Dir) -> None:
    # an error here is for the receiver's own flush to report, on its own descriptor
    with d, contextlib.suppress(OSError):
        d.syncfs()
