/* admin.c: AdminService's frame. Registers every method of the admin*.c
 * tables on the gRPC server behind one wrapper that authenticates the
 * caller, checks the method's role, unpacks the request and counts the
 * call; builds write plans (the transaction a write commits, see
 * admin_int.h); lists any object type page by page; and serves the small
 * methods that fit nowhere else (WhoAmI, ListAgents, QueryAudit,
 * GetCheckpoint, TopUp, Adjust). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/tg_log.h"
#include "controlplane/admin_int.h"
#include "pbjson/tg_pbjson.h"

const char *const tg_cp_redact[] = {"credential", "secret_sha256", "webhook_secret", NULL};

atomic_int tg_cp_exports_running;

/* ---- context helpers --------------------------------------------------------- */

int cp_fail(cp_actx_t *a, int code, const char *fmt, ...)
{
    char msg[TG_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return tg_rpc_call_errorf(a->ax_call, code, "%s", msg);
}

char *cp_fmt(cp_actx_t *a, const char *fmt, ...)
{
    va_list ap;
    int n;
    char *s;
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    s = tg_pool_alloc(a->ax_pool, (size_t)n + 1);
    if (!s) abort();
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

int cp_read(cp_actx_t *a, const char *key, const ProtobufCMessageDescriptor *d,
            ProtobufCMessage **out, int64_t *mod_rev, int *code)
{
    char err[TG_ERRLEN] = "";
    int rc = tg_cp_get_pb(a->ax_cp, key, d, out, mod_rev, err, sizeof err);
    if (rc < 0)
        *code = cp_fail(a, rc == TG_RPC_EPROTO ? TG_RPC_CODE_INTERNAL : tg_cp_store_code(rc),
                        "store: %s", err);
    return rc;
}

int cp_reply(cp_actx_t *a, const ProtobufCMessage *m, tg_buf_t *reply)
{
    char err[TG_ERRLEN] = "";
    if (tg_rpc_pb_pack(m, reply, err, sizeof err) != 0)
        return cp_fail(a, TG_RPC_CODE_INTERNAL, "reply: %s", err);
    return TG_RPC_CODE_OK;
}

/* ---- write plans ----------------------------------------------------------------- */

void cp_wr_init(cp_wr_t *w, tg_pool_t *pool)
{
    memset(w, 0, sizeof(*w));
    w->wr_pool = pool;
}

static char *pool_dup(cp_wr_t *w, const void *p, size_t n)
{
    char *s = tg_pool_alloc(w->wr_pool, n + 1);
    if (!s) abort();
    if (n) memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

void cp_wr_cmp(cp_wr_t *w, const char *key, int target, int op, int64_t num, int code,
               const char *msg)
{
    if (w->wr_ncmp == CP_WR_MAX_CMPS) {
        w->wr_overflow = 1;
        return;
    }
    w->wr_cmps[w->wr_ncmp] = (tg_store_cmp_t){.c_key = pool_dup(w, key, strlen(key)),
                                              .c_key_len = strlen(key),
                                              .c_target = target,
                                              .c_op = op,
                                              .c_num = num};
    w->wr_cmp_code[w->wr_ncmp] = code;
    w->wr_cmp_msg[w->wr_ncmp] = pool_dup(w, msg, strlen(msg));
    w->wr_ncmp++;
}

void cp_wr_put(cp_wr_t *w, const char *key, const void *val, size_t len)
{
    if (w->wr_nops == CP_WR_MAX_OPS) {
        w->wr_overflow = 1;
        return;
    }
    w->wr_ops[w->wr_nops++] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT,
                                              .op_key = pool_dup(w, key, strlen(key)),
                                              .op_key_len = strlen(key),
                                              .op_val = pool_dup(w, val, len),
                                              .op_val_len = len};
}

int cp_wr_put_pb(cp_wr_t *w, const char *key, const ProtobufCMessage *m)
{
    tg_buf_t b;
    int rc;
    tg_buf_init(&b, TG_STORE_MAX_VALUE);
    rc = tg_rpc_pb_pack(m, &b, NULL, 0);
    if (rc == 0) cp_wr_put(w, key, b.b_data ? b.b_data : "", b.b_len);
    else w->wr_overflow = 1;
    tg_buf_free(&b);
    return rc;
}

void cp_wr_del(cp_wr_t *w, const char *key, int prefix)
{
    if (w->wr_nops == CP_WR_MAX_OPS) {
        w->wr_overflow = 1;
        return;
    }
    w->wr_ops[w->wr_nops++] = (tg_store_op_t){.op_type = TG_STORE_OP_DELETE,
                                              .op_key = pool_dup(w, key, strlen(key)),
                                              .op_key_len = strlen(key),
                                              .op_prefix = prefix};
}

static const char *json_of(cp_wr_t *w, const ProtobufCMessage *m)
{
    tg_pbjson_opts_t o = {0, tg_cp_redact};
    char *j, *s;
    if (!m) return NULL;
    j = tg_pbjson_dumps(m, &o);
    if (!j) abort();
    s = pool_dup(w, j, strlen(j));
    free(j);
    return s;
}

void cp_wr_audit(cp_wr_t *w, const char *otype, const char *oid, const ProtobufCMessage *before,
                 const ProtobufCMessage *after)
{
    w->wr_otype = otype;
    w->wr_oid = pool_dup(w, oid, strlen(oid));
    w->wr_before = json_of(w, before);
    w->wr_after = json_of(w, after);
}

/* ---- scans and generic lists ---------------------------------------------------- */

int cp_scan(cp_actx_t *a, const char *prefix, const char *from, size_t from_len, int keys_only,
            cp_scan_fn fn, void *arg)
{
    size_t plen = strlen(prefix), start_len = plen + (from ? from_len : 0), end_len;
    char *start = tg_pool_alloc(a->ax_pool, TG_STORE_MAX_KEY + 1);
    uint8_t end[TG_STORE_MAX_KEY];
    char err[TG_ERRLEN] = "";
    if (!start) return cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
    if (start_len > TG_STORE_MAX_KEY)
        return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "page_token: too long");
    memcpy(start, prefix, plen);
    if (from) memcpy(start + plen, from, from_len);
    end_len = tg_store_prefix_end(prefix, plen, end);
    for (;;) {
        tg_store_range_req_t rq = {.rq_key = start, .rq_key_len = start_len, .rq_end = end,
                                   .rq_end_len = end_len, .rq_limit = 256,
                                   .rq_keys_only = keys_only};
        tg_store_range_res_t rs;
        int more, rc = tg_store_range(a->ax_cp->cp_store, &rq, &rs, err, sizeof err);
        if (rc != 0) return cp_fail(a, tg_cp_store_code(rc), "store: %s", err);
        for (size_t i = 0; i < rs.rs_n; i++) {
            const tg_store_kv_t *kv = &rs.rs_kvs[i];
            int r = fn(a, kv, (const char *)kv->kv_key + plen, kv->kv_key_len - plen, arg);
            if (r != CP_SCAN_GO) {
                tg_store_range_res_free(&rs);
                return r == CP_SCAN_STOP ? TG_RPC_CODE_OK : r;
            }
        }
        more = rs.rs_more && rs.rs_n;
        if (more) tg_store_range_next(&rs, (uint8_t *)start, &start_len);
        tg_store_range_res_free(&rs);
        if (!more) return TG_RPC_CODE_OK;
    }
}

typedef struct list_walk {
    const ProtobufCMessageDescriptor *lw_d;
    cp_keep_fn lw_keep;
    const void *lw_keep_arg;
    void (*lw_fix)(ProtobufCMessage *m);
    ProtobufCMessage **lw_items;
    size_t lw_n, lw_want;
    char *lw_last; /* suffix of the last object returned */
    int lw_more;   /* another object follows the page */
} list_walk_t;

static int list_step(cp_actx_t *a, const tg_store_kv_t *kv, const char *suffix, size_t len,
                     void *arg)
{
    list_walk_t *w = arg;
    ProtobufCMessage *m = NULL;
    if (tg_rpc_pb_unpack(w->lw_d, kv->kv_val, kv->kv_val_len, &m, NULL, 0) != 0) {
        TG_LOG(TG_LOG_WARN, "admin", "skipping an undecodable %s (key suffix %.*s)",
               w->lw_d->name, (int)len, suffix);
        return CP_SCAN_GO;
    }
    if (w->lw_keep && !w->lw_keep(m, w->lw_keep_arg)) {
        tg_rpc_pb_free(m);
        return CP_SCAN_GO;
    }
    if (w->lw_n == w->lw_want) { /* the page is full and this one follows */
        tg_rpc_pb_free(m);
        w->lw_more = 1;
        return CP_SCAN_STOP;
    }
    tg_cp_pb_set_i64(m, "revision", kv->kv_mod_rev);
    if (w->lw_fix) w->lw_fix(m);
    w->lw_items[w->lw_n++] = m;
    w->lw_last = cp_fmt(a, "%.*s", (int)len, suffix);
    return CP_SCAN_GO;
}

int cp_list(cp_actx_t *a, const char *prefix, const ProtobufCMessageDescriptor *d,
            uint32_t page_size, const char *page_token, cp_keep_fn keep, const void *keep_arg,
            void (*fix)(ProtobufCMessage *m), const ProtobufCMessageDescriptor *respd,
            tg_buf_t *reply)
{
    list_walk_t w = {d, keep, keep_arg, fix, NULL, 0, tg_cp_page_size(page_size), NULL, 0};
    ProtobufCMessage *resp = tg_pool_calloc(a->ax_pool, respd->sizeof_message);
    char *tok = tg_pool_alloc(a->ax_pool, 2 * TG_STORE_MAX_KEY + 4);
    char *from = NULL;
    const ProtobufCFieldDescriptor *arrf = NULL, *tokf;
    int code;

    w.lw_items = tg_pool_calloc(a->ax_pool, w.lw_want * sizeof(*w.lw_items));
    if (!w.lw_items || !resp || !tok)
        return cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
    tok[0] = '\0';
    if (page_token && page_token[0]) {
        from = tg_pool_alloc(a->ax_pool, TG_STORE_MAX_KEY / 2 + 2);
        if (!from || tg_cp_page_token_decode(page_token, from, TG_STORE_MAX_KEY / 2 + 1) != 0)
            return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT,
                           "page_token: not a token from a previous page of this list");
    }
    /* the page after `from` starts at from + NUL: the next key after it */
    code = cp_scan(a, prefix, from, from ? strlen(from) + 1 : 0, 0, list_step, &w);
    if (code != TG_RPC_CODE_OK) goto done;
    if (w.lw_more && w.lw_last) tg_cp_page_token_encode(w.lw_last, tok, 2 * TG_STORE_MAX_KEY + 4);

    protobuf_c_message_init(respd, resp);
    for (unsigned i = 0; i < respd->n_fields; i++)
        if (respd->fields[i].label == PROTOBUF_C_LABEL_REPEATED) {
            arrf = &respd->fields[i];
            break;
        }
    tokf = protobuf_c_message_descriptor_get_field_by_name(respd, "next_page_token");
    if (!arrf || !tokf) {
        code = cp_fail(a, TG_RPC_CODE_INTERNAL, "%s is not a list response", respd->name);
        goto done;
    }
    *(size_t *)((char *)resp + arrf->quantifier_offset) = w.lw_n;
    *(ProtobufCMessage ***)((char *)resp + arrf->offset) = w.lw_items;
    *(char **)((char *)resp + tokf->offset) = tok;
    code = cp_reply(a, resp, reply);
done:
    for (size_t i = 0; i < w.lw_n; i++) tg_rpc_pb_free(w.lw_items[i]);
    return code;
}

