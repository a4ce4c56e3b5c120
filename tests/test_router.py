"""The router: session registry, message and IQ routing (RFC 6120 §10, RFC 6121 §8).

In memory: ``FakeSession`` stands in for the network session (it records what
the router delivers) and the storage is a real SQLite file in tmp_path. Each
test reads like the RFC's examples: "juliet sends X, romeo's balcony resource
receives Y". ``FakeSession`` and ``World`` are shared with test_presence,
test_roster and test_services.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest

from iim.conf.limits import ServerLimits
from iim.server.offline import parse_stored
from iim.server.c2s import SessionRouter
from iim.server.router import Addressing, Router
from iim.server.stanzas import MessageType, bounce
from iim.server.storage import RosterItem, Storage, Subscription
from iim.xmpp.errors import (
    STANZA_ERRORS_NS, StanzaError, StanzaErrorCondition as Cond, StreamErrorCondition,
)
from iim.xmpp.jid import JID
from iim.xmpp.ns import DELAY_NS, q
from iim.xmpp.xml import to_bytes

DOMAIN = "example.com"
USERS = ("juliet", "romeo", "nurse", "benvolio")
NOW = datetime(2026, 11, 26, 20, 5, 21, 123456, tzinfo=timezone.utc)
C = "{jabber:client}"


# ---------------------------------------------------------------------------
# The test double and the world it lives in


class FakeSession:
    """A client session as the router sees it; records every delivered stanza.

    Like the real one, ``close()`` ends the session, and ending it tells the
    router (synchronously, the hardest case).
    """

    def __init__(self, router: Router, jid: str) -> None:
        self.router = router
        self.jid = JID.parse(jid)
        self.priority: int | None = None
        self.available = False
        self.interested = False
        self.received: list[Element] = []
        self.closed = False
        self.close_error = None

    def deliver(self, stanza: Element) -> None:
        self.received.append(stanza)

    def close(self, error=None) -> None:
        if self.closed:
            return
        self.closed, self.close_error = True, error
        self.router.session_ended(self)

    # -- test helpers --------------------------------------------------------

    def send(self, xml: str) -> None:
        """The client sends a stanza, written as on the wire (jabber:client)."""
        self.router.stanza_from(self, stanza(xml))

    def take(self) -> list[Element]:
        received, self.received = self.received, []
        return received

    def only(self) -> Element:
        received = self.take()
        assert len(received) == 1, [show(s) for s in received]
        return received[0]

    def nothing(self) -> None:
        assert self.received == [], [show(s) for s in self.received]

    def __repr__(self) -> str:
        return f"FakeSession({str(self.jid)!r})"


def stanza(xml: str) -> Element:
    element = parse_stored(xml.encode())
    assert element is not None, xml
    return element


def show(element: Element) -> str:
    return to_bytes(element).decode()


def condition(reply: Element) -> str:
    """The defined condition of an error reply."""
    error = reply.find(C + "error")
    assert error is not None, show(reply)
    names = [child.tag for child in error if child.tag != q(STANZA_ERRORS_NS, "text")]
    return names[0].partition("}")[2]


def is_error(reply: Element, cond: str) -> bool:
    return reply.get("type") == "error" and condition(reply) == cond


class World:
    """A router over real storage, and helpers to log users in."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.router = Router(DOMAIN, storage, clock=lambda: NOW)
        self.sessions: list[FakeSession] = []

    def connect(self, jid: str) -> FakeSession:
        session = FakeSession(self.router, jid)
        self.router.session_bound(session)
        self.sessions.append(session)
        return session

    def quiet(self) -> None:
        """Forget what every session has received so far."""
        for session in self.sessions:
            session.take()

    def login(self, jid: str, *, priority: int | None = None, roster: bool = True,
              keep: bool = False) -> FakeSession:
        """Bind, fetch the roster, send initial presence.

        Unless ``keep``, what anybody received meanwhile is forgotten.
        """
        session = self.connect(jid)
        if roster:
            session.send("<iq type='get' id='roster-1'><query xmlns='jabber:iq:roster'/></iq>")
        prio = "" if priority is None else f"<priority>{priority}</priority>"
        session.send(f"<presence>{prio}</presence>")
        if not keep:
            self.quiet()
        return session

    def subscribed(self, a: str, b: str, state: Subscription = Subscription.BOTH) -> None:
        """Set up a's roster entry for b directly in storage (b mirrors it)."""
        mirror = {Subscription.BOTH: Subscription.BOTH, Subscription.TO: Subscription.FROM,
                  Subscription.FROM: Subscription.TO, Subscription.NONE: Subscription.NONE}
        self.storage.set_roster_item(a, RosterItem(f"{b}@{DOMAIN}", subscription=state))
        self.storage.set_roster_item(b, RosterItem(f"{a}@{DOMAIN}", subscription=mirror[state]))
        for user in (a, b):            # written behind the router's back: drop what it holds
            self.router.roster.forget(JID.parse(f"{user}@{DOMAIN}"))


