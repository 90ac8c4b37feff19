/* kv_bench: puts/s and txns/s of tg_store on both backends, printed as a
 * markdown table for docs/PERFORMANCE.md.
 *
 * Baselines measured in the same run: fdatasync/s on a file in the LMDB
 * directory's filesystem (an LMDB commit with full sync cannot beat it), and
 * for etcd the same loads on the same machine (etcd's own fsync'd raft log is
 * what bounds it). It starts its own etcd (/usr/bin/etcd) on loopback ports,
 * or uses --etcd URL.
 *
 * A "txn" is what the control plane's settlement does per batch: compare a
 * key's mod_revision, then put two keys (the thread's own, so no conflicts).
 *
 * usage: kv_bench [--seconds S] [--etcd http://127.0.0.1:2379] [--dir DIR] */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/tg_base.h"
#include "store/store.h"
#include "store/tests/etcd_harness.h"

typedef struct job {
    tg_store_t *j_s;
    int j_txn;
    int j_id;
    double j_until;
    long j_ops;
    int j_rc;
    char j_err[TG_ERRLEN];
} job_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *worker(void *arg)
{
    job_t *j = arg;
    char k1[64], k2[64], val[128];
    int l1 = snprintf(k1, sizeof(k1), "bench/%d/a", j->j_id);
    int l2 = snprintf(k2, sizeof(k2), "bench/%d/b", j->j_id);
    memset(val, 'v', sizeof(val));
    int64_t mod = 0;
    if (j->j_txn) { /* an earlier run may have left the key: start from its revision */
        tg_store_kv_t *kv = NULL;
        if ((j->j_rc = tg_store_get(j->j_s, k1, (size_t)l1, &kv, NULL, j->j_err, sizeof(j->j_err))))
            return NULL;
        mod = kv ? kv->kv_mod_rev : 0;
        tg_store_kv_free(kv);
    }
    while (now_s() < j->j_until) {
        if (!j->j_txn) {
            int n = snprintf(k2, sizeof(k2), "bench/%d/%ld", j->j_id, j->j_ops % 1000);
            j->j_rc =
                tg_store_put(j->j_s, k2, (size_t)n, val, sizeof(val), 0, NULL, j->j_err, sizeof(j->j_err));
        } else {
            tg_store_cmp_t c = {.c_key = k1,
                                .c_key_len = (size_t)l1,
                                .c_target = TG_STORE_CMP_MOD_REV,
                                .c_op = TG_STORE_EQ,
                                .c_num = mod};
            tg_store_op_t ops[2] = {
                {.op_type = TG_STORE_OP_PUT,
                 .op_key = k1,
                 .op_key_len = (size_t)l1,
                 .op_val = val,
                 .op_val_len = sizeof(val)},
                {.op_type = TG_STORE_OP_PUT,
                 .op_key = k2,
                 .op_key_len = (size_t)l2,
                 .op_val = val,
                 .op_val_len = sizeof(val)},
            };
            tg_store_txn_res_t res;
            j->j_rc = tg_store_txn(j->j_s, &c, 1, ops, 2, NULL, 0, &res, j->j_err, sizeof(j->j_err));
            if (!j->j_rc && !res.tx_succeeded) {
                j->j_rc = -100;
                snprintf(j->j_err, sizeof(j->j_err), "txn compare failed unexpectedly");
            }
            mod = res.tx_revision;
            tg_store_txn_res_free(&res);
        }
        if (j->j_rc)
            break;
        j->j_ops++;
    }
    return NULL;
}

/* Runs threads x (put|txn) for seconds; returns ops/s or -1. */
static double run(tg_store_t *s, int threads, int txn, double seconds)
{
    job_t jobs[64];
    pthread_t t[64];
    double t0 = now_s();
    for (int i = 0; i < threads; i++) {
        jobs[i] = (job_t){.j_s = s, .j_txn = txn, .j_id = i, .j_until = t0 + seconds};
        pthread_create(&t[i], NULL, worker, &jobs[i]);
    }
    long ops = 0;
    int bad = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        ops += jobs[i].j_ops;
        if (jobs[i].j_rc) {
            fprintf(stderr, "kv_bench: %s\n", jobs[i].j_err);
            bad = 1;
        }
    }
    double el = now_s() - t0;
    return bad ? -1 : ops / el;
}

