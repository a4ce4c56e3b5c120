"""Legacy SSL after the handshake: the relay's own record layer (iim/_tlsrecord.pyx).

Once OpenSSL has finished a handshake, the relay frees the session's SSL object
and seals and opens records itself (RFC 8446 section 5, RFC 5246 6.2.3.3).
These tests hold it to the RFCs from the client's side: real clients (Python's
ssl, ``openssl s_client``) on every AEAD suite of TLS 1.3 and TLS 1.2, key
updates both ways, and records a broken or hostile client would send, crafted
with the client's own traffic secrets (its key log) and ``cryptography``'s AEADs.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from iim import _tlsrecord
from muxpeer import LinkPeer, RelayHarness, wait_until
from test_mux_tls import client_context, mux_settings, nssdir, tls_ctx, tls_client, tls_echo  # noqa: F401

DEADLINE = 20


@pytest.fixture
def peer():
    p = LinkPeer()
    yield p
    p.close()


@pytest.fixture
def relay(peer, tls_ctx):  # noqa: F811
    h = RelayHarness(peer, tls=tls_ctx, handshake_timeout=5.0)
    yield h
    if h.thread.is_alive():
        h.stop()
    assert h.link.errors == []


def lean(relay) -> int:
    return relay.stats()["sessions_tls_lean"]


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_after_the_handshake_the_session_holds_no_ssl_object_and_is_byte_exact(relay, ca, version):
    ctx = client_context(ca)
    ctx.maximum_version = getattr(ssl.TLSVersion, version)
    with tls_client(relay, ctx) as c:
        assert c.version() == version.replace("_", ".")
        wait_until(lambda: lean(relay) == 1, what="the session on the record layer")
        data = os.urandom(3 * 65536 + 12345)       # several full records each way
        assert tls_echo(c, data) == data
    wait_until(lambda: relay.stats()["sessions_tls"] == 0)
    assert lean(relay) == 0
