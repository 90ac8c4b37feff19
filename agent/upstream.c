/* upstream.c: one request's upstream call. An attempt rewrites the body
 * (upstream model, include_usage), builds the head's fields and hands the
 * call to a transport (uplean.c: the worker's lean HTTP/1.1 client;
 * upcurl.c: libcurl, for proxies and --upstream-client curl); whichever
 * serves reports back through the same calls (tg_req_up_*): the response
 * head (status, Retry-After, the provider's request id, Location) and the
 * body: a 2xx stream is forwarded to the client event by event (the usage
 * chunk hidden when the client did not ask, the final event held until the
 * record is committed, the upstream paused while the client is behind), a
 * JSON answer is buffered and validated whole. At the end the outcome is
 * classified (error class for the record and the router) and the answer
 * sent, or the router asked for the next attempt; a client that leaves
 * cancels the call. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent/request_int.h"
#include "base/tg_log.h"
#include "base/tg_utf8.h"
#include "meter/tg_price.h"

/* ---- upstream callbacks -------------------------------------------------------- */

/* Queues a stream event for the client. The final one ([DONE], or a
 * Responses stream's closing event) is held and written with the end of
 * the response, after the outbox commit: a client that stops reading at
 * [DONE] has seen its answer complete only once the record is kept. */
static int emit_event(req_t *rq, const char *ev, size_t n, int final)
{
    return tg_buf_append(final ? &rq->rq_tail : &rq->rq_chunk, ev, n) == 0 ? 0 : TG_AGENT_ENOMEM;
}

/* The vendor whose names the attempt's usage is read under. */
static const tg_proto_vendor_t *usage_vendor(const req_t *rq)
{
    const tg_chan_t *ch = rq->rq_natt ? rq->rq_att[rq->rq_natt - 1].at_chan : NULL;
    return ch ? tg_proto_vendor_or_compatible(ch->ch_pb->provider) : NULL;
}

/* Keeps a provider's usage object u..ul whose counts read as t with
 * verdict rc (tg_agent_usage_parse's: strictly, see usage.c, under the
 * attempt's channel's vendor's names): the counts and the text verbatim
 * for the record. A usage without counts (EJSON) is ignored and rq_usage
 * stays as it was, so the raw text and the counts kept always belong
 * together. */
static void keep_usage(req_t *rq, int rc, const tg_usage_t *t, const char *u, size_t ul)
{
    if (rc != 0 && rc != TG_AGENT_ERANGE)
        return;
    rq->rq_usage = *t;
    rq->rq_usage_bad = rc == TG_AGENT_ERANGE;
    rq->rq_usage_raw = tg_pool_strndup(rq->rq_pool, u, ul);
}

static void take_usage(req_t *rq, const char *u, size_t ul)
{
    tg_usage_t t;
    int rc = tg_agent_usage_parse(u, ul, usage_vendor(rq), &t);
    keep_usage(rq, rc, &t, u, ul);
}

/* A Responses stream event: forwarded as it is; the final event
 * (response.completed, or response.incomplete / response.failed, whose
 * usage counts too) carries the usage; text deltas are kept for local
 * counts. */
static int forward_response_event(req_t *rq, const char *ev, size_t n)
{
    tg_resp_event_t re;
    int rc = tg_sse_resp_event(ev, n, &re, &rq->rq_text);
    if (re.re_final) {
        rq->rq_saw_done = 1;
        rq->rq_usage_lost = rc != 0 && !re.re_usage;
        snprintf(rq->rq_finish, sizeof rq->rq_finish, "%.20s", re.re_type + 9);
        if (re.re_usage)
            take_usage(rq, re.re_usage, re.re_usage_len);
    }
    rq->rq_resp_bytes += (int64_t)n;
    return emit_event(rq, ev, n, re.re_final);
}