/* ---- small methods -------------------------------------------------------------- */

static int whoami(cp_actx_t *a, const ProtobufCMessage *req, tg_buf_t *reply)
{
    Tollgate__V1__WhoAmIResponse r = TOLLGATE__V1__WHO_AM_IRESPONSE__INIT;
    (void)req;
    r.token_name = (char *)a->ax_token.at_name;
    r.role = (char *)tg_cp_role_name(a->ax_token.at_role);
    return cp_reply(a, &r.base, reply);
}

/* Agents as stored, with last_batch_sequence filled from
 * TG_CP_K_AGENT_SEQ/<agent>: settlement keeps the highest settled batch
 * sequence there, in the transaction that settles the batch (AgentInfo
 * itself is rewritten by Sync bookkeeping, which must not race it). */
static int list_agents(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__ListRequest *q = (const Tollgate__V1__ListRequest *)reqm;
    size_t before = reply->b_len;
    ProtobufCMessage *m = NULL;
    char err[TG_ERRLEN] = "";
    int code = cp_list(a, TG_CP_K_AGENT, &tollgate__v1__agent_info__descriptor, q->page_size,
                       q->page_token, NULL, NULL, NULL,
                       &tollgate__v1__list_agents_response__descriptor, reply);
    if (code != TG_RPC_CODE_OK) return code;
    if (tg_rpc_pb_unpack(&tollgate__v1__list_agents_response__descriptor, reply->b_data + before,
                         reply->b_len - before, &m, err, sizeof err) != 0)
        return cp_fail(a, TG_RPC_CODE_INTERNAL, "agents: %s", err);
    Tollgate__V1__ListAgentsResponse *r = (Tollgate__V1__ListAgentsResponse *)m;
    ProtobufCMessage **revs = tg_pool_calloc(a->ax_pool, (r->n_agents ? r->n_agents : 1) * sizeof(*revs));
    if (revs == NULL) {
        tg_rpc_pb_free(m);
        return cp_fail(a, TG_RPC_CODE_INTERNAL, "no memory");
    }
    for (size_t i = 0; i < r->n_agents; i++) {
        /* revoked: the revocation, kept beside AgentInfo (RevokeAgent) */
        int rc = cp_read(a, cp_fmt(a, "%s%s", TG_CP_K_AGENT_REVOKED, r->agents[i]->agent_id),
                         &tollgate__v1__agent_revocation__descriptor, &revs[i], NULL, &code);
        if (rc < 0) goto done;
        r->agents[i]->revocation = (Tollgate__V1__AgentRevocation *)revs[i];
    }
    for (size_t i = 0; i < r->n_agents; i++) {
        char key[TG_STORE_MAX_KEY], num[24] = "";
        tg_store_kv_t *kv = NULL;
        snprintf(key, sizeof key, "%s%s", TG_CP_K_AGENT_SEQ, r->agents[i]->agent_id);
        int rc = tg_store_get(a->ax_cp->cp_store, key, strlen(key), &kv, NULL, err, sizeof err);
        if (rc < 0) {
            code = cp_fail(a, tg_cp_store_code(rc), "store: %s", err);
            goto done;
        }
        if (kv) {
            memcpy(num, kv->kv_val, kv->kv_val_len < sizeof num - 1 ? kv->kv_val_len : sizeof num - 1);
            r->agents[i]->last_batch_sequence = strtoull(num, NULL, 10);
            tg_store_kv_free(kv);
        }
    }
    reply->b_len = before;
    code = cp_reply(a, m, reply);
done:
    for (size_t i = 0; i < r->n_agents; i++) {
        r->agents[i]->revocation = NULL; /* freed on their own */
        tg_rpc_pb_free(revs[i]);
    }
    tg_rpc_pb_free(m);
    return code;
}

