"""The gateway's listening sockets: TLS and plain HTTP on one port, handed to aiohttp.

Theory of operation. ``HttpListener`` accepts sockets itself (``sock_accept``)
instead of letting ``loop.create_server`` do it, for three things aiohttp
does not do:

- *TLS or not.* It waits (at most ``negotiation_timeout``) for a
  connection's first byte and peeks at it (``MSG_PEEK``, so the ClientHello
  stays in the socket for the TLS layer). 0x16, a TLS handshake record (RFC
  8446 §5.1), is served as HTTPS with the keystore's context, read at each
  connection (a certificate reload reaches new ones); anything else as plain
  HTTP, which the gateway's policy then judges (app.py).
- *Memory.* asyncio's TLS transport allocates a 256 KiB read buffer per
  connection; ``_SmallSSLProtocol`` uses 16 KiB (one TLS record), which is
  most of the difference between 310 and 70 KB per WebSocket session
  (bench/web_gateway.py).
- *Slow peers.* aiohttp waits for a request's headers for ever, and keeps
  an idle keep-alive connection for an hour. A ``HeadWatch`` between
  aiohttp's handler and the transport cuts off a connection whose next
  request has not started to be handled within ``negotiation_timeout`` of
  the connection or of the previous request's end (see its docstring).
- *Many connections from one source.* New TCP connections from one source
  are limited to ``HTTP_CONNECTIONS_PER_SESSION`` x ``accept_rate_per_source``
  a second (bursts of twice that), and the connections one source holds
  *idle* (accepted, in the TLS handshake, waiting for a request or between
  requests) to ``HTTP_CONNECTIONS_PER_SESSION`` x
  ``max_unauthenticated_per_source``: beyond the rate or the count a new
  connection is closed unread, and one that falls idle over the count is
  closed once its response is out. A connection that is handling a request
  does not count here: a WebSocket or BOSH session is counted while it
  negotiates by the per-source gate (iim/server/admission.py), as on every
  carrier, and a static file or discovery answer is short. Each refusal
  is one log line per parameter and interval (``LimitLog``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from asyncio import sslproto
from typing import Callable

from ..clock import Clock, clock_of
from ..quota import CountBySource, LimitLog, RateBySource, source_of

__all__ = ["HTTP_CONNECTIONS_PER_SESSION", "HeadWatch", "HttpListener", "IdleTicket",
           "TLS_HANDSHAKE"]

TLS_HANDSHAKE = 0x16            # the first byte of a TLS record carrying a handshake
HTTP_CONNECTIONS_PER_SESSION = 4    # TCP connections a web session may cost (rate, idle count)
IDLE_PARAM = "iim_server.max_unauthenticated_per_source"


class IdleTicket:
    """One connection's place in its source's count of idle connections.

    Taken when the connection is accepted; ``release`` when it starts
    handling a request or goes away (idempotent: a failed TLS handshake and
    a lost connection may both say so); ``retake`` when it falls idle
    again, False when the source is at its limit."""

    __slots__ = ("source", "_count", "held")

    def __init__(self, source: str, count: CountBySource) -> None:
        self.source, self._count, self.held = source, count, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._count.remove(self.source)

    def retake(self) -> bool:
        if not self.held:
            self.held = self._count.add(self.source)
        return self.held


class HeadWatch(asyncio.Protocol):
    """Between aiohttp's RequestHandler and its transport: a request must
    start being handled within ``limit`` seconds of the connection or of the
    previous request's end, and an idle connection counts for its source.

    aiohttp waits for a request's headers for ever, so a client that drips a
    header a minute (slowloris) would hold a connection, and its buffers, as
    long as it likes, and it keeps an idle keep-alive connection for an hour.
    The clock starts when the connection is made (after the TLS handshake),
    when a request's handling ends (``finished``) and, if it is not running,
    with the first byte that arrives while no request is being handled; it
    stops when the application starts handling one (``started``, from the
    gateway's middleware); a WebSocket is handled for as long as it lives, a
    BOSH request until it is answered. The same two events move the
    connection out of and back into its source's idle count (``IdleTicket``):
    one that falls idle over the count is closed once its response is out.
    """

    __slots__ = ("inner", "limit", "transport", "active", "ticket", "clock", "_timer",
                 "_watches", "_over")

    def __init__(self, inner: asyncio.Protocol, limit: float, watches: dict,
                 ticket: IdleTicket | None = None, clock: Clock | None = None,
                 over: Callable[[str], None] = lambda source: None) -> None:
        self.inner, self.limit, self._watches = inner, limit, watches
        self.ticket, self.clock, self._over = ticket, clock, over
        self.transport = None
        self.active = 0
        self._timer = None

    def connection_made(self, transport) -> None:
        # registered only now: a failed TLS handshake never gets here, nor to connection_lost
        self._watches[self.inner] = self
        self.transport = transport
        self._start()                           # the first request is due too
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.active and self._timer is None:
            self._start()
        self.inner.data_received(data)

    def _start(self) -> None:
        self._timer = clock_of(self.clock).call_later(self.limit, self._too_slow)

    def started(self) -> None:
        self.active += 1
        if self.ticket is not None:
            self.ticket.release()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def finished(self) -> None:
        self.active -= 1
        if self.active or self.transport is None:
            return
        if self._timer is None:
            self._start()                       # the next request is due within the limit
        if self.ticket is not None and not self.ticket.retake():
            self._over(self.ticket.source)
            self.inner.close()                  # aiohttp: no keep-alive after this response

    def _too_slow(self) -> None:
        # abort, not close: close would wait for a response the peer does not read
        self._timer = None
        if not self.active and self.transport is not None:
            self.transport.abort()

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        if self.ticket is not None:
            self.ticket.release()
        self._watches.pop(self.inner, None)
        self.inner.connection_lost(exc)


class HttpListener:
    """Accepts connections on the gateway's port and gives them to aiohttp."""

    def __init__(self, tls_context: Callable[[], ssl.SSLContext | None],
                 timeout: Callable[[], float], accept_rate: int, limit_log: LimitLog | None,
                 log: logging.Logger, idle_per_source: int = 50) -> None:
        self.tls_context = tls_context
        self.timeout = timeout                  # negotiation_timeout, as refreshed
        self.limit_log = limit_log
        self.log = log
        self.clock: Clock | None = None         # HeadWatch timers; None: the loop (tests set one)
        self.watches: dict[asyncio.Protocol, HeadWatch] = {}   # aiohttp handler -> its watch
        self.tasks: set[asyncio.Task] = set()
        self._rates = RateBySource(HTTP_CONNECTIONS_PER_SESSION * accept_rate)
        self.idle = CountBySource(HTTP_CONNECTIONS_PER_SESSION * idle_per_source)
        self._socks: list[socket.socket] = []
        self._handler: Callable[[], asyncio.Protocol] | None = None

    async def start(self, where, handler: Callable[[], asyncio.Protocol]) -> None:
        """Listen on ``where`` (a HostPort); ``handler()`` makes aiohttp's protocol.
        OSError when a socket cannot be bound."""
        self._handler = handler
        infos = socket.getaddrinfo(where.host, where.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, type_, proto, _, address in infos:
            self._socks.append(_bind(family, type_, proto, address))
        for sock in self._socks:
            self._spawn(self._accept(sock))

    @property
    def addresses(self) -> list[tuple]:
        return [sock.getsockname() for sock in self._socks]

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listening)
            except OSError as exc:              # EMFILE and the like: wait, go on
                self.log.warning("gateway: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            sock.setblocking(False)
            ticket = self._admit(sock, address)
            if ticket is not None:
                self._spawn(self._serve(sock, ticket))

    def _admit(self, sock: socket.socket, address) -> IdleTicket | None:
        """Within the source's connection rate and idle count (its ticket), or
        closed at once, before a byte is read (None)."""
        source = source_of(address[0] if isinstance(address, tuple) else str(address))
        now = asyncio.get_running_loop().time()
        if not self._rates.allow(source, now):
            sock.close()
            self._hit("iim_server.accept_rate_per_source", source, "HTTP connections")
            return None
        if not self.idle.add(source):
            sock.close()
            self._over(source)
            return None
        return IdleTicket(source, self.idle)

    def _over(self, source: str) -> None:
        self._hit(IDLE_PARAM, source, "idle HTTP connections")

    def _hit(self, param: str, source: str, what: str) -> None:
        if self.limit_log is not None:
            self.limit_log.hit(param, asyncio.get_running_loop().time(),
                               f"{source}: {what} to the gateway")

    async def _serve(self, sock: socket.socket, ticket: IdleTicket) -> None:
        """Peek at the first byte, then hand the socket to aiohttp, over TLS or not."""
        loop = asyncio.get_running_loop()
        try:
            first = await asyncio.wait_for(_peek(loop, sock), self.timeout())
            context = self.tls_context()
            if not first or (first[0] == TLS_HANDSHAKE and context is None):
                ticket.release()
                sock.close()
                return
            if first[0] != TLS_HANDSHAKE:
                await loop.connect_accepted_socket(lambda: self._watched(ticket), sock)
                return
            handshake = loop.create_future()
            handshake.add_done_callback(lambda done: _handshake_done(done, ticket))
            tls = _SmallSSLProtocol(loop, self._watched(ticket), context, handshake,
                                    server_side=True, ssl_handshake_timeout=self.timeout())
            await loop.connect_accepted_socket(lambda: tls, sock)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            self.log.debug("gateway: connection dropped before HTTP: %s", exc)
            ticket.release()
            sock.close()
        except asyncio.CancelledError:          # stop() while the first byte was awaited
            ticket.release()
            sock.close()
            raise

    def _watched(self, ticket: IdleTicket) -> HeadWatch:
        """aiohttp's handler for a new connection, behind a HeadWatch."""
        return HeadWatch(self._handler(), self.timeout(), self.watches, ticket, self.clock,
                         self._over)

    def stop(self) -> None:
        """No new connections; those handed to aiohttp are aiohttp's to close."""
        for sock in self._socks:
            sock.close()
        self._socks = []
        for task in list(self.tasks):
            task.cancel()


def _bind(family, type_, proto, address) -> socket.socket:
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _SmallSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS for the gateway's HTTPS connections, with one 16 KiB read
    buffer (a TLS record) shared by all of them instead of 256 KiB allocated
    per connection: 310 -> 54 KB per web session (bench/web_gateway.py; 16
    KiB of it was the buffer of each connection's own).

    Sharing is safe on a selector event loop: the socket transport asks for
    the buffer (``get_buffer``), reads into it and hands the bytes over
    (``buffer_updated``, which copies them into the connection's incoming
    BIO) in one synchronous step, so no two connections use it at once. A
    proactor loop keeps a buffer across an overlapped read: there each
    connection keeps its own. The rest of the server does TLS over memory
    BIOs (iim/tlsbio.py)."""

    max_size = 16 * 1024
    BIO_CHUNK = 4096            # bytes put into a memory BIO at a time (see below)
    _shared = memoryview(bytearray(max_size))

    def __init__(self, loop, *args, **kwargs) -> None:
        super().__init__(loop, *args, **kwargs)
        if isinstance(loop, asyncio.SelectorEventLoop):
            self._ssl_buffer, self._ssl_buffer_view = self._shared.obj, self._shared

    # OpenSSL's memory BIO keeps the largest size it ever held (iim/tlsbio.py,
    # "Bursts"): a 16 KiB read or a 64 KB WebSocket frame written at once
    # would leave a buffer that size in the connection's BIO for its life. So
    # bytes go through the BIOs BIO_CHUNK at a time, drained between chunks,
    # as TLSLayer does; small reads and writes go as asyncio's.

    def buffer_updated(self, nbytes: int) -> None:
        if nbytes <= self.BIO_CHUNK:
            super().buffer_updated(nbytes)
            return
        whole = self._ssl_buffer_view
        try:
            for at in range(0, nbytes, self.BIO_CHUNK):
                self._ssl_buffer_view = whole[at:at + self.BIO_CHUNK]
                super().buffer_updated(min(self.BIO_CHUNK, nbytes - at))
        finally:
            self._ssl_buffer_view = whole

    def _do_write(self) -> None:
        """asyncio's, encrypting BIO_CHUNK bytes at a time and sending each
        chunk's records before the next (unless the socket is paused)."""
        try:
            while self._write_backlog:
                data = self._write_backlog[0]
                size = len(data)
                count = self._sslobj.write(memoryview(data)[:self.BIO_CHUNK]
                                           if size > self.BIO_CHUNK else data)
                if count < size:
                    self._write_backlog[0] = memoryview(data)[count:]
                    self._write_buffer_size -= count
                else:
                    del self._write_backlog[0]
                    self._write_buffer_size -= size
                if not self._ssl_writing_paused:
                    records = self._outgoing.read()
                    if records:
                        self._transport.write(records)
        except sslproto.SSLAgainErrors:
            pass
        self._process_outgoing()


def _handshake_done(future: asyncio.Future, ticket: IdleTicket) -> None:
    """A failed TLS handshake never reaches HeadWatch: its ticket is freed here."""
    if future.cancelled() or future.exception() is not None:   # nothing to say to the peer
        ticket.release()


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The first byte waiting on ``sock``, left there; b"" when the peer closed."""
    readable = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(sock.fileno())
    return sock.recv(1, socket.MSG_PEEK)
