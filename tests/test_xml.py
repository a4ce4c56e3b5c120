"""The restricted-XML stream parser and serializer (RFC 6120 §4, §11).

The transcripts are the RFC's own examples (RFC 6120 §9, XMPP-IM §5), fed the
way a network delivers them: in one piece, byte by byte, split anywhere.
"""

import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iim.xmpp.errors import (
    STANZA_ERRORS_NS,
    LocalProtocolError,
    RemoteProtocolError,
    StanzaError,
    StanzaErrorCondition,
    StanzaErrorType,
    StreamError,
    StreamErrorCondition,
    stream_error_xml,
)
from iim.xmpp.xml import (
    STREAM_CLOSE,
    ElementReceived,
    StreamClosed,
    StreamOpened,
    StreamParser,
    stream_header,
    to_bytes,
)

C = StreamErrorCondition

# RFC 6120 §9.1.1: the client's initial stream header.
CLIENT_HEADER = (
    b"<?xml version='1.0'?>"
    b"<stream:stream from='juliet@im.example.com' to='im.example.com' version='1.0'"
    b" xml:lang='en' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
# RFC 6120 §8.1: a chat message, as in the examples of §8 and XMPP-IM §5.
MESSAGE = (
    b"<message from='juliet@example.com/balcony' id='ktx72v49'"
    b" to='romeo@example.net' type='chat' xml:lang='en'>"
    b"<body>Art thou not Romeo, and a Montague?</body>"
    b"</message>"
)
PRESENCE = b"<presence><show>away</show><status>at the ball &amp; dancing</status></presence>"
IQ = (
    b"<iq id='yhc13a95' type='set'>"
    b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>balcony</resource></bind>"
    b"</iq>"
)
SMALL_STREAM = CLIENT_HEADER + b"\n" + MESSAGE + b" " + PRESENCE + IQ + b"\n" + STREAM_CLOSE


def feed_all(data, chunks=None, **options):
    """Feed ``data`` (in ``chunks`` if given) to a new parser; return the events."""
    parser = StreamParser(**options)
    pieces = chunks if chunks is not None else [data]
    events = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events


def comparable(events):
    """Events as plain values: elements compared by their serialization."""
    return [
        ("element", to_bytes(event.element)) if isinstance(event, ElementReceived) else event
        for event in events
    ]


def byte_by_byte(data):
    return [data[i : i + 1] for i in range(len(data))]


def stream_error_of(data, **options):
    with pytest.raises(StreamError) as caught:
        feed_all(data, **options)
    return caught.value


# ---------------------------------------------------------------------------
# A stream, as the RFC shows it


def test_stream_header_becomes_stream_opened():
    [opened] = feed_all(CLIENT_HEADER)
    assert opened == StreamOpened(
        attrs={
            "from": "juliet@im.example.com",
            "to": "im.example.com",
            "version": "1.0",
            "{http://www.w3.org/XML/1998/namespace}lang": "en",
        },
        ns="jabber:client",
        version="1.0",
        to="im.example.com",
        from_="juliet@im.example.com",
        id=None,
        lang="en",
    )


def test_server_to_server_stream_has_jabber_server_namespace():
    header = (
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
        b" xmlns:db='jabber:server:dialback' from='example.net' to='example.com' version='1.0'>"
    )
    [opened] = feed_all(header)
    assert opened.ns == "jabber:server"
    assert opened.from_ == "example.net"


def test_stanzas_arrive_as_complete_elements_with_qualified_names():
    events = feed_all(SMALL_STREAM)
    assert [type(e) for e in events] == [
        StreamOpened, ElementReceived, ElementReceived, ElementReceived, StreamClosed
    ]
    message = events[1].element
    assert message.tag == "{jabber:client}message"
    assert message.get("to") == "romeo@example.net"
    assert message.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert message.find("{jabber:client}body").text == "Art thou not Romeo, and a Montague?"
    assert events[2].element.find("{jabber:client}status").text == "at the ball & dancing"
    bind = events[3].element.find("{urn:ietf:params:xml:ns:xmpp-bind}bind")
    assert bind.find("{urn:ietf:params:xml:ns:xmpp-bind}resource").text == "balcony"


def test_nothing_is_returned_for_a_partial_stanza():
    # RFC 6120 §8: a server MUST NOT process a partial stanza.
    parser = StreamParser()
    parser.feed(CLIENT_HEADER)
    assert parser.feed(MESSAGE[:-1]) == []
    [received] = parser.feed(MESSAGE[-1:])
    assert received.element.tag == "{jabber:client}message"


def test_feeding_byte_by_byte_gives_the_same_events():
    whole = comparable(feed_all(SMALL_STREAM))
    assert comparable(feed_all(SMALL_STREAM, byte_by_byte(SMALL_STREAM))) == whole


def test_splitting_at_every_byte_boundary_gives_the_same_events():
    whole = comparable(feed_all(SMALL_STREAM))
    for cut in range(len(SMALL_STREAM) + 1):
        halves = [SMALL_STREAM[:cut], SMALL_STREAM[cut:]]
        assert comparable(feed_all(SMALL_STREAM, halves)) == whole, cut


def test_multibyte_characters_split_across_feeds():
    body = "Ромео, ты ли это? 🌹".encode()
    data = CLIENT_HEADER + b"<message><body>" + body + b"</body></message>"
    events = feed_all(data, byte_by_byte(data))
    assert events[1].element.find("{jabber:client}body").text == "Ромео, ты ли это? 🌹"


def test_whitespace_keepalives_between_stanzas_are_ignored():
    # RFC 6120 §4.6.1: whitespace pings between stanzas.
    events = feed_all(CLIENT_HEADER + b" \n \n" + MESSAGE + b" \r\n\t ")
    assert [type(e) for e in events] == [StreamOpened, ElementReceived]


def test_utf8_byte_order_mark_is_tolerated():
    assert isinstance(feed_all(b"\xef\xbb\xbf" + CLIENT_HEADER)[0], StreamOpened)


def test_cdata_sections_are_allowed():
    # RFC 6120 §11.1 does not list CDATA among the restricted features.
    events = feed_all(CLIENT_HEADER + b"<message><body><![CDATA[<b>&]]></body></message>")
    assert events[1].element.find("{jabber:client}body").text == "<b>&"


def test_bytes_after_the_closing_tag_are_ignored():
    parser = StreamParser()
    parser.feed(CLIENT_HEADER)
    assert parser.feed(STREAM_CLOSE + b"<junk") == [StreamClosed()]
    assert parser.feed(b"anything at all") == []
    assert not parser.stream_open


def test_nonzas_in_other_namespaces_and_stream_features():
    data = (
        CLIENT_HEADER
        + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
        b"</starttls></stream:features>"
    )
    [_, features] = feed_all(data)
    assert features.element.tag == "{http://etherx.jabber.org/streams}features"
    assert features.element[0][0].tag == "{urn:ietf:params:xml:ns:xmpp-tls}required"


# ---------------------------------------------------------------------------
# Stream restart (RFC 6120 §4.3.3)


def test_reset_starts_a_new_stream_after_starttls():
    parser = StreamParser()
    assert isinstance(parser.feed(CLIENT_HEADER)[0], StreamOpened)
    [starttls] = parser.feed(STARTTLS)
    assert starttls.element.tag == "{urn:ietf:params:xml:ns:xmpp-tls}starttls"
    # ... TLS handshake; then the client opens a new stream, XML declaration and all.
    parser.reset()
    events = parser.feed(CLIENT_HEADER + MESSAGE)
    assert [type(e) for e in events] == [StreamOpened, ElementReceived]


def test_without_reset_a_second_header_is_restricted_xml():
    parser = StreamParser()
    parser.feed(CLIENT_HEADER)
    with pytest.raises(StreamError) as caught:
        parser.feed(CLIENT_HEADER)
    assert caught.value.condition is C.RESTRICTED_XML


def test_reset_mid_stanza_forgets_the_partial_stanza():
    parser = StreamParser()
    parser.feed(CLIENT_HEADER + MESSAGE[:20])
    parser.reset()
    assert [type(e) for e in parser.feed(CLIENT_HEADER + IQ)] == [StreamOpened, ElementReceived]


# ---------------------------------------------------------------------------
# Restricted XML (RFC 6120 §11.1): exact conditions

BILLION_LAUGHS = (
    b"<?xml version='1.0'?>"
    b"<!DOCTYPE lolz ["
    b"<!ENTITY lol0 'lol'>"
    + b"".join(b"<!ENTITY lol%d '%s'>" % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
    + b"]>"
    b"<lolz>&lol9;</lolz>"
)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"<?xml version='1.0'?><!DOCTYPE stream>" + CLIENT_HEADER[21:], id="doctype"),
        pytest.param(b"<!DOCTYPE stream SYSTEM 'http://evil.example/x.dtd'>", id="external-dtd"),
        pytest.param(b"<!DOCTYPE s [<!ENTITY x 'y'>]>", id="entity-declaration"),
        pytest.param(
            b"<!DOCTYPE s [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>", id="external-entity"
        ),
        pytest.param(b"<!DOCTYPE s [<!ENTITY % p 'x'> %p;]>", id="parameter-entity"),
        pytest.param(BILLION_LAUGHS, id="billion-laughs"),
        pytest.param(CLIENT_HEADER + b"<!ENTITY x 'y'>", id="entity-declaration-in-stream"),
        pytest.param(CLIENT_HEADER + b"<message><!DOCTYPE x></message>", id="doctype-in-stanza"),
        pytest.param(CLIENT_HEADER + b"<message><body>&x;</body></message>", id="undefined-entity"),
        pytest.param(b"<?xml-stylesheet href='x'?>" + CLIENT_HEADER, id="pi-before-stream"),
        pytest.param(CLIENT_HEADER + b"<?php echo 1; ?>", id="pi-in-stream"),
        pytest.param(CLIENT_HEADER + b"<message><?pi?></message>", id="pi-in-stanza"),
        pytest.param(CLIENT_HEADER + b"<?xml version='1.0'?>", id="second-xml-declaration"),
        pytest.param(b"<!-- hello -->" + CLIENT_HEADER, id="comment-before-stream"),
        pytest.param(CLIENT_HEADER + b"<!-- hello -->", id="comment-in-stream"),
        pytest.param(CLIENT_HEADER + b"<message><!-- hi --></message>", id="comment-in-stanza"),
    ],
)
def test_restricted_xml(data):
    assert stream_error_of(data).condition is C.RESTRICTED_XML
    # ... however the bytes arrive.
    assert stream_error_of(data, chunks=byte_by_byte(data)).condition is C.RESTRICTED_XML