/* Revokes an agent (a stolen agent key). The revocation is a key of its own
 * beside AgentInfo, which Sync bookkeeping rewrites read-modify-write (a
 * revoked flag there could be undone by it); it is under tg/config/ so
 * every replica's Sync watch ends the agent's stream (sync.c), and the
 * agent's proofs and batches are refused from then on (cp_agent_revoked).
 * Its public key is indexed under TG_CP_K_REVOKED_KEY so Enroll refuses it.
 * A batch in flight settles only if its commit came first (settlement
 * compares the revocation key absent); settled rows stay. Repeating the call answers the first revocation. */
static int revoke_agent(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__RevokeAgentRequest *q = (const Tollgate__V1__RevokeAgentRequest *)reqm;
    ProtobufCMessage *m = NULL, *old = NULL;
    Tollgate__V1__AgentRevocation rv = TOLLGATE__V1__AGENT_REVOCATION__INIT;
    Tollgate__V1__AgentInfo after;
    int64_t rev = 0, nrev = 0;
    int code = TG_RPC_CODE_OK, rc;
    cp_wr_t w;
    if (q->agent_id[0] == '\0' || strlen(q->agent_id) > 128)
        return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "agent_id: required, at most 128 bytes");
    if (strlen(q->reason) > 512) return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "reason: at most 512 bytes");
    const char *rkey = cp_fmt(a, "%s%s", TG_CP_K_AGENT_REVOKED, q->agent_id);
    rc = cp_read(a, cp_fmt(a, "%s%s", TG_CP_K_AGENT, q->agent_id), &tollgate__v1__agent_info__descriptor, &m,
                 &rev, &code);
    if (rc < 0) return code;
    if (rc == 1)
        return cp_fail(a, TG_RPC_CODE_NOT_FOUND, "agent_id: agent '%s' not found (tollctl agents list shows them)",
                       q->agent_id);
    Tollgate__V1__AgentInfo *ai = (Tollgate__V1__AgentInfo *)m;
    rc = cp_read(a, rkey, &tollgate__v1__agent_revocation__descriptor, &old, NULL, &code);
    if (rc < 0) goto done;
    if (rc == 0) {
        ai->revocation = (Tollgate__V1__AgentRevocation *)old; /* already revoked: nothing changes */
        code = cp_reply(a, m, reply);
        ai->revocation = NULL;
        goto done;
    }
    rv.revoked_at_us = tg_cp_now_us();
    rv.reason = (char *)q->reason;
    rv.revoked_by = a->ax_token.at_name;
    after = *ai;
    after.revocation = &rv;
    cp_wr_init(&w, a->ax_pool);
    cp_wr_cmp(&w, rkey, TG_STORE_CMP_VERSION, TG_STORE_EQ, 0, TG_RPC_CODE_ABORTED,
              cp_fmt(a, "agent '%s' was revoked meanwhile: retry to see that revocation", q->agent_id));
    if (cp_wr_put_pb(&w, rkey, &rv.base) != 0) {
        code = cp_fail(a, TG_RPC_CODE_INTERNAL, "no memory");
        goto done;
    }
    /* the key too: a thief holding it must not enroll it afresh */
    uint8_t kh[32];
    char hex[65];
    tg_crypto_sha256(ai->public_key.data, ai->public_key.len, kh);
    tg_crypto_hex(kh, sizeof(kh), hex);
    cp_wr_put(&w, cp_fmt(a, "%s%s", TG_CP_K_REVOKED_KEY, hex), q->agent_id, strlen(q->agent_id));
    cp_wr_audit(&w, "agent", q->agent_id, m, &after.base);
    if ((code = cp_wr_commit(a, &w, &nrev)) != TG_RPC_CODE_OK) goto done;
    TG_LOG(TG_LOG_WARN, "admin", "agent %s (%s) revoked by %s%s%s: its calls are refused from now on",
           q->agent_id, ai->name, rv.revoked_by, rv.reason[0] ? ": " : "", rv.reason);
    code = cp_reply(a, &after.base, reply);
