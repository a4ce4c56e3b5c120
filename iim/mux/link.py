"""Link set-up, the multiplexor's side (docs/muxlink.md "Link set-up and authentication").

A relay thread opens one TCP connection to the server's ``iim_mux.serverport``;
unless the link stays on loopback (``iim_mux.muxlink_tls``: auto), it runs a
TLS 1.3 handshake first, verifying the server's certificate
(``iim_mux.muxlink_cafile``) and the name it dialled. Then, with a blocking
socket (or TLS session), it says HELLO, answers the CHALLENGE with AUTH and
checks READY. Only then are the socket (and TLS session) handed to the relay
core, which speaks the session frames: no client is accepted before. Nothing
here knows about clients or epoll.

With a shared secret both sides prove they know it without sending it, for
this TLS session only (``binding``: its RFC 9266 tls-exporter; empty on a
plain loopback link):

    mux proof    = HMAC-SHA256(secret, "iim-muxlink-2 mux"    || nonces || binding)
    server proof = HMAC-SHA256(secret, "iim-muxlink-2 server" || nonces || binding)

A mux that holds a secret insists on the server's proof: a server that does
not ask for the secret (or cannot prove it) gets no clients, so an impostor
listening on the server port learns nothing. Without a secret the mux links
only to a loopback address. Every failure is a :class:`LinkError` whose
message is one line for the log.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from iim._fastmux import LinkTls, LinkTlsContext, LinkTlsError
from iim.keys.passwords import read_password_file
from iim.muxlink import (
    HEADER, LINGER_SECONDS, MAX_PAYLOAD, NONCE_BYTES, PROOF_BYTES, VERSION, CloseReason,
    FrameType, Hello, check_server_proof, encode_frame, mux_proof, reason_name,
)

__all__ = ["Link", "LinkError", "TLS_MODES", "connect", "load_secret", "set_up", "wants_tls"]

#: iim_mux.muxlink_tls: TLS unless loopback, always, never (then loopback only).
TLS_MODES = ("auto", "on", "off")


class LinkError(Exception):
    """The link could not be set up; the message is one line naming why."""


@dataclass
class Link:
    """A link past READY: the blocking socket and the initial session window."""

    sock: socket.socket
    window: int
    secret_proved: bool
    tls: LinkTls | None = None
    """The link's TLS session (handed to the relay with the socket), or None."""


def load_secret(path, param: str = "iim_mux.muxlink_secretfile") -> bytes:
    """The shared secret from a one-line password file (the sslpassword.conf
    format); the HMAC key is the password's UTF-8 bytes."""
    return read_password_file(Path(path), param).password.encode("utf-8")


def wants_tls(mode: str, loopback: bool) -> bool:
    """Whether a link runs TLS (``iim_mux.muxlink_tls`` / ``iim_server.muxlink_tls``)."""
    return mode == "on" or (mode == "auto" and not loopback)


def connect(host: str, port: int, *, instance: int, thread: int, secret: bytes | None,
            timeout: float = 10.0, tls_mode: str = "auto",
            tls_context: LinkTlsContext | None = None,
            register: Callable[[socket.socket], None] | None = None) -> Link:
    """Connect to the server and set the link up.

    ``register`` receives the socket before it connects, so that another
    thread may shut it down to abandon a slow attempt. Raises
    :class:`LinkError` (OSError and TLS failures are turned into one).
    """
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise LinkError(f"cannot resolve the server address {where}: {exc.strerror}") from None
    use_tls = _tls_policy(where, address[0], secret, tls_mode, tls_context)
    sock = socket.socket(family, kind, proto)
    if register is not None:
        register(sock)
    tls = None
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        channel, binding = sock, b""
        if use_tls:
            channel = tls = LinkTls.connect(tls_context, sock.fileno(), host, timeout)
            binding = tls.exporter()
        window, proved = set_up(channel, instance=instance, thread=thread, secret=secret,
                                binding=binding)
    except (OSError, LinkError, LinkTlsError) as exc:
        if tls is not None:
            tls.close()
        sock.close()
        why = _os_reason(exc) if isinstance(exc, OSError) else str(exc)
        raise LinkError(f"link to {where}: {why}") from None
    return Link(sock, window, proved, tls)


def _tls_policy(where: str, address: str, secret: bytes | None, mode: str,
                context: LinkTlsContext | None) -> bool:
    """Whether to run TLS to ``address``; LinkError when the policy forbids the link."""
    loopback = ipaddress.ip_address(address.split("%")[0]).is_loopback
    if not loopback and secret is None:
        raise LinkError(f"link to {where}: not a loopback address and no shared secret "
                        "(iim_mux.muxlink_secretfile): the server cannot be authenticated")
    if mode == "off" and not loopback:
        raise LinkError(f"link to {where}: iim_mux.muxlink_tls is off, and a link that "
                        "leaves the host must be encrypted")
    use_tls = wants_tls(mode, loopback)
    if use_tls and context is None:
        raise LinkError(f"link to {where}: TLS is needed and no link TLS context was given")
    return use_tls


