/* Load generator of bench/mux_side_by_side.py, in C (epoll, OpenSSL for --tls).
 *
 *   loadgen rr    --port P[,P...] --sessions N --seconds S [--rate R] [--size B] [--tls]
 *   loadgen conn  --port P --concurrency C --seconds S [--tls [--resume]]
 *   loadgen idle  --port P --sessions N [--tls]
 *   loadgen bulk  --port P --sessions N --seconds S [--tls]
 *   common:       [--threads T] [--warmup W] [--watch PID,PID...] [--host 127.0.0.1]
 *
 * Every target here is an echo (through the relay under test), so every byte
 * that comes back is checked against the byte that was sent: each connection
 * sends one endless pattern stream (a 251-byte cycle, shifted per connection),
 * and what it reads must be that stream, in order. A wrong byte counts as
 * "corrupt" (and ends that connection); more bytes than were sent too.
 *
 * rr:   N connections are opened (connect, TLS handshake, one round trip), then
 *       each does request/response round trips of --size bytes (default 200).
 *       Closed loop (no --rate): the next request leaves as soon as the
 *       response is in. Paced (--rate R): R requests per second in all, evenly
 *       spaced by a timerfd, each to the connection idle the longest; a request
 *       is due whether or not a connection is free (the backlog is counted).
 *       Latency is from the request's send to its last response byte.
 * conn: C loops of connect [+ TLS handshake, full or, with --resume, resuming
 *       a session ticket this thread received, each used once (as RFC 8446 C.4
 *       advises clients)], one round trip, close.
 * idle: N connections, one round trip each, then prints "READY n" and holds
 *       them until stdin closes.
 * bulk: N connections each keep 256 KiB in flight in 16 KiB writes; bytes
 *       echoed per second.
 *
 * The measured window follows --warmup seconds (default 1; 0 for conn). With
 * --watch, the CPU time of those processes (bench: the relay's process tree;
 * see proc_cpu) is read at the window's edges, so the CPU matches the counted
 * work exactly. Prints one JSON line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

enum { M_RR, M_CONN, M_IDLE, M_BULK };
enum { PH_OPEN, PH_WARM, PH_MEASURE, PH_DONE };
enum { C_FREE, C_CONNECTING, C_HANDSHAKE, C_OPENING, C_READY, C_BUSY, C_DEAD };
enum { CYCLE = 251, CHUNK = 16384, BULK_DEPTH = 262144, NBUCKETS = 2600, MAX_PORTS = 16,
       OPEN_CONCURRENCY = 128, MAX_WATCH = 64, POOL = 256 };

/* --- options -------------------------------------------------------------- */
static int mode, sessions = 1000, concurrency = 64, size = 200, threads = 1, use_tls, resume;
static double seconds = 10, warmup = -1, rate;
static int ports[MAX_PORTS], nports;
static struct in_addr host;
static int watch[MAX_WATCH], nwatch;

static _Atomic int phase = PH_OPEN;
static _Atomic int opened_total, open_failed_total;
static uint8_t pattern[CYCLE + BULK_DEPTH + CHUNK];
static SSL_CTX *ctx;
static double bucket_log;

typedef struct Client {
    int fd, state, key, port_i, want_out;
    SSL *ssl;
    uint64_t tx, tx_goal, rx;   /* bytes sent, to send, received (the stream) */
    uint64_t sent_ns;
    struct Thread *t;
    unsigned gen;               /* conn mode: which connection of this slot */
} Client;

typedef struct Thread {
    int id, ep, tfd, nclients;
    Client *clients;
    pthread_t th;
    int *idle, idle_head, idle_len;      /* FIFO of idle connections (paced rr) */
    int opening, next_open;              /* connections not yet set up */
    uint64_t count, bytes, errors, lost, corrupt, resumed, full, backlog, issued, shed;
    double rate;                         /* paced: requests per second of this thread */
    uint64_t pace_t0;
    SSL_SESSION *saved[POOL];            /* --resume: tickets received, each used once */
    int nsaved;
    uint64_t hist[NBUCKETS];
    uint8_t buf[65536];
} Thread;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static const uint8_t *stream_at(Client *c, uint64_t off) {
    return pattern + (off + (uint64_t)c->key * 131) % CYCLE;
}

