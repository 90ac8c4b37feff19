/* audit.c: the admin audit log. Every admin write commits its AuditEvent in
 * the same store transaction as the change (cp_wr_commit), so the log never
 * misses a change and never records one that did not happen.
 *
 * Sequence numbers: the last one used lives under TG_CP_K_AUDIT_SEQ. A write
 * reads it, and its transaction compares that key's mod_revision with what
 * it read, then puts TG_CP_K_AUDIT/<seq+1> and the new counter. Two
 * concurrent writers cannot both succeed with the same seq; the loser's
 * transaction fails on that compare alone and is retried with the next seq.
 * (Deriving the seq from the store revision would avoid the counter, but
 * the revision is only known after the commit, and the event's key must be
 * chosen before it.) The cost is that admin writes serialize on one key,
 * which is fine for operator traffic. Within one replica the writers take
 * a mutex first, so they queue instead of failing each other's compares
 * (measured: 8 concurrent writers exhausted 32 optimistic retries without
 * it); between replicas the compare does the work, with a short randomized
 * backoff between attempts. The event's revision field is filled on read
 * from the key's mod_revision: the revision of the change itself. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/tg_log.h"
#include "controlplane/admin_int.h"

#define AUDIT_RETRIES 32

static pthread_mutex_t commit_mu = PTHREAD_MUTEX_INITIALIZER;

/* Sleeps a random 0..attempt ms: other replicas' writers get a turn. */
static void backoff(int attempt)
{
    uint8_t r = 0;
    struct timespec ts;
    tg_crypto_random(&r, 1);
    ts.tv_sec = 0;
    ts.tv_nsec = (long)(r % (attempt + 1)) * 1000000L;
    nanosleep(&ts, NULL);
}

/* Whether one compare holds now (a fresh read). Returns 1/0, or a negative
 * store code. */
static int cmp_holds(tg_cp_t *cp, const tg_store_cmp_t *c, char *err, size_t errlen)
{
    tg_store_kv_t *kv = NULL;
    int64_t v = 0;
    int rc = tg_store_get(cp->cp_store, c->c_key, c->c_key_len, &kv, NULL, err, errlen);
    if (rc != 0) return rc;
    if (kv) {
        if (c->c_target == TG_STORE_CMP_VERSION) v = kv->kv_version;
        else if (c->c_target == TG_STORE_CMP_MOD_REV) v = kv->kv_mod_rev;
        else if (c->c_target == TG_STORE_CMP_CREATE_REV) v = kv->kv_create_rev;
    }
    tg_store_kv_free(kv);
    switch (c->c_op) {
    case TG_STORE_EQ: return v == c->c_num;
    case TG_STORE_NE: return v != c->c_num;
    case TG_STORE_LT: return v < c->c_num;
    default: return v > c->c_num;
    }
}

void cp_audit_lock(void)
{
    pthread_mutex_lock(&commit_mu);
}

void cp_audit_unlock(void)
{
    pthread_mutex_unlock(&commit_mu);
}

int cp_audit_fill(cp_actx_t *a, const cp_wr_t *w, cp_audit_slot_t *s, tg_store_cmp_t *cmp,
                  tg_store_op_t *ops, char *err, size_t errlen)
{
    tg_cp_t *cp = a->ax_cp;
    char num[32], perr[TG_ERRLEN] = "";
    tg_store_kv_t *kv = NULL;
    uint64_t seq = 0;
    int64_t seq_rev = 0;
    Tollgate__V1__AuditEvent ev = TOLLGATE__V1__AUDIT_EVENT__INIT;

    int rc = tg_store_get(cp->cp_store, TG_CP_K_AUDIT_SEQ, strlen(TG_CP_K_AUDIT_SEQ), &kv, NULL, perr,
                          sizeof perr);
    if (rc != 0) return tg_errf(err, errlen, tg_cp_store_code(rc), "store: %s", perr);
    if (kv) {
        snprintf(num, sizeof num, "%.*s", (int)(kv->kv_val_len < 31 ? kv->kv_val_len : 31),
                 (const char *)kv->kv_val);
        seq = strtoull(num, NULL, 10);
        seq_rev = kv->kv_mod_rev;
        tg_store_kv_free(kv);
    }
    seq++;
    tg_cp_seqstr(seq, s->au_seq);
    snprintf(s->au_key, sizeof s->au_key, "%s%s", TG_CP_K_AUDIT, s->au_seq);
    ev.seq = (int64_t)seq;
    ev.at_us = tg_cp_now_us();
    ev.actor = &a->ax_actor;
    ev.method = (char *)a->ax_method;
    ev.object_type = (char *)(w->wr_otype ? w->wr_otype : "");
    ev.object_id = (char *)(w->wr_oid ? w->wr_oid : "");
    ev.before_json = (char *)(w->wr_before ? w->wr_before : "");
    ev.after_json = (char *)(w->wr_after ? w->wr_after : "");
    tg_buf_reset(&s->au_buf);
    if (tg_rpc_pb_pack(&ev.base, &s->au_buf, perr, sizeof perr) != 0)
        return tg_errf(err, errlen, TG_RPC_CODE_INTERNAL, "audit event: %s", perr);
    *cmp = (tg_store_cmp_t){.c_key = TG_CP_K_AUDIT_SEQ,
                            .c_key_len = strlen(TG_CP_K_AUDIT_SEQ),
                            .c_target = TG_STORE_CMP_MOD_REV,
                            .c_op = TG_STORE_EQ,
                            .c_num = seq_rev};
    ops[0] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT,
                             .op_key = s->au_key,
                             .op_key_len = strlen(s->au_key),
                             .op_val = s->au_buf.b_data,
                             .op_val_len = s->au_buf.b_len};
    ops[1] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT,
                             .op_key = TG_CP_K_AUDIT_SEQ,
                             .op_key_len = strlen(TG_CP_K_AUDIT_SEQ),
                             .op_val = s->au_seq,
                             .op_val_len = 20};
    return TG_RPC_CODE_OK;
}

