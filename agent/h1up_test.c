/* h1up_test.c: the lean upstream client (h1up.h) against tiny servers on
 * loopback in this process: the response parser alone (split heads,
 * chunked and Content-Length bodies, 1xx skipped, 204/304 without a body,
 * malformed answers), and whole calls on a loop: keep-alive reuse, the
 * stale-connection retry (also for a reset in the middle of a large body),
 * an idle connection the server closed or sent a 408 on not reused, pause
 * and resume (also while the body is still going), an early 413 read
 * after the send broke, a cancel from inside a callback, a hang ended by
 * the timeout, a refused connect. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "agent/h1up.h"
#include "base/tg_base.h"

/* ---- what a call saw ---------------------------------------------------- */

typedef struct seen {
    tg_buf_t s_fields;
    tg_buf_t s_body;
    int s_status;
    char s_ctype[96];
    int s_done;
    tg_h1_result_t s_res;
    char s_msg[200];
    int s_pause;          /* answer TG_H1_PAUSE this many times */
    struct event_base *s_base;
} seen_t;

static void seen_init(seen_t *s, struct event_base *base)
{
    memset(s, 0, sizeof *s);
    tg_buf_init(&s->s_fields, 1u << 20);
    tg_buf_init(&s->s_body, 16u << 20);
    s->s_base = base;
}

static void seen_free(seen_t *s)
{
    tg_buf_free(&s->s_fields);
    tg_buf_free(&s->s_body);
}

static void on_field(void *arg, const char *name, size_t nl, const char *value, size_t vl)
{
    seen_t *s = arg;
    tg_buf_printf(&s->s_fields, "%.*s=%.*s;", (int)nl, name, (int)vl, value);
}

static void on_head(void *arg, int status, const char *ctype)
{
    seen_t *s = arg;
    s->s_status = status;
    snprintf(s->s_ctype, sizeof s->s_ctype, "%s", ctype);
}

static int on_body(void *arg, const char *data, size_t n)
{
    seen_t *s = arg;
    if (s->s_pause > 0) {
        s->s_pause--;
        return TG_H1_PAUSE;
    }
    tg_buf_append(&s->s_body, data, n);
    return TG_H1_TAKEN;
}

static void on_done(void *arg, tg_h1_result_t res, const char *msg)
{
    seen_t *s = arg;
    s->s_done = 1;
    s->s_res = res;
    snprintf(s->s_msg, sizeof s->s_msg, "%s", msg);
    if (s->s_base)
        event_base_loopbreak(s->s_base);
}

static const tg_h1_handler_t hh = {.hh_field = on_field, .hh_head = on_head, .hh_body = on_body, .hh_done = on_done};

/* ---- the parser alone ------------------------------------------------------ */

static int parse_in(const char *text, size_t step, seen_t *s, char *msg, size_t msglen)
{
    tg_h1_parse_t *p = tg_h1_parse_new(&hh, s);
    size_t len = strlen(text), off = 0;
    int rc = 0;
    while (rc == 0 && off < len) {
        size_t n = len - off > step ? step : len - off;
        rc = tg_h1_parse_feed(p, text + off, n, msg, msglen);
        off += n;
    }
    if (rc == 0)
        rc = tg_h1_parse_feed(p, NULL, 0, msg, msglen);
    tg_h1_parse_free(p);
    return rc;
}

static void test_parse_content_length_split_anywhere(void **state)
{
    (void)state;
    const char *r = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id:  up-1 \r\n"
                    "Content-Length: 11\r\n\r\n{\"ok\":true}";
    for (size_t step = 1; step <= strlen(r); step++) {
        seen_t s;
        char msg[200];
        seen_init(&s, NULL);
        assert_int_equal(parse_in(r, step, &s, msg, sizeof msg), 1);
        assert_int_equal(s.s_status, 200);
        assert_string_equal(s.s_ctype, "application/json");
        assert_string_equal(s.s_fields.b_data,
                            "Content-Type=application/json;x-request-id=up-1;Content-Length=11;");
        assert_int_equal(s.s_body.b_len, 11);
        assert_memory_equal(s.s_body.b_data, "{\"ok\":true}", 11);
        seen_free(&s);
    }
}

