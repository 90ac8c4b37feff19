/* settle.c: exactly-once settlement of signed usage batches and operator
 * balance changes, and signed ledger checkpoints.
 *
 * Every balance movement is one store transaction (see cp.h):
 *   compares  dedup markers absent (TG_CP_K_BATCH, one per batch of the
 *             group, or TG_CP_K_IDEM),
 *             each touched balance's mod_revision unchanged since read,
 *             TG_CP_K_SETTLED_SEQ's mod_revision (the log's tail),
 *             TG_CP_K_LEADER's create_revision is ours (fencing: a replica
 *             that lost the lease can never commit), and a caller's extras
 *             (a balance change's audit counter);
 *   success   new balances, the markers (the answer a resend gets), the
 *             settled-log value TG_CP_K_SETTLED/<seq> (a packed LedgerPage of
 *             the LedgerEntry rows), the new seq, TG_CP_K_AGENT_SEQ per
 *             agent, and the caller's extras (the audit event).
 * A compare failure re-reads and retries (bounded). After the commit the
 * leader's tailer appends the rows to its ledger and the callers answer;
 * if the leader dies between the two, the tailer (tail.c) of whichever
 * replica settles next appends the rows from the settled log before it
 * settles anything, and the resent batch finds its marker: charged once,
 * answered with the stored response.
 *
 * Transactions on one leader are serialized by as_settle_mu: the settled
 * log is one sequence anyway, and serializing avoids self-inflicted compare
 * failures. Throughput comes from batching: records per batch, and batches
 * per transaction (the group commit below).
 *
 * Costs: the price entry, the bucket and the cost of a record come from
 * billing/tg_billing.h, the code the agent prices with too, so a correct
 * agent never mismatches: the entry's platform rate for the cost charged,
 * the channel's cost_rate_ppm for the upstream cost (0 = 1,000,000 each).
 * A record that cannot be priced (no entry, or a cost past the limits) is
 * charged its reported cost and flagged. A record is never refused for the
 * configuration: without an account or a bucket for its route type it
 * settles with no balance change, flagged unbilled when it has a cost.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/tg_log.h"
#include "billing/tg_billing.h"
#include "controlplane/agentside.h"
#include "pbpack/tg_pbpack.h"
#include "tollgate/v1/admin.pb-c.h"
#include "tollgate/v1/agent.pb-c.h"

#define SETTLE_ATTEMPTS 8
#define ACK_WAIT_MS 10000
/* compares: marker, seq, leader; ops: marker, settled, seq; 2 per balance */
#define SETTLE_MAX_BALANCES ((TG_STORE_MAX_TXN_OPS - 6) / 2)

/* ---- pure parts ---------------------------------------------------------------- */

static const Tollgate__V1__BucketSpec *bucket_spec(const Tollgate__V1__Account *a, const char *name)
{
    for (size_t i = 0; a != NULL && i < a->n_buckets; i++)
        if (strcmp(a->buckets[i]->name, name) == 0)
            return a->buckets[i];
    return NULL;
}

int cp_batch_key(const char *agent_id, uint64_t seq, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, TG_CP_K_BATCH "%s/%020" PRIu64, agent_id, seq);
    return n < 0 || (size_t)n >= outlen ? -1 : n;
}

int cp_idem_key(const char *account_id, const char *idem, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, TG_CP_K_IDEM "%s/%s", account_id, idem);
    return n < 0 || (size_t)n >= outlen ? -1 : n;
}

static const char *route_type_name(int rt)
{
    switch (rt) {
    case TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_DIRECT:
        return "direct";
    case TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED:
        return "pooled";
    default:
        return "";
    }
}

void cp_row_from_entry(const Tollgate__V1__LedgerEntry *e, const uint8_t *packed, size_t packed_len,
                       tg_ledger_row_t *row)
{
    const Tollgate__V1__UsageRecord *r = e->record;
    memset(row, 0, sizeof(*row));
    row->lr_kind = e->kind == TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_TOPUP        ? TG_LEDGER_TOPUP
                   : e->kind == TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_ADJUSTMENT ? TG_LEDGER_ADJUSTMENT
                                                                                  : TG_LEDGER_USAGE;
    row->lr_record_id = e->entry_id;
    row->lr_settled_us = e->settled_at_us;
    row->lr_request_us = r != NULL && r->started_at_us != 0 ? r->started_at_us : e->settled_at_us;
    row->lr_agent_id = e->batch_agent_id;
    row->lr_account_id = e->account_id;
    row->lr_bucket = e->bucket;
    row->lr_currency = e->currency;
    /* the amount debited: the charge for usage, minus the credit for a top-up,
     * so the sum over any rows is what they took from the balances */
    row->lr_cost_nano = -e->amount_nano;
    if (r != NULL) {
        row->lr_project_id = r->project_id;
        row->lr_key_id = r->key_id;
        row->lr_run_id = r->run_id;
        row->lr_model = r->requested_model;
        row->lr_upstream_model = r->upstream_model;
        row->lr_channel_id = r->channel_id;
        row->lr_route_type = route_type_name((int)r->route_type);
        row->lr_upstream_cost_nano = r->upstream_cost_nano;
        row->lr_input_tokens = r->usage != NULL && r->usage->input_tokens > 0 ? r->usage->input_tokens : 0;
        row->lr_output_tokens =
            r->usage != NULL && r->usage->output_tokens > 0 ? r->usage->output_tokens : 0;
        row->lr_price_version = r->price_version;
    }
    row->lr_record = packed;
    row->lr_record_len = packed_len;
}

/* ---- ledger --------------------------------------------------------------------- */

int cp_ledger_apply_items(tg_cp_t *cp, const cp_apply_item_t *items, size_t k, char *err,
                          size_t errlen)
{
    ProtobufCMessage **m = tg_calloc(k ? k : 1, sizeof(*m));
    tg_ledger_row_t *rows = NULL;
    tg_ledger_result_t *res = NULL;
    tg_buf_t *packed = NULL;
    size_t n = 0, r = 0, npacked = 0;
    int rc = 0;
    if (m == NULL)
        return tg_errf(err, errlen, TG_LEDGER_ENOMEM, "no memory for %zu settled batches", k);
    for (size_t j = 0; j < k; j++) {
        if (items[j].ai_rows != NULL) {
            n += items[j].ai_nrows;
            continue;
        }
        rc = cp_settled_unpack(items[j].ai_val, items[j].ai_len, &m[j], err, errlen);
        if (rc < 0)
            goto fail;
        n += ((Tollgate__V1__LedgerPage *)m[j])->n_entries;
        npacked += ((Tollgate__V1__LedgerPage *)m[j])->n_entries;
    }
    if (n == 0)
        goto fail;
    rows = tg_calloc(n, sizeof(*rows));
    res = tg_calloc(n, sizeof(*res));
    packed = tg_calloc(npacked ? npacked : 1, sizeof(*packed));
    if (rows == NULL || res == NULL || packed == NULL) {
        rc = tg_errf(err, errlen, TG_LEDGER_ENOMEM, "no memory for %zu ledger rows", n);
        goto fail;
    }
    for (size_t j = 0, p = 0; j < k; j++) {
        if (items[j].ai_rows != NULL) {
            memcpy(&rows[r], items[j].ai_rows, items[j].ai_nrows * sizeof(*rows));
            r += items[j].ai_nrows;
            continue;
        }
        Tollgate__V1__LedgerPage *page = (Tollgate__V1__LedgerPage *)m[j];
        for (size_t i = 0; i < page->n_entries; i++, r++, p++) {
            /* the row's record is the entry packed alone: the same bytes on
             * every replica, so a replay is a duplicate, never a conflict */
            tg_buf_init(&packed[p], TG_LEDGER_RECORD_MAX);
            rc = tg_rpc_pb_pack(&page->entries[i]->base, &packed[p], err, errlen);
            if (rc < 0)
                goto fail;
            cp_row_from_entry(page->entries[i], (const uint8_t *)packed[p].b_data, packed[p].b_len,
                              &rows[r]);
        }
    }
    /* all the batches in one append: one write transaction, one fsync */
    rc = tg_ledger_append(cp->cp_ledger, rows, n, res, NULL, err, errlen);
    if (rc < 0)
        goto fail;
    atomic_store(&cp->cp_m_settled_at_us, tg_cp_now_us()); /* /metrics: settlement age */
    for (size_t i = 0; i < n; i++)
        if (res[i].ar_status == TG_LEDGER_ROW_CONFLICT)
            TG_LOG(TG_LOG_ERROR, "cp.settle", "ledger row %s conflicts with the stored row",
                   rows[i].lr_record_id);
fail:
    for (size_t i = 0; packed != NULL && i < npacked; i++)
        tg_buf_free(&packed[i]);
    tg_free(packed);
    tg_free(res);
    tg_free(rows);
    for (size_t j = 0; j < k; j++)
        tg_rpc_pb_free(m[j]);
    tg_free(m);
    return rc;
}

int cp_ledger_apply(tg_cp_t *cp, const uint8_t *const *vals, const size_t *lens, size_t k,
                    char *err, size_t errlen)
{
    cp_apply_item_t *items = tg_calloc(k ? k : 1, sizeof(*items));
    if (items == NULL)
        return tg_errf(err, errlen, TG_LEDGER_ENOMEM, "no memory for %zu settled batches", k);
    for (size_t j = 0; j < k; j++) {
        items[j].ai_val = vals[j];
        items[j].ai_len = lens[j];
    }
    int rc = cp_ledger_apply_items(cp, items, k, err, errlen);
    tg_free(items);
    return rc;
}

int cp_stash_take(tg_cp_agent_side_t *as, uint64_t seq, const void *val, size_t len,
                  const tg_ledger_row_t **rows, size_t *n)
{
    for (cp_stash_t *p = as->as_stash; p; p = p->st_next)
        /* the same bytes, not just the same seq: after a lost lease another
         * leader's entry could carry this seq */
        if (p->st_seq == seq && p->st_state == 0 && p->st_len == len && memcmp(p->st_val, val, len) == 0) {
            p->st_state = 1;
            *rows = p->st_rows;
            *n = p->st_n;
            return 1;
        }
    return 0;
}

void cp_stash_release(tg_cp_agent_side_t *as, uint64_t seq, int appended)
{
    for (cp_stash_t *p = as->as_stash; p; p = p->st_next)
        if (p->st_seq == seq && p->st_state == 1)
            p->st_state = appended ? 2 : 0;
}

/* Takes a stash back from the list: the rows point into the settling call's
 * memory, so first wait out a tailer that is appending them. */
static void stash_drop(tg_cp_agent_side_t *as, cp_stash_t *stash)
{
    if (stash == NULL)
        return;
    pthread_mutex_lock(&as->as_mu);
    while (stash->st_state == 1)
        pthread_cond_wait(&as->as_cv, &as->as_mu);
    for (cp_stash_t **pp = &as->as_stash; *pp; pp = &(*pp)->st_next)
        if (*pp == stash) {
            *pp = stash->st_next;
            break;
        }
    pthread_mutex_unlock(&as->as_mu);
    tg_free(stash);
}

/* ---- committed, not yet in the ledger ----------------------------------------- */

#define GROUP_MAX_JOBS 16 /* batches in one group commit (see "group commit") */

/* The pending set: record ids of group commits this leader made whose rows
 * the tailer has not appended yet, and of commits already appended but kept
 * while an early check that read the ledger before them is in flight
 * (pending_horizon); the duplicate check reads them beside the ledger.
 * One entry holds the ids one group commit settled: per batch a run of them
 * in sorted order (each batch's ids are sorted once, outside the lock), the
 * strings in one block. */
typedef struct cp_pending {
    struct cp_pending *p_next;
    int64_t p_rev;                   /* store revision of the commit */
    size_t p_nrun;
    size_t p_end[GROUP_MAX_JOBS];    /* run r is p_ids[p_end[r - 1] (0 for r = 0) .. p_end[r]) */
    char **p_ids;
    char *p_mem;
} cp_pending_t;

/* A batch whose record ids were looked up in the ledger before it queued
 * for the commit lock (early_check): the ledger then held every commit up
 * to e_t0, so under the lock only commits after e_t0 are left to check,
 * and those are kept in the pending set until no early check predates
 * them (pending_horizon). */
typedef struct cp_early {
    struct cp_early *e_next;
    int64_t e_t0;         /* as_tail_rev when the ledger was read */
    int64_t e_leader_rev; /* the leadership it was read under */
} cp_early_t;

/* Pending commits at or below this revision can go: this replica's ledger
 * holds them, and every early check in flight read it after them. as_mu
 * held. */
static int64_t pending_horizon(const tg_cp_agent_side_t *as)
{
    int64_t h = as->as_tail_rev;
    for (const cp_early_t *e = as->as_early; e != NULL; e = e->e_next)
        if (e->e_t0 < h)
            h = e->e_t0;
    return h;
}

static void pending_free(cp_pending_t *p)
{
    if (p == NULL)
        return;
    tg_free(p->p_ids);
    tg_free(p->p_mem);
    tg_free(p);
}

void cp_pending_prune(tg_cp_agent_side_t *as, int64_t rev)
{
    if (rev != INT64_MAX) {
        int64_t h = pending_horizon(as);
        rev = h < rev ? h : rev;
    }
    for (cp_pending_t **pp = &as->as_pending; *pp;) {
        cp_pending_t *p = *pp;
        if (p->p_rev > rev) {
            pp = &p->p_next;
            continue;
        }
        *pp = p->p_next;
        pending_free(p);
    }
}

/* ---- store helpers ------------------------------------------------------------ */

/* Reads the settled-log tail (TG_CP_K_SETTLED_SEQ) when not known. */
static int load_seq(tg_cp_agent_side_t *as, char *err, size_t errlen)
{
    tg_store_kv_t *kv = NULL;
    if (as->as_settled_seq_modrev >= 0)
        return 0;
    int rc = tg_store_get(as->as_cp->cp_store, TG_CP_K_SETTLED_SEQ, strlen(TG_CP_K_SETTLED_SEQ), &kv,
                          NULL, err, errlen);
    if (rc < 0)
        return rc;
    as->as_settled_seq = 0;
    as->as_settled_seq_modrev = 0;
    if (kv != NULL) {
        char tmp[32] = {0};
        memcpy(tmp, kv->kv_val, kv->kv_val_len < 31 ? kv->kv_val_len : 31);
        as->as_settled_seq = strtoull(tmp, NULL, 10);
        as->as_settled_seq_modrev = kv->kv_mod_rev;
    }
    tg_store_kv_free(kv);
    return 0;
}

/* A group commit (see "group commit" below); its reads go through
 * group_get_pb. */
typedef struct settle_group settle_group_t;
static int group_get_pb(settle_group_t *g, tg_cp_t *cp, const char *key, const ProtobufCMessageDescriptor *d,
                        ProtobufCMessage **out, int64_t *mod_rev, char *err, size_t errlen);

/* One balance touched by a settlement. */
typedef struct bal {
    char b_key[TG_STORE_MAX_KEY];
    Tollgate__V1__Balance *b_msg; /* unpacked, or built when absent */
    Tollgate__V1__Balance b_new;  /* when absent: storage for b_msg */
    int64_t b_modrev;             /* 0 when absent */
    int64_t b_start;              /* balance read */
    tg_buf_t b_packed;
    int b_prepaid;
} bal_t;

static void bal_clear(bal_t *b)
{
    if (b->b_msg != NULL && b->b_msg != &b->b_new)
        tg_rpc_pb_free(&b->b_msg->base);
    b->b_msg = NULL;
    tg_buf_free(&b->b_packed);
}

/* The store key of (account, bucket)'s balance into out. */
static void bal_key(const char *account_id, const char *bucket, char *out, size_t outlen)
{
    snprintf(out, outlen, TG_CP_K_BALANCE "%s/%s", account_id, bucket);
}

/* Loads the balance of (account, bucket spec) into b, through g's reads
 * (g may be NULL). */
static int bal_load(tg_cp_t *cp, settle_group_t *g, const Tollgate__V1__Account *a,
                    const Tollgate__V1__BucketSpec *bs, bal_t *b, char *err, size_t errlen)
{
    ProtobufCMessage *m = NULL;
    int64_t modrev = 0;
    bal_key(a->id, bs->name, b->b_key, sizeof(b->b_key));
    tg_buf_init(&b->b_packed, TG_STORE_MAX_VALUE);
    int rc = group_get_pb(g, cp, b->b_key, &tollgate__v1__balance__descriptor, &m, &modrev, err, errlen);
    if (rc < 0)
        return rc;
    if (m == NULL) {
        tollgate__v1__balance__init(&b->b_new);
        b->b_new.account_id = a->id;
        b->b_new.bucket = bs->name;
        b->b_new.currency = bs->currency;
        b->b_new.credit_limit_nano = bs->credit_limit_nano;
        b->b_msg = &b->b_new;
        b->b_modrev = 0;
    } else {
        b->b_msg = (Tollgate__V1__Balance *)m;
        b->b_modrev = modrev;
    }
    b->b_start = b->b_msg->balance_nano;
    b->b_prepaid = a->billing_mode != TOLLGATE__V1__BILLING_MODE__BILLING_MODE_POSTPAID;
    return 0;
}

/* What one settlement transaction writes (see the file comment). */
typedef struct commit_spec {
    int64_t cs_leader_rev;                 /* fencing: our leader key's create_revision */
    const char *const *cs_markers;         /* dedup markers, compared absent, then put */
    const tg_buf_t *const *cs_marker_vals; /* their values (the answers) */
    size_t cs_nmark;
    bal_t *cs_bals;                        /* balances, compared unchanged, then put */
    size_t cs_nbal;
    const tg_buf_t *cs_settled;            /* the settled-log value, or NULL/empty */
    const tg_store_cmp_t *cs_xcmps;        /* the caller's extra compares and puts */
    size_t cs_nxcmp;                       /*   (a balance change's audit event) */
    const tg_store_op_t *cs_xops;
    size_t cs_nxop;
} commit_spec_t;

