# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The multiplexor relay core: client sockets <-> one framed server link.

This module knows nothing of XMPP. It moves bytes between client sockets and
one server link in the format of docs/muxlink.md, and terminates legacy SSL
with OpenSSL when told to. Python builds the pieces (listening socket, an
authenticated link, a TlsContext) and calls ``Relay.run()``, which releases
the GIL for its whole life.

Theory of operation
===================

One thread, one epoll instance, everything edge-triggered. Each fd is
registered once (clients for EPOLLIN|EPOLLOUT|EPOLLRDHUP) and never modified:
an edge only says "something changed", so readiness is *remembered* in
session flags (F_READABLE, F_WRITABLE) and cleared only when a call returns
EAGAIN (or OpenSSL says WANT_READ/WANT_WRITE). A session that has data to
read but may not read it (no upstream credit, or the link output is over its
high-water mark) keeps F_READABLE and simply is not queued; whatever unblocks
it (a WINDOW frame, the link draining) queues it again. Nothing is lost,
because nothing was consumed.

A loop turn has two phases, so that no session is freed while epoll events
still point at it:

1. epoll_wait, then for each event only set flags and queue the session on
   the run queue (no I/O, no frees).
2. Read the link (parse every complete frame in the input buffer; DATA is
   written straight to the client socket, and only what the socket refuses
   is copied into the session's output buffer), accept new clients, service
   the run queue (handshake, flush output, read input), run timers, and
   finally flush the link output buffer with as few send() calls as the
   kernel allows: every frame produced during the turn (DATA read from many
   clients, WINDOW, OPEN, CLOSE) was appended to that one buffer.

Pacing. At moderate load a turn sees one or two events, so a loop that
blocks again at once wakes about once per client message and once more for
each answer from the server: the context switches, not the copying, are
most of the relay's CPU then (perf: the sleep and wakeup paths, and the
server's wakeup by each link send, are over a third of it). So a busy
relay follows a turn that had work with a pause until ``delay_us``
(iim_mux.link_flush_delay_us) after its start, then one epoll_wait that does
not block: what every client and the server sent meanwhile is served by that
one wakeup, and the link output of the whole turn leaves in one send() (one
wakeup of the server). A turn that finds nothing goes back to blocking; a
turn that takes longer than the delay, or leaves work behind (a session over
its read budget), is not paused at all, so a saturated relay never waits.
stop() ends a pause (ppoll on the wake eventfd).

Pausing pays only when the pause gathers more than it costs: a light load
(about one client message per delay) would get a wakeup for the pause on top
of the one for each message, and the latency for nothing. So the Pacer
keeps a decayed rate of work (each client that became ready, each frame
from the server: the same count whether the frames came in one wakeup or in
many) and pauses only while that rate promises enough work per delay:
PACE_ENTER to begin, below PACE_LEAVE to stop (hysteresis: no flapping at
the border). Nor does it pause for bulk transfers (PACE_BULK bytes or more
per unit of work, decayed alike): each of their wakeups moves kilobytes
already, and their windows come and go a turn at a time, so a pause would
only slow them. An idle relay, and a lightly loaded one, relay each byte at
once. The price is latency while busy, at most the delay per hop; 0 turns
pacing off. Measured (bench/MUX.md, 2,000 sessions, 2 threads, 1,000 us): at
14,000 round trips/s about half the relay CPU per round trip of no pacing,
median round trip 1.8 ms instead of 0.08; at 4,000/s the relay does not
pace.

A short read of the plain link means its socket is drained (a later byte
raises a new edge), so no recv() is spent to hear EAGAIN. The same holds for
a plain client, and for a legacy-SSL client on our record layer when that
call's own recv() was short (record_drained: a readiness edge taken while the
session was not reading may stand for bytes that came after an earlier short
read). A client whose end of stream was read is not read again before close.

Lazy CLOSE. Nobody waits for a CLOSE: the client is gone, the server only
forgets the id. A turn whose link output holds nothing but CLOSE frames does
not send it; it waits up to ``close_delay`` (2 ms) for a frame that must go
(DATA, OPEN, WINDOW, PONG...) and leaves with it, first and in order, or
leaves alone when its delay is over (next_timeout wakes the loop for it) or
when CLOSE_BATCH bytes of CLOSEs are waiting. Many clients leaving together,
or connections that each live one round trip, so cost one send() and one
wakeup of the server instead of one per client.

Client bytes are read directly into the link output buffer behind a
reserved 12-byte header (no copy), at most the session's credit, at most
64 KiB per session per turn (fairness: a busy session goes to the back of
the queue).

Flow control (docs/muxlink.md "Sessions"): upstream, a session may send
only what the server granted; at zero credit its reading pauses. Downstream,
the server may send only what we granted; we grant back (WINDOW) only bytes
actually written to the client, half a window at a time. So a client that
never reads holds at most one window in its output buffer (allocated only
while bytes are pending, freed when drained) and the server stops sending
to it; the other sessions on the link are not affected.

Legacy SSL: an SSL object per client on the non-blocking fd, made when
the client first becomes readable (one that connects and says nothing holds
no TLS state; the writable edge of a new socket costs no syscall);
SSL_accept (SSL_do_handshake) is driven by the same events, OpenSSL reading
ahead (what the socket has in one read(), not a record header and then its
body); OPEN is sent only once the handshake is complete, carrying version
and cipher; a handshake that fails or outlives its deadline closes the
client and nothing goes upstream. After that, on an AEAD suite, the session
moves to iim/_tlsrecord.pyx and its SSL object is freed - once OpenSSL has
handed out any records it read ahead with the client's Finished (take_over;
a KeyUpdate among them leaves the session to OpenSSL): record_read/record_write replace recv/send, sealed bytes the
socket refuses stay in the record state (out_pending() counts them as
output, and only EAGAIN leaves any, so an edge is coming), and a KeyUpdate
the client asks for is sent from the read path when the socket allows. On
any other suite SSL_read_ex/SSL_write_ex replace recv/send (partial writes
and moving buffers enabled, so the output buffer may grow between retries).

