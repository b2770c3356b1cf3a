"""The SFTP fallback (DESIGN §2): a remote host without drsync is read and written over plain SFTP,
with one warning, for both --ssh-backend values (the fallback itself always uses paramiko's SFTP)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import treegen
from transport_helpers import ALIAS, BACKENDS, PY, assert_one_error_line, run_cli, ssh_env

NO_DRSYNC = "/nonexistent/drsync"
WARNING = "no drsync on the remote; using the SFTP fallback (sizes only, slower)"


def _cli(backend, home, command, *args, extra=()):
    return run_cli(command, "--ssh-backend", backend, "--drsync-path", NO_DRSYNC, *extra, *args, "--json",
                   env=ssh_env(home), timeout=120)


def _report(r) -> dict:
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    return json.loads(r.stdout)


def _warned_once(stderr: str) -> None:
    lines = [ln for ln in stderr.splitlines() if WARNING in ln]
    assert len(lines) == 1, stderr
    assert lines[0] == f"drsync: warning: {ALIAS}: {WARNING}", stderr
    assert "Traceback" not in stderr, stderr


def _identical(a, b) -> None:
    r = subprocess.run(["diff", "-r", "--no-dereference", "-x", ".drsync", str(a), str(b)], check=False,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_push_to_a_host_without_drsync(backend, ssh_client_env, tmp_path):
    home = ssh_client_env
    src = tmp_path / "src"
    gen = treegen.make_node(str(src))
    dst = tmp_path / "remote"

    r = _cli(backend, home, "push", str(src), f"{ALIAS}:{dst}")
    doc = _report(r)
    _warned_once(r.stderr)
    assert doc["transferred"]["files"] == 60
    _identical(src, dst)
    for g in gen:  # the drsync-manifest/1 index, written over SFTP, covers every version
        index = json.loads((dst / g.drs / ".drsync" / "manifest" / "index.json").read_text())
        assert index["format"] == "drsync-manifest/1"
        assert sorted(index["versions"]) == sorted(p.name[1:] for p in (dst / g.drs).iterdir()
                                                   if p.name.startswith("v"))
        assert os.readlink(dst / g.drs / "latest") == f"v{index['latest']}"

    # a second push is a no-op: the manifest written over SFTP is trusted
    r = _cli(backend, home, "push", str(src), f"{ALIAS}:{dst}")
    doc = _report(r)
    _warned_once(r.stderr)
    assert doc["transferred"]["files"] == 0 and doc["totals"]["versions_to_add"] == 0

    # one new version moves exactly the new files
    for g in gen:
        g.add_version()
    r = _cli(backend, home, "diff", str(src), f"{ALIAS}:{dst}")
    assert r.returncode == 1, r.stderr
    expected = json.loads(r.stdout)["totals"]["files_to_send"]
    assert expected == 16
    r = _cli(backend, home, "push", str(src), f"{ALIAS}:{dst}")
    doc = _report(r)
    assert doc["transferred"]["files"] == expected
    _identical(src, dst)

    # a real agent later trusts the manifest written by the fallback: in sync, no rescan needed
    r = run_cli("diff", "--ssh-backend", backend, "--drsync-path", f"{PY} -m drsync", str(src),
                f"{ALIAS}:{dst}", env=ssh_env(home))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_pull_from_a_host_without_drsync(backend, ssh_client_env, tmp_path):
    home = ssh_client_env
    remote = tmp_path / "remote"
    treegen.make_node(str(remote))
    back = tmp_path / "back"

    r = _cli(backend, home, "pull", f"{ALIAS}:{remote}", str(back))
    doc = _report(r)
    _warned_once(r.stderr)
    assert doc["transferred"]["files"] == 60
    _identical(remote, back)
    r = run_cli("verify", "--checksum", str(back), env=ssh_env(home))
    assert r.returncode == 0, r.stdout + r.stderr

    # again: in sync on sizes and link targets
    r = _cli(backend, home, "pull", f"{ALIAS}:{remote}", str(back))
    doc = _report(r)
    assert doc["transferred"]["files"] == 0 and doc["totals"]["conflicts"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsafe_link_on_the_sftp_source(backend, ssh_client_env, tmp_path):
    home = ssh_client_env
    remote = tmp_path / "remote"
    treegen.make_node(str(remote), treegen.Shape(datasets=1, variables=1, files=3, versions=2))
    ds = remote / treegen.dataset_path(0)
    vdir = min(p for p in ds.iterdir() if p.name.startswith("v"))
    link = next((vdir / os.listdir(vdir)[0]).iterdir())
    link.unlink()
    link.symlink_to("/etc/passwd")
    back = tmp_path / "back"
    r = _cli(backend, home, "pull", f"{ALIAS}:{remote}", str(back))
    assert r.returncode == 4, r.stdout + r.stderr
    assert "link target not canonical" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_host_key_is_refused_before_any_fallback(backend, ssh_client_env, tmp_path):
    home = ssh_client_env
    (home / ".ssh" / "known_hosts").write_bytes(b"")
    src = tmp_path / "src"
    treegen.make_node(str(src), treegen.Shape(datasets=1, variables=1, files=3, versions=2))
    dst = tmp_path / "remote"
    r = _cli(backend, home, "push", str(src), f"{ALIAS}:{dst}")
    assert r.returncode == 5, r.stdout + r.stderr
    line = assert_one_error_line(r.stderr)
    assert "is not in known_hosts" in line, line
    assert WARNING not in r.stderr
    assert not os.path.lexists(dst)
    assert (home / ".ssh" / "known_hosts").read_bytes() == b""


@pytest.mark.parametrize("backend", BACKENDS)
def test_push_onto_a_tree_drsync_never_wrote(backend, ssh_client_env, tmp_path):
    """No manifest on the remote: it is walked sizes-only; only the new version's files move, and a
    version that differs in size is a conflict (exit 3), never overwritten."""
    home = ssh_client_env
    src = tmp_path / "src"
    gen = treegen.make_node(str(src))
    dst = tmp_path / "remote"
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    for g in gen:
        g.add_version()
    r = _cli(backend, home, "push", str(src), f"{ALIAS}:{dst}")
    doc = _report(r)
    _warned_once(r.stderr)
    assert doc["transferred"]["files"] == 16
    _identical(src, dst)
    r = _cli(backend, home, "push", str(src), f"{ALIAS}:{dst}")
    assert _report(r)["transferred"]["files"] == 0

    # a published version on the remote differs in size from the source's: a conflict
    g = gen[0]
    ds = dst / g.drs
    files = ds / "files"
    victim = min(files.iterdir())
    real = min(victim.iterdir())
    with open(real, "ab") as f:
        f.write(b"x")
    r = _cli(backend, home, "push", str(src), f"{ALIAS}:{dst}")
    assert r.returncode == 3, r.stdout + r.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_delete_over_sftp(backend, ssh_client_env, tmp_path):
    """--delete removes a version only the remote has (and the files only it used), over SFTP."""
    home = ssh_client_env
    src = tmp_path / "src"
    gen = treegen.make_node(str(src), treegen.Shape(datasets=1, variables=1, files=3, versions=3))
    dst = tmp_path / "remote"
    _report(_cli(backend, home, "push", str(src), f"{ALIAS}:{dst}"))
    ds = src / gen[0].drs
    versions = sorted((p.name for p in ds.iterdir() if p.name.startswith("v")), key=lambda n: int(n[1:]))
    newest = versions[-1]
    subprocess.run(["rm", "-rf", str(ds / newest), str(ds / "files" / f"var_0_{newest[1:]}")], check=True)
    (ds / "latest").unlink()
    (ds / "latest").symlink_to(versions[-2])
    for d in (ds / "files").iterdir():  # drop files dirs no version references any more
        if d.name.endswith(newest[1:]):
            subprocess.run(["rm", "-rf", str(d)], check=True)
    r = _cli(backend, home, "push", str(src), f"{ALIAS}:{dst}", extra=("--delete",))
    doc = _report(r)
    assert doc["datasets"][0]["extra_versions"] == [newest[1:]]
    _identical(src, dst)
    assert "cannot fsync" not in r.stderr


# --- the sizes-only mode, without a server ------------------------------------------------------


def _man(entries_by_version, *, sizes_only):
    from drsync import manifest as mf
    from drsync.scan import DatasetManifest

    info = mf.size_info if sizes_only else mf.version_info
    man = DatasetManifest("ds", mf.Index(max(entries_by_version, key=int),
                                         {v: info(es) for v, es in entries_by_version.items()}),
                          sizes_only=sizes_only)
    man._entries = dict(entries_by_version)
    return man


def test_sizes_only_plan_compares_sizes_and_targets_never_unknown_digests():
    from drsync import manifest as mf
    from drsync.plan import diff_dataset

    def entry(file, size, digest):
        return mf.Entry("tas", file, "tas_1", size, 0, digest)

    full = _man({"1": [entry("a.nc", 4, "0" * 32), entry("b.nc", 5, "1" * 32)]}, sizes_only=False)
    walked = _man({"1": [entry("a.nc", 4, mf.UNKNOWN_DIGEST), entry("b.nc", 5, mf.UNKNOWN_DIGEST)]},
                  sizes_only=True)
    assert diff_dataset(walked, full).in_sync  # pull: nothing to do, no conflict on unknown digests
    assert diff_dataset(full, walked).in_sync  # push onto a walked tree
    grown = _man({"1": [entry("a.nc", 4, mf.UNKNOWN_DIGEST), entry("b.nc", 6, mf.UNKNOWN_DIGEST)]},
                 sizes_only=True)
    assert diff_dataset(grown, full).conflicts == ("1",)
    assert diff_dataset(full, grown).conflicts == ("1",)
    # a new version referencing a held file of the same size: not sent again
    two = _man({"1": walked.entries("1"),
                "2": [entry("a.nc", 4, mf.UNKNOWN_DIGEST), mf.Entry("tas", "c.nc", "tas_2", 7, 0, mf.UNKNOWN_DIGEST)]},
               sizes_only=True)
    plan = diff_dataset(two, full)
    assert plan.versions_to_add == ("2",) and [e.file for e in plan.files_to_send] == ["c.nc"]


def test_unknown_digest_is_refused_from_a_file_or_an_agent():
    from drsync import manifest as mf
    from drsync.errors import UnsafeInputError

    with pytest.raises(UnsafeInputError):
        mf.make_entry(["tas", "a.nc", "tas_1", 4, 0, mf.UNKNOWN_DIGEST], "1", "ds")
    with pytest.raises(UnsafeInputError):
        mf.index_from_json({"format": mf.FORMAT, "latest": "1",
                            "versions": {"1": {"digest": mf.UNKNOWN_DIGEST, "entries": 1, "bytes": 4}}}, "ds")


@pytest.mark.parametrize("backend", BACKENDS)
def test_changed_host_key_is_refused_before_any_fallback(backend, sshd_server, ssh_client_env, tmp_path):
    home = ssh_client_env
    src = tmp_path / "src"
    treegen.make_node(str(src), treegen.Shape(datasets=1, variables=1, files=3, versions=2))
    dst = tmp_path / "remote"
    with sshd_server.changed_host_key():
        r = _cli(backend, home, "push", str(src), f"{ALIAS}:{dst}", extra=("--accept-new",))
    assert r.returncode == 5, r.stdout + r.stderr
    line = assert_one_error_line(r.stderr)
    assert "host key mismatch" in line, line
    assert WARNING not in r.stderr
    assert not os.path.lexists(dst)
