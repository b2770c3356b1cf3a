"""Over ssh, the links of a big new version are made by a child that the agent forks before it parses
the dest_stage message (agent/server.py `_fork_stage`, staging_fork.py). The child parses the same
bytes itself, and the agent shares the tasks once its files are in. These tests check four things:
the tree is the one the thread builds; a child that fails leaves the version to the agent; a stage
of several versions goes to the thread; the child holds none of the agent's streams. And the
promises of DESIGN §4 and §8 with a child at work: an agent killed mid-run publishes nothing and
its child stops, and bad rows are refused with nothing written."""

from __future__ import annotations

import os
import sys
import time

import invariants
import pytest
import treegen

import drsync
from drsync import manifest as mf
from drsync.errors import UnsafeInputError

SHAPE = treegen.Shape(datasets=1, variables=4, files=30, versions=3, changed=0.2, added=5, removed=0)

# The agent, with every version forked for (FORK_LINKS), and each shared link's maker noted in MAKERS:
# its pid, whether it is the agent (the process sshd started) or its child, and what its stdout is; and
# each child forked ("fork").
AGENT = """
import errno, os, sys
import drsync.staging as s, drsync.staging_fork as f
f.FORK_LINKS = {fork_links}
AGENT_PID = os.getpid()
real = s._share_or_symlink

def noted(prev, nd, target, file):
    fd = os.open({makers!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        who = "agent" if os.getpid() == AGENT_PID else "child"
        os.write(fd, f"{{who}} {{os.getpid()}} {{os.readlink('/proc/self/fd/1')}}\\n".encode())
    finally:
        os.close(fd)
    if {fail!r} and who == "child":
        raise OSError(errno.EIO, "Input/output error", file)
    return real(prev, nd, target, file)

s._share_or_symlink = noted
forked = f.ForkedStaging.__init__

def fork(self, *args, **kwargs):
    forked(self, *args, **kwargs)
    with open({makers!r}, "a") as out:
        out.write(f"fork {{self.pid}} -\\n")

f.ForkedStaging.__init__ = fork
sys.argv = ["drsync", "agent"]
from drsync.cli import run
run()
"""


def _agent(tmp_path, *, fork_links: int = 1, fail: bool = False, env: str = "") -> tuple[str, str]:
    """The agent command (``env``: variables it runs with) and its MAKERS file."""
    makers = str(tmp_path / f"makers-{fork_links}-{fail}")
    script = tmp_path / f"agent-{fork_links}-{fail}.py"
    script.write_text(AGENT.format(fork_links=fork_links, makers=makers, fail=fail))
    return f"{'env ' + env + ' ' if env else ''}{sys.executable} {script}", makers


def _makers(path: str) -> list[tuple[str, int, str]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(who, int(pid), out) for who, pid, out in (line.split(" ", 2) for line in f.read().splitlines())]


def _pair(tmp_path, backend: str):
    src = str(tmp_path / "a")
    [ds] = treegen.make_node(src, SHAPE)
    remote = str(tmp_path / "b")
    opts = drsync.Options(up_to=ds.versions[0], ssh_backend=backend, drsync_path=f"{sys.executable} -m drsync")
    assert drsync.push(src, f"drsync-test:{remote}", opts).exit_code == 0
    return src, remote, ds


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_the_agents_child_builds_the_tree_the_thread_builds(tmp_path, sshd_server, ssh_client_env, backend):
    src, remote, ds = _pair(tmp_path, backend)
    agent, makers = _agent(tmp_path)
    for v in ds.versions[1:]:  # one new version per run: what is forked for
        r = drsync.push(src, f"drsync-test:{remote}", drsync.Options(up_to=v, ssh_backend=backend, drsync_path=agent))
        assert r.exit_code == 0, [e.line() for e in r.errors]
    noted = _makers(makers)
    assert len([who for who, _, _ in noted if who == "fork"]) == len(ds.versions) - 1
    assert "child" in {who for who, _, _ in noted}, "no link was made by a child of the agent"
    # the child holds none of the agent's streams (the ssh channel): its stdout is /dev/null
    assert {out for who, _, out in noted if who == "child"} == {os.devnull}
    assert os.devnull not in {out for who, _, out in noted if who == "agent"}
    invariants.check_converged(src, remote)
    threaded_agent, threaded_makers = _agent(tmp_path, fork_links=10**9)
    threaded = str(tmp_path / "threaded")
    for v in ds.versions:
        opts = drsync.Options(up_to=v, ssh_backend=backend, drsync_path=threaded_agent)
        assert drsync.push(src, f"drsync-test:{threaded}", opts).exit_code == 0
    assert {who for who, _, _ in _makers(threaded_makers)} == {"agent"}
    assert invariants.shape_of(remote) == invariants.shape_of(threaded)
    rel = os.path.relpath(ds.path, src)
    assert os.listdir(os.path.join(remote, rel, ".drsync", "staging")) == []


