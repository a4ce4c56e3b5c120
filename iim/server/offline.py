"""Offline storage: messages kept for later (XEP-0160, XEP-0203) and handed
out at login in bounded batches (issue 11).

Theory of operation: the store
------------------------------
``OfflineStore`` is the one door to the offline tables of ``Storage`` while
the server runs. It keeps chat and normal messages nobody could take
(``keep``), the pending subscription requests presence asks it to remember
(``remember_request``, RFC 6121 §3.1.3, see ``iim.server.presence``), and
what a session was handed but could not send (``keep_for_later``); it hands
the requests and then the messages to a session that became available
(``deliver``). A message the quotas refuse (``iim.server.storage``) is
``<resource-constraint/>`` (type wait, RFC 6120 §8.3.3.18: it may fit once the
user has logged in), and the refusal is logged once per limit per interval;
one refused after the server had accepted it goes back to its sender, local
or remote.

Stanzas are stored as ``iim.xmpp.xml.to_bytes`` writes them for a
``jabber:client`` stream, and read back with ``parse_stored``.

Delay stamps (XEP-0203). Only this server may say when it stored a message:
a ``<delay/>`` (or legacy ``jabber:x:delay``) claiming to be from this domain
is removed from every message delivered locally, whoever sent it
(``strip_own_delays``); the server adds its own when it first stores the
message, and a message that already carries one (it came out of storage and
is going back) keeps it.

Theory of operation: batches
----------------------------
A user may come back to thousands of stored messages (up to
``iim_server.offline_quota`` bytes). Reading, parsing and handing them all
over in one go held the event loop, and so every other user, for seconds.
Instead a ``Delivery`` hands them out in *batches*: at most
``iim_server.offline_batch`` messages and ``BATCH_BYTES`` bytes (the first
message always goes, whatever its size), oldest first. The first batch goes
at once, inside the initial presence that asked for it; each next one only
when the session's carrier has written the previous one out (``_writing``),
so a slow client paces its own delivery and never fills its backlog with
stored messages, and other users' stanzas are handled in between. Each batch
is one short read, no transaction stays open across batches, and the SQLite
connection is free for everyone else meanwhile.

Handing over and deleting. A batch is handed to the session (``deliver``),
then its rows are deleted, with nothing in between that yields to the event
loop. While a batch is being handed out its stanzas are *in flight*: if the
session gives one back (``keep_for_later``: the session ended or could not
send), its row is simply left in place, neither deleted nor stored twice, and
the delivery stops. So a message leaves storage only once the session has
taken it; whatever was not handed over stays stored, in order, for the next
login. Should the process die between handing over and the delete, the
messages are delivered again next time: delivery is *at least once*, never
at most once.

One delivery per user at a time: a second resource sending initial presence
while one runs does not start another (the same rows would go out twice);
messages to the user go live to the available resources meanwhile, so live
messages can overtake stored ones still waiting for their batch. A delivery
ends when nothing is left, or when its session is gone, unavailable, or at a
negative priority; what is left waits for the next initial presence.

Without a running event loop (the in-memory tests) the batches follow one
another at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Callable
from xml.etree.ElementTree import Element

from iim.conf.limits import ServerLimits
from iim.xmpp.errors import StanzaError, StanzaErrorCondition, StreamError
from iim.xmpp.jid import JID, InvalidJID
from iim.xmpp.ns import CLIENT_NS, DELAY_NS, q
from iim.xmpp.xml import DEFAULT_MAX_STANZA_BYTES, ElementReceived, StreamParser, stream_header, \
    to_bytes

from .remote import RemoteDomains
from .sessions import SessionHandle, Sessions, priority
from .stanzas import MESSAGE, bounce, copy_stanza, namespace, recipient
from .storage import Storage, StorageFull

__all__ = ["BATCH_BYTES", "Deliveries", "OfflineStore", "parse_stored"]

Cond = StanzaErrorCondition
CHATSTATES_NS = "http://jabber.org/protocol/chatstates"  # XEP-0085
HINTS_NS = "urn:xmpp:hints"                              # XEP-0334
DELAY = q(DELAY_NS, "delay")                             # XEP-0203
LEGACY_DELAY = q("jabber:x:delay", "x")                  # XEP-0091, obsolete

BATCH_BYTES = 256 * 1024
"""Bytes of stored stanzas in one batch (past its first message)."""
DRAIN_POLL = 0.01
"""Seconds between two looks at whether the session wrote its last batch out."""


class OfflineStore:
    """The offline tables of one domain: kept messages and pending requests."""

    def __init__(self, storage: Storage, sessions: Sessions, remote: RemoteDomains, *,
                 clock: Callable[[], datetime] | None = None,
                 limits: ServerLimits = ServerLimits(), limit_log=None,
                 log: logging.Logger | None = None) -> None:
        self.storage, self.sessions, self.remote = storage, sessions, remote
        self.domain = sessions.domain
        self.clock = clock or _utc_now
        self.limit_log = limit_log      # iim.server.quota.LimitLog, or None
        self.log = log or logging.getLogger("iim.server.offline")
        self.deliveries = Deliveries(storage, limits.offline_batch, self.log)

    # -- messages nobody could take (XEP-0160) ----------------------------------------

    def keep(self, message: Element, user: JID) -> None:
        """Store a message for later, or raise the error its sender gets."""
        if not _worth_storing(message):
            return
        try:
            self.storage.store_offline(user.local, self._stamped(message), _sender(message))
        except StorageFull as full:
            raise self.refused(full) from None

    def refused(self, full: StorageFull) -> StanzaError:
        """The error for what the offline quotas refused: <resource-constraint/>
        (RFC 6120 §8.3.3.18), the refusal logged once per limit per interval.

        XEP-0160 §2 suggests <service-unavailable/> for a full store; iim says
        resource-constraint (type wait), as ejabberd does, because the store
        empties when its owner logs in, so the sender may well retry later, and
        service-unavailable would read as "no such user / no storage at all"."""
        if self.limit_log is not None:
            self.limit_log.hit(f"iim_server.{full.param}", time.monotonic(), str(full))
        if full.param == "offline_quota_per_sender":
            text = "you have filled your share of the recipient's offline storage"
        else:
            text = "the recipient's offline storage is full"
        return StanzaError(Cond.RESOURCE_CONSTRAINT, text)

    def strip_own_delays(self, stanza: Element) -> None:
        """XEP-0203: a delay claiming to be from this server was not written by it."""
        for child in list(stanza):
            if child.tag in (DELAY, LEGACY_DELAY) and _is_domain(child.get("from"), self.domain):
                stanza.remove(child)

    def _stamped(self, stanza: Element) -> bytes:
        """The stored form: this server's XEP-0203 delay added, unless it has one
        (a message coming back to storage keeps the time it was first stored)."""
        stored = copy_stanza(stanza)
        if not any(child.tag == DELAY and _is_domain(child.get("from"), self.domain)
                   for child in stored):
            delay = Element(DELAY, {"from": self.domain, "stamp": _stamp(self.clock())})
            delay.text = "Offline storage"
            stored.append(delay)
        return to_bytes(stored, ns=CLIENT_NS)

    # -- pending subscription requests (RFC 6121 §3.1.3) ------------------------------

    def remember_request(self, user: JID, contact: JID, request: Element) -> None:
        """Keep ``contact``'s subscription request until ``user`` answers it;
        one kept already stays. What the bounds refuse is <resource-constraint/>."""
        try:
            self.storage.put_subscription_request(user.local, str(contact),
                                                  self._stamped(request))
        except StorageFull as full:
            raise self.refused(full) from None

    def has_request(self, user: JID, contact: JID) -> bool:
        return self.storage.subscription_request(user.local, str(contact)) is not None

    def forget_request(self, user: JID, contact: JID) -> None:
        self.storage.delete_subscription_request(user.local, str(contact))

    # -- handing out --------------------------------------------------------------------

    def deliver(self, session: SessionHandle) -> None:
        """Hand the stored stanzas to a session that just became available.

        Pending subscription requests go at every initial presence and stay
        until answered; messages go only to a session of non-negative priority
        (XEP-0160 §2), in batches (``Deliveries``), each deleted once the
        session has taken it.
        """
        user = session.jid.bare
        for contact, data in self.storage.subscription_requests(user.local):
            request = parse_stored(data)
            if request is None:
                self.log.warning("%s: unreadable subscription request from %s dropped",
                                 user, contact)
                self.storage.delete_subscription_request(user.local, contact)
            else:
                session.deliver(request)
        if priority(session) >= 0:
            self.deliveries.start(session, lambda: self._wants(session))

    def session_moved(self, old: SessionHandle, new: SessionHandle) -> None:
        """``new`` resumed ``old`` (XEP-0198): a delivery to ``old`` goes on to ``new``."""
        self.deliveries.moved(old, new, lambda: self._wants(new))

    def _wants(self, session: SessionHandle) -> bool:
        return self.sessions.is_current(session) and session.available and priority(session) >= 0

    # -- what a session could not send ---------------------------------------------------

    def keep_for_later(self, session: SessionHandle, stanza: Element) -> bool:
        """A stanza handed to ``session`` that it could not send (the client
        stopped reading, or the session ended first): a message worth storing
        goes back to offline storage for the next login; when the quotas
        refuse it, its sender gets it back as a <resource-constraint/> error.
        Nothing vanishes silently. True when kept."""
        return self.keep_all_for_later(session, [stanza]) == 1

    def keep_all_for_later(self, session: SessionHandle, stanzas: list[Element]) -> int:
        """``keep_for_later`` for a whole backlog, in one storage transaction
        (one disk sync, not one per message). Returns how many were kept.
        A stanza still in flight from storage keeps its row (``Deliveries``)."""
        if session.jid is None:
            return 0
        keep = [s for s in stanzas if s.tag == MESSAGE and _worth_storing(s)
                and s.get("type") not in ("error", "groupchat", "headline")]
        back = [s for s in keep if not self.deliveries.keep_in_place(session, s)]
        kept = self.storage.store_offline_many(
            session.jid.local, [(_sender(s), self._stamped(s)) for s in back])
        refused = [s for s, ok in zip(back, kept) if not ok]
        for stanza in refused:
            self._return_to_sender(stanza)
        if refused:
            self.log.warning("%s: offline storage full: %d messages bounced to their senders",
                             session.jid.bare, len(refused))
        return len(keep) - len(refused)

    def _return_to_sender(self, stanza: Element) -> None:
        """A message storage refused after the server had accepted it."""
        reply = bounce(stanza, StanzaError(Cond.RESOURCE_CONSTRAINT,
                                           "the recipient's offline storage is full"))
        if reply is None:
            return
        sender = recipient(reply)
        if sender is not None and not self.sessions.is_local(sender):
            self.remote.send(reply)
        else:
            self.sessions.deliver_local(reply)


class Deliveries:
    """The offline deliveries running now, one per user."""

    def __init__(self, storage: Storage, batch: int, log: logging.Logger) -> None:
        self.storage, self.batch, self.log = storage, batch, log
        self._running: dict[JID, Delivery] = {}

    def start(self, session: SessionHandle, wanted: Callable[[], bool]) -> None:
        """Deliver the user's stored messages to ``session`` while ``wanted()``."""
        user = session.jid.bare
        if user in self._running:
            return
        delivery = self._running[user] = Delivery(self, session, wanted)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if delivery.step() and loop is not None:
            loop.create_task(self._continue(delivery))
            return
        while loop is None and delivery.step():
            pass
        del self._running[user]

    def moved(self, old: SessionHandle, new: SessionHandle, wanted: Callable[[], bool]) -> None:
        delivery = self._running.get(old.jid.bare)
        if delivery is not None and delivery.session is old:
            delivery.session, delivery.wanted = new, wanted

    def keep_in_place(self, session: SessionHandle, stanza: Element) -> bool:
        """True when ``stanza`` is in flight from storage to ``session``: its
        row stays where it is (see the theory of operation)."""
        delivery = self._running.get(session.jid.bare) if session.jid is not None else None
        return delivery is not None and delivery.session is session and delivery.keep(stanza)

    async def _continue(self, delivery: "Delivery") -> None:
        try:
            while True:
                await asyncio.sleep(0)                  # other users' turn
                while _writing(delivery.session) and delivery.wanted():
                    await asyncio.sleep(DRAIN_POLL)
                if not delivery.step():
                    return
        except Exception:  # noqa: BLE001 - the rows stay stored; log and stop
            self.log.exception("%s: offline delivery failed", delivery.session.jid)
        finally:
            del self._running[delivery.session.jid.bare]


