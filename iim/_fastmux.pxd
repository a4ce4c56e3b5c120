# The relay core's C-level types (iim/_fastmux.pyx). Nothing here is a
# Python object except the three cdef classes at the end, which only own C
# state; the loop itself (core_run and everything it calls) sees structs.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

from iim.includes cimport openssl
from iim.includes.posix cimport pthread_mutex_t
from iim._tickets cimport TicketRing
from iim._tlsrecord cimport Capture, RecordCrypto, TlsRecord


cdef struct Buf:
    # bytes [head, tail) of data[0:cap] are pending; empty buffers own no memory
    uint8_t *data
    size_t head
    size_t tail
    size_t cap


cdef struct Session


cdef struct Ring:
    # an intrusive doubly-linked ring; a head has owner NULL, an unlinked node next NULL
    Ring *prev
    Ring *next
    Session *owner


cdef struct Peer:
    # a client's address as OPEN carries it
    uint8_t family              # 4 or 6 (an IPv4-mapped IPv6 address is 4)
    uint8_t addr[16]            # IPv4 in the first 4 bytes, the rest zero
    uint16_t port


cdef struct Session:
    int fd
    uint32_t id                 # 0 until OPEN was sent
    uint8_t state               # S_HANDSHAKE, S_OPEN, S_CLOSING
    uint8_t queued              # Q_NONE, Q_RUN, Q_LINKWAIT
    uint16_t flags              # F_*: readiness remembered across edges
    int64_t credit              # bytes we may still send upstream (server WINDOW)
    int64_t peer_credit         # bytes the server may still send us
    int64_t ungranted           # written to the client, not yet granted back
    Buf out                     # server bytes not yet written to the client
    openssl.SSL *ssl            # OpenSSL's, during the handshake (and after it when
                                # iim/_tlsrecord.pyx cannot take the session over)
    Capture *capture            # keys and record counts reported during the handshake
    TlsRecord *rec              # after the handshake: our record layer, ssl freed
    int64_t deadline            # handshake or closing-linger deadline (ms)
    uint8_t family              # 4 or 6, for OPEN
    uint8_t addr[16]
    uint16_t port
    bint counted                # holds one of its source's places (Sources)
    Ring all_node               # every client of the relay
    Ring run_node               # run queue or link-wait ring
    Ring timer_node             # handshaking or lingering ring (each FIFO by deadline)


cdef struct Stats:
    int64_t sessions_plain
    int64_t sessions_tls
    int64_t handshaking
    uint64_t opened
    uint64_t closed
    uint64_t refused
    uint64_t bytes_up           # client -> server
    uint64_t bytes_down         # server -> client
    uint64_t handshakes_ok
    int64_t sessions_tls_lean   # TLS sessions on iim/_tlsrecord.pyx (SSL object freed)
    uint64_t handshakes_failed
    uint64_t frames_in
    uint64_t frames_out
    uint64_t link_reads
    uint64_t link_writes
    uint64_t paced_turns        # busy turns followed by a pause (Pacer)
    int64_t buffered            # bytes allocated for client output buffers
    uint64_t link_buffers_released  # oversized idle link buffers freed
    uint64_t refused_source     # over iim_mux.maxsessions_per_source (in refused too)
    uint64_t refused_rate       # over iim_mux.accept_rate_per_source (in refused too)
    uint8_t last_refused_family # the source most recently refused by either (0: none)
    uint8_t last_refused[16]


cdef struct SourceEntry:
    # one source (an IPv4 address, an IPv6 /64) in the open-addressing table
    uint64_t key                # the IPv4 address, or the first 64 bits of the IPv6 one
    int64_t tokens              # its accept-rate bucket, in thousandths of a connection
    int64_t stamp               # ms of the bucket's last refill
    uint32_t count              # sessions it holds now
    uint8_t family              # 4 or 6; 0: a free slot


