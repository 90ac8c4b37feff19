/* ledger_bench: what the LMDB ledger costs, measured on this machine.
 *
 *  1. Appends per second with full fsync in batches of 1, 100, 1000 and
 *     10000 rows, each beside a baseline measured in the same run: a bare
 *     LMDB put of the same bytes (no indexes, no dedup, no hash chain) in
 *     the same batch size and sync mode, so the ratio is the ledger's own
 *     overhead.
 *  2. The hash chain: SHA-256 per row alone, as a share of an append, and
 *     verify throughput.
 *  3. Queries over a ledger of 1,000,000 rows (10,000 keys plus one hot key
 *     with 1% of the rows): time to the first page of 100 and to a full
 *     scan of one key, a key's sum, and retention of 10% of the rows.
 *
 * Every query result is checked against the counts the generator produced;
 * a mismatch exits 1. Usage:
 *   ledger_bench [--quick] [--rows N] [--dir DIR]
 * --quick (for CI) uses small sizes and finishes in a few seconds. Files go
 * to a fresh directory under DIR (default $TMPDIR or /tmp), removed at the
 * end. */
#include <lmdb.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/tg_base.h"
#include "store/ledger/ledger.h"

#define NKEYS 10000
#define PAGE 100
#define REC_BYTES 300

static char dir[512];
static unsigned char blob[REC_BYTES];
static uint64_t rng = 0x2545F4914F6CDD1DULL;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Bytes this process has sent to the storage layer (/proc/self/io
 * write_bytes): what a batch really costs the disk. 0 if unavailable. */
static double written(void)
{
    FILE *fp = fopen("/proc/self/io", "r");
    char line[128];
    double v = 0;
    if (!fp)
        return 0;
    while (fgets(line, sizeof(line), fp))
        if (strncmp(line, "write_bytes:", 12) == 0)
            v = strtod(line + 12, NULL);
    fclose(fp);
    return v;
}

static void die(const char *what, const char *err)
{
    fprintf(stderr, "ledger_bench: %s: %s\n", what, err);
    exit(1);
}

/* ---- row generation -------------------------------------------------------- */

struct gen {
    tg_ledger_row_t *rows;
    char (*ids)[48];
    char (*keys)[24];
    char (*accts)[24];
    char (*projs)[24];
    char (*runs)[24];
    char (*models)[24];
    char (*chans)[24];
    size_t cap;
    uint64_t next; /* rows generated so far */
    uint64_t hot;  /* rows given the hot key */
    int random_ids; /* 1: UUIDv4-like ids; 0: time-ordered ids per agent (ULID-like) */
};

static void gen_init(struct gen *g, size_t cap)
{
    memset(g, 0, sizeof(*g));
    g->cap = cap;
    g->rows = calloc(cap, sizeof(*g->rows));
    g->ids = calloc(cap, sizeof(*g->ids));
    g->keys = calloc(cap, sizeof(*g->keys));
    g->accts = calloc(cap, sizeof(*g->accts));
    g->projs = calloc(cap, sizeof(*g->projs));
    g->runs = calloc(cap, sizeof(*g->runs));
    g->models = calloc(cap, sizeof(*g->models));
    g->chans = calloc(cap, sizeof(*g->chans));
    if (!g->rows || !g->ids || !g->keys || !g->accts || !g->projs || !g->runs || !g->models ||
        !g->chans)
        die("generator", "out of memory");
}

static void gen_free(struct gen *g)
{
    free(g->rows);
    free(g->ids);
    free(g->keys);
    free(g->accts);
    free(g->projs);
    free(g->runs);
    free(g->models);
    free(g->chans);
}

/* Fills n rows shaped like real settled usage; settled times rise with the
 * sequence, as the settler assigns them. */
