/* request.c: one client request, from the front's handler call to its receipt.
 *
 * Lifecycle (all on the worker that accepted the connection):
 *   1. route the path; take the worker's configuration reference;
 *   2. authenticate (Bearer or x-api-key -> SHA-256 -> key), check status,
 *      expiry, client IP (X-Forwarded-For only from trusted proxies),
 *      body size, then scan the body in one pass (model, stream, ...);
 *   3. resolve the route, check the model allowlist, find the targets the
 *      key may use (route types, prepaid balance), else 402/403;
 *   4. attempt: pick a target (tier, weight, breaker), rewrite the body
 *      (upstream model, include_usage), hand a curl easy handle to the
 *      worker's multi; bytes stream to the client from the write callback;
 *   5. on failure before the first byte reached the client: retry the same
 *      channel (bounded, with backoff), the next target of the tier, or the
 *      next tier; the total is capped;
 *   6. finish: the receipt (tollgate.v1.UsageRecord with every attempt) is
 *      emitted, the configuration reference dropped, the pool freed.
 * Everything request-scoped comes from one tg_pool_t. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include "agent/json.h"
#include "agent/server_int.h"
#include "base/tg_log.h"
#include "base/tg_utf8.h"
#include "billing/tg_billing.h"
#include "crypto/tg_crypto.h"
#include "meter/tg_price.h"
#include "pbjson/tg_pbjson.h"

#define MAX_ATTEMPTS 8 /* attempts kept per request (breaker skips included); more give up */
#define ATT_INLINE 2   /* kept in the req_t; more come from the pool (most requests make one) */
#define MAX_TARGETS 64          /* per tier: the failed set is a bitmask */
#define ERR_BODY_MAX (64 << 10) /* upstream error bodies kept */
#define RESP_MAX (64u << 20)    /* non-streaming answers buffered */
#define SSE_EVENT_MAX (4u << 20)
#define STREAM_QUEUE_MAX (256u << 10) /* stream bytes queued for a slow client before the upstream pauses */

#define DEF_MAX_OUTPUT 4096   /* output cap of a request that sets none, unless the route or policy says */
#define LEASE_POLL_MS 2       /* a request waiting for its spend lease looks again this often */
#define LEASE_WAIT_MS 5000    /* ... and gives up after this long (503) */

#define DEF_CONNECT_MS 5000
#define DEF_FIRST_BYTE_MS 120000
#define DEF_TOTAL_MS 600000

/* ---- the OpenAI endpoints: what differs between them ------------------------- *
 * Every POST endpoint goes through the same path (auth, policy, scan,
 * routing, retries, upstream call, metering, receipt); this table holds the
 * few things that differ. */
enum { EP_CHAT, EP_EMBEDDINGS, EP_RESPONSES, EP_IMAGES };

typedef struct endpoint {
    const char *ep_path;        /* client path, also the record's endpoint */
    const char *ep_upstream;    /* path under the channel's base_url */
    int ep_kind;                /* EP_* */
    int ep_stream;              /* stream: true is served (SSE) */
    int ep_stream_usage;        /* ask for stream_options.include_usage */
    int ep_answer;              /* TG_ANSWER_*: how its answers are read */
    int ep_text;                /* it produces text (counted locally when usage is missing) */
} endpoint_t;

static const endpoint_t endpoints[] = {
    {"/v1/chat/completions", "/chat/completions", EP_CHAT, 1, 1, TG_ANSWER_CHAT, 1},
    {"/v1/embeddings", "/embeddings", EP_EMBEDDINGS, 0, 0, TG_ANSWER_OTHER, 0},
    {"/v1/responses", "/responses", EP_RESPONSES, 1, 0, TG_ANSWER_RESPONSES, 1},
    {"/v1/images/generations", "/images/generations", EP_IMAGES, 0, 0, TG_ANSWER_IMAGES, 0},
};

typedef struct attempt {
    const tg_chan_t *at_chan;
    uint32_t at_tier;
    int at_target;
    const char *at_model; /* upstream model */
    int at_status;
    int at_class;         /* Tollgate__V1__ErrorClass */
    int at_decision;      /* Tollgate__V1__AttemptDecision */
    int at_counted;       /* counts toward max_attempts (not a breaker skip) */
    int64_t at_start_us;
    int64_t at_latency_us;
    int64_t at_ttft_us;
    int64_t at_retry_after_ms;
    int64_t at_backoff_ms;
    char at_msg[160];
    char at_upid[96];
} attempt_t;

struct req {
    worker_t *rq_w;
    req_t *rq_prev, *rq_next;
    tg_pool_t *rq_pool;
    tg_front_conn_t *rq_c;    /* the client's request; NULL once it is ended */
    tg_cfg_t *rq_cfg;
    const tg_key_t *rq_key;
    const tg_account_t *rq_acct;
    const tg_route_t *rq_route;
    char rq_id[48];
    char rq_ip[64];
    const char *rq_run;
    const char *rq_ua;
    const char *rq_endpoint;
    const endpoint_t *rq_ep;  /* NULL for GET /v1/models */
    const char *rq_body;      /* the request body (rq_body_own, or "") */
    size_t rq_body_len;
    char *rq_body_own;        /* taken from the front: it outlives the client */
    tg_scan_t rq_scan;
    int64_t rq_t0_us;
    /* routing */
    uint32_t rq_tier;
    int rq_target;
    unsigned rq_same;     /* retries on the current target */
    uint64_t rq_failed;   /* targets of the current tier that failed */
    int rq_fallback;      /* a later tier served */
    attempt_t *rq_att;        /* rq_att_in, or MAX_ATTEMPTS from the pool once more are needed */
    attempt_t rq_att_in[ATT_INLINE];
    int rq_natt;
    int rq_counted;
    tg_brk_conf_t rq_brk;
    /* the attempt in flight */
    CURL *rq_easy;
    struct curl_slist *rq_hdrs;
    tg_buf_t rq_upbody;
    char rq_curlerr[CURL_ERROR_SIZE];
    long rq_up_status;
    int rq_got_byte;
    int rq_fb_timeout;        /* the first-byte timer fired */
    struct event *rq_timer;   /* first-byte timeout or backoff */
    int rq_paused;            /* the upstream is paused: the client is behind */
    int rq_timer_backoff;
    /* the client side */
    int rq_started;           /* the response head went out: no more retries */
    int rq_client_gone;
    int rq_status;            /* HTTP status sent to the client */
    int rq_saw_done;
    int rq_json_stream;       /* a stream request answered with JSON: re-cut as a stream at its end */
    tg_buf_t rq_resp;
    tg_sse_t rq_sse;
    tg_buf_t rq_chunk;        /* stream events of one upstream read, for one write */
    tg_buf_t rq_tail;         /* the stream's final event, held for the end (front.h) */
    int64_t rq_ttft_us;
    int64_t rq_resp_bytes;
    /* what was counted */
    tg_buf_t rq_text;         /* text produced, for local counting */
    tg_usage_t rq_usage;
    char *rq_usage_raw;
    int rq_usage_bad;         /* the provider's usage has counts that are not counts (TG_AGENT_ERANGE) */
    int rq_usage_lost;        /* the final event that carries the usage did not parse */
    uint64_t rq_hold;         /* names its held answer's record (tg_front_hold); 0: not held */
    long rq_images;           /* images in an Images answer's data[] */
    char rq_finish[32];
    int rq_final_class;
    char rq_final_msg[256];
    int rq_no_spool;          /* refused because the outbox is full: spooling would grow it */
    /* pre-authorization: the upper estimate reserved on a spend lease (lease.h) */
    int64_t rq_resv;          /* reserved on rq_resv_bucket; 0: nothing */
    const char *rq_resv_bucket;
    uint64_t rq_ticket;       /* the lease refill this request waits for */
    int64_t rq_lease_deadline_us;
    int64_t rq_input_max;     /* prompt tokens at most: body bytes, or an exact count */
    int rq_exact;             /* rq_input_max is an exact count */
    int rq_timer_lease;       /* rq_timer polls the lease */
    int rq_refused_budget;    /* refused by spend control: its receipt is spooled */
    struct scope_ref *rq_scopes; /* limit scopes (key, project windows, the run), from the pool */
    int rq_nscopes;
    int rq_scopes_done;       /* rq_scopes computed */
    int rq_sres;              /* the first rq_sres scopes hold rq_resv too */
    const Tollgate__V1__RunBudget *rq_runb; /* the run's budget (X-Tollgate-Run), if configured */
    int64_t rq_out_allow;     /* a chat stream is ended past this many output tokens (its reservation); 0: no check */
    int64_t rq_out_est;       /* the output tokens the last estimate allowed */
    int64_t rq_out_counted;   /* output tokens counted so far, and of how many bytes of rq_text */
    size_t rq_text_counted;
    int rq_capped;            /* the stream was ended at its reservation */
    /* counted and priced once, by meter_and_price */
    int rq_metered;
    Tollgate__V1__TokenUsage rq_tu;
    Tollgate__V1__UnitPrices rq_up;
    const Tollgate__V1__PriceCard *rq_card;
    int64_t rq_cost, rq_upcost;
    const char *rq_currency;
    const char *rq_bucket;
};

/* A limit scope a request reserves on besides its bucket. */
typedef struct scope_ref {
    char sr_id[200];     /* billing/tg_billing.h scope id */
    const char *sr_kind; /* "key", "project", "run" */
    int sr_window;
    int64_t sr_limit, sr_end;
} scope_ref_t;

#define MAX_SCOPES 8

static void release_all(req_t *rq, int64_t cost);

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t rng(worker_t *w)
{
    uint64_t x = w->w_rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return w->w_rng = x;
}

/* The next attempt's slot, zeroed: the first ATT_INLINE live in the req_t,
 * beyond them the array moves to the pool (MAX_ATTEMPTS). NULL when all
 * MAX_ATTEMPTS are used or the pool is out of memory. */
