"""Offline storage under abuse (issue 11, item 4; item 8): quotas, one request
per contact, batched delivery, the server's own delay stamp.

In memory, as test_router: ``FakeSession``s over a real SQLite file. The
batched delivery runs on a real event loop (``asyncio.run``), where the first
batch goes at once and each next one after the loop has had its turn.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from xml.etree.ElementTree import fromstring

from iim.conf.limits import ServerLimits
from iim.server.offline import parse_stored
from iim.server.router import Router
from iim.xmpp.ns import DELAY_NS, q

from test_router import (  # noqa: F401 - fixtures
    C, DOMAIN, NOW, FakeSession, World, chat, is_error, make_storage, storage, world,
)

DELAY = q(DELAY_NS, "delay")


def world_with(tmp_path, **limits) -> World:
    limits = replace(ServerLimits(), **limits)
    world = World(make_storage(tmp_path, limits=limits))
    world.router = Router(DOMAIN, world.storage, clock=lambda: NOW, limits=limits)
    return world


def bodies(stanzas) -> list[str]:
    return [s.findtext(C + "body") for s in stanzas if s.tag == C + "message"]


# ---------------------------------------------------------------------------
# Quotas: refused with <resource-constraint/>, never silently


def test_a_sender_over_its_share_is_refused_while_others_are_still_stored(tmp_path):
    world = world_with(tmp_path, offline_quota_per_sender=1000)
    nurse, juliet = world.login("nurse@example.com/door"), world.login("juliet@example.com/b")
    for n in range(8):
        nurse.send(chat("romeo@example.com", body="x" * 200, id=f"n{n}"))
    refused = nurse.take()
    assert refused, "the nurse exceeded her share but heard nothing"
    for reply in refused:
        assert is_error(reply, "resource-constraint")
        assert reply.find(C + "error").get("type") == "wait"        # RFC 6120 §8.3.3.18
    juliet.send(chat("romeo@example.com", body="still room for me", id="j1"))
    juliet.nothing()
    stored = len(world.storage.offline_messages("romeo"))
    assert stored == 8 - len(refused) + 1


# ---------------------------------------------------------------------------
# XEP-0203: only the server stamps its own delay


def test_a_delay_claiming_to_be_from_the_server_is_replaced_by_the_servers_own(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<message to='romeo@example.com' type='chat' id='f'><body>forged</body>"
                f"<delay xmlns='{DELAY_NS}' from='example.com' stamp='2001-01-01T00:00:00Z'/>"
                "<x xmlns='jabber:x:delay' from='example.com' stamp='20010101T00:00:00'/>"
                f"<delay xmlns='{DELAY_NS}' from='juliet@example.com/balcony' "
                "stamp='2026-11-26T20:00:00Z'/></message>")
    (_, data), = world.storage.offline_messages("romeo")
    stored = parse_stored(data)
    assert stored.find("{jabber:x:delay}x") is None
    delays = [(d.get("from"), d.get("stamp")) for d in stored.findall(DELAY)]
    assert delays == [("juliet@example.com/balcony", "2026-11-26T20:00:00Z"),   # hers is hers
                      ("example.com", "2026-11-26T20:05:21.123Z")]


# ---------------------------------------------------------------------------
# Subscription requests: one per contact, apart from the messages


def remote_subscribe(world: World, sender: str, to: str = "juliet@example.com") -> None:
    world.router.stanza_from_remote(fromstring(
        f"<presence xmlns='jabber:client' from='{sender}' to='{to}' type='subscribe'/>"))


def test_a_thousand_requests_from_one_contact_leave_one(world):
    for _ in range(1000):
        remote_subscribe(world, "mercutio@verona.example/a")
    assert [c for c, _ in world.storage.subscription_requests("juliet")] == [
        "mercutio@verona.example"]
    juliet = world.login("juliet@example.com/balcony", keep=True)
    assert [(p.get("type"), p.get("from")) for p in juliet.take() if p.tag == C + "presence"
            and p.get("type") == "subscribe"] == [("subscribe", "mercutio@verona.example")]


def test_requests_from_many_contacts_do_not_use_the_message_quota(tmp_path):
    world = world_with(tmp_path, offline_max_messages=20)
    for n in range(20):
        remote_subscribe(world, f"c{n}@verona.example")
    romeo = world.login("romeo@example.com/orchard")
    romeo.send(chat("juliet@example.com", body="still delivered later"))
    romeo.nothing()
    assert len(world.storage.offline_messages("juliet")) == 1
    assert len(world.storage.subscription_requests("juliet")) == 20


# ---------------------------------------------------------------------------
# Batched delivery (XEP-0160 §2), nothing lost on the way


def test_stored_messages_arrive_in_order_in_batches(tmp_path):
    world = world_with(tmp_path, offline_batch=3)
    juliet = world.login("juliet@example.com/balcony")
    for n in range(10):
        juliet.send(chat("romeo@example.com", body=f"line {n}", id=f"m{n}"))

    async def romeo_logs_in():
        romeo = world.login("romeo@example.com/orchard", keep=True)
        first = bodies(romeo.take())
        for _ in range(20):
            await asyncio.sleep(0)
        return first, bodies(romeo.take())

    first, rest = asyncio.run(romeo_logs_in())
    assert first == [f"line {n}" for n in range(3)]              # one batch at once
    assert first + rest == [f"line {n}" for n in range(10)]      # the others, in order, later
    assert world.storage.offline_messages("romeo") == []


def test_messages_not_yet_handed_over_stay_stored_when_the_session_ends(tmp_path):
    world = world_with(tmp_path, offline_batch=3)
    juliet = world.login("juliet@example.com/balcony")
    for n in range(10):
        juliet.send(chat("romeo@example.com", body=f"line {n}", id=f"m{n}"))

    class Breaks(FakeSession):
        """The network goes away while line 4 (in the second batch) is handed over."""

        def deliver(self, stanza):
            if stanza.findtext(C + "body") == "line 4":
                self.closed = True
            if self.closed:
                assert self.router.keep_for_later(self, stanza)
                return
            super().deliver(stanza)

    async def romeo_logs_in():
        romeo = Breaks(world.router, "romeo@example.com/orchard")
        world.router.session_bound(romeo)
        romeo.send("<presence/>")
        for _ in range(20):
            await asyncio.sleep(0)
        return romeo

    romeo = asyncio.run(romeo_logs_in())
    assert bodies(romeo.received) == [f"line {n}" for n in range(4)]
    left = [parse_stored(data) for _, data in world.storage.offline_messages("romeo")]
    assert bodies(left) == [f"line {n}" for n in range(4, 10)]
    assert all(len(m.findall(DELAY)) == 1 for m in left)             # stored once, one stamp
