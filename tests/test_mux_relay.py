"""The relay core (iim._fastmux.Relay) over real loopback sockets.

Clients are plain sockets; the server end is tests/muxpeer.LinkPeer, a
stand-in written from docs/muxlink.md that records and checks every frame
the relay sends. Each test ends by checking that the peer saw no protocol
violation and (for the leak test) that no descriptor was left open.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from iim import _fastmux
from iim.mux import link as muxlink
from muxpeer import (CLOSE, DATA, LINKCLOSE, OPEN, PING, WINDOW, LinkPeer, RelayHarness,
                     closed_by_peer, frame, make_listener, open_fds, recv_exact)
from support import free_port, wait_until    # waits for the event; its deadline only bounds a failure


@pytest.fixture
def peer():
    p = LinkPeer()
    yield p
    p.close()


@pytest.fixture
def relay(peer):
    h = RelayHarness(peer)
    yield h
    if h.thread.is_alive():
        h.stop()
    assert h.link.errors == []


def echo(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` (from a thread) while reading the echo back."""
    sender = threading.Thread(target=sock.sendall, args=(data,))
    sender.start()
    try:
        return recv_exact(sock, len(data))
    finally:
        sender.join(20)


# -- pass-through -------------------------------------------------------------------------

def test_open_carries_the_client_and_listener_as_in_the_spec(relay):
    with relay.client() as c:
        sid = relay.opened(c)
        o = relay.link.opens[sid]
        host, port = c.getsockname()
        assert (o.family, o.address, o.port, o.local_port) == (4, host, port, relay.port)
        assert (o.transport, o.version, o.cipher) == (0, "", "")
        # docs/muxlink.md byte-level example: 04 7f000001 0*12 <port> <port> 00 00 00
        assert o.raw == (b"\x04\x7f\x00\x00\x01" + bytes(12) + struct.pack("!HH", port, relay.port)
                         + b"\x00\x00\x00")
        assert relay.link.hello == (0, 0)


def test_dual_stack_listener_reports_ipv4_clients_as_ipv4(peer):
    from iim.conf import HostPort
    from iim.mux.worker import open_listener
    listener = open_listener(HostPort(None, 0))     # host None: every address
    up = muxlink.connect("127.0.0.1", peer.port, instance=0, thread=0, secret=None)
    relay = _fastmux.Relay(listener.fileno(), up.sock.detach(), up.window, 10)
    runner = threading.Thread(target=relay.run, daemon=True)
    runner.start()
    link = peer.wait_links(1)[0]
    port = listener.getsockname()[1]
    assert relay.local_port == port
    families = {}
    for host in ("127.0.0.1", "::1") if socket.has_dualstack_ipv6() else ("127.0.0.1",):
        with socket.create_connection((host, port), timeout=5) as c:
            assert echo(c, b"hi") == b"hi"
            o = link.opens[wait_until(lambda: link.session_for_port(c.getsockname()[1]))]
            families[host] = (o.family, o.address, o.local_port)
    assert families["127.0.0.1"] == (4, "127.0.0.1", port)          # not ::ffff:127.0.0.1
    if "::1" in families:
        assert families["::1"] == (6, "::1", port)
    relay.stop()
    runner.join(5)
    listener.close()


def test_bytes_pass_untouched_both_ways_many_sessions(relay):
    clients = [relay.client() for _ in range(40)]
    payloads = [os.urandom(50_000 + 1000 * i) for i in range(len(clients))]
    with ThreadPoolExecutor(len(clients)) as pool:
        echoed = list(pool.map(echo, clients, payloads))
    assert echoed == payloads
    for c, data in zip(clients, payloads):
        assert bytes(relay.link.received[relay.opened(c)]) == data
        c.close()
    wait_until(lambda: len(relay.link.closed) == len(clients))
    assert set(relay.link.closed.values()) == {0}
    stats = relay.stats()
    total = sum(map(len, payloads))
    assert stats["bytes_client_to_server"] == stats["bytes_server_to_client"] == total
    assert (stats["opened"], stats["closed"], stats["sessions_plain"]) == (40, 40, 0)


def test_large_transfers_are_byte_exact(relay):
    clients = [relay.client() for _ in range(3)]
    payloads = [os.urandom(6_000_000) for _ in clients]
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(echo, clients, payloads)) == payloads
    for c in clients:
        c.close()


