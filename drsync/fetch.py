"""The contract between a source and the receiver (DESIGN §4 step 1): a batch fetch fills open
partial files, a source that moved on answers SourceChanged for that file, and Received counts
what arrived."""

from __future__ import annotations

from collections.abc import Callable

from . import manifest as mf

# A batch fetch writes each requested file into its open partial: for every (entry, fd, offset)
# it writes bytes [offset, entry.size) of the entry's real file at the same offsets of fd, and
# returns, in order, the source's permission bits or a SourceChanged for a source that moved on.
# A fetch that wrote a whole file (offset 0) may return ``(mode, digest)`` instead: the xxh3-128
# of the bytes it wrote, taken from the same buffers (the receiver then need not read them back).
# One call per batch lets a remote source stream the whole batch without a round trip per file.
FetchBatch = Callable[[list[tuple[mf.Entry, int, int]]], list["int | tuple[int, str] | SourceChanged"]]


class Announced:
    """A FetchBatch over a stream, whose source can be asked for a batch before the receiver has
    created the batch's partial files (publish.Receiver._fill calls ``announce``): the bytes are
    then on their way while the files are made. ``ask(items)`` sends the request for items
    (entry, offset); ``read(items)`` reads the answers into the fds, items (entry, fd, offset). A
    call without an announce first asks for what it is given."""

    def __init__(self, ask: Callable[[list[tuple[mf.Entry, int]]], None],
                 read: Callable[[list[tuple[mf.Entry, int, int]]], list]) -> None:
        self.ask = ask
        self.read = read
        self.asked: list[tuple[mf.Entry, int]] | None = None

    def announce(self, items: list[tuple[mf.Entry, int]]) -> None:
        self.ask(items)
        self.asked = items

    def __call__(self, items: list[tuple[mf.Entry, int, int]]) -> list:
        asked, self.asked = self.asked, None
        if asked is None:
            self.ask([(e, off) for e, _, off in items])
        elif [(id(e), off) for e, off in asked] != [(id(e), off) for e, _, off in items]:
            raise RuntimeError("a fetch must read the batch its announce asked for")
        return self.read(items)


class SourceChanged(Exception):
    """The source file no longer matches its manifest entry (size, or it vanished)."""


def fetch_each(fetch: Callable[[mf.Entry, int, int], int], items: list[tuple[mf.Entry, int, int]]) -> list:
    """A FetchBatch from a one-file ``fetch(entry, fd, offset) -> mode``, for sources whose files
    are fetched one after another: a SourceChanged becomes that file's result, not an abort."""
    out: list = []
    for e, fd, offset in items:
        try:
            out.append(fetch(e, fd, offset))
        except SourceChanged as why:
            out.append(why)
    return out


class Received:
    """What a transfer brought: files and bytes (a plain class: a dataclass costs start-up time)."""

    __slots__ = ("bytes", "files")

    def __init__(self, files: int = 0, bytes: int = 0) -> None:
        self.files = files
        self.bytes = bytes

    def __eq__(self, other) -> bool:
        return isinstance(other, Received) and (self.files, self.bytes) == (other.files, other.bytes)

    def __repr__(self) -> str:
        return f"Received(files={self.files}, bytes={self.bytes})"
