"""Sessions: a client that never reads, resources per account, resourceparts,
and teardown when storage fails (issue 11.5 and 11.8; RFC 6120 §4.9.3.14,
§7.6.2.1, §7.7.2.1, RFC 6121 §8.5, RFC 7622 §3.4, RFC 8264 §4.3).

The first tests run against a live server (another process) with alice and
bob chatting throughout; the last drives a real ClientSession in memory,
with a real router and storage, and makes storage fail.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from xml.etree.ElementTree import Element, SubElement

import pytest

from iim.conf.limits import ServerLimits
from iim.server.c2s import ClientSession, SessionContext
from iim.server.router import Router
from iim.server.storage import Storage
from iim.xmpp.client_stream import ClientStream, TLSMode
from iim.xmpp.errors import StreamError, StreamErrorCondition
from iim.xmpp.events import SessionEstablished, StanzaReceived, StreamEnded
from iim.xmpp.jid import JID
from iim.xmpp.ns import BIND_NS, q
from iim.xmpp.server_stream import ServerPolicy
from live import DOMAIN, LiveServer
from rawclient import RawClient
from support.process import DEADLINE
from test_server_robustness import Conversation, _server_rss_kb, run
from support.carrier import MemoryCarrier

C = "{jabber:client}"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
USERS = (("alice", "alice-pw-1"), ("bob", "bob-pw-2"), ("carol", "carol-pw-3"),
         ("dave", "dave-pw-4"), ("erin", "erin-pw-5"))
# Room enough in offline storage that nothing needs to bounce (a bounce would
# be counted, not lost, but the point here is the backlog).
STORAGE = ('iim_server.offline_max_messages = "100000"\n'
           'iim_server.offline_quota = "256M"\n'
           'iim_server.offline_quota_per_sender = "256M"\n')


@pytest.fixture(scope="module")
def server(tmp_path_factory, ca):
    live = LiveServer(tmp_path_factory.mktemp("limits"), ca, extra=STORAGE, users=USERS)
    live.add_users()
    live.start()
    yield live
    assert live.stop() == 0


# ---------------------------------------------------------------------------
# Binding (RFC 6120 §7.6.2.1, §7.7.2.1)


class Binder(RawClient):
    """A RawClient that records the server's answer to its bind request."""

    def __init__(self, jid: str, password: str, ca_file) -> None:
        super().__init__(jid, password, ca_file)
        self.bind_replies: list[Element] = []
        answer = self.stream._on_bind_result

        def record(iq):
            self.bind_replies.append(iq)
            return answer(iq)
        self.stream._on_bind_result = record

    async def bind(self, port: int) -> Element:
        """Log in, ask for the resource, return the server's answer (result or error)."""
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.stream.start()
        self._flush()
        self._reading = asyncio.ensure_future(self._read_loop())
        for _ in range(400):
            if self.bind_replies:
                return self.bind_replies[0]
            await asyncio.sleep(0.05)
        raise AssertionError("no answer to the bind request")


def bind_error(reply: Element) -> str | None:
    error = reply.find(C + "error")
    if reply.get("type") != "error" or error is None:
        return None
    return next(child.tag.partition("}")[2] for child in error
                if child.tag.startswith("{" + STANZAS_NS) and not child.tag.endswith("text"))


def test_an_eleventh_resource_gets_resource_constraint_and_overriding_cannot_exceed(server):
    async def scenario():
        clients = []
        for n in range(10):                     # iim_server.max_resources: 10 by default
            clients.append(await RawClient(f"erin@{DOMAIN}/r{n}", "erin-pw-5",
                                           server.ca_file).connect(server.port))
        eleventh = Binder(f"erin@{DOMAIN}/r10", "erin-pw-5", server.ca_file)
        refused = await eleventh.bind(server.port)
        again = Binder(f"erin@{DOMAIN}/r3", "erin-pw-5", server.ca_file)    # in use: override
        taken_over = await again.bind(server.port)
        for _ in range(400):                    # the server ended the old r3 (conflict) first
            if clients[3].ended is not None:
                break
            await asyncio.sleep(0.05)
        twelfth = Binder(f"erin@{DOMAIN}/r11", "erin-pw-5", server.ca_file)
        still_refused = await twelfth.bind(server.port)
        ended = clients[3].ended
        for client in clients + [eleventh, again, twelfth]:
            await client.close()
        return refused, taken_over, still_refused, ended

    refused, taken_over, still_refused, ended = run(scenario())
    assert bind_error(refused) == "resource-constraint"
    assert refused.find(C + "error").get("type") == "wait"
    assert taken_over.get("type") == "result"
    assert taken_over.findtext(f"{q(BIND_NS, 'bind')}/{q(BIND_NS, 'jid')}") == \
        f"erin@{DOMAIN}/r3"
    assert ended is not None and ended.error.condition is StreamErrorCondition.CONFLICT
    assert bind_error(still_refused) == "resource-constraint"
    assert "limit iim_server.max_resources: refused" in server.log()


