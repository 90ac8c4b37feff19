/* tg_proto: one internal representation (IR) of a chat exchange, and one
 * adapter per wire protocol (OpenAI chat completions, Anthropic Messages)
 * that reads and writes it: requests, answers, error bodies and streams.
 *
 * What it is for: an OpenAI client on an Anthropic channel, an Anthropic
 * client on an OpenAI channel. The gateway parses the client's body into the
 * IR with the client protocol's adapter and writes it in the channel's
 * protocol, then converts the answer (JSON or SSE) back. OpenAI on
 * both sides is the passthrough hot path of agent/ and never comes here: this
 * module builds jansson trees, because conversion needs a tree. Anthropic on
 * both sides comes here for its stream checks and usage
 * (so_passthrough: the bytes out are the upstream's).
 *
 * Memory: the IR is plain data. Every parse function takes a tg_pool_t and
 * allocates the IR and each of its strings from it, so the IR lives until the
 * pool is destroyed (the agent's per-request pool) and is never freed
 * piecemeal. Writers append to a caller's tg_buf_t (its b_max bounds them).
 * A stream converter (tg_proto_stream_t) is the one heap object: created by
 * tg_proto_stream_create, freed by tg_proto_stream_destroy.
 *
 * Strings in the IR are NUL-terminated UTF-8 (jansson validates it); a JSON
 * string holding \u0000 is refused (TG_PROTO_EJSON). JSON-valued fields (tool
 * arguments, tool schemas, raw usage) are kept as compact JSON text.
 *
 * Errors: functions return 0 or a negative TG_PROTO_E* code and write a
 * sentence into the caller's (err, errlen), first error wins (tg_base.h),
 * naming the field: "messages[2].content[0].type: unknown block type 'foo'".
 *
 * Thread safety: no global state; the adapters are constant tables. A pool,
 * buffer or stream belongs to one thread at a time.
 *
 * proto/README.md has the mapping tables and the stream grammars. */
#ifndef TG_PROTO_H
#define TG_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "base/tg_base.h"

/* ---- errors (append-only; ELAST is the sentinel) ------------------------ */

enum tg_proto_error {
    TG_PROTO_OK = 0,
    TG_PROTO_EJSON = -1000,        /* a body or event is not valid JSON */
    TG_PROTO_EINVALID = -1001,     /* valid JSON, but a field is missing or has the wrong type/value */
    TG_PROTO_EUNSUPPORTED = -1002, /* a shape the target protocol cannot carry (e.g. n > 1) */
    TG_PROTO_ENOMEM = -1003,       /* an allocation failed */
    TG_PROTO_ETOOBIG = -1004,      /* an output buffer or an SSE event passed its maximum */
    TG_PROTO_EGRAMMAR = -1005,     /* a converted stream would break the target grammar */
    TG_PROTO_EUPSTREAM = -1006,    /* the upstream stream sent an error or ended early */
    TG_PROTO_ELAST = -1007         /* sentinel, not an error */
};

/* Names a TG_PROTO_E* code (0 gives "success"). Never NULL. */
const char *tg_proto_strerror(int code);

/* ---- protocols ----------------------------------------------------------- */

typedef enum tg_proto_kind {
    TG_PROTO_OPENAI = 0,    /* POST /v1/chat/completions */
    TG_PROTO_ANTHROPIC = 1, /* POST /v1/messages */
    TG_PROTO_RESPONSES = 2, /* POST /v1/responses: a client protocol only (never an upstream) */
    TG_PROTO_NKINDS = 3
} tg_proto_kind_t;

/* "openai", "anthropic" or "responses". Never NULL. */
const char *tg_proto_name(tg_proto_kind_t kind);

/* The upstream path of a chat request in that protocol
 * ("/v1/chat/completions", "/v1/messages"). Static; never NULL. */
const char *tg_proto_path(tg_proto_kind_t kind);

/* Writes the header line that carries a channel's credential into
 * buf[0..len) ("Authorization: Bearer KEY", "x-api-key: KEY").
 * Returns 0, or TG_PROTO_ETOOBIG (buf then holds ""). */
int tg_proto_auth_header(tg_proto_kind_t kind, const char *credential, char *buf, size_t len);

/* A second header the protocol requires upstream, or NULL
 * ("anthropic-version: 2023-06-01" for Anthropic). Static. */
