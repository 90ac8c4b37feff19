/* preauth.c: pre-authorization of a request's spend on the agent's spend
 * leases (lease.h): the upper estimate reserved on the paying bucket and on
 * every limit scope (key, project and account windows, the run) before an attempt
 * goes upstream (receipt.c releases it against the actual cost when the
 * request ends, on every path);
 * refusals (402, 429 with the window's reset, 503 when spend control cannot
 * answer); and the chat stream ended at its reservation when a provider
 * ignores the output cap. docs/SPEND.md has the rule and its bound. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "agent/request_int.h"
#include "billing/tg_billing.h"
#include "meter/tg_price.h"

/* ---- pre-authorization ------------------------------------------------------------ *
 * Before an attempt goes upstream, the request's upper estimate on that
 * channel (billing/ tg_billing_estimate: the prompt at most, the output cap,
 * the fee) is reserved on the agent's spend lease for the bucket that would
 * pay; the actual cost replaces it when the request ends (tg_req_emit_record), on
 * every path. The prompt is first bounded by its byte length (a byte-level
 * BPE never makes more tokens than bytes: no tokenizer on the hot path);
 * only when that does not fit is it counted exactly. */

/* The price entry for serving rq on channel c (the card in effect when the
 * request started, in the currency of the bucket that would pay), or NULL:
 * what cannot be priced is not served. */
const Tollgate__V1__PriceEntry *tg_req_price_for(req_t *rq, const Tollgate__V1__Channel *c, const char **bucket)
{
    const Tollgate__V1__PriceEntry *pe = NULL;
    const char *b = tg_cfg_bucket(rq->rq_acct, c->route_type);
    const char *cur = tg_req_currency(rq, b);
    if (!tg_cfg_price(rq->rq_cfg, rq->rq_route ? rq->rq_route->model : "", c->route_type, cur, rq->rq_t0_us, &pe))
        return NULL;
    if (bucket)
        *bucket = b;
    return pe;
}

/* The output tokens the estimate allows for one choice: the request's cap,
 * else the route's default, else the policy's, else DEF_MAX_OUTPUT. */
int64_t tg_req_output_allowance(req_t *rq)
{
    if (rq->rq_scan.sc_max_tokens >= 0)
        return rq->rq_scan.sc_max_tokens;
    if (rq->rq_route->default_max_output_tokens > 0)
        return rq->rq_route->default_max_output_tokens;
    const Tollgate__V1__GatewayPolicy *gp = tg_cfg_snapshot(rq->rq_cfg)->policy;
    if (gp && gp->default_max_output_tokens > 0)
        return gp->default_max_output_tokens;
    return DEF_MAX_OUTPUT;
}

/* The estimate of serving rq on channel c. Returns 0, *bucket and *nano;
 * -1 with err set when there is no price; -2 when the request asks for more
 * than can be pre-authorized (its output cap times n past billing's limits:
 * checked, never wrapped). */
static int estimate(req_t *rq, const Tollgate__V1__Channel *c, const char **bucket, int64_t *nano, char *err,
                    size_t errlen)
{
    const Tollgate__V1__PriceEntry *pe = tg_req_price_for(rq, c, bucket);
    if (!pe)
        return tg_errf(err, errlen, -1, "no price in effect for model %s", rq->rq_route->model);
    int64_t out = 0, images = 0, n = rq->rq_scan.sc_n > 0 ? rq->rq_scan.sc_n : 1;
    int64_t cap = tg_req_output_allowance(rq);
    switch (rq->rq_ep->ep_kind) {
    case EP_EMBEDDINGS: break;
    case EP_IMAGES: images = n; break;
    case EP_CHAT: /* n choices, each up to the cap */
        if (cap > (int64_t)TG_PRICE_MAX_TOKENS / n)
            return tg_errf(err, errlen, -2, "the output cap %lld times n = %lld passes the %llu tokens a request may "
                           "ask for", (long long)cap, (long long)n, (unsigned long long)TG_PRICE_MAX_TOKENS);
        out = cap * n;
        break;
    default: out = cap; break;
    }
    if (!rq->rq_input_max)
        rq->rq_input_max = (int64_t)rq->rq_body_len + 1;
    if (tg_billing_estimate(pe, rq->rq_input_max, out, images, pe->rate_ppm, nano, err, errlen) != 0)
        return -2;
    rq->rq_out_est = out;
    return 0;
}

