"""Federation: which stream carries a stanza to another domain, and what
happens when there is none (RFC 6120 §8.3.3.13-14, §13.9; XEP-0220).

Theory of operation
-------------------
``send`` (called by ``iim.server.remote.RemoteDomains``) looks up the outgoing session for
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

No amplification (issue 11): a ``<db:result/>`` costs its sender a few dozen
bytes and would cost us a DNS lookup and a connection to a domain *it*
names. So what unauthenticated peers can make us do elsewhere is bounded:

- pending verifications: ``max_pending_verifies`` per incoming stream (the
  stream itself, iim.xmpp.s2s) and ``max_pending_verifies_total`` over all
  of them (here); one more is answered with ``<resource-constraint/>``;
- new outgoing connection attempts (DNS lookups included): at most one in
  flight per domain (one session per domain), and ``s2s_connect_rate`` per
  second over all domains (``ConnectGate``, a token bucket with bursts of
  twice the rate). A verification that finds no token is refused at once
  with ``<resource-constraint/>`` (type wait: the peer may try again), so
  that peers cannot build a queue; a *stanza* from a local user that finds
  none waits in its domain's queue for its turn, ahead of any later
  verification (it is bounded by ``negotiation_timeout`` like any
  connection, then bounces with ``<remote-server-timeout/>``);
- a domain whose attempt failed (no address, refused, timed out, or the
  stream ended before it authenticated) rests for ``s2s_retry_delay``
  seconds: stanzas for it bounce with ``<remote-server-not-found/>`` and
  verifications get that dialback error, with no DNS query or connection.

Every refusal is counted in the limit log (one line per limit per
``limit_log_interval``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import ssl
import time
from collections import deque

from iim.conf import Config
from iim.conf.limits import ServerLimits
from iim.keys.context import client_context, server_context
from iim.keys.material import KeyMaterial
from iim.keys.passwords import read_password_file
from iim.keys.peercert import request_any_client_certificate
from iim.xmpp.errors import StanzaErrorCondition, StreamError, StreamErrorCondition
from iim.xmpp.jid import JID, InvalidJID
from iim.xmpp.s2s import (
    CoserverPair, DialbackRefused, DialbackVerifyAnswered, DialbackVerifyNeeded, S2SPolicy,
)

from .c2s import HIGH_WATER
from .listener import SocketCarrier
from .quota import LimitLog, TokenBucket
from .resolve import Resolver, Target, Unresolvable
from .s2s import IncomingServerSession, OutgoingServerSession, S2SContext

CONNECT_TIMEOUT = 15.0


class Federation:
    """Every s2s session of one server, and the routing between them."""

    def __init__(self, config: Config, router, material: KeyMaterial | None,
                 log: logging.Logger, *, negotiating: set,
                 limit_log: LimitLog | None = None) -> None:
        server = config.server
        self.config, self.router, self.log = config, router, log
        self.domain = router.domain
        self.queue_limit = server.s2s_queue_limit
        self.limits: ServerLimits = server.limits
        self.limit_log = limit_log or LimitLog(log, server.limits.limit_log_interval)
        self.gate = ConnectGate(server.limits.s2s_connect_rate, server.limits.s2s_retry_delay)
        self._turn: asyncio.TimerHandle | None = None
        self.negotiating = negotiating
        self.coservers = {c.domain: c for c in config.coservers}
        self.context = S2SContext(self._policy(config, material is not None), log, self,
                                  trust_all_cert=server.trust_all_cert,
                                  negotiation_timeout=server.negotiation_timeout,
                                  idle_timeout=server.s2s_idle_timeout)
        """What the s2s sessions share: settings they read, and this federation."""
        self.use_material(material)
        self.resolver = Resolver(self._overrides(config), server.s2s_nameservers,
                                 negative_ttl=server.limits.s2s_retry_delay)
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
        server, context = config.server, self.context
        self.use_material(material)
        self.config, self.queue_limit = config, server.s2s_queue_limit
        context.trust_all_cert = server.trust_all_cert
        context.negotiation_timeout = server.negotiation_timeout
        context.idle_timeout = server.s2s_idle_timeout
        self.limits = server.limits
        self.gate.configure(server.limits.s2s_connect_rate, server.limits.s2s_retry_delay)
        secret = context.policy.dialback_secret if server.dialback_secretfile is None else None
        policy = self._policy(config, context.server_tls is not None)
        context.policy = policy if secret is None else dataclasses.replace(
            policy, dialback_secret=secret)

    def use_material(self, material: KeyMaterial | None) -> None:
        """New key material (certificate refresh): new s2s handshakes use it."""
        if material is not None:
            self.context.anchors = tuple(material.trust_anchors)
            self.context.server_tls, self.context.client_tls = _contexts(material)

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
                         max_stanza_bytes=server.maxstanzasize,
                         max_pending_verifies=server.limits.max_pending_verifies,
                         max_auth_attempts=server.limits.max_auth_attempts)

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
        session, refusal = self._session_for(domain, may_wait=True)
        if session is None:
            self.router.bounce_to_local(stanza, refusal)
            return
        if len(session.queue) >= self.queue_limit:
            self.router.bounce_to_local(stanza, StanzaErrorCondition.RESOURCE_CONSTRAINT)
            return
        session.send(stanza)

    def _session_for(self, domain: str, *, may_wait: bool):
        """``(session, None)``: the session to ``domain``, made (and its
        connection attempt started or queued) if needed; ``(None, condition)``
        when a limit refuses a new attempt. ``may_wait``: a stanza may wait for
        a connection slot; a dialback verification may not."""
        session = self.outgoing.get(domain)
        if session is not None and not session.closed:
            return session, None
        now = time.monotonic()
        if self.gate.resting(domain, now):
            self.limit_log.hit("iim_server.s2s_retry_delay", now,
                               f"{domain} failed less than {self.gate.retry_delay}s ago")
            return None, StanzaErrorCondition.REMOTE_SERVER_NOT_FOUND
        start = self.gate.may_start(now)
        if not start and not may_wait:
            self.limit_log.hit("iim_server.s2s_connect_rate", now,
                               f"no connection slot for {domain}")
            return None, StanzaErrorCondition.RESOURCE_CONSTRAINT
        session = OutgoingServerSession(self.context, domain, self.tls_required_by(domain))
        self.outgoing[domain] = session
        if start:
            self._start(session)
        else:
            session.log("info", "waits for a connection slot (iim_server.s2s_connect_rate)")
            self.gate.waiting.append(session)
            self._schedule_turn()
        return session, None

    def _start(self, session: OutgoingServerSession) -> None:
        session.attempted = True
        task = asyncio.get_running_loop().create_task(self._connect(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule_turn(self) -> None:
        if self._turn is None:
            self._turn = asyncio.get_running_loop().call_later(self.gate.interval,
                                                               self._next_turns)

    def _next_turns(self) -> None:
        """Start the sessions waiting for a slot, in order, while tokens last."""
        self._turn = None
        for session in self.gate.next_turns(time.monotonic()):
            self._start(session)
        if self.gate.waiting:
            self._schedule_turn()

    async def _connect(self, session: OutgoingServerSession) -> None:
        if session.closed:
            return
        try:
            targets = await self.resolver.targets(session.remote)
        except Unresolvable as exc:
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
                except ValueError as exc:         # getaddrinfo: a name IDNA cannot encode
                    failures.append(f"{target}: {exc}")
        timed_out = failures and all(f.endswith("timed out") for f in failures)
        session.connect_failed(StreamErrorCondition.CONNECTION_TIMEOUT if timed_out else None,
                               "; ".join(failures) or "no address")

    def outgoing_closed(self, session: OutgoingServerSession, condition, reason: str) -> None:
        if self.outgoing.get(session.remote) is session:
            del self.outgoing[session.remote]
        if session.attempted and not session.ever_established and \
                condition is not StreamErrorCondition.SYSTEM_SHUTDOWN:
            self.gate.failed(session.remote, time.monotonic())
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
                        request: DialbackVerifyNeeded) -> StanzaErrorCondition | None:
        """Send ``<db:verify/>`` to the authoritative server; or, when a limit
        refuses, the dialback error condition to answer with at once."""
        if len(self._waiting) >= self.limits.max_pending_verifies_total:
            self.limit_log.hit("iim_server.max_pending_verifies_total", time.monotonic(),
                               f"{incoming.name}: key for {request.originating}")
            return StanzaErrorCondition.RESOURCE_CONSTRAINT
        session, refusal = self._session_for(request.originating, may_wait=False)
        if session is None:
            return refusal
        self._waiting[(request.originating, request.stream_id)] = incoming
        session.request_verify(request.originating, request.stream_id, request.key)
        return None

    def dialback_refused(self, incoming: IncomingServerSession,
                         event: DialbackRefused) -> None:
        """The incoming stream refused a verification itself (its own limit)."""
        self.limit_log.hit(f"iim_server.{event.limit}", time.monotonic(),
                           f"{incoming.name}: key for {event.originating}")

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
        return IncomingServerSession(self.context, carrier)

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
        if self._turn is not None:
            self._turn.cancel()


class ConnectGate:
    """Which new outgoing connection attempts may start (time passed in).

    ``s2s_connect_rate`` attempts per second over all domains (a token
    bucket: bursts of twice the rate), stanzas' sessions served first in the
    order they came (``waiting``); a domain whose attempt failed rests for
    ``s2s_retry_delay`` seconds. The resting domains are remembered oldest
    first (all rest equally long), so forgetting is popping from the front;
    there are at most rate x delay + burst of them, since each took a token,
    and ``MAX_RESTING`` bounds them whatever the settings."""

    MAX_RESTING = 10_000

    def __init__(self, rate: float, retry_delay: float) -> None:
        self.bucket = TokenBucket(rate)
        self.retry_delay = retry_delay
        self.waiting: deque = deque()             # sessions waiting for a token, in order
        self._failed: dict[str, float] = {}       # domain -> when its attempt failed

    def configure(self, rate: float, retry_delay: float) -> None:
        self.bucket.rate, self.retry_delay = rate, retry_delay

    @property
    def interval(self) -> float:
        """Seconds between two tokens."""
        return 1.0 / self.bucket.rate

    def resting(self, domain: str, now: float) -> bool:
        self._forget(now)
        return domain in self._failed

    def failed(self, domain: str, now: float) -> None:
        self._failed.pop(domain, None)
        self._failed[domain] = now
        self._forget(now)

    def may_start(self, now: float) -> bool:
        """A token for an attempt now, unless earlier sessions wait for one."""
        self._drop_closed()
        return not self.waiting and self.bucket.allow(now)

    def next_turns(self, now: float) -> list:
        """The waiting sessions that may start now, in order."""
        ready = []
        self._drop_closed()
        while self.waiting and self.bucket.allow(now):
            ready.append(self.waiting.popleft())
            self._drop_closed()
        return ready

    def _drop_closed(self) -> None:
        while self.waiting and self.waiting[0].closed:
            self.waiting.popleft()

    def _forget(self, now: float) -> None:
        failed = self._failed
        while failed:
            domain, when = next(iter(failed.items()))
            if now - when < self.retry_delay and len(failed) <= self.MAX_RESTING:
                return
            del failed[domain]


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
