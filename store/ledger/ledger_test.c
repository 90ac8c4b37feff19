/* Unit tests of tg_ledger (cmocka, run under ASan+UBSan): idempotent
 * batches, every filter combination against a brute-force reference on a
 * fixed-seed random data set, pagination under concurrent appends, sums to
 * the nano-unit, export, retention with a verifiable chain, tamper
 * detection through raw LMDB writes, map growth and map full, a full disk,
 * corrupt and truncated files, and allocation failures. Every test works
 * in its own temporary directory. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "base/tg_base.h"
#include "store/ledger/ledger.h"

/* ---- fixtures ------------------------------------------------------------ */

struct fx {
    char dir[512];
    char path[600];
    tg_ledger_t *l;
    char err[TG_ERRLEN];
};

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    const char *base = getenv("TEST_TMPDIR");
    snprintf(f->dir, sizeof(f->dir), "%s/ledgerXXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof(f->path), "%s/ledger.mdb", f->dir);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    char p[700];
    tg_ledger_close(f->l);
    unlink(f->path);
    snprintf(p, sizeof(p), "%s-lock", f->path);
    unlink(p);
    snprintf(p, sizeof(p), "%s/other.mdb", f->dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/other.mdb-lock", f->dir);
    unlink(p);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Small buckets (32 rows) so a few thousand rows span many of them. */
static const tg_ledger_opts_t small_buckets = {.lo_bucket_shift = 5};

static void fx_open(struct fx *f, const tg_ledger_opts_t *o)
{
    f->err[0] = '\0';
    if (!o)
        o = &small_buckets;
    int rc = tg_ledger_open(f->path, o, &f->l, f->err, sizeof(f->err));
    if (rc)
        fail_msg("open: %s", f->err);
}

static void fx_reopen(struct fx *f, const tg_ledger_opts_t *o)
{
    tg_ledger_close(f->l);
    f->l = NULL;
    fx_open(f, o);
}

/* ---- a fixed-seed random data set ---------------------------------------- */

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static int rnd_below(int n)
{
    return (int)(rnd() % (uint64_t)n);
}

static const char *ACCOUNTS[] = {"acct-a", "acct-b", "acct-c", "acct-d"};
static const char *PROJECTS[] = {"proj-1", "proj-2", "proj-3", "proj-4", "proj-5", "proj-6"};
static const char *KEYS[] = {"key-01", "key-02", "key-03", "key-04", "key-05",
                             "key-06", "key-07", "key-08", "key-09", "key-10"};
static const char *RUNS[] = {"", "", "run-x", "run-y", "run-z"};
static const char *MODELS[] = {"gpt-4o", "claude-sonnet", "deepseek-chat"};
static const char *CHANNELS[] = {"ch-openai", "ch-anthropic", "ch-pool-1", "ch-pool-2", "ch-ds"};
static const char *ROUTES[] = {"official", "pooled"};
#define N_OF(a) ((int)(sizeof(a) / sizeof(a[0])))

#define BASE_US 1790000000000000LL

struct ref {
    tg_ledger_row_t row;
    char id[32];
    unsigned char rec[64];
    uint64_t seq;
    int dead; /* removed by retention */
};

static void make_row(struct ref *r, int i, int64_t settled)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->id, sizeof(r->id), "rec-%06d", i);
    size_t rl = (size_t)rnd_below(64);
    for (size_t k = 0; k < rl; k++)
        r->rec[k] = (unsigned char)rnd();
    tg_ledger_row_t *w = &r->row;
    int kind = rnd_below(10);
    w->lr_kind = kind < 8 ? TG_LEDGER_USAGE : kind == 8 ? TG_LEDGER_TOPUP : TG_LEDGER_ADJUSTMENT;
    w->lr_record_id = r->id;
    w->lr_settled_us = settled;
    w->lr_request_us = settled - rnd_below(1000000);
    w->lr_agent_id = "agent-1";
    w->lr_account_id = ACCOUNTS[rnd_below(N_OF(ACCOUNTS))];
    w->lr_project_id = PROJECTS[rnd_below(N_OF(PROJECTS))];
    w->lr_key_id = KEYS[rnd_below(N_OF(KEYS))];
    w->lr_run_id = RUNS[rnd_below(N_OF(RUNS))];
    w->lr_model = MODELS[rnd_below(N_OF(MODELS))];
    w->lr_upstream_model = w->lr_model;
    w->lr_channel_id = CHANNELS[rnd_below(N_OF(CHANNELS))];
    w->lr_route_type = ROUTES[rnd_below(N_OF(ROUTES))];
    w->lr_bucket = w->lr_route_type[0] == 'o' ? "credit" : "wallet";
    w->lr_currency = "USD";
    w->lr_cost_nano = (int64_t)(rnd() % 5000000000ULL) - (kind == 9 ? 2500000000LL : 0);
    w->lr_upstream_cost_nano = (int64_t)(rnd() % 3000000000ULL);
    w->lr_input_tokens = rnd_below(100000);
    w->lr_output_tokens = rnd_below(20000);
    w->lr_price_version = 1 + rnd_below(3);
    w->lr_record = rl ? r->rec : NULL;
    w->lr_record_len = rl;
}

/* Appends refs[0..n) in random batch sizes; records seqs. */
static void append_all(struct fx *f, struct ref *refs, int n)
{
    int i = 0;
    while (i < n) {
        int b = 1 + rnd_below(97);
        if (b > n - i)
            b = n - i;
        tg_ledger_row_t rows[97];
        tg_ledger_result_t res[97];
        size_t app = 0;
        for (int k = 0; k < b; k++)
            rows[k] = refs[i + k].row;
        int rc = tg_ledger_append(f->l, rows, (size_t)b, res, &app, f->err, sizeof(f->err));
        if (rc)
            fail_msg("append: %s", f->err);
        assert_int_equal(app, b);
        for (int k = 0; k < b; k++) {
            assert_int_equal(res[k].ar_status, TG_LEDGER_ROW_NEW);
            refs[i + k].seq = res[k].ar_seq;
        }
        i += b;
    }
}

static int ref_match(const struct ref *r, const tg_ledger_filter_t *q)
{
    const tg_ledger_row_t *w = &r->row;
#define M(fl, fv) (!(fl) || !*(fl) || strcmp((fl), (fv)) == 0)
    return !r->dead && M(q->lf_account_id, w->lr_account_id) &&
           M(q->lf_project_id, w->lr_project_id) && M(q->lf_key_id, w->lr_key_id) &&
           M(q->lf_run_id, w->lr_run_id) && M(q->lf_model, w->lr_model) &&
           M(q->lf_channel_id, w->lr_channel_id) && M(q->lf_route_type, w->lr_route_type) &&
           (!q->lf_kind || q->lf_kind == (int)w->lr_kind) && w->lr_settled_us >= q->lf_from_us &&
           (!q->lf_to_us || w->lr_settled_us < q->lf_to_us);
#undef M
}