static int forward_event(void *arg, const char *ev, size_t n)
{
    req_t *rq = arg;
    if (rq->rq_tail.b_len) {
        /* something after what looked final: the held event goes first */
        if (tg_buf_append(&rq->rq_chunk, rq->rq_tail.b_data, rq->rq_tail.b_len) != 0)
            return TG_AGENT_ENOMEM;
        tg_buf_reset(&rq->rq_tail);
    }
    if (rq->rq_ep->ep_kind == EP_RESPONSES)
        return forward_response_event(rq, ev, n);
    tg_chunk_t ck;
    tg_sse_chunk(ev, n, &ck, &rq->rq_text);
    /* a top-level usage on any chunk, the last one kept (as proto/'s
     * converter reads it): OpenAI sends it on its own "choices": [] chunk,
     * other vendors beside finish_reason or as running totals */
    if (ck.ck_usage)
        take_usage(rq, ck.ck_usage, ck.ck_usage_len);
    if (ck.ck_usage_only) {
        if (!rq->rq_scan.sc_include_usage)
            return 0; /* the gateway asked for it, the client did not */
    } else if (ck.ck_kind == TG_CHUNK_DONE) {
        rq->rq_saw_done = 1;
    } else if (ck.ck_finish[0] && !rq->rq_finish[0]) {
        memcpy(rq->rq_finish, ck.ck_finish, sizeof rq->rq_finish);
    }
    rq->rq_resp_bytes += (int64_t)n;
    return emit_event(rq, ev, n, ck.ck_kind == TG_CHUNK_DONE);
}

static void start_stream(req_t *rq)
{
    tg_front_conn_t *hr = rq->rq_c;
    /* No attempt follows a started stream, and once the transport has
     * sent the whole body it never reads it again (no redirects, no auth
     * replays, no retry after a response byte): an open stream does not
     * keep a copy of its prompt. */
    if (rq->rq_call && (rq->rq_tx == UP_LEAN ? tg_req_lean_sent(rq) : tg_req_curl_sent(rq)))
        tg_buf_free(&rq->rq_upbody);
    tg_req_route_headers(rq, hr);
    add_header(hr, "Content-Type", "text/event-stream; charset=utf-8");
    add_header(hr, "Cache-Control", "no-cache");
    tg_front_stream_start(hr, 200);
    rq->rq_started = 1;
    rq->rq_status = 200;
    rq->rq_ttft_us = now_us() - rq->rq_t0_us;
}

/* The upstream's response head is complete, or its first body byte came:
 * the first-byte timer stops and the status is final. */
static void first_byte(req_t *rq)
{
    if (rq->rq_got_byte)
        return;
    rq->rq_got_byte = 1;
    if (rq->rq_timer && !rq->rq_timer_backoff)
        evtimer_del(rq->rq_timer);
}

int tg_req_up_body(req_t *rq, const char *data, size_t n)
{
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    if (rq->rq_client_gone)
        return UP_STOP;
    first_byte(rq);
    if (!a->at_ttft_us)
        a->at_ttft_us = now_us() - a->at_start_us;
    if (rq->rq_up_status >= 200 && rq->rq_up_status < 300 && rq->rq_scan.sc_stream && !rq->rq_json_stream) {
        if (!rq->rq_started)
            start_stream(rq);
        /* A client that reads slower than the upstream writes: the upstream
         * pauses (its TCP window closes) until the queue drains, instead of
         * the answer piling up here. */
        if (tg_front_pending(rq->rq_c) >= STREAM_QUEUE_MAX) {
            rq->rq_paused = 1;
            return UP_PAUSE;
        }
        char cerr[TG_ERRLEN] = "";
        int crc = rq->rq_viaproto ? tg_req_conv_feed(rq, data, n, cerr, sizeof cerr) : 0;
        if (crc != 0) {
            /* the converter wrote the client's error event (rq_tail): the
             * stream is over, so is the upstream call */
            tg_utf8_clean(a->at_msg, sizeof a->at_msg, cerr, strlen(cerr));
            if (rq->rq_chunk.b_len) {
                tg_front_stream_write(rq->rq_c, rq->rq_chunk.b_data, rq->rq_chunk.b_len);
                tg_buf_reset(&rq->rq_chunk);
            }
            return UP_STOP;
        }
        if (!rq->rq_viaproto && tg_sse_feed(&rq->rq_sse, data, n, forward_event, rq) != 0) {
            snprintf(a->at_msg, sizeof a->at_msg, "an upstream event passed %u bytes", SSE_EVENT_MAX);
            return UP_STOP;
        }
        if (rq->rq_chunk.b_len) {
            /* a failed write means the client is gone: the front says so
             * next (tg_req_on_front_gone), which cancels this call */
            tg_front_stream_write(rq->rq_c, rq->rq_chunk.b_data, rq->rq_chunk.b_len);
            tg_buf_reset(&rq->rq_chunk);
        }
        if (rq->rq_out_allow && !rq->rq_saw_done && tg_req_past_allowance(rq)) {
            if (rq->rq_conv)
                tg_req_conv_cut(rq); /* the client's own end: message_delta max_tokens, or length */
            else
                tg_req_cut_at_allowance(rq);
            return UP_STOP; /* the upstream call ends here (tg_req_up_done sees rq_capped) */
        }
        return UP_TAKEN;
    }
    if (rq->rq_up_status >= 200 && rq->rq_up_status < 300) {
        if (tg_buf_append(&rq->rq_resp, data, n)) {
            snprintf(a->at_msg, sizeof a->at_msg, "the upstream answer passed %u bytes", RESP_MAX);
            return UP_STOP;
        }
        return UP_TAKEN;
    }
    /* An error body: keep its start for the record and the client. */
    size_t room = ERR_BODY_MAX > rq->rq_resp.b_len ? ERR_BODY_MAX - rq->rq_resp.b_len : 0;
    tg_buf_append(&rq->rq_resp, data, n < room ? n : room);
    return UP_TAKEN;
}

