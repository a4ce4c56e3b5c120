"""Multiplexor links secure by default (issue 12; docs/muxlink.md, version 2).

Real processes (``python -m iim.server``, ``python -m iim.mux``) over real
sockets on this host:

* an impostor without the secret, over TCP and from another uid, opens no session
  on a server configured by ``iim.admin dev-setup``;
* a man in the middle holding a certificate the mux trusts relays HELLO,
  CHALLENGE, AUTH between a real mux and a real server: the tls-exporters of its
  two TLS sessions differ, so the proof fails and no READY ever comes;
* an on-path reader of a TLS link (``muxlink_tls = on``, loopback) sees no byte of
  what a client sent;
* one link's OPEN flood is cut with ``overload`` while alice and bob chat through
  the real mux;
* a version-1 peer is refused with ``version``, both ways;
* a mux relays no client to a server it has not authenticated: not over a plain
  link to a non-loopback address without a secret, not when TLS fails.

Waits are bounded; every process started here is stopped here.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from iim.admin.devsetup import dev_setup
from iim.mux import link as muxlink
from iim.muxlink import (
    Close, CloseReason, FrameDecoder, FrameType, Hello, SessionOpen, encode_frame,
)
from live import DOMAIN, Client, LiveMux, LiveServer, free_port, next_item
from support import relocate
from support.process import DEADLINE

SECRET_FILE = "muxlink-secret.conf"
SECRET = "link-secret-Kq73-security-tests"
MARKER = b"marker-c0ffee-9b1d-not-for-eavesdroppers"


def other_host() -> str:
    """This host's own address on its default route: not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))           # no packet is sent
        address = probe.getsockname()[0]
    assert not address.startswith("127."), "this test needs a non-loopback address"
    return address


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def write_secret(folder: Path) -> Path:
    path = folder / SECRET_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"Internal (Software) Token:{SECRET}\n")
    return path


class Mux(LiveMux):
    """LiveMux that does not insist on its links coming up (``wait=False``)."""

    def __init__(self, *args, wait: bool = True, **kwargs):
        self._wait = wait
        super().__init__(*args, **kwargs)

    def wait_links(self, count, timeout=30):
        if self._wait:
            super().wait_links(count, timeout)


class Target:
    """What LiveMux needs of a server: where the links go."""

    def __init__(self, port: int):
        self.link_port = port


def link_params(folder: Path, tls: str = "auto") -> dict:
    return {"muxlink_secretfile": str(folder / SECRET_FILE), "muxlink_tls": tls,
            "muxlink_cafile": str(folder / "ca.pem")}


@pytest.fixture(scope="module")
def tls_system(tmp_path_factory, ca):
    """A server whose links need the secret and TLS even on loopback."""
    folder = tmp_path_factory.mktemp("tls-links")
    write_secret(folder)
    server = LiveServer(folder, ca, extra=f'iim_server.muxlink_secretfile = "{SECRET_FILE}"\n'
                                          'iim_server.muxlink_tls = "on"\n')
    server.add_users()
    server.start()
    yield folder, server
    assert server.stop() == 0


# --- frames by hand -----------------------------------------------------------------------

def read_frames(sock, until, timeout: float = 10.0):
    """Frames from ``sock`` (a socket or SSLSocket) until ``until(frame)`` or EOF."""
    decoder, frames = FrameDecoder(), []
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError, ssl.SSLError):
            break
        if not data:
            break
        frames += decoder.feed(data)
        if any(until(f) for f in frames):
            break
    return frames


def linkclose(frames):
    closes = [Close.decode(f.payload) for f in frames if f.type is FrameType.LINKCLOSE]
    return closes[0] if closes else None


def hello(version: int = 2) -> bytes:
    return encode_frame(FrameType.HELLO, 0, Hello(0, 9, os.urandom(32), version).encode())


