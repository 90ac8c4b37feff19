/* settle_drive.c: the load generator of bench/cp/settle_bench.mjs --driver c.
 * Node builds and signs the batches (as before, outside the clock) and
 * writes each fake agent's SignedUsageBatch messages to a file; this
 * program sends them with the gRPC C core, one thread per agent, each
 * agent's batches in sequence order like a real agent draining its outbox.
 * It exists because the Node sender (grpc-js) took ~0.4 of the machine's
 * 2 cores during the timed phase, CPU the control plane under test then
 * did not get; real agents run on other machines.
 *
 *   settle_drive HOST:PORT FILE...   (FILE: [u32 little-endian length][bytes]...)
 *
 * Prints "DRIVE batches=N settled=M secs=S p50_ms=X p99_ms=Y" and exits 0,
 * or names the first failed call and exits 1. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/tollgate/v1/agent.pb-c.h"
#include "base/tg_base.h"
#include "rpc/tg_rpc.h"

typedef struct agent {
    const char *a_path;
    uint8_t *a_data;
    size_t a_len;
    tg_rpc_channel_t *a_ch;
    long a_batches, a_settled;
    double *a_lat;     /* ms per call */
    int a_failed;
    char a_err[512];
} agent_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int load(agent_t *a)
{
    FILE *f = fopen(a->a_path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    a->a_data = malloc(n > 0 ? (size_t)n : 1);
    a->a_len = a->a_data && fread(a->a_data, 1, (size_t)n, f) == (size_t)n ? (size_t)n : 0;
    fclose(f);
    if (!a->a_len)
        return -1;
    a->a_lat = calloc(a->a_len / 4 + 1, sizeof(double));
    return a->a_lat ? 0 : -1;
}

static void *run(void *arg)
{
    agent_t *a = arg;
    size_t off = 0;
    while (off + 4 <= a->a_len && !a->a_failed) {
        uint32_t n = (uint32_t)a->a_data[off] | (uint32_t)a->a_data[off + 1] << 8 |
                     (uint32_t)a->a_data[off + 2] << 16 | (uint32_t)a->a_data[off + 3] << 24;
        off += 4;
        if (off + n > a->a_len) {
            snprintf(a->a_err, sizeof a->a_err, "%s: truncated", a->a_path);
            a->a_failed = 1;
            break;
        }
        tg_rpc_result_t res;
        double t0 = now_s();
        int rc = tg_rpc_unary(a->a_ch, "/tollgate.v1.AgentService/ReportUsage", NULL, 0, a->a_data + off, n, 60000,
                              &res, a->a_err, sizeof a->a_err);
        a->a_lat[a->a_batches++] = (now_s() - t0) * 1000.0;
        if (rc == 0) {
            Tollgate__V1__ReportUsageResponse *r =
                tollgate__v1__report_usage_response__unpack(NULL, res.rs_len, res.rs_data);
            if (r) {
                a->a_settled += r->settled;
                tollgate__v1__report_usage_response__free_unpacked(r, NULL);
            }
        } else {
            a->a_failed = 1;
        }
        tg_rpc_result_free(&res);
        off += n;
    }
    return NULL;
}

static int cmp_d(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: settle_drive HOST:PORT FILE...\n");
        return 2;
    }
    int n = argc - 2, rc = 0;
    agent_t *ag = calloc((size_t)n, sizeof *ag);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    if (!ag || !th)
        return 1;
    for (int i = 0; i < n; i++) {
        ag[i].a_path = argv[i + 2];
        char err[256];
        if (load(&ag[i]) != 0 || !(ag[i].a_ch = tg_rpc_channel_create(argv[1], NULL, err, sizeof err))) {
            fprintf(stderr, "settle_drive: %s: cannot load or connect\n", ag[i].a_path);
            return 1;
        }
    }
    double t0 = now_s();
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, run, &ag[i]);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    double secs = now_s() - t0;
    long batches = 0, settled = 0;
    for (int i = 0; i < n; i++) {
        batches += ag[i].a_batches;
        settled += ag[i].a_settled;
        if (ag[i].a_failed && !rc) {
            fprintf(stderr, "settle_drive: %s: %s\n", ag[i].a_path, ag[i].a_err);
            rc = 1;
        }
    }
    double *all = calloc((size_t)batches + 1, sizeof(double));
    long k = 0;
    for (int i = 0; i < n && all; i++)
        for (long j = 0; j < ag[i].a_batches; j++)
            all[k++] = ag[i].a_lat[j];
    if (all && k)
        qsort(all, (size_t)k, sizeof(double), cmp_d);
    printf("DRIVE batches=%ld settled=%ld secs=%.4f p50_ms=%.1f p99_ms=%.1f\n", batches, settled, secs,
           k ? all[k / 2] : 0.0, k ? all[(long)((double)k * 0.99)] : 0.0);
    for (int i = 0; i < n; i++) {
        tg_rpc_channel_destroy(ag[i].a_ch);
        free(ag[i].a_data);
        free(ag[i].a_lat);
    }
    free(all);
    free(ag);
    free(th);
    return rc;
}
