"""A stand-in for the server end of the multiplexor link, for the mux tests.

:class:`LinkPeer` listens on 127.0.0.1 and speaks docs/muxlink.md from the
server's side, written from the document (independently of the relay and of
the server's LinkConnection; the constants, payload layouts' HELLO and the
proofs come from the one definition, iim/muxlink.py):
it performs the set-up (CHALLENGE, checks AUTH, READY with a window), then
records every OPEN, DATA and CLOSE per link, grants WINDOW as it consumes,
echoes DATA back within the credit the mux grants, answers PING, and checks
every frame the mux sends (a violation is recorded in ``link.errors``).
Tests can send DATA/CLOSE/raw bytes, hold credit, stop answering PINGs,
refuse new links, or drop a link.

:class:`RelayHarness` runs one ``iim._fastmux.Relay`` in a thread against a
peer, as a worker's relay thread would.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass

import support
from support.process import DEADLINE

from iim import _fastmux
from iim.mux import link as muxlink
from iim.muxlink import (
    HEADER, HEADER_BYTES, MAGIC, MAX_PAYLOAD, NONCE_BYTES, VERSION, CloseReason, Close,
    FrameType, check_mux_proof, server_proof,
)

# The frame types by their short names, for the tests' transcripts.
HELLO, CHALLENGE, AUTH, READY, LINKCLOSE = (FrameType.HELLO, FrameType.CHALLENGE,
                                            FrameType.AUTH, FrameType.READY,
                                            FrameType.LINKCLOSE)
PING, PONG = FrameType.PING, FrameType.PONG
OPEN, DATA, CLOSE, WINDOW = FrameType.OPEN, FrameType.DATA, FrameType.CLOSE, FrameType.WINDOW
HELLO_BYTES = len(MAGIC) + 6 + NONCE_BYTES      # magic, version, instance, thread, nonce


def frame(ftype: int, sid: int = 0, payload: bytes = b"", flags: int = 0) -> bytes:
    return HEADER.pack(ftype, flags, 0, sid, len(payload)) + payload


def wait_until(predicate, timeout: float = DEADLINE, interval: float = 0.01, what: str = ""):
    """support.wait_until with the timeout second, as the relay tests pass it."""
    return support.wait_until(predicate, what, timeout=timeout, interval=interval)


@dataclass(frozen=True)
class Open:
    family: int
    address: str
    port: int
    local_port: int
    transport: int
    version: str
    cipher: str
    raw: bytes


def parse_open(payload: bytes) -> Open:
    family = payload[0]
    raw_addr = payload[1:17]
    address = socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6,
                               raw_addr[:4] if family == 4 else raw_addr)
    port, local_port, transport = struct.unpack_from("!HHB", payload, 17)
    vlen = payload[22]
    version = payload[23:23 + vlen].decode()
    clen = payload[23 + vlen]
    cipher = payload[24 + vlen:24 + vlen + clen].decode()
    assert len(payload) == 24 + vlen + clen, "OPEN payload length"
    return Open(family, address, port, local_port, transport, version, cipher, payload)


class PeerLink:
    """One link accepted by the peer, seen from the server's side."""

    def __init__(self, peer: "LinkPeer", sock: socket.socket) -> None:
        self.peer = peer
        self.sock = sock
        self.hello: tuple[int, int] | None = None     # (instance, thread)
        self.opens: dict[int, Open] = {}
        self.order: list[int] = []                    # session ids in OPEN order
        self.received: dict[int, bytearray] = defaultdict(bytearray)
        self.closed: dict[int, int] = {}              # sid -> reason
        self.credit: dict[int, int] = {}              # what we may still send
        self.granted: Counter = Counter()             # WINDOW credit the mux returned
        self.sent: Counter = Counter()                # DATA bytes we sent
        self.pending: dict[int, bytearray] = defaultdict(bytearray)
        self.hold: set[int] = set()                   # sids we grant nothing to
        self.withheld: Counter = Counter()
        self.frames: Counter = Counter()
        self.reads = 0
        self.first_read: dict[tuple[int, int], int] = {}  # (type, sid) -> the read it came in
        self.linkclose: tuple[int, str] | None = None
        self.pongs: list[bytes] = []                  # answers to our PINGs
        self.errors: list[str] = []
        self.ended = threading.Event()
        self.ready = threading.Event()
        self.reading = threading.Event()              # cleared: the link is not read
        self.reading.set()
        self.cond = threading.Condition(threading.RLock())
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    # -- test API ---------------------------------------------------------------------
    def session_for_port(self, client_port: int, address: str | None = None) -> int | None:
        """The newest session of the client at `client_port` (and `address`: clients
        from two loopback sources may get the same port number)."""
        if address is not None and address.startswith("::ffff:"):
            address = address[7:]                  # OPEN carries an IPv4 client as IPv4
        with self.cond:
            return max((sid for sid, o in self.opens.items() if o.port == client_port
                        and (address is None or o.address == address)), default=None)

    def wait_for(self, predicate, timeout: float = DEADLINE, what: str = ""):
        """``predicate()``'s first true value, looked at each time a read of the
        link is taken in (or the link ends): no polling interval to wait out."""
        with self.cond:
            if value := self.cond.wait_for(predicate, timeout):
                return value
        raise AssertionError(f"timed out waiting for {what or predicate}")

    def send_data(self, sid: int, data: bytes) -> None:
        """Queue bytes for session `sid`; sent as the mux grants credit."""
        with self.cond:
            self.pending[sid] += data
            self._pump(sid)

    def send_close(self, sid: int, reason: int = 0) -> None:
        with self.cond:
            self.pending.pop(sid, None)
            self._send(frame(CLOSE, sid, bytes([reason])))

    def send_raw(self, data: bytes) -> None:
        with self.cond:
            self._send(data)

    def release(self, sid: int) -> None:
        """Grant what was withheld from `sid` and stop withholding."""
        with self.cond:
            self.hold.discard(sid)
            if self.withheld[sid]:
                self._send(frame(WINDOW, sid, struct.pack("!I", self.withheld.pop(sid))))

    def round_trip(self, timeout: float = 10.0) -> None:
        """PING the relay and wait for the PONG, twice: a barrier. The relay
        answers in the loop turn that reads the PING and sends the answer at
        the end of that turn, after serving every session queued in it; epoll
        reports readiness in the order it arose, and after the first answer
        the link's readiness goes behind whatever is still waiting. So when
        the second answer is here, every client event that arose before the
        call has been served."""
        for _ in range(2):
            payload = secrets.token_bytes(8)
            self.send_raw(frame(PING, 0, payload))
            self.wait_for(lambda: payload in self.pongs, timeout, "the relay's PONG")

    def drop(self) -> None:
        """Lose the link abruptly (no LINKCLOSE)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def blocked(self, sid: int) -> bool:
        with self.cond:
            return self.credit.get(sid, 1) == 0 and bool(self.pending.get(sid))

    # -- the server's side of the link --------------------------------------------------
    def _serve(self) -> None:
        try:
            if self._set_up():
                self.ready.set()
                self._relay()
        except OSError:
            pass
        finally:
            self.ended.set()
            self.sock.close()
            with self.cond:
                self.cond.notify_all()

    def _set_up(self) -> bool:
        peer = self.peer
        ftype, sid, payload = self._read_frame()
        if ftype != HELLO or len(payload) != HELLO_BYTES or payload[:4] != MAGIC:
            self.errors.append(f"bad HELLO: type {ftype}, {len(payload)} bytes")
            return False
        version, instance, thread = struct.unpack_from("!HHH", payload, len(MAGIC))
        mux_nonce = payload[len(MAGIC) + 6:]
        self.hello = (instance, thread)
        if version != VERSION:
            self._send(frame(LINKCLOSE, 0, Close(CloseReason.VERSION, "version").encode()))
            return False
        nonce = secrets.token_bytes(NONCE_BYTES)
        self._send(frame(CHALLENGE, 0, struct.pack("!HB", VERSION, peer.secret is not None)
                         + nonce))
        ftype, sid, proof = self._read_frame()
        if ftype != AUTH:
            self.errors.append(f"expected AUTH, got {ftype}")
            return False
        if peer.secret is not None:
            if not check_mux_proof(peer.secret, mux_nonce, nonce, proof):
                self._send(frame(LINKCLOSE, 0,
                                 Close(CloseReason.AUTH, "authentication failed").encode()))
                return False
            key = peer.proof_secret if peer.proof_secret is not None else peer.secret
            ours = server_proof(key, mux_nonce, nonce)
        else:
            if proof:
                self.errors.append("AUTH carries a proof but no secret was asked for")
            ours = b""
        self._send(frame(READY, 0, ours + struct.pack("!I", peer.window)))
        return True

    def _read_frame(self):
        head = self._recv_exact(HEADER_BYTES)
        ftype, flags, reserved, sid, length = HEADER.unpack(head)
        return ftype, sid, self._recv_exact(length)

    def _recv_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise OSError("link closed")
            data += chunk
        return bytes(data)

    def pause_reading(self, rcvbuf: int = 65536) -> None:
        """Stop reading the link, its receive buffer cut to ``rcvbuf``: what the
        mux sends then waits in its own buffers once the kernel's are full."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()

    def _relay(self) -> None:
        buf = bytearray()
        while True:
            self.reading.wait()
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return
            self.reads += 1
            buf += chunk
            grants: Counter = Counter()
            with self.cond:
                at = self._frames(buf, grants)
                del buf[:at]
                for sid, n in grants.items():
                    self._send(frame(WINDOW, sid, struct.pack("!I", n)))
                self.cond.notify_all()
            if self.linkclose is not None:
                return           # the receiver of LINKCLOSE closes at once

    def _frames(self, buf: bytearray, grants: Counter) -> int:
        at = 0
        view = memoryview(buf)
        while len(buf) - at >= HEADER_BYTES:
            ftype, flags, reserved, sid, length = HEADER.unpack_from(buf, at)
            self._check_header(ftype, flags, reserved, sid, length)
            if len(buf) - at - HEADER_BYTES < length:
                break
            payload = bytes(view[at + HEADER_BYTES:at + HEADER_BYTES + length])
            at += HEADER_BYTES + length
            self.frames[ftype] += 1
            self.first_read.setdefault((ftype, sid), self.reads)
            self._frame(ftype, sid, payload, grants)
        view.release()
        return at

    def _check_header(self, ftype, flags, reserved, sid, length) -> None:
        if flags or reserved or length > MAX_PAYLOAD:
            self.errors.append(f"bad header: type {ftype} flags {flags} length {length}")
        if (ftype >= OPEN) != (sid != 0):
            self.errors.append(f"bad session id {sid} for type {ftype}")

    def _frame(self, ftype: int, sid: int, payload: bytes, grants: Counter) -> None:
        if ftype == OPEN:
            if self.order and sid <= self.order[-1]:
                self.errors.append(f"OPEN id {sid} not above {self.order[-1]}")
            self.opens[sid] = parse_open(payload)
            self.order.append(sid)
            self.credit[sid] = self.peer.window
        elif ftype == DATA:
            self._data(sid, payload, grants)
        elif ftype == WINDOW:
            self.credit[sid] = self.credit.get(sid, 0) + struct.unpack("!I", payload)[0]
            self.granted[sid] += struct.unpack("!I", payload)[0]
            self._pump(sid)
        elif ftype == CLOSE:
            self.closed[sid] = payload[0]
            self.pending.pop(sid, None)
        elif ftype == PING:
            if self.peer.answer_pings:
                self._send(frame(PONG, 0, payload))
        elif ftype == PONG:
            self.pongs.append(payload)
        elif ftype == LINKCLOSE:
            self.linkclose = (payload[0], payload[1:].decode("utf-8", "replace"))
        else:
            self.errors.append(f"unexpected frame type {ftype}")

    def _data(self, sid: int, payload: bytes, grants: Counter) -> None:
        if sid not in self.opens or sid in self.closed:
            self.errors.append(f"DATA for session {sid} not open")
        self.received[sid] += payload
        if sid in self.hold:
            self.withheld[sid] += len(payload)
        else:
            grants[sid] += len(payload)
        if self.peer.echo:
            self.pending[sid] += payload
            self._pump(sid)

    def _pump(self, sid: int) -> None:
        """Send pending bytes of `sid` within the credit the mux granted."""
        pending = self.pending.get(sid)
        if not pending or sid in self.closed:
            return
        n = min(self.credit.get(sid, 0), len(pending))
        out = bytearray()
        for at in range(0, n, MAX_PAYLOAD):
            out += frame(DATA, sid, bytes(pending[at:min(at + MAX_PAYLOAD, n)]))
        del pending[:n]
        self.credit[sid] -= n
        self.sent[sid] += n
        if out:
            self._send(bytes(out))

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass


