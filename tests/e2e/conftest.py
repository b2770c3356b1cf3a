"""Fixtures of the end-to-end tests (the generated `nodes` come from tests/conftest.py)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import drsync  # noqa: E402


@pytest.fixture
def pushed(nodes):
    """`nodes` after a first, successful library push of the whole source into the empty destination."""
    src, dst, generated = nodes
    result = drsync.push(src, dst, drsync.Options())
    assert result.exit_code == 0, [e.line() for e in result.errors]
    return src, dst, generated
