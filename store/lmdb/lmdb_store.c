/* lmdb_store.c: the embedded tg_store backend on LMDB (Debian liblmdb).
 *
 * Layout (named databases in one environment, dir/data.mdb):
 *   meta   "format" -> "tollgate-store-1", "rev" -> current revision,
 *          "compact" -> compaction point, "lease_seq" -> last lease id
 *   kv     key -> [create_rev][mod_rev][version][lease] (int64 each) + value
 *   log    rev (8 bytes big-endian) + sub (4 bytes BE) -> one event, with the
 *          key's state before it (so reads at an old revision can undo it)
 *   lease  id (8 BE) -> [ttl_s][expiry, ms since the epoch]
 *   lkeys  id (8 BE) + key -> "" (the keys attached to a lease)
 *
 * Every write is one LMDB write transaction, committed with fsync (unless
 * so_nosync), under one process-wide writer mutex that also orders watch
 * notifications: a write's events are pushed to the watchers after its commit
 * and before the next write starts, so watchers see revisions in order.
 * A watch from an old revision replays the log under the same mutex, then
 * joins the live list: nothing is missed or repeated between the two.
 * Reads run in parallel read transactions (MDB_NOTLS: any thread).
 *
 * MDB_MAP_FULL: the writer aborts, doubles the map (mdb_env_set_mapsize needs
 * no transaction open in the process, so every transaction holds a shared
 * rwlock that the resize takes exclusively), and retries the same write, up
 * to so_map_size_max; then the write fails with TG_STORE_EFULL and nothing
 * changes.
 *
 * One process per directory: an flock on dir/tollgate.lock (LMDB alone would
 * let a second process write, but its watchers and lease expiry would not see
 * the first one's commits). */
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/tg_log.h"
#include "store/store_int.h"

#define FORMAT "tollgate-store-1"
#define MAPFULL 1000 /* internal: the txn hit MDB_MAP_FULL, grow and retry */
#define HDR 32       /* create, mod, version, lease */
#define HIST_SAMPLES 1024 /* (time, revision) samples for time-bounded history */

typedef struct lwatch {
    struct lwatch *lw_next;
    tg_store_watch_t *lw_w;
} lwatch_t;

typedef struct lstore {
    struct tg_store ls_base;
    MDB_env *ls_env;
    MDB_dbi ls_meta, ls_kv, ls_log, ls_lease, ls_lkeys;
    pthread_rwlock_t ls_envlk; /* shared: any txn; exclusive: map resize */
    pthread_mutex_t ls_wmu;    /* the group-commit leader; guards ls_watches */
    pthread_mutex_t ls_qmu;    /* guards the write queue below */
    pthread_cond_t ls_qcond;   /* a group finished */
    struct wreq *ls_qhead, *ls_qtail;
    int ls_leading; /* a group commit is under way */
    lwatch_t *ls_watches;
    size_t ls_map, ls_map_max;
    int ls_lockfd;
    int ls_tick_ms;
    int64_t ls_keep; /* revisions of history to keep, <= 0 = all */
    /* time-bounded history (etcd's periodic auto-compaction): the lease
     * thread samples (monotonic ms, revision) into a ring and compacts to
     * the revision that was current ls_keep_ms ago; lease thread only */
    int64_t ls_keep_ms; /* <= 0: no time bound */
    int64_t ls_samp_t[HIST_SAMPLES], ls_samp_rev[HIST_SAMPLES];
    size_t ls_samp_n, ls_samp_next;
    int64_t ls_samp_every_ms, ls_samp_last, ls_tcomp_last;
    pthread_t ls_thr;
    int ls_thr_started;
    pthread_mutex_t ls_stopmu;
    pthread_cond_t ls_stopcond;
    int ls_stopping;
} lstore_t;

/* One event of a write transaction, kept until its commit is notified. */
typedef struct wev {
    int we_type;
    tg_store_kv_t we_kv; /* bytes: the op's or the pool's (add_event) */
} wev_t;

typedef struct wctx {
    tg_pool_t *wc_pool;
    wev_t *wc_ev;
    size_t wc_n, wc_cap;
    int64_t wc_rev;  /* revision before the txn */
    int wc_changed;  /* any change: the revision moves to wc_rev + 1 */
    uint32_t wc_sub; /* next log sub-index */
} wctx_t;

/* ---- encoding --------------------------------------------------------------- */

