"""Bad input on the client port, while two logged-in users keep chatting.

Each attack runs against the live server with a conversation going on in the
same event loop; the conversation must keep flowing and lose nothing. "Keeps
flowing" is counted in messages, never in seconds: a busy machine makes the
test slower, not red.

The timers themselves (a negotiation that never ends, a stanza dripped a
byte at a time) are tested in memory, on a ClientSession whose clock the
test moves by hand (tests/support/clock.py): no real waiting. The live
server's negotiation_timeout is 120 s, so that no login of alice's or bob's
can run into it however busy the machine; the two live attacks that wait for
it to fire shorten it for themselves (``short_negotiation``: iim.conf changed
and refreshed through the control socket once alice and bob are in, so it
bounds only connections accepted afterwards, the attacker's).
"""

import asyncio
import contextlib
import logging
import resource

import pytest

from iim.limits import raise_nofile
from iim.server.c2s import ClientSession, SessionContext
from iim.xmpp.server_stream import ServerPolicy
from live import DOMAIN, Client, LiveServer, next_item
from support.clock import ManualClock
from support.process import DEADLINE
from support.carrier import MemoryCarrier

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
NEGOTIATION = 'iim_server.negotiation_timeout = "120"\n'
#: What the attacks that wait for the negotiation timer set it to, meanwhile.
SHORT_NEGOTIATION = 2
TIMEOUTS = (NEGOTIATION +
            # the floods here come from 127.0.0.1 like the users: no per-source limit in the
            # way (tests/test_per_source_limits.py tests those)
            'iim_server.max_unauthenticated_per_source = "100000"\n'
            'iim_server.accept_rate_per_source = "100000"\n')


async def refresh(server: LiveServer, conf: str) -> dict:
    """iim.conf becomes ``conf``, and the (managed) server re-reads it."""
    server.conf.write_text(conf)
    answer = await asyncio.to_thread(server.ask, "refresh")
    assert answer["ok"], answer
    return answer


@contextlib.asynccontextmanager
async def short_negotiation(server: LiveServer):
    """negotiation_timeout SHORT_NEGOTIATION for the connections accepted
    within the block; 120 s again after it."""
    normal = server.conf.read_text()
    short = normal.replace(NEGOTIATION, f'iim_server.negotiation_timeout = '
                                        f'"{SHORT_NEGOTIATION}"\n')
    answer = await refresh(server, short)
    assert answer["applied"] == ["iim_server.negotiation_timeout"], answer
    try:
        yield
    finally:
        await refresh(server, normal)


@pytest.fixture(scope="module")
def server(tmp_path_factory, ca):
    live = LiveServer(tmp_path_factory.mktemp("bad"), ca, extra=TIMEOUTS, managed=True,
                      users=(("alice", "alice-pw-1"), ("bob", "bob-pw-2"),
                             ("carol", "carol-pw-3"), ("dave", "dave-pw-4")))
    live.add_users()
    live.start()
    yield live
    assert live.stop() == 0


class Conversation:
    """alice and bob exchange numbered messages until told to stop."""

    def __init__(self, server):
        self.server = server
        self.sent = self.received = 0
        self._moved = asyncio.Event()          # set at each message bob receives

    async def __aenter__(self):
        self.alice = await Client(f"alice@{DOMAIN}/a", "alice-pw-1",
                                  self.server.ca_file).online(self.server.port)
        self.bob = await Client(f"bob@{DOMAIN}/b", "bob-pw-2",
                                self.server.ca_file).online(self.server.port)
        self._task = asyncio.ensure_future(self._chat())
        return self

    async def _chat(self):
        while True:
            self.alice.send_message(mto=f"bob@{DOMAIN}/b", mbody=f"m{self.sent}", mtype="chat")
            self.sent += 1
            message = await next_item(self.bob.received)
            while not message["body"].startswith("m"):     # RFC 6121 §8.5.3.2.1: chat to a
                message = await next_item(self.bob.received)   # gone resource comes to bob/b
            assert message["body"] == f"m{self.received}"
            self.received += 1
            self._moved.set()
            await asyncio.sleep(0.05)

    async def progress(self, messages: int = 3) -> int:
        """Until ``messages`` more messages have made it (the deadline bounds a
        failure); returns how many did."""
        until = self.received + messages
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while self.received < until:
            assert not self._task.done(), self._task.exception()
            self._moved.clear()
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"the conversation stopped at {self.received} messages"
            try:
                await asyncio.wait_for(self._moved.wait(), left)
            except asyncio.TimeoutError:
                pass
        assert not self._task.done(), self._task.exception()
        return messages

    async def __aexit__(self, *exc):
        self._task.cancel()
        await self.alice.offline()
        await self.bob.offline()


