/* route.c: which target serves a request. A target is usable when its
 * channel is active, the key's and the run's route types admit it, it is
 * priced, and its bucket has balance; within a tier the pick is weighted
 * among untried targets whose circuit breaker admits a request (a skip is
 * recorded as an attempt); after a failure the route policy decides: the
 * same channel again (bounded, with backoff), another target of the tier,
 * or the next tier, and past the caps the request gives up with the status
 * that says why. */
#include <stdio.h>
#include <string.h>

#include "agent/request_int.h"

/* ---- routing -------------------------------------------------------------------- */

/* Whether the key may use the target, and why not. */
int tg_req_target_ok(req_t *rq, const Tollgate__V1__RouteTarget *t)
{
    const tg_chan_t *ch = tg_cfg_channel(rq->rq_cfg, t->channel_id);
    const Tollgate__V1__Channel *c = ch->ch_pb;
    if (c->status == TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_PAUSED ||
        c->status == TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_DISABLED)
        return WHY_UNAVAILABLE;
    if (tg_proto_vendor_or_compatible(c->provider)->vd_proto == TG_PROTO_ANTHROPIC && rq->rq_ep->ep_kind != EP_CHAT &&
        rq->rq_ep->ep_kind != EP_MESSAGES && rq->rq_ep->ep_kind != EP_RESPONSES)
        return WHY_PROTOCOL; /* chat and Responses convert (proto/); embeddings, images pass through to OpenAI only */
    const tg_key_t *k = rq->rq_key;
    if (rq->rq_runb && rq->rq_runb->n_allowed_route_types) {
        int ok = 0;
        for (size_t i = 0; i < rq->rq_runb->n_allowed_route_types; i++)
            ok |= rq->rq_runb->allowed_route_types[i] == c->route_type;
        if (!ok)
            return WHY_ROUTE_TYPE;
    }
    if (k->n_allowed_route_types) {
        int ok = 0;
        for (size_t i = 0; i < k->n_allowed_route_types; i++)
            if (k->allowed_route_types[i] == c->route_type)
                ok = 1;
        if (!ok)
            return WHY_ROUTE_TYPE;
    }
    const tg_account_t *acct = rq->rq_acct;
    const char *bucket = tg_cfg_bucket(acct, c->route_type);
    if (!tg_req_price_for(rq, c, NULL))
        return WHY_UNPRICED;
    /* Nothing left at all, as last pushed: refused without asking for a
     * lease. Whether this request fits is the lease's to say (its own
     * holds are in reserved_nano, so that is not subtracted here). */
    const tg_balance_t *b = tg_cfg_balance(rq->rq_cfg, acct->id, bucket);
    if (!b || b->balance_nano - tg_cfg_floor(acct, b) <= 0)
        return WHY_BALANCE;
    return WHY_OK;
}

static uint32_t target_weight(req_t *rq, const Tollgate__V1__RouteTarget *t)
{
    if (t->weight)
        return t->weight;
    const tg_chan_t *ch = tg_cfg_channel(rq->rq_cfg, t->channel_id);
    return ch->ch_pb->weight ? ch->ch_pb->weight : 1;
}

/* A run budget's fallback rule: tiers after the first may use only its
 * fallback_route_types (when it lists any). */
static int fallback_ok(req_t *rq, uint32_t tier, const Tollgate__V1__RouteTarget *t)
{
    const Tollgate__V1__RunBudget *b = rq->rq_runb;
    if (tier == 0 || !b || !b->n_fallback_route_types)
        return 1;
    const Tollgate__V1__Channel *c = tg_cfg_channel(rq->rq_cfg, t->channel_id)->ch_pb;
    for (size_t i = 0; i < b->n_fallback_route_types; i++)
        if (b->fallback_route_types[i] == c->route_type)
            return 1;
    return 0;
}

