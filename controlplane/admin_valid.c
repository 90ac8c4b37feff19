/* admin_valid.c: shape and range checks of every object the admin API
 * writes. Pure functions (no store, no call): each returns 0 or -1 with a
 * message naming the offending field by its path, e.g.
 * "account.buckets[1].currency: must be a 3-letter code or a unit name", so
 * an operator fixes the input without reading the source. References to
 * other objects (a key's account, a route's channels) are checked against
 * the store by the handlers, inside the write's transaction. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "billing/tg_billing.h"
#include "controlplane/admin_int.h"
#include "meter/tg_price.h"

#define FAIL(...) return tg_errf(err, errlen, -1, __VA_ARGS__)

int tg_cp_valid_currency(const char *c)
{
    size_t n = strlen(c);
    if (n == 3 && isupper((unsigned char)c[0]) && isupper((unsigned char)c[1]) &&
        isupper((unsigned char)c[2]))
        return 1;
    /* a unit name: a lowercase word of 4+ characters ("credits", "tokens"),
     * so a mis-cased code such as "usd" is refused rather than taken for a
     * unit */
    if (n < 4 || n > 32 || !islower((unsigned char)c[0])) return 0;
    for (size_t i = 0; i < n; i++)
        if (!islower((unsigned char)c[i]) && !isdigit((unsigned char)c[i]) && c[i] != '_') return 0;
    return 1;
}

int tg_cp_valid_name(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
    return 1;
}

int tg_cp_valid_ident(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._:-", s[i])) return 0;
    return 1;
}

/* Catalog model names may also hold '/' ("accounts/x/models/y") and '@'. */
static int valid_model(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._:-/@", s[i])) return 0;
    return 1;
}

/* Model patterns of allowlists and price entries: a model name with '*'. */
static int valid_pattern(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._:-/@*?", s[i])) return 0;
    return 1;
}

int tg_cp_valid_cidr(const char *s)
{
    char buf[64];
    const char *slash = strchr(s, '/');
    unsigned char addr[16];
    int v6, max;
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (n == 0 || n >= sizeof buf) return 0;
    memcpy(buf, s, n);
    buf[n] = '\0';
    v6 = strchr(buf, ':') != NULL;
    if (inet_pton(v6 ? AF_INET6 : AF_INET, buf, addr) != 1) return 0;
    max = v6 ? 128 : 32;
    if (slash) {
        char *end;
        long bits;
        if (!isdigit((unsigned char)slash[1])) return 0;
        bits = strtol(slash + 1, &end, 10);
        if (*end || bits < 0 || bits > max) return 0;
    }
    return 1;
}

static int valid_route_type(int rt)
{
    return rt == TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_DIRECT ||
           rt == TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED;
}

static int check_limits(const char *path, Tollgate__V1__SpendLimit *const *l, size_t n, char *err,
                        size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        if (l[i]->window < 1 || l[i]->window > 4)
            FAIL("%s.spend_limits[%zu].window: must be day, week, month or total", path, i);
        if (l[i]->limit_nano <= 0)
            FAIL("%s.spend_limits[%zu].limit_nano: must be > 0", path, i);
        if (!tg_cp_valid_currency(l[i]->currency))
            FAIL("%s.spend_limits[%zu].currency: must be a 3-letter code or a unit name", path, i);
    }
    return 0;
}

static int check_rate(const char *path, const Tollgate__V1__RateLimit *r, char *err, size_t errlen)
{
    if (r && r->requests_per_minute < 0) FAIL("%s.rate_limit.requests_per_minute: must be >= 0", path);
    if (r && r->tokens_per_minute < 0) FAIL("%s.rate_limit.tokens_per_minute: must be >= 0", path);
    return 0;
}

static int check_status(const char *path, int st, char *err, size_t errlen)
{
    if (st < 0 || st > 3) FAIL("%s.status: unknown status %d", path, st);
    return 0;
}