static int cmp_pos(const void *a, const void *b)
{
    const struct ref *x = *(struct ref *const *)a, *y = *(struct ref *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Expected rows in ledger (seq) order; returns the count. */
static int ref_query(struct ref *refs, int n, const tg_ledger_filter_t *q, struct ref **out)
{
    int m = 0;
    for (int i = 0; i < n; i++)
        if (ref_match(&refs[i], q))
            out[m++] = &refs[i];
    qsort(out, (size_t)m, sizeof(*out), cmp_pos);
    return m;
}

/* Collects the rows a callback sees (copying: rows die with the callback). */
struct seen {
    uint64_t *seqs;
    int n, cap;
    int bad; /* a row whose fields disagree with the reference */
    struct ref *refs;
    int nrefs;
};

static int seen_cb(const tg_ledger_row_t *r, void *arg)
{
    struct seen *s = arg;
    if (s->n < s->cap)
        s->seqs[s->n] = r->lr_seq;
    s->n++;
    /* Spot-check the decoded row against what was appended. */
    if (s->refs) {
        int found = 0;
        for (int i = 0; i < s->nrefs; i++) {
            struct ref *x = &s->refs[i];
            if (x->seq != r->lr_seq)
                continue;
            found = 1;
            if (strcmp(x->id, r->lr_record_id) || x->row.lr_cost_nano != r->lr_cost_nano ||
                x->row.lr_record_len != r->lr_record_len ||
                (r->lr_record_len && memcmp(x->rec, r->lr_record, r->lr_record_len)) ||
                strcmp(x->row.lr_key_id, r->lr_key_id) || strcmp(x->row.lr_run_id, r->lr_run_id))
                s->bad++;
            break;
        }
        if (!found)
            s->bad++;
    }
    return 0;
}

/* Pages through a query with the given limit; returns rows seen. */
static int page_all(struct fx *f, const tg_ledger_filter_t *q, size_t limit, struct seen *s)
{
    char cur[TG_LEDGER_CURSOR_LEN] = "", next[TG_LEDGER_CURSOR_LEN];
    for (int pages = 0; pages < 100000; pages++) {
        size_t got = 0;
        int rc = tg_ledger_query(f->l, q, cur, limit, seen_cb, s, next, &got, f->err,
                                 sizeof(f->err));
        if (rc)
            fail_msg("query: %s", f->err);
        assert_true(got <= limit);
        if (!next[0])
            return s->n;
        memcpy(cur, next, sizeof(cur));
    }
    fail_msg("pagination did not end");
    return -1;
}

/* ---- tests ---------------------------------------------------------------- */

static int count_rows(const tg_ledger_row_t *r, void *arg);

static void test_append_reopen_head(void **state)
{
    struct fx *f = *state;
    struct ref refs[20];
    const tg_ledger_opts_t defaults = {0};
    fx_open(f, &defaults);
    uint64_t seq = 99;
    unsigned char h[32], h2[32];
    assert_int_equal(tg_ledger_head(f->l, &seq, h, f->err, sizeof(f->err)), 0);
    assert_int_equal(seq, 0);
    for (int i = 0; i < 20; i++)
        make_row(&refs[i], i, BASE_US + i);
    append_all(f, refs, 20);
    assert_int_equal(tg_ledger_head(f->l, &seq, h, f->err, sizeof(f->err)), 0);
    assert_int_equal(seq, 20);
    fx_reopen(f, &defaults);
    assert_int_equal(tg_ledger_head(f->l, &seq, h2, f->err, sizeof(f->err)), 0);
    assert_int_equal(seq, 20);
    assert_memory_equal(h, h2, 32);
    tg_ledger_stat_t st;
    assert_int_equal(tg_ledger_stat(f->l, &st, f->err, sizeof(f->err)), 0);
    assert_int_equal(st.ls_rows, 20);
    assert_int_equal(st.ls_first_seq, 1);
    assert_int_equal(st.ls_head_seq, 20);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);

    /* Lookup by id returns the row as appended. */
    struct seen s = {.seqs = (uint64_t[4]){0}, .cap = 4, .refs = refs, .nrefs = 20};
    int found = 0;
    assert_int_equal(tg_ledger_get(f->l, "rec-000007", seen_cb, &s, &found, f->err, sizeof(f->err)), 0);
    assert_int_equal(found, 1);
    assert_int_equal(s.seqs[0], 8);
    assert_int_equal(s.bad, 0);
    assert_int_equal(tg_ledger_get(f->l, "nope", seen_cb, &s, &found, f->err, sizeof(f->err)), 0);
    assert_int_equal(found, 0);

    /* Many ids in one read transaction. */
    const char *ids[] = {"rec-000007", "nope", "rec-000000", "", "rec-000019", "rec-000020"};
    int has[6] = {9, 9, 9, 9, 9, 9};
    assert_int_equal(tg_ledger_has(f->l, ids, 6, has, f->err, sizeof(f->err)), 0);
    assert_int_equal(has[0], 1);
    assert_int_equal(has[1], 0);
    assert_int_equal(has[2], 1);
    assert_int_equal(has[3], 0);
    assert_int_equal(has[4], 1);
    assert_int_equal(has[5], 0);
    assert_int_equal(tg_ledger_has(f->l, ids, 0, NULL, f->err, sizeof(f->err)), 0);
}

/* A peer's rows continue this ledger's chain only as they were: the copy
 * of rows 11..30 after a shared prefix of 10 gives the same head, and an
 * altered row, a wrong hash or a row out of place is refused whole. */
struct hashes {
    unsigned char (*h)[32];
    size_t n;
};

static int hash_cb(const tg_ledger_row_t *r, void *arg)
{
    struct hashes *hs = arg;
    memcpy(hs->h[hs->n++], r->lr_hash, 32);
    return 0;
}

static void test_append_copy(void **state)
{
    struct fx *f = *state;
    struct ref refs[30];
    unsigned char hv[30][32], h1[32], h2[32];
    struct hashes hs = {hv, 0};
    tg_ledger_t *peer = NULL;
    char other[700], cur[TG_LEDGER_CURSOR_LEN], next[TG_LEDGER_CURSOR_LEN];
    uint64_t s1 = 0, s2 = 0;
    const tg_ledger_opts_t defaults = {0};
    tg_ledger_row_t rows[20];
    fx_open(f, &defaults);
    for (int i = 0; i < 30; i++)
        make_row(&refs[i], i, BASE_US + i);
    append_all(f, refs, 30);
    /* the peer's hashes of rows 11..30, read from a cursor after row 10 */
    tg_ledger_filter_t all;
    tg_ledger_filter_init(&all);
    tg_ledger_cursor_at(10, cur);
    assert_int_equal(tg_ledger_query(f->l, &all, cur, 100, hash_cb, &hs, next, NULL, f->err, sizeof(f->err)), 0);
    assert_int_equal(hs.n, 20);

    snprintf(other, sizeof(other), "%s/other.mdb", f->dir);
    assert_int_equal(tg_ledger_open(other, NULL, &peer, f->err, sizeof(f->err)), 0);
    for (int i = 0; i < 10; i++)
        rows[i] = refs[i].row;
    assert_int_equal(tg_ledger_append(peer, rows, 10, NULL, NULL, f->err, sizeof(f->err)), 0);
    for (int i = 0; i < 20; i++)
        rows[i] = refs[10 + i].row;
    /* an altered row: nothing of the copy is stored */
    rows[7].lr_cost_nano += 1;
    f->err[0] = '\0';
    assert_int_equal(tg_ledger_append_copy(peer, rows, 20, 11, hv, f->err, sizeof(f->err)), TG_LEDGER_ETAMPER);
    assert_non_null(strstr(f->err, "row 18"));
    rows[7].lr_cost_nano -= 1;
    /* out of place: starting at 12 */
    f->err[0] = '\0';
    assert_int_equal(tg_ledger_append_copy(peer, rows + 1, 19, 12, hv + 1, f->err, sizeof(f->err)),
                     TG_LEDGER_ETAMPER);
    assert_int_equal(tg_ledger_head(peer, &s2, h2, f->err, sizeof(f->err)), 0);
    assert_int_equal(s2, 10);
    /* as it was: the same head */
    assert_int_equal(tg_ledger_append_copy(peer, rows, 20, 11, hv, f->err, sizeof(f->err)), 0);
    assert_int_equal(tg_ledger_head(f->l, &s1, h1, f->err, sizeof(f->err)), 0);
    assert_int_equal(tg_ledger_head(peer, &s2, h2, f->err, sizeof(f->err)), 0);
    assert_int_equal(s1, 30);
    assert_int_equal(s2, 30);
    assert_memory_equal(h1, h2, 32);
    assert_int_equal(tg_ledger_verify(peer, 0, 0, NULL, f->err, sizeof(f->err)), 0);
    /* again: already stored */
    f->err[0] = '\0';
    assert_int_equal(tg_ledger_append_copy(peer, rows, 20, 31, hv, f->err, sizeof(f->err)), TG_LEDGER_ETAMPER);
    tg_ledger_close(peer);
}

static void test_idempotent(void **state)
{
    struct fx *f = *state;
    struct ref refs[60];
    tg_ledger_row_t rows[60];
    tg_ledger_result_t res[60];
    size_t app;
    uint64_t seq1, seq2;
    unsigned char h1[32], h2[32];
    fx_open(f, NULL);
    for (int i = 0; i < 60; i++) {
        make_row(&refs[i], i, BASE_US + 1000 * i);
        rows[i] = refs[i].row;
    }
    assert_int_equal(tg_ledger_append(f->l, rows, 60, res, &app, f->err, sizeof(f->err)), 0);
    assert_int_equal(app, 60);
    assert_int_equal(tg_ledger_head(f->l, &seq1, h1, f->err, sizeof(f->err)), 0);

    /* The same batch again: nothing new, every row a duplicate of its seq. */
    tg_ledger_result_t res2[60];
    assert_int_equal(tg_ledger_append(f->l, rows, 60, res2, &app, f->err, sizeof(f->err)), 0);
    assert_int_equal(app, 0);
    for (int i = 0; i < 60; i++) {
        assert_int_equal(res2[i].ar_status, TG_LEDGER_ROW_DUPLICATE);
        assert_int_equal(res2[i].ar_seq, res[i].ar_seq);
    }
    assert_int_equal(tg_ledger_head(f->l, &seq2, h2, f->err, sizeof(f->err)), 0);
    assert_int_equal(seq1, seq2);
    assert_memory_equal(h1, h2, 32);
    tg_ledger_filter_t q;
    tg_ledger_filter_init(&q);
    tg_ledger_sum_t sum;
    assert_int_equal(tg_ledger_sum(f->l, &q, &sum, f->err, sizeof(f->err)), 0);
    assert_int_equal(sum.ls_rows, 60);

    /* A batch mixing new rows, a repeat inside the batch, an old row and a
     * conflicting resend (same id, different cost). */
    struct ref extra;
    make_row(&extra, 1000, BASE_US + 5);
    tg_ledger_row_t mix[4] = {extra.row, extra.row, rows[3], rows[4]};
    mix[3].lr_cost_nano += 1;
    tg_ledger_result_t r4[4];
    assert_int_equal(tg_ledger_append(f->l, mix, 4, r4, &app, f->err, sizeof(f->err)), 0);
    assert_int_equal(app, 1);
    assert_int_equal(r4[0].ar_status, TG_LEDGER_ROW_NEW);
    assert_int_equal(r4[0].ar_seq, 61);
    assert_int_equal(r4[1].ar_status, TG_LEDGER_ROW_DUPLICATE);
    assert_int_equal(r4[1].ar_seq, 61);
    assert_int_equal(r4[2].ar_status, TG_LEDGER_ROW_DUPLICATE);
    assert_int_equal(r4[3].ar_status, TG_LEDGER_ROW_CONFLICT);
    assert_int_equal(r4[3].ar_seq, res[4].ar_seq);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
}

static void test_invalid_rows(void **state)
{
    struct fx *f = *state;
    struct ref a, b;
    char longid[200], longf[300];
    fx_open(f, NULL);
    make_row(&a, 1, BASE_US);
    make_row(&b, 2, BASE_US);
    memset(longid, 'x', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    memset(longf, 'y', sizeof(longf) - 1);
    longf[sizeof(longf) - 1] = '\0';
    tg_ledger_row_t bad[6];
    for (int i = 0; i < 6; i++)
        bad[i] = b.row;
    bad[0].lr_record_id = "";
    bad[1].lr_record_id = longid;
    bad[2].lr_model = longf;
    bad[3].lr_kind = (tg_ledger_kind_t)7;
    bad[4].lr_output_tokens = -1;
    bad[5].lr_record_len = TG_LEDGER_RECORD_MAX + 1;
    for (int i = 0; i < 6; i++) {
        tg_ledger_row_t batch[2] = {a.row, bad[i]};
        f->err[0] = '\0';
        assert_int_equal(tg_ledger_append(f->l, batch, 2, NULL, NULL, f->err, sizeof(f->err)),
                         TG_LEDGER_EINVAL);
        assert_non_null(strstr(f->err, "row 1"));
    }
    /* All or nothing: the good row of each rejected batch is not stored. */
    tg_ledger_stat_t st;
    assert_int_equal(tg_ledger_stat(f->l, &st, f->err, sizeof(f->err)), 0);
    assert_int_equal(st.ls_rows, 0);
    assert_string_equal(tg_ledger_strerror(TG_LEDGER_EINVAL), "invalid argument");
}

#define NREF 2500

static void test_filters_against_reference(void **state)
{
    struct fx *f = *state;
    struct ref *refs = calloc(NREF, sizeof(*refs));
    struct ref **exp = calloc(NREF, sizeof(*exp));
    uint64_t *got = calloc(NREF + 1, sizeof(*got));
    rng = 0x1234567887654321ULL;
    fx_open(f, NULL);
    /* Times collide often and are not in seq order. */
    for (int i = 0; i < NREF; i++)
        make_row(&refs[i], i, BASE_US + 1000LL * rnd_below(700));
    append_all(f, refs, NREF);

    int combos = 0, nonempty = 0;
    for (int mask = 0; mask < 512; mask++) {
        for (int rep = 0; rep < 2; rep++) {
            tg_ledger_filter_t q;
            tg_ledger_filter_init(&q);
            const tg_ledger_row_t *s = &refs[rnd_below(NREF)].row;
            int random_values = rep == 1;
#define PICK(arr, fallback) (random_values ? arr[rnd_below(N_OF(arr))] : (fallback))
            if (mask & 1)
                q.lf_account_id = PICK(ACCOUNTS, s->lr_account_id);
            if (mask & 2)
                q.lf_project_id = PICK(PROJECTS, s->lr_project_id);
            if (mask & 4)
                q.lf_key_id = PICK(KEYS, s->lr_key_id);
            if (mask & 8)
                q.lf_run_id = random_values ? "run-nope" : s->lr_run_id;
            if (mask & 16)
                q.lf_model = PICK(MODELS, s->lr_model);
            if (mask & 32)
                q.lf_channel_id = PICK(CHANNELS, s->lr_channel_id);
            if (mask & 64)
                q.lf_route_type = PICK(ROUTES, s->lr_route_type);
            if (mask & 128) {
                q.lf_from_us = s->lr_settled_us - 1000LL * rnd_below(200);
                q.lf_to_us = rnd_below(4) ? s->lr_settled_us + 1000LL * rnd_below(200) + 1 : 0;
            }
            if (mask & 256)
                q.lf_kind = 1 + rnd_below(3);
#undef PICK
            int m = ref_query(refs, NREF, &q, exp);
            size_t limit = 1 + (size_t)rnd_below(60);
            struct seen sn = {.seqs = got, .cap = NREF + 1, .refs = refs, .nrefs = 0};
            page_all(f, &q, limit, &sn);
            assert_int_equal(sn.n, m);
            for (int i = 0; i < m; i++)
                assert_int_equal(got[i], exp[i]->seq);

            /* Sums equal the reference to the nano-unit. */
            tg_ledger_sum_t sum;
            int64_t c = 0, uc = 0, in = 0, out = 0;
            for (int i = 0; i < m; i++) {
                c += exp[i]->row.lr_cost_nano;
                uc += exp[i]->row.lr_upstream_cost_nano;
                in += exp[i]->row.lr_input_tokens;
                out += exp[i]->row.lr_output_tokens;
            }
            assert_int_equal(tg_ledger_sum(f->l, &q, &sum, f->err, sizeof(f->err)), 0);
            assert_int_equal(sum.ls_rows, m);
            assert_int_equal(sum.ls_cost_nano, c);
            assert_int_equal(sum.ls_upstream_cost_nano, uc);
            assert_int_equal(sum.ls_input_tokens, in);
            assert_int_equal(sum.ls_output_tokens, out);
            combos++;
            nonempty += m > 0;
        }
    }
    /* The data set must exercise real results, not only empty ones. */
    assert_true(nonempty > combos / 2);

    /* Decoded rows carry what was appended (spot-check one full page). */
    tg_ledger_filter_t all;
    tg_ledger_filter_init(&all);
    char next[TG_LEDGER_CURSOR_LEN];
    struct seen sn = {.seqs = got, .cap = NREF + 1, .refs = refs, .nrefs = NREF};
    assert_int_equal(tg_ledger_query(f->l, &all, NULL, 200, seen_cb, &sn, next, NULL, f->err,
                                     sizeof(f->err)),
                     0);
    assert_int_equal(sn.n, 200);
    assert_int_equal(sn.bad, 0);
    assert_true(next[0] != '\0');
    /* A cursor this ledger did not make is refused. */
    assert_int_equal(tg_ledger_query(f->l, &all, "garbage", 10, seen_cb, &sn, next, NULL, f->err,
                                     sizeof(f->err)),
                     TG_LEDGER_EINVAL);
    free(refs);
    free(exp);
    free(got);
}

static void test_pagination_concurrent_appends(void **state)
{
    struct fx *f = *state;
    enum { N0 = 800, NADD = 400 };
    struct ref *refs = calloc(N0 + NADD, sizeof(*refs));
    uint64_t *got = calloc(N0 + NADD + 1, sizeof(*got));
    rng = 42;
    fx_open(f, NULL);
    for (int i = 0; i < N0 + NADD; i++)
        make_row(&refs[i], i, BASE_US + 1000LL * rnd_below(300));
    append_all(f, refs, N0);

    tg_ledger_filter_t q;
    tg_ledger_filter_init(&q);
    q.lf_account_id = "acct-b";
    struct seen sn = {.seqs = got, .cap = N0 + NADD + 1};
    char cur[TG_LEDGER_CURSOR_LEN] = "", next[TG_LEDGER_CURSOR_LEN];
    int added = 0;
    for (int pages = 0; pages < 10000; pages++) {
        assert_int_equal(tg_ledger_query(f->l, &q, cur, 13, seen_cb, &sn, next, NULL, f->err,
                                         sizeof(f->err)),
                         0);
        if (!next[0])
            break;
        /* Appends between pages, with settled times before and after the
         * rows already seen. */
        if (added < NADD) {
            int b = NADD - added < 25 ? NADD - added : 25;
            append_all(f, refs + N0 + added, b);
            added += b;
        }
        memcpy(cur, next, sizeof(cur));
    }
    assert_int_equal(added, NADD);
    /* Every match, original or appended during the walk (they come after
     * the cursor in ledger order), exactly once; no row twice. */
    for (int i = 0; i < N0 + NADD; i++) {
        if (strcmp(refs[i].row.lr_account_id, "acct-b") != 0)
            continue;
        int times = 0;
        for (int k = 0; k < sn.n; k++)
            times += got[k] == refs[i].seq;
        assert_int_equal(times, 1);
    }
    for (int a = 0; a < sn.n; a++)
        for (int b = a + 1; b < sn.n; b++)
            assert_true(got[a] != got[b]);
    free(refs);
    free(got);
}

static int stop_after_5(const tg_ledger_row_t *r, void *arg)
{
    (void)r;
    return ++*(int *)arg >= 5;
}

static void test_export(void **state)
{
    struct fx *f = *state;
    enum { N = 1500 };
    struct ref *refs = calloc(N, sizeof(*refs));
    struct ref **exp = calloc(N, sizeof(*exp));
    uint64_t *got = calloc(N + 1, sizeof(*got));
    rng = 7;
    fx_open(f, NULL);
    for (int i = 0; i < N; i++)
        make_row(&refs[i], i, BASE_US + 1000LL * rnd_below(400));
    append_all(f, refs, N);
    tg_ledger_filter_t q;
    tg_ledger_filter_init(&q);
    q.lf_key_id = "key-03";
    int m = ref_query(refs, N, &q, exp);
    struct seen sn = {.seqs = got, .cap = N + 1};
    size_t rows = 0;
    assert_int_equal(tg_ledger_export(f->l, &q, 17, seen_cb, &sn, &rows, f->err, sizeof(f->err)), 0);
    assert_int_equal(rows, m);
    assert_int_equal(sn.n, m);
    for (int i = 0; i < m; i++)
        assert_int_equal(got[i], exp[i]->seq);
    int count = 0;
    assert_int_equal(tg_ledger_export(f->l, &q, 0, stop_after_5, &count, &rows, f->err, sizeof(f->err)), 0);
    assert_int_equal(count, 5);
    assert_int_equal(rows, 5);
    free(refs);
    free(exp);
    free(got);
}

static void test_retention(void **state)
{
    struct fx *f = *state;
    enum { N = 600 };
    struct ref *refs = calloc(N, sizeof(*refs));
    struct ref **exp = calloc(N, sizeof(*exp));
    uint64_t *got = calloc(N + 1, sizeof(*got));
    rng = 99;
    fx_open(f, NULL);
    /* Settled times rise with seq, as the settler assigns them. */
    for (int i = 0; i < N; i++)
        make_row(&refs[i], i, BASE_US + 1000LL * i);
    append_all(f, refs, N);
    int64_t cut = BASE_US + 1000LL * 250;
    uint64_t deleted = 0;
    assert_int_equal(tg_ledger_retain(f->l, cut, 7, &deleted, f->err, sizeof(f->err)), 0);
    assert_int_equal(deleted, 250);
    for (int i = 0; i < 250; i++)
        refs[i].dead = 1;

    tg_ledger_stat_t st;
    assert_int_equal(tg_ledger_stat(f->l, &st, f->err, sizeof(f->err)), 0);
    assert_int_equal(st.ls_rows, N - 250);
    assert_int_equal(st.ls_first_seq, 251);
    /* The horizon is the newest deleted row's time + 1, not the cut. */
    assert_int_equal(st.ls_horizon_us, BASE_US + 1000LL * 249 + 1);
    if (tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)) != 0)
        fail_msg("verify after retention: %s", f->err);

    /* Index entries went with the rows: every filter still equals the
     * reference (a dangling entry would fail the query as corrupt). */
    for (int k = 0; k < N_OF(KEYS); k++) {
        tg_ledger_filter_t q;
        tg_ledger_filter_init(&q);
        q.lf_key_id = KEYS[k];
        int m = ref_query(refs, N, &q, exp);
        struct seen sn = {.seqs = got, .cap = N + 1};
        page_all(f, &q, 50, &sn);
        assert_int_equal(sn.n, m);
        for (int i = 0; i < m; i++)
            assert_int_equal(got[i], exp[i]->seq);
    }
    /* Time ranges: whole buckets are skipped by their time range. */
    for (int t = 0; t < 40; t++) {
        tg_ledger_filter_t q;
        tg_ledger_filter_init(&q);
        q.lf_from_us = BASE_US + 1000LL * rnd_below(N);
        q.lf_to_us = t % 4 ? q.lf_from_us + 1000LL * rnd_below(120) + 1 : 0;
        if (t % 2)
            q.lf_model = MODELS[t % N_OF(MODELS)];
        int m = ref_query(refs, N, &q, exp);
        struct seen sn = {.seqs = got, .cap = N + 1};
        page_all(f, &q, 1 + (size_t)rnd_below(40), &sn);
        assert_int_equal(sn.n, m);
        for (int i = 0; i < m; i++)
            assert_int_equal(got[i], exp[i]->seq);
    }
    int found = 1;
    struct seen sn = {.seqs = got, .cap = N + 1};
    assert_int_equal(tg_ledger_get(f->l, "rec-000010", seen_cb, &sn, &found, f->err, sizeof(f->err)), 0);
    assert_int_equal(found, 0);

    /* Resending a deleted row: expired, not appended again. A kept row:
     * still a duplicate. A new row: appended and chained to the rest. */
    struct ref fresh;
    make_row(&fresh, 5000, BASE_US + 1000LL * N);
    tg_ledger_row_t batch[3] = {refs[10].row, refs[300].row, fresh.row};
    tg_ledger_result_t res[3];
    size_t app;
    assert_int_equal(tg_ledger_append(f->l, batch, 3, res, &app, f->err, sizeof(f->err)), 0);
    assert_int_equal(app, 1);
    assert_int_equal(res[0].ar_status, TG_LEDGER_ROW_EXPIRED);
    assert_int_equal(res[1].ar_status, TG_LEDGER_ROW_DUPLICATE);
    assert_int_equal(res[2].ar_status, TG_LEDGER_ROW_NEW);
    assert_int_equal(res[2].ar_seq, N + 1);
    fx_reopen(f, NULL);
    if (tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)) != 0)
        fail_msg("verify after retention and append: %s", f->err);

    /* Deleting everything (a cut far in the future) leaves an empty, still
     * consistent ledger whose head is the anchor, and still takes rows
     * settled after the newest deleted one. */
    assert_int_equal(tg_ledger_retain(f->l, INT64_MAX, 0, &deleted, f->err, sizeof(f->err)), 0);
    assert_int_equal(deleted, N - 250 + 1);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
    uint64_t hs;
    unsigned char hh[32];
    assert_int_equal(tg_ledger_head(f->l, &hs, hh, f->err, sizeof(f->err)), 0);
    assert_int_equal(hs, N + 1);
    struct ref later;
    make_row(&later, 6000, BASE_US + 1000LL * (N + 5));
    assert_int_equal(tg_ledger_append(f->l, &later.row, 1, res, &app, f->err, sizeof(f->err)), 0);
    assert_int_equal(res[0].ar_status, TG_LEDGER_ROW_NEW);
    assert_int_equal(res[0].ar_seq, N + 2);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
    free(refs);
    free(exp);
    free(got);
}

