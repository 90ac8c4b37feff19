/* alerts.c: the alert engine and webhook delivery, on the leader.
 *
 * Alert rules (api/tollgate/v1/alert.proto, written by admin_objects.c) are
 * evaluated from settled usage, never on a request's path:
 *   - settlement (settle.c run_group) hands each committed group's records
 *     to cp_alerts_note after the commit: a copy of a few fields into a
 *     queue, no store access, nothing at all while no rule is enabled;
 *   - the engine thread wakes on that (at most 10 passes a second, and once
 *     a second anyway), moves the records a rule could match into a ring of
 *     recent events (velocity and rates are sums over it), and evaluates
 *     every enabled rule: spend thresholds from the limit states under
 *     TG_CP_K_LIMIT (only for rules whose object the new records touched,
 *     and every 10 s for all), the others from the ring;
 *   - an alert is raised by one store transaction: the alert under
 *     TG_CP_K_ALERT, the next alert sequence, a "fired" marker that makes it
 *     once per threshold and window (or per velocity period, or per record),
 *     one delivery entry per webhook under TG_CP_K_ALERT_OUT, and its audit
 *     event. A pause_key rule pauses the key (cp_key_pause) before that, so
 *     the alert says what was done;
 *   - the delivery thread POSTs pending deliveries, signed (Stripe's
 *     scheme), retries with backoff, marks the webhook's status on the rule,
 *     and never touches settlement.
 * Only the leader evaluates and delivers (cp_is_leader); a new leader picks
 * up the deliveries left in the store. The ring is memory: velocity and
 * rate windows restart empty on a new leader (docs/SPEND.md, Alerts). */
#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/tg_log.h"
#include "billing/tg_billing.h"
#include "meter/tg_price.h"
#include "controlplane/admin_int.h"
#include "controlplane/agentside.h"
#include "pbjson/tg_pbjson.h"

#define RING_CAP 16384         /* recent events kept for velocity and rates */
#define PENDING_CAP 65536      /* records queued by settlement between passes */
#define MAX_ATT 4              /* attempts of a record kept for channel error rates */
#define PASS_MIN_MS 100        /* at most 10 passes a second */
#define THRESHOLD_SWEEP_US (10LL * 1000000) /* every threshold rule re-read this often */
#define DELIVER_EVERY_MS 200
#define DELIVER_BATCH 64
#define DELIVER_MAX_ATTEMPTS 8 /* 0.5+1+2+...+32 s: about a minute of retries */
#define DELIVER_TIMEOUT_MS 5000

/* ---- events: what the engine keeps of a settled record --------------------------- */

/* An error class that says something failed: agents write NONE (not 0)
 * for a success, on the record and on each attempt. */
static int class_failed(int c)
{
    return c != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_UNSPECIFIED && c != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE;
}

typedef struct ev {
    int64_t e_at;
    char e_key[64], e_project[64], e_account[64], e_run[136], e_channel[64];
    char e_record[128];
    int64_t e_tokens, e_cost;
    uint8_t e_failed, e_fallback, e_natt;
    char e_att_ch[MAX_ATT][64];
    uint8_t e_att_failed[MAX_ATT];
} ev_t;

typedef struct cp_alerts {
    tg_cp_t *al_cp;
    pthread_mutex_t al_mu;     /* guards al_pending, al_npending, al_stop, al_dropped */
    pthread_cond_t al_cv;
    ev_t *al_pending;          /* (mu) queued by cp_alerts_note */
    size_t al_npending;
    uint64_t al_dropped;       /* (mu) records not queued: the queue was full */
    int al_stop;               /* (mu) */
    atomic_int al_nrules;      /* enabled rules at the last pass: 0 makes notes free */
    ev_t *al_ring;             /* (engine thread) */
    size_t al_ring_head, al_ring_n;
    int64_t al_last_sweep;     /* (engine thread) */
    pthread_t al_eval_thr, al_deliver_thr;
    int al_eval_started, al_deliver_started;
} cp_alerts_t;

