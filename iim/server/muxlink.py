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
import enum
import ipaddress
import logging
import secrets
from dataclasses import dataclass, field

from iim._fastmux import LinkTls, LinkTlsContext, LinkTlsError
from iim.conf.limits import ServerLimits
from iim.muxlink import (
    MAX_CREDIT, MAX_PAYLOAD, Auth, Challenge, Close, CloseReason, Frame, FrameDecoder,
    FrameType, Hello, LinkProtocolError, Ready, SessionOpen, check_mux_proof, decode_payload,
    encode_frame, encode_window, server_proof,
)
from iim.xmpp.errors import StreamError, StreamErrorCondition

from .admission import Admission, Refusal
from .c2s import HIGH_WATER, ClientSession, SessionContext
from .quota import TokenBucket, source_of

DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")
LINGER_SECONDS = 2.0
LOW_WATER = HIGH_WATER // 4
TLS_HANDSHAKE = 0x16            # the first byte of a TLS record carrying a handshake
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

    def __post_init__(self) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in self.allow)
        if not 1 <= self.initial_window <= MAX_CREDIT:
            raise ValueError(f"initial window {self.initial_window} out of range")
        if self.ping_timeout is None:
            self.ping_timeout = self.ping_interval

    def allows(self, host: str) -> bool:
        address = _ip(host)
        return any(address in network for network in self.networks)

    def wants_tls(self, loopback: bool) -> bool:
        return self.tls_mode == "on" or (self.tls_mode == "auto" and not loopback)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.split("%")[0])
    return getattr(address, "ipv4_mapped", None) or address


class LinkState(enum.Enum):
    HELLO = "waiting for HELLO"
    AUTH = "waiting for AUTH"
    UP = "up"
    CLOSED = "closed"


