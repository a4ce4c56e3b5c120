"""The multiplexor link codec (docs/muxlink.md), shared by both ends. Sans-I/O.

Theory of operation. One TCP connection from a multiplexor relay thread to
the server carries many client sessions as frames: a 12-byte header (type,
flags, reserved, session id, payload length; big-endian) and a payload of at
most ``MAX_PAYLOAD`` bytes. This module turns frames into bytes
(``encode_frame``) and bytes into frames (``FrameDecoder.feed``, which
accepts any split of the byte stream), and encodes and decodes each payload.
It knows nothing of sockets, clocks or sessions: the server end's state is
iim.linkconnection.LinkConnection (under iim.server.muxlink), the mux's set-up
iim.mux.link, and the relay core (iim/_fastmux.pyx) keeps C copies of the
constants, which tests/test_muxlink_constants.py compares with these.

This module is the one definition of the protocol (docs/muxlink.md): magic,
version, header layout, frame types, close reasons, proof labels and the
limits of the wire.

Everything the peer can get wrong raises ``RemoteProtocolError`` carrying the
``CloseReason`` to close the link with; ``LocalProtocolError`` (a ValueError)
means *we* misused the API (a value that cannot be encoded). The decoder checks a header as soon as
its 12 bytes are in, so an absurd length closes the link before we buffer it.

The link authentication (docs/muxlink.md "Link set-up") is a challenge and
response over two fresh 32-byte nonces; the proofs are HMAC-SHA256 over a
label, both nonces and the channel binding of the link's TLS session (the
RFC 9266 tls-exporter, 32 bytes; empty on a plain loopback link), so the
shared secret never crosses the wire, each side proves itself to the other,
and a proof is good for one TLS session only (a relayed set-up fails).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass

# -- the protocol: the one definition (the relay core's C constants are checked
#    against it by tests/test_muxlink_constants.py) ------------------------------------

VERSION = 2
MAGIC = b"IIMX"                         # HELLO's first 4 bytes
MAX_PAYLOAD = 65536
NONCE_BYTES = 32
PROOF_BYTES = 32
PING_BYTES = 8                          # PING and PONG payloads
BINDING_BYTES = 32                      # RFC 9266 tls-exporter
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"    # RFC 9266 section 2, no context
MUX_LABEL = b"iim-muxlink-2 mux"        # the HMAC labels of the two proofs
SERVER_LABEL = b"iim-muxlink-2 server"
DEFAULT_WINDOW = 65536
MAX_SID = MAX_CREDIT = 2**32 - 1
TLS_HANDSHAKE = 0x16                    # a link's first byte when it starts with TLS
SETUP_SECONDS = 30.0                    # connect to READY
KEEPALIVE_SECONDS = 30.0                # PING after this long without a frame; as long for PONG
LINGER_SECONDS = 2.0                    # a LINKCLOSE's sender reads and discards this long

HEADER = struct.Struct("!BBHII")        # type, flags, reserved, session id, length
HEADER_BYTES = HEADER.size              # 12


class FrameType(enum.IntEnum):
    HELLO = 0x01
    CHALLENGE = 0x02
    AUTH = 0x03
    READY = 0x04
    LINKCLOSE = 0x05
    PING = 0x06
    PONG = 0x07
    OPEN = 0x10
    DATA = 0x11
    CLOSE = 0x12
    WINDOW = 0x13

    @property
    def is_session(self) -> bool:
        """Session frames carry a session id (1..2^32-1); link frames carry 0."""
        return self >= FrameType.OPEN


class CloseReason(enum.IntEnum):
    """LINKCLOSE and CLOSE reasons (one table); ``str()`` is the name the doc uses."""

    NORMAL = 0
    PROTOCOL = 1
    AUTH = 2
    VERSION = 3
    SHUTDOWN = 4
    OVERLOAD = 5
    TIMEOUT = 6
    TLS = 7

    def __str__(self) -> str:
        return self.name.lower()


def reason_name(code: int) -> str:
    """A close reason's name for a log line, also for a code outside the table."""
    try:
        return str(CloseReason(code))
    except ValueError:
        return f"reason {code}"


class RemoteProtocolError(Exception):
    """The peer broke the link protocol; close the link with ``reason``."""

    def __init__(self, message: str, reason: CloseReason = CloseReason.PROTOCOL) -> None:
        super().__init__(message)
        self.reason = reason


#: The name the codec's callers have used since version 1.
LinkProtocolError = RemoteProtocolError


