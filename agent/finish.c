/* finish.c: how a request ends. The gateway's own error answers
 * (tg_req_fail, tg_req_send_error) and the route headers every answer
 * carries; tg_req_finish (metrics, the receipt, then the teardown); the
 * teardown itself (tg_req_free: the upstream call, buffers, the
 * configuration reference, the pool) and the worker's list of requests in
 * flight. Every part of a request ends it through here, so this file calls
 * nothing above it but the receipt. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "agent/request_int.h"
#include "base/tg_utf8.h"
#include "meter/tg_price.h"

/* ---- replies ------------------------------------------------------------------ */

void tg_req_send_error(tg_front_conn_t *c, tg_proto_kind_t kind, const char *reqid, int status, const char *type,
                       const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tg_buf_t b;
    tg_buf_init(&b, 8192);
    if (kind == TG_PROTO_ANTHROPIC) {
        /* Anthropic's shape, its type read from the status the gateway
         * chose (402 billing_error, 429 rate_limit_error, 503 overloaded_error
         * ...); the gateway's own status stays, as its clients retry on it */
        tg_proto_errinfo_t e = {tg_proto_errtype_from_status(status), msg, NULL, code};
        if (tg_proto_write_error(kind, &e, &b) != 0)
            tg_buf_reset(&b);
        tg_buf_puts(&b, "\n");
    } else {
        tg_buf_puts(&b, "{\"error\":{\"message\":");
        tg_agent_json_str(&b, msg, strlen(msg));
        tg_buf_puts(&b, ",\"type\":");
        tg_agent_json_str(&b, type, strlen(type));
        tg_buf_puts(&b, ",\"param\":null,\"code\":");
        if (code)
            tg_agent_json_str(&b, code, strlen(code));
        else
            tg_buf_puts(&b, "null");
        tg_buf_puts(&b, "}}\n");
    }
    add_header(c, "Content-Type", "application/json");
    if (reqid)
        add_header(c, "x-request-id", reqid);
    tg_front_reply(c, status, b.b_data, b.b_len);
    tg_buf_free(&b);
}

/* ---- request bookkeeping ---------------------------------------------------- */

void tg_req_link(req_t *rq)
{
    worker_t *w = rq->rq_w;
    rq->rq_next = w->w_live;
    if (w->w_live)
        w->w_live->rq_prev = rq;
    w->w_live = rq;
}

static void unlink_req(req_t *rq)
{
    worker_t *w = rq->rq_w;
    if (rq->rq_prev)
        rq->rq_prev->rq_next = rq->rq_next;
    else if (w->w_live == rq)
        w->w_live = rq->rq_next;
    if (rq->rq_next)
        rq->rq_next->rq_prev = rq->rq_prev;
    rq->rq_prev = rq->rq_next = NULL;
}

/* Frees what the request holds; a client request not answered yet (a
 * shutdown) is abandoned: its connection closes. */
void tg_req_reply_json(req_t *rq, const char *body, size_t len)
{
    add_header(rq->rq_c, "Content-Type", "application/json");
    rq->rq_status = 200;
    tg_front_reply(rq->rq_c, 200, body, len);
    rq->rq_c = NULL;
    tg_req_free(rq);
}

void tg_req_free(req_t *rq)
{
    if (rq->rq_c) {
        tg_front_abandon(rq->rq_c);
        rq->rq_c = NULL;
    }
    tg_req_drop_call(rq);
    if (rq->rq_timer)
        event_free(rq->rq_timer);
    tg_buf_free(&rq->rq_chunk);
    tg_buf_free(&rq->rq_tail);
    tg_free(rq->rq_body_own);
    tg_buf_free(&rq->rq_upbody);
    tg_buf_free(&rq->rq_resp);
    tg_buf_free(&rq->rq_text);
    tg_sse_free(&rq->rq_sse);
    tg_proto_stream_destroy(rq->rq_conv);
    unlink_req(rq);
    tg_cfg_unref(rq->rq_cfg);
    tg_pool_destroy(rq->rq_pool);
}

void tg_req_abort_all(worker_t *w)
{
    while (w->w_live)
        tg_req_free(w->w_live);
}

/* Ends the request: receipt, then frees. The client's response, if any,
 * was ended before: its last bytes go out after this iteration's outbox
 * commit (front.h). */