void tg_req_up_begin(req_t *rq)
{
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    a->at_retry_after_ms = 0;
    a->at_upid[0] = '\0';
    rq->rq_location = NULL;
}

/* The end of the final response head. A 2xx stream answers the client
 * now, as a proxy forwards headers, so a slow first token does not hold the
 * client's response head back. */
void tg_req_up_head(req_t *rq, int status, const char *ctype)
{
    rq->rq_up_status = status;
    first_byte(rq);
    rq->rq_json_stream = status < 300 && rq->rq_scan.sc_stream && !rq->rq_viaproto && ctype &&
                         strncasecmp(ctype, "application/json", 16) == 0;
    if (status >= 200 && status < 300 && rq->rq_scan.sc_stream && !rq->rq_json_stream && !rq->rq_started &&
        !rq->rq_client_gone)
        start_stream(rq);
}

void tg_req_up_field(req_t *rq, const char *name, size_t kl, const char *v, size_t vl)
{
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    if (kl == 8 && strncasecmp(name, "location", 8) == 0) {
        rq->rq_location = tg_pool_strndup(rq->rq_pool, v, vl < 400 ? vl : 400);
        return;
    }
    char val[96];
    if (vl >= sizeof val)
        vl = sizeof val - 1;
    memcpy(val, v, vl);
    val[vl] = '\0';
    if (kl == 11 && strncasecmp(name, "retry-after", 11) == 0) {
        char *end;
        double s = strtod(val, &end);
        if (end != val && s >= 0 && s < 86400 && !a->at_retry_after_ms)
            a->at_retry_after_ms = (int64_t)(s * 1000);
    } else if (kl == 14 && strncasecmp(name, "retry-after-ms", 14) == 0) {
        char *end;
        double ms = strtod(val, &end);
        if (end != val && ms >= 0 && ms < 86400e3)
            a->at_retry_after_ms = (int64_t)ms;
    } else if (kl == 12 && strncasecmp(name, "x-request-id", 12) == 0) {
        tg_utf8_clean(a->at_upid, sizeof a->at_upid, val, vl);
    }
}

void tg_req_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    req_t *rq = arg;
    if (rq->rq_timer_lease) {
        rq->rq_timer_lease = 0;
        tg_req_start_attempt(rq);
        return;
    }
    if (rq->rq_timer_backoff) {
        rq->rq_timer_backoff = 0;
        tg_req_start_attempt(rq);
        return;
    }
    /* First-byte timeout: end the transfer as a timeout. */
    rq->rq_fb_timeout = 1;
    tg_req_up_done(rq, UP_TIMEOUT, "no first byte in time");
}

/* An identifier from an upstream error's JSON (its code or param), kept
 * only when it is short and plain: [A-Za-z0-9_.[]-]. */
static int plain_ident(tg_json_t *j, char *out, size_t n)
{
    int trunc = 0;
    if (tg_json_peek(j) != TG_JSON_STRING)
        return tg_json_skip(j);
    int rc = tg_json_string_to(j, out, n, &trunc);
    for (const char *c = out; rc == 0 && *c; c++)
        if (!(isalnum((unsigned char)*c) || strchr("_.[]-", *c)))
            trunc = 1;
    if (trunc)
        out[0] = '\0';
    return rc;
}

typedef struct upstream_err {
    char ue_code[48];
    char ue_param[48];
} upstream_err_t;

static int err_member(tg_json_t *j, const char *name, void *arg)
{
    upstream_err_t *e = arg;
    if (strcmp(name, "code") == 0)
        return plain_ident(j, e->ue_code, sizeof e->ue_code);
    if (strcmp(name, "param") == 0)
        return plain_ident(j, e->ue_param, sizeof e->ue_param);
    return tg_json_skip(j);
}

static int err_top(tg_json_t *j, const char *name, void *arg)
{
    return strcmp(name, "error") == 0 ? tg_json_members(j, err_member, arg) : tg_json_skip(j);
}