def test_billion_laughs_fails_at_the_doctype_without_expanding_anything():
    # Only the prolog is fed: the refusal comes from the DOCTYPE itself, before
    # any entity is declared, so there is nothing that could be expanded.
    parser = StreamParser()
    with pytest.raises(RemoteProtocolError) as caught:
        parser.feed(BILLION_LAUGHS[: BILLION_LAUGHS.index(b"[") + 1])
    assert caught.value.condition is C.RESTRICTED_XML
    assert "DOCTYPE" in caught.value.text


def test_the_five_predefined_entities_and_character_references_are_fine():
    body = b"<body>&lt;&gt;&amp;&apos;&quot;&#233;&#x1F339;</body>"
    data = CLIENT_HEADER + b"<message>" + body + b"</message>"
    assert feed_all(data)[1].element[0].text == "<>&'\"é🌹"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(CLIENT_HEADER + b"<message><body></message>", id="mismatched-tags"),
        pytest.param(CLIENT_HEADER + b"<message a='1' a='2'/>", id="duplicate-attribute"),
        pytest.param(CLIENT_HEADER + b"<message to=x/>", id="unquoted-attribute"),
        pytest.param(CLIENT_HEADER + b"<message>\x00</message>", id="nul"),
        pytest.param(CLIENT_HEADER + b"<1message/>", id="bad-name"),
        pytest.param(b"hello" + CLIENT_HEADER, id="text-before-root"),
    ],
)
def test_not_well_formed(data):
    assert stream_error_of(data).condition is C.NOT_WELL_FORMED


