"""Ask a TLS client for its certificate without letting OpenSSL judge it.

Theory of operation
-------------------
In s2s the connecting server is the TLS *client*, and XEP-0178 authenticates
it by the certificate it presents. For OpenSSL to ask for that certificate
(a CertificateRequest), the server context needs ``SSL_VERIFY_PEER``. Python
offers that only as ``CERT_OPTIONAL``/``CERT_REQUIRED``, where OpenSSL's
default verification runs inside the handshake and *aborts* it on any
failure, with OpenSSL's own rules: a certificate whose EKU says serverAuth
only fails the "SSL client" purpose (docs/architecture.md wants it accepted: peers are
servers acting as clients), ``trust_all_cert = true`` could not accept an
unknown CA, and the reason would come back as an OpenSSL code rather than
iim's ``TrustFailure``.

So the server context gets a verify callback that accepts every certificate
at the TLS level; after the handshake the session hands the chain the peer
sent to ``iim.keys.trust.verify_peer`` and decides (refuse with a reason, or
offer SASL EXTERNAL, or fall back to dialback). Nothing is trusted by this
module: it only makes the certificate available.

Python does not expose ``SSL_CTX_set_verify``'s callback, so this calls
libssl through ctypes with the context's ``SSL_CTX *``. CPython keeps that
pointer as the first field after the object header of ``ssl.SSLContext``
(``PySSLContext`` in Modules/_ssl.c); ``_ssl_ctx_pointer`` checks the
pointer against two things Python reports itself (verify mode and options)
and refuses rather than guess when they disagree (another Python build).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ssl

__all__ = ["PeerCertError", "request_any_client_certificate"]

SSL_VERIFY_PEER = 0x01
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


class PeerCertError(RuntimeError):
    """This Python's ssl module cannot be taught to request client certificates."""


@_VERIFY_CALLBACK
def _accept_any(preverify_ok: int, store_ctx: int) -> int:   # noqa: ARG001 - OpenSSL's signature
    return 1


def _libssl():
    """The libssl Python's own ``_ssl`` module is linked against."""
    name = f"libssl.so.{ssl.OPENSSL_VERSION_INFO[0]}"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        found = ctypes.util.find_library("ssl")
        if found is None:
            raise PeerCertError("libssl not found") from None
        lib = ctypes.CDLL(found)
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    return lib


def _ssl_ctx_pointer(lib, context: ssl.SSLContext) -> int:
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        raise PeerCertError("no SSL_CTX in this SSLContext")
    if lib.SSL_CTX_get_options(pointer) != int(context.options) or \
            lib.SSL_CTX_get_verify_mode(pointer) != SSL_VERIFY_PEER:
        raise PeerCertError("this Python's SSLContext layout is not the expected one")
    return pointer


def request_any_client_certificate(context: ssl.SSLContext) -> None:
    """Make the server ``context`` request a client certificate and accept any
    one (or none) at the TLS level; the caller verifies it after the handshake."""
    context.verify_mode = ssl.CERT_OPTIONAL
    lib = _libssl()
    lib.SSL_CTX_set_verify(_ssl_ctx_pointer(lib, context), SSL_VERIFY_PEER, _accept_any)
