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

Phases move only through a table (h11's shape): each role lists the
``(from, to)`` pairs it may take, each with the protocol step that takes it,
and ``_enter`` is the one place ``phase`` changes; any other move is a bug of
ours and raises ``LocalProtocolError``. A move the *peer* asks for (its
``<proceed/>``, its ``<success/>``) is checked first with ``_peer_may``: one
the table does not allow at that moment is the peer breaking the protocol, a
``RemoteProtocolError`` stream error, never a crash.
"""

from __future__ import annotations

import enum
from typing import Mapping
from xml.etree.ElementTree import Element

from .errors import (
    STREAMS_NS, LocalProtocolError, RemoteProtocolError, StreamError, StreamErrorCondition,
)
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


Transitions = Mapping[tuple[Phase, Phase], str]
"""A role's allowed ``(from, to)`` phase moves, each with the step that takes it."""

COMMON_TRANSITIONS: Transitions = {
    **{(phase, Phase.CLOSED): "the stream ends (either side, or a stream error)"
       for phase in Phase if phase is not Phase.CLOSED},
    (Phase.NEGOTIATING, Phase.TLS_PENDING): "<proceed/>: TLS starts with the next bytes "
                                            "(RFC 6120 §5.4.2.3)",
    (Phase.TLS_PENDING, Phase.OPENING): "TLS is up: a new stream starts (RFC 6120 §5.4.3.3)",
}
"""What every role shares: a stream may end in any phase, and STARTTLS."""


class Stream:
    """The machinery both roles use; see ServerStream and ClientStream."""

    ns = CLIENT_NS
    transitions: Transitions = COMMON_TRANSITIONS    # each role adds its own steps

    def __init__(self, *, max_stanza_bytes: int = DEFAULT_MAX_STANZA_BYTES,
                 max_xmlns: int = DEFAULT_MAX_XMLNS) -> None:
        self.max_stanza_bytes = max_stanza_bytes
        self._parser = StreamParser(max_stanza_bytes=max_stanza_bytes, max_xmlns=max_xmlns,
                                    content_namespaces=(self.ns,))
        self._out = bytearray()
        self._phase = Phase.OPENING
        self.secure = False
        self._header_sent = False
        self._cut = False          # drop what is left of the current read

    # -- phases ---------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the stream is; it changes only through ``_enter``."""
        return self._phase

    def _enter(self, phase: Phase) -> None:
        """Move to ``phase``: LocalProtocolError when the role's table has no such move."""
        if (self._phase, phase) not in self.transitions:
            raise LocalProtocolError(f"{type(self).__name__}: no move from {self._phase.name} "
                                     f"to {phase.name}")
        self._phase = phase

    def _peer_may(self, phase: Phase, what: str) -> None:
        """The peer's ``what`` would move us to ``phase``: a stream error when
        the table does not allow that now (the peer broke the protocol)."""
        if (self._phase, phase) not in self.transitions:
            raise RemoteProtocolError(StreamErrorCondition.UNSUPPORTED_STANZA_TYPE,
                                      f"{what} while {self._phase.value}")

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

    def release_parser(self) -> bool:
        """Free the parser's expat state while no stanza is arriving: the
        adapter calls this when the stream has gone quiet (iim/xmpp/xml.py,
        "Idle streams"); the next bytes make a fresh one. True when the
        parser holds none now."""
        if self.phase is Phase.CLOSED:
            return True
        return self._parser.release()

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
        self._peer_may(Phase.TLS_PENDING, "<proceed/>")
        return self._await_tls()

    def _await_tls(self) -> list[Event]:
        """``<proceed/>`` ends the stream: the next one starts under TLS."""
        self._restart()
        self._enter(Phase.TLS_PENDING)
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
        self._enter(Phase.CLOSED)
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