#define COMMIT_MAX (TG_STORE_MAX_TXN_OPS + 8)

/* Test hooks (tests/e2e/cp_settle_early.test.mjs): TG_CP_TEST_HOOK_DIR
 * names a directory; a file `commit-error` there makes the next settlement
 * commit that applies answer an error as if etcd had applied it and then not
 * answered (the file is removed), and `<sequence>.hold` holds a batch of that
 * sequence after its early check (early_test_hold). */
static const char *g_hook_dir; /* NULL: no hooks (read once: not per batch) */
static pthread_once_t g_hook_once = PTHREAD_ONCE_INIT;

static void hook_dir_read(void)
{
    const char *dir = getenv("TG_CP_TEST_HOOK_DIR");
    g_hook_dir = dir != NULL && dir[0] != '\0' ? dir : NULL;
}

static const char *hook_dir(void)
{
    pthread_once(&g_hook_once, hook_dir_read);
    return g_hook_dir;
}

static int test_hook_path(char *out, size_t outlen, const char *name)
{
    const char *dir = hook_dir();
    if (dir == NULL)
        return 0;
    int n = snprintf(out, outlen, "%s/%s", dir, name);
    return n > 0 && (size_t)n < outlen;
}

static int commit_test_error(void)
{
    char p[1024];
    return test_hook_path(p, sizeof(p), "commit-error") && unlink(p) == 0;
}

/* The common transaction: markers, balances, one settled-log value and the
 * caller's extras. Returns 1 committed, 0 compare failed (re-read),
 * negative on error (TG_STORE_ETOOBIG past the store's limits). On
 * TG_STORE_EUNKNOWN, reads the first marker to learn the outcome. */
static int settle_commit(tg_cp_agent_side_t *as, const commit_spec_t *cs, int64_t *rev_out, char *err,
                         size_t errlen)
{
    tg_store_t *st = as->as_cp->cp_store;
    tg_store_cmp_t cmps[COMMIT_MAX];
    tg_store_op_t ops[COMMIT_MAX];
    tg_store_txn_res_t tres;
    char seqkey[sizeof(TG_CP_K_SETTLED) + 24], seqval[24];
    size_t nc = 0, no = 0;
    uint64_t seq = as->as_settled_seq + 1;
    int has_settled = cs->cs_settled != NULL && cs->cs_settled->b_len > 0;

    if (cs->cs_nmark == 0 || 2 + cs->cs_nmark + cs->cs_nbal + cs->cs_nxcmp > COMMIT_MAX ||
        2 + cs->cs_nmark + cs->cs_nbal + cs->cs_nxop > COMMIT_MAX)
        return tg_errf(err, errlen, TG_STORE_ETOOBIG, "settlement transaction: too many operations");
    memset(cmps, 0, sizeof(cmps));
    memset(ops, 0, sizeof(ops));
    for (size_t i = 0; i < cs->cs_nmark; i++)
        cmps[nc++] = (tg_store_cmp_t){.c_key = cs->cs_markers[i], .c_key_len = strlen(cs->cs_markers[i]),
                                      .c_target = TG_STORE_CMP_VERSION, .c_op = TG_STORE_EQ, .c_num = 0};
    cmps[nc++] = (tg_store_cmp_t){.c_key = TG_CP_K_LEADER, .c_key_len = strlen(TG_CP_K_LEADER),
                                  .c_target = TG_STORE_CMP_CREATE_REV, .c_op = TG_STORE_EQ,
                                  .c_num = cs->cs_leader_rev};
    for (size_t i = 0; i < cs->cs_nbal; i++) {
        bal_t *b = &cs->cs_bals[i];
        cmps[nc++] = (tg_store_cmp_t){.c_key = b->b_key, .c_key_len = strlen(b->b_key),
                                      .c_target = TG_STORE_CMP_MOD_REV, .c_op = TG_STORE_EQ,
                                      .c_num = b->b_modrev};
        ops[no++] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT, .op_key = b->b_key,
                                    .op_key_len = strlen(b->b_key), .op_val = b->b_packed.b_data,
                                    .op_val_len = b->b_packed.b_len};
    }
    for (size_t i = 0; i < cs->cs_nmark; i++)
        ops[no++] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT, .op_key = cs->cs_markers[i],
                                    .op_key_len = strlen(cs->cs_markers[i]),
                                    .op_val = cs->cs_marker_vals[i]->b_data,
                                    .op_val_len = cs->cs_marker_vals[i]->b_len};
    if (has_settled) {
        snprintf(seqkey, sizeof(seqkey), TG_CP_K_SETTLED "%020" PRIu64, seq);
        snprintf(seqval, sizeof(seqval), "%" PRIu64, seq);
        cmps[nc++] = (tg_store_cmp_t){.c_key = TG_CP_K_SETTLED_SEQ,
                                      .c_key_len = strlen(TG_CP_K_SETTLED_SEQ),
                                      .c_target = TG_STORE_CMP_MOD_REV, .c_op = TG_STORE_EQ,
                                      .c_num = as->as_settled_seq_modrev};
        ops[no++] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT, .op_key = seqkey,
                                    .op_key_len = strlen(seqkey), .op_val = cs->cs_settled->b_data,
                                    .op_val_len = cs->cs_settled->b_len};
        ops[no++] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT, .op_key = TG_CP_K_SETTLED_SEQ,
                                    .op_key_len = strlen(TG_CP_K_SETTLED_SEQ), .op_val = seqval,
                                    .op_val_len = strlen(seqval)};
    }
    for (size_t i = 0; i < cs->cs_nxcmp; i++)
        cmps[nc++] = cs->cs_xcmps[i];
    for (size_t i = 0; i < cs->cs_nxop; i++)
        ops[no++] = cs->cs_xops[i];
    int rc = tg_store_txn(st, cmps, nc, ops, no, NULL, 0, &tres, err, errlen);
    if (rc == TG_STORE_EUNKNOWN) {
        /* sent, no answer: the marker says whether it applied */
        tg_store_kv_t *kv = NULL;
        char err2[TG_ERRLEN] = "";
        if (tg_store_get(st, cs->cs_markers[0], strlen(cs->cs_markers[0]), &kv, NULL, err2,
                         sizeof(err2)) < 0)
            return rc;
        int applied = kv != NULL;
        if (applied)
            *rev_out = kv->kv_mod_rev;
        tg_store_kv_free(kv);
        as->as_settled_seq_modrev = -1;
        if (!applied)
            return 0;
        if (has_settled)
            as->as_settled_seq = seq;
        return 1;
    }
    if (rc < 0)
        return rc;
    if (tres.tx_succeeded && commit_test_error()) {
        tg_store_txn_res_free(&tres);
        return tg_errf(err, errlen, TG_STORE_EUNKNOWN, "test hook: the commit applied, then no answer");
    }
    int ok = tres.tx_succeeded;
    *rev_out = tres.tx_revision;
    if (ok && has_settled) {
        as->as_settled_seq = seq;
        as->as_settled_seq_modrev = tres.tx_revision;
    }
    if (!ok)
        as->as_settled_seq_modrev = -1;
    tg_store_txn_res_free(&tres);
    return ok;
}

static void crash_hook(tg_cp_t *cp)
{
    if (cp->cp_crash_at != NULL && strcmp(cp->cp_crash_at, TG_CP_CRASH_AFTER_COMMIT) == 0) {
        TG_LOG(TG_LOG_WARN, "cp.settle", "TG_CP_CRASH_AT=after_commit: exiting before the ack");
        _exit(99);
    }
}

/* Leader gate: fills the fencing revision or says who settles. */
static int leader_gate(tg_cp_t *cp, int64_t *leader_rev, char *err, size_t errlen)
{
    char name[256];
    if (cp->cp_agent == NULL)
        return tg_errf(err, errlen, TG_RPC_CODE_UNAVAILABLE, "agent side not started");
    if (!cp_leader_check(cp->cp_agent, leader_rev, name, sizeof(name)))
        return tg_errf(err, errlen, TG_RPC_CODE_UNAVAILABLE,
                       "not the settling leader; leader is %s", name[0] ? name : "unknown (election in progress)");
    /* the leader's ledger cannot take the rows (disk full): settle nothing
     * and answer nothing from markers either, so agents keep their records
     * until the rows can be appended (tail.c) */
    char why[TG_ERRLEN];
    if (cp_ledger_stuck(cp->cp_agent, why, sizeof(why)))
        return tg_errf(err, errlen, TG_RPC_CODE_UNAVAILABLE, "%s", why);
    return TG_RPC_CODE_OK;
}

/* ---- ReportUsage --------------------------------------------------------------- */

/* Per-batch caches: accounts, price cards and channels by key. */
typedef struct cache_ent {
    char *c_key;
    ProtobufCMessage *c_msg; /* NULL: absent */
} cache_ent_t;

typedef struct cache {
    cache_ent_t *c_v;
    size_t c_n, c_cap;
} cache_t;

static int cache_get(tg_cp_t *cp, cache_t *c, const char *key, const ProtobufCMessageDescriptor *d,
                     ProtobufCMessage **out, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->c_n; i++)
        if (strcmp(c->c_v[i].c_key, key) == 0) {
            *out = c->c_v[i].c_msg;
            return 0;
        }
    if (c->c_n == c->c_cap) {
        size_t nc = c->c_cap ? c->c_cap * 2 : 16;
        cache_ent_t *v = tg_realloc(c->c_v, nc * sizeof(*v));
        if (v == NULL)
            return tg_errf(err, errlen, TG_RPC_ENOMEM, "no memory");
        c->c_v = v;
        c->c_cap = nc;
    }
    ProtobufCMessage *m = NULL;
    int rc = tg_cp_get_pb(cp, key, d, &m, NULL, err, errlen);
    if (rc < 0)
        return rc;
    c->c_v[c->c_n].c_key = tg_strdup(key);
    if (c->c_v[c->c_n].c_key == NULL) {
        tg_rpc_pb_free(m);
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "no memory");
    }
    c->c_v[c->c_n++].c_msg = m;
    *out = m;
    return 0;
}

static void cache_free(cache_t *c)
{
    for (size_t i = 0; i < c->c_n; i++) {
        tg_free(c->c_v[i].c_key);
        tg_rpc_pb_free(c->c_v[i].c_msg);
    }
    tg_free(c->c_v);
    memset(c, 0, sizeof(*c));
}

static int seq_cb(const tg_ledger_row_t *row, void *arg)
{
    *(uint64_t *)arg = row->lr_seq;
    return 1;
}

/* The request's two messages (the signed batch and the batch inside it)
 * are unpacked into one pool freed at once with the call: a batch of 1,000
 * records is some 20,000 small strings and messages, which tg_malloc would
 * allocate and free one by one. */
static void *pool_pb_alloc(void *data, size_t size)
{
    return tg_pool_alloc(data, size);
}

static void pool_pb_free(void *data, void *p)
{
    (void)data;
    (void)p; /* freed with the pool */
}

static int unpack_pooled(tg_pool_t *pool, const ProtobufCMessageDescriptor *d, const void *data,
                         size_t len, ProtobufCMessage **out, char *err, size_t errlen)
{
    ProtobufCAllocator a = {pool_pb_alloc, pool_pb_free, pool};
    *out = protobuf_c_message_unpack(d, &a, len, data ? data : (const void *)"");
    if (*out == NULL)
        return tg_errf(err, errlen, TG_RPC_EPROTO, "%zu bytes are not a valid %s message (or out of memory)",
                       len, d->name);
    return 0;
}

/* Everything one ReportUsage call holds. */
typedef struct id_ix {
    const char *ii_id;
    size_t ii_i;
} id_ix_t;

typedef struct settle_ctx {
    tg_cp_t *sc_cp;
    tg_pool_t *sc_pool;                /* sc_signed and sc_batch live here */
    Tollgate__V1__SignedUsageBatch *sc_signed;
    Tollgate__V1__UsageBatch *sc_batch;
    Tollgate__V1__AgentInfo *sc_agent;
    cache_t sc_accounts, sc_cards, sc_channels, sc_keys, sc_projects, sc_runs;
    /* limit scopes (key, project and account windows, runs): the batch's distinct
     * ones, and per record up to MAX_RS indices into them */
    cp_scope_t *sc_scopes;
    size_t sc_nscopes, sc_capscopes;
    size_t *sc_scope_bal;              /* per distinct scope: index in the group's balances */
    uint16_t *sc_rs;                   /* per record: MAX_RS scope indices */
    uint8_t *sc_nrs;                   /* per record: how many */
    int *sc_dup;                       /* per record: 1 duplicate */
    const Tollgate__V1__Account **sc_acct; /* per record; NULL: no such account */
    const char **sc_bucket;            /* per record; NULL: no bucket to debit */
    const char **sc_unbilled;          /* per record: why its cost is not debited, or NULL */
    char **sc_unbilled_buf;            /* per record: storage for that reason */
    int64_t *sc_cost, *sc_upcost;      /* per record: recomputed */
    int *sc_mismatch;
    size_t *sc_balidx;                 /* per record: index in the group's balances */
    Tollgate__V1__LedgerEntry *sc_entries;
    char **sc_orig;                    /* per record: its own bucket, currency */
    uint8_t *sc_recs;                  /* the records packed as settled (NULL: not) */
    size_t *sc_recoff, *sc_reclen;     /* per record: its bytes in sc_recs */
    id_ix_t *sc_ids;                   /* the records' ids, sorted by (id, index) */
    /* early_check: per record 1 when the ledger had its id at sc_early.e_t0 */
    int *sc_found;
    int sc_early_on;                   /* sc_early is in as_early */
    int sc_early_ok;                   /* sc_found is complete */
    int sc_early_counted;              /* its early answer was used (counted once) */
    cp_early_t sc_early;
} settle_ctx_t;

static void ctx_free(settle_ctx_t *c)
{
    if (c->sc_early_on) {
        tg_cp_agent_side_t *as = c->sc_cp->cp_agent;
        pthread_mutex_lock(&as->as_mu);
        for (cp_early_t **pp = &as->as_early; *pp != NULL; pp = &(*pp)->e_next)
            if (*pp == &c->sc_early) {
                *pp = c->sc_early.e_next;
                break;
            }
        cp_pending_prune(as, as->as_tail_rev); /* what only this check kept */
        pthread_mutex_unlock(&as->as_mu);
    }
    tg_free(c->sc_found);
    /* the records point at strings owned by the caches while settled: give
     * them back their own (the batch is in sc_pool, freed whole below, so
     * this only keeps it a self-owned message until then) */
    for (size_t i = 0; c->sc_orig != NULL && c->sc_batch != NULL && i < c->sc_batch->n_records; i++)
        if (c->sc_orig[2 * i] != NULL) {
            c->sc_batch->records[i]->bucket = c->sc_orig[2 * i];
            c->sc_batch->records[i]->currency = c->sc_orig[2 * i + 1];
        }
    for (size_t i = 0; c->sc_unbilled_buf != NULL && c->sc_batch != NULL && i < c->sc_batch->n_records; i++)
        tg_free(c->sc_unbilled_buf[i]);
    tg_free(c->sc_unbilled_buf);
    tg_free(c->sc_unbilled);
    tg_free(c->sc_orig);
    tg_free(c->sc_recs);
    tg_free(c->sc_recoff);
    tg_free(c->sc_reclen);
    tg_free(c->sc_ids);
    tg_free(c->sc_balidx);
    tg_free(c->sc_dup);
    tg_free(c->sc_acct);
    tg_free(c->sc_bucket);
    tg_free(c->sc_cost);
    tg_free(c->sc_upcost);
    tg_free(c->sc_mismatch);
    tg_free(c->sc_entries);
    cache_free(&c->sc_accounts);
    cache_free(&c->sc_cards);
    cache_free(&c->sc_channels);
    cache_free(&c->sc_keys);
    cache_free(&c->sc_projects);
    cache_free(&c->sc_runs);
    tg_free(c->sc_scopes);
    tg_free(c->sc_scope_bal);
    tg_free(c->sc_rs);
    tg_free(c->sc_nrs);
    tg_rpc_pb_free((ProtobufCMessage *)c->sc_agent);
    tg_pool_destroy(c->sc_pool); /* sc_batch, sc_signed */
}

static int cmp_id_ix(const void *a, const void *b)
{
    const id_ix_t *x = a, *y = b;
    int c = strcmp(x->ii_id, y->ii_id);
    return c ? c : (x->ii_i > y->ii_i) - (x->ii_i < y->ii_i);
}

/* Marks dup[] for the ids of v (n, sorted by id) also found in w (m sorted
 * ids, reached through at(w, k)): one merge pass, O(n + m) comparisons. */
static void mark_common(const id_ix_t *v, size_t n, const void *w, size_t m,
                        const char *(*at)(const void *w, size_t k), int *dup)
{
    size_t i = 0, k = 0;
    /* disjoint ranges (another agent's ids, an earlier batch's): nothing */
    if (n == 0 || m == 0 || strcmp(v[n - 1].ii_id, at(w, 0)) < 0 || strcmp(at(w, m - 1), v[0].ii_id) < 0)
        return;
    while (i < n && k < m) {
        int d = strcmp(v[i].ii_id, at(w, k));
        if (d == 0)
            dup[v[i++].ii_i] = 1;
        else if (d < 0)
            i++;
        else
            k++;
    }
}

static const char *at_ix(const void *w, size_t k)
{
    return ((const id_ix_t *)w)[k].ii_id;
}

static const char *at_str(const void *w, size_t k)
{
    return ((char *const *)w)[k];
}

#define MAX_RS 8 /* limit scopes of one record: key, project and account windows, the run */

/* Adds scope s to record i's scopes (deduplicated across the batch).
 * Returns 0 or RESOURCE_EXHAUSTED. */
