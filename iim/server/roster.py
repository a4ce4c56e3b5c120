"""Rosters: get, set, remove and roster pushes (RFC 6121 §2), with versions (§2.6).

Theory of operation
-------------------
The roster lives in ``Storage`` (one row per contact; a version per user that
changes with every change). This module is its only writer while the server
runs, so every change goes through ``put`` or ``remove`` and each of those
ends with a *roster push* (§2.1.6): an ``<iq type='set'/>`` with a fresh id,
the changed item and the new version, sent to every *interested* resource of
the user, the ones that have asked for the roster in this session (§2.1.6 and
§2.2: a resource that never fetched the roster has no copy to keep in sync).
Clients answer pushes with an empty result, which the router drops.

Versioning (RFC 6121 §2.6, XEP-0237): a get that carries ``ver`` gets the full
roster with the current ``ver``, or, when the client already holds that
version, an empty result. Pushes always carry ``ver``; a client that does not
version ignores it. Versions are decimal strings of the storage counter, which
never goes back (see ``iim.server.storage``), so a stale cache never matches.

What clients may change (§2.1.2, §2.3): ``name`` and the groups. The
subscription state and ``ask`` belong to the server (``iim.server.presence``
sets them); a ``subscription`` attribute in a set is ignored except for
``remove`` (§2.5), which first cancels the subscriptions both ways through the
``on_remove`` hook (§2.5.2), then deletes the item and pushes
``subscription='remove'``.

Items are bare JIDs: subscriptions, and so the whole roster model here, are
between bare JIDs (§3.1.1). A set naming a full JID is refused.

Limits (issue 11.6). A roster holds at most ``iim_server.max_roster_items``
items: a set that would add one more gets ``<resource-constraint/>`` (RFC 6120
§8.3.3.18; RFC 6121 §2.3.3 leaves the roster's size to the server), and so
does a subscription request that would add a contact. One item's name and
groups, counted as they are written (``name='...'`` and each
``<group>...</group>``), take at most ``iim_server.max_roster_item_size``
bytes; a bigger one is ``<not-acceptable/>``, RFC 6121 §2.3.3's answer to a
name or group "larger than a server-configured limit". Items stored before a
limit was lowered are kept and served; only new sets are refused.

In memory. Presence reads rosters constantly: every broadcast goes to the
user's subscribers, every initial presence probes the contacts the user is
subscribed to, and every probe answer checks the contact's view of the user.
So the roster of a user who is online is held in memory (``_Held``): loaded
from storage once, at its first use after login, changed together with
storage by ``put`` and ``remove`` (the only writers), and dropped by
``forget`` when the user's last resource goes. Besides the items it keeps the
two sets presence fans out to, the subscribers (*from*/*both*) and the
publishers (*to*/*both*), so a broadcast costs one step per subscriber, not
one per item, and reads storage not at all. The memory is bounded by the
limits: online users x max_roster_items x (max_roster_item_size + the JID +
a few hundred bytes of objects). Rosters of users who are offline are read
from storage when needed, as before (a subscription request for them, say).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable
from xml.etree.ElementTree import Element, SubElement

from iim.conf.limits import ServerLimits
from iim.server.storage import RosterItem, Storage, Subscription
from iim.xmpp.errors import StanzaError, StanzaErrorCondition
from iim.xmpp.jid import JID, InvalidJID
from iim.xmpp.ns import CLIENT_NS, ROSTER_NS, q

from .sessions import SessionHandle, Sessions

Cond = StanzaErrorCondition
QUERY = q(ROSTER_NS, "query")
ITEM = q(ROSTER_NS, "item")
GROUP = q(ROSTER_NS, "group")

MAX_TEXT = 1023
"""Longest handle or group name we keep, in characters (§2.3.3 lets a server choose)."""

_GROUP_MARKUP = len("<group></group>")
_NAME_MARKUP = len(" name=''")
_ITEM_MARKUP = len("<item jid='' subscription='both' ask='subscribe'></item>")
_FROM_STATES = (Subscription.FROM, Subscription.BOTH)
_TO_STATES = (Subscription.TO, Subscription.BOTH)


@dataclass
class _Held:
    """An online user's roster in memory: the items by JID, the version, and
    the contacts presence fans out to (see the module docstring)."""

    items: dict[str, RosterItem]
    version: int
    subscribers: dict[str, JID] = field(default_factory=dict)
    publishers: dict[str, JID] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for item in self.items.values():
            self._index(item)

    def put(self, item: RosterItem, version: int) -> None:
        self.items[item.jid] = item
        self.version = version
        self._index(item)

    def remove(self, jid: str, version: int) -> None:
        self.items.pop(jid, None)
        self.subscribers.pop(jid, None)
        self.publishers.pop(jid, None)
        self.version = version

    def _index(self, item: RosterItem) -> None:
        contact = _contact(item.jid)
        for table, states in ((self.subscribers, _FROM_STATES), (self.publishers, _TO_STATES)):
            if contact is not None and item.subscription in states:
                table[item.jid] = contact
            else:
                table.pop(item.jid, None)


class Roster:
    """The users' rosters: client requests in, roster pushes out."""

    def __init__(
        self,
        storage: Storage,
        sessions: Sessions,
        *,
        on_remove: Callable[[JID, RosterItem], None] | None = None,
        limits: ServerLimits = ServerLimits(),
        max_bytes: int | None = None,
    ) -> None:
        self._storage = storage
        self._sessions = sessions       # who is online, and who gets pushes
        self.on_remove = on_remove
        """Called with (user, item) before an item is removed at the user's request."""
        self.limits = limits
        self.max_bytes = max_bytes
        """Bytes the whole roster may take as its items are written in a roster
        result: a roster the owner could not fetch in one stanza no larger than
        the server's own iim_server.maxstanzasize is refused growth."""
        self._held: dict[JID, _Held] = {}

    # -- reading --------------------------------------------------------------

    def items(self, user: JID) -> list[RosterItem]:
        held = self._hold(user)
        if held is None:
            return self._storage.roster(user.local)
        return list(held.items.values())

    def item(self, user: JID, contact: JID) -> RosterItem | None:
        wanted = str(contact)
        held = self._hold(user)
        if held is not None:
            return held.items.get(wanted)
        return next((item for item in self.items(user) if item.jid == wanted), None)

    def version(self, user: JID) -> str:
        held = self._hold(user)
        if held is None:
            return str(self._storage.roster_version(user.local))
        return str(held.version)

    def subscribers(self, user: JID) -> list[JID]:
        """Contacts that receive the user's presence (*from* or *both*)."""
        held = self._hold(user)
        if held is not None:
            return list(held.subscribers.values())
        return _contacts(self.items(user), _FROM_STATES)

    def publishers(self, user: JID) -> list[JID]:
        """Contacts whose presence the user receives (*to* or *both*)."""
        held = self._hold(user)
        if held is not None:
            return list(held.publishers.values())
        return _contacts(self.items(user), _TO_STATES)

    # -- the in-memory rosters of online users ---------------------------------

    def _hold(self, user: JID) -> _Held | None:
        """The user's roster in memory; loaded now if the user is online."""
        held = self._held.get(user)
        if held is None and self._sessions.is_online(user):
            items = {item.jid: item for item in self._storage.roster(user.local)}
            held = self._held[user] = _Held(items, self._storage.roster_version(user.local))
        return held

    def forget(self, user: JID) -> None:
        """The user's last resource went: free the roster held in memory."""
        self._held.pop(user, None)

    def forget_all(self) -> None:
        self._held.clear()

    # -- client requests (§2.2, §2.3, §2.5) -----------------------------------

    def get(self, session: SessionHandle, query: Element) -> Element | None:
        """Roster get; the session becomes an interested resource (§2.1.6)."""
        session.interested = True
        user = session.jid.bare
        version = self.version(user)
        cached = query.get("ver")
        if cached is not None and cached == version:
            return None  # §2.6.3: the client's copy is current; pushes follow
        result = Element(QUERY, {"ver": version} if cached is not None else {})
        result.extend(item_element(item) for item in self.items(user))
        return result

    def set(self, session: SessionHandle, query: Element) -> None:
        """Roster set: add or update one item, or remove it (§2.3, §2.5)."""
        element = _single_item(query)
        user, contact = session.jid.bare, _item_jid(element)
        if element.get("subscription") == "remove":
            self._remove_requested(user, contact)
            return
        name, groups = _item_name(element), _item_groups(element)
        _check_size(name, groups, self.limits.max_roster_item_size)
        old = self.item(user, contact)
        new = (replace(old, name=name, groups=groups) if old is not None
               else RosterItem(str(contact), name, groups=groups))
        self.put(user, new)

    def _remove_requested(self, user: JID, contact: JID) -> None:
        item = self.item(user, contact)
        if item is None:
            raise StanzaError(Cond.ITEM_NOT_FOUND)
        if self.on_remove is not None:
            self.on_remove(user, item)
        self.remove(user, contact)

    # -- changes, each followed by a push --------------------------------------

    def put(self, user: JID, item: RosterItem) -> None:
        """Store ``item`` (added or changed) and push it. A new item in a full
        roster is ``<resource-constraint/>`` (nothing stored)."""
        self._check_room(user, item)
        version = self._storage.set_roster_item(user.local, item)
        held = self._held.get(user)
        if held is not None:
            held.put(item, version)
        self._push(user, item_element(item), version)

    def remove(self, user: JID, contact: JID) -> None:
        """Delete the item, if any, and push ``subscription='remove'``."""
        version = self._storage.remove_roster_item(user.local, str(contact))
        if version is None:
            return
        held = self._held.get(user)
        if held is not None:
            held.remove(str(contact), version)
        self._push(user, Element(ITEM, {"jid": str(contact), "subscription": "remove"}),
                   version)

    def _check_room(self, user: JID, new: RosterItem) -> None:
        held = self._hold(user)
        items = held.items if held is not None else {i.jid: i for i in self.items(user)}
        limit = self.limits.max_roster_items
        if new.jid not in items and len(items) >= limit:
            raise StanzaError(Cond.RESOURCE_CONSTRAINT,
                              f"the roster is full ({limit} items, iim_server.max_roster_items)")
        if self.max_bytes is None:
            return
        old = items.get(new.jid)
        total = (sum(written_size(item) for item in items.values())
                 - (written_size(old) if old is not None else 0) + written_size(new))
        if total > self.max_bytes:
            raise StanzaError(Cond.RESOURCE_CONSTRAINT,
                              f"the roster would take more than {self.max_bytes} bytes, more "
                              f"than one roster result may carry (iim_server.maxstanzasize)")

    def _push(self, user: JID, item: Element, version: int) -> None:
        for session in self._sessions.interested(user):
            iq = Element(q(CLIENT_NS, "iq"),
                         {"type": "set", "id": "push-" + secrets.token_hex(6),
                          "to": str(session.jid)})
            SubElement(iq, QUERY, {"ver": str(version)}).append(item)
            session.deliver(iq)