def test_text_between_stanzas_is_bad_format():
    assert stream_error_of(CLIENT_HEADER + b"hello").condition is C.BAD_FORMAT


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(CLIENT_HEADER + b"<foo:message/>", id="unbound-prefix"),
        pytest.param(CLIENT_HEADER + b"<message xmlns:foo=''/>", id="undeclared-prefix"),
        pytest.param(CLIENT_HEADER + b"<message xmlns:xml='urn:other'/>", id="rebound-xml-prefix"),
        pytest.param(
            b"<stream xmlns='http://etherx.jabber.org/streams' to='example.com' version='1.0'>",
            id="stream-namespace-as-default",
        ),
        pytest.param(
            b"<stream:stream xmlns='jabber:client' to='example.com' version='1.0'>",
            id="stream-prefix-not-declared",
        ),
    ],
)
def test_bad_namespace_prefix(data):
    assert stream_error_of(data).condition is C.BAD_NAMESPACE_PREFIX


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"<html xmlns='http://www.w3.org/1999/xhtml'>", id="not-a-stream"),
        pytest.param(
            b"<stream:stream xmlns:stream='urn:wrong' xmlns='jabber:client'>", id="wrong-stream-ns"
        ),
        pytest.param(
            b"<stream:stream xmlns='jabber:wrong' xmlns:stream='http://etherx.jabber.org/streams'>",
            id="wrong-content-ns",
        ),
        pytest.param(
            b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", id="no-content-ns"
        ),
    ],
)
def test_invalid_namespace(data):
    # RFC 6120 §4.8.1, §4.9.3.10.
    assert stream_error_of(data).condition is C.INVALID_NAMESPACE


