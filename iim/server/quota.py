"""Counting what peers use: sources, rates, counts, and the line a limit logs.

The limits themselves are parameters (iim/conf/limits.py); this module holds
the small machines that apply them, with time passed in (``now``, seconds on
a monotonic clock) so that tests drive them without sleeping.

- ``source_of``: the key per-source limits count under. One IPv4 address, or
  one IPv6 /64 (a host is usually given a whole /64, so single IPv6 addresses
  would bound nothing); an IPv4-mapped IPv6 address counts as its IPv4 one.
- ``TokenBucket`` / ``RateBySource``: a rate with bursts of twice the rate.
- ``CountBySource``: how many of something each source holds now.
- ``LimitLog``: one log line per limit per interval, counting the refusals
  since the previous line, so that a flood of refusals cannot flood the log.

The tables keyed by source are themselves bounded: a bucket that has refilled
completely says nothing a fresh one would not, so idle ones are dropped; a
count that falls to zero is removed.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

__all__ = ["CountBySource", "LimitLog", "RateBySource", "TokenBucket", "source_of"]


def source_of(address: str) -> str:
    """``"192.0.2.7"`` -> ``"192.0.2.7"``; ``"2001:db8::1"`` -> ``"2001:db8::/64"``.
    Anything that is not an IP address (a unix socket path, "") is its own source."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class TokenBucket:
    """``rate`` events per second on average, up to ``2 * rate`` at once."""

    rate: float
    tokens: float = field(default=-1.0)
    stamp: float = 0.0

    @property
    def burst(self) -> float:
        return 2.0 * self.rate

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst

    def _refill(self, now: float) -> None:
        if self.tokens < 0:                         # new: starts full
            self.tokens, self.stamp = self.burst, now
            return
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


class RateBySource:
    """One ``TokenBucket`` per source; idle (full) buckets are forgotten."""

    PRUNE_EVERY = 1024

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._buckets: dict[str, TokenBucket] = {}
        self._calls = 0

    def allow(self, source: str, now: float) -> bool:
        self._calls += 1
        if self._calls % self.PRUNE_EVERY == 0:
            self._prune(now)
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = TokenBucket(self.rate)
        return bucket.allow(now)

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        for source in [s for s, b in self._buckets.items() if b.full(now)]:
            del self._buckets[source]


class CountBySource:
    """How many of something (connections, pending handshakes) each source
    holds; ``add`` refuses beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def add(self, source: str) -> bool:
        """Count one more for ``source``; False (nothing counted) at the limit."""
        held = self._counts.get(source, 0)
        if held >= self.limit:
            return False
        self._counts[source] = held + 1
        return True

    def remove(self, source: str) -> None:
        held = self._counts.get(source, 0) - 1
        if held > 0:
            self._counts[source] = held
        else:
            self._counts.pop(source, None)

    def held(self, source: str) -> int:
        return self._counts.get(source, 0)

    def __len__(self) -> int:
        return len(self._counts)


class LimitLog:
    """``hit(param, now, detail)``: a warning at most once per ``interval``
    seconds per limit, naming the parameter and counting what it refused::

        limit iim_server.max_resources: refused 17 since the last report
        (latest: alice@example.com: 10 sessions)
    """

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.logger, self.interval = logger, interval
        self._last: dict[str, float] = {}
        self._refused: dict[str, int] = {}

    def hit(self, param: str, now: float, detail: str = "") -> None:
        self._refused[param] = self._refused.get(param, 0) + 1
        last = self._last.get(param)
        if last is not None and now - last < self.interval:
            return
        count = self._refused.pop(param)
        self._last[param] = now
        latest = f" (latest: {detail})" if detail else ""
        first = last is None
        self.logger.warning("limit %s: refused %d %s%s", param, count,
                            "so far" if first else "since the last report", latest)
