"""FAULTS D6 in the suite: a small power-loss exploration (the full one is tests/powercut/powercut.py).

A push of one new version is traced with strace; every crash state of the persistence model
(tests/powercut/crashstates.py) must pass the checker; and the same trace with its barriers removed
must not, which shows that the model and the oracle can catch an unsafe ordering.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import crashstates as cs
import explore
import pytest
import tracelog
import treegen

SHAPE = treegen.Shape(datasets=1, variables=3, files=4, versions=3, changed=0.25, added=2, removed=0, size=5000,
                      seed=3)


@pytest.fixture(scope="module")
def traced():
    assert os.access(tracelog.STRACE, os.X_OK), (
        f"{tracelog.STRACE} is missing: the power-loss tests need strace (apt-get install strace)")
    work = tempfile.mkdtemp(prefix="drsync-powercut-test-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = explore.harness_env()["PYTHONPATH"]  # check_converged's drsync runs
    try:
        yield explore.make_workload(work, "small", SHAPE, published=2)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
        shutil.rmtree(work, ignore_errors=True)


def test_trace_has_the_publish_protocol_shape(traced):
    ops = traced.ops
    kinds = [o.kind for o in ops]
    assert "syncfs" in kinds and "fsync" in kinds
    parts = [o for o in ops if o.kind == "creat" and "/.drsync/partial/" in o.path]
    writes = {o.ino for o in ops if o.kind == "write"}
    assert parts and all(p.ino in writes for p in parts), "partials created and written"
    into_files = [o for o in ops if o.kind == "rename" and "/.drsync/partial/" in o.path and "/files/" in o.path2]
    # a new version's files directories are made in partial/ and each is renamed into files/ whole
    assert {p.parent for p in parts} == {o.ino for o in into_files}
    assert len(parts) == traced.new_files
    (vrename,) = [o for o in ops if o.kind == "rename" and o.phase == explore.PHASES[5]]
    links = [o for o in ops if o.kind == "symlink" and o.phase == explore.PHASES[4]]
    # the links are built in staging on a thread while the files arrive (the two interleave);
    # one syncfs after both the last link and the last file's rename, before the version's rename
    last = max(o.index for o in links + into_files)
    assert links and last < vrename.index
    assert any(o.kind == "syncfs" for o in ops[last:vrename.index]), \
        "a syncfs between the last staged link or renamed file and the version's rename"
    (latest,) = [o for o in ops if o.kind == "rename" and o.path2.endswith("/latest")]
    assert latest.index > vrename.index
    assert all(o.phase in explore.PHASES for o in ops)
    # replaying every traced op on the tree before the run gives the tree the push really left
    h = cs.Hasher()
    replayed = cs.replay(cs.base_state(traced.before_tree), ops, range(len(ops)))
    assert h(replayed) == h(cs.base_state(tracelog.Tree.scan(traced.dst)))


def test_every_crash_state_passes_the_checker(traced):
    fig = explore.explore(traced, seed=1, randoms=2, drop_cap=12, converge_budget=3)
    assert fig.failed_states == 0, fig.failure_examples
    assert fig.converge_runs == 3 and fig.converge_failures == 0, fig.converge_examples
    for phase in explore.PHASES:
        assert fig.points[phase] > 0 and fig.in_phase[phase] > 0, f"no crash state in phase {phase}: {fig.points}"


def test_without_barriers_the_checker_fails(traced):
    """The harness can fail: with no fsync/syncfs nothing is durable, and a state where the new
    version (or a file of it) is visible while its data was lost must be caught."""
    unsafe = explore.without_barriers(traced.ops)
    assert not any(o.barrier for o in unsafe)
    fig = explore.explore(traced, ops=unsafe, seed=1, randoms=1, drop_cap=4)
    assert fig.failed_states > 0
    assert fig.failures["I1"] > 0, fig.failures  # a link of the new version to lost data
    assert fig.failures["I3"] > 0, fig.failures  # a file in files/ with lost data


def _feed(tmp_path, lines: list[str]):
    root = tmp_path / "dst"
    root.mkdir(exist_ok=True)
    log = tmp_path / "log"
    log.write_text("\n".join(lines) + "\n")
    return tracelog.parse(str(log), tracelog.Tree.scan(str(root)), str(root))


def _hex(s: str) -> str:
    return "".join(f"\\x{b:02x}" for b in s.encode())


def test_unfinished_and_resumed_halves_are_joined(tmp_path):
    d = _hex(str(tmp_path / "dst"))
    ops, _ = _feed(tmp_path, [
        f'10 openat(AT_FDCWD<{_hex(str(tmp_path))}>, "{_hex("dst")}", O_RDONLY|O_DIRECTORY) = 3<{d}>',
        f'11 mkdirat(3<{d}>, "{_hex("a")}", 0755 <unfinished ...>',
        f'10 symlinkat("{_hex("x")}", 3<{d}>, "{_hex("l")}") = 0',
        '11 <... mkdirat resumed>) = 0',
        f'10 fsync(3<{d}>) = 0',
    ])
    assert [o.kind for o in ops] == ["symlink", "mkdir", "fsync"]
    assert ops[1].path == "a" and ops[0].target == "x"



def test_a_flush_is_placed_where_it_started(tmp_path):
    """A link another thread made while a syncfs ran may have missed the flush: the syncfs is
    ordered before it (where it started), so the model never counts that link as flushed."""
    d = _hex(str(tmp_path / "dst"))
    ops, _ = _feed(tmp_path, [
        f'10 openat(AT_FDCWD<{_hex(str(tmp_path))}>, "{_hex("dst")}", O_RDONLY|O_DIRECTORY) = 3<{d}>',
        '10 syncfs(3<' + d + '> <unfinished ...>',
        f'11 symlinkat("{_hex("x")}", 3<{d}>, "{_hex("l")}") = 0',
        '10 <... syncfs resumed>) = 0',
    ])
    assert [o.kind for o in ops] == ["syncfs", "symlink"]


def test_a_close_is_placed_where_it_started(tmp_path):
    """The kernel frees a descriptor's number as close() begins: another thread's open may return
    the same number before that close returns, and the calls on it name the new directory."""
    d = _hex(str(tmp_path / "dst"))
    a, b = f"{d}/{_hex('a')}", f"{d}/{_hex('b')}"
    ops, _ = _feed(tmp_path, [
        f'10 openat(AT_FDCWD<{_hex(str(tmp_path))}>, "{_hex("dst")}", O_RDONLY|O_DIRECTORY) = 3<{d}>',
        f'10 mkdirat(3<{d}>, "{_hex("a")}", 0755) = 0',
        f'10 mkdirat(3<{d}>, "{_hex("b")}", 0755) = 0',
        f'10 openat(3<{d}>, "{_hex("a")}", O_RDONLY|O_DIRECTORY) = 4<{a}>',
        f'10 close(4<{a}> <unfinished ...>',
        f'11 openat(3<{d}>, "{_hex("b")}", O_RDONLY|O_DIRECTORY) = 4<{b}>',
        '10 <... close resumed>) = 0',
        f'11 mkdirat(4<{b}>, "{_hex("c")}", 0755) = 0',
    ])
    assert [(o.kind, o.path) for o in ops] == [("mkdir", "a"), ("mkdir", "b"), ("mkdir", "b/c")]


def test_an_unmodelled_call_on_the_destination_fails_loudly(tmp_path):
    d = _hex(str(tmp_path / "dst"))
    with pytest.raises(tracelog.Unmodeled, match="fallocate"):
        _feed(tmp_path, [
            f'10 openat(AT_FDCWD<{d}>, "{_hex("f")}", O_WRONLY|O_CREAT|O_EXCL, 0600) = 4<{d}/{_hex("f")}>',
            f'10 fallocate(4<{d}/{_hex("f")}>, 0, 0, 4096) = 0',
        ])


def test_the_new_latest_link_is_flushed_before_it_is_published(traced):
    """Regression, found by this harness (docs/powerloss.md): the new `latest` link was made after
    the version's syncfs, renamed over `latest`, and only the dataset directory was fsynced. On a
    file system without a journal a directory fsync does not write a new child's inode, so a
    power cut could leave `latest` naming an unwritten inode (fsck removes it: I2). No published
    entry may be durable before the inode it names."""
    dur = cs.durable_at(traced.ops)
    exposed = [f"{explore.describe(e)} durable at #{start}, inode of {explore.describe(c)} unflushed"
               for e, c, start, _ in cs.inode_exposures(traced.ops, dur)]
    assert exposed == []
