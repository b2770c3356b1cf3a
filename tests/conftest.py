"""Shared fixtures: generated nodes, and the tests/ directory on sys.path for the helpers."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import treegen  # noqa: E402


@pytest.fixture
def nodes(tmp_path):
    """A generated source node (TINY shape: 2 datasets x 4 versions) and an empty destination."""
    src = str(tmp_path / "node-a")
    dst = str(tmp_path / "node-b")
    generated = treegen.make_node(src, treegen.TINY)
    return src, dst, generated
from sshd import sshd_server, ssh_client_env  # noqa: E402,F401
