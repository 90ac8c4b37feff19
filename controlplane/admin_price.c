/* admin_price.c: versioned price cards. Publishing never overwrites: it
 * writes TG_CP_K_PRICE/<card>/<version> with version = the latest + 1 (the
 * transaction checks that key is still absent, so two concurrent publishers
 * cannot both get the same version), so every ledger row can name the exact
 * version that priced it, forever. "The version in effect" at time t is the
 * highest version whose effective_at_us <= t (billing's tg_billing_select,
 * the rule the agent prices with).
 *
 * A publish is refused when another card of the same currency prices the
 * same model and route type (an identical entry) in its version in effect
 * or a scheduled one: which card priced a request must not depend on the
 * order cards happen to be listed in. Publishes take TG_CP_K_PRICE_GUARD in
 * their transaction so two concurrent ones cannot both pass that check.
 * Routed models that no card in effect prices are not refused, but named
 * in the reply's warnings (and PutRoute's): the agent refuses them. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billing/tg_billing.h"
#include "controlplane/admin_int.h"

/* Calls fn for each stored version of card id (ascending), with values
 * unless keys_only. fn returns OK to go on or a failure status. Returns OK
 * or a failed status. */
typedef int (*version_fn)(cp_actx_t *a, int64_t version, const tg_store_kv_t *kv, void *arg);

typedef struct version_walk {
    version_fn vw_fn;
    void *vw_arg;
} version_walk_t;

static int version_step(cp_actx_t *a, const tg_store_kv_t *kv, const char *suffix, size_t len,
                        void *arg)
{
    version_walk_t *w = arg;
    char num[24];
    if (len != 20) return CP_SCAN_GO; /* not <20-digit version> */
    snprintf(num, sizeof num, "%.20s", suffix);
    return w->vw_fn(a, (int64_t)strtoll(num, NULL, 10), kv, w->vw_arg); /* OK == CP_SCAN_GO */
}

static int each_version(cp_actx_t *a, const char *id, int keys_only, version_fn fn, void *arg)
{
    version_walk_t w = {fn, arg};
    return cp_scan(a, cp_fmt(a, "%s%s/", TG_CP_K_PRICE, id), NULL, 0, keys_only, version_step, &w);
}

static int note_latest(cp_actx_t *a, int64_t v, const tg_store_kv_t *kv, void *arg)
{
    (void)a;
    (void)kv;
    *(int64_t *)arg = v;
    return TG_RPC_CODE_OK;
}

/* ---- every stored version: the overlap check and the warnings ------------------------- */

typedef struct card_set {
    Tollgate__V1__PriceCard **cs_v; /* every stored version; tg_rpc_pb_free each */
    size_t cs_n, cs_cap;
} card_set_t;

static int collect_card(cp_actx_t *a, const tg_store_kv_t *kv, const char *suffix, size_t len, void *arg)
{
    card_set_t *cs = arg;
    ProtobufCMessage *m = NULL;
    char err[TG_ERRLEN] = "";
    if (cs->cs_n == cs->cs_cap) {
        size_t cap = cs->cs_cap ? cs->cs_cap * 2 : 16;
        Tollgate__V1__PriceCard **v = tg_realloc(cs->cs_v, cap * sizeof(*v));
        if (!v) return cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory reading price cards");
        cs->cs_v = v;
        cs->cs_cap = cap;
    }
    if (tg_rpc_pb_unpack(&tollgate__v1__price_card__descriptor, kv->kv_val, kv->kv_val_len, &m, err,
                         sizeof err) != 0)
        return cp_fail(a, TG_RPC_CODE_INTERNAL, "price card %.*s: %s", (int)len, suffix, err);
    cs->cs_v[cs->cs_n++] = (Tollgate__V1__PriceCard *)m;
    return CP_SCAN_GO;
}

static void free_cards(card_set_t *cs)
{
    for (size_t i = 0; i < cs->cs_n; i++) tg_rpc_pb_free(&cs->cs_v[i]->base);
    tg_free(cs->cs_v);
    memset(cs, 0, sizeof *cs);
}

static int load_cards(cp_actx_t *a, card_set_t *cs)
{
    memset(cs, 0, sizeof *cs);
    return cp_scan(a, TG_CP_K_PRICE, NULL, 0, 0, collect_card, cs);
}

/* Whether version o can be in effect now or later: it is scheduled, or no
 * newer version of its card is in effect now. */
