/* The server stand-in of bench/mux_side_by_side.py, in C (no Python in the path).
 *
 *   linkecho --port P [--mode link|echo] [--window N]
 *
 * mode echo: a TCP echo server (what HAProxy and nginx relay to).
 * mode link: the server end of docs/muxlink.md version 2 for iim's multiplexor,
 *   over plain TCP from loopback and without a shared secret: HELLO ->
 *   CHALLENGE (secret not required), AUTH (empty) -> READY (no proof, initial
 *   window). Then every DATA of a session is echoed back as DATA within the
 *   credit the mux granted that session (what does not fit waits until its
 *   WINDOW comes), credit is granted back with WINDOW (half a window at a time,
 *   as the mux does itself), PING gets PONG, CLOSE forgets the session, and
 *   LINKCLOSE closes the link.
 *
 * One thread, one epoll set, level-triggered; output that the socket refuses
 * stays in the connection's buffer and EPOLLOUT is asked for until it drains.
 * Prints "LISTENING" once it listens and "LINK n" each time a link is READY
 * (bench/mux_side_by_side.py waits for them); at SIGTERM/SIGINT it exits 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { HEADER = 12, MAX_PAYLOAD = 65536 };
enum { T_HELLO = 1, T_CHALLENGE, T_AUTH, T_READY, T_LINKCLOSE, T_PING, T_PONG,
       T_OPEN = 0x10, T_DATA, T_CLOSE, T_WINDOW };
enum { ST_HELLO, ST_AUTH, ST_READY };
enum { BUCKETS = 1 << 16 };

typedef struct { uint8_t *data; size_t head, tail, cap; } Buf;

typedef struct Sess {
    uint32_t sid;
    uint32_t credit;            /* bytes we may still send it (DATA) */
    uint32_t ungranted;         /* bytes read, not yet granted back */
    Buf pending;                /* echo that waits for credit */
    struct Sess *next;          /* hash chain */
} Sess;

typedef struct Conn {
    int fd;
    int link;                   /* 1: muxlink, 0: echo */
    int state;
    int want_out;
    Buf in, out;
    Sess **table;               /* link: sessions by sid, chained */
} Conn;

static volatile sig_atomic_t stopping;
static uint32_t window = 65536;
static int links;

static void die(const char *what) { perror(what); exit(1); }

