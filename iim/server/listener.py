"""The asyncio adapter for client sockets: bytes in, bytes out, nothing else."""

from __future__ import annotations

import asyncio

from iim.xmpp.errors import StreamError, StreamErrorCondition

from .c2s import ClientSession, SessionContext


class SocketCarrier:
    """A ClientSession's carrier over an asyncio transport."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.transport.close()

    def pending(self) -> int:
        return self.transport.get_write_buffer_size()


class ClientProtocol(asyncio.Protocol):
    """One accepted TCP connection on the client/server port."""

    def __init__(self, ctx: SessionContext, max_unauthenticated: int) -> None:
        self.ctx = ctx
        self.max_unauthenticated = max_unauthenticated
        self.session: ClientSession | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        carrier = SocketCarrier(transport)
        self.session = ClientSession(self.ctx, carrier)
        if len(self.ctx.negotiating) > self.max_unauthenticated:
            self.ctx.log.warning("c2s %s: refused: %d connections still negotiating",
                                 carrier.peer, len(self.ctx.negotiating) - 1)
            self.session.close(StreamError(StreamErrorCondition.RESOURCE_CONSTRAINT,
                                           "too many connections negotiating"))

    def data_received(self, data: bytes) -> None:
        self.session.data_received(data)

    def eof_received(self) -> bool:
        return False                      # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.connection_lost()
