/* The tg_store conformance suite: one set of cmocka tests that every backend
 * must pass, run once per backend (argv[1] = "lmdb" or "etcd"; Bazel runs
 * both, see BUILD). For etcd it starts a real etcd on loopback ports in a
 * temp dir. After the shared tests come each backend's own: for LMDB map
 * growth and the full-map error, corrupt and truncated files, durability
 * across reopen and a SIGKILLed writer, the one-process lock; for etcd an
 * unreachable endpoint, failover from a dead endpoint, and a watcher that
 * survives etcd being SIGKILLed and restarted without missing or repeating
 * an event. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "base/tg_base.h"
#include "rpc/tg_rpc.h"
#include "store/store.h"
#include "store/tests/etcd_harness.h"

static int g_etcd;         /* backend under test is etcd */
static etcd_proc_t g_proc; /* the etcd for the whole run */
static char g_dir[512];    /* lmdb: this test's store dir */
static tg_store_t *g_s;    /* this test's store */
static long g_live;        /* tg_alloc_live() before the test */
static char g_pfx[64];     /* this test's key prefix (etcd is shared) */
static int g_seq;

/* ---- helpers ------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* key = prefix + name, into buf; returns its length */
static size_t K(char *buf, const char *name)
{
    return (size_t)snprintf(buf, 256, "%s%s", g_pfx, name);
}

static tg_store_t *open_store(const tg_store_opts_t *o)
{
    char spec[700], err[TG_ERRLEN] = "";
    tg_store_t *s = NULL;
    tg_store_opts_t def;
    memset(&def, 0, sizeof(def));
    if (!o)
        o = &def;
    if (g_etcd)
        snprintf(spec, sizeof(spec), "etcd:%s", g_proc.ep_url);
    else
        snprintf(spec, sizeof(spec), "lmdb:%s/db", g_dir);
    int rc = tg_store_open(&s, spec, o, err, sizeof(err));
    if (rc)
        fail_msg("open %s: %s (%s)", spec, err, tg_store_strerror(rc));
    return s;
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_pfx, sizeof(g_pfx), "t%d-%ld/", ++g_seq, (long)getpid());
    g_live = tg_alloc_live();
    if (!g_etcd && harness_tmpdir(g_dir, sizeof(g_dir), "lmdb"))
        return -1;
    g_s = open_store(NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tg_store_close(g_s);
    g_s = NULL;
    if (!g_etcd)
        harness_rmdir(g_dir);
    /* every block the store allocated through tg_malloc is back */
    if (tg_alloc_live() != g_live) {
        fprintf(stderr, "leak: %ld tg_malloc blocks live after the test\n", tg_alloc_live() - g_live);
        return -1;
    }
    return 0;
}

static int64_t put(const char *name, const char *val)
{
    char k[256], err[TG_ERRLEN] = "";
    int64_t rev = 0;
    int rc = tg_store_put(g_s, k, K(k, name), val, strlen(val), 0, &rev, err, sizeof(err));
    if (rc)
        fail_msg("put %s: %s", name, err);
    return rev;
}

static int64_t curr(void)
{
    char err[TG_ERRLEN] = "";
    int64_t r = 0;
    if (tg_store_revision(g_s, &r, err, sizeof(err)))
        fail_msg("revision: %s", err);
    return r;
}

/* Next event within ms, or fail. */
static tg_store_event_t *next_ev(tg_store_watch_t *w, int ms)
{
    tg_store_event_t *ev = NULL;
    char err[TG_ERRLEN] = "";
    int rc = tg_store_watch_next(w, ms, &ev, err, sizeof(err));
    if (rc)
        fail_msg("watch_next: %s (%s)", tg_store_strerror(rc), err);
    return ev;
}

static void expect_ev(tg_store_watch_t *w, int type, const char *name, const char *val, int64_t rev)
{
    char k[256];
    size_t kl = K(k, name);
    tg_store_event_t *ev = next_ev(w, 5000);
    assert_int_equal(ev->ev_type, type);
    assert_int_equal(ev->ev_kv.kv_key_len, kl);
    assert_memory_equal(ev->ev_kv.kv_key, k, kl);
    if (val) {
        assert_int_equal(ev->ev_kv.kv_val_len, strlen(val));
        assert_memory_equal(ev->ev_kv.kv_val, val, strlen(val));
    }
    if (rev)
        assert_int_equal(ev->ev_kv.kv_mod_rev, rev);
    tg_store_event_free(ev);
}

static void expect_no_ev(tg_store_watch_t *w, int ms)
{
    tg_store_event_t *ev = NULL;
    int rc = tg_store_watch_next(w, ms, &ev, NULL, 0);
    if (rc != TG_STORE_EAGAIN)
        fail_msg("expected no event, got rc %d rev %lld", rc, ev ? (long long)ev->ev_kv.kv_mod_rev : 0LL);
}

/* ---- shared tests ------------------------------------------------------------ */

static void test_put_get_versions(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    tg_store_kv_t *kv = NULL;
    int64_t r0 = curr();
    int64_t r1 = put("a", "one");
    assert_true(r1 > r0);
    assert_int_equal(curr(), r1);
    int64_t r2 = put("a", "two");
    assert_int_equal(r2, r1 + 1);
    int64_t rev = 0;
    assert_int_equal(tg_store_get(g_s, k, K(k, "a"), &kv, &rev, err, sizeof(err)), 0);
    assert_non_null(kv);
    assert_int_equal(kv->kv_val_len, 3);
    assert_memory_equal(kv->kv_val, "two", 3);
    assert_int_equal(kv->kv_create_rev, r1);
    assert_int_equal(kv->kv_mod_rev, r2);
    assert_int_equal(kv->kv_version, 2);
    assert_int_equal(kv->kv_lease, 0);
    assert_int_equal(rev, r2);
    tg_store_kv_free(kv);
    /* a missing key: NULL, no error */
    assert_int_equal(tg_store_get(g_s, k, K(k, "missing"), &kv, NULL, err, sizeof(err)), 0);
    assert_null(kv);
    /* an empty value is a value */
    put("empty", "");
    assert_int_equal(tg_store_get(g_s, k, K(k, "empty"), &kv, NULL, err, sizeof(err)), 0);
    assert_non_null(kv);
    assert_int_equal(kv->kv_val_len, 0);
    tg_store_kv_free(kv);
}

static void test_binary_keys_values(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    uint8_t key[300], val[600];
    size_t pl = strlen(g_pfx);
    memcpy(key, g_pfx, pl);
    const uint8_t tail[] = {0x00, 0xff, 'x', 0x00, 0xfe, 0xff};
    memcpy(key + pl, tail, sizeof(tail));
    size_t kl = pl + sizeof(tail);
    for (int i = 0; i < 600; i++)
        val[i] = (uint8_t)(i * 7 + (i >> 8));
    val[0] = 0;
    val[1] = 0xff;
    assert_int_equal(tg_store_put(g_s, key, kl, val, sizeof(val), 0, NULL, err, sizeof(err)), 0);
    /* a key that differs only after the NUL is a different key */
    uint8_t key2[300];
    memcpy(key2, key, kl);
    key2[kl - 1] = 0xfe;
    assert_int_equal(tg_store_put(g_s, key2, kl, "v2", 2, 0, NULL, err, sizeof(err)), 0);
    tg_store_kv_t *kv = NULL;
    assert_int_equal(tg_store_get(g_s, key, kl, &kv, NULL, err, sizeof(err)), 0);
    assert_non_null(kv);
    assert_int_equal(kv->kv_key_len, kl);
    assert_memory_equal(kv->kv_key, key, kl);
    assert_int_equal(kv->kv_val_len, sizeof(val));
    assert_memory_equal(kv->kv_val, val, sizeof(val));
    tg_store_kv_free(kv);
    /* a prefix ending in 0xFF bytes: the range end must skip them */
    uint8_t pfx[300];
    memcpy(pfx, key, pl + 2); /* ... 0x00 0xff */
    tg_store_range_req_t rq = {.rq_key = pfx, .rq_key_len = pl + 2, .rq_prefix = 1};
    tg_store_range_res_t res;
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), 0);
    assert_int_equal(res.rs_n, 2);
    assert_memory_equal(res.rs_kvs[0].kv_key, key2, kl); /* 0xfe < 0xff */
    assert_memory_equal(res.rs_kvs[1].kv_key, key, kl);
    tg_store_range_res_free(&res);
}

static void test_range_pagination(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    for (int i = 0; i < 25; i++) {
        char name[32], v[32];
        snprintf(name, sizeof(name), "p/%02d", i);
        snprintf(v, sizeof(v), "v%d", i);
        put(name, v);
    }
    put("q", "outside"); /* not in the prefix */
    tg_store_range_res_t res;
    uint8_t next[TG_STORE_MAX_KEY + 1];
    size_t nl = K((char *)next, "p/");
    tg_store_range_req_t rq = {.rq_key = next, .rq_key_len = nl, .rq_prefix = 0, .rq_limit = 10};
    uint8_t end[TG_STORE_MAX_KEY];
    char pk[256];
    size_t pkl = K(pk, "p/");
    rq.rq_end_len = tg_store_prefix_end(pk, pkl, end);
    rq.rq_end = end;
    int seen = 0, pages = 0;
    int64_t pinned = 0;
    for (;;) {
        assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), 0);
        if (pages == 0) {
            assert_int_equal(res.rs_count, 25);
            assert_int_equal(res.rs_more, 1);
            pinned = res.rs_revision;
            rq.rq_revision = pinned;
            /* change the range between pages: the pinned pages must not see it */
            int64_t d = 0;
            assert_int_equal(tg_store_delete(g_s, k, K(k, "p/15"), 0, &d, NULL, err, sizeof(err)), 0);
            assert_int_equal(d, 1);
            put("p/20", "changed");
            put("p/99", "new");
        }
        for (size_t i = 0; i < res.rs_n; i++) {
            char want[64], wv[32];
            size_t wl = K(want, "");
            wl += (size_t)snprintf(want + wl, sizeof(want) - wl, "p/%02d", seen);
            snprintf(wv, sizeof(wv), "v%d", seen);
            assert_int_equal(res.rs_kvs[i].kv_key_len, wl);
            assert_memory_equal(res.rs_kvs[i].kv_key, want, wl);
            assert_int_equal(res.rs_kvs[i].kv_val_len, strlen(wv));
            assert_memory_equal(res.rs_kvs[i].kv_val, wv, strlen(wv));
            seen++;
        }
        pages++;
        int more = res.rs_more;
        if (more)
            assert_int_equal(tg_store_range_next(&res, next, &nl), 0);
        tg_store_range_res_free(&res);
        if (!more)
            break;
        rq.rq_key = next;
        rq.rq_key_len = nl;
    }
    assert_int_equal(seen, 25);
    assert_int_equal(pages, 3);
    /* the current view has the changes */
    tg_store_range_req_t now = {.rq_key = pk, .rq_key_len = pkl, .rq_prefix = 1};
    assert_int_equal(tg_store_range(g_s, &now, &res, err, sizeof(err)), 0);
    assert_int_equal(res.rs_n, 25); /* -p/15 +p/99 */
    assert_int_equal(res.rs_count, 25);
    assert_int_equal(res.rs_more, 0);
    assert_memory_equal(res.rs_kvs[19].kv_val, "changed", 7); /* index 19 = p/20 */
    tg_store_range_res_free(&res);
    /* keys only */
    now.rq_keys_only = 1;
    now.rq_limit = 3;
    assert_int_equal(tg_store_range(g_s, &now, &res, err, sizeof(err)), 0);
    assert_int_equal(res.rs_n, 3);
    assert_int_equal(res.rs_kvs[0].kv_val_len, 0);
    assert_true(res.rs_kvs[0].kv_mod_rev > 0);
    tg_store_range_res_free(&res);
}

