"""Big files reach the receiver around the page cache (drsync/directio.py), and the same bytes
arrive when the filesystem refuses that. What shows it: after a transfer, `fincore` (util-linux)
finds none of a received big file's pages in the page cache, except its unaligned tail."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

import drsync
import invariants
import treegen
from drsync import directio

AGENT = f"{sys.executable} -m drsync"
SIZE = (5 << 20) + 123  # 5 MiB of aligned chunks, then a tail that must go through the page cache
SHAPE = treegen.Shape(datasets=1, variables=1, files=2, versions=1, added=0, removed=0, size=SIZE)


@pytest.fixture
def disk_tmp(tmp_path):
    """A scratch directory on a disk filesystem: on tmpfs every page is a page-cache page."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], check=True, capture_output=True, text=True).stdout
    if kind.strip() != "tmpfs":
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="drsync-direct-", dir=os.getcwd())
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", d], check=False)


def _cached_bytes(path: str) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", path],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def _received(node: str) -> list[str]:
    got = []
    for dirpath, _, names in os.walk(node):
        if os.path.basename(os.path.dirname(dirpath)) == "files":
            got += [os.path.join(dirpath, n) for n in names]
    assert len(got) == SHAPE.files, got
    return got


def _check(src: str, dst: str, *, direct: bool) -> None:
    for path in _received(dst):
        cached = _cached_bytes(path)  # before anything here reads the file
        if direct:
            assert cached <= directio.ALIGN, f"{cached} bytes of {path} went through the page cache"
        else:
            assert cached >= os.path.getsize(path), cached  # whole pages
    invariants.check_converged(src, dst)


def test_local_push_writes_big_files_around_the_page_cache(disk_tmp):
    src, dst = os.path.join(disk_tmp, "src"), os.path.join(disk_tmp, "dst")
    treegen.make_node(src, SHAPE)
    r = drsync.push(src, dst)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    _check(src, dst, direct=True)


def test_refused_direct_io_copies_through_the_page_cache(disk_tmp, monkeypatch):
    monkeypatch.setattr(directio, "_set_direct", lambda fd, on: False)
    src, dst = os.path.join(disk_tmp, "src"), os.path.join(disk_tmp, "dst")
    treegen.make_node(src, SHAPE)
    r = drsync.push(src, dst)
    assert r.exit_code == 0, [e.line() for e in r.errors]
    _check(src, dst, direct=False)


def test_unaligned_memory_falls_back_mid_file(disk_tmp):
    """EINVAL from a direct write (memory the filesystem cannot take directly) is not an error: that
    chunk and the rest go through the page cache."""
    path = os.path.join(disk_tmp, "f")
    data = os.urandom(3 * directio.ALIGN)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        out = directio.Writer(fd, directio.MIN_SIZE)
        assert out.direct
        first = directio.aligned_buffer(directio.ALIGN)
        first[:] = data[:directio.ALIGN]
        out.write(first, 0)
        assert out.direct
        odd = directio.aligned_buffer(3 * directio.ALIGN)[1:1 + 2 * directio.ALIGN]  # one byte off: no
        odd[:] = data[directio.ALIGN:]  # filesystem takes it directly (a bytes object could be aligned by chance)
        out.write(odd, directio.ALIGN)
        assert not out.direct
    finally:
        os.close(fd)
    assert _cached_bytes(path) == 2 * directio.ALIGN  # the first page went around the cache
    with open(path, "rb") as f:
        assert f.read() == data


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_ssh_push_and_pull_write_big_files_around_the_page_cache(disk_tmp, sshd_server, ssh_client_env,
                                                                  backend):
    opts = drsync.Options(ssh_backend=backend, drsync_path=AGENT)
    src, remote, back = (os.path.join(disk_tmp, n) for n in ("src", "remote", "back"))
    treegen.make_node(src, SHAPE)
    r = drsync.push(src, f"drsync-test:{remote}", opts)  # the agent receives
    assert r.exit_code == 0, [e.line() for e in r.errors]
    _check(src, remote, direct=True)
    r = drsync.pull(f"drsync-test:{remote}", back, opts)  # the client receives
    assert r.exit_code == 0, [e.line() for e in r.errors]
    _check(src, back, direct=True)
