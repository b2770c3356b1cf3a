"""directio.WriteBehind and thread_buffers: the pieces of a big local copy that are not the copy."""

from __future__ import annotations

import errno
import threading

import pytest

from drsync import directio


class _Out:
    def __init__(self, fail_at: int | None = None):
        self.got: list[tuple[str, bytes, int]] = []
        self.fail_at = fail_at

    def write(self, data, pos):
        if pos == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.got.append((threading.current_thread().name, bytes(data), pos))


def test_chunks_are_written_in_order_on_a_helper_thread():
    out = _Out()
    with directio.WriteBehind(out) as behind:
        for i in range(5):
            behind.write(memoryview(bytes([i]) * 3), 3 * i)
    assert [(data, pos) for _, data, pos in out.got] == [(bytes([i]) * 3, 3 * i) for i in range(5)]
    assert {name for name, _, _ in out.got} == {"drsync-write-behind"}
    assert not behind._thread.is_alive()


def test_a_failed_write_is_raised_in_the_caller_and_the_thread_ends():
    out = _Out(fail_at=6)
    with pytest.raises(OSError) as err:
        with directio.WriteBehind(out) as behind:
            for i in range(5):
                behind.write(memoryview(b"abc"), 3 * i)
    assert err.value.errno == errno.ENOSPC
    assert [pos for _, _, pos in out.got] == [0, 3]  # nothing after the failed chunk was written
    assert not behind._thread.is_alive()


def test_threads_never_share_a_buffer():
    mine = directio.thread_buffers(1 << 16)
    assert directio.thread_buffers(1 << 16) is mine  # reused from file to file
    other = []
    t = threading.Thread(target=lambda: other.append(directio.thread_buffers(1 << 16)))
    t.start()
    t.join()
    assert other[0][0].obj is not mine[0].obj and other[0][1].obj is not mine[1].obj
    assert mine[0].obj is not mine[1].obj