static int live_version(const card_set_t *cs, const Tollgate__V1__PriceCard *o, int64_t now)
{
    if (o->effective_at_us > now) return 1;
    for (size_t i = 0; i < cs->cs_n; i++) {
        const Tollgate__V1__PriceCard *p = cs->cs_v[i];
        if (p->version > o->version && p->effective_at_us <= now && strcmp(p->id, o->id) == 0) return 0;
    }
    return 1;
}

static const char *route_type_word(int rt)
{
    return rt == TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_DIRECT   ? "direct"
           : rt == TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED ? "pooled"
                                                                : "any";
}

/* FAILED_PRECONDITION when a live version of another card of c's currency
 * has an entry for the same model and route type as one of c's. */
static int check_overlap(cp_actx_t *a, const card_set_t *cs, const Tollgate__V1__PriceCard *c, int64_t now)
{
    for (size_t i = 0; i < cs->cs_n; i++) {
        const Tollgate__V1__PriceCard *o = cs->cs_v[i];
        if (strcmp(o->id, c->id) == 0 || strcmp(o->currency, c->currency) != 0 || !live_version(cs, o, now))
            continue;
        for (size_t j = 0; j < c->n_entries; j++)
            for (size_t k = 0; k < o->n_entries; k++)
                if (c->entries[j]->route_type == o->entries[k]->route_type &&
                    strcmp(c->entries[j]->model, o->entries[k]->model) == 0)
                    return cp_fail(a, TG_RPC_CODE_FAILED_PRECONDITION,
                                   "card.entries[%zu]: model '%s' (route type %s) is already priced in %s "
                                   "by card '%s' version %" PRId64
                                   ": one card per currency may price a model and route type; remove "
                                   "it from one of the cards",
                                   j, c->entries[j]->model, route_type_word((int)c->entries[j]->route_type),
                                   c->currency, o->id, o->version);
    }
    return TG_RPC_CODE_OK;
}

/* Whether a card version in effect at t prices model on a direct or a
 * pooled channel (any currency). */
static int priced(Tollgate__V1__PriceCard *const *v, size_t n, const char *model, int64_t t)
{
    const Tollgate__V1__PriceEntry *pe;
    return tg_billing_select(v, n, model, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_DIRECT, "", t, &pe) ||
           tg_billing_select(v, n, model, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED, "", t, &pe);
}

#define MAX_WARNINGS 20

typedef struct warn_walk {
    Tollgate__V1__PriceCard **ww_v;
    size_t ww_n;
    int64_t ww_at;
    char **ww_out; /* MAX_WARNINGS + 1, pool strings */
    size_t ww_nout, ww_more;
    int64_t ww_version;
} warn_walk_t;

static int warn_route(cp_actx_t *a, const tg_store_kv_t *kv, const char *suffix, size_t len, void *arg)
{
    warn_walk_t *w = arg;
    char *model = tg_pool_strndup(a->ax_pool, suffix, len);
    (void)kv;
    if (!model) return cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
    if (priced(w->ww_v, w->ww_n, model, w->ww_at)) return CP_SCAN_GO;
    if (w->ww_nout < MAX_WARNINGS)
        w->ww_out[w->ww_nout++] =
            cp_fmt(a, "routed model '%s' is priced by no card in effect once version %" PRId64
                      " applies: the agent refuses its requests",
                   model, w->ww_version);
    else
        w->ww_more++;
    return CP_SCAN_GO;
}

/* Fills c->warnings (pool memory: the caller clears it before the request
 * is freed) with the routed models no card prices at c's effective time,
 * c included. Returns a status code. */
static int publish_warnings(cp_actx_t *a, const card_set_t *cs, Tollgate__V1__PriceCard *c)
{
    warn_walk_t w;
    int code;
    memset(&w, 0, sizeof w);
    w.ww_v = tg_pool_alloc(a->ax_pool, (cs->cs_n + 1) * sizeof(*w.ww_v));
    w.ww_out = tg_pool_alloc(a->ax_pool, (MAX_WARNINGS + 1) * sizeof(*w.ww_out));
    if (!w.ww_v || !w.ww_out) return cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
    if (cs->cs_n) memcpy(w.ww_v, cs->cs_v, cs->cs_n * sizeof(*w.ww_v));
    w.ww_v[cs->cs_n] = c;
    w.ww_n = cs->cs_n + 1;
    w.ww_at = c->effective_at_us > tg_cp_now_us() ? c->effective_at_us : tg_cp_now_us();
    w.ww_version = c->version;
    if ((code = cp_scan(a, TG_CP_K_ROUTE, NULL, 0, 1, warn_route, &w)) != TG_RPC_CODE_OK) return code;
    if (w.ww_more)
        w.ww_out[w.ww_nout++] = cp_fmt(a, "... and %zu more routed models priced by no card", w.ww_more);
    c->warnings = w.ww_out;
    c->n_warnings = w.ww_nout;
    return TG_RPC_CODE_OK;
}

