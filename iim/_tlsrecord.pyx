# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The TLS record layer of legacy-SSL sessions once OpenSSL's handshake is done.

This module knows sockets and TLS records, nothing of the relay or of XMPP.

Theory of operation
===================

Why. An OpenSSL 3.0 server ``SSL`` object holds ~14 KB after a TLS 1.3
handshake even with SSL_MODE_RELEASE_BUFFERS (its record layer keeps arrays
sized for 32 pipelined records, two cipher contexts, the session). A
multiplexor holds tens of thousands of mostly idle sessions; so after the
handshake the relay keeps only what the record protocol needs - per
direction an AEAD key, an IV, a sequence number and (TLS 1.3) the traffic
secret for KeyUpdate: a ``TlsRecord`` of ~300 bytes - and frees the ``SSL``.
Buffers exist only while bytes are in flight; the cipher contexts and a
scratch buffer are one per thread (``RecordCrypto``) and re-keyed for each
record. OpenSSL still does everything that needs judgement: the handshake,
certificates, tickets, ALPN, version and suite choice. This file does the
part RFC 8446 section 5 and RFC 5246 section 6.2.3.3 fix byte for byte.

Taking over (record_take). Keys come from OpenSSL's public API: for TLS 1.3
the key log callback's CLIENT/SERVER_TRAFFIC_SECRET_0 (the mechanism
SSLKEYLOGFILE uses; here the secrets go into the Capture in memory, never to
a file or a log), for TLS 1.2 the session's master secret and the two
randoms through the RFC 5246 PRF. Sequence numbers come from the message
callback: it sees every record header OpenSSL reads or writes and the
message after which each direction changes keys (TLS 1.3: Finished; TLS 1.2:
ChangeCipherSpec), so records since that mark are the sequence number (TLS
1.3: the server's NewSessionTicket records; TLS 1.2: one, the Finished).
Anything else - another suite (CBC), bytes OpenSSL holds unread, a secret
not seen - returns NULL and the relay keeps the SSL object for that session:
slower and larger, never wrong.

Suites: TLS 1.3 AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; TLS 1.2 their
ECDHE/DHE AEAD counterparts (GCM with the 8-byte explicit nonce, which we
set to the sequence number; ChaCha20-Poly1305 per RFC 7905).

Reading (record_read). Bytes stashed from the last call are copied to the
front of the thread's scratch buffer; recv() adds what the caller has room
for and one record more, and only when no complete record is there. Records
open straight into the caller's buffer when their plaintext fits, else in
place, and what the caller had no room for is kept (``plain``); a partial
record is kept (``inp``). An idle session therefore holds nothing. Post-
handshake messages: TLS 1.3 KeyUpdate (the read key moves on;
update_requested owes one KeyUpdate of ours, sent before our next record,
several requests answered by one, RFC 8446 4.6.3), alerts (close_notify ends
the stream). Everything else - a record too long, a tag that does not
verify, ChangeCipherSpec, a TLS 1.2 renegotiation, a handshake message other
than KeyUpdate, more than 32 records in a row without application data
(OpenSSL's bound on empty records and KeyUpdates) - gets a fatal alert (best
effort) and ends the session.

Writing (record_write). Up to 64 KiB of plaintext is sealed, one 16 KiB
record at a time in the scratch buffer, each sent before the next is sealed;
the part of a record the socket refuses (EAGAIN) is kept (``out``) and sent
first next time, and sealing stops. So callers may count every byte they
passed as written, and a client that never reads makes us hold its window
plus at most one record, as OpenSSL's pending record did. After 2^23 records
under one key (RFC 8446 5.5 allows AES-GCM 2^24.5) a TLS 1.3 session sends a
KeyUpdate of its own.

Return values mirror the relay's client I/O: bytes (> 0), 0 at the end of
the stream, -1 when the socket must become ready (EAGAIN), -2 on error.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, strlen

from iim.includes cimport openssl, posix
from iim.includes.posix cimport ssize_t


cdef enum:
    AEAD_AES128GCM = 0
    AEAD_AES256GCM = 1
    AEAD_CHACHA = 2
    RF_EOF = 1                  # close_notify, a fatal alert or the end of the stream seen
    RF_FAILED = 2               # we ended it (bad record): only errors from here on
    RF_KEYUPDATE_DUE = 4        # the peer asked for our KeyUpdate
    RF_DRAINED = 8              # this call's recv() was short: the kernel had no more
    RF_FIN = 16                 # recv() saw the end of the TCP stream
    HDR = 5
    TAG = 16
    MAX_PLAIN = 16384
    MAX_BODY = 16384 + 256      # RFC 8446 5.2 (TLS 1.2 allows 2048 more; AEAD never needs them)
    MAX_RECORD = HDR + MAX_BODY
    WRITE_RECORDS = 4           # records sealed per write call
    SCRATCH = WRITE_RECORDS * MAX_RECORD + 64
    MAX_EMPTY_RUN = 32
    CT_CCS = 20
    CT_ALERT = 21
    CT_HANDSHAKE = 22
    CT_DATA = 23
    HS_TICKET = 4
    HS_KEY_UPDATE = 24
    A_CLOSE_NOTIFY = 0
    A_UNEXPECTED = 10
    A_BAD_MAC = 20
    A_OVERFLOW = 22
    A_DECODE = 50
    A_ILLEGAL = 47
    A_PROTOCOL_VERSION = 70
    A_INTERNAL = 80
    A_USER_CANCELED = 90
    ALERT_RECEIVED = 256        # one_record: the peer ended the session with an error alert
    TLS12 = 0x0303
    TLS13 = 0x0304
    SSL3_RT_HEADER = 0x100
    SSL3_RT_INNER_CONTENT_TYPE = 0x101

cdef uint64_t KEY_LIMIT = 1 << 23   # records under one TLS 1.3 write key

cdef int EX_INDEX = -1


def key_limit(limit):
    """Set the records sealed under one TLS 1.3 key before our KeyUpdate (tests lower
    it to see several); returns the previous value."""
    global KEY_LIMIT
    old = KEY_LIMIT
    if not 1 <= limit <= (1 << 23):
        raise ValueError("the key limit is 1 to 2^23 records")
    KEY_LIMIT = limit
    return old
cdef const char *CIPHER_NAMES[3]
CIPHER_NAMES[0] = b"AES-128-GCM"
CIPHER_NAMES[1] = b"AES-256-GCM"
CIPHER_NAMES[2] = b"ChaCha20-Poly1305"


# --- callbacks during the handshake ---------------------------------------------------

cdef inline int hexval(char ch) noexcept nogil:
    if c'0' <= ch <= c'9':
        return ch - c'0'
    if c'a' <= ch <= c'f':
        return ch - c'a' + 10
    if c'A' <= ch <= c'F':
        return ch - c'A' + 10
    return -1


cdef int unhex(const char *text, uint8_t *out, int cap) noexcept nogil:
    """Hex to bytes; the byte count, or -1 (odd length, bad digit, over `cap`)."""
    cdef int n = 0
    cdef int hi, lo
    while text[0] != 0 and text[0] != c'\n':
        hi = hexval(text[0])
        lo = hexval(text[1]) if text[1] != 0 else -1
        if hi < 0 or lo < 0 or n >= cap:
            return -1
        out[n] = <uint8_t>(hi * 16 + lo)
        n += 1
        text += 2
    return n


cdef void on_keylog(const openssl.SSL *ssl, const char *line) noexcept nogil:
    """The TLS 1.3 application traffic secrets, into the session's Capture only."""
    cdef Capture *cap = <Capture *>openssl.SSL_get_ex_data(ssl, EX_INDEX)
    cdef uint8_t *dest
    cdef uint8_t bit
    cdef const char *p
    cdef int spaces = 0
    cdef int n
    if cap == NULL:
        return
    if strlen(line) > 24 and memcmp(line, b"CLIENT_TRAFFIC_SECRET_0 ", 24) == 0:
        dest, bit = cap.client_secret, 1
    elif strlen(line) > 24 and memcmp(line, b"SERVER_TRAFFIC_SECRET_0 ", 24) == 0:
        dest, bit = cap.server_secret, 2
    else:
        return
    p = line
    while p[0] != 0 and spaces < 2:       # label, client random, then the secret
        if p[0] == c' ':
            spaces += 1
        p += 1
    n = unhex(p, dest, 48) if spaces == 2 else -1
    if n == 32 or n == 48:
        cap.have |= bit
        cap.secret_len = <uint8_t>n


cdef void on_message(int write_p, int version, int content_type, const void *buf,
                     size_t length, openssl.SSL *ssl, void *arg) noexcept nogil:
    """Count records, and mark where each direction's keys changed: TLS 1.2 after the
    ChangeCipherSpec record (seen in its header: OpenSSL reports no message for a
    CCS it reads), TLS 1.3 after the Finished message."""
    cdef Capture *cap = <Capture *>openssl.SSL_get_ex_data(ssl, EX_INDEX)
    cdef const uint8_t *b = <const uint8_t *>buf
    if cap == NULL or length < 1:
        return
    if content_type == SSL3_RT_HEADER:
        if write_p:
            cap.records_out += 1
            if b[0] == CT_CCS:
                cap.ccs_out = cap.records_out
        else:
            cap.records_in += 1
            if b[0] == CT_CCS:
                cap.ccs_in = cap.records_in
            elif b[0] == CT_HANDSHAKE and cap.fin_in:
                cap.spoiled = True       # TLS 1.2: handshake records after the Finished
    elif content_type == SSL3_RT_INNER_CONTENT_TYPE:
        # TLS 1.3: a record of handshake type after the client's Finished, even
        # one holding only the first bytes of a message (OpenSSL reports the
        # message once it is whole, and keeps the fragment where SSL_has_pending
        # does not look)
        if not write_p and b[0] == CT_HANDSHAKE and cap.fin_in:
            cap.spoiled = True
    elif content_type == CT_HANDSHAKE and b[0] == 20:          # Finished
        if write_p:
            cap.fin_out = cap.records_out
        else:
            cap.fin_in = cap.records_in
    elif content_type == CT_HANDSHAKE and (
            (not write_p and cap.fin_in) or (write_p and cap.fin_out and b[0] != HS_TICKET)):
        # After the client's Finished, OpenSSL may have read ahead (the take-over
        # then waits for its buffer to empty): a KeyUpdate or anything else it
        # handled meanwhile would leave the captured keys stale. Our own
        # NewSessionTicket is the one message expected there.
        cap.spoiled = True


cdef int record_install(openssl.SSL_CTX *ctx) except -1:
    """Let sessions of `ctx` be taken over (callbacks act only on an SSL with a Capture)."""
    global EX_INDEX
    if EX_INDEX < 0:
        EX_INDEX = openssl.SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL)
        if EX_INDEX < 0:
            raise MemoryError("no SSL ex_data index")
    openssl.SSL_CTX_set_keylog_callback(ctx, on_keylog)
    openssl.SSL_CTX_set_msg_callback(ctx, on_message)
    return 0


