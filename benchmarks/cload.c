/*
 * cload: a closed-loop load generator for the count protocol, in C.
 *
 *     cc -O2 -o cload benchmarks/cload.c -lpthread
 *     ./cload --port 5050 --clients 100 --duration 5 --json run.json
 *     ./cload --port 5050 --clients 10 --connection-per-request --duration 5
 *     ./cload --port 5050 --clients 10 --connection-per-request \
 *             --no-newline --read-to-eof          # servers that close after one reply
 *
 * The same job as `python -m primecount.cli.bench` in closed loop, at a fraction
 * of its CPU cost per request, so that the generator is never what limits a
 * benchmark.  One epoll loop per thread (--threads T, default 1), non-blocking
 * sockets, traffic to 127.0.0.1 only.
 *
 * Modes:
 *   persistent (default)      each client keeps one connection open with
 *                             --pipeline K requests in flight (default 1);
 *   --connection-per-request  connect, send one message, read the reply
 *                             (up to LF, or to EOF with --read-to-eof),
 *                             close, repeat.  --no-newline sends the message
 *                             without its LF; --half-close shuts the write
 *                             side after sending.
 *   --framing read            the original's clients: one connection per
 *                             request, --no-newline --read-to-eof (as
 *                             primecount.cli.bench's mode of that name);
 *                             --framing line is the default.
 *
 * Every reply is compared with the reply a correct server gives: "<k> sí\n"
 * or "<k> no\n", k = how often the last code point of the message (stripped
 * of whitespace as Python's str.strip does) occurs in it, "sí" when k is
 * prime.  Throughput counts correct replies only.  A failed request is an
 * error of one kind: connect, reset (closed or broken before the reply) or
 * timeout (no reply within --timeout seconds).
 *
 * The run lasts --duration seconds (default 10) after --settle seconds of
 * load that is verified but neither timed nor counted as throughput; at most
 * --requests requests are sent in all (a hard cap, default 100 million).
 * --hold N holds N more silent connections open (reopened when the server
 * closes them; --idle N, its former name, is the same).
 *
 * Output: a summary line on stderr (unless --quiet) and, with --json FILE,
 * the fields of primecount.cli.bench's JSON document: elapsed, requests, ok,
 * wrong, errors {total, connect, reset, timeout}, throughput, latency_ms
 * {p50, p90, p99, p99.9, mean, max}, held, plus "generator": {"name":
 * "cload", threads, cpu_seconds, user_seconds, resolved, cpu_us_per_request} (resolved and
 * the CPU time include the settle time).  Latency percentiles come from
 * a log-linear histogram (32 sub-buckets per power of two of nanoseconds:
 * within about 3 %).
 *
 * Exit status: 0 when every request got the right reply, 3 when some were
 * wrong or failed, 2 for bad arguments or a server that cannot be reached.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "count_reply.h"

/* ---- the count protocol ------------------------------------------------ */

/* The same mix as primecount.cli.bench's DEFAULT_MESSAGES. */
static const char *const DEFAULT_MESSAGES[] = {
    "abc2a",
    "abacada",
    "abacadabb",
    "a",
    "hello world",
    "mississippi",
    "\xc3\xb1" "and\xc3\xba \xc3\xb1u \xc3\xb1",                 /* ñandú ñu ñ */
    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe6\x97\xa5\xe6\x9c\xac", /* 日本語の日本 */
    "\xf0\x9f\x99\x82\xf0\x9f\x99\x83\xf0\x9f\x99\x82\xf0\x9f\x99\x83\xf0\x9f\x99\x82", /* 🙂🙃🙂🙃🙂 */
    "la ni\xc3\xb1" "a pidi\xc3\xb3 una pi\xc3\xb1" "a",         /* la niña pidió una piña */
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "the quick brown fox jumps over the lazy dog",
    "x-x",
    "x-x-x",
    "x-x-x-x",
    "x-x-x-x-x-x",
    "x-x-x-x-x-x-x",
    "x-x-x-x-x-x-x-x-x-x-x",
    "x-x-x-x-x-x-x-x-x-x-x-x",
    "x-x-x-x-x-x-x-x-x-x-x-x-x",
    "x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x",
    "x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x",
    "0123456789012345678901234567890123456789012345678901234567890123456789"
    "0123456789012345678901234567890123456789012345678901234567890123456789"
    "012345678901234567890123456789012345678901234567890123456789",
};
#define N_DEFAULT (sizeof DEFAULT_MESSAGES / sizeof DEFAULT_MESSAGES[0])

