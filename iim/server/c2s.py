"""A client session: one XMPP client stream, whatever carries its bytes.

Theory of operation. A session is fed bytes by a *carrier* (a TCP socket,
or one session of a multiplexor link) through ``data_received`` and writes
through the carrier's ``write``. It owns everything between those bytes and
the router: its TLS (``iim.tlsbio.TLSPump``: memory BIOs, so STARTTLS works
the same over a socket and over a mux link), the sans-I/O ServerStream, and
three timers:

* negotiation: TLS, SASL and binding must be done within
  ``negotiation_timeout`` or the stream ends with ``<connection-timeout/>``;
* stanza progress: once bytes of a stanza arrived, the stanza must complete
  within ``stanza_timeout`` (a client dripping one byte a second is cut off).
  The same watchdog, every ``stanza_timeout / 4`` from the start, frees the
  stream's expat parser whenever no stanza is arriving (``release_parser``,
  iim/xmpp/xml.py "Idle streams"): an idle user holds ~3 KB of parser instead
  of ~25 KB, and a fresh parser costs the next stanza ~20 µs, at most once a
  tick, which is why it is the clock's doing and not every read's. Once the
  session is bound (or resumed) the next tick comes ``SETTLE_AFTER_LOGIN``
  seconds later instead: the login's parser is then freed among the login's
  other transients (TLS handshake, SASL), not 15 s later among the lasting
  objects of the hundreds of sessions that logged in meanwhile, where its
  holes would keep the heap's pages resident (bench/MEMORY.md: ~10 KB of RSS
  per user after a burst of 1,000 logins);
* output backpressure: at most ``HIGH_WATER`` bytes wait in the carrier
  (less when ``max_backlog`` is small); beyond that, stanzas for the client
  wait in an in-order backlog, sent as the carrier drains
  (``resume_writing``).

The timers, and the time the stanza watchdog and the login throttle read,
come from ``SessionContext.clock`` (iim/server/clock.py): the event loop in
the server, a clock moved by hand in the tests about timeouts.

A client that does not read (issue 11.5). What waits for it is bounded in
bytes by ``iim_server.max_backlog``: the bytes in the carrier (written, not
yet taken by the kernel) plus the backlog, each stanza there counted as it is
held (the characters of its names, attributes and text, plus
``_ELEMENT_OVERHEAD`` per element for the objects: a backlog of tiny stanzas
costs what it costs). Past the limit the session ends with the stream error
``<policy-violation/>`` (RFC 6120 §4.9.3.14: a local limit the client ran
over by not reading, like a stanza over the size limit; not
``<resource-constraint/>``, §4.9.3.17, which says the *server* lacks the
resources, an invitation to come back later) and one rate-limited log line.
Nothing it had not received is lost inside the server: the backlog, and the
messages still in the carrier's buffer (the *in-flight ledger*: each message
written while the carrier was holding bytes, with the carrier byte offset
where it ends, dropped once the carrier has handed that offset to the
kernel), go back to the router, which keeps them in offline storage or
bounces them to their senders when storage refuses (RFC 6121 §8.5). The
ledger is returned only when the carrier's buffer will not reach the client
(the limit, a lost connection); a client that resumes reading in the moment
before the close may then see a few of those messages twice, once live and
once from offline storage, rather than none. Bytes the kernel already took
are beyond any server's knowledge without XEP-0198; the stream error comes
after them.

Teardown (``_finish``) always unregisters the session from the router, even
when returning the backlog fails (a full disk): the failure is one log line,
and the messages that could not be kept are bounced to their senders.

XEP-0198 (``iim.xmpp.sm``). Under stream management every stanza sent waits
in the stream's unacknowledged queue until the client's ``<a/>``; what the
client did not acknowledge is what it has not received, so it replaces the
in-flight ledger's guess (the ledger still covers messages sent before
``<enable/>``), and its bytes count within ``max_backlog`` like the
backlog's. A resumable session whose connection is lost is *detached*, not
ended: it stays registered and available, stanzas for it wait in the backlog
(within ``max_backlog``), and for ``sm_resume_timeout`` seconds (less if the
client asked for less) a new stream of the same account may resume it. The
new session takes over the old one's place in the router
(``Router.session_resumed``: the registry, presence, an offline delivery
under way), its counters, and what it had not sent: what the client did not
acknowledge is sent again, then the backlog. The old session ends quietly
(no logout, no unavailable presence); if its connection was still up (a cut
the server had not noticed yet) it gets ``<conflict/>``. When the time runs
out the session ends as any other: what was unacknowledged or queued goes to
offline storage, or bounces when storage refuses.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol
from xml.etree.ElementTree import Element

from iim.conf.limits import ServerLimits
from iim.text import printable
from iim.tlsbio import TLSFailed, TLSPump
from iim.xmpp import sasl
from iim.xmpp.errors import (
    LocalProtocolError, StanzaErrorCondition, StreamError, StreamErrorCondition,
)
from iim.xmpp.events import (
    Authenticated, AuthenticationFailed, ResumeRequested, SessionEstablished, StanzaReceived,
    StartTLS, StreamEnded, StreamManaged,
)
from iim.xmpp.jid import JID
from iim.xmpp.server_stream import ServerPolicy, ServerStream
from iim.xmpp.sm import Management, TooHigh
from iim.xmpp.stream import Phase

from .clock import Clock, Timer, clock_of
from .logins import LoginThrottle
from .quota import LimitLog, source_of

Cond = StreamErrorCondition
HIGH_WATER = 256 * 1024
_ELEMENT_OVERHEAD = 200     # bytes of objects per held element (measured: ~200 on CPython 3.11)
_MESSAGE = "{jabber:client}message"
SETTLE_AFTER_LOGIN = 2.0    # seconds from bind to the watchdog tick that frees the login's parser
_NOTHING: tuple = ()        # an empty backlog or ledger: an empty deque costs 760 B a session


class Carrier(Protocol):
    """What carries a session's bytes (socket or multiplexor link)."""

    peer: str

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def pending(self) -> int: ...


