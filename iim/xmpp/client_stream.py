"""The initiating entity's side of a client stream, sans-I/O.

The client role serves the tests, the benchmarks and ``iim.admin verify``:
it negotiates exactly as RFC 6120 asks a client to (STARTTLS, then SASL with
the strongest mechanism both sides have, then resource binding) and refuses
to go on in the clear when ``tls`` is ``TLSMode.REQUIRED`` (the default).
"""

from __future__ import annotations

import enum
import secrets
from xml.etree.ElementTree import Element, SubElement

from . import sasl
from .errors import RemoteProtocolError, StreamError, StreamErrorCondition
from .events import Authenticated, Event, SessionEstablished, StanzaReceived
from .jid import JID, InvalidJID
from .ns import BIND_NS, CLIENT_NS, SASL_NS, STREAMS_NS, TLS_NS, q
from .stream import COMMON_TRANSITIONS, Phase, Stream, Transitions
from .xml import StreamOpened, stream_header

Cond = StreamErrorCondition


class TLSMode(enum.Enum):
    REQUIRED = "required"      # no STARTTLS offered: give up
    OPTIONAL = "optional"      # STARTTLS when offered
    NEVER = "never"            # never ask (tests of servers that require it)


P = Phase
CLIENT_TRANSITIONS: Transitions = {
    **COMMON_TRANSITIONS,
    (P.OPENING, P.NEGOTIATING): "the server's header; its features follow (RFC 6120 §4.3.2)",
    (P.NEGOTIATING, P.AUTHENTICATING): "we sent <auth/> (§6.4.2)",
    (P.AUTHENTICATING, P.OPENING): "<success/>: a new stream, our header first (§6.4.6)",
    (P.NEGOTIATING, P.BINDING): "features after SASL: we ask to bind a resource (§7.2)",
    (P.BINDING, P.ESTABLISHED): "the bind result with our full JID (§7.6.1)",
}
"""The initiating entity of a client stream: TLS, then SASL, then binding."""


