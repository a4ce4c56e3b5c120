# OpenSSL declarations used by the relay core, declared once (uvloop style).
# Only what iim calls is declared; every function is callable without the GIL.

cdef extern from "openssl/crypto.h" nogil:
    const char *OpenSSL_version(int t)
    unsigned long OpenSSL_version_num()
    int OPENSSL_VERSION

cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL_CTX
    ctypedef struct SSL_METHOD
    const SSL_METHOD *TLS_server_method()
    SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
    void SSL_CTX_free(SSL_CTX *ctx)
    int SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version)
    int TLS1_2_VERSION
