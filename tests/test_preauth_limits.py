"""What an unauthenticated stream can make the server hold (issue 11, item 1).

In memory, each test a transcript of what a hostile initiating entity sends
and the stream error the receiving entity ends with (RFC 6120 §4.9.3.14
policy-violation, with its text); then the references: a closed stream, its
parser and a closed client session are freed by reference counting alone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc
import weakref

import pytest

from iim.conf.limits import ServerLimits
from iim.server.c2s import ClientSession, SessionContext
from iim.xmpp.errors import StreamErrorCondition as Cond
from iim.xmpp.events import StreamEnded
from iim.xmpp.server_stream import ServerPolicy
from iim.xmpp.xml import StreamParser
from xmpp_pair import DOMAIN, server
from support.carrier import MemoryCarrier

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>")
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
AUTH_PLAIN = f"<auth xmlns='{SASL}' mechanism='PLAIN'>".encode()
ABORT = f"<abort xmlns='{SASL}'/>".encode()
RESPONSE = f"<response xmlns='{SASL}'/>".encode()
START_SCRAM = f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'/>".encode()
TOO_MANY_ATTEMPTS = "too many authentication attempts on one connection (limit 3)"


def ended(events):
    [end] = [e for e in events if isinstance(e, StreamEnded)]
    return end.error


def declarations(count: int, first: int = 0) -> bytes:
    return b"".join(b" xmlns:p%d='urn:x:%d'" % (i, i) for i in range(first, first + count))


# --- namespace declarations: per stanza, all elements together -----------------------

def test_namespace_declarations_spread_over_a_stanza_are_counted_together():
    """64 in one <auth/>: its own xmlns and 63 on seven children: at the limit,
    parsed (and judged as SASL)."""
    srv = server()
    srv.receive_data(HEADER)
    children = b"".join(b"<c%d%s/>" % (i, declarations(9, 9 * i)) for i in range(7))
    events = srv.receive_data(AUTH_PLAIN + children + b"</auth>")
    assert not [e for e in events if isinstance(e, StreamEnded)]
    assert b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>" in srv.data_to_send()


def test_one_declaration_more_than_max_xmlns_per_stanza_is_policy_violation():
    srv = server()
    srv.receive_data(HEADER)
    children = b"".join(b"<c%d%s/>" % (i, declarations(9, 9 * i)) for i in range(7))
    error = ended(srv.receive_data(AUTH_PLAIN + children + b"<d xmlns:q='urn:q'/></auth>"))
    assert error.condition is Cond.POLICY_VIOLATION
    assert error.text == "more than 64 namespace declarations in one stanza"


def test_default_namespace_declarations_count_too():
    srv = server(max_xmlns_per_stanza=4)
    srv.receive_data(HEADER)
    children = b"".join(b"<c xmlns='urn:x:%d'/>" % i for i in range(5))
    error = ended(srv.receive_data(AUTH_PLAIN + children + b"</auth>"))
    assert error.condition is Cond.POLICY_VIOLATION
    assert error.text == "more than 4 namespace declarations in one stanza"


def test_declarations_on_one_element_are_not_attributes_but_still_bounded():
    """The attribute limit (64) never saw them: 10,000 on one element."""
    srv = server()
    srv.receive_data(HEADER)
    error = ended(srv.receive_data(b"<auth" + declarations(10_000) + b"/>"))
    assert error.condition is Cond.POLICY_VIOLATION
    assert error.text == "more than 64 namespace declarations in one stanza"


def test_the_count_starts_again_with_each_stanza():
    srv = server(max_xmlns_per_stanza=8)
    srv.receive_data(HEADER)
    for _ in range(2):                  # xmlns and 7 prefixes: each stanza at the limit
        events = srv.receive_data(START_SCRAM[:-2] + declarations(7) + b"/>" + ABORT)
        assert not [e for e in events if isinstance(e, StreamEnded)]


def test_declarations_on_the_stream_header_are_bounded():
    srv = server()
    header = HEADER[:-1] + declarations(65) + b">"
    error = ended(srv.receive_data(header))
    assert error.condition is Cond.POLICY_VIOLATION
    assert error.text == "more than 64 namespace declarations on the stream header"


def test_the_limit_is_the_policys():
    policy = ServerPolicy(DOMAIN, max_xmlns_per_stanza=ServerLimits().max_xmlns_per_stanza // 8)
    srv = server(policy)
    srv.receive_data(HEADER)
    error = ended(srv.receive_data(b"<auth" + declarations(9) + b"/>"))
    assert error.text == "more than 8 namespace declarations in one stanza"


# --- what a long stream accumulates is freed between stanzas --------------------------

HOSTILE_STANZA = b"<message>%s</message>"


def _fresh_prefix_stanza(n: int) -> bytes:
    """Ten prefixes never seen before, each used by an element and an attribute."""
    body = b"".join(b"<f%d:e f%d:a='1' xmlns:f%d='urn:f:%d'/>" % (i, i, i, i)
                    for i in range(10 * n, 10 * n + 10))
    return HOSTILE_STANZA % body


def test_fresh_prefixes_in_every_stanza_do_not_accumulate():
    """Expat keeps every prefix and raw name it saw until the parser is renewed;
    5,000 stanzas of fresh ones leave the parser no bigger than 500 did."""
    parser = StreamParser()
    parser.feed(HEADER)
    tracemalloc.start()
    try:
        for n in range(500):
            parser.feed(_fresh_prefix_stanza(n))
        before = tracemalloc.get_traced_memory()[0]
        for n in range(500, 5500):
            [event] = parser.feed(_fresh_prefix_stanza(n))
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert event.element[0].tag == "{urn:f:54990}e"
    assert after - before < 512 * 1024, f"grew {after - before} bytes"


def test_a_renewal_keeps_the_headers_prefixes_and_splits_nothing():
    """Stanzas after a renewal still see the header's prefixes, however the
    bytes are cut."""
    header = HEADER[:-1] + b" xmlns:h='urn:header'>"
    stanzas = b"".join(_fresh_prefix_stanza(n) + b"<h:n i='%d'/>" % n for n in range(40))
    for cut in (1, 7, 64, len(stanzas)):
        parser = StreamParser()
        parser.feed(header)
        elements = []
        for start in range(0, len(stanzas), cut):
            elements += [e.element for e in parser.feed(stanzas[start:start + cut])]
        assert [e.get("i") for e in elements if e.tag == "{urn:header}n"] == \
            [str(n) for n in range(40)]
        assert len(elements) == 80


def test_a_parse_error_after_a_renewal_names_the_streams_byte():
    parser = StreamParser()
    parser.feed(HEADER)
    stanzas = b"".join(_fresh_prefix_stanza(n) for n in range(10))
    with pytest.raises(Exception) as caught:
        parser.feed(stanzas + b"<a></b>")
    assert f"(byte {len(HEADER) + len(stanzas) + 5})" in caught.value.text


# --- SASL attempts: failures, aborts and restarts alike ----------------------------------

def test_aborts_without_an_exchange_are_attempts():
    srv = server()
    srv.receive_data(HEADER)
    events = []
    for _ in range(10):
        events += srv.receive_data(ABORT)
    assert srv.data_to_send().count(b"<aborted/>") == 3
    assert ended(events).condition is Cond.POLICY_VIOLATION
    assert ended(events).text == TOO_MANY_ATTEMPTS


def test_abort_loop_after_starttls_is_cut_off(ca):
    """The loop issue 11 found: STARTTLS, then <abort/> forever."""
    srv = server(tls_offered=True)
    srv.receive_data(HEADER)
    srv.receive_data(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    srv.tls_established()                               # the adapter's handshake is done
    srv.receive_data(HEADER)
    events = []
    for _ in range(10):
        events += srv.receive_data(START_SCRAM + ABORT)
    assert ended(events).text == TOO_MANY_ATTEMPTS


def test_restarted_exchanges_are_attempts():
    """<auth/> in the middle of an exchange abandons it (RFC 6120 §6.4.5 leaves
    the retry to us): each abandoned one counts."""
    srv = server()
    srv.receive_data(HEADER)
    events = []
    for _ in range(10):
        events += srv.receive_data(START_SCRAM)
    assert ended(events).condition is Cond.POLICY_VIOLATION
    assert ended(events).text == TOO_MANY_ATTEMPTS
    assert b"<failure" not in srv.data_to_send()        # abandoned, never answered


def test_stray_responses_are_attempts():
    srv = server()
    srv.receive_data(HEADER)
    events = []
    for _ in range(10):
        events += srv.receive_data(RESPONSE)
    assert srv.data_to_send().count(b"<malformed-request/>") == 3
    assert ended(events).text == TOO_MANY_ATTEMPTS


def test_max_auth_attempts_is_the_policys():
    srv = server(max_auth_attempts=1)
    srv.receive_data(HEADER)
    error = ended(srv.receive_data(ABORT))
    assert error.text == "too many authentication attempts on one connection (limit 1)"


# --- references: freed without the cyclic GC ---------------------------------------------

@pytest.fixture
def no_cyclic_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_a_dropped_parser_is_freed_by_reference_counting(no_cyclic_gc):
    parser = StreamParser()
    parser.feed(HEADER + b"<message><body>half a stan")
    inner = weakref.ref(parser._parser)
    del parser
    assert inner() is None


def test_a_closed_stream_frees_its_parser_at_once(no_cyclic_gc):
    srv = server()
    srv.receive_data(HEADER + AUTH_PLAIN + b"AGFs")
    inner = weakref.ref(srv._parser._parser)
    srv.close()
    assert srv._parser._parser._expat is None
    stream = weakref.ref(srv)
    del srv
    assert stream() is None and inner() is None


class _Storage:
    def credentials(self, username):
        return None

    def server_secret(self):
        return b"s" * 32


def test_a_closed_client_session_is_freed_by_reference_counting(no_cyclic_gc):
    async def run():
        ctx = SessionContext(policy=ServerPolicy(DOMAIN), tls_context=None, router=None,
                             storage=_Storage(), log=logging.getLogger("test"),
                             limits=ServerLimits(auth_failure_delay=0))
        session = ClientSession(ctx, MemoryCarrier("192.0.2.7:5222", "192.0.2.7"))
        session.data_received(HEADER + START_SCRAM + ABORT + b"<auth xmlns='" +
                              SASL.encode() + b"' mechanism='PLAIN'>AGFs")
        refs = [weakref.ref(o) for o in (session, session.stream, session.stream._parser._parser)]
        session.connection_lost()
        del session
        await asyncio.sleep(0)
        return refs, ctx
    refs, ctx = asyncio.run(run())
    assert not ctx.sessions
    assert [ref() for ref in refs] == [None, None, None]