class ClientStream(Stream):
    """A user's stream to the server, as a client library would run it."""

    transitions = CLIENT_TRANSITIONS

    def __init__(self, jid: JID, password: str, *, tls: TLSMode = TLSMode.REQUIRED,
                 mechanisms=tuple(sasl.Mechanism), secure_transport: bool = False,
                 max_stanza_bytes: int | None = None) -> None:
        super().__init__(**({"max_stanza_bytes": max_stanza_bytes} if max_stanza_bytes else {}))
        self.jid = jid
        self._password = password
        self.tls_mode = tls
        self.secure = secure_transport
        self._preferences = tuple(mechanisms)
        self._auth: sasl.ClientAuth | None = None
        self.authenticated = False
        self.mechanism: sasl.Mechanism | None = None

    def start(self) -> None:
        """Queue our stream header."""
        self._out += stream_header(to=self.jid.domain, from_=str(self.jid.bare), lang="en")
        self._header_sent = True

    def _after_tls(self) -> None:
        self._enter(Phase.OPENING)
        self.start()

    def _ensure_header(self) -> None:
        if not self._header_sent:
            self.start()

    def _on_header(self, header: StreamOpened) -> list[Event]:
        if header.ns != CLIENT_NS:
            raise StreamError(Cond.INVALID_NAMESPACE)
        self._enter(Phase.NEGOTIATING)
        return []

    def _on_element(self, element: Element) -> list[Event]:
        handler = {
            q(STREAMS_NS, "features"): self._on_features,
            q(TLS_NS, "proceed"): self._on_proceed,
            q(TLS_NS, "failure"): lambda e: self._give_up(
                StreamError(Cond.POLICY_VIOLATION, "the server refused STARTTLS")),
            q(SASL_NS, "challenge"): self._on_challenge,
            q(SASL_NS, "success"): self._on_success,
            q(SASL_NS, "failure"): self._on_sasl_failure,
        }.get(element.tag)
        if handler is not None:
            return handler(element)
        if self.phase is Phase.BINDING and element.tag == q(CLIENT_NS, "iq"):
            return self._on_bind_result(element)
        if self.phase is Phase.ESTABLISHED:
            return [StanzaReceived(element)]
        raise StreamError(Cond.UNSUPPORTED_STANZA_TYPE)

    # -- features ---------------------------------------------------------------

    def _on_features(self, features: Element) -> list[Event]:
        if self.phase is not Phase.NEGOTIATING:          # one features element per stream
            raise RemoteProtocolError(Cond.UNSUPPORTED_STANZA_TYPE,
                                      f"<stream:features/> while {self.phase.value}")
        starttls = features.find(q(TLS_NS, "starttls"))
        if not self.secure and starttls is not None and self.tls_mode is not TLSMode.NEVER:
            self._out += f"<starttls xmlns='{TLS_NS}'/>".encode()
            return []
        if not self.secure and self.tls_mode is TLSMode.REQUIRED:
            return self._give_up(StreamError(Cond.POLICY_VIOLATION,
                                             "the server offers no STARTTLS"))
        if self.authenticated:
            return self._request_bind(features)
        return self._authenticate(features)

    # -- SASL ---------------------------------------------------------------------

    def _authenticate(self, features: Element) -> list[Event]:
        offered = {m.text for m in features.iter(q(SASL_NS, "mechanism"))}
        usable = [m for m in self._preferences if m.value in offered
                  and (m is not sasl.Mechanism.PLAIN or self.secure)]
        if not usable:
            return self._give_up(StreamError(Cond.POLICY_VIOLATION,
                                             "no SASL mechanism in common"))
        self.mechanism = usable[0]
        self._auth = sasl.ClientAuth(self.jid.local, self._password, self.mechanism)
        auth = Element(q(SASL_NS, "auth"), {"mechanism": self.mechanism.value})
        auth.text = sasl.encode_payload(self._auth.start())
        self._send(auth)
        self._enter(Phase.AUTHENTICATING)
        return []

    def _on_challenge(self, element: Element) -> list[Event]:
        try:
            data = sasl.decode_payload(element.text or "") or b""
            answer = self._auth.respond(data)
        except (ValueError, sasl.ClientAuthError) as exc:
            return self._give_up(StreamError(Cond.NOT_AUTHORIZED, f"SASL: {exc}"))
        response = Element(q(SASL_NS, "response"))
        response.text = sasl.encode_payload(answer)
        self._send(response)
        return []

    def _on_success(self, element: Element) -> list[Event]:
        self._peer_may(Phase.OPENING, "<success/>")
        try:
            self._auth.verify_success(sasl.decode_payload(element.text or "") or b"")
        except (ValueError, sasl.ClientAuthError) as exc:
            return self._give_up(StreamError(Cond.NOT_AUTHORIZED, f"SASL: {exc}"))
        self.authenticated = True
        self._restart()
        self._enter(Phase.OPENING)
        self.start()
        return [Authenticated(self.jid.local, self.mechanism.value)]

    def _on_sasl_failure(self, element: Element) -> list[Event]:
        condition = next((child.tag.split("}")[1] for child in element
                          if child.tag != q(SASL_NS, "text")), "not-authorized")
        return self._give_up(StreamError(Cond.NOT_AUTHORIZED, f"SASL failure: {condition}"))

    # -- binding ------------------------------------------------------------------

    def _request_bind(self, features: Element) -> list[Event]:
        if features.find(q(BIND_NS, "bind")) is None:
            return self._give_up(StreamError(Cond.UNSUPPORTED_FEATURE, "no resource binding"))
        iq = Element(q(CLIENT_NS, "iq"), {"type": "set", "id": "bind-" + secrets.token_hex(4)})
        bind = SubElement(iq, q(BIND_NS, "bind"))
        if self.jid.resource:
            SubElement(bind, q(BIND_NS, "resource")).text = self.jid.resource
        self._send(iq)
        self._enter(Phase.BINDING)
        return []

    def _on_bind_result(self, iq: Element) -> list[Event]:
        text = iq.findtext(f"{q(BIND_NS, 'bind')}/{q(BIND_NS, 'jid')}")
        try:
            bound = JID.parse(text or "")
        except InvalidJID:
            return self._give_up(StreamError(Cond.UNDEFINED_CONDITION,
                                             f"resource binding failed ({iq.get('type')})"))
        self.jid = bound
        self._enter(Phase.ESTABLISHED)
        return [SessionEstablished(bound)]