int cp_price_route_warning(cp_actx_t *a, const char *model, const char **warning)
{
    card_set_t cs;
    int code = load_cards(a, &cs);
    *warning = NULL;
    if (code == TG_RPC_CODE_OK && !priced(cs.cs_v, cs.cs_n, model, tg_cp_now_us()))
        *warning = cp_fmt(a, "route.model: no price card in effect prices '%s': the agent refuses its "
                             "requests until a card does",
                          model);
    free_cards(&cs);
    return code;
}

/* The mod_revision of TG_CP_K_PRICE_GUARD (0 before the first publish). */
static int guard_revision(cp_actx_t *a, int64_t *rev)
{
    tg_store_kv_t *kv = NULL;
    char err[TG_ERRLEN] = "";
    int rc = tg_store_get(a->ax_cp->cp_store, TG_CP_K_PRICE_GUARD, strlen(TG_CP_K_PRICE_GUARD), &kv, NULL, err,
                          sizeof err);
    if (rc != 0) return cp_fail(a, tg_cp_store_code(rc), "store: %s", err);
    *rev = kv ? kv->kv_mod_rev : 0;
    tg_store_kv_free(kv);
    return TG_RPC_CODE_OK;
}

static int publish(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__PublishPriceCardRequest *q =
        (const Tollgate__V1__PublishPriceCardRequest *)reqm;
    Tollgate__V1__PriceCard *c = q->card;
    Tollgate__V1__Actor *saved;
    char **saved_warnings;
    size_t saved_nwarnings;
    char err[TG_ERRLEN] = "", vs[21];
    int64_t latest = 0, rev, guard_rev = 0;
    const char *key;
    card_set_t cs;
    cp_wr_t w;
    int code;
    if (!c) return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "card: required");
    if (tg_cp_validate_price_card(c, err, sizeof err) != 0)
        return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "%s", err);
    if ((code = each_version(a, c->id, 1, note_latest, &latest)) != TG_RPC_CODE_OK) return code;
    if (q->expected_version && q->expected_version != latest)
        return cp_fail(a, TG_RPC_CODE_FAILED_PRECONDITION,
                       "price card '%s' is at version %" PRId64 ", not the expected %" PRId64
                       ": re-read it and retry",
                       c->id, latest, q->expected_version);
    /* the guard's revision before the cards are read: a publish committed
     * after this read moves it, and this one's compare then fails */
    if ((code = guard_revision(a, &guard_rev)) != TG_RPC_CODE_OK) return code;
    if ((code = load_cards(a, &cs)) != TG_RPC_CODE_OK) goto out;
    if ((code = check_overlap(a, &cs, c, tg_cp_now_us())) != TG_RPC_CODE_OK) goto out;
    c->version = latest + 1;
    c->created_at_us = tg_cp_now_us();
    if (c->effective_at_us == 0) c->effective_at_us = c->created_at_us;
    c->revision = 0;
    tg_cp_seqstr((uint64_t)c->version, vs);
    key = cp_fmt(a, "%s%s/%s", TG_CP_K_PRICE, c->id, vs);
    /* published_by is the caller, whatever the request said, and warnings
     * are output only; the request's own values are put back before the
     * request is freed */
    saved = c->published_by;
    saved_warnings = c->warnings;
    saved_nwarnings = c->n_warnings;
    c->published_by = &a->ax_actor;
    c->warnings = NULL;
    c->n_warnings = 0;
    cp_wr_init(&w, a->ax_pool);
    cp_wr_cmp(&w, key, TG_STORE_CMP_VERSION, TG_STORE_EQ, 0, TG_RPC_CODE_ABORTED,
              cp_fmt(a, "price card '%s' version %" PRId64 " was published concurrently: retry",
                     c->id, c->version));
    cp_wr_cmp(&w, TG_CP_K_PRICE_GUARD, TG_STORE_CMP_MOD_REV, TG_STORE_EQ, guard_rev, TG_RPC_CODE_ABORTED,
              "another price card was published concurrently: retry");
    cp_wr_put_pb(&w, key, &c->base);
    cp_wr_put(&w, TG_CP_K_PRICE_GUARD, key, strlen(key));
    cp_wr_audit(&w, "price_card", cp_fmt(a, "%s/%" PRId64, c->id, c->version), NULL, &c->base);
    code = cp_wr_commit(a, &w, &rev);
    if (code == TG_RPC_CODE_OK) code = publish_warnings(a, &cs, c);
    if (code == TG_RPC_CODE_OK) {
        c->revision = rev;
        code = cp_reply(a, &c->base, reply);
    }
    c->published_by = saved;
    c->warnings = saved_warnings;
    c->n_warnings = saved_nwarnings;
