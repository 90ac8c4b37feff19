/* convert.c: the agent's side of proto/. An attempt goes through proto/
 * when the client or the channel speaks Anthropic, or a Responses client
 * meets a channel that speaks only chat completions (rq_viaproto): the
 * client's request as IR written in the channel's protocol, the channel's
 * JSON answer read into IR (validated whole, usage normalized once: input
 * without cache reads and writes) and written in the client's protocol, and
 * a stream converted event by event with the client's grammar checked
 * (tg_proto_stream_t), its final bytes held for the end like a passthrough
 * stream's. Anthropic to Anthropic is read the same way but not rewritten:
 * the body goes up as the client sent it (but for the model), the JSON
 * answer and the stream's events go back as the upstream sent them. OpenAI
 * to OpenAI never comes here (scan.c / sse.c: no tree).
 * Every function leaves the request alive: the caller decides its end. */
#include <stdio.h>
#include <string.h>

#include "agent/request_int.h"

/* The stop reason in the client's words, for the record's finish_reason. */
static const char *stop_name(tg_proto_kind_t kind, tg_proto_stop_t stop)
{
    int anth = kind == TG_PROTO_ANTHROPIC;
    switch (stop) {
    case TG_PROTO_STOP_END_TURN: return anth ? "end_turn" : "stop";
    case TG_PROTO_STOP_MAX_TOKENS: return anth ? "max_tokens" : "length";
    case TG_PROTO_STOP_STOP_SEQUENCE: return anth ? "stop_sequence" : "stop";
    case TG_PROTO_STOP_TOOL_USE: return anth ? "tool_use" : "tool_calls";
    case TG_PROTO_STOP_REFUSAL: return anth ? "refusal" : "content_filter";
    case TG_PROTO_STOP_PAUSE_TURN: return anth ? "pause_turn" : "stop";
    case TG_PROTO_STOP_NONE: break;
    }
    return "";
}

/* Keeps normalized usage for the receipt in the passthrough's terms:
 * us_prompt is the whole prompt (input + cache reads + writes), us_cached
 * the reads, rq_cache_write the writes (receipt.c takes both out of input
 * once). A provider that reported none leaves it to the local count. */
static void take_usage(req_t *rq, const tg_proto_usage_t *u)
{
    if (!u->us_present)
        return;
    const char *raw = u->us_raw ? u->us_raw : "{}";
    rq->rq_usage_raw = tg_pool_strndup(rq->rq_pool, raw, strlen(raw));
    rq->rq_usage_bad = u->us_invalid; /* counts that are not counts: counted locally, flagged */
    if (u->us_invalid)
        return;
    rq->rq_usage.us_prompt = (long)(u->us_input + u->us_cache_read + u->us_cache_write);
    rq->rq_usage.us_completion = (long)u->us_output;
    rq->rq_usage.us_cached = (long)u->us_cache_read;
    rq->rq_usage.us_reasoning = (long)u->us_reasoning;
    rq->rq_cache_write = (long)u->us_cache_write;
    rq->rq_usage_running = u->us_running;
}

/* proto/vendor.c's rows are numbered by ProviderType */
_Static_assert((int)TG_PROTO_VENDOR_OPENAI == (int)TOLLGATE__V1__PROVIDER_TYPE__PROVIDER_TYPE_OPENAI &&
                   (int)TG_PROTO_VENDOR_ANTHROPIC == (int)TOLLGATE__V1__PROVIDER_TYPE__PROVIDER_TYPE_ANTHROPIC &&
                   (int)TG_PROTO_VENDOR_GEMINI == (int)TOLLGATE__V1__PROVIDER_TYPE__PROVIDER_TYPE_GEMINI &&
                   (int)TG_PROTO_VENDOR_OPENAI_COMPATIBLE == (int)TOLLGATE__V1__PROVIDER_TYPE__PROVIDER_TYPE_OPENAI_COMPATIBLE &&
                   (int)TG_PROTO_VENDOR_DEEPSEEK == (int)TOLLGATE__V1__PROVIDER_TYPE__PROVIDER_TYPE_DEEPSEEK &&
                   (int)TG_PROTO_VENDOR_QWEN == (int)TOLLGATE__V1__PROVIDER_TYPE__PROVIDER_TYPE_QWEN &&
                   (int)TG_PROTO_VENDOR_KIMI == (int)TOLLGATE__V1__PROVIDER_TYPE__PROVIDER_TYPE_KIMI &&
                   (int)TG_PROTO_VENDOR_GLM == (int)TOLLGATE__V1__PROVIDER_TYPE__PROVIDER_TYPE_GLM,
               "proto/vendor.c rows must follow ProviderType");

