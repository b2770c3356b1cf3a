"""What the `drsync` executable does not free: it leaves with ``os._exit`` (cli.leave), without the
interpreter's teardown, so an object still referenced then costs nothing. Dropping a big dataset's
manifest, on the other hand, frees its entries and key sets one object at a time (LARGE: ~30,000
entries, 6-11 ms), and the last dataset's is dropped just before the run ends, on its critical path.

So a manifest a node is done with is handed over here instead of being dropped: the one of the same
kind (a source's, a destination's) handed over before it is freed then (memory stays bounded by one
manifest of each kind, however many datasets a run has), and the last ones are left to the process's
exit. Library callers' processes are not the executable's: for them (``keeping`` off, the default) a
handed-over object is simply dropped, as before."""

from __future__ import annotations

keeping = False  # set by the executable (cli.run) only
_kept: dict[str, object] = {}


def hand_over(kind: str, obj: object) -> None:
    """``obj`` is no longer needed: free it now, or (the executable) keep it until the next object
    of its ``kind`` is handed over."""
    if keeping and obj is not None:
        _kept[kind] = obj  # frees the one before
