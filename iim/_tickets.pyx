# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Session tickets of the legacy-SSL contexts: keys from a ratchet, rotated hourly.

iim/mux/ticketkeys.py explains the scheme (periods, the seed ratchet, the ring
of three keys, who steps it); this is the part OpenSSL calls, in C because it
runs inside handshakes on the relay threads. A context's TicketRing holds the
current period's seed and the derived keys of the current and two previous
periods; OpenSSL's ticket callback seals with keys[0] (AES-256-CBC and
HMAC-SHA256, a fresh IV each) and opens a ticket whose key name is in the ring,
always asking OpenSSL for a fresh ticket (under keys[0]) for the resumed client. An unknown name means a
full handshake, as for a client with no ticket.

Derivation, per period: name = HMAC-SHA256(seed, "name")[:16],
hmac_key = HMAC-SHA256(seed, "hmac"), aes_key = HMAC-SHA256(seed, "aes"); the
next seed is HMAC-SHA256(seed, "iim-mux ticket ratchet").
"""

from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memmove, strlen

from iim.includes cimport openssl, posix

cdef int RING_INDEX = -1          # SSL_CTX ex_data slot: the context owns its ring
# AES-256-CBC fetched once: the legacy EVP_aes_256_cbc() pointer is fetched again
# inside EVP_EncryptInit_ex at every ticket (a lookup by name under a lock)
cdef openssl.EVP_CIPHER *TICKET_CIPHER = NULL


cdef void free_ring(void *parent, void *ptr, void *ad, int idx, long argl,
                    void *argp) noexcept nogil:
    ring_free(<TicketRing *>ptr)


cdef int mac(const uint8_t *seed, const char *label, uint8_t *out) noexcept nogil:
    cdef unsigned int n = 0
    if openssl.HMAC(openssl.EVP_sha256(), seed, TICKET_SEED, <const unsigned char *>label,
                    strlen(label), out, &n) == NULL or n != 32:
        return -1
    return 0


cdef int derive(const uint8_t *seed, TicketKey *key) noexcept nogil:
    cdef uint8_t name[32]
    if (mac(seed, b"name", name) < 0 or mac(seed, b"hmac", key.hmac_key) < 0 or
            mac(seed, b"aes", key.aes_key) < 0):
        return -1
    memcpy(key.name, name, 16)
    return 0


cdef TicketRing *ring_new(const uint8_t *serialized, size_t n) noexcept nogil:
    """A ring from ticketkeys.TicketKeys.serialize()'s bytes, or NULL (bad size, no memory)."""
    cdef TicketRing *ring
    cdef int i
    cdef int64_t period = 0
    if n != TICKET_SERIALIZED:
        return NULL
    ring = <TicketRing *>calloc(1, sizeof(TicketRing))
    if ring == NULL:
        return NULL
    for i in range(8):
        period = (period << 8) | serialized[i]
    ring.period = period          # -1: not yet set; the first ring_rotate sets it
    for i in range(TICKET_RING):        # serialized oldest first; keys[0] is the newest
        if derive(serialized + 8 + TICKET_SEED * i, &ring.keys[TICKET_RING - 1 - i]) < 0:
            free(ring)
            return NULL
    memcpy(ring.seed, serialized + 8 + TICKET_SEED * (TICKET_RING - 1), TICKET_SEED)
    posix.pthread_mutex_init(&ring.lock, NULL)
    return ring


cdef void ring_free(TicketRing *ring) noexcept nogil:
    if ring == NULL:
        return
    posix.pthread_mutex_destroy(&ring.lock)
    openssl.OPENSSL_cleanse(ring, sizeof(TicketRing))
    free(ring)


