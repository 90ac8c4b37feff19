/* tg_rpc_test.c: unit tests for rpc/, run under ASan+UBSan with leak
 * detection. Every test talks to a real server over loopback through the
 * gRPC core: the Echo service (rpc/testing/echo_service.c) plus a silent
 * stream registered here. Covered: unary round trip, metadata both ways,
 * status + message, unknown methods, deadlines, many messages pushed from
 * another thread with flow control, client cancel seen by the server, reader
 * timeouts, TLS and mTLS (certificates made with the openssl CLI at test
 * time), reconnect with backoff across a server restart, graceful shutdown
 * with calls open, protobuf helpers and argument errors. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "rpc/testdata/echo.pb-c.h"
#include "rpc/testing/echo_service.h"
#include "rpc/tg_rpc.h"

#define SAY "/tollgate.test.v1.Echo/Say"
#define FAIL "/tollgate.test.v1.Echo/Fail"
#define COUNT "/tollgate.test.v1.Echo/Count"
#define WATCH "/tollgate.test.v1.Echo/Watch"
#define SILENT "/tollgate.test.v1.Echo/Silent"

/* ---- helpers ------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* A stream that never sends: it waits until the client leaves. */
static void silent_cancelled(tg_rpc_call_t *call, void *arg)
{
    (void)arg;
    tg_rpc_call_finish(call, TG_RPC_CODE_CANCELLED, "client left");
}

static int silent(tg_rpc_call_t *call, const uint8_t *req, size_t len, void *arg)
{
    (void)req;
    (void)len;
    tg_rpc_call_on_cancel(call, silent_cancelled, arg);
    return TG_RPC_KEEP;
}

/* Race: the handler hands the call to a thread that finishes it at once,
 * then keeps using the call (valid until the handler returns). */
static void *finish_now(void *p)
{
    tg_rpc_call_finish(p, TG_RPC_CODE_ABORTED, "finished by another thread");
    return NULL;
}

static int race(tg_rpc_call_t *call, const uint8_t *req, size_t len, void *arg)
{
    (void)req;
    (void)len;
    (void)arg;
    pthread_t th;
    if (pthread_create(&th, NULL, finish_now, call) != 0)
        return TG_RPC_CODE_INTERNAL;
    pthread_join(th, NULL);
    /* The holder's finish already ran: sends fail, nothing is freed under us. */
    int rc = tg_rpc_call_send(call, "late", 4, 0);
    tg_rpc_call_on_cancel(call, silent_cancelled, NULL);
    return rc == TG_RPC_ECANCELLED ? TG_RPC_KEEP : TG_RPC_CODE_INTERNAL;
}

/* LateCancel: the client leaves before the handler registers on_cancel;
 * the callback must still run (after the handler returns). */
static int late_cancels;
static pthread_mutex_t late_mu = PTHREAD_MUTEX_INITIALIZER;

static void late_cancelled(tg_rpc_call_t *call, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&late_mu);
    late_cancels++;
    pthread_mutex_unlock(&late_mu);
    tg_rpc_call_finish(call, TG_RPC_CODE_CANCELLED, "gone");
}

static int late_cancel(tg_rpc_call_t *call, const uint8_t *req, size_t len, void *arg)
{
    (void)req;
    (void)len;
    (void)arg;
    for (int i = 0; i < 500 && !tg_rpc_call_cancelled(call); i++)
        sleep_ms(10);
    tg_rpc_call_on_cancel(call, late_cancelled, NULL);
    return TG_RPC_KEEP;
}

typedef struct env {
    tg_echo_t *echo;
    tg_rpc_server_t *srv;
    tg_rpc_channel_t *ch;
    int port;
} env_t;

/* Starts an Echo server (opts may be NULL) named `name`, and an insecure
 * channel to it unless copts is given. */
static void env_start(env_t *e, const char *name, const tg_rpc_server_opts_t *opts,
                      const tg_rpc_channel_opts_t *copts)
{
    char err[TG_ERRLEN] = "";
    char target[64];
    memset(e, 0, sizeof *e);
    e->echo = tg_echo_create(name);
    assert_non_null(e->echo);
    e->srv = tg_rpc_server_create(opts, err, sizeof err);
    assert_non_null(e->srv);
    assert_int_equal(tg_echo_register(e->echo, e->srv, err, sizeof err), 0);
    assert_int_equal(tg_rpc_server_add_stream(e->srv, SILENT, silent, NULL, err, sizeof err), 0);
    assert_int_equal(
        tg_rpc_server_add_stream(e->srv, "/tollgate.test.v1.Echo/Race", race, NULL, err, sizeof err), 0);
    assert_int_equal(tg_rpc_server_add_stream(e->srv, "/tollgate.test.v1.Echo/LateCancel", late_cancel, NULL,
                                              err, sizeof err),
                     0);
    if (tg_rpc_server_start(e->srv, err, sizeof err) != 0)
        fail_msg("start: %s", err);
    e->port = tg_rpc_server_port(e->srv);
    assert_true(e->port > 0);
    snprintf(target, sizeof target, "127.0.0.1:%d", e->port);
    e->ch = tg_rpc_channel_create(target, copts, err, sizeof err);
    assert_non_null(e->ch);
}

static void env_stop(env_t *e)
{
    tg_rpc_channel_destroy(e->ch);
    tg_rpc_server_destroy(e->srv);
    tg_echo_destroy(e->echo);
    memset(e, 0, sizeof *e);
}

/* Packs a SayRequest. */
static void say_req(tg_buf_t *b, const char *text, int delay_ms, const char *echo_header)
{
    Tollgate__Test__V1__SayRequest r = TOLLGATE__TEST__V1__SAY_REQUEST__INIT;
    r.text = (char *)text;
    r.delay_ms = delay_ms;
    r.echo_header = (char *)(echo_header ? echo_header : "");
    tg_buf_init(b, 1 << 20);
    assert_int_equal(tg_rpc_pb_pack(&r.base, b, NULL, 0), 0);
}

static void count_req(tg_buf_t *b, int n, int payload)
{
    Tollgate__Test__V1__CountRequest r = TOLLGATE__TEST__V1__COUNT_REQUEST__INIT;
    r.n = n;
    r.payload_bytes = payload;
    tg_buf_init(b, 1 << 20);
    assert_int_equal(tg_rpc_pb_pack(&r.base, b, NULL, 0), 0);
}

static Tollgate__Test__V1__SayReply *say_reply(const void *data, size_t len)
{
    ProtobufCMessage *m = NULL;
    char err[TG_ERRLEN] = "";
    if (tg_rpc_pb_unpack(&tollgate__test__v1__say_reply__descriptor, data, len, &m, err, sizeof err) != 0)
        fail_msg("%s", err);
    return (Tollgate__Test__V1__SayReply *)m;
}

