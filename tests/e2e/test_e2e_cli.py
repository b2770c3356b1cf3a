"""The real CLI: exit codes of DESIGN §6, one-line errors on stderr, conflicts, demo, --help, --version."""

from __future__ import annotations

import os
import re

import drsync
import treegen
from e2e_util import assert_identical, by_path, cli_json, error_lines, latest_at, listing, real_files, versions_at
from invariants import run_drsync


def test_diff_exit_codes(nodes):
    src, dst, generated = nodes
    assert run_drsync("diff", src, dst).returncode == 1
    assert run_drsync("push", "-q", src, dst).returncode == 0
    r = run_drsync("diff", src, dst)
    assert r.returncode == 0
    assert r.stderr == ""
    generated[0].add_version()
    r = run_drsync("diff", src, dst)
    assert r.returncode == 1
    assert generated[0].versions[-1] in r.stdout
    assert r.stderr == ""  # "work to do" is not an error


def test_quiet_push_prints_nothing(nodes):
    src, dst, _ = nodes
    r = run_drsync("push", "-q", src, dst)
    assert r.returncode == 0
    assert r.stdout == "" and r.stderr == ""
    assert_identical(src, dst)


def _conflicting_nodes(tmp_path):
    """Two sources generated alike; in B, dataset 0's newest version has other bytes in one new file,
    and dataset 1 has one more version than A."""
    a = str(tmp_path / "a")
    b = str(tmp_path / "b")
    ga = treegen.make_node(a)
    gb = treegen.make_node(b)
    assert_identical(a, b)
    ds0 = gb[0]
    v = ds0.versions[-1]
    path = sorted(p for rel, p in real_files(ds0.path).items() if rel.split(os.sep)[1].endswith("_" + v))[0]
    with open(path, "r+b") as fh:
        fh.write(b"\x00conflict\x00")
    extra = gb[1].add_version()
    return a, b, ga, gb, v, extra


def test_conflict_exit_3_other_dataset_still_replicated(tmp_path):
    a, b, ga, gb, conflict_v, extra = _conflicting_nodes(tmp_path)
    dst = str(tmp_path / "dst")
    assert drsync.push(a, dst).exit_code == 0
    ds0 = os.path.join(dst, gb[0].drs)
    before0 = listing(os.path.join(ds0, "files")), listing(os.path.join(ds0, f"v{conflict_v}"))

    code, doc, _ = cli_json("diff", "--json", b, dst)
    assert code == 3
    assert by_path(doc)[gb[0].drs]["conflicts"] == [conflict_v]

    code, doc, err = cli_json("push", "--json", b, dst)
    assert code == 3
    d0, d1 = by_path(doc)[gb[0].drs], by_path(doc)[gb[1].drs]
    assert d0["conflicts"] == [conflict_v] and d1["conflicts"] == []
    assert doc["totals"]["conflicts"] == 1
    # the conflicting dataset: nothing written
    assert (listing(os.path.join(ds0, "files")), listing(os.path.join(ds0, f"v{conflict_v}"))) == before0
    assert latest_at(ds0) == f"v{conflict_v}"
    # the other dataset: replicated all the same
    ds1 = os.path.join(dst, gb[1].drs)
    assert versions_at(ds1) == gb[1].versions
    assert latest_at(ds1) == f"v{extra}"
    assert_identical(gb[1].path, ds1)
    # exactly one error line, naming the dataset and the version
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert gb[0].drs in lines[0] and conflict_v in lines[0]
    assert err.strip() == lines[0]

    # the library says the same
    result = drsync.push(b, dst)
    assert result.exit_code == 3
    assert [e.dataset for e in result.errors] == [gb[0].drs]


def test_usage_errors_exit_2_with_one_line(nodes, tmp_path):
    src, dst, _ = nodes
    cases = [
        ("push", "--up-to", "abc", src, dst),
        ("diff", "--up-to", "2010-01-01", src, dst),
        ("push", str(tmp_path / "no-such-source"), dst),
        ("diff", str(tmp_path / "no-such-source"), dst),
        ("pull", str(tmp_path / "no-such-source"), dst),
    ]
    for args in cases:
        r = run_drsync(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert r.stdout == "", args
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("drsync: error: "), (args, r.stderr)
    assert not os.path.lexists(dst)  # no usage error wrote the destination
    r = run_drsync("push", str(tmp_path / "no-such-source"), dst)
    assert "no-such-source" in r.stderr
    r = run_drsync("push", "--up-to", "abc", src, dst)
    assert "abc" in r.stderr and "--up-to" in r.stderr


def test_destination_is_a_file(nodes, tmp_path):
    src, _, _ = nodes
    f = tmp_path / "a-file"
    f.write_text("x")
    for cmd in ("push", "diff", "pull"):
        r = run_drsync(cmd, src, str(f))
        assert r.returncode == 2, (cmd, r.returncode, r.stderr)
        lines = r.stderr.splitlines()
        assert lines and all(line.startswith("drsync: error: ") and "not a directory" in line for line in lines), r.stderr
    assert f.read_text() == "x"


def test_argparse_usage_error_exits_2(nodes):
    src, dst, _ = nodes
    r = run_drsync("push", "--no-such-option", src, dst)
    assert r.returncode == 2
    assert "drsync: error: " in r.stderr
    assert run_drsync().returncode == 2


def test_demo(tmp_path):
    d = str(tmp_path / "demo")
    r = run_drsync("demo", d)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for step in ("$ drsync diff", "$ drsync push", "$ drsync verify"):
        assert step in out, out
    assert out.count("$ drsync push") == 2 and out.count("$ drsync diff") == 2
    assert out.index("$ drsync diff") < out.index("$ drsync push") < out.index("$ drsync verify")
    assert "0 problem(s)" in out
    assert_identical(os.path.join(d, "node-a"), os.path.join(d, "node-b"))
    # a second run refuses to overwrite, with one error line
    r2 = run_drsync("demo", d)
    assert r2.returncode == 2
    assert r2.stderr.startswith("drsync: error: ") and len(r2.stderr.splitlines()) == 1


def test_help_lists_exit_codes():
    r = run_drsync("--help")
    assert r.returncode == 0
    assert "exit codes" in r.stdout
    for code in range(0, 9):
        assert re.search(rf"^\s+{code}\s+\S", r.stdout, re.M), f"exit code {code} missing from --help"
    for cmd in ("diff", "push", "pull", "verify", "scan", "demo"):
        assert cmd in r.stdout
    r = run_drsync("push", "--help")
    assert r.returncode == 0
    assert "exit codes" in r.stdout and "--up-to" in r.stdout and "--dry-run" in r.stdout


def test_version():
    r = run_drsync("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"drsync {drsync.__version__}"