cdef int64_t ring_rotate(TicketRing *ring, int64_t period) noexcept nogil:
    """Step the ratchet up to `period` (never back): the ring's period, or -1."""
    cdef uint8_t seed[TICKET_SEED]
    cdef int64_t result
    posix.pthread_mutex_lock(&ring.lock)
    if ring.period < 0:
        ring.period = period
    while ring.period < period:
        if mac(ring.seed, b"iim-mux ticket ratchet", seed) < 0:
            break
        memcpy(ring.seed, seed, TICKET_SEED)
        memmove(&ring.keys[1], &ring.keys[0], sizeof(TicketKey) * (TICKET_RING - 1))
        if derive(ring.seed, &ring.keys[0]) < 0:
            break
        ring.period += 1
    result = ring.period if ring.period >= period else -1
    posix.pthread_mutex_unlock(&ring.lock)
    openssl.OPENSSL_cleanse(seed, TICKET_SEED)
    return result


cdef int set_hmac_key(openssl.EVP_MAC_CTX *hctx, uint8_t *key) noexcept nogil:
    cdef openssl.OSSL_PARAM params[3]
    params[0] = openssl.OSSL_PARAM_construct_octet_string(b"key", key, 32)
    params[1] = openssl.OSSL_PARAM_construct_utf8_string(b"digest", b"SHA256", 0)
    params[2] = openssl.OSSL_PARAM_construct_end()
    return 0 if openssl.EVP_MAC_CTX_set_params(hctx, params) == 1 else -1


cdef int on_ticket(openssl.SSL *ssl, unsigned char *name, unsigned char *iv,
                   openssl.EVP_CIPHER_CTX *cctx, openssl.EVP_MAC_CTX *hctx,
                   int enc) noexcept nogil:
    """OpenSSL's ticket key callback (SSL_CTX_set_tlsext_ticket_key_evp_cb)."""
    cdef TicketRing *ring = <TicketRing *>openssl.SSL_CTX_get_ex_data(
        openssl.SSL_get_SSL_CTX(ssl), RING_INDEX)
    cdef TicketKey key
    cdef int i, found = -1
    if ring == NULL:
        return -1
    posix.pthread_mutex_lock(&ring.lock)
    if enc:
        found = 0
    else:
        for i in range(TICKET_RING):
            if memcmp(name, ring.keys[i].name, 16) == 0:
                found = i
                break
    if found >= 0:
        key = ring.keys[found]
    posix.pthread_mutex_unlock(&ring.lock)
    if found < 0:
        return 0                                  # unknown or expired: full handshake
    if enc:
        memcpy(name, key.name, 16)
        if (openssl.RAND_bytes(iv, 16) != 1 or openssl.EVP_EncryptInit_ex(
                cctx, TICKET_CIPHER, NULL, key.aes_key, iv) != 1):
            found = -2
    elif openssl.EVP_DecryptInit_ex(cctx, TICKET_CIPHER, NULL, key.aes_key,
                                    iv) != 1:
        found = -2
    if found != -2 and set_hmac_key(hctx, key.hmac_key) < 0:
        found = -2
    openssl.OPENSSL_cleanse(&key, sizeof(key))
    if found == -2:
        return -1
    # 2: valid, and issue a fresh ticket. Always: OpenSSL sends a resumed client a
    # new ticket only then, and a client uses each ticket once (RFC 8446 C.4).
    return 1 if enc else 2


cdef int ring_install(openssl.SSL_CTX *ctx, TicketRing *ring) except -1:
    """Tickets of `ctx` from `ring`, which `ctx` owns from here on: it is freed with
    the context, after the last relay that held the context let it go."""
    global RING_INDEX, TICKET_CIPHER
    if TICKET_CIPHER == NULL:
        TICKET_CIPHER = openssl.EVP_CIPHER_fetch(NULL, b"AES-256-CBC", NULL)
        if TICKET_CIPHER == NULL:
            ring_free(ring)
            raise RuntimeError("OpenSSL has no AES-256-CBC for session tickets")
    if RING_INDEX < 0:
        RING_INDEX = openssl.SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, <void *>free_ring)
        if RING_INDEX < 0:
            ring_free(ring)
            raise MemoryError("no SSL_CTX ex_data index")
    if openssl.SSL_CTX_set_ex_data(ctx, RING_INDEX, ring) != 1:
        ring_free(ring)
        raise MemoryError("cannot attach the ticket keys")
    if openssl.SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket) != 1:
        raise RuntimeError("cannot set the session ticket callback")
    return 0