class SessionRouter(Protocol):
    """What a session asks of the router (``iim.server.router.Router`` is one)."""

    def bind_refusal(self, jid: JID) -> StanzaErrorCondition | None:
        """Why ``jid`` may not be bound now (RFC 6120 §7.6.2.1), or None."""

    def session_bound(self, session: "ClientSession") -> None: ...
    def stanza_from(self, session: "ClientSession", stanza: Element) -> None: ...
    def session_ended(self, session: "ClientSession") -> None: ...

    def keep_for_later(self, session: "ClientSession", stanza: Element) -> bool:
        """A stanza the session could not send: to offline storage, or bounced."""

    def keep_all_for_later(self, session: "ClientSession", stanzas: list[Element]) -> int:
        """The same for a whole backlog, in one storage transaction."""

    def bounce_to_local(self, stanza: Element, condition: StanzaErrorCondition) -> None:
        """An error for ``stanza`` to its local sender."""

    def resumable(self, session: "ClientSession", resumption_id: str) -> None:
        """XEP-0198: the session may be resumed with ``resumption_id``."""

    def resumption(self, resumption_id: str, username: str | None) -> "ClientSession | None":
        """The session ``username`` may resume with ``resumption_id``, or None."""

    def session_resumed(self, old: "ClientSession", new: "ClientSession") -> None:
        """``new`` resumed ``old``: it takes its place."""


