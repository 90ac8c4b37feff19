/* admin_ledger.c: reading money: balances, ledger queries (filters, pages,
 * totals by currency), ledger export as a stream of CSV lines, and run
 * receipts. Ledger rows come from this replica's LMDB ledger, which
 * settlement and the settled-log tailer fill; each row's opaque record is a
 * packed LedgerEntry (the contract in cp.h), which carries the UsageRecord
 * of usage rows.
 *
 * Totals: count is every matching row; cost_nano and the token counts sum
 * usage rows only (what requests were priced at: the record's cost_nano),
 * charged_nano what those rows moved, unbilled_* the rows that could not be
 * charged (their cost is in cost_nano, not in charged_nano);
 * top-ups and adjustments move balances but are not costs. Totals walk every
 * matching row (one read transaction per ledger page), so their price is
 * linear in the rows a query matches (~5.5 us a row, measured): they come
 * with the first page of a walk (no page_token) and later pages leave them
 * empty, so a walk pays for them once. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/tg_log.h"
#include "controlplane/admin_int.h"

#define KIND_USAGE TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_USAGE

static const char *kind_name(int k)
{
    switch (k) {
    case 1: return "usage";
    case 2: return "topup";
    case 3: return "adjustment";
    default: return "unknown";
    }
}

/* ---- balances --------------------------------------------------------------------- */

static int get_balances(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__GetBalancesRequest *q = (const Tollgate__V1__GetBalancesRequest *)reqm;
    Tollgate__V1__GetBalancesResponse r = TOLLGATE__V1__GET_BALANCES_RESPONSE__INIT;
    const char *prefix;
    tg_store_range_req_t rq = {0};
    tg_store_range_res_t rs;
    ProtobufCMessage **items = NULL;
    char err[TG_ERRLEN] = "";
    size_t n = 0;
    int code = TG_RPC_CODE_OK, rc;
    tg_store_kv_t *kv = NULL;

    if (!q->account_id[0]) return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "account_id: required");
    rc = tg_store_get(a->ax_cp->cp_store, cp_fmt(a, "%s%s", TG_CP_K_ACCOUNT, q->account_id),
                      strlen(TG_CP_K_ACCOUNT) + strlen(q->account_id), &kv, NULL, err, sizeof err);
    if (rc != 0) return cp_fail(a, tg_cp_store_code(rc), "store: %s", err);
    if (!kv) return cp_fail(a, TG_RPC_CODE_NOT_FOUND, "account '%s' not found", q->account_id);
    tg_store_kv_free(kv);
    prefix = cp_fmt(a, "%s%s/", TG_CP_K_BALANCE, q->account_id);
    rq.rq_key = prefix;
    rq.rq_key_len = strlen(prefix);
    rq.rq_prefix = 1;
    rc = tg_store_range(a->ax_cp->cp_store, &rq, &rs, err, sizeof err);
    if (rc != 0) return cp_fail(a, tg_cp_store_code(rc), "store: %s", err);
    items = tg_pool_calloc(a->ax_pool, (rs.rs_n + 1) * sizeof(*items));
    for (size_t i = 0; items && i < rs.rs_n; i++) {
        ProtobufCMessage *m = NULL;
        if (tg_rpc_pb_unpack(&tollgate__v1__balance__descriptor, rs.rs_kvs[i].kv_val,
                             rs.rs_kvs[i].kv_val_len, &m, NULL, 0) != 0)
            continue;
        ((Tollgate__V1__Balance *)m)->revision = rs.rs_kvs[i].kv_mod_rev;
        /* what agents hold now: holds past their expiry count for nothing
         * even before the next grant drops them */
        ((Tollgate__V1__Balance *)m)->reserved_nano = cp_lease_reserved((Tollgate__V1__Balance *)m, tg_cp_now_us());
        items[n++] = m;
    }
    tg_store_range_res_free(&rs);
    if (!items) return cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
    r.balances = (Tollgate__V1__Balance **)items;
    r.n_balances = n;
    code = cp_reply(a, &r.base, reply);
    for (size_t i = 0; i < n; i++) tg_rpc_pb_free(items[i]);
    return code;
}

/* ---- filters and rows ------------------------------------------------------------------ */