def test_starttls_and_any_bytes_pass_through_untouched(relay):
    # Without legacy SSL the relay never looks at the bytes: a STARTTLS
    # exchange and a TLS ClientHello are just bytes.
    blob = (b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)))
    with relay.client() as c:
        assert echo(c, blob) == blob


def test_server_close_flushes_then_closes_the_client(relay):
    with relay.client() as c:
        sid = relay.opened(c)
        relay.link.send_data(sid, b"</stream:stream>")
        relay.link.send_close(sid)
        c.settimeout(5)
        assert recv_exact(c, 16) == b"</stream:stream>"
        assert c.recv(10) == b""
    wait_until(lambda: relay.stats()["closed"] == 1)
    assert sid not in relay.link.closed          # the other side answers nothing


def test_client_eof_sends_close_after_its_data(relay):
    c = relay.client()
    sid = relay.opened(c)
    c.sendall(b"last words")
    c.close()
    wait_until(lambda: sid in relay.link.closed)
    assert bytes(relay.link.received[sid]) == b"last words"
    assert relay.link.closed[sid] == 0


def test_closes_wait_for_company_but_not_for_long():
    """Lazy CLOSE (Relay close_delay, 2 ms by default): nobody waits for a
    CLOSE, so a link output of nothing but CLOSEs waits for another frame to
    share its write. With the delay at 1 s to make the waiting certain: two
    clients leave and the relay has seen both go, yet their CLOSEs are not
    sent; a third client's bytes take them along, first and in the same read
    of the link; a last client's CLOSE, with nothing to wait for, leaves when
    its delay is over."""
    peer = LinkPeer(echo=False)
    h = RelayHarness(peer, close_delay=1.0)
    try:
        a, b, c, d = (h.client() for _ in range(4))
        sa, sb, sc, sd = (h.opened(x) for x in (a, b, c, d))
        h.link.round_trip()
        before = h.stats()
        a.close()
        b.close()
        wait_until(lambda: h.stats()["closed"] - before["closed"] == 2, what="both ends seen")
        assert sa not in h.link.closed and sb not in h.link.closed
        c.sendall(b"hello")
        h.link.wait_for(lambda: h.link.received[sc] == b"hello", what="the DATA")
        assert h.link.closed == {sa: 0, sb: 0}        # parsed before the DATA behind them
        first = h.link.first_read
        assert first[(CLOSE, sa)] == first[(CLOSE, sb)] == first[(DATA, sc)]
        d.close()
        wait_until(lambda: h.stats()["closed"] - before["closed"] == 3, what="the last end")
        assert sd not in h.link.closed
        h.link.wait_for(lambda: sd in h.link.closed, what="the lone CLOSE, after its delay")
        assert h.link.errors == []
        c.close()
    finally:
        h.stop()
        peer.close()


@pytest.mark.parametrize("pending, urgent, writable, now, wait", [
    (0, False, True, 500, None),       # nothing waiting: no deadline
    (13, True, True, 500, None),       # a frame that must go: the turn sends them all
    (13, False, True, 400, 2),         # only CLOSEs: due in 1.1 ms, so 2 (never early)
    (13, False, True, 2500, 0),        # due: the next turn at once
    (13, False, False, 2500, None),    # the link refused them: its EPOLLOUT edge, no spin
], ids=["empty", "urgent", "waiting", "due", "link-refused"])
def test_lone_closes_set_a_deadline_only_while_the_link_takes_them(
        pending, urgent, writable, now, wait):
    """How long the loop may sleep for lazy CLOSEs (queued at 0 us, delay 1.5 ms)."""
    assert _fastmux.close_wait(pending, urgent, writable, 0, 1500, now) == wait


# -- batching -----------------------------------------------------------------------------