static void reserve(Buf *b, size_t n) {
    if (b->cap - b->tail >= n) return;
    if (b->head) {
        memmove(b->data, b->data + b->head, b->tail - b->head);
        b->tail -= b->head;
        b->head = 0;
        if (b->cap - b->tail >= n) return;
    }
    size_t cap = b->cap ? b->cap * 2 : 65536;
    while (cap - b->tail < n) cap *= 2;
    b->data = realloc(b->data, cap);
    if (!b->data) die("realloc");
    b->cap = cap;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint8_t *frame(Conn *c, uint8_t type, uint32_t sid, uint32_t len) {
    reserve(&c->out, HEADER + len);
    uint8_t *p = c->out.data + c->out.tail;
    memset(p, 0, 4);
    p[0] = type;
    put32(p + 4, sid);
    put32(p + 8, len);
    c->out.tail += HEADER + len;
    return p + HEADER;
}

static Sess **slot(Conn *c, uint32_t sid) {
    Sess **p = &c->table[sid & (BUCKETS - 1)];
    while (*p && (*p)->sid != sid) p = &(*p)->next;
    return p;
}

static void pump(Conn *c, Sess *s) {
    while (s->pending.tail > s->pending.head && s->credit > 0) {
        size_t n = s->pending.tail - s->pending.head;
        if (n > s->credit) n = s->credit;
        if (n > MAX_PAYLOAD) n = MAX_PAYLOAD;
        memcpy(frame(c, T_DATA, s->sid, n), s->pending.data + s->pending.head, n);
        s->pending.head += n;
        s->credit -= n;
    }
    if (s->pending.head == s->pending.tail) {
        free(s->pending.data);
        memset(&s->pending, 0, sizeof(s->pending));
    }
}

static void on_data(Conn *c, Sess *s, const uint8_t *p, uint32_t n) {
    s->ungranted += n;
    if (s->ungranted >= window / 2) {
        put32(frame(c, T_WINDOW, s->sid, 4), s->ungranted);
        s->ungranted = 0;
    }
    if (s->pending.tail == s->pending.head && s->credit >= n) {
        memcpy(frame(c, T_DATA, s->sid, n), p, n);
        s->credit -= n;
        return;
    }
    reserve(&s->pending, n);
    memcpy(s->pending.data + s->pending.tail, p, n);
    s->pending.tail += n;
    pump(c, s);
}

/* One frame from the mux; -1 closes the link. */
static int link_frame(Conn *c, uint8_t type, uint32_t sid, const uint8_t *p, uint32_t n) {
    Sess **at, *s;
    switch (type) {
    case T_HELLO: {
        if (c->state != ST_HELLO || n != 42 || memcmp(p, "IIMX", 4)) return -1;
        uint8_t *q = frame(c, T_CHALLENGE, 0, 35);
        q[0] = 0; q[1] = 2; q[2] = 0;                 /* version 2, no secret */
        for (int i = 0; i < 32; i++) q[3 + i] = (uint8_t)rand();
        c->state = ST_AUTH;
        return 0;
    }
    case T_AUTH:
        if (c->state != ST_AUTH || n != 0) return -1;
        put32(frame(c, T_READY, 0, 4), window);
        c->state = ST_READY;
        printf("LINK %d\n", ++links);
        fflush(stdout);
        return 0;
    case T_PING:
        memcpy(frame(c, T_PONG, 0, n), p, n);
        return 0;
    case T_PONG:
        return 0;
    case T_LINKCLOSE:
        return -1;
    }
    if (c->state != ST_READY) return -1;
    at = slot(c, sid);
    s = *at;
    switch (type) {
    case T_OPEN:
        if (s) return -1;
        s = calloc(1, sizeof(*s));
        if (!s) die("calloc");
        s->sid = sid;
        s->credit = window;
        *at = s;
        return 0;
    case T_DATA:
        if (s) on_data(c, s, p, n);
        return 0;
    case T_WINDOW:
        if (s && n == 4) {
            s->credit += get32(p);
            pump(c, s);
        }
        return 0;
    case T_CLOSE:
        if (s) {
            *at = s->next;
            free(s->pending.data);
            free(s);
        }
        return 0;
    }
    return -1;
}

static int flush(Conn *c) {
    while (c->out.tail > c->out.head) {
        ssize_t r = send(c->fd, c->out.data + c->out.head, c->out.tail - c->out.head,
                         MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return 0;
            return -1;
        }
        c->out.head += r;
    }
    c->out.head = c->out.tail = 0;
    return 0;
}

static void conn_free(Conn *c) {
    close(c->fd);
    if (c->table) {
        for (int i = 0; i < BUCKETS; i++) {
            Sess *s = c->table[i];
            while (s) {
                Sess *n = s->next;
                free(s->pending.data);
                free(s);
                s = n;
            }
        }
        free(c->table);
    }
    free(c->in.data);
    free(c->out.data);
    free(c);
}

/* Read what there is and answer it; -1: the connection is over. */
static int readable(Conn *c) {
    for (int turns = 0; turns < 16 && c->out.tail - c->out.head < (1 << 22); turns++) {
        /* echo: receive straight into the output buffer, the bytes are the answer */
        Buf *b = c->link ? &c->in : &c->out;
        reserve(b, c->link ? HEADER + MAX_PAYLOAD : 65536);
        ssize_t r = recv(c->fd, b->data + b->tail, b->cap - b->tail, 0);
        if (r == 0) return -1;
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return -1;
        }
        b->tail += r;
        if (!c->link) continue;
        while (c->in.tail - c->in.head >= HEADER) {
            uint8_t *h = c->in.data + c->in.head;
            uint32_t n = get32(h + 8);
            if (n > MAX_PAYLOAD) return -1;
            if (c->in.tail - c->in.head < HEADER + n) break;
            if (link_frame(c, h[0], get32(h + 4), h + HEADER, n) < 0) return -1;
            c->in.head += HEADER + n;
        }
        if (c->in.head == c->in.tail) c->in.head = c->in.tail = 0;
    }
    return flush(c);
}

static void on_signal(int sig) { (void)sig; stopping = 1; }

int main(int argc, char **argv) {
    int port = 0, link = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mode") && i + 1 < argc) {
            i++;
            if (!strcmp(argv[i], "echo")) link = 0;
            else if (strcmp(argv[i], "link")) { fprintf(stderr, "--mode link|echo\n"); return 2; }
        } else if (!strcmp(argv[i], "--window") && i + 1 < argc) window = atoi(argv[++i]);
        else { fprintf(stderr, "usage: linkecho --port P [--mode link|echo] [--window N]\n"); return 2; }
    }
    if (port <= 0 || window == 0) { fprintf(stderr, "linkecho: --port is required\n"); return 2; }
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    srand(getpid());
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(ls, 4096) < 0) die("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("LISTENING\n");
    fflush(stdout);
    struct epoll_event evs[512];
    while (!stopping) {
        int n = epoll_wait(ep, evs, 512, 500);
        for (int i = 0; i < n; i++) {
            Conn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    c = calloc(1, sizeof(*c));
                    if (!c) die("calloc");
                    c->fd = fd;
                    c->link = link;
                    if (link && !(c->table = calloc(BUCKETS, sizeof(Sess *)))) die("calloc");
                    struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            int r = 0;
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) r = readable(c);
            else if (evs[i].events & EPOLLOUT) r = flush(c);
            if (r < 0) {
                conn_free(c);
                continue;
            }
            int want = c->out.tail > c->out.head;
            if (want != c->want_out) {
                struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0),
                                         .data.ptr = c };
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
                c->want_out = want;
            }
        }
    }
    return 0;
}