/* The provider refused the request itself (a 4xx other than 401, 403, 404
 * and 429): the client gets the status and the gateway's own message,
 * naming the provider's error code and param when they are plain
 * identifiers (context_length_exceeded, messages[0].content); the body
 * itself stays in the record. */
static void upstream_refused(req_t *rq, attempt_t *a)
{
    upstream_err_t e = {"", ""};
    tg_json_t j;
    tg_json_init(&j, rq->rq_resp.b_data, rq->rq_resp.b_len, NULL, 0);
    tg_json_members(&j, err_top, &e);
    tg_req_fail(rq, a->at_status, "invalid_request_error", e.ue_code[0] ? e.ue_code : "upstream_invalid_request",
                 a->at_class, "The upstream model rejected the request (HTTP %d%s%s%s%s).", a->at_status,
                 e.ue_code[0] ? ", code " : "", e.ue_code, e.ue_param[0] ? ", param " : "", e.ue_param);
}

/* "name: value\r\n" into a head's fields */
static int put_field(tg_buf_t *f, const char *name, const char *value)
{
    return tg_buf_puts(f, name) | tg_buf_puts(f, ": ") | tg_buf_puts(f, value) | tg_buf_puts(f, "\r\n");
}

void tg_req_start_attempt(req_t *rq)
{
    const Tollgate__V1__RouteTarget *t = rq->rq_route->tiers[rq->rq_tier]->targets[rq->rq_target];
    const tg_chan_t *ch = tg_cfg_channel(rq->rq_cfg, t->channel_id);
    const Tollgate__V1__Channel *c = ch->ch_pb;
    if (!rq->rq_w->w_agent->a_opts.ao_spend_off && tg_req_ensure_reserved(rq, ch) != 0)
        return; /* parked until the lease answers, or refused */
    /* the channel's protocol decides the body, path, credential header and
     * how the answer is read; either side Anthropic goes through proto/ */
    rq->rq_uproto = tg_req_channel_proto(rq, c->provider);
    int chat = rq->rq_ep->ep_kind == EP_CHAT || rq->rq_ep->ep_kind == EP_MESSAGES;
    rq->rq_viaproto = (chat && (rq->rq_cproto == TG_PROTO_ANTHROPIC || rq->rq_uproto == TG_PROTO_ANTHROPIC)) ||
                      (rq->rq_ep->ep_kind == EP_RESPONSES && rq->rq_uproto != TG_PROTO_RESPONSES);
    tg_proto_stream_destroy(rq->rq_conv);
    rq->rq_conv = NULL;
    rq->rq_conv_err = 0;
    attempt_t *a = tg_req_att_new(rq);
    char hdr[4200];
    if (!a) {
        tg_req_fail(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "out of memory (or more than %d attempts) for model %s", MAX_ATTEMPTS, rq->rq_route->model);
        return;
    }
    a->at_chan = ch;
    a->at_tier = rq->rq_tier;
    a->at_target = rq->rq_target;
    a->at_model = t->upstream_model && *t->upstream_model ? t->upstream_model : rq->rq_route->model;
    a->at_counted = 1;
    a->at_start_us = now_us();
    rq->rq_counted++;
    rq->rq_up_status = 0;
    rq->rq_got_byte = 0;
    rq->rq_json_stream = 0;
    rq->rq_fb_timeout = 0;
    rq->rq_location = NULL;
    tg_buf_reset(&rq->rq_resp);
    tg_buf_reset(&rq->rq_upbody);
    if (!rq->rq_upbody.b_data) {
        /* One allocation of the final size instead of doubling from 64
         * bytes (a 100 KB prompt was copied a dozen times). tg_buf_t is a
         * plain struct: an empty buffer may be handed its memory. */
        size_t cap = rq->rq_body_len + 256;
        if ((rq->rq_upbody.b_data = tg_malloc(cap)) != NULL)
            rq->rq_upbody.b_cap = cap;
    }
    if (rq->rq_cproto != rq->rq_uproto) {
        char cerr[TG_ERRLEN] = "";
        int crc = tg_req_conv_body(rq, a->at_model, tg_req_output_allowance(rq), cerr, sizeof cerr);
        if (crc != 0) {
            /* the client's request has a shape the channel's protocol
             * cannot carry: the client's to change, not a channel failure */
            a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_GIVE_UP;
            tg_utf8_clean(a->at_msg, sizeof a->at_msg, cerr, strlen(cerr));
            if (crc == TG_PROTO_ENOMEM || crc == TG_PROTO_ETOOBIG)
                tg_req_fail(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                            "out of memory converting the request");
            else
                tg_req_fail(rq, 400, "invalid_request_error", "unsupported_conversion",
                            TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                            "The model `%s` is served by a %s channel and this request cannot be converted to it: %s",
                            rq->rq_route->model, tg_proto_name(rq->rq_uproto), a->at_msg);
            return;
        }
    } else if (tg_agent_rewrite(rq->rq_body, rq->rq_body_len, &rq->rq_scan, a->at_model,
                                rq->rq_scan.sc_stream && rq->rq_ep->ep_stream_usage && rq->rq_uproto == TG_PROTO_OPENAI,
                                &rq->rq_upbody)) {
        a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_GIVE_UP;
        tg_req_fail(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "out of memory rewriting the request");
        return;
    }
    /* the head's fields, "Name: value\r\n" each, for either transport */
    tg_buf_t f;
    tg_buf_init(&f, 64u << 10);
    int bad = tg_buf_reserve(&f, 512) != 0 || tg_proto_auth_header(rq->rq_uproto, ch->ch_credential, hdr, sizeof hdr) != 0 ||
              tg_buf_puts(&f, "Content-Type: application/json\r\n") != 0 ||
              (ch->ch_credential[0] && (tg_buf_puts(&f, hdr) != 0 || tg_buf_puts(&f, "\r\n") != 0));
    if (!bad && rq->rq_uproto == TG_PROTO_ANTHROPIC) {
        /* anthropic-version: an Anthropic client's own (and its
         * anthropic-beta), else the adapter's */
        const char *ver = rq->rq_cproto == TG_PROTO_ANTHROPIC && rq->rq_c
                              ? tg_front_header(rq->rq_c, "anthropic-version") : NULL;
        const char *beta = rq->rq_cproto == TG_PROTO_ANTHROPIC && rq->rq_c
                               ? tg_front_header(rq->rq_c, "anthropic-beta") : NULL;
        if (ver && *ver)
            bad = tg_buf_printf(&f, "anthropic-version: %s\r\n", ver) != 0;
        else
            bad = tg_buf_printf(&f, "%s\r\n", tg_proto_extra_header(TG_PROTO_ANTHROPIC)) != 0;
        if (!bad && beta && *beta)
            bad = tg_buf_printf(&f, "anthropic-beta: %s\r\n", beta) != 0;
    }
    for (size_t i = 0; !bad && i < c->n_extra_headers; i++)
        bad = put_field(&f, c->extra_headers[i]->name, c->extra_headers[i]->value) != 0;
    const tg_agent_opts_t *ao = &rq->rq_w->w_agent->a_opts;
    for (int i = 0; !bad && i < ao->ao_nforward; i++) {
        const char *v = rq->rq_c ? tg_front_header(rq->rq_c, ao->ao_forward[i]) : NULL;
        if (v)
            bad = put_field(&f, ao->ao_forward[i], v) != 0;
    }
    const char *url = ch->ch_chat_url;
    /* a chat request, or a converted Responses one, goes to the channel
     * protocol's path (base_url + /chat/completions or /messages), others
     * to their endpoint's */
    const char *path = !chat && !rq->rq_viaproto ? rq->rq_ep->ep_upstream
                       : rq->rq_uproto == TG_PROTO_ANTHROPIC ? "/messages" : tg_req_endpoints[EP_CHAT].ep_upstream;
    if (!bad && path != tg_req_endpoints[EP_CHAT].ep_upstream) {
        /* base_url + the path: ch_chat_url less its suffix. */
        size_t bl = strlen(url) - strlen(tg_req_endpoints[EP_CHAT].ep_upstream);
        size_t sl = strlen(path);
        char *u = tg_pool_alloc(rq->rq_pool, bl + sl + 1);
        if (!u) {
            bad = 1;
        } else {
            memcpy(u, url, bl);
            memcpy(u + bl, path, sl + 1);
            url = u;
        }
    }
    up_req_t ur = {
        .ur_url = url,
        .ur_fields = f.b_data ? f.b_data : "",
        .ur_fields_len = f.b_len,
        .ur_body = rq->rq_upbody.b_data ? rq->rq_upbody.b_data : "",
        .ur_body_len = rq->rq_upbody.b_len,
        .ur_connect_ms = c->connect_timeout_ms ? c->connect_timeout_ms : DEF_CONNECT_MS,
        .ur_total_ms = c->request_timeout_ms ? c->request_timeout_ms : DEF_TOTAL_MS,
    };
    /* the lean client (h1up.h) for plain and TLS channels; libcurl when a
     * proxy variable was set at start, or when asked (--upstream-client curl) */
    int lean = !ao->ao_upstream_curl && rq->rq_w->w_agent->a_no_env_proxy &&
               (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0);
    uint32_t fb = c->first_byte_timeout_ms ? c->first_byte_timeout_ms : DEF_FIRST_BYTE_MS;
    struct timeval tv = {fb / 1000, (fb % 1000) * 1000};
    rq->rq_timer_backoff = 0;
    evtimer_add(rq->rq_timer, &tv);
    if (!bad)
        bad = lean ? tg_req_lean_start(rq, &ur) : tg_req_curl_start(rq, &ur);
    tg_buf_free(&f);
    if (!bad)
        return;
    a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_GIVE_UP;
    tg_req_drop_call(rq);
    tg_req_fail(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                 "out of memory starting the upstream call");
}