/* The next attempt's slot, zeroed: the first ATT_INLINE live in the req_t,
 * beyond them the array moves to the pool (MAX_ATTEMPTS). NULL when all
 * MAX_ATTEMPTS are used or the pool is out of memory. */
attempt_t *tg_req_att_new(req_t *rq)
{
    if (rq->rq_natt >= MAX_ATTEMPTS)
        return NULL;
    if (rq->rq_att == rq->rq_att_in && rq->rq_natt == ATT_INLINE) {
        attempt_t *all = tg_pool_alloc(rq->rq_pool, MAX_ATTEMPTS * sizeof(*all));
        if (!all)
            return NULL;
        memcpy(all, rq->rq_att_in, sizeof rq->rq_att_in);
        rq->rq_att = all;
    }
    attempt_t *a = &rq->rq_att[rq->rq_natt++];
    memset(a, 0, sizeof *a);
    return a;
}

/* Picks an untried, usable target of tier `tier` whose breaker admits a
 * request; records breaker skips as attempts. Returns the index or -1. */
int tg_req_pick_in_tier(req_t *rq, uint32_t tier)
{
    const Tollgate__V1__RouteTier *t = rq->rq_route->tiers[tier];
    int n = (int)(t->n_targets < MAX_TARGETS ? t->n_targets : MAX_TARGETS);
    for (;;) {
        uint32_t w[MAX_TARGETS];
        for (int i = 0; i < n; i++)
            w[i] = (rq->rq_failed >> i & 1) || tg_req_target_ok(rq, t->targets[i]) != WHY_OK ||
                           !fallback_ok(rq, tier, t->targets[i])
                       ? 0
                       : target_weight(rq, t->targets[i]);
        int i = tg_agent_pick(w, n, rng(rq->rq_w));
        if (i < 0)
            return -1;
        const tg_chan_t *ch = tg_cfg_channel(rq->rq_cfg, t->targets[i]->channel_id);
        if (tg_agent_brk_allow(rq->rq_w->w_agent, ch->ch_pb->id, &rq->rq_brk, mono_ms()))
            return i;
        rq->rq_failed |= 1ull << i;
        attempt_t *a = rq->rq_natt < MAX_ATTEMPTS - 1 ? tg_req_att_new(rq) : NULL; /* a slot stays for the attempt */
        if (a) {
            a->at_chan = ch;
            a->at_tier = tier;
            a->at_target = i;
            a->at_model = t->targets[i]->upstream_model && *t->targets[i]->upstream_model
                              ? t->targets[i]->upstream_model
                              : rq->rq_route->model;
            a->at_class = TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CIRCUIT_OPEN;
            a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_NEXT_IN_TIER;
            a->at_start_us = now_us();
            snprintf(a->at_msg, sizeof a->at_msg, "circuit breaker open");
        }
    }
}

static const Tollgate__V1__RetryPolicy *policy(req_t *rq)
{
    return rq->rq_route->policy;
}

static int retryable(req_t *rq, int cls)
{
    const Tollgate__V1__RetryPolicy *p = policy(rq);
    switch (cls) {
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CONNECT: return !p || p->retry_on_connect_error;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_TIMEOUT: return !p || p->retry_on_timeout;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_RATE_LIMITED: return !p || p->retry_on_429;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_UPSTREAM_5XX:
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED: return !p || p->retry_on_5xx;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CHANNEL_REJECTED: return 1; /* another channel may serve */
    default: return 0;
    }
}

/* Decides what follows a failed attempt `a`: sets a->at_decision and the
 * routing state. Returns 1 when another attempt should start (after
 * a->at_backoff_ms), 0 to give up. */
