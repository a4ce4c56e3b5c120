"""Restricted XML for XMPP streams: an incremental parser and a serializer.

Theory of operation
-------------------
An XMPP stream is *one* XML document that takes hours to arrive (RFC 6120 §4):
the root ``<stream:stream>`` opens when the session starts and closes when it
ends, and the root's children (depth 1) are the stanzas (``<message/>``,
``<presence/>``, ``<iq/>``) and the "nonzas" (``<starttls/>``, ``<auth/>``,
``<stream:features/>``...). So ``StreamParser`` is a push parser: ``feed()``
takes whatever bytes arrived, runs them through expat, and returns the events
they completed: ``StreamOpened`` for the root's start tag, ``ElementReceived``
each time a depth-1 element closes (it is built as an ElementTree only while it
is open), ``StreamClosed`` for ``</stream:stream>``. Nothing is returned for a
partial stanza (RFC 6120 §8: a server MUST NOT process a partial stanza).

Restricted XML (RFC 6120 §11.1). Expat parses full XML 1.0, so every construct
XMPP forbids is caught where expat reports it, and the stream ends with the
condition the RFC names:

- a DOCTYPE (and so any DTD, entity or notation declaration, all of which can
  only live inside one), a comment, a processing instruction, a second XML
  declaration, a reference to anything but the five predefined entities:
  ``restricted-xml``. The DOCTYPE is refused as soon as expat sees its start, so
  "billion laughs" fails before one entity is declared, let alone expanded;
  parameter entities are never parsed and no external entity is ever fetched.
- an unbound prefix, the ``xml`` prefix bound to another name, the ``xmlns``
  prefix declared or used on an element, a prefix undeclared (``xmlns:p=''``,
  which XML 1.0 has no use for): ``bad-namespace-prefix`` (§4.9.3.2).
- the xml or xmlns namespace *name* bound where it must not be (as the default
  namespace, or to a prefix other than ``xml``): ``not-well-formed``. It breaks
  Namespaces in XML §3, the rule of §4.9.3.13, and no prefix is at fault.
- a root that is not ``{http://etherx.jabber.org/streams}stream``, or a
  content namespace other than the ones we serve: ``invalid-namespace``.
- an encoding other than UTF-8 (declared, BOM-sniffed, or bytes that are not
  UTF-8): ``unsupported-encoding`` (RFC 6120 §11.6).
- anything else expat rejects: ``not-well-formed``.

Namespaces (Namespaces in XML 1.0 §3; RFC 6120 §4.8.3, §11.2). A stanza goes
in on one stream and out on others, so anything the parser accepts must be
written back as XML that every namespace-aware parser accepts, with the same
meaning: one badly written stanza ends the *recipient's* stream.

- Input: expat checks namespace well-formedness as it parses (the conditions
  above). The ``xml`` prefix is bound by definition, so ``<xml:x/>`` and
  ``xml:lang`` are legal and accepted, and so is the redundant
  ``xmlns:xml='http://www.w3.org/XML/1998/namespace'``. Prefixes are not kept:
  the tree holds ``{namespace}local`` names only. An element in no namespace
  (under ``xmlns=''``) is tagged ``{}local``, because to the serializer a bare
  ``local`` means "in the parent's namespace"; attributes without a prefix are
  in no namespace and stay bare, as in ElementTree.
- Output: every name is written from its namespace, never from the input's
  prefixes. An element in the current default namespace is written bare; in a
  namespace declared on our stream header (``stream``, and ``prefixes``) with
  that prefix; in the xml namespace as ``xml:local``, never declared; in any
  other namespace (``''`` for none) with a new ``xmlns='...'``, which then
  holds for its children. An attribute in no namespace is bare; in the xml
  namespace ``xml:local``; in a header namespace with its prefix; otherwise
  with a prefix ``nsN`` declared on that element, chosen not to shadow a header
  prefix. Nothing can be written in the xmlns namespace, nor an attribute
  named ``xmlns``: ``LocalProtocolError``. The common case, stanzas in the
  content namespace with plain attributes, takes none of these branches.

Resource limits (RFC 6120 §13.12: a peer may not exhaust our memory). All give
``policy-violation``:

- *unit size*: the bytes from the start of a depth-1 element to its end tag
  may not exceed ``max_stanza_bytes``; neither may the prolog and stream header.
  The count is kept incrementally, by byte offset in the stream, after every
  slice of at most 64 KiB handed to expat, so a 10 MiB stanza is refused after
  about ``max_stanza_bytes`` + 64 KiB, never buffered whole. (An unfinished
  start tag counts too: expat buffers it internally, so the clock starts at the
  end of the last thing that *did* complete outside a stanza.)
- nesting deeper than ``max_depth`` (the stream root is depth 1).
- more than ``max_attributes`` attributes on one element.
- more than ``max_xmlns`` namespace declarations in one stanza (all its
  elements together) or on the stream header. They are not attributes (the
  attribute limit does not see them), and each one costs expat a binding, a
  prefix entry and a copy of the namespace name.
- more than ``max_names`` distinct element/attribute names, prefixes and
  namespace names new in one stanza.

What a long stream accumulates, and how it is freed (issue 11). Expat keeps
a table entry for every distinct raw element name, attribute name (including
each ``xmlns:p``) and prefix it has seen, and pyexpat interns every name,
prefix and namespace name in ``intern``; none of it is ever freed while the
expat parser lives. A stream that declared fresh prefixes in every stanza
would grow them for as long as it lasts. So the expat parser is *renewed*
between stanzas once the stanzas since the last renewal declared more than
``max_xmlns`` prefixes (legitimate clients seldom declare any; a default
``xmlns='...'`` costs expat nothing lasting), or the names interned since
exceed ``_RENEW_NAMES`` entries or ``_RENEW_NAME_CHARS`` characters. Distinct
raw names (prefix x local name) are then bounded too, by the product of those
bounds and the header's prefixes. A renewal: a fresh parser is primed with the stream
header's namespace declarations (so the stream's own prefixes stay bound),
and the bytes from the start of the next stanza on are handed to it. The
moment is the next depth-1 start tag: there ``GetInputContext()`` holds
exactly the bytes expat has not consumed, from that tag to the end of what
was fed. What a stream holds is thus bounded by one stanza's worth plus the
renewal thresholds, however long it lasts. The module-level name caches only
keep short names, so no peer can fill them with long ones.

Idle streams (issue 14). An expat parser costs about 25 KB once it has
read a stream header and a few stanzas (its name tables, the buffer
``XML_Parse`` copies input into, pyexpat's 8 KiB text buffer, the interned
names), and a connected client spends nearly all its life between stanzas.
So a stream holds no expat parser until its first byte, and ``release()``
drops it between units: when expat is at depth 1 and consumed every byte
fed (after ``Parse()`` returns, ``CurrentByteIndex`` falls short of what was
fed by exactly the partial token it holds). The next ``feed()`` makes a
fresh parser primed with the header's namespaces, as a renewal does; the
primer is named as the peer named its root, so that ``</stream:stream>``
still closes it. A release costs the next stanza about twice its parse time
(a new expat parser that builds its name tables and interns the names
again; measured: 11 µs to parse a chat message into a warm parser, 33 µs
with a release after each), so it is for streams that went quiet, not for
every read: the parser does not decide when, the adapter does, it has the
clock (``Stream.release_parser``). A stream holds ~3 KB instead of ~25 KB
(bench/memory.py).

References. Expat calls back into the parser's bound methods, and the parser
holds the expat parser: a reference cycle, which only the cyclic GC would
collect. The public ``StreamParser`` is therefore a handle on ``_Parser``
(the state and handlers); ``close()``, or the handle going away, cuts the
cycle, so a closed stream's parser is freed by reference counting alone.

One cost is bounded rather than refused: a peer that trickles one big token a
few bytes per segment makes expat rescan the unfinished token on every
``feed()``, work quadratic in the token's size, which ``max_stanza_bytes``
caps. Expat >= 2.6 can defer those rescans, but deferring also holds back a
complete stanza until more bytes arrive, which an interactive stream cannot
afford, so it is turned off.

Stream restarts (RFC 6120 §4.3.3): after STARTTLS and after SASL success both
sides start a new stream over the same connection, with a new XML declaration
and header. ``reset()`` throws the expat parser away and starts a fresh one.
Bytes the peer sent after the element that triggered the restart, in the same
``feed()`` call, were parsed as part of the *old* stream: the caller must drop
the events that follow that element (the STARTTLS plaintext-injection rule).

Errors: a ``RemoteProtocolError`` (a ``StreamError``) is raised for anything the
peer did wrong; events completed earlier in the same ``feed()`` call are
dropped with it, because the stream is over. After an error the parser is
dead: ``feed()`` and ``reset()`` raise ``LocalProtocolError``. Bytes after
``</stream:stream>`` are ignored.

Performance, measured with ``python -m timeit`` (Python 3.11.7, expat 2.5.0,
one AMD EPYC core): a typical 264-byte chat message (``<message from= id= to=
type='chat' xml:lang=><body>..</body><active xmlns='http://jabber.org/protocol/
chatstates'/></message>``) fed one per ``feed()`` call takes 6.9 µs, about
145,000 stanzas/s or 38 MB/s; fed 248 at a time in a 64 KiB buffer, 6.1 µs per
stanza (43 MB/s). For scale, ElementTree's XMLPullParser, which checks none of
the above, takes 3.6 µs for the same stanza. ``to_bytes`` on it: 6.9 µs.
"""

