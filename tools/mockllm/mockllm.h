/* tg_mock: the pure half of mockllm, the upstream emulator.
 *
 * mockllm (tools/mockllm/mockllm.c) is an HTTP/1.1 server that behaves like
 * the OpenAI and Anthropic APIs, failures included, so that every gateway
 * test and benchmark runs offline. This header is the manual of the parts
 * that do not touch sockets, so they can be unit tested:
 *
 *  - tg_mock_scan(): one validating pass (yajl, callbacks, no tree) over a
 *    request body that pulls out the few fields the emulator acts on.
 *  - tg_mock_scn_parse(): the scenario language of the `x-mock-scenario`
 *    header and the `--scenario` flag.
 *  - tg_mock_plan(): the token formula, which turns a scanned request and a
 *    scenario into exact usage numbers (documented in README.md).
 *  - tg_mock_write_*(): response bodies, error bodies and SSE events for each
 *    protocol, appended to a libevent evbuffer.
 *
 * Thread safety: every function here is reentrant; the structs belong to the
 * caller.
 */
#ifndef TG_MOCK_H
#define TG_MOCK_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

/* ---- errors ------------------------------------------------------------- */

enum {
    TG_MOCK_EJSON = -1,     /* the request body is not valid JSON */
    TG_MOCK_ESCENARIO = -2, /* the scenario text has an unknown or bad item */
    TG_MOCK_ENOMEM = -3,    /* an allocation failed */
    TG_MOCK_EHTTP = -4,     /* the bytes received are not a valid HTTP request */
    TG_MOCK_ETOOBIG = -5,   /* headers or body over the configured limit */
    TG_MOCK_ESYS = -6,      /* a system call failed (socket, bind, thread) */
    TG_MOCK_EUSAGE = -7,    /* bad command line */
    TG_MOCK_ELAST = -8      /* sentinel, not an error */
};

/* Names an error code of this module. Never NULL. */
const char *tg_mock_strerror(int code);

/* ---- request scan ------------------------------------------------------- */

#define TG_MOCK_MODEL_MAX 128
#define TG_MOCK_TOOL_MAX 64
#define TG_MOCK_TOOLS_JSON_MAX 8192

/* What the emulator needs from a request body. */
typedef struct tg_mock_req {
    char rq_model[TG_MOCK_MODEL_MAX]; /* "model", decoded, truncated; "" if absent */
    int rq_has_model;                 /* 1 when "model" is a string */
    int rq_stream;                    /* "stream": true */
    int rq_include_usage;             /* "stream_options": {"include_usage": true} */
    long rq_max_tokens;               /* max_tokens / max_completion_tokens /
                                         max_output_tokens; -1 if absent */
    int rq_n;                         /* "n" (choices or images); 1 if absent */
    int rq_tools;                     /* elements in "tools" */
    char rq_tool[TG_MOCK_TOOL_MAX];   /* name of the first tool ("" if none) */
    int rq_tool_choice_none;          /* "tool_choice": "none" */
    int rq_inputs;                    /* embeddings: strings (or token arrays) in "input" */
    int rq_dimensions;                /* "dimensions"; 0 if absent */
    int rq_base64;                    /* encoding_format "base64" or response_format "b64_json" */
    long rq_prompt_bytes;             /* decoded bytes of string values under the
                                         prompt keys (see tg_mock_scan) */
    char rq_tools_json[TG_MOCK_TOOLS_JSON_MAX]; /* the top-level "tools" value verbatim,
                                                   echoed by Responses answers as the real
                                                   API does; "" when absent or larger */
} tg_mock_req_t;

/* Scans a JSON request body in one pass and fills *rq. The prompt keys
 * whose string values (not object keys) count toward rq_prompt_bytes are the
 * top-level "messages", "input", "prompt", "system", "instructions" and
 * "tools". Returns 0, or TG_MOCK_EJSON (with yajl's message in err) when the
 * body is not one valid JSON object, or TG_MOCK_ENOMEM. */
int tg_mock_scan(const char *body, size_t len, tg_mock_req_t *rq, char *err, size_t errlen);

/* ---- scenarios ---------------------------------------------------------- */

#define TG_MOCK_KEY_MAX 64

/* A scripted behaviour. Items are "name=value" or a bare flag, separated by
 * ';' or ','. -1 means "not set" for the numeric fields marked so. */
