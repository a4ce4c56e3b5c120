"""Offline storage under abuse, on a real server (issue 11, item 4; item 8).

A real ``python -m iim.server`` and the project's own client core
(tests/rawclient.py), which shows every stanza as it arrived, errors and
delay stamps included. Timeouts are failure bounds only: nothing here
measures time (bench/offline_abuse.py does).
"""

from __future__ import annotations

import asyncio
import itertools
from xml.etree.ElementTree import Element, fromstring

from live import DOMAIN, LiveServer
from rawclient import RawClient

C = "{jabber:client}"
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
DELAY = "{urn:xmpp:delay}delay"
USERS = (("alice", "alice-pw-1"), ("bob", "bob-pw-2"), ("carol", "carol-pw-3"),
         ("dave", "dave-pw-4"))
_ids = itertools.count()


def stanza(xml: str) -> Element:
    return fromstring(xml.replace("<message ", "<message xmlns='jabber:client' ", 1)
                      .replace("<presence", "<presence xmlns='jabber:client'", 1)
                      .replace("<iq ", "<iq xmlns='jabber:client' ", 1))


async def login(live: LiveServer, user: str, *, presence: bool = True) -> RawClient:
    client = await RawClient(f"{user}@{DOMAIN}", live.users[user], live.ca_file).connect(live.port)
    if presence:
        client.send(stanza("<presence/>"))
    return client


async def until(client: RawClient, predicate, timeout: float = 30) -> list[Element]:
    """Wait (bounded) until ``predicate(client.stanzas)``; return them."""
    async def check():
        while not predicate(client.stanzas):
            await asyncio.sleep(0.02)
    await asyncio.wait_for(check(), timeout)
    return client.stanzas


async def settled(client: RawClient) -> None:
    """A ping round trip: the server has handled everything sent before it."""
    ping_id = f"ping-{next(_ids)}"
    client.send(stanza(f"<iq type='get' id='{ping_id}' to='{DOMAIN}'>"
                       "<ping xmlns='urn:xmpp:ping'/></iq>"))
    await until(client, lambda got: any(s.get("id") == ping_id for s in got))


def messages(stanzas, sender: str | None = None) -> list[Element]:
    return [s for s in stanzas if s.tag == C + "message" and s.get("type") != "error"
            and (sender is None or s.get("from", "").startswith(sender))]


def chat(to: str, body: str, extra: str = "") -> Element:
    return stanza(f"<message to='{to}@{DOMAIN}' type='chat' id='m{next(_ids)}'>"
                  f"<body>{body}</body>{extra}</message>")


def run(live: LiveServer, scenario) -> None:
    live.add_users()
    live.start()
    try:
        asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        assert live.stop() == 0


def test_a_sender_over_its_share_bounces_while_others_still_reach_the_offline_user(
        tmp_path, ca):
    """alice may keep 16 KiB in bob's store; her next messages come back as
    <resource-constraint/> (type wait), carol's are still stored, and bob
    gets everything stored, in order, each with the server's own delay and
    none of the one carol forged in the server's name (XEP-0203)."""
    live = LiveServer(tmp_path / "srv", ca, users=USERS,
                      extra='iim_server.offline_quota_per_sender = "16K"\n')

    async def scenario():
        alice, carol = await login(live, "alice"), await login(live, "carol")
        for n in range(8):
            alice.send(chat("bob", f"alice {n} " + "a" * 4000))
        await settled(alice)
        errors = [s for s in alice.stanzas if s.get("type") == "error"]
        assert 0 < len(errors) < 8
        for error in errors:
            element = error.find(C + "error")
            assert element.get("type") == "wait"
            assert element.find(STANZAS + "resource-constraint") is not None
        kept = [f"alice {n} " + "a" * 4000 for n in range(8 - len(errors))]
        forged = (f"<delay xmlns='urn:xmpp:delay' from='{DOMAIN}' stamp='2001-01-01T00:00:00Z'/>"
                  f"<x xmlns='jabber:x:delay' from='{DOMAIN}' stamp='20010101T00:00:00'/>")
        for n in range(3):
            carol.send(chat("bob", f"carol {n}", forged))
        await settled(carol)
        assert [s for s in carol.stanzas if s.get("type") == "error"] == []

        bob = await login(live, "bob")
        got = messages(await until(bob, lambda got: len(messages(got)) >= len(kept) + 3))
        assert [m.findtext(C + "body") for m in got] == kept + [f"carol {n}" for n in range(3)]
        for message in got:
            delays = message.findall(DELAY)
            assert [d.get("from") for d in delays] == [DOMAIN]
            assert not delays[0].get("stamp").startswith("2001")
            assert message.find("{jabber:x:delay}x") is None
        for client in (alice, carol, bob):
            await client.close()

    run(live, scenario)


def test_a_login_with_a_full_store_does_not_hold_up_a_pair_chatting(tmp_path, ca):
    """While bob's 900 KiB of stored messages come in, carol and dave keep
    talking; each of their messages arrives (within a generous bound), and
    bob gets all of his, in order."""
    live = LiveServer(tmp_path / "srv", ca, users=USERS)

    async def scenario():
        alice = await login(live, "alice")
        for n in range(220):
            alice.send(chat("bob", f"stored {n} " + "s" * 4000))
        await settled(alice)
        assert [s for s in alice.stanzas if s.get("type") == "error"] == []
        carol, dave = await login(live, "carol"), await login(live, "dave")

        bob = await login(live, "bob")
        for n in range(40):
            carol.send(chat("dave", f"meanwhile {n}"))
            await until(dave, lambda got, n=n: len(messages(got, "carol")) > n, timeout=10)
        got = messages(await until(bob, lambda got: len(messages(got)) >= 220))
        assert [m.findtext(C + "body").split()[1] for m in got] == [str(n) for n in range(220)]
        for client in (alice, carol, dave, bob):
            await client.close()

    run(live, scenario)


def test_a_thousand_subscription_requests_from_one_contact_leave_one(tmp_path, ca):
    """RFC 6121 §3.1.3: the request is kept until bob answers, once."""
    live = LiveServer(tmp_path / "srv", ca, users=USERS)

    async def scenario():
        alice = await login(live, "alice")
        for _ in range(1000):
            alice.send(stanza(f"<presence to='bob@{DOMAIN}' type='subscribe'/>"))
        await settled(alice)
        bob = await login(live, "bob")
        await settled(bob)
        requests = [s for s in bob.stanzas
                    if s.tag == C + "presence" and s.get("type") == "subscribe"]
        assert [r.get("from") for r in requests] == [f"alice@{DOMAIN}"]
        await alice.close()
        await bob.close()

    run(live, scenario)
