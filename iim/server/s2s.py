"""Server-to-server connections: the asyncio side of ``iim.xmpp.s2s``.

Theory of operation
-------------------
``IncomingServerSession`` serves a stream another server opened to our
``iim_server.port`` (the listener hands it over once the stream header says
``jabber:server``); ``OutgoingServerSession`` opens one to a remote domain.
Both move bytes between a carrier and the sans-I/O stream, run TLS over memory
BIOs (``iim.tlsbio``) after STARTTLS, and report to the ``Federation``
(``iim.server.federation``), which owns routing, queues and dialback checks.
What a session knows of the federation is its ``S2SContext``: the settings
it reads (policy, TLS contexts, trust anchors, timeouts) and the
``FederationReports`` it makes; this module never imports the federation.

The certificate is judged here, right after the TLS handshake, with
``iim.keys.trust.verify_peer`` for the peer's domain (docs/architecture.md,
"TLS policy"): with ``trust_all_cert = false`` a certificate that fails is a
refusal, logged with its one reason (expired, self-signed, unknown CA, name
mismatch, ...); with ``trust_all_cert = true`` it is accepted and its summary
logged. Either way SASL EXTERNAL is offered (incoming) only for a certificate
that really verifies: ``trust_all_cert`` never lets a self-signed certificate
*authenticate* a domain; such peers authenticate with dialback, whose check
does not depend on the certificate.

Timers: negotiation must finish within ``negotiation_timeout``
(``<connection-timeout/>``); an authenticated stream that carries nothing for
``s2s_idle_timeout`` is closed cleanly and opened again when needed.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Protocol
from xml.etree.ElementTree import Element

from cryptography import x509

from iim.keys.trust import Verdict, certificate_summary, verify_peer
from iim.tlsbio import TLSFailed, TLSPump
from iim.text import printable
from iim.xmpp.errors import (
    LocalProtocolError, StanzaErrorCondition, StreamError, StreamErrorCondition,
)
from iim.xmpp.events import StanzaReceived, StartTLS, StreamEnded
from iim.xmpp.s2s import (
    CoserverVerified, DialbackRefused, DialbackVerifyAnswered, DialbackVerifyNeeded,
    IncomingServerStream, OutgoingServerStream, PeerAuthenticated, ReadyForDialback, S2SPolicy,
)
from iim.xmpp.stream import Phase

from .c2s import HIGH_WATER
from .clock import Clock, clock_of

Cond = StreamErrorCondition


class FederationReports(Protocol):
    """What an s2s session tells the federation (``Federation`` implements it)."""

    def incoming_opened(self, session: IncomingServerSession) -> None: ...
    def incoming_authenticated(self, session: IncomingServerSession, domain: str) -> None: ...
    def incoming_closed(self, session: IncomingServerSession) -> None: ...
    def stanza_received(self, session: IncomingServerSession, stanza: Element) -> None: ...

    def verify_dialback(self, session: IncomingServerSession, request: DialbackVerifyNeeded
                        ) -> StanzaErrorCondition | None:
        """Ask the authoritative server; or the dialback error to answer at once."""

    def dialback_refused(self, session: IncomingServerSession, event: DialbackRefused) -> None: ...
    def dialback_answered(self, session: OutgoingServerSession,
                          answer: DialbackVerifyAnswered) -> None: ...
    def outgoing_closed(self, session: OutgoingServerSession, condition, reason: str) -> None: ...


@dataclass
class S2SContext:
    """What every s2s session of one server shares (c2s has ``SessionContext``).

    The federation makes it and, on refresh, replaces its settings in place:
    a session reads them when it needs them, so new negotiations use the new
    certificate and policy while established streams keep what they agreed."""

    policy: S2SPolicy
    log: logging.Logger
    federation: FederationReports
    server_tls: ssl.SSLContext | None = None
    """Incoming STARTTLS: presents our certificate, asks for the peer's (None: no keystore)."""
    client_tls: ssl.SSLContext | None = None
    """Outgoing STARTTLS: presents ours; the peer's is judged here, not in OpenSSL."""
    anchors: tuple = ()
    """The CAs a peer's certificate must chain to (the keystore's trusted entries)."""
    trust_all_cert: bool = False
    """``iim_server.trust_all_cert``: accept (and log) what does not verify."""
    negotiation_timeout: float = 30.0
    idle_timeout: float = 600.0
    """``iim_server.s2s_idle_timeout``: an authenticated stream carrying nothing is closed."""
    clock: Clock | None = None
    """The timers' clock (iim/server/clock.py); None: the running event loop."""