/* Calls Say; returns tg_rpc_unary's code, reply in *out when OK. */
static int call_say(env_t *e, const char *text, int delay_ms, int timeout_ms, const tg_rpc_md_t *md,
                    size_t nmd, const char *echo_header, tg_rpc_result_t *res,
                    Tollgate__Test__V1__SayReply **out)
{
    tg_buf_t b;
    char err[TG_ERRLEN] = "";
    say_req(&b, text, delay_ms, echo_header);
    int rc = tg_rpc_unary(e->ch, SAY, md, nmd, b.b_data, b.b_len, timeout_ms, res, err, sizeof err);
    tg_buf_free(&b);
    if (out)
        *out = rc == 0 ? say_reply(res->rs_data, res->rs_len) : NULL;
    return rc;
}

/* ---- unary -------------------------------------------------------------- */

static void test_unary_roundtrip(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_result_t res;
    Tollgate__Test__V1__SayReply *r;
    env_start(&e, NULL, NULL, NULL);

    assert_int_equal(call_say(&e, "hello tollgate", 0, 5000, NULL, 0, NULL, &res, &r), 0);
    assert_int_equal(res.rs_code, TG_RPC_CODE_OK);
    assert_string_equal(r->text, "hello tollgate");
    assert_non_null(strstr(r->peer, "127.0.0.1:"));
    /* The handler saw our 5 s deadline, minus the trip. */
    assert_true(r->deadline_ms > 3000 && r->deadline_ms <= 5000);
    /* Response header and trailer reached us. */
    assert_string_equal(tg_rpc_result_metadata(&res, "x-echo-method"), SAY);
    assert_string_equal(tg_rpc_result_metadata(&res, "x-echo-trailer"), "done");
    tg_rpc_pb_free(&r->base);
    tg_rpc_result_free(&res);

    /* The same through the protobuf-c convenience call. */
    Tollgate__Test__V1__SayRequest q = TOLLGATE__TEST__V1__SAY_REQUEST__INIT;
    ProtobufCMessage *pm = NULL;
    char err[TG_ERRLEN] = "";
    q.text = "typed";
    assert_int_equal(tg_rpc_unary_pb(e.ch, SAY, NULL, 0, &q.base, &tollgate__test__v1__say_reply__descriptor,
                                     &pm, 5000, &res, err, sizeof err),
                     0);
    assert_string_equal(((Tollgate__Test__V1__SayReply *)pm)->text, "typed");
    tg_rpc_pb_free(pm);
    tg_rpc_result_free(&res);
    /* A reply type that does not match what comes back: EPROTO. */
    assert_int_equal(tg_rpc_unary_pb(e.ch, SAY, NULL, 0, &q.base,
                                     &tollgate__test__v1__fail_request__descriptor, &pm, 5000, &res, err,
                                     sizeof err),
                     TG_RPC_EPROTO);
    assert_null(pm);
    tg_rpc_result_free(&res);

    /* No deadline: the handler sees none. */
    assert_int_equal(call_say(&e, "", 0, 0, NULL, 0, NULL, &res, &r), 0);
    assert_int_equal(r->deadline_ms, -1);
    assert_string_equal(r->text, "");
    tg_rpc_pb_free(&r->base);
    tg_rpc_result_free(&res);
    env_stop(&e);
}

static void test_metadata_seen_by_handler(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_result_t res;
    Tollgate__Test__V1__SayReply *r;
    tg_rpc_md_t md[] = {{"authorization", "Bearer tg-live-abc123", 0}, {"x-tollgate-run", "run-42", 0}};
    env_start(&e, NULL, NULL, NULL);
    assert_int_equal(call_say(&e, "m", 0, 5000, md, 2, "authorization", &res, &r), 0);
    assert_string_equal(r->header_value, "Bearer tg-live-abc123");
    tg_rpc_pb_free(&r->base);
    tg_rpc_result_free(&res);
    assert_int_equal(call_say(&e, "m", 0, 5000, md, 2, "x-tollgate-run", &res, &r), 0);
    assert_string_equal(r->header_value, "run-42");
    tg_rpc_pb_free(&r->base);
    tg_rpc_result_free(&res);

    /* An illegal key is refused before anything is sent. */
    tg_rpc_md_t bad[] = {{"Authorization Header", "x", 0}};
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_rpc_unary(e.ch, SAY, bad, 1, "", 0, 1000, &res, err, sizeof err), TG_RPC_EINVAL);
    assert_non_null(strstr(err, "Authorization Header"));
    tg_rpc_result_free(&res);
    env_stop(&e);
}

static void test_status_and_message(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_result_t res;
    tg_buf_t b;
    char err[TG_ERRLEN] = "";
    Tollgate__Test__V1__FailRequest f = TOLLGATE__TEST__V1__FAIL_REQUEST__INIT;
    env_start(&e, NULL, NULL, NULL);

    f.code = TG_RPC_CODE_INVALID_ARGUMENT;
    f.message = "name: must not be empty";
    tg_buf_init(&b, 1 << 16);
    assert_int_equal(tg_rpc_pb_pack(&f.base, &b, NULL, 0), 0);
    assert_int_equal(tg_rpc_unary(e.ch, FAIL, NULL, 0, b.b_data, b.b_len, 5000, &res, err, sizeof err),
                     TG_RPC_ESTATUS);
    assert_int_equal(res.rs_code, TG_RPC_CODE_INVALID_ARGUMENT);
    assert_string_equal(res.rs_message, "name: must not be empty");
    assert_null(res.rs_data);
    assert_non_null(strstr(err, "INVALID_ARGUMENT: name: must not be empty"));
    tg_rpc_result_free(&res);
    tg_buf_free(&b);

    /* A method nobody registered. */
    err[0] = '\0';
    assert_int_equal(
        tg_rpc_unary(e.ch, "/tollgate.test.v1.Echo/Nope", NULL, 0, "", 0, 5000, &res, err, sizeof err),
        TG_RPC_ESTATUS);
    assert_int_equal(res.rs_code, TG_RPC_CODE_UNIMPLEMENTED);
    assert_non_null(strstr(res.rs_message, "/tollgate.test.v1.Echo/Nope"));
    tg_rpc_result_free(&res);

    /* Garbage instead of a SayRequest: the handler's unpack names the type. */
    assert_int_equal(tg_rpc_unary(e.ch, SAY, NULL, 0, "\x0a\x64\x41", 3, 5000, &res, NULL, 0),
                     TG_RPC_ESTATUS);
    assert_int_equal(res.rs_code, TG_RPC_CODE_INVALID_ARGUMENT);
    assert_non_null(strstr(res.rs_message, "tollgate.test.v1.SayRequest"));
    tg_rpc_result_free(&res);
    env_stop(&e);
}

