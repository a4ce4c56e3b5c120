"""The server end of the multiplexor link (docs/muxlink.md): many clients, one TCP link.

Theory of operation. A multiplexor relay thread connects to
``iim_mux.serverport`` and proves itself (HELLO, CHALLENGE, AUTH, READY;
sources outside ``allow`` are closed before a byte is read). The link's first
byte says whether it starts with TLS (0x16, a TLS handshake record) or with a
plain HELLO (0x01); ``muxlink_tls`` decides which is acceptable from where
(docs/muxlink.md "TLS on the link"). Over TLS (1.3, our certificate, driven
over memory BIOs by iim._fastmux.LinkTls) both proofs cover the session's
RFC 9266 tls-exporter, so a set-up relayed from another session fails.
Without a shared secret only loopback links are accepted. After READY the
link carries sessions: every OPEN becomes an ordinary ``ClientSession`` whose
carrier is a ``MuxCarrier``, so STARTTLS, SASL, binding, timers and
backpressure run exactly as for a socket client (TLS over memory BIOs).

Flow control is per session and counted in payload bytes. Each direction
starts with the READY window of credit:

* mux -> server: the mux may send ``allowance`` more bytes. When
  ``session.data_received`` returns, the session has consumed the bytes and
  we grant them back with WINDOW. DATA beyond the allowance closes the link.
* server -> mux: the carrier sends DATA only within ``credit`` (what the mux
  granted); the rest waits in the carrier, and ``pending()`` reports it, so a
  client that does not read sees c2s backpressure and never stalls the other
  sessions. Above ``HIGH_WATER`` queued bytes the carrier calls the session's
  ``pause_writing`` (it holds stanzas in its backlog) and withholds the
  WINDOW credit it owes the mux (as the socket listener stops reading a
  client that does not read); below ``LOW_WATER`` it calls ``resume_writing``
  and pays the credit. While the link's own socket buffer is full
  (``pause_writing`` on the link) no carrier sends DATA.

Frames go out through one buffer flushed once per event-loop turn, so a burst
of deliveries to many sessions costs one write, not one per frame.

Each link may hold at most ``max_sessions`` sessions and open ``open_rate``
per second (bursts of twice that); beyond either it is closed with
LINKCLOSE ``overload``, logged by the server's limit log; other links carry on.

Keepalive: after ``ping_interval`` seconds without a frame from the mux we
send PING; no PONG within ``ping_timeout`` closes the link (``timeout``).
Link loss ends every session of the link with ``connection_lost()``, so the
router sends their unavailable presence.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
from dataclasses import dataclass, field

from iim._fastmux import LinkTls, LinkTlsContext, LinkTlsError
from iim.conf.limits import ServerLimits
from iim.linkconnection import (
    Flow, HelloReceived, LinkClosed, LinkConnection, LinkSettings, LinkState, LinkUp,
    SessionClosed, SessionCredit, SessionData, SessionOpened,
)
from iim.muxlink import (
    LINGER_SECONDS, MAX_CREDIT, MAX_PAYLOAD, TLS_HANDSHAKE, CloseReason,
)
from iim.text import host_port, printable
from iim.xmpp.errors import StreamError, StreamErrorCondition

from .admission import Admission, Refusal
from .c2s import HIGH_WATER, ClientSession, SessionContext
from .quota import TokenBucket, source_of
from .security_info import CarrierTLS, Layer, TLSEnd

__all__ = ["LinkState", "MuxCarrier", "MuxLinkConfig", "MuxLinkProtocol", "MuxListener",
           "link_tls_context", "start_mux_listener"]

DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")
LOW_WATER = HIGH_WATER // 4
UNAUTHENTICATED = ("mux links are not authenticated (no iim_server.muxlink_secretfile): "
                   "accepted from loopback only")


@dataclass
class MuxLinkConfig:
    """How the server end treats its links (from iim.conf; tests shorten the timers)."""

    allow: tuple = DEFAULT_ALLOW
    """Networks a mux may connect from (``iim_server.muxlink_allow``); others are refused."""
    secret: bytes | None = None
    """The shared secret (``iim_server.muxlink_secretfile``); None: no proof asked."""
    initial_window: int = 65536
    """Per-session credit in each direction after OPEN (sent in READY)."""
    ping_interval: float = 30.0
    """Seconds without a frame from the mux before we send PING."""
    ping_timeout: float | None = None
    """Seconds to wait for the PONG (None: ``ping_interval``)."""
    handshake_timeout: float = 30.0
    """Seconds from connect to READY."""
    max_unauthenticated: int | None = None
    """Like ``iim_server.max_unauthenticated`` on the client port: more sessions still
    negotiating than this and a new one is refused with ``<resource-constraint/>``."""
    admission: Admission | None = None
    """The server's per-source gate (iim/server/admission.py), applied to the client
    address each OPEN carries; None: no per-source limits."""
    tls_mode: str = "auto"
    """``iim_server.muxlink_tls``: TLS unless loopback (auto), always (on), never (off)."""
    tls_context: LinkTlsContext | None = None
    """Our certificate for link TLS (from ``iim_server.sslkeystore``); None: no TLS."""
    max_sessions: int = ServerLimits.muxlink_max_sessions
    """Sessions one link may hold (``iim_server.muxlink_max_sessions``)."""
    open_rate: int = ServerLimits.muxlink_open_rate
    """OPENs per second on one link, bursts of twice that (``iim_server.muxlink_open_rate``)."""
    networks: tuple = field(init=False, repr=False)
    settings: LinkSettings = field(init=False, repr=False)
    """What each link's LinkConnection is told (the protocol's part of the above)."""

    def __post_init__(self) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in self.allow)
        if not 1 <= self.initial_window <= MAX_CREDIT:
            raise ValueError(f"initial window {self.initial_window} out of range")
        if self.ping_timeout is None:
            self.ping_timeout = self.ping_interval
        self.settings = LinkSettings(
            secret=self.secret, initial_window=self.initial_window,
            ping_interval=self.ping_interval, ping_timeout=self.ping_timeout,
            handshake_timeout=self.handshake_timeout, max_sessions=self.max_sessions,
            open_rate=self.open_rate)

    def allows(self, host: str) -> bool:
        address = _ip(host)
        return any(address in network for network in self.networks)

    def wants_tls(self, loopback: bool) -> bool:
        return self.tls_mode == "on" or (self.tls_mode == "auto" and not loopback)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.split("%")[0])
    return getattr(address, "ipv4_mapped", None) or address


class MuxCarrier:
    """A ClientSession's carrier over one session of a link. Its credit and allowance
    are the connection's ``Flow``; what waits for credit waits here."""

    transport_tls: CarrierTLS | None = None     # legacy SSL ended at the mux (per instance)

    def __init__(self, link: "MuxLinkProtocol", sid: int, peer: str, flow: Flow,
                 source: str | None = None) -> None:
        self.link = link
        self.sid = sid
        self.peer = peer
        self.source = source        # the client's, from OPEN: what per-source limits count
        self.flow = flow
        self.close_reason = CloseReason.NORMAL      # what our CLOSE will say
        self.closed = False         # close() called or the mux closed: no more writes
        self.ended = False          # CLOSE sent or received: the id is forgotten
        self.blocked = False        # above HIGH_WATER: the session holds its stanzas
        self.owed = 0               # credit withheld from the mux while blocked
        self.session: ClientSession | None = None
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._linger: asyncio.TimerHandle | None = None

    @property
    def credit(self) -> int:
        """Bytes we may still send (granted by the mux)."""
        return self.flow.credit

    @property
    def allowance(self) -> int:
        """Bytes the mux may still send us (granted by us)."""
        return self.flow.allowance

    # -- the Carrier protocol (iim.server.c2s) --------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        self.flush()
        if self._queued > HIGH_WATER and not self.blocked:
            self.blocked = True
            _call(self.session, "pause_writing")

    def pending(self) -> int:
        """Bytes written but not yet sent for want of credit."""
        return self._queued

    def close(self) -> None:
        """Send what credit allows, then CLOSE; wait up to LINGER_SECONDS for credit."""
        if self.closed:
            return
        self.closed = True
        self.flush()
        if not self.ended and self._queue:
            self._linger = asyncio.get_running_loop().call_later(LINGER_SECONDS, self.end)

    # -- the link's side ------------------------------------------------------------

    def flush(self) -> None:
        flow, link = self.flow, self.link
        while self._queue and flow.credit > 0 and link.can_send_data:
            link.send_data(self.sid, self._take(min(flow.credit, MAX_PAYLOAD)))
        if self.closed and not self._queue:
            self.end()
        elif self.blocked and self._queued <= LOW_WATER:
            self._unblock()

    def received(self, size: int) -> None:
        """The session consumed ``size`` bytes of DATA: grant them back, unless its
        own output is backed up (then owe them, as a socket client is not read)."""
        if self.closed:
            return
        if self.blocked:
            self.owed += size
            return
        self.link.grant(self.sid, size)

    def _unblock(self) -> None:
        """Drained: the session sends its held stanzas; the mux gets its withheld credit."""
        self.blocked = False
        _call(self.session, "resume_writing")
        if self.owed and not self.closed:
            self.link.grant(self.sid, self.owed)
            self.owed = 0

    def _take(self, size: int) -> bytes:
        head = self._queue.popleft()
        if len(head) > size:
            self._queue.appendleft(head[size:])
            head = head[:size]
        self._queued -= len(head)
        return head

    def end(self, reason: CloseReason | None = None) -> None:
        """Send CLOSE (dropping what is still queued) and forget the id."""
        if self.ended:
            return
        self.detach()
        self.link.session_ended(self, reason if reason is not None else self.close_reason)

    def detach(self) -> None:
        """The mux closed the session, or the link is gone: nothing more goes out."""
        self.closed = self.ended = True
        self._queue.clear()
        self._queued = 0
        if self._linger is not None:
            self._linger.cancel()


