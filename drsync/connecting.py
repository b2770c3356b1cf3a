"""A node (or an SSH channel) connected on a helper thread while the caller does its local work.

Over ssh most of a small run is the connection: the handshake, then the remote login shell and
the agent starting up (~0.2 s on loopback), during which this process only waits. The command line
starts the SSH channel this way before it imports the planning machinery (ssh.prepare_channel), and
a push opens the remote destination this way while it lists its local source and loads what the
first plan reads (sync._attempt). The thread runs the same opener a caller would: the same
host-key checks, the same errors, raised by ``result()`` in the caller's thread.
"""

from __future__ import annotations

import threading


class Connecting:
    """``opener(*args, **kwargs)`` running on a helper thread; what it returns has a ``close()``.
    Call ``result()`` for it, or ``abandon()`` when it is not wanted after all (the local side
    failed first)."""

    def __init__(self, opener, *args, **kwargs) -> None:
        self._lock = threading.Lock()
        self._node = None
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, args=(opener, args, kwargs),
                                        name="drsync-connect", daemon=True)
        self._thread.start()

    def _run(self, opener, args, kwargs) -> None:
        try:
            node = opener(*args, **kwargs)
        except BaseException as e:  # handed to result(); never printed from this thread
            self._error = e
            return
        with self._lock:
            if not self._abandoned:
                self._node = node
                return
        node.close()  # nobody will collect it

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the opener to return or fail; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def result(self):
        """The connected node, once ready; the connection's own error if it failed."""
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._node

    def abandon(self) -> None:
        """Close the node if it is connected, or as soon as it is. Does not wait for a connection
        still in progress: a bad source is reported now, not after the remote's connect timeout."""
        with self._lock:
            self._abandoned = True
            node, self._node = self._node, None
        if node is not None:
            node.close()
