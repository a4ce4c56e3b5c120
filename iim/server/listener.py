"""The asyncio adapter for client sockets: bytes in, bytes out, nothing else."""

from __future__ import annotations

import asyncio

from iim.xmpp.errors import StreamError, StreamErrorCondition
from iim.xmpp.xml import CLIENT_NS, SERVER_NS, StreamOpened, StreamParser

from .admission import Admission, Refusal
from .c2s import HIGH_WATER, ClientSession, SessionContext
from .clock import Timer, clock_of
from .quota import source_of


LINGER_SECONDS = 2.0


class SocketCarrier:
    """A ClientSession's carrier over an asyncio transport.

    Closing lingers (as web servers do): we send our last bytes and a FIN,
    then read and discard for up to LINGER_SECONDS before closing. Closing at
    once while the peer is still sending would make the kernel answer with a
    RST, and a RST can destroy the stream error we just sent before the peer
    reads it (a client in the middle of sending a 10 MiB stanza, say).
    """

    __slots__ = ("transport", "lingering", "peer", "source")     # one per connection

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.lingering = False
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.source = source_of(host)         # what per-source limits count under

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing() and not self.lingering:
            self.transport.write(data)

    def close(self) -> None:
        if self.lingering or self.transport.is_closing():
            return
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.lingering = True
        try:
            self.transport.write_eof()
        except OSError:                       # the peer already reset the connection
            self.transport.abort()
            return
        self.transport.resume_reading()       # read and discard what the peer still sends
        # abort(), not close(): close() would wait for a non-reading peer forever
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.abort)

    def pending(self) -> int:
        return self.transport.get_write_buffer_size()


class ClientProtocol(asyncio.Protocol):
    """One accepted TCP connection on ``iim_server.port``.

    The port takes client streams (``jabber:client``: gateways that connect
    directly) and server streams (``jabber:server``: federation). Until the
    stream header has arrived, bytes are held and parsed by a throw-away
    parser (``HeaderSniffer``); then they all go, unchanged, to a
    ``ClientSession`` or to the federation's ``IncomingServerSession``, which
    parse the header again and answer it. Anything that is not a usable
    header (garbage, a TLS ClientHello, an oversized header) goes to a
    ``ClientSession``, whose parser answers with the right stream error.

    With an ``admission`` (iim/server/admission.py), a source over its accept
    rate is closed at once, and one with ``max_unauthenticated_per_source``
    connections negotiating gets ``<policy-violation/>``.
    """

    __slots__ = ("ctx", "max_unauthenticated", "federation", "admission", "session",
                 "_sniffer", "_timer", "transport", "carrier")

    def __init__(self, ctx: SessionContext, max_unauthenticated: int,
                 federation=None, admission: Admission | None = None) -> None:
        self.ctx = ctx
        self.max_unauthenticated = max_unauthenticated
        self.federation = federation
        self.admission = admission
        self.session = None
        self._sniffer: HeaderSniffer | None = None
        self._timer: Timer | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        transport.set_write_buffer_limits(high=HIGH_WATER, low=HIGH_WATER // 4)
        self.ctx.connections.add(self)
        self.transport = transport
        self.carrier = SocketCarrier(transport)
        refusal = self.admission.refusal(self.carrier.source) if self.admission else None
        if refusal is Refusal.RATE:
            transport.close()                 # at once: nothing parsed, nothing held
        elif refusal is Refusal.COUNT:
            self.session = ClientSession(self.ctx, self.carrier)
            self.session.close(refusal.stream_error())
        elif len(self.ctx.negotiating) >= self.max_unauthenticated:
            self.session = ClientSession(self.ctx, self.carrier)
            self.ctx.log.warning("c2s %s: refused: %d connections still negotiating",
                                 self.carrier.peer, len(self.ctx.negotiating) - 1)
            self.session.close(StreamError(StreamErrorCondition.RESOURCE_CONSTRAINT,
                                           "too many connections negotiating"))
        elif self.federation is None:
            self.session = ClientSession(self.ctx, self.carrier)
        else:
            self._sniffer = HeaderSniffer()
            self._timer = clock_of(self.ctx.clock).call_later(
                self.ctx.negotiation_timeout, self._no_header)
            self.ctx.negotiating.add(self)

    def data_received(self, data: bytes) -> None:
        if self.session is None:
            namespace = self._sniffer.feed(data)
            if namespace is None:
                return
            self._choose(namespace)
            data, self._sniffer = self._sniffer.take(), None     # its expat parser goes with it
        self.session.data_received(data)      # a closed session ignores it (lingering)

    def _choose(self, namespace: str) -> None:
        self._timer.cancel()
        self._timer = None
        self.ctx.negotiating.discard(self)
        if namespace == SERVER_NS:
            self.session = self.federation.accept(self.carrier)
        else:
            self.session = ClientSession(self.ctx, self.carrier)

    def _no_header(self) -> None:
        """Nothing that parses as a header within the negotiation timeout."""
        if self.session is None:
            self._choose(CLIENT_NS)
            data, self._sniffer = self._sniffer.take(), None
            self.session.data_received(data)
            if not self.session.closed:
                self.session.close(StreamError(StreamErrorCondition.CONNECTION_TIMEOUT,
                                               "no stream header"))

    def eof_received(self) -> bool:
        return False                          # close our side too

    def pause_writing(self) -> None:
        """The peer is not reading: stop reading its requests too (so no
        request/reply pattern can queue unbounded replies) and hold stanzas."""
        self.transport.pause_reading()
        if self.session is not None and hasattr(self.session, "pause_writing"):
            self.session.pause_writing()

    def resume_writing(self) -> None:
        self.transport.resume_reading()
        if self.session is not None and hasattr(self.session, "resume_writing"):
            self.session.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        if self.session is not None:
            self.session.connection_lost()
        else:
            if self._timer is not None:
                self._timer.cancel()
            self.ctx.negotiating.discard(self)


class HeaderSniffer:
    """Which content namespace does the stream header declare? (RFC 6120 §4.8.2)"""

    LIMIT = 8192

    def __init__(self) -> None:
        self._parser = StreamParser(content_namespaces=(CLIENT_NS, SERVER_NS))
        self._held = bytearray()
        self._failed = False

    def feed(self, data: bytes) -> str | None:
        """The namespace once known (CLIENT_NS for anything unusable), else None."""
        self._held += data
        if self._failed:
            return CLIENT_NS
        try:
            for event in self._parser.feed(data):
                if isinstance(event, StreamOpened):
                    return event.ns
        except StreamError:
            self._failed = True
            return CLIENT_NS
        if len(self._held) > self.LIMIT:
            return CLIENT_NS
        return None

    def take(self) -> bytes:
        held, self._held = bytes(self._held), bytearray()
        return held
