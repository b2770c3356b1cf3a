"""Fixtures of the crash tests: a scratch directory on tmpfs when there is one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


def _tmpfs_root() -> str | None:
    """DRSYNC_CRASH_DIR, else /dev/shm when writable, else None (use pytest's tmp_path)."""
    root = os.environ.get("DRSYNC_CRASH_DIR")
    if root:
        return root
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return None


@pytest.fixture
def fast_tmp(tmp_path):
    """A scratch directory for tests that run many pushes. Kills are process deaths, so the
    filesystem does not change what they test; on tmpfs the flushes cost nothing and a push's
    duration (hence the kill windows) does not depend on other disk traffic on the machine.
    DRSYNC_CRASH_DIR=/some/disk/dir runs the same tests on a real disk."""
    root = _tmpfs_root()
    if root is None:
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="drsync-crash-", dir=root)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def fast_tmp_module(tmp_path_factory):
    root = _tmpfs_root()
    if root is None:
        yield tmp_path_factory.mktemp("template")
        return
    d = tempfile.mkdtemp(prefix="drsync-crash-tpl-", dir=root)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