static void test_deadline_exceeded(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_result_t res;
    env_start(&e, NULL, NULL, NULL);
    int64_t t0 = now_ms();
    assert_int_equal(call_say(&e, "slow", 3000, 200, NULL, 0, NULL, &res, NULL), TG_RPC_ESTATUS);
    int64_t took = now_ms() - t0;
    assert_int_equal(res.rs_code, TG_RPC_CODE_DEADLINE_EXCEEDED);
    assert_true(took >= 150 && took < 2500); /* the handler would take 3000 */
    tg_rpc_result_free(&res);
    /* The slow handler noticed the cancel and freed its thread: the server
     * still answers at once. */
    assert_int_equal(call_say(&e, "after", 0, 2000, NULL, 0, NULL, &res, NULL), 0);
    tg_rpc_result_free(&res);
    env_stop(&e);
}

static void test_server_unreachable(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_result_t res;
    char target[64], err[TG_ERRLEN] = "";
    env_start(&e, NULL, NULL, NULL);
    snprintf(target, sizeof target, "127.0.0.1:%d", e.port);
    env_stop(&e); /* the port is closed now */
    tg_rpc_channel_t *ch = tg_rpc_channel_create(target, NULL, err, sizeof err);
    assert_non_null(ch);
    assert_int_equal(tg_rpc_unary(ch, SAY, NULL, 0, "", 0, 2000, &res, err, sizeof err), TG_RPC_ESTATUS);
    assert_int_equal(res.rs_code, TG_RPC_CODE_UNAVAILABLE);
    tg_rpc_result_free(&res);
    tg_rpc_channel_destroy(ch);
}

/* ---- streams ------------------------------------------------------------ */

static void test_stream_many_from_thread(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_reader_t *r = NULL;
    tg_buf_t req, msg;
    char err[TG_ERRLEN] = "";
    const int N = 2000, PAYLOAD = 16384; /* 32 MB: far more than windows + queue */
    env_start(&e, NULL, NULL, NULL);
    count_req(&req, N, PAYLOAD);
    tg_buf_init(&msg, 1 << 20);
    assert_int_equal(
        tg_rpc_reader_open(e.ch, COUNT, NULL, 0, req.b_data, req.b_len, 60000, &r, err, sizeof err), 0);
    assert_int_equal(tg_rpc_reader_next(r, 5000, &msg, err, sizeof err), 1);
    /* We stop reading: flow control must hold the sender thread back. */
    sleep_ms(300);
    assert_int_equal(tg_echo_stats(e.echo).es_count_done, 0);
    int n = 1, rc;
    while ((rc = tg_rpc_reader_next(r, 10000, &msg, err, sizeof err)) == 1) {
        Tollgate__Test__V1__SayReply *m = say_reply(msg.b_data, msg.b_len);
        assert_int_equal(m->index, n);
        assert_int_equal((int)m->payload.len, PAYLOAD);
        tg_rpc_pb_free(&m->base);
        n++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(n, N);
    const char *message;
    assert_int_equal(tg_rpc_reader_status(r, &message), TG_RPC_CODE_OK);
    assert_int_equal(tg_echo_stats(e.echo).es_count_done, 1);
    tg_rpc_reader_destroy(r);
    tg_buf_free(&req);
    tg_buf_free(&msg);
    env_stop(&e);
}

static void test_client_cancel_noticed(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_reader_t *r = NULL;
    tg_buf_t req, msg;
    char err[TG_ERRLEN] = "";
    env_start(&e, "w", NULL, NULL);
    count_req(&req, 0, 0);
    tg_buf_init(&msg, 1 << 20);
    assert_int_equal(tg_rpc_reader_open(e.ch, WATCH, NULL, 0, req.b_data, req.b_len, 0, &r, err, sizeof err),
                     0);
    /* Pushed by the ticker thread, in order. */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tg_rpc_reader_next(r, 5000, &msg, err, sizeof err), 1);
        Tollgate__Test__V1__SayReply *m = say_reply(msg.b_data, msg.b_len);
        assert_int_equal(m->index, i);
        assert_string_equal(m->text, "w");
        tg_rpc_pb_free(&m->base);
    }
    assert_int_equal(tg_echo_stats(e.echo).es_active, 1);
    tg_rpc_reader_cancel(r);
    int rc;
    while ((rc = tg_rpc_reader_next(r, 5000, &msg, err, sizeof err)) == 1) {
    }
    assert_int_equal(rc, TG_RPC_ESTATUS);
    assert_int_equal(tg_rpc_reader_status(r, NULL), TG_RPC_CODE_CANCELLED);
    /* The server noticed: on_cancel ran and the stream was finished. */
    int64_t deadline = now_ms() + 5000;
    while (tg_echo_stats(e.echo).es_cancelled < 1 && now_ms() < deadline)
        sleep_ms(10);
    tg_echo_stats_t s = tg_echo_stats(e.echo);
    assert_int_equal(s.es_cancelled, 1);
    assert_int_equal(s.es_active, 0);
    tg_rpc_reader_destroy(r);
    tg_buf_free(&req);
    tg_buf_free(&msg);
    env_stop(&e);
}

static void test_reader_timeout(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_reader_t *r = NULL;
    tg_buf_t msg;
    char err[TG_ERRLEN] = "";
    env_start(&e, NULL, NULL, NULL);
    tg_buf_init(&msg, 1 << 20);
    assert_int_equal(tg_rpc_reader_open(e.ch, SILENT, NULL, 0, "", 0, 0, &r, err, sizeof err), 0);
    int64_t t0 = now_ms();
    assert_int_equal(tg_rpc_reader_next(r, 150, &msg, err, sizeof err), TG_RPC_ETIMEDOUT);
    assert_true(now_ms() - t0 >= 140);
    /* Still open: a second wait times out too. */
    assert_int_equal(tg_rpc_reader_next(r, 50, &msg, NULL, 0), TG_RPC_ETIMEDOUT);
    /* Destroying an open reader cancels it; the server's on_cancel finishes
     * the stream, and env_stop's shutdown proves nothing is left behind. */
    tg_rpc_reader_destroy(r);
    tg_buf_free(&msg);
    env_stop(&e);
}