@pytest.mark.parametrize("resource", ["phone\u2028line", "phone\u2029", "\u2028"])
def test_a_resource_with_a_line_or_paragraph_separator_is_bad_request(server, resource):
    async def scenario():
        binder = Binder(f"erin@{DOMAIN}/x", "erin-pw-5", server.ca_file)
        binder.stream.jid = _RawResourceJID(binder.stream.jid, resource)
        reply = await binder.bind(server.port)
        await binder.close()
        return reply

    reply = run(scenario())
    assert bind_error(reply) == "bad-request"
    log = server.log()
    assert "\u2028" not in log and "\u2029" not in log


class _RawResourceJID:
    """A client-side JID whose resource is sent unprepared (as a hostile client would)."""

    def __init__(self, jid: JID, resource: str) -> None:
        self.local, self.domain, self.resource = jid.local, jid.domain, resource
        self.bare = jid.bare

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}/{self.resource}"


# ---------------------------------------------------------------------------
# A client that never reads (issue 11.5)


def _message_ids(stanzas) -> list[str]:
    bodies = [s.findtext(C + "body") or "" for s in stanzas if s.tag == C + "message"
              and s.get("type") != "error"]
    return [b[:4] for b in bodies if b[:4].isdigit()]


async def _collect_offline(port, ca_file, unseen: set[str], bounced: int) -> list:
    """dave's next login: initial presence, then stanzas until all the message
    ids in ``unseen`` but ``bounced`` of them have come (the deadline bounds a
    failure: what is missing then is reported by the caller's assertion)."""
    later = await RawClient(f"dave@{DOMAIN}/again", "dave-pw-4", ca_file).connect(port)
    later.send(Element(C + "presence"))
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while len(unseen & set(_message_ids(later.stanzas))) < len(unseen) - bounced:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    await later.close()
    return later.stanzas


def test_a_client_that_never_reads_is_ended_with_policy_violation_and_loses_nothing(server):
    """carol (another process) sends dave/stuck 4,000 messages of 2,000 bytes
    (8 MB); dave never reads. Past iim_server.max_backlog (1 MiB) waiting, his
    session ends with <policy-violation/>; the server's memory stays bounded;
    every message reaches dave: before the stream error on that connection,
    or from offline storage at his next login (or back to carol as an error,
    counted). alice and bob chat throughout."""
    # The kernel holds up to tcp_wmem's maximum (4 MB here) in the server's send
    # buffer before anything waits in the server: 5 MB left the backlog's 1 MiB
    # barely reached, and a fresh-clone run never saw the policy-violation.
    count = 4000

    async def scenario():
        async with Conversation(server) as chat:
            dave = await RawClient(f"dave@{DOMAIN}/stuck", "dave-pw-4",
                                   server.ca_file).connect(server.port)
            dave.stop_reading()
            rss_before = _server_rss_kb(server)
            carol = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).parent / "flood.py"), str(server.port),
                str(server.ca_file), f"carol@{DOMAIN}/flood", "carol-pw-3",
                f"dave@{DOMAIN}/stuck", str(count), "2000", stdout=subprocess.PIPE)
            flowing, peak = 0, 0
            deadline = asyncio.get_running_loop().time() + 90
            while "closing: policy-violation" not in server.log():
                assert asyncio.get_running_loop().time() < deadline, "never ended"
                peak = max(peak, _server_rss_kb(server) - rss_before)
                await asyncio.sleep(0.05)
            dave.resume_reading()               # now: what the kernel holds, then the error
            flowing += await chat.progress()
            for _ in range(300):
                if dave.ended is not None:
                    break
                await asyncio.sleep(0.1)
            bounced = int((await asyncio.wait_for(carol.communicate(), 120))[0])
            peak = max(peak, _server_rss_kb(server) - rss_before)
            await dave.close()
            # what dave did not get live comes from storage, but for what bounced (counted)
            unseen = {f"{n:04d}" for n in range(count)} - set(_message_ids(dave.stanzas))
            offline = await _collect_offline(server.port, server.ca_file, unseen, bounced)
            flowing_after = await chat.progress()
            return dave, offline, bounced, peak, flowing, flowing_after

    dave, offline, bounced, peak, flowing, flowing_after = run(scenario())
    assert dave.ended is not None and dave.ended.error is not None
    assert dave.ended.error.condition is StreamErrorCondition.POLICY_VIOLATION
    live, stored = _message_ids(dave.stanzas), _message_ids(offline)
    assert all(s.find("{urn:xmpp:delay}delay") is not None for s in offline
               if s.tag == C + "message")
    received = set(live) | set(stored)
    missing = sorted(set(f"{n:04d}" for n in range(count)) - received)
    assert len(missing) == bounced, f"lost: {missing[:10]}... ({len(missing)})"
    print(f"\nlive {len(live)}, offline {len(stored)}, bounced {bounced}, "
          f"duplicates {len(live) + len(stored) - len(received)}, peak RSS growth {peak} KB")
    assert peak < 40_000                  # KB: bounded, not 5 MB of elements and growing
    assert flowing > 0 and flowing_after > 0
    assert "limit iim_server.max_backlog: refused" in server.log()


