"""The server end of the link as a sans-I/O core (iim.linkconnection), in memory.

No socket, no event loop, no clock: bytes go in, events and bytes come out, and
time is a number the test passes. The docs/muxlink.md example is played as a
transcript, byte for byte; the multiplexor's real set-up (iim.mux.link.set_up)
is wired to a LinkConnection through an in-memory channel; every frame a state
does not accept closes the link with LINKCLOSE protocol.
"""

from __future__ import annotations

import pytest

from iim.linkconnection import (
    TRANSITIONS, HelloReceived, LinkClosed, LinkConnection, LinkSettings, LinkState, LinkUp,
    SessionClosed, SessionCredit, SessionData, SessionOpened,
)
from iim.mux import link as muxlink
from iim.muxlink import (
    MAX_CREDIT, Auth, Close, CloseReason, Frame, FrameDecoder, FrameType, Hello,
    LocalProtocolError, SessionOpen, encode_frame, encode_window, mux_proof, server_proof,
)

MUX_NONCE = bytes(range(32))
SERVER_NONCE = bytes(range(100, 132))
SECRET = b"link secret for the in-memory tests"
BINDING = bytes(range(200, 232))
OPENED = SessionOpen("127.0.0.1", 40000, 5222)


def h(text: str) -> bytes:
    return bytes.fromhex(" ".join(text.split()))


def frame(ftype: FrameType, sid: int = 0, payload: bytes = b"") -> bytes:
    return encode_frame(ftype, sid, payload)


def events(conn: LinkConnection, data: bytes = b"", now: float = 0.0) -> list:
    conn.receive_data(data, now)
    found = []
    while (event := conn.next_event()) is not None:
        found.append(event)
    return found


def frames_out(conn: LinkConnection) -> list[Frame]:
    return FrameDecoder().feed(conn.data_to_send())


def connection(now: float = 0.0, loopback: bool = True, **settings) -> LinkConnection:
    return LinkConnection(LinkSettings(**settings), now=now, loopback=loopback,
                          nonce=SERVER_NONCE)


def up(now: float = 0.0, **settings) -> LinkConnection:
    """A connection past READY (no secret, loopback)."""
    conn = connection(now, **settings)
    events(conn, frame(FrameType.HELLO, 0, Hello(0, 1, MUX_NONCE).encode())
           + frame(FrameType.AUTH), now)
    conn.data_to_send()
    assert conn.state is LinkState.UP
    return conn


def closed_with(conn: LinkConnection, found: list) -> LinkClosed:
    """The link closed itself: the last event says so, LINKCLOSE went out, said the same."""
    assert conn.state is LinkState.CLOSED
    last = found[-1]
    assert isinstance(last, LinkClosed) and not last.by_peer
    out = frames_out(conn)
    assert out[-1].type is FrameType.LINKCLOSE
    assert Close.decode(out[-1].payload) == Close(last.reason, last.text)
    return last


# -- the docs/muxlink.md byte-level example as a transcript ---------------------------------

def test_the_documented_example_byte_for_byte():
    conn = connection()
    hello = h("01 00 0000 00000000 0000002a  49 49 4d 58 0002 0000 0001") + MUX_NONCE
    assert events(conn, hello) == [HelloReceived(Hello(0, 1, MUX_NONCE))]
    assert conn.data_to_send() == h("02 00 0000 00000000 00000023  0002 00") + SERVER_NONCE
    assert events(conn, h("03 00 0000 00000000 00000000")) == [LinkUp(secret_proved=False)]
    assert conn.data_to_send() == h("04 00 0000 00000000 00000004  00010000")
    opened = h("10 00 0000 00000001 00000018"
               "04 7f000001 000000000000000000000000 9c40 1466 00 00 00")
    data = h("11 00 0000 00000001 00000015"
             "3c 3f 78 6d 6c 20 76 65 72 73 69 6f 6e 3d 27 31 2e 30 27 3f 3e")
    assert events(conn, opened + data) == [SessionOpened(1, OPENED),
                                           SessionData(1, b"<?xml version='1.0'?>")]
    conn.grant(1, 21)                           # the session consumed the 21 bytes
    conn.close_session(1)                       # and the server closes it
    assert conn.data_to_send() == (h("13 00 0000 00000001 00000004  00000015")
                                   + h("12 00 0000 00000001 00000001  00"))
    assert conn.flows == {}


def test_any_split_of_the_bytes_gives_the_same_events():
    wire = (frame(FrameType.HELLO, 0, Hello(0, 1, MUX_NONCE).encode()) + frame(FrameType.AUTH)
            + frame(FrameType.OPEN, 1, OPENED.encode()) + frame(FrameType.DATA, 1, b"abc"))
    whole = events(connection(), wire)
    conn = connection()
    split = [e for i in range(len(wire)) for e in events(conn, wire[i:i + 1])]
    assert split == whole and len(whole) == 4


