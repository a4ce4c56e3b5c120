"""Presence and subscriptions (RFC 6121 §3, §4, Appendix A), in memory over real storage.

Transcripts follow the RFC's examples: juliet@example.com and romeo@example.com,
with the nurse as the entity nobody is subscribed to.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from iim.conf.limits import ServerLimits
from iim.server.presence import INBOUND, OUTBOUND, PresenceType, SubState
from iim.server.storage import RosterItem, Subscription
from iim.xmpp.jid import JID
from iim.xmpp.ns import DELAY_NS, q
from test_router import C, World, is_error, make_storage, storage, world  # noqa: F401 - fixtures

ROSTER = "{jabber:iq:roster}"
JULIET, ROMEO = JID.parse("juliet@example.com"), JID.parse("romeo@example.com")


def presences(received):
    return [s for s in received if s.tag == C + "presence"]


def pushes(received):
    """The roster items pushed, as (jid, subscription, ask)."""
    items = []
    for s in received:
        if s.tag == C + "iq" and s.get("type") == "set":
            item = s.find(f"{ROSTER}query/{ROSTER}item")
            items.append((item.get("jid"), item.get("subscription"), item.get("ask")))
    return items


def kinds(received):
    """(type, from) of each presence stanza, in order."""
    return [(s.get("type"), s.get("from")) for s in presences(received)]


def roster_of(storage, user):
    return {item.jid: (item.subscription, item.ask) for item in storage.roster(user)}


# ---------------------------------------------------------------------------
# Initial presence, probes, broadcast (§4.2, §4.3)


def test_initial_presence_goes_to_subscribers_and_probes_answer_with_theirs(world):
    world.subscribed("juliet", "romeo")                 # both ways
    romeo = world.login("romeo@example.com/orchard")
    juliet = world.connect("juliet@example.com/balcony")

    juliet.send("<presence><show>away</show><priority>1</priority></presence>")

    seen = romeo.only()
    assert seen.get("from") == "juliet@example.com/balcony"
    assert seen.get("to") == "romeo@example.com"
    assert seen.findtext(C + "show") == "away"
    received = juliet.take()
    assert kinds(received) == [(None, "juliet@example.com/balcony"),   # her own, echoed (§4.2.2)
                               (None, "romeo@example.com/orchard")]     # the probe's answer
    assert presences(received)[1].get("to") == "juliet@example.com/balcony"
    assert juliet.available and juliet.priority == 1


def test_initial_presence_reaches_the_users_other_resources_and_learns_theirs(world):
    chamber = world.login("juliet@example.com/chamber")
    balcony = world.connect("juliet@example.com/balcony")
    balcony.send("<presence/>")
    assert kinds(chamber.take()) == [(None, "juliet@example.com/balcony")]
    assert kinds(balcony.take()) == [(None, "juliet@example.com/balcony"),
                                     (None, "juliet@example.com/chamber")]


def test_presence_flows_only_in_the_subscribed_direction(world):
    world.subscribed("juliet", "romeo", Subscription.FROM)  # romeo sees juliet, not back
    romeo = world.login("romeo@example.com/orchard")
    juliet = world.login("juliet@example.com/balcony", keep=True)
    assert kinds(romeo.take()) == [(None, "juliet@example.com/balcony")]
    assert kinds(juliet.take()) == [(None, "juliet@example.com/balcony")]
    romeo.send("<presence><show>dnd</show></presence>")
    assert presences(juliet.take()) == []


def test_a_probe_is_answered_only_when_the_contact_allows_it(world):
    world.subscribed("juliet", "romeo", Subscription.TO)   # juliet may see romeo
    world.login("romeo@example.com/orchard")
    world.login("nurse@example.com/kitchen")
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<presence type='probe' to='romeo@example.com'/>")
    assert kinds(juliet.take()) == [(None, "romeo@example.com/orchard")]
    juliet.send("<presence type='probe' to='nurse@example.com'/>")
    juliet.nothing()


def test_unavailable_is_broadcast_and_the_session_is_no_longer_available(world):
    world.subscribed("juliet", "romeo")
    romeo = world.login("romeo@example.com/orchard")
    chamber = world.login("juliet@example.com/chamber")
    balcony = world.login("juliet@example.com/balcony")

    balcony.send("<presence type='unavailable'><status>gone to bed</status></presence>")

    gone = romeo.only()
    assert (gone.get("type"), gone.findtext(C + "status")) == ("unavailable", "gone to bed")
    assert kinds(chamber.take()) == [("unavailable", "juliet@example.com/balcony")]
    balcony.nothing()
    assert not balcony.available and balcony.priority is None


def test_session_end_broadcasts_unavailable_only_if_it_was_available(world):
    world.subscribed("juliet", "romeo")
    romeo = world.login("romeo@example.com/orchard")
    lurking = world.connect("juliet@example.com/lurking")
    balcony = world.login("juliet@example.com/balcony")
    world.quiet()

    lurking.close()
    romeo.nothing()
    balcony.close()
    assert kinds(romeo.take()) == [("unavailable", "juliet@example.com/balcony")]


def test_presence_update_is_broadcast_without_probes_or_offline_delivery(world):
    world.subscribed("juliet", "romeo")
    romeo = world.login("romeo@example.com/orchard")
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<presence><show>chat</show></presence>")
    assert kinds(romeo.take()) == [(None, "juliet@example.com/balcony")]
    assert kinds(juliet.take()) == [(None, "juliet@example.com/balcony")]


@pytest.mark.parametrize("xml", [
    "<presence><priority>high</priority></presence>",
    "<presence><priority>128</priority></presence>",
    "<presence type='available'/>",
    "<presence type='probe'/>",
    "<presence type='subscribe'/>",
])
def test_bad_presence_is_bad_request(world, xml):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(xml)
    assert is_error(juliet.only(), "bad-request")


# ---------------------------------------------------------------------------
# Directed presence (§4.6)


def test_directed_presence_is_delivered_and_followed_by_unavailable_at_logout(world):
    nurse = world.login("nurse@example.com/kitchen")
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<presence to='nurse@example.com'><status>come up</status></presence>")
    seen = nurse.only()
    assert seen.get("from") == "juliet@example.com/balcony"
    assert seen.findtext(C + "status") == "come up"

    juliet.close()
    assert kinds(nurse.take()) == [("unavailable", "juliet@example.com/balcony")]


def test_directed_unavailable_settles_the_debt(world):
    nurse = world.login("nurse@example.com/kitchen")
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<presence to='nurse@example.com/kitchen'/>")
    juliet.send("<presence type='unavailable' to='nurse@example.com/kitchen'/>")
    assert kinds(nurse.take()) == [(None, "juliet@example.com/balcony"),
                                   ("unavailable", "juliet@example.com/balcony")]
    juliet.close()
    nurse.nothing()


def test_directed_presence_before_initial_presence_is_remembered_too(world):
    nurse = world.login("nurse@example.com/kitchen")
    juliet = world.connect("juliet@example.com/balcony")
    juliet.send("<presence to='nurse@example.com'/>")
    nurse.take()
    juliet.close()
    assert kinds(nurse.take()) == [("unavailable", "juliet@example.com/balcony")]


def test_unavailable_broadcast_reaches_directed_targets_once(world):
    world.subscribed("juliet", "romeo")
    romeo = world.login("romeo@example.com/orchard")
    nurse = world.login("nurse@example.com/kitchen")
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<presence to='nurse@example.com'/>")
    juliet.send("<presence to='romeo@example.com'/>")     # a subscriber already
    world.quiet()
    juliet.send("<presence type='unavailable'/>")
    assert len(presences(romeo.take())) == 1
    assert len(presences(nurse.take())) == 1


def test_presence_to_a_bare_jid_goes_to_every_available_resource(world):
    kitchen = world.login("nurse@example.com/kitchen", priority=-1)
    garden = world.login("nurse@example.com/garden")
    idle = world.connect("nurse@example.com/idle")
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<presence to='nurse@example.com'/>")
    assert len(kitchen.take()) == len(garden.take()) == 1
    idle.nothing()


def test_presence_to_nobody_is_dropped_silently(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<presence to='nurse@example.com'/>")            # not online
    juliet.send("<presence to='tybalt@example.com'/>")           # no such user
    juliet.send("<presence to='nurse@example.com/gone'/>")       # no such resource
    juliet.nothing()


# ---------------------------------------------------------------------------
# Subscriptions (§3), both users online


def test_the_whole_handshake_with_both_users_online(world):
    romeo = world.login("romeo@example.com/orchard")
    juliet = world.login("juliet@example.com/balcony")

    # §3.1.2: romeo asks; his roster shows the pending request
    romeo.send("<presence to='juliet@example.com' type='subscribe' id='s1'/>")
    assert pushes(romeo.take()) == [("juliet@example.com", "none", "subscribe")]
    request = juliet.only()
    assert (request.get("type"), request.get("from"), request.get("to")) == (
        "subscribe", "romeo@example.com", "juliet@example.com")   # bare JIDs both
    assert roster_of(world.storage, "juliet") == {}               # §3.1.3: no item yet

    # §3.1.5: juliet approves; both rosters change, romeo sees her presence
    juliet.send("<presence to='romeo@example.com' type='subscribed'/>")
    assert pushes(juliet.take()) == [("romeo@example.com", "from", None)]
    received = romeo.take()
    assert pushes(received) == [("juliet@example.com", "to", None)]
    assert kinds(received) == [("subscribed", "juliet@example.com"),
                               (None, "juliet@example.com/balcony")]

    # and the other way round
    juliet.send("<presence to='romeo@example.com' type='subscribe'/>")
    assert pushes(juliet.take()) == [("romeo@example.com", "from", "subscribe")]
    assert kinds(romeo.take()) == [("subscribe", "juliet@example.com")]
    romeo.send("<presence to='juliet@example.com' type='subscribed'/>")
    assert pushes(romeo.take()) == [("juliet@example.com", "both", None)]
    received = juliet.take()
    assert pushes(received) == [("romeo@example.com", "both", None)]
    assert kinds(received) == [("subscribed", "romeo@example.com"),
                               (None, "romeo@example.com/orchard")]

    assert roster_of(world.storage, "juliet") == {"romeo@example.com": (Subscription.BOTH, False)}
    assert roster_of(world.storage, "romeo") == {"juliet@example.com": (Subscription.BOTH, False)}
    assert world.storage.subscription_requests("juliet") == []     # no request left behind


def test_a_request_to_an_offline_user_waits_for_her_next_initial_presence(world):
    romeo = world.login("romeo@example.com/orchard")
    romeo.send("<presence to='juliet@example.com' type='subscribe'><status>Romeo here"
               "</status></presence>")
    romeo.take()

    juliet = world.login("juliet@example.com/balcony", keep=True)
    requests = [s for s in juliet.take() if s.get("type") == "subscribe"]
    assert len(requests) == 1
    assert requests[0].get("from") == "romeo@example.com"
    assert requests[0].findtext(C + "status") == "Romeo here"
    assert requests[0].find(q(DELAY_NS, "delay")) is not None

    juliet.close()                      # unanswered: it comes again next time (§3.1.3)
    juliet = world.login("juliet@example.com/balcony", keep=True)
    assert [s.get("type") for s in juliet.take() if s.tag == C + "presence"].count(
        "subscribe") == 1

    juliet.send("<presence to='romeo@example.com' type='subscribed'/>")
    assert pushes(romeo.take()) == [("juliet@example.com", "to", None)]
    juliet.close()
    juliet = world.login("juliet@example.com/balcony", keep=True)
    assert "subscribe" not in [s.get("type") for s in juliet.take()]


def test_crossing_requests_pending_both_ways(world):
    romeo = world.login("romeo@example.com/orchard")
    juliet = world.login("juliet@example.com/balcony")
    presence = world.router.presence
    romeo.send("<presence to='juliet@example.com' type='subscribe'/>")
    juliet.send("<presence to='romeo@example.com' type='subscribe'/>")
    assert presence.state(ROMEO, JULIET) is SubState.NONE_PENDING_OUT_IN
    assert presence.state(JULIET, ROMEO) is SubState.NONE_PENDING_OUT_IN

    juliet.send("<presence to='romeo@example.com' type='subscribed'/>")
    assert presence.state(JULIET, ROMEO) is SubState.FROM_PENDING_OUT
    assert presence.state(ROMEO, JULIET) is SubState.TO_PENDING_IN   # her request still open

    world.quiet()
    romeo.send("<presence to='juliet@example.com' type='subscribed'/>")
    assert presence.state(JULIET, ROMEO) is presence.state(ROMEO, JULIET) is SubState.BOTH
    assert pushes(romeo.take()) == [("juliet@example.com", "both", None)]
    assert pushes(juliet.take()) == [("romeo@example.com", "both", None)]
    assert world.storage.subscription_requests("romeo") == world.storage.subscription_requests(
        "juliet") == []


def test_a_repeated_request_is_not_delivered_or_stored_twice(world):
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")
    romeo.send("<presence to='juliet@example.com' type='subscribe'/>")
    romeo.send("<presence to='juliet@example.com' type='subscribe'/>")
    assert len(juliet.take()) == 1
    assert len(world.storage.subscription_requests("juliet")) == 1


def test_refusing_a_request_clears_romeos_ask(world):
    romeo = world.login("romeo@example.com/orchard")
    juliet = world.login("juliet@example.com/balcony")
    romeo.send("<presence to='juliet@example.com' type='subscribe'/>")
    world.quiet()
    juliet.send("<presence to='romeo@example.com' type='unsubscribed'/>")
    received = romeo.take()
    assert pushes(received) == [("juliet@example.com", "none", None)]
    assert kinds(received) == [("unsubscribed", "juliet@example.com")]
    assert world.storage.subscription_requests("juliet") == []
    juliet.nothing()


def test_romeo_withdraws_his_request_before_juliet_answers(world):
    romeo = world.login("romeo@example.com/orchard")
    romeo.send("<presence to='juliet@example.com' type='subscribe'/>")
    romeo.send("<presence to='juliet@example.com' type='unsubscribe'/>")
    assert pushes(romeo.take()) == [("juliet@example.com", "none", "subscribe"),
                                    ("juliet@example.com", "none", None)]
    assert world.storage.subscription_requests("juliet") == []


def test_unsubscribe_stops_presence_and_tells_the_contact(world):
    world.subscribed("romeo", "juliet")
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")

    romeo.send("<presence to='juliet@example.com' type='unsubscribe'/>")  # §3.3

    received = romeo.take()
    assert pushes(received) == [("juliet@example.com", "from", None)]
    assert kinds(received) == [("unavailable", "juliet@example.com/balcony")]
    received = juliet.take()
    assert pushes(received) == [("romeo@example.com", "to", None)]
    assert kinds(received) == [("unsubscribe", "romeo@example.com")]
    juliet.send("<presence><show>away</show></presence>")
    assert presences(romeo.take()) == []


def test_cancelling_a_subscription_sends_unavailable_to_the_former_subscriber(world):
    world.subscribed("romeo", "juliet")
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")

    juliet.send("<presence to='romeo@example.com' type='unsubscribed'/>")  # §3.2

    assert pushes(juliet.take()) == [("romeo@example.com", "to", None)]
    received = romeo.take()
    assert pushes(received) == [("juliet@example.com", "from", None)]
    assert kinds(received) == [("unsubscribed", "juliet@example.com"),
                               ("unavailable", "juliet@example.com/balcony")]


def test_subscribing_to_an_unknown_user_is_answered_unsubscribed(world):
    romeo = world.login("romeo@example.com/orchard")
    romeo.send("<presence to='rosaline@example.com' type='subscribe'/>")
    received = romeo.take()
    assert pushes(received) == [("rosaline@example.com", "none", "subscribe"),
                                ("rosaline@example.com", "none", None)]
    assert kinds(received) == [("unsubscribed", "rosaline@example.com")]


def test_asking_again_when_already_approved_resends_presence_only(world):
    world.subscribed("romeo", "juliet")
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")
    romeo.send("<presence to='juliet@example.com/balcony' type='subscribe'/>")  # a full JID
    # A.3.3: 'subscribed' changes nothing for romeo ('both'), so only her presence comes
    assert kinds(romeo.take()) == [(None, "juliet@example.com/balcony")]
    juliet.nothing()


def test_a_lost_roster_is_repaired_by_the_servers_auto_reply(world):
    world.storage.set_roster_item("juliet", RosterItem("romeo@example.com",
                                                      subscription=Subscription.FROM))
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")   # his roster lost juliet
    romeo.send("<presence to='juliet@example.com' type='subscribe'/>")
    received = romeo.take()
    assert pushes(received) == [("juliet@example.com", "none", "subscribe"),
                                ("juliet@example.com", "to", None)]
    assert kinds(received) == [("subscribed", "juliet@example.com"),  # §3.1.3 auto-reply
                               (None, "juliet@example.com/balcony")]
    juliet.nothing()


def test_approving_without_a_request_does_nothing(world):
    romeo = world.login("romeo@example.com/orchard")
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<presence to='romeo@example.com' type='subscribed'/>")
    juliet.nothing()
    romeo.nothing()
    assert roster_of(world.storage, "romeo") == {}


def test_subscribing_to_another_domain_is_remote_server_not_found(world):
    romeo = world.login("romeo@example.com/orchard")
    romeo.send("<presence to='mercutio@verona.example' type='subscribe' id='s'/>")
    received = romeo.take()
    assert pushes(received) == [("mercutio@verona.example", "none", "subscribe")]
    error = presences(received)[0]
    assert is_error(error, "remote-server-not-found")
    assert error.get("to") == "romeo@example.com"


def test_a_request_that_cannot_be_kept_is_refused_not_delivered(tmp_path):
    """Juliet could not answer a request the server does not remember, so
    Romeo learns it was not taken: <resource-constraint/> (RFC 6120 §8.3.3.18)."""
    storage = make_storage(tmp_path, limits=ServerLimits(offline_max_messages=0))
    world = World(storage)
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")
    world.quiet()
    romeo.send("<presence to='juliet@example.com' type='subscribe' id='s1'/>")
    juliet.nothing()
    error = presences(romeo.take())[-1]
    assert is_error(error, "resource-constraint") and error.get("id") == "s1"
    assert world.storage.subscription_requests("juliet") == []
    storage.close()


# ---------------------------------------------------------------------------
# The state machine (Appendix A)


def test_tables_cover_only_subscription_types():
    assert set(OUTBOUND) == set(INBOUND) == {PresenceType.SUBSCRIBE, PresenceType.SUBSCRIBED,
                                             PresenceType.UNSUBSCRIBE, PresenceType.UNSUBSCRIBED}


def test_states_normalise_impossible_combinations():
    assert SubState.of(Subscription.BOTH, True, True) is SubState.BOTH
    assert SubState.of(Subscription.TO, True, True) is SubState.TO_PENDING_IN
    assert SubState.of(Subscription.FROM, True, True) is SubState.FROM_PENDING_OUT


def mirror(state: SubState) -> SubState:
    """The contact's view that corresponds to ``state``."""
    subscription = {Subscription.TO: Subscription.FROM, Subscription.FROM: Subscription.TO}.get(
        state.subscription, state.subscription)
    return SubState.of(subscription, state.pending_in, state.pending_out)