int tg_cp_validate_account(const Tollgate__V1__Account *a, char *err, size_t errlen)
{
    int prepaid = a->billing_mode != TOLLGATE__V1__BILLING_MODE__BILLING_MODE_POSTPAID;
    if (!a->name[0]) FAIL("account.name: required");
    if (!tg_cp_valid_name(a->name, 128)) FAIL("account.name: must be 1-128 printable characters");
    if (a->billing_mode < 0 || a->billing_mode > 2)
        FAIL("account.billing_mode: must be prepaid or postpaid");
    if (a->n_buckets == 0) FAIL("account.buckets: at least one bucket is required");
    if (a->n_buckets > 16) FAIL("account.buckets: at most 16 buckets");
    for (size_t i = 0; i < a->n_buckets; i++) {
        const Tollgate__V1__BucketSpec *b = a->buckets[i];
        if (!tg_cp_valid_ident(b->name, 32))
            FAIL("account.buckets[%zu].name: must be 1-32 characters of A-Z a-z 0-9 . _ : -", i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(a->buckets[j]->name, b->name) == 0)
                FAIL("account.buckets[%zu].name: '%s' is used twice", i, b->name);
        if (!tg_cp_valid_currency(b->currency))
            FAIL("account.buckets[%zu].currency: must be a 3-letter code or a unit name", i);
        if (b->credit_limit_nano < 0) FAIL("account.buckets[%zu].credit_limit_nano: must be >= 0", i);
        if (prepaid && b->credit_limit_nano != 0)
            FAIL("account.buckets[%zu].credit_limit_nano: only postpaid accounts have a credit limit",
                 i);
    }
    for (size_t i = 0; i < a->n_route_buckets; i++) {
        const Tollgate__V1__RouteBucket *rb = a->route_buckets[i];
        int found = 0;
        if (!valid_route_type(rb->route_type))
            FAIL("account.route_buckets[%zu].route_type: must be direct or pooled", i);
        for (size_t j = 0; j < a->n_buckets; j++) found |= strcmp(a->buckets[j]->name, rb->bucket) == 0;
        if (!found)
            FAIL("account.route_buckets[%zu].bucket: no bucket '%s' in this account", i, rb->bucket);
    }
    if (check_status("account", a->status, err, errlen)) return -1;
    int64_t tz;
    if (tg_billing_tz(a->time_zone, &tz) != 0)
        FAIL("account.time_zone: '%s' is not UTC or a fixed offset like +08:00 or -05:30 (zone names are not "
             "supported)", a->time_zone);
    return check_limits("account", a->spend_limits, a->n_spend_limits, err, errlen);
}

int tg_cp_validate_project(const Tollgate__V1__Project *p, char *err, size_t errlen)
{
    if (!p->account_id[0]) FAIL("project.account_id: required");
    if (!p->name[0]) FAIL("project.name: required");
    if (!tg_cp_valid_name(p->name, 128)) FAIL("project.name: must be 1-128 printable characters");
    if (check_status("project", p->status, err, errlen)) return -1;
    if (check_rate("project", p->rate_limit, err, errlen)) return -1;
    return check_limits("project", p->spend_limits, p->n_spend_limits, err, errlen);
}

int tg_cp_validate_key(const Tollgate__V1__ApiKey *k, char *err, size_t errlen)
{
    if (!k->account_id[0]) FAIL("key.account_id: required");
    if (k->name[0] && !tg_cp_valid_name(k->name, 128))
        FAIL("key.name: must be 1-128 printable characters");
    for (size_t i = 0; i < k->n_tags; i++)
        if (!tg_cp_valid_name(k->tags[i], 64)) FAIL("key.tags[%zu]: must be 1-64 printable characters", i);
    if (k->expires_at_us < 0) FAIL("key.expires_at_us: must be >= 0 (0: never)");
    for (size_t i = 0; i < k->n_model_allowlist; i++)
        if (!valid_pattern(k->model_allowlist[i]))
            FAIL("key.model_allowlist[%zu]: '%s' is not a model name or glob", i,
                 k->model_allowlist[i]);
    for (size_t i = 0; i < k->n_ip_allowlist; i++)
        if (!tg_cp_valid_cidr(k->ip_allowlist[i]))
            FAIL("key.ip_allowlist[%zu]: '%s' is not an IPv4 or IPv6 CIDR", i, k->ip_allowlist[i]);
    for (size_t i = 0; i < k->n_allowed_route_types; i++)
        if (!valid_route_type(k->allowed_route_types[i]))
            FAIL("key.allowed_route_types[%zu]: must be direct or pooled", i);
    if (check_rate("key", k->rate_limit, err, errlen)) return -1;
    return check_limits("key", k->spend_limits, k->n_spend_limits, err, errlen);
}