tg_proto_kind_t tg_req_channel_proto(const req_t *rq, int provider)
{
    const tg_proto_vendor_t *v = tg_proto_vendor_or_compatible(provider);
    /* OpenAI itself serves /v1/responses (stored responses included):
     * passed through; every other OpenAI-shaped vendor speaks chat only */
    if (v->vd_proto == TG_PROTO_OPENAI && rq->rq_cproto == TG_PROTO_RESPONSES && v->vd_responses)
        return TG_PROTO_RESPONSES;
    return v->vd_proto;
}

/* The vendor row of the attempt's channel (whose usage names it reads). */
static const tg_proto_vendor_t *att_vendor(const req_t *rq)
{
    return tg_proto_vendor_or_compatible(rq->rq_natt ? rq->rq_att[rq->rq_natt - 1].at_chan->ch_pb->provider : 0);
}

int tg_req_conv_body(req_t *rq, const char *model, int64_t max_tokens, char *err, size_t errlen)
{
    if (!rq->rq_ir) {
        /* an OpenAI client's request, parsed once, the first time a
         * channel needs it converted */
        tg_proto_request_t *ir = tg_pool_calloc(rq->rq_pool, sizeof *ir);
        if (!ir)
            return tg_errf(err, errlen, TG_PROTO_ENOMEM, "out of memory");
        int rc = tg_proto_parse_request(rq->rq_cproto, rq->rq_pool, rq->rq_body, rq->rq_body_len, ir, err, errlen);
        if (rc != 0)
            return rc;
        rq->rq_ir = ir;
    }
    rq->rq_ir->rq_model = model;
    if (rq->rq_uproto == TG_PROTO_ANTHROPIC && rq->rq_ir->rq_max_tokens <= 0)
        rq->rq_ir->rq_max_tokens = max_tokens; /* Anthropic requires it: the cap the reservation used */
    return tg_proto_write_request(rq->rq_uproto, rq->rq_ir, &rq->rq_upbody, err, errlen);
}

int tg_req_conv_answer(req_t *rq, char *err, size_t errlen)
{
    tg_proto_response_t rs;
    int rc = tg_proto_parse_response_vendor(rq->rq_uproto, att_vendor(rq), rq->rq_pool,
                                          rq->rq_resp.b_data ? rq->rq_resp.b_data : "", rq->rq_resp.b_len, &rs, err,
                                          errlen);
    if (rc != 0)
        return rc;
    take_usage(rq, &rs.rs_usage);
    snprintf(rq->rq_finish, sizeof rq->rq_finish, "%s", stop_name(rq->rq_cproto, rs.rs_stop));
    /* produced text for a local count when the provider reported no usage */
    tg_buf_reset(&rq->rq_text);
    for (size_t i = 0; i < rs.rs_nblocks; i++) {
        const tg_proto_block_t *b = &rs.rs_blocks[i];
        const char *t = b->bl_type == TG_PROTO_BLOCK_TOOL_USE ? b->bl_args : b->bl_text;
        if (t)
            tg_buf_append(&rq->rq_text, t, strlen(t));
    }
    if (rq->rq_cproto == rq->rq_uproto)
        return 0; /* passthrough: the upstream's bytes go out */
    tg_buf_t out;
    tg_buf_init(&out, RESP_MAX);
    if ((rc = tg_proto_write_response(rq->rq_cproto, &rs, &out, err, errlen)) != 0 ||
        (rc = tg_buf_puts(&out, "\n")) != 0) {
        tg_buf_free(&out);
        return rc ? rc : TG_PROTO_ENOMEM;
    }
    tg_buf_free(&rq->rq_resp);
    rq->rq_resp = out;
    return 0;
}

/* Every produced piece of text (text, thinking, tool arguments) is kept
 * for the local count and the reservation's check (preauth.c). */
static void on_event(void *arg, const tg_proto_event_t *ev)
{
    req_t *rq = arg;
    if (ev->ev_type == TG_PROTO_EV_DELTA && ev->ev_delta != TG_PROTO_DELTA_SIGNATURE && ev->ev_len)
        tg_buf_append(&rq->rq_text, ev->ev_text, ev->ev_len);
}

/* Moves what the converter wrote into the client's queue: the bytes that
 * end the stream (its last write) are held in rq_tail for the end of the
 * response, after the record's commit, like a passthrough's [DONE]. */
