"""What one unauthenticated s2s stream can make the server hold or do (issue 11,
items 1, 3 and 8), in memory: the incoming stream's cap on pending dialback
verifications (XEP-0220 §2.4 error, type wait), answering <db:verify/> without
keeping anything, the SASL attempt limit; the federation's ConnectGate
(connection attempts per second, one retry delay per failed domain) with fake
time; the resolver's bounds (names that cannot be DNS names, SRV targets,
remembered failures) against a real DNS server on loopback (tests/dnsfake.py).
The same attacks over real sockets: tests/test_federation_limits.py."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from types import SimpleNamespace

import pytest

from dnsfake import FakeDNS
from iim.conf.values import HostPort
from iim.server.federation import ConnectGate
from iim.server.resolve import MAX_TARGETS, NegativeCache, NotADNSName, Resolver, Target
from iim.xmpp.errors import StreamErrorCondition as Cond
from iim.xmpp.events import StreamEnded
from iim.xmpp.s2s import (
    DialbackRefused, DialbackVerifyNeeded, IncomingServerStream, S2SPolicy,
)

A, B = "a.example", "b.example"
HEADER = ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/"
          "streams' xmlns:db='jabber:server:dialback' version='1.0' to='{to}' from='{frm}'>")
RESOURCE_CONSTRAINT = ("<error type='wait'><resource-constraint "
                       "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>")


def opened(domain=B, **kw) -> IncomingServerStream:
    stream = IncomingServerStream(S2SPolicy(domain, dialback_secret=b"k" * 32, **kw))
    stream.receive_data(HEADER.format(to=domain, frm="evil.example").encode())
    stream.data_to_send()
    return stream


def db_results(domains, to=B) -> bytes:
    return "".join(f"<db:result from='{d}' to='{to}'>k3y</db:result>" for d in domains).encode()


# -- the incoming stream ---------------------------------------------------------------------

def test_pending_verifications_per_stream_are_capped_and_the_rest_refused_with_an_error():
    stream = opened(max_pending_verifies=4)
    domains = [f"d{i}.evil.example" for i in range(1000)]
    events = stream.receive_data(db_results(domains))
    asked = [e.originating for e in events if isinstance(e, DialbackVerifyNeeded)]
    refused = [e for e in events if isinstance(e, DialbackRefused)]
    assert asked == domains[:4]
    assert refused == [DialbackRefused(d, "max_pending_verifies") for d in domains[4:]]
    out = stream.data_to_send().decode()
    assert out.count("type='error'") == 996
    assert out.count(RESOURCE_CONSTRAINT) == 996
    assert (f"<db:result from='{B}' to='d4.evil.example' type='error'>"
            f"{RESOURCE_CONSTRAINT}</db:result>") in out
    assert stream.phase.name != "CLOSED"                # a dialback error is not a stream error


def test_an_answered_verification_frees_its_place():
    stream = opened(max_pending_verifies=2)
    stream.receive_data(db_results(["x.example", "y.example"]))
    stream.data_to_send()
    assert isinstance(stream.receive_data(db_results(["z.example"]))[0], DialbackRefused)
    stream.dialback_verified("x.example", None)       # could not be checked: an error answer
    stream.data_to_send()
    events = stream.receive_data(db_results(["z.example"]))
    assert [type(e) for e in events] == [DialbackVerifyNeeded]


def test_answering_verify_requests_keeps_nothing():
    stream = opened(domain=A)
    request = "".join(f"<db:verify from='{B}' to='{A}' id='S{i}'>{'0' * 64}</db:verify>"
                      for i in range(500)).encode()

    def answer_rounds(rounds):
        for _ in range(rounds):
            assert stream.receive_data(request) == []
            assert stream.data_to_send().count(b"type='invalid'") == 500

    def held_after(rounds):
        answer_rounds(rounds)
        gc.collect()                # what is held, not garbage awaiting the collector
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        # both points hold the parser's last batch; only what grows with the count differs
        after_2k = held_after(4)
        after_10k = held_after(16)                     # 8,000 more requests answered
    finally:
        tracemalloc.stop()
    # under 8 bytes a request: smaller than any object a request could leave behind
    assert after_10k - after_2k < 64 * 1024


def test_the_sasl_attempt_limit_is_the_parameter():
    stream = opened(max_auth_attempts=1)
    events = stream.receive_data(b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    ended = next(e for e in events if isinstance(e, StreamEnded))
    assert ended.error.condition is Cond.POLICY_VIOLATION


# -- the federation's connection gate (fake time) ------------------------------------------------

def test_connection_attempts_follow_the_rate_with_bursts_of_twice_it():
    gate = ConnectGate(rate=5, retry_delay=30)
    started = sum(gate.may_start(100.0) for _ in range(1000))
    assert started == 10
    assert not gate.may_start(100.1)
    assert sum(gate.may_start(101.0) for _ in range(100)) == 5


def test_waiting_sessions_go_first_in_their_order():
    gate = ConnectGate(rate=1, retry_delay=30)
    assert gate.may_start(0.0) and gate.may_start(0.0)
    first, gone, second = (SimpleNamespace(closed=c) for c in (False, False, False))
    gate.waiting.extend([first, gone, second])
    assert not gate.may_start(5.0)                     # tokens are theirs
    gone.closed = True
    assert gate.next_turns(6.0) == [first, second]
    assert not gate.waiting


def test_a_failed_domain_rests_for_the_retry_delay_and_the_memory_is_bounded():
    gate = ConnectGate(rate=5, retry_delay=30)
    gate.failed("down.example", 10.0)
    assert gate.resting("down.example", 39.9)
    assert not gate.resting("down.example", 40.0)
    for i in range(ConnectGate.MAX_RESTING + 500):
        gate.failed(f"d{i}.example", 50.0)
    assert len(gate._failed) == ConnectGate.MAX_RESTING
    assert not gate.resting("d0.example", 50.0) and gate.resting("d10499.example", 50.0)


# -- the resolver (item 8; DNS queries bounded) --------------------------------------------------

@pytest.fixture
def dns_server():
    many = [f"0 1 5269 t{i}.many.example." for i in range(40)]
    server = FakeDNS({("_xmpp-server._tcp.many.example", "SRV"): many,
                      ("nosrv.example", "A"): ["127.0.0.9"]})
    yield server
    server.close()


def resolver(dns_server):
    return Resolver({}, (HostPort("127.0.0.1", dns_server.port),))


@pytest.mark.parametrize("domain, reason", [
    ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".example",
     "A DNS name is > 255 octets long"),
    ("x" * 64 + ".example", "A DNS label is > 63 octets long"),
    ("bad\u2028name.example", "IDNA"),
])
def test_a_domain_that_cannot_be_a_dns_name_is_refused_before_any_query(dns_server, domain,
                                                                         reason):
    with pytest.raises(NotADNSName, match="is not a DNS name: .*" + reason):
        asyncio.run(resolver(dns_server).targets(domain))
    assert dns_server.queries == []


def test_a_domain_too_long_for_the_srv_prefix_is_tried_on_5269():
    domain = ".".join(["a" * 60] * 4)                  # 244 octets: + "_xmpp-server._tcp" > 255
    targets = asyncio.run(Resolver({}, (HostPort("127.0.0.1", 9),)).targets(domain))
    assert targets == [Target(domain, 5269, "A/AAAA")]


def test_srv_targets_are_capped(dns_server):
    targets = asyncio.run(resolver(dns_server).targets("many.example"))
    assert len(targets) == MAX_TARGETS


def test_failed_lookups_are_remembered_whatever_the_ttl(dns_server):
    async def twice():
        r = resolver(dns_server)
        for _ in range(2):
            targets = await r.targets("nx.example")
            assert await r.addresses(targets[0]) == []
    asyncio.run(twice())
    assert sorted(dns_server.queries) == [("_xmpp-server._tcp.nx.example.", "SRV"),
                                          ("nx.example.", "A"), ("nx.example.", "AAAA")]


def test_the_negative_cache_is_bounded_and_forgets():
    cache = NegativeCache(ttl=30, size=100)
    for i in range(250):
        cache.add((f"n{i}.", "A"), now=float(i))
    assert len(cache) == 100
    assert cache._live(("n249.", "A"), 260.0) and not cache._live(("n249.", "A"), 280.0)
    assert not cache._live(("n0.", "A"), 1.0)