const char *tg_proto_extra_header(tg_proto_kind_t kind);

/* ---- vendors: one row per upstream provider type (vendor.c) ------------- */

/* Values are api/tollgate/v1/common.proto's ProviderType numbers. */
typedef enum tg_proto_vendor_id {
    TG_PROTO_VENDOR_OPENAI = 1,
    TG_PROTO_VENDOR_ANTHROPIC = 2,
    TG_PROTO_VENDOR_GEMINI = 3,
    TG_PROTO_VENDOR_OPENAI_COMPATIBLE = 4,
    TG_PROTO_VENDOR_DEEPSEEK = 5,
    TG_PROTO_VENDOR_QWEN = 6,
    TG_PROTO_VENDOR_KIMI = 7,
    TG_PROTO_VENDOR_GLM = 8,
    TG_PROTO_NVENDORS = 9
} tg_proto_vendor_id_t;

/* Where prompt_tokens_details.cached_tokens (OpenAI's name) is read. */
typedef enum tg_proto_details {
    TG_PROTO_DETAILS_NO = 0,   /* never */
    TG_PROTO_DETAILS_AFTER,    /* when none of the vendor's own names is there */
    TG_PROTO_DETAILS_FIRST     /* before its own names (OPENAI_COMPATIBLE: what agents before
                                  the vendor types read, kept for channels typed then) */
} tg_proto_details_t;

/* Where a vendor's chat usage object reports what. Every vendor's
 * prompt_tokens include its cache reads (taken out once, when normalizing). */
typedef struct tg_proto_vendor {
    const char *vd_name;             /* "deepseek": the provider type's lower-case name */
    tg_proto_kind_t vd_proto;        /* the wire protocol its channels speak */
    int vd_responses;                /* serves /v1/responses itself (else converted to chat) */
    const char *vd_cache_read[2];    /* its own top-level members with cache reads, in order;
                                        NULL-padded */
    const char *vd_cache_miss;       /* its own member with the uncached prompt (stands in for
                                        prompt_tokens with a cache read when that is absent), or NULL */
    tg_proto_details_t vd_details;   /* prompt_tokens_details.cached_tokens */
} tg_proto_vendor_t;

/* The row of a provider type, or NULL for 0 and unknown values. Static. */
const tg_proto_vendor_t *tg_proto_vendor(int provider);

/* As tg_proto_vendor, but OPENAI_COMPATIBLE's row for 0 and unknown values
 * (a provider type from a newer control plane, a reader with no channel):
 * chat completions, every cache-read name the gateway knows. Never NULL. */
const tg_proto_vendor_t *tg_proto_vendor_or_compatible(int provider);

/* ---- the IR: content ---------------------------------------------------- */

typedef enum tg_proto_block_type {
    TG_PROTO_BLOCK_TEXT = 0,
    TG_PROTO_BLOCK_IMAGE,             /* base64 (bl_media_type + bl_data) or by URL (bl_url) */
    TG_PROTO_BLOCK_TOOL_USE,          /* assistant's call: bl_id, bl_name, bl_args */
    TG_PROTO_BLOCK_TOOL_RESULT,       /* user's answer: bl_id, bl_parts, bl_is_error */
    TG_PROTO_BLOCK_THINKING,          /* bl_text + bl_signature, passed unchanged */
    TG_PROTO_BLOCK_REDACTED_THINKING, /* bl_data, opaque, passed unchanged */
    TG_PROTO_NBLOCKS
} tg_proto_block_type_t;

typedef struct tg_proto_block tg_proto_block_t;
struct tg_proto_block {
    tg_proto_block_type_t bl_type;
    const char *bl_text;       /* TEXT, THINKING: the text */
    const char *bl_signature;  /* THINKING: the signature, or NULL */
    const char *bl_data;       /* IMAGE base64 bytes; REDACTED_THINKING data */
    const char *bl_media_type; /* IMAGE base64: "image/png" ... */
    const char *bl_url;        /* IMAGE by URL (then bl_data is NULL) */
    const char *bl_id;         /* TOOL_USE: call id; TOOL_RESULT: the call it answers */
    const char *bl_name;       /* TOOL_USE: tool name */
    const char *bl_args;       /* TOOL_USE: arguments as JSON text ("{}" when none) */
    int bl_is_error;           /* TOOL_RESULT: the tool failed */
    tg_proto_block_t *bl_parts; /* TOOL_RESULT: its content (TEXT, IMAGE) */
    size_t bl_nparts;
};