cdef int capture_attach(openssl.SSL *ssl, Capture *cap) noexcept nogil:
    return 0 if openssl.SSL_set_ex_data(ssl, EX_INDEX, cap) == 1 else -1


cdef void capture_free(openssl.SSL *ssl, Capture *cap) noexcept nogil:
    if cap == NULL:
        return
    if ssl != NULL:
        openssl.SSL_set_ex_data(ssl, EX_INDEX, NULL)
    openssl.OPENSSL_cleanse(cap, sizeof(Capture))
    free(cap)


# --- per-thread crypto ----------------------------------------------------------------

cdef int crypto_init(RecordCrypto *k) noexcept nogil:
    cdef int i
    cdef openssl.EVP_CIPHER *cipher
    cdef openssl.EVP_MAC *mac
    cdef openssl.OSSL_PARAM params[2]
    k.scratch = <uint8_t *>malloc(SCRATCH)
    if k.scratch == NULL:
        return -1
    # HMAC contexts with their digest set once: the one-shot HMAC() fetches the
    # MAC and the digest by name at every call (~5 us each, four per handshake)
    mac = openssl.EVP_MAC_fetch(NULL, b"HMAC", NULL)
    if mac == NULL:
        return -1
    for i in range(2):
        k.hmac[i] = openssl.EVP_MAC_CTX_new(mac)
        params[0] = openssl.OSSL_PARAM_construct_utf8_string(
            b"digest", <char *>(b"SHA384" if i == 1 else b"SHA256"), 0)
        params[1] = openssl.OSSL_PARAM_construct_end()
        if k.hmac[i] == NULL or openssl.EVP_MAC_CTX_set_params(k.hmac[i], params) != 1:
            openssl.EVP_MAC_free(mac)
            return -1
    openssl.EVP_MAC_free(mac)                # the contexts keep their own reference
    for i in range(3):
        k.ctx[i] = openssl.EVP_CIPHER_CTX_new()
        cipher = openssl.EVP_CIPHER_fetch(NULL, CIPHER_NAMES[i], NULL)
        if k.ctx[i] == NULL or cipher == NULL or openssl.EVP_CipherInit_ex(
                k.ctx[i], cipher, NULL, NULL, NULL, 1) != 1:
            openssl.EVP_CIPHER_free(cipher)
            return -1
        openssl.EVP_CIPHER_free(cipher)      # the context keeps its own reference
    return 0