int tg_req_exact_input(req_t *rq)
{
    tg_meter_t *m = rq->rq_w->w_agent->a_meter;
    if (rq->rq_exact || !m || rq->rq_ep->ep_kind != EP_CHAT)
        return 0;
    rq->rq_exact = 1;
    char err[TG_ERRLEN] = "";
    tg_meter_chat_t mc;
    if (tg_meter_chat_count(m, rq->rq_body, rq->rq_body_len, rq->rq_route->model, &mc, err, sizeof err) != 0 ||
        mc.mc_estimate)
        return 0; /* no exact count: the byte bound stays */
    int64_t exact = (int64_t)mc.mc_prompt_tokens;
    if (exact >= rq->rq_input_max)
        return 0;
    rq->rq_input_max = exact;
    return 1;
}

static void add_limits(req_t *rq, scope_ref_t *v, int *n, const char *kind, const char *id,
                       Tollgate__V1__SpendLimit *const *l, size_t nl, const char *currency)
{
    int64_t tz = 0;
    if (tg_billing_tz(rq->rq_acct->time_zone, &tz) != 0)
        tz = 0; /* the control plane refuses such a zone; an old snapshot counts in UTC */
    for (size_t i = 0; i < nl && *n < MAX_SCOPES; i++) {
        int64_t start, end;
        if (strcmp(l[i]->currency, currency) != 0 ||
            tg_billing_window((int)l[i]->window, rq->rq_t0_us, tz, &start, &end) != 0 ||
            tg_billing_scope(kind, id, (int)l[i]->window, rq->rq_t0_us, tz, v[*n].sr_id, sizeof v[*n].sr_id) != 0)
            continue;
        v[*n].sr_kind = kind;
        v[*n].sr_window = (int)l[i]->window;
        v[*n].sr_limit = l[i]->limit_nano;
        v[*n].sr_end = end;
        (*n)++;
    }
}

/* The key's, its project's and its account's limits in the windows of the
 * request's start and the run's budget, in the currency of the paying bucket
 * (the control plane counts the same ones at settlement). */
static void compute_scopes(req_t *rq, const char *currency)
{
    scope_ref_t v[MAX_SCOPES];
    int n = 0;
    const tg_key_t *k = rq->rq_key;
    rq->rq_scopes_done = 1;
    add_limits(rq, v, &n, "key", k->id, k->spend_limits, k->n_spend_limits, currency);
    const Tollgate__V1__Project *p = k->project_id[0] ? tg_cfg_project(rq->rq_cfg, k->project_id) : NULL;
    if (p)
        add_limits(rq, v, &n, "project", p->id, p->spend_limits, p->n_spend_limits, currency);
    add_limits(rq, v, &n, "account", rq->rq_acct->id, rq->rq_acct->spend_limits, rq->rq_acct->n_spend_limits,
               currency);
    const Tollgate__V1__RunBudget *b = rq->rq_runb;
    if (b && b->max_spend_nano > 0 && strcmp(b->currency, currency) == 0 && n < MAX_SCOPES &&
        tg_billing_scope("run", b->run_id, 0, 0, 0, v[n].sr_id, sizeof v[n].sr_id) == 0) {
        v[n].sr_kind = "run";
        v[n].sr_window = 0;
        v[n].sr_limit = b->max_spend_nano;
        v[n].sr_end = b->expires_at_us;
        n++;
    }
    if (n && (rq->rq_scopes = tg_pool_alloc(rq->rq_pool, (size_t)n * sizeof *v)) != NULL) {
        memcpy(rq->rq_scopes, v, (size_t)n * sizeof *v);
        rq->rq_nscopes = n;
    }
}

static int64_t offline_allowance(req_t *rq)
{
    const Tollgate__V1__GatewayPolicy *gp = tg_cfg_snapshot(rq->rq_cfg)->policy;
    return gp ? gp->offline_allowance_nano : 0;
}

