"""strace's output format, as the power-loss recorder reads it (``strace -f -y -xx``).

``calls`` yields complete syscalls from a log, with the ``<unfinished ...>`` and
``<... resumed>`` halves of calls interrupted by another thread joined; the ``*_arg`` helpers
decode one argument (under ``-xx`` every string is hex-escaped, so nothing needs unquoting, and
``-y`` annotates each file descriptor with its path, also escaped).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass


class TraceError(Exception):
    """The log disagrees with the model (a call succeeded that the model says cannot)."""


_HEX = re.compile(rb"\\x([0-9a-f]{2})")
_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^([a-z_0-9]+)\((.*)$", re.DOTALL)
_RET = re.compile(r"\)\s+= ")


def unescape(s: str) -> bytes:
    """strace -xx text (hex escapes, maybe a few literal characters) to bytes."""
    return _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), s.encode("latin-1"))


def split_args(s: str) -> list[str]:
    """Top-level comma-separated arguments (strings are all hex under -xx: no quoting tricks)."""
    out, depth, cur, i, in_str = [], 0, [], 0, False
    while i < len(s):
        c = s[i]
        if in_str:
            cur.append(c)
            if c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            cur.append(c)
        elif c in "[{(<":
            depth += 1
            cur.append(c)
        elif c in "]})>":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        out.append("".join(cur).strip())
    return out


_FD = re.compile(r"^(-?\d+|AT_FDCWD)(?:<(.*)>)?$", re.DOTALL)


def fd_arg(a: str) -> tuple[int | None, str | None]:
    """(fd number or None for AT_FDCWD, the -y path annotation or None)."""
    m = _FD.match(a)
    if not m:
        raise TraceError(f"not an fd argument: {a[:80]}")
    fd = None if m.group(1) == "AT_FDCWD" else int(m.group(1))
    ann = os.fsdecode(unescape(m.group(2))) if m.group(2) is not None else None
    return fd, ann


def str_arg(a: str) -> str:
    if not (a.startswith('"') and a.endswith('"')):
        if a.startswith('"') and a.endswith('"...'):
            raise TraceError("a string was truncated by strace: raise -s")
        raise TraceError(f"not a string argument: {a[:80]}")
    return os.fsdecode(unescape(a[1:-1]))


def bytes_arg(a: str) -> bytes:
    if a.endswith('"...'):
        raise TraceError("a buffer was truncated by strace: raise -s")
    return unescape(a[1:-1])


def int_arg(a: str) -> int:
    return int(a, 0)


def offset_ptr(a: str) -> int | None:
    """``[123]`` or ``[100] => [110]`` (the value on entry) or NULL."""
    if a == "NULL":
        return None
    m = re.match(r"^\[(\d+)\]", a)
    if not m:
        raise TraceError(f"not an offset pointer: {a}")
    return int(m.group(1))


@dataclass
class Call:
    line: int
    pid: int
    name: str
    args: list[str]
    ret: int
    ret_ann: str | None
    text: str


def calls(log_path: str):
    """Complete syscalls of a ``strace -f`` log, with ``<unfinished ...>`` / ``<... resumed>``
    halves joined. A call is placed where it returned (its effect is complete there), except a
    flush (fsync, fdatasync, syncfs), which is placed where it *started*: a call of another thread
    that returned while the flush ran may or may not be covered by it, so it is taken as not; and a
    ``close``, also placed where it started: the kernel frees the descriptor's number as the call
    begins, so another thread's open can return that number before the close returns."""
    pending: dict[int, tuple[str, int]] = {}
    out: list[tuple[int, Call]] = []
    with open(log_path, encoding="latin-1") as fh:
        for lineno, raw in enumerate(fh, 1):
            raw = raw.rstrip("\n")
            m = _LINE.match(raw)
            if not m:
                raise TraceError(f"line {lineno}: unexpected: {raw[:200]}")
            pid, rest = int(m.group(1)), m.group(2)
            if rest.startswith(("+++", "---")):
                continue
            start = lineno
            if rest.endswith("<unfinished ...>"):
                pending[pid] = (rest[: -len("<unfinished ...>")].rstrip(), lineno)
                continue
            r = re.match(r"^<\.\.\. ([a-z_0-9]+) resumed>\s?(.*)$", rest, re.DOTALL)
            if r:
                head, start = pending.pop(pid, (None, lineno))
                if head is None:
                    raise TraceError(f"line {lineno}: resumed call without its start: {raw[:200]}")
                # the first half ends after a complete argument ("fd, ") or mid-list; strace
                # prints the resumed part from where it stopped
                rest = head + r.group(2) if head.endswith(("(", " ")) else head + " " + r.group(2)
            cm = _CALL.match(rest)
            if not cm:
                raise TraceError(f"line {lineno}: unexpected: {raw[:200]}")
            name, body = cm.group(1), cm.group(2)
            ends = list(_RET.finditer(body))
            if not ends:
                raise TraceError(f"line {lineno}: no return value: {raw[:200]}")
            argtext, rettext = body[:ends[-1].start()], body[ends[-1].end():]
            rm = re.match(r"^(-?\d+|0x[0-9a-f]+|\?)(?:<(.*?)>)?", rettext)
            if not rm or rm.group(1) == "?":
                continue
            ret = int(rm.group(1), 0)
            ann = os.fsdecode(unescape(rm.group(2))) if rm.group(2) is not None else None
            out.append((start if name in AT_START else lineno, Call(lineno, pid, name, split_args(argtext), ret, ann, raw)))
    out.sort(key=lambda x: x[0])
    yield from (c for _, c in out)


FLUSHES = frozenset({"fsync", "fdatasync", "syncfs", "sync"})
AT_START = FLUSHES | {"close"}  # calls placed where they started (calls())
