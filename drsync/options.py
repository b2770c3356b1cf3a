"""Options: what the user asked for, one record shared by the CLI, the library and the agent.

Its own small module (only ``collections``): the command line builds it, and starts connecting to
a remote node, before the planning and publishing machinery is imported (cli.main).
"""

from __future__ import annotations

from collections import namedtuple


class _DataclassFields:
    """``__dataclass_fields__`` of a record class, made on first use from a dataclass twin with the
    same fields and defaults: ``dataclasses.replace``/``fields``/``asdict``/``is_dataclass`` then
    accept the record (docs/api.md promises ``dataclasses.replace`` on Options), while a run, which
    never asks, never imports ``dataclasses`` (with inspect, ast and dis: ~10 ms of every process)."""

    def __get__(self, obj, cls):
        import dataclasses

        twin = dataclasses.make_dataclass(
            cls.__name__, [(n, object, dataclasses.field(default=d)) for n, d in cls._field_defaults.items()],
            frozen=True)
        type.__setattr__(cls, "__dataclass_fields__", twin.__dataclass_fields__)
        return twin.__dataclass_fields__


_OPTIONS = {
    "up_to": None,
    "delete": False,
    "checksum": False,
    "link": False,
    "fsync": True,
    "wait": True,
    "dry_run": False,
    "datasets": (),
    "exclude": (),
    "state_dir": None,
    "jobs": 1,
    "bwlimit": None,  # bytes per second
    "ssh_backend": "asyncssh",
    "accept_new": False,
    "drsync_path": "drsync",
    "retries": 3,  # reconnect and resume after a lost connection, at most this often per run
    "timeout": 60.0,  # seconds an ssh link may stay silent before it counts as lost (0: never)
}


class Options(namedtuple("Options", list(_OPTIONS), defaults=list(_OPTIONS.values()))):
    """What the user asked for; travels as one value, not a row of booleans. Frozen: derive a
    variant with ``options._replace(delete=True)`` or ``dataclasses.replace(options, delete=True)``."""

    __slots__ = ()
    __dataclass_fields__ = _DataclassFields()


def check_timeout(value: object) -> float:
    """Validate ``--timeout``: seconds, 0 (never time out) or from 1 to a day."""
    from .errors import UsageError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value == 0 or 1 <= value <= 86400):
        raise UsageError(f"--timeout wants seconds: 0 (never) or from 1 to 86400, not {value!r}")
    return float(value)