cdef void crypto_free(RecordCrypto *k) noexcept nogil:
    cdef int i
    for i in range(3):
        if k.ctx[i] != NULL:
            openssl.EVP_CIPHER_CTX_free(k.ctx[i])
            k.ctx[i] = NULL
    for i in range(2):
        if k.hmac[i] != NULL:
            openssl.EVP_MAC_CTX_free(k.hmac[i])
            k.hmac[i] = NULL
    if k.scratch != NULL:
        openssl.OPENSSL_cleanse(k.scratch, SCRATCH)
        free(k.scratch)
        k.scratch = NULL


# --- key schedule ----------------------------------------------------------------------

cdef int hmac(RecordCrypto *k, int hashlen, const uint8_t *key, int keylen,
              const uint8_t *data, int datalen, uint8_t *out) noexcept nogil:
    """HMAC-SHA-256 (hashlen 32) or HMAC-SHA-384 (48) of `data` into `out`
    (hashlen bytes), on this thread's context for that hash."""
    cdef openssl.EVP_MAC_CTX *ctx = k.hmac[1 if hashlen == 48 else 0]
    cdef size_t outl = 0
    if (openssl.EVP_MAC_init(ctx, key, keylen, NULL) != 1
            or openssl.EVP_MAC_update(ctx, data, datalen) != 1
            or openssl.EVP_MAC_final(ctx, out, &outl, 64) != 1 or outl != <size_t>hashlen):
        return -1
    return 0


cdef int expand_label(RecordCrypto *k, TlsRecord *r, const uint8_t *secret,
                      const char *label, uint8_t *out, int outlen) noexcept nogil:
    """RFC 8446 7.1 HKDF-Expand-Label(secret, label, "", outlen), outlen <= hash length:
    one HMAC block."""
    cdef uint8_t info[64]
    cdef uint8_t block[64]
    cdef int llen = <int>strlen(label)
    info[0] = 0
    info[1] = <uint8_t>outlen
    info[2] = <uint8_t>(6 + llen)
    memcpy(info + 3, b"tls13 ", 6)
    memcpy(info + 9, label, llen)
    info[9 + llen] = 0                   # empty context
    info[10 + llen] = 1                  # HKDF-Expand's counter
    if hmac(k, r.hashlen, secret, r.hashlen, info, 11 + llen, block) < 0:
        return -1
    memcpy(out, block, outlen)
    openssl.OPENSSL_cleanse(block, sizeof(block))
    return 0


