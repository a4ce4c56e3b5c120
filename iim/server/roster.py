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
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Iterable
from xml.etree.ElementTree import Element, SubElement

from iim.server.storage import RosterItem, Storage
from iim.xmpp.errors import StanzaError, StanzaErrorCondition
from iim.xmpp.jid import JID, InvalidJID
from iim.xmpp.ns import CLIENT_NS, ROSTER_NS, q

if TYPE_CHECKING:
    from iim.server.router import SessionHandle

Cond = StanzaErrorCondition
QUERY = q(ROSTER_NS, "query")
ITEM = q(ROSTER_NS, "item")
GROUP = q(ROSTER_NS, "group")

MAX_TEXT = 1023
"""Longest handle or group name we keep, in characters (§2.3.3 lets a server choose)."""


class Roster:
    """The users' rosters: client requests in, roster pushes out."""

    def __init__(
        self,
        storage: Storage,
        interested: Callable[[JID], Iterable["SessionHandle"]],
        *,
        on_remove: Callable[[JID, RosterItem], None] | None = None,
    ) -> None:
        self._storage = storage
        self._interested = interested
        self.on_remove = on_remove
        """Called with (user, item) before an item is removed at the user's request."""

    # -- reading --------------------------------------------------------------

    def items(self, user: JID) -> list[RosterItem]:
        return self._storage.roster(user.local)

    def item(self, user: JID, contact: JID) -> RosterItem | None:
        wanted = str(contact)
        return next((item for item in self.items(user) if item.jid == wanted), None)

    def version(self, user: JID) -> str:
        return str(self._storage.roster_version(user.local))

    # -- client requests (§2.2, §2.3, §2.5) -----------------------------------

    def get(self, session: "SessionHandle", query: Element) -> Element | None:
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

    def set(self, session: "SessionHandle", query: Element) -> None:
        """Roster set: add or update one item, or remove it (§2.3, §2.5)."""
        element = _single_item(query)
        user, contact = session.jid.bare, _item_jid(element)
        if element.get("subscription") == "remove":
            self._remove_requested(user, contact)
            return
        name, groups = _item_name(element), _item_groups(element)
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
        """Store ``item`` (added or changed) and push it."""
        version = self._storage.set_roster_item(user.local, item)
        self._push(user, item_element(item), version)

    def remove(self, user: JID, contact: JID) -> None:
        """Delete the item, if any, and push ``subscription='remove'``."""
        version = self._storage.remove_roster_item(user.local, str(contact))
        if version is not None:
            self._push(user, Element(ITEM, {"jid": str(contact), "subscription": "remove"}),
                       version)

    def _push(self, user: JID, item: Element, version: int) -> None:
        for session in self._interested(user):
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


# -- parsing a roster set (§2.3.3 error cases) --------------------------------------


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
