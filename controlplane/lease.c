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
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/tg_log.h"
#include "billing/tg_billing.h"
#include "meter/tg_price.h"
#include "controlplane/agentside.h"
#include "tollgate/v1/agent.pb-c.h"

#define LEASE_ATTEMPTS 32

static const Tollgate__V1__BucketSpec *find_bucket(const Tollgate__V1__Account *a, const char *name)
{
    for (size_t i = 0; a != NULL && i < a->n_buckets; i++)
        if (strcmp(a->buckets[i]->name, name) == 0)
            return a->buckets[i];
    return NULL;
}

/* ---- scopes: key, project and account limit windows, runs -------------------------------- */

int cp_scope_of_limit(const char *kind, const char *obj, const char *account, const Tollgate__V1__SpendLimit *l,
                      int64_t t_us, int64_t tz_us, cp_scope_t *s)
{
    memset(s, 0, sizeof(*s));
    if (tg_billing_window((int)l->window, t_us, tz_us, &s->cs_start, &s->cs_end) != 0 ||
        tg_billing_scope(kind, obj, (int)l->window, t_us, tz_us, s->cs_id, sizeof(s->cs_id)) != 0)
        return -1;
    snprintf(s->cs_key, sizeof(s->cs_key), TG_CP_K_LIMIT "%s", s->cs_id);
    snprintf(s->cs_kind, sizeof(s->cs_kind), "%s", kind);
    snprintf(s->cs_obj, sizeof(s->cs_obj), "%s", obj);
    snprintf(s->cs_account, sizeof(s->cs_account), "%s", account);
    snprintf(s->cs_currency, sizeof(s->cs_currency), "%s", l->currency);
    s->cs_window = (int)l->window;
    s->cs_limit = l->limit_nano;
    s->cs_action = (int)l->action;
    return 0;
}

int cp_scope_of_run(const Tollgate__V1__RunBudget *b, cp_scope_t *s)
{
    memset(s, 0, sizeof(*s));
    if (b->max_spend_nano <= 0 || tg_billing_scope("run", b->run_id, 0, 0, 0, s->cs_id, sizeof(s->cs_id)) != 0)
        return -1; /* no cap: nothing to enforce */
    snprintf(s->cs_key, sizeof(s->cs_key), TG_CP_K_LIMIT "%s", s->cs_id);
    snprintf(s->cs_kind, sizeof(s->cs_kind), "run");
    snprintf(s->cs_obj, sizeof(s->cs_obj), "%s", b->run_id);
    snprintf(s->cs_account, sizeof(s->cs_account), "%s", b->account_id);
    snprintf(s->cs_currency, sizeof(s->cs_currency), "%s", b->currency);
    s->cs_end = INT64_MAX;
    s->cs_limit = b->max_spend_nano;
    return 0;
}

Tollgate__V1__Balance *cp_scope_state(const cp_scope_t *s, Tollgate__V1__Balance *b, Tollgate__V1__Balance *fresh)
{
    if (b == NULL) {
        tollgate__v1__balance__init(fresh);
        fresh->account_id = (char *)s->cs_account;
        fresh->bucket = (char *)s->cs_id;
        fresh->currency = (char *)s->cs_currency;
        fresh->balance_nano = s->cs_limit;
        fresh->credit_limit_nano = s->cs_limit;
        return fresh;
    }
    if (b->credit_limit_nano != s->cs_limit) {
        /* the operator changed the limit inside the window: what is left
         * moves by the difference, what was spent stays spent */
        b->balance_nano += s->cs_limit - b->credit_limit_nano;
        b->credit_limit_nano = s->cs_limit;
    }
    return b;
}