static void test_keepalive_idle_stream(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_reader_t *r = NULL;
    tg_buf_t msg;
    char err[TG_ERRLEN] = "";
    /* Both sides ping every second on a stream that carries nothing: the
     * server must not take the client's pings for abuse (GOAWAY "too many
     * pings", which the core sends after the 3rd ping by default) and the
     * stream must stay open. */
    tg_rpc_server_opts_t so = {.so_keepalive_ms = 1000};
    tg_rpc_channel_opts_t co = {.co_keepalive_ms = 1000};
    env_start(&e, NULL, &so, &co);
    tg_buf_init(&msg, 1 << 20);
    assert_int_equal(tg_rpc_reader_open(e.ch, SILENT, NULL, 0, "", 0, 0, &r, err, sizeof err), 0);
    int rc = tg_rpc_reader_next(r, 5500, &msg, err, sizeof err);
    if (rc != TG_RPC_ETIMEDOUT)
        fail_msg("idle stream ended: %d %s", rc, err);
    tg_rpc_result_t res;
    assert_int_equal(call_say(&e, "still here", 0, 2000, NULL, 0, NULL, &res, NULL), 0);
    tg_rpc_result_free(&res);
    tg_rpc_reader_destroy(r);
    tg_buf_free(&msg);
    env_stop(&e);
}

/* A one-connection TCP relay that can freeze: it then stops moving bytes
 * but keeps both sockets open, like a peer whose host vanished (no reset). */
typedef struct relay {
    int lfd, port, to_port, frozen, stop;
    pthread_t th;
    pthread_mutex_t mu;
} relay_t;

static int relay_flag(relay_t *r, int *f)
{
    pthread_mutex_lock(&r->mu);
    int v = *f;
    pthread_mutex_unlock(&r->mu);
    return v;
}

static void *relay_run(void *p)
{
    relay_t *r = p;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->to_port)};
    char buf[16384];
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct pollfd lp = {.fd = r->lfd, .events = POLLIN};
    while (!relay_flag(r, &r->stop) && poll(&lp, 1, 50) == 0) {
    }
    if (relay_flag(r, &r->stop))
        return NULL;
    int c = accept(r->lfd, NULL, NULL);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0)
        goto out;
    while (!relay_flag(r, &r->stop)) {
        if (relay_flag(r, &r->frozen)) {
            sleep_ms(20);
            continue;
        }
        struct pollfd fds[2] = {{.fd = c, .events = POLLIN}, {.fd = s, .events = POLLIN}};
        if (poll(fds, 2, 20) <= 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t n = read(fds[i].fd, buf, sizeof buf);
            if (n <= 0)
                goto out;
            if (write(fds[1 - i].fd, buf, (size_t)n) != n)
                goto out;
        }
    }
out:
    /* Leave the sockets open until stop: closing would send a FIN/RST. */
    while (!relay_flag(r, &r->stop))
        sleep_ms(20);
    if (c >= 0)
        close(c);
    if (s >= 0)
        close(s);
    return NULL;
}

static void relay_start(relay_t *r, int to_port)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof a;
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    r->to_port = to_port;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(r->lfd >= 0);
    assert_int_equal(bind(r->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(r->lfd, 4), 0);
    assert_int_equal(getsockname(r->lfd, (struct sockaddr *)&a, &len), 0);
    r->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&r->th, NULL, relay_run, r), 0);
}

static void relay_set(relay_t *r, int *f)
{
    pthread_mutex_lock(&r->mu);
    *f = 1;
    pthread_mutex_unlock(&r->mu);
}

static void relay_stop(relay_t *r)
{
    relay_set(r, &r->stop);
    pthread_join(r->th, NULL);
    close(r->lfd);
    pthread_mutex_destroy(&r->mu);
}