static void put64be(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get64be(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void put32be(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint32_t get32be(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void hdr_put(uint8_t *p, const tg_store_kv_t *kv)
{
    put64be(p, (uint64_t)kv->kv_create_rev);
    put64be(p + 8, (uint64_t)kv->kv_mod_rev);
    put64be(p + 16, (uint64_t)kv->kv_version);
    put64be(p + 24, (uint64_t)kv->kv_lease);
}

static void hdr_get(const uint8_t *p, tg_store_kv_t *kv)
{
    kv->kv_create_rev = (int64_t)get64be(p);
    kv->kv_mod_rev = (int64_t)get64be(p + 8);
    kv->kv_version = (int64_t)get64be(p + 16);
    kv->kv_lease = (int64_t)get64be(p + 24);
}

/* kv record -> kv (pointing into the record). 0 or ECORRUPT. */
static int kv_decode(const MDB_val *k, const MDB_val *v, tg_store_kv_t *kv)
{
    if (v->mv_size < HDR)
        return TG_STORE_ECORRUPT;
    hdr_get(v->mv_data, kv);
    kv->kv_key = k->mv_data;
    kv->kv_key_len = k->mv_size;
    kv->kv_val = (const uint8_t *)v->mv_data + HDR;
    kv->kv_val_len = v->mv_size - HDR;
    return 0;
}

/* A log record: type, the kv after, and the kv before (has_prev 0 = absent). */
typedef struct logrec {
    int lr_type;
    tg_store_kv_t lr_kv;
    int lr_has_prev;
    tg_store_kv_t lr_prev;
} logrec_t;

static int log_decode(const MDB_val *v, logrec_t *r)
{
    const uint8_t *p = v->mv_data, *e = p + v->mv_size;
    memset(r, 0, sizeof(*r));
    if (e - p < 5)
        return TG_STORE_ECORRUPT;
    r->lr_type = p[0];
    uint32_t klen = get32be(p + 1);
    p += 5;
    if ((size_t)(e - p) < (size_t)klen + HDR + 4)
        return TG_STORE_ECORRUPT;
    const uint8_t *key = p;
    p += klen;
    hdr_get(p, &r->lr_kv);
    p += HDR;
    uint32_t vlen = get32be(p);
    p += 4;
    if ((size_t)(e - p) < (size_t)vlen + 1)
        return TG_STORE_ECORRUPT;
    r->lr_kv.kv_key = key;
    r->lr_kv.kv_key_len = klen;
    r->lr_kv.kv_val = p;
    r->lr_kv.kv_val_len = vlen;
    p += vlen;
    r->lr_has_prev = *p++;
    if (r->lr_has_prev) {
        if (e - p < HDR + 4)
            return TG_STORE_ECORRUPT;
        hdr_get(p, &r->lr_prev);
        p += HDR;
        uint32_t plen = get32be(p);
        p += 4;
        if ((size_t)(e - p) < plen)
            return TG_STORE_ECORRUPT;
        r->lr_prev.kv_key = key;
        r->lr_prev.kv_key_len = klen;
        r->lr_prev.kv_val = p;
        r->lr_prev.kv_val_len = plen;
    }
    return 0;
}

/* ---- errors and helpers ---------------------------------------------------- */

/* Maps an LMDB error to a store code and message. MDB_MAP_FULL becomes the
 * internal MAPFULL, with no message: the writer grows the map and retries. */
static int mdberr(int rc, const char *what, char *err, size_t errlen)
{
    /* a commit whose meta page the full disk cut short leaves LMDB refusing
     * every transaction until the environment is reopened: exit rather
     * than refuse every write while seeming able to recover */
    if (rc == MDB_PANIC) {
        TG_LOG(TG_LOG_ERROR, "store",
               "lmdb store: %s: %s: a write the full disk cut short left LMDB refusing every write until the "
               "process restarts; exiting (status %d): restart tollgate-cp after freeing space (df -h)",
               what, mdb_strerror(rc), TG_LMDB_PANIC_EXIT);
        _exit(TG_LMDB_PANIC_EXIT);
    }
    switch (rc) {
    case MDB_MAP_FULL: return MAPFULL;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_INCOMPATIBLE:
        return tg_errf(err, errlen, TG_STORE_ECORRUPT,
                       "lmdb store: %s: %s (data file corrupt or written by another program)", what,
                       mdb_strerror(rc));
    case ENOSPC:
        return tg_errf(err, errlen, TG_STORE_EIO, "lmdb store: %s: disk full (%s)", what, mdb_strerror(rc));
    case ENOMEM: return tg_errf(err, errlen, TG_STORE_ENOMEM, "lmdb store: %s: out of memory", what);
    default: return tg_errf(err, errlen, TG_STORE_EIO, "lmdb store: %s: %s", what, mdb_strerror(rc));
    }
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int meta_get(lstore_t *ls, MDB_txn *t, const char *name, int64_t *v, char *err, size_t errlen)
{
    MDB_val k = {strlen(name), (void *)name}, d;
    int rc = mdb_get(t, ls->ls_meta, &k, &d);
    if (rc == MDB_NOTFOUND) {
        *v = 0;
        return 0;
    }
    if (rc)
        return mdberr(rc, "read meta", err, errlen);
    if (d.mv_size != 8)
        return tg_errf(err, errlen, TG_STORE_ECORRUPT, "lmdb store: meta '%s' is %zu bytes, not 8", name,
                       d.mv_size);
    *v = (int64_t)get64be(d.mv_data);
    return 0;
}

static int meta_put(lstore_t *ls, MDB_txn *t, const char *name, int64_t v, char *err, size_t errlen)
{
    uint8_t b[8];
    put64be(b, (uint64_t)v);
    MDB_val k = {strlen(name), (void *)name}, d = {8, b};
    int rc = mdb_put(t, ls->ls_meta, &k, &d, 0);
    return rc ? mdberr(rc, "write meta", err, errlen) : 0;
}

/* ---- read transactions ------------------------------------------------------- */

static int rd_begin(lstore_t *ls, MDB_txn **t, char *err, size_t errlen)
{
    pthread_rwlock_rdlock(&ls->ls_envlk);
    int rc = mdb_txn_begin(ls->ls_env, NULL, MDB_RDONLY, t);
    if (rc) {
        pthread_rwlock_unlock(&ls->ls_envlk);
        return mdberr(rc, "begin read", err, errlen);
    }
    return 0;
}

static void rd_end(lstore_t *ls, MDB_txn *t)
{
    mdb_txn_abort(t);
    pthread_rwlock_unlock(&ls->ls_envlk);
}

static int l_revision(tg_store_t *s, int64_t *rev, char *err, size_t errlen)
{
    lstore_t *ls = (lstore_t *)s;
    MDB_txn *t;
    int rc = rd_begin(ls, &t, err, errlen);
    if (rc)
        return rc;
    rc = meta_get(ls, t, "rev", rev, err, errlen);
    rd_end(ls, t);
    return rc;
}

/* ---- ranges ------------------------------------------------------------------ */

/* A key's state at the read revision, when it differs from the current one. */
typedef struct ovr {
    const uint8_t *o_key;
    size_t o_key_len;
    int o_present;
    tg_store_kv_t o_kv;
    size_t o_order; /* higher = older event: the oldest after the revision wins */
} ovr_t;

static int ovr_cmp(const void *a, const void *b)
{
    const ovr_t *x = a, *y = b;
    int c = tg_store__keycmp(x->o_key, x->o_key_len, y->o_key, y->o_key_len);
    if (c)
        return c;
    return x->o_order < y->o_order ? -1 : x->o_order > y->o_order ? 1 : 0;
}

/* Appends kv to res unless the limit is reached; counts it either way. */
static int emit(tg_store_range_res_t *res, size_t cap, const tg_store_range_req_t *req,
                const tg_store_kv_t *kv, char *err, size_t errlen)
{
    res->rs_count++;
    if (req->rq_limit && (int64_t)res->rs_n >= req->rq_limit) {
        res->rs_more = 1;
        return 0;
    }
    if (res->rs_n >= cap)
        return 0; /* cannot happen: cap is sized by the caller */
    tg_store_kv_t *o = &res->rs_kvs[res->rs_n];
    *o = *kv;
    if (tg_store__kv_set(o, kv->kv_key, kv->kv_key_len, kv->kv_val, req->rq_keys_only ? 0 : kv->kv_val_len))
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory reading a range");
    if (req->rq_keys_only)
        o->kv_val_len = 0;
    res->rs_n++;
    return 0;
}

/* Grows res->rs_kvs to hold one more. */
static int res_reserve(tg_store_range_res_t *res, size_t *cap, char *err, size_t errlen)
{
    if (res->rs_n < *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 16;
    tg_store_kv_t *n = tg_realloc(res->rs_kvs, nc * sizeof(*n));
    if (!n)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory reading a range");
    res->rs_kvs = n;
    *cap = nc;
    return 0;
}

/* Reads the range in txn t as of revision at (<= the current revision cur). */
static int range_in(lstore_t *ls, MDB_txn *t, const tg_store_range_req_t *req, int64_t at, int64_t cur,
                    tg_store_range_res_t *res, char *err, size_t errlen)
{
    MDB_cursor *c = NULL;
    ovr_t *ov = NULL;
    size_t nov = 0, ovcap = 0, cap = 0, oi = 0;
    MDB_val k, v;
    int rc = 0, mrc;
    const uint8_t *start = req->rq_key, *end = req->rq_end;
    size_t slen = req->rq_key_len, elen = req->rq_end_len;

    if (at < cur) {
        /* undo every event after `at` that touched the range */
        if ((mrc = mdb_cursor_open(t, ls->ls_log, &c)))
            return mdberr(mrc, "open log cursor", err, errlen);
        for (mrc = mdb_cursor_get(c, &k, &v, MDB_LAST); mrc == 0; mrc = mdb_cursor_get(c, &k, &v, MDB_PREV)) {
            if (k.mv_size != 12) {
                rc = tg_errf(err, errlen, TG_STORE_ECORRUPT, "lmdb store: bad log key");
                goto fail;
            }
            if ((int64_t)get64be(k.mv_data) <= at)
                break;
            logrec_t r;
            if (log_decode(&v, &r)) {
                rc = tg_errf(err, errlen, TG_STORE_ECORRUPT, "lmdb store: bad log record");
                goto fail;
            }
            if (!tg_store__in_range(r.lr_kv.kv_key, r.lr_kv.kv_key_len, start, slen, end, elen))
                continue;
            if (nov == ovcap) {
                size_t nc = ovcap ? ovcap * 2 : 16;
                ovr_t *n = tg_realloc(ov, nc * sizeof(*n));
                if (!n) {
                    rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory reading history");
                    goto fail;
                }
                ov = n;
                ovcap = nc;
            }
            ov[nov] = (ovr_t){.o_key = r.lr_kv.kv_key,
                              .o_key_len = r.lr_kv.kv_key_len,
                              .o_present = r.lr_has_prev,
                              .o_kv = r.lr_prev,
                              .o_order = nov};
            nov++;
        }
        if (mrc && mrc != MDB_NOTFOUND) {
            rc = mdberr(mrc, "read log", err, errlen);
            goto fail;
        }
        mdb_cursor_close(c);
        c = NULL;
        if (nov > 1) /* ov is NULL when nothing changed since rev */
            qsort(ov, nov, sizeof(*ov), ovr_cmp);
        /* keep the oldest per key (last of each run) */
        size_t w = 0;
        for (size_t i = 0; i < nov; i++) {
            if (i + 1 < nov &&
                tg_store__keycmp(ov[i].o_key, ov[i].o_key_len, ov[i + 1].o_key, ov[i + 1].o_key_len) == 0)
                continue;
            ov[w++] = ov[i];
        }
        nov = w;
    }

    if ((mrc = mdb_cursor_open(t, ls->ls_kv, &c))) {
        rc = mdberr(mrc, "open kv cursor", err, errlen);
        goto fail;
    }
    k.mv_size = slen;
    k.mv_data = (void *)start;
    mrc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    for (;;) {
        int have = mrc == 0 && tg_store__in_range(k.mv_data, k.mv_size, start, slen, end, elen);
        if (mrc && mrc != MDB_NOTFOUND) {
            rc = mdberr(mrc, "read kv", err, errlen);
            goto fail;
        }
        if (!have && oi >= nov)
            break;
        tg_store_kv_t kv;
        int cmp = !have       ? 1
                  : oi >= nov ? -1
                              : tg_store__keycmp(k.mv_data, k.mv_size, ov[oi].o_key, ov[oi].o_key_len);
        const tg_store_kv_t *out = NULL;
        if (cmp < 0) { /* current kv unchanged since `at` */
            if (kv_decode(&k, &v, &kv)) {
                rc = tg_errf(err, errlen, TG_STORE_ECORRUPT, "lmdb store: bad kv record");
                goto fail;
            }
            out = &kv;
        } else { /* the key's state at `at` from history */
            if (ov[oi].o_present)
                out = &ov[oi].o_kv;
            oi++;
        }
        if (out) {
            if ((rc = res_reserve(res, &cap, err, errlen)) || (rc = emit(res, cap, req, out, err, errlen)))
                goto fail;
        }
        if (cmp <= 0 && have)
            mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
fail:
    if (c)
        mdb_cursor_close(c);
    tg_free(ov);
    return rc;
}

static int l_range(tg_store_t *s, const tg_store_range_req_t *req, tg_store_range_res_t *res, char *err,
                   size_t errlen)
{
    lstore_t *ls = (lstore_t *)s;
    MDB_txn *t;
    int64_t cur, comp;
    int rc = rd_begin(ls, &t, err, errlen);
    if (rc)
        return rc;
    if ((rc = meta_get(ls, t, "rev", &cur, err, errlen)) ||
        (rc = meta_get(ls, t, "compact", &comp, err, errlen)))
        goto done;
    int64_t at = req->rq_revision ? req->rq_revision : cur;
    if (at > cur) {
        rc = tg_errf(err, errlen, TG_STORE_EFUTURE, "range at revision %lld: the store is at revision %lld",
                     (long long)at, (long long)cur);
        goto done;
    }
    if (at < comp) {
        rc = tg_errf(err, errlen, TG_STORE_ECOMPACTED,
                     "range at revision %lld: compacted up to %lld; read at the current revision",
                     (long long)at, (long long)comp);
        goto done;
    }
    rc = range_in(ls, t, req, at, cur, res, err, errlen);
    res->rs_revision = cur;
done:
    rd_end(ls, t);
    return rc;
}

/* ---- the writer ------------------------------------------------------------- */

typedef int (*wfn_t)(lstore_t *ls, MDB_txn *t, wctx_t *wc, void *arg, char *err, size_t errlen);

static void notify(lstore_t *ls, const wctx_t *wc)
{
    for (lwatch_t *l = ls->ls_watches; l; l = l->lw_next) {
        tg_store_watch_t *w = l->lw_w;
        for (size_t i = 0; i < wc->wc_n; i++) {
            const tg_store_kv_t *kv = &wc->wc_ev[i].we_kv;
            if (kv->kv_mod_rev >= w->w_start_rev && /* a watch may start in the future */
                tg_store__in_range(kv->kv_key, kv->kv_key_len, w->w_key, w->w_key_len, w->w_end,
                                   w->w_end_len))
                tg_store__watch_push(w, wc->wc_ev[i].we_type, kv);
        }
    }
}

/* Grows the map; called by the writer with no txn open. */
static int grow(lstore_t *ls, char *err, size_t errlen)
{
    if (ls->ls_map >= ls->ls_map_max)
        return tg_errf(err, errlen, TG_STORE_EFULL,
                       "lmdb store full: the map reached its maximum of %zu bytes "
                       "(so_map_size_max); raise it, compact or delete data",
                       ls->ls_map_max);
    size_t n = ls->ls_map * 2;
    if (n > ls->ls_map_max || n < ls->ls_map)
        n = ls->ls_map_max;
    pthread_rwlock_wrlock(&ls->ls_envlk);
    int rc = mdb_env_set_mapsize(ls->ls_env, n);
    pthread_rwlock_unlock(&ls->ls_envlk);
    if (rc)
        return mdberr(rc, "grow the map", err, errlen);
    ls->ls_map = n;
    return 0;
}

/* One caller's write, queued for the next group commit. */
typedef struct wreq {
    struct wreq *wr_next;
    wfn_t wr_fn;
    void *wr_arg;
    wctx_t wr_wc;
    int wr_rc;
    int64_t wr_rev;
    int wr_done;
    char wr_err[TG_ERRLEN];
} wreq_t;

#define GROUP_MAX 256 /* writes per group commit: bounds latency and txn size */

/* Runs one group: a parent LMDB transaction with one nested transaction per
 * request (so a failing request rolls back alone and takes the revision it
 * would have used with it), one commit, one fsync; then the watchers hear
 * every request's events in order. Called by the current leader only, with
 * ls_wmu held. On MDB_MAP_FULL anywhere, the whole group is retried after the
 * map grows. */
static void run_group(lstore_t *ls, wreq_t *batch)
{
    for (;;) {
        MDB_txn *t = NULL;
        int rc, mapfull = 0;
        char gerr[TG_ERRLEN] = "";
        int64_t cur = 0;
        pthread_rwlock_rdlock(&ls->ls_envlk);
        rc = mdb_txn_begin(ls->ls_env, NULL, 0, &t);
        if (rc) {
            pthread_rwlock_unlock(&ls->ls_envlk);
            rc = mdberr(rc, "begin write", gerr, sizeof(gerr));
            if (rc == MAPFULL)
                rc = tg_errf(gerr, sizeof(gerr), TG_STORE_EFULL, "lmdb store full");
            goto fail_all;
        }
        rc = meta_get(ls, t, "rev", &cur, gerr, sizeof(gerr));
        if (rc) {
            mdb_txn_abort(t);
            pthread_rwlock_unlock(&ls->ls_envlk);
            goto fail_all;
        }
        for (wreq_t *r = batch; r; r = r->wr_next) {
            MDB_txn *c = NULL;
            wctx_t *wc = &r->wr_wc;
            tg_pool_reset(wc->wc_pool);
            wc->wc_ev = NULL;
            wc->wc_n = wc->wc_cap = 0;
            wc->wc_changed = 0;
            wc->wc_sub = 0;
            wc->wc_rev = cur;
            r->wr_err[0] = 0;
            rc = mdb_txn_begin(ls->ls_env, t, 0, &c);
            if (rc) {
                r->wr_rc = mdberr(rc, "begin nested write", r->wr_err, sizeof(r->wr_err));
            } else {
                r->wr_rc = r->wr_fn(ls, c, wc, r->wr_arg, r->wr_err, sizeof(r->wr_err));
                if (!r->wr_rc && wc->wc_changed)
                    r->wr_rc = meta_put(ls, c, "rev", cur + 1, r->wr_err, sizeof(r->wr_err));
                if (r->wr_rc) {
                    mdb_txn_abort(c);
                } else if ((rc = mdb_txn_commit(c))) { /* into the parent */
                    r->wr_rc = mdberr(rc, "commit nested write", r->wr_err, sizeof(r->wr_err));
                }
            }
            if (r->wr_rc == MAPFULL) {
                mapfull = 1;
                break;
            }
            if (!r->wr_rc && wc->wc_changed)
                cur++;
            r->wr_rev = cur;
        }
        if (mapfull) {
            mdb_txn_abort(t);
        } else if ((rc = mdb_txn_commit(t))) {
            rc = mdberr(rc, "commit", gerr, sizeof(gerr));
            mapfull = rc == MAPFULL;
        }
        pthread_rwlock_unlock(&ls->ls_envlk);
        if (mapfull) {
            gerr[0] = 0;
            if ((rc = grow(ls, gerr, sizeof(gerr))))
                goto fail_all;
            continue;
        }
        if (rc)
            goto fail_all;
        for (wreq_t *r = batch; r; r = r->wr_next)
            if (!r->wr_rc)
                notify(ls, &r->wr_wc);
        return;
    fail_all:
        for (wreq_t *r = batch; r; r = r->wr_next) {
            r->wr_rc = rc;
            snprintf(r->wr_err, sizeof(r->wr_err), "%s", gerr);
        }
        return;
    }
}

/* Runs fn in a write transaction, committed with fsync before it returns;
 * bumps the revision when anything changed and notifies watchers. Writers
 * that arrive while a commit is under way queue up; the first of them leads
 * the next group commit for all (one fsync for the group). */
static int write_txn(lstore_t *ls, wfn_t fn, void *arg, int64_t *rev, char *err, size_t errlen)
{
    wreq_t req;
    memset(&req, 0, sizeof(req));
    req.wr_fn = fn;
    req.wr_arg = arg;
    req.wr_wc.wc_pool = tg_pool_create(0);
    if (!req.wr_wc.wc_pool)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for a write");
    pthread_mutex_lock(&ls->ls_qmu);
    if (ls->ls_qtail)
        ls->ls_qtail->wr_next = &req;
    else
        ls->ls_qhead = &req;
    ls->ls_qtail = &req;
    while (!req.wr_done) {
        if (ls->ls_leading) {
            pthread_cond_wait(&ls->ls_qcond, &ls->ls_qmu);
            continue;
        }
        /* lead: take up to GROUP_MAX queued writes, ours among them */
        ls->ls_leading = 1;
        wreq_t *batch = ls->ls_qhead, *last = batch;
        for (int n = 1; n < GROUP_MAX && last->wr_next; n++)
            last = last->wr_next;
        ls->ls_qhead = last->wr_next;
        if (!ls->ls_qhead)
            ls->ls_qtail = NULL;
        last->wr_next = NULL;
        pthread_mutex_unlock(&ls->ls_qmu);
        pthread_mutex_lock(&ls->ls_wmu);
        run_group(ls, batch);
        pthread_mutex_unlock(&ls->ls_wmu);
        pthread_mutex_lock(&ls->ls_qmu);
        for (wreq_t *r = batch, *nx; r; r = nx) {
            nx = r->wr_next; /* r may be gone once done is seen */
            r->wr_done = 1;
        }
        ls->ls_leading = 0;
        pthread_cond_broadcast(&ls->ls_qcond);
    }
    pthread_mutex_unlock(&ls->ls_qmu);
    if (req.wr_rc) {
        tg_errf(err, errlen, req.wr_rc, "%s", req.wr_err);
    } else if (rev) {
        *rev = req.wr_rev;
    }
    tg_pool_destroy(req.wr_wc.wc_pool);
    return req.wr_rc;
}

/* Records an event: log entry (with prev state) and the watchers' event. */
static int add_event(lstore_t *ls, MDB_txn *t, wctx_t *wc, int type, const tg_store_kv_t *kv,
                     const tg_store_kv_t *prev, char *err, size_t errlen)
{
    size_t vlen = type == TG_STORE_EV_PUT ? kv->kv_val_len : 0;
    size_t plen = prev ? prev->kv_val_len : 0;
    size_t n = 5 + kv->kv_key_len + HDR + 4 + vlen + 1 + (prev ? HDR + 4 + plen : 0);
    uint8_t lk[12];
    MDB_val k = {12, lk}, v = {n, NULL};
    int rc;
    put64be(lk, (uint64_t)(wc->wc_rev + 1));
    put32be(lk + 8, wc->wc_sub++);
    if ((rc = mdb_put(t, ls->ls_log, &k, &v, MDB_RESERVE)))
        return mdberr(rc, "write log", err, errlen);
    uint8_t *p = v.mv_data;
    *p++ = (uint8_t)type;
    put32be(p, (uint32_t)kv->kv_key_len);
    p += 4;
    memcpy(p, kv->kv_key, kv->kv_key_len);
    p += kv->kv_key_len;
    hdr_put(p, kv);
    p += HDR;
    put32be(p, (uint32_t)vlen);
    p += 4;
    if (vlen)
        memcpy(p, kv->kv_val, vlen);
    p += vlen;
    *p++ = prev ? 1 : 0;
    if (prev) {
        hdr_put(p, prev);
        p += HDR;
        put32be(p, (uint32_t)plen);
        p += 4;
        if (plen)
            memcpy(p, prev->kv_val, plen);
    }
    /* the watchers' event: its bytes are not copied. A put's key and value
     * are the caller's op (alive until write_txn returns, after notify
     * copies them into each watch's queue); a delete's key is del_one's
     * copy in wc_pool. A settled-log value is ~1 MB: one copy less. */
    if (wc->wc_n == wc->wc_cap) {
        size_t nc = wc->wc_cap ? wc->wc_cap * 2 : 8;
        wev_t *ne = tg_pool_alloc(wc->wc_pool, nc * sizeof(*ne));
        if (!ne)
            return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for events");
        if (wc->wc_n)
            memcpy(ne, wc->wc_ev, wc->wc_n * sizeof(*ne));
        wc->wc_ev = ne;
        wc->wc_cap = nc;
    }
    wev_t *e = &wc->wc_ev[wc->wc_n];
    e->we_type = type;
    e->we_kv = *kv;
    e->we_kv.kv_val = vlen ? kv->kv_val : NULL;
    e->we_kv.kv_val_len = vlen;
    wc->wc_n++;
    wc->wc_changed = 1;
    return 0;
}

static int lkey_op(lstore_t *ls, MDB_txn *t, int64_t lease, const void *key, size_t klen, int add, char *err,
                   size_t errlen)
{
    uint8_t b[8 + TG_STORE_MAX_KEY];
    put64be(b, (uint64_t)lease);
    memcpy(b + 8, key, klen);
    MDB_val k = {8 + klen, b}, v = {0, NULL};
    int rc = add ? mdb_put(t, ls->ls_lkeys, &k, &v, 0) : mdb_del(t, ls->ls_lkeys, &k, NULL);
    if (rc == MDB_NOTFOUND)
        rc = 0;
    return rc ? mdberr(rc, "write lease keys", err, errlen) : 0;
}

/* Reads the current kv of key into *kv (pointing into the txn); 0, 1 when
 * missing, or an error. The pointers stay valid until the next write. */
static int kv_lookup(lstore_t *ls, MDB_txn *t, const void *key, size_t klen, tg_store_kv_t *kv, char *err,
                     size_t errlen)
{
    MDB_val k = {klen, (void *)key}, v;
    int rc = mdb_get(t, ls->ls_kv, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 1;
    if (rc)
        return mdberr(rc, "read kv", err, errlen);
    if (kv_decode(&k, &v, kv))
        return tg_errf(err, errlen, TG_STORE_ECORRUPT, "lmdb store: bad kv record");
    return 0;
}

static int do_put(lstore_t *ls, MDB_txn *t, wctx_t *wc, const tg_store_op_t *o, char *err, size_t errlen)
{
    tg_store_kv_t old, nkv, prevcopy;
    int rc, has_old;
    if (o->op_lease) {
        uint8_t lk[8];
        put64be(lk, (uint64_t)o->op_lease);
        MDB_val k = {8, lk}, v;
        rc = mdb_get(t, ls->ls_lease, &k, &v);
        if (rc == MDB_NOTFOUND)
            return tg_errf(err, errlen, TG_STORE_ENOLEASE, "put: lease %lld not found",
                           (long long)o->op_lease);
        if (rc)
            return mdberr(rc, "read lease", err, errlen);
    }
    rc = kv_lookup(ls, t, o->op_key, o->op_key_len, &old, err, errlen);
    if (rc < 0)
        return rc;
    has_old = rc == 0;
    if (has_old) {
        /* copy: the old record's memory is overwritten by the put below */
        prevcopy = old;
        uint8_t *b = tg_pool_alloc(wc->wc_pool, old.kv_val_len + 1);
        if (!b)
            return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for a put");
        if (old.kv_val_len)
            memcpy(b, old.kv_val, old.kv_val_len);
        prevcopy.kv_val = b;
        prevcopy.kv_key = o->op_key;
    }
    nkv.kv_key = o->op_key;
    nkv.kv_key_len = o->op_key_len;
    nkv.kv_val = o->op_val;
    nkv.kv_val_len = o->op_val_len;
    nkv.kv_mod_rev = wc->wc_rev + 1;
    nkv.kv_create_rev = has_old ? old.kv_create_rev : nkv.kv_mod_rev;
    nkv.kv_version = has_old ? old.kv_version + 1 : 1;
    nkv.kv_lease = o->op_lease;
    MDB_val k = {o->op_key_len, (void *)o->op_key}, v = {HDR + o->op_val_len, NULL};
    if ((rc = mdb_put(t, ls->ls_kv, &k, &v, MDB_RESERVE)))
        return mdberr(rc, "write kv", err, errlen);
    hdr_put(v.mv_data, &nkv);
    if (o->op_val_len)
        memcpy((uint8_t *)v.mv_data + HDR, o->op_val, o->op_val_len);
    if (has_old && prevcopy.kv_lease && prevcopy.kv_lease != o->op_lease &&
        (rc = lkey_op(ls, t, prevcopy.kv_lease, o->op_key, o->op_key_len, 0, err, errlen)))
        return rc;
    if (o->op_lease && (rc = lkey_op(ls, t, o->op_lease, o->op_key, o->op_key_len, 1, err, errlen)))
        return rc;
    return add_event(ls, t, wc, TG_STORE_EV_PUT, &nkv, has_old ? &prevcopy : NULL, err, errlen);
}

/* Deletes one key whose current record is kv (copied first). */
static int del_one(lstore_t *ls, MDB_txn *t, wctx_t *wc, const tg_store_kv_t *kv, char *err, size_t errlen)
{
    tg_store_kv_t prev = *kv, dkv;
    uint8_t *b = tg_pool_alloc(wc->wc_pool, kv->kv_key_len + kv->kv_val_len + 1);
    int rc;
    if (!b)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for a delete");
    memcpy(b, kv->kv_key, kv->kv_key_len);
    if (kv->kv_val_len)
        memcpy(b + kv->kv_key_len, kv->kv_val, kv->kv_val_len);
    prev.kv_key = b;
    prev.kv_val = b + kv->kv_key_len;
    MDB_val k = {prev.kv_key_len, b};
    if ((rc = mdb_del(t, ls->ls_kv, &k, NULL)))
        return mdberr(rc, "delete kv", err, errlen);
    if (prev.kv_lease && (rc = lkey_op(ls, t, prev.kv_lease, prev.kv_key, prev.kv_key_len, 0, err, errlen)))
        return rc;
    memset(&dkv, 0, sizeof(dkv));
    dkv.kv_key = prev.kv_key;
    dkv.kv_key_len = prev.kv_key_len;
    dkv.kv_mod_rev = wc->wc_rev + 1;
    return add_event(ls, t, wc, TG_STORE_EV_DELETE, &dkv, &prev, err, errlen);
}

static int do_delete(lstore_t *ls, MDB_txn *t, wctx_t *wc, const tg_store_op_t *o, int64_t *deleted,
                     char *err, size_t errlen)
{
    tg_store_range_req_t req = {
        .rq_key = o->op_key, .rq_key_len = o->op_key_len, .rq_end = o->op_end, .rq_end_len = o->op_end_len};
    tg_store_range_res_t res;
    memset(&res, 0, sizeof(res));
    /* collect first (copies), then delete: simpler than deleting under a cursor */
    int rc = range_in(ls, t, &req, wc->wc_rev, wc->wc_rev, &res, err, errlen);
    for (size_t i = 0; !rc && i < res.rs_n; i++)
        rc = del_one(ls, t, wc, &res.rs_kvs[i], err, errlen);
    *deleted = rc ? 0 : (int64_t)res.rs_n;
    tg_store_range_res_free(&res);
    return rc;
}

static int cmp_holds(lstore_t *ls, MDB_txn *t, const tg_store_cmp_t *c, int *holds, char *err, size_t errlen)
{
    tg_store_kv_t kv;
    int rc = kv_lookup(ls, t, c->c_key, c->c_key_len, &kv, err, errlen);
    if (rc < 0)
        return rc;
    int missing = rc == 1;
    int r;
    if (c->c_target == TG_STORE_CMP_VALUE) {
        if (missing) { /* as etcd: a value compare on a missing key is false */
            *holds = 0;
            return 0;
        }
        r = tg_store__keycmp(kv.kv_val, kv.kv_val_len, c->c_val, c->c_val_len);
    } else {
        int64_t x = 0;
        if (!missing)
            x = c->c_target == TG_STORE_CMP_VERSION      ? kv.kv_version
                : c->c_target == TG_STORE_CMP_CREATE_REV ? kv.kv_create_rev
                                                         : kv.kv_mod_rev;
        r = x < c->c_num ? -1 : x > c->c_num ? 1 : 0;
    }
    switch (c->c_op) {
    case TG_STORE_EQ: *holds = r == 0; break;
    case TG_STORE_NE: *holds = r != 0; break;
    case TG_STORE_LT: *holds = r < 0; break;
    default: *holds = r > 0; break;
    }
    return 0;
}

typedef struct txnarg {
    const tg_store_cmp_t *ta_cmps;
    size_t ta_ncmp;
    const tg_store_op_t *ta_ops[2];
    size_t ta_nops[2];
    tg_store_txn_res_t *ta_res;
} txnarg_t;

static int txn_fn(lstore_t *ls, MDB_txn *t, wctx_t *wc, void *arg, char *err, size_t errlen)
{
    txnarg_t *a = arg;
    tg_store_txn_res_t *res = a->ta_res;
    int ok = 1, rc = 0;
    tg_store_txn_res_free(res); /* a retry after map growth starts clean */
    for (size_t i = 0; ok && i < a->ta_ncmp; i++)
        if ((rc = cmp_holds(ls, t, &a->ta_cmps[i], &ok, err, errlen)))
            return rc;
    const tg_store_op_t *ops = a->ta_ops[ok ? 0 : 1];
    size_t n = a->ta_nops[ok ? 0 : 1];
    res->tx_succeeded = ok;
    if (n) {
        res->tx_res = tg_calloc(n, sizeof(*res->tx_res));
        if (!res->tx_res)
            return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for txn results");
        res->tx_n = n;
    }
    for (size_t i = 0; !rc && i < n; i++) {
        const tg_store_op_t *o = &ops[i];
        tg_store_op_res_t *r = &res->tx_res[i];
        r->or_type = o->op_type;
        if (o->op_type == TG_STORE_OP_PUT) {
            rc = do_put(ls, t, wc, o, err, errlen);
        } else if (o->op_type == TG_STORE_OP_DELETE) {
            rc = do_delete(ls, t, wc, o, &r->or_deleted, err, errlen);
        } else {
            tg_store_range_req_t req = {.rq_key = o->op_key,
                                        .rq_key_len = o->op_key_len,
                                        .rq_end = o->op_end,
                                        .rq_end_len = o->op_end_len,
                                        .rq_limit = o->op_limit};
            rc = range_in(ls, t, &req, wc->wc_rev, wc->wc_rev, &r->or_range, err, errlen);
            /* etcd reports the revision as of the read inside the txn */
            r->or_range.rs_revision = wc->wc_rev + (wc->wc_changed ? 1 : 0);
        }
    }
    return rc;
}

static int l_txn(tg_store_t *s, const tg_store_cmp_t *cmps, size_t ncmp, const tg_store_op_t *success,
                 size_t nsuccess, const tg_store_op_t *failure, size_t nfailure, tg_store_txn_res_t *res,
                 char *err, size_t errlen)
{
    txnarg_t a = {cmps, ncmp, {success, failure}, {nsuccess, nfailure}, res};
    return write_txn((lstore_t *)s, txn_fn, &a, &res->tx_revision, err, errlen);
}

/* ---- compaction ------------------------------------------------------------- */

static int compact_fn(lstore_t *ls, MDB_txn *t, wctx_t *wc, void *arg, char *err, size_t errlen)
{
    int64_t rev = *(int64_t *)arg, comp;
    MDB_cursor *c;
    MDB_val k, v;
    int rc = meta_get(ls, t, "compact", &comp, err, errlen);
    if (rc)
        return rc;
    if (rev > wc->wc_rev)
        return tg_errf(err, errlen, TG_STORE_EFUTURE, "compact to %lld: the store is at revision %lld",
                       (long long)rev, (long long)wc->wc_rev);
    if (rev <= comp)
        return tg_errf(err, errlen, TG_STORE_ECOMPACTED, "compact to %lld: already compacted up to %lld",
                       (long long)rev, (long long)comp);
    if ((rc = mdb_cursor_open(t, ls->ls_log, &c)))
        return mdberr(rc, "open log cursor", err, errlen);
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_FIRST)) == 0) {
        if (k.mv_size != 12 || (int64_t)get64be(k.mv_data) >= rev)
            break;
        if ((rc = mdb_cursor_del(c, 0)))
            break;
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND)
        return mdberr(rc, "compact the log", err, errlen);
    return meta_put(ls, t, "compact", rev, err, errlen);
}

static int l_compact(tg_store_t *s, int64_t rev, char *err, size_t errlen)
{
    return write_txn((lstore_t *)s, compact_fn, &rev, NULL, err, errlen);
}

/* ---- leases ----------------------------------------------------------------- */

typedef struct leasearg {
    int64_t la_id;
    int64_t la_ttl;
} leasearg_t;

static int grant_fn(lstore_t *ls, MDB_txn *t, wctx_t *wc, void *arg, char *err, size_t errlen)
{
    leasearg_t *a = arg;
    int64_t seq;
    uint8_t kb[8], vb[16];
    (void)wc;
    int rc = meta_get(ls, t, "lease_seq", &seq, err, errlen);
    if (rc)
        return rc;
    a->la_id = seq + 1;
    if ((rc = meta_put(ls, t, "lease_seq", a->la_id, err, errlen)))
        return rc;
    put64be(kb, (uint64_t)a->la_id);
    put64be(vb, (uint64_t)a->la_ttl);
    put64be(vb + 8, (uint64_t)(now_ms() + a->la_ttl * 1000));
    MDB_val k = {8, kb}, v = {16, vb};
    rc = mdb_put(t, ls->ls_lease, &k, &v, 0);
    return rc ? mdberr(rc, "write lease", err, errlen) : 0;
}

static int l_lease_grant(tg_store_t *s, int64_t ttl, int64_t *id, char *err, size_t errlen)
{
    leasearg_t a = {0, ttl};
    int rc = write_txn((lstore_t *)s, grant_fn, &a, NULL, err, errlen);
    if (!rc)
        *id = a.la_id;
    return rc;
}

static int keepalive_fn(lstore_t *ls, MDB_txn *t, wctx_t *wc, void *arg, char *err, size_t errlen)
{
    leasearg_t *a = arg;
    uint8_t kb[8], vb[16];
    (void)wc;
    put64be(kb, (uint64_t)a->la_id);
    MDB_val k = {8, kb}, v;
    int rc = mdb_get(t, ls->ls_lease, &k, &v);
    if (rc == MDB_NOTFOUND)
        return tg_errf(err, errlen, TG_STORE_ENOLEASE, "lease %lld not found (expired or revoked)",
                       (long long)a->la_id);
    if (rc)
        return mdberr(rc, "read lease", err, errlen);
    if (v.mv_size != 16)
        return tg_errf(err, errlen, TG_STORE_ECORRUPT, "lmdb store: bad lease record");
    a->la_ttl = (int64_t)get64be(v.mv_data);
    if ((int64_t)get64be((uint8_t *)v.mv_data + 8) <= now_ms())
        return tg_errf(err, errlen, TG_STORE_ENOLEASE, "lease %lld expired", (long long)a->la_id);
    put64be(vb, (uint64_t)a->la_ttl);
    put64be(vb + 8, (uint64_t)(now_ms() + a->la_ttl * 1000));
    v.mv_size = 16;
    v.mv_data = vb;
    rc = mdb_put(t, ls->ls_lease, &k, &v, 0);
    return rc ? mdberr(rc, "write lease", err, errlen) : 0;
}

static int l_lease_keepalive(tg_store_t *s, int64_t id, int64_t *ttl, char *err, size_t errlen)
{
    leasearg_t a = {id, 0};
    int rc = write_txn((lstore_t *)s, keepalive_fn, &a, NULL, err, errlen);
    if (!rc)
        *ttl = a.la_ttl;
    return rc;
}

static int revoke_fn(lstore_t *ls, MDB_txn *t, wctx_t *wc, void *arg, char *err, size_t errlen)
{
    leasearg_t *a = arg;
    uint8_t kb[8];
    MDB_cursor *c;
    MDB_val k, v;
    int rc;
    put64be(kb, (uint64_t)a->la_id);
    k.mv_size = 8;
    k.mv_data = kb;
    rc = mdb_get(t, ls->ls_lease, &k, &v);
    if (rc == MDB_NOTFOUND)
        return tg_errf(err, errlen, TG_STORE_ENOLEASE, "lease %lld not found (expired or revoked)",
                       (long long)a->la_id);
    if (rc || (rc = mdb_del(t, ls->ls_lease, &k, NULL)))
        return mdberr(rc, "revoke lease", err, errlen);
    /* delete each attached key: lkeys entries are removed by del_one */
    for (;;) {
        uint8_t keybuf[TG_STORE_MAX_KEY];
        size_t klen;
        if ((rc = mdb_cursor_open(t, ls->ls_lkeys, &c)))
            return mdberr(rc, "open lease keys", err, errlen);
        k.mv_size = 8;
        k.mv_data = kb;
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        int mine =
            rc == 0 && k.mv_size > 8 && k.mv_size - 8 <= TG_STORE_MAX_KEY && memcmp(k.mv_data, kb, 8) == 0;
        if (mine) {
            klen = k.mv_size - 8;
            memcpy(keybuf, (uint8_t *)k.mv_data + 8, klen);
        }
        mdb_cursor_close(c);
        if (rc && rc != MDB_NOTFOUND)
            return mdberr(rc, "read lease keys", err, errlen);
        if (!mine)
            break;
        tg_store_kv_t kv;
        rc = kv_lookup(ls, t, keybuf, klen, &kv, err, errlen);
        if (rc < 0)
            return rc;
        if (rc == 0 && kv.kv_lease == a->la_id) {
            if ((rc = del_one(ls, t, wc, &kv, err, errlen)))
                return rc;
        } else if ((rc = lkey_op(ls, t, a->la_id, keybuf, klen, 0, err, errlen))) {
            return rc; /* stale entry */
        }
    }
    return 0;
}

static int l_lease_revoke(tg_store_t *s, int64_t id, char *err, size_t errlen)
{
    leasearg_t a = {id, 0};
    return write_txn((lstore_t *)s, revoke_fn, &a, NULL, err, errlen);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The revision that was current ls_keep_ms before now (the newest sample
 * at least that old), or 0 when the samples do not reach back that far. */
static int64_t time_target(const lstore_t *ls, int64_t now)
{
    for (size_t i = 0; i < ls->ls_samp_n; i++) {
        size_t k = (ls->ls_samp_next + HIST_SAMPLES - 1 - i) % HIST_SAMPLES;
        if (ls->ls_samp_t[k] <= now - ls->ls_keep_ms)
            return ls->ls_samp_rev[k];
    }
    return 0;
}

/* Keeps the history log bounded, by revisions and by time, whichever keeps
 * less. By revisions: once it holds more than ls_keep + 10% revisions,
 * compact down to ls_keep (a modest transaction per 10% of the window, not
 * one per write). By time: compact to the revision that was current
 * ls_keep_ms ago, at most every tenth of the window (as etcd's periodic
 * compactor does). A watcher further behind gets ECOMPACTED and resyncs. */
static void auto_compact(lstore_t *ls)
{
    MDB_txn *t;
    int64_t cur = 0, comp = 0, to = 0, now = mono_ms();
    char err[TG_ERRLEN] = "";
    if ((ls->ls_keep <= 0 && ls->ls_keep_ms <= 0) || rd_begin(ls, &t, err, sizeof(err)))
        return;
    int rc =
        meta_get(ls, t, "rev", &cur, err, sizeof(err)) || meta_get(ls, t, "compact", &comp, err, sizeof(err));
    rd_end(ls, t);
    if (rc)
        return;
    if (ls->ls_keep > 0 && cur - comp > ls->ls_keep + ls->ls_keep / 10)
        to = cur - ls->ls_keep;
    if (ls->ls_keep_ms > 0) {
        if (ls->ls_samp_n == 0 || now - ls->ls_samp_last >= ls->ls_samp_every_ms) {
            ls->ls_samp_t[ls->ls_samp_next] = now;
            ls->ls_samp_rev[ls->ls_samp_next] = cur;
            ls->ls_samp_next = (ls->ls_samp_next + 1) % HIST_SAMPLES;
            if (ls->ls_samp_n < HIST_SAMPLES)
                ls->ls_samp_n++;
            ls->ls_samp_last = now;
        }
        int64_t trev = time_target(ls, now);
        if (trev > to && trev > comp && now - ls->ls_tcomp_last >= ls->ls_keep_ms / 10) {
            to = trev;
            ls->ls_tcomp_last = now;
        }
    }
    if (to <= comp)
        return;
    err[0] = 0;
    (void)l_compact(&ls->ls_base, to, err, sizeof(err)); /* ECOMPACTED: raced a caller */
}

/* The expiry thread: every tick, revokes the leases whose time has passed
 * and keeps the history bounded. */
static void *lease_thread(void *arg)
{
    lstore_t *ls = arg;
    for (;;) {
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_nsec += (long)ls->ls_tick_ms * 1000000L;
        dl.tv_sec += dl.tv_nsec / 1000000000L;
        dl.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&ls->ls_stopmu);
        while (!ls->ls_stopping && pthread_cond_timedwait(&ls->ls_stopcond, &ls->ls_stopmu, &dl) != ETIMEDOUT)
            ;
        int stop = ls->ls_stopping;
        pthread_mutex_unlock(&ls->ls_stopmu);
        if (stop)
            break;
        int64_t expired[64];
        size_t n = 0;
        MDB_txn *t;
        char err[TG_ERRLEN] = "";
        if (rd_begin(ls, &t, err, sizeof(err)))
            continue;
        MDB_cursor *c;
        MDB_val k, v;
        int64_t now = now_ms();
        if (mdb_cursor_open(t, ls->ls_lease, &c) == 0) {
            for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && n < 64;
                 rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
                if (k.mv_size == 8 && v.mv_size == 16 && (int64_t)get64be((uint8_t *)v.mv_data + 8) <= now)
                    expired[n++] = (int64_t)get64be(k.mv_data);
            mdb_cursor_close(c);
        }
        rd_end(ls, t);
        for (size_t i = 0; i < n; i++) {
            err[0] = 0;
            /* ENOLEASE: revoked meanwhile; other errors retry next tick */
            (void)l_lease_revoke(&ls->ls_base, expired[i], err, sizeof(err));
        }
        auto_compact(ls);
    }
    return NULL;
}

/* ---- watches ---------------------------------------------------------------- */

static int l_watch_start(tg_store_t *s, tg_store_watch_t *w, char *err, size_t errlen)
{
    lstore_t *ls = (lstore_t *)s;
    MDB_txn *t = NULL;
    MDB_cursor *c = NULL;
    int64_t cur, comp;
    int rc = 0, mrc;
    lwatch_t *l = tg_calloc(1, sizeof(*l));
    if (!l)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for a watch");
    l->lw_w = w;
    pthread_mutex_lock(&ls->ls_wmu); /* no commit until the watch is live */
    if ((rc = rd_begin(ls, &t, err, errlen)))
        goto fail;
    if ((rc = meta_get(ls, t, "rev", &cur, err, errlen)) ||
        (rc = meta_get(ls, t, "compact", &comp, err, errlen)))
        goto fail;
    int64_t from = w->w_start_rev ? w->w_start_rev : cur + 1;
    pthread_mutex_lock(&w->w_mu);
    w->w_next_rev = from;
    pthread_mutex_unlock(&w->w_mu);
    if (from < comp) {
        tg_store__watch_fail(w, TG_STORE_ECOMPACTED,
                             "watch from revision %lld: compacted up to %lld; resync and watch "
                             "from the current revision",
                             (long long)from, (long long)comp);
    } else if (from <= cur) { /* replay the log */
        uint8_t kb[12];
        MDB_val k = {12, kb}, v;
        put64be(kb, (uint64_t)from);
        put32be(kb + 8, 0);
        if ((mrc = mdb_cursor_open(t, ls->ls_log, &c))) {
            rc = mdberr(mrc, "open log cursor", err, errlen);
            goto fail;
        }
        for (mrc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); mrc == 0;
             mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            logrec_t r;
            if (log_decode(&v, &r)) {
                rc = tg_errf(err, errlen, TG_STORE_ECORRUPT, "lmdb store: bad log record");
                goto fail;
            }
            if (tg_store__in_range(r.lr_kv.kv_key, r.lr_kv.kv_key_len, w->w_key, w->w_key_len, w->w_end,
                                   w->w_end_len) &&
                tg_store__watch_push(w, r.lr_type, &r.lr_kv)) {
                rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory replaying history");
                goto fail;
            }
        }
        if (mrc != MDB_NOTFOUND) {
            rc = mdberr(mrc, "read log", err, errlen);
            goto fail;
        }
    }
    l->lw_next = ls->ls_watches;
    ls->ls_watches = l;
    tg_store__watch_set_connected(w, 1); /* in-process: always live */
    w->w_priv = l;
    l = NULL;
fail:
    if (c)
        mdb_cursor_close(c);
    if (t)
        rd_end(ls, t);
    pthread_mutex_unlock(&ls->ls_wmu);
    tg_free(l);
    return rc;
}

static void l_watch_stop(tg_store_t *s, tg_store_watch_t *w)
{
    lstore_t *ls = (lstore_t *)s;
    pthread_mutex_lock(&ls->ls_wmu);
    for (lwatch_t **p = &ls->ls_watches; *p; p = &(*p)->lw_next) {
        if ((*p)->lw_w == w) {
            lwatch_t *l = *p;
            *p = l->lw_next;
            tg_free(l);
            break;
        }
    }
    pthread_mutex_unlock(&ls->ls_wmu);
}

/* ---- open / close ----------------------------------------------------------- */

static void l_close(tg_store_t *s)
{
    lstore_t *ls = (lstore_t *)s;
    if (ls->ls_thr_started) {
        pthread_mutex_lock(&ls->ls_stopmu);
        ls->ls_stopping = 1;
        pthread_cond_signal(&ls->ls_stopcond);
        pthread_mutex_unlock(&ls->ls_stopmu);
        pthread_join(ls->ls_thr, NULL);
    }
    while (ls->ls_watches) { /* leaked watches: detach so nothing dangles */
        lwatch_t *l = ls->ls_watches;
        ls->ls_watches = l->lw_next;
        tg_free(l);
    }
    if (ls->ls_env)
        mdb_env_close(ls->ls_env);
    if (ls->ls_lockfd >= 0)
        close(ls->ls_lockfd); /* releases the flock */
    pthread_rwlock_destroy(&ls->ls_envlk);
    pthread_mutex_destroy(&ls->ls_wmu);
    pthread_mutex_destroy(&ls->ls_qmu);
    pthread_cond_destroy(&ls->ls_qcond);
    pthread_mutex_destroy(&ls->ls_stopmu);
    pthread_cond_destroy(&ls->ls_stopcond);
    tg_free(ls);
}

static const tg_store_backend_t lmdb_backend = {
    .b_name = "lmdb",
    .b_close = l_close,
    .b_revision = l_revision,
    .b_range = l_range,
    .b_txn = l_txn,
    .b_compact = l_compact,
    .b_lease_grant = l_lease_grant,
    .b_lease_keepalive = l_lease_keepalive,
    .b_lease_revoke = l_lease_revoke,
    .b_watch_start = l_watch_start,
    .b_watch_stop = l_watch_stop,
};

/* Opens the named databases and checks or writes the format marker. */
static int init_dbs(lstore_t *ls, char *err, size_t errlen)
{
    MDB_txn *t;
    int rc = mdb_txn_begin(ls->ls_env, NULL, 0, &t);
    if (rc)
        return mdberr(rc, "begin", err, errlen);
    static const char *names[] = {"meta", "kv", "log", "lease", "lkeys"};
    MDB_dbi *dbis[] = {&ls->ls_meta, &ls->ls_kv, &ls->ls_log, &ls->ls_lease, &ls->ls_lkeys};
    MDB_dbi main;
    MDB_stat st;
    if ((rc = mdb_dbi_open(t, NULL, 0, &main)) || (rc = mdb_stat(t, main, &st))) {
        rc = mdberr(rc, "open main db", err, errlen);
        goto fail;
    }
    int fresh = st.ms_entries == 0;
    for (size_t i = 0; i < 5; i++) {
        if ((rc = mdb_dbi_open(t, names[i], fresh ? MDB_CREATE : 0, dbis[i]))) {
            rc = rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE
                     ? tg_errf(err, errlen, TG_STORE_ECORRUPT,
                               "lmdb store: database '%s' missing: not a Tollgate store", names[i])
                     : mdberr(rc, "open db", err, errlen);
            goto fail;
        }
    }
    MDB_val k = {6, "format"}, v;
    rc = mdb_get(t, ls->ls_meta, &k, &v);
    if (rc == MDB_NOTFOUND && fresh) {
        v.mv_size = strlen(FORMAT);
        v.mv_data = FORMAT;
        if ((rc = mdb_put(t, ls->ls_meta, &k, &v, 0))) {
            rc = mdberr(rc, "write format", err, errlen);
            goto fail;
        }
        if ((rc = meta_put(ls, t, "rev", 1, err, errlen))) /* etcd starts at 1 too */
            goto fail;
    } else if (rc) {
        rc = rc == MDB_NOTFOUND ? tg_errf(err, errlen, TG_STORE_ECORRUPT,
                                          "lmdb store: no format marker: not a Tollgate store")
                                : mdberr(rc, "read format", err, errlen);
        goto fail;
    } else if (v.mv_size != strlen(FORMAT) || memcmp(v.mv_data, FORMAT, v.mv_size) != 0) {
        rc = tg_errf(err, errlen, TG_STORE_ECORRUPT,
                     "lmdb store: format '%.*s' is not '%s' (written by another version)",
                     (int)(v.mv_size > 64 ? 64 : v.mv_size), (const char *)v.mv_data, FORMAT);
        goto fail;
    }
    if ((rc = mdb_txn_commit(t))) {
        rc = mdberr(rc, "commit", err, errlen);
        return rc == MAPFULL ? tg_errf(err, errlen, TG_STORE_EFULL, "lmdb store: map full at open") : rc;
    }
    return 0;
fail:
    mdb_txn_abort(t);
    return rc == MAPFULL ? tg_errf(err, errlen, TG_STORE_EFULL, "lmdb store: map full at open") : rc;
}

int tg_store_lmdb_open(tg_store_t **out, const char *path, const tg_store_opts_t *opts, char *err,
                       size_t errlen)
{
    char file[4096];
    struct stat st;
    int rc;
    lstore_t *ls = tg_calloc(1, sizeof(*ls));
    if (!ls)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory opening %s", path);
    ls->ls_base.s_backend = &lmdb_backend;
    ls->ls_lockfd = -1;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* a resize must not starve behind a stream of readers */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&ls->ls_envlk, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&ls->ls_wmu, NULL);
    pthread_mutex_init(&ls->ls_qmu, NULL);
    pthread_cond_init(&ls->ls_qcond, NULL);
    pthread_mutex_init(&ls->ls_stopmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ls->ls_stopcond, &ca);
    pthread_condattr_destroy(&ca);
    ls->ls_map = opts->so_map_size ? opts->so_map_size : (size_t)64 << 20;
    ls->ls_map_max = opts->so_map_size_max ? opts->so_map_size_max : (size_t)16 << 30;
    if (ls->ls_map > ls->ls_map_max)
        ls->ls_map = ls->ls_map_max;
    ls->ls_tick_ms = opts->so_lease_tick_ms ? opts->so_lease_tick_ms : 100;
    ls->ls_keep = opts->so_history_revs ? opts->so_history_revs : 100000;
    ls->ls_keep_ms = opts->so_history_s > 0 ? opts->so_history_s * 1000 : 0;
    /* samples cover twice the window */
    ls->ls_samp_every_ms = ls->ls_keep_ms / (HIST_SAMPLES / 2);
    if (ls->ls_samp_every_ms < ls->ls_tick_ms)
        ls->ls_samp_every_ms = ls->ls_tick_ms;

    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        rc = tg_errf(err, errlen, TG_STORE_EIO, "lmdb store: mkdir %s: %s", path, strerror(errno));
        goto fail;
    }
    if ((size_t)snprintf(file, sizeof(file), "%s/tollgate.lock", path) >= sizeof(file)) {
        rc = tg_errf(err, errlen, TG_STORE_EINVAL, "lmdb store: path too long");
        goto fail;
    }
    ls->ls_lockfd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (ls->ls_lockfd < 0) {
        rc = tg_errf(err, errlen, TG_STORE_EIO, "lmdb store: open %s: %s", file, strerror(errno));
        goto fail;
    }
    if (flock(ls->ls_lockfd, LOCK_EX | LOCK_NB) != 0) {
        rc = tg_errf(err, errlen, TG_STORE_ELOCKED,
                     "lmdb store %s is open in another process (or handle): %s", path, strerror(errno));
        goto fail;
    }
    snprintf(file, sizeof(file), "%s/data.mdb", path);
    long psz = sysconf(_SC_PAGESIZE);
    if (stat(file, &st) == 0 && st.st_size < 2 * psz) {
        /* LMDB would treat an emptied file as a new store: data loss, not a restart */
        rc = tg_errf(err, errlen, TG_STORE_ECORRUPT,
                     "lmdb store: %s is truncated (%lld bytes, less than its two meta pages)", file,
                     (long long)st.st_size);
        goto fail;
    }
    if ((rc = mdb_env_create(&ls->ls_env))) {
        rc = mdberr(rc, "create env", err, errlen);
        ls->ls_env = NULL;
        goto fail;
    }
    mdb_env_set_maxdbs(ls->ls_env, 8);
    mdb_env_set_maxreaders(ls->ls_env, 256);
    if ((rc = mdb_env_set_mapsize(ls->ls_env, ls->ls_map))) {
        rc = mdberr(rc, "set map size", err, errlen);
        goto fail;
    }
    unsigned flags = MDB_NOTLS | (opts->so_nosync ? MDB_NOSYNC : 0);
    if ((rc = mdb_env_open(ls->ls_env, path, flags, 0644))) {
        rc = mdberr(rc, "open", err, errlen);
        goto fail;
    }
    MDB_envinfo info;
    MDB_stat est;
    mdb_env_info(ls->ls_env, &info);
    mdb_env_stat(ls->ls_env, &est);
    if (info.me_mapsize > ls->ls_map)
        ls->ls_map = info.me_mapsize; /* the file was grown before */
    if (stat(file, &st) == 0 && (unsigned long long)st.st_size < (info.me_last_pgno + 1ULL) * est.ms_psize) {
        /* reading past the end of a mapped file is SIGBUS: refuse instead */
        rc = tg_errf(err, errlen, TG_STORE_ECORRUPT,
                     "lmdb store: %s is truncated: %lld bytes but pages up to %zu are in use", file,
                     (long long)st.st_size, (size_t)info.me_last_pgno);
        goto fail;
    }
    if ((rc = init_dbs(ls, err, errlen)))
        goto fail;
    if (pthread_create(&ls->ls_thr, NULL, lease_thread, ls) != 0) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "lmdb store: cannot start the lease thread");
        goto fail;
    }
    ls->ls_thr_started = 1;
    *out = &ls->ls_base;
    return 0;
fail:
    if (rc == MAPFULL)
        rc = tg_errf(err, errlen, TG_STORE_EFULL, "lmdb store: map full at open");
    l_close(&ls->ls_base);
    return rc;
}