cdef int traffic_keys(RecordCrypto *k, TlsRecord *r, Direction *d) noexcept nogil:
    d.seq = 0
    if expand_label(k, r, d.secret, b"key", d.key, r.keylen) < 0:
        return -1
    return expand_label(k, r, d.secret, b"iv", d.iv, 12)


cdef int next_generation(RecordCrypto *k, TlsRecord *r, Direction *d) noexcept nogil:
    """RFC 8446 7.2: application_traffic_secret_N+1 and its key and IV."""
    cdef uint8_t secret[48]
    if expand_label(k, r, d.secret, b"traffic upd", secret, r.hashlen) < 0:
        return -1
    memcpy(d.secret, secret, r.hashlen)
    openssl.OPENSSL_cleanse(secret, sizeof(secret))
    return traffic_keys(k, r, d)


cdef int tls12_prf(RecordCrypto *k, int hashlen, const uint8_t *secret, int slen,
                   const uint8_t *seed, int seedlen, uint8_t *out, int outlen) noexcept nogil:
    """RFC 5246 5: P_hash(secret, seed), `seed` already label + randoms (<= 96 bytes)."""
    cdef uint8_t a[64]
    cdef uint8_t buf[64 + 96]
    cdef uint8_t block[64]
    cdef int done = 0
    if hmac(k, hashlen, secret, slen, seed, seedlen, a) < 0:
        return -1
    while done < outlen:
        memcpy(buf, a, hashlen)
        memcpy(buf + hashlen, seed, seedlen)
        if hmac(k, hashlen, secret, slen, buf, hashlen + seedlen, block) < 0:
            return -1
        memcpy(out + done, block, min(hashlen, outlen - done))
        done += hashlen
        if hmac(k, hashlen, secret, slen, a, hashlen, a) < 0:
            return -1
    openssl.OPENSSL_cleanse(block, sizeof(block))
    openssl.OPENSSL_cleanse(buf, sizeof(buf))
    openssl.OPENSSL_cleanse(a, sizeof(a))
    return 0


cdef int tls12_keys(RecordCrypto *k, openssl.SSL *ssl, TlsRecord *r) noexcept nogil:
    """RFC 5246 6.3 key_block: MAC keys (none for AEAD), then the write keys, then the
    write IVs (GCM: a 4-byte salt; ChaCha20-Poly1305: 12 bytes), client's first."""
    cdef uint8_t master[48]
    cdef uint8_t seed[13 + 64]
    cdef uint8_t block[2 * 32 + 2 * 12]
    cdef int ivlen = 12 if r.aead == AEAD_CHACHA else 4
    cdef int rc = -1
    if openssl.SSL_SESSION_get_master_key(openssl.SSL_get_session(ssl), master, 48) != 48:
        return -1
    memcpy(seed, b"key expansion", 13)
    if (openssl.SSL_get_server_random(ssl, seed + 13, 32) == 32 and
            openssl.SSL_get_client_random(ssl, seed + 45, 32) == 32 and
            tls12_prf(k, r.hashlen, master, 48, seed, sizeof(seed),
                      block, 2 * r.keylen + 2 * ivlen) == 0):
        memcpy(r.rd.key, block, r.keylen)
        memcpy(r.wr.key, block + r.keylen, r.keylen)
        memcpy(r.rd.iv, block + 2 * r.keylen, ivlen)
        memcpy(r.wr.iv, block + 2 * r.keylen + ivlen, ivlen)
        rc = 0
    openssl.OPENSSL_cleanse(master, sizeof(master))
    openssl.OPENSSL_cleanse(block, sizeof(block))
    return rc


cdef bint choose_suite(TlsRecord *r, uint16_t suite) noexcept nogil:
    """The AEAD, key length and hash of an IANA suite we seal ourselves."""
    r.keylen, r.hashlen = 32, 32
    if suite == 0x1301 or suite == 0xC02B or suite == 0xC02F or suite == 0x009E:
        r.aead, r.keylen = AEAD_AES128GCM, 16
    elif suite == 0x1302 or suite == 0xC02C or suite == 0xC030 or suite == 0x009F:
        r.aead, r.hashlen = AEAD_AES256GCM, 48
    elif suite == 0x1303 or suite == 0xCCA8 or suite == 0xCCA9 or suite == 0xCCAA:
        r.aead = AEAD_CHACHA
    else:
        return False
    return (suite >> 8 == 0x13) == (r.version == TLS13)


cdef TlsRecord *record_take(RecordCrypto *k, openssl.SSL *ssl, Capture *cap) noexcept nogil:
    """The record state of a session whose handshake just completed, or NULL: keep
    the SSL object (see the theory of operation). The caller frees `ssl` after."""
    cdef TlsRecord *r
    cdef bint ok
    cdef int version = openssl.SSL_version(ssl)
    cdef uint32_t mark_in, mark_out
    if cap == NULL or cap.spoiled or (version != TLS12 and version != TLS13) or \
            openssl.SSL_has_pending(ssl):
        return NULL
    if openssl.SSL_SESSION_get_max_fragment_length(openssl.SSL_get_session(ssl)) != 0:
        return NULL             # RFC 6066 max_fragment_length: OpenSSL honours it, we do not
    mark_in = cap.fin_in if version == TLS13 else cap.ccs_in
    mark_out = cap.fin_out if version == TLS13 else cap.ccs_out
    if mark_in == 0 or mark_out == 0:
        return NULL
    r = <TlsRecord *>calloc(1, sizeof(TlsRecord))
    if r == NULL:
        return NULL
    r.version = <uint16_t>version
    if not choose_suite(r, openssl.SSL_CIPHER_get_protocol_id(
            openssl.SSL_get_current_cipher(ssl))):
        free(r)
        return NULL
    if version == TLS13:
        if cap.have != 3 or cap.secret_len != r.hashlen:
            free(r)
            return NULL
        memcpy(r.rd.secret, cap.client_secret, r.hashlen)
        memcpy(r.wr.secret, cap.server_secret, r.hashlen)
        ok = traffic_keys(k, r, &r.rd) == 0 and traffic_keys(k, r, &r.wr) == 0
    else:
        ok = tls12_keys(k, ssl, r) == 0
    if not ok:
        openssl.OPENSSL_cleanse(r, sizeof(TlsRecord))
        free(r)
        return NULL
    r.rd.seq = cap.records_in - mark_in
    r.wr.seq = cap.records_out - mark_out
    return r