# ---------------------------------------------------------------------------
# Teardown when storage fails (issue 11.8: "disk full" left a ghost session)


async def _logged_in(ctx, jid: str, password: str) -> tuple[ClientSession, MemoryCarrier]:
    carrier = MemoryCarrier()
    session = ClientSession(ctx, carrier)
    client = ClientStream(JID.parse(jid), password, tls=TLSMode.NEVER)
    client.start()
    for _ in range(50):
        session.data_received(client.data_to_send())
        events = client.receive_data(bytes(carrier.out))
        carrier.out.clear()
        if any(isinstance(e, SessionEstablished) for e in events):
            return session, carrier
    raise AssertionError("no session")


class FakeSender:
    """romeo, as the router sees him: records what comes back."""

    def __init__(self, jid: str) -> None:
        self.jid = JID.parse(jid)
        self.priority, self.available, self.interested = None, False, False
        self.received: list[Element] = []

    def deliver(self, stanza: Element) -> None:
        self.received.append(stanza)

    def close(self, error=None) -> None:
        pass


def _chat(to: str, n: int) -> Element:
    message = Element(C + "message", {"to": to, "type": "chat", "id": f"m{n}"})
    SubElement(message, C + "body").text = f"line {n}"
    return message


def test_a_disk_full_at_teardown_leaves_no_ghost_session(tmp_path, caplog):
    storage = Storage.open(tmp_path / "iim.db")
    for user in ("juliet", "romeo"):
        storage.add_user(user, "secret-" + user)
    log = logging.getLogger("test.teardown")

    async def scenario():
        router = Router("example.com", storage, log=log)
        ctx = SessionContext(policy=ServerPolicy("example.com"), tls_context=None,
                             router=router, storage=storage, log=log,
                             limits=ServerLimits())
        juliet, carrier = await _logged_in(ctx, "juliet@example.com/balcony", "secret-juliet")
        romeo = FakeSender("romeo@example.com/orchard")
        router.session_bound(romeo)
        carrier.held = 300_000                  # her socket is full: messages wait
        for n in range(3):
            router.stanza_from(romeo, _chat("juliet@example.com/balcony", n))

        def disk_full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")
        storage.store_offline_many = disk_full
        storage.store_offline = disk_full
        juliet.connection_lost()
        return router, romeo, juliet

    with caplog.at_level(logging.INFO, logger="test.teardown"):
        router, romeo, juliet = run(scenario())
    storage.close()
    assert router.session_for(JID.parse("juliet@example.com/balcony")) is None   # no ghost
    assert router.sessions_of(JID.parse("juliet@example.com")) == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "could not be kept" in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage()
    bounces = [s for s in romeo.received if s.get("type") == "error"]
    assert sorted(s.get("id") for s in bounces) == ["m0", "m1", "m2"]     # none silently lost
    assert all(s.find(f"{C}error/{{{STANZAS_NS}}}service-unavailable") is not None
               for s in bounces)
    assert any("logout juliet@example.com/balcony" in r.getMessage() for r in caplog.records)
