/* request.c: one client request's lifecycle, from the front's handler call
 * to its end.
 *
 *   1. route the path (POST endpoints of tg_req_endpoints[], GET /v1/models,
 *      GET /v1/tollgate/key (keyview.c), health, CORS preflight); take the worker's configuration reference;
 *   2. authenticate (auth.c), then take and check the body: size, one-pass
 *      scan (model, stream, caps), the model and its allowlist;
 *   3. find whether any target may serve (route.c), else 402/403/503;
 *      outbox at its cap: 503;
 *   4. pick the first target and start the attempt (upstream.c, after
 *      the reservation of preauth.c);
 *   5. every path ends in tg_req_fail (an error answer) or the upstream's
 *      own end, then tg_req_finish: metrics, the receipt (receipt.c), the
 *      configuration reference dropped, the pool freed.
 * request_int.h has the request struct and says which file does what. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/request_int.h"
#include "base/tg_utf8.h"

const endpoint_t tg_req_endpoints[] = {
    {"/v1/chat/completions", "/chat/completions", EP_CHAT, 1, 1, TG_ANSWER_CHAT, 1, TG_PROTO_OPENAI},
    {"/v1/embeddings", "/embeddings", EP_EMBEDDINGS, 0, 0, TG_ANSWER_OTHER, 0, TG_PROTO_OPENAI},
    {"/v1/responses", "/responses", EP_RESPONSES, 1, 0, TG_ANSWER_RESPONSES, 1, TG_PROTO_RESPONSES},
    {"/v1/images/generations", "/images/generations", EP_IMAGES, 0, 0, TG_ANSWER_IMAGES, 0, TG_PROTO_OPENAI},
    /* Anthropic Messages: served by Anthropic channels (passthrough) and
     * OpenAI ones (converted, proto/); its upstream path is the channel
     * protocol's (upstream.c) */
    {"/v1/messages", "/messages", EP_MESSAGES, 1, 0, TG_ANSWER_OTHER, 1, TG_PROTO_ANTHROPIC},
};

/* Takes the body from the front (it is still needed after the client went
 * away: local token counts of a cancelled request), checks its size and
 * scans it in one pass. Returns 0, or -1 with the request failed. */