IMPOSTOR = r"""
import os, socket, struct, sys, json
from iim.muxlink import (Close, FrameDecoder, FrameType, Hello, SessionOpen, encode_frame)
port, secret_file = int(sys.argv[1]), sys.argv[2]
try:
    open(secret_file).read()
    could_read = True
except PermissionError:
    could_read = False
sock = socket.create_connection(("127.0.0.1", port), timeout=10)
stream = b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' " \
         b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
sock.sendall(encode_frame(FrameType.HELLO, 0, Hello(0, 7, os.urandom(32)).encode())
             + encode_frame(FrameType.AUTH, 0, b"")
             + encode_frame(FrameType.OPEN, 1, SessionOpen("203.0.113.9", 4000, 5222,
                                                           True, "TLSv1.3", "x").encode())
             + encode_frame(FrameType.DATA, 1, stream))
decoder, frames = FrameDecoder(), []
try:
    while True:
        data = sock.recv(65536)
        if not data:
            break
        frames += decoder.feed(data)
except Exception as exc:
    frames_error = str(exc)
types = [f.type.name for f in frames]
close = [Close.decode(f.payload) for f in frames if f.type is FrameType.LINKCLOSE]
print(json.dumps({"uid": os.getuid(), "could_read": could_read, "types": types,
                  "reason": str(close[0].reason) if close else None,
                  "data": b"".join(f.payload for f in frames
                                   if f.type is FrameType.DATA).decode("utf-8", "replace")}))
"""


def impostor(port: int, secret_file: Path, as_user: str | None = None) -> dict:
    import json
    argv = [sys.executable, "-c", IMPOSTOR, str(port), str(secret_file)]
    if as_user is not None:
        argv = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups",
                "--"] + argv
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                          cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- 1. an impostor without the secret ------------------------------------------------------