done:
    tg_rpc_pb_free(old);
    tg_rpc_pb_free(m);
    return code;
}

static int get_checkpoint(cp_actx_t *a, const ProtobufCMessage *req, tg_buf_t *reply)
{
    char err[TG_ERRLEN] = "";
    int code;
    (void)req;
    code = tg_cp_checkpoint(a->ax_cp, reply, err, sizeof err);
    if (code != TG_RPC_CODE_OK) return cp_fail(a, code, "%s", err[0] ? err : "no checkpoint");
    return code;
}

/* Top-ups and adjustments go through settlement (agent side), which commits
 * the balance, the idempotency marker, the ledger row and, through the
 * tg_cp_txn_extra_t hook below, the audit event in ONE transaction: the
 * audit log and the money land or fail together. A duplicate (same
 * idempotency key) commits nothing, so it adds no audit event. The audit
 * lock is held across the call so this replica's admin writers never race
 * the event's seq (order: audit lock, then settlement's lock; settlement
 * never takes the audit lock). */
typedef struct bc_audit {
    cp_actx_t *ba_a;
    const char *ba_oid;
    cp_audit_slot_t ba_slot;
} bc_audit_t;

static int bc_audit_fill(void *arg, const Tollgate__V1__LedgerEntry *entry, tg_store_cmp_t *cmps,
                         size_t *ncmp, tg_store_op_t *ops, size_t *nops, char *err, size_t errlen)
{
    bc_audit_t *ba = arg;
    cp_wr_t w;
    cp_wr_init(&w, ba->ba_a->ax_pool);
    cp_wr_audit(&w, "balance", ba->ba_oid, NULL, &entry->base);
    int code = cp_audit_fill(ba->ba_a, &w, &ba->ba_slot, &cmps[0], &ops[0], err, errlen);
    if (code != TG_RPC_CODE_OK)
        return code;
    *ncmp = 1;
    *nops = 2;
    return TG_RPC_CODE_OK;
}