/* Reading at a pinned revision (what a Sync snapshot does: pin, then page)
 * sees the range as it was, also when every later change fell outside the
 * range (nothing to undo) and when nothing changed at all. */
static void test_range_at_pinned_revision(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    put("cur/a", "1");
    int64_t rev = put("cur/b", "2");
    put("elsewhere", "x"); /* a later change outside the range */
    size_t kl = K(k, "cur/");
    tg_store_range_req_t rq = {.rq_key = k, .rq_key_len = kl, .rq_prefix = 1, .rq_revision = rev};
    tg_store_range_res_t res;
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), 0);
    assert_int_equal(res.rs_n, 2);
    assert_true(res.rs_revision > rev); /* as in etcd: the store's revision, not the one read at */
    assert_true(res.rs_kvs[0].kv_mod_rev < rev);
    assert_int_equal(res.rs_kvs[1].kv_mod_rev, rev);
    assert_int_equal(res.rs_kvs[1].kv_val_len, 1);
    assert_memory_equal(res.rs_kvs[1].kv_val, "2", 1);
    tg_store_range_res_free(&res);
    rq.rq_revision = curr(); /* pinned at the current revision */
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), 0);
    assert_int_equal(res.rs_n, 2);
    tg_store_range_res_free(&res);
}

static void test_delete(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    put("d/1", "a");
    put("d/2", "b");
    put("d/3", "c");
    int64_t r = put("e", "keep");
    int64_t n = -1, rev = 0;
    assert_int_equal(tg_store_delete(g_s, k, K(k, "nothing"), 0, &n, &rev, err, sizeof(err)), 0);
    assert_int_equal(n, 0);
    assert_int_equal(rev, r); /* nothing deleted: the revision does not move */
    assert_int_equal(curr(), r);
    assert_int_equal(tg_store_delete(g_s, k, K(k, "d/2"), 0, &n, &rev, err, sizeof(err)), 0);
    assert_int_equal(n, 1);
    assert_int_equal(rev, r + 1);
    assert_int_equal(tg_store_delete(g_s, k, K(k, "d/"), 1, &n, &rev, err, sizeof(err)), 0);
    assert_int_equal(n, 2);
    assert_int_equal(rev, r + 2); /* a prefix delete is one revision */
    tg_store_kv_t *kv;
    assert_int_equal(tg_store_get(g_s, k, K(k, "e"), &kv, NULL, err, sizeof(err)), 0);
    assert_non_null(kv);
    tg_store_kv_free(kv);
    /* a recreated key starts over at version 1 */
    int64_t r3 = put("d/1", "again");
    assert_int_equal(tg_store_get(g_s, k, K(k, "d/1"), &kv, NULL, err, sizeof(err)), 0);
    assert_int_equal(kv->kv_version, 1);
    assert_int_equal(kv->kv_create_rev, r3);
    tg_store_kv_free(kv);
}

static void test_txn_compares(void **state)
{
    (void)state;
    char k[256], k2[256], err[TG_ERRLEN] = "";
    size_t kl = K(k, "cas"), kl2 = K(k2, "other");
    int64_t r1 = put("cas", "v1");
    tg_store_txn_res_t res;
    struct {
        int target, op;
        int64_t num;
        const char *val;
        int want;
    } cases[] = {
        {TG_STORE_CMP_VALUE, TG_STORE_EQ, 0, "v1", 1},
        {TG_STORE_CMP_VALUE, TG_STORE_NE, 0, "v1", 0},
        {TG_STORE_CMP_VALUE, TG_STORE_LT, 0, "v2", 1},
        {TG_STORE_CMP_VALUE, TG_STORE_GT, 0, "v0", 1},
        {TG_STORE_CMP_VERSION, TG_STORE_EQ, 1, NULL, 1},
        {TG_STORE_CMP_VERSION, TG_STORE_GT, 1, NULL, 0},
        {TG_STORE_CMP_CREATE_REV, TG_STORE_EQ, r1, NULL, 1},
        {TG_STORE_CMP_MOD_REV, TG_STORE_LT, r1 + 1, NULL, 1},
        {TG_STORE_CMP_MOD_REV, TG_STORE_NE, r1, NULL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tg_store_cmp_t c = {.c_key = k,
                            .c_key_len = kl,
                            .c_target = cases[i].target,
                            .c_op = cases[i].op,
                            .c_num = cases[i].num,
                            .c_val = cases[i].val,
                            .c_val_len = cases[i].val ? strlen(cases[i].val) : 0};
        tg_store_op_t get = {.op_type = TG_STORE_OP_GET, .op_key = k, .op_key_len = kl};
        assert_int_equal(tg_store_txn(g_s, &c, 1, &get, 1, NULL, 0, &res, err, sizeof(err)), 0);
        if (res.tx_succeeded != cases[i].want)
            fail_msg("compare case %zu: succeeded=%d, want %d", i, res.tx_succeeded, cases[i].want);
        assert_int_equal(res.tx_n, cases[i].want ? 1 : 0);
        if (cases[i].want) {
            assert_int_equal(res.tx_res[0].or_type, TG_STORE_OP_GET);
            assert_int_equal(res.tx_res[0].or_range.rs_n, 1);
            assert_memory_equal(res.tx_res[0].or_range.rs_kvs[0].kv_val, "v1", 2);
        }
        assert_int_equal(res.tx_revision, r1); /* reads do not move the revision */
        tg_store_txn_res_free(&res);
    }
    /* create-if-absent: version == 0; value compares on a missing key fail */
    tg_store_cmp_t absent = {
        .c_key = k2, .c_key_len = kl2, .c_target = TG_STORE_CMP_VERSION, .c_op = TG_STORE_EQ, .c_num = 0};
    tg_store_op_t put1 = {
        .op_type = TG_STORE_OP_PUT, .op_key = k2, .op_key_len = kl2, .op_val = "x", .op_val_len = 1};
    tg_store_op_t put2 = {
        .op_type = TG_STORE_OP_PUT, .op_key = k, .op_key_len = kl, .op_val = "v2", .op_val_len = 2};
    tg_store_op_t del = {.op_type = TG_STORE_OP_DELETE, .op_key = k, .op_key_len = kl};
    tg_store_op_t succ[] = {put1, put2};
    assert_int_equal(tg_store_txn(g_s, &absent, 1, succ, 2, &del, 1, &res, err, sizeof(err)), 0);
    assert_int_equal(res.tx_succeeded, 1);
    assert_int_equal(res.tx_revision, r1 + 1); /* two puts, one revision */
    assert_int_equal(res.tx_n, 2);
    tg_store_txn_res_free(&res);
    /* again: the key exists now, so the failure branch deletes `cas` */
    assert_int_equal(tg_store_txn(g_s, &absent, 1, succ, 2, &del, 1, &res, err, sizeof(err)), 0);
    assert_int_equal(res.tx_succeeded, 0);
    assert_int_equal(res.tx_n, 1);
    assert_int_equal(res.tx_res[0].or_type, TG_STORE_OP_DELETE);
    assert_int_equal(res.tx_res[0].or_deleted, 1);
    assert_int_equal(res.tx_revision, r1 + 2);
    tg_store_txn_res_free(&res);
    tg_store_cmp_t valcmp = {.c_key = k,
                             .c_key_len = kl,
                             .c_target = TG_STORE_CMP_VALUE,
                             .c_op = TG_STORE_NE,
                             .c_val = "zz",
                             .c_val_len = 2};
    assert_int_equal(tg_store_txn(g_s, &valcmp, 1, NULL, 0, NULL, 0, &res, err, sizeof(err)), 0);
    assert_int_equal(res.tx_succeeded, 0); /* missing key: value compare is false */
    tg_store_txn_res_free(&res);
    /* the same key written twice in one txn is refused, and nothing changes */
    tg_store_op_t twice[] = {put1, put1};
    int64_t before = curr();
    assert_int_equal(tg_store_txn(g_s, NULL, 0, twice, 2, NULL, 0, NULL, err, sizeof(err)), TG_STORE_EINVAL);
    assert_int_equal(curr(), before);
}

typedef struct racer {
    tg_store_t *r_s;
    const char *r_key;
    size_t r_keylen;
    int r_incs;
    int r_conflicts;
    int r_rc;
} racer_t;

/* Increments a decimal counter r_incs times with get + CAS on mod_revision. */
static void *race(void *arg)
{
    racer_t *r = arg;
    char err[TG_ERRLEN];
    for (int done = 0; done < r->r_incs;) {
        tg_store_kv_t *kv = NULL;
        int64_t mod = 0, v = 0;
        err[0] = 0;
        if ((r->r_rc = tg_store_get(r->r_s, r->r_key, r->r_keylen, &kv, NULL, err, sizeof(err))))
            return NULL;
        if (kv) {
            char num[32];
            snprintf(num, sizeof(num), "%.*s", (int)kv->kv_val_len, (const char *)kv->kv_val);
            v = strtoll(num, NULL, 10);
            mod = kv->kv_mod_rev;
            tg_store_kv_free(kv);
        }
        char nv[32];
        int nl = snprintf(nv, sizeof(nv), "%lld", (long long)(v + 1));
        tg_store_cmp_t c = {.c_key = r->r_key,
                            .c_key_len = r->r_keylen,
                            .c_target = TG_STORE_CMP_MOD_REV,
                            .c_op = TG_STORE_EQ,
                            .c_num = mod};
        tg_store_op_t p = {.op_type = TG_STORE_OP_PUT,
                           .op_key = r->r_key,
                           .op_key_len = r->r_keylen,
                           .op_val = nv,
                           .op_val_len = (size_t)nl};
        tg_store_txn_res_t res;
        if ((r->r_rc = tg_store_txn(r->r_s, &c, 1, &p, 1, NULL, 0, &res, err, sizeof(err))))
            return NULL;
        if (res.tx_succeeded)
            done++;
        else
            r->r_conflicts++;
        tg_store_txn_res_free(&res);
    }
    return NULL;
}

static void test_cas_race(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    size_t kl = K(k, "counter");
    int n = g_etcd ? 60 : 100;
    racer_t r[2] = {{g_s, k, kl, n, 0, 0}, {g_s, k, kl, n, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(r[0].r_rc, 0);
    assert_int_equal(r[1].r_rc, 0);
    tg_store_kv_t *kv;
    assert_int_equal(tg_store_get(g_s, k, kl, &kv, NULL, err, sizeof(err)), 0);
    char want[32];
    snprintf(want, sizeof(want), "%d", 2 * n);
    assert_int_equal(kv->kv_val_len, strlen(want));
    assert_memory_equal(kv->kv_val, want, strlen(want)); /* no lost update */
    assert_int_equal(kv->kv_version, 2 * n);
    tg_store_kv_free(kv);
    print_message("  cas race: %d increments, %d conflicts retried\n", 2 * n,
                  r[0].r_conflicts + r[1].r_conflicts);
}

typedef struct writer {
    tg_store_t *wr_s;
    int wr_id, wr_n;
    int64_t wr_revs[64];
    int wr_rc;
} writer_t;

static void *write_many(void *arg)
{
    writer_t *w = arg;
    char k[256], err[TG_ERRLEN];
    for (int i = 0; i < w->wr_n; i++) {
        size_t kl = (size_t)snprintf(k, sizeof(k), "%sg/%d/%d", g_pfx, w->wr_id, i);
        err[0] = 0;
        if ((w->wr_rc = tg_store_put(w->wr_s, k, kl, "v", 1, 0, &w->wr_revs[i], err, sizeof(err))))
            return NULL;
        /* a write that fails in the middle of the others (unknown lease) */
        if (i % 10 == 5 &&
            tg_store_put(w->wr_s, k, kl, "x", 1, 999999999, NULL, err, sizeof(err)) != TG_STORE_ENOLEASE) {
            w->wr_rc = -100;
            return NULL;
        }
    }
    return NULL;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Concurrent writers (LMDB commits them in groups): every acknowledged write
 * has its own revision, the revisions are contiguous, the failed writes took
 * none, and a watcher sees every write once, in revision order. */
static void test_concurrent_writers(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    enum { W = 8 };
    writer_t w[W];
    pthread_t t[W];
    int n = g_etcd ? 15 : 25;
    tg_store_watch_t *wa = NULL;
    size_t kl = K(k, "g/");
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 1, 0, &wa, err, sizeof(err)), 0);
    int64_t r0 = curr();
    for (int i = 0; i < W; i++) {
        w[i] = (writer_t){.wr_s = g_s, .wr_id = i, .wr_n = n};
        assert_int_equal(pthread_create(&t[i], NULL, write_many, &w[i]), 0);
    }
    int64_t all[W * 64];
    size_t na = 0;
    for (int i = 0; i < W; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].wr_rc, 0);
        for (int j = 0; j < n; j++)
            all[na++] = w[i].wr_revs[j];
    }
    qsort(all, na, sizeof(all[0]), cmp64);
    for (size_t i = 0; i < na; i++)
        assert_int_equal(all[i], r0 + 1 + (int64_t)i); /* unique and contiguous */
    assert_int_equal(curr(), r0 + (int64_t)na);
    int64_t last = 0;
    for (size_t i = 0; i < na; i++) {
        tg_store_event_t *ev = next_ev(wa, 5000);
        assert_int_equal(ev->ev_kv.kv_mod_rev, all[i]);
        assert_true(ev->ev_kv.kv_mod_rev > last);
        last = ev->ev_kv.kv_mod_rev;
        tg_store_event_free(ev);
    }
    expect_no_ev(wa, 100);
    tg_store_watch_cancel(wa);
}

