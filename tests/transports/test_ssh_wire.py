"""Bytes on the wire for one new version over ssh (DESIGN §9: <= new bytes + 10 % + 64 KiB)."""

import sys

import pytest

import drsync
import treegen

AGENT = f"{sys.executable} -m drsync"


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_one_new_version_wire_budget(tmp_path, sshd_server, ssh_client_env, backend):
    shape = treegen.Shape(datasets=1, variables=3, files=200, versions=6, changed=0.1, added=10, removed=0,
                          size=4096)
    src = str(tmp_path / "src")
    (ds,) = treegen.make_node(src, shape)
    spec = f"drsync-test:{tmp_path / 'remote'}"
    assert drsync.push(src, spec, drsync.Options(ssh_backend=backend, drsync_path=AGENT)).exit_code == 0
    version = ds.add_version()
    drsync.scan(src)  # the source's manifest is kept up to date on the node, as after any push
    from drsync.transports.remote import RemoteNode

    seen = []
    real_close = RemoteNode.close

    def close(self):
        seen.append(self.wire_bytes)
        real_close(self)

    RemoteNode.close = close
    try:
        r = drsync.push(src, spec, drsync.Options(ssh_backend=backend, drsync_path=AGENT))
    finally:
        RemoteNode.close = real_close
    assert r.exit_code == 0
    files, new_bytes = ds.new_bytes(version)
    assert r.transferred.files == files and r.transferred.bytes == new_bytes
    assert seen and seen[0] <= new_bytes * 1.10 + 64 * 1024, (seen[0], new_bytes)
