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
from muxpeer import wait_until
from test_mux_tls import (client_context, nssdir, peer, relay,  # noqa: F401
                          tls_client, tls_ctx, tls_echo)

DEADLINE = 20


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
    session_closed(relay)


# --- every AEAD suite, with clients of two TLS stacks --------------------------------------

TLS12_AEAD = ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
              "ECDHE-RSA-CHACHA20-POLY1305"]


@pytest.mark.parametrize("suite", TLS12_AEAD)
def test_tls12_aead_suites_run_on_the_record_layer(relay, ca, suite):
    ctx = client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(suite)
    with tls_client(relay, ctx) as c:
        assert c.cipher()[0] == suite
        wait_until(lambda: lean(relay) == 1, what="the session on the record layer")
        data = os.urandom(40000)
        assert tls_echo(c, data) == data


def test_a_tls12_cbc_suite_keeps_its_ssl_object_and_works(relay, ca):
    """A suite the record layer does not seal stays with OpenSSL: larger, still right."""
    ctx = client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-RSA-AES128-SHA256")
    with tls_client(relay, ctx) as c:
        assert c.cipher()[0] == "ECDHE-RSA-AES128-SHA256"
        data = os.urandom(40000)
        assert tls_echo(c, data) == data
        assert relay.stats()["sessions_tls"] == 1
        assert lean(relay) == 0


def s_client(relay, ca_file, *args) -> subprocess.Popen:
    return subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{relay.port}", "-servername",
         "localhost", "-CAfile", str(ca_file), "-verify_return_error", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def read_until(proc: subprocess.Popen, marker: bytes, timeout: float = DEADLINE) -> bytes:
    """s_client's output up to and including `marker`."""
    os.set_blocking(proc.stdout.fileno(), False)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while marker not in out:
        assert time.monotonic() < deadline, f"no {marker!r} in {bytes(out[-2000:])!r}"
        chunk = proc.stdout.read()
        if chunk:
            out += chunk
        elif proc.poll() is not None:
            raise AssertionError(f"s_client ended: {bytes(out[-2000:])!r}")
        else:
            time.sleep(0.01)
    return bytes(out)


@pytest.fixture
def ca_file(ca, tmp_path):
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem())
    return path


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                   "TLS_CHACHA20_POLY1305_SHA256"])
def test_tls13_suites_and_key_updates_both_ways_with_openssl_s_client(relay, ca_file, suite):
    """s_client's ``K`` sends KeyUpdate(update_requested) (RFC 8446 4.6.3): the relay
    moves to the client's next key and answers with a KeyUpdate of its own before its
    next record, which s_client must accept to read the echo that follows."""
    proc = s_client(relay, ca_file, "-tls1_3", "-ciphersuites", suite, "-msg")
    try:
        proc.stdin.write(b"first-line\n")
        proc.stdin.flush()
        out = read_until(proc, b"\nfirst-line\n")      # the echo (s_client prints no input)
        assert suite.encode() in out
        assert lean(relay) == 1
        for n in range(3):
            proc.stdin.write(b"K\n")
            proc.stdin.flush()
            out = read_until(proc, b"KEYUPDATE")
            proc.stdin.write(b"after-update-%d\n" % n)
            proc.stdin.flush()
            out += read_until(proc, b"after-update-%d\n" % n)
            # ours came before the echo, not requesting one back (-msg shows it)
            ours = out.index(b"<<< TLS 1.3, Handshake [length 0005], KeyUpdate\n    18 00 00 01 00")
            assert ours < out.index(b"after-update-%d\n" % n)
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: relay.stats()["sessions_tls"] == 0)


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_resumed_sessions_run_on_the_record_layer(relay, ca, version):
    ctx = client_context(ca)
    ctx.maximum_version = getattr(ssl.TLSVersion, version)
    with tls_client(relay, ctx) as c:
        assert tls_echo(c, b"x" * 100) == b"x" * 100        # TLS 1.3: the ticket came
        session = c.session
    with tls_client(relay, ctx, session=session) as c:
        assert c.session_reused
        wait_until(lambda: lean(relay) == 1, what="the resumed session on the record layer")
        data = os.urandom(70000)
        assert tls_echo(c, data) == data


