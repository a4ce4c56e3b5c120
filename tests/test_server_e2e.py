"""End to end: python -m iim.server on 127.0.0.1 with slixmpp clients and openssl s_client.

Every client verifies the server certificate (made by keytool, signed by the
test CA) and refuses to continue without TLS.
"""

import asyncio
import subprocess

import pytest

from live import DOMAIN, Client, LiveServer, next_item


@pytest.fixture(scope="module")
def server(tmp_path_factory, ca):
    live = LiveServer(tmp_path_factory.mktemp("e2e"), ca)
    live.add_users()
    live.start()
    yield live
    assert live.stop() == 0


def jid(user):
    return f"{user}@{DOMAIN}"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_two_users_chat_over_starttls_with_verified_certificates(server):
    async def scenario():
        alice = await Client(jid("alice") + "/phone", "alice-pw-1", server.ca_file).online(server.port)
        bob = await Client(jid("bob") + "/desk", "bob-pw-2", server.ca_file).online(server.port)
        alice.send_message(mto=jid("bob"), mbody="hello bob", mtype="chat")
        got = await next_item(bob.received)
        bob.send_message(mto=got["from"], mbody="hi alice", mtype="chat")
        back = await next_item(alice.received)
        await alice.offline()
        await bob.offline()
        return got, back

    got, back = run(scenario())
    assert (str(got["from"]), got["body"]) == (jid("alice") + "/phone", "hello bob")
    assert (str(back["from"]), back["body"]) == (jid("bob") + "/desk", "hi alice")
    log = server.log()
    assert "login alice (SCRAM-SHA-256)" in log
    assert "TLS established TLSv1.3" in log


def test_subscription_presence_and_roster_pushes(server):
    async def scenario():
        alice = await Client(jid("alice"), "alice-pw-1", server.ca_file).online(server.port)
        bob = await Client(jid("bob"), "bob-pw-2", server.ca_file).online(server.port)
        alice.send_presence(pto=jid("bob"), ptype="subscribe")
        request = await next_item(bob.subscribe_requests)
        pending = await next_item(alice.roster_pushes)       # RFC 6121 §3.1.2: ask='subscribe'
        bob.send_presence(pto=jid("alice"), ptype="subscribed")
        approved = await next_item(alice.roster_pushes)      # §3.1.6: subscription='to'
        seen = await _presence_from(alice, jid("bob"), "available")
        await bob.offline()
        gone = await _presence_from(alice, jid("bob"), "unavailable")
        await alice.offline()
        return request, pending, approved, seen, gone

    request, pending, approved, seen, gone = run(scenario())
    assert str(request["from"].bare) == jid("alice")
    assert items(pending)[jid("bob")]["subscription"] == "none"
    assert items(pending)[jid("bob")]["ask"] == "subscribe"
    assert items(approved)[jid("bob")]["subscription"] == "to"
    assert seen["type"] == "available" and gone["type"] == "unavailable"


def items(roster_push):
    return {str(k): v for k, v in roster_push["roster"]["items"].items()}


async def _presence_from(client, bare, kind):
    while True:
        presence = await next_item(client.presences)
        if str(presence["from"].bare) == bare and presence["type"] == kind:
            return presence


def test_wrong_password_is_refused(server):
    async def scenario():
        client = Client(jid("alice"), "wrong", server.ca_file)
        client.connect("127.0.0.1", server.port)
        await asyncio.wait_for(client.failed.wait(), 20)
        client.disconnect()
        return client.started.is_set()

    assert run(scenario()) is False
    assert "wrong" not in server.log()


def test_openssl_s_client_starttls_xmpp_shows_the_keystore_chain(server):
    proc = subprocess.run(
        ["openssl", "s_client", "-starttls", "xmpp", "-xmpphost", DOMAIN,
         "-connect", f"127.0.0.1:{server.port}", "-CAfile", str(server.ca_file),
         "-verify_return_error", "-showcerts"],
        input="", capture_output=True, text=True, timeout=30)
    out = proc.stdout
    assert "Verify return code: 0 (ok)" in out, out + proc.stderr
    assert f"CN = {DOMAIN}" in out and "CN = iim test CA" in out
    assert "Protocol  : TLSv1.3" in out or "TLSv1.3" in out


def test_tls_1_1_is_refused_by_the_server(server):
    proc = subprocess.run(
        ["openssl", "s_client", "-starttls", "xmpp", "-xmpphost", DOMAIN, "-tls1_1",
         "-cipher", "DEFAULT:@SECLEVEL=0", "-connect", f"127.0.0.1:{server.port}"],
        input="", capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "Cipher is (NONE)" in proc.stdout or "alert protocol version" in proc.stderr
