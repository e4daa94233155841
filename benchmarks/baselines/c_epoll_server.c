/*
 * c_epoll_server: the count protocol served by one epoll loop in C, as fast
 * as a server on this machine can answer it: the limit the other servers are
 * measured against (no journal, no log, no idle timeout).
 *
 *     cc -O2 -o c_epoll_server benchmarks/baselines/c_epoll_server.c
 *     ./c_epoll_server --port 5055 [--interface 127.0.0.1] [--close-after-reply]
 *
 * Requests are LF-framed lines (a trailing CR is dropped), answered in order,
 * pipelining allowed: "<k> sí\n" or "<k> no\n" where k is how often the last
 * code point of the line, stripped of whitespace as Python's str.strip does,
 * occurs in it; "ERR empty message\n", "ERR invalid UTF-8\n" and, for a line
 * over 16384 bytes, "ERR line too long\n" and close.  When the client closes
 * its side, a final unterminated line is answered before the connection is
 * closed.  --close-after-reply closes each connection after its first reply
 * (the original design's one message per connection; with it, the first read
 * that holds no LF is taken as the whole message, as the original's
 * recv(1024) does).
 *
 * With --port 0 the kernel picks the port; "listening on 127.0.0.1:PORT" is
 * printed on stdout once the socket listens.  SIGTERM or SIGINT stop it.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
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

#include "../count_reply.h"

#define MAX_LINE 16384

struct conn {
    int fd;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_cap;
    int closing;        /* close once the output is written */
    int eof;            /* the client closed its side: stop reading */
    int wants_out;
};

static int epfd, listener, close_after_reply;
static volatile sig_atomic_t stop;

static void on_signal(int signum) { (void)signum; stop = 1; }

static void die(const char *what)
{
    fprintf(stderr, "c_epoll_server: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void append(struct conn *c, const char *data, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        c->out_cap = (c->out_len + n) * 2;
        c->out = realloc(c->out, c->out_cap);
        if (!c->out) die("realloc");
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

/* Answer one line (without its LF). */
static void answer(struct conn *c, const char *line, size_t n)
{
    static uint32_t cps[MAX_LINE + 1];
    char reply[64];
    if (n && line[n - 1] == '\r') n--;
    int len = count_reply(line, n, cps, reply);
    if (len == COUNT_INVALID_UTF8) append(c, "ERR invalid UTF-8\n", 18);
    else if (len == COUNT_EMPTY) append(c, "ERR empty message\n", 18);
    else append(c, reply, (size_t)len);
}

static void drop(struct conn *c)
{
    close(c->fd);   /* also removes it from the epoll set */
    free(c->in);
    free(c->out);
    free(c);
}

/* Write what can be written; 0 when the connection is gone. */
static int flush(struct conn *c)
{
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            drop(c);
            return 0;
        }
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    if (!c->out_len && c->closing) {
        drop(c);
        return 0;
    }
    int want = c->out_len > 0;
    if (want != c->wants_out || c->eof) {
        struct epoll_event ev = {.events = (c->eof ? 0 : EPOLLIN) | (want ? EPOLLOUT : 0),
                                 .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->wants_out = want;
    }
    return 1;
}

static void readable(struct conn *c)
{
    int eof = 0;
    for (;;) {
        if (c->in_cap - c->in_len < 4096) {
            c->in_cap = c->in_cap ? c->in_cap * 2 : 8192;
            c->in = realloc(c->in, c->in_cap);
            if (!c->in) die("realloc");
        }
        size_t room = c->in_cap - c->in_len;
        ssize_t n = recv(c->fd, c->in + c->in_len, room, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            drop(c);
            return;
        }
        if (n == 0) { eof = 1; break; }
        c->in_len += (size_t)n;
        if ((size_t)n < room) break;
    }
    size_t start = 0;
    char *lf;
    while (!c->closing && (lf = memchr(c->in + start, '\n', c->in_len - start)) != NULL) {
        size_t end = (size_t)(lf - c->in);
        answer(c, c->in + start, end - start);
        start = end + 1;
        if (close_after_reply) c->closing = 1;
    }
    if (start) {
        memmove(c->in, c->in + start, c->in_len - start);
        c->in_len -= start;
    }
    if (!c->closing && c->in_len > MAX_LINE) {
        append(c, "ERR line too long\n", 18);
        c->closing = 1;
    }
    if (!c->closing && c->in_len && (eof || close_after_reply)) {
        answer(c, c->in, c->in_len);
        c->closing = 1;
    }
    if (eof) c->closing = c->eof = 1;
    flush(c);
}

static void accept_all(void)
{
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE) perror("c_epoll_server: accept");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) die("calloc");
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }
}

int main(int argc, char **argv)
{
    int port = 5050;
    const char *interface = "127.0.0.1";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) {
            char *end;
            long p = strtol(argv[++i], &end, 10);
            if (*end || p < 0 || p > 65535) {
                fprintf(stderr, "c_epoll_server: --port wants 0-65535, not '%s'\n", argv[i]);
                return 2;
            }
            port = (int)p;
        } else if (!strcmp(argv[i], "--interface") && i + 1 < argc) {
            interface = argv[++i];
        } else if (!strcmp(argv[i], "--close-after-reply")) {
            close_after_reply = 1;
        } else {
            fprintf(stderr, "usage: c_epoll_server [--port P] [--interface ADDR] "
                            "[--close-after-reply]\n");
            return 2;
        }
    }
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, interface, &address.sin_addr) != 1) {
        fprintf(stderr, "c_epoll_server: --interface wants an IPv4 address, not '%s'\n", interface);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0) die("socket");
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) < 0) die("bind");
    if (listen(listener, 4096) < 0) die("listen");
    socklen_t len = sizeof address;
    getsockname(listener, (struct sockaddr *)&address, &len);
    printf("listening on %s:%d\n", interface, ntohs(address.sin_port));
    fflush(stdout);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev) < 0) die("epoll_ctl");
    struct epoll_event events[512];
    while (!stop) {
        int n = epoll_wait(epfd, events, 512, 500);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) { accept_all(); continue; }
            if (!c->eof && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                readable(c);   /* may free c, and flushes */
            } else {
                flush(c);      /* writable, or the peer is gone: send tells */
            }
        }
    }
    return 0;
}
