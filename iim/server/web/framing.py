"""RFC 7395 / XEP-0206 framing <-> the TCP stream the XMPP core expects (sans-I/O).

Theory of operation. The XMPP core (``iim.xmpp.server_stream.ServerStream``,
driven by ``iim.server.c2s.ClientSession``) reads and writes *one* XML
document per stream, as on TCP (RFC 6120 §4): ``<stream:stream>`` opens it,
stanzas are its depth-1 children, ``</stream:stream>`` ends it, and a restart
after SASL is a new XML declaration and header. The web carriers do not
carry such a document:

- WebSocket (RFC 7395 §3.3): every text message is one complete, standalone
  element: ``<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>`` instead of
  the stream header (and for every restart), ``<close/>`` instead of
  ``</stream:stream>``, and each stanza or nonza fully namespaced on its own
  (``<message xmlns='jabber:client'>``, ``<stream:features
  xmlns:stream=...>``).
- BOSH (XEP-0124, XEP-0206): stanzas travel as children of ``<body/>``
  wrappers; the stream is opened by the session creation request, restarted
  by ``xmpp:restart='true'`` and closed by ``type='terminate'``.

Decision: the framing is translated *at the carrier edge*, in both
directions, and the core is not touched. Every session, whatever carries it,
runs the same ServerStream, so SASL, binding, XEP-0198, limits, routing and
stream errors behave the same for every carrier.

- In (``FramedInput``): what the client sent is parsed by the project's
  restricted parser (``iim.xmpp.xml.StreamParser``, primed with a synthetic
  ``jabber:client`` stream root so that each frame's elements are depth-1
  elements of one long document): DOCTYPEs, comments, bad prefixes, oversized
  or over-deep elements are refused exactly as on TCP, with the same stream
  errors. ``<open/>`` becomes a stream header (its ``to``, ``version`` and
  ``xml:lang`` copied), ``<close/>`` becomes ``</stream:stream>``, and every
  other element is written again by the core's serializer and fed to the
  session, whose own parser reads it as it would from a socket. A WebSocket
  message must hold exactly one complete element (RFC 7395 §3.3.3): a partial
  element, a second one or the stream's end tag in a message is
  ``<not-well-formed/>``. Complete means the parser could let go of its
  state after the message (``StreamParser.release``: at depth 1, every byte
  consumed), which also catches a start tag left unfinished after the
  element. Parsing twice costs ~7 µs a stanza; a web client
  sends a few a second.
- Out (``CoreOutput``): the bytes the session writes are split back into
  elements by a second StreamParser (our own output, so its limits are only
  a guard), cut at each XML declaration (a stream restart). The header
  becomes an ``Opened`` event (its ``id``, ``from``, ``version``,
  ``xml:lang``), each depth-1 element an ``Item`` and the end tag ``Closed``.
  ``standalone()`` writes an item with every namespace it uses declared on
  it (``xmlns='jabber:client'`` on stanzas, ``xmlns:stream`` on
  ``<stream:features/>`` and ``<stream:error/>``), as a frame must be.

Both parsers drop their expat state between frames (``release``), so an idle
web session holds no expat parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element

from iim.xmpp.errors import STREAMS_NS, XML_NS, StreamError, StreamErrorCondition
from iim.xmpp.xml import (
    CLIENT_NS, STREAM_CLOSE, ElementReceived, StreamClosed, StreamOpened, StreamParser,
    stream_header, to_bytes,
)

__all__ = [
    "FRAMING_NS", "Closed", "CoreOutput", "FramedInput", "Item", "Opened", "close_frame",
    "open_frame", "standalone",
]

FRAMING_NS = "urn:ietf:params:xml:ns:xmpp-framing"
OPEN = "{%s}open" % FRAMING_NS
CLOSE = "{%s}close" % FRAMING_NS
XML_LANG = "{%s}lang" % XML_NS
_PRIMER = (f"<stream:stream xmlns='{CLIENT_NS}' xmlns:stream='{STREAMS_NS}'>").encode()
_DECLARATION = b"<?xml version='1.0'?>"      # what iim.xmpp.xml.stream_header writes first
_UNLIMITED = 2**31 - 1

Cond = StreamErrorCondition


# -- in: frames from the client -> bytes for the core -----------------------------


class FramedInput:
    """What the client sends, as the TCP stream ClientSession reads."""

    __slots__ = ("_parser",)

    def __init__(self, *, max_stanza_bytes: int, max_xmlns: int) -> None:
        self._parser = StreamParser(max_stanza_bytes=max_stanza_bytes, max_xmlns=max_xmlns,
                                    content_namespaces=(CLIENT_NS,))
        self._parser.feed(_PRIMER)

    def message(self, data: bytes) -> bytes:
        """One WebSocket text message -> the bytes to feed the session.
        Raises StreamError when it is not exactly one complete element."""
        events = self._parser.feed(data)
        if any(not isinstance(event, ElementReceived) for event in events):
            raise StreamError(Cond.NOT_WELL_FORMED, "no stream end tag in RFC 7395 framing")
        if not self._parser.release():          # only between complete elements (xml.py)
            raise StreamError(Cond.NOT_WELL_FORMED,
                              "a WebSocket message must hold one complete element (RFC 7395 §3.3.3)")
        if len(events) > 1:
            raise StreamError(Cond.NOT_WELL_FORMED,
                              "a WebSocket message must hold one element (RFC 7395 §3.3.3)")
        return element_for_core(events[0].element) if events else b""

    def body(self, data: bytes) -> list[Element]:
        """The children of a BOSH ``<body/>``, given as bytes of complete elements."""
        events = self._parser.feed(data)
        if any(not isinstance(event, ElementReceived) for event in events) \
                or not self._parser.release():  # only between complete elements (xml.py)
            raise StreamError(Cond.NOT_WELL_FORMED, "incomplete element in a BOSH body")
        return [event.element for event in events]

    def close(self) -> None:
        self._parser.close()


def element_for_core(element: Element) -> bytes:
    """A client's element as the core reads it on a TCP stream."""
    if element.tag == OPEN:
        return open_stream(to=element.get("to"), version=element.get("version"),
                           lang=element.get(XML_LANG))
    if element.tag == CLOSE:
        return STREAM_CLOSE
    return to_bytes(element)


