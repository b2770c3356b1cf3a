"""DESIGN §4 step 1, "digest checked": a whole file is hashed from the very bytes written into its
partial (locally while copying, over ssh as they arrive, on either end), not read back; a resumed
partial, whose first bytes came from an earlier run, is read back whole. Either way a byte that is
not the manifest's is refused (exit 8) and the version that needs it is not published."""

from __future__ import annotations

import os
import sys

import pytest
import treegen
from publish_helpers import half_sent

import drsync
from drsync import publish

AGENT = f"{sys.executable} -m drsync"
SHAPE = treegen.Shape(datasets=1, variables=2, files=6, versions=2, changed=0.5, added=1, removed=0)


def _count_read_backs(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = publish.Receiver._partial_digest

    def partial_digest(self, partial, e):
        seen.append(e.file)
        return real(self, partial, e)

    monkeypatch.setattr(publish.Receiver, "_partial_digest", partial_digest)
    return seen


def _flip_one_new_file(ds) -> str:
    """One byte of a real file of the newest version, same size and mtime, after its scan."""
    d = os.path.join(ds.path, "files", f"var_0_{ds.versions[-1]}")
    path = os.path.join(d, min(os.listdir(d)))
    treegen.flip_byte(path)
    return path


def test_a_local_copy_is_hashed_while_written_not_read_back(tmp_path, monkeypatch):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    [ds] = treegen.make_node(src, SHAPE)
    seen = _count_read_backs(monkeypatch)
    r = drsync.push(src, dst)
    assert r.exit_code == 0 and r.transferred.files > 0
    assert seen == []
    for dirpath, _, names in os.walk(os.path.join(src, os.path.relpath(ds.path, src), "files")):
        for n in names:
            with open(os.path.join(dirpath, n), "rb") as a, \
                    open(os.path.join(dst, os.path.relpath(dirpath, src), n), "rb") as b:
                assert a.read() == b.read()


def test_a_resumed_partial_is_read_back_whole(tmp_path, monkeypatch):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    ds, to_send, real, head = half_sent(src, dst, SHAPE)  # what a killed run leaves: half of one file
    rel = os.path.relpath(ds.path, src)
    seen = _count_read_backs(monkeypatch)
    r = drsync.push(src, dst)
    assert r.exit_code == 0
    assert seen == [real.file]  # only the resumed one
    assert r.transferred.bytes == sum(e.size for e in to_send) - len(head)  # its first half not sent again
    with open(os.path.join(dst, rel, "files", real.dir, real.file), "rb") as a, \
            open(os.path.join(src, rel, "files", real.dir, real.file), "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("where", ["local", "ssh push", "ssh pull"])
def test_a_byte_changed_after_the_scan_is_refused(tmp_path, where, request):
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    [ds] = treegen.make_node(src, SHAPE)
    rel = os.path.relpath(ds.path, src)
    opts = drsync.Options(up_to=ds.versions[0], drsync_path=AGENT)
    if where == "local":
        first = lambda o: drsync.push(src, dst, o)
    else:
        request.getfixturevalue("ssh_client_env")
        if where == "ssh push":
            first = lambda o: drsync.push(src, f"drsync-test:{dst}", o)
        else:  # the remote node is the source: the client hashes what arrives
            first = lambda o: drsync.pull(f"drsync-test:{src}", dst, o)
    assert first(opts).exit_code == 0
    assert drsync.scan(src)  # digests recorded, then a byte changes under them
    path = _flip_one_new_file(ds)
    r = first(opts._replace(up_to=None))
    assert r.exit_code == 8, [e.line() for e in r.errors]
    line = r.errors[0].line()
    assert "digest" in line and os.path.basename(path) in line
    newest = os.path.join(dst, rel, f"v{ds.versions[-1]}")
    assert not os.path.exists(newest)
    assert os.readlink(os.path.join(dst, rel, "latest")) == f"v{ds.versions[0]}"
    assert not os.path.exists(os.path.join(dst, rel, "files", f"var_0_{ds.versions[-1]}", os.path.basename(path)))
