/* request_int.h: one client request, shared by the files that each do one
 * part of its work (internal to agent/):
 *
 *   request.c   lifecycle: URL dispatch, the POST path's checks (body,
 *               model, allowlist, usable targets, outbox cap), the first
 *               target; GET /v1/models; CORS; the ops listener
 *   auth.c      the key, the client IP, the model allowlist, the run budget
 *   upstream.c  the upstream call: its request, what the answer's head
 *               and body mean (stream forwarding), classification of the
 *               outcome, client gone; the transports drive it through the
 *               tg_req_up_* calls below
 *   uplean.c    the lean transport (h1up.h) adapted to those calls
 *   upcurl.c    the libcurl transport adapted to them (proxies,
 *               --upstream-client curl)
 *   route.c     which target serves: usable targets, weighted pick in a tier,
 *               breaker skips, retry / next target / next tier, giving up
 *   preauth.c   pre-authorization on spend leases (reserve, refuse), and the
 *               stream cut at the reservation
 *   ratelimit.c the key's and its project's rate limits on leases (reserve,
 *               refuse, release)
 *               and the rate-limit headers
 *   finish.c    how a request ends: error answers, route headers, finish,
 *               teardown, the worker's list of live requests
 *   convert.c   attempts through proto/ (either side Anthropic, or a
 *               Responses client on a chat-only channel): the body,
 *               the answer and the stream converted, usage from the IR
 *   receipt.c   local counts, metering and pricing, the reservations
 *               released against the actual cost, the UsageRecord
 *   keyview.c   GET /v1/tollgate/key (the key holder's own view), and a
 *               bucket's remaining budget as known here (which finish.c's
 *               x-tollgate-budget-remaining reads: that part ends nothing)
 *
 * Calls go one way, down this list (request.c -> auth.c, upstream.c;
 * upstream.c -> route.c, preauth.c, finish.c, convert.c, receipt.c; route.c ->
 * preauth.c, finish.c; preauth.c -> ratelimit.c, finish.c, receipt.c;
 * ratelimit.c -> finish.c; convert.c -> receipt.c; finish.c -> receipt.c,
 * keyview.c's tg_req_bucket_left and ratelimit.c's tg_req_rate_headers;
 * upstream.c and finish.c -> uplean.c, upcurl.c, which report back to
 * upstream.c only through the tg_req_up_* calls (their callbacks);
 * receipt.c -> ratelimit.c's tg_req_rate_release; request.c -> keyview.c ->
 * auth.c, finish.c, ratelimit.c's tg_req_rate_view), so ending a request from any depth never calls back up. A
 * wire protocol's shapes (bodies, answers, error bodies, streams) do not
 * live here: the OpenAI passthrough is scan.c / sse.c / usage.c,
 * conversion between protocols is proto/.
 *
 * Everything request-scoped comes from rq_pool; all of it runs on the
 * worker that accepted the connection (no locks). */
#ifndef TG_AGENT_REQUEST_INT_H
#define TG_AGENT_REQUEST_INT_H

#include <stdint.h>
#include <string.h>
#include <time.h>

#include "agent/json.h"
#include "agent/server_int.h"
#include "proto/tg_proto.h"

#define MAX_ATTEMPTS 8 /* attempts kept per request (breaker skips included); more give up */

/* A request's rate limits, in the order it reserves them: the key's
 * requests and tokens, then its project's (every key of the project
 * together). RATE_SLOT(owner, what), with billing/tg_billing.h's
 * TG_BILLING_RATE_KEY / _PROJECT and _REQUESTS / _TOKENS, indexes
 * rq_rate_lim / _res / _id. */
#define RATE_SLOTS 4
#define RATE_SLOT(owner, what) ((owner) * 2 + (what))
#define SLOT_WHAT(slot) ((slot) % 2)
#define SLOT_OWNER(slot) ((slot) / 2)

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
enum { EP_CHAT, EP_EMBEDDINGS, EP_RESPONSES, EP_IMAGES, EP_MESSAGES };

