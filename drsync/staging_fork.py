"""A big version's links made by a forked child beside this process (Receiver.stage_forked): on a
local push or pull, and on the agent of a push over ssh (agent/server.py, from the dest_stage
message's bytes).

The links of one new version LARGE (29,000) are most of a local push's CPU, and made by a thread
they share the interpreter lock with the files being copied: each waits for the other's Python
between its system calls (docs/performance.md, sessions 23 and 24). A child forked before the
version's entry list is parsed reads and checks that list itself, on the core the parent's own
parse leaves idle, then makes the links with an interpreter of its own. Once its files are in, the
parent takes tasks too: before it makes any link the child writes one ticket per task (the task's
index, 4 bytes, in writes of at most PIPE_BUF, each atomic) into a pipe, and each process claims
the next task by reading one ticket, until the pipe is empty and closed.

What the child does, and never does:
- it uses the stored entry list only when it matches the index digest the parent's own list is
  checked against (same digest, same entries, same task list: staging.link_tasks depends on
  nothing else), and declines (exits) otherwise; on the agent, both parse the same message, named
  by its hash;
- it writes only in ``staging/v<version>``, never visible (DESIGN §4), by the same tasks as
  staging.Staging, with the same readlink check before a link is shared;
- it shares the dataset's lock (the flock's open file, inherited) and stops at its next task once
  its parent has gone, so a next run never finds it still at work in staging;
- it reports nothing but its exit status, and holds none of the parent's streams (its stdin,
  stdout and stderr are /dev/null: an agent's ssh channel ends with the agent). Whatever stops it
  (an error, a kill), the parent builds the version itself when it publishes, as for a version not
  staged early, and so meets any real error (a full disk) itself, with its own message and exit
  code;
- it takes no lock another thread of the parent may hold (a file read, json, os calls only) and
  leaves by os._exit: no atexit handler or buffered output of the parent's runs twice.
"""

from __future__ import annotations

import os
import select
import signal

from .fsutil import Dir
from .staging import link_tasks

# A version with at least this many links is staged by a forked child; smaller ones by Staging's
# thread (measured on one new version LARGE, 29,000 links: docs/performance.md, session 24).
FORK_LINKS = 20000

_TICKET = 4  # bytes per task index in the ticket pipe


class ForkedStaging:
    """staging.Staging's contract for one version whose links a forked child makes: ``wait`` helps,
    then returns the versions built whole (none when the child did not finish), or raises what
    stopped this process's own share. ``load``, called in the child only: the version's entries as
    stored, checked against ``digest`` (the index's), or None."""

    def __init__(self, staging: Dir, version: str, digest: str, load, drs: str, published: Dir | None):
        self.staging, self.version, self.digest, self.drs, self.published = staging, version, digest, drs, published
        self.entries = None  # this process's own entries of the version (attach), for its share
        rd, wr = os.pipe()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(rd)
            os.close(wr)
            raise
        if pid == 0:
            _child(rd, wr, parent, staging, version, load, drs, published)  # never returns
        os.close(wr)
        self.pid, self.tickets = pid, rd

    def attach(self, version: str, entries, digest: str) -> bool:
        """This process's entries of ``version`` (validated; ``digest``: the index digest they match),
        for taking tasks in ``wait``. False, and nothing attached, when they are not the child's."""
        if version != self.version or digest != self.digest:
            return False
        self.entries = entries
        return True

    def wait(self, cancel: bool) -> set[str]:
        """Take tasks until none is left (without ``cancel``), then reap the child."""
        dirs: list[Dir] = []
        status = None
        try:
            if cancel or self.entries is None:
                os.kill(self.pid, signal.SIGKILL)
            else:  # the tasks made at the first ticket: the child made the version's directory before
                _take_tasks(self.tickets, lambda: list(link_tasks(
                    self.staging, [(self.version, self.entries)], self.drs, dirs, self.published, fresh=False)))
        except BaseException:
            os.kill(self.pid, signal.SIGKILL)
            raise
        finally:
            for d in dirs:
                d.close()
            os.close(self.tickets)
            try:
                status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): its status is lost
                pass
        whole = not cancel and self.entries is not None and status is not None and os.waitstatus_to_exitcode(status) == 0
        return {self.version} if whole else set()


def _child(rd: int, wr: int, parent: int, staging: Dir, version: str, load, drs: str,
           published: Dir | None) -> None:
    code = 1
    try:
        # nothing to say, and no stream of the parent's to hold open (an agent's ssh channel, a
        # pipe someone reads to its end) should the parent die first
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        entries = load()
        if entries is not None:
            tasks = list(link_tasks(staging, [(version, entries)], drs, [], published))
            tickets = b"".join([i.to_bytes(_TICKET, "little") for i in range(len(tasks))])
            step = select.PIPE_BUF - select.PIPE_BUF % _TICKET
            for at in range(0, len(tickets), step):  # (past 64 KiB of tickets, waits for the parent)
                os.write(wr, tickets[at:at + step])
            os.close(wr)
            # the parent gone: stop, leave staging as it is (the next run, once the lock is free, clears it)
            code = 0 if _take_tasks(rd, lambda: tasks, lambda: os.getppid() == parent) else 1
    except BaseException:  # noqa: BLE001 - the exit status says it; the parent builds the version
        pass
    finally:
        os._exit(code)


def _take_tasks(tickets: int, make_tasks, go_on=None) -> bool:
    """Claim tasks one ticket at a time from the pipe ``tickets`` and run them, until it is closed and
    empty (True: every task is taken) or ``go_on()`` says to stop (False). ``make_tasks``: the task
    list, asked for at the first ticket."""
    tasks = None
    while True:
        ticket = os.read(tickets, _TICKET)
        if len(ticket) < _TICKET:
            return True
        if go_on is not None and not go_on():
            return False
        if tasks is None:
            tasks = make_tasks()
        tasks[int.from_bytes(ticket, "little")]()