int tg_cp_validate_channel(const Tollgate__V1__Channel *c, int creating, char *err, size_t errlen)
{
    (void)creating;
    if (!c->name[0]) FAIL("channel.name: required");
    if (!tg_cp_valid_name(c->name, 128)) FAIL("channel.name: must be 1-128 printable characters");
    /* any ProviderType this build has (agent/core_test checks that each has a
     * row in proto/vendor.c: its protocol and usage names) */
    if (c->provider == TOLLGATE__V1__PROVIDER_TYPE__PROVIDER_TYPE_UNSPECIFIED ||
        !protobuf_c_enum_descriptor_get_value(&tollgate__v1__provider_type__descriptor, c->provider))
    {
        char got[48] = "required";
        if (c->provider)
            snprintf(got, sizeof got, "%d is not a provider", (int)c->provider);
        FAIL("channel.provider: %s; use openai, anthropic, gemini, deepseek, qwen, kimi, glm or openai_compatible "
             "(any other OpenAI-compatible upstream)", got);
    }
    if (strncmp(c->base_url, "http://", 7) != 0 && strncmp(c->base_url, "https://", 8) != 0)
        FAIL("channel.base_url: must start with http:// or https://");
    if (strlen(c->base_url) > 1024 || strpbrk(c->base_url, " \t\r\n"))
        FAIL("channel.base_url: must be a URL without spaces, at most 1024 characters");
    if (!valid_route_type(c->route_type)) FAIL("channel.route_type: must be direct or pooled");
    if (c->cost_rate_ppm < 0 || c->cost_rate_ppm > (int64_t)TG_PRICE_MAX_RATE_PPM)
        FAIL("channel.cost_rate_ppm: must be 0..%u ppm (0 means 1.0x), billing's limit", TG_PRICE_MAX_RATE_PPM);
    if (c->credential[0] && c->credential_ref[0])
        FAIL("channel.credential_ref: give either credential or credential_ref, not both");
    if (c->credential_ref[0] && strncmp(c->credential_ref, "env:", 4) != 0 &&
        strncmp(c->credential_ref, "file:/", 6) != 0)
        FAIL("channel.credential_ref: must be env:NAME or file:/absolute/path");
    if (strpbrk(c->credential, "\r\n")) FAIL("channel.credential: must not contain line breaks");
    for (size_t i = 0; i < c->n_extra_headers; i++) {
        const Tollgate__V1__HeaderValue *h = c->extra_headers[i];
        if (!tg_cp_valid_ident(h->name, 128))
            FAIL("channel.extra_headers[%zu].name: not a header name", i);
        /* the upstream client frames each request itself; a second Host or
         * Content-Length would be sent twice (or replace the real one) */
        static const char *const framing[] = {"host", "content-length", "transfer-encoding", "connection"};
        for (size_t j = 0; j < sizeof framing / sizeof framing[0]; j++)
            if (strcasecmp(h->name, framing[j]) == 0)
                FAIL("channel.extra_headers[%zu].name: %s is set by the gateway for each request; remove it", i,
                     h->name);
        if (strpbrk(h->value, "\r\n"))
            FAIL("channel.extra_headers[%zu].value: must not contain line breaks", i);
    }
    return check_status("channel", c->status, err, errlen);
}