int cp_wr_commit(cp_actx_t *a, cp_wr_t *w, int64_t *rev)
{
    tg_cp_t *cp = a->ax_cp;
    char err[TG_ERRLEN] = "";
    tg_store_cmp_t cmps[CP_WR_MAX_CMPS + 1];
    tg_store_op_t ops[CP_WR_MAX_OPS + 2];
    cp_audit_slot_t slot;
    int code = TG_RPC_CODE_ABORTED;

    if (w->wr_overflow) return cp_fail(a, TG_RPC_CODE_INTERNAL, "write plan too large");
    tg_buf_init(&slot.au_buf, TG_STORE_MAX_VALUE);
    pthread_mutex_lock(&commit_mu);
    for (int attempt = 0; attempt < AUDIT_RETRIES; attempt++) {
        tg_store_txn_res_t res;
        int rc;

        memcpy(cmps, w->wr_cmps, w->wr_ncmp * sizeof(cmps[0]));
        memcpy(ops, w->wr_ops, w->wr_nops * sizeof(ops[0]));
        if ((code = cp_audit_fill(a, w, &slot, &cmps[w->wr_ncmp], &ops[w->wr_nops], err,
                                  sizeof err)) != TG_RPC_CODE_OK) {
            code = cp_fail(a, code, "%s", err);
            goto done;
        }
        rc = tg_store_txn(cp->cp_store, cmps, w->wr_ncmp + 1, ops, w->wr_nops + 2, NULL, 0, &res,
                          err, sizeof err);
        if (rc != 0) {
            code = cp_fail(a, tg_cp_store_code(rc), "store: %s", err);
            goto done;
        }
        if (res.tx_succeeded) {
            if (rev) *rev = res.tx_revision;
            tg_store_txn_res_free(&res);
            {
                char rs[24];
                snprintf(rs, sizeof rs, "%" PRId64, rev ? *rev : 0);
                const char *kvs[] = {"method", a->ax_method, "token", a->ax_token.at_name,
                                     "object", w->wr_oid ? w->wr_oid : "", "revision", rs, NULL};
                if (tg_log_enabled(TG_LOG_INFO))
                    tg_log_kv(TG_LOG_INFO, "admin", kvs, "admin change committed");
            }
            code = TG_RPC_CODE_OK;
            goto done;
        }
        tg_store_txn_res_free(&res);
        /* Which compare failed? The caller's compares carry their own status;
         * when they all hold now, only the audit counter moved: retry. */
        for (size_t i = 0; i < w->wr_ncmp; i++) {
            int h = cmp_holds(cp, &w->wr_cmps[i], err, sizeof err);
            if (h < 0) {
                code = cp_fail(a, tg_cp_store_code(h), "store: %s", err);
                goto done;
            }
            if (h == 0) {
                code = cp_fail(a, w->wr_cmp_code[i], "%s", w->wr_cmp_msg[i]);
                goto done;
            }
        }
        backoff(attempt);
    }
    code = cp_fail(a, TG_RPC_CODE_ABORTED,
                   "too many concurrent admin changes; nothing was changed, retry");
done:
    pthread_mutex_unlock(&commit_mu);
    tg_buf_free(&slot.au_buf);
    return code;
}

/* ---- QueryAudit ------------------------------------------------------------ */

static int keep_event(const ProtobufCMessage *m, const void *arg)
{
    const Tollgate__V1__AuditQuery *q = arg;
    const Tollgate__V1__AuditEvent *e = (const Tollgate__V1__AuditEvent *)m;
    return !((q->object_type[0] && strcmp(q->object_type, e->object_type) != 0) ||
             (q->object_id[0] && strcmp(q->object_id, e->object_id) != 0) ||
             (q->token_name[0] && (!e->actor || strcmp(q->token_name, e->actor->token_name) != 0)) ||
             (q->since_us && e->at_us < q->since_us) || (q->until_us && e->at_us >= q->until_us));
}

int cp_query_audit(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__AuditQuery *q = (const Tollgate__V1__AuditQuery *)reqm;
    /* events are keyed by their 20-digit seq: store order is log order */
    return cp_list(a, TG_CP_K_AUDIT, &tollgate__v1__audit_event__descriptor, q->page_size,
                   q->page_token, keep_event, q, NULL, &tollgate__v1__audit_page__descriptor, reply);
}
