/* config.c: a configuration snapshot turned into the lookup tables the
 * request path reads: key SHA-256 -> key, model or alias -> route, channel
 * id -> channel (credential resolved), account id -> account, account and
 * bucket -> balance. Built once per snapshot, off the request path, then
 * never changed: a request reads a table without a lock because nobody
 * writes it. Tables are open-addressing arrays, at most half full. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"
#include "billing/tg_billing.h"
#include "crypto/tg_crypto.h"
#include "pbjson/tg_pbjson.h"

typedef struct slot {
    const void *sl_key; /* string, or 32 bytes for key hashes */
    size_t sl_klen;
    void *sl_val;
} slot_t;

typedef struct table {
    slot_t *t_slots;
    size_t t_mask; /* capacity - 1 */
    int t_secret;  /* keys are digests of secrets: compared in constant time, so a
                    * probe's timing tells only where a digest sits (docs/SECURITY.md) */
} table_t;

struct tg_cfg {
    atomic_long cf_refs;
    tg_snap_t *cf_snap;
    table_t cf_keys;
    table_t cf_routes;
    table_t cf_chans;
    table_t cf_accounts;
    table_t cf_projects;
    table_t cf_runs;
    table_t cf_balances; /* "account_id\0bucket" */
    tg_chan_t *cf_chan;  /* n_channels */
    char **cf_balkeys;   /* n_balances keys, owned */
};

