/* agent_int.h: the agent's internal modules that do not touch sockets, so
 * the unit tests can reach them: the one-pass request scanner and body
 * rewrite, the SSE splitter and the readers of provider JSON (all walked
 * with json.h's cursor), usage counts, model globs and CIDR matching, the
 * circuit breaker and the route picker. Everything here is reentrant; the structs
 * belong to the caller. See tg_agent.h for the daemon itself.
 */
#ifndef TG_AGENT_INT_H
#define TG_AGENT_INT_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/tg_agent.h"
#include "base/tg_base.h"

/* ---- request scan (scan.c) ---------------------------------------------- */

#define TG_AGENT_MODEL_MAX 256

/* A byte range of the request body. */
typedef struct tg_span {
    size_t sp_off; /* first byte */
    size_t sp_len; /* 0: absent */
} tg_span_t;

/* What the gateway needs from a chat request, found in one validating pass
 * over the body (no tree). Only top-level members are looked at; everything
 * else is validated and passed through untouched. */
typedef struct tg_scan {
    char sc_model[TG_AGENT_MODEL_MAX]; /* "model", decoded; "" if absent */
    tg_span_t sc_model_val;            /* span of the model string, quotes included */
    int sc_stream;                     /* "stream": true */
    int sc_include_usage;              /* "stream_options": {"include_usage": true} */
    tg_span_t sc_so_val;               /* span of the stream_options value */
    int sc_so_is_object;               /* stream_options is an object */
    int sc_so_empty;                   /* ... with no members */
    tg_span_t sc_iu_val;               /* span of include_usage's value */
    size_t sc_close;                   /* offset of the top-level closing '}' */
    int sc_members;                    /* top-level members */
    long sc_max_tokens;                /* the largest of max_tokens, max_completion_tokens,
                                          max_output_tokens (non-negative integers; a
                                          provider may honour any one of them); -1 absent.
                                          A repeat of one name is refused by the scan */
    long sc_n;                         /* "n" (choices), 1 when absent */
} tg_scan_t;

/* Scans body[0..len) in one pass: it must be one JSON object (RFC 8259,
 * nesting at most 256 deep). Fills *sc. Returns 0, or TG_AGENT_EJSON with
 * "malformed JSON at byte N: ..." in err, or TG_AGENT_EREQUEST when a field
 * the gateway reads has the wrong type or appears twice (a duplicate
 * "model", "stream" or output cap could make the gateway and the upstream
 * disagree). Can't
 * allocate. */
int tg_agent_scan(const char *body, size_t len, tg_scan_t *sc, char *err, size_t errlen);

/* Writes the upstream body into out: the body with the model replaced by
 * `model` (a JSON string is written, escaped), and, when add_usage is set,
 * stream_options.include_usage forced to true (inserted or replaced; other
 * stream_options members kept). Everything else is copied byte for byte.
 * Returns 0 or TG_AGENT_ENOMEM (the buffer's limit or memory). */
int tg_agent_rewrite(const char *body, size_t len, const tg_scan_t *sc, const char *model,
                     int add_usage, tg_buf_t *out);

/* Decodes the JSON string starting at p[0] (a quote) and appends its bytes
 * to out; *used gets the bytes consumed. Returns 0, TG_AGENT_EJSON or
 * TG_AGENT_ETOOBIG (out's limit). */
int tg_agent_json_decode(const char *p, size_t n, tg_buf_t *out, size_t *used);

/* Appends s as a JSON string (quotes and escapes). Returns tg_buf codes. */
int tg_agent_json_str(tg_buf_t *out, const char *s, size_t n);

/* ---- SSE (sse.c) --------------------------------------------------------- */

/* Splits an event stream into events as bytes arrive. An event is the bytes
 * up to and including the blank line that ends it ("\n\n" or "\r\n\r\n"). */
typedef struct tg_sse {
    tg_buf_t ss_pending; /* bytes of an unfinished event */
} tg_sse_t;