def test_our_own_key_updates_when_a_key_has_sealed_its_share_of_records(relay, ca):
    """RFC 8446 5.5: a key seals a bounded number of records; the relay then sends
    KeyUpdate(update_not_requested) and goes on under the next key. The limit is
    2^23 records; lowered here so that a client's OpenSSL reads through several."""
    old = _tlsrecord.key_limit(3)
    try:
        with tls_client(relay, client_context(ca)) as c:
            wait_until(lambda: lean(relay) == 1)
            data = os.urandom(20 * 16384 + 77)       # 21 records: 6 key updates
            assert tls_echo(c, data) == data
    finally:
        _tlsrecord.key_limit(old)


# --- records a broken or hostile client sends -------------------------------------------------

def expand_label(secret: bytes, label: bytes, length: int, algorithm) -> bytes:
    """RFC 8446 7.1 HKDF-Expand-Label with an empty context, one HMAC block."""
    info = length.to_bytes(2, "big") + bytes([6 + len(label)]) + b"tls13 " + label + b"\0"
    mac = hmac.HMAC(secret, algorithm)
    mac.update(info + b"\x01")
    return mac.finalize()[:length]


def tls12_prf(secret: bytes, seed: bytes, length: int, algorithm) -> bytes:
    """RFC 5246 5 P_hash."""
    def mac(data: bytes) -> bytes:
        h = hmac.HMAC(secret, algorithm)
        h.update(data)
        return h.finalize()
    out, a = b"", seed
    while len(out) < length:
        a = mac(a)
        out += mac(a + seed)
    return out[:length]


class CraftingClient:
    """A client whose handshake and reading are OpenSSL's (Python's ssl over memory
    BIOs) and whose records after the handshake are made here, with keys from its own
    key log (TLS 1.3: client_application_traffic_secret_0; TLS 1.2: the master
    secret, through the PRF): it can send what OpenSSL never would. With
    ``hold_finished`` its Finished is kept (``finished``) to go out in one send
    with the records that follow it."""

    def __init__(self, relay, ca, keylog, version=ssl.TLSVersion.TLSv1_3,
                 hold_finished=False):
        ctx = client_context(ca)
        ctx.minimum_version = ctx.maximum_version = version
        if version == ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        ctx.keylog_filename = str(keylog)
        self.sock = socket.create_connection(("127.0.0.1", relay.port), timeout=DEADLINE)
        self.inc, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.outgoing, server_hostname="localhost")
        first = bytearray()                              # the server's first flight
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                first += data if len(first) < 64 else b""
                self.inc.write(data)
        self.finished = self.outgoing.read()             # the client's Finished
        if not hold_finished:
            self.sock.sendall(self.finished)
        self.tls12 = version == ssl.TLSVersion.TLSv1_2
        if not self.tls12 and not hold_finished:
            self._take_record()                          # the relay's NewSessionTicket
            with pytest.raises(ssl.SSLWantReadError):
                self.obj.read(1)
        suite = self.obj.cipher()[0]
        self.algorithm = hashes.SHA384() if suite.endswith("SHA384") else hashes.SHA256()
        self.aead_kind = ChaCha20Poly1305 if "CHACHA" in suite else AESGCM
        self.keylen = 16 if "AES_128" in suite or "AES128" in suite else 32
        log = keylog.read_text().splitlines()
        if self.tls12:
            master = bytes.fromhex(next(ln for ln in log if ln.startswith("CLIENT_RANDOM ")
                                        ).split()[2])
            client_random = bytes.fromhex(next(ln for ln in log if ln.startswith(
                "CLIENT_RANDOM ")).split()[1])
            server_random = bytes(first[11:43])  # record, ServerHello header, version
            block = tls12_prf(master, b"key expansion" + server_random + client_random,
                              2 * self.keylen + 8, self.algorithm)
            self.aead = AESGCM(block[:self.keylen])
            self.iv = block[2 * self.keylen:2 * self.keylen + 4]   # the client's salt
            self.seq = 1                                         # its Finished was 0
        else:
            line = next(ln for ln in log if ln.startswith("CLIENT_TRAFFIC_SECRET_0 "))
            self.secret = bytes.fromhex(line.split()[2])
            self._keys()

    def _take_record(self) -> None:
        """Read one whole record from the socket into the client's OpenSSL."""
        data = bytearray()
        while (total := 5 if len(data) < 5 else 5 + int.from_bytes(data[3:5], "big")) > len(data):
            chunk = self.sock.recv(total - len(data))
            assert chunk, "EOF inside a record"
            data += chunk
        self.inc.write(bytes(data))

    def _keys(self) -> None:
        self.aead = self.aead_kind(expand_label(self.secret, b"key", self.keylen, self.algorithm))
        self.iv = expand_label(self.secret, b"iv", 12, self.algorithm)
        self.seq = 0

    def next_key(self) -> None:
        self.secret = expand_label(self.secret, b"traffic upd", self.algorithm.digest_size,
                                   self.algorithm)
        self._keys()

    def record(self, content: bytes, inner: int = 23, padding: int = 0, outer: int = 23,
               tamper: bool = False, version: bytes = b"\x03\x03") -> bytes:
        """One TLS 1.3 TLSCiphertext (RFC 8446 5.2) carrying `content` of type `inner`;
        TLS 1.2: a GenericAEADCipher (RFC 5246 6.2.3.3, RFC 5288) of type `inner`."""
        if self.tls12:
            seq = self.seq.to_bytes(8, "big")
            self.seq += 1
            aad = seq + bytes([inner]) + b"\x03\x03" + len(content).to_bytes(2, "big")
            sealed = bytearray(seq + self.aead.encrypt(self.iv + seq, content, aad))
            header = bytes([inner]) + version + len(sealed).to_bytes(2, "big")
        else:
            plain = content + bytes([inner]) + bytes(padding)
            header = bytes([outer]) + version + (len(plain) + 16).to_bytes(2, "big")
            nonce = bytes(a ^ b for a, b in zip(self.iv, self.seq.to_bytes(12, "big")))
            self.seq += 1
            sealed = bytearray(self.aead.encrypt(nonce, plain, header))
        if tamper:
            sealed[-1] ^= 1
        return header + bytes(sealed)

    def read(self, n: int) -> bytes:
        """`n` bytes of plaintext from the relay (ssl.SSLError on an alert)."""
        out = bytearray()
        while len(out) < n:
            try:
                out += self.obj.read(n - len(out))
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError(f"EOF after {len(out)} of {n} bytes")
                self.inc.write(data)
        return bytes(out)

    def alert(self) -> str:
        """Read until the relay's alert ends the stream: its name, as OpenSSL says it."""
        with pytest.raises(ssl.SSLError) as err:
            while True:
                try:
                    assert self.obj.read(65536) == b"", "data where an alert was due"
                except ssl.SSLWantReadError:
                    data = self.sock.recv(65536)
                    assert data, "EOF without an alert"
                    self.inc.write(data)
        return err.value.reason

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def crafter(relay, ca, tmp_path):
    c = CraftingClient(relay, ca, tmp_path / "client-keys.log")
    wait_until(lambda: lean(relay) == 1, what="the session on the record layer")
    yield c
    c.close()


