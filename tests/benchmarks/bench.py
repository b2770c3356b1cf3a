#!/usr/bin/env python3
"""drsync against `rsync -a` (and `cp -a`) on the DESIGN §9 workloads; writes docs/benchmarks.md + .png.

    python tests/benchmarks/bench.py [--quick] [--cases GLOB ...] [--runs N]

Not a test (pytest collects nothing in this directory). What it does, in one run:

* generates SMALL, LARGE and BIG (tests/treegen.py) into a fresh work dir under /tmp;
* starts a throwaway sshd on 127.0.0.1 (tests/sshd.py) and a temporary HOME whose ~/.ssh/config
  has the ``drsync-test`` alias; drsync (asyncssh and paramiko) and rsync (``-e "ssh -F ..."``)
  both use it;
* per case, runs the contenders alternately in the same run (A B C, B C A, ...), one warm-up round
  then N timed rounds, each run on its own fresh destination prepared outside the timing, with the
  source (and the destination) read just before the timed run so that it is in the page cache;
* records wall time (median and min), CPU (user+sys of the child tree, from os.wait4), the client's
  peak RSS (wait4 ru_maxrss), the tool's own byte count (drsync ``--json`` transferred.bytes,
  rsync ``--stats``), and, in one extra untimed run per ssh contender, the real bytes on the wire
  (a counting TCP relay in front of sshd) and the remote side's peak RSS (a wait4 wrapper
  as --drsync-path / --rsync-path);
* writes docs/benchmarks.md (command, machine, one table per case, speedup vs the §9 target,
  pass/fail, raw run times) and docs/benchmarks.png (needs ``pip install matplotlib``).

Traps of this machine that the harness works around: first-touch memory makes big-file runs
bimodal (min and median are both reported); idle page cache is evicted after ~1 min (sources are
re-read before each run); creating files right after deleting a big tree is very slow (nothing is
deleted before the very end: every run gets a new directory name).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

import sshd as sshd_mod  # noqa: E402  (tests/sshd.py: a real OpenSSH sshd on loopback)
import treegen  # noqa: E402

PY = os.path.realpath(sys.executable)
# The interpreter the README's install command makes drsync's venv with: Debian's own python3, the
# one its `apt-get install python3-venv` serves (not a pyenv or conda python3 earlier on PATH).
README_PY = "/usr/bin/python3"
DRSYNC = [PY, "-m", "drsync"]
DRSYNC_REMOTE = f"{PY} -m drsync"
ALIAS = sshd_mod.ALIAS
SHAPES = {"SMALL": treegen.SMALL, "LARGE": treegen.LARGE, "BIG": treegen.BIG}
RSYNC_EXCLUDE = "--exclude=.drsync"  # drsync's own state dir: not part of the data set

# DESIGN §9: (case kind, shape, transport) -> minimum speedup (reference time / drsync time)
TARGETS = {
    ("initial", "SMALL", "local"): 1.0, ("initial", "SMALL", "ssh"): 1.0,
    ("initial", "BIG", "local"): 1.0,  # against cp -a
    ("initial", "BIG", "ssh"): 1.5,
    ("noop", "SMALL", "local"): 3.0, ("noop", "SMALL", "ssh"): 1.0,
    ("noop", "LARGE", "local"): 20.0, ("noop", "LARGE", "ssh"): 5.0,
    ("onenew", "SMALL", "local"): 2.0, ("onenew", "SMALL", "ssh"): 1.5,
    ("onenew", "LARGE", "local"): 5.0, ("onenew", "LARGE", "ssh"): 5.0,
}
RAW_SSH_TARGET = 0.70  # BIG over ssh: >= 70 % of raw `ssh -c aes128-gcm` piping
# BIG locally, beside the §9 reference `cp -a` (which leaves its copy dirty in the page cache): the same
# copy flushed, as durable as drsync's. Shown, not a target.
DURABLE_CP = "cp -a + sync"
RSS_LIMIT = 300 * 1024 * 1024  # peak RSS < 300 MB on LARGE, on both ends
KIND_TEXT = {"initial": "initial copy", "noop": "no-op", "onenew": "one new version"}


# ---------------------------------------------------------------------------------------------
# running and measuring one child


@dataclass
class Run:
    contender: str
    round: int
    wall: float
    cpu: float
    rss: int  # bytes, peak of the child tree (wait4)
    rc: int
    stdout: str
    stderr: str
    payload: int | None = None  # bytes the tool says it moved
    files: int | None = None  # regular files the tool says it sent
    wire: int | None = None  # bytes through the TCP relay (probe runs only)
    wire_up: int | None = None  # of which client -> server
    remote_cpu: float | None = None  # seconds (probe runs only)
    remote_rss: int | None = None  # bytes (probe runs only)


# The floor of a new version's links: the same system calls drsync makes (symlinkat into fresh
# directories, two threads), without drsync. argv: ROOT N DIRS.
LINKS_PROBE = r"""
import os, sys, threading
root, n, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.mkdir(root)
def make(which):
    for d in which:
        path = os.path.join(root, "var%d" % d)
        os.mkdir(path)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        for i in range(n // dirs):
            os.symlink("../../files/var%d_20100101/f%d.nc" % (d, i), "f%d.nc" % i, dir_fd=fd)
        os.close(fd)
threads = [threading.Thread(target=make, args=(range(k, dirs, 2),)) for k in range(2)]
for t in threads: t.start()
for t in threads: t.join()
"""


# The floor of any drsync run over ssh with the default backend: interpreter and imports, asyncssh's
# connect and authentication, the remote shell starting `drsync agent`, up to the agent's greeting
# (drsync's own connect code; no request sent). argv: NODE-SPEC REMOTE-DRSYNC.
AGENT_PROBE = r"""
import os, sys
from drsync.transports import ssh
ch = ssh.open_channel(ssh.parse_spec(sys.argv[1]), backend="asyncssh", drsync_path=sys.argv[2], accept_new=False)
line = ch.read(256)
ok = line.startswith(b"DRSYNC-AGENT/")
sys.stdout.flush()
os._exit(0 if ok else 3)
"""
AGENT_FLOOR = "asyncssh session up to the remote `drsync agent`'s greeting"
# The floor of a durable local BIG copy: the same number of bytes written to the disk around the page
# cache, by dd from /dev/zero (no source to read, no Python): what the disk takes.
DISK_FLOOR = "the BIG copy's bytes written to disk"


def run_child(argv: list[str] | str, env: dict, outdir: Path, tag: str) -> tuple[float, float, int, int, str, str]:
    """Run ``argv`` (a list, or a shell string), wait with wait4: (wall, cpu, maxrss, rc, out, err)."""
    out_p, err_p = outdir / f"{tag}.out", outdir / f"{tag}.err"
    with open(out_p, "wb") as out, open(err_p, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=str(REPO),
                                shell=isinstance(argv, str), start_new_session=True)
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc.pid)
            raise
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    return (wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, proc.returncode,
            out_p.read_text(errors="replace"), err_p.read_text(errors="replace"))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        os.waitpid(pid, 0)
    except OSError:
        pass


def warm(path: str, data: bool = True) -> tuple[int, int]:
    """Read a tree (lstat every entry, read every regular file) so it is in the page cache."""
    entries = nbytes = 0
    stack = [path]
    buf = bytearray(1 << 20)
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                entries += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif data and e.is_file(follow_symlinks=False):
                    with open(e.path, "rb", buffering=0) as f:
                        while n := f.readinto(buf):
                            nbytes += n
                else:
                    e.stat(follow_symlinks=False)
    return entries, nbytes


RSYNC_SENT = re.compile(r"Total bytes sent:\s*([\d,]+)")
RSYNC_RECV = re.compile(r"Total bytes received:\s*([\d,]+)")
RSYNC_FILES = re.compile(r"Number of regular files transferred:\s*([\d,]+)")


def _num(m) -> int | None:
    return int(m.group(1).replace(",", "")) if m else None


def parse_output(tool: str, stdout: str) -> tuple[int | None, int | None]:
    """(payload bytes, files sent) from drsync --json or rsync --stats; (None, None) otherwise."""
    if tool == "drsync":
        try:
            doc = json.loads(stdout)
        except ValueError:
            return None, None
        t = doc.get("transferred") or {}
        return t.get("bytes"), t.get("files")
    if tool == "rsync":
        sent, recv = _num(RSYNC_SENT.search(stdout)), _num(RSYNC_RECV.search(stdout))
        total = None if sent is None or recv is None else sent + recv
        return total, _num(RSYNC_FILES.search(stdout))
    return None, None


# ---------------------------------------------------------------------------------------------
# a counting TCP relay in front of sshd: real bytes on the wire, for any client


class CountingRelay:
    """127.0.0.1:port -> sshd; counts the bytes it forwards each way (probe runs only). With
    ``delay`` (seconds), every chunk is forwarded that long after it arrived, in order, each way:
    a link with a round trip of 2 x delay (tests/benchmarks/ab.py --delay-ms), for what loopback
    cannot show: the cost of round trips across a real network."""

    def __init__(self, target_port: int, delay: float = 0.0):
        self.target = ("127.0.0.1", target_port)
        self.delay = delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.up = self.down = 0  # client->server, server->client
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.up = self.down = 0

    def total(self) -> int:
        with self.lock:
            return self.up + self.down

    def _accept(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            if self.delay:
                for sock in (client, server):  # the relay adds its delay, not Nagle's
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for src, dst, way in ((client, server, "up"), (server, client, "down")):
                    queue: list = []
                    ready = threading.Condition()
                    threading.Thread(target=self._take, args=(src, queue, ready), daemon=True).start()
                    threading.Thread(target=self._give, args=(dst, queue, ready, way), daemon=True).start()
                continue
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _take(self, src: socket.socket, queue: list, ready: threading.Condition) -> None:
        """Delayed relay, one direction: what arrives, with the time it may leave (b"" at the end)."""
        while True:
            try:
                data = src.recv(1 << 18)
            except OSError:
                data = b""
            with ready:
                queue.append((time.monotonic() + self.delay, data))
                ready.notify()
            if not data:
                return

    def _give(self, dst: socket.socket, queue: list, ready: threading.Condition, way: str) -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, data = queue.pop(0)
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return
            self._count(way, len(data))

    def _count(self, way: str, n: int) -> None:
        with self.lock:
            if way == "up":
                self.up += n
            else:
                self.down += n

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, (server, "up"))
        sel.register(server, selectors.EVENT_READ, (client, "down"))
        open_ends = 2
        try:
            while open_ends:
                for key, _ in sel.select():
                    peer, way = key.data
                    try:
                        data = key.fileobj.recv(1 << 18)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(key.fileobj)
                        open_ends -= 1
                        try:
                            peer.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        continue
                    peer.sendall(data)
                    self._count(way, len(data))
        except OSError:
            pass
        finally:
            sel.close()
            client.close()
            server.close()

    def close(self) -> None:
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass


WRAPPER = '''\
"""Run argv[2:] with inherited stdio; write its (tree's) peak RSS and CPU to argv[1] (wait4)."""
import json, os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, ru = os.wait4(p.pid, 0)
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"rss": ru.ru_maxrss * 1024, "cpu": ru.ru_utime + ru.ru_stime}) + "\\n")
sys.exit(os.waitstatus_to_exitcode(status))
'''


# ---------------------------------------------------------------------------------------------
# the environment: work dir, workloads, sshd, HOMEs


class Bench:
    def __init__(self, work: Path, drsync_args: list[str], in_place: bool = False):
        self.work = work
        self.floor_rows: list[tuple[str, float, float]] = []
        self.drsync_args = drsync_args
        self.logs = work / "logs"
        self.logs.mkdir()
        self.sources: dict[str, str] = {}
        self.sizes: dict[str, int] = {}  # bytes of file data per shape
        self.entries: dict[str, int] = {}  # entries (files, links, directories) per shape
        self.generated: dict[str, list[treegen.Dataset]] = {}
        self.server = None
        self.relay: CountingRelay | None = None
        self.delayed: CountingRelay | None = None  # delay_link()
        self.home = self.home_wire = None
        self.env = dict(os.environ)
        self.env.pop("SSH_AUTH_SOCK", None)
        self.env.pop("SSH_AGENT_PID", None)
        if in_place:  # else drsync runs from its own venv, as installed
            self.env["PYTHONPATH"] = str(REPO) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env_wire = dict(self.env)
        self.wrapper = work / "rsswrap.py"
        self.wrapper.write_text(WRAPPER)
        self.seq = 0
        self.notes: list[str] = []

    # -- workloads

    def source(self, shape: str) -> str:
        if shape not in self.sources:
            src = str(self.work / f"src-{shape}")
            t0 = time.monotonic()
            self.generated[shape] = treegen.make_node(src, SHAPES[shape])
            gen = time.monotonic() - t0
            # drsync keeps a source manifest in DATASET/.drsync; build it once, untimed, as a node
            # that drsync serves would have it (rsync is told to --exclude it).
            t0 = time.monotonic()
            wall, cpu, rss, rc, out, err = run_child(DRSYNC + ["scan", "-q", src], self.env, self.logs, f"scan-{shape}")
            if rc != 0:
                raise RuntimeError(f"drsync scan {src} failed ({rc}): {err}")
            entries, nbytes = warm(src)
            print(f"# {shape}: generated in {gen:.1f}s, {entries} entries, {nbytes / 2**20:.0f} MiB; "
                  f"first drsync scan {time.monotonic() - t0:.1f}s (cpu {cpu:.1f}s, rss {rss / 2**20:.0f} MiB)",
                  flush=True)
            self.notes.append(f"{shape}: {entries} entries, {nbytes / 2**20:.1f} MiB of file data; first "
                              f"`drsync scan` of the source (untimed, builds its manifest): {wall:.2f} s wall, "
                              f"{rss / 2**20:.0f} MiB RSS")
            self.sources[shape] = src
            self.sizes[shape] = nbytes
            self.entries[shape] = entries
        return self.sources[shape]

    def versions(self, shape: str) -> list[str]:
        return self.generated[shape][0].versions

    def new_version_size(self, shape: str) -> tuple[int, int]:
        v = self.versions(shape)[-1]
        files = nbytes = 0
        for ds in self.generated[shape]:
            f, b = ds.new_bytes(v)
            files, nbytes = files + f, nbytes + b
        return files, nbytes

    def real_files(self, shape: str) -> int:
        return sum(1 for ds in self.generated[shape] for _ in Path(ds.path, "files").glob("*/*"))

    def settle(self, files: int = 1000, limit: float = 0.1, patience: float = 90.0) -> None:
        """Trap 3: after someone deletes a big tree, creating files is up to 20x slower for a minute or
        more. Time the creation of ``files`` empty files; while it is slower than ``limit`` s, wait."""
        deadline = time.monotonic() + patience
        waited = 0.0
        while True:
            self.settle_n = getattr(self, "settle_n", 0) + 1
            d = self.work / "settle" / str(self.settle_n)
            d.mkdir(parents=True)
            t0 = time.perf_counter()
            for i in range(files):
                os.close(os.open(d / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
            took = time.perf_counter() - t0
            if took <= limit or time.monotonic() > deadline:
                break
            print(f"# creating {files} files took {took:.2f}s (> {limit}s): the filesystem is in its slow "
                  "after-mass-delete phase; waiting 10 s", flush=True)
            time.sleep(10)
            waited += 10
        if waited:
            self.notes.append(f"waited {waited:.0f} s for file creation to recover (trap 3) before a round; "
                              f"last probe {took:.2f} s for {files} files")

    # -- ssh

    def start_ssh(self) -> None:
        if self.server is not None:
            return
        d = self.work / "sshd"
        d.mkdir()
        self.server = sshd_mod.make_server(d)
        self.server.start("a")
        self.relay = CountingRelay(self.server.port)
        self.home = self._home("home", self.server.port)
        self.home_wire = self._home("home-wire", self.relay.port)
        self.env["HOME"] = str(self.home)
        self.env_wire["HOME"] = str(self.home_wire)
        print(f"# sshd on 127.0.0.1:{self.server.port}, counting relay on {self.relay.port}", flush=True)

    def _home(self, name: str, port: int) -> Path:
        home = self.work / name
        dot = home / ".ssh"
        dot.mkdir(parents=True)
        os.chmod(home, 0o755)
        os.chmod(dot, 0o700)
        key = dot / "id_ed25519"
        shutil.copyfile(self.server.client_key, key)
        os.chmod(key, 0o600)
        kh = dot / "known_hosts"
        kh.write_text(sshd_mod.known_hosts_line(port, self.server.host_key_a_pub))
        cfg = dot / "config"
        cfg.write_text(sshd_mod.client_config_text(port, self.server.user, key, kh))
        os.chmod(cfg, 0o600)
        return home

    def floors(self, ssh: bool, links: tuple[int, int] | None = None, disk: int | None = None, runs: int = 7) -> None:
        """What no drsync run can go below on this machine (DESIGN §9's "floor"): interpreter and
        import start-up, one SSH session (OpenSSH's own client), a remote start of drsync, with
        ``links`` = (symlinks, directories) the kernel's cost of making a new version's links, and with
        ``disk`` = bytes what writing that much to the disk takes. Each timed ``runs`` times; min and
        median wall seconds."""
        exe = DRSYNC[0] if len(DRSYNC) == 1 else None
        py = str(Path(exe).parent / "python") if exe else PY
        probes = [("python start-up, no imports (`python -S -c pass`)", [py, "-S", "-c", "pass"]),
                  ("drsync start-up (`drsync --version`: interpreter + drsync's imports)", DRSYNC + ["--version"]),
                  ("`import asyncssh` as drsync imports it (paid by the default ssh backend)",
                   [py, "-c", "from drsync.transports.ssh_asyncssh import import_asyncssh; import_asyncssh()"]),
                  ("`import paramiko` (paid by --ssh-backend paramiko)", [py, "-c", "import paramiko"])]
        if ssh:
            cfg = self.ssh_config()
            probes += [("one OpenSSH session running `true` (`ssh HOST true`: handshake, auth, remote shell)",
                        ["ssh", "-F", cfg, ALIAS, "true"]),
                       ("one OpenSSH session starting the remote drsync (`ssh HOST drsync --version`)",
                        ["ssh", "-F", cfg, ALIAS, f"{DRSYNC_REMOTE} --version"]),
                       (f"{AGENT_FLOOR} (interpreter, drsync's and asyncssh's imports, connect, authenticate, "
                        "remote shell, agent start-up; no request: what every default drsync run over ssh pays "
                        "first)", [py, "-c", AGENT_PROBE, f"{ALIAS}:/", DRSYNC_REMOTE])]
        if links is not None:
            n, dirs = links
            probes.append(((f"python start-up + {n:,} symlinks in {dirs} new directories, 2 threads (what the kernel "
                            "charges for a LARGE version's links as new symlinks, as rsync makes them; drsync makes "
                            "those the previous version lacks this way and hard-links the rest)"),
                           lambda k: [py, "-S", "-c", LINKS_PROBE, str(self.work / f"floor-links-{k}"), str(n), str(dirs)]))
        disk_file = self.work / "floor-disk"
        if disk is not None:
            blocks = -(-disk // (4 << 20))

            def dd(_k: int) -> list[str]:
                disk_file.unlink(missing_ok=True)  # the previous run's, untimed
                os.sync()
                return ["dd", "if=/dev/zero", f"of={disk_file}", "bs=4M", f"count={blocks}", "oflag=direct", "status=none"]
            probes.append(((f"{DISK_FLOOR}: {blocks * 4 / 1024:.1f} GiB by `dd oflag=direct` in 4 MiB blocks, around "
                            "the page cache as drsync writes big files (what the disk takes: the floor of a durable "
                            "copy)"), dd))
        for what, argv in probes:
            if callable(argv):  # the links probe creates files: not in the slow spell after a mass delete
                self.settle()
            walls = []
            for k in range(runs):
                argv_k = argv(k) if callable(argv) else argv
                wall, _cpu, _rss, rc, _out, err = run_child(argv_k, self.env, self.logs, "floor")
                if rc != 0:
                    raise RuntimeError(f"floor probe failed: {' '.join(argv_k)}: {err[-500:]}")
                walls.append(wall)
            self.floor_rows.append((what, min(walls), statistics.median(walls)))
            print(f"# floor: {what}: min {min(walls):.3f} s, median {statistics.median(walls):.3f} s", flush=True)
        disk_file.unlink(missing_ok=True)  # the disk probe's last file

    def ssh_config(self, wire: bool = False) -> str:
        return str((self.home_wire if wire else self.home) / ".ssh" / "config")

    def delay_link(self, delay: float) -> None:
        """From now on every ssh contender reaches sshd through a relay that delays each direction by
        ``delay`` seconds (ab.py --delay-ms): HOME and ssh_config() name that relay."""
        self.delayed = CountingRelay(self.server.port, delay=delay)
        self.home = self._home("home-delay", self.delayed.port)
        self.env["HOME"] = str(self.home)

    def stop(self) -> None:
        for relay in (self.relay, self.delayed):
            if relay is not None:
                relay.close()
        if self.server is not None:
            self.server.stop()

    # -- commands

    def drsync_push(self, src: str, dst: str, *, backend: str | None, extra: list[str] = (), wire: bool = False,
                    remote_rss: str | None = None) -> list[str]:
        argv = DRSYNC + ["push", "--json", "--no-progress", *self.drsync_args, *extra]
        if backend is not None:
            path = DRSYNC_REMOTE if remote_rss is None else f"{PY} {self.wrapper} {remote_rss} {DRSYNC_REMOTE}"
            argv += ["--ssh-backend", backend, "--drsync-path", path]
            dst = f"{ALIAS}:{dst}"
        return argv + [src, dst]

    def rsync(self, src: str, dst: str, *, ssh: bool, wire: bool = False, remote_rss: str | None = None) -> list[str]:
        argv = ["rsync", "-a", "--stats", RSYNC_EXCLUDE]
        if ssh:
            argv += ["-e", f"ssh -F {self.ssh_config(wire)}"]
            if remote_rss is not None:
                argv += [f"--rsync-path={PY} {self.wrapper} {remote_rss} rsync"]
            dst = f"{ALIAS}:{dst}"
        return argv + [src.rstrip("/") + "/", dst.rstrip("/") + "/"]

    def raw_ssh(self, src: str, dst: str, *, wire: bool = False, remote_rss: str | None = None) -> str:
        """tar | ssh -c aes128-gcm | tar: the raw piping reference of §9 for BIG over ssh."""
        remote = f"mkdir -p {shlex.quote(dst)} && tar -C {shlex.quote(dst)} -xf -"
        if remote_rss is not None:
            remote = f"{PY} {self.wrapper} {remote_rss} sh -c {shlex.quote(remote)}"
        return (f"tar -C {shlex.quote(src)} --exclude=.drsync -cf - . | ssh -F {shlex.quote(self.ssh_config(wire))} "
                f"-c aes128-gcm@openssh.com {ALIAS} {shlex.quote(remote)}")

    def cp(self, src: str, dst: str) -> list[str]:
        return ["cp", "-a", src, dst]

    def cp_durable(self, src: str, dst: str) -> str:
        """cp -a, then the copy's filesystem flushed (``sync -f``: syncfs, as drsync flushes before it
        publishes): `cp -a` with drsync's durability, the floor of a durable local copy by a tool that
        goes through the page cache."""
        return f"cp -a {shlex.quote(src)} {shlex.quote(dst)} && sync -f {shlex.quote(dst)}"


# ---------------------------------------------------------------------------------------------
# cases


@dataclass
class Contender:
    name: str  # label in tables
    tool: str  # drsync | rsync | cp | raw
    backend: str | None = None  # drsync over ssh: asyncssh | paramiko


@dataclass
class Case:
    kind: str  # initial | noop | onenew
    shape: str
    transport: str  # local | ssh
    runs: list[Run] = field(default_factory=list)
    probes: list[Run] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    expect_files: int | None = None
    new_bytes: int | None = None
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.shape}-{self.transport}"

    @property
    def title(self) -> str:
        return f"{KIND_TEXT[self.kind]}, {self.shape}, {self.transport}"

    @property
    def target(self) -> float:
        return TARGETS[(self.kind, self.shape, self.transport)]

    @property
    def reference(self) -> str:
        """The contender the §9 target compares drsync with."""
        return "cp -a" if (self.kind, self.shape, self.transport) == ("initial", "BIG", "local") else "rsync -a"

    def contenders(self) -> list[Contender]:
        if self.transport == "local":
            out = [Contender("drsync", "drsync"), Contender("rsync -a", "rsync")]
            if self.kind == "initial":
                out.append(Contender("cp -a", "cp"))
            if self.kind == "initial" and self.shape == "BIG":
                out.append(Contender(DURABLE_CP, "cpsync"))
            return out
        out = [Contender("drsync asyncssh", "drsync", "asyncssh"), Contender("drsync paramiko", "drsync", "paramiko"),
               Contender("rsync -a", "rsync")]
        if self.kind == "initial" and self.shape == "BIG":
            out.append(Contender("tar|ssh aes128-gcm", "raw"))
        return out


ALL_CASES = [Case(k, s, t) for k, s in (("initial", "SMALL"), ("initial", "BIG"), ("noop", "SMALL"), ("noop", "LARGE"),
                                        ("onenew", "SMALL"), ("onenew", "LARGE")) for t in ("local", "ssh")]


class CaseRunner:
    def __init__(self, bench: Bench, case: Case, warmup: int, runs: int, probes: bool):
        self.b = bench
        self.case = case
        self.warmup = warmup
        self.runs = runs
        self.probes = probes
        self.dir = bench.work / "dst" / case.name
        self.dir.mkdir(parents=True)
        self.n = 0

    def fresh(self, label: str) -> str:
        self.n += 1
        return str(self.dir / f"{re.sub(r'[^A-Za-z0-9]+', '_', label)}-{self.n:03d}")

    def prepare(self) -> None:
        b, c = self.b, self.case
        src = b.source(c.shape)
        if c.transport == "ssh":
            b.start_ssh()
        self.src = src
        self.synced: dict[str, str] = {}
        if c.kind == "initial":
            c.expect_files = b.real_files(c.shape)
        elif c.kind == "noop":
            c.expect_files = 0
            # one synced destination per tool, made by that tool (untimed); no-op runs do not change it
            d = str(self.dir / "synced-drsync")
            self._must(b.drsync_push(src, d, backend=None), "prepare drsync no-op destination")
            self.synced["drsync"] = d
            d = str(self.dir / "synced-rsync")
            self._must(b.rsync(src, d, ssh=False), "prepare rsync no-op destination")
            self.synced["rsync"] = d
        else:
            # all but the newest version, with drsync's destination manifest (drsync push --up-to);
            # each run copies it (cp -a, untimed) to a fresh name
            c.expect_files, c.new_bytes = b.new_version_size(c.shape)
            prev = b.versions(c.shape)[-2]
            self.base = str(self.dir / "base")
            self._must(b.drsync_push(src, self.base, backend=None, extra=["--up-to", prev]),
                       f"prepare the destination base (--up-to {prev})")

    def _space(self) -> None:
        st = os.statvfs(self.b.work)
        free = st.f_bavail * st.f_frsize
        need = self.b.sizes.get(self.case.shape, 0) * 2 + (2 << 30)
        if free < need:
            raise RuntimeError(f"only {fmt_bytes(free)} free under {self.b.work}; a run needs ~{fmt_bytes(need)}")
        # a LARGE destination is ~300,000 entries: a case's copies run out of inodes before bytes
        need_inodes = self.b.entries.get(self.case.shape, 0) * 2 + 100_000
        if st.f_files and st.f_favail < need_inodes:
            raise RuntimeError(f"only {st.f_favail} free inodes under {self.b.work}; a run needs ~{need_inodes}")

    def clean(self) -> None:
        """Remove the destinations of a LARGE or BIG case that copies one per run, once it is done
        (untimed): a LARGE case leaves a dozen copies of 300,000 entries, and two such cases exhaust
        the filesystem's inodes. Then wait out the slow file creation that follows a mass delete
        (trap 3: sync, then 65 s; settle() alone probes one block group, and the spell is local to
        the groups the delete freed). A SMALL case's copies (~30,000 entries each) stay until the
        end: deleting them would slow the next case's runs."""
        c = self.case
        if c.kind == "noop" or c.shape == "SMALL" or not self.dir.exists():
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        os.sync()
        time.sleep(65)

    def _must(self, argv, what: str) -> None:
        wall, cpu, rss, rc, out, err = run_child(argv, self.b.env, self.b.logs, self._tag("prep"))
        if rc != 0:
            raise RuntimeError(f"{self.case.name}: {what} failed ({rc}): {err[-2000:]}")

    def _tag(self, what: str) -> str:
        self.b.seq += 1
        return f"{self.b.seq:05d}-{self.case.name}-{re.sub(r'[^A-Za-z0-9]+', '_', what)}"

    def destination(self, who: Contender) -> str:
        c = self.case
        if c.kind == "noop":
            return self.synced["drsync" if who.tool == "drsync" else "rsync"]
        dst = self.fresh(who.name)
        if c.kind == "onenew":
            self._must(["cp", "-a", self.base, dst], "cp -a base")
        return dst

    def argv(self, who: Contender, dst: str, *, wire: bool = False, remote_rss: str | None = None):
        b, ssh = self.b, self.case.transport == "ssh"
        if who.tool == "drsync":
            return b.drsync_push(self.src, dst, backend=who.backend, wire=wire, remote_rss=remote_rss)
        if who.tool == "rsync":
            return b.rsync(self.src, dst, ssh=ssh, wire=wire, remote_rss=remote_rss)
        if who.tool == "cp":
            return b.cp(self.src, dst)
        if who.tool == "cpsync":
            return b.cp_durable(self.src, dst)
        return b.raw_ssh(self.src, dst, wire=wire, remote_rss=remote_rss)

    def one(self, who: Contender, rnd: int, *, probe: bool = False) -> Run:
        c = self.case
        self._space()
        dst = self.destination(who)
        remote_rss = str(self.b.logs / f"{self._tag('remote-rss')}.json") if probe and c.transport == "ssh" else None
        argv = self.argv(who, dst, wire=probe, remote_rss=remote_rss)
        env = self.b.env_wire if probe else self.b.env  # probe: HOME's ssh config points at the relay
        # trap 2: the page cache forgets idle data within ~1 min: read what the run will read
        warm(self.src)
        if c.kind != "initial":
            warm(dst)
        if probe and self.b.relay is not None:
            self.b.relay.reset()
        # Write back what preparing (or the previous contender) left dirty, outside the timing:
        # otherwise a tool that flushes (drsync's syncfs) pays for the others' writes.
        os.sync()
        wall, cpu, rss, rc, out, err = run_child(argv, env, self.b.logs, self._tag(f"{who.name}-r{rnd}"))
        run = Run(who.name, rnd, wall, cpu, rss, rc, out, err)
        run.payload, run.files = parse_output(who.tool, out)
        if probe and self.b.relay is not None:
            time.sleep(0.2)  # let the relay threads drain the last packets
            run.wire, run.wire_up = self.b.relay.total(), self.b.relay.up
        if remote_rss is not None and os.path.exists(remote_rss):
            lines = Path(remote_rss).read_text().splitlines()
            if lines:
                run.remote_rss = max(json.loads(x)["rss"] for x in lines)
                run.remote_cpu = sum(json.loads(x)["cpu"] for x in lines)
        if rc != 0:
            raise RuntimeError(f"{c.name}: {who.name} exited {rc}: {' '.join(argv) if isinstance(argv, list) else argv}"
                               f"\n{err[-3000:]}")
        self._check(who, run)
        if c.kind == "initial" and c.shape == "BIG":
            # 2 GiB per copy would fill the disk; BIG has ~100 entries, so deleting it does not hit
            # the slow-create-after-mass-delete trap. Untimed, then let writeback settle.
            shutil.rmtree(dst, ignore_errors=True)
            os.sync()
            time.sleep(2)
        return run

    def _check(self, who: Contender, run: Run) -> None:
        c = self.case
        if run.files is None or c.expect_files is None:
            return
        want = c.expect_files
        ok = run.files == want
        if not ok:
            msg = f"{who.name} round {run.round}: sent {run.files} files, expected {want}"
            if msg not in c.checks:
                c.checks.append(msg)
                print(f"  ! {msg}", flush=True)

    def go(self) -> None:
        c = self.case
        t0 = time.monotonic()
        print(f"== {c.name}: preparing", flush=True)
        self.prepare()
        who = c.contenders()
        for rnd in range(self.warmup + self.runs):
            self.b.settle()
            k = rnd % len(who)
            order = who[k:] + who[:k]  # A B C, B C A, C A B: no contender always runs first
            for w in order:
                r = self.one(w, rnd)
                timed = rnd >= self.warmup
                if timed:
                    c.runs.append(r)
                print(f"  {'run' if timed else 'warm-up'} {rnd}: {w.name:20s} {r.wall:8.3f}s cpu {r.cpu:7.3f}s "
                      f"rss {r.rss / 2**20:6.1f} MiB files {r.files}", flush=True)
        if self.probes and c.transport == "ssh":
            for w in who:
                r = self.one(w, -1, probe=True)
                c.probes.append(r)
                rr = f"{r.remote_rss / 2**20:.1f} MiB" if r.remote_rss else "?"
                print(f"  probe: {w.name:20s} wire {r.wire} B ({r.wire_up} up), payload {r.payload}, remote rss {rr}, "
                      f"remote cpu {r.remote_cpu}", flush=True)
        c.seconds = time.monotonic() - t0


# ---------------------------------------------------------------------------------------------
# summary, markdown, plot


def summarize(case: Case) -> list[dict]:
    rows = []
    for who in case.contenders():
        runs = [r for r in case.runs if r.contender == who.name]
        if not runs:
            continue
        walls = [r.wall for r in runs]
        probe = next((p for p in case.probes if p.contender == who.name), None)
        rows.append({
            "name": who.name, "tool": who.tool, "n": len(runs),
            "median": statistics.median(walls), "min": min(walls),
            "cpu": statistics.median(r.cpu for r in runs), "rss": max(r.rss for r in runs),
            "payload": runs[-1].payload, "files": runs[-1].files,
            "wire": probe.wire if probe else None, "remote_rss": probe.remote_rss if probe else None,
            "wire_up": probe.wire_up if probe else None, "remote_cpu": probe.remote_cpu if probe else None,
            "walls": walls,
        })
    ref = next((r for r in rows if r["name"] == case.reference), None)
    raw = next((r for r in rows if r["tool"] == "raw"), None)
    durable = next((r for r in rows if r["tool"] == "cpsync"), None)
    rsync = next((r for r in rows if r["tool"] == "rsync"), None)
    for r in rows:
        if r["tool"] == "drsync" and ref is not None:
            r["speedup"] = ref["median"] / r["median"]
            r["speedup_min"] = ref["min"] / r["min"]
            r["vs_rsync"] = rsync["median"] / r["median"] if rsync else None
            r["vs_raw"] = raw["median"] / r["median"] if raw else None
            r["vs_durable"] = durable["median"] / r["median"] if durable else None
    return rows


def verdicts(case: Case, r: dict) -> list[tuple[str, bool]]:
    """(what, passed) for one drsync row."""
    out = [(f">= {case.target:g}x {case.reference}", r["speedup"] >= case.target)]
    if r.get("vs_raw") is not None:
        out.append((f">= {RAW_SSH_TARGET:.0%} of raw ssh", r["vs_raw"] >= RAW_SSH_TARGET))
    if case.kind == "onenew" and case.new_bytes is not None:
        limit = case.new_bytes * 1.10 + 64 * 1024
        measured = r["wire"] if r["wire"] is not None else (r["payload"] if case.transport == "ssh" else None)
        if case.transport == "ssh" and measured is not None:
            out.append((f"wire <= {fmt_bytes(limit)}", measured <= limit))
    if case.shape == "LARGE":
        out.append(("client RSS < 300 MB", r["rss"] < RSS_LIMIT))
        if r["remote_rss"] is not None:
            out.append(("remote RSS < 300 MB", r["remote_rss"] < RSS_LIMIT))
    return out


def fmt_bytes(n) -> str:
    if n is None:
        return "n/a"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def machine_facts(python: str) -> list[tuple[str, str]]:
    def first(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    fs = "?"
    try:
        best = ""
        tmp = os.path.realpath(tempfile.gettempdir())
        for line in open("/proc/mounts"):
            dev, mnt, typ, opts = line.split()[:4]
            if (tmp + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best):
                best, fs = mnt, f"{typ} on {mnt} ({opts})"
    except OSError:
        pass
    swap = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("SwapTotal:"):
                swap = f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    return [
        ("nproc", f"{os.cpu_count()} ({cpu})"), ("memory", f"{mem}, swap {swap}"),
        ("kernel", " ".join(platform.uname()[i] for i in (0, 2, 4))),
        ("python (drsync's)", f"{first([python, '--version'])} ({os.path.realpath(python)})"), ("rsync", first(["rsync", "--version"])),
        ("OpenSSH", first(["ssh", "-V"])), ("filesystem of /tmp", fs),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


def budget_lines(cases: list[Case], summaries: dict, floor_rows) -> list[str]:
    """The §9 budgets against floors measured in this run. For one new version over ssh: the agent
    session floor (AGENT_FLOOR, min) + the same new version received and published locally (drsync's
    one-new-version local median minus its no-op local median: the work beyond start-up); for the
    initial copy BIG locally, the disk floor (disk_floor_lines)."""
    session = next((a for w, a, _ in floor_rows if w.startswith(AGENT_FLOOR)), None)
    by = {c.name: c for c in cases}
    out = []
    for shape in ("SMALL", "LARGE") if session is not None else ():
        ssh_c, new_c, noop_c = (by.get(f"{k}-{shape}-{t}") for k, t in
                                (("onenew", "ssh"), ("onenew", "local"), ("noop", "local")))
        if not (ssh_c and new_c and noop_c):
            continue
        rsync = next((r for r in summaries[ssh_c.name] if r["tool"] == "rsync"), None)
        new = next((r for r in summaries[new_c.name] if r["tool"] == "drsync"), None)
        noop = next((r for r in summaries[noop_c.name] if r["tool"] == "drsync"), None)
        if not (rsync and new and noop):
            continue
        work = max(0.0, new["median"] - noop["median"])
        budget = rsync["median"] / ssh_c.target
        best = min(r["median"] for r in summaries[ssh_c.name] if r["tool"] == "drsync")
        out.append(f"* **one new version, {shape}, over ssh**: the §9 budget is rsync's {rsync['median']:.3f} s / "
                   f"{ssh_c.target:g} = **{budget:.3f} s**. A floor for drsync: the agent session above "
                   f"({session:.3f} s, min) + the same new version planned, received, flushed and published by a "
                   f"local run ({work:.3f} s: one new version minus no-op, local, medians) = "
                   f"**{session + work:.3f} s**, before a byte crosses the wire; drsync's best median here: "
                   f"{best:.3f} s.")
    out += disk_floor_lines(cases, summaries, floor_rows)
    if out:
        out = ["Budget against floor, from this run's numbers:", ""] + out + [""]
    return out


def disk_floor_lines(cases: list[Case], summaries: dict, floor_rows) -> list[str]:
    """For the initial copy BIG locally: the §9 reference (`cp -a`, its copy left in the page cache)
    against the disk floor measured in this run, which a copy that is on disk when it ends pays."""
    disk = next(((a, m) for w, a, m in floor_rows if w.startswith(DISK_FLOOR)), None)
    case = next((c for c in cases if (c.kind, c.shape, c.transport) == ("initial", "BIG", "local")), None)
    rows = summaries.get(case.name) if case is not None else None
    if disk is None or not rows:
        return []
    by = {r["name"]: r for r in rows}
    cp, durable, mine = by.get("cp -a"), by.get(DURABLE_CP), by.get("drsync")
    if not (cp and durable and mine):
        return []
    return [f"* **initial copy, BIG, local**: the §9 reference `cp -a` took {cp['median']:.3f} s median "
            f"({cp['min']:.3f} s min) and ends with its copy still in the page cache, dirty. Writing the same bytes "
            f"to the disk takes **{disk[0]:.3f} s** (min; {disk[1]:.3f} s median: the disk floor above), and "
            f"drsync's copy is on disk before it publishes (DESIGN §4). drsync: {mine['median']:.3f} s median "
            f"({mine['min']:.3f} s min); `{DURABLE_CP}`: {durable['median']:.3f} s median."]


def write_markdown(path: Path, cases: list[Case], facts, cmdline: str, args, notes: list[str], floor_rows, png: str | None,
                   started: float) -> None:
    lines = ["# Benchmarks: drsync against `rsync -a` and `cp -a`", ""]
    if args.quick:
        lines += ["> **Quick run (`--quick`: SMALL only, few runs) on a loaded, shared machine.** The numbers are noisy "
                  "and only show that the harness works; they are not the project's performance figures.", ""]
    lines += ["Generated by the benchmark harness (DESIGN §9, issue #6). Run it from the repository root with:", "",
              "```sh", "pip install matplotlib   # for the plot only", cmdline, "```", "",
              "Full run: `python tests/benchmarks/bench.py` (SMALL, LARGE, BIG; 5 timed runs each). Options: "
              "`--quick` (SMALL only, 3 runs), `--cases GLOB ...` (e.g. `--cases 'noop-*' onenew-SMALL-ssh`), "
              "`--runs N`, `--no-probe` (skip the wire/remote-RSS probe runs), `--keep` (keep the work dir), "
              "`--drsync-arg ARG` (extra drsync option, e.g. `--drsync-arg=--no-fsync`), `--python EXE` (the "
              "interpreter of drsync's venv; default `/usr/bin/python3`, as the README installs drsync).", "",
              "## Machine", "", "| fact | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts]
    lines += [f"| load average at end | {' '.join(f'{x:.2f}' for x in os.getloadavg())} |",
              f"| total run time | {time.monotonic() - started:.0f} s |", ""]
    lines += ["## Method", "",
              "* Contenders run **alternately in the same run** (A B C, then B C A, ...), one warm-up round, then "
              f"{args.runs} timed rounds. Only the ratios mean anything: absolute times on this VM drift ~30 % "
              "between runs.",
              "* Each run gets a **fresh destination name** prepared outside the timing (initial copy: a new, "
              "absent directory; one new version: `cp -a` of a destination holding all but the newest version, "
              "made once by `drsync push --up-to`; no-op: one destination per tool, made by that tool). Nothing "
              "is deleted before the end of the run (deleting big trees slows file creation for a minute).",
              "* Before each round the harness times the creation of 1,000 empty files and waits (up to 90 s) "
              "while that takes more than 0.1 s (a settled filesystem: ~0.03 s): someone else's mass delete makes file creation up to 20x slower "
              "for a minute or more, which would swamp any initial-copy measurement.",
              "* The source (and, except for initial copies, the destination) is read just before each timed run, "
              "so every contender starts with a warm page cache; then `sync` writes back whatever preparation or "
              "the previous contender left dirty (untimed), so no tool pays for another's writes.",
              ("* drsync is installed as the README installs it (a fresh venv of the machine's python3, "
               "`pip install .`; the facts above name that interpreter) and runs as the CLI: "
               "`drsync push --json --no-progress SRC DST` (over ssh: `DST=drsync-test:PATH --ssh-backend B "
               "--drsync-path VENV/bin/drsync`)" if not args.in_place else
               "* drsync runs as the CLI of this checkout (`--in-place`): `python -m drsync push --json --no-progress "
               "SRC DST` (over ssh: `DST=drsync-test:PATH --ssh-backend B --drsync-path \"python -m drsync\"`)")
              + ", with its default "
              "durability (batched fsync) unless `--drsync-arg=--no-fsync` is given"
              + (f"; this run: extra drsync args `{' '.join(args.drsync_arg)}`" if args.drsync_arg else "") + ". "
              "The source's manifest is built once before timing (`drsync scan`), as on a node drsync serves; "
              "a run that finds the new version not yet scanned scans it first (`tests/benchmarks/ab.py "
              "--unscanned` measures that case; docs/performance.md, session 19).",
              "* rsync: `rsync -a --stats --exclude=.drsync SRC/ DST/` (over ssh: `-e \"ssh -F CONFIG\"`, OpenSSH's "
              "default cipher); `cp -a SRC DST` locally. The loopback sshd is a throwaway one (tests/sshd.py). "
              "BIG locally also runs `cp -a SRC DST && sync -f DST` (`cp -a + sync`): `cp -a` leaves its copy dirty "
              "in the page cache, drsync flushes before it publishes (DESIGN §4), and this is `cp -a` made as "
              "durable; the speedup column shows drsync against it beside the §9 reference.",
              "* **median** and **min** are wall seconds over the timed runs (big-file runs are bimodal: first-touch "
              "memory is slow, so look at both). **CPU** is the median user+sys of the client's process tree "
              "(os.wait4; includes the `ssh` child of rsync; the remote side is not included). **RSS** is the client's "
              "peak (wait4 ru_maxrss, max over runs).",
              "* **payload**: what the tool reports (drsync `--json` transferred.bytes = file bytes sent; rsync "
              "`--stats` total bytes sent + received, i.e. rsync protocol bytes). **wire**: real TCP bytes both ways, "
              "measured in one extra untimed run per ssh contender through a counting relay in front of sshd (so "
              "it includes SSH handshake, encryption and protocol overhead). **remote RSS**: peak RSS of the remote "
              "command (drsync agent / rsync --server / tar) in that same probe run, through a wait4 wrapper given as "
              "`--drsync-path` / `--rsync-path`; **remote CPU** is that command's user+sys in the probe run.",
              "* BIG initial-copy destinations (2 GiB each, ~100 entries) are deleted right after their run, "
              "untimed, followed by `sync` and a 2 s pause, so that the disk does not fill up.",
              "* **speedup** = reference median / drsync median (reference = `rsync -a`, or `cp -a` for the local BIG "
              "initial copy); *min ratio* = reference min / drsync min. Pass = speedup >= the DESIGN §9 target.",
              ""]
    if png:
        lines += ["## Speedup per case", "", f"![speedup per case]({png})", ""]
    lines += ["## Summary", "", "| case | drsync | speedup (median) | min ratio | target | verdict |", "|---|---|---|---|---|---|"]
    summaries = {}
    for c in cases:
        rows = summarize(c)
        summaries[c.name] = rows
        for r in rows:
            if r["tool"] != "drsync" or "speedup" not in r:
                continue
            v = verdicts(c, r)
            verdict = "; ".join(f"{'PASS' if ok else 'FAIL'} {what}" for what, ok in v)
            if r.get("vs_durable") is not None:
                verdict += f"; {r['vs_durable']:.2f}x {DURABLE_CP} (shown, no target)"
            lines.append(f"| {c.title} | {r['name']} | {r['speedup']:.2f}x | {r['speedup_min']:.2f}x | "
                         f">= {c.target:g}x {c.reference} | {verdict} |")
    lines.append("")
    for c in cases:
        rows = summaries[c.name]
        if not rows:
            continue
        lines += [f"## {c.title} (`{c.name}`)", ""]
        extra = []
        if c.kind == "onenew" and c.new_bytes is not None:
            extra.append(f"the new version adds {c.expect_files} files, {fmt_bytes(c.new_bytes)}; §9 wire budget "
                         f"{fmt_bytes(c.new_bytes * 1.10 + 64 * 1024)}")
        elif c.kind == "initial" and c.expect_files:
            extra.append(f"{c.expect_files} real files")
        extra.append(f"case took {c.seconds:.0f} s including preparation")
        lines += ["; ".join(extra) + ".", ""]
        lines += ["| contender | runs | median s | min s | CPU s | client RSS | files sent | payload | wire (up / down) "
                  "| remote RSS | remote CPU s | speedup (median / min) | target | pass |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["tool"] == "drsync":
                sp = f"{r['speedup']:.2f}x / {r['speedup_min']:.2f}x"
                if r.get("vs_raw") is not None:
                    sp += f" (raw ssh: {r['vs_raw']:.0%})"
                if r.get("vs_durable") is not None:
                    sp += f" ({DURABLE_CP}: {r['vs_durable']:.2f}x)"
                v = verdicts(c, r)
                ok = "PASS" if all(x for _, x in v) else "FAIL: " + ", ".join(w for w, x in v if not x)
                tgt = f">= {c.target:g}x"
            else:
                sp, ok, tgt = "(reference)" if r["name"] == c.reference else "", "", ""
            if r["wire"] is not None:
                wire = f"{fmt_bytes(r['wire'])} ({fmt_bytes(r['wire_up'])} / {fmt_bytes(r['wire'] - r['wire_up'])})"
            else:
                wire = "n/a (local)" if c.transport == "local" else "not measured"
            rcpu = f"{r['remote_cpu']:.3f}" if r["remote_cpu"] is not None else "n/a" 
            rrss = fmt_bytes(r["remote_rss"]) if r["remote_rss"] is not None else (
                "n/a (local)" if c.transport == "local" else "not measured")
            lines.append(f"| {r['name']} | {r['n']} | {r['median']:.3f} | {r['min']:.3f} | {r['cpu']:.3f} | "
                         f"{fmt_bytes(r['rss'])} | {r['files'] if r['files'] is not None else 'n/a'} | "
                         f"{fmt_bytes(r['payload'])} | {wire} | {rrss} | {rcpu} | {sp} | {tgt} | {ok} |")
        if c.checks:
            lines += ["", "Checks that failed (the run is suspect):", ""] + [f"* {x}" for x in c.checks]
        lines.append("")
    if floor_rows:
        lines += ["## Floors", "",
                  "What every run pays before it does any work, measured in this run (wall seconds over 7 runs). "
                  "A drsync run over ssh costs at least drsync's start-up + the SSH library's import + one SSH "
                  "session starting the remote drsync; rsync pays one OpenSSH session and rsync's own start-up.",
                  "", "| what | min s | median s |", "|---|---|---|"]
        lines += [f"| {w} | {a:.3f} | {m:.3f} |" for w, a, m in floor_rows] + [""]
        lines += budget_lines(cases, summaries, floor_rows)
    lines += ["## Workloads", ""] + [f"* {n}" for n in notes] + ["", "## Raw wall times (s, in run order)", "",
                                                                  "<details><summary>all timed runs</summary>", ""]
    for c in cases:
        for r in summaries[c.name]:
            lines.append(f"* `{c.name}` {r['name']}: " + ", ".join(f"{w:.3f}" for w in r["walls"]))
    lines += ["", "</details>", ""]
    path.write_text("\n".join(lines))


def plot(path: Path, cases: list[Case], title_note: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("# matplotlib is missing (pip install matplotlib): no plot", flush=True)
        return False
    labels, values, mins, targets, colors = [], [], [], [], []
    for c in cases:
        for r in summarize(c):
            if r["tool"] == "drsync" and "speedup" in r:
                labels.append(f"{c.name}\n{r['name'].replace('drsync ', '') if c.transport == 'ssh' else 'drsync'}")
                values.append(r["speedup"])
                mins.append(r["speedup_min"])
                targets.append(c.target)
                colors.append("tab:green" if r["speedup"] >= c.target else "tab:red")
    if not labels:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 5))
    xs = range(len(labels))
    ax.bar(xs, values, color=colors, alpha=0.8, label="speedup (median)")
    ax.scatter(xs, mins, color="black", marker="o", s=14, zorder=3, label="ratio of mins")
    for x, t in zip(xs, targets):
        ax.hlines(t, x - 0.42, x + 0.42, colors="tab:blue", linestyles="--", linewidth=2, zorder=4)
    ax.plot([], [], color="tab:blue", linestyle="--", label="DESIGN §9 target")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("reference time / drsync time (log)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_title(f"drsync speedup vs rsync -a (cp -a for local BIG initial){title_note}", fontsize=10)
    lo = min(values + mins + targets) / 1.6
    hi = max(values + mins + targets) * 2.5
    ax.set_ylim(lo, hi)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}x"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8, loc="upper right", ncols=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------


def install_drsync(work: Path, python: str) -> None:
    """Install drsync the way the README does (a venv of ``python``, ``pip install .``, not
    editable) and run that: its start-up is what users pay, not that of a development interpreter
    whose site-packages import extra .pth hooks (an editable finder, certifi patches) before drsync
    even starts."""
    global DRSYNC, DRSYNC_REMOTE
    venv = work / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(REPO)],
                   check=True)
    exe = str(venv / "bin" / "drsync")
    DRSYNC, DRSYNC_REMOTE = [exe], exe
    print(f"# drsync installed in {venv} (a venv of {python}, pip install {REPO})", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="cases: " + ", ".join(c.name for c in ALL_CASES))
    ap.add_argument("--quick", action="store_true", help="SMALL cases only, 3 timed runs (for development)")
    ap.add_argument("--cases", nargs="+", metavar="GLOB", help="only the cases matching these names/globs")
    ap.add_argument("--runs", type=int, help="timed runs per contender (default 5, --quick 3)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up rounds (default 1)")
    ap.add_argument("--no-probe", dest="probe", action="store_false",
                    help="skip the untimed wire-bytes / remote-RSS probe runs over ssh")
    ap.add_argument("--drsync-arg", action="append", default=[], metavar="ARG",
                    help="extra option for every timed drsync push (repeatable), e.g. --drsync-arg=--no-fsync")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (default: removed at the end)")
    ap.add_argument("--in-place", action="store_true",
                    help="run `python -m drsync` with this interpreter instead of a fresh `pip install .` venv")
    ap.add_argument("--python", default=README_PY if os.access(README_PY, os.X_OK) else PY, metavar="EXE",
                    help="the interpreter of drsync's venv (default: %(default)s, as the README installs it)")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="markdown to write")
    args = ap.parse_args(argv)
    if args.runs is None:
        args.runs = 3 if args.quick else 5
    cases = [c for c in ALL_CASES if (not args.quick or c.shape == "SMALL")
             and (not args.cases or any(fnmatch.fnmatchcase(c.name, g) for g in args.cases))]
    if not cases:
        ap.error("no case selected; cases are: " + ", ".join(c.name for c in ALL_CASES))
    for tool in ("rsync", "cp", "tar", "ssh"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} is not installed")
    if any(c.transport == "ssh" for c in cases) and not os.access(sshd_mod.SSHD, os.X_OK):
        ap.error(f"{sshd_mod.SSHD} is not installed: select local cases with --cases '*-local'")

    cmdline = "python tests/benchmarks/bench.py" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    started = time.monotonic()
    facts = machine_facts(PY if args.in_place else args.python)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: clean up like ^C
    work = Path(tempfile.mkdtemp(prefix="drsync-bench-", dir="/tmp"))
    print(f"# work dir {work}; cases: {', '.join(c.name for c in cases)}; {args.runs} runs + {args.warmup} warm-up",
          flush=True)
    bench = None
    done: list[Case] = []
    try:
        if not args.in_place:
            install_drsync(work, args.python)
        bench = Bench(work, args.drsync_arg, args.in_place)
        if any(c.transport == "ssh" for c in cases):
            bench.start_ssh()
        links = None
        if any(c.kind == "onenew" and c.shape == "LARGE" for c in cases):
            bench.source("LARGE")
            links = (sum(len(f) for ds in bench.generated["LARGE"] for f in ds.current.values()),
                     treegen.LARGE.variables * treegen.LARGE.datasets)
        disk = None
        if any(c.kind == "initial" and c.shape == "BIG" and c.transport == "local" for c in cases):
            disk = warm(bench.source("BIG"))[1]
        bench.floors(ssh=any(c.transport == "ssh" for c in cases), links=links, disk=disk)
        for c in cases:
            runner = CaseRunner(bench, c, args.warmup, args.runs, args.probe)
            try:
                runner.go()
            finally:
                runner.clean()
            done.append(c)
        out = Path(args.out)
        png = out.with_suffix(".png")
        note = " — QUICK run, loaded machine" if args.quick else ""
        have_png = plot(png, done, note)
        write_markdown(out, done, facts, cmdline, args, bench.notes, bench.floor_rows, png.name if have_png else None,
                       started)
        print(f"# wrote {out}" + (f" and {png}" if have_png else ""), flush=True)
        for c in done:
            for r in summarize(c):
                if "speedup" in r:
                    print(f"{c.name:22s} {r['name']:18s} speedup {r['speedup']:6.2f}x (min {r['speedup_min']:.2f}x)"
                          f" target {c.target:g}x  {'PASS' if all(x for _, x in verdicts(c, r)) else 'FAIL'}")
        return 0
    finally:
        if bench is not None:
            bench.stop()
        if args.keep:
            print(f"# kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