/* The reply a correct server gives to one message (without its LF) into
 * out (at least 64 bytes); its length, or -1 for a message it would answer
 * with ERR (empty or invalid UTF-8: never sent by this generator). */
static int expected_reply(const char *message, size_t n, char *out)
{
    uint32_t *cps = malloc((n + 1) * sizeof *cps);
    if (!cps) return -1;
    int len = count_reply(message, n, cps, out);
    free(cps);
    return len < 0 ? -1 : len;
}

/* ---- histogram --------------------------------------------------------- */

#define SUB 32
#define HBUCKETS (64 + 40 * SUB)

static int bucket_of(uint64_t ns)
{
    if (ns < 64) return (int)ns;
    int m = 63 - __builtin_clzll(ns);         /* 2^m <= ns < 2^(m+1), m >= 6 */
    int shift = m - 5;                        /* ns >> shift in [32, 63] */
    int b = 64 + (m - 6) * SUB + (int)((ns >> shift) - SUB);
    return b < HBUCKETS ? b : HBUCKETS - 1;
}

/* The upper edge of bucket b, in nanoseconds. */
static uint64_t bucket_top(int b)
{
    if (b < 64) return (uint64_t)b;
    int m = (b - 64) / SUB + 6, shift = m - 5;
    uint64_t top = (uint64_t)((b - 64) % SUB + SUB);
    return ((top + 1) << shift) - 1;
}

/* ---- options and shared state ----------------------------------------- */

struct options {
    int port, clients, pipeline, per_request, read_to_eof, no_newline, half_close;
    int threads, hold, quiet;
    double duration, settle, timeout;
    long long requests;
    const char *json, *message;
};

static struct options opt = {
    .port = 5050, .clients = 10, .pipeline = 1, .threads = 1,
    .duration = 10.0, .timeout = 5.0, .requests = 100000000LL,
};

struct message {
    char *line;       /* the bytes sent, LF included unless --no-newline */
    size_t line_len;
    char reply[64];   /* the expected reply, LF included */
    size_t reply_len;
};

static struct message *messages;
static size_t n_messages;
static long long tickets;            /* requests left to send (shared) */
static pthread_mutex_t ticket_lock = PTHREAD_MUTEX_INITIALIZER;
static double t_origin, t_measure, t_end;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Take up to want tickets; how many were granted. */
static int take_tickets(int want)
{
    pthread_mutex_lock(&ticket_lock);
    int got = tickets < want ? (int)tickets : want;
    tickets -= got;
    pthread_mutex_unlock(&ticket_lock);
    return got;
}

/* ---- one worker thread ------------------------------------------------- */

enum kind { CLIENT, HELD };
enum state { OFF, CONNECTING, OPEN, WAITING };

struct inflight {
    uint32_t message;
    uint64_t sent_ns;
};

struct conn {
    enum kind kind;
    enum state state;
    int fd;
    struct inflight *ring;        /* pipeline slots, oldest at head */
    int head, count;
    char in[4096];
    size_t in_len;
    char *out;                    /* bytes not yet written */
    size_t out_len, out_cap;
    uint64_t wake_ns;             /* WAITING: when to connect again */
    uint64_t connect_ns;          /* connection-per-request: latency start */
    int wants_out;
};

struct result {
    long long ok, wrong, connect_errors, resets, timeouts;
    long long resolved;           /* every request resolved, settle time included */
    long long held_reopened, held_failed, held_open;
    uint64_t hist[HBUCKETS];
    uint64_t max_ns;
    double sum_ns;
    double last_s;                /* when the last measured request resolved */
};

