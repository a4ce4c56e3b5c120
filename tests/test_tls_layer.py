"""iim.tlsbio, alone in memory: two TLSLayers (or pumps) wired back to back,
certificates made on the fly (tests/pki.py), no sockets, no event loop."""

import ctypes
import gc
import ssl
import warnings

import pytest
from cryptography.hazmat.primitives import serialization

from iim.keys.context import client_context, server_context
from iim.keys.material import KeyMaterial
from iim.admin.verify import TLSTransport
from iim.tlsbio import UNEXPECTED_EOF, TLSFailed, TLSLayer, TLSPump


def pair(ca, sub_ca, *, client_cert=False):
    leaf = sub_ca.issue("chat.example.com")
    server = TLSLayer(server_context(KeyMaterial(leaf.key, leaf.chain, (ca.cert,))),
                      server_side=True)
    client_material = None
    if client_cert:
        other = sub_ca.issue("peer.example.org")
        client_material = KeyMaterial(other.key, other.chain, (ca.cert,))
    ctx = client_context(client_material, anchors=[ca.cert])
    client = TLSLayer(ctx, server_side=False, server_hostname="chat.example.com")
    return client, server, leaf


def shake(client, server):
    to_server = client.start()
    for _ in range(10):
        _, to_client = server.receive(to_server)
        _, to_server = client.receive(to_client)
        if client.handshake_done and server.handshake_done and not to_server:
            return
    raise AssertionError("handshake did not finish")


def test_handshake_and_data_both_ways(ca, sub_ca):
    client, server, leaf = pair(ca, sub_ca)
    shake(client, server)
    plain, reply = server.receive(client.send(b"<message/>"))
    assert plain == b"<message/>" and reply == b""
    plain, _ = client.receive(server.send(b"<presence/>"))
    assert plain == b"<presence/>"
    info = client.info()
    assert info.version in ("TLSv1.2", "TLSv1.3")
    assert info.peer_chain[0] == leaf.cert.public_bytes(serialization.Encoding.DER)
    assert info.peer_chain[1] == sub_ca.cert.public_bytes(serialization.Encoding.DER)


def test_records_split_at_any_byte_still_decrypt(ca, sub_ca):
    client, server, _ = pair(ca, sub_ca)
    shake(client, server)
    wire = client.send(b"x" * 5000)
    got = b"".join(server.receive(wire[i:i + 7])[0] for i in range(0, len(wire), 7))
    assert got == b"x" * 5000


def test_a_burst_both_ways_arrives_whole_and_in_order(ca, sub_ca):
    client, server, _ = pair(ca, sub_ca)
    shake(client, server)
    burst = b"".join(b"<message id='%d'><body>%s</body></message>" % (i, b"y" * (i % 300))
                     for i in range(400))
    assert len(burst) > 10 * TLSLayer.BIO_CHUNK
    plain, reply = server.receive(client.send(burst))
    assert plain == burst and reply == b""
    wire = server.send(burst) + server.close()
    plain, _ = client.receive(wire)
    assert plain == burst and client.peer_closed


def _malloc_in_use() -> int:
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]
    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = MallInfo2
    gc.collect()
    return mallinfo2().uordblks + mallinfo2().hblkhd


def test_a_burst_leaves_no_burst_sized_buffers_behind(ca, sub_ca):
    """OpenSSL's memory BIOs keep the largest size they ever held: a 64 KB burst
    written at once would leave ~85 KB in each BIO it crossed, per connection."""
    pairs = [pair(ca, sub_ca)[:2] for _ in range(10)]
    for client, server in pairs:
        shake(client, server)
        server.receive(client.send(b"<presence/>"))
        client.receive(server.send(b"<presence/>"))
    burst = b"z" * 65536
    before = _malloc_in_use()
    for client, server in pairs:
        wire = server.send(burst)                   # server: outgoing BIO
        assert client.receive(wire)[0] == burst     # client: incoming BIO
    kept = (_malloc_in_use() - before) / len(pairs)
    assert kept < 16 * 1024                         # two BIOs: a chunk and a record each, at most


