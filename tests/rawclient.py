"""The project's own client-role core over a real socket, with a pause button.

slixmpp always reads; to play a client that stops reading, tests drive
``ClientStream`` + ``TLSLayer`` over asyncio streams themselves.
"""

from __future__ import annotations

import asyncio
import ssl

from iim.tlsbio import TLSLayer
from iim.xmpp.client_stream import ClientStream
from iim.xmpp.events import SessionEstablished, StanzaReceived, StartTLS, StreamEnded
from iim.xmpp.jid import JID


class RawClient:
    def __init__(self, jid: str, password: str, ca_file, *, tls=None) -> None:
        self.stream = ClientStream(JID.parse(jid), password,
                                   **({"tls": tls} if tls is not None else {}))
        self.ctx = ssl.create_default_context(cafile=str(ca_file))
        self.tls: TLSLayer | None = None
        self.stanzas: list = []
        self.ended: StreamEnded | None = None
        self.established = asyncio.Event()

    async def connect(self, port: int, *, outer_tls: ssl.SSLContext | None = None) -> "RawClient":
        """Connect and log in; with ``outer_tls``, inside legacy SSL (TLS from the
        first byte), where the stream still negotiates STARTTLS."""
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=outer_tls,
            server_hostname=self.stream.jid.domain if outer_tls else None)
        self.stream.start()
        self._flush()
        self._reading = asyncio.ensure_future(self._read_loop())
        await asyncio.wait_for(self.established.wait(), 20)
        return self

    def stop_reading(self) -> None:
        """Stop reading, keep the socket open: the kernel buffers fill, then the server's."""
        self._reading.cancel()

    def resume_reading(self) -> None:
        self._reading = asyncio.ensure_future(self._read_loop())

    def send(self, stanza) -> None:
        self.stream.send_stanza(stanza)
        self._flush()

    async def _read_loop(self) -> None:
        while self.ended is None:
            data = await self.reader.read(65536)
            if not data:
                self.ended = self.ended or StreamEnded(None, sent_by_peer=True)
                return
            self._received(data)

    def _received(self, data: bytes) -> None:
        if self.tls is not None:
            data, back = self.tls.receive(data)
            if back:
                self.writer.write(back)
            if self.tls.handshake_done and self.stream.phase.name == "TLS_PENDING":
                self.stream.tls_established()
        events = self.stream.receive_data(data) if data else []
        self._flush()
        for event in events:
            self._handle(event)

    def _handle(self, event) -> None:
        if isinstance(event, StartTLS):
            self.tls = TLSLayer(self.ctx, server_side=False,
                                server_hostname=self.stream.jid.domain)
            self.writer.write(self.tls.start())
        elif isinstance(event, SessionEstablished):
            self.established.set()
        elif isinstance(event, StanzaReceived):
            self.stanzas.append(event.stanza)
        elif isinstance(event, StreamEnded):
            self.ended = event

    def _flush(self) -> None:
        out = self.stream.data_to_send()
        if out:
            self.writer.write(self.tls.send(out) if self.tls and self.tls.handshake_done else out)

    async def close(self) -> None:
        self._reading.cancel()
        self.writer.close()