# -- the multiplexor's real set-up, wired in memory ---------------------------------------

class InMemoryLink:
    """What iim.mux.link.set_up takes for a socket: its bytes go into a
    LinkConnection, the connection's come back; EOF once it has nothing more."""

    def __init__(self, conn: LinkConnection) -> None:
        self.conn = conn
        self.events: list = []
        self.inbox = bytearray()

    def sendall(self, data: bytes) -> None:
        self.events += events(self.conn, data)
        self.inbox += self.conn.data_to_send()

    def recv(self, n: int) -> bytes:
        chunk = bytes(self.inbox[:n])
        del self.inbox[:n]
        return chunk

    def settimeout(self, seconds: float) -> None:
        pass


def test_set_up_with_a_secret_and_a_channel_binding():
    conn = connection(secret=SECRET)
    link = InMemoryLink(conn)
    conn.set_binding(BINDING)
    window, proved = muxlink.set_up(link, instance=2, thread=3, secret=SECRET, binding=BINDING)
    assert (window, proved) == (65536, True)
    assert link.events == [HelloReceived(conn.hello), LinkUp(secret_proved=True)]
    assert (conn.hello.instance, conn.hello.thread) == (2, 3)
    assert conn.state is LinkState.UP


@pytest.mark.parametrize("mux_secret, mux_binding, words", [
    (b"another secret", BINDING, "wrong proof: the shared secrets differ, or the set-up "
                                 "was relayed from another TLS session"),
    (SECRET, bytes(32), "wrong proof: the shared secrets differ, or the set-up was relayed"),
], ids=["wrong-secret", "other-tls-session"])
def test_set_up_refused_by_the_server(mux_secret, mux_binding, words):
    conn = connection(secret=SECRET)
    conn.set_binding(BINDING)
    link = InMemoryLink(conn)
    with pytest.raises(muxlink.LinkError, match=r"refused the link \(auth\)"):
        muxlink.set_up(link, instance=0, thread=0, secret=mux_secret, binding=mux_binding)
    last = link.events[-1]
    assert (last.reason, last.text, last.by_peer) == (CloseReason.AUTH,
                                                      "authentication failed", False)
    assert last.why.startswith(f"authentication failed: {words}")
    assert conn.state is LinkState.CLOSED


def test_a_mux_without_a_secret_refuses_a_server_asking_for_one():
    link = InMemoryLink(connection(secret=SECRET))
    with pytest.raises(muxlink.LinkError, match="requires a shared secret"):
        muxlink.set_up(link, instance=0, thread=0, secret=None)
    last = link.events[-1]
    assert (last.reason, last.by_peer, last.why) == (CloseReason.AUTH, True,
                                                     "by the multiplexor: auth")


def test_a_mux_with_a_secret_refuses_a_server_without_one():
    conn = connection()
    link = InMemoryLink(conn)
    with pytest.raises(muxlink.LinkError, match="does not ask for the shared secret"):
        muxlink.set_up(link, instance=0, thread=0, secret=SECRET)
    assert isinstance(link.events[-1], LinkClosed) and link.events[-1].by_peer
    assert link.events[-1].reason is CloseReason.AUTH


def test_the_server_proof_is_bound_to_the_nonces_and_binding():
    conn = connection(secret=SECRET)
    conn.set_binding(BINDING)
    events(conn, frame(FrameType.HELLO, 0, Hello(0, 1, MUX_NONCE).encode()))
    conn.data_to_send()
    proof = mux_proof(SECRET, MUX_NONCE, SERVER_NONCE, BINDING)
    assert events(conn, frame(FrameType.AUTH, 0, Auth(proof).encode())) == [LinkUp(True)]
    [ready] = frames_out(conn)
    assert ready.payload == server_proof(SECRET, MUX_NONCE, SERVER_NONCE, BINDING) + \
        encode_window(65536)


def test_no_secret_and_not_loopback_is_refused_after_hello():
    conn = connection(loopback=False)
    found = events(conn, frame(FrameType.HELLO, 0, Hello(4, 5, MUX_NONCE).encode()))
    assert isinstance(found[0], HelloReceived)         # the log line can name the mux
    closed = closed_with(conn, found)
    assert closed.reason is CloseReason.AUTH
    assert closed.why.startswith("refused: not loopback")


# -- the transition table ------------------------------------------------------------------

def at(state: LinkState) -> LinkConnection:
    if state is LinkState.HELLO:
        return connection()
    if state is LinkState.AUTH:
        conn = connection()
        events(conn, frame(FrameType.HELLO, 0, Hello(0, 1, MUX_NONCE).encode()))
        conn.data_to_send()
        return conn
    return up()