class LocalProtocolError(ValueError):
    """We misused the API (a value that cannot be encoded, DATA beyond the credit)."""


# -- frames -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    type: FrameType
    sid: int
    payload: bytes = b""
    flags: int = 0

    def encode(self) -> bytes:
        return encode_frame(self.type, self.sid, self.payload, self.flags)


def encode_frame(type: FrameType | int, sid: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """Header + payload. Checks only that the values fit the header (ValueError)."""
    if not 0 <= type <= 0xFF or not 0 <= flags <= 0xFF:
        raise LocalProtocolError(f"frame type {type!r} / flags {flags!r} do not fit a byte")
    if not 0 <= sid <= MAX_SID:
        raise LocalProtocolError(f"session id {sid} out of range")
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(type, flags, 0, sid, len(payload)) + payload


class FrameDecoder:
    """Bytes in, whole frames out, whatever the split. Poisoned after an error."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header: tuple[FrameType, int, int] | None = None   # type, sid, length
        self._error: RemoteProtocolError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        return [Frame(ftype, sid, payload) for ftype, sid, payload in self.frames(data)]

    def frames(self, data: bytes) -> list[tuple[FrameType, int, bytes]]:
        """Like ``feed``, as (type, session id, payload) tuples: no object per frame.
        A bad header raises before any frame of ``data`` is returned."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames = []
        try:
            while (frame := self._next()) is not None:
                frames.append(frame)
        except RemoteProtocolError as exc:
            self._error = exc
            self._buffer.clear()
            raise
        return frames

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame waiting for the rest."""
        return len(self._buffer)

    def _next(self) -> tuple[FrameType, int, bytes] | None:
        if self._header is None:
            if len(self._buffer) < HEADER_BYTES:
                return None
            self._header = _check_header(*HEADER.unpack_from(self._buffer))
            del self._buffer[:HEADER_BYTES]
        ftype, sid, length = self._header
        if len(self._buffer) < length:
            return None
        payload = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._header = None
        return ftype, sid, payload


def _check_header(ftype: int, flags: int, reserved: int, sid: int,
                  length: int) -> tuple[FrameType, int, int]:
    try:
        ftype = FrameType(ftype)
    except ValueError:
        raise RemoteProtocolError(f"unknown frame type 0x{ftype:02x}") from None
    if length > MAX_PAYLOAD:
        raise RemoteProtocolError(f"{ftype.name} frame of {length} bytes exceeds {MAX_PAYLOAD}")
    if flags or reserved:
        raise RemoteProtocolError(f"{ftype.name} frame with flags 0x{flags:02x} / "
                                f"reserved 0x{reserved:04x} (version {VERSION} defines none)")
    if ftype.is_session and sid == 0:
        raise RemoteProtocolError(f"{ftype.name} frame without a session id")
    if not ftype.is_session and sid != 0:
        raise RemoteProtocolError(f"{ftype.name} frame with session id {sid} (a link frame)")
    return ftype, sid, length


# -- payload helpers --------------------------------------------------------------------

class _Reader:
    """Reads a payload front to back; any shortfall is the peer's error."""

    def __init__(self, payload: bytes, what: str) -> None:
        self.data, self.at, self.what = payload, 0, what

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise RemoteProtocolError(f"{self.what} payload too short ({len(self.data)} bytes)")
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def text(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"{self.what}: text is not UTF-8") from None

    def end(self) -> None:
        if self.at != len(self.data):
            raise RemoteProtocolError(f"{self.what} payload has {len(self.data) - self.at} "
                                    "bytes too many")


def _short_text(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise LocalProtocolError(f"{what} longer than 255 bytes")
    return bytes([len(raw)]) + raw


# -- link set-up ------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    """mux -> server: who is calling, and its nonce."""

    instance: int
    thread: int
    nonce: bytes
    version: int = VERSION

    def encode(self) -> bytes:
        _check_nonce(self.nonce)
        return MAGIC + struct.pack("!HHH", self.version, self.instance, self.thread) + self.nonce

    @classmethod
    def decode(cls, payload: bytes) -> "Hello":
        r = _Reader(payload, "HELLO")
        if r.take(4) != MAGIC:
            raise RemoteProtocolError("HELLO without the IIMX magic: not a multiplexor")
        version = r.u16()
        if version != VERSION:
            raise RemoteProtocolError(f"link version {version} (this end speaks {VERSION})",
                                    CloseReason.VERSION)
        instance, thread, nonce = r.u16(), r.u16(), r.take(NONCE_BYTES)
        r.end()
        return cls(instance, thread, nonce, version)


@dataclass(frozen=True)
class Challenge:
    """server -> mux: our nonce, and whether a shared secret is required."""

    secret_required: bool
    nonce: bytes
    version: int = VERSION

    def encode(self) -> bytes:
        _check_nonce(self.nonce)
        return struct.pack("!HB", self.version, int(self.secret_required)) + self.nonce

    @classmethod
    def decode(cls, payload: bytes) -> "Challenge":
        r = _Reader(payload, "CHALLENGE")
        version = r.u16()
        if version != VERSION:
            raise RemoteProtocolError(f"link version {version} (this end speaks {VERSION})",
                                    CloseReason.VERSION)
        required = r.u8()
        if required > 1:
            raise RemoteProtocolError(f"CHALLENGE secret-required {required} (0 or 1)")
        nonce = r.take(NONCE_BYTES)
        r.end()
        return cls(bool(required), nonce, version)


@dataclass(frozen=True)
class Auth:
    """mux -> server: the mux's proof, empty without a shared secret."""

    proof: bytes = b""

    def encode(self) -> bytes:
        _check_proof(self.proof)
        return self.proof

    @classmethod
    def decode(cls, payload: bytes) -> "Auth":
        if len(payload) not in (0, PROOF_BYTES):
            raise RemoteProtocolError(f"AUTH payload of {len(payload)} bytes (0 or 32)")
        return cls(bytes(payload))


@dataclass(frozen=True)
class Ready:
    """server -> mux: the server's proof (empty without a secret) and the window."""

    window: int = DEFAULT_WINDOW
    proof: bytes = b""

    def encode(self) -> bytes:
        _check_proof(self.proof)
        if not 1 <= self.window <= MAX_CREDIT:
            raise LocalProtocolError(f"initial window {self.window} out of range")
        return self.proof + self.window.to_bytes(4, "big")

    @classmethod
    def decode(cls, payload: bytes) -> "Ready":
        if len(payload) not in (4, PROOF_BYTES + 4):
            raise RemoteProtocolError(f"READY payload of {len(payload)} bytes (4 or 36)")
        window = int.from_bytes(payload[-4:], "big")
        if window == 0:
            raise RemoteProtocolError("READY with an initial window of 0")
        return cls(window, bytes(payload[:-4]))


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_BYTES:
        raise LocalProtocolError(f"a nonce is {NONCE_BYTES} bytes, not {len(nonce)}")


def _check_proof(proof: bytes) -> None:
    if len(proof) not in (0, PROOF_BYTES):
        raise LocalProtocolError(f"a proof is {PROOF_BYTES} bytes (or empty), not {len(proof)}")


def mux_proof(secret: bytes, mux_nonce: bytes, server_nonce: bytes,
              binding: bytes = b"") -> bytes:
    """HMAC-SHA256(secret, "iim-muxlink-2 mux" || mux nonce || server nonce || binding)."""
    return _proof(MUX_LABEL, secret, mux_nonce, server_nonce, binding)


def server_proof(secret: bytes, mux_nonce: bytes, server_nonce: bytes,
                 binding: bytes = b"") -> bytes:
    """HMAC-SHA256(secret, "iim-muxlink-2 server" || mux nonce || server nonce || binding)."""
    return _proof(SERVER_LABEL, secret, mux_nonce, server_nonce, binding)


def check_mux_proof(secret: bytes, mux_nonce: bytes, server_nonce: bytes,
                    proof: bytes, binding: bytes = b"") -> bool:
    """Constant-time check of the proof a mux sent in AUTH."""
    return hmac.compare_digest(mux_proof(secret, mux_nonce, server_nonce, binding), proof)


def check_server_proof(secret: bytes, mux_nonce: bytes, server_nonce: bytes,
                       proof: bytes, binding: bytes = b"") -> bool:
    """Constant-time check of the proof a server sent in READY."""
    return hmac.compare_digest(server_proof(secret, mux_nonce, server_nonce, binding), proof)


def _proof(label: bytes, secret: bytes, mux_nonce: bytes, server_nonce: bytes,
           binding: bytes) -> bytes:
    """``binding``: the link's tls-exporter (32 bytes), or empty on a plain link."""
    _check_nonce(mux_nonce)
    _check_nonce(server_nonce)
    if len(binding) not in (0, BINDING_BYTES):
        raise LocalProtocolError(f"a channel binding is {BINDING_BYTES} bytes (or empty), "
                         f"not {len(binding)}")
    return hmac.new(secret, label + mux_nonce + server_nonce + binding, hashlib.sha256).digest()


# -- sessions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionOpen:
    """OPEN: who the client is, where it connected, and TLS at the mux (legacy SSL)."""

    client_address: str
    client_port: int
    local_port: int
    legacy_tls: bool = False
    tls_version: str = ""
    cipher: str = ""

    def encode(self) -> bytes:
        address = ipaddress.ip_address(self.client_address)
        if not self.legacy_tls and (self.tls_version or self.cipher):
            raise LocalProtocolError("TLS version and cipher are for legacy-SSL sessions only")
        return (bytes([address.version]) + address.packed.ljust(16, b"\0")
                + struct.pack("!HHB", self.client_port, self.local_port, int(self.legacy_tls))
                + _short_text(self.tls_version, "TLS version")
                + _short_text(self.cipher, "cipher name"))

    @classmethod
    def decode(cls, payload: bytes) -> "SessionOpen":
        r = _Reader(payload, "OPEN")
        address = _address(r.u8(), r.take(16))
        client_port, local_port, transport = r.u16(), r.u16(), r.u8()
        if transport > 1:
            raise RemoteProtocolError(f"OPEN transport {transport} (0 plain, 1 legacy SSL)")
        tls_version = r.text(r.u8())
        cipher = r.text(r.u8())
        r.end()
        if not transport and (tls_version or cipher):
            raise RemoteProtocolError("OPEN of a plain session with TLS details")
        return cls(str(address), client_port, local_port, bool(transport), tls_version, cipher)

    @property
    def peer(self) -> str:
        """``mux:<client ip>:<port>`` (IPv6 in brackets), as sessions log it."""
        host = f"[{self.client_address}]" if ":" in self.client_address else \
            self.client_address
        return f"mux:{host}:{self.client_port}"


def _address(family: int, raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if family == 4:
        if any(raw[4:]):
            raise RemoteProtocolError("OPEN: IPv4 address with bytes after the first 4")
        return ipaddress.IPv4Address(raw[:4])
    if family == 6:
        return ipaddress.IPv6Address(raw)
    raise RemoteProtocolError(f"OPEN address family {family} (4 or 6)")


@dataclass(frozen=True)
class Close:
    """LINKCLOSE and CLOSE: a reason code and a text for the log."""

    reason: CloseReason = CloseReason.NORMAL
    text: str = ""

    def encode(self) -> bytes:
        text = self.text.encode("utf-8")[:MAX_PAYLOAD - 1]
        return bytes([self.reason]) + text.decode("utf-8", "ignore").encode("utf-8")

    @classmethod
    def decode(cls, payload: bytes) -> "Close":
        r = _Reader(payload, "CLOSE")
        code = r.u8()
        try:
            reason = CloseReason(code)
        except ValueError:
            raise RemoteProtocolError(f"unknown close reason {code}") from None
        return cls(reason, r.text(len(payload) - 1))


def encode_window(credit: int) -> bytes:
    if not 0 <= credit <= MAX_CREDIT:
        raise LocalProtocolError(f"window credit {credit} out of range")
    return credit.to_bytes(4, "big")


def decode_window(payload: bytes) -> int:
    if len(payload) != 4:
        raise RemoteProtocolError(f"WINDOW payload of {len(payload)} bytes (4)")
    return int.from_bytes(payload, "big")


def check_ping(payload: bytes) -> bytes:
    """PING and PONG carry exactly 8 opaque bytes."""
    if len(payload) != PING_BYTES:
        raise RemoteProtocolError(f"PING/PONG payload of {len(payload)} bytes ({PING_BYTES})")
    return bytes(payload)


def check_data(payload: bytes) -> bytes:
    if not payload:
        raise RemoteProtocolError("empty DATA frame")
    return payload


def decode_payload(frame: Frame):
    """The payload of ``frame`` as its type's value (DATA: the bytes)."""
    decoder = _PAYLOADS[frame.type]
    return decoder(frame.payload)


_PAYLOADS = {
    FrameType.HELLO: Hello.decode,
    FrameType.CHALLENGE: Challenge.decode,
    FrameType.AUTH: Auth.decode,
    FrameType.READY: Ready.decode,
    FrameType.LINKCLOSE: Close.decode,
    FrameType.PING: check_ping,
    FrameType.PONG: check_ping,
    FrameType.OPEN: SessionOpen.decode,
    FrameType.DATA: check_data,
    FrameType.CLOSE: Close.decode,
    FrameType.WINDOW: decode_window,
}