async def raw(server, data: bytes = b""):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def read_until_closed(reader, timeout=15) -> bytes:
    chunks = []
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), timeout)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def stream_error(condition: str) -> bytes:
    return f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>".encode()


@pytest.mark.parametrize("payload,condition", [
    (HEADER + b"<message><body>oops</mesage>", "not-well-formed"),
    (b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 "
     b"'&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]><lolz>&lol2;</lolz>",
     "restricted-xml"),
    (HEADER + b"<?php system('id'); ?>", "restricted-xml"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, "not-well-formed"),
])
def test_bad_xml_gets_its_stream_error_and_chat_goes_on(server, payload, condition):
    async def scenario():
        async with Conversation(server) as chat:
            reader, writer = await raw(server, payload)
            answer = await read_until_closed(reader)
            writer.close()
            return answer, await chat.progress()

    answer, flowing = run(scenario())
    assert stream_error(condition) in answer
    assert answer.endswith(b"</stream:stream>")
    assert flowing > 0


def test_ten_mib_stanza_is_refused_early(server):
    async def scenario():
        async with Conversation(server) as chat:
            reader, writer = await raw(server, HEADER)
            progress = {"sent": 0}

            async def send():
                writer.write(b"<message to='bob@localhost'><body>")
                for _ in range(160):                   # 160 x 64 KiB = 10 MiB
                    writer.write(b"A" * 65536)
                    await writer.drain()
                    progress["sent"] += 65536
                    await asyncio.sleep(0)             # let the reader see an answer

            sender = asyncio.ensure_future(send())
            first = await asyncio.wait_for(reader.read(65536), 15)
            sent_when_refused = progress["sent"]       # when the refusal arrived, not the close
            answer = first + await read_until_closed(reader)
            sender.cancel()
            writer.close()
            return answer, sent_when_refused, await chat.progress()

    answer, sent, flowing = run(scenario())
    assert stream_error("policy-violation") in answer
    assert b"larger than the limit of 262144 bytes" in answer
    assert sent < 10 * 1024 * 1024            # refused before the whole stanza was sent
    assert flowing > 0


def test_one_byte_per_second_client_is_cut_off(server):
    async def scenario():
        async with Conversation(server) as chat, short_negotiation(server):
            reader, writer = await raw(server)
            answer = b""
            for byte in HEADER + b"<message to='bob@localhost'><body>slow...":
                writer.write(bytes([byte]))
                try:
                    await writer.drain()
                    answer += await asyncio.wait_for(reader.read(65536), 1.0)
                except asyncio.TimeoutError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    break
                if answer.endswith(b"</stream:stream>") or reader.at_eof():
                    break
            writer.close()
            return answer, await chat.progress()

    answer, flowing = run(scenario())
    assert stream_error("connection-timeout") in answer
    assert flowing > 0


def test_a_thousand_connections_that_never_negotiate(server):
    raise_nofile()
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 2200

    async def scenario():
        async with Conversation(server) as chat, short_negotiation(server):
            idle = [await raw(server, HEADER if i % 2 else b"") for i in range(1000)]
            flowing = await chat.progress()
            answers = await asyncio.gather(*(read_until_closed(r, DEADLINE) for r, _ in idle))
            for _, writer in idle:
                writer.close()
            return answers, flowing, await chat.progress()

    answers, flowing_during, flowing_after = run(scenario())
    assert all(stream_error("connection-timeout") in a for a in answers)
    assert flowing_during > 0 and flowing_after > 0


def test_nothing_is_lost_while_under_attack(server):
    async def scenario():
        async with Conversation(server) as chat:
            await chat.progress(20)
            return chat
    chat = run(scenario())
    assert chat.received >= chat.sent - 1        # the last may be in flight at cancel


