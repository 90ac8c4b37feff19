/* lease.c: spend leases (AgentService.Lease) and the rule that keeps them
 * inside a budget.
 *
 * A lease is one agent's hold on one account bucket: budget set aside for
 * the agent to spend locally (reservations in flight, spend not yet
 * settled, and a free part), so a request never waits on this process.
 * The holds live inside the bucket's Balance (Balance.holds), which gives
 * one invariant on one store value, on LMDB and on etcd alike:
 *
 *     sum of live holds <= balance - floor          (floor: 0 prepaid,
 *                                                    -credit_limit postpaid)
 *
 * at every grant, because a grant is a compare-and-swap on the Balance's
 * mod revision. Settlement (settle.c) debits a record's cost from the
 * balance and takes the same amount out of the reporting agent's hold in
 * the same transaction, so the invariant survives settlement too: spend is
 * counted once, either as hold (not yet settled) or as debit (settled).
 * Any replica grants: the store serializes the grant against the leader's
 * settlement, and a restarted or new leader reads the holds where they are.
 *
 * A hold expires (TG_CP lease TTL after its last grant or renewal) and then
 * counts as zero: a killed agent's budget returns. What can overspend and
 * by how much is in docs/SPEND.md.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/tg_log.h"
#include "controlplane/agentside.h"
#include "tollgate/v1/agent.pb-c.h"

#define LEASE_ATTEMPTS 16

static const Tollgate__V1__BucketSpec *find_bucket(const Tollgate__V1__Account *a, const char *name)
{
    for (size_t i = 0; a != NULL && i < a->n_buckets; i++)
        if (strcmp(a->buckets[i]->name, name) == 0)
            return a->buckets[i];
    return NULL;
}

int64_t cp_lease_floor(const Tollgate__V1__Account *a, const Tollgate__V1__Balance *b)
{
    if (a == NULL || a->billing_mode != TOLLGATE__V1__BILLING_MODE__BILLING_MODE_POSTPAID)
        return 0;
    return b != NULL && b->credit_limit_nano > 0 ? -b->credit_limit_nano : 0;
}

int64_t cp_lease_reserved(const Tollgate__V1__Balance *b, int64_t now_us)
{
    int64_t sum = 0;
    for (size_t i = 0; b != NULL && i < b->n_holds; i++)
        if (b->holds[i]->expires_at_us > now_us && b->holds[i]->hold_nano > 0)
            sum += b->holds[i]->hold_nano;
    return sum;
}

void cp_lease_consume(Tollgate__V1__Balance *b, const char *agent_id, int64_t cost, int64_t now_us)
{
    if (cost <= 0)
        return;
    for (size_t i = 0; i < b->n_holds; i++) {
        Tollgate__V1__BalanceHold *h = b->holds[i];
        if (strcmp(h->agent_id, agent_id) != 0)
            continue;
        h->hold_nano = h->hold_nano > cost ? h->hold_nano - cost : 0;
        break;
    }
    b->reserved_nano = cp_lease_reserved(b, now_us);
}

/* The grant for one request, from the room left (budget less every other
 * live hold less this agent's base). A scope with plenty of room grants
 * what was asked; a tight one at most half the room shared among the
 * holders, but never less than the request waiting now when it fits, so a
 * small budget is still usable from many agents and is not stranded in
 * one. */
static int64_t shape_grant(int64_t want, int64_t need, int64_t room, size_t others)
{
    if (want <= 0 || room <= 0)
        return 0;
    if (need > want)
        want = need;
    int64_t share = room / 2 / (int64_t)(others + 1);
    int64_t g = want < share ? want : share;
    if (g < need)
        g = need <= room ? need : 0;
    if (g == 0 && need <= 0)
        g = want < room ? want : room;
    return g > room ? room : g;
}

/* Grants or renews one agent's hold on (account, bucket). Returns a
 * TG_RPC_CODE_* with err set unless OK. */