def session_closed(relay) -> None:
    """Until the relay has freed the session, its record layer included (two
    counters, each dropped in its own step of session_free)."""
    wait_until(lambda: (s := relay.stats())["sessions_tls"] == 0 and s["sessions_tls_lean"] == 0,
               what="the session closed and its record layer freed")


@pytest.fixture
def early(relay, ca, tmp_path):
    """A crafting client whose Finished waits to leave with the records after it."""
    c = CraftingClient(relay, ca, tmp_path / "client-keys.log", hold_finished=True)
    yield c
    c.close()


def test_records_sent_with_the_finished_go_upstream_then_the_record_layer_takes_over(
        relay, early):
    """OpenSSL reads what the socket has (read-ahead): records that come in one
    segment with the client's Finished are in its buffer when the handshake is
    done. They go upstream from there, in order, and the record layer takes
    the session over once OpenSSL has handed them all out."""
    early.sock.sendall(early.finished + early.record(b"first ") + early.record(b"words"))
    assert early.read(11) == b"first words"
    wait_until(lambda: lean(relay) == 1, what="the session on the record layer")
    early.sock.sendall(early.record(b"then ours"))
    assert early.read(9) == b"then ours"


def test_a_key_update_read_ahead_with_the_finished_leaves_the_session_to_openssl(
        relay, early):
    """A KeyUpdate among the records OpenSSL read ahead is OpenSSL's to act on,
    and the keys captured at the handshake are stale from then on: the session
    stays OpenSSL's (larger, never wrong) and carries on under the next key."""
    early.sock.sendall(early.finished + early.record(b"\x18\x00\x00\x01\x00", inner=22))
    early.next_key()
    early.sock.sendall(early.record(b"under the second key"))
    assert early.read(20) == b"under the second key"
    assert relay.stats()["sessions_tls"] == 1 and lean(relay) == 0