static int add_scope(settle_ctx_t *c, size_t i, const cp_scope_t *s, char *err, size_t errlen)
{
    size_t k;
    if (c->sc_nrs[i] >= MAX_RS)
        return 0; /* more limits than that on one record: the rest are not counted (documented) */
    for (k = 0; k < c->sc_nscopes; k++)
        if (strcmp(c->sc_scopes[k].cs_id, s->cs_id) == 0)
            break;
    if (k == c->sc_nscopes) {
        if (k == c->sc_capscopes) {
            size_t nc = c->sc_capscopes ? 2 * c->sc_capscopes : 8;
            cp_scope_t *v = tg_realloc(c->sc_scopes, nc * sizeof(*v));
            size_t *bi = v ? tg_realloc(c->sc_scope_bal, nc * sizeof(*bi)) : NULL;
            if (v)
                c->sc_scopes = v;
            if (bi)
                c->sc_scope_bal = bi;
            if (!v || !bi || nc > UINT16_MAX)
                return tg_errf(err, errlen, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory for the batch's limits");
            c->sc_capscopes = nc;
        }
        c->sc_scopes[k] = *s;
        c->sc_scope_bal[k] = SIZE_MAX; /* set when a charged record loads it (build_job) */
        c->sc_nscopes++;
    }
    c->sc_rs[i * MAX_RS + c->sc_nrs[i]++] = (uint16_t)k;
    return 0;
}

/* The limit scopes record i counts against, from the configuration: its
 * key's, its project's and its account's limits in the windows of its start
 * time, and its run's budget; only those in the currency of the bucket it paid from. */
static int record_scopes(settle_ctx_t *c, size_t i, const char *currency, char *err, size_t errlen)
{
    tg_cp_t *cp = c->sc_cp;
    const Tollgate__V1__UsageRecord *r = c->sc_batch->records[i];
    char key[TG_STORE_MAX_KEY];
    ProtobufCMessage *m = NULL;
    cp_scope_t s;
    const char *project = r->project_id;
    int64_t tz = 0;
    if (c->sc_acct[i] != NULL && tg_billing_tz(c->sc_acct[i]->time_zone, &tz) != 0)
        tz = 0; /* validated at write time: an older value counts in UTC */
    if (r->key_id[0] != '\0') {
        snprintf(key, sizeof(key), TG_CP_K_KEY "%s", r->key_id);
        if (cache_get(cp, &c->sc_keys, key, &tollgate__v1__api_key__descriptor, &m, err, errlen) < 0)
            return TG_RPC_CODE_UNAVAILABLE;
        const Tollgate__V1__ApiKey *k = (const Tollgate__V1__ApiKey *)m;
        for (size_t j = 0; k != NULL && j < k->n_spend_limits; j++)
            if (strcmp(k->spend_limits[j]->currency, currency) == 0 &&
                cp_scope_of_limit("key", k->id, k->account_id, k->spend_limits[j], r->started_at_us, tz, &s) == 0 &&
                add_scope(c, i, &s, err, errlen) != 0)
                return TG_RPC_CODE_RESOURCE_EXHAUSTED;
        if (k != NULL && k->project_id[0] != '\0')
            project = k->project_id;
    }
    if (project[0] != '\0') {
        snprintf(key, sizeof(key), TG_CP_K_PROJECT "%s", project);
        if (cache_get(cp, &c->sc_projects, key, &tollgate__v1__project__descriptor, &m, err, errlen) < 0)
            return TG_RPC_CODE_UNAVAILABLE;
        const Tollgate__V1__Project *p = (const Tollgate__V1__Project *)m;
        for (size_t j = 0; p != NULL && j < p->n_spend_limits; j++)
            if (strcmp(p->spend_limits[j]->currency, currency) == 0 &&
                cp_scope_of_limit("project", p->id, p->account_id, p->spend_limits[j], r->started_at_us, tz, &s) == 0 &&
                add_scope(c, i, &s, err, errlen) != 0)
                return TG_RPC_CODE_RESOURCE_EXHAUSTED;
    }
    const Tollgate__V1__Account *a = c->sc_acct[i];
    for (size_t j = 0; a != NULL && j < a->n_spend_limits; j++)
        if (strcmp(a->spend_limits[j]->currency, currency) == 0 &&
            cp_scope_of_limit("account", a->id, a->id, a->spend_limits[j], r->started_at_us, tz, &s) == 0 &&
            add_scope(c, i, &s, err, errlen) != 0)
            return TG_RPC_CODE_RESOURCE_EXHAUSTED;
    if (r->run_id[0] != '\0') {
        snprintf(key, sizeof(key), TG_CP_K_RUN "%s", r->run_id);
        if (cache_get(cp, &c->sc_runs, key, &tollgate__v1__run_budget__descriptor, &m, err, errlen) < 0)
            return TG_RPC_CODE_UNAVAILABLE;
        const Tollgate__V1__RunBudget *b = (const Tollgate__V1__RunBudget *)m;
        /* the agent's rule: a budget that names a key or project binds only
         * that key's or project's requests of the run */
        if (b != NULL && strcmp(b->account_id, r->account_id) == 0 && strcmp(b->currency, currency) == 0 &&
            (b->key_id[0] == '\0' || strcmp(b->key_id, r->key_id) == 0) &&
            (b->project_id[0] == '\0' || strcmp(b->project_id, project) == 0) &&
            cp_scope_of_run(b, &s) == 0 && add_scope(c, i, &s, err, errlen) != 0)
            return TG_RPC_CODE_RESOURCE_EXHAUSTED;
    }
    return TG_RPC_CODE_OK;
}

/* Loads the state of limit scope s into b (a fresh one when absent),
 * through g's reads. */
static int scope_bal_load(tg_cp_t *cp, settle_group_t *g, const cp_scope_t *s, bal_t *b, char *err,
                          size_t errlen)
{
    ProtobufCMessage *m = NULL;
    int64_t modrev = 0;
    snprintf(b->b_key, sizeof(b->b_key), "%s", s->cs_key);
    tg_buf_init(&b->b_packed, TG_STORE_MAX_VALUE);
    int rc = group_get_pb(g, cp, b->b_key, &tollgate__v1__balance__descriptor, &m, &modrev, err, errlen);
    if (rc < 0)
        return rc;
    b->b_msg = cp_scope_state(s, (Tollgate__V1__Balance *)m, &b->b_new);
    b->b_modrev = m != NULL ? modrev : 0;
    b->b_start = b->b_msg->balance_nano;
    b->b_prepaid = 0;
    return 0;
}

/* Sets an unbilled reason for record i (copied). */
static void set_unbilled(settle_ctx_t *c, size_t i, const char *fmt, const char *a)
{
    char buf[TG_STORE_MAX_KEY + 64];
    snprintf(buf, sizeof(buf), fmt, a);
    tg_free(c->sc_unbilled_buf[i]);
    c->sc_unbilled_buf[i] = tg_strdup(buf);
    c->sc_unbilled[i] = c->sc_unbilled_buf[i] != NULL ? c->sc_unbilled_buf[i] : "no bucket to debit";
}

/* Prices every record and picks its bucket, before the batch queues for a
 * group commit (so concurrent batches price in parallel). Reads only
 * configuration: whether a record is a duplicate is decided at commit time
 * (mark_duplicates). A record never fails its batch for a configuration
 * problem: no account, or no bucket for its route type, leaves it without
 * a bucket (settled unbilled if it has a cost, see build_job). */
/* ---- records packed once ------------------------------------------------------
 *
 * A settled-log entry is a LedgerEntry whose field 10 is the UsageRecord
 * (~300 of its ~470 bytes). protobuf-c sizes a nested message again when
 * it packs it, so sizing each entry and then packing it walked every record
 * three times under the commit lock. Instead each record is packed once
 * while its batch is priced (in parallel, before the lock: what it says is
 * known then), and under the lock the entry's few other fields are written
 * around those bytes in field-number order, as protobuf-c writes them (a
 * proto3 scalar at its zero value, an empty string, a NULL message: left
 * out). The first entries a process writes are checked against
 * protobuf-c's own bytes; a difference logs an error and turns this off. */

static size_t varint_len(uint64_t v)
{
    size_t k = 1;
    while (v > 0x7f) {
        v >>= 7;
        k++;
    }
    return k;
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t k = 0;
    do {
        p[k++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return k;
}

#define FAST_CHECKS 4096          /* entries checked against protobuf-c per process */
static atomic_int g_fast_off;     /* 1: a check failed, protobuf-c packs everything */
static atomic_long g_fast_checked;
static atomic_int g_fast_layout;  /* 0 not yet looked at, 1 as below, 2 changed */
static atomic_int g_check_all;    /* 0 not yet read, 1 first FAST_CHECKS, 2 every entry */

/* LedgerEntry's fields as cp_entry_pack_fast knows them, in number order:
 * each is written below or makes it refuse the entry. A field added,
 * renumbered or retyped in usage.proto makes the descriptor differ, and
 * then protobuf-c packs every entry (agentside_test lists them too). */
static const struct {
    uint32_t id;
    ProtobufCType type;
} FAST_FIELDS[] = {
    {1, PROTOBUF_C_TYPE_UINT64},  {2, PROTOBUF_C_TYPE_ENUM},    {3, PROTOBUF_C_TYPE_STRING},
    {4, PROTOBUF_C_TYPE_INT64},   {5, PROTOBUF_C_TYPE_STRING},  {6, PROTOBUF_C_TYPE_STRING},
    {7, PROTOBUF_C_TYPE_STRING},  {8, PROTOBUF_C_TYPE_INT64},   {9, PROTOBUF_C_TYPE_INT64},
    {10, PROTOBUF_C_TYPE_MESSAGE}, {11, PROTOBUF_C_TYPE_INT64}, {12, PROTOBUF_C_TYPE_BOOL},
    {13, PROTOBUF_C_TYPE_STRING}, {14, PROTOBUF_C_TYPE_UINT64}, {15, PROTOBUF_C_TYPE_STRING},
    {16, PROTOBUF_C_TYPE_STRING}, {17, PROTOBUF_C_TYPE_MESSAGE}, {18, PROTOBUF_C_TYPE_BYTES},
    {19, PROTOBUF_C_TYPE_BYTES},  {20, PROTOBUF_C_TYPE_BOOL},   {21, PROTOBUF_C_TYPE_STRING},
};

/* 1 when LedgerEntry's descriptor has exactly FAST_FIELDS (proto3, no
 * oneof, not repeated). */
static int fast_layout_ok(void)
{
    int v = atomic_load(&g_fast_layout);
    if (v != 0)
        return v == 1;
    const ProtobufCMessageDescriptor *d = &tollgate__v1__ledger_entry__descriptor;
    size_t n = sizeof FAST_FIELDS / sizeof FAST_FIELDS[0];
    int ok = d->n_fields == n;
    for (size_t i = 0; ok && i < n; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        ok = f->id == FAST_FIELDS[i].id && f->type == FAST_FIELDS[i].type && f->label == PROTOBUF_C_LABEL_NONE &&
             (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) == 0;
    }
    if (!ok)
        TG_LOG(TG_LOG_WARN, "cp.settle", "LedgerEntry's fields changed: entries are packed by protobuf-c");
    atomic_store(&g_fast_layout, ok ? 1 : 2);
    return ok;
}

/* 1 when this entry's bytes are to be checked against protobuf-c's: the
 * first FAST_CHECKS of the process, or every one with TG_CP_CHECK_PACKING=1
 * (end-to-end tests), where a difference aborts the process. */
static int fast_check_now(void)
{
    int v = atomic_load(&g_check_all);
    if (v == 0) {
        const char *e = getenv("TG_CP_CHECK_PACKING");
        v = e != NULL && strcmp(e, "1") == 0 ? 2 : 1;
        atomic_store(&g_check_all, v);
    }
    return v == 2 || atomic_load(&g_fast_checked) < FAST_CHECKS;
}

/* A packed entry differed from protobuf-c's: log it and pack whole from
 * now on; under TG_CP_CHECK_PACKING=1 it is a test failure. */
static void fast_mismatch(const char *entry_id, const char *what)
{
    TG_LOG(TG_LOG_ERROR, "cp.settle", "entry %s: packed %s differ from protobuf-c's; packing entries whole from now on",
           entry_id, what);
    atomic_store(&g_fast_off, 1);
    if (atomic_load(&g_check_all) == 2)
        abort();
}

/* One field: varint (wire type 0) or length-delimited (2, p/n). Returns
 * its size; writes it at *w (advanced) when w is not NULL. */
static size_t fld_varint(uint8_t **w, uint32_t field, uint64_t v)
{
    if (v == 0)
        return 0;
    if (w != NULL) {
        *w += put_varint(*w, (uint64_t)field << 3);
        *w += put_varint(*w, v);
    }
    return varint_len((uint64_t)field << 3) + varint_len(v);
}

static size_t fld_bytes(uint8_t **w, uint32_t field, const void *p, size_t n, int always)
{
    if (n == 0 && !always)
        return 0;
    if (w != NULL) {
        *w += put_varint(*w, ((uint64_t)field << 3) | 2);
        *w += put_varint(*w, n);
        if (n > 0)
            memcpy(*w, p, n);
        *w += n;
    }
    return varint_len(((uint64_t)field << 3) | 2) + varint_len(n) + n;
}

static size_t fld_str(uint8_t **w, uint32_t field, const char *s)
{
    return s != NULL ? fld_bytes(w, field, s, strlen(s), 0) : 0;
}

size_t cp_entry_pack_fast(const Tollgate__V1__LedgerEntry *e, const uint8_t *rec, size_t rlen, uint8_t *out)
{
    if (e->seq != 0 || e->record == NULL || (e->idempotency_key != NULL && e->idempotency_key[0]) ||
        (e->reason != NULL && e->reason[0]) || e->actor != NULL || e->prev_hash.len != 0 || e->hash.len != 0 ||
        e->base.n_unknown_fields != 0 || (int)e->kind < 0 || !fast_layout_ok())
        return SIZE_MAX;
    uint8_t *w = out, **wp = out != NULL ? &w : NULL;
    size_t n = 0;
    n += fld_varint(wp, 2, (uint64_t)e->kind);
    n += fld_str(wp, 3, e->entry_id);
    n += fld_varint(wp, 4, (uint64_t)e->settled_at_us);
    n += fld_str(wp, 5, e->account_id);
    n += fld_str(wp, 6, e->bucket);
    n += fld_str(wp, 7, e->currency);
    n += fld_varint(wp, 8, (uint64_t)e->amount_nano);
    n += fld_varint(wp, 9, (uint64_t)e->balance_after_nano);
    n += fld_bytes(wp, 10, rec, rlen, 1);
    n += fld_varint(wp, 11, (uint64_t)e->recomputed_cost_nano);
    n += fld_varint(wp, 12, e->cost_mismatch ? 1 : 0);
    n += fld_str(wp, 13, e->batch_agent_id);
    n += fld_varint(wp, 14, e->batch_sequence);
    n += fld_varint(wp, 20, e->unbilled ? 1 : 0);
    n += fld_str(wp, 21, e->unbilled_reason);
    return n;
}

/* Sets each record's settled fields (its bucket and currency when it has
 * one to debit, its upstream cost) and packs it into c->sc_recs. Leaves
 * sc_recs NULL when out of memory (the entries are then packed whole). */
static void pack_records(settle_ctx_t *c)
{
    Tollgate__V1__UsageBatch *b = c->sc_batch;
    size_t n = b->n_records, total = 0;
    for (size_t i = 0; i < n; i++) {
        Tollgate__V1__UsageRecord *r = b->records[i];
        if (c->sc_orig[2 * i] == NULL) {
            c->sc_orig[2 * i] = r->bucket;
            c->sc_orig[2 * i + 1] = r->currency;
        }
        r->upstream_cost_nano = c->sc_upcost[i];
        const Tollgate__V1__BucketSpec *bs =
            c->sc_bucket[i] != NULL ? bucket_spec(c->sc_acct[i], c->sc_bucket[i]) : NULL;
        if (bs != NULL) {
            r->bucket = (char *)c->sc_bucket[i];
            r->currency = bs->currency;
        }
    }
    if (atomic_load(&g_fast_off))
        return;
    c->sc_recoff = tg_calloc(n ? n : 1, sizeof(size_t));
    c->sc_reclen = tg_calloc(n ? n : 1, sizeof(size_t));
    if (c->sc_recoff == NULL || c->sc_reclen == NULL)
        return;
    /* one pass (tg_pbpack: protobuf-c's bytes without its sizing passes),
     * all records end to end in one buffer sized from the batch's */
    tg_buf_t all;
    tg_buf_init(&all, SIZE_MAX);
    if (tg_buf_reserve(&all, c->sc_signed->batch.len + 64 * n) != 0)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        c->sc_recoff[i] = total;
        if (tg_pbpack(&b->records[i]->base, &all) != 0)
            goto fail;
        c->sc_reclen[i] = all.b_len - total;
        total = all.b_len;
    }
    c->sc_recs = (uint8_t *)tg_buf_steal(&all, &total);
    if (c->sc_recs == NULL) /* nothing packed: a batch of no records */
        c->sc_recs = tg_malloc(1);
    return;
fail:
    tg_buf_free(&all);
}

/* ---- pricing ------------------------------------------------------------------- */

static int price_records(settle_ctx_t *c, char *err, size_t errlen)
{
    tg_cp_t *cp = c->sc_cp;
    Tollgate__V1__UsageBatch *b = c->sc_batch;
    char key[TG_STORE_MAX_KEY];
    /* the previous record's lookups (see below) */
    const char *last_acct_id = NULL, *last_card_id = NULL, *last_model = NULL, *last_chan_id = NULL;
    const Tollgate__V1__Account *last_acct = NULL;
    const Tollgate__V1__PriceEntry *last_pe = NULL;
    ProtobufCMessage *last_chan = NULL;
    int64_t last_version = 0;
    int last_rt = 0;
    for (size_t i = 0; i < b->n_records; i++) {
        Tollgate__V1__UsageRecord *r = b->records[i];
        ProtobufCMessage *m = NULL;
        if (r->record_id[0] == '\0' || strlen(r->record_id) > TG_LEDGER_ID_MAX)
            return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                           "records[%zu].record_id: must be 1..%d bytes", i, TG_LEDGER_ID_MAX);
        c->sc_ids[i] = (id_ix_t){r->record_id, i};
        const Tollgate__V1__TokenUsage *u = r->usage;
        int64_t in = u ? u->input_tokens : 0, out = u ? u->output_tokens : 0;
        int64_t cr = u ? u->cache_read_tokens : 0, cw = u ? u->cache_write_tokens : 0;
        int64_t im = u ? u->images : 0;
        if (in < 0 || out < 0 || cr < 0 || cw < 0 || im < 0)
            return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                           "records[%zu] (%s).usage: token counts must be >= 0", i, r->record_id);
        /* Records of a batch mostly share their account, price entry and
         * channel: each is looked up again only when it differs from the
         * previous record's (same keys, same answer: the caches and the
         * card are not changed while the batch is priced). */
        if (last_acct_id == NULL || strcmp(last_acct_id, r->account_id) != 0) {
            last_acct = NULL;
            if (r->account_id[0] != '\0') {
                snprintf(key, sizeof(key), TG_CP_K_ACCOUNT "%s", r->account_id);
                if (cache_get(cp, &c->sc_accounts, key, &tollgate__v1__account__descriptor, &m, err,
                              errlen) < 0)
                    return TG_RPC_CODE_UNAVAILABLE;
                last_acct = (const Tollgate__V1__Account *)m;
            }
            last_acct_id = r->account_id;
        }
        const Tollgate__V1__Account *a = last_acct;
        c->sc_acct[i] = a;
        c->sc_bucket[i] = a != NULL ? tg_billing_bucket(a, (int)r->route_type) : NULL;
        if (c->sc_bucket[i] != NULL && r->bucket[0] != '\0' && strcmp(r->bucket, c->sc_bucket[i]) != 0)
            TG_LOG(TG_LOG_WARN, "cp.settle", "record %s named bucket %s; account map says %s",
                   r->record_id, r->bucket, c->sc_bucket[i]);
        /* price: the card version the record names */
        const Tollgate__V1__PriceEntry *pe = NULL;
        if (r->price_card_id[0] != '\0') {
            const char *model = r->route_model[0] ? r->route_model : r->requested_model;
            if (last_card_id == NULL || strcmp(last_card_id, r->price_card_id) != 0 ||
                last_version != r->price_version || last_rt != (int)r->route_type ||
                strcmp(last_model, model) != 0) {
                snprintf(key, sizeof(key), TG_CP_K_PRICE "%s/%020" PRId64, r->price_card_id,
                         r->price_version);
                if (cache_get(cp, &c->sc_cards, key, &tollgate__v1__price_card__descriptor, &m, err,
                              errlen) < 0)
                    return TG_RPC_CODE_UNAVAILABLE;
                last_pe = tg_billing_lookup((const Tollgate__V1__PriceCard *)m, model,
                                            (int)r->route_type);
                last_card_id = r->price_card_id;
                last_version = r->price_version;
                last_rt = (int)r->route_type;
                last_model = model;
            }
            pe = last_pe;
        }
        int64_t cost_rate = 0;
        if (r->channel_id[0] != '\0') {
            if (last_chan_id == NULL || strcmp(last_chan_id, r->channel_id) != 0) {
                snprintf(key, sizeof(key), TG_CP_K_CHANNEL "%s", r->channel_id);
                if (cache_get(cp, &c->sc_channels, key, &tollgate__v1__channel__descriptor, &m, err,
                              errlen) < 0)
                    return TG_RPC_CODE_UNAVAILABLE;
                last_chan = m;
                last_chan_id = r->channel_id;
            }
            m = last_chan;
            if (m != NULL)
                cost_rate = ((Tollgate__V1__Channel *)m)->cost_rate_ppm;
            else if (r->unit_prices != NULL)
                cost_rate = r->unit_prices->cost_rate_ppm;
        }
        char perr[TG_ERRLEN] = "";
        int prc = TG_BILLING_EINVAL;
        if (pe != NULL) {
            int64_t cost = 0, upcost = 0;
            prc = tg_billing_cost(pe, u, pe->rate_ppm, &cost, perr, sizeof(perr));
            if (prc == 0)
                prc = tg_billing_cost(pe, u, cost_rate, &upcost, perr, sizeof(perr));
            if (prc == 0) {
                c->sc_cost[i] = cost;
                c->sc_upcost[i] = upcost;
            }
        }
        if (prc != 0 && r->cost_nano == 0 && in == 0 && out == 0 && cr == 0 && cw == 0 && im == 0) {
            /* nothing to price (every attempt failed upstream, so no card
             * entry may match): a receipt row of cost 0, not a mismatch */
            c->sc_cost[i] = 0;
            c->sc_upcost[i] = 0;
            prc = 0;
        } else if (prc != 0) {
            /* no price to recompute from: charge what the agent reported and
             * flag it, so an operator sees it in the ledger */
            if (pe == NULL)
                TG_LOG(TG_LOG_WARN, "cp.settle", "record %s: no price entry in card %s version %" PRId64
                       " for model %s; charging the reported cost", r->record_id, r->price_card_id,
                       r->price_version, r->requested_model);
            else
                TG_LOG(TG_LOG_WARN, "cp.settle", "record %s: pricing with card %s version %" PRId64
                       " for model %s failed (%s: %s); charging the reported cost", r->record_id,
                       r->price_card_id, r->price_version, r->requested_model,
                       tg_billing_strerror(prc), perr);
            c->sc_cost[i] = r->cost_nano > 0 ? r->cost_nano : 0;
            c->sc_upcost[i] = r->upstream_cost_nano > 0 ? r->upstream_cost_nano : 0;
            c->sc_mismatch[i] = 1;
        }
        /* an answer the client never got is not charged (the upstream's
         * cost stays in the row, for the operator's margin) */
        if (r->answer_withheld)
            c->sc_cost[i] = 0;
        if (r->cost_nano != c->sc_cost[i])
            c->sc_mismatch[i] = 1;
        if (c->sc_bucket[i] != NULL && c->sc_cost[i] > 0) {
            int sc = record_scopes(c, i, bucket_spec(a, c->sc_bucket[i])->currency, err, errlen);
            if (sc != TG_RPC_CODE_OK)
                return sc;
        }
        /* a cost with nowhere to debit it: kept in the row, flagged, counted */
        if (c->sc_bucket[i] == NULL && c->sc_cost[i] != 0) {
            if (a == NULL)
                set_unbilled(c, i, "account '%s' not found", r->account_id);
            else
                set_unbilled(c, i, "account has no bucket for route type %s",
                             r->route_type == 0 ? "unspecified" : route_type_name((int)r->route_type));
        }
    }
    pack_records(c); /* outside the commit lock too */
    /* sorted once here, outside the commit lock, for mark_duplicates */
    qsort(c->sc_ids, b->n_records, sizeof(*c->sc_ids), cmp_id_ix);
    return TG_RPC_CODE_OK;
}


