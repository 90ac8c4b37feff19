/* admin_price.c: versioned price cards. Publishing never overwrites: it
 * writes TG_CP_K_PRICE/<card>/<version> with version = the latest + 1 (the
 * transaction checks that key is still absent, so two concurrent publishers
 * cannot both get the same version), so every ledger row can name the exact
 * version that priced it, forever. "The version in effect" at time t is the
 * highest version whose effective_at_us <= t. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int publish(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__PublishPriceCardRequest *q =
        (const Tollgate__V1__PublishPriceCardRequest *)reqm;
    Tollgate__V1__PriceCard *c = q->card;
    Tollgate__V1__Actor *saved;
    char err[TG_ERRLEN] = "", vs[21];
    int64_t latest = 0, rev;
    const char *key;
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
    c->version = latest + 1;
    c->created_at_us = tg_cp_now_us();
    if (c->effective_at_us == 0) c->effective_at_us = c->created_at_us;
    c->revision = 0;
    tg_cp_seqstr((uint64_t)c->version, vs);
    key = cp_fmt(a, "%s%s/%s", TG_CP_K_PRICE, c->id, vs);
    /* published_by is the caller, whatever the request said; the request's
     * own value is put back before the request is freed */
    saved = c->published_by;
    c->published_by = &a->ax_actor;
    cp_wr_init(&w, a->ax_pool);
    cp_wr_cmp(&w, key, TG_STORE_CMP_VERSION, TG_STORE_EQ, 0, TG_RPC_CODE_ABORTED,
              cp_fmt(a, "price card '%s' version %" PRId64 " was published concurrently: retry",
                     c->id, c->version));
    cp_wr_put_pb(&w, key, &c->base);
    cp_wr_audit(&w, "price_card", cp_fmt(a, "%s/%" PRId64, c->id, c->version), NULL, &c->base);
    code = cp_wr_commit(a, &w, &rev);
    if (code == TG_RPC_CODE_OK) {
        c->revision = rev;
        code = cp_reply(a, &c->base, reply);
    }
    c->published_by = saved;
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
