"""Stream phases move only through each role's transition table (iim/xmpp/stream.py).

Two kinds of test. The tables themselves: a move that is not in a role's
table raises LocalProtocolError and leaves the phase alone; a move the peer
asks for at the wrong moment is a stream error. And the RFC's paths: the
two ends run a real negotiation in memory while every move is recorded;
the recorded path is the one RFC 6120 (and XEP-0178 / XEP-0220 for s2s)
describes, and each of its steps is in the table.
"""

from __future__ import annotations

import pytest

from iim.xmpp import dialback as db
from iim.xmpp import sasl
from iim.xmpp.client_stream import CLIENT_TRANSITIONS, ClientStream
from iim.xmpp.errors import LocalProtocolError, StreamErrorCondition as Cond
from iim.xmpp.events import StreamEnded
from iim.xmpp.jid import JID
from iim.xmpp.s2s import (
    INCOMING_TRANSITIONS, OUTGOING_TRANSITIONS, DialbackVerifyNeeded, IncomingServerStream,
    OutgoingServerStream, S2SPolicy,
)
from iim.xmpp.server_stream import SERVER_TRANSITIONS
from iim.xmpp.stream import COMMON_TRANSITIONS, Phase, Stream
from xmpp_pair import DOMAIN, Pair, server

P = Phase
TABLES = {"c2s server": SERVER_TRANSITIONS, "c2s client": CLIENT_TRANSITIONS,
          "s2s incoming": INCOMING_TRANSITIONS, "s2s outgoing": OUTGOING_TRANSITIONS}
A, B = "a.example", "b.example"


@pytest.fixture
def moves(monkeypatch):
    """Every phase move any stream makes: {stream: [phase, ...]} from OPENING on."""
    paths: dict[Stream, list[Phase]] = {}
    enter = Stream._enter

    def recording(stream, phase):
        enter(stream, phase)
        paths.setdefault(stream, [Phase.OPENING]).append(phase)

    monkeypatch.setattr(Stream, "_enter", recording)
    return paths


def assert_in_table(path, table):
    for step in zip(path, path[1:]):
        assert step in table, f"{step[0].name} -> {step[1].name} is not in the table"


# -- the tables -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", TABLES)
def test_every_role_may_end_anywhere_and_never_leaves_closed(name):
    table = TABLES[name]
    assert COMMON_TRANSITIONS.items() <= table.items()
    assert all((phase, P.CLOSED) in table for phase in Phase if phase is not P.CLOSED)
    assert not [step for step in table if step[0] is P.CLOSED]
    assert all(why for why in table.values()), "each move names the step that takes it"


def test_a_move_outside_the_table_raises_and_changes_nothing():
    stream = server()
    with pytest.raises(LocalProtocolError, match="no move from OPENING to ESTABLISHED"):
        stream._enter(P.ESTABLISHED)
    assert stream.phase is P.OPENING
    stream.close()
    with pytest.raises(LocalProtocolError, match="CLOSED to OPENING"):
        stream._enter(P.OPENING)


def test_phase_is_read_only():
    with pytest.raises(AttributeError):
        server().phase = P.ESTABLISHED


def test_client_cannot_bind_before_authenticating():
    assert (P.OPENING, P.BINDING) not in CLIENT_TRANSITIONS
    assert (P.NEGOTIATING, P.ESTABLISHED) not in SERVER_TRANSITIONS
    assert (P.TLS_PENDING, P.ESTABLISHED) not in INCOMING_TRANSITIONS