def test_frames_for_many_sessions_share_few_link_writes():
    peer = LinkPeer(window=2048, echo=False)
    h = RelayHarness(peer)
    try:
        clients = [h.client() for _ in range(200)]
        sids = [h.opened(c) for c in clients]
        before = h.stats()
        # One burst from the server: 200 DATA frames, each using half the
        # window, so every one of them makes the relay grant a WINDOW back.
        peer_burst = b"".join(frame(DATA, sid, bytes([sid % 256]) * 1024) for sid in sids)
        h.link.send_raw(peer_burst)
        wait_until(lambda: h.link.frames[WINDOW] >= 200, what="200 WINDOW frames")
        after = h.stats()
        frames = after["frames_out"] - before["frames_out"]
        writes = after["link_writes"] - before["link_writes"]
        assert frames >= 200
        assert writes <= frames // 10, (frames, writes)
        for sid, c in zip(sids, clients):
            assert recv_exact(c, 1024) == bytes([sid % 256]) * 1024
        # and many clients' bytes arrive upstream in DATA frames, correctly
        for i, c in enumerate(clients):
            c.sendall(b"msg %d;" % i)
        wait_until(lambda: all(h.link.received[sid] == b"msg %d;" % i
                               for i, sid in enumerate(sids)))
        assert h.link.errors == []
        for c in clients:
            c.close()
    finally:
        h.stop()
        peer.close()


def test_pacing_serves_what_many_clients_sent_in_one_turn_and_one_link_write():
    """iim_mux.link_flush_delay_us: a busy relay paces its turns (here by 0.4 s,
    to make the gathering certain on a busy machine; the opening of 20 sessions
    within it is busy enough for the Pacer). The PING turn starts a pause; 20
    clients write during it, and the next turn reads them all and sends them in
    one link write."""
    peer = LinkPeer(echo=False)
    h = RelayHarness(peer, flush_delay=0.4)
    try:
        clients = [h.client() for _ in range(20)]
        sids = [h.opened(c) for c in clients]
        h.link.round_trip()                    # the OPEN turns are over; a pause begins
        before = h.stats()
        for i, c in enumerate(clients):
            c.sendall(b"msg %d;" % i)
        h.link.wait_for(lambda: all(h.link.received[sid] == b"msg %d;" % i
                                    for i, sid in enumerate(sids)), timeout=20)
        # the relay counts a write after send() returns: the peer may read first
        writes = wait_until(lambda: h.stats()["link_writes"] - before["link_writes"],
                            timeout=20, what="the link write counted")
        assert writes <= 4, writes             # 20 DATA frames; 4: a machine stalled
        assert h.stats()["paced_turns"] > before["paced_turns"]
        assert h.link.errors == []
    finally:
        h.stop()
        peer.close()


def test_stop_ends_a_pause_at_once():
    """A relay pacing its turns by 10 s stops in much less: stop() wakes the pause.
    Two PINGs in a row are busy enough for a 10 s delay: the second turn pauses."""
    peer = LinkPeer(echo=False)
    h = RelayHarness(peer, flush_delay=10)
    try:
        for _ in range(2):
            payload = secrets.token_bytes(8)
            h.link.send_raw(frame(PING, 0, payload))
            h.link.wait_for(lambda: payload in h.link.pongs, 20, "the PONG")
        wait_until(lambda: h.stats()["paced_turns"] > 0, what="a pause")
    finally:
        started = time.monotonic()
        h.stop()
        assert time.monotonic() - started < 5     # the teardown's link linger included
        peer.close()


def test_link_buffers_grown_by_a_burst_are_released_once_idle():
    """Ten clients with a 4 MB window each blast 1 MB while the server does not
    read the link: the relay reads up to 64 KiB of each per turn into one link
    output, which grows to megabytes once the kernel's buffers are full. When the
    server reads again and the burst has passed, the empty buffers are freed a
    second later; the session buffers are too."""
    peer = LinkPeer(window=4_000_000, echo=False)
    h = RelayHarness(peer)
    try:
        clients = [h.client() for _ in range(10)]
        sids = [h.opened(c) for c in clients]
        idle = h.stats()["link_buffered"]
        h.link.pause_reading()
        data = [os.urandom(1_000_000) for _ in clients]
        with ThreadPoolExecutor(len(clients)) as pool:
            list(pool.map(lambda cd: cd[0].sendall(cd[1]), zip(clients, data)))
        # the kernel holds a few MB at most (the relay's send buffer, ours cut to
        # 64 KiB): the rest of the 10 MB waits in the relay's link output
        wait_until(lambda: h.stats()["link_buffered"] > 4 * 262144, timeout=30,
                   what="link output grown past the release threshold")
        h.link.resume_reading()
        wait_until(lambda: all(bytes(h.link.received[s]) == d for s, d in zip(sids, data)),
                   timeout=30, what="10 MB upstream")
        stats = wait_until(lambda: (s := h.stats())["link_buffered"] <= max(idle, 2 * 262144)
                           and s, timeout=30, what="oversized link buffers freed")
        assert stats["link_buffers_released"] >= 1
        assert stats["buffered"] == 0
        assert h.link.errors == []
    finally:
        h.stop()
        peer.close()