typedef enum tg_proto_role {
    TG_PROTO_ROLE_USER = 0, /* tool results are blocks of user messages */
    TG_PROTO_ROLE_ASSISTANT = 1
} tg_proto_role_t;

typedef struct tg_proto_message {
    tg_proto_role_t ms_role;
    tg_proto_block_t *ms_blocks;
    size_t ms_nblocks;
} tg_proto_message_t;

typedef struct tg_proto_tool {
    const char *tl_name;
    const char *tl_description; /* or NULL */
    const char *tl_schema;      /* JSON Schema of the input, JSON text */
} tg_proto_tool_t;

typedef enum tg_proto_tool_choice {
    TG_PROTO_TOOLS_UNSET = 0, /* the request did not say (each API's default: auto) */
    TG_PROTO_TOOLS_AUTO,      /* auto <-> auto */
    TG_PROTO_TOOLS_ANY,       /* any <-> required */
    TG_PROTO_TOOLS_TOOL,      /* tool {name} <-> function {name} */
    TG_PROTO_TOOLS_NONE       /* none <-> none */
} tg_proto_tool_choice_t;

/* ---- the IR: request ---------------------------------------------------- */

typedef struct tg_proto_request {
    const char *rq_model;
    const char **rq_system; /* every system (and OpenAI developer) prompt, in order */
    size_t rq_nsystem;
    tg_proto_message_t *rq_msgs;
    size_t rq_nmsgs;
    tg_proto_tool_t *rq_tools;
    size_t rq_ntools;
    tg_proto_tool_choice_t rq_tool_choice;
    const char *rq_tool_name;   /* TG_PROTO_TOOLS_TOOL: the tool */
    int rq_parallel_tools;      /* -1 unset, 0 one call at most, 1 parallel allowed */
    const char **rq_stop;       /* stop sequences */
    size_t rq_nstop;
    int rq_has_temperature;
    double rq_temperature;
    int rq_has_top_p;
    double rq_top_p;
    int64_t rq_max_tokens;      /* 0: unset (Anthropic requires it: set it before writing) */
    int64_t rq_thinking_budget; /* Anthropic thinking.budget_tokens; 0: off */
    int rq_stream;
    int rq_include_usage;       /* OpenAI client asked stream_options.include_usage */
    const char *rq_user;        /* OpenAI user <-> Anthropic metadata.user_id, or NULL */
} tg_proto_request_t;

/* ---- the IR: response --------------------------------------------------- */

typedef enum tg_proto_stop {
    TG_PROTO_STOP_NONE = 0,      /* not known (yet) */
    TG_PROTO_STOP_END_TURN,      /* end_turn <-> stop */
    TG_PROTO_STOP_MAX_TOKENS,    /* max_tokens <-> length */
    TG_PROTO_STOP_STOP_SEQUENCE, /* stop_sequence -> stop */
    TG_PROTO_STOP_TOOL_USE,      /* tool_use <-> tool_calls */
    TG_PROTO_STOP_REFUSAL,       /* refusal <-> content_filter */
    TG_PROTO_STOP_PAUSE_TURN     /* pause_turn -> stop */
} tg_proto_stop_t;

/* The largest count believed in a provider's usage (2^53, agent/usage.c's
 * TG_USAGE_MAX): a count past it, or a sum of counts past it, is not one. */
#define TG_PROTO_COUNT_MAX ((int64_t)1 << 53)

/* Usage normalized once: us_input EXCLUDES cache reads and writes, so the sum
 * us_input + us_cache_read + us_cache_write is the whole prompt and no cache
 * token is billed twice. us_output includes us_reasoning (a breakdown). */
typedef struct tg_proto_usage {
    int us_present;         /* the provider reported usage */
    int64_t us_input;       /* prompt tokens, cache reads and writes excluded */
    int64_t us_cache_read;  /* prompt tokens read from the provider's cache */
    int64_t us_cache_write; /* prompt tokens written to it (Anthropic) */
    int64_t us_output;      /* produced tokens, reasoning included */
    int64_t us_reasoning;   /* of which reasoning */
    int us_running;         /* us_output is a running count, not the final one: an Anthropic
                               stream before message_delta's usage (message_start says 1) */
    int us_invalid;         /* a count was not a count (a fraction, a sign, a string, past
                               TG_PROTO_COUNT_MAX): none of it is believed, count locally */
    const char *us_raw;     /* the provider's usage object, JSON text, or NULL */
} tg_proto_usage_t;

