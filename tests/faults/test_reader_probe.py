"""FAULTS G5: a concurrent reader never sees a missing `latest` or an incomplete version while
pushes keep adding versions (locally, and over ssh to `drsync-test:`; the remote directory is on
this machine, so the reader reads it directly)."""

from __future__ import annotations

import os
import subprocess
import sys

import treegen
from publish_helpers import env_with
from reader_probe import SHAPE, Reader, expected_versions

AGENT = f"{sys.executable} -m drsync"
MIN_SAMPLES = 300


def _probe(src_root: str, dst: str, versions: int, extra: list[str], env: dict) -> Reader:
    (ds,) = treegen.make_node(src_root, SHAPE, versions=versions)
    push = [sys.executable, "-m", "drsync", "push", *extra]
    target = f"drsync-test:{dst}" if extra else dst
    cp = subprocess.run([*push, "--up-to", ds.versions[0], src_root, target], capture_output=True, text=True,
                        env=env, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert cp.returncode == 0, cp.stderr
    reader = Reader(os.path.join(dst, ds.drs), expected_versions(os.path.join(src_root, ds.drs)))
    reader.start()
    try:
        for v in ds.versions[1:]:
            cp = subprocess.run([*push, "--up-to", v, src_root, target], capture_output=True, text=True, env=env,
                                timeout=120, stdin=subprocess.DEVNULL, check=False)
            assert cp.returncode == 0, cp.stderr
        while reader.samples < MIN_SAMPLES and reader.is_alive():
            reader.join(0.05)
    finally:
        reader.stop()
    assert os.readlink(os.path.join(dst, ds.drs, "latest")) == f"v{ds.versions[-1]}"
    return reader


def _assert_clean(reader: Reader, versions: int) -> None:
    print(f"\nreader probe: {reader.samples} samples, {len(reader.versions_seen)} versions seen, bad {len(reader.bad)}")
    assert not reader.bad, reader.bad[:5]
    assert reader.samples >= MIN_SAMPLES
    # the reader really watched the pushes: it saw several versions as `latest`, not just the last
    assert len(reader.versions_seen) >= versions // 2, sorted(reader.versions_seen)


def test_reader_never_sees_partial_latest_local(fast_tmp):
    versions = 16
    reader = _probe(str(fast_tmp / "src"), str(fast_tmp / "dst"), versions, [], env_with())
    _assert_clean(reader, versions)


def test_reader_never_sees_partial_latest_ssh(sshd_server, ssh_client_env, tmp_path):
    versions = 8
    env = dict(env_with(), HOME=str(ssh_client_env))
    reader = _probe(str(tmp_path / "src"), str(tmp_path / "remote"), versions,
                    ["--ssh-backend", "asyncssh", "--drsync-path", AGENT], env)
    _assert_clean(reader, versions)