cdef struct Sources:
    # per-source counts and rate buckets, shared by the relays of a process
    SourceEntry *slots          # fixed size: mask + 1, a power of two
    uint32_t mask
    uint32_t used               # occupied slots
    uint32_t max_used           # beyond: evict a source that holds no session
    uint32_t sweep              # where the incremental sweep of stale entries goes on
    uint64_t multiplier         # random odd: the hash is (key ^ seed) * multiplier
    uint64_t seed
    uint32_t per_source         # iim_mux.maxsessions_per_source
    int64_t rate                # iim_mux.accept_rate_per_source (connections per second)
    int64_t burst               # 2 * rate, in thousandths
    pthread_mutex_t lock


cdef struct Pacer:
    # whether a busy turn pauses before the next (iim/_fastmux.pyx, "Pacing")
    int64_t delay_us            # iim_mux.link_flush_delay_us; 0: never pause
    double events               # decayed sum of the work of busy turns
    double bytes                # decayed sum of the bytes they relayed
    double span_us              # decayed sum of the time between their starts
    int64_t last_us             # start of the last busy turn; 0: none yet
    bint on


cdef struct Core:
    int ep
    int listen_fd               # borrowed from Python
    int link_fd                 # owned
    openssl.SSL *link_ssl       # TLS on the link (owned), or NULL: plain
    bint link_read_wants_write  # SSL_read on the link waits for writability
    int wake_fd
    int spare_fd                # /dev/null, given up to refuse one client on EMFILE
    uint16_t local_port
    int nodelay_inherited       # accepted sockets get TCP_NODELAY from the listener: 1 yes,
                                # 0 no (set it on each), -1 not known yet
    uint32_t window
    int64_t grant_threshold
    int64_t keepalive_ms
    int64_t handshake_ms
    int64_t linger_ms
    Pacer pacer
    int64_t link_busy_ms        # the last turn a link buffer held over LINK_KEEP
    int64_t now
    int64_t last_rx
    int64_t ping_sent           # 0: no PING outstanding
    uint8_t ping_payload[8]
    uint64_t next_id            # ids increase from 1 and are never reused on a link
    Session **table             # session id & mask -> session
    uint32_t mask
    long *limit_count           # shared by the relays of a process (atomics)
    long limit_max
    Sources *sources            # per-source limits (shared, locked); NULL: none
    bint tls_enabled
    openssl.SSL_CTX *ctx        # for new clients; swapped under ctx_lock
    RecordCrypto crypto         # this thread's cipher contexts and record scratch
    pthread_mutex_t ctx_lock
    Buf lin
    Buf lout
    bint lout_urgent            # lout holds a frame other than CLOSE ("Lazy CLOSE")
    int64_t lout_since_us       # when lout's oldest unsent frame was queued
    int64_t close_delay_us      # how long lone CLOSE frames may wait for company
    bint link_readable
    bint link_writable
    bint listen_ready
    long stop                   # set by stop() from any thread (atomics)
    int exit
    int exit_errno
    int peer_reason             # LINKCLOSE reason from the server, or -1
    char detail[256]
    Ring all
    Ring runq
    int64_t runq_len
    Ring linkwait
    Ring handshakes
    Ring lingering
    Stats st


cdef class SessionLimit:
    cdef long _count
    cdef long _maximum


cdef class SourceLimit:
    cdef Sources t


cdef class TlsContext:
    cdef openssl.SSL_CTX *ctx
    cdef TicketRing *ring       # owned by ctx (iim/_tickets.pyx)
    cdef _ticket_keys(self, bytes keys)
    cdef _load_key(self, bytes pem)
    cdef _load_chain(self, bytes pem)


cdef class LinkTlsContext:
    cdef openssl.SSL_CTX *ctx
    cdef readonly bint server
    cdef _trust(self, bytes pem)


cdef class LinkTls:
    cdef openssl.SSL *ssl
    cdef openssl.BIO *rbio      # memory mode (the server end): owned by ssl
    cdef openssl.BIO *wbio
    cdef int fd                 # fd mode (the multiplexor end); -1 in memory mode
    cdef double timeout
    cdef openssl.SSL *_live(self) except NULL
    cdef str _failure(self, str what)
    cdef _fd_mode(self)
    cdef _memory_mode(self)


cdef class Relay:
    cdef Core *core
    cdef SessionLimit limit
    cdef SourceLimit sources
    cdef bint started
    cdef bint finished
    cdef readonly int instance
    cdef readonly int thread
    cdef _open_fds(self)