/* A limit scope refused the request: 429 with the reset time for a key's
 * or project's window, 402 for a total limit or a run's budget. */
static void refuse_scope(req_t *rq, const scope_ref_t *s, int offline)
{
    char lim[32], when[40] = "", ra[24];
    const char *cur = tg_req_currency(rq, rq->rq_resv_bucket);
    const char *who = strcmp(s->sr_kind, "key") == 0       ? "API key"
                      : strcmp(s->sr_kind, "project") == 0 ? "project"
                      : strcmp(s->sr_kind, "account") == 0 ? "account"
                                                           : "run";
    rq->rq_refused_budget = 1;
    tg_price_format(s->sr_limit, lim, sizeof lim);
    if (offline) {
        tg_req_fail(rq, 503, "server_error", "spend_control_unavailable", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The gateway cannot authorize spending against this %s's limit right now (its control plane is "
                     "unreachable). Retry shortly.", who);
        return;
    }
    if (strcmp(s->sr_kind, "run") == 0) {
        tg_req_fail(rq, 402, "insufficient_quota", "run_budget_exceeded", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The run `%s` has spent its budget of %s %s: it cannot cover this request.",
                     rq->rq_runb ? rq->rq_runb->run_id : "", lim, cur);
        return;
    }
    if (s->sr_window == TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_TOTAL) {
        tg_req_fail(rq, 402, "insufficient_quota", "spend_limit_exceeded", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "This %s's total spend limit of %s %s is reached: it cannot cover this request.", who, lim, cur);
        return;
    }
    time_t t = (time_t)(s->sr_end / 1000000);
    struct tm tm;
    if (gmtime_r(&t, &tm))
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int64_t secs = (s->sr_end - now_us()) / 1000000 + 1;
    snprintf(ra, sizeof ra, "%lld", (long long)(secs > 0 ? secs : 1));
    if (rq->rq_c)
        add_header(rq->rq_c, "Retry-After", ra);
    tg_req_fail(rq, 429, "rate_limit_error", "spend_limit_exceeded", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                 "This %s's %s spend limit of %s %s is reached: it cannot cover this request. It resets at %s.", who,
                 tg_billing_window_name(s->sr_window), lim, cur, when);
}

/* Makes sure rq holds a reservation that covers an attempt on channel ch.
 * Returns 0 (go on), 1 (parked: the timer calls tg_req_start_attempt again), or
 * -1 (the request was refused and ended). */