class Delivery:
    """Stored messages on their way to one session."""

    def __init__(self, deliveries: Deliveries, session: SessionHandle,
                 wanted: Callable[[], bool]) -> None:
        self.deliveries, self.session, self.wanted = deliveries, session, wanted
        self.after = 0                                  # the last row handed out
        self._in_flight: dict[int, tuple[Element, int]] = {}
        self._kept = False

    def step(self) -> bool:
        """Hand out one batch; True when there may be more to hand out."""
        if not self.wanted():
            return False
        d = self.deliveries
        user = self.session.jid.bare
        rows = d.storage.offline_batch(user.local, after=self.after, limit=d.batch,
                                       max_bytes=BATCH_BYTES)
        if not rows:
            return False
        self.after = rows[-1][0]
        done = self._hand_over(rows)
        if done:
            d.storage.delete_offline(user.local, done)
        return not self._kept and len(rows) > 0

    def keep(self, stanza: Element) -> bool:
        found = self._in_flight.pop(id(stanza), None)
        if found is None:
            return False
        self._kept = True
        return True

    def _hand_over(self, rows: list[tuple[int, bytes]]) -> list[int]:
        """Deliver the batch; the ids of the rows the session took (or that
        cannot be read: those are dropped with a warning)."""
        staged, unreadable = [], []
        for row_id, data in rows:
            stanza = parse_stored(data)
            if stanza is None:
                self.deliveries.log.warning("%s: unreadable offline message %d dropped",
                                            self.session.jid.bare, row_id)
                unreadable.append(row_id)
            else:
                staged.append((stanza, row_id))
        self._in_flight = {id(stanza): (stanza, row_id) for stanza, row_id in staged}
        for stanza, _ in staged:
            self.session.deliver(stanza)
        taken = [row_id for stanza, row_id in staged if id(stanza) in self._in_flight]
        self._in_flight = {}
        return unreadable + taken


