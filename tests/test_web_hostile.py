"""Hostile input on the gateway's port (iim_server.httpport): each case gets a
clear answer or a close, what it made the server hold is bounded and freed,
and other users go on.

Raw sockets where a well-behaved client library would not misbehave (heads
over aiohttp's limits, fragments, ping floods, a peer that never reads);
timers that matter are moved by hand (tests/support/clock.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from iim.server.quota import CountBySource
from iim.server.web.listener import HeadWatch, IdleTicket
from support.clock import ManualClock
from webgw import FRAMING, OPEN, STREAMS, WebServer, WsClient, run

SOURCE = "127.0.0.1"
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n")
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
DEADLINE = 10.0                 # bounds a failure, not an expectation of speed


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client's WebSocket frame (RFC 6455 §5.2: clients mask)."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """A server's frame (unmasked): (opcode, payload)."""
    first, second = await asyncio.wait_for(reader.readexactly(2), DEADLINE)
    n = second & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    return first & 0x0F, await asyncio.wait_for(reader.readexactly(n), DEADLINE)


async def raw_websocket(server: WebServer):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    writer.write(UPGRADE)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def until(predicate, what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP response's head (its body, of Content-Length, read and dropped)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    length = [line.split(b":", 1)[1] for line in head.split(b"\r\n")
              if line.lower().startswith(b"content-length:")]
    await reader.readexactly(int(length[0]) if length else 0)
    return head


async def answer(reader: asyncio.StreamReader) -> bytes:
    """All the server sends until it closes."""
    try:
        return await asyncio.wait_for(reader.read(), DEADLINE)
    except ConnectionError:
        return b""


async def someone_else_logs_in(server: WebServer) -> None:
    other = await WsClient.connect(server)
    assert (await other.login("romeo", "other")).startswith("romeo@")
    await other.close()


# -- request heads (aiohttp's limits, app.py HEAD_LIMITS) -----------------------------------------


@pytest.mark.parametrize("head", [
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",            # request line
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",   # one header
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(40))
    + b"\r\n",                                                             # too many headers
    b"\x00\x01\x02 not HTTP at all\r\n\r\n",                             # garbage
], ids=["request-line", "header-line", "header-count", "garbage"])
def test_a_request_head_over_the_limits_is_answered_400_and_closed(tmp_path, ca, head, caplog):
    """aiohttp answers; the log gets no ERROR with a traceback a peer could repeat."""
    caplog.set_level("DEBUG")

    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=False) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
            writer.write(head)
            reply = await answer(reader)
            assert reply.split(b" ", 2)[1] == b"400", reply[:200]
            writer.close()
            listener = server.server.web.listener
            await until(lambda: listener.idle.held(SOURCE) == 0, "the connection is forgotten")
            await someone_else_logs_in(server)
    run(scenario)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r for r in caplog.records if r.name == "aiohttp.server"]


# -- connections that hold nothing in flight ---------------------------------------------------------


def test_an_idle_keep_alive_connection_is_closed_after_negotiation_timeout(tmp_path, ca):
    """aiohttp would keep it an hour; it counts as idle for its source meanwhile."""
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=False) as server:
            listener = server.server.web.listener
            listener.clock = clock = ManualClock()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
            writer.write(GET)
            assert (await response(reader)).startswith(b"HTTP/1.1 302")
            await until(lambda: listener.idle.held(SOURCE) == 1, "idle again after the answer")
            clock.advance(server.server.ctx.negotiation_timeout - 1)
            writer.write(GET)                   # in time: served, and the clock starts again
            assert (await response(reader)).startswith(b"HTTP/1.1 302")
            await until(lambda: listener.idle.held(SOURCE) == 1, "idle again")
            clock.advance(server.server.ctx.negotiation_timeout)
            assert await answer(reader) == b""
            await until(lambda: listener.idle.held(SOURCE) == 0 and not listener.watches,
                        "the closed connection is forgotten")
            writer.close()
    run(scenario)