Writes to a client, and what drives the remainder. With partial writes one
SSL_write_ex moves at most one record (16 KiB of plaintext) and returns
success although the socket would take more; a plain send() may also move
part of a buffer. Neither is a refusal, so no EPOLLOUT edge will follow it:
under edge triggering, an edge comes only after the socket said EAGAIN
(OpenSSL: WANT_WRITE). Hence the rule both writers (deliver() for DATA as it
arrives, flush_out() for the session's output buffer) keep: write in a loop
until everything is written or the socket refuses. Output left in the
buffer therefore always has an edge coming (F_WRITABLE clear), and that edge
queues the session, whose service() flushes it. A refused TLS record stays
pending inside OpenSSL; the retry passes the same bytes again, from the
output buffer (at a new address: moving buffers) and possibly followed by
more, which partial-write mode allows. Credit goes back (WINDOW) only for
bytes a write call reported as done. A session the server closes keeps its
place on the run queue, so an edge taken in the same turn still flushes it.
The rare SSL_write that wants to read (WANT_READ) is retried at the next
event of the session, which a read that found nothing guarantees.

Timers are two FIFO rings (handshaking, lingering) whose entries all get the
same timeout, so each ring is sorted by deadline and only its head is
checked; plus the link keepalive (PING after `keepalive` seconds without
receiving anything, link closed when nothing answers within as long again).
"""

import os

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcmp, memcpy, memmove, memset, strlen

from iim.includes cimport epoll, openssl, posix
from iim.includes.posix cimport ssize_t
from iim._tickets cimport (TICKET_RING, TICKET_SEED, TICKET_SERIALIZED, TicketRing,
                           ring_install, ring_new, ring_rotate)
from iim._tlsrecord cimport (Capture, capture_attach, capture_free, crypto_free, crypto_init,
                             record_at_fin, record_drained, record_flush, record_free,
                             record_install, record_out_pending, record_read, record_take,
                             record_write)


# --- wire format (docs/muxlink.md) -------------------------------------------
# C copies of what iim/muxlink.py defines (the one definition), for the loop's
# speed; wire_constants() hands them to tests/test_muxlink_constants.py, which
# fails when one differs. Every name in this block is one of them.

cdef enum:
    HEADER = 12
    MAX_PAYLOAD = 65536
    T_HELLO = 0x01
    T_LINKCLOSE = 0x05
    T_PING = 0x06
    T_PONG = 0x07
    T_OPEN = 0x10
    T_DATA = 0x11
    T_CLOSE = 0x12
    T_WINDOW = 0x13
    R_NORMAL = 0
    R_PROTOCOL = 1
    R_SHUTDOWN = 4
    R_TIMEOUT = 6

cdef enum:
    NO_CLOSE = -1               # session_free: send nothing upstream


def wire_constants():
    """The relay core's copies of the link protocol's constants, by their C names."""
    return {"HEADER": HEADER, "MAX_PAYLOAD": MAX_PAYLOAD, "T_HELLO": T_HELLO,
            "T_LINKCLOSE": T_LINKCLOSE, "T_PING": T_PING, "T_PONG": T_PONG,
            "T_OPEN": T_OPEN, "T_DATA": T_DATA, "T_CLOSE": T_CLOSE, "T_WINDOW": T_WINDOW,
            "R_NORMAL": R_NORMAL, "R_PROTOCOL": R_PROTOCOL, "R_SHUTDOWN": R_SHUTDOWN,
            "R_TIMEOUT": R_TIMEOUT, "REASON_NAMES": REASON_NAMES,
            "EXPORTER_LABEL": <bytes>EXPORTER_LABEL,
            "CHANNEL_BINDING_BYTES": CHANNEL_BINDING_BYTES}

# --- loop tuning and state ---------------------------------------------------

cdef enum:
    MAX_EVENTS = 256
    ACCEPT_BUDGET = 128         # accepts per turn
    READ_BUDGET = 65536         # client bytes read per session per turn
    LINK_READ_BUDGET = 4194304  # link bytes read per turn
    LINK_HIGH = 1048576         # link output: stop reading clients above this
    LINK_LOW = 262144           # ... and resume below this
    OUT_MIN = 4096              # first client output buffer
    LINK_KEEP = 262144          # link buffers kept at most this large once idle ...
    LINK_IDLE_MS = 1000         # ... for this long (a burst grows them to megabytes)
    DRAIN_MS = 1000             # final flush of the link at stop
    LINGER_MS = 2000            # then wait for the server to close its end
    CLOSE_BATCH = 16384         # lone CLOSE frames wait (close_delay) unless this many bytes
    TAG_LISTEN = 1              # epoll data of the non-session fds
    TAG_LINK = 2
    TAG_WAKE = 3
    S_HANDSHAKE = 1
    S_OPEN = 2
    S_CLOSING = 3               # the server closed it; flushing what is left
    Q_NONE = 0
    Q_RUN = 1
    Q_LINKWAIT = 2
    F_READABLE = 1
    F_WRITABLE = 2
    F_RDHUP = 4
    F_ERROR = 8
    F_READ_WANTS_WRITE = 16
    F_EOF = 32                  # a read saw the end of the TCP stream: nothing left unread
    RUNNING = -1

# Why run() returned (Relay.run's value).
cdef enum:
    X_STOPPED = 0
    X_LINK_LOST = 1
    X_LINK_CLOSED = 2
    X_PROTOCOL = 3
    X_TIMEOUT = 4
    X_NOMEM = 5
    X_ERROR = 6
    X_IDS = 7

EXIT_STOPPED = X_STOPPED
EXIT_LINK_LOST = X_LINK_LOST
EXIT_LINK_CLOSED = X_LINK_CLOSED
EXIT_PROTOCOL = X_PROTOCOL
EXIT_TIMEOUT = X_TIMEOUT
EXIT_NOMEM = X_NOMEM
EXIT_ERROR = X_ERROR
EXIT_IDS_USED_UP = X_IDS
EXIT_NAMES = ("stopped", "link lost", "link closed by the server", "server broke the link protocol",
              "link keepalive timeout", "out of memory", "event loop failure",
              "session ids used up")

#: CLOSE / LINKCLOSE reason codes, by value (docs/muxlink.md).
REASON_NAMES = ("normal", "protocol", "auth", "version", "shutdown", "overload", "timeout", "tls")

cdef const char *ALPN_XMPP = b"xmpp-client"


# --- small helpers -----------------------------------------------------------

cdef inline int64_t now_ms() noexcept nogil:
    cdef posix.timespec ts
    posix.clock_gettime(posix.CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef inline int64_t now_us() noexcept nogil:
    cdef posix.timespec ts
    posix.clock_gettime(posix.CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef inline size_t smin(size_t a, size_t b) noexcept nogil:
    return a if a < b else b


cdef inline void put_u16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xff
    p[1] = v & 0xff


cdef inline void put_u32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 24) & 0xff
    p[1] = (v >> 16) & 0xff
    p[2] = (v >> 8) & 0xff
    p[3] = v & 0xff


cdef inline uint32_t get_u32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void put_header(uint8_t *p, uint8_t ftype, uint32_t sid,
                            uint32_t length) noexcept nogil:
    p[0] = ftype
    p[1] = 0
    p[2] = 0
    p[3] = 0
    put_u32(p + 4, sid)
    put_u32(p + 8, length)


cdef int set_nonblocking(int fd) noexcept nogil:
    cdef int flags = posix.fcntl(fd, posix.F_GETFL)
    if flags < 0:
        return -1
    return posix.fcntl(fd, posix.F_SETFL, flags | posix.O_NONBLOCK)


cdef void set_nodelay(int fd) noexcept nogil:
    cdef int one = 1
    posix.setsockopt(fd, posix.IPPROTO_TCP, posix.TCP_NODELAY, &one, sizeof(one))


cdef void client_nodelay(Core *c, int fd) noexcept nogil:
    """TCP_NODELAY on an accepted client. Linux copies it from the listener
    (set at start), which saves a setsockopt() per client; the first client
    of each relay shows whether this kernel does."""
    cdef int on = 0
    cdef posix.socklen_t n = sizeof(on)
    if c.nodelay_inherited < 0:
        c.nodelay_inherited = posix.getsockopt(fd, posix.IPPROTO_TCP, posix.TCP_NODELAY,
                                               &on, &n) == 0 and on != 0
    if not c.nodelay_inherited:
        set_nodelay(fd)


cdef void discard_input(int fd) noexcept nogil:
    """Read and drop what a client sent but nobody will read, so that
    close() sends FIN (not RST, which could destroy our last bytes)."""
    cdef uint8_t scratch[4096]
    cdef int i
    for i in range(16):
        if posix.recv(fd, scratch, sizeof(scratch), 0) <= 0:
            return


# --- buffers -----------------------------------------------------------------

cdef int buf_reserve(Buf *b, size_t n, size_t hint) noexcept nogil:
    """Room for `n` more bytes at b.tail; 0, or -1 without memory.

    Growth doubles, but not beyond `hint` (0: no hint) unless the bytes
    themselves need it: a client buffer stays within one window.
    """
    cdef size_t used = b.tail - b.head
    cdef size_t cap
    cdef uint8_t *data
    if b.cap - b.tail >= n:
        return 0
    if b.head > 0:
        memmove(b.data, b.data + b.head, used)
        b.head = 0
        b.tail = used
        if b.cap - used >= n:
            return 0
    cap = b.cap * 2 if b.cap else OUT_MIN
    if hint and cap > hint:
        cap = hint
    if cap < used + n:
        cap = used + n
    data = <uint8_t *>realloc(b.data, cap)
    if data == NULL:
        return -1
    b.data = data
    b.cap = cap
    return 0


cdef inline size_t buf_len(Buf *b) noexcept nogil:
    return b.tail - b.head


cdef inline void buf_consumed(Buf *b, size_t n) noexcept nogil:
    b.head += n
    if b.head == b.tail:
        b.head = 0
        b.tail = 0


cdef void buf_free(Buf *b) noexcept nogil:
    free(b.data)
    b.data = NULL
    b.head = 0
    b.tail = 0
    b.cap = 0


# --- rings and queues --------------------------------------------------------

cdef inline void ring_init(Ring *head) noexcept nogil:
    head.prev = head
    head.next = head
    head.owner = NULL


cdef inline void ring_push(Ring *head, Ring *node) noexcept nogil:
    node.prev = head.prev
    node.next = head
    head.prev.next = node
    head.prev = node


cdef inline void ring_unlink(Ring *node) noexcept nogil:
    if node.next != NULL:
        node.prev.next = node.next
        node.next.prev = node.prev
        node.next = NULL
        node.prev = NULL


cdef inline bint ring_empty(Ring *head) noexcept nogil:
    return head.next == head


cdef inline Session *ring_first(Ring *head) noexcept nogil:
    return head.next.owner


cdef void dequeue(Core *c, Session *s) noexcept nogil:
    if s.queued == Q_RUN:
        c.runq_len -= 1
    ring_unlink(&s.run_node)
    s.queued = Q_NONE


cdef void queue_run(Core *c, Session *s) noexcept nogil:
    if s.queued == Q_RUN:
        return
    dequeue(c, s)
    ring_push(&c.runq, &s.run_node)
    s.queued = Q_RUN
    c.runq_len += 1


cdef void queue_linkwait(Core *c, Session *s) noexcept nogil:
    dequeue(c, s)
    ring_push(&c.linkwait, &s.run_node)
    s.queued = Q_LINKWAIT


# --- session ids -------------------------------------------------------------

cdef inline Session *table_get(Core *c, uint32_t sid) noexcept nogil:
    cdef Session *s = c.table[sid & c.mask]
    if s != NULL and s.id == sid:
        return s
    return NULL


cdef int table_add(Core *c, Session *s) noexcept nogil:
    """Give `s` the next id; -1 when the link has used them all.

    Ids only increase and are never reused on a link (docs/muxlink.md). An
    id whose slot is still held by a long-lived session is skipped, so a
    lookup is one array index; the table has at least twice the slots of
    the session limit, so skips are rare.
    """
    cdef uint64_t sid = c.next_id
    while sid <= 0xffffffffUL and c.table[sid & c.mask] != NULL:
        sid += 1
    if sid > 0xffffffffUL:
        core_fail(c, X_IDS, 0, "session ids used up; a new link starts again from 1")
        return -1
    s.id = <uint32_t>sid
    c.table[sid & c.mask] = s
    c.next_id = sid + 1
    return 0


cdef inline void table_del(Core *c, Session *s) noexcept nogil:
    if s.id and c.table[s.id & c.mask] == s:
        c.table[s.id & c.mask] = NULL


# --- failure of the whole relay ------------------------------------------------

cdef void core_fail(Core *c, int code, int err, const char *what) noexcept nogil:
    """Record why run() will return (the first reason wins)."""
    cdef char text[160]
    if c.exit != RUNNING:
        return
    c.exit = code
    c.exit_errno = err
    if err:
        snprintf(c.detail, sizeof(c.detail), "%s: %s", what,
                 posix.strerror_r(err, text, sizeof(text)))
    else:
        snprintf(c.detail, sizeof(c.detail), "%s", what)


cdef uint8_t *frame_out(Core *c, uint8_t ftype, uint32_t sid, uint32_t length) noexcept nogil:
    """Append a frame header to the link output; return where its payload goes."""
    cdef uint8_t *p
    if buf_len(&c.lout) == 0:
        c.lout_since_us = now_us()
    if ftype != T_CLOSE:
        c.lout_urgent = True
    if buf_reserve(&c.lout, HEADER + length, 0) < 0:
        core_fail(c, X_NOMEM, 0, "no memory for the link output buffer")
        return NULL
    p = c.lout.data + c.lout.tail
    put_header(p, ftype, sid, length)
    c.lout.tail += HEADER + length
    c.st.frames_out += 1
    return p + HEADER


cdef void link_close_frame(Core *c, uint8_t reason, const char *text) noexcept nogil:
    cdef size_t n = strlen(text)
    cdef uint8_t *p = frame_out(c, T_LINKCLOSE, 0, 1 + n)
    if p != NULL:
        p[0] = reason
        memcpy(p + 1, text, n)


cdef void protocol_error(Core *c, const char *what) noexcept nogil:
    if c.exit != RUNNING:
        return
    link_close_frame(c, R_PROTOCOL, what)
    core_fail(c, X_PROTOCOL, 0, what)


# --- the session limit -------------------------------------------------------

cdef inline bint limit_take(Core *c) noexcept nogil:
    if posix.__atomic_add_fetch(c.limit_count, 1, posix.__ATOMIC_RELAXED) > c.limit_max:
        posix.__atomic_sub_fetch(c.limit_count, 1, posix.__ATOMIC_RELAXED)
        return False
    return True


cdef inline void limit_release(Core *c) noexcept nogil:
    posix.__atomic_sub_fetch(c.limit_count, 1, posix.__ATOMIC_RELAXED)


# --- per-source limits ---------------------------------------------------------
# iim_mux.maxsessions_per_source and iim_mux.accept_rate_per_source: what one
# source (an IPv4 address, an IPv6 /64) may hold and open. One table per
# process (SourceLimit), shared by its relays under a mutex held for a few
# dozen instructions per accept and per close: O(1), nothing allocated.
#
# Open addressing with linear probing in an array allocated once (four slots
# per allowed session, a power of two), so memory is bounded whatever clients
# do; deletion shifts the rest of the cluster back (no tombstones). A source
# holding sessions keeps its entry (at most iim_mux.maxsessions of them: a
# quarter of the slots). A source holding none keeps it only while its rate
# bucket refills (burst / rate = 2 s at most), so that closing and reopening
# does not reset its rate; after that the entry is stale, and goes when a
# probe or the sweep (SWEEP_STEP slots per accept) meets it. Buckets refill
# lazily, from the time of their last use. Over three quarters full, a new
# source evicts one that holds no session (forgetting its bucket early).

cdef enum:
    SRC_OK = 0
    SRC_RATE = 1
    SRC_COUNT = 2
    SWEEP_STEP = 2
    SWEEP_EVICT = 256
    TOKEN = 1000                # one connection, in bucket units


cdef inline uint64_t source_key(uint8_t family, const uint8_t *addr) noexcept nogil:
    if family == 4:
        return get_u32(addr)
    return (<uint64_t>get_u32(addr) << 32) | get_u32(addr + 4)


cdef inline uint32_t source_home(Sources *t, uint64_t key, uint8_t family) noexcept nogil:
    cdef uint64_t h = ((key ^ t.seed) + family) * t.multiplier
    return <uint32_t>(h >> 32) & t.mask


cdef inline void bucket_refill(Sources *t, SourceEntry *e, int64_t now) noexcept nogil:
    if now > e.stamp:
        e.tokens += (now - e.stamp) * t.rate       # rate/s = rate * TOKEN per 1000 ms
        if e.tokens > t.burst:
            e.tokens = t.burst
        e.stamp = now


cdef inline bint source_stale(Sources *t, SourceEntry *e, int64_t now) noexcept nogil:
    """Holds no session and its bucket is full again: a fresh entry would say the same."""
    cdef int64_t elapsed = now - e.stamp if now > e.stamp else 0
    return e.count == 0 and e.tokens + elapsed * t.rate >= t.burst


cdef void source_delete(Sources *t, uint32_t i) noexcept nogil:
    """Free slot `i`, moving later entries of its cluster back into the hole."""
    cdef uint32_t j = i
    cdef uint32_t home
    t.slots[i].family = 0
    t.used -= 1
    while True:
        j = (j + 1) & t.mask
        if t.slots[j].family == 0:
            return
        home = source_home(t, t.slots[j].key, t.slots[j].family)
        if ((j - home) & t.mask) >= ((j - i) & t.mask):     # the hole lies on its probe path
            t.slots[i] = t.slots[j]
            t.slots[j].family = 0
            i = j


cdef SourceEntry *source_find(Sources *t, uint64_t key, uint8_t family, int64_t now,
                              bint insert) noexcept nogil:
    """The entry of a source (a new, full one with `insert`), or NULL. Stale
    entries met on the way are freed. The caller holds the lock."""
    cdef uint32_t i = source_home(t, key, family)
    cdef SourceEntry *e
    while True:
        e = &t.slots[i]
        if e.family == 0:
            break
        if e.key == key and e.family == family:
            return e
        if source_stale(t, e, now):
            source_delete(t, i)          # slot i now holds the next of the cluster, or nothing
            continue
        i = (i + 1) & t.mask
    if not insert:
        return NULL
    e.key = key
    e.family = family
    e.count = 0
    e.tokens = t.burst
    e.stamp = now
    t.used += 1
    return e


cdef void source_sweep(Sources *t, int64_t now, uint32_t n, bint evict) noexcept nogil:
    """Look at `n` slots from where the sweep stopped: free the stale ones, or
    with `evict` the first that holds no session (and stop there)."""
    cdef SourceEntry *e
    while n > 0:
        n -= 1
        e = &t.slots[t.sweep]
        if e.family != 0 and e.count == 0 and (evict or source_stale(t, e, now)):
            source_delete(t, t.sweep)    # look at this slot again: an entry may have moved in
            if evict:
                return
        else:
            t.sweep = (t.sweep + 1) & t.mask


cdef int source_take(Sources *t, uint8_t family, const uint8_t *addr,
                     int64_t now) noexcept nogil:
    """One more session for a source: SRC_OK (counted), SRC_RATE or SRC_COUNT."""
    cdef uint64_t key = source_key(family, addr)
    cdef SourceEntry *e
    cdef int verdict = SRC_COUNT            # also when the table is full (never, in practice)
    posix.pthread_mutex_lock(&t.lock)
    source_sweep(t, now, SWEEP_STEP, False)
    e = source_find(t, key, family, now, False)
    if e == NULL:
        if t.used >= t.max_used:
            source_sweep(t, now, SWEEP_EVICT, True)
        if t.used < t.max_used:
            e = source_find(t, key, family, now, True)
    if e != NULL:
        bucket_refill(t, e, now)
        if e.tokens < TOKEN:
            verdict = SRC_RATE
        else:
            e.tokens -= TOKEN
            if e.count < t.per_source:
                e.count += 1
                verdict = SRC_OK
    posix.pthread_mutex_unlock(&t.lock)
    return verdict


cdef void source_release(Sources *t, uint8_t family, const uint8_t *addr,
                         int64_t now) noexcept nogil:
    cdef SourceEntry *e
    posix.pthread_mutex_lock(&t.lock)
    e = source_find(t, source_key(family, addr), family, now, False)
    if e != NULL and e.count > 0:
        e.count -= 1
        if source_stale(t, e, now):
            source_delete(t, <uint32_t>(e - t.slots))
    posix.pthread_mutex_unlock(&t.lock)


cdef bint source_admit(Core *c, uint8_t family, const uint8_t *addr) noexcept nogil:
    """Per-source limits for a client just accepted; a refusal is counted."""
    cdef int verdict = source_take(c.sources, family, addr, c.now)
    if verdict == SRC_OK:
        return True
    c.st.refused += 1
    if verdict == SRC_RATE:
        c.st.refused_rate += 1
    else:
        c.st.refused_source += 1
    c.st.last_refused_family = family
    memcpy(c.st.last_refused, addr, 16)
    return False


# --- client I/O ----------------------------------------------------------------
# client_read / client_write return bytes moved (> 0), 0 at end of stream,
# -1 when the socket (or TLS) must wait for readiness, -2 on error.

cdef inline ssize_t sock_recv(int fd, uint8_t *p, size_t n) noexcept nogil:
    """recv() retried on EINTR: bytes (>= 0), -1 on EAGAIN, -2 on error (errno)."""
    cdef ssize_t r
    while True:
        r = posix.recv(fd, p, n, 0)
        if r >= 0:
            return r
        if posix.errno != posix.EINTR:
            return -1 if posix.errno == posix.EAGAIN else -2


cdef inline ssize_t sock_send(int fd, const uint8_t *p, size_t n) noexcept nogil:
    """send() without SIGPIPE, retried on EINTR: bytes, -1 on EAGAIN, -2 on error."""
    cdef ssize_t r
    while True:
        r = posix.send(fd, p, n, posix.MSG_NOSIGNAL)
        if r >= 0:
            return r
        if posix.errno != posix.EINTR:
            return -1 if posix.errno == posix.EAGAIN else -2


cdef ssize_t client_read(Core *c, Session *s, uint8_t *p, size_t n) noexcept nogil:
    cdef ssize_t r
    cdef size_t got = 0
    cdef int err
    if s.rec != NULL:
        r = record_read(&c.crypto, s.rec, s.fd, p, n)
        if r == -1:
            s.flags &= ~F_READABLE
        elif r == 0 and record_at_fin(s.rec):
            s.flags |= F_EOF
        if record_out_pending(s.rec) and s.flags & F_WRITABLE:    # a KeyUpdate we owe
            err = record_flush(&c.crypto, s.rec, s.fd)
            if err == -1:
                s.flags &= ~F_WRITABLE
            elif err == -2:
                return -2
        return r
    if s.ssl == NULL:
        r = sock_recv(s.fd, p, n)
        if r == -1:
            s.flags &= ~F_READABLE
        elif r == 0:
            s.flags |= F_EOF
        return r
    if openssl.SSL_read_ex(s.ssl, p, n, &got) == 1:
        if s.capture != NULL:
            take_over(c, s)             # what was read ahead is out (see take_over)
        return <ssize_t>got
    err = openssl.SSL_get_error(s.ssl, 0)
    if err == openssl.SSL_ERROR_WANT_READ:
        s.flags &= ~F_READABLE
        if s.capture != NULL:
            take_over(c, s)
        return -1
    if err == openssl.SSL_ERROR_WANT_WRITE:
        s.flags &= ~(F_READABLE | F_WRITABLE)    # the socket refused what SSL_read wrote
        s.flags |= F_READ_WANTS_WRITE
        return -1
    openssl.ERR_clear_error()
    return 0 if err == openssl.SSL_ERROR_ZERO_RETURN else -2


cdef ssize_t client_write(Core *c, Session *s, const uint8_t *p, size_t n) noexcept nogil:
    cdef ssize_t r
    cdef size_t done = 0
    cdef int err
    if s.rec != NULL:
        r = record_write(&c.crypto, s.rec, s.fd, p, n)
        if r == -1 or (r > 0 and record_out_pending(s.rec)):
            s.flags &= ~F_WRITABLE           # the socket said EAGAIN
        return r
    if s.ssl == NULL:
        r = sock_send(s.fd, p, n)
        if r == -1:
            s.flags &= ~F_WRITABLE
        return r
    if openssl.SSL_write_ex(s.ssl, p, n, &done) == 1:
        return <ssize_t>done
    err = openssl.SSL_get_error(s.ssl, 0)
    if err == openssl.SSL_ERROR_WANT_WRITE:
        s.flags &= ~F_WRITABLE
        return -1
    if err == openssl.SSL_ERROR_WANT_READ:
        return -1               # retried at the session's next event
    openssl.ERR_clear_error()
    return -2


# --- session life --------------------------------------------------------------

cdef void peer_of(posix.sockaddr_storage *sa, Peer *peer) noexcept nogil:
    """The client's family, address and port, as OPEN carries them (into `peer`)."""
    cdef posix.sockaddr_in *sin
    cdef posix.sockaddr_in6 *sin6
    memset(peer.addr, 0, 16)
    if sa.ss_family == posix.AF_INET:
        sin = <posix.sockaddr_in *>sa
        peer.family = 4
        memcpy(peer.addr, &sin.sin_addr.s_addr, 4)
        peer.port = posix.ntohs(sin.sin_port)
    else:
        sin6 = <posix.sockaddr_in6 *>sa
        peer.port = posix.ntohs(sin6.sin6_port)
        if is_v4_mapped(sin6.sin6_addr.s6_addr):
            peer.family = 4
            memcpy(peer.addr, sin6.sin6_addr.s6_addr + 12, 4)
        else:
            peer.family = 6
            memcpy(peer.addr, sin6.sin6_addr.s6_addr, 16)


cdef Session *session_new(Core *c, int fd, Peer *peer) noexcept nogil:
    cdef Session *s = <Session *>calloc(1, sizeof(Session))
    cdef epoll.epoll_event ev
    if s == NULL:
        return NULL
    s.fd = fd
    s.flags = F_WRITABLE
    s.all_node.owner = s
    s.run_node.owner = s
    s.timer_node.owner = s
    s.family = peer.family
    memcpy(s.addr, peer.addr, 16)
    s.port = peer.port
    ev.events = epoll.EPOLLIN | epoll.EPOLLOUT | epoll.EPOLLRDHUP | epoll.EPOLLET
    ev.data.ptr = s
    if epoll.epoll_ctl(c.ep, epoll.EPOLL_CTL_ADD, fd, &ev) < 0:
        free(s)
        return NULL
    ring_push(&c.all, &s.all_node)
    return s


cdef inline bint is_v4_mapped(const uint8_t *a) noexcept nogil:
    cdef int i
    for i in range(10):
        if a[i] != 0:
            return False
    return a[10] == 0xff and a[11] == 0xff


cdef int session_open(Core *c, Session *s, uint8_t transport, const char *version,
                      const char *cipher) noexcept nogil:
    """Give `s` an id and send OPEN (docs/muxlink.md "Sessions"); -1: no id left."""
    cdef size_t vlen = smin(strlen(version), 255) if version != NULL else 0
    cdef size_t clen = smin(strlen(cipher), 255) if cipher != NULL else 0
    cdef uint8_t *p
    if table_add(c, s) < 0:
        return -1
    s.state = S_OPEN
    s.credit = c.window
    s.peer_credit = c.window
    c.st.opened += 1
    if transport:
        c.st.sessions_tls += 1
    else:
        c.st.sessions_plain += 1
    p = frame_out(c, T_OPEN, s.id, 24 + vlen + clen)
    if p == NULL:
        return 0
    p[0] = s.family
    memcpy(p + 1, s.addr, 16)
    put_u16(p + 17, s.port)
    put_u16(p + 19, c.local_port)
    p[21] = transport
    p[22] = <uint8_t>vlen
    memcpy(p + 23, version, vlen)
    p[23 + vlen] = <uint8_t>clen
    memcpy(p + 24 + vlen, cipher, clen)
    return 0


cdef void session_free(Core *c, Session *s, int upstream_reason, bint tls_notify) noexcept nogil:
    """Close the client and forget it; with `upstream_reason` >= 0 an open
    session also sends CLOSE with that reason."""
    cdef uint8_t *p
    if s.state == S_OPEN or s.state == S_CLOSING:
        if s.state == S_OPEN and upstream_reason >= 0 and c.exit == RUNNING:
            p = frame_out(c, T_CLOSE, s.id, 1)
            if p != NULL:
                p[0] = <uint8_t>upstream_reason
        table_del(c, s)
        c.st.closed += 1
        if is_tls(s):
            c.st.sessions_tls -= 1
        else:
            c.st.sessions_plain -= 1
    elif s.state == S_HANDSHAKE:
        c.st.handshaking -= 1
    dequeue(c, s)
    ring_unlink(&s.all_node)
    ring_unlink(&s.timer_node)
    capture_free(s.ssl, s.capture)
    if s.ssl != NULL:
        if tls_notify and s.state != S_HANDSHAKE:
            openssl.SSL_shutdown(s.ssl)          # close_notify, best effort
        openssl.SSL_free(s.ssl)
        openssl.ERR_clear_error()
    if s.rec != NULL:
        record_free(&c.crypto, s.rec, s.fd, tls_notify)   # close_notify, best effort
        c.st.sessions_tls_lean -= 1
    if not (s.flags & F_EOF):
        discard_input(s.fd)
    posix.close(s.fd)                            # also leaves the epoll set
    c.st.buffered -= s.out.cap
    buf_free(&s.out)
    limit_release(c)
    if s.counted:
        source_release(c.sources, s.family, s.addr, c.now)
    free(s)


cdef void server_closed(Core *c, Session *s) noexcept nogil:
    """CLOSE from the server: forget the id now, close once output drained."""
    table_del(c, s)
    if not out_pending(s):
        session_free(c, s, NO_CLOSE, True)
        return
    s.state = S_CLOSING
    # Stay queued: an EPOLLOUT edge taken earlier in this turn is the only
    # one coming, and service() is what flushes the rest.
    if s.flags & F_WRITABLE:
        queue_run(c, s)
    s.deadline = c.now + c.linger_ms
    ring_push(&c.lingering, &s.timer_node)


# --- accepting -----------------------------------------------------------------

cdef void accept_clients(Core *c) noexcept nogil:
    cdef posix.sockaddr_storage sa
    cdef posix.socklen_t salen
    cdef int i, fd, err
    cdef Session *s
    cdef Peer peer
    for i in range(ACCEPT_BUDGET):
        salen = sizeof(sa)
        fd = posix.accept4(c.listen_fd, <posix.sockaddr *>&sa, &salen,
                           posix.SOCK_NONBLOCK | posix.SOCK_CLOEXEC)
        if fd < 0:
            err = posix.errno
            if err == posix.EINTR or err == posix.ECONNABORTED or err == posix.EPROTO:
                continue
            if (err == posix.EMFILE or err == posix.ENFILE) and refuse_with_spare(c):
                continue
            c.listen_ready = False
            return
        if not limit_take(c):
            c.st.refused += 1                    # counted before the client can see it
            posix.close(fd)
            continue
        peer_of(&sa, &peer)
        if c.sources != NULL and not source_admit(c, peer.family, peer.addr):
            posix.close(fd)                      # at once: nothing read, nothing allocated
            limit_release(c)
            continue
        s = session_new(c, fd, &peer)
        if s == NULL:
            c.st.refused += 1
            posix.close(fd)
            limit_release(c)
            if c.sources != NULL:
                source_release(c.sources, peer.family, peer.addr, c.now)
            continue
        s.counted = c.sources != NULL
        client_nodelay(c, fd)
        if c.tls_enabled:
            start_tls(c, s)
        elif session_open(c, s, 0, NULL, NULL) < 0:
            session_free(c, s, NO_CLOSE, False)
            return


cdef bint refuse_with_spare(Core *c) noexcept nogil:
    """Out of descriptors: give up the spare one to accept and close a
    client (else it would sit in the backlog and the edge would never come
    back). False when the spare is gone too."""
    cdef int fd
    if c.spare_fd < 0:
        return False
    posix.close(c.spare_fd)
    fd = posix.accept4(c.listen_fd, NULL, NULL, posix.SOCK_CLOEXEC)
    if fd >= 0:
        c.st.refused += 1
        posix.close(fd)
    c.spare_fd = posix.open(b"/dev/null", posix.O_RDONLY | posix.O_CLOEXEC)
    return fd >= 0


cdef void start_tls(Core *c, Session *s) noexcept nogil:
    """A legacy-SSL client: its handshake deadline starts now; its SSL object
    only when it becomes readable (tls_begin), so a client that connects
    and says nothing costs its Session, not the ~50 KiB of an SSL object
    that has tried to read."""
    s.state = S_HANDSHAKE
    c.st.handshaking += 1
    s.deadline = c.now + c.handshake_ms
    ring_push(&c.handshakes, &s.timer_node)


cdef int tls_begin(Core *c, Session *s) noexcept nogil:
    """Make the SSL object once the client is readable (its first bytes, or
    its end, which the handshake then reports): 1 done, 0 not readable yet
    (the writable edge every new socket raises: no syscall spent on it),
    -1 the session is gone (no memory)."""
    if not (s.flags & F_READABLE):
        return 0
    posix.pthread_mutex_lock(&c.ctx_lock)
    s.ssl = openssl.SSL_new(c.ctx)
    posix.pthread_mutex_unlock(&c.ctx_lock)
    if s.ssl == NULL or openssl.SSL_set_fd(s.ssl, s.fd) != 1:
        c.st.handshakes_failed += 1
        session_free(c, s, NO_CLOSE, False)
        return -1
    openssl.SSL_set_accept_state(s.ssl)
    # What iim/_tlsrecord.pyx needs to take the session over after the handshake;
    # without it (no memory) the session simply keeps its SSL object.
    s.capture = <Capture *>calloc(1, sizeof(Capture))
    if s.capture != NULL and capture_attach(s.ssl, s.capture) < 0:
        capture_free(NULL, s.capture)
        s.capture = NULL
    return 1


cdef void take_over(Core *c, Session *s) noexcept nogil:
    """After the handshake: our record layer instead of the SSL object, when it
    can. Not while OpenSSL holds bytes it read ahead (they are the client's first
    records, or part of one), nor while it holds a record the socket refused (its
    bytes wait in s.out to be passed again: sealing them anew under the next
    sequence number would cut the client's stream): the session stays OpenSSL's,
    with its Capture, and client_read and flush_out try again. A client that
    keeps part of a record back keeps its SSL object meanwhile (~30 KB with
    OpenSSL's read buffer, as a session on a CBC suite does; per-source limits
    and maxsessions bound how many)."""
    if openssl.SSL_has_pending(s.ssl) or buf_len(&s.out) > 0:
        return
    s.rec = record_take(&c.crypto, s.ssl, s.capture)
    capture_free(s.ssl, s.capture)
    s.capture = NULL
    if s.rec != NULL:
        # Freed without a shutdown, OpenSSL would drop the session from its cache
        # (a TLS 1.2 session id could not resume); this sends nothing.
        openssl.SSL_set_shutdown(s.ssl, openssl.SSL_SENT_SHUTDOWN | openssl.SSL_RECEIVED_SHUTDOWN)
        openssl.SSL_free(s.ssl)
        openssl.ERR_clear_error()
        s.ssl = NULL
        c.st.sessions_tls_lean += 1


cdef void handshake_step(Core *c, Session *s) noexcept nogil:
    cdef int r
    cdef int err
    if s.ssl == NULL and tls_begin(c, s) <= 0:
        return
    r = openssl.SSL_do_handshake(s.ssl)
    if r == 1:
        if session_open(c, s, 1, openssl.SSL_get_version(s.ssl), openssl.SSL_CIPHER_get_name(
                openssl.SSL_get_current_cipher(s.ssl))) < 0:
            session_free(c, s, NO_CLOSE, False)
            return
        take_over(c, s)
        ring_unlink(&s.timer_node)
        c.st.handshaking -= 1
        c.st.handshakes_ok += 1
        s.flags |= F_READABLE        # records may follow the handshake at once
        queue_run(c, s)
        return
    err = openssl.SSL_get_error(s.ssl, r)
    if err == openssl.SSL_ERROR_WANT_READ:
        s.flags &= ~F_READABLE
    elif err == openssl.SSL_ERROR_WANT_WRITE:
        s.flags &= ~F_WRITABLE
    else:
        openssl.ERR_clear_error()
        c.st.handshakes_failed += 1
        session_free(c, s, NO_CLOSE, False)


# --- moving bytes ----------------------------------------------------------------

cdef void pump_in(Core *c, Session *s) noexcept nogil:
    """Client -> link: read straight into the link output buffer as DATA."""
    cdef size_t budget = READ_BUDGET
    cdef size_t want
    cdef ssize_t n
    cdef uint8_t *p
    s.flags &= ~F_READ_WANTS_WRITE
    while s.credit > 0:
        if budget == 0:
            queue_run(c, s)
            return
        if buf_len(&c.lout) >= LINK_HIGH:
            queue_linkwait(c, s)
            return
        want = smin(smin(<size_t>s.credit, MAX_PAYLOAD), budget)
        if buf_reserve(&c.lout, HEADER + want, 0) < 0:
            core_fail(c, X_NOMEM, 0, "no memory for the link output buffer")
            return
        p = c.lout.data + c.lout.tail
        n = client_read(c, s, p + HEADER, want)
        if n == -1:
            return
        if n <= 0:
            session_free(c, s, R_NORMAL, False)
            return
        put_header(p, T_DATA, s.id, <uint32_t>n)
        c.lout.tail += HEADER + n
        c.lout_urgent = True
        c.st.frames_out += 1
        c.st.bytes_up += n
        s.credit -= n
        budget -= n
        # A short plain read drained the socket (our record layer says so of
        # its own recv): new data raises a new edge. Not so for a pending EOF
        # reported in the same edge (F_RDHUP): read on.
        if not (s.flags & F_RDHUP) and (
                (<size_t>n < want and not is_tls(s))
                or (s.rec != NULL and record_drained(s.rec))):
            s.flags &= ~F_READABLE
            return


cdef inline bint is_tls(Session *s) noexcept nogil:
    """An open legacy-SSL session: OpenSSL's or our record layer."""
    return s.ssl != NULL or s.rec != NULL


cdef inline bint out_pending(Session *s) noexcept nogil:
    """Bytes for the client still to go: the output buffer, or sealed records."""
    return buf_len(&s.out) > 0 or (s.rec != NULL and record_out_pending(s.rec))


cdef void granted(Core *c, Session *s, size_t n) noexcept nogil:
    """`n` bytes reached the client: grant them back, half a window at a time."""
    cdef uint8_t *p
    if s.state != S_OPEN:
        return
    s.ungranted += n
    if s.ungranted >= c.grant_threshold:
        p = frame_out(c, T_WINDOW, s.id, 4)
        if p != NULL:
            put_u32(p, <uint32_t>s.ungranted)
        s.peer_credit += s.ungranted
        s.ungranted = 0


cdef int flush_out(Core *c, Session *s) noexcept nogil:
    """Write the session's pending output; -1 when the session is gone."""
    cdef ssize_t n
    while buf_len(&s.out) > 0:
        n = client_write(c, s, s.out.data + s.out.head, buf_len(&s.out))
        if n == -1:
            return 0
        if n <= 0:
            session_free(c, s, R_NORMAL, False)
            return -1
        buf_consumed(&s.out, n)
        granted(c, s, n)
    if s.capture != NULL and s.ssl != NULL and s.state == S_OPEN:
        take_over(c, s)                          # it waited for s.out to drain
    if s.rec != NULL and record_out_pending(s.rec):
        if s.flags & F_WRITABLE:
            n = record_flush(&c.crypto, s.rec, s.fd)
            if n == -2:
                session_free(c, s, R_NORMAL, False)
                return -1
            if n == -1:
                s.flags &= ~F_WRITABLE
        if record_out_pending(s.rec):
            return 0                             # the EPOLLOUT edge brings us back
    c.st.buffered -= s.out.cap
    buf_free(&s.out)
    if s.state == S_CLOSING:
        session_free(c, s, NO_CLOSE, True)
        return -1
    return 0


cdef void deliver(Core *c, Session *s, const uint8_t *p, uint32_t n) noexcept nogil:
    """Server DATA -> client: write it now; keep only what the socket refuses."""
    cdef ssize_t w = 0
    cdef ssize_t r
    cdef size_t cap
    if n > s.peer_credit:
        protocol_error(c, "DATA beyond the granted window")
        return
    s.peer_credit -= n
    c.st.bytes_down += n
    if buf_len(&s.out) == 0:
        # Write until done or refused: one SSL_write moves one record, and
        # only a refusal brings the edge that would resume the rest.
        while <uint32_t>w < n and s.flags & F_WRITABLE:
            r = client_write(c, s, p + w, n - w)
            if r == -1:
                break
            if r <= 0:
                session_free(c, s, R_NORMAL, False)
                return
            w += r
    if <uint32_t>w < n:
        cap = s.out.cap
        if buf_reserve(&s.out, n - w, c.window) < 0:
            core_fail(c, X_NOMEM, 0, "no memory for a client output buffer")
            return
        c.st.buffered += s.out.cap - cap
        memcpy(s.out.data + s.out.tail, p + w, n - w)
        s.out.tail += n - w
    if w > 0:
        granted(c, s, w)


cdef void service(Core *c, Session *s) noexcept nogil:
    """Act on what the session's remembered readiness allows."""
    if s.flags & F_ERROR:
        if s.state == S_HANDSHAKE:
            c.st.handshakes_failed += 1
        session_free(c, s, R_NORMAL, False)
        return
    if s.state == S_HANDSHAKE:
        handshake_step(c, s)
        return
    if out_pending(s) and s.flags & F_WRITABLE:
        if flush_out(c, s) < 0:
            return
    if s.state == S_OPEN and s.credit > 0 and (
            s.flags & F_READABLE or (s.flags & F_READ_WANTS_WRITE and s.flags & F_WRITABLE)):
        pump_in(c, s)


cdef void session_event(Core *c, Session *s, uint32_t ev) noexcept nogil:
    if ev & epoll.EPOLLERR:
        s.flags |= F_ERROR
    if ev & (epoll.EPOLLIN | epoll.EPOLLRDHUP | epoll.EPOLLHUP):
        s.flags |= F_READABLE
    if ev & (epoll.EPOLLRDHUP | epoll.EPOLLHUP):
        s.flags |= F_RDHUP
    if ev & (epoll.EPOLLOUT | epoll.EPOLLHUP):
        s.flags |= F_WRITABLE
    queue_run(c, s)


cdef void run_queue(Core *c) noexcept nogil:
    """Service the sessions queued when the turn began (requeued ones wait)."""
    cdef int64_t n = c.runq_len
    cdef Session *s
    while n > 0 and c.runq_len > 0 and c.exit == RUNNING:
        s = ring_first(&c.runq)
        dequeue(c, s)
        service(c, s)
        n -= 1


# --- the link ------------------------------------------------------------------

cdef void link_frame(Core *c, uint8_t ftype, uint32_t sid, const uint8_t *p,
                     uint32_t n) noexcept nogil:
    """One frame from the server (its header already checked by parse_frames)."""
    cdef Session *s
    cdef uint8_t *q
    c.st.frames_in += 1
    c.last_rx = c.now
    if ftype == T_DATA or ftype == T_WINDOW or ftype == T_CLOSE:
        if sid >= c.next_id:
            protocol_error(c, "frame for a session id never opened")
            return
        if (ftype == T_WINDOW and n != 4) or (ftype == T_CLOSE and n < 1) or (
                ftype == T_DATA and n == 0):
            protocol_error(c, "bad DATA, WINDOW or CLOSE payload length")
            return
        s = table_get(c, sid)
        if s == NULL:
            return    # we ended it and the server had not yet seen our CLOSE
        if ftype == T_DATA:
            deliver(c, s, p, n)
        elif ftype == T_WINDOW:
            if s.credit + get_u32(p) > 0xffffffffL:
                protocol_error(c, "WINDOW raises the credit above 2^32-1")
                return
            s.credit += get_u32(p)
            if s.flags & F_READABLE:
                queue_run(c, s)
        else:
            server_closed(c, s)
    elif ftype == T_PING:
        if n != 8:
            protocol_error(c, "PING payload is not 8 bytes")
            return
        q = frame_out(c, T_PONG, 0, 8)
        if q != NULL:
            memcpy(q, p, 8)
    elif ftype == T_PONG:
        if n != 8:
            protocol_error(c, "PONG payload is not 8 bytes")
        elif c.ping_sent and memcmp(p, c.ping_payload, 8) == 0:
            c.ping_sent = 0
    elif ftype == T_LINKCLOSE:
        c.peer_reason = p[0] if n else -1
        core_fail(c, X_LINK_CLOSED, 0, "")
        snprintf(c.detail, sizeof(c.detail), "%.*s", <int>smin(n - 1 if n else 0, 200),
                 <const char *>(p + 1))
    else:
        protocol_error(c, "unexpected frame type after set-up")


cdef bint header_ok(Core *c, const uint8_t *h, uint32_t length) noexcept nogil:
    """The checks a header gets as soon as its 12 bytes are in (docs/muxlink.md)."""
    cdef uint8_t ftype = h[0]
    cdef bint session_frame = ftype >= T_OPEN
    if not (T_HELLO <= ftype <= T_PONG or T_OPEN <= ftype <= T_WINDOW):
        protocol_error(c, "unknown frame type")
    elif length > MAX_PAYLOAD:
        protocol_error(c, "frame longer than 65536 bytes")
    elif h[1] or h[2] or h[3]:
        protocol_error(c, "non-zero flags or reserved bytes")
    elif session_frame != (get_u32(h + 4) != 0):
        protocol_error(c, "session id 0 on a session frame, or not 0 on a link frame")
    else:
        return True
    return False


cdef void parse_frames(Core *c) noexcept nogil:
    cdef uint8_t *h
    cdef uint32_t length
    while c.exit == RUNNING and buf_len(&c.lin) >= HEADER:
        h = c.lin.data + c.lin.head
        length = get_u32(h + 8)
        if not header_ok(c, h, length):
            return
        if buf_len(&c.lin) < HEADER + length:
            return
        link_frame(c, h[0], get_u32(h + 4), h + HEADER, length)
        buf_consumed(&c.lin, HEADER + length)


cdef ssize_t link_recv(Core *c, uint8_t *p, size_t n) noexcept nogil:
    """Read the link (through TLS when it has it): bytes read (> 0), 0 at its
    end, -1 when it must wait for readiness, -2 on error (errno, or TLS)."""
    cdef ssize_t r
    cdef size_t got = 0
    cdef int err
    if c.link_ssl == NULL:
        return sock_recv(c.link_fd, p, n)
    if openssl.SSL_read_ex(c.link_ssl, p, n, &got) == 1:
        return <ssize_t>got
    err = openssl.SSL_get_error(c.link_ssl, 0)
    if err == openssl.SSL_ERROR_WANT_READ:
        return -1
    if err == openssl.SSL_ERROR_WANT_WRITE:     # e.g. answering a KeyUpdate
        c.link_read_wants_write = True
        c.link_writable = False
        return -1
    openssl.ERR_clear_error()
    if err == openssl.SSL_ERROR_ZERO_RETURN or (err == openssl.SSL_ERROR_SYSCALL
                                                 and posix.errno == 0):
        return 0
    posix.errno = 0 if err == openssl.SSL_ERROR_SSL else posix.errno
    return -2


cdef ssize_t link_send(Core *c, const uint8_t *p, size_t n) noexcept nogil:
    """Write the link: bytes written (> 0), -1 wait for readiness, -2 error.
    TLS retries pass the same bytes again (moving buffers are allowed)."""
    cdef ssize_t r
    cdef size_t done = 0
    cdef int err
    if c.link_ssl == NULL:
        r = sock_send(c.link_fd, p, n)
        return -2 if r == 0 else r
    if openssl.SSL_write_ex(c.link_ssl, p, n, &done) == 1:
        return <ssize_t>done
    err = openssl.SSL_get_error(c.link_ssl, 0)
    if err == openssl.SSL_ERROR_WANT_WRITE or err == openssl.SSL_ERROR_WANT_READ:
        return -1
    openssl.ERR_clear_error()
    posix.errno = 0 if err == openssl.SSL_ERROR_SSL else posix.errno
    return -2


cdef void link_read(Core *c) noexcept nogil:
    cdef size_t budget = LINK_READ_BUDGET
    cdef size_t want
    cdef ssize_t r
    while budget > 0 and c.exit == RUNNING:
        if buf_reserve(&c.lin, HEADER + MAX_PAYLOAD, 0) < 0:
            core_fail(c, X_NOMEM, 0, "no memory for the link input buffer")
            return
        want = c.lin.cap - c.lin.tail
        r = link_recv(c, c.lin.data + c.lin.tail, want)
        if r > 0:
            c.lin.tail += r
            c.st.link_reads += 1
            if c.lin.cap > LINK_KEEP:
                c.link_busy_ms = c.now
            budget -= smin(<size_t>r, budget)
            parse_frames(c)
            # A short read of the plain link drained its socket: bytes that come
            # later raise a new edge, so the recv() that would say EAGAIN is saved
            # (one syscall per link read). Not through TLS, whose reads stop at
            # a record's end.
            if <size_t>r < want and c.link_ssl == NULL:
                c.link_readable = False
                return
        elif r == 0:
            core_fail(c, X_LINK_LOST, 0, "the server closed the connection")
        elif r == -1:
            c.link_readable = False
            return
        else:
            core_fail(c, X_LINK_LOST, posix.errno,
                      "reading the link" if c.link_ssl == NULL or posix.errno
                      else "reading the link: TLS failure")


cdef int64_t close_wait_ms(size_t pending, bint urgent, bint writable, int64_t since_us,
                           int64_t delay_us, int64_t now) noexcept nogil:
    """Milliseconds until lazy CLOSEs (lout_may_wait) are due, 0 when they are,
    -1 when they set no deadline: nothing waiting, a frame that must go (the
    turn sends them all), or a link that refused them (EAGAIN): its EPOLLOUT
    edge brings the next turn, and a deadline already due would spin the loop."""
    if pending == 0 or urgent or not writable:
        return -1
    return max(0, (since_us + delay_us - now + 999) // 1000)


def close_wait(size_t pending, bint urgent, bint writable, int64_t since_us, int64_t delay_us,
               int64_t now):
    """close_wait_ms for tests: None where it sets no deadline."""
    cdef int64_t ms = close_wait_ms(pending, urgent, writable, since_us, delay_us, now)
    return None if ms < 0 else ms


cdef inline bint lout_may_wait(Core *c) noexcept nogil:
    """Lazy CLOSE: a link output of nothing but CLOSE frames is in no hurry.
    Nobody waits for a CLOSE (the client has gone; the server only forgets
    the id), so rather than one send (and one wakeup of the server) per
    departing client, CLOSEs wait up to close_delay (2 ms) for the next frame
    that must go, or until CLOSE_BATCH bytes of them are queued. Order is
    kept: they leave first, with whatever joins them. (close_wait_ms is the rule;
    a link that refused them is not asked here: link_flush stops for it anyway.)"""
    return buf_len(&c.lout) < CLOSE_BATCH and close_wait_ms(
        buf_len(&c.lout), c.lout_urgent, True, c.lout_since_us, c.close_delay_us, now_us()) > 0


cdef void link_flush(Core *c) noexcept nogil:
    cdef ssize_t r
    cdef Session *s
    while (buf_len(&c.lout) > 0 and c.link_writable and c.exit == RUNNING
           and not lout_may_wait(c)):
        r = link_send(c, c.lout.data + c.lout.head, buf_len(&c.lout))
        if r > 0:
            buf_consumed(&c.lout, r)
            c.st.link_writes += 1
            if c.lout.cap > LINK_KEEP:
                c.link_busy_ms = c.now
            if buf_len(&c.lout) == 0:
                c.lout_urgent = False
        elif r == -1:
            c.link_writable = False
        else:
            core_fail(c, X_LINK_LOST, posix.errno,
                      "writing the link" if c.link_ssl == NULL or posix.errno
                      else "writing the link: TLS failure")
            return
    if buf_len(&c.lout) < LINK_LOW:
        while not ring_empty(&c.linkwait):
            queue_run(c, ring_first(&c.linkwait))


cdef void link_drain(Core *c, int64_t ms) noexcept nogil:
    """At the end: send what is left (a LINKCLOSE at least), for up to `ms`."""
    cdef int64_t deadline = now_ms() + ms
    cdef int64_t left
    cdef ssize_t r
    cdef posix.pollfd pfd
    pfd.fd = c.link_fd
    pfd.events = posix.POLLOUT | posix.POLLIN
    while buf_len(&c.lout) > 0:
        r = link_send(c, c.lout.data + c.lout.head, buf_len(&c.lout))
        if r > 0:
            buf_consumed(&c.lout, r)
            continue
        left = deadline - now_ms()
        if r == -2 or left <= 0:
            return
        posix.poll(&pfd, 1, <int>left)


cdef void link_linger(Core *c, int64_t ms) noexcept nogil:
    """After our LINKCLOSE: read and discard until the server closes its end
    (at most `ms`), so a TCP reset cannot destroy the LINKCLOSE unread."""
    cdef int64_t deadline = now_ms() + ms
    cdef int64_t left
    cdef ssize_t r
    cdef uint8_t scratch[4096]
    cdef posix.pollfd pfd
    pfd.fd = c.link_fd
    pfd.events = posix.POLLIN
    while True:
        r = link_recv(c, scratch, sizeof(scratch))
        if r > 0:
            continue
        left = deadline - now_ms()
        if r != -1 or left <= 0:
            return
        posix.poll(&pfd, 1, <int>left)


# --- timers ----------------------------------------------------------------------

cdef void run_timers(Core *c) noexcept nogil:
    cdef Session *s
    cdef uint8_t *p
    while not ring_empty(&c.handshakes):
        s = ring_first(&c.handshakes)
        if s.deadline > c.now:
            break
        c.st.handshakes_failed += 1
        session_free(c, s, NO_CLOSE, False)
    while not ring_empty(&c.lingering):
        s = ring_first(&c.lingering)
        if s.deadline > c.now:
            break
        session_free(c, s, NO_CLOSE, False)
    if c.keepalive_ms <= 0:
        return
    if c.ping_sent:
        if c.now - c.ping_sent >= c.keepalive_ms:
            link_close_frame(c, R_TIMEOUT, b"no answer to PING")
            core_fail(c, X_TIMEOUT, 0, "no answer to PING")
    elif c.now - c.last_rx >= c.keepalive_ms:
        put_u32(c.ping_payload, <uint32_t>(c.now >> 32))
        put_u32(c.ping_payload + 4, <uint32_t>c.now)
        p = frame_out(c, T_PING, 0, 8)
        if p != NULL:
            memcpy(p, c.ping_payload, 8)
        c.ping_sent = c.now


cdef inline bint work_pending(Core *c) noexcept nogil:
    """Work the last turn left (a session over its read budget, link input or
    clients to accept beyond this turn's share): the next turn must not wait."""
    return c.link_readable or c.listen_ready or c.runq_len > 0


cdef int next_timeout(Core *c) noexcept nogil:
    """Milliseconds epoll may sleep: 0 while work is pending, else until the
    earliest deadline (at most a minute)."""
    cdef int64_t t = 60000
    cdef int64_t wait
    if work_pending(c):
        return 0
    if c.keepalive_ms > 0:
        t = (c.ping_sent if c.ping_sent else c.last_rx) + c.keepalive_ms - c.now
    if not ring_empty(&c.handshakes) and ring_first(&c.handshakes).deadline - c.now < t:
        t = ring_first(&c.handshakes).deadline - c.now
    if not ring_empty(&c.lingering) and ring_first(&c.lingering).deadline - c.now < t:
        t = ring_first(&c.lingering).deadline - c.now
    wait = close_wait_ms(buf_len(&c.lout), c.lout_urgent, c.link_writable,
                         c.lout_since_us, c.close_delay_us, now_us())
    if wait >= 0 and wait < t:
        t = wait
    if (c.lout.cap > LINK_KEEP or c.lin.cap > LINK_KEEP) and (
            c.link_busy_ms + LINK_IDLE_MS - c.now < t):
        t = c.link_busy_ms + LINK_IDLE_MS - c.now
    if t < 0:
        return 0
    return <int>(t if t < 60000 else 60000)


# --- the loop ----------------------------------------------------------------------

cdef void dispatch(Core *c, epoll.epoll_event *ev) noexcept nogil:
    """Phase 1: remember readiness; no I/O, nothing freed."""
    cdef uint64_t tag = ev.data.u64
    cdef epoll.eventfd_t value
    if tag == TAG_LINK:
        if ev.events & (epoll.EPOLLIN | epoll.EPOLLRDHUP | epoll.EPOLLHUP | epoll.EPOLLERR):
            c.link_readable = True
        if ev.events & (epoll.EPOLLOUT | epoll.EPOLLHUP | epoll.EPOLLERR):
            c.link_writable = True
            if c.link_read_wants_write:
                c.link_read_wants_write = False
                c.link_readable = True
    elif tag == TAG_LISTEN:
        c.listen_ready = True
    elif tag == TAG_WAKE:
        epoll.eventfd_read(c.wake_fd, &value)
    else:
        session_event(c, <Session *>ev.data.ptr, ev.events)


cdef inline bint stopping(Core *c) noexcept nogil:
    return posix.__atomic_load_n(&c.stop, posix.__ATOMIC_SEQ_CST) != 0


cdef void release_idle_link_buffers(Core *c) noexcept nogil:
    """A burst may grow the link buffers to megabytes (output up to LINK_HIGH
    and one more read); an empty one larger than LINK_KEEP that no read or
    send has used for LINK_IDLE_MS is freed (the next use allocates it again,
    small)."""
    if c.lout.cap <= LINK_KEEP and c.lin.cap <= LINK_KEEP:
        return
    if c.now - c.link_busy_ms < LINK_IDLE_MS:
        return
    if buf_len(&c.lout) == 0 and c.lout.cap > LINK_KEEP:
        buf_free(&c.lout)
        c.st.link_buffers_released += 1
    if buf_len(&c.lin) == 0 and c.lin.cap > LINK_KEEP:
        buf_free(&c.lin)
        c.st.link_buffers_released += 1


cdef enum:
    PACE_GAP_CAP = 10           # a quiet spell counts as at most this many delays
    PACE_BULK = 8192            # bytes per unit of work from which no pause pays


# Work expected per delay to begin pausing, and below which to stop. A round
# trip is about two and a half (the client's bytes, the server's answer, now
# and then a WINDOW). In the bench (2,000 sessions, 2 threads, 1 ms; bench/MUX.md)
# pausing cost ~10 % more CPU at 2 round trips per delay per thread and saved
# 40 % at 4; the hysteresis keeps a relay near the border from switching at
# every turn.
cdef double PACE_ENTER = 8.0
cdef double PACE_LEAVE = 6.0
cdef double PACE_DECAY = 0.875  # the weight of the past at each busy turn


cdef int64_t pacer_turn(Pacer *p, int work, uint64_t moved, int64_t turn_us) noexcept nogil:
    """A turn that began at `turn_us` did `work` (clients that became ready,
    frames from the server) and relayed `moved` bytes: microseconds to pause
    after it (counted from its start), or 0 to block for the next event at once."""
    cdef int64_t gap
    cdef double expected
    if p.delay_us <= 0:
        return 0
    if p.last_us > 0:
        gap = min(turn_us - p.last_us, PACE_GAP_CAP * p.delay_us)
        p.events = p.events * PACE_DECAY + work
        p.bytes = p.bytes * PACE_DECAY + <double>moved
        p.span_us = p.span_us * PACE_DECAY + (gap if gap > 0 else 1)
        expected = p.events * p.delay_us / p.span_us
        p.on = (expected >= (PACE_LEAVE if p.on else PACE_ENTER)
                and p.bytes < PACE_BULK * p.events)
    p.last_us = turn_us
    return p.delay_us if p.on else 0


def pacer_pauses(int delay_us, turns):
    """The Pacer's answers to a sequence of busy turns, for tests: `turns` are
    (work, bytes relayed, start in microseconds); each answer is the pause after
    that turn (microseconds from its start), 0 for none."""
    cdef Pacer p
    memset(&p, 0, sizeof(p))
    p.delay_us = delay_us
    return [pacer_turn(&p, work, moved, start) for work, moved, start in turns]


cdef void pace(Core *c, int64_t us) noexcept nogil:
    """Let `us` microseconds pass before the next turn; stop() (wake_fd) ends it."""
    cdef posix.pollfd wake
    cdef posix.timespec ts
    wake.fd = c.wake_fd
    wake.events = posix.POLLIN
    wake.revents = 0
    ts.tv_sec = us // 1000000
    ts.tv_nsec = (us % 1000000) * 1000
    posix.ppoll(&wake, 1, &ts, NULL)


cdef int core_run(Core *c) noexcept nogil:
    cdef epoll.epoll_event events[MAX_EVENTS]
    cdef int i, n, work
    cdef uint64_t frames, moved
    cdef int64_t turn_us, rest
    cdef bint pacing = False      # the last turn had work: look before blocking
    c.now = now_ms()
    c.last_rx = c.now
    while c.exit == RUNNING:
        if stopping(c):
            core_fail(c, X_STOPPED, 0, "stopped")
            break
        n = 0
        if pacing:
            n = epoll.epoll_wait(c.ep, events, MAX_EVENTS, 0)
            pacing = n != 0
        if not pacing:
            n = epoll.epoll_wait(c.ep, events, MAX_EVENTS, next_timeout(c))
        turn_us = now_us()
        c.now = turn_us // 1000
        if n < 0:
            pacing = False
            if posix.errno != posix.EINTR:
                core_fail(c, X_ERROR, posix.errno, "epoll_wait")
            continue
        work = n
        moved = c.st.bytes_up + c.st.bytes_down
        for i in range(n):
            dispatch(c, &events[i])
            # the link's work is counted by its frames; stop()'s wakeup is none
            work -= events[i].data.u64 == TAG_LINK or events[i].data.u64 == TAG_WAKE
        frames = c.st.frames_in
        if c.link_readable:
            link_read(c)
        work += <int>(c.st.frames_in - frames)
        if c.listen_ready and c.exit == RUNNING:
            accept_clients(c)
        run_queue(c)
        if c.exit == RUNNING:
            run_timers(c)
        link_flush(c)
        release_idle_link_buffers(c)
        pacing = False
        if n > 0:
            rest = pacer_turn(&c.pacer, work, c.st.bytes_up + c.st.bytes_down - moved, turn_us)
            # stop() sets the flag before it writes the wake eventfd, which
            # this turn may have read already: looking at the flag here
            # leaves no window for a pause that nothing would end
            if rest > 0 and not work_pending(c) and not stopping(c):
                c.st.paced_turns += 1
                rest += turn_us - now_us()
                if rest > 0:
                    pace(c, rest)
                pacing = True
    core_teardown(c)
    return c.exit


cdef void core_teardown(Core *c) noexcept nogil:
    """Close every client; tell the server why when it can still hear it."""
    while not ring_empty(&c.all):
        session_free(c, ring_first(&c.all), NO_CLOSE, True)
    if c.exit == X_STOPPED:
        link_close_frame(c, R_SHUTDOWN, b"multiplexor stopping")
    if c.exit == X_STOPPED or c.exit == X_PROTOCOL or c.exit == X_TIMEOUT:
        link_drain(c, DRAIN_MS)
        if buf_len(&c.lout) == 0:
            link_linger(c, LINGER_MS)
    if c.link_ssl != NULL:
        openssl.SSL_free(c.link_ssl)
        openssl.ERR_clear_error()
        c.link_ssl = NULL
    if c.link_fd >= 0:
        discard_input(c.link_fd)
    close_fd(&c.link_fd)
    close_fd(&c.ep)
    close_fd(&c.spare_fd)
    buf_free(&c.lin)
    buf_free(&c.lout)


cdef inline void close_fd(int *fd) noexcept nogil:
    if fd[0] >= 0:
        posix.close(fd[0])
        fd[0] = -1


# --- TLS context -------------------------------------------------------------------

class TlsError(Exception):
    """The key or certificate chain cannot be used (one line, OpenSSL's reason)."""


cdef int no_password(char *buf, int size, int rwflag, void *userdata) noexcept nogil:
    return 0    # the key arrives decrypted; never prompt on a terminal


cdef int select_alpn(openssl.SSL *ssl, const unsigned char **out, unsigned char *outlen,
                     const unsigned char *inp, unsigned int inlen, void *arg) noexcept nogil:
    """ALPN: choose "xmpp-client" (XEP-0368) when offered; otherwise none."""
    cdef unsigned int i = 0
    cdef unsigned int n
    while i < inlen:
        n = inp[i]
        if i + 1 + n > inlen:
            break
        if n == 11 and memcmp(inp + i + 1, ALPN_XMPP, 11) == 0:
            out[0] = inp + i + 1
            outlen[0] = 11
            return openssl.SSL_TLSEXT_ERR_OK
        i += 1 + n
    return openssl.SSL_TLSEXT_ERR_NOACK


cdef str openssl_error(str what):
    cdef char text[256]
    cdef unsigned long code = openssl.ERR_get_error()
    openssl.ERR_clear_error()
    if code == 0:
        return what
    openssl.ERR_error_string_n(code, text, sizeof(text))
    return f"{what}: {text.decode('ascii', 'replace')}"


cdef ctx_load_key(openssl.SSL_CTX *ctx, bytes pem):
    cdef openssl.BIO *bio = openssl.BIO_new_mem_buf(<const char *>pem, len(pem))
    cdef openssl.EVP_PKEY *key
    if bio == NULL:
        raise TlsError(openssl_error("cannot read the private key"))
    key = openssl.PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL)
    openssl.BIO_free(bio)
    if key == NULL:
        raise TlsError(openssl_error("cannot read the private key (PEM)"))
    try:
        if openssl.SSL_CTX_use_PrivateKey(ctx, key) != 1:
            raise TlsError(openssl_error("cannot use the private key"))
    finally:
        openssl.EVP_PKEY_free(key)


cdef ctx_load_chain(openssl.SSL_CTX *ctx, bytes pem):
    cdef openssl.BIO *bio = openssl.BIO_new_mem_buf(<const char *>pem, len(pem))
    cdef openssl.X509 *cert
    cdef int count = 0
    if bio == NULL:
        raise TlsError(openssl_error("cannot read the certificate chain"))
    try:
        while True:
            cert = openssl.PEM_read_bio_X509(bio, NULL, no_password, NULL)
            if cert == NULL:
                break
            count += 1
            if count == 1:
                ok = openssl.SSL_CTX_use_certificate(ctx, cert) == 1
                openssl.X509_free(cert)
            else:
                ok = openssl.SSL_CTX_add0_chain_cert(ctx, cert) == 1
                if not ok:
                    openssl.X509_free(cert)
            if not ok:
                raise TlsError(openssl_error(f"cannot use certificate {count} of the chain"))
    finally:
        openssl.BIO_free(bio)
    openssl.ERR_clear_error()        # the end of the PEM data is reported as an error
    if count == 0:
        raise TlsError("the certificate chain holds no PEM certificate")


cdef class TlsContext:
    """A TLS server context for legacy SSL, built from PEM held in memory.

    ``key_pem`` is an unencrypted private key, ``chain_pem`` the certificate
    followed by its intermediates; neither is written anywhere. TLS 1.2 is
    the minimum, ALPN ``xmpp-client`` is selected when offered, session
    resumption (cache and tickets) is on. ``ticket_keys``
    (iim.mux.ticketkeys.TicketKeys.serialize()) makes tickets valid across every
    context built from the same ring (all processes of one multiplexor); None:
    random keys for this context. Either way call rotate_ticket_keys() with the
    current period before use and as time goes on (iim/_tickets.pyx).
    """

    def __cinit__(self, bytes key_pem not None, bytes chain_pem not None, ticket_keys=None):
        self.ctx = openssl.SSL_CTX_new(openssl.TLS_server_method())
        if self.ctx == NULL:
            raise TlsError(openssl_error("cannot create a TLS context"))
        openssl.SSL_CTX_set_min_proto_version(self.ctx, openssl.TLS1_2_VERSION)
        openssl.SSL_CTX_set_options(self.ctx, openssl.SSL_OP_NO_COMPRESSION
                                    | openssl.SSL_OP_NO_RENEGOTIATION
                                    | openssl.SSL_OP_CIPHER_SERVER_PREFERENCE
                                    | openssl.SSL_OP_PRIORITIZE_CHACHA)
        # TLS 1.3: AES-128-GCM first (OpenSSL's default puts AES-256 first): its
        # handshake hashes with SHA-256, which this hardware accelerates and SHA-384
        # is not, and its records take fewer AES rounds; ChaCha20 for a client that
        # lists it first (no AES hardware). All three are the RFC 8446 defaults.
        if openssl.SSL_CTX_set_ciphersuites(self.ctx, b"TLS_AES_128_GCM_SHA256:"
                                            b"TLS_AES_256_GCM_SHA384:"
                                            b"TLS_CHACHA20_POLY1305_SHA256") != 1:
            raise TlsError(openssl_error("cannot set the TLS 1.3 cipher suites"))
        openssl.SSL_CTX_set_mode(self.ctx, openssl.SSL_MODE_RELEASE_BUFFERS
                                 | openssl.SSL_MODE_ENABLE_PARTIAL_WRITE
                                 | openssl.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        # Read what the socket has, not a record header and then its body: a
        # ClientHello in one read(), the client's CCS and Finished in one, not
        # four. Bytes read ahead past the Finished delay the take-over by our
        # record layer until OpenSSL has handed them out (client_read).
        openssl.SSL_CTX_set_read_ahead(self.ctx, 1)
        openssl.SSL_CTX_set_session_cache_mode(self.ctx, openssl.SSL_SESS_CACHE_SERVER)
        # One TLS 1.3 ticket per handshake, not OpenSSL's two: an XMPP client keeps
        # one connection, resumes with one ticket and gets a fresh one each time;
        # the second would cost a session encoding, an encryption and a record.
        openssl.SSL_CTX_set_num_tickets(self.ctx, 1)
        openssl.SSL_CTX_set_session_id_context(self.ctx, <const unsigned char *>b"iim-mux", 7)
        openssl.SSL_CTX_set_alpn_select_cb(self.ctx, select_alpn, NULL)
        record_install(self.ctx)         # sessions move to iim/_tlsrecord.pyx after it
        self._ticket_keys(bytes(ticket_keys) if ticket_keys is not None    # period -1: unset
                          else b"\xff" * 8 + os.urandom(TICKET_SEED * TICKET_RING))
        self._load_key(key_pem)
        self._load_chain(chain_pem)
        if openssl.SSL_CTX_check_private_key(self.ctx) != 1:
            raise TlsError(openssl_error("the private key does not match the certificate"))

    cdef _ticket_keys(self, bytes keys):
        cdef TicketRing *ring = ring_new(<const uint8_t *>keys, len(keys))
        if ring == NULL:
            raise TlsError(f"session ticket keys must be {TICKET_SERIALIZED} bytes (a serialized "
                           f"ticket key ring, iim/mux/ticketkeys.py), not {len(keys)}")
        try:
            ring_install(self.ctx, ring)     # the context owns it from here on
        except RuntimeError as exc:          # this OpenSSL cannot seal tickets
            raise TlsError(str(exc)) from None
        self.ring = ring

    def rotate_ticket_keys(self, int64_t period):
        """Step the ticket keys to `period` (unix time // iim.mux.ticketkeys.PERIOD);
        never back. Returns the ring's period."""
        cdef int64_t result = ring_rotate(self.ring, period)
        if result < 0:
            raise TlsError("cannot derive the next session ticket key")
        return result

    cdef _load_key(self, bytes pem):
        ctx_load_key(self.ctx, pem)

    cdef _load_chain(self, bytes pem):
        ctx_load_chain(self.ctx, pem)

    def __dealloc__(self):
        if self.ctx != NULL:
            openssl.SSL_CTX_free(self.ctx)
            self.ctx = NULL


# --- TLS on the link (docs/muxlink.md "TLS on the link") ----------------------------
#
# Both ends of a link that leaves the host speak TLS 1.3 (and nothing older),
# without session tickets or renegotiation. The multiplexor is the client: it
# verifies the server's certificate against its trust anchors and the name it
# dialled. Each side then mixes the RFC 9266 tls-exporter of the session (32
# bytes, label "EXPORTER-Channel-Binding", no context) into its HMAC proof, so a
# proof made for one TLS session is worthless in another: a man in the middle
# that relays the set-up frames between two TLS sessions of its own fails.
#
# The multiplexor's LinkTls drives OpenSSL on the link's socket (fd mode): the
# blocking set-up in Python, then the relay core takes the SSL object over. The
# server's (asyncio) drives it over memory BIOs: ciphertext in, plaintext out.

cdef const char *EXPORTER_LABEL = b"EXPORTER-Channel-Binding"

#: Bytes of the tls-exporter channel binding (RFC 9266 section 2).
CHANNEL_BINDING_BYTES = 32


class LinkTlsError(Exception):
    """TLS on the link failed (one line: OpenSSL's reason, or the certificate's)."""


cdef class LinkTlsContext:
    """TLS 1.3 for links: ``LinkTlsContext(server=True, key_pem=, chain_pem=)`` on
    the server (its certificate and key, PEM in memory), or
    ``LinkTlsContext(server=False, ca_pem=)`` on the multiplexor: the server's
    certificate must chain to a certificate of ``ca_pem`` (None: the system's
    trust store)."""

    def __cinit__(self, bint server, bytes key_pem=None, bytes chain_pem=None,
                  bytes ca_pem=None):
        self.server = server
        self.ctx = openssl.SSL_CTX_new(openssl.TLS_server_method() if server
                                       else openssl.TLS_client_method())
        if self.ctx == NULL:
            raise LinkTlsError(openssl_error("cannot create a TLS context"))
        openssl.SSL_CTX_set_min_proto_version(self.ctx, openssl.TLS1_3_VERSION)
        openssl.SSL_CTX_set_max_proto_version(self.ctx, openssl.TLS1_3_VERSION)
        openssl.SSL_CTX_set_options(self.ctx, openssl.SSL_OP_NO_COMPRESSION
                                    | openssl.SSL_OP_NO_RENEGOTIATION)
        openssl.SSL_CTX_set_mode(self.ctx, openssl.SSL_MODE_ENABLE_PARTIAL_WRITE
                                 | openssl.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        openssl.SSL_CTX_set_num_tickets(self.ctx, 0)
        if server:
            if key_pem is None or chain_pem is None:
                raise ValueError("a server link context needs key_pem and chain_pem")
            try:
                ctx_load_key(self.ctx, key_pem)
                ctx_load_chain(self.ctx, chain_pem)
            except TlsError as exc:
                raise LinkTlsError(str(exc)) from None
            if openssl.SSL_CTX_check_private_key(self.ctx) != 1:
                raise LinkTlsError(openssl_error("the private key does not match the "
                                                 "certificate"))
            return
        openssl.SSL_CTX_set_verify(self.ctx, openssl.SSL_VERIFY_PEER, NULL)
        if ca_pem is None:
            if openssl.SSL_CTX_set_default_verify_paths(self.ctx) != 1:
                raise LinkTlsError(openssl_error("cannot load the system's trust store"))
        else:
            self._trust(ca_pem)

    cdef _trust(self, bytes pem):
        cdef openssl.BIO *bio = openssl.BIO_new_mem_buf(<const char *>pem, len(pem))
        cdef openssl.X509 *cert
        cdef int count = 0
        if bio == NULL:
            raise MemoryError()
        try:
            while True:
                cert = openssl.PEM_read_bio_X509(bio, NULL, no_password, NULL)
                if cert == NULL:
                    break
                openssl.X509_STORE_add_cert(openssl.SSL_CTX_get_cert_store(self.ctx), cert)
                openssl.X509_free(cert)
                count += 1
        finally:
            openssl.BIO_free(bio)
        openssl.ERR_clear_error()
        if count == 0:
            raise LinkTlsError("holds no PEM certificate")

    def __dealloc__(self):
        if self.ctx != NULL:
            openssl.SSL_CTX_free(self.ctx)
            self.ctx = NULL


cdef class LinkTls:
    """One TLS 1.3 session of a link.

    The multiplexor's: ``LinkTls.connect(ctx, fd, host, timeout)`` runs the
    handshake on the connected socket ``fd`` (verifying the certificate names
    ``host``: a DNS name or an IP address), then ``sendall``/``recv`` carry the
    set-up frames and ``Relay(link_tls=...)`` takes the session over.

    The server's: ``LinkTls.accept(ctx)`` over memory BIOs: ``receive(ciphertext)``
    returns the plaintext it completes (driving the handshake first),
    ``send(plaintext)`` encrypts, ``outgoing()`` is the ciphertext to write.

    Either: ``exporter()`` is the RFC 9266 channel binding of the session.
    """

    def __cinit__(self):
        self.fd = -1
        self.timeout = 10.0

    @staticmethod
    def connect(LinkTlsContext ctx not None, int fd, str host not None,
                double timeout=10.0):
        cdef LinkTls self = LinkTls.__new__(LinkTls)
        cdef bytes name = host.encode("ascii")
        cdef int r, err
        if ctx.server:
            raise ValueError("LinkTls.connect needs a client context")
        self.ssl = openssl.SSL_new(ctx.ctx)
        if self.ssl == NULL or openssl.SSL_set_fd(self.ssl, fd) != 1:
            raise LinkTlsError(openssl_error("cannot create the TLS session"))
        self.fd = fd
        self.timeout = timeout
        if _is_ip(host):
            ok = openssl.X509_VERIFY_PARAM_set1_ip_asc(openssl.SSL_get0_param(self.ssl), name)
        else:
            ok = openssl.X509_VERIFY_PARAM_set1_host(openssl.SSL_get0_param(self.ssl), name,
                                                     len(name)) == 1 and \
                openssl.SSL_set_tlsext_host_name(self.ssl, name) == 1
        if not ok:
            raise LinkTlsError(openssl_error(f"cannot verify the name {host!r}"))
        openssl.SSL_set_connect_state(self.ssl)
        deadline = _monotonic() + timeout
        while True:
            with nogil:
                r = openssl.SSL_do_handshake(self.ssl)
            if r == 1:
                return self
            err = openssl.SSL_get_error(self.ssl, r)
            if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
                self._poll(err, deadline)
                continue
            raise LinkTlsError(self._failure("TLS handshake failed"))

    @staticmethod
    def accept(LinkTlsContext ctx not None):
        cdef LinkTls self = LinkTls.__new__(LinkTls)
        if not ctx.server:
            raise ValueError("LinkTls.accept needs a server context")
        self.ssl = openssl.SSL_new(ctx.ctx)
        self.rbio = openssl.BIO_new(openssl.BIO_s_mem())
        self.wbio = openssl.BIO_new(openssl.BIO_s_mem())
        if self.ssl == NULL or self.rbio == NULL or self.wbio == NULL:
            if self.rbio != NULL:
                openssl.BIO_free(self.rbio)
            if self.wbio != NULL:
                openssl.BIO_free(self.wbio)
            self.rbio = self.wbio = NULL
            raise MemoryError()
        openssl.BIO_set_mem_eof_return(self.rbio, -1)     # empty: "want more", not EOF
        openssl.SSL_set_bio(self.ssl, self.rbio, self.wbio)
        openssl.SSL_set_accept_state(self.ssl)
        return self

    # -- both ---------------------------------------------------------------------

    @property
    def handshake_done(self):
        return self.ssl != NULL and openssl.SSL_is_init_finished(self.ssl) == 1

    @property
    def version(self):
        return openssl.SSL_get_version(self._live()).decode("ascii")

    @property
    def cipher(self):
        return openssl.SSL_CIPHER_get_name(openssl.SSL_get_current_cipher(
            self._live())).decode("ascii")

    def exporter(self):
        """RFC 9266 tls-exporter: 32 bytes of SSL_export_keying_material with the
        label "EXPORTER-Channel-Binding" and no context."""
        cdef unsigned char out[32]
        if not self.handshake_done:
            raise LinkTlsError("no channel binding before the handshake is done")
        if openssl.SSL_export_keying_material(self.ssl, out, 32, EXPORTER_LABEL,
                                              strlen(EXPORTER_LABEL), NULL, 0, 0) != 1:
            raise LinkTlsError(openssl_error("cannot export the channel binding"))
        return (<char *>out)[:32]

    cdef openssl.SSL *_live(self) except NULL:
        if self.ssl == NULL:
            raise LinkTlsError("the TLS session was handed over or closed")
        return self.ssl

    cdef str _failure(self, str what):
        cdef long result = openssl.SSL_get_verify_result(self.ssl)
        if result != openssl.X509_V_OK:
            openssl.ERR_clear_error()
            return (f"{what}: the server's certificate is not trusted: "
                    f"{openssl.X509_verify_cert_error_string(result).decode('ascii')}")
        return openssl_error(what)

    # -- the multiplexor's (fd mode) ----------------------------------------------

    def settimeout(self, double timeout):
        self.timeout = timeout

    def sendall(self, bytes data not None):
        cdef size_t done = 0, n, total = len(data)
        cdef const uint8_t *p = data
        cdef int r, err
        deadline = _monotonic() + self.timeout
        self._fd_mode()
        while done < total:
            with nogil:
                r = openssl.SSL_write_ex(self.ssl, p + done, total - done, &n)
            if r == 1:
                done += n
                continue
            err = openssl.SSL_get_error(self.ssl, 0)
            if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
                self._poll(err, deadline)
                continue
            raise OSError(posix.errno or 0, self._failure("TLS write failed"))

    def recv(self, size_t n):
        """Up to ``n`` bytes; b"" when the server ended the session."""
        cdef bytearray buf = bytearray(n)
        cdef uint8_t *p = buf
        cdef size_t got = 0
        cdef int r, err
        deadline = _monotonic() + self.timeout
        self._fd_mode()
        while True:
            with nogil:
                r = openssl.SSL_read_ex(self.ssl, p, n, &got)
            if r == 1:
                return bytes(buf[:got])
            err = openssl.SSL_get_error(self.ssl, 0)
            if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
                self._poll(err, deadline)
                continue
            if err == openssl.SSL_ERROR_ZERO_RETURN or (err == openssl.SSL_ERROR_SYSCALL
                                                         and posix.errno == 0):
                openssl.ERR_clear_error()
                return b""
            raise OSError(posix.errno or 0, self._failure("TLS read failed"))

    cdef _fd_mode(self):
        self._live()
        if self.fd < 0:
            raise ValueError("sendall/recv are for the multiplexor's (fd) sessions")

    def _poll(self, int err, double deadline):
        cdef posix.pollfd pfd
        cdef int left = <int>((deadline - _monotonic()) * 1000)
        cdef int r
        if left <= 0:
            raise TimeoutError("timed out")
        pfd.fd = self.fd
        pfd.events = posix.POLLIN if err == openssl.SSL_ERROR_WANT_READ else posix.POLLOUT
        with nogil:
            r = posix.poll(&pfd, 1, left)
        if r == 0:
            raise TimeoutError("timed out")

    # -- the server's (memory mode) -----------------------------------------------

    def receive(self, bytes data not None):
        """Feed ciphertext; return the plaintext it completes (b"" during the
        handshake). LinkTlsError when the peer breaks TLS."""
        cdef uint8_t chunk[16384]
        cdef size_t got = 0
        cdef int r, err
        cdef list out = []
        self._memory_mode()
        if len(data) and openssl.BIO_write(self.rbio, <const char *>data, len(data)) \
                != <int>len(data):
            raise MemoryError()
        if not openssl.SSL_is_init_finished(self.ssl):
            r = openssl.SSL_do_handshake(self.ssl)
            if r != 1:
                err = openssl.SSL_get_error(self.ssl, r)
                if err == openssl.SSL_ERROR_WANT_READ:
                    return b""
                raise LinkTlsError(openssl_error("TLS handshake failed"))
        while True:
            r = openssl.SSL_read_ex(self.ssl, chunk, sizeof(chunk), &got)
            if r == 1:
                out.append((<char *>chunk)[:got])
                continue
            err = openssl.SSL_get_error(self.ssl, 0)
            if err == openssl.SSL_ERROR_WANT_READ:
                break
            if err == openssl.SSL_ERROR_ZERO_RETURN:
                openssl.ERR_clear_error()
                break
            raise LinkTlsError(openssl_error("TLS failure on the link"))
        return b"".join(out)

    def send(self, bytes data not None):
        """Encrypt ``data`` (after the handshake); ``outgoing()`` has the records."""
        cdef size_t n = 0, done = 0
        cdef const uint8_t *p = data
        self._memory_mode()
        while done < <size_t>len(data):
            if openssl.SSL_write_ex(self.ssl, p + done, len(data) - done, &n) != 1:
                raise LinkTlsError(openssl_error("TLS write failed"))
            done += n

    def outgoing(self):
        """The ciphertext produced so far (handshake and records), to write."""
        cdef size_t pending
        cdef bytearray buf
        cdef uint8_t *p
        self._memory_mode()
        pending = openssl.BIO_ctrl_pending(self.wbio)
        if pending == 0:
            return b""
        buf = bytearray(pending)
        p = buf
        openssl.BIO_read(self.wbio, p, <int>pending)
        return bytes(buf)

    cdef _memory_mode(self):
        self._live()
        if self.rbio == NULL:
            raise ValueError("receive/send/outgoing are for the server's (memory) sessions")

    def close(self):
        """Free the session (not the socket, which its owner closes)."""
        if self.ssl != NULL:
            openssl.SSL_free(self.ssl)       # frees the memory BIOs too
            self.ssl = NULL
            self.rbio = self.wbio = NULL

    def __dealloc__(self):
        self.close()


def _is_ip(str host):
    import ipaddress
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _monotonic():
    import time
    return time.monotonic()


# --- the Python face ---------------------------------------------------------------

cdef class SessionLimit:
    """At most ``maximum`` clients at once, shared by the relays given it
    (the relays of one process: ``iim_mux.maxsessions``)."""

    def __cinit__(self, long maximum):
        if maximum < 1:
            raise ValueError("maximum must be at least 1")
        self._maximum = maximum
        self._count = 0

    @property
    def maximum(self):
        return self._maximum

    @property
    def count(self):
        """Clients held now by every relay sharing this limit."""
        return posix.__atomic_load_n(&self._count, posix.__ATOMIC_RELAXED)


cdef class SourceLimit:
    """Per-source limits shared by the relays given it (those of one process):
    at most ``per_source`` clients from one source at once
    (``iim_mux.maxsessions_per_source``) and at most ``rate`` new ones per
    second, in bursts of up to twice that (``iim_mux.accept_rate_per_source``).
    A source is an IPv4 address or an IPv6 /64. ``maxsessions``
    (``iim_mux.maxsessions``) sizes the table, allocated here once: four
    32-byte slots per session, a power of two (at most 2^22 slots).
    """

    def __cinit__(self, long per_source, long rate, long maxsessions):
        cdef uint32_t size = 256
        if per_source < 1 or rate < 1 or maxsessions < 1:
            raise ValueError("per_source, rate and maxsessions must be at least 1")
        if per_source > 0xffffffffL or rate > 1000000000L:
            raise ValueError("per_source or rate out of range")
        while size < 4 * <uint64_t>maxsessions and size < (<uint32_t>1 << 22):
            size <<= 1
        self.t.slots = <SourceEntry *>calloc(size, sizeof(SourceEntry))
        if self.t.slots == NULL:
            raise MemoryError()
        self.t.mask = size - 1
        self.t.max_used = size // 4 * 3
        self.t.per_source = <uint32_t>per_source
        self.t.rate = rate
        self.t.burst = 2 * rate * TOKEN
        random = int.from_bytes(os.urandom(16), "little")
        self.t.seed = random & 0xffffffffffffffff
        self.t.multiplier = (random >> 64) | 1
        posix.pthread_mutex_init(&self.t.lock, NULL)

    @property
    def per_source(self):
        return self.t.per_source

    @property
    def rate(self):
        return self.t.rate

    @property
    def slots(self):
        """The table's fixed size."""
        return self.t.mask + 1

    def held(self, str address not None):
        """Clients from ``address``'s source held now by every relay sharing this."""
        cdef uint8_t family
        cdef bytes raw
        cdef SourceEntry *e
        cdef uint32_t count = 0
        family, raw = _parse_address(address)
        posix.pthread_mutex_lock(&self.t.lock)
        e = source_find(&self.t, source_key(family, <const uint8_t *>raw), family, now_ms(),
                        False)
        if e != NULL:
            count = e.count
        posix.pthread_mutex_unlock(&self.t.lock)
        return count

    def sources(self):
        """How many sources hold clients now, and how many entries the table
        holds (those plus sources whose rate bucket is still refilling)."""
        cdef uint32_t i, holding = 0, used
        posix.pthread_mutex_lock(&self.t.lock)
        for i in range(self.t.mask + 1):
            if self.t.slots[i].family and self.t.slots[i].count:
                holding += 1
        used = self.t.used
        posix.pthread_mutex_unlock(&self.t.lock)
        return holding, used

    def __dealloc__(self):
        if self.t.slots != NULL:
            free(self.t.slots)
            self.t.slots = NULL
            posix.pthread_mutex_destroy(&self.t.lock)


def _parse_address(str address):
    """("192.0.2.1" | "2001:db8::1") -> (family, 16 bytes), as Peer holds them."""
    import socket
    try:
        return 4, socket.inet_pton(socket.AF_INET, address) + bytes(12)
    except OSError:
        return 6, socket.inet_pton(socket.AF_INET6, address)


cdef uint32_t table_size(long maximum):
    cdef uint32_t size = 16
    while size < 2 * <uint64_t>maximum and size < (<uint32_t>1 << 30):
        size <<= 1
    return size


cdef class Relay:
    """One relay: a listening socket, one authenticated server link, its clients.

    ``Relay(listen_fd, link_fd, window, limit, tls=None, handshake_timeout=10.0,
    instance=0, thread=0, keepalive=30.0, linger=30.0, sources=None, link_tls=None,
    flush_delay=0.0, close_delay=0.002)``

    * ``listen_fd`` - a listening TCP socket, borrowed (the caller closes it,
      after run() returned). Made non-blocking.
    * ``link_fd`` - the link, connected and past READY; the relay owns it
      from here on (closed when run() returns, or when the relay is freed).
    * ``window`` - the initial per-session window from READY.
    * ``limit`` - a SessionLimit shared by the relays of a process, or an int.
    * ``sources`` - a SourceLimit shared by the relays of a process: clients
      over its limits are closed as soon as accepted; None: no per-source limits.
    * ``tls`` - a TlsContext: terminate legacy SSL; None: never touch TLS.
    * ``link_tls`` - the LinkTls session the link was set up over (TLS 1.3 to
      the server, docs/muxlink.md); the relay owns it from here on. None: a
      plain link.
    * ``handshake_timeout`` - seconds a client has to finish the handshake.
    * ``keepalive`` - seconds without traffic before PING (0: never).
    * ``linger`` - seconds a client closed by the server may take to read
      what is still pending for it.
    * ``flush_delay`` - seconds a turn that had work leaves before the next
      while the relay is busy (iim_mux.link_flush_delay_us), so that one
      wakeup serves what many clients sent meanwhile; 0: the next turn at once.
    * ``close_delay`` - seconds a link output of nothing but CLOSE frames may
      wait for other frames to share its write (lout_may_wait); 0: at once.

    run() sets TCP_NODELAY on the listening socket (accepted clients inherit it).

    ``run()`` serves until the link is lost or ``stop()`` is called (from any
    thread) and returns an EXIT_* code; ``exit_detail`` says more. It runs
    once. ``stats()`` may be called from any thread at any time.
    """

    def __cinit__(self, int listen_fd, int link_fd, unsigned int window, limit,
                  TlsContext tls=None, double handshake_timeout=10.0, int instance=0,
                  int thread=0, double keepalive=30.0, double linger=30.0,
                  SourceLimit sources=None, LinkTls link_tls=None, double flush_delay=0.0,
                  double close_delay=0.002):
        cdef Core *c = <Core *>calloc(1, sizeof(Core))
        if c == NULL:
            posix.close(link_fd)
            raise MemoryError()
        if link_tls is not None:
            if link_tls.ssl == NULL or link_tls.fd != link_fd:
                raise ValueError("link_tls must be the set-up TLS session of link_fd")
            c.link_ssl = link_tls.ssl        # the relay owns it from here on
            link_tls.ssl = NULL
        self.core = c
        c.ep = c.wake_fd = c.spare_fd = -1
        c.link_fd = link_fd
        c.listen_fd = listen_fd
        c.exit = RUNNING
        c.peer_reason = -1
        c.next_id = 1
        posix.pthread_mutex_init(&c.ctx_lock, NULL)
        ring_init(&c.all)
        ring_init(&c.runq)
        ring_init(&c.linkwait)
        ring_init(&c.handshakes)
        ring_init(&c.lingering)
        if window == 0:
            raise ValueError("window must be at least 1")
        self.limit = limit if isinstance(limit, SessionLimit) else SessionLimit(limit)
        self.instance = instance
        self.thread = thread
        c.window = window
        c.grant_threshold = max(1, window // 2)
        c.handshake_ms = <int64_t>(handshake_timeout * 1000)
        c.keepalive_ms = <int64_t>(keepalive * 1000)
        c.linger_ms = <int64_t>(linger * 1000)
        c.pacer.delay_us = <int64_t>(flush_delay * 1e6)
        c.close_delay_us = <int64_t>(close_delay * 1e6)
        c.limit_count = &self.limit._count
        c.limit_max = self.limit._maximum
        c.mask = table_size(self.limit._maximum) - 1
        c.table = <Session **>calloc(c.mask + 1, sizeof(Session *))
        if c.table == NULL:
            raise MemoryError()
        if sources is not None:
            self.sources = sources       # the table lives as long as this relay
            c.sources = &sources.t
        if tls is not None:
            if crypto_init(&c.crypto) < 0:
                raise MemoryError("cannot set up the TLS record layer: no memory, or this "
                                  "OpenSSL has no HMAC, AES-GCM or ChaCha20-Poly1305")
            openssl.SSL_CTX_up_ref(tls.ctx)
            c.ctx = tls.ctx
            c.tls_enabled = True
        self._open_fds()

    cdef _open_fds(self):
        cdef Core *c = self.core
        cdef posix.sockaddr_storage sa
        cdef posix.socklen_t salen = sizeof(sa)
        c.ep = epoll.epoll_create1(epoll.EPOLL_CLOEXEC)
        c.wake_fd = epoll.eventfd(0, epoll.EFD_NONBLOCK | epoll.EFD_CLOEXEC)
        c.spare_fd = posix.open(b"/dev/null", posix.O_RDONLY | posix.O_CLOEXEC)
        if c.ep < 0 or c.wake_fd < 0 or c.spare_fd < 0:
            raise_errno("cannot create the relay's descriptors")
        if set_nonblocking(c.listen_fd) < 0 or set_nonblocking(c.link_fd) < 0:
            raise_errno("cannot make the sockets non-blocking")
        if posix.getsockname(c.listen_fd, <posix.sockaddr *>&sa, &salen) < 0:
            raise_errno("listen_fd is not a socket")
        c.local_port = posix.ntohs((<posix.sockaddr_in *>&sa).sin_port)   # same offset in v6
        set_nodelay(c.link_fd)
        set_nodelay(c.listen_fd)         # for the clients it accepts (client_nodelay)
        c.nodelay_inherited = -1
        c.link_writable = True
        c.link_readable = True           # TLS may hold records read during set-up
        add_fd(c.ep, c.listen_fd, epoll.EPOLLIN | epoll.EPOLLET, TAG_LISTEN)
        add_fd(c.ep, c.link_fd, epoll.EPOLLIN | epoll.EPOLLOUT | epoll.EPOLLRDHUP | epoll.EPOLLET,
               TAG_LINK)
        add_fd(c.ep, c.wake_fd, epoll.EPOLLIN, TAG_WAKE)

    def run(self):
        """Serve until the link is lost or stop(); return an EXIT_* code."""
        cdef int code
        if self.started:
            raise RuntimeError("a Relay runs once; make a new one for a new link")
        self.started = True
        with nogil:
            code = core_run(self.core)
        self.finished = True
        return code

    def stop(self):
        """Make run() return soon (EXIT_STOPPED); callable from any thread, any time."""
        posix.__atomic_store_n(&self.core.stop, 1, posix.__ATOMIC_SEQ_CST)
        epoll.eventfd_write(self.core.wake_fd, 1)

    def set_tls_context(self, TlsContext tls not None):
        """Use ``tls`` for clients accepted from now on (certificate reload);
        clients already connected keep the context they started with."""
        cdef openssl.SSL_CTX *old
        if not self.core.tls_enabled:
            raise ValueError("this relay was made without legacy SSL")
        openssl.SSL_CTX_up_ref(tls.ctx)
        posix.pthread_mutex_lock(&self.core.ctx_lock)
        old = self.core.ctx
        self.core.ctx = tls.ctx
        posix.pthread_mutex_unlock(&self.core.ctx_lock)
        openssl.SSL_CTX_free(old)

    @property
    def local_port(self):
        """The listening port clients connect to (sent in OPEN)."""
        return self.core.local_port

    @property
    def exit_detail(self):
        """Why run() returned, in words ("" while running)."""
        cdef Core *c = self.core
        if not self.finished:
            return ""
        text = c.detail.decode("utf-8", "replace")
        if c.exit == X_LINK_CLOSED:
            reason = (REASON_NAMES[c.peer_reason] if 0 <= c.peer_reason < len(REASON_NAMES)
                      else f"reason {c.peer_reason}")
            return f"the server closed the link ({reason})" + (f": {text}" if text else "")
        return text

    def stats(self):
        """Counters (a snapshot; safe from any thread)."""
        cdef Stats *st = &self.core.st
        return {
            "sessions_plain": st.sessions_plain, "sessions_tls": st.sessions_tls,
            "handshaking": st.handshaking, "opened": st.opened, "closed": st.closed,
            "refused": st.refused, "bytes_client_to_server": st.bytes_up,
            "bytes_server_to_client": st.bytes_down, "handshakes_ok": st.handshakes_ok,
            "handshakes_failed": st.handshakes_failed, "frames_in": st.frames_in,
            "sessions_tls_lean": st.sessions_tls_lean,
            "frames_out": st.frames_out, "link_reads": st.link_reads,
            "link_writes": st.link_writes, "paced_turns": st.paced_turns,
            "buffered": st.buffered,
            "link_buffered": self.core.lin.cap + self.core.lout.cap,
            "link_buffers_released": st.link_buffers_released,
            "refused_per_source": st.refused_source, "refused_rate": st.refused_rate,
            "last_refused": _address_text(st.last_refused_family,
                                          (<char *>st.last_refused)[:16]),
        }

    def __dealloc__(self):
        cdef Core *c = self.core
        if c == NULL:
            return
        if not self.started or self.finished:
            if not self.started and c.link_ssl != NULL:
                openssl.SSL_free(c.link_ssl)
            if not self.started and c.link_fd >= 0:
                posix.close(c.link_fd)
            close_fd(&c.ep)
            close_fd(&c.spare_fd)
            close_fd(&c.wake_fd)
            if c.ctx != NULL:
                openssl.SSL_CTX_free(c.ctx)
            crypto_free(&c.crypto)
            buf_free(&c.lin)
            buf_free(&c.lout)
            free(c.table)
            posix.pthread_mutex_destroy(&c.ctx_lock)
            free(c)
        self.core = NULL


def _address_text(int family, bytes raw):
    """The source a refusal was counted under, for the log ("" for none)."""
    import socket
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == 6:
        return socket.inet_ntop(socket.AF_INET6, raw[:8] + bytes(8)) + "/64"
    return ""


cdef int add_fd(int ep, int fd, uint32_t events, uint64_t tag) except -1:
    cdef epoll.epoll_event ev
    ev.events = events
    ev.data.u64 = tag
    if epoll.epoll_ctl(ep, epoll.EPOLL_CTL_ADD, fd, &ev) < 0:
        raise_errno("epoll_ctl")
    return 0


cdef int raise_errno(str what) except -1:
    cdef int err = posix.errno
    raise OSError(err, f"{what}: {os.strerror(err)}")


def refuse_for(int listen_fd, int milliseconds):
    """Accept and close every client arriving on ``listen_fd`` for up to
    ``milliseconds`` (while the link is down); return how many were refused."""
    cdef int n
    with nogil:
        n = refuse_clients(listen_fd, milliseconds)
    return n


cdef int refuse_clients(int fd, int ms) noexcept nogil:
    cdef int64_t deadline = now_ms() + ms
    cdef int64_t left
    cdef int refused = 0
    cdef int client
    cdef posix.pollfd pfd
    pfd.fd = fd
    pfd.events = posix.POLLIN
    while True:
        left = deadline - now_ms()
        if left <= 0:
            return refused
        if posix.poll(&pfd, 1, <int>left) <= 0:
            continue
        while True:
            client = posix.accept4(fd, NULL, NULL, posix.SOCK_NONBLOCK | posix.SOCK_CLOEXEC)
            if client < 0:
                if posix.errno == posix.EMFILE or posix.errno == posix.ENFILE:
                    return refused           # nothing to close them with; try again later
                break
            posix.close(client)
            refused += 1


# --- kept from the build check -------------------------------------------------------

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