int64_t cp_account_tz(tg_cp_t *cp, const char *account_id)
{
    char key[TG_STORE_MAX_KEY];
    ProtobufCMessage *m = NULL;
    int64_t tz = 0;
    snprintf(key, sizeof(key), TG_CP_K_ACCOUNT "%s", account_id);
    if (tg_cp_get_pb(cp, key, &tollgate__v1__account__descriptor, &m, NULL, NULL, 0) == 0 && m != NULL &&
        tg_billing_tz(((Tollgate__V1__Account *)m)->time_zone, &tz) != 0)
        tz = 0;
    tg_rpc_pb_free(m);
    return tz;
}

int cp_limits_of(tg_cp_t *cp, const char *kind, const char *obj, ProtobufCMessage **m,
                 Tollgate__V1__SpendLimit ***lims, size_t *nl, const char **acct, char *err, size_t errlen)
{
    char key[TG_STORE_MAX_KEY];
    const ProtobufCMessageDescriptor *d;
    const char *prefix;
    *m = NULL;
    *lims = NULL;
    *nl = 0;
    *acct = NULL;
    if (strcmp(kind, "key") == 0) {
        prefix = TG_CP_K_KEY;
        d = &tollgate__v1__api_key__descriptor;
    } else if (strcmp(kind, "project") == 0) {
        prefix = TG_CP_K_PROJECT;
        d = &tollgate__v1__project__descriptor;
    } else if (strcmp(kind, "account") == 0) {
        prefix = TG_CP_K_ACCOUNT;
        d = &tollgate__v1__account__descriptor;
    } else {
        return 0;
    }
    snprintf(key, sizeof(key), "%s%s", prefix, obj);
    int rc = tg_cp_get_pb(cp, key, d, m, NULL, err, errlen);
    if (rc < 0 || *m == NULL)
        return rc < 0 ? rc : 0;
    if (d == &tollgate__v1__api_key__descriptor) {
        const Tollgate__V1__ApiKey *k = (const Tollgate__V1__ApiKey *)*m;
        *lims = k->spend_limits;
        *nl = k->n_spend_limits;
        *acct = k->account_id;
    } else if (d == &tollgate__v1__project__descriptor) {
        const Tollgate__V1__Project *p = (const Tollgate__V1__Project *)*m;
        *lims = p->spend_limits;
        *nl = p->n_spend_limits;
        *acct = p->account_id;
    } else {
        const Tollgate__V1__Account *a = (const Tollgate__V1__Account *)*m;
        *lims = a->spend_limits;
        *nl = a->n_spend_limits;
        *acct = a->id;
    }
    return 0;
}

/* A key's or project's rate window (key/<id>/rpm|tpm/<minute start>,
 * project/<id>/...): its requests or tokens per minute, for a minute near
 * now (an agent's clock may be a little off; a window far from now is
 * refused, so no one creates state for minutes that will never be used). */
