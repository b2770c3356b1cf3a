"""The interface through which the library reports progress and warnings (STYLE habit 10).

The library never prints: it calls an ``Events`` object. The CLI plugs in one that draws tqdm bars
and writes warnings to stderr; tests and Dask workers use ``Recorder`` or the silent default.
"""

from __future__ import annotations


class Events:
    """Silent by default; subclass and override what you want to see."""

    def warning(self, message: str) -> None:
        """A problem the run survived; counted, not raised (STYLE habit 5)."""

    def info(self, message: str) -> None:
        """A step worth a line at -v."""

    def start(self, dataset: str, files: int, nbytes: int) -> None:
        """A dataset's transfer begins: ``files`` files, ``nbytes`` bytes to move."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes have landed in the destination's partial area."""

    def file_done(self, dataset: str, relpath: str) -> None:
        """One file was verified and renamed into files/."""

    def finish(self, dataset: str) -> None:
        """A dataset's transfer is over (successfully or not)."""


class Recorder(Events):
    """Keeps everything it is told, for tests."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.infos: list[str] = []
        self.files: list[tuple[str, str]] = []
        self.bytes = 0

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def info(self, message: str) -> None:
        self.infos.append(message)

    def advance(self, nbytes: int) -> None:
        self.bytes += nbytes

    def file_done(self, dataset: str, relpath: str) -> None:
        self.files.append((dataset, relpath))
