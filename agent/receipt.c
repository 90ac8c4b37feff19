/* receipt.c: what a request used and what it costs. Usage comes from the
 * provider (cached tokens taken out of input, raw JSON kept, bounded by the
 * request's caps) or is counted locally with meter/; it is priced once with
 * the card version in effect at the request's start (billing/, the code the
 * control plane settles with), and the UsageRecord with every attempt is
 * spooled to the outbox, the reservations replaced by the actual cost. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/request_int.h"
#include "base/tg_log.h"
#include "billing/tg_billing.h"
#include "pbjson/tg_pbjson.h"
#include "pbpack/tg_pbpack.h"

/* ---- the receipt --------------------------------------------------------------- */

static char *pstr(req_t *rq, const char *s)
{
    return tg_pool_strndup(rq->rq_pool, s ? s : "", s ? strlen(s) : 0);
}

/* The encoding local counts use (the route's, else the model's) and the
 * source they are marked with: LOCAL_TOKENIZER, or ESTIMATE for models
 * without a public tokenizer. Returns the model counted for. */
static const char *local_encoding(req_t *rq, tg_meter_encoding_t *enc, int *src)
{
    char err[TG_ERRLEN] = "";
    tg_meter_model_t mm;
    const char *model = rq->rq_natt ? rq->rq_att[rq->rq_natt - 1].at_model : rq->rq_route->model;
    tg_meter_model_lookup(model, 1, &mm, err, sizeof err);
    *enc = mm.mm_encoding;
    int estimate = mm.mm_kind == TG_METER_MODEL_ESTIMATE;
    if (rq->rq_route->encoding && *rq->rq_route->encoding &&
        tg_meter_encoding_from_name(rq->rq_route->encoding, enc, err, sizeof err) == 0)
        estimate = 0;
    *src = estimate ? TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_ESTIMATE
                    : TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_LOCAL_TOKENIZER;
    return model;
}

/* Counts what the provider did not report: the prompt with the chat rules
 * (meter/), the produced text plainly, with local_encoding's encoding and
 * source. Only for requests that reached an upstream. */
static void local_usage(req_t *rq, Tollgate__V1__TokenUsage *u)
{
    tg_meter_t *m = rq->rq_w->w_agent->a_meter;
    int reached = 0;
    for (int i = 0; i < rq->rq_natt; i++)
        reached |= rq->rq_att[i].at_class != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CIRCUIT_OPEN &&
                   (rq->rq_att[i].at_status >= 200 && rq->rq_att[i].at_status < 300);
    if (!m || !reached)
        return;
    char err[TG_ERRLEN] = "";
    tg_meter_encoding_t enc;
    int src;
    const char *model = local_encoding(rq, &enc, &src);
    const endpoint_t *ep = rq->rq_ep;
    tg_meter_chat_t mc;
    uint64_t in = 0;
    int64_t irn = 0;
    int irest = 0;
    if (ep->ep_kind == EP_MESSAGES) {
        /* an Anthropic request: its IR counted (tg_req_count_ir) */
        if (rq->rq_ir && tg_req_count_ir(rq, rq->rq_ir, model, &irn, &irest) == 0) {
            u->input_tokens = irn;
            u->input_source = irest ? TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_ESTIMATE
                                    : TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_LOCAL_TOKENIZER;
        }
    } else if (ep->ep_kind == EP_CHAT) {
        if (tg_meter_chat_count(m, rq->rq_body, rq->rq_body_len, model, &mc, err, sizeof err) == 0) {
            u->input_tokens = (int64_t)mc.mc_prompt_tokens;
            u->input_source = mc.mc_estimate ? TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_ESTIMATE
                                             : TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_LOCAL_TOKENIZER;
        }
    } else {
        /* Other endpoints: the prompt's text counted plainly (the strings
         * under the top-level input, prompt and instructions). */
        tg_buf_t p;
        tg_buf_init(&p, RESP_MAX);
        tg_agent_prompt_text(rq->rq_body, rq->rq_body_len, &p);
        if (tg_meter_count(m, enc, p.b_data ? p.b_data : "", p.b_len, TG_METER_SPECIAL_TEXT, &in, err,
                           sizeof err) == 0) {
            u->input_tokens = (int64_t)in;
            u->input_source = src;
        }
        tg_buf_free(&p);
    }
    if (!ep->ep_text) {
        u->encoding = (char *)tg_meter_encoding_name(enc);
        return; /* embeddings, images: no text produced */
    }
    if (rq->rq_resp.b_len && !rq->rq_text.b_len) {
        tg_answer_t an;
        tg_agent_answer(rq->rq_resp.b_data, rq->rq_resp.b_len, ep->ep_answer, NULL, &an, &rq->rq_text, NULL,
                        0);
    }
    uint64_t out = 0;
    if (tg_meter_count(m, enc, rq->rq_text.b_data ? rq->rq_text.b_data : "", rq->rq_text.b_len,
                       TG_METER_SPECIAL_TEXT, &out, err, sizeof err) == 0) {
        u->output_tokens = (int64_t)out;
        u->output_source = src;
    }
    u->encoding = (char *)tg_meter_encoding_name(enc);
}