class MuxCarrier:
    """A ClientSession's carrier over one session of a link."""

    def __init__(self, link: "MuxLinkProtocol", sid: int, peer: str, window: int,
                 source: str | None = None) -> None:
        self.link = link
        self.sid = sid
        self.peer = peer
        self.source = source        # the client's, from OPEN: what per-source limits count
        self.close_reason = CloseReason.NORMAL      # what our CLOSE will say
        self.credit = window        # bytes we may still send (granted by the mux)
        self.allowance = window     # bytes the mux may still send us (granted by us)
        self.closed = False         # close() called or the mux closed: no more writes
        self.ended = False          # CLOSE sent or received: the id is forgotten
        self.blocked = False        # above HIGH_WATER: the session holds its stanzas
        self.owed = 0               # credit withheld from the mux while blocked
        self.session: ClientSession | None = None
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._linger: asyncio.TimerHandle | None = None

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

    def granted(self, credit: int) -> None:
        """WINDOW from the mux."""
        if self.credit + credit > MAX_CREDIT:
            raise LinkProtocolError(f"WINDOW raises session {self.sid}'s credit above 2^32-1")
        self.credit += credit
        self.flush()

    def flush(self) -> None:
        while self._queue and self.credit > 0 and self.link.can_send_data:
            chunk = self._take(min(self.credit, MAX_PAYLOAD))
            self.credit -= len(chunk)
            self.link.send(FrameType.DATA, self.sid, chunk)
        if self.closed and not self._queue:
            self.end()
        elif self.blocked and self._queued <= LOW_WATER:
            self._unblock()

    def _unblock(self) -> None:
        """Drained: the session sends its held stanzas; the mux gets its withheld credit."""
        self.blocked = False
        _call(self.session, "resume_writing")
        if self.owed and not self.closed:
            self.allowance += self.owed
            self.link.send(FrameType.WINDOW, self.sid, encode_window(self.owed))
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
    """One link from a multiplexor relay thread."""

    def __init__(self, ctx: SessionContext, config: MuxLinkConfig | None = None,
                 links: set | None = None) -> None:
        self.ctx = ctx
        self.config = config or MuxLinkConfig()
        self.links = links if links is not None else set()
        self.log = ctx.log
        self.state = LinkState.HELLO
        self.sessions: dict[int, ClientSession] = {}
        self.name = "mux link"
        self.transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._nonce = secrets.token_bytes(32)
        self._hello: Hello | None = None
        self._last_sid = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._paused = False
        self._closed_why: str | None = None
        self._severity = logging.INFO
        self._timer: asyncio.TimerHandle | None = None
        self._last_rx = 0.0
        self._ping: bytes | None = None
        self._ping_deadline = 0.0
        self._loopback = False
        self._started = False           # the first byte arrived (TLS or plain decided)
        self._tls: LinkTls | None = None
        self._binding = b""             # the TLS session's tls-exporter (RFC 9266)
        self._opens = TokenBucket(self.config.open_rate)

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        host, port = transport.get_extra_info("peername")[:2]
        self.name = f"mux link from {_address(host, port)}"
        if not self.config.allows(host):
            self._closed_why = "refused"
            self.state = LinkState.CLOSED
            self.log.warning("%s refused: not an allowed source (iim_server.muxlink_allow)",
                             self.name)
            transport.abort()
            return
        self._loopback = _ip(host).is_loopback
        self.links.add(self)
        _connections(self.ctx).add(self)
        self._timer = self.loop.call_later(self.config.handshake_timeout, self._set_up_expired)

    def data_received(self, data: bytes) -> None:
        if self.state is LinkState.CLOSED:
            return
        self._last_rx = self.loop.time()
        if not self._started and not self._start(data[0]):
            return
        if self._tls is not None:
            data = self._decrypt(data)
            if not data:
                return
        try:
            for frame in self._decoder.feed(data):
                self._receive(frame)
                if self.state is LinkState.CLOSED:
                    break
        except LinkProtocolError as exc:
            self.close_link(exc.reason, str(exc))
        self._flush_out()

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
            self._flush_out()
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
        if not self._binding and tls.handshake_done:
            self._binding = tls.exporter()
        return plain

    def _refuse(self, why: str) -> None:
        """Close without a LINKCLOSE (none can be read here): one log line."""
        self._closed_why, self._severity = why, logging.WARNING
        self._shut(linger=False)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for session in list(self.sessions.values()):
            session.carrier.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed_why == "refused":
            return
        self.links.discard(self)
        _connections(self.ctx).discard(self)
        self._cancel_timer()
        if self.state is not LinkState.CLOSED:
            why = f"{exc}" if exc else "the multiplexor closed the connection"
            self._closed_why, self._severity = f"lost ({why})", logging.WARNING
            self.state = LinkState.CLOSED
            self._end_sessions()

    # -- frames in --------------------------------------------------------------------

    def _receive(self, frame: Frame) -> None:
        if frame.type is FrameType.LINKCLOSE:
            self._on_linkclose(decode_payload(frame))
            return
        expected = {LinkState.HELLO: (FrameType.HELLO,), LinkState.AUTH: (FrameType.AUTH,),
                    LinkState.UP: _UP_FRAMES}[self.state]
        if frame.type not in expected:
            raise LinkProtocolError(f"unexpected {frame.type.name} ({self.state.value})")
        getattr(self, f"_on_{frame.type.name.lower()}")(frame)

    def _on_hello(self, frame: Frame) -> None:
        self._hello = Hello.decode(frame.payload)
        self.name += f" (instance {self._hello.instance}, thread {self._hello.thread})"
        if self.config.secret is None and not self._loopback:
            self.close_link(CloseReason.AUTH, "links from beyond the server's host need the "
                            "shared secret", log="refused: not loopback, and no shared secret "
                            "(iim_server.muxlink_secretfile)")
            return
        self.state = LinkState.AUTH
        challenge = Challenge(self.config.secret is not None, self._nonce)
        self.send(FrameType.CHALLENGE, 0, challenge.encode())

    def _on_auth(self, frame: Frame) -> None:
        proof = Auth.decode(frame.payload).proof
        secret = self.config.secret
        problem = _auth_problem(secret, proof, self._hello.nonce, self._nonce, self._binding)
        if problem:
            self.close_link(CloseReason.AUTH, "authentication failed",
                            log=f"authentication failed: {problem}")
            return
        ours = server_proof(secret, self._hello.nonce, self._nonce, self._binding) \
            if secret else b""
        self.send(FrameType.READY, 0, Ready(self.config.initial_window, ours).encode())
        self.state = LinkState.UP
        self.log.info("%s up%s%s", self.name, " (shared secret proved)" if secret else "",
                      f" ({self._tls.version} {self._tls.cipher})" if self._tls else "")
        self._cancel_timer()
        self._keepalive()

    def _on_linkclose(self, close: Close) -> None:
        text = f" ({_printable(close.text)})" if close.text else ""
        self._closed_why = f"by the multiplexor: {close.reason}{text}"
        self._severity = logging.INFO if close.reason in _CALM else logging.WARNING
        self._shut(linger=False)

    def _on_ping(self, frame: Frame) -> None:
        self.send(FrameType.PONG, 0, decode_payload(frame))

    def _on_pong(self, frame: Frame) -> None:
        if decode_payload(frame) == self._ping:
            self._ping = None

    def _on_open(self, frame: Frame) -> None:
        opened = SessionOpen.decode(frame.payload)
        if frame.sid <= self._last_sid:
            raise LinkProtocolError(f"OPEN of session {frame.sid}: ids must increase "
                                    f"(last was {self._last_sid})")
        self._last_sid = frame.sid
        if self._over_link_limits():
            return
        source = source_of(opened.client_address)
        admission = self.config.admission
        refusal = admission.refusal(source) if admission is not None else None
        if refusal is Refusal.RATE:         # at once, as the listener closes a socket
            self.send(FrameType.CLOSE, frame.sid,
                      Close(CloseReason.OVERLOAD, refusal.stream_error().text).encode())
            return
        carrier = MuxCarrier(self, frame.sid, opened.peer, self.config.initial_window, source)
        session = ClientSession(self.ctx, carrier, secure_transport=opened.legacy_tls,
                                loop=self.loop)
        carrier.session = session
        self.sessions[frame.sid] = session
        tls = f", legacy SSL {opened.tls_version} {opened.cipher}" if opened.legacy_tls else ""
        self.log.debug("%s: session %d for %s to port %d%s", self.name, frame.sid,
                       carrier.peer, opened.local_port, tls)
        if refusal is Refusal.COUNT:        # the client reads the stream error, then CLOSE
            carrier.close_reason = CloseReason.OVERLOAD
            session.close(refusal.stream_error())
            return
        self._refuse_if_flooded(session)

    def _over_link_limits(self) -> bool:
        """``muxlink_max_sessions`` and ``muxlink_open_rate``: beyond, the whole link goes
        (a mux that floods is broken or not ours), logged by the limit log."""
        config, now = self.config, self.loop.time()
        if len(self.sessions) >= config.max_sessions:
            param, text = "muxlink_max_sessions", f"more than {config.max_sessions} sessions"
        elif not self._opens.allow(now):
            param, text = "muxlink_open_rate", f"more than {config.open_rate} OPENs per second"
        else:
            return False
        limit_log = getattr(self.ctx, "limit_log", None)
        if limit_log is not None:
            limit_log.hit(f"iim_server.{param}", now, self.name)
        self.close_link(CloseReason.OVERLOAD, f"{text} on one link (iim_server.{param})")
        return True

    def _refuse_if_flooded(self, session: ClientSession) -> None:
        limit = self.config.max_unauthenticated
        if limit is not None and len(self.ctx.negotiating) > limit:
            self.log.warning("c2s %s: refused: %d connections still negotiating",
                             session.carrier.peer, len(self.ctx.negotiating) - 1)
            session.close(StreamError(StreamErrorCondition.RESOURCE_CONSTRAINT,
                                      "too many connections negotiating"))

    def _on_data(self, frame: Frame) -> None:
        data = decode_payload(frame)
        session = self._session(frame)
        if session is None:
            return
        carrier = session.carrier
        if len(data) > carrier.allowance:
            raise LinkProtocolError(f"session {frame.sid}: {len(data)} bytes of DATA beyond "
                                    f"the {carrier.allowance} bytes of credit granted")
        carrier.allowance -= len(data)
        self._consume(session, data)
        if carrier.closed:
            return
        if carrier.blocked:                 # its client is not reading: nor do we
            carrier.owed += len(data)
            return
        carrier.allowance += len(data)
        self.send(FrameType.WINDOW, frame.sid, encode_window(len(data)))

    def _consume(self, session: ClientSession, data: bytes) -> None:
        """One session's failure must not take the link's other sessions with it."""
        try:
            session.data_received(data)
        except Exception:  # noqa: BLE001 - logged with its traceback, the session ends
            self.log.exception("c2s %s: internal error; closing the session",
                               session.carrier.peer)
            session.connection_lost()

    def _on_window(self, frame: Frame) -> None:
        credit = decode_payload(frame)
        session = self._session(frame)
        if session is not None:
            session.carrier.granted(credit)

    def _on_close(self, frame: Frame) -> None:
        close = decode_payload(frame)
        session = self._session(frame)
        if session is None:
            return
        del self.sessions[frame.sid]
        session.carrier.detach()
        self.log.debug("%s: session %d closed by the multiplexor: %s %s", self.name,
                       frame.sid, close.reason, _printable(close.text))
        session.connection_lost()

    def _session(self, frame: Frame) -> ClientSession | None:
        """The open session a frame is for; None when it crossed our CLOSE."""
        session = self.sessions.get(frame.sid)
        if session is None and frame.sid > self._last_sid:
            raise LinkProtocolError(f"{frame.type.name} for session {frame.sid}, never opened")
        return session

    # -- frames out -------------------------------------------------------------------

    @property
    def can_send_data(self) -> bool:
        return self.state is LinkState.UP and not self._paused

    def send(self, ftype: FrameType, sid: int, payload: bytes = b"") -> None:
        if self.state is LinkState.CLOSED:
            return
        self._out.append(encode_frame(ftype, sid, payload))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        self._flush_scheduled = False
        if self._out and not self.transport.is_closing():
            data = b"".join(self._out)
            if self._tls is not None:
                self._tls.send(data)
                data = self._tls.outgoing()
            self.transport.write(data)
        self._out.clear()

    def session_ended(self, carrier: MuxCarrier, reason: CloseReason) -> None:
        """A carrier is done (its session closed): tell the mux, forget the id."""
        session = self.sessions.get(carrier.sid)
        if session is not None and session.carrier is carrier:
            del self.sessions[carrier.sid]
            self.send(FrameType.CLOSE, carrier.sid, Close(reason).encode())

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
        self._closed_why = log or f"{reason} ({text})"
        self._severity = logging.INFO if reason in _CALM else logging.WARNING
        self.send(FrameType.LINKCLOSE, 0, Close(reason, text).encode())
        self._shut(linger=True)

    def shutdown(self) -> None:
        """The server is stopping: sessions get <system-shutdown/>, the mux LINKCLOSE."""
        error = StreamError(StreamErrorCondition.SYSTEM_SHUTDOWN)
        for session in list(self.sessions.values()):
            session.close(error)
            session.carrier.end()
        self.close_link(CloseReason.SHUTDOWN, "the server is stopping")

    def _shut(self, linger: bool) -> None:
        self._flush_out()
        self.state = LinkState.CLOSED
        self._cancel_timer()
        self._end_sessions()
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()
            self._timer = self.loop.call_later(LINGER_SECONDS, self.transport.abort)
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

    # -- timers -------------------------------------------------------------------------

    def _set_up_expired(self) -> None:
        self._timer = None
        self.close_link(CloseReason.TIMEOUT, f"link set-up not finished in "
                                        f"{self.config.handshake_timeout:g}s")

    def _keepalive(self) -> None:
        now, config = self.loop.time(), self.config
        if self._ping is not None and now >= self._ping_deadline:
            self.close_link(CloseReason.TIMEOUT, f"no PONG in {config.ping_timeout:g}s")
            return
        if self._ping is None:
            idle = now - self._last_rx
            if idle < config.ping_interval:
                self._schedule(config.ping_interval - idle)
                return
            self._ping = secrets.token_bytes(8)
            self._ping_deadline = now + config.ping_timeout
            self.send(FrameType.PING, 0, self._ping)
        self._schedule(self._ping_deadline - now)

    def _schedule(self, delay: float) -> None:
        self._timer = self.loop.call_later(max(delay, 0.0), self._keepalive)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_CALM = (CloseReason.NORMAL, CloseReason.SHUTDOWN)
