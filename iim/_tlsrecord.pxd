# The TLS record layer the relay runs after OpenSSL's handshake
# (iim/_tlsrecord.pyx). It knows sockets and TLS records, nothing of the
# relay or of XMPP.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from iim.includes cimport openssl
from iim.includes.posix cimport ssize_t


cdef struct Direction:
    # one direction's keys: AEAD key and IV, the TLS 1.3 traffic secret (for
    # KeyUpdate), and the record sequence number
    uint8_t key[32]
    uint8_t iv[12]
    uint8_t secret[48]
    uint64_t seq


cdef struct Capture:
    # what OpenSSL's callbacks report during one handshake (per SSL object)
    uint8_t client_secret[48]   # TLS 1.3 application traffic secrets, from the key log
    uint8_t server_secret[48]
    uint8_t have                # 1: client secret seen, 2: server secret seen
    uint8_t secret_len          # their length (the suite's hash)
    uint32_t records_in         # record headers read and written so far ...
    uint32_t records_out
    uint32_t ccs_in             # ... at each direction's ChangeCipherSpec (TLS 1.2 keys)
    uint32_t ccs_out
    uint32_t fin_in             # ... at each direction's Finished (TLS 1.3 keys)
    uint32_t fin_out
    bint spoiled                # a handshake message after the handshake: never take over


cdef struct TlsRecord:
    uint16_t version            # 0x0303 or 0x0304
    uint8_t aead                # AEAD_*
    uint8_t keylen
    uint8_t hashlen             # TLS 1.3: the suite's hash (KeyUpdate)
    uint8_t flags               # RF_*
    uint8_t empty_run           # records in a row that carried no application data
    uint8_t hs_len              # bytes of a KeyUpdate split across records
    uint8_t hs[5]
    Direction rd                # client -> us
    Direction wr                # us -> client
    uint8_t *inp                # received ciphertext not yet opened (malloc, or NULL)
    uint32_t in_len
    uint8_t *plain              # opened plaintext the caller had no room for
    uint32_t plain_off
    uint32_t plain_len
    uint8_t *out                # sealed records the socket has not taken yet
    uint32_t out_off
    uint32_t out_len


cdef struct RecordCrypto:
    # one per thread: cipher contexts re-keyed for every record, HMAC contexts
    # (SHA-256, SHA-384) re-keyed for every key derivation, and a scratch buffer
    # (so an idle session holds no buffer at all)
    openssl.EVP_CIPHER_CTX *ctx[3]
    openssl.EVP_MAC_CTX *hmac[2]
    uint8_t *scratch


cdef int record_install(openssl.SSL_CTX *ctx) except -1
cdef int crypto_init(RecordCrypto *k) noexcept nogil
cdef void crypto_free(RecordCrypto *k) noexcept nogil
cdef int capture_attach(openssl.SSL *ssl, Capture *cap) noexcept nogil
cdef void capture_free(openssl.SSL *ssl, Capture *cap) noexcept nogil
cdef TlsRecord *record_take(RecordCrypto *k, openssl.SSL *ssl, Capture *cap) noexcept nogil
cdef ssize_t record_read(RecordCrypto *k, TlsRecord *r, int fd, uint8_t *p,
                         size_t n) noexcept nogil
cdef ssize_t record_write(RecordCrypto *k, TlsRecord *r, int fd, const uint8_t *p,
                          size_t n) noexcept nogil
cdef int record_flush(RecordCrypto *k, TlsRecord *r, int fd) noexcept nogil
cdef bint record_out_pending(TlsRecord *r) noexcept nogil
cdef bint record_drained(TlsRecord *r) noexcept nogil
cdef bint record_at_fin(TlsRecord *r) noexcept nogil
cdef void record_free(RecordCrypto *k, TlsRecord *r, int fd, bint notify) noexcept nogil