class MuxLinkProtocol(asyncio.Protocol):
    """One link from a multiplexor relay thread: the asyncio adapter over a
    LinkConnection (iim/linkconnection.py). It moves bytes (through the link's
    TLS session when there is one), arms the connection's one timer, and turns
    session events into ClientSession calls; the protocol decisions are the
    connection's."""

    def __init__(self, ctx: SessionContext, config: MuxLinkConfig | None = None,
                 links: set | None = None) -> None:
        self.ctx = ctx
        self.config = config or MuxLinkConfig()
        self.links = links if links is not None else set()
        self.log = ctx.log
        self.conn: LinkConnection | None = None
        self.sessions: dict[int, ClientSession] = {}
        self.name = "mux link"
        self.transport: asyncio.Transport | None = None
        self._flush_scheduled = False
        self._paused = False
        self._closed_why: str | None = None
        self._severity = logging.INFO
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._linger: asyncio.TimerHandle | None = None
        self._loopback = False
        self._started = False           # the first byte arrived (TLS or plain decided)
        self._tls: LinkTls | None = None

    @property
    def state(self) -> LinkState:
        return self.conn.state if self.conn is not None else LinkState.CLOSED

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        host, port = transport.get_extra_info("peername")[:2]
        self.name = f"mux link from {host_port(host, port)}"
        if not self.config.allows(host):
            self._closed_why = "refused"
            self.log.warning("%s refused: not an allowed source (iim_server.muxlink_allow)",
                             self.name)
            transport.abort()
            return
        self._loopback = _ip(host).is_loopback
        self.conn = LinkConnection(self.config.settings, now=self.loop.time(),
                                   loopback=self._loopback,
                                   admit_open=TokenBucket(self.config.open_rate).allow)
        self.links.add(self)
        _connections(self.ctx).add(self)
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or conn.state is LinkState.CLOSED:
            return
        if not self._started and not self._start(data[0]):
            return
        if self._tls is not None:
            data = self._decrypt(data)
            if not data:
                return
        conn.receive_data(data, self.loop.time())
        self._handle_events()
        self._flush_out()
        self._arm_timer()

    def eof_received(self) -> bool:
        return False

    # -- TLS or not (docs/muxlink.md "TLS on the link") ---------------------------------

    def _start(self, first: int) -> bool:
        """The first byte: a TLS handshake, or a plain HELLO. False: refused."""
        self._started = True
        config = self.config
        if first == TLS_HANDSHAKE:
            if config.tls_mode == "off" or config.tls_context is None:
                why = ("iim_server.muxlink_tls is off" if config.tls_mode == "off" else
                       "no iim_server.sslkeystore to present")
                self._refuse(f"refused: it starts TLS and {why}")
                return False
            self._tls = LinkTls.accept(config.tls_context)
            self.name += " (TLS)"
            return True
        if config.wants_tls(self._loopback):
            why = ("iim_server.muxlink_tls is on" if config.tls_mode == "on" else
                   "it leaves the host" if config.tls_mode == "auto" else
                   "iim_server.muxlink_tls is off and it leaves the host")
            self.close_link(CloseReason.TLS, f"this link must use TLS ({why})",
                            log=f"refused without TLS: {why}")
            return False
        return True

    def _decrypt(self, data: bytes) -> bytes:
        """Ciphertext in, plaintext out; answers the handshake; b"" on failure."""
        tls = self._tls
        try:
            plain = tls.receive(data)
        except LinkTlsError as exc:
            self._refuse(f"TLS failed: {exc}")
            return b""
        out = tls.outgoing()
        if out:
            self.transport.write(out)
        if not self.conn.binding and tls.handshake_done:
            self.conn.set_binding(tls.exporter())
        return plain

    def _refuse(self, why: str) -> None:
        """Close without a LINKCLOSE (none can be read here): one log line."""
        self._closed_why, self._severity = why, logging.WARNING
        self.conn.abort()
        self._shut(linger=False)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for session in list(self.sessions.values()):
            session.carrier.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is None:
            return                          # refused at connection_made
        self.links.discard(self)
        _connections(self.ctx).discard(self)
        self._cancel_timer()
        if self._linger is not None:
            self._linger.cancel()
        if self.conn.state is not LinkState.CLOSED:
            why = f"{exc}" if exc else "the multiplexor closed the connection"
            self._closed_why, self._severity = f"lost ({why})", logging.WARNING
            self.conn.abort()
            self._end_sessions()

    # -- events in --------------------------------------------------------------------

    def _handle_events(self) -> None:
        """Act on the connection's events, one frame at a time (see LinkConnection)."""
        conn, handlers = self.conn, self._handlers
        while (event := conn.next_event()) is not None:
            handlers[type(event)](self, event)

    def _on_hello(self, event: HelloReceived) -> None:
        self.name += f" (instance {event.hello.instance}, thread {event.hello.thread})"

    def _on_up(self, event: LinkUp) -> None:
        self.log.info("%s up%s%s", self.name,
                      " (shared secret proved)" if event.secret_proved else "",
                      f" ({self._tls.version} {self._tls.cipher})" if self._tls else "")

    def _on_link_closed(self, event: LinkClosed) -> None:
        why = event.why
        if event.by_peer and event.text:
            why += f" ({printable(event.text)})"
        if event.limit is not None:
            limit_log = getattr(self.ctx, "limit_log", None)
            if limit_log is not None:
                limit_log.hit(event.limit, self.loop.time(), self.name)
        self._closed_why = why
        self._severity = logging.INFO if event.reason in _CALM else logging.WARNING
        self._shut(linger=not event.by_peer)

    def _on_open(self, event: SessionOpened) -> None:
        opened, sid = event.opened, event.sid
        source = source_of(opened.client_address)
        admission = self.config.admission
        refusal = admission.refusal(source) if admission is not None else None
        if refusal is Refusal.RATE:         # at once, as the listener closes a socket
            self.conn.close_session(sid, CloseReason.OVERLOAD, refusal.stream_error().text)
            self._want_flush()
            return
        carrier = MuxCarrier(self, sid, opened.peer, self.conn.flows[sid], source)
        if opened.legacy_tls:           # for iim.server.security_info
            carrier.transport_tls = CarrierTLS(Layer.LEGACY_SSL, TLSEnd.MULTIPLEXOR,
                                               opened.tls_version, opened.cipher)
        session = ClientSession(self.ctx, carrier, secure_transport=opened.legacy_tls,
                                loop=self.loop)
        carrier.session = session
        self.sessions[sid] = session
        tls = f", legacy SSL {opened.tls_version} {opened.cipher}" if opened.legacy_tls else ""
        self.log.debug("%s: session %d for %s to port %d%s", self.name, sid,
                       carrier.peer, opened.local_port, tls)
        if refusal is Refusal.COUNT:        # the client reads the stream error, then CLOSE
            carrier.close_reason = CloseReason.OVERLOAD
            session.close(refusal.stream_error())
            return
        self._refuse_if_flooded(session)

    def _refuse_if_flooded(self, session: ClientSession) -> None:
        limit = self.config.max_unauthenticated
        if limit is not None and len(self.ctx.negotiating) > limit:
            self.log.warning("c2s %s: refused: %d connections still negotiating",
                             session.carrier.peer, len(self.ctx.negotiating) - 1)
            session.close(StreamError(StreamErrorCondition.RESOURCE_CONSTRAINT,
                                      "too many connections negotiating"))

    def _on_data(self, event: SessionData) -> None:
        session = self.sessions.get(event.sid)
        if session is None:
            return                          # we closed it, in this same read
        try:
            session.data_received(event.data)
        except Exception:  # noqa: BLE001 - logged with its traceback, the session ends
            self.log.exception("c2s %s: internal error; closing the session",
                               session.carrier.peer)
            session.connection_lost()
        session.carrier.received(len(event.data))

    def _on_credit(self, event: SessionCredit) -> None:
        session = self.sessions.get(event.sid)
        if session is not None:
            session.carrier.flush()

    def _on_session_closed(self, event: SessionClosed) -> None:
        session = self.sessions.pop(event.sid, None)
        if session is None:
            return
        session.carrier.detach()
        self.log.debug("%s: session %d closed by the multiplexor: %s %s", self.name,
                       event.sid, event.reason, printable(event.text))
        session.connection_lost()

    _handlers = {
        HelloReceived: _on_hello,
        LinkUp: _on_up,
        LinkClosed: _on_link_closed,
        SessionOpened: _on_open,
        SessionData: _on_data,
        SessionCredit: _on_credit,
        SessionClosed: _on_session_closed,
    }

    # -- frames out -------------------------------------------------------------------

    @property
    def can_send_data(self) -> bool:
        return self.conn.state is LinkState.UP and not self._paused

    def send_data(self, sid: int, data: bytes) -> None:
        self.conn.send_data(sid, data)
        self._want_flush()

    def grant(self, sid: int, credit: int) -> None:
        self.conn.grant(sid, credit)
        self._want_flush()

    def _want_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        self._flush_scheduled = False
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            if self._tls is not None:
                self._tls.send(data)
                data = self._tls.outgoing()
            self.transport.write(data)

    def session_ended(self, carrier: MuxCarrier, reason: CloseReason) -> None:
        """A carrier is done (its session closed): tell the mux, forget the id."""
        session = self.sessions.get(carrier.sid)
        if session is not None and session.carrier is carrier:
            del self.sessions[carrier.sid]
            self.conn.close_session(carrier.sid, reason)
            self._want_flush()

    # -- ending the link ----------------------------------------------------------------

    def close_link(self, reason: CloseReason, text: str, *, log: str | None = None) -> None:
        """LINKCLOSE with ``reason`` and ``text``, end the sessions, close lingering.

        The one log line says ``log``, else the reason and text. Lingering (as
        SocketCarrier does): our FIN follows the LINKCLOSE, and we read and
        discard until the mux closes or LINGER_SECONDS pass, because closing
        with its bytes unread would send a RST that can destroy the LINKCLOSE
        before the mux reads why."""
        if self.state is LinkState.CLOSED:
            return
        self.conn.close(reason, text)
        self._closed_why = log or f"{reason} ({text})"
        self._severity = logging.INFO if reason in _CALM else logging.WARNING
        self._shut(linger=True)

    def shutdown(self) -> None:
        """The server is stopping: sessions get <system-shutdown/>, the mux LINKCLOSE."""
        error = StreamError(StreamErrorCondition.SYSTEM_SHUTDOWN)
        for session in list(self.sessions.values()):
            session.close(error)
            session.carrier.end()
        self.close_link(CloseReason.SHUTDOWN, "the server is stopping")

    def _shut(self, linger: bool) -> None:
        """The connection is closed: send its last bytes, end the sessions, close."""
        self._flush_out()
        self._cancel_timer()
        self._end_sessions()
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.abort)
        else:
            self.transport.close()

    def _end_sessions(self) -> None:
        """Every session of the link ends (their presence goes unavailable); one log line."""
        sessions = list(self.sessions.values())
        self.sessions.clear()
        for session in sessions:
            session.carrier.detach()
            session.connection_lost()
        self.log.log(self._severity, "%s closed: %s; %d session%s ended", self.name,
                     self._closed_why, len(sessions), "" if len(sessions) == 1 else "s")

    # -- the connection's timer -------------------------------------------------------------

    def _arm_timer(self) -> None:
        """One asyncio timer at the connection's next deadline. A later deadline
        (every frame moves the keepalive's) leaves an earlier timer armed: it
        fires, finds nothing due, and is armed again."""
        when = self.conn.get_timer()
        if when is None:
            self._cancel_timer()
        elif self._timer is None or when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = self.loop.call_at(when, self._on_timer), when

    def _on_timer(self) -> None:
        self._timer = None
        self.conn.handle_timer(self.loop.time())
        self._handle_events()
        self._flush_out()
        if self.conn.state is not LinkState.CLOSED:
            self._arm_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_CALM = (CloseReason.NORMAL, CloseReason.SHUTDOWN)


