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

Growth without churn. Sessions that stay and chat open and close nothing,
yet a moment when the server falls behind (the machine busy elsewhere, a
burst of traffic) fills queues - the mux links' input, transports' output,
per-session backlogs - that are freed once it catches up, and glibc keeps the
high-water mark (bench/README.md, soak: +25 MB in one such minute of ten at
10,000 sessions). So the policy also watches the process's resident size
(``/proc/self/statm``, one read per check): once it is ``GROWTH`` (and at
least ``GROWTH_FLOOR`` bytes) above what it was right after the last trim,
it trims, at most every ``longest`` seconds. Growth that is real (more
sessions) is not given back; the trim then costs its milliseconds once and
the new size becomes the mark, so it does not trim again for it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from typing import Callable

CHECK_SECONDS = 2.0         # how often the server looks
CHURN = 100                 # sessions opened + closed that make a trim worth its milliseconds
LONGEST = 60.0              # seconds between trims when churn never stops
GROWTH = 0.02               # resident size this much above the mark left by the last trim ...
GROWTH_FLOOR = 4 * 2**20    # ... and at least this many bytes: trim (at most every LONGEST s)


class TrimPolicy:
    """When to trim, from the turnover count and the resident size read every
    few seconds (no clock of its own)."""

    __slots__ = ("churn", "quiet", "longest", "growth", "floor", "_trimmed_at",
                 "_trimmed_count", "_changed_at", "_count", "_mark")

    def __init__(self, *, quiet: float, churn: int = CHURN, longest: float = LONGEST,
                 growth: float = GROWTH, floor: int = GROWTH_FLOOR,
                 now: float = 0.0, count: int = 0, resident: int = 0) -> None:
        self.churn, self.quiet, self.longest = churn, quiet, longest
        self.growth, self.floor = growth, floor
        self._trimmed_at, self._trimmed_count = now, count
        self._changed_at, self._count = now, count
        self._mark = resident

    def due(self, now: float, count: int, resident: int = 0) -> bool:
        """``count``: sessions opened + closed so far; ``resident``: the process's
        resident bytes (0: unknown). True: trim now (the policy takes it as
        done; ``trimmed`` tells it the size after)."""
        if count != self._count:
            self._changed_at, self._count = now, count
        if self._grown(now, resident) or self._churned(now, count):
            self._trimmed_at, self._trimmed_count = now, count
            self._mark = resident
            return True
        return False

    def trimmed(self, resident: int) -> None:
        """The resident size the trim left: growth is counted from here."""
        self._mark = resident

    def _churned(self, now: float, count: int) -> bool:
        if count - self._trimmed_count < self.churn:
            return False
        quiet = now - self._changed_at >= self.quiet
        return quiet or now - self._trimmed_at >= self.longest

    def _grown(self, now: float, resident: int) -> bool:
        if not resident or not self._mark or now - self._trimmed_at < self.longest:
            return False
        return resident - self._mark >= max(self.floor, self.growth * self._mark)


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None when the C library has none."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def resident_bytes() -> int:
    """The process's resident size (Linux ``/proc/self/statm``), 0 elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


async def trim_after_bursts(turnover: Callable[[], int], quiet: float, log) -> None:
    """Run ``TrimPolicy`` every CHECK_SECONDS until cancelled; one log line a trim."""
    trim = malloc_trim()
    if trim is None:
        return
    loop = asyncio.get_running_loop()
    policy = TrimPolicy(quiet=quiet, now=loop.time(), count=turnover(),
                        resident=resident_bytes())
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        before = resident_bytes()
        if policy.due(loop.time(), turnover(), before):
            began = time.perf_counter()
            trim()
            after = resident_bytes()
            policy.trimmed(after)
            log.info("heap trimmed (malloc_trim) in %.1f ms: resident %.1f -> %.1f MB",
                      (time.perf_counter() - began) * 1000, before / 2**20, after / 2**20)