static int balance_change(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply, int kind)
{
    const Tollgate__V1__BalanceChangeRequest *q = (const Tollgate__V1__BalanceChangeRequest *)reqm;
    char err[TG_ERRLEN] = "";
    bc_audit_t ba = {.ba_a = a, .ba_oid = cp_fmt(a, "%s/%s", q->account_id, q->bucket)};
    tg_cp_txn_extra_t extra = {.tx_fill = bc_audit_fill, .tx_arg = &ba};
    tg_buf_init(&ba.ba_slot.au_buf, TG_STORE_MAX_VALUE);
    cp_audit_lock();
    int code = tg_cp_balance_change(a->ax_cp, q, kind, &a->ax_actor, &extra, reply, err, sizeof err);
    cp_audit_unlock();
    tg_buf_free(&ba.ba_slot.au_buf);
    if (code != TG_RPC_CODE_OK) return cp_fail(a, code, "%s", err[0] ? err : "failed");
    return TG_RPC_CODE_OK;
}

static int topup(cp_actx_t *a, const ProtobufCMessage *req, tg_buf_t *reply)
{
    return balance_change(a, req, reply, TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_TOPUP);
}

static int adjust(cp_actx_t *a, const ProtobufCMessage *req, tg_buf_t *reply)
{
    return balance_change(a, req, reply, TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_ADJUSTMENT);
}