static int grant(tg_cp_t *cp, const char *agent_id, const Tollgate__V1__LeaseRequest *q,
                 Tollgate__V1__LeaseResponse *resp, char *currency, size_t curlen, char *lease_id,
                 size_t idlen, char *err, size_t errlen)
{
    char key[TG_STORE_MAX_KEY];
    ProtobufCMessage *am = NULL, *bm = NULL;
    Tollgate__V1__BalanceHold **holds = NULL, mine_new;
    tg_buf_t packed;
    int code = TG_RPC_CODE_OK;
    tg_buf_init(&packed, TG_STORE_MAX_VALUE);

    snprintf(key, sizeof(key), TG_CP_K_ACCOUNT "%s", q->account_id);
    if (tg_cp_get_pb(cp, key, &tollgate__v1__account__descriptor, &am, NULL, err, errlen) < 0) {
        code = TG_RPC_CODE_UNAVAILABLE;
        goto done;
    }
    if (am == NULL) {
        code = tg_errf(err, errlen, TG_RPC_CODE_NOT_FOUND, "account_id: account '%s' not found",
                       q->account_id);
        goto done;
    }
    const Tollgate__V1__Account *a = (const Tollgate__V1__Account *)am;
    const Tollgate__V1__BucketSpec *bs = find_bucket(a, q->bucket);
    if (bs == NULL) {
        code = tg_errf(err, errlen, TG_RPC_CODE_NOT_FOUND, "bucket: account '%s' has no bucket '%s'", a->id,
                       q->bucket);
        goto done;
    }
    snprintf(currency, curlen, "%s", bs->currency);
    snprintf(lease_id, idlen, "%s/%s/%s", a->id, bs->name, agent_id);
    snprintf(key, sizeof(key), TG_CP_K_BALANCE "%s/%s", a->id, bs->name);
    for (int attempt = 0;; attempt++) {
        int64_t modrev = 0, now = tg_cp_now_us();
        Tollgate__V1__Balance fresh = TOLLGATE__V1__BALANCE__INIT, *b;
        tg_rpc_pb_free(bm);
        bm = NULL;
        tg_free(holds);
        holds = NULL;
        if (tg_cp_get_pb(cp, key, &tollgate__v1__balance__descriptor, &bm, &modrev, err, errlen) < 0) {
            code = TG_RPC_CODE_UNAVAILABLE;
            goto done;
        }
        if (bm != NULL) {
            b = (Tollgate__V1__Balance *)bm;
        } else {
            fresh.account_id = a->id;
            fresh.bucket = bs->name;
            fresh.currency = bs->currency;
            fresh.credit_limit_nano = bs->credit_limit_nano;
            b = &fresh;
        }
        int64_t floor = cp_lease_floor(a, b);
        /* the live holds of the others; this agent's own, if live */
        Tollgate__V1__BalanceHold *mine = NULL;
        int64_t others = 0;
        size_t nothers = 0, keep = 0;
        holds = tg_calloc(b->n_holds + 1, sizeof(*holds));
        if (holds == NULL) {
            code = tg_errf(err, errlen, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory for the lease");
            goto done;
        }
        for (size_t i = 0; i < b->n_holds; i++) {
            Tollgate__V1__BalanceHold *h = b->holds[i];
            int live = h->expires_at_us > now;
            if (strcmp(h->agent_id, agent_id) == 0) {
                if (live)
                    mine = h;
                continue;
            }
            if (!live)
                continue; /* expired: its budget is back, the entry goes */
            others += h->hold_nano > 0 ? h->hold_nano : 0;
            nothers++;
            holds[keep++] = h;
        }
        /* The hold is what the agent owes (unsettled spend, requests in
         * flight) plus the free part it keeps, plus the grant; after a
         * restart or a lapse nothing free is kept. Owed is taken whatever
         * the room: that spend happened or is under way. (A record settled
         * but not yet acknowledged is owed here once more until the agent's
         * next request: conservative, and corrected by it.) */
        int restarted = q->reset || mine == NULL;
        int64_t base = q->unsettled_nano + (restarted ? 0 : q->keep_nano);
        int64_t room = b->balance_nano - floor - others - base;
        int64_t g = shape_grant(q->requested_nano, q->need_nano, room, nothers);
        mine_new = (Tollgate__V1__BalanceHold)TOLLGATE__V1__BALANCE_HOLD__INIT;
        mine_new.agent_id = (char *)agent_id;
        mine_new.hold_nano = base + g;
        mine_new.expires_at_us = now + (int64_t)cp->cp_lease_ttl_ms * 1000;
        mine_new.granted_at_us = now;
        mine_new.spend_rate_nano_per_s = q->spend_rate_nano_per_s;
        holds[keep++] = &mine_new;
        Tollgate__V1__BalanceHold **old = b->holds;
        size_t nold = b->n_holds;
        b->holds = holds;
        b->n_holds = keep;
        b->reserved_nano = others + mine_new.hold_nano;
        b->updated_at_us = now;
        tg_buf_reset(&packed);
        int prc = tg_rpc_pb_pack(&b->base, &packed, err, errlen);
        b->holds = old; /* the unpacked message frees its own */
        b->n_holds = nold;
        if (prc < 0) {
            code = TG_RPC_CODE_INTERNAL;
            goto done;
        }
        tg_store_cmp_t cmp = {.c_key = key, .c_key_len = strlen(key), .c_target = TG_STORE_CMP_MOD_REV,
                              .c_op = TG_STORE_EQ, .c_num = modrev};
        tg_store_op_t op = {.op_type = TG_STORE_OP_PUT, .op_key = key, .op_key_len = strlen(key),
                            .op_val = packed.b_data, .op_val_len = packed.b_len};
        tg_store_txn_res_t tres;
        memset(&tres, 0, sizeof(tres));
        int rc = tg_store_txn(cp->cp_store, &cmp, 1, &op, 1, NULL, 0, &tres, err, errlen);
        int ok = rc == 0 && tres.tx_succeeded;
        tg_store_txn_res_free(&tres);
        if (rc < 0 && rc != TG_STORE_EUNKNOWN) {
            code = tg_cp_store_code(rc);
            goto done;
        }
        if (ok) {
            resp->granted_nano = g;
            resp->hold_nano = mine_new.hold_nano;
            resp->expires_at_us = mine_new.expires_at_us;
            resp->available_nano = room - g;
            resp->balance_nano = b->balance_nano;
            resp->floor_nano = floor;
            resp->restarted = restarted;
            TG_LOG(TG_LOG_DEBUG, "cp.lease",
                   "lease %s: hold %" PRId64 " (granted %" PRId64 " of %" PRId64 ", kept %" PRId64
                   ", owed %" PRId64 "), %" PRId64 " left",
                   lease_id, mine_new.hold_nano, g, q->requested_nano, q->keep_nano, q->unsettled_nano,
                   room - g);
            break;
        }
        /* a settlement, top-up or another grant moved the balance (or the
         * answer was lost: the next read shows whether it applied, and a
         * second application of the same request grants the same hold) */
        if (attempt + 1 >= LEASE_ATTEMPTS) {
            code = tg_errf(err, errlen, TG_RPC_CODE_ABORTED, "bucket %s/%s: too much contention, retry",
                           a->id, bs->name);
            goto done;
        }
        err[0] = '\0';
    }
done:
    tg_free(holds);
    tg_rpc_pb_free(bm);
    tg_rpc_pb_free(am);
    tg_buf_free(&packed);
    return code;
}

int cp_lease(tg_cp_t *cp, const Tollgate__V1__LeaseRequest *q, tg_buf_t *reply, char *err, size_t errlen)
{
    char currency[64] = "", lease_id[TG_STORE_MAX_KEY] = "";
    Tollgate__V1__LeaseResponse resp = TOLLGATE__V1__LEASE_RESPONSE__INIT;
    if (q->account_id[0] == '\0' || strlen(q->account_id) > 200)
        return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "account_id: required, at most 200 bytes");
    if (q->bucket[0] == '\0' || strlen(q->bucket) > 100)
        return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "bucket: required, at most 100 bytes");
    if (q->requested_nano < 0 || q->keep_nano < 0 || q->need_nano < 0 || q->unsettled_nano < 0 ||
        q->spend_rate_nano_per_s < 0)
        return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                       "requested_nano, keep_nano, need_nano, unsettled_nano, spend_rate_nano_per_s: must be >= 0");
    if (q->unsettled_nano > INT64_MAX / 4 || q->keep_nano > INT64_MAX / 4 || q->requested_nano > INT64_MAX / 4)
        return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "unsettled_nano, keep_nano, requested_nano: too large");
    int code = grant(cp, q->proof->agent_id, q, &resp, currency, sizeof(currency), lease_id, sizeof(lease_id), err,
                     errlen);
    if (code != TG_RPC_CODE_OK)
        return code;
    resp.lease_id = lease_id;
    resp.currency = currency;
    if (tg_rpc_pb_pack(&resp.base, reply, err, errlen) < 0)
        return TG_RPC_CODE_INTERNAL;
    return TG_RPC_CODE_OK;
}
