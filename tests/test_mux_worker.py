"""The worker (iim.mux.worker) in-process: relay threads, reconnection, refusal, stats."""

from __future__ import annotations

import logging
import socket

import pytest

from iim.conf import HostPort
from iim.mux.__main__ import nofile_warning
from iim.mux.worker import Backoff, StartupError, Worker, WorkerSettings, stats_line
from muxpeer import LinkPeer, closed_by_peer, recv_exact
from support import free_port, wait_until


def settings(peer: LinkPeer, port: int, **kw) -> WorkerSettings:
    values = dict(instance=3, listen=HostPort("127.0.0.1", port), server_host="127.0.0.1",
                  server_port=peer.port, threads=2, maxsessions=50, stat_frequency=600,
                  usessl=False, backoff_first=0.2, backoff_max=0.8)
    values.update(kw)
    return WorkerSettings(**values)


@pytest.fixture
def peer():
    p = LinkPeer()
    yield p
    p.close()


def round_trip(port: int, data: bytes = b"hello") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(data)
        return recv_exact(c, len(data))


def test_backoff_doubles_to_thirty_seconds_and_resets_after_a_lasting_link():
    b = Backoff()
    assert [b.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    b.link_lasted(5)
    assert b.next() == 30
    b.link_lasted(60)
    assert b.next() == 0.5


def test_nofile_warning_is_one_clear_line():
    assert nofile_warning(2000, 20000) is None
    assert nofile_warning(30000, 20000).startswith(
        "iim_mux.maxsessions = 30000 needs about 60100 open files; the hard limit here is 20000")


def test_threads_relay_reconnect_with_backoff_and_refuse_while_down(peer, caplog):
    port = free_port()
    log = logging.getLogger("iim.mux.test")
    worker = Worker(settings(peer, port), log)
    caplog.set_level(logging.INFO, logger="iim.mux.test")
    worker.start()
    try:
        links = peer.wait_links(2)
        assert sorted(ln.hello for ln in links) == [(3, 0), (3, 1)]
        assert round_trip(port) == b"hello"
        wait_until(lambda: worker.stats()["links_up"] == 2)
        # The server goes away: every link drops, and new links are refused.
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        wait_until(lambda: sum(len(ln.opens) for ln in links) == 5)
        peer.refuse_links = True
        for ln in links:
            ln.drop()
        for c in clients:
            assert closed_by_peer(c, 5)
            c.close()
        wait_until(lambda: worker.stats()["links_up"] == 0)
        late = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert closed_by_peer(late, 5)            # refused at once, not left waiting
        late.close()
        wait_until(lambda: worker.stats()["refused"] >= 1)
        # The server is back: the threads reconnect by themselves.
        peer.refuse_links = False
        wait_until(lambda: worker.stats()["links_up"] == 2)
        assert round_trip(port, b"again") == b"again"
        wait_until(lambda: worker.stats()["closed"] == 6)
        assert worker.stats()["opened"] == 6
    finally:
        worker.stop()
    assert "links up 0/2" in stats_line(worker.stats())
    lost = [r.getMessage() for r in caplog.records if " lost: " in r.getMessage()]
    assert lost and lost[0].startswith("link 3.")
    assert "reconnecting in 0.2 s, refusing clients meanwhile" in lost[0]


def test_stop_is_prompt_while_the_server_is_unreachable():
    port, dead = free_port(), free_port()
    worker = Worker(WorkerSettings(instance=0, listen=HostPort("127.0.0.1", port),
                                   server_host="127.0.0.1", server_port=dead, threads=2,
                                   maxsessions=5, stat_frequency=600, usessl=False),
                    logging.getLogger("iim.mux.test"))
    worker.start()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        assert closed_by_peer(c, 5)               # no server: refused at once
    wait_until(lambda: worker.stats()["refused"] == 1)
    worker.stop(timeout=3)
    assert not any(t.is_alive() for t in worker.threads)


def test_a_port_in_use_is_one_line(peer):
    with socket.socket() as taken:                  # bound without SO_REUSEPORT
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = Worker(settings(peer, port), logging.getLogger("iim.mux.test"))
        with pytest.raises(StartupError, match=rf"iim_mux.listenport: cannot listen on "
                                               rf"127.0.0.1:{port}: Address already in use"):
            worker.start()


def test_stats_line_names_every_counter():
    line = stats_line({"sessions_plain": 3, "sessions_tls": 2, "opened": 9, "closed": 4,
                       "refused": 3, "refused_per_source": 1, "refused_rate": 2,
                       "bytes_client_to_server": 10, "bytes_server_to_client": 20,
                       "handshakes_ok": 2, "handshakes_failed": 1, "links_up": 4, "links": 5})
    assert line == ("sessions 5 (plain 3, TLS 2, handshaking 0), opened 9, closed 4, "
                    "refused 3 (per source 1, rate 2), "
                    "bytes client->server 10, server->client 20, handshakes ok 2 failed 1, "
                    "links up 4/5")


def test_a_relay_that_cannot_be_made_is_one_line_and_retried(peer, caplog, monkeypatch):
    """Relay() can fail for want of memory, or of a cipher this OpenSSL lacks
    (the record layer needs HMAC, AES-GCM and ChaCha20-Poly1305): the link thread
    says so in one line, without a traceback, refuses clients and tries again."""
    from iim.mux import worker as worker_module
    import os

    def no_record_layer(listen_fd, link_fd, *args, **kwargs):
        os.close(link_fd)                         # Relay owns the link from its first line
        raise MemoryError("cannot set up the TLS record layer: no memory, or this "
                          "OpenSSL has no HMAC, AES-GCM or ChaCha20-Poly1305")

    monkeypatch.setattr(worker_module._fastmux, "Relay", no_record_layer)
    port = free_port()
    log = logging.getLogger("iim.mux.test")
    caplog.set_level(logging.INFO, logger="iim.mux.test")
    worker = Worker(settings(peer, port, threads=1), log)
    worker.start()
    try:
        wait_until(lambda: len(peer.links) >= 2, what="a second attempt after the first")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            assert closed_by_peer(c, 5)           # refused while there is no relay
    finally:
        worker.stop()
    errors = [r for r in caplog.records if "cannot start relaying" in r.getMessage()]
    assert errors and errors[0].getMessage() == (
        "link 3.0: cannot start relaying: cannot set up the TLS record layer: no memory, "
        "or this OpenSSL has no HMAC, AES-GCM or ChaCha20-Poly1305")
    assert all(r.exc_info is None for r in caplog.records)
    assert not worker.failed.is_set()
