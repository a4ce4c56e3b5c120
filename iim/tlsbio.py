"""TLS over memory BIOs: one TLS connection whatever carries its bytes.

Theory of operation
-------------------
A stream's bytes may come from a TCP socket, from a multiplexor link (where one
TCP connection carries many sessions), or from another TLS layer (STARTTLS
inside legacy SSL). ``loop.start_tls`` and ``SSLSocket`` only work on a socket,
so iim runs TLS itself, the way trio's ``_ssl.py`` does: an ``ssl.SSLObject``
wired to two ``ssl.MemoryBIO`` objects::

    ciphertext in  ->  incoming BIO  ->  SSLObject  ->  plaintext out
    plaintext in   ->  SSLObject     ->  outgoing BIO ->  ciphertext out

OpenSSL never touches a file descriptor: ciphertext the carrier received is
written into ``incoming``; whatever OpenSSL wants to send (handshake records,
alerts, encrypted application data, close_notify) collects in ``outgoing`` and
is handed back to the caller, who writes it. Nothing here blocks, sleeps or
does I/O, so the same object serves the asyncio sessions of ``iim.server`` and
the blocking ``iim.admin verify`` (RFC 6120 §5 STARTTLS either way).

``SSLWantReadError`` is not a failure here: it means "OpenSSL needs more
ciphertext", and the call returns what it has. A TLS record may complete
several XMPP writes at once, or a read may end in the middle of a record:
``receive`` returns only the plaintext OpenSSL could decrypt so far; the rest
waits in ``incoming`` for the next call. A read can also complete the
handshake and carry application data behind it; both come back from the same
call.

Every other ``ssl.SSLError`` becomes one ``TLSFailed`` whose message is
OpenSSL's reason code (``WRONG_VERSION_NUMBER``, ``CERTIFICATE_VERIFY_FAILED``,
``UNSUPPORTED_PROTOCOL``, ...): short, secret-free, and what an operator
searches for. When the handshake fails OpenSSL usually prepares an alert for
the peer (RFC 8446 §6); it rides on the exception (``alert``) so the caller
can write it before closing and the peer learns why.

Bursts. OpenSSL's memory BIO never shrinks its buffer: once a burst of
ciphertext was written into ``incoming`` at once (a client catching up after
the server fell behind, a mux link delivering a window's worth), or a burst of
plaintext was encrypted into ``outgoing`` at once, the BIO keeps that size for
the rest of the connection (measured: 26 KB per BIO after one 20 KB burst, on
every session a stall touched; bench/README.md, soak). So ``TLSLayer`` passes
bytes through its BIOs ``BIO_CHUNK`` at a time, draining between chunks: a BIO
then holds at most a chunk plus the unfinished record, whatever the burst.

``TLSPump`` is what a session holds: nothing until STARTTLS, then one
``TLSLayer``; bytes pass through unchanged before, and through TLS once the
handshake is done. It reports the moment the handshake finishes, which is
when the stream must restart (RFC 6120 §5.4.3.3).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

__all__ = ["TLSFailed", "TLSInfo", "TLSLayer", "TLSPump", "UNEXPECTED_EOF", "peer_chain"]

#: The reason of the TLSFailed when the carrier ends during the handshake
#: (OpenSSL 3's own name for it).
UNEXPECTED_EOF = "UNEXPECTED_EOF_WHILE_READING"


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
    bits: int = 0                           # the cipher's secret bits


class TLSLayer:
    """One TLS connection over memory BIOs (server or client side)."""

    __slots__ = ("_in", "_out", "_tls", "handshake_done", "peer_closed")    # one per user
    READ_CHUNK = 65536
    BIO_CHUNK = 4096        # bytes written into a BIO at a time (see "Bursts")

    def __init__(self, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None):
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=server_hostname)
        self.handshake_done = False
        self.peer_closed = False            # the peer's close_notify arrived

    def start(self) -> bytes:
        """Begin the handshake; return what to send (a ClientHello, for a client)."""
        self._step_handshake()
        return self._out.read()

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed ciphertext; return (plaintext received, ciphertext to send)."""
        if len(data) <= self.BIO_CHUNK:
            return self._receive(data)
        plain, out = [], []
        view = memoryview(data)
        for at in range(0, len(data), self.BIO_CHUNK):
            got, sent = self._receive(view[at:at + self.BIO_CHUNK])
            plain.append(got)
            out.append(sent)
            if self.peer_closed:
                break
        return b"".join(plain), b"".join(out)

    def _receive(self, data) -> tuple[bytes, bytes]:
        self._in.write(data)
        if not self.handshake_done:
            self._step_handshake()
        plain = self._drain_plaintext() if self.handshake_done else b""
        return plain, self._out.read()

    def receive_eof(self) -> None:
        """The carrier ended. During the handshake that is a failure
        (``UNEXPECTED_EOF``); after it, what was decrypted stands."""
        self._in.write_eof()
        if not self.handshake_done:
            raise TLSFailed(UNEXPECTED_EOF)

    def send(self, plaintext: bytes) -> bytes:
        """Encrypt application data; return the ciphertext to send."""
        if len(plaintext) <= self.BIO_CHUNK:
            self._encrypt(plaintext)
            return self._out.read()
        out = []
        view = memoryview(plaintext)
        for at in range(0, len(plaintext), self.BIO_CHUNK):
            self._encrypt(view[at:at + self.BIO_CHUNK])
            out.append(self._out.read())
        return b"".join(out)

    def _encrypt(self, plaintext) -> None:
        if plaintext:
            try:
                self._tls.write(plaintext)
            except ssl.SSLError as exc:
                raise TLSFailed(_reason(exc)) from None

    def close(self) -> bytes:
        """Send close_notify; return its record."""
        try:
            self._tls.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        return self._out.read()

    def info(self) -> TLSInfo:
        name, _, bits = self._tls.cipher() or ("", "", 0)
        return TLSInfo(self._tls.version() or "", name, peer_chain(self._tls), bits or 0)

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
                self.peer_closed = True
                break
            except ssl.SSLError as exc:
                raise TLSFailed(_reason(exc)) from None
            if not chunk:                   # close_notify (the ssl module's way to say it)
                self.peer_closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)