static int classify(req_t *rq, int res)
{
    if (rq->rq_fb_timeout || res == UP_TIMEOUT)
        return rq->rq_started ? TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_STREAM_CUT
                              : TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_TIMEOUT;
    if (res != UP_OK) {
        if (rq->rq_client_gone)
            return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CLIENT_CANCELLED;
        if (rq->rq_started)
            return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_STREAM_CUT;
        if (res == UP_ABORTED)
            return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED;
        if (rq->rq_got_byte && rq->rq_up_status >= 500)
            return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_UPSTREAM_5XX;
        return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CONNECT;
    }
    long st = rq->rq_up_status;
    if (st >= 200 && st < 300) {
        if (rq->rq_scan.sc_stream && !rq->rq_saw_done && !rq->rq_json_stream)
            return rq->rq_started ? TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_STREAM_CUT
                                  : TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED;
        if (!rq->rq_scan.sc_stream && rq->rq_viaproto) {
            attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
            char err[TG_ERRLEN] = "";
            if (tg_req_conv_answer(rq, err, sizeof err) != 0) {
                snprintf(a->at_msg, sizeof a->at_msg, "HTTP %ld with a malformed answer: %.100s", st, err);
                return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED;
            }
            return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE;
        }
        if (!rq->rq_scan.sc_stream || rq->rq_json_stream) {
            /* The whole answer is validated: a malformed 200 is a failed
             * attempt (retried per policy), never relayed and billed. */
            tg_answer_t an;
            attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
            char err[TG_ERRLEN] = "";
            if (tg_agent_answer(rq->rq_resp.b_data, rq->rq_resp.b_len, rq->rq_ep->ep_answer, usage_vendor(rq),
                                &an, NULL, err, sizeof err) != 0) {
                snprintf(a->at_msg, sizeof a->at_msg, "HTTP %ld with a malformed answer: %.100s", st, err);
                return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED;
            }
            if (an.an_usage)
                keep_usage(rq, an.an_counts_rc, &an.an_counts, an.an_usage, an.an_usage_len);
            memcpy(rq->rq_finish, an.an_finish, sizeof rq->rq_finish);
            if (rq->rq_ep->ep_kind == EP_IMAGES) {
                rq->rq_images = an.an_images;
                if (rq->rq_images < 0) {
                    snprintf(a->at_msg, sizeof a->at_msg, "HTTP %ld with no data array of images", st);
                    return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED;
                }
            }
        }
        return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE;
    }
    if (st >= 300 && st < 400) {
        /* A redirect is never followed (it would send the channel's
         * credential to another host) nor passed on (the client would get
         * the upstream's 3xx, Location or not): the channel is misconfigured,
         * so the router moves on like for a refused credential. */
        const char *loc = rq->rq_location;
        char clean[120];
        attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
        tg_utf8_clean(clean, sizeof clean, loc ? loc : "(no Location)", strlen(loc ? loc : "(no Location)"));
        snprintf(a->at_msg, sizeof a->at_msg, "HTTP %ld: redirect to %s not followed", st, clean);
        return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CHANNEL_REJECTED;
    }
    if (st == 429)
        return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_RATE_LIMITED;
    if (st == 401 || st == 403 || st == 404)
        return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CHANNEL_REJECTED;
    if (st >= 500)
        return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_UPSTREAM_5XX;
    return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_UPSTREAM_4XX;
}