struct worker {
    int index, epfd, n_clients, n_held;
    struct conn *conns;
    struct result r;
    uint32_t next_message;
    int stopping;
    pthread_t thread;
};

static struct sockaddr_in target;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cload: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static int measuring(double t) { return t >= t_measure; }

static void record_reply(struct worker *w, uint64_t latency_ns, int correct)
{
    double t = now_s();
    w->r.resolved++;
    if (!correct) w->r.wrong++;
    if (!measuring(t)) return;
    if (correct) w->r.ok++;
    w->r.hist[bucket_of(latency_ns)]++;
    w->r.sum_ns += (double)latency_ns;
    if (latency_ns > w->r.max_ns) w->r.max_ns = latency_ns;
    w->r.last_s = t;
}

static void record_error(struct worker *w, long long *counter, int n)
{
    double t = now_s();
    *counter += n;
    w->r.resolved += n;
    if (measuring(t) && n) w->r.last_s = t;
}

static void epoll_set(struct worker *w, struct conn *c, int op, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(w->epfd, op, c->fd, &ev) < 0 && op != EPOLL_CTL_DEL)
        die("epoll_ctl: %s", strerror(errno));
}

static void close_conn(struct worker *w, struct conn *c)
{
    (void)w;
    if (c->fd >= 0) close(c->fd);   /* which also takes it out of the epoll set */
    c->fd = -1;
    c->state = OFF;
    c->in_len = 0;
    c->out_len = 0;
    c->wants_out = 0;
}

static void drop_inflight(struct worker *w, struct conn *c, long long *counter)
{
    record_error(w, counter, c->count);
    c->head = 0;
    c->count = 0;
}

static void wait_then_retry(struct conn *c)
{
    c->state = WAITING;
    c->wake_ns = now_ns() + 50000000ULL; /* 50 ms */
}

/* Open c's connection: -1 when connect fails at once, 0 while it is under
 * way, 1 when it is open, 2 when it is open and c's queued output is sent.
 * With early_send the queued output is tried at once: on loopback the
 * handshake is usually done when connect returns, which saves a wait for
 * writability and three system calls per connection. */
static int start_connect(struct worker *w, struct conn *c, int early_send)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (!opt.per_request) {   /* one write per connection cannot meet Nagle */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    c->fd = fd;
    c->in_len = 0;
    if (connect(fd, (struct sockaddr *)&target, sizeof target) == 0) {
        c->state = OPEN;
        epoll_set(w, c, EPOLL_CTL_ADD, EPOLLIN | EPOLLRDHUP);
        return 1;
    }
    if (errno != EINPROGRESS) {
        close(fd);
        c->fd = -1;
        return -1;
    }
    if (early_send && c->out_len) {
        ssize_t n = send(fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n > 0) {
            memmove(c->out, c->out + n, c->out_len - (size_t)n);
            c->out_len -= (size_t)n;
            c->state = OPEN;
            c->wants_out = c->out_len > 0;
            epoll_set(w, c, EPOLL_CTL_ADD, EPOLLIN | EPOLLRDHUP | (c->wants_out ? EPOLLOUT : 0));
            if (!c->out_len && opt.half_close) shutdown(fd, SHUT_WR);
            return 2;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOTCONN && errno != EINPROGRESS) {
            close(fd);
            c->fd = -1;
            return -1;
        }
    }
    c->state = CONNECTING;
    epoll_set(w, c, EPOLL_CTL_ADD, EPOLLOUT);
    return 0;
}

static void flush_out(struct worker *w, struct conn *c);
static void client_go(struct worker *w, struct conn *c);

static int has_work(struct worker *w)
{
    return !w->stopping;
}

/* Put one request for the next message in c's pipeline and output buffer. */
static void queue_request(struct worker *w, struct conn *c, uint64_t sent_ns)
{
    uint32_t m = w->next_message++ % (uint32_t)n_messages;
    struct inflight *slot = &c->ring[(c->head + c->count) % opt.pipeline];
    slot->message = m;
    slot->sent_ns = sent_ns;
    c->count++;
    size_t need = c->out_len + messages[m].line_len;
    if (need > c->out_cap) {
        c->out_cap = need * 2;
        c->out = realloc(c->out, c->out_cap);
        if (!c->out) die("out of memory");
    }
    memcpy(c->out + c->out_len, messages[m].line, messages[m].line_len);
    c->out_len += messages[m].line_len;
}