def test_dev_setup_links_need_the_secret_and_an_impostor_opens_no_session(tmp_path):
    conf = dev_setup(tmp_path / "dev")
    folder = conf.parent
    secret = folder / SECRET_FILE
    assert secret.stat().st_mode & 0o777 == 0o600
    os.chmod(folder, 0o755)                 # let uid nobody reach the folder, not the secret
    text, ports = relocate(conf.read_text())
    text += f'iim.log.iim_server.url = "server.log"\niim.log.iim_mux.url = "mux.log"\n'
    conf.write_text(text)
    assert 'iim_server.muxlink_secretfile = "muxlink-secret.conf"' in text
    assert 'iim_mux.muxlink_secretfile = "muxlink-secret.conf"' in text
    server = subprocess.Popen([sys.executable, "-m", "iim.server", "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    mux = None
    try:
        wait_for(lambda: _listening(ports[15222]) or server.poll() is not None, 20,
                 "the server's link port")
        assert server.poll() is None, server.stderr.read().decode()
        mux = subprocess.Popen([sys.executable, "-m", "iim.mux", "-c", str(conf)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mux_log = folder / "mux.log"
        wait_for(lambda: mux_log.exists() and mux_log.read_text().count("shared secret proved")
                 >= 2, 30, "the dev mux's two links, secret proved")
        for user in (None, "65534"):             # root, then uid nobody
            seen = impostor(ports[15222], secret, as_user=user)
            assert seen["uid"] == (0 if user is None else 65534)
            assert seen["could_read"] is (user is None)
            assert seen["reason"] == "auth", seen
            assert "READY" not in seen["types"] and "DATA" not in seen["types"], seen
            assert "stream" not in seen["data"]
        log = (folder / "server.log").read_text()
        assert log.count("authentication failed: no proof, and a shared secret is "
                         "required") == 2, log
        assert "c2s mux:203.0.113.9" not in log
        assert "not authenticated" not in log             # dev-setup's links are
    finally:
        for proc in (mux, server):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
        server.stderr.close()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# --- 2. a relayed handshake ----------------------------------------------------------------

class Relay:
    """A man in the middle on 127.0.0.1: TLS with the mux (``context``: a certificate
    the mux trusts), TLS to the real server; copies bytes both ways, decoding the
    server's frames and recording every byte it sees in clear."""

    def __init__(self, server_port: int, context: ssl.SSLContext | None):
        self.server_port, self.context = server_port, context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.from_server: list = []
        self.clear = bytearray()
        self.socks: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(sock,), daemon=True).start()

    def _one(self, mux_side):
        try:
            first = mux_side.recv(1, socket.MSG_PEEK)
            upstream = socket.create_connection(("127.0.0.1", self.server_port))
            clear = first != b"\x16"
            if not clear and self.context is not None:
                mux_side = self.context.wrap_socket(mux_side, server_side=True)
                client = ssl.create_default_context()
                client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
                upstream = client.wrap_socket(upstream)
                clear = True
            self.socks += [mux_side, upstream]
            threading.Thread(target=self._copy, args=(upstream, mux_side, clear),
                             daemon=True).start()
            self._copy(mux_side, upstream, False)
        except (OSError, ssl.SSLError):
            pass

    def _copy(self, src, dst, decode):
        decoder = FrameDecoder()
        try:
            while data := src.recv(65536):
                self.clear += data
                if decode:
                    self.from_server += decoder.feed(data)
                dst.sendall(data)
        except Exception:  # noqa: BLE001 - either side went away
            pass
        for sock in (src, dst):
            try:
                sock.close()
            except OSError:
                pass

    def close(self):
        self.listener.close()
        for sock in self.socks:
            try:
                sock.close()
            except OSError:
                pass


def mitm_context(ca, folder: Path) -> ssl.SSLContext:
    """The man in the middle's certificate for 127.0.0.1, from the CA the mux trusts
    (the strongest attacker: a mis-issued certificate)."""
    issued = ca.issue("127.0.0.1")
    (folder / "mitm.pem").write_bytes(issued.key_pem() + issued.chain_pem())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "mitm.pem")
    return context


def test_a_relayed_handshake_fails_because_the_tls_sessions_differ(tls_system, ca):
    folder, server = tls_system
    relay = Relay(server.link_port, mitm_context(ca, folder))
    mux = Mux(folder, Target(relay.port), "mux-mitm", threads=1, wait=False,
              params=link_params(folder, "on"))
    try:
        wait_for(lambda: "refused the link (auth)" in mux.log(), 30,
                 "the mux to learn that the relayed proof failed")
        assert " up to 127.0.0.1:" not in mux.log()
        assert FrameType.CHALLENGE in [f.type for f in relay.from_server]  # it did relay
        assert FrameType.READY not in [f.type for f in relay.from_server]
        wait_for(lambda: "wrong proof: the shared secrets differ, or the set-up was relayed "
                 "from another TLS session" in server.log(), 30, "the server's reason")
    finally:
        assert mux.stop() == 0
        relay.close()


# --- 3. an on-path reader ------------------------------------------------------------------

class Tap:
    """A TCP forwarder between mux and server that keeps every byte it forwards."""

    def __init__(self, server_port: int):
        self.inner = Relay(server_port, None)
        self.port = self.inner.port

    @property
    def captured(self) -> bytes:
        return bytes(self.inner.clear)

    def close(self):
        self.inner.close()


def test_an_on_path_reader_of_a_tls_link_sees_no_client_bytes(tls_system):
    folder, server = tls_system
    tap = Tap(server.link_port)
    mux = Mux(folder, Target(tap.port), "mux-tap", threads=1, params=link_params(folder, "on"))
    try:
        assert "TLSv1.3" in mux.log()
        with socket.create_connection(("127.0.0.1", mux.port), timeout=10) as client:
            client.sendall(b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
                           b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/"
                           b"streams' id='" + MARKER + b"'>")
            answer = b""
            while b"</stream:features>" not in answer:
                chunk = client.recv(65536)
                assert chunk, answer
                answer += chunk
        assert b"starttls" in answer                     # the server got it and answered
        captured = tap.captured
        assert len(captured) > 1000 and captured[:1] == b"\x16"    # TLS records
        assert MARKER not in captured
        assert b"stream:features" not in captured and b"IIMX" not in captured
    finally:
        assert mux.stop() == 0
        tap.close()


# --- 4. an OPEN flood on one link ----------------------------------------------------------

def test_an_open_flood_closes_that_link_only_while_users_keep_chatting(tmp_path, ca):
    folder = tmp_path
    write_secret(folder)
    server = LiveServer(folder, ca, extra=f'iim_server.muxlink_secretfile = "{SECRET_FILE}"\n'
                                          'iim_server.muxlink_max_sessions = "100"\n'
                                          'iim_server.muxlink_open_rate = "50"\n')
    server.add_users()
    server.start()
    mux = Mux(folder, server, "mux-chat", params=link_params(folder))
    try:
        async def chat(alice, bob, text):
            alice.send_message(mto=f"bob@{DOMAIN}/chat", mbody=text, mtype="chat")
            return (await next_item(bob.received))["body"]

        async def scenario():
            alice = await Client(f"alice@{DOMAIN}/chat", "alice-pw-1",
                                 server.ca_file).online(mux.port)
            bob = await Client(f"bob@{DOMAIN}/chat", "bob-pw-2", server.ca_file).online(mux.port)
            got = [await chat(alice, bob, "before the flood")]
            closes = {}
            for name, count in (("sessions", 150), ("rate", 120)):
                up = muxlink.connect("127.0.0.1", server.link_port, instance=5, thread=0,
                                     secret=SECRET.encode())
                # "rate": each session closed at once, so the link never holds many
                opens = b"".join(encode_frame(FrameType.OPEN, sid, SessionOpen(
                    f"198.51.100.{sid % 250 + 1}", 1000 + sid, 5222).encode())
                    + (encode_frame(FrameType.CLOSE, sid, b"\0") if name == "rate" else b"")
                    for sid in range(1, count + 1))
                up.sock.sendall(opens)
                closes[name] = linkclose(await asyncio.to_thread(
                    read_frames, up.sock, lambda f: f.type is FrameType.LINKCLOSE))
                up.sock.close()
                got.append(await chat(alice, bob, f"after the {name} flood"))
            await alice.offline()
            await bob.offline()
            return got, closes

        got, closes = run(scenario(), 90)
        assert got == ["before the flood", "after the sessions flood", "after the rate flood"]
        assert closes["sessions"].reason is CloseReason.OVERLOAD
        assert "iim_server.muxlink_max_sessions" in closes["sessions"].text
        assert closes["rate"].reason is CloseReason.OVERLOAD
        assert "iim_server.muxlink_open_rate" in closes["rate"].text
        log = server.log()
        assert re.search(r"limit iim_server\.muxlink_max_sessions: refused 1 so far "
                         r"\(latest: mux link from 127\.0\.0\.1:\d+ \(instance 5", log), log
        assert "limit iim_server.muxlink_open_rate: refused 1 so far" in log
        assert mux.links_up() == 2 and " lost" not in mux.log()     # the real links stayed
    finally:
        assert mux.stop() == 0
        assert server.stop() == 0


# --- 5. version 1 ------------------------------------------------------------------------------

def test_a_version_1_peer_is_refused_with_version(tls_system, tmp_path):
    folder, server = tls_system
    with socket.create_connection(("127.0.0.1", server.link_port), timeout=10) as raw:
        context = ssl.create_default_context(cafile=str(server.ca_file))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(hello(version=1))
            close = linkclose(read_frames(sock, lambda f: f.type is FrameType.LINKCLOSE))
    assert close.reason is CloseReason.VERSION and "link version 1" in close.text
    # and the mux side: a server that answers CHALLENGE version 1
    peer = socket.create_server(("127.0.0.1", 0))

    def old_server():
        sock, _ = peer.accept()
        with sock:
            read_frames(sock, lambda f: f.type is FrameType.HELLO)
            sock.sendall(encode_frame(FrameType.CHALLENGE, 0, struct.pack("!HB", 1, 0)
                                      + bytes(32)))
            seen.extend(read_frames(sock, lambda f: f.type is FrameType.LINKCLOSE))

    seen: list = []
    thread = threading.Thread(target=old_server, daemon=True)
    thread.start()
    with pytest.raises(muxlink.LinkError, match="the server speaks link version 1, we "
                                                 "speak 2"):
        muxlink.connect("127.0.0.1", peer.getsockname()[1], instance=0, thread=0, secret=None)
    thread.join(10)
    peer.close()
    assert linkclose(seen).reason is CloseReason.VERSION


# --- 6. no client before the server is authenticated ----------------------------------------

class Pretender:
    """A server stand-in that follows the protocol but proves nothing: plain frames
    (echoing the mux's version, no secret asked), or TLS with its own certificate."""

    def __init__(self, host: str, folder: Path):
        from pki import self_signed
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        issued = self_signed(host)
        (folder / "pretender.pem").write_bytes(issued.key_pem() + issued.chain_pem())
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(folder / "pretender.pem")
        self.frames: list = []
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"\x16":
                    sock = self.context.wrap_socket(sock, server_side=True)
                self._link(sock)
            except (OSError, ssl.SSLError, ValueError):
                pass
            finally:
                sock.close()

    def _link(self, sock):
        frames = read_frames(sock, lambda f: f.type is FrameType.HELLO, 5)
        version = struct.unpack_from("!H", frames[0].payload, 4)[0]
        sock.sendall(encode_frame(FrameType.CHALLENGE, 0, struct.pack("!HB", version, 0)
                                  + os.urandom(32)))
        read_frames(sock, lambda f: f.type is FrameType.AUTH, 5)
        sock.sendall(encode_frame(FrameType.READY, 0, struct.pack("!I", 65536)))
        self.frames += read_frames(sock, lambda f: f.type is FrameType.DATA, 5)

    def close(self):
        self.listener.close()


def _client_gets_nothing_through(mux: LiveMux, refusal: str) -> None:
    """A client is closed with nothing relayed, before and after the mux tried
    to link again (and was refused again: ``refusal`` logged once more)."""
    for attempt in range(2):
        tried = mux.log().count(refusal)
        try:
            with socket.create_connection(("127.0.0.1", mux.port), timeout=DEADLINE) as client:
                client.sendall(b"<?xml version='1.0'?>" + MARKER)
                client.settimeout(DEADLINE)
                assert client.recv(100) == b""            # closed, nothing relayed
        except (ConnectionResetError, ConnectionRefusedError):
            pass
        if attempt == 0:
            mux.proc.wait_until(lambda: mux.log().count(refusal) > tried, "another attempt")


def test_a_mux_relays_no_client_to_a_server_it_has_not_authenticated(tmp_path, ca):
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    # (a) no secret, a server address beyond loopback: the mux does not link at all
    host = other_host()
    far = Pretender(host, tmp_path)
    mux = Mux(tmp_path, Target(far.port), "mux-far", threads=1, wait=False,
              params={"serverport": f"{host}:{far.port}"})
    try:
        wait_for(lambda: "not a loopback address and no shared secret" in mux.log(), 20,
                 "the refusal to link")
        _client_gets_nothing_through(mux, "not a loopback address and no shared secret")
        assert far.connections == 0 and not far.frames
        assert "mux links are not authenticated (no iim_mux.muxlink_secretfile)" in mux.log()
    finally:
        assert mux.stop() == 0
        far.close()
    # (b) TLS on, the pretender's certificate is not one the mux trusts
    near = Pretender("127.0.0.1", tmp_path)
    mux = Mux(tmp_path, Target(near.port), "mux-near", threads=1, wait=False,
              params={"muxlink_tls": "on", "muxlink_cafile": str(tmp_path / "ca.pem")})
    try:
        wait_for(lambda: "the server's certificate is not trusted" in mux.log(), 20,
                 "the certificate to be refused")
        _client_gets_nothing_through(mux, "the server's certificate is not trusted")
        assert near.connections >= 1 and not near.frames
        assert " up to 127.0.0.1:" not in mux.log()
    finally:
        assert mux.stop() == 0
        near.close()
