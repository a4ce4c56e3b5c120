"""The server end of the multiplexor link, over real loopback TCP.

The server runs in-process (SessionContext, Router and Storage, with the TLS
context from a keystore made by the real keytool); the multiplexor is a small
test mux written here that speaks the codec of iim.muxlink on a real socket.
Each session carries a real XMPP stream run by the project's own sans-I/O
ClientStream, with STARTTLS inside the session (TLSLayer, verifying our CA),
SCRAM and resource binding, exactly as a client behind a relay would.
"""

from __future__ import annotations

import asyncio
import logging
from xml.etree.ElementTree import Element, SubElement

import pytest

from iim.keys.context import client_context, server_context
from iim.keys.keystore import load_keystore
from iim.muxlink import (
    MAX_PAYLOAD, Auth, Challenge, Close, CloseReason, Frame, FrameDecoder, FrameType, Hello,
    LinkProtocolError, Ready, SessionOpen, check_server_proof, decode_payload, encode_frame,
    encode_window, mux_proof,
)
from iim.server.c2s import HIGH_WATER, SessionContext
from iim.server.muxlink import start_mux_listener
from iim.server.router import Router
from iim.server.storage import Storage
from iim.tlsbio import TLSLayer
from iim.xmpp.client_stream import ClientStream
from iim.xmpp.errors import StreamErrorCondition
from iim.xmpp.events import SessionEstablished, StanzaReceived, StartTLS, StreamEnded
from iim.xmpp.jid import JID
from iim.xmpp.server_stream import ServerPolicy
from keytool import make_store
from support.process import DEADLINE

DOMAIN = "localhost"
STOREPASS = "Mux-Store-Pw-4"
USERS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "carol": "carol-pw-3"}
SECRET = b"muxlink shared secret Zq81-x"
WINDOW = 65536


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory, ca):
    store = tmp_path_factory.mktemp("muxks") / "server.jks"
    make_store(store, ca, [DOMAIN, "127.0.0.1"], storepass=STOREPASS)
    return server_context(load_keystore(store, STOREPASS))


class LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.getMessage()}")

    def has(self, *words: str) -> bool:
        return any(all(w in line for w in words) for line in self.lines)

    def __str__(self):
        return "\n".join(self.lines)


class Server:
    """An in-process server context with a mux listener on 127.0.0.1."""

    def __init__(self, tmp_path, tls_context, request, **options):
        self.storage = Storage.open(tmp_path / "iim.db")
        for user, password in USERS.items():
            self.storage.add_user(user, password)
        self.log_lines = LogLines()
        self.log = logging.getLogger(f"iim.test.mux.{request.node.name}")
        self.log.propagate = False
        self.log.setLevel(logging.DEBUG)
        self.log.addHandler(self.log_lines)
        self.tls_context = tls_context
        self.negotiation_timeout = options.pop("negotiation_timeout", 20.0)
        self.options = options

    async def __aenter__(self) -> "Server":
        self.ctx = SessionContext(
            policy=ServerPolicy(DOMAIN, tls_offered=True), tls_context=self.tls_context,
            router=Router(DOMAIN, self.storage, log=self.log), storage=self.storage,
            log=self.log, negotiation_timeout=self.negotiation_timeout)
        self.listener = await start_mux_listener(self.ctx, "127.0.0.1", 0, **self.options)
        self.port = self.listener.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.listener.close()
        await self.listener.wait_closed()
        await settle(lambda: not self.ctx.sessions and not self.listener.links)
        assert not self.ctx.negotiating and not self.ctx.connections
        self.storage.close()

    def session_of(self, jid: JID):
        return self.ctx.router.session_for(jid)


@pytest.fixture
def server(tmp_path, tls_context, request):
    return lambda **options: Server(tmp_path, tls_context, request, **options)