static void copy_id(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

void cp_alerts_note(tg_cp_agent_side_t *as, const Tollgate__V1__UsageRecord *const *recs, const int *dup,
                    size_t n)
{
    cp_alerts_t *al = as->as_alerts;
    int64_t now = tg_cp_now_us();
    if (al == NULL || atomic_load(&al->al_nrules) == 0 || n == 0)
        return;
    pthread_mutex_lock(&al->al_mu);
    for (size_t i = 0; i < n; i++) {
        const Tollgate__V1__UsageRecord *r = recs[i];
        if (dup != NULL && dup[i])
            continue;
        if (al->al_npending >= PENDING_CAP) {
            al->al_dropped++;
            continue;
        }
        ev_t *e = &al->al_pending[al->al_npending++];
        memset(e, 0, sizeof(*e));
        e->e_at = now;
        copy_id(e->e_key, sizeof(e->e_key), r->key_id);
        copy_id(e->e_project, sizeof(e->e_project), r->project_id);
        copy_id(e->e_account, sizeof(e->e_account), r->account_id);
        copy_id(e->e_run, sizeof(e->e_run), r->run_id);
        copy_id(e->e_channel, sizeof(e->e_channel), r->channel_id);
        copy_id(e->e_record, sizeof(e->e_record), r->record_id);
        if (r->usage != NULL)
            e->e_tokens = r->usage->input_tokens + r->usage->output_tokens + r->usage->cache_read_tokens +
                          r->usage->cache_write_tokens;
        e->e_cost = r->cost_nano;
        e->e_failed = class_failed((int)r->error_class) || r->client_status >= 400;
        e->e_fallback = r->fallback_used;
        for (size_t k = 0; k < r->n_attempts && e->e_natt < MAX_ATT; k++) {
            copy_id(e->e_att_ch[e->e_natt], sizeof(e->e_att_ch[0]), r->attempts[k]->channel_id);
            e->e_att_failed[e->e_natt++] = class_failed((int)r->attempts[k]->error_class) ||
                                           r->attempts[k]->http_status >= 400 ||
                                           r->attempts[k]->http_status == 0;
        }
    }
    pthread_cond_signal(&al->al_cv);
    pthread_mutex_unlock(&al->al_mu);
}

/* Does event e belong to rule r's scope? (A channel scope matches the
 * serving channel or any attempted one.) */
static int ev_in_scope(const ev_t *e, const Tollgate__V1__AlertRule *r)
{
    const char *s = r->scope, *id = r->scope_id;
    if (strcmp(s, "key") == 0)
        return strcmp(e->e_key, id) == 0;
    if (strcmp(s, "project") == 0)
        return strcmp(e->e_project, id) == 0;
    if (strcmp(s, "account") == 0)
        return strcmp(e->e_account, id) == 0;
    if (strcmp(s, "run") == 0)
        return strcmp(e->e_run, id) == 0;
    if (strcmp(s, "channel") == 0) {
        if (strcmp(e->e_channel, id) == 0)
            return 1;
        for (size_t k = 0; k < e->e_natt; k++)
            if (strcmp(e->e_att_ch[k], id) == 0)
                return 1;
    }
    return 0;
}

/* ---- raising an alert -------------------------------------------------------------- */

/* Raises alert a for rule r once per `what` (the fired marker): pauses the
 * key first when the rule says so. Returns 1 raised, 0 already raised, -1
 * store failure (logged; the next pass tries again). */
static int raise_alert(cp_alerts_t *al, const Tollgate__V1__AlertRule *r, const char *what,
                       Tollgate__V1__Alert *a)
{
    tg_cp_t *cp = al->al_cp;
    char fired[TG_STORE_MAX_KEY], err[TG_ERRLEN] = "", id[32], logkey[64], seqv[24];
    char outkeys[8][96];
    tg_buf_t packed, dpacked[8];
    tg_store_kv_t *kv = NULL;
    int result = -1;
    size_t nhooks = r->n_webhooks < 8 ? r->n_webhooks : 8;
    tg_pool_t *pool = tg_pool_create(8192);
    if (pool == NULL)
        return -1;
    snprintf(fired, sizeof(fired), TG_CP_K_ALERT_FIRED "%s/%s", r->id, what);
    if (tg_store_get(cp->cp_store, fired, strlen(fired), &kv, NULL, err, sizeof(err)) != 0) {
        tg_pool_destroy(pool);
        return -1;
    }
    if (kv != NULL) {
        tg_store_kv_free(kv);
        tg_pool_destroy(pool);
        return 0;
    }
    a->rule_id = r->id;
    a->rule_name = r->name;
    a->kind = r->kind;
    a->scope = r->scope;
    a->scope_id = r->scope_id;
    a->account_id = r->account_id;
    a->at_us = tg_cp_now_us();
    if (strcmp(r->scope, "key") == 0)
        a->key_id = r->scope_id;
    if (r->action == TOLLGATE__V1__ALERT_ACTION__ALERT_ACTION_PAUSE_KEY && strcmp(r->scope, "key") == 0) {
        char reason[512];
        snprintf(reason, sizeof(reason), "alert rule %s%s%s%s: %s", r->id, r->name[0] ? " (" : "", r->name,
                 r->name[0] ? ")" : "", a->message);
        int p = cp_key_pause(cp, r->scope_id, reason, "alert rule");
        a->action_taken = p == 1 ? "key_paused" : p == 0 ? "key_already_paused" : "key_pause_failed";
    }
    tg_buf_init(&packed, TG_STORE_MAX_VALUE);
    for (size_t i = 0; i < nhooks; i++)
        tg_buf_init(&dpacked[i], 4096);
    for (int attempt = 0; attempt < 5 && result < 0; attempt++) {
        int64_t seq_rev = 0;
        uint64_t seq = 0;
        kv = NULL;
        if (tg_store_get(cp->cp_store, TG_CP_K_ALERT_SEQ, strlen(TG_CP_K_ALERT_SEQ), &kv, NULL, err, sizeof(err)) != 0)
            break;
        if (kv != NULL) {
            char num[32];
            snprintf(num, sizeof(num), "%.*s", (int)(kv->kv_val_len < 31 ? kv->kv_val_len : 31),
                     (const char *)kv->kv_val);
            seq = strtoull(num, NULL, 10);
            seq_rev = kv->kv_mod_rev;
            tg_store_kv_free(kv);
        }
        seq++;
        snprintf(seqv, sizeof(seqv), "%" PRIu64, seq);
        snprintf(id, sizeof(id), "alt_%016" PRIu64, seq);
        snprintf(logkey, sizeof(logkey), TG_CP_K_ALERT "%016" PRIu64, seq);
        a->id = id;
        tg_buf_reset(&packed);
        if (tg_rpc_pb_pack(&a->base, &packed, err, sizeof(err)) != 0)
            break;
        tg_store_cmp_t cmps[3] = {
            {.c_key = fired, .c_key_len = strlen(fired), .c_target = TG_STORE_CMP_VERSION, .c_op = TG_STORE_EQ,
             .c_num = 0},
            {.c_key = TG_CP_K_ALERT_SEQ, .c_key_len = strlen(TG_CP_K_ALERT_SEQ), .c_target = TG_STORE_CMP_MOD_REV,
             .c_op = TG_STORE_EQ, .c_num = seq_rev},
        };
        tg_store_op_t ops[5 + 8];
        size_t nops = 0;
        ops[nops++] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT, .op_key = TG_CP_K_ALERT_SEQ,
                                      .op_key_len = strlen(TG_CP_K_ALERT_SEQ), .op_val = seqv,
                                      .op_val_len = strlen(seqv)};
        ops[nops++] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT, .op_key = logkey, .op_key_len = strlen(logkey),
                                      .op_val = packed.b_data, .op_val_len = packed.b_len};
        ops[nops++] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT, .op_key = fired, .op_key_len = strlen(fired),
                                      .op_val = id, .op_val_len = strlen(id)};
        for (size_t i = 0; i < nhooks; i++) {
            Tollgate__V1__AlertDelivery d = TOLLGATE__V1__ALERT_DELIVERY__INIT;
            d.alert_id = id;
            d.rule_id = r->id;
            d.webhook = (uint32_t)i;
            d.url = r->webhooks[i]->url;
            snprintf(outkeys[i], sizeof(outkeys[i]), TG_CP_K_ALERT_OUT "%s/%02zu", id, i);
            tg_buf_reset(&dpacked[i]);
            if (tg_rpc_pb_pack(&d.base, &dpacked[i], err, sizeof(err)) != 0)
                goto out;
            ops[nops++] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT, .op_key = outkeys[i],
                                          .op_key_len = strlen(outkeys[i]), .op_val = dpacked[i].b_data,
                                          .op_val_len = dpacked[i].b_len};
        }
        /* the audit event: the engine is its actor */
        cp_actx_t ax;
        memset(&ax, 0, sizeof(ax));
        tollgate__v1__actor__init(&ax.ax_actor);
        ax.ax_cp = cp;
        ax.ax_pool = pool;
        ax.ax_actor.token_name = "alert-engine";
        ax.ax_actor.role = "system";
        ax.ax_method = "RaiseAlert";
        cp_wr_t w;
        cp_wr_init(&w, pool);
        cp_wr_audit(&w, "alert", id, NULL, &a->base);
        cp_audit_slot_t slot;
        memset(&slot, 0, sizeof(slot));
        tg_buf_init(&slot.au_buf, TG_STORE_MAX_VALUE);
        cp_audit_lock();
        int code = cp_audit_fill(&ax, &w, &slot, &cmps[2], &ops[nops], err, sizeof(err));
        if (code == TG_RPC_CODE_OK) {
            tg_store_txn_res_t tres;
            memset(&tres, 0, sizeof(tres));
            int rc = tg_store_txn(cp->cp_store, cmps, 3, ops, nops + 2, NULL, 0, &tres, err, sizeof(err));
            if (rc == 0 && tres.tx_succeeded)
                result = 1;
            tg_store_txn_res_free(&tres);
        }
        cp_audit_unlock();
        tg_buf_free(&slot.au_buf);
        if (result < 0) {
            /* lost a race: raised meanwhile (by a previous leader), or the
             * sequence moved: look again */
            kv = NULL;
            if (tg_store_get(cp->cp_store, fired, strlen(fired), &kv, NULL, err, sizeof(err)) == 0 && kv != NULL) {
                tg_store_kv_free(kv);
                result = 0;
            }
        }
    }
