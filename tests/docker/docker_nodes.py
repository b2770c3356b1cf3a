"""Helpers and fixtures of the docker tests: a Docker engine, the node image built from this tree,
and nodes (registered by tests/docker/conftest.py).

Every build and every container uses host networking only (``--network host``): each node's sshd
listens on its own free port on 127.0.0.1, so no traffic goes to a bridge or any other address.

Without a Docker engine these tests skip, loudly, on a developer's machine; under CI (``CI`` set,
where ``.ci/run`` installs docker.io and starts dockerd) they fail instead, so that a broken engine
is never a silent pass.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("DRSYNC_TEST_BASE_IMAGE", "drsync-base:bookworm")
NODE_IMAGE = "drsync-node:test"
LABEL = "drsync-test=docker"
HOST = "127.0.0.1"
BUILD_TIMEOUT = 1500


def need(ok: object, reason: str) -> None:
    """Skip (with the reason shown by ``-ra``) when ``ok`` is false; under CI, fail instead."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"docker tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"DOCKER TESTS NOT RUN: {reason}")


def run(args: list[str], *, timeout: float = 120, check: bool = True, env: dict | None = None,
        cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
                       stdin=subprocess.DEVNULL, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str) -> Path:
    """An ed25519 key without passphrase at ``path`` (and ``path.pub``); returns the .pub path."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    os.chmod(path, 0o600)
    return path.with_name(path.name + ".pub")


def pub_key(pub: Path) -> str:
    """``ssh-ed25519 AAAA...``: the type and base64 of a .pub file, comment dropped."""
    return " ".join(pub.read_text().split()[:2])


@pytest.fixture(scope="session")
def docker_cli() -> str:
    """The docker client, talking to a running engine."""
    docker = shutil.which("docker")
    need(docker, "no docker client on PATH (install docker.io)")
    r = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL, check=False)
    need(r.returncode == 0, f"no Docker engine answers `docker info` (start dockerd as .ci/run does): "
                            f"{(r.stderr or r.stdout).strip()[-500:]}")
    return docker


@pytest.fixture(scope="session")
def node_image(docker_cli) -> str:
    """The node image of docker/Dockerfile, built from this tree on the debootstrap base image
    (made by docker/build-base.sh unless it exists), with the wheelhouse of docker/fetch-wheels.sh."""
    need(shutil.which("debootstrap") or _image_exists(docker_cli, BASE_IMAGE),
         f"no {BASE_IMAGE} image and no debootstrap to make it (install debootstrap)")
    run(["sh", str(REPO / "docker" / "build-base.sh"), BASE_IMAGE], timeout=BUILD_TIMEOUT)
    run(["sh", str(REPO / "docker" / "fetch-wheels.sh")], timeout=600, env={**os.environ, "PYTHON": sys.executable})
    run([docker_cli, "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
         "-f", str(REPO / "docker" / "Dockerfile"), "-t", NODE_IMAGE, str(REPO)], timeout=BUILD_TIMEOUT)
    return NODE_IMAGE


def _image_exists(docker: str, image: str) -> bool:
    return subprocess.run([docker, "image", "inspect", image], capture_output=True, timeout=60,
                          check=False).returncode == 0


@dataclasses.dataclass
class Node:
    """A node container: sshd on 127.0.0.1:``port``, host directories as its volumes."""

    docker: str
    name: str  # the container's name
    port: int
    ssh: Path  # -> /etc/drsync/ssh: host key, authorized_keys
    client: Path  # -> /root/.ssh: client key, known_hosts
    data: Path  # -> /data: the node root

    @property
    def host_pub(self) -> Path:
        return self.ssh / "ssh_host_ed25519_key.pub"

    def spec(self, path: str = "/data") -> str:
        return f"{HOST}:{self.port}:{path}"

    def exec(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return run([self.docker, "exec", self.name, *args], timeout=timeout, check=False)

    def logs(self) -> str:
        r = run([self.docker, "logs", self.name], check=False)
        return r.stdout + r.stderr

    def trust(self, client: Node) -> None:
        """Let ``client`` log in here, and put this node's host key in ``client``'s known_hosts."""
        with open(self.ssh / "authorized_keys", "a") as fh:
            fh.write(pub_key(client.client / "id_ed25519.pub") + f" {client.name}\n")
        with open(client.client / "known_hosts", "a") as fh:
            fh.write(f"[{HOST}]:{self.port} {pub_key(self.host_pub)}\n")


@pytest.fixture
def start_node(docker_cli, node_image, tmp_path) -> Iterator:
    """``start_node("a")`` -> a running Node with a new host key and client key; removed afterwards."""
    started: list[str] = []
    prefix = f"drsync-test-{uuid.uuid4().hex[:8]}"

    def start(label: str) -> Node:
        root = tmp_path / f"node-{label}"
        node = Node(docker_cli, f"{prefix}-{label}", free_port(), root / "ssh", root / "client", root / "data")
        for d in (node.ssh, node.client, node.data):
            d.mkdir(parents=True)
        node.client.chmod(0o700)
        keygen(node.ssh / "ssh_host_ed25519_key", f"{label} host")
        keygen(node.client / "id_ed25519", f"{label} client")
        (node.ssh / "authorized_keys").touch()
        (node.client / "known_hosts").touch()
        run([docker_cli, "run", "-d", "--name", node.name, "--label", LABEL, "--network", "host",
             "-e", f"DRSYNC_SSH_PORT={node.port}", "-e", f"DRSYNC_SSH_ADDRESS={HOST}",
             "-v", f"{node.ssh}:/etc/drsync/ssh", "-v", f"{node.client}:/root/.ssh", "-v", f"{node.data}:/data",
             node_image])
        started.append(node.name)
        _wait_for_sshd(node)
        return node

    yield start
    for name in started:
        run([docker_cli, "rm", "-f", "-v", name], check=False)


def _wait_for_sshd(node: Node, timeout: float = 30) -> None:
    """Until the node's sshd sends its banner on 127.0.0.1:port (or the container has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, node.port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        state = run([node.docker, "inspect", "-f", "{{.State.Running}}", node.name], check=False).stdout.strip()
        if state != "true":
            break
        time.sleep(0.2)
    raise AssertionError(f"sshd of {node.name} did not answer on {HOST}:{node.port}:\n{node.logs()[-3000:]}")


@pytest.fixture(scope="session")
def compose_cli(docker_cli) -> list[str]:
    """Compose v2 (``docker compose``) when the plugin is there, else Compose v1 (``docker-compose``)."""
    if subprocess.run([docker_cli, "compose", "version"], capture_output=True, timeout=60, check=False).returncode == 0:
        return [docker_cli, "compose"]
    v1 = shutil.which("docker-compose")
    need(v1, "neither `docker compose` nor `docker-compose` (install Debian's docker-compose)")
    return [v1]