@dataclass
class SessionContext:
    """What every session of one server shares."""

    policy: ServerPolicy
    tls_context: object | None          # ssl.SSLContext when a keystore is configured
    router: SessionRouter               # iim.server.router.Router
    storage: object                     # iim.server.storage.Storage
    log: logging.Logger
    negotiation_timeout: float = 30.0
    stanza_timeout: float = 60.0
    negotiating: set = field(default_factory=set)   # not yet established (flood limit)
    sessions: set = field(default_factory=set)      # every open session (shutdown)
    connections: set = field(default_factory=set)   # transports not yet lost (shutdown)
    limits: ServerLimits = ServerLimits()           # iim_server.* limits (iim/conf/limits.py)
    limit_log: LimitLog | None = None               # one line per limit per interval
    logins: LoginThrottle | None = None             # failed logins by account and source
    clock: Clock | None = None                      # the sessions' timers; None: the event loop
    turnover: int = 0                               # sessions opened + ended (iim/server/heap.py)

    def __post_init__(self) -> None:
        if self.logins is None:
            self.logins = LoginThrottle(self.limits)

    def now(self) -> float:
        """The time on the sessions' clock (iim/server/clock.py)."""
        return clock_of(self.clock).time()


class ClientSession:
    """One client stream; implements the router's SessionHandle."""

    # One per connected user: slots, not a __dict__ (issue 14, bench/memory.py).
    __slots__ = (
        "ctx", "carrier", "loop", "clock", "source", "stream", "tls", "jid", "priority",
        "available", "interested", "closed", "_bound", "_backlog", "_backlog_bytes",
        "_in_flight", "_written", "_high_water", "_paused", "_progress", "_partial",
        "_answer_held", "_input_held", "resumption_id", "detached", "_resume_timer", "_timer",
        "_watchdog",
        "__weakref__",      # 8 bytes: that a closed session is freed can be checked
    )

    def __init__(self, ctx: SessionContext, carrier: Carrier, *,
                 secure_transport: bool = False,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.ctx = ctx
        self.carrier = carrier
        self.loop = loop or asyncio.get_running_loop()
        self.clock = ctx.clock if ctx.clock is not None else self.loop
        self.source = carrier_source(carrier)
        # The authenticator must not hold the session: no session <-> stream cycle.
        self.stream = ServerStream(ctx.policy, partial(_authenticator, ctx, self.source),
                                   secure_transport=secure_transport,
                                   bind_check=getattr(ctx.router, "bind_refusal", None))
        self.tls = TLSPump()                # nothing until STARTTLS
        self.jid: JID | None = None
        self.priority: int | None = None
        self.available = False
        self.interested = False
        self.closed = False
        self._bound = False
        self._backlog: deque[tuple[Element, int]] | tuple = _NOTHING    # (stanza, bytes held)
        self._backlog_bytes = 0
        self._in_flight: deque[tuple[Element, int]] | tuple = _NOTHING  # (message, carrier offset)
        self._written = 0                                        # bytes given to the carrier
        self._high_water = min(HIGH_WATER, ctx.limits.max_backlog // 2)
        self._paused = False
        self._progress = self.clock.time()
        self._partial = False
        self._answer_held: Timer | None = None    # a failed login's answer
        self._input_held = bytearray()                          # what came meanwhile
        self.resumption_id: str | None = None                   # XEP-0198, when resumable
        self.detached = False                                   # connection lost, resumable
        self._resume_timer: Timer | None = None
        self._timer = self.clock.call_later(ctx.negotiation_timeout, self._negotiation_expired)
        self._watchdog = self.clock.call_later(ctx.stanza_timeout / 4, self._check_progress)
        ctx.negotiating.add(self)
        ctx.sessions.add(self)
        ctx.turnover += 1

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
        self.ctx.log.info("c2s %s: TLS failed: %s", self.carrier.peer, exc)
        self._finish(write=False)

    def _tls_up(self) -> None:
        info = self.tls.info()
        self.ctx.log.info("c2s %s: TLS established %s %s", self.carrier.peer, info.version,
                          info.cipher)
        self.stream.tls_established()

    def _feed(self, data: bytes) -> None:
        if self._answer_held is not None:
            self._hold_input(data)
            return
        events = self.stream.receive_data(data)
        self._note_progress(bool(events))
        failures = [e for e in events if isinstance(e, AuthenticationFailed)]
        if failures:
            self._count_failures(failures)
            if self.ctx.limits.auth_failure_delay > 0:
                self._answer_held = self.clock.call_later(
                    self.ctx.limits.auth_failure_delay, self._answer, events)
                return
        self._answer(events)

    def _answer(self, events: list) -> None:
        """Write what the stream queued and act on its events; after a held
        failure, go on with what the client sent meanwhile."""
        self._answer_held = None
        self._flush()
        for event in events:
            self._handle(event)
        if self._input_held and not self.closed:
            data, self._input_held = bytes(self._input_held), bytearray()
            self._feed(data)

    # -- failed logins (issue 11.7) --------------------------------------------
    #
    # A failed login is counted at once (LoginThrottle), but its <failure/>, and
    # whatever the stream did after it, waits auth_failure_delay seconds on a
    # timer: the core has no clock, and other sessions go on meanwhile. What the
    # client sends in that time waits too, up to one stanza's worth.

    def _count_failures(self, failures: list) -> None:
        now = self.clock.time()
        for failure in failures:
            if failure.condition == sasl.SASLFailure.NOT_AUTHORIZED.value:
                self.ctx.logins.failed(failure.username, self.source, now)

    def _hold_input(self, data: bytes) -> None:
        self._input_held += data
        if len(self._input_held) > self.ctx.policy.max_stanza_bytes:
            self._input_held = bytearray()
            self.close(StreamError(Cond.POLICY_VIOLATION,
                                   "too much sent while a failed login was being answered"))

    def _note_progress(self, completed: bool) -> None:
        if completed or not self.stream.unit_in_progress:
            self._progress, self._partial = self.clock.time(), False
        elif not self._partial:
            self._progress, self._partial = self.clock.time(), True

    # -- events ---------------------------------------------------------------

    def _handle(self, event) -> None:
        if isinstance(event, StanzaReceived):
            self.ctx.router.stanza_from(self, event.stanza)
        elif isinstance(event, StartTLS):
            self.tls.start(self.ctx.tls_context, server_side=True)
        elif isinstance(event, Authenticated):
            self.ctx.logins.succeeded(event.username, self.source)
            self.ctx.log.info("c2s %s: login %s (%s)", self.carrier.peer, event.username,
                              event.mechanism)
        elif isinstance(event, SessionEstablished):
            self._established(event.jid)
        elif isinstance(event, StreamManaged):
            self._managed(event)
        elif isinstance(event, ResumeRequested):
            self._resume(event)
        elif isinstance(event, StreamEnded):
            self._ended(event)

    def _established(self, jid: JID) -> None:
        self.jid = jid
        self._timer.cancel()
        self.ctx.negotiating.discard(self)
        security = self.security()
        self.ctx.log.info("c2s %s: session %s (%s)", self.carrier.peer, printable(str(jid)),
                          security)
        self._bound = True
        self._tick_soon()
        self.ctx.router.session_bound(self)

    # -- XEP-0198 resumption ------------------------------------------------------

    def _managed(self, event: StreamManaged) -> None:
        if event.resumption_id is not None:
            self.resumption_id = event.resumption_id
            self.ctx.router.resumable(self, event.resumption_id)

    def _resume(self, event: ResumeRequested) -> None:
        """A new stream asks to resume an old session (XEP-0198 §5)."""
        old = self.ctx.router.resumption(event.previd, self.stream.username)
        if old is None or old is self:
            self.ctx.log.info("c2s %s: resumption refused: no such session for %s",
                              self.carrier.peer, printable(self.stream.username or ""))
            self.stream.refuse_resumption()
            self._flush()
            return
        try:
            old.stream.sm.acknowledge(event.h)
        except TooHigh as exc:
            self.close(exc)
            return
        self._take_over(old)

    def _take_over(self, old: "ClientSession") -> None:
        management, backlog = old.hand_over()
        self.stream.resume(management, old.jid)
        self.jid, self.resumption_id, self._bound = old.jid, old.resumption_id, True
        self._timer.cancel()
        self.ctx.negotiating.discard(self)
        self._tick_soon()
        self.ctx.router.session_resumed(old, self)
        self._flush()
        again = management.rewind()
        self.ctx.log.info("c2s %s: session %s resumed (%s), %d stanzas sent again, %d queued",
                          self.carrier.peer, printable(str(self.jid)), self.security(),
                          len(again), len(backlog))
        for stanza in again + backlog:
            self.deliver(stanza)

    def hand_over(self) -> tuple[Management, list[Element]]:
        """A new stream resumed this session: end it quietly (no logout) and
        give up its counters and what it had not sent. A connection still up
        is told ``<conflict/>``."""
        if not self.detached:
            self._let_go(StreamError(Cond.CONFLICT, "the session was resumed elsewhere"))
        self.closed = True
        self._cancel_timers()
        self.ctx.negotiating.discard(self)
        self.ctx.sessions.discard(self)
        self.ctx.turnover += 1
        backlog = [stanza for stanza, _ in self._backlog]
        self._backlog, self._backlog_bytes = _NOTHING, 0
        return self.stream.sm, backlog

    def _resumable(self) -> bool:
        sm = self.stream.sm
        return (self._bound and not self.detached and self.resumption_id is not None
                and sm is not None and sm.max_seconds > 0)

    def _detach(self) -> None:
        """The connection is lost: wait for a resumption, at most the agreed time."""
        seconds = self.stream.sm.max_seconds
        self.ctx.log.info("c2s %s: connection lost; %s kept %ss for resumption",
                          self.carrier.peer, printable(str(self.jid)), seconds)
        self._let_go(None)
        self.carrier = _Lost(self.carrier.peer)
        self.tls = TLSPump()                    # the old connection's TLS state is freed
        self.detached = True
        self._resume_timer = self.clock.call_later(seconds, self._resume_expired)

    def _let_go(self, error: StreamError | None) -> None:
        """Leave the connection: the stream ends (with ``error`` on the wire
        when it is still up); messages the carrier held that the client was
        never asked to acknowledge wait in the backlog for what comes next."""
        taken = self._written - self.carrier.pending()
        unacked = {id(stanza) for stanza, _ in self.stream.sm.unacked}
        lost = [(stanza, held_size(stanza)) for stanza, end in self._in_flight
                if end > taken and id(stanza) not in unacked]
        if lost:
            self._backlog = deque([*lost, *self._backlog])
        self._backlog_bytes += sum(size for _, size in lost)
        self._in_flight = _NOTHING
        self._watchdog.cancel()
        if error is None:
            self.stream.close(None)
            self.stream.data_to_send()
            return
        self._last_words(error)
        try:
            if self.tls.handshake_done:
                self.carrier.write(self.tls.close())
            self.carrier.close()
        except (OSError, TLSFailed) as exc:
            self.ctx.log.debug("c2s %s: while closing: %s", self.carrier.peer, exc)

    def _last_words(self, error: StreamError | None) -> None:
        """The stream ends, ``error`` on the wire unless TLS is mid-handshake."""
        if self.tls.handshaking:
            self.stream.close(None)     # no plaintext into a TLS handshake
            self.stream.data_to_send()
        else:
            self.stream.close(error)
            self._flush()

    def _resume_expired(self) -> None:
        if self.detached and not self.closed:
            self.ctx.log.info("c2s %s: %s not resumed within %ss", self.carrier.peer,
                              printable(str(self.jid)), self.stream.sm.max_seconds)
            self._finish(write=False)

    def security(self) -> str:
        """How this session is protected, for logs and status."""
        parts = []
        info = self.tls.info()
        if info is not None:
            parts.append(f"{info.version} {info.cipher}")
        if self.stream.transport_secure:
            parts.append("TLS at the multiplexor")
        return " inside ".join(parts) or "no TLS"

    @property
    def transport_security(self) -> str:
        """For status: ``none``, ``legacy-ssl`` (TLS from the first byte, ended at
        the multiplexor), ``tls`` (STARTTLS with this server: end to end) or
        ``both`` (STARTTLS inside legacy SSL)."""
        starttls = self.tls.handshake_done
        legacy = self.stream.transport_secure
        return {(False, False): "none", (True, False): "legacy-ssl",
                (False, True): "tls", (True, True): "both"}[(legacy, starttls)]

    @property
    def established(self) -> bool:
        """Logged in and bound (no longer negotiating)."""
        return self.jid is not None and not self.closed

    def _ended(self, event: StreamEnded) -> None:
        if event.error is not None:
            who = "peer sent" if event.sent_by_peer else "sent"
            self.ctx.log.info("c2s %s: stream error (%s): %s", self.carrier.peer, who,
                              printable(str(event.error)))
        self._finish()

    # -- bytes out -----------------------------------------------------------

    def _flush(self) -> None:
        out = self.stream.data_to_send()
        if not out or self.closed:
            return
        try:
            out = self.tls.send(out)
        except TLSFailed:
            self._finish()
            return
        self._written += len(out)
        self.carrier.write(out)

    def deliver(self, stanza: Element) -> None:
        """Send a stanza to this client (the router's SessionHandle API)."""
        if self.detached and not self.closed:
            self._hold(stanza)                  # for a resumption, within max_backlog
            return
        if self.closed or self.stream.phase is not Phase.ESTABLISHED:
            self.ctx.router.keep_for_later(self, stanza)
            return
        if self._backlog or not self._writable():
            self._hold(stanza)
            return
        self._send_stanza(stanza)

    def _hold(self, stanza: Element) -> None:
        """Into the backlog; past ``max_backlog`` bytes waiting, the session ends."""
        size = held_size(stanza)
        if not self._backlog:
            self._backlog = deque()
        self._backlog.append((stanza, size))
        self._backlog_bytes += size
        self._check_backlog()

    def _check_backlog(self) -> None:
        """The backlog, what the client has not acknowledged (XEP-0198) and
        what the carrier holds: within ``max_backlog``, or the session ends."""
        sm = self.stream.sm
        waiting = self._backlog_bytes + self.carrier.pending() + (sm.unacked_bytes if sm else 0)
        if waiting > self.ctx.limits.max_backlog:
            self._overflow(waiting)

    def _overflow(self, waiting: int) -> None:
        if self.ctx.limit_log is not None:
            self.ctx.limit_log.hit("iim_server.max_backlog", self.clock.time(),
                                   f"{printable(str(self.jid))}: {waiting} bytes unread")
        limit = self.ctx.limits.max_backlog
        self.close(StreamError(Cond.POLICY_VIOLATION,
                               f"more than {limit} bytes waiting for a client that does not "
                               "read; what it did not receive is kept for its next login"),
                   unreachable=True)

    def _send_stanza(self, stanza: Element) -> None:
        try:
            self.stream.send_stanza(stanza, held_size(stanza) if self.stream.sm else 0)
        except LocalProtocolError as exc:          # a name XML allows but we cannot write
            self.ctx.log.warning("c2s %s: stanza for %s not sent: %s", self.carrier.peer,
                                 self.jid, exc)
            return
        self._flush()
        self._note_in_flight(stanza)
        if self.stream.sm is not None:
            self._check_backlog()

    def _note_in_flight(self, stanza: Element) -> None:
        """Ledger: a message the carrier still holds (see the module docstring)."""
        pending = self.carrier.pending()
        taken = self._written - pending
        while self._in_flight and self._in_flight[0][1] <= taken:
            self._in_flight.popleft()
        if pending and stanza.tag == _MESSAGE:
            if not self._in_flight:
                self._in_flight = deque()
            self._in_flight.append((stanza, self._written))
        elif not self._in_flight:
            self._in_flight = _NOTHING

    def _writable(self) -> bool:
        return not self._paused and self.carrier.pending() <= self._high_water

    def pause_writing(self) -> None:
        """The carrier's buffer is full: hold stanzas in the backlog."""
        self._paused = True

    def resume_writing(self) -> None:
        """The carrier drained: send the backlog, in order, while it takes it;
        the ledger forgets the messages the carrier has sent (a WebSocket or
        BOSH carrier holds every message a moment, and an idle user would
        otherwise keep the last ones it got, whole, until the next)."""
        self._paused = False
        while self._backlog and self._writable() and not self.closed:
            stanza, size = self._backlog.popleft()
            self._backlog_bytes -= size
            self._send_stanza(stanza)
        if not self._backlog:
            self._backlog = _NOTHING
        if self._in_flight:
            taken = self._written - self.carrier.pending()
            while self._in_flight and self._in_flight[0][1] <= taken:
                self._in_flight.popleft()
            if not self._in_flight:
                self._in_flight = _NOTHING

    def _unsent(self, unreachable: bool) -> list[Element]:
        """What the client has not received: the backlog, and when the carrier's
        buffer will not reach it either, the messages still in that buffer."""
        unsent = [stanza for stanza, _ in self._backlog]
        sm = self.stream.sm
        if sm is not None:                      # unacknowledged: not received (XEP-0198)
            unacked = sm.release()
            seen = {id(stanza) for stanza in unacked}
            unsent[:0] = unacked
            self._in_flight = deque((s, end) for s, end in self._in_flight if id(s) not in seen)
        if unreachable:
            taken = self._written - self.carrier.pending()
            unsent[:0] = [stanza for stanza, end in self._in_flight if end > taken]
        self._backlog, self._backlog_bytes, self._in_flight = _NOTHING, 0, _NOTHING
        return unsent

    def _return_unsent(self, unsent: list[Element]) -> None:
        """To offline storage (the router bounces what storage refuses); if
        storage fails outright, one log line and the messages bounce."""
        if not unsent:
            return
        try:
            self.ctx.router.keep_all_for_later(self, unsent)
        except Exception as exc:  # noqa: BLE001 - a full disk must not leave a ghost session
            self.ctx.log.error("c2s %s: %d stanzas for %s could not be kept, bounced to their "
                               "senders: %s", self.carrier.peer, len(unsent),
                               printable(str(self.jid)), printable(str(exc)))
            self._bounce(unsent)

    def _bounce(self, stanzas: list[Element]) -> None:
        for stanza in stanzas:
            if stanza.tag == _MESSAGE:
                try:
                    self.ctx.router.bounce_to_local(stanza,
                                                    StanzaErrorCondition.SERVICE_UNAVAILABLE)
                except Exception:  # noqa: BLE001 - keep bouncing the others
                    self.ctx.log.debug("c2s %s: bounce failed", self.carrier.peer)

    # -- ending ---------------------------------------------------------------------

    def close(self, error: StreamError | None = None, *, unreachable: bool = False) -> None:
        """End the session (router: resource conflict; server: shutdown).
        ``unreachable``: what the carrier still holds will not reach the client."""
        if self.closed:
            return
        if error is not None:
            self.ctx.log.info("c2s %s: closing: %s", self.carrier.peer, error)
        if self.detached:                       # nothing to write to
            self._finish(write=False)
            return
        self._last_words(error)
        self._finish(unreachable=unreachable)

    def connection_lost(self) -> None:
        """The carrier is gone (socket closed, mux link down); a resumable
        session is detached instead of ended (XEP-0198 §5)."""
        if self._resumable() and not self.closed:
            self._detach()
            return
        if self.detached:
            return
        if not self.closed:
            self.ctx.log.info("c2s %s: connection closed", self.carrier.peer)
        self._finish(write=False, unreachable=True)

    def _finish(self, write: bool = True, unreachable: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_timers()
        self.ctx.negotiating.discard(self)
        self.ctx.sessions.discard(self)
        self.ctx.turnover += 1
        unsent = self._unsent(unreachable)      # before closing: the carrier still counts
        try:
            if write and self.tls.handshake_done:
                self.carrier.write(self.tls.close())
            self.carrier.close()
        except (OSError, TLSFailed) as exc:     # the peer is gone already: carry on
            self.ctx.log.debug("c2s %s: while closing: %s", self.carrier.peer, exc)
        finally:                                # the bookkeeping happens whatever the socket did
            self._leave_router(unsent)

    def _leave_router(self, unsent: list[Element]) -> None:
        """Return what was not sent, then unregister, the second whatever the first did."""
        try:
            self._return_unsent(unsent)
        finally:
            if self._bound:
                self.ctx.router.session_ended(self)
                self.ctx.log.info("c2s %s: logout %s", self.carrier.peer,
                                  printable(str(self.jid)))

    # -- timers --------------------------------------------------------------------

    def _cancel_timers(self) -> None:
        self._timer.cancel()
        self._watchdog.cancel()
        for timer in (self._answer_held, self._resume_timer):
            if timer is not None:
                timer.cancel()

    def _negotiation_expired(self) -> None:
        if not self.closed and not self._bound:
            self.ctx.log.info("c2s %s: negotiation not finished in %ss", self.carrier.peer,
                              self.ctx.negotiation_timeout)
            self.close(StreamError(Cond.CONNECTION_TIMEOUT, "negotiation took too long"))

    def _tick_soon(self) -> None:
        """The login is over: the watchdog's next tick (which frees the parser if no
        stanza is arriving) comes SETTLE_AFTER_LOGIN s from now, then every
        stanza_timeout / 4 again."""
        settle = min(SETTLE_AFTER_LOGIN, self.ctx.stanza_timeout / 4)
        self._watchdog.cancel()
        self._watchdog = self.clock.call_later(settle, self._check_progress)

    def _check_progress(self) -> None:
        if self.closed:
            return
        stalled = self.clock.time() - self._progress
        if self._partial and stalled >= self.ctx.stanza_timeout:
            self.ctx.log.info("c2s %s: stanza stalled for %.0fs", self.carrier.peer, stalled)
            self.close(StreamError(Cond.CONNECTION_TIMEOUT, "a stanza took too long"))
            return
        if not self._partial:
            self.stream.release_parser()        # quiet: no expat parser until the next bytes
        self._watchdog = self.clock.call_later(self.ctx.stanza_timeout / 4, self._check_progress)



class _Lost:
    """The carrier of a detached session: its connection is gone, nothing is written."""

    def __init__(self, peer: str) -> None:
        self.peer = peer

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def pending(self) -> int:
        return 0


def carrier_source(carrier: Carrier) -> str:
    """The source per-source limits count a session under: what the carrier
    says (a socket's peer, the client address a multiplexor's OPEN carried),
    else its peer address."""
    source = getattr(carrier, "source", None)
    if source:
        return source
    return source_of(carrier.peer.rpartition(":")[0] or carrier.peer)   # "[v6]:port" too


def _authenticator(ctx: SessionContext, source: str, tls: bool) -> sasl.ServerAuth:
    storage = ctx.storage
    return sasl.ServerAuth(storage.credentials, ctx.policy.domain, tls=tls,
                           secret=storage.server_secret(), admit=partial(_admit, ctx, source))


def _admit(ctx: SessionContext, source: str, username: str) -> bool:
    """The login throttle's word, asked before a named account is checked."""
    now = ctx.now()
    refused_by = ctx.logins.refusal(username, source, now)
    if refused_by is None:
        return True
    if ctx.limit_log is not None:
        ctx.limit_log.hit(refused_by, now, f"{printable(username)} from {source}")
    return False


def held_size(stanza: Element) -> int:
    """What a stanza held in memory costs, roughly: the characters of its
    names, attributes and text, and ``_ELEMENT_OVERHEAD`` per element."""
    size = 0
    for element in stanza.iter():
        size += _ELEMENT_OVERHEAD + len(element.tag) + len(element.text or "") \
            + len(element.tail or "")
        for name, value in element.attrib.items():
            size += len(name) + len(value)
    return size
