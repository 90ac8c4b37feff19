/* ratelimit.c: a key's and its project's rate limits (requests and tokens
 * per minute) held across all agents on spend leases, and the headers that
 * report them.
 *
 * Each limit is a lease scope per key (or project) and UTC minute
 * (billing/tg_billing.h "rate windows"): the control plane grants each
 * agent a slice of the minute's allowance, the agent admits from its slice
 * under the lease table's mutex with no network hop, hands back what sits
 * idle, and the slice is of no use once its minute is over. A request
 * reserves once, before its first attempt (preauth.c calls
 * tg_req_rate_reserve after the estimate), in the minute of that first
 * reservation: one request, and its token estimate (prompt at most plus
 * the output allowance, the numbers the spend estimate uses), on the key's
 * limits and then on its project's; when it ends (receipt.c) the request
 * counts if it was sent upstream, and the tokens are trued up to its usage
 * (0 when nothing was served). Nothing settles a rate scope: what an agent
 * admitted stays in its hold until the minute ends. Without a control
 * plane each agent holds the whole limit (the lease table's local
 * authority), and when the control plane cannot be reached the same
 * applies through the offline allowance. The bound on the excess is in
 * docs/SPEND.md, "Rate limits". */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "agent/ratelimit.h"
#include "agent/request_int.h"
#include "billing/tg_billing.h"

/* ---- formats (ratelimit.h) ------------------------------------------------------- */

int tg_rate_fmt_duration(int64_t us, char *out, size_t outlen)
{
    int64_t ms = us <= 0 ? 0 : (us + 999) / 1000;
    int n;
    if (ms == 0) {
        n = snprintf(out, outlen, "0s");
    } else if (ms < 1000) {
        n = snprintf(out, outlen, "%lldms", (long long)ms);
    } else {
        long long h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, f = ms % 1000;
        char frac[8] = "";
        if (f) {
            /* Go prints the fraction without trailing zeros */
            snprintf(frac, sizeof frac, ".%03lld", f);
            for (size_t i = strlen(frac); i > 1 && frac[i - 1] == '0'; i--)
                frac[i - 1] = '\0';
        }
        if (h)
            n = snprintf(out, outlen, "%lldh%lldm%lld%ss", h, m, s, frac);
        else if (m)
            n = snprintf(out, outlen, "%lldm%lld%ss", m, s, frac);
        else
            n = snprintf(out, outlen, "%lld%ss", s, frac);
    }
    if (n < 0 || (size_t)n >= outlen) {
        if (outlen)
            out[0] = '\0';
        return -1;
    }
    return 0;
}

int tg_rate_fmt_time(int64_t t_us, char *out, size_t outlen)
{
    time_t t = (time_t)(t_us / 1000000);
    struct tm tm;
    if (t_us < 0 || !gmtime_r(&t, &tm) || strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
        if (outlen)
            out[0] = '\0';
        return -1;
    }
    return 0;
}

int64_t tg_rate_retry_after(int64_t now_us, int64_t end_us)
{
    int64_t s = (end_us - now_us + 999999) / 1000000;
    return s > 0 ? s : 1;
}

int64_t tg_rate_remaining(int64_t limit, int64_t free_part, int64_t unheld)
{
    int64_t r = (free_part > 0 ? free_part : 0) + (unheld > 0 ? unheld : 0);
    return r < 0 ? 0 : r > limit ? limit : r;
}

/* ---- the request's reservations ---------------------------------------------------- */

static const char *const WHAT_NAME[2] = {"requests", "tokens"};

static const Tollgate__V1__Project *project_of(const req_t *rq)
{
    const tg_key_t *k = rq->rq_key;
    const Tollgate__V1__Project *p = k && k->project_id[0] ? tg_cfg_project(rq->rq_cfg, k->project_id) : NULL;
    return p && strcmp(p->account_id, k->account_id) == 0 ? p : NULL;
}

/* The limit of slot `slot` and the id of its owner (the key's, the
 * project's); 0 when there is none. */
static int64_t limit_of(const req_t *rq, int slot, const char **owner_id)
{
    const Tollgate__V1__RateLimit *rl = NULL;
    *owner_id = NULL;
    if (!rq->rq_key)
        return 0;
    if (SLOT_OWNER(slot) == TG_BILLING_RATE_KEY) {
        rl = rq->rq_key->rate_limit;
        *owner_id = rq->rq_key->id;
    } else {
        const Tollgate__V1__Project *p = project_of(rq);
        rl = p ? p->rate_limit : NULL;
        *owner_id = p ? p->id : NULL;
    }
    if (!rl)
        return 0;
    return SLOT_WHAT(slot) == TG_BILLING_RATE_TOKENS ? rl->tokens_per_minute : rl->requests_per_minute;
}