# -- flow control -------------------------------------------------------------------------

def test_a_client_that_never_reads_costs_one_window_and_stalls_only_itself(relay):
    window = relay.window
    slow = relay.client(rcvbuf=4096)
    fast = relay.client()
    slow_sid, fast_sid = relay.opened(slow), relay.opened(fast)
    blob = os.urandom(3_000_000)
    relay.link.send_data(slow_sid, blob)
    # The server runs out of credit for the slow session, and the relay holds at
    # most one window of it. (Each is read once, when it happens: a busy machine
    # may deliver a WINDOW between two reads, so a second read could see the
    # credit of a moment, not the stall.)
    wait_until(lambda: relay.link.blocked(slow_sid), what="server blocked on the slow client")
    buffered = wait_until(lambda: relay.stats()["buffered"], what="relay buffering")
    assert 0 < buffered <= window
    # ... while another session on the same link keeps flowing both ways.
    data = os.urandom(2_000_000)
    assert echo(fast, data) == data
    # The slow session is still stalled (part of its blob has not left the
    # server: the relay took only what the client's socket and one window hold),
    # and the relay still holds no more than a window.
    with relay.link.cond:
        assert len(relay.link.pending[slow_sid]) > 0
    assert relay.stats()["buffered"] <= window
    # The slow client finally reads: everything arrives, the buffer is freed.
    assert recv_exact(slow, len(blob)) == blob
    wait_until(lambda: relay.stats()["buffered"] == 0)
    slow.close()
    fast.close()


def test_reading_pauses_without_upstream_credit(relay):
    with relay.client() as c:
        sid = relay.opened(c)
        relay.link.hold.add(sid)               # the server grants nothing back
        relay.link.peer.echo = False
        c.sendall(os.urandom(relay.window * 3))
        wait_until(lambda: len(relay.link.received[sid]) == relay.window)
        threading.Event().wait(0.2)
        assert len(relay.link.received[sid]) == relay.window   # never beyond the credit
        relay.link.release(sid)                               # WINDOW resumes the reading
        relay.link.hold.discard(sid)
        wait_until(lambda: len(relay.link.received[sid]) == relay.window * 3)


# -- limits -------------------------------------------------------------------------------

def test_maxsessions_plus_one_is_refused_and_the_others_carry_on(peer):
    h = RelayHarness(peer, limit=5)
    try:
        clients = [h.client() for _ in range(5)]
        sids = [h.opened(c) for c in clients]
        extra = h.client()
        assert closed_by_peer(extra, 5)
        extra.close()
        assert h.stats()["refused"] == 1
        assert len(h.link.opens) == 5
        for c in clients:
            assert echo(c, b"still here") == b"still here"
        clients.pop().close()
        wait_until(lambda: sids[-1] in h.link.closed)
        with h.client() as again:                 # a place was freed
            h.opened(again)
        assert h.link.errors == []
        for c in clients:
            c.close()
    finally:
        h.stop()


def test_session_limit_is_shared_by_the_relays_of_a_process(peer):
    limit = _fastmux.SessionLimit(3)
    a, b = RelayHarness(peer, limit=limit), RelayHarness(peer, limit=limit, thread=1)
    try:
        clients = [a.client(), a.client(), b.client()]
        for c, h in zip(clients, (a, a, b)):
            h.opened(c)
        assert limit.count == 3
        extra = b.client()
        assert closed_by_peer(extra, 5)
        assert b.stats()["refused"] == 1
        for c in clients:
            c.close()
        wait_until(lambda: limit.count == 0)
    finally:
        a.stop()
        b.stop()