static void test_revisions_monotonic(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    int64_t last = curr(), r;
    for (int i = 0; i < 20; i++) {
        char name[16];
        snprintf(name, sizeof(name), "m%d", i % 3);
        r = put(name, "x");
        assert_int_equal(r, last + 1);
        last = r;
        if (i % 5 == 4) {
            assert_int_equal(tg_store_delete(g_s, k, K(k, name), 0, NULL, &r, err, sizeof(err)), 0);
            assert_int_equal(r, last + 1);
            last = r;
        }
    }
    assert_int_equal(curr(), last);
    /* bad revisions are refused */
    tg_store_range_req_t rq = {.rq_key = k, .rq_key_len = K(k, "m0"), .rq_revision = -1};
    tg_store_range_res_t res;
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), TG_STORE_EINVAL);
    err[0] = 0;
    rq.rq_revision = last + 1000;
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), TG_STORE_EFUTURE);
    assert_non_null(strstr(err, "revision"));
}

static void test_watch_live_and_replay(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    size_t kl = K(k, "w/");
    tg_store_watch_t *live = NULL, *old = NULL;
    int64_t r1 = put("w/a", "1");
    int64_t r2 = put("w/b", "2");
    put("x/outside", "no");
    int64_t r3 = 0;
    int64_t dn = 0;
    char ka[256];
    assert_int_equal(tg_store_delete(g_s, ka, K(ka, "w/a"), 0, &dn, &r3, err, sizeof(err)), 0);
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 1, 0, &live, err, sizeof(err)), 0);
    assert_int_equal(tg_store_watch_next_rev(live), r3 + 1);
    double dl = now_s() + 5;
    while (!tg_store_watch_connected(live) && now_s() < dl)
        sleep_ms(10);
    assert_int_equal(tg_store_watch_connected(live), 1);
    /* from an old revision: exactly the changes since, in order */
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 1, r2, &old, err, sizeof(err)), 0);
    expect_ev(old, TG_STORE_EV_PUT, "w/b", "2", r2);
    expect_ev(old, TG_STORE_EV_DELETE, "w/a", NULL, r3);
    expect_no_ev(old, 100);
    expect_no_ev(live, 0);
    int64_t r4 = put("w/c", "3");
    int64_t r5 = put("w/c", "4");
    put("x/outside", "no");
    expect_ev(live, TG_STORE_EV_PUT, "w/c", "3", r4);
    expect_ev(old, TG_STORE_EV_PUT, "w/c", "3", r4);
    tg_store_event_t *ev = next_ev(live, 5000);
    assert_int_equal(ev->ev_kv.kv_mod_rev, r5);
    assert_int_equal(ev->ev_kv.kv_version, 2);
    assert_int_equal(ev->ev_kv.kv_create_rev, r4);
    tg_store_event_free(ev);
    expect_ev(old, TG_STORE_EV_PUT, "w/c", "4", r5);
    expect_no_ev(live, 200);
    assert_int_equal(tg_store_watch_next_rev(old), r5 + 1);
    /* a single-key watch from the first revision sees only that key */
    tg_store_watch_t *one = NULL;
    char kb[256];
    size_t kbl = K(kb, "w/a");
    assert_int_equal(tg_store_watch(g_s, kb, kbl, NULL, 0, 0, r1, &one, err, sizeof(err)), 0);
    expect_ev(one, TG_STORE_EV_PUT, "w/a", "1", r1);
    expect_ev(one, TG_STORE_EV_DELETE, "w/a", NULL, r3);
    expect_no_ev(one, 100);
    tg_store_watch_cancel(one);
    /* a watch that starts in the future skips what comes before its start */
    tg_store_watch_t *fut = NULL;
    int64_t r6 = put("w/d", "5");
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 1, r6 + 2, &fut, err, sizeof(err)), 0);
    put("w/d", "6"); /* r6 + 1: before the start */
    int64_t r8 = put("w/d", "7");
    expect_ev(fut, TG_STORE_EV_PUT, "w/d", "7", r8);
    tg_store_watch_cancel(fut);
    tg_store_watch_cancel(live);
    tg_store_watch_cancel(old);
}

static void test_watch_txn_and_fd(void **state)
{
    (void)state;
    char k[256], k1[256], k2[256], err[TG_ERRLEN] = "";
    size_t kl = K(k, "t/"), kl1 = K(k1, "t/1"), kl2 = K(k2, "t/2");
    tg_store_watch_t *w = NULL;
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 1, 0, &w, err, sizeof(err)), 0);
    tg_store_op_t ops[] = {
        {.op_type = TG_STORE_OP_PUT, .op_key = k1, .op_key_len = kl1, .op_val = "a", .op_val_len = 1},
        {.op_type = TG_STORE_OP_PUT, .op_key = k2, .op_key_len = kl2, .op_val = "b", .op_val_len = 1},
    };
    tg_store_txn_res_t res;
    assert_int_equal(tg_store_txn(g_s, NULL, 0, ops, 2, NULL, 0, &res, err, sizeof(err)), 0);
    int64_t rev = res.tx_revision;
    tg_store_txn_res_free(&res);
    /* the fd becomes readable */
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fd_set fs;
    FD_ZERO(&fs);
    FD_SET(tg_store_watch_fd(w), &fs);
    struct timeval tv = {5, 0};
    assert_int_equal(select(tg_store_watch_fd(w) + 1, &fs, NULL, NULL, &tv), 1);
    expect_ev(w, TG_STORE_EV_PUT, "t/1", "a", rev);
    expect_ev(w, TG_STORE_EV_PUT, "t/2", "b", rev); /* both at the txn's one revision */
    expect_no_ev(w, 0);
    tg_store_watch_cancel(w);
}

