"""`drsync demo`: the thetao example of DESIGN §1, replicated from node A to node B.

The example ships inside the package as code (``example.py``) so that it survives any packaging
(wheels do not keep symlinks): it builds the real files and the relative links on the fly.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable

from ..plan import Options
from ..report import render_text
from ..sync import diff, push
from ..verify import verify
from .example import DATASET, add_version, build_node

Say = Callable[[str], None]


def run_demo(directory: str, say: Say) -> int:
    """Build node A in ``directory``, replicate to node B twice, verify; return an exit code."""
    node_a = os.path.join(directory, "node-a")
    node_b = os.path.join(directory, "node-b")
    for p in (node_a, node_b):
        if os.path.exists(p):
            raise FileExistsError(f"{p} already exists; give `drsync demo` an empty or new directory")
    build_node(node_a, upto=2)
    say(f"# node A: {os.path.join(node_a, DATASET)} with versions v20091023 and v20100101")

    def step(args: list[str], fn, *a, **kw):
        say(f"\n$ drsync {' '.join(shlex.quote(x) for x in args)}")
        result = fn(*a, **kw)
        text = render_text(result) if hasattr(result, "plan") else _verify_text(result)
        say(text)
        return result.exit_code

    step(["diff", node_a, node_b], diff, node_a, node_b)
    code = step(["push", node_a, node_b], push, node_a, node_b, Options())
    if code:
        return code
    add_version(node_a, 3)
    say("\n# node A publishes a third version, v20110101 (thetao_5.nc replaced, thetao_6.nc added)")
    step(["diff", node_a, node_b], diff, node_a, node_b)
    code = step(["push", node_a, node_b], push, node_a, node_b, Options())
    if code:
        return code
    code = step(["verify", "--checksum", node_b], verify, node_b, checksum=True)
    if code == 0:
        say(f"\nDone: node B holds the same versions as node A; see {directory}")
    return code


def _verify_text(result) -> str:
    lines = [f"{f.dataset}: {f.path}: {f.problem}" for f in result.findings]
    lines.append(f"verify: {len(result.datasets)} dataset(s), {result.checked_files} link(s) checked, "
                 f"{len(result.findings)} problem(s)")
    return "\n".join(lines)
