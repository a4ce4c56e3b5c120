"""Server dialback keys and elements (XEP-0220), and the coserver proof.

Dialback keys (XEP-0220 §2.4, XEP-0185): the key a server sends for the
stream it opened is

    HMAC-SHA256(hex(SHA-256(secret)), "{receiving} {originating} {stream id}")

in lower-case hex. Only the server that made a key ever checks it (as the
*authoritative* server, when the receiving server asks with
``<db:verify/>``), so nothing about a key is stored per connection: it is
recomputed from the secret and the three values the request carries.

Coserver proof (iim's own, for peers listed as coservers in iim.conf, on top
of EXTERNAL or dialback): the mirrored ``serverid``/``password`` pair
(docs/architecture.md) is proved with an HMAC keyed by the password over a label, the
serverid, both domains and the *receiving* stream's id, so the password never
travels and a proof is good for one stream only. The receiving server answers
with its own proof (a different label), so both ends know the other holds its
half of the pair.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from xml.etree.ElementTree import Element

from .errors import StanzaError, StanzaErrorCondition
from .ns import SERVER_NS, q

DIALBACK_NS = "jabber:server:dialback"                      # XEP-0220 elements (prefix db:)
DIALBACK_FEATURE_NS = "urn:xmpp:features:dialback"          # XEP-0220 §2.1 stream feature
COSERVER_NS = "urn:xmpp:iim:coserver:0"                     # iim's coserver proof
DB_PREFIXES = {DIALBACK_NS: "db"}

DB_RESULT = q(DIALBACK_NS, "result")
DB_VERIFY = q(DIALBACK_NS, "verify")


class DialbackType(enum.Enum):
    """The 'type' of a dialback answer (XEP-0220 §2.1.2, §2.4)."""

    VALID = "valid"
    INVALID = "invalid"
    ERROR = "error"


def dialback_key(secret: bytes, receiving: str, originating: str, stream_id: str) -> str:
    """The key the originating server sends in ``<db:result/>`` (XEP-0185 §3)."""
    hashed = hashlib.sha256(secret).hexdigest().encode("ascii")
    message = f"{receiving} {originating} {stream_id}".encode("utf-8")
    return hmac.new(hashed, message, hashlib.sha256).hexdigest()


def key_is_valid(secret: bytes, receiving: str, originating: str, stream_id: str,
                 key: str) -> bool:
    expected = dialback_key(secret, receiving, originating, stream_id)
    return hmac.compare_digest(expected.encode("ascii"), (key or "").strip().encode("utf-8"))


def result_request(originating: str, receiving: str, key: str) -> Element:
    """``<db:result from=originating to=receiving>key</db:result>`` (§2.1.1)."""
    element = Element(DB_RESULT, {"from": originating, "to": receiving})
    element.text = key
    return element


def verify_request(receiving: str, originating: str, stream_id: str, key: str) -> Element:
    """What the receiving server asks the authoritative one (§2.1.2)."""
    element = Element(DB_VERIFY, {"from": receiving, "to": originating, "id": stream_id})
    element.text = key
    return element


def answer(request: Element, kind: DialbackType,
           condition: StanzaErrorCondition | None = None) -> Element:
    """The answer to a db:result or db:verify: addresses swapped, the id kept,
    and for ``error`` a stanza-style ``<error/>`` (§2.4)."""
    reply = Element(request.tag, {"from": request.get("to", ""), "to": request.get("from", ""),
                                  "type": kind.value})
    if request.get("id") is not None:
        reply.set("id", request.get("id"))
    if kind is DialbackType.ERROR:      # <error/> unprefixed: in the stream's jabber:server
        error = StanzaError(condition or StanzaErrorCondition.ITEM_NOT_FOUND)
        reply.append(error.to_element(SERVER_NS))
    return reply


def answer_type(element: Element) -> DialbackType | None:
    try:
        return DialbackType(element.get("type"))
    except ValueError:
        return None


# -- coserver proof -------------------------------------------------------------------

_INITIATOR = "iim coserver 0 initiator"
_RESPONDER = "iim coserver 0 responder"


def coserver_proof(password: str, serverid: str, originating: str, receiving: str,
                   stream_id: str, *, responder: bool = False) -> str:
    label = _RESPONDER if responder else _INITIATOR
    message = "\0".join((label, serverid, originating, receiving, stream_id)).encode("utf-8")
    return hmac.new(password.encode("utf-8"), message, hashlib.sha256).hexdigest()


def proof_is_valid(password: str, serverid: str, originating: str, receiving: str,
                   stream_id: str, proof: str, *, responder: bool = False) -> bool:
    expected = coserver_proof(password, serverid, originating, receiving, stream_id,
                              responder=responder)
    return hmac.compare_digest(expected.encode("ascii"), (proof or "").strip().encode("utf-8"))