async def settle(condition, timeout: float = DEADLINE) -> None:
    """Wait until ``condition()`` holds (the server runs in this same loop)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


# -- the test multiplexor ----------------------------------------------------------------

class TestMux:
    """One link, as a relay thread would run it; records every byte both ways."""

    __test__ = False

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.sent, self.received = bytearray(), bytearray()
        self.link_frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.sessions: dict[int, MuxSession] = {}
        self.answer_pings = True
        self.window = WINDOW
        self.next_sid = 1
        self.eof = asyncio.Event()
        self.decode_error: LinkProtocolError | None = None
        self.reset = False
        self.pings = 0
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, port: int) -> "TestMux":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, ftype, sid: int = 0, payload: bytes = b"") -> None:
        self.send_raw(encode_frame(ftype, sid, payload))

    def send_raw(self, data: bytes) -> None:
        self.sent += data
        self.writer.write(data)

    async def _read(self) -> None:
        decoder = FrameDecoder()
        try:
            while data := await self.reader.read(65536):
                self.received += data
                for frame in decoder.feed(data):
                    self._dispatch(frame)
        except LinkProtocolError as exc:
            self.decode_error = exc
        except ConnectionResetError:
            self.reset = True
        finally:
            self.eof.set()

    def _dispatch(self, frame: Frame) -> None:
        if frame.type.is_session:
            self.sessions[frame.sid].on_frame(frame)
        elif frame.type is FrameType.PING and self.answer_pings:
            self.pings += 1
            self.send(FrameType.PONG, 0, frame.payload)
        else:
            self.link_frames.put_nowait(frame)

    async def frame(self, timeout: float = DEADLINE) -> Frame:
        return await asyncio.wait_for(self.link_frames.get(), timeout)

    async def handshake(self, secret: bytes | None = None, instance: int = 0,
                        thread: int = 1) -> Ready:
        nonce = bytes(range(7, 39))
        self.send(FrameType.HELLO, 0, Hello(instance, thread, nonce).encode())
        challenge = decode_payload(await self.frame())
        assert isinstance(challenge, Challenge)
        proof = mux_proof(secret, nonce, challenge.nonce) if secret else b""
        self.send(FrameType.AUTH, 0, Auth(proof).encode())
        ready = decode_payload(await self.frame())
        assert isinstance(ready, Ready), ready
        if secret:
            assert check_server_proof(secret, nonce, challenge.nonce, ready.proof)
        self.window = ready.window
        return ready

    async def closed_with(self, timeout: float = DEADLINE) -> Close:
        """The LINKCLOSE the server sends, then the end of the connection."""
        frame = await self.frame(timeout)
        assert frame.type is FrameType.LINKCLOSE, frame
        await asyncio.wait_for(self.eof.wait(), timeout)
        self.writer.close()                       # as a mux does after LINKCLOSE
        return decode_payload(frame)

    def open(self, client_port: int = 40000, **kw) -> "MuxSession":
        sid, self.next_sid = self.next_sid, self.next_sid + 1
        opened = SessionOpen(kw.pop("address", "127.0.0.1"), client_port, 5222, **kw)
        session = self.sessions[sid] = MuxSession(self, sid)
        self.send(FrameType.OPEN, sid, opened.encode())
        return session

    async def login(self, user: str, ca, client_port: int, **kw) -> "MuxSession":
        session = self.open(client_port, **{k: v for k, v in kw.items()
                                            if k in ("legacy_tls", "tls_version", "cipher")})
        session.client(JID(user, DOMAIN, "mux"), USERS[user], ca,
                       secure_transport=kw.get("legacy_tls", False))
        await session.established()
        return session

    async def close(self) -> None:
        self.writer.close()
        await asyncio.wait_for(self.eof.wait(), 5)

    def abort(self) -> None:
        self.writer.transport.abort()


class MuxSession:
    """The mux's side of one session: credit both ways, and a client stream."""

    def __init__(self, mux: TestMux, sid: int):
        self.mux, self.sid = mux, sid
        self.credit = mux.window          # what we may send
        self.allowance = mux.window       # what the server may send us
        self.grant = True                 # send WINDOW as we take DATA
        self.held = 0                     # credit we took and did not grant yet
        self.data_bytes = 0
        self.violations: list[str] = []
        self.plain = bytearray()          # what arrived (no client stream)
        self.events: asyncio.Queue = asyncio.Queue()
        self.close_frame: Close | None = None
        self.closed = asyncio.Event()
        self._out = bytearray()
        self.stream: ClientStream | None = None
        self.tls: TLSLayer | None = None

    # frames from the server
    def on_frame(self, frame: Frame) -> None:
        if frame.type is FrameType.DATA:
            self._data(frame.payload)
        elif frame.type is FrameType.WINDOW:
            self.credit += decode_payload(frame)
            self._pump()
        elif frame.type is FrameType.CLOSE:
            self.close_frame = decode_payload(frame)
            self.closed.set()
        else:
            self.violations.append(f"unexpected {frame.type.name}")

    def _data(self, payload: bytes) -> None:
        if self.closed.is_set():
            self.violations.append("DATA after CLOSE")
        if len(payload) > self.allowance:
            self.violations.append(f"{len(payload)} bytes beyond {self.allowance} of credit")
        self.allowance -= len(payload)
        self.data_bytes += len(payload)
        self.held += len(payload)
        if self.grant:
            self.grant_held()
        self._incoming(payload)

    def grant_held(self) -> None:
        if self.held:
            self.mux.send(FrameType.WINDOW, self.sid, encode_window(self.held))
            self.allowance += self.held
            self.held = 0

    # bytes to the server, within credit
    def write(self, data: bytes) -> None:
        self._out += data
        self._pump()

    def _pump(self) -> None:
        while self._out and self.credit > 0:
            size = min(self.credit, MAX_PAYLOAD, len(self._out))
            self.mux.send(FrameType.DATA, self.sid, bytes(self._out[:size]))
            del self._out[:size]
            self.credit -= size

    def close(self, reason=CloseReason.NORMAL) -> None:
        self.mux.send(FrameType.CLOSE, self.sid, Close(reason, "client gone").encode())
        self.closed.set()

    # the XMPP client on top
    def client(self, jid: JID, password: str, ca, secure_transport: bool = False) -> None:
        self.ca = ca
        self.stream = ClientStream(jid, password, secure_transport=secure_transport)
        self.stream.start()
        self.flush()

    def flush(self) -> None:
        out = self.stream.data_to_send()
        if out and self.tls is not None and self.tls.handshake_done:
            out = self.tls.send(out)
        if out:
            self.write(out)

    def _incoming(self, data: bytes) -> None:
        if self.stream is None:
            self.plain += data
            return
        if self.tls is not None:
            data, back = self.tls.receive(data)
            if back:
                self.write(back)
            if self.tls.handshake_done and self.stream.phase.name == "TLS_PENDING":
                self.stream.tls_established()
        if data:
            for event in self.stream.receive_data(data):
                self._event(event)
        self.flush()

    def _event(self, event) -> None:
        if isinstance(event, StartTLS):
            self.flush()                              # nothing after <starttls/> in clear
            self.tls = TLSLayer(client_context(None, anchors=[self.ca.cert]),
                                server_side=False, server_hostname=DOMAIN)
            self.write(self.tls.start())
        self.events.put_nowait(event)

    async def next_event(self, kind, timeout: float = 10.0):
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if isinstance(event, kind):
                return event

    async def established(self) -> JID:
        return (await self.next_event(SessionEstablished)).jid

    def send_message(self, to: str, body: str) -> None:
        message = Element("{jabber:client}message", {"to": to, "type": "chat"})
        SubElement(message, "{jabber:client}body").text = body
        self.stream.send_stanza(message)
        self.flush()

    async def next_body(self, timeout: float = 10.0) -> str:
        event = await self.next_event(StanzaReceived, timeout)
        return event.stanza.findtext("{jabber:client}body")