def test_a_child_that_fails_leaves_the_version_to_the_agent(tmp_path, sshd_server, ssh_client_env):
    src, remote, ds = _pair(tmp_path, "asyncssh")
    before = invariants.snapshot(remote)
    agent, makers = _agent(tmp_path, fail=True)
    r = drsync.push(src, f"drsync-test:{remote}", drsync.Options(up_to=ds.versions[1], drsync_path=agent))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert {who for who, _, _ in _makers(makers)} == {"fork", "child", "agent"}  # tried by the child, made by the agent
    invariants.check(src, remote, before)
    assert drsync.push(src, f"drsync-test:{remote}", drsync.Options(drsync_path=agent)).exit_code == 0
    invariants.check_converged(src, remote)


def test_two_new_versions_in_one_stage_go_to_the_thread(tmp_path, sshd_server, ssh_client_env):
    """The child takes one version: for a stage of two the agent forks none, and its thread builds them."""
    src, remote, ds = _pair(tmp_path, "asyncssh")
    agent, makers = _agent(tmp_path)
    r = drsync.push(src, f"drsync-test:{remote}", drsync.Options(drsync_path=agent))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    assert r.plan.datasets[0].versions_to_add == tuple(ds.versions[1:])
    assert {who for who, _, _ in _makers(makers)} == {"agent"}  # no fork, no child
    invariants.check_converged(src, remote)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except FileNotFoundError:
        return False


def test_an_agent_killed_with_its_child_at_work_publishes_nothing(tmp_path, sshd_server, ssh_client_env):
    """The agent dies right after flushing the files, its child still making links (each task slowed
    to 1 s): nothing visible changed, the orphaned child stops within a task or two instead of
    linking on, and the next run gets the dataset's lock and converges."""
    src, remote, ds = _pair(tmp_path, "asyncssh")
    before = invariants.snapshot(remote)
    agent, makers = _agent(tmp_path, env="DRSYNC_FAULT_SLOW=staging:1 DRSYNC_FAULT=after_fsync:1")
    r = drsync.push(src, f"drsync-test:{remote}", drsync.Options(up_to=ds.versions[1], drsync_path=agent, retries=0))
    assert r.exit_code == 5, [e.line() for e in r.errors]
    children = {pid for who, pid, _ in _makers(makers) if who == "fork"}
    assert len(children) == 1
    [child] = children
    invariants.check(src, remote, before)  # no version, no `latest` moved, by the agent or its child
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the orphaned child linked on"
    made = len(_makers(makers))
    time.sleep(0.5)
    assert len(_makers(makers)) == made  # and made no link after
    r = drsync.push(src, f"drsync-test:{remote}", drsync.Options(drsync_path=f"{sys.executable} -m drsync"))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    invariants.check_converged(src, remote)


def test_bad_rows_in_a_forked_for_stage_are_refused_and_write_nothing(tmp_path, sshd_server, ssh_client_env):
    """A dest_stage whose rows name a file outside the dataset (``..``): the agent forks for it (the
    bytes look like one big version) and refuses it with the unsafe-input error; its child declines
    the same rows and makes no link; nothing is left in staging and the next run converges."""
    from drsync import Options as O
    from drsync.events import Events
    from drsync.transports.remote import RemoteNode

    src, remote, ds = _pair(tmp_path, "asyncssh")
    before = invariants.snapshot(remote)
    agent, makers = _agent(tmp_path)
    drs = os.path.relpath(ds.path, src)
    new = ds.versions[1]
    bad = [mf.Entry("tas", f"../../../evil_{i}", f"tas_{new}", 1, 0, "0" * 32) for i in range(3)]
    node = RemoteNode(f"drsync-test:{remote}", O(drsync_path=agent, retries=0), Events())
    try:
        session = node.open_destination(drs)
        session.stage([(new, bad)])
        with pytest.raises(UnsafeInputError):
            session._staged()  # the stage's answer, as the next request reads it
        session.close()
    finally:
        node.close()
    assert [who for who, _, _ in _makers(makers)] == ["fork"]  # forked for; no link by anyone
    invariants.check(src, remote, before)
    assert os.listdir(os.path.join(remote, drs, ".drsync", "staging")) == []
    assert not any("evil" in name for _, _, names in os.walk(tmp_path) for name in names)
    r = drsync.push(src, f"drsync-test:{remote}", drsync.Options(drsync_path=agent))
    assert r.exit_code == 0, [e.line() for e in r.errors]
    invariants.check_converged(src, remote)