typedef struct endpoint {
    const char *ep_path;        /* client path, also the record's endpoint */
    const char *ep_upstream;    /* path under the channel's base_url */
    int ep_kind;                /* EP_* */
    int ep_stream;              /* stream: true is served (SSE) */
    int ep_stream_usage;        /* ask for stream_options.include_usage */
    int ep_answer;              /* TG_ANSWER_*: how its answers are read */
    int ep_text;                /* it produces text (counted locally when usage is missing) */
    tg_proto_kind_t ep_proto;   /* the client's protocol (its error shape, conversion) */
} endpoint_t;

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
    const char *rq_cur_bucket; /* tg_req_currency's memo: this bucket's */
    const char *rq_cur;        /* currency for rq_acct */
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
    int rq_tx;                /* its transport: UP_NONE, UP_LEAN, UP_CURL */
    void *rq_call;            /* the transport's call (tg_h1_call_t, CURL); NULL: none in flight */
    struct up_curl *rq_curl;  /* libcurl's headers and error buffer (pool), once curl served */
    const char *rq_location;  /* the answer's Location (pool), for a redirect's message */
    tg_buf_t rq_upbody;
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
    int rq_usage_running;     /* its output count is a running one (an Anthropic stream that
                                 ended before message_delta's usage): receipt.c counts too */
    long rq_cache_write;      /* prompt tokens written to the provider's cache (Anthropic), inside us_prompt */
    /* protocols: the client's, and the attempt's channel's. When either is
     * Anthropic, or a Responses client meets a chat-only channel, the
     * attempt goes through proto/ (the IR, conversion, the checked stream);
     * OpenAI to OpenAI (Responses to OpenAI's own Responses too) stays on
     * the passthrough above. */
    tg_proto_kind_t rq_cproto;
    tg_proto_kind_t rq_uproto;
    int rq_viaproto;          /* this attempt goes through proto/ */
    tg_proto_request_t *rq_ir;  /* the client's request as IR (from the pool), once parsed */
    tg_proto_stream_t *rq_conv; /* the attempt's stream converter (tg_req_free destroys it) */
    int rq_conv_err;          /* the converter ended the stream with an error event */
    uint64_t rq_hold;         /* names its held answer's record (tg_front_hold); 0: not held */
    long rq_images;           /* images in an Images answer's data[] */
    char rq_finish[32];
    int rq_final_class;
    char rq_final_msg[256];
    int rq_no_spool;          /* refused because the outbox is full: spooling would grow it */
    int rq_view;              /* GET /v1/tollgate/key: a paused key is let through to see its status */
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
    /* the rate limits (ratelimit.c), one slot per limit: the key's
     * requests and tokens, then its project's (RATE_SLOT) */
    int rq_rate_init;         /* the fields below are set, for the minute of the first reservation */
    int rq_rate_step;         /* the slots before this one are reserved */
    int64_t rq_rate_lim[RATE_SLOTS]; /* 0: no such limit */
    int64_t rq_rate_res[RATE_SLOTS]; /* reserved on each (1 request, the token estimate); 0: nothing */
    int64_t rq_rate_start;    /* the window's start */
    int64_t rq_rate_end;      /* the window's end */
    char *rq_rate_id[RATE_SLOTS]; /* the windows' scope ids (the pool's), where a limit is set */
    /* counted and priced once, by tg_req_meter_and_price */
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


/* Why a target cannot serve a request (tg_req_target_ok). */
enum { WHY_OK = 0, WHY_ROUTE_TYPE, WHY_BALANCE, WHY_UNAVAILABLE, WHY_PROTOCOL, WHY_UNPRICED };


extern const endpoint_t tg_req_endpoints[]; /* request.c: the POST endpoints */

/* ---- small helpers ------------------------------------------------------------ */

static inline int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline uint64_t rng(worker_t *w)
{
    uint64_t x = w->w_rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return w->w_rng = x;
}

/* tg_cfg_currency of rq's account and bucket, remembered for the last
 * bucket asked (pricing, preauth and the record ask ~6 times a request). */
static inline const char *tg_req_currency(req_t *rq, const char *bucket)
{
    if (!rq->rq_cur_bucket || strcmp(rq->rq_cur_bucket, bucket) != 0) {
        rq->rq_cur = tg_cfg_currency(rq->rq_cfg, rq->rq_acct, bucket);
        rq->rq_cur_bucket = bucket;
    }
    return rq->rq_cur;
}

static inline void add_header(tg_front_conn_t *c, const char *k, const char *v)
{
    tg_front_add_header(c, k, v);
}


/* ---- finish.c: how a request ends ------------------------------------------------ */

/* An error answer in the client protocol's shape: OpenAI
 * {"error":{"message","type","param","code"}}, Anthropic
 * {"type":"error","error":{"type","message"}} with the type the status
 * stands for (tg_proto_errtype_from_status). Ends the request c (the
 * req_t, if any, is the caller's to finish). */