static void test_compaction_resync(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    size_t kl = K(k, "c/");
    int64_t r1 = put("c/1", "a");
    put("c/1", "b");
    int64_t r3 = put("c/1", "c");
    /* history before compaction is readable */
    tg_store_range_req_t rq = {.rq_key = k, .rq_key_len = kl, .rq_prefix = 1, .rq_revision = r1};
    tg_store_range_res_t res;
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), 0);
    assert_int_equal(res.rs_n, 1);
    assert_memory_equal(res.rs_kvs[0].kv_val, "a", 1);
    tg_store_range_res_free(&res);
    assert_int_equal(tg_store_compact(g_s, r3, err, sizeof(err)), 0);
    err[0] = 0;
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), TG_STORE_ECOMPACTED);
    assert_non_null(strstr(err, "compacted"));
    /* the compaction point itself stays readable */
    rq.rq_revision = r3;
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), 0);
    assert_int_equal(res.rs_n, 1);
    tg_store_range_res_free(&res);
    /* a watch from before it is told to resync */
    tg_store_watch_t *w = NULL;
    tg_store_event_t *ev = NULL;
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 1, r1, &w, err, sizeof(err)), 0);
    err[0] = 0;
    assert_int_equal(tg_store_watch_next(w, 5000, &ev, err, sizeof(err)), TG_STORE_ECOMPACTED);
    assert_null(ev);
    assert_non_null(strstr(err, "resync"));
    tg_store_watch_cancel(w);
    /* compacting again to the same or an older point, or the future, fails */
    err[0] = 0;
    assert_int_equal(tg_store_compact(g_s, r3, err, sizeof(err)), TG_STORE_ECOMPACTED);
    err[0] = 0;
    assert_int_equal(tg_store_compact(g_s, curr() + 100, err, sizeof(err)), TG_STORE_EFUTURE);
    /* resync: read now, watch from there, nothing lost */
    rq.rq_revision = 0;
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), 0);
    int64_t at = res.rs_revision;
    tg_store_range_res_free(&res);
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 1, at + 1, &w, err, sizeof(err)), 0);
    int64_t r4 = put("c/2", "d");
    expect_ev(w, TG_STORE_EV_PUT, "c/2", "d", r4);
    tg_store_watch_cancel(w);
}

/* Compaction forgets history only: every live key keeps its value, version
 * and revisions, a deleted key stays deleted, reads below the point and a
 * watch from before it get ECOMPACTED (the store-size bound relies on it). */
static void test_compaction_keeps_latest(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    int64_t first = put("kl/a", "a1");
    put("kl/a", "a2");
    int64_t ra = put("kl/a", "a3");
    int64_t rb = put("kl/b", "b1");
    put("kl/gone", "x");
    int64_t n = 0, rdel = 0;
    assert_int_equal(tg_store_delete(g_s, k, K(k, "kl/gone"), 0, &n, &rdel, err, sizeof(err)), 0);
    assert_int_equal(n, 1);
    int64_t at = curr();
    assert_int_equal(tg_store_compact(g_s, at, err, sizeof(err)), 0);
    tg_store_kv_t *kv = NULL;
    assert_int_equal(tg_store_get(g_s, k, K(k, "kl/a"), &kv, NULL, err, sizeof(err)), 0);
    assert_non_null(kv);
    assert_int_equal(kv->kv_val_len, 2);
    assert_memory_equal(kv->kv_val, "a3", 2);
    assert_int_equal(kv->kv_version, 3);
    assert_int_equal(kv->kv_create_rev, first);
    assert_int_equal(kv->kv_mod_rev, ra);
    tg_store_kv_free(kv);
    assert_int_equal(tg_store_get(g_s, k, K(k, "kl/b"), &kv, NULL, err, sizeof(err)), 0);
    assert_non_null(kv);
    assert_memory_equal(kv->kv_val, "b1", 2);
    assert_int_equal(kv->kv_mod_rev, rb);
    tg_store_kv_free(kv);
    assert_int_equal(tg_store_get(g_s, k, K(k, "kl/gone"), &kv, NULL, err, sizeof(err)), 0);
    assert_null(kv);
    /* the whole prefix at the compaction point: exactly the live keys */
    size_t kl = K(k, "kl/");
    tg_store_range_req_t rq = {.rq_key = k, .rq_key_len = kl, .rq_prefix = 1, .rq_revision = at};
    tg_store_range_res_t res;
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), 0);
    assert_int_equal(res.rs_n, 2);
    tg_store_range_res_free(&res);
    /* history below it is gone, for reads and for watches */
    rq.rq_revision = rdel - 1;
    err[0] = 0;
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), TG_STORE_ECOMPACTED);
    tg_store_watch_t *w = NULL;
    tg_store_event_t *ev = NULL;
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 1, first, &w, err, sizeof(err)), 0);
    err[0] = 0;
    assert_int_equal(tg_store_watch_next(w, 5000, &ev, err, sizeof(err)), TG_STORE_ECOMPACTED);
    assert_null(ev);
    tg_store_watch_cancel(w);
    /* a write after it is seen by a watch from the point on */
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 1, at + 1, &w, err, sizeof(err)), 0);
    int64_t r = put("kl/b", "b2");
    expect_ev(w, TG_STORE_EV_PUT, "kl/b", "b2", r);
    tg_store_watch_cancel(w);
}

/* Polls until key is gone, up to ms. */
static int wait_gone(const char *k, size_t kl, int ms)
{
    double dl = now_s() + ms / 1000.0;
    while (now_s() < dl) {
        tg_store_kv_t *kv = NULL;
        char err[TG_ERRLEN] = "";
        if (tg_store_get(g_s, k, kl, &kv, NULL, err, sizeof(err)) == 0 && !kv)
            return 1;
        tg_store_kv_free(kv);
        sleep_ms(50);
    }
    return 0;
}

static void test_lease_expiry(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    size_t kl = K(k, "l/alive");
    int64_t id = 0, ttl = 0;
    tg_store_watch_t *w = NULL;
    assert_int_equal(tg_store_lease_grant(g_s, 1, &id, err, sizeof(err)), 0);
    assert_true(id > 0);
    int64_t rp = 0;
    assert_int_equal(tg_store_put(g_s, k, kl, "me", 2, id, &rp, err, sizeof(err)), 0);
    tg_store_kv_t *kv;
    assert_int_equal(tg_store_get(g_s, k, kl, &kv, NULL, err, sizeof(err)), 0);
    assert_int_equal(kv->kv_lease, id);
    tg_store_kv_free(kv);
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 0, rp + 1, &w, err, sizeof(err)), 0);
    double t0 = now_s();
    assert_true(wait_gone(k, kl, 10000)); /* etcd raises a 1 s TTL to its minimum */
    print_message("  lease of 1 s expired after %.2f s\n", now_s() - t0);
    expect_ev(w, TG_STORE_EV_DELETE, "l/alive", NULL, 0);
    tg_store_watch_cancel(w);
    err[0] = 0;
    assert_int_equal(tg_store_lease_keepalive(g_s, id, &ttl, err, sizeof(err)), TG_STORE_ENOLEASE);
    assert_non_null(strstr(err, "lease"));
}

static void test_lease_keepalive_revoke(void **state)
{
    (void)state;
    char k1[256], k2[256], err[TG_ERRLEN] = "";
    size_t kl1 = K(k1, "l/1"), kl2 = K(k2, "l/2");
    int64_t id = 0, ttl = 0;
    assert_int_equal(tg_store_lease_grant(g_s, 2, &id, err, sizeof(err)), 0);
    assert_int_equal(tg_store_put(g_s, k1, kl1, "a", 1, id, NULL, err, sizeof(err)), 0);
    assert_int_equal(tg_store_put(g_s, k2, kl2, "b", 1, id, NULL, err, sizeof(err)), 0);
    for (int i = 0; i < 7; i++) { /* 3.5 s, past the TTL, kept alive */
        sleep_ms(500);
        assert_int_equal(tg_store_lease_keepalive(g_s, id, &ttl, err, sizeof(err)), 0);
        assert_true(ttl >= 2);
    }
    tg_store_kv_t *kv = NULL;
    assert_int_equal(tg_store_get(g_s, k1, kl1, &kv, NULL, err, sizeof(err)), 0);
    assert_non_null(kv);
    tg_store_kv_free(kv);
    int64_t before = curr();
    assert_int_equal(tg_store_lease_revoke(g_s, id, err, sizeof(err)), 0);
    assert_int_equal(curr(), before + 1); /* both keys, one revision */
    assert_int_equal(tg_store_get(g_s, k1, kl1, &kv, NULL, err, sizeof(err)), 0);
    assert_null(kv);
    assert_int_equal(tg_store_get(g_s, k2, kl2, &kv, NULL, err, sizeof(err)), 0);
    assert_null(kv);
    err[0] = 0;
    assert_int_equal(tg_store_lease_revoke(g_s, id, err, sizeof(err)), TG_STORE_ENOLEASE);
    err[0] = 0;
    assert_int_equal(tg_store_put(g_s, k1, kl1, "a", 1, id, NULL, err, sizeof(err)), TG_STORE_ENOLEASE);
    assert_int_equal(curr(), before + 1);
}