static int take_body(req_t *rq)
{
    size_t len = 0;
    char err[TG_ERRLEN] = "";
    if (!(rq->rq_body_own = tg_front_body_take(rq->rq_c, &len))) {
        tg_req_fail(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY, "out of memory");
        return -1;
    }
    rq->rq_body = rq->rq_body_own;
    rq->rq_body_len = len;
    if ((int64_t)len > tg_cfg_max_request_bytes(rq->rq_cfg)) {
        tg_req_fail(rq, 413, "invalid_request_error", "request_too_large", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The request body has %zu bytes; the limit is %lld.", len,
                     (long long)tg_cfg_max_request_bytes(rq->rq_cfg));
        return -1;
    }
    if (tg_agent_scan(rq->rq_body, len, &rq->rq_scan, err, sizeof err) != 0) {
        tg_req_fail(rq, 400, "invalid_request_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "We could not parse the JSON body of your request: %s", err);
        return -1;
    }
    return 0;
}

/* Every POST endpoint of tg_req_endpoints[]: the same path, the table's
 * differences applied where they matter. */
static void handle_post(req_t *rq)
{
    if (tg_req_authenticate(rq) != 0)
        return;
    if (take_body(rq) != 0)
        return;
    size_t len = rq->rq_body_len;
    char err[TG_ERRLEN] = "";
    if (rq->rq_cproto == TG_PROTO_ANTHROPIC) {
        /* validated as the Messages API does (max_tokens required, block
         * types known...), whichever channel serves it */
        tg_proto_request_t *ir = tg_pool_calloc(rq->rq_pool, sizeof *ir);
        int rc = ir ? tg_proto_parse_request(TG_PROTO_ANTHROPIC, rq->rq_pool, rq->rq_body, len, ir, err, sizeof err)
                    : TG_PROTO_ENOMEM;
        if (rc == TG_PROTO_ENOMEM) {
            tg_req_fail(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY, "out of memory");
            return;
        }
        if (rc != 0) {
            tg_req_fail(rq, 400, "invalid_request_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY, "%s",
                        err);
            return;
        }
        rq->rq_ir = ir;
    }
    if (rq->rq_scan.sc_stream && !rq->rq_ep->ep_stream) {
        tg_req_fail(rq, 400, "invalid_request_error", "stream_not_supported", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "Streaming is not supported on %s by this gateway.", rq->rq_ep->ep_path);
        return;
    }
    if (!rq->rq_scan.sc_model[0]) {
        tg_req_fail(rq, 400, "invalid_request_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "You must provide a model parameter.");
        return;
    }
    const tg_route_t *route = tg_cfg_route(rq->rq_cfg, rq->rq_scan.sc_model);
    if (!route) {
        tg_req_fail(rq, 404, "invalid_request_error", "model_not_found", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The model `%s` does not exist or you do not have access to it.", rq->rq_scan.sc_model);
        return;
    }
    if (!tg_req_model_allowed(rq->rq_key, route->model) && !tg_req_model_allowed(rq->rq_key, rq->rq_scan.sc_model)) {
        tg_req_fail(rq, 403, "permission_error", "model_not_allowed", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "This API key is not allowed to use the model `%s`.", rq->rq_scan.sc_model);
        return;
    }
    /* Is any target usable by this key at all? Says why not: balance is
     * 402, route types 403, otherwise every channel is unavailable: 503. */
    int why_balance = 0, why_type = 0, why_proto = 0, why_other = 0, why_price = 0, any = 0;
    rq->rq_route = route; /* tg_req_target_ok prices with it */
    for (size_t t = 0; t < route->n_tiers; t++)
        for (size_t i = 0; i < route->tiers[t]->n_targets; i++) {
            int w = tg_req_target_ok(rq, route->tiers[t]->targets[i]);
            any |= w == WHY_OK;
            why_balance |= w == WHY_BALANCE;
            why_type |= w == WHY_ROUTE_TYPE;
            why_proto |= w == WHY_PROTOCOL;
            why_other |= w == WHY_UNAVAILABLE;
            why_price |= w == WHY_UNPRICED;
        }
    if (!any) {
        if (why_proto && !why_other && !why_balance && !why_type && rq->rq_ep->ep_kind != EP_CHAT)
            tg_req_fail(rq, 400, "invalid_request_error", "unsupported_endpoint", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "The model `%s` is served only by Anthropic-type channels, and %s is passed through to "
                         "OpenAI-type channels only (only chat and Responses requests are converted).",
                         route->model, rq->rq_ep->ep_path);
        else if (why_balance)
            tg_req_fail(rq, 402, "insufficient_quota", "insufficient_quota", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "You exceeded your current quota: the balance that pays for model `%s` is exhausted.",
                         route->model);
        else if (why_type)
            tg_req_fail(rq, 403, "permission_error", "route_type_not_allowed", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "This API key may not use any route that serves model `%s`.", route->model);
        else if (why_price)
            tg_req_fail(rq, 503, "server_error", "model_not_priced", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "The model `%s` has no price in effect for this account's currency, so the gateway "
                         "cannot serve it; the operator must publish a price card for it.",
                         route->model);
        else
            tg_req_fail(rq, 503, "upstream_error", "no_upstream_available", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "No upstream channel serves model `%s` right now.", route->model);
        return;
    }
    tg_outbox_t *ob = rq->rq_w->w_agent->a_outbox;
    const Tollgate__V1__GatewayPolicy *gp = tg_cfg_snapshot(rq->rq_cfg)->policy;
    long cap = gp && gp->outbox_max_records > 0 ? (long)gp->outbox_max_records : 1000000L;
    if (ob && tg_outbox_depth(ob) >= cap) {
        rq->rq_no_spool = 1;
        tg_req_fail(rq, 503, "server_error", "usage_outbox_full", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The gateway cannot record usage right now: its outbox holds %ld records waiting for the "
                     "control plane (cap %ld). Retry later.", tg_outbox_depth(ob), cap);
        return;
    }
    if (rq->rq_w->w_commit_failed || atomic_load(&rq->rq_w->w_agent->a_outbox_failing)) {
        /* The last outbox commit (of this worker, or of another: they
         * share the outbox) failed, a full disk say: this request's record
         * could not be written either, so its answer would be withheld
         * after the provider was paid for it. Refused before the upstream
         * call; the kept records are retried (tg_worker_commit), and the
         * first commit that succeeds lets requests through again. */
        rq->rq_no_spool = 1;
        tg_req_fail(rq, 503, "server_error", "usage_outbox_full", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The gateway cannot record usage right now: its outbox cannot be written (see the agent's "
                     "log). Retry later.");
        return;
    }
    const Tollgate__V1__RetryPolicy *p = route->policy;
    if (p && p->circuit_breaker) {
        const Tollgate__V1__CircuitBreaker *cb = p->circuit_breaker;
        rq->rq_brk = (tg_brk_conf_t){cb->consecutive_failures, cb->error_rate_ppm, cb->window_ms,
                                     cb->min_requests, cb->open_ms, cb->half_open_probes};
    }
    tg_brk_conf_fill(&rq->rq_brk);
    tg_buf_init(&rq->rq_upbody, len + 4096);
    tg_buf_init(&rq->rq_resp, RESP_MAX);
    tg_buf_init(&rq->rq_text, RESP_MAX);
    tg_sse_init(&rq->rq_sse, SSE_EVENT_MAX);
    tg_buf_init(&rq->rq_chunk, SSE_EVENT_MAX * 2);
    tg_buf_init(&rq->rq_tail, SSE_EVENT_MAX);
    if (!(rq->rq_timer = evtimer_new(rq->rq_w->w_base, tg_req_on_timer, rq))) {
        tg_req_fail(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY, "out of memory");
        return;
    }
    rq->rq_route = route;
    /* First target: the first tier with a usable target whose breaker
     * admits a request. */
    for (rq->rq_tier = 0; rq->rq_tier < route->n_tiers; rq->rq_tier++) {
        rq->rq_failed = 0;
        int i = tg_req_pick_in_tier(rq, rq->rq_tier);
        if (i >= 0) {
            rq->rq_target = i;
            rq->rq_fallback = rq->rq_tier > 0;
            break;
        }
        if (!p || p->fallback_enabled)
            continue;
        rq->rq_tier = (uint32_t)route->n_tiers;
    }
    if (rq->rq_tier >= route->n_tiers) {
        tg_req_give_up(rq, NULL);
        return;
    }
    tg_front_set_events(rq->rq_c, tg_req_on_front_gone, tg_req_on_front_drain, rq);
    tg_req_start_attempt(rq);
}

static void model_json(tg_buf_t *b, const tg_route_t *r, int anth)
{
    if (anth) {
        /* Anthropic's model object: created_at as RFC 3339 */
        char when[40] = "1970-01-01T00:00:00Z";
        time_t t = (time_t)(r->created_at_us / 1000000);
        struct tm tm;
        if (gmtime_r(&t, &tm))
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        tg_buf_puts(b, "{\"type\":\"model\",\"id\":");
        tg_agent_json_str(b, r->model, strlen(r->model));
        tg_buf_puts(b, ",\"display_name\":");
        tg_agent_json_str(b, r->model, strlen(r->model));
        tg_buf_printf(b, ",\"created_at\":\"%s\"}", when);
        return;
    }
    tg_buf_puts(b, "{\"id\":");
    tg_agent_json_str(b, r->model, strlen(r->model));
    tg_buf_printf(b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"tollgate\"}",
                  (long long)(r->created_at_us / 1000000));
}

/* GET /v1/models (id NULL): the catalog models the key may use; GET
 * /v1/models/{id}: one of them, or 404 model_not_found when the catalog
 * has no such model or the key may not use it (the same answer, so a key
 * cannot probe what it is not allowed). */
static void handle_models(req_t *rq, const char *id)
{
    if (tg_req_authenticate(rq) != 0)
        return;
    const tg_snap_t *s = tg_cfg_snapshot(rq->rq_cfg);
    int anth = rq->rq_cproto == TG_PROTO_ANTHROPIC; /* the request carries anthropic-version */
    const char *first = NULL, *last = NULL;
    tg_buf_t b;
    tg_buf_init(&b, 16u << 20);
    if (!id)
        tg_buf_puts(&b, anth ? "{\"data\":[" : "{\"object\":\"list\",\"data\":[");
    int n = 0;
    for (size_t i = 0; i < s->n_routes; i++) {
        const tg_route_t *r = s->routes[i];
        if (!tg_req_model_allowed(rq->rq_key, r->model) || (id && strcmp(r->model, id) != 0))
            continue;
        if (n++ && !id)
            tg_buf_puts(&b, ",");
        model_json(&b, r, anth);
        first = first ? first : r->model;
        last = r->model;
        if (id)
            break;
    }
    if (!id && anth) {
        /* one page holds every model: has_more false, first and last ids */
        tg_buf_puts(&b, "],\"has_more\":false,\"first_id\":");
        first ? tg_agent_json_str(&b, first, strlen(first)) : tg_buf_puts(&b, "null");
        tg_buf_puts(&b, ",\"last_id\":");
        last ? tg_agent_json_str(&b, last, strlen(last)) : tg_buf_puts(&b, "null");
        tg_buf_puts(&b, "}");
    } else if (!id) {
        tg_buf_puts(&b, "]}");
    }
    tg_buf_puts(&b, "\n");
    add_header(rq->rq_c, "x-request-id", rq->rq_id);
    if (id && !n) {
        /* the percent-decoded id is the client's bytes: valid UTF-8 only,
         * cut on a character, in the JSON error */
        char clean[204];
        tg_utf8_clean(clean, sizeof clean, id, strlen(id));
        tg_buf_free(&b);
        rq->rq_status = 404;
        tg_req_send_error(rq->rq_c, rq->rq_cproto, NULL, 404, "invalid_request_error", "model_not_found",
                   "The model '%s' does not exist or you do not have access to it.", clean);
        rq->rq_c = NULL;
        tg_req_free(rq);
        return;
    }
    tg_req_reply_json(rq, b.b_data, b.b_len); /* listing models is not metered: no receipt */
    tg_buf_free(&b);
}

/* POST /v1/messages/count_tokens: answered here, never upstream, with the
 * counter the budget uses (receipt.c tg_req_count_ir over proto/'s count
 * text). `x-tollgate-token-count: exact` when the route's encoding is known
 * (an OpenAI model, or the route names its encoding), `estimate` otherwise
 * (Claude's tokenizer is not public). Not metered: no receipt. */
static void handle_count_tokens(req_t *rq)
{
    if (tg_req_authenticate(rq) != 0 || take_body(rq) != 0)
        return;
    size_t len = rq->rq_body_len;
    char err[TG_ERRLEN] = "";
    const int cls = TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY;
    /* count_tokens takes no max_tokens; the Messages parser requires one */
    tg_buf_t body;
    tg_buf_init(&body, len + 32);
    const char *open = memchr(rq->rq_body, '{', len);
    if (rq->rq_scan.sc_max_tokens < 0 && open) {
        size_t at = (size_t)(open - rq->rq_body) + 1;
        tg_buf_append(&body, rq->rq_body, at);
        tg_buf_puts(&body, rq->rq_scan.sc_members ? "\"max_tokens\":1," : "\"max_tokens\":1");
        tg_buf_append(&body, rq->rq_body + at, len - at);
    } else {
        tg_buf_append(&body, rq->rq_body, len);
    }
    tg_proto_request_t ir;
    int rc = tg_proto_parse_request(TG_PROTO_ANTHROPIC, rq->rq_pool, body.b_data ? body.b_data : "", body.b_len, &ir,
                                    err, sizeof err);
    tg_buf_free(&body);
    if (rc != 0) {
        tg_req_fail(rq, rc == TG_PROTO_ENOMEM ? 500 : 400, "invalid_request_error", NULL, cls, "%s", err);
        return;
    }
    const tg_route_t *route = tg_cfg_route(rq->rq_cfg, ir.rq_model);
    if (!route || (!tg_req_model_allowed(rq->rq_key, route->model) && !tg_req_model_allowed(rq->rq_key, ir.rq_model))) {
        tg_req_fail(rq, 404, "invalid_request_error", "model_not_found", cls,
                    "model: the model `%s` does not exist or you do not have access to it.", ir.rq_model);
        return;
    }
    rq->rq_route = route;
    int64_t tokens = 0;
    int estimate = 1;
    if (tg_req_count_ir(rq, &ir, route->model, &tokens, &estimate) != 0) {
        tg_req_fail(rq, 500, "server_error", NULL, cls, "the gateway could not count this request");
        return;
    }
    char out[64];
    int n = snprintf(out, sizeof out, "{\"input_tokens\":%lld}\n", (long long)tokens);
    add_header(rq->rq_c, "x-request-id", rq->rq_id);
    add_header(rq->rq_c, "x-tollgate-token-count", estimate ? "estimate" : "exact");
    add_header(rq->rq_c, "Content-Type", "application/json");
    rq->rq_status = 200;
    tg_front_reply(rq->rq_c, 200, out, (size_t)n);
    rq->rq_c = NULL;
    tg_req_free(rq);
}

/* %XX-decodes the rest of a path into out (the SDKs encode a model id
 * with encodeURIComponent; ids such as "org/model" hold a '/'). Returns 0,
 * or -1 when it is empty, malformed, too long or decodes to a NUL. */
static int path_segment(const char *p, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)p[i];
        if (c == '%') {
            if (i + 2 >= n || !isxdigit((unsigned char)p[i + 1]) || !isxdigit((unsigned char)p[i + 2]))
                return -1;
            char hex[3] = {p[i + 1], p[i + 2], 0};
            c = (int)strtol(hex, NULL, 16);
            i += 2;
        }
        if (c == 0 || o + 1 >= outlen)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return o ? 0 : -1;
}

/* CORS (--cors-origin): an allowed Origin gets Access-Control-Allow-Origin
 * on every answer, and a preflight (OPTIONS with
 * Access-Control-Request-Method) is answered 204 here. Returns 1 when the
 * request was a preflight (answered), 0 otherwise. */
static int cors(tg_front_conn_t *hr, worker_t *w, const char *method)
{
    const tg_agent_opts_t *o = &w->w_agent->a_opts;
    const char *origin = tg_front_header(hr, "Origin");
    int any = 0, ok = 0;
    for (int i = 0; i < o->ao_ncors; i++) {
        any |= strcmp(o->ao_cors[i], "*") == 0;
        ok |= origin && strcmp(o->ao_cors[i], origin) == 0;
    }
    if (!origin || !(ok || any))
        return 0;
    add_header(hr, "Access-Control-Allow-Origin", ok ? origin : "*");
    if (ok)
        add_header(hr, "Vary", "Origin");
    const char *want = tg_front_header(hr, "Access-Control-Request-Method");
    if (strcmp(method, "OPTIONS") != 0 || !want) {
        add_header(hr, "Access-Control-Expose-Headers", "x-request-id, x-tollgate-route, x-tollgate-attempts, "
                                                        "x-tollgate-budget-remaining");
        return 0;
    }
    const char *hdrs = tg_front_header(hr, "Access-Control-Request-Headers");
    add_header(hr, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    add_header(hr, "Access-Control-Allow-Headers",
               hdrs && *hdrs ? hdrs : "authorization, content-type, x-api-key, x-tollgate-run");
    add_header(hr, "Access-Control-Max-Age", "86400");
    tg_front_reply(hr, 204, "", 0);
    return 1;
}

static void plain(tg_front_conn_t *hr, int status, const char *text)
{
    add_header(hr, "Content-Type", "text/plain");
    tg_front_reply(hr, status, text, strlen(text));
}

/* A client header's value for the record: at most 256 bytes, valid UTF-8
 * (tg_utf8.h). NULL when out of memory. */
static const char *header_text(tg_pool_t *pool, const char *v)
{
    char s[3 * 256 + 1];
    size_t n = tg_utf8_clean(s, sizeof s, v, strnlen(v, 256));
    return tg_pool_strndup(pool, s, n);
}

/* The metrics listener (--metrics-listen, loopback by default): what an
 * operator's scraper and probes read; /metrics is never on the public
 * port (it names channels and models). */
void tg_req_handle_ops(tg_front_conn_t *hr, void *arg)
{
    worker_t *w = arg;
    size_t ulen;
    const char *uri = tg_front_target(hr, &ulen);
    size_t plen = strcspn(uri, "?");
    if (plen == 8 && memcmp(uri, "/metrics", 8) == 0) {
        tg_agent_t *a = w->w_agent;
        tg_metrics_t *ms[256];
        int n = 0;
        for (int i = 0; i < a->a_nworkers && n < 256; i++)
            if (a->a_workers[i].w_metrics)
                ms[n++] = a->a_workers[i].w_metrics;
        tg_buf_t b;
        tg_buf_init(&b, 64u << 20);
        if (tg_metrics_render(ms, n, a->a_outbox ? tg_outbox_depth(a->a_outbox) : 0, &b) != 0)
            tg_buf_reset(&b);
        else {
            tg_agent_brk_metrics(a, &b); /* breakers (server.c) */
            tg_cplink_metrics(a, &b);    /* the control-plane link (cplink.c) */
        }
        add_header(hr, "Content-Type", "text/plain; version=0.0.4");
        tg_front_reply(hr, 200, b.b_data, b.b_len);
        tg_buf_free(&b);
        return;
    }
    if (plen == 8 && memcmp(uri, "/healthz", 8) == 0) {
        plain(hr, 200, "ok\n");
        return;
    }
    if (plen == 7 && memcmp(uri, "/readyz", 7) == 0) {
        tg_cfg_t *cfg = tg_worker_cfg(w);
        plain(hr, cfg ? 200 : 503, cfg ? "ready\n" : "no configuration snapshot yet\n");
        return;
    }
    plain(hr, 404, "not found: this listener serves /metrics, /healthz and /readyz\n");
}

void tg_req_handle(tg_front_conn_t *hr, void *arg)
{
    worker_t *w = arg;
    size_t ulen;
    const char *uri = tg_front_target(hr, &ulen);
    size_t plen = strcspn(uri, "?");
    const char *method = tg_front_method(hr);
    tg_cfg_t *cfg = tg_worker_cfg(w);
    if (cors(hr, w, method))
        return;
#define PATH_IS(p) (plen == sizeof(p) - 1 && memcmp(uri, p, plen) == 0)
#define PATH_IS_S(p) (plen == strlen(p) && memcmp(uri, p, plen) == 0)
    if (PATH_IS("/healthz")) {
        plain(hr, 200, "ok\n");
        return;
    }
    if (PATH_IS("/readyz")) {
        plain(hr, cfg ? 200 : 503, cfg ? "ready\n" : "no configuration snapshot yet\n");
        return;
    }
    const endpoint_t *ep = NULL;
    for (size_t i = 0; i < sizeof tg_req_endpoints / sizeof tg_req_endpoints[0]; i++)
        if (PATH_IS_S(tg_req_endpoints[i].ep_path))
            ep = &tg_req_endpoints[i];
    int count = PATH_IS("/v1/messages/count_tokens");
    int post = ep != NULL || count;
    int models = PATH_IS("/v1/models");
    int keyview = PATH_IS("/v1/tollgate/key");
    /* the client's protocol: its endpoint's, else Anthropic's when it
     * sends anthropic-version (GET /v1/models in Anthropic's shape) */
    tg_proto_kind_t kind = ep ? ep->ep_proto
                           : count || tg_front_header(hr, "anthropic-version") ? TG_PROTO_ANTHROPIC
                                                                               : TG_PROTO_OPENAI;
    char model_id[256];
    int model_one = !models && plen > 11 && memcmp(uri, "/v1/models/", 11) == 0;
    if (model_one && path_segment(uri + 11, plen - 11, model_id, sizeof model_id) != 0)
        model_one = 0; /* not a model id: 404 unknown_url */
    models |= model_one;
#undef PATH_IS
#undef PATH_IS_S
    char id[48]; /* req_ + 16 + 2 + 8 hex digits: what "req_%016llx%02x%08llx" printed */
    memcpy(id, "req_", 4);
    tg_fmt_hex(id + 4, w->w_agent->a_id_base, 16);
    tg_fmt_hex(id + 20, (unsigned)w->w_idx & 0xff, 2);
    uint64_t seq = ++w->w_seq;
    int sw = 8; /* %08llx: at least 8 digits */
    while (sw < 16 && (seq >> (4 * sw)) != 0)
        sw++;
    tg_fmt_hex(id + 22, seq, sw);
    if (!post && !models && !keyview) {
        tg_req_send_error(hr, kind, id, 404, "invalid_request_error", "unknown_url", "Unknown request URL: %.*s", (int)plen, uri);
        return;
    }
    if ((post && strcmp(method, "POST") != 0) || ((models || keyview) && strcmp(method, "GET") != 0)) {
        tg_req_send_error(hr, kind, id, 405, "invalid_request_error", "method_not_allowed", "Use %s for %.*s",
                   post ? "POST" : "GET", (int)plen, uri);
        return;
    }
    if (!cfg) {
        tg_req_send_error(hr, kind, id, 503, "server_error", "not_ready", "The gateway has no configuration yet.");
        return;
    }
    /* one chunk holds the req_t (2.4 KB with its two inline attempts) and
     * its strings: every open stream keeps it */
    tg_pool_t *pool = tg_pool_create(3584);
    req_t *rq = pool ? tg_pool_calloc(pool, sizeof *rq) : NULL;
    if (!rq) {
        tg_pool_destroy(pool);
        tg_req_send_error(hr, kind, id, 500, "server_error", NULL, "out of memory");
        return;
    }
    rq->rq_pool = pool;
    rq->rq_att = rq->rq_att_in;
    rq->rq_w = w;
    rq->rq_c = hr;
    rq->rq_t0_us = now_us();
    rq->rq_ep = ep;
    rq->rq_endpoint = ep         ? ep->ep_path
                      : count    ? "/v1/messages/count_tokens"
                      : keyview  ? "/v1/tollgate/key"
                                 : "/v1/models";
    rq->rq_cproto = kind;
    memcpy(rq->rq_id, id, sizeof id);
    tg_cfg_ref(cfg);
    rq->rq_cfg = cfg;
    tg_req_link(rq);
    const char *run = tg_front_header(hr, "X-Tollgate-Run");
    const char *ua = tg_front_header(hr, "User-Agent");
    rq->rq_run = run ? header_text(pool, run) : NULL;
    rq->rq_ua = ua ? header_text(pool, ua) : NULL;
    tg_req_client_ip(rq);
    if (count) {
        handle_count_tokens(rq);
    } else if (keyview) {
        tg_req_handle_keyview(rq);
    } else if (post) {
        /* its end waits for its usage record's commit, and fails if that
         * commit fails (front.h) */
        rq->rq_hold = ++w->w_ticket;
        tg_front_hold(hr, rq->rq_hold);
        handle_post(rq);
    } else {
        handle_models(rq, model_one ? model_id : NULL);
    }
}
