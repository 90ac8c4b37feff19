/* echo_service.c: the Echo test service (see echo_service.h). */
#include "rpc/testing/echo_service.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "rpc/testdata/echo.pb-c.h"

#define TICK_MS 20

typedef struct watcher {
    struct watcher *w_next;
    tg_rpc_call_t *w_call;
    int w_sent;
    size_t w_payload;
} watcher_t;

typedef struct counter {
    struct counter *j_next;
    tg_echo_t *j_echo;
    tg_rpc_call_t *j_call;
    int j_n;
    size_t j_payload;
    int j_done;
    pthread_t j_thread;
} counter_t;

struct tg_echo {
    char *e_name;
    pthread_mutex_t e_mu;
    pthread_cond_t e_cv;
    int e_stop;
    pthread_t e_ticker;
    watcher_t *e_watchers;
    counter_t *e_counters;
    tg_echo_stats_t e_stats;
};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Parses a request of type d; on failure sets an INVALID_ARGUMENT status
 * naming the type and returns NULL. Free with tg_rpc_pb_free. */
static void *parse(tg_rpc_call_t *call, const ProtobufCMessageDescriptor *d, const uint8_t *req, size_t len)
{
    ProtobufCMessage *m = NULL;
    char err[TG_ERRLEN] = "";
    if (tg_rpc_pb_unpack(d, req, len, &m, err, sizeof err) != 0)
        tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT, "%s", err);
    return m;
}

/* ---- unary -------------------------------------------------------------- */

static int say(tg_rpc_call_t *call, const uint8_t *req, size_t len, tg_buf_t *reply, void *arg)
{
    char err[TG_ERRLEN] = "";
    int code = TG_RPC_CODE_OK;
    Tollgate__Test__V1__SayRequest *rq = parse(call, &tollgate__test__v1__say_request__descriptor, req, len);
    if (!rq)
        return TG_RPC_CODE_INVALID_ARGUMENT;
    tg_echo_t *e = arg;
    pthread_mutex_lock(&e->e_mu);
    e->e_stats.es_say_running++;
    pthread_mutex_unlock(&e->e_mu);
    /* Wait in small steps so a cancelled call frees its thread early. */
    for (int waited = 0; waited < rq->delay_ms && !tg_rpc_call_cancelled(call); waited += 10)
        sleep_ms(10);
    if (tg_rpc_call_cancelled(call)) {
        code = TG_RPC_CODE_CANCELLED;
        goto done;
    }
    Tollgate__Test__V1__SayReply r = TOLLGATE__TEST__V1__SAY_REPLY__INIT;
    int64_t dl = tg_rpc_call_deadline_ms(call);
    const char *hv = rq->echo_header[0] ? tg_rpc_call_metadata(call, rq->echo_header, NULL) : NULL;
    const char *id = tg_rpc_call_peer_identity(call);
    r.text = rq->text;
    r.header_value = (char *)(hv ? hv : "");
    r.peer = (char *)tg_rpc_call_peer(call);
    r.deadline_ms = dl == INT64_MAX ? -1 : dl;
    r.identity = (char *)(id ? id : "");
    if (tg_rpc_call_add_header(call, "x-echo-method", tg_rpc_call_method(call)) != 0 ||
        tg_rpc_call_add_trailer(call, "x-echo-trailer", "done") != 0 ||
        tg_rpc_pb_pack(&r.base, reply, err, sizeof err) != 0)
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INTERNAL, "reply: %s", err);
done:
    pthread_mutex_lock(&e->e_mu);
    e->e_stats.es_say_running--;
    pthread_mutex_unlock(&e->e_mu);
    tg_rpc_pb_free(&rq->base);
    return code;
}

static int fail(tg_rpc_call_t *call, const uint8_t *req, size_t len, tg_buf_t *reply, void *arg)
{
    (void)arg;
    (void)reply;
    Tollgate__Test__V1__FailRequest *rq =
        parse(call, &tollgate__test__v1__fail_request__descriptor, req, len);
    if (!rq)
        return TG_RPC_CODE_INVALID_ARGUMENT;
    int code = tg_rpc_call_errorf(call, rq->code, "%s", rq->message);
    tg_rpc_pb_free(&rq->base);
    return code;
}

static int stats(tg_rpc_call_t *call, const uint8_t *req, size_t len, tg_buf_t *reply, void *arg)
{
    (void)req;
    (void)len;
    tg_echo_stats_t s = tg_echo_stats(arg);
    Tollgate__Test__V1__StatsReply r = TOLLGATE__TEST__V1__STATS_REPLY__INIT;
    char err[TG_ERRLEN] = "";
    r.active_streams = s.es_active;
    r.cancelled_streams = s.es_cancelled;
    r.count_done = s.es_count_done;
    if (tg_rpc_pb_pack(&r.base, reply, err, sizeof err) != 0)
        return tg_rpc_call_errorf(call, TG_RPC_CODE_INTERNAL, "%s", err);
    return TG_RPC_CODE_OK;
}

