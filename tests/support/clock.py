"""A clock moved by hand, for the sessions' timers (iim/server/clock.py).

``SessionContext(clock=ManualClock())``: the session's negotiation timer,
stanza watchdog and held login answers fire when the test calls
``advance(seconds)``, in the order they are due, and never on their own.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable


class ManualTimer:
    def __init__(self, when: float, callback: Callable[..., object], args: tuple) -> None:
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """``time()`` starts at ``start`` and moves only with ``advance``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._due: list[tuple[float, int, ManualTimer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args) -> ManualTimer:
        timer = ManualTimer(self.now + max(0.0, delay), callback, args)
        heapq.heappush(self._due, (timer.when, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, running each timer due on the way at its time."""
        end = self.now + seconds
        while self._due and self._due[0][0] <= end:
            when, _, timer = heapq.heappop(self._due)
            self.now = max(self.now, when)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self.now = end

    def pending(self) -> int:
        """Timers not yet run nor cancelled."""
        return sum(not timer.cancelled for _, _, timer in self._due)
