"""The server end of the multiplexor link as a sans-I/O state machine (docs/muxlink.md).

Theory of operation. ``LinkConnection`` is the link protocol as the server
speaks it, and nothing else: no sockets, no asyncio, no clock, no TLS, no
XMPP. Bytes from the mux go in (``receive_data(data, now)``), one event per
frame comes out (``next_event()``), and what the server has to say goes out
as bytes (``data_to_send()``), the way h11 and aioquic do it. The adapter
(iim.server.muxlink) moves bytes between this object and the transport,
decrypts TLS, arms one timer at ``get_timer()`` and calls ``handle_timer(now)``,
and turns session events into ``ClientSession`` calls.

Events are pulled one at a time on purpose: the adapter may end the link or
a session while handling an event (a per-source refusal, a session that
fails), and the frames behind it must then not have been acted on yet,
exactly as if each frame had been read alone. ``receive_data`` only splits the
bytes into frames (a bad header closes the link before any frame of that
read is acted on); each ``next_event`` acts on one frame.

The set-up is a fixed sequence, and every state names the frames it accepts
and the state each one leads to (``TRANSITIONS``); any other frame raises
``RemoteProtocolError``, which closes the link with LINKCLOSE ``protocol``
(or the reason the error carries) and ends in a ``LinkClosed`` event::

    HELLO --HELLO/CHALLENGE--> AUTH --AUTH/READY--> UP (relaying) --LINKCLOSE--> CLOSED

The connection answers the set-up itself (CHALLENGE, the proof check, READY
with its own proof: docs/muxlink.md "Link set-up"), answers PING with PONG,
sends PING after ``ping_interval`` without a frame and closes the link when
no PONG comes, enforces the per-link limits (sessions, OPEN rate) and keeps
each session's flow-control accounting in a ``Flow``: ``credit`` (bytes we
may still send, granted by the mux's WINDOW) and ``allowance`` (bytes the
mux may still send, granted by our ``grant``). DATA beyond the allowance,
an id that was never opened, a WINDOW above 2^32-1 are the peer's errors;
``send_data`` beyond the credit is ours (``LocalProtocolError``).

After the link is closed (by us, by the peer or by an error) nothing more is
acted on or sent: calls become no-ops, as bytes still arriving while we
linger must be read and dropped.
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Callable

from iim.muxlink import (
    KEEPALIVE_SECONDS, MAX_CREDIT, NONCE_BYTES, PING_BYTES, SETUP_SECONDS, Auth,
    Challenge, Close, CloseReason, FrameDecoder, FrameType, Hello, LocalProtocolError, Ready,
    RemoteProtocolError, SessionOpen, check_data, check_mux_proof, check_ping, decode_window,
    encode_frame, encode_window, server_proof,
)

__all__ = [
    "Event", "Flow", "HelloReceived", "LinkClosed", "LinkConnection", "LinkSettings",
    "LinkState", "LinkUp", "SessionClosed", "SessionCredit", "SessionData", "SessionOpened",
    "TRANSITIONS",
]


class LinkState(enum.Enum):
    HELLO = "waiting for HELLO"
    AUTH = "waiting for AUTH"
    UP = "up"
    CLOSED = "closed"


_RELAYING = (FrameType.OPEN, FrameType.DATA, FrameType.CLOSE, FrameType.WINDOW,
             FrameType.PING, FrameType.PONG)

#: The frames each state accepts and the state each leads to; LINKCLOSE is accepted
#: in every open state. Any other frame is the peer's error (LINKCLOSE ``protocol``).
TRANSITIONS: dict[LinkState, dict[FrameType, LinkState]] = {
    LinkState.HELLO: {FrameType.HELLO: LinkState.AUTH, FrameType.LINKCLOSE: LinkState.CLOSED},
    LinkState.AUTH: {FrameType.AUTH: LinkState.UP, FrameType.LINKCLOSE: LinkState.CLOSED},
    LinkState.UP: {**dict.fromkeys(_RELAYING, LinkState.UP),
                   FrameType.LINKCLOSE: LinkState.CLOSED},
    LinkState.CLOSED: {},
}


@dataclass(frozen=True)
class LinkSettings:
    """What the server end of every link is told (iim_server.muxlink_*)."""

    secret: bytes | None = None
    """The shared secret; None: no proof asked, and links from loopback only."""
    initial_window: int = 65536
    """Per-session credit in each direction after OPEN (sent in READY)."""
    ping_interval: float = KEEPALIVE_SECONDS
    """Seconds without a frame from the mux before we send PING."""
    ping_timeout: float = KEEPALIVE_SECONDS
    """Seconds to wait for the PONG."""
    handshake_timeout: float = SETUP_SECONDS
    """Seconds from the connection to READY."""
    max_sessions: int = 10_000
    """Sessions one link may hold (``iim_server.muxlink_max_sessions``)."""
    open_rate: int = 1000
    """OPENs per second (``iim_server.muxlink_open_rate``), as the log line says it;
    the connection's ``admit_open`` enforces it."""