# --- sealing and opening one record ----------------------------------------------------

cdef inline void put_u64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[7 - i] = <uint8_t>(v >> (8 * i))


cdef void nonce_of(TlsRecord *r, Direction *d, const uint8_t *explicit,
                   uint8_t *nonce) noexcept nogil:
    """TLS 1.3 and ChaCha20-Poly1305: IV xor sequence; TLS 1.2 GCM: salt + explicit."""
    cdef uint8_t seq[8]
    cdef int i
    if r.version == TLS12 and r.aead != AEAD_CHACHA:
        memcpy(nonce, d.iv, 4)
        memcpy(nonce + 4, explicit, 8)
        return
    put_u64(seq, d.seq)
    memcpy(nonce, d.iv, 12)
    for i in range(8):
        nonce[4 + i] ^= seq[i]


cdef inline int explicit_len(TlsRecord *r) noexcept nogil:
    return 8 if r.version == TLS12 and r.aead != AEAD_CHACHA else 0


cdef int seal(RecordCrypto *k, TlsRecord *r, uint8_t ctype, const uint8_t *p, int n,
              uint8_t *out) noexcept nogil:
    """One record of `n` (<= 16384) plaintext bytes of type `ctype` at `out`: its length."""
    cdef openssl.EVP_CIPHER_CTX *ctx = k.ctx[r.aead]
    cdef uint8_t nonce[12]
    cdef uint8_t aad[13]
    cdef int xlen = explicit_len(r)
    cdef int inner = 1 if r.version == TLS13 else 0
    cdef int body = xlen + n + inner + TAG
    cdef int outl = 0
    cdef uint8_t *ct = out + HDR + xlen
    out[0] = CT_DATA if r.version == TLS13 else ctype
    out[1] = 3
    out[2] = 3
    out[3] = <uint8_t>(body >> 8)
    out[4] = <uint8_t>body
    if r.version == TLS13:
        memcpy(aad, out, HDR)
    else:
        put_u64(aad, r.wr.seq)
        aad[8] = ctype
        aad[9] = 3
        aad[10] = 3
        aad[11] = <uint8_t>(n >> 8)
        aad[12] = <uint8_t>n
        if xlen:
            put_u64(out + HDR, r.wr.seq)
    nonce_of(r, &r.wr, out + HDR, nonce)
    if (openssl.EVP_CipherInit_ex(ctx, NULL, NULL, r.wr.key, nonce, 1) != 1 or
            openssl.EVP_CipherUpdate(ctx, NULL, &outl, aad, HDR if inner else 13) != 1 or
            openssl.EVP_CipherUpdate(ctx, ct, &outl, p, n) != 1 or
            (inner and openssl.EVP_CipherUpdate(ctx, ct + n, &outl, &ctype, 1) != 1) or
            openssl.EVP_CipherFinal_ex(ctx, ct + n + inner, &outl) != 1 or
            openssl.EVP_CIPHER_CTX_ctrl(ctx, openssl.EVP_CTRL_AEAD_GET_TAG, TAG,
                                        ct + n + inner) != 1):
        return -1
    r.wr.seq += 1
    return HDR + body


cdef int open_body(RecordCrypto *k, TlsRecord *r, uint8_t *rec, int length,
                   uint8_t *dest) noexcept nogil:
    """Decrypt and verify the record at `rec` (header + `length` body bytes) into
    `dest` (room for length bytes): the plaintext length, or -1 (bad_record_mac)."""
    cdef openssl.EVP_CIPHER_CTX *ctx = k.ctx[r.aead]
    cdef uint8_t nonce[12]
    cdef uint8_t aad[13]
    cdef int xlen = explicit_len(r)
    cdef int n = length - xlen - TAG
    cdef int outl = 0
    cdef uint8_t *ct = rec + HDR + xlen
    if n < 0:
        return -1
    if r.version == TLS13:
        memcpy(aad, rec, HDR)
    else:
        put_u64(aad, r.rd.seq)
        aad[8] = rec[0]
        aad[9] = 3
        aad[10] = 3
        aad[11] = <uint8_t>(n >> 8)
        aad[12] = <uint8_t>n
    nonce_of(r, &r.rd, rec + HDR, nonce)
    if (openssl.EVP_CipherInit_ex(ctx, NULL, NULL, r.rd.key, nonce, 0) != 1 or
            openssl.EVP_CipherUpdate(ctx, NULL, &outl, aad,
                                     HDR if r.version == TLS13 else 13) != 1 or
            openssl.EVP_CipherUpdate(ctx, dest, &outl, ct, n) != 1 or
            openssl.EVP_CIPHER_CTX_ctrl(ctx, openssl.EVP_CTRL_AEAD_SET_TAG, TAG,
                                        ct + n) != 1 or
            openssl.EVP_CipherFinal_ex(ctx, dest + n, &outl) != 1):
        return -1
    r.rd.seq += 1
    return n