static void test_vanished_client_detected(void **state)
{
    (void)state;
    env_t e;
    relay_t rl;
    tg_rpc_reader_t *r = NULL;
    tg_buf_t req, msg;
    char target[64], err[TG_ERRLEN] = "";
    /* The server pings every second; a client that stops answering (its
     * host gone, no TCP reset) must be dropped and its stream cancelled. */
    tg_rpc_server_opts_t so = {.so_keepalive_ms = 1000};
    env_start(&e, "w", &so, NULL);
    relay_start(&rl, e.port);
    snprintf(target, sizeof target, "127.0.0.1:%d", rl.port);
    tg_rpc_channel_t *ch = tg_rpc_channel_create(target, NULL, err, sizeof err);
    count_req(&req, 0, 0);
    tg_buf_init(&msg, 1 << 20);
    assert_int_equal(tg_rpc_reader_open(ch, WATCH, NULL, 0, req.b_data, req.b_len, 0, &r, err, sizeof err),
                     0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(tg_rpc_reader_next(r, 5000, &msg, err, sizeof err), 1);
    assert_int_equal(tg_echo_stats(e.echo).es_active, 1);
    relay_set(&rl, &rl.frozen);
    int64_t t0 = now_ms();
    while (tg_echo_stats(e.echo).es_cancelled < 1 && now_ms() - t0 < 10000)
        sleep_ms(20);
    int64_t took = now_ms() - t0;
    assert_int_equal(tg_echo_stats(e.echo).es_cancelled, 1);
    assert_int_equal(tg_echo_stats(e.echo).es_active, 0);
    assert_true(took < 8000);
    tg_rpc_reader_destroy(r);
    tg_rpc_channel_destroy(ch);
    relay_stop(&rl);
    tg_buf_free(&req);
    tg_buf_free(&msg);
    env_stop(&e);
}

static void test_kept_stream_races(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_reader_t *r = NULL;
    tg_buf_t msg;
    char err[TG_ERRLEN] = "";
    env_start(&e, NULL, NULL, NULL);
    tg_buf_init(&msg, 1 << 20);

    /* Finished by another thread while the handler still runs: the client
     * gets that status, and ASan sees no use after free. */
    assert_int_equal(
        tg_rpc_reader_open(e.ch, "/tollgate.test.v1.Echo/Race", NULL, 0, "", 0, 5000, &r, err, sizeof err),
        0);
    const char *message;
    assert_int_equal(tg_rpc_reader_next(r, 5000, &msg, err, sizeof err), TG_RPC_ESTATUS);
    assert_int_equal(tg_rpc_reader_status(r, &message), TG_RPC_CODE_ABORTED);
    assert_string_equal(message, "finished by another thread");
    tg_rpc_reader_destroy(r);

    /* Cancelled before on_cancel was registered: it still runs. */
    assert_int_equal(
        tg_rpc_reader_open(e.ch, "/tollgate.test.v1.Echo/LateCancel", NULL, 0, "", 0, 0, &r, err, sizeof err),
        0);
    assert_int_equal(tg_rpc_reader_next(r, 100, &msg, NULL, 0), TG_RPC_ETIMEDOUT); /* it has started */
    tg_rpc_reader_cancel(r);
    int64_t deadline = now_ms() + 10000;
    int n = 0;
    while (now_ms() < deadline) {
        pthread_mutex_lock(&late_mu);
        n = late_cancels;
        pthread_mutex_unlock(&late_mu);
        if (n)
            break;
        sleep_ms(10);
    }
    assert_int_equal(n, 1);
    tg_rpc_reader_destroy(r);
    tg_buf_free(&msg);
    env_stop(&e); /* would wait forever if the late stream were never finished */
}

/* ---- TLS ---------------------------------------------------------------- */

static char tls_dir[256];

static char *slurp(const char *name)
{
    char path[512];
    tg_buf_t b;
    char chunk[4096];
    size_t n;
    snprintf(path, sizeof path, "%s/%s", tls_dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    tg_buf_init(&b, 1 << 20);
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        assert_int_equal(tg_buf_append(&b, chunk, n), 0);
    fclose(f);
    return tg_buf_steal(&b, NULL);
}

/* Self-signed EC certificates for the server (CN localhost, SAN
 * 127.0.0.1) and a client (CN tollgate-agent-1), made by the openssl CLI. */
static int make_certs(void)
{
    char cmd[2048];
    const char *base = getenv("TEST_TMPDIR");
    snprintf(tls_dir, sizeof tls_dir, "%s/tgrpc-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(tls_dir))
        return -1;
    const char *who[][3] = {{"server", "localhost", "-addext subjectAltName=DNS:localhost,IP:127.0.0.1"},
                            {"client", "tollgate-agent-1", ""},
                            {"other", "someone-else", ""}};
    for (int i = 0; i < 3; i++) {
        snprintf(cmd, sizeof cmd,
                 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                 "-days 2 -subj /CN=%s %s -keyout %s/%s.key -out %s/%s.crt >/dev/null 2>&1",
                 who[i][1], who[i][2], tls_dir, who[i][0], tls_dir, who[i][0]);
        if (system(cmd) != 0)
            return -1;
    }
    return 0;
}

static void rm_certs(void)
{
    const char *names[] = {"server.key", "server.crt", "client.key", "client.crt", "other.key", "other.crt"};
    char path[512];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(path, sizeof path, "%s/%s", tls_dir, names[i]);
        unlink(path);
    }
    rmdir(tls_dir);
}

static void test_tls(void **state)
{
    (void)state;
    assert_int_equal(make_certs(), 0);
    char *scrt = slurp("server.crt"), *skey = slurp("server.key");
    char *ocrt = slurp("other.crt");
    char target[64], err[TG_ERRLEN] = "";
    assert_non_null(scrt);
    assert_non_null(skey);
    tg_rpc_server_opts_t so = {.so_cert_pem = scrt, .so_key_pem = skey};
    tg_rpc_channel_opts_t co = {.co_root_pem = scrt};
    env_t e;
    tg_rpc_result_t res;
    Tollgate__Test__V1__SayReply *r;
    env_start(&e, NULL, &so, &co);
    assert_int_equal(call_say(&e, "over tls", 0, 5000, NULL, 0, NULL, &res, &r), 0);
    assert_string_equal(r->text, "over tls");
    assert_string_equal(r->identity, ""); /* no client certificate */
    tg_rpc_pb_free(&r->base);
    tg_rpc_result_free(&res);

    snprintf(target, sizeof target, "127.0.0.1:%d", e.port);
    /* A client that does not trust the server's certificate is refused. */
    tg_rpc_channel_opts_t wrong = {.co_root_pem = ocrt};
    tg_rpc_channel_t *ch = tg_rpc_channel_create(target, &wrong, err, sizeof err);
    assert_int_equal(tg_rpc_unary(ch, SAY, NULL, 0, "", 0, 3000, &res, NULL, 0), TG_RPC_ESTATUS);
    assert_int_equal(res.rs_code, TG_RPC_CODE_UNAVAILABLE);
    tg_rpc_result_free(&res);
    tg_rpc_channel_destroy(ch);
    /* Plaintext against a TLS port fails too. */
    ch = tg_rpc_channel_create(target, NULL, err, sizeof err);
    assert_int_equal(tg_rpc_unary(ch, SAY, NULL, 0, "", 0, 3000, &res, NULL, 0), TG_RPC_ESTATUS);
    assert_int_equal(res.rs_code, TG_RPC_CODE_UNAVAILABLE);
    tg_rpc_result_free(&res);
    tg_rpc_channel_destroy(ch);
    env_stop(&e);
    tg_free(scrt);
    tg_free(skey);
    tg_free(ocrt);
    rm_certs();
}

static void test_mtls(void **state)
{
    (void)state;
    assert_int_equal(make_certs(), 0);
    char *scrt = slurp("server.crt"), *skey = slurp("server.key");
    char *ccrt = slurp("client.crt"), *ckey = slurp("client.key");
    char *ocrt = slurp("other.crt"), *okey = slurp("other.key");
    char target[64], err[TG_ERRLEN] = "";
    tg_rpc_server_opts_t so = {.so_cert_pem = scrt, .so_key_pem = skey, .so_client_ca_pem = ccrt};
    tg_rpc_channel_opts_t co = {.co_root_pem = scrt, .co_cert_pem = ccrt, .co_key_pem = ckey};
    env_t e;
    tg_rpc_result_t res;
    Tollgate__Test__V1__SayReply *r;
    env_start(&e, NULL, &so, &co);
    assert_int_equal(call_say(&e, "mutual", 0, 5000, NULL, 0, NULL, &res, &r), 0);
    assert_string_equal(r->identity, "tollgate-agent-1");
    tg_rpc_pb_free(&r->base);
    tg_rpc_result_free(&res);

    snprintf(target, sizeof target, "127.0.0.1:%d", e.port);
    /* Without a client certificate: rejected in the handshake. */
    tg_rpc_channel_opts_t nocert = {.co_root_pem = scrt};
    tg_rpc_channel_t *ch = tg_rpc_channel_create(target, &nocert, err, sizeof err);
    assert_int_equal(tg_rpc_unary(ch, SAY, NULL, 0, "", 0, 3000, &res, NULL, 0), TG_RPC_ESTATUS);
    assert_int_equal(res.rs_code, TG_RPC_CODE_UNAVAILABLE);
    tg_rpc_result_free(&res);
    tg_rpc_channel_destroy(ch);
    /* With a certificate the server does not trust: rejected as well. */
    tg_rpc_channel_opts_t untrusted = {.co_root_pem = scrt, .co_cert_pem = ocrt, .co_key_pem = okey};
    ch = tg_rpc_channel_create(target, &untrusted, err, sizeof err);
    assert_int_equal(tg_rpc_unary(ch, SAY, NULL, 0, "", 0, 3000, &res, NULL, 0), TG_RPC_ESTATUS);
    assert_int_equal(res.rs_code, TG_RPC_CODE_UNAVAILABLE);
    tg_rpc_result_free(&res);
    tg_rpc_channel_destroy(ch);
    env_stop(&e);
    tg_free(scrt);
    tg_free(skey);
    tg_free(ccrt);
    tg_free(ckey);
    tg_free(ocrt);
    tg_free(okey);
    rm_certs();
}

/* ---- reconnect ---------------------------------------------------------- */

typedef struct run_state {
    pthread_mutex_t mu;
    int from_a, from_b, statuses, rc, done;
    int delays[64];
    int codes[64];
} run_state_t;

static int run_on_message(void *arg, const uint8_t *data, size_t len)
{
    run_state_t *s = arg;
    Tollgate__Test__V1__SayReply *m = say_reply(data, len);
    int stop = 0;
    pthread_mutex_lock(&s->mu);
    if (strcmp(m->text, "A") == 0)
        s->from_a++;
    if (strcmp(m->text, "B") == 0)
        stop = ++s->from_b >= 3;
    pthread_mutex_unlock(&s->mu);
    tg_rpc_pb_free(&m->base);
    return stop;
}

static int run_on_status(void *arg, int code, const char *message, int delay)
{
    (void)message;
    run_state_t *s = arg;
    pthread_mutex_lock(&s->mu);
    if (s->statuses < 64) {
        s->codes[s->statuses] = code;
        s->delays[s->statuses] = delay;
    }
    s->statuses++;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

typedef struct run_arg {
    tg_rpc_channel_t *ch;
    tg_rpc_stream_opts_t *opts;
    run_state_t *st;
} run_arg_t;

static void *run_thread(void *p)
{
    run_arg_t *a = p;
    int rc = tg_rpc_stream_run(a->ch, a->opts, NULL, 0);
    pthread_mutex_lock(&a->st->mu);
    a->st->rc = rc;
    a->st->done = 1;
    pthread_mutex_unlock(&a->st->mu);
    return NULL;
}

static int get(run_state_t *s, int *field)
{
    pthread_mutex_lock(&s->mu);
    int v = *field;
    pthread_mutex_unlock(&s->mu);
    return v;
}

static void test_reconnect_after_restart(void **state)
{
    (void)state;
    env_t a, b;
    char addr[64], err[TG_ERRLEN] = "";
    tg_buf_t req;
    run_state_t st;
    memset(&st, 0, sizeof st);
    pthread_mutex_init(&st.mu, NULL);
    /* The channel's own reconnect backoff kept short, so ours is what paces
     * the attempts. */
    tg_rpc_channel_opts_t co = {.co_reconnect_min_ms = 20, .co_reconnect_max_ms = 100};
    env_start(&a, "A", NULL, &co);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", a.port);
    count_req(&req, 0, 0);
    tg_rpc_cancel_t *cancel = tg_rpc_cancel_create();
    tg_rpc_stream_opts_t o = {
        .sr_method = WATCH,
        .sr_req = req.b_data,
        .sr_req_len = req.b_len,
        .sr_on_message = run_on_message,
        .sr_on_status = run_on_status,
        .sr_arg = &st,
        .sr_backoff = {.bo_initial_ms = 20, .bo_max_ms = 400, .bo_multiplier = 2.0, .bo_jitter = 0.1},
        .sr_cancel = cancel,
    };
    run_arg_t ra = {a.ch, &o, &st};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_thread, &ra), 0);

    int64_t deadline = now_ms() + 5000;
    while (get(&st, &st.from_a) < 3 && now_ms() < deadline)
        sleep_ms(10);
    assert_true(get(&st, &st.from_a) >= 3);

    /* The server goes away; the client keeps trying with growing delays. */
    tg_rpc_server_shutdown(a.srv, 0);
    tg_rpc_server_destroy(a.srv);
    a.srv = NULL;
    tg_echo_destroy(a.echo);
    a.echo = NULL;
    deadline = now_ms() + 5000;
    while (get(&st, &st.statuses) < 3 && now_ms() < deadline)
        sleep_ms(10);
    assert_true(get(&st, &st.statuses) >= 3);

    /* A new server on the same address: the stream comes back by itself. */
    tg_rpc_server_opts_t so = {.so_addr = addr};
    b.echo = tg_echo_create("B");
    b.srv = tg_rpc_server_create(&so, err, sizeof err);
    assert_int_equal(tg_echo_register(b.echo, b.srv, err, sizeof err), 0);
    if (tg_rpc_server_start(b.srv, err, sizeof err) != 0)
        fail_msg("restart: %s", err);

    deadline = now_ms() + 10000;
    while (!get(&st, &st.done) && now_ms() < deadline)
        sleep_ms(10);
    if (!get(&st, &st.done))
        tg_rpc_cancel_signal(cancel); /* never hang the suite */
    pthread_join(th, NULL);
    assert_int_equal(st.rc, 0);
    assert_true(st.from_b >= 3);
    /* Every attempt ended with a failure status, and the delays grew
     * (multiplier 2, jitter 10%) until the cap. */
    int n = st.statuses < 64 ? st.statuses : 64;
    for (int i = 0; i < n; i++)
        assert_int_not_equal(st.codes[i], TG_RPC_CODE_OK);
    for (int i = 1; i < n && i < 4; i++)
        if (st.delays[i] <= st.delays[i - 1])
            fail_msg("attempt %d: delay %d ms after %d ms (code %d, %d statuses)", i, st.delays[i],
                     st.delays[i - 1], st.codes[i], n);
    for (int i = 0; i < n; i++)
        assert_true(st.delays[i] >= 18 && st.delays[i] <= 400);

    tg_rpc_cancel_destroy(cancel);
    tg_buf_free(&req);
    tg_rpc_channel_destroy(a.ch);
    tg_rpc_server_destroy(b.srv);
    tg_echo_destroy(b.echo);
    pthread_mutex_destroy(&st.mu);
}

static void test_stream_run_stops_on_cancel(void **state)
{
    (void)state;
    run_state_t st;
    char err[TG_ERRLEN] = "";
    memset(&st, 0, sizeof st);
    pthread_mutex_init(&st.mu, NULL);
    /* Nothing listens here: the run keeps backing off until cancelled. */
    env_t e;
    env_start(&e, NULL, NULL, NULL);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", e.port);
    env_stop(&e);
    tg_rpc_channel_t *ch = tg_rpc_channel_create(target, NULL, err, sizeof err);
    tg_rpc_cancel_t *cancel = tg_rpc_cancel_create();
    tg_rpc_stream_opts_t o = {.sr_method = WATCH,
                              .sr_on_message = run_on_message,
                              .sr_on_status = run_on_status,
                              .sr_arg = &st,
                              .sr_backoff = {.bo_initial_ms = 5000},
                              .sr_cancel = cancel};
    run_arg_t ra = {ch, &o, &st};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_thread, &ra), 0);
    int64_t deadline = now_ms() + 5000;
    while (get(&st, &st.statuses) < 1 && now_ms() < deadline)
        sleep_ms(5);
    /* It is now in a 5 s backoff sleep; the signal must cut it short. */
    int64_t t0 = now_ms();
    tg_rpc_cancel_signal(cancel);
    pthread_join(th, NULL);
    assert_true(now_ms() - t0 < 2000); /* the backoff sleep was 4.5-5.5 s */
    assert_int_equal(st.rc, TG_RPC_ESTOPPED);
    tg_rpc_cancel_destroy(cancel);
    tg_rpc_channel_destroy(ch);
    pthread_mutex_destroy(&st.mu);
}