out:
    if (result == 1)
        TG_LOG(TG_LOG_WARN, "cp.alerts", "alert %s (rule %s): %s%s%s", id, r->id, a->message,
               a->action_taken[0] ? "; " : "", a->action_taken);
    else if (result < 0)
        TG_LOG(TG_LOG_ERROR, "cp.alerts", "rule %s: raising an alert failed: %s", r->id, err[0] ? err : "contention");
    tg_buf_free(&packed);
    for (size_t i = 0; i < nhooks; i++)
        tg_buf_free(&dpacked[i]);
    tg_pool_destroy(pool);
    return result;
}

/* ---- evaluation ------------------------------------------------------------------------ */

/* Spend threshold of one limit scope s: fires each threshold spent has
 * reached, once per window (the fired marker names the scope id, which
 * holds the window's start). */
static void eval_scope_thresholds(cp_alerts_t *al, const Tollgate__V1__AlertRule *r, const cp_scope_t *s)
{
    ProtobufCMessage *m = NULL;
    char err[TG_ERRLEN] = "";
    Tollgate__V1__Balance fresh;
    if (s->cs_limit <= 0)
        return;
    if (tg_cp_get_pb(al->al_cp, s->cs_key, &tollgate__v1__balance__descriptor, &m, NULL, err, sizeof(err)) < 0)
        return;
    Tollgate__V1__Balance *b = cp_scope_state(s, (Tollgate__V1__Balance *)m, &fresh);
    int64_t spent = b->credit_limit_nano - b->balance_nano;
    for (size_t i = 0; i < r->n_thresholds_pct; i++) {
        uint32_t t = r->thresholds_pct[i];
        if ((__int128)spent * 100 < (__int128)t * s->cs_limit)
            continue;
        char what[300], msg[512], lim[32], sp[32];
        Tollgate__V1__Alert a = TOLLGATE__V1__ALERT__INIT;
        tg_price_format(s->cs_limit, lim, sizeof(lim));
        tg_price_format(spent, sp, sizeof(sp));
        snprintf(what, sizeof(what), "%s/%u", s->cs_id, t);
        snprintf(msg, sizeof(msg), "%s %s spent %s of its %s %s %s (%u%% threshold)", s->cs_kind, s->cs_obj, sp,
                 s->cs_window ? tg_billing_window_name(s->cs_window) : "run", lim, s->cs_currency, t);
        a.message = msg;
        a.threshold_pct = t;
        a.limit_scope = (char *)s->cs_id;
        a.window_start_us = s->cs_start;
        a.limit_nano = s->cs_limit;
        a.spent_nano = spent;
        a.currency = (char *)s->cs_currency;
        a.limit = t;
        a.observed = (int64_t)((__int128)spent * 100 / s->cs_limit);
        raise_alert(al, r, what, &a);
    }
    tg_rpc_pb_free(m);
}

