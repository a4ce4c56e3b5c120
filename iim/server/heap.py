"""Freed heap back to the system after bursts of logins and logouts.

Theory of operation. glibc's malloc keeps what a session frees in its arenas:
the TLS handshake's buffers, the SASL exchange, the expat parser the stanza
watchdog releases once the user goes quiet. A burst of logins leaves those as
holes under the sessions that stay (measured, bench/memory.py: ~8 KB per user
of RSS above what malloc has in use after 1,000 STARTTLS logins), a burst of
logouts leaves whole freed sessions; glibc gives back only the top of the
heap, so the process keeps its high-water mark. ``malloc_trim(0)`` returns
every free page, inside the heap too (``MADV_DONTNEED``), to the kernel.

It walks the free lists, milliseconds on a heap of 100 MB, so it must not
run per login or per message: ``TrimPolicy`` trims once at least ``churn``
sessions opened or closed since the last trim (``SessionContext.turnover``),
and only when the burst is over: no session opened or closed for ``quiet``
seconds, which the server sets past the watchdog's first tick, so the last
logins' parsers are freed before the trim. Steady churn that is never quiet
is trimmed every ``longest`` seconds. Not glibc (musl, macOS): nothing to do.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from typing import Callable

CHECK_SECONDS = 2.0         # how often the server looks
CHURN = 100                 # sessions opened + closed that make a trim worth its milliseconds
LONGEST = 60.0              # seconds between trims when churn never stops


class TrimPolicy:
    """When to trim, from the turnover count read every few seconds (no clock of its own)."""

    __slots__ = ("churn", "quiet", "longest", "_trimmed_at", "_trimmed_count",
                 "_changed_at", "_count")

    def __init__(self, *, quiet: float, churn: int = CHURN, longest: float = LONGEST,
                 now: float = 0.0, count: int = 0) -> None:
        self.churn, self.quiet, self.longest = churn, quiet, longest
        self._trimmed_at, self._trimmed_count = now, count
        self._changed_at, self._count = now, count

    def due(self, now: float, count: int) -> bool:
        """``count``: sessions opened + closed so far. True: trim now (the
        policy takes it as done)."""
        if count != self._count:
            self._changed_at, self._count = now, count
        if count - self._trimmed_count < self.churn:
            return False
        quiet = now - self._changed_at >= self.quiet
        if not quiet and now - self._trimmed_at < self.longest:
            return False
        self._trimmed_at, self._trimmed_count = now, count
        return True


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None when the C library has none."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


async def trim_after_bursts(turnover: Callable[[], int], quiet: float, log) -> None:
    """Run ``TrimPolicy`` every CHECK_SECONDS until cancelled; one debug line a trim."""
    trim = malloc_trim()
    if trim is None:
        return
    loop = asyncio.get_running_loop()
    policy = TrimPolicy(quiet=quiet, now=loop.time(), count=turnover())
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        if policy.due(loop.time(), turnover()):
            began = time.perf_counter()
            trim()
            log.debug("heap trimmed (malloc_trim) in %.1f ms",
                      (time.perf_counter() - began) * 1000)
