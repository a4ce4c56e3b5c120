"""What both ends of an XMPP stream share: parsing, output, phases, errors.

Theory of operation (RFC 6120 §4): a stream is one long XML document each
way. Bytes from the transport go into ``receive_data``; the restricted
parser turns them into a stream header, depth-1 elements and the closing
tag; the role (``ServerStream`` / ``ClientStream``) reacts to each one,
queueing bytes for ``data_to_send`` and returning events for its adapter.
No sockets, no clocks, no TLS objects: the adapter owns those.

Two moments end the bytes of a read early. After ``<starttls/>`` /
``<proceed/>`` the next bytes on the wire are TLS records; after SASL
success the peer must wait for our answer before it opens a new stream. In
both cases whatever else the same read carried was parsed as part of the old
stream and is dropped here, unprocessed (RFC 6120 §5.4.3.3, §6.4.6: this is
what makes STARTTLS command injection impossible).

Which stream an error goes on (RFC 6120 §4.9.1): a stream error is a child
of our stream element, so whatever we write before it on the current stream
must include our header. The current stream is the one since the last
restart, and there are two restarts: SASL success (§6.4.6) and ``<proceed/>``
(§5.4.3.3: the old stream is discarded there, never closed, and whatever
follows the TLS handshake belongs to a new one). Both reset ``_header_sent``
at the moment they happen, not when the adapter reports TLS up: an adapter
that refuses the peer's certificate as the handshake ends closes the stream
while it is still ``TLS_PENDING``, and that error goes on the new stream.
``close`` therefore opens the current stream first when our header is not on
it yet (``_ensure_header``, one per role): the receiving entity sends its
response header before the error even when the peer has not opened the new
stream (§4.9.1.2), and the initiating entity sends the initial header it owes
after TLS (§5.4.3.3) and then the error, so that the peer learns why instead
of failing to parse ``<stream:error>`` with an undeclared prefix.
"""

from __future__ import annotations

import enum
from xml.etree.ElementTree import Element

from .errors import STREAMS_NS, LocalProtocolError, StreamError
from .events import Event, StartTLS, StreamEnded
from .xml import (
    CLIENT_NS, DEFAULT_MAX_STANZA_BYTES, DEFAULT_MAX_XMLNS, STREAM_CLOSE, ElementReceived,
    StreamClosed, StreamOpened, StreamParser, to_bytes,
)


class Phase(enum.Enum):
    OPENING = "waiting for the peer's stream header"
    NEGOTIATING = "negotiating stream features"
    TLS_PENDING = "TLS handshake in progress"
    AUTHENTICATING = "SASL exchange in progress"
    BINDING = "binding a resource"
    ESTABLISHED = "exchanging stanzas"
    CLOSED = "closed"


