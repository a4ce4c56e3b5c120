"""The asyncio adapter for client sockets: bytes in, bytes out, nothing else."""

from __future__ import annotations

import asyncio

from iim.xmpp.errors import StreamError, StreamErrorCondition

from .c2s import HIGH_WATER, ClientSession, SessionContext


LINGER_SECONDS = 2.0


class SocketCarrier:
    """A ClientSession's carrier over an asyncio transport.

    Closing lingers (as web servers do): we send our last bytes and a FIN,
    then read and discard for up to LINGER_SECONDS before closing. Closing at
    once while the peer is still sending would make the kernel answer with a
    RST, and a RST can destroy the stream error we just sent before the peer
    reads it (a client in the middle of sending a 10 MiB stanza, say).
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.lingering = False
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

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
    """One accepted TCP connection on the client/server port."""

    def __init__(self, ctx: SessionContext, max_unauthenticated: int) -> None:
        self.ctx = ctx
        self.max_unauthenticated = max_unauthenticated
        self.session: ClientSession | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        transport.set_write_buffer_limits(high=HIGH_WATER, low=HIGH_WATER // 4)
        self.ctx.connections.add(self)
        self.transport = transport
        carrier = SocketCarrier(transport)
        self.session = ClientSession(self.ctx, carrier)
        if len(self.ctx.negotiating) > self.max_unauthenticated:
            self.ctx.log.warning("c2s %s: refused: %d connections still negotiating",
                                 carrier.peer, len(self.ctx.negotiating) - 1)
            self.session.close(StreamError(StreamErrorCondition.RESOURCE_CONSTRAINT,
                                           "too many connections negotiating"))

    def data_received(self, data: bytes) -> None:
        self.session.data_received(data)      # a closed session ignores it (lingering)

    def eof_received(self) -> bool:
        return False                          # close our side too

    def pause_writing(self) -> None:
        """The client is not reading: stop reading its requests too (so no
        request/reply pattern can queue unbounded replies) and hold stanzas."""
        self.transport.pause_reading()
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.transport.resume_reading()
        self.session.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        if self.session is not None:
            self.session.connection_lost()
