"""The node image of docker/: it builds from this tree, and one container pushes to another over ssh.

Host networking only: each container's sshd listens on its own free port of 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import invariants
import pytest
import treegen
from docker_nodes import REPO, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the first test builds the images

SOURCE_DIGEST = """
import hashlib, os, sys
root = os.path.dirname(__import__("drsync").__file__)
h = hashlib.sha256()
for d, dirs, files in sorted(os.walk(root)):
    dirs[:] = sorted(x for x in dirs if x != "__pycache__")
    for f in sorted(files):
        if f.endswith(".py"):
            p = os.path.join(d, f)
            h.update(os.path.relpath(p, root).encode() + b"\\0" + open(p, "rb").read())
print(h.hexdigest())
"""


def source_digest_here() -> str:
    """The same digest, of this tree's drsync/: the same script, run by this interpreter."""
    r = subprocess.run([sys.executable, "-c", SOURCE_DIGEST], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO))
    return r.stdout.strip()


def test_image_holds_this_trees_drsync_and_a_working_sshd_setup(docker_cli, node_image):
    r = run([docker_cli, "run", "--rm", "--network", "host", "--entrypoint", "/opt/drsync/bin/python",
             node_image, "-c", SOURCE_DIGEST])
    assert r.stdout.strip() == source_digest_here(), "the image's drsync is not this tree's"
    r = run([docker_cli, "run", "--rm", "--network", "host", node_image, "drsync", "--version"])
    import drsync

    assert r.stdout.split() == ["drsync", drsync.__version__]
    # sshd's own check (-t) of the command line the entrypoint builds; it makes a host key first
    r = run([docker_cli, "run", "--rm", "--network", "host", "-e", "DRSYNC_SSH_PORT=2299", "-e",
             "DRSYNC_SSH_ADDRESS=127.0.0.1", node_image, "sshd", "-t"], check=False)
    assert r.returncode == 0, f"sshd -t exited {r.returncode}: {r.stderr[-2000:]}"
    assert "made a new host key /etc/drsync/ssh/ssh_host_ed25519_key" in r.stderr, r.stderr


def real_file_attrs(node: str) -> dict[str, tuple[int, int, int]]:
    """(size, mode, mtime in whole seconds) of every real file under every dataset's files/."""
    out = {}
    for rel in invariants.datasets(node):
        base = os.path.join(node, rel, "files")
        for d, _, files in os.walk(base):
            for f in files:
                st = os.lstat(os.path.join(d, f))
                out[os.path.relpath(os.path.join(d, f), node)] = (st.st_size, stat.S_IMODE(st.st_mode),
                                                                  int(st.st_mtime))
    return out


def assert_same_node(src: str, dst: str) -> None:
    """Same datasets, versions (every link target), latest, real files (bytes, mode, mtime)."""
    s, d = invariants.snapshot(src), invariants.snapshot(dst)
    assert sorted(d) == sorted(s) and s, f"datasets differ: {sorted(s)} vs {sorted(d)}"
    for rel in s:
        assert sorted(d[rel]["versions"]) == sorted(s[rel]["versions"]), rel
        assert d[rel]["versions"] == s[rel]["versions"], f"{rel}: version entries differ"
        assert d[rel]["latest"] == s[rel]["latest"], f"{rel}: latest differs"
        assert d[rel]["files"] == s[rel]["files"], f"{rel}: real files differ"
    assert real_file_attrs(dst) == real_file_attrs(src)
    r = subprocess.run(["diff", "-r", "--no-dereference", "-x", ".drsync", src, dst], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, f"trees differ:\n{r.stdout[-3000:]}{r.stderr[-1000:]}"


def push_json(a, b) -> dict:
    r = a.exec("drsync", "push", "--json", "/data", b.spec())
    assert r.returncode == 0, f"push exited {r.returncode}: {r.stderr[-3000:]}\n--- B's log:\n{b.logs()[-2000:]}"
    assert "SFTP fallback" not in r.stderr, "the push did not use B's drsync agent"
    return json.loads(r.stdout)


def test_push_from_one_container_to_another(start_node):
    a, b = start_node("a"), start_node("b")
    b.trust(a)
    generated = treegen.make_node(str(a.data), treegen.TINY)
    assert invariants.datasets(str(a.data)) and not invariants.datasets(str(b.data))

    report = push_json(a, b)
    assert report["command"] == "push" and report["destination"] == b.spec()
    assert report["totals"]["versions_to_add"] == treegen.TINY.datasets * treegen.TINY.versions
    assert report["totals"]["conflicts"] == 0
    assert "Accepted publickey for root from 127.0.0.1" in b.logs(), "the push did not log in to B's sshd"
    assert_same_node(str(a.data), str(b.data))
    v = b.exec("drsync", "verify", "--checksum", "/data")
    assert v.returncode == 0, f"verify on B exited {v.returncode}: {v.stdout[-2000:]}{v.stderr[-1000:]}"
    d = a.exec("drsync", "diff", "/data", b.spec())
    assert d.returncode == 0, f"diff after the push exited {d.returncode} (not in sync): {d.stdout[-2000:]}"

    # A publishes one more version: the next push sends only its new files.
    new = [ds.add_version() for ds in generated]
    report = push_json(a, b)
    by_path = {ds["path"]: ds for ds in report["datasets"]}
    for ds, version in zip(generated, new):
        assert by_path[ds.drs]["versions_to_add"] == [version]
        assert by_path[ds.drs]["files_to_send"] == ds.new_bytes(version)[0]
    assert report["transferred"]["files"] == sum(ds.new_bytes(v)[0] for ds, v in zip(generated, new))
    assert_same_node(str(a.data), str(b.data))
    v = b.exec("drsync", "verify", "--checksum", "/data")
    assert v.returncode == 0, f"verify on B exited {v.returncode}: {v.stdout[-2000:]}{v.stderr[-1000:]}"


def test_push_refuses_a_host_key_not_in_known_hosts(start_node):
    a, b, c = start_node("a"), start_node("b"), start_node("c")
    b.trust(a)
    treegen.make_node(str(a.data), treegen.TINY)
    # A's known_hosts names C's host key for B's address: B's real key is then a changed key.
    (a.client / "known_hosts").write_text(f"[127.0.0.1]:{b.port} {' '.join(c.host_pub.read_text().split()[:2])}\n")
    r = a.exec("drsync", "push", "/data", b.spec())
    assert r.returncode == 5, f"push exited {r.returncode}, not 5: {r.stderr[-2000:]}"
    assert "host key mismatch" in r.stderr, r.stderr
    assert not invariants.datasets(str(b.data)), "something was written to B"
    # and a key nobody recorded is refused too (no silent trust on first use)
    (a.client / "known_hosts").write_text("")
    r = a.exec("drsync", "push", "/data", b.spec())
    assert r.returncode == 5 and "is not in known_hosts" in r.stderr, r.stderr
    assert not invariants.datasets(str(b.data)), "something was written to B"
