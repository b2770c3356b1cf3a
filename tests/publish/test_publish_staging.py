"""A local destination builds a new version's links in staging while its files arrive
(Receiver.stage_versions): the links really are made during the transfer, each version is built
once, and a session closed before publishing leaves no thread writing and nothing visible."""

from __future__ import annotations

import os
import threading

import invariants
import treegen
from planwatch import watch_stage_and_plan

import drsync
from drsync import publish, staging
from drsync.events import Events
from drsync.fsutil import Dir
from drsync.transports.local import LocalNode

SHAPE = treegen.Shape(datasets=1, variables=3, files=20, versions=3, changed=0.2, added=4, removed=0)


def test_links_are_made_while_the_files_arrive(tmp_path, monkeypatch):
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    dst = str(tmp_path / "b")
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[0])).exit_code == 0
    before = invariants.snapshot(dst)
    linked = threading.Event()
    seen = {"waited": None}
    real_symlink, real_fill = Dir.symlink, publish.Receiver._fill

    def symlink(self, target, name):
        if threading.current_thread().name != "MainThread":
            linked.set()
        return real_symlink(self, target, name)

    def fill(self, *args, **kwargs):
        # the first file batch waits for a link made by another thread: without staging in the
        # background no link exists before the files are in, and this wait times out
        if seen["waited"] is None:
            seen["waited"] = linked.wait(10)
        return real_fill(self, *args, **kwargs)

    monkeypatch.setattr(Dir, "symlink", symlink)
    monkeypatch.setattr(publish.Receiver, "_fill", fill)
    assert drsync.push(src, dst).exit_code == 0
    assert seen["waited"] is True
    invariants.check(src, dst, before)
    invariants.check_converged(src, dst)


def test_each_version_is_built_once(tmp_path, monkeypatch):
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    dst = str(tmp_path / "b")
    built = []
    real = staging.link_tasks

    def tasks(staging, versions, drs, dirs, *rest):
        built.extend((v, threading.current_thread().name) for v, _ in versions)
        return real(staging, versions, drs, dirs, *rest)

    monkeypatch.setattr(staging, "link_tasks", tasks)
    assert drsync.push(src, dst).exit_code == 0
    assert sorted(v for v, _ in built) == sorted(ds.versions)  # one job for all of them
    invariants.check_converged(src, dst)


def test_the_waiting_thread_helps_with_the_links(tmp_path, monkeypatch):
    """Once the files are in, publish_version takes variable directories too: links are made by
    the staging thread and by the main thread."""
    src = str(tmp_path / "a")
    treegen.make_node(src, treegen.Shape(datasets=1, variables=8, files=30, versions=1, added=0, removed=0))
    dst = str(tmp_path / "b")
    makers = set()
    real = Dir.symlink
    gate = threading.Event()

    def symlink(self, target, name):
        if target.startswith("../../files/"):  # a version's link (not the new `latest`)
            me = threading.current_thread().name
            first = not makers
            makers.add(me)
            if me == "drsync-staging" and first:
                gate.wait(10)  # hold the staging thread until the main thread has made a link too
            elif me != "drsync-staging":
                gate.set()
        return real(self, target, name)

    monkeypatch.setattr(Dir, "symlink", symlink)
    assert drsync.push(src, dst).exit_code == 0
    assert makers >= {"MainThread", "drsync-staging"}
    invariants.check_converged(src, dst)


def test_links_come_in_tasks_of_at_most_link_task_taking_the_variables_in_turn(tmp_path, monkeypatch):
    """A variable directory larger than LINK_TASK is split, so that the thread that waits for the
    staging shares the last links instead of waiting for a whole directory; the directories are
    taken in turn, so that two threads rarely add to one directory at once."""
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)  # 3 variables; 20 to 28 links each
    dst = str(tmp_path / "b")
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[0])).exit_code == 0
    before = invariants.snapshot(dst)
    monkeypatch.setattr(staging, "LINK_TASK", 7)
    tasks = []
    real = staging.link_tasks

    def spy(*args, **kwargs):
        for task in real(*args, **kwargs):
            _, name, part, _, _ = task.__defaults__  # (vdir, name, part, linked, prev_v)
            tasks.append((name, len(part)))
            yield task

    monkeypatch.setattr(staging, "link_tasks", spy)
    assert drsync.push(src, dst).exit_code == 0
    new = ds.versions[1:]
    sizes = {v: {} for v in new}
    for v in new:
        for name in os.listdir(os.path.join(src, ds.drs, f"v{v}")):
            sizes[v][name] = len(os.listdir(os.path.join(src, ds.drs, f"v{v}", name)))
    expected = []
    for v in new:  # chunk 0 of every variable, then chunk 1, ...
        expected += [(name, min(7, sizes[v][name] - i)) for i, name in sorted((i, name) for name, n in sizes[v].items()
                                                                    for i in range(0, n, 7))]
    assert tasks == expected
    assert max(n for _, n in tasks) == 7 and len(tasks) > 3 * len(new)
    invariants.check(src, dst, before)
    invariants.check_converged(src, dst)


def test_a_session_closed_before_publishing_stops_staging(tmp_path):
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    dst = str(tmp_path / "b")
    rel = os.path.relpath(ds.path, src)
    node = LocalNode(src, drsync.Options(), Events())
    sman = node.source_manifest(rel, save=False)
    dnode = LocalNode(dst, drsync.Options(wait=False), Events())
    session = dnode.open_destination(rel)
    session.stage([(v, sman.entries(v)) for v in ds.versions])
    session.close()
    assert not [t for t in threading.enumerate() if t.name == "drsync-staging"]
    # nothing visible, and what staging built is gone with the session (not left for a next run)
    for where in (os.path.join(dst, rel), os.path.join(dst, rel, ".drsync", "staging")):
        assert not [n for n in os.listdir(where) if n.startswith("v")], where
    # the lock was released after the thread stopped: a new session opens without waiting, and
    # the push after it publishes everything
    dnode.open_destination(rel).close()
    node.close()
    dnode.close()
    assert drsync.push(src, dst).exit_code == 0
    invariants.check_converged(src, dst)


def test_the_links_are_staged_before_the_files_to_send_are_planned(tmp_path, monkeypatch):
    """sync._stage_early: the receiver gets the new versions' entries as soon as the indexes name
    them, once; the plan's file list is worked out after that."""
    from drsync.transports.local import LocalDestination

    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    dst = str(tmp_path / "b")
    assert drsync.push(src, dst, drsync.Options(up_to=ds.versions[0])).exit_code == 0
    events = watch_stage_and_plan(monkeypatch, LocalDestination)
    assert drsync.push(src, dst).exit_code == 0
    new = tuple(ds.versions[1:])
    assert events == [("stage", new), ("plan", new)]
    invariants.check_converged(src, dst)

    # nothing to add: nothing staged; a conflicting version: nothing staged, nothing published
    events.clear()
    assert drsync.push(src, dst).exit_code == 0
    assert events == [("plan", ())]
    other = str(tmp_path / "c")
    treegen.make_node(other, treegen.Shape(datasets=1, variables=3, files=20, versions=3, changed=0.2, added=4,
                                           removed=0, seed=7))
    before = invariants.snapshot(dst)
    events.clear()
    assert drsync.push(other, dst).exit_code != 0
    assert [e for e in events if e[0] == "stage"] == []
    invariants.check(src, dst, before)