void tg_sse_init(tg_sse_t *s, size_t max_event);
void tg_sse_free(tg_sse_t *s);
/* Feeds n bytes; calls on_event(arg, ev, evlen) for each complete event.
 * Returns 0, or TG_AGENT_ETOOBIG when one event passes max_event, or the
 * first non-zero value on_event returned. */
int tg_sse_feed(tg_sse_t *s, const char *p, size_t n,
                int (*on_event)(void *arg, const char *ev, size_t evlen), void *arg);

/* What a chat stream event says (tg_sse_chunk). */
enum { TG_CHUNK_NONE = 0, TG_CHUNK_DATA = 1, TG_CHUNK_DONE = 2 };
typedef struct tg_chunk {
    int ck_kind;             /* TG_CHUNK_*: NONE when there is no data line */
    int ck_usage_only;       /* "choices": [] and a "usage" object: the usage chunk */
    const char *ck_usage;    /* the top-level "usage" object inside ev; NULL: absent or null */
    size_t ck_usage_len;
    char ck_finish[32];      /* the first choices[i].finish_reason string, "" if none */
    int ck_error;            /* a top-level "error" member: the provider's in-stream error */
} tg_chunk_t;

/* Reads an OpenAI chat stream event: "data: [DONE]", or a chunk whose
 * top-level members are looked at (usage, choices, error) and whose
 * choices[i].delta.content and choices[i].delta.tool_calls[k].function.
 * arguments strings are appended to text (may be NULL; past text's cap the
 * text stays partial). A "usage" key anywhere else means nothing. Returns
 * 0 and *ck, or TG_AGENT_EJSON when the data line is not one JSON object
 * (*ck then says TG_CHUNK_NONE). */
int tg_sse_chunk(const char *ev, size_t evlen, tg_chunk_t *ck, tg_buf_t *text);

/* What a Responses stream event says (tg_sse_resp_event). */
typedef struct tg_resp_event {
    char re_type[64];        /* the data's top-level "type" (else the event: line) */
    int re_final;            /* response.completed, .incomplete or .failed */
    const char *re_usage;    /* response.usage of a final event, inside ev; NULL: none */
    size_t re_usage_len;
} tg_resp_event_t;

/* Reads a Responses stream event: its type, the usage of a final event
 * (response.usage, nowhere else), and appends the top-level "delta" of
 * response.output_text.delta and response.function_call_arguments.delta
 * to text (may be NULL). Returns 0 and *re, or TG_AGENT_EJSON when the
 * data line is not one JSON object: re_type then holds the event: line (or
 * a "type" read before the fault) and re_final is still set from it, so a
 * broken final event still ends the stream; re_usage stays NULL. */
int tg_sse_resp_event(const char *ev, size_t evlen, tg_resp_event_t *re, tg_buf_t *text);

/* ---- answers and usage (sse.c, usage.c) ---------------------------------- */

/* OpenAI usage numbers, raw as the provider sent them. -1: absent. */
typedef struct tg_usage {
    long us_prompt;    /* prompt_tokens or input_tokens (cached included) */
    long us_completion;/* completion_tokens or output_tokens (reasoning included) */
    long us_cached;    /* {prompt,input}_tokens_details.cached_tokens */
    long us_reasoning; /* {completion,output}_tokens_details.reasoning_tokens */
} tg_usage_t;

#define TG_USAGE_MAX ((long)1 << 53) /* counts past this are not believed */

