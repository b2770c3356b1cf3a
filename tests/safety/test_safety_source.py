"""DESIGN §8 / FAULTS A9-A11: source trees with bad names, links or layout.

Each case breaks dataset 0 of the source and pushes the whole node through the real CLI: exit 4,
one escaped error line naming the dataset and the path, nothing of dataset 0 written at the
destination, dataset 1 still replicated, and the canary `outside` untouched.
"""

from __future__ import annotations

import os

import pytest
from safety_helpers import DS0, DS1, V1, V2, V4, assert_failed, assert_replicated, new_env, push, tree_state

VAR = "var_0"


def _first(d: str) -> str:
    return min(os.listdir(d))


def _relink(ds: str, version: str, name: str, target: str) -> str:
    """Replace (or add) link ``v<version>/<VAR>/<name>`` with ``target``; return its relative path."""
    p = os.path.join(ds, f"v{version}", VAR, name)
    if os.path.lexists(p):
        os.unlink(p)
    os.symlink(target, p)
    return f"v{version}/{VAR}/{name}"


def _abs_target(ds, env):
    vdir = os.path.join(ds, f"v{V4}", VAR)
    name = _first(vdir)
    real = os.path.realpath(os.path.join(vdir, name))
    return _relink(ds, V4, name, real)


def _dotdot_escape(ds, env):
    # ../../files/x_1/../../../outside/f, with the target really there (it resolves outside)
    os.makedirs(os.path.join(os.path.dirname(ds), "outside"), exist_ok=True)
    with open(os.path.join(os.path.dirname(ds), "outside", "f"), "wb") as fh:
        fh.write(b"outside the dataset\n")
    return _relink(ds, V4, "f", f"../../files/{VAR}_{V1}/../../../outside/f")


def _dot_component(ds, env):
    fdir = os.path.join(ds, "files", f"{VAR}_{V1}")
    with open(os.path.join(fdir, "f"), "wb") as fh:
        fh.write(b"real\n")
    return _relink(ds, V4, "f", f"../../files/{VAR}_{V1}/./f")


def _trailing_slash(ds, env):
    fdir = os.path.join(ds, "files", f"{VAR}_{V1}")
    name = _first(fdir)
    return _relink(ds, V4, name, f"../../files/{VAR}_{V1}/{name}/")


def _other_variable(ds, env):
    fdir = os.path.join(ds, "files", f"var_1_{V1}")
    name = _first(fdir)
    return _relink(ds, V4, name, f"../../files/var_1_{V1}/{name}")


def _later_version(ds, env):
    fdir = os.path.join(ds, "files", f"{VAR}_{V2}")
    name = _first(fdir)
    return _relink(ds, V1, name, f"../../files/{VAR}_{V2}/{name}")


def _missing_file(ds, env):
    return _relink(ds, V4, "missing.nc", f"../../files/{VAR}_{V1}/missing.nc")


def _name_with(char):
    def make(ds, env):
        name = f"bad{char}name.nc"
        fdir = os.path.join(ds, "files", f"{VAR}_{V4}")
        os.makedirs(fdir, exist_ok=True)
        with open(os.path.join(fdir, name), "wb") as fh:
            fh.write(b"x")
        _relink(ds, V4, name, f"../../files/{VAR}_{V4}/{name}")
        return f"v{V4}/{VAR}/bad\\x{ord(char):02x}name.nc"  # escaped in the message
    return make


def _version_named(vname):
    def make(ds, env):
        os.rename(os.path.join(ds, f"v{V4}"), os.path.join(ds, vname))
        return vname
    return make


def _version_symlink(ds, env):
    os.symlink(f"v{V4}", os.path.join(ds, "v20100501"))
    return "v20100501"


def _files_symlink(ds, env):
    os.rename(os.path.join(ds, "files"), os.path.join(ds, "files.real"))
    os.symlink("files.real", os.path.join(ds, "files"))
    return "files"


def _regular_file_in_version(ds, env):
    vdir = os.path.join(ds, f"v{V4}", VAR)
    name = _first(vdir)
    real = os.path.realpath(os.path.join(vdir, name))
    os.unlink(os.path.join(vdir, name))
    with open(real, "rb") as a, open(os.path.join(vdir, name), "wb") as b:
        b.write(a.read())
    return f"v{V4}/{VAR}/{name}"


def _nondir_in_version(ds, env):
    with open(os.path.join(ds, f"v{V4}", "stray.txt"), "wb") as fh:
        fh.write(b"not a variable directory\n")
    return f"v{V4}/stray.txt"


def _latest_to(target):
    def make(ds, env):
        os.unlink(os.path.join(ds, "latest"))
        os.symlink(target if target != "outside" else env.outside, os.path.join(ds, "latest"))
        return "latest"
    return make


CASES = {
    "latest-missing-version": _latest_to("v20990101"),
    "latest-outside": _latest_to("outside"),
    "latest-dotdot": _latest_to(f"v{V4}/../../x"),
    "absolute-target": _abs_target,
    "dotdot-escape": _dotdot_escape,
    "dot-component": _dot_component,
    "trailing-slash": _trailing_slash,
    "other-variable": _other_variable,
    "later-version": _later_version,
    "missing-file": _missing_file,
    "newline-in-name": _name_with("\n"),
    "esc-in-name": _name_with("\x1b"),
    "version-v1e3": _version_named("v1e3"),
    "version-trailing-space": _version_named(f"v{V1} "),
    "version-symlink": _version_symlink,
    "files-symlink": _files_symlink,
    "regular-file-in-version": _regular_file_in_version,
    "non-directory-in-version": _nondir_in_version,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_source_tree_is_refused(tmp_path, case):
    env = new_env(tmp_path)
    where = CASES[case](env.sds(DS0), env)
    canary = tree_state(env.outside)

    cp = push(env)

    line = assert_failed(cp, 4, DS0, where)
    assert "\n" not in line and "\x1b" not in line
    # nothing of the bad dataset written: not even its directory
    assert not os.path.lexists(env.dds(DS0)), os.listdir(os.path.dirname(env.dds(DS0)))
    # the good dataset in the same node is still replicated
    assert_replicated(env, DS1)
    assert tree_state(env.outside) == canary


@pytest.mark.parametrize("case", ["absolute-target", "dotdot-escape", "missing-file", "newline-in-name"])
def test_bad_source_tree_diff_and_json(tmp_path, case):
    """`diff --json` on a bad tree: exit 4, the JSON report still parses, nothing written."""
    import json

    from safety_helpers import run_drsync

    env = new_env(tmp_path)
    CASES[case](env.sds(DS0), env)
    cp = run_drsync("diff", "--json", env.src, env.dst)
    assert cp.returncode == 4, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["format"] == "drsync-report/1"
    assert len([ln for ln in cp.stderr.splitlines() if ln.startswith("drsync: error: ")]) == 1
    assert not os.path.exists(env.dst)