static int resolve_rate(tg_cp_t *cp, const char *id, const char *account, int owner, const char *oid, int what,
                        int64_t start, cp_scope_t *s, char *err, size_t errlen)
{
    char key[TG_STORE_MAX_KEY];
    ProtobufCMessage *m = NULL;
    int64_t now = tg_cp_now_us();
    const char *name = what == TG_BILLING_RATE_TOKENS ? "tokens_per_minute" : "requests_per_minute";
    const char *kind = owner == TG_BILLING_RATE_PROJECT ? "project" : "key";
    if (strlen(oid) >= sizeof(s->cs_obj) || strlen(account) >= sizeof(s->cs_account))
        return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "scope: %s id or account_id too long", kind);
    if (start < now - 2 * TG_BILLING_RATE_WINDOW_US || start > now + TG_BILLING_RATE_WINDOW_US)
        return tg_errf(err, errlen, TG_RPC_CODE_FAILED_PRECONDITION,
                       "scope: the window of '%s' is not the current minute (check the agent's clock)", id);
    const Tollgate__V1__RateLimit *rl = NULL;
    if (owner == TG_BILLING_RATE_PROJECT) {
        snprintf(key, sizeof(key), TG_CP_K_PROJECT "%s", oid);
        if (tg_cp_get_pb(cp, key, &tollgate__v1__project__descriptor, &m, NULL, err, errlen) < 0)
            return TG_RPC_CODE_UNAVAILABLE;
        const Tollgate__V1__Project *p = (const Tollgate__V1__Project *)m;
        if (p != NULL && strcmp(p->account_id, account) == 0)
            rl = p->rate_limit;
    } else {
        snprintf(key, sizeof(key), TG_CP_K_KEY "%s", oid);
        if (tg_cp_get_pb(cp, key, &tollgate__v1__api_key__descriptor, &m, NULL, err, errlen) < 0)
            return TG_RPC_CODE_UNAVAILABLE;
        const Tollgate__V1__ApiKey *k = (const Tollgate__V1__ApiKey *)m;
        if (k != NULL && strcmp(k->account_id, account) == 0)
            rl = k->rate_limit;
    }
    int64_t limit = 0;
    if (rl != NULL)
        limit = what == TG_BILLING_RATE_TOKENS ? rl->tokens_per_minute : rl->requests_per_minute;
    int code = TG_RPC_CODE_OK;
    if (limit <= 0) {
        code = tg_errf(err, errlen, TG_RPC_CODE_NOT_FOUND, "scope: %s '%s' of account '%s' has no rate_limit.%s",
                       kind, oid, account, name);
    } else {
        snprintf(s->cs_id, sizeof(s->cs_id), "%s", id);
        snprintf(s->cs_key, sizeof(s->cs_key), TG_CP_K_LIMIT "%s", id);
        snprintf(s->cs_kind, sizeof(s->cs_kind), "%s", kind);
        snprintf(s->cs_obj, sizeof(s->cs_obj), "%.*s", (int)sizeof(s->cs_obj) - 1, oid);
        snprintf(s->cs_account, sizeof(s->cs_account), "%.*s", (int)sizeof(s->cs_account) - 1, account);
        s->cs_start = start;
        s->cs_end = start + TG_BILLING_RATE_WINDOW_US;
        s->cs_limit = limit;
        s->cs_rate = 1;
    }
    tg_rpc_pb_free(m);
    return code;
}

int cp_scope_resolve(tg_cp_t *cp, const char *id, const char *account, cp_scope_t *s, char *err, size_t errlen)
{
    char kind[16], obj[160], win[16], key[TG_STORE_MAX_KEY];
    long long start = 0;
    ProtobufCMessage *m = NULL;
    int code = TG_RPC_CODE_OK;
    int n = 0, what = 0, owner = 0;
    int64_t rstart = 0;
    memset(s, 0, sizeof(*s));
    if (tg_billing_rate_parse(id, &owner, obj, sizeof(obj), &what, &rstart) == 0)
        return resolve_rate(cp, id, account, owner, obj, what, rstart, s, err, errlen);
    if (strncmp(id, "run/", 4) == 0) {
        if (strlen(id + 4) == 0 || strlen(id + 4) >= sizeof(obj))
            return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "scope: '%s' is not a run scope", id);
        snprintf(key, sizeof(key), TG_CP_K_RUN "%s", id + 4);
        if (tg_cp_get_pb(cp, key, &tollgate__v1__run_budget__descriptor, &m, NULL, err, errlen) < 0)
            return TG_RPC_CODE_UNAVAILABLE;
        const Tollgate__V1__RunBudget *b = (const Tollgate__V1__RunBudget *)m;
        if (b == NULL || strcmp(b->account_id, account) != 0 || cp_scope_of_run(b, s) != 0)
            code = tg_errf(err, errlen, TG_RPC_CODE_NOT_FOUND, "scope: no run budget '%s' of account '%s'", id + 4,
                           account);
        tg_rpc_pb_free(m);
        return code;
    }
    if (sscanf(id, "%15[a-z]/%159[^/]/%15[a-z]/%lld%n", kind, obj, win, &start, &n) != 4 || id[n] != '\0' ||
        (strcmp(kind, "key") != 0 && strcmp(kind, "project") != 0 && strcmp(kind, "account") != 0))
        return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT,
                       "scope: '%s' is not key/<id>/<window>/<start>, project/..., account/... or run/<id>", id);
    Tollgate__V1__SpendLimit **lims = NULL;
    size_t nl = 0;
    const char *acct = NULL;
    if (cp_limits_of(cp, kind, obj, &m, &lims, &nl, &acct, err, errlen) < 0)
        return TG_RPC_CODE_UNAVAILABLE;
    code = tg_errf(err, errlen, TG_RPC_CODE_NOT_FOUND, "scope: %s '%s' of account '%s' has no %s limit", kind, obj,
                   account, win);
    for (size_t i = 0; acct != NULL && strcmp(acct, account) == 0 && i < nl; i++) {
        const char *wn = tg_billing_window_name((int)lims[i]->window);
        if (wn == NULL || strcmp(wn, win) != 0)
            continue;
        if (cp_scope_of_limit(kind, obj, acct, lims[i], (int64_t)start, cp_account_tz(cp, acct), s) != 0 ||
            s->cs_start != (int64_t)start) {
            err[0] = '\0';
            code = tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "scope: %lld does not start a %s window", start,
                           win);
            break;
        }
        err[0] = '\0';
        code = TG_RPC_CODE_OK;
        break;
    }
    tg_rpc_pb_free(m);
    return code;
}