static void eval_thresholds(cp_alerts_t *al, const Tollgate__V1__AlertRule *r, int64_t now)
{
    char key[TG_STORE_MAX_KEY], err[TG_ERRLEN] = "";
    ProtobufCMessage *m = NULL;
    cp_scope_t s;
    if (strcmp(r->scope, "run") == 0) {
        snprintf(key, sizeof(key), TG_CP_K_RUN "%s", r->scope_id);
        if (tg_cp_get_pb(al->al_cp, key, &tollgate__v1__run_budget__descriptor, &m, NULL, err, sizeof(err)) == 0 &&
            cp_scope_of_run((Tollgate__V1__RunBudget *)m, &s) == 0)
            eval_scope_thresholds(al, r, &s);
        tg_rpc_pb_free(m);
        return;
    }
    Tollgate__V1__SpendLimit **lims = NULL;
    size_t nl = 0;
    const char *acct = NULL;
    if (cp_limits_of(al->al_cp, r->scope, r->scope_id, &m, &lims, &nl, &acct, err, sizeof(err)) != 0)
        return;
    for (size_t i = 0; i < nl; i++)
        if (cp_scope_of_limit(r->scope, r->scope_id, acct, lims[i], now, cp_account_tz(al->al_cp, acct), &s) == 0)
            eval_scope_thresholds(al, r, &s);
    tg_rpc_pb_free(m);
}

static uint32_t rule_window_s(const Tollgate__V1__AlertRule *r)
{
    return r->window_s ? r->window_s : 60;
}

/* Velocity and rates over the ring's last window_s seconds; one alert per
 * aligned period of window_s (the fired marker names it). */
