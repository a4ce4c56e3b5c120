"""The clock a session's timers run on.

A session never reads the system clock itself: it asks its context's
``Clock`` for the time and for timers (the aioquic way: time comes in, timers
go out). The server's clock is its event loop, which already is one
(``loop.time()``, ``loop.call_later``), so ``SessionContext.clock`` and
``S2SContext.clock`` default to None, meaning the running loop. A test that
is about a timeout (a negotiation that never ends, a stanza dripped a byte at
a time, an idle s2s stream) passes a clock it moves forward by hand, and
waits for nothing.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Protocol

__all__ = ["Clock", "Timer", "clock_of"]


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Seconds, monotonic; only differences mean anything."""

    def call_later(self, delay: float, callback: Callable[..., object], *args) -> Timer:
        """Call ``callback(*args)`` ``delay`` seconds from now, unless cancelled."""


def clock_of(clock: Clock | None) -> Clock:
    """``clock``, or the running event loop when it is None."""
    return clock if clock is not None else asyncio.get_running_loop()