void tg_req_send_error(tg_front_conn_t *c, tg_proto_kind_t kind, const char *reqid, int status, const char *type,
                       const char *code, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

/* x-request-id, and x-tollgate-route / x-tollgate-attempts for a key with
 * expose_cost, on the client's answer hr. */
void tg_req_route_headers(req_t *rq, tg_front_conn_t *hr);
/* The request's time in the gateway itself so far: since it started, less
 * every attempt's upstream time (in flight: until now) and backoff waits. */
int64_t tg_req_overhead_us(const req_t *rq);

/* Ends the request with an error answer in the client's protocol (status,
 * OpenAI type and code, error class for the record, message), then
 * tg_req_finish. rq is freed on
 * return. */
void tg_req_fail(req_t *rq, int status, const char *type, const char *code, int cls, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Ends the request: metrics, receipt (tg_req_emit_record), then frees it.
 * The client's response, if any, was ended before. rq is freed on return. */
void tg_req_finish(req_t *rq);

/* Answers 200 with a JSON body (copied), then frees rq with no receipt:
 * the endpoints the gateway answers itself and does not meter. */
void tg_req_reply_json(req_t *rq, const char *body, size_t len);

/* Frees what the request holds (no receipt); a client request not answered
 * yet (a shutdown) is abandoned: its connection closes. */
void tg_req_free(req_t *rq);

/* Puts a new request on its worker's list of requests in flight (taken off
 * by tg_req_free). */
void tg_req_link(req_t *rq);

/* Ends the attempt's upstream call if one is in flight (its transport's
 * drop: no more callbacks) and stops rq_timer. Can't fail. */
void tg_req_drop_call(req_t *rq);

/* ---- auth.c: who asks, from where ------------------------------------------------ */

/* Sets rq_ip: the peer, or the client from X-Forwarded-For when the peer is
 * a trusted proxy. Can't fail. */
void tg_req_client_ip(req_t *rq);

/* 1 when the key's model allowlist (globs) admits model (or it has none). */
int tg_req_model_allowed(const tg_key_t *k, const char *model);

/* Authenticates (Bearer or x-api-key), checks the key's and account's
 * status, expiry and IP allowlist, and finds the run's budget. Returns 0
 * (rq_key, rq_acct, rq_runb set), or -1 with the request failed and freed. */
int tg_req_authenticate(req_t *rq);

/* ---- route.c: which target serves ---------------------------------------------- */

/* The next attempt's slot, zeroed: the first ATT_INLINE live in the req_t,
 * beyond them the array moves to the pool (MAX_ATTEMPTS). NULL when all
 * MAX_ATTEMPTS are used or the pool is out of memory. */
attempt_t *tg_req_att_new(req_t *rq);

/* Whether the key may use the target: WHY_OK or why not. */
int tg_req_target_ok(req_t *rq, const Tollgate__V1__RouteTarget *t);

/* Picks an untried, usable target of tier `tier` whose breaker admits a
 * request; breaker skips are recorded as attempts. Returns its index or -1. */
int tg_req_pick_in_tier(req_t *rq, uint32_t tier);

/* After the failed attempt a: sets a->at_decision and the routing state.
 * Returns 1 when another attempt should start (after a->at_backoff_ms),
 * 0 to give up. */
int tg_req_next_step(req_t *rq, attempt_t *a);

/* Fails the request after its last attempt a (NULL: no target admitted
 * one) with the status that says why. rq is freed on return. */
void tg_req_give_up(req_t *rq, attempt_t *a);

/* ---- preauth.c: spend leases ------------------------------------------------------ */

/* The price entry for serving rq on channel c (the card in effect when the
 * request started, in the currency of the paying bucket; *bucket set when
 * bucket is not NULL), or NULL: what cannot be priced is not served. */
const Tollgate__V1__PriceEntry *tg_req_price_for(req_t *rq, const Tollgate__V1__Channel *c, const char **bucket);

/* The output tokens the estimate allows for one choice: the request's
 * cap, else the route's default, else the policy's, else DEF_MAX_OUTPUT. */
int64_t tg_req_output_allowance(req_t *rq);

/* Makes sure rq holds a reservation covering an attempt on ch. Returns 0
 * (go on), 1 (parked: the timer calls tg_req_start_attempt again) or -1
 * (refused: the request was failed and freed). */
int tg_req_ensure_reserved(req_t *rq, const tg_chan_t *ch);

/* 1 when a chat stream's locally counted output went past its reservation
 * (rq_out_allow). */
int tg_req_past_allowance(req_t *rq);

/* Ends a chat stream at its reservation: the finishing chunk and [DONE]
 * into rq_tail, rq_capped set. */
void tg_req_cut_at_allowance(req_t *rq);

/* Marks the stream ended at its reservation by the gateway (whichever
 * wrote the end: tg_req_cut_at_allowance, or convert.c's tg_req_conv_cut):
 * rq_capped and rq_saw_done set (a complete answer: no stream-cut class,
 * no error event after the end), rq_finish = finish, the attempt's message
 * says why. Can't fail. */
void tg_req_mark_capped(req_t *rq, const char *finish);

/* Counts the prompt exactly (once per request) when its byte bound
 * (rq_input_max) did not fit. Returns 1 when the bound got smaller. */
int tg_req_exact_input(req_t *rq);

/* ---- ratelimit.c: the key's and its project's rate limits (ratelimit.h has the formats) */

/* Reserves the request on the key's and its project's rate windows of its start's minute:
 * one request, and rq_input_max + rq_out_est tokens (the estimate must be
 * made first), once per request whatever its attempts. Returns 0 (go on),
 * 1 (waits for a lease: rq_ticket names it; call again) or -1 (refused
 * with 429 in the client's shape and Retry-After: the request ended). */
int tg_req_rate_reserve(req_t *rq, int64_t now);

/* The request ended: its reservations go back, one request counted when
 * `sent` (an attempt went upstream) and `tokens` (its usage: input, cache
 * and output; 0 when nothing was served) in place of the estimate. Can't
 * fail; a second call does nothing. */
void tg_req_rate_release(req_t *rq, int sent, int64_t tokens);

/* The rate-limit headers of the key's (or its project's, the tighter)
 * limits in the request's window, in the client's protocol (x-ratelimit-*
 * or anthropic-ratelimit-*), onto hr. Nothing when neither has one. */
void tg_req_rate_headers(req_t *rq, tg_front_conn_t *hr);

/* GET /v1/tollgate/key's "rate_limits": a JSON array, into b, of the key's
 * limits in the minute that holds now: limit, remaining, window, reset. */
void tg_req_rate_view(req_t *rq, tg_buf_t *b, int64_t now);

/* ---- upstream.c: the upstream call ----------------------------------------------- */

/* Starts an attempt on the current target (rq_tier, rq_target) after the
 * reservation; failures end the request. */
void tg_req_start_attempt(req_t *rq);

/* rq_timer's callback: lease poll, backoff, or first-byte timeout. */
void tg_req_on_timer(evutil_socket_t fd, short what, void *arg);

/* The front's callbacks (tg_front_set_events): the client left; the
 * client's queue drained (a paused upstream resumes). */
void tg_req_on_front_gone(tg_front_conn_t *c, void *arg);
void tg_req_on_front_drain(tg_front_conn_t *c, void *arg);

/* What a transport tells the attempt, in this order: tg_req_up_begin
 * (curl: each head, 1xx included), tg_req_up_field for each field of the
 * final head, tg_req_up_head at its end, tg_req_up_body for the body's
 * bytes, tg_req_up_done once. */
enum { UP_NONE, UP_LEAN, UP_CURL };                                     /* rq_tx */
enum { UP_OK, UP_TIMEOUT, UP_CONNECT, UP_ABORTED, UP_MALFORMED, UP_CUT }; /* how a call ended */
enum { UP_TAKEN = 0, UP_PAUSE = 1, UP_STOP = -1 };                      /* tg_req_up_body */
void tg_req_up_begin(req_t *rq);
void tg_req_up_field(req_t *rq, const char *name, size_t nl, const char *value, size_t vl);
/* status and Content-Type (NULL or "" when none) of the final head */
void tg_req_up_head(req_t *rq, int status, const char *ctype);
/* UP_TAKEN; UP_PAUSE (not taken: hand them again after the transport's
 * resume, which tg_req_on_front_drain calls); UP_STOP (end the call) */
int tg_req_up_body(req_t *rq, const char *data, size_t n);
/* the call ended (the transport forgot it first: rq_call is NULL), with a
 * short message for the record when res is not UP_OK. rq may be freed on
 * return. */
void tg_req_up_done(req_t *rq, int res, const char *msg);

/* ---- uplean.c, upcurl.c: the transports ------------------------------------------ */

typedef struct up_req {
    const char *ur_url;
    const char *ur_fields;   /* "Name: value\r\n" each */
    size_t ur_fields_len;
    const char *ur_body;     /* rq_upbody: kept until the transport's sent says 1, or the call ends */
    size_t ur_body_len;
    uint32_t ur_connect_ms, ur_total_ms;
} up_req_t;

/* Start the attempt's call (rq_tx, rq_call set): 0, or -1 out of memory
 * (nothing in flight). No callback comes from inside. The lean start
 * hands a URL it does not serve to curl. */
int tg_req_lean_start(req_t *rq, const up_req_t *u);
int tg_req_curl_start(req_t *rq, const up_req_t *u);
/* Forget the call, no callback (its connection is not reused). */
void tg_req_lean_drop(req_t *rq);
void tg_req_curl_drop(req_t *rq);
/* Reading goes on after UP_PAUSE. */
void tg_req_lean_resume(req_t *rq);
void tg_req_curl_resume(req_t *rq);
/* 1 once the whole body was written. */
int tg_req_lean_sent(req_t *rq);
int tg_req_curl_sent(req_t *rq);

/* ---- convert.c: attempts through proto/ ------------------------------------------ */

/* The protocol a channel of `provider` (Tollgate__V1__ProviderType) speaks
 * for this request, from proto/vendor.c's row: Anthropic; the Responses API
 * for a Responses client on an OpenAI channel (passthrough); else chat
 * completions (DeepSeek, Qwen, Kimi, GLM, Gemini, OpenAI-compatible: a
 * Responses client there is converted). Can't fail. */
tg_proto_kind_t tg_req_channel_proto(const req_t *rq, int provider);

/* Writes the attempt's body into rq_upbody in the channel's protocol
 * (rq_uproto): the client's IR (an OpenAI client's parsed now, once) with
 * the target's model, and max_tokens for an Anthropic channel when the
 * client set none. Returns 0 or a TG_PROTO_E* code with err set (the
 * client's request cannot be converted: EINVALID / EUNSUPPORTED). */
int tg_req_conv_body(req_t *rq, const char *model, int64_t max_tokens, char *err, size_t errlen);

/* Reads a 2xx JSON answer of the channel's protocol in rq_resp (validated
 * whole), keeps its usage, stop reason and text, and rewrites rq_resp in
 * the client's protocol when they differ. Returns 0 or a TG_PROTO_E* code
 * (a malformed answer). */
int tg_req_conv_answer(req_t *rq, char *err, size_t errlen);

/* Feeds upstream stream bytes to the attempt's converter (created on the
 * first call); client bytes go to rq_chunk, the stream's last ones to
 * rq_tail. Returns 0, or a TG_PROTO_E* code once the stream ended with an
 * error event (rq_conv_err). */
int tg_req_conv_feed(req_t *rq, const char *data, size_t n, char *err, size_t errlen);

/* Upstream EOF or cut: closes the stream (its end or error event into
 * rq_tail). Returns 0 when it ended cleanly, else a TG_PROTO_E* code. */
int tg_req_conv_finish(req_t *rq, char *err, size_t errlen);

/* Ends the converted stream at its reservation (max_tokens / length),
 * cleanly, into rq_tail. */
void tg_req_conv_cut(req_t *rq);

/* The converted stream's usage and stop reason into the request. */
void tg_req_conv_result(req_t *rq);

/* ---- receipt.c: meter, price, record ---------------------------------------------- */

/* Fills rq_tu and prices it once (rq_metered); before a non-streaming
 * answer is sent so x-tollgate-cost can go in its head. */
void tg_req_meter_and_price(req_t *rq);

/* Gives back every reservation rq holds, counting `cost` as spent. */
void tg_req_release_all(req_t *rq, int64_t cost);

/* Counts a request in IR form (tg_proto_count_text: system prompts, block
 * text, tool calls and results, tools) with model's encoding (the route's
 * when it names one), plus 3 per message and 3 priming the answer, as
 * OpenAI's chat rule counts. *estimate is 1 for a model without a public
 * tokenizer (scaled o200k_base, meter/). Returns 0, or -1 without a
 * tokenizer or out of memory. */
int tg_req_count_ir(req_t *rq, const tg_proto_request_t *ir, const char *model, int64_t *tokens, int *estimate);

/* Builds the UsageRecord, releases the reservations against the actual
 * cost, spools it (or logs it). */
void tg_req_emit_record(req_t *rq);

/* ---- keyview.c: the key holder's own view ---------------------------------------- */

/* GET /v1/tollgate/key: authenticates (a paused key included) and answers
 * the key's name, status, models, limits and the account's buckets as
 * known at this agent, with their age. rq is freed on return. */
void tg_req_handle_keyview(req_t *rq);

/* What is left of account a's bucket as known at this agent: the newer of
 * the snapshot's balance and the last lease answer, less the floor, less
 * what this agent spent unsettled and holds in flight. Returns 0 with
 * *left and *as_of_us (when that balance was known), or -1 when the agent
 * knows no balance for it. Ends nothing: finish.c may call it. */
int tg_req_bucket_left(req_t *rq, const tg_account_t *a, const char *bucket, int64_t *left, int64_t *as_of_us);

#endif
