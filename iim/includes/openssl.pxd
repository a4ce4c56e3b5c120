# OpenSSL declarations used by the relay core, declared once (uvloop style).
# Only what iim calls is declared; every function is callable without the GIL.
# Several "functions" below are macros over SSL_CTX_ctrl in the headers
# (SSL_CTX_set_mode, SSL_CTX_add0_chain_cert, ...); they are declared as the
# functions they behave like.

from libc.stdint cimport uint8_t, uint16_t, uint64_t

cdef extern from "openssl/crypto.h" nogil:
    void OPENSSL_cleanse(void *ptr, size_t len)
    const char *OpenSSL_version(int t)
    unsigned long OpenSSL_version_num()
    int OPENSSL_VERSION

cdef extern from "openssl/err.h" nogil:
    unsigned long ERR_get_error()
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char *buf, size_t len)

cdef extern from "openssl/bio.h" nogil:
    ctypedef struct BIO
    ctypedef struct BIO_METHOD
    BIO *BIO_new_mem_buf(const void *buf, int len)
    BIO *BIO_new(const BIO_METHOD *method)
    const BIO_METHOD *BIO_s_mem()
    int BIO_free(BIO *bio)
    int BIO_read(BIO *bio, void *data, int dlen)
    int BIO_write(BIO *bio, const void *data, int dlen)
    size_t BIO_ctrl_pending(BIO *bio)
    long BIO_set_mem_eof_return(BIO *bio, int v)

cdef extern from "openssl/core.h" nogil:
    ctypedef struct OSSL_PARAM:
        const char *key
        unsigned int data_type
        void *data
        size_t data_size
        size_t return_size

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_PKEY
    void EVP_PKEY_free(EVP_PKEY *pkey)
    ctypedef struct EVP_MD
    ctypedef struct EVP_CIPHER
    ctypedef struct EVP_CIPHER_CTX
    const EVP_MD *EVP_sha256()
    const EVP_MD *EVP_sha384()
    EVP_CIPHER *EVP_CIPHER_fetch(void *libctx, const char *algorithm, const char *properties)
    void EVP_CIPHER_free(EVP_CIPHER *cipher)
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, void *impl,
                          const unsigned char *key, const unsigned char *iv, int enc)
    int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                         const unsigned char *inp, int inl)
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
    int EVP_CTRL_AEAD_SET_TAG
    int EVP_CTRL_AEAD_GET_TAG
    const EVP_CIPHER *EVP_aes_256_cbc()
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, void *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, void *impl,
                           const unsigned char *key, const unsigned char *iv)
    ctypedef struct EVP_MAC
    ctypedef struct EVP_MAC_CTX
    EVP_MAC *EVP_MAC_fetch(void *libctx, const char *algorithm, const char *properties)
    void EVP_MAC_free(EVP_MAC *mac)
    EVP_MAC_CTX *EVP_MAC_CTX_new(EVP_MAC *mac)
    void EVP_MAC_CTX_free(EVP_MAC_CTX *ctx)
    int EVP_MAC_CTX_set_params(EVP_MAC_CTX *ctx, const OSSL_PARAM *params)
    int EVP_MAC_init(EVP_MAC_CTX *ctx, const unsigned char *key, size_t keylen,
                     const OSSL_PARAM *params)
    int EVP_MAC_update(EVP_MAC_CTX *ctx, const unsigned char *data, size_t datalen)
    int EVP_MAC_final(EVP_MAC_CTX *ctx, unsigned char *out, size_t *outl, size_t outsize)

cdef extern from "openssl/params.h" nogil:
    OSSL_PARAM OSSL_PARAM_construct_octet_string(const char *key, void *buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char *key, char *buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_end()

cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(unsigned char *buf, int num)

cdef extern from "openssl/hmac.h" nogil:
    unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                        const unsigned char *d, size_t n, unsigned char *md,
                        unsigned int *md_len)

