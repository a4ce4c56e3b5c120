"""Where a remote domain listens (RFC 6120 §3.2, RFC 2782), asked of a real DNS
server on loopback (tests/dnsfake.py) through iim's resolver."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from dnsfake import FakeDNS
from iim.conf.values import HostPort
from iim.server.resolve import NoService, Resolver, Target, _srv_order


@pytest.fixture
def dns_server():
    server = FakeDNS({
        ("_xmpp-server._tcp.b.example", "SRV"): ["20 0 5270 backup.b.example.",
                                                 "10 0 5269 xmpp.b.example."],
        ("xmpp.b.example", "A"): ["127.0.0.2"],
        ("xmpp.b.example", "AAAA"): ["::1"],
        ("nosrv.example", "A"): ["127.0.0.9"],
        ("_xmpp-server._tcp.none.example", "SRV"): ["0 0 0 ."],
    })
    yield server
    server.close()


def resolver(dns_server, overrides=None):
    return Resolver(overrides or {}, (HostPort("127.0.0.1", dns_server.port),))


def test_srv_records_are_tried_by_priority_and_their_hosts_looked_up(dns_server):
    async def lookup():
        r = resolver(dns_server)
        targets = await r.targets("b.example")
        return targets, await r.addresses(targets[0])

    targets, addresses = asyncio.run(lookup())
    assert targets == [Target("xmpp.b.example", 5269, "SRV"),
                       Target("backup.b.example", 5270, "SRV")]
    assert addresses == ["127.0.0.2", "::1"]
    assert ("_xmpp-server._tcp.b.example.", "SRV") in dns_server.queries


def test_without_srv_the_domain_itself_on_5269(dns_server):
    async def lookup():
        r = resolver(dns_server)
        targets = await r.targets("nosrv.example")
        return targets, await r.addresses(targets[0])

    assert asyncio.run(lookup()) == ([Target("nosrv.example", 5269, "A/AAAA")], ["127.0.0.9"])


def test_a_lone_dot_target_means_no_xmpp_service(dns_server):
    with pytest.raises(NoService, match="none.example publishes no XMPP server service"):
        asyncio.run(resolver(dns_server).targets("none.example"))


def test_an_override_wins_over_dns(dns_server):
    fixed = Target("10.9.9.9", 5999, "iim_server.s2s_hosts")
    assert asyncio.run(resolver(dns_server, {"b.example": fixed}).targets("b.example")) == [fixed]
    assert dns_server.queries == []


def test_srv_weights_share_out_the_choices_within_one_priority():
    records = [((10, 90), 1, "heavy."), ((10, 10), 2, "light."), ((5, 0), 3, "first.")]
    firsts = Counter(_srv_order(records)[1][2] for _ in range(2000))
    assert all(_srv_order(records)[0][2] == "first." for _ in range(50))
    assert 0.82 < firsts["heavy."] / 2000 < 0.97