/* ---- shutdown ----------------------------------------------------------- */

typedef struct slow_call {
    env_t *e;
    int rc, code;
} slow_call_t;

static void *slow_say(void *p)
{
    slow_call_t *s = p;
    tg_rpc_result_t res;
    s->rc = call_say(s->e, "in flight", 300, 10000, NULL, 0, NULL, &res, NULL);
    s->code = res.rs_code;
    tg_rpc_result_free(&res);
    return NULL;
}

static void test_graceful_shutdown(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_reader_t *r = NULL;
    tg_buf_t req, msg;
    char err[TG_ERRLEN] = "";
    env_start(&e, NULL, NULL, NULL);
    count_req(&req, 0, 0);
    tg_buf_init(&msg, 1 << 20);
    assert_int_equal(tg_rpc_reader_open(e.ch, WATCH, NULL, 0, req.b_data, req.b_len, 0, &r, err, sizeof err),
                     0);
    assert_int_equal(tg_rpc_reader_next(r, 5000, &msg, err, sizeof err), 1);
    slow_call_t sc = {&e, -100, -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, slow_say, &sc), 0);
    int64_t deadline = now_ms() + 5000; /* wait until it is in its handler */
    while (tg_echo_stats(e.echo).es_say_running < 1 && now_ms() < deadline)
        sleep_ms(5);
    assert_int_equal(tg_echo_stats(e.echo).es_say_running, 1);

    int64_t t0 = now_ms();
    tg_rpc_server_shutdown(e.srv, 1000);
    int64_t took = now_ms() - t0;
    pthread_join(th, NULL);
    /* The unary call in flight completed normally... */
    assert_int_equal(sc.rc, 0);
    assert_int_equal(sc.code, TG_RPC_CODE_OK);
    /* ...the endless stream was cancelled once the grace ran out... */
    assert_true(took >= 900 && took < 4000);
    int rc;
    while ((rc = tg_rpc_reader_next(r, 5000, &msg, err, sizeof err)) == 1) {
    }
    assert_int_equal(rc, TG_RPC_ESTATUS);
    assert_int_not_equal(tg_rpc_reader_status(r, NULL), TG_RPC_CODE_OK);
    /* ...and new calls are refused. */
    tg_rpc_result_t res;
    assert_int_equal(call_say(&e, "late", 0, 2000, NULL, 0, NULL, &res, NULL), TG_RPC_ESTATUS);
    assert_int_equal(res.rs_code, TG_RPC_CODE_UNAVAILABLE);
    tg_rpc_result_free(&res);
    tg_rpc_reader_destroy(r);
    tg_buf_free(&req);
    tg_buf_free(&msg);
    env_stop(&e); /* destroy after shutdown: frees everything (ASan checks) */
}

