"""The receiving entity's side of a client stream (RFC 6120 §4-§7), sans-I/O.

Negotiation order, each step announced in ``<stream:features/>``:

1. STARTTLS (§5), when a certificate is configured; *required* under
   ``requiressl``, and then the features offer nothing else, and anything but
   ``<starttls/>`` is a ``<policy-violation/>`` stream error, unprocessed.
   A session that arrived over legacy SSL at the multiplexor is protected as
   far as the multiplexor only (that hop to us is plaintext): STARTTLS is
   still offered, and clients do use it inside legacy SSL; ``requiressl``
   still requires it, which is why the server warns when ``requiressl`` and
   ``iim_mux.usessl`` are both on (legacy-SSL clients seldom ask).
2. SASL (§6): SCRAM-SHA-256, SCRAM-SHA-1, and PLAIN only under TLS. A failed
   attempt may be retried (§6.4.5), within ``max_auth_attempts`` attempts
   that did not succeed: every ``<failure/>`` we send counts (a wrong
   password, an ``<abort/>``, a malformed or stray ``<response/>``), and so
   does an exchange abandoned by a new ``<auth/>``. The one that reaches the
   limit ends the stream with ``<policy-violation/>``, after its
   ``<failure/>``: no unauthenticated peer can loop forever (issue 11). A
   failure on credentials is also reported as ``AuthenticationFailed``, so
   that the adapter can count it and delay the answer (item 7).
3. Resource binding (§7), plus the legacy RFC 3921 session IQ, answered with
   an empty result so that older clients carry on. XEP-0198 Stream
   Management is offered beside binding: ``<resume/>`` takes the place of
   binding (the adapter finds the session: ``ResumeRequested``), and
   ``<enable/>`` follows it (``iim.xmpp.sm`` holds the counters and says
   what is refused with ``<failed/>``).

Every features element also carries the XEP-0478 stream limits. Stanzas from
the client get ``from`` stamped with the session's full JID (§8.1.2.1); a
stanza that claims another ``from`` ends the stream with ``<invalid-from/>``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable
from xml.etree.ElementTree import Element, SubElement

from . import sasl, sm
from .errors import (
    LocalProtocolError, StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition,
)
from .events import (
    Authenticated, AuthenticationFailed, Event, ResumeRequested, SessionEstablished,
    StanzaReceived, StreamManaged,
)
from .jid import JID, InvalidJID, prepare_domainpart, prepare_resourcepart
from .ns import BIND_NS, CLIENT_NS, LIMITS_NS, SASL_NS, SESSION_NS, STREAMS_NS, TLS_NS, q
from .stream import COMMON_TRANSITIONS, Phase, Stream, Transitions
from .xml import DEFAULT_MAX_STANZA_BYTES, DEFAULT_MAX_XMLNS, StreamOpened, stream_header

Cond = StreamErrorCondition
_XML_SPACE = " \t\r\n"    # XML's white space: U+2028 and the like are not trimmed but refused
STANZAS = {q(CLIENT_NS, "message"), q(CLIENT_NS, "presence"), q(CLIENT_NS, "iq")}


@dataclass(frozen=True)
class ServerPolicy:
    """What the server offers on a client stream (from iim.conf)."""

    domain: str
    tls_offered: bool = False
    """A keystore is configured: STARTTLS is advertised."""
    tls_required: bool = False
    """``iim_server.requiressl``: STARTTLS before anything else."""
    max_stanza_bytes: int = DEFAULT_MAX_STANZA_BYTES
    max_auth_attempts: int = 3
    """SASL attempts that did not succeed before the stream ends (see above)."""
    max_xmlns_per_stanza: int = DEFAULT_MAX_XMLNS
    """Namespace declarations in one stanza, and on the stream header."""
    idle_seconds: int | None = None
    """Advertised in XEP-0478 limits when set."""
    sm_resume_seconds: int = 0
    """``iim_server.sm_resume_timeout``: how long a XEP-0198 session may be
    resumed after its connection is lost; 0: acks only, no resumption."""

    def __post_init__(self) -> None:
        if self.tls_required and not self.tls_offered:
            raise ValueError("TLS required but not offered: configure iim_server.sslkeystore")


Authenticator = Callable[[bool], sasl.ServerAuth]
BindCheck = Callable[[JID], StanzaErrorCondition | None]
"""Asked before a resource is bound: None to bind it, else the bind's error
(``<resource-constraint/>`` when the account has its most sessions)."""


P = Phase
SERVER_TRANSITIONS: Transitions = {
    **COMMON_TRANSITIONS,
    (P.OPENING, P.NEGOTIATING): "the client's header: features offer STARTTLS, SASL (§4.3.2)",
    (P.OPENING, P.BINDING): "the header after SASL success: features offer binding (§6.4.6)",
    (P.NEGOTIATING, P.AUTHENTICATING): "<auth/> answered with a <challenge/> (§6.4.2)",
    (P.AUTHENTICATING, P.AUTHENTICATING): "a <response/> answered with another <challenge/>",
    (P.AUTHENTICATING, P.NEGOTIATING): "<failure/>: the client may try again (§6.4.5)",
    (P.NEGOTIATING, P.NEGOTIATING): "<failure/> at once (an unknown mechanism, a stray "
                                    "<response/>): the client may try again",
    (P.NEGOTIATING, P.OPENING): "<success/> at once (PLAIN): a new stream (§6.4.6)",
    (P.AUTHENTICATING, P.OPENING): "<success/> after the exchange: a new stream (§6.4.6)",
    (P.BINDING, P.ESTABLISHED): "the bind result with the full JID (§7.6.1), or "
                                "<resumed/> in its place (XEP-0198 §5)",
}
"""The receiving entity of a client stream: TLS, then SASL, then binding."""


class ServerStream(Stream):
    """One client's stream as the server sees it."""

    transitions = SERVER_TRANSITIONS

    def __init__(self, policy: ServerPolicy, authenticator: Authenticator, *,
                 secure_transport: bool = False, bind_check: BindCheck | None = None) -> None:
        super().__init__(max_stanza_bytes=policy.max_stanza_bytes,
                         max_xmlns=policy.max_xmlns_per_stanza)
        self.policy = policy
        self.domain = prepare_domainpart(policy.domain)
        self._authenticator = authenticator
        self._auth: sasl.ServerAuth | None = None
        self._attempts = 0          # SASL exchanges that did not succeed
        self._mechanism = ""
        self.transport_secure = secure_transport   # legacy SSL ended at the multiplexor
        self._bind_check = bind_check
        self.username: str | None = None
        self.jid: JID | None = None
        self.stream_id = ""
        self.sm: sm.Management | None = None     # XEP-0198, once enabled or resumed

    # -- header and features ------------------------------------------------------

    def _on_header(self, header: StreamOpened) -> list[Event]:
        self._send_header(to=header.from_)
        if header.ns != CLIENT_NS:
            raise StreamError(Cond.INVALID_NAMESPACE, "this port takes jabber:client streams")
        if not _is_version_1(header.version):
            raise StreamError(Cond.UNSUPPORTED_VERSION, "XMPP 1.0 streams only")
        if header.to is not None and not self._is_us(header.to):
            raise StreamError(Cond.HOST_UNKNOWN)
        self._send(self._features())
        self._enter(Phase.BINDING if self.username else Phase.NEGOTIATING)
        return []

    def _ensure_header(self) -> None:
        if not self._header_sent:
            self._send_header(to=None)

    def _send_header(self, to) -> None:
        self.stream_id = secrets.token_urlsafe(12)
        self._out += stream_header(from_=self.domain, to=_safe_to(to), id=self.stream_id,
                                   lang="en")
        self._header_sent = True

    def _is_us(self, to: str) -> bool:
        try:
            return prepare_domainpart(to) == self.domain
        except InvalidJID:
            return False

    def _features(self) -> Element:
        features = Element(q(STREAMS_NS, "features"))
        if self.username:
            SubElement(features, q(BIND_NS, "bind"))
            SubElement(SubElement(features, q(SESSION_NS, "session")), q(SESSION_NS, "optional"))
            features.append(sm.feature())
        else:
            self._offer_security(features)
        limits = SubElement(features, q(LIMITS_NS, "limits"))
        SubElement(limits, q(LIMITS_NS, "max-bytes")).text = str(self.policy.max_stanza_bytes)
        if self.policy.idle_seconds:
            SubElement(limits, q(LIMITS_NS, "idle-seconds")).text = str(self.policy.idle_seconds)
        return features

    def _offer_security(self, features: Element) -> None:
        if self.policy.tls_offered and not self.secure:
            starttls = SubElement(features, q(TLS_NS, "starttls"))
            if self.policy.tls_required:
                SubElement(starttls, q(TLS_NS, "required"))
                return                      # nothing else until TLS (RFC 6120 §5.3.1)
        mechanisms = SubElement(features, q(SASL_NS, "mechanisms"))
        for mechanism in sasl.offered_mechanisms(self._protected):
            SubElement(mechanisms, q(SASL_NS, "mechanism")).text = mechanism.value

    @property
    def _protected(self) -> bool:
        """TLS protects the client's bytes: ours (STARTTLS) or the
        multiplexor's (legacy SSL). PLAIN needs one of them."""
        return self.secure or self.transport_secure

    def _after_tls(self) -> None:
        self._enter(Phase.OPENING)

    # -- elements -----------------------------------------------------------------

    def _on_element(self, element: Element) -> list[Event]:
        if self.phase in (Phase.NEGOTIATING, Phase.AUTHENTICATING):
            return self._negotiate(element)
        if self.phase is Phase.BINDING:
            return self._bind_phase(element)
        return self._established(element)

    def _negotiate(self, element: Element) -> list[Event]:
        if element.tag == q(TLS_NS, "starttls"):
            return self._starttls()
        if self.policy.tls_required and not self.secure:
            raise StreamError(Cond.POLICY_VIOLATION, "STARTTLS is required first")
        handler = {q(SASL_NS, "auth"): self._sasl_auth,
                   q(SASL_NS, "response"): self._sasl_response,
                   q(SASL_NS, "abort"): self._sasl_abort}.get(element.tag)
        if handler is None:
            raise StreamError(Cond.NOT_AUTHORIZED, "authenticate first")
        return handler(element)

    def _starttls(self) -> list[Event]:
        return self._answer_starttls(self.policy.tls_offered and not self.secure
                                     and self.phase is Phase.NEGOTIATING)

    # -- SASL (RFC 6120 §6.4) ----------------------------------------------------

    def _sasl_auth(self, element: Element) -> list[Event]:
        if self.phase is Phase.AUTHENTICATING:         # an exchange abandoned for a new one
            self._count_attempt()
        self._auth = self._authenticator(self._protected)
        self._mechanism = element.get("mechanism", "")
        try:
            initial = sasl.decode_payload(element.text or "")
        except ValueError:
            return self._sasl_step(sasl.Failure(sasl.SASLFailure.INCORRECT_ENCODING))
        return self._sasl_step(self._auth.start(element.get("mechanism", ""), initial))

    def _sasl_response(self, element: Element) -> list[Event]:
        if self._auth is None or self.phase is not Phase.AUTHENTICATING:
            return self._sasl_step(sasl.Failure(sasl.SASLFailure.MALFORMED_REQUEST))
        try:
            data = sasl.decode_payload(element.text or "") or b""
        except ValueError:
            return self._sasl_step(sasl.Failure(sasl.SASLFailure.INCORRECT_ENCODING))
        return self._sasl_step(self._auth.respond(data))

    def _sasl_abort(self, element: Element) -> list[Event]:
        if self._auth is None:
            return self._sasl_step(sasl.Failure(sasl.SASLFailure.ABORTED))
        return self._sasl_step(self._auth.abort())

    def _sasl_step(self, step) -> list[Event]:
        if isinstance(step, sasl.Challenge):
            self._enter(Phase.AUTHENTICATING)
            self._sasl_element("challenge", step.data)
            return []
        if isinstance(step, sasl.Success):
            self._sasl_element("success", step.additional_data)
            self.username = step.username
            self._auth = None               # the exchange's state, for the session's life
            self._restart()
            self._enter(Phase.OPENING)
            return [Authenticated(step.username, self._mechanism)]
        return self._sasl_failure(step)

    def _sasl_failure(self, failure: sasl.Failure) -> list[Event]:
        self._enter(Phase.NEGOTIATING)
        self._auth = None
        element = Element(q(SASL_NS, "failure"))
        SubElement(element, q(SASL_NS, failure.condition.value))
        if failure.text:
            SubElement(element, q(SASL_NS, "text")).text = failure.text
        self._send(element)
        events: list[Event] = []
        if failure.condition in _CREDENTIAL_FAILURES:
            events.append(AuthenticationFailed(failure.username, failure.condition.value))
        try:
            self._count_attempt()
        except StreamError as exc:
            return events + self._fail(exc)
        return events

    def _count_attempt(self) -> None:
        self._attempts += 1
        if self._attempts >= self.policy.max_auth_attempts:
            raise StreamError(Cond.POLICY_VIOLATION,
                              "too many authentication attempts on one connection "
                              f"(limit {self.policy.max_auth_attempts})")

    def _sasl_element(self, name: str, data: bytes | None) -> None:
        element = Element(q(SASL_NS, name))
        element.text = sasl.encode_payload(data) if data is not None else None
        self._send(element)

    # -- binding (RFC 6120 §7) ----------------------------------------------------

    def _bind_phase(self, element: Element) -> list[Event]:
        if element.tag == sm.tag("enable"):
            return self._refuse(sm.Refusal.NOT_BOUND)
        if element.tag == sm.tag("resume"):
            return self._resume_requested(element)
        if element.tag != q(CLIENT_NS, "iq"):
            raise StreamError(Cond.NOT_AUTHORIZED, "bind a resource first")
        if element.find(q(SESSION_NS, "session")) is not None:
            self._iq_result(element)
            return []
        bind = element.find(q(BIND_NS, "bind"))
        if bind is None or element.get("type") != "set":
            self._iq_error(element, StanzaErrorCondition.NOT_AUTHORIZED)
            return []
        return self._bind(element, bind)

    def _bind(self, iq: Element, bind: Element) -> list[Event]:
        wanted = (bind.findtext(q(BIND_NS, "resource")) or "").strip(_XML_SPACE)
        try:
            resource = prepare_resourcepart(wanted) if wanted else _new_resource()
        except InvalidJID:                          # §7.7.2.1: not a valid resourcepart
            self._iq_error(iq, StanzaErrorCondition.BAD_REQUEST)
            return []
        jid = JID(self.username, self.domain, resource)
        refusal = self._bind_check(jid) if self._bind_check is not None else None
        if refusal is not None:                     # §7.6.2.1: resource-constraint
            self._iq_error(iq, refusal)
            return []
        self.jid = jid
        result = self._iq_result(iq, send=False)
        SubElement(SubElement(result, q(BIND_NS, "bind")), q(BIND_NS, "jid")).text = str(self.jid)
        self._send(result)
        self._enter(Phase.ESTABLISHED)
        return [SessionEstablished(self.jid)]

    # -- established ------------------------------------------------------------

    def _established(self, element: Element) -> list[Event]:
        if element.tag not in STANZAS:
            return self._managing(element)
        if self.sm is not None:
            self.sm.received()
        if element.find(q(SESSION_NS, "session")) is not None and element.tag.endswith("}iq"):
            self._iq_result(element)
            return []
        self._stamp_from(element)
        return [StanzaReceived(element)]

    def _stamp_from(self, stanza: Element) -> None:
        claimed = stanza.get("from")
        if claimed is not None and claimed not in (str(self.jid), str(self.jid.bare)):
            try:
                ok = JID.parse(claimed) in (self.jid, self.jid.bare)
            except InvalidJID:
                ok = False
            if not ok:
                raise StreamError(Cond.INVALID_FROM)
        stanza.set("from", str(self.jid))

    def send_stanza(self, stanza: Element, size: int = 0) -> None:
        """Queue a stanza for the client; under XEP-0198 it waits, ``size``
        bytes held, until acknowledged, and every ``sm.ACK_REQUEST_AT``
        unacknowledged stanzas an ``<r/>`` follows it."""
        super().send_stanza(stanza)
        if self.sm is not None and self.sm.sent_stanza(stanza, size):
            self._send(sm.request())

    # -- XEP-0198 stream management ----------------------------------------------

    def _managing(self, element: Element) -> list[Event]:
        handler = {sm.tag("enable"): self._enable, sm.tag("r"): self._ack_requested,
                   sm.tag("a"): self._acked,
                   sm.tag("resume"): lambda e: self._refuse(sm.Refusal.RESUME_TOO_LATE),
                   }.get(element.tag)
        if handler is None:
            raise StreamError(Cond.UNSUPPORTED_STANZA_TYPE)
        return handler(element)

    def _enable(self, element: Element) -> list[Event]:
        if self.sm is not None:
            return self._refuse(sm.Refusal.ALREADY_ENABLED)
        seconds = sm.wanted_seconds(element, self.policy.sm_resume_seconds)
        resumable = sm.wants_resumption(element) and seconds > 0
        self.sm = sm.Management(sm.new_id() if resumable else None, seconds if resumable else 0)
        self._send(sm.enabled(self.sm))
        return [StreamManaged(self.sm.resumption_id, self.sm.max_seconds)]

    def _ack_requested(self, element: Element) -> list[Event]:
        if self.sm is None:
            raise StreamError(Cond.UNSUPPORTED_STANZA_TYPE, "stream management is not enabled")
        self._send(sm.ack(self.sm))
        return []

    def _acked(self, element: Element) -> list[Event]:
        if self.sm is None:
            raise StreamError(Cond.UNSUPPORTED_STANZA_TYPE, "stream management is not enabled")
        h = sm.parse_h(element.get("h"))
        if h is None:
            raise StreamError(Cond.BAD_FORMAT, "<a/> needs an 'h' between 0 and 2^32 - 1")
        self.sm.acknowledge(h)                      # sm.TooHigh ends the stream
        return []

    def _refuse(self, refusal: sm.Refusal) -> list[Event]:
        self._send(sm.failed(refusal))
        return []

    def _resume_requested(self, element: Element) -> list[Event]:
        h, previd = sm.parse_h(element.get("h")), element.get("previd")
        if h is None or not previd:
            return self._refuse(sm.Refusal.BAD_REQUEST)
        return [ResumeRequested(previd, h)]

    def resume(self, management: sm.Management, jid: JID) -> None:
        """The adapter's answer to ``ResumeRequested`` when it holds the session
        (``management`` acknowledged the client's ``h`` already: see
        ``sm.Management.acknowledge``): ``<resumed/>``, and the stream goes on
        as ``jid`` with the old counters. The adapter then sends again what
        ``management.rewind()`` gives back."""
        if self.phase is not Phase.BINDING or self.username != jid.local:
            raise LocalProtocolError(f"resume() while {self.phase.value}, or another user")
        self.jid, self.sm = jid, management
        self._send(sm.resumed(management))
        self._enter(Phase.ESTABLISHED)

    def refuse_resumption(self) -> None:
        """The adapter's answer to ``ResumeRequested`` when it holds no such
        session for this user (unknown, expired, another account's): the
        client may bind a resource instead."""
        self._refuse(sm.Refusal.NOT_RESUMABLE)

    # -- IQ replies ---------------------------------------------------------------

    def _iq_result(self, iq: Element, *, send: bool = True) -> Element:
        result = Element(q(CLIENT_NS, "iq"), {"type": "result"})
        if iq.get("id") is not None:
            result.set("id", iq.get("id"))
        if send:
            self._send(result)
        return result

    def _iq_error(self, iq: Element, condition: StanzaErrorCondition) -> None:
        reply = self._iq_result(iq, send=False)
        reply.set("type", "error")
        reply.append(StanzaError(condition).to_element(CLIENT_NS))
        self._send(reply)


# Failures that judged (or refused to judge) credentials: the throttle's business.
_CREDENTIAL_FAILURES = (sasl.SASLFailure.NOT_AUTHORIZED, sasl.SASLFailure.TEMPORARY_AUTH_FAILURE)


def _is_version_1(version: str | None) -> bool:
    major = (version or "0.0").split(".")[0]
    return major.isdigit() and int(major) >= 1


def _safe_to(value: str | None) -> str | None:
    """Echo the peer's ``from`` only when it is a valid JID."""
    if value is None:
        return None
    try:
        return str(JID.parse(value))
    except InvalidJID:
        return None


def _new_resource() -> str:
    return "iim-" + secrets.token_hex(6)