int tg_req_count_ir(req_t *rq, const tg_proto_request_t *ir, const char *model, int64_t *tokens, int *estimate)
{
    tg_meter_t *m = rq->rq_w->w_agent->a_meter;
    char err[TG_ERRLEN] = "";
    tg_meter_model_t mm;
    tg_buf_t text;
    uint64_t n = 0;
    int rc = -1;
    tg_meter_model_lookup(model, 1, &mm, err, sizeof err);
    tg_meter_encoding_t enc = mm.mm_encoding;
    int est = mm.mm_kind == TG_METER_MODEL_ESTIMATE;
    if (rq->rq_route && rq->rq_route->encoding && *rq->rq_route->encoding &&
        tg_meter_encoding_from_name(rq->rq_route->encoding, &enc, err, sizeof err) == 0)
        est = 0;
    tg_buf_init(&text, RESP_MAX);
    if (!m || tg_proto_count_text(ir, &text) != 0)
        goto out;
    if (tg_meter_count(m, enc, text.b_data ? text.b_data : "", text.b_len, TG_METER_SPECIAL_TEXT, &n, err,
                       sizeof err) != 0)
        goto out;
    n += 3 * (uint64_t)ir->rq_nmsgs + 3;
    if (est && mm.mm_scale_ppm)
        n = (n * mm.mm_scale_ppm + 999999) / 1000000; /* the family's scale (meter/README.md) */
    *tokens = (int64_t)n;
    *estimate = est;
    rc = 0;
out:
    tg_buf_free(&text);
    return rc;
}

/* The most output the request allowed: its cap (max_tokens,
 * max_completion_tokens or max_output_tokens) times its choices; -1 when
 * it set none. */
static long output_cap(req_t *rq)
{
    long cap = rq->rq_scan.sc_max_tokens;
    if (cap < 0)
        return -1;
    long n = rq->rq_ep->ep_kind == EP_CHAT ? rq->rq_scan.sc_n : 1;
    return n > 0 && cap <= TG_USAGE_MAX / n ? cap * n : -1;
}

/* The input above which a provider's count is flagged (never clamped:
 * providers add input the gateway cannot see, such as web_search or
 * file_search results and stored prompts, and billing it at a local bound
 * under-billed 9000 tokens as 1028): twice the local count plus 1024. A
 * text token is at least one byte, so a prompt count within the body's
 * bytes needs no count; past that the prompt is counted here (rare: only
 * for an upstream reporting more tokens than the request has bytes).
 * Requests with input the gateway cannot count (images, files, audio, a
 * stored conversation) are not looked at: -1. */
