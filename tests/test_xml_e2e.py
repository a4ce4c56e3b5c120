"""End to end: a stanza with ``<xml:x/>`` through python -m iim.server (issue 10 part 4).

Alice sends the bytes herself, bypassing her own serializer, as a hostile or
merely unusual client would. Bob reads with slixmpp (ElementTree), Carol with
iim's own client-side parser. The message is legal XML with namespaces, so it
is delivered as sent; both stay connected (a later message still arrives), and
so does Alice, who gets their answers.
"""

import asyncio

import pytest

from live import DOMAIN, Client, LiveServer, next_item
from rawclient import RawClient

XML_NS = "http://www.w3.org/XML/1998/namespace"
USERS = (("alice", "alice-pw-1"), ("bob", "bob-pw-2"), ("carol", "carol-pw-3"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, ca):
    live = LiveServer(tmp_path_factory.mktemp("xml-e2e"), ca, users=USERS)
    live.add_users()
    live.start()
    yield live
    assert live.stop() == 0


def send_raw(client: RawClient, data: bytes) -> None:
    """Bytes onto the client's TLS stream as they are, not through ``to_bytes``."""
    client.writer.write(client.tls.send(data))


async def next_stanza(client: RawClient, seen: int, timeout: float = 10):
    async def arrived():
        while len(client.stanzas) <= seen:
            await asyncio.sleep(0.02)
        return client.stanzas[seen]
    return await asyncio.wait_for(arrived(), timeout)


def message(to: str, body: str, payload: str = "") -> bytes:
    return (f"<message to='{to}@{DOMAIN}/{to[0]}' type='chat'><body>{body}</body>{payload}"
            f"</message>").encode()


def test_xml_prefixed_child_is_delivered_and_nobody_is_disconnected(server):
    async def scenario():
        alice = await RawClient(f"alice@{DOMAIN}/a", "alice-pw-1", server.ca_file).connect(
            server.port)
        bob = Client(f"bob@{DOMAIN}/b", "bob-pw-2", server.ca_file)
        bob_dropped = []
        bob.add_event_handler("disconnected", lambda *_: bob_dropped.append(True))
        await bob.online(server.port)
        carol = await RawClient(f"carol@{DOMAIN}/c", "carol-pw-3", server.ca_file).connect(
            server.port)
        payload = "<xml:x xml:lang='en'>hi</xml:x>"
        for user in ("bob", "carol"):
            send_raw(alice, message(user, "odd", payload))
            send_raw(alice, message(user, "after"))
        got_bob = [await next_item(bob.received), await next_item(bob.received)]
        got_carol = [await next_stanza(carol, 0), await next_stanza(carol, 1)]
        bob.send_message(mto=f"alice@{DOMAIN}/a", mbody="from bob", mtype="chat")
        send_raw(carol, message("alice", "from carol"))
        answers = [await next_stanza(alice, 0), await next_stanza(alice, 1)]
        ended = (alice.ended, carol.ended, bool(bob_dropped))
        await bob.offline()
        await alice.close()
        await carol.close()
        return [m.xml for m in got_bob], got_carol, answers, ended

    got_bob, got_carol, answers, ended = asyncio.run(asyncio.wait_for(scenario(), 60))
    for odd, after in (got_bob, got_carol):
        x = odd.find("{%s}x" % XML_NS)
        assert x is not None, odd
        assert (x.text, x.get("{%s}lang" % XML_NS)) == ("hi", "en")
        assert after.find("{jabber:client}body").text == "after"
    bodies = sorted(answer.find("{jabber:client}body").text for answer in answers)
    assert bodies == ["from bob", "from carol"]
    assert ended == (None, None, False)