def set_up(sock, *, instance: int, thread: int, secret: bytes | None,
           binding: bytes = b"") -> tuple[int, bool]:
    """HELLO, CHALLENGE, AUTH, READY on a connected socket (or LinkTls); (window, proved).
    ``binding``: the tls-exporter of the link's TLS session, b"" without TLS."""
    mux_nonce = secrets.token_bytes(NONCE_BYTES)
    _send(sock, FrameType.HELLO, Hello(instance, thread, mux_nonce).encode())
    required, server_nonce = _challenge(sock, _expect(sock, FrameType.CHALLENGE))
    _check_secret_policy(sock, required, secret)
    proof = mux_proof(secret, mux_nonce, server_nonce, binding) if secret else b""
    _send(sock, FrameType.AUTH, proof)
    return _ready(sock, _expect(sock, FrameType.READY), secret, mux_nonce, server_nonce,
                  binding)


def _challenge(sock: socket.socket, payload: bytes) -> tuple[bool, bytes]:
    if len(payload) != 3 + NONCE_BYTES:
        _abort(sock, CloseReason.PROTOCOL,
               f"CHALLENGE of {len(payload)} bytes (expected {3 + NONCE_BYTES})")
    version, required = struct.unpack_from("!HB", payload)
    if version != VERSION:
        _abort(sock, CloseReason.VERSION,
               f"the server speaks link version {version}, we speak {VERSION}")
    if required > 1:
        _abort(sock, CloseReason.PROTOCOL, f"CHALLENGE secret-required is {required} (0 or 1)")
    return bool(required), payload[3:]


def _check_secret_policy(sock: socket.socket, required: bool, secret: bytes | None) -> None:
    if required and secret is None:
        _abort(sock, CloseReason.AUTH, "the server requires a shared secret and none is "
                                       "configured (iim_mux.muxlink_secretfile)")
    if secret is not None and not required:
        _abort(sock, CloseReason.AUTH, "the server does not ask for the shared secret, so it "
                                       "cannot prove it knows it; no clients are relayed to it")


def _ready(sock: socket.socket, payload: bytes, secret: bytes | None, mux_nonce: bytes,
           server_nonce: bytes, binding: bytes) -> tuple[int, bool]:
    if len(payload) not in (4, PROOF_BYTES + 4):
        _abort(sock, CloseReason.PROTOCOL,
               f"READY of {len(payload)} bytes (expected 4 or {PROOF_BYTES + 4})")
    proof, window = payload[:-4], int.from_bytes(payload[-4:], "big")
    if secret is not None and not check_server_proof(secret, mux_nonce, server_nonce, proof,
                                                     binding):
        _abort(sock, CloseReason.AUTH, "the server's proof is wrong: the shared secrets "
                                       "differ, or this is not our server (or a relay in "
                                       "between)")
    if window == 0:
        _abort(sock, CloseReason.PROTOCOL, "READY grants an initial window of 0")
    return window, secret is not None


# -- frames ----------------------------------------------------------------------------

def _send(sock: socket.socket, ftype: FrameType, payload: bytes = b"") -> None:
    sock.sendall(encode_frame(ftype, 0, payload))


def _expect(sock: socket.socket, ftype: FrameType) -> bytes:
    """The payload of the next frame, which must be `ftype` (LINKCLOSE: LinkError)."""
    got, flags, reserved, sid, length = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if length > MAX_PAYLOAD or flags or reserved or sid:
        _abort(sock, CloseReason.PROTOCOL, "malformed frame header during set-up")
    payload = _recv_exact(sock, length)
    if got == FrameType.LINKCLOSE and payload:
        text = payload[1:201].decode("utf-8", "replace")
        raise LinkError(f"the server refused the link ({reason_name(payload[0])})"
                        + (f": {text}" if text else ""))
    if got != ftype:
        _abort(sock, CloseReason.PROTOCOL, f"expected frame type 0x{ftype:02x}, got 0x{got:02x}")
    return payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise LinkError("the server closed the connection during set-up")
        data += chunk
    return bytes(data)


def _abort(sock: socket.socket, reason: CloseReason, text: str):
    """Close the link with LINKCLOSE `reason` and raise. As the sender of
    LINKCLOSE, read and discard until the server closes its end (briefly),
    so a TCP reset cannot destroy the LINKCLOSE before it is read."""
    try:
        _send(sock, FrameType.LINKCLOSE, bytes([reason]) + text.encode("utf-8")[:200])
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