def item_element(item: RosterItem) -> Element:
    """The ``<item/>`` of a roster result or push (§2.1.2)."""
    element = Element(ITEM, {"jid": item.jid})
    if item.name:
        element.set("name", item.name)
    element.set("subscription", item.subscription.value)
    if item.ask:
        element.set("ask", "subscribe")
    for group in item.groups:
        SubElement(element, GROUP).text = group
    return element


def _contact(jid: str) -> JID | None:
    try:
        return JID.parse(jid).bare
    except InvalidJID:
        return None


def _contacts(items: Iterable[RosterItem], states: tuple[Subscription, ...]) -> list[JID]:
    found = (_contact(item.jid) for item in items if item.subscription in states)
    return [contact for contact in found if contact is not None]


# -- parsing a roster set (§2.3.3 error cases) --------------------------------------


def item_size(name: str | None, groups: Iterable[str]) -> int:
    """The bytes an item's name and groups take as written (``name='...'``
    and each ``<group>...</group>``): what ``max_roster_item_size`` bounds."""
    size = len(name.encode()) + _NAME_MARKUP if name else 0
    return size + sum(len(group.encode()) + _GROUP_MARKUP for group in groups)


def written_size(item: RosterItem) -> int:
    """About the bytes ``item`` takes in a roster result: its name and groups,
    its JID and the markup around them (``<item jid='' subscription=''/>``)."""
    return item_size(item.name, item.groups) + len(item.jid.encode()) + _ITEM_MARKUP


