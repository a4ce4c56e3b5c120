"""Stream negotiation, client and server cores wired together in memory.

Each test reads as an RFC 6120 transcript: what the initiating entity sends,
what the receiving entity answers, and which events each side reports.
"""

import pytest

from iim.xmpp import sasl
from iim.xmpp.client_stream import ClientStream, TLSMode
from iim.xmpp.errors import StreamErrorCondition as Cond
from iim.xmpp.events import (
    Authenticated, SessionEstablished, StanzaReceived, StartTLS, StreamEnded,
)
from iim.xmpp.jid import JID
from iim.xmpp.server_stream import ServerPolicy
from iim.xmpp.stream import Phase
from iim.xmpp.xml import StreamParser, ElementReceived
from xmpp_pair import DOMAIN, Pair, server

JULIET = JID("juliet", DOMAIN, "balcony")
HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>")
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture(scope="module")
def leaf(ca):
    return ca.issue(DOMAIN)


def client(jid=JULIET, password="r0m30myr0m30", **kw):
    stream = ClientStream(jid, password, **kw)
    stream.start()
    return stream


def elements(data: bytes):
    """Parse what a server wrote into its depth-1 elements (its header first)."""
    return [e.element for e in StreamParser().feed(data) if isinstance(e, ElementReceived)]


# --- RFC 6120 §9.1: the whole negotiation ---------------------------------------------

def test_starttls_scram_bind_then_stanzas(ca, leaf):
    srv = server(tls_offered=True)
    pair = Pair(client(), srv, ca, leaf).run()
    assert of(pair.server_events, StartTLS) and of(pair.client_events, StartTLS)
    assert srv.secure and pair.client.secure
    assert of(pair.server_events, Authenticated) == [Authenticated("juliet", "SCRAM-SHA-256")]
    assert of(pair.client_events, SessionEstablished) == [SessionEstablished(JULIET)]
    assert srv.phase is Phase.ESTABLISHED and srv.jid == JULIET

    from xml.etree.ElementTree import Element, SubElement
    message = Element("{jabber:client}message", {"to": "romeo@example.com", "type": "chat"})
    SubElement(message, "{jabber:client}body").text = "Wherefore art thou?"
    pair.client.send_stanza(message)
    pair.run()
    [received] = of(pair.server_events, StanzaReceived)
    assert received.stanza.get("from") == "juliet@example.com/balcony"     # §8.1.2.1 stamped
    assert received.stanza.findtext("{jabber:client}body") == "Wherefore art thou?"


def test_without_a_keystore_no_starttls_and_no_plain(ca, leaf):
    srv = server()
    pair = Pair(client(tls=TLSMode.OPTIONAL), srv).run()
    assert not srv.secure
    assert of(pair.client_events, SessionEstablished)
    assert pair.client.mechanism is sasl.Mechanism.SCRAM_SHA_256


def test_client_requiring_tls_gives_up_when_none_is_offered():
    pair = Pair(client(), server()).run()
    [ended] = of(pair.client_events, StreamEnded)
    assert ended.error.condition is Cond.POLICY_VIOLATION
    assert ended.error.text == "the server offers no STARTTLS"
    assert not of(pair.server_events, Authenticated)


def test_plain_is_offered_only_under_tls(ca, leaf):
    srv = server(tls_offered=True)
    srv.receive_data(HEADER)
    before = srv.data_to_send()
    assert b"PLAIN" not in before and b"SCRAM-SHA-256" in before
    pair = Pair(client(mechanisms=(sasl.Mechanism.PLAIN,)), server(tls_offered=True), ca,
                leaf).run()
    assert of(pair.server_events, Authenticated) == [Authenticated("juliet", "PLAIN")]


# --- §5: STARTTLS --------------------------------------------------------------------

def test_requiressl_features_offer_starttls_required_and_nothing_else():
    srv = server(tls_offered=True, tls_required=True)
    srv.receive_data(HEADER)
    [features] = elements(srv.data_to_send())
    assert [child.tag for child in features] == [
        "{urn:ietf:params:xml:ns:xmpp-tls}starttls", "{urn:xmpp:stream-limits:0}limits"]
    assert features[0].find("{urn:ietf:params:xml:ns:xmpp-tls}required") is not None


