"""The session's own transport security, as the server sees it (``urn:xmpp:iim:security:0``).

Why: a client can check its own end of TLS, but not what happens behind it. A
browser sees a TLS connection to *something*; whether that something is this
server or a multiplexor that decrypts and relays in the clear, and whether the
XMPP session it logged in to is the one on that connection, only the server
knows. The web client's lock icon closes only when the page, its WebSocket or
BOSH connection, *and* this answer all say TLS (docs/web-client.md).

The protocol (an iim extension; namespace versioned ``:0``)::

    C: <iq type='get' id='s1'><security xmlns='urn:xmpp:iim:security:0'/></iq>
    S: <iq type='result' id='s1'>
         <security xmlns='urn:xmpp:iim:security:0' secure='true'>
           <tls layer='starttls' ends='server' version='TLSv1.3'
                cipher='TLS_AES_256_GCM_SHA384' bits='256'>
             <certificate subject='CN=example.com,O=...' issuer='CN=Example CA'
                          not-after='2027-12-01T10:00:00Z'/>
           </tls>
         </security>
       </iq>

One ``<tls/>`` per TLS layer between the client and this server, the outer
(the client's connection) first:

- ``layer``: ``starttls`` (RFC 6120 §5 on this stream), ``legacy-ssl`` (TLS
  from the first byte, as on port 5223), ``https`` (the WebSocket (RFC 7395)
  or BOSH (XEP-0206) connection of the web gateway);
- ``ends``: ``server`` (this server process decrypts it: STARTTLS, always end
  to end even through a multiplexor, and the web gateway, which runs in the
  server process) or ``multiplexor`` (legacy SSL at the multiplexor, which
  then relays to the server over its link);
- ``version``, ``cipher``, ``bits`` as OpenSSL names them;
- ``<certificate/>``: the certificate that end presents, when the server
  knows it (its own keystore's; the multiplexor's NSS certificate is not the
  server's to read, so a ``legacy-ssl`` layer has none). After a SIGHUP
  reload it is the certificate the server presents now.

No layer at all: ``<security secure='false'><not-encrypted/></security>``.
A session whose stream was told its transport is protected
(``secure_transport``: legacy SSL, the gateway's HTTPS) by a carrier that
does not describe that protection gets ``<undescribed/>`` instead (and
``secure='false'``, with any STARTTLS layer inside still listed): the server
neither vouches for TLS it cannot name nor calls it unencrypted.
``secure`` is true when there is a layer and every layer is TLS 1.2 or later
(the server never negotiates less; the check is here so that the answer
never says "secure" about something else).

Only the asking session is described: the query is answered when sent with
no ``to`` or to the server's domain, from the facts of the session it came
in on; addressed to anyone else it takes the router's usual way (an account
answers ``<service-unavailable/>``, a full JID is that client's business),
so one user can never learn another's transport. Any ``type`` but ``get``
is ``<bad-request/>``, a query with content is ``<bad-request/>`` too.

Where the facts come from: ``session.tls`` (the session's STARTTLS, memory
BIOs), and the carrier's optional ``transport_tls`` attribute, a
``CarrierTLS`` the carrier sets when TLS ended before the bytes reached the
session (the mux link for a legacy-SSL session, the web gateway for
``wss:``/``https:``, iim/server/web/). A layer nobody describes is never
assumed: the answer says only what the server knows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timezone
from typing import Callable
from xml.etree.ElementTree import Element, SubElement

from iim.xmpp.errors import StanzaError, StanzaErrorCondition
from iim.xmpp.ns import q

from .stanzas import IqType

__all__ = ["SECURITY_NS", "CarrierTLS", "Layer", "TLSEnd", "TLSHop", "SecurityInfo",
           "carrier_tls", "describe", "hops_of", "undescribed"]

SECURITY_NS = "urn:xmpp:iim:security:0"
SECURITY_QUERY = q(SECURITY_NS, "security")
GOOD_VERSIONS = frozenset({"TLSv1.2", "TLSv1.3"})

Cond = StanzaErrorCondition


class Layer(enum.Enum):
    """What kind of TLS layer (the ``layer`` attribute)."""

    STARTTLS = "starttls"
    LEGACY_SSL = "legacy-ssl"
    HTTPS = "https"


class TLSEnd(enum.Enum):
    """Who decrypts a layer (the ``ends`` attribute)."""

    SERVER = "server"
    MULTIPLEXOR = "multiplexor"


@dataclass(frozen=True)
class CarrierTLS:
    """TLS a carrier ended before the session's bytes: set as ``carrier.transport_tls``."""

    layer: Layer
    ends: TLSEnd
    version: str
    cipher: str
    bits: int = 0
    certificate: object | None = None   # cryptography x509.Certificate, when known