int tg_req_next_step(req_t *rq, attempt_t *a)
{
    const Tollgate__V1__RetryPolicy *p = policy(rq);
    uint32_t cap = p && p->max_attempts ? p->max_attempts : 3;
    unsigned same_max = p ? p->same_channel_retries : 0;
    int fallback = (!p || p->fallback_enabled) && (!rq->rq_runb || rq->rq_runb->allow_fallback);
    a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_GIVE_UP;
    if (!retryable(rq, a->at_class) || rq->rq_counted >= (int)cap || rq->rq_natt >= MAX_ATTEMPTS)
        return 0;
    if (rq->rq_same < same_max && a->at_class != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CHANNEL_REJECTED) {
        rq->rq_same++;
        uint32_t init = p && p->backoff_initial_ms ? p->backoff_initial_ms : 100;
        uint32_t max = p && p->backoff_max_ms ? p->backoff_max_ms : 2000;
        int64_t ra = (!p || p->honor_retry_after) ? a->at_retry_after_ms : 0;
        a->at_backoff_ms = tg_agent_backoff(init, max, rq->rq_same - 1, ra);
        a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_RETRY_SAME;
        return 1;
    }
    rq->rq_failed |= 1ull << rq->rq_target;
    rq->rq_same = 0;
    int i = tg_req_pick_in_tier(rq, rq->rq_tier);
    if (i >= 0) {
        rq->rq_target = i;
        a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_NEXT_IN_TIER;
        return 1;
    }
    while (fallback && rq->rq_tier + 1 < rq->rq_route->n_tiers) {
        rq->rq_tier++;
        rq->rq_failed = 0;
        if ((i = tg_req_pick_in_tier(rq, rq->rq_tier)) >= 0) {
            rq->rq_target = i;
            rq->rq_fallback = 1;
            a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_FALLBACK_TIER;
            return 1;
        }
    }
    return 0;
}

/* What went wrong with an attempt, in the gateway's words: upstream error
 * bodies and curl's messages (which can name the operator's organization,
 * a masked key or an internal host) stay in the record, never in a client
 * answer. */
static const char *what_failed(const attempt_t *a, char *buf, size_t n)
{
    switch (a->at_class) {
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CONNECT: return "the upstream could not be reached";
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_TIMEOUT: return "the upstream did not answer in time";
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED: return "the upstream's answer was malformed";
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CHANNEL_REJECTED:
        if (a->at_status >= 300 && a->at_status < 400)
            snprintf(buf, n, "the upstream redirected the gateway's channel (HTTP %d): its base URL needs the "
                             "operator's attention", a->at_status);
        else
            snprintf(buf, n, "the upstream refused the gateway's channel (HTTP %d): its credential or model "
                             "mapping needs the operator's attention", a->at_status);
        return buf;
    default:
        snprintf(buf, n, "the upstream answered HTTP %d", a->at_status);
        return buf;
    }
}

/* Client status and message when every attempt failed. */
void tg_req_give_up(req_t *rq, attempt_t *a)
{
    char why[160];
    switch (a ? a->at_class : TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CIRCUIT_OPEN) {
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_TIMEOUT:
        tg_req_fail(rq, 504, "upstream_error", "upstream_timeout", a->at_class,
                     "The upstream did not answer in time (%d attempts).", rq->rq_natt);
        break;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_RATE_LIMITED:
        tg_req_fail(rq, 429, "rate_limit_error", "upstream_rate_limited", a->at_class,
                     "The upstream is rate limiting (%d attempts). Retry later.", rq->rq_natt);
        break;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CIRCUIT_OPEN:
        tg_req_fail(rq, 503, "upstream_error", "no_upstream_available", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CIRCUIT_OPEN,
                     "No upstream channel for model %s is available right now (circuit breakers open)",
                     rq->rq_route->model);
        break;
    default:
        tg_req_fail(rq, 502, "upstream_error",
                     a->at_class == TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CHANNEL_REJECTED ? "upstream_channel_rejected"
                                                                                          : "upstream_error",
                     a->at_class, "No upstream channel served model %s (%d attempts): %s.", rq->rq_route->model,
                     rq->rq_natt, what_failed(a, why, sizeof why));
        break;
    }
}