/* ---- group commit ---------------------------------------------------------------
 *
 * ReportUsage calls verify and price their batch in parallel, then queue.
 * The first caller to find no commit under way leads: it takes the queued
 * batches (up to GROUP_MAX_JOBS) and, under as_settle_mu, settles them in
 * ONE store transaction: every batch's marker compared absent and put, the
 * balances they touch (each compared unchanged), one settled-log value
 * holding all their ledger rows, the log's seq, the leader fence. Batches
 * arriving meanwhile queue for the next group, so under load every commit
 * (fsync) and every ledger append covers several batches. The leader hands
 * the lead on as soon as its transaction returns, then waits for its
 * tailer and wakes its group's callers, who answer.
 *
 * Exactly-once is unchanged: a record is a duplicate if it repeats inside
 * its batch, inside an earlier batch of the same group, in the pending set
 * or in the ledger; the same batch twice in one group goes to the next
 * group, where its marker answers it. A group fits the store's limits: the
 * settled value at most TG_STORE_MAX_VALUE, compares and puts at most
 * TG_STORE_MAX_TXN_OPS; the batches that do not fit wait for the next
 * group (a batch too big alone fails as before). */

/* puts: settled value, seq, a marker and at most one agent-seq per job, a
 * balance each (compares: leader, seq, a marker per job, a balance each) */
#define GROUP_MAX_BALANCES (TG_STORE_MAX_TXN_OPS - 2 - 2 * GROUP_MAX_JOBS)
#define BUILD_CUT 1 /* build_job: does not fit after the others, next group */

typedef struct settle_job {
    struct settle_job *j_next;         /* (gmu) queue link */
    settle_ctx_t *j_c;
    char j_marker[TG_STORE_MAX_KEY];
    tg_buf_t j_marker_val;             /* the packed j_resp, committed as the marker */
    Tollgate__V1__ReportUsageResponse j_resp;
    tg_buf_t *j_reply;                 /* the caller's reply (a duplicate batch's answer) */
    int j_done;                        /* (gmu) settled, answered or failed */
    int j_answered;                    /* the reply is already in j_reply */
    int j_code;                        /* TG_RPC_CODE_* */
    char j_err[TG_ERRLEN];
    int64_t j_rev;                     /* revision of its commit */
    size_t j_first;                    /* its first entry in the group's value */
} settle_job_t;

struct settle_group {
    struct settle_group *g_next;       /* (gmu) in as_gfree */
    settle_job_t *g_jobs[GROUP_MAX_JOBS];
    size_t g_n;                        /* jobs taken (then: committed prefix) */
    bal_t g_bals[GROUP_MAX_BALANCES];
    size_t g_nbal;
    int64_t g_saved[GROUP_MAX_BALANCES]; /* balances before the job being built */
    Tollgate__V1__LedgerEntry **g_ents; /* the value's entries, in order */
    size_t *g_len;                     /* per entry: packed size */
    const uint8_t **g_rec;             /* per entry: its record's bytes, or NULL */
    size_t *g_reclen;
    tg_ledger_row_t *g_rows;           /* per entry: its ledger row */
    size_t g_nent, g_cap;
    size_t g_total;                    /* bytes of the settled value so far */
    tg_buf_t g_settled;                /* the packed LedgerPage */
    tg_buf_t g_zsettled;               /* it compressed (settled.c), when the store gets that */
    const tg_buf_t *g_stored;          /* what the store gets: g_settled or g_zsettled */
    void *g_zctx;                      /* compression context, kept with the group */
    /* AgentInfo.last_batch_sequence: TG_CP_K_AGENT_SEQ puts */
    char g_akey[GROUP_MAX_JOBS][TG_STORE_MAX_KEY];
    char g_aval[GROUP_MAX_JOBS][24];
    tg_store_op_t g_aops[GROUP_MAX_JOBS];
    size_t g_naops;
    /* each job's agent revocation key, compared absent at the commit */
    char g_rkey[GROUP_MAX_JOBS][TG_STORE_MAX_KEY];
    tg_store_cmp_t g_rcmps[GROUP_MAX_JOBS];
    /* the keys the group reads (markers, agent seqs, balances), read in one
     * store transaction at its start: one round trip to etcd, not one per
     * key. g_pre_ok 0: read each key on its own (after a compare failure) */
    char *g_prekeys[TG_STORE_MAX_TXN_OPS];
    size_t g_npre;
    tg_store_txn_res_t g_pre;
    int g_pre_ok;
};

static void pre_clear(settle_group_t *g)
{
    for (size_t i = 0; i < g->g_npre; i++)
        tg_free(g->g_prekeys[i]);
    g->g_npre = 0;
    tg_store_txn_res_free(&g->g_pre);
    g->g_pre_ok = 0;
}

/* Adds key to the group's read set (once; silently not past the limit). */
static void pre_add(settle_group_t *g, const char *key)
{
    for (size_t i = 0; i < g->g_npre; i++)
        if (strcmp(g->g_prekeys[i], key) == 0)
            return;
    if (g->g_npre < TG_STORE_MAX_TXN_OPS && (g->g_prekeys[g->g_npre] = tg_strdup(key)) != NULL)
        g->g_npre++;
}

/* Reads the group's keys in one transaction of GETs (as_settle_mu held). A
 * failure only means each key is read on its own later. */
static void pre_read(settle_group_t *g, tg_cp_t *cp)
{
    tg_store_op_t ops[TG_STORE_MAX_TXN_OPS];
    char err[TG_ERRLEN];
    for (size_t i = 0; i < g->g_npre; i++)
        ops[i] = (tg_store_op_t){.op_type = TG_STORE_OP_GET, .op_key = g->g_prekeys[i],
                                 .op_key_len = strlen(g->g_prekeys[i])};
    g->g_pre_ok = g->g_npre > 0 &&
                  tg_store_txn(cp->cp_store, NULL, 0, ops, g->g_npre, NULL, 0, &g->g_pre, err, sizeof(err)) == 0 &&
                  g->g_pre.tx_n == g->g_npre;
}

/* tg_cp_get_pb through the group's read set: the value read at the group's
 * start when key is in it, else a read of its own. g may be NULL. */
static int group_get_pb(settle_group_t *g, tg_cp_t *cp, const char *key, const ProtobufCMessageDescriptor *d,
                        ProtobufCMessage **out, int64_t *mod_rev, char *err, size_t errlen)
{
    for (size_t i = 0; g != NULL && g->g_pre_ok && i < g->g_npre; i++) {
        if (strcmp(g->g_prekeys[i], key) != 0)
            continue;
        const tg_store_range_res_t *r = &g->g_pre.tx_res[i].or_range;
        *out = NULL;
        if (mod_rev)
            *mod_rev = 0;
        if (r->rs_n == 0)
            return 1;
        if (mod_rev)
            *mod_rev = r->rs_kvs[0].kv_mod_rev;
        int rc = tg_rpc_pb_unpack(d, r->rs_kvs[0].kv_val, r->rs_kvs[0].kv_val_len, out, err, errlen);
        return rc != 0 ? tg_errf(err, errlen, rc, "store key %s: not a %s", key, d->name) : 0;
    }
    return tg_cp_get_pb(cp, key, d, out, mod_rev, err, errlen);
}

/* Marks records already settled (group time, as_settle_mu held):
 * repeated inside the batch, in an earlier batch of the group, committed by
 * this leader but not yet in the ledger (pending), or in the ledger. Pending
 * is read first: an id leaves it only after the ledger has it. When the
 * batch's ids were looked up in the ledger before it queued (early_check,
 * under the same leadership), that answer stands for every commit up to
 * its e_t0, and only the pending commits after e_t0 are read here (they
 * stay pending while the check is in flight: pending_horizon). */