static void gen_fill(struct gen *g, size_t n, int64_t base_us)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rnd(), k = g->next++;
        tg_ledger_row_t *w = &g->rows[i];
        /* Random ids land all over the id index; time-ordered ones (8
         * agents, each counting up) land at 8 places. */
        if (g->random_ids)
            snprintf(g->ids[i], sizeof(g->ids[i]), "%016llx-%016llx", (unsigned long long)rnd(),
                     (unsigned long long)rnd());
        else
            snprintf(g->ids[i], sizeof(g->ids[i]), "agent%02u-%012llx-%08llx", (unsigned)(r % 8),
                     (unsigned long long)(1790000000000ULL + k / 100), (unsigned long long)k);
        if (r % 100 == 0) {
            snprintf(g->keys[i], sizeof(g->keys[i]), "key-hot");
            g->hot++;
        } else {
            snprintf(g->keys[i], sizeof(g->keys[i]), "key-%05u", (unsigned)((r >> 8) % NKEYS));
        }
        unsigned key = (unsigned)((r >> 8) % NKEYS);
        snprintf(g->accts[i], sizeof(g->accts[i]), "acct-%03u", key % 100);
        snprintf(g->projs[i], sizeof(g->projs[i]), "proj-%04u", key % 1000);
        if ((r >> 30) % 4 == 0)
            snprintf(g->runs[i], sizeof(g->runs[i]), "run-%05u", (unsigned)((r >> 32) % 50000));
        else
            g->runs[i][0] = '\0';
        snprintf(g->models[i], sizeof(g->models[i]), "model-%02u", (unsigned)((r >> 40) % 20));
        snprintf(g->chans[i], sizeof(g->chans[i]), "chan-%02u", (unsigned)((r >> 48) % 50));
        *w = (tg_ledger_row_t){
            .lr_kind = TG_LEDGER_USAGE,
            .lr_record_id = g->ids[i],
            .lr_settled_us = base_us + (int64_t)k * 100,
            .lr_request_us = base_us + (int64_t)k * 100 - 1500000,
            .lr_agent_id = "agent-eu-1",
            .lr_account_id = g->accts[i],
            .lr_project_id = g->projs[i],
            .lr_key_id = g->keys[i],
            .lr_run_id = g->runs[i],
            .lr_model = g->models[i],
            .lr_upstream_model = g->models[i],
            .lr_channel_id = g->chans[i],
            .lr_route_type = (r >> 56) % 3 ? "pooled" : "official",
            .lr_bucket = (r >> 56) % 3 ? "wallet" : "credit",
            .lr_currency = "USD",
            .lr_cost_nano = (int64_t)(r % 90000000) + 1000,
            .lr_upstream_cost_nano = (int64_t)(r % 60000000),
            .lr_input_tokens = (int64_t)(r % 8000),
            .lr_output_tokens = (int64_t)((r >> 16) % 2000),
            .lr_price_version = 3,
            .lr_record = blob,
            .lr_record_len = sizeof(blob),
        };
    }
}

/* ---- 1. appends ------------------------------------------------------------- */

static void rm_ledger(const char *path)
{
    char p[700];
    unlink(path);
    snprintf(p, sizeof(p), "%s-lock", path);
    unlink(p);
}

/* Appends `batches` batches of `bs` rows to a fresh ledger; rows/s. */
static double bench_append(size_t bs, int batches, int nosync, int random_ids,
                           double *ms_per_batch, double *cpu_us, double *bytes_row)
{
    char path[600], err[TG_ERRLEN] = "";
    tg_ledger_t *l;
    tg_ledger_opts_t o = {.lo_nosync = nosync};
    struct gen g;
    double t = 0, c = 0, w0;
    snprintf(path, sizeof(path), "%s/append-%zu.mdb", dir, bs);
    if (tg_ledger_open(path, &o, &l, err, sizeof(err)))
        die("open", err);
    gen_init(&g, bs);
    g.random_ids = random_ids;
    w0 = written();
    for (int b = 0; b < batches; b++) {
        size_t app;
        gen_fill(&g, bs, 1790000000000000LL);
        double t0 = now(), c0 = cpu();
        if (tg_ledger_append(l, g.rows, bs, NULL, &app, err, sizeof(err)))
            die("append", err);
        t += now() - t0;
        c += cpu() - c0;
        if (app != bs)
            die("append", "rows reported as duplicates in a fresh ledger");
    }
    tg_ledger_close(l);
    rm_ledger(path);
    gen_free(&g);
    *bytes_row = (written() - w0) / ((double)bs * batches);
    *ms_per_batch = t * 1000 / batches;
    *cpu_us = c * 1e6 / ((double)bs * batches);
    return (double)bs * batches / t;
}