typedef struct lq {
    tg_ledger_filter_t lq_f;
    unsigned lq_kinds; /* bit k set: kind k wanted; 0: all */
} lq_t;

static int to_filter(cp_actx_t *a, const Tollgate__V1__LedgerQuery *q, lq_t *l)
{
    tg_ledger_filter_init(&l->lq_f);
    l->lq_kinds = 0;
    l->lq_f.lf_account_id = q->account_id;
    l->lq_f.lf_project_id = q->project_id;
    l->lq_f.lf_key_id = q->key_id;
    l->lq_f.lf_run_id = q->run_id;
    l->lq_f.lf_model = q->model;
    l->lq_f.lf_channel_id = q->channel_id;
    if (q->route_type < 0 || q->route_type > 2)
        return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "route_type: must be direct or pooled");
    if (q->route_type) l->lq_f.lf_route_type = tg_cp_route_type_name(q->route_type);
    if (q->since_us < 0 || q->until_us < 0)
        return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "since_us/until_us: must be >= 0");
    if (q->until_us && q->until_us <= q->since_us)
        return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "until_us: must be after since_us");
    if (q->since_us) l->lq_f.lf_from_us = q->since_us;
    if (q->until_us) l->lq_f.lf_to_us = q->until_us;
    for (size_t i = 0; i < q->n_kinds; i++) {
        if (q->kinds[i] < 1 || q->kinds[i] > 3)
            return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT,
                           "kinds[%zu]: must be usage, topup or adjustment", i);
        l->lq_kinds |= 1u << q->kinds[i];
    }
    if (q->n_kinds == 1) l->lq_f.lf_kind = q->kinds[0];
    return TG_RPC_CODE_OK;
}

static int kind_wanted(const lq_t *l, int kind)
{
    return !l->lq_kinds || (l->lq_kinds & (1u << kind));
}

/* The LedgerEntry of a row (tg_rpc_pb_free): its packed record, or, when the
 * record is not one, an entry rebuilt from the row's indexed fields. The
 * row's seq and hash are the ledger's own. NULL on no memory. */
static Tollgate__V1__LedgerEntry *row_entry(const tg_ledger_row_t *row)
{
    ProtobufCMessage *m = NULL;
    Tollgate__V1__LedgerEntry *e;
    if (row->lr_record_len && tg_rpc_pb_unpack(&tollgate__v1__ledger_entry__descriptor,
                                               row->lr_record, row->lr_record_len, &m, NULL, 0) == 0) {
        e = (Tollgate__V1__LedgerEntry *)m;
    } else {
        if (tg_rpc_pb_unpack(&tollgate__v1__ledger_entry__descriptor, "", 0, &m, NULL, 0) != 0)
            return NULL;
        e = (Tollgate__V1__LedgerEntry *)m;
        e->kind = (Tollgate__V1__LedgerKind)row->lr_kind;
        e->settled_at_us = row->lr_settled_us;
        e->amount_nano = row->lr_cost_nano;
        if (tg_cp_pb_set_str(&e->entry_id, row->lr_record_id) ||
            tg_cp_pb_set_str(&e->account_id, row->lr_account_id) ||
            tg_cp_pb_set_str(&e->bucket, row->lr_bucket) ||
            tg_cp_pb_set_str(&e->currency, row->lr_currency)) {
            tg_rpc_pb_free(m);
            return NULL;
        }
    }
    e->seq = row->lr_seq;
    if (e->hash.len != 32) {
        uint8_t *h = tg_malloc(32);
        if (h) {
            memcpy(h, row->lr_hash, 32);
            tg_free(e->hash.data);
            e->hash.data = h;
            e->hash.len = 32;
        }
    }
    return e;
}

/* ---- totals ------------------------------------------------------------------------------- */

#define MAX_CURRENCIES 32

typedef struct totals {
    Tollgate__V1__LedgerTotals t_v[MAX_CURRENCIES];
    char t_cur[MAX_CURRENCIES][40];
    size_t t_n;
    const lq_t *t_q;
    int t_overflow;
} totals_t;