def test_content_namespaces_can_be_narrowed():
    server_only = {"content_namespaces": ["jabber:server"]}
    assert stream_error_of(CLIENT_HEADER, **server_only).condition is C.INVALID_NAMESPACE


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            b"<?xml version='1.0' encoding='ISO-8859-1'?>" + CLIENT_HEADER[21:],
            id="declared-latin1",
        ),
        pytest.param(
            b"<?xml version='1.0' encoding='UTF-16'?>" + CLIENT_HEADER[21:], id="declared-utf16"
        ),
        pytest.param(b"\xff\xfe" + CLIENT_HEADER.decode().encode("utf-16-le"), id="utf16-le-bom"),
        pytest.param(b"\xfe\xff" + CLIENT_HEADER.decode().encode("utf-16-be"), id="utf16-be-bom"),
        pytest.param(CLIENT_HEADER.decode().encode("utf-16-be"), id="utf16-no-bom"),
        pytest.param(
            CLIENT_HEADER + "<message><body>café</body></message>".encode("latin-1"),
            id="latin1-bytes",
        ),
        pytest.param(CLIENT_HEADER + b"<message to='\xc3'/>", id="truncated-sequence"),
    ],
)
def test_non_utf8_is_unsupported_encoding(data):
    # RFC 6120 §11.6: UTF-8 only.
    assert stream_error_of(data).condition is C.UNSUPPORTED_ENCODING
    assert stream_error_of(data, chunks=byte_by_byte(data)).condition is C.UNSUPPORTED_ENCODING


# ---------------------------------------------------------------------------
# Resource limits (RFC 6120 §13.12)


def test_ten_mib_stanza_is_refused_long_before_it_is_all_fed():
    chunk = 65536
    body = b"A" * (10 * 1024 * 1024)
    data = CLIENT_HEADER + b"<message><body>" + body + b"</body></message>"
    parser = StreamParser()
    fed = 0
    with pytest.raises(StreamError) as caught:
        while fed < len(data):
            parser.feed(data[fed : fed + chunk])
            fed += chunk
    assert caught.value.condition is C.POLICY_VIOLATION
    assert "262144" in caught.value.text
    assert fed <= 262144 + 2 * chunk  # refused within a chunk or two of the limit


def test_ten_mib_start_tag_is_refused_before_it_completes():
    # A giant attribute keeps expat buffering one unfinished token; that counts too.
    parser = StreamParser()
    parser.feed(CLIENT_HEADER)
    parser.feed(b"<message to='")
    with pytest.raises(StreamError) as caught:
        for _ in range(160):
            parser.feed(b"x" * 65536)
    assert caught.value.condition is C.POLICY_VIOLATION


def test_ten_mib_stanza_in_one_feed_call_is_refused():
    data = CLIENT_HEADER + b"<message><body>" + b"A" * (10 * 1024 * 1024) + b"</body></message>"
    assert stream_error_of(data).condition is C.POLICY_VIOLATION


def test_a_huge_stream_header_is_refused():
    data = b"<stream:stream xmlns='jabber:client' to='" + b"x" * 300000
    assert stream_error_of(data).condition is C.POLICY_VIOLATION


def test_stanza_size_limit_is_exact_for_complete_stanzas():
    stanza = b"<message><body>" + b"x" * 1000 + b"</body></message>"
    assert len(feed_all(CLIENT_HEADER + stanza, max_stanza_bytes=1100)) == 2
    too_big = stream_error_of(CLIENT_HEADER + stanza, max_stanza_bytes=900)
    assert too_big.condition is C.POLICY_VIOLATION