/* Opens the file with plain LMDB, as an attacker with file access would. */
static void raw_edit(const char *path, uint64_t seq, int del, int byte_at)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi rows;
    unsigned char k8[8];
    for (int i = 0; i < 8; i++)
        k8[i] = (unsigned char)(seq >> (56 - 8 * i));
    MDB_val k = {8, k8}, v;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
    assert_int_equal(mdb_env_open(env, path, MDB_NOSUBDIR, 0644), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "rows", 0, &rows), 0);
    if (del) {
        assert_int_equal(mdb_del(txn, rows, &k, NULL), 0);
    } else {
        assert_int_equal(mdb_get(txn, rows, &k, &v), 0);
        unsigned char *copy = malloc(v.mv_size);
        memcpy(copy, v.mv_data, v.mv_size);
        copy[byte_at] ^= 0x01;
        MDB_val nv = {v.mv_size, copy};
        assert_int_equal(mdb_put(txn, rows, &k, &nv, 0), 0);
        free(copy);
    }
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static void test_tamper_detected(void **state)
{
    struct fx *f = *state;
    struct ref refs[100];
    rng = 5;
    fx_open(f, NULL);
    for (int i = 0; i < 100; i++)
        make_row(&refs[i], i, BASE_US + 1000LL * i);
    append_all(f, refs, 100);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
    tg_ledger_close(f->l);
    f->l = NULL;

    /* Flip one bit of row 17's cost (canonical bytes start after the hash:
     * version, kind, settled, request, then cost at offset 32+2+16). */
    raw_edit(f->path, 17, 0, 32 + 2 + 16 + 7);
    fx_open(f, NULL);
    uint64_t bad = 0;
    f->err[0] = '\0';
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, &bad, f->err, sizeof(f->err)), TG_LEDGER_ETAMPER);
    assert_int_equal(bad, 17);
    assert_non_null(strstr(f->err, "row 17"));
    assert_non_null(strstr(f->err, "rec-000016"));
    /* The rows before it still verify on their own. */
    assert_int_equal(tg_ledger_verify(f->l, 1, 16, NULL, f->err, sizeof(f->err)), 0);
    tg_ledger_close(f->l);
    f->l = NULL;

    /* Put the bit back, then remove row 60 outright. */
    raw_edit(f->path, 17, 0, 32 + 2 + 16 + 7);
    fx_open(f, NULL);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
    tg_ledger_close(f->l);
    f->l = NULL;
    raw_edit(f->path, 60, 1, 0);
    fx_open(f, NULL);
    f->err[0] = '\0';
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, &bad, f->err, sizeof(f->err)), TG_LEDGER_ETAMPER);
    assert_int_equal(bad, 60);
    assert_non_null(strstr(f->err, "missing"));
    /* An index still points at the removed row: a query through it says
     * so instead of skipping it silently. */
    tg_ledger_filter_t q;
    tg_ledger_filter_init(&q);
    q.lf_key_id = refs[59].row.lr_key_id;
    char next[TG_LEDGER_CURSOR_LEN];
    size_t n = 0;
    f->err[0] = '\0';
    assert_int_equal(tg_ledger_query(f->l, &q, NULL, 1000, count_rows, &n, next, NULL, f->err,
                                     sizeof(f->err)),
                     TG_LEDGER_ECORRUPT);
    assert_non_null(strstr(f->err, "row 60"));
    tg_ledger_close(f->l);
    f->l = NULL;

    /* A row whose bytes no longer decode (the record id's length byte, 10,
     * becomes 11 and swallows its NUL): verify names it, a scan fails
     * cleanly. */
    raw_edit(f->path, 30, 0, 32 + 2 + 56);
    fx_open(f, NULL);
    assert_int_equal(tg_ledger_verify(f->l, 1, 59, &bad, f->err, sizeof(f->err)), TG_LEDGER_ETAMPER);
    assert_int_equal(bad, 30);
    tg_ledger_filter_init(&q);
    f->err[0] = '\0';
    assert_int_equal(tg_ledger_query(f->l, &q, NULL, 1000, count_rows, &n, next, NULL, f->err,
                                     sizeof(f->err)),
                     TG_LEDGER_ECORRUPT);
    assert_non_null(strstr(f->err, "row 30"));
}