static attempt_t *att_new(req_t *rq)
{
    if (rq->rq_natt >= MAX_ATTEMPTS)
        return NULL;
    if (rq->rq_att == rq->rq_att_in && rq->rq_natt == ATT_INLINE) {
        attempt_t *all = tg_pool_alloc(rq->rq_pool, MAX_ATTEMPTS * sizeof(*all));
        if (!all)
            return NULL;
        memcpy(all, rq->rq_att_in, sizeof rq->rq_att_in);
        rq->rq_att = all;
    }
    attempt_t *a = &rq->rq_att[rq->rq_natt++];
    memset(a, 0, sizeof *a);
    return a;
}

/* ---- replies ------------------------------------------------------------------ */

static void add_header(tg_front_conn_t *c, const char *k, const char *v)
{
    tg_front_add_header(c, k, v);
}

/* An OpenAI-shaped error: {"error":{"message","type","param","code"}}.
 * Ends the request c. */
static void send_error(tg_front_conn_t *c, const char *reqid, int status, const char *type,
                       const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void send_error(tg_front_conn_t *c, const char *reqid, int status, const char *type,
                       const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tg_buf_t b;
    tg_buf_init(&b, 8192);
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
    add_header(c, "Content-Type", "application/json");
    if (reqid)
        add_header(c, "x-request-id", reqid);
    tg_front_reply(c, status, b.b_data, b.b_len);
    tg_buf_free(&b);
}

/* ---- request bookkeeping ---------------------------------------------------- */

static void link_req(req_t *rq)
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

static void drop_easy(req_t *rq)
{
    worker_t *w = rq->rq_w;
    if (rq->rq_easy) {
        curl_multi_remove_handle(w->w_multi, rq->rq_easy);
        /* Kept for the next attempt on this worker: saves the handle's
         * allocations (connections live in the multi handle either way). */
        if (w->w_nidle < (int)(sizeof w->w_idle / sizeof w->w_idle[0])) {
            curl_easy_reset(rq->rq_easy);
            w->w_idle[w->w_nidle++] = rq->rq_easy;
        } else {
            curl_easy_cleanup(rq->rq_easy);
        }
        rq->rq_easy = NULL;
    }
    if (rq->rq_hdrs) {
        curl_slist_free_all(rq->rq_hdrs);
        rq->rq_hdrs = NULL;
    }
    if (rq->rq_timer)
        evtimer_del(rq->rq_timer);
}

/* Frees what the request holds; a client request not answered yet (a
 * shutdown) is abandoned: its connection closes. */
static void req_free(req_t *rq)
{
    if (rq->rq_c) {
        tg_front_abandon(rq->rq_c);
        rq->rq_c = NULL;
    }
    drop_easy(rq);
    if (rq->rq_timer)
        event_free(rq->rq_timer);
    tg_buf_free(&rq->rq_chunk);
    tg_buf_free(&rq->rq_tail);
    tg_free(rq->rq_body_own);
    tg_buf_free(&rq->rq_upbody);
    tg_buf_free(&rq->rq_resp);
    tg_buf_free(&rq->rq_text);
    tg_sse_free(&rq->rq_sse);
    unlink_req(rq);
    tg_cfg_unref(rq->rq_cfg);
    tg_pool_destroy(rq->rq_pool);
}

void tg_req_abort_all(worker_t *w)
{
    while (w->w_live)
        req_free(w->w_live);
}

/* ---- the receipt --------------------------------------------------------------- */

static char *pstr(req_t *rq, const char *s)
{
    return tg_pool_strndup(rq->rq_pool, s ? s : "", s ? strlen(s) : 0);
}

/* Counts what the provider did not report: the prompt with the chat rules
 * (meter/), the produced text plainly, with the route's encoding or the
 * model's. Marked LOCAL_TOKENIZER, or ESTIMATE for models without a public
 * tokenizer. Only for requests that reached an upstream. */
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
    tg_meter_model_t mm;
    const char *model = rq->rq_natt ? rq->rq_att[rq->rq_natt - 1].at_model : rq->rq_route->model;
    tg_meter_model_lookup(model, 1, &mm, err, sizeof err);
    tg_meter_encoding_t enc = mm.mm_encoding;
    int estimate = mm.mm_kind == TG_METER_MODEL_ESTIMATE;
    if (rq->rq_route->encoding && *rq->rq_route->encoding &&
        tg_meter_encoding_from_name(rq->rq_route->encoding, &enc, err, sizeof err) == 0)
        estimate = 0;
    int src = estimate ? TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_ESTIMATE
                       : TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_LOCAL_TOKENIZER;
    const endpoint_t *ep = rq->rq_ep;
    tg_meter_chat_t mc;
    uint64_t in = 0;
    if (ep->ep_kind == EP_CHAT) {
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
        tg_agent_answer(rq->rq_resp.b_data, rq->rq_resp.b_len, ep->ep_answer, &an, &rq->rq_text, NULL, 0);
    }
    uint64_t out = 0;
    if (tg_meter_count(m, enc, rq->rq_text.b_data ? rq->rq_text.b_data : "", rq->rq_text.b_len,
                       TG_METER_SPECIAL_TEXT, &out, err, sizeof err) == 0) {
        u->output_tokens = (int64_t)out;
        u->output_source = src;
    }
    u->encoding = (char *)tg_meter_encoding_name(enc);
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

/* Fills rq_tu (provider usage normalized: input excludes cached tokens;
 * else local counts) and prices it with the card version in effect when the
 * request started: the cost charged (entry rate) and the upstream cost
 * (channel cost rate), each rounded once, half up, per-request fee included
 * (tg_billing_cost: the code the control plane settles with). Runs once; before a non-streaming answer is sent,
 * so x-tollgate-cost can go in its head. */
static void meter_and_price(req_t *rq)
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
        u->input_tokens = us.us_prompt > cached ? us.us_prompt - cached : 0;
        u->output_tokens = us.us_completion > 0 ? us.us_completion : 0;
        u->cache_read_tokens = cached;
        u->reasoning_tokens = us.us_reasoning > 0 ? us.us_reasoning : 0;
        u->input_source = u->output_source = u->cache_source = TOLLGATE__V1__TOKEN_SOURCE__TOKEN_SOURCE_PROVIDER;
        u->raw_provider_usage = rq->rq_usage_raw;
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
    rq->rq_currency = tg_cfg_currency(rq->rq_cfg, rq->rq_acct, rq->rq_bucket);
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

/* Emits the UsageRecord. Until the LMDB outbox lands (README "Next") the
 * sink is one JSON log line per request (comp "usage") on stderr. */
static void emit_record(req_t *rq)
{
    Tollgate__V1__UsageRecord r = TOLLGATE__V1__USAGE_RECORD__INIT;
    Tollgate__V1__TokenUsage u = TOLLGATE__V1__TOKEN_USAGE__INIT;
    Tollgate__V1__Attempt att[MAX_ATTEMPTS];
    Tollgate__V1__Attempt *attp[MAX_ATTEMPTS];
    char rid[80];
    snprintf(rid, sizeof rid, "local-%s", rq->rq_id);
    r.record_id = rid;
    r.request_id = rq->rq_id;
    r.region = pstr(rq, rq->rq_w->w_agent->a_opts.ao_region);
    r.started_at_us = rq->rq_t0_us;
    r.finished_at_us = now_us();
    if (rq->rq_key) {
        r.key_id = rq->rq_key->id;
        r.key_prefix = rq->rq_key->display_prefix;
        r.project_id = rq->rq_key->project_id;
        r.account_id = rq->rq_key->account_id;
    }
    r.run_id = pstr(rq, rq->rq_run);
    r.client_ip = rq->rq_ip;
    r.user_agent = pstr(rq, rq->rq_ua);
    r.client_protocol = TOLLGATE__V1__CLIENT_PROTOCOL__CLIENT_PROTOCOL_OPENAI;
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
        meter_and_price(rq);
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
    /* the actual cost replaces the reservations, on every path */
    release_all(rq, cost);
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
    tg_agent_t *ag = rq->rq_w->w_agent;
    /* Spooled for settlement: every request of a known key that reached
     * routing (served: priced and charged to the route type's bucket; not
     * served: a zero-cost receipt of its attempts). Refusals before any
     * attempt (bad key, policy, malformed body) are logged only: without
     * a key anyone could fill the outbox with them. A known key refused by
     * spend control gets its receipt (zero cost, the reason). */
    int spool = ag->a_outbox && rq->rq_key && !rq->rq_no_spool && (rq->rq_natt > 0 || rq->rq_refused_budget);
    if (spool) {
        size_t n = tollgate__v1__usage_record__get_packed_size(&r);
        uint8_t *buf = tg_malloc(n ? n : 1);
        if (buf)
            tollgate__v1__usage_record__pack(&r, buf);
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

/* Ends the request: receipt, then frees. The client's response, if any,
 * was ended before: its last bytes go out after this iteration's outbox
 * commit (front.h). */
static void finish(req_t *rq)
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
    emit_record(rq);
    req_free(rq);
}

/* ---- client replies from an attempt -------------------------------------------- */

static void route_headers(req_t *rq, tg_front_conn_t *hr)
{
    add_header(hr, "x-request-id", rq->rq_id);
    if (!rq->rq_key || !rq->rq_key->expose_cost || !rq->rq_natt)
        return;
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    char v[512];
    snprintf(v, sizeof v, "%s; channel=%s; upstream_model=%s", rq->rq_route->model, a->at_chan->ch_pb->name,
             a->at_model);
    add_header(hr, "x-tollgate-route", v);
    snprintf(v, sizeof v, "%d", rq->rq_natt);
    add_header(hr, "x-tollgate-attempts", v);
}

static void fail_request(req_t *rq, int status, const char *type, const char *code, int cls, const char *fmt,
                         ...) __attribute__((format(printf, 6, 7)));

static void fail_request(req_t *rq, int status, const char *type, const char *code, int cls, const char *fmt,
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
        if (rq->rq_route)
            route_headers(rq, rq->rq_c);
        send_error(rq->rq_c, rq->rq_route ? NULL : rq->rq_id, status, type, code, "%s", rq->rq_final_msg);
        rq->rq_c = NULL;
    }
    finish(rq);
}

/* ---- upstream callbacks -------------------------------------------------------- */

/* Queues a stream event for the client. The final one ([DONE], or a
 * Responses stream's closing event) is held and written with the end of
 * the response, after the outbox commit: a client that stops reading at
 * [DONE] has seen its answer complete only once the record is kept. */
static int emit_event(req_t *rq, const char *ev, size_t n, int final)
{
    return tg_buf_append(final ? &rq->rq_tail : &rq->rq_chunk, ev, n) == 0 ? 0 : TG_AGENT_ENOMEM;
}

/* Keeps a provider's usage object: parsed (strictly: see usage.c) and its
 * text verbatim for the record. A usage without counts is ignored, and the
 * parse leaves rq_usage as it was then, so the raw text and the counts kept
 * always belong together. */
static void take_usage(req_t *rq, const char *u, size_t ul)
{
    int rc = tg_agent_usage_parse(u, ul, &rq->rq_usage);
    if (rc != 0 && rc != TG_AGENT_ERANGE)
        return;
    rq->rq_usage_bad = rc == TG_AGENT_ERANGE;
    rq->rq_usage_raw = tg_pool_strndup(rq->rq_pool, u, ul);
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
    if (ck.ck_usage_only) {
        take_usage(rq, ck.ck_usage, ck.ck_usage_len);
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

/* Whether a chat stream's output, counted locally as it passes, went past
 * the tokens its reservation allowed (a provider that ignores max_tokens).
 * Bytes bound tokens from above, so nothing is counted until the text has
 * more bytes than the allowance has tokens; from then on each new piece is
 * counted once (pieces counted apart may make a token more than the whole:
 * the cut can come a token early, never late). */
static int past_allowance(req_t *rq)
{
    tg_meter_t *m = rq->rq_w->w_agent->a_meter;
    if ((int64_t)rq->rq_text.b_len <= rq->rq_out_allow || rq->rq_text.b_len == rq->rq_text_counted)
        return 0;
    if (!m)
        return 1; /* no tokenizer: the byte bound decides */
    char err[TG_ERRLEN] = "";
    tg_meter_model_t mm;
    const char *model = rq->rq_att[rq->rq_natt - 1].at_model;
    tg_meter_model_lookup(model, 1, &mm, err, sizeof err);
    tg_meter_encoding_t enc = mm.mm_encoding;
    if (rq->rq_route->encoding && *rq->rq_route->encoding)
        tg_meter_encoding_from_name(rq->rq_route->encoding, &enc, err, sizeof err);
    uint64_t k = 0;
    if (tg_meter_count(m, enc, rq->rq_text.b_data + rq->rq_text_counted, rq->rq_text.b_len - rq->rq_text_counted,
                       TG_METER_SPECIAL_TEXT, &k, err, sizeof err) != 0)
        k = rq->rq_text.b_len - rq->rq_text_counted;
    rq->rq_out_counted += (int64_t)k;
    rq->rq_text_counted = rq->rq_text.b_len;
    return rq->rq_out_counted > rq->rq_out_allow;
}

/* Ends a chat stream at its reservation, as the provider should have at
 * max_tokens: a last chunk with finish_reason "length", then [DONE] (held
 * for the end, after the record's commit). Billed for what was produced, at
 * most the allowance. */
static void cut_at_allowance(req_t *rq)
{
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    tg_buf_reset(&rq->rq_tail);
    tg_buf_puts(&rq->rq_tail, "data: {\"id\":\"chatcmpl-");
    tg_buf_puts(&rq->rq_tail, rq->rq_id);
    tg_buf_printf(&rq->rq_tail, "\",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":",
                  (long long)(now_us() / 1000000));
    tg_agent_json_str(&rq->rq_tail, a->at_model, strlen(a->at_model));
    tg_buf_puts(&rq->rq_tail, ",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n"
                              "data: [DONE]\n\n");
    rq->rq_capped = 1;
    rq->rq_saw_done = 1;
    snprintf(rq->rq_finish, sizeof rq->rq_finish, "length");
    snprintf(a->at_msg, sizeof a->at_msg, "ended at its reservation: %lld output tokens allowed",
             (long long)rq->rq_out_allow);
}

static void start_stream(req_t *rq)
{
    tg_front_conn_t *hr = rq->rq_c;
    route_headers(rq, hr);
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
    curl_easy_getinfo(rq->rq_easy, CURLINFO_RESPONSE_CODE, &rq->rq_up_status);
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    req_t *rq = arg;
    size_t n = size * nmemb;
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    if (rq->rq_client_gone)
        return 0;
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
            return CURL_WRITEFUNC_PAUSE;
        }
        if (tg_sse_feed(&rq->rq_sse, data, n, forward_event, rq) != 0) {
            snprintf(a->at_msg, sizeof a->at_msg, "an upstream event passed %u bytes", SSE_EVENT_MAX);
            return 0;
        }
        if (rq->rq_chunk.b_len) {
            /* a failed write means the client is gone: the front says so
             * next (on_front_gone), which cancels this call */
            tg_front_stream_write(rq->rq_c, rq->rq_chunk.b_data, rq->rq_chunk.b_len);
            tg_buf_reset(&rq->rq_chunk);
        }
        if (rq->rq_out_allow && !rq->rq_saw_done && past_allowance(rq)) {
            cut_at_allowance(rq);
            return 0; /* the upstream call ends here (tg_req_upstream_done sees rq_capped) */
        }
        return n;
    }
    if (rq->rq_up_status >= 200 && rq->rq_up_status < 300) {
        if (tg_buf_append(&rq->rq_resp, data, n)) {
            snprintf(a->at_msg, sizeof a->at_msg, "the upstream answer passed %u bytes", RESP_MAX);
            return 0;
        }
        return n;
    }
    /* An error body: keep its start for the record and the client. */
    size_t room = ERR_BODY_MAX > rq->rq_resp.b_len ? ERR_BODY_MAX - rq->rq_resp.b_len : 0;
    tg_buf_append(&rq->rq_resp, data, n < room ? n : room);
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    req_t *rq = arg;
    size_t n = size * nmemb;
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    if (n > 5 && strncmp(data, "HTTP/", 5) == 0) {
        a->at_retry_after_ms = 0;
        a->at_upid[0] = '\0';
        return n;
    }
    if (n <= 2 && (data[0] == '\r' || data[0] == '\n')) {
        /* End of a response head. A 2xx stream answers the client now, as
         * a proxy forwards headers, so a slow first token does not hold
         * the client's response head back (1xx heads are skipped). */
        long st = 0;
        curl_easy_getinfo(rq->rq_easy, CURLINFO_RESPONSE_CODE, &st);
        if (st >= 200) {
            first_byte(rq);
            char *ct = NULL;
            curl_easy_getinfo(rq->rq_easy, CURLINFO_CONTENT_TYPE, &ct);
            rq->rq_json_stream = st < 300 && rq->rq_scan.sc_stream && ct && strncasecmp(ct, "application/json", 16) == 0;
            if (st < 300 && rq->rq_scan.sc_stream && !rq->rq_json_stream && !rq->rq_started && !rq->rq_client_gone)
                start_stream(rq);
        }
        return n;
    }
    const char *colon = memchr(data, ':', n);
    if (!colon)
        return n;
    size_t kl = (size_t)(colon - data);
    const char *v = colon + 1;
    size_t vl = n - kl - 1;
    while (vl && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
        vl--;
    char val[96];
    if (vl >= sizeof val)
        vl = sizeof val - 1;
    memcpy(val, v, vl);
    val[vl] = '\0';
    if (kl == 11 && strncasecmp(data, "retry-after", 11) == 0) {
        char *end;
        double s = strtod(val, &end);
        if (end != val && s >= 0 && s < 86400 && !a->at_retry_after_ms)
            a->at_retry_after_ms = (int64_t)(s * 1000);
    } else if (kl == 14 && strncasecmp(data, "retry-after-ms", 14) == 0) {
        char *end;
        double ms = strtod(val, &end);
        if (end != val && ms >= 0 && ms < 86400e3)
            a->at_retry_after_ms = (int64_t)ms;
    } else if (kl == 12 && strncasecmp(data, "x-request-id", 12) == 0) {
        tg_utf8_clean(a->at_upid, sizeof a->at_upid, val, vl);
    }
    return n;
}

/* ---- routing -------------------------------------------------------------------- */

enum { WHY_OK = 0, WHY_ROUTE_TYPE, WHY_BALANCE, WHY_UNAVAILABLE, WHY_PROTOCOL, WHY_UNPRICED };

/* The price entry for serving rq on channel c (the card in effect when the
 * request started, in the currency of the bucket that would pay), or NULL:
 * what cannot be priced is not served. */
static const Tollgate__V1__PriceEntry *price_for(req_t *rq, const Tollgate__V1__Channel *c, const char **bucket)
{
    const Tollgate__V1__PriceEntry *pe = NULL;
    const char *b = tg_cfg_bucket(rq->rq_acct, c->route_type);
    const char *cur = tg_cfg_currency(rq->rq_cfg, rq->rq_acct, b);
    if (!tg_cfg_price(rq->rq_cfg, rq->rq_route ? rq->rq_route->model : "", c->route_type, cur, rq->rq_t0_us, &pe))
        return NULL;
    if (bucket)
        *bucket = b;
    return pe;
}

/* Whether the key may use the target, and why not. */
static int target_ok(req_t *rq, const Tollgate__V1__RouteTarget *t)
{
    const tg_chan_t *ch = tg_cfg_channel(rq->rq_cfg, t->channel_id);
    const Tollgate__V1__Channel *c = ch->ch_pb;
    if (c->status == TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_PAUSED ||
        c->status == TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_DISABLED)
        return WHY_UNAVAILABLE;
    if (c->provider == TOLLGATE__V1__PROVIDER_TYPE__PROVIDER_TYPE_ANTHROPIC)
        return WHY_PROTOCOL; /* Anthropic upstreams need protocol conversion: not built yet */
    const tg_key_t *k = rq->rq_key;
    if (rq->rq_runb && rq->rq_runb->n_allowed_route_types) {
        int ok = 0;
        for (size_t i = 0; i < rq->rq_runb->n_allowed_route_types; i++)
            ok |= rq->rq_runb->allowed_route_types[i] == c->route_type;
        if (!ok)
            return WHY_ROUTE_TYPE;
    }
    if (k->n_allowed_route_types) {
        int ok = 0;
        for (size_t i = 0; i < k->n_allowed_route_types; i++)
            if (k->allowed_route_types[i] == c->route_type)
                ok = 1;
        if (!ok)
            return WHY_ROUTE_TYPE;
    }
    const tg_account_t *acct = rq->rq_acct;
    const char *bucket = tg_cfg_bucket(acct, c->route_type);
    if (!price_for(rq, c, NULL))
        return WHY_UNPRICED;
    /* Nothing left at all, as last pushed: refused without asking for a
     * lease. Whether this request fits is the lease's to say (its own
     * holds are in reserved_nano, so that is not subtracted here). */
    const tg_balance_t *b = tg_cfg_balance(rq->rq_cfg, acct->id, bucket);
    if (!b || b->balance_nano - tg_cfg_floor(acct, b) <= 0)
        return WHY_BALANCE;
    return WHY_OK;
}

static uint32_t target_weight(req_t *rq, const Tollgate__V1__RouteTarget *t)
{
    if (t->weight)
        return t->weight;
    const tg_chan_t *ch = tg_cfg_channel(rq->rq_cfg, t->channel_id);
    return ch->ch_pb->weight ? ch->ch_pb->weight : 1;
}

/* A run budget's fallback rule: tiers after the first may use only its
 * fallback_route_types (when it lists any). */
static int fallback_ok(req_t *rq, uint32_t tier, const Tollgate__V1__RouteTarget *t)
{
    const Tollgate__V1__RunBudget *b = rq->rq_runb;
    if (tier == 0 || !b || !b->n_fallback_route_types)
        return 1;
    const Tollgate__V1__Channel *c = tg_cfg_channel(rq->rq_cfg, t->channel_id)->ch_pb;
    for (size_t i = 0; i < b->n_fallback_route_types; i++)
        if (b->fallback_route_types[i] == c->route_type)
            return 1;
    return 0;
}

/* Picks an untried, usable target of tier `tier` whose breaker admits a
 * request; records breaker skips as attempts. Returns the index or -1. */
static int pick_in_tier(req_t *rq, uint32_t tier)
{
    const Tollgate__V1__RouteTier *t = rq->rq_route->tiers[tier];
    int n = (int)(t->n_targets < MAX_TARGETS ? t->n_targets : MAX_TARGETS);
    for (;;) {
        uint32_t w[MAX_TARGETS];
        for (int i = 0; i < n; i++)
            w[i] = (rq->rq_failed >> i & 1) || target_ok(rq, t->targets[i]) != WHY_OK ||
                           !fallback_ok(rq, tier, t->targets[i])
                       ? 0
                       : target_weight(rq, t->targets[i]);
        int i = tg_agent_pick(w, n, rng(rq->rq_w));
        if (i < 0)
            return -1;
        const tg_chan_t *ch = tg_cfg_channel(rq->rq_cfg, t->targets[i]->channel_id);
        if (tg_agent_brk_allow(rq->rq_w->w_agent, ch->ch_pb->id, &rq->rq_brk, mono_ms()))
            return i;
        rq->rq_failed |= 1ull << i;
        attempt_t *a = rq->rq_natt < MAX_ATTEMPTS - 1 ? att_new(rq) : NULL; /* a slot stays for the attempt */
        if (a) {
            a->at_chan = ch;
            a->at_tier = tier;
            a->at_target = i;
            a->at_model = t->targets[i]->upstream_model && *t->targets[i]->upstream_model
                              ? t->targets[i]->upstream_model
                              : rq->rq_route->model;
            a->at_class = TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CIRCUIT_OPEN;
            a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_NEXT_IN_TIER;
            a->at_start_us = now_us();
            snprintf(a->at_msg, sizeof a->at_msg, "circuit breaker open");
        }
    }
}

static void start_attempt(req_t *rq);

/* ---- pre-authorization ------------------------------------------------------------ *
 * Before an attempt goes upstream, the request's upper estimate on that
 * channel (billing/ tg_billing_estimate: the prompt at most, the output cap,
 * the fee) is reserved on the agent's spend lease for the bucket that would
 * pay; the actual cost replaces it when the request ends (emit_record), on
 * every path. The prompt is first bounded by its byte length (a byte-level
 * BPE never makes more tokens than bytes: no tokenizer on the hot path);
 * only when that does not fit is it counted exactly. */

/* The output tokens the estimate allows for one choice: the request's cap,
 * else the route's default, else the policy's, else DEF_MAX_OUTPUT. */
static int64_t output_allowance(req_t *rq)
{
    if (rq->rq_scan.sc_max_tokens >= 0)
        return rq->rq_scan.sc_max_tokens;
    if (rq->rq_route->default_max_output_tokens > 0)
        return rq->rq_route->default_max_output_tokens;
    const Tollgate__V1__GatewayPolicy *gp = tg_cfg_snapshot(rq->rq_cfg)->policy;
    if (gp && gp->default_max_output_tokens > 0)
        return gp->default_max_output_tokens;
    return DEF_MAX_OUTPUT;
}

/* The estimate of serving rq on channel c. Returns 0, *bucket and *nano;
 * -1 with err set when there is no price; -2 when the request asks for more
 * than can be pre-authorized (its output cap times n past billing's limits:
 * checked, never wrapped). */
static int estimate(req_t *rq, const Tollgate__V1__Channel *c, const char **bucket, int64_t *nano, char *err,
                    size_t errlen)
{
    const Tollgate__V1__PriceEntry *pe = price_for(rq, c, bucket);
    if (!pe)
        return tg_errf(err, errlen, -1, "no price in effect for model %s", rq->rq_route->model);
    int64_t out = 0, images = 0, n = rq->rq_scan.sc_n > 0 ? rq->rq_scan.sc_n : 1;
    int64_t cap = output_allowance(rq);
    switch (rq->rq_ep->ep_kind) {
    case EP_EMBEDDINGS: break;
    case EP_IMAGES: images = n; break;
    case EP_CHAT: /* n choices, each up to the cap */
        if (cap > (int64_t)TG_PRICE_MAX_TOKENS / n)
            return tg_errf(err, errlen, -2, "the output cap %lld times n = %lld passes the %llu tokens a request may "
                           "ask for", (long long)cap, (long long)n, (unsigned long long)TG_PRICE_MAX_TOKENS);
        out = cap * n;
        break;
    default: out = cap; break;
    }
    if (!rq->rq_input_max)
        rq->rq_input_max = (int64_t)rq->rq_body_len + 1;
    if (tg_billing_estimate(pe, rq->rq_input_max, out, images, pe->rate_ppm, nano, err, errlen) != 0)
        return -2;
    rq->rq_out_est = out;
    return 0;
}

/* Counts the prompt exactly (once) when the byte bound did not fit.
 * Returns 1 when the bound got smaller. */
static int exact_input(req_t *rq)
{
    tg_meter_t *m = rq->rq_w->w_agent->a_meter;
    if (rq->rq_exact || !m || rq->rq_ep->ep_kind != EP_CHAT)
        return 0;
    rq->rq_exact = 1;
    char err[TG_ERRLEN] = "";
    tg_meter_chat_t mc;
    if (tg_meter_chat_count(m, rq->rq_body, rq->rq_body_len, rq->rq_route->model, &mc, err, sizeof err) != 0 ||
        mc.mc_estimate)
        return 0; /* no exact count: the byte bound stays */
    int64_t exact = (int64_t)mc.mc_prompt_tokens;
    if (exact >= rq->rq_input_max)
        return 0;
    rq->rq_input_max = exact;
    return 1;
}

static void add_limits(req_t *rq, scope_ref_t *v, int *n, const char *kind, const char *id,
                       Tollgate__V1__SpendLimit *const *l, size_t nl, const char *currency)
{
    for (size_t i = 0; i < nl && *n < MAX_SCOPES; i++) {
        int64_t start, end;
        if (strcmp(l[i]->currency, currency) != 0 ||
            tg_billing_window((int)l[i]->window, rq->rq_t0_us, &start, &end) != 0 ||
            tg_billing_scope(kind, id, (int)l[i]->window, rq->rq_t0_us, v[*n].sr_id, sizeof v[*n].sr_id) != 0)
            continue;
        v[*n].sr_kind = kind;
        v[*n].sr_window = (int)l[i]->window;
        v[*n].sr_limit = l[i]->limit_nano;
        v[*n].sr_end = end;
        (*n)++;
    }
}

/* The key's and its project's limits in the windows of the request's start
 * and the run's budget, in the currency of the paying bucket (the control
 * plane counts the same ones at settlement). */
static void compute_scopes(req_t *rq, const char *currency)
{
    scope_ref_t v[MAX_SCOPES];
    int n = 0;
    const tg_key_t *k = rq->rq_key;
    rq->rq_scopes_done = 1;
    add_limits(rq, v, &n, "key", k->id, k->spend_limits, k->n_spend_limits, currency);
    const Tollgate__V1__Project *p = k->project_id[0] ? tg_cfg_project(rq->rq_cfg, k->project_id) : NULL;
    if (p)
        add_limits(rq, v, &n, "project", p->id, p->spend_limits, p->n_spend_limits, currency);
    const Tollgate__V1__RunBudget *b = rq->rq_runb;
    if (b && b->max_spend_nano > 0 && strcmp(b->currency, currency) == 0 && n < MAX_SCOPES &&
        tg_billing_scope("run", b->run_id, 0, 0, v[n].sr_id, sizeof v[n].sr_id) == 0) {
        v[n].sr_kind = "run";
        v[n].sr_window = 0;
        v[n].sr_limit = b->max_spend_nano;
        v[n].sr_end = b->expires_at_us;
        n++;
    }
    if (n && (rq->rq_scopes = tg_pool_alloc(rq->rq_pool, (size_t)n * sizeof *v)) != NULL) {
        memcpy(rq->rq_scopes, v, (size_t)n * sizeof *v);
        rq->rq_nscopes = n;
    }
}

static int64_t offline_allowance(req_t *rq)
{
    const Tollgate__V1__GatewayPolicy *gp = tg_cfg_snapshot(rq->rq_cfg)->policy;
    return gp ? gp->offline_allowance_nano : 0;
}

/* Gives back every reservation rq holds (bucket and scopes), counting
 * `cost` as spent on each. */
static void release_all(req_t *rq, int64_t cost)
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

/* A limit scope refused the request: 429 with the reset time for a key's
 * or project's window, 402 for a total limit or a run's budget. */
static void refuse_scope(req_t *rq, const scope_ref_t *s, int offline)
{
    char lim[32], when[40] = "", ra[24];
    const char *cur = tg_cfg_currency(rq->rq_cfg, rq->rq_acct, rq->rq_resv_bucket);
    const char *who = strcmp(s->sr_kind, "key") == 0 ? "API key" : strcmp(s->sr_kind, "project") == 0 ? "project" : "run";
    rq->rq_refused_budget = 1;
    tg_price_format(s->sr_limit, lim, sizeof lim);
    if (offline) {
        fail_request(rq, 503, "server_error", "spend_control_unavailable", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The gateway cannot authorize spending against this %s's limit right now (its control plane is "
                     "unreachable). Retry shortly.", who);
        return;
    }
    if (strcmp(s->sr_kind, "run") == 0) {
        fail_request(rq, 402, "insufficient_quota", "run_budget_exceeded", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The run `%s` has spent its budget of %s %s: it cannot cover this request.",
                     rq->rq_runb ? rq->rq_runb->run_id : "", lim, cur);
        return;
    }
    if (s->sr_window == TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_TOTAL) {
        fail_request(rq, 402, "insufficient_quota", "spend_limit_exceeded", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "This %s's total spend limit of %s %s is reached: it cannot cover this request.", who, lim, cur);
        return;
    }
    time_t t = (time_t)(s->sr_end / 1000000);
    struct tm tm;
    if (gmtime_r(&t, &tm))
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int64_t secs = (s->sr_end - now_us()) / 1000000 + 1;
    snprintf(ra, sizeof ra, "%lld", (long long)(secs > 0 ? secs : 1));
    if (rq->rq_c)
        add_header(rq->rq_c, "Retry-After", ra);
    fail_request(rq, 429, "rate_limit_error", "spend_limit_exceeded", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                 "This %s's %s spend limit of %s %s is reached: it cannot cover this request. It resets at %s.", who,
                 tg_billing_window_name(s->sr_window), lim, cur, when);
}

/* Makes sure rq holds a reservation that covers an attempt on channel ch.
 * Returns 0 (go on), 1 (parked: the timer calls start_attempt again), or
 * -1 (the request was refused and ended). */
static int ensure_reserved(req_t *rq, const tg_chan_t *ch)
{
    tg_lease_tab_t *lt = rq->rq_w->w_agent->a_leases;
    const char *bucket = NULL;
    int64_t est = 0, now = now_us();
    char err[TG_ERRLEN] = "", amt[32];
    int rc;
    int erc = estimate(rq, ch->ch_pb, &bucket, &est, err, sizeof err);
    if (erc == -2) {
        fail_request(rq, 400, "invalid_request_error", "max_tokens_too_large", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "This request asks for more than the gateway can pre-authorize: %s. Lower max_tokens or n.", err);
        return -1;
    }
    if (erc != 0) {
        fail_request(rq, 503, "server_error", "model_not_priced", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The gateway cannot price this request, so it does not serve it: %s.", err);
        return -1;
    }
    /* a fallback to a bucket of another currency counts against that
     * currency's limits: the scopes are chosen again */
    const char *cur = tg_cfg_currency(rq->rq_cfg, rq->rq_acct, bucket);
    if (rq->rq_scopes_done && rq->rq_resv > 0 && strcmp(rq->rq_resv_bucket, bucket) != 0 &&
        strcmp(tg_cfg_currency(rq->rq_cfg, rq->rq_acct, rq->rq_resv_bucket), cur) != 0) {
        release_all(rq, 0);
        rq->rq_scopes_done = 0;
        rq->rq_nscopes = 0;
    }
    if (!(rq->rq_resv > 0 && strcmp(rq->rq_resv_bucket, bucket) == 0 && rq->rq_resv >= est)) {
        /* first, or a fallback to a dearer tier or another bucket: reserved anew */
        release_all(rq, 0);
        rc = tg_lease_reserve(lt, rq->rq_acct->id, bucket, est, &rq->rq_ticket, offline_allowance(rq), now);
        if (rc != TG_LEASE_OK && exact_input(rq) && estimate(rq, ch->ch_pb, &bucket, &est, err, sizeof err) == 0) {
            rq->rq_ticket = 0;
            rc = tg_lease_reserve(lt, rq->rq_acct->id, bucket, est, &rq->rq_ticket, offline_allowance(rq), now);
        }
        if (rc == TG_LEASE_WAIT)
            goto park;
        if (rc != TG_LEASE_OK) {
            rq->rq_refused_budget = 1;
            if (rc == TG_LEASE_DENIED)
                fail_request(rq, 402, "insufficient_quota", "insufficient_quota", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                             "You exceeded your current quota: the `%s` balance of this account cannot cover this "
                             "request (up to %s %s is reserved for a request like it). Top up, or ask for fewer "
                             "output tokens.",
                             bucket, tg_price_format(est, amt, sizeof amt),
                             tg_cfg_currency(rq->rq_cfg, rq->rq_acct, bucket));
            else
                fail_request(rq, 503, "server_error", "spend_control_unavailable", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                             "The gateway cannot authorize spending on the `%s` balance right now (its control plane "
                             "is unreachable and no budget is held locally). Retry shortly.",
                             bucket);
            return -1;
        }
        rq->rq_resv = est;
        rq->rq_resv_bucket = bucket;
        rq->rq_ticket = 0;
        if (rq->rq_ep->ep_kind == EP_CHAT && rq->rq_scan.sc_stream)
            rq->rq_out_allow = rq->rq_out_est > 0 ? rq->rq_out_est : 1;
    }
    /* the same estimate on every limit scope: the key's and project's
     * windows, the run */
    if (!rq->rq_scopes_done)
        compute_scopes(rq, tg_cfg_currency(rq->rq_cfg, rq->rq_acct, bucket));
    while (rq->rq_sres < rq->rq_nscopes) {
        const scope_ref_t *s = &rq->rq_scopes[rq->rq_sres];
        rc = tg_lease_reserve(lt, rq->rq_acct->id, s->sr_id, rq->rq_resv, &rq->rq_ticket, offline_allowance(rq), now);
        if (rc == TG_LEASE_OK) {
            rq->rq_sres++;
            rq->rq_ticket = 0;
            continue;
        }
        if (rc == TG_LEASE_WAIT)
            goto park;
        release_all(rq, 0);
        if (exact_input(rq))
            return ensure_reserved(rq, ch); /* once: the exact count may fit where the byte bound did not */
        refuse_scope(rq, s, rc == TG_LEASE_OFFLINE);
        return -1;
    }
    rq->rq_lease_deadline_us = 0;
    return 0;
park:
    if (!rq->rq_lease_deadline_us)
        rq->rq_lease_deadline_us = now + LEASE_WAIT_MS * 1000LL;
    if (now < rq->rq_lease_deadline_us) {
        struct timeval tv = {0, LEASE_POLL_MS * 1000};
        rq->rq_timer_lease = 1;
        evtimer_add(rq->rq_timer, &tv);
        return 1;
    }
    release_all(rq, 0);
    rq->rq_refused_budget = 1;
    fail_request(rq, 503, "server_error", "spend_control_unavailable", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                 "The gateway could not authorize this request's spending in time (its control plane did not "
                 "answer). Retry shortly.");
    return -1;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    req_t *rq = arg;
    if (rq->rq_timer_lease) {
        rq->rq_timer_lease = 0;
        start_attempt(rq);
        return;
    }
    if (rq->rq_timer_backoff) {
        rq->rq_timer_backoff = 0;
        start_attempt(rq);
        return;
    }
    /* First-byte timeout: end the transfer as a timeout. */
    rq->rq_fb_timeout = 1;
    tg_req_upstream_done(rq, CURLE_OPERATION_TIMEDOUT);
}

static const Tollgate__V1__RetryPolicy *policy(req_t *rq)
{
    return rq->rq_route->policy;
}

static int retryable(req_t *rq, int cls)
{
    const Tollgate__V1__RetryPolicy *p = policy(rq);
    switch (cls) {
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CONNECT: return !p || p->retry_on_connect_error;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_TIMEOUT: return !p || p->retry_on_timeout;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_RATE_LIMITED: return !p || p->retry_on_429;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_UPSTREAM_5XX:
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED: return !p || p->retry_on_5xx;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CHANNEL_REJECTED: return 1; /* another channel may serve */
    default: return 0;
    }
}

/* Decides what follows a failed attempt `a`: sets a->at_decision and the
 * routing state. Returns 1 when another attempt should start (after
 * a->at_backoff_ms), 0 to give up. */
static int next_step(req_t *rq, attempt_t *a)
{
    const Tollgate__V1__RetryPolicy *p = policy(rq);
    uint32_t cap = p && p->max_attempts ? p->max_attempts : 3;
    unsigned same_max = p ? p->same_channel_retries : 0;
    int fallback = (!p || p->fallback_enabled) && (!rq->rq_runb || rq->rq_runb->allow_fallback);
    a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_GIVE_UP;
    if (!retryable(rq, a->at_class) || rq->rq_counted >= (int)cap || rq->rq_natt >= MAX_ATTEMPTS)
        return 0;
    if (rq->rq_same < same_max && a->at_class != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CHANNEL_REJECTED) {
        rq->rq_same++;
        uint32_t init = p && p->backoff_initial_ms ? p->backoff_initial_ms : 100;
        uint32_t max = p && p->backoff_max_ms ? p->backoff_max_ms : 2000;
        int64_t ra = (!p || p->honor_retry_after) ? a->at_retry_after_ms : 0;
        a->at_backoff_ms = tg_agent_backoff(init, max, rq->rq_same - 1, ra);
        a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_RETRY_SAME;
        return 1;
    }
    rq->rq_failed |= 1ull << rq->rq_target;
    rq->rq_same = 0;
    int i = pick_in_tier(rq, rq->rq_tier);
    if (i >= 0) {
        rq->rq_target = i;
        a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_NEXT_IN_TIER;
        return 1;
    }
    while (fallback && rq->rq_tier + 1 < rq->rq_route->n_tiers) {
        rq->rq_tier++;
        rq->rq_failed = 0;
        if ((i = pick_in_tier(rq, rq->rq_tier)) >= 0) {
            rq->rq_target = i;
            rq->rq_fallback = 1;
            a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_FALLBACK_TIER;
            return 1;
        }
    }
    return 0;
}

/* What went wrong with an attempt, in the gateway's words: upstream error
 * bodies and curl's messages (which can name the operator's organization,
 * a masked key or an internal host) stay in the record, never in a client
 * answer. */
static const char *what_failed(const attempt_t *a, char *buf, size_t n)
{
    switch (a->at_class) {
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CONNECT: return "the upstream could not be reached";
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_TIMEOUT: return "the upstream did not answer in time";
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED: return "the upstream's answer was malformed";
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CHANNEL_REJECTED:
        if (a->at_status >= 300 && a->at_status < 400)
            snprintf(buf, n, "the upstream redirected the gateway's channel (HTTP %d): its base URL needs the "
                             "operator's attention", a->at_status);
        else
            snprintf(buf, n, "the upstream refused the gateway's channel (HTTP %d): its credential or model "
                             "mapping needs the operator's attention", a->at_status);
        return buf;
    default:
        snprintf(buf, n, "the upstream answered HTTP %d", a->at_status);
        return buf;
    }
}

/* Client status and message when every attempt failed. */
static void give_up(req_t *rq, attempt_t *a)
{
    char why[160];
    switch (a ? a->at_class : TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CIRCUIT_OPEN) {
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_TIMEOUT:
        fail_request(rq, 504, "upstream_error", "upstream_timeout", a->at_class,
                     "The upstream did not answer in time (%d attempts).", rq->rq_natt);
        break;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_RATE_LIMITED:
        fail_request(rq, 429, "rate_limit_error", "upstream_rate_limited", a->at_class,
                     "The upstream is rate limiting (%d attempts). Retry later.", rq->rq_natt);
        break;
    case TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CIRCUIT_OPEN:
        fail_request(rq, 503, "upstream_error", "no_upstream_available", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CIRCUIT_OPEN,
                     "No upstream channel for model %s is available right now (circuit breakers open)",
                     rq->rq_route->model);
        break;
    default:
        fail_request(rq, 502, "upstream_error",
                     a->at_class == TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CHANNEL_REJECTED ? "upstream_channel_rejected"
                                                                                          : "upstream_error",
                     a->at_class, "No upstream channel served model %s (%d attempts): %s.", rq->rq_route->model,
                     rq->rq_natt, what_failed(a, why, sizeof why));
        break;
    }
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
    fail_request(rq, a->at_status, "invalid_request_error", e.ue_code[0] ? e.ue_code : "upstream_invalid_request",
                 a->at_class, "The upstream model rejected the request (HTTP %d%s%s%s%s).", a->at_status,
                 e.ue_code[0] ? ", code " : "", e.ue_code, e.ue_param[0] ? ", param " : "", e.ue_param);
}

static void start_attempt(req_t *rq)
{
    const Tollgate__V1__RouteTarget *t = rq->rq_route->tiers[rq->rq_tier]->targets[rq->rq_target];
    const tg_chan_t *ch = tg_cfg_channel(rq->rq_cfg, t->channel_id);
    const Tollgate__V1__Channel *c = ch->ch_pb;
    if (!rq->rq_w->w_agent->a_opts.ao_spend_off && ensure_reserved(rq, ch) != 0)
        return; /* parked until the lease answers, or refused */
    attempt_t *a = att_new(rq);
    char hdr[4200];
    if (!a) {
        fail_request(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
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
    rq->rq_curlerr[0] = '\0';
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
    int add_usage = rq->rq_scan.sc_stream && rq->rq_ep->ep_stream_usage; /* every channel here speaks OpenAI */
    if (tg_agent_rewrite(rq->rq_body, rq->rq_body_len, &rq->rq_scan, a->at_model, add_usage, &rq->rq_upbody)) {
        a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_GIVE_UP;
        fail_request(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "out of memory rewriting the request");
        return;
    }
    struct curl_slist *h = NULL, *n;
    CURL *e = rq->rq_w->w_nidle ? rq->rq_w->w_idle[--rq->rq_w->w_nidle] : curl_easy_init();
    if (!e)
        goto nomem;
    rq->rq_easy = e;
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", ch->ch_credential);
    if (!(n = curl_slist_append(h, "Content-Type: application/json")))
        goto nomem;
    h = n;
    if (ch->ch_credential[0]) {
        if (!(n = curl_slist_append(h, hdr)))
            goto nomem;
        h = n;
    }
    if (!(n = curl_slist_append(h, "Expect:"))) /* no 100-continue round trip */
        goto nomem;
    h = n;
    for (size_t i = 0; i < c->n_extra_headers; i++) {
        snprintf(hdr, sizeof hdr, "%s: %s", c->extra_headers[i]->name, c->extra_headers[i]->value);
        if (!(n = curl_slist_append(h, hdr)))
            goto nomem;
        h = n;
    }
    const tg_agent_opts_t *ao = &rq->rq_w->w_agent->a_opts;
    for (int i = 0; i < ao->ao_nforward; i++) {
        const char *v = rq->rq_c ? tg_front_header(rq->rq_c, ao->ao_forward[i]) : NULL;
        if (!v)
            continue;
        snprintf(hdr, sizeof hdr, "%s: %s", ao->ao_forward[i], v);
        if (!(n = curl_slist_append(h, hdr)))
            goto nomem;
        h = n;
    }
    rq->rq_hdrs = h;
    const char *url = ch->ch_chat_url;
    if (rq->rq_ep->ep_kind != EP_CHAT) {
        /* base_url + the endpoint's path: ch_chat_url less its suffix. */
        size_t bl = strlen(url) - strlen(endpoints[EP_CHAT].ep_upstream);
        size_t sl = strlen(rq->rq_ep->ep_upstream);
        char *u = tg_pool_alloc(rq->rq_pool, bl + sl + 1);
        if (!u)
            goto nomem;
        memcpy(u, url, bl);
        memcpy(u + bl, rq->rq_ep->ep_upstream, sl + 1);
        url = u;
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->rq_upbody.b_data ? rq->rq_upbody.b_data : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->rq_upbody.b_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, rq);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, rq);
    curl_easy_setopt(e, CURLOPT_PRIVATE, rq);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, rq->rq_curlerr);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(c->connect_timeout_ms ? c->connect_timeout_ms : DEF_CONNECT_MS));
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(c->request_timeout_ms ? c->request_timeout_ms : DEF_TOTAL_MS));
    if (rq->rq_w->w_agent->a_opts.ao_insecure_upstream) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    uint32_t fb = c->first_byte_timeout_ms ? c->first_byte_timeout_ms : DEF_FIRST_BYTE_MS;
    struct timeval tv = {fb / 1000, (fb % 1000) * 1000};
    rq->rq_timer_backoff = 0;
    evtimer_add(rq->rq_timer, &tv);
    if (curl_multi_add_handle(rq->rq_w->w_multi, e) != CURLM_OK)
        goto nomem;
    return;
nomem:
    if (!rq->rq_hdrs)
        curl_slist_free_all(h);
    a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_GIVE_UP;
    drop_easy(rq);
    fail_request(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                 "out of memory starting the upstream call");
}

static int classify(req_t *rq, CURLcode res)
{
    if (rq->rq_fb_timeout || res == CURLE_OPERATION_TIMEDOUT)
        return rq->rq_started ? TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_STREAM_CUT
                              : TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_TIMEOUT;
    if (res != CURLE_OK) {
        if (rq->rq_client_gone)
            return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CLIENT_CANCELLED;
        if (rq->rq_started)
            return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_STREAM_CUT;
        if (res == CURLE_WRITE_ERROR)
            return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED;
        if (rq->rq_got_byte && rq->rq_up_status >= 500)
            return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_UPSTREAM_5XX;
        return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CONNECT;
    }
    long st = rq->rq_up_status;
    if (!st)
        curl_easy_getinfo(rq->rq_easy, CURLINFO_RESPONSE_CODE, &st);
    rq->rq_up_status = st;
    if (st >= 200 && st < 300) {
        if (rq->rq_scan.sc_stream && !rq->rq_saw_done && !rq->rq_json_stream)
            return rq->rq_started ? TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_STREAM_CUT
                                  : TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED;
        if (!rq->rq_scan.sc_stream || rq->rq_json_stream) {
            /* The whole answer is validated: a malformed 200 is a failed
             * attempt (retried per policy), never relayed and billed. */
            tg_answer_t an;
            attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
            char err[TG_ERRLEN] = "";
            if (tg_agent_answer(rq->rq_resp.b_data, rq->rq_resp.b_len, rq->rq_ep->ep_answer, &an, NULL, err,
                                sizeof err) != 0) {
                snprintf(a->at_msg, sizeof a->at_msg, "HTTP %ld with a malformed answer: %.100s", st, err);
                return TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_MALFORMED;
            }
            if (an.an_usage)
                take_usage(rq, an.an_usage, an.an_usage_len);
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
        char *loc = NULL, clean[120];
        attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
        curl_easy_getinfo(rq->rq_easy, CURLINFO_REDIRECT_URL, &loc);
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
    route_headers(rq, hr);
    if (status == 200 && rq->rq_key && rq->rq_key->expose_cost) {
        meter_and_price(rq);
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
        send_error(rq->rq_c, rq->rq_id, 500, "server_error", NULL, "out of memory streaming the answer");
        rq->rq_c = NULL;
    }
    tg_buf_free(&ev);
    tg_buf_free(&tail);
}

void tg_req_upstream_done(req_t *rq, CURLcode res)
{
    attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
    /* ended at its reservation by the gateway: a complete answer */
    int cls = rq->rq_capped ? TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE : classify(rq, res);
    a->at_class = cls;
    a->at_status = (int)rq->rq_up_status;
    a->at_latency_us = now_us() - a->at_start_us;
    if (!a->at_msg[0]) {
        /* Text from outside goes into the record's protobuf strings: cut on
         * a character boundary, invalid bytes replaced (tg_utf8.h). */
        if (res != CURLE_OK) {
            const char *m = rq->rq_fb_timeout ? "no first byte in time"
                            : rq->rq_curlerr[0] ? rq->rq_curlerr
                                                : curl_easy_strerror(res);
            tg_utf8_clean(a->at_msg, sizeof a->at_msg, m, strlen(m));
        } else if (cls != TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE) {
            char body[121];
            tg_utf8_clean(body, sizeof body, rq->rq_resp.b_data ? rq->rq_resp.b_data : "", rq->rq_resp.b_len);
            snprintf(a->at_msg, sizeof a->at_msg, "HTTP %ld: %s", rq->rq_up_status, body);
        }
    }
    drop_easy(rq);
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
            if (rq->rq_c && stream_error_event(rq, &rq->rq_tail) != 0)
                TG_LOG(TG_LOG_WARN, "agent", "request %s: no room for the stream's error event", rq->rq_id);
        }
        if (rq->rq_c) {
            tg_front_stream_end(rq->rq_c, rq->rq_tail.b_data, rq->rq_tail.b_len);
            rq->rq_c = NULL;
        }
        finish(rq);
        return;
    }
    if (cls == TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE) {
        a->at_decision = TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_FINAL;
        if (rq->rq_json_stream)
            send_as_stream(rq);
        else
            send_buffered(rq, 200);
        finish(rq);
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
        finish(rq);
        return;
    }
    if (!next_step(rq, a)) {
        give_up(rq, a);
        return;
    }
    if (a->at_backoff_ms > 0) {
        struct timeval tv = {a->at_backoff_ms / 1000, (a->at_backoff_ms % 1000) * 1000};
        rq->rq_timer_backoff = 1;
        evtimer_add(rq->rq_timer, &tv);
        return;
    }
    start_attempt(rq);
}

/* The client went away: stop the upstream call (its connection closes, so
 * the provider stops generating) and note it in the record. */
static void client_gone(req_t *rq)
{
    rq->rq_client_gone = 1;
    rq->rq_final_class = TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CLIENT_CANCELLED;
    snprintf(rq->rq_final_msg, sizeof rq->rq_final_msg, "the client closed the connection");
    if (rq->rq_natt && rq->rq_easy) {
        attempt_t *a = &rq->rq_att[rq->rq_natt - 1];
        a->at_class = TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_CLIENT_CANCELLED;
        a->at_status = (int)rq->rq_up_status;
        a->at_latency_us = now_us() - a->at_start_us;
        a->at_decision = rq->rq_started ? TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_FINAL
                                        : TOLLGATE__V1__ATTEMPT_DECISION__ATTEMPT_DECISION_GIVE_UP;
        snprintf(a->at_msg, sizeof a->at_msg, "cancelled: the client went away");
    }
    drop_easy(rq);
    rq->rq_timer_backoff = 0;
    if (!rq->rq_status)
        rq->rq_status = 499;
}

/* The front says the client hung up (EOF or a failed write) before the
 * request ended: cancel the upstream call, bill what was produced. */
static void on_front_gone(tg_front_conn_t *c, void *arg)
{
    req_t *rq = arg;
    client_gone(rq);
    tg_front_abandon(c);
    rq->rq_c = NULL;
    finish(rq);
}

/* The client took what was queued: let a paused upstream go on. */
static void on_front_drain(tg_front_conn_t *c, void *arg)
{
    (void)c;
    req_t *rq = arg;
    if (rq->rq_paused && rq->rq_easy) {
        rq->rq_paused = 0;
        /* curl replays what it held through on_body; if that fails (an
         * event past its cap) it drops the bytes and goes on, so the
         * stream would have a hole: end the attempt here instead */
        CURLcode rc = curl_easy_pause(rq->rq_easy, CURLPAUSE_CONT);
        if (rc != CURLE_OK && rq->rq_easy)
            tg_req_upstream_done(rq, rc);
    }
}

/* ---- the front: auth, policy, dispatch ------------------------------------------ */

/* Walks one X-Forwarded-For value right to left, each address into
 * rq_ip. Returns 1 when the walk is over (an address that is not a
 * trusted proxy, or one that does not parse: the last good one stands),
 * 0 when every address of the value was a trusted proxy. */
static int xff_walk(req_t *rq, const char *xff)
{
    size_t end = strlen(xff);
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        char one[64];
        size_t s = start, e = end;
        while (s < e && (xff[s] == ' ' || xff[s] == '\t'))
            s++;
        while (e > s && (xff[e - 1] == ' ' || xff[e - 1] == '\t'))
            e--;
        tg_ip_t ip;
        if (e - s == 0 || e - s >= sizeof one)
            return 1;
        memcpy(one, xff + s, e - s);
        one[e - s] = '\0';
        if (tg_agent_ip_parse(one, &ip) != 0)
            return 1;
        memcpy(rq->rq_ip, one, e - s + 1);
        if (!tg_cfg_trusted_proxy(rq->rq_cfg, &ip))
            return 1;
        end = start ? start - 1 : 0;
    }
    return 0;
}