def test_plaintext_where_tls_is_expected_fails_cleanly(ca, sub_ca):
    _, server, _ = pair(ca, sub_ca)
    with pytest.raises(TLSFailed) as err:
        server.receive(b"<message to='a@b'>hello</message>" * 4)
    assert str(err.value) in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL")


def test_client_refuses_untrusted_server(ca, sub_ca):
    import pki
    stranger = pki.CA.root("stranger")
    leaf = stranger.issue("chat.example.com")
    server = TLSLayer(server_context(KeyMaterial(leaf.key, leaf.chain)), server_side=True)
    client = TLSLayer(client_context(None, anchors=[ca.cert]), server_side=False,
                      server_hostname="chat.example.com")
    with pytest.raises(TLSFailed) as err:
        shake(client, server)
    assert str(err.value) == "CERTIFICATE_VERIFY_FAILED"


def test_tls_1_1_client_hello_is_refused_by_the_server(ca, sub_ca):
    _, server, _ = pair(ca, sub_ca)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    hello = TLSLayer(old, server_side=False, server_hostname="chat.example.com").start()
    assert hello[:3] == b"\x16\x03\x01" and hello[9:11] == b"\x03\x02"   # ClientHello, TLS 1.1
    with pytest.raises(TLSFailed) as err:
        server.receive(hello)
    assert str(err.value) == "UNSUPPORTED_PROTOCOL"
    assert err.value.alert[:1] == b"\x15"          # a TLS alert record for the peer


# -- the ends of a connection --------------------------------------------------


def test_close_notify_reaches_the_peer(ca, sub_ca):
    client, server, _ = pair(ca, sub_ca)
    shake(client, server)
    plain, _ = server.receive(client.send(b"<presence/>") + client.close())
    assert plain == b"<presence/>" and server.peer_closed
    assert not client.peer_closed


def test_end_of_file_during_the_handshake_fails_with_a_reason(ca, sub_ca):
    client, server, _ = pair(ca, sub_ca)
    server.receive(client.start())
    with pytest.raises(TLSFailed) as err:
        client.receive_eof()
    assert str(err.value) == UNEXPECTED_EOF


def test_end_of_file_after_the_handshake_is_no_failure(ca, sub_ca):
    client, server, _ = pair(ca, sub_ca)
    shake(client, server)
    server.receive_eof()
    assert server.handshake_done


def test_info_names_the_cipher_and_its_strength(ca, sub_ca):
    client, server, _ = pair(ca, sub_ca)
    shake(client, server)
    info = server.info()
    assert info.cipher and info.bits >= 128 and info.version == client.info().version


# -- TLSPump: what a session holds ---------------------------------------------


def test_pump_passes_bytes_through_before_starttls(ca, sub_ca):
    pump = TLSPump()
    assert pump.receive(b"<stream:stream>") == (b"<stream:stream>", b"", False)
    assert pump.send(b"<proceed/>") == b"<proceed/>"
    assert pump.close() == b"" and pump.info() is None
    assert pump.layer is None and not pump.handshaking and not pump.handshake_done


def test_pump_reports_the_handshake_finishing_once(ca, sub_ca):
    client, _, _ = pair(ca, sub_ca)
    leaf = sub_ca.issue("chat.example.com")
    pump = TLSPump()
    assert pump.start(server_context(KeyMaterial(leaf.key, leaf.chain, (ca.cert,))),
                      server_side=True) == b""                 # a server speaks second
    assert pump.handshaking and not pump.handshake_done
    finished, to_server = [], client.start()
    while to_server:
        plain, to_client, up = pump.receive(to_server)
        finished.append(up)
        _, to_server = client.receive(to_client)
    assert finished == [False, True]                   # TLS 1.3: one round trip
    assert pump.handshake_done and not pump.handshaking
    assert pump.receive(client.send(b"<auth/>")) == (b"<auth/>", b"", False)
    assert client.receive(pump.send(b"<success/>"))[0] == b"<success/>"
    assert pump.info().version == client.info().version


