"""Helpers shared by the transport tests: transports as node-spec factories, CLI runs, trees and
processes below the test sshd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import drsync

PY = sys.executable
AGENT = f"{PY} -m drsync"
ALIAS = "drsync-test"
BACKENDS = ["asyncssh", "paramiko"]
TRANSPORTS = ["local", *BACKENDS]


@dataclass
class Transport:
    """How one transport names a destination, which Options and CLI flags it needs, and the env."""

    name: str
    options: drsync.Options
    cli: list[str] = field(default_factory=list)
    env: dict = field(default_factory=lambda: dict(os.environ))

    @property
    def remote(self) -> bool:
        return self.name != "local"

    def node(self, path) -> str:
        """A local destination path as this transport's node spec."""
        path = os.path.abspath(str(path))
        return f"{ALIAS}:{path}" if self.remote else path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``drsync <command> <this transport's flags> <args...>`` in a subprocess."""
        command, rest = args[0], list(args[1:])
        return subprocess.run([PY, "-m", "drsync", command, *self.cli, *rest], capture_output=True, text=True,
                              env=self.env, timeout=timeout, stdin=subprocess.DEVNULL)

    def run_json(self, *args: str, timeout: float = 120) -> tuple[int, dict, str]:
        r = self.run(*args, "--json", timeout=timeout)
        try:
            doc = json.loads(r.stdout)
        except ValueError as e:
            raise AssertionError(f"not JSON (exit {r.returncode}): {r.stdout[-2000:]!r} {r.stderr[-2000:]!r}") from e
        return r.returncode, doc, r.stderr


def make_transport(name: str, home=None) -> Transport:
    if name == "local":
        return Transport(name, drsync.Options())
    return Transport(name, drsync.Options(ssh_backend=name, drsync_path=AGENT),
                     ["--ssh-backend", name, "--drsync-path", AGENT], dict(os.environ, HOME=str(home)))


def ssh_env(home) -> dict:
    return dict(os.environ, HOME=str(home))


def run_cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "drsync", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def spied_cli(script: str, args: list[str], *, with_stderr: bool = False):
    """Run ``script`` (a Python program that spies on a `drsync` command and prints one JSON line
    last) with the command's ``args``; that JSON (and the command's stderr, ``with_stderr``)."""
    r = subprocess.run([PY, "-c", script, *args], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    return (got, r.stderr) if with_stderr else got


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("drsync: error: ")]


def assert_one_error_line(stderr: str) -> str:
    """The whole of stderr is one ``drsync: error: ...`` line (no traceback, no noise)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("drsync: error: "), stderr
    return lines[0]


# --- trees --------------------------------------------------------------------------------------
def tree_diff(a, b) -> subprocess.CompletedProcess:
    return subprocess.run(["diff", "-r", "--no-dereference", "-x", ".drsync", str(a), str(b)],
                          capture_output=True, text=True)


def assert_identical(a, b) -> None:
    r = tree_diff(a, b)
    assert r.returncode == 0, f"trees differ:\n{r.stdout[-3000:]}{r.stderr[-1000:]}"


def listing(path, skip_state: bool = False) -> dict:
    """Every path below ``path``: type, link target, bytes, mode, mtime, inode (a write canary)."""
    out = {}
    path = str(path)
    if not os.path.lexists(path):
        return out
    for dirpath, dirnames, files in os.walk(path):
        if skip_state:
            dirnames[:] = [d for d in dirnames if d != ".drsync"]
        for name in sorted(dirnames + files):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, path)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                with open(p, "rb") as fh:
                    out[rel] = ("file", fh.read(), st.st_mode, st.st_mtime_ns, st.st_ino)
            else:
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
    return out


def real_file_inodes(node) -> dict[str, int]:
    """node-relative path -> st_ino of every regular file at DATASET/files/<dir>/<file>."""
    out = {}
    node = str(node)
    for dirpath, dirnames, files in os.walk(node):
        dirnames[:] = [d for d in dirnames if d != ".drsync"]
        for f in files:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, node)
            parts = rel.split(os.sep)
            if len(parts) >= 3 and parts[-3] == "files" and not os.path.islink(p):
                out[rel] = os.lstat(p).st_ino
    return out


def versions_at(ds_path) -> list[str]:
    return sorted(n[1:] for n in os.listdir(ds_path) if n.startswith("v") and n[1:].isdigit())


def latest_at(ds_path) -> str:
    return os.readlink(os.path.join(ds_path, "latest"))


def drop_newest_version(ds) -> str:
    """Remove a generated dataset's newest version (its v dir and the files/ dirs only it added)
    from the source and point ``latest`` back at the previous one."""
    v = ds.versions[-1]
    shutil.rmtree(os.path.join(ds.path, f"v{v}"))
    for d in os.listdir(os.path.join(ds.path, "files")):
        if d.rpartition("_")[2] == v:
            shutil.rmtree(os.path.join(ds.path, "files", d))
    tmp = os.path.join(ds.path, ".latest.tmp")
    os.symlink(f"v{ds.versions[-2]}", tmp)
    os.replace(tmp, os.path.join(ds.path, "latest"))
    return v


# --- processes below the test sshd -------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def descendants(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def _ssh_port_of(pid: int) -> int | None:
    """The server port of the SSH connection a process was started for (from SSH_CONNECTION)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"SSH_CONNECTION="):
            try:
                return int(item.split()[-1])
            except ValueError:
                return None
    return None


def agent_pids(server) -> list[int]:
    """The `drsync agent` processes started through the test sshd: its descendants, and agents
    orphaned when their session ended (still carrying SSH_CONNECTION naming the server's port)."""
    mine = set(descendants(server.pid)) if server.pid is not None else set()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        cmd = cmdline(pid).rstrip()
        if "drsync" not in cmd or not cmd.endswith(" agent") or not _alive(pid):
            continue
        if pid in mine or _ssh_port_of(pid) == server.port:
            out.append(pid)
    return out


def wait_agents_gone(server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while agent_pids(server):
        assert time.monotonic() < deadline, f"remote agents still running: {agent_pids(server)}"
        time.sleep(0.02)