TLSHop = CarrierTLS     # one layer in an answer: the same facts


def hops_of(session, server_certificate: Callable[[], object | None]) -> list[TLSHop]:
    """The TLS layers between ``session``'s client and this server, outer first."""
    hops = []
    outer = carrier_tls(session.carrier)
    if outer is not None:
        hops.append(outer)
    info = session.tls.info()
    if info is not None:
        hops.append(TLSHop(Layer.STARTTLS, TLSEnd.SERVER, info.version, info.cipher,
                           info.bits, server_certificate()))
    return hops


def undescribed(session, hops: list[TLSHop]) -> bool:
    """The session's transport was declared protected (``secure_transport``)
    but no carrier said how: neither "not encrypted" nor a layer may be said."""
    return session.stream.transport_secure and not any(h.layer is not Layer.STARTTLS
                                                       for h in hops)


def carrier_tls(carrier) -> CarrierTLS | None:
    """The TLS a carrier ended before the session (its ``transport_tls``), or None."""
    return getattr(carrier, "transport_tls", None)


def describe(hops: list[TLSHop], *, undescribed: bool = False) -> Element:
    """The ``<security/>`` element for ``hops``."""
    secure = bool(hops) and not undescribed and all(h.version in GOOD_VERSIONS for h in hops)
    answer = Element(SECURITY_QUERY, {"secure": "true" if secure else "false"})
    if undescribed:
        SubElement(answer, q(SECURITY_NS, "undescribed"))
    elif not hops:
        SubElement(answer, q(SECURITY_NS, "not-encrypted"))
    for hop in hops:
        _hop_element(answer, hop)
    return answer


def _hop_element(parent: Element, hop: TLSHop) -> None:
    tls = SubElement(parent, q(SECURITY_NS, "tls"), {
        "layer": hop.layer.value, "ends": hop.ends.value,
        "version": hop.version, "cipher": hop.cipher, "bits": str(hop.bits)})
    if hop.certificate is not None:
        SubElement(tls, q(SECURITY_NS, "certificate"), _certificate_facts(hop.certificate))


def _certificate_facts(cert) -> dict[str, str]:
    not_after = cert.not_valid_after_utc.astimezone(timezone.utc)
    return {"subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "not-after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ")}


class SecurityInfo:
    """Answers the security query for the session that asks."""

    def __init__(self, server_certificate: Callable[[], object | None] = lambda: None) -> None:
        self.server_certificate = server_certificate

    @staticmethod
    def handles(payload: Element) -> bool:
        return payload.tag == SECURITY_QUERY

    def answer(self, session, kind: IqType, payload: Element) -> Element:
        """The result's payload; raises ``StanzaError`` for a malformed query."""
        if kind is not IqType.GET:
            raise StanzaError(Cond.BAD_REQUEST, "the security query is a get")
        if len(payload) or (payload.text or "").strip():
            raise StanzaError(Cond.BAD_REQUEST, "the security query has no content")
        hops = hops_of(session, self.server_certificate)
        return describe(hops, undescribed=undescribed(session, hops))
