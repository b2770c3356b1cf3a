"""Room in the process's descriptor table, made before a run needs it.

A receiver holds a batch of partial files open at once (receive_files.BATCH_FILES: 256), beside its
directories, pipes and sockets. The kernel grows a process's descriptor table by doubling (64, 128,
256, 512, ...), and in a process with more than one thread each growth waits for an RCU grace period
(``expand_fdtable`` calls ``synchronize_rcu`` when the table is shared). On this VM: 8-18 ms each, 30-41
ms for the three growths of one new version SMALL over ssh, the agent's main thread asleep in
``openat -> alloc_fd -> expand_files -> synchronize_rcu`` while its staging thread ran (traced with
``perf record -e sched:sched_switch -g``; docs/performance.md, session 17). Growing the table once, to
its final size, while the process has one thread costs a few microseconds and no grace period.

``reserve`` does that once per process: the `drsync` executable calls it before any thread starts (the
client and the remote agent alike), a library run at its start (a caller's process may have threads
by then: one grace period at most, instead of one per doubling). The table is only made larger; no
descriptor is left open and none is moved.
"""

from __future__ import annotations

import os

ROOM = 1024  # descriptors: the batch of partial files, their directories, a source's reads, the rest
_reserved = False


def reserve(room: int = ROOM) -> int:
    """Grow the descriptor table to ``room`` slots now (or to the soft RLIMIT_NOFILE, if that is
    lower), once per process. Returns the descriptor number the table now reaches (it was
    duplicated to, then closed), 0 if nothing was done."""
    global _reserved
    if _reserved:
        return 0
    _reserved = True
    import fcntl

    try:
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        want = room - 1
        while want >= 64:
            try:
                # the lowest free descriptor >= want: never one in use (dup2 would close it)
                got = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, want)
            except OSError:  # EINVAL: want is at or above RLIMIT_NOFILE; EMFILE: nothing free above it
                want = (want + 1) // 2 - 1
                continue
            os.close(got)
            return got
        return 0
    finally:
        os.close(fd)