static uint64_t hash(const void *p, size_t n)
{
    /* FNV-1a: the keys are short and mostly unique ids. */
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static int table_init(table_t *t, size_t n)
{
    size_t cap = 8;
    while (cap < n * 2)
        cap *= 2;
    t->t_slots = tg_calloc(cap, sizeof *t->t_slots);
    t->t_mask = cap - 1;
    return t->t_slots ? 0 : TG_AGENT_ENOMEM;
}

/* Returns 1 when key was already present (nothing inserted), 0 otherwise. */
static int table_put(table_t *t, const void *key, size_t klen, void *val)
{
    size_t i = hash(key, klen) & t->t_mask;
    while (t->t_slots[i].sl_key) {
        if (t->t_slots[i].sl_klen == klen && memcmp(t->t_slots[i].sl_key, key, klen) == 0)
            return 1;
        i = (i + 1) & t->t_mask;
    }
    t->t_slots[i] = (slot_t){key, klen, val};
    return 0;
}

static void *table_get(const table_t *t, const void *key, size_t klen)
{
    if (!t->t_slots)
        return NULL;
    size_t i = hash(key, klen) & t->t_mask;
    while (t->t_slots[i].sl_key) {
        if (t->t_slots[i].sl_klen == klen && (t->t_secret ? tg_crypto_equal(t->t_slots[i].sl_key, key, klen)
                                                          : memcmp(t->t_slots[i].sl_key, key, klen) == 0))
            return t->t_slots[i].sl_val;
        i = (i + 1) & t->t_mask;
    }
    return NULL;
}

/* Reads an "env:NAME" or "file:/path" credential reference. */
static int resolve_credential(const Tollgate__V1__Channel *ch, char **out, char *err, size_t errlen)
{
    const char *ref = ch->credential_ref;
    *out = NULL;
    if (!ref || !*ref) {
        *out = tg_strdup(ch->credential ? ch->credential : "");
        return *out ? 0 : TG_AGENT_ENOMEM;
    }
    if (strncmp(ref, "env:", 4) == 0) {
        const char *v = getenv(ref + 4);
        if (!v)
            return tg_errf(err, errlen, TG_AGENT_ECONFIG, "channel %s: credential_ref %s: variable not set",
                           ch->id, ref);
        *out = tg_strdup(v);
        return *out ? 0 : TG_AGENT_ENOMEM;
    }
    if (strncmp(ref, "file:", 5) == 0) {
        FILE *f = fopen(ref + 5, "r");
        if (!f)
            return tg_errf(err, errlen, TG_AGENT_ECONFIG, "channel %s: credential_ref %s: %s", ch->id, ref,
                           strerror(errno));
        char buf[4096];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
            n--;
        *out = tg_strndup(buf, n);
        return *out ? 0 : TG_AGENT_ENOMEM;
    }
    return tg_errf(err, errlen, TG_AGENT_ECONFIG, "channel %s: credential_ref %s: expected env:NAME or file:PATH",
                   ch->id, ref);
}

static char *join_url(const char *base, const char *path)
{
    size_t n = strlen(base);
    while (n && base[n - 1] == '/')
        n--;
    size_t m = strlen(path);
    char *u = tg_malloc(n + m + 1);
    if (u) {
        memcpy(u, base, n);
        memcpy(u + n, path, m + 1);
    }
    return u;
}

static void cfg_free(tg_cfg_t *c)
{
    if (!c)
        return;
    if (c->cf_chan) {
        for (size_t i = 0; i < c->cf_snap->n_channels; i++) {
            tg_free(c->cf_chan[i].ch_credential);
            tg_free(c->cf_chan[i].ch_chat_url);
            tg_free(c->cf_chan[i].ch_models_url);
        }
    }
    if (c->cf_balkeys) {
        for (size_t i = 0; i < c->cf_snap->n_balances; i++)
            tg_free(c->cf_balkeys[i]);
    }
    tg_free(c->cf_chan);
    tg_free(c->cf_balkeys);
    tg_free(c->cf_keys.t_slots);
    tg_free(c->cf_routes.t_slots);
    tg_free(c->cf_chans.t_slots);
    tg_free(c->cf_accounts.t_slots);
    tg_free(c->cf_projects.t_slots);
    tg_free(c->cf_runs.t_slots);
    tg_free(c->cf_balances.t_slots);
    if (c->cf_snap)
        protobuf_c_message_free_unpacked(&c->cf_snap->base, NULL);
    tg_free(c);
}

static int build_routes(tg_cfg_t *c, char *err, size_t errlen)
{
    tg_snap_t *s = c->cf_snap;
    for (size_t i = 0; i < s->n_routes; i++) {
        tg_route_t *r = s->routes[i];
        if (!r->model || !*r->model)
            return tg_errf(err, errlen, TG_AGENT_ECONFIG, "routes[%zu]: empty model name", i);
        if (r->n_tiers == 0)
            return tg_errf(err, errlen, TG_AGENT_ECONFIG, "route %s: no tiers", r->model);
        for (size_t t = 0; t < r->n_tiers; t++) {
            for (size_t k = 0; k < r->tiers[t]->n_targets; k++) {
                const char *id = r->tiers[t]->targets[k]->channel_id;
                if (!table_get(&c->cf_chans, id, strlen(id)))
                    return tg_errf(err, errlen, TG_AGENT_ECONFIG,
                                   "route %s tier %zu target %zu: unknown channel \"%s\"", r->model, t, k, id);
            }
        }
        if (table_put(&c->cf_routes, r->model, strlen(r->model), r))
            return tg_errf(err, errlen, TG_AGENT_ECONFIG, "route %s: model name used twice", r->model);
        for (size_t a = 0; a < r->n_aliases; a++) {
            if (table_put(&c->cf_routes, r->aliases[a], strlen(r->aliases[a]), r))
                return tg_errf(err, errlen, TG_AGENT_ECONFIG, "route %s: alias %s already names a route",
                               r->model, r->aliases[a]);
        }
    }
    return 0;
}

int tg_cfg_build(tg_snap_t *snap, tg_cfg_t **out, char *err, size_t errlen)
{
    int rc = TG_AGENT_ENOMEM;
    size_t nroutes = 0;
    tg_cfg_t *c = tg_calloc(1, sizeof *c);
    *out = NULL;
    if (!c) {
        protobuf_c_message_free_unpacked(&snap->base, NULL);
        return tg_errf(err, errlen, TG_AGENT_ENOMEM, "out of memory building the configuration");
    }
    atomic_init(&c->cf_refs, 1);
    c->cf_snap = snap;
    for (size_t i = 0; i < snap->n_routes; i++)
        nroutes += 1 + snap->routes[i]->n_aliases;
    if (table_init(&c->cf_keys, snap->n_keys) || table_init(&c->cf_routes, nroutes) ||
        table_init(&c->cf_chans, snap->n_channels) || table_init(&c->cf_accounts, snap->n_accounts) ||
        table_init(&c->cf_balances, snap->n_balances) || table_init(&c->cf_projects, snap->n_projects) ||
        table_init(&c->cf_runs, snap->n_run_budgets))
        goto nomem;
    c->cf_keys.t_secret = 1;
    if (snap->n_channels && !(c->cf_chan = tg_calloc(snap->n_channels, sizeof *c->cf_chan)))
        goto nomem;
    if (snap->n_balances && !(c->cf_balkeys = tg_calloc(snap->n_balances, sizeof *c->cf_balkeys)))
        goto nomem;

    for (size_t i = 0; i < snap->n_keys; i++) {
        tg_key_t *k = snap->keys[i];
        if (k->secret_sha256.len != 32) {
            rc = tg_errf(err, errlen, TG_AGENT_ECONFIG, "key %s: secret_sha256 has %zu bytes, want 32", k->id,
                         k->secret_sha256.len);
            goto fail;
        }
        if (table_put(&c->cf_keys, k->secret_sha256.data, 32, k)) {
            rc = tg_errf(err, errlen, TG_AGENT_ECONFIG, "key %s: the same secret hash as another key", k->id);
            goto fail;
        }
    }
    for (size_t i = 0; i < snap->n_channels; i++) {
        const Tollgate__V1__Channel *ch = snap->channels[i];
        tg_chan_t *tc = &c->cf_chan[i];
        tc->ch_pb = ch;
        if (!ch->id || !*ch->id) {
            rc = tg_errf(err, errlen, TG_AGENT_ECONFIG, "channels[%zu]: empty id", i);
            goto fail;
        }
        if ((rc = resolve_credential(ch, &tc->ch_credential, err, errlen)) != 0)
            goto fail;
        tc->ch_chat_url = join_url(ch->base_url, "/chat/completions");
        tc->ch_models_url = join_url(ch->base_url, "/models");
        if (!tc->ch_chat_url || !tc->ch_models_url)
            goto nomem;
        if (table_put(&c->cf_chans, ch->id, strlen(ch->id), tc)) {
            rc = tg_errf(err, errlen, TG_AGENT_ECONFIG, "channel id %s used twice", ch->id);
            goto fail;
        }
    }
    for (size_t i = 0; i < snap->n_accounts; i++) {
        tg_account_t *a = snap->accounts[i];
        if (table_put(&c->cf_accounts, a->id, strlen(a->id), a)) {
            rc = tg_errf(err, errlen, TG_AGENT_ECONFIG, "account id %s used twice", a->id);
            goto fail;
        }
    }
    for (size_t i = 0; i < snap->n_projects; i++)
        if (table_put(&c->cf_projects, snap->projects[i]->id, strlen(snap->projects[i]->id), snap->projects[i])) {
            rc = tg_errf(err, errlen, TG_AGENT_ECONFIG, "project id %s used twice", snap->projects[i]->id);
            goto fail;
        }
    for (size_t i = 0; i < snap->n_run_budgets; i++)
        if (table_put(&c->cf_runs, snap->run_budgets[i]->run_id, strlen(snap->run_budgets[i]->run_id),
                      snap->run_budgets[i])) {
            rc = tg_errf(err, errlen, TG_AGENT_ECONFIG, "run budget %s listed twice", snap->run_budgets[i]->run_id);
            goto fail;
        }
    for (size_t i = 0; i < snap->n_balances; i++) {
        tg_balance_t *b = snap->balances[i];
        size_t la = strlen(b->account_id), lb = strlen(b->bucket);
        char *k = tg_malloc(la + lb + 2);
        if (!k)
            goto nomem;
        memcpy(k, b->account_id, la + 1);
        memcpy(k + la + 1, b->bucket, lb + 1);
        c->cf_balkeys[i] = k;
        if (table_put(&c->cf_balances, k, la + lb + 1, b)) {
            rc = tg_errf(err, errlen, TG_AGENT_ECONFIG, "balance %s/%s listed twice", b->account_id, b->bucket);
            goto fail;
        }
    }
    if ((rc = build_routes(c, err, errlen)) != 0)
        goto fail;
    *out = c;
    return 0;
nomem:
    rc = tg_errf(err, errlen, TG_AGENT_ENOMEM, "out of memory building the configuration");
fail:
    cfg_free(c);
    return rc;
}

int tg_cfg_load(const void *data, size_t len, tg_cfg_t **out, char *err, size_t errlen)
{
    const char *p = data;
    size_t i = 0;
    *out = NULL;
    while (i < len && (p[i] == ' ' || p[i] == '\n' || p[i] == '\r' || p[i] == '\t'))
        i++;
    tg_snap_t *snap = NULL;
    if (i < len && p[i] == '{') {
        ProtobufCMessage *m = NULL;
        char why[TG_ERRLEN] = "";
        if (tg_pbjson_loads(&tollgate__v1__snapshot__descriptor, p, len, &m, why, sizeof why) != 0)
            return tg_errf(err, errlen, TG_AGENT_ECONFIG, "snapshot JSON: %s", why);
        snap = (tg_snap_t *)m;
    } else {
        snap = tollgate__v1__snapshot__unpack(NULL, len, data);
        if (!snap)
            return tg_errf(err, errlen, TG_AGENT_ECONFIG,
                           "snapshot: %zu bytes are neither a packed tollgate.v1.Snapshot nor JSON", len);
    }
    return tg_cfg_build(snap, out, err, errlen);
}

void tg_cfg_ref(tg_cfg_t *c)
{
    atomic_fetch_add_explicit(&c->cf_refs, 1, memory_order_relaxed);
}

void tg_cfg_unref(tg_cfg_t *c)
{
    if (c && atomic_fetch_sub_explicit(&c->cf_refs, 1, memory_order_acq_rel) == 1)
        cfg_free(c);
}

const tg_snap_t *tg_cfg_snapshot(const tg_cfg_t *c)
{
    return c->cf_snap;
}

const tg_key_t *tg_cfg_key(const tg_cfg_t *c, const uint8_t sha256[32])
{
    return table_get(&c->cf_keys, sha256, 32);
}

const tg_route_t *tg_cfg_route(const tg_cfg_t *c, const char *model)
{
    return table_get(&c->cf_routes, model, strlen(model));
}

const tg_chan_t *tg_cfg_channel(const tg_cfg_t *c, const char *id)
{
    return table_get(&c->cf_chans, id, strlen(id));
}

const tg_account_t *tg_cfg_account(const tg_cfg_t *c, const char *id)
{
    return table_get(&c->cf_accounts, id, strlen(id));
}

const Tollgate__V1__Project *tg_cfg_project(const tg_cfg_t *c, const char *id)
{
    return table_get(&c->cf_projects, id, strlen(id));
}

const Tollgate__V1__RunBudget *tg_cfg_run(const tg_cfg_t *c, const char *run_id)
{
    return table_get(&c->cf_runs, run_id, strlen(run_id));
}

const tg_balance_t *tg_cfg_balance(const tg_cfg_t *c, const char *account_id, const char *bucket)
{
    char k[512];
    size_t la = strlen(account_id), lb = strlen(bucket);
    if (la + lb + 2 > sizeof k)
        return NULL;
    memcpy(k, account_id, la + 1);
    memcpy(k + la + 1, bucket, lb + 1);
    return table_get(&c->cf_balances, k, la + lb + 1);
}

const char *tg_cfg_bucket(const tg_account_t *a, int route_type)
{
    /* the control plane's map (billing/); when it finds no bucket among
     * the account's (the snapshot may list it in balances only) the record
     * still needs a name: the override, else the default */
    const char *b = tg_billing_bucket(a, route_type);
    if (b)
        return b;
    if (a) {
        for (size_t i = 0; i < a->n_route_buckets; i++)
            if ((int)a->route_buckets[i]->route_type == route_type && a->route_buckets[i]->bucket &&
                *a->route_buckets[i]->bucket)
                return a->route_buckets[i]->bucket;
    }
    return route_type == TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED ? "wallet" : "credit";
}

int64_t tg_cfg_max_request_bytes(const tg_cfg_t *c)
{
    const Tollgate__V1__GatewayPolicy *p = c->cf_snap->policy;
    return p && p->max_request_bytes > 0 ? p->max_request_bytes : 4 * 1024 * 1024;
}

size_t tg_cfg_trusted_proxies(const tg_cfg_t *c)
{
    const Tollgate__V1__GatewayPolicy *p = c->cf_snap->policy;
    return p ? p->n_trusted_proxies : 0;
}

int tg_cfg_trusted_proxy(const tg_cfg_t *c, const tg_ip_t *ip)
{
    const Tollgate__V1__GatewayPolicy *p = c->cf_snap->policy;
    if (!p)
        return 0;
    for (size_t i = 0; i < p->n_trusted_proxies; i++)
        if (tg_agent_cidr_match(p->trusted_proxies[i], ip) == 1)
            return 1;
    return 0;
}

const Tollgate__V1__PriceCard *tg_cfg_price(const tg_cfg_t *c, const char *model, int route_type,
                                            const char *currency, int64_t t_us,
                                            const Tollgate__V1__PriceEntry **entry)
{
    const tg_snap_t *s = c->cf_snap;
    return tg_billing_select(s->price_cards, s->n_price_cards, model, route_type, currency, t_us, entry);
}

int64_t tg_cfg_floor(const tg_account_t *a, const tg_balance_t *b)
{
    if (!a || a->billing_mode != TOLLGATE__V1__BILLING_MODE__BILLING_MODE_POSTPAID)
        return 0;
    return b && b->credit_limit_nano > 0 ? -b->credit_limit_nano : 0;
}

const char *tg_cfg_currency(const tg_cfg_t *c, const tg_account_t *a, const char *bucket)
{
    if (!a)
        return "";
    const tg_balance_t *b = tg_cfg_balance(c, a->id, bucket);
    if (b && b->currency && *b->currency)
        return b->currency;
    for (size_t i = 0; i < a->n_buckets; i++)
        if (strcmp(a->buckets[i]->name, bucket) == 0 && a->buckets[i]->currency)
            return a->buckets[i]->currency;
    return "";
}