static void send_buffered(req_t *rq, int status)
{
    tg_front_conn_t *hr = rq->rq_c;
    if (!hr)
        return;
    tg_req_route_headers(rq, hr);
    if (status == 200 && rq->rq_key && rq->rq_key->expose_cost) {
        tg_req_meter_and_price(rq);
        if (rq->rq_card) {
            char v[128], amt[32];
            snprintf(v, sizeof v, "%s %s", tg_price_format(rq->rq_cost, amt, sizeof amt),
                     rq->rq_currency ? rq->rq_currency : "");
            add_header(hr, "x-tollgate-cost", v);
        }
    }
    add_header(hr, "Content-Type", "application/json");
    rq->rq_status = status;
    rq->rq_resp_bytes = (int64_t)rq->rq_resp.b_len;
    rq->rq_ttft_us = now_us() - rq->rq_t0_us;
    tg_front_reply(hr, status, rq->rq_resp.b_data, rq->rq_resp.b_len);
    rq->rq_c = NULL;
}

/* Appends the error event that ends a stream the upstream cut: chat's
 * `data: {"error":{...}}`, the Responses API's `event: error` (its own
 * members, plus an "error" object: the openai SDK raises an event whose
 * data has one, and only yields a bare Responses error event). */
static int stream_error_event(req_t *rq, tg_buf_t *out)
{
    static const char msg[] = "The upstream ended the stream before it completed: the answer is incomplete.";
    if (rq->rq_cproto == TG_PROTO_ANTHROPIC)
        return tg_buf_printf(out, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\","
                                  "\"message\":\"%s\"}}\n\n", msg);
    if (rq->rq_ep->ep_kind == EP_RESPONSES)
        return tg_buf_printf(out, "event: error\ndata: {\"type\":\"error\",\"code\":\"stream_cut\",\"message\":\"%s\","
                                  "\"param\":null,\"error\":{\"type\":\"upstream_error\",\"code\":\"stream_cut\","
                                  "\"message\":\"%s\"}}\n\n", msg, msg);
    return tg_buf_printf(out, "data: {\"error\":{\"message\":\"%s\",\"type\":\"upstream_error\",\"param\":null,"
                              "\"code\":\"stream_cut\"}}\n\n", msg);
}