static void test_tamper_hash_rewritten(void **state)
{
    struct fx *f = *state;
    struct ref refs[30];
    rng = 6;
    fx_open(f, NULL);
    for (int i = 0; i < 30; i++)
        make_row(&refs[i], i, BASE_US + 1000LL * i);
    append_all(f, refs, 30);
    tg_ledger_close(f->l);
    f->l = NULL;
    /* Change a byte of row 10's stored hash only: row 10 no longer matches
     * its contents. */
    raw_edit(f->path, 10, 0, 3);
    fx_open(f, NULL);
    uint64_t bad = 0;
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, &bad, f->err, sizeof(f->err)), TG_LEDGER_ETAMPER);
    assert_int_equal(bad, 10);
    /* Verifying from row 11 links to row 10's (tampered) stored hash:
     * row 11 breaks. */
    assert_int_equal(tg_ledger_verify(f->l, 11, 0, &bad, f->err, sizeof(f->err)), TG_LEDGER_ETAMPER);
    assert_int_equal(bad, 11);
}

static void test_map_growth_and_full(void **state)
{
    struct fx *f = *state;
    static unsigned char big[2048];
    char ids[400][32];
    tg_ledger_opts_t o = {.lo_map_size = 1 << 20, .lo_map_max = 4 << 20};
    fx_open(f, &o);
    memset(big, 0xAB, sizeof(big));
    int batches = 0, rc = 0;
    uint64_t rows_before = 0;
    for (batches = 0; batches < 200; batches++) {
        tg_ledger_row_t rows[100];
        for (int i = 0; i < 100; i++) {
            snprintf(ids[i], sizeof(ids[i]), "big-%d-%d", batches, i);
            rows[i] = (tg_ledger_row_t){.lr_kind = TG_LEDGER_USAGE,
                                        .lr_record_id = ids[i],
                                        .lr_settled_us = BASE_US + batches,
                                        .lr_account_id = "acct",
                                        .lr_key_id = "k",
                                        .lr_record = big,
                                        .lr_record_len = sizeof(big)};
        }
        tg_ledger_stat_t st;
        assert_int_equal(tg_ledger_stat(f->l, &st, f->err, sizeof(f->err)), 0);
        rows_before = st.ls_rows;
        f->err[0] = '\0';
        rc = tg_ledger_append(f->l, rows, 100, NULL, NULL, f->err, sizeof(f->err));
        if (rc)
            break;
    }
    assert_int_equal(rc, TG_LEDGER_EFULL);
    assert_non_null(strstr(f->err, "maximum map size"));
    assert_true(batches > 4); /* it grew past the initial 1 MiB first */
    tg_ledger_stat_t st;
    assert_int_equal(tg_ledger_stat(f->l, &st, f->err, sizeof(f->err)), 0);
    assert_int_equal(st.ls_map_size, 4 << 20);
    assert_int_equal(st.ls_rows, rows_before); /* nothing of the failed batch */
    assert_int_equal(st.ls_head_seq, rows_before);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
    /* Still usable: a small append fits after retention frees pages. */
    uint64_t deleted;
    assert_int_equal(tg_ledger_retain(f->l, BASE_US + 3, 50, &deleted, f->err, sizeof(f->err)), 0);
    assert_int_equal(deleted, 300);
    tg_ledger_row_t one = {.lr_kind = TG_LEDGER_TOPUP, .lr_record_id = "after", .lr_settled_us = BASE_US + 1000};
    if (tg_ledger_append(f->l, &one, 1, NULL, NULL, f->err, sizeof(f->err)) != 0)
        fail_msg("append after retention: %s", f->err);
    fx_reopen(f, &o);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    if (n)
        assert_int_equal(fwrite(p, 1, n, fp), n);
    fclose(fp);
}

