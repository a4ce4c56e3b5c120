"""XEP-0198 resumption in the server: real ClientSessions, a real router and
storage, in memory (carriers are byte buffers, the clock is moved by hand).

Juliet enables stream management with resumption; her connection is cut;
romeo goes on writing to her. The transcripts follow XEP-0198 §5: the
session waits, detached, for ``sm_resume_timeout``; a new stream of hers
resumes it with the count of what she received, and gets the rest again,
then what came meanwhile; anyone else, or anyone too late, gets
``<failed><item-not-found/></failed>``; when nobody resumes it, what she did
not acknowledge goes to offline storage, or back to its sender when storage
refuses (RFC 6121 §8.5.2.2.1 / §8.3), and nothing vanishes.
"""

from __future__ import annotations

import asyncio
import logging
from xml.etree.ElementTree import Element, SubElement

import pytest

from iim.conf.limits import ServerLimits
from iim.server.c2s import ClientSession, SessionContext
from iim.server.router import Router
from iim.server.storage import Storage
from iim.xmpp.client_stream import ClientStream, TLSMode
from iim.xmpp.events import SessionEstablished
from iim.xmpp.jid import JID
from iim.xmpp.server_stream import ServerPolicy
from iim.xmpp.xml import ElementReceived, StreamParser
from support.clock import ManualClock
from support.carrier import MemoryCarrier

C = "{jabber:client}"
SM = "{urn:xmpp:sm:3}"
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
STREAMS = "{urn:ietf:params:xml:ns:xmpp-streams}"
DOMAIN = "example.com"
JULIET = JID.parse("juliet@example.com/balcony")
ENABLE = b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
R = b"<r xmlns='urn:xmpp:sm:3'/>"


class Romeo:
    """The other end, as the router sees a session: records what comes back."""

    def __init__(self) -> None:
        self.jid = JID.parse("romeo@example.com/orchard")
        self.priority, self.available, self.interested = None, False, False
        self.received: list[Element] = []

    def deliver(self, stanza: Element) -> None:
        self.received.append(stanza)

    def close(self, error=None) -> None:
        pass


