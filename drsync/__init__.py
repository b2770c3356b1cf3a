"""drsync: replicate versioned datasets in the drslib layout between nodes.

The library API (the CLI is a thin layer over it)::

    import drsync
    result = drsync.diff("/data/node-a", "/data/node-b")     # the plan; writes nothing
    result = drsync.push("/data/node-a", "/data/node-b", drsync.Options(delete=False))
    result.exit_code, result.transferred                       # 0, Received(files=..., bytes=...)
    report = drsync.verify("/data/node-b", checksum=True)

The names below are loaded on first use: ``import drsync`` itself imports almost nothing, so that
the ``drsync`` command can start connecting to a remote node before it imports the planning and
publishing machinery (cli.main). ``from drsync import push`` and ``drsync.push`` work as usual.
"""

import sys
import types

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "DrsyncError": ("errors", "DrsyncError"),
    "Events": ("events", "Events"),
    "Recorder": ("events", "Recorder"),
    "Options": ("options", "Options"),
    "Plan": ("plan", "Plan"),
    "diff_dataset": ("plan", "diff_dataset"),
    "plan": ("plan", "diff_dataset"),  # alias (docs/api.md)
    "RunResult": ("sync", "RunResult"),
    "diff": ("sync", "diff"),
    "pull": ("sync", "pull"),
    "push": ("sync", "push"),
    "scan": ("sync", "scan"),
    "verify": ("verify", "verify"),
}

__all__ = ["DrsyncError", "Events", "Options", "Plan", "Recorder", "RunResult", "__version__", "diff", "diff_dataset",
           "plan", "pull", "push", "scan", "verify"]


def __getattr__(name: str):
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'drsync' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Importing a submodule binds it as an attribute of the package; drsync.plan, drsync.scan
        # and drsync.verify name functions of the API (as they always have), so their modules,
        # which sys.modules holds, are not bound over them.
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