/* A stream request the upstream answered with JSON (it ignored stream:
 * true): the answer goes out as the stream the client asked for, its usage
 * billed like any other. */
static void send_as_stream(req_t *rq)
{
    tg_buf_t ev, tail;
    tg_buf_init(&ev, 2 * RESP_MAX);
    tg_buf_init(&tail, 2 * RESP_MAX);
    if (rq->rq_c && tg_sse_from_answer(rq->rq_resp.b_data, rq->rq_resp.b_len, rq->rq_ep->ep_answer,
                                       rq->rq_scan.sc_include_usage, &ev, &tail) == 0) {
        rq->rq_saw_done = 1;
        start_stream(rq);
        if (ev.b_len)
            tg_front_stream_write(rq->rq_c, ev.b_data, ev.b_len);
        rq->rq_resp_bytes = (int64_t)(ev.b_len + tail.b_len);
        tg_front_stream_end(rq->rq_c, tail.b_data, tail.b_len);
        rq->rq_c = NULL;
    } else if (rq->rq_c) {
        /* out of memory: the client is told so; the receipt bills the answer */
        rq->rq_status = 500;
        tg_req_send_error(rq->rq_c, rq->rq_cproto, rq->rq_id, 500, "server_error", NULL, "out of memory streaming the answer");
        rq->rq_c = NULL;
    }
    tg_buf_free(&ev);
    tg_buf_free(&tail);
}