static void record(Thread *t, uint64_t ns) {
    double us = ns / 1000.0;
    int b = us <= 1 ? 0 : (int)(log(us) / bucket_log);
    t->hist[b < NBUCKETS ? b : NBUCKETS - 1]++;
}

/* --- connection plumbing -------------------------------------------------------- */
static void want_out(Client *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event e = { .events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c };
    epoll_ctl(c->t->ep, EPOLL_CTL_MOD, c->fd, &e);
    c->want_out = on;
}

static void start_connect(Thread *t, Client *c);

static void client_close(Client *c, int failed) {
    Thread *t = c->t;
    if (c->ssl) {
        if (!failed) SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    if (failed) {
        if (c->state <= C_OPENING) t->errors++;
        else if (atomic_load(&phase) != PH_DONE) t->lost++;
    }
    int was_opening = c->state <= C_OPENING;
    c->state = C_DEAD;
    if (mode == M_CONN && atomic_load(&phase) != PH_DONE) {
        start_connect(t, c);               /* the loop goes on */
    } else if (was_opening) {
        atomic_fetch_add(&open_failed_total, 1);
        t->opening--;
    }
}

static int new_session_cb(SSL *ssl, SSL_SESSION *sess) {
    Thread *t = SSL_get_app_data(ssl);
    if (t->nsaved == POOL) {                /* drop the oldest */
        SSL_SESSION_free(t->saved[0]);
        memmove(t->saved, t->saved + 1, (POOL - 1) * sizeof(t->saved[0]));
        t->nsaved--;
    }
    t->saved[t->nsaved++] = sess;
    return 1;                               /* we keep the reference */
}

static void send_more(Client *c);

static void opened(Client *c) {
    Thread *t = c->t;
    if (c->ssl) {
        if (SSL_session_reused(c->ssl)) t->resumed++;
        else t->full++;
    }
    c->state = C_OPENING;
    c->tx_goal = c->tx + size;
    c->sent_ns = now_ns();
    send_more(c);
}

static void handshake(Client *c) {
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        want_out(c, 0);
        opened(c);
        return;
    }
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ) want_out(c, 0);
    else if (err == SSL_ERROR_WANT_WRITE) want_out(c, 1);
    else {
        ERR_clear_error();
        client_close(c, 1);
    }
}

static void connected(Client *c) {
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (!use_tls) {
        want_out(c, 0);
        opened(c);
        return;
    }
    c->ssl = SSL_new(ctx);
    SSL_set_app_data(c->ssl, c->t);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    if (resume && c->t->nsaved > 0) {      /* TLS 1.3: one ticket, one resumption */
        SSL_SESSION *sess = c->t->saved[--c->t->nsaved];
        SSL_set_session(c->ssl, sess);
        SSL_SESSION_free(sess);
    }
    c->state = C_HANDSHAKE;
    handshake(c);
}

static void start_connect(Thread *t, Client *c) {
    int slot = (int)(c - t->clients);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr = host,
                             .sin_port = htons(ports[slot % nports]) };
    memset(c, 0, offsetof(Client, t));
    c->gen++;
    c->key = t->id * 1000003 + slot * 7 + (int)c->gen;
    c->port_i = slot % nports;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        perror("loadgen: socket");
        exit(1);
    }
    c->want_out = 1;
    struct epoll_event e = { .events = EPOLLIN | EPOLLOUT, .data.ptr = c };
    epoll_ctl(t->ep, EPOLL_CTL_ADD, c->fd, &e);
    c->state = C_CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) == 0) connected(c);
    else if (errno != EINPROGRESS) client_close(c, 1);
}

