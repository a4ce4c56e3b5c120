"""XMPP over WebSocket (RFC 7395) on the gateway: transcripts of the framing and its errors.

Each test runs an in-process server (tests/webgw.py) on real sockets on
127.0.0.1 and talks to ``/ws`` with aiohttp's WebSocket client, frame by
frame, as the RFC's examples read.
"""

from __future__ import annotations

import asyncio
import base64
from xml.etree import ElementTree as ET

import aiohttp
import pytest

from iim.conf import from_text
from live import Client, next_item
from webgw import (
    CLOSE, FRAMING, OPEN, SASL, STREAMS, WebServer, WsClient, run,
)

STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
CHAT = ("<message xmlns='jabber:client' to='{to}' type='chat' id='{id}'>"
        "<body>{body}</body></message>")


def condition(error: ET.Element) -> str:
    assert error.tag == f"{{{STREAMS}}}error", ET.tostring(error)
    [first, *_] = [child for child in error if child.tag.startswith(f"{{{STREAM_ERRORS}}}")]
    return first.tag.rpartition("}")[2]


async def stream_error(client: WsClient) -> str:
    """The stream error the server sent (after its <open/> if it had none yet),
    then <close/>, then the WebSocket's normal closure."""
    frame = await client.frame()
    if frame.tag == f"{{{FRAMING}}}open":
        frame = await client.frame()
    cond = condition(frame)
    assert (await client.frame()).tag == f"{{{FRAMING}}}close"
    assert await client.closed() == 1000
    return cond


# -- the framing (RFC 7395 §3.3-§3.6) ----------------------------------------------------------