def hello_bytes(**kw) -> bytes:
    return encode_frame(FrameType.HELLO, 0, Hello(0, 1, bytes(32), **kw).encode())


def h(text: str) -> bytes:
    return bytes.fromhex(" ".join(text.split()))


# -- link set-up -------------------------------------------------------------------------

def test_link_up_without_a_secret_and_closed_by_the_mux(server):
    async def scenario():
        async with server() as srv:
            mux = await TestMux.connect(srv.port)
            ready = await mux.handshake(instance=2, thread=3)
            assert ready == Ready(WINDOW, b"")
            await settle(lambda: srv.log_lines.has("instance 2, thread 3", " up"))
            mux.send(FrameType.LINKCLOSE, 0,
                     Close(CloseReason.SHUTDOWN, "bye\nERROR forged line").encode())
            await asyncio.wait_for(mux.eof.wait(), 5)
            await settle(lambda: srv.log_lines.has(
                "closed: by the multiplexor: shutdown (bye\\x0aERROR forged line); 0 sessions"))
            assert not any("\n" in line for line in srv.log_lines.lines)
            await mux.close()
            return srv.log_lines
    lines = run(scenario())
    [up] = [line for line in lines.lines if " up" in line]
    assert up.startswith("INFO mux link from 127.0.0.1:") and \
        up.endswith("(instance 2, thread 3) up")


