"""The load generators' XMPP user: the project's own sans-I/O ClientStream
behind a small asyncio adapter (bench/load.py, bench/federation.py).

One connection: TCP, STARTTLS through ``TLSLayer`` (when the server offers it
and ``tls_context`` is given), SASL, bind, initial presence, a roster get.
``ready`` resolves (to the perf_counter time) when the roster result arrives,
or fails with ``failure`` naming why; ``gone`` resolves when the connection is
lost. Subclasses say what to do with each message (``_message``) and with a
stream that ends after login (``_ended_after_login``).
"""

from __future__ import annotations

import asyncio
import time
from xml.etree.ElementTree import Element, SubElement

from iim.tlsbio import TLSFailed, TLSLayer
from iim.xmpp.client_stream import ClientStream, TLSMode
from iim.xmpp.errors import XML_NS
from iim.xmpp.events import SessionEstablished, StanzaReceived, StartTLS, StreamEnded
from iim.xmpp.jid import JID
from iim.xmpp.ns import CLIENT_NS, ROSTER_NS, q
from iim.xmpp.stream import Phase

MESSAGE = q(CLIENT_NS, "message")
IQ = q(CLIENT_NS, "iq")
CHATSTATES_NS = "http://jabber.org/protocol/chatstates"
BODY = "Art thou not Romeo, and a Montague? Neither, maid, if either thee dislike."


USERS_PER_ADDRESS = 4


def source_address(i: int) -> tuple[str, int]:
    """The i-th user's own loopback source address (127.1.0.1, 127.1.0.2, ...,
    four users to an address), as ``local_addr``. One machine plays every user,
    and the server's per-source limits (iim_server.max_unauthenticated_per_source,
    accept_rate_per_source) should see the many sources those users stand for,
    not one host that would be refused as a flood, as it would be in production."""
    n = i // USERS_PER_ADDRESS
    return f"127.1.{n // 250}.{1 + n % 250}", 0


class BenchUser(asyncio.Protocol):
    failure: type[Exception] = RuntimeError

    def __init__(self, jid: JID, password: str, tls_context) -> None:
        mode = TLSMode.REQUIRED if tls_context is not None else TLSMode.OPTIONAL
        self.jid = jid
        self.stream = ClientStream(jid, password, tls=mode)
        self.tls_context = tls_context
        self.tls: TLSLayer | None = None
        loop = asyncio.get_running_loop()
        self.ready, self.gone = loop.create_future(), loop.create_future()
        self.transport: asyncio.Transport | None = None

    # -- bytes in and out ---------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.stream.start()
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.tls is not None:
            data = self._decrypt(data)
        if data:
            for event in self.stream.receive_data(data):
                self._handle(event)
        self._flush()

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_exception(self.failure(f"{self.jid}: connection lost ({exc})"))
        if not self.gone.done():
            self.gone.set_result(None)

    def _decrypt(self, data: bytes) -> bytes:
        try:
            plain, out = self.tls.receive(data)
        except TLSFailed as exc:
            self._fail(f"TLS: {exc}")
            return b""
        if out:
            self.transport.write(out)
        if self.tls.handshake_done and self.stream.phase is Phase.TLS_PENDING:
            self.stream.tls_established()
        return plain

    def _flush(self) -> None:
        if self.tls is not None and not self.tls.handshake_done:
            return                                  # queued until the handshake is over
        out = self.stream.data_to_send()
        if out and self.tls is not None:
            out = self.tls.send(out)
        if out and not self.transport.is_closing():
            self.transport.write(out)

    # -- stream events ---------------------------------------------------------------

    def _handle(self, event) -> None:
        if isinstance(event, StartTLS):
            self._flush()                           # anything still due in the clear
            self.tls = TLSLayer(self.tls_context, server_side=False,
                                server_hostname=self.jid.domain)
            self.transport.write(self.tls.start())
        elif isinstance(event, SessionEstablished):
            self.stream.send_stanza(Element(q(CLIENT_NS, "presence")))
            iq = Element(IQ, {"type": "get", "id": "roster-1"})
            SubElement(iq, q(ROSTER_NS, "query"))
            self.stream.send_stanza(iq)
        elif isinstance(event, StanzaReceived):
            self._stanza(event.stanza)
        elif isinstance(event, StreamEnded):
            self._flush()
            if not self.ready.done():
                self.ready.set_exception(self.failure(f"{self.jid}: {event.error}"))
            else:
                self._ended_after_login(f"{self.jid}: {event.error}")
            self.transport.close()

    def _stanza(self, stanza: Element) -> None:
        if stanza.tag == MESSAGE:
            self._message(stanza)
        elif stanza.tag == IQ and stanza.get("id") == "roster-1" and not self.ready.done():
            if stanza.get("type") == "result":
                self.ready.set_result(time.perf_counter())
            else:
                self._fail(f"{self.jid}: roster get failed")

    def _message(self, stanza: Element) -> None:
        raise NotImplementedError

    def _ended_after_login(self, why: str) -> None:
        raise NotImplementedError

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(self.failure(why))
        self.transport.close()

    # -- what the phases call ------------------------------------------------------------

    def send_chat(self, to: str, ident: str, body: str = BODY) -> None:
        """A chat message as clients send them: body plus XEP-0085 <active/>."""
        message = Element(MESSAGE, {"id": ident, "to": to, "type": "chat",
                                    f"{{{XML_NS}}}lang": "en"})
        SubElement(message, q(CLIENT_NS, "body")).text = body
        SubElement(message, q(CHATSTATES_NS, "active"))
        self.stream.send_stanza(message)
        self._flush()

    def logout(self) -> None:
        """Our closing tag (RFC 6120 §4.4); the server closes the connection."""
        if not self.transport.is_closing():
            self.stream.close()
            self._flush()

    def hang_up(self) -> None:
        if not self.transport.is_closing():
            if self.tls is not None and self.tls.handshake_done:
                self.transport.write(self.tls.close())
            self.transport.close()
