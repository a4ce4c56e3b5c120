"""Bad input and bad luck on the federation (RFC 6120 §4.9, §8.3.3.13-14; XEP-0220
§2.4): malformed XML, an oversized stanza, a domain that cannot be reached, a
stream claiming stanzas from a domain it did not authenticate, a flood of
connections that never authenticate, unreachable and silent peers, idle
streams. Each time the established federation keeps working."""

from __future__ import annotations

import asyncio
import os
import re
import socket

from fedlive import federated, start_all, stop_all
from live import Client, free_port, next_item
from support import eventually
from iim.xmpp.dialback import dialback_key

A, B = "a.example", "b.example"
HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
          "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
          "version='1.0' to='{to}'{frm}>")
SECRET = "Dialback-Secret-For-A"


class RawPeer:
    """A hand-driven TCP connection to a server's s2s port."""

    def __init__(self, reader, writer):
        self.reader, self.writer, self.text = reader, writer, ""

    @classmethod
    async def open(cls, server, to=B, frm=None):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        peer = cls(reader, writer)
        peer.send(HEADER.format(to=to, frm=f" from='{frm}'" if frm else ""))
        await peer.until("</stream:features>")
        return peer

    def send(self, text: str) -> None:
        self.writer.write(text.encode())

    async def until(self, needle: str, timeout: float = 15) -> str:
        async def read():
            while needle not in self.text:
                data = await self.reader.read(65536)
                if not data:
                    break
                self.text += data.decode("utf-8", "replace")
        await asyncio.wait_for(read(), timeout)
        return self.text

    @property
    def stream_id(self) -> str:
        return re.search(r"<stream:stream[^>]* id='([^']+)'", self.text).group(1)

    def close(self):
        self.writer.close()


def pair(tmp_path, ca, a_extra="", b_extra="", more_hosts=""):
    found = federated(tmp_path, ca, {A: {"host": "127.0.0.1", "extra": a_extra},
                                     B: {"host": "127.0.0.2", "extra": b_extra}},
                      more_hosts=more_hosts)
    return found


async def online(server, user):
    client = Client(f"{user}@{server.domain}", server.users[user], server.ca_file)
    return await client.online(server.port, host=server.host)


async def chat_message(client, timeout=20):
    """The next chat message (bounced errors, which slixmpp also reports as messages, skipped)."""
    while True:
        message = await next_item(client.received, timeout)
        if message["type"] != "error":
            return message


async def exchange(alice, bob, text):
    alice.send_message(mto=f"bob@{B}", mbody=text, mtype="chat")
    got = await chat_message(bob)
    assert got["body"] == text
    bob.send_message(mto=f"alice@{A}", mbody=text + " (back)", mtype="chat")
    assert (await chat_message(alice))["body"] == text + " (back)"


def run(found, scenario):
    start_all(found)
    try:
        asyncio.run(scenario(found))
    finally:
        stop_all(found)


def test_malformed_xml_and_an_oversized_stanza_end_only_their_own_stream(tmp_path, ca):
    async def scenario(found):
        alice, bob = await online(found[A], "alice"), await online(found[B], "bob")
        await exchange(alice, bob, "before")
        broken = await RawPeer.open(found[B], frm="c.example")
        broken.send("<message><body>unclosed</message>")
        assert "<not-well-formed" in await broken.until("</stream:stream>")
        huge = await RawPeer.open(found[B], frm="c.example")
        huge.send("<message to='bob@b.example'><body>" + "x" * 400_000 + "</body></message>")
        assert "<policy-violation" in await huge.until("</stream:stream>")
        await exchange(alice, bob, "after")
        for raw in (broken, huge):
            raw.close()
        await alice.offline()
        await bob.offline()

    run(pair(tmp_path, ca), scenario)


def test_a_key_from_a_domain_we_cannot_reach_gets_a_dialback_error(tmp_path, ca):
    closed = free_port()
    found = pair(tmp_path, ca, more_hosts=f"unreachable.example=127.0.0.1:{closed}")

    async def scenario(found):
        raw = await RawPeer.open(found[B], frm="unreachable.example")
        raw.send(f"<db:result from='unreachable.example' to='{B}'>0123abcd</db:result>")
        text = await raw.until("type='error'")
        assert "<remote-server-not-found" in text
        raw.send(f"<message from='x@unreachable.example' to='bob@{B}'><body>hi</body></message>")
        assert "<not-authorized" in await raw.until("</stream:stream>")
        raw.close()

    run(found, scenario)
    assert "s2s out unreachable.example: cannot connect" in found[B].log()


def test_stanzas_from_a_domain_the_stream_did_not_authenticate_get_invalid_from(tmp_path, ca):
    secret_file = tmp_path / "dialback-secret.conf"
    (tmp_path / A).mkdir(parents=True)
    secret_file.write_text(f"Internal (Software) Token:{SECRET}\n")
    os.chmod(secret_file, 0o600)
    found = pair(tmp_path, ca, a_extra=f'iim_server.dialback_secretfile = "{secret_file}"\n')

    async def scenario(found):
        bob = await online(found[B], "bob")
        raw = await RawPeer.open(found[B], frm=A)      # pretends to be a.example's server
        key = dialback_key(SECRET.encode(), B, A, raw.stream_id)
        raw.send(f"<db:result from='{A}' to='{B}'>{key}</db:result>")
        await raw.until("type='valid'")              # a.example itself vouched for the key
        raw.send(f"<message from='alice@{A}/raw' to='bob@{B}' type='chat'><body>via raw"
                 f"</body></message>")
        assert (await next_item(bob.received, 20))["body"] == "via raw"
        raw.send(f"<message from='mallory@c.example' to='bob@{B}'><body>spoof</body></message>")
        assert "<invalid-from" in await raw.until("</stream:stream>")
        await asyncio.sleep(0.5)
        assert bob.received.empty()
        raw.close()
        await bob.offline()

    run(found, scenario)
    assert f"s2s in {A}: {A} authenticated with dialback (no TLS)" in found[B].log()
    assert SECRET not in found[A].log() + found[B].log()


