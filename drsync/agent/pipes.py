"""A wider stdin pipe between sshd and the agent.

sshd runs the agent with pipes for its stdin and stdout, and a Linux pipe holds 64 KiB. A pushed
file's bytes cross the stdin pipe: sshd decrypts a packet, writes it, and stops whenever the pipe is
full until the agent has read; the agent reads at most what the pipe holds per call (the protocol
asks for up to 4 MiB). At 64 KiB the two take turns 16 times per megabyte, each a wake-up of the
other on a machine whose cores the client and sshd are also using. The agent widens its stdin
pipe to 1 MiB (``F_SETPIPE_SZ``; the reader may do that, and 1 MiB is /proc/sys/fs/pipe-max-size's
default, the most an unprivileged user may ask for). Push of 384 MiB of big files over ssh, same-run
A/Bs (docs/performance.md, session 22): 1.70 s -> 1.31 s median with stdout widened too; stdin alone,
by width, in one run: 64 KiB 1.54 s, 256 KiB 1.29 s, 1 MiB 1.19 s, 4 MiB 1.51 s. Its stdout (what a pull streams out) is left at 64 KiB:
widened to 1 MiB, a pull of the same files took 1.02 s -> 1.12 s.

Only an optimisation: where the descriptor is not a pipe (a socket, a terminal) or the kernel refuses,
the pipe stays as it is and nothing is reported. An unprivileged user is refused above pipe-max-size
and past /proc/sys/fs/pipe-user-pages-soft (16,384 pages by default; a widened pipe counts 256). A user
at that limit gets new pipes of two pages (8 KiB) instead of 64 KiB, so a widening that leaves the user
less room than one more widened pipe is undone: many agents of one user (a mirror's parallel jobs)
never leave that user's other programs with shrunken pipes; the agents past that point keep 64 KiB.
"""

from __future__ import annotations

import fcntl
import os

WIDTH = 1 << 20
_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; Python has the names from 3.10
GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def widen(*fds: int, width: int = WIDTH) -> dict[int, int]:
    """Ask for pipes of ``width`` bytes on ``fds``; returns {fd: the capacity the kernel set} for
    those it widened (and kept widened: see the module's note on the per-user limit)."""
    done = {}
    for fd in fds:
        try:
            before = fcntl.fcntl(fd, GETPIPE_SZ)
            got = fcntl.fcntl(fd, _SETPIPE_SZ, width)
        except OSError:
            continue  # not a pipe, or over a limit: the pipe keeps its size
        if _room_for(width):
            done[fd] = got
            continue
        try:  # the user's pipes are near their limit: give the room back
            fcntl.fcntl(fd, _SETPIPE_SZ, before)
        except OSError:
            pass  # holds more than ``before`` already: it stays wide
    return done


def _room_for(width: int) -> bool:
    """Whether this user could still have one more pipe of ``width`` bytes (a probe pipe, closed)."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(r, _SETPIPE_SZ, width)
        return True
    except OSError:
        return False
    finally:
        os.close(r)
        os.close(w)