REFUSED = [(state, ftype) for state in (LinkState.HELLO, LinkState.AUTH, LinkState.UP)
           for ftype in FrameType if ftype not in TRANSITIONS[state]]


@pytest.mark.parametrize("state, ftype", REFUSED,
                         ids=[f"{s.name}-{t.name}" for s, t in REFUSED])
def test_a_frame_the_state_does_not_accept_closes_the_link(state, ftype):
    conn = at(state)
    sid = 1 if ftype.is_session else 0
    closed = closed_with(conn, events(conn, frame(ftype, sid, b"x")))
    assert closed.reason is CloseReason.PROTOCOL
    assert closed.text == f"unexpected {ftype.name} ({state.value})"


def test_the_table_is_the_documented_set_up():
    assert TRANSITIONS[LinkState.HELLO] == {FrameType.HELLO: LinkState.AUTH,
                                            FrameType.LINKCLOSE: LinkState.CLOSED}
    assert TRANSITIONS[LinkState.AUTH] == {FrameType.AUTH: LinkState.UP,
                                           FrameType.LINKCLOSE: LinkState.CLOSED}
    assert set(TRANSITIONS[LinkState.UP]) == set(FrameType) - {
        FrameType.HELLO, FrameType.CHALLENGE, FrameType.AUTH, FrameType.READY}
    assert TRANSITIONS[LinkState.CLOSED] == {}


@pytest.mark.parametrize("state", [LinkState.HELLO, LinkState.AUTH, LinkState.UP])
def test_linkclose_from_the_mux_in_any_state(state):
    conn = at(state)
    found = events(conn, frame(FrameType.LINKCLOSE, 0,
                               Close(CloseReason.SHUTDOWN, "bye").encode()))
    assert found == [LinkClosed(CloseReason.SHUTDOWN, "bye", True, "by the multiplexor: shutdown")]
    assert conn.state is LinkState.CLOSED and conn.data_to_send() == b""


def test_a_version_1_hello_closes_with_reason_version():
    conn = connection()
    closed = closed_with(conn, events(conn, frame(FrameType.HELLO, 0,
                                                  Hello(0, 1, MUX_NONCE, 1).encode())))
    assert closed.reason is CloseReason.VERSION


# -- sessions and flow control -------------------------------------------------------------

def test_flow_control_both_ways():
    conn = up(initial_window=10)
    assert events(conn, frame(FrameType.OPEN, 1, OPENED.encode())) == [SessionOpened(1, OPENED)]
    flow = conn.flows[1]
    assert (flow.credit, flow.allowance) == (10, 10)
    conn.send_data(1, b"0123456789")
    with pytest.raises(LocalProtocolError, match="beyond the 0 bytes of credit"):
        conn.send_data(1, b"x")
    assert events(conn, frame(FrameType.WINDOW, 1, encode_window(4))) == [SessionCredit(1, 4)]
    assert flow.credit == 4
    assert events(conn, frame(FrameType.DATA, 1, b"abcdefgh")) == [SessionData(1, b"abcdefgh")]
    assert flow.allowance == 2
    conn.grant(1, 8)
    assert flow.allowance == 10
    assert [f.type for f in frames_out(conn)] == [FrameType.DATA, FrameType.WINDOW]


def test_data_beyond_the_allowance_closes_the_link():
    conn = up(initial_window=4)
    closed = closed_with(conn, events(conn, frame(FrameType.OPEN, 1, OPENED.encode())
                                      + frame(FrameType.DATA, 1, b"12345")))
    assert "5 bytes of DATA beyond the 4 bytes of credit granted" in closed.text


def test_a_window_above_the_largest_credit_closes_the_link():
    conn = up()
    events(conn, frame(FrameType.OPEN, 1, OPENED.encode()))
    found = events(conn, frame(FrameType.WINDOW, 1, encode_window(MAX_CREDIT)))
    assert "above 2^32-1" in closed_with(conn, found).text


def test_frames_that_crossed_our_close_are_ignored_never_opened_ids_are_not():
    conn = up()
    events(conn, frame(FrameType.OPEN, 1, OPENED.encode()))
    conn.close_session(1)
    conn.data_to_send()
    crossed = (frame(FrameType.DATA, 1, b"late") + frame(FrameType.WINDOW, 1, encode_window(1))
               + frame(FrameType.CLOSE, 1, Close().encode()))
    assert events(conn, crossed) == [] and conn.data_to_send() == b""
    closed = closed_with(conn, events(conn, frame(FrameType.DATA, 2, b"never")))
    assert closed.text == "DATA for session 2, never opened"