static long input_bound(req_t *rq)
{
    static const char *const uncounted[] = {"image_url", "input_image", "input_file", "input_audio",
                                            "file_id", "previous_response_id", "conversation"};
    if (rq->rq_usage.us_prompt <= (long)rq->rq_body_len)
        return -1;
    for (size_t i = 0; i < sizeof uncounted / sizeof uncounted[0]; i++)
        if (memmem(rq->rq_body, rq->rq_body_len, uncounted[i], strlen(uncounted[i])))
            return -1;
    Tollgate__V1__TokenUsage local = TOLLGATE__V1__TOKEN_USAGE__INIT;
    local_usage(rq, &local);
    if (local.input_source == TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_UNSPECIFIED)
        return -1;
    return 2 * (long)local.input_tokens + 1024;
}

/* The provider's output count is a running one (an Anthropic stream cut,
 * failed or left before message_delta's usage: message_start says 1): the
 * produced text is counted here and the larger of the two billed, flagged. */
static void partial_output(req_t *rq, Tollgate__V1__TokenUsage *u)
{
    tg_meter_t *m = rq->rq_w->w_agent->a_meter;
    char err[TG_ERRLEN] = "";
    tg_meter_encoding_t enc;
    int src;
    uint64_t out = 0;
    u->provider_output_partial = 1;
    local_encoding(rq, &enc, &src);
    if (!m) {
        out = rq->rq_text.b_len; /* no tokenizer: a token is at least a byte */
        src = TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_ESTIMATE;
    } else if (tg_meter_count(m, enc, rq->rq_text.b_data ? rq->rq_text.b_data : "", rq->rq_text.b_len,
                              TG_METER_SPECIAL_TEXT, &out, err, sizeof err) != 0) {
        return;
    }
    long cap = output_cap(rq);
    if (cap >= 0 && out > (uint64_t)cap)
        out = (uint64_t)cap;
    if ((int64_t)out > u->output_tokens) {
        u->output_tokens = (int64_t)out;
        u->output_source = src;
        u->encoding = (char *)tg_meter_encoding_name(enc);
    }
}

/* Fills rq_tu (provider usage normalized: input excludes cached tokens;
 * else local counts) and prices it with the card version in effect when the
 * request started: the cost charged (entry rate) and the upstream cost
 * (channel cost rate), each rounded once, half up, per-request fee included
 * (tg_billing_cost: the code the control plane settles with). Runs once; before a non-streaming answer is sent,
 * so x-tollgate-cost can go in its head. */
