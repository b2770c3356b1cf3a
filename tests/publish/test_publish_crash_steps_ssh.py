"""FAULTS D1 through the remote agent: the agent (the receiver of a push over ssh) dies at the first
occurrence of every named publish step, and at its first received chunk. The client reports exit 5
(it does not retry: --retries 0, so the crash state stays to be checked); the published state at
the remote satisfies I1-I6; the next push converges (I7), sends exactly the files still missing
from files/ and rewrites none that was complete.
"""

from __future__ import annotations

import json

import invariants
import pytest
import treegen
from publish_helpers import (STEPS, assert_not_rewritten, check_unpublished, clone_pair, make_canary, make_pair,
                             partial_files, real_files, source_files)
from transports.transport_helpers import AGENT, ALIAS, run_cli, ssh_env, wait_agents_gone

SHAPE = treegen.Shape(datasets=2, variables=2, files=6, versions=4, size=4096)
# partial_write is the local source's copy step; over ssh the agent writes what it receives (recv_chunk)
REMOTE_STEPS = [s for s in STEPS if s != "partial_write"] + ["recv_chunk"]


@pytest.fixture(scope="module")
def template(fast_tmp_module):
    src, dst, _ = make_pair(str(fast_tmp_module), SHAPE, published=2)
    return src, dst


@pytest.mark.parametrize("step", REMOTE_STEPS)
def test_agent_killed_at_step_then_resume(fast_tmp, template, sshd_server, ssh_client_env, step):
    src, dst = clone_pair(template, str(fast_tmp))
    outside, canary = make_canary(str(fast_tmp))
    env = ssh_env(ssh_client_env)
    before = invariants.snapshot(dst)

    crashed = run_cli("push", "--json", "--retries", "0", "--drsync-path", f"env DRSYNC_FAULT={step}:1 {AGENT}",
                      src, f"{ALIAS}:{dst}", env=env)
    assert crashed.returncode == 5, f"{step}: exit {crashed.returncode}: {crashed.stderr}"
    assert crashed.stderr.count("drsync: error:") == 1, crashed.stderr
    wait_agents_gone(sshd_server)
    invariants.check(src, dst, before)
    check_unpublished(src, dst)

    after_crash = real_files(dst)
    missing = source_files(src) - set(after_crash)
    rerun = run_cli("push", "--json", "--drsync-path", AGENT, src, f"{ALIAS}:{dst}", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["transferred"]["files"] == len(missing)
    invariants.check(src, dst, before)
    invariants.check_converged(src, dst)
    assert_not_rewritten(after_crash, dst)
    assert source_files(src) == set(real_files(dst))
    assert partial_files(dst) == {}
    assert invariants.tree_state(outside) == canary
