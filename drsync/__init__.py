"""drsync: replicate versioned datasets in the drslib layout between nodes.

The library API (the CLI is a thin layer over it)::

    import drsync
    result = drsync.diff("/data/node-a", "/data/node-b")     # the plan; writes nothing
    result = drsync.push("/data/node-a", "/data/node-b", drsync.Options(delete=False))
    result.exit_code, result.transferred                       # 0, Received(files=..., bytes=...)
    report = drsync.verify("/data/node-b", checksum=True)
"""

__version__ = "0.1.0"

from .errors import DrsyncError  # noqa: E402
from .events import Events, Recorder  # noqa: E402
from .plan import Options, Plan, diff_dataset  # noqa: E402
from .sync import RunResult, diff, pull, push, scan  # noqa: E402
from .verify import verify  # noqa: E402

plan = diff_dataset

__all__ = ["DrsyncError", "Events", "Options", "Plan", "Recorder", "RunResult", "diff", "diff_dataset", "plan",
           "pull", "push", "scan", "verify", "__version__"]
