"""XEP-0198 Stream Management on the server's client stream, in memory.

Each test reads as the XEP's examples: what the client sends (C:), what the
server answers (S:). The client and server cores are wired together by
xmpp_pair.Pair for the negotiation; the stream-management elements are then
written by hand, as a client library would.
"""

from xml.etree.ElementTree import Element, SubElement

import pytest

from iim.xmpp import sm
from iim.xmpp.client_stream import ClientStream, TLSMode
from iim.xmpp.errors import StreamErrorCondition
from iim.xmpp.events import ResumeRequested, StanzaReceived, StreamEnded, StreamManaged
from iim.xmpp.jid import JID
from iim.xmpp.server_stream import ServerPolicy
from iim.xmpp.stream import Phase
from iim.xmpp.xml import ElementReceived, StreamParser
from xmpp_pair import DOMAIN, Pair, server

SM = "{urn:xmpp:sm:3}"
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
STREAMS = "{urn:ietf:params:xml:ns:xmpp-streams}"
JULIET = JID("juliet", DOMAIN, "balcony")
ENABLE = b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
R = b"<r xmlns='urn:xmpp:sm:3'/>"
WRAP = 1 << 32


def a(h: int) -> bytes:
    return f"<a xmlns='urn:xmpp:sm:3' h='{h}'/>".encode()


def message(n: int, to: str = "romeo@example.com") -> bytes:
    return f"<message to='{to}' type='chat' id='m{n}'><body>{n}</body></message>".encode()


def parse(data: bytes) -> list[Element]:
    """What the server wrote, mid-stream: its depth-1 elements."""
    header = (b"<stream:stream xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams'>")
    return [e.element for e in StreamParser().feed(header + data)
            if isinstance(e, ElementReceived)]


def negotiated(*, bind: bool = True, seconds: int = 300):
    """A server stream after SASL, bound (or waiting for bind/resume when not)."""
    client = ClientStream(JULIET, "r0m30myr0m30", tls=TLSMode.OPTIONAL)
    features = []
    if not bind:
        client._request_bind = lambda f: features.append(f) or []
    else:
        request = client._request_bind
        client._request_bind = lambda f: features.append(f) or request(f)
    client.start()
    srv = server(ServerPolicy(DOMAIN, sm_resume_seconds=seconds))
    Pair(client, srv).run()
    srv.data_to_send()
    return srv, features[-1]


def say(srv, data: bytes):
    """C: data; returns (S: the elements it answered, the events)."""
    events = srv.receive_data(data)
    return parse(srv.data_to_send()), events


def enabled(srv) -> Element:
    [answer], [event] = say(srv, ENABLE)
    assert isinstance(event, StreamManaged)
    return answer


def chat(n: int) -> Element:
    stanza = Element("{jabber:client}message", {"to": str(JULIET), "type": "chat", "id": f"s{n}"})
    SubElement(stanza, "{jabber:client}body").text = f"to juliet {n}"
    return stanza


def stream_error(elements: list[Element]) -> Element:
    [error] = [e for e in elements if e.tag == "{http://etherx.jabber.org/streams}error"]
    return error


# --- §2 the feature, §3 enabling ---------------------------------------------------------

def test_sm_is_offered_after_sasl_beside_bind():
    srv, features = negotiated(bind=False)
    assert features.find(SM + "sm") is not None
    assert features.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
    assert srv.phase is Phase.BINDING


def test_enable_with_resumption_gets_an_unguessable_id_and_the_max():
    srv, _ = negotiated()
    answer = enabled(srv)
    assert answer.tag == SM + "enabled"
    assert answer.get("resume") == "true" and answer.get("max") == "300"
    assert len(answer.get("id")) >= 24                 # 144 random bits, url-safe
    other, _ = negotiated()
    assert enabled(other).get("id") != answer.get("id")


def test_a_client_asking_for_less_time_gets_less():
    srv, _ = negotiated()
    [answer], _ = say(srv, b"<enable xmlns='urn:xmpp:sm:3' resume='true' max='60'/>")
    assert answer.get("max") == "60"


def test_without_resumption_configured_enable_is_acks_only():
    srv, _ = negotiated(seconds=0)
    [answer], [event] = say(srv, ENABLE)
    assert answer.tag == SM + "enabled" and answer.get("id") is None
    assert answer.get("resume") is None
    assert event == StreamManaged(None, 0)