class LinkPeer:
    """A listening stand-in server: every accepted link becomes a PeerLink."""

    def __init__(self, *, window: int = 65536, secret: bytes | None = None,
                 echo: bool = True, proof_secret: bytes | None = None) -> None:
        self.window = window
        self.secret = secret
        self.proof_secret = proof_secret          # a wrong one makes us an impostor
        self.echo = echo
        self.answer_pings = True
        self.refuse_links = False                 # accept and close at once
        self.links: list[PeerLink] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse_links:
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                self.links.append(PeerLink(self, sock))
                self._cond.notify_all()

    def wait_links(self, n: int, timeout: float = 10.0) -> list[PeerLink]:
        """The first `n` links that finished set-up."""
        wait_until(lambda: len([ln for ln in self.links if ln.ready.is_set()]) >= n,
                   timeout, what=f"{n} links")
        return [ln for ln in self.links if ln.ready.is_set()][:n]

    def live_links(self) -> list[PeerLink]:
        return [ln for ln in self.links if ln.ready.is_set() and not ln.ended.is_set()]

    def close(self) -> None:
        self.listener.close()
        for ln in self.links:
            ln.drop()
        for ln in self.links:
            ln.thread.join(5)


def make_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class RelayHarness:
    """One Relay in a thread, its listener, and the peer link it got."""

    def __init__(self, peer: LinkPeer, *, limit=1000, tls=None, thread: int = 0, **kwargs):
        self.peer = peer
        self.listener = make_listener()
        before = len(peer.links)
        up = muxlink.connect("127.0.0.1", peer.port, instance=0, thread=thread,
                             secret=peer.secret)
        self.window = up.window
        self.relay = _fastmux.Relay(self.listener.fileno(), up.sock.detach(), up.window, limit,
                                    tls=tls, **kwargs)
        self.code = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_until(lambda: len(peer.links) > before and peer.links[before].ready.is_set())
        self.link = peer.links[before]

    def _run(self) -> None:
        self.code = self.relay.run()

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def client(self, rcvbuf: int | None = None, source: str | None = None) -> socket.socket:
        """A connected client; ``source``: the loopback address it connects from
        (127.0.0.2, 127.0.0.3...: another source for per-source limits)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def opened(self, sock: socket.socket, timeout: float = DEADLINE) -> int:
        """The session id the peer got for client `sock`."""
        address, port = sock.getsockname()[:2]
        return self.link.wait_for(lambda: self.link.session_for_port(port, address), timeout,
                                  what=f"OPEN for client {address} port {port}")

    def stats(self) -> dict:
        return self.relay.stats()

    def wait_exit(self, timeout: float = 10.0) -> int:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "Relay.run() did not return"
        return self.code

    def stop(self) -> int:
        self.relay.stop()
        code = self.wait_exit()
        self.listener.close()
        return code


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def closed_by_peer(sock: socket.socket, timeout: float = DEADLINE) -> bool:
    """True when `sock` reads EOF (or a reset) within `timeout` (data before it is skipped)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return True


def open_fds() -> set[int]:
    """This process's descriptors (without the one listing them)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").endswith("/fd"):
                found.add(int(name))
        except OSError:
            pass                                     # the listing's own, now closed
    return found

