"""`drsync verify`: clean trees pass; a flipped byte, a broken link, a stale `latest` do not."""

from __future__ import annotations

import json
import os

import drsync
from e2e_util import real_files
from invariants import run_drsync


def _some_real_file(dst, ds) -> tuple[str, str]:
    rel = sorted(real_files(os.path.join(dst, ds.drs)))[0]
    return rel, os.path.join(dst, ds.drs, rel)


def test_verify_good_tree(pushed):
    src, dst, generated = pushed
    r = run_drsync("verify", dst)
    assert r.returncode == 0, r.stdout
    r = run_drsync("verify", "--checksum", dst)
    assert r.returncode == 0, r.stdout
    assert "0 problem(s)" in r.stdout
    res = drsync.verify(dst, checksum=True)
    assert res.exit_code == 0 and not res.findings
    assert sorted(res.datasets) == sorted(ds.drs for ds in generated)
    assert res.checked_files > 0


def test_verify_checksum_finds_a_flipped_byte(pushed):
    src, dst, generated = pushed
    ds = generated[1]
    rel, path = _some_real_file(dst, ds)
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(100)
        b = fh.read(1)
        fh.seek(100)
        fh.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    # size and mtime unchanged: only re-reading the bytes finds it
    assert run_drsync("verify", dst).returncode == 0
    r = run_drsync("verify", "--checksum", dst)
    assert r.returncode == 1, r.stdout
    assert rel in r.stdout and ds.drs in r.stdout
    other = generated[0].drs
    assert not any(line.startswith(other) for line in r.stdout.splitlines())
    r = run_drsync("verify", "--checksum", "--json", dst)
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert [(f["dataset"], f["path"]) for f in doc["findings"]] == [(ds.drs, rel)]


def test_verify_finds_a_broken_link(pushed):
    src, dst, generated = pushed
    ds = generated[0]
    rel, path = _some_real_file(dst, ds)
    os.unlink(path)
    r = run_drsync("verify", dst)
    assert r.returncode == 1, r.stdout
    assert "broken link" in r.stdout
    fname = os.path.basename(rel)
    assert fname in r.stdout
    res = drsync.verify(dst)
    assert res.exit_code == 1
    assert all(f.dataset == ds.drs for f in res.findings)
    assert any(f.path.endswith("/" + fname) and "broken" in f.problem for f in res.findings)


def test_verify_json_is_valid(pushed):
    src, dst, generated = pushed
    r = run_drsync("verify", "--json", dst)
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["findings"] == []
    assert sorted(doc["datasets"]) == sorted(ds.drs for ds in generated)
    assert doc["checked_files"] > 0


def test_verify_finds_a_stale_latest(pushed):
    src, dst, generated = pushed
    ds = generated[0]
    latest = os.path.join(dst, ds.drs, "latest")
    tmp = latest + ".tmp"
    os.symlink(f"v{ds.versions[0]}", tmp)
    os.replace(tmp, latest)
    r = run_drsync("verify", "--json", dst)
    assert r.returncode == 1
    findings = json.loads(r.stdout)["findings"]
    assert [(f["dataset"], f["path"]) for f in findings] == [(ds.drs, "latest")]
