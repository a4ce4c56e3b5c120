"""IQs the server answers itself: for its own domain, and on behalf of an account.

Two addressees, two tables:

- **the server** (``to`` is the domain, or absent): XEP-0199 ping, XEP-0030
  service discovery (identity ``server/im`` and the features below, among them
  ``urn:xmpp:iim:security:0``, which the router answers from the asking
  session's facts: ``iim.server.security_info``; an empty disco#items), XEP-0092 software version.
- **an account** (``to`` is a user's bare JID; RFC 6121 §8.5.2.1.3 and
  §8.5.2.2.3: the server replies on the user's behalf and never hands the IQ to
  a resource): ping, and disco#info with identity ``account/registered``, the
  latter only to the account itself and to entities the user lets see its
  presence (XEP-0030 §3.1: nothing is revealed to strangers).

Anything else is ``<service-unavailable/>`` (RFC 6120 §8.3.3.19). Handlers
return the child of the ``result`` IQ (or None for an empty result) and raise
``StanzaError``; the router builds the reply and addresses it.
"""

from __future__ import annotations

from typing import Callable
from xml.etree.ElementTree import Element, SubElement

from iim import __version__
from iim.xmpp.errors import StanzaError, StanzaErrorCondition
from iim.xmpp.ns import DISCO_INFO_NS, PING_NS, ROSTER_NS, VERSION_NS, q

from .security_info import SECURITY_NS
from .stanzas import IqType

DISCO_ITEMS_NS = "http://jabber.org/protocol/disco#items"   # XEP-0030 §4
OFFLINE_FEATURE = "msgoffline"                               # XEP-0160 §5 (disco feature)

Cond = StanzaErrorCondition


Handler = Callable[[Element], "Element | None"]


class Services:
    """The server's own IQ services for one ``domain``."""

    def __init__(self, domain: str, *, software: str = "iim", version: str = __version__) -> None:
        self.domain = domain
        self.software = software
        self.version = version
        self.features = (DISCO_INFO_NS, DISCO_ITEMS_NS, PING_NS, VERSION_NS, OFFLINE_FEATURE,
                         SECURITY_NS)       # answered by the router (iim.server.security_info)
        self._server: dict[tuple[str, IqType], Handler] = {
            (q(PING_NS, "ping"), IqType.GET): _pong,
            (q(DISCO_INFO_NS, "query"), IqType.GET): self._server_info,
            (q(DISCO_ITEMS_NS, "query"), IqType.GET): _no_items,
            (q(VERSION_NS, "query"), IqType.GET): self._software_version,
        }

    def server(self, iq_type: IqType, payload: Element) -> Element | None:
        """Answer an IQ addressed to the server; raises ``StanzaError``."""
        return _lookup(self._server, iq_type, payload)(payload)

    def account(self, iq_type: IqType, payload: Element, *, visible: bool) -> Element | None:
        """Answer, on the user's behalf, an IQ sent to a user's bare JID.

        ``visible``: the requester is the user, or has a presence subscription
        to the user; only then is the account's existence confirmed by disco.
        """
        if payload.tag == q(ROSTER_NS, "query"):
            raise StanzaError(Cond.FORBIDDEN, "a roster belongs to its owner (RFC 6121 §2.1.5)")
        handlers: dict[tuple[str, IqType], Handler] = {(q(PING_NS, "ping"), IqType.GET): _pong}
        if visible:
            handlers[(q(DISCO_INFO_NS, "query"), IqType.GET)] = _account_info
        return _lookup(handlers, iq_type, payload)(payload)

    # -- handlers -----------------------------------------------------------

    def _server_info(self, payload: Element) -> Element:
        query = _disco_query(payload)
        SubElement(query, q(DISCO_INFO_NS, "identity"),
                   {"category": "server", "type": "im", "name": self.software})
        for feature in self.features:
            SubElement(query, q(DISCO_INFO_NS, "feature"), {"var": feature})
        return query

    def _software_version(self, payload: Element) -> Element:
        query = Element(q(VERSION_NS, "query"))
        SubElement(query, q(VERSION_NS, "name")).text = self.software
        SubElement(query, q(VERSION_NS, "version")).text = self.version
        return query


def _lookup(handlers: dict, iq_type: IqType, payload: Element) -> Handler:
    handler = handlers.get((payload.tag, iq_type))
    if handler is None:
        raise StanzaError(Cond.SERVICE_UNAVAILABLE)
    return handler


def _pong(payload: Element) -> None:
    """XEP-0199 §6: the answer to a ping is an empty result."""
    return None


def _no_items(payload: Element) -> Element:
    if payload.get("node") is not None:
        raise StanzaError(Cond.ITEM_NOT_FOUND)
    return Element(q(DISCO_ITEMS_NS, "query"))


def _disco_query(payload: Element) -> Element:
    """XEP-0030 §3.1: we publish no nodes, so a node query is item-not-found."""
    if payload.get("node") is not None:
        raise StanzaError(Cond.ITEM_NOT_FOUND)
    return Element(q(DISCO_INFO_NS, "query"))


def _account_info(payload: Element) -> Element:
    query = _disco_query(payload)
    SubElement(query, q(DISCO_INFO_NS, "identity"), {"category": "account", "type": "registered"})
    SubElement(query, q(DISCO_INFO_NS, "feature"), {"var": DISCO_INFO_NS})
    return query
