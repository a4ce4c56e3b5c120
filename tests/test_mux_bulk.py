"""Large writes through the relay core, plain and with legacy SSL at the mux.

Every test runs twice, against a plain relay and a legacy-SSL one (the same
LinkPeer stand-in server, tests/muxpeer.py). The clients here behave like
real XMPP clients after login: they send nothing more and only read, so a
byte the relay keeps back waits for ever. The socket timeouts are failure
bounds only; nothing here measures time.

The sizes straddle one TLS record (16,384 bytes of plaintext): the relay
writes TLS with partial writes enabled, one record per SSL_write.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest

from muxpeer import LinkPeer, RelayHarness, closed_by_peer, recv_exact, wait_until
from test_mux_tls import client_context, nssdir, tls_ctx  # noqa: F401  (fixtures)

RECORD = 16384
SIZES = [RECORD - 1, RECORD, RECORD + 1, 40 * 1024, 1_000_000]
BOUND = 30.0                      # seconds before a stuck transfer fails the test


@pytest.fixture(params=["plain", "tls"])
def mode(request):
    return request.param


@pytest.fixture
def peer():
    p = LinkPeer(echo=False)
    yield p
    p.close()


@pytest.fixture
def relay(mode, peer, request):
    tls = request.getfixturevalue("tls_ctx") if mode == "tls" else None
    h = RelayHarness(peer, tls=tls)
    yield h
    if h.thread.is_alive():
        h.stop()
    assert h.link.errors == []


@pytest.fixture
def connect(relay, mode, ca):
    """connect(rcvbuf=None) -> a client that has "logged in" (its session is open)."""
    made = []

    def connect(rcvbuf: int | None = None) -> tuple[socket.socket, int]:
        raw = socket.socket()
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(BOUND)
        raw.connect(("127.0.0.1", relay.port))
        sock = (client_context(ca).wrap_socket(raw, server_hostname="localhost")
                if mode == "tls" else raw)
        made.append(sock)
        sock.sendall(b"<stream:stream>")             # the last byte this client sends
        sid = relay.opened(sock)
        wait_until(lambda: relay.link.received[sid] == b"<stream:stream>")
        return sock, sid

    yield connect
    for sock in made:
        sock.close()


def credit_returned(relay, sid: int, reached: int) -> None:
    """The WINDOW credit the relay gave back is what reached the client, less
    at most the part it holds back until half a window has accumulated."""
    link = relay.link
    wait_until(lambda: reached - link.granted[sid] < relay.window // 2, BOUND,
               what="WINDOW for the bytes the client read")
    assert link.granted[sid] <= reached
    assert link.sent[sid] == reached
    assert link.credit[sid] == relay.window + link.granted[sid] - reached
    wait_until(lambda: relay.stats()["buffered"] == 0, BOUND, what="output buffer freed")


@pytest.mark.parametrize("size", SIZES)
def test_a_server_write_reaches_a_client_that_sends_nothing(relay, connect, size):
    client, sid = connect()
    data = os.urandom(size)
    relay.link.send_data(sid, data)
    assert recv_exact(client, size) == data
    later = b"<message><body>after the large one</body></message>"
    relay.link.send_data(sid, later)
    assert recv_exact(client, len(later)) == later
    credit_returned(relay, sid, size + len(later))
    assert relay.stats()["bytes_server_to_client"] == size + len(later)


@pytest.mark.parametrize("size", SIZES)
def test_one_frame_of_each_size_then_stanzas(relay, connect, size):
    # The server's writes arrive as they are: several frames in one link read.
    client, sid = connect()
    stanzas = [os.urandom(size)] + [b"<presence id='%d'/>" % i for i in range(20)]
    for s in stanzas:
        relay.link.send_data(sid, s)
    want = b"".join(stanzas)
    assert recv_exact(client, len(want)) == want
    credit_returned(relay, sid, len(want))


def test_a_slow_reader_gets_everything_once_it_reads(relay, connect):
    client, sid = connect(rcvbuf=4096)
    # More than the relay's socket send buffer can grow to (tcp_wmem's maximum, 4 MB
    # here) plus a window: 1 MB could all fit in the kernel, and then the server
    # never ran out of credit (a fresh-clone run failed so)
    data = os.urandom(6_000_000)
    relay.link.send_data(sid, data)
    # Window pressure: the server runs out of credit for this client ...
    wait_until(lambda: relay.link.blocked(sid), BOUND, what="server blocked on the slow reader")
    assert relay.stats()["buffered"] <= relay.window  # the rest sits in socket buffers
    # ... which then reads in small bites, never sending a byte.
    got = bytearray()
    while len(got) < len(data):
        chunk = client.recv(4096)
        assert chunk, f"EOF after {len(got)} bytes"
        got += chunk
    assert got == data
    credit_returned(relay, sid, len(data))


def test_many_silent_clients_each_get_a_large_write(relay, connect):
    clients = [connect() for _ in range(6)]
    blobs = [os.urandom(40 * 1024 + i * 4099) for i in range(len(clients))]
    for (_, sid), blob in zip(clients, blobs):
        relay.link.send_data(sid, blob)
    for (client, sid), blob in zip(clients, blobs):
        assert recv_exact(client, len(blob)) == blob
        credit_returned(relay, sid, len(blob))


def test_server_close_after_a_large_write_delivers_all_of_it(relay, connect):
    client, sid = connect()
    data = os.urandom(40 * 1024)
    relay.link.send_data(sid, data)
    relay.link.send_close(sid)
    assert recv_exact(client, len(data)) == data
    assert closed_by_peer(client, BOUND)
    wait_until(lambda: relay.stats()["closed"] == 1, BOUND)


@pytest.mark.parametrize("size", [RECORD + 1, 1_000_000])
def test_a_large_client_write_reaches_the_server_under_window_pressure(relay, connect, size):
    client, sid = connect()
    link, login = relay.link, 15
    link.hold.add(sid)                              # the server grants nothing back for now
    data = os.urandom(size)
    sender = threading.Thread(target=client.sendall, args=(data,))   # may block: no credit
    sender.start()
    try:
        wait_until(lambda: len(link.received[sid]) - login >= min(size, relay.window - login),
                   BOUND, what="a window of client bytes upstream")
        assert len(link.received[sid]) <= relay.window + login     # never beyond the credit
        link.release(sid)                           # WINDOW, and grants as it reads from now
        wait_until(lambda: len(link.received[sid]) == login + size, BOUND,
                   what=f"{size} client bytes upstream")
    finally:
        sender.join(BOUND)
    assert link.received[sid] == b"<stream:stream>" + data
    assert relay.stats()["bytes_client_to_server"] == login + size
