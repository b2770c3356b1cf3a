"""The README's first command (the brief's "two commands"): it installs drsync into ~/.drsync with
Debian's interpreter and runs the demo. Run here from a copy of this checkout, with HOME in a
temporary directory: everything after its apt-get (which .ci/run has already satisfied) as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
APT = "$(command -v sudo) apt-get install -y python3-venv"


def _first_command() -> str:
    blocks = re.findall(r"```sh\n(.*?)\n```", (REPO / "README.md").read_text(), re.DOTALL)
    assert blocks, "README.md shows no sh block"
    return blocks[0].strip()


def test_the_first_command_installs_drsync_with_debians_python_and_runs_the_demo(tmp_path):
    command = _first_command()
    first, sep, rest = command.partition(" && ")
    assert (first, sep) == (APT, " && "), command
    assert rest.startswith("/usr/bin/python3 -m venv ~/.drsync && "), rest
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.fail("/usr/bin/python3 is missing: .ci/run installs python3 and python3-venv with apt-get")
    tree = tmp_path / "clone"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "*.egg-info",
                                                               ".pytest_cache", "node-*-data", "*.whl"))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(home), TMPDIR=str(tmp_path))
    r = subprocess.run(["bash", "-c", rest], cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    venv_python = home / ".drsync" / "bin" / "python"
    assert os.path.realpath(venv_python).startswith("/usr/bin/python3"), os.path.realpath(venv_python)
    assert "Done: node B holds the same versions as node A" in r.stdout, r.stdout[-2000:]