def test_pump_application_data_right_behind_the_handshake_comes_out(ca, sub_ca):
    """TLS 1.3: the client's Finished and its first record in one read."""
    leaf = sub_ca.issue("chat.example.com")
    pump = TLSPump()
    pump.start(server_context(KeyMaterial(leaf.key, leaf.chain, (ca.cert,))), server_side=True)
    client = TLSLayer(client_context(None, anchors=[ca.cert]), server_side=False,
                      server_hostname="chat.example.com")
    _, to_client, _ = pump.receive(client.start())
    _, finished = client.receive(to_client)
    assert client.handshake_done and not pump.handshake_done
    plain, _, up = pump.receive(finished + client.send(b"<stream:stream>"))
    assert up and plain == b"<stream:stream>"


def test_pump_failure_carries_the_alert_for_the_peer(ca, sub_ca):
    leaf = sub_ca.issue("chat.example.com")
    pump = TLSPump()
    pump.start(server_context(KeyMaterial(leaf.key, leaf.chain)), server_side=True)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(TLSFailed) as err:
        pump.receive(TLSLayer(old, server_side=False).start())
    assert str(err.value) == "UNSUPPORTED_PROTOCOL" and err.value.alert[:1] == b"\x15"


# -- TLSTransport (iim.admin.verify): the blocking mover over the same layer -------------


class ServerBehind:
    """A blocking transport whose far end is a server TLSLayer, answered at once."""

    where = "memory"

    def __init__(self, server: TLSLayer, *, hang_up: bool = False) -> None:
        self.server, self.hang_up, self.inbox = server, hang_up, []
        self.received = b""

    def send(self, data: bytes) -> None:
        if data:
            plain, out = self.server.receive(data)
            self.received += plain
            if out and not self.hang_up:
                self.inbox.append(out)

    def recv(self) -> bytes:
        return self.inbox.pop(0) if self.inbox else b""       # nothing more: end of file


def test_transport_handshakes_and_moves_plaintext(ca, sub_ca):
    _, server, leaf = pair(ca, sub_ca)
    lower = ServerBehind(server)
    tls = TLSTransport(lower, client_context(None, anchors=[ca.cert]), "chat.example.com")
    tls.handshake()
    assert tls.version() in ("TLSv1.2", "TLSv1.3") and tls.cipher()[1] >= 128
    assert tls.peer_chain()[0] == leaf.cert
    tls.send(b"<stream:stream>")
    assert lower.received == b"<stream:stream>"
    lower.inbox.append(server.send(b"<stream:features/>"))
    assert tls.recv() == b"<stream:features/>"
    lower.inbox.append(server.close())
    assert tls.recv() == b""


def test_transport_names_a_hang_up_during_the_handshake(ca, sub_ca):
    _, server, _ = pair(ca, sub_ca)
    tls = TLSTransport(ServerBehind(server, hang_up=True),
                       client_context(None, anchors=[ca.cert]), "chat.example.com")
    with pytest.raises(TLSFailed) as err:
        tls.handshake()
    assert str(err.value) == UNEXPECTED_EOF


# -- where the module stands ------------------------------------------------------


def _imported(path) -> set[str]:
    import ast
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module)
    return found


def test_the_module_is_neutral_and_the_core_does_not_use_it():
    """Server and admin both import it, so it imports neither (nor asyncio);
    the sans-I/O XMPP core knows nothing of TLS records."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "iim"
    assert _imported(root / "tlsbio.py") <= {"__future__", "ssl", "dataclasses"}
    for path in (root / "xmpp").rglob("*.py"):
        assert "iim.tlsbio" not in _imported(path), path