/* Persistent connections: send as many requests as the pipeline has room for. */
static void fill(struct worker *w, struct conn *c)
{
    int room = opt.pipeline - c->count;
    if (room <= 0 || !has_work(w)) return;
    int granted = take_tickets(room);
    if (granted == 0) { w->stopping = 1; return; }
    uint64_t t = now_ns();
    for (int i = 0; i < granted; i++) queue_request(w, c, t);
    flush_out(w, c);
}

static void broken(struct worker *w, struct conn *c, long long *counter)
{
    if (c->kind == HELD) {
        close_conn(w, c);
        w->r.held_reopened++;
        wait_then_retry(c);
        return;
    }
    drop_inflight(w, c, counter);
    close_conn(w, c);
    if (!has_work(w)) return;
    if (opt.per_request) client_go(w, c);
    else wait_then_retry(c);
}

static void flush_out(struct worker *w, struct conn *c)
{
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            broken(w, c, &w->r.resets);
            return;
        }
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    int want = c->out_len > 0;
    if (want != c->wants_out) {
        epoll_set(w, c, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0));
        c->wants_out = want;
    }
    if (!want && opt.per_request && opt.half_close && c->count) shutdown(c->fd, SHUT_WR);
}

/* A client's next step: connect; per request, with its request ready. */
static void client_go(struct worker *w, struct conn *c)
{
    if (!has_work(w)) return;
    c->connect_ns = now_ns();
    if (opt.per_request) {
        if (take_tickets(1) == 0) { w->stopping = 1; return; }
        queue_request(w, c, c->connect_ns);
    }
    int r = start_connect(w, c, opt.per_request);
    if (r < 0) {
        if (opt.per_request) drop_inflight(w, c, &w->r.connect_errors);
        else if (take_tickets(1) == 1) record_error(w, &w->r.connect_errors, 1);
        c->out_len = 0;
        wait_then_retry(c);
        return;
    }
    if (r == 1) {
        if (opt.per_request) flush_out(w, c);
        else fill(w, c);
    }
}

static void connected(struct worker *w, struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        close_conn(w, c);
        if (c->kind == HELD) { w->r.held_failed++; wait_then_retry(c); return; }
        if (opt.per_request) drop_inflight(w, c, &w->r.connect_errors);
        else if (take_tickets(1) == 1) record_error(w, &w->r.connect_errors, 1);
        wait_then_retry(c);
        return;
    }
    c->state = OPEN;
    epoll_set(w, c, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP);
    c->wants_out = 0;
    if (c->kind == HELD) { w->r.held_open++; return; }
    if (opt.per_request) flush_out(w, c);
    else fill(w, c);
}

static void check_reply(struct worker *w, struct conn *c, const char *line, size_t n, uint64_t t)
{
    if (c->count == 0) { w->r.wrong++; return; }  /* a reply nobody asked for */
    struct inflight *slot = &c->ring[c->head];
    c->head = (c->head + 1) % opt.pipeline;
    c->count--;
    const struct message *m = &messages[slot->message];
    record_reply(w, t - slot->sent_ns, n == m->reply_len && memcmp(line, m->reply, n) == 0);
}