from __future__ import annotations

import codecs
import re
from itertools import islice
from dataclasses import dataclass
from typing import Iterable, Mapping, Union
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat

from .errors import (
    STREAMS_NS,
    XML_NS,
    LocalProtocolError,
    RemoteProtocolError,
    StreamErrorCondition,
)

CLIENT_NS = "jabber:client"
SERVER_NS = "jabber:server"
STREAM_TAG = "{%s}stream" % STREAMS_NS
XML_LANG = "{%s}lang" % XML_NS
XMLNS_NS = "http://www.w3.org/2000/xmlns/"  # Namespaces in XML §3: bound to 'xmlns' only
STREAM_CLOSE = b"</stream:stream>"

DEFAULT_MAX_STANZA_BYTES = 262144
DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_ATTRIBUTES = 64
DEFAULT_MAX_NAMES = 10000
DEFAULT_MAX_XMLNS = 64

_RENEW_NAMES = 256  # names interned that make the next stanza renew the parser...
_RENEW_NAME_CHARS = 65536  # ... or their characters
_CACHED_NAME_CHARS = 128   # longer names are not kept in the module-level caches

_KEEPALIVE_SLACK = 16  # bytes of white space between stanzas not counted as a unit
_SLICE = 65536  # bytes handed to expat at once: the granularity of the size check

Condition = StreamErrorCondition