static void eval_window(cp_alerts_t *al, const Tollgate__V1__AlertRule *r, int64_t now)
{
    uint32_t ws = rule_window_s(r);
    int64_t from = now - (int64_t)ws * 1000000;
    int64_t sum = 0, num = 0, den = 0;
    uint32_t minreq = r->min_requests ? r->min_requests : 10;
    for (size_t i = 0; i < al->al_ring_n; i++) {
        const ev_t *e = &al->al_ring[(al->al_ring_head + RING_CAP - al->al_ring_n + i) % RING_CAP];
        if (e->e_at < from || !ev_in_scope(e, r))
            continue;
        switch (r->kind) {
        case TOLLGATE__V1__ALERT_KIND__ALERT_KIND_TOKEN_VELOCITY: sum += e->e_tokens; break;
        case TOLLGATE__V1__ALERT_KIND__ALERT_KIND_SPEND_VELOCITY: sum += e->e_cost; break;
        case TOLLGATE__V1__ALERT_KIND__ALERT_KIND_FALLBACK_RATE:
            den++;
            num += e->e_fallback;
            break;
        case TOLLGATE__V1__ALERT_KIND__ALERT_KIND_CHANNEL_ERROR_RATE:
            for (size_t k = 0; k < e->e_natt; k++)
                if (strcmp(e->e_att_ch[k], r->scope_id) == 0) {
                    den++;
                    num += e->e_att_failed[k];
                }
            break;
        default: break;
        }
    }
    char what[64], msg[512];
    Tollgate__V1__Alert a = TOLLGATE__V1__ALERT__INIT;
    snprintf(what, sizeof(what), "w/%" PRId64, now / ((int64_t)ws * 1000000));
    a.message = msg;
    if (r->kind == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_TOKEN_VELOCITY ||
        r->kind == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_SPEND_VELOCITY) {
        int64_t per_min = (int64_t)((__int128)sum * 60 / ws);
        if (per_min <= r->velocity_limit)
            return;
        a.observed = per_min;
        a.limit = r->velocity_limit;
        snprintf(msg, sizeof(msg), "%s %s: %s velocity %" PRId64 "/min over the last %us, above %" PRId64 "/min",
                 r->scope, r->scope_id,
                 r->kind == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_TOKEN_VELOCITY ? "token" : "spend (nano)", per_min,
                 ws, r->velocity_limit);
    } else {
        if (den < minreq || num * 100 <= (int64_t)r->rate_pct * den)
            return;
        a.observed = num * 100 / den;
        a.limit = r->rate_pct;
        snprintf(msg, sizeof(msg), "%s %s: %s %" PRId64 "%% (%" PRId64 " of %" PRId64 ") over the last %us, above %u%%",
                 r->scope, r->scope_id,
                 r->kind == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_FALLBACK_RATE ? "fallback rate" : "error rate",
                 a.observed, num, den, ws, r->rate_pct);
    }
    raise_alert(al, r, what, &a);
}

/* A request that failed but consumed upstream tokens: one alert each. */
static void eval_failed(cp_alerts_t *al, const Tollgate__V1__AlertRule *r, const ev_t *evs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const ev_t *e = &evs[i];
        if (!e->e_failed || (e->e_tokens <= 0 && e->e_cost <= 0) || !ev_in_scope(e, r))
            continue;
        char what[160], msg[512];
        Tollgate__V1__Alert a = TOLLGATE__V1__ALERT__INIT;
        snprintf(what, sizeof(what), "r/%s", e->e_record);
        snprintf(msg, sizeof(msg), "request %s of key %s failed but consumed %" PRId64 " tokens (%" PRId64 " nano)",
                 e->e_record, e->e_key, e->e_tokens, e->e_cost);
        a.message = msg;
        a.record_id = (char *)e->e_record;
        a.key_id = (char *)e->e_key;
        a.observed = e->e_tokens;
        a.spent_nano = e->e_cost;
        raise_alert(al, r, what, &a);
    }
}

/* Does any of the new events touch rule r's object (thresholds re-read)? */
static int touched(const Tollgate__V1__AlertRule *r, const ev_t *evs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ev_in_scope(&evs[i], r))
            return 1;
    return 0;
}

/* The enabled rules, read from the store. *out (tg_rpc_pb_free each, then
 * tg_free) gets *n of them. */
static int load_rules(cp_alerts_t *al, Tollgate__V1__AlertRule ***out, size_t *n)
{
    tg_store_range_res_t res;
    char err[TG_ERRLEN] = "";
    tg_store_range_req_t rq = {.rq_key = TG_CP_K_ALERT_RULE, .rq_key_len = strlen(TG_CP_K_ALERT_RULE),
                               .rq_prefix = 1, .rq_limit = 10000};
    *out = NULL;
    *n = 0;
    if (tg_store_range(al->al_cp->cp_store, &rq, &res, err, sizeof(err)) < 0) {
        TG_LOG(TG_LOG_WARN, "cp.alerts", "reading alert rules: %s", err);
        return -1;
    }
    *out = tg_calloc(res.rs_n ? res.rs_n : 1, sizeof(**out));
    for (size_t i = 0; *out != NULL && i < res.rs_n; i++) {
        ProtobufCMessage *m = NULL;
        if (tg_rpc_pb_unpack(&tollgate__v1__alert_rule__descriptor, res.rs_kvs[i].kv_val, res.rs_kvs[i].kv_val_len,
                             &m, NULL, 0) != 0)
            continue;
        if (((Tollgate__V1__AlertRule *)m)->disabled) {
            tg_rpc_pb_free(m);
            continue;
        }
        (*out)[(*n)++] = (Tollgate__V1__AlertRule *)m;
    }
    tg_store_range_res_free(&res);
    return *out != NULL ? 0 : -1;
}

static void free_rules(Tollgate__V1__AlertRule **rules, size_t n)
{
    for (size_t i = 0; i < n; i++)
        tg_rpc_pb_free(&rules[i]->base);
    tg_free(rules);
}

static int windowed(int kind)
{
    return kind == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_TOKEN_VELOCITY ||
           kind == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_SPEND_VELOCITY ||
           kind == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_CHANNEL_ERROR_RATE ||
           kind == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_FALLBACK_RATE;
}

