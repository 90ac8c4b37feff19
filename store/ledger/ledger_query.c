/* tg_ledger queries: planning (pick the most selective index), the walk
 * over the buckets of an index in ledger (seq) order with filtering,
 * pagination cursors, sums, export and lookup by record id. Everything here runs in
 * read transactions, which never block appends. */
#include <stdio.h>
#include <string.h>

#include "base/tg_base.h"
#include "store/ledger/ledger_int.h"

#define EXPORT_PAGE 4096

void tg_ledger_filter_init(tg_ledger_filter_t *f)
{
    memset(f, 0, sizeof(*f));
    f->lf_from_us = INT64_MIN;
}

/* ---- cursors -------------------------------------------------------------- */

/* "L2" + 16 hex digits of the seq of the last row given. */
static void cursor_format(char *out, uint64_t seq)
{
    static const char hex[] = "0123456789abcdef";
    out[0] = 'L';
    out[1] = '2';
    for (int i = 0; i < 16; i++)
        out[2 + i] = hex[(seq >> (60 - 4 * i)) & 15];
    out[18] = '\0';
}

static int cursor_parse(const char *s, uint64_t *seq)
{
    *seq = 0;
    if (strlen(s) != 18 || s[0] != 'L' || s[1] != '2')
        return -1;
    for (int i = 0; i < 16; i++) {
        char c = s[2 + i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        *seq = *seq << 4 | (uint64_t)d;
    }
    return 0;
}

void tg_ledger_cursor_at(uint64_t seq, char out[TG_LEDGER_CURSOR_LEN])
{
    cursor_format(out, seq);
}

/* ---- the walk ----------------------------------------------------------- */

static uint32_t get_u32(const void *p)
{
    const unsigned char *b = p;
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

struct walk {
    tg_ledger_t *l;
    MDB_txn *txn;
    const tg_ledger_filter_t *f;
    size_t limit; /* 0 = no limit */
    tg_ledger_row_cb cb;
    void *arg;
    size_t rows;       /* rows passed to cb */
    uint64_t last;     /* seq of the last row passed */
    int stopped;       /* limit reached or cb asked to stop */
};

static int str_match(const char *want, const char *have)
{
    return !want || !*want || strcmp(want, have) == 0;
}

static int row_matches(const tg_ledger_filter_t *f, const tg_ledger_row_t *r)
{
    for (int ix = 0; ix < TGL_IX_N; ix++) {
        const char *want = tgl_filter_field(f, ix);
        if (*want && strcmp(want, tgl_row_field(r, ix)) != 0)
            return 0;
    }
    if (!str_match(f->lf_route_type, r->lr_route_type))
        return 0;
    if (f->lf_kind && (int)r->lr_kind != f->lf_kind)
        return 0;
    return r->lr_settled_us >= f->lf_from_us && (!f->lf_to_us || r->lr_settled_us < f->lf_to_us);
}

/* Offers the stored row (val) at seq to the filter and the callback. */
static int visit_val(struct walk *w, uint64_t seq, const MDB_val *val, char *err, size_t errlen)
{
    tg_ledger_row_t r;
    if (tgl_row_decode(val->mv_data, val->mv_size, seq, &r) != 0)
        return tg_errf(err, errlen, TG_LEDGER_ECORRUPT, "ledger %s: row %llu cannot be decoded",
                       w->l->path, (unsigned long long)seq);
    if (!row_matches(w->f, &r))
        return 0;
    w->rows++;
    w->last = seq;
    if (w->cb(&r, w->arg) != 0 || (w->limit && w->rows >= w->limit))
        w->stopped = 1;
    return 0;
}

/* Looks the row up by seq (from an index entry), then visits it. */
static int visit_seq(struct walk *w, uint64_t seq, char *err, size_t errlen)
{
    unsigned char sk[8];
    tgl_put_u64(sk, seq);
    MDB_val k = {8, sk}, v;
    int rc = mdb_get(w->txn, w->l->rows, &k, &v);
    if (rc == MDB_NOTFOUND)
        return tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                       "ledger %s: an index points at row %llu, which is missing", w->l->path,
                       (unsigned long long)seq);
    if (rc)
        return tgl_lmdb_err(w->l, rc, "read a row", err, errlen);
    return visit_val(w, seq, &v, err, errlen);
}

/* Estimates selectivity: entries for value in bucket b, counted up to cap. */
static int probe(struct walk *w, int ix, uint32_t b, const char *value, size_t cap, size_t *n)
{
    unsigned char key[TGL_IXKEY_MAX];
    size_t plen = tgl_ix_key(key, b, value, 0) - 8;
    MDB_cursor *cur;
    MDB_val k = {plen + 8, key}, v;
    int rc = mdb_cursor_open(w->txn, w->l->ix[ix], &cur);
    *n = 0;
    if (rc)
        return rc;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && *n < cap && k.mv_size == plen + 8 && memcmp(k.mv_data, key, plen) == 0) {
        *n += v.mv_size / 8;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Picks the index to read: among the filter's indexed fields, the one with
 * the fewest entries in a recent bucket (counted up to 1024; LMDB keeps
 * no counts), ties going to the usually most selective field (run, key,
 * project, channel, model, account). -1: no indexed field, scan rows. */
static int plan(struct walk *w, uint32_t newest, int *ix_out, char *err, size_t errlen)
{
    static const int pref[TGL_IX_N] = {TGL_IX_RUN,     TGL_IX_KEY,   TGL_IX_PROJECT,
                                       TGL_IX_CHANNEL, TGL_IX_MODEL, TGL_IX_ACCOUNT};
    size_t best = (size_t)-1;
    *ix_out = -1;
    for (int i = 0; i < TGL_IX_N; i++) {
        int ix = pref[i];
        const char *want = tgl_filter_field(w->f, ix);
        size_t n;
        if (!*want)
            continue;
        int rc = probe(w, ix, newest, want, 1024, &n);
        if (rc)
            return tgl_lmdb_err(w->l, rc, "plan a query", err, errlen);
        if (n < best || best == (size_t)-1) {
            best = n;
            *ix_out = ix;
        }
    }
    return 0;
}

/* Reads the rows of bucket b from seq lo on, through index ix (or the rows
 * themselves when ix < 0). */
static int walk_bucket(struct walk *w, MDB_cursor *cur, int ix, uint32_t b, uint64_t lo,
                       char *err, size_t errlen)
{
    MDB_val k, v;
    unsigned char key[TGL_IXKEY_MAX], sk[8];
    uint64_t end = ((uint64_t)b + 1) << w->l->bshift; /* first seq of the next bucket */
    int rc, ret = 0;
    if (ix < 0) {
        tgl_put_u64(sk, lo);
        k.mv_size = 8;
        k.mv_data = sk;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        while (rc == 0 && !w->stopped) {
            uint64_t seq = k.mv_size == 8 ? tgl_get_u64(k.mv_data) : 0;
            if (seq >= end)
                break;
            if ((ret = visit_val(w, seq, &v, err, errlen)) != 0)
                return ret;
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
    } else {
        const char *want = tgl_filter_field(w->f, ix);
        size_t plen = tgl_ix_key(key, b, want, lo) - 8;
#define IN_PREFIX (k.mv_size == plen + 8 && memcmp(k.mv_data, key, plen) == 0)
        k.mv_size = plen + 8;
        k.mv_data = key;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        /* A list is keyed by its first seq: the one before the seek point
         * may still hold seqs >= lo. */
        if (rc == MDB_NOTFOUND || (rc == 0 && !(IN_PREFIX && tgl_get_u64((unsigned char *)k.mv_data + plen) == lo))) {
            int prc = mdb_cursor_get(cur, &k, &v, rc == MDB_NOTFOUND ? MDB_LAST : MDB_PREV);
            if (prc != 0 || !IN_PREFIX) {
                k.mv_size = plen + 8;
                k.mv_data = key;
                rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
            } else {
                rc = 0;
            }
        }
        while (rc == 0 && !w->stopped && IN_PREFIX) {
            for (size_t i = 0; i + 8 <= v.mv_size && !w->stopped; i += 8) {
                uint64_t seq = tgl_get_u64((unsigned char *)v.mv_data + i);
                if (seq >= lo && (ret = visit_seq(w, seq, err, errlen)) != 0)
                    return ret;
            }
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
#undef IN_PREFIX
    }
    if (rc && rc != MDB_NOTFOUND)
        return tgl_lmdb_err(w->l, rc, "walk an index", err, errlen);
    return 0;
}

/* Walks the rows from seq start on, bucket by bucket, skipping buckets
 * whose settled-time range misses the filter's, until the limit or cb
 * stops. *complete is set when every bucket was read. */
static int walk_run(struct walk *w, uint64_t start, int *complete, char *err, size_t errlen)
{
    MDB_cursor *bc = NULL, *cur = NULL;
    MDB_val k, v;
    unsigned char bk[4];
    int ix = -1, ret = 0, rc;
    *complete = 0;
    if ((rc = mdb_cursor_open(w->txn, w->l->buckets, &bc)) != 0) {
        ret = tgl_lmdb_err(w->l, rc, "open a cursor", err, errlen);
        goto out;
    }
    rc = mdb_cursor_get(bc, &k, &v, MDB_LAST);
    if (rc == MDB_NOTFOUND) {
        *complete = 1;
        goto out;
    }
    if (rc || k.mv_size != 4) {
        ret = rc ? tgl_lmdb_err(w->l, rc, "read the buckets", err, errlen)
                 : tg_errf(err, errlen, TG_LEDGER_ECORRUPT, "ledger %s: malformed bucket entry",
                           w->l->path);
        goto out;
    }
    /* The bucket before the newest is full: a better sample. */
    uint32_t newest = get_u32(k.mv_data);
    if (newest > (uint32_t)(start >> w->l->bshift))
        newest--;
    if ((ret = plan(w, newest, &ix, err, errlen)) != 0)
        goto out;
    if ((rc = mdb_cursor_open(w->txn, ix >= 0 ? w->l->ix[ix] : w->l->rows, &cur)) != 0) {
        ret = tgl_lmdb_err(w->l, rc, "open a cursor", err, errlen);
        goto out;
    }
    uint32_t b0 = (uint32_t)(start >> w->l->bshift);
    bk[0] = (unsigned char)(b0 >> 24);
    bk[1] = (unsigned char)(b0 >> 16);
    bk[2] = (unsigned char)(b0 >> 8);
    bk[3] = (unsigned char)b0;
    k.mv_size = 4;
    k.mv_data = bk;
    rc = mdb_cursor_get(bc, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && !w->stopped) {
        if (k.mv_size != 4 || v.mv_size != 16) {
            ret = tg_errf(err, errlen, TG_LEDGER_ECORRUPT, "ledger %s: malformed bucket entry",
                          w->l->path);
            goto out;
        }
        uint32_t b = get_u32(k.mv_data);
        int64_t tmin = tgl_get_time(v.mv_data), tmax = tgl_get_time((unsigned char *)v.mv_data + 8);
        /* Settled times only roughly follow seq, so a bucket outside the
         * range does not end the walk; it is skipped. */
        if (tmax >= w->f->lf_from_us && (!w->f->lf_to_us || tmin < w->f->lf_to_us)) {
            uint64_t first = (uint64_t)b << w->l->bshift;
            if ((ret = walk_bucket(w, cur, ix, b, start > first ? start : first, err, errlen)) != 0)
                goto out;
        }
        rc = mdb_cursor_get(bc, &k, &v, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND)
        *complete = !w->stopped;
    else if (rc)
        ret = tgl_lmdb_err(w->l, rc, "read the buckets", err, errlen);
out:
    if (cur)
        mdb_cursor_close(cur);
    if (bc)
        mdb_cursor_close(bc);
    return ret;
}

static int check_filter(tg_ledger_t *l, const tg_ledger_filter_t *f, char *err, size_t errlen)
{
    if (!l || !f)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger: a query needs a ledger and a filter");
    if (f->lf_kind < 0 || f->lf_kind > TG_LEDGER_ADJUSTMENT)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger %s: unknown kind %d in filter",
                       l->path, f->lf_kind);
    return 0;
}

int tg_ledger_query(tg_ledger_t *l, const tg_ledger_filter_t *f, const char *cursor_in, size_t limit,
                    tg_ledger_row_cb cb, void *arg, char *cursor_out, size_t *rows_out, char *err,
                    size_t errlen)
{
    struct walk w = {.l = l, .f = f, .limit = limit, .cb = cb, .arg = arg};
    uint64_t start = 0;
    int complete, ret;
    if (rows_out)
        *rows_out = 0;
    if (cursor_out)
        cursor_out[0] = '\0';
    if ((ret = check_filter(l, f, err, errlen)) != 0)
        return ret;
    if (!cb || !cursor_out || limit == 0)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL,
                       "ledger %s: a query needs a callback, a cursor buffer and a limit >= 1",
                       l->path);
    if (cursor_in && *cursor_in &&
        (cursor_parse(cursor_in, &start) != 0 || (start >> l->bshift) >= UINT32_MAX))
        return tg_errf(err, errlen, TG_LEDGER_EINVAL,
                       "ledger %s: \"%.60s\" is not a cursor this ledger made", l->path, cursor_in);
    if ((ret = tgl_read_begin(l, &w.txn, err, errlen)) != 0)
        return ret;
    ret = walk_run(&w, start + 1, &complete, err, errlen);
    tgl_read_end(l, w.txn);
    if (ret == 0 && !complete && w.rows > 0)
        cursor_format(cursor_out, w.last);
    if (rows_out)
        *rows_out = w.rows;
    return ret;
}

struct export_ctx {
    tg_ledger_row_cb cb;
    void *arg;
    int stop;
};

static int export_cb(const tg_ledger_row_t *r, void *arg)
{
    struct export_ctx *x = arg;
    if (x->cb(r, x->arg) != 0)
        x->stop = 1;
    return x->stop;
}

int tg_ledger_export(tg_ledger_t *l, const tg_ledger_filter_t *f, size_t page_rows,
                     tg_ledger_row_cb cb, void *arg, size_t *rows_out, char *err, size_t errlen)
{
    struct export_ctx x = {cb, arg, 0};
    char cursor[TG_LEDGER_CURSOR_LEN] = "", next[TG_LEDGER_CURSOR_LEN];
    size_t total = 0;
    int ret = 0;
    if (!page_rows)
        page_rows = EXPORT_PAGE;
    /* One read transaction per page: a slow consumer never pins old pages
     * (or a reader slot) for the whole export. */
    for (;;) {
        size_t n = 0;
        ret = tg_ledger_query(l, f, cursor, page_rows, export_cb, &x, next, &n, err, errlen);
        total += n;
        if (ret || x.stop || !next[0])
            break;
        memcpy(cursor, next, sizeof(cursor));
    }
    if (rows_out)
        *rows_out = total;
    return ret;
}

struct sum_ctx {
    tg_ledger_sum_t s;
    int overflow;
};

static int sum_cb(const tg_ledger_row_t *r, void *arg)
{
    struct sum_ctx *c = arg;
    c->s.ls_rows++;
    if (__builtin_add_overflow(c->s.ls_cost_nano, r->lr_cost_nano, &c->s.ls_cost_nano) ||
        __builtin_add_overflow(c->s.ls_upstream_cost_nano, r->lr_upstream_cost_nano,
                               &c->s.ls_upstream_cost_nano) ||
        __builtin_add_overflow(c->s.ls_input_tokens, r->lr_input_tokens, &c->s.ls_input_tokens) ||
        __builtin_add_overflow(c->s.ls_output_tokens, r->lr_output_tokens,
                               &c->s.ls_output_tokens)) {
        c->overflow = 1;
        return 1;
    }
    return 0;
}

int tg_ledger_sum(tg_ledger_t *l, const tg_ledger_filter_t *f, tg_ledger_sum_t *out, char *err,
                  size_t errlen)
{
    struct sum_ctx c = {{0}, 0};
    struct walk w = {.l = l, .f = f, .limit = 0, .cb = sum_cb, .arg = &c};
    int complete, ret;
    if (out)
        memset(out, 0, sizeof(*out));
    if ((ret = check_filter(l, f, err, errlen)) != 0)
        return ret;
    if (!out)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger %s: sum needs an output", l->path);
    /* One transaction: the totals are of one consistent snapshot. */
    if ((ret = tgl_read_begin(l, &w.txn, err, errlen)) != 0)
        return ret;
    ret = walk_run(&w, 1, &complete, err, errlen);
    tgl_read_end(l, w.txn);
    if (ret == 0 && c.overflow)
        ret = tg_errf(err, errlen, TG_LEDGER_EOVERFLOW,
                      "ledger %s: the sum of the matching rows does not fit in int64", l->path);
    if (ret == 0)
        *out = c.s;
    return ret;
}

int tg_ledger_get(tg_ledger_t *l, const char *record_id, tg_ledger_row_cb cb, void *arg, int *found,
                  char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_val k, v;
    int ret, rc;
    if (found)
        *found = 0;
    if (!l || !record_id || !*record_id || strlen(record_id) > TG_LEDGER_ID_MAX || !cb || !found)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL,
                       "ledger: get needs a ledger, a record id of 1..%d bytes, a callback and "
                       "a found flag",
                       TG_LEDGER_ID_MAX);
    if ((ret = tgl_read_begin(l, &txn, err, errlen)) != 0)
        return ret;
    k.mv_size = strlen(record_id);
    k.mv_data = (void *)record_id;
    rc = mdb_get(txn, l->ids, &k, &v);
    if (rc == 0 && v.mv_size == 8) {
        tg_ledger_row_t r;
        uint64_t seq = tgl_get_u64(v.mv_data);
        MDB_val sk = {8, v.mv_data};
        rc = mdb_get(txn, l->rows, &sk, &v);
        if (rc == MDB_NOTFOUND || (rc == 0 && tgl_row_decode(v.mv_data, v.mv_size, seq, &r) != 0))
            ret = tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                          "ledger %s: record %s points at row %llu, which is %s", l->path,
                          record_id, (unsigned long long)seq, rc ? "missing" : "undecodable");
        else if (rc == 0) {
            *found = 1;
            cb(&r, arg);
        }
    } else if (rc == 0) {
        ret = tg_errf(err, errlen, TG_LEDGER_ECORRUPT, "ledger %s: malformed id entry", l->path);
    }
    if (ret == 0 && rc && rc != MDB_NOTFOUND)
        ret = tgl_lmdb_err(l, rc, "look up a record", err, errlen);
    tgl_read_end(l, txn);
    return ret;
}

int tg_ledger_has(tg_ledger_t *l, const char *const *ids, size_t n, int *found, char *err,
                  size_t errlen)
{
    MDB_txn *txn;
    int ret, rc = 0;
    if (!l || (n > 0 && (!ids || !found)))
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger: has needs a ledger, ids and flags");
    if (n == 0)
        return 0;
    if ((ret = tgl_read_begin(l, &txn, err, errlen)) != 0)
        return ret;
    for (size_t i = 0; i < n; i++) {
        size_t len = ids[i] ? strlen(ids[i]) : 0;
        MDB_val k = {len, (void *)ids[i]}, v;
        found[i] = 0;
        if (len == 0 || len > TG_LEDGER_ID_MAX)
            continue;
        rc = mdb_get(txn, l->ids, &k, &v);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            continue;
        }
        if (rc != 0)
            break;
        if (v.mv_size != 8) {
            ret = tg_errf(err, errlen, TG_LEDGER_ECORRUPT, "ledger %s: malformed id entry for %s",
                          l->path, ids[i]);
            break;
        }
        found[i] = 1;
    }
    if (ret == 0 && rc != 0)
        ret = tgl_lmdb_err(l, rc, "look up record ids", err, errlen);
    tgl_read_end(l, txn);
    return ret;
}