def test_enable_before_bind_is_failed_unexpected_request():
    srv, _ = negotiated(bind=False)
    [answer], events = say(srv, ENABLE)
    assert answer.tag == SM + "failed"
    assert answer.find(STANZAS + "unexpected-request") is not None
    assert events == [] and srv.phase is Phase.BINDING and srv.sm is None


def test_enable_twice_is_failed_unexpected_request():
    srv, _ = negotiated()
    enabled(srv)
    [answer], events = say(srv, ENABLE)
    assert answer.tag == SM + "failed"
    assert answer.find(STANZAS + "unexpected-request") is not None
    assert events == [] and srv.phase is Phase.ESTABLISHED


# --- §4 acks --------------------------------------------------------------------------------

def test_the_server_counts_what_it_handled_and_answers_r():
    srv, _ = negotiated()
    enabled(srv)
    _, events = say(srv, message(1) + message(2) + message(3))
    assert len([e for e in events if isinstance(e, StanzaReceived)]) == 3
    [answer], _ = say(srv, R)
    assert answer.tag == SM + "a" and answer.get("h") == "3"


def test_sm_elements_are_not_counted_and_stanzas_before_enable_are_not_either():
    srv, _ = negotiated()
    say(srv, message(0))                       # before <enable/>
    enabled(srv)
    say(srv, R + message(1) + R)
    [answer], _ = say(srv, R)
    assert answer.get("h") == "1"


def test_what_the_client_acknowledges_leaves_the_queue():
    srv, _ = negotiated()
    enabled(srv)
    for n in range(3):
        srv.send_stanza(chat(n), size=100)
    srv.data_to_send()
    assert srv.sm.sent == 3 and len(srv.sm.unacked) == 3 and srv.sm.unacked_bytes == 300
    say(srv, a(2))
    assert [s.get("id") for s, _ in srv.sm.unacked] == ["s2"]
    assert srv.sm.unacked_bytes == 100
    say(srv, a(3))
    assert not srv.sm.unacked


def test_the_server_asks_for_an_ack_after_five_unacknowledged_stanzas_once():
    srv, _ = negotiated()
    enabled(srv)
    written = []
    for n in range(7):
        srv.send_stanza(chat(n))
        written += parse(srv.data_to_send())
    requests = [i for i, e in enumerate(written) if e.tag == SM + "r"]
    assert requests == [5]                     # after the fifth, and not again until answered
    say(srv, a(7))
    srv.send_stanza(chat(7))
    assert [e.tag for e in parse(srv.data_to_send())] == ["{jabber:client}message"]


def test_h_wraps_around_at_2_to_the_32_inbound():
    srv, _ = negotiated()
    enabled(srv)
    srv.sm.handled = WRAP - 2
    say(srv, message(1) + message(2) + message(3))
    [answer], _ = say(srv, R)
    assert answer.get("h") == "1"              # 2^32 - 2 + 3, modulo 2^32


def test_h_wraps_around_at_2_to_the_32_outbound():
    srv, _ = negotiated()
    enabled(srv)
    srv.sm.sent = srv.sm.acked = WRAP - 1
    for n in range(3):
        srv.send_stanza(chat(n))
    srv.data_to_send()
    assert srv.sm.sent == 2
    _, events = say(srv, a(0))                 # 2^32 - 1 + 1: the first acknowledged
    assert events == [] and [s.get("id") for s, _ in srv.sm.unacked] == ["s1", "s2"]
    say(srv, a(2))
    assert not srv.sm.unacked and srv.phase is Phase.ESTABLISHED


def test_an_ack_of_more_than_was_sent_is_undefined_condition_handled_count_too_high():
    srv, _ = negotiated()
    enabled(srv)
    for n in range(8):
        srv.send_stanza(chat(n))
    srv.data_to_send()
    answer, [ended] = say(srv, a(10))
    assert isinstance(ended, StreamEnded)
    assert ended.error.condition is StreamErrorCondition.UNDEFINED_CONDITION
    error = stream_error(answer)
    assert error.find(STREAMS + "undefined-condition") is not None
    too_high = error.find(SM + "handled-count-too-high")
    assert too_high.get("h") == "10" and too_high.get("send-count") == "8"
    assert error.findtext(STREAMS + "text") == \
        "You acknowledged 10 stanzas, but I only sent you 8 so far."
    assert srv.phase is Phase.CLOSED