static double fsync_rate(const char *dir, double seconds)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/fsync-probe", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    char b[4096];
    memset(b, 1, sizeof(b));
    long n = 0;
    double t0 = now_s(), until = t0 + seconds;
    while (now_s() < until) {
        if (pwrite(fd, b, sizeof(b), (off_t)(n % 64) * 4096) != (ssize_t)sizeof(b) || fdatasync(fd) != 0)
            break;
        n++;
    }
    double el = now_s() - t0;
    close(fd);
    unlink(path);
    return n / el;
}

static int dcmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static tg_store_t *open_spec(const char *spec, const tg_store_opts_t *o)
{
    char err[TG_ERRLEN] = "";
    tg_store_t *s = NULL;
    if (tg_store_open(&s, spec, o, err, sizeof(err))) {
        fprintf(stderr, "kv_bench: open %s: %s\n", spec, err);
        exit(1);
    }
    return s;
}

int main(int argc, char **argv)
{
    double secs = 3;
    const char *etcd_url = NULL;
    char dir[512] = "";
    etcd_proc_t proc;
    memset(&proc, 0, sizeof(proc));
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            secs = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--etcd") && i + 1 < argc)
            etcd_url = argv[++i];
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            snprintf(dir, sizeof(dir), "%s", argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--seconds S] [--etcd URL] [--dir DIR]\n", argv[0]);
            return 2;
        }
    }
    if (!dir[0] && harness_tmpdir(dir, sizeof(dir), "kvbench")) {
        fprintf(stderr, "kv_bench: cannot make a temp dir\n");
        return 1;
    }
    char spec[700];
    double la[3] = {0, 0, 0};
    if (getloadavg(la, 3) > 0)
        printf("load average at start: %.2f\n\n", la[0]);
    tg_store_t *st[3];
    snprintf(spec, sizeof(spec), "lmdb:%s/db", dir);
    st[0] = open_spec(spec, NULL);
    snprintf(spec, sizeof(spec), "lmdb:%s/db-nosync", dir);
    tg_store_opts_t ns = {.so_nosync = 1};
    st[1] = open_spec(spec, &ns);
    if (!etcd_url) {
        if (etcd_start(&proc)) {
            fprintf(stderr, "kv_bench: cannot start etcd\n");
            return 1;
        }
        etcd_url = proc.ep_url;
    }
    snprintf(spec, sizeof(spec), "etcd:%s", etcd_url);
    st[2] = open_spec(spec, NULL);
    static const char *names[] = {"lmdb (fsync per commit)", "lmdb (so_nosync, no durability)",
                                  "etcd 3.4 (1 node, JSON gateway)"};
    static const struct {
        int store, threads, txn;
    } rows[] = {{0, 1, 0}, {0, 16, 0}, {0, 1, 1},  {0, 16, 1}, {1, 1, 0},
                {1, 1, 1}, {2, 1, 0},  {2, 16, 0}, {2, 1, 1},  {2, 16, 1}};
    enum { NROWS = sizeof(rows) / sizeof(rows[0]), ROUNDS = 3 };
    double res[NROWS + 1][ROUNDS];
    /* rounds interleave the rows, so a burst of load elsewhere on the machine
       hits every row alike; each row reports its median */
    for (int r = 0; r < ROUNDS; r++) {
        res[NROWS][r] = fsync_rate(dir, secs);
        for (int i = 0; i < NROWS; i++) {
            res[i][r] = run(st[rows[i].store], rows[i].threads, rows[i].txn, secs);
            if (res[i][r] < 0)
                return 1;
        }
    }
    for (int i = 0; i <= NROWS; i++)
        qsort(res[i], ROUNDS, sizeof(double), dcmp);
    double fs = res[NROWS][ROUNDS / 2];
    printf("| backend | load | threads | ops/s (median of %d) | vs fdatasync/s |\n"
           "|---|---|---|---|---|\n",
           ROUNDS);
    printf("| (baseline) | fdatasync of 4 KiB, same filesystem | 1 | %.0f | 1.00 |\n", fs);
    for (int i = 0; i < NROWS; i++)
        printf("| %s | %s | %d | %.0f | %.2f |\n", names[rows[i].store],
               rows[i].txn ? "txn: compare + 2 puts" : "put 128 B", rows[i].threads, res[i][ROUNDS / 2],
               res[i][ROUNDS / 2] / fs);
    for (int i = 0; i < 3; i++)
        tg_store_close(st[i]);
    if (proc.ep_pid)
        etcd_stop(&proc);
    harness_rmdir(dir);
    return 0;
}
