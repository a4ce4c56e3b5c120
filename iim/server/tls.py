"""TLS over memory BIOs: the session's own TLS, whatever carries its bytes.

Theory of operation
-------------------
A session's bytes may come from a TCP socket or from a multiplexor link
(where one TCP connection carries many sessions). ``loop.start_tls`` only
works on a socket, so the session runs TLS itself: an ``ssl.SSLObject`` wired
to two ``ssl.MemoryBIO`` objects. Ciphertext from the transport goes into
``incoming``; whatever OpenSSL wants to send (handshake records, encrypted
application data) is drained from ``outgoing`` and handed back to the
transport. Nothing here blocks and nothing here does I/O: ``receive`` and
``send`` return the bytes to write, and the caller writes them.

A TLS record may complete several XMPP writes at once, or a read may end in
the middle of a record: ``receive`` returns only the plaintext OpenSSL could
decrypt so far; the rest waits in ``incoming`` for the next call.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass


class TLSFailed(Exception):
    """The handshake or a record failed; the message is safe to log.

    ``alert`` holds the records OpenSSL prepared for the peer (the TLS alert
    that says why): write them before closing, so the peer learns the reason.
    """

    def __init__(self, reason: str, alert: bytes = b"") -> None:
        super().__init__(reason)
        self.alert = alert


@dataclass(frozen=True)
class TLSInfo:
    version: str
    cipher: str
    peer_chain: tuple[bytes, ...] = ()      # DER, leaf first (when the peer sent one)


class TLSLayer:
    """One TLS connection over memory BIOs (server or client side)."""

    READ_CHUNK = 65536

    def __init__(self, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None):
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=server_hostname)
        self.handshake_done = False

    def start(self) -> bytes:
        """Begin the handshake; return what to send (a ClientHello, for a client)."""
        self._step_handshake()
        return self._out.read()

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed ciphertext; return (plaintext received, ciphertext to send)."""
        self._in.write(data)
        if not self.handshake_done:
            self._step_handshake()
        plain = self._drain_plaintext() if self.handshake_done else b""
        return plain, self._out.read()

    def send(self, plaintext: bytes) -> bytes:
        """Encrypt application data; return the ciphertext to send."""
        if plaintext:
            try:
                self._tls.write(plaintext)
            except ssl.SSLError as exc:
                raise TLSFailed(_reason(exc)) from None
        return self._out.read()

    def close(self) -> bytes:
        """Send close_notify; return its record."""
        try:
            self._tls.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        return self._out.read()

    def info(self) -> TLSInfo:
        cipher = self._tls.cipher()
        return TLSInfo(self._tls.version() or "", cipher[0] if cipher else "",
                       self._peer_chain())

    def _peer_chain(self) -> tuple[bytes, ...]:
        return peer_chain(self._tls)

    def _step_handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError as exc:
            raise TLSFailed(_reason(exc), self._out.read()) from None
        self.handshake_done = True

    def _drain_plaintext(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self._tls.read(self.READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                break
            except ssl.SSLError as exc:
                raise TLSFailed(_reason(exc)) from None
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def peer_chain(tls: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """The chain the peer sent (DER, leaf first). Python 3.13 has
    ``get_unverified_chain`` on SSLObject; 3.11 has it on the private
    ``_sslobj`` only, so fall back to the leaf when neither exists."""
    leaf = tls.getpeercert(binary_form=True)
    if not leaf:
        return ()
    owner = tls if hasattr(tls, "get_unverified_chain") else getattr(tls, "_sslobj", None)
    getter = getattr(owner, "get_unverified_chain", None)
    chain = getter() if getter else None
    if not chain:
        return (leaf,)
    return tuple(c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)
                 for c in chain)


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason code, e.g. ``WRONG_VERSION_NUMBER``: short and secret-free."""
    return getattr(exc, "reason", None) or type(exc).__name__


class TLSPump:
    """Bytes from a carrier into a session's stream, through its TLSLayer once
    STARTTLS started (mixed into the c2s and s2s sessions).

    The session provides ``carrier``, ``tls`` (None before STARTTLS),
    ``closed``, ``_feed(plaintext)``, ``_tls_up()`` (the handshake just
    finished) and ``_tls_failed(exc)`` (end the session; the alert, when
    OpenSSL made one, has been written already).
    """

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            plain = self._decrypt(data) if self.tls is not None else data
        except TLSFailed as exc:
            if exc.alert:
                self.carrier.write(exc.alert)
            self._tls_failed(exc)
            return
        if plain and not self.closed:
            self._feed(plain)

    def _decrypt(self, data: bytes) -> bytes:
        was_done = self.tls.handshake_done
        plain, out = self.tls.receive(data)
        if out:
            self.carrier.write(out)
        if self.tls.handshake_done and not was_done:
            self._tls_up()
        return plain