static void add_totals(Tollgate__V1__LedgerTotals *t, const tg_ledger_row_t *row,
                       const Tollgate__V1__LedgerEntry *e)
{
    t->count++;
    if (row->lr_kind != TG_LEDGER_USAGE) return;
    if (e && e->record) {
        const Tollgate__V1__UsageRecord *r = e->record;
        t->cost_nano += r->cost_nano;
        t->charged_nano -= e->amount_nano;
        if (e->unbilled) {
            t->unbilled_count++;
            t->unbilled_cost_nano += r->cost_nano;
        }
        t->upstream_cost_nano += r->upstream_cost_nano;
        if (r->usage) {
            t->input_tokens += r->usage->input_tokens;
            t->output_tokens += r->usage->output_tokens;
            t->cache_read_tokens += r->usage->cache_read_tokens;
            t->cache_write_tokens += r->usage->cache_write_tokens;
        }
    } else {
        t->cost_nano += row->lr_cost_nano < 0 ? -row->lr_cost_nano : row->lr_cost_nano;
        t->charged_nano -= row->lr_cost_nano;
        t->upstream_cost_nano += row->lr_upstream_cost_nano;
        t->input_tokens += row->lr_input_tokens;
        t->output_tokens += row->lr_output_tokens;
    }
}

static int totals_cb(const tg_ledger_row_t *row, void *arg)
{
    totals_t *t = arg;
    Tollgate__V1__LedgerEntry *e;
    size_t i;
    if (!kind_wanted(t->t_q, row->lr_kind)) return 0;
    for (i = 0; i < t->t_n; i++)
        if (strcmp(t->t_cur[i], row->lr_currency ? row->lr_currency : "") == 0) break;
    if (i == t->t_n) {
        if (t->t_n == MAX_CURRENCIES) {
            t->t_overflow = 1;
            return 0;
        }
        tollgate__v1__ledger_totals__init(&t->t_v[i]);
        snprintf(t->t_cur[i], sizeof t->t_cur[i], "%s", row->lr_currency ? row->lr_currency : "");
        t->t_v[i].currency = t->t_cur[i];
        t->t_n++;
    }
    e = row->lr_kind == TG_LEDGER_USAGE ? row_entry(row) : NULL;
    add_totals(&t->t_v[i], row, e);
    if (e) tg_rpc_pb_free(&e->base);
    return 0;
}

/* ---- QueryLedger ----------------------------------------------------------------------------- */

typedef struct page {
    Tollgate__V1__LedgerEntry **p_e;
    size_t p_n, p_cap;
    const lq_t *p_q;
    int p_nomem;
} page_t;

static int page_cb(const tg_ledger_row_t *row, void *arg)
{
    page_t *p = arg;
    Tollgate__V1__LedgerEntry *e;
    if (!kind_wanted(p->p_q, row->lr_kind) || p->p_n == p->p_cap) return 0;
    if (!(e = row_entry(row))) {
        p->p_nomem = 1;
        return 1;
    }
    p->p_e[p->p_n++] = e;
    return 0;
}

static int ledger_fail(cp_actx_t *a, int rc, const char *err)
{
    return cp_fail(a, rc == TG_LEDGER_EINVAL ? TG_RPC_CODE_INVALID_ARGUMENT : TG_RPC_CODE_INTERNAL,
                   "ledger: %s", err);
}

/* The ledger answers only when it is open and whole: while this replica
 * copies rows retention deleted from a peer (catchup.c) a query would miss
 * them, so the caller is sent to another replica. */
static int ledger_closed(cp_actx_t *a)
{
    if (!a->ax_cp->cp_ledger) return cp_fail(a, TG_RPC_CODE_UNAVAILABLE, "the ledger is not open");
    if (atomic_load(&a->ax_cp->cp_ledger_gap))
        return cp_fail(a, TG_RPC_CODE_UNAVAILABLE,
                       "this replica's ledger is catching up from a peer (it was behind the settled-log "
                       "retention): ask another replica, or again shortly");
    return TG_RPC_CODE_OK;
}

