"""A node connected on a helper thread while the caller does its local work.

Over ssh most of a small run is the connection: the handshake, then the remote login shell and
the agent starting up (~0.2 s on loopback), during which this process only waits. A push opens the
remote destination this way and meanwhile lists its local source and loads what the first plan
reads (sync._attempt). The thread runs the same ``open_node`` a caller would: the same host-key
checks, the same errors, raised by ``result()`` in the caller's thread.
"""

from __future__ import annotations

import threading


class Connecting:
    """``open(spec, options, events)`` running on a helper thread. Call ``result()`` for the node,
    or ``abandon()`` when it is not wanted after all (the local side failed first)."""

    def __init__(self, open_node, spec: str, options, events) -> None:
        self._lock = threading.Lock()
        self._node = None
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, args=(open_node, spec, options, events),
                                        name="drsync-connect", daemon=True)
        self._thread.start()

    def _run(self, open_node, spec, options, events) -> None:
        try:
            node = open_node(spec, options, events)
        except BaseException as e:  # handed to result(); never printed from this thread
            self._error = e
            return
        with self._lock:
            if not self._abandoned:
                self._node = node
                return
        node.close()  # nobody will collect it

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