static void test_limits(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    int64_t before = curr();
    uint8_t *big = calloc(1, TG_STORE_MAX_VALUE + 1);
    assert_non_null(big);
    char key[TG_STORE_MAX_KEY + 2];
    memset(key, 'k', sizeof(key));
    memcpy(key, g_pfx, strlen(g_pfx));
    assert_int_equal(tg_store_put(g_s, key, TG_STORE_MAX_KEY + 1, "v", 1, 0, NULL, err, sizeof(err)),
                     TG_STORE_ETOOBIG);
    assert_non_null(strstr(err, "key limit"));
    err[0] = 0;
    assert_int_equal(tg_store_put(g_s, key, 10, big, TG_STORE_MAX_VALUE + 1, 0, NULL, err, sizeof(err)),
                     TG_STORE_ETOOBIG);
    assert_non_null(strstr(err, "value limit"));
    err[0] = 0;
    assert_int_equal(tg_store_put(g_s, key, 0, "v", 1, 0, NULL, err, sizeof(err)), TG_STORE_EINVAL);
    /* 129 ops, or two 1 MiB values in one txn */
    tg_store_op_t ops[TG_STORE_MAX_TXN_OPS + 1];
    for (int i = 0; i <= TG_STORE_MAX_TXN_OPS; i++)
        ops[i] = (tg_store_op_t){.op_type = TG_STORE_OP_GET, .op_key = key, .op_key_len = 10};
    err[0] = 0;
    assert_int_equal(
        tg_store_txn(g_s, NULL, 0, ops, TG_STORE_MAX_TXN_OPS + 1, NULL, 0, NULL, err, sizeof(err)),
        TG_STORE_ETOOBIG);
    char k2[16];
    memcpy(k2, key, 10);
    k2[10] = '2';
    tg_store_op_t two[] = {
        {.op_type = TG_STORE_OP_PUT,
         .op_key = key,
         .op_key_len = 10,
         .op_val = big,
         .op_val_len = TG_STORE_MAX_VALUE},
        {.op_type = TG_STORE_OP_PUT,
         .op_key = k2,
         .op_key_len = 11,
         .op_val = big,
         .op_val_len = TG_STORE_MAX_VALUE},
    };
    err[0] = 0;
    assert_int_equal(tg_store_txn(g_s, NULL, 0, two, 2, NULL, 0, NULL, err, sizeof(err)), TG_STORE_ETOOBIG);
    assert_int_equal(curr(), before); /* nothing was written */
    /* the largest key and value are accepted and read back whole */
    for (int i = 0; i < TG_STORE_MAX_VALUE; i++)
        big[i] = (uint8_t)(i * 31);
    assert_int_equal(
        tg_store_put(g_s, key, TG_STORE_MAX_KEY, big, TG_STORE_MAX_VALUE, 0, NULL, err, sizeof(err)), 0);
    tg_store_kv_t *kv = NULL;
    assert_int_equal(tg_store_get(g_s, key, TG_STORE_MAX_KEY, &kv, NULL, err, sizeof(err)), 0);
    assert_non_null(kv);
    assert_int_equal(kv->kv_val_len, TG_STORE_MAX_VALUE);
    assert_memory_equal(kv->kv_val, big, TG_STORE_MAX_VALUE);
    tg_store_kv_free(kv);
    free(big);
    /* bad specs */
    tg_store_t *s = NULL;
    err[0] = 0;
    assert_int_equal(tg_store_open(&s, "redis:x", NULL, err, sizeof(err)), TG_STORE_EINVAL);
    assert_non_null(strstr(err, "lmdb:"));
    err[0] = 0;
    assert_int_equal(tg_store_open(&s, "etcd:ftp://x", NULL, err, sizeof(err)), TG_STORE_EINVAL);
    assert_null(s);
}

/* ---- lmdb only ------------------------------------------------------------- */

static void test_lmdb_durable_reopen(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    int64_t id;
    int64_t r = put("dur", "kept");
    assert_int_equal(tg_store_lease_grant(g_s, 600, &id, err, sizeof(err)), 0);
    tg_store_close(g_s);
    g_s = open_store(NULL);
    assert_int_equal(curr(), r);
    tg_store_kv_t *kv = NULL;
    assert_int_equal(tg_store_get(g_s, k, K(k, "dur"), &kv, NULL, err, sizeof(err)), 0);
    assert_non_null(kv);
    assert_memory_equal(kv->kv_val, "kept", 4);
    tg_store_kv_free(kv);
    int64_t ttl;
    assert_int_equal(tg_store_lease_keepalive(g_s, id, &ttl, err, sizeof(err)), 0);
    assert_int_equal(ttl, 600);
    /* a second handle on the same dir is refused */
    tg_store_t *s2 = NULL;
    char spec[600];
    snprintf(spec, sizeof(spec), "lmdb:%s/db", g_dir);
    err[0] = 0;
    assert_int_equal(tg_store_open(&s2, spec, NULL, err, sizeof(err)), TG_STORE_ELOCKED);
    assert_non_null(strstr(err, "another process"));
}

/* Every allocation the store makes through tg_malloc fails in turn: each
 * call returns 0 or ENOMEM, never crashes, leaks nothing, and the store stays
 * consistent (the value read back is the last acknowledged one). */
static void test_lmdb_alloc_failures(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN];
    size_t kl = K(k, "af");
    int64_t acked = 0;
    for (long n = 0; n < 60; n++) {
        char v[16];
        int vl = snprintf(v, sizeof(v), "%ld", n);
        tg_store_txn_res_t res;
        tg_store_cmp_t c = {
            .c_key = k, .c_key_len = kl, .c_target = TG_STORE_CMP_VERSION, .c_op = TG_STORE_GT, .c_num = -1};
        tg_store_op_t ops[2] = {
            {.op_type = TG_STORE_OP_PUT,
             .op_key = k,
             .op_key_len = kl,
             .op_val = v,
             .op_val_len = (size_t)vl},
            {.op_type = TG_STORE_OP_GET, .op_key = k, .op_key_len = kl, .op_prefix = 1},
        };
        tg_store_watch_t *w = NULL;
        tg_store_range_res_t rr;
        tg_store_range_req_t rq = {.rq_key = k, .rq_key_len = kl, .rq_prefix = 1, .rq_revision = acked};
        err[0] = 0;
        tg_alloc_fail_after(n);
        int rc1 = tg_store_txn(g_s, &c, 1, ops, 2, NULL, 0, &res, err, sizeof(err));
        int rc2 = tg_store_watch(g_s, k, kl, NULL, 0, 0, acked ? acked : 1, &w, err, sizeof(err));
        int rc3 = tg_store_range(g_s, &rq, &rr, err, sizeof(err));
        tg_alloc_fail_after(-1);
        assert_true(rc1 == 0 || rc1 == TG_STORE_ENOMEM);
        assert_true(rc2 == 0 || rc2 == TG_STORE_ENOMEM);
        assert_true(rc3 == 0 || rc3 == TG_STORE_ENOMEM);
        if (rc1 == 0) {
            acked = res.tx_revision;
            assert_int_equal(res.tx_res[1].or_range.rs_n, 1);
        }
        tg_store_txn_res_free(&res);
        tg_store_range_res_free(&rr);
        tg_store_watch_cancel(w);
        tg_store_kv_t *kv = NULL;
        assert_int_equal(tg_store_get(g_s, k, kl, &kv, NULL, err, sizeof(err)), 0);
        if (acked) {
            assert_non_null(kv);
            assert_int_equal(kv->kv_mod_rev, acked);
        }
        tg_store_kv_free(kv);
    }
    assert_true(acked > 0);
}

/* Polls a read of rq until the store answers ECOMPACTED, up to ms;
 * returns the last answer. */
static int wait_compacted(const tg_store_range_req_t *rq, int ms)
{
    double dl = now_s() + ms / 1000.0;
    int rc = 0;
    while (now_s() < dl) {
        tg_store_range_res_t res;
        char err[TG_ERRLEN] = "";
        rc = tg_store_range(g_s, rq, &res, err, sizeof(err));
        tg_store_range_res_free(&res);
        if (rc == TG_STORE_ECOMPACTED)
            break;
        sleep_ms(50);
    }
    return rc;
}

/* The history log compacts itself down to so_history_revs. */
static void test_lmdb_auto_compaction(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    tg_store_close(g_s);
    tg_store_opts_t o = {.so_history_revs = 20};
    g_s = open_store(&o);
    int64_t first = put("ac", "0"), last = first;
    for (int i = 1; i < 60; i++)
        last = put("ac", "x");
    size_t kl = K(k, "ac");
    tg_store_range_req_t old = {.rq_key = k, .rq_key_len = kl, .rq_revision = first};
    tg_store_range_res_t res;
    assert_int_equal(wait_compacted(&old, 5000), TG_STORE_ECOMPACTED);
    /* the last 20 revisions are still there, for reads and watches */
    tg_store_range_req_t recent = {.rq_key = k, .rq_key_len = kl, .rq_revision = last - 19};
    assert_int_equal(tg_store_range(g_s, &recent, &res, err, sizeof(err)), 0);
    assert_int_equal(res.rs_n, 1);
    assert_int_equal(res.rs_kvs[0].kv_mod_rev, last - 19);
    tg_store_range_res_free(&res);
    tg_store_watch_t *w = NULL;
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 0, last - 19, &w, err, sizeof(err)), 0);
    for (int64_t r = last - 19; r <= last; r++)
        expect_ev(w, TG_STORE_EV_PUT, "ac", NULL, r);
    tg_store_watch_cancel(w);
}

/* so_history_s: history older than the window is compacted on its own
 * (etcd's periodic mode), with no revision bound; recent history stays. */
static void test_lmdb_auto_compaction_by_time(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    tg_store_close(g_s);
    tg_store_opts_t o = {.so_history_revs = -1, .so_history_s = 1};
    g_s = open_store(&o);
    int64_t first = put("tc", "old");
    for (int i = 0; i < 5; i++)
        put("tc", "x");
    size_t kl = K(k, "tc");
    tg_store_range_req_t old = {.rq_key = k, .rq_key_len = kl, .rq_revision = first};
    tg_store_range_res_t res;
    /* within the window: readable */
    assert_int_equal(tg_store_range(g_s, &old, &res, err, sizeof(err)), 0);
    tg_store_range_res_free(&res);
    sleep_ms(1300);
    int64_t recent = put("tc", "new");
    assert_int_equal(wait_compacted(&old, 5000), TG_STORE_ECOMPACTED);
    /* what was written within the window is still there */
    tg_store_range_req_t now = {.rq_key = k, .rq_key_len = kl, .rq_revision = recent};
    assert_int_equal(tg_store_range(g_s, &now, &res, err, sizeof(err)), 0);
    assert_int_equal(res.rs_n, 1);
    assert_memory_equal(res.rs_kvs[0].kv_val, "new", 3);
    tg_store_range_res_free(&res);
}