# -- events ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The mux said who it is (instance, thread); the set-up goes on."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class LinkUp:
    """READY sent: the link carries sessions from now on."""

    secret_proved: bool


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """OPEN accepted (id and limits checked): a new session with a fresh ``Flow``."""

    sid: int
    opened: SessionOpen


@dataclass(frozen=True, slots=True)
class SessionData:
    """DATA from the mux, within the allowance (already taken off it)."""

    sid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SessionCredit:
    """WINDOW from the mux: ``credit`` more bytes we may send (already added)."""

    sid: int
    credit: int


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """CLOSE from the mux: the session is over and its id forgotten."""

    sid: int
    reason: CloseReason
    text: str


@dataclass(frozen=True, slots=True)
class LinkClosed:
    """The link is over. ``by_peer``: the mux sent LINKCLOSE; else we did (the
    set-up failed, the peer broke the protocol, a limit or a timer). ``why``:
    the log line's words; ``limit``: the parameter a limit closed it for."""

    reason: CloseReason
    text: str
    by_peer: bool
    why: str
    limit: str | None = None


Event = (HelloReceived | LinkUp | SessionOpened | SessionData | SessionCredit | SessionClosed
         | LinkClosed)


class Flow:
    """One session's flow control, as the server sees it (owned by the connection)."""

    __slots__ = ("credit", "allowance")

    def __init__(self, window: int) -> None:
        self.credit = window        # bytes we may still send (granted by the mux)
        self.allowance = window     # bytes the mux may still send us (granted by us)


# -- the connection --------------------------------------------------------------------

