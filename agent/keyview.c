/* keyview.c: the key holder's own view (GET /v1/tollgate/key): what an API
 * key may do and how much it has left, asked with the key itself, no admin
 * token. Answered from what this agent knows, never with a network hop:
 *
 *   - the key from the snapshot (name, display prefix, status, models);
 *   - each spend limit of the key, its project and its account, in the window that
 *     holds now (the scope ids preauth.c reserves on), from the last lease
 *     answer for that scope (LeaseResponse.balance_nano: the limit less its
 *     settled spend) plus this agent's own unsettled spend and reservations;
 *     a scope this agent never leased is reported unknown, not guessed;
 *   - each bucket of the account: the newer of the snapshot's balance and
 *     the last lease answer, less what this agent owes and holds;
 *   - the key's and its project's rate limits in the current minute (ratelimit.c): what this
 *     agent may still admit as of its last lease answer, and the reset.
 * Every number carries when it was known (as_of, age_s): other agents'
 * spend since then is not in it. tg_req_bucket_left is the same number for
 * x-tollgate-budget-remaining (finish.c). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "agent/request_int.h"
#include "billing/tg_billing.h"
#include "meter/tg_price.h"

int tg_req_bucket_left(req_t *rq, const tg_account_t *a, const char *bucket, int64_t *left, int64_t *as_of_us)
{
    const tg_balance_t *b = tg_cfg_balance(rq->rq_cfg, a->id, bucket);
    tg_lease_tab_t *lt = rq->rq_w->w_agent->a_leases;
    tg_lease_info_t li;
    memset(&li, 0, sizeof li);
    int have_lease = lt && tg_lease_info(lt, a->id, bucket, &li) == 0;
    int64_t l, at;
    if (have_lease && li.li_left_at_us > 0 && (!b || li.li_left_at_us >= b->updated_at_us)) {
        l = li.li_left_nano - li.li_floor_nano;
        at = li.li_left_at_us;
    } else if (b) {
        l = b->balance_nano - tg_cfg_floor(a, b);
        at = b->updated_at_us;
    } else {
        return -1;
    }
    /* this agent's spend the balance does not hold yet, and its requests
     * in flight (other agents' are not known here) */
    if (have_lease)
        l -= li.li_owed + li.li_reserved;
    *left = l;
    *as_of_us = at;
    return 0;
}

static void iso_time(tg_buf_t *b, int64_t us)
{
    char when[40];
    time_t t = (time_t)(us / 1000000);
    struct tm tm;
    if (us <= 0 || us == INT64_MAX || !gmtime_r(&t, &tm)) {
        tg_buf_puts(b, "null");
        return;
    }
    strftime(when, sizeof when, "\"%Y-%m-%dT%H:%M:%SZ\"", &tm);
    tg_buf_puts(b, when);
}

static void str(tg_buf_t *b, const char *s)
{
    if (!s)
        s = "";
    tg_agent_json_str(b, s, strlen(s));
}

/* An amount as the API's JSON shows money: nano-units as a string (int64
 * passes JavaScript's safe integers) and the decimal beside it. */
static void amount(tg_buf_t *b, const char *name, int64_t nano)
{
    char d[32];
    tg_buf_printf(b, "\"%s_nano\":\"%lld\",\"%s\":\"%s\"", name, (long long)nano, name,
                  tg_price_format(nano, d, sizeof d));
}

static void age(tg_buf_t *b, int64_t as_of, int64_t now)
{
    tg_buf_puts(b, "\"as_of\":");
    iso_time(b, as_of);
    tg_buf_printf(b, ",\"as_of_us\":\"%lld\",\"age_s\":%.3f", (long long)as_of,
                  (double)(now - as_of > 0 ? now - as_of : 0) / 1e6);
}

/* The limits of one owner (kind "key", "project" or "account"), each in the window
 * that holds now in the account's zone. */
static void limits(req_t *rq, tg_buf_t *b, int *n, const char *kind, const char *id,
                   Tollgate__V1__SpendLimit *const *l, size_t nl, int64_t now)
{
    tg_lease_tab_t *lt = rq->rq_w->w_agent->a_leases;
    int64_t tz = 0;
    if (tg_billing_tz(rq->rq_acct->time_zone, &tz) != 0)
        tz = 0; /* as preauth.c: an old snapshot's unknown zone counts in UTC */
    for (size_t i = 0; i < nl; i++) {
        char scope[200];
        int64_t start, end;
        const char *wn = tg_billing_window_name((int)l[i]->window);
        if (!wn || tg_billing_window((int)l[i]->window, now, tz, &start, &end) != 0 ||
            tg_billing_scope(kind, id, (int)l[i]->window, now, tz, scope, sizeof scope) != 0)
            continue;
        tg_buf_puts(b, (*n)++ ? ",{" : "{");
        tg_buf_printf(b, "\"scope\":\"%s\",\"scope_id\":", kind);
        str(b, scope);
        tg_buf_printf(b, ",\"window\":\"%s\",\"currency\":", wn);
        str(b, l[i]->currency);
        tg_buf_puts(b, ",");
        amount(b, "limit", l[i]->limit_nano);
        tg_buf_puts(b, ",\"window_start\":");
        iso_time(b, start);
        tg_buf_puts(b, ",\"resets_at\":");
        iso_time(b, end);
        tg_lease_info_t li;
        if (!lt || tg_lease_info(lt, rq->rq_acct->id, scope, &li) != 0 || li.li_left_at_us <= 0) {
            /* numbers this agent does not have are not made up */
            tg_buf_puts(b, ",\"spent_nano\":null,\"spent\":null,\"held_nano\":null,\"held\":null,"
                           "\"remaining_nano\":null,\"remaining\":null,\"as_of\":null,\"age_s\":null,"
                           "\"unknown_reason\":\"this agent has not leased this limit's window yet: no request of "
                           "this key in this window went through it\"}");
            continue;
        }
        /* settled spend as of the last lease answer, plus this agent's own
         * spend not settled yet; held: its requests in flight */
        int64_t left = li.li_left_nano - li.li_floor_nano;
        int64_t spent = l[i]->limit_nano - left + li.li_owed;
        tg_buf_puts(b, ",");
        amount(b, "spent", spent);
        tg_buf_puts(b, ",");
        amount(b, "held", li.li_reserved);
        tg_buf_puts(b, ",");
        amount(b, "remaining", left - li.li_owed - li.li_reserved);
        tg_buf_puts(b, ",");
        age(b, li.li_left_at_us, now);
        tg_buf_puts(b, "}");
    }
}