# ---------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class StreamOpened:
    """The peer's stream header arrived (RFC 6120 §4.7).

    ``attrs`` holds every attribute, names in ElementTree form (``xml:lang`` is
    ``{http://www.w3.org/XML/1998/namespace}lang``); the common ones are also
    fields. ``ns`` is the content namespace (the default namespace declared on
    the header): ``jabber:client`` or ``jabber:server``.
    """

    attrs: dict
    ns: str
    version: str | None
    to: str | None
    from_: str | None
    id: str | None
    lang: str | None


@dataclass(frozen=True)
class ElementReceived:
    """A complete depth-1 element: a stanza or a nonza, with ``{ns}tag`` names."""

    element: Element


@dataclass(frozen=True)
class StreamClosed:
    """The peer sent ``</stream:stream>`` (RFC 6120 §4.4)."""


Event = Union[StreamOpened, ElementReceived, StreamClosed]


# ---------------------------------------------------------------------------
# Parser


class _StreamEnded(Exception):
    """Raised from the root's end handler to stop expat at ``</stream:stream>``."""


class _Renew(Exception):
    """Raised from a depth-1 start handler: hand ``rest`` to a fresh expat parser."""

    def __init__(self, rest: bytes) -> None:
        super().__init__()
        self.rest = rest


class StreamParser:
    """Incremental, restricted XML parser for one side of an XMPP stream.

    A handle on the parser proper (see "References" above): ``close()`` or
    dropping the last reference frees everything without the cyclic GC.
    """

    __slots__ = ("_parser",)

    def __init__(self, **limits) -> None:
        self._parser = _Parser(**limits)

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data`` and return the events it completed, in order."""
        return self._parser.feed(data)

    def reset(self) -> None:
        """Start over for a stream restart (RFC 6120 §4.3.3): a fresh expat parser."""
        self._parser.reset()

    def release(self) -> bool:
        """Drop the expat parser while no unit is in progress (see "Idle
        streams" above); the next ``feed()`` makes a fresh one. True when the
        parser holds no expat parser now."""
        return self._parser.release()

    def close(self) -> None:
        """Drop the expat parser and what it holds; ``feed()`` raises afterwards."""
        self._parser.close()

    @property
    def unit_in_progress(self) -> bool:
        return self._parser.unit_in_progress

    @property
    def stream_open(self) -> bool:
        return self._parser.stream_open

    def __getattr__(self, name: str):
        return getattr(self._parser, name)        # the limits, for callers and tests

    def __del__(self) -> None:
        parser = getattr(self, "_parser", None)
        if parser is not None:
            parser.close()


class _Parser:
    """The state and expat handlers behind a ``StreamParser``."""

    # One per stream, for the stream's life: slots, not a ~1.6 KB __dict__ (issue 14).
    __slots__ = (
        "max_stanza_bytes", "max_depth", "max_attributes", "max_names", "max_xmlns",
        "content_namespaces", "_dead", "_root_namespaces", "_prime", "_root_name", "_expat",
        "_depth", "_header_done", "_builder", "_closed", "_head", "_sniffed", "_fed", "_mark",
        "_tail", "_events", "_origin", "_interned", "_names_seen", "_name_chars",
        "_declarations", "_prefixed", "_renew_due", "_chunk_length",
        "__weakref__",      # 8 bytes: that a dropped parser is freed can be checked
    )

    def __init__(
        self,
        *,
        max_stanza_bytes: int = DEFAULT_MAX_STANZA_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_attributes: int = DEFAULT_MAX_ATTRIBUTES,
        max_names: int = DEFAULT_MAX_NAMES,
        max_xmlns: int = DEFAULT_MAX_XMLNS,
        content_namespaces: Iterable[str] = (CLIENT_NS, SERVER_NS),
    ) -> None:
        self.max_stanza_bytes = max_stanza_bytes
        self.max_depth = max_depth
        self.max_attributes = max_attributes
        self.max_names = max_names
        self.max_xmlns = max_xmlns
        self.content_namespaces = frozenset(content_namespaces)
        self._dead = False
        self._start_stream()

    # -- public API ---------------------------------------------------------

    def close(self) -> None:
        """Cut the expat parser <-> handlers cycle; the parser is finished."""
        self._dead = True
        self._expat = None
        self._builder = None
        self._interned = {}
        self._events = []

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data`` and return the events it completed, in order."""
        if self._dead:
            raise LocalProtocolError("feed() after a stream error: this parser is finished")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"feed() takes bytes, not {type(data).__name__}")
        if self._closed:
            return []
        self._events = events = []
        try:
            self._feed(bytes(data))
        except _StreamEnded:
            self._closed = True
        except BaseException:
            self._dead = True
            raise
        finally:
            self._events = []  # not the caller's list: its stanzas are not ours to keep
        return events

    def reset(self) -> None:
        """Start over for a stream restart (RFC 6120 §4.3.3): a fresh expat parser."""
        if self._dead:
            raise LocalProtocolError("reset() after a stream error: this parser is finished")
        self._start_stream()

    def release(self) -> bool:
        """Drop expat between units; False (nothing dropped) in the middle of
        one, before the stream header, or when the parser is finished."""
        parser = self._expat
        if parser is None:
            return not self._dead
        if self._dead or self._closed or self._depth != 1 or parser.CurrentByteIndex != self._fed:
            return False        # after Parse(), the index is short of _fed by a partial token
        self._expat = None
        self._interned = {}     # its names (~3 KB): the next parser interns its own
        self._mark = self._fed
        return True

    @property
    def unit_in_progress(self) -> bool:
        """True while a stanza (or the stream header) has started arriving but
        is not complete: what a "stanza took too long" timer watches. A few
        bytes of slack cover whitespace keepalives, which are not units."""
        if self._depth >= 2:
            return True
        return self._fed - self._mark > _KEEPALIVE_SLACK

    @property
    def stream_open(self) -> bool:
        """True between ``StreamOpened`` and ``StreamClosed`` (or an error)."""
        return self._depth >= 1 and not self._closed and not self._dead

    # -- feeding --------------------------------------------------------------

    def _start_stream(self) -> None:
        self._root_namespaces: dict[str | None, str] = {}
        self._prime = b""  # the renewals' primer, made once the header is known
        self._root_name = "stream:stream"  # the root's name as the peer wrote it
        self._expat = None  # made when the first byte comes (see "Idle streams")
        self._depth = 0  # 0: before the root; 1: inside the root; 2+: in a stanza
        self._header_done = False
        self._builder: TreeBuilder | None = None
        self._closed = False
        self._head = b""  # bytes held back until the encoding can be sniffed
        self._sniffed = False
        self._fed = 0  # bytes handed to this expat parser so far
        self._mark = 0  # offset where the current unit (header or stanza) began
        self._tail = b""  # the last few bytes fed, to explain an expat error
        self._events: list[Event] = []
        self._origin = 0  # stream bytes consumed by earlier expat parsers (renewals)

    def _new_expat(self, prime: bytes = b""):
        """A fresh expat parser; ``prime`` (a renewal's root start tag) is parsed
        before any handler is set, so that it binds prefixes and reports nothing."""
        parser = expat.ParserCreate("UTF-8", "}", intern={})
        if prime:
            parser.Parse(prime, False)
        self._interned = parser.intern
        self._names_seen = len(self._interned)  # entries of _interned already counted
        self._name_chars = 0  # their characters
        self._declarations = 0  # namespace declarations in the current unit
        self._prefixed = 0  # prefixed declarations in stanzas since this parser began
        self._renew_due = False
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        if hasattr(parser, "SetReparseDeferralEnabled"):
            # Expat >= 2.6 may hold back a complete token until more bytes come;
            # a chat stanza must be delivered when its last byte arrives.
            parser.SetReparseDeferralEnabled(False)
        parser.buffer_text = True
        parser.XmlDeclHandler = self._on_xml_declaration
        parser.StartNamespaceDeclHandler = self._on_namespace
        parser.StartElementHandler = self._on_start
        parser.EndElementHandler = self._on_end
        parser.CharacterDataHandler = self._on_data
        for handler, refuse in _REFUSERS.items():
            setattr(parser, handler, refuse)
        return parser

    def _feed(self, data: bytes) -> None:
        if not self._sniffed:
            data = self._sniff(data)
        if self._expat is None and data:
            self._revive()
        for start in range(0, len(data), _SLICE):
            self._parse(data[start : start + _SLICE] if len(data) > _SLICE else data)
            self._check_unit_size(self._fed)

    def _sniff(self, data: bytes) -> bytes:
        """Hold the first two bytes of a stream to refuse UTF-16/32 and EBCDIC."""
        head = self._head + data
        if len(head) < 2:
            self._head = head
            return b""
        self._sniffed, self._head = True, b""
        if head[:2] in (b"\xfe\xff", b"\xff\xfe", b"\x4c\x6f") or 0 in head[:2]:
            raise RemoteProtocolError(
                Condition.UNSUPPORTED_ENCODING, "the stream is not UTF-8 (RFC 6120 §11.6)"
            )
        return head

    def _parse(self, chunk: bytes) -> None:
        self._chunk_length = len(chunk)
        while True:
            try:
                self._expat.Parse(chunk, False)
                break
            except _Renew as renew:
                chunk = self._renewed(renew.rest)
                self._chunk_length = len(chunk)
            except expat.ExpatError as exc:
                raise self._explain(exc.code, chunk) from None
        self._fed += len(chunk)
        if self._header_done:
            # The header is complete: nothing is pending after it (the next
            # unit starts later). Marking the end of this slice may also skip
            # the start of a stanza sent with the header: the size limit is
            # then late by less than one slice, still bounded.
            self._header_done = False
            if self._depth == 1:
                self._mark = self._fed
        self._tail = (self._tail + chunk)[-8:]

    def _check_unit_size(self, offset: int) -> None:
        if offset - self._mark > self.max_stanza_bytes:
            what = "stanza" if self._depth >= 1 else "stream header"
            raise RemoteProtocolError(
                Condition.POLICY_VIOLATION,
                f"{what} larger than the limit of {self.max_stanza_bytes} bytes",
            )

    # -- expat handlers -------------------------------------------------------

    def _on_xml_declaration(self, version, encoding, standalone) -> None:
        if encoding is not None and encoding.lower() != "utf-8":
            raise RemoteProtocolError(
                Condition.UNSUPPORTED_ENCODING,
                f"encoding {_clip(encoding)!r} declared; XMPP streams are UTF-8 (RFC 6120 §11.6)",
            )

    def _on_namespace(self, prefix, uri) -> None:
        """Each ``xmlns``/``xmlns:p`` declaration; reported before its element's start."""
        if self._depth == 0:
            self._root_namespaces[prefix] = uri
        elif prefix is not None:
            self._prefixed += 1             # expat keeps each prefix until renewed
        self._declarations += 1
        if self._declarations > self.max_xmlns:
            where = "on the stream header" if self._depth == 0 else "in one stanza"
            raise RemoteProtocolError(
                Condition.POLICY_VIOLATION,
                f"more than {self.max_xmlns} namespace declarations {where}",
            )

    def _on_start(self, name: str, attrs: dict) -> None:
        depth = self._depth
        if depth == 0:
            return self._open_stream(name, attrs)
        if depth >= self.max_depth:
            raise RemoteProtocolError(
                Condition.POLICY_VIOLATION, f"elements nested more than {self.max_depth} deep"
            )
        if depth == 1:
            if self._renew_due:
                self._renew()
            self._builder = TreeBuilder()
            self._mark = self._expat.CurrentByteIndex
        self._builder.start(_tag(name), self._attributes(attrs) if attrs else attrs)
        self._depth = depth + 1

    def _on_end(self, name: str) -> None:
        depth = self._depth = self._depth - 1
        if depth == 0:
            self._events.append(StreamClosed())
            raise _StreamEnded
        self._builder.end(_tag(name))
        if depth == 1:
            self._finish_element()

    def _on_data(self, text: str) -> None:
        if self._depth >= 2:
            self._builder.data(text)
        elif text.strip(" \t\r\n"):  # XML white space only, not U+00A0 and friends
            raise RemoteProtocolError(Condition.BAD_FORMAT, "character data between stanzas")
        else:  # whitespace keepalive (RFC 6120 §4.6.1): nothing pending before it
            self._mark = self._expat.CurrentByteIndex

    # -- building -------------------------------------------------------------

    def _open_stream(self, name: str, attrs: dict) -> None:
        _check_root(_tag(name), self._root_namespaces, self.content_namespaces)
        attrs = self._attributes(attrs)
        self._declarations = 0
        self._depth = 1
        self._mark = self._expat.CurrentByteIndex
        self._header_done = True
        self._root_name = _raw_name(self._expat.GetInputContext(), self._root_namespaces)
        self._events.append(
            StreamOpened(
                attrs=attrs,
                ns=self._root_namespaces[None],
                version=attrs.get("version"),
                to=attrs.get("to"),
                from_=attrs.get("from"),
                id=attrs.get("id"),
                lang=attrs.get(XML_LANG),
            )
        )

    def _attributes(self, attrs: dict) -> dict:
        if len(attrs) > self.max_attributes:
            raise RemoteProtocolError(
                Condition.POLICY_VIOLATION,
                f"more than {self.max_attributes} attributes on an element",
            )
        for key in attrs:
            if "}" in key:
                return {_qname(key): value for key, value in attrs.items()}
        return attrs

    def _finish_element(self) -> None:
        end = self._expat.CurrentByteIndex
        self._check_unit_size(end)
        self._mark = end
        self._events.append(ElementReceived(self._builder.close()))
        self._builder = None
        self._declarations = 0
        if len(self._interned) != self._names_seen:
            self._count_new_names()
        if self._prefixed > self.max_xmlns:
            self._renew_due = True

    def _count_new_names(self) -> None:
        """Names this stanza added to the intern table (the newest entries)."""
        interned = self._interned
        new = len(interned) - self._names_seen
        if new > self.max_names:
            raise RemoteProtocolError(
                Condition.POLICY_VIOLATION,
                f"more than {self.max_names} distinct element and attribute names, "
                "prefixes and namespaces in one stanza",
            )
        self._name_chars += sum(len(name or "") for name in islice(reversed(interned), new))
        self._names_seen = len(interned)
        if self._names_seen > _RENEW_NAMES or self._name_chars > _RENEW_NAME_CHARS:
            self._renew_due = True

    # -- renewal (see "What a long stream accumulates") -------------------------

    def _renew(self) -> None:
        """At a depth-1 start tag: stop this expat parser, handing back what it
        has not consumed (this tag on). An expat built without context bytes
        gives nothing back: it is then kept."""
        rest = self._expat.GetInputContext()
        self._renew_due = False
        if rest:
            raise _Renew(rest)

    def _renewed(self, rest: bytes) -> bytes:
        """Replace expat by a fresh parser primed with the stream header's
        namespaces; return ``rest`` (the next stanza on), for it to parse."""
        consumed = self._fed + self._chunk_length - len(rest)   # by the old parser
        prime = self._primer()
        self._expat = self._new_expat(prime)
        self._origin += consumed - len(prime)
        self._fed = self._mark = len(prime)
        self._tail = b""
        return rest

    def _revive(self) -> None:
        """An expat parser for bytes that came after ``release()`` (primed as
        for a renewal, nothing held back: the release was between units), or
        the first one of a stream."""
        if self._depth == 0:
            self._expat = self._new_expat()
            return
        prime = self._primer()
        self._origin += self._fed - len(prime)
        self._expat = self._new_expat(prime)
        self._fed = self._mark = len(prime)
        self._tail = b""

    def _primer(self) -> bytes:
        if not self._prime:
            self._prime = _prime(self._root_namespaces, self._root_name)
        return self._prime

    # -- errors ---------------------------------------------------------------

    def _explain(self, code: int, chunk: bytes) -> RemoteProtocolError:
        """Turn an expat error into the stream error RFC 6120 names for it."""
        message = expat.ErrorString(code)
        window = self._tail + chunk
        offset = self._expat.ErrorByteIndex - (self._fed - len(self._tail))
        at = window[offset : offset + 4] if 0 <= offset < len(window) else b""
        before = window[max(0, offset - 2) : max(0, offset)]
        condition = _EXPAT_CONDITIONS.get(code, Condition.NOT_WELL_FORMED)
        if condition is Condition.NOT_WELL_FORMED:
            if _is_markup_declaration(before + at, len(before)):
                condition, message = Condition.RESTRICTED_XML, "DTD markup is not allowed"
            elif at[:1] >= b"\x80" and _starts_bad_utf8(at):
                condition, message = Condition.UNSUPPORTED_ENCODING, "bytes that are not UTF-8"
        where = self._origin + self._expat.ErrorByteIndex
        return RemoteProtocolError(condition, f"{message} (byte {where})")