class LinkConnection:
    """The server end of one link. ``loopback``: the mux connects from this host
    (a link without a secret is accepted from loopback only). ``admit_open(now)``
    takes one OPEN from the link's rate budget (False: over ``open_rate``)."""

    def __init__(self, settings: LinkSettings, *, now: float, loopback: bool,
                 admit_open: Callable[[float], bool] = lambda now: True,
                 nonce: bytes | None = None) -> None:
        self.settings = settings
        self.loopback = loopback
        self.state = LinkState.HELLO
        self.hello: Hello | None = None
        self.flows: dict[int, Flow] = {}
        self.binding = b""                  # the TLS session's tls-exporter (RFC 9266)
        self._admit_open = admit_open
        self._nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
        self._decoder = FrameDecoder()
        self._frames: deque[tuple[FrameType, int, bytes]] = deque()
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []
        self._last_sid = 0
        self._now = self._last_rx = now
        self._setup_deadline = now + settings.handshake_timeout
        self._ping: bytes | None = None
        self._ping_deadline = 0.0

    # -- bytes and events in ----------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the mux (plaintext), received at ``now``; then ``next_event()``."""
        if self.state is LinkState.CLOSED or not data:
            return
        self._now = self._last_rx = now
        try:
            self._frames.extend(self._decoder.frames(data))
        except RemoteProtocolError as exc:
            self._fail(exc)

    def next_event(self) -> Event | None:
        """The next event, acting on one more frame if need be; None: nothing more."""
        while not self._events:
            if not self._frames or self.state is LinkState.CLOSED:
                return None
            ftype, sid, payload = self._frames.popleft()
            try:
                self._receive(ftype, sid, payload)
            except RemoteProtocolError as exc:
                self._fail(exc)
        return self._events.popleft()

    def set_binding(self, binding: bytes) -> None:
        """The link's TLS session finished its handshake: its tls-exporter."""
        self.binding = binding

    # -- timers ---------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` has something to do next (None: never)."""
        if self.state is LinkState.CLOSED:
            return None
        if self.state is not LinkState.UP:
            return self._setup_deadline
        if self._ping is not None:
            return self._ping_deadline
        return self._last_rx + self.settings.ping_interval

    def handle_timer(self, now: float) -> None:
        """The set-up deadline, the keepalive PING and its PONG deadline."""
        self._now = now
        if self.state is LinkState.CLOSED:
            return
        settings = self.settings
        if self.state is not LinkState.UP:
            if now >= self._setup_deadline:
                self._end(CloseReason.TIMEOUT, "link set-up not finished in "
                          f"{settings.handshake_timeout:g}s")
        elif self._ping is not None:
            if now >= self._ping_deadline:
                self._end(CloseReason.TIMEOUT, f"no PONG in {settings.ping_timeout:g}s")
        elif now - self._last_rx >= settings.ping_interval:
            self._ping = secrets.token_bytes(PING_BYTES)
            self._ping_deadline = now + settings.ping_timeout
            self._send(FrameType.PING, 0, self._ping)

    # -- what the server says ---------------------------------------------------------

    def send_data(self, sid: int, data: bytes) -> None:
        """DATA for session ``sid``, within its credit (LocalProtocolError beyond it)."""
        if self.state is LinkState.CLOSED:
            return
        flow = self._flow(sid)
        if len(data) > flow.credit:
            raise LocalProtocolError(f"session {sid}: {len(data)} bytes of DATA beyond "
                                     f"the {flow.credit} bytes of credit")
        flow.credit -= len(data)
        self._out.append(encode_frame(FrameType.DATA, sid, data))

    def grant(self, sid: int, credit: int) -> None:
        """WINDOW: the mux may send ``credit`` more bytes for session ``sid``."""
        if self.state is LinkState.CLOSED:
            return
        self._flow(sid).allowance += credit
        self._out.append(encode_frame(FrameType.WINDOW, sid, encode_window(credit)))

    def close_session(self, sid: int, reason: CloseReason = CloseReason.NORMAL,
                      text: str = "") -> None:
        """CLOSE: the session is over; its id is forgotten."""
        if self.state is LinkState.CLOSED:
            return
        self._flow(sid)
        del self.flows[sid]
        self._send(FrameType.CLOSE, sid, Close(reason, text).encode())

    def close(self, reason: CloseReason, text: str) -> None:
        """LINKCLOSE: the link is over (no event: the caller knows)."""
        if self.state is LinkState.CLOSED:
            return
        self._send(FrameType.LINKCLOSE, 0, Close(reason, text).encode())
        self.abort()

    def abort(self) -> None:
        """The link is over without a word: the transport cannot carry one (TLS
        failed, the connection was lost). Nothing more is acted on or sent."""
        self.state = LinkState.CLOSED
        self.flows.clear()
        self._frames.clear()

    def data_to_send(self) -> bytes:
        """Every frame queued since the last call, as one piece of bytes."""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def _send(self, ftype: FrameType, sid: int, payload: bytes) -> None:
        self._out.append(encode_frame(ftype, sid, payload))

    def _flow(self, sid: int) -> Flow:
        flow = self.flows.get(sid)
        if flow is None or self.state is not LinkState.UP:
            raise LocalProtocolError(f"session {sid} is not open")
        return flow

    # -- frames in --------------------------------------------------------------------

    def _receive(self, ftype: FrameType, sid: int, payload: bytes) -> None:
        following = TRANSITIONS[self.state].get(ftype)
        if following is None:
            raise RemoteProtocolError(f"unexpected {ftype.name} ({self.state.value})")
        _ON_FRAME[ftype](self, sid, payload)
        if self.state is not LinkState.CLOSED:
            self.state = following

    def _on_hello(self, sid: int, payload: bytes) -> None:
        self.hello = Hello.decode(payload)
        self._events.append(HelloReceived(self.hello))
        secret = self.settings.secret
        if secret is None and not self.loopback:
            self._end(CloseReason.AUTH, "links from beyond the server's host need the shared "
                      "secret", why="refused: not loopback, and no shared secret "
                      "(iim_server.muxlink_secretfile)")
            return
        self._send(FrameType.CHALLENGE, 0, Challenge(secret is not None, self._nonce).encode())

    def _on_auth(self, sid: int, payload: bytes) -> None:
        proof = Auth.decode(payload).proof
        secret, mux_nonce = self.settings.secret, self.hello.nonce
        problem = auth_problem(secret, proof, mux_nonce, self._nonce, self.binding)
        if problem:
            self._end(CloseReason.AUTH, "authentication failed",
                      why=f"authentication failed: {problem}")
            return
        ours = server_proof(secret, mux_nonce, self._nonce, self.binding) if secret else b""
        self._send(FrameType.READY, 0, Ready(self.settings.initial_window, ours).encode())
        self._events.append(LinkUp(secret is not None))

    def _on_linkclose(self, sid: int, payload: bytes) -> None:
        close = Close.decode(payload)
        self.abort()
        self._events.append(LinkClosed(close.reason, close.text, True,
                                       f"by the multiplexor: {close.reason}"))

    def _on_ping(self, sid: int, payload: bytes) -> None:
        self._send(FrameType.PONG, 0, check_ping(payload))

    def _on_pong(self, sid: int, payload: bytes) -> None:
        if check_ping(payload) == self._ping:
            self._ping = None

    def _on_open(self, sid: int, payload: bytes) -> None:
        opened = SessionOpen.decode(payload)
        if sid <= self._last_sid:
            raise RemoteProtocolError(f"OPEN of session {sid}: ids must increase "
                                      f"(last was {self._last_sid})")
        self._last_sid = sid
        if self._over_limits():
            return
        self.flows[sid] = Flow(self.settings.initial_window)
        self._events.append(SessionOpened(sid, opened))

    def _over_limits(self) -> bool:
        """docs/muxlink.md "Limits per link": beyond either, the whole link goes."""
        settings = self.settings
        if len(self.flows) >= settings.max_sessions:
            param, text = "muxlink_max_sessions", f"more than {settings.max_sessions} sessions"
        elif not self._admit_open(self._now):
            param, text = "muxlink_open_rate", f"more than {settings.open_rate} OPENs per second"
        else:
            return False
        self._end(CloseReason.OVERLOAD, f"{text} on one link (iim_server.{param})",
                  limit=f"iim_server.{param}")
        return True

    def _on_data(self, sid: int, payload: bytes) -> None:
        data = check_data(payload)
        flow = self._session(FrameType.DATA, sid)
        if flow is None:
            return
        if len(data) > flow.allowance:
            raise RemoteProtocolError(f"session {sid}: {len(data)} bytes of DATA beyond "
                                      f"the {flow.allowance} bytes of credit granted")
        flow.allowance -= len(data)
        self._events.append(SessionData(sid, data))

    def _on_window(self, sid: int, payload: bytes) -> None:
        credit = decode_window(payload)
        flow = self._session(FrameType.WINDOW, sid)
        if flow is None:
            return
        if flow.credit + credit > MAX_CREDIT:
            raise RemoteProtocolError(f"WINDOW raises session {sid}'s credit above 2^32-1")
        flow.credit += credit
        self._events.append(SessionCredit(sid, credit))

    def _on_close(self, sid: int, payload: bytes) -> None:
        close = Close.decode(payload)
        if self._session(FrameType.CLOSE, sid) is None:
            return
        del self.flows[sid]
        self._events.append(SessionClosed(sid, close.reason, close.text))

    def _session(self, ftype: FrameType, sid: int) -> Flow | None:
        """The open session a frame is for; None when it crossed our CLOSE."""
        flow = self.flows.get(sid)
        if flow is None and sid > self._last_sid:
            raise RemoteProtocolError(f"{ftype.name} for session {sid}, never opened")
        return flow

    # -- ending -------------------------------------------------------------------------

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._end(exc.reason, str(exc))

    def _end(self, reason: CloseReason, text: str, *, why: str | None = None,
             limit: str | None = None) -> None:
        """We close the link: LINKCLOSE, and a LinkClosed event for the adapter."""
        if self.state is LinkState.CLOSED:
            return
        self.close(reason, text)
        self._events.append(LinkClosed(reason, text, False, why or f"{reason} ({text})", limit))


#: Frame dispatch: one handler per frame type (which frames a state accepts: TRANSITIONS).
_ON_FRAME: dict[FrameType, Callable[[LinkConnection, int, bytes], None]] = {
    FrameType.HELLO: LinkConnection._on_hello,
    FrameType.AUTH: LinkConnection._on_auth,
    FrameType.LINKCLOSE: LinkConnection._on_linkclose,
    FrameType.PING: LinkConnection._on_ping,
    FrameType.PONG: LinkConnection._on_pong,
    FrameType.OPEN: LinkConnection._on_open,
    FrameType.DATA: LinkConnection._on_data,
    FrameType.WINDOW: LinkConnection._on_window,
    FrameType.CLOSE: LinkConnection._on_close,
}


def auth_problem(secret: bytes | None, proof: bytes, mux_nonce: bytes,
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
