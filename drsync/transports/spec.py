"""Node specs: ``[user@]host[:port]:path`` names a remote node, anything else a local path.

Kept apart from the SSH code (no SSH library, no crypto) so that a local run, and the command line
before it knows what it will connect to, can tell the two apart cheaply.
"""

from __future__ import annotations

import os
import re
from collections import namedtuple

from ..errors import UsageError

_SPEC = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?:\[(?P<host6>[^\]/]+)\]|(?P<host>[^@/:\[\]]+))(?::(?P<port>\d+))?:(?P<path>.*)$")


class NodeSpec(namedtuple("NodeSpec", "user host port path")):
    """``[user@]host[:port]:path`` taken apart (user and port may be None)."""

    __slots__ = ()

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}:{self.path}"


def is_remote(spec: str) -> bool:
    """``[user@]host[:port]:/path`` is a remote node; anything else (or an existing local path
    that happens to contain a colon) is a local path."""
    return bool(_SPEC.match(spec)) and not os.path.exists(spec)


def parse_spec(spec: str) -> NodeSpec:
    m = _SPEC.match(spec)
    if not m:
        raise UsageError(f"not a node spec: {spec!r} (want [user@]host[:port]:/path)")
    path = m.group("path") or "."
    return NodeSpec(m.group("user"), m.group("host6") or m.group("host"),
                    int(m.group("port")) if m.group("port") else None, path)