def make_storage(tmp_path, **options) -> Storage:
    """A database with USERS, password "secret". The users are added once per
    process, to a template database copied for each test (mode 0600 kept):
    deriving their SCRAM credentials (4096 PBKDF2 rounds per mechanism and
    user) was most of the CPU of these in-memory tests."""
    path = tmp_path / "iim.db"
    key = repr(sorted(options.items()))
    if key not in _templates:
        template = Path(tempfile.mkdtemp(prefix="iim-router-")) / "iim.db"
        atexit.register(shutil.rmtree, template.parent, True)
        made = Storage.open(template, **options)
        for user in USERS:
            made.add_user(user, "secret")
        made.close()
        _templates[key] = template
    shutil.copy2(_templates[key], path)
    return Storage.open(path, **options)


_templates: dict[str, Path] = {}


@pytest.fixture
def storage(tmp_path):
    storage = make_storage(tmp_path)
    yield storage
    storage.close()


@pytest.fixture
def world(storage):
    return World(storage)


def chat(to: str, body: str = "Art thou not Romeo?", mtype: str = "chat", id: str = "m1") -> str:
    return f"<message to='{to}' type='{mtype}' id='{id}'><body>{body}</body></message>"


# ---------------------------------------------------------------------------
# Messages to a full JID (RFC 6121 §8.5.3)


def test_message_to_a_connected_full_jid_goes_to_that_resource_only(world):
    juliet = world.login("juliet@example.com/balcony")
    romeo_orchard = world.login("romeo@example.com/orchard", priority=10)
    romeo_phone = world.login("romeo@example.com/phone", priority=1)

    juliet.send(chat("romeo@example.com/phone"))

    message = romeo_phone.only()
    assert message.get("from") == "juliet@example.com/balcony"
    assert message.get("to") == "romeo@example.com/phone"
    assert message.findtext(C + "body") == "Art thou not Romeo?"
    romeo_orchard.nothing()
    juliet.nothing()


def test_message_to_a_connected_but_unavailable_resource_is_delivered(world):
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.connect("romeo@example.com/orchard")  # no initial presence
    juliet.send(chat("romeo@example.com/orchard"))
    assert romeo.only().findtext(C + "body") == "Art thou not Romeo?"


def test_chat_to_a_gone_resource_is_treated_as_sent_to_the_bare_jid(world):
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")
    juliet.send(chat("romeo@example.com/balcony-ladder"))
    message = romeo.only()
    assert message.get("to") == "romeo@example.com/balcony-ladder"  # delivered unchanged
    juliet.nothing()


def test_groupchat_to_a_gone_resource_is_service_unavailable_headline_is_dropped(world):
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")
    juliet.send(chat("romeo@example.com/gone", mtype="groupchat"))
    assert is_error(juliet.only(), "service-unavailable")
    juliet.send(chat("romeo@example.com/gone", mtype="headline"))
    juliet.nothing()
    romeo.nothing()
    assert world.storage.offline_messages("romeo") == []


# ---------------------------------------------------------------------------
# Messages to a bare JID (RFC 6121 §8.5.2)


def test_bare_jid_message_goes_to_the_highest_priority_resource(world):
    juliet = world.login("juliet@example.com/balcony")
    orchard = world.login("romeo@example.com/orchard", priority=5)
    phone = world.login("romeo@example.com/phone", priority=1)
    juliet.send(chat("romeo@example.com"))
    assert orchard.only().get("to") == "romeo@example.com"
    phone.nothing()


def test_bare_jid_message_goes_to_every_resource_sharing_the_top_priority(world):
    juliet = world.login("juliet@example.com/balcony")
    orchard = world.login("romeo@example.com/orchard", priority=5)
    phone = world.login("romeo@example.com/phone", priority=5)
    laptop = world.login("romeo@example.com/laptop", priority=0)
    juliet.send(chat("romeo@example.com", mtype="normal"))
    assert len(orchard.take()) == len(phone.take()) == 1
    laptop.nothing()


