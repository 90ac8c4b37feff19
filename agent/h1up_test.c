/* h1up_test.c: the lean upstream client (h1up.h) against tiny servers on
 * loopback in this process: the response parser alone (split heads,
 * chunked and Content-Length bodies, 1xx skipped, malformed answers), and
 * whole calls on a loop: keep-alive reuse, the stale-connection retry, an
 * idle connection the server closed dropped from the pool, pause and
 * resume, a hang ended by the timeout, a refused connect. */
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
            if (have < need)
                continue;
            memmove(buf, buf + need, have - need);
            have -= need;
            __atomic_add_fetch(&sv->sv_requests, 1, __ATOMIC_SEQ_CST);
            if (sv->sv_hang)
                continue;
            if (write(fd, sv->sv_answer, strlen(sv->sv_answer)) < 0)
                break;
            if (sv->sv_close_after && ++served >= sv->sv_close_after)
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
            usleep(50000);
            event_base_loop(base, EVLOOP_NONBLOCK);
            assert_int_equal(tg_h1_idle(h), 0);
        }
    }
    assert_int_equal(__atomic_load_n(&sv.sv_requests, __ATOMIC_SEQ_CST), 4 + 0);
    tg_h1_free(h);
    event_base_free(base);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