def test_requiressl_auth_before_starttls_is_a_policy_violation_and_not_processed():
    srv = server(tls_offered=True, tls_required=True)
    srv.receive_data(HEADER)
    srv.data_to_send()
    auth = (b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
            b"AGp1bGlldAByMG0zMG15cjBtMzA=</auth>")
    events = srv.receive_data(auth)
    assert [type(e) for e in events] == [StreamEnded]
    assert events[0].error.condition is Cond.POLICY_VIOLATION
    assert srv.data_to_send() == (
        b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>STARTTLS is required first</text>"
        b"</stream:error></stream:stream>")
    assert srv.username is None and srv.phase is Phase.CLOSED


def test_requiressl_a_stanza_before_starttls_is_a_policy_violation():
    srv = server(tls_offered=True, tls_required=True)
    srv.receive_data(HEADER)
    [ended] = srv.receive_data(b"<message to='romeo@example.com'><body>hi</body></message>")
    assert ended.error.condition is Cond.POLICY_VIOLATION


def test_bytes_pipelined_after_starttls_are_discarded_not_parsed_after_tls(ca, leaf):
    """The classic STARTTLS command-injection attack (RFC 6120 §5.4.3.3)."""
    srv = server(tls_offered=True)
    srv.receive_data(HEADER)
    srv.data_to_send()
    injected = (b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                b"AGp1bGlldAByMG0zMG15cjBtMzA=</auth>")
    events = srv.receive_data(STARTTLS + injected)
    assert events == [StartTLS()]
    assert srv.data_to_send() == b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    srv.tls_established()
    assert srv.username is None
    # the new stream starts from nothing: the injected element is gone for good
    assert srv.receive_data(HEADER) == []
    assert b"<mechanisms" in srv.data_to_send()
    assert srv.username is None


def test_starttls_twice_is_refused_with_failure_and_close():
    srv = server(tls_offered=True)
    srv.receive_data(HEADER)
    srv.receive_data(STARTTLS)
    srv.tls_established()
    srv.receive_data(HEADER)
    srv.data_to_send()
    [ended] = srv.receive_data(STARTTLS)
    assert ended.error is None
    assert srv.data_to_send() == (b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                                  b"</stream:stream>")


def test_data_during_the_handshake_belongs_to_tls():
    from iim.xmpp.errors import LocalProtocolError
    srv = server(tls_offered=True)
    srv.receive_data(HEADER)
    srv.receive_data(STARTTLS)
    with pytest.raises(LocalProtocolError):
        srv.receive_data(b"<presence/>")


# --- §6: SASL ------------------------------------------------------------------------

def test_wrong_password_is_not_authorized():
    pair = Pair(client(password="not-it", tls=TLSMode.OPTIONAL), server()).run()
    [ended] = of(pair.client_events, StreamEnded)
    assert ended.error.text == "SASL failure: not-authorized"
    assert not of(pair.server_events, Authenticated)


def test_unknown_user_looks_like_a_wrong_password():
    pair = Pair(client(jid=JID("tybalt", DOMAIN), tls=TLSMode.OPTIONAL), server()).run()
    [ended] = of(pair.client_events, StreamEnded)
    assert ended.error.text == "SASL failure: not-authorized"


def test_three_failed_attempts_end_the_stream():
    srv = server()
    srv.receive_data(HEADER)
    bad = (b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
           b"not base64!</auth>")
    assert srv.receive_data(bad) == [] and srv.receive_data(bad) == []
    [ended] = srv.receive_data(bad)
    assert ended.error.condition is Cond.POLICY_VIOLATION
    assert srv.data_to_send().count(b"<incorrect-encoding/>") == 3


def test_plain_without_tls_is_encryption_required():
    srv = server()
    srv.receive_data(HEADER)
    srv.data_to_send()
    srv.receive_data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                     b"AGp1bGlldAByMG0zMG15cjBtMzA=</auth>")
    out = srv.data_to_send()
    assert b"<encryption-required/>" in out and srv.username is None


def test_a_stanza_before_authentication_is_not_authorized():
    srv = server()
    srv.receive_data(HEADER)
    [ended] = srv.receive_data(b"<message to='romeo@example.com'/>")
    assert ended.error.condition is Cond.NOT_AUTHORIZED


