"""XMPP over WebSocket (RFC 7395) at ``/ws``: one ClientSession per WebSocket.

Theory of operation. aiohttp does the HTTP upgrade and the WebSocket
protocol (RFC 6455: masking, fragments, control frames). This module checks
the request (the ``xmpp`` subprotocol, RFC 7395 §3.2; the Origin and the
TLS policy are checked by the caller, iim/server/web/app.py), then moves
text messages between the socket and a ``ClientSession`` through
``WebSocketCarrier``, which translates the framing (iim/server/web/framing.py).

- In: each text message is one element (RFC 7395 §3.3.3), translated and fed
  to the session; a binary message is ``<bad-format/>`` (§3.3.3: text frames
  only). A message longer than ``maxstanzasize`` plus a little is refused by
  the framing parser with ``<policy-violation/>`` like an oversized stanza on
  TCP; one larger than twice that is not even read: aiohttp closes with 1009
  (RFC 6455 §7.4.1).
- Out: what the session writes is split into frames and queued; one writer
  task sends them in order (``send_str`` waits while the peer does not read,
  so the queue, counted by ``pending()``, grows, and the session holds
  stanzas in its backlog within ``max_backlog``, as on a socket). When the
  queue empties the session is told (``resume_writing``) to send its backlog.
- Closing: ``<close/>`` from the client reaches the session as
  ``</stream:stream>``; it answers ``</stream:stream>``, which goes out as
  ``<close/>``, then the session closes the carrier, and the writer ends the
  WebSocket with 1000 once the queue is sent (§3.6). A WebSocket that ends
  without ``<close/>`` is a lost connection: a resumable session (XEP-0198)
  is detached, like a cut TCP connection.
- Idle (§3.5 leaves keepalives to WebSocket): aiohttp pings every
  ``heartbeat`` seconds and closes a connection whose pong does not come
  back in half that; a client's ping is answered with a pong. Whitespace
  keepalives do not exist in this framing; an empty message is ignored.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aiohttp import WSMsgType, web

from iim.text import printable
from iim.xmpp.errors import StreamError, StreamErrorCondition

from ..c2s import ClientSession
from ..quota import source_of
from .carrier import RateRefused, admit, https_tls, open_session
from .framing import Closed, CoreOutput, FramedInput, Item, Opened, close_frame, open_frame, \
    standalone

__all__ = ["SUBPROTOCOL", "WebSocketCarrier", "serve_websocket"]

SUBPROTOCOL = "xmpp"            # RFC 7395 §3.1 (IANA WebSocket subprotocol registry)
HEARTBEAT = 30.0                # seconds between our pings (idle connections, §3.5)
CLOSE_SECONDS = 2.0             # for the closing handshake once the reader ended


class WebSocketCarrier:
    """A ClientSession's carrier over one WebSocket."""

    __slots__ = ("ws", "peer", "source", "transport_tls", "session", "output", "_queue",
                 "_queued", "_wake", "_closing", "_writer")

    def __init__(self, ws: web.WebSocketResponse, peer: str, source: str,
                 transport_tls=None) -> None:
        self.ws = ws
        self.peer = peer
        self.source = source
        self.transport_tls = transport_tls      # the HTTPS connection's (security_info.py)
        self.session: ClientSession | None = None
        self.output = CoreOutput()
        self._queue: deque[tuple[str, int]] = deque()     # (frame, the core's bytes it ends)
        self._queued = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._writer = asyncio.get_running_loop().create_task(self._write_frames())

    # -- the Carrier protocol (iim/server/c2s.py) ---------------------------------------

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        frames = [_frame(event) for event in self.output.feed(data)]
        for n, frame in enumerate(frames):          # the chunk's bytes go with its last frame
            self._queue_frame(frame, len(data) if n == len(frames) - 1 else 0)

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    def pending(self) -> int:
        """Bytes the session wrote whose frames are not sent yet, counted as the
        session counts them (its in-flight ledger compares the two)."""
        return self._queued

    # -- out -----------------------------------------------------------------------------

    def _queue_frame(self, frame: str, cost: int) -> None:
        self._queue.append((frame, cost))
        self._queued += cost
        self._wake.set()

    async def _write_frames(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._send_queued()
                if self._closing:
                    break
                if self.session is not None and not self.session.closed:
                    self.session.resume_writing()
        except (ConnectionError, RuntimeError):
            pass                                # the peer went away: connection_lost follows
        finally:
            await self.ws.close()

    async def _send_queued(self) -> None:
        while self._queue:
            frame, cost = self._queue[0]
            await self.ws.send_str(frame)
            self._queue.popleft()
            self._queued -= cost

    async def stop(self) -> None:
        """After the WebSocket's reader ended: let the writer finish its close
        handshake (bounded), then stop it."""
        self._closing = True
        self._queue.clear()
        self._queued = 0
        self._wake.set()
        if not self._writer.done():
            await asyncio.wait([self._writer], timeout=CLOSE_SECONDS)
            self._writer.cancel()
        self.output.close()


def _frame(event: Opened | Item | Closed) -> str:
    if isinstance(event, Opened):
        return open_frame(event)
    if isinstance(event, Item):
        return standalone(event.element)
    return close_frame()


def offers_xmpp(request: web.Request) -> bool:
    """The client asked for the ``xmpp`` subprotocol (RFC 7395 §3.2)."""
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    return SUBPROTOCOL in (p.strip() for p in offered.split(","))


async def serve_websocket(request: web.Request, gateway) -> web.StreamResponse:
    """The ``/ws`` handler, once the gateway let the request through."""
    if not offers_xmpp(request):
        raise web.HTTPBadRequest(text="the WebSocket subprotocol 'xmpp' is required "
                                      "(RFC 7395 §3.2)\n")
    limit = gateway.max_stanza_bytes
    ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=2 * limit + 4096,
                               heartbeat=gateway.heartbeat, autoping=True,
                               compress=False)   # no permessage-deflate: no CRIME-style leaks
    host = request.remote or "unknown"
    source = source_of(host)
    try:
        refusal = admit(gateway.admission, source)
    except RateRefused as exc:
        raise web.HTTPTooManyRequests(text=f"too many new sessions from your address ({exc})\n")
    await ws.prepare(request)
    carrier = WebSocketCarrier(ws, f"ws {host}:{_port_of(request)}", source,
                               https_tls(request.transport, gateway.certificate))
    carrier.session = open_session(gateway.ctx, carrier, secure=request.secure, refusal=refusal,
                                   max_unauthenticated=gateway.max_unauthenticated)
    try:
        await _read(ws, carrier, gateway)
    finally:
        if carrier.session is not None:
            carrier.session.connection_lost()
        await carrier.stop()
    return ws