static int mark_duplicates(settle_group_t *g, size_t j, int64_t leader_rev, char *err, size_t errlen)
{
    settle_ctx_t *c = g->g_jobs[j]->j_c;
    Tollgate__V1__UsageBatch *b = c->sc_batch;
    tg_cp_agent_side_t *as = c->sc_cp->cp_agent;
    size_t n = b->n_records;
    memset(c->sc_dup, 0, (n ? n : 1) * sizeof(int));
    for (size_t i = 1; i < n; i++)
        if (strcmp(c->sc_ids[i].ii_id, c->sc_ids[i - 1].ii_id) == 0)
            c->sc_dup[c->sc_ids[i].ii_i] = 1;
    for (size_t k = 0; k < j; k++) {
        settle_ctx_t *o = g->g_jobs[k]->j_c;
        mark_common(c->sc_ids, n, o->sc_ids, o->sc_batch->n_records, at_ix, c->sc_dup);
    }
    int early = c->sc_early_ok && c->sc_early.e_leader_rev == leader_rev;
    size_t ndup = 0;
    for (size_t i = 0; early && i < n; i++)
        ndup += c->sc_dup[i] != 0;
    pthread_mutex_lock(&as->as_mu);
    if (early && as->as_pending_lost > c->sc_early.e_t0)
        early = 0; /* a commit since its read was not kept (no memory, unclear outcome) */
    for (cp_pending_t *p = as->as_pending; p; p = p->p_next)
        for (size_t r = 0; r < p->p_nrun && (!early || p->p_rev > c->sc_early.e_t0); r++) {
            size_t from = r > 0 ? p->p_end[r - 1] : 0;
            mark_common(c->sc_ids, n, p->p_ids + from, p->p_end[r] - from, at_str, c->sc_dup);
        }
    pthread_mutex_unlock(&as->as_mu);
    if (early) {
        /* what only the commits after its read had (tests, /metrics) */
        size_t after = 0;
        for (size_t i = 0; i < n; i++)
            after += c->sc_dup[i] != 0;
        atomic_fetch_add(&c->sc_cp->cp_m_early_pending_dups, (long long)(after - ndup));
        for (size_t i = 0; i < n; i++)
            c->sc_dup[i] |= c->sc_found[i];
        if (!c->sc_early_counted) /* a batch put back for the next group is checked again */
            atomic_fetch_add(&c->sc_cp->cp_m_early_checks, 1);
        c->sc_early_counted = 1;
        return TG_RPC_CODE_OK;
    }
    /* the rest against the ledger, in one read transaction */
    const char **ids = tg_calloc(n ? n : 1, sizeof(*ids));
    int *found = tg_calloc(n ? n : 1, sizeof(*found));
    size_t k = 0;
    int code = TG_RPC_CODE_OK;
    if (ids == NULL || found == NULL) {
        code = tg_errf(err, errlen, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory for the batch");
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        if (!c->sc_dup[i])
            ids[k++] = b->records[i]->record_id;
    if (tg_ledger_has(c->sc_cp->cp_ledger, ids, k, found, err, errlen) < 0) {
        code = TG_RPC_CODE_UNAVAILABLE;
        goto done;
    }
    for (size_t i = 0, j = 0; i < n; i++)
        if (!c->sc_dup[i])
            c->sc_dup[i] = found[j++];
done:
    tg_free(ids);
    tg_free(found);
    return code;
}

static int group_reserve(settle_group_t *g, size_t more, char *err, size_t errlen)
{
    if (g->g_nent + more <= g->g_cap)
        return 0;
    size_t nc = g->g_nent + more + 1024;
    Tollgate__V1__LedgerEntry **e = tg_realloc(g->g_ents, nc * sizeof(*e));
    if (e != NULL)
        g->g_ents = e;
    size_t *l = tg_realloc(g->g_len, nc * sizeof(*l));
    if (l != NULL)
        g->g_len = l;
    tg_ledger_row_t *r = tg_realloc(g->g_rows, nc * sizeof(*r));
    if (r != NULL)
        g->g_rows = r;
    const uint8_t **rp = tg_realloc(g->g_rec, nc * sizeof(*rp));
    if (rp != NULL)
        g->g_rec = rp;
    size_t *rl = tg_realloc(g->g_reclen, nc * sizeof(*rl));
    if (rl != NULL)
        g->g_reclen = rl;
    if (e == NULL || l == NULL || r == NULL || rp == NULL || rl == NULL)
        return tg_errf(err, errlen, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory for the batch");
    g->g_cap = nc;
    return 0;
}

/* Adds job j's entries to the group: its balances (read when new to the
 * group), its LedgerEntry rows (sized, packed later) and its answer.
 * Returns TG_RPC_CODE_OK, BUILD_CUT when it fits alone but not after the
 * group's earlier jobs, or a code with err set (the job's own failure). On
 * anything but OK the caller rolls the group back to before j. */
static int build_job(settle_group_t *g, size_t j, int64_t now_us, char *err, size_t errlen)
{
    settle_job_t *job = g->g_jobs[j];
    settle_ctx_t *c = job->j_c;
    Tollgate__V1__UsageBatch *b = c->sc_batch;
    size_t n = b->n_records, touched = 0;
    unsigned char seen[GROUP_MAX_BALANCES];
    memset(seen, 0, sizeof(seen));
    job->j_first = g->g_nent;
    for (size_t i = 0; i < n; i++) {
        c->sc_balidx[i] = SIZE_MAX;
        if (c->sc_dup[i] || c->sc_bucket[i] == NULL)
            continue;
        size_t k;
        for (k = 0; k < g->g_nbal; k++)
            if (strcmp(g->g_bals[k].b_msg->account_id, c->sc_acct[i]->id) == 0 &&
                strcmp(g->g_bals[k].b_msg->bucket, c->sc_bucket[i]) == 0)
                break;
        if ((k == g->g_nbal || !seen[k]) && ++touched > SETTLE_MAX_BALANCES)
            return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                           "batch touches more than %d balances; split it", SETTLE_MAX_BALANCES);
        if (k == g->g_nbal) {
            if (k + 2 * (j + 1) + 2 >= TG_STORE_MAX_TXN_OPS || k == GROUP_MAX_BALANCES)
                return BUILD_CUT;
            memset(&g->g_bals[k], 0, sizeof(bal_t));
            g->g_nbal++;
            if (bal_load(c->sc_cp, g, c->sc_acct[i], bucket_spec(c->sc_acct[i], c->sc_bucket[i]),
                         &g->g_bals[k], err, errlen) < 0)
                return TG_RPC_CODE_UNAVAILABLE;
        }
        seen[k] = 1;
        c->sc_balidx[i] = k;
        /* the record's limit scopes join the group like balances */
        for (size_t s = 0; s < c->sc_nrs[i]; s++) {
            size_t si = c->sc_rs[i * MAX_RS + s];
            for (k = 0; k < g->g_nbal; k++)
                if (strcmp(g->g_bals[k].b_key, c->sc_scopes[si].cs_key) == 0)
                    break;
            if ((k == g->g_nbal || !seen[k]) && ++touched > SETTLE_MAX_BALANCES)
                return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                               "batch touches more than %d balances and limits; split it", SETTLE_MAX_BALANCES);
            if (k == g->g_nbal) {
                if (k + 2 * (j + 1) + 2 >= TG_STORE_MAX_TXN_OPS || k == GROUP_MAX_BALANCES)
                    return BUILD_CUT;
                memset(&g->g_bals[k], 0, sizeof(bal_t));
                g->g_nbal++;
                if (scope_bal_load(c->sc_cp, g, &c->sc_scopes[si], &g->g_bals[k], err, errlen) < 0)
                    return TG_RPC_CODE_UNAVAILABLE;
            }
            seen[k] = 1;
            c->sc_scope_bal[si] = k;
        }
    }
    if (group_reserve(g, n, err, errlen) < 0)
        return TG_RPC_CODE_RESOURCE_EXHAUSTED;
    Tollgate__V1__ReportUsageResponse *resp = &job->j_resp;
    *resp = (Tollgate__V1__ReportUsageResponse)TOLLGATE__V1__REPORT_USAGE_RESPONSE__INIT;
    resp->agent_id = b->agent_id;
    resp->sequence = b->sequence;
    size_t ne = 0, total = g->g_total;
    for (size_t i = 0; i < n; i++) {
        Tollgate__V1__UsageRecord *r = b->records[i];
        if (c->sc_dup[i]) {
            resp->duplicate_records++;
            continue;
        }
        Tollgate__V1__LedgerEntry *e = &c->sc_entries[ne];
        tollgate__v1__ledger_entry__init(e);
        e->kind = TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_USAGE;
        e->entry_id = r->record_id;
        e->settled_at_us = now_us;
        e->account_id = c->sc_acct[i] != NULL ? c->sc_acct[i]->id : r->account_id;
        e->record = r;
        e->recomputed_cost_nano = c->sc_cost[i];
        e->cost_mismatch = c->sc_mismatch[i] != 0;
        e->batch_agent_id = b->agent_id;
        e->batch_sequence = b->sequence;
        if (c->sc_balidx[i] != SIZE_MAX) {
            bal_t *bl = &g->g_bals[c->sc_balidx[i]];
            const Tollgate__V1__BucketSpec *bs = bucket_spec(c->sc_acct[i], c->sc_bucket[i]);
            bl->b_msg->balance_nano -= c->sc_cost[i];
            for (size_t s = 0; s < c->sc_nrs[i]; s++) /* what is left of each limit */
                g->g_bals[c->sc_scope_bal[c->sc_rs[i * MAX_RS + s]]].b_msg->balance_nano -= c->sc_cost[i];
            /* usage is always recorded, the request already happened; the
             * agent's prepaid check and spend leases bound how far it goes */
            if (bl->b_prepaid && bl->b_msg->balance_nano < 0 &&
                bl->b_msg->balance_nano + c->sc_cost[i] >= 0)
                TG_LOG(TG_LOG_WARN, "cp.settle", "prepaid balance %s went below zero (%" PRId64
                       ") settling %s", bl->b_key, bl->b_msg->balance_nano, r->record_id);
            e->bucket = (char *)c->sc_bucket[i]; /* r's too (pack_records) */
            e->currency = bs->currency;
            e->amount_nano = -c->sc_cost[i];
            e->balance_after_nano = bl->b_msg->balance_nano;
        } else {
            /* no bucket: nothing moves. A zero-cost record (every attempt
             * failed upstream) is a plain receipt row; one with a cost is
             * flagged unbilled with its cost kept */
            e->bucket = "";
            e->currency = r->currency;
            e->amount_nano = 0;
            if (c->sc_unbilled[i] != NULL) {
                e->unbilled = 1;
                e->unbilled_reason = (char *)c->sc_unbilled[i];
                resp->unbilled++;
            }
        }
        const uint8_t *rec = c->sc_recs != NULL ? c->sc_recs + c->sc_recoff[i] : NULL;
        size_t sz = rec != NULL ? cp_entry_pack_fast(e, rec, c->sc_reclen[i], NULL) : SIZE_MAX;
        if (sz != SIZE_MAX && fast_check_now() && sz != protobuf_c_message_get_packed_size(&e->base))
            fast_mismatch(e->entry_id, "size");
        if (sz == SIZE_MAX || atomic_load(&g_fast_off)) {
            rec = NULL;
            sz = protobuf_c_message_get_packed_size(&e->base);
        }
        total += 1 + varint_len(sz) + sz;
        if (sz > TG_LEDGER_RECORD_MAX || total > TG_STORE_MAX_VALUE) {
            if (j > 0 && sz <= TG_LEDGER_RECORD_MAX)
                return BUILD_CUT;
            return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                           "batch too large for one settled-log value (%d bytes max): split it",
                           TG_STORE_MAX_VALUE);
        }
        g->g_ents[g->g_nent] = e;
        g->g_rec[g->g_nent] = rec;
        g->g_reclen[g->g_nent] = rec != NULL ? c->sc_reclen[i] : 0;
        g->g_len[g->g_nent++] = sz;
        ne++;
        resp->settled++;
        resp->cost_mismatches += c->sc_mismatch[i] != 0;
    }
    g->g_total = total;
    return TG_RPC_CODE_OK;
}

/* The TG_CP_K_AGENT_SEQ puts of the group (AgentInfo.last_batch_sequence):
 * per agent, its highest batch sequence in the group when higher than the
 * stored one. Read under as_settle_mu: only the settling leader writes these
 * keys, and the leader fence makes a stale read harmless. */
static int agent_seqs(settle_group_t *g, char *err, size_t errlen)
{
    tg_cp_t *cp = g->g_n > 0 ? g->g_jobs[0]->j_c->sc_cp : NULL;
    g->g_naops = 0;
    for (size_t j = 0; j < g->g_n; j++) {
        const Tollgate__V1__UsageBatch *b = g->g_jobs[j]->j_c->sc_batch;
        uint64_t top = b->sequence;
        int first = 1;
        for (size_t k = 0; k < g->g_n; k++) {
            const Tollgate__V1__UsageBatch *o = g->g_jobs[k]->j_c->sc_batch;
            if (strcmp(o->agent_id, b->agent_id) != 0)
                continue;
            if (k < j)
                first = 0; /* an earlier job of the same agent did it */
            if (o->sequence > top)
                top = o->sequence;
        }
        if (!first)
            continue;
        size_t i = g->g_naops;
        snprintf(g->g_akey[i], sizeof(g->g_akey[i]), TG_CP_K_AGENT_SEQ "%s", b->agent_id);
        tg_store_kv_t *kv = NULL, absent = {0};
        const tg_store_kv_t *got = NULL; /* from the group's reads, or read now */
        for (size_t p = 0; g->g_pre_ok && p < g->g_npre && got == NULL; p++)
            if (strcmp(g->g_prekeys[p], g->g_akey[i]) == 0)
                got = g->g_pre.tx_res[p].or_range.rs_n ? &g->g_pre.tx_res[p].or_range.rs_kvs[0] : &absent;
        if (got == NULL) {
            if (tg_store_get(cp->cp_store, g->g_akey[i], strlen(g->g_akey[i]), &kv, NULL, err, errlen) < 0)
                return TG_RPC_CODE_UNAVAILABLE;
            got = kv != NULL ? kv : &absent;
        }
        uint64_t stored = 0;
        int have = got->kv_key != NULL;
        if (have) {
            char tmp[24] = {0};
            memcpy(tmp, got->kv_val, got->kv_val_len < 23 ? got->kv_val_len : 23);
            stored = strtoull(tmp, NULL, 10);
        }
        tg_store_kv_free(kv);
        if (have && stored >= top)
            continue;
        snprintf(g->g_aval[i], sizeof(g->g_aval[i]), "%" PRIu64, top);
        g->g_aops[i] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT, .op_key = g->g_akey[i],
                                       .op_key_len = strlen(g->g_akey[i]), .op_val = g->g_aval[i],
                                       .op_val_len = strlen(g->g_aval[i])};
        g->g_naops++;
    }
    return TG_RPC_CODE_OK;
}

/* Builds the group's transaction from scratch (again after a compare
 * failure: balances are re-read): every job that fits, in order. Returns
 * OK with g_n cut to the jobs that fit (*failed = SIZE_MAX), or OK with
 * *failed = j when job j failed on its own (code in *jcode, err set; the
 * jobs before it are built), or an error for the whole group. */
static int build_group(settle_group_t *g, int64_t now_us, size_t *failed, int *jcode, char *err,
                       size_t errlen)
{
    for (size_t k = 0; k < g->g_nbal; k++)
        bal_clear(&g->g_bals[k]);
    g->g_nbal = 0;
    g->g_nent = 0;
    g->g_total = 0;
    *failed = SIZE_MAX;
    for (size_t j = 0; j < g->g_n; j++) {
        size_t nbal0 = g->g_nbal, nent0 = g->g_nent, total0 = g->g_total;
        for (size_t k = 0; k < nbal0; k++)
            g->g_saved[k] = g->g_bals[k].b_msg->balance_nano;
        int code = build_job(g, j, now_us, err, errlen);
        if (code == TG_RPC_CODE_OK)
            continue;
        if (code == BUILD_CUT && j == 0) /* cannot happen (see build_job); never loop on it */
            code = tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                           "batch does not fit in one settlement transaction: split it");
        for (size_t k = 0; k < nbal0; k++)
            g->g_bals[k].b_msg->balance_nano = g->g_saved[k];
        for (size_t k = nbal0; k < g->g_nbal; k++)
            bal_clear(&g->g_bals[k]);
        g->g_nbal = nbal0;
        g->g_nent = nent0;
        g->g_total = total0;
        if (code != BUILD_CUT) {
            *failed = j;
            *jcode = code;
        }
        g->g_n = j;
        break;
    }
    /* What settles here was reserved in the reporting agent's spend lease
     * (lease.c): the same amount leaves the hold as leaves the balance, in
     * this transaction. The agent's own reported cost is taken, the amount
     * it reserved against; the debit is the recomputed cost. */
    for (size_t j = 0; j < g->g_n; j++) {
        settle_ctx_t *c = g->g_jobs[j]->j_c;
        for (size_t i = 0; i < c->sc_batch->n_records; i++)
            if (!c->sc_dup[i] && c->sc_balidx[i] != SIZE_MAX) {
                cp_lease_consume(g->g_bals[c->sc_balidx[i]].b_msg, c->sc_batch->agent_id,
                                 c->sc_batch->records[i]->cost_nano, now_us);
                for (size_t s = 0; s < c->sc_nrs[i]; s++)
                    cp_lease_consume(g->g_bals[c->sc_scope_bal[c->sc_rs[i * MAX_RS + s]]].b_msg,
                                     c->sc_batch->agent_id, c->sc_batch->records[i]->cost_nano, now_us);
            }
    }
    for (size_t k = 0; k < g->g_nbal; k++) {
        g->g_bals[k].b_msg->updated_at_us = now_us;
        tg_buf_reset(&g->g_bals[k].b_packed);
        if (tg_rpc_pb_pack(&g->g_bals[k].b_msg->base, &g->g_bals[k].b_packed, err, errlen) < 0)
            return TG_RPC_CODE_INTERNAL;
    }
    /* The settled value is a LedgerPage whose only field is the repeated
     * entries: on the wire, each entry's packed bytes behind tag 1 and a
     * length. Each entry is packed once, straight into that value (sized
     * above, so the buffer grows once), and its ledger row points at its
     * bytes there (what a follower's tailer slices out). */
    tg_buf_t *settled = &g->g_settled;
    tg_buf_reset(settled);
    if (g->g_total + 1 > settled->b_cap) {
        char *d = tg_realloc(settled->b_data, g->g_total + 1);
        if (d == NULL)
            return tg_errf(err, errlen, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory for the batch");
        settled->b_data = d;
        settled->b_cap = g->g_total + 1;
    }
    uint8_t *w = (uint8_t *)settled->b_data;
    for (size_t i = 0; i < g->g_nent; i++) {
        size_t sz = g->g_len[i];
        *w++ = (1 << 3) | 2; /* field 1, length-delimited */
        w += put_varint(w, sz);
        if (g->g_rec[i] != NULL) {
            cp_entry_pack_fast(g->g_ents[i], g->g_rec[i], g->g_reclen[i], w);
            if (fast_check_now()) {
                /* the same bytes as protobuf-c's, or those */
                atomic_fetch_add(&g_fast_checked, 1);
                uint8_t *chk = tg_malloc(sz);
                if (chk != NULL && protobuf_c_message_pack(&g->g_ents[i]->base, chk) == sz && memcmp(chk, w, sz) != 0) {
                    fast_mismatch(g->g_ents[i]->entry_id, "bytes");
                    memcpy(w, chk, sz);
                }
                tg_free(chk);
            }
        } else if (protobuf_c_message_pack(&g->g_ents[i]->base, w) != sz) {
            return tg_errf(err, errlen, TG_RPC_CODE_INTERNAL, "packing ledger entry %zu: size changed", i);
        }
        cp_row_from_entry(g->g_ents[i], w, sz, &g->g_rows[i]);
        w += sz;
    }
    settled->b_len = g->g_total;
    settled->b_data[g->g_total] = '\0';
    g->g_stored = settled;
    if (g->g_n > 0 && g->g_jobs[0]->j_c->sc_cp->cp_settled_zstd && settled->b_len > 0) {
        if (g->g_zctx == NULL)
            g->g_zctx = cp_settled_zctx_new();
        int packed = 0;
        int zc = cp_settled_pack(g->g_zctx, (const uint8_t *)settled->b_data, settled->b_len, &g->g_zsettled,
                                 &packed, err, errlen);
        if (zc != 0)
            return zc;
        if (packed)
            g->g_stored = &g->g_zsettled;
    }
    for (size_t j = 0; j < g->g_n; j++) {
        settle_job_t *job = g->g_jobs[j];
        tg_buf_reset(&job->j_marker_val);
        if (tg_rpc_pb_pack(&job->j_resp.base, &job->j_marker_val, err, errlen) < 0)
            return TG_RPC_CODE_INTERNAL;
    }
    return agent_seqs(g, err, errlen);
}

/* A resend: packs what the first settlement answered into reply. Returns 1
 * answered, 0 no marker, or a negative TG_RPC_CODE (err set). */
