"""Who may start a stream: the per-source gate in front of every new connection.

Theory of operation (issue 11.2). One source (an IPv4 address, an IPv6 /64:
``quota.source_of``) must not be able to fill the server's global
``max_unauthenticated`` with idle connections and lock everyone else out.
Two limits apply to every new connection, direct (listener.py) or opened
by a multiplexor (muxlink.py, where the source is the *client's* address
from OPEN, never the multiplexor's):

* ``iim_server.accept_rate_per_source``: new connections per second, bursts
  of twice that (``RateBySource``). Beyond it the connection is closed at
  once, before anything is parsed or allocated for it.
* ``iim_server.max_unauthenticated_per_source``: connections of one source
  still negotiating. Beyond it the connection gets ``<policy-violation/>``.

The count needs no bookkeeping of its own that could leak. ``Negotiating``
is ``ctx.negotiating`` itself, the set every connection joins when it starts
negotiating and leaves when its session is established or closed (c2s.py,
listener.py, federation.py): it counts its members by the source of their
carrier, so a connection stops counting exactly when it stops negotiating.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator, MutableSet

from iim.xmpp.errors import StreamError, StreamErrorCondition

from .quota import CountBySource, LimitLog, RateBySource

__all__ = ["Admission", "Negotiating", "Refusal", "TOO_MANY_FROM_SOURCE"]

TOO_MANY_FROM_SOURCE = "too many unauthenticated connections from your address"
TOO_FAST_FROM_SOURCE = "too many new connections per second from your address"


class Refusal(enum.Enum):
    """Why a new connection is refused; the value is the limit's parameter."""

    RATE = "iim_server.accept_rate_per_source"
    COUNT = "iim_server.max_unauthenticated_per_source"

    def stream_error(self) -> StreamError:
        text = TOO_FAST_FROM_SOURCE if self is Refusal.RATE else TOO_MANY_FROM_SOURCE
        return StreamError(StreamErrorCondition.POLICY_VIOLATION, text)


class Negotiating(MutableSet):
    """``ctx.negotiating``: the connections still negotiating, counted per source.

    A member is counted under ``member.carrier.source`` (members without one,
    like test doubles, are held but not counted). A member that arrives when
    its source is already at ``per_source`` is held uncounted: it is a
    connection being refused, on its way out.
    """

    def __init__(self, per_source: int) -> None:
        self.by_source = CountBySource(per_source)
        self._members: dict[object, str | None] = {}

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def __iter__(self) -> Iterator:
        return iter(list(self._members))

    def __len__(self) -> int:
        return len(self._members)

    def add(self, member: object) -> None:
        if member in self._members:
            return
        source = getattr(getattr(member, "carrier", None), "source", None)
        if source is not None and not self.by_source.add(source):
            source = None
        self._members[member] = source

    def discard(self, member: object) -> None:
        if member not in self._members:
            return
        source = self._members.pop(member)
        if source is not None:
            self.by_source.remove(source)

    def held(self, source: str) -> int:
        """Connections of ``source`` negotiating now."""
        return self.by_source.held(source)

    @property
    def sources(self) -> int:
        """Sources with a connection negotiating (the size of the per-source table)."""
        return len(self.by_source)


class Admission:
    """The per-source gate of one server; ``refusal(source)`` for each new connection."""

    def __init__(self, negotiating: Negotiating, rate: int, limit_log: LimitLog | None,
                 clock=time.monotonic) -> None:
        self.negotiating = negotiating
        self.limit = negotiating.by_source.limit
        self.rates = RateBySource(rate)
        self.limit_log = limit_log
        self.clock = clock

    @classmethod
    def for_context(cls, ctx) -> "Admission":
        """The gate for a SessionContext whose ``negotiating`` is a ``Negotiating``."""
        if not isinstance(ctx.negotiating, Negotiating):
            raise TypeError("per-source limits need ctx.negotiating to be a Negotiating")
        return cls(ctx.negotiating, ctx.limits.accept_rate_per_source, ctx.limit_log)

    def refusal(self, source: str) -> Refusal | None:
        """None: let the connection in. Else why not (logged, rate-limited)."""
        now = self.clock()
        if not self.rates.allow(source, now):
            self._log(Refusal.RATE, now, f"{source}: more than {self.rates.rate} new "
                                         f"connections per second")
            return Refusal.RATE
        held = self.negotiating.held(source)
        if held >= self.limit:
            self._log(Refusal.COUNT, now, f"{source}: {held} connections negotiating")
            return Refusal.COUNT
        return None

    def _log(self, refusal: Refusal, now: float, detail: str) -> None:
        if self.limit_log is not None:
            self.limit_log.hit(refusal.value, now, detail)