def test_negative_priority_resources_never_get_bare_jid_messages(world):
    juliet = world.login("juliet@example.com/balcony")
    lurker = world.login("romeo@example.com/lurker", priority=-1)
    juliet.send(chat("romeo@example.com"))
    lurker.nothing()
    assert len(world.storage.offline_messages("romeo")) == 1  # as if nobody were online
    juliet.send(chat("romeo@example.com/lurker", body="direct"))
    assert lurker.only().findtext(C + "body") == "direct"  # a full JID still reaches it


def test_headline_to_a_bare_jid_goes_to_all_non_negative_resources(world):
    juliet = world.login("juliet@example.com/balcony")
    orchard = world.login("romeo@example.com/orchard", priority=5)
    phone = world.login("romeo@example.com/phone", priority=0)
    lurker = world.login("romeo@example.com/lurker", priority=-5)
    juliet.send(chat("romeo@example.com", mtype="headline"))
    assert len(orchard.take()) == len(phone.take()) == 1
    lurker.nothing()


def test_headline_to_an_offline_user_is_dropped(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(chat("romeo@example.com", mtype="headline"))
    juliet.nothing()
    assert world.storage.offline_messages("romeo") == []


def test_groupchat_to_a_bare_jid_is_service_unavailable(world):
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")
    juliet.send(chat("romeo@example.com", mtype="groupchat"))
    assert is_error(juliet.only(), "service-unavailable")
    romeo.nothing()


def test_unknown_message_type_is_handled_as_normal():
    assert MessageType.of(stanza("<message type='bogus'/>")) is MessageType.NORMAL
    assert MessageType.of(stanza("<message/>")) is MessageType.NORMAL


def test_message_without_to_goes_to_the_senders_own_account(world):
    balcony = world.login("juliet@example.com/balcony", priority=1)
    chamber = world.login("juliet@example.com/chamber", priority=2)
    balcony.send("<message type='chat' id='self'><body>note to self</body></message>")
    assert chamber.only().findtext(C + "body") == "note to self"
    balcony.nothing()


# ---------------------------------------------------------------------------
# Offline messages (XEP-0160, XEP-0203)


def test_offline_message_is_stored_then_delivered_with_a_delay_and_deleted(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(chat("romeo@example.com", body="Wherefore art thou?"))
    juliet.nothing()
    assert len(world.storage.offline_messages("romeo")) == 1

    romeo = world.login("romeo@example.com/orchard", keep=True)
    delivered = [s for s in romeo.take() if s.tag == C + "message"]
    assert len(delivered) == 1
    message = delivered[0]
    assert message.get("from") == "juliet@example.com/balcony"
    assert message.findtext(C + "body") == "Wherefore art thou?"
    delay = message.find(q(DELAY_NS, "delay"))
    assert delay.get("from") == "example.com"
    assert delay.get("stamp") == "2026-11-26T20:05:21.123Z"
    assert world.storage.offline_messages("romeo") == []


def test_offline_messages_arrive_in_order_only_once(world):
    juliet = world.login("juliet@example.com/balcony")
    for n in range(3):
        juliet.send(chat("romeo@example.com", body=f"line {n}", id=f"m{n}"))
    romeo = world.login("romeo@example.com/orchard", keep=True)
    bodies = [s.findtext(C + "body") for s in romeo.take() if s.tag == C + "message"]
    assert bodies == ["line 0", "line 1", "line 2"]
    second = world.login("romeo@example.com/phone", keep=True)
    assert [s for s in second.take() if s.tag == C + "message"] == []


def test_chat_to_a_gone_resource_of_an_offline_user_is_stored(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(chat("romeo@example.com/orchard"))
    assert len(world.storage.offline_messages("romeo")) == 1


def test_offline_messages_wait_for_non_negative_priority(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(chat("romeo@example.com"))
    romeo = world.login("romeo@example.com/lurker", priority=-1, keep=True)
    assert [s for s in romeo.take() if s.tag == C + "message"] == []
    assert len(world.storage.offline_messages("romeo")) == 1
    romeo.send("<presence><priority>0</priority></presence>")
    assert [s.findtext(C + "body") for s in romeo.take() if s.tag == C + "message"] == [
        "Art thou not Romeo?"]
    assert world.storage.offline_messages("romeo") == []


def test_chat_states_alone_are_not_stored(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<message to='romeo@example.com' type='chat'>"
                "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    juliet.send("<message to='romeo@example.com' type='chat'><body>hi</body>"
                "<no-store xmlns='urn:xmpp:hints'/></message>")
    juliet.nothing()
    assert world.storage.offline_messages("romeo") == []


def test_full_offline_storage_bounces_resource_constraint(tmp_path):
    """RFC 6120 §8.3.3.18: the store may have room again later, so type 'wait'."""
    storage = make_storage(tmp_path, limits=ServerLimits(offline_max_messages=1))
    world = World(storage)
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(chat("romeo@example.com", body="first", id="one"))
    juliet.nothing()
    juliet.send(chat("romeo@example.com", body="second", id="two"))
    reply = juliet.only()
    assert is_error(reply, "resource-constraint")
    assert reply.find(C + "error").get("type") == "wait"
    assert reply.get("id") == "two"
    assert reply.get("from") == "romeo@example.com"
    assert reply.findtext(C + "body") == "second"
    storage.close()


def test_offline_messages_a_session_cannot_send_go_back_to_storage(world):
    """A session takes responsibility for what it is handed: when its
    connection goes away mid-delivery, it gives the rest back (keep_for_later),
    and they wait, in order, for the next login."""
    juliet = world.login("juliet@example.com/balcony")
    for n in range(3):
        juliet.send(chat("romeo@example.com", body=f"line {n}", id=f"m{n}"))

    class Breaks(FakeSession):
        def deliver(self, stanza):
            if stanza.tag == C + "message" and stanza.findtext(C + "body") == "line 1":
                self.closed = True                       # the network went away
            if self.closed:
                assert self.router.keep_for_later(self, stanza)
                return
            super().deliver(stanza)

    romeo = Breaks(world.router, "romeo@example.com/orchard")
    world.router.session_bound(romeo)
    romeo.available, romeo.priority = True, 0               # as after initial presence
    world.router.deliver_offline(romeo)
    assert [m.findtext(C + "body") for m in romeo.received] == ["line 0"]
    left = [parse_stored(data) for _, data in world.storage.offline_messages("romeo")]
    assert [m.findtext(C + "body") for m in left] == ["line 1", "line 2"]
    assert all(len(m.findall("{urn:xmpp:delay}delay")) == 1 for m in left)   # one stamp


def test_offline_storage_full_still_lets_a_failing_delivery_keep_everything(world):
    world.storage.limits = ServerLimits(offline_max_messages=3)
    juliet = world.login("juliet@example.com/balcony")
    for n in range(3):
        juliet.send(chat("romeo@example.com", body=f"line {n}", id=f"m{n}"))

    class NeverSends(FakeSession):
        def deliver(self, stanza):
            assert self.router.keep_for_later(self, stanza)

    romeo = NeverSends(world.router, "romeo@example.com/orchard")
    world.router.session_bound(romeo)
    romeo.available, romeo.priority = True, 0               # as after initial presence
    world.router.deliver_offline(romeo)
    assert len(world.storage.offline_messages("romeo")) == 3


def test_unreadable_offline_rows_are_dropped_with_a_warning(world, caplog):
    world.storage.store_offline("romeo", b"<message><body>unterminated")
    romeo = world.connect("romeo@example.com/orchard")
    with caplog.at_level(logging.WARNING):
        romeo.send("<presence/>")
    assert "unreadable offline message" in caplog.text
    assert world.storage.offline_messages("romeo") == []


def test_messages_kept_by_the_session_layer_without_delay_are_delivered(world):
    world.storage.store_offline(
        "romeo", b"<message from='juliet@example.com/balcony' to='romeo@example.com' "
                 b"type='chat'><body>kept</body></message>")
    romeo = world.login("romeo@example.com/orchard", keep=True)
    assert [s.findtext(C + "body") for s in romeo.take() if s.tag == C + "message"] == ["kept"]


# ---------------------------------------------------------------------------
# Errors (RFC 6120 §8.3)


def test_message_to_an_unknown_user_is_service_unavailable(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(chat("tybalt@example.com", body="Who's there?", id="q1"))
    reply = juliet.only()
    assert is_error(reply, "service-unavailable")
    assert reply.get("to") == "juliet@example.com/balcony"
    assert reply.get("from") == "tybalt@example.com"
    assert reply.get("id") == "q1"
    assert reply.findtext(C + "body") == "Who's there?"  # the original content comes back
    assert reply.find(C + "error").get("type") == "cancel"


def test_an_error_is_never_answered_with_an_error(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(chat("tybalt@example.com", mtype="error"))
    juliet.send("<iq type='error' to='tybalt@example.com/x' id='e1'/>")
    juliet.send("<presence type='error' to='tybalt@example.org'/>")
    juliet.nothing()


def test_bounce_swaps_addresses_and_refuses_error_stanzas():
    original = stanza("<iq type='get' id='x' from='a@example.com/r' to='b@example.com'>"
                      "<query xmlns='jabber:iq:version'/></iq>")
    reply = bounce(original, StanzaError(Cond.FEATURE_NOT_IMPLEMENTED, "later"))
    assert (reply.get("to"), reply.get("from"), reply.get("type"), reply.get("id")) == (
        "a@example.com/r", "b@example.com", "error", "x")
    assert reply[0].tag == "{jabber:iq:version}query"
    assert condition(reply) == "feature-not-implemented"
    assert reply.find(C + "error").findtext(q(STANZA_ERRORS_NS, "text")) == "later"
    assert bounce(reply, Cond.BAD_REQUEST) is None


def test_message_to_another_domain_is_remote_server_not_found(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(chat("mercutio@verona.example"))
    reply = juliet.only()
    assert is_error(reply, "remote-server-not-found")
    assert reply.get("from") == "mercutio@verona.example"


def test_malformed_to_is_jid_malformed_without_echoing_it(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(chat("romeo@exa mple.com"))
    reply = juliet.only()
    assert is_error(reply, "jid-malformed")
    assert reply.get("from") is None


def test_message_to_the_server_is_service_unavailable(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(chat("example.com"))
    assert is_error(juliet.only(), "service-unavailable")


def test_a_bug_in_a_handler_is_internal_server_error_and_logged(world, monkeypatch, caplog):
    juliet = world.login("juliet@example.com/balcony")

    def broken(session, query):
        raise RuntimeError("boom")

    monkeypatch.setattr(world.router.roster, "get", broken)
    with caplog.at_level(logging.ERROR):
        juliet.send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
    assert is_error(juliet.only(), "internal-server-error")
    assert "boom" in caplog.text


# ---------------------------------------------------------------------------
# IQ routing (RFC 6120 §8.2.3, §10; RFC 6121 §8.5)


@pytest.mark.parametrize("iq", [
    "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>",                   # no id
    "<iq type='get' id=''><ping xmlns='urn:xmpp:ping'/></iq>",             # empty id
    "<iq type='fetch' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",          # bad type
    "<iq id='1'><ping xmlns='urn:xmpp:ping'/></iq>",                       # no type
    "<iq type='get' id='1'/>",                                             # no payload
    "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/>"
    "<query xmlns='jabber:iq:version'/></iq>",                             # two payloads
    "<iq type='result'/>",                                                 # result without id
])
def test_malformed_iq_is_bad_request(world, iq):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send(iq)
    assert is_error(juliet.only(), "bad-request")


def test_iq_to_a_connected_full_jid_is_forwarded_and_so_is_its_result(world):
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")
    juliet.send("<iq type='get' id='v1' to='romeo@example.com/orchard'>"
                "<query xmlns='jabber:iq:version'/></iq>")
    request = romeo.only()
    assert request.get("from") == "juliet@example.com/balcony"
    assert request.get("id") == "v1"
    romeo.send("<iq type='result' id='v1' to='juliet@example.com/balcony'>"
               "<query xmlns='jabber:iq:version'><name>ladder</name></query></iq>")
    result = juliet.only()
    assert result.get("from") == "romeo@example.com/orchard"
    assert result.get("type") == "result"


def test_iq_to_a_gone_resource_is_service_unavailable_but_results_are_dropped(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<iq type='get' id='v1' to='romeo@example.com/orchard'>"
                "<query xmlns='jabber:iq:version'/></iq>")
    reply = juliet.only()
    assert is_error(reply, "service-unavailable")
    assert reply.get("from") == "romeo@example.com/orchard"
    juliet.send("<iq type='result' id='v1' to='romeo@example.com/orchard'/>")
    juliet.send("<iq type='result' id='v2' to='example.com'/>")
    juliet.send("<iq type='result' id='v3'/>")
    juliet.nothing()


def test_iq_to_an_unknown_users_full_jid_is_service_unavailable(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<iq type='get' id='v1' to='tybalt@example.com/sword'>"
                "<query xmlns='jabber:iq:version'/></iq>")
    assert is_error(juliet.only(), "service-unavailable")


def test_iq_to_another_domain_is_remote_server_not_found(world):
    juliet = world.login("juliet@example.com/balcony")
    juliet.send("<iq type='get' id='p' to='verona.example'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert is_error(juliet.only(), "remote-server-not-found")


# ---------------------------------------------------------------------------
# The registry: conflicts, endings, shutdown


def test_a_new_login_with_the_same_full_jid_closes_the_older_with_conflict(world):
    world.subscribed("juliet", "romeo")
    romeo = world.login("romeo@example.com/orchard")
    old = world.login("juliet@example.com/balcony")
    romeo.take()

    new = world.connect("juliet@example.com/balcony")

    assert old.closed
    assert old.close_error.condition is StreamErrorCondition.CONFLICT
    assert not new.closed
    assert world.router.sessions_of(JID.parse("juliet@example.com")) == [new]
    gone = romeo.only()  # the old session's presence ends with it
    assert (gone.get("type"), gone.get("from")) == ("unavailable", "juliet@example.com/balcony")

    romeo.send(chat("juliet@example.com/balcony", body="still there?"))
    assert new.only().findtext(C + "body") == "still there?"
    old.nothing()


def test_a_late_end_of_a_replaced_session_changes_nothing(world):
    old = FakeSession(world.router, "juliet@example.com/balcony")
    old.close = lambda error=None: setattr(old, "close_error", error)  # ends later
    world.router.session_bound(old)
    new = world.login("juliet@example.com/balcony")
    world.router.session_ended(old)  # the old stream finally goes
    assert world.router.session_for(JID.parse("juliet@example.com/balcony")) is new
    old.send(chat("romeo@example.com"))  # stragglers are dropped
    assert world.storage.offline_messages("romeo") == []


def test_session_ended_unregisters(world):
    juliet = world.login("juliet@example.com/balcony")
    chamber = world.login("juliet@example.com/chamber")
    world.router.session_ended(juliet)
    assert world.router.sessions_of(JID.parse("juliet@example.com")) == [chamber]
    world.router.session_ended(chamber)
    assert world.router.sessions_of(JID.parse("juliet@example.com")) == []


def test_shutdown_closes_sessions_and_later_messages_are_stored(world):
    juliet = world.login("juliet@example.com/balcony")
    romeo = world.login("romeo@example.com/orchard")
    world.router.shutdown()
    assert juliet.closed and romeo.closed
    assert romeo.close_error.condition is StreamErrorCondition.SYSTEM_SHUTDOWN
    assert world.router.sessions_of(JID.parse("romeo@example.com")) == []
    latecomer = world.login("juliet@example.com/again")
    latecomer.send(chat("romeo@example.com"))
    assert len(world.storage.offline_messages("romeo")) == 1


# ---------------------------------------------------------------------------
# The shape: what a session asks of the router, and the dispatch table


def test_the_router_answers_every_call_a_session_makes():
    """``SessionContext.router`` is a ``SessionRouter``: the router has each of
    its calls, with the same parameters."""
    calls = [name for name in vars(SessionRouter) if not name.startswith("_")]
    assert calls == ["bind_refusal", "session_bound", "stanza_from", "session_ended",
                     "keep_for_later", "keep_all_for_later", "bounce_to_local",
                     "resumable", "resumption", "session_resumed"]     # XEP-0198: the last 3
    for name in calls:
        wanted = inspect.signature(getattr(SessionRouter, name)).parameters
        assert list(inspect.signature(getattr(Router, name)).parameters) == list(wanted), name


def test_every_message_and_iq_has_a_handler_wherever_it_is_addressed(world):
    table = world.router._table
    for kind in (C + "message", C + "iq"):
        assert {addressing for k, addressing in table if k == kind} == set(Addressing)


def test_stanzas_that_are_not_message_presence_or_iq_are_ignored(world):
    juliet = world.login("juliet@example.com/balcony")
    world.router.stanza_from(juliet, Element("{urn:example}thing"))
    juliet.nothing()