static int query_ledger(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__LedgerQuery *q = (const Tollgate__V1__LedgerQuery *)reqm;
    Tollgate__V1__LedgerPage r = TOLLGATE__V1__LEDGER_PAGE__INIT;
    Tollgate__V1__LedgerTotals *tp[MAX_CURRENCIES];
    size_t want = tg_cp_page_size(q->page_size), rows = 0;
    char cursor[TG_LEDGER_CURSOR_LEN] = "", err[TG_ERRLEN] = "";
    page_t p = {0};
    totals_t *t = tg_pool_calloc(a->ax_pool, sizeof(*t));
    lq_t l;
    int code, rc;

    if ((code = to_filter(a, q, &l)) != TG_RPC_CODE_OK) return code;
    if (strlen(q->page_token) >= TG_LEDGER_CURSOR_LEN)
        return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT,
                       "page_token: not a token from a previous page of QueryLedger");
    if ((code = ledger_closed(a)) != TG_RPC_CODE_OK) return code;
    p.p_e = tg_pool_calloc(a->ax_pool, want * sizeof(*p.p_e));
    p.p_cap = want;
    p.p_q = &l;
    if (!p.p_e || !t) return cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
    rc = tg_ledger_query(a->ax_cp->cp_ledger, &l.lq_f, q->page_token, want, page_cb, &p, cursor,
                         &rows, err, sizeof err);
    if (rc != 0) {
        code = ledger_fail(a, rc, err);
        goto done;
    }
    if (p.p_nomem) {
        code = cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
        goto done;
    }
    /* totals walk every matching row: once per query walk, with its first
     * page, not again with every later page */
    t->t_q = &l;
    rc = q->page_token[0] ? 0
                          : tg_ledger_export(a->ax_cp->cp_ledger, &l.lq_f, 0, totals_cb, t, NULL,
                                             err, sizeof err);
    if (rc != 0) {
        code = ledger_fail(a, rc, err);
        goto done;
    }
    for (size_t i = 0; i < t->t_n; i++) tp[i] = &t->t_v[i];
    r.entries = p.p_e;
    r.n_entries = p.p_n;
    r.next_page_token = cursor;
    r.totals = tp;
    r.n_totals = t->t_n;
    code = cp_reply(a, &r.base, reply);
done:
    for (size_t i = 0; i < p.p_n; i++) tg_rpc_pb_free(&p.p_e[i]->base);
    return code;
}

/* ---- ExportLedger ------------------------------------------------------------------------------ */

static const char CSV_HEADER[] =
    "seq,settled_at,kind,entry_id,account,project,key,run,model,upstream_model,channel,"
    "route_type,bucket,currency,amount_nano,cost_nano,upstream_cost_nano,input_tokens,"
    "output_tokens,price_version\n";

/* Appends one CSV line for row to b. */
int tg_cp_csv_row(tg_buf_t *b, const tg_ledger_row_t *row, const Tollgate__V1__LedgerEntry *e)
{
    char when[32];
    const Tollgate__V1__UsageRecord *r = e ? e->record : NULL;
    int64_t amount = e ? e->amount_nano : row->lr_cost_nano;
    int64_t cost = r ? r->cost_nano : 0;
    const char *f[] = {row->lr_record_id, row->lr_account_id, row->lr_project_id, row->lr_key_id,
                       row->lr_run_id,    row->lr_model,      row->lr_upstream_model,
                       row->lr_channel_id, row->lr_route_type, row->lr_bucket, row->lr_currency};
    int rc = 0;
    tg_cp_rfc3339(row->lr_settled_us, when);
    rc |= tg_buf_printf(b, "%" PRIu64 ",%s,%s,", row->lr_seq, when, kind_name(row->lr_kind));
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        rc |= tg_cp_csv_field(b, f[i]);
        rc |= tg_buf_puts(b, ",");
    }
    rc |= tg_buf_printf(b, "%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 "\n",
                        amount, cost, row->lr_upstream_cost_nano, row->lr_input_tokens,
                        row->lr_output_tokens, row->lr_price_version);
    return rc ? TG_BUF_ENOMEM : 0;
}

typedef struct export_job {
    tg_cp_t *ej_cp;
    tg_rpc_call_t *ej_call;
    ProtobufCMessage *ej_req; /* LedgerQuery, tg_rpc_pb_free */
    lq_t ej_q;
    tg_buf_t ej_buf;
    int ej_failed; /* a send failed: the client left or is stuck */
    uint64_t ej_rows;
} export_job_t;

#define CHUNK_BYTES (64 * 1024)
#define SEND_TIMEOUT_MS 30000