typedef struct tg_mock_scn {
    int sc_latency_ms;     /* latency=MS: wait before the response head */
    int sc_ttft_ms;        /* ttft=MS: wait before the first token */
    int sc_itl_ms;         /* itl=MS: wait between tokens */
    int sc_tokens;         /* tokens=N output tokens; -1 = default (16) */
    int sc_prompt;         /* prompt=N prompt tokens; -1 = formula */
    int sc_cached;         /* cached=N prompt tokens read from cache */
    int sc_cache_write;    /* cache_write=N prompt tokens written to cache */
    int sc_reasoning;      /* reasoning=N reasoning tokens */
    int sc_status;         /* status=CODE: fail with this HTTP status; 0 = succeed */
    int sc_retry_after_ms; /* retry-after=S or retry-after-ms=MS with a 429/503; -1 = none */
    int sc_fail_first;     /* fail-first=K: only the first K requests of the key
                              fail (with sc_status, default 500) */
    int sc_hang;           /* hang: read the request, never answer */
    int sc_disconnect;     /* disconnect=K: close the connection after K tokens; -1 = never */
    int sc_error_after;    /* error-after=K: a stream sends the provider's error event after
                              K tokens and ends; -1 = never */
    int sc_malformed;      /* malformed: a 200 whose JSON (or SSE data) is broken */
    int sc_no_usage;       /* no-usage: leave usage out of the answer */
    int sc_zero_usage;     /* zero-usage: report every usage count as 0 (text unchanged) */
    int sc_running_usage;  /* running-usage: every chat stream chunk carries the running
                              usage totals (as some OpenAI-compatible providers do) */
    int sc_usage_on_finish; /* usage-on-finish: a chat stream's usage rides on the chunk with
                               finish_reason, with no separate "choices": [] chunk */
    int sc_no_tool;        /* no-tool: answer with text even when tools are given */
    int sc_close;          /* close: answer with Connection: close and close */
    int sc_nested_usage;   /* nested-usage: a chat answer carries a second, nested "usage"
                              object (1 token each) before the top-level one */
    int sc_ignore_stream;  /* ignore-stream: answer stream: true with the JSON answer */
    int sc_ignore_max;     /* ignore-max-tokens: produce tokens=N whatever the request's cap */
    int sc_lone_surrogate; /* lone-surrogate: the answer's text ends in the escape \ud83d
                              (valid JSON, half of a pair), in JSON answers and the
                              Responses stream's closing events */
    int sc_malformed_final;/* malformed-final: a Responses stream's final event
                              (response.completed / .incomplete) has broken data */
    char sc_report_output[32]; /* report-output=TEXT: the output count in usage is written
                                  as TEXT verbatim (2500000000.0, 1e+30, 5000); "" = the plan's */
    char sc_location[128]; /* location=URL: a Location header on a scripted status
                              (status=307;location=...: a redirect); "" = none */
    char sc_key[TG_MOCK_KEY_MAX]; /* key=NAME: groups requests for fail-first and
                                     the recording; "" = the default group */
    int sc_usage_shape;    /* usage-shape=NAME: chat usage in a vendor's names (TG_MOCK_SHAPE_*) */
} tg_mock_scn_t;

/* Chat usage shapes (usage-shape=): where each vendor reports cache reads. */
enum {
    TG_MOCK_SHAPE_OPENAI = 0, /* prompt_tokens_details.cached_tokens (also Qwen, GLM, Gemini) */
    TG_MOCK_SHAPE_DEEPSEEK,   /* prompt_cache_hit_tokens, prompt_cache_miss_tokens */
    TG_MOCK_SHAPE_KIMI,       /* top-level cached_tokens */
    TG_MOCK_SHAPE_QWEN,
    TG_MOCK_SHAPE_GLM,
    TG_MOCK_SHAPE_GEMINI
};

/* Sets every field of *sc to "not scripted": succeed at once. Can't fail. */
void tg_mock_scn_init(tg_mock_scn_t *sc);

/* Applies the items in text[0..len) on top of *sc (so a header overrides
 * the listener's defaults item by item). Returns 0, or TG_MOCK_ESCENARIO
 * with the offending item in err; *sc may then be partly updated. */
int tg_mock_scn_parse(tg_mock_scn_t *sc, const char *text, size_t len, char *err, size_t errlen);

/* ---- the token formula -------------------------------------------------- */

#define TG_MOCK_DEFAULT_TOKENS 16

/* Usage and shape of one answer, derived from a request and a scenario. */
typedef struct tg_mock_plan {
    long pl_prompt;      /* total prompt tokens (cache reads and writes included) */
    long pl_cached;      /* of which read from cache */
    long pl_cache_write; /* of which written to cache */
    long pl_output;      /* visible output tokens per choice */
    long pl_reasoning;   /* reasoning tokens per choice (not visible) */
    int pl_truncated;    /* 1 when max_tokens cut the answer */
    int pl_n;            /* choices */
    int pl_tool;         /* 1: answer with a call to the first tool */
} tg_mock_plan_t;

