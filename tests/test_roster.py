"""Rosters: get, set, remove, pushes, versions (RFC 6121 §2, XEP-0237), in memory."""

from __future__ import annotations

import pytest

from iim.server.presence import SubState
from iim.server.storage import RosterItem, Subscription
from iim.xmpp.jid import JID
from test_router import C, is_error, show, storage, world  # noqa: F401 - fixtures

R = "{jabber:iq:roster}"
JULIET, ROMEO = JID.parse("juliet@example.com"), JID.parse("romeo@example.com")


def get(ver: str | None = None, to: str | None = None, id: str = "get1") -> str:
    ver_attr = "" if ver is None else f" ver='{ver}'"
    to_attr = "" if to is None else f" to='{to}'"
    return f"<iq type='get' id='{id}'{to_attr}><query xmlns='jabber:iq:roster'{ver_attr}/></iq>"


def set_(items: str, id: str = "set1", to: str | None = None) -> str:
    to_attr = "" if to is None else f" to='{to}'"
    return f"<iq type='set' id='{id}'{to_attr}><query xmlns='jabber:iq:roster'>{items}</query></iq>"


def items_of(result):
    query = result.find(R + "query")
    return [(i.get("jid"), i.get("name"), i.get("subscription"), i.get("ask"),
             [g.text for g in i.findall(R + "group")]) for i in query.findall(R + "item")]


def split(received):
    """(roster pushes, other stanzas)."""
    is_push = [s.tag == C + "iq" and s.get("type") == "set" for s in received]
    return ([s for s, p in zip(received, is_push) if p],
            [s for s, p in zip(received, is_push) if not p])


# ---------------------------------------------------------------------------
# Get (§2.2)


def test_roster_get_returns_the_items_and_marks_the_resource_interested(world):
    world.storage.set_roster_item("juliet", RosterItem(
        "romeo@example.com", "Romeo", Subscription.BOTH, groups=("Friends",)))
    world.storage.set_roster_item("juliet", RosterItem(
        "nurse@example.com", None, Subscription.NONE, ask=True))
    juliet = world.connect("juliet@example.com/balcony")
    assert not juliet.interested

    juliet.send(get())

    result = juliet.only()
    assert (result.get("type"), result.get("id"), result.get("to")) == (
        "result", "get1", "juliet@example.com/balcony")
    assert result.get("from") is None                     # it had no 'to'
    assert result.find(R + "query").get("ver") is None    # the client did not ask for versions
    assert items_of(result) == [
        ("nurse@example.com", None, "none", "subscribe", []),
        ("romeo@example.com", "Romeo", "both", None, ["Friends"]),
    ]
    assert juliet.interested


def test_roster_get_addressed_to_the_own_bare_jid_works(world):
    juliet = world.connect("juliet@example.com/balcony")
    juliet.send(get(to="juliet@example.com"))
    result = juliet.only()
    assert result.get("type") == "result"
    assert result.get("from") == "juliet@example.com"


def test_roster_of_another_user_is_forbidden(world):
    juliet = world.connect("juliet@example.com/balcony")
    juliet.send(get(to="romeo@example.com"))
    assert is_error(juliet.only(), "forbidden")
    juliet.send(set_("<item jid='nurse@example.com'/>", to="romeo@example.com"))
    assert is_error(juliet.only(), "forbidden")
    assert world.storage.roster("romeo") == []


# ---------------------------------------------------------------------------
# Versions (§2.6, XEP-0237)


def test_versioned_get_gives_the_roster_with_ver_then_empty_when_current(world):
    juliet = world.connect("juliet@example.com/balcony")
    juliet.send(set_("<item jid='romeo@example.com'/>"))
    juliet.send(get(ver=""))                              # "I have nothing cached"
    result = juliet.take()[-1]
    version = result.find(R + "query").get("ver")
    assert version
    assert [i[0] for i in items_of(result)] == ["romeo@example.com"]

    juliet.send(get(ver=version, id="get2"))
    current = juliet.only()
    assert current.get("type") == "result" and len(current) == 0   # nothing to send

    juliet.send(set_("<item jid='nurse@example.com'/>"))
    pushes, _ = split(juliet.take())
    newer = pushes[0].find(R + "query").get("ver")
    assert newer != version

    juliet.send(get(ver=version, id="get3"))              # stale cache: the full roster again
    result = juliet.only()
    assert result.find(R + "query").get("ver") == newer
    assert len(items_of(result)) == 2


# ---------------------------------------------------------------------------
# Set and pushes (§2.3, §2.1.6)


def test_roster_set_is_pushed_to_every_interested_resource_then_answered(world):
    balcony = world.connect("juliet@example.com/balcony")
    chamber = world.connect("juliet@example.com/chamber")
    phone = world.connect("juliet@example.com/phone")      # never asked for the roster
    balcony.send(get())
    chamber.send(get())
    world.quiet()

    balcony.send(set_("<item jid='nurse@example.com' name='Nurse'><group>Servants</group>"
                      "</item>", id="add1"))

    pushes, replies = split(balcony.take())
    assert [r.get("type") for r in replies] == ["result"]
    assert replies[0].get("id") == "add1"
    (push,) = pushes
    assert push.get("to") == "juliet@example.com/balcony"
    assert push.get("from") is None
    assert items_of(push) == [("nurse@example.com", "Nurse", "none", None, ["Servants"])]
    (other,) = chamber.take()
    assert other.get("to") == "juliet@example.com/chamber"
    assert other.get("id") != push.get("id")              # every push has a fresh id
    phone.nothing()
    assert world.storage.roster("juliet") == [
        RosterItem("nurse@example.com", "Nurse", Subscription.NONE, False, ("Servants",))]