def _check_root(tag: str, namespaces: dict, content_namespaces: frozenset) -> None:
    """RFC 6120 §4.8: the root, its namespace and the content namespace."""
    if tag != STREAM_TAG:
        # Right namespace, wrong element is bad XMPP; any other root is the wrong namespace.
        in_streams_ns = tag.startswith("{%s}" % STREAMS_NS)
        condition = Condition.BAD_FORMAT if in_streams_ns else Condition.INVALID_NAMESPACE
        raise RemoteProtocolError(condition, f"root element {_clip(tag)!r} is not a stream header")
    default = namespaces.get(None)
    if default == STREAMS_NS:
        raise RemoteProtocolError(
            Condition.BAD_NAMESPACE_PREFIX, "the stream namespace must be declared with a prefix"
        )
    if default not in content_namespaces:
        raise RemoteProtocolError(
            Condition.INVALID_NAMESPACE,
            f"content namespace {_clip(default or '')!r} is not one of "
            f"{', '.join(sorted(content_namespaces))}",
        )


def _prime(namespaces: dict, root: str) -> bytes:
    """A root start tag declaring the stream header's namespaces, to prime a
    renewed expat parser; never reported, it is named as the peer named its
    root, so that the peer's ``</stream:stream>`` closes it."""
    declarations = "".join(
        f" xmlns='{_escape_attr(uri)}'" if prefix is None
        else f" xmlns:{prefix}='{_escape_attr(uri)}'"
        for prefix, uri in namespaces.items()
    )
    return f"<{root}{declarations}>".encode("utf-8")