/* Reads the numbers of a usage object (its top-level members only): chat
 * and embeddings names (prompt_tokens, completion_tokens, *_details) or,
 * when those are absent, the Responses and Images names (input_tokens,
 * output_tokens, input_tokens_details, output_tokens_details). A count
 * must be a non-negative integer literal no larger than TG_USAGE_MAX (null
 * is absent). Returns 0; TG_AGENT_ERANGE when a count is anything else
 * (2500000000.0, 1e+30, -1, "12": the valid ones are still filled in);
 * TG_AGENT_EJSON when it is not an object or has neither main count, and
 * then *u is left as it was (an earlier usage survives). Cache reads are
 * read under vendor's row (proto/vendor.c; NULL: OPENAI_COMPATIBLE's):
 * its own members (DeepSeek prompt_cache_hit_tokens, Kimi cached_tokens)
 * and prompt_tokens_details.cached_tokens in the row's order; its hits +
 * misses stand in for an absent prompt_tokens. */
struct tg_proto_vendor;
int tg_agent_usage_parse(const char *json, size_t len, const struct tg_proto_vendor *vendor, tg_usage_t *u);

/* The same reading of the usage object at a JSON cursor (json.h), inside
 * a larger document: the value is consumed (skipped when not an object).
 * *verdict is what tg_agent_usage_parse would return for the value's text
 * (0, TG_AGENT_ERANGE, TG_AGENT_EJSON), and *u is filled as it would fill
 * it. Returns 0, or the cursor's error when the value is malformed JSON. */
struct tg_json;
int tg_agent_usage_read(struct tg_json *j, const struct tg_proto_vendor *vendor, tg_usage_t *u, int *verdict);

/* Holds provider counts to what the request allowed: the completion count
 * to max_out (when >= 0; reasoning stays within it, and cached tokens
 * within the prompt). The prompt is never clamped: providers add input the
 * gateway cannot see, so a high one is only flagged (receipt.c). Returns 1
 * when it clamped something, 0 when the usage was within bounds. Can't
 * fail. */
int tg_agent_usage_clamp(tg_usage_t *u, long max_out);

/* What the gateway reads from a provider's JSON answer, in one validating
 * pass (tg_agent_answer). Pointers are into the body. */
enum { TG_ANSWER_CHAT, TG_ANSWER_RESPONSES, TG_ANSWER_IMAGES, TG_ANSWER_OTHER };
typedef struct tg_answer {
    const char *an_usage;    /* the top-level "usage" object; NULL: absent or null */
    size_t an_usage_len;
    tg_usage_t an_counts;    /* its counts, read in the same pass (tg_agent_usage_read); */
    int an_counts_rc;        /* meaningful when this, tg_agent_usage_parse's verdict, is 0 or ERANGE */
    long an_images;          /* elements of the top-level "data" array (images); -1: none */
    char an_finish[32];      /* chat: choices[i].finish_reason; responses: status */
} tg_answer_t;

/* Validates body as exactly one JSON object and reads it as an answer of
 * `kind`: the top-level usage and its counts (cache reads under vendor's
 * names, as tg_agent_usage_parse reads them); for chat the produced text (choices[i].
 * message.content and tool call arguments), for Responses the text of
 * output[i].content[k].text and output[i].arguments, appended to text
 * (may be NULL). Returns 0, or TG_AGENT_EJSON with the reason in err (a
 * malformed answer), or TG_AGENT_ETOOBIG never (text past its cap stays
 * partial). */
int tg_agent_answer(const char *body, size_t len, int kind, const struct tg_proto_vendor *vendor,
                    tg_answer_t *an, tg_buf_t *text, char *err, size_t errlen);

/* Re-cuts a JSON answer (validated whole) as the stream its client asked
 * for, when the upstream ignored stream: true. Chat: one chunk with each
 * choice's whole delta (role, content, tool_calls with their index) and
 * finish_reason to out, then the usage chunk when include_usage; Responses:
 * nothing to out. The final event goes to tail ("data: [DONE]", or the
 * response.completed / .incomplete / .failed event carrying the whole
 * response). Returns 0, TG_AGENT_EJSON or TG_AGENT_ETOOBIG. */
int tg_sse_from_answer(const char *body, size_t len, int kind, int include_usage, tg_buf_t *out, tg_buf_t *tail);

