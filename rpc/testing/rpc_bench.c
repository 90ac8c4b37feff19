/* rpc_bench: what rpc/ costs. Runs the Echo service in-process (or calls
 * --target HOST:PORT, e.g. the grpc-js baseline server in
 * rpc/testing/echo_server_node.mjs) and measures with rpc/'s client:
 *   - sequential unary Say calls: p50/p99 latency and calls/s;
 *   - unary calls from 8 threads at once: calls/s;
 *   - one server stream of Count messages: messages/s.
 * Prints a markdown table row per measurement.
 *
 *   rpc_bench [--target HOST:PORT] [--calls N] [--stream N] [--label NAME]
 */
#include <pthread.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rpc/testdata/echo.pb-c.h"
#include "rpc/testing/echo_service.h"

#define THREADS 8

/* A whole decimal int from a command-line argument, or exit 2 saying which. */
static int arg_int(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (s[0] == '\0' || *end != '\0' || errno || v < INT_MIN || v > INT_MAX) {
        fprintf(stderr, "not a whole number: '%s'\n", s);
        exit(2);
    }
    return (int)v;
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct job {
    tg_rpc_channel_t *ch;
    const tg_buf_t *req;
    int n, failed;
    double *lat; /* may be NULL */
} job_t;

static void *run_calls(void *p)
{
    job_t *j = p;
    char err[TG_ERRLEN];
    for (int i = 0; i < j->n; i++) {
        tg_rpc_result_t res;
        double t0 = now_us();
        if (tg_rpc_unary(j->ch, "/tollgate.test.v1.Echo/Say", NULL, 0, j->req->b_data, j->req->b_len, 5000,
                         &res, err, sizeof err) != 0) {
            if (j->failed++ == 0)
                fprintf(stderr, "rpc_bench: %s\n", err);
        }
        if (j->lat)
            j->lat[i] = now_us() - t0;
        tg_rpc_result_free(&res);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *target = NULL, *label = "rpc/ C server";
    int calls = 20000, stream_n = 200000, rc = 1;
    char err[TG_ERRLEN] = "", tbuf[64];
    tg_echo_t *echo = NULL;
    tg_rpc_server_t *srv = NULL;
    tg_rpc_channel_t *ch = NULL;
    tg_buf_t req, creq, msg;
    double *lat = NULL;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--target") == 0)
            target = argv[i + 1];
        else if (strcmp(argv[i], "--calls") == 0)
            calls = arg_int(argv[i + 1]);
        else if (strcmp(argv[i], "--stream") == 0)
            stream_n = arg_int(argv[i + 1]);
        else if (strcmp(argv[i], "--label") == 0)
            label = argv[i + 1];
    }
    tg_buf_init(&req, 1 << 16);
    tg_buf_init(&creq, 1 << 16);
    tg_buf_init(&msg, 1 << 20);
    if (!target) {
        tg_rpc_server_opts_t o = {.so_threads = 2};
        if (!(echo = tg_echo_create("bench")) || !(srv = tg_rpc_server_create(&o, err, sizeof err)) ||
            tg_echo_register(echo, srv, err, sizeof err) != 0 ||
            tg_rpc_server_start(srv, err, sizeof err) != 0)
            goto done;
        snprintf(tbuf, sizeof tbuf, "127.0.0.1:%d", tg_rpc_server_port(srv));
        target = tbuf;
    }
    if (!(ch = tg_rpc_channel_create(target, NULL, err, sizeof err)))
        goto done;

    Tollgate__Test__V1__SayRequest sr = TOLLGATE__TEST__V1__SAY_REQUEST__INIT;
    sr.text = "hello tollgate, a short unary request";
    Tollgate__Test__V1__CountRequest cr = TOLLGATE__TEST__V1__COUNT_REQUEST__INIT;
    cr.n = stream_n;
    cr.payload_bytes = 100;
    if (tg_rpc_pb_pack(&sr.base, &req, err, sizeof err) != 0 ||
        tg_rpc_pb_pack(&cr.base, &creq, err, sizeof err) != 0)
        goto done;

    /* Warm up: connect, and let both sides' allocators settle. */
    job_t warm = {ch, &req, 500, 0, NULL};
    run_calls(&warm);
    if (warm.failed)
        goto done;

    lat = tg_calloc((size_t)calls, sizeof *lat);
    if (!lat)
        goto done;
    job_t seq = {ch, &req, calls, 0, lat};
    double t0 = now_us();
    run_calls(&seq);
    double seq_s = (now_us() - t0) / 1e6;
    qsort(lat, (size_t)calls, sizeof *lat, cmp_double);

    pthread_t th[THREADS];
    job_t par[THREADS];
    t0 = now_us();
    for (int i = 0; i < THREADS; i++) {
        par[i] = (job_t){ch, &req, calls / THREADS, 0, NULL};
        pthread_create(&th[i], NULL, run_calls, &par[i]);
    }
    int par_failed = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        par_failed += par[i].failed;
    }
    double par_s = (now_us() - t0) / 1e6;

    tg_rpc_reader_t *r = NULL;
    int got = 0, n;
    t0 = now_us();
    if (tg_rpc_reader_open(ch, "/tollgate.test.v1.Echo/Count", NULL, 0, creq.b_data, creq.b_len, 60000, &r,
                           err, sizeof err) != 0)
        goto done;
    while ((n = tg_rpc_reader_next(r, 10000, &msg, err, sizeof err)) == 1)
        got++;
    double st_s = (now_us() - t0) / 1e6;
    tg_rpc_reader_destroy(r);
    if (n != 0 || got != stream_n) {
        fprintf(stderr, "rpc_bench: stream got %d of %d: %s\n", got, stream_n, err);
        goto done;
    }
    if (seq.failed || par_failed)
        goto done;

    printf("| %s | %.0f | %.0f | %.0f | %.0f | %.0f |\n", label, lat[calls / 2], lat[(size_t)(calls * 0.99)],
           calls / seq_s, (calls / THREADS * THREADS) / par_s, got / st_s);
    rc = 0;
done:
    if (rc && err[0])
        fprintf(stderr, "rpc_bench: %s\n", err);
    tg_free(lat);
    tg_buf_free(&req);
    tg_buf_free(&creq);
    tg_buf_free(&msg);
    tg_rpc_channel_destroy(ch);
    tg_rpc_server_destroy(srv);
    tg_echo_destroy(echo);
    return rc;
}