_RAW_NAME = re.compile(rb"<([^\s/>]+)")


def _raw_name(context: bytes | None, namespaces: dict) -> str:
    """The root's qualified name as written, from the input context of its
    start tag; without context, the first prefix bound to the streams namespace."""
    found = _RAW_NAME.match(context or b"")
    if found:
        return found.group(1).decode("utf-8")
    prefix = next((p for p, uri in namespaces.items() if p and uri == STREAMS_NS), "stream")
    return f"{prefix}:stream"


_QNAMES: dict[str, str] = {}
_TAGS: dict[str, str] = {}


def _qname(name: str) -> str:
    """An attribute name from expat's ``ns}local`` to ElementTree's ``{ns}local``
    (cached, bounded); ``local``, in no namespace, stays as it is."""
    try:
        return _QNAMES[name]
    except KeyError:
        pass
    qname = "{" + name if "}" in name else name
    if len(_QNAMES) < 4096 and len(name) <= _CACHED_NAME_CHARS:
        _QNAMES[name] = qname
    return qname


def _tag(name: str) -> str:
    """An element name as ``_qname``, except that ``local`` (in no namespace,
    under ``xmlns=''``) becomes ``{}local``: to the serializer a bare tag means
    "in the parent's namespace" (see "Namespaces" above)."""
    try:
        return _TAGS[name]
    except KeyError:
        pass
    tag = "{" + name if "}" in name else "{}" + name
    if len(_TAGS) < 4096 and len(name) <= _CACHED_NAME_CHARS:
        _TAGS[name] = tag
    return tag