def test_many_stanzas_under_the_limit_are_fine_however_long_the_stream():
    stanza = b"<message><body>" + b"x" * 500 + b"</body></message>"
    events = feed_all(CLIENT_HEADER + stanza * 100 + b" " * 100, max_stanza_bytes=600)
    assert len(events) == 101


def test_whitespace_keepalives_never_add_up_to_a_stanza():
    parser = StreamParser(max_stanza_bytes=1000)
    parser.feed(CLIENT_HEADER)
    for _ in range(100):
        assert parser.feed(b" " * 999) == []
    assert parser.feed(b"\n" * 100_000) == []
    assert len(parser.feed(MESSAGE)) == 1


def test_non_xml_white_space_between_stanzas_is_bad_format():
    assert stream_error_of(CLIENT_HEADER + "\u00a0".encode()).condition is C.BAD_FORMAT


def test_depth_1000_is_policy_violation():
    data = CLIENT_HEADER + b"<a>" * 1000
    error = stream_error_of(data)
    assert error.condition is C.POLICY_VIOLATION
    assert "32" in error.text


def test_depth_limit_counts_the_stream_root():
    # stream (1) > message (2) > ... : 32 levels in all are allowed, 33 are not.
    ok = CLIENT_HEADER + b"<a>" * 31 + b"</a>" * 31
    assert len(feed_all(ok)) == 2
    too_deep = CLIENT_HEADER + b"<a>" * 32
    assert stream_error_of(too_deep).condition is C.POLICY_VIOLATION


def test_too_many_attributes_is_policy_violation():
    attributes = b" ".join(b"a%d='x'" % i for i in range(100))
    data = CLIENT_HEADER + b"<message " + attributes + b"/>"
    assert stream_error_of(data).condition is C.POLICY_VIOLATION


def test_endless_fresh_element_names_are_freed_between_stanzas():
    """A long stream may use ever new names; what they cost is freed (issue 11)."""
    parser = StreamParser(max_names=200)
    parser.feed(CLIENT_HEADER)
    for i in range(3000):
        [event] = parser.feed(b"<message><x%d/></message>" % i)
        assert event.element[0].tag == "{jabber:client}x%d" % i
    assert len(parser._interned) < 300


def test_too_many_fresh_names_in_one_stanza_are_policy_violation():
    stanza = b"<message>" + b"".join(b"<x%d/>" % i for i in range(300)) + b"</message>"
    error = stream_error_of(CLIENT_HEADER + stanza, max_names=200)
    assert error.condition is C.POLICY_VIOLATION
    assert error.text == ("more than 200 distinct element and attribute names, prefixes "
                          "and namespaces in one stanza")


# ---------------------------------------------------------------------------
# After an error, the parser is dead


def test_feed_after_an_error_is_a_local_protocol_error():
    parser = StreamParser()
    with pytest.raises(StreamError):
        parser.feed(b"<!-- nope -->")
    with pytest.raises(LocalProtocolError):
        parser.feed(CLIENT_HEADER)
    with pytest.raises(LocalProtocolError):
        parser.reset()


def test_remote_errors_are_stream_errors_with_wire_form():
    error = stream_error_of(b"<!-- nope -->")
    assert isinstance(error, RemoteProtocolError)
    assert error.to_xml().startswith(
        b"<stream:error><restricted-xml xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
    )


# ---------------------------------------------------------------------------
# Only StreamError ever escapes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_raise_only_stream_errors(chunks):
    parser = StreamParser()
    try:
        for chunk in chunks:
            for event in parser.feed(chunk):
                assert isinstance(event, (StreamOpened, ElementReceived, StreamClosed))
    except StreamError:
        pass


@st.composite
def mutated_streams(draw):
    data = bytearray(SMALL_STREAM)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        blob = draw(
            st.one_of(
                st.binary(min_size=1, max_size=4),
                st.sampled_from(
                    [b"<", b">", b"&", b"'", b"/", b":", b"<!--", b"<?", b"<!DOCTYPE x>",
                     b"\xff", b"\xc3", b"]]>", b"xmlns:a=''", b"&#0;", b"\x00"]
                ),
            )
        )
        if action == "insert":
            data[at:at] = blob
        elif action == "delete":
            del data[at : at + len(blob)]
        else:
            data[at : at + len(blob)] = blob
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    return [bytes(data[a:b]) for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_streams())
def test_mutated_valid_streams_raise_only_stream_errors(chunks):
    parser = StreamParser(max_stanza_bytes=200, max_depth=4)
    try:
        for chunk in chunks:
            parser.feed(chunk)
    except StreamError as error:
        assert isinstance(error.condition, StreamErrorCondition)
        with pytest.raises(LocalProtocolError):
            parser.feed(b" ")