/* The baseline: bare LMDB puts of the same row bytes, seq keys, one txn
 * per batch, same sync mode. */
static double bench_raw(size_t bs, int batches, int nosync, double *cpu_us, double *bytes_row)
{
    char path[600];
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *txn;
    struct gen g;
    double t = 0, c = 0, w0 = written();
    uint64_t seq = 0;
    unsigned char val[REC_BYTES + 200];
    snprintf(path, sizeof(path), "%s/raw-%zu.mdb", dir, bs);
    memset(val, 7, sizeof(val));
    if (mdb_env_create(&env) || mdb_env_set_mapsize(env, (size_t)4 << 30) ||
        mdb_env_open(env, path, MDB_NOSUBDIR | (nosync ? MDB_NOSYNC : 0), 0644))
        die("raw lmdb", "open failed");
    gen_init(&g, bs);
    for (int b = 0; b < batches; b++) {
        gen_fill(&g, bs, 1790000000000000LL);
        double t0 = now(), c0 = cpu();
        if (mdb_txn_begin(env, NULL, 0, &txn) || mdb_dbi_open(txn, NULL, 0, &dbi))
            die("raw lmdb", "begin failed");
        for (size_t i = 0; i < bs; i++) {
            unsigned char k[8];
            seq++;
            for (int j = 0; j < 8; j++)
                k[j] = (unsigned char)(seq >> (56 - 8 * j));
            MDB_val kv = {8, k}, vv = {sizeof(val), val};
            if (mdb_put(txn, dbi, &kv, &vv, MDB_APPEND))
                die("raw lmdb", "put failed");
        }
        if (mdb_txn_commit(txn))
            die("raw lmdb", "commit failed");
        t += now() - t0;
        c += cpu() - c0;
    }
    mdb_env_close(env);
    rm_ledger(path);
    gen_free(&g);
    *bytes_row = (written() - w0) / ((double)bs * batches);
    *cpu_us = c * 1e6 / ((double)bs * batches);
    return (double)bs * batches / t;
}

/* ---- 2. the chain ------------------------------------------------------------ */

static double bench_sha(int n)
{
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char prev[32] = {0}, row[REC_BYTES + 200];
    unsigned int olen;
    memset(row, 5, sizeof(row));
    double t0 = now();
    for (uint64_t i = 0; i < (uint64_t)n; i++) {
        EVP_DigestInit_ex(ctx, md, NULL);
        EVP_DigestUpdate(ctx, prev, 32);
        EVP_DigestUpdate(ctx, &i, sizeof(i));
        EVP_DigestUpdate(ctx, row, sizeof(row));
        EVP_DigestFinal_ex(ctx, prev, &olen);
    }
    double t = now() - t0;
    EVP_MD_CTX_free(ctx);
    EVP_MD_free(md);
    return t * 1e6 / n;
}

/* ---- 3. queries ---------------------------------------------------------------- */

struct count {
    uint64_t rows;
    double first; /* time the first row arrived */
    double t0;
    const char *key;
    int wrong;
};

static int count_cb(const tg_ledger_row_t *r, void *arg)
{
    struct count *c = arg;
    if (c->rows++ == 0)
        c->first = now() - c->t0;
    if (c->key && strcmp(r->lr_key_id, c->key) != 0)
        c->wrong++;
    return 0;
}