/* ---- Count: one thread per stream, blocking sends ----------------------- */

static int send_reply(tg_rpc_call_t *call, const char *text, int index, size_t payload, int timeout_ms)
{
    Tollgate__Test__V1__SayReply r = TOLLGATE__TEST__V1__SAY_REPLY__INIT;
    uint8_t *fill = NULL;
    r.text = (char *)text;
    r.index = index;
    if (payload) {
        fill = tg_malloc(payload);
        if (!fill)
            return TG_RPC_ENOMEM;
        memset(fill, 'x', payload);
        r.payload.data = fill;
        r.payload.len = payload;
    }
    int rc = tg_rpc_call_send_pb(call, &r.base, timeout_ms);
    tg_free(fill);
    return rc;
}

static void *count_thread(void *arg)
{
    counter_t *j = arg;
    int rc = 0, i;
    for (i = 0; i < j->j_n && rc == 0; i++)
        rc = send_reply(j->j_call, "count", i, j->j_payload, 30000);
    pthread_mutex_lock(&j->j_echo->e_mu);
    if (rc == 0)
        j->j_echo->e_stats.es_count_done++;
    else if (rc == TG_RPC_ECANCELLED)
        j->j_echo->e_stats.es_cancelled++;
    j->j_done = 1;
    pthread_mutex_unlock(&j->j_echo->e_mu);
    if (rc == 0)
        tg_rpc_call_finish(j->j_call, TG_RPC_CODE_OK, NULL);
    else
        tg_rpc_call_finish(j->j_call,
                           rc == TG_RPC_ECANCELLED ? TG_RPC_CODE_CANCELLED : TG_RPC_CODE_RESOURCE_EXHAUSTED,
                           tg_rpc_strerror(rc));
    return NULL;
}

/* Joins Count threads that are done. e_mu held. */
static void reap(tg_echo_t *e, int all)
{
    counter_t **pp = &e->e_counters;
    while (*pp) {
        counter_t *j = *pp;
        if (j->j_done || all) {
            *pp = j->j_next;
            pthread_mutex_unlock(&e->e_mu);
            pthread_join(j->j_thread, NULL);
            pthread_mutex_lock(&e->e_mu);
            tg_free(j);
        } else {
            pp = &j->j_next;
        }
    }
}