def test_idle_connections_of_one_source_beyond_the_count_are_closed_unread(tmp_path, ca):
    """max_unauthenticated_per_source 2: 4 x 2 = 8 idle connections; the ninth is
    closed before a byte is read; the eight still get answers; leaving frees them."""
    async def scenario():
        extra = ('iim_server.max_unauthenticated_per_source = "2"\n'
                 'iim_server.accept_rate_per_source = "1000"\n')
        async with WebServer(tmp_path, ca, requiressl=False, extra=extra) as server:
            listener = server.server.web.listener
            held = [await asyncio.open_connection("127.0.0.1", server.http_port)
                    for _ in range(8)]
            await until(lambda: listener.idle.held(SOURCE) == 8, "eight idle connections")
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
            writer.write(GET)
            assert await answer(reader) == b""
            writer.close()
            for reader, writer in held:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert (await answer(reader)).startswith(b"HTTP/1.1 302")
                writer.close()
            await until(lambda: listener.idle.held(SOURCE) == 0 and not listener.watches,
                        "all forgotten")
    run(scenario)


class _Handler:
    """aiohttp's RequestHandler as HeadWatch sees it."""

    def __init__(self) -> None:
        self.closed = False

    def connection_made(self, transport) -> None:
        pass

    def connection_lost(self, exc) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_a_connection_that_falls_idle_over_the_count_is_closed_after_its_answer():
    count = CountBySource(1)
    assert count.add(SOURCE)
    clock, over = ManualClock(), []
    handler, transport = _Handler(), _Transport()
    watch = HeadWatch(handler, 30.0, {}, IdleTicket(SOURCE, count), clock, over.append)
    watch.connection_made(transport)
    watch.started()                             # a request: the connection is not idle
    assert count.held(SOURCE) == 0
    assert count.add(SOURCE)                    # another connection takes the place
    watch.finished()
    assert handler.closed and over == [SOURCE]  # no keep-alive: closed once answered
    assert count.held(SOURCE) == 1
    watch.connection_lost(None)
    assert count.held(SOURCE) == 1 and clock.pending() == 0     # the other one's place stays


def test_a_failed_tls_handshake_gives_its_place_back(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            listener = server.server.web.listener
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
            writer.write(b"\x16\x03\x01\x00\x05hello")       # a handshake record, not TLS
            reply = await answer(reader)
            assert reply == b"" or reply[:1] == b"\x15", reply      # nothing, or a TLS alert
            writer.close()
            await until(lambda: listener.idle.held(SOURCE) == 0, "the place is given back")
    run(scenario)


# -- WebSocket ---------------------------------------------------------------------------------


def test_an_upgrade_then_nothing_ends_with_connection_timeout(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=False) as server:
            server.server.ctx.clock = clock = ManualClock()
            reader, writer = await raw_websocket(server)
            await until(lambda: server.server.ctx.negotiating, "a session negotiating")
            clock.advance(server.server.ctx.negotiation_timeout)
            frames = []
            while not frames or frames[-1][0] == 1:
                frames.append(await read_frame(reader))
            texts = [payload.decode() for opcode, payload in frames if opcode == 1]
            assert any("connection-timeout" in text for text in texts), texts
            assert f"<close xmlns='{FRAMING}'/>" in texts or any("close" in t for t in texts)
            assert frames[-1][0] == 8 and frames[-1][1][:2] == struct.pack("!H", 1000)
            writer.close()
            await until(lambda: not server.server.ctx.negotiating, "the session is gone")
    run(scenario)


def test_a_message_in_fragments_beyond_twice_maxstanzasize_is_closed_1009(tmp_path, ca):
    async def scenario():
        extra = 'iim_server.maxstanzasize = "10000"\n'
        async with WebServer(tmp_path, ca, requiressl=False, extra=extra) as server:
            reader, writer = await raw_websocket(server)
            writer.write(frame(1, b"<message xmlns='jabber:client'><body>", fin=False))
            for _ in range(4):                  # 32 KB > 2 x 10000 + 4096
                writer.write(frame(0, b"x" * 8192, fin=False))
            opcode, payload = await read_frame(reader)
            assert opcode == 8 and payload[:2] == struct.pack("!H", 1009), (opcode, payload)
            writer.close()
            await someone_else_logs_in(server)
            await until(lambda: not server.server.ctx.sessions, "no session left")
    run(scenario)


def test_a_fragmented_message_within_the_limit_is_one_element(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=False) as server:
            reader, writer = await raw_websocket(server)
            text = OPEN.encode()
            writer.write(frame(1, text[:10], fin=False) + frame(0, text[10:20], fin=False)
                         + frame(9, b"between") + frame(0, text[20:]))
            kinds = []
            while len([k for k in kinds if k == 1]) < 2:
                opcode, payload = await read_frame(reader)
                kinds.append(opcode)
                if opcode == 1:
                    assert payload.startswith((f"<open xmlns='{FRAMING}'".encode(),
                                               b"<stream:features")), payload
            assert 10 in kinds                  # the ping between fragments got its pong
            writer.close()
    run(scenario)


def test_a_ping_flood_from_a_peer_that_never_reads_is_bounded(tmp_path, ca):
    """aiohttp answers each ping and waits for the socket to drain past 64 KiB;
    meanwhile it reads no more (its queue is full): the server holds a bounded
    buffer whatever the peer sends, and others are served."""
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=False) as server:
            reader, writer = await raw_websocket(server)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            ping = frame(9, b"p" * 125)
            watches = server.server.web.listener.watches
            [watch] = watches.values()
            transport = watch.transport
            for _ in range(40):                 # 40 x 200 KB of pings, never a byte read back
                writer.write(ping * 1600)
                if not transport.is_reading():
                    break
                await asyncio.sleep(0.05)
            await until(lambda: not transport.is_reading(), "the server stops reading")
            sizes = []
            for _ in range(5):                  # 1 MB more pings: the buffer does not follow
                writer.write(ping * 1600)
                await asyncio.sleep(0.02)
                sizes.append(transport.get_write_buffer_size())
            # at most the pongs of one read (256 KiB of pings) and aiohttp's 64 KiB drain mark
            assert max(sizes) < 512 * 1024, sizes
            await someone_else_logs_in(server)
            writer.transport.abort()
            await until(lambda: not watches, "the flooder is forgotten")
    run(scenario)