/* Appends the strings under a request's top-level input, prompt and
 * instructions (any depth below them, but not the values of type, role,
 * id and the like) to out: the prompt text of a non-chat request, for a
 * local count. 0, TG_AGENT_EJSON or TG_AGENT_ETOOBIG. */
int tg_agent_prompt_text(const char *body, size_t len, tg_buf_t *out);

/* ---- policy (policy.c) --------------------------------------------------- */

/* Glob match of a model name: '*' any run, '?' one byte, else literal. */
int tg_agent_glob(const char *pat, const char *s);

/* An address to match against CIDRs: v4 addresses are kept as v4-mapped v6. */
typedef struct tg_ip {
    uint8_t ip_addr[16];
} tg_ip_t;

/* Parses "1.2.3.4" or "::1" into *ip. Returns 0 or -1. */
int tg_agent_ip_parse(const char *s, tg_ip_t *ip);
/* 1 when ip is inside cidr ("10.0.0.0/8", "2001:db8::/32", or a bare
 * address), 0 when not, -1 when the CIDR does not parse. */
int tg_agent_cidr_match(const char *cidr, const tg_ip_t *ip);

/* ---- circuit breaker (breaker.c) ----------------------------------------- */

enum { TG_BRK_CLOSED = 0, TG_BRK_OPEN = 1, TG_BRK_HALF_OPEN = 2 };

/* Thresholds, filled from a route's CircuitBreaker with defaults. */
typedef struct tg_brk_conf {
    uint32_t bc_consecutive;  /* open after this many failures in a row */
    uint32_t bc_rate_ppm;     /* or at this error rate in the window; 0: off */
    uint32_t bc_window_ms;
    uint32_t bc_min_requests;
    uint32_t bc_open_ms;      /* open this long, then half-open */
    uint32_t bc_probes;       /* successes in half-open that close it */
} tg_brk_conf_t;

/* One channel's breaker. Not locked: the caller serializes access. */
typedef struct tg_brk {
    int br_state;
    uint32_t br_fails_in_row;
    int64_t br_opened_ms;
    uint32_t br_probe_ok;       /* half-open successes so far */
    uint32_t br_probe_inflight; /* half-open probes out */
    int64_t br_win_start_ms;
    uint32_t br_win_total;
    uint32_t br_win_fail;
    uint64_t br_opens;          /* times it opened (metrics) */
} tg_brk_t;

/* Defaults for zero fields: 5 in a row, 10 s window, 20 minimum requests,
 * open 5 s, 1 probe. */
void tg_brk_conf_fill(tg_brk_conf_t *c);
void tg_brk_init(tg_brk_t *b);
/* 1 when a request may go to the channel now (it counts as a probe while
 * half-open), 0 when the breaker refuses it. */
int tg_brk_allow(tg_brk_t *b, const tg_brk_conf_t *c, int64_t now_ms);
/* Records an outcome of a request that tg_brk_allow admitted. */
void tg_brk_record(tg_brk_t *b, const tg_brk_conf_t *c, int ok, int64_t now_ms);

/* ---- route pick (router.c) ----------------------------------------------- */

/* Weighted choice among n candidates: weights[i] (0 = skip), r a random
 * number. Returns the index, or -1 when every weight is 0. */
int tg_agent_pick(const uint32_t *weights, int n, uint64_t r);

/* Backoff before retry number `retry` (0-based): initial * 2^retry capped by
 * max, at least retry_after_ms when honoured (also capped by max). */
uint32_t tg_agent_backoff(uint32_t initial_ms, uint32_t max_ms, unsigned retry, int64_t retry_after_ms);

/* ---- usage outbox (outbox.c) -------------------------------------------- */

/* The durable spool of usage records; see outbox.c for the durability
 * bound. Thread-safe: any thread may put; tg_outbox_sync belongs to one
 * thread (the sync thread). */
typedef struct tg_outbox tg_outbox_t;

