"""xxh3-128 digests of real files, as manifests record them (DESIGN §2)."""

from __future__ import annotations

import os

import xxhash

from .fsutil import Dir

CHUNK = 1 << 20


def hash_fd(fd: int, size: int | None = None) -> str:
    """xxh3-128 of a whole open file, read from its start. With ``size`` (what an lstat said), a
    file of at most CHUNK bytes that still has that size is read with one call, not two."""
    h = xxhash.xxh3_128()
    offset = 0
    if size is not None and size < CHUNK:
        b = os.pread(fd, size + 1, 0)  # one byte more: a file that grew is read on below
        h.update(b)
        if len(b) == size:
            return h.hexdigest()
        offset = len(b)
    while True:
        b = os.pread(fd, CHUNK, offset)
        if not b:
            break
        h.update(b)
        offset += len(b)
    return h.hexdigest()


def hash_file(d: Dir, name: str, size: int | None = None) -> str:
    fd = d.open_read(name)
    try:
        return hash_fd(fd, size)
    finally:
        os.close(fd)