# -- the link -----------------------------------------------------------------------------

def test_link_loss_closes_every_client_and_the_listener_refuses_meanwhile(peer):
    h = RelayHarness(peer)
    clients = [h.client() for _ in range(5)]
    for c in clients:
        h.opened(c)
    h.link.drop()
    assert h.wait_exit(5) == _fastmux.EXIT_LINK_LOST
    assert _fastmux.EXIT_NAMES[h.code] == "link lost"
    for c in clients:
        assert closed_by_peer(c, 5)
        c.close()
    assert h.stats()["sessions_plain"] == 0
    # While the link is down, the worker refuses clients with refuse_for:
    refused = []
    t = threading.Thread(target=lambda: refused.append(
        _fastmux.refuse_for(h.listener.fileno(), 1500)))
    t.start()
    late = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    assert closed_by_peer(late, 5)
    late.close()
    t.join(5)
    assert refused == [1]
    # A new link on the same listener serves clients again.
    before = len(peer.links)
    up = muxlink.connect("127.0.0.1", peer.port, instance=0, thread=0, secret=None)
    relay2 = _fastmux.Relay(h.listener.fileno(), up.sock.detach(), up.window, 10)
    t2 = threading.Thread(target=relay2.run, daemon=True)
    t2.start()
    link2 = peer.wait_links(before + 1)[-1]
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as c:
        assert echo(c, b"back again") == b"back again"
    relay2.stop()
    t2.join(5)
    assert not t2.is_alive()
    assert link2.linkclose == (4, "multiplexor stopping")
    h.listener.close()


def test_stop_closes_clients_and_tells_the_server(relay):
    clients = [relay.client() for _ in range(3)]
    for c in clients:
        relay.opened(c)
    assert relay.stop() == _fastmux.EXIT_STOPPED
    for c in clients:
        assert closed_by_peer(c, 5)
        c.close()
    wait_until(lambda: relay.link.linkclose is not None)
    assert relay.link.linkclose == (4, "multiplexor stopping")
    assert relay.relay.exit_detail == "stopped"


def test_server_linkclose_ends_the_relay(relay):
    c = relay.client()
    relay.opened(c)
    relay.link.send_raw(frame(LINKCLOSE, 0, b"\x04server stopping"))
    assert relay.wait_exit(5) == _fastmux.EXIT_LINK_CLOSED
    assert relay.relay.exit_detail == "the server closed the link (shutdown): server stopping"
    assert closed_by_peer(c, 5)
    c.close()


def test_keepalive_pings_and_gives_up_on_a_silent_server(peer):
    h = RelayHarness(peer, keepalive=0.5)       # a PONG later than that ends the link
    try:
        wait_until(lambda: h.link.frames[PING] >= 2, what="two PINGs")
        assert h.thread.is_alive()               # PONGs keep it up
        peer.answer_pings = False
        assert h.wait_exit(15) == _fastmux.EXIT_TIMEOUT
        wait_until(lambda: h.link.linkclose is not None)
        assert h.link.linkclose[0] == 6          # timeout
    finally:
        h.listener.close()


@pytest.mark.parametrize("bad, why", [
    (frame(0x7f, 0, b""), "unknown frame type"),
    (frame(0x08, 0, b""), "unknown frame type"),
    (frame(DATA, 1, b"x", flags=1), "non-zero flags"),
    (frame(DATA, 0, b"x"), "session id 0"),
    (frame(PING, 5, bytes(8)), "session id 0"),
    (frame(DATA, 999, b"x"), "never opened"),
    (struct.pack("!BBHII", DATA, 0, 0, 1, 70000), "longer than 65536"),
    (frame(OPEN, 1, bytes(24)), "unexpected frame type"),
    (frame(DATA, 1, b""), "bad DATA"),
])
def test_protocol_violations_close_the_link(peer, bad, why):
    h = RelayHarness(peer)
    with h.client() as c:
        h.opened(c)
        h.link.send_raw(bad)
        assert h.wait_exit(5) == _fastmux.EXIT_PROTOCOL
        assert why in h.relay.exit_detail
        wait_until(lambda: h.link.linkclose is not None)
        assert h.link.linkclose[0] == 1              # protocol
        assert closed_by_peer(c, 5)
    h.listener.close()