int tg_cp_validate_route(const Tollgate__V1__ModelRoute *r, char *err, size_t errlen)
{
    if (!r->model[0]) FAIL("route.model: required");
    if (!valid_model(r->model))
        FAIL("route.model: must be 1-128 characters of A-Z a-z 0-9 . _ : - / @");
    for (size_t i = 0; i < r->n_aliases; i++) {
        if (!valid_model(r->aliases[i])) FAIL("route.aliases[%zu]: not a model name", i);
        if (strcmp(r->aliases[i], r->model) == 0)
            FAIL("route.aliases[%zu]: '%s' is the route's own model", i, r->model);
    }
    if (r->n_tiers == 0) FAIL("route.tiers: at least one tier is required");
    {
        /* each target's channel is checked inside the write's transaction,
         * one compare each: keep the transaction within the store's limits */
        size_t total = 0;
        for (size_t t = 0; t < r->n_tiers; t++) total += r->tiers[t]->n_targets;
        if (total > 32) FAIL("route.tiers: at most 32 targets in all tiers together (got %zu)", total);
    }
    if (r->n_aliases > 32) FAIL("route.aliases: at most 32");
    for (size_t t = 0; t < r->n_tiers; t++) {
        if (r->tiers[t]->n_targets == 0) FAIL("route.tiers[%zu].targets: at least one target", t);
        for (size_t i = 0; i < r->tiers[t]->n_targets; i++) {
            const Tollgate__V1__RouteTarget *x = r->tiers[t]->targets[i];
            if (!x->channel_id[0]) FAIL("route.tiers[%zu].targets[%zu].channel_id: required", t, i);
            if (x->upstream_model[0] && !valid_model(x->upstream_model))
                FAIL("route.tiers[%zu].targets[%zu].upstream_model: not a model name", t, i);
        }
    }
    if (r->encoding[0] && strcmp(r->encoding, "cl100k_base") != 0 &&
        strcmp(r->encoding, "o200k_base") != 0)
        FAIL("route.encoding: must be cl100k_base, o200k_base or empty");
    if (r->policy && r->policy->max_attempts > 20) FAIL("route.policy.max_attempts: at most 20");
    if (r->deprecated_at_us < 0) FAIL("route.deprecated_at_us: must be >= 0");
    if (r->default_max_output_tokens < 0) FAIL("route.default_max_output_tokens: must be >= 0");
    return 0;
}

int tg_cp_validate_price_card(const Tollgate__V1__PriceCard *c, char *err, size_t errlen)
{
    if (!c->id[0]) FAIL("card.id: required");
    if (!tg_cp_valid_ident(c->id, 64)) FAIL("card.id: must be 1-64 characters of A-Z a-z 0-9 . _ : -");
    if (!tg_cp_valid_currency(c->currency))
        FAIL("card.currency: must be a 3-letter code or a unit name");
    if (c->effective_at_us < 0) FAIL("card.effective_at_us: must be >= 0 (0: now)");
    if (c->n_entries == 0) FAIL("card.entries: at least one entry is required");
    /* the card and its audit JSON must fit one store transaction (1.25 MiB) */
    if (c->n_entries > 2000) FAIL("card.entries: at most 2000 entries (got %zu)", c->n_entries);
    for (size_t i = 0; i < c->n_entries; i++) {
        const Tollgate__V1__PriceEntry *e = c->entries[i];
        if (!valid_pattern(e->model)) FAIL("card.entries[%zu].model: not a model name or glob", i);
        if (e->route_type != 0 && !valid_route_type(e->route_type))
            FAIL("card.entries[%zu].route_type: must be direct, pooled or unspecified", i);
        /* billing's own limits: what is accepted here always prices */
        char berr[TG_ERRLEN] = "";
        if (tg_billing_entry_check(e, berr, sizeof berr) != 0) FAIL("card.entries[%zu].%s", i, berr);
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->entries[j]->model, e->model) == 0 &&
                c->entries[j]->route_type == e->route_type)
                FAIL("card.entries[%zu]: model '%s' with this route type is already priced by "
                     "entries[%zu]",
                     i, e->model, j);
    }
    if (strlen(c->note) > 1024) FAIL("card.note: at most 1024 characters");
    return 0;
}