/* Write what the stream still owes; EPOLLOUT only while the socket refuses. */
static void send_more(Client *c) {
    while (c->tx < c->tx_goal) {
        size_t n = c->tx_goal - c->tx;
        if (n > CHUNK) n = CHUNK;
        const uint8_t *p = stream_at(c, c->tx);
        ssize_t w;
        if (c->ssl) {
            size_t done = 0;
            if (SSL_write_ex(c->ssl, p, n, &done) == 1) w = done;
            else {
                int err = SSL_get_error(c->ssl, 0);
                if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) w = -1;
                else { ERR_clear_error(); client_close(c, 1); return; }
            }
        } else {
            w = send(c->fd, p, n, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EINTR) { client_close(c, 1); return; }
        }
        if (w < 0) {
            want_out(c, 1);
            return;
        }
        c->tx += w;
    }
    want_out(c, 0);
}

static void issue(Thread *t, Client *c) {
    c->state = C_BUSY;
    c->tx_goal = c->tx + size;
    c->sent_ns = now_ns();
    t->issued++;
    send_more(c);
}

static void idle_push(Thread *t, Client *c) {
    t->idle[(t->idle_head + t->idle_len++) % t->nclients] = (int)(c - t->clients);
}

/* A response (or the opening round trip) is complete. */
static void done_one(Client *c) {
    Thread *t = c->t;
    int ph = atomic_load(&phase);
    uint64_t ns = now_ns() - c->sent_ns;
    if (c->state == C_OPENING) {
        if (mode == M_CONN) {
            if (ph == PH_MEASURE) {
                t->count++;
                record(t, ns);
            }
            client_close(c, 0);
            return;
        }
        c->state = C_READY;
        t->opening--;
        atomic_fetch_add(&opened_total, 1);
        if (mode == M_BULK && ph != PH_OPEN) {
            c->tx_goal = c->rx + BULK_DEPTH;
            send_more(c);
        }
        if (mode == M_RR && rate > 0) idle_push(t, c);
        return;
    }
    if (ph == PH_MEASURE) {
        t->count++;
        record(t, ns);
    }
    c->state = C_READY;
    if (ph == PH_DONE) return;
    if (rate > 0) {
        if (t->backlog > 0) {
            t->backlog--;
            issue(t, c);
        } else {
            idle_push(t, c);
        }
    } else if (ph != PH_OPEN) {
        issue(t, c);
    }
}

static void receive(Client *c) {
    Thread *t = c->t;
    unsigned gen = c->gen;
    for (;;) {
        ssize_t n;
        if (c->ssl) {
            size_t got = 0;
            if (SSL_read_ex(c->ssl, t->buf, sizeof(t->buf), &got) == 1) n = got;
            else {
                int err = SSL_get_error(c->ssl, 0);
                if (err == SSL_ERROR_WANT_READ) return;
                if (err == SSL_ERROR_WANT_WRITE) { want_out(c, 1); return; }
                ERR_clear_error();
                client_close(c, 1);
                return;
            }
        } else {
            n = recv(c->fd, t->buf, sizeof(t->buf), 0);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
            if (n <= 0) { client_close(c, 1); return; }
        }
        if (c->rx + n > c->tx || memcmp(t->buf, stream_at(c, c->rx), n) != 0) {
            t->corrupt++;
            client_close(c, 0);
            return;
        }
        c->rx += n;
        if (mode == M_BULK && c->state == C_READY) {
            if (atomic_load(&phase) == PH_MEASURE) t->bytes += n;
            if (atomic_load(&phase) != PH_DONE) {
                c->tx_goal = c->rx + BULK_DEPTH;
                send_more(c);
                if (c->state == C_DEAD) return;
            }
        } else if (c->rx == c->tx_goal && (c->state == C_OPENING || c->state == C_BUSY)) {
            done_one(c);
            if (c->state == C_DEAD || c->fd < 0 || c->gen != gen) return;
        }
        if (!c->ssl && (size_t)n < sizeof(t->buf)) return;
    }
}

static void client_event(Client *c, uint32_t ev) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { client_close(c, 1); return; }
        connected(c);
        return;
    }
    if (c->state == C_HANDSHAKE) {
        handshake(c);
        return;
    }
    if (c->state == C_DEAD || c->fd < 0) return;
    if (ev & EPOLLOUT) {
        unsigned gen = c->gen;
        send_more(c);
        if (c->fd < 0 || c->gen != gen) return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) receive(c);
}

