"""The router: who is connected, and where each stanza goes (RFC 6120 §10, RFC 6121 §8).

Theory of operation
-------------------
The session layer (``iim.server.c2s``) calls four things: ``session_bound``
when a resource is bound, ``stanza_from`` for every stanza the client sends
(``from`` already stamped with its full JID), ``session_ended`` when the stream
is gone, and ``shutdown``. Sessions are ``SessionHandle``s: the router only ever
calls ``deliver(stanza)`` and ``close(error)`` on them, and keeps three of
their attributes up to date (``available``, ``priority``; ``interested`` is
set by the roster).

Registry: bare JID -> resource -> session. A second login with the same full
JID wins (RFC 6120 §7.7.2.2, the "override" policy): the older session is
unregistered first (its unavailable presence goes out), then closed with
``<conflict/>``. Its own ``session_ended`` call, which may come during
``close`` or later, then finds another session in its place and is ignored;
so is any stanza a replaced or unknown session still sends. An account has
at most ``iim_server.max_resources`` sessions: the stream asks
``bind_refusal`` before it binds, and a new resource beyond the limit gets
``<resource-constraint/>`` (RFC 6120 §7.6.2.1). Taking over a resource in use
replaces a session, so the count stays as it was: overriding cannot be used
to exceed the limit. When the last resource goes, the roster held in memory
for the user is freed (``Roster.forget``).

Dispatch, by element and address:

- ``message``: RFC 6121 §8.5. To a connected full JID: delivered. To a bare JID
  (or a full JID whose resource is gone, for chat and normal messages,
  §8.5.3.2.1): to the available resources with the highest non-negative
  priority; headlines to every non-negative one; with none, chat and normal
  messages go to offline storage (XEP-0160) stamped with
  ``<delay xmlns='urn:xmpp:delay' from=domain/>`` (XEP-0203) at the time they
  are stored. A message to an account that does not exist and a groupchat
  message nobody can take get ``<service-unavailable/>``; a message the
  offline quotas refuse (``iim.server.storage``) gets ``<resource-constraint/>``
  (type wait, RFC 6120 §8.3.3.18: it may fit once the user has logged in), and
  the refusal is logged once per limit per interval.
- ``presence``: ``iim.server.presence``.
- ``iq``: RFC 6120 §8.2.3 first (an id, a known type, one payload for get and
  set). No ``to``, or the own bare JID: the roster (``iim.server.roster``) or
  the server's services; the domain: ``iim.server.services``; another user's
  bare JID: answered on the user's behalf (RFC 6121 §8.5.2.1.3); a full JID:
  forwarded to that session, else ``<service-unavailable/>``. Results and
  errors nobody waits for are dropped.
- another domain: ``route_remote``, which hands the stanza to the federation
  (``iim.server.federation``); stanzas from other domains come in through
  ``stanza_from_remote`` (``iim.server.inbound``).

Errors go back through ``bounce``, which never answers a stanza of type
``error`` (RFC 6120 §8.3.1: no error loops). A ``StanzaError`` raised by any
handler becomes such a bounce to the sending session; any other exception is
logged and becomes ``<internal-server-error/>``.

Offline storage holds the stanza bytes as ``iim.xmpp.xml.to_bytes`` writes
them for a ``jabber:client`` stream; ``deliver_offline`` hands the pending
subscription requests (kept until answered, see ``iim.server.presence``) and
then the messages, in batches (``iim.server.offline``), to the session.

Delay stamps (XEP-0203). Only this server may say when it stored a message:
a ``<delay/>`` (or legacy ``jabber:x:delay``) claiming to be from this domain
is removed from every message entering the router, whoever sent it; the
server adds its own when it first stores the message, and a message that
already carries one (it came out of storage and is going back) keeps it.
"""

from __future__ import annotations

import enum
import logging
import time
from datetime import datetime, timezone
from typing import Callable, Protocol
from xml.etree.ElementTree import Element

from iim.conf.limits import ServerLimits

from iim.server.inbound import RemoteStanzas
from iim.server.offline import Deliveries
from iim.server.presence import Presence, copy_stanza
from iim.server.roster import Roster
from iim.server.services import IqType, Services
from iim.server.storage import Storage, StorageFull
from iim.xmpp.errors import (
    StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition,
)
from iim.xmpp.jid import JID, InvalidJID, prepare_domainpart
from iim.xmpp.ns import CLIENT_NS, DELAY_NS, ROSTER_NS, q
from iim.xmpp.xml import (
    DEFAULT_MAX_STANZA_BYTES, ElementReceived, StreamParser, stream_header, to_bytes,
)