class Client:
    """A client's connection: a session, its carrier, and a ClientStream for the login."""

    def __init__(self, ctx, jid: str, password: str, *, bind: bool = True) -> None:
        self.carrier = MemoryCarrier()
        self.session = ClientSession(ctx, self.carrier)
        self.stream = ClientStream(JID.parse(jid), password, tls=TLSMode.NEVER)
        if not bind:
            self.stream._request_bind = lambda features: []
        self.stream.start()
        for _ in range(50):
            self.session.data_received(self.stream.data_to_send())
            events = self.stream.receive_data(bytes(self.carrier.out))
            self.carrier.out.clear()
            if any(isinstance(e, SessionEstablished) for e in events) or \
                    (not bind and self.stream.authenticated and self.session.stream.phase.name
                     == "BINDING" and not self.stream.data_to_send()):
                return
        raise AssertionError("no session")

    def say(self, data: bytes) -> list[Element]:
        """C: data; S: what the server wrote back (and since the last call)."""
        self.session.data_received(data)
        return self.heard()

    def heard(self) -> list[Element]:
        header = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        parsed = StreamParser().feed(header + bytes(self.carrier.out))
        self.carrier.out.clear()
        return [e.element for e in parsed if isinstance(e, ElementReceived)]

    def enable(self) -> str:
        [enabled] = self.say(ENABLE)
        assert enabled.tag == SM + "enabled" and enabled.get("resume") == "true"
        return enabled.get("id")

    def resume(self, previd: str, h: int) -> list[Element]:
        return self.say(f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>".encode())


def chat(n: int, to: str = str(JULIET)) -> Element:
    message = Element(C + "message", {"to": to, "type": "chat", "id": f"m{n}"})
    SubElement(message, C + "body").text = f"line {n}"
    return message


def ids(elements) -> list[str]:
    return [e.get("id") for e in elements if e.tag == C + "message"]


@pytest.fixture
def world(tmp_path):
    storage = Storage.open(tmp_path / "iim.db")
    for user in ("juliet", "romeo"):
        storage.add_user(user, "secret-" + user)
    yield storage
    storage.close()


def run(world, scenario, *, seconds: int = 300, **limits):
    """``scenario(ctx, router, romeo, clock)`` inside a running loop."""
    async def main():
        clock = ManualClock()
        log = logging.getLogger("test.sm")
        router = Router(DOMAIN, world, log=log, limits=ServerLimits(**limits))
        ctx = SessionContext(policy=ServerPolicy(DOMAIN, sm_resume_seconds=seconds),
                             tls_context=None, router=router, storage=world, log=log,
                             limits=ServerLimits(sm_resume_timeout=seconds, **limits),
                             clock=clock)
        world.limits = ctx.limits                   # the offline quotas are storage's
        romeo = Romeo()
        router.session_bound(romeo)
        return scenario(ctx, router, romeo, clock)
    return asyncio.run(main())


def cut(juliet: Client) -> None:
    """Her TCP connection is gone (the server learns it from the carrier)."""
    juliet.session.connection_lost()


def offline_ids(storage: Storage) -> list[str]:
    """The ids of the messages kept for juliet, in order."""
    rows = storage.offline_batch("juliet", after=0, limit=100_000, max_bytes=1 << 30)
    found = []
    for _, data in rows:
        text = data.decode()
        quote = "'" if "id='" in text else '"'
        found.append(text.split(f"id={quote}")[1].split(quote)[0])
    return found


# --- §5: resuming --------------------------------------------------------------------------

def test_a_cut_connection_is_resumed_with_the_unacknowledged_then_the_queued(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        previd = juliet.enable()
        for n in range(3):
            router.stanza_from(romeo, chat(n))
        assert ids(juliet.heard()) == ["m0", "m1", "m2"]
        juliet.say(b"<a xmlns='urn:xmpp:sm:3' h='1'/>")       # she acknowledged m0 only
        juliet.say(b"<message to='romeo@example.com/orchard' id='j1'><body>hi</body></message>")
        cut(juliet)
        old = juliet.session
        assert old.detached and router.session_for(JULIET) is old        # still there
        for n in range(3, 5):
            router.stanza_from(romeo, chat(n))                          # queued for her

        again = Client(ctx, "juliet@example.com", "secret-juliet", bind=False)
        answer = again.resume(previd, 1)
        assert answer[0].tag == SM + "resumed"
        assert answer[0].get("previd") == previd and answer[0].get("h") == "1"
        assert ids(answer) == ["m1", "m2", "m3", "m4"]                   # nothing lost, in order
        assert router.session_for(JULIET) is again.session and again.session.jid == JULIET
        assert old.closed and ctx.sessions == {again.session}
        [a] = again.say(R)
        assert a.tag == SM + "a" and a.get("h") == "1"                  # her count goes on
        again.say(b"<a xmlns='urn:xmpp:sm:3' h='5'/>")
        assert not again.session.stream.sm.unacked
        return romeo
    romeo = run(world, scenario)
    assert [s.get("id") for s in romeo.received] == ["j1"]              # no unavailable, no error
    assert offline_ids(world) == []


def test_resume_with_h_too_high_is_a_stream_error_and_the_session_waits_on(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        previd = juliet.enable()
        router.stanza_from(romeo, chat(0))
        cut(juliet)
        liar = Client(ctx, "juliet@example.com", "secret-juliet", bind=False)
        answer = liar.resume(previd, 7)
        error = answer[-1]
        assert error.find(STREAMS + "undefined-condition") is not None
        too_high = error.find(SM + "handled-count-too-high")
        assert too_high.get("h") == "7" and too_high.get("send-count") == "1"
        assert liar.session.closed and liar.carrier.closed
        assert router.session_for(JULIET) is juliet.session and juliet.session.detached
        honest = Client(ctx, "juliet@example.com", "secret-juliet", bind=False)
        answer = honest.resume(previd, 0)
        assert answer[0].tag == SM + "resumed" and ids(answer) == ["m0"]
    run(world, scenario)


def test_a_resumption_id_is_item_not_found_for_another_account(world):
    def scenario(ctx, router, romeo_fake, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        previd = juliet.enable()
        cut(juliet)
        romeo = Client(ctx, "romeo@example.com", "secret-romeo", bind=False)
        [failed] = romeo.resume(previd, 0)
        assert failed.tag == SM + "failed" and failed.find(STANZAS + "item-not-found") is not None
        assert juliet.session.detached and router.session_for(JULIET) is juliet.session
        [unknown] = Client(ctx, "juliet@example.com", "secret-juliet", bind=False).resume(
            "not-an-id-we-gave", 0)
        assert unknown.find(STANZAS + "item-not-found") is not None
    run(world, scenario)


def test_a_connection_still_up_gets_conflict_when_its_session_is_resumed(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        previd = juliet.enable()
        router.stanza_from(romeo, chat(0))
        juliet.heard()
        again = Client(ctx, "juliet@example.com", "secret-juliet", bind=False)
        answer = again.resume(previd, 0)           # the server had not seen the cut
        assert answer[0].tag == SM + "resumed" and ids(answer) == ["m0"]
        error = juliet.heard()[-1]
        assert error.find(STREAMS + "conflict") is not None and juliet.carrier.closed
        juliet.session.connection_lost()          # late news of the old connection: ignored
        assert router.session_for(JULIET) is again.session and not again.session.closed
    run(world, scenario)


# --- §5: nobody resumes ----------------------------------------------------------------------

def test_after_the_timeout_unacknowledged_and_queued_messages_are_kept_offline(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        previd = juliet.enable()
        for n in range(3):
            router.stanza_from(romeo, chat(n))
        juliet.say(b"<a xmlns='urn:xmpp:sm:3' h='1'/>")
        cut(juliet)
        router.stanza_from(romeo, chat(3))
        clock.advance(4.9)
        assert router.session_for(JULIET) is juliet.session
        clock.advance(0.2)                          # sm_resume_timeout: 5 s
        assert juliet.session.closed and router.session_for(JULIET) is None
        late = Client(ctx, "juliet@example.com", "secret-juliet", bind=False)
        [failed] = late.resume(previd, 1)
        assert failed.tag == SM + "failed" and failed.find(STANZAS + "item-not-found") is not None
    run(world, scenario, seconds=5)
    assert offline_ids(world) == ["m1", "m2", "m3"]


def test_after_the_timeout_what_storage_refuses_bounces_to_its_sender(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        juliet.enable()
        for n in range(3):
            router.stanza_from(romeo, chat(n))
        cut(juliet)
        clock.advance(5)
        return romeo
    romeo = run(world, scenario, seconds=5, offline_max_messages=10)
    assert offline_ids(world) == ["m0", "m1", "m2"]

    def full(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        juliet.enable()
        for n in range(3, 12):
            router.stanza_from(romeo, chat(n))
        cut(juliet)
        clock.advance(5)
        return romeo
    romeo = run(world, full, seconds=5, offline_max_messages=10)
    kept = offline_ids(world)
    bounced = [s.get("id") for s in romeo.received if s.get("type") == "error"]
    assert len(kept) == 10 and sorted(kept[3:] + bounced) == sorted(f"m{n}" for n in range(3, 12))
    assert all(s.find(f"{C}error/{STANZAS}resource-constraint") is not None
               for s in romeo.received if s.get("type") == "error")


def test_without_resumption_a_lost_connection_ends_the_session_at_once(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        [enabled] = juliet.say(ENABLE)
        assert enabled.get("id") is None
        router.stanza_from(romeo, chat(0))
        cut(juliet)
        assert juliet.session.closed and router.session_for(JULIET) is None
    run(world, scenario, seconds=0)
    assert offline_ids(world) == ["m0"]            # unacknowledged: not received


# --- resources --------------------------------------------------------------------------------

def test_detached_sessions_count_within_max_resources(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        previd = juliet.enable()
        cut(juliet)
        second = Client(ctx, "juliet@example.com/window", "secret-juliet", bind=False)
        [refused] = second.say(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:"
                               b"xmpp-bind'><resource>window</resource></bind></iq>")
        assert refused.find(f"{C}error/{STANZAS}resource-constraint") is not None
        answer = second.resume(previd, 0)
        assert answer[0].tag == SM + "resumed"
    run(world, scenario, max_resources=1)


def test_what_waits_for_a_detached_session_is_bounded_by_max_backlog(world):
    def scenario(ctx, router, romeo, clock):
        juliet = Client(ctx, str(JULIET), "secret-juliet")
        juliet.enable()
        cut(juliet)
        n = 0
        while not juliet.session.closed:
            router.stanza_from(romeo, chat(n, to=str(JULIET)))
            n += 1
            assert n < 10_000
        return n
    sent = run(world, scenario, max_backlog=64 * 1024, offline_max_messages=100_000,
               offline_quota=1 << 30, offline_quota_per_sender=1 << 30)
    assert offline_ids(world) == [f"m{n}" for n in range(sent)]