cdef extern from "openssl/x509.h" nogil:
    ctypedef struct X509
    ctypedef struct X509_STORE
    ctypedef struct X509_VERIFY_PARAM
    void X509_free(X509 *cert)
    int X509_STORE_add_cert(X509_STORE *store, X509 *cert)
    const char *X509_verify_cert_error_string(long n)
    int X509_V_OK

cdef extern from "openssl/x509_vfy.h" nogil:
    int X509_VERIFY_PARAM_set1_host(X509_VERIFY_PARAM *param, const char *name, size_t namelen)
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM *param, const char *ipasc)

cdef extern from "openssl/pem.h" nogil:
    ctypedef int pem_password_cb(char *buf, int size, int rwflag, void *userdata) noexcept
    EVP_PKEY *PEM_read_bio_PrivateKey(BIO *bio, EVP_PKEY **out, pem_password_cb *cb, void *u)
    X509 *PEM_read_bio_X509(BIO *bio, X509 **out, pem_password_cb *cb, void *u)

cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL_CTX
    ctypedef struct SSL_METHOD
    ctypedef struct SSL
    ctypedef struct SSL_CIPHER
    ctypedef struct SSL_SESSION

    const SSL_METHOD *TLS_server_method()
    const SSL_METHOD *TLS_client_method()
    SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
    int SSL_CTX_up_ref(SSL_CTX *ctx)
    void SSL_CTX_free(SSL_CTX *ctx)
    int SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version)
    uint64_t SSL_CTX_set_options(SSL_CTX *ctx, uint64_t options)
    long SSL_CTX_set_mode(SSL_CTX *ctx, long mode)
    void SSL_CTX_set_read_ahead(SSL_CTX *ctx, int yes)
    long SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode)
    int SSL_CTX_set_session_id_context(SSL_CTX *ctx, const unsigned char *sid_ctx,
                                       unsigned int sid_ctx_len)
    long SSL_CTX_set_tlsext_ticket_keys(SSL_CTX *ctx, void *keys, long keylen)
    int SSL_CTX_use_certificate(SSL_CTX *ctx, X509 *cert)
    int SSL_CTX_use_PrivateKey(SSL_CTX *ctx, EVP_PKEY *pkey)
    long SSL_CTX_add0_chain_cert(SSL_CTX *ctx, X509 *cert)
    int SSL_CTX_check_private_key(const SSL_CTX *ctx)
    int SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version)
    int SSL_CTX_set_num_tickets(SSL_CTX *ctx, size_t num_tickets)
    int SSL_CTX_set_default_verify_paths(SSL_CTX *ctx)
    X509_STORE *SSL_CTX_get_cert_store(const SSL_CTX *ctx)
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, void *callback)
    int SSL_CTX_set_alpn_protos(SSL_CTX *ctx, const unsigned char *protos, unsigned int len)

    ctypedef int (*SSL_CTX_alpn_select_cb_func)(
        SSL *ssl, const unsigned char **out, unsigned char *outlen,
        const unsigned char *inp, unsigned int inlen, void *arg) noexcept nogil
    void SSL_CTX_set_alpn_select_cb(SSL_CTX *ctx, SSL_CTX_alpn_select_cb_func cb, void *arg)

    ctypedef void (*SSL_CTX_keylog_cb_func)(const SSL *ssl, const char *line) noexcept nogil
    void SSL_CTX_set_keylog_callback(SSL_CTX *ctx, SSL_CTX_keylog_cb_func cb)
    ctypedef void (*SSL_msg_cb)(int write_p, int version, int content_type, const void *buf,
                                size_t len, SSL *ssl, void *arg) noexcept nogil
    void SSL_CTX_set_msg_callback(SSL_CTX *ctx, SSL_msg_cb cb)
    int SSL_get_ex_new_index(long argl, void *argp, void *new_func, void *dup_func,
                             void *free_func)
    int SSL_set_ex_data(SSL *ssl, int idx, void *data)
    void *SSL_get_ex_data(const SSL *ssl, int idx)
    int SSL_version(const SSL *ssl)
    int SSL_has_pending(const SSL *ssl)
    SSL_SESSION *SSL_get_session(const SSL *ssl)
    size_t SSL_SESSION_get_master_key(const SSL_SESSION *sess, unsigned char *out, size_t outlen)
    size_t SSL_get_client_random(const SSL *ssl, unsigned char *out, size_t outlen)
    size_t SSL_get_server_random(const SSL *ssl, unsigned char *out, size_t outlen)
    uint16_t SSL_CIPHER_get_protocol_id(const SSL_CIPHER *c)
    void SSL_set_shutdown(SSL *ssl, int mode)
    SSL_CTX *SSL_get_SSL_CTX(const SSL *ssl)
    int SSL_CTX_get_ex_new_index(long argl, void *argp, void *new_func, void *dup_func,
                                 void *free_func)
    int SSL_CTX_set_ex_data(SSL_CTX *ctx, int idx, void *data)
    void *SSL_CTX_get_ex_data(const SSL_CTX *ctx, int idx)
    ctypedef int (*SSL_ticket_key_evp_cb)(SSL *s, unsigned char *key_name, unsigned char *iv,
                                         EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx,
                                         int enc) noexcept nogil
    long SSL_CTX_set_tlsext_ticket_key_evp_cb(SSL_CTX *ctx, SSL_ticket_key_evp_cb cb)
    int SSL_SENT_SHUTDOWN
    int SSL_RECEIVED_SHUTDOWN
    uint8_t SSL_SESSION_get_max_fragment_length(const SSL_SESSION *sess)
    SSL *SSL_new(SSL_CTX *ctx)
    void SSL_free(SSL *ssl)
    int SSL_set_fd(SSL *ssl, int fd)
    void SSL_set_bio(SSL *ssl, BIO *rbio, BIO *wbio)
    void SSL_set_accept_state(SSL *ssl)
    void SSL_set_connect_state(SSL *ssl)
    long SSL_set_tlsext_host_name(SSL *ssl, const char *name)
    X509_VERIFY_PARAM *SSL_get0_param(SSL *ssl)
    long SSL_get_verify_result(const SSL *ssl)
    int SSL_is_init_finished(const SSL *ssl)
    int SSL_export_keying_material(SSL *ssl, unsigned char *out, size_t olen,
                                   const char *label, size_t llen,
                                   const unsigned char *context, size_t contextlen,
                                   int use_context)
    void SSL_get0_alpn_selected(const SSL *ssl, const unsigned char **data, unsigned int *len)
    int SSL_do_handshake(SSL *ssl)
    int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)
    int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)
    int SSL_shutdown(SSL *ssl)
    int SSL_get_error(const SSL *ssl, int ret)
    const char *SSL_get_version(const SSL *ssl)
    const SSL_CIPHER *SSL_get_current_cipher(const SSL *ssl)
    const char *SSL_CIPHER_get_name(const SSL_CIPHER *cipher)

    int TLS1_2_VERSION
    int TLS1_3_VERSION
    int SSL_VERIFY_PEER
    int SSL_VERIFY_NONE
    int SSL_ERROR_NONE
    int SSL_ERROR_SSL
    int SSL_ERROR_WANT_READ
    int SSL_ERROR_WANT_WRITE
    int SSL_ERROR_SYSCALL
    int SSL_ERROR_ZERO_RETURN
    long SSL_MODE_ENABLE_PARTIAL_WRITE
    long SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
    long SSL_MODE_RELEASE_BUFFERS
    uint64_t SSL_OP_NO_COMPRESSION
    uint64_t SSL_OP_NO_RENEGOTIATION
    uint64_t SSL_OP_CIPHER_SERVER_PREFERENCE
    uint64_t SSL_OP_PRIORITIZE_CHACHA
    int SSL_CTX_set_ciphersuites(SSL_CTX *ctx, const char *suites)
    long SSL_SESS_CACHE_SERVER
    int SSL_TLSEXT_ERR_OK
    int SSL_TLSEXT_ERR_NOACK