static void test_lmdb_killed_writer(void **state)
{
    (void)state;
    char spec[600], err[TG_ERRLEN] = "";
    tg_store_close(g_s); /* the child takes the store */
    g_s = NULL;
    snprintf(spec, sizeof(spec), "lmdb:%s/db", g_dir);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t p = fork();
    if (p == 0) {
        tg_store_t *s = NULL;
        char kk[64];
        if (tg_store_open(&s, spec, NULL, NULL, 0))
            _exit(1);
        for (int i = 0; i < 50; i++) {
            int n = snprintf(kk, sizeof(kk), "kill/%03d", i);
            if (tg_store_put(s, kk, (size_t)n, "v", 1, 0, NULL, NULL, 0))
                _exit(2);
        }
        if (write(pfd[1], "x", 1) != 1)
            _exit(3);
        for (int i = 50;; i++) { /* keep writing until killed */
            int n = snprintf(kk, sizeof(kk), "kill/%03d", i % 1000);
            tg_store_put(s, kk, (size_t)n, "v", 1, 0, NULL, NULL, 0);
        }
    }
    close(pfd[1]);
    char c;
    assert_int_equal(read(pfd[0], &c, 1), 1);
    sleep_ms(20);
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
    close(pfd[0]);
    g_s = open_store(NULL); /* the lock died with the child */
    tg_store_range_req_t rq = {.rq_key = "kill/", .rq_key_len = 5, .rq_prefix = 1};
    tg_store_range_res_t res;
    assert_int_equal(tg_store_range(g_s, &rq, &res, err, sizeof(err)), 0);
    assert_true(res.rs_n >= 50); /* every acknowledged put survived */
    for (size_t i = 0; i < res.rs_n; i++)
        assert_int_equal(res.rs_kvs[i].kv_val_len, 1);
    print_message("  killed writer: %zu keys after reopen\n", res.rs_n);
    tg_store_range_res_free(&res);
}

static void test_lmdb_map_full(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    tg_store_close(g_s);
    tg_store_opts_t o = {.so_map_size = 1 << 20, .so_map_size_max = 8 << 20};
    g_s = open_store(&o);
    size_t vl = 256 * 1024, written = 0;
    uint8_t *v = calloc(1, vl);
    int rc = 0;
    int64_t last = 0;
    for (int i = 0; i < 100; i++) {
        char k[32];
        int n = snprintf(k, sizeof(k), "big/%d", i);
        err[0] = 0;
        rc = tg_store_put(g_s, k, (size_t)n, v, vl, 0, &last, err, sizeof(err));
        if (rc)
            break;
        written += vl;
    }
    free(v);
    assert_int_equal(rc, TG_STORE_EFULL);
    assert_non_null(strstr(err, "maximum"));
    print_message("  map full after %zu bytes of values (map grew from 1 MiB): %s\n", written, err);
    assert_true(written > (1 << 20)); /* the map grew past its initial size */
    assert_int_equal(curr(), last);   /* the failed put changed nothing */
    /* the way out: compact the history, then delete (a delete logs the old
       value, so it needs the room compaction frees) */
    assert_int_equal(tg_store_compact(g_s, last, err, sizeof(err)), 0);
    int64_t n = 0;
    assert_int_equal(tg_store_delete(g_s, "big/0", 5, 0, &n, NULL, err, sizeof(err)), 0);
    assert_int_equal(n, 1);
    /* and after reopen */
    tg_store_close(g_s);
    g_s = open_store(&o);
    assert_int_equal(curr(), last + 1);
}

static void write_file(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, p, n), (ssize_t)n);
    close(fd);
}

static void test_lmdb_corrupt_files(void **state)
{
    (void)state;
    char spec[600], file[600], err[TG_ERRLEN] = "";
    tg_store_t *s = NULL;
    for (int i = 0; i < 200; i++)
        put("c", "some data to make the file bigger than the meta pages");
    tg_store_close(g_s);
    g_s = NULL;
    snprintf(spec, sizeof(spec), "lmdb:%s/db", g_dir);
    snprintf(file, sizeof(file), "%s/db/data.mdb", g_dir);
    struct stat st;
    assert_int_equal(stat(file, &st), 0);
    /* truncated: cut after the meta pages */
    assert_int_equal(truncate(file, 3 * 4096), 0);
    int rc = tg_store_open(&s, spec, NULL, err, sizeof(err));
    print_message("  truncated: %s\n", err);
    assert_int_equal(rc, TG_STORE_ECORRUPT);
    assert_non_null(strstr(err, "truncated"));
    /* emptied: must not be taken for a new store */
    assert_int_equal(truncate(file, 0), 0);
    err[0] = 0;
    assert_int_equal(tg_store_open(&s, spec, NULL, err, sizeof(err)), TG_STORE_ECORRUPT);
    /* garbage */
    char junk[3 * 4096];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)(i * 13 + 7);
    write_file(file, junk, sizeof(junk));
    err[0] = 0;
    rc = tg_store_open(&s, spec, NULL, err, sizeof(err));
    print_message("  garbage: %s\n", err);
    assert_int_equal(rc, TG_STORE_ECORRUPT);
    assert_null(s);
    harness_rmdir(file);
    g_s = open_store(NULL); /* fresh: works again */
    assert_int_equal(curr(), 1);
}

/* ---- etcd only ------------------------------------------------------------- */

/* A gRPC server in etcd's place that answers Status and nothing else in
 * time: writes and keepalives reach it and get no answer before the
 * client's deadline, as when etcd hangs mid-request; Range answers bytes
 * that are not a RangeResponse. */
static int hung_status(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, tg_buf_t *reply, void *arg)
{
    static const uint8_t status[] = {0x0a, 0x02, 0x18, 0x07}; /* header { revision: 7 } */
    (void)call, (void)req, (void)req_len, (void)arg;
    return tg_buf_append(reply, status, sizeof(status)) ? TG_RPC_CODE_INTERNAL : TG_RPC_CODE_OK;
}

static int hung_write(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, tg_buf_t *reply, void *arg)
{
    (void)call, (void)req, (void)req_len, (void)reply, (void)arg;
    sleep_ms(1000); /* past the client's 300 ms */
    return TG_RPC_CODE_OK;
}

static int hung_garbage(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, tg_buf_t *reply, void *arg)
{
    (void)call, (void)req, (void)req_len, (void)arg;
    return tg_buf_append(reply, "\xff\xff\xff", 3) ? TG_RPC_CODE_INTERNAL : TG_RPC_CODE_OK;
}

static int hung_stream(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, void *arg)
{
    (void)call, (void)req, (void)req_len, (void)arg;
    sleep_ms(1000);
    return TG_RPC_CODE_OK;
}

static tg_rpc_server_t *hung_start(int *port)
{
    char err[TG_ERRLEN] = "";
    tg_rpc_server_opts_t o = {.so_addr = "127.0.0.1:0", .so_threads = 8};
    tg_rpc_server_t *srv = tg_rpc_server_create(&o, err, sizeof(err));
    assert_non_null(srv);
    assert_int_equal(tg_rpc_server_add_unary(srv, "/etcdserverpb.Maintenance/Status", hung_status, NULL, err,
                                             sizeof(err)), 0);
    assert_int_equal(tg_rpc_server_add_unary(srv, "/etcdserverpb.KV/Put", hung_write, NULL, err, sizeof(err)), 0);
    assert_int_equal(tg_rpc_server_add_unary(srv, "/etcdserverpb.KV/Txn", hung_write, NULL, err, sizeof(err)), 0);
    assert_int_equal(tg_rpc_server_add_unary(srv, "/etcdserverpb.KV/Range", hung_garbage, NULL, err, sizeof(err)),
                     0);
    assert_int_equal(tg_rpc_server_add_stream(srv, "/etcdserverpb.Lease/LeaseKeepAlive", hung_stream, NULL, err,
                                              sizeof(err)), 0);
    assert_int_equal(tg_rpc_server_start(srv, err, sizeof(err)), 0);
    *port = tg_rpc_server_port(srv);
    return srv;
}

static void test_etcd_no_answer(void **state)
{
    (void)state;
    char spec[128], err[TG_ERRLEN] = "";
    int port = 0;
    tg_rpc_server_t *srv = hung_start(&port);
    snprintf(spec, sizeof(spec), "etcd:http://127.0.0.1:%d", port);
    tg_store_opts_t o = {.so_timeout_ms = 300, .so_retries = 2};
    tg_store_t *s = NULL;
    assert_int_equal(tg_store_open(&s, spec, &o, err, sizeof(err)), 0);
    /* a write that was sent and never answered: outcome unknown, not retried */
    double t0 = now_s();
    int rc = tg_store_put(s, "k", 1, "v", 1, 0, NULL, err, sizeof(err));
    double el = now_s() - t0;
    print_message("  put, no answer, %.2f s: %s\n", el, err);
    assert_int_equal(rc, TG_STORE_EUNKNOWN);
    assert_non_null(strstr(err, "may or may not"));
    assert_true(el < 0.9); /* one attempt of 300 ms */
    tg_store_cmp_t c = {.c_key = "k", .c_key_len = 1, .c_target = TG_STORE_CMP_VERSION};
    tg_store_op_t put = {.op_type = TG_STORE_OP_PUT, .op_key = "k", .op_key_len = 1, .op_val = "v", .op_val_len = 1};
    err[0] = 0;
    assert_int_equal(tg_store_txn(s, &c, 1, &put, 1, NULL, 0, NULL, err, sizeof(err)), TG_STORE_EUNKNOWN);
    /* a txn of only gets changes nothing: retried like a read, then unavailable */
    tg_store_op_t get = {.op_type = TG_STORE_OP_GET, .op_key = "k", .op_key_len = 1};
    err[0] = 0;
    rc = tg_store_txn(s, &c, 1, &get, 1, &get, 1, NULL, err, sizeof(err));
    print_message("  read-only txn, no answer: %s\n", err);
    assert_int_equal(rc, TG_STORE_EUNAVAIL);
    /* an answer that is not etcd's is an error that says so */
    tg_store_range_req_t rq = {.rq_key = "k", .rq_key_len = 1};
    tg_store_range_res_t res;
    err[0] = 0;
    rc = tg_store_range(s, &rq, &res, err, sizeof(err));
    print_message("  range, not a RangeResponse: %s\n", err);
    assert_int_equal(rc, TG_STORE_ESERVER);
    assert_non_null(strstr(err, "KV/Range"));
    /* a retry-safe request is retried, then reported unavailable in bound */
    int64_t ttl;
    err[0] = 0;
    t0 = now_s();
    rc = tg_store_lease_keepalive(s, 5, &ttl, err, sizeof(err));
    el = now_s() - t0;
    print_message("  keepalive, no answer, %.2f s: %s\n", el, err);
    assert_int_equal(rc, TG_STORE_EUNAVAIL);
    assert_non_null(strstr(err, "DEADLINE_EXCEEDED"));
    assert_true(el >= 0.55 && el < 2.0); /* two attempts of 300 ms + backoff */
    tg_store_close(s);
    sleep_ms(1100); /* the hung handlers return */
    tg_rpc_server_shutdown(srv, 0);
    tg_rpc_server_destroy(srv);
}

