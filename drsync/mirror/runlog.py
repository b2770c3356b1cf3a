"""The JSON-lines run log of mirror jobs: one object per job run, appended and flushed.

Each line is written with one ``write`` on an ``O_APPEND`` descriptor, so lines of concurrent runs
(several jobs, several machines on a shared log) never interleave inside a line, and fsynced, so a
line that was reported is on disk.
"""

from __future__ import annotations

import json
import os


def append_record(path: str, record: dict) -> None:
    """Append ``record`` as one JSON line to ``path`` (parents created, mode 0644)."""
    line = json.dumps(record, ensure_ascii=True, sort_keys=False) + "\n"
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        data = line.encode()
        while data:
            n = os.write(fd, data)
            data = data[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: str) -> list[dict]:
    """Every record of a run log, oldest first (for tests and tools)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