/* The formula (README.md, "Token formula"):
 *   prompt  = scenario prompt= if set, else max(1, ceil(rq_prompt_bytes / 4))
 *   cached  = min(cached=, prompt); cache_write = min(cache_write=, prompt - cached)
 *   output  = tokens= if set, else 16; then min(output, max_tokens) when
 *             max_tokens is given (truncated when it cut)
 *   reasoning = reasoning=; tool = tools given, tool_choice not "none",
 *             scenario not no-tool.
 * Can't fail. */
void tg_mock_plan(const tg_mock_req_t *rq, const tg_mock_scn_t *sc, tg_mock_plan_t *pl);

/* ---- answers ------------------------------------------------------------ */

typedef enum tg_mock_proto {
    TG_MOCK_CHAT = 0,   /* POST /v1/chat/completions */
    TG_MOCK_MESSAGES,   /* POST /v1/messages (Anthropic) */
    TG_MOCK_RESPONSES,  /* POST /v1/responses */
    TG_MOCK_EMBEDDINGS, /* POST /v1/embeddings */
    TG_MOCK_IMAGES,     /* POST /v1/images/generations */
    TG_MOCK_COUNT,      /* POST /v1/messages/count_tokens */
    TG_MOCK_MODELS      /* GET /v1/models */
} tg_mock_proto_t;

/* Everything a response writer needs. The strings are borrowed. */
typedef struct tg_mock_gen {
    tg_mock_proto_t gn_proto;
    const char *gn_id;    /* response id without prefix, e.g. "0001a2" */
    const char *gn_model; /* echoed model (JSON-escaped by the writers) */
    const tg_mock_req_t *gn_req;
    const tg_mock_scn_t *gn_scn;
    tg_mock_plan_t gn_plan;
    long gn_created; /* unix seconds */
    int gn_anthropic; /* TG_MOCK_MODELS: answer in Anthropic's list shape */
} tg_mock_gen_t;

/* The visible text of output token i: "Hello", " from", " the", ... A full
 * answer is the concatenation of tokens 0..output-1. Can't fail. */
const char *tg_mock_token(long i);

/* Appends s[0..len) as a JSON string literal (quotes included). Bytes >= 0x80
 * pass through; controls, '"' and '\\' are escaped. Returns 0 or -1 (no
 * memory). */
int tg_mock_json_str(struct evbuffer *out, const char *s, size_t len);

/* Appends the full non-streaming JSON answer of g (any proto). The
 * scenario's malformed flag cuts the JSON short; no-usage drops the usage
 * object. Returns 0 or -1 (no memory). */
int tg_mock_write_json(struct evbuffer *out, const tg_mock_gen_t *g);

/* Streams are a sequence of steps: step 0 is the preamble (for example
 * Anthropic's message_start and content_block_start), steps 1..S-2 the
 * token events and step S-1 the epilogue (usage, [DONE] / message_stop).
 * Returns S for g (chat, messages or responses). Can't fail. */
long tg_mock_stream_steps(const tg_mock_gen_t *g);

/* Appends the SSE events of step `step` (0 <= step < tg_mock_stream_steps).
 * Returns 0 or -1 (no memory). */
int tg_mock_write_step(struct evbuffer *out, const tg_mock_gen_t *g, long step);

/* Appends the error event a provider sends inside a stream that fails
 * after it started: OpenAI chat `data: {"error":{...server_error}}`,
 * Responses `event: error` with code server_error, Anthropic `event: error`
 * with overloaded_error. `step` is the stream step it replaces (for the
 * Responses sequence_number). Returns 0 or -1 (no memory). */
int tg_mock_write_stream_error(struct evbuffer *out, const tg_mock_gen_t *g, long step);

/* Appends the provider's error JSON for an HTTP status: OpenAI's
 * {"error":{"message","type","param","code"}} or, for Anthropic protocols,
 * {"type":"error","error":{"type","message"},"request_id"}. msg may be NULL
 * (a stock message for the status is used). Returns 0 or -1. */
int tg_mock_write_error(struct evbuffer *out, int anthropic, int status, const char *msg,
                        const char *request_id);

/* Reason phrase of an HTTP status ("Too Many Requests"). Never NULL. */
const char *tg_mock_reason(int status);

#endif