async def _read(ws: web.WebSocketResponse, carrier: WebSocketCarrier, gateway) -> None:
    session = carrier.session
    framed = FramedInput(max_stanza_bytes=gateway.max_stanza_bytes,
                         max_xmlns=gateway.max_xmlns)
    try:
        async for message in ws:
            _take(session, framed, message)
            del message                 # else the last one, whole, stays while the user idles
    finally:
        framed.close()


def _take(session: ClientSession, framed: FramedInput, message) -> None:
    if session.closed:
        return                                  # read and discard until the close
    if message.type is WSMsgType.TEXT:
        _feed(session, framed, message.data.encode("utf-8"))
    elif message.type is WSMsgType.BINARY:
        session.close(StreamError(StreamErrorCondition.BAD_FORMAT,
                                  "RFC 7395 frames are text messages"))


def _feed(session: ClientSession, framed: FramedInput, data: bytes) -> None:
    if not data.strip():
        return
    try:
        core = framed.message(data)
    except StreamError as exc:
        session.ctx.log.info("c2s %s: %s", session.carrier.peer, printable(str(exc)))
        session.close(exc)
        return
    session.data_received(core)


def _port_of(request: web.Request) -> int | str:
    peername = request.transport.get_extra_info("peername") if request.transport else None
    return peername[1] if peername else "?"