static int flush_chunk(export_job_t *j)
{
    Tollgate__V1__CsvChunk c = TOLLGATE__V1__CSV_CHUNK__INIT;
    if (j->ej_buf.b_len == 0) return 0;
    c.lines = j->ej_buf.b_data;
    /* a worker thread, not a server thread: send waits for the client */
    if (tg_rpc_call_send_pb(j->ej_call, &c.base, SEND_TIMEOUT_MS) != 0) j->ej_failed = 1;
    tg_buf_reset(&j->ej_buf);
    return j->ej_failed;
}

static int export_cb(const tg_ledger_row_t *row, void *arg)
{
    export_job_t *j = arg;
    Tollgate__V1__LedgerEntry *e;
    int rc;
    if (!kind_wanted(&j->ej_q, row->lr_kind)) return 0;
    if (atomic_load(&j->ej_cp->cp_stopping) || tg_rpc_call_cancelled(j->ej_call)) {
        j->ej_failed = 1;
        return 1;
    }
    e = row_entry(row);
    rc = tg_cp_csv_row(&j->ej_buf, row, e);
    if (e) tg_rpc_pb_free(&e->base);
    if (rc != 0) {
        j->ej_failed = 1;
        return 1;
    }
    j->ej_rows++;
    return j->ej_buf.b_len >= CHUNK_BYTES ? flush_chunk(j) : 0;
}

static void *export_main(void *arg)
{
    export_job_t *j = arg;
    char err[TG_ERRLEN] = "";
    int rc;
    tg_buf_puts(&j->ej_buf, CSV_HEADER);
    rc = tg_ledger_export(j->ej_cp->cp_ledger, &j->ej_q.lq_f, 0, export_cb, j, NULL, err,
                          sizeof err);
    if (rc == 0 && !j->ej_failed) flush_chunk(j);
    if (rc != 0)
        tg_rpc_call_finish(j->ej_call, TG_RPC_CODE_INTERNAL, err);
    else if (j->ej_failed)
        tg_rpc_call_finish(j->ej_call, TG_RPC_CODE_CANCELLED, "export stopped: client gone or slow");
    else
        tg_rpc_call_finish(j->ej_call, TG_RPC_CODE_OK, NULL);
    TG_LOG(TG_LOG_INFO, "admin", "ledger export ended: %" PRIu64 " rows%s", j->ej_rows,
           j->ej_failed ? " (stopped early)" : "");
    tg_buf_free(&j->ej_buf);
    tg_rpc_pb_free(j->ej_req);
    tg_free(j);
    atomic_fetch_sub(&tg_cp_exports_running, 1);
    return NULL;
}

static int export_ledger(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, void *arg)
{
    const cp_binding_t *b = arg;
    cp_actx_t a;
    char err[TG_ERRLEN] = "";
    export_job_t *j;
    pthread_t th;
    pthread_attr_t at;
    int code = cp_stream_begin(b->b_cp, call, b->b_m, &a);
    if (code != TG_RPC_CODE_OK) return code;
    if ((code = ledger_closed(&a)) != TG_RPC_CODE_OK) return code;
    if (!(j = tg_calloc(1, sizeof(*j)))) return cp_fail(&a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory");
    if (tg_rpc_pb_unpack(&tollgate__v1__ledger_query__descriptor, req, req_len, &j->ej_req, err,
                         sizeof err) != 0) {
        tg_free(j);
        return cp_fail(&a, TG_RPC_CODE_INVALID_ARGUMENT, "request: %s", err);
    }
    if ((code = to_filter(&a, (const Tollgate__V1__LedgerQuery *)j->ej_req, &j->ej_q)) !=
        TG_RPC_CODE_OK) {
        tg_rpc_pb_free(j->ej_req);
        tg_free(j);
        return code;
    }
    j->ej_cp = b->b_cp;
    j->ej_call = call;
    tg_buf_init(&j->ej_buf, 4 * CHUNK_BYTES);
    atomic_fetch_add(&tg_cp_exports_running, 1);
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &at, export_main, j) != 0) {
        pthread_attr_destroy(&at);
        atomic_fetch_sub(&tg_cp_exports_running, 1);
        tg_rpc_pb_free(j->ej_req);
        tg_free(j);
        return cp_fail(&a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "cannot start an export thread");
    }
    pthread_attr_destroy(&at);
    return TG_RPC_KEEP;
}

