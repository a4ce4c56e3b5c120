"""Roster limits and the in-memory roster (issue 11.6; RFC 6121 §2.3.3, §4.2, §4.3).

In memory, over real storage (``test_router.World``). A roster holds at most
``max_roster_items`` items and an item's name and groups at most
``max_roster_item_size`` bytes; an online user's roster is read from storage
once, so presence broadcast and probes cost no storage reads, and a
broadcast reaches the subscribers only, however long the roster.
"""

from __future__ import annotations

import pytest

from iim.conf.limits import ServerLimits
from iim.server.router import Router
from iim.server.storage import RosterItem, Subscription
from iim.xmpp.jid import JID
from iim.xmpp.xml import to_bytes
from test_router import DOMAIN, NOW, World, condition, is_error, make_storage  # noqa: F401

R = "{jabber:iq:roster}"
C = "{jabber:client}"
LIMITS = ServerLimits(max_roster_items=10, max_roster_item_size=512)


class CountingStorage:
    """The real storage, counting every call made to it, by method name."""

    def __init__(self, storage) -> None:
        self._storage = storage
        self.calls: list[str] = []

    def __getattr__(self, name):
        attribute = getattr(self._storage, name)
        if not callable(attribute):
            return attribute

        def counted(*args, **kwargs):
            self.calls.append(name)
            return attribute(*args, **kwargs)
        return counted


@pytest.fixture
def counted(tmp_path):
    storage = make_storage(tmp_path)
    yield CountingStorage(storage)
    storage.close()


@pytest.fixture
def world(counted):
    world = World(counted)
    world.router = Router(DOMAIN, counted, clock=lambda: NOW, limits=LIMITS)
    return world


def roster_set(jid: str, name: str | None = None, groups=(), id: str = "set1") -> str:
    name_attr = "" if name is None else f" name='{name}'"
    group_xml = "".join(f"<group>{g}</group>" for g in groups)
    return (f"<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'>"
            f"<item jid='{jid}'{name_attr}>{group_xml}</item></query></iq>")


def reply_to(session, id: str):
    return next(s for s in session.take() if s.get("id") == id)


# ---------------------------------------------------------------------------
# Caps (RFC 6121 §2.3.3)


def test_a_roster_set_beyond_max_roster_items_gets_resource_constraint(world):
    juliet = world.login("juliet@example.com/balcony")
    for n in range(10):
        juliet.send(roster_set(f"friend{n}@example.net", id=f"s{n}"))
        assert reply_to(juliet, f"s{n}").get("type") == "result"

    juliet.send(roster_set("one-too-many@example.net", id="s10"))

    reply = reply_to(juliet, "s10")
    assert is_error(reply, "resource-constraint")
    assert reply.find(C + "error").get("type") == "wait"          # RFC 6120 §8.3.3.18
    assert len(world.storage.roster("juliet")) == 10              # nothing stored
    juliet.send(roster_set("friend3@example.net", name="Three", id="s11"))
    assert reply_to(juliet, "s11").get("type") == "result"        # changing one still works


def test_a_subscription_request_that_would_add_an_eleventh_item_is_refused(world):
    juliet = world.login("juliet@example.com/balcony")
    for n in range(10):
        juliet.send(roster_set(f"friend{n}@example.net", id=f"s{n}"))
    juliet.take()

    juliet.send("<presence to='romeo@example.com' type='subscribe' id='sub1'/>")

    assert is_error(reply_to(juliet, "sub1"), "resource-constraint")
    assert "romeo@example.com" not in [i.jid for i in world.storage.roster("juliet")]


def test_a_roster_that_could_not_be_fetched_in_one_stanza_is_refused_growth(counted):
    """Each item within max_roster_item_size, but together more than one roster
    result may carry under the server's maxstanzasize: the item that would
    cross it is refused, and the roster juliet has still comes back whole."""
    world = World(counted)
    world.router = Router(DOMAIN, counted, clock=lambda: NOW, max_stanza_bytes=12000,
                          limits=ServerLimits(max_roster_items=100, max_roster_item_size=4096))
    juliet = world.login("juliet@example.com/balcony")
    refused = None
    for n in range(20):                                  # 20 x ~2.1 KB > 12000 - 1024
        juliet.send(roster_set(f"friend{n}@example.net", name="n" * 1000,
                               groups=["g" * 1000], id=f"s{n}"))
        reply = reply_to(juliet, f"s{n}")
        if reply.get("type") == "error":
            refused = n
            break
    assert refused is not None and refused >= 4, "the roster grew past the stanza limit"
    assert is_error(reply, "resource-constraint")
    assert "iim_server.maxstanzasize" in reply.find(C + "error").findtext(
        "{urn:ietf:params:xml:ns:xmpp-stanzas}text")
    juliet.send("<iq type='get' id='all'><query xmlns='jabber:iq:roster'/></iq>")
    result = reply_to(juliet, "all")
    assert len(to_bytes(result)) <= 12000
    assert len(result[0]) == refused                     # every item stored before it