def test_an_ack_going_backwards_is_too_high_modulo_2_to_the_32():
    management = sm.Management()
    for n in range(4):
        management.sent_stanza(chat(n))
    management.acknowledge(3)
    with pytest.raises(sm.TooHigh):
        management.acknowledge(2)              # 2^32 - 1 ahead of 3
    assert management.acked == 3 and len(management.unacked) == 1     # nothing changed


def test_r_or_a_before_enable_is_a_stream_error():
    srv, _ = negotiated()
    answer, [ended] = say(srv, R)
    assert ended.error.condition is StreamErrorCondition.UNSUPPORTED_STANZA_TYPE


def test_an_a_without_a_number_is_bad_format():
    srv, _ = negotiated()
    enabled(srv)
    _, [ended] = say(srv, b"<a xmlns='urn:xmpp:sm:3' h='-1'/>")
    assert ended.error.condition is StreamErrorCondition.BAD_FORMAT


# --- §5 resumption -------------------------------------------------------------------------

def test_resume_in_place_of_bind_is_reported_to_the_adapter():
    srv, _ = negotiated(bind=False)
    answer, events = say(srv, b"<resume xmlns='urn:xmpp:sm:3' previd='some-long-sm-id' h='3'/>")
    assert answer == [] and events == [ResumeRequested("some-long-sm-id", 3)]


def test_resume_unknown_is_failed_item_not_found_and_the_client_may_bind():
    srv, _ = negotiated(bind=False)
    say(srv, b"<resume xmlns='urn:xmpp:sm:3' previd='nobody-knows' h='0'/>")
    srv.refuse_resumption()
    [answer] = parse(srv.data_to_send())
    assert answer.tag == SM + "failed" and answer.find(STANZAS + "item-not-found") is not None
    [result], _ = say(srv, b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:"
                           b"xmpp-bind'><resource>again</resource></bind></iq>")
    assert result.get("type") == "result" and srv.phase is Phase.ESTABLISHED


def test_resume_without_previd_or_with_a_bad_h_is_failed_bad_request():
    srv, _ = negotiated(bind=False)
    [answer], events = say(srv, b"<resume xmlns='urn:xmpp:sm:3' h='x' previd='p'/>")
    assert events == [] and answer.find(STANZAS + "bad-request") is not None
    [answer], events = say(srv, b"<resume xmlns='urn:xmpp:sm:3' h='1'/>")
    assert events == [] and answer.find(STANZAS + "bad-request") is not None


def test_resume_after_bind_is_failed_unexpected_request():
    srv, _ = negotiated()
    [answer], events = say(srv, b"<resume xmlns='urn:xmpp:sm:3' previd='p' h='0'/>")
    assert answer.find(STANZAS + "unexpected-request") is not None and events == []


def test_resumed_carries_what_the_server_handled_and_the_counters_go_on():
    old, _ = negotiated()
    previd = enabled(old).get("id")
    say(old, message(1) + message(2))          # the server handled 2
    for n in range(4):
        old.send_stanza(chat(n))               # the client got 2 of 4 before the cut
    old.data_to_send()

    new, _ = negotiated(bind=False)
    _, [request] = say(new, f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' "
                            f"h='2'/>".encode())
    released = old.sm.acknowledge(request.h)   # what the adapter does first
    new.resume(old.sm, old.jid)
    [resumed] = parse(new.data_to_send())
    assert resumed.tag == SM + "resumed"
    assert resumed.get("h") == "2" and resumed.get("previd") == previd
    assert new.phase is Phase.ESTABLISHED and new.jid == JULIET
    assert [s.get("id") for s in released] == ["s0", "s1"]
    again = new.sm.rewind()
    assert [s.get("id") for s in again] == ["s2", "s3"]
    for stanza in again:                       # sent again on the new stream: counted again
        new.send_stanza(stanza)
    new.data_to_send()
    say(new, a(4))
    assert not new.sm.unacked
    [answer], _ = say(new, message(3) + R)
    assert answer.get("h") == "3"


def test_resume_with_h_too_high_changes_nothing():
    management = sm.Management("id", 300)
    for n in range(2):
        management.sent_stanza(chat(n))
    with pytest.raises(sm.TooHigh) as raised:
        management.acknowledge(5)
    assert raised.value.application.attrs == {"h": "5", "send-count": "2"}
    assert len(management.unacked) == 2
