"""The local transport's source half: real files read through held directory fds.

Copies use the kernel's fast path (``copy_file_range``, then ``sendfile``); ``--link`` hard-links
instead when both nodes share a filesystem.
"""

from __future__ import annotations

import os

from .. import layout
from ..fsutil import Dir, copy_fd, fault_point
from ..manifest import Entry
from ..publish import SourceChanged


class LocalSource:
    """Reads the real files of one source dataset, never following a symlink."""

    def __init__(self, ds: Dir):
        self.ds = ds
        self._files: Dir | None = None
        self._dirs: dict[str, Dir] = {}

    def _dir(self, dirname: str) -> Dir:
        d = self._dirs.get(dirname)
        if d is None:
            if self._files is None:
                self._files = self.ds.open_dir(layout.FILES)
            d = self._dirs[dirname] = self._files.open_dir(dirname)
        return d

    def _open(self, e: Entry) -> int:
        try:
            return self._dir(e.dir).open_read(e.file)
        except FileNotFoundError:
            raise SourceChanged("source file vanished during transfer") from None

    def fetch(self, e: Entry, fd: int, offset: int) -> int:
        """Copy bytes [offset, size) of ``e`` into ``fd``; return the source's mode bits."""
        sfd = self._open(e)
        try:
            st = os.fstat(sfd)
            if st.st_size != e.size:
                raise SourceChanged("source file size changed since it was scanned")
            if offset < e.size:
                first = min(e.size, offset + (1 << 20))
                copy_fd(sfd, fd, first, offset)
                fault_point("partial_write")
                copy_fd(sfd, fd, e.size, first)
            return st.st_mode
        finally:
            os.close(sfd)

    def fetch_batch(self, items: list[tuple[Entry, int, int]]) -> list:
        """The receiver's batch fetch (see publish.FetchBatch): one local copy after another."""
        out: list = []
        for e, fd, offset in items:
            try:
                out.append(self.fetch(e, fd, offset))
            except SourceChanged as why:
                out.append(why)
        return out

    def link(self, e: Entry, partial: Dir, name: str) -> None:
        """Hard-link the source's real file as ``partial/name``."""
        try:
            partial.link_from(self._dir(e.dir), e.file, name)
        except FileNotFoundError:
            raise SourceChanged("source file vanished during transfer") from None

    def close(self) -> None:
        for d in self._dirs.values():
            d.close()
        if self._files is not None:
            self._files.close()