def test_roster_set_updates_name_and_groups_but_never_the_subscription(world):
    world.storage.set_roster_item("juliet", RosterItem(
        "romeo@example.com", "Romeo", Subscription.BOTH, groups=("Friends",)))
    juliet = world.connect("juliet@example.com/balcony")
    juliet.send(get())
    juliet.take()
    juliet.send(set_("<item jid='Romeo@Example.com' name='My Romeo' subscription='none' "
                     "ask='subscribe'><group>Lovers</group><group>Montagues</group></item>"))
    pushes, _ = split(juliet.take())
    assert items_of(pushes[0]) == [("romeo@example.com", "My Romeo", "both", None,
                                    ["Lovers", "Montagues"])]


def test_client_responses_to_pushes_are_dropped(world):
    juliet = world.connect("juliet@example.com/balcony")
    juliet.send(get())
    juliet.send(set_("<item jid='nurse@example.com'/>"))
    pushes, _ = split(juliet.take())
    juliet.send(f"<iq type='result' id='{pushes[0].get('id')}'/>")
    juliet.send(f"<iq type='result' id='{pushes[0].get('id')}' to='juliet@example.com'/>")
    juliet.nothing()


@pytest.mark.parametrize("items, cond", [
    ("", "bad-request"),
    ("<item jid='a@example.com'/><item jid='b@example.com'/>", "bad-request"),
    ("<item name='no jid'/>", "bad-request"),
    ("<item jid='romeo@example.com/orchard'/>", "bad-request"),
    ("<item jid='romeo@exa mple.com'/>", "jid-malformed"),
    ("<item jid='romeo@example.com'><group>A</group><group>A</group></item>", "bad-request"),
    ("<item jid='romeo@example.com'><group></group></item>", "not-acceptable"),
    ("<item jid='romeo@example.com'><group>" + "g" * 1024 + "</group></item>", "not-acceptable"),
    ("<item jid='romeo@example.com' name='" + "n" * 1024 + "'/>", "not-acceptable"),
])
def test_bad_roster_sets_are_refused_and_change_nothing(world, items, cond):
    juliet = world.connect("juliet@example.com/balcony")
    juliet.send(get())
    juliet.take()
    juliet.send(set_(items))
    reply = juliet.only()
    assert is_error(reply, cond), show(reply)
    assert world.storage.roster("juliet") == []


# ---------------------------------------------------------------------------
# Remove (§2.5)


def test_removing_an_unknown_item_is_item_not_found(world):
    juliet = world.connect("juliet@example.com/balcony")
    juliet.send(set_("<item jid='romeo@example.com' subscription='remove'/>"))
    assert is_error(juliet.only(), "item-not-found")


def test_removing_a_mutual_contact_cancels_both_subscriptions(world):
    world.subscribed("juliet", "romeo")
    romeo = world.login("romeo@example.com/orchard")
    juliet = world.login("juliet@example.com/balcony")

    juliet.send(set_("<item jid='romeo@example.com' subscription='remove'/>", id="rm"))

    pushes, others = split(juliet.take())
    assert items_of(pushes[-1]) == [("romeo@example.com", None, "remove", None, [])]
    assert [(s.get("type"), s.get("id")) for s in others] == [
        ("unavailable", None),        # romeo's presence stops (he lost his 'from')
        ("result", "rm")]
    assert world.storage.roster("juliet") == []

    pushes, others = split(romeo.take())
    assert [items_of(p)[0][2] for p in pushes] == ["to", "none"]
    assert [(s.get("type"), s.get("from")) for s in others] == [
        ("unsubscribe", "juliet@example.com"),
        ("unsubscribed", "juliet@example.com"),
        ("unavailable", "juliet@example.com/balcony")]
    assert world.storage.roster("romeo") == [RosterItem("juliet@example.com")]


def test_removing_a_contact_with_a_pending_request_refuses_it(world):
    romeo = world.login("romeo@example.com/orchard")
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(set_("<item jid='romeo@example.com'/>"))
    romeo.send("<presence to='juliet@example.com' type='subscribe'/>")
    world.quiet()
    presence = world.router.presence
    assert presence.state(JULIET, ROMEO) is SubState.NONE_PENDING_IN

    juliet.send(set_("<item jid='romeo@example.com' subscription='remove'/>"))

    assert presence.state(JULIET, ROMEO) is SubState.NONE
    assert presence.state(ROMEO, JULIET) is SubState.NONE
    assert world.storage.subscription_requests("juliet") == []
    pushes, others = split(romeo.take())
    assert [items_of(p)[0][2:4] for p in pushes] == [("none", None)]
    assert [s.get("type") for s in others] == ["unsubscribed"]


def test_removing_a_one_way_contact_sends_only_unsubscribe(world):
    world.subscribed("juliet", "romeo", Subscription.TO)
    romeo = world.login("romeo@example.com/orchard")
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(set_("<item jid='romeo@example.com' subscription='remove'/>"))
    pushes, others = split(romeo.take())
    assert [s.get("type") for s in others] == ["unsubscribe"]
    assert world.storage.roster("romeo") == [RosterItem("juliet@example.com")]
    _, mine = split(juliet.take())
    assert [(s.get("type"), s.get("from")) for s in mine] == [
        ("unavailable", "romeo@example.com/orchard"), ("result", None)]
