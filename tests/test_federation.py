"""Federation end to end: two iim servers on loopback, keystores made by the real
keytool from one test CA, slixmpp users on each side (RFC 6120 §13, RFC 6121,
XEP-0178, XEP-0220)."""

from __future__ import annotations

import asyncio

import pytest

from fedlive import federated, start_all, stop_all
from live import Client, next_item

A, B = "a.example", "b.example"


@pytest.fixture
def pair(tmp_path, ca):
    servers = federated(tmp_path, ca, {A: {"host": "127.0.0.1"}, B: {"host": "127.0.0.2"}})
    start_all(servers)
    yield servers
    stop_all(servers)


def client(server, user):
    return Client(f"{user}@{server.domain}", server.users[user], server.ca_file)


async def online(server, user):
    return await client(server, user).online(server.port, host=server.host)


async def chat_and_subscribe(servers):
    alice = await online(servers[A], "alice")
    bob = await online(servers[B], "bob")
    try:
        alice.send_presence(pto=f"bob@{B}", ptype="subscribe")
        request = await next_item(bob.subscribe_requests, 20)
        assert request["from"].bare == f"alice@{A}"
        bob.send_presence(pto=f"alice@{A}", ptype="subscribed")
        seen = await next_item(alice.presences, 20)
        while seen["from"].bare != f"bob@{B}":
            seen = await next_item(alice.presences, 20)
        alice.send_message(mto=f"bob@{B}", mbody="hello across the federation", mtype="chat")
        got = await next_item(bob.received, 20)
        assert (got["from"].bare, got["body"]) == (f"alice@{A}", "hello across the federation")
        bob.send_message(mto=got["from"], mbody="hello back", mtype="chat")
        back = await next_item(alice.received, 20)
        assert (back["from"].bare, back["body"]) == (f"bob@{B}", "hello back")
        # alice comes back: her server probes b.example (RFC 6121 §4.3), bob's answers
        await alice.offline()
        alice = await online(servers[A], "alice")
        seen = await next_item(alice.presences, 20)
        while seen["from"].bare != f"bob@{B}":
            seen = await next_item(alice.presences, 20)
        assert seen["type"] == "available"
    finally:
        await alice.offline()
        await bob.offline()


def test_users_on_two_servers_subscribe_and_chat_over_tls_with_sasl_external(pair):
    asyncio.run(chat_and_subscribe(pair))
    log_a, log_b = pair[A].log(), pair[B].log()
    assert f"s2s out {B}: TLS established TLSv1.3" in log_a
    assert f"s2s out {B}: authenticated with SASL EXTERNAL (TLSv1.3)" in log_a
    assert f"s2s in {A}: {A} authenticated with SASL EXTERNAL (TLSv1.3)" in log_b
    assert f"s2s in {B}: {B} authenticated with SASL EXTERNAL (TLSv1.3)" in log_a


def test_a_domain_is_found_through_its_srv_record(tmp_path, ca):
    from dnsfake import FakeDNS
    servers = federated(tmp_path, ca, {A: {"host": "127.0.0.1"}, B: {"host": "127.0.0.2"}})
    dns = FakeDNS({(f"_xmpp-server._tcp.{B}", "SRV"): [f"0 5 {servers[B].port} xmpp.{B}."],
                   (f"xmpp.{B}", "A"): [servers[B].host]})
    with servers[A].conf.open("a") as conf:         # a.example finds b.example in DNS only
        conf.write(f'iim_server.s2s_hosts = ""\niim_server.s2s_nameservers = "127.0.0.1:{dns.port}"\n')
    start_all(servers)
    try:
        async def scenario():
            alice, bob = await online(servers[A], "alice"), await online(servers[B], "bob")
            alice.send_message(mto=f"bob@{B}", mbody="found you", mtype="chat")
            assert (await next_item(bob.received, 20))["body"] == "found you"
            await alice.offline()
            await bob.offline()
        asyncio.run(scenario())
    finally:
        stop_all(servers)
        dns.close()
    assert f"s2s out {B}: connected to xmpp.{B}:{servers[B].port} (SRV)" in servers[A].log()