@pytest.mark.parametrize("cut", [1, 2, 4])
def test_a_key_update_split_across_records_after_the_finished_leaves_the_session_to_openssl(
        relay, early, cut):
    """Its first bytes come with the Finished: OpenSSL keeps them (as a fragment,
    not as bytes SSL_has_pending counts), so the record of handshake type, not the
    whole message, is what stops the take-over."""
    key_update = b"\x18\x00\x00\x01\x00"
    early.sock.sendall(early.finished + early.record(key_update[:cut], inner=22))
    relay.opened(early.sock)
    relay.link.round_trip()                 # the turns that read both are over
    early.sock.sendall(early.record(key_update[cut:], inner=22))
    early.next_key()
    early.sock.sendall(early.record(b"under the second key"))
    assert early.read(20) == b"under the second key"
    assert lean(relay) == 0


def test_a_record_the_socket_refused_before_the_take_over_is_finished_by_openssl(
        ca, tls_ctx, tmp_path, monkeypatch):
    """The take-over waits (part of the client's next record came with its
    Finished) while the server sends more than a client that does not read can
    take: OpenSSL holds a record the socket refused. Taking over then would drop
    it and seal its bytes again; the take-over waits for the output to drain, and
    every byte arrives once, in order."""
    from muxpeer import LinkPeer, RelayHarness
    peer = LinkPeer(window=16 << 20, echo=False)
    relay = RelayHarness(peer, tls=tls_ctx)

    def small_window(address, timeout=None, *args, **kwargs):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(timeout)
        sock.connect(address)
        return sock

    try:
        monkeypatch.setattr(socket, "create_connection", small_window)
        client = CraftingClient(relay, ca, tmp_path / "client-keys.log", hold_finished=True)
        first = client.record(b"hello")
        client.sock.sendall(client.finished + first[:3])
        sid = relay.opened(client.sock)
        chunks = [bytes([65 + i % 26]) * 65536 for i in range(256)]     # 16 MiB
        for chunk in chunks:
            relay.link.send_data(sid, chunk)
        wait_until(lambda: relay.stats()["buffered"] > 0, what="output the client refused")
        assert lean(relay) == 0
        client.sock.sendall(first[3:])
        assert client.read(len(chunks) * 65536) == b"".join(chunks)
        relay.link.wait_for(lambda: relay.link.received[sid] == b"hello", what="the record")
        wait_until(lambda: lean(relay) == 1, what="the take-over, once the output drained")
        client.close()
        assert relay.link.errors == []
    finally:
        relay.stop()
        peer.close()


def test_crafted_records_are_what_openssl_would_send(relay, crafter):
    """The helper itself, checked: a record it makes is echoed, padding is ignored."""
    crafter.sock.sendall(crafter.record(b"plain record") + crafter.record(b"padded", padding=40))
    assert crafter.read(18) == b"plain recordpadded"


def test_key_update_requested_moves_both_directions_to_the_next_key(relay, crafter):
    crafter.sock.sendall(crafter.record(b"\x18\x00\x00\x01\x01", inner=22))
    crafter.next_key()
    crafter.sock.sendall(crafter.record(b"under the second key"))
    assert crafter.read(20) == b"under the second key"   # the relay's KeyUpdate read first


def test_a_key_update_split_across_two_records_is_one_message(relay, crafter):
    crafter.sock.sendall(crafter.record(b"\x18\x00", inner=22)
                         + crafter.record(b"\x00\x01\x00", inner=22))
    crafter.next_key()
    crafter.sock.sendall(crafter.record(b"next"))
    assert crafter.read(4) == b"next"


def test_a_few_empty_records_are_allowed(relay, crafter):
    crafter.sock.sendall(b"".join(crafter.record(b"") for _ in range(5)) + crafter.record(b"ok"))
    assert crafter.read(2) == b"ok"