int cp_key_pause(tg_cp_t *cp, const char *key_id, const char *reason, const char *why)
{
    char key[TG_STORE_MAX_KEY], err[TG_ERRLEN] = "";
    int result = -1;
    tg_buf_t packed;
    tg_buf_init(&packed, TG_STORE_MAX_VALUE);
    snprintf(key, sizeof(key), TG_CP_K_KEY "%s", key_id);
    for (int attempt = 0; attempt < LEASE_ATTEMPTS; attempt++) {
        ProtobufCMessage *m = NULL;
        int64_t modrev = 0;
        err[0] = '\0';
        if (tg_cp_get_pb(cp, key, &tollgate__v1__api_key__descriptor, &m, &modrev, err, sizeof(err)) < 0)
            break;
        if (m == NULL) {
            result = 0; /* deleted meanwhile: nothing to pause */
            break;
        }
        Tollgate__V1__ApiKey *k = (Tollgate__V1__ApiKey *)m;
        if (k->status == TOLLGATE__V1__KEY_STATUS__KEY_STATUS_PAUSED ||
            k->status == TOLLGATE__V1__KEY_STATUS__KEY_STATUS_REVOKED) {
            tg_rpc_pb_free(m);
            result = 0;
            break;
        }
        char *old_reason = k->status_reason;
        k->status = TOLLGATE__V1__KEY_STATUS__KEY_STATUS_PAUSED;
        k->status_reason = (char *)reason;
        k->updated_at_us = tg_cp_now_us();
        tg_buf_reset(&packed);
        int prc = tg_rpc_pb_pack(&k->base, &packed, err, sizeof(err));
        k->status_reason = old_reason;
        tg_rpc_pb_free(m);
        if (prc < 0)
            break;
        int rc = tg_cp_put_if(cp, key, modrev, packed.b_data, packed.b_len, err, sizeof(err));
        int ok = rc == 1;
        if (ok) {
            TG_LOG(TG_LOG_WARN, "cp.pause", "key %s paused: %s (%s)", key_id, reason, why);
            result = 1;
            break;
        }
        if (rc < 0 && rc != TG_STORE_EUNKNOWN)
            break;
    }
    if (result < 0)
        TG_LOG(TG_LOG_ERROR, "cp.pause", "key %s: pausing it (%s) failed: %s", key_id, why,
               err[0] ? err : "contention");
    tg_buf_free(&packed);
    return result;
}