def test_open_ids_must_increase():
    conn = up()
    events(conn, frame(FrameType.OPEN, 5, OPENED.encode()))
    closed = closed_with(conn, events(conn, frame(FrameType.OPEN, 5, OPENED.encode())))
    assert "ids must increase (last was 5)" in closed.text


def test_close_from_the_mux_forgets_the_session():
    conn = up()
    events(conn, frame(FrameType.OPEN, 1, OPENED.encode()))
    found = events(conn, frame(FrameType.CLOSE, 1, Close(CloseReason.TLS, "bad").encode()))
    assert found == [SessionClosed(1, CloseReason.TLS, "bad")] and conn.flows == {}


def test_session_limit_and_open_rate_close_the_link_with_overload():
    conn = up(max_sessions=2)
    opens = b"".join(frame(FrameType.OPEN, sid, OPENED.encode()) for sid in (1, 2, 3))
    closed = closed_with(conn, events(conn, opens))
    assert (closed.reason, closed.limit) == (CloseReason.OVERLOAD,
                                             "iim_server.muxlink_max_sessions")
    assert closed.text == "more than 2 sessions on one link (iim_server.muxlink_max_sessions)"

    budget = iter([True, False])
    conn = LinkConnection(LinkSettings(open_rate=7), now=0.0, loopback=True,
                          admit_open=lambda now: next(budget))
    events(conn, frame(FrameType.HELLO, 0, Hello(0, 1, MUX_NONCE).encode())
           + frame(FrameType.AUTH))
    conn.data_to_send()
    closed = closed_with(conn, events(conn, opens))
    assert closed.limit == "iim_server.muxlink_open_rate"
    assert closed.text.startswith("more than 7 OPENs per second")


# -- one frame per event, and errors --------------------------------------------------------

def test_frames_behind_an_event_wait_until_it_is_taken():
    """The adapter may end the link while handling an event: what follows is not acted on."""
    conn = up()
    conn.receive_data(frame(FrameType.OPEN, 1, OPENED.encode())
                      + frame(FrameType.PING, 0, b"12345678"), 1.0)
    assert conn.next_event() == SessionOpened(1, OPENED)
    conn.close(CloseReason.OVERLOAD, "the adapter's own reason")
    assert conn.next_event() is None
    assert [f.type for f in frames_out(conn)] == [FrameType.LINKCLOSE]   # no PONG


def test_a_bad_header_acts_on_nothing_of_that_read():
    conn = up()
    bad = bytearray(frame(FrameType.PING, 0, b"12345678"))
    bad[1] = 1                                           # flags
    closed = closed_with(conn, events(conn, frame(FrameType.PING, 0, b"abcdefgh") + bytes(bad)))
    assert "flags 0x01" in closed.text


def test_nothing_is_acted_on_or_sent_once_closed():
    conn = up()
    conn.close(CloseReason.SHUTDOWN, "stopping")
    conn.data_to_send()
    assert events(conn, frame(FrameType.PING, 0, b"12345678")) == []
    conn.grant(1, 5)
    conn.send_data(1, b"x")
    conn.close_session(1)
    assert conn.data_to_send() == b"" and conn.get_timer() is None


# -- time, passed in --------------------------------------------------------------------------

def test_set_up_not_finished_in_time():
    conn = connection(now=100.0, handshake_timeout=30.0)
    assert conn.get_timer() == 130.0
    conn.handle_timer(129.9)
    assert conn.next_event() is None
    conn.handle_timer(130.0)
    closed = closed_with(conn, [conn.next_event()])
    assert closed.text == "link set-up not finished in 30s" and closed.reason is CloseReason.TIMEOUT


def test_keepalive_ping_pong_and_timeout():
    conn = up(now=0.0, ping_interval=30.0, ping_timeout=10.0)
    events(conn, frame(FrameType.OPEN, 1, OPENED.encode()), now=5.0)
    assert conn.get_timer() == 35.0                     # 30 s after the last frame
    conn.handle_timer(35.0)
    [ping] = frames_out(conn)
    assert ping.type is FrameType.PING and conn.get_timer() == 45.0
    events(conn, frame(FrameType.PONG, 0, ping.payload), now=40.0)
    assert conn.get_timer() == 70.0
    conn.handle_timer(70.0)
    frames_out(conn)
    conn.handle_timer(80.0)                             # no PONG within 10 s
    closed = closed_with(conn, [conn.next_event()])
    assert closed.text == "no PONG in 10s"


def test_ping_from_the_mux_is_answered():
    conn = up()
    assert events(conn, frame(FrameType.PING, 0, b"8 bytes!")) == []
    assert frames_out(conn) == [Frame(FrameType.PONG, 0, b"8 bytes!")]