__all__ = ["IqType", "MessageType", "Router", "SessionHandle", "bounce", "parse_stored"]

Cond = StanzaErrorCondition
MESSAGE = q(CLIENT_NS, "message")
PRESENCE = q(CLIENT_NS, "presence")
IQ = q(CLIENT_NS, "iq")
ROSTER_QUERY = q(ROSTER_NS, "query")
CHATSTATES_NS = "http://jabber.org/protocol/chatstates"  # XEP-0085
HINTS_NS = "urn:xmpp:hints"                              # XEP-0334
DELAY = q(DELAY_NS, "delay")                             # XEP-0203
LEGACY_DELAY = q("jabber:x:delay", "x")                  # XEP-0091, obsolete


class SessionHandle(Protocol):
    """What the router needs from a client session (implemented by ``c2s``)."""

    jid: JID
    """The bound full JID."""
    priority: int | None
    """Set by the router from the session's presence; None before initial presence."""
    available: bool
    """Set by the router: initial presence sent, no unavailable since."""
    interested: bool
    """Set by the roster: the session asked for the roster, so it gets pushes (RFC 6121 §2.1.6)."""

    def deliver(self, stanza: Element) -> None:
        """Queue a stanza to this client; never raises, even when closed."""

    def close(self, error: StreamError | None = None) -> None:
        """End the session (resource conflict, shutdown)."""


class MessageType(enum.Enum):
    """The 'type' of a message (RFC 6121 §5.2.2)."""

    NORMAL = "normal"
    CHAT = "chat"
    GROUPCHAT = "groupchat"
    HEADLINE = "headline"
    ERROR = "error"

    @classmethod
    def of(cls, stanza: Element) -> "MessageType":
        """No type, or an unknown one, is ``normal`` (§5.2.2)."""
        try:
            return cls(stanza.get("type") or "normal")
        except ValueError:
            return cls.NORMAL


def bounce(stanza: Element, error: StanzaError | StanzaErrorCondition) -> Element | None:
    """The error reply to ``stanza`` (RFC 6120 §8.3.1), or None for an error stanza.

    Addresses are swapped, the id and other attributes kept, the original
    children included, and the ``<error/>`` appended.
    """
    if stanza.get("type") == "error":
        return None  # never answer an error: no loops
    if isinstance(error, StanzaErrorCondition):
        error = StanzaError(error)
    attributes = {k: v for k, v in stanza.attrib.items() if k not in ("to", "from", "type")}
    reply = Element(stanza.tag, attributes)
    if stanza.get("from") is not None:
        reply.set("to", stanza.get("from"))
    if stanza.get("to") is not None:
        reply.set("from", stanza.get("to"))
    reply.set("type", "error")
    reply.extend(stanza)
    reply.append(error.to_element(_namespace(stanza.tag) or CLIENT_NS))
    return reply


