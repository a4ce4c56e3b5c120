"""Server-to-server streams in memory (iim/xmpp/s2s.py): XEP-0178, XEP-0220, the
TLS policy of docs/architecture.md, RFC 6120 §4.9 stream errors. The two ends are wired
back to back; "TLS" here is the moment both ends call tls_established() (the
real TLS runs in tests/test_federation.py)."""

from __future__ import annotations

import pytest

from iim.xmpp import dialback as db
from iim.xmpp.errors import StreamErrorCondition as Cond
from iim.xmpp.events import StanzaReceived, StartTLS, StreamEnded
from iim.xmpp.s2s import (
    CoserverPair, CoserverVerified, DialbackVerifyAnswered, DialbackVerifyNeeded,
    IncomingServerStream, OutgoingServerStream, PeerAuthenticated, S2SPolicy,
)
from iim.xmpp.stream import Phase

A, B = "a.example", "b.example"
HEADER = ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/"
          "streams' xmlns:db='jabber:server:dialback' version='1.0' to='{to}' from='{frm}'>")


def policy(domain, **kw):
    return S2SPolicy(domain, dialback_secret=domain.encode() * 4, **kw)


class Wire:
    """Pump bytes between an outgoing and an incoming stream until quiet."""

    def __init__(self, out: OutgoingServerStream, inc: IncomingServerStream):
        self.out, self.inc = out, inc
        self.out_events, self.in_events = [], []

    def run(self):
        for _ in range(30):
            sent = self.out.data_to_send()
            if sent:
                self.in_events += self.inc.receive_data(sent)
            back = self.inc.data_to_send()
            if back:
                self.out_events += self.out.receive_data(back)
            if self._both_want_tls():
                self.out.tls_established()
                self.inc.tls_established()
                continue
            if not sent and not back:
                return self
        raise AssertionError("never quiet")

    def _both_want_tls(self):
        return self.out.phase is Phase.TLS_PENDING and self.inc.phase is Phase.TLS_PENDING


def wire(out_policy, in_policy, *, certificate_ok=lambda d: False, **out_kw):
    out = OutgoingServerStream(out_policy, in_policy.domain, **out_kw)
    inc = IncomingServerStream(in_policy)
    inc.certificate_ok = certificate_ok
    out.start()
    return Wire(out, inc).run()


def feed(stream, text: str):
    return stream.receive_data(text.encode())


def sent(stream) -> str:
    return stream.data_to_send().decode()


def ended(events):
    return next(e for e in events if isinstance(e, StreamEnded))


# -- dialback keys (XEP-0185 §3, XEP-0220 §2.1.1 test vectors) ---------------------------------

def test_dialback_keys_match_the_published_examples():
    assert db.dialback_key(b"s3cr3tf0rd14lb4ck", "xmpp.example.com", "example.org",
                           "D60000229F") == \
        "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
    assert db.dialback_key(b"s3cr3tf0rd14lb4ck", "montague.example", "capulet.example",
                           "D60000229F") == \
        "b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3"


# -- SASL EXTERNAL (XEP-0178 §3) ------------------------------------------------------------

def test_a_trusted_certificate_authenticates_with_external_after_starttls():
    w = wire(policy(A, tls_offered=True), policy(B, tls_offered=True),
             certificate_ok=lambda d: d == A, use_external=True)
    assert PeerAuthenticated(A, "SASL EXTERNAL") in w.in_events
    assert PeerAuthenticated(B, "SASL EXTERNAL") in w.out_events
    assert w.out.phase is Phase.ESTABLISHED and w.out.secure


def test_external_is_not_offered_for_an_untrusted_certificate_and_dialback_follows():
    w = wire(policy(A, tls_offered=True), policy(B, tls_offered=True), use_external=True)
    need = next(e for e in w.in_events if isinstance(e, DialbackVerifyNeeded))
    assert need.originating == A
    key_ok = db.key_is_valid(policy(A).dialback_secret, B, A, need.stream_id, need.key)
    assert key_ok
    events = w.inc.dialback_verified(A, True)
    assert PeerAuthenticated(A, "dialback") in events
    w.run()
    assert PeerAuthenticated(B, "dialback") in w.out_events


