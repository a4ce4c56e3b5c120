"""Federation: which stream carries a stanza to another domain, and what
happens when there is none (RFC 6120 §8.3.3.13-14, §13.9; XEP-0220).

Theory of operation
-------------------
``send`` (the router's ``route_remote``) looks up the outgoing session for
the stanza's domain and creates one when there is none: its address comes
from ``iim.server.resolve`` (coserver host, ``s2s_hosts``, DNS SRV, then the
domain itself), each target is tried in order, and the stanza waits in the
session's queue (at most ``s2s_queue_limit``; beyond that the sender gets
``<resource-constraint/>``) until the stream is authenticated. When the
session ends before it is, every queued stanza bounces to its local sender:
``<remote-server-timeout/>`` when the peer was too slow, else
``<remote-server-not-found/>`` (no address, refused connection, TLS or
certificate refused, authentication refused). A session that was closed
(idle, dropped) is simply replaced by a new one on the next stanza.

Dialback plumbing: an incoming stream that received ``<db:result/>`` for a
domain asks us to check the key with that domain's authoritative server. We
send ``<db:verify/>`` on our outgoing session to that domain (creating it if
needed; XEP-0220 allows it before that session is authenticated) and route
the answer back by (domain, stream id). Answers are accepted only from the
session to the domain the key claims, so no peer can vouch for another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import ssl

from iim.conf import Config
from iim.keys.context import client_context, server_context
from iim.keys.material import KeyMaterial
from iim.keys.passwords import read_password_file
from iim.keys.peercert import request_any_client_certificate
from iim.xmpp.errors import StanzaErrorCondition, StreamError, StreamErrorCondition
from iim.xmpp.jid import JID, InvalidJID
from iim.xmpp.s2s import CoserverPair, DialbackVerifyAnswered, DialbackVerifyNeeded, S2SPolicy

from .c2s import HIGH_WATER
from .listener import SocketCarrier
from .resolve import NoService, Resolver, Target
from .s2s import IncomingServerSession, OutgoingServerSession

CONNECT_TIMEOUT = 15.0


class Federation:
    """Every s2s session of one server, and the routing between them."""

    def __init__(self, config: Config, router, material: KeyMaterial | None,
                 log: logging.Logger, *, negotiating: set) -> None:
        server = config.server
        self.config, self.router, self.log = config, router, log
        self.domain = router.domain
        self.trust_all_cert = server.trust_all_cert
        self.negotiation_timeout = server.negotiation_timeout
        self.idle_timeout = server.s2s_idle_timeout
        self.queue_limit = server.s2s_queue_limit
        self.negotiating = negotiating
        self.coservers = {c.domain: c for c in config.coservers}
        self.anchors = tuple(material.trust_anchors) if material is not None else ()
        self.server_tls, self.client_tls = _contexts(material)
        self.policy = self._policy(config, material is not None)
        self.resolver = Resolver(self._overrides(config), server.s2s_nameservers)
        self.outgoing: dict[str, OutgoingServerSession] = {}
        self.incoming: set[IncomingServerSession] = set()
        self._waiting: dict[tuple[str, str], IncomingServerSession] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- configuration ---------------------------------------------------------------

    def refresh(self, config: Config, material: KeyMaterial | None) -> None:
        """``iim.admin refresh``: new s2s streams use the new certificate and
        policy; established ones keep what they negotiated. The dialback secret
        is kept unless it comes from a file (keys handed out a moment ago must
        still verify)."""
        server = config.server
        self.use_material(material)
        self.config, self.trust_all_cert = config, server.trust_all_cert
        self.negotiation_timeout = server.negotiation_timeout
        self.idle_timeout, self.queue_limit = server.s2s_idle_timeout, server.s2s_queue_limit
        secret = self.policy.dialback_secret if server.dialback_secretfile is None else None
        policy = self._policy(config, material is not None or self.server_tls is not None)
        self.policy = policy if secret is None else dataclasses.replace(
            policy, dialback_secret=secret)

    def use_material(self, material: KeyMaterial | None) -> None:
        """New key material (certificate refresh): new s2s handshakes use it."""
        if material is not None:
            self.anchors = tuple(material.trust_anchors)
            self.server_tls, self.client_tls = _contexts(material)

    def _policy(self, config: Config, tls: bool) -> S2SPolicy:
        server = config.server
        own = CoserverPair(server.serverid, server.password) \
            if server.serverid and server.password else None
        pairs = {c.domain: CoserverPair(c.serverid, c.password)
                 for c in config.coservers if c.serverid and c.password}
        required = frozenset(c.domain for c in config.coservers
                             if c.effective_requiressl(server.requiressl))
        return S2SPolicy(self.domain, tls_offered=tls, tls_required=server.requiressl,
                         tls_required_domains=required, dialback_secret=_dialback_secret(server),
                         own_pair=own, coserver_pairs=pairs,
                         max_stanza_bytes=server.maxstanzasize)

    @staticmethod
    def _overrides(config: Config) -> dict[str, Target]:
        found = {domain: Target(where.host, where.port, "iim_server.s2s_hosts")
                 for domain, where in config.server.s2s_hosts}
        for coserver in config.coservers:
            found[coserver.domain] = Target(coserver.host.host, coserver.host.port,
                                            f"iim_server.{coserver.name}.host")
        return found

    def tls_required_by(self, domain: str) -> str | None:
        """The iim.conf parameter that makes TLS mandatory with ``domain``."""
        if self.config.server.requiressl:
            return "iim_server.requiressl"
        coserver = self.coservers.get(domain)
        if coserver is not None and coserver.requiressl:
            return f"iim_server.{coserver.name}.requiressl"
        return None

    # -- outgoing ------------------------------------------------------------------------

    def send(self, stanza) -> None:
        """Route ``stanza`` to its (remote) domain."""
        try:
            domain = JID.parse(stanza.get("to") or "").domain
        except InvalidJID:
            self.router.bounce_to_local(stanza, StanzaErrorCondition.JID_MALFORMED)
            return
        session = self._session_for(domain)
        if len(session.queue) >= self.queue_limit:
            self.router.bounce_to_local(stanza, StanzaErrorCondition.RESOURCE_CONSTRAINT)
            return
        session.send(stanza)

    def _session_for(self, domain: str) -> OutgoingServerSession:
        session = self.outgoing.get(domain)
        if session is None or session.closed:
            session = OutgoingServerSession(self, domain, self.tls_required_by(domain))
            self.outgoing[domain] = session
            task = asyncio.get_running_loop().create_task(self._connect(session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return session

    async def _connect(self, session: OutgoingServerSession) -> None:
        try:
            targets = await self.resolver.targets(session.remote)
        except NoService as exc:
            session.connect_failed(None, str(exc))
            return
        loop, failures = asyncio.get_running_loop(), []
        for target in targets:
            addresses = await self.resolver.addresses(target)
            if not addresses:
                failures.append(f"{target}: no address")
            for address in addresses:
                if session.closed:
                    return
                try:
                    await asyncio.wait_for(loop.create_connection(
                        lambda t=target: _OutgoingProtocol(session, t), address, target.port),
                        CONNECT_TIMEOUT)
                    return
                except asyncio.TimeoutError:
                    failures.append(f"{target}: timed out")
                except OSError as exc:
                    failures.append(f"{target}: {exc.strerror or exc}")
        timed_out = failures and all(f.endswith("timed out") for f in failures)
        session.connect_failed(StreamErrorCondition.CONNECTION_TIMEOUT if timed_out else None,
                               "; ".join(failures) or "no address")

    def outgoing_closed(self, session: OutgoingServerSession, condition, reason: str) -> None:
        if self.outgoing.get(session.remote) is session:
            del self.outgoing[session.remote]
        error = StanzaErrorCondition.REMOTE_SERVER_TIMEOUT \
            if condition is StreamErrorCondition.CONNECTION_TIMEOUT \
            else StanzaErrorCondition.REMOTE_SERVER_NOT_FOUND
        bounce = session.stream.bounce_condition or error      # XEP-0220 §2.1.1
        if session.queue:
            session.log("info", "%d waiting stanzas bounce with %s: %s", len(session.queue),
                        bounce.value, reason)
        while session.queue:
            self.router.bounce_to_local(session.queue.popleft(), bounce)
        for (domain, stream_id), incoming in list(self._waiting.items()):
            if domain == session.remote:
                del self._waiting[(domain, stream_id)]
                incoming.dialback_verified(domain, None, error)

    # -- dialback checks --------------------------------------------------------------------

    def verify_dialback(self, incoming: IncomingServerSession,
                        request: DialbackVerifyNeeded) -> None:
        self._waiting[(request.originating, request.stream_id)] = incoming
        self._session_for(request.originating).request_verify(
            request.originating, request.stream_id, request.key)

    def dialback_answered(self, session: OutgoingServerSession,
                          answer: DialbackVerifyAnswered) -> None:
        if answer.originating != session.remote:
            session.log("warning", "ignored a dialback answer about %s", answer.originating)
            return
        incoming = self._waiting.pop((answer.originating, answer.stream_id), None)
        if incoming is not None:
            incoming.dialback_verified(answer.originating, answer.valid)

    # -- incoming ------------------------------------------------------------------------------

    def accept(self, carrier) -> IncomingServerSession:
        """A connection on ``iim_server.port`` turned out to carry a server stream."""
        return IncomingServerSession(self, carrier)

    def incoming_opened(self, session: IncomingServerSession) -> None:
        self.incoming.add(session)
        self.negotiating.add(session)

    def incoming_authenticated(self, session: IncomingServerSession, domain: str) -> None:
        self.negotiating.discard(session)

    def incoming_closed(self, session: IncomingServerSession) -> None:
        self.incoming.discard(session)
        self.negotiating.discard(session)
        for key, waiting in list(self._waiting.items()):
            if waiting is session:
                del self._waiting[key]

    def stanza_received(self, session: IncomingServerSession, stanza) -> None:
        self.router.stanza_from_remote(stanza)

    # -- status and shutdown -------------------------------------------------------------------

    def describe(self) -> list[dict]:
        sessions = list(self.outgoing.values()) + list(self.incoming)
        return [session.describe() for session in sessions if not session.closed]

    def close(self) -> None:
        shutdown = StreamError(StreamErrorCondition.SYSTEM_SHUTDOWN)
        for session in list(self.outgoing.values()) + list(self.incoming):
            session.close(shutdown)
        for task in list(self._tasks):
            task.cancel()


class _OutgoingProtocol(asyncio.Protocol):
    def __init__(self, session: OutgoingServerSession, target: Target) -> None:
        self.session, self.target = session, target

    def connection_made(self, transport) -> None:
        if self.session.closed:
            transport.abort()
            return
        transport.set_write_buffer_limits(high=HIGH_WATER, low=HIGH_WATER // 4)
        self.session.connected(SocketCarrier(transport), self.target)

    def data_received(self, data: bytes) -> None:
        self.session.data_received(data)

    def eof_received(self) -> bool:
        return False

    def resume_writing(self) -> None:
        self.session.resume_writing()

    def connection_lost(self, exc) -> None:
        self.session.connection_lost()


def _contexts(material: KeyMaterial | None) -> tuple[ssl.SSLContext | None,
                                                     ssl.SSLContext | None]:
    """(incoming s2s context, outgoing s2s context); none without a keystore.

    Both leave certificate judgement to iim (``iim.server.s2s``): the incoming
    one asks for the peer's certificate and accepts any at the TLS level; the
    outgoing one presents ours and verifies nothing inside OpenSSL."""
    if material is None:
        return None, None
    incoming = server_context(material)
    request_any_client_certificate(incoming)
    return incoming, client_context(material, verify=False)


def _dialback_secret(server) -> bytes:
    if server.dialback_secretfile is None:
        return secrets.token_bytes(32)
    return read_password_file(server.dialback_secretfile,
                              "iim_server.dialback_secretfile").password.encode("utf-8")
