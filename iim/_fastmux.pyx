# cython: language_level=3
"""The multiplexor relay core.

This module knows nothing of XMPP: it moves bytes between client sockets and
server links, and terminates TLS with OpenSSL when told to. The relay loop
arrives with the multiplexor issue; today the module proves that the
extension builds against the system OpenSSL and that a TLS 1.2-minimum
server context can be made from C-level code.
"""

from iim.includes cimport openssl


def openssl_version():
    """The version string of the OpenSSL this extension is linked with."""
    return openssl.OpenSSL_version(openssl.OPENSSL_VERSION).decode("ascii")


def openssl_version_number():
    """OPENSSL_VERSION_NUMBER of the linked library (comparable with ssl.OPENSSL_VERSION_NUMBER)."""
    return openssl.OpenSSL_version_num()


def tls12_server_context_ok():
    """Create and free a server SSL_CTX restricted to TLS 1.2+; True on success."""
    cdef openssl.SSL_CTX *ctx
    with nogil:
        ctx = openssl.SSL_CTX_new(openssl.TLS_server_method())
    if ctx == NULL:
        return False
    try:
        return openssl.SSL_CTX_set_min_proto_version(ctx, openssl.TLS1_2_VERSION) == 1
    finally:
        openssl.SSL_CTX_free(ctx)