# ---------------------------------------------------------------------------
# Serializer


def test_stanzas_are_written_without_the_content_namespace():
    [_, message] = feed_all(CLIENT_HEADER + MESSAGE)
    assert to_bytes(message.element) == MESSAGE


def test_other_namespaces_are_declared_where_they_start():
    message = ET.Element("{jabber:client}message", {"to": "romeo@example.net"})
    ET.SubElement(message, "{http://jabber.org/protocol/chatstates}active")
    composing = ET.SubElement(message, "{urn:example}outer")
    ET.SubElement(composing, "{urn:example}inner").text = "x"
    assert to_bytes(message) == (
        b"<message to='romeo@example.net'>"
        b"<active xmlns='http://jabber.org/protocol/chatstates'/>"
        b"<outer xmlns='urn:example'><inner>x</inner></outer>"
        b"</message>"
    )


def test_unqualified_tags_inherit_the_parent_namespace():
    message = ET.Element("message", {"type": "chat"})
    ET.SubElement(message, "body").text = "hi"
    assert to_bytes(message) == b"<message type='chat'><body>hi</body></message>"


def test_server_streams_and_the_dialback_prefix():
    # XEP-0220: the db prefix is declared on the stream header.
    result = ET.Element("{jabber:server:dialback}result", {"from": "a.example", "to": "b.example"})
    result.text = "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
    prefixes = {"jabber:server:dialback": "db"}
    header = stream_header(to="b.example", from_="a.example", ns="jabber:server", prefixes=prefixes)
    assert b"xmlns:db='jabber:server:dialback'" in header
    wire = to_bytes(result, ns="jabber:server", prefixes=prefixes)
    assert wire.startswith(b"<db:result from='a.example' to='b.example'>")
    # and what we write, we read back
    [_, received] = feed_all(header + wire)
    assert received.element.tag == "{jabber:server:dialback}result"
    assert received.element.text == result.text


def test_stream_namespace_elements_use_the_stream_prefix():
    features = ET.Element("{http://etherx.jabber.org/streams}features")
    ET.SubElement(features, "{urn:ietf:params:xml:ns:xmpp-tls}starttls")
    assert to_bytes(features) == (
        b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"
    )


def test_escaping_survives_a_round_trip():
    tricky = "a & b < c > d ]]> ' \" \r\n\t é 🌹"
    message = ET.Element("{jabber:client}message", {"id": tricky})
    ET.SubElement(message, "{jabber:client}body").text = tricky
    wire = to_bytes(message)
    assert b"]]>" not in wire
    [_, received] = feed_all(stream_header() + wire)
    assert received.element.get("id") == tricky
    assert received.element[0].text == tricky


def test_namespaced_attributes():
    element = ET.Element("{jabber:client}message", {
        "{http://www.w3.org/XML/1998/namespace}lang": "en",
        "{urn:example:attr}flag": "1",
    })
    wire = to_bytes(element)
    assert wire == b"<message xml:lang='en' xmlns:ns1='urn:example:attr' ns1:flag='1'/>"
    [_, received] = feed_all(stream_header() + wire)
    assert received.element.attrib == element.attrib


def test_text_and_tails_are_kept():
    body = ET.fromstring("<body xmlns='http://www.w3.org/1999/xhtml'>a<b>b</b>c<i>i</i>d</body>")
    wire = to_bytes(body)
    assert wire == b"<body xmlns='http://www.w3.org/1999/xhtml'>a<b>b</b>c<i>i</i>d</body>"


@pytest.mark.parametrize(
    "element",
    [
        pytest.param(ET.Comment("no comments"), id="comment"),
        pytest.param(ET.ProcessingInstruction("pi"), id="pi"),
        pytest.param(ET.Element("bad name"), id="bad-name"),
        pytest.param(ET.Element("{jabber:client}x", {"a": "\x01"}), id="control-char-in-attribute"),
    ],
)
def test_what_xmpp_cannot_carry_is_refused(element):
    with pytest.raises(LocalProtocolError):
        to_bytes(element)