static void test_etcd_unreachable(void **state)
{
    (void)state;
    char spec[128], err[TG_ERRLEN] = "";
    int dead = harness_free_port();
    snprintf(spec, sizeof(spec), "etcd:http://127.0.0.1:%d", dead);
    tg_store_opts_t o = {.so_timeout_ms = 500, .so_retries = 2};
    tg_store_t *s = NULL;
    double t0 = now_s();
    int rc = tg_store_open(&s, spec, &o, err, sizeof(err));
    double el = now_s() - t0;
    print_message("  unreachable after %.2f s: %s\n", el, err);
    assert_int_equal(rc, TG_STORE_EUNAVAIL);
    assert_null(s);
    assert_true(el < 3.0);
    char port[16];
    snprintf(port, sizeof(port), "%d", dead);
    assert_non_null(strstr(err, port)); /* says which endpoint */
}

static void test_etcd_failover(void **state)
{
    (void)state;
    char spec[256], err[TG_ERRLEN] = "", k[256];
    snprintf(spec, sizeof(spec), "etcd:http://127.0.0.1:%d,%s", harness_free_port(), g_proc.ep_url);
    tg_store_opts_t o = {.so_timeout_ms = 2000};
    tg_store_t *s = NULL;
    assert_int_equal(tg_store_open(&s, spec, &o, err, sizeof(err)), 0);
    size_t kl = K(k, "fo");
    int64_t rev = 0;
    assert_int_equal(tg_store_put(s, k, kl, "ok", 2, 0, &rev, err, sizeof(err)), 0);
    tg_store_kv_t *kv = NULL;
    assert_int_equal(tg_store_get(s, k, kl, &kv, NULL, err, sizeof(err)), 0);
    assert_non_null(kv);
    assert_int_equal(kv->kv_mod_rev, rev);
    tg_store_kv_free(kv);
    tg_store_watch_t *w = NULL;
    assert_int_equal(tg_store_watch(s, k, kl, NULL, 0, 0, rev, &w, err, sizeof(err)), 0);
    tg_store_event_t *ev = next_ev(w, 10000); /* the watch also fails over */
    assert_int_equal(ev->ev_kv.kv_mod_rev, rev);
    tg_store_event_free(ev);
    tg_store_watch_cancel(w);
    tg_store_close(s);
}

static void test_etcd_killed_mid_watch(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "";
    size_t kl = K(k, "kw/");
    tg_store_watch_t *w = NULL;
    int64_t revs[40];
    assert_int_equal(tg_store_watch(g_s, k, kl, NULL, 0, 1, 0, &w, err, sizeof(err)), 0);
    for (int i = 0; i < 20; i++) {
        char name[16];
        snprintf(name, sizeof(name), "kw/%02d", i);
        revs[i] = put(name, "before");
    }
    /* read some but not all of them before the crash */
    for (int i = 0; i < 10; i++) {
        char name[16];
        snprintf(name, sizeof(name), "kw/%02d", i);
        expect_ev(w, TG_STORE_EV_PUT, name, "before", revs[i]);
    }
    etcd_kill(&g_proc);
    /* the watch says it is reconnecting */
    double dl = now_s() + 5;
    while (tg_store_watch_connected(w) && now_s() < dl)
        sleep_ms(20);
    assert_int_equal(tg_store_watch_connected(w), 0);
    /* writes fail clearly while it is down */
    err[0] = 0;
    int rc = tg_store_put(g_s, k, kl, "x", 1, 0, NULL, err, sizeof(err));
    assert_true(rc == TG_STORE_EUNAVAIL || rc == TG_STORE_EUNKNOWN);
    assert_int_equal(etcd_restart(&g_proc), 0);
    for (int i = 20; i < 40; i++) {
        char name[16];
        snprintf(name, sizeof(name), "kw/%02d", i);
        revs[i] = put(name, "after");
    }
    /* events 10..39 arrive exactly once, in order */
    int64_t last = 0;
    for (int i = 10; i < 40; i++) {
        tg_store_event_t *ev = next_ev(w, 15000);
        char want[64];
        size_t wl = K(want, "");
        wl += (size_t)snprintf(want + wl, sizeof(want) - wl, "kw/%02d", i);
        assert_int_equal(ev->ev_kv.kv_key_len, wl);
        assert_memory_equal(ev->ev_kv.kv_key, want, wl);
        assert_int_equal(ev->ev_kv.kv_mod_rev, revs[i]);
        assert_true(ev->ev_kv.kv_mod_rev > last);
        last = ev->ev_kv.kv_mod_rev;
        tg_store_event_free(ev);
    }
    expect_no_ev(w, 500);
    assert_int_equal(tg_store_watch_connected(w), 1);
    tg_store_watch_cancel(w);
}

/* POSTs json to the test etcd with curl(1); 0 on HTTP 200. */
static int etcd_post(const char *path, const char *json)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "curl -s -f -m 5 -o /dev/null -X POST -d '%s' %s%s", json, g_proc.ep_url,
             path);
    return system(cmd);
}

/* Runs a shell command and returns its stdout (trailing newline cut) in buf. */
static int run_cmd(const char *cmd, char *buf, size_t len)
{
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = 0;
    while (n && buf[n - 1] == '\n')
        buf[--n] = 0;
    return pclose(f);
}

/* What we write is what etcd's own client reads, and back: proves the base64
 * and the gateway shapes are right, not just symmetric. */
static void test_etcd_interop_etcdctl(void **state)
{
    (void)state;
    char k[256], err[TG_ERRLEN] = "", cmd[1024], out[512];
    size_t kl = K(k, "ctl/ours");
    const uint8_t val[] = {'h', 'i', 0x00, 0xff, '!'};
    assert_int_equal(tg_store_put(g_s, k, kl, val, sizeof(val), 0, NULL, err, sizeof(err)), 0);
    snprintf(cmd, sizeof(cmd),
             "ETCDCTL_API=3 etcdctl --endpoints=%s get '%s' --print-value-only | od -An -tx1", g_proc.ep_url,
             k);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 0);
    print_message("  etcdctl reads our value as bytes:%s\n", out);
    assert_non_null(strstr(out, "68 69 00 ff 21"));
    /* etcdctl writes, we read and watch */
    char k2[256];
    size_t kl2 = K(k2, "ctl/theirs");
    int64_t now = curr();
    tg_store_watch_t *w = NULL;
    assert_int_equal(tg_store_watch(g_s, k2, kl2, NULL, 0, 0, now + 1, &w, err, sizeof(err)), 0);
    snprintf(cmd, sizeof(cmd), "ETCDCTL_API=3 etcdctl --endpoints=%s put '%s' 'from etcdctl'", g_proc.ep_url,
             k2);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 0);
    tg_store_kv_t *kv = NULL;
    assert_int_equal(tg_store_get(g_s, k2, kl2, &kv, NULL, err, sizeof(err)), 0);
    assert_non_null(kv);
    assert_int_equal(kv->kv_val_len, 12);
    assert_memory_equal(kv->kv_val, "from etcdctl", 12);
    tg_store_kv_free(kv);
    expect_ev(w, TG_STORE_EV_PUT, "ctl/theirs", "from etcdctl", now + 1);
    tg_store_watch_cancel(w);
}

/* Create-if-absent, repeated until it is known to have applied: the way a
 * caller handles EUNKNOWN / EUNAVAIL during a failover. */
static void create_until_done(tg_store_t *s, const char *k, size_t kl, int secs)
{
    char err[TG_ERRLEN];
    double dl = now_s() + secs;
    while (now_s() < dl) {
        tg_store_cmp_t c = {.c_key = k, .c_key_len = kl, .c_target = TG_STORE_CMP_VERSION};
        tg_store_op_t p = {
            .op_type = TG_STORE_OP_PUT, .op_key = k, .op_key_len = kl, .op_val = "v", .op_val_len = 1};
        err[0] = 0;
        int rc = tg_store_txn(s, &c, 1, &p, 1, NULL, 0, NULL, err, sizeof(err));
        if (rc == 0)
            return; /* applied now, or found applied by an earlier attempt */
        if (rc != TG_STORE_EUNKNOWN && rc != TG_STORE_EUNAVAIL)
            fail_msg("create %.*s: %s", (int)kl, k, err);
        sleep_ms(100);
    }
    fail_msg("create %.*s: still failing after %d s", (int)kl, k, secs);
}

/* Starts a 3-member cluster, opens a store on its three endpoints (2 s
 * timeout) and watches prefix (3 bytes) from now in *w. */
static tg_store_t *cluster_open(etcd_proc_t nodes[3], const char *prefix, tg_store_watch_t **w)
{
    char spec[300], err[TG_ERRLEN] = "";
    memset(nodes, 0, 3 * sizeof(nodes[0]));
    if (etcd_cluster_start(nodes, 3)) {
        for (int i = 0; i < 3; i++)
            etcd_stop(&nodes[i]);
        fail_msg("cannot start a 3-member etcd cluster");
    }
    snprintf(spec, sizeof(spec), "etcd:%s,%s,%s", nodes[0].ep_url, nodes[1].ep_url, nodes[2].ep_url);
    tg_store_opts_t o = {.so_timeout_ms = 2000};
    tg_store_t *s = NULL;
    assert_int_equal(tg_store_open(&s, spec, &o, err, sizeof(err)), 0);
    assert_int_equal(tg_store_watch(s, prefix, 3, NULL, 0, 1, 0, w, err, sizeof(err)), 0);
    return s;
}

/* A 3-member cluster loses the member the client and its watch use: requests
 * fail over to the others, the watch resumes on another member, and every
 * change is seen exactly once, in order. */