static void route_out(req_t *rq, tg_buf_t *out)
{
    rq->rq_resp_bytes += (int64_t)out->b_len;
    if (tg_proto_stream_done(rq->rq_conv))
        tg_buf_append(&rq->rq_tail, out->b_data, out->b_len);
    else
        tg_buf_append(&rq->rq_chunk, out->b_data, out->b_len);
}

int tg_req_conv_feed(req_t *rq, const char *data, size_t n, char *err, size_t errlen)
{
    if (!rq->rq_conv) {
        tg_proto_stream_opts_t so = {0};
        so.so_from = rq->rq_uproto;
        so.so_to = rq->rq_cproto;
        so.so_include_usage = rq->rq_scan.sc_include_usage;
        so.so_max_event = SSE_EVENT_MAX;
        so.so_on_event = on_event;
        so.so_arg = rq;
        /* Anthropic to Anthropic: checked and metered here, but the client
         * gets the upstream's bytes */
        so.so_passthrough = rq->rq_uproto == rq->rq_cproto;
        so.so_vendor = att_vendor(rq);
        if (rq->rq_uproto == TG_PROTO_OPENAI && rq->rq_ir) {
            /* message_start needs input tokens before an OpenAI upstream
             * says any: the local count */
            int64_t k = 0;
            int est = 0;
            if (tg_req_count_ir(rq, rq->rq_ir, rq->rq_att[rq->rq_natt - 1].at_model, &k, &est) == 0)
                so.so_prompt_tokens = k;
        }
        int rc = tg_proto_stream_create(&so, &rq->rq_conv, err, errlen);
        if (rc != 0)
            return rc;
    }
    tg_buf_t out;
    tg_buf_init(&out, 2 * SSE_EVENT_MAX);
    int rc = tg_proto_stream_feed(rq->rq_conv, data, n, &out, err, errlen);
    route_out(rq, &out);
    tg_buf_free(&out);
    if (rc != 0)
        rq->rq_conv_err = 1; /* its error event is written: the stream is over */
    else if (tg_proto_stream_done(rq->rq_conv))
        rq->rq_saw_done = 1;
    return rc;
}

int tg_req_conv_finish(req_t *rq, char *err, size_t errlen)
{
    if (!rq->rq_conv || tg_proto_stream_done(rq->rq_conv))
        return rq->rq_conv_err ? TG_PROTO_EUPSTREAM : 0;
    tg_buf_t out;
    tg_buf_init(&out, 2 * SSE_EVENT_MAX);
    int rc = tg_proto_stream_finish(rq->rq_conv, &out, err, errlen);
    tg_buf_append(&rq->rq_tail, out.b_data, out.b_len);
    rq->rq_resp_bytes += (int64_t)out.b_len;
    tg_buf_free(&out);
    if (rc != 0)
        rq->rq_conv_err = 1;
    else
        rq->rq_saw_done = 1;
    return rc;
}

void tg_req_conv_cut(req_t *rq)
{
    char err[TG_ERRLEN] = "";
    tg_buf_t out;
    tg_proto_usage_t u;
    tg_proto_stream_result(rq->rq_conv, &u, NULL);
    /* an Anthropic upstream's output so far is message_start's running 1:
     * the client's closing usage says what was produced (counted locally,
     * within the allowance), as the receipt bills it */
    int over = u.us_present && u.us_running && u.us_output < rq->rq_out_counted;
    if (over)
        u.us_output = rq->rq_out_counted < rq->rq_out_allow ? rq->rq_out_counted : rq->rq_out_allow;
    tg_buf_init(&out, 2 * SSE_EVENT_MAX);
    tg_buf_reset(&rq->rq_tail);
    if (tg_proto_stream_end(rq->rq_conv, TG_PROTO_STOP_MAX_TOKENS, over ? &u : NULL, &out, err, sizeof err) != 0)
        rq->rq_conv_err = 1;
    tg_buf_append(&rq->rq_tail, out.b_data, out.b_len);
    rq->rq_resp_bytes += (int64_t)out.b_len;
    tg_buf_free(&out);
    tg_req_mark_capped(rq, stop_name(rq->rq_cproto, TG_PROTO_STOP_MAX_TOKENS));
}

void tg_req_conv_result(req_t *rq)
{
    if (!rq->rq_conv)
        return;
    tg_proto_usage_t u;
    tg_proto_stop_t stop = TG_PROTO_STOP_NONE;
    tg_proto_stream_result(rq->rq_conv, &u, &stop);
    take_usage(rq, &u);
    if (stop != TG_PROTO_STOP_NONE)
        snprintf(rq->rq_finish, sizeof rq->rq_finish, "%s", stop_name(rq->rq_cproto, stop));
}
