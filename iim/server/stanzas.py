"""What the routing modules share about a stanza: its kind, its type, its
address, and the error reply to it (RFC 6120 §8, RFC 6121 §5.2.2).

Pure functions over ``Element``s in the ``jabber:client`` namespace, the
namespace the router works in whatever stream a stanza came by.
"""

from __future__ import annotations

import enum
from xml.etree.ElementTree import Element

from iim.xmpp.errors import StanzaError, StanzaErrorCondition
from iim.xmpp.jid import JID, InvalidJID
from iim.xmpp.ns import CLIENT_NS, q

__all__ = ["IQ", "MESSAGE", "PRESENCE", "IqType", "MessageType", "bounce", "copy_stanza",
           "iq_payload", "iq_type", "namespace", "recipient"]

Cond = StanzaErrorCondition
MESSAGE = q(CLIENT_NS, "message")
PRESENCE = q(CLIENT_NS, "presence")
IQ = q(CLIENT_NS, "iq")


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


class IqType(enum.Enum):
    """The 'type' of an IQ (RFC 6120 §8.2.3)."""

    GET = "get"
    SET = "set"
    RESULT = "result"
    ERROR = "error"

    @property
    def is_request(self) -> bool:
        return self in (IqType.GET, IqType.SET)


def iq_type(iq: Element) -> IqType:
    """The IQ's type, checked with its id (RFC 6120 §8.2.3); else ``<bad-request/>``."""
    try:
        found = IqType(iq.get("type"))
    except ValueError:
        raise StanzaError(Cond.BAD_REQUEST, "an IQ's type is get, set, result or error") from None
    if not iq.get("id"):
        raise StanzaError(Cond.BAD_REQUEST, "an IQ needs an id")
    return found


def iq_payload(iq: Element) -> Element:
    """The one child of a get or set (RFC 6120 §8.2.3); else ``<bad-request/>``."""
    children = list(iq)
    if len(children) != 1:
        raise StanzaError(Cond.BAD_REQUEST, "an IQ get or set carries exactly one child")
    return children[0]


def recipient(stanza: Element) -> JID | None:
    """The stanza's 'to' as a JID; a bad one is ``<jid-malformed/>``."""
    text = stanza.get("to")
    if text is None:
        return None
    try:
        return JID.parse(text)
    except InvalidJID as exc:
        raise StanzaError(Cond.JID_MALFORMED, str(exc)) from None


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
    reply.append(error.to_element(namespace(stanza.tag) or CLIENT_NS))
    return reply


def copy_stanza(stanza: Element) -> Element:
    """A shallow copy whose attributes and child list are its own (children shared).

    Not ``copy.copy``: the C ElementTree's copy shares the attribute dict, so
    readdressing the copy would readdress the original.
    """
    duplicate = Element(stanza.tag, dict(stanza.attrib))
    duplicate.text, duplicate.tail = stanza.text, stanza.tail
    duplicate.extend(stanza)
    return duplicate


def namespace(tag: str) -> str | None:
    """The namespace of a ``{ns}name`` tag; None for a plain name."""
    return tag[1:].partition("}")[0] if tag.startswith("{") else None