# --- sending ----------------------------------------------------------------------------

cdef ssize_t send_all(int fd, const uint8_t *p, size_t n) noexcept nogil:
    """Send until done or EAGAIN: bytes sent, or -2 on error."""
    cdef size_t done = 0
    cdef ssize_t w
    while done < n:
        w = posix.send(fd, p + done, n - done, posix.MSG_NOSIGNAL)
        if w < 0:
            if posix.errno == posix.EINTR:
                continue
            if posix.errno == posix.EAGAIN:
                break
            return -2
        done += w
    return <ssize_t>done


cdef int send_or_keep(TlsRecord *r, int fd, const uint8_t *p, size_t n) noexcept nogil:
    """Send sealed bytes; keep what the socket refuses. 0, or -2 (error, no memory)."""
    cdef ssize_t sent = send_all(fd, p, n)
    if sent < 0:
        return -2
    if <size_t>sent == n:
        return 0
    r.out = <uint8_t *>malloc(n - sent)
    if r.out == NULL:
        return -2
    memcpy(r.out, p + sent, n - sent)
    r.out_off = 0
    r.out_len = <uint32_t>(n - sent)
    return 0


cdef int seal_key_update(RecordCrypto *k, TlsRecord *r, uint8_t *out) noexcept nogil:
    """Our KeyUpdate (update_not_requested) under the current key, then the next key."""
    cdef uint8_t msg[5]
    cdef int n
    msg[0] = HS_KEY_UPDATE
    msg[1] = 0
    msg[2] = 0
    msg[3] = 1
    msg[4] = 0
    n = seal(k, r, CT_HANDSHAKE, msg, 5, out)
    if n < 0 or next_generation(k, r, &r.wr) < 0:
        return -1
    r.flags &= ~RF_KEYUPDATE_DUE
    return n


cdef inline bint key_update_due(TlsRecord *r) noexcept nogil:
    return r.version == TLS13 and (r.flags & RF_KEYUPDATE_DUE or r.wr.seq >= KEY_LIMIT)


cdef int record_flush(RecordCrypto *k, TlsRecord *r, int fd) noexcept nogil:
    """Send what is kept, and a KeyUpdate that is owed: 0 all sent, -1 EAGAIN, -2 error
    (also once the session failed: nothing may follow a fatal alert, RFC 8446 6.2)."""
    cdef ssize_t sent
    cdef int n
    if r.flags & RF_FAILED:
        return -2
    if r.out_len:
        sent = send_all(fd, r.out + r.out_off, r.out_len)
        if sent < 0:
            return -2
        r.out_off += <uint32_t>sent
        r.out_len -= <uint32_t>sent
        if r.out_len:
            return -1
        free(r.out)
        r.out = NULL
        r.out_off = 0
    if key_update_due(r):
        n = seal_key_update(k, r, k.scratch)
        if n < 0 or send_or_keep(r, fd, k.scratch, n) < 0:
            return -2
        if r.out_len:
            return -1
    return 0


cdef bint record_out_pending(TlsRecord *r) noexcept nogil:
    return not (r.flags & RF_FAILED) and (r.out_len > 0 or key_update_due(r))


cdef ssize_t record_write(RecordCrypto *k, TlsRecord *r, int fd, const uint8_t *p,
                          size_t n) noexcept nogil:
    """Seal up to 64 KiB of `p`, a record at a time, each sent before the next is
    sealed: bytes taken, -1 when the socket refuses what was kept before, -2 on error.
    Only EAGAIN leaves sealed bytes kept (record_out_pending()), at most one record:
    like OpenSSL's pending record, what a client that never reads makes us hold is
    its window plus one record."""
    cdef int f, used, sealed
    cdef size_t done = 0
    cdef size_t chunk
    cdef size_t take = n if n < WRITE_RECORDS * MAX_PLAIN else WRITE_RECORDS * MAX_PLAIN
    f = record_flush(k, r, fd)
    if f < 0:
        return f
    while done < take and r.out_len == 0:
        chunk = take - done if take - done < MAX_PLAIN else MAX_PLAIN
        used = seal(k, r, CT_DATA, p + done, <int>chunk, k.scratch)
        if used < 0:
            return -2
        if key_update_due(r):
            sealed = seal_key_update(k, r, k.scratch + used)
            if sealed < 0:
                return -2
            used += sealed
        if send_or_keep(r, fd, k.scratch, used) < 0:
            return -2
        done += chunk
    return <ssize_t>done


cdef void send_alert(RecordCrypto *k, TlsRecord *r, int fd, uint8_t desc) noexcept nogil:
    """A fatal alert (close_notify: a warning), best effort: once, and only on a stream
    with nothing half-sent."""
    cdef uint8_t body[2]
    cdef int n
    if r.out_len or r.flags & RF_FAILED:
        return
    body[0] = 1 if desc == A_CLOSE_NOTIFY else 2
    body[1] = desc
    n = seal(k, r, CT_ALERT, body, 2, k.scratch)
    if n > 0:
        send_all(fd, k.scratch, n)