out:
    free_cards(&cs);
    return code;
}

/* Finds the version in effect at `at` (or exactly `want` when > 0). */
typedef struct pick {
    int64_t pk_want;
    int64_t pk_at;
    ProtobufCMessage *pk_card;  /* tg_rpc_pb_free */
    int64_t pk_first_future;    /* earliest effective time of a later version */
} pick_t;

static int pick_version(cp_actx_t *a, int64_t v, const tg_store_kv_t *kv, void *arg)
{
    pick_t *p = arg;
    ProtobufCMessage *m = NULL;
    Tollgate__V1__PriceCard *c;
    char err[TG_ERRLEN] = "";
    if (p->pk_want && v != p->pk_want) return TG_RPC_CODE_OK;
    if (tg_rpc_pb_unpack(&tollgate__v1__price_card__descriptor, kv->kv_val, kv->kv_val_len, &m, err,
                         sizeof err) != 0)
        return cp_fail(a, TG_RPC_CODE_INTERNAL, "price card version %" PRId64 ": %s", v, err);
    c = (Tollgate__V1__PriceCard *)m;
    c->revision = kv->kv_mod_rev;
    if (!p->pk_want && c->effective_at_us > p->pk_at) {
        if (!p->pk_first_future || c->effective_at_us < p->pk_first_future)
            p->pk_first_future = c->effective_at_us;
        tg_rpc_pb_free(m);
        return TG_RPC_CODE_OK;
    }
    tg_rpc_pb_free(p->pk_card);
    p->pk_card = m; /* ascending versions: the last kept is the highest */
    return TG_RPC_CODE_OK;
}

static int get_card(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__GetPriceCardRequest *q = (const Tollgate__V1__GetPriceCardRequest *)reqm;
    pick_t p = {q->version, tg_cp_now_us(), NULL, 0};
    int code;
    if (!tg_cp_valid_ident(q->id, 64))
        return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "id: not a price card id");
    if (q->version < 0) return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "version: must be >= 0");
    code = each_version(a, q->id, 0, pick_version, &p);
    if (code == TG_RPC_CODE_OK && !p.pk_card) {
        if (q->version)
            code = cp_fail(a, TG_RPC_CODE_NOT_FOUND, "price card '%s' has no version %" PRId64,
                           q->id, q->version);
        else if (p.pk_first_future) {
            char when[32];
            tg_cp_rfc3339(p.pk_first_future, when);
            code = cp_fail(a, TG_RPC_CODE_NOT_FOUND,
                           "price card '%s' has no version in effect yet (the first takes effect "
                           "at %s)",
                           q->id, when);
        } else {
            code = cp_fail(a, TG_RPC_CODE_NOT_FOUND, "price card '%s' not found", q->id);
        }
    }
    if (code == TG_RPC_CODE_OK) code = cp_reply(a, p.pk_card, reply);
    tg_rpc_pb_free(p.pk_card);
    return code;
}

/* ListPriceCards with id: every version of the card, a page at a time. */
static int list_versions(cp_actx_t *a, const Tollgate__V1__ListPriceCardsRequest *q, tg_buf_t *reply)
{
    char prefix[128];
    if (!tg_cp_valid_ident(q->id, 64))
        return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "id: not a price card id");
    snprintf(prefix, sizeof prefix, "%s%s/", TG_CP_K_PRICE, q->id);
    return cp_list(a, prefix, &tollgate__v1__price_card__descriptor, q->page_size, q->page_token,
                   NULL, NULL, NULL, &tollgate__v1__list_price_cards_response__descriptor, reply);
}

/* Without id: the current version of every card (the one in effect now,
 * else the latest published), cards in id order, paged by card id. */
typedef struct current_walk {
    Tollgate__V1__PriceCard **cw_cards;
    size_t cw_n, cw_want;
    char cw_id[80];             /* card being collected, "" before the first */
    ProtobufCMessage *cw_best;  /* its highest version in effect now */
    ProtobufCMessage *cw_later; /* its highest version, when none is in effect yet */
    int64_t cw_now;
    int cw_more;                /* another card follows the page */
} current_walk_t;

