"""XEP-0198 Stream Management, the receiving entity's bookkeeping, sans-I/O.

Theory of operation (XEP-0198 §3-§5). After binding, a client may send
``<enable/>``; from then on each side counts the *stanzas* (message,
presence, iq: never the SM elements themselves) it has handled, and either
side may ask the other for its count with ``<r/>`` and learn it from
``<a h='...'/>``. Counts are unsigned 32-bit integers that wrap to 0 after
2^32 - 1 (§4: "h" is modulo 2^32), so every comparison here is modulo 2^32.

What we sent and the client has not acknowledged waits in ``unacked``, in
order, each with the bytes it costs in memory. An ``<a h/>`` removes from its
head as many stanzas as ``h`` moved on since the last acknowledgement; an
``h`` that moves on further than we ever sent (or backwards, which modulo
2^32 is the same thing) is the client's error: the stream error
``<undefined-condition/>`` with XEP-0198's ``<handled-count-too-high/>``.

Resumption (§5). ``<enable resume='true'/>`` gets an unguessable id (the
adapter keeps it, bound to the account, and keeps the session alive when the
connection is lost). A new stream authenticated as the same user may then
send ``<resume previd h/>`` instead of binding: ``h`` acknowledges what the
client received before the break, ``rewind`` hands back the rest to send
again, and the new stream goes on with these same counters. Everything that
can go wrong on the way is a ``<failed/>`` with a stanza error condition
(``Refusal``), and the stream lives on: enabling before binding or twice is
``unexpected-request``, resuming an id we do not hold for this user is
``item-not-found``.

This module holds the counters, the queue and the elements on the wire;
``ServerStream`` decides when each element is allowed.
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from xml.etree.ElementTree import Element, SubElement

from .errors import (
    STANZA_ERRORS_NS, AppCondition, StanzaErrorCondition, StreamError, StreamErrorCondition,
)

SM_NS = "urn:xmpp:sm:3"
MODULUS = 1 << 32
ACK_REQUEST_AT = 5
"""Unacknowledged stanzas after which we ask for an ack (one ``<r/>`` at a time)."""


def tag(name: str) -> str:
    return f"{{{SM_NS}}}{name}"


class Refusal(enum.Enum):
    """Why a ``<enable/>`` or ``<resume/>`` gets ``<failed/>`` (XEP-0198 §3, §5),
    each with the stanza error condition that goes in it."""

    NOT_BOUND = ("enable before binding (§3)", StanzaErrorCondition.UNEXPECTED_REQUEST)
    ALREADY_ENABLED = ("enable twice (§3)", StanzaErrorCondition.UNEXPECTED_REQUEST)
    NOT_RESUMABLE = ("no such session for this user, or expired (§5)",
                     StanzaErrorCondition.ITEM_NOT_FOUND)
    RESUME_TOO_LATE = ("resume after binding (§5)", StanzaErrorCondition.UNEXPECTED_REQUEST)
    BAD_REQUEST = ("no previd, or an h that is not a number", StanzaErrorCondition.BAD_REQUEST)

    @property
    def condition(self) -> StanzaErrorCondition:
        return self.value[1]


def add(count: int, n: int = 1) -> int:
    """``count + n`` modulo 2^32."""
    return (count + n) % MODULUS


def distance(since: int, to: int) -> int:
    """How far ``to`` is ahead of ``since``, modulo 2^32."""
    return (to - since) % MODULUS


def parse_h(value: str | None) -> int | None:
    """An ``h`` attribute: an unsigned 32-bit integer, else None."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if number < MODULUS else None


def new_id() -> str:
    """A resumption id: 144 random bits, never derived from anything a peer can see."""
    return secrets.token_urlsafe(18)


class TooHigh(StreamError):
    """The peer acknowledged more stanzas than we sent (XEP-0198 §4)."""

    def __init__(self, h: int, sent: int) -> None:
        super().__init__(StreamErrorCondition.UNDEFINED_CONDITION,
                         f"You acknowledged {h} stanzas, but I only sent you {sent} so far.",
                         application=AppCondition(SM_NS, "handled-count-too-high",
                                                  {"h": str(h), "send-count": str(sent)}))


class Management:
    """The counters and the unacknowledged queue of one managed stream."""

    def __init__(self, resumption_id: str | None = None, max_seconds: int = 0) -> None:
        self.resumption_id = resumption_id      # None: acks only, no resumption
        self.max_seconds = max_seconds
        self.handled = 0                        # stanzas received from the peer (our h)
        self.sent = 0                           # stanzas sent to the peer
        self.acked = 0                          # the peer's last h
        self.unacked: deque[tuple[Element, int]] = deque()
        self.unacked_bytes = 0
        self.asked = False                      # an <r/> of ours is unanswered

    # -- counting --------------------------------------------------------------

    def received(self) -> None:
        """The peer sent a stanza and we handled it."""
        self.handled = add(self.handled)

    def sent_stanza(self, stanza: Element, size: int = 0) -> bool:
        """We sent a stanza; True when it is time to ask for an ack."""
        self.sent = add(self.sent)
        self.unacked.append((stanza, size))
        self.unacked_bytes += size
        if self.asked or len(self.unacked) < ACK_REQUEST_AT:
            return False
        self.asked = True
        return True

    def acknowledge(self, h: int) -> list[Element]:
        """The peer handled ``h`` stanzas in all: what that releases. TooHigh,
        and nothing changed, when ``h`` is ahead of what we sent."""
        count = distance(self.acked, h)
        if count > len(self.unacked):
            raise TooHigh(h, self.sent)
        self.acked, self.asked = h, False
        return [self._pop() for _ in range(count)]

    def _pop(self) -> Element:
        stanza, size = self.unacked.popleft()
        self.unacked_bytes -= size
        return stanza

    def rewind(self) -> list[Element]:
        """After ``acknowledge`` on resumption: what to send again, in order;
        the count goes back to the acknowledged one, since the new stream
        counts these stanzas again as they are resent."""
        again = [self._pop() for _ in range(len(self.unacked))]
        self.sent, self.asked = self.acked, False
        return again

    def release(self) -> list[Element]:
        """The stream is over for good: everything unacknowledged, in order."""
        return [self._pop() for _ in range(len(self.unacked))]


# -- the elements ------------------------------------------------------------------


def feature() -> Element:
    return Element(tag("sm"))


def enabled(management: Management) -> Element:
    element = Element(tag("enabled"))
    if management.resumption_id is not None:
        element.attrib.update(id=management.resumption_id, resume="true",
                              max=str(management.max_seconds))
    return element


def failed(refusal: Refusal) -> Element:
    element = Element(tag("failed"))
    SubElement(element, f"{{{STANZA_ERRORS_NS}}}{refusal.condition.value}")
    return element


def resumed(management: Management) -> Element:
    return Element(tag("resumed"), {"h": str(management.handled),
                                    "previd": management.resumption_id or ""})


def ack(management: Management) -> Element:
    return Element(tag("a"), {"h": str(management.handled)})


def request() -> Element:
    return Element(tag("r"))


def wanted_seconds(enable: Element, ours: int) -> int:
    """The resumption time: ours, or less when the client asks for less (§3 'max')."""
    theirs = parse_h(enable.get("max"))
    return min(ours, theirs) if theirs else ours


def wants_resumption(enable: Element) -> bool:
    return enable.get("resume") in ("true", "1")
