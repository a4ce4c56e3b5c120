"""Legacy SSL at the multiplexor: TLS from the first byte, terminated by the relay core.

The certificate lives in an NSS database made with the real certutil and
pk12util (tests/nsstools.py); iim.mux.tls reads it as the worker does
(iim_mux.* settings, sslpassword.conf) and builds the OpenSSL context from
PEM held in memory. Clients are Python's ssl, verifying against the test CA.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography import x509

from iim import _fastmux, conf
from iim.keys.errors import KeyMaterialError
from iim.mux import tls as muxtls
from iim.mux.ticketkeys import TicketKeys
from muxpeer import LinkPeer, RelayHarness, closed_by_peer, recv_exact, wait_until
from nsstools import NSSDatabase
from support import free_port

PASSWORD = "nss pass: word"
NICK = "Multiplexor-Cert"


@pytest.fixture(scope="module")
def nssdir(tmp_path_factory, ca):
    base = tmp_path_factory.mktemp("mux-tls")
    db = NSSDatabase.create(base / "mux-nss", PASSWORD)
    db.import_pkcs12(ca.issue("localhost", "127.0.0.1"), NICK)
    db.add_cert(ca.cert, "iim test CA", "C,,")
    (base / "sslpassword.conf").write_text(f"Internal (Software) Token:{PASSWORD}\n")
    os.chmod(base / "sslpassword.conf", 0o600)
    return base


def mux_settings(nssdir, nickname=NICK):
    text = (f'iim_mux.usessl = "on"\niim_mux.secconfigdir = "mux-nss"\n'
            f'iim_mux.certnickname = "{nickname}"\n')
    return conf.from_text(text, str(nssdir / "iim.conf")).mux


@pytest.fixture(scope="module")
def tls_ctx(nssdir):
    ctx, warnings_ = muxtls.load_context(mux_settings(nssdir))
    assert warnings_ == ()
    return ctx


@pytest.fixture
def peer():
    p = LinkPeer()
    yield p
    p.close()


@pytest.fixture
def relay(peer, tls_ctx):
    h = RelayHarness(peer, tls=tls_ctx)        # the default handshake deadline (10 s)
    yield h
    if h.thread.is_alive():
        h.stop()
    assert h.link.errors == []


def client_context(ca, alpn=("xmpp-client",)) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem().decode("ascii"))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def tls_echo(c: ssl.SSLSocket, data: bytes) -> bytes:
    """Send `data` and read the echo back, from one thread (an SSL object must
    not be used by two threads at once)."""
    c.setblocking(False)
    sent, got = 0, bytearray()
    while len(got) < len(data):
        readable, writable, _ = select.select([c], [c] if sent < len(data) else [], [], 10)
        assert readable or writable or c.pending(), "echo stalled"
        if writable:
            try:
                sent += c.send(data[sent:sent + 16384])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        while True:
            try:
                chunk = c.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            assert chunk, f"EOF after {len(got)} of {len(data)} bytes"
            got += chunk
    c.setblocking(True)
    return bytes(got)


def tls_client(relay, ctx, **kw) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost", **kw)


def test_tls_client_verifies_negotiates_xmpp_client_and_open_says_so(relay, ca):
    with tls_client(relay, client_context(ca)) as c:
        assert c.selected_alpn_protocol() == "xmpp-client"
        assert c.version() == "TLSv1.3"
        sid = relay.opened(c)
        o = relay.link.opens[sid]
        assert (o.transport, o.version, o.cipher) == (1, "TLSv1.3", c.cipher()[0])
        seen = x509.load_der_x509_certificate(c.getpeercert(binary_form=True))
        assert "CN=localhost" in seen.subject.rfc4514_string()
        data = os.urandom(1_000_000)
        assert tls_echo(c, data) == data
        assert bytes(relay.link.received[sid]) == data        # plaintext upstream
    stats = relay.stats()
    assert (stats["handshakes_ok"], stats["handshakes_failed"]) == (1, 0)


def test_many_tls_sessions_at_once_are_byte_exact(relay, ca):
    ctx = client_context(ca)
    payloads = [os.urandom(400_000 + i) for i in range(8)]

    def one(data):
        with tls_client(relay, ctx) as c:
            return tls_echo(c, data)

    with ThreadPoolExecutor(len(payloads)) as pool:    # one thread per client socket
        assert list(pool.map(one, payloads)) == payloads
    wait_until(lambda: relay.stats()["sessions_tls"] == 0)
    assert relay.stats()["handshakes_ok"] == 8 and relay.stats()["buffered"] == 0


def test_tls12_client_and_no_alpn(relay, ca):
    ctx = client_context(ca, alpn=())
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_client(relay, ctx) as c:
        assert c.selected_alpn_protocol() is None
        o = relay.link.opens[relay.opened(c)]
        assert (o.version, o.cipher) == ("TLSv1.2", c.cipher()[0])
        c.sendall(b"<stream:stream>")
        assert recv_exact(c, 15) == b"<stream:stream>"


def test_other_alpn_offers_get_no_alpn(relay, ca):
    with tls_client(relay, client_context(ca, alpn=("h2", "http/1.1"))) as c:
        assert c.selected_alpn_protocol() is None


def test_handshake_completes_before_open(relay, ca):
    raw = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    wait_until(lambda: relay.stats()["handshaking"] == 1)
    threading.Event().wait(0.2)
    assert relay.link.opens == {}                    # nothing upstream yet
    with client_context(ca).wrap_socket(raw, server_hostname="localhost") as c:
        relay.opened(c)
        assert relay.stats()["sessions_tls"] == 1


def test_tls11_is_refused_and_nothing_goes_upstream(relay):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
        tls_client(relay, ctx)
    wait_until(lambda: relay.stats()["handshakes_failed"] == 1)
    assert relay.link.opens == {} and relay.link.frames.total() == 0


def test_plaintext_on_the_tls_port_is_closed_with_nothing_upstream(relay):
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as c:
        c.sendall(b"<?xml version='1.0'?><stream:stream to='example.com' "
                  b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        assert closed_by_peer(c, 5)
    wait_until(lambda: relay.stats()["handshakes_failed"] == 1)
    assert relay.link.opens == {} and relay.link.received == {}
    assert relay.stats()["handshaking"] == 0


def test_a_silent_client_is_closed_at_the_handshake_timeout(peer, tls_ctx):
    relay = RelayHarness(peer, tls=tls_ctx, handshake_timeout=1.0)
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as c:
            assert closed_by_peer(c, 30)
        assert relay.stats()["handshakes_failed"] == 1
        assert relay.link.opens == {}
    finally:
        relay.stop()


def test_server_close_sends_close_notify_after_the_data(relay, ca):
    with tls_client(relay, client_context(ca)) as c:
        sid = relay.opened(c)
        relay.link.send_data(sid, b"</stream:stream>")
        relay.link.send_close(sid)
        assert recv_exact(c, 16) == b"</stream:stream>"
        assert c.recv(10) == b""                    # a clean TLS end, not a reset


def test_sessions_resume_with_tickets_also_across_contexts_sharing_keys(peer, nssdir, ca):
    keys = TicketKeys(time.time()).serialize(time.time())
    material, _ = muxtls.load_material(mux_settings(nssdir))
    one = RelayHarness(peer, tls=muxtls.context_from_material(material, keys))
    two = RelayHarness(peer, tls=muxtls.context_from_material(material, keys), thread=1)
    try:
        ctx = client_context(ca)
        with tls_client(one, ctx) as c:
            c.sendall(b"ping")
            assert recv_exact(c, 4) == b"ping"       # tickets arrive with the first data
            session = c.session
        with tls_client(one, ctx, session=session) as c:
            assert c.session_reused
        with tls_client(two, ctx, session=session) as c:   # another "worker"
            assert c.session_reused
    finally:
        one.stop()
        two.stop()


def test_reload_gives_new_clients_the_new_certificate_and_keeps_old_sessions(
        relay, ca, nssdir, tmp_path):
    old = tls_client(relay, client_context(ca))
    old_sid = relay.opened(old)
    db = NSSDatabase.create(tmp_path / "renewed", PASSWORD)
    db.import_pkcs12(ca.issue("localhost", "127.0.0.1"), NICK)
    renewed = db.issued.cert
    material, _ = muxtls.load_material(
        conf.from_text('iim_mux.usessl = "on"\niim_mux.secconfigdir = "renewed"\n'
                       f'iim_mux.keystorepasswordfile = "{nssdir / "sslpassword.conf"}"\n',
                       str(tmp_path / "iim.conf")).mux)
    relay.relay.set_tls_context(muxtls.context_from_material(material))
    with tls_client(relay, client_context(ca)) as new:
        seen = x509.load_der_x509_certificate(new.getpeercert(binary_form=True))
        assert seen.serial_number == renewed.serial_number
    old.sendall(b"still the old session")
    assert recv_exact(old, 21) == b"still the old session"
    assert relay.link.received[old_sid] == b"still the old session"
    old.close()


def test_plain_relay_refuses_a_tls_context(peer, tls_ctx):
    h = RelayHarness(peer)
    try:
        with pytest.raises(ValueError, match="without legacy SSL"):
            h.relay.set_tls_context(tls_ctx)
    finally:
        h.stop()


def test_key_material_errors_are_one_line(nssdir, ca):
    with pytest.raises(KeyMaterialError, match='iim_mux.certnickname: no certificate "nobody"'):
        muxtls.load_context(mux_settings(nssdir, nickname="nobody"))
    other = ca.issue("other")
    with pytest.raises(_fastmux.TlsError, match="does not match"):
        _fastmux.TlsContext(other.key_pem(), ca.issue("localhost").chain_pem())
    with pytest.raises(_fastmux.TlsError, match="cannot read the private key"):
        _fastmux.TlsContext(b"not a key", other.chain_pem())
    with pytest.raises(_fastmux.TlsError, match="no PEM certificate"):
        _fastmux.TlsContext(other.key_pem(), b"")
    with pytest.raises(_fastmux.TlsError, match="104 bytes"):
        _fastmux.TlsContext(other.key_pem(), other.chain_pem(), b"short")


def test_worker_reload_swaps_the_context_of_running_relays(peer, nssdir, ca, tmp_path):
    import logging
    from iim.conf import HostPort
    from iim.mux.worker import Worker, WorkerSettings
    db = NSSDatabase.create(tmp_path / "renewed", PASSWORD)
    db.import_pkcs12(ca.issue("localhost", "127.0.0.1"), NICK)
    contexts = iter([muxtls.load_context(mux_settings(nssdir))[0],
                     muxtls.context_from_material(muxtls.load_material(conf.from_text(
                         'iim_mux.usessl = "on"\niim_mux.secconfigdir = "renewed"\n'
                         f'iim_mux.keystorepasswordfile = "{nssdir / "sslpassword.conf"}"\n',
                         str(tmp_path / "iim.conf")).mux)[0])])
    port = free_port()
    worker = Worker(WorkerSettings(instance=0, listen=HostPort("127.0.0.1", port),
                                   server_host="127.0.0.1", server_port=peer.port, threads=1,
                                   maxsessions=10, stat_frequency=600, usessl=True),
                    logging.getLogger("iim.mux.test"), tls_loader=lambda: next(contexts))
    worker.start()
    try:
        peer.wait_links(1)
        wait_until(lambda: worker.stats()["links_up"] == 1)

        def serial() -> int:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            with client_context(ca).wrap_socket(raw, server_hostname="localhost") as c:
                return x509.load_der_x509_certificate(c.getpeercert(True)).serial_number
        before = serial()
        assert worker.reload_certificate() is True
        assert serial() == db.issued.cert.serial_number != before
        wait_until(lambda: worker.stats()["handshakes_ok"] == 2)
    finally:
        worker.stop()


def test_python_m_iim_mux_with_legacy_ssl_end_to_end(peer, nssdir, ca):
    import signal
    import subprocess
    import sys
    port = free_port()
    config = nssdir / "iim-e2e.conf"
    config.write_text(f'iim_mux.listenport = "127.0.0.1:{port}"\n'
                      f'iim_mux.serverport = "127.0.0.1:{peer.port}"\n'
                      'iim_mux.maxthreads = "1"\niim_mux.usessl = "on"\n'
                      'iim_mux.secconfigdir = "mux-nss"\n')
    log = nssdir / "e2e.stderr"
    proc = subprocess.Popen([sys.executable, "-m", "iim.mux", "-c", str(config)],
                            stderr=log.open("w"))
    try:
        link = peer.wait_links(1, timeout=20)[0]
        ctx = client_context(ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname="localhost") as c:
            assert c.selected_alpn_protocol() == "xmpp-client"
            assert tls_echo(c, b"<stream:stream>") == b"<stream:stream>"
            o = link.opens[wait_until(lambda: link.session_for_port(c.getsockname()[1]))]
            assert (o.transport, o.version) == (1, "TLSv1.3")
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "certificate reloaded" in log.read_text(), timeout=10)
            assert tls_echo(c, b"still here") == b"still here"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "legacy SSL" in text and "handshakes ok 1 failed 0" in text
    assert "Traceback" not in text


def test_unusable_key_material_stops_the_multiplexor_before_it_starts(nssdir):
    import subprocess
    import sys
    config = nssdir / "iim-badnick.conf"
    config.write_text('iim_mux.usessl = "on"\niim_mux.secconfigdir = "mux-nss"\n'
                      'iim_mux.certnickname = "multiplexor-cert"\n')
    proc = subprocess.run([sys.executable, "-m", "iim.mux", "-c", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert 'iim_mux.certnickname: no certificate "multiplexor-cert"' in proc.stderr
    assert "(nicknames are case-sensitive)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resumed_sessions_carry_data_through_the_mux_across_workers(peer, nssdir, ca):
    """Two worker processes share the supervisor's ticket keys: a session made
    with one resumes at either (TLS 1.3 and 1.2), and the resumed session carries
    bytes both ways; the tickets allow no early data (0-RTT is off), which the
    openssl command-line client confirms."""
    import signal
    import subprocess
    import sys
    port = free_port()
    config = nssdir / "iim-resume.conf"
    config.write_text(f'iim_mux.listenport = "127.0.0.1:{port}"\n'
                      f'iim_mux.serverport = "127.0.0.1:{peer.port}"\n'
                      'iim_mux.numinstances = "2"\niim_mux.maxthreads = "1"\n'
                      'iim_mux.usessl = "on"\niim_mux.secconfigdir = "mux-nss"\n')
    log = nssdir / "resume.stderr"
    proc = subprocess.Popen([sys.executable, "-m", "iim.mux", "-c", str(config)],
                            stderr=log.open("w"))

    def connect(ctx, session=None) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        return ctx.wrap_socket(raw, server_hostname="localhost", session=session)

    def instance_of(c: ssl.SSLSocket) -> int:
        client_port = c.getsockname()[1]
        link = wait_until(lambda: next((link for link in peer.links
                                        if link.session_for_port(client_port)), None))
        return link.hello[0]

    try:
        peer.wait_links(2, timeout=20)
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            ctx = client_context(ca)
            ctx.maximum_version = version
            with connect(ctx) as c:
                assert tls_echo(c, b"<stream:stream>") == b"<stream:stream>"
                session, first = c.session, instance_of(c)
            seen = set()
            for attempt in range(60):        # until a resumption reached each worker
                with connect(ctx, session) as c:
                    assert c.session_reused and c.version() == version.name.replace("_", ".")
                    data = b"<presence id='%d'/>" % attempt
                    assert tls_echo(c, data) == data
                    seen.add(instance_of(c))
                if seen == {0, 1}:
                    break
            assert seen == {0, 1}, f"{version.name}: resumed only at worker(s) {seen}"
            assert first in seen
        sess = nssdir / "resume-session.pem"
        early = nssdir / "early.txt"
        early.write_text("<early/>\n")
        full = s_client(port, "<hello/>", "-sess_out", str(sess))
        assert full.count("<hello/>") == 1, full[-2000:]
        ticket = subprocess.run(["openssl", "sess_id", "-in", str(sess), "-text", "-noout"],
                                capture_output=True, text=True, check=True).stdout
        assert "Protocol  : TLSv1.3" in ticket and "Max Early Data: 0" in ticket
        resumed = s_client(port, "<again/>", "-sess_in", str(sess), "-early_data", str(early))
        assert "Reused, TLSv1.3" in resumed
        assert "Early data was not sent" in resumed
        assert "<again/>" in resumed and "<early/>" not in resumed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def s_client(port: int, line: str, *options: str) -> str:
    """``openssl s_client`` sends ``line`` and waits for its echo (then its stdin
    closes, which ends it); everything it printed."""
    import subprocess
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *options],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    echoed = threading.Event()

    def read() -> None:
        for text in proc.stdout:
            lines.append(text)
            if text.strip() == line:
                echoed.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        assert echoed.wait(20), "".join(lines)[-2000:]
        proc.stdin.close()
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    return "".join(lines)