/* One pass: new events into the ring, every enabled rule evaluated. */
static void eval_pass(cp_alerts_t *al, ev_t *evs, size_t n)
{
    Tollgate__V1__AlertRule **rules = NULL;
    size_t nr = 0;
    int64_t now = tg_cp_now_us();
    if (load_rules(al, &rules, &nr) != 0)
        return;
    atomic_store(&al->al_nrules, (int)nr);
    /* keep only what a windowed rule could count */
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < nr; k++)
            if (windowed((int)rules[k]->kind) && ev_in_scope(&evs[i], rules[k])) {
                al->al_ring[al->al_ring_head] = evs[i];
                al->al_ring_head = (al->al_ring_head + 1) % RING_CAP;
                if (al->al_ring_n < RING_CAP)
                    al->al_ring_n++;
                break;
            }
    int sweep = now - al->al_last_sweep >= THRESHOLD_SWEEP_US;
    if (sweep)
        al->al_last_sweep = now;
    for (size_t k = 0; k < nr; k++) {
        const Tollgate__V1__AlertRule *r = rules[k];
        if (r->kind == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_SPEND_THRESHOLD) {
            if (sweep || touched(r, evs, n))
                eval_thresholds(al, r, now);
        } else if (r->kind == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_FAILED_WITH_USAGE) {
            eval_failed(al, r, evs, n);
        } else if (windowed((int)r->kind)) {
            eval_window(al, r, now);
        }
    }
    free_rules(rules, nr);
}

static int al_wait(cp_alerts_t *al, int ms, int for_work)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&al->al_mu);
    while (!al->al_stop && !(for_work && al->al_npending > 0))
        if (pthread_cond_timedwait(&al->al_cv, &al->al_mu, &ts) != 0)
            break;
    int stop = al->al_stop;
    pthread_mutex_unlock(&al->al_mu);
    return stop;
}

static void *eval_main(void *arg)
{
    cp_alerts_t *al = arg;
    ev_t *evs = tg_calloc(PENDING_CAP, sizeof(*evs));
    if (evs == NULL)
        return NULL;
    /* a first pass soon after start: learn whether rules exist */
    while (!al_wait(al, 1000, 1)) {
        size_t n;
        pthread_mutex_lock(&al->al_mu);
        n = al->al_npending;
        memcpy(evs, al->al_pending, n * sizeof(*evs));
        al->al_npending = 0;
        pthread_mutex_unlock(&al->al_mu);
        if (!atomic_load(&al->al_cp->cp_is_leader)) {
            atomic_store(&al->al_nrules, 0);
            continue;
        }
        eval_pass(al, evs, n);
        if (al_wait(al, PASS_MIN_MS, 0))
            break;
    }
    tg_free(evs);
    return NULL;
}

/* ---- webhook delivery --------------------------------------------------------------------- */

static size_t discard(void *p, size_t sz, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return sz * n;
}

void cp_alerts_sign(const char *secret, int64_t t, const char *body, size_t len, char *out, size_t outlen)
{
    uint8_t mac[TG_SHA256_LEN];
    char hex[2 * TG_SHA256_LEN + 1], ts[24];
    int tl = snprintf(ts, sizeof(ts), "%" PRId64 ".", t);
    char *msg = tg_malloc((size_t)tl + len + 1);
    hex[0] = '\0';
    if (msg != NULL) {
        memcpy(msg, ts, (size_t)tl);
        memcpy(msg + tl, body, len);
        tg_crypto_hmac_sha256(secret, strlen(secret), msg, (size_t)tl + len, mac);
        tg_crypto_hex(mac, TG_SHA256_LEN, hex);
        tg_free(msg);
    }
    ts[tl - 1] = '\0';
    snprintf(out, outlen, "t=%s,v1=%s", ts, hex);
}

/* POSTs body to url; 0 on a 2xx answer, else -1 with the reason in err. */
static int post(const char *url, const char *body, const char *sig, const char *alert_id, char *err, size_t errlen)
{
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    char hdr[600];
    long status = 0;
    int rc = -1;
    if (c == NULL)
        return tg_errf(err, errlen, -1, "no curl handle");
    h = curl_slist_append(h, "content-type: application/json");
    snprintf(hdr, sizeof(hdr), "tollgate-signature: %s", sig);
    h = curl_slist_append(h, hdr);
    snprintf(hdr, sizeof(hdr), "idempotency-key: %s", alert_id);
    h = curl_slist_append(h, hdr);
    snprintf(hdr, sizeof(hdr), "tollgate-alert-id: %s", alert_id);
    h = curl_slist_append(h, hdr);
    h = curl_slist_append(h, "user-agent: tollgate-cp-alerts/1");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)DELIVER_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    CURLcode cc = curl_easy_perform(c);
    if (cc != CURLE_OK)
        tg_errf(err, errlen, -1, "%s", curl_easy_strerror(cc));
    else if (curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status), status < 200 || status > 299)
        tg_errf(err, errlen, -1, "HTTP %ld", status);
    else
        rc = 0;
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return rc;
}

/* Records the outcome on the rule's webhook (status, failures), by CAS;
 * a write only when something changes. Best effort. */
