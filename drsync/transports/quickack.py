"""Acknowledge every segment from sshd at once (TCP_QUICKACK), with either backend.

sshd leaves Nagle's algorithm on for a session without a terminal, so when it sends two small
packets in a row (after authentication: a debug message, then the confirmation of the session
channel drsync asked for) the second waits until the first is acknowledged. A client with nothing
to send delays that ACK by Linux's 40 ms minimum, and the whole run waits with it: measured on
loopback, opening the agent's session took 44 ms, 2 ms with quick ACKs. OpenSSH's own client pays
the same stall (`ssh -v` shows it between "Authenticated" and the channel's confirmation).

Linux has no lasting quick-ACK mode: the kernel goes back to delaying ACKs on its own, so the
option is set again after every read from the socket, one cheap setsockopt. Elsewhere (no
TCP_QUICKACK) nothing changes.
"""

from __future__ import annotations

import socket

from .coalesce import coalesce_writes

_OPTION = getattr(socket, "TCP_QUICKACK", None)


def ack_now(sock) -> None:
    """Send the ACK for what ``sock`` has received now, not after the delayed-ACK timer."""
    if _OPTION is not None and sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _OPTION, 1)
        except OSError:  # not TCP (a Unix socket from a proxy command), or already closed
            pass


def asyncssh_client(base):
    """An ``asyncssh.SSHClient`` subclass (``base``: asyncssh.SSHClient) whose connection acks
    every read at once, and writes what it sends in one loop turn at once (coalesce.py); pass it
    as ``client_factory`` to asyncssh.connect()."""

    class QuickAckClient(base):
        def connection_made(self, conn) -> None:
            import asyncio

            coalesce_writes(conn, asyncio.get_running_loop())
            sock = conn.get_extra_info("socket")
            if _OPTION is None or sock is None:
                return
            receive = conn.data_received  # asyncio looks the method up on each read

            def data_received(data, *rest):
                receive(data, *rest)
                ack_now(sock)

            conn.data_received = data_received

    return QuickAckClient