static const char *status_name(int s)
{
    switch (s) {
    case TOLLGATE__V1__KEY_STATUS__KEY_STATUS_PAUSED: return "paused";
    case TOLLGATE__V1__KEY_STATUS__KEY_STATUS_REVOKED: return "revoked";
    default: return "active";
    }
}

static void render(req_t *rq, tg_buf_t *b)
{
    const tg_key_t *k = rq->rq_key;
    const tg_account_t *a = rq->rq_acct;
    int64_t now = now_us();
    int acct_off = a->status != TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_UNSPECIFIED &&
                   a->status != TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_ACTIVE;
    int paused = k->status == TOLLGATE__V1__KEY_STATUS__KEY_STATUS_PAUSED || acct_off;
    tg_buf_puts(b, "{\"object\":\"tollgate.key\",\"name\":");
    str(b, k->name);
    tg_buf_puts(b, ",\"id_prefix\":");
    str(b, k->display_prefix);
    tg_buf_printf(b, ",\"status\":\"%s\"", paused ? "paused" : status_name((int)k->status));
    if (paused) {
        tg_buf_puts(b, ",\"status_reason\":");
        str(b, k->status_reason && *k->status_reason ? k->status_reason
               : acct_off                            ? "the account is not active"
                                                     : "");
    }
    tg_buf_puts(b, ",\"expires_at\":");
    iso_time(b, k->expires_at_us);
    tg_buf_puts(b, ",\"allowed_models\":");
    if (!k->n_model_allowlist) {
        tg_buf_puts(b, "\"all\"");
    } else {
        tg_buf_puts(b, "[");
        for (size_t i = 0; i < k->n_model_allowlist; i++) {
            if (i)
                tg_buf_puts(b, ",");
            str(b, k->model_allowlist[i]);
        }
        tg_buf_puts(b, "]");
    }
    tg_buf_puts(b, ",\"limits\":[");
    int n = 0;
    limits(rq, b, &n, "key", k->id, k->spend_limits, k->n_spend_limits, now);
    const Tollgate__V1__Project *p = k->project_id[0] ? tg_cfg_project(rq->rq_cfg, k->project_id) : NULL;
    if (p)
        limits(rq, b, &n, "project", p->id, p->spend_limits, p->n_spend_limits, now);
    limits(rq, b, &n, "account", a->id, a->spend_limits, a->n_spend_limits, now);
    tg_buf_puts(b, "],\"rate_limits\":");
    tg_req_rate_view(rq, b, now);
    tg_buf_puts(b, ",\"buckets\":[");
    for (size_t i = 0; i < a->n_buckets; i++) {
        const char *name = a->buckets[i]->name;
        int64_t left = 0, at = 0;
        tg_buf_puts(b, i ? ",{\"bucket\":" : "{\"bucket\":");
        str(b, name);
        tg_buf_puts(b, ",\"currency\":");
        str(b, tg_cfg_currency(rq->rq_cfg, a, name));
        if (tg_req_bucket_left(rq, a, name, &left, &at) != 0) {
            tg_buf_puts(b, ",\"remaining_nano\":null,\"remaining\":null,\"as_of\":null,\"age_s\":null,"
                           "\"unknown_reason\":\"this agent has no balance for this bucket\"}");
            continue;
        }
        tg_buf_puts(b, ",");
        amount(b, "remaining", left);
        tg_buf_puts(b, ",");
        age(b, at, now);
        tg_buf_puts(b, "}");
    }
    tg_buf_puts(b, "]}\n");
}

void tg_req_handle_keyview(req_t *rq)
{
    rq->rq_view = 1;
    if (tg_req_authenticate(rq) != 0)
        return;
    tg_buf_t b;
    tg_buf_init(&b, 1u << 20);
    render(rq, &b);
    add_header(rq->rq_c, "x-request-id", rq->rq_id);
    add_header(rq->rq_c, "Cache-Control", "no-store");
    if (!b.b_data || b.b_len == 0) {
        tg_buf_free(&b);
        tg_req_fail(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY, "out of memory");
        return;
    }
    tg_req_reply_json(rq, b.b_data, b.b_len); /* not metered: no receipt */
    tg_buf_free(&b);
}
