"""Transfer rates as users write them (``--bwlimit``, the jobs file's ``bwlimit``)."""

from __future__ import annotations

import re


def parse_rate(value: object) -> int:
    """A bandwidth limit in bytes/s. Like rsync's and drsync's ``--bwlimit``: a bare number is
    KiB/s; ``K``, ``M``, ``G`` suffixes are binary."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"not a rate: {value!r} (a positive number of KiB/s)")
        return value * 1024
    if not isinstance(value, str):
        raise ValueError(f"not a rate: {value!r} (try \"500K\", \"20M\" or \"1G\")")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)(?:i?B?)?(?:/s)?", value.strip(), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"not a rate: {value!r} (try \"500K\", \"20M\" or \"1G\")")
    return int(float(m.group(1)) * {"": 1024, "K": 1024, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()])