def test_a_websocket_peer_that_never_reads_is_held_within_max_backlog(tmp_path, ca):
    """Messages to a WebSocket user who reads nothing: what the server holds for
    it stays within max_backlog (the carrier's queue, then the session's
    backlog), and the sender goes on being served."""
    async def scenario():
        extra = 'iim_server.max_backlog = "64K"\n'
        async with WebServer(tmp_path, ca, extra=extra) as server:
            sink = await WsClient.connect(server)
            jid = await sink.login("juliet", "sink")
            own = sink.ws._response.connection.transport
            own.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            own.pause_reading()                 # reads nothing from now on
            sender = await WsClient.connect(server)
            await sender.login("romeo", "flood")
            [session] = [s for s in server.server.ctx.sessions if str(s.jid) == jid]
            [served] = [w.transport for w in server.server.web.listener.watches.values()
                        if w.transport.get_extra_info("peername")
                        == own.get_extra_info("sockname")]
            served.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            limit = server.server.ctx.limits.max_backlog
            body = "z" * 4000
            held = []
            for n in range(400):                # 1.6 MB for a user reading nothing
                await sender.send(f"<message xmlns='jabber:client' to='{jid}' type='chat' "
                                  f"id='m{n}'><body>{body}</body></message>")
                held.append(session.carrier.pending())
            await sender.send("<iq xmlns='jabber:client' type='get' id='p1'>"
                              "<ping xmlns='urn:xmpp:ping'/></iq>")
            reply = await sender.frame()
            while reply.get("id") != "p1":      # bounces, if any, come first
                reply = await sender.frame()
            assert reply.get("type") == "result"
            assert max(held) <= limit
            assert session.closed                   # 1.6 MB did not fit: the session ended
            await sender.close()
            own.abort()
            await sink.close()
    run(scenario)


def test_stream_features_reach_a_raw_websocket_client(tmp_path, ca):
    """The raw client of these tests speaks RFC 6455 as aiohttp's does."""
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=False) as server:
            reader, writer = await raw_websocket(server)
            writer.write(frame(1, OPEN.encode()))
            _, opened = await read_frame(reader)
            _, features = await read_frame(reader)
            assert opened.startswith(f"<open xmlns='{FRAMING}'".encode())
            assert STREAMS.encode() in features
            writer.write(frame(8, struct.pack("!H", 1000)))
            writer.close()
    run(scenario)