def test_link_with_a_shared_secret_proves_both_ways_without_sending_it(server, ca):
    async def scenario():
        async with server(secret=SECRET) as srv:
            mux = await TestMux.connect(srv.port)
            ready = await mux.handshake(secret=SECRET)     # checks the server's proof
            assert len(ready.proof) == 32
            session = await mux.login("alice", ca, 40001)
            session.send_message(f"alice@{DOMAIN}/mux", "to myself")
            assert await session.next_body() == "to myself"
            await mux.close()
            assert srv.log_lines.has("up (shared secret proved)")
            return bytes(mux.sent), bytes(mux.received)
    sent, received = run(scenario())
    for wire in (sent, received):
        assert SECRET not in wire and SECRET.hex().encode() not in wire
        assert SECRET[:8] not in wire


@pytest.mark.parametrize("configured, used, problem", [
    (SECRET, b"a wrong secret", "wrong proof: the shared secrets differ"),
    (SECRET, None, "no proof, and a shared secret is required"),
    (None, SECRET, "the multiplexor sent a proof but no iim_server.muxlink_secretfile"),
], ids=["wrong", "missing", "unexpected"])
def test_authentication_failure_is_refused_and_logged(server, configured, used, problem):
    async def scenario():
        async with server(secret=configured) as srv:
            mux = await TestMux.connect(srv.port)
            nonce = bytes(32)
            mux.send(FrameType.HELLO, 0, Hello(0, 1, nonce).encode())
            challenge = decode_payload(await mux.frame())
            assert challenge.secret_required is (configured is not None)
            proof = mux_proof(used, nonce, challenge.nonce) if used else b""
            mux.send(FrameType.AUTH, 0, Auth(proof).encode())
            close = await mux.closed_with()
            assert close == Close(CloseReason.AUTH, "authentication failed")
            await settle(lambda: srv.log_lines.has("WARNING", "authentication failed", problem))
            return bytes(mux.sent) + bytes(mux.received)
    wire = run(scenario())
    assert SECRET not in wire and b"a wrong secret" not in wire


def test_a_source_not_allowed_is_refused_without_a_word(server):
    async def scenario():
        async with server(allow=["192.0.2.0/24", "2001:db8::/32"]) as srv:
            mux = await TestMux.connect(srv.port)
            mux.send_raw(hello_bytes())
            await mux.close()
            assert mux.received == b""
            await settle(lambda: srv.log_lines.has(
                "WARNING mux link from 127.0.0.1:", "refused: not an allowed source"))
    run(scenario())


def test_set_up_must_finish_in_time(server):
    async def scenario():
        async with server(handshake_timeout=0.3) as srv:
            mux = await TestMux.connect(srv.port)
            assert (await mux.closed_with()).reason is CloseReason.TIMEOUT
            await settle(lambda: srv.log_lines.has("closed: timeout (link set-up not finished"))
    run(scenario())


# -- sessions ----------------------------------------------------------------------------