/* Client address: the peer, or from X-Forwarded-For when the peer is a
 * trusted proxy: the rightmost address that is not itself a trusted
 * proxy, as nginx's realip module takes it. Every X-Forwarded-For line
 * counts, read as one list in order (RFC 9110 5.3): a proxy that adds its
 * own line after the client's must not let the client's line decide. */
static void client_ip(req_t *rq)
{
    snprintf(rq->rq_ip, sizeof rq->rq_ip, "%s", tg_front_peer(rq->rq_c));
    tg_ip_t ip;
    if (tg_agent_ip_parse(rq->rq_ip, &ip) != 0 || !tg_cfg_trusted_proxy(rq->rq_cfg, &ip))
        return;
    const char *xff[128]; /* the front keeps at most 128 header lines */
    size_t n = tg_front_header_all(rq->rq_c, "X-Forwarded-For", xff, 128);
    if (n > 128)
        n = 128;
    while (n > 0 && !xff_walk(rq, xff[--n]))
        ;
}

static int model_allowed(const tg_key_t *k, const char *model)
{
    if (!k->n_model_allowlist)
        return 1;
    for (size_t i = 0; i < k->n_model_allowlist; i++)
        if (tg_agent_glob(k->model_allowlist[i], model))
            return 1;
    return 0;
}