/* Moves the card being collected into the page. */
static void current_flush(current_walk_t *w)
{
    ProtobufCMessage *keep = w->cw_best ? w->cw_best : w->cw_later;
    if (w->cw_best) tg_rpc_pb_free(w->cw_later);
    if (keep) w->cw_cards[w->cw_n++] = (Tollgate__V1__PriceCard *)keep;
    w->cw_best = w->cw_later = NULL;
}

static int current_step(cp_actx_t *a, const tg_store_kv_t *kv, const char *suffix, size_t len,
                        void *arg)
{
    current_walk_t *w = arg;
    const char *slash = memchr(suffix, '/', len);
    size_t idlen = slash ? (size_t)(slash - suffix) : 0;
    ProtobufCMessage *m = NULL;
    Tollgate__V1__PriceCard *c;
    (void)a;
    if (!slash || idlen >= sizeof w->cw_id) return CP_SCAN_GO;
    if (strlen(w->cw_id) != idlen || memcmp(w->cw_id, suffix, idlen) != 0) {
        current_flush(w);
        if (w->cw_n == w->cw_want) {
            w->cw_more = 1;
            return CP_SCAN_STOP;
        }
        snprintf(w->cw_id, sizeof w->cw_id, "%.*s", (int)idlen, suffix);
    }
    if (tg_rpc_pb_unpack(&tollgate__v1__price_card__descriptor, kv->kv_val, kv->kv_val_len, &m, NULL,
                         0) != 0)
        return CP_SCAN_GO;
    c = (Tollgate__V1__PriceCard *)m;
    c->revision = kv->kv_mod_rev;
    if (c->effective_at_us <= w->cw_now) {
        tg_rpc_pb_free(w->cw_best);
        w->cw_best = m;
    } else {
        tg_rpc_pb_free(w->cw_later);
        w->cw_later = m;
    }
    return CP_SCAN_GO;
}

static int list_current(cp_actx_t *a, const Tollgate__V1__ListPriceCardsRequest *q, tg_buf_t *reply)
{
    Tollgate__V1__ListPriceCardsResponse r = TOLLGATE__V1__LIST_PRICE_CARDS_RESPONSE__INIT;
    current_walk_t w;
    char from[80], tok[200] = "";
    int code;

    memset(&w, 0, sizeof w);
    w.cw_want = tg_cp_page_size(q->page_size);
    w.cw_now = tg_cp_now_us();
    w.cw_cards = tg_pool_calloc(a->ax_pool, w.cw_want * sizeof(*w.cw_cards));
    if (!w.cw_cards) return cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
    if (q->page_token[0]) {
        char id[72];
        if (tg_cp_page_token_decode(q->page_token, id, sizeof id) != 0)
            return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT,
                           "page_token: not a token from a previous page of this list");
        /* after every version of card `id`: "<id>/" with '/' + 1 = '0' */
        snprintf(from, sizeof from, "%s0", id);
    }
    code = cp_scan(a, TG_CP_K_PRICE, q->page_token[0] ? from : NULL, q->page_token[0] ? strlen(from) : 0,
                   0, current_step, &w);
    if (code != TG_RPC_CODE_OK) goto done;
    if (w.cw_more) tg_cp_page_token_encode(w.cw_cards[w.cw_n - 1]->id, tok, sizeof tok);
    else current_flush(&w);
    r.cards = w.cw_cards;
    r.n_cards = w.cw_n;
    r.next_page_token = tok;
    code = cp_reply(a, &r.base, reply);
done:
    tg_rpc_pb_free(w.cw_best);
    tg_rpc_pb_free(w.cw_later);
    for (size_t i = 0; i < w.cw_n; i++) tg_rpc_pb_free(&w.cw_cards[i]->base);
    return code;
}

static int list_cards(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__ListPriceCardsRequest *q = (const Tollgate__V1__ListPriceCardsRequest *)reqm;
    return q->id[0] ? list_versions(a, q, reply) : list_current(a, q, reply);
}

const cp_method_t tg_cp_price_methods[] = {
    {"PublishPriceCard", &tollgate__v1__publish_price_card_request__descriptor, CP_NEED_PRICING,
     "publish price cards", publish, NULL},
    {"GetPriceCard", &tollgate__v1__get_price_card_request__descriptor, CP_NEED_READ,
     "read price cards", get_card, NULL},
    {"ListPriceCards", &tollgate__v1__list_price_cards_request__descriptor, CP_NEED_READ,
     "list price cards", list_cards, NULL},
    {NULL, NULL, 0, NULL, NULL, NULL},
};
