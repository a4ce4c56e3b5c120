"""The web framings' translation (iim/server/web/framing.py) and the BOSH core, by property.

- Whatever a WebSocket message holds, ``FramedInput.message`` returns bytes
  for the core or raises StreamError: nothing else escapes.
- An element the core writes comes out of ``CoreOutput`` + ``standalone`` as
  a standalone document with the same meaning, and a client sending that
  document gets the core's own bytes back from ``FramedInput``.
- Whatever order a BOSH client's requests arrive in, their payloads reach
  the session once each, in rid order, and every held request is answered
  once.
"""

from __future__ import annotations

from xml.etree import ElementTree as ET
from xml.etree.ElementTree import Element

from hypothesis import given, settings, strategies as st

from iim.server.web.bosh import BoshCore, BoshError
from iim.server.web.framing import CoreOutput, FramedInput, Item, Opened, standalone
from iim.xmpp.errors import StreamError
from iim.xmpp.xml import stream_header, to_bytes

FUZZ = settings(max_examples=200, deadline=None)

NAMES = st.sampled_from(["message", "presence", "iq", "body", "x", "item", "query"])
NAMESPACES = st.sampled_from(["jabber:client", "urn:example:a", "jabber:iq:roster",
                              "http://etherx.jabber.org/streams"])
TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF,
                                      blacklist_categories=("Cs",)), max_size=20)


@st.composite
def elements(draw, depth: int = 0) -> Element:
    ns = draw(NAMESPACES) if depth == 0 or draw(st.booleans()) else None
    tag = draw(NAMES)
    element = Element(f"{{{ns}}}{tag}" if ns else tag)
    for name in draw(st.lists(st.sampled_from(["to", "id", "type", "from", "a"]),
                              max_size=3, unique=True)):
        element.set(name, draw(TEXT))
    if depth < 2:
        for _ in range(draw(st.integers(0, 2))):
            element.append(draw(elements(depth=depth + 1)))
    if draw(st.booleans()):
        element.text = draw(TEXT)
    return element


def _same(a: Element, b: Element) -> bool:
    return (a.tag == b.tag and a.attrib == b.attrib and (a.text or "") == (b.text or "")
            and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b)))


def _in_stream(core_bytes: bytes) -> Element:
    """The element the core would read from ``core_bytes`` on a jabber:client stream."""
    stream = ET.fromstring(b"<stream:stream xmlns='jabber:client' xmlns:stream="
                           b"'http://etherx.jabber.org/streams'>" + core_bytes
                           + b"</stream:stream>")
    [element] = list(stream)
    return element


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_a_websocket_message_is_core_bytes_or_a_stream_error(data):
    framed = FramedInput(max_stanza_bytes=10000, max_xmlns=8)
    try:
        out = framed.message(data)
    except StreamError:
        return
    finally:
        framed.close()
    assert isinstance(out, bytes)


@FUZZ
@given(elements())
def test_what_the_core_writes_comes_out_standalone_and_goes_back_unchanged(element):
    core_bytes = to_bytes(element)
    output = CoreOutput()
    events = output.feed(stream_header(from_="example.com", id="s1") + core_bytes)
    assert isinstance(events[0], Opened) and events[0].id == "s1"
    [item] = events[1:]
    assert isinstance(item, Item)
    on_tcp = _in_stream(core_bytes)             # what a client on a TCP stream would read
    frame = standalone(item.element)
    assert _same(ET.fromstring(frame), on_tcp)  # any XML parser reads the frame the same
    framed = FramedInput(max_stanza_bytes=100000, max_xmlns=64)
    back = framed.message(frame.encode())
    framed.close()
    assert _same(_in_stream(back), on_tcp)      # and a frame sent back reaches the core so
    output.close()


@FUZZ
@given(st.permutations(range(6)), st.integers(0, 1), st.lists(st.floats(0, 5), min_size=6,
                                                               max_size=6))
def test_bosh_payloads_reach_the_session_once_each_in_rid_order(order, hold, gaps):
    """Six requests after the creation one, each sent once, arriving in any
    order within the window; the core answers as the adapter would."""
    core = BoshCore(rid=100, wait=30, hold=hold, now=0.0)
    released, answered, now = list(core.receive(100, 100, 0.0)), [], 0.0
    answered += [rid for rid, _ in core.ready(now)]
    pending = [101 + n for n in order]
    sent: list[int] = []
    while pending:
        # a client sends a rid only when fewer than `requests` are open before it
        rid = next((r for r in pending if r < core.next_rid + core.requests), None)
        if rid is None:
            now += 30                               # the held ones run out
            answered += [r for r, _ in core.ready(now)]
            continue
        pending.remove(rid)
        now += gaps[len(sent)]
        sent.append(rid)
        try:
            released += core.receive(rid, rid, now)
        except BoshError:
            raise AssertionError(f"rid {rid} refused in window {core.next_rid}") from None
        answered += [r for r, _ in core.ready(now)]
    now += 30
    answered += [r for r, _ in core.ready(now)]
    assert released == list(range(100, 107))        # each once, in rid order
    assert sorted(answered) == list(range(100, 107))