class Router:
    """Session registry and stanza dispatch for one domain."""

    def __init__(
        self,
        domain: str,
        storage: Storage,
        *,
        log: logging.Logger | None = None,
        clock: Callable[[], datetime] | None = None,
        limits: ServerLimits = ServerLimits(),
        limit_log=None,
    ) -> None:
        self.domain = prepare_domainpart(domain)
        self.storage = storage
        self.log = log or logging.getLogger("iim.server.router")
        self.clock = clock or _utc_now
        self.limits = limits
        self.limit_log = limit_log      # iim.server.quota.LimitLog, or None
        self._sessions: dict[JID, dict[str, SessionHandle]] = {}
        self.offline = Deliveries(storage, parse_stored, limits.offline_batch, self.log)
        self.roster = Roster(storage, self._interested,
                             on_remove=lambda user, item: self.presence.roster_item_removed(
                                 user, item),
                             online=lambda user: user in self._sessions, limits=limits)
        self.presence = Presence(self, self.roster, log=self.log)
        self.services = Services(self.domain)
        self.federation = None          # iim.server.federation.Federation, when listening
        self.remote = RemoteStanzas(self)
        self._handlers = {MESSAGE: self._message, PRESENCE: self.presence.from_client,
                          IQ: self._iq}

    # -- registry ------------------------------------------------------------------

    def bind_refusal(self, jid: JID) -> StanzaErrorCondition | None:
        """Why ``jid`` may not be bound now, or None (asked by the stream
        before it answers a bind, RFC 6120 §7.6.2.1)."""
        resources = self._sessions.get(jid.bare, {})
        if jid.resource in resources or len(resources) < self.limits.max_resources:
            return None             # a new resource within the limit, or an override
        if self.limit_log is not None:
            self.limit_log.hit("iim_server.max_resources", time.monotonic(),
                               f"{jid.bare}: {len(resources)} sessions")
        return Cond.RESOURCE_CONSTRAINT

    def session_bound(self, session: SessionHandle) -> None:
        """Register a session; an older one with the same full JID is closed."""
        old = self.session_for(session.jid)
        if old is session:
            return
        if old is not None:
            self.log.info("%s: logged in again, closing the older session", session.jid)
            self._unregister(old)
            old.close(StreamError(StreamErrorCondition.CONFLICT, "replaced by a new login"))
        session.available, session.priority, session.interested = False, None, False
        self._sessions.setdefault(session.jid.bare, {})[session.jid.resource] = session

    def session_ended(self, session: SessionHandle) -> None:
        """Unregister; its unavailable presence goes out (RFC 6121 §4.6)."""
        if self.session_for(session.jid) is session:
            self._unregister(session)

    def _unregister(self, session: SessionHandle) -> None:
        resources = self._sessions[session.jid.bare]
        del resources[session.jid.resource]
        if not resources:
            del self._sessions[session.jid.bare]
        self.presence.session_gone(session)
        if session.jid.bare not in self._sessions:
            self.roster.forget(session.jid.bare)

    def sessions_of(self, bare: JID) -> list[SessionHandle]:
        return list(self._sessions.get(bare.bare, {}).values())

    def session_for(self, full: JID) -> SessionHandle | None:
        return self._sessions.get(full.bare, {}).get(full.resource)

    def available(self, bare: JID) -> list[SessionHandle]:
        return [session for session in self.sessions_of(bare) if session.available]

    def _interested(self, bare: JID) -> list[SessionHandle]:
        return [session for session in self.sessions_of(bare) if session.interested]

    def shutdown(self) -> None:
        """Close what is left. Nothing is lost: stored messages are in storage."""
        sessions = [s for resources in self._sessions.values() for s in resources.values()]
        self._sessions.clear()
        self.presence.forget_all()
        self.roster.forget_all()
        for session in sessions:
            session.close(StreamError(StreamErrorCondition.SYSTEM_SHUTDOWN))

    # -- addresses -----------------------------------------------------------------

    def address(self, stanza: Element) -> JID | None:
        """The stanza's 'to' as a JID; a bad one is ``<jid-malformed/>``."""
        text = stanza.get("to")
        if text is None:
            return None
        try:
            return JID.parse(text)
        except InvalidJID as exc:
            raise StanzaError(Cond.JID_MALFORMED, str(exc)) from None

    def is_local(self, jid: JID) -> bool:
        return jid.domain == self.domain

    def user_exists(self, jid: JID) -> bool:
        if jid.local is None or not self.is_local(jid):
            return False
        return jid.bare in self._sessions or self.storage.user_exists(jid.local)

    # -- entry point ---------------------------------------------------------------

    def stanza_from(self, session: SessionHandle, stanza: Element) -> None:
        """Handle one stanza from a bound session."""
        if self.session_for(session.jid) is not session:
            self.log.debug("%s: stanza from a session that is not registered, dropped",
                           session.jid)
            return
        stanza.set("from", str(session.jid))
        handler = self._handlers.get(stanza.tag)
        if handler is None:
            self.log.debug("%s: not a stanza: %s, dropped", session.jid, stanza.tag)
            return
        try:
            handler(session, stanza)
        except StanzaError as exc:
            self._fail(session, stanza, exc)
        except Exception:  # noqa: BLE001 - one bad stanza must not take the session down
            self.log.exception("%s: error while routing a %s", session.jid, stanza.tag)
            self._fail(session, stanza, StanzaError(Cond.INTERNAL_SERVER_ERROR))

    def _fail(self, session: SessionHandle, stanza: Element, error: StanzaError) -> None:
        reply = bounce(stanza, error)
        if reply is None:
            return
        if error.condition is Cond.JID_MALFORMED:
            reply.attrib.pop("from", None)  # never echo an address we could not parse
        session.deliver(reply)

    # -- messages (RFC 6121 §8.5) -------------------------------------------------------

    def _message(self, session: SessionHandle, message: Element) -> None:
        mtype = MessageType.of(message)
        to = self.address(message) or session.jid.bare  # RFC 6120 §10.3.1: no 'to', own account
        if not self.is_local(to):
            self.route_remote(message)
        elif to.local is None:
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)  # the server takes no messages
        elif not self.user_exists(to):
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)  # §8.5.1
        elif to.resource is None:
            self._message_to_bare(message, mtype, to)
        else:
            self._message_to_full(message, mtype, to)

    def _message_to_full(self, message: Element, mtype: MessageType, to: JID) -> None:
        self._strip_own_delays(message)
        session = self.session_for(to)
        if session is not None:
            session.deliver(message)  # §8.5.3.1
        elif mtype in (MessageType.NORMAL, MessageType.CHAT):
            self._message_to_bare(message, mtype, to.bare)  # §8.5.3.2.1
        elif mtype is MessageType.GROUPCHAT:
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)
        # headline and error: silently ignored

    def _message_to_bare(self, message: Element, mtype: MessageType, bare: JID) -> None:
        self._strip_own_delays(message)
        if mtype is MessageType.ERROR:
            return  # §8.5.2.1.1, §8.5.2.2.1: silently ignored
        if mtype is MessageType.GROUPCHAT:
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)
        if mtype is MessageType.HEADLINE:
            targets = self._non_negative(bare)
        else:
            targets = self._most_available(bare)
        for session in targets:
            session.deliver(message)
        if not targets and mtype is not MessageType.HEADLINE:
            self._keep(message, bare)

    def _non_negative(self, bare: JID) -> list[SessionHandle]:
        return [s for s in self.available(bare) if _priority(s) >= 0]

    def _most_available(self, bare: JID) -> list[SessionHandle]:
        """The available resources with the highest priority, if it is not negative."""
        candidates = self._non_negative(bare)
        if not candidates:
            return []
        top = max(_priority(s) for s in candidates)
        return [s for s in candidates if _priority(s) == top]

    def _keep(self, message: Element, bare: JID) -> None:
        """XEP-0160: store for later, or tell the sender it cannot be."""
        if not _worth_storing(message):
            return
        try:
            self.store_offline(bare, message)
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

    # -- iq (RFC 6120 §8.2.3, §10; RFC 6121 §8.5) -----------------------------------------

    def _iq(self, session: SessionHandle, iq: Element) -> None:
        iq_type = _iq_type(iq)
        to = self.address(iq)
        if to is not None and not self.is_local(to):
            self.route_remote(iq)
        elif to is not None and to.local is not None and to.resource is not None:
            self._iq_to_resource(iq, iq_type, to)
        elif iq_type.is_request:
            self._reply(session, iq, self._answer(session, iq_type, _payload(iq), to))
        # a result or error for the server or an account: nobody is waiting for it

    def _iq_to_resource(self, iq: Element, iq_type: IqType, to: JID) -> None:
        session = self.session_for(to)
        if session is not None:
            session.deliver(iq)
        elif iq_type.is_request:
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)  # §8.5.3.2.1 (and §8.5.1)

    def _answer(self, session: SessionHandle, iq_type: IqType, payload: Element,
                to: JID | None) -> Element | None:
        own = session.jid.bare
        if (to is None or to == own) and payload.tag == ROSTER_QUERY:
            return self._roster_request(session, iq_type, payload)
        if to is None or to.local is None:
            return self.services.server(iq_type, payload)
        if to == own:
            return self.services.account(iq_type, payload, visible=True)
        if not self.user_exists(to):
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)
        visible = self.presence.state(to, own).has_from
        return self.services.account(iq_type, payload, visible=visible)

    def _roster_request(self, session: SessionHandle, iq_type: IqType,
                        query: Element) -> Element | None:
        if iq_type is IqType.GET:
            return self.roster.get(session, query)
        self.roster.set(session, query)
        return None

    def _reply(self, session: SessionHandle, iq: Element, payload: Element | None) -> None:
        result = Element(IQ, {"type": "result", "id": iq.get("id"), "to": str(session.jid)})
        if iq.get("to") is not None:
            result.set("from", iq.get("to"))
        if payload is not None:
            result.append(payload)
        session.deliver(result)

    # -- presence delivery and other domains -------------------------------------------------

    def deliver_presence(self, to: JID, stanza: Element) -> None:
        """Presence (not subscriptions) to ``to``: RFC 6121 §8.5.2.1.1, §8.5.3."""
        if not self.is_local(to):
            self.route_remote(stanza)
        elif to.local is None:
            return  # the server itself keeps no presence
        elif to.resource is None:
            for session in self.available(to):
                session.deliver(stanza)
        else:
            session = self.session_for(to)
            if session is not None:
                session.deliver(stanza)

    def route_remote(self, stanza: Element) -> None:
        """Send ``stanza`` to another domain (``iim.server.federation``).

        Without federation (``iim_server.useport`` off), the sender gets
        ``<remote-server-not-found/>`` (RFC 6120 §8.3.3.13).
        """
        if self.federation is not None:
            self.federation.send(stanza)
        else:
            self.bounce_to_local(stanza, Cond.REMOTE_SERVER_NOT_FOUND)

    def bounce_to_local(self, stanza: Element, condition: StanzaErrorCondition) -> None:
        """An error for a stanza that could not leave, to its local sender."""
        reply = bounce(stanza, condition)
        if reply is not None:
            self._deliver_local(reply)

    def stanza_from_remote(self, stanza: Element) -> None:
        """A stanza another server sent us (``iim.server.inbound``)."""
        self.remote.handle(stanza)

    def _deliver_local(self, stanza: Element) -> None:
        """An error the server generated, to the local entity that caused it."""
        to = self.address(stanza)
        if to is None or not self.is_local(to) or to.local is None:
            return
        targets = self.available(to) if to.resource is None else [self.session_for(to)]
        for session in targets:
            if session is not None:
                session.deliver(stanza)

    # -- offline storage (XEP-0160, XEP-0203) ----------------------------------------------

    def store_offline(self, user: JID, stanza: Element) -> None:
        """Keep ``stanza`` for ``user``, stamped with a delay; raises ``StorageFull``."""
        self.storage.store_offline(user.local, self._stamped(stanza), _sender(stanza))

    def remember_request(self, user: JID, contact: JID, request: Element) -> bool:
        """Keep ``contact``'s subscription request until ``user`` answers it
        (RFC 6121 §3.1.3); False when one is kept already. Raises ``StorageFull``."""
        return self.storage.put_subscription_request(user.local, str(contact),
                                                     self._stamped(request))

    def has_request(self, user: JID, contact: JID) -> bool:
        return self.storage.subscription_request(user.local, str(contact)) is not None

    def forget_request(self, user: JID, contact: JID) -> None:
        self.storage.delete_subscription_request(user.local, str(contact))

    def _strip_own_delays(self, stanza: Element) -> None:
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

    def deliver_offline(self, session: SessionHandle) -> None:
        """Hand the stored stanzas to a session that just became available.

        Pending subscription requests go at every initial presence and stay
        until answered; messages go only to a session of non-negative priority
        (XEP-0160 §2), in batches (``iim.server.offline``), each deleted once
        the session has taken it.
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
        if _priority(session) >= 0:
            self.offline.start(session, lambda: self._wants_offline(session))

    def _wants_offline(self, session: SessionHandle) -> bool:
        return (self.session_for(session.jid) is session and session.available
                and _priority(session) >= 0)

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
        A stanza still in flight from storage keeps its row (``iim.server.offline``)."""
        if session.jid is None:
            return 0
        keep = [s for s in stanzas if s.tag == MESSAGE and _worth_storing(s)
                and s.get("type") not in ("error", "groupchat", "headline")]
        back = [s for s in keep if not self.offline.keep_in_place(session, s)]
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
        sender = self.address(reply)
        if sender is not None and not self.is_local(sender):
            self.route_remote(reply)
        else:
            self._deliver_local(reply)


