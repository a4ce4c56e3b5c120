"""A server context that asks the connecting peer for its certificate and lets
iim, not OpenSSL, judge it (iim/keys/peercert.py), over real loopback sockets."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from iim.keys.context import client_context, server_context
from iim.keys.material import KeyMaterial
from iim.keys.peercert import request_any_client_certificate
from iim.keys.trust import TrustFailure, verify_peer
from iim.tlsbio import TLSLayer

from pki import CA, self_signed


def material(issued, anchors=()) -> KeyMaterial:
    return KeyMaterial(key=issued.key, chain=tuple(issued.chain),
                       trust_anchors=tuple(anchors), source="test", alias="test")


def serve_once(server_ctx):
    """Accept one connection, handshake, return the chain the client sent (DER)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    result = {}

    def run():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            result["leaf"] = tls.getpeercert(binary_form=True)
            tls.recv(1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener, thread, result


def connect(listener, client_ctx, hostname):
    with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
            client_ctx.wrap_socket(raw, server_hostname=hostname) as tls:
        tls.sendall(b"x")


@pytest.fixture(scope="module")
def ca():
    return CA.root("peercert test CA")


@pytest.mark.parametrize("kind", ["self-signed", "serverAuth only", "expired"])
def test_any_client_certificate_reaches_iim_for_its_own_verdict(ca, kind):
    server = ca.issue("receiving.example")
    ctx = server_context(material(server))
    request_any_client_certificate(ctx)
    if kind == "self-signed":
        peer = self_signed("sending.example")
        expected = TrustFailure.SELF_SIGNED
    elif kind == "serverAuth only":
        peer = ca.issue("sending.example", eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
        expected = None
    else:
        import datetime as dt
        now = dt.datetime.now(dt.timezone.utc)
        peer = ca.issue("sending.example", not_before=now - dt.timedelta(days=30),
                        not_after=now - dt.timedelta(days=1))
        expected = TrustFailure.EXPIRED
    listener, thread, result = serve_once(ctx)
    try:
        connect(listener, client_context(material(peer, [ca.cert]), verify=True),
                "receiving.example")
    finally:
        thread.join(10)
        listener.close()
    leaf = x509.load_der_x509_certificate(result["leaf"])
    assert leaf == peer.cert
    verdict = verify_peer([leaf] + list(peer.chain[1:]), [ca.cert], "sending.example")
    assert verdict.failure is expected


def test_a_client_without_certificate_is_still_served(ca):
    server = ca.issue("receiving.example")
    ctx = server_context(material(server))
    request_any_client_certificate(ctx)
    listener, thread, result = serve_once(ctx)
    try:
        client = ssl.create_default_context(cadata=ca.cert_pem().decode())
        connect(listener, client, "receiving.example")
    finally:
        thread.join(10)
        listener.close()
    assert result["leaf"] is None


def test_memory_bio_sessions_see_the_whole_chain(ca):
    middle = ca.intermediate("peercert intermediate")
    server = ca.issue("receiving.example")
    peer = middle.issue("sending.example")
    ctx = server_context(material(server))
    request_any_client_certificate(ctx)
    receiving = TLSLayer(ctx, server_side=True)
    sending = TLSLayer(client_context(material(peer, [ca.cert])), server_side=False,
                       server_hostname="receiving.example")
    to_server = sending.start()
    for _ in range(10):
        _, to_client = receiving.receive(to_server)
        _, to_server = sending.receive(to_client)
        if receiving.handshake_done and sending.handshake_done:
            break
    assert receiving.handshake_done and sending.handshake_done
    chain = [x509.load_der_x509_certificate(d) for d in receiving.info().peer_chain]
    assert chain[0] == peer.cert
    assert middle.cert in chain
    assert verify_peer(chain, [ca.cert], "sending.example").ok