@pytest.mark.parametrize("bad, alert", [
    (lambda c: c.record(b"forged", tamper=True), "SSLV3_ALERT_BAD_RECORD_MAC"),
    (lambda c: b"\x14\x03\x03\x00\x01\x01", "SSLV3_ALERT_UNEXPECTED_MESSAGE"),        # CCS
    (lambda c: b"\x17\x03\x03\x41\x01" + bytes(16641), "TLSV1_ALERT_RECORD_OVERFLOW"),
    (lambda c: c.record(bytes(16385)), "TLSV1_ALERT_RECORD_OVERFLOW"),
    (lambda c: c.record(b"", inner=0, padding=10), "SSLV3_ALERT_UNEXPECTED_MESSAGE"),
    (lambda c: c.record(b"x", inner=99), "SSLV3_ALERT_UNEXPECTED_MESSAGE"),
    (lambda c: c.record(b"\x04\x00\x00\x01\x00", inner=22), "SSLV3_ALERT_UNEXPECTED_MESSAGE"),
    (lambda c: c.record(b"\x18\x00\x00\x01\x07", inner=22), "SSLV3_ALERT_ILLEGAL_PARAMETER"),
    (lambda c: c.record(b"\x18\x00\x00\x01\x00\x18", inner=22), "SSLV3_ALERT_UNEXPECTED_MESSAGE"),
    (lambda c: c.record(b"\x18\x00", inner=22) + c.record(b"data"),
     "SSLV3_ALERT_UNEXPECTED_MESSAGE"),
    (lambda c: b"".join(c.record(b"") for _ in range(33)), "SSLV3_ALERT_UNEXPECTED_MESSAGE"),
], ids=["bad-tag", "change-cipher-spec", "header-over-2^14+256", "plaintext-over-2^14",
        "all-padding", "unknown-content-type", "other-handshake-message",
        "key-update-bad-value", "key-update-not-ending-its-record",
        "split-key-update-then-data", "33-empty-records"])
def test_a_bad_record_gets_its_alert_and_ends_only_that_session(relay, ca, crafter, bad, alert):
    with tls_client(relay, client_context(ca)) as bystander:
        crafter.sock.sendall(bad(crafter))
        assert crafter.alert() == alert
        wait_until(lambda: relay.stats()["sessions_tls"] == 1, what="the crafter's session gone")
        assert tls_echo(bystander, b"still here") == b"still here"
    session_closed(relay)
    relay.link.wait_for(lambda: len(relay.link.closed) == 2, what="CLOSE upstream for both")


def test_close_notify_from_the_client_ends_the_session_upstream(relay, crafter):
    """RFC 8446 6.1: close_notify closes the client's write side; what came before it
    goes upstream, then CLOSE (as a plain client's FIN does)."""
    crafter.sock.sendall(crafter.record(b"bye") + crafter.record(b"\x01\x00", inner=21))
    session_closed(relay)
    relay.link.wait_for(lambda: relay.link.closed, what="CLOSE upstream")
    [(sid, reason)] = relay.link.closed.items()
    assert reason == 0 and bytes(relay.link.received[sid]) == b"bye"


@pytest.fixture
def crafter12(relay, ca, tmp_path):
    c = CraftingClient(relay, ca, tmp_path / "client-keys.log", ssl.TLSVersion.TLSv1_2)
    wait_until(lambda: lean(relay) == 1, what="the session on the record layer")
    yield c
    c.close()


def test_tls12_crafted_records_are_what_openssl_would_send(relay, crafter12):
    crafter12.sock.sendall(crafter12.record(b"tls 1.2 ") + crafter12.record(b"record"))
    assert crafter12.read(14) == b"tls 1.2 record"


@pytest.mark.parametrize("bad, alert", [
    (lambda c: c.record(b"forged", tamper=True), "SSLV3_ALERT_BAD_RECORD_MAC"),
    (lambda c: c.record(b"x", version=b"\x03\x01"), "TLSV1_ALERT_PROTOCOL_VERSION"),
    (lambda c: c.record(b"\x01\x00\x00\x00", inner=22), "SSLV3_ALERT_UNEXPECTED_MESSAGE"),
    (lambda c: c.record(b"\x01", inner=20), "SSLV3_ALERT_UNEXPECTED_MESSAGE"),
], ids=["bad-tag", "record-version", "renegotiation", "change-cipher-spec"])
def test_tls12_bad_records_get_their_alert(relay, crafter12, bad, alert):
    crafter12.sock.sendall(bad(crafter12))
    assert crafter12.alert() == alert
    session_closed(relay)