/* ---- spend scopes: GetKeyLimits, a run's budget state -------------------------------------------- */

/* Fills st (strings in the call's pool) with scope s's state now: the
 * stored Balance under TG_CP_K_LIMIT (what is left after settled spend, the
 * agents' holds), or the whole limit when nothing was spent yet. Returns 0
 * or a negative code after failing the call. */
static int limit_state(cp_actx_t *a, const cp_scope_t *s, Tollgate__V1__LimitState *st)
{
    ProtobufCMessage *m = NULL;
    int code = TG_RPC_CODE_OK;
    int rc = cp_read(a, cp_fmt(a, "%s", s->cs_key), &tollgate__v1__balance__descriptor, &m, NULL, &code);
    if (rc < 0)
        return rc;
    Tollgate__V1__Balance fresh, *b = cp_scope_state(s, rc == 0 ? (Tollgate__V1__Balance *)m : NULL, &fresh);
    int64_t now = tg_cp_now_us();
    tollgate__v1__limit_state__init(st);
    st->scope = cp_fmt(a, "%s", s->cs_id);
    st->kind = cp_fmt(a, "%s", s->cs_kind);
    st->id = cp_fmt(a, "%s", s->cs_obj);
    st->window = (Tollgate__V1__LimitWindow)s->cs_window;
    st->window_start_us = s->cs_start;
    st->resets_at_us = s->cs_end == INT64_MAX ? 0 : s->cs_end;
    st->limit_nano = s->cs_limit;
    st->spent_nano = s->cs_limit - b->balance_nano;
    st->reserved_nano = cp_lease_reserved(b, now);
    st->remaining_nano = b->balance_nano - st->reserved_nano;
    st->currency = cp_fmt(a, "%s", s->cs_currency);
    st->action = (Tollgate__V1__LimitAction)s->cs_action;
    tg_rpc_pb_free(m);
    return 0;
}

static int get_key_limits(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__GetKeyLimitsRequest *q = (const Tollgate__V1__GetKeyLimitsRequest *)reqm;
    Tollgate__V1__GetKeyLimitsResponse out = TOLLGATE__V1__GET_KEY_LIMITS_RESPONSE__INIT;
    ProtobufCMessage *km = NULL, *pm = NULL, *am = NULL;
    int code = TG_RPC_CODE_OK, rc;
    if (!q->key_id[0])
        return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "key_id: required");
    rc = cp_read(a, cp_fmt(a, "%s%s", TG_CP_K_KEY, q->key_id), &tollgate__v1__api_key__descriptor, &km, NULL, &code);
    if (rc < 0)
        return code;
    if (rc == 1)
        return cp_fail(a, TG_RPC_CODE_NOT_FOUND, "key_id: key '%s' not found", q->key_id);
    const Tollgate__V1__ApiKey *k = (const Tollgate__V1__ApiKey *)km;
    const Tollgate__V1__Project *p = NULL;
    if (k->project_id[0]) {
        rc = cp_read(a, cp_fmt(a, "%s%s", TG_CP_K_PROJECT, k->project_id), &tollgate__v1__project__descriptor, &pm,
                     NULL, &code);
        if (rc < 0)
            goto done;
        p = rc == 0 ? (const Tollgate__V1__Project *)pm : NULL;
    }
    rc = cp_read(a, cp_fmt(a, "%s%s", TG_CP_K_ACCOUNT, k->account_id), &tollgate__v1__account__descriptor, &am, NULL,
                 &code);
    if (rc < 0)
        goto done;
    const Tollgate__V1__Account *ac = rc == 0 ? (const Tollgate__V1__Account *)am : NULL;
    /* the key's limits, then its project's, then its account's */
    struct {
        const char *kind, *id;
        Tollgate__V1__SpendLimit **l;
        size_t n;
    } own[3] = {{"key", k->id, k->spend_limits, k->n_spend_limits},
                {"project", p ? p->id : "", p ? p->spend_limits : NULL, p ? p->n_spend_limits : 0},
                {"account", ac ? ac->id : "", ac ? ac->spend_limits : NULL, ac ? ac->n_spend_limits : 0}};
    size_t n = own[0].n + own[1].n + own[2].n;
    Tollgate__V1__LimitState *st = tg_pool_calloc(a->ax_pool, (n + 1) * sizeof(*st));
    Tollgate__V1__LimitState **sp = tg_pool_calloc(a->ax_pool, (n + 1) * sizeof(*sp));
    if (!st || !sp) {
        code = cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
        goto done;
    }
    int64_t now = tg_cp_now_us(), tz = cp_account_tz(a->ax_cp, k->account_id);
    for (size_t o = 0; o < 3; o++)
        for (size_t i = 0; i < own[o].n; i++) {
            cp_scope_t s;
            if (cp_scope_of_limit(own[o].kind, own[o].id, k->account_id, own[o].l[i], now, tz, &s) != 0)
                continue;
            if ((rc = limit_state(a, &s, &st[out.n_limits])) < 0) {
                code = -rc;
                goto done;
            }
            sp[out.n_limits] = &st[out.n_limits];
            out.n_limits++;
        }
    out.limits = sp;
    code = cp_reply(a, &out.base, reply);
