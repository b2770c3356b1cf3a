"""Error classes of drsync, each carrying its exit code (the table of DESIGN §6 lives here).

The CLI is the only place where an error becomes an exit code and a line on stderr; everything
below it raises one of these.
"""

from __future__ import annotations

EXIT_CODES = {
    0: "done / in sync",
    1: "`diff` found work to do, or `verify` found problems",
    2: "usage or configuration error",
    3: "conflict: a version differs between the nodes",
    4: "unsafe or malformed input (bad name, escaping link, non-canonical layout)",
    5: "connection, authentication or host-key failure",
    6: "I/O error on the destination (including a full disk)",
    7: "another run holds the destination's lock",
    8: "integrity: a file's bytes did not match its digest after one retry",
}
EXIT_INTERRUPTED = 20  # SIGINT/SIGTERM: not an error class, the CLI's own exit


def escape(text: object) -> str:
    """Render a name on one printable line: control bytes and undecodable bytes are escaped.

    A newline in a file name must never forge a second log line (FAULTS A5).
    """
    s = str(text)
    out = []
    for ch in s:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # surrogateescape'd byte from a non-UTF-8 name
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        elif ch == "\\":
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out)


class DrsyncError(Exception):
    """Base class: a failure with an exit code and a one-line message.

    ``retryable`` says whether trying again may succeed. Only a lost link is (ConnectionLost):
    every other failure would fail the same way again, and a retry must never hide one.
    """

    exit_code = 2
    retryable = False

    def __init__(self, message: str, *, dataset: str | None = None, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.dataset = dataset
        self.path = path

    def line(self) -> str:
        """The one-line message, naming dataset and path, with unprintables escaped."""
        parts = []
        if self.dataset is not None:
            parts.append(f"dataset {escape(self.dataset) or '.'}")
        if self.path is not None:
            parts.append(f"path {escape(self.path)}")
        where = f" ({', '.join(parts)})" if parts else ""
        return f"{escape(self.message)}{where}"

    def __str__(self) -> str:
        return self.line()


class UsageError(DrsyncError):
    """Bad command line or configuration."""

    exit_code = 2


class ConflictError(DrsyncError):
    """A version exists on both nodes with different content."""

    exit_code = 3


class UnsafeInputError(DrsyncError):
    """A name, link or layout that drsync refuses to read or write."""

    exit_code = 4


class ConnectionFailure(DrsyncError):
    """Connection, authentication or host-key failure. Permanent as such: a refused host key, a
    failed authentication, an incompatible agent or a bad ssh configuration is not retried."""

    exit_code = 5


class ConnectionLost(ConnectionFailure):
    """The link failed, not the peer's answer: refused, reset, dropped, or silent for longer than
    ``--timeout``. Retried with backoff (``--retries``); the retry resumes from the partial files."""

    retryable = True


class DestinationIOError(DrsyncError):
    """An I/O error while writing the destination (full disk, permissions, EIO)."""

    exit_code = 6


class LockedError(DrsyncError):
    """Another run holds the destination's lock."""

    exit_code = 7


class IntegrityError(DrsyncError):
    """A file's bytes did not match its recorded digest after one retry."""

    exit_code = 8


class SourceIOError(DrsyncError):
    """A source file vanished or could not be read during the run (not the destination's fault)."""

    exit_code = 6
