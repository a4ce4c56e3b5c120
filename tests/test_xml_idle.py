"""An idle stream holds no expat parser (iim/xmpp/xml.py, "Idle streams"; issue 14).

``release()`` drops expat between units; the next bytes get a fresh parser
primed with the stream header's namespaces. Whatever was released, the events,
the errors and their byte offsets are those of a parser never released.
"""

import gc
import weakref

import pytest

from iim.xmpp.errors import RemoteProtocolError, StreamErrorCondition
from iim.xmpp.xml import ElementReceived, StreamClosed, StreamParser

HEADER = (b"<?xml version='1.0'?><stream:stream to='im.example.com' version='1.0'"
          b" xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
          b" xmlns:db='jabber:server:dialback'>")
PRESENCE = b"<presence/>"
MESSAGE = (b"<message to='romeo@example.net' type='chat'><body>Art thou not Romeo?</body>"
           b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
PREFIXED = b"<db:result from='a.example' to='b.example'>key</db:result>"   # a header prefix


def expat_of(parser: StreamParser):
    return parser._parser._expat


def tags(events) -> list[str]:
    return [e.element.tag if isinstance(e, ElementReceived) else type(e).__name__
            for e in events]


def opened() -> StreamParser:
    parser = StreamParser()
    parser.feed(HEADER)
    return parser


def test_no_expat_parser_before_the_first_byte():
    parser = StreamParser()
    assert expat_of(parser) is None
    parser.feed(HEADER[:10])
    assert expat_of(parser) is not None


def test_no_expat_parser_after_a_restart_until_bytes_come():
    parser = opened()
    parser.reset()
    assert expat_of(parser) is None
    assert tags(parser.feed(HEADER + PRESENCE)) == ["StreamOpened", "{jabber:client}presence"]


def test_release_between_stanzas_then_the_next_ones_parse_as_before():
    parser = opened()
    assert tags(parser.feed(PRESENCE)) == ["{jabber:client}presence"]
    assert parser.release()
    assert expat_of(parser) is None
    events = parser.feed(MESSAGE + PREFIXED)
    assert tags(events) == ["{jabber:client}message", "{jabber:server:dialback}result"]
    assert events[0].element.find("{jabber:client}body").text == "Art thou not Romeo?"
    assert parser.release()
    assert tags(parser.feed(b"</stream:stream>")) == ["StreamClosed"]


def test_release_after_whitespace_keepalives():
    parser = opened()
    parser.feed(PRESENCE + b" \n ")
    assert parser.release()
    assert not parser.unit_in_progress
    assert tags(parser.feed(b" " + PRESENCE)) == ["{jabber:client}presence"]


@pytest.mark.parametrize("cut", [1, 5, 30, len(MESSAGE) - 1])
def test_no_release_in_the_middle_of_a_stanza(cut):
    parser = opened()
    parser.feed(MESSAGE[:cut])
    assert not parser.release()
    assert expat_of(parser) is not None
    assert tags(parser.feed(MESSAGE[cut:])) == ["{jabber:client}message"]


def test_no_release_before_the_header_nor_after_the_end():
    parser = StreamParser()
    parser.feed(HEADER[:20])
    assert not parser.release()
    parser.feed(HEADER[20:] + b"</stream:stream>")
    assert not parser.release()


def test_no_release_after_an_error():
    parser = opened()
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"<message><!-- no --></message>")
    assert not parser.release()


@pytest.mark.parametrize("bad", [b"<iq><a></b></iq>", b"<!ENTITY x 'y'>", b"<iq>\xff</iq>",
                                 b"<message>&foo;</message>"])
def test_a_released_parser_reports_errors_as_before_at_stream_offsets(bad):
    def error_of(release: bool) -> str:
        parser = opened()
        for unit in (PRESENCE, MESSAGE, PRESENCE):
            parser.feed(unit)
            if release:
                assert parser.release()
        with pytest.raises(RemoteProtocolError) as caught:
            parser.feed(bad)
        return f"{caught.value.condition}: {caught.value}"

    assert "byte " in error_of(False)
    assert error_of(True) == error_of(False)


def test_a_released_parser_still_refuses_restricted_xml():
    parser = opened()
    parser.feed(PRESENCE)
    assert parser.release()
    with pytest.raises(RemoteProtocolError) as caught:
        parser.feed(b"<?pi x?>")
    assert caught.value.condition is StreamErrorCondition.RESTRICTED_XML


def test_a_released_parser_still_binds_only_the_header_prefixes():
    parser = opened()
    assert parser.release()
    with pytest.raises(RemoteProtocolError) as caught:
        parser.feed(b"<x:message/>")
    assert caught.value.condition is StreamErrorCondition.BAD_NAMESPACE_PREFIX


def test_the_parser_keeps_no_stanza_it_returned():
    parser = opened()
    events = parser.feed(MESSAGE)
    ref = weakref.ref(events[0].element)
    del events
    gc.collect()
    assert ref() is None


def test_release_is_idempotent_and_feeding_closed_streams_works():
    parser = opened()
    assert parser.release() and parser.release()
    assert isinstance(parser.feed(b"</stream:stream>")[0], StreamClosed)


def test_a_stream_closes_after_a_renewal():
    """A renewal's primer is named as the peer named its root, so the
    peer's closing tag closes the renewed parser's root too."""
    parser = StreamParser(max_xmlns=3)
    parser.feed(HEADER)
    for _ in range(2):          # prefixed declarations past max_xmlns: the next stanza renews
        parser.feed(b"<message><a:x xmlns:a='urn:a'/><b:y xmlns:b='urn:b'/></message>")
    assert parser._parser._renew_due
    assert tags(parser.feed(PRESENCE + b"</stream:stream>")) == [
        "{jabber:client}presence", "StreamClosed"]


def test_a_released_stream_with_another_root_prefix_closes():
    parser = StreamParser()
    parser.feed(b"<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams'>")
    parser.feed(PRESENCE)
    assert parser.release()
    assert tags(parser.feed(b"</s:stream>")) == ["StreamClosed"]


def test_a_released_parser_keeps_none_of_its_names():
    """The intern table (names, prefixes, namespaces: ~3 KB) goes with expat."""
    parser = opened()
    parser.feed(MESSAGE)
    assert parser._parser._interned
    assert parser.release()
    assert not parser._parser._interned
    assert tags(parser.feed(MESSAGE)) == ["{jabber:client}message"]