def open_stream(*, to: str | None, version: str | None, lang: str | None) -> bytes:
    """A client stream header for the core (RFC 6120 §4.7.1), for ``<open/>`` or
    a BOSH session start or restart."""
    return stream_header(to=to, version=version, lang=lang, xml_declaration=False)


# -- out: the core's bytes -> frames for the client --------------------------------


@dataclass(frozen=True)
class Opened:
    """The server's stream header (RFC 6120 §4.7): the attributes a frame needs."""

    id: str | None
    from_: str | None
    version: str | None
    lang: str | None


@dataclass(frozen=True)
class Item:
    """One depth-1 element of the server's stream: a stanza or nonza."""

    element: Element


@dataclass(frozen=True)
class Closed:
    """The server's ``</stream:stream>``."""


class CoreOutput:
    """Splits what the session writes into Opened / Item / Closed events."""

    __slots__ = ("_parser",)

    def __init__(self) -> None:
        self._parser = self._new_parser()

    @staticmethod
    def _new_parser() -> StreamParser:
        return StreamParser(max_stanza_bytes=_UNLIMITED, max_depth=_UNLIMITED,
                            max_attributes=_UNLIMITED, max_names=_UNLIMITED,
                            max_xmlns=_UNLIMITED, content_namespaces=(CLIENT_NS,))

    def feed(self, data: bytes) -> list[Opened | Item | Closed]:
        """Events for ``data``; a LocalProtocolError/StreamError here is a bug of ours."""
        out: list[Opened | Item | Closed] = []
        first, *restarts = data.split(_DECLARATION)
        out += self._events(first)
        for part in restarts:                   # a new stream: a fresh parser
            self._parser.close()
            self._parser = self._new_parser()
            out += self._events(part)
        self._parser.release()
        return out

    def _events(self, data: bytes) -> list[Opened | Item | Closed]:
        if not data:
            return []
        out: list[Opened | Item | Closed] = []
        for event in self._parser.feed(data):
            if isinstance(event, StreamOpened):
                out.append(Opened(event.id, event.from_, event.version, event.lang))
            elif isinstance(event, StreamClosed):
                out.append(Closed())
            else:
                out.append(Item(event.element))
        return out

    def close(self) -> None:
        self._parser.close()


def standalone(element: Element) -> str:
    """``element`` written with every namespace it uses declared on itself.

    The serializer writes the streams namespace with the ``stream`` prefix the
    TCP stream's header declares, wherever it occurs (``<stream:features/>``,
    and any element or attribute a client put in that namespace inside a
    stanza); a frame has no header, so the prefix is declared on its root."""
    text = to_bytes(element, ns="").decode("utf-8")
    if not _uses_streams_namespace(element):
        return text
    local = element.tag.rpartition("}")[2]
    head = "<stream:" + local if element.tag.startswith(_STREAMS) else "<" + local
    return f"{head} xmlns:stream='{STREAMS_NS}'{text[len(head):]}"


_STREAMS = "{%s}" % STREAMS_NS


def _uses_streams_namespace(element: Element) -> bool:
    return any(e.tag.startswith(_STREAMS) or any(k.startswith(_STREAMS) for k in e.attrib)
               for e in element.iter())


def open_frame(opened: Opened) -> str:
    """RFC 7395 §3.4: the server's ``<open/>``."""
    attrs = {"from": opened.from_, "id": opened.id, "version": opened.version,
             "xml:lang": opened.lang}
    written = "".join(f" {name}='{_escape(value)}'" for name, value in attrs.items() if value)
    return f"<open xmlns='{FRAMING_NS}'{written}/>"


def close_frame() -> str:
    """RFC 7395 §3.6: ``<close/>``."""
    return f"<close xmlns='{FRAMING_NS}'/>"


def _escape(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))
