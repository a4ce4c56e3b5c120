"""Presence: broadcast, probes, directed presence, subscriptions (RFC 6121 §3, §4).

Theory of operation
-------------------
*Subscriptions* are a pair of state machines, one per roster: the user's view
of a contact is one of the nine states of RFC 6121 Appendix A.1 (``SubState``),
made of the stored roster item (``subscription`` and ``ask``) plus one bit the
roster does not hold, *pending in* (the contact asked to see the user's
presence and has no answer yet). Each subscription stanza moves the sender's
view by the Appendix A.2 table (``OUTBOUND``) and the receiver's view by the
A.3 table (``INBOUND``); the receiver is told only when its view changed. A
change to ``subscription`` or ``ask`` is a roster change, so it is stored and
pushed (``iim.server.roster``). Because every account is local, the "contact's
server" of the RFC is this same process: a subscription stanza is routed by
calling the inbound side directly, and the two views stay mirror images (the
user's *to* is the contact's *from*, its *pending out* the contact's *pending
in*); the tests check that invariant over random handshakes.

Where *pending in* lives: in storage, as the ``<presence type='subscribe'/>``
itself, one per (user, contact) in a table of its own
(``Storage.put_subscription_request``). RFC 6121 §3.1.3 wants the request
kept until the contact answers it, delivered whenever the contact comes online,
and no roster item for a "None + Pending In" contact; a stored request is
exactly that. ``OfflineStore.deliver`` hands the stored requests out at
every initial presence and *keeps* them; they are deleted here when the
request is approved, refused or withdrawn. A repeated request finds its state
unchanged and is neither stored nor delivered again; asking whether one is
pending is one index lookup. Requests have their own bounds, apart from the
messages' quota; a request that does not fit is neither delivered nor kept
(a request the user could not answer would be a lie), and its sender gets
``<resource-constraint/>``.

*Presence* (§4): a session's last broadcast presence is kept here, per full
JID, with the set of entities it sent directed presence to (§4.6), so that its
unavailable presence reaches them too (§4.6.3). Initial presence (§4.2) marks
the session available with its priority, goes to the contacts subscribed to
the user (*from*/*both*) and to all of the user's available resources (the
sender included, §4.2.2), then probes (§4.3): for each contact the user is
subscribed to, the contact's roster is checked and its resources' last
presence is handed straight to the new session (the answer a probe would get);
the user's other resources' presence comes the same way. Then stored messages
and requests are delivered. Probes to other domains go through
``RemoteDomains.send``.

What presence stands on: the session registry (``iim.server.sessions``: who
is available, delivery), the rosters, the offline store (pending requests,
stored messages) and the way out to other domains; never the router, which
calls ``from_client``, ``session_gone`` and ``roster_item_removed``, nor the
inbound side, which calls ``inbound_subscription``, ``answer_remote_probe``,
``deliver`` and ``state``.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass, field, replace
from xml.etree.ElementTree import Element

from iim.xmpp.errors import StanzaError, StanzaErrorCondition
from iim.xmpp.jid import JID, InvalidJID
from iim.xmpp.ns import CLIENT_NS, q

from .offline import OfflineStore
from .remote import RemoteDomains
from .roster import Roster
from .sessions import SessionHandle, Sessions
from .stanzas import PRESENCE, copy_stanza, recipient
from .storage import RosterItem, Subscription

Cond = StanzaErrorCondition
_INTEGER = re.compile(r"[+-]?[0-9]{1,4}")


class PresenceType(enum.Enum):
    """The 'type' of a presence stanza (RFC 6121 §4.7.1); no type is AVAILABLE."""

    AVAILABLE = None
    UNAVAILABLE = "unavailable"
    SUBSCRIBE = "subscribe"
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBE = "unsubscribe"
    UNSUBSCRIBED = "unsubscribed"
    PROBE = "probe"
    ERROR = "error"

    @classmethod
    def of(cls, stanza: Element) -> "PresenceType":
        try:
            return cls(stanza.get("type"))
        except ValueError:
            raise StanzaError(Cond.BAD_REQUEST, "unknown presence type") from None

    @property
    def is_subscription(self) -> bool:
        return self in _SUBSCRIPTION_TYPES


_SUBSCRIPTION_TYPES = frozenset({PresenceType.SUBSCRIBE, PresenceType.SUBSCRIBED,
                                 PresenceType.UNSUBSCRIBE, PresenceType.UNSUBSCRIBED})


class SubState(enum.Enum):
    """A user's view of one contact (RFC 6121 Appendix A.1).

    The value is (subscription, pending out, pending in).
    """

    NONE = (Subscription.NONE, False, False)
    NONE_PENDING_OUT = (Subscription.NONE, True, False)
    NONE_PENDING_IN = (Subscription.NONE, False, True)
    NONE_PENDING_OUT_IN = (Subscription.NONE, True, True)
    TO = (Subscription.TO, False, False)
    TO_PENDING_IN = (Subscription.TO, False, True)
    FROM = (Subscription.FROM, False, False)
    FROM_PENDING_OUT = (Subscription.FROM, True, False)
    BOTH = (Subscription.BOTH, False, False)

    @classmethod
    def of(cls, subscription: Subscription, ask: bool, pending_in: bool) -> "SubState":
        """The state for stored facts; impossible combinations are normalised
        (no request can be pending in a direction already subscribed)."""
        has_to = subscription in (Subscription.TO, Subscription.BOTH)
        has_from = subscription in (Subscription.FROM, Subscription.BOTH)
        return cls((subscription, ask and not has_to, pending_in and not has_from))

    @property
    def subscription(self) -> Subscription:
        return self.value[0]

    @property
    def pending_out(self) -> bool:
        return self.value[1]

    @property
    def pending_in(self) -> bool:
        return self.value[2]

    @property
    def has_to(self) -> bool:
        """The user receives the contact's presence."""
        return self.subscription in (Subscription.TO, Subscription.BOTH)

    @property
    def has_from(self) -> bool:
        """The contact receives the user's presence."""
        return self.subscription in (Subscription.FROM, Subscription.BOTH)