void tg_req_up_done(req_t *rq, int res, const char *msg)
{
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    if (rq->rq_conv && !rq->rq_capped) {
        /* a converted stream ends here: its end (an OpenAI upstream that
         * sent finish_reason but no [DONE]) or its error event */
        char cerr[TG_ERRLEN] = "";
        if (tg_req_conv_finish(rq, cerr, sizeof cerr) != 0 && !a->at_msg[0])
            tg_utf8_clean(a->at_msg, sizeof a->at_msg, cerr, strlen(cerr));
    }
    tg_req_conv_result(rq);
    /* ended at its reservation by the gateway: a complete answer */
    int cls = rq->rq_capped ? TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE : classify(rq, res);
    a->at_class = cls;
    a->at_status = (int)rq->rq_up_status;
    a->at_latency_us = now_us() - a->at_start_us;
    if (!a->at_msg[0]) {
        /* Text from outside goes into the record's protobuf strings: cut on
         * a character boundary, invalid bytes replaced (tg_utf8.h). */
        if (res != UP_OK) {
            const char *m = rq->rq_fb_timeout ? "no first byte in time" : msg && *msg ? msg : "upstream call failed";
            tg_utf8_clean(a->at_msg, sizeof a->at_msg, m, strlen(m));
        } else if (cls != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE) {
            char body[121];
            tg_utf8_clean(body, sizeof body, rq->rq_resp.b_data ? rq->rq_resp.b_data : "", rq->rq_resp.b_len);
            snprintf(a->at_msg, sizeof a->at_msg, "HTTP %ld: %s", rq->rq_up_status, body);
        }
    }
    tg_req_drop_call(rq);
    int ok = cls == TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE || cls == TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_UPSTREAM_4XX;
    if (cls != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CLIENT_CANCELLED)
        tg_agent_brk_record(rq->rq_w->w_agent, a->at_chan->ch_pb->id, &rq->rq_brk, ok, mono_ms());

    if (rq->rq_started) {
        /* Bytes reached the client: this attempt is final whatever happened;
         * a cut stream ends cleanly with what was produced. */
        a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_FINAL;
        if (cls != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE) {
            rq->rq_final_class = cls;
            snprintf(rq->rq_final_msg, sizeof rq->rq_final_msg, "%s", a->at_msg);
            /* The client must be able to tell truncation from completion:
             * the stream ends with an error event (the SDKs raise it). */
            if (rq->rq_c && !rq->rq_conv_err && stream_error_event(rq, &rq->rq_tail) != 0)
                TG_LOG(TG_LOG_WARN, "agent", "request %s: no room for the stream's error event", rq->rq_id);
        }
        if (rq->rq_c) {
            tg_front_stream_end(rq->rq_c, rq->rq_tail.b_data, rq->rq_tail.b_len);
            rq->rq_c = NULL;
        }
        tg_req_finish(rq);
        return;
    }
    if (cls == TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE) {
        a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_FINAL;
        if (rq->rq_json_stream)
            send_as_stream(rq);
        else
            send_buffered(rq, 200);
        tg_req_finish(rq);
        return;
    }
    if (cls == TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_UPSTREAM_4XX) {
        /* The provider refused the request itself: another channel would
         * refuse it too. */
        a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_FINAL;
        upstream_refused(rq, a);
        return;
    }
    if (cls == TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CLIENT_CANCELLED) {
        a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_GIVE_UP;
        rq->rq_final_class = cls;
        tg_req_finish(rq);
        return;
    }
    if (!tg_req_next_step(rq, a)) {
        tg_req_give_up(rq, a);
        return;
    }
    if (a->at_backoff_ms > 0) {
        struct timeval tv = {a->at_backoff_ms / 1000, (a->at_backoff_ms % 1000) * 1000};
        rq->rq_timer_backoff = 1;
        evtimer_add(rq->rq_timer, &tv);
        return;
    }
    tg_req_start_attempt(rq);
}

/* The client went away: stop the upstream call (its connection closes, so
 * the provider stops generating) and note it in the record. */
static void client_gone(req_t *rq)
{
    tg_req_conv_result(rq); /* a converted stream's usage so far */
    rq->rq_client_gone = 1;
    rq->rq_final_class = TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CLIENT_CANCELLED;
    snprintf(rq->rq_final_msg, sizeof rq->rq_final_msg, "the client closed the connection");
    if (rq->rq_natt && rq->rq_call) {
        attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
        a->at_class = TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CLIENT_CANCELLED;
        a->at_status = (int)rq->rq_up_status;
        a->at_latency_us = now_us() - a->at_start_us;
        a->at_decision = rq->rq_started ? TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_FINAL
                                        : TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_GIVE_UP;
        snprintf(a->at_msg, sizeof a->at_msg, "cancelled: the client went away");
    }
    tg_req_drop_call(rq);
    rq->rq_timer_backoff = 0;
    if (!rq->rq_status)
        rq->rq_status = 499;
}

/* The front says the client hung up (EOF or a failed write) before the
 * request ended: cancel the upstream call, bill what was produced. */
void tg_req_on_front_gone(tg_front_conn_t *c, void *arg)
{
    req_t *rq = arg;
    client_gone(rq);
    tg_front_abandon(c);
    rq->rq_c = NULL;
    tg_req_finish(rq);
}

/* The client took what was queued: let a paused upstream go on. */
void tg_req_on_front_drain(tg_front_conn_t *c, void *arg)
{
    (void)c;
    req_t *rq = arg;
    if (rq->rq_paused && rq->rq_call) {
        rq->rq_paused = 0;
        if (rq->rq_tx == UP_LEAN)
            tg_req_lean_resume(rq);
        else
            tg_req_curl_resume(rq);
    }
}
