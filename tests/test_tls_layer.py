"""TLS over memory BIOs: two TLSLayers wired back to back, no sockets."""

import ssl
import warnings

import pytest
from cryptography.hazmat.primitives import serialization

from iim.keys.context import client_context, server_context
from iim.keys.material import KeyMaterial
from iim.server.tls import TLSFailed, TLSLayer


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