/* (once per request) The limits in the minute of now: the request's
 * admission (its first reservation, once the body is read: a slow upload
 * must not reserve in a minute that already ended), or the answer's, for a
 * request refused before it. A scope id that does not fit (out of memory,
 * an id too long) leaves its limit unset. */
static void init(req_t *rq, int64_t now)
{
    rq->rq_rate_init = 1;
    for (int i = 0; i < RATE_SLOTS; i++) {
        const char *oid;
        char id[200];
        int64_t lim = limit_of(rq, i, &oid);
        if (lim > 0 &&
            tg_billing_rate_scope(SLOT_OWNER(i), oid, SLOT_WHAT(i), now, id, sizeof id, &rq->rq_rate_start,
                                  &rq->rq_rate_end) == 0 &&
            (rq->rq_rate_id[i] = tg_pool_strndup(rq->rq_pool, id, strlen(id))) != NULL)
            rq->rq_rate_lim[i] = lim;
    }
}

/* What this agent knows of limit `limit` in the window `id`: *remaining
 * (tg_rate_remaining of its last lease answer; before any answer, the limit
 * less what this agent counted) and *as_of (0: no answer yet). */
static void state(req_t *rq, const char *id, int64_t limit, int64_t *remaining, int64_t *as_of)
{
    tg_lease_info_t li;
    memset(&li, 0, sizeof li);
    tg_lease_tab_t *lt = rq->rq_w->w_agent->a_leases;
    *as_of = 0;
    if (!lt || tg_lease_info(lt, rq->rq_acct->id, id, &li) != 0) {
        *remaining = limit;
        return;
    }
    if (li.li_left_at_us > 0) {
        *remaining = tg_rate_remaining(limit, li.li_free, li.li_avail_nano);
        *as_of = li.li_left_at_us;
        return;
    }
    *remaining = tg_rate_remaining(limit, limit - li.li_owed - li.li_reserved, 0);
}

/* 429 in the client's protocol shape, with Retry-After until the window
 * resets (none when the request can never fit). */
static void refuse(req_t *rq, int slot, int64_t asked, int64_t now)
{
    char when[40] = "", ra[24];
    int what = SLOT_WHAT(slot);
    int64_t lim = rq->rq_rate_lim[slot];
    const char *unit =
        what == TG_BILLING_RATE_TOKENS ? "tokens per minute (TPM)" : "requests per minute (RPM)";
    const char *whose = SLOT_OWNER(slot) == TG_BILLING_RATE_KEY ? "this API key" : "this API key's project";
    rq->rq_refused_budget = 1; /* its zero-cost receipt says why */
    if (asked > lim) {
        tg_req_fail(rq, 429, WHAT_NAME[what], "rate_limit_exceeded",
                    TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                    "Request too large for %s's %s: limit %lld, requested %lld (the prompt at most plus "
                    "max_tokens). Lower max_tokens or shorten the prompt.",
                    whose, unit, (long long)lim, (long long)asked);
        return;
    }
    int64_t secs = tg_rate_retry_after(now, rq->rq_rate_end);
    tg_rate_fmt_time(rq->rq_rate_end, when, sizeof when);
    snprintf(ra, sizeof ra, "%lld", (long long)secs);
    if (rq->rq_c)
        add_header(rq->rq_c, "Retry-After", ra);
    tg_req_fail(rq, 429, WHAT_NAME[what], "rate_limit_exceeded",
                TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                "Rate limit reached for %s on %s: limit %lld, requested %lld. The window resets at %s: "
                "please try again in %llds.",
                whose, unit, (long long)lim, (long long)asked, when, (long long)secs);
}

int tg_req_rate_reserve(req_t *rq, int64_t now)
{
    tg_lease_tab_t *lt = rq->rq_w->w_agent->a_leases;
    if (!lt || !rq->rq_key)
        return 0;
    if (!rq->rq_rate_init)
        init(rq, now);
    int exact_tried = 0;
    while (rq->rq_rate_step < RATE_SLOTS) {
        int i = rq->rq_rate_step;
        int64_t lim = rq->rq_rate_lim[i];
        if (lim <= 0) {
            rq->rq_rate_step++;
            continue;
        }
        int tokens = SLOT_WHAT(i) == TG_BILLING_RATE_TOKENS;
        int64_t n = tokens ? rq->rq_input_max + rq->rq_out_est : 1;
        if (n > lim && tokens && !exact_tried++ && tg_req_exact_input(rq))
            continue; /* the exact prompt count may fit where the byte bound did not */
        if (n > lim) {
            refuse(rq, i, n, now);
            return -1;
        }
        /* without the control plane, each agent may admit up to the whole
         * limit in the window, counting what it admitted under leases (its
         * offline allowance on this scope) */
        int rc = tg_lease_reserve(lt, rq->rq_acct->id, rq->rq_rate_id[i], n, &rq->rq_ticket, lim, now);
        if (rc == TG_LEASE_WAIT)
            return 1;
        if (rc != TG_LEASE_OK) {
            rq->rq_ticket = 0;
            if (tokens && !exact_tried++ && tg_req_exact_input(rq))
                continue;
            refuse(rq, i, n, now);
            return -1;
        }
        rq->rq_ticket = 0;
        rq->rq_rate_res[i] = n;
        rq->rq_rate_step++;
    }
    return 0;
}