static void readable(struct worker *w, struct conn *c)
{
    for (;;) {
        if (c->in_len == sizeof c->in) {   /* a reply longer than any correct one */
            if (c->count) { record_reply(w, now_ns() - c->ring[c->head].sent_ns, 0); c->count--; }
            broken(w, c, &w->r.resets);
            return;
        }
        size_t room = sizeof c->in - c->in_len;
        ssize_t n = recv(c->fd, c->in + c->in_len, room, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            broken(w, c, &w->r.resets);
            return;
        }
        if (n == 0) {
            if (c->kind == CLIENT && opt.per_request && opt.read_to_eof && c->count && c->in_len) {
                check_reply(w, c, c->in, c->in_len, now_ns());
                close_conn(w, c);
                client_go(w, c);
                return;
            }
            broken(w, c, &w->r.resets);
            return;
        }
        if (c->kind == HELD) { c->in_len = 0; continue; }
        c->in_len += (size_t)n;
        if (opt.per_request && opt.read_to_eof) continue;
        uint64_t t = now_ns();
        size_t start = 0;
        char *lf;
        while ((lf = memchr(c->in + start, '\n', c->in_len - start)) != NULL) {
            size_t end = (size_t)(lf - c->in) + 1;
            check_reply(w, c, c->in + start, end - start, t);
            start = end;
        }
        if (start) {
            memmove(c->in, c->in + start, c->in_len - start);
            c->in_len -= start;
        }
        if (opt.per_request) {
            if (c->count == 0) {
                close_conn(w, c);
                client_go(w, c);
                return;
            }
        } else if (c->count < opt.pipeline) {
            fill(w, c);
            if (c->fd < 0) return;
        }
        if ((size_t)n < room) break;
    }
}

/* Time out requests waiting too long; reconnect clients that waited. */
static void sweep(struct worker *w, int n_conns)
{
    uint64_t t = now_ns(), limit = (uint64_t)(opt.timeout * 1e9);
    for (int i = 0; i < n_conns; i++) {
        struct conn *c = &w->conns[i];
        if (c->state == WAITING && t >= c->wake_ns) {
            c->state = OFF;
            if (c->kind == HELD) {
                if (start_connect(w, c, 0) < 0) { w->r.held_failed++; wait_then_retry(c); }
                else if (c->state == OPEN) w->r.held_open++;
            } else {
                client_go(w, c);
            }
        } else if (c->kind == CLIENT && c->count && t - c->ring[c->head].sent_ns > limit) {
            drop_inflight(w, c, &w->r.timeouts);
            close_conn(w, c);
            client_go(w, c);
        } else if (c->kind == CLIENT && !opt.per_request && c->state == CONNECTING &&
                   t - c->connect_ns > limit) {
            close_conn(w, c);
            if (take_tickets(1) == 1) record_error(w, &w->r.timeouts, 1);
            client_go(w, c);
        }
    }
}

static int busy(struct worker *w)
{
    for (int i = 0; i < w->n_clients; i++)
        if (w->conns[i].count || w->conns[i].state == CONNECTING) return 1;
    return 0;
}

static void *run_worker(void *arg)
{
    struct worker *w = arg;
    int n_conns = w->n_clients + w->n_held;
    struct epoll_event events[256];
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd < 0) die("epoll_create1: %s", strerror(errno));
    for (int i = 0; i < n_conns; i++) {
        struct conn *c = &w->conns[i];
        c->kind = i < w->n_clients ? CLIENT : HELD;
        c->fd = -1;
        c->ring = calloc((size_t)opt.pipeline, sizeof *c->ring);
        if (!c->ring) die("out of memory");
    }
    for (int i = w->n_clients; i < n_conns; i++) {
        struct conn *c = &w->conns[i];
        int r = start_connect(w, c, 0);
        if (r < 0) { w->r.held_failed++; wait_then_retry(c); }
        else if (r == 1) w->r.held_open++;
    }
    for (int i = 0; i < w->n_clients; i++) client_go(w, &w->conns[i]);
    double last_sweep = now_s();
    for (;;) {
        double t = now_s();
        if (t >= t_end) w->stopping = 1;
        if (w->stopping && !busy(w)) break;
        if (t - last_sweep >= 0.01) { sweep(w, n_conns); last_sweep = t; }
        int n = epoll_wait(w->epfd, events, 256, 10);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            if (c->state == CONNECTING) { connected(w, c); continue; }
            if (events[i].events & EPOLLOUT) flush_out(w, c);
            if (c->fd >= 0 && (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
                readable(w, c);
        }
    }
    int tail = 0;
    for (int i = 0; i < n_conns; i++) {
        struct conn *c = &w->conns[i];
        if (c->kind == HELD && c->state == OPEN) tail++;
        close_conn(w, c);
    }
    w->r.held_open = tail;
    close(w->epfd);
    return NULL;
}