# -- helpers -------------------------------------------------------------------------------

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


def _iq_type(iq: Element) -> IqType:
    try:
        iq_type = IqType(iq.get("type"))
    except ValueError:
        raise StanzaError(Cond.BAD_REQUEST, "an IQ's type is get, set, result or error") from None
    if not iq.get("id"):
        raise StanzaError(Cond.BAD_REQUEST, "an IQ needs an id")
    return iq_type


def _payload(iq: Element) -> Element:
    children = list(iq)
    if len(children) != 1:
        raise StanzaError(Cond.BAD_REQUEST, "an IQ get or set carries exactly one child")
    return children[0]


def _priority(session: SessionHandle) -> int:
    return session.priority if session.priority is not None else 0


def _worth_storing(message: Element) -> bool:
    """Content beyond chat states and hints, and no XEP-0334 "don't store" hint."""
    if any(child.tag in (q(HINTS_NS, "no-store"), q(HINTS_NS, "no-permanent-store"))
           for child in message):
        return False
    return any(_namespace(child.tag) not in (CHATSTATES_NS, HINTS_NS) for child in message)


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


def _namespace(tag: str) -> str | None:
    return tag[1:].partition("}")[0] if tag.startswith("{") else None


def _stamp(moment: datetime) -> str:
    """XEP-0082 DateTime in UTC, with milliseconds."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)