/* Authenticates and checks the key's own policy. Returns 0, or sends the
 * error and returns -1. */
static int authenticate(req_t *rq)
{
    const char *auth = tg_front_header(rq->rq_c, "Authorization");
    const char *secret = NULL;
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
        secret = auth + 7;
    else if (!auth)
        secret = tg_front_header(rq->rq_c, "x-api-key");
    while (secret && *secret == ' ')
        secret++;
    if (!secret || !*secret) {
        fail_request(rq, 401, "invalid_request_error", "missing_api_key", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'.");
        return -1;
    }
    uint8_t h[32];
    tg_crypto_sha256(secret, strlen(secret), h);
    const tg_key_t *k = tg_cfg_key(rq->rq_cfg, h);
    if (!k || k->status == TOLLGATE__V1__KEY_STATUS__KEY_STATUS_REVOKED) {
        char shown[12];
        size_t n = strlen(secret);
        snprintf(shown, sizeof shown, "%.*s", (int)(n > 6 ? 6 : n), secret);
        fail_request(rq, 401, "invalid_request_error", "invalid_api_key", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     k ? "This API key was revoked%s%s." : "Incorrect API key provided: %s...%s",
                     k ? (k->status_reason && *k->status_reason ? ": " : "") : shown,
                     k ? (k->status_reason ? k->status_reason : "") : "");
        return -1;
    }
    rq->rq_key = k;
    rq->rq_acct = tg_cfg_account(rq->rq_cfg, k->account_id);
    if (!rq->rq_acct) {
        fail_request(rq, 403, "permission_error", "account_not_found", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "This API key's account is not in the gateway's configuration; ask the operator.");
        return -1;
    }
    /* The run's budget envelope, when the operator set one for this run
     * (and, if it names a project or key, for this one). */
    const Tollgate__V1__RunBudget *rb = rq->rq_run ? tg_cfg_run(rq->rq_cfg, rq->rq_run) : NULL;
    if (rb && strcmp(rb->account_id, k->account_id) == 0 && (!rb->key_id[0] || strcmp(rb->key_id, k->id) == 0) &&
        (!rb->project_id[0] || strcmp(rb->project_id, k->project_id) == 0)) {
        if (rb->expires_at_us && now_us() >= rb->expires_at_us) {
            fail_request(rq, 403, "permission_error", "run_expired", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "The run `%s` has expired: its budget no longer admits requests.", rb->run_id);
            return -1;
        }
        rq->rq_runb = rb;
    }
    if (k->expires_at_us && now_us() >= k->expires_at_us) {
        fail_request(rq, 401, "invalid_request_error", "expired_api_key", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "This API key expired.");
        return -1;
    }
    if (k->status == TOLLGATE__V1__KEY_STATUS__KEY_STATUS_PAUSED ||
        (rq->rq_acct && rq->rq_acct->status != TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_UNSPECIFIED &&
         rq->rq_acct->status != TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_ACTIVE)) {
        fail_request(rq, 403, "permission_error", "key_paused", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "This API key is paused%s%s.", k->status_reason && *k->status_reason ? ": " : "",
                     k->status_reason ? k->status_reason : "");
        return -1;
    }
    if (k->n_ip_allowlist) {
        tg_ip_t ip;
        int ok = 0;
        if (tg_agent_ip_parse(rq->rq_ip, &ip) == 0)
            for (size_t i = 0; i < k->n_ip_allowlist && !ok; i++)
                ok = tg_agent_cidr_match(k->ip_allowlist[i], &ip) == 1;
        if (!ok) {
            fail_request(rq, 403, "permission_error", "ip_not_allowed", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "Requests from %s are not allowed for this API key.", rq->rq_ip);
            return -1;
        }
    }
    return 0;
}

/* Every POST endpoint of endpoints[]: the same path, the table's
 * differences applied where they matter. */
static void handle_post(req_t *rq)
{
    if (authenticate(rq) != 0)
        return;
    /* The body is taken from the front: it is still needed after the
     * client went away (local token counts of a cancelled request). */
    size_t len = 0;
    if (!(rq->rq_body_own = tg_front_body_take(rq->rq_c, &len))) {
        fail_request(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY, "out of memory");
        return;
    }
    rq->rq_body = rq->rq_body_own;
    rq->rq_body_len = len;
    if ((int64_t)len > tg_cfg_max_request_bytes(rq->rq_cfg)) {
        fail_request(rq, 413, "invalid_request_error", "request_too_large", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The request body has %zu bytes; the limit is %lld.", len,
                     (long long)tg_cfg_max_request_bytes(rq->rq_cfg));
        return;
    }
    char err[TG_ERRLEN] = "";
    if (tg_agent_scan(rq->rq_body, len, &rq->rq_scan, err, sizeof err) != 0) {
        fail_request(rq, 400, "invalid_request_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "We could not parse the JSON body of your request: %s", err);
        return;
    }
    if (rq->rq_scan.sc_stream && !rq->rq_ep->ep_stream) {
        fail_request(rq, 400, "invalid_request_error", "stream_not_supported", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "Streaming is not supported on %s by this gateway.", rq->rq_ep->ep_path);
        return;
    }
    if (!rq->rq_scan.sc_model[0]) {
        fail_request(rq, 400, "invalid_request_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "You must provide a model parameter.");
        return;
    }
    const tg_route_t *route = tg_cfg_route(rq->rq_cfg, rq->rq_scan.sc_model);
    if (!route) {
        fail_request(rq, 404, "invalid_request_error", "model_not_found", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The model `%s` does not exist or you do not have access to it.", rq->rq_scan.sc_model);
        return;
    }
    if (!model_allowed(rq->rq_key, route->model) && !model_allowed(rq->rq_key, rq->rq_scan.sc_model)) {
        fail_request(rq, 403, "permission_error", "model_not_allowed", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "This API key is not allowed to use the model `%s`.", rq->rq_scan.sc_model);
        return;
    }
    /* Is any target usable by this key at all? Says why not: balance is
     * 402, route types 403, otherwise every channel is unavailable: 503. */
    int why_balance = 0, why_type = 0, why_proto = 0, why_other = 0, why_price = 0, any = 0;
    rq->rq_route = route; /* target_ok prices with it */
    for (size_t t = 0; t < route->n_tiers; t++)
        for (size_t i = 0; i < route->tiers[t]->n_targets; i++) {
            int w = target_ok(rq, route->tiers[t]->targets[i]);
            any |= w == WHY_OK;
            why_balance |= w == WHY_BALANCE;
            why_type |= w == WHY_ROUTE_TYPE;
            why_proto |= w == WHY_PROTOCOL;
            why_other |= w == WHY_UNAVAILABLE;
            why_price |= w == WHY_UNPRICED;
        }
    if (!any) {
        if (why_proto && !why_other && !why_balance && !why_type && rq->rq_ep->ep_kind != EP_CHAT)
            fail_request(rq, 400, "invalid_request_error", "unsupported_endpoint", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "The model `%s` is served only by Anthropic-type channels, and %s is passed through to "
                         "OpenAI-type channels only (no protocol conversion yet).",
                         route->model, rq->rq_ep->ep_path);
        else if (why_balance)
            fail_request(rq, 402, "insufficient_quota", "insufficient_quota", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "You exceeded your current quota: the balance that pays for model `%s` is exhausted.",
                         route->model);
        else if (why_type)
            fail_request(rq, 403, "permission_error", "route_type_not_allowed", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "This API key may not use any route that serves model `%s`.", route->model);
        else if (why_price)
            fail_request(rq, 503, "server_error", "model_not_priced", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "The model `%s` has no price in effect for this account's currency, so the gateway "
                         "cannot serve it; the operator must publish a price card for it.",
                         route->model);
        else
            fail_request(rq, 503, "upstream_error", "no_upstream_available", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "No upstream channel serves model `%s` right now.", route->model);
        return;
    }
    tg_outbox_t *ob = rq->rq_w->w_agent->a_outbox;
    const Tollgate__V1__GatewayPolicy *gp = tg_cfg_snapshot(rq->rq_cfg)->policy;
    long cap = gp && gp->outbox_max_records > 0 ? (long)gp->outbox_max_records : 1000000L;
    if (ob && tg_outbox_depth(ob) >= cap) {
        rq->rq_no_spool = 1;
        fail_request(rq, 503, "server_error", "usage_outbox_full", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "The gateway cannot record usage right now: its outbox holds %ld records waiting for the "
                     "control plane (cap %ld). Retry later.", tg_outbox_depth(ob), cap);
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
    if (!(rq->rq_timer = evtimer_new(rq->rq_w->w_base, on_timer, rq))) {
        fail_request(rq, 500, "server_error", NULL, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY, "out of memory");
        return;
    }
    rq->rq_route = route;
    /* First target: the first tier with a usable target whose breaker
     * admits a request. */
    for (rq->rq_tier = 0; rq->rq_tier < route->n_tiers; rq->rq_tier++) {
        rq->rq_failed = 0;
        int i = pick_in_tier(rq, rq->rq_tier);
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
        give_up(rq, NULL);
        return;
    }
    tg_front_set_events(rq->rq_c, on_front_gone, on_front_drain, rq);
    start_attempt(rq);
}

static void model_json(tg_buf_t *b, const tg_route_t *r)
{
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
    if (authenticate(rq) != 0)
        return;
    const tg_snap_t *s = tg_cfg_snapshot(rq->rq_cfg);
    tg_buf_t b;
    tg_buf_init(&b, 16u << 20);
    if (!id)
        tg_buf_puts(&b, "{\"object\":\"list\",\"data\":[");
    int n = 0;
    for (size_t i = 0; i < s->n_routes; i++) {
        const tg_route_t *r = s->routes[i];
        if (!model_allowed(rq->rq_key, r->model) || (id && strcmp(r->model, id) != 0))
            continue;
        if (n++ && !id)
            tg_buf_puts(&b, ",");
        model_json(&b, r);
        if (id)
            break;
    }
    if (!id)
        tg_buf_puts(&b, "]}");
    tg_buf_puts(&b, "\n");
    add_header(rq->rq_c, "x-request-id", rq->rq_id);
    if (id && !n) {
        /* the percent-decoded id is the client's bytes: valid UTF-8 only,
         * cut on a character, in the JSON error */
        char clean[204];
        tg_utf8_clean(clean, sizeof clean, id, strlen(id));
        tg_buf_free(&b);
        rq->rq_status = 404;
        send_error(rq->rq_c, NULL, 404, "invalid_request_error", "model_not_found",
                   "The model '%s' does not exist or you do not have access to it.", clean);
        rq->rq_c = NULL;
        req_free(rq);
        return;
    }
    add_header(rq->rq_c, "Content-Type", "application/json");
    rq->rq_status = 200;
    tg_front_reply(rq->rq_c, 200, b.b_data, b.b_len);
    rq->rq_c = NULL;
    tg_buf_free(&b);
    req_free(rq); /* listing models is not metered: no receipt */
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
        add_header(hr, "Access-Control-Expose-Headers", "x-request-id, x-tollgate-route, x-tollgate-attempts");
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
        else
            tg_cplink_metrics(a, &b); /* the control-plane link (cplink.c) */
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
    for (size_t i = 0; i < sizeof endpoints / sizeof endpoints[0]; i++)
        if (PATH_IS_S(endpoints[i].ep_path))
            ep = &endpoints[i];
    int post = ep != NULL;
    int models = PATH_IS("/v1/models");
    char model_id[256];
    int model_one = !models && plen > 11 && memcmp(uri, "/v1/models/", 11) == 0;
    if (model_one && path_segment(uri + 11, plen - 11, model_id, sizeof model_id) != 0)
        model_one = 0; /* not a model id: 404 unknown_url */
    models |= model_one;
#undef PATH_IS
#undef PATH_IS_S
    char id[48];
    snprintf(id, sizeof id, "req_%016llx%02x%08llx", (unsigned long long)w->w_agent->a_id_base, w->w_idx & 0xff,
             (unsigned long long)++w->w_seq);
    if (!post && !models) {
        send_error(hr, id, 404, "invalid_request_error", "unknown_url", "Unknown request URL: %.*s", (int)plen, uri);
        return;
    }
    if ((post && strcmp(method, "POST") != 0) || (models && strcmp(method, "GET") != 0)) {
        send_error(hr, id, 405, "invalid_request_error", "method_not_allowed", "Use %s for %.*s",
                   post ? "POST" : "GET", (int)plen, uri);
        return;
    }
    if (!cfg) {
        send_error(hr, id, 503, "server_error", "not_ready", "The gateway has no configuration yet.");
        return;
    }
    /* one chunk holds the req_t (2.4 KB with its two inline attempts) and
     * its strings: every open stream keeps it */
    tg_pool_t *pool = tg_pool_create(3584);
    req_t *rq = pool ? tg_pool_calloc(pool, sizeof *rq) : NULL;
    if (!rq) {
        tg_pool_destroy(pool);
        send_error(hr, id, 500, "server_error", NULL, "out of memory");
        return;
    }
    rq->rq_pool = pool;
    rq->rq_att = rq->rq_att_in;
    rq->rq_w = w;
    rq->rq_c = hr;
    rq->rq_t0_us = now_us();
    rq->rq_ep = ep;
    rq->rq_endpoint = ep ? ep->ep_path : "/v1/models";
    memcpy(rq->rq_id, id, sizeof id);
    tg_cfg_ref(cfg);
    rq->rq_cfg = cfg;
    link_req(rq);
    const char *run = tg_front_header(hr, "X-Tollgate-Run");
    const char *ua = tg_front_header(hr, "User-Agent");
    rq->rq_run = run ? header_text(pool, run) : NULL;
    rq->rq_ua = ua ? header_text(pool, ua) : NULL;
    client_ip(rq);
    if (post) {
        /* its end waits for its usage record's commit, and fails if that
         * commit fails (front.h) */
        rq->rq_hold = ++w->w_ticket;
        tg_front_hold(hr, rq->rq_hold);
        handle_post(rq);
    } else {
        handle_models(rq, model_one ? model_id : NULL);
    }
}