def _refuse(what: str):
    def handler(*args) -> None:
        raise RemoteProtocolError(
            Condition.RESTRICTED_XML, f"{what} is not allowed (RFC 6120 §11.1)"
        )

    return handler


# Every construct RFC 6120 §11.1 forbids that expat reports through a handler.
# Declarations can only occur inside a DOCTYPE, which is refused at its start;
# their handlers are set anyway so that nothing depends on that order.
_RESTRICTED_HANDLERS = {
    "StartDoctypeDeclHandler": "a DOCTYPE",
    "EntityDeclHandler": "an entity declaration",
    "UnparsedEntityDeclHandler": "an entity declaration",
    "NotationDeclHandler": "a notation declaration",
    "ElementDeclHandler": "an element declaration",
    "AttlistDeclHandler": "an attribute-list declaration",
    "ExternalEntityRefHandler": "an external entity",
    "SkippedEntityHandler": "an entity reference",
    "ProcessingInstructionHandler": "a processing instruction",
    "CommentHandler": "a comment",
}


_REFUSERS = {handler: _refuse(what) for handler, what in _RESTRICTED_HANDLERS.items()}


def _expat_codes(condition: Condition, *names: str) -> dict[int, Condition]:
    messages = [getattr(expat.errors, name) for name in names if hasattr(expat.errors, name)]
    return {expat.errors.codes[message]: condition for message in messages}


