# TLS session ticket keys of the legacy-SSL contexts (iim/_tickets.pyx).

from libc.stdint cimport int64_t, uint8_t

from iim.includes cimport openssl
from iim.includes.posix cimport pthread_mutex_t


cdef enum:
    TICKET_RING = 3             # periods whose keys open tickets (iim/mux/ticketkeys.py RING)
    TICKET_SEED = 32
    TICKET_SERIALIZED = 8 + TICKET_SEED * TICKET_RING    # period + seeds, oldest first


cdef struct TicketKey:
    uint8_t name[16]
    uint8_t hmac_key[32]
    uint8_t aes_key[32]


cdef struct TicketRing:
    int64_t period              # of keys[0]
    uint8_t seed[TICKET_SEED]   # keys[0]'s seed; older seeds are gone (forward secrecy)
    TicketKey keys[TICKET_RING] # [0] seals and opens, [1] and [2] (older periods) open
    pthread_mutex_t lock        # relay threads of a process share a context


cdef TicketRing *ring_new(const uint8_t *serialized, size_t n) noexcept nogil
cdef void ring_free(TicketRing *ring) noexcept nogil
cdef int64_t ring_rotate(TicketRing *ring, int64_t period) noexcept nogil
cdef int ring_install(openssl.SSL_CTX *ctx, TicketRing *ring) except -1