def test_a_success_nobody_asked_for_is_the_peers_error():
    """A server that sends <success/> before any <auth/> breaks the protocol: a
    stream error for it, not a crash of the client."""
    client = ClientStream(JID("juliet", DOMAIN), "pw")
    client.start()
    client.receive_data(b"<stream:stream xmlns='jabber:client' xmlns:stream="
                        b"'http://etherx.jabber.org/streams' version='1.0' from='example.com'>")
    [ended] = client.receive_data(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    assert isinstance(ended, StreamEnded)
    assert ended.error.condition is Cond.UNSUPPORTED_STANZA_TYPE
    assert client.phase is P.CLOSED


def test_a_proceed_nobody_asked_for_is_the_peers_error():
    out = OutgoingServerStream(S2SPolicy(A, dialback_secret=b"a" * 32), B)
    out.start()
    out.receive_data(_s2s_header(B, A))
    out.receive_data(b"<stream:features/>")          # no STARTTLS offered: dialback
    out.receive_data(f"<db:result from='{B}' to='{A}' type='valid'/>".encode())
    assert out.phase is P.ESTABLISHED
    [ended] = out.receive_data(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert ended.error.condition is Cond.UNSUPPORTED_STANZA_TYPE


# -- c2s: the paths of RFC 6120 §9.1 ------------------------------------------------------

@pytest.fixture(scope="module")
def leaf(ca):
    return ca.issue(DOMAIN)


def c2s(ca, leaf, **client_options):
    srv = server(tls_offered=True)
    client = ClientStream(JID("juliet", DOMAIN, "balcony"), "r0m30myr0m30", **client_options)
    client.start()
    Pair(client, srv, ca, leaf).run()
    return client, srv


TLS = [P.OPENING, P.NEGOTIATING, P.TLS_PENDING, P.OPENING, P.NEGOTIATING]


def test_c2s_tls_then_scram_then_bind(ca, leaf, moves):
    client, srv = c2s(ca, leaf)
    assert moves[srv] == TLS + [P.AUTHENTICATING, P.OPENING, P.BINDING, P.ESTABLISHED]
    assert moves[client] == TLS + [P.AUTHENTICATING, P.OPENING, P.NEGOTIATING, P.BINDING,
                                   P.ESTABLISHED]
    assert_in_table(moves[srv], SERVER_TRANSITIONS)
    assert_in_table(moves[client], CLIENT_TRANSITIONS)
    srv.close()
    assert moves[srv][-2:] == [P.ESTABLISHED, P.CLOSED]


def test_c2s_an_empty_auth_takes_one_more_challenge(moves):
    """<auth/> without an initial response (RFC 6120 §6.4.2): an empty
    challenge first, then SCRAM's own; AUTHENTICATING -> AUTHENTICATING."""
    srv = server()
    scram = sasl.ClientAuth("juliet", "r0m30myr0m30", sasl.Mechanism.SCRAM_SHA_256)
    srv.receive_data(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx."
                     b"jabber.org/streams' to='example.com' version='1.0'>")
    srv.receive_data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
                     b"mechanism='SCRAM-SHA-256'/>")
    srv.receive_data(_response(scram.start()))
    srv.data_to_send()
    server_first = srv._auth._handshake._server_first.encode()
    srv.receive_data(_response(scram.respond(server_first)))
    assert moves[srv] == [P.OPENING, P.NEGOTIATING, P.AUTHENTICATING, P.AUTHENTICATING,
                          P.OPENING]
    assert_in_table(moves[srv], SERVER_TRANSITIONS)


def _response(data: bytes) -> bytes:
    return (f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
            f"{sasl.encode_payload(data)}</response>").encode()


def test_c2s_tls_then_plain_succeeds_at_once(ca, leaf, moves):
    client, srv = c2s(ca, leaf, mechanisms=(sasl.Mechanism.PLAIN,))
    assert moves[srv] == TLS + [P.OPENING, P.BINDING, P.ESTABLISHED]
    assert_in_table(moves[srv], SERVER_TRANSITIONS)


def test_c2s_a_failed_attempt_returns_to_negotiating(ca, leaf, moves):
    wrong = ClientStream(JID("juliet", DOMAIN), "not her password")
    wrong.start()
    srv = server(tls_offered=True)
    Pair(wrong, srv, ca, leaf).run()
    # the wrong proof, <failure/>; then the client gives up and closes its stream
    assert moves[srv] == TLS + [P.AUTHENTICATING, P.NEGOTIATING, P.CLOSED]
    assert_in_table(moves[srv], SERVER_TRANSITIONS)


# -- s2s: XEP-0178 and XEP-0220 --------------------------------------------------------------

def _s2s_header(frm: str, to: str) -> bytes:
    return (f"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/"
            f"streams' xmlns:db='jabber:server:dialback' version='1.0' id='s1' to='{to}' "
            f"from='{frm}'>").encode()


def s2s(*, external: bool):
    """An outgoing stream from A to B and B's incoming end, TLS on both (the
    moment both call tls_established), until quiet."""
    out = OutgoingServerStream(S2SPolicy(A, tls_offered=True, dialback_secret=b"a" * 32), B,
                               use_external=external)
    inc = IncomingServerStream(S2SPolicy(B, tls_offered=True, dialback_secret=b"b" * 32))
    inc.certificate_ok = lambda domain: external and domain == A
    out.start()
    events = []
    for _ in range(30):
        sent, back = out.data_to_send(), inc.data_to_send()
        events += inc.receive_data(sent) if sent else []
        events += out.receive_data(back) if back else []
        if out.phase is P.TLS_PENDING and inc.phase is P.TLS_PENDING:
            out.tls_established()
            inc.tls_established()
        elif not sent and not back:
            return out, inc, events
    raise AssertionError("never quiet")


def test_s2s_tls_then_sasl_external(moves):
    out, inc, _ = s2s(external=True)
    assert moves[out] == TLS + [P.OPENING, P.NEGOTIATING, P.ESTABLISHED]
    assert moves[inc] == TLS + [P.OPENING, P.ESTABLISHED]
    assert_in_table(moves[out], OUTGOING_TRANSITIONS)
    assert_in_table(moves[inc], INCOMING_TRANSITIONS)


def test_s2s_tls_then_dialback(moves):
    out, inc, events = s2s(external=False)
    need = next(e for e in events if isinstance(e, DialbackVerifyNeeded))
    assert db.key_is_valid(b"a" * 32, B, A, need.stream_id, need.key)
    inc.dialback_verified(A, True)
    out.receive_data(inc.data_to_send())
    assert moves[out] == TLS + [P.ESTABLISHED]
    assert moves[inc] == TLS + [P.ESTABLISHED]
    assert_in_table(moves[out], OUTGOING_TRANSITIONS)
    assert_in_table(moves[inc], INCOMING_TRANSITIONS)


def test_s2s_a_verification_asked_before_starttls_is_dropped_by_it():
    """<db:result/>, then <starttls/>: the answer would fall inside the TLS
    handshake, so the old stream's question is forgotten (the peer asks again)."""
    inc = IncomingServerStream(S2SPolicy(B, tls_offered=True, dialback_secret=b"b" * 32))
    inc.receive_data(_s2s_header(A, B))
    [need] = inc.receive_data(f"<db:result from='{A}' to='{B}'>{'k' * 64}</db:result>".encode())
    assert isinstance(need, DialbackVerifyNeeded)
    inc.receive_data(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert inc.phase is P.TLS_PENDING
    inc.data_to_send()
    assert inc.dialback_verified(A, True) == []
    assert inc.data_to_send() == b"" and inc.phase is P.TLS_PENDING