static int count(tg_rpc_call_t *call, const uint8_t *req, size_t len, void *arg)
{
    tg_echo_t *e = arg;
    Tollgate__Test__V1__CountRequest *rq =
        parse(call, &tollgate__test__v1__count_request__descriptor, req, len);
    if (!rq)
        return TG_RPC_CODE_INVALID_ARGUMENT;
    ProtobufCMessage *m = &rq->base;
    if (rq->n < 0 || rq->payload_bytes < 0 || rq->payload_bytes > (1 << 20)) {
        tg_rpc_pb_free(m);
        return tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT,
                                  "n and payload_bytes must be >= 0, payload_bytes <= 1 MiB");
    }
    counter_t *j = tg_calloc(1, sizeof *j);
    if (!j) {
        tg_rpc_pb_free(m);
        return tg_rpc_call_errorf(call, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
    }
    j->j_echo = e;
    j->j_call = call;
    j->j_n = rq->n;
    j->j_payload = (size_t)rq->payload_bytes;
    tg_rpc_pb_free(m);
    pthread_mutex_lock(&e->e_mu);
    reap(e, 0);
    if (pthread_create(&j->j_thread, NULL, count_thread, j) != 0) {
        pthread_mutex_unlock(&e->e_mu);
        tg_free(j);
        return tg_rpc_call_errorf(call, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no thread");
    }
    j->j_next = e->e_counters;
    e->e_counters = j;
    pthread_mutex_unlock(&e->e_mu);
    return TG_RPC_KEEP;
}

/* ---- Watch: one shared ticker pushes to every open stream --------------- */

static void watch_cancelled(tg_rpc_call_t *call, void *arg)
{
    tg_echo_t *e = arg;
    watcher_t *found = NULL;
    pthread_mutex_lock(&e->e_mu);
    for (watcher_t **pp = &e->e_watchers; *pp; pp = &(*pp)->w_next)
        if ((*pp)->w_call == call) {
            found = *pp;
            *pp = found->w_next;
            e->e_stats.es_active--;
            e->e_stats.es_cancelled++;
            break;
        }
    pthread_mutex_unlock(&e->e_mu);
    /* Finish only what was still ours (tg_echo_destroy may have taken it). */
    if (found) {
        tg_rpc_call_finish(call, TG_RPC_CODE_CANCELLED, "client went away");
        tg_free(found);
    }
}

static int watch(tg_rpc_call_t *call, const uint8_t *req, size_t len, void *arg)
{
    tg_echo_t *e = arg;
    Tollgate__Test__V1__CountRequest *rq =
        parse(call, &tollgate__test__v1__count_request__descriptor, req, len);
    if (!rq)
        return TG_RPC_CODE_INVALID_ARGUMENT;
    ProtobufCMessage *m = &rq->base;
    watcher_t *w = tg_calloc(1, sizeof *w);
    if (!w) {
        tg_rpc_pb_free(m);
        return tg_rpc_call_errorf(call, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
    }
    w->w_call = call;
    w->w_payload = (size_t)(rq->payload_bytes > 0 ? rq->payload_bytes : 0);
    if (w->w_payload > 65536)
        w->w_payload = 65536;
    tg_rpc_pb_free(m);
    tg_rpc_call_on_cancel(call, watch_cancelled, e);
    pthread_mutex_lock(&e->e_mu);
    w->w_next = e->e_watchers;
    e->e_watchers = w;
    e->e_stats.es_active++;
    pthread_mutex_unlock(&e->e_mu);
    return TG_RPC_KEEP;
}

static void *ticker(void *arg)
{
    tg_echo_t *e = arg;
    struct timespec ts;
    pthread_mutex_lock(&e->e_mu);
    while (!e->e_stop) {
        for (watcher_t *w = e->e_watchers; w; w = w->w_next) {
            /* Never wait on one slow client: a full queue skips a tick. */
            if (send_reply(w->w_call, e->e_name, w->w_sent, w->w_payload, 0) == 0)
                w->w_sent++;
        }
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += TICK_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        while (!e->e_stop && pthread_cond_timedwait(&e->e_cv, &e->e_mu, &ts) != ETIMEDOUT) {
        }
    }
    pthread_mutex_unlock(&e->e_mu);
    return NULL;
}

/* ---- service ------------------------------------------------------------ */

tg_echo_t *tg_echo_create(const char *name)
{
    pthread_condattr_t a;
    tg_echo_t *e = tg_calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->e_name = tg_strdup(name ? name : "watch");
    if (!e->e_name) {
        tg_free(e);
        return NULL;
    }
    pthread_mutex_init(&e->e_mu, NULL);
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&e->e_cv, &a);
    pthread_condattr_destroy(&a);
    if (pthread_create(&e->e_ticker, NULL, ticker, e) != 0) {
        pthread_mutex_destroy(&e->e_mu);
        pthread_cond_destroy(&e->e_cv);
        tg_free(e->e_name);
        tg_free(e);
        return NULL;
    }
    return e;
}

int tg_echo_register(tg_echo_t *e, tg_rpc_server_t *srv, char *err, size_t errlen)
{
    int rc;
    if ((rc = tg_rpc_server_add_unary(srv, "/tollgate.test.v1.Echo/Say", say, e, err, errlen)) ||
        (rc = tg_rpc_server_add_unary(srv, "/tollgate.test.v1.Echo/Fail", fail, e, err, errlen)) ||
        (rc = tg_rpc_server_add_unary(srv, "/tollgate.test.v1.Echo/Stats", stats, e, err, errlen)) ||
        (rc = tg_rpc_server_add_stream(srv, "/tollgate.test.v1.Echo/Count", count, e, err, errlen)) ||
        (rc = tg_rpc_server_add_stream(srv, "/tollgate.test.v1.Echo/Watch", watch, e, err, errlen)))
        return rc;
    return 0;
}

tg_echo_stats_t tg_echo_stats(tg_echo_t *e)
{
    pthread_mutex_lock(&e->e_mu);
    tg_echo_stats_t s = e->e_stats;
    pthread_mutex_unlock(&e->e_mu);
    return s;
}

void tg_echo_destroy(tg_echo_t *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->e_mu);
    e->e_stop = 1;
    pthread_cond_broadcast(&e->e_cv);
    pthread_mutex_unlock(&e->e_mu);
    pthread_join(e->e_ticker, NULL);
    pthread_mutex_lock(&e->e_mu);
    watcher_t *w = e->e_watchers;
    e->e_watchers = NULL;
    reap(e, 1);
    pthread_mutex_unlock(&e->e_mu);
    while (w) {
        watcher_t *next = w->w_next;
        tg_rpc_call_finish(w->w_call, TG_RPC_CODE_UNAVAILABLE, "service stopped");
        tg_free(w);
        w = next;
    }
    pthread_mutex_destroy(&e->e_mu);
    pthread_cond_destroy(&e->e_cv);
    tg_free(e->e_name);
    tg_free(e);
}
