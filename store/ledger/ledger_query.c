/* tg_ledger queries: planning (pick the most selective index), the walk
 * over an index in (settled time, seq) order with filtering, pagination
 * cursors, sums, export and lookup by record id. Everything here runs in
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

/* "L1" + 32 hex digits of the position (time, seq) of the last row given. */
static void cursor_format(char *out, const unsigned char pos[TGL_POS])
{
    static const char hex[] = "0123456789abcdef";
    out[0] = 'L';
    out[1] = '1';
    for (int i = 0; i < TGL_POS; i++) {
        out[2 + 2 * i] = hex[pos[i] >> 4];
        out[3 + 2 * i] = hex[pos[i] & 15];
    }
    out[2 + 2 * TGL_POS] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static int cursor_parse(const char *s, unsigned char pos[TGL_POS])
{
    if (strlen(s) != 2 + 2 * TGL_POS || s[0] != 'L' || s[1] != '1')
        return -1;
    for (int i = 0; i < TGL_POS; i++) {
        int hi = hexval(s[2 + 2 * i]), lo = hexval(s[3 + 2 * i]);
        if (hi < 0 || lo < 0)
            return -1;
        pos[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

/* ---- the walk ----------------------------------------------------------- */

struct walk {
    tg_ledger_t *l;
    MDB_txn *txn;
    const tg_ledger_filter_t *f;
    size_t limit; /* 0 = no limit */
    tg_ledger_row_cb cb;
    void *arg;
    size_t rows;                /* rows passed to cb */
    unsigned char last[TGL_POS]; /* position of the last row passed */
    int stopped;                 /* limit reached or cb asked to stop */
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

/* Visits the row at index position pos. Returns 0 or a TG code. */
static int visit(struct walk *w, const unsigned char pos[TGL_POS], char *err, size_t errlen)
{
    MDB_val k = {8, (void *)(pos + 8)}, v;
    tg_ledger_row_t r;
    uint64_t seq = tgl_get_u64(pos + 8);
    int rc = mdb_get(w->txn, w->l->rows, &k, &v);
    if (rc == MDB_NOTFOUND || (rc == 0 && tgl_row_decode(v.mv_data, v.mv_size, seq, &r) != 0))
        return tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                       "ledger %s: an index points at row %llu, which is %s", w->l->path,
                       (unsigned long long)seq, rc ? "missing" : "undecodable");
    if (rc)
        return tgl_lmdb_err(w->l, rc, "read a row", err, errlen);
    if (!row_matches(w->f, &r))
        return 0;
    w->rows++;
    memcpy(w->last, pos, TGL_POS);
    if (w->cb(&r, w->arg) != 0 || (w->limit && w->rows >= w->limit))
        w->stopped = 1;
    return 0;
}

/* Picks the index: the indexed filter field with the fewest entries (an
 * LMDB dup count is cheap), or the time index when none is set. Sets
 * *empty when a filtered value has no rows at all. */
static int plan(struct walk *w, int *ix_out, int *empty, char *err, size_t errlen)
{
    MDB_cursor *cur = NULL;
    size_t best = (size_t)-1;
    int rc = 0;
    *ix_out = -1;
    *empty = 0;
    for (int ix = 0; ix < TGL_IX_N; ix++) {
        const char *want = tgl_filter_field(w->f, ix);
        if (!*want)
            continue;
        if (strlen(want) > TG_LEDGER_FIELD_MAX) { /* cannot be stored: no match */
            *empty = 1;
            break;
        }
        if ((rc = mdb_cursor_open(w->txn, w->l->ix[ix], &cur)) != 0)
            break;
        MDB_val k = {strlen(want), (void *)want}, v;
        size_t n = 0;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET);
        if (rc == 0)
            rc = mdb_cursor_count(cur, &n);
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND) {
            *empty = 1;
            rc = 0;
            break;
        }
        if (rc)
            break;
        if (n < best) {
            best = n;
            *ix_out = ix;
        }
    }
    return rc ? tgl_lmdb_err(w->l, rc, "plan a query", err, errlen) : 0;
}

/* Walks from start (inclusive; exclusive when skip_eq) until the filter's
 * end time, the limit, or cb stops. *complete is set when the index ran
 * out (no further page). */
static int walk_run(struct walk *w, const unsigned char start[TGL_POS], int skip_eq, int *complete,
                    char *err, size_t errlen)
{
    MDB_cursor *cur = NULL;
    int ix, empty, ret, rc;
    unsigned char pos[TGL_POS];
    *complete = 0;
    if ((ret = plan(w, &ix, &empty, err, errlen)) != 0)
        return ret;
    if (empty) {
        *complete = 1;
        return 0;
    }
    const char *key = ix >= 0 ? tgl_filter_field(w->f, ix) : NULL;
    if ((rc = mdb_cursor_open(w->txn, ix >= 0 ? w->l->ix[ix] : w->l->itime, &cur)) != 0)
        return tgl_lmdb_err(w->l, rc, "open a cursor", err, errlen);
    MDB_val k, v;
    if (key) {
        k.mv_size = strlen(key);
        k.mv_data = (void *)key;
        v.mv_size = TGL_POS;
        v.mv_data = (void *)start;
        rc = mdb_cursor_get(cur, &k, &v, MDB_GET_BOTH_RANGE);
    } else {
        k.mv_size = TGL_POS;
        k.mv_data = (void *)start;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    }
    while (rc == 0) {
        const MDB_val *p = key ? &v : &k;
        if (p->mv_size != TGL_POS) {
            ret = tg_errf(err, errlen, TG_LEDGER_ECORRUPT, "ledger %s: malformed index entry",
                          w->l->path);
            goto out;
        }
        memcpy(pos, p->mv_data, TGL_POS);
        if (w->f->lf_to_us && tgl_get_time(pos) >= w->f->lf_to_us) {
            *complete = 1;
            goto out;
        }
        if (!(skip_eq && memcmp(pos, start, TGL_POS) == 0)) {
            if ((ret = visit(w, pos, err, errlen)) != 0)
                goto out;
            if (w->stopped)
                goto out;
        }
        rc = mdb_cursor_get(cur, &k, &v, key ? MDB_NEXT_DUP : MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND)
        *complete = 1;
    else
        ret = tgl_lmdb_err(w->l, rc, "walk an index", err, errlen);
out:
    mdb_cursor_close(cur);
    return ret;
}

/* Start position of a walk: the later of the cursor and the filter's from
 * time. */
static int start_pos(const tg_ledger_filter_t *f, const char *cursor, unsigned char start[TGL_POS],
                     int *skip_eq)
{
    unsigned char from[TGL_POS];
    tgl_put_time(from, f->lf_from_us);
    memset(from + 8, 0, 8);
    memcpy(start, from, TGL_POS);
    *skip_eq = 0;
    if (cursor && *cursor) {
        unsigned char c[TGL_POS];
        if (cursor_parse(cursor, c) != 0)
            return -1;
        if (memcmp(c, from, TGL_POS) >= 0) {
            memcpy(start, c, TGL_POS);
            *skip_eq = 1;
        }
    }
    return 0;
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
    unsigned char start[TGL_POS];
    int skip_eq, complete, ret;
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
    if (start_pos(f, cursor_in, start, &skip_eq) != 0)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL,
                       "ledger %s: \"%.60s\" is not a cursor this ledger made", l->path, cursor_in);
    if ((ret = tgl_read_begin(l, &w.txn, err, errlen)) != 0)
        return ret;
    ret = walk_run(&w, start, skip_eq, &complete, err, errlen);
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
    unsigned char start[TGL_POS];
    int skip_eq, complete, ret;
    if (out)
        memset(out, 0, sizeof(*out));
    if ((ret = check_filter(l, f, err, errlen)) != 0)
        return ret;
    if (!out)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger %s: sum needs an output", l->path);
    start_pos(f, NULL, start, &skip_eq);
    /* One transaction: the totals are of one consistent snapshot. */
    if ((ret = tgl_read_begin(l, &w.txn, err, errlen)) != 0)
        return ret;
    ret = walk_run(&w, start, skip_eq, &complete, err, errlen);
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