def test_tls12_warning_alerts_are_noted_and_close_notify_ends_the_stream(relay, crafter12):
    crafter12.sock.sendall(crafter12.record(b"\x01\x5a", inner=21) + crafter12.record(b"ok"))
    assert crafter12.read(2) == b"ok"                        # user_canceled: a warning
    crafter12.sock.sendall(crafter12.record(b"\x01\x00", inner=21))
    session_closed(relay)


def rest_of_stream(sock: socket.socket) -> bytes:
    sock.settimeout(DEADLINE)
    out = bytearray()
    while chunk := sock.recv(65536):
        out += chunk
    return bytes(out)


def test_an_error_alert_from_the_client_ends_the_session_without_an_answer(relay, crafter):
    crafter.sock.sendall(crafter.record(b"\x02\x28", inner=21))      # handshake_failure
    assert rest_of_stream(crafter.sock) == b""
    session_closed(relay)


def test_nothing_follows_our_fatal_alert_not_even_a_key_update_we_owed(relay, crafter):
    """RFC 8446 6.2: after a fatal alert nothing more is sent; here a KeyUpdate
    request arrives just before a forged record."""
    crafter.sock.sendall(crafter.record(b"\x18\x00\x00\x01\x01", inner=22)
                         + crafter.record(b"forged", tamper=True))
    stream = rest_of_stream(crafter.sock)
    assert len(stream) == 5 + 2 + 1 + 16 and stream[0] == 23     # one record: the alert
    crafter.inc.write(stream)
    with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC"):
        crafter.obj.read(100)
    session_closed(relay)


@pytest.mark.parametrize("bad, alert", [
    (lambda c: c.record(b"x" * 16000, padding=400), "TLSV1_ALERT_RECORD_OVERFLOW"),
    (lambda c: c.record(b"\x18\x00\x00\x02\x00\x00", inner=22), "TLSV1_ALERT_DECODE_ERROR"),
    (lambda c: c.record(b"", inner=21), "SSLV3_ALERT_UNEXPECTED_MESSAGE"),
    (lambda c: c.record(b"\x02\x28\x00", inner=21), "TLSV1_ALERT_DECODE_ERROR"),
], ids=["inner-plaintext-with-padding-over-2^14+1", "key-update-body-not-one-byte",
        "empty-alert", "alert-of-three-bytes"])
def test_more_bad_records(relay, crafter, bad, alert):
    crafter.sock.sendall(bad(crafter))
    assert crafter.alert() == alert
    session_closed(relay)


def test_tls12_session_ids_resume_after_the_ssl_object_is_gone(relay, ca):
    """A session the record layer took over stays in OpenSSL's session cache."""
    ctx = client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_TICKET
    with tls_client(relay, ctx) as first:
        wait_until(lambda: lean(relay) == 1)
        with tls_client(relay, ctx, session=first.session) as second:
            assert second.session_reused
            wait_until(lambda: lean(relay) == 2)
            assert tls_echo(second, b"resumed by id") == b"resumed by id"


def test_a_negotiated_max_fragment_length_keeps_the_ssl_object(relay, ca_file):
    """RFC 6066: OpenSSL honours a client's max_fragment_length; the record layer
    would seal 16 KiB records, so such a session stays with OpenSSL."""
    proc = s_client(relay, ca_file, "-maxfraglen", "512", "-quiet")
    try:
        line = b"m" * 2000 + b"\n"
        proc.stdin.write(line)
        proc.stdin.flush()
        assert read_until(proc, line).endswith(line)
        assert relay.stats()["sessions_tls"] == 1 and lean(relay) == 0
    finally:
        proc.kill()
        proc.wait()


def test_tls13_prefers_aes128_gcm_and_honours_a_client_that_puts_chacha_first(relay, ca,
                                                                              ca_file):
    with tls_client(relay, client_context(ca)) as c:            # offers all three
        assert c.cipher()[0] == "TLS_AES_128_GCM_SHA256"
    proc = s_client(relay, ca_file, "-tls1_3", "-ciphersuites",
                    "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256")
    try:
        proc.stdin.write(b"which suite\n")
        proc.stdin.flush()
        assert b"Cipher is TLS_CHACHA20_POLY1305_SHA256" in read_until(proc, b"\nwhich suite\n")
    finally:
        proc.kill()
        proc.wait()