_EXPAT_CONDITIONS = {
    **_expat_codes(
        Condition.BAD_NAMESPACE_PREFIX,
        "XML_ERROR_UNBOUND_PREFIX",
        "XML_ERROR_UNDECLARING_PREFIX",
        "XML_ERROR_RESERVED_PREFIX_XML",
        "XML_ERROR_RESERVED_PREFIX_XMLNS",
    ),
    # The xml or xmlns namespace name bound as the default or to another prefix.
    **_expat_codes(Condition.NOT_WELL_FORMED, "XML_ERROR_RESERVED_NAMESPACE_URI"),
    **_expat_codes(
        Condition.RESTRICTED_XML,
        "XML_ERROR_MISPLACED_XML_PI",  # a second <?xml?> declaration
        "XML_ERROR_UNDEFINED_ENTITY",  # &name; other than the predefined five
        "XML_ERROR_RECURSIVE_ENTITY_REF",
        "XML_ERROR_BINARY_ENTITY_REF",
        "XML_ERROR_ASYNC_ENTITY",
        "XML_ERROR_PARAM_ENTITY_REF",
        "XML_ERROR_EXTERNAL_ENTITY_HANDLING",
        "XML_ERROR_ENTITY_DECLARED_IN_PE",
        "XML_ERROR_NOT_STANDALONE",
        "XML_ERROR_AMPLIFICATION_LIMIT_BREACH",
    ),
    **_expat_codes(
        Condition.UNSUPPORTED_ENCODING,
        "XML_ERROR_UNKNOWN_ENCODING",
        "XML_ERROR_INCORRECT_ENCODING",
    ),
}


def _is_markup_declaration(window: bytes, error_at: int) -> bool:
    """Did expat stop at ``<!DOCTYPE``/``<!ENTITY``/... inside the root?

    There expat reports a syntax error (the byte after ``<!`` is not ``[`` or
    ``-``), not a DOCTYPE; RFC 6120 §11.1 still calls it restricted XML.
    """
    start = window.rfind(b"<!", 0, error_at + 2)
    return start != -1 and window[start + 2 : start + 3].isalpha()