static void mark_webhook(tg_cp_t *cp, const char *rule_id, const char *url, int ok, int gave_up, const char *why)
{
    char key[TG_STORE_MAX_KEY], err[TG_ERRLEN] = "";
    snprintf(key, sizeof(key), TG_CP_K_ALERT_RULE "%s", rule_id);
    for (int attempt = 0; attempt < 3; attempt++) {
        ProtobufCMessage *m = NULL;
        int64_t modrev = 0;
        if (tg_cp_get_pb(cp, key, &tollgate__v1__alert_rule__descriptor, &m, &modrev, err, sizeof(err)) != 0)
            return;
        Tollgate__V1__AlertRule *r = (Tollgate__V1__AlertRule *)m;
        Tollgate__V1__Webhook *w = NULL;
        for (size_t i = 0; i < r->n_webhooks && !w; i++)
            if (strcmp(r->webhooks[i]->url, url) == 0)
                w = r->webhooks[i];
        int st = ok ? TOLLGATE__V1__WEBHOOK_STATUS__WEBHOOK_STATUS_OK
                 : gave_up ? TOLLGATE__V1__WEBHOOK_STATUS__WEBHOOK_STATUS_FAILING
                           : TOLLGATE__V1__WEBHOOK_STATUS__WEBHOOK_STATUS_RETRYING;
        if (w == NULL || (ok && (int)w->status == st && w->consecutive_failures == 0)) {
            tg_rpc_pb_free(m);
            return;
        }
        int64_t now = tg_cp_now_us();
        /* a failing webhook stays marked failing until a delivery succeeds */
        if (!(w->status == TOLLGATE__V1__WEBHOOK_STATUS__WEBHOOK_STATUS_FAILING && !ok))
            w->status = st;
        else if (gave_up)
            w->status = st;
        w->consecutive_failures = ok ? 0 : w->consecutive_failures + 1;
        w->last_attempt_at_us = now;
        if (ok)
            w->last_success_at_us = now;
        tg_cp_pb_set_str(&w->last_error, ok ? "" : why);
        tg_buf_t b;
        tg_buf_init(&b, TG_STORE_MAX_VALUE);
        int done = 0;
        if (tg_rpc_pb_pack(&r->base, &b, err, sizeof(err)) == 0)
            done = tg_cp_put_if(cp, key, modrev, b.b_data, b.b_len, err, sizeof(err)) != 0;
        tg_buf_free(&b);
        tg_rpc_pb_free(m);
        if (done)
            return;
    }
}

/* Delivers (or reschedules) one pending delivery. */
static void deliver_one(tg_cp_t *cp, const tg_store_kv_t *kv)
{
    ProtobufCMessage *dm = NULL, *am = NULL, *rm = NULL;
    char err[TG_ERRLEN] = "", key[TG_STORE_MAX_KEY], sig[160];
    char dkey[TG_STORE_MAX_KEY];
    char *body = NULL;
    int64_t now = tg_cp_now_us();
    snprintf(dkey, sizeof(dkey), "%.*s", (int)kv->kv_key_len, (const char *)kv->kv_key);
    if (tg_rpc_pb_unpack(&tollgate__v1__alert_delivery__descriptor, kv->kv_val, kv->kv_val_len, &dm, NULL, 0) != 0)
        goto drop;
    Tollgate__V1__AlertDelivery *d = (Tollgate__V1__AlertDelivery *)dm;
    if (d->next_at_us > now)
        goto done;
    snprintf(key, sizeof(key), TG_CP_K_ALERT_RULE "%s", d->rule_id);
    if (tg_cp_get_pb(cp, key, &tollgate__v1__alert_rule__descriptor, &rm, NULL, err, sizeof(err)) < 0)
        goto done; /* store trouble: next round */
    if (rm == NULL)
        goto drop; /* the rule was deleted: its deliveries go with it */
    const char *idnum = strncmp(d->alert_id, "alt_", 4) == 0 ? d->alert_id + 4 : d->alert_id;
    snprintf(key, sizeof(key), TG_CP_K_ALERT "%s", idnum);
    if (tg_cp_get_pb(cp, key, &tollgate__v1__alert__descriptor, &am, NULL, err, sizeof(err)) < 0)
        goto done;
    if (am == NULL)
        goto drop;
    tg_pbjson_opts_t o = {0, tg_cp_redact};
    if ((body = tg_pbjson_dumps(am, &o)) == NULL)
        goto done;
    cp_alerts_sign(((Tollgate__V1__AlertRule *)rm)->webhook_secret, now / 1000000, body, strlen(body), sig,
                   sizeof(sig));
    if (post(d->url, body, sig, d->alert_id, err, sizeof(err)) == 0) {
        mark_webhook(cp, d->rule_id, d->url, 1, 0, NULL);
        goto drop;
    }
    d->attempts++;
    int gave_up = d->attempts >= DELIVER_MAX_ATTEMPTS;
    TG_LOG(gave_up ? TG_LOG_ERROR : TG_LOG_WARN, "cp.alerts", "webhook %s for alert %s: attempt %u failed: %s%s",
           d->url, d->alert_id, d->attempts, err, gave_up ? "; giving up" : "");
    mark_webhook(cp, d->rule_id, d->url, 0, gave_up, err);
    if (gave_up)
        goto drop;
    {
        /* from the end of this attempt: a slow receiver (up to the post's
         * timeout) must not eat the pause before the next try */
        int64_t backoff = 500000LL << (d->attempts - 1 < 7 ? d->attempts - 1 : 7);
        d->next_at_us = tg_cp_now_us() + (backoff < 60000000 ? backoff : 60000000);
        tg_cp_pb_set_str(&d->last_error, err);
        tg_buf_t b;
        tg_buf_init(&b, 8192);
        if (tg_rpc_pb_pack(dm, &b, err, sizeof(err)) == 0) {
            tg_store_op_t op = {.op_type = TG_STORE_OP_PUT, .op_key = dkey, .op_key_len = strlen(dkey),
                                .op_val = b.b_data, .op_val_len = b.b_len};
            tg_store_txn_res_t tres;
            memset(&tres, 0, sizeof(tres));
            tg_store_txn(cp->cp_store, NULL, 0, &op, 1, NULL, 0, &tres, err, sizeof(err));
            tg_store_txn_res_free(&tres);
        }
        tg_buf_free(&b);
    }
    goto done;
drop : {
    tg_store_op_t op = {.op_type = TG_STORE_OP_DELETE, .op_key = dkey, .op_key_len = strlen(dkey)};
    tg_store_txn_res_t tres;
    memset(&tres, 0, sizeof(tres));
    tg_store_txn(cp->cp_store, NULL, 0, &op, 1, NULL, 0, &tres, err, sizeof(err));
    tg_store_txn_res_free(&tres);
}
done:
    free(body);
    tg_rpc_pb_free(dm);
    tg_rpc_pb_free(am);
    tg_rpc_pb_free(rm);
}