def test_an_item_over_max_roster_item_size_gets_not_acceptable(world):
    juliet = world.login("juliet@example.com/balcony")
    groups = [f"group-{n:02d}-" + "g" * 20 for n in range(20)]    # 20 x 38 bytes as written

    juliet.send(roster_set("romeo@example.com", name="Romeo", groups=groups, id="big"))

    reply = reply_to(juliet, "big")
    assert is_error(reply, "not-acceptable")                      # §2.3.3: over a server limit
    assert world.storage.roster("juliet") == []
    juliet.send(roster_set("romeo@example.com", name="Romeo", groups=groups[:5], id="ok"))
    assert reply_to(juliet, "ok").get("type") == "result"


def test_a_long_name_alone_can_be_too_big(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(roster_set("romeo@example.com", name="R" * 600, id="big"))
    assert is_error(reply_to(juliet, "big"), "not-acceptable")


# ---------------------------------------------------------------------------
# In memory: presence reads no storage after login (RFC 6121 §4.2, §4.3, §4.4)


def befriend(world, a: str, b: str) -> None:
    world.subscribed(a, b, Subscription.BOTH)


def test_presence_broadcast_and_probes_read_storage_zero_times_after_login(world, counted):
    befriend(world, "juliet", "romeo")
    befriend(world, "juliet", "nurse")
    romeo = world.login("romeo@example.com/orchard")
    nurse = world.login("nurse@example.com/chamber")
    juliet = world.login("juliet@example.com/balcony")
    counted.calls.clear()

    for show_ in ("away", "dnd", "chat", "xa"):             # broadcasts (§4.4)
        juliet.send(f"<presence><show>{show_}</show></presence>")
        romeo.send(f"<presence><show>{show_}</show></presence>")
    juliet.send("<presence type='unavailable'/>")           # and unavailable (§4.5)
    updates = list(counted.calls)
    second = world.connect("juliet@example.com/car")
    counted.calls.clear()
    second.send("<presence/>")      # initial (§4.2): broadcast, probes (§4.3), offline delivery

    assert updates == []
    assert [c for c in counted.calls if c.startswith("roster")] == []
    assert [s.findtext(C + "show") for s in nurse.take() if s.tag == C + "presence"
            and s.get("from") == "juliet@example.com/balcony"] == [
        "away", "dnd", "chat", "xa", None]
    assert any(s.get("from") == "romeo@example.com/orchard" for s in second.take())  # probe


def test_the_broadcast_touches_the_subscribers_only(world, counted):
    for n in range(300):                            # a long roster, few subscribers
        world.storage.set_roster_item("juliet", RosterItem(f"fan{n:03d}@example.net"))
    befriend(world, "juliet", "romeo")
    world.subscribed("juliet", "nurse", Subscription.FROM)
    world.subscribed("juliet", "benvolio", Subscription.TO)    # juliet sees him, not he her
    juliet = world.login("juliet@example.com/balcony")
    touched, walked = [], []
    deliver_presence = world.router.presence.deliver
    world.router.presence.deliver = lambda to, stanza: (touched.append(str(to)),
                                                        deliver_presence(to, stanza))
    items = world.router.roster.items
    world.router.roster.items = lambda user: walked.append(user) or items(user)

    juliet.send("<presence><show>away</show></presence>")

    assert sorted(touched) == ["nurse@example.com", "romeo@example.com"]
    assert walked == []                             # no step per roster item


def test_the_roster_in_memory_follows_changes_and_goes_with_the_last_resource(world, counted):
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")
    juliet.send("<presence to='romeo@example.com' type='subscribe'/>")
    romeo.send("<presence to='juliet@example.com' type='subscribed'/>")
    world.quiet()
    counted.calls.clear()

    romeo.send("<presence><show>chat</show></presence>")    # romeo's roster now says 'from'

    assert [s.findtext(C + "show") for s in juliet.take()] == ["chat"]
    assert not [c for c in counted.calls if c.startswith("roster")]
    held = world.router.roster._held
    assert JID.parse("juliet@example.com") in held
    juliet.send("<presence type='unavailable'/>")
    world.router.session_ended(juliet)
    assert JID.parse("juliet@example.com") not in held            # freed at logout
    assert JID.parse("romeo@example.com") in held