def link_tls_context(material) -> LinkTlsContext:
    """The server's link TLS context from its key material (iim_server.sslkeystore):
    the key travels as PEM in process memory only (LinkTlsError if OpenSSL refuses)."""
    from cryptography.hazmat.primitives import serialization
    from iim.keys.context import wire_chain
    key = material.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in wire_chain(material))
    return LinkTlsContext(server=True, key_pem=key, chain_pem=chain)


def _call(session: ClientSession | None, hook: str) -> None:
    """The c2s backpressure hooks (``pause_writing`` / ``resume_writing``), when present."""
    method = getattr(session, hook, None)
    if method is not None:
        method()


def _connections(ctx: SessionContext) -> set:
    """``ctx.connections``: what Server.stop waits for (a throwaway set without one)."""
    connections = getattr(ctx, "connections", None)
    return connections if connections is not None else set()


class MuxListener(asyncio.AbstractServer):
    """The listening socket and its links; ``close()`` also ends the links."""

    def __init__(self, server: asyncio.AbstractServer, links: set,
                 config: MuxLinkConfig | None = None) -> None:
        self.server = server
        self.links = links
        self.config = config

    def use_tls_context(self, context: LinkTlsContext | None) -> None:
        """A reloaded certificate: new links present it; established ones keep theirs."""
        if self.config is not None:
            self.config.tls_context = context

    @property
    def sockets(self):
        return self.server.sockets

    def close(self) -> None:
        self.server.close()
        for link in list(self.links):
            link.shutdown()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.server.get_loop()

    def is_serving(self) -> bool:
        return self.server.is_serving()

    async def start_serving(self) -> None:
        await self.server.start_serving()

    async def serve_forever(self) -> None:
        await self.server.serve_forever()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()