int tg_req_ensure_reserved(req_t *rq, const tg_chan_t *ch)
{
    tg_lease_tab_t *lt = rq->rq_w->w_agent->a_leases;
    const char *bucket = NULL;
    int64_t est = 0, now = now_us();
    char err[TG_ERRLEN] = "", amt[32];
    int rc, rate_wait = 0;
    int erc = estimate(rq, ch->ch_pb, &bucket, &est, err, sizeof err);
    if (erc == -2) {
        tg_req_fail(rq, 400, "invalid_request_error", "max_tokens_too_large", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                    "This request asks for more than the gateway can pre-authorize: %s. Lower max_tokens or n.", err);
        return -1;
    }
    if (erc != 0) {
        tg_req_fail(rq, 503, "server_error", "model_not_priced", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The gateway cannot price this request, so it does not serve it: %s.", err);
        return -1;
    }
    /* the key's and its project's rate limits first, once per request (ratelimit.c): a
     * request over them is refused before any budget is reserved */
    if ((rc = tg_req_rate_reserve(rq, now)) == 1) {
        rate_wait = 1;
        goto park;
    }
    if (rc < 0)
        return -1;
    /* a fallback to a bucket of another currency counts against that
     * currency's limits: the scopes are chosen again */
    const char *cur = tg_req_currency(rq, bucket);
    if (rq->rq_scopes_done && rq->rq_resv > 0 && strcmp(rq->rq_resv_bucket, bucket) != 0 &&
        strcmp(tg_req_currency(rq, rq->rq_resv_bucket), cur) != 0) {
        tg_req_release_all(rq, 0);
        rq->rq_scopes_done = 0;
        rq->rq_nscopes = 0;
    }
    if (!(rq->rq_resv > 0 && strcmp(rq->rq_resv_bucket, bucket) == 0 && rq->rq_resv >= est)) {
        /* first, or a fallback to a dearer tier or another bucket: reserved anew */
        tg_req_release_all(rq, 0);
        rc = tg_lease_reserve(lt, rq->rq_acct->id, bucket, est, &rq->rq_ticket, offline_allowance(rq), now);
        if (rc != TG_LEASE_OK && tg_req_exact_input(rq) &&
            estimate(rq, ch->ch_pb, &bucket, &est, err, sizeof err) == 0) {
            rq->rq_ticket = 0;
            rc = tg_lease_reserve(lt, rq->rq_acct->id, bucket, est, &rq->rq_ticket, offline_allowance(rq), now);
        }
        if (rc == TG_LEASE_WAIT)
            goto park;
        if (rc != TG_LEASE_OK) {
            rq->rq_refused_budget = 1;
            if (rc == TG_LEASE_DENIED)
                tg_req_fail(rq, 402, "insufficient_quota", "insufficient_quota", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                             "You exceeded your current quota: the `%s` balance of this account cannot cover this "
                             "request (up to %s %s is reserved for a request like it). Top up, or ask for fewer "
                             "output tokens.",
                             bucket, tg_price_format(est, amt, sizeof amt),
                             tg_req_currency(rq, bucket));
            else
                tg_req_fail(rq, 503, "server_error", "spend_control_unavailable", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                             "The gateway cannot authorize spending on the `%s` balance right now (its control plane "
                             "is unreachable and no budget is held locally). Retry shortly.",
                             bucket);
            return -1;
        }
        rq->rq_resv = est;
        rq->rq_resv_bucket = bucket;
        rq->rq_ticket = 0;
        if ((rq->rq_ep->ep_kind == EP_CHAT || rq->rq_ep->ep_kind == EP_MESSAGES ||
             rq->rq_ep->ep_kind == EP_RESPONSES) && rq->rq_scan.sc_stream)
            rq->rq_out_allow = rq->rq_out_est > 0 ? rq->rq_out_est : 1;
    }
    /* the same estimate on every limit scope: the key's, project's and account's
     * windows, the run */
    if (!rq->rq_scopes_done)
        compute_scopes(rq, tg_req_currency(rq, bucket));
    while (rq->rq_sres < rq->rq_nscopes) {
        const scope_ref_t *s = &rq->rq_scopes[rq->rq_sres];
        rc = tg_lease_reserve(lt, rq->rq_acct->id, s->sr_id, rq->rq_resv, &rq->rq_ticket, offline_allowance(rq), now);
        if (rc == TG_LEASE_OK) {
            rq->rq_sres++;
            rq->rq_ticket = 0;
            continue;
        }
        if (rc == TG_LEASE_WAIT)
            goto park;
        tg_req_release_all(rq, 0);
        if (tg_req_exact_input(rq))
            return tg_req_ensure_reserved(rq, ch); /* once: the exact count may fit where the byte bound did not */
        refuse_scope(rq, s, rc == TG_LEASE_OFFLINE);
        return -1;
    }
    rq->rq_lease_deadline_us = 0;
    return 0;
park:
    if (!rq->rq_lease_deadline_us)
        rq->rq_lease_deadline_us = now + LEASE_WAIT_MS * 1000LL;
    if (now < rq->rq_lease_deadline_us) {
        struct timeval tv = {0, LEASE_POLL_MS * 1000};
        rq->rq_timer_lease = 1;
        evtimer_add(rq->rq_timer, &tv);
        return 1;
    }
    tg_req_release_all(rq, 0);
    rq->rq_refused_budget = 1;
    if (rate_wait) /* no spending was asked yet: a rate limit was */
        tg_req_fail(rq, 503, "server_error", "rate_limit_unavailable", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                    "The gateway could not check the rate limit of this API key or its project in time (its "
                    "control plane did not answer). Retry shortly.");
    else
        tg_req_fail(rq, 503, "server_error", "spend_control_unavailable",
                    TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                    "The gateway could not authorize this request's spending in time (its control plane did not "
                    "answer). Retry shortly.");
    return -1;
}

/* Whether a chat stream's output, counted locally as it passes, went past
 * the tokens its reservation allowed (a provider that ignores max_tokens).
 * Bytes bound tokens from above, so nothing is counted until the text has
 * more bytes than the allowance has tokens; from then on each new piece is
 * counted once (pieces counted apart may make a token more than the whole:
 * the cut can come a token early, never late). */
int tg_req_past_allowance(req_t *rq)
{
    tg_meter_t *m = rq->rq_w->w_agent->a_meter;
    if ((int64_t)rq->rq_text.b_len <= rq->rq_out_allow || rq->rq_text.b_len == rq->rq_text_counted)
        return 0;
    if (!m)
        return 1; /* no tokenizer: the byte bound decides */
    char err[TG_ERRLEN] = "";
    tg_meter_model_t mm;
    const char *model = rq->rq_att[rq->rq_natt - 1].at_model;
    tg_meter_model_lookup(model, 1, &mm, err, sizeof err);
    tg_meter_encoding_t enc = mm.mm_encoding;
    if (rq->rq_route->encoding && *rq->rq_route->encoding)
        tg_meter_encoding_from_name(rq->rq_route->encoding, &enc, err, sizeof err);
    uint64_t k = 0;
    if (tg_meter_count(m, enc, rq->rq_text.b_data + rq->rq_text_counted, rq->rq_text.b_len - rq->rq_text_counted,
                       TG_METER_SPECIAL_TEXT, &k, err, sizeof err) != 0)
        k = rq->rq_text.b_len - rq->rq_text_counted;
    rq->rq_out_counted += (int64_t)k;
    rq->rq_text_counted = rq->rq_text.b_len;
    return rq->rq_out_counted > rq->rq_out_allow;
}

/* Ends a chat stream at its reservation, as the provider should have at
 * max_tokens: a last chunk with finish_reason "length", then [DONE] (held
 * for the end, after the record's commit); a Responses stream with
 * response.incomplete (reason max_output_tokens). Billed for what was
 * produced, at most the allowance. */
void tg_req_cut_at_allowance(req_t *rq)
{
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    tg_buf_reset(&rq->rq_tail);
    if (rq->rq_ep->ep_kind == EP_RESPONSES) {
        int64_t now = now_us();
        tg_buf_printf(&rq->rq_tail, "event: response.incomplete\ndata: {\"type\":\"response.incomplete\","
                                    "\"sequence_number\":%lld,\"response\":{\"id\":\"resp_%s\",\"object\":\"response\","
                                    "\"created_at\":%lld,\"status\":\"incomplete\",\"incomplete_details\":"
                                    "{\"reason\":\"max_output_tokens\"},\"model\":",
                      (long long)(now % 1000000000), rq->rq_id, (long long)(now / 1000000));
        tg_agent_json_str(&rq->rq_tail, a->at_model, strlen(a->at_model));
        tg_buf_puts(&rq->rq_tail, ",\"output\":[]}}\n\n");
        tg_req_mark_capped(rq, "incomplete");
        return;
    }
    tg_buf_puts(&rq->rq_tail, "data: {\"id\":\"chatcmpl-");
    tg_buf_puts(&rq->rq_tail, rq->rq_id);
    tg_buf_printf(&rq->rq_tail, "\",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":",
                  (long long)(now_us() / 1000000));
    tg_agent_json_str(&rq->rq_tail, a->at_model, strlen(a->at_model));
    tg_buf_puts(&rq->rq_tail, ",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n"
                              "data: [DONE]\n\n");
    tg_req_mark_capped(rq, "length");
}

void tg_req_mark_capped(req_t *rq, const char *finish)
{
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    rq->rq_capped = 1;
    rq->rq_saw_done = 1;
    snprintf(rq->rq_finish, sizeof rq->rq_finish, "%s", finish);
    snprintf(a->at_msg, sizeof a->at_msg, "ended at its reservation: %lld output tokens allowed",
             (long long)rq->rq_out_allow);
}