/* ---- small things ------------------------------------------------------- */

static void test_backoff(void **state)
{
    (void)state;
    uint64_t seed = 42;
    tg_rpc_backoff_t b = {.bo_initial_ms = 100, .bo_max_ms = 5000, .bo_multiplier = 2.0, .bo_jitter = 0.2};
    for (int round = 0; round < 100; round++) {
        assert_in_range(tg_rpc_backoff_delay_ms(&b, 0, &seed), 80, 120);
        assert_in_range(tg_rpc_backoff_delay_ms(&b, 3, &seed), 640, 960);
        assert_in_range(tg_rpc_backoff_delay_ms(&b, 6, &seed), 4000, 5000);
        assert_in_range(tg_rpc_backoff_delay_ms(&b, 1000, &seed), 4000, 5000);
    }
    /* Jitter really varies the delay. */
    int lo = 1000, hi = 0;
    for (int i = 0; i < 200; i++) {
        int d = tg_rpc_backoff_delay_ms(&b, 0, &seed);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
    }
    assert_true(hi - lo >= 20);
    assert_in_range(tg_rpc_backoff_delay_ms(NULL, 0, &seed), 80, 120); /* defaults */
}

static void test_pb_helpers(void **state)
{
    (void)state;
    tg_buf_t b;
    ProtobufCMessage *m = NULL;
    char err[TG_ERRLEN] = "";
    Tollgate__Test__V1__SayReply r = TOLLGATE__TEST__V1__SAY_REPLY__INIT;
    r.text = "héllo";
    r.deadline_ms = -1;
    r.index = 7;
    tg_buf_init(&b, 1 << 16);
    assert_int_equal(tg_rpc_pb_pack(&r.base, &b, err, sizeof err), 0);
    assert_int_equal(
        tg_rpc_pb_unpack(&tollgate__test__v1__say_reply__descriptor, b.b_data, b.b_len, &m, err, sizeof err),
        0);
    Tollgate__Test__V1__SayReply *got = (Tollgate__Test__V1__SayReply *)m;
    assert_string_equal(got->text, "héllo");
    assert_int_equal(got->deadline_ms, -1);
    assert_int_equal(got->index, 7);
    tg_rpc_pb_free(m);
    tg_buf_free(&b);

    /* Truncated input: EPROTO naming the type. */
    assert_int_equal(
        tg_rpc_pb_unpack(&tollgate__test__v1__say_reply__descriptor, "\x0a\x05h", 3, &m, err, sizeof err),
        TG_RPC_EPROTO);
    assert_null(m);
    assert_non_null(strstr(err, "tollgate.test.v1.SayReply"));
    /* A buffer too small for the message: ENOMEM, buffer unchanged. */
    tg_buf_init(&b, 4);
    assert_int_equal(tg_rpc_pb_pack(&r.base, &b, NULL, 0), TG_RPC_ENOMEM);
    assert_int_equal(b.b_len, 0);
    tg_buf_free(&b);
}

/* Every allocation of a unary call, on both sides, fails in turn: each call
 * ends with a clean status or error (ASan: no crash, no leak), and once
 * allocations work again the server answers, even though some of its
 * waiting requests were lost meanwhile (they are re-armed). */