void tg_req_finish(req_t *rq)
{
    if (rq->rq_ep) {
        int uperr = 0;
        for (int i = 0; i < rq->rq_natt; i++) {
            int c = rq->rq_att[i].at_class;
            uperr += c != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE && c != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CIRCUIT_OPEN &&
                     c != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CLIENT_CANCELLED && c != 0;
        }
        attempt_t *fin = rq->rq_natt ? &rq->rq_att[rq->rq_natt - 1] : NULL;
        int served = fin && fin->at_decision == TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_FINAL;
        tg_metrics_observe(rq->rq_w->w_metrics, rq->rq_route ? rq->rq_route->model : "unknown",
                           served ? fin->at_chan->ch_pb->id : "none", rq->rq_status, now_us() - rq->rq_t0_us,
                           rq->rq_ttft_us, uperr, served && rq->rq_fallback);
    }
    tg_req_emit_record(rq);
    tg_req_free(rq);
}

/* ---- client replies from an attempt -------------------------------------------- */

int64_t tg_req_overhead_us(const req_t *rq)
{
    int64_t now = now_us(), up = 0;
    for (int i = 0; i < rq->rq_natt; i++) {
        const attempt_t *a = &rq->rq_att[i];
        if (!a->at_counted)
            continue; /* a breaker skip: no upstream time */
        up += a->at_latency_us ? a->at_latency_us : now - a->at_start_us;
        up += a->at_backoff_ms * 1000;
    }
    int64_t o = now - rq->rq_t0_us - up;
    return o > 0 ? o : 0;
}

void tg_req_route_headers(req_t *rq, tg_front_conn_t *hr)
{
    char ov[24];
    add_header(hr, "x-request-id", rq->rq_id);
    /* the gateway's own time so far: everything but the upstream's (and
     * the policy's backoff waits), so users can check the overhead claim */
    tg_fmt_u64(ov, (unsigned long long)tg_req_overhead_us(rq)); /* >= 0 */
    add_header(hr, "x-tollgate-overhead-us", ov);
    tg_req_rate_headers(rq, hr);
    if (!rq->rq_key || !rq->rq_key->expose_cost || !rq->rq_natt)
        return;
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    char v[512];
    snprintf(v, sizeof v, "%s; channel=%s; upstream_model=%s", rq->rq_route->model, a->at_chan->ch_pb->name,
             a->at_model);
    add_header(hr, "x-tollgate-route", v);
    snprintf(v, sizeof v, "%d", rq->rq_natt);
    add_header(hr, "x-tollgate-attempts", v);
    /* the paying bucket's remaining as known here (keyview.c: the key
     * holder's view says the same), in x-tollgate-cost's format */
    const char *bucket = rq->rq_resv_bucket ? rq->rq_resv_bucket : rq->rq_bucket;
    int64_t left = 0, at = 0;
    char amt[32];
    if (bucket && rq->rq_acct && tg_req_bucket_left(rq, rq->rq_acct, bucket, &left, &at) == 0) {
        snprintf(v, sizeof v, "%s %s", tg_price_format(left, amt, sizeof amt), tg_req_currency(rq, bucket));
        add_header(hr, "x-tollgate-budget-remaining", v);
    }
}

void tg_req_fail(req_t *rq, int status, const char *type, const char *code, int cls, const char *fmt,
                         ...)
{
    va_list ap;
    char msg[sizeof rq->rq_final_msg];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tg_utf8_clean(rq->rq_final_msg, sizeof rq->rq_final_msg, msg, strlen(msg));
    rq->rq_status = status;
    rq->rq_final_class = cls;
    if (rq->rq_c) {
        if (rq->rq_route) {
            tg_req_route_headers(rq, rq->rq_c);
        } else {
            char ov[24];
            snprintf(ov, sizeof ov, "%lld", (long long)tg_req_overhead_us(rq));
            add_header(rq->rq_c, "x-tollgate-overhead-us", ov);
        }
        tg_req_send_error(rq->rq_c, rq->rq_cproto, rq->rq_route ? NULL : rq->rq_id, status, type, code, "%s", rq->rq_final_msg);
        rq->rq_c = NULL;
    }
    tg_req_finish(rq);
}

void tg_req_drop_call(req_t *rq)
{
    if (rq->rq_tx == UP_LEAN)
        tg_req_lean_drop(rq);
    else if (rq->rq_tx == UP_CURL)
        tg_req_curl_drop(rq);
    rq->rq_tx = UP_NONE;
    if (rq->rq_timer)
        evtimer_del(rq->rq_timer);
}