static int answer_from_marker(tg_cp_t *cp, settle_group_t *g, const char *marker, tg_buf_t *reply, char *err,
                              size_t errlen)
{
    ProtobufCMessage *m = NULL;
    if (group_get_pb(g, cp, marker, &tollgate__v1__report_usage_response__descriptor, &m, NULL, err,
                     errlen) < 0)
        return -TG_RPC_CODE_UNAVAILABLE;
    if (m == NULL)
        return 0;
    Tollgate__V1__ReportUsageResponse *old = (Tollgate__V1__ReportUsageResponse *)m;
    unsigned char hash[32];
    old->duplicate_batch = 1;
    tg_ledger_head(cp->cp_ledger, &old->ledger_seq, hash, NULL, 0);
    atomic_fetch_add(&cp->cp_m_dup_batches, 1);
    int prc = tg_rpc_pb_pack(m, reply, err, errlen);
    tg_rpc_pb_free(m);
    return prc < 0 ? -TG_RPC_CODE_INTERNAL : 1;
}

/* (gmu held) The group is finished for job: wake its caller. */
static void job_finish(settle_job_t *job, int code, const char *err)
{
    job->j_code = code;
    if (err != NULL && code != TG_RPC_CODE_OK)
        snprintf(job->j_err, sizeof(job->j_err), "%s", err);
    job->j_done = 1;
}

/* After a failed compare: answers the jobs of g[0..n) whose agent is
 * revoked now with PERMISSION_DENIED and closes the gap. Returns the jobs
 * left. A store error leaves the job in (the commit's compare decides). */
static size_t drop_revoked(tg_cp_agent_side_t *as, settle_group_t *g, size_t n)
{
    size_t k = 0;
    for (size_t j = 0; j < n; j++) {
        settle_job_t *job = g->g_jobs[j];
        char why[TG_ERRLEN] = "";
        if (cp_agent_revoked(as->as_cp, job->j_c->sc_signed->agent_id, why, sizeof(why)) ==
            TG_RPC_CODE_PERMISSION_DENIED) {
            pthread_mutex_lock(&as->as_gmu);
            job_finish(job, TG_RPC_CODE_PERMISSION_DENIED, why);
            pthread_mutex_unlock(&as->as_gmu);
            continue;
        }
        g->g_jobs[k++] = job;
    }
    g->g_n = k;
    return k;
}

/* A settlement commit the store refused with an I/O error (on the embedded
 * store, a full disk): 1 until a commit succeeds again; when it was last
 * logged. */
static atomic_int store_paused;
static atomic_llong store_logged_us;

/* The store refused the settlement commit with an I/O error: err becomes
 * the sentence agents get, naming the store's place and the fix, and it is
 * logged at most every 30 s. */
static void store_refused(tg_cp_t *cp, char *err, size_t errlen)
{
    const char *spec = cp->cp_store_spec ? cp->cp_store_spec : "";
    const char *where = strncmp(spec, "lmdb:", 5) == 0 ? spec + 5 : spec;
    char why[TG_ERRLEN * 4]; /* err and the path twice; cut to errlen below */
    snprintf(why, sizeof(why),
             "settlement paused: the store cannot be written (%s); if its disk is full, free space on the file "
             "system of %s (df -h %s). Settlement resumes by itself and agents keep their records meanwhile",
             err, where, where);
    size_t n = strnlen(why, errlen - 1);
    memcpy(err, why, n);
    err[n] = '\0';
    long long now = tg_cp_now_us(), last = atomic_load(&store_logged_us);
    atomic_store(&store_paused, 1);
    if (now - last >= 30LL * 1000000 && atomic_compare_exchange_strong(&store_logged_us, &last, now))
        TG_LOG(TG_LOG_ERROR, "cp.settle", "%s", why);
}

/* Runs one group as its leader (not holding gmu): settles the committed
 * prefix, fails or answers jobs on their own, and puts the jobs that did not
 * fit back at the head of the queue. Hands the lead on as soon as the
 * transaction is done, then waits for the tailer before waking callers. */
/* The keys the jobs will read under the commit lock, read at once: each
 * job's marker and agent seq, and the balances and limit scopes its records
 * touch. On etcd only: there each read is a round trip, while on LMDB a
 * read is a local read transaction and a store transaction would take the
 * writer's turn. */
static void group_prefetch(settle_group_t *g, tg_cp_t *cp, settle_job_t *const *jobs, size_t n)
{
    char key[TG_STORE_MAX_KEY];
    pre_clear(g);
    if (strcmp(tg_store_backend(cp->cp_store), "etcd") != 0)
        return;
    for (size_t j = 0; j < n; j++) {
        settle_ctx_t *c = jobs[j]->j_c;
        pre_add(g, jobs[j]->j_marker);
        snprintf(key, sizeof(key), TG_CP_K_AGENT_SEQ "%s", c->sc_batch->agent_id);
        pre_add(g, key);
        const Tollgate__V1__Account *la = NULL;
        const char *lb = NULL;
        for (size_t i = 0; i < c->sc_batch->n_records; i++) {
            if (c->sc_bucket[i] == NULL || (c->sc_acct[i] == la && lb != NULL && strcmp(lb, c->sc_bucket[i]) == 0))
                continue;
            la = c->sc_acct[i];
            lb = c->sc_bucket[i];
            bal_key(la->id, lb, key, sizeof(key));
            pre_add(g, key);
        }
        for (size_t k = 0; k < c->sc_nscopes; k++)
            pre_add(g, c->sc_scopes[k].cs_key);
    }
    pre_read(g, cp);
}

/* The ids group g settled at rev, for the pending set: per committed job
 * its settled records' ids, in its sorted order (sc_ids). NULL when out of
 * memory. */
static cp_pending_t *pending_new(const settle_group_t *g, int64_t rev)
{
    size_t n = 0, bytes = 0;
    for (size_t j = 0; j < g->g_n; j++) {
        const settle_ctx_t *c = g->g_jobs[j]->j_c;
        for (size_t i = 0; i < c->sc_batch->n_records; i++)
            if (!c->sc_dup[c->sc_ids[i].ii_i]) {
                n++;
                bytes += strlen(c->sc_ids[i].ii_id) + 1;
            }
    }
    cp_pending_t *p = tg_calloc(1, sizeof(*p));
    char **v = tg_malloc((n ? n : 1) * sizeof(char *));
    char *mem = tg_malloc(bytes ? bytes : 1);
    if (p == NULL || v == NULL || mem == NULL) {
        tg_free(p);
        tg_free(v);
        tg_free(mem);
        return NULL;
    }
    size_t k = 0;
    char *w = mem;
    for (size_t j = 0; j < g->g_n; j++) {
        const settle_ctx_t *c = g->g_jobs[j]->j_c;
        for (size_t i = 0; i < c->sc_batch->n_records; i++) {
            if (c->sc_dup[c->sc_ids[i].ii_i])
                continue;
            size_t len = strlen(c->sc_ids[i].ii_id) + 1;
            memcpy(w, c->sc_ids[i].ii_id, len);
            v[k++] = w;
            w += len;
        }
        p->p_end[j] = k;
    }
    p->p_nrun = g->g_n;
    p->p_rev = rev;
    p->p_ids = v;
    p->p_mem = mem;
    return p;
}

/* After a group commit that failed without a clear answer (etcd can answer
 * an error after applying it): whether something committed is read from the
 * settled log's seq key. When the key moved past its revision before the
 * commit, the commit's ids are in the log but not in the pending set, so
 * they count as lost (as_pending_lost): the next group waits for the
 * tailer to append them before checking duplicates, and no early check
 * read before them stands. as_settle_mu held. Returns 0, or negative with
 * err set when the key cannot be read (then it is read before the next
 * group). */
static int commit_resolve(tg_cp_agent_side_t *as, char *err, size_t errlen)
{
    if (!as->as_commit_unclear)
        return 0;
    as->as_settled_seq_modrev = -1;
    int rc = load_seq(as, err, errlen);
    if (rc < 0)
        return rc;
    if (as->as_settled_seq_modrev > as->as_commit_unclear_from) {
        pthread_mutex_lock(&as->as_mu);
        if (as->as_settled_seq_modrev > as->as_pending_lost)
            as->as_pending_lost = as->as_settled_seq_modrev;
        pthread_mutex_unlock(&as->as_mu);
        TG_LOG(TG_LOG_WARN, "cp.settle", "a settlement commit that answered an error is in the settled log "
               "(revision %" PRId64 "): duplicates are checked against the ledger once it holds it",
               as->as_settled_seq_modrev);
    }
    as->as_commit_unclear = 0;
    return 0;
}

/* Before a group checks duplicates (as_settle_mu held): the commits whose
 * ids the pending set lacks (as_pending_lost) must be in this replica's
 * ledger, which the check reads instead. Returns TG_RPC_CODE_OK or
 * UNAVAILABLE (err set: agents resend). */
static int wait_lost(tg_cp_agent_side_t *as, char *err, size_t errlen)
{
    char why[TG_ERRLEN] = "";
    if (commit_resolve(as, why, sizeof(why)) < 0)
        return tg_errf(err, errlen, TG_RPC_CODE_UNAVAILABLE,
                       "settlement paused: the outcome of the last commit is unknown (%s); resend", why);
    pthread_mutex_lock(&as->as_mu);
    int64_t lost = as->as_pending_lost;
    pthread_mutex_unlock(&as->as_mu);
    int w = cp_tail_wait(as, lost, ACK_WAIT_MS, why, sizeof(why));
    if (w == -2)
        return tg_errf(err, errlen, TG_RPC_CODE_UNAVAILABLE, "%s", why);
    if (w < 0)
        return tg_errf(err, errlen, TG_RPC_CODE_UNAVAILABLE,
                       "settlement paused: the ledger has not reached revision %" PRId64 " of the settled log "
                       "after %d ms; resend", lost, ACK_WAIT_MS);
    return TG_RPC_CODE_OK;
}

/* Marks duplicates again for jobs g[0..n) after a retry changed what the
 * first marks rest on (another leadership, or a job dropped that later
 * jobs were checked against). Jobs whose check fails are answered with its
 * code. Returns the jobs left. */
static size_t remark(tg_cp_agent_side_t *as, settle_group_t *g, size_t n, int64_t leader_rev)
{
    size_t k = 0;
    for (size_t j = 0; j < n; j++) {
        settle_job_t *job = g->g_jobs[j];
        char jerr[TG_ERRLEN] = "";
        g->g_jobs[k++] = job;
        int code = mark_duplicates(g, k - 1, leader_rev, jerr, sizeof(jerr));
        if (code != TG_RPC_CODE_OK) {
            k--;
            pthread_mutex_lock(&as->as_gmu);
            job_finish(job, code, jerr);
            pthread_mutex_unlock(&as->as_gmu);
        }
    }
    g->g_n = k;
    return k;
}

static void run_group(tg_cp_agent_side_t *as, settle_group_t *g)
{
    tg_cp_t *cp = as->as_cp;
    char err[TG_ERRLEN] = "";
    settle_job_t *taken[GROUP_MAX_JOBS], *defer[GROUP_MAX_JOBS];
    size_t ntaken = g->g_n, ndefer = 0, failed = SIZE_MAX;
    int gcode = TG_RPC_CODE_OK, jcode = TG_RPC_CODE_OK, committed = 0;
    int64_t leader_rev = 0, commit_rev = 0;
    cp_stash_t *stash = NULL;
    memcpy(taken, g->g_jobs, ntaken * sizeof(*taken));

    int64_t t_lock = tg_cp_now_us(), t_checked = 0, t_built = 0, t_commit = 0;
    pthread_mutex_lock(&as->as_settle_mu);
    int64_t t_locked = tg_cp_now_us();
    gcode = leader_gate(cp, &leader_rev, err, sizeof(err));
    if (gcode == TG_RPC_CODE_OK)
        gcode = wait_lost(as, err, sizeof(err));
    if (gcode == TG_RPC_CODE_OK)
        group_prefetch(g, cp, taken, ntaken);
    int64_t marked_rev = leader_rev; /* the leadership the marks were made under */
    /* answer resends, keep one of each batch, mark duplicates */
    g->g_n = 0;
    for (size_t j = 0; gcode == TG_RPC_CODE_OK && j < ntaken; j++) {
        settle_job_t *job = taken[j];
        int same = 0;
        for (size_t k = 0; k < g->g_n; k++)
            same |= strcmp(g->g_jobs[k]->j_marker, job->j_marker) == 0;
        if (same) {
            defer[ndefer++] = job; /* its twin settles first; its marker answers it */
            continue;
        }
        char jerr[TG_ERRLEN] = "";
        int a = answer_from_marker(cp, g, job->j_marker, job->j_reply, jerr, sizeof(jerr));
        if (a != 0) {
            job->j_answered = a > 0;
            pthread_mutex_lock(&as->as_gmu);
            job_finish(job, a > 0 ? TG_RPC_CODE_OK : -a, jerr);
            pthread_mutex_unlock(&as->as_gmu);
            continue;
        }
        g->g_jobs[g->g_n++] = job;
        int code = mark_duplicates(g, g->g_n - 1, leader_rev, jerr, sizeof(jerr));
        if (code != TG_RPC_CODE_OK) {
            g->g_n--;
            pthread_mutex_lock(&as->as_gmu);
            job_finish(job, code, jerr);
            pthread_mutex_unlock(&as->as_gmu);
        }
    }
    size_t nready = g->g_n;
    t_checked = tg_cp_now_us();
    for (int attempt = 0; gcode == TG_RPC_CODE_OK && g->g_n > 0; attempt++) {
        if (attempt > 0) {
            size_t was = nready;
            nready = drop_revoked(as, g, nready);
            /* the marks rest on the jobs before each one and on the
             * leadership: redo them when either changed */
            if (nready > 0 && (nready < was || leader_rev != marked_rev)) {
                nready = remark(as, g, nready, leader_rev);
                marked_rev = leader_rev;
            }
        }
        if (nready == 0) {
            failed = SIZE_MAX; /* build_group's index of an earlier attempt */
            break;
        }
        if (attempt >= SETTLE_ATTEMPTS) {
            gcode = tg_errf(err, sizeof(err), TG_RPC_CODE_ABORTED,
                            "settlement conflicted %d times with concurrent changes; resend", attempt);
            break;
        }
        if (load_seq(as, err, sizeof(err)) < 0) {
            gcode = TG_RPC_CODE_UNAVAILABLE;
            break;
        }
        g->g_n = nready;
        char jerr[TG_ERRLEN] = "";
        gcode = build_group(g, tg_cp_now_us(), &failed, &jcode, jerr, sizeof(jerr));
        if (gcode != TG_RPC_CODE_OK) {
            snprintf(err, sizeof(err), "%s", jerr);
            break;
        }
        if (failed != SIZE_MAX)
            snprintf(err, sizeof(err), "%s", jerr);
        if (g->g_n == 0)
            break;
        const char *markers[GROUP_MAX_JOBS];
        const tg_buf_t *vals[GROUP_MAX_JOBS];
        for (size_t j = 0; j < g->g_n; j++) {
            markers[j] = g->g_jobs[j]->j_marker;
            vals[j] = &g->g_jobs[j]->j_marker_val;
        }
        if (g->g_settled.b_len > 0 && (stash = tg_calloc(1, sizeof(*stash))) != NULL) {
            /* offered before the commit: the watch may deliver the value to
             * this replica's tailer before the commit call returns here */
            stash->st_seq = as->as_settled_seq + 1;
            stash->st_val = g->g_stored->b_data; /* compared with what the watch delivers */
            stash->st_len = g->g_stored->b_len;
            stash->st_rows = g->g_rows;
            stash->st_n = g->g_nent;
            pthread_mutex_lock(&as->as_mu);
            stash->st_next = as->as_stash;
            as->as_stash = stash;
            pthread_mutex_unlock(&as->as_mu);
        }
        /* a revocation committed after the job's check fails the compare
         * (then drop_revoked answers that job) */
        for (size_t j = 0; j < g->g_n; j++) {
            snprintf(g->g_rkey[j], sizeof(g->g_rkey[j]), TG_CP_K_AGENT_REVOKED "%s",
                     g->g_jobs[j]->j_c->sc_signed->agent_id);
            g->g_rcmps[j] = (tg_store_cmp_t){.c_key = g->g_rkey[j], .c_key_len = strlen(g->g_rkey[j]),
                                             .c_target = TG_STORE_CMP_VERSION, .c_op = TG_STORE_EQ, .c_num = 0};
        }
        t_built = tg_cp_now_us();
        commit_spec_t cs = {.cs_leader_rev = leader_rev,
                            .cs_markers = markers,
                            .cs_marker_vals = vals,
                            .cs_nmark = g->g_n,
                            .cs_bals = g->g_bals,
                            .cs_nbal = g->g_nbal,
                            .cs_settled = g->g_stored,
                            .cs_xcmps = g->g_rcmps,
                            .cs_nxcmp = g->g_n,
                            .cs_xops = g->g_aops,
                            .cs_nxop = g->g_naops};
        int64_t seq_modrev = as->as_settled_seq_modrev;
        int rc = settle_commit(as, &cs, &commit_rev, err, sizeof(err));
        t_commit = tg_cp_now_us();
        if (rc < 0 && rc != TG_STORE_ETOOBIG && g->g_settled.b_len > 0) {
            /* it may have applied: read the log's tail now, else before the
             * next group (commit_resolve) */
            char rerr[TG_ERRLEN];
            as->as_commit_unclear = 1;
            as->as_commit_unclear_from = seq_modrev;
            (void)commit_resolve(as, rerr, sizeof(rerr));
        }
        if (rc < 0) {
            gcode = rc == TG_STORE_ETOOBIG ? TG_RPC_CODE_INVALID_ARGUMENT : tg_cp_store_code(rc);
            if (rc == TG_STORE_EIO)
                store_refused(cp, err, sizeof(err));
            break;
        }
        if (rc == 1) {
            committed = 1;
            if (atomic_load(&store_paused) && atomic_exchange(&store_paused, 0)) {
                atomic_store(&store_logged_us, 0);
                TG_LOG(TG_LOG_INFO, "cp.settle", "the store takes writes again: settlement resumes");
            }
            break;
        }
        stash_drop(as, stash); /* not committed: the rows are rebuilt */
        stash = NULL;
        g->g_pre_ok = 0; /* from fresh reads */
        atomic_fetch_add(&cp->cp_m_conflicts, 1);
        /* compare failed: lost the lease, or a balance moved under us */
        gcode = leader_gate(cp, &leader_rev, err, sizeof(err));
    }
    if (committed) {
        crash_hook(cp);
        atomic_fetch_add(&cp->cp_m_groups, 1);
        if (g->g_settled.b_len > 0) {
            /* the tailer appends the rows; until then the ids are pending,
             * so the next group still sees them as settled (copied before
             * as_mu, which the tailer and the early checks take too) */
            cp_pending_t *p = pending_new(g, commit_rev);
            pthread_mutex_lock(&as->as_mu);
            if (commit_rev > pending_horizon(as)) {
                if (p != NULL) {
                    p->p_next = as->as_pending;
                    as->as_pending = p;
                    p = NULL;
                } else {
                    as->as_pending_lost = commit_rev;
                }
            }
            pthread_mutex_unlock(&as->as_mu);
            pending_free(p);
        }
    }
    pre_clear(g);
    pthread_mutex_unlock(&as->as_settle_mu);
    TG_LOG(TG_LOG_DEBUG, "cp.settle",
           "group of %zu: lock wait %" PRId64 " us, checks %" PRId64 " us, build %" PRId64
           " us, commit %" PRId64 " us (%zu bytes, %zu stored)",
           g->g_n, t_locked - t_lock, t_checked - t_locked, t_built ? t_built - t_checked : 0,
           t_commit ? t_commit - t_built : 0, g->g_settled.b_len, g->g_stored->b_len);

    if (gcode != TG_RPC_CODE_OK) {
        /* a commit that failed may still have applied (etcd can answer an
         * error after applying it): then this replica's tailer may take the
         * stash, whose rows point into the callers' contexts, freed as soon
         * as they wake. So the stash goes before any caller is woken
         * (stash_drop waits out a tailer appending it; the tailer then reads
         * the value from the settled log) */
        stash_drop(as, stash);
        stash = NULL;
    }

    /* hand the lead on; jobs that did not fit (or whose twin is here) go
     * back to the head of the queue, in order */
    size_t ncommit = committed ? g->g_n : 0;
    pthread_mutex_lock(&as->as_gmu);
    if (gcode == TG_RPC_CODE_OK) {
        size_t from = failed != SIZE_MAX ? failed + 1 : ncommit;
        if (failed != SIZE_MAX)
            job_finish(g->g_jobs[failed], jcode, err);
        for (size_t j = from; j < nready; j++)
            defer[ndefer++] = g->g_jobs[j];
    } else {
        /* the whole group failed: every job taken that is not answered yet
         * (the stash is gone: see above) */
        for (size_t j = 0; j < ntaken; j++)
            if (!taken[j]->j_done)
                job_finish(taken[j], gcode, err);
        ndefer = 0;
    }
    for (size_t k = ndefer; k-- > 0;) {
        defer[k]->j_next = as->as_gq_head;
        as->as_gq_head = defer[k];
        if (as->as_gq_tail == NULL)
            as->as_gq_tail = defer[k];
    }
    as->as_gleading = 0;
    pthread_cond_broadcast(&as->as_gcv);
    pthread_mutex_unlock(&as->as_gmu);

    if (ncommit > 0) {
        /* limits whose action pauses the key, reached by this group */
        for (size_t j = 0; j < ncommit; j++) {
            settle_ctx_t *c = g->g_jobs[j]->j_c;
            for (size_t k = 0; k < c->sc_nscopes; k++) {
                const cp_scope_t *s = &c->sc_scopes[k];
                if (s->cs_action == TOLLGATE__V1__LIMIT_ACTION__LIMIT_ACTION_PAUSE_KEY &&
                    strcmp(s->cs_kind, "key") == 0 && c->sc_scope_bal[k] != SIZE_MAX &&
                    g->g_bals[c->sc_scope_bal[k]].b_msg->balance_nano <= 0)
                    cp_scope_pause_key(cp, s);
            }
        }
        /* alert rules see the committed records (a copy into a queue) */
        for (size_t j = 0; j < ncommit; j++) {
            settle_ctx_t *c = g->g_jobs[j]->j_c;
            cp_alerts_note(as, (const Tollgate__V1__UsageRecord *const *)c->sc_batch->records, c->sc_dup,
                           c->sc_batch->n_records);
        }
        /* acknowledge once this replica's ledger holds the rows; when it
         * cannot take them (disk full) the agents are not acknowledged:
         * they resend, and the marker answers once the rows are appended */
        char stuck[TG_ERRLEN] = "";
        int acode = TG_RPC_CODE_OK;
        int w = g->g_settled.b_len > 0 ? cp_tail_wait(as, commit_rev, ACK_WAIT_MS, stuck, sizeof(stuck)) : 0;
        if (w == -2)
            acode = TG_RPC_CODE_UNAVAILABLE;
        else if (w < 0)
            TG_LOG(TG_LOG_WARN, "cp.settle", "%zu batches committed at revision %" PRId64
                   " but not in the ledger after %d ms; acknowledging (the store holds them)",
                   ncommit, commit_rev, ACK_WAIT_MS);
        stash_drop(as, stash);
        stash = NULL;
        pthread_mutex_lock(&as->as_gmu);
        for (size_t j = 0; j < ncommit; j++) {
            g->g_jobs[j]->j_rev = commit_rev;
            job_finish(g->g_jobs[j], acode, stuck);
        }
        pthread_cond_broadcast(&as->as_gcv);
        pthread_mutex_unlock(&as->as_gmu);
    }
    stash_drop(as, stash);
}