typedef struct tg_proto_response {
    const char *rs_id;
    const char *rs_model;
    tg_proto_block_t *rs_blocks; /* TEXT, THINKING, REDACTED_THINKING, TOOL_USE */
    size_t rs_nblocks;
    tg_proto_stop_t rs_stop;
    const char *rs_stop_sequence; /* which one matched (Anthropic), or NULL */
    tg_proto_usage_t rs_usage;
} tg_proto_response_t;

/* ---- the IR: errors ----------------------------------------------------- */

typedef enum tg_proto_errtype {
    TG_PROTO_ERR_INVALID_REQUEST = 0, /* 400 */
    TG_PROTO_ERR_AUTHENTICATION,      /* 401 */
    TG_PROTO_ERR_PERMISSION,          /* 403 */
    TG_PROTO_ERR_NOT_FOUND,           /* 404 */
    TG_PROTO_ERR_REQUEST_TOO_LARGE,   /* 413 */
    TG_PROTO_ERR_RATE_LIMIT,          /* 429 */
    TG_PROTO_ERR_API,                 /* 500 */
    TG_PROTO_ERR_OVERLOADED,          /* 529 (Anthropic), 503 (OpenAI) */
    TG_PROTO_ERR_BILLING,             /* 402 */
    TG_PROTO_NERRTYPES
} tg_proto_errtype_t;

typedef struct tg_proto_errinfo {
    tg_proto_errtype_t pe_type;
    const char *pe_message; /* never NULL in a parsed error */
    const char *pe_param;   /* OpenAI param, or NULL */
    const char *pe_code;    /* OpenAI code ("model_not_found"), or NULL */
} tg_proto_errinfo_t;

/* The error type an HTTP status stands for (anything else 4xx: invalid
 * request; 503 and 529: overloaded; other 5xx: api error). Can't fail. */
tg_proto_errtype_t tg_proto_errtype_from_status(int status);

/* The HTTP status a client of `kind` gets for an error type. Can't fail. */
int tg_proto_errtype_status(tg_proto_kind_t kind, tg_proto_errtype_t type);

/* ---- conversion: one call per body --------------------------------------- */

/* Parses a client's (or for tests, any) request body in `kind` into *out.
 * Validates as the real API does (Anthropic: model, messages and max_tokens
 * required; block types known). Ownership: *out and all it points to come
 * from pool, valid until the pool is destroyed. Returns 0, TG_PROTO_EJSON,
 * TG_PROTO_EINVALID, TG_PROTO_EUNSUPPORTED or TG_PROTO_ENOMEM. */
int tg_proto_parse_request(tg_proto_kind_t kind, tg_pool_t *pool, const char *body, size_t len,
                           tg_proto_request_t *out, char *err, size_t errlen);

/* Appends the request in `kind` to out (compact JSON). A stream request asks
 * OpenAI upstreams for stream_options.include_usage always. Returns 0,
 * TG_PROTO_EINVALID (Anthropic without rq_max_tokens; tool arguments that
 * are not JSON), TG_PROTO_ENOMEM or TG_PROTO_ETOOBIG; out keeps its length
 * on error. */
int tg_proto_write_request(tg_proto_kind_t kind, const tg_proto_request_t *rq, tg_buf_t *out, char *err,
                           size_t errlen);

/* Parses an upstream's 2xx answer in `kind`. Usage is normalized (see
 * tg_proto_usage_t) with the raw object kept. Ownership as
 * tg_proto_parse_request. Errors: as tg_proto_parse_request. */
int tg_proto_parse_response(tg_proto_kind_t kind, tg_pool_t *pool, const char *body, size_t len,
                            tg_proto_response_t *out, char *err, size_t errlen);

/* As tg_proto_parse_response, with an OpenAI-protocol answer's usage read
 * under vendor's names (NULL: OPENAI_COMPATIBLE's). */
int tg_proto_parse_response_vendor(tg_proto_kind_t kind, const tg_proto_vendor_t *vendor, tg_pool_t *pool,
                                 const char *body, size_t len, tg_proto_response_t *out, char *err,
                                 size_t errlen);