SUBSCRIPTION_ACTIONS = ["subscribe", "subscribed", "unsubscribe", "unsubscribed"]
ACTIONS = st.lists(st.tuples(
    st.sampled_from(["juliet", "romeo"]),
    st.one_of(st.sampled_from(SUBSCRIPTION_ACTIONS),         # mostly the handshake,
              st.sampled_from(SUBSCRIPTION_ACTIONS),
              st.sampled_from(SUBSCRIPTION_ACTIONS),
              st.sampled_from(["remove", "add", "login", "logout"]))),  # sometimes the rest
    max_size=10)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS)
@example(actions=[("romeo", "subscribe"), ("juliet", "subscribe"), ("juliet", "subscribed"),
                  ("romeo", "unsubscribed"), ("juliet", "remove")])
def test_both_views_stay_mirror_images_and_pushes_match_storage(tmp_path_factory, actions):
    storage = make_storage(tmp_path_factory.mktemp("mirror"))
    world = World(storage)
    online = {"juliet": world.login("juliet@example.com/balcony"),
              "romeo": world.login("romeo@example.com/orchard")}
    presence = world.router.presence
    for actor, action in actions:
        other = "romeo" if actor == "juliet" else "juliet"
        session = online.get(actor) or world.connect(f"{actor}@example.com/tmp")
        if action == "login" and actor not in online:
            online[actor] = world.login(f"{actor}@example.com/balcony")
        elif action == "logout" and actor in online:
            online.pop(actor).close()
        elif action == "add":
            session.send(f"<iq type='set' id='a'><query xmlns='jabber:iq:roster'>"
                         f"<item jid='{other}@example.com' name='{other}'/></query></iq>")
        elif action == "remove":
            session.send(f"<iq type='set' id='r'><query xmlns='jabber:iq:roster'>"
                         f"<item jid='{other}@example.com' subscription='remove'/></query></iq>")
        elif action not in ("login", "logout"):
            session.send(f"<presence to='{other}@example.com' type='{action}'/>")
        if session not in online.values():
            session.close()
        me, them = JID.parse(f"{actor}@example.com"), JID.parse(f"{other}@example.com")
        mine, theirs = presence.state(me, them), presence.state(them, me)
        assert theirs is mirror(mine), (actor, action, mine, theirs)
        for user, resource in online.items():   # every interested resource saw every change
            last = {}
            for jid, subscription, ask in pushes(resource.take()):
                last[jid] = (subscription, ask)
            for jid, (subscription, ask) in last.items():
                stored = roster_of(storage, user).get(jid)
                if subscription == "remove":
                    assert stored is None
                else:
                    assert stored == (Subscription(subscription), ask == "subscribe")
    storage.close()


def test_mirror_of_mirror_is_identity():
    for state in SubState:
        assert mirror(mirror(state)) is state


def test_stored_roster_item_without_request_is_plain_state(world):
    world.storage.set_roster_item("juliet", RosterItem("romeo@example.com",
                                                      subscription=Subscription.TO, ask=True))
    assert world.router.presence.state(JULIET, ROMEO) is SubState.TO
