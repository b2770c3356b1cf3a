"""Retries of failures that may pass (a lost connection), with exponential backoff and jitter.

One policy for push/pull (``--retries``) and for mirror jobs (the jobs file's ``retries``): only a
retryable error (``DrsyncError.retryable``: a link that was refused, reset, dropped or went silent)
is tried again, a bounded number of times. Host keys, authentication, conflicts, unsafe input, I/O
and integrity errors fail at once: they would fail the same way again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from .errors import DrsyncError
from .events import Events

TYPE_CHECKING = False  # typing's own flag, without importing typing at start-up
if TYPE_CHECKING:
    import random

DEFAULT_RETRIES = 3
BACKOFF_BASE = 2.0  # seconds before the first retry (before jitter)
BACKOFF_CAP = 300.0


def backoff(attempt: int, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): exponential, with jitter in [50 %, 100 %]
    so that many clients cut off by one outage do not all reconnect in the same second."""
    return min(cap, base * 2 ** (attempt - 1)) * (0.5 + rng.random() / 2)


def retryable(errors: Iterable[DrsyncError]) -> bool:
    """True when there were errors and every one of them may pass on a retry."""
    errors = list(errors)
    return bool(errors) and all(e.retryable for e in errors)


def pause(seconds: float) -> None:
    """The backoff wait (a seam: tests replace it to retry without sleeping)."""
    time.sleep(seconds)


class Retries:
    """A run's retry budget. ``again(errors)`` is False for a permanent failure or once ``retries``
    retries are spent; otherwise it warns, waits the backoff, and returns True."""

    def __init__(self, retries: int, events: Events, what: str = "", *,
                 sleep: Callable[[float], None] | None = None, rng: random.Random | None = None):
        self.retries = retries
        self.events = events
        self.what = what
        self.sleep = sleep
        self.rng = rng  # made on the first retry: importing random costs every run ~1 ms
        self.attempts = 1  # the attempt under way, 1-based
        self.delays: list[float] = []

    def again(self, errors: Iterable[DrsyncError] | DrsyncError) -> bool:
        errors = [errors] if isinstance(errors, DrsyncError) else list(errors)
        if self.attempts > self.retries or not retryable(errors):
            return False
        if self.rng is None:
            import random

            self.rng = random.Random()
        delay = backoff(self.attempts, self.rng)
        prefix = f"{self.what}: " if self.what else ""
        self.events.warning(f"{prefix}{errors[0].line()}; retry {self.attempts} of {self.retries} in {delay:.1f} s")
        (self.sleep or pause)(delay)
        self.delays.append(delay)
        self.attempts += 1
        return True