/* ---- command line and report ------------------------------------------- */

static void usage(void)
{
    fputs("usage: cload [--port P] [--clients C] [--duration S | --requests N]\n"
          "             [--connection-per-request [--read-to-eof] [--no-newline] [--half-close]\n"
          "              [--framing line|read]]\n"
          "             [--pipeline K] [--hold N] [--threads T] [--settle S] [--timeout S]\n"
          "             [--message TEXT] [--host 127.0.0.1] [--json FILE] [--quiet]\n"
          "             [--print-expected]\n",
          stderr);
    exit(2);
}

static double positive(const char *name, const char *text, int allow_zero)
{
    char *end;
    double v = strtod(text, &end);
    if (*end || v != v || v > 1e9 || (allow_zero ? v < 0 : v <= 0))
        die("%s wants a %s number, not '%s'", name, allow_zero ? "non-negative" : "positive", text);
    return v;
}

static long long whole(const char *name, const char *text, long long low, long long high)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (*end || errno || !*text || v < low || v > high)
        die("%s wants a whole number from %lld to %lld, not '%s'", name, low, high, text);
    return v;
}

static void add_message(const char *text)
{
    size_t n = strlen(text);
    struct message *m = &messages[n_messages];
    int r = expected_reply(text, n, m->reply);
    if (r < 0) die("the message must be valid UTF-8 and not blank: '%s'", text);
    if (memchr(text, '\n', n)) die("the message must not contain a newline");
    m->reply_len = (size_t)r;
    m->line = malloc(n + 1);
    if (!m->line) die("out of memory");
    memcpy(m->line, text, n);
    m->line_len = n;
    if (!opt.no_newline) m->line[m->line_len++] = '\n';
    n_messages++;
}

static double ms(uint64_t ns) { return (double)ns / 1e6; }

static uint64_t percentile(const uint64_t *hist, uint64_t total, double p)
{
    if (!total) return 0;
    uint64_t rank = (uint64_t)((double)total * p / 100.0 + 0.999999999);
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (int b = 0; b < HBUCKETS; b++) {
        seen += hist[b];
        if (seen >= rank) return bucket_top(b);
    }
    return bucket_top(HBUCKETS - 1);
}

int main(int argc, char **argv)
{
    int print_expected = 0, pipeline_given = 0;
    const char *host = "127.0.0.1";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define VALUE() do { if (!v) die("%s needs a value", a); i++; } while (0)
        if (!strcmp(a, "--port")) { VALUE(); opt.port = (int)whole(a, v, 1, 65535); }
        else if (!strcmp(a, "--host")) { VALUE(); host = v; }
        else if (!strcmp(a, "--clients")) { VALUE(); opt.clients = (int)whole(a, v, 1, 100000); }
        else if (!strcmp(a, "--pipeline")) { VALUE(); opt.pipeline = (int)whole(a, v, 1, 1024); pipeline_given = 1; }
        else if (!strcmp(a, "--threads") || !strcmp(a, "--processes")) { VALUE(); opt.threads = (int)whole(a, v, 1, 64); }
        else if (!strcmp(a, "--hold") || !strcmp(a, "--idle")) { VALUE(); opt.hold = (int)whole(a, v, 0, 100000); }
        else if (!strcmp(a, "--duration")) { VALUE(); opt.duration = positive(a, v, 0); }
        else if (!strcmp(a, "--settle")) { VALUE(); opt.settle = positive(a, v, 1); }
        else if (!strcmp(a, "--timeout")) { VALUE(); opt.timeout = positive(a, v, 0); }
        else if (!strcmp(a, "--requests")) { VALUE(); opt.requests = whole(a, v, 1, 1000000000000LL); opt.duration = 1e9; }
        else if (!strcmp(a, "--json")) { VALUE(); opt.json = v; }
        else if (!strcmp(a, "--message")) { VALUE(); opt.message = v; }
        else if (!strcmp(a, "--connection-per-request")) opt.per_request = 1;
        else if (!strcmp(a, "--read-to-eof")) opt.read_to_eof = 1;
        else if (!strcmp(a, "--no-newline")) opt.no_newline = 1;
        else if (!strcmp(a, "--half-close")) opt.half_close = 1;
        else if (!strcmp(a, "--framing")) {
            VALUE();
            if (!strcmp(v, "read")) opt.per_request = opt.no_newline = opt.read_to_eof = 1;
            else if (!strcmp(v, "line")) opt.no_newline = opt.read_to_eof = 0;
            else die("--framing wants line or read, not '%s'", v);
        }
        else if (!strcmp(a, "--quiet")) opt.quiet = 1;
        else if (!strcmp(a, "--print-expected")) print_expected = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) usage();
        else die("unknown option '%s' (--help lists them)", a);
