"""Link set-up, the multiplexor's side (docs/muxlink.md "Link set-up and authentication").

A relay thread opens one TCP connection to the server's ``iim_mux.serverport``
and, with a plain blocking socket, says HELLO, answers the CHALLENGE with AUTH
and checks READY. Only then is the socket handed to the relay core, which
speaks the session frames. Nothing here knows about clients or epoll.

With a shared secret both sides prove they know it without sending it:

    mux proof    = HMAC-SHA256(secret, "iim-muxlink-1 mux"    || mux nonce || server nonce)
    server proof = HMAC-SHA256(secret, "iim-muxlink-1 server" || mux nonce || server nonce)

A mux that holds a secret insists on the server's proof: a server that does
not ask for the secret (or cannot prove it) gets no clients, so an impostor
listening on the server port learns nothing. Every failure is a
:class:`LinkError` whose message is one line for the log.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from iim.keys.passwords import read_password_file

__all__ = ["Link", "LinkError", "connect", "load_secret", "set_up"]

VERSION = 1
MAGIC = b"IIMX"
MAX_PAYLOAD = 65536
NONCE_BYTES = 32
PROOF_BYTES = 32
HEADER = struct.Struct("!BBHII")     # type, flags, reserved, session id, length

HELLO, CHALLENGE, AUTH, READY, LINKCLOSE = 0x01, 0x02, 0x03, 0x04, 0x05
REASONS = ("normal", "protocol", "auth", "version", "shutdown", "overload", "timeout", "tls")
R_PROTOCOL, R_AUTH, R_VERSION = 1, 2, 3

LINGER_SECONDS = 2.0

MUX_LABEL = b"iim-muxlink-1 mux"
SERVER_LABEL = b"iim-muxlink-1 server"


class LinkError(Exception):
    """The link could not be set up; the message is one line naming why."""


@dataclass
class Link:
    """A link past READY: the blocking socket and the initial session window."""

    sock: socket.socket
    window: int
    secret_proved: bool


def load_secret(path, param: str = "iim_mux.muxlink_secretfile") -> bytes:
    """The shared secret from a one-line password file (the sslpassword.conf
    format); the HMAC key is the password's UTF-8 bytes."""
    return read_password_file(Path(path), param).password.encode("utf-8")


def connect(host: str, port: int, *, instance: int, thread: int, secret: bytes | None,
            timeout: float = 10.0,
            register: Callable[[socket.socket], None] | None = None) -> Link:
    """Connect to the server and set the link up.

    ``register`` receives the socket before it connects, so that another
    thread may shut it down to abandon a slow attempt. Raises
    :class:`LinkError` (OSError from the connection is turned into one).
    """
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise LinkError(f"cannot resolve the server address {where}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    if register is not None:
        register(sock)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        window, proved = set_up(sock, instance=instance, thread=thread, secret=secret)
    except OSError as exc:
        sock.close()
        raise LinkError(f"link to {where}: {_os_reason(exc)}") from None
    except LinkError as exc:
        sock.close()
        raise LinkError(f"link to {where}: {exc}") from None
    return Link(sock, window, proved)


def set_up(sock: socket.socket, *, instance: int, thread: int,
           secret: bytes | None) -> tuple[int, bool]:
    """HELLO, CHALLENGE, AUTH, READY on a connected socket; (window, proved)."""
    mux_nonce = secrets.token_bytes(NONCE_BYTES)
    _send(sock, HELLO, MAGIC + struct.pack("!HHH", VERSION, instance, thread) + mux_nonce)
    required, server_nonce = _challenge(sock, _expect(sock, CHALLENGE))
    _check_secret_policy(sock, required, secret)
    proof = _proof(MUX_LABEL, secret, mux_nonce, server_nonce) if secret else b""
    _send(sock, AUTH, proof)
    return _ready(sock, _expect(sock, READY), secret, mux_nonce, server_nonce)


def _challenge(sock: socket.socket, payload: bytes) -> tuple[bool, bytes]:
    if len(payload) != 3 + NONCE_BYTES:
        _abort(sock, R_PROTOCOL, f"CHALLENGE of {len(payload)} bytes (expected 35)")
    version, required = struct.unpack_from("!HB", payload)
    if version != VERSION:
        _abort(sock, R_VERSION, f"the server speaks link version {version}, we speak {VERSION}")
    if required > 1:
        _abort(sock, R_PROTOCOL, f"CHALLENGE secret-required is {required} (0 or 1)")
    return bool(required), payload[3:]


def _check_secret_policy(sock: socket.socket, required: bool, secret: bytes | None) -> None:
    if required and secret is None:
        _abort(sock, R_AUTH, "the server requires a shared secret and none is configured "
                             "(IIM_MUXLINK_SECRET_FILE / iim_mux.muxlink_secretfile)")
    if secret is not None and not required:
        _abort(sock, R_AUTH, "the server does not ask for the shared secret, so it cannot "
                             "prove it knows it; no clients are relayed to it")


def _ready(sock: socket.socket, payload: bytes, secret: bytes | None, mux_nonce: bytes,
           server_nonce: bytes) -> tuple[int, bool]:
    if len(payload) not in (4, PROOF_BYTES + 4):
        _abort(sock, R_PROTOCOL, f"READY of {len(payload)} bytes (expected 4 or 36)")
    proof, window = payload[:-4], int.from_bytes(payload[-4:], "big")
    if secret is not None:
        expected = _proof(SERVER_LABEL, secret, mux_nonce, server_nonce)
        if not hmac.compare_digest(proof, expected):
            _abort(sock, R_AUTH, "the server's proof is wrong: the shared secrets differ "
                                 "(or this is not our server)")
    if window == 0:
        _abort(sock, R_PROTOCOL, "READY grants an initial window of 0")
    return window, secret is not None


def _proof(label: bytes, secret: bytes, mux_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(secret, label + mux_nonce + server_nonce, hashlib.sha256).digest()


# -- frames ----------------------------------------------------------------------------

def _send(sock: socket.socket, ftype: int, payload: bytes = b"") -> None:
    sock.sendall(HEADER.pack(ftype, 0, 0, 0, len(payload)) + payload)


def _expect(sock: socket.socket, ftype: int) -> bytes:
    """The payload of the next frame, which must be `ftype` (LINKCLOSE: LinkError)."""
    got, flags, reserved, sid, length = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if length > MAX_PAYLOAD or flags or reserved or sid:
        _abort(sock, R_PROTOCOL, "malformed frame header during set-up")
    payload = _recv_exact(sock, length)
    if got == LINKCLOSE and payload:
        reason = REASONS[payload[0]] if payload[0] < len(REASONS) else f"reason {payload[0]}"
        text = payload[1:201].decode("utf-8", "replace")
        raise LinkError(f"the server refused the link ({reason})" + (f": {text}" if text else ""))
    if got != ftype:
        _abort(sock, R_PROTOCOL, f"expected frame type 0x{ftype:02x}, got 0x{got:02x}")
    return payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise LinkError("the server closed the connection during set-up")
        data += chunk
    return bytes(data)


def _abort(sock: socket.socket, reason: int, text: str):
    """Close the link with LINKCLOSE `reason` and raise. As the sender of
    LINKCLOSE, read and discard until the server closes its end (briefly),
    so a TCP reset cannot destroy the LINKCLOSE before it is read."""
    try:
        _send(sock, LINKCLOSE, bytes([reason]) + text.encode("utf-8")[:200])
        sock.settimeout(LINGER_SECONDS)
        while sock.recv(4096):
            pass
    except OSError:
        pass
    raise LinkError(text)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    return exc.strerror or str(exc)