/* Opens (creating unless readonly) the LMDB environment in dir with a map
 * of map_bytes and its journal, moving what a crash left in the journal
 * into LMDB (unless readonly; a full map leaves them in the journal).
 * Returns 0 and *out (close with tg_outbox_close), or TG_AGENT_ESYS /
 * ENOMEM with the reason. */
int tg_outbox_open(const char *dir, size_t map_bytes, int readonly, tg_outbox_t **out, char *err, size_t errlen);
/* Moves the journal into LMDB, syncs, empties the journal, closes.
 * Accepts NULL. */
void tg_outbox_close(tg_outbox_t *o);
/* Appends one record to the journal without sync (page cache: survives a
 * killed process; tg_outbox_sync makes it survive power loss). *seq (may be
 * NULL) gets its sequence. Returns 0, TG_AGENT_EFULL (no disk space, or
 * LMDB's map full until acknowledgements free it) or TG_AGENT_ESYS. */
int tg_outbox_put(tg_outbox_t *o, const void *data, size_t len, uint64_t *seq, char *err, size_t errlen);
/* Appends n records as one journal frame, one pwrite (a loop iteration's
 * worth of requests). Same returns as tg_outbox_put; on error none is
 * stored. */
typedef struct tg_outbox_item {
    const void *oi_data;
    size_t oi_len;
} tg_outbox_item_t;
int tg_outbox_put_many(tg_outbox_t *o, const tg_outbox_item_t *items, size_t n, char *err, size_t errlen);
/* Records held. */
long tg_outbox_depth(tg_outbox_t *o);
/* The sync thread's call: moves the journal's records into LMDB, syncs
 * LMDB when anything was committed to it (moves, batches, acks), empties
 * the journal once it is large, and fsyncs the journal instead when the
 * move fails (see outbox.c). 0, EFULL (LMDB's map is full: the records
 * wait in the journal) or ESYS, with the reason. */
int tg_outbox_sync(tg_outbox_t *o, char *err, size_t errlen);
/* The journal size at which tg_outbox_sync empties it (32 MB; tests). */
void tg_outbox_set_rotate(tg_outbox_t *o, uint64_t bytes);
/* Calls fn(arg, seq, data, len) for up to max records, oldest first, in one
 * read transaction (data valid during the call), then any the journal
 * holds that are not in LMDB (a failed move, a read-only open). Stops at
 * fn's first non-zero return and returns it; else 0 or ESYS. */
int tg_outbox_scan(tg_outbox_t *o, size_t max, int (*fn)(void *, uint64_t, const void *, size_t), void *arg,
                   char *err, size_t errlen);
/* The same over the records waiting (rejected 0) or the ones the control
 * plane refused for good (rejected 1). */
int tg_outbox_scan_table(tg_outbox_t *o, int rejected, size_t max,
                         int (*fn)(void *, uint64_t, const void *, size_t), void *arg, char *err, size_t errlen);
/* The batch being reported: its sequence and record range. */
typedef struct tg_outbox_batch {
    uint64_t ob_seq;   /* UsageBatch.sequence */
    uint64_t ob_first; /* first record sequence */
    uint64_t ob_last;  /* last record sequence */
    uint64_t ob_count; /* records */
} tg_outbox_batch_t;
/* The batch to send: the one in flight (formed earlier, not yet
 * acknowledged: resent as it was), else a new one of the oldest records,
 * at most max, written down before it is returned. Returns 1 and *b, 0
 * when the outbox is empty, or ESYS. */
int tg_outbox_batch(tg_outbox_t *o, size_t max, tg_outbox_batch_t *b, char *err, size_t errlen);
/* The control plane acknowledged b (or, with rejected set, refused it for
 * good: its records move to the "rejected" table for an operator instead
 * of blocking every later batch): removes its records and the in-flight
 * mark in one transaction. 0 or ESYS. */
int tg_outbox_batch_done(tg_outbox_t *o, const tg_outbox_batch_t *b, int rejected, char *err, size_t errlen);

/* ---- the outbox's journal (journal.c) ------------------------------------- */