# --- §7: binding ---------------------------------------------------------------------

def test_server_chooses_a_resource_when_the_client_asks_for_none():
    pair = Pair(client(jid=JID("juliet", DOMAIN), tls=TLSMode.OPTIONAL), server()).run()
    [established] = of(pair.client_events, SessionEstablished)
    assert established.jid.bare == JID("juliet", DOMAIN)
    assert established.jid.resource.startswith("iim-")


def test_spoofed_from_is_invalid_from(ca, leaf):
    pair = Pair(client(tls=TLSMode.OPTIONAL), server()).run()
    from xml.etree.ElementTree import Element
    pair.client.send_stanza(Element("{jabber:client}message", {"from": "romeo@example.com/x",
                                                               "to": "nurse@example.com"}))
    pair.run()
    [ended] = of(pair.server_events, StreamEnded)
    assert ended.error.condition is Cond.INVALID_FROM


# --- §4: stream headers and errors ---------------------------------------------------------

@pytest.mark.parametrize("header,condition", [
    (HEADER.replace(b"to='example.com'", b"to='example.org'"), Cond.HOST_UNKNOWN),
    (HEADER.replace(b"jabber:client", b"jabber:server"), Cond.INVALID_NAMESPACE),
    (HEADER.replace(b"com' version='1.0'>", b"com'>"), Cond.UNSUPPORTED_VERSION),
    (HEADER + b"<message><body>unclosed</message>", Cond.NOT_WELL_FORMED),
    (b"<!DOCTYPE lolz [<!ENTITY lol 'lol'>]>" + HEADER, Cond.RESTRICTED_XML),
])
def test_bad_stream_start_gets_our_header_then_the_error(header, condition):
    srv = server()
    [ended] = srv.receive_data(header)
    assert ended.error.condition is condition
    out = srv.data_to_send()
    assert out.startswith(b"<?xml version='1.0'?><stream:stream ")
    assert f"<{condition.value} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>".encode() in out
    assert out.endswith(b"</stream:error></stream:stream>")


def test_oversized_stanza_is_a_policy_violation_before_it_is_all_read():
    srv = ServerPolicy(DOMAIN, max_stanza_bytes=4096)
    stream = server(srv)
    stream.receive_data(HEADER)
    chunk = b"<message><body>" + b"x" * 60000
    [ended] = stream.receive_data(chunk)
    assert ended.error.condition is Cond.POLICY_VIOLATION
    assert b"<max-bytes>4096</max-bytes>" in stream.data_to_send()


def test_peer_closes_cleanly():
    pair = Pair(client(tls=TLSMode.OPTIONAL), server()).run()
    events = pair.client.close()
    pair.run()
    assert events == [StreamEnded(None)]
    [ended] = of(pair.server_events, StreamEnded)
    assert ended == StreamEnded(None, sent_by_peer=True)
    assert pair.server.phase is Phase.CLOSED


def test_legacy_session_iq_gets_an_empty_result():
    pair = Pair(client(tls=TLSMode.OPTIONAL), server()).run()
    from xml.etree.ElementTree import Element, SubElement
    iq = Element("{jabber:client}iq", {"type": "set", "id": "sess1"})
    SubElement(iq, "{urn:ietf:params:xml:ns:xmpp-session}session")
    pair.client.send_stanza(iq)
    pair.run()
    [reply] = of(pair.client_events, StanzaReceived)
    assert reply.stanza.get("type") == "result" and reply.stanza.get("id") == "sess1"
    assert not of(pair.server_events, StanzaReceived)


def test_endless_auth_and_abort_is_cut_off():
    """An abort (RFC 6120 §6.4.4) is an attempt that did not succeed: it counts."""
    srv = server()
    srv.receive_data(HEADER)
    start = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'/>"
    abort = b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    ended = []
    for _ in range(20):
        ended += srv.receive_data(start + abort)
        if ended:
            break
    assert [e.error.condition for e in ended] == [Cond.POLICY_VIOLATION]
    assert srv.data_to_send().count(b"<aborted/>") == 3      # max_auth_attempts