def test_a_flood_of_connections_that_never_authenticate_is_bounded(tmp_path, ca):
    limits = ('iim_server.max_unauthenticated = "40"\niim_server.negotiation_timeout = "4"\n'
              # the flood comes from 127.0.0.1 like the other server: the global limit is
              # the one tested here (tests/test_per_source_limits.py tests the per-source ones)
              'iim_server.max_unauthenticated_per_source = "100000"\n'
              'iim_server.accept_rate_per_source = "100000"\n')
    found = pair(tmp_path, ca, b_extra=limits)

    async def scenario(found):
        alice, bob = await online(found[A], "alice"), await online(found[B], "bob")
        await exchange(alice, bob, "before the flood")
        flood = []
        for _ in range(120):
            reader, writer = await asyncio.open_connection(found[B].host, found[B].port)
            writer.write(HEADER.format(to=B, frm=" from='flood.example'").encode())
            flood.append((reader, writer))
        await exchange(alice, bob, "during the flood")
        answers = await asyncio.gather(*(asyncio.wait_for(r.read(), 15) for r, _ in flood))
        refused = sum(b"<resource-constraint" in a for a in answers)
        timed_out = sum(b"<connection-timeout" in a for a in answers)
        assert refused >= 70 and refused + timed_out == len(flood)
        await exchange(alice, bob, "after the flood")
        for _, writer in flood:
            writer.close()
        await alice.offline()
        await bob.offline()

    run(found, scenario)


def test_unreachable_and_silent_peers_bounce_not_found_and_timeout(tmp_path, ca):
    silent = socket.create_server(("127.0.0.1", 0))        # accepts, never answers
    closed = free_port()
    hosts = f"closed.example=127.0.0.1:{closed}, silent.example=127.0.0.1:{silent.getsockname()[1]}"
    # the silent peer's deadline; it bounds alice's own login on A as well: 4 s,
    # not less, so that a stalled machine cannot time her out
    found = pair(tmp_path, ca, a_extra='iim_server.negotiation_timeout = "4"\n',
                 more_hosts=hosts)

    async def scenario(found):
        alice = await online(found[A], "alice")
        alice.send_message(mto="x@closed.example", mbody="hello?", mtype="chat")
        error = await next_item(alice.errors, 20)
        assert (error["from"], error["error"]["condition"]) == \
            ("x@closed.example", "remote-server-not-found")
        alice.send_message(mto="x@silent.example", mbody="hello?", mtype="chat")
        error = await next_item(alice.errors, 20)
        assert error["error"]["condition"] == "remote-server-timeout"
        await alice.offline()

    try:
        run(found, scenario)
    finally:
        silent.close()


def test_an_idle_stream_closes_and_is_opened_again_on_demand(tmp_path, ca):
    idle = 'iim_server.s2s_idle_timeout = "1"\n'
    found = pair(tmp_path, ca, a_extra=idle, b_extra=idle)

    async def scenario(found):
        alice, bob = await online(found[A], "alice"), await online(found[B], "bob")
        await exchange(alice, bob, "first")
        # The idle close (after 1 s) is waited for; the deadline only bounds a failure.
        await eventually(lambda: f"s2s out {B}: idle for" in found[A].log(), "the idle close")
        await exchange(alice, bob, "second")
        await alice.offline()
        await bob.offline()

    run(found, scenario)
    assert found[A].log().count(f"s2s out {B}: connected to") == 2


async def sink_server(port: int):
    """A peer that authenticates anyone (answers every dialback key 'valid',
    as a careless server might) and then never reads again."""
    async def handle(reader, writer):
        await reader.readuntil(b"<stream:stream")           # our stream header ...
        await reader.readuntil(b">")                        # ... to its end
        writer.write(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber."
                     b"org/streams' xmlns:db='jabber:server:dialback' id='sink1' version='1.0' "
                     b"from='sink.example'><stream:features><dialback xmlns='urn:xmpp:features:"
                     b"dialback'/></stream:features>")
        await reader.readuntil(b"</db:result>")
        writer.write(b"<db:result from='sink.example' to='a.example' type='valid'/>")
        await asyncio.sleep(3600)                           # never reads again
    return await asyncio.start_server(handle, "127.0.0.1", port)


def test_a_peer_that_never_reads_holds_a_bounded_queue_and_the_rest_carries_on(tmp_path, ca):
    port = free_port()
    found = pair(tmp_path, ca, a_extra='iim_server.s2s_queue_limit = "100"\n',
                 more_hosts=f"sink.example=127.0.0.1:{port}")

    async def scenario(found):
        sink = await sink_server(port)
        alice, bob = await online(found[A], "alice"), await online(found[B], "bob")
        body = "x" * 2000
        for _ in range(600):                                 # 1.2 MB for a peer that reads none
            alice.send_message(mto="nobody@sink.example", mbody=body, mtype="chat")
        error = await next_item(alice.errors, 30)
        assert error["error"]["condition"] == "resource-constraint"
        await exchange(alice, bob, "still here")
        sink.close()
        await alice.offline()
        await bob.offline()

    run(found, scenario)
    assert "s2s out sink.example: authenticated with dialback" in found[A].log()