async def start_mux_listener(ctx: SessionContext, host: str | None, port: int, *,
                             allow=DEFAULT_ALLOW, secret: bytes | None = None,
                             initial_window: int = 65536, ping_interval: float = 30.0,
                             ping_timeout: float | None = None,
                             handshake_timeout: float = 30.0,
                             max_unauthenticated: int | None = None,
                             admission: Admission | None = None, tls_mode: str = "auto",
                             tls_context: LinkTlsContext | None = None,
                             max_sessions: int = ServerLimits.muxlink_max_sessions,
                             open_rate: int = ServerLimits.muxlink_open_rate) -> MuxListener:
    """Listen for multiplexor links on ``host:port`` (``iim_mux.serverport``)."""
    config = MuxLinkConfig(allow=tuple(allow), secret=secret, initial_window=initial_window,
                           ping_interval=ping_interval, ping_timeout=ping_timeout,
                           handshake_timeout=handshake_timeout,
                           max_unauthenticated=max_unauthenticated, admission=admission,
                           tls_mode=tls_mode, tls_context=tls_context,
                           max_sessions=max_sessions, open_rate=open_rate)
    links: set[MuxLinkProtocol] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MuxLinkProtocol(ctx, config, links), host, port,
                                      reuse_address=True)
    for sock in server.sockets:
        ctx.log.info("listening for multiplexor links on %s (from %s; %s; TLS %s)",
                     host_port(*sock.getsockname()[:2]), ", ".join(map(str, config.networks)),
                     "shared secret required" if secret is not None else "no shared secret",
                     tls_mode if tls_context is not None else "unavailable (no keystore)")
    if secret is None:
        ctx.log.warning("%s", UNAUTHENTICATED)
    return MuxListener(server, links, config)