void cp_scope_pause_key(tg_cp_t *cp, const cp_scope_t *s)
{
    char lim[32], reason[256];
    tg_price_format(s->cs_limit, lim, sizeof(lim));
    snprintf(reason, sizeof(reason), "its %s spend limit of %s %s was reached", tg_billing_window_name(s->cs_window),
             lim, s->cs_currency);
    cp_key_pause(cp, s->cs_obj, reason, "LIMIT_ACTION_PAUSE_KEY");
}

/* ---- retention of ended windows --------------------------------------------------- */

#define LIMIT_GRACE_US (86400LL * 1000000) /* a window's state is kept a day after it ends */
#define RATE_GRACE_US (300LL * 1000000)    /* a rate window's, five minutes */
#define GC_PAGE 1000                       /* limit states read per store range */

/* Whether the state of limit scope `id` is past keeping at now. */
static int gc_due(const char *id, int64_t now)
{
    char kind[16], obj[160], win[16];
    long long start = 0;
    int n = 0, w = 0, what;
    int64_t rstart;
    /* a rate window: of no use once its minute is over */
    if (tg_billing_rate_parse(id, NULL, obj, sizeof(obj), &what, &rstart) == 0)
        return rstart + TG_BILLING_RATE_WINDOW_US < now - RATE_GRACE_US;
    if (sscanf(id, "%15[a-z]/%159[^/]/%15[a-z]/%lld%n", kind, obj, win, &start, &n) != 4 || id[n] != '\0')
        return 0; /* runs: kept while their budget is configured */
    for (int k = 1; k <= 4; k++)
        if (tg_billing_window_name(k) && strcmp(tg_billing_window_name(k), win) == 0)
            w = k;
    /* the window ended a month after its start at the latest, whatever
     * the account's zone */
    return w != 0 && w != TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_TOTAL &&
           (int64_t)start + 32 * 86400LL * 1000000 < now - LIMIT_GRACE_US;
}