def test_data_beyond_the_granted_window_closes_the_link():
    peer = LinkPeer(window=1000)
    h = RelayHarness(peer)
    with h.client() as c:
        sid = h.opened(c)
        h.link.send_raw(frame(DATA, sid, bytes(1001)))
        assert h.wait_exit(5) == _fastmux.EXIT_PROTOCOL
        assert "beyond the granted window" in h.relay.exit_detail
    h.listener.close()
    peer.close()


def test_frames_crossing_a_close_are_ignored(relay):
    c = relay.client()
    sid = relay.opened(c)
    c.close()
    wait_until(lambda: sid in relay.link.closed)
    relay.link.send_raw(frame(DATA, sid, b"late") + frame(WINDOW, sid, struct.pack("!I", 5))
                        + frame(CLOSE, sid, b"\x00"))
    with relay.client() as d:                    # still serving
        assert echo(d, b"fine") == b"fine"
        assert relay.opened(d) > sid             # ids only increase


# -- link set-up --------------------------------------------------------------------------

def test_link_set_up_with_a_shared_secret():
    peer = LinkPeer(secret=b"s3cret")
    try:
        up = muxlink.connect("127.0.0.1", peer.port, instance=2, thread=3, secret=b"s3cret")
        assert (up.window, up.secret_proved) == (65536, True)
        assert peer.wait_links(1)[0].hello == (2, 3)
        up.sock.close()
        with pytest.raises(muxlink.LinkError, match=r"refused the link \(auth\)"):
            muxlink.connect("127.0.0.1", peer.port, instance=0, thread=0, secret=b"wrong")
        with pytest.raises(muxlink.LinkError, match="requires a shared secret"):
            muxlink.connect("127.0.0.1", peer.port, instance=0, thread=0, secret=None)
    finally:
        peer.close()


def test_the_mux_refuses_a_server_that_cannot_prove_the_secret():
    impostor = LinkPeer(secret=b"s3cret", proof_secret=b"guess")
    plain = LinkPeer()
    try:
        with pytest.raises(muxlink.LinkError, match="server's proof is wrong"):
            muxlink.connect("127.0.0.1", impostor.port, instance=0, thread=0, secret=b"s3cret")
        with pytest.raises(muxlink.LinkError, match="does not ask for the shared secret"):
            muxlink.connect("127.0.0.1", plain.port, instance=0, thread=0, secret=b"s3cret")
    finally:
        impostor.close()
        plain.close()


def test_unreachable_server_is_one_line():
    port = free_port()                          # nothing listens there
    with pytest.raises(muxlink.LinkError, match=rf"link to 127.0.0.1:{port}: Connection refused"):
        muxlink.connect("127.0.0.1", port, instance=0, thread=0, secret=None)


# -- resources ----------------------------------------------------------------------------

def test_no_descriptor_or_session_leaks_after_many_sessions(peer):
    baseline = open_fds()
    h = RelayHarness(peer, limit=100)
    for round_ in range(6):
        clients = [h.client() for _ in range(50)]
        for i, c in enumerate(clients):
            if i % 3 == 0:
                c.sendall(b"x" * 1000)
        sids = [h.opened(c) for c in clients]
        for i, (c, sid) in enumerate(zip(clients, sids)):
            if i % 2:
                h.link.send_close(sid)           # half closed by the server
                assert closed_by_peer(c, 5)
            c.close()
        wait_until(lambda: h.stats()["sessions_plain"] == 0, what="all sessions closed")
    stats = h.stats()
    assert stats["opened"] == stats["closed"] == 300
    assert stats["buffered"] == 0
    h.stop()
    del h
    wait_until(lambda: open_fds() <= baseline, what="descriptors back to the baseline")


def test_relay_objects_that_never_ran_close_their_link(peer):
    baseline = open_fds()
    listener = make_listener()
    up = muxlink.connect("127.0.0.1", peer.port, instance=0, thread=0, secret=None)
    relay = _fastmux.Relay(listener.fileno(), up.sock.detach(), up.window, 1)
    del relay
    listener.close()
    wait_until(lambda: open_fds() <= baseline, what="descriptors back to the baseline")
    with pytest.raises(ValueError):
        _fastmux.SessionLimit(0)