def _check_size(name: str | None, groups: tuple[str, ...], limit: int) -> None:
    if item_size(name, groups) > limit:
        raise StanzaError(Cond.NOT_ACCEPTABLE, f"the item's name and groups take more than "
                          f"{limit} bytes (iim_server.max_roster_item_size)")


def _single_item(query: Element) -> Element:
    items = list(query)
    if len(items) != 1 or items[0].tag != ITEM:
        raise StanzaError(Cond.BAD_REQUEST, "a roster set carries exactly one item")
    return items[0]


def _item_jid(item: Element) -> JID:
    text = item.get("jid")
    if text is None:
        raise StanzaError(Cond.BAD_REQUEST, "the item has no jid")
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise StanzaError(Cond.JID_MALFORMED, str(exc)) from None
    if jid.resource is not None:
        raise StanzaError(Cond.BAD_REQUEST, "a roster item is a bare JID")
    return jid


def _item_name(item: Element) -> str | None:
    name = item.get("name") or None
    if name is not None and len(name) > MAX_TEXT:
        raise StanzaError(Cond.NOT_ACCEPTABLE, f"the name is longer than {MAX_TEXT} characters")
    return name


def _item_groups(item: Element) -> tuple[str, ...]:
    groups = tuple((group.text or "") for group in item.findall(GROUP))
    if any(not group.strip() for group in groups):
        raise StanzaError(Cond.NOT_ACCEPTABLE, "a group name is empty")
    if any(len(group) > MAX_TEXT for group in groups):
        raise StanzaError(Cond.NOT_ACCEPTABLE, f"a group name is longer than {MAX_TEXT} characters")
    if len(set(groups)) != len(groups):
        raise StanzaError(Cond.BAD_REQUEST, "a group is named twice")
    return groups