def test_https_connections_share_one_read_buffer_and_each_gets_its_own_bytes(tmp_path, ca):
    """listener.py _SmallSSLProtocol: one 16 KiB buffer for every TLS connection's
    reads; records of several connections arriving together stay apart."""
    from iim.server.web.listener import _SmallSSLProtocol

    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            users = {"juliet": await WsClient.connect(server),
                     "romeo": await WsClient.connect(server)}
            jids = {name: await ws.login(name, "big") for name, ws in users.items()}
            buffers = {id(w.transport._ssl_protocol._ssl_buffer)
                       for w in server.server.web.listener.watches.values()}
            assert buffers == {id(_SmallSSLProtocol._shared.obj)}
            bodies = {name: (name[0] * 7000 + "|") * 4 for name in users}     # 28 KB: records
            for round_ in range(3):
                await asyncio.gather(*(
                    ws.send(f"<message xmlns='jabber:client' to='{jids[other]}' id='{round_}'>"
                            f"<body>{bodies[name]}</body></message>")
                    for (name, ws), other in zip(users.items(), ["romeo", "juliet"])))
                for name, ws in users.items():
                    other = "romeo" if name == "juliet" else "juliet"
                    got = await ws.frame()
                    assert got.findtext("{jabber:client}body") == bodies[other]
            for ws in users.values():
                await ws.close()
    run(scenario)


# -- BOSH ----------------------------------------------------------------------------------------


def test_a_bosh_client_asking_to_hold_many_requests_for_long_gets_the_bounds(tmp_path, ca):
    """XEP-0124 §7.1: the connection manager answers with the hold and wait it
    grants; a third request while two are open is outside the window and ends
    the session (item-not-found), so one session holds at most two requests."""
    from webgw import BoshClient

    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            client = BoshClient(server)
            first = await client.post(to="example.com", wait=100000, hold=50, ver="1.11",
                                      xmpp__version="1.0")
            assert (first.get("wait"), first.get("hold"), first.get("requests")) == \
                ("60", "1", "2")
            client.sid = first.get("sid")
            rid = client.rid
            held = asyncio.ensure_future(client.post(rid=rid + 1))
            await until(lambda: server.server.web.bosh.by_sid[client.sid].core.held,
                        "one request held")
            beyond = await client.post(rid=rid + 4)     # the window: rid + 2 .. rid + 3
            assert (beyond.get("type"), beyond.get("condition")) == \
                ("terminate", "item-not-found")
            assert (await asyncio.wait_for(held, DEADLINE)).get("type") == "terminate"
            await until(lambda: not server.server.web.bosh.by_sid, "the session is forgotten")
            await client.close()
    run(scenario)


def test_a_web_user_keeps_no_message_it_was_sent_once_the_frame_is_out(tmp_path, ca):
    """c2s's in-flight ledger holds a message while the carrier does: a
    WebSocket's frames wait a moment in the writer's queue, so every message
    to a web user enters the ledger; once sent, it must leave it (a 60 KB
    message stayed for as long as the user received nothing else)."""
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            sink, sender = await WsClient.connect(server), await WsClient.connect(server)
            jid = await sink.login("juliet", "idle")
            await sender.login("romeo", "big")
            [session] = [s for s in server.server.ctx.sessions if str(s.jid) == jid]
            await sender.send(f"<message xmlns='jabber:client' to='{jid}' type='chat' id='b'>"
                              f"<body>{'x' * 60000}</body></message>")
            got = await sink.frame()
            assert len(got.findtext("{jabber:client}body")) == 60000
            await until(lambda: not session._in_flight, "the ledger forgets the sent message")
            await sink.close()
            await sender.close()
    run(scenario)


def test_the_gateway_keeps_no_websocket_message_it_has_read(tmp_path, ca):
    """The reading loop let go of a frame once fed (its variable held the last
    one, 60 KB here, for as long as the user then stayed quiet)."""
    import gc

    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            sink, sender = await WsClient.connect(server), await WsClient.connect(server)
            jid = await sink.login("juliet", "idle")
            await sender.login("romeo", "big")
            body = "q" * 60000
            await sender.send(f"<message xmlns='jabber:client' to='{jid}' type='chat' id='b'>"
                              f"<body>{body}</body></message>")
            assert (await sink.frame()).findtext("{jabber:client}body") == body
            gc.collect()
            kept = [o for o in gc.get_objects() if type(o).__name__ == "WSMessage"
                    and isinstance(o.data, str) and body in o.data]
            assert kept == []
            await sink.close()
            await sender.close()
    run(scenario)