/* An append-only file of frames of records (see journal.c for the format);
 * the outbox's front door. Not thread-safe: the outbox serializes. */
typedef struct tg_journal tg_journal_t;
typedef int (*tg_journal_fn)(void *arg, uint64_t seq, const void *data, size_t len);
/* Opens (creating unless readonly) the journal at path, its end at the
 * file's end. Returns 0 and *out (close with tg_journal_close; readonly
 * and absent: NULL), or ESYS / ENOMEM. */
int tg_journal_open(const char *path, int readonly, tg_journal_t **out, char *err, size_t errlen);
/* Closes; accepts NULL. */
void tg_journal_close(tg_journal_t *j);
/* Where the next frame goes (the bytes written so far). */
uint64_t tg_journal_end(const tg_journal_t *j);
/* Writes items[0..n) as one frame, sequences first.., with one pwrite at
 * the end. 0, EFULL (no space) or ESYS; on error the end stays. */
int tg_journal_append(tg_journal_t *j, uint64_t first, const tg_outbox_item_t *items, size_t n, char *err,
                      size_t errlen);
/* fdatasync. 0 or ESYS. */
int tg_journal_sync(tg_journal_t *j);
/* Calls fn(arg, seq, data, len) for every record of the whole, sound
 * frames from offset `from` up to `to` (the journal's end at most), in
 * order, stopping at the first torn or unsound frame or at fn's first
 * non-zero return, which it returns (else 0, or ESYS / ENOMEM). *at (may
 * be NULL) gets the offset after the last frame fn took whole. */
int tg_journal_read(tg_journal_t *j, uint64_t from, uint64_t to, tg_journal_fn fn, void *arg, uint64_t *at,
                    char *err, size_t errlen);
/* Cuts the file at offset `at` (0: empties it); the next frame goes
 * there. 0 or ESYS. */
int tg_journal_reset(tg_journal_t *j, uint64_t at, char *err, size_t errlen);

/* Rewrites the packed UsageRecord in[0..len) as the receipt of an answer
 * the gateway withheld (its record was not committed when the answer's end
 * was due): client_status 503, error_class GATEWAY, error_message reason,
 * answer_withheld set, cost_nano 0; usage and upstream_cost_nano kept.
 * On 0, *out (a tg_malloc block the caller frees) and *outlen hold the new
 * record, and *cost the cost it had. Returns TG_AGENT_EJSON when in is
 * not a record, TG_AGENT_ENOMEM (nothing changed either way). */
int tg_outbox_withhold(const void *in, size_t len, const char *reason, void **out, size_t *outlen, int64_t *cost);

/* ---- metrics (metrics.c) -------------------------------------------------- */

/* One worker's Prometheus series, keyed by (catalog model, channel). Only
 * its worker observes; any thread may render. */
typedef struct tg_metrics tg_metrics_t;
/* NULL when out of memory. Free with tg_metrics_destroy (accepts NULL). */
tg_metrics_t *tg_metrics_create(void);
void tg_metrics_destroy(tg_metrics_t *m);
/* Counts one finished request. m may be NULL (nothing counted). */
void tg_metrics_observe(tg_metrics_t *m, const char *model, const char *channel, int status, int64_t latency_us,
                        int64_t ttft_us, int upstream_errors, int fallback);
/* Appends the Prometheus text of n workers' series, summed, and the outbox
 * depth. 0 or TG_AGENT_ENOMEM. */
int tg_metrics_render(tg_metrics_t *const *ms, int n, long outbox_depth, tg_buf_t *out);

/* ---- configuration tables (config.c) ------------------------------------ */

#include "tollgate/v1/agent.pb-c.h"

typedef Tollgate__V1__Snapshot tg_snap_t;
typedef Tollgate__V1__ApiKey tg_key_t;
typedef Tollgate__V1__ModelRoute tg_route_t;
typedef Tollgate__V1__Account tg_account_t;
typedef Tollgate__V1__Balance tg_balance_t;