const cp_method_t tg_cp_misc_methods[] = {
    {"WhoAmI", &tollgate__v1__who_am_irequest__descriptor, CP_NEED_READ, "", whoami, NULL},
    {"ListAgents", &tollgate__v1__list_request__descriptor, CP_NEED_READ, "list agents",
     list_agents, NULL},
    {"RevokeAgent", &tollgate__v1__revoke_agent_request__descriptor, CP_NEED_ADMIN, "revoke agents",
     revoke_agent, NULL},
    {"QueryAudit", &tollgate__v1__audit_query__descriptor, CP_NEED_READ, "read the audit log",
     cp_query_audit, NULL},
    {"GetCheckpoint", &tollgate__v1__get_checkpoint_request__descriptor, CP_NEED_READ,
     "read checkpoints", get_checkpoint, NULL},
    {"TopUp", &tollgate__v1__balance_change_request__descriptor, CP_NEED_ADMIN, "top up balances",
     topup, NULL},
    {"Adjust", &tollgate__v1__balance_change_request__descriptor, CP_NEED_ADMIN,
     "adjust balances", adjust, NULL},
    {NULL, NULL, 0, NULL, NULL, NULL},
};

/* ---- the wrapper ----------------------------------------------------------------- */

typedef cp_binding_t binding_t;

/* One process serves one control plane: the bindings are static. */
static binding_t bindings[96];
static size_t nbindings;