/* Appends the answer in `kind`. The stop reason follows the blocks: tool use
 * (tool_calls) exactly when a TOOL_USE block is present. Returns 0,
 * TG_PROTO_EINVALID, TG_PROTO_ENOMEM or TG_PROTO_ETOOBIG. */
int tg_proto_write_response(tg_proto_kind_t kind, const tg_proto_response_t *rs, tg_buf_t *out, char *err,
                            size_t errlen);

/* Reads an upstream's error body (any bytes: a non-JSON body keeps its text
 * as the message, cut to 1 KiB as valid UTF-8) with its HTTP status into
 * *out. Ownership as tg_proto_parse_request. Returns 0 or TG_PROTO_ENOMEM. */
int tg_proto_parse_error(tg_proto_kind_t kind, tg_pool_t *pool, int status, const char *body, size_t len,
                         tg_proto_errinfo_t *out);

/* Appends the error body in `kind`'s shape; the status to answer with is
 * tg_proto_errtype_status(kind, e->pe_type). Returns 0, TG_PROTO_ENOMEM or
 * TG_PROTO_ETOOBIG. */
int tg_proto_write_error(tg_proto_kind_t kind, const tg_proto_errinfo_t *e, tg_buf_t *out);

/* Appends the text a local tokenizer should count for a request
 * (/v1/messages/count_tokens answered with meter/): the system prompts, then
 * each block's text, thinking, tool name and arguments, tool result text,
 * then each tool's name, description and schema JSON, separated by "\n".
 * Images are not text and add nothing. Returns 0, TG_PROTO_ENOMEM or
 * TG_PROTO_ETOOBIG. */
int tg_proto_count_text(const tg_proto_request_t *rq, tg_buf_t *out);

/* ---- conversion: streams ------------------------------------------------ */

/* IR stream events. A converter's decoder turns upstream SSE events into
 * these, with blocks numbered 0..n and one open at a time; the encoder
 * writes them in the client's protocol. */
typedef enum tg_proto_event_type {
    TG_PROTO_EV_START = 0,   /* ev_id, ev_name (model), ev_usage (NULL: not known yet) */
    TG_PROTO_EV_BLOCK_START, /* ev_index, ev_block; tool use: ev_id, ev_name; redacted: ev_text */
    TG_PROTO_EV_DELTA,       /* ev_index, ev_delta, ev_text[0..ev_len) */
    TG_PROTO_EV_BLOCK_STOP,  /* ev_index */
    TG_PROTO_EV_END,         /* ev_stop, ev_stop_seq, ev_usage (cumulative) */
    TG_PROTO_EV_ERROR        /* ev_error: the upstream's error event */
} tg_proto_event_type_t;

typedef enum tg_proto_delta {
    TG_PROTO_DELTA_TEXT = 0,  /* text_delta, delta.content */
    TG_PROTO_DELTA_THINKING,  /* thinking_delta, delta.reasoning_content */
    TG_PROTO_DELTA_SIGNATURE, /* signature_delta */
    TG_PROTO_DELTA_JSON       /* input_json_delta, tool_calls[].function.arguments */
} tg_proto_delta_t;

typedef struct tg_proto_event {
    tg_proto_event_type_t ev_type;
    int ev_index;
    tg_proto_block_type_t ev_block;
    tg_proto_delta_t ev_delta;
    const char *ev_text;
    size_t ev_len;
    const char *ev_id;
    const char *ev_name;
    tg_proto_stop_t ev_stop;
    const char *ev_stop_seq;
    const tg_proto_usage_t *ev_usage;
    const tg_proto_errinfo_t *ev_error;
} tg_proto_event_t;