static settle_group_t *group_new(void)
{
    settle_group_t *g = tg_calloc(1, sizeof(*g));
    if (g != NULL) {
        tg_buf_init(&g->g_settled, TG_STORE_MAX_VALUE);
        tg_buf_init(&g->g_zsettled, TG_STORE_MAX_VALUE);
        g->g_stored = &g->g_settled;
    }
    return g;
}

static void group_free(settle_group_t *g)
{
    if (g == NULL)
        return;
    for (size_t k = 0; k < g->g_nbal; k++)
        bal_clear(&g->g_bals[k]);
    tg_buf_free(&g->g_settled);
    tg_buf_free(&g->g_zsettled);
    cp_settled_zctx_free(g->g_zctx);
    tg_free(g->g_ents);
    tg_free(g->g_len);
    tg_free(g->g_rec);
    tg_free(g->g_reclen);
    tg_free(g->g_rows);
    pre_clear(g);
    tg_free(g);
}

#define GROUP_KEEP 2 /* groups kept for reuse: one commits while one waits for its ack */

/* A group for the next leader: a kept one (its ~1 MB settled buffer and
 * entry arrays already allocated and paged in), else a new one. as_gmu held. */
static settle_group_t *group_take(tg_cp_agent_side_t *as)
{
    settle_group_t *g = as->as_gfree;
    if (g != NULL) {
        as->as_gfree = g->g_next;
        g->g_next = NULL;
        tg_buf_reset(&g->g_settled); /* not the last group's value (its debug line) */
        return g;
    }
    return group_new();
}

/* Keeps g for the next leader, or frees it past GROUP_KEEP. as_gmu held. */
static void group_put(tg_cp_agent_side_t *as, settle_group_t *g)
{
    size_t n = 0;
    for (settle_group_t *p = as->as_gfree; p != NULL; p = p->g_next)
        n++;
    if (g == NULL || n >= GROUP_KEEP) {
        group_free(g);
        return;
    }
    g->g_next = as->as_gfree;
    as->as_gfree = g;
}

void cp_settle_free_groups(tg_cp_agent_side_t *as)
{
    while (as->as_gfree != NULL) {
        settle_group_t *g = as->as_gfree;
        as->as_gfree = g->g_next;
        group_free(g);
    }
}

/* Queues job and waits until some group settled, answered or failed it,
 * leading groups whenever no one else does. */
static void settle_queued(tg_cp_agent_side_t *as, settle_job_t *job)
{
    settle_group_t *g = NULL;
    pthread_mutex_lock(&as->as_gmu);
    job->j_next = NULL;
    if (as->as_gq_tail != NULL)
        as->as_gq_tail->j_next = job;
    else
        as->as_gq_head = job;
    as->as_gq_tail = job;
    while (!job->j_done) {
        if (as->as_gleading || as->as_gq_head == NULL) {
            pthread_cond_wait(&as->as_gcv, &as->as_gmu);
            continue;
        }
        if (g == NULL && (g = group_take(as)) == NULL) {
            /* no memory to lead: wait for another caller to */
            pthread_mutex_unlock(&as->as_gmu);
            cp_sleep(as, 10);
            pthread_mutex_lock(&as->as_gmu);
            continue;
        }
        as->as_gleading = 1;
        g->g_n = 0;
        while (g->g_n < GROUP_MAX_JOBS && as->as_gq_head != NULL) {
            settle_job_t *q = as->as_gq_head;
            as->as_gq_head = q->j_next;
            q->j_next = NULL;
            g->g_jobs[g->g_n++] = q;
        }
        if (as->as_gq_head == NULL)
            as->as_gq_tail = NULL;
        pthread_mutex_unlock(&as->as_gmu);
        run_group(as, g);
        pthread_mutex_lock(&as->as_gmu);
    }
    group_put(as, g);
    pthread_mutex_unlock(&as->as_gmu);
}

int cp_batch_unpack_signed(tg_pool_t *pool, const uint8_t *req, size_t req_len,
                           Tollgate__V1__SignedUsageBatch **out, char *err, size_t errlen)
{
    ProtobufCMessage *m = NULL;
    *out = NULL;
    if (unpack_pooled(pool, &tollgate__v1__signed_usage_batch__descriptor, req, req_len, &m, err, errlen) < 0)
        return TG_RPC_CODE_INVALID_ARGUMENT;
    Tollgate__V1__SignedUsageBatch *sb = (Tollgate__V1__SignedUsageBatch *)m;
    if (sb->agent_id[0] == '\0')
        return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "agent_id: must not be empty");
    *out = sb;
    return TG_RPC_CODE_OK;
}

int cp_batch_open(tg_pool_t *pool, const Tollgate__V1__SignedUsageBatch *sb, const uint8_t *pub, size_t publen,
                  Tollgate__V1__UsageBatch **out, char *err, size_t errlen)
{
    ProtobufCMessage *m = NULL;
    *out = NULL;
    if (cp_verify_raw(pub, publen, sb->batch.data, sb->batch.len, sb->signature.data, sb->signature.len) != 0)
        return tg_errf(err, errlen, TG_RPC_CODE_UNAUTHENTICATED, "bad signature for agent %s", sb->agent_id);
    if (unpack_pooled(pool, &tollgate__v1__usage_batch__descriptor, sb->batch.data, sb->batch.len, &m, err,
                      errlen) < 0)
        return TG_RPC_CODE_INVALID_ARGUMENT;
    Tollgate__V1__UsageBatch *b = (Tollgate__V1__UsageBatch *)m;
    if (strcmp(b->agent_id, sb->agent_id) != 0)
        return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                       "batch.agent_id '%s' does not match the signer '%s'", b->agent_id, sb->agent_id);
    *out = b;
    return TG_RPC_CODE_OK;
}

/* Looks the batch's record ids up in the ledger before it queues for the
 * commit lock (in parallel with other batches, not under the lock), noting
 * the tail revision the ledger held then (see mark_duplicates). Read first:
 * the tailer publishes a revision only after its append is committed. A
 * failure only means the check is made under the lock. */
static void early_check(settle_ctx_t *c, int64_t leader_rev)
{
    tg_cp_agent_side_t *as = c->sc_cp->cp_agent;
    size_t n = c->sc_batch->n_records;
    char err[TG_ERRLEN];
    const char **ids = tg_calloc(n ? n : 1, sizeof(*ids));
    c->sc_found = tg_calloc(n ? n : 1, sizeof(int));
    if (ids == NULL || c->sc_found == NULL) {
        tg_free(ids);
        return;
    }
    pthread_mutex_lock(&as->as_mu);
    c->sc_early.e_t0 = as->as_tail_rev;
    c->sc_early.e_leader_rev = leader_rev;
    c->sc_early.e_next = as->as_early;
    as->as_early = &c->sc_early;
    c->sc_early_on = 1;
    pthread_mutex_unlock(&as->as_mu);
    for (size_t i = 0; i < n; i++)
        ids[i] = c->sc_batch->records[i]->record_id;
    c->sc_early_ok = tg_ledger_has(c->sc_cp->cp_ledger, ids, n, c->sc_found, err, sizeof(err)) >= 0;
    tg_free(ids);
}

/* Test hook (see test_hook_path): a batch whose file <sequence>.hold
 * exists waits between its early check and the commit queue until that
 * file is gone (at most 10 s), having created <sequence>.held to say it is
 * there: other batches commit and reach the ledger in between. */
static void early_test_hold(const settle_ctx_t *c)
{
    char name[64], hold[1024], held[1024];
    if (hook_dir() == NULL)
        return;
    snprintf(name, sizeof(name), "%" PRIu64 ".hold", c->sc_batch->sequence);
    if (!test_hook_path(hold, sizeof(hold), name) || access(hold, F_OK) != 0)
        return;
    snprintf(name, sizeof(name), "%" PRIu64 ".held", c->sc_batch->sequence);
    FILE *f = test_hook_path(held, sizeof(held), name) ? fopen(held, "w") : NULL;
    if (f != NULL)
        fclose(f);
    for (int i = 0; i < 2000 && access(hold, F_OK) == 0; i++)
        usleep(5000);
}