def test_two_clients_on_one_link_with_starttls_scram_bind_and_a_message(server, ca):
    async def scenario():
        async with server() as srv:
            mux = await TestMux.connect(srv.port)
            await mux.handshake()
            alice = await mux.login("alice", ca, 40001)
            bob = await mux.login("bob", ca, 40002)
            assert alice.tls.info().version in ("TLSv1.2", "TLSv1.3")   # verified our CA
            assert alice.stream.mechanism.value == "SCRAM-SHA-256"
            session = srv.session_of(JID("alice", DOMAIN, "mux"))
            assert session.carrier.peer == "mux:127.0.0.1:40001"
            alice.send_message(f"bob@{DOMAIN}/mux", "hello through the mux")
            assert await bob.next_body() == "hello through the mux"
            bob.send_message(f"alice@{DOMAIN}/mux", "and back")
            assert await alice.next_body() == "and back"
            assert alice.violations == bob.violations == []
            assert srv.log_lines.has("c2s mux:127.0.0.1:40002: TLS established")
            assert srv.log_lines.has("c2s mux:127.0.0.1:40001: session alice@localhost/mux")
            await mux.close()
    run(scenario())


def test_legacy_ssl_at_the_mux_makes_the_session_secure(server, ca):
    async def scenario():
        async with server() as srv:
            mux = await TestMux.connect(srv.port)
            await mux.handshake()
            carol = await mux.login("carol", ca, 40003, legacy_tls=True,
                                    tls_version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256")
            assert carol.tls is None                    # no STARTTLS inside
            assert srv.log_lines.has("session carol@localhost/mux (TLS at the multiplexor)")
            assert srv.log_lines.has("legacy SSL TLSv1.3 TLS_AES_128_GCM_SHA256")
            await mux.close()
    run(scenario())


def test_the_documented_example_against_the_server(server):
    """docs/muxlink.md "Byte-level example", with the server's real answers."""
    async def scenario():
        async with server(negotiation_timeout=0.5) as srv:
            mux = await TestMux.connect(srv.port)
            mux.send_raw(h("01 00 0000 00000000 0000002a 49 49 4d 58 0002 0000 0001") +
                         bytes(32))
            challenge = await mux.frame()
            assert challenge.encode()[:15] == h("02 00 0000 00000000 00000023 0002 00")
            mux.send_raw(h("03 00 0000 00000000 00000000"))
            assert (await mux.frame()).encode() == h("04 00 0000 00000000 00000004 00010000")
            mux.sessions[1] = session = MuxSession(mux, 1)
            mux.send_raw(h("10 00 0000 00000001 00000018 04 7f000001"
                           "000000000000000000000000 9c40 1466 00 00 00"))
            mux.send_raw(h("11 00 0000 00000001 00000015 3c 3f 78 6d 6c 20 76 65 72 73 69"
                           "6f 6e 3d 27 31 2e 30 27 3f 3e"))
            await asyncio.wait_for(session.closed.wait(), 5)     # negotiation timed out
            window = h("13 00 0000 00000001 00000004 00000015")
            close = h("12 00 0000 00000001 00000001 00")
            assert bytes(mux.received).index(window) < bytes(mux.received).index(close)
            assert bytes(mux.received).endswith(close)
            assert b"connection-timeout" in session.plain
            await mux.close()
    run(scenario())


def test_close_from_either_side(server, ca):
    async def scenario():
        async with server() as srv:
            mux = await TestMux.connect(srv.port)
            await mux.handshake()
            alice = await mux.login("alice", ca, 40001)
            bob = await mux.login("bob", ca, 40002)
            alice.close()                                       # the client went away
            await settle(lambda: srv.session_of(JID("alice", DOMAIN, "mux")) is None)
            bob.stream.close()                                  # </stream:stream>
            bob.flush()
            await asyncio.wait_for(bob.closed.wait(), 5)
            assert bob.close_frame == Close(CloseReason.NORMAL, "")
            assert srv.session_of(JID("bob", DOMAIN, "mux")) is None
            # frames that crossed the CLOSE are ignored, the link stays up
            mux.send(FrameType.DATA, bob.sid, b"<presence/>")
            mux.send(FrameType.WINDOW, alice.sid, encode_window(10))
            carol = await mux.login("carol", ca, 40003)
            assert carol.sid == 3
            await mux.close()
    run(scenario())


def test_a_newer_login_replaces_the_older_session_with_conflict(server, ca):
    async def scenario():
        async with server() as srv:
            mux = await TestMux.connect(srv.port)
            await mux.handshake()
            first = await mux.login("alice", ca, 40001)
            second = await mux.login("alice", ca, 40002)
            await asyncio.wait_for(first.closed.wait(), 5)
            ended = await first.next_event(StreamEnded)
            assert ended.error.condition is StreamErrorCondition.CONFLICT
            assert srv.session_of(JID("alice", DOMAIN, "mux")).carrier.sid == second.sid
            await mux.close()
    run(scenario())


# -- flow control ------------------------------------------------------------------------

def test_a_session_without_credit_stalls_only_itself(server, ca):
    count, size = 100, 2000

    async def scenario():
        async with server() as srv:
            mux = await TestMux.connect(srv.port)
            await mux.handshake()
            alice = await mux.login("alice", ca, 40001)
            bob = await mux.login("bob", ca, 40002)
            carol = await mux.login("carol", ca, 40003)
            alice.grant = False                       # alice's client stops reading
            before = alice.data_bytes
            for i in range(count):
                bob.send_message(f"alice@{DOMAIN}/mux", f"{i:04d}" + "x" * size)
            carrier = srv.session_of(JID("alice", DOMAIN, "mux")).carrier
            # every message reached alice's carrier (bob's bytes cross the link
            # under flow control too), and most of them wait there
            await settle(lambda: carrier.pending() > count * size - WINDOW)
            # the server sent exactly the credit alice had, not one byte more
            assert carrier.credit == 0
            assert alice.data_bytes - before == alice.held == WINDOW
            assert alice.allowance == 0 and alice.violations == []
            # the other sessions on the link carry on
            bob.send_message(f"carol@{DOMAIN}/mux", "still flowing")
            assert await carol.next_body() == "still flowing"
            carol.send_message(f"bob@{DOMAIN}/mux", "yes")
            assert await bob.next_body() == "yes"
            assert alice.data_bytes - before == WINDOW
            # alice reads again: everything arrives, in order
            alice.grant = True
            alice.grant_held()
            bodies = [await alice.next_body() for _ in range(count)]
            assert [b[:4] for b in bodies] == [f"{i:04d}" for i in range(count)]
            assert carrier.pending() == 0 and alice.violations == []
            await mux.close()
    run(scenario())


def test_a_client_that_does_not_read_backs_up_its_session_not_the_link(server, ca):
    """Past HIGH_WATER queued bytes the session holds stanzas in its backlog and
    the server withholds the mux's credit for it; reading again releases both."""
    count, size = 200, 2000

    async def scenario():
        async with server() as srv:
            mux = await TestMux.connect(srv.port)
            await mux.handshake()
            alice = await mux.login("alice", ca, 40001)
            bob = await mux.login("bob", ca, 40002)
            alice.grant = False
            for i in range(count):
                bob.send_message(f"alice@{DOMAIN}/mux", f"{i:04d}" + "y" * size)
            session = srv.session_of(JID("alice", DOMAIN, "mux"))
            carrier = session.carrier
            await settle(lambda: carrier.blocked and session._backlog)
            assert HIGH_WATER < carrier.pending() < HIGH_WATER + 2 * size
            credit_before = alice.credit
            alice.send_message(f"bob@{DOMAIN}/mux", "I am still here")   # alice writes
            assert await bob.next_body() == "I am still here"
            await settle(lambda: carrier.owed > 0)
            assert alice.credit < credit_before         # no WINDOW back while blocked
            alice.grant = True
            alice.grant_held()
            bodies = [await alice.next_body() for _ in range(count)]
            assert [b[:4] for b in bodies] == [f"{i:04d}" for i in range(count)]
            await settle(lambda: alice.credit == WINDOW)  # the withheld credit was paid
            assert carrier.owed == 0 and not carrier.blocked and not session._backlog
            assert alice.violations == []
            await mux.close()
    run(scenario())


def test_too_many_sessions_negotiating_are_refused(server):
    async def scenario():
        async with server(max_unauthenticated=0) as srv:
            mux = await TestMux.connect(srv.port)
            await mux.handshake()
            session = mux.open(40001)
            await asyncio.wait_for(session.closed.wait(), 5)
            assert b"resource-constraint" in session.plain
            assert session.close_frame.reason is CloseReason.NORMAL
            assert srv.log_lines.has("c2s mux:127.0.0.1:40001: refused")
            await mux.close()
    run(scenario())


def test_data_beyond_the_granted_credit_closes_the_link(server):
    async def scenario():
        async with server(initial_window=1000) as srv:
            mux = await TestMux.connect(srv.port)
            assert (await mux.handshake()).window == 1000
            mux.open(40001)
            mux.send(FrameType.DATA, 1, b"<" * 1001)
            close = await mux.closed_with()
            assert close.reason is CloseReason.PROTOCOL
            assert "1001 bytes of DATA beyond the 1000 bytes of credit" in close.text
            await settle(lambda: srv.log_lines.has("WARNING", "1 session ended"))
    run(scenario())


# -- link loss and keepalive ---------------------------------------------------------------

def test_link_loss_ends_every_session_of_the_link(server, ca):
    async def scenario():
        async with server() as srv:
            other = await TestMux.connect(srv.port)
            await other.handshake(thread=2)
            carol = await other.login("carol", ca, 40003)
            mux = await TestMux.connect(srv.port)
            await mux.handshake()
            await mux.login("alice", ca, 40001)
            await mux.login("bob", ca, 40002)
            assert len(srv.ctx.sessions) == 3
            mux.abort()                                          # the relay died
            await settle(lambda: len(srv.ctx.sessions) == 1)
            router = srv.ctx.router
            assert router.sessions_of(JID("alice", DOMAIN)) == []
            assert router.sessions_of(JID("bob", DOMAIN)) == []
            assert srv.log_lines.has("WARNING", "(instance 0, thread 1) closed: lost",
                                     "2 sessions ended")
            carol.send_message(f"carol@{DOMAIN}/mux", "the other link is fine")
            assert await carol.next_body() == "the other link is fine"
            await other.close()
    run(scenario())


def test_keepalive_answered_keeps_the_link(server, ca):
    """A PING every 0.1 s of silence; the PONG may take as long as it takes
    (60 s: a bound on a failure). A new PING comes only once the last one's
    PONG was taken, so three PINGs mean two PONGs were."""
    async def scenario():
        async with server(ping_interval=0.1, ping_timeout=60) as srv:
            mux = await TestMux.connect(srv.port)
            await mux.handshake()
            await settle(lambda: mux.pings >= 3 or mux.eof.is_set())
            assert not mux.eof.is_set()
            assert mux.pings >= 3
            mux.send(FrameType.PING, 0, b"12345678")       # and the server answers ours
            assert await mux.frame() == Frame(FrameType.PONG, 0, b"12345678")
            await mux.close()
    run(scenario())


def test_keepalive_timeout_closes_the_link_and_its_sessions(server, ca):
    async def scenario():
        async with server(ping_interval=0.3, ping_timeout=0.3) as srv:
            mux = await TestMux.connect(srv.port)
            await mux.handshake()
            await mux.login("alice", ca, 40001)
            mux.answer_pings = False
            assert (await mux.frame()).type is FrameType.PING
            close = await mux.closed_with()
            assert close == Close(CloseReason.TIMEOUT, "no PONG in 0.3s")
            await settle(lambda: not srv.ctx.sessions)
            assert srv.log_lines.has("closed: timeout (no PONG in 0.3s); 1 session ended")
    run(scenario())


# -- bad frames --------------------------------------------------------------------------

def header(ftype, sid=0, length=0, flags=0):
    return bytes([ftype, flags, 0, 0]) + sid.to_bytes(4, "big") + length.to_bytes(4, "big")


BAD = {
    # name: (set up first?, bytes, reason, words in the LINKCLOSE text)
    "unknown type": (True, header(0x7F), CloseReason.PROTOCOL, "unknown frame type 0x7f"),
    "oversized": (True, header(FrameType.DATA, 1, MAX_PAYLOAD + 1), CloseReason.PROTOCOL,
                  "exceeds 65536"),
    "flags": (True, header(FrameType.PING, 0, 8, flags=0x80) + bytes(8), CloseReason.PROTOCOL,
              "flags 0x80"),
    "open before hello": (False, encode_frame(FrameType.OPEN, 1, SessionOpen(
        "127.0.0.1", 1, 2).encode()), CloseReason.PROTOCOL, "unexpected OPEN (waiting for HELLO)"),
    "version 1": (False, hello_bytes(version=1), CloseReason.VERSION, "link version 1"),
    "not a mux": (False, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", CloseReason.PROTOCOL,
                  "unknown frame type 0x47"),
    "bad magic": (False, encode_frame(FrameType.HELLO, 0, b"IIMY" + bytes(38)),
                  CloseReason.PROTOCOL, "magic"),
    "second hello": (True, hello_bytes(), CloseReason.PROTOCOL, "unexpected HELLO (up)"),
    "challenge from mux": (True, encode_frame(FrameType.CHALLENGE, 0, bytes(35)),
                           CloseReason.PROTOCOL, "unexpected CHALLENGE"),
    "data never opened": (True, encode_frame(FrameType.DATA, 9, b"x"), CloseReason.PROTOCOL,
                          "DATA for session 9, never opened"),
    "bad open": (True, encode_frame(FrameType.OPEN, 1, b"\x05" + bytes(23)),
                 CloseReason.PROTOCOL, "address family 5"),
    "empty data": (True, encode_frame(FrameType.OPEN, 1, SessionOpen("::1", 1, 2).encode()) +
                   encode_frame(FrameType.DATA, 1, b""), CloseReason.PROTOCOL, "empty DATA"),
    "reused id": (True, encode_frame(FrameType.OPEN, 5, SessionOpen("::1", 1, 2).encode()) +
                  encode_frame(FrameType.CLOSE, 5, b"\0") +
                  encode_frame(FrameType.OPEN, 5, SessionOpen("::1", 1, 2).encode()),
                  CloseReason.PROTOCOL, "ids must increase"),
    "window overflow": (True, encode_frame(FrameType.OPEN, 1, SessionOpen("::1", 1, 2).encode())
                        + encode_frame(FrameType.WINDOW, 1, encode_window(2**32 - 1)),
                        CloseReason.PROTOCOL, "above 2^32-1"),
    "bad ping": (True, encode_frame(FrameType.PING, 0, b"short"), CloseReason.PROTOCOL,
                 "PING/PONG payload of 5"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_frames_close_the_link_with_the_right_reason(server, name):
    set_up, wire, reason, words = BAD[name]

    async def scenario():
        async with server() as srv:
            mux = await TestMux.connect(srv.port)
            if set_up:
                await mux.handshake()
            for i in range(0, len(wire), 5):                     # in pieces, as TCP may
                mux.send_raw(wire[i:i + 5])
                await asyncio.sleep(0)
            close = await mux.closed_with()
            assert close.reason is reason and words in close.text, close
            await settle(lambda: srv.log_lines.has("WARNING", f"closed: {reason}", words))
    run(scenario())


# -- shutdown ------------------------------------------------------------------------------

def test_closing_the_listener_shuts_links_and_sessions_down(server, ca):
    async def scenario():
        async with server() as srv:
            mux = await TestMux.connect(srv.port)
            await mux.handshake()
            alice = await mux.login("alice", ca, 40001)
            srv.listener.close()
            close = await mux.closed_with()
            assert close.reason is CloseReason.SHUTDOWN
            ended = await alice.next_event(StreamEnded)
            assert ended.error.condition is StreamErrorCondition.SYSTEM_SHUTDOWN
            assert alice.close_frame == Close(CloseReason.NORMAL, "")
            assert not srv.ctx.sessions
    run(scenario())

