"""Micro-benchmarks of the server's per-stanza and per-login work, in memory.

    python -m pytest bench/bench_core.py --benchmark-only

What each one times (no sockets, no TLS, no event loop):

- ``parse``: one typical chat message (body + XEP-0085 chat state, the size
  quoted in ``iim/xmpp/xml.py``) through ``StreamParser.feed``, one stanza per
  call; and the same stanza 248 times in one 64 KiB call, per batch.
- ``parse_route``: the same bytes into an established ``ServerStream`` (parse,
  checks, ``from`` stamping), then ``Router.stanza_from`` delivering it to a
  recipient session that only counts. ``parse_route_serialize`` lets the
  recipient also write the stanza as it would go on the wire (``to_bytes``):
  the whole CPU path of one routed message, minus I/O and TLS.
- ``serialize``: ``to_bytes`` on the parsed message.
- ``scram``: the server's side of one SCRAM-SHA-256 exchange (RFC 5802/7677):
  credentials from SQLite, client-first, client-final, proof check. The client
  messages are computed once, with fixed nonces, so only the server's work is
  timed. ``scram_both_sides`` adds the client's side (its PBKDF2 with 4096
  iterations dominates): what a login costs a client, or a load generator.

Timings only: nothing here is a pass/fail test. Quote medians.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

import pytest

from iim.server.router import Router
from iim.server.storage import Storage
from iim.xmpp import sasl
from iim.xmpp.client_stream import ClientStream, TLSMode
from iim.xmpp.jid import JID
from iim.xmpp.stream import Phase
from iim.xmpp.xml import ElementReceived, StreamParser, stream_header, to_bytes

from xmpp_pair import DOMAIN, USERS, Pair, server  # tests/xmpp_pair.py

SENDER = f"juliet@{DOMAIN}/balcony"
RECIPIENT = f"romeo@{DOMAIN}/orchard"

# A typical one-to-one chat message as a client sends it: 264 bytes.
CHAT = (
    f"<message from='{SENDER}' id='ktx72v' to='{RECIPIENT}' type='chat' xml:lang='en'>"
    "<body>Art thou not Romeo, and a Montague? Neither, maid, if either thee "
    "dislike.</body>"
    "<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
).encode()
BATCH = 65536 // len(CHAT)                 # stanzas in one 64 KiB read


class CountingSession:
    """The least a session can be for the router: it counts what it is given."""

    def __init__(self, jid: str, *, serialize: bool = False) -> None:
        self.jid = JID.parse(jid)
        self.priority: int | None = None
        self.available = False
        self.interested = False
        self.received = 0
        self.wire = 0
        self._serialize = serialize

    def deliver(self, stanza: Element) -> None:
        self.received += 1
        if self._serialize:
            self.wire += len(to_bytes(stanza))

    def close(self, error=None) -> None:
        pass


# -- fixtures ---------------------------------------------------------------------


def open_parser() -> StreamParser:
    parser = StreamParser()
    parser.feed(stream_header(to=DOMAIN, from_=SENDER))
    return parser


@pytest.fixture
def storage(tmp_path):
    store = Storage.open(tmp_path / "iim.db")
    for user, password in USERS.items():
        store.add_user(user, password)
    yield store
    store.close()


def established_stream():
    """A ServerStream that negotiated SASL and bound juliet's 'balcony' resource."""
    client = ClientStream(JID.parse(SENDER), USERS["juliet"], tls=TLSMode.OPTIONAL)
    stream = server()
    client.start()
    Pair(client, stream).run()
    assert stream.phase is Phase.ESTABLISHED and str(stream.jid) == SENDER
    return stream


def routed_world(storage, *, serialize: bool):
    router = Router(DOMAIN, storage)
    stream = established_stream()
    sender = CountingSession(SENDER)
    recipient = CountingSession(RECIPIENT, serialize=serialize)
    router.session_bound(sender)
    router.session_bound(recipient)
    return stream, router, sender, recipient


# -- (a) parse ----------------------------------------------------------------------


def test_parse_one_per_feed(benchmark):
    parser = open_parser()
    events = benchmark(parser.feed, CHAT)
    assert len(events) == 1 and isinstance(events[0], ElementReceived)


def test_parse_batch_of_248_per_feed(benchmark):
    parser = open_parser()
    data = CHAT * BATCH
    events = benchmark(parser.feed, data)
    assert len(events) == BATCH
    benchmark.extra_info["stanzas_per_call"] = BATCH


# -- (b) parse + route ----------------------------------------------------------


def _parse_and_route(stream, router, sender):
    for event in stream.receive_data(CHAT):
        router.stanza_from(sender, event.stanza)


def test_parse_route(benchmark, storage):
    stream, router, sender, recipient = routed_world(storage, serialize=False)
    benchmark(_parse_and_route, stream, router, sender)
    assert recipient.received >= 1 and sender.received == 0
    assert stream.phase is Phase.ESTABLISHED


def test_parse_route_serialize(benchmark, storage):
    stream, router, sender, recipient = routed_world(storage, serialize=True)
    benchmark(_parse_and_route, stream, router, sender)
    assert recipient.received >= 1 and recipient.wire >= recipient.received * len(CHAT)


# -- (c) serialize --------------------------------------------------------------------


def test_serialize(benchmark):
    stanza = open_parser().feed(CHAT)[0].element
    data = benchmark(to_bytes, stanza)
    assert len(data) == len(CHAT)


# -- (d) SCRAM-SHA-256 ------------------------------------------------------------


CLIENT_NONCE = "fyko+d2lbbFgONRv9qkxdawL"
SERVER_NONCE = "3rfcNHYJY1ZVvWVs7j"


def _client_messages(storage) -> tuple[bytes, bytes]:
    """client-first and client-final for fixed nonces (computed once)."""
    client = sasl.ClientAuth("juliet", USERS["juliet"], sasl.Mechanism.SCRAM_SHA_256,
                             nonce=CLIENT_NONCE)
    first = client.start()
    auth = _server_auth(storage, nonce=SERVER_NONCE)
    challenge = auth.start(sasl.Mechanism.SCRAM_SHA_256, first)
    return first, client.respond(challenge.data)


def _server_auth(storage, nonce=None) -> sasl.ServerAuth:
    return sasl.ServerAuth(storage.credentials, DOMAIN, secret=storage.server_secret(),
                           nonce=nonce)


def test_scram_sha256_server_side(benchmark, storage):
    first, final = _client_messages(storage)
    secret = storage.server_secret()

    def exchange():
        auth = sasl.ServerAuth(storage.credentials, DOMAIN, secret=secret, nonce=SERVER_NONCE)
        auth.start(sasl.Mechanism.SCRAM_SHA_256, first)
        return auth.respond(final)

    step = benchmark(exchange)
    assert isinstance(step, sasl.Success) and step.username == "juliet"


def test_scram_sha256_both_sides(benchmark, storage):
    secret = storage.server_secret()

    def exchange():
        client = sasl.ClientAuth("juliet", USERS["juliet"], sasl.Mechanism.SCRAM_SHA_256)
        auth = sasl.ServerAuth(storage.credentials, DOMAIN, secret=secret)
        challenge = auth.start(sasl.Mechanism.SCRAM_SHA_256, client.start())
        step = auth.respond(client.respond(challenge.data))
        client.verify_success(step.additional_data)
        return step

    step = benchmark(exchange)
    assert isinstance(step, sasl.Success)