S, P = SubState, PresenceType

#: Appendix A.2: the user sends a subscription stanza. States not listed do not change.
OUTBOUND: dict[PresenceType, dict[SubState, SubState]] = {
    P.SUBSCRIBE: {S.NONE: S.NONE_PENDING_OUT, S.NONE_PENDING_IN: S.NONE_PENDING_OUT_IN,
                  S.FROM: S.FROM_PENDING_OUT},
    P.UNSUBSCRIBE: {S.NONE_PENDING_OUT: S.NONE, S.NONE_PENDING_OUT_IN: S.NONE_PENDING_IN,
                    S.TO: S.NONE, S.TO_PENDING_IN: S.NONE_PENDING_IN,
                    S.FROM_PENDING_OUT: S.FROM, S.BOTH: S.FROM},
    P.SUBSCRIBED: {S.NONE_PENDING_IN: S.FROM, S.NONE_PENDING_OUT_IN: S.FROM_PENDING_OUT,
                   S.TO_PENDING_IN: S.BOTH},
    P.UNSUBSCRIBED: {S.NONE_PENDING_IN: S.NONE, S.NONE_PENDING_OUT_IN: S.NONE_PENDING_OUT,
                     S.TO_PENDING_IN: S.TO, S.FROM: S.NONE,
                     S.FROM_PENDING_OUT: S.NONE_PENDING_OUT, S.BOTH: S.TO},
}

#: Appendix A.3: the user's server receives one. Delivered to the user iff the state changes.
INBOUND: dict[PresenceType, dict[SubState, SubState]] = {
    P.SUBSCRIBE: {S.NONE: S.NONE_PENDING_IN, S.NONE_PENDING_OUT: S.NONE_PENDING_OUT_IN,
                  S.TO: S.TO_PENDING_IN},
    P.UNSUBSCRIBE: {**OUTBOUND[P.UNSUBSCRIBED]},   # the contact withdraws: the same moves
    P.SUBSCRIBED: {S.NONE_PENDING_OUT: S.TO, S.NONE_PENDING_OUT_IN: S.TO_PENDING_IN,
                   S.FROM_PENDING_OUT: S.BOTH},
    P.UNSUBSCRIBED: {**OUTBOUND[P.UNSUBSCRIBE], S.NONE_PENDING_OUT_IN: S.NONE_PENDING_IN},
}

del S, P


@dataclass(eq=False)
class _Resource:
    """What presence remembers about one session."""

    session: SessionHandle
    last: Element | None = None  # last broadcast available presence
    directed: set[JID] = field(default_factory=set)  # §4.6: owed an unavailable