int cp_lease_gc(tg_cp_t *cp, size_t max_states, char *err, size_t errlen)
{
    uint8_t end[64];
    size_t endlen = tg_store_prefix_end(TG_CP_K_LIMIT, strlen(TG_CP_K_LIMIT), end);
    size_t plen = strlen(TG_CP_K_LIMIT), nread = 0;
    int64_t now = tg_cp_now_us();
    int deleted = 0;
    if (cp->cp_gc_from_len == 0) {
        memcpy(cp->cp_gc_from, TG_CP_K_LIMIT, plen);
        cp->cp_gc_from_len = plen;
    }
    /* pages from the resume cursor (a busy key makes two rate windows a
     * minute, more than one pass can read); the cursor is the key after the
     * last one read, so deleting what was read does not move it */
    while (nread < max_states) {
        tg_store_range_res_t res;
        size_t lim = max_states - nread < GC_PAGE ? max_states - nread : GC_PAGE;
        tg_store_range_req_t rq = {.rq_key = cp->cp_gc_from, .rq_key_len = cp->cp_gc_from_len, .rq_end = end,
                                   .rq_end_len = endlen, .rq_limit = (int64_t)lim, .rq_keys_only = 1};
        if (tg_store_range(cp->cp_store, &rq, &res, err, errlen) < 0)
            return deleted > 0 ? deleted : -1;
        nread += res.rs_n;
        for (size_t i = 0; i < res.rs_n; i++) {
            char id[TG_STORE_MAX_KEY];
            size_t kl = res.rs_kvs[i].kv_key_len - plen;
            if (kl >= sizeof(id))
                continue;
            memcpy(id, (const char *)res.rs_kvs[i].kv_key + plen, kl);
            id[kl] = '\0';
            if (!gc_due(id, now))
                continue;
            tg_store_op_t op = {.op_type = TG_STORE_OP_DELETE, .op_key = res.rs_kvs[i].kv_key,
                                .op_key_len = res.rs_kvs[i].kv_key_len};
            if (tg_store_txn(cp->cp_store, NULL, 0, &op, 1, NULL, 0, NULL, err, errlen) == 0)
                deleted++;
        }
        int more = res.rs_more && tg_store_range_next(&res, cp->cp_gc_from, &cp->cp_gc_from_len) == 0;
        tg_store_range_res_free(&res);
        if (!more) { /* the end of the prefix: the next pass starts over */
            cp->cp_gc_from_len = 0;
            break;
        }
    }
    return deleted;
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

/* Grants or renews one agent's hold on (account, bucket), or on q->scope.
 * Returns a TG_RPC_CODE_* with err set unless OK. */
static int grant(tg_cp_t *cp, const char *agent_id, const Tollgate__V1__LeaseRequest *q,
                 Tollgate__V1__LeaseResponse *resp, char *currency, size_t curlen, char *lease_id,
                 size_t idlen, char *err, size_t errlen)
{
    char key[TG_STORE_MAX_KEY];
    ProtobufCMessage *am = NULL, *bm = NULL;
    Tollgate__V1__BalanceHold **holds = NULL, mine_new;
    tg_buf_t packed;
    int code = TG_RPC_CODE_OK;
    cp_scope_t sc, *scope = NULL;
    const Tollgate__V1__Account *a = NULL;
    const Tollgate__V1__BucketSpec *bs = NULL;
    tg_buf_init(&packed, TG_STORE_MAX_VALUE);

    if (q->scope[0] != '\0') {
        if ((code = cp_scope_resolve(cp, q->scope, q->account_id, &sc, err, errlen)) != TG_RPC_CODE_OK)
            goto done;
        scope = &sc;
        snprintf(currency, curlen, "%s", sc.cs_currency);
        snprintf(lease_id, idlen, "%s/%s", sc.cs_id, agent_id);
        snprintf(key, sizeof(key), "%s", sc.cs_key);
        goto loop;
    }
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
    a = (const Tollgate__V1__Account *)am;
    bs = find_bucket(a, q->bucket);
    if (bs == NULL) {
        code = tg_errf(err, errlen, TG_RPC_CODE_NOT_FOUND, "bucket: account '%s' has no bucket '%s'", a->id,
                       q->bucket);
        goto done;
    }
    snprintf(currency, curlen, "%s", bs->currency);
    snprintf(lease_id, idlen, "%s/%s/%s", a->id, bs->name, agent_id);
    snprintf(key, sizeof(key), TG_CP_K_BALANCE "%s/%s", a->id, bs->name);
loop:
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
        if (scope != NULL) {
            b = cp_scope_state(scope, (Tollgate__V1__Balance *)bm, &fresh);
        } else if (bm != NULL) {
            b = (Tollgate__V1__Balance *)bm;
        } else {
            fresh.account_id = a->id;
            fresh.bucket = bs->name;
            fresh.currency = bs->currency;
            fresh.credit_limit_nano = bs->credit_limit_nano;
            b = &fresh;
        }
        int64_t floor = scope != NULL ? 0 : cp_lease_floor(a, b);
        /* the live holds of the others; this agent's own, if live */
        Tollgate__V1__BalanceHold *mine = NULL;
        int64_t others = 0, used_before = 0;
        size_t nothers = 0, keep = 0;
        holds = tg_calloc(b->n_holds + 1, sizeof(*holds));
        if (holds == NULL) {
            code = tg_errf(err, errlen, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory for the lease");
            goto done;
        }
        for (size_t i = 0; i < b->n_holds; i++) {
            Tollgate__V1__BalanceHold *h = b->holds[i];
            int live = h->expires_at_us > now;
            int rate = scope != NULL && scope->cs_rate;
            if (strcmp(h->agent_id, agent_id) == 0) {
                if (live)
                    mine = h;
                if (rate)
                    used_before = h->used_nano; /* a restarted agent's admissions of this minute */
                continue;
            }
            if (!live && rate && h->used_nano > 0) {
                /* nothing settles a rate window: what a lapsed agent
                 * admitted stays counted until the window ends */
                others += h->used_nano;
                holds[keep++] = h;
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
        /* what is left for this agent's free part once the others' holds
         * and what it owes are counted: the part it keeps is capped by it
         * (a lowered limit or a negative adjustment reaches the agents'
         * slices at their next request), and the grant comes from the rest */
        int64_t owed = q->unsettled_nano;
        if (owed < used_before && restarted)
            owed = used_before;
        int64_t left = b->balance_nano - floor - others - owed;
        int64_t kept = restarted ? 0 : q->keep_nano;
        if (kept > left)
            kept = left > 0 ? left : 0;
        int64_t base = owed + kept;
        int64_t room = left - kept;
        /* the waiting request needs only what its free part lacks */
        int64_t need = q->need_nano > kept ? q->need_nano - kept : 0;
        int64_t g = shape_grant(q->requested_nano, need, room, nothers);
        mine_new = (Tollgate__V1__BalanceHold)TOLLGATE__V1__BALANCE_HOLD__INIT;
        mine_new.agent_id = (char *)agent_id;
        mine_new.hold_nano = base + g;
        mine_new.expires_at_us = now + (int64_t)cp->cp_lease_ttl_ms * 1000;
        mine_new.granted_at_us = now;
        mine_new.spend_rate_nano_per_s = q->spend_rate_nano_per_s;
        if (scope != NULL && scope->cs_rate)
            mine_new.used_nano = owed;
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
        int rc = tg_cp_put_if(cp, key, modrev, packed.b_data, packed.b_len, err, errlen);
        int ok = rc == 1;
        if (rc < 0 && rc != TG_STORE_EUNKNOWN) {
            code = tg_cp_store_code(rc);
            goto done;
        }
        if (ok) {
            /* a waiting request that what is left of the limit cannot cover
             * even if no other agent held any of it: the limit is reached,
             * and with the pause-key action the key pauses */
            int64_t unheld = b->balance_nano - floor - owed;
            if (scope != NULL && scope->cs_action == TOLLGATE__V1__LIMIT_ACTION__LIMIT_ACTION_PAUSE_KEY &&
                strcmp(scope->cs_kind, "key") == 0 && q->need_nano > 0 && unheld < q->need_nano)
                cp_scope_pause_key(cp, scope);
            resp->granted_nano = g;
            resp->free_nano = kept + g;
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
         * second application of the same request grants the same hold);
         * a short, growing, jittered pause lets the other writer through */
        if (attempt + 1 >= LEASE_ATTEMPTS) {
            code = tg_errf(err, errlen, TG_RPC_CODE_ABORTED, "%s: too much contention, retry", key);
            goto done;
        }
        err[0] = '\0';
        usleep((useconds_t)(200 * (attempt + 1) + (tg_cp_now_us() & 511)));
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
    if (q->scope[0] == '\0' && (q->bucket[0] == '\0' || strlen(q->bucket) > 100))
        return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "bucket: required (or a scope), at most 100 bytes");
    if (strlen(q->scope) >= sizeof(((cp_scope_t *)0)->cs_id))
        return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "scope: too long");
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
    /* the agent's next proof needs no Challenge round trip */
    uint8_t nonce[CP_NONCE_LEN];
    if (cp->cp_agent != NULL && cp_nonce_issue(cp->cp_agent, q->proof->agent_id, tg_cp_now_us(), nonce, NULL) == 0) {
        resp.next_nonce.data = nonce;
        resp.next_nonce.len = sizeof(nonce);
    }
    if (tg_rpc_pb_pack(&resp.base, reply, err, errlen) < 0)
        return TG_RPC_CODE_INTERNAL;
    return TG_RPC_CODE_OK;
}
