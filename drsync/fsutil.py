"""Confined file-system primitives: the one place that creates, renames, fsyncs and removes.

Every path below a node root is walked one component at a time from a held directory fd with
``O_NOFOLLOW``; creation uses ``O_EXCL``; renames use ``renameat2(RENAME_NOREPLACE)`` where a
replace would be unsafe. Nothing here follows a symlink while writing (DESIGN §8, FAULTS B).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator

# The C library is already loaded into the interpreter: look symbols up there rather than pay
# ctypes.util.find_library (which imports subprocess, shutil and tempfile: ~10 ms of start-up).
_libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE = 1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Test-only fault hook (FAULTS §7.4): DRSYNC_FAULT=<step>:<n> kills the process with
# os._exit(137) the n-th time the named step is reached. Read once; costs nothing when unset.
_FAULT = os.environ.get("DRSYNC_FAULT", "")
_fault_counts: dict[str, int] = {}
# Test-only too: DRSYNC_FAULT_SLOW=step,step:seconds sleeps at those steps, widening windows that
# last microseconds so that a randomly timed SIGKILL can land in them (the soak harness).
_SLOW_STEPS, _, _SLOW_FOR = os.environ.get("DRSYNC_FAULT_SLOW", "").partition(":")
_SLOW = frozenset(_SLOW_STEPS.split(",")) - {""}


def fault_point(step: str) -> None:
    """Die here if the test-only fault hook names this step (a black-box SIGKILL stand-in)."""
    if _SLOW and step in _SLOW:
        import time

        time.sleep(float(_SLOW_FOR or "0.1"))
    if not _FAULT:
        return
    name, _, nth = _FAULT.partition(":")
    if name != step:
        return
    count = _fault_counts.get(step, 0) + 1
    _fault_counts[step] = count
    if count == int(nth or "1"):
        os._exit(137)


def _check(ret: int, what: str, path: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


class Dir:
    """A directory held open by fd; every operation is relative to it and never follows a link."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path  # for messages only; never used to open anything

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open_root(cls, path: str, *, create: bool = False) -> Dir:
        """Open a node root given by the operator. The root itself may be a symlink (followed once,
        here, at start: FAULTS B7); nothing below it is ever followed."""
        if create:
            os.makedirs(path, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return cls(fd, path)

    def open_dir(self, name: str) -> Dir:
        fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        return Dir(fd, os.path.join(self.path, name))

    def walk_to(self, relpath: str, *, create: bool = False, mode: int = 0o755) -> Dir:
        """Open ``relpath`` below this directory, one component at a time, never following a
        symlink; with ``create`` make missing directories. Returns a new handle."""
        cur = Dir(os.dup(self.fd), self.path)
        for part in [p for p in relpath.split("/") if p]:
            try:
                nxt = cur.open_dir(part) if not create else cur.ensure_dir(part, mode)
            except BaseException:
                cur.close()
                raise
            cur.close()
            cur = nxt
        return cur

    def ensure_dir(self, name: str, mode: int = 0o755) -> Dir:
        """Open subdirectory ``name``, creating it if missing; a symlink there is an error (ELOOP)."""
        try:
            os.mkdir(name, mode, dir_fd=self.fd)
        except FileExistsError:
            pass
        return self.open_dir(name)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- reading ---------------------------------------------------------------------------
    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def try_lstat(self, name: str) -> os.stat_result | None:
        try:
            return self.lstat(name)
        except FileNotFoundError:
            return None

    def listdir(self) -> list[str]:
        return os.listdir(self.fd)

    def scandir(self) -> Iterator[os.DirEntry]:
        # scandir on an fd duplicates it internally; entries carry d_type without extra stats.
        with os.scandir(self.fd) as it:
            yield from it

    def readlink(self, name: str) -> str:
        return os.readlink(name, dir_fd=self.fd)

    def open_read(self, name: str) -> int:
        """Open a regular file for reading, refusing a symlink (ELOOP) or anything not regular."""
        return self.open_read_stat(name)[0]

    def open_read_stat(self, name: str) -> tuple[int, os.stat_result]:
        """open_read, with the fstat it checked the file with."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", os.path.join(self.path, name))
        return fd, st

    # -- writing ---------------------------------------------------------------------------
    def create_file(self, name: str, mode: int = 0o600) -> int:
        """Create a new file exclusively (``O_EXCL|O_NOFOLLOW``) and return its fd."""
        return os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd
        )

    def open_append(self, name: str) -> int:
        """Open an existing regular file for writing, never through a symlink."""
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", os.path.join(self.path, name))
        return fd

    def symlink(self, target: str, name: str) -> None:
        os.symlink(target, name, dir_fd=self.fd)

    def link_from(self, src: Dir, src_name: str, name: str) -> None:
        """Hard-link ``src/src_name`` as ``name`` here (never following a symlink at the source)."""
        os.link(src_name, name, src_dir_fd=src.fd, dst_dir_fd=self.fd, follow_symlinks=False)

    def rename(self, name: str, dst: Dir, dst_name: str, *, replace: bool = False) -> None:
        """Rename ``name`` to ``dst/dst_name`` atomically. Without ``replace`` an existing target is
        an error (EEXIST), even an empty directory, which POSIX rename would silently replace."""
        if replace:
            os.rename(name, dst_name, src_dir_fd=self.fd, dst_dir_fd=dst.fd)
            return
        ret = _libc.renameat2(self.fd, os.fsencode(name), dst.fd, os.fsencode(dst_name), RENAME_NOREPLACE)
        if ret != 0:
            err = ctypes.get_errno()
            if err in (errno.ENOSYS, errno.EINVAL):  # filesystem without RENAME_NOREPLACE
                if dst.try_lstat(dst_name) is not None:
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.path.join(dst.path, dst_name))
                os.rename(name, dst_name, src_dir_fd=self.fd, dst_dir_fd=dst.fd)
                return
            raise OSError(err, os.strerror(err), os.path.join(dst.path, dst_name))

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)

    def remove_tree(self, name: str) -> None:
        """Remove ``name`` (file, link or directory tree) without following any symlink: links are
        removed, never their targets (FAULTS B10)."""
        st = self.try_lstat(name)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            self.unlink(name)
            return
        try:
            sub = self.open_dir(name)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link meanwhile
                self.unlink(name)
                return
            raise
        with sub:
            for child in sub.listdir():
                sub.remove_tree(child)
        os.rmdir(name, dir_fd=self.fd)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def syncfs(self) -> None:
        """Flush the whole filesystem holding this directory: one call for a batch of files."""
        _check(_libc.syncfs(self.fd), "syncfs", self.path)

    def write_atomic(self, name: str, data: bytes, *, durable: bool = True, mode: int = 0o644) -> None:
        """Write ``name`` atomically: temp file in the same directory, write, fsync, rename,
        fsync the directory (the one crash-safe write primitive: STYLE habit 6)."""
        tmp = f".{name}.tmp{os.getpid()}"
        try:
            self.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = self.create_file(tmp, mode)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            try:
                self.unlink(tmp)
            except OSError:
                pass
            raise
        os.close(fd)
        self.rename(tmp, self, name, replace=True)
        if durable:
            self.fsync()

    def read_bytes(self, name: str) -> bytes:
        fd = self.open_read(name)
        try:
            chunks = []
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks)
        finally:
            os.close(fd)


def pwrite_all(fd: int, data, pos: int) -> None:
    """Write all of ``data`` at offset ``pos`` of ``fd`` (pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        pos += n
        view = view[n:]


def copy_fd(src: int, dst: int, size: int, offset: int = 0) -> None:
    """Copy bytes ``[offset, size)`` of ``src`` to the same offsets of ``dst`` with the kernel's
    fast path (``copy_file_range``, then ``sendfile``), falling back to read/write."""
    pos = offset
    try:
        while pos < size:
            n = os.copy_file_range(src, dst, size - pos, pos, pos)
            if n == 0:
                break
            pos += n
        if pos >= size:
            return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    os.lseek(dst, pos, os.SEEK_SET)
    while pos < size:
        n = os.sendfile(dst, src, pos, min(size - pos, 1 << 24))
        if n == 0:
            break
        pos += n
    if pos != size:
        raise OSError(errno.EIO, f"short copy: {pos} of {size} bytes (source shrank)")