_UP_FRAMES = (FrameType.OPEN, FrameType.DATA, FrameType.CLOSE, FrameType.WINDOW,
              FrameType.PING, FrameType.PONG)


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


def _auth_problem(secret: bytes | None, proof: bytes, mux_nonce: bytes,
                  server_nonce: bytes, binding: bytes = b"") -> str | None:
    """Why AUTH fails (a line for the log), or None. Never includes the secret."""
    if secret is None:
        return ("the multiplexor sent a proof but no iim_server.muxlink_secretfile is "
                "configured") if proof else None
    if not proof:
        return "no proof, and a shared secret is required (iim_mux.muxlink_secretfile)"
    if not check_mux_proof(secret, mux_nonce, server_nonce, proof, binding):
        return ("wrong proof: the shared secrets differ" + (
            ", or the set-up was relayed from another TLS session" if binding else ""))
    return None


def _call(session: ClientSession | None, hook: str) -> None:
    """The c2s backpressure hooks (``pause_writing`` / ``resume_writing``), when present."""
    method = getattr(session, hook, None)
    if method is not None:
        method()


def _connections(ctx: SessionContext) -> set:
    """``ctx.connections``: what Server.stop waits for (a throwaway set without one)."""
    connections = getattr(ctx, "connections", None)
    return connections if connections is not None else set()


def _printable(text: str, limit: int = 200) -> str:
    """The mux's close text for one log line: no control characters, short."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
                     _address(*sock.getsockname()[:2]), ", ".join(map(str, config.networks)),
                     "shared secret required" if secret is not None else "no shared secret",
                     tls_mode if tls_context is not None else "unavailable (no keystore)")
    if secret is None:
        ctx.log.warning("%s", UNAUTHENTICATED)
    return MuxListener(server, links, config)
