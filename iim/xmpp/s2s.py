"""Server-to-server streams (RFC 6120 §4-§6, XEP-0178, XEP-0220), sans-I/O.

Theory of operation
-------------------
s2s streams are one-way: the *initiating* server opens a stream to the
*receiving* server and sends stanzas on it; stanzas the other way travel on a
stream the other server opens. ``OutgoingServerStream`` is the initiating end,
``IncomingServerStream`` the receiving end. Both speak ``jabber:server`` and
declare the ``db:`` prefix for dialback on their headers.

Negotiation, strongest first (docs/architecture.md, "TLS policy"):

1. STARTTLS (RFC 6120 §5). The receiving server offers it whenever it has a
   certificate, *required* when ``requiressl`` covers the peer (globally or
   per coserver): then the features hold nothing else, and anything but
   ``<starttls/>`` is a ``<policy-violation/>`` stream error, unprocessed. The
   peer named in the header's ``from`` decides the per-coserver rule; a peer
   that leaves ``from`` out and later authenticates as a domain that requires
   TLS is refused at that point, so leaving it out buys nothing.
2. SASL EXTERNAL (XEP-0178 §3), offered after TLS only when the certificate
   the initiating server presented is trusted for the domain it claims (the
   adapter judges the certificate with ``iim.keys.trust`` and tells the
   stream through ``certificate_ok``). Success restarts the stream.
3. Server dialback (XEP-0220) otherwise: ``<db:result/>`` carries a key the
   initiating server derived from its secret (``iim.xmpp.dialback``); the
   receiving server cannot check it and asks the *authoritative* server of
   the claimed domain over its own outgoing stream (``<db:verify/>``): the
   stream emits ``DialbackVerifyNeeded`` and waits for ``dialback_verified``.
   Either stream answers ``<db:verify/>`` requests for keys this server made.

   What dialback lets an *unauthenticated* peer make us hold: answering a
   ``<db:verify/>`` holds nothing (the key is recomputed from the request
   and the secret; the answer is written at once, and the adapter stops
   reading from a peer that does not read its answers). A ``<db:result/>``
   holds one pending verification until the authoritative server answers:
   at most ``max_pending_verifies`` per stream, one more is answered at once
   with a ``<resource-constraint/>`` dialback error (type wait; XEP-0220
   §2.4 takes any stanza error condition) and reported as
   ``DialbackRefused``. The total over all streams, and the outgoing
   connections verifications cause, are bounded by the adapter
   (``iim.server.federation``).
4. Coservers (iim.conf ``iim_server.coserverN``) additionally prove the
   mirrored serverid/password pair once authenticated (``<proof/>`` in
   ``urn:xmpp:iim:coserver:0``; see ``iim.xmpp.dialback``), and the receiving
   server proves its own pair back. Until then a coserver's stanzas are
   refused with ``<not-authorized/>``.

Stanzas on an incoming stream must come ``from`` a domain authenticated on
that stream (else ``<invalid-from/>``, RFC 6120 §4.9.3.9) and go ``to`` this
server's domain (else ``<host-unknown/>``); they are handed on in the
``jabber:client`` namespace the router works in, and written back in
``jabber:server`` on the way out.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable, Mapping
from xml.etree.ElementTree import Element, SubElement

from . import dialback as db
from .errors import StanzaErrorCondition, StreamError, StreamErrorCondition
from .events import Event, StanzaReceived
from .jid import JID, InvalidJID, prepare_domainpart
from .ns import CLIENT_NS, SASL_NS, SERVER_NS, STREAMS_NS, TLS_NS, q
from .sasl import decode_payload, encode_payload
from .stream import COMMON_TRANSITIONS, Phase, Stream, Transitions
from .xml import DEFAULT_MAX_STANZA_BYTES, StreamOpened, stream_header

Cond = StreamErrorCondition
SERVER_STANZAS = {q(SERVER_NS, "message"), q(SERVER_NS, "presence"), q(SERVER_NS, "iq")}
EXTERNAL = "EXTERNAL"


# -- configuration and events ----------------------------------------------------------


@dataclass(frozen=True)
class CoserverPair:
    """A serverid/password pair (mirrored between coservers: docs/architecture.md)."""

    serverid: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class S2SPolicy:
    """What this server asks of its peers (from iim.conf)."""

    domain: str
    tls_offered: bool = False
    """A keystore is configured: STARTTLS is offered (and used when offered)."""
    tls_required: bool = False
    """``iim_server.requiressl``."""
    tls_required_domains: frozenset = frozenset()
    """Coserver domains whose ``requiressl`` is true."""
    dialback_secret: bytes = field(default=b"", repr=False)
    own_pair: CoserverPair | None = None
    """``iim_server.serverid``/``password``: what we prove to coservers."""
    coserver_pairs: Mapping[str, CoserverPair] = field(default_factory=dict)
    """Coserver domain -> the pair that coserver must prove."""
    max_stanza_bytes: int = DEFAULT_MAX_STANZA_BYTES
    max_pending_verifies: int = 8
    """``iim_server.max_pending_verifies``: dialback verifications one incoming
    stream may have waiting; one more is answered with <resource-constraint/>."""
    max_auth_attempts: int = 3
    """``iim_server.max_auth_attempts``: failed or aborted SASL exchanges on one
    incoming stream before it ends with <policy-violation/>."""

    def requires_tls(self, domain: str | None) -> bool:
        return self.tls_required or (domain is not None and domain in self.tls_required_domains)


@dataclass(frozen=True)
class PeerAuthenticated:
    """``domain`` is authenticated on this stream by ``method``."""

    domain: str
    method: str


@dataclass(frozen=True)
class CoserverVerified:
    """``domain`` proved the coserver pair ``serverid``."""

    domain: str
    serverid: str


@dataclass(frozen=True)
class DialbackVerifyNeeded:
    """Ask ``originating``'s authoritative server about ``key`` (XEP-0220 §2.1.2),
    then call ``dialback_verified(originating, valid)`` on this stream."""

    originating: str
    key: str
    stream_id: str


@dataclass(frozen=True)
class DialbackRefused:
    """A ``<db:result/>`` for ``originating`` was answered with a dialback error
    at once because the limit ``limit`` (an ``iim_server.*`` parameter name
    without its prefix) was reached: nothing was asked of anyone."""

    originating: str
    limit: str


@dataclass(frozen=True)
class DialbackVerifyAnswered:
    """The authoritative server ``originating`` answered our ``<db:verify/>``
    for the incoming stream ``stream_id``: ``valid`` is None when it answered
    with a dialback error (XEP-0220 §2.4) rather than valid or invalid."""

    originating: str
    stream_id: str
    valid: bool | None


@dataclass(frozen=True)
class ReadyForDialback:
    """The outgoing stream may now carry ``<db:verify/>`` requests."""


# -- namespace moves --------------------------------------------------------------------


def to_namespace(element: Element, old: str, new: str) -> Element:
    """A copy of ``element`` with every tag in ``old`` moved to ``new``
    (``jabber:client`` inside the server, ``jabber:server`` on s2s streams)."""
    prefix_old, prefix_new = "{%s}" % old, "{%s}" % new
    tag = element.tag
    moved = Element(prefix_new + tag[len(prefix_old):] if tag.startswith(prefix_old) else tag,
                    dict(element.attrib))
    moved.text, moved.tail = element.text, element.tail
    for child in element:
        moved.append(to_namespace(child, old, new))
    return moved


def _domain(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return prepare_domainpart(text)
    except InvalidJID:
        return None


def _is_version_1(version: str | None) -> bool:
    major = (version or "0.0").split(".")[0]
    return major.isdigit() and int(major) >= 1


class _ServerStreamBase(Stream):
    ns = SERVER_NS

    def __init__(self, policy: S2SPolicy) -> None:
        super().__init__(max_stanza_bytes=policy.max_stanza_bytes)
        self.policy = policy
        self.domain = prepare_domainpart(policy.domain)

    def _send(self, element: Element) -> None:
        from .xml import to_bytes
        self._out += to_bytes(element, ns=SERVER_NS, prefixes=db.DB_PREFIXES)

    def _header(self, to: str | None, stream_id: str | None) -> None:
        self._out += stream_header(from_=self.domain, to=to, id=stream_id, ns=SERVER_NS,
                                   prefixes=db.DB_PREFIXES, lang="en")
        self._header_sent = True

    def _answer_verify(self, request: Element) -> None:
        """We are the authoritative server: is this key one we made? (§2.1.2)"""
        receiving, originating = _domain(request.get("from")), _domain(request.get("to"))
        if receiving is None or originating != self.domain:
            self._send(db.answer(request, db.DialbackType.ERROR))
            return
        valid = db.key_is_valid(self.policy.dialback_secret, receiving, originating,
                                request.get("id") or "", request.text or "")
        self._send(db.answer(request, db.DialbackType.VALID if valid else
                             db.DialbackType.INVALID))


# -- the receiving end --------------------------------------------------------------------

P = Phase
INCOMING_TRANSITIONS: Transitions = {
    **COMMON_TRANSITIONS,
    (P.OPENING, P.NEGOTIATING): "the peer's header: features offer STARTTLS, EXTERNAL, "
                                "dialback (RFC 6120 §4.3.2)",
    (P.OPENING, P.ESTABLISHED): "the header after SASL EXTERNAL success (XEP-0178 §3)",
    (P.NEGOTIATING, P.OPENING): "SASL EXTERNAL <success/>: a new stream (RFC 6120 §6.4.6)",
    (P.NEGOTIATING, P.ESTABLISHED): "the authoritative server says the dialback key is "
                                    "valid (XEP-0220 §2.1.2)",
}
"""The receiving server: TLS, then SASL EXTERNAL or dialback; a coserver's
proof comes once established (its stanzas wait for it, see ``_stanza``)."""


class IncomingServerStream(_ServerStreamBase):
    """A stream another server opened to us."""

    transitions = INCOMING_TRANSITIONS

    def __init__(self, policy: S2SPolicy) -> None:
        super().__init__(policy)
        self.peer_from: str | None = None
        self.stream_id = ""
        self.authenticated: dict[str, str] = {}       # domain -> method
        self.proved: set[str] = set()                 # coserver domains that proved their pair
        self.certificate_ok: Callable[[str], bool] = lambda domain: False
        self._pending: dict[str, str] = {}            # originating domain -> stream id
        self._sasl_done = False
        self._sasl_failures = 0

    # -- header and features ---------------------------------------------------------

    def _on_header(self, header: StreamOpened) -> list[Event]:
        self.stream_id = secrets.token_urlsafe(12)
        self.peer_from = _domain(header.from_) or self.peer_from
        self._header(to=self.peer_from, stream_id=self.stream_id)
        if header.ns != SERVER_NS:
            raise StreamError(Cond.INVALID_NAMESPACE, "this stream takes jabber:server")
        if not _is_version_1(header.version):
            raise StreamError(Cond.UNSUPPORTED_VERSION, "XMPP 1.0 streams only")
        if _domain(header.to) != self.domain:
            raise StreamError(Cond.HOST_UNKNOWN, "this server does not serve that domain")
        self._send(self._features())
        self._enter(Phase.ESTABLISHED if self._sasl_done else Phase.NEGOTIATING)
        return []

    def _ensure_header(self) -> None:
        """Our response header for a stream the peer has not opened yet (the
        first, or the one after TLS or SASL): a new id, as for any stream."""
        if not self._header_sent:
            self.stream_id = secrets.token_urlsafe(12)
            self._header(to=self.peer_from, stream_id=self.stream_id)

    def _features(self) -> Element:
        features = Element(q(STREAMS_NS, "features"))
        if self._sasl_done:
            self._offer_coserver(features)
            return features
        if self.policy.tls_offered and not self.secure:
            starttls = SubElement(features, q(TLS_NS, "starttls"))
            if self.policy.requires_tls(self.peer_from):
                SubElement(starttls, q(TLS_NS, "required"))
                return features                 # nothing else before TLS (RFC 6120 §5.3.1)
        if self.secure and self.peer_from and self.certificate_ok(self.peer_from):
            mechanisms = SubElement(features, q(SASL_NS, "mechanisms"))
            SubElement(mechanisms, q(SASL_NS, "mechanism")).text = EXTERNAL
        SubElement(SubElement(features, q(db.DIALBACK_FEATURE_NS, "dialback")),
                   q(db.DIALBACK_FEATURE_NS, "errors"))
        return features

    def _offer_coserver(self, features: Element) -> None:
        if any(d in self.policy.coserver_pairs and d not in self.proved
               for d in self.authenticated):
            SubElement(SubElement(features, q(db.COSERVER_NS, "proof")),
                       q(db.COSERVER_NS, "required"))

    def _after_tls(self) -> None:
        self._enter(Phase.OPENING)

    # -- elements --------------------------------------------------------------------

    def _on_element(self, element: Element) -> list[Event]:
        tag = element.tag
        if tag == q(TLS_NS, "starttls"):
            return self._starttls()
        if self.policy.requires_tls(self.peer_from) and not self.secure:
            raise StreamError(Cond.POLICY_VIOLATION, "STARTTLS is required first")
        if tag == db.DB_VERIFY and element.get("type") is None:
            self._answer_verify(element)
            return []
        if tag == db.DB_RESULT and element.get("type") is None:
            return self._db_result(element)
        if tag == q(SASL_NS, "auth"):
            return self._external(element)
        if tag == q(db.COSERVER_NS, "proof"):
            return self._coserver_proof(element)
        if tag in SERVER_STANZAS:
            return self._stanza(element)
        if tag in (q(SASL_NS, "response"), q(SASL_NS, "abort")):
            return self._sasl_failure("aborted" if tag.endswith("abort") else "malformed-request")
        raise StreamError(Cond.UNSUPPORTED_STANZA_TYPE)

    def _starttls(self) -> list[Event]:
        allowed = self.policy.tls_offered and not self.secure and not self.authenticated \
            and self.phase is Phase.NEGOTIATING
        if allowed:
            # keys asked about on the old stream: their answers would land in the
            # middle of the TLS handshake; the peer sends them again on the new one
            self._pending.clear()
        return self._answer_starttls(allowed)

    # -- SASL EXTERNAL (XEP-0178 §3) ----------------------------------------------------

    def _external(self, element: Element) -> list[Event]:
        if self._sasl_done or self.phase is not Phase.NEGOTIATING:
            raise StreamError(Cond.POLICY_VIOLATION, "already authenticated with SASL")
        if element.get("mechanism") != EXTERNAL or not self.secure:
            return self._sasl_failure("invalid-mechanism")
        try:
            authzid = (decode_payload(element.text or "") or b"").decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return self._sasl_failure("incorrect-encoding")
        claimed = _domain(authzid) if authzid else self.peer_from
        if claimed is None or claimed == self.domain or \
                (authzid and self.peer_from and claimed != self.peer_from):
            return self._sasl_failure("invalid-authzid")
        if not self.certificate_ok(claimed):
            return self._sasl_failure("not-authorized")
        self._out += f"<success xmlns='{SASL_NS}'/>".encode()
        self._sasl_done = True
        self.authenticated[claimed] = "SASL EXTERNAL"
        self.peer_from = claimed
        self._restart()
        self._enter(Phase.OPENING)
        return [PeerAuthenticated(claimed, "SASL EXTERNAL")]

    def _sasl_failure(self, condition: str) -> list[Event]:
        self._out += (f"<failure xmlns='{SASL_NS}'><{condition}/></failure>").encode()
        self._sasl_failures += 1
        if self._sasl_failures >= self.policy.max_auth_attempts:
            raise StreamError(Cond.POLICY_VIOLATION, "too many failed authentication attempts")
        return []

    # -- dialback, receiving side (XEP-0220 §2.1) ----------------------------------------

    def _db_result(self, element: Element) -> list[Event]:
        originating, receiving = _domain(element.get("from")), _domain(element.get("to"))
        if receiving != self.domain:
            self._send(db.answer(element, db.DialbackType.ERROR))
            return []
        if originating is None or not (element.text or "").strip():
            self._send(db.answer(element, db.DialbackType.ERROR,
                                 StanzaErrorCondition.BAD_REQUEST))
            return []
        if originating == self.domain:          # we would ask ourselves: nobody else may be us
            self._send(db.answer(element, db.DialbackType.ERROR, StanzaErrorCondition.FORBIDDEN))
            return []
        if self.policy.requires_tls(originating) and not self.secure:
            raise StreamError(Cond.POLICY_VIOLATION, f"TLS is required for {originating}")
        if originating in self.authenticated:
            self._send(db.answer(element, db.DialbackType.VALID))
            return []
        if originating in self._pending:
            return []       # one verification per domain pair: its answer answers both
        if len(self._pending) >= self.policy.max_pending_verifies:
            self._send(db.answer(element, db.DialbackType.ERROR,
                                 StanzaErrorCondition.RESOURCE_CONSTRAINT))
            return [DialbackRefused(originating, "max_pending_verifies")]
        self._pending[originating] = self.stream_id
        return [DialbackVerifyNeeded(originating, element.text.strip(), self.stream_id)]

    def dialback_verified(self, originating: str, valid: bool | None,
                          condition=None) -> list[Event]:
        """The authoritative server answered (None: it could not be asked)."""
        if self.phase is Phase.CLOSED or self._pending.pop(originating, None) is None:
            return []
        request = Element(db.DB_RESULT, {"from": originating, "to": self.domain})
        if valid:
            self._send(db.answer(request, db.DialbackType.VALID))
            self.authenticated[originating] = "dialback"
            if self.phase is Phase.NEGOTIATING:     # else: established already, or restarting
                self._enter(Phase.ESTABLISHED)
            return [PeerAuthenticated(originating, "dialback")]
        if valid is None:
            self._send(db.answer(request, db.DialbackType.ERROR,
                                 condition or StanzaErrorCondition.REMOTE_SERVER_NOT_FOUND))
            return []
        if self.authenticated:
            # 'invalid' obliges us to close the stream (XEP-0220 §2.2.1), which would
            # drop the domains already verified on it: <forbidden/> instead (§2.1.2)
            self._send(db.answer(request, db.DialbackType.ERROR, StanzaErrorCondition.FORBIDDEN))
            return []
        self._send(db.answer(request, db.DialbackType.INVALID))
        return self.close(StreamError(Cond.NOT_AUTHORIZED,
                                      f"dialback key for {originating} is not valid"))

    # -- coserver proof ----------------------------------------------------------------

    def _coserver_proof(self, element: Element) -> list[Event]:
        originating = _domain(element.get("from"))
        pair = self.policy.coserver_pairs.get(originating or "")
        if originating not in self.authenticated or pair is None:
            raise StreamError(Cond.NOT_AUTHORIZED, "authenticate before the coserver proof")
        serverid = element.get("serverid") or ""
        if serverid != pair.serverid or not db.proof_is_valid(
                pair.password, serverid, originating, self.domain, self.stream_id,
                element.text or ""):
            raise StreamError(Cond.NOT_AUTHORIZED, "wrong coserver serverid/password")
        self.proved.add(originating)
        reply = Element(q(db.COSERVER_NS, "proof"), {"from": self.domain, "to": originating})
        own = self.policy.own_pair
        if own is not None:
            reply.set("serverid", own.serverid)
            reply.text = db.coserver_proof(own.password, own.serverid, originating,
                                           self.domain, self.stream_id, responder=True)
        self._send(reply)
        return [CoserverVerified(originating, serverid)]

    # -- stanzas (RFC 6120 §8.1.1.2, §4.9.3) ----------------------------------------------

    def _stanza(self, stanza: Element) -> list[Event]:
        if not self.authenticated:
            raise StreamError(Cond.NOT_AUTHORIZED, "authenticate first")
        try:
            sender, to = JID.parse(stanza.get("from") or ""), JID.parse(stanza.get("to") or "")
        except InvalidJID:
            raise StreamError(Cond.IMPROPER_ADDRESSING,
                              "a stanza between servers needs valid 'from' and 'to'") from None
        if sender.domain not in self.authenticated:
            raise StreamError(Cond.INVALID_FROM, f"{sender.domain} is not authenticated here")
        if sender.domain in self.policy.coserver_pairs and sender.domain not in self.proved:
            raise StreamError(Cond.NOT_AUTHORIZED, "coserver proof missing")
        if to.domain != self.domain:
            raise StreamError(Cond.HOST_UNKNOWN, f"{to.domain} is not served here")
        return [StanzaReceived(to_namespace(stanza, SERVER_NS, CLIENT_NS))]


# -- the initiating end ----------------------------------------------------------------------


OUTGOING_TRANSITIONS: Transitions = {
    **COMMON_TRANSITIONS,
    (P.OPENING, P.NEGOTIATING): "the peer's header; its features follow (RFC 6120 §4.3.2)",
    (P.NEGOTIATING, P.OPENING): "SASL EXTERNAL <success/>: a new stream (XEP-0178 §3)",
    (P.NEGOTIATING, P.ESTABLISHED): "authenticated (EXTERNAL, or dialback valid, XEP-0220 "
                                    "§2.1.1), and a coserver's proof answered",
}
"""The initiating server: TLS, then SASL EXTERNAL or dialback, then stanzas."""


class OutgoingServerStream(_ServerStreamBase):
    """A stream this server opens to ``remote`` to send it stanzas."""

    transitions = OUTGOING_TRANSITIONS

    def __init__(self, policy: S2SPolicy, remote: str, *, tls_required_by: str | None = None,
                 use_external: bool = False) -> None:
        super().__init__(policy)
        self.remote = prepare_domainpart(remote)
        self.tls_required_by = tls_required_by
        """The iim.conf parameter that requires TLS with this peer, or None."""
        self.use_external = use_external
        """We present a certificate: try SASL EXTERNAL when offered."""
        self.stream_id = ""
        self.method: str | None = None
        self.ready_for_dialback = False
        self._sasl_done = False
        self._awaiting_proof = False
        self.bounce_condition: StanzaErrorCondition | None = None
        """Set when the peer refused our dialback key: the stanza error the
        stanzas waiting for this stream go back with (XEP-0220 §2.1.1)."""
        pair = policy.coserver_pairs.get(self.remote)
        self.coserver = pair if pair is not None and policy.own_pair is not None else None

    def start(self) -> None:
        self._header(to=self.remote, stream_id=None)

    def _after_tls(self) -> None:
        self._enter(Phase.OPENING)
        self.ready_for_dialback = False
        self.start()

    def _ensure_header(self) -> None:
        if not self._header_sent:
            self.start()

    def _on_header(self, header: StreamOpened) -> list[Event]:
        if header.ns != SERVER_NS:
            raise StreamError(Cond.INVALID_NAMESPACE, "the peer did not answer jabber:server")
        if not _is_version_1(header.version):
            raise StreamError(Cond.UNSUPPORTED_VERSION, "the peer does not speak XMPP 1.0")
        self.stream_id = header.id or ""
        self._enter(Phase.NEGOTIATING)
        return []

    def _on_element(self, element: Element) -> list[Event]:
        handler = {
            q(STREAMS_NS, "features"): self._on_features,
            q(TLS_NS, "proceed"): self._on_proceed,
            q(TLS_NS, "failure"): lambda e: self._give_up(
                StreamError(Cond.POLICY_VIOLATION, "the peer refused STARTTLS")),
            q(SASL_NS, "success"): self._on_success,
            q(SASL_NS, "failure"): self._on_sasl_failure,
            q(db.COSERVER_NS, "proof"): self._on_coserver_proof,
        }.get(element.tag)
        if handler is not None:
            return handler(element)
        if element.tag == db.DB_RESULT and element.get("type") is not None:
            return self._on_result_answer(element)
        if element.tag == db.DB_VERIFY:
            return self._on_verify(element)
        raise StreamError(Cond.UNSUPPORTED_STANZA_TYPE, "stanzas travel on the other stream")

    # -- features -----------------------------------------------------------------------

    def _on_features(self, features: Element) -> list[Event]:
        if self.method is not None:         # authenticated or waiting for the verdict
            return []
        if self._sasl_done:
            self.ready_for_dialback = True
            return [ReadyForDialback()] + self._authenticated("SASL EXTERNAL")
        starttls = features.find(q(TLS_NS, "starttls"))
        if not self.secure and starttls is not None and self.policy.tls_offered:
            self._out += f"<starttls xmlns='{TLS_NS}'/>".encode()
            return []
        if not self.secure and starttls is not None and \
                starttls.find(q(TLS_NS, "required")) is not None:
            return self.close(StreamError(              # RFC 6120 §4.9.3.22
                Cond.UNSUPPORTED_FEATURE, "the peer requires STARTTLS and this server has no "
                                          "certificate (iim_server.sslkeystore)"))
        if not self.secure and self.tls_required_by:
            return self.close(StreamError(
                Cond.POLICY_VIOLATION,
                f"the peer offers no STARTTLS and {self.tls_required_by} is true"))
        mechanisms = {m.text for m in features.iter(q(SASL_NS, "mechanism"))}
        if self.secure and self.use_external and EXTERNAL in mechanisms:
            # nothing else until SASL ends: bytes after <success/> belong to the old stream
            auth = Element(q(SASL_NS, "auth"), {"mechanism": EXTERNAL})
            auth.text = encode_payload(self.domain.encode("utf-8"))
            self._send(auth)
            return []
        self.ready_for_dialback = True
        return [ReadyForDialback()] + self._start_dialback()

    # -- SASL EXTERNAL ----------------------------------------------------------------

    def _on_success(self, element: Element) -> list[Event]:
        self._peer_may(Phase.OPENING, "<success/>")
        self._sasl_done = True
        self._restart()
        self._enter(Phase.OPENING)
        self.start()
        return []

    def _on_sasl_failure(self, element: Element) -> list[Event]:
        self.ready_for_dialback = True
        return [ReadyForDialback()] + self._start_dialback()   # XEP-0178 §3: fall back

    # -- dialback, originating side ------------------------------------------------------

    def _start_dialback(self) -> list[Event]:
        if not self.policy.dialback_secret:
            return self._give_up(StreamError(Cond.NOT_AUTHORIZED,
                                             "no authentication method in common"))
        key = db.dialback_key(self.policy.dialback_secret, self.remote, self.domain,
                              self.stream_id)
        self._send(db.result_request(self.domain, self.remote, key))
        self.method = "dialback-pending"
        return []

    def _on_result_answer(self, element: Element) -> list[Event]:
        """The receiving server's verdict on our key (XEP-0220 §2.1.1).

        It counts only as the answer to the one request this stream made (the
        same domain pair, still waiting); anything else is an unsolicited
        answer (§3.1) and is dropped. 'invalid' sends the waiting stanzas back
        with <internal-server-error/>, 'error' with <remote-server-timeout/>."""
        if self.method != "dialback-pending" or _domain(element.get("from")) != self.remote \
                or _domain(element.get("to")) != self.domain:
            return []
        kind = db.answer_type(element)
        if kind is db.DialbackType.VALID:
            return self._authenticated("dialback")
        if kind is db.DialbackType.INVALID:
            self.bounce_condition = StanzaErrorCondition.INTERNAL_SERVER_ERROR
            reason = "refused our dialback key"
        else:
            self.bounce_condition = StanzaErrorCondition.REMOTE_SERVER_TIMEOUT
            reason = f"could not check our dialback key ({_error_condition(element)})"
        return self._give_up(StreamError(Cond.NOT_AUTHORIZED, f"the peer {reason}"))

    def request_verify(self, originating: str, stream_id: str, key: str) -> None:
        """Ask the peer, as authoritative server for ``originating`` (= the
        peer), whether ``key`` is one it made for our incoming ``stream_id``."""
        self._send(db.verify_request(self.domain, originating, stream_id, key))

    def _on_verify(self, element: Element) -> list[Event]:
        if element.get("type") is None:                        # the peer asks us
            self._answer_verify(element)
            return []
        if _domain(element.get("to")) != self.domain:
            return []                       # not an answer to a request of ours (§2.1.2)
        originating = _domain(element.get("from")) or ""
        kind = db.answer_type(element)
        valid = None if kind not in (db.DialbackType.VALID, db.DialbackType.INVALID) \
            else kind is db.DialbackType.VALID
        return [DialbackVerifyAnswered(originating, element.get("id") or "", valid)]

    # -- authenticated: coserver proof, then stanzas ---------------------------------------

    def _authenticated(self, method: str) -> list[Event]:
        self.method = method
        events: list[Event] = [PeerAuthenticated(self.remote, method)]
        if self.coserver is not None:
            own = self.policy.own_pair
            proof = Element(q(db.COSERVER_NS, "proof"), {"from": self.domain, "to": self.remote,
                                                         "serverid": own.serverid})
            proof.text = db.coserver_proof(own.password, own.serverid, self.domain,
                                           self.remote, self.stream_id)
            self._send(proof)
            self._awaiting_proof = True
            return events
        self._enter(Phase.ESTABLISHED)
        return events

    def _on_coserver_proof(self, element: Element) -> list[Event]:
        pair = self.coserver
        if not self._awaiting_proof or pair is None:
            raise StreamError(Cond.UNSUPPORTED_STANZA_TYPE, "no coserver proof was asked for")
        if element.get("serverid") != pair.serverid or not db.proof_is_valid(
                pair.password, pair.serverid, self.domain, self.remote, self.stream_id,
                element.text or "", responder=True):
            return self.close(StreamError(Cond.NOT_AUTHORIZED,
                                          "wrong coserver serverid/password"))
        self._awaiting_proof = False
        self._enter(Phase.ESTABLISHED)
        return [CoserverVerified(self.remote, pair.serverid)]

    def send_stanza(self, stanza: Element) -> None:
        super().send_stanza(to_namespace(stanza, CLIENT_NS, SERVER_NS))


def _error_condition(element: Element) -> str:
    error = element.find(q(SERVER_NS, "error"))
    if error is None:
        return "no reason given"
    for child in error:
        return child.tag.rsplit("}", 1)[-1]
    return "no reason given"