int cp_stream_begin(tg_cp_t *cp, tg_rpc_call_t *call, const cp_method_t *m, cp_actx_t *a)
{
    const char *authz = tg_rpc_call_metadata(call, "authorization", NULL);
    const tg_cp_admin_token_t *t = &a->ax_token;
    int found;
    memset(a, 0, sizeof(*a));
    a->ax_cp = cp;
    a->ax_call = call;
    a->ax_pool = tg_rpc_call_pool(call);
    a->ax_method = m->m_name;
    atomic_fetch_add(&cp->cp_m_admin_calls, 1);
    found = tg_cp_auth_lookup(cp, authz, &a->ax_token);
    if (found == 2)
        return cp_fail(a, TG_RPC_CODE_UNAUTHENTICATED,
                       "no admin tokens are configured on this control plane (--admin-tokens)");
    if (found != 0)
        return cp_fail(a, TG_RPC_CODE_UNAUTHENTICATED,
                       "missing or unknown admin token: pass 'authorization: Bearer <token>'");
    if (t->at_role < m->m_need)
        return cp_fail(a, TG_RPC_CODE_PERMISSION_DENIED,
                       "permission denied: token role '%s' cannot %s", tg_cp_role_name(t->at_role),
                       m->m_action);
    tollgate__v1__actor__init(&a->ax_actor);
    a->ax_actor.token_name = (char *)t->at_name;
    a->ax_actor.role = (char *)tg_cp_role_name(t->at_role);
    a->ax_actor.peer = cp_fmt(a, "%s", tg_rpc_call_peer(call));
    return TG_RPC_CODE_OK;
}

static int unary_wrap(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, tg_buf_t *reply,
                      void *arg)
{
    binding_t *b = arg;
    cp_actx_t a;
    ProtobufCMessage *m = NULL;
    char err[TG_ERRLEN] = "";
    int code = cp_stream_begin(b->b_cp, call, b->b_m, &a);
    if (code != TG_RPC_CODE_OK) return code;
    if (tg_rpc_pb_unpack(b->b_m->m_req, req, req_len, &m, err, sizeof err) != 0)
        return cp_fail(&a, TG_RPC_CODE_INVALID_ARGUMENT, "request: %s", err);
    code = b->b_m->m_fn(&a, m, reply);
    tg_rpc_pb_free(m);
    if (code != TG_RPC_CODE_OK && tg_log_enabled(TG_LOG_DEBUG)) {
        const char *kv[] = {"method", b->b_m->m_name, "token", a.ax_token.at_name, "code",
                            tg_rpc_code_name(code), NULL};
        tg_log_kv(TG_LOG_DEBUG, "admin", kv, "admin call failed");
    }
    return code;
}

static int register_table(tg_cp_t *cp, const cp_method_t *t, char *err, size_t errlen)
{
    for (; t->m_name; t++) {
        char path[128];
        binding_t *b;
        int rc;
        if (nbindings == sizeof bindings / sizeof bindings[0])
            return tg_errf(err, errlen, TG_RPC_EINVAL, "too many admin methods");
        b = &bindings[nbindings++];
        b->b_cp = cp;
        b->b_m = t;
        snprintf(path, sizeof path, "/tollgate.v1.AdminService/%s", t->m_name);
        rc = t->m_stream ? tg_rpc_server_add_stream(cp->cp_rpc, path, t->m_stream, b, err, errlen)
                         : tg_rpc_server_add_unary(cp->cp_rpc, path, unary_wrap, b, err, errlen);
        if (rc != 0) return rc;
    }
    return 0;
}

int tg_cp_admin_register(tg_cp_t *cp, char *err, size_t errlen)
{
    int rc;
    nbindings = 0;
    if ((rc = register_table(cp, tg_cp_objects_methods, err, errlen)) != 0 ||
        (rc = register_table(cp, tg_cp_price_methods, err, errlen)) != 0 ||
        (rc = register_table(cp, tg_cp_ledger_methods, err, errlen)) != 0 ||
        (rc = register_table(cp, tg_cp_misc_methods, err, errlen)) != 0 ||
        (rc = register_table(cp, tg_cp_alert_methods, err, errlen)) != 0)
        return rc;
    return 0;
}