/* --- pacing --------------------------------------------------------------------- */
static void pace(Thread *t, uint64_t now) {
    uint64_t due = (uint64_t)((now - t->pace_t0) / 1e9 * t->rate);
    uint64_t owed = due > t->issued + t->backlog + t->shed
                    ? due - t->issued - t->backlog - t->shed : 0;
    while (owed > 0 && t->idle_len > 0) {
        Client *c = &t->clients[t->idle[t->idle_head]];
        t->idle_head = (t->idle_head + 1) % t->nclients;
        t->idle_len--;
        owed--;
        if (c->state == C_READY) issue(t, c);
    }
    t->backlog += owed;
    if (t->backlog > (uint64_t)t->nclients) {          /* shed, never burst */
        t->shed += t->backlog - t->nclients;
        t->backlog = t->nclients;
    }
    while (t->backlog > 0 && t->idle_len > 0) {
        Client *c = &t->clients[t->idle[t->idle_head]];
        t->idle_head = (t->idle_head + 1) % t->nclients;
        t->idle_len--;
        t->backlog--;
        if (c->state == C_READY) issue(t, c);
    }
}

static void *thread_main(void *arg) {
    Thread *t = arg;
    struct epoll_event evs[512];
    int last = PH_OPEN;
    t->ep = epoll_create1(EPOLL_CLOEXEC);
    if (mode == M_CONN) {
        for (int i = 0; i < t->nclients; i++) {
            t->clients[i].t = t;
            start_connect(t, &t->clients[i]);
        }
    }
    for (;;) {
        int ph = atomic_load(&phase);
        if (ph == PH_DONE) break;
        if (mode != M_CONN) {
            while (t->next_open < t->nclients && t->opening < OPEN_CONCURRENCY) {
                Client *c = &t->clients[t->next_open++];
                c->t = t;
                t->opening++;
                start_connect(t, c);
            }
        }
        if (ph != last) {
            if (last == PH_OPEN && (mode == M_RR || mode == M_BULK)) {
                for (int i = 0; i < t->nclients; i++) {
                    Client *c = &t->clients[i];
                    if (c->state != C_READY) continue;
                    if (mode == M_BULK) {
                        c->tx_goal = c->rx + BULK_DEPTH;
                        send_more(c);
                    } else if (rate <= 0) {
                        issue(t, c);
                    }
                }
                if (mode == M_RR && rate > 0) {
                    double tick = 1.0 / t->rate;
                    if (tick < 50e-6) tick = 50e-6;
                    struct itimerspec its = { .it_interval = { 0, (long)(tick * 1e9) },
                                              .it_value = { 0, (long)(tick * 1e9) } };
                    t->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
                    timerfd_settime(t->tfd, 0, &its, NULL);
                    struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };
                    epoll_ctl(t->ep, EPOLL_CTL_ADD, t->tfd, &e);
                    t->pace_t0 = now_ns();
                }
            }
            last = ph;
        }
        int n = epoll_wait(t->ep, evs, 512, 20);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                uint64_t ticks;
                if (read(t->tfd, &ticks, sizeof(ticks)) > 0) pace(t, now_ns());
                continue;
            }
            client_event(evs[i].data.ptr, evs[i].events);
        }
    }
    return NULL;
}

/* --- the run -------------------------------------------------------------------- */
/* CPU time of process `pid` so far, two ways: `ticks`, utime+stime of /proc/PID/stat
 * (in clock ticks of 10 ms, but counting threads that ended too), and `exact`, the
 * on-CPU nanoseconds of each live thread (/proc/PID/task/TID/schedstat), with a
 * fingerprint of the set of threads. A window uses `exact` when the process kept
 * the same threads from edge to edge (every relay here but stunnel, which runs a
 * thread per connection), else `ticks`. */
typedef struct { double ticks, exact; unsigned long long threads, idsum, idxor; } Cpu;