/* A channel as the request path uses it: the snapshot's Channel plus the
 * resolved credential and the precomputed upstream URL. */
typedef struct tg_chan {
    const Tollgate__V1__Channel *ch_pb;
    char *ch_credential;   /* resolved ("env:", "file:" references read at build) */
    char *ch_chat_url;     /* base_url + "/chat/completions" */
    char *ch_models_url;   /* base_url + "/models" */
} tg_chan_t;

/* One immutable configuration: the unpacked snapshot and lookup tables
 * into it. Reference counted; the last tg_cfg_unref frees it. */
typedef struct tg_cfg tg_cfg_t;

/* Builds tables from an unpacked snapshot, taking ownership of snap (freed
 * with the cfg, also on error). Returns 0 and *out with one reference, or
 * TG_AGENT_ECONFIG (the reason names the object) or TG_AGENT_ENOMEM. */
int tg_cfg_build(tg_snap_t *snap, tg_cfg_t **out, char *err, size_t errlen);
/* Parses bytes (packed protobuf, or JSON when the first non-space byte is
 * '{') into a snapshot and builds it. Same returns as tg_cfg_build. */
int tg_cfg_load(const void *data, size_t len, tg_cfg_t **out, char *err, size_t errlen);
void tg_cfg_ref(tg_cfg_t *c);
/* Drops a reference; accepts NULL. */
void tg_cfg_unref(tg_cfg_t *c);

const tg_snap_t *tg_cfg_snapshot(const tg_cfg_t *c);
/* Lookups: NULL when absent. Pointers stay valid while the caller holds a
 * reference. */
const tg_key_t *tg_cfg_key(const tg_cfg_t *c, const uint8_t sha256[32]);
const tg_route_t *tg_cfg_route(const tg_cfg_t *c, const char *model);
const tg_chan_t *tg_cfg_channel(const tg_cfg_t *c, const char *id);
const tg_account_t *tg_cfg_account(const tg_cfg_t *c, const char *id);
const Tollgate__V1__Project *tg_cfg_project(const tg_cfg_t *c, const char *id);
const Tollgate__V1__RunBudget *tg_cfg_run(const tg_cfg_t *c, const char *run_id);
const tg_balance_t *tg_cfg_balance(const tg_cfg_t *c, const char *account_id, const char *bucket);
/* The bucket an account pays a route type from: tg_billing_bucket (the
 * control plane's map) when it names one of the account's buckets, else
 * its override, else "wallet" for POOLED and "credit" otherwise. Never
 * NULL. */
const char *tg_cfg_bucket(const tg_account_t *a, int route_type);
/* The price in effect for a request started at t_us: billing's
 * tg_billing_select over the snapshot's cards (each card's version in
 * effect at t_us only, of `currency` ("" = any); a model that version does
 * not list is unpriced). Returns the card and sets *entry, or NULL. */
const Tollgate__V1__PriceCard *tg_cfg_price(const tg_cfg_t *c, const char *model, int route_type,
                                            const char *currency, int64_t t_us,
                                            const Tollgate__V1__PriceEntry **entry);
/* How low a's balance b may go: 0 prepaid, -credit_limit postpaid. */
int64_t tg_cfg_floor(const tg_account_t *a, const tg_balance_t *b);
/* Currency of an account's bucket ("" if unknown). Never NULL. */
const char *tg_cfg_currency(const tg_cfg_t *c, const tg_account_t *a, const char *bucket);
/* Gateway policy values with defaults applied. */
int64_t tg_cfg_max_request_bytes(const tg_cfg_t *c);
/* 1 when ip is inside one of policy.trusted_proxies. */
int tg_cfg_trusted_proxy(const tg_cfg_t *c, const tg_ip_t *ip);
/* How many trusted proxies the policy names (0: no address is one). */
size_t tg_cfg_trusted_proxies(const tg_cfg_t *c);

#endif
