"""IQs the server answers: ping (XEP-0199), disco (XEP-0030), version (XEP-0092),
and IQs to a user's bare JID answered on the user's behalf (RFC 6121 §8.5.2)."""

from __future__ import annotations

import pytest

from iim import __version__
from iim.server.services import IqType, Services
from iim.server.storage import Subscription
from iim.xmpp.errors import StanzaError, StanzaErrorCondition as Cond
from iim.xmpp.ns import DISCO_INFO_NS, PING_NS, VERSION_NS, q
from test_router import is_error, stanza, storage, world  # noqa: F401 - fixtures

INFO = "{http://jabber.org/protocol/disco#info}"
ITEMS = "{http://jabber.org/protocol/disco#items}"
PING = "<ping xmlns='urn:xmpp:ping'/>"
DISCO = "<query xmlns='http://jabber.org/protocol/disco#info'/>"


def iq(payload: str, to: str | None = None, type: str = "get", id: str = "s1") -> str:
    to_attr = "" if to is None else f" to='{to}'"
    return f"<iq type='{type}' id='{id}'{to_attr}>{payload}</iq>"


def features(result):
    return {f.get("var") for f in result.find(INFO + "query").findall(INFO + "feature")}


def identities(result):
    return [(i.get("category"), i.get("type"))
            for i in result.find(INFO + "query").findall(INFO + "identity")]


@pytest.fixture
def juliet(world):
    return world.login("juliet@example.com/balcony")


# ---------------------------------------------------------------------------
# The server itself


def test_ping_to_the_server_is_an_empty_result(juliet):
    juliet.send(iq(PING, to="example.com", id="c2s1"))
    result = juliet.only()
    assert (result.get("type"), result.get("id")) == ("result", "c2s1")
    assert (result.get("from"), result.get("to")) == ("example.com", "juliet@example.com/balcony")
    assert len(result) == 0


def test_ping_without_to_is_answered_without_from(juliet):
    juliet.send(iq(PING))
    result = juliet.only()
    assert result.get("type") == "result" and result.get("from") is None


def test_disco_info_names_the_server_and_its_features(juliet):
    juliet.send(iq(DISCO, to="example.com"))
    result = juliet.only()
    assert result.get("type") == "result"
    assert identities(result) == [("server", "im")]
    assert {DISCO_INFO_NS, PING_NS, VERSION_NS, "msgoffline"} <= features(result)


def test_disco_info_of_a_node_is_item_not_found(juliet):
    juliet.send(iq("<query xmlns='http://jabber.org/protocol/disco#info' node='x'/>",
                   to="example.com"))
    assert is_error(juliet.only(), "item-not-found")


def test_disco_items_of_the_server_is_empty(juliet):
    juliet.send(iq("<query xmlns='http://jabber.org/protocol/disco#items'/>", to="example.com"))
    result = juliet.only()
    assert result.find(ITEMS + "query") is not None
    assert len(result.find(ITEMS + "query")) == 0


def test_software_version(juliet):
    juliet.send(iq("<query xmlns='jabber:iq:version'/>", to="example.com"))
    query = juliet.only().find(q(VERSION_NS, "query"))
    assert query.findtext(q(VERSION_NS, "name")) == "iim"
    assert query.findtext(q(VERSION_NS, "version")) == __version__


@pytest.mark.parametrize("payload, type", [
    ("<vCard xmlns='vcard-temp'/>", "get"),
    ("<query xmlns='jabber:iq:private'><x xmlns='urn:example'/></query>", "get"),
    (PING, "set"),
    (DISCO, "set"),
])
def test_anything_else_is_service_unavailable_with_the_request_echoed(juliet, payload, type):
    juliet.send(iq(payload, to="example.com", type=type))
    reply = juliet.only()
    assert is_error(reply, "service-unavailable")
    assert reply.get("from") == "example.com"
    assert reply[0].tag == stanza(iq(payload)).find("*").tag


def test_results_and_errors_for_the_server_are_dropped(juliet):
    juliet.send(iq("", to="example.com", type="result"))
    juliet.send(iq(PING, to="example.com", type="error"))
    juliet.nothing()


# ---------------------------------------------------------------------------
# On a user's behalf (RFC 6121 §8.5.2.1.3, §8.5.2.2.3)


def test_ping_to_a_users_bare_jid_is_answered_by_the_server(world, juliet):
    romeo = world.login("romeo@example.com/orchard")
    juliet.send(iq(PING, to="romeo@example.com"))
    result = juliet.only()
    assert (result.get("type"), result.get("from")) == ("result", "romeo@example.com")
    romeo.nothing()                                       # never handed to a resource
    juliet.send(iq(PING, to="romeo@example.com", id="offline"))   # online or not
    assert juliet.only().get("type") == "result"


def test_iq_to_an_unknown_users_bare_jid_is_service_unavailable(juliet):
    juliet.send(iq(PING, to="tybalt@example.com"))
    assert is_error(juliet.only(), "service-unavailable")


def test_unknown_payload_to_a_bare_jid_is_service_unavailable(world, juliet):
    romeo = world.login("romeo@example.com/orchard")
    juliet.send(iq("<query xmlns='jabber:iq:version'/>", to="romeo@example.com"))
    assert is_error(juliet.only(), "service-unavailable")
    romeo.nothing()


def test_account_disco_only_for_those_allowed_to_see_presence(world, juliet):
    world.subscribed("romeo", "juliet", Subscription.TO)   # juliet lets romeo see her
    romeo = world.login("romeo@example.com/orchard")
    romeo.send(iq(DISCO, to="juliet@example.com"))
    assert identities(romeo.only()) == [("account", "registered")]
    juliet.send(iq(DISCO, to="romeo@example.com"))         # romeo does not let juliet
    assert is_error(juliet.only(), "service-unavailable")
    juliet.send(iq(DISCO, to="juliet@example.com"))        # her own account
    assert identities(juliet.only()) == [("account", "registered")]


# ---------------------------------------------------------------------------
# The Services object on its own


def test_services_table_directly():
    services = Services("example.com", software="iim-test", version="9")
    assert services.server(IqType.GET, stanza(iq(PING))[0]) is None
    with pytest.raises(StanzaError) as caught:
        services.server(IqType.GET, stanza(iq("<query xmlns='urn:example'/>"))[0])
    assert caught.value.condition is Cond.SERVICE_UNAVAILABLE
    with pytest.raises(StanzaError) as caught:
        services.account(IqType.GET, stanza(iq(DISCO))[0], visible=False)
    assert caught.value.condition is Cond.SERVICE_UNAVAILABLE
    assert IqType.GET.is_request and not IqType.RESULT.is_request
