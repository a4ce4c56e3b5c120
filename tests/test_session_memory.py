"""What an idle session holds (issue 14, item 1; bench/memory.py).

A session between stanzas keeps no expat parser: the stanza watchdog, every
``stanza_timeout / 4`` from the start, releases it whenever no stanza is
arriving (iim/server/c2s.py), so a user idle right after login holds none a
quarter of ``stanza_timeout`` later, and the next stanza still arrives whole.
Once the session is bound (or resumed), that tick comes ``SETTLE_AFTER_LOGIN``
seconds later instead, so the login's parser goes with the login's other
transients; a stream still negotiating keeps the regular tick.
A connection on ``iim_server.port`` drops its header sniffer (and its expat
parser) once the stream is handed to a session (iim/server/listener.py).
Real ClientSessions, router and storage, in memory, on a clock moved by hand.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from iim.conf.limits import ServerLimits
from iim.server.c2s import SETTLE_AFTER_LOGIN, ClientSession, SessionContext
from iim.server.listener import ClientProtocol
from iim.server.router import Router
from iim.server.storage import Storage
from iim.xmpp.server_stream import ServerPolicy
from support.clock import ManualClock
from test_sm_sessions import C, DOMAIN, JULIET, Client, Romeo, chat, cut, ids

STANZA_TIMEOUT = 60.0


def expat_of(session: ClientSession):
    return session.stream._parser._parser._expat


@pytest.fixture
def world(tmp_path):
    storage = Storage.open(tmp_path / "iim.db")
    storage.add_user("juliet", "secret-juliet")
    yield storage
    storage.close()


def run(world, scenario, resume: int = 0):
    """``scenario(ctx, router, romeo, clock)`` inside a running loop; ``resume``:
    XEP-0198 resumption offered for that many seconds."""
    async def main():
        clock = ManualClock()
        log = logging.getLogger("test.memory")
        router = Router(DOMAIN, world, log=log, limits=ServerLimits())
        ctx = SessionContext(policy=ServerPolicy(DOMAIN, sm_resume_seconds=resume),
                             tls_context=None, router=router, storage=world, log=log,
                             limits=ServerLimits(sm_resume_timeout=resume),
                             stanza_timeout=STANZA_TIMEOUT, clock=clock)
        romeo = Romeo()
        router.session_bound(romeo)
        return scenario(ctx, router, romeo, clock)
    return asyncio.run(main())


def test_a_user_idle_after_login_holds_no_expat_parser_a_quarter_timeout_later(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        juliet.say(b"<presence/>")
        held_after_login = expat_of(juliet.session) is not None
        clock.advance(STANZA_TIMEOUT / 4)
        return held_after_login, expat_of(juliet.session)

    held_after_login, expat = run(world, scenario)
    assert held_after_login                     # the release is the watchdog's, not the read's
    assert expat is None


def test_a_bound_session_gone_quiet_frees_its_parser_soon_after_bind(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        juliet.say(b"<presence/>")
        held = expat_of(juliet.session) is not None
        clock.advance(SETTLE_AFTER_LOGIN)
        return held, expat_of(juliet.session)

    held, expat = run(world, scenario)
    assert SETTLE_AFTER_LOGIN < STANZA_TIMEOUT / 4       # sooner than the regular tick
    assert held
    assert expat is None


def test_after_the_early_tick_the_watchdog_keeps_its_quarter_timeout_cadence(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        clock.advance(SETTLE_AFTER_LOGIN)
        juliet.say(b"<presence/>")                      # a fresh parser for this stanza
        clock.advance(STANZA_TIMEOUT / 4 - 0.5)
        kept = expat_of(juliet.session) is not None
        clock.advance(0.5)
        return kept, expat_of(juliet.session)

    kept, expat = run(world, scenario)
    assert kept
    assert expat is None


def test_a_stream_still_negotiating_keeps_the_regular_tick(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet", bind=False)   # logged in, not bound
        clock.advance(SETTLE_AFTER_LOGIN)
        kept = expat_of(juliet.session) is not None
        clock.advance(STANZA_TIMEOUT / 4 - SETTLE_AFTER_LOGIN)
        return kept, expat_of(juliet.session)

    kept, expat = run(world, scenario)
    assert kept
    assert expat is None


def test_a_resumed_session_frees_its_parser_soon_after_the_resumption(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        previd = juliet.enable()
        cut(juliet)
        again = Client(ctx, str(JULIET), "secret-juliet", bind=False)
        clock.advance(STANZA_TIMEOUT / 4 - 1)           # the new stream's regular tick is near
        [resumed] = again.resume(previd, 0)
        clock.advance(1)                                # regular tick: the resume just arrived
        held = expat_of(again.session) is not None
        clock.advance(SETTLE_AFTER_LOGIN - 1)
        return resumed, held, expat_of(again.session)

    resumed, held, expat = run(world, scenario, resume=300)
    assert resumed.tag.endswith("resumed")
    assert held
    assert expat is None


def test_after_a_release_the_next_stanzas_arrive_whole_and_are_released_again(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        clock.advance(STANZA_TIMEOUT / 4)
        assert expat_of(juliet.session) is None
        message = (b"<message to='romeo@example.com/orchard' type='chat' id='x1'>"
                   b"<body>back</body></message>")
        juliet.say(message)
        router.stanza_from(romeo, chat(1))
        heard = juliet.heard()
        clock.advance(STANZA_TIMEOUT / 4)
        return romeo.received, heard, expat_of(juliet.session)

    received, heard, expat = run(world, scenario)
    assert [m.get("id") for m in received] == ["x1"]
    assert received[0].find(C + "body").text == "back"
    assert ids(heard) == ["m1"]
    assert expat is None


def test_a_stanza_half_arrived_keeps_its_parser_across_a_tick(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        juliet.say(b"<message to='romeo@example.com/orchard' id='x2'><bo")
        clock.advance(STANZA_TIMEOUT / 4)
        kept = expat_of(juliet.session)
        juliet.say(b"dy>late</body></message>")
        return kept, romeo.received

    kept, received = run(world, scenario)
    assert kept is not None
    assert [m.get("id") for m in received] == ["x2"]


# -- the header sniffer of iim_server.port ------------------------------------------------

class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()

    def get_extra_info(self, name):
        return ("192.0.2.7", 5222) if name == "peername" else None

    def set_write_buffer_limits(self, high, low) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass


class _Federation:
    def accept(self, carrier):
        raise AssertionError("a client stream went to the federation")


HEADER = (b"<?xml version='1.0'?><stream:stream to='example.com' version='1.0' "
          b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")


@pytest.mark.parametrize("split", [len(HEADER), 20])
def test_the_header_sniffer_is_dropped_once_the_session_is_chosen(world, split):
    def scenario(ctx, router, romeo, clock):
        protocol = ClientProtocol(ctx, 100, federation=_Federation())
        transport = _Transport()
        protocol.connection_made(transport)
        sniffing = protocol._sniffer is not None
        protocol.data_received(HEADER[:split])
        protocol.data_received(HEADER[split:])
        return sniffing, protocol._sniffer, protocol.session, bytes(transport.out)

    sniffing, sniffer, session, out = run(world, scenario)
    assert sniffing and sniffer is None
    assert isinstance(session, ClientSession)
    assert b"<stream:features" in out           # the session had the whole header


def test_a_connection_without_a_header_drops_the_sniffer_too(world):
    def scenario(ctx, router, romeo, clock):
        protocol = ClientProtocol(ctx, 100, federation=_Federation())
        protocol.connection_made(_Transport())
        protocol.data_received(b"<?xml version='1.0'?>")
        clock.advance(ctx.negotiation_timeout)
        return protocol._sniffer, protocol.session

    sniffer, session = run(world, scenario)
    assert sniffer is None and session is not None and session.closed


def test_a_logged_in_session_keeps_no_sasl_exchange(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        return juliet.session.stream._auth, juliet.session._backlog, juliet.session._in_flight

    auth, backlog, in_flight = run(world, scenario)
    assert auth is None
    assert not backlog and not in_flight and type(backlog) is tuple    # no deque until needed
