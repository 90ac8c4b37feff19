/* front_fuzz.c: libFuzzer target for the agent's HTTP/1.1 front (front.c:
 * http-parser, the framing checks, the head and body limits, pipelining,
 * chunked uploads, Expect, keep-alive). The input is what one client sends
 * on one real loopback connection, then it half-closes; the front serves it
 * on a libevent loop run by this thread until the client has read
 * everything and the front has closed the connection.
 *
 * The handler answers by the target's first letters: /s a streamed reply,
 * /l a reply from a later loop iteration (or abandon when the client went),
 * /h a held reply whose flush hook fails when the input's last byte is odd,
 * anything else a plain 200. Checked besides "no sanitizer report": every
 * request handed over has a method and a target within the head limit, no
 * header value holding CR or LF, a body within the body limit that can be
 * taken once; whatever the client reads back begins with a status line and
 * never holds a header line injected through a response header value; the
 * front closes the connection within 3 s of the client's half-close, so no
 * connection is left open across inputs. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "agent/front.h"
#include "base/tg_base.h"
#include "tests/fuzz/fuzz.h"

#define MAX_BODY 4096
#define MAX_HEAD 2048

static struct event_base *g_base;
static tg_front_t *g_front;
static struct sockaddr_in g_addr;
static int g_fail_flush;

typedef struct later {
    struct event *l_ev;
    tg_front_conn_t *l_c;
    int l_gone;
} later_t;

static void check_request(tg_front_conn_t *c)
{
    size_t tl = 0;
    const char *m = tg_front_method(c), *t = tg_front_target(c, &tl);
    TG_FUZZ_CHECK(m != NULL && m[0] != '\0');
    TG_FUZZ_CHECK(t != NULL && tl <= MAX_HEAD);
    const char *names[] = {"Host", "Content-Type", "Transfer-Encoding", "Content-Length", "X", ""};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *vals[8];
        size_t n = tg_front_header_all(c, names[i], vals, 8);
        for (size_t k = 0; k < n && k < 8; k++)
            TG_FUZZ_CHECK(vals[k] != NULL && strpbrk(vals[k], "\r\n") == NULL);
    }
    size_t bl = 0;
    char *b = tg_front_body_take(c, &bl);
    TG_FUZZ_CHECK(b != NULL && bl <= MAX_BODY && b[bl] == '\0');
    tg_free(b);
    TG_FUZZ_CHECK(tg_front_body_take(c, &bl) == NULL);
}

static void reply(tg_front_conn_t *c)
{
    TG_FUZZ_CHECK(tg_front_add_header(c, "X-Echo", "a\r\nInjected: 1") == 0);
    tg_front_reply(c, 200, "{}", 2);
}

static void on_gone(tg_front_conn_t *c, void *arg)
{
    later_t *l = arg;
    l->l_gone = 1;
    tg_front_abandon(c);
}

static void later_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    later_t *l = arg;
    if (!l->l_gone)
        reply(l->l_c);
    event_free(l->l_ev);
    tg_free(l);
}

static void handler(tg_front_conn_t *c, void *arg)
{
    (void)arg;
    check_request(c);
    size_t tl;
    const char *t = tg_front_target(c, &tl);
    char k = tl >= 2 && t[0] == '/' ? t[1] : '\0';
    if (k == 'l') {
        later_t *l = tg_calloc(1, sizeof *l);
        TG_FUZZ_CHECK(l != NULL);
        l->l_c = c;
        l->l_ev = evtimer_new(g_base, later_fire, l);
        TG_FUZZ_CHECK(l->l_ev != NULL);
        tg_front_set_events(c, on_gone, NULL, l);
        struct timeval now0 = {0, 0};
        evtimer_add(l->l_ev, &now0);
        return;
    }
    if (k == 'h')
        tg_front_hold(c, 1);
    if (k == 's' || k == 'h') {
        tg_front_add_header(c, "Content-Type", "text/event-stream");
        if (tg_front_stream_start(c, 200) == 0)
            tg_front_stream_write(c, "data: 1\n\n", 9);
        tg_front_stream_end(c, "data: [DONE]\n\n", 14);
        return;
    }
    reply(c);
}

static int before_flush(void *arg)
{
    (void)arg;
    return g_fail_flush ? -1 : 0;
}

static void setup(void)
{
    char err[256];
    g_base = event_base_new();
    TG_FUZZ_CHECK(g_base != NULL);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    TG_FUZZ_CHECK(fd >= 0);
    memset(&g_addr, 0, sizeof g_addr);
    g_addr.sin_family = AF_INET;
    g_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof g_addr;
    TG_FUZZ_CHECK(bind(fd, (struct sockaddr *)&g_addr, sizeof g_addr) == 0 && listen(fd, 64) == 0);
    TG_FUZZ_CHECK(getsockname(fd, (struct sockaddr *)&g_addr, &sl) == 0);
    tg_front_opts_t o = {.fo_max_body = MAX_BODY,
                         .fo_max_head = MAX_HEAD,
                         .fo_timeout_s = 5,
                         .fo_handler = handler,
                         .fo_before_flush = before_flush};
    TG_FUZZ_CHECK(tg_front_create(g_base, fd, &o, &g_front, err, sizeof err) == 0);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (g_base == NULL)
        setup();
    g_fail_flush = size > 0 && (data[size - 1] & 1);
    int cfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    TG_FUZZ_CHECK(cfd >= 0);
    if (connect(cfd, (struct sockaddr *)&g_addr, sizeof g_addr) != 0)
        TG_FUZZ_CHECK(errno == EINPROGRESS);
    size_t sent = 0, got = 0;
    int shut = 0, closed = 0;
    static char out[1 << 16];
    int64_t until = now_ms() + 3000;
    while (!closed && now_ms() < until) {
        event_base_loop(g_base, EVLOOP_NONBLOCK);
        int progress = 0;
        if (sent < size) {
            ssize_t w = send(cfd, data + sent, size - sent, MSG_NOSIGNAL);
            if (w > 0) {
                sent += (size_t)w;
                progress = 1;
            } else if (w < 0 && errno != EAGAIN && errno != ENOTCONN) {
                sent = size; /* the front closed on us: stop sending */
            }
        }
        if (sent == size && !shut) {
            shutdown(cfd, SHUT_WR);
            shut = 1;
        }
        char buf[16384];
        ssize_t r = recv(cfd, buf, sizeof buf, MSG_DONTWAIT);
        if (r > 0) {
            size_t room = sizeof out - 1 - got;
            memcpy(out + got, buf, (size_t)r < room ? (size_t)r : room);
            got += (size_t)r < room ? (size_t)r : room;
            progress = 1;
        } else if (r == 0 || (r < 0 && errno != EAGAIN && errno != ENOTCONN)) {
            closed = 1;
        }
        if (!progress) {
            struct pollfd p = {cfd, POLLIN, 0};
            poll(&p, 1, 1);
        }
    }
    close(cfd);
    /* the front notices the close; nothing may stay open across inputs */
    for (int i = 0; i < 2000 && tg_front_nconns(g_front) > 0; i++) {
        event_base_loop(g_base, EVLOOP_NONBLOCK);
        if (tg_front_nconns(g_front) > 0)
            poll(NULL, 0, 1);
    }
    TG_FUZZ_CHECK(closed);
    TG_FUZZ_CHECK(tg_front_nconns(g_front) == 0);
    out[got] = '\0';
    if (got >= 7)
        TG_FUZZ_CHECK(memcmp(out, "HTTP/1.", 7) == 0);
    TG_FUZZ_CHECK(memmem(out, got, "\nInjected", 9) == NULL);
    return 0;
}