def test_external_for_another_domain_than_the_certificate_names_is_refused():
    inc = IncomingServerStream(policy(B, tls_offered=True))
    inc.certificate_ok = lambda d: d == A
    feed(inc, HEADER.format(to=B, frm=A) + "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    inc.data_to_send()
    inc.tls_established()
    feed(inc, HEADER.format(to=B, frm=A))
    inc.data_to_send()
    # authzid c.example (base64 "Yy5leGFtcGxl") does not match the stream's from
    feed(inc, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>"
              "Yy5leGFtcGxl</auth>")
    assert "<invalid-authzid/>" in sent(inc)
    assert inc.authenticated == {}


# -- dialback (XEP-0220) -----------------------------------------------------------------------

def test_the_authoritative_server_answers_verify_requests_for_its_own_keys():
    inc = IncomingServerStream(policy(A))
    feed(inc, HEADER.format(to=A, frm=B))
    inc.data_to_send()
    good = db.dialback_key(policy(A).dialback_secret, B, A, "S1")
    feed(inc, f"<db:verify from='{B}' to='{A}' id='S1'>{good}</db:verify>")
    assert f"<db:verify from='{A}' to='{B}' type='valid' id='S1'/>" in sent(inc)
    feed(inc, f"<db:verify from='{B}' to='{A}' id='S2'>{good}</db:verify>")
    assert "type='invalid' id='S2'" in sent(inc)


def test_a_key_for_a_domain_we_do_not_serve_gets_item_not_found():
    inc = IncomingServerStream(policy(A))
    feed(inc, HEADER.format(to=A, frm=B))
    inc.data_to_send()
    feed(inc, f"<db:result from='{B}' to='c.example'>abc</db:result>")
    out = sent(inc)
    assert "type='error'" in out and "<item-not-found" in out


def test_an_invalid_key_is_refused_and_the_stream_closed():
    w = wire(policy(A), policy(B))
    assert any(isinstance(e, DialbackVerifyNeeded) for e in w.in_events)
    events = w.inc.dialback_verified(A, False)
    assert ended(events).error.condition is Cond.NOT_AUTHORIZED
    assert "type='invalid'" in sent(w.inc)


def test_the_answer_to_our_verify_request_is_reported():
    w = wire(policy(A), policy(B))
    w.out.request_verify(B, "XYZ", "somekey")
    assert "<db:verify from='a.example' to='b.example' id='XYZ'>somekey</db:verify>" in \
        w.out.data_to_send().decode()
    events = feed(w.out, f"<db:verify from='{B}' to='{A}' id='XYZ' type='valid'/>")
    assert events == [DialbackVerifyAnswered(B, "XYZ", True)]


def waiting_for_our_key():
    """a.example sent b.example its key (Step 1) and waits for the verdict."""
    out = OutgoingServerStream(policy(A), B)
    out.start()
    out.data_to_send()
    feed(out, HEADER.format(to=A, frm=B).replace("version=", "id='S1' version=") +
         "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>"
         "</stream:features>")
    assert f"<db:result from='{A}' to='{B}'>" in sent(out)
    return out


@pytest.mark.parametrize("answer, bounce", [
    # XEP-0220 §2.1.1: 'invalid' -> internal-server-error; 'error' -> remote-server-timeout
    (f"<db:result from='{B}' to='{A}' type='invalid'/>", "internal-server-error"),
    (f"<db:result from='{B}' to='{A}' type='error'><error type='cancel'><item-not-found "
     f"xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
     "remote-server-timeout"),
])
def test_a_refused_key_sends_the_waiting_stanzas_back_with_the_xep_condition(answer, bounce):
    out = waiting_for_our_key()
    events = feed(out, answer)
    assert ended(events).error.condition is Cond.NOT_AUTHORIZED
    assert out.bounce_condition.value == bounce
    assert sent(out) == "</stream:stream>"           # no stream error: the peer did no wrong


@pytest.mark.parametrize("answer", [
    f"<db:result from='c.example' to='{A}' type='valid'/>",     # another sender domain
    f"<db:result from='{B}' to='c.example' type='valid'/>",     # another target domain
])
def test_an_answer_for_another_domain_pair_is_dropped_as_unsolicited(answer):
    """XEP-0220 §2.1.1, §3.1: only the answer to our own request counts."""
    out = waiting_for_our_key()
    assert feed(out, answer) == []
    assert out.phase is not Phase.ESTABLISHED and out.method == "dialback-pending"
    events = feed(out, f"<db:result from='{B}' to='{A}' type='valid'/>")
    assert PeerAuthenticated(B, "dialback") in events


def test_an_error_from_the_authoritative_server_is_no_verdict_on_the_key():
    """Step 3 answered type='error' is reported as unknown (valid None), and the
    initiating server hears <remote-server-not-found/> (XEP-0220 §2.4), not
    'invalid', which would brand it a spoofer and close its stream."""
    w = wire(policy(A), policy(B))
    w.out.request_verify(B, "XYZ", "somekey")
    w.out.data_to_send()
    events = feed(w.out, f"<db:verify from='{B}' to='{A}' id='XYZ' type='error'><error "
                         f"type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:"
                         f"xmpp-stanzas'/></error></db:verify>")
    assert events == [DialbackVerifyAnswered(B, "XYZ", None)]
    assert feed(w.out, f"<db:verify from='{B}' to='c.example' id='XYZ' type='valid'/>") == []
    assert w.inc.dialback_verified(A, None) == []
    answer = sent(w.inc)
    assert f"<db:result from='{B}' to='{A}' type='error'>" in answer
    assert "<remote-server-not-found" in answer and w.inc.phase is not Phase.CLOSED


def test_an_invalid_key_for_a_second_domain_gets_forbidden_and_the_stream_stays():
    """'invalid' would oblige us to close a stream that carries a verified
    domain already (§2.2.1); the dialback error <forbidden/> refuses the
    second domain alone (§2.1.2)."""
    w = established_by_dialback()
    feed(w.inc, f"<db:result from='c.example' to='{B}'>key</db:result>")
    events = w.inc.dialback_verified("c.example", False)
    answer = sent(w.inc)
    assert "type='error'" in answer and "<forbidden" in answer and "invalid" not in answer
    assert not any(isinstance(e, StreamEnded) for e in events)
    assert w.inc.authenticated == {A: "dialback"}


# -- requiressl (docs/architecture.md, "TLS policy") ---------------------------------------------

@pytest.mark.parametrize("nonza", [
    "<db:result from='a.example' to='b.example'>k</db:result>",
    "<db:verify from='a.example' to='b.example' id='1'>k</db:verify>",
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
    "<message from='x@a.example' to='y@b.example'><body>hi</body></message>",
])
def test_requiressl_anything_before_starttls_is_a_policy_violation(nonza):
    inc = IncomingServerStream(policy(B, tls_offered=True, tls_required=True))
    feed(inc, HEADER.format(to=B, frm=A))
    assert "<required/>" in sent(inc)
    events = feed(inc, nonza)
    assert ended(events).error.condition is Cond.POLICY_VIOLATION
    assert not any(isinstance(e, (DialbackVerifyNeeded, StanzaReceived)) for e in events)


def test_a_coserver_requiressl_applies_to_that_peer_only():
    strict = policy(B, tls_offered=True, tls_required_domains=frozenset({A}))
    inc = IncomingServerStream(strict)
    feed(inc, HEADER.format(to=B, frm=A))
    assert "<required/>" in sent(inc)
    other = IncomingServerStream(strict)
    feed(other, HEADER.format(to=B, frm="c.example"))
    assert "<required/>" not in sent(other)
    events = feed(other, "<db:result from='c.example' to='b.example'>k</db:result>")
    assert isinstance(events[0], DialbackVerifyNeeded)


def test_leaving_out_from_does_not_escape_a_coserver_requiressl():
    inc = IncomingServerStream(policy(B, tls_offered=True, tls_required_domains=frozenset({A})))
    feed(inc, "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/"
              "streams' xmlns:db='jabber:server:dialback' version='1.0' to='b.example'>")
    inc.data_to_send()
    events = feed(inc, f"<db:result from='{A}' to='{B}'>k</db:result>")
    assert ended(events).error.condition is Cond.POLICY_VIOLATION


def test_an_outgoing_stream_abandons_a_peer_without_starttls_naming_the_parameter():
    w = wire(policy(A, tls_offered=True), policy(B, tls_offered=False),
             tls_required_by="iim_server.coserver1.requiressl")
    error = ended(w.out_events).error
    assert error.condition is Cond.POLICY_VIOLATION
    assert "iim_server.coserver1.requiressl" in error.text
    assert not any(isinstance(e, DialbackVerifyNeeded) for e in w.in_events)


# -- stanzas and addresses (RFC 6120 §4.9.3) -----------------------------------------------------

def established_by_dialback():
    w = wire(policy(A), policy(B))
    w.inc.dialback_verified(A, True)
    w.run()
    return w


def test_stanzas_travel_in_jabber_server_and_arrive_in_jabber_client():
    from xml.etree.ElementTree import Element, SubElement
    w = established_by_dialback()
    message = Element("{jabber:client}message", {"from": f"x@{A}/r", "to": f"y@{B}"})
    SubElement(message, "{jabber:client}body").text = "hi"
    w.out.send_stanza(message)
    wire_bytes = w.out.data_to_send()
    assert wire_bytes == b"<message from='x@a.example/r' to='y@b.example'><body>hi</body></message>"
    [event] = w.inc.receive_data(wire_bytes)
    assert event.stanza.tag == "{jabber:client}message"
    assert event.stanza.find("{jabber:client}body").text == "hi"


@pytest.mark.parametrize("stanza, condition", [
    (f"<message from='x@c.example' to='y@{B}'/>", Cond.INVALID_FROM),
    (f"<message from='x@{A}' to='y@c.example'/>", Cond.HOST_UNKNOWN),
    (f"<message to='y@{B}'/>", Cond.IMPROPER_ADDRESSING),
])
def test_badly_addressed_stanzas_end_the_stream(stanza, condition):
    w = established_by_dialback()
    assert ended(feed(w.inc, stanza)).error.condition is condition


def test_stanzas_before_authentication_are_not_authorized():
    inc = IncomingServerStream(policy(B))
    feed(inc, HEADER.format(to=B, frm=A))
    events = feed(inc, f"<message from='x@{A}' to='y@{B}'/>")
    assert ended(events).error.condition is Cond.NOT_AUTHORIZED


def test_a_header_for_a_domain_we_do_not_serve_is_host_unknown():
    inc = IncomingServerStream(policy(B))
    events = feed(inc, HEADER.format(to="c.example", frm=A))
    assert ended(events).error.condition is Cond.HOST_UNKNOWN


def test_a_client_stream_header_is_the_wrong_namespace():
    inc = IncomingServerStream(policy(B))
    events = feed(inc, "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx."
                       "jabber.org/streams' version='1.0' to='b.example'>")
    assert ended(events).error.condition is Cond.INVALID_NAMESPACE


# -- coservers -----------------------------------------------------------------------------------

PAIR_A, PAIR_B = CoserverPair("a-id", "a-secret"), CoserverPair("b-id", "b-secret")


def coserver_policies(a_claims=PAIR_A, b_claims=PAIR_B):
    pa = policy(A, own_pair=a_claims, coserver_pairs={B: PAIR_B})
    pb = policy(B, own_pair=b_claims, coserver_pairs={A: PAIR_A})
    return pa, pb


def test_coservers_prove_their_pairs_both_ways():
    pa, pb = coserver_policies()
    w = wire(pa, pb)
    w.inc.dialback_verified(A, True)
    w.run()
    assert CoserverVerified(A, "a-id") in w.in_events
    assert CoserverVerified(B, "b-id") in w.out_events
    assert w.out.phase is Phase.ESTABLISHED


def test_a_wrong_coserver_password_is_refused():
    pa, pb = coserver_policies(a_claims=CoserverPair("a-id", "not-the-secret"))
    w = wire(pa, pb)
    events = w.inc.dialback_verified(A, True)
    w.in_events += events
    w.run()
    error = ended(w.in_events).error
    assert error.condition is Cond.NOT_AUTHORIZED and "serverid/password" in error.text
    assert w.out.phase is Phase.CLOSED
    assert "not-the-secret" not in error.text


def test_a_coserver_stanza_before_its_proof_is_not_authorized():
    pa, pb = coserver_policies()
    inc = IncomingServerStream(pb)
    feed(inc, HEADER.format(to=B, frm=A))
    feed(inc, f"<db:result from='{A}' to='{B}'>k</db:result>")
    inc.dialback_verified(A, True)
    events = feed(inc, f"<message from='x@{A}' to='y@{B}'/>")
    assert ended(events).error.condition is Cond.NOT_AUTHORIZED


def test_starttls_is_refused_once_authenticated():
    w = established_by_dialback()
    events = feed(w.inc, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" in sent(w.inc)
    assert any(isinstance(e, StreamEnded) for e in events)
    assert not any(isinstance(e, StartTLS) for e in events)


def test_verify_requests_wait_while_sasl_runs():
    """Bytes after <success/> belong to the old stream (RFC 6120 §6.4.6): a
    <db:verify/> sent during SASL would be lost with them, so none is sent."""
    peer_header = HEADER.format(to=A, frm=B).replace("version=", "id='S{n}' version=")
    tls = "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    external = ("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL"
                "</mechanism></mechanisms>")
    out = OutgoingServerStream(policy(A, tls_offered=True), B, use_external=True)
    out.start()
    out.data_to_send()
    feed(out, peer_header.format(n=1) + f"<stream:features>{tls}</stream:features>")
    assert tls in sent(out)
    assert feed(out, "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>") == [StartTLS()]
    out.tls_established()
    out.data_to_send()
    feed(out, peer_header.format(n=2) + f"<stream:features>{external}</stream:features>")
    assert "mechanism='EXTERNAL'" in sent(out)
    assert not out.ready_for_dialback
    feed(out, "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    events = feed(out, peer_header.format(n=3) + "<stream:features/>")
    assert out.ready_for_dialback and out.phase is Phase.ESTABLISHED
    assert PeerAuthenticated(B, "SASL EXTERNAL") in events


def test_nobody_authenticates_as_this_server_itself():
    """A stream claiming our own domain would make us ask ourselves (dialback)
    or let a copy of our certificate speak for our users (EXTERNAL)."""
    inc = IncomingServerStream(policy(B, tls_offered=True))
    inc.certificate_ok = lambda d: True
    feed(inc, HEADER.format(to=B, frm=B))
    inc.data_to_send()
    events = feed(inc, f"<db:result from='{B}' to='{B}'>k</db:result>")
    assert events == [] and "<forbidden" in sent(inc)
    feed(inc, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    inc.data_to_send()
    inc.tls_established()
    feed(inc, HEADER.format(to=B, frm=B))
    inc.data_to_send()
    feed(inc, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
    assert "<invalid-authzid/>" in sent(inc)
    assert inc.authenticated == {}