def _writing(session: SessionHandle) -> bool:
    """Whether bytes still wait in the session's carrier (``c2s.Carrier.pending``):
    the previous batch is not written out yet. A session without a carrier
    (in-memory tests) is never waiting."""
    carrier = getattr(session, "carrier", None)
    return carrier is not None and carrier.pending() > 0


_STORED_HEADER = stream_header(ns=CLIENT_NS, xml_declaration=False)


def parse_stored(data: bytes) -> Element | None:
    """One stanza from the offline store, as the stream parser would read it; None if bad."""
    parser = StreamParser(max_stanza_bytes=max(DEFAULT_MAX_STANZA_BYTES, 2 * len(data)),
                          content_namespaces=(CLIENT_NS,))
    try:
        events = parser.feed(_STORED_HEADER + bytes(data))
    except StreamError:
        return None
    elements = [event.element for event in events if isinstance(event, ElementReceived)]
    return elements[0] if len(elements) == 1 else None


def _worth_storing(message: Element) -> bool:
    """Content beyond chat states and hints, and no XEP-0334 "don't store" hint."""
    if any(child.tag in (q(HINTS_NS, "no-store"), q(HINTS_NS, "no-permanent-store"))
           for child in message):
        return False
    return any(namespace(child.tag) not in (CHATSTATES_NS, HINTS_NS) for child in message)


def _sender(stanza: Element) -> str:
    """The bare JID the offline quotas count a stanza under ("" if none)."""
    try:
        return str(JID.parse(stanza.get("from")).bare) if stanza.get("from") else ""
    except InvalidJID:
        return ""


def _is_domain(text: str | None, domain: str) -> bool:
    """Whether ``text`` is the JID of the server ``domain`` itself."""
    try:
        jid = JID.parse(text) if text else None
    except InvalidJID:
        return False
    return jid is not None and jid.local is None and jid.resource is None and jid.domain == domain


def _stamp(moment: datetime) -> str:
    """XEP-0082 DateTime in UTC, with milliseconds."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)