done:
    tg_rpc_pb_free(am);
    tg_rpc_pb_free(pm);
    tg_rpc_pb_free(km);
    return code;
}

/* ---- GetRunReceipt ------------------------------------------------------------------------------- */

#define RECEIPT_MAX_RECORDS 100000

typedef struct receipt {
    Tollgate__V1__LedgerEntry **rc_e;
    size_t rc_n, rc_cap;
    int rc_nomem, rc_toobig;
    Tollgate__V1__RunTotals *rc_by[64];
    Tollgate__V1__LedgerTotals rc_byt[64];
    Tollgate__V1__RunTotals rc_byv[64];
    size_t rc_nby;
    Tollgate__V1__LedgerTotals rc_total;
    uint32_t rc_attempts, rc_fallbacks;
} receipt_t;

static int receipt_cb(const tg_ledger_row_t *row, void *arg)
{
    receipt_t *r = arg;
    Tollgate__V1__LedgerEntry *e;
    const Tollgate__V1__UsageRecord *u;
    size_t i;
    if (row->lr_kind != TG_LEDGER_USAGE) return 0;
    if (r->rc_n == RECEIPT_MAX_RECORDS) {
        r->rc_toobig = 1;
        return 1;
    }
    if (!(e = row_entry(row))) {
        r->rc_nomem = 1;
        return 1;
    }
    if (r->rc_n == r->rc_cap) {
        size_t nc = r->rc_cap ? r->rc_cap * 2 : 64;
        Tollgate__V1__LedgerEntry **ne = tg_realloc(r->rc_e, nc * sizeof(*ne));
        if (!ne) {
            tg_rpc_pb_free(&e->base);
            r->rc_nomem = 1;
            return 1;
        }
        r->rc_e = ne;
        r->rc_cap = nc;
    }
    r->rc_e[r->rc_n++] = e;
    u = e->record;
    if (!r->rc_total.currency[0] && row->lr_currency) r->rc_total.currency = (char *)row->lr_currency;
    add_totals(&r->rc_total, row, e);
    for (i = 0; i < r->rc_nby; i++)
        if ((int)r->rc_byv[i].route_type == (u ? (int)u->route_type : 0) &&
            strcmp(r->rc_byv[i].bucket, e->bucket) == 0)
            break;
    if (i == r->rc_nby && i < 64) {
        tollgate__v1__run_totals__init(&r->rc_byv[i]);
        tollgate__v1__ledger_totals__init(&r->rc_byt[i]);
        r->rc_byv[i].route_type = u ? u->route_type : 0;
        r->rc_byv[i].bucket = e->bucket; /* lives as long as the entry */
        r->rc_byt[i].currency = e->currency;
        r->rc_byv[i].totals = &r->rc_byt[i];
        r->rc_by[i] = &r->rc_byv[i];
        r->rc_nby++;
    }
    if (i < 64) add_totals(&r->rc_byt[i], row, e);
    if (u) {
        r->rc_attempts += (uint32_t)u->n_attempts;
        r->rc_fallbacks += u->fallback_used ? 1 : 0;
    }
    return 0;
}