#undef VALUE
    }
    if (strcmp(host, "127.0.0.1") && strcmp(host, "localhost"))
        die("--host: traffic goes to 127.0.0.1 only, not '%s'", host);
    if (opt.per_request && pipeline_given && opt.pipeline != 1)
        die("--pipeline needs persistent connections");
    if ((opt.read_to_eof || opt.no_newline || opt.half_close) && !opt.per_request)
        die("--read-to-eof, --no-newline and --half-close need --connection-per-request");
    if (opt.per_request) opt.pipeline = 1;

    messages = calloc(N_DEFAULT + 1, sizeof *messages);
    if (!messages) die("out of memory");
    if (opt.message) add_message(opt.message);
    else for (size_t i = 0; i < N_DEFAULT; i++) add_message(DEFAULT_MESSAGES[i]);
    if (print_expected) {
        for (size_t i = 0; i < n_messages; i++) {
            fwrite(opt.message ? opt.message : DEFAULT_MESSAGES[i], 1,
                   strlen(opt.message ? opt.message : DEFAULT_MESSAGES[i]), stdout);
            putchar('\t');
            fwrite(messages[i].reply, 1, messages[i].reply_len, stdout);
        }
        return 0;
    }

    signal(SIGPIPE, SIG_IGN);
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)opt.port);
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    {   /* the server must be there before the clock starts */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&target, sizeof target) < 0)
            die("cannot connect to 127.0.0.1 port %d: %s", opt.port, strerror(errno));
        close(fd);
    }
    struct rlimit rl;
    long need = (long)opt.clients + opt.hold + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (long)rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)need ? rl.rlim_max : (rlim_t)need;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    if (opt.threads > opt.clients) opt.threads = opt.clients;
    tickets = opt.requests;
    t_origin = now_s();
    t_measure = t_origin + opt.settle;
    t_end = t_measure + opt.duration;
    struct worker *workers = calloc((size_t)opt.threads, sizeof *workers);
    if (!workers) die("out of memory");
    for (int i = 0; i < opt.threads; i++) {
        struct worker *w = &workers[i];
        w->index = i;
        w->n_clients = opt.clients / opt.threads + (i < opt.clients % opt.threads);
        w->n_held = opt.hold / opt.threads + (i < opt.hold % opt.threads);
        w->next_message = (uint32_t)i * 7u;
        w->conns = calloc((size_t)(w->n_clients + w->n_held), sizeof *w->conns);
        if (!w->conns) die("out of memory");
        if (pthread_create(&w->thread, NULL, run_worker, w)) die("cannot start a thread");
    }
    struct result total;
    memset(&total, 0, sizeof total);
    for (int i = 0; i < opt.threads; i++) {
        struct result *r = &workers[i].r;
        pthread_join(workers[i].thread, NULL);
        total.ok += r->ok;
        total.wrong += r->wrong;
        total.connect_errors += r->connect_errors;
        total.resets += r->resets;
        total.timeouts += r->timeouts;
        total.resolved += r->resolved;
        total.held_open += r->held_open;
        total.held_reopened += r->held_reopened;
        total.held_failed += r->held_failed;
        total.sum_ns += r->sum_ns;
        if (r->max_ns > total.max_ns) total.max_ns = r->max_ns;
        if (r->last_s > total.last_s) total.last_s = r->last_s;
        for (int b = 0; b < HBUCKETS; b++) total.hist[b] += r->hist[b];
    }

    uint64_t timed = 0;
    for (int b = 0; b < HBUCKETS; b++) timed += total.hist[b];
    double elapsed = total.last_s > t_measure ? total.last_s - t_measure : 0.0;
    long long errors = total.connect_errors + total.resets + total.timeouts;
    long long requests = total.ok + total.wrong + errors;
    double throughput = elapsed > 0 ? (double)total.ok / elapsed : 0.0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6;
    double cpu = user + (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
    /* The settle time's requests cost CPU too: divide by all of them. */
    double cpu_us = total.resolved ? cpu / (double)total.resolved * 1e6 : 0.0;
    uint64_t p50 = percentile(total.hist, timed, 50), p90 = percentile(total.hist, timed, 90),
             p99 = percentile(total.hist, timed, 99), p999 = percentile(total.hist, timed, 99.9);
    double mean = timed ? total.sum_ns / (double)timed / 1e6 : 0.0;

    if (opt.json) {
        FILE *f = fopen(opt.json, "w");
        if (!f) die("cannot write %s: %s", opt.json, strerror(errno));
        fprintf(f,
                "{\"elapsed\": %.6f, \"requests\": %lld, \"ok\": %lld, \"wrong\": %lld,\n"
                " \"errors\": {\"total\": %lld, \"connect\": %lld, \"reset\": %lld, \"timeout\": %lld},\n"
                " \"throughput\": %.3f,\n"
                " \"latency_ms\": {\"p50\": %.6f, \"p90\": %.6f, \"p99\": %.6f, \"p99.9\": %.6f, "
                "\"mean\": %.6f, \"max\": %.6f},\n"
                " \"held\": {\"open\": %lld, \"reopened\": %lld, \"failed\": %lld},\n"
                " \"generator\": {\"name\": \"cload\", \"threads\": %d, \"cpu_seconds\": %.6f, \"user_seconds\": %.6f, "
                "\"resolved\": %lld, \"cpu_us_per_request\": %.3f},\n"
                " \"settings\": {\"port\": %d, \"clients\": %d, \"connection_per_request\": %s, "
                "\"pipeline\": %d, \"hold\": %d, \"duration\": %.3f, \"settle\": %.3f, "
                "\"read_to_eof\": %s, \"no_newline\": %s, \"half_close\": %s, \"timeout\": %.3f}}\n",
                elapsed, requests, total.ok, total.wrong, errors, total.connect_errors,
                total.resets, total.timeouts, throughput, ms(p50), ms(p90), ms(p99), ms(p999), mean,
                ms(total.max_ns), total.held_open, total.held_reopened, total.held_failed,
                opt.threads, cpu, user, total.resolved, cpu_us, opt.port, opt.clients,
                opt.per_request ? "true" : "false", opt.pipeline, opt.hold,
                opt.duration >= 1e9 ? 0.0 : opt.duration, opt.settle,
                opt.read_to_eof ? "true" : "false", opt.no_newline ? "true" : "false",
                opt.half_close ? "true" : "false", opt.timeout);
        if (fclose(f)) die("cannot write %s: %s", opt.json, strerror(errno));
    }
    if (!opt.quiet)
        fprintf(stderr,
                "cload 127.0.0.1:%d: %d clients, %s: %lld requests in %.2f s, %.0f req/s, "
                "wrong %lld, errors %lld (connect %lld, reset %lld, timeout %lld), "
                "p50 %.3f ms, p99 %.3f ms, max %.3f ms, generator %.2f us/request (%.0f%% in the kernel)\n",
                opt.port, opt.clients, opt.per_request ? "connection per request" : "persistent",
                requests, elapsed, throughput, total.wrong, errors, total.connect_errors,
                total.resets, total.timeouts, ms(p50), ms(p99), ms(total.max_ns), cpu_us,
                cpu > 0 ? (cpu - user) / cpu * 100 : 0.0);
    return total.wrong || errors ? 3 : 0;
}