class _ServerLink:
    """What both directions share: TLS, byte pumping, timers, ending."""

    direction = ""

    def __init__(self, ctx: S2SContext, carrier, stream) -> None:
        self.ctx = ctx
        self.carrier = carrier
        self.stream = stream
        self.tls = TLSPump()                # nothing until STARTTLS
        self.chain: list[x509.Certificate] = []
        self.closed = False
        self.clock = clock_of(ctx.clock)
        self.last_used = self.clock.time()
        self._timer = self.clock.call_later(ctx.negotiation_timeout, self._negotiation_expired)
        self._idle = self.clock.call_later(ctx.idle_timeout, self._check_idle)

    @property
    def peer(self) -> str:
        return self.carrier.peer if self.carrier is not None else "?"

    def log(self, level: str, message: str, *args) -> None:
        getattr(self.ctx.log, level)(f"s2s {self.direction} %s: {message}", self.name, *args)

    @property
    def name(self) -> str:
        raise NotImplementedError

    # -- bytes in -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        plain = self.tls.pass_in(data, self.carrier.write, self._tls_up, self._tls_failed)
        if plain and not self.closed:
            self._feed(plain)

    def _tls_failed(self, exc: TLSFailed) -> None:
        if exc.alert:
            self.carrier.write(exc.alert)   # the peer learns why
        self.log("warning", "TLS failed: %s", exc)
        self._finish(Cond.REMOTE_CONNECTION_FAILED, f"TLS failed: {exc}", write=False)

    def _tls_up(self) -> None:
        info = self.tls.info()
        self.chain = [x509.load_der_x509_certificate(der) for der in info.peer_chain]
        self.log("info", "TLS established %s %s (%s)", info.version, info.cipher, self.peer)
        if self._certificate_refused():
            return
        self.stream.tls_established()
        self._flush()

    def _feed(self, data: bytes) -> None:
        events = self.stream.receive_data(data)
        self._flush()
        for event in events:
            if not self.closed:
                self._handle(event)

    # -- certificates -------------------------------------------------------------

    def verdict(self, domain: str) -> Verdict:
        return verify_peer(self.chain, self.ctx.anchors, domain)

    def judge(self, domain: str) -> bool:
        """Apply the trust policy to the certificate for ``domain``: False when
        the peer is refused (already closed, the reason logged)."""
        verdict = self.verdict(domain)
        if verdict.ok:
            return True
        if self.ctx.trust_all_cert:
            self.log("warning", "certificate for %s accepted by iim_server.trust_all_cert "
                     "although %s: %s", domain, verdict, certificate_summary(self.chain[0]))
            return True
        self.log("warning", "certificate refused for %s: %s", domain, verdict)
        self.close(StreamError(Cond.NOT_AUTHORIZED, f"certificate not trusted: "
                                                     f"{verdict.failure.value}"))
        return False

    def _certificate_refused(self) -> bool:
        raise NotImplementedError

    # -- bytes out --------------------------------------------------------------

    def _flush(self) -> None:
        out = self.stream.data_to_send()
        if not out or self.carrier is None:
            return
        try:
            out = self.tls.send(out)
        except TLSFailed as exc:
            self._finish(Cond.REMOTE_CONNECTION_FAILED, f"TLS failed: {exc}", write=False)
            return
        self.carrier.write(out)

    def _start_tls(self, context, **kw) -> None:
        first = self.tls.start(context, **kw)
        if first:                           # a ClientHello (we opened the stream)
            self.carrier.write(first)

    def _tls_version(self) -> str:
        info = self.tls.info()
        return info.version if info is not None else "no TLS"

    # -- ending -----------------------------------------------------------------

    def close(self, error: StreamError | None = None) -> None:
        if self.closed:
            return
        if self.tls.handshaking:
            self.stream.close(None)
            self.stream.data_to_send()
        else:
            self.stream.close(error)
            self._flush()
        reason = error.condition if error is not None else None
        self._finish(reason, str(error) if error is not None else "closed", write=True)

    def connection_lost(self) -> None:
        if not self.closed:
            self._finish(Cond.REMOTE_CONNECTION_FAILED, "connection lost", write=False)

    def _finish(self, condition, reason: str, write: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        self._timer.cancel()
        self._idle.cancel()
        try:
            if self.carrier is not None:
                if write and self.tls.handshake_done:
                    self.carrier.write(self.tls.close())
                self.carrier.close()
        except (OSError, TLSFailed):
            pass
        finally:
            self._ended(condition, reason)

    def _ended(self, condition, reason: str) -> None:
        raise NotImplementedError

    def _on_stream_ended(self, event: StreamEnded) -> None:
        if event.error is not None and not event.sent_by_peer and self.direction == "out":
            self.log("warning", "abandoned: %s", printable(str(event.error)))
            self._finish(event.error.condition, str(event.error))
        elif event.error is not None:
            who = "peer sent" if event.sent_by_peer else "sent"
            self.log("info", "stream error (%s): %s", who, printable(str(event.error)))
            self._finish(event.error.condition, str(event.error))
        else:
            self._finish(None, "closed by the peer" if event.sent_by_peer else "closed")

    # -- timers -------------------------------------------------------------------

    def _negotiation_expired(self) -> None:
        if not self.closed:
            self.log("info", "negotiation not finished in %ss", self.ctx.negotiation_timeout)
            self.close(StreamError(Cond.CONNECTION_TIMEOUT, "negotiation took too long"))

    def _check_idle(self) -> None:
        if self.closed:
            return
        quiet = self.clock.time() - self.last_used
        if quiet >= self.ctx.idle_timeout:
            self.log("info", "idle for %.0fs, closing", quiet)
            self.close()
            return
        self._idle = self.clock.call_later(self.ctx.idle_timeout - quiet + 0.05,
                                           self._check_idle)

    def _negotiated(self) -> None:
        self._timer.cancel()

    def describe(self) -> dict:
        info = self.tls.info()
        return {"domain": self.name, "direction": self.direction,
                "tls": f"{info.version} {info.cipher}" if info else None,
                "auth": self.auth_method, "state": self.state}


class IncomingServerSession(_ServerLink):
    """A stream from another server on ``iim_server.port``."""

    direction = "in"

    def __init__(self, ctx: S2SContext, carrier) -> None:
        super().__init__(ctx, carrier, IncomingServerStream(ctx.policy))
        self.stream.certificate_ok = self._certificate_ok
        ctx.federation.incoming_opened(self)

    @property
    def name(self) -> str:
        domains = ",".join(self.stream.authenticated) or self.stream.peer_from or "?"
        return f"{domains} ({self.peer})" if not self.stream.authenticated else domains

    @property
    def auth_method(self) -> str | None:
        return ",".join(sorted(set(self.stream.authenticated.values()))) or None

    @property
    def state(self) -> str:
        return "authenticated" if self.stream.authenticated else "negotiating"

    def _certificate_ok(self, domain: str) -> bool:
        return bool(self.chain) and self.verdict(domain).ok

    def _certificate_refused(self) -> bool:
        if not self.chain:
            return False
        if self.ctx.trust_all_cert:
            self.log("info", "peer certificate: %s", certificate_summary(self.chain[0]))
        claimed = self.stream.peer_from
        return claimed is not None and not self.judge(claimed)

    def _handle(self, event) -> None:
        if isinstance(event, StanzaReceived):
            self.last_used = self.clock.time()
            self.ctx.federation.stanza_received(self, event.stanza)
        elif isinstance(event, StartTLS):
            self._start_tls(self.ctx.server_tls, server_side=True)
        elif isinstance(event, DialbackVerifyNeeded):
            if self.chain and not self.judge(event.originating):
                return
            refusal = self.ctx.federation.verify_dialback(self, event)
            if refusal is not None:                 # a limit: counted in the limit log
                self._answer_dialback(event.originating, None, refusal)
        elif isinstance(event, DialbackRefused):
            self.ctx.federation.dialback_refused(self, event)
        elif isinstance(event, PeerAuthenticated):
            self._authenticated(event)
        elif isinstance(event, CoserverVerified):
            self.log("info", "coserver %s proved its serverid", event.serverid)
        elif isinstance(event, StreamEnded):
            self._on_stream_ended(event)

    def _authenticated(self, event: PeerAuthenticated) -> None:
        self.log("info", "%s authenticated with %s (%s)", event.domain, event.method,
                 self._tls_version())
        self._negotiated()
        self.ctx.federation.incoming_authenticated(self, event.domain)

    def dialback_verified(self, originating: str, valid: bool | None, condition=None) -> None:
        if self.closed:
            return
        if valid is False:
            self.log("warning", "dialback key for %s is not valid", originating)
        elif valid is None:
            self.log("info", "dialback key for %s could not be checked (%s)", originating,
                     condition.value if condition is not None else
                     "the authoritative server answered with an error")
        self._answer_dialback(originating, valid, condition)

    def _answer_dialback(self, originating: str, valid: bool | None, condition) -> None:
        events = self.stream.dialback_verified(originating, valid, condition)
        self._flush()
        for event in events:
            self._handle(event)

    def _ended(self, condition, reason: str) -> None:
        self.ctx.federation.incoming_closed(self)


class OutgoingServerSession(_ServerLink):
    """Our stream to ``remote``: stanzas wait in ``queue`` until it is ready."""

    direction = "out"

    def __init__(self, ctx: S2SContext, remote: str, tls_required_by: str | None) -> None:
        stream = OutgoingServerStream(ctx.policy, remote, tls_required_by=tls_required_by,
                                      use_external=ctx.client_tls is not None)
        super().__init__(ctx, None, stream)
        self.remote = stream.remote
        self.queue: deque[Element] = deque()
        self.verifies: list[tuple[str, str, str]] = []     # (originating, stream id, key)
        self.target = None
        self.attempted = False          # its connection attempt started (ConnectGate)
        self.ever_established = False   # it authenticated at least once

    @property
    def name(self) -> str:
        return self.remote

    @property
    def auth_method(self) -> str | None:
        return self.stream.method if self.stream.phase is Phase.ESTABLISHED else None

    @property
    def state(self) -> str:
        if self.closed:
            return "closed"
        if self.carrier is None:
            return "connecting"
        return "established" if self.stream.phase is Phase.ESTABLISHED else "negotiating"

    @property
    def established(self) -> bool:
        return not self.closed and self.stream.phase is Phase.ESTABLISHED

    def connected(self, carrier, target) -> None:
        self.carrier, self.target = carrier, target
        self.log("info", "connected to %s (%s)", target, target.source)
        self.stream.start()
        self._flush()

    def _certificate_refused(self) -> bool:
        if self.ctx.trust_all_cert and self.chain:
            self.log("info", "peer certificate: %s", certificate_summary(self.chain[0]))
        return not self.judge(self.remote)

    def send(self, stanza: Element) -> None:
        """Write now, or queue: while negotiating, and while the peer does not
        read (more than HIGH_WATER bytes unsent), stanzas wait in ``queue``,
        which the federation keeps below ``s2s_queue_limit``."""
        self.last_used = self.clock.time()
        if self.established and not self.queue and self._writable():
            self._write(stanza)
        else:
            self.queue.append(stanza)

    def _writable(self) -> bool:
        return self.carrier is not None and self.carrier.pending() <= HIGH_WATER

    def resume_writing(self) -> None:
        if self.established:
            self._ready()

    def _write(self, stanza: Element) -> None:
        try:
            self.stream.send_stanza(stanza)
        except LocalProtocolError as exc:
            self.log("warning", "stanza not sent: %s", exc)
            return
        self._flush()

    def request_verify(self, originating: str, stream_id: str, key: str) -> None:
        if self.stream.ready_for_dialback and not self.closed:
            self.stream.request_verify(originating, stream_id, key)
            self._flush()
        else:
            self.verifies.append((originating, stream_id, key))

    def _handle(self, event) -> None:
        if isinstance(event, StartTLS):
            self._start_tls(self.ctx.client_tls, server_side=False,
                            server_hostname=_sni(self.remote))
        elif isinstance(event, ReadyForDialback):
            for request in self.verifies:
                self.stream.request_verify(*request)
            self.verifies.clear()
            self._flush()
        elif isinstance(event, DialbackVerifyAnswered):
            self.ctx.federation.dialback_answered(self, event)
        elif isinstance(event, PeerAuthenticated):
            self.log("info", "authenticated with %s (%s)", event.method, self._tls_version())
        elif isinstance(event, CoserverVerified):
            self.log("info", "coserver %s proved its serverid", event.serverid)
        elif isinstance(event, StreamEnded):
            self._on_stream_ended(event)
        if self.established and not self.closed:
            self._ready()

    def _ready(self) -> None:
        self.ever_established = True
        self._negotiated()
        while self.queue and self.established and self._writable():
            self._write(self.queue.popleft())

    def connect_failed(self, condition, reason: str) -> None:
        self.log("warning", "cannot connect: %s", reason)
        self._finish(condition, reason, write=False)

    def _ended(self, condition, reason: str) -> None:
        self.ctx.federation.outgoing_closed(self, condition, reason)


def _sni(domain: str) -> str | None:
    """Server name indication only for DNS names (RFC 6066 §3: not IP literals)."""
    try:
        ipaddress.ip_address(domain.strip("[]"))
        return None
    except ValueError:
        return domain