static void *deliver_main(void *arg)
{
    cp_alerts_t *al = arg;
    tg_cp_t *cp = al->al_cp;
    while (!al_wait(al, DELIVER_EVERY_MS, 0)) {
        if (!atomic_load(&cp->cp_is_leader))
            continue;
        tg_store_range_res_t res;
        char err[TG_ERRLEN] = "";
        tg_store_range_req_t rq = {.rq_key = TG_CP_K_ALERT_OUT, .rq_key_len = strlen(TG_CP_K_ALERT_OUT),
                                   .rq_prefix = 1, .rq_limit = DELIVER_BATCH};
        if (tg_store_range(cp->cp_store, &rq, &res, err, sizeof(err)) < 0)
            continue;
        /* one at a time: a slow receiver delays alerts, never settlement */
        for (size_t i = 0; i < res.rs_n && !al->al_stop; i++)
            deliver_one(cp, &res.rs_kvs[i]);
        tg_store_range_res_free(&res);
    }
    return NULL;
}

/* ---- start / stop ------------------------------------------------------------------------ */

int cp_alerts_start(tg_cp_agent_side_t *as, char *err, size_t errlen)
{
    cp_alerts_t *al = tg_calloc(1, sizeof(*al));
    if (al == NULL || (al->al_pending = tg_calloc(PENDING_CAP, sizeof(ev_t))) == NULL ||
        (al->al_ring = tg_calloc(RING_CAP, sizeof(ev_t))) == NULL) {
        if (al != NULL) {
            tg_free(al->al_pending);
            tg_free(al);
        }
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "no memory for the alert engine");
    }
    curl_global_init(CURL_GLOBAL_DEFAULT); /* reference-counted; the etcd store may have done it */
    al->al_cp = as->as_cp;
    pthread_mutex_init(&al->al_mu, NULL);
    pthread_cond_init(&al->al_cv, NULL);
    as->as_alerts = al;
    if (pthread_create(&al->al_eval_thr, NULL, eval_main, al) == 0)
        al->al_eval_started = 1;
    if (pthread_create(&al->al_deliver_thr, NULL, deliver_main, al) == 0)
        al->al_deliver_started = 1;
    if (!al->al_eval_started || !al->al_deliver_started) {
        cp_alerts_stop(as);
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "cannot start the alert threads");
    }
    return 0;
}

void cp_alerts_stop(tg_cp_agent_side_t *as)
{
    cp_alerts_t *al = as->as_alerts;
    if (al == NULL)
        return;
    pthread_mutex_lock(&al->al_mu);
    al->al_stop = 1;
    pthread_cond_broadcast(&al->al_cv);
    pthread_mutex_unlock(&al->al_mu);
    if (al->al_eval_started)
        pthread_join(al->al_eval_thr, NULL);
    if (al->al_deliver_started)
        pthread_join(al->al_deliver_thr, NULL);
    al->al_eval_started = al->al_deliver_started = 0;
    atomic_store(&al->al_nrules, 0); /* notes from a late settlement are dropped */
}

void cp_alerts_free(tg_cp_agent_side_t *as)
{
    cp_alerts_t *al = as->as_alerts;
    if (al == NULL)
        return;
    cp_alerts_stop(as);
    as->as_alerts = NULL;
    pthread_cond_destroy(&al->al_cv);
    pthread_mutex_destroy(&al->al_mu);
    tg_free(al->al_pending);
    tg_free(al->al_ring);
    tg_free(al);
    curl_global_cleanup();
}
