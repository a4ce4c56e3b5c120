"""BOSH (XEP-0124/0206) at /http-bind: the sans-I/O session core, then transcripts on a live gateway.

The core's tests feed rids and a clock by hand. The live ones run an
in-process server (tests/webgw.py) on 127.0.0.1 and post bodies with
aiohttp's client, as XEP-0124's examples read; one has a BOSH user, a
WebSocket user and a slixmpp user on iim_server.port talk to each other.
"""

from __future__ import annotations

import asyncio
import re
from xml.etree import ElementTree as ET

import pytest

from iim.server.web.bosh import BoshCore, BoshError, Condition, Resend
from live import Client, next_item
from webgw import DEADLINE, HTTPBIND, STREAMS, BoshClient, WebServer, WsClient, run

B = f"{{{HTTPBIND}}}"
MSG = "<message xmlns='jabber:client' to='{to}' type='chat' id='{id}'><body>{body}</body></message>"


# -- the core, in memory ---------------------------------------------------------------------


def core(**kw) -> BoshCore:
    options = {"rid": 10, "wait": 30, "hold": 1, "now": 0.0, "inactivity": 60}
    return BoshCore(**{**options, **kw})


def test_a_request_that_overtakes_an_earlier_one_waits_for_it():
    c = core()
    assert c.receive(10, "creation", 0) == ["creation"]
    assert c.receive(12, "second", 1) == []              # 11 is missing: nothing yet
    assert c.receive(11, "first", 1) == ["first", "second"]   # then both, in rid order


def test_data_goes_to_the_oldest_held_request_and_extra_held_ones_are_answered_empty():
    c = core(hold=1)
    c.receive(10, None, 0)
    assert c.ready(0) == []                          # held, nothing to say
    c.receive(11, None, 1)                           # two held, hold=1: the older goes
    [(rid, text)] = c.ready(1)
    assert rid == 10 and "<message" not in text
    c.push("<message xmlns='jabber:client'/>")
    [(rid, text)] = c.ready(1)
    assert rid == 11 and "<message xmlns='jabber:client'/>" in text


def test_a_held_request_is_answered_empty_when_its_wait_runs_out():
    c = core(wait=5)
    c.receive(10, None, 0)
    assert c.deadline() == 5
    assert c.ready(4.9) == []
    assert [rid for rid, _ in c.ready(5)] == [10]


def test_a_resent_rid_gets_the_same_answer_again():
    c = core()
    c.receive(10, None, 0)
    c.push("<presence xmlns='jabber:client'/>")
    [(_, text)] = c.ready(0)
    assert c.receive(10, None, 1) == [Resend(text)]


@pytest.mark.parametrize("rid", [9, 13, 100])     # 11 and 12 may be in flight
def test_a_rid_outside_the_window_is_item_not_found(rid):
    c = core()
    c.receive(10, None, 0)
    with pytest.raises(BoshError) as refused:
        c.receive(rid, None, 0)
    assert refused.value.condition is Condition.ITEM_NOT_FOUND


def test_polling_hold_zero_answers_every_request_at_once():
    c = core(hold=0)
    c.receive(10, None, 0)
    assert [rid for rid, _ in c.ready(0)] == [10]
    c.push("<message xmlns='jabber:client'/>")      # waits for the next poll
    c.receive(11, None, 2)
    [(rid, text)] = c.ready(2)
    assert rid == 11 and "<message" in text


def test_a_session_without_a_held_request_expires_after_inactivity():
    c = core(inactivity=60)
    c.receive(10, None, 0)
    c.ready(30)                                      # the wait ran out: answered
    assert not c.expired(89)
    assert c.expired(90)


def test_an_ended_session_is_forgotten_sooner_than_an_idle_one():
    c = core(inactivity=60)
    c.receive(10, None, 0)
    c.end()
    c.ready(1)                                       # the terminate answer
    assert c.deadline() == 11 and not c.expired(10.9) and c.expired(11)


def test_the_end_of_the_stream_answers_every_held_request_with_terminate():
    c = core(hold=1)
    c.receive(10, None, 0)
    c.push("<stream:error xmlns:stream='http://etherx.jabber.org/streams'/>")
    c.end(with_error=True)
    [(rid, text)] = c.ready(0)
    body = ET.fromstring(text)
    assert body.get("type") == "terminate" and body.get("condition") == "remote-stream-error"
    assert body.find(f"{{{STREAMS}}}error") is not None