typedef struct tg_proto_stream_opts {
    tg_proto_kind_t so_from;      /* the upstream's protocol */
    tg_proto_kind_t so_to;        /* the client's protocol */
    int64_t so_prompt_tokens;     /* locally counted prompt: Anthropic message_start's
                                     input_tokens when the upstream (OpenAI) reports usage
                                     only at the end */
    int so_include_usage;         /* OpenAI client asked stream_options.include_usage */
    const char *so_model;         /* the model name the client sees (NULL: the upstream's) */
    size_t so_max_event;          /* largest SSE event accepted (0: 8 MiB) */
    /* Called with every IR event before it is written (the agent counts the
     * produced text for its reservation here). May be NULL. */
    void (*so_on_event)(void *arg, const tg_proto_event_t *ev);
    void *so_arg;
    /* so_from == so_to only: every upstream event is checked itself
     * against the client grammar (check.c's passthrough mode) and decoded
     * as in a conversion (usage, stop), and the client gets its bytes
     * unchanged (comments, unknown
     * events and members, spacing and line ends included). A violation
     * ends the stream with the client's error event in place of the
     * offending event; an upstream error event is passed as it is;
     * tg_proto_stream_end writes its closing events itself. */
    int so_passthrough;
    /* An OpenAI upstream's usage is read under this vendor's names (NULL:
     * OPENAI_COMPATIBLE's). */
    const tg_proto_vendor_t *so_vendor;
} tg_proto_stream_opts_t;

typedef struct tg_proto_stream tg_proto_stream_t;

/* Creates a stream converter from so_from to so_to (they may be equal: the
 * stream is then re-encoded and checked, or with so_passthrough checked and
 * passed through byte for byte). Ownership: *out is
 * the caller's, freed with tg_proto_stream_destroy. Returns 0,
 * TG_PROTO_EINVALID or TG_PROTO_ENOMEM. */
int tg_proto_stream_create(const tg_proto_stream_opts_t *opts, tg_proto_stream_t **out, char *err,
                           size_t errlen);

/* Feeds upstream bytes as they arrive, cut anywhere. Appends to out every
 * client byte they complete (whole SSE events only; a partial upstream event
 * waits for its end, nothing else is held, except that OpenAI tool calls
 * starting while another is open are held until it closes: see README).
 * out holds bytes to send even when the call fails: on a grammar violation,
 * an upstream error event or a malformed event the client's error event is
 * appended, the stream is over, and the call returns TG_PROTO_EGRAMMAR,
 * TG_PROTO_EUPSTREAM, TG_PROTO_EJSON, TG_PROTO_ETOOBIG or
 * TG_PROTO_EUNSUPPORTED (an OpenAI upstream's tool-call index past the
 * converter's 128). TG_PROTO_ENOMEM
 * (or out's own ETOOBIG) leave the stream over without an error event.
 * After the stream is over, feeding is a no-op returning 0. */
int tg_proto_stream_feed(tg_proto_stream_t *s, const char *bytes, size_t n, tg_buf_t *out, char *err,
                         size_t errlen);

/* Upstream EOF. A stream that reached its end appends nothing; an OpenAI
 * upstream that sent finish_reason but no [DONE] is closed normally; one cut
 * before its end gets the client's error event and TG_PROTO_EUPSTREAM. */
int tg_proto_stream_finish(tg_proto_stream_t *s, tg_buf_t *out, char *err, size_t errlen);

/* Ends the stream now, cleanly, with `stop` (the agent's reservation stop:
 * TG_PROTO_STOP_MAX_TOKENS): the open block is closed and the end written
 * with the usage known so far (and usage_override when not NULL). Returns 0,
 * or as tg_proto_stream_feed. A stream already over: no-op. */
int tg_proto_stream_end(tg_proto_stream_t *s, tg_proto_stop_t stop, const tg_proto_usage_t *usage_override,
                        tg_buf_t *out, char *err, size_t errlen);

/* 1 once the stream is over (ended, failed or errored). */
int tg_proto_stream_done(const tg_proto_stream_t *s);

/* The usage and stop reason seen so far, normalized; *usage's us_raw is the
 * upstream's last usage object, valid until the stream is destroyed.
 * us_present 0 means the upstream reported none: count locally. */
void tg_proto_stream_result(const tg_proto_stream_t *s, tg_proto_usage_t *usage, tg_proto_stop_t *stop);

/* Frees the converter. Accepts NULL. */
void tg_proto_stream_destroy(tg_proto_stream_t *s);

/* Checks a whole client stream (SSE text in `kind`) against the grammar the
 * converters enforce; include_usage: an OpenAI usage chunk is expected.
 * Returns 0 or TG_PROTO_EGRAMMAR / TG_PROTO_EJSON with the first violation
 * in err ("event 3 (content_block_start): index 2 while block 1 is open").
 * For tests and fixtures. */
int tg_proto_stream_check(tg_proto_kind_t kind, const char *sse, size_t len, int include_usage, char *err,
                          size_t errlen);

#endif