int tg_cp_validate_run_budget(const Tollgate__V1__RunBudget *b, char *err, size_t errlen)
{
    if (!tg_cp_valid_ident(b->run_id, 128))
        FAIL("budget.run_id: must be 1-128 characters of A-Z a-z 0-9 . _ : -");
    if (!b->account_id[0]) FAIL("budget.account_id: required");
    if (b->max_spend_nano < 0) FAIL("budget.max_spend_nano: must be >= 0 (0: no cap)");
    if (b->max_spend_nano > 0 && !tg_cp_valid_currency(b->currency))
        FAIL("budget.currency: must be a 3-letter code or a unit name");
    for (size_t i = 0; i < b->n_allowed_route_types; i++)
        if (!valid_route_type(b->allowed_route_types[i]))
            FAIL("budget.allowed_route_types[%zu]: must be direct or pooled", i);
    for (size_t i = 0; i < b->n_fallback_route_types; i++)
        if (!valid_route_type(b->fallback_route_types[i]))
            FAIL("budget.fallback_route_types[%zu]: must be direct or pooled", i);
    if (b->expires_at_us < 0) FAIL("budget.expires_at_us: must be >= 0");
    return 0;
}

int tg_cp_validate_policy(const Tollgate__V1__GatewayPolicy *p, char *err, size_t errlen)
{
    for (size_t i = 0; i < p->n_trusted_proxies; i++)
        if (!tg_cp_valid_cidr(p->trusted_proxies[i]))
            FAIL("policy.trusted_proxies[%zu]: '%s' is not an IPv4 or IPv6 CIDR", i,
                 p->trusted_proxies[i]);
    if (p->max_request_bytes < 0) FAIL("policy.max_request_bytes: must be >= 0");
    if (p->default_max_output_tokens < 0) FAIL("policy.default_max_output_tokens: must be >= 0");
    if (p->outbox_max_records < 0) FAIL("policy.outbox_max_records: must be >= 0");
    return 0;
}

/* ---- alert rules ------------------------------------------------------------------ */

/* Which kinds a scope admits (docs/SPEND.md "Alerts"). */
static int kind_fits_scope(int kind, const char *scope)
{
    int key = strcmp(scope, "key") == 0, proj = strcmp(scope, "project") == 0,
        acct = strcmp(scope, "account") == 0, run = strcmp(scope, "run") == 0,
        chan = strcmp(scope, "channel") == 0;
    switch (kind) {
    case TOLLGATE__V1__ALERT_KIND__ALERT_KIND_SPEND_THRESHOLD: return key || proj || acct || run;
    case TOLLGATE__V1__ALERT_KIND__ALERT_KIND_TOKEN_VELOCITY:
    case TOLLGATE__V1__ALERT_KIND__ALERT_KIND_SPEND_VELOCITY: return key || proj || acct;
    case TOLLGATE__V1__ALERT_KIND__ALERT_KIND_CHANNEL_ERROR_RATE: return chan;
    case TOLLGATE__V1__ALERT_KIND__ALERT_KIND_FALLBACK_RATE: return key || proj || acct || chan;
    case TOLLGATE__V1__ALERT_KIND__ALERT_KIND_FAILED_WITH_USAGE: return key || proj || acct || chan || run;
    default: return 0;
    }
}

int tg_cp_valid_alert_scope(const char *s)
{
    static const char *const scopes[] = {"account", "project", "key", "run", "channel", NULL};
    for (size_t i = 0; scopes[i]; i++)
        if (strcmp(scopes[i], s) == 0) return 1;
    return 0;
}

int tg_cp_valid_webhook_url(const char *u)
{
    size_t n = strlen(u), skip;
    if (strncmp(u, "http://", 7) == 0) skip = 7;
    else if (strncmp(u, "https://", 8) == 0) skip = 8;
    else return 0;
    if (n <= skip || n > 2048 || u[skip] == '/') return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)u[i] <= 0x20 || u[i] == 0x7f) return 0;
    return 1;
}