static void expect_open_fails(struct fx *f, const char *path, int code, const char *needle)
{
    tg_ledger_t *l = NULL;
    f->err[0] = '\0';
    int rc = tg_ledger_open(path, NULL, &l, f->err, sizeof(f->err));
    if (rc != code)
        fail_msg("open %s: expected %d, got %d (%s)", path, code, rc, f->err);
    assert_null(l);
    if (needle && !strstr(f->err, needle))
        fail_msg("message \"%s\" lacks \"%s\"", f->err, needle);
}

static void test_corrupt_files(void **state)
{
    struct fx *f = *state;
    char other[700];
    snprintf(other, sizeof(other), "%s/other.mdb", f->dir);

    /* Empty file: LMDB would start afresh; the ledger refuses. */
    write_file(f->path, "", 0);
    expect_open_fails(f, f->path, TG_LEDGER_ECORRUPT, "empty");

    /* Garbage. */
    unsigned char junk[16384];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (unsigned char)rnd();
    write_file(f->path, junk, sizeof(junk));
    expect_open_fails(f, f->path, TG_LEDGER_ECORRUPT, "not an LMDB file");

    /* A real ledger cut in half. */
    unlink(f->path);
    struct ref refs[400];
    rng = 11;
    fx_open(f, NULL);
    for (int i = 0; i < 400; i++)
        make_row(&refs[i], i, BASE_US + i);
    append_all(f, refs, 400);
    tg_ledger_close(f->l);
    f->l = NULL;
    FILE *fp = fopen(f->path, "rb");
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fclose(fp);
    assert_true(size > 65536);
    assert_int_equal(truncate(f->path, size / 2), 0);
    expect_open_fails(f, f->path, TG_LEDGER_ECORRUPT, "truncated");

    /* A healthy LMDB file that is not a ledger. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_open(env, other, MDB_NOSUBDIR, 0644), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    MDB_val k = {3, "foo"}, v = {3, "bar"};
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    expect_open_fails(f, other, TG_LEDGER_ECORRUPT, "not a Tollgate ledger");

    /* A directory, and a path that cannot be created. */
    expect_open_fails(f, f->dir, TG_LEDGER_EINVAL, "not a regular file");
    expect_open_fails(f, "/nonexistent-dir/x/ledger.mdb", TG_LEDGER_EIO, "No such file");
}