def _starts_bad_utf8(data: bytes) -> bool:
    """True when ``data`` begins with a byte sequence that is not UTF-8."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError as exc:
        return exc.start == 0
    return False


def _clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------
# Serializer


def stream_header(
    *,
    to: object | None = None,
    from_: object | None = None,
    id: str | None = None,  # noqa: A002 - the RFC's name
    version: str | None = "1.0",
    lang: str | None = None,
    ns: str = CLIENT_NS,
    prefixes: Mapping[str, str] | None = None,
    xml_declaration: bool = True,
) -> bytes:
    """The opening of our stream (RFC 6120 §4.7), XML declaration included.

    ``to``/``from_`` may be JIDs or strings. ``prefixes`` maps extra namespaces
    to the prefixes declared on the header, e.g. ``{"jabber:server:dialback":
    "db"}`` (XEP-0220); pass the same mapping to ``to_bytes``. They may not
    touch the reserved prefixes and namespaces, nor the stream's own.
    """
    parts = ["<?xml version='1.0'?>" if xml_declaration else ""]
    parts.append(f"<stream:stream xmlns='{_escape_attr(ns)}' xmlns:stream='{STREAMS_NS}'")
    for uri, prefix in (prefixes or {}).items():
        _check_header_prefix(uri, prefix)
        parts.append(f" xmlns:{prefix}='{_escape_attr(uri)}'")
    attributes = (("to", to), ("from", from_), ("id", id), ("version", version), ("xml:lang", lang))
    for name, value in attributes:
        if value is not None:
            parts.append(f" {name}='{_escape_attr(str(value))}'")
    parts.append(">")
    return "".join(parts).encode("utf-8")


def to_bytes(
    element: Element, *, ns: str = CLIENT_NS, prefixes: Mapping[str, str] | None = None
) -> bytes:
    """Serialize a stanza or nonza for a stream whose content namespace is ``ns``.

    Elements in ``ns`` are written without ``xmlns`` (RFC 6120 §4.8.3: stanzas
    inherit the stream's default namespace); other namespaces are declared
    where they start; namespaces in ``prefixes`` (declared on our stream header)
    are written with their prefix, and so is the stream namespace
    (``<stream:features/>``, ``<stream:error/>``). An unqualified tag inherits its parent's
    namespace, so ``Element("message")`` is a jabber:client message; ``{}tag``
    is in no namespace. The xml namespace is written with its own prefix
    (``<xml:x/>``), never declared (see "Namespaces" above).

    Raises ``LocalProtocolError`` for what XMPP cannot carry: comments,
    processing instructions, invalid names, characters XML 1.0 forbids, names
    in the xmlns namespace, an attribute named ``xmlns``.
    """
    out: list[str] = []
    _write(out, element, ns, {**_STREAM_PREFIX, **prefixes} if prefixes else _STREAM_PREFIX)
    return "".join(out).encode("utf-8")


_STREAM_PREFIX = {STREAMS_NS: "stream"}  # declared by every header stream_header() writes
_RESERVED_PREFIXES = ("xml", "xmlns", "stream")
_RESERVED_NAMESPACES = (XML_NS, XMLNS_NS, STREAMS_NS, "")


def _check_header_prefix(uri: str, prefix: str) -> None:
    """Namespaces in XML §3: ``xml``/``xmlns`` and their names are bound by
    definition; 'stream' is already declared; a prefix cannot be bound to ''."""
    if _check_name(prefix) in _RESERVED_PREFIXES or uri in _RESERVED_NAMESPACES:
        raise LocalProtocolError(f"cannot declare prefix {prefix!r} for namespace {uri!r}")


def _write(out: list[str], element: Element, default_ns: str, prefixes: Mapping[str, str]) -> None:
    tag = element.tag
    if not isinstance(tag, str):
        raise LocalProtocolError(
            "comments and processing instructions cannot be sent (RFC 6120 §11.1)"
        )
    uri, local = _split(tag)
    uri = default_ns if uri is None else uri
    name, declaration, child_ns = _element_name(uri, local, default_ns, prefixes)
    out.append(f"<{name}{declaration}")
    if element.attrib:
        _write_attributes(out, element.attrib, prefixes)
    if element.text is None and len(element) == 0:
        out.append("/>")
        return
    out.append(">")
    if element.text:
        out.append(_escape_text(element.text))
    for child in element:
        _write(out, child, child_ns, prefixes)
        if child.tail:
            out.append(_escape_text(child.tail))
    out.append(f"</{name}>")


def _element_name(
    uri: str, local: str, default_ns: str, prefixes: Mapping[str, str]
) -> tuple[str, str, str]:
    """(name as written, xmlns declaration, default namespace for the children)."""
    prefix = prefixes.get(uri)
    if prefix is not None:
        return f"{prefix}:{local}", "", default_ns
    if uri == default_ns:
        return local, "", default_ns
    if uri == XML_NS:  # bound by definition; may not be the default namespace
        return f"xml:{local}", "", default_ns
    if uri == XMLNS_NS:
        raise LocalProtocolError(f"element {local!r} in the xmlns namespace cannot be sent")
    return local, f" xmlns='{_escape_attr(uri)}'", uri


def _write_attributes(
    out: list[str], attrib: Mapping[str, str], prefixes: Mapping[str, str]
) -> None:
    declared: dict[str, str] = {}  # namespace -> prefix declared on this element
    for key, value in attrib.items():
        uri, local = _split(key)
        if not uri:  # None or '': no namespace
            if local == "xmlns" or (uri == "" and local in attrib):
                raise LocalProtocolError(f"attribute {key!r} cannot be sent")
            name = local
        elif uri == XML_NS:
            name = f"xml:{local}"
        elif uri in prefixes:
            name = f"{prefixes[uri]}:{local}"
        else:  # a namespaced attribute needs a prefix of its own
            name = f"{_attribute_prefix(out, uri, declared, prefixes)}:{local}"
        out.append(f" {name}='{_escape_attr(value)}'")


def _attribute_prefix(
    out: list[str], uri: str, declared: dict[str, str], prefixes: Mapping[str, str]
) -> str:
    """The prefix for ``uri`` on this element: ``nsN``, declared here once, never
    one of the header's (that would move the element or another attribute)."""
    prefix = declared.get(uri)
    if prefix is None:
        if uri == XMLNS_NS:
            raise LocalProtocolError("attributes in the xmlns namespace cannot be sent")
        number, taken = len(declared) + 1, (*prefixes.values(), *declared.values())
        while f"ns{number}" in taken:
            number += 1
        prefix = declared[uri] = f"ns{number}"
        out.append(f" xmlns:{prefix}='{_escape_attr(uri)}'")
    return prefix


def _split(name: str) -> tuple[str | None, str]:
    if name[:1] == "{":
        uri, _, local = name[1:].rpartition("}")  # as ElementTree: a local name has no '}'
        return uri, _check_name(local)
    return None, _check_name(name)


# An approximation of XML's NCName: a letter or '_' first, then letters,
# digits, '.', '-', '_' (Unicode-aware through \w). Names are checked once.
# XML 1.0 (fifth edition) §2.3 NameStartChar / NameChar, without ":" (a
# namespace-qualified local name). A superset of what expat accepts, so any
# name we parsed can be written back.
_NAME_START = ("A-Z_a-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02ff\u0370-\u037d"
               "\u037f-\u1fff\u200c-\u200d\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff"
               "\uf900-\ufdcf\ufdf0-\ufffd\U00010000-\U000effff")
_NAME_MORE = _NAME_START + "\\-.0-9\u00b7\u0300-\u036f\u203f-\u2040"
_NCNAME = re.compile(f"[{_NAME_START}][{_NAME_MORE}]*\\Z")
_GOOD_NAMES: set[str] = set()


def _check_name(name: str) -> str:
    if name in _GOOD_NAMES:
        return name
    if not isinstance(name, str) or not _NCNAME.match(name):
        raise LocalProtocolError(f"{name!r} is not an XML name that can be sent")
    if len(_GOOD_NAMES) < 4096 and len(name) <= _CACHED_NAME_CHARS:
        _GOOD_NAMES.add(name)
    return name


# Characters XML 1.0 cannot carry at all, even escaped (XML 1.0 §2.2).
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_SPECIAL = re.compile("[&<>\r]")
_ATTR_SPECIAL = re.compile("[&<>'\t\n\r]")


def _check_chars(text: str) -> None:
    bad = _NOT_XML_CHAR.search(text)
    if bad is not None:
        raise LocalProtocolError(f"U+{ord(bad.group()):04X} cannot be sent in XML 1.0")


def _escape_text(text: str) -> str:
    _check_chars(text)
    if _TEXT_SPECIAL.search(text) is None:
        return text
    # '>' too, so that "]]>" can never appear; '\r' so that it survives
    # end-of-line normalization on the other side.
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\r", "&#13;")


def _escape_attr(text: str) -> str:
    _check_chars(text)
    if _ATTR_SPECIAL.search(text) is None:
        return text
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("'", "&apos;")
    # Attribute-value normalization would turn these into spaces (XML 1.0 §3.3.3).
    return text.replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;")