class Stream:
    """The machinery both roles use; see ServerStream and ClientStream."""

    ns = CLIENT_NS

    def __init__(self, *, max_stanza_bytes: int = DEFAULT_MAX_STANZA_BYTES,
                 max_xmlns: int = DEFAULT_MAX_XMLNS) -> None:
        self.max_stanza_bytes = max_stanza_bytes
        self._parser = StreamParser(max_stanza_bytes=max_stanza_bytes, max_xmlns=max_xmlns,
                                    content_namespaces=(self.ns,))
        self._out = bytearray()
        self.phase = Phase.OPENING
        self.secure = False
        self._header_sent = False
        self._cut = False          # drop what is left of the current read

    # -- the adapter's API ----------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer (plaintext: after TLS, the decrypted bytes)."""
        if self.phase is Phase.CLOSED:
            return []
        if self.phase is Phase.TLS_PENDING:
            raise LocalProtocolError("bytes during the TLS handshake belong to the TLS layer")
        try:
            parsed = self._parser.feed(data)
        except StreamError as exc:
            return self._fail(exc)
        events: list[Event] = []
        self._cut = False
        for item in parsed:
            try:
                events += self._dispatch(item)
            except StreamError as exc:
                return events + self._fail(exc)
            if self._cut or self.phase is Phase.CLOSED:
                break
        return events

    @property
    def unit_in_progress(self) -> bool:
        """Bytes of an unfinished stanza are waiting (see StreamParser)."""
        return self.phase is not Phase.CLOSED and self._parser.unit_in_progress

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def tls_established(self) -> None:
        """The adapter finished the TLS handshake: a new stream starts (§5.4.3.3)."""
        if self.phase is not Phase.TLS_PENDING:
            raise LocalProtocolError(f"tls_established() while {self.phase.value}")
        self.secure = True
        self._after_tls()

    def send_stanza(self, stanza: Element) -> None:
        if self.phase is not Phase.ESTABLISHED:
            raise LocalProtocolError(f"send_stanza() while {self.phase.value}")
        self._send(stanza)

    def close(self, error: StreamError | None = None) -> list[Event]:
        """End the stream, with a stream error when ``error`` is given."""
        if self.phase is Phase.CLOSED:
            return []
        if error is not None:
            self._ensure_header()
            self._out += error.to_xml()
        if self._header_sent:
            self._out += STREAM_CLOSE
        self._closed()
        return [StreamEnded(error)]

    # -- for the roles ----------------------------------------------------------

    def _answer_starttls(self, allowed: bool) -> list[Event]:
        """The receiving entity's answer to ``<starttls/>`` (RFC 6120 §5.4.2)."""
        if not allowed:
            self._out += f"<failure xmlns='{TLS_NS}'/>".encode()
            return self.close()                                   # §5.4.2.2
        self._out += f"<proceed xmlns='{TLS_NS}'/>".encode()
        return self._await_tls()

    def _on_proceed(self, element: Element) -> list[Event]:
        """The initiating entity's side: TLS starts with the next bytes (§5.4.2.3)."""
        return self._await_tls()

    def _await_tls(self) -> list[Event]:
        """``<proceed/>`` ends the stream: the next one starts under TLS."""
        self._restart()
        self.phase = Phase.TLS_PENDING
        return [StartTLS()]

    def _dispatch(self, item) -> list[Event]:
        if isinstance(item, StreamOpened):
            return self._on_header(item)
        if isinstance(item, ElementReceived):
            if item.element.tag == STREAM_ERROR:
                return self._on_peer_error(item.element)
            return self._on_element(item.element)
        if isinstance(item, StreamClosed):
            return self._on_peer_close()
        raise AssertionError(item)

    def _on_peer_close(self) -> list[Event]:
        if self._header_sent:
            self._out += STREAM_CLOSE
        self._closed()
        return [StreamEnded(None, sent_by_peer=True)]

    def _on_peer_error(self, element: Element) -> list[Event]:
        """The peer ended the stream with an error (RFC 6120 §4.9.1.1)."""
        error = StreamError.from_element(element)
        if self._header_sent:
            self._out += STREAM_CLOSE
        self._closed()
        return [StreamEnded(error, sent_by_peer=True)]

    def _give_up(self, error: StreamError) -> list[Event]:
        """End our side without blaming the peer with a stream error (a client
        whose login failed, say): just the closing tag."""
        if self._header_sent:
            self._out += STREAM_CLOSE
        self._closed()
        return [StreamEnded(error)]

    def _send(self, element: Element) -> None:
        self._out += to_bytes(element, ns=self.ns)

    def _closed(self) -> None:
        """The stream is over: the parser and what it holds are freed now."""
        self.phase = Phase.CLOSED
        self._parser.close()

    def _restart(self) -> None:
        """A new stream over the same transport (RFC 6120 §4.3.3)."""
        self._parser.reset()
        self._header_sent = False
        self._cut = True

    def _fail(self, exc: StreamError) -> list[Event]:
        return self.close(exc)

    def _ensure_header(self) -> None:
        """Send our header for the current stream unless it is there already:
        an error before it still needs one (RFC 6120 §4.9.1.2)."""
        raise NotImplementedError

    def _on_header(self, header: StreamOpened) -> list[Event]:
        raise NotImplementedError

    def _on_element(self, element: Element) -> list[Event]:
        raise NotImplementedError

    def _after_tls(self) -> None:
        raise NotImplementedError


STREAM_ERROR = f"{{{STREAMS_NS}}}error"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"                 # RFC 6120 §5