static void test_parse_chunked_1xx_and_close_delimited(void **state)
{
    (void)state;
    seen_t s;
    char msg[200];
    seen_init(&s, NULL);
    assert_int_equal(parse_in("HTTP/1.1 100 Continue\r\nx-early: 1\r\n\r\nHTTP/1.1 200 OK\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 5, &s, msg, sizeof msg),
                     1);
    assert_int_equal(s.s_status, 200);
    assert_null(strstr(s.s_fields.b_data, "x-early")); /* a 1xx head's fields are not the answer's */
    assert_int_equal(s.s_body.b_len, 5);
    assert_memory_equal(s.s_body.b_data, "abcde", 5);
    seen_free(&s);

    seen_init(&s, NULL);
    assert_int_equal(parse_in("HTTP/1.0 502 Bad Gateway\r\n\r\nuntil the end", 4, &s, msg, sizeof msg), 1);
    assert_int_equal(s.s_status, 502);
    assert_string_equal(s.s_ctype, "");
    assert_int_equal(s.s_body.b_len, 13);
    seen_free(&s);
}

static void test_parse_malformed(void **state)
{
    (void)state;
    const char *bad[] = {
        "this is not http\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", /* then EOF */
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        seen_t s;
        char msg[200] = "";
        seen_init(&s, NULL);
        assert_int_equal(parse_in(bad[i], 3, &s, msg, sizeof msg), -1);
        assert_non_null(strstr(msg, "malformed HTTP response"));
        seen_free(&s);
    }
}

/* 204 and 304 have no body whatever their head says, and a 1xx none
 * either: the response ends at the head, with no EOF needed (http-parser
 * 2.9 alone would wait for the named body). */
static void test_parse_no_body_statuses(void **state)
{
    (void)state;
    const char *r[] = {
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++) {
        seen_t s;
        char msg[200] = "";
        seen_init(&s, NULL);
        tg_h1_parse_t *p = tg_h1_parse_new(&hh, &s);
        assert_non_null(p);
        assert_int_equal(tg_h1_parse_feed(p, r[i], strlen(r[i]), msg, sizeof msg), 1);
        assert_int_equal(s.s_status, i == 1 ? 304 : 204);
        assert_int_equal(s.s_body.b_len, 0);
        tg_h1_parse_free(p);
        seen_free(&s);
    }
}

/* ---- a tiny server ----------------------------------------------------------- */

/* The server answers each request it reads (up to the blank line and its
 * Content-Length body) with `answer`; `close_after` requests on a
 * connection, then it closes; `hang`: it reads and never answers. */
typedef struct srv {
    int sv_fd;
    int sv_port;
    const char *sv_answer;
    int sv_close_after;   /* 0: keep the connection open */
    int sv_hang;
    int sv_drop_second;   /* a connection's second request: read, then closed unanswered */
    char sv_head[2048];   /* the last request's head */
    int sv_conns;         /* connections accepted */
    int sv_requests;
    pthread_t sv_thread;
    int sv_stop;
} srv_t;

static void *srv_main(void *arg)
{
    srv_t *sv = arg;
    while (!sv->sv_stop) {
        int fd = accept(sv->sv_fd, NULL, NULL);
        if (fd < 0)
            break;
        __atomic_add_fetch(&sv->sv_conns, 1, __ATOMIC_SEQ_CST);
        char buf[65536];
        size_t have = 0;
        int served = 0;
        for (;;) {
            ssize_t n = read(fd, buf + have, sizeof buf - have - 1);
            if (n <= 0)
                break;
            have += (size_t)n;
            buf[have] = '\0';
            char *end = strstr(buf, "\r\n\r\n");
            if (!end)
                continue;
            char *cl = strcasestr(buf, "Content-Length:");
            size_t body = cl ? (size_t)strtoul(cl + 15, NULL, 10) : 0;
            size_t need = (size_t)(end + 4 - buf) + body;
            snprintf(sv->sv_head, sizeof sv->sv_head, "%.*s", (int)(end + 4 - buf), buf);
            if (have < need)
                continue;
            memmove(buf, buf + need, have - need);
            have -= need;
            __atomic_add_fetch(&sv->sv_requests, 1, __ATOMIC_SEQ_CST);
            if (sv->sv_hang)
                continue;
            if (sv->sv_drop_second && served == 1)
                break;
            if (write(fd, sv->sv_answer, strlen(sv->sv_answer)) < 0)
                break;
            served++;
            if (sv->sv_close_after && served >= sv->sv_close_after)
                break;
        }
        close(fd);
    }
    return NULL;
}

static void srv_start(srv_t *sv, const char *answer)
{
    memset(sv, 0, sizeof *sv);
    sv->sv_answer = answer;
    sv->sv_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(sv->sv_fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(sv->sv_fd, 16), 0);
    getsockname(sv->sv_fd, (struct sockaddr *)&sa, &sl);
    sv->sv_port = ntohs(sa.sin_port);
}

static void srv_run(srv_t *sv)
{
    pthread_create(&sv->sv_thread, NULL, srv_main, sv);
}

static void srv_stop(srv_t *sv)
{
    sv->sv_stop = 1;
    shutdown(sv->sv_fd, SHUT_RDWR);
    close(sv->sv_fd);
    pthread_join(sv->sv_thread, NULL);
}

/* One call to the server on h: runs the loop until it ends (or 5 s). */
static void call(tg_h1_t *h, struct event_base *base, const char *url, uint32_t total_ms, seen_t *s)
{
    char err[200];
    tg_h1_call_t *c = NULL;
    tg_h1_req_t r = {.hr_method = "POST", .hr_url = url, .hr_fields = "Content-Type: application/json\r\n",
                     .hr_fields_len = 32, .hr_body = "{\"q\":1}", .hr_body_len = 7, .hr_total_ms = total_ms};
    assert_int_equal(tg_h1_start(h, &r, &hh, s, &c, err, sizeof err), 0);
    assert_int_equal(s->s_done, 0); /* never from inside tg_h1_start */
    struct timeval tv = {5, 0};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    assert_int_equal(s->s_done, 1);
}

static const char ok_answer[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

static void test_keepalive_reuse(void **state)
{
    (void)state;
    srv_t sv;
    srv_start(&sv, ok_answer);
    srv_run(&sv);
    struct event_base *base = event_base_new();
    tg_h1_t *h;
    char err[200], url[100];
    tg_h1_opts_t o = {0};
    assert_int_equal(tg_h1_new(base, &o, &h, err, sizeof err), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/chat/completions", sv.sv_port);
    for (int i = 0; i < 3; i++) {
        seen_t s;
        seen_init(&s, base);
        call(h, base, url, 2000, &s);
        assert_int_equal(s.s_res, TG_H1_OK);
        assert_int_equal(s.s_status, 200);
        assert_int_equal(tg_h1_idle(h), 1);
        seen_free(&s);
    }
    assert_int_equal(tg_h1_opened(h), 1);
    assert_int_equal(__atomic_load_n(&sv.sv_conns, __ATOMIC_SEQ_CST), 1);
    tg_h1_free(h);
    event_base_free(base);
    srv_stop(&sv);
}

/* The server closes each connection after one answer: the next call finds
 * the pooled connection closed, dropped by its EOF or retried once. */
static void test_server_closed_idle_connection(void **state)
{
    (void)state;
    srv_t sv;
    srv_start(&sv, ok_answer);
    sv.sv_close_after = 1;
    srv_run(&sv);
    struct event_base *base = event_base_new();
    tg_h1_t *h;
    char err[200], url[100];
    tg_h1_opts_t o = {0};
    assert_int_equal(tg_h1_new(base, &o, &h, err, sizeof err), 0);
    snprintf(url, sizeof url, "http://localhost:%d/x", sv.sv_port);
    for (int i = 0; i < 4; i++) {
        seen_t s;
        seen_init(&s, base);
        call(h, base, url, 2000, &s);
        assert_int_equal(s.s_res, TG_H1_OK);
        assert_int_equal(s.s_status, 200);
        seen_free(&s);
        if (i == 1) {
            /* let the loop see the close: the idle connection is dropped */
            for (int j = 0; j < 200 && tg_h1_idle(h); j++) {
                usleep(10000);
                event_base_loop(base, EVLOOP_NONBLOCK);
            }
            assert_int_equal(tg_h1_idle(h), 0);
        }
    }
    assert_int_equal(__atomic_load_n(&sv.sv_requests, __ATOMIC_SEQ_CST), 4);
    assert_int_equal(tg_h1_opened(h), 4);
    tg_h1_free(h);
    event_base_free(base);
    srv_stop(&sv);
}

static void run_until_done(struct event_base *base, seen_t *s)
{
    struct timeval tv = {5, 0};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    assert_int_equal(s->s_done, 1);
}

/* A client on a new loop, and its URL for a server on port. */
static void cli_open(int port, struct event_base **base, tg_h1_t **h, char *url, size_t urllen)
{
    char err[200];
    tg_h1_opts_t o = {0};
    *base = event_base_new();
    assert_non_null(*base);
    assert_int_equal(tg_h1_new(*base, &o, h, err, sizeof err), 0);
    snprintf(url, urllen, "http://127.0.0.1:%d/x", port);
}

static void cli_close(tg_h1_t *h, struct event_base *base)
{
    tg_h1_free(h);
    event_base_free(base);
}

/* The server takes the next request on a kept connection and closes it
 * unanswered (its idle timeout and our send crossed): the request goes
 * once more on a new connection, so every call still gets its answer. */
static void test_stale_connection_retried(void **state)
{
    (void)state;
    srv_t sv;
    srv_start(&sv, ok_answer);
    sv.sv_drop_second = 1;
    srv_run(&sv);
    struct event_base *base;
    tg_h1_t *h;
    char url[100];
    cli_open(sv.sv_port, &base, &h, url, sizeof url);
    for (int i = 0; i < 3; i++) {
        seen_t s;
        seen_init(&s, base);
        call(h, base, url, 2000, &s);
        assert_int_equal(s.s_res, TG_H1_OK);
        assert_int_equal(s.s_status, 200);
        seen_free(&s);
    }
    /* calls 2 and 3 each went twice: on the kept connection, then a new one */
    assert_int_equal(tg_h1_opened(h), 3);
    assert_int_equal(__atomic_load_n(&sv.sv_requests, __ATOMIC_SEQ_CST), 5);
    cli_close(h, base);
    srv_stop(&sv);
}

/* A caller's Host or Content-Length field is left out: the client frames
 * the request itself, and a second one would make it ambiguous. */
static void test_framing_fields_not_doubled(void **state)
{
    (void)state;
    srv_t sv;
    srv_start(&sv, ok_answer);
    srv_run(&sv);
    struct event_base *base;
    tg_h1_t *h;
    char url[100], err[200];
    cli_open(sv.sv_port, &base, &h, url, sizeof url);
    const char fields[] = "Host: other.example\r\nx-a: 1\r\ncontent-length: 99\r\nConnection: close\r\n";
    seen_t s;
    seen_init(&s, base);
    tg_h1_call_t *c;
    tg_h1_req_t r = {.hr_url = url, .hr_fields = fields, .hr_fields_len = sizeof fields - 1, .hr_body = "{}",
                     .hr_body_len = 2, .hr_total_ms = 2000};
    assert_int_equal(tg_h1_start(h, &r, &hh, &s, &c, err, sizeof err), 0);
    run_until_done(base, &s);
    assert_int_equal(s.s_res, TG_H1_OK);
    char want[200];
    snprintf(want, sizeof want, "POST /x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nx-a: 1\r\nContent-Length: 2\r\n\r\n",
             sv.sv_port);
    assert_string_equal(sv.sv_head, want);
    seen_free(&s);
    cli_close(h, base);
    srv_stop(&sv);
}

static void test_pause_resume_chunked(void **state)
{
    (void)state;
    srv_t sv;
    srv_start(&sv, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    srv_run(&sv);
    struct event_base *base = event_base_new();
    tg_h1_t *h;
    char err[200], url[100];
    tg_h1_opts_t o = {0};
    assert_int_equal(tg_h1_new(base, &o, &h, err, sizeof err), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", sv.sv_port);
    seen_t s;
    seen_init(&s, base);
    s.s_pause = 1;
    tg_h1_call_t *c = NULL;
    tg_h1_req_t r = {.hr_url = url, .hr_body = "{}", .hr_body_len = 2, .hr_total_ms = 2000};
    assert_int_equal(tg_h1_start(h, &r, &hh, &s, &c, err, sizeof err), 0);
    for (int i = 0; i < 50 && s.s_pause; i++) {
        usleep(10000);
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    assert_int_equal(s.s_pause, 0);
    assert_int_equal(s.s_done, 0); /* paused: nothing taken, no end */
    assert_int_equal(s.s_body.b_len, 0);
    tg_h1_resume(c);
    struct timeval tv = {5, 0};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    assert_int_equal(s.s_done, 1);
    assert_int_equal(s.s_res, TG_H1_OK);
    assert_int_equal(s.s_body.b_len, 11);
    assert_memory_equal(s.s_body.b_data, "hello world", 11);
    seen_free(&s);
    tg_h1_free(h);
    event_base_free(base);
    srv_stop(&sv);
}

static void test_hang_times_out_and_refused_connect(void **state)
{
    (void)state;
    srv_t sv;
    srv_start(&sv, ok_answer);
    sv.sv_hang = 1;
    srv_run(&sv);
    struct event_base *base = event_base_new();
    tg_h1_t *h;
    char err[200], url[100];
    tg_h1_opts_t o = {0};
    assert_int_equal(tg_h1_new(base, &o, &h, err, sizeof err), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", sv.sv_port);
    seen_t s;
    seen_init(&s, base);
    call(h, base, url, 200, &s);
    assert_int_equal(s.s_res, TG_H1_TIMEOUT);
    assert_non_null(strstr(s.s_msg, "timed out"));
    assert_int_equal(tg_h1_idle(h), 0); /* a timed-out connection is not reused */
    seen_free(&s);
    srv_stop(&sv);

    /* nothing listens there any more */
    seen_init(&s, base);
    call(h, base, url, 2000, &s);
    assert_int_equal(s.s_res, TG_H1_CONNECT);
    assert_non_null(strstr(s.s_msg, "Failed to connect"));
    seen_free(&s);

    char e2[200];
    tg_h1_call_t *c;
    tg_h1_req_t r = {.hr_url = "ftp://example.com/", .hr_body = "", .hr_body_len = 0};
    assert_int_not_equal(tg_h1_start(h, &r, &hh, &s, &c, e2, sizeof e2), 0);
    tg_h1_free(h);
    event_base_free(base);
}

/* A name from /etc/hosts goes through evdns (not the loopback shortcut of
 * localhost): the machine's own host name, when it maps to 127.0.0.1 there
 * (else nothing to check on this machine). Twice: the second call uses the
 * cache and the pooled connection. */
static void test_name_through_evdns(void **state)
{
    (void)state;
    char host[128];
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (gethostname(host, sizeof host) != 0 || getaddrinfo(host, NULL, &hints, &ai) != 0)
        skip();
    int loop = ((struct sockaddr_in *)ai->ai_addr)->sin_addr.s_addr == htonl(INADDR_LOOPBACK);
    freeaddrinfo(ai);
    if (!loop)
        skip();
    srv_t sv;
    srv_start(&sv, ok_answer);
    srv_run(&sv);
    struct event_base *base = event_base_new();
    tg_h1_t *h;
    char err[200], url[200];
    tg_h1_opts_t o = {0};
    assert_int_equal(tg_h1_new(base, &o, &h, err, sizeof err), 0);
    snprintf(url, sizeof url, "http://%s:%d/x", host, sv.sv_port);
    for (int i = 0; i < 2; i++) {
        seen_t s;
        seen_init(&s, base);
        call(h, base, url, 3000, &s);
        assert_int_equal(s.s_res, TG_H1_OK);
        assert_int_equal(s.s_status, 200);
        seen_free(&s);
    }
    assert_int_equal(tg_h1_opened(h), 1);
    tg_h1_free(h);
    event_base_free(base);
    srv_stop(&sv);
}

static void test_garbage_answer(void **state)
{
    (void)state;
    srv_t sv;
    srv_start(&sv, "SSH-2.0-OpenSSH\r\n\r\n");
    srv_run(&sv);
    struct event_base *base = event_base_new();
    tg_h1_t *h;
    char err[200], url[100];
    tg_h1_opts_t o = {0};
    assert_int_equal(tg_h1_new(base, &o, &h, err, sizeof err), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", sv.sv_port);
    seen_t s;
    seen_init(&s, base);
    call(h, base, url, 2000, &s);
    assert_int_equal(s.s_res, TG_H1_MALFORMED);
    assert_non_null(strstr(s.s_msg, "malformed HTTP response"));
    assert_int_equal(tg_h1_idle(h), 0);
    seen_free(&s);
    tg_h1_free(h);
    event_base_free(base);
    srv_stop(&sv);
}

/* ---- scripted servers: one thread, one script, for the send-side cases ---- */

typedef struct script {
    int sc_fd, sc_port;
    int sc_mode;
    pthread_t sc_thread;
} script_t;

enum { SC_RESET_MID_SEND, SC_ANSWER_WHILE_SENDING, SC_UNSOLICITED_408, SC_EARLY_413 };

/* Reads one request's head and up to `limit` bytes of its Content-Length
 * body (more when they came with the head); returns the body bytes read,
 * or -1 when the connection ended. *total: the Content-Length. */
static long read_req2(int fd, size_t limit, size_t *total)
{
    char buf[65536];
    size_t have = 0;
    char *end = NULL;
    while (!end) {
        ssize_t n = read(fd, buf + have, sizeof buf - have - 1);
        if (n <= 0)
            return -1;
        have += (size_t)n;
        buf[have] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    char *cl = strcasestr(buf, "Content-Length:");
    size_t body = cl ? (size_t)strtoul(cl + 15, NULL, 10) : 0;
    size_t got = have - (size_t)(end + 4 - buf);
    if (total)
        *total = body;
    if (limit > body)
        limit = body;
    while (got < limit) {
        size_t want = limit - got < sizeof buf ? limit - got : sizeof buf;
        ssize_t n = read(fd, buf, want);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return (long)got;
}

static long read_req(int fd, size_t limit)
{
    return read_req2(fd, limit, NULL);
}

static void put(int fd, const char *s)
{
    if (write(fd, s, strlen(s)) < 0)
        return;
}

static void drain_to_eof(int fd)
{
    char buf[4096];
    while (read(fd, buf, sizeof buf) > 0)
        ;
}

static void *script_main(void *arg)
{
    script_t *sc = arg;
    int a = accept(sc->sc_fd, NULL, NULL);
    if (a < 0)
        return NULL;
    switch (sc->sc_mode) {
    case SC_RESET_MID_SEND: {
        /* one answer, then the next request is cut by a reset after 64 KB
         * of its body; the retry on a new connection is answered */
        read_req(a, SIZE_MAX);
        put(a, ok_answer);
        usleep(200000); /* the client's send fills the buffers and waits on the loop */
        read_req(a, 65536);
        struct linger lg = {1, 0};
        setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(a);
        if ((a = accept(sc->sc_fd, NULL, NULL)) < 0)
            return NULL;
        read_req(a, SIZE_MAX);
        put(a, ok_answer);
        drain_to_eof(a);
        break;
    }
    case SC_ANSWER_WHILE_SENDING:
        /* the answer begins before the body is read, ends after it */
    {
        size_t total = 0;
        long got = read_req2(a, 0, &total);
        put(a, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5\r\nhello\r\n");
        usleep(300000); /* the body waits meanwhile: the client is still sending when it pauses */
        char buf[65536];
        for (size_t left = got < 0 ? 0 : total - (size_t)got; left;) {
            ssize_t n = read(a, buf, left < sizeof buf ? left : sizeof buf);
            if (n <= 0)
                break;
            left -= (size_t)n;
        }
        put(a, "6\r\n world\r\n0\r\n\r\n");
        drain_to_eof(a);
        break;
    }
    case SC_UNSOLICITED_408:
        /* an answer, then a 408 and a close nobody asked for; the next
         * request must go on a new connection */
        read_req(a, SIZE_MAX);
        put(a, ok_answer);
        usleep(20000);
        put(a, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        drain_to_eof(a);
        close(a);
        if ((a = accept(sc->sc_fd, NULL, NULL)) < 0)
            return NULL;
        read_req(a, SIZE_MAX);
        put(a, ok_answer);
        drain_to_eof(a);
        break;
    case SC_EARLY_413:
        /* refuses after the head: answers and closes with the body unread
         * (a reset) */
        read_req(a, 0);
        put(a, "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
               "Connection: close\r\n\r\n{}");
        break;
    }
    close(a);
    return NULL;
}

static void script_start(script_t *sc, int mode)
{
    memset(sc, 0, sizeof *sc);
    sc->sc_mode = mode;
    sc->sc_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(sc->sc_fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(sc->sc_fd, 16), 0);
    getsockname(sc->sc_fd, (struct sockaddr *)&sa, &sl);
    sc->sc_port = ntohs(sa.sin_port);
    pthread_create(&sc->sc_thread, NULL, script_main, sc);
}

static void script_stop(script_t *sc)
{
    shutdown(sc->sc_fd, SHUT_RDWR);
    close(sc->sc_fd);
    pthread_join(sc->sc_thread, NULL);
}

#define BIG (32u << 20) /* more than loopback's socket buffers hold: the send waits */

/* Starts a call with a BIG body (the caller frees *body after the end). */
static tg_h1_call_t *start_big(tg_h1_t *h, const char *url, seen_t *s, char **body)
{
    char err[200];
    tg_h1_call_t *c = NULL;
    *body = malloc(BIG);
    assert_non_null(*body);
    memset(*body, 'a', BIG);
    tg_h1_req_t r = {.hr_url = url, .hr_body = *body, .hr_body_len = BIG, .hr_total_ms = 4000};
    assert_int_equal(tg_h1_start(h, &r, &hh, s, &c, err, sizeof err), 0);
    return c;
}

/* A reused connection reset while a large body is being sent: the request
 * goes again on a new connection (and, under ASan, nothing touches the
 * freed connection on the way). */
static void test_reset_mid_send_on_reused_connection(void **state)
{
    (void)state;
    script_t sc;
    script_start(&sc, SC_RESET_MID_SEND);
    struct event_base *base;
    tg_h1_t *h;
    char url[100], *body;
    cli_open(sc.sc_port, &base, &h, url, sizeof url);
    seen_t s;
    seen_init(&s, base);
    call(h, base, url, 2000, &s);
    assert_int_equal(s.s_status, 200);
    assert_int_equal(tg_h1_idle(h), 1);
    seen_free(&s);
    seen_init(&s, base);
    start_big(h, url, &s, &body);
    run_until_done(base, &s);
    assert_int_equal(s.s_res, TG_H1_OK);
    assert_int_equal(s.s_status, 200);
    assert_int_equal(tg_h1_opened(h), 2);
    seen_free(&s);
    free(body);
    cli_close(h, base);
    script_stop(&sc);
}

/* The answer begins while the body is still being sent, and the caller
 * pauses it: after tg_h1_resume the send goes on and the call ends. */
static void test_pause_while_sending(void **state)
{
    (void)state;
    script_t sc;
    script_start(&sc, SC_ANSWER_WHILE_SENDING);
    struct event_base *base;
    tg_h1_t *h;
    char url[100], *body;
    cli_open(sc.sc_port, &base, &h, url, sizeof url);
    seen_t s;
    seen_init(&s, base);
    s.s_pause = 1;
    tg_h1_call_t *c = start_big(h, url, &s, &body);
    for (int i = 0; i < 200 && s.s_pause; i++) {
        usleep(10000);
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    assert_int_equal(s.s_pause, 0);
    assert_int_equal(s.s_done, 0);
    assert_int_equal(tg_h1_body_sent(c), 0); /* paused while sending */
    tg_h1_resume(c);
    run_until_done(base, &s);
    assert_int_equal(s.s_res, TG_H1_OK);
    assert_int_equal(s.s_body.b_len, 11);
    assert_memory_equal(s.s_body.b_data, "hello world", 11);
    seen_free(&s);
    free(body);
    cli_close(h, base);
    script_stop(&sc);
}

/* The server sends a 408 and closes an idle connection before the next
 * request: that request goes on a new connection and gets its own answer. */
static void test_unsolicited_408_on_idle_connection(void **state)
{
    (void)state;
    script_t sc;
    script_start(&sc, SC_UNSOLICITED_408);
    struct event_base *base;
    tg_h1_t *h;
    char url[100];
    cli_open(sc.sc_port, &base, &h, url, sizeof url);
    seen_t s;
    seen_init(&s, base);
    call(h, base, url, 2000, &s);
    assert_int_equal(s.s_status, 200);
    assert_int_equal(tg_h1_idle(h), 1);
    seen_free(&s);
    usleep(100000); /* the 408 arrives; the loop does not run meanwhile */
    seen_init(&s, base);
    call(h, base, url, 2000, &s);
    assert_int_equal(s.s_res, TG_H1_OK);
    assert_int_equal(s.s_status, 200);
    assert_int_equal(tg_h1_opened(h), 2);
    seen_free(&s);
    cli_close(h, base);
    script_stop(&sc);
}

/* The upstream refuses a large body early (413) and resets the connection
 * while the body is still going: the call reports the 413, not a send
 * failure. */
static void test_early_answer_then_reset(void **state)
{
    (void)state;
    script_t sc;
    script_start(&sc, SC_EARLY_413);
    struct event_base *base;
    tg_h1_t *h;
    char url[100], *body;
    cli_open(sc.sc_port, &base, &h, url, sizeof url);
    seen_t s;
    seen_init(&s, base);
    start_big(h, url, &s, &body);
    run_until_done(base, &s);
    assert_int_equal(s.s_res, TG_H1_OK);
    assert_int_equal(s.s_status, 413);
    assert_int_equal(tg_h1_idle(h), 0); /* half a request went: never reused */
    seen_free(&s);
    free(body);
    cli_close(h, base);
    script_stop(&sc);
}

/* tg_h1_cancel from inside a callback: no callback after it. */
typedef struct canceller {
    seen_t cn_s;
    tg_h1_call_t *cn_c;
    int cn_fields;
} canceller_t;

static void cancel_on_field(void *arg, const char *name, size_t nl, const char *value, size_t vl)
{
    (void)name, (void)nl, (void)value, (void)vl;
    canceller_t *cn = arg;
    cn->cn_fields++;
    tg_h1_cancel(cn->cn_c);
}

static void test_cancel_inside_callback(void **state)
{
    (void)state;
    srv_t sv;
    srv_start(&sv, ok_answer);
    srv_run(&sv);
    struct event_base *base;
    tg_h1_t *h;
    char url[100];
    cli_open(sv.sv_port, &base, &h, url, sizeof url);
    canceller_t cn;
    memset(&cn, 0, sizeof cn);
    seen_init(&cn.cn_s, base);
    const tg_h1_handler_t ch = {.hh_field = cancel_on_field, .hh_head = on_head, .hh_body = on_body, .hh_done = on_done};
    tg_h1_req_t r = {.hr_url = url, .hr_body = "{}", .hr_body_len = 2, .hr_total_ms = 2000};
    char err[200];
    assert_int_equal(tg_h1_start(h, &r, &ch, &cn, &cn.cn_c, err, sizeof err), 0);
    for (int i = 0; i < 30; i++) {
        usleep(10000);
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    assert_int_equal(cn.cn_fields, 1); /* the answer has two fields */
    assert_int_equal(cn.cn_s.s_status, 0);
    assert_int_equal(cn.cn_s.s_body.b_len, 0);
    assert_int_equal(cn.cn_s.s_done, 0);
    assert_int_equal(tg_h1_idle(h), 0);
    seen_free(&cn.cn_s);
    cli_close(h, base);
    srv_stop(&sv);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_content_length_split_anywhere),
        cmocka_unit_test(test_parse_chunked_1xx_and_close_delimited),
        cmocka_unit_test(test_parse_malformed),
        cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_server_closed_idle_connection),
        cmocka_unit_test(test_pause_resume_chunked),
        cmocka_unit_test(test_hang_times_out_and_refused_connect),
        cmocka_unit_test(test_garbage_answer),
        cmocka_unit_test(test_name_through_evdns),
        cmocka_unit_test(test_parse_no_body_statuses),
        cmocka_unit_test(test_stale_connection_retried),
        cmocka_unit_test(test_reset_mid_send_on_reused_connection),
        cmocka_unit_test(test_pause_while_sending),
        cmocka_unit_test(test_unsolicited_408_on_idle_connection),
        cmocka_unit_test(test_early_answer_then_reset),
        cmocka_unit_test(test_cancel_inside_callback),
        cmocka_unit_test(test_framing_fields_not_doubled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
