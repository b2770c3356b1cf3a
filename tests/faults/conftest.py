"""Fixtures of the fault tests (FAULTS B8, E3/E4, G1, G5): the crash tests' helpers and tmpfs dirs."""

from __future__ import annotations

import importlib.util
import os
import sys

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_TESTS, "publish"))
sys.path.insert(0, os.path.join(_TESTS, "transports"))

# the scratch-dir fixtures of tests/publish/conftest.py (tmpfs when there is one), reused as they are
_spec = importlib.util.spec_from_file_location("_publish_conftest", os.path.join(_TESTS, "publish", "conftest.py"))
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
fast_tmp = _mod.fast_tmp
fast_tmp_module = _mod.fast_tmp_module