static void test_disk_full(void **state)
{
    struct fx *f = *state;
    struct ref refs[300];
    rng = 12;
    fx_open(f, NULL);
    for (int i = 0; i < 300; i++)
        make_row(&refs[i], i, BASE_US + i);
    append_all(f, refs, 100);
    tg_ledger_stat_t st0;
    assert_int_equal(tg_ledger_stat(f->l, &st0, f->err, sizeof(f->err)), 0);

    /* The file may not grow: writes past its end fail as on a full disk. */
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)st0.ls_map_used;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    tg_ledger_row_t rows[200];
    for (int i = 0; i < 200; i++)
        rows[i] = refs[100 + i].row;
    f->err[0] = '\0';
    int rc = tg_ledger_append(f->l, rows, 200, NULL, NULL, f->err, sizeof(f->err));
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    if (rc != TG_LEDGER_EIO)
        fail_msg("expected EIO, got %d (%s)", rc, f->err);
    assert_true(strlen(f->err) > 0);

    /* Nothing of the batch is visible, and after space returns (reopen,
     * as an operator would after freeing disk) it appends and verifies. */
    fx_reopen(f, NULL);
    tg_ledger_stat_t st;
    assert_int_equal(tg_ledger_stat(f->l, &st, f->err, sizeof(f->err)), 0);
    assert_int_equal(st.ls_rows, 100);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
    size_t app;
    if (tg_ledger_append(f->l, rows, 200, NULL, &app, f->err, sizeof(f->err)) != 0)
        fail_msg("append after disk full: %s", f->err);
    assert_int_equal(app, 200);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
}