# -- live: transcripts ------------------------------------------------------------------------


def test_session_creation_carries_the_attributes_and_the_features(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = BoshClient(server)
            first = await client.create(wait=10, hold=1)
            assert first.get("sid") and first.get("ver") == "1.11"
            assert (first.get("wait"), first.get("hold"), first.get("requests")) == ("10", "1", "2")
            assert first.get("from") == "example.com" and first.get("authid")
            assert first.get("{urn:xmpp:xbosh}version") == "1.0"
            features = first.find(f"{{{STREAMS}}}features")
            assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
            assert client.last_headers["Content-Type"].startswith("text/xml")
            assert client.last_headers["Cache-Control"] == "no-store"
            await client.close()
    run(scenario)


def test_bosh_websocket_and_tcp_users_talk_to_each_other(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            romeo = Client("romeo@example.com/tcp", "secret", server.ca_file)
            await romeo.online(server.port)
            nurse = await WsClient.connect(server)
            await nurse.login("nurse")
            await nurse.send("<presence xmlns='jabber:client'/>")
            await nurse.frame()
            juliet = BoshClient(server)
            assert await juliet.login("juliet") == "juliet@example.com/bosh"
            await juliet.post("<presence xmlns='jabber:client'/>")
            # a request held for juliet, while romeo writes to her
            held = asyncio.ensure_future(juliet.post())
            await asyncio.sleep(0)
            romeo.send_message(mto="juliet@example.com/bosh", mbody="hist", mtype="chat")
            reply = await held
            while reply.find("{jabber:client}message") is None:    # her own presence first
                reply = await juliet.post()
            message = reply.find("{jabber:client}message")
            assert message.get("from") == "romeo@example.com/tcp"
            assert message.findtext("{jabber:client}body") == "hist"
            sending = asyncio.ensure_future(juliet.post(          # held until nurse answers
                MSG.format(to="romeo@example.com/tcp", id="j1", body="romeo!")
                + MSG.format(to="nurse@example.com/web", id="j2", body="anon!")))
            answer = await next_item(romeo.received)
            assert answer["body"] == "romeo!" and str(answer["from"]) == "juliet@example.com/bosh"
            to_nurse = await nurse.frame()
            assert to_nurse.findtext("{jabber:client}body") == "anon!"
            await nurse.send(MSG.format(to="juliet@example.com/bosh", id="n1", body="madam"))
            reply = await sending
            assert reply.find("{jabber:client}message").findtext("{jabber:client}body") == "madam"
            await romeo.offline()
            await nurse.close()
            await juliet.close()
    run(scenario)


def test_stanzas_arrive_in_order_across_overlapping_requests(tmp_path, ca):
    """Juliet's request rid+2 overtakes rid+1: what it carries reaches Romeo
    only after what rid+1 carries; messages for her go to the oldest held
    request, so she reads them in the order they were sent."""
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            juliet = BoshClient(server)
            await juliet.login("juliet")
            romeo = await WsClient.connect(server)
            await romeo.login("romeo")
            core = server.server.web.bosh.by_sid[juliet.sid].core
            rid = juliet.rid
            later = asyncio.ensure_future(juliet.post(
                MSG.format(to="romeo@example.com/web", id="j2", body="second"), rid=rid + 2))
            while rid + 2 not in core.waiting:           # it arrived; rid+1 has not
                await asyncio.sleep(0.005)
            for n in range(2):
                await romeo.send(MSG.format(to="juliet@example.com/bosh", id=f"m{n}", body=n))
            while core.queued == 0 or len(core.queue) < 2:
                await asyncio.sleep(0.005)
            earlier = await juliet.post(
                MSG.format(to="romeo@example.com/web", id="j1", body="first"), rid=rid + 1)
            assert [m.findtext("{jabber:client}body") for m in
                    earlier.iter("{jabber:client}message")] == ["0", "1"]
            assert [(await romeo.frame()).findtext("{jabber:client}body") for _ in range(2)] \
                == ["first", "second"]
            await romeo.send(MSG.format(to="juliet@example.com/bosh", id="m2", body=2))
            reply = await later                             # still held: it gets m2
            assert [m.findtext("{jabber:client}body") for m in
                    reply.iter("{jabber:client}message")] == ["2"]
            await romeo.close()
            await juliet.close()
    run(scenario)


def test_terminate_ends_the_stream_and_later_requests_are_told(tmp_path, ca, caplog):
    caplog.set_level("INFO")

    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            juliet = BoshClient(server)
            await juliet.login("juliet")
            reply = await juliet.post("<presence xmlns='jabber:client' type='unavailable'/>",
                                      type="terminate")
            assert reply.get("type") == "terminate" and reply.get("condition") is None
            again = await juliet.post()
            assert again.get("type") == "terminate"
            assert "logout juliet@example.com/bosh" in caplog.text
            await juliet.close()
    run(scenario)


# -- live: errors ------------------------------------------------------------------------------


def test_an_unknown_sid_is_item_not_found(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = BoshClient(server)
            client.sid = "no-such-session"
            reply = await client.post()
            assert (reply.get("type"), reply.get("condition")) == ("terminate", "item-not-found")
            await client.close()
    run(scenario)


def test_an_expired_sid_is_item_not_found_and_the_user_is_logged_out(tmp_path, ca, caplog):
    caplog.set_level("INFO")

    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            server.server.web.bosh.inactivity = 0.2
            client = BoshClient(server)
            await client.login("juliet")
            sessions = server.server.ctx.sessions
            deadline = asyncio.get_running_loop().time() + DEADLINE
            while sessions and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)             # no request held: it expires
            assert not sessions
            reply = await client.post()
            assert reply.get("condition") == "item-not-found"
            assert "logout juliet@example.com/bosh" in caplog.text
            await client.close()
    run(scenario)


def test_a_rid_out_of_the_window_ends_the_session(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = BoshClient(server)
            await client.login("juliet")
            reply = await client.post(rid=client.rid + 50)
            assert reply.get("condition") == "item-not-found"
            reply = await client.post()
            assert reply.get("condition") == "item-not-found"     # the session is gone
            assert not server.server.ctx.sessions
            await client.close()
    run(scenario)


@pytest.mark.parametrize("bad", ["rid='x'", "rid='-1'", ""])
def test_a_missing_or_malformed_rid_is_bad_request(tmp_path, ca, bad):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = BoshClient(server)
            status, text = await client.raw(f"<body xmlns='{HTTPBIND}' {bad} to='example.com'/>")
            reply = ET.fromstring(text)
            assert status == 200 and reply.get("condition") == "bad-request"
            await client.close()
    run(scenario)


@pytest.mark.parametrize("data", ["<body xmlns='urn:wrong' rid='1'/>", "<body",
                                  "<!DOCTYPE x><body xmlns='http://jabber.org/protocol/httpbind'/>"])
def test_a_body_that_is_not_a_bosh_body_is_bad_request(tmp_path, ca, data):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = BoshClient(server)
            status, text = await client.raw(data)
            assert status == 200 and ET.fromstring(text).get("condition") == "bad-request"
            await client.close()
    run(scenario)


def test_an_oversized_body_is_413_policy_violation(tmp_path, ca):
    async def scenario():
        extra = 'iim_server.maxstanzasize = "10000"\n'
        async with WebServer(tmp_path, ca, extra=extra) as server:
            client = BoshClient(server)
            status, text = await client.raw("<body>" + "x" * 40000 + "</body>")
            assert status == 413 and ET.fromstring(text).get("condition") == "policy-violation"
            await client.close()
    run(scenario)


def test_a_stanza_over_maxstanzasize_inside_a_body_is_a_remote_stream_error(tmp_path, ca):
    async def scenario():
        extra = 'iim_server.maxstanzasize = "10000"\n'
        async with WebServer(tmp_path, ca, extra=extra) as server:
            client = BoshClient(server)
            await client.login("juliet")
            reply = await client.post(MSG.format(to="romeo@example.com", id="big",
                                                 body="x" * 12000))
            assert reply.get("condition") == "remote-stream-error"
            error = reply.find(f"{{{STREAMS}}}error")
            assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
            await client.close()
    run(scenario)


def test_plain_http_is_refused_under_requiressl(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=True) as server:
            client = BoshClient(server, secure=False)
            status, text = await client.raw(f"<body xmlns='{HTTPBIND}' rid='1' to='example.com'/>")
            assert status == 403 and "iim_server.requiressl" in text
            assert f"https://127.0.0.1:{server.http_port}/http-bind" in text
            await client.close()
    run(scenario)


def test_cors_only_for_allowed_origins(tmp_path, ca):
    async def scenario():
        extra = 'iim_server.http_origins = "https://chat.example.net"\n'
        async with WebServer(tmp_path, ca, extra=extra) as server:
            url, tls = server.url("/http-bind"), server.client_tls()
            client = BoshClient(server)
            preflight = {"Origin": "https://chat.example.net",
                         "Access-Control-Request-Method": "POST"}
            async with client.http.options(url, headers=preflight, ssl=tls) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == "https://chat.example.net"
                assert "POST" in r.headers["Access-Control-Allow-Methods"]
            evil = {**preflight, "Origin": "https://evil.example.org"}
            async with client.http.options(url, headers=evil, ssl=tls) as r:
                assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
            other = BoshClient(server, origin="https://evil.example.org")
            status, _ = await other.raw(f"<body xmlns='{HTTPBIND}' rid='1' to='example.com'/>")
            assert status == 403
            allowed = BoshClient(server, origin="https://chat.example.net")
            first = await allowed.create()
            assert first.get("sid")
            assert allowed.last_headers["Access-Control-Allow-Origin"] == "https://chat.example.net"
            for c in (client, other, allowed):
                await c.close()
    run(scenario)


def test_session_creation_counts_against_the_per_source_limit(tmp_path, ca):
    async def scenario():
        extra = 'iim_server.max_unauthenticated_per_source = "2"\n'
        async with WebServer(tmp_path, ca, extra=extra) as server:
            clients = [BoshClient(server) for _ in range(3)]
            for client in clients[:2]:
                assert (await client.create()).get("type") is None
            third = await clients[2].create()
            assert third.get("condition") == "remote-stream-error"
            error = third.find(f"{{{STREAMS}}}error")
            assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
            for client in clients:
                await client.close()
    run(scenario)


def test_the_sid_is_long_and_random(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            sids = set()
            for _ in range(3):
                client = BoshClient(server)
                sids.add((await client.create()).get("sid"))
                await client.close()
            assert len(sids) == 3 and all(re.fullmatch(r"[A-Za-z0-9_-]{24}", s) for s in sids)
    run(scenario)


def test_a_bosh_session_is_described_by_its_https_connection(tmp_path, ca):
    """The security query (iim/server/security_info.py) names the HTTPS layer;
    status counts the session as TLS with this server."""
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = BoshClient(server)
            await client.login("juliet")
            reply = await client.post("<iq xmlns='jabber:client' type='get' id='s1'>"
                                      "<security xmlns='urn:xmpp:iim:security:0'/></iq>")
            security = reply.find(".//{urn:xmpp:iim:security:0}security")
            assert security.get("secure") == "true", ET.tostring(reply)
            [tls] = security.findall("{urn:xmpp:iim:security:0}tls")
            assert (tls.get("layer"), tls.get("ends")) == ("https", "server")
            assert tls.get("version") in ("TLSv1.2", "TLSv1.3")
            status = server.server.status()
            assert status["sessions"]["tls"] == 1 and status["sessions"]["legacy-ssl"] == 0
            await client.close()
    run(scenario)


def test_a_session_opened_over_https_does_not_continue_over_plain_http(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:         # plain allowed: requiressl off
            client = BoshClient(server)
            await client.login("juliet")
            client.secure = False
            reply = await client.post()
            assert reply.get("condition") == "policy-violation"
            await client.close()
    run(scenario)


def test_a_request_sent_again_gets_the_same_answer(tmp_path, ca):
    """XEP-0124 §14.3: a response lost on the network; the client sends the same rid."""
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = BoshClient(server)
            await client.login("juliet")
            first = await client.post("<iq xmlns='jabber:client' type='get' id='r1'>"
                                      "<query xmlns='jabber:iq:roster'/></iq>")
            again = await client.post("<iq xmlns='jabber:client' type='get' id='r2'>"
                                      "<query xmlns='jabber:iq:roster'/></iq>", rid=client.rid)
            assert ET.tostring(again) == ET.tostring(first)
            assert first.find("{jabber:client}iq").get("id") == "r1"
            await asyncio.sleep(0)
            assert server.server.web.bosh.by_sid[client.sid].core.queue == []   # r2 not run
            await client.close()
    run(scenario)
