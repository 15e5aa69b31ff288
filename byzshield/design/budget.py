"""The budget of the worst-case search (:class:`Budget`): work units, seconds, or both."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Budget", "Progress"]

Progress = Callable[[int, int], None]
"""A progress callback: (done, total)."""


class Budget:
    """A search budget in work units, in seconds, or both (whichever runs out first).

    A work unit is one node of the branch and bound, one vectorised block of the class
    search, or one move of the local search. A budget of work alone makes the search do
    the same steps on any machine, so the Byzantine set it picks does not depend on the
    machine's speed or load (training uses that); seconds suit an interactive table.
    """

    def __init__(self, work: int | None = None, seconds: float | None = None):
        if work is not None and (isinstance(work, bool) or not isinstance(work, int) or work < 1):
            raise ValueError(f"work must be a positive integer (search steps), got {work!r}")
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0
        ):
            raise ValueError(f"time_budget must be a positive number of seconds, got {seconds!r}")
        self.work = work
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.used = 0

    def share(self, parts: int) -> Budget:
        """A budget for one of ``parts`` remaining pieces of the search (split evenly)."""
        work = None if self.work is None else max(1, (self.work - self.used) // max(parts, 1))
        seconds = None
        if self.deadline is not None:
            seconds = max(0.01, (self.deadline - time.monotonic()) / max(parts, 1))
        child = Budget(work, seconds)
        child.parent = self
        return child

    def spend(self, units: int = 1) -> bool:
        """Record ``units`` of work; False once the budget is exhausted."""
        self.used += units
        parent = getattr(self, "parent", None)
        if parent is not None:
            parent.used += units
        if self.work is not None and self.used > self.work:
            return False
        return self.deadline is None or time.monotonic() <= self.deadline