# --- receiving ----------------------------------------------------------------------------

cdef int keep_input(TlsRecord *r, const uint8_t *p, size_t n) noexcept nogil:
    if n == 0:
        return 0
    r.inp = <uint8_t *>malloc(n)
    if r.inp == NULL:
        return -1
    memcpy(r.inp, p, n)
    r.in_len = <uint32_t>n
    return 0


cdef int keep_plain(TlsRecord *r, const uint8_t *p, size_t n) noexcept nogil:
    r.plain = <uint8_t *>malloc(n)
    if r.plain == NULL:
        return -1
    memcpy(r.plain, p, n)
    r.plain_off = 0
    r.plain_len = <uint32_t>n
    return 0


cdef size_t take_plain(TlsRecord *r, uint8_t *p, size_t n) noexcept nogil:
    cdef size_t m = r.plain_len if r.plain_len < n else n
    memcpy(p, r.plain + r.plain_off, m)
    r.plain_off += <uint32_t>m
    r.plain_len -= <uint32_t>m
    if r.plain_len == 0:
        openssl.OPENSSL_cleanse(r.plain, r.plain_off)
        free(r.plain)
        r.plain = NULL
        r.plain_off = 0
    return m


cdef int handshake_bytes(RecordCrypto *k, TlsRecord *r, const uint8_t *p, int n) noexcept nogil:
    """Post-handshake messages: only KeyUpdate (RFC 8446 4.6.3), which must end its
    record. 0, or the alert to send."""
    cdef int i
    if r.version != TLS13:
        return A_UNEXPECTED                  # TLS 1.2: a renegotiation; we have none
    for i in range(n):
        r.hs[r.hs_len] = p[i]
        r.hs_len += 1
        if r.hs_len == 4 and r.hs[0] != HS_KEY_UPDATE:
            return A_UNEXPECTED
        if r.hs_len == 4 and (r.hs[1] or r.hs[2] or r.hs[3] != 1):
            return A_DECODE                  # a KeyUpdate's body is one byte
        if r.hs_len == 5:
            r.hs_len = 0
            if r.hs[4] > 1:
                return A_ILLEGAL
            if i != n - 1:
                return A_UNEXPECTED          # a key change must end its record
            if r.hs[4] == 1:
                r.flags |= RF_KEYUPDATE_DUE
            if next_generation(k, r, &r.rd) < 0:
                return A_INTERNAL
    return 0


cdef int alert_bytes(TlsRecord *r, const uint8_t *p, int n) noexcept nogil:
    """An alert from the client: close_notify ends the stream (RFC 8446 6.1), an error
    alert the session (ALERT_RECEIVED: no answer), a TLS 1.2 warning or TLS 1.3's
    user_canceled is noted and nothing more."""
    if n != 2:
        return A_UNEXPECTED if n == 0 else A_DECODE
    if p[1] == A_CLOSE_NOTIFY:
        r.flags |= RF_EOF
        return 0
    if p[0] == 2 or (r.version == TLS13 and p[1] != A_USER_CANCELED):
        return ALERT_RECEIVED
    return 0


cdef int one_record(RecordCrypto *k, TlsRecord *r, uint8_t *rec, int length, uint8_t *dest,
                    size_t room, size_t *delivered) noexcept nogil:
    """Open the complete record at `rec` and act on it: 0, or the alert to end with
    (ALERT_RECEIVED: the client's). Application data goes to `dest` (up to `room`), the
    rest into r.plain. Nothing reaches `dest` as delivered before its tag verified."""
    # in place means exactly in place: OpenSSL refuses partly overlapping buffers
    cdef uint8_t *pt = dest if <size_t>length <= room else rec + HDR + explicit_len(r)
    cdef int n
    cdef uint8_t ctype = rec[0]
    delivered[0] = 0
    if (r.version == TLS13 and ctype != CT_DATA) or ctype < CT_ALERT or ctype > CT_DATA:
        return A_UNEXPECTED                  # ChangeCipherSpec, plaintext alerts, others
    if r.version == TLS12 and (rec[1] != 3 or rec[2] != 3):
        return A_PROTOCOL_VERSION
    if r.hs_len and (r.version != TLS13 or ctype != CT_DATA):
        return A_UNEXPECTED
    n = open_body(k, r, rec, length, pt)
    if n < 0:
        return A_BAD_MAC
    if r.version == TLS13:
        if n > MAX_PLAIN + 1:                # TLSInnerPlaintext, padding included (5.4)
            return A_OVERFLOW
        while n > 0 and pt[n - 1] == 0:      # padding
            n -= 1
        if n == 0:
            return A_UNEXPECTED
        n -= 1
        ctype = pt[n]
    if n > MAX_PLAIN:
        return A_OVERFLOW
    if r.hs_len and ctype != CT_HANDSHAKE:
        return A_UNEXPECTED                  # a split KeyUpdate must go on at once
    if ctype == CT_DATA and n > 0:
        r.empty_run = 0
        if pt == dest:
            delivered[0] = n
        else:
            delivered[0] = room if room < <size_t>n else n
            memcpy(dest, pt, delivered[0])
            if <size_t>n > delivered[0] and keep_plain(r, pt + delivered[0],
                                                       n - delivered[0]) < 0:
                return A_INTERNAL
        return 0
    r.empty_run += 1
    if r.empty_run > MAX_EMPTY_RUN:
        return A_UNEXPECTED
    if ctype == CT_DATA:
        return 0
    if ctype == CT_HANDSHAKE:
        return handshake_bytes(k, r, pt, n) if n > 0 else A_UNEXPECTED
    if ctype == CT_ALERT:
        return alert_bytes(r, pt, n)
    return A_UNEXPECTED