void tg_req_meter_and_price(req_t *rq)
{
    if (rq->rq_metered)
        return;
    rq->rq_metered = 1;
    Tollgate__V1__TokenUsage *u = &rq->rq_tu;
    tollgate__v1__token_usage__init(u);
    tollgate__v1__unit_prices__init(&rq->rq_up);
    if (rq->rq_usage_raw && !rq->rq_usage_bad) {
        tg_usage_t us = rq->rq_usage;
        u->provider_usage_clamped = tg_agent_usage_clamp(&us, output_cap(rq));
        long in_bound = input_bound(rq);
        u->provider_input_above_bound = in_bound >= 0 && us.us_prompt > in_bound;
        long cached = us.us_cached > 0 ? us.us_cached : 0;
        long written = rq->rq_cache_write > 0 ? rq->rq_cache_write : 0; /* Anthropic cache writes */
        u->input_tokens = us.us_prompt > cached + written ? us.us_prompt - cached - written : 0;
        u->cache_write_tokens = written;
        u->output_tokens = us.us_completion > 0 ? us.us_completion : 0;
        u->cache_read_tokens = cached;
        u->reasoning_tokens = us.us_reasoning > 0 ? us.us_reasoning : 0;
        u->input_source = u->output_source = u->cache_source = TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_PROVIDER;
        u->raw_provider_usage = rq->rq_usage_raw;
        if (rq->rq_usage_running)
            partial_output(rq, u);
    } else if (rq->rq_route && rq->rq_ep) {
        /* No usage, or counts that are not counts: counted here, and a
         * provider's unreadable usage is kept and flagged beside it. */
        local_usage(rq, u);
        if (rq->rq_usage_raw) {
            u->raw_provider_usage = rq->rq_usage_raw;
            u->provider_usage_invalid = 1;
        } else if (rq->rq_usage_lost) {
            u->provider_usage_invalid = 1;
        }
    }
    if (rq->rq_capped && u->output_tokens > rq->rq_out_allow)
        u->output_tokens = rq->rq_out_allow; /* ended at its reservation: the event that crossed it is ours */
    u->images = rq->rq_images > 0 ? rq->rq_images : 0;
    attempt_t *fin = rq->rq_natt ? &rq->rq_att[rq->rq_natt - 1] : NULL;
    if (!fin || fin->at_decision != TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_FINAL || !rq->rq_acct)
        return;
    const Tollgate__V1__Channel *ch = fin->at_chan->ch_pb;
    rq->rq_bucket = tg_cfg_bucket(rq->rq_acct, ch->route_type);
    rq->rq_currency = tg_req_currency(rq, rq->rq_bucket);
    const Tollgate__V1__PriceEntry *pe = NULL;
    const Tollgate__V1__PriceCard *card =
        tg_cfg_price(rq->rq_cfg, rq->rq_route->model, ch->route_type, rq->rq_currency, rq->rq_t0_us, &pe);
    if (!card)
        return;
    char err[TG_ERRLEN] = "";
    int64_t cost = 0, upcost = 0;
    if (tg_billing_cost(pe, u, pe->rate_ppm, &cost, err, sizeof err) != 0) {
        TG_LOG(TG_LOG_ERROR, "agent", "request %s: pricing failed: %s", rq->rq_id, err);
        return;
    }
    if (tg_billing_cost(pe, u, ch->cost_rate_ppm, &upcost, err, sizeof err) != 0) {
        TG_LOG(TG_LOG_ERROR, "agent", "request %s: upstream cost failed: %s", rq->rq_id, err);
        upcost = 0;
    }
    rq->rq_card = card;
    rq->rq_cost = cost;
    rq->rq_upcost = upcost;
    rq->rq_up.input_per_mtok_nano = pe->input_per_mtok_nano;
    rq->rq_up.output_per_mtok_nano = pe->output_per_mtok_nano;
    rq->rq_up.cache_read_per_mtok_nano = pe->cache_read_per_mtok_nano;
    rq->rq_up.cache_write_per_mtok_nano = pe->cache_write_per_mtok_nano;
    rq->rq_up.per_image_nano = pe->per_image_nano;
    rq->rq_up.per_request_nano = pe->per_request_nano;
    rq->rq_up.rate_ppm = pe->rate_ppm > 0 ? pe->rate_ppm : 1000000;
    rq->rq_up.cost_rate_ppm = ch->cost_rate_ppm > 0 ? ch->cost_rate_ppm : 1000000;
}

/* Gives back every reservation rq holds (bucket and scopes), counting
 * `cost` as spent on each. */
void tg_req_release_all(req_t *rq, int64_t cost)
{
    tg_lease_tab_t *lt = rq->rq_w->w_agent->a_leases;
    if (rq->rq_resv <= 0)
        return;
    tg_lease_release(lt, rq->rq_acct->id, rq->rq_resv_bucket, rq->rq_resv, cost);
    for (int i = 0; i < rq->rq_sres; i++)
        tg_lease_release(lt, rq->rq_acct->id, rq->rq_scopes[i].sr_id, rq->rq_resv, cost);
    rq->rq_resv = 0;
    rq->rq_sres = 0;
    rq->rq_ticket = 0;
}

/* Emits the UsageRecord. Until the LMDB outbox lands (README "Next") the
 * sink is one JSON log line per request (comp "usage") on stderr. */