int cp_report_usage(tg_cp_t *cp, const uint8_t *req, size_t req_len, tg_buf_t *reply, char *err,
                    size_t errlen)
{
    settle_ctx_t c;
    settle_job_t job;
    ProtobufCMessage *m = NULL;
    char key[TG_STORE_MAX_KEY];
    int code = TG_RPC_CODE_OK;
    int64_t leader_rev = 0;
    tg_cp_agent_side_t *as = cp->cp_agent;
    size_t n;
    int64_t t_start = tg_cp_now_us(), t_verified = 0, t_priced = 0;

    memset(&c, 0, sizeof(c));
    memset(&job, 0, sizeof(job));
    c.sc_cp = cp;
    tg_buf_init(&job.j_marker_val, 4096);
    c.sc_pool = tg_pool_create(req_len < 16384 ? 16384 : 65536);
    if (c.sc_pool == NULL) {
        code = tg_errf(err, errlen, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory for the batch");
        goto fail;
    }
    code = cp_batch_unpack_signed(c.sc_pool, req, req_len, &c.sc_signed, err, errlen);
    if (code != TG_RPC_CODE_OK)
        goto fail;
    snprintf(key, sizeof(key), TG_CP_K_AGENT "%s", c.sc_signed->agent_id);
    m = NULL;
    if (tg_cp_get_pb(cp, key, &tollgate__v1__agent_info__descriptor, &m, NULL, err, errlen) < 0) {
        code = TG_RPC_CODE_UNAVAILABLE;
        goto fail;
    }
    c.sc_agent = (Tollgate__V1__AgentInfo *)m;
    if (c.sc_agent == NULL) {
        code = tg_errf(err, errlen, TG_RPC_CODE_UNAUTHENTICATED, "unknown agent %s",
                       c.sc_signed->agent_id);
        goto fail;
    }
    code = cp_batch_open(c.sc_pool, c.sc_signed, c.sc_agent->public_key.data, c.sc_agent->public_key.len,
                         &c.sc_batch, err, errlen);
    if (code != TG_RPC_CODE_OK)
        goto fail;
    /* a revoked agent settles nothing more (RevokeAgent) */
    code = cp_agent_revoked(cp, c.sc_signed->agent_id, err, errlen);
    if (code != TG_RPC_CODE_OK)
        goto fail;
    code = leader_gate(cp, &leader_rev, err, errlen);
    if (code != TG_RPC_CODE_OK)
        goto fail;
    if (cp_batch_key(c.sc_batch->agent_id, c.sc_batch->sequence, job.j_marker,
                     sizeof(job.j_marker)) < 0) {
        code = tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "agent_id too long");
        goto fail;
    }
    /* a resend of a settled batch: answer what the first settlement
     * answered without pricing it again (checked again at commit time) */
    int a = answer_from_marker(cp, NULL, job.j_marker, reply, err, errlen);
    if (a != 0) {
        code = a > 0 ? TG_RPC_CODE_OK : -a;
        goto fail;
    }
    t_verified = tg_cp_now_us();

    n = c.sc_batch->n_records;
    size_t cnt = n ? n : 1;
    c.sc_dup = tg_calloc(cnt, sizeof(int));
    c.sc_mismatch = tg_calloc(cnt, sizeof(int));
    c.sc_acct = tg_calloc(cnt, sizeof(*c.sc_acct));
    c.sc_bucket = tg_calloc(cnt, sizeof(*c.sc_bucket));
    c.sc_unbilled = tg_calloc(cnt, sizeof(*c.sc_unbilled));
    c.sc_unbilled_buf = tg_calloc(cnt, sizeof(*c.sc_unbilled_buf));
    c.sc_cost = tg_calloc(cnt, sizeof(int64_t));
    c.sc_upcost = tg_calloc(cnt, sizeof(int64_t));
    c.sc_balidx = tg_calloc(cnt, sizeof(size_t));
    c.sc_entries = tg_calloc(cnt, sizeof(*c.sc_entries));
    c.sc_orig = tg_calloc(2 * cnt, sizeof(char *));
    c.sc_ids = tg_calloc(cnt, sizeof(*c.sc_ids));
    c.sc_rs = tg_calloc(cnt * MAX_RS, sizeof(*c.sc_rs));
    c.sc_nrs = tg_calloc(cnt, sizeof(*c.sc_nrs));
    if (!c.sc_ids || !c.sc_rs || !c.sc_nrs || !c.sc_orig || !c.sc_dup || !c.sc_mismatch || !c.sc_acct || !c.sc_bucket ||
        !c.sc_unbilled || !c.sc_unbilled_buf || !c.sc_cost || !c.sc_upcost || !c.sc_balidx ||
        !c.sc_entries) {
        code = tg_errf(err, errlen, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory for the batch");
        goto fail;
    }
    code = price_records(&c, err, errlen);
    if (code != TG_RPC_CODE_OK)
        goto fail;
    early_check(&c, leader_rev);
    early_test_hold(&c);
    t_priced = tg_cp_now_us();

    job.j_c = &c;
    job.j_reply = reply;
    settle_queued(as, &job);
    if (job.j_code != TG_RPC_CODE_OK || job.j_answered) {
        code = job.j_code;
        if (code != TG_RPC_CODE_OK)
            tg_errf(err, errlen, code, "%s", job.j_err);
        goto fail;
    }
    unsigned char head_hash[32];
    tg_ledger_head(cp->cp_ledger, &job.j_resp.ledger_seq, head_hash, NULL, 0);
    TG_LOG(TG_LOG_DEBUG, "cp.settle", "batch %s/%" PRIu64 ": %u records; verify %" PRId64 " us, price %" PRId64
           " us, queue+commit+ledger %" PRId64 " us (revision %" PRId64 ")", c.sc_batch->agent_id,
           c.sc_batch->sequence, job.j_resp.settled, t_verified - t_start, t_priced - t_verified,
           tg_cp_now_us() - t_priced, job.j_rev);
    atomic_fetch_add(&cp->cp_m_batches, 1);
    atomic_fetch_add(&cp->cp_m_records, job.j_resp.settled);
    atomic_fetch_add(&cp->cp_m_mismatches, job.j_resp.cost_mismatches);
    atomic_fetch_add(&cp->cp_m_unbilled, job.j_resp.unbilled);
    if (job.j_resp.unbilled > 0)
        TG_LOG(TG_LOG_WARN, "cp.settle", "batch %s/%" PRIu64 ": %u records with a cost settled unbilled "
               "(no account or bucket to debit): see the ledger rows flagged unbilled",
               c.sc_batch->agent_id, c.sc_batch->sequence, job.j_resp.unbilled);
    if (tg_rpc_pb_pack(&job.j_resp.base, reply, err, errlen) < 0)
        code = TG_RPC_CODE_INTERNAL;
fail:
    tg_buf_free(&job.j_marker_val);
    ctx_free(&c);
    return code;
}

/* ---- top-ups and adjustments ---------------------------------------------------- */

/* OK when req repeats the change whose first answer is `first` (same kind,
 * bucket, amount and reason), else ALREADY_EXISTS naming what differs. */
static int idem_same(const Tollgate__V1__BalanceChangeResponse *first,
                     const Tollgate__V1__BalanceChangeRequest *req, int kind, char *err, size_t errlen)
{
    const Tollgate__V1__LedgerEntry *e = first->entry;
    const char *what = NULL;
    char was[160] = "", now[160] = "";
    if (e == NULL)
        return TG_RPC_CODE_OK; /* nothing to compare with */
    if ((int)e->kind != kind) {
        what = "kind";
        snprintf(was, sizeof(was), "%s", e->kind == TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_TOPUP ? "a top-up" : "an adjustment");
        snprintf(now, sizeof(now), "%s", kind == TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_TOPUP ? "a top-up" : "an adjustment");
    } else if (strcmp(e->bucket, req->bucket) != 0) {
        what = "bucket";
        snprintf(was, sizeof(was), "'%s'", e->bucket);
        snprintf(now, sizeof(now), "'%s'", req->bucket);
    } else if (e->amount_nano != req->amount_nano) {
        what = "amount_nano";
        snprintf(was, sizeof(was), "%" PRId64, e->amount_nano);
        snprintf(now, sizeof(now), "%" PRId64, req->amount_nano);
    } else if (strcmp(e->reason, req->reason) != 0) {
        what = "reason";
        snprintf(was, sizeof(was), "'%.120s'", e->reason);
        snprintf(now, sizeof(now), "'%.120s'", req->reason);
    }
    if (what == NULL)
        return TG_RPC_CODE_OK;
    return tg_errf(err, errlen, TG_RPC_CODE_ALREADY_EXISTS,
                   "idempotency_key '%s' was used by another change (entry %s): %s %s there, %s here; "
                   "nothing changed (use a new key for a new change)",
                   req->idempotency_key, e->entry_id, what, was, now);
}

int tg_cp_balance_change(tg_cp_t *cp, const Tollgate__V1__BalanceChangeRequest *req, int kind,
                         const Tollgate__V1__Actor *actor, const tg_cp_txn_extra_t *extra,
                         tg_buf_t *reply, char *err, size_t errlen)
{
    tg_cp_agent_side_t *as = cp->cp_agent;
    ProtobufCMessage *am = NULL, *old = NULL;
    bal_t bal;
    char idem[TG_STORE_MAX_KEY], key[TG_STORE_MAX_KEY], entry_id[64];
    tg_buf_t settled, marker_val;
    int code = TG_RPC_CODE_OK, locked = 0;
    int64_t leader_rev = 0, commit_rev = 0;
    Tollgate__V1__LedgerEntry e;
    Tollgate__V1__BalanceChangeResponse resp = TOLLGATE__V1__BALANCE_CHANGE_RESPONSE__INIT;
    Tollgate__V1__Actor actor_copy = TOLLGATE__V1__ACTOR__INIT;

    memset(&bal, 0, sizeof(bal));
    tg_buf_init(&settled, TG_STORE_MAX_VALUE);
    tg_buf_init(&marker_val, TG_STORE_MAX_VALUE);
    if (req == NULL || req->account_id[0] == '\0') {
        code = tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "account_id: must not be empty");
        goto fail;
    }
    if (req->bucket[0] == '\0') {
        code = tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "bucket: must not be empty");
        goto fail;
    }
    if (kind == TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_TOPUP ? req->amount_nano <= 0
                                                             : req->amount_nano == 0) {
        code = tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                       kind == TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_TOPUP
                           ? "amount_nano: a top-up must be > 0"
                           : "amount_nano: an adjustment must not be 0");
        goto fail;
    }
    if (req->idempotency_key[0] == '\0' || strlen(req->idempotency_key) > 128) {
        code = tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                       "idempotency_key: required, 1..128 bytes");
        goto fail;
    }
    if (cp_idem_key(req->account_id, req->idempotency_key, idem, sizeof(idem)) < 0) {
        code = tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "account_id: too long");
        goto fail;
    }
    code = leader_gate(cp, &leader_rev, err, errlen);
    if (code != TG_RPC_CODE_OK)
        goto fail;
    snprintf(key, sizeof(key), TG_CP_K_ACCOUNT "%s", req->account_id);
    if (tg_cp_get_pb(cp, key, &tollgate__v1__account__descriptor, &am, NULL, err, errlen) < 0) {
        code = TG_RPC_CODE_UNAVAILABLE;
        goto fail;
    }
    if (am == NULL) {
        code = tg_errf(err, errlen, TG_RPC_CODE_NOT_FOUND, "account_id: account '%s' not found",
                       req->account_id);
        goto fail;
    }
    const Tollgate__V1__Account *a = (const Tollgate__V1__Account *)am;
    const Tollgate__V1__BucketSpec *bs = bucket_spec(a, req->bucket);
    if (bs == NULL) {
        code = tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                       "bucket: account '%s' has no bucket '%s'", a->id, req->bucket);
        goto fail;
    }
    if (req->currency[0] != '\0' && strcmp(req->currency, bs->currency) != 0) {
        code = tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                       "currency: bucket '%s' is in %s, not %s", bs->name, bs->currency,
                       req->currency);
        goto fail;
    }
    if (tg_crypto_new_id(kind == TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_TOPUP ? "top_" : "adj_",
                         entry_id, sizeof(entry_id)) != 0) {
        code = tg_errf(err, errlen, TG_RPC_CODE_INTERNAL, "no entropy for an id");
        goto fail;
    }
    if (actor != NULL) {
        actor_copy.token_name = actor->token_name;
        actor_copy.role = actor->role;
        actor_copy.peer = actor->peer;
    }
    pthread_mutex_lock(&as->as_settle_mu);
    locked = 1;
    for (int attempt = 0;; attempt++) {
        if (tg_cp_get_pb(cp, idem, &tollgate__v1__balance_change_response__descriptor, &old, NULL,
                         err, errlen) < 0) {
            code = TG_RPC_CODE_UNAVAILABLE;
            goto fail;
        }
        if (old != NULL) {
            /* the same request again answers the first result; the same key
             * for a different change is a conflict, never a silent no-op */
            code = idem_same((const Tollgate__V1__BalanceChangeResponse *)old, req, kind, err, errlen);
            if (code != TG_RPC_CODE_OK)
                goto fail;
            ((Tollgate__V1__BalanceChangeResponse *)old)->duplicate = 1;
            code = tg_rpc_pb_pack(old, reply, err, errlen) < 0 ? TG_RPC_CODE_INTERNAL : TG_RPC_CODE_OK;
            goto fail;
        }
        if (attempt >= SETTLE_ATTEMPTS) {
            code = tg_errf(err, errlen, TG_RPC_CODE_ABORTED,
                           "balance change conflicted %d times; retry", attempt);
            goto fail;
        }
        bal_clear(&bal);
        memset(&bal, 0, sizeof(bal));
        if (bal_load(cp, NULL, a, bs, &bal, err, errlen) < 0 || load_seq(as, err, errlen) < 0) {
            code = TG_RPC_CODE_UNAVAILABLE;
            goto fail;
        }
        int64_t after;
        if (__builtin_add_overflow(bal.b_start, req->amount_nano, &after)) {
            code = tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "amount_nano: balance would overflow");
            goto fail;
        }
        int64_t floor = bal.b_prepaid ? 0 : -bs->credit_limit_nano;
        if (req->amount_nano < 0 && after < floor) {
            code = tg_errf(err, errlen, TG_RPC_CODE_FAILED_PRECONDITION,
                           "%s bucket '%s' of account '%s' would go to %" PRId64 " nano, below %" PRId64,
                           bal.b_prepaid ? "prepaid" : "postpaid", bs->name, a->id, after, floor);
            goto fail;
        }
        int64_t now = tg_cp_now_us();
        bal.b_msg->balance_nano = after;
        bal.b_msg->updated_at_us = now;
        tollgate__v1__ledger_entry__init(&e);
        e.kind = (Tollgate__V1__LedgerKind)kind;
        e.entry_id = entry_id;
        e.settled_at_us = now;
        e.account_id = a->id;
        e.bucket = bs->name;
        e.currency = bs->currency;
        e.amount_nano = req->amount_nano;
        e.balance_after_nano = after;
        e.idempotency_key = req->idempotency_key;
        e.reason = req->reason;
        e.actor = &actor_copy;
        Tollgate__V1__LedgerEntry *ep = &e;
        Tollgate__V1__LedgerPage page = TOLLGATE__V1__LEDGER_PAGE__INIT;
        page.n_entries = 1;
        page.entries = &ep;
        resp.balance = bal.b_msg;
        resp.entry = &e;
        tg_buf_reset(&settled);
        tg_buf_reset(&marker_val);
        tg_buf_reset(&bal.b_packed);
        if (tg_rpc_pb_pack(&page.base, &settled, err, errlen) < 0 ||
            tg_rpc_pb_pack(&resp.base, &marker_val, err, errlen) < 0 ||
            tg_rpc_pb_pack(&bal.b_msg->base, &bal.b_packed, err, errlen) < 0) {
            code = TG_RPC_CODE_INTERNAL;
            goto fail;
        }
        const char *markers[1] = {idem};
        const tg_buf_t *vals[1] = {&marker_val};
        tg_store_cmp_t xcmps[TG_CP_TXN_EXTRA_MAX];
        tg_store_op_t xops[TG_CP_TXN_EXTRA_MAX];
        size_t nxc = 0, nxo = 0;
        if (extra != NULL && extra->tx_fill != NULL) {
            /* the caller's writes (the audit event) commit with the money */
            code = extra->tx_fill(extra->tx_arg, &e, xcmps, &nxc, xops, &nxo, err, errlen);
            if (code != TG_RPC_CODE_OK)
                goto fail;
            if (nxc > TG_CP_TXN_EXTRA_MAX || nxo > TG_CP_TXN_EXTRA_MAX) {
                code = tg_errf(err, errlen, TG_RPC_CODE_INTERNAL, "too many extra writes for a balance change");
                goto fail;
            }
        }
        commit_spec_t cs = {.cs_leader_rev = leader_rev, .cs_markers = markers, .cs_marker_vals = vals,
                            .cs_nmark = 1, .cs_bals = &bal, .cs_nbal = 1, .cs_settled = &settled,
                            .cs_xcmps = xcmps, .cs_nxcmp = nxc, .cs_xops = xops, .cs_nxop = nxo};
        int rc = settle_commit(as, &cs, &commit_rev, err, errlen);
        if (rc < 0) {
            code = tg_cp_store_code(rc);
            goto fail;
        }
        if (rc == 1)
            break;
        code = leader_gate(cp, &leader_rev, err, errlen);
        if (code != TG_RPC_CODE_OK)
            goto fail;
    }
    crash_hook(cp);
    pthread_mutex_unlock(&as->as_settle_mu);
    locked = 0;
    char stuck[TG_ERRLEN] = "";
    int w = cp_tail_wait(as, commit_rev, ACK_WAIT_MS, stuck, sizeof(stuck));
    if (w == -2) {
        /* committed, but the ledger cannot take its row now (disk full):
         * say so at once; the same idempotency key answers it later */
        if (errlen > 0)
            err[0] = '\0';
        code = tg_errf(err, errlen, TG_RPC_CODE_UNAVAILABLE,
                       "%.300s. This change is committed (entry %s) and its ledger row is appended when settlement "
                       "resumes: resend it with the same idempotency_key then to see it",
                       stuck, entry_id);
        goto fail;
    }
    if (w < 0)
        TG_LOG(TG_LOG_WARN, "cp.settle", "%s committed at revision %" PRId64 " but not in the ledger after %d ms",
               entry_id, commit_rev, ACK_WAIT_MS);
    int found = 0;
    tg_ledger_get(cp->cp_ledger, entry_id, seq_cb, &e.seq, &found, NULL, 0);
    if (tg_rpc_pb_pack(&resp.base, reply, err, errlen) < 0)
        code = TG_RPC_CODE_INTERNAL;
fail:
    if (locked)
        pthread_mutex_unlock(&as->as_settle_mu);
    bal_clear(&bal);
    tg_rpc_pb_free(old);
    tg_rpc_pb_free(am);
    tg_buf_free(&settled);
    tg_buf_free(&marker_val);
    return code;
}

/* ---- checkpoints ---------------------------------------------------------------- */

int tg_cp_checkpoint(tg_cp_t *cp, tg_buf_t *reply, char *err, size_t errlen)
{
    Tollgate__V1__LedgerCheckpoint ck = TOLLGATE__V1__LEDGER_CHECKPOINT__INIT;
    uint8_t msg[sizeof("tollgate-checkpoint-v1") - 1 + 8 + 32], sig[TG_ED25519_SIG_LEN], pub[32];
    uint8_t kh[32];
    unsigned char hash[32];
    char keyid[80], hex[65];
    uint64_t seq = 0;
    tg_buf_t val;
    size_t off = sizeof("tollgate-checkpoint-v1") - 1;

    if (cp->cp_key == NULL)
        return tg_errf(err, errlen, TG_RPC_CODE_UNAVAILABLE, "no signing key loaded");
    if (tg_ledger_head(cp->cp_ledger, &seq, hash, err, errlen) < 0)
        return TG_RPC_CODE_UNAVAILABLE;
    memcpy(msg, "tollgate-checkpoint-v1", off);
    for (int i = 0; i < 8; i++)
        msg[off + (size_t)i] = (uint8_t)(seq >> (56 - 8 * i));
    memcpy(msg + off + 8, hash, 32);
    if (tg_crypto_sign(cp->cp_key, msg, sizeof(msg), sig) != 0)
        return tg_errf(err, errlen, TG_RPC_CODE_INTERNAL, "signing the checkpoint failed");
    tg_crypto_key_public(cp->cp_key, pub);
    tg_crypto_sha256(pub, sizeof(pub), kh);
    tg_crypto_hex(kh, 8, hex);
    snprintf(keyid, sizeof(keyid), "cpk_%.16s", hex);
    ck.seq = seq;
    ck.hash.data = hash;
    ck.hash.len = 32;
    ck.created_at_us = tg_cp_now_us();
    ck.signer_key_id = keyid;
    ck.public_key.data = pub;
    ck.public_key.len = 32;
    ck.signature.data = sig;
    ck.signature.len = sizeof(sig);
    if (tg_rpc_pb_pack(&ck.base, reply, err, errlen) < 0)
        return TG_RPC_CODE_INTERNAL;
    /* the latest one also goes to the store, for replicas and auditors */
    tg_buf_init(&val, 4096);
    char err2[TG_ERRLEN] = "";
    if (tg_rpc_pb_pack(&ck.base, &val, err2, sizeof(err2)) == 0 &&
        tg_store_put(cp->cp_store, TG_CP_K_CHECKPOINT, strlen(TG_CP_K_CHECKPOINT), val.b_data,
                     val.b_len, 0, NULL, err2, sizeof(err2)) < 0)
        TG_LOG(TG_LOG_WARN, "cp.settle", "storing the checkpoint failed: %s", err2);
    tg_buf_free(&val);
    return TG_RPC_CODE_OK;
}