static void test_etcd_cluster_failover(void **state)
{
    (void)state;
    etcd_proc_t nodes[3];
    char err[TG_ERRLEN] = "", k[256];
    tg_store_watch_t *w = NULL;
    tg_store_t *s = cluster_open(nodes, "cf/", &w);
    for (int i = 0; i < 30; i++) {
        if (i == 10)
            etcd_kill(&nodes[0]); /* the first endpoint: where requests and the watch go */
        size_t kl = (size_t)snprintf(k, sizeof(k), "cf/%02d", i);
        create_until_done(s, k, kl, 20);
    }
    tg_store_range_req_t rq = {.rq_key = "cf/", .rq_key_len = 3, .rq_prefix = 1};
    tg_store_range_res_t res;
    assert_int_equal(tg_store_range(s, &rq, &res, err, sizeof(err)), 0);
    assert_int_equal(res.rs_n, 30);
    int64_t last = 0;
    for (size_t i = 0; i < 30; i++) {
        tg_store_event_t *ev = next_ev(w, 15000);
        assert_int_equal(ev->ev_type, TG_STORE_EV_PUT);
        assert_int_equal(ev->ev_kv.kv_key_len, res.rs_kvs[i].kv_key_len); /* created in key order */
        assert_memory_equal(ev->ev_kv.kv_key, res.rs_kvs[i].kv_key, res.rs_kvs[i].kv_key_len);
        assert_int_equal(ev->ev_kv.kv_mod_rev, res.rs_kvs[i].kv_mod_rev);
        assert_true(ev->ev_kv.kv_mod_rev > last);
        last = ev->ev_kv.kv_mod_rev;
        tg_store_event_free(ev);
    }
    tg_store_range_res_free(&res);
    expect_no_ev(w, 300);
    tg_store_watch_cancel(w);
    tg_store_close(s);
    for (int i = 0; i < 3; i++)
        etcd_stop(&nodes[i]);
}

/* The member the client and its watch use stops answering without closing
 * its connections (SIGSTOP: a hung host, or a connection left half-open by
 * a network fault). The channel's keepalive finds it dead (~20 s), writes
 * move to another member, and the watch resumes there: every change seen
 * once, in order. Without keepalive the watch waited forever. */
static void test_etcd_frozen_member(void **state)
{
    (void)state;
    etcd_proc_t nodes[3];
    char k[64];
    tg_store_watch_t *w = NULL;
    tg_store_t *s = cluster_open(nodes, "fz/", &w);
    double t0 = now_s();
    for (int i = 0; i < 6; i++) {
        if (i == 2) {
            assert_int_equal(kill(nodes[0].ep_pid, SIGSTOP), 0); /* the first endpoint */
            t0 = now_s();
        }
        size_t kl = (size_t)snprintf(k, sizeof(k), "fz/%02d", i);
        create_until_done(s, k, kl, 60);
    }
    print_message("  writes moved off the frozen member in %.1f s\n", now_s() - t0);
    int64_t last = 0;
    for (int i = 0; i < 6; i++) {
        tg_store_event_t *ev = next_ev(w, 45000);
        size_t kl = (size_t)snprintf(k, sizeof(k), "fz/%02d", i);
        assert_int_equal(ev->ev_type, TG_STORE_EV_PUT);
        assert_int_equal(ev->ev_kv.kv_key_len, kl);
        assert_memory_equal(ev->ev_kv.kv_key, k, kl);
        assert_true(ev->ev_kv.kv_mod_rev > last);
        last = ev->ev_kv.kv_mod_rev;
        tg_store_event_free(ev);
    }
    print_message("  the watch resumed on another member %.1f s after the freeze\n", now_s() - t0);
    expect_no_ev(w, 300);
    assert_int_equal(tg_store_watch_connected(w), 1);
    tg_store_watch_cancel(w);
    tg_store_close(s);
    kill(nodes[0].ep_pid, SIGCONT);
    for (int i = 0; i < 3; i++)
        etcd_stop(&nodes[i]);
}

/* The watch's member loses its leader (the other two frozen: from where it
 * stands, a minority partition). Because the watch asks "hasleader", etcd
 * ends the stream after a few election timeouts and the watch reads
 * disconnected, instead of looking healthy while it can deliver nothing;
 * once a leader is back it resumes without loss. */
static void test_etcd_watch_no_leader(void **state)
{
    (void)state;
    etcd_proc_t nodes[3];
    char k[64];
    tg_store_watch_t *w = NULL;
    tg_store_t *s = cluster_open(nodes, "hl/", &w);
    size_t kl = (size_t)snprintf(k, sizeof(k), "hl/00");
    create_until_done(s, k, kl, 20);
    tg_store_event_t *ev = next_ev(w, 15000);
    tg_store_event_free(ev);
    assert_int_equal(tg_store_watch_connected(w), 1);
    assert_int_equal(kill(nodes[1].ep_pid, SIGSTOP), 0);
    assert_int_equal(kill(nodes[2].ep_pid, SIGSTOP), 0);
    double t0 = now_s();
    while (tg_store_watch_connected(w) && now_s() < t0 + 20)
        sleep_ms(100);
    print_message("  no leader: the watch reads disconnected after %.1f s\n", now_s() - t0);
    int lost = !tg_store_watch_connected(w);
    kill(nodes[1].ep_pid, SIGCONT);
    kill(nodes[2].ep_pid, SIGCONT);
    assert_true(lost);
    kl = (size_t)snprintf(k, sizeof(k), "hl/01");
    create_until_done(s, k, kl, 30);
    ev = next_ev(w, 30000);
    assert_int_equal(ev->ev_kv.kv_key_len, kl);
    assert_memory_equal(ev->ev_kv.kv_key, k, kl);
    tg_store_event_free(ev);
    expect_no_ev(w, 300);
    tg_store_watch_cancel(w);
    tg_store_close(s);
    for (int i = 0; i < 3; i++)
        etcd_stop(&nodes[i]);
}

/* Runs last: it turns etcd's auth on for good. */
static void test_etcd_auth(void **state)
{
    (void)state;
    char spec[128], err[TG_ERRLEN] = "", k[256];
    size_t kl = K(k, "auth");
    assert_int_equal(etcd_post("/v3/auth/role/add", "{\"name\":\"root\"}"), 0);
    assert_int_equal(etcd_post("/v3/auth/user/add", "{\"name\":\"root\",\"password\":\"s3cret\"}"), 0);
    assert_int_equal(etcd_post("/v3/auth/user/grant", "{\"user\":\"root\",\"role\":\"root\"}"), 0);
    assert_int_equal(etcd_post("/v3/auth/enable", "{}"), 0);
    /* no credentials: refused, clearly */
    int rc = tg_store_put(g_s, k, kl, "v", 1, 0, NULL, err, sizeof(err));
    print_message("  no credentials: %s\n", err);
    assert_int_equal(rc, TG_STORE_EAUTH);
    snprintf(spec, sizeof(spec), "etcd:%s", g_proc.ep_url);
    tg_store_opts_t bad = {.so_username = "root", .so_password = "wrong"};
    tg_store_t *s = NULL;
    err[0] = 0;
    rc = tg_store_open(&s, spec, &bad, err, sizeof(err));
    print_message("  wrong password: %s\n", err);
    assert_int_equal(rc, TG_STORE_EAUTH);
    assert_null(s);
    tg_store_opts_t good = {.so_username = "root", .so_password = "s3cret"};
    err[0] = 0;
    assert_int_equal(tg_store_open(&s, spec, &good, err, sizeof(err)), 0);
    int64_t rev = 0;
    assert_int_equal(tg_store_put(s, k, kl, "v", 1, 0, &rev, err, sizeof(err)), 0);
    tg_store_watch_t *w = NULL;
    assert_int_equal(tg_store_watch(s, k, kl, NULL, 0, 0, rev, &w, err, sizeof(err)), 0);
    tg_store_event_t *ev = next_ev(w, 5000);
    assert_int_equal(ev->ev_kv.kv_mod_rev, rev);
    tg_store_event_free(ev);
    /* the harness runs etcd with --auth-token-ttl 1: the token expires and
       the client authenticates again on its own */
    sleep_ms(2500);
    err[0] = 0;
    assert_int_equal(tg_store_put(s, k, kl, "v2", 2, 0, &rev, err, sizeof(err)), 0);
    ev = next_ev(w, 5000);
    assert_int_equal(ev->ev_kv.kv_mod_rev, rev);
    tg_store_event_free(ev);
    tg_store_watch_cancel(w);
    tg_store_close(s);
}

/* ---- main ----------------------------------------------------------------- */

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(int argc, char **argv)
{
    const char *b = argc > 1 ? argv[1] : "lmdb";
    signal(SIGPIPE, SIG_IGN);
    g_etcd = strcmp(b, "etcd") == 0;
    if (!g_etcd && strcmp(b, "lmdb") != 0) {
        fprintf(stderr, "usage: %s lmdb|etcd\n", argv[0]);
        return 2;
    }
    if (g_etcd && etcd_start(&g_proc)) {
        fprintf(stderr, "cannot start etcd (/usr/bin/etcd)\n");
        etcd_stop(&g_proc);
        return 1;
    }
    const struct CMUnitTest shared[] = {
        T(test_put_get_versions),
        T(test_binary_keys_values),
        T(test_range_pagination),
        T(test_range_at_pinned_revision),
        T(test_delete),
        T(test_txn_compares),
        T(test_cas_race),
        T(test_revisions_monotonic),
        T(test_watch_live_and_replay),
        T(test_watch_txn_and_fd),
        T(test_compaction_resync),
        T(test_compaction_keeps_latest),
        T(test_lease_expiry),
        T(test_lease_keepalive_revoke),
        T(test_limits),
        T(test_concurrent_writers),
    };
    const struct CMUnitTest lmdb[] = {
        T(test_lmdb_durable_reopen), T(test_lmdb_alloc_failures), T(test_lmdb_auto_compaction),
        T(test_lmdb_auto_compaction_by_time),
        T(test_lmdb_killed_writer),  T(test_lmdb_map_full),       T(test_lmdb_corrupt_files),
    };
    const struct CMUnitTest etcd[] = {
        T(test_etcd_unreachable),
        T(test_etcd_no_answer),
        T(test_etcd_failover),
        T(test_etcd_interop_etcdctl),
        T(test_etcd_killed_mid_watch),
        T(test_etcd_cluster_failover),
        T(test_etcd_frozen_member),
        T(test_etcd_watch_no_leader),
        T(test_etcd_auth), /* last: leaves auth on */
    };
    int fails =
        cmocka_run_group_tests_name(g_etcd ? "conformance (etcd)" : "conformance (lmdb)", shared, NULL, NULL);
    if (g_etcd)
        fails += cmocka_run_group_tests_name("etcd only", etcd, NULL, NULL);
    else
        fails += cmocka_run_group_tests_name("lmdb only", lmdb, NULL, NULL);
    if (g_etcd)
        etcd_stop(&g_proc);
    return fails ? 1 : 0;
}
