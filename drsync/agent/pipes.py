"""A wider stdin pipe between sshd and the agent.

sshd runs the agent with pipes for its stdin and stdout, and a Linux pipe holds 64 KiB. A pushed
file's bytes cross the stdin pipe: sshd decrypts a packet, writes it, and stops whenever the pipe is
full until the agent has read; the agent reads at most what the pipe holds per call (the protocol
asks for up to 4 MiB). At 64 KiB the two take turns 16 times per megabyte, each a wake-up of the
other on a machine whose cores the client and sshd are also using. The agent widens its stdin
pipe to 1 MiB (``F_SETPIPE_SZ``; the reader may do that, and 1 MiB is /proc/sys/fs/pipe-max-size's
default, the most an unprivileged user may ask for). Push of 384 MiB of big files over ssh, same-run
A/Bs (docs/performance.md, session 22): 1.70 s -> 1.31 s median; by width, in one run, 64 KiB 1.54 s,
256 KiB 1.29 s, 1 MiB 1.19 s, 4 MiB 1.51 s. Its stdout (what a pull streams out) is left at 64 KiB:
widened to 1 MiB, a pull of the same files took 1.02 s -> 1.12 s.

Only an optimisation: where the descriptor is not a pipe (a socket, a terminal) or the kernel refuses
(above pipe-max-size, or the user's pipe memory is over /proc/sys/fs/pipe-user-pages-soft, which
counts 256 pages per widened pipe), the pipe stays as it is and nothing is reported.
"""

from __future__ import annotations

import fcntl

WIDTH = 1 << 20
_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; Python has the name from 3.10


def widen(*fds: int, width: int = WIDTH) -> dict[int, int]:
    """Ask for pipes of ``width`` bytes on ``fds``; returns {fd: the capacity the kernel set} for
    those it widened."""
    done = {}
    for fd in fds:
        try:
            done[fd] = fcntl.fcntl(fd, _SETPIPE_SZ, width)
        except OSError:
            pass  # not a pipe, or over a limit: the pipe keeps its size
    return done