def test_control_character_in_text_is_refused():
    message = ET.Element("{jabber:client}message")
    ET.SubElement(message, "{jabber:client}body").text = "bell \x07"
    with pytest.raises(LocalProtocolError):
        to_bytes(message)


def test_stream_header_bytes():
    assert stream_header(to="im.example.com", from_="juliet@im.example.com", lang="en") == (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
        b" xmlns:stream='http://etherx.jabber.org/streams'"
        b" to='im.example.com' from='juliet@im.example.com' version='1.0' xml:lang='en'>"
    )
    [opened] = feed_all(stream_header(to="im.example.com", id="++TR84Sm6A3hnt3Q065SnAbbk3Y="))
    assert opened.id == "++TR84Sm6A3hnt3Q065SnAbbk3Y="


# ---------------------------------------------------------------------------
# Error elements on the wire (RFC 6120 §4.9, §8.3)


def test_stream_error_xml_matches_rfc_example():
    assert stream_error_xml(C.POLICY_VIOLATION) == (
        b"<stream:error>"
        b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"</stream:error>"
    )


def test_every_stream_error_round_trips_through_the_parser():
    for condition in StreamErrorCondition:
        wire = stream_error_xml(condition, "why <not> & 'so'", lang="en")
        [_, received] = feed_all(CLIENT_HEADER + wire)
        error = StreamError.from_element(received.element)
        assert (error.condition, error.text) == (condition, "why <not> & 'so'")


def test_see_other_host_carries_the_host():
    wire = StreamError(C.SEE_OTHER_HOST, other_host="[2001:db8::1]:5222").to_xml()
    assert b">[2001:db8::1]:5222</see-other-host>" in wire
    [_, received] = feed_all(CLIENT_HEADER + wire)
    assert StreamError.from_element(received.element).other_host == "[2001:db8::1]:5222"


def test_stream_error_conditions_are_the_rfc_list():
    assert len(StreamErrorCondition) == 25
    assert StreamErrorCondition("see-other-host") is C.SEE_OTHER_HOST


@pytest.mark.parametrize(
    "name, default_type",
    [
        ("bad-request", "modify"), ("conflict", "cancel"), ("feature-not-implemented", "cancel"),
        ("forbidden", "auth"), ("gone", "cancel"), ("internal-server-error", "cancel"),
        ("item-not-found", "cancel"), ("jid-malformed", "modify"), ("not-acceptable", "modify"),
        ("not-allowed", "cancel"), ("not-authorized", "auth"), ("policy-violation", "modify"),
        ("recipient-unavailable", "wait"), ("redirect", "modify"),
        ("registration-required", "auth"),
        ("remote-server-not-found", "cancel"), ("remote-server-timeout", "wait"),
        ("resource-constraint", "wait"), ("service-unavailable", "cancel"),
        ("subscription-required", "auth"), ("undefined-condition", "cancel"),
        ("unexpected-request", "wait"),
    ],
)
def test_stanza_error_default_types_follow_rfc_6120_8_3_3(name, default_type):
    assert StanzaErrorCondition(name).default_type is StanzaErrorType(default_type)


def test_stanza_error_element_round_trip():
    # RFC 6120 §8.3.2: <error type='cancel'><service-unavailable .../></error>
    error = StanzaError(StanzaErrorCondition.SERVICE_UNAVAILABLE, "nobody home")
    wire = to_bytes(error.to_element())
    assert wire == (
        b"<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>nobody home</text></error>"
    )
    [_, received] = feed_all(CLIENT_HEADER + b"<iq type='error' id='1'>" + wire + b"</iq>")
    back = StanzaError.from_element(received.element[0])
    assert back.condition is StanzaErrorCondition.SERVICE_UNAVAILABLE
    assert (back.type, back.text) == (StanzaErrorType.CANCEL, "nobody home")


def test_unknown_stanza_error_condition_reads_as_undefined():
    element = ET.Element("{jabber:client}error", {"type": "bogus"})
    ET.SubElement(element, "{%s}no-such-condition" % STANZA_ERRORS_NS)
    error = StanzaError.from_element(element)
    assert error.condition is StanzaErrorCondition.UNDEFINED_CONDITION
    assert error.type is StanzaErrorType.CANCEL