static int get_run_receipt(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__GetRunReceiptRequest *q = (const Tollgate__V1__GetRunReceiptRequest *)reqm;
    Tollgate__V1__RunReceipt out = TOLLGATE__V1__RUN_RECEIPT__INIT;
    receipt_t *r = tg_pool_calloc(a->ax_pool, sizeof(*r));
    Tollgate__V1__UsageRecord **recs = NULL;
    ProtobufCMessage *budget = NULL;
    tg_ledger_filter_t f;
    char err[TG_ERRLEN] = "";
    int64_t brev;
    int code = TG_RPC_CODE_OK, rc;

    if (!r) return cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
    if (!q->run_id[0]) return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "run_id: required");
    if ((code = ledger_closed(a)) != TG_RPC_CODE_OK) return code;
    tollgate__v1__ledger_totals__init(&r->rc_total);
    tg_ledger_filter_init(&f);
    f.lf_run_id = q->run_id;
    f.lf_account_id = q->account_id;
    rc = tg_ledger_export(a->ax_cp->cp_ledger, &f, 0, receipt_cb, r, NULL, err, sizeof err);
    if (rc != 0) {
        code = ledger_fail(a, rc, err);
        goto done;
    }
    if (r->rc_nomem || r->rc_toobig) {
        code = cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED,
                       r->rc_toobig ? "run has more than 100000 requests: use ledger export"
                                    : "out of memory");
        goto done;
    }
    rc = cp_read(a, cp_fmt(a, "%s%s", TG_CP_K_RUN, q->run_id), &tollgate__v1__run_budget__descriptor,
                 &budget, &brev, &code);
    if (rc < 0) goto done;
    if (rc == 0 && q->account_id[0] &&
        strcmp(((Tollgate__V1__RunBudget *)budget)->account_id, q->account_id) != 0) {
        tg_rpc_pb_free(budget);
        budget = NULL;
    }
    if (r->rc_n == 0 && !budget) {
        code = cp_fail(a, TG_RPC_CODE_NOT_FOUND, "run '%s': no settled requests and no budget",
                       q->run_id);
        goto done;
    }
    recs = tg_pool_calloc(a->ax_pool, (r->rc_n + 1) * sizeof(*recs));
    if (!recs) {
        code = cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < r->rc_n; i++)
        if (r->rc_e[i]->record) recs[out.n_records++] = r->rc_e[i]->record;
    out.run_id = (char *)q->run_id;
    out.budget = (Tollgate__V1__RunBudget *)budget;
    out.records = recs;
    out.by_route = r->rc_by;
    out.n_by_route = r->rc_nby;
    out.total = &r->rc_total;
    out.attempts = r->rc_attempts;
    out.fallbacks = r->rc_fallbacks;
    Tollgate__V1__LimitState bst;
    cp_scope_t rs;
    if (budget && cp_scope_of_run((Tollgate__V1__RunBudget *)budget, &rs) == 0) {
        if ((rc = limit_state(a, &rs, &bst)) < 0) {
            code = -rc;
            goto done;
        }
        out.budget_state = &bst;
    }
    code = cp_reply(a, &out.base, reply);
done:
    tg_rpc_pb_free(budget);
    for (size_t i = 0; i < r->rc_n; i++) tg_rpc_pb_free(&r->rc_e[i]->base);
    tg_free(r->rc_e);
    return code;
}

const cp_method_t tg_cp_ledger_methods[] = {
    {"GetBalances", &tollgate__v1__get_balances_request__descriptor, CP_NEED_READ,
     "read balances", get_balances, NULL},
    {"QueryLedger", &tollgate__v1__ledger_query__descriptor, CP_NEED_READ, "query the ledger",
     query_ledger, NULL},
    {"ExportLedger", &tollgate__v1__ledger_query__descriptor, CP_NEED_READ, "export the ledger",
     NULL, export_ledger},
    {"GetRunReceipt", &tollgate__v1__get_run_receipt_request__descriptor, CP_NEED_READ,
     "read run receipts", get_run_receipt, NULL},
    {"GetKeyLimits", &tollgate__v1__get_key_limits_request__descriptor, CP_NEED_READ,
     "read key limits", get_key_limits, NULL},
    {NULL, NULL, 0, NULL, NULL, NULL},
};
