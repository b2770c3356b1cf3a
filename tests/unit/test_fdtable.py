"""The descriptor table is grown once, before a run's threads start (drsync/fdtable.py): growing it
later, one doubling at a time in a threaded process, waits for an RCU grace period each time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import drsync
from drsync import fdtable


FDSIZE = """
def fdsize(pid="self"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("FDSize:"):
            return int(line.split()[1])
"""


def _run(code: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", FDSIZE + textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_reserve_grows_the_table_once_and_leaves_no_descriptor():
    before, got, after, again, opened = _run("""
        import os
        from drsync import fdtable
        before, fds = fdsize(), sorted(os.listdir("/proc/self/fd"))
        got = fdtable.reserve()
        print(before, got, fdsize(), fdtable.reserve(), sorted(os.listdir("/proc/self/fd")) == fds)
    """)
    # (``before`` is 64 or 256 slots in a new interpreter, unless this test process had a descriptor
    # above 255 open when it forked: a table's size survives fork and exec, so it is not asserted)
    assert (int(got), int(after)) == (fdtable.ROOM - 1, fdtable.ROOM)
    assert int(again) == 0  # once per process
    assert opened == "True"


def test_a_lower_open_file_limit_is_respected():
    before, got, size = _run("""
        import resource
        from drsync import fdtable
        before = fdsize()
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        print(before, fdtable.reserve(), fdsize())
    """)
    # 1023 and 511 are above the limit (a table inherited larger stays larger: see above)
    assert (int(got), int(size)) == (255, max(256, int(before)))


def test_a_descriptor_in_use_is_never_touched():
    before, got, same = _run("""
        import os, resource
        from drsync import fdtable
        before = fdsize()
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        os.dup2(os.open("/", os.O_RDONLY), 255)  # where reserve would dup to: dup2 would close it
        st = os.fstat(255)
        got = fdtable.reserve()
        print(before, got, os.fstat(255).st_ino == st.st_ino and fdsize() == max(512, before))
    """)
    assert (int(got), same) == (256, "True")  # the lowest free descriptor above it


def test_the_agent_has_its_table_before_it_greets():
    """The remote half: `drsync agent` reserves in run(), before the threads it starts later."""
    p = subprocess.Popen([sys.executable, "-m", "drsync", "agent"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    try:
        assert p.stdout.readline().startswith(b"DRSYNC-AGENT/")
        status = dict(line.split(":", 1) for line in open(f"/proc/{p.pid}/status"))
        assert int(status["FDSize"]) == fdtable.ROOM
    finally:
        p.stdin.close()
        p.wait(timeout=60)


def test_a_library_run_reserves_before_it_transfers(nodes, monkeypatch):
    src, dst, _ = nodes
    calls = []
    monkeypatch.setattr(fdtable, "reserve", lambda *a: calls.append(os.getpid()) or 0)
    r = drsync.push(src, dst)
    assert r.exit_code == 0 and r.transferred.files > 0
    assert calls == [os.getpid()]


def test_the_room_holds_a_receivers_batch_with_plenty_to_spare():
    """A batch of partial files larger than the room made would grow the table again, mid-run."""
    from drsync.receive_files import BATCH_FILES

    assert fdtable.ROOM >= 2 * BATCH_FILES