int tg_cp_validate_alert_rule(const Tollgate__V1__AlertRule *r, char *err, size_t errlen)
{
    int k = (int)r->kind;
    if (r->name[0] && !tg_cp_valid_name(r->name, 128))
        FAIL("rule.name: at most 128 printable characters");
    if (!tg_cp_valid_alert_scope(r->scope))
        FAIL("rule.scope: unknown scope '%s': must be account, project, key, run or channel", r->scope);
    if (!tg_cp_valid_ident(r->scope_id, 160))
        FAIL("rule.scope_id: required, 1-160 characters of A-Z a-z 0-9 . _ : -");
    if (k < TOLLGATE__V1__ALERT_KIND__ALERT_KIND_SPEND_THRESHOLD ||
        k > TOLLGATE__V1__ALERT_KIND__ALERT_KIND_FAILED_WITH_USAGE)
        FAIL("rule.kind: required: spend_threshold, token_velocity, spend_velocity, "
             "channel_error_rate, fallback_rate or failed_with_usage");
    if (!kind_fits_scope(k, r->scope))
        FAIL("rule.scope: a %s rule cannot have scope '%s' (docs/SPEND.md, Alerts)",
             k == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_SPEND_THRESHOLD ? "spend threshold"
             : k == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_CHANNEL_ERROR_RATE ? "channel error rate"
                                                                             : "velocity",
             r->scope);
    if (k == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_SPEND_THRESHOLD) {
        if (r->n_thresholds_pct == 0) FAIL("rule.thresholds_pct: at least one percentage");
        if (r->n_thresholds_pct > 16) FAIL("rule.thresholds_pct: at most 16");
        for (size_t i = 0; i < r->n_thresholds_pct; i++) {
            if (r->thresholds_pct[i] < 1 || r->thresholds_pct[i] > 100)
                FAIL("rule.thresholds_pct[%zu]: %u is not a percentage of 1 to 100", i,
                     r->thresholds_pct[i]);
            for (size_t j = 0; j < i; j++)
                if (r->thresholds_pct[j] == r->thresholds_pct[i])
                    FAIL("rule.thresholds_pct[%zu]: %u given twice", i, r->thresholds_pct[i]);
        }
    } else if (r->n_thresholds_pct) {
        FAIL("rule.thresholds_pct: only for spend_threshold rules");
    }
    if ((k == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_TOKEN_VELOCITY ||
         k == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_SPEND_VELOCITY) && r->velocity_limit <= 0)
        FAIL("rule.velocity_limit: must be > 0 (per minute)");
    if (k == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_CHANNEL_ERROR_RATE ||
        k == TOLLGATE__V1__ALERT_KIND__ALERT_KIND_FALLBACK_RATE) {
        if (r->rate_pct < 1 || r->rate_pct > 100)
            FAIL("rule.rate_pct: %u is not a percentage of 1 to 100", r->rate_pct);
    } else if (r->rate_pct > 100) {
        FAIL("rule.rate_pct: %u is over 100", r->rate_pct);
    }
    if (r->window_s > 86400) FAIL("rule.window_s: at most 86400 (a day)");
    if ((int)r->action < 0 || (int)r->action > TOLLGATE__V1__ALERT_ACTION__ALERT_ACTION_PAUSE_KEY)
        FAIL("rule.action: must be notify or pause_key");
    if (r->action == TOLLGATE__V1__ALERT_ACTION__ALERT_ACTION_PAUSE_KEY && strcmp(r->scope, "key") != 0)
        FAIL("rule.action: pause_key needs a key scope");
    if (r->n_webhooks > 8) FAIL("rule.webhooks: at most 8");
    for (size_t i = 0; i < r->n_webhooks; i++)
        if (!tg_cp_valid_webhook_url(r->webhooks[i]->url))
            FAIL("rule.webhooks[%zu].url: '%.64s' is not an http:// or https:// URL", i, r->webhooks[i]->url);
    return 0;
}
