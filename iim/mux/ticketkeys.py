"""TLS session ticket keys of one multiplexor: shared by its workers, rotated hourly.

Every worker must decrypt the tickets any other worker issued (the kernel
hands a client's next connection to whichever worker), and a key that
encrypted tickets for months would expose every session resumed with them.
So the keys come from a *ratchet* the supervisor and the workers step alike:

* Time is cut into periods of ``PERIOD`` seconds (period n = unix time // PERIOD).
* Each period has a 32-byte seed; the next one is
  ``HMAC-SHA256(seed, "iim-mux ticket ratchet")``, so a seed says nothing about
  the seeds before it. A period's ticket key - a 16-byte name, an HMAC-SHA256
  key and an AES-256 key - is derived from its seed (``iim/_tickets.pyx``,
  ``TicketRing``).
* Tickets are sealed under the current period's key and opened under it or
  the two before (OpenSSL then issues a fresh one): a ticket lives two to three
  periods, longer than the 7,200 s lifetime OpenSSL announces.
* The supervisor keeps the last three seeds only and hands them, with the
  period number, to each worker it starts (``serialize``); a worker steps
  its own copy as the clock moves on (``TlsContext.rotate_ticket_keys``). Both
  follow the same clock, so they agree without talking.

What someone who reads a process's memory learns: the tickets of the last
three hours, not those of the months before.

This module is pure Python (hashlib, hmac) so that the supervisor never loads
the relay core.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

__all__ = ["PERIOD", "RING", "SERIALIZED_BYTES", "TicketKeys", "period", "ratchet"]

#: Seconds a ticket key encrypts new tickets.
PERIOD = 3600
#: Periods whose keys still open tickets (the current one and two before).
RING = 3
#: period (8 bytes, big-endian) + RING seeds of 32 bytes, oldest first.
SERIALIZED_BYTES = 8 + 32 * RING

RATCHET_LABEL = b"iim-mux ticket ratchet"


def period(now: float) -> int:
    """The period of unix time `now`."""
    return int(now // PERIOD)


def ratchet(seed: bytes) -> bytes:
    """The next period's seed."""
    return hmac.new(seed, RATCHET_LABEL, hashlib.sha256).digest()


class TicketKeys:
    """The supervisor's ring of the last RING seeds."""

    def __init__(self, now: float) -> None:
        self.period = period(now)
        # Seeds of the two periods before the first are random too: nothing was
        # sealed under them, and none can be derived from another.
        self._seeds = [secrets.token_bytes(32) for _ in range(RING)]

    def advance(self, now: float) -> None:
        """Step the ratchet up to the period of `now` (never back)."""
        target = period(now)
        while self.period < target:          # step by step: workers step the same chain
            self._seeds = self._seeds[1:] + [ratchet(self._seeds[-1])]
            self.period += 1

    def serialize(self, now: float) -> bytes:
        """What a worker started now gets through its pipe."""
        self.advance(now)
        return struct.pack(">q", self.period) + b"".join(self._seeds)