int main(int argc, char **argv)
{
    int quick = 0;
    long nrows = 1000000;
    const char *base = getenv("TMPDIR");
    char err[TG_ERRLEN] = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc)
            nrows = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            base = argv[++i];
        else {
            fprintf(stderr, "usage: ledger_bench [--quick] [--rows N] [--dir DIR]\n");
            return 2;
        }
    }
    if (quick && nrows == 1000000)
        nrows = 20000;
    if (nrows < 10000)
        nrows = 10000;
    snprintf(dir, sizeof(dir), "%s/tg-ledger-bench-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir))
        die("mkdtemp", dir);
    for (size_t i = 0; i < sizeof(blob); i++)
        blob[i] = (unsigned char)rnd();

    printf("# ledger_bench%s: rows of %d opaque bytes + indexed fields, files in %s\n",
           quick ? " --quick" : "", REC_BYTES, dir);
    printf("\n## appends (one write transaction per batch)\n\n");
    printf("| batch | sync | ledger rows/s (ordered ids) | CPU us/row | disk B/row | ms/batch | "
           "ledger rows/s (random ids) | disk B/row | bare LMDB rows/s | CPU us/row | disk B/row | "
           "bare / ledger |\n");
    printf("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    struct {
        size_t bs;
        int batches, quick_batches, nosync;
    } runs[] = {{1, 2000, 100, 0},      {100, 300, 20, 0},   {1000, 100, 10, 0},
                {10000, 30, 3, 0},      {1000, 100, 10, 1},  {10000, 30, 3, 1}};
    double r10000 = 0;
    for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
        int nb = quick ? runs[i].quick_batches : runs[i].batches;
        double ms, ms2, cu, cu2, cr, wb, wb2, wr;
        double lr = bench_append(runs[i].bs, nb, runs[i].nosync, 0, &ms, &cu, &wb);
        double lrr = bench_append(runs[i].bs, nb, runs[i].nosync, 1, &ms2, &cu2, &wb2);
        double rr = bench_raw(runs[i].bs, nb, runs[i].nosync, &cr, &wr);
        if (runs[i].bs == 10000 && !runs[i].nosync)
            r10000 = lr;
        printf("| %zu | %s | %.0f | %.2f | %.0f | %.2f | %.0f | %.0f | %.0f | %.2f | %.0f | %.2f |\n",
               runs[i].bs, runs[i].nosync ? "none" : "fsync", lr, cu, wb, ms, lrr, wb2, rr, cr, wr,
               rr / lr);
        fflush(stdout);
    }

    double sha_us = bench_sha(quick ? 20000 : 500000);
    printf("\n## hash chain\n\nSHA-256 of one %d-byte row: %.3f us = %.1f%% of a batched append "
           "(10000/batch, fsync: %.3f us/row)\n",
           REC_BYTES + 200, sha_us, 100.0 * sha_us / (1e6 / r10000), 1e6 / r10000);

    /* A big ledger for queries. */
    char path[600];
    tg_ledger_t *l;
    struct gen g;
    snprintf(path, sizeof(path), "%s/query.mdb", dir);
    if (tg_ledger_open(path, NULL, &l, err, sizeof(err)))
        die("open", err);
    gen_init(&g, 10000);
    double tb = 0;
    for (long done = 0; done < nrows; done += 10000) {
        size_t app;
        gen_fill(&g, 10000, 1790000000000000LL);
        double t0 = now();
        if (tg_ledger_append(l, g.rows, 10000, NULL, &app, err, sizeof(err)))
            die("append", err);
        tb += now() - t0;
    }
    uint64_t total = g.next, hot = g.hot;
    tg_ledger_stat_t st;
    if (tg_ledger_stat(l, &st, err, sizeof(err)))
        die("stat", err);
    printf("\n## queries over %llu rows (built at %.0f rows/s, fsync, 10000/batch; map %.0f MiB "
           "used)\n\n",
           (unsigned long long)total, (double)total / tb, (double)st.ls_map_used / 1048576.0);
    printf("| query | rows | first page of %d | full scan | rows/s |\n|---|---:|---:|---:|---:|\n",
           PAGE);

    /* One key: first page, whole key via export, sum. The first run maps
     * the pages (cold); warm is the best of 5 more runs, since other work
     * on a shared machine can preempt any single run of a few ms. */
    const char *keys[2] = {"key-hot", "key-04242"};
    for (int k = 0; k < 2; k++) {
        double best[2][3] = {{0}};
        uint64_t nrows_key = 0;
        for (int pass = 0; pass < 6; pass++) {
            tg_ledger_filter_t f;
            char next[TG_LEDGER_CURSOR_LEN];
            struct count c = {.key = keys[k]}, all = {.key = keys[k]};
            tg_ledger_sum_t sum;
            tg_ledger_filter_init(&f);
            f.lf_key_id = keys[k];
            c.t0 = now();
            if (tg_ledger_query(l, &f, NULL, PAGE, count_cb, &c, next, NULL, err, sizeof(err)))
                die("query", err);
            double t[3];
            t[0] = now() - c.t0;
            all.t0 = now();
            if (tg_ledger_export(l, &f, 0, count_cb, &all, NULL, err, sizeof(err)))
                die("export", err);
            t[1] = now() - all.t0;
            double ts = now();
            if (tg_ledger_sum(l, &f, &sum, err, sizeof(err)))
                die("sum", err);
            t[2] = now() - ts;
            if (all.wrong || c.wrong || sum.ls_rows != all.rows || (k == 0 && all.rows != hot))
                die("query check", "a query returned the wrong rows");
            nrows_key = all.rows;
            int slot = pass ? 1 : 0;
            for (int i = 0; i < 3; i++)
                if (pass <= 1 || t[i] < best[1][i])
                    best[slot][i] = t[i];
        }
        for (int w = 0; w < 2; w++) {
            const char *tag = w ? "warm" : "cold";
            printf("| key %s (%s) | %llu | %.3f ms | %.3f ms | %.0f |\n", keys[k], tag,
                   (unsigned long long)nrows_key, best[w][0] * 1000, best[w][1] * 1000,
                   (double)nrows_key / best[w][1]);
            printf("| sum of key %s (%s) | %llu | | %.3f ms | %.0f |\n", keys[k], tag,
                   (unsigned long long)nrows_key, best[w][2] * 1000,
                   (double)nrows_key / best[w][2]);
        }
    }
    /* Everything, and a filter no index serves (route type). */
    {
        tg_ledger_filter_t f;
        tg_ledger_filter_init(&f);
        struct count all = {0};
        all.t0 = now();
        if (tg_ledger_export(l, &f, 0, count_cb, &all, NULL, err, sizeof(err)))
            die("export", err);
        double full = now() - all.t0;
        if (all.rows != total)
            die("export check", "the full export missed rows");
        printf("| export all | %llu | %.3f ms | %.3f ms | %.0f |\n", (unsigned long long)all.rows,
               all.first * 1000, full * 1000, (double)all.rows / full);
    }
    double tv = now();
    if (tg_ledger_verify(l, 0, 0, NULL, err, sizeof(err)))
        die("verify", err);
    tv = now() - tv;
    printf("| verify chain | %llu | | %.3f ms | %.0f |\n", (unsigned long long)total, tv * 1000,
           (double)total / tv);
    uint64_t deleted = 0;
    double tr = now();
    if (tg_ledger_retain(l, 1790000000000000LL + (int64_t)(total / 10) * 100, 1000, &deleted, err,
                         sizeof(err)))
        die("retain", err);
    tr = now() - tr;
    if (deleted != total / 10)
        die("retain check", "retention deleted the wrong number of rows");
    printf("| retain oldest 10%% (1000/txn) | %llu | | %.3f ms | %.0f |\n",
           (unsigned long long)deleted, tr * 1000, (double)deleted / tr);
    if (tg_ledger_verify(l, 0, 0, NULL, err, sizeof(err)))
        die("verify after retention", err);

    tg_ledger_close(l);
    rm_ledger(path);
    gen_free(&g);
    rmdir(dir);
    if (!quick && r10000 < 200000)
        printf("\nNOTE: batched appends below the 200,000 rows/s target\n");
    return 0;
}