static void test_sum_overflow(void **state)
{
    struct fx *f = *state;
    fx_open(f, NULL);
    tg_ledger_row_t rows[2] = {
        {.lr_kind = TG_LEDGER_TOPUP, .lr_record_id = "t1", .lr_cost_nano = INT64_MAX},
        {.lr_kind = TG_LEDGER_TOPUP, .lr_record_id = "t2", .lr_cost_nano = 1}};
    assert_int_equal(tg_ledger_append(f->l, rows, 2, NULL, NULL, f->err, sizeof(f->err)), 0);
    tg_ledger_filter_t q;
    tg_ledger_filter_init(&q);
    tg_ledger_sum_t s;
    assert_int_equal(tg_ledger_sum(f->l, &q, &s, f->err, sizeof(f->err)), TG_LEDGER_EOVERFLOW);
    q.lf_kind = TG_LEDGER_USAGE;
    assert_int_equal(tg_ledger_sum(f->l, &q, &s, f->err, sizeof(f->err)), 0);
    assert_int_equal(s.ls_rows, 0);
}

/* One batch of 1000 rows sharing a model: the index holds it as several
 * posting lists; pages and retention cut through the middle of lists. */
static void test_long_lists(void **state)
{
    struct fx *f = *state;
    enum { N = 1000, CUT = 333 };
    struct ref *refs = calloc(N, sizeof(*refs));
    tg_ledger_row_t *rows = calloc(N, sizeof(*rows));
    uint64_t *got = calloc(N + 1, sizeof(*got));
    const tg_ledger_opts_t defaults = {0};
    rng = 31;
    fx_open(f, &defaults);
    for (int i = 0; i < N; i++) {
        make_row(&refs[i], i, BASE_US + i);
        refs[i].row.lr_model = "gpt-4o";
        rows[i] = refs[i].row;
    }
    size_t app;
    assert_int_equal(tg_ledger_append(f->l, rows, N, NULL, &app, f->err, sizeof(f->err)), 0);
    assert_int_equal(app, N);
    tg_ledger_filter_t q;
    tg_ledger_filter_init(&q);
    q.lf_model = "gpt-4o";
    struct seen sn = {.seqs = got, .cap = N + 1};
    page_all(f, &q, 7, &sn);
    assert_int_equal(sn.n, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(got[i], (uint64_t)i + 1);
    uint64_t deleted;
    assert_int_equal(tg_ledger_retain(f->l, BASE_US + CUT, 50, &deleted, f->err, sizeof(f->err)), 0);
    assert_int_equal(deleted, CUT);
    struct seen s2 = {.seqs = got, .cap = N + 1};
    page_all(f, &q, 64, &s2);
    assert_int_equal(s2.n, N - CUT);
    for (int i = 0; i < N - CUT; i++)
        assert_int_equal(got[i], (uint64_t)(CUT + i + 1));
    tg_ledger_sum_t sum;
    int64_t cost = 0;
    for (int i = CUT; i < N; i++)
        cost += refs[i].row.lr_cost_nano;
    assert_int_equal(tg_ledger_sum(f->l, &q, &sum, f->err, sizeof(f->err)), 0);
    assert_int_equal(sum.ls_rows, N - CUT);
    assert_int_equal(sum.ls_cost_nano, cost);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
    free(refs);
    free(rows);
    free(got);
}

/* Threads: two appenders fill a small map that must grow several times
 * while two readers page through queries and exports. Every row lands
 * once, readers never fail, and the chain verifies. */
struct mt {
    tg_ledger_t *l;
    int id;
    int failures;
    atomic_int *stop;
    char err[TG_ERRLEN];
};

static void *mt_append(void *arg)
{
    struct mt *m = arg;
    static unsigned char rec[512];
    char ids[50][32];
    for (int b = 0; b < 40; b++) {
        tg_ledger_row_t rows[50];
        for (int i = 0; i < 50; i++) {
            snprintf(ids[i], sizeof(ids[i]), "t%d-%d-%d", m->id, b, i);
            rows[i] = (tg_ledger_row_t){.lr_kind = TG_LEDGER_USAGE,
                                        .lr_record_id = ids[i],
                                        .lr_settled_us = BASE_US + b,
                                        .lr_account_id = m->id ? "acct-1" : "acct-0",
                                        .lr_key_id = "k",
                                        .lr_cost_nano = 1,
                                        .lr_record = rec,
                                        .lr_record_len = sizeof(rec)};
        }
        size_t app = 0;
        m->err[0] = '\0';
        if (tg_ledger_append(m->l, rows, 50, NULL, &app, m->err, sizeof(m->err)) != 0 || app != 50)
            m->failures++;
    }
    return NULL;
}

static int count_rows(const tg_ledger_row_t *r, void *arg)
{
    (void)r;
    ++*(size_t *)arg;
    return 0;
}

static void *mt_read(void *arg)
{
    struct mt *m = arg;
    while (!atomic_load(m->stop)) {
        tg_ledger_filter_t q;
        tg_ledger_filter_init(&q);
        q.lf_account_id = m->id ? "acct-1" : NULL;
        size_t n = 0, rows = 0;
        tg_ledger_sum_t s;
        if (tg_ledger_export(m->l, &q, 64, count_rows, &n, &rows, m->err, sizeof(m->err)) != 0 ||
            tg_ledger_sum(m->l, &q, &s, m->err, sizeof(m->err)) != 0 || s.ls_cost_nano != (int64_t)s.ls_rows)
            m->failures++;
    }
    return NULL;
}

static void test_threads_and_map_growth(void **state)
{
    struct fx *f = *state;
    tg_ledger_opts_t o = {.lo_map_size = 1 << 20, .lo_map_max = 256 << 20, .lo_bucket_shift = 6};
    fx_open(f, &o);
    atomic_int stop = 0;
    struct mt m[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        m[i] = (struct mt){.l = f->l, .id = i % 2, .stop = &stop};
        assert_int_equal(pthread_create(&th[i], NULL, i < 2 ? mt_append : mt_read, &m[i]), 0);
    }
    pthread_join(th[0], NULL);
    pthread_join(th[1], NULL);
    atomic_store(&stop, 1);
    pthread_join(th[2], NULL);
    pthread_join(th[3], NULL);
    for (int i = 0; i < 4; i++)
        if (m[i].failures)
            fail_msg("thread %d: %d failures, last: %s", i, m[i].failures, m[i].err);
    tg_ledger_stat_t st;
    assert_int_equal(tg_ledger_stat(f->l, &st, f->err, sizeof(f->err)), 0);
    assert_int_equal(st.ls_rows, 4000);
    assert_true(st.ls_map_size > (1 << 20)); /* it grew under the readers */
    tg_ledger_filter_t q;
    tg_ledger_filter_init(&q);
    q.lf_account_id = "acct-1";
    tg_ledger_sum_t s;
    assert_int_equal(tg_ledger_sum(f->l, &q, &s, f->err, sizeof(f->err)), 0);
    assert_int_equal(s.ls_rows, 2000);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
}

/* Allocation failures inside append: a clean ENOMEM, nothing stored, no
 * leak, and the same batch succeeds afterwards. */
static void test_append_alloc_failures(void **state)
{
    struct fx *f = *state;
    struct ref refs[40];
    tg_ledger_row_t rows[40];
    rng = 77;
    fx_open(f, NULL);
    for (int i = 0; i < 40; i++) {
        make_row(&refs[i], i, BASE_US + i);
        rows[i] = refs[i].row;
    }
    /* Two rows already stored so the duplicate path allocates too. */
    assert_int_equal(tg_ledger_append(f->l, rows, 2, NULL, NULL, f->err, sizeof(f->err)), 0);
    long base = tg_alloc_live();
    int ok = 0;
    for (long n = 0; n < 20 && !ok; n++) {
        size_t app = 99;
        f->err[0] = '\0';
        tg_alloc_fail_after(n);
        int rc = tg_ledger_append(f->l, rows, 40, NULL, &app, f->err, sizeof(f->err));
        tg_alloc_fail_after(-1);
        assert_int_equal(tg_alloc_live(), base);
        if (rc == 0) {
            ok = 1;
            assert_int_equal(app, 38);
        } else {
            assert_int_equal(rc, TG_LEDGER_ENOMEM);
            tg_ledger_stat_t st;
            assert_int_equal(tg_ledger_stat(f->l, &st, f->err, sizeof(f->err)), 0);
            assert_int_equal(st.ls_rows, 2);
        }
    }
    assert_true(ok);
    assert_int_equal(tg_ledger_verify(f->l, 0, 0, NULL, f->err, sizeof(f->err)), 0);
}

static void test_alloc_failures(void **state)
{
    struct fx *f = *state;
    long base = tg_alloc_live();
    int ok = 0;
    for (long n = 0; n < 50 && !ok; n++) {
        tg_ledger_t *l = NULL;
        f->err[0] = '\0';
        tg_alloc_fail_after(n);
        int rc = tg_ledger_open(f->path, NULL, &l, f->err, sizeof(f->err));
        tg_alloc_fail_after(-1);
        if (rc == 0) {
            ok = 1;
            tg_ledger_close(l);
        } else {
            assert_int_equal(rc, TG_LEDGER_ENOMEM);
            assert_null(l);
        }
        assert_int_equal(tg_alloc_live(), base);
    }
    assert_true(ok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_append_reopen_head, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_idempotent, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_append_copy, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_invalid_rows, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_filters_against_reference, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pagination_concurrent_appends, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_export, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_retention, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tamper_detected, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tamper_hash_rewritten, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_map_growth_and_full, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_files, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_disk_full, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_sum_overflow, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_long_lists, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_threads_and_map_growth, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_append_alloc_failures, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_alloc_failures, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