static void test_alloc_failures(void **state)
{
    (void)state;
    env_t e;
    tg_rpc_result_t res;
    tg_buf_t req;
    tg_rpc_md_t md[] = {{"authorization", "Bearer x", 0}};
    env_start(&e, NULL, NULL, NULL);
    say_req(&req, "fault", 0, "authorization");
    int ok = 0, failed = 0;
    /* Each budget twice: a budget that fails the server's re-arming of its
     * waiting request twice leaves Say with none (it has 2). */
    for (long k = 0; k < 120; k++) {
        tg_alloc_fail_after(k / 2);
        int rc = tg_rpc_unary(e.ch, SAY, md, 1, req.b_data, req.b_len, 2000, &res, NULL, 0);
        tg_alloc_fail_after(-1);
        if (rc == 0) {
            ok++;
        } else {
            failed++;
            assert_true(rc == TG_RPC_ENOMEM ||
                        (rc == TG_RPC_ESTATUS && (res.rs_code == TG_RPC_CODE_RESOURCE_EXHAUSTED ||
                                                  res.rs_code == TG_RPC_CODE_INTERNAL ||
                                                  res.rs_code == TG_RPC_CODE_INVALID_ARGUMENT ||
                                                  res.rs_code == TG_RPC_CODE_DEADLINE_EXCEEDED)));
        }
        tg_rpc_result_free(&res);
    }
    assert_true(failed > 0);
    assert_true(ok > 0); /* late budgets let the whole call through */
    /* All healthy again: several calls in a row succeed. */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(call_say(&e, "after", 0, 5000, NULL, 0, NULL, &res, NULL), 0);
        tg_rpc_result_free(&res);
    }
    tg_buf_free(&req);
    env_stop(&e);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    tg_rpc_server_t *srv = tg_rpc_server_create(NULL, err, sizeof err);
    assert_non_null(srv);
    assert_int_equal(tg_rpc_server_add_unary(srv, "NoSlash", NULL, NULL, err, sizeof err), TG_RPC_EINVAL);
    err[0] = '\0';
    assert_int_equal(tg_rpc_server_add_stream(srv, "/svc/", silent, NULL, err, sizeof err), TG_RPC_EINVAL);
    assert_non_null(strstr(err, "/package.Service/Method"));
    assert_int_equal(tg_rpc_server_add_stream(srv, SILENT, silent, NULL, err, sizeof err), 0);
    assert_int_equal(tg_rpc_server_add_stream(srv, SILENT, silent, NULL, err, sizeof err), TG_RPC_EINVAL);
    assert_int_equal(tg_rpc_server_start(srv, err, sizeof err), 0);
    assert_int_equal(tg_rpc_server_start(srv, err, sizeof err), TG_RPC_ESTATE);

    /* The port is taken: a second server cannot bind it. */
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", tg_rpc_server_port(srv));
    tg_rpc_server_opts_t o = {.so_addr = addr};
    tg_rpc_server_t *two = tg_rpc_server_create(&o, err, sizeof err);
    err[0] = '\0';
    assert_int_equal(tg_rpc_server_start(two, err, sizeof err), TG_RPC_EBIND);
    assert_non_null(strstr(err, addr));
    tg_rpc_server_destroy(two);
    tg_rpc_server_destroy(srv);
    tg_rpc_server_destroy(NULL);

    /* A certificate that is not PEM: refused at start, nothing leaks. */
    tg_rpc_server_opts_t junk = {.so_cert_pem = "not a certificate", .so_key_pem = "nor a key"};
    tg_rpc_server_t *bad = tg_rpc_server_create(&junk, err, sizeof err);
    assert_non_null(bad);
    err[0] = '\0';
    int src = tg_rpc_server_start(bad, err, sizeof err);
    assert_true(src == TG_RPC_EBIND || src == TG_RPC_ETLS);
    assert_non_null(strstr(err, "TLS"));
    tg_rpc_server_destroy(bad);

    /* Half a TLS identity is refused up front. */
    tg_rpc_server_opts_t half = {.so_cert_pem = "x"};
    assert_null(tg_rpc_server_create(&half, err, sizeof err));
    tg_rpc_channel_opts_t chalf = {.co_cert_pem = "x"};
    assert_null(tg_rpc_channel_create("127.0.0.1:1", &chalf, err, sizeof err));
    /* Out of memory is reported, not crashed on. */
    tg_alloc_fail_after(0);
    err[0] = '\0';
    assert_null(tg_rpc_channel_create("127.0.0.1:1", NULL, err, sizeof err));
    tg_alloc_fail_after(-1);
    assert_non_null(strstr(err, "out of memory"));

    tg_rpc_channel_t *ch = tg_rpc_channel_create("127.0.0.1:1", NULL, err, sizeof err);
    tg_rpc_result_t res;
    assert_int_equal(tg_rpc_unary(ch, "bad", NULL, 0, "", 0, 100, &res, err, sizeof err), TG_RPC_EINVAL);
    tg_rpc_result_free(&res);
    tg_rpc_channel_destroy(ch);
    tg_rpc_channel_destroy(NULL);
    tg_rpc_reader_destroy(NULL);
    tg_rpc_result_free(NULL);

    assert_string_equal(tg_rpc_code_name(TG_RPC_CODE_INVALID_ARGUMENT), "INVALID_ARGUMENT");
    assert_string_equal(tg_rpc_code_name(99), "UNKNOWN_CODE");
    for (int c = TG_RPC_ENOMEM; c > TG_RPC_ELAST; c--)
        assert_non_null(strstr(tg_rpc_strerror(c), "TG_RPC_E"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unary_roundtrip),
        cmocka_unit_test(test_metadata_seen_by_handler),
        cmocka_unit_test(test_status_and_message),
        cmocka_unit_test(test_deadline_exceeded),
        cmocka_unit_test(test_server_unreachable),
        cmocka_unit_test(test_stream_many_from_thread),
        cmocka_unit_test(test_client_cancel_noticed),
        cmocka_unit_test(test_reader_timeout),
        cmocka_unit_test(test_keepalive_idle_stream),
        cmocka_unit_test(test_vanished_client_detected),
        cmocka_unit_test(test_kept_stream_races),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_mtls),
        cmocka_unit_test(test_reconnect_after_restart),
        cmocka_unit_test(test_stream_run_stops_on_cancel),
        cmocka_unit_test(test_graceful_shutdown),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_pb_helpers),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_bad_arguments),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    /* Every rpc/ allocation went back (the gRPC core's own: ASan checks). */
    if (tg_alloc_live() != 0) {
        fprintf(stderr, "leak: %ld tg_malloc blocks still live\n", tg_alloc_live());
        failed++;
    }
    return failed;
}