def _server_rss_kb(server) -> int:
    for line in open(f"/proc/{server.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_gets_everything_in_order_when_it_resumes(server):
    from rawclient import RawClient

    async def scenario():
        async with Conversation(server) as chat:
            bob = await RawClient(f"bob@{DOMAIN}/stalled", "bob-pw-2",
                                  server.ca_file).connect(server.port)
            bob.stop_reading()
            rss_before = _server_rss_kb(server)
            for n in range(1500):
                chat.alice.send_message(mto=f"bob@{DOMAIN}/stalled", mtype="chat",
                                        mbody=f"{n:04d} " + "x" * 1000)
            flowing = await chat.progress()             # others unaffected meanwhile
            rss_growth = _server_rss_kb(server) - rss_before
            bob.resume_reading()
            deadline = asyncio.get_running_loop().time() + DEADLINE
            while len([s for s in bob.stanzas if s.tag.endswith("message")]) < 1500:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
            await bob.close()
            return bob.stanzas, flowing, rss_growth

    stanzas, flowing, rss_growth = run(scenario())
    bodies = [s.findtext("{jabber:client}body") for s in stanzas if s.tag.endswith("message")]
    assert [b[:4] for b in bodies] == [f"{n:04d}" for n in range(1500)]
    assert flowing > 0
    assert rss_growth < 40_000        # KB: the backlog is bounded, not 1500 copies of a stream


def test_a_client_that_never_reads_is_closed_and_its_messages_wait_offline(server):
    """dave/stuck never reads; carol (another process) floods him. Past the
    socket buffers and the bounded backlog the session is closed; what it held
    goes to offline storage, what storage cannot hold returns to carol as an
    error, and alice and bob chat on throughout."""
    import subprocess
    import sys
    from pathlib import Path
    from rawclient import RawClient

    async def scenario():
        async with Conversation(server) as chat:
            dave = await RawClient(f"dave@{DOMAIN}/stuck", "dave-pw-4",
                                   server.ca_file).connect(server.port)
            dave.stop_reading()
            carol = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).parent / "flood.py"), str(server.port),
                str(server.ca_file), f"carol@{DOMAIN}/flood", "carol-pw-3",
                f"dave@{DOMAIN}/stuck", "6000", "2000", stdout=subprocess.PIPE)
            flowing = 0
            while "closing: policy-violation" not in server.log():
                flowing += await chat.progress(1)
                assert carol.returncode is None or flowing, "never closed"
            flowing_after = await chat.progress()
            bounced = int((await asyncio.wait_for(carol.communicate(), 90))[0])
            await dave.close()
            later = await Client(f"dave@{DOMAIN}/again", "dave-pw-4",
                                 server.ca_file).online(server.port)
            first = await next_item(later.received)
            await later.offline()
            return flowing, flowing_after, first, bounced

    flowing, flowing_after, first, bounced = run(scenario())
    assert flowing > 0 and flowing_after > 0
    assert first["delay"]["stamp"] is not None          # it waited in offline storage
    assert bounced > 0 and "limit iim_server.offline_" in server.log()     # carol was told


# -- the timers, in memory, on a clock moved by hand --------------------------------------

class _NoAccounts:
    def credentials(self, username):
        return None

    def server_secret(self):
        return b"s" * 32


def _timed_session(negotiation_timeout: float, stanza_timeout: float):
    """A ClientSession in memory whose timers run on a ManualClock."""
    clock = ManualClock()
    ctx = SessionContext(policy=ServerPolicy(DOMAIN), tls_context=None, router=None,
                         storage=_NoAccounts(), log=logging.getLogger("test.timers"),
                         negotiation_timeout=negotiation_timeout,
                         stanza_timeout=stanza_timeout, clock=clock)
    carrier = MemoryCarrier("memory:1", "192.0.2.1")
    return clock, ctx, ClientSession(ctx, carrier), carrier


def test_a_stanza_dripped_a_byte_a_second_is_cut_off_by_the_stanza_timer():
    """negotiation_timeout out of the way: the stanza watchdog alone ends the
    stream before the stanza is complete, though each byte came only a second
    after the one before."""
    drip = b"<message to='bob@localhost'><body>slow...</body></message>"

    async def scenario():
        clock, ctx, session, carrier = _timed_session(3600, 3)
        session.data_received(HEADER)
        began = clock.time()
        for sent, byte in enumerate(drip, 1):
            session.data_received(bytes([byte]))
            if carrier.closed:
                break
            clock.advance(1.0)
        return sent, clock.time() - began, bytes(carrier.out), carrier.closed, ctx

    sent, took, out, closed, ctx = asyncio.run(scenario())
    assert closed and stream_error("connection-timeout") in out
    assert b"a stanza took too long" in out
    assert sent < len(drip) and took >= 3
    assert not ctx.sessions and not ctx.negotiating


def test_a_stream_that_never_negotiates_ends_at_the_negotiation_timeout():
    async def scenario():
        clock, ctx, session, carrier = _timed_session(4, 3600)
        session.data_received(HEADER)
        clock.advance(3.9)
        early = carrier.closed
        clock.advance(0.1)
        return early, bytes(carrier.out), carrier.closed, clock, ctx

    early, out, closed, clock, ctx = asyncio.run(scenario())
    assert not early
    assert closed and stream_error("connection-timeout") in out
    assert b"negotiation took too long" in out
    assert clock.pending() == 0 and not ctx.sessions      # every timer of the session cancelled