void tg_req_rate_release(req_t *rq, int sent, int64_t tokens)
{
    tg_lease_tab_t *lt = rq->rq_w->w_agent->a_leases;
    for (int i = 0; i < RATE_SLOTS; i++) {
        if (rq->rq_rate_res[i] <= 0)
            continue;
        int64_t used = SLOT_WHAT(i) == TG_BILLING_RATE_TOKENS ? (sent ? tokens : 0) : (sent ? 1 : 0);
        tg_lease_release(lt, rq->rq_acct->id, rq->rq_rate_id[i], rq->rq_rate_res[i], used);
        rq->rq_rate_res[i] = 0;
    }
}

/* The response reports, per kind (requests, tokens), the limit with the
 * least left of the key's and its project's: the one the next request
 * meets first. */
void tg_req_rate_headers(req_t *rq, tg_front_conn_t *hr)
{
    if (!rq->rq_key || !rq->rq_acct)
        return;
    int64_t now = now_us();
    if (!rq->rq_rate_init)
        init(rq, now);
    for (int w = 0; w < 2; w++) {
        int64_t lim = 0, left = 0;
        for (int o = 0; o < 2; o++) {
            int i = RATE_SLOT(o, w);
            int64_t l = 0, as_of = 0;
            if (rq->rq_rate_lim[i] <= 0)
                continue;
            state(rq, rq->rq_rate_id[i], rq->rq_rate_lim[i], &l, &as_of);
            if (lim == 0 || l < left) {
                lim = rq->rq_rate_lim[i];
                left = l;
            }
        }
        if (lim <= 0)
            continue;
        char name[64], v[40];
        const char *what = WHAT_NAME[w];
        int anth = rq->rq_cproto == TG_PROTO_ANTHROPIC;
        snprintf(v, sizeof v, "%lld", (long long)lim);
        snprintf(name, sizeof name, anth ? "anthropic-ratelimit-%s-limit" : "x-ratelimit-limit-%s", what);
        add_header(hr, name, v);
        snprintf(v, sizeof v, "%lld", (long long)left);
        snprintf(name, sizeof name, anth ? "anthropic-ratelimit-%s-remaining" : "x-ratelimit-remaining-%s",
                 what);
        add_header(hr, name, v);
        if (anth)
            tg_rate_fmt_time(rq->rq_rate_end, v, sizeof v);
        else
            tg_rate_fmt_duration(rq->rq_rate_end - now, v, sizeof v);
        snprintf(name, sizeof name, anth ? "anthropic-ratelimit-%s-reset" : "x-ratelimit-reset-%s", what);
        add_header(hr, name, v);
    }
}

void tg_req_rate_view(req_t *rq, tg_buf_t *b, int64_t now)
{
    int n = 0;
    tg_buf_puts(b, "[");
    for (int i = 0; i < RATE_SLOTS; i++) {
        char id[200], t[40], d[40];
        const char *oid;
        int64_t lim = limit_of(rq, i, &oid), start = 0, end = 0, left = 0, as_of = 0;
        if (lim <= 0 ||
            tg_billing_rate_scope(SLOT_OWNER(i), oid, SLOT_WHAT(i), now, id, sizeof id, &start, &end) != 0)
            continue;
        state(rq, id, lim, &left, &as_of);
        tg_buf_printf(b, "%s{\"limit_type\":\"%s_per_minute\",\"scope\":\"%s\",\"scope_id\":", n++ ? "," : "",
                      WHAT_NAME[SLOT_WHAT(i)], SLOT_OWNER(i) == TG_BILLING_RATE_KEY ? "key" : "project");
        tg_agent_json_str(b, id, strlen(id));
        tg_rate_fmt_time(start, t, sizeof t);
        tg_buf_printf(b, ",\"limit\":%lld,\"remaining\":%lld,\"window_start\":\"%s\"", (long long)lim,
                      (long long)left, t);
        tg_rate_fmt_time(end, t, sizeof t);
        tg_rate_fmt_duration(end - now, d, sizeof d);
        tg_buf_printf(b, ",\"resets_at\":\"%s\",\"resets_in\":\"%s\",\"as_of\":", t, d);
        if (as_of > 0 && tg_rate_fmt_time(as_of, t, sizeof t) == 0)
            tg_buf_printf(b, "\"%s\",\"age_s\":%.3f}", t, (double)(now - as_of > 0 ? now - as_of : 0) / 1e6);
        else
            tg_buf_puts(b, "null,\"age_s\":null}");
    }
    tg_buf_puts(b, "]");
}