class TLSPump:
    """A stream's bytes, through TLS once STARTTLS started (held by the c2s and
    s2s sessions). No carrier here: every call returns the bytes to write."""

    __slots__ = ("layer",)

    def __init__(self) -> None:
        self.layer: TLSLayer | None = None

    @property
    def handshake_done(self) -> bool:
        return self.layer is not None and self.layer.handshake_done

    @property
    def handshaking(self) -> bool:
        """STARTTLS began and the handshake is not done: no plaintext now."""
        return self.layer is not None and not self.layer.handshake_done

    def start(self, context: ssl.SSLContext, *, server_side: bool,
              server_hostname: str | None = None) -> bytes:
        """Begin TLS; return what to send first (a ClientHello, for a client)."""
        self.layer = TLSLayer(context, server_side=server_side, server_hostname=server_hostname)
        return self.layer.start()

    def receive(self, data: bytes) -> tuple[bytes, bytes, bool]:
        """(plaintext, ciphertext to send, True when this call finished the
        handshake); TLSFailed, with the alert to send, when TLS failed."""
        layer = self.layer
        if layer is None:
            return data, b"", False
        was_done = layer.handshake_done
        plain, out = layer.receive(data)
        return plain, out, layer.handshake_done and not was_done

    def pass_in(self, data: bytes, write, tls_up, tls_failed) -> bytes:
        """``receive`` for a session: what TLS has to send goes to ``write``,
        ``tls_up()`` is called when the handshake has just finished and
        ``tls_failed(exc)`` on a ``TLSFailed`` (then nothing is returned);
        returns the plaintext for the session's stream."""
        try:
            plain, out, up = self.receive(data)
        except TLSFailed as exc:
            tls_failed(exc)
            return b""
        if out:
            write(out)
        if up:
            tls_up()
        return plain

    def send(self, plaintext: bytes) -> bytes:
        """What to write for ``plaintext``: encrypted once the handshake is done."""
        return self.layer.send(plaintext) if self.handshake_done else plaintext

    def close(self) -> bytes:
        """close_notify, when TLS is up; else nothing."""
        return self.layer.close() if self.handshake_done else b""

    def info(self) -> TLSInfo | None:
        """Version, cipher and the peer's chain once the handshake is done."""
        return self.layer.info() if self.handshake_done else None


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
