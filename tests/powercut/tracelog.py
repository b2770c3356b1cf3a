"""Trace a real ``drsync push`` with strace and turn the log into the destination's operations.

The recorder of the power-loss harness (FAULTS D6, ALICE-style, Pillai et al. OSDI'14): ``record``
runs the push under ``strace -f -y -xx``; ``parse`` replays the log against a model of the
destination's namespace built from the tree before the run, and returns the ordered list of
``Op`` that changed it (creates, writes, truncations, mode and time changes, renames, links,
mkdirs, unlinks) and the barriers between them (fsync, fdatasync, syncfs, sync).

Inodes, not paths: a file descriptor binds to the inode it opened, and every name is resolved in
the model at the time of the call (``-y`` prints the name an fd has when the line is printed,
which a rename may have changed). A syscall that touches the destination and that this module does
not model raises ``Unmodeled`` with the log line: the harness never ignores a write silently.
(strace's line format itself is read by stracelog.py.)
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass, field

from stracelog import _FD, Call, TraceError, bytes_arg, calls, fd_arg, int_arg, offset_ptr, str_arg, unescape

__all__ = ["BARRIERS", "DATA", "NAMESPACE", "Op", "Recorder", "TraceError", "Tree", "Unmodeled", "calls", "parse",
           "push_argv", "record"]

STRACE = "/usr/bin/strace"
# strace's classes: %file (every call taking a path), %desc (every call taking an fd), plus the
# flushes and copies named explicitly.
TRACE_SET = "%file,%desc,sync,syncfs,fsync,fdatasync,sync_file_range,copy_file_range,sendfile"

NAMESPACE = ("creat", "mkdir", "symlink", "link", "rename", "unlink", "rmdir")
DATA = ("write", "trunc", "chmod", "utime")
BARRIERS = ("fsync", "syncfs")

# Calls that never change a file system (reads, stats, descriptors, processes).
_HARMLESS = frozenset((
    "read", "pread64", "readv", "preadv", "preadv2", "lseek", "_llseek", "close", "close_range", "fstat",
    "newfstatat", "fstatat64", "stat", "lstat", "stat64", "lstat64", "statx", "getdents", "getdents64", "readlink",
    "readlinkat", "access", "faccessat", "faccessat2", "flock", "fadvise64", "fstatfs", "statfs", "getcwd", "chdir",
    "fchdir", "execve", "execveat", "pipe", "pipe2", "eventfd2", "epoll_create1", "epoll_ctl", "epoll_wait",
    "epoll_pwait", "poll", "ppoll", "select", "pselect6", "socket", "socketpair", "connect", "accept", "accept4",
    "bind", "listen", "recvfrom", "recvmsg", "sendto", "sendmsg", "getsockname", "getpeername", "getsockopt",
    "setsockopt", "shutdown", "inotify_init1", "inotify_add_watch", "memfd_create", "getxattr", "lgetxattr",
    "fgetxattr", "listxattr", "llistxattr", "flistxattr", "timerfd_create", "signalfd4", "splice", "tee",
    "name_to_handle_at", "open_by_handle_at", "openat2", "mq_open",
))


class Unmodeled(Exception):
    """A syscall changed (or may have changed) the destination in a way the model does not cover."""


@dataclass
class Op:
    """One change to the destination, in log order. ``ino``: the inode created, removed, moved or
    written; ``parent``/``name``: the directory entry (for a rename, the source); ``parent2``/
    ``name2``: a rename's or link's destination entry. ``path``/``path2``: names at trace time,
    relative to the destination root (for reports and phases only; replay uses inodes)."""

    kind: str
    line: int
    ino: int | None = None
    parent: int | None = None
    name: str | None = None
    parent2: int | None = None
    name2: str | None = None
    target: str | None = None  # symlink text
    mode: int = 0
    offset: int = 0
    data: bytes = b""
    size: int = 0  # trunc: new size
    mtime_ns: int | None = None
    flags: str = ""
    all_inodes: bool = False  # syncfs/sync
    path: str = ""
    path2: str = ""
    syscall: str = ""
    node_kind: str = ""  # fsync: "file" or "dir"
    index: int = -1
    phase: str = ""

    @property
    def barrier(self) -> bool:
        return self.kind in BARRIERS


@dataclass
class Inode:
    kind: str  # "dir" | "file" | "link"
    mode: int = 0o644
    data: bytes = b""
    target: str = ""
    entries: dict[str, int] = field(default_factory=dict)
    mtime_ns: int = 0


class Tree:
    """A directory tree as inodes: the destination before the run, then as the ops change it."""

    def __init__(self) -> None:
        self.inodes: dict[int, Inode] = {}
        self.root = 1
        self.next_ino = 1

    def new(self, node: Inode) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.inodes[ino] = node
        return ino

    @classmethod
    def scan(cls, path: str) -> Tree:
        """The tree below ``path`` as it is on disk (links as links)."""
        t = cls()

        def walk(p: str) -> int:
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                ino = t.new(Inode("dir", stat.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns))
                node = t.inodes[ino]
                for name in sorted(os.listdir(p)):
                    node.entries[name] = walk(os.path.join(p, name))
                return ino
            if stat.S_ISLNK(st.st_mode):
                return t.new(Inode("link", 0o777, target=os.readlink(p), mtime_ns=st.st_mtime_ns))
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    return t.new(Inode("file", stat.S_IMODE(st.st_mode), data=fh.read(), mtime_ns=st.st_mtime_ns))
            raise Unmodeled(f"special file in the destination before the run: {p}")

        t.root = walk(path)
        return t

    def copy(self) -> Tree:
        t = Tree()
        t.root, t.next_ino = self.root, self.next_ino
        t.inodes = {i: Inode(n.kind, n.mode, n.data, n.target, dict(n.entries), n.mtime_ns)
                    for i, n in self.inodes.items()}
        return t

    def path_of(self, ino: int) -> str:
        """A name of ``ino`` relative to the root (first found), for reports."""
        if ino == self.root:
            return "."
        stack = [(self.root, "")]
        while stack:
            d, prefix = stack.pop()
            for name, child in self.inodes[d].entries.items():
                p = f"{prefix}{name}"
                if child == ino:
                    return p
                if self.inodes[child].kind == "dir":
                    stack.append((child, p + "/"))
        return f"<orphan inode {ino}>"


# --- the recorder ------------------------------------------------------------------------------
class _Desc:
    """An open file description: the inode (model) or the outside path, and the offset."""

    __slots__ = ("append", "ino", "offset", "outside")

    def __init__(self, ino: int | None, outside: str | None, append: bool = False):
        self.ino = ino
        self.outside = outside
        self.offset = 0
        self.append = append


class Recorder:
    """Replays syscalls against the model of the destination, emitting ``Op``s."""

    def __init__(self, tree: Tree, root: str):
        self.t = tree
        self.root = os.path.realpath(root)
        self.fds: dict[int, _Desc] = {}
        self.ops: list[Op] = []
        self.outside_writes = 0  # mutating calls that landed outside the destination
        self.outside_paths: set[str] = set()
        self.cwd: str | None = None  # the working directory, as last shown by an AT_FDCWD annotation

    # resolution ---------------------------------------------------------------------------
    def _inside(self, path: str) -> str | None:
        """``path`` (absolute) relative to the destination root, or None if outside."""
        path = os.path.normpath(path)
        if path == self.root:
            return ""
        if path.startswith(self.root + "/"):
            return path[len(self.root) + 1:]
        return None

    def _walk(self, start: int, rel: str, *, follow_last: bool, call: Call) -> tuple[int, str, int | None]:
        """Resolve ``rel`` from directory inode ``start``: (parent dir inode, last name, inode or
        None if the last component does not exist). Intermediate links are followed."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        cur = start
        stack: list[int] = []
        hops = 0
        if not parts:
            return cur, ".", cur
        i = 0
        while i < len(parts):
            part = parts[i]
            last = i == len(parts) - 1
            node = self.t.inodes[cur]
            if node.kind != "dir":
                raise TraceError(f"line {call.line}: {part!r} looked up in a non-directory")
            if part == "..":
                cur = stack.pop() if stack else self._parent_of(cur, call)
                i += 1
                if last:
                    return cur, ".", cur
                continue
            child = node.entries.get(part)
            if last:
                if child is not None and follow_last and self.t.inodes[child].kind == "link":
                    pass  # followed below
                else:
                    return cur, part, child
            if child is None:
                raise TraceError(f"line {call.line}: {part!r} missing in the model on a call that succeeded")
            if self.t.inodes[child].kind == "link":
                hops += 1
                if hops > 40:
                    raise TraceError(f"line {call.line}: link loop")
                target = self.t.inodes[child].target
                if target.startswith("/"):
                    inside = self._inside(target)
                    if inside is None:
                        raise Unmodeled(f"line {call.line}: a link inside the destination leads outside: "
                                        f"{call.text[:300]}")
                    cur, stack = self.t.root, []
                    parts = inside.split("/") + parts[i + 1:] if inside else parts[i + 1:]
                else:
                    parts = [p for p in target.split("/") if p not in ("", ".")] + parts[i + 1:]
                i = 0
                if not parts:
                    return cur, ".", cur
                continue
            stack.append(cur)
            cur = child
            i += 1
        return cur, ".", cur

    def _parent_of(self, ino: int, call: Call) -> int:
        if ino == self.t.root:
            raise Unmodeled(f"line {call.line}: '..' above the destination root: {call.text[:300]}")
        for d, node in self.t.inodes.items():
            if node.kind == "dir" and ino in node.entries.values():
                return d
        raise TraceError(f"line {call.line}: no parent for inode {ino}")

    def _at(self, dirarg: str, patharg: str, call: Call, *, follow_last: bool = False):
        """Resolve a (dirfd, path) pair: (parent inode, name, inode or None), or None if the path
        is outside the destination (then its absolute path is returned as the 4th item)."""
        fd, ann = fd_arg(dirarg) if dirarg is not None else (None, None)
        path = str_arg(patharg)
        if path.startswith("/") or fd is None:
            if path.startswith("/"):
                absolute = path
            else:
                if ann is None and self.cwd is None:
                    raise TraceError(f"line {call.line}: a relative path and no known working directory")
                self.cwd = ann or self.cwd
                absolute = os.path.join(self.cwd, path)
            rel = self._inside(absolute)
            if rel is None:
                # the root's own parent chain: e.g. mkdir of the root when it exists already
                return None, None, None, absolute
            parent, name, ino = self._walk(self.t.root, rel, follow_last=follow_last, call=call)
            return parent, name, ino, None
        desc = self.fds.get(fd)
        if desc is None or desc.ino is None:
            if ann is not None and self._inside(ann) is not None:
                raise Unmodeled(f"line {call.line}: a destination fd the model did not see opened: {call.text[:300]}")
            return None, None, None, os.path.join(ann or "?", path)
        parent, name, ino = self._walk(desc.ino, path, follow_last=follow_last, call=call)
        return parent, name, ino, None

    def _fd(self, arg: str, call: Call) -> _Desc | None:
        fd, ann = fd_arg(arg)
        desc = self.fds.get(fd) if fd is not None else None
        if desc is None:
            if ann is not None and self._inside(ann) is not None:
                raise Unmodeled(f"line {call.line}: a destination fd the model did not see opened: {call.text[:300]}")
            return None
        return desc

    def _outside(self, c: Call) -> None:
        """Count a mutating call outside the destination, remembering the paths it names."""
        self.outside_writes += 1
        for a in c.args:
            m = _FD.match(a)
            if m and m.group(2) is not None and m.group(1) != "AT_FDCWD":
                self.outside_paths.add(os.fsdecode(unescape(m.group(2))))
            elif a.startswith('"/'):
                self.outside_paths.add(os.fsdecode(unescape(a.strip('"'))))

    # emitting -----------------------------------------------------------------------------
    def emit(self, op: Op) -> None:
        op.index = len(self.ops)
        if op.parent is not None and not op.path:
            base = self.t.path_of(op.parent)
            op.path = op.name if base == "." else f"{base}/{op.name}"
        if op.parent2 is not None and not op.path2:
            base = self.t.path_of(op.parent2)
            op.path2 = op.name2 if base == "." else f"{base}/{op.name2}"
        if op.ino is not None and not op.path:
            op.path = self.t.path_of(op.ino)
        self.ops.append(op)

    def _write(self, ino: int, offset: int, data: bytes, call: Call) -> None:
        node = self.t.inodes[ino]
        if node.kind != "file":
            raise TraceError(f"line {call.line}: write to a non-file")
        old = node.data
        if offset > len(old):
            old = old + bytes(offset - len(old))
        node.data = old[:offset] + data + old[offset + len(data):]
        self.emit(Op("write", call.line, ino=ino, offset=offset, data=data, syscall=call.name))

    def _read_source(self, desc: _Desc, offset: int, n: int) -> bytes:
        if desc.ino is not None:
            return self.t.inodes[desc.ino].data[offset:offset + n]
        with open(desc.outside, "rb") as fh:  # the source is immutable during the run
            fh.seek(offset)
            data = fh.read(n)
        if len(data) != n:
            raise TraceError(f"short read of the source {desc.outside} at {offset}")
        return data

    # the calls --------------------------------------------------------------------------------
    def feed(self, c: Call) -> None:
        if c.ret < 0:
            return  # a failed call changes nothing
        h = getattr(self, f"_sys_{c.name}", None)
        if h is not None:
            h(c)
            return
        if c.name in _HARMLESS:
            if c.name in ("splice", "tee") and self._touches(c):
                raise Unmodeled(f"line {c.line}: {c.text[:300]}")
            return
        if self._touches(c):
            raise Unmodeled(f"line {c.line}: syscall not modelled on the destination: {c.text[:300]}")
        if c.name not in ("mmap", "munmap", "ioctl"):
            self._outside(c)

    def _touches(self, c: Call) -> bool:
        """Whether an argument names the destination: an fd bound to it or whose -y path is in it,
        or a path string in it (absolute, or relative to the working directory)."""
        for a in c.args:
            m = _FD.match(a)
            if not m or m.group(2) is None:  # a real fd is annotated by -y; a bare number is not one
                continue
            ann = os.fsdecode(unescape(m.group(2)))
            if m.group(1) == "AT_FDCWD":
                self.cwd = ann
                continue
            d = self.fds.get(int(m.group(1)))
            if (d is not None and d.ino is not None) or self._inside(ann) is not None:
                return True
        for a in c.args:
            if a.startswith('"'):
                p = os.fsdecode(unescape(a.removesuffix("...").strip('"')))
                if self._inside(os.path.join(self.cwd or "/", p)) is not None:
                    return True
        return False

    def _open(self, c: Call, dirarg: str | None, patharg: str, flagarg: str, modearg: str | None) -> None:
        flags = set(flagarg.split("|"))
        parent, name, ino, outside = self._at(dirarg, patharg, c, follow_last="O_NOFOLLOW" not in flags)
        if outside is not None:
            self.fds[c.ret] = _Desc(None, c.ret_ann or outside)
            if flags & {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"}:
                self._outside(c)
            return
        if ino is None:
            if "O_CREAT" not in flags:
                raise TraceError(f"line {c.line}: opened a name the model lacks: {c.text[:300]}")
            mode = int(modearg, 8) & ~UMASK if modearg else 0o600
            ino = self.t.new(Inode("file", mode))
            self.t.inodes[parent].entries[name] = ino
            self.emit(Op("creat", c.line, ino=ino, parent=parent, name=name, mode=mode, flags=flagarg,
                         syscall=c.name))
        elif "O_EXCL" in flags and "O_CREAT" in flags:
            raise TraceError(f"line {c.line}: O_EXCL succeeded on a name the model has: {c.text[:300]}")
        node = self.t.inodes[ino]
        if "O_TRUNC" in flags and node.kind == "file" and flags & {"O_WRONLY", "O_RDWR"} and node.data:
            node.data = b""
            self.emit(Op("trunc", c.line, ino=ino, size=0, syscall=c.name))
        self.fds[c.ret] = _Desc(ino, None, append="O_APPEND" in flags)

    def _sys_openat(self, c: Call) -> None:
        self._open(c, c.args[0], c.args[1], c.args[2], c.args[3] if len(c.args) > 3 else None)

    def _sys_open(self, c: Call) -> None:
        self._open(c, None, c.args[0], c.args[1], c.args[2] if len(c.args) > 2 else None)

    def _sys_creat(self, c: Call) -> None:
        self._open(c, None, c.args[0], "O_WRONLY|O_CREAT|O_TRUNC", c.args[1])

    def _dup(self, c: Call, src: str) -> None:
        fd, _ = fd_arg(src)
        if fd in self.fds:
            self.fds[c.ret] = self.fds[fd]
        else:
            self.fds.pop(c.ret, None)

    def _sys_dup(self, c: Call) -> None:
        self._dup(c, c.args[0])

    def _sys_dup2(self, c: Call) -> None:
        self._dup(c, c.args[0])

    def _sys_dup3(self, c: Call) -> None:
        self._dup(c, c.args[0])

    def _sys_fcntl(self, c: Call) -> None:
        if c.args[1].startswith("F_DUPFD"):
            self._dup(c, c.args[0])

    def _sys_close(self, c: Call) -> None:
        fd, _ = fd_arg(c.args[0])
        self.fds.pop(fd, None)

    def _sys_lseek(self, c: Call) -> None:
        d = self._fd(c.args[0], c)
        if d is not None:
            d.offset = c.ret

    def _sys_read(self, c: Call) -> None:
        d = self._fd(c.args[0], c)
        if d is not None:
            d.offset += c.ret

    _sys_readv = _sys_read

    def _sys_write(self, c: Call) -> None:
        d = self._fd(c.args[0], c)
        if d is None or d.ino is None:
            if d is not None:
                self._outside(c)
            return
        data = bytes_arg(c.args[1])[: c.ret]
        if len(data) != c.ret:
            raise TraceError(f"line {c.line}: write buffer shorter than the bytes written: raise -s")
        off = len(self.t.inodes[d.ino].data) if d.append else d.offset
        self._write(d.ino, off, data, c)
        d.offset = off + c.ret

    def _sys_pwrite64(self, c: Call) -> None:
        d = self._fd(c.args[0], c)
        if d is None or d.ino is None:
            return
        data = bytes_arg(c.args[1])[: c.ret]
        self._write(d.ino, int_arg(c.args[3]), data, c)

    def _sys_copy_file_range(self, c: Call) -> None:
        src, dst = self._fd(c.args[0], c), self._fd(c.args[2], c)
        if src is None:
            fd, ann = fd_arg(c.args[0])
            src = self.fds[fd] = _Desc(None, ann)
        off_in, off_out = offset_ptr(c.args[1]), offset_ptr(c.args[3])
        start_in = src.offset if off_in is None else off_in
        if off_in is None:
            src.offset += c.ret
        if dst is None or dst.ino is None:
            return
        start_out = dst.offset if off_out is None else off_out
        if off_out is None:
            dst.offset += c.ret
        if c.ret:
            self._write(dst.ino, start_out, self._read_source(src, start_in, c.ret), c)

    def _sys_sendfile(self, c: Call) -> None:
        dst, src = self._fd(c.args[0], c), self._fd(c.args[1], c)
        if src is None:
            fd, ann = fd_arg(c.args[1])
            src = self.fds[fd] = _Desc(None, ann)
        off = offset_ptr(c.args[2])
        start_in = src.offset if off is None else off
        if off is None:
            src.offset += c.ret
        if dst is None or dst.ino is None:
            return
        start_out = dst.offset
        dst.offset += c.ret
        if c.ret:
            self._write(dst.ino, start_out, self._read_source(src, start_in, c.ret), c)

    def _sys_ftruncate(self, c: Call) -> None:
        d = self._fd(c.args[0], c)
        if d is None or d.ino is None:
            return
        size = int_arg(c.args[1])
        node = self.t.inodes[d.ino]
        node.data = node.data[:size] + bytes(max(0, size - len(node.data)))
        self.emit(Op("trunc", c.line, ino=d.ino, size=size, syscall=c.name))

    def _sys_fchmod(self, c: Call) -> None:
        d = self._fd(c.args[0], c)
        if d is None or d.ino is None:
            return
        mode = int(c.args[1], 8)
        self.t.inodes[d.ino].mode = mode
        self.emit(Op("chmod", c.line, ino=d.ino, mode=mode, syscall=c.name))

    def _sys_utimensat(self, c: Call) -> None:
        if c.args[1] == "NULL":
            d = self._fd(c.args[0], c)
            if d is None or d.ino is None:
                return
            ino = d.ino
        else:
            _, _, ino, outside = self._at(c.args[0], c.args[1], c, follow_last="AT_SYMLINK_NOFOLLOW" not in c.args[3])
            if outside is not None:
                return
        m = re.findall(r"tv_sec=(\d+), tv_nsec=(\d+)", c.args[2])
        if len(m) != 2:
            raise Unmodeled(f"line {c.line}: utimensat times not modelled: {c.text[:300]}")
        mt = int(m[1][0]) * 10**9 + int(m[1][1])
        self.t.inodes[ino].mtime_ns = mt
        self.emit(Op("utime", c.line, ino=ino, mtime_ns=mt, syscall=c.name))

    def _barrier_fd(self, c: Call) -> None:
        d = self._fd(c.args[0], c)
        if d is None or d.ino is None:
            return
        self.emit(Op("fsync", c.line, ino=d.ino, syscall=c.name, node_kind=self.t.inodes[d.ino].kind))

    _sys_fsync = _barrier_fd
    _sys_fdatasync = _barrier_fd

    def _sys_syncfs(self, c: Call) -> None:
        d = self._fd(c.args[0], c)
        if d is None or d.ino is None:
            return  # another file system (the destination is assumed to be one file system)
        self.emit(Op("syncfs", c.line, all_inodes=True, syscall=c.name))

    def _sys_sync(self, c: Call) -> None:
        self.emit(Op("syncfs", c.line, all_inodes=True, syscall=c.name))

    def _ns_create(self, c: Call, kind: str, dirarg: str | None, patharg: str, **kw) -> None:
        parent, name, ino, outside = self._at(dirarg, patharg, c)
        if outside is not None:
            self._outside(c)
            return
        if ino is not None:
            raise TraceError(f"line {c.line}: created a name the model already has: {c.text[:300]}")
        node = Inode(kind, kw.get("mode", 0o777), target=kw.get("target", ""))
        new = self.t.new(node)
        self.t.inodes[parent].entries[name] = new
        self.emit(Op("mkdir" if kind == "dir" else "symlink", c.line, ino=new, parent=parent, name=name,
                     mode=node.mode, target=node.target or None, syscall=c.name))

    def _sys_mkdirat(self, c: Call) -> None:
        self._ns_create(c, "dir", c.args[0], c.args[1], mode=int(c.args[2], 8) & ~UMASK)

    def _sys_mkdir(self, c: Call) -> None:
        self._ns_create(c, "dir", None, c.args[0], mode=int(c.args[1], 8) & ~UMASK)

    def _sys_symlinkat(self, c: Call) -> None:
        self._ns_create(c, "link", c.args[1], c.args[2], target=str_arg(c.args[0]))

    def _sys_symlink(self, c: Call) -> None:
        self._ns_create(c, "link", None, c.args[1], target=str_arg(c.args[0]))

    def _remove(self, c: Call, dirarg: str | None, patharg: str, rmdir: bool) -> None:
        parent, name, ino, outside = self._at(dirarg, patharg, c)
        if outside is not None:
            self._outside(c)
            return
        if ino is None:
            raise TraceError(f"line {c.line}: removed a name the model lacks: {c.text[:300]}")
        node = self.t.inodes[ino]
        if rmdir != (node.kind == "dir") or (rmdir and node.entries):
            raise TraceError(f"line {c.line}: model disagrees on the kind of {name!r}")
        del self.t.inodes[parent].entries[name]
        self.emit(Op("rmdir" if rmdir else "unlink", c.line, ino=ino, parent=parent, name=name, syscall=c.name))

    def _sys_unlinkat(self, c: Call) -> None:
        self._remove(c, c.args[0], c.args[1], "AT_REMOVEDIR" in c.args[2])

    def _sys_unlink(self, c: Call) -> None:
        self._remove(c, None, c.args[0], False)

    def _sys_rmdir(self, c: Call) -> None:
        self._remove(c, None, c.args[0], True)

    def _rename(self, c: Call, d1: str | None, p1: str, d2: str | None, p2: str, flags: str) -> None:
        if "RENAME_EXCHANGE" in flags or "RENAME_WHITEOUT" in flags:
            raise Unmodeled(f"line {c.line}: rename flags not modelled: {c.text[:300]}")
        a = self._at(d1, p1, c)
        b = self._at(d2, p2, c)
        if a[3] is not None and b[3] is not None:
            self._outside(c)
            return
        if a[3] is not None or b[3] is not None:
            raise Unmodeled(f"line {c.line}: a rename across the destination's boundary: {c.text[:300]}")
        parent, name, ino, _ = a
        parent2, name2, old, _ = b
        if ino is None:
            raise TraceError(f"line {c.line}: renamed a name the model lacks: {c.text[:300]}")
        if old is not None and "RENAME_NOREPLACE" in flags:
            raise TraceError(f"line {c.line}: RENAME_NOREPLACE succeeded over an existing name")
        op = Op("rename", c.line, ino=ino, parent=parent, name=name, parent2=parent2, name2=name2, flags=flags,
                syscall=c.name)
        # paths before the namespace changes
        base, base2 = self.t.path_of(parent), self.t.path_of(parent2)
        op.path = name if base == "." else f"{base}/{name}"
        op.path2 = name2 if base2 == "." else f"{base2}/{name2}"
        del self.t.inodes[parent].entries[name]
        self.t.inodes[parent2].entries[name2] = ino
        self.emit(op)

    def _sys_renameat2(self, c: Call) -> None:
        self._rename(c, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4])

    def _sys_renameat(self, c: Call) -> None:
        self._rename(c, c.args[0], c.args[1], c.args[2], c.args[3], "")

    def _sys_rename(self, c: Call) -> None:
        self._rename(c, None, c.args[0], None, c.args[1], "")

    def _link(self, c: Call, d1: str | None, p1: str, d2: str | None, p2: str, flags: str) -> None:
        a = self._at(d1, p1, c, follow_last="AT_SYMLINK_FOLLOW" in flags)
        b = self._at(d2, p2, c)
        if b[3] is not None:
            self._outside(c)
            return
        if a[3] is not None or a[2] is None:
            raise Unmodeled(f"line {c.line}: a hard link from outside the destination (--link) is not "
                            f"modelled: {c.text[:300]}")
        self.t.inodes[b[0]].entries[b[1]] = a[2]
        self.emit(Op("link", c.line, ino=a[2], parent=b[0], name=b[1], syscall=c.name))

    def _sys_linkat(self, c: Call) -> None:
        self._link(c, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4])

    def _sys_link(self, c: Call) -> None:
        self._link(c, None, c.args[0], None, c.args[1], "")

    def _sys_ioctl(self, c: Call) -> None:
        if self._touches(c) and ("FICLONE" in c.args[1] or "FIDEDUPE" in c.args[1]):
            raise Unmodeled(f"line {c.line}: {c.text[:300]}")

    def _sys_mmap(self, c: Call) -> None:
        if len(c.args) > 4 and "MAP_SHARED" in c.args[3] and "PROT_WRITE" in c.args[2]:
            fd, _ = fd_arg(c.args[4])
            if fd is not None and fd >= 0 and self._fd(c.args[4], c) is not None and self.fds[fd].ino is not None:
                raise Unmodeled(f"line {c.line}: writable shared mapping of a destination file: {c.text[:300]}")


UMASK = os.umask(0)
os.umask(UMASK)


def parse(log_path: str, before: Tree, root: str) -> tuple[list[Op], Recorder]:
    """The destination's operations in the log, replayed on ``before`` (a scan of ``root`` taken
    before the run; it is changed in place to the tree after the run)."""
    rec = Recorder(before, root)
    for c in calls(log_path):
        rec.feed(c)
    return rec.ops, rec


def record(argv: list[str], log_path: str, *, env: dict | None = None, cwd: str | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``argv`` under strace; fails loudly if strace is missing or the command fails."""
    if not os.access(STRACE, os.X_OK):
        raise RuntimeError(f"{STRACE} not found: the power-loss harness needs strace (apt-get install strace)")
    cmd = [STRACE, "-f", "-qq", "-y", "-xx", "-s", str(1 << 26), "-o", log_path, "-e", f"trace={TRACE_SET}", *argv]
    cp = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False)
    if cp.returncode != 0:
        raise RuntimeError(f"traced command exited {cp.returncode}: {cp.stderr[-3000:]}")
    return cp


def push_argv(src: str, dst: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "drsync", "push", "--json", *extra, src, dst]