cdef inline bint have_record(const uint8_t *p, size_t n) noexcept nogil:
    return n >= HDR and n >= HDR + ((<size_t>p[3] << 8) | p[4])


cdef ssize_t ended(RecordCrypto *k, TlsRecord *r, int fd, int alert, size_t out) noexcept nogil:
    """A bad record (`alert` ours to send) or the client's error alert: bytes opened
    before it still go to the caller, and every later call fails."""
    if alert != ALERT_RECEIVED:
        send_alert(k, r, fd, <uint8_t>alert)
    r.flags |= RF_FAILED
    return <ssize_t>out if out else -2


cdef ssize_t record_read(RecordCrypto *k, TlsRecord *r, int fd, uint8_t *p,
                         size_t n) noexcept nogil:
    """Up to `n` (>= 1) plaintext bytes into `p` (see the theory of operation)."""
    cdef uint8_t *buf = k.scratch
    cdef size_t have, off, out, got, want
    cdef ssize_t rcv
    cdef int length, alert, err
    if r.flags & RF_FAILED:
        return -2
    # Drained says what this call's recv() saw: a readiness edge taken while the
    # caller was not reading (no credit) may stand for bytes that came after an
    # earlier short recv().
    r.flags &= ~RF_DRAINED
    if r.plain_len:
        return <ssize_t>take_plain(r, p, n)
    while not (r.flags & RF_EOF):
        have = r.in_len
        if have:
            memcpy(buf, r.inp, have)
            free(r.inp)
            r.inp = NULL
            r.in_len = 0
        if not have_record(buf, have):
            # What the caller has room for and one record more: a client cannot make
            # us hold much beyond its credit (the rest waits in the kernel).
            want = n + MAX_RECORD
            if want > SCRATCH - have:
                want = SCRATCH - have
            rcv = posix.recv(fd, buf + have, want, 0)
            while rcv < 0 and posix.errno == posix.EINTR:
                rcv = posix.recv(fd, buf + have, want, 0)
            if rcv < 0:
                err = posix.errno
                if keep_input(r, buf, have) < 0:
                    return ended(k, r, fd, A_INTERNAL, 0)
                return -1 if err == posix.EAGAIN else -2
            if rcv == 0:
                r.flags |= RF_EOF | RF_FIN   # truncated or clean: the stream is over
                break
            if <size_t>rcv < want:
                r.flags |= RF_DRAINED
            else:
                r.flags &= ~RF_DRAINED
            have += rcv
        off = 0
        out = 0
        while out < n and r.plain_len == 0 and not (r.flags & RF_EOF) and \
                have_record(buf + off, have - off):
            length = (buf[off + 3] << 8) | buf[off + 4]
            if length > MAX_BODY:
                return ended(k, r, fd, A_OVERFLOW, out)
            alert = one_record(k, r, buf + off, length, p + out, n - out, &got)
            if alert:
                return ended(k, r, fd, alert, out)
            off += HDR + length
            out += got
        if not (r.flags & RF_EOF) and have - off >= HDR and \
                ((buf[off + 3] << 8) | buf[off + 4]) > MAX_BODY:
            return ended(k, r, fd, A_OVERFLOW, out)
        if not (r.flags & RF_EOF) and keep_input(r, buf + off, have - off) < 0:
            return ended(k, r, fd, A_INTERNAL, out)
        if out:
            return <ssize_t>out
    return 0


cdef bint record_drained(TlsRecord *r) noexcept nogil:
    """Nothing to read until the socket's next edge: the last record_read's
    recv() took all the kernel had, and neither plaintext nor a whole record is
    kept. (Under edge-triggered epoll, bytes that arrive after that recv() raise
    a new edge, so the recv() that would only say EAGAIN is saved.) An end
    already seen (close_notify, an alert, a bad record) is still to be
    reported: not drained."""
    return (r.flags & (RF_DRAINED | RF_EOF | RF_FAILED)) == RF_DRAINED and r.plain_len == 0 \
        and not (r.in_len and have_record(r.inp, r.in_len))


cdef bint record_at_fin(TlsRecord *r) noexcept nogil:
    """recv() has seen the end of the TCP stream: no byte is left unread."""
    return (r.flags & RF_FIN) != 0


cdef void record_free(RecordCrypto *k, TlsRecord *r, int fd, bint notify) noexcept nogil:
    """close_notify (best effort) when `notify`, then wipe and free everything."""
    if r == NULL:
        return
    if notify and not (r.flags & RF_FAILED):
        send_alert(k, r, fd, A_CLOSE_NOTIFY)
    free(r.inp)
    if r.plain != NULL:
        openssl.OPENSSL_cleanse(r.plain, r.plain_off + r.plain_len)
    free(r.plain)
    free(r.out)
    openssl.OPENSSL_cleanse(r, sizeof(TlsRecord))
    free(r)