class Presence:
    """Presence and subscriptions for the users of one domain."""

    def __init__(self, sessions: Sessions, roster: Roster, offline: OfflineStore,
                 remote: RemoteDomains, *, log: logging.Logger | None = None) -> None:
        self.sessions, self.roster, self.offline, self.remote = sessions, roster, offline, remote
        self.log = log or logging.getLogger("iim.server.presence")
        self._resources: dict[JID, _Resource] = {}

    # -- entry points ------------------------------------------------------------

    def from_client(self, session: SessionHandle, stanza: Element) -> None:
        """A presence stanza from a client (``from`` already stamped)."""
        ptype = PresenceType.of(stanza)
        to = recipient(stanza)
        if ptype.is_subscription:
            self._outbound_subscription(session, stanza, ptype, to)
        elif to is None:
            self._broadcast(session, stanza, ptype)
        elif ptype is PresenceType.PROBE:
            self._answer_probe(to.bare, session)
        else:
            self._directed(session, stanza, ptype, to)

    def session_gone(self, session: SessionHandle) -> None:
        """The session ended (already unregistered): unavailable to all who saw it."""
        resource = self._resources.get(session.jid)
        if resource is not None and resource.session is session:
            del self._resources[session.jid]
        else:
            resource = None
        if session.available or (resource is not None and resource.directed):
            self._unavailable(session, _unavailable_from(session.jid), resource)
        session.available, session.priority = False, None

    def forget_all(self) -> None:
        self._resources.clear()

    # -- broadcast (§4.2, §4.4, §4.5) --------------------------------------------

    def session_moved(self, old: SessionHandle, new: SessionHandle) -> None:
        """``new`` resumed ``old`` (XEP-0198): what presence knows is now its."""
        resource = self._resources.get(old.jid)
        if resource is not None and resource.session is old:
            resource.session = new

    def _broadcast(self, session: SessionHandle, stanza: Element, ptype: PresenceType) -> None:
        if ptype is PresenceType.AVAILABLE:
            self._available(session, stanza)
        elif ptype is PresenceType.UNAVAILABLE:
            self._unavailable(session, stanza, self._resources.get(session.jid))
        else:
            raise StanzaError(Cond.BAD_REQUEST, f"a presence of type {ptype.value} needs a 'to'")

    def _available(self, session: SessionHandle, stanza: Element) -> None:
        priority = _priority(stanza)
        initial, before = not session.available, session.priority
        session.available, session.priority = True, priority
        self._resource(session).last = stanza
        user = session.jid.bare
        for contact in self._subscribers(user):
            self._send(stanza, contact)
        for own in self.sessions.available(user):  # the sender too (§4.2.2)
            own.deliver(_addressed(stanza, own.jid))
        if initial:
            self._probe_all(session)
        if initial or (before is not None and before < 0 <= priority):
            self.offline.deliver(session)

    def _unavailable(self, session: SessionHandle, stanza: Element,
                     resource: _Resource | None) -> None:
        was_available = session.available
        session.available, session.priority = False, None
        told: set[JID] = set()
        if was_available:
            user = session.jid.bare
            for contact in self._subscribers(user):
                self._send(stanza, contact)
                told.add(contact)
            for own in self.sessions.available(user):
                own.deliver(_addressed(stanza, own.jid))
        if resource is not None:
            for target in resource.directed:
                if target.bare not in told:  # a subscriber has had it already
                    self._send(stanza, target)
            resource.directed.clear()
            resource.last = None

    # -- directed presence (§4.6) --------------------------------------------------

    def _directed(self, session: SessionHandle, stanza: Element, ptype: PresenceType,
                  to: JID) -> None:
        directed = self._resource(session).directed
        if ptype is PresenceType.AVAILABLE:
            _priority(stanza)  # refuse a bad priority here as well
            directed.add(to)
        elif ptype is PresenceType.UNAVAILABLE:
            directed.discard(to)
        self.deliver(to, stanza)

    # -- probes (§4.3), answered locally --------------------------------------------

    def _probe_all(self, session: SessionHandle) -> None:
        user = session.jid.bare
        for contact in self._publishers(user):
            self._answer_probe(contact, session)
        for own in self._available_resources(user):
            if own.session is not session:
                session.deliver(_addressed(own.last, session.jid))

    def _answer_probe(self, contact: JID, session: SessionHandle) -> None:
        """What ``contact``'s server answers to a probe from the session's user.

        A local contact with no available resource has nothing to say: that
        is checked first, so probing offline contacts reads no storage, and
        an online contact's roster is in memory (``iim.server.roster``)."""
        user = session.jid.bare
        if not self.sessions.is_local(contact):
            probe = Element(PRESENCE, {"from": str(user), "to": str(contact), "type": "probe"})
            self.remote.send(probe)
        elif contact.local is not None:
            resources = self._available_resources(contact)
            if resources and self._sees(user, contact):
                for resource in resources:
                    session.deliver(_addressed(resource.last, session.jid))

    def _sees(self, user: JID, contact: JID) -> bool:
        """The user receives the contact's presence: the contact's roster says
        *from* or *both* for the user (what ``state(contact, user).has_from``
        says, without looking for pending requests)."""
        item = self.roster.item(contact, user)
        return item is not None and item.subscription in (Subscription.FROM, Subscription.BOTH)

    def answer_remote_probe(self, user: JID, prober: JID) -> None:
        """§4.3.2: a probe from another domain. A subscriber gets the user's
        current presence (unavailable when offline); anyone else gets
        ``unsubscribed`` and learns nothing of the user's presence."""
        if not self.state(user, prober.bare).has_from:
            self._send(Element(PRESENCE, {"from": str(user), "type": "unsubscribed"}),
                       prober.bare)
            return
        resources = self._available_resources(user)
        for resource in resources:
            self._send(resource.last, prober)
        if not resources:
            self._send(Element(PRESENCE, {"from": str(user), "type": "unavailable"}), prober)

    # -- subscriptions (§3, Appendix A) -----------------------------------------------

    def _outbound_subscription(self, session: SessionHandle, stanza: Element,
                               ptype: PresenceType, to: JID | None) -> None:
        if to is None:
            raise StanzaError(Cond.BAD_REQUEST, "a subscription stanza needs a 'to'")
        user, contact = session.jid.bare, to.bare
        stanza.set("from", str(user))  # §3.1.2: stamped with the bare JID
        stanza.set("to", str(contact))
        old = self.state(user, contact)
        new = OUTBOUND[ptype].get(old, old)
        self._apply(user, contact, old, new)
        if new is not old or ptype in (PresenceType.SUBSCRIBE, PresenceType.UNSUBSCRIBE):
            self._route_subscription(stanza, ptype, user, contact)
        self._follow_up(user, contact, old, new)

    def inbound_subscription(self, user: JID, sender: JID, ptype: PresenceType,
                             stanza: Element) -> None:
        """``sender`` sent ``user`` a subscription stanza (Appendix A.3)."""
        if not self.sessions.user_exists(user):
            if ptype is PresenceType.SUBSCRIBE:  # §3.1.3: no such contact
                self._reply(user, sender, PresenceType.UNSUBSCRIBED)
            return
        old = self.state(user, sender)
        if ptype is PresenceType.SUBSCRIBE and old.has_from:
            self._reply(user, sender, PresenceType.SUBSCRIBED)  # §3.1.3: already approved
            self._send_current(user, sender)
            return
        new = INBOUND[ptype].get(old, old)
        if new is old:
            return
        self._apply(user, sender, old, new, request=stanza)
        for session in self.sessions.available(user):
            session.deliver(stanza)
        self._follow_up(user, sender, old, new)

    def roster_item_removed(self, user: JID, item: RosterItem) -> None:
        """§2.5.2: removing a contact cancels the subscriptions both ways."""
        try:
            contact = JID.parse(item.jid)
        except InvalidJID:
            return
        state = self.state(user, contact)
        if state.has_to or state.pending_out:
            self._reply(user, contact, PresenceType.UNSUBSCRIBE)
        if state.has_from or state.pending_in:
            self._reply(user, contact, PresenceType.UNSUBSCRIBED)
        if state.pending_in:
            self._forget_requests(user, contact)
        if state.has_from:
            self._send_unavailable(user, contact)

    def state(self, user: JID, contact: JID) -> SubState:
        """The user's view of the contact (both bare JIDs)."""
        item = self.roster.item(user, contact)
        if item is None:
            return SubState.of(Subscription.NONE, False, self._has_request(user, contact))
        pending_in = item.subscription in (Subscription.NONE, Subscription.TO) and \
            self._has_request(user, contact)
        return SubState.of(item.subscription, item.ask, pending_in)

    def _apply(self, user: JID, contact: JID, old: SubState, new: SubState,
               request: Element | None = None) -> None:
        """Store the move from ``old`` to ``new``; a roster change is pushed."""
        if (old.subscription, old.pending_out) != (new.subscription, new.pending_out):
            item = self.roster.item(user, contact) or RosterItem(str(contact))
            self.roster.put(user, replace(item, subscription=new.subscription,
                                          ask=new.pending_out))
        if new.pending_in and not old.pending_in:
            self._remember_request(user, contact, request)
        elif old.pending_in and not new.pending_in:
            self._forget_requests(user, contact)

    def _follow_up(self, owner: JID, contact: JID, old: SubState, new: SubState) -> None:
        """§3.1.5, §3.2.2, §3.3.2: presence follows the *from* direction."""
        if new.has_from and not old.has_from:
            self._send_current(owner, contact)
        elif old.has_from and not new.has_from:
            self._send_unavailable(owner, contact)

    def _route_subscription(self, stanza: Element, ptype: PresenceType, sender: JID,
                            contact: JID) -> None:
        if not self.sessions.is_local(contact):
            self.remote.send(stanza)
        elif contact.local is not None:  # the server itself keeps no roster
            self.inbound_subscription(contact, sender, ptype, stanza)

    def _reply(self, sender: JID, contact: JID, ptype: PresenceType) -> None:
        """A subscription stanza the server sends for ``sender``."""
        stanza = Element(PRESENCE, {"from": str(sender), "to": str(contact), "type": ptype.value})
        self._route_subscription(stanza, ptype, sender, contact)

    # -- pending-in requests, kept in the offline store ----------------------------------

    def _has_request(self, user: JID, contact: JID) -> bool:
        return self.offline.has_request(user, contact)

    def _remember_request(self, user: JID, contact: JID, request: Element | None) -> None:
        if request is not None:
            self.offline.remember_request(user, contact, request)

    def _forget_requests(self, user: JID, contact: JID) -> None:
        self.offline.forget_request(user, contact)

    # -- helpers ------------------------------------------------------------------------

    def _resource(self, session: SessionHandle) -> _Resource:
        resource = self._resources.get(session.jid)
        if resource is None or resource.session is not session:
            resource = self._resources[session.jid] = _Resource(session)
        return resource

    def _available_resources(self, user: JID) -> list[_Resource]:
        found = []
        for session in self.sessions.available(user):
            resource = self._resources.get(session.jid)
            if resource is not None and resource.session is session and resource.last is not None:
                found.append(resource)
        return found

    def _subscribers(self, user: JID) -> list[JID]:
        """Contacts that receive the user's presence (*from* or *both*); for an
        online user, from memory, one step per subscriber (``iim.server.roster``)."""
        return self.roster.subscribers(user)

    def _publishers(self, user: JID) -> list[JID]:
        """Contacts whose presence the user receives (*to* or *both*)."""
        return self.roster.publishers(user)

    def _send(self, stanza: Element, to: JID) -> None:
        self.deliver(to, _addressed(stanza, to))

    def deliver(self, to: JID, stanza: Element) -> None:
        """Presence (not subscriptions) to ``to``: RFC 6121 §8.5.2.1.1, §8.5.3."""
        if not self.sessions.is_local(to):
            self.remote.send(stanza)
        elif to.local is None:
            return  # the server itself keeps no presence
        elif to.resource is None:
            for session in self.sessions.available(to):
                session.deliver(stanza)
        else:
            self.sessions.deliver_to(to, stanza)

    def _send_current(self, owner: JID, contact: JID) -> None:
        for resource in self._available_resources(owner):
            self._send(resource.last, contact)

    def _send_unavailable(self, owner: JID, contact: JID) -> None:
        for session in self.sessions.available(owner):
            self._send(_unavailable_from(session.jid), contact)


def _priority(stanza: Element) -> int:
    """The <priority/> child (§4.7.2.3): an integer from -128 to 127, default 0."""
    text = stanza.findtext(q(CLIENT_NS, "priority"))
    if text is None:
        return 0
    text = text.strip()
    if not _INTEGER.fullmatch(text) or not -128 <= int(text) <= 127:
        raise StanzaError(Cond.BAD_REQUEST, "priority is an integer from -128 to 127")
    return int(text)


def _addressed(stanza: Element, to: JID) -> Element:
    """A copy of ``stanza`` with a new 'to'."""
    readdressed = copy_stanza(stanza)
    readdressed.set("to", str(to))
    return readdressed


def _unavailable_from(jid: JID) -> Element:
    return Element(PRESENCE, {"from": str(jid), "type": "unavailable"})