void tg_req_emit_record(req_t *rq)
{
    Tollgate__V1__UsageRecord r = TOLLGATE__V1__USAGE_RECORD__INIT;
    Tollgate__V1__TokenUsage u = TOLLGATE__V1__TOKEN_USAGE__INIT;
    Tollgate__V1__Attempt att[MAX_ATTEMPTS];
    Tollgate__V1__Attempt *attp[MAX_ATTEMPTS];
    char rid[80];
    size_t il = strnlen(rq->rq_id, sizeof rid - 7);
    memcpy(rid, "local-", 6);
    memcpy(rid + 6, rq->rq_id, il);
    rid[6 + il] = '\0';
    r.record_id = rid;
    r.request_id = rq->rq_id;
    r.region = pstr(rq, rq->rq_w->w_agent->a_opts.ao_region);
    r.started_at_us = rq->rq_t0_us;
    r.finished_at_us = now_us();
    for (int i = 0; i < RATE_SLOTS; i++)
        if (rq->rq_rate_lim[i] > 0)
            r.rate_window_start_us = rq->rq_rate_start;
    if (rq->rq_key) {
        r.key_id = rq->rq_key->id;
        r.key_prefix = rq->rq_key->display_prefix;
        r.project_id = rq->rq_key->project_id;
        r.account_id = rq->rq_key->account_id;
    }
    r.run_id = pstr(rq, rq->rq_run);
    r.client_ip = rq->rq_ip;
    r.user_agent = pstr(rq, rq->rq_ua);
    r.client_protocol = rq->rq_cproto == TG_PROTO_ANTHROPIC ? TOLLGATE__V1__CLIENT_PROTOCOL__CLIENT_PROTOCOL_ANTHROPIC
                                                            : TOLLGATE__V1__CLIENT_PROTOCOL__CLIENT_PROTOCOL_OPENAI;
    r.endpoint = pstr(rq, rq->rq_endpoint);
    r.requested_model = rq->rq_scan.sc_model;
    r.route_model = rq->rq_route ? rq->rq_route->model : "";
    r.stream = rq->rq_scan.sc_stream;
    for (int i = 0; i < rq->rq_natt; i++) {
        attempt_t *a = &rq->rq_att[i];
        Tollgate__V1__Attempt *p = &att[i];
        tollgate__v1__attempt__init(p);
        p->index = (uint32_t)i;
        p->channel_id = a->at_chan->ch_pb->id;
        p->channel_name = a->at_chan->ch_pb->name;
        p->provider = a->at_chan->ch_pb->provider;
        p->route_type = a->at_chan->ch_pb->route_type;
        p->tier = a->at_tier;
        p->upstream_model = (char *)a->at_model;
        p->http_status = a->at_status;
        p->error_class = (Tollgate__V1__ErrorClass)a->at_class;
        p->error_message = a->at_msg;
        p->started_at_us = a->at_start_us;
        p->latency_us = a->at_latency_us;
        p->ttft_us = a->at_ttft_us;
        p->retry_after_ms = a->at_retry_after_ms;
        p->backoff_ms = a->at_backoff_ms;
        p->decision = (Tollgate__V1__AttemptDecision)a->at_decision;
        p->upstream_request_id = a->at_upid;
        attp[i] = p;
        if (a->at_decision == TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_RETRY_SAME)
            r.retries++;
    }
    r.n_attempts = (size_t)rq->rq_natt;
    r.attempts = attp;
    attempt_t *fin = rq->rq_natt ? &rq->rq_att[rq->rq_natt - 1] : NULL;
    if (fin && fin->at_decision == TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_FINAL) {
        r.channel_id = fin->at_chan->ch_pb->id;
        r.upstream_model = (char *)fin->at_model;
        r.route_type = fin->at_chan->ch_pb->route_type;
        r.bucket = (char *)tg_cfg_bucket(rq->rq_acct, fin->at_chan->ch_pb->route_type);
        r.fallback_used = rq->rq_fallback;
    }
    /* A request no upstream served (every attempt failed, or the client
     * left before the first byte) delivered nothing: its receipt carries
     * the attempts at zero cost, with no bucket. */
    int served = r.channel_id && r.channel_id[0];
    if (served) {
        tg_req_meter_and_price(rq);
        u = rq->rq_tu;
    }
    if (served && rq->rq_card) {
        r.price_card_id = rq->rq_card->id;
        r.price_version = rq->rq_card->version;
        r.unit_prices = &rq->rq_up;
        r.cost_nano = rq->rq_cost;
        r.upstream_cost_nano = rq->rq_upcost;
    }
    r.currency = (char *)(rq->rq_currency ? rq->rq_currency : "");
    /* what the lease is charged just below: given back if the answer is
     * withheld or no record can be spooled */
    tg_spool_info_t si = {rq->rq_id, rq->rq_hold, rq->rq_acct ? rq->rq_acct->id : NULL, rq->rq_resv_bucket,
                          rq->rq_resv > 0 && served && rq->rq_card ? rq->rq_cost : 0};
    r.reserved_nano = rq->rq_resv;
    char *scopes[MAX_SCOPES];
    for (int i = 0; i < rq->rq_sres; i++)
        scopes[i] = rq->rq_scopes[i].sr_id;
    r.lease_scopes = scopes;
    r.n_lease_scopes = (size_t)rq->rq_sres;
    int64_t cost = served && rq->rq_card ? rq->rq_cost : 0;
    /* the actual cost replaces the reservations, on every path; the
     * rate limits count the request if it went upstream, and its tokens */
    tg_req_release_all(rq, cost);
    tg_req_rate_release(rq, rq->rq_natt > 0,
                        served ? u.input_tokens + u.cache_read_tokens + u.cache_write_tokens + u.output_tokens : 0);
    r.usage = &u;
    r.client_status = rq->rq_status;
    r.finish_reason = rq->rq_finish;
    r.error_class = (Tollgate__V1__ErrorClass)(rq->rq_final_class ? rq->rq_final_class
                                                                   : TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE);
    r.error_message = rq->rq_final_msg;
    r.client_disconnected = rq->rq_client_gone;
    r.ttft_us = rq->rq_ttft_us;
    r.request_bytes = (int64_t)rq->rq_body_len;
    r.response_bytes = rq->rq_resp_bytes;
    r.gateway_overhead_us = tg_req_overhead_us(rq);
    tg_agent_t *ag = rq->rq_w->w_agent;
    /* Spooled for settlement: every request of a known key that reached
     * routing (served: priced and charged to the route type's bucket; not
     * served: a zero-cost receipt of its attempts). Refusals before any
     * attempt (bad key, policy, malformed body) are logged only: without
     * a key anyone could fill the outbox with them. A known key refused by
     * spend control gets its receipt (zero cost, the reason). */
    int spool = ag->a_outbox && rq->rq_key && !rq->rq_no_spool && (rq->rq_natt > 0 || rq->rq_refused_budget);
    if (spool) {
        /* tg_pbpack: protobuf-c's bytes at a fraction of its cost (a
         * record is ~400 bytes: one allocation, the spool then owns it) */
        tg_buf_t pb;
        tg_buf_init(&pb, SIZE_MAX);
        size_t n = 0;
        uint8_t *buf = NULL;
        if (tg_buf_reserve(&pb, 512) == 0 && tg_pbpack(&r.base, &pb) == 0)
            buf = (uint8_t *)tg_buf_steal(&pb, &n);
        tg_buf_free(&pb);
        if (!buf || tg_worker_spool(rq->rq_w, buf, n, &si) != 0) {
            /* no record: the held answer fails like one whose commit
             * failed, and nothing is charged for it */
            const char *kv[] = {"request_id", rq->rq_id, NULL};
            tg_log_kv(TG_LOG_ERROR, "usage", kv, "usage record NOT spooled: out of memory; the answer is withheld");
            tg_worker_unspooled(rq->rq_w, rq->rq_hold);
            if (si.si_charged > 0) {
                tg_lease_refund(ag->a_leases, si.si_acct, si.si_bucket, si.si_charged);
                for (size_t k = 0; k < r.n_lease_scopes; k++)
                    tg_lease_refund(ag->a_leases, si.si_acct, r.lease_scopes[k], si.si_charged);
            }
        }
    }
    if (ag->a_opts.ao_log_records || !spool) {
        char *json = tg_pbjson_dumps(&r.base, NULL);
        if (json) {
            const char *kv[] = {"request_id", rq->rq_id, "record", json, NULL};
            tg_log_kv(TG_LOG_INFO, "usage", kv, "request finished: %d", rq->rq_status);
            free(json);
        }
    }
}
