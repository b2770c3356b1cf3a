"""docker/compose.yaml: two nodes and the mirror job of docker/jobs.toml, from node A to node B.

The compose file runs as documented, with its settings from the environment: the test's image,
two free loopback ports, and node roots in a temporary directory.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import invariants
import pytest
import treegen
from docker_nodes import REPO, free_port, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # may build the images

COMPOSE_FILE = str(REPO / "docker" / "compose.yaml")


def test_compose_mirrors_node_a_to_node_b(compose_cli, node_image, tmp_path):
    a_data, b_data = tmp_path / "node-a-data", tmp_path / "node-b-data"
    generated = treegen.make_node(str(a_data), treegen.TINY)
    b_data.mkdir()
    env = {**os.environ, "DRSYNC_IMAGE": node_image, "NODE_A_PORT": str(free_port()),
           "NODE_B_PORT": str(free_port()), "NODE_A_DATA": str(a_data), "NODE_B_DATA": str(b_data),
           "MIRROR_EVERY": "1h"}
    compose = [*compose_cli, "-f", COMPOSE_FILE, "-p", f"drsync-test-{uuid.uuid4().hex[:8]}"]
    config = run([*compose, "config"], env=env)
    assert "network_mode: host" in config.stdout and "bridge" not in config.stdout
    try:
        run([*compose, "up", "-d", "--no-build"], env=env, timeout=300)
        # the mirror service runs its job at once: wait for its run-log line
        deadline, record = time.monotonic() + 120, None
        while time.monotonic() < deadline and record is None:
            r = run([*compose, "exec", "-T", "mirror", "cat", "/var/lib/drsync/runs.jsonl"], env=env, check=False)
            lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
            record = json.loads(lines[0]) if lines else None
            time.sleep(0.5)
        logs = run([*compose, "logs", "--no-color"], env=env, check=False).stdout
        assert record is not None, f"no run-log line from the mirror service:\n{logs[-4000:]}"
        assert record["job"] == "node-a-to-node-b" and record["status"] == "ok", (record, logs[-4000:])
        assert record["versions"] == treegen.TINY.datasets * treegen.TINY.versions
        assert "Accepted publickey for root from 127.0.0.1" in logs
        s, d = invariants.snapshot(str(a_data)), invariants.snapshot(str(b_data))
        assert s and d == s, "node B's root is not node A's"
        for ds in generated:
            assert os.readlink(b_data / ds.drs / "latest") == f"v{ds.versions[-1]}"
        v = run([*compose, "exec", "-T", "node-b", "drsync", "verify", "--checksum", "/data"], env=env, check=False)
        assert v.returncode == 0, f"verify on node B exited {v.returncode}: {v.stdout[-2000:]}{v.stderr[-1000:]}"
        m = run([*compose, "exec", "-T", "mirror", "cat",
                 "/var/lib/drsync/metrics/drsync-mirror-node-a-to-node-b.prom"], env=env)
        assert 'drsync_versions_total{job="node-a-to-node-b"} 8.0' in m.stdout, m.stdout
    finally:
        run([*compose, "down", "-v", "--remove-orphans"], env=env, check=False, timeout=300)