static Cpu proc_cpu(int pid) {
    Cpu cpu = {0};
    char path[64], text[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(text, 1, sizeof(text) - 1, f);
        fclose(f);
        text[n] = 0;
        char *p = strrchr(text, ')');
        unsigned long ut = 0, st = 0;
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
                        &ut, &st) == 2)
            cpu.ticks = (double)(ut + st) / sysconf(_SC_CLK_TCK);
    }
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *dir = opendir(path);
    if (!dir) return cpu;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char file[300];
        unsigned long long ns = 0, tid = strtoull(e->d_name, NULL, 10);
        snprintf(file, sizeof(file), "/proc/%d/task/%s/schedstat", pid, e->d_name);
        FILE *g = fopen(file, "r");
        if (!g) continue;
        if (fscanf(g, "%llu", &ns) == 1) cpu.exact += ns / 1e9;
        fclose(g);
        cpu.threads++;
        cpu.idsum += tid;
        cpu.idxor ^= tid * 0x9e3779b97f4a7c15ull;
    }
    closedir(dir);
    return cpu;
}

static double cpu_between(Cpu a, Cpu b) {
    if (a.threads == b.threads && a.idsum == b.idsum && a.idxor == b.idxor)
        return b.exact - a.exact;
    return b.ticks - a.ticks;
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void sleep_s(double s) {
    struct timespec ts = { (time_t)s, (long)((s - (time_t)s) * 1e9) };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

static double percentile(uint64_t *hist, double q) {
    uint64_t total = 0, seen = 0;
    for (int b = 0; b < NBUCKETS; b++) total += hist[b];
    if (!total) return -1;
    for (int b = 0; b < NBUCKETS; b++) {
        seen += hist[b];
        if (seen >= q * total) return b == 0 ? 1 : exp((b + 0.5) * bucket_log);
    }
    return -1;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen rr|conn|idle|bulk --port P[,P...] [--sessions N] "
            "[--concurrency C] [--seconds S] [--warmup W] [--rate R] [--size B] [--threads T] "
            "[--tls] [--resume] [--watch PID,...] [--host A]\n");
    exit(2);
}

static int split_ints(char *s, int *out, int max) {
    int n = 0;
    for (char *tok = strtok(s, ","); tok && n < max; tok = strtok(NULL, ",")) out[n++] = atoi(tok);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    if (!strcmp(argv[1], "rr")) mode = M_RR;
    else if (!strcmp(argv[1], "conn")) mode = M_CONN;
    else if (!strcmp(argv[1], "idle")) mode = M_IDLE;
    else if (!strcmp(argv[1], "bulk")) mode = M_BULK;
    else usage();
    inet_pton(AF_INET, "127.0.0.1", &host);
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--tls")) { use_tls = 1; continue; }
        if (!strcmp(o, "--resume")) { resume = 1; continue; }
        if (!v) usage();
        i++;
        if (!strcmp(o, "--port")) nports = split_ints(v, ports, MAX_PORTS);
        else if (!strcmp(o, "--watch")) nwatch = split_ints(v, watch, MAX_WATCH);
        else if (!strcmp(o, "--sessions")) sessions = atoi(v);
        else if (!strcmp(o, "--concurrency")) concurrency = atoi(v);
        else if (!strcmp(o, "--seconds")) seconds = atof(v);
        else if (!strcmp(o, "--warmup")) warmup = atof(v);
        else if (!strcmp(o, "--rate")) rate = atof(v);
        else if (!strcmp(o, "--size")) size = atoi(v);
        else if (!strcmp(o, "--threads")) threads = atoi(v);
        else if (!strcmp(o, "--host")) { if (inet_pton(AF_INET, v, &host) != 1) usage(); }
        else usage();
    }
    if (nports < 1 || threads < 1 || size < 1 || sessions < 1 || concurrency < 1) usage();
    if (warmup < 0) warmup = mode == M_CONN ? 0 : 1;
    signal(SIGPIPE, SIG_IGN);
    bucket_log = log(1.01);
    for (size_t i = 0; i < sizeof(pattern); i++) pattern[i] = (uint8_t)('!' + (i % CYCLE) % 90);
    if (use_tls) {
        ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x0bxmpp-client", 12);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    }
    int total = mode == M_CONN ? concurrency : sessions;
    if (threads > total) threads = total;
    Thread *ts = calloc(threads, sizeof(Thread));
    for (int i = 0; i < threads; i++) {
        Thread *t = &ts[i];
        t->id = i;
        t->nclients = total / threads + (i < total % threads);
        t->clients = calloc(t->nclients, sizeof(Client));
        t->idle = calloc(t->nclients, sizeof(int));
        t->rate = rate * t->nclients / total;
        t->tfd = -1;
    }
    if (mode == M_CONN) atomic_store(&phase, PH_WARM);
    for (int i = 0; i < threads; i++) pthread_create(&ts[i].th, NULL, thread_main, &ts[i]);
    if (mode != M_CONN) {
        uint64_t limit = now_ns() + 120 * 1000000000ull;
        while (atomic_load(&opened_total) + atomic_load(&open_failed_total) < sessions
               && now_ns() < limit)
            sleep_s(0.005);
        if (mode == M_IDLE) {
            printf("READY %d\n", atomic_load(&opened_total));
            fflush(stdout);
            while (read(0, ts[0].buf, sizeof(ts[0].buf)) > 0) {}
            printf("{\"mode\": \"idle\", \"opened\": %d, \"errors\": %d}\n",
                   atomic_load(&opened_total), atomic_load(&open_failed_total));
            fflush(stdout);
            _exit(0);
        }
        atomic_store(&phase, PH_WARM);
    }
    sleep_s(warmup);
    Cpu w0[MAX_WATCH], w1[MAX_WATCH];
    for (int i = 0; i < nwatch; i++) w0[i] = proc_cpu(watch[i]);
    double c0 = self_cpu();
    uint64_t t0 = now_ns();
    atomic_store(&phase, PH_MEASURE);
    sleep_s(seconds);
    atomic_store(&phase, PH_DONE);
    uint64_t t1 = now_ns();
    for (int i = 0; i < nwatch; i++) w1[i] = proc_cpu(watch[i]);
    double c1 = self_cpu();
    for (int i = 0; i < threads; i++) pthread_join(ts[i].th, NULL);
    uint64_t hist[NBUCKETS] = {0};
    uint64_t count = 0, bytes = 0, errors = 0, lost = 0, corrupt = 0, resumed = 0, full = 0;
    uint64_t shed = 0;
    for (int i = 0; i < threads; i++) {
        Thread *t = &ts[i];
        for (int b = 0; b < NBUCKETS; b++) hist[b] += t->hist[b];
        count += t->count; bytes += t->bytes; errors += t->errors; lost += t->lost;
        corrupt += t->corrupt; resumed += t->resumed; full += t->full; shed += t->shed + t->backlog;
    }
    double wall = (t1 - t0) / 1e9, watched = 0;
    printf("{\"mode\": \"%s\", \"count\": %llu, \"rate\": %.1f, \"offered\": %.1f, "
           "\"bytes\": %llu, \"wall\": %.4f, \"p50_us\": %.1f, \"p90_us\": %.1f, "
           "\"p99_us\": %.1f, \"p999_us\": %.1f, \"opened\": %d, \"errors\": %llu, \"lost\": %llu, "
           "\"corrupt\": %llu, \"late_or_shed\": %llu, \"full_handshakes\": %llu, \"resumed\": %llu, \"client_cpu\": %.4f, "
           "\"watch_cpu\": [", argv[1], (unsigned long long)count, count / wall, rate,
           (unsigned long long)bytes, wall, percentile(hist, .5), percentile(hist, .9),
           percentile(hist, .99), percentile(hist, .999),
           mode == M_CONN ? 0 : atomic_load(&opened_total), (unsigned long long)errors,
           (unsigned long long)lost, (unsigned long long)corrupt, (unsigned long long)shed,
           (unsigned long long)full,
           (unsigned long long)resumed, c1 - c0);
    for (int i = 0; i < nwatch; i++) {
        double used = cpu_between(w0[i], w1[i]);
        printf("%s%.6f", i ? ", " : "", used);
        watched += used;
    }
    printf("], \"watch_cpu_total\": %.4f}\n", watched);
    fflush(stdout);
    _exit(0);    /* connections close with the process */
}
