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
 * unless keys_only. Returns OK or a failed status. */
typedef int (*version_fn)(cp_actx_t *a, int64_t version, const tg_store_kv_t *kv, void *arg);

static int each_version(cp_actx_t *a, const char *id, int keys_only, version_fn fn, void *arg)
{
    char prefix[128], start[TG_STORE_MAX_KEY + 2], err[TG_ERRLEN] = "";
    uint8_t end[TG_STORE_MAX_KEY];
    size_t plen = (size_t)snprintf(prefix, sizeof prefix, "%s%s/", TG_CP_K_PRICE, id), start_len,
           end_len;
    int more = 1, code = TG_RPC_CODE_OK;
    memcpy(start, prefix, plen);
    start_len = plen;
    end_len = tg_store_prefix_end(prefix, plen, end);
    while (more && code == TG_RPC_CODE_OK) {
        tg_store_range_req_t rq = {.rq_key = start, .rq_key_len = start_len, .rq_end = end,
                                   .rq_end_len = end_len, .rq_limit = 256,
                                   .rq_keys_only = keys_only};
        tg_store_range_res_t rs;
        int rc = tg_store_range(a->ax_cp->cp_store, &rq, &rs, err, sizeof err);
        if (rc != 0) return cp_fail(a, tg_cp_store_code(rc), "store: %s", err);
        more = rs.rs_more;
        for (size_t i = 0; i < rs.rs_n && code == TG_RPC_CODE_OK; i++) {
            char num[24];
            const tg_store_kv_t *kv = &rs.rs_kvs[i];
            if (kv->kv_key_len != plen + 20) continue;
            snprintf(num, sizeof num, "%.*s", 20, (const char *)kv->kv_key + plen);
            code = fn(a, (int64_t)strtoll(num, NULL, 10), kv, arg);
        }
        if (rs.rs_n) tg_store_range_next(&rs, (uint8_t *)start, &start_len);
        tg_store_range_res_free(&rs);
    }
    return code;
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
static int list_current(cp_actx_t *a, const Tollgate__V1__ListPriceCardsRequest *q, tg_buf_t *reply)
{
    size_t want = tg_cp_page_size(q->page_size), n = 0, plen = strlen(TG_CP_K_PRICE);
    Tollgate__V1__ListPriceCardsResponse r = TOLLGATE__V1__LIST_PRICE_CARDS_RESPONSE__INIT;
    Tollgate__V1__PriceCard **cards = tg_pool_calloc(a->ax_pool, want * sizeof(*cards));
    char start[TG_STORE_MAX_KEY + 2], cur_id[80] = "", tok[200] = "", err[TG_ERRLEN] = "";
    uint8_t end[TG_STORE_MAX_KEY];
    size_t start_len, end_len;
    int64_t now = tg_cp_now_us();
    ProtobufCMessage *best = NULL, *latest = NULL;
    int more = 1, code = TG_RPC_CODE_OK, stop = 0;

    if (!cards) return cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
    if (q->page_token[0]) {
        char id[80];
        if (tg_cp_page_token_decode(q->page_token, id, sizeof id) != 0)
            return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT,
                           "page_token: not a token from a previous page of this list");
        /* after every version of card `id`: "<id>/" with '/' + 1 = '0' */
        start_len = (size_t)snprintf(start, sizeof start, "%s%s0", TG_CP_K_PRICE, id);
    } else {
        start_len = (size_t)snprintf(start, sizeof start, "%s", TG_CP_K_PRICE);
    }
    end_len = tg_store_prefix_end(TG_CP_K_PRICE, plen, end);

    /* flushes the card being collected into the page */
#define FLUSH()                                                                                    \
    do {                                                                                           \
        if (cur_id[0]) {                                                                           \
            ProtobufCMessage *keep = best ? best : latest;                                         \
            if (best) tg_rpc_pb_free(latest);                                                      \
            if (keep) cards[n++] = (Tollgate__V1__PriceCard *)keep;                                \
            best = latest = NULL;                                                                  \
        }                                                                                          \
    } while (0)

    while (more && !stop) {
        tg_store_range_req_t rq = {.rq_key = start, .rq_key_len = start_len, .rq_end = end,
                                   .rq_end_len = end_len, .rq_limit = 256};
        tg_store_range_res_t rs;
        int rc = tg_store_range(a->ax_cp->cp_store, &rq, &rs, err, sizeof err);
        if (rc != 0) {
            code = cp_fail(a, tg_cp_store_code(rc), "store: %s", err);
            goto done;
        }
        more = rs.rs_more;
        for (size_t i = 0; i < rs.rs_n && !stop; i++) {
            const tg_store_kv_t *kv = &rs.rs_kvs[i];
            const char *rest = (const char *)kv->kv_key + plen;
            size_t rlen = kv->kv_key_len - plen;
            const char *slash = memchr(rest, '/', rlen);
            ProtobufCMessage *m = NULL;
            Tollgate__V1__PriceCard *c;
            if (!slash || (size_t)(slash - rest) >= sizeof cur_id) continue;
            if (strlen(cur_id) != (size_t)(slash - rest) ||
                memcmp(cur_id, rest, (size_t)(slash - rest)) != 0) {
                FLUSH();
                if (n == want) {
                    stop = 1; /* another card follows: the page is full */
                    break;
                }
                snprintf(cur_id, sizeof cur_id, "%.*s", (int)(slash - rest), rest);
            }
            if (tg_rpc_pb_unpack(&tollgate__v1__price_card__descriptor, kv->kv_val,
                                 kv->kv_val_len, &m, NULL, 0) != 0)
                continue;
            c = (Tollgate__V1__PriceCard *)m;
            c->revision = kv->kv_mod_rev;
            if (c->effective_at_us <= now) {
                tg_rpc_pb_free(best);
                best = m;
            } else {
                tg_rpc_pb_free(latest);
                latest = m;
            }
        }
        if (rs.rs_n) tg_store_range_next(&rs, (uint8_t *)start, &start_len);
        tg_store_range_res_free(&rs);
    }
    if (stop) {
        tg_cp_page_token_encode(cards[n - 1]->id, tok, sizeof tok);
    } else if (n < want) {
        FLUSH();
    } else if (cur_id[0]) {
        /* the page filled exactly as the range ended with a card pending */
        tg_rpc_pb_free(best);
        tg_rpc_pb_free(latest);
        best = latest = NULL;
        tg_cp_page_token_encode(cards[n - 1]->id, tok, sizeof tok);
    }
#undef FLUSH
    r.cards = cards;
    r.n_cards = n;
    r.next_page_token = tok;
    code = cp_reply(a, &r.base, reply);
done:
    tg_rpc_pb_free(best);
    tg_rpc_pb_free(latest);
    for (size_t i = 0; i < n; i++) tg_rpc_pb_free(&cards[i]->base);
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