def test_open_is_answered_with_open_and_features_without_starttls(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = await WsClient.connect(server)
            assert client.ws.protocol == "xmpp"
            await client.send(OPEN)
            opened = await client.frame()
            assert opened.tag == f"{{{FRAMING}}}open"
            assert opened.get("from") == "example.com" and opened.get("version") == "1.0"
            assert opened.get("id")
            features = await client.frame()
            assert features.tag == f"{{{STREAMS}}}features"
            assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
            mechanisms = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
            assert "PLAIN" in mechanisms                # TLS is the WebSocket's (wss)
            await client.send(CLOSE)
            assert (await client.frame()).tag == f"{{{FRAMING}}}close"
            assert await client.closed() == 1000
            await client.close()
    run(scenario)


def test_login_bind_and_a_message_between_two_websocket_users(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            juliet, romeo = await WsClient.connect(server), await WsClient.connect(server)
            assert await juliet.login("juliet") == "juliet@example.com/web"
            jid = await romeo.login("romeo", "orchard")
            assert jid == "romeo@example.com/orchard"
            await juliet.send("<presence xmlns='jabber:client'/>")
            assert (await juliet.frame()).tag == "{jabber:client}presence"
            await romeo.send(CHAT.format(to="juliet@example.com", id="m1", body="wherefore"))
            message = await juliet.frame()
            assert message.tag == "{jabber:client}message"
            assert message.get("from") == "romeo@example.com/orchard"
            assert message.findtext("{jabber:client}body") == "wherefore"
            for client in (juliet, romeo):
                await client.close()
    run(scenario)


def test_a_websocket_user_and_a_direct_tcp_user_exchange_messages(tmp_path, ca):
    """slixmpp over STARTTLS on iim_server.port, the other user on wss://.../ws."""
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            romeo = Client("romeo@example.com/tcp", "secret", server.ca_file)
            await romeo.online(server.port)
            juliet = await WsClient.connect(server)
            await juliet.login("juliet")
            await juliet.send("<presence xmlns='jabber:client'/>")
            await juliet.frame()
            romeo.send_message(mto="juliet@example.com", mbody="by yonder window", mtype="chat")
            message = await juliet.frame()
            assert message.get("from") == "romeo@example.com/tcp"
            assert message.findtext("{jabber:client}body") == "by yonder window"
            await juliet.send(CHAT.format(to="romeo@example.com/tcp", id="m2", body="ay me"))
            answer = await next_item(romeo.received)
            assert answer["body"] == "ay me" and str(answer["from"]) == "juliet@example.com/web"
            await romeo.offline()
            await juliet.close()
    run(scenario)


def test_closing_the_websocket_without_close_logs_the_user_out(tmp_path, ca, caplog):
    caplog.set_level("INFO")

    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            juliet = await WsClient.connect(server)
            await juliet.login("juliet")
            await juliet.ws.close()                 # no <close/>: a lost connection
            await juliet.http.close()
            for _ in range(200):
                if not server.server.ctx.sessions:
                    break
                await asyncio.sleep(0.01)
            assert not server.server.ctx.sessions
            assert "logout juliet@example.com/web" in caplog.text
    run(scenario)


# -- errors ----------------------------------------------------------------------------------


def test_a_websocket_without_the_xmpp_subprotocol_is_refused(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await WsClient.connect(server, protocols=("chat",))
            assert refused.value.status == 400
    run(scenario)


def test_a_message_that_is_not_one_complete_element_is_not_well_formed(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            for bad in ("<message xmlns='jabber:client'><body>", OPEN + OPEN,
                        "</stream:stream>", OPEN + "<presence xmlns='jabber:client'",
                        OPEN + "<x a='>"):
                client = await WsClient.connect(server)
                await client.send(bad)
                assert await stream_error(client) == "not-well-formed", bad
                await client.close()
    run(scenario)


def test_restricted_xml_is_refused_as_on_tcp(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = await WsClient.connect(server)
            await client.send(OPEN)
            await client.frame(), await client.frame()
            await client.send("<!DOCTYPE lol [<!ENTITY lol 'lol'>]><message xmlns='jabber:client'/>")
            assert await stream_error(client) == "restricted-xml"
            await client.close()
    run(scenario)


def test_a_binary_message_is_bad_format(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = await WsClient.connect(server)
            await client.ws.send_bytes(OPEN.encode())
            assert await stream_error(client) == "bad-format"
            await client.close()
    run(scenario)


def test_a_stanza_over_maxstanzasize_is_a_policy_violation(tmp_path, ca):
    async def scenario():
        extra = 'iim_server.maxstanzasize = "10000"\n'
        async with WebServer(tmp_path, ca, extra=extra) as server:
            client = await WsClient.connect(server)
            await client.login("juliet")
            await client.send(CHAT.format(to="romeo@example.com", id="big", body="x" * 12000))
            assert await stream_error(client) == "policy-violation"
            await client.close()
    run(scenario)


def test_a_frame_beyond_twice_maxstanzasize_is_not_read(tmp_path, ca):
    async def scenario():
        extra = 'iim_server.maxstanzasize = "10000"\n'
        async with WebServer(tmp_path, ca, extra=extra) as server:
            client = await WsClient.connect(server)
            await client.send("<a>" + "x" * 30000 + "</a>")
            message = await asyncio.wait_for(client.ws.receive(), 10)
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert message.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            await client.close()
    run(scenario)


def test_a_wrong_password_fails_and_the_stream_goes_on(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = await WsClient.connect(server)
            await client.send(OPEN)
            await client.frame(), await client.frame()
            token = base64.b64encode(b"\0juliet\0wrong").decode()
            await client.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
            failure = await client.frame()
            assert failure.tag == f"{{{SASL}}}failure"
            assert failure.find(f"{{{SASL}}}not-authorized") is not None
            await client.close()
    run(scenario)


# -- the TLS and Origin policies ---------------------------------------------------------------


def test_plain_http_carries_no_session_under_requiressl(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=True) as server:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await WsClient.connect(server, secure=False)
            assert refused.value.status == 403
            async with aiohttp.ClientSession() as http:
                async with http.get(server.url("/ws", secure=False)) as response:
                    assert response.status == 403
                    text = await response.text()
            assert "iim_server.requiressl" in text
            assert f"wss://127.0.0.1:{server.http_port}/ws" in text
            secure = await WsClient.connect(server)         # wss:// is fine
            await secure.login("juliet")
            await secure.close()
    run(scenario)


def test_plain_http_allowed_explicitly_offers_no_plain_password(tmp_path, ca):
    """http_allow_plain: a session over ws://, but SASL PLAIN is not offered
    on a connection nobody encrypts (SCRAM only)."""
    async def scenario():
        extra = 'iim_server.http_allow_plain = "true"\n'
        async with WebServer(tmp_path, ca, requiressl=True, extra=extra) as server:
            client = await WsClient.connect(server, secure=False)
            await client.send(OPEN)
            await client.frame()
            features = await client.frame()
            mechanisms = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
            assert mechanisms and "PLAIN" not in mechanisms
            assert any(m.startswith("SCRAM-") for m in mechanisms)
            await client.close()
    run(scenario)


def test_another_origin_is_refused_unless_listed(tmp_path, ca, caplog):
    async def scenario():
        extra = 'iim_server.http_origins = "https://chat.example.net"\n'
        async with WebServer(tmp_path, ca, extra=extra) as server:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await WsClient.connect(server, origin="https://evil.example.org")
            assert refused.value.status == 403
            for origin in ("https://chat.example.net", "https://chat.example.net:443",
                           f"https://127.0.0.1:{server.http_port}"):
                client = await WsClient.connect(server, origin=origin)
                await client.send(OPEN)
                assert (await client.frame()).tag == f"{{{FRAMING}}}open"
                await client.close()
            with pytest.raises(aiohttp.WSServerHandshakeError):    # its own origin, but http
                await WsClient.connect(server, origin=f"http://127.0.0.1:{server.http_port}")
            assert "limit iim_server.http_origins: refused 1 so far (latest: origin " \
                   "https://evil.example.org from 127.0.0.1 to /ws)" in caplog.text
    run(scenario)


# -- per-source limits (iim/server/admission.py) ---------------------------------------------


def test_negotiating_sessions_per_source_are_limited_like_other_carriers(tmp_path, ca):
    async def scenario():
        extra = 'iim_server.max_unauthenticated_per_source = "2"\n'
        async with WebServer(tmp_path, ca, extra=extra) as server:
            held = [await WsClient.connect(server) for _ in range(2)]
            third = await WsClient.connect(server)
            assert await stream_error(third) == "policy-violation"
            await third.close()
            await held[0].login("juliet")           # established: no longer counted
            fourth = await WsClient.connect(server)
            await fourth.send(OPEN)
            assert (await fourth.frame()).tag == f"{{{FRAMING}}}open"
            for client in (*held, fourth):
                await client.close()
    run(scenario)


def test_new_sessions_over_the_accept_rate_are_refused_before_the_upgrade(tmp_path, ca):
    async def scenario():
        extra = 'iim_server.accept_rate_per_source = "1"\n'
        async with WebServer(tmp_path, ca, extra=extra) as server:
            statuses = []
            clients = []
            for _ in range(4):
                try:
                    clients.append(await WsClient.connect(server))
                except aiohttp.WSServerHandshakeError as exc:
                    statuses.append(exc.status)
            assert statuses and set(statuses) == {429}
            for client in clients:
                await client.close()
    run(scenario)


# -- keepalive (RFC 7395 §3.5: left to WebSocket) -------------------------------------------


def test_a_ping_is_answered_and_a_peer_that_never_pongs_is_closed(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            server.server.web.heartbeat = 0.2
            http = aiohttp.ClientSession()
            ws = await http.ws_connect(server.url("/ws", ws=True), protocols=("xmpp",),
                                       ssl=server.client_tls(), autoping=False)
            await ws.ping(b"are you there")
            kinds = []
            while True:
                message = await asyncio.wait_for(ws.receive(), 10)
                kinds.append(message.type)
                if message.type is aiohttp.WSMsgType.PONG:
                    assert message.data == b"are you there"
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.ERROR):
                    break
            assert aiohttp.WSMsgType.PONG in kinds and aiohttp.WSMsgType.PING in kinds
            await ws.close()
            await http.close()
    run(scenario)


def test_status_counts_wss_sessions_as_tls_and_ws_ones_as_none(tmp_path, ca, caplog):
    caplog.set_level("INFO")

    async def scenario():
        async with WebServer(tmp_path, ca) as server:           # requiressl off: ws:// too
            secure, plain = await WsClient.connect(server), await WsClient.connect(server, secure=False)
            await secure.login("juliet")
            await plain.send(OPEN)
            await plain.frame()
            features = await plain.frame()
            assert "PLAIN" not in [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
            sessions = server.server.status()["sessions"]
            assert sessions["tls"] == 1 and sessions["legacy-ssl"] == 0
            assert "session juliet@example.com/web (TLSv1." in caplog.text
            assert "(HTTPS)" in caplog.text
            for client in (secure, plain):
                await client.close()
    run(scenario)


def test_a_refresh_that_turns_requiressl_on_refuses_new_plain_sessions(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=False) as server:
            plain = await WsClient.connect(server, secure=False)     # allowed: requiressl off
            text = server.conf.read_text().replace('requiressl = "false"', 'requiressl = "true"')
            server.conf.write_text(text)
            answer = server.server.refresh(from_text(text, str(server.conf),
                                                     base_dir=server.folder))
            assert "iim_server.requiressl" in answer["applied"]
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await WsClient.connect(server, secure=False)
            assert refused.value.status == 403
            await plain.send(OPEN)                                   # established ones stay
            assert (await plain.frame()).tag == f"{{{FRAMING}}}open"
            await plain.close()
    run(scenario)


def test_an_open_for_another_domain_is_host_unknown(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = await WsClient.connect(server)
            await client.send(f"<open xmlns='{FRAMING}' to='elsewhere.example' version='1.0'/>")
            assert await stream_error(client) == "host-unknown"
            await client.close()
    run(scenario)


def test_shutdown_is_a_system_shutdown_stream_error_then_close(tmp_path, ca):
    async def scenario():
        server = await WebServer(tmp_path, ca).start()
        client = await WsClient.connect(server)
        await client.login("juliet")
        stopping = asyncio.ensure_future(server.stop())
        assert await stream_error(client) == "system-shutdown"
        await stopping
        await client.close()
    run(scenario)


def test_a_websocket_session_resumes_after_its_connection_is_lost(tmp_path, ca):
    """XEP-0198 is the core's: a stream managed over one WebSocket resumes on
    another, and a message sent meanwhile arrives after <resumed/>."""
    SM = "urn:xmpp:sm:3"

    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            juliet = await WsClient.connect(server)
            await juliet.login("juliet")
            await juliet.send(f"<enable xmlns='{SM}' resume='true'/>")
            enabled = await juliet.frame()
            assert enabled.tag == f"{{{SM}}}enabled" and enabled.get("resume") == "true"
            await juliet.send("<presence xmlns='jabber:client'/>")
            await juliet.frame()
            await juliet.close()                                # no <close/>: lost
            romeo = await WsClient.connect(server)
            await romeo.login("romeo")
            await romeo.send(CHAT.format(to="juliet@example.com/web", id="r1", body="still?"))
            again = await WsClient.connect(server)
            await again.send(OPEN)
            await again.frame(), await again.frame()
            token = base64.b64encode(b"\0juliet\0secret").decode()
            await again.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
            assert (await again.frame()).tag == f"{{{SASL}}}success"
            await again.send(OPEN)
            await again.frame(), await again.frame()
            await again.send(f"<resume xmlns='{SM}' previd='{enabled.get('id')}' h='1'/>")
            assert (await again.frame()).tag == f"{{{SM}}}resumed"
            frame = await again.frame()
            while frame.tag != "{jabber:client}message":        # <r/> and the like first
                frame = await again.frame()
            assert frame.findtext("{jabber:client}body") == "still?"
            assert frame.get("from") == "romeo@example.com/web"
            for client in (romeo, again):
                await client.close()
    run(scenario)


def test_pending_counts_the_sessions_bytes_not_the_frames():
    """ClientSession's in-flight ledger compares what it wrote with what the
    carrier still holds: pending() is in the session's bytes (a chunk counts
    until its last frame is sent), whatever the frames add."""
    from iim.server.web.websocket import WebSocketCarrier
    from iim.xmpp.xml import stream_header

    class StuckSocket:                      # a peer that reads nothing
        sent: list = []

        async def send_str(self, frame):
            self.sent.append(frame)
            await asyncio.Event().wait()

        async def close(self):
            pass

    async def scenario():
        carrier = WebSocketCarrier(StuckSocket(), "test", "test")
        header = stream_header(from_="example.com", id="s1", lang="en") + b"<stream:features/>"
        message = b"<message to='a@example.com'><body>hi</body></message>"
        carrier.write(header)
        carrier.write(message)
        await asyncio.sleep(0)
        assert StuckSocket.sent == [f"<open xmlns='{FRAMING}' from='example.com' id='s1' "
                                    "version='1.0' xml:lang='en'/>"]
        assert carrier.pending() == len(header) + len(message)
        await carrier.stop()
    run(scenario)


def test_a_frame_whose_end_tag_is_long_is_one_complete_element(tmp_path, ca):
    """Found by tests/test_web_framing.py: completeness is not judged by how far
    the end tag reaches (a prefixed end tag of 20 bytes)."""
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = await WsClient.connect(server)
            await client.send(OPEN)
            await client.frame(), await client.frame()
            token = base64.b64encode(b"\0juliet\0secret").decode()
            await client.send(f"<saslmechanism:auth xmlns:saslmechanism='{SASL}' "
                              f"mechanism='PLAIN'>{token}</saslmechanism:auth>")
            assert (await client.frame()).tag == f"{{{SASL}}}success"
            await client.close()
    run(scenario)


def test_a_child_in_the_streams_namespace_reaches_a_web_user_as_well_formed_xml(tmp_path, ca):
    """Found by tests/test_web_framing.py: the serializer writes the streams
    namespace with the prefix a TCP stream's header declares; a frame declares
    it itself, or the recipient's XML parser fails on an unbound prefix."""
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            juliet, romeo = await WsClient.connect(server), await WsClient.connect(server)
            await juliet.login("juliet")
            await romeo.login("romeo")
            await romeo.send("<message xmlns='jabber:client' to='juliet@example.com/web' "
                             "type='chat'><body>odd</body><stream:x xmlns:stream="
                             f"'{STREAMS}' stream:y='1'/></message>")
            message = await juliet.frame()                   # ET.fromstring: well-formed
            odd = message.find(f"{{{STREAMS}}}x")
            assert odd is not None and odd.get(f"{{{STREAMS}}}y") == "1"
            for client in (juliet, romeo):
                await client.close()
    run(scenario)
