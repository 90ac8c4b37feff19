/* proto_int.h: what the tg_proto front (proto.c, stream.c, check.c) and the
 * adapters (openai.c, anthropic.c) share, and nothing a caller needs.
 *
 * One tg_proto_adapter_t per wire protocol, as store/ has one backend vtable
 * per store: the front dispatches on tg_proto_kind_t through
 * tg_proto__adapters[]. A third protocol is a new adapter file and one entry
 * there (README.md, "Adding a protocol"). */
#ifndef TG_PROTO_INT_H
#define TG_PROTO_INT_H

#include <jansson.h>

#include "base/tg_base.h"
#include "proto/tg_proto.h"

/* ---- grammar checkers (check.c) ----------------------------------------- */

/* One per output stream: the client's grammar, fed each event before it is
 * written. Anthropic: message_start, then blocks 0..n (start, deltas of the
 * block's kind, stop; one open at a time), message_delta, message_stop.
 * OpenAI: role first, tool-call indices 0..n each opened once with id, type
 * and name, later deltas arguments only, one finish_reason, the usage chunk
 * only when asked, [DONE] last. Responses: response.created first, output
 * items 0..n one open at a time (a message's content parts, its text deltas
 * and done events; a function_call's argument deltas and done), then
 * response.completed or response.incomplete with the whole response;
 * sequence_number increasing. */
typedef struct tg_proto_check {
    tg_proto_kind_t ck_kind;
    int ck_state;      /* protocol-specific phase */
    int ck_events;     /* events seen, for messages */
    int ck_open;       /* Anthropic: open block index, -1 none */
    int ck_open_type;  /* Anthropic: its tg_proto_block_type_t */
    int ck_next;       /* Anthropic: next block index; OpenAI: next tool-call index */
    int ck_tool_sent;  /* a tool block / tool call was sent */
    int ck_include_usage;
    int ck_pass;       /* Anthropic passthrough: the upstream's own events (check.c) */
    int64_t ck_seq;    /* Responses: the last sequence_number, -1 none */
    int ck_parts;      /* Responses: content parts of the open message item */
    int ck_part_open;  /* Responses: a content part is open */
    int ck_args_done;  /* Responses: the open call's arguments are done */
    char ck_id[128];   /* OpenAI: the chunk id every chunk repeats */
} tg_proto_check_t;

void tg_proto__check_init(tg_proto_check_t *c, tg_proto_kind_t kind, int include_usage);

/* Checks one event: Anthropic: (event name, data object); OpenAI: event NULL
 * and the chunk object, or event "[DONE]" and data NULL. An error event is always
 * accepted and ends the stream. Returns 0 or TG_PROTO_EGRAMMAR. */
int tg_proto__check(tg_proto_check_t *c, const char *event, json_t *data, char *err, size_t errlen);

/* 1 when the checked stream reached its end (message_stop, [DONE]). */
int tg_proto__check_complete(const tg_proto_check_t *c);

/* ---- SSE splitting (stream.c) ------------------------------------------- */

typedef struct tg_proto_sse {
    tg_buf_t se_line;  /* the partial line */
    tg_buf_t se_data;  /* the event's data lines, joined with \n */
    char se_event[64]; /* the event's name, "" when none */
    int se_has_data;
    int se_skip_lf;    /* the last byte was a CR: a following LF ends nothing */
    int se_keep_raw;   /* passthrough: the bytes of each event are kept in se_raw */
    tg_buf_t se_raw;   /* the bytes consumed since the last dispatched event */
} tg_proto_sse_t;

void tg_proto__sse_init(tg_proto_sse_t *p, size_t max_event);
/* 1 when no event is in progress (no event or data line since the last
 * dispatch, no partial line): what se_raw holds belongs to no event. */
int tg_proto__sse_idle(const tg_proto_sse_t *p);
void tg_proto__sse_free(tg_proto_sse_t *p);
/* Splits bytes into events; calls fn(arg, event, data, len) for each
 * (data NUL-terminated). With se_keep_raw, se_raw holds the event's bytes as
 * received (comments and blank lines before it included, its terminating
 * blank line too) while fn runs; the caller resets it. Stops at the first
 * non-zero return of fn and returns it; TG_PROTO_ETOOBIG past the maximum,
 * TG_PROTO_ENOMEM when se_raw cannot grow. */
int tg_proto__sse_feed(tg_proto_sse_t *p, const char *b, size_t n,
                       int (*fn)(void *arg, const char *event, const char *data, size_t len), void *arg,
                       char *err, size_t errlen);

/* ---- stream state ------------------------------------------------------- */

#define TG_PROTO_MAX_TOOLS 128 /* OpenAI tool-call indices a stream may use */

typedef struct tg_proto_oa_tool {
    char *ot_id;    /* tg_malloc */
    char *ot_name;  /* tg_malloc */
    tg_buf_t ot_args; /* held fragments while queued */
    int ot_state;   /* 0 unseen, 1 open (live), 2 queued, 3 closed */
} tg_proto_oa_tool_t;

/* Decoder state of an OpenAI upstream: blocks are synthesized from deltas. */
typedef struct tg_proto_oa_dec {
    int od_started;
    int od_open;      /* IR index of the open block, -1 none */
    int od_open_kind; /* tg_proto_block_type_t of the open block */
    int od_open_tool; /* its OpenAI tool index */
    int od_next;      /* next IR index */
    int od_finished;  /* finish_reason seen */
    int od_refusal;   /* a refusal was streamed */
    int od_ntools;    /* highest tool index seen + 1 */
    int od_cap;       /* entries in od_tools (grown on demand: a stream without
                         tool calls allocates none) */
    tg_proto_oa_tool_t *od_tools; /* tg_malloc, indexed by OpenAI tool index */
} tg_proto_oa_dec_t;

/* Decoder state of an Anthropic upstream: indices renumbered, unknown block
 * types (server tools) skipped. */
typedef struct tg_proto_an_dec {
    int ad_started;
    int ad_skip;      /* the open upstream block is skipped */
    int ad_open;      /* IR index of the open block, -1 none */
    int ad_next;
    int ad_ended;
    int ad_final_usage; /* message_delta's usage arrived: output is the provider's final count */
    int ad_up_open;     /* the upstream's own index of its open block (skipped or not), -1 none */
    int ad_delta_seen;  /* message_delta came (passthrough: it went out to the client) */
} tg_proto_an_dec_t;

/* Responses encoder state (responses.c): what response.completed repeats. */
typedef struct tg_proto_rs_enc {
    int64_t re_seq;      /* the next sequence_number */
    json_t *re_items;    /* output items done so far */
    tg_buf_t re_acc;     /* the open item's text or arguments */
    int re_skip;         /* no item is open (or the open block is not shown) */
    int re_tool;         /* the open item is a function_call */
    char *re_call_id;    /* tg_malloc */
    char *re_name;       /* tg_malloc */
    char re_id[160];     /* resp_... */
    char re_item[200];   /* the open item's id */
} tg_proto_rs_enc_t;

/* Encoder state (any output protocol). */
typedef struct tg_proto_enc {
    int en_started;
    int en_ended;
    int en_ntools;      /* tool blocks written */
    int en_tool_index;  /* OpenAI: the tool-call index of the open tool block */
    char en_id[128];
    char en_model[256];
    int64_t en_created;
    tg_proto_rs_enc_t *en_rs; /* Responses: tg_malloc, freed by pa_enc_free */
} tg_proto_enc_t;

struct tg_proto_stream {
    tg_proto_stream_opts_t st_opts;
    const struct tg_proto_adapter *st_from, *st_to;
    tg_proto_sse_t st_sse;
    union {
        tg_proto_oa_dec_t oa;
        tg_proto_an_dec_t an;
    } st_dec;
    tg_proto_enc_t st_enc;
    tg_proto_check_t st_check;
    tg_buf_t *st_out;        /* the current feed's output */
    char *st_err;            /* the current feed's error buffer */
    size_t st_errlen;
    int st_done;
    int st_pass;               /* inside a passthrough feed: encoder events are checked, not written */
    int st_pass_last;          /* passthrough: the upstream's own final event ended the stream */
    tg_proto_usage_t st_usage; /* normalized so far; us_raw -> st_raw */
    char *st_raw;              /* tg_malloc */
    tg_proto_stop_t st_stop;
    char *st_stop_seq;         /* tg_malloc */
};

/* Decoders hand every IR event to the encoder through this: it records usage
 * and stop, calls so_on_event, encodes and checks. Returns 0 or an error
 * (the stream is then over, the error event written when there is one). */
int tg_proto__emit(tg_proto_stream_t *s, const tg_proto_event_t *ev);

/* Encoders write one client event through this: it is checked first, then
 * appended; a violation writes the error event instead and returns
 * TG_PROTO_EGRAMMAR. Takes the reference of data; data NULL (no memory)
 * fails the stream. Anthropic: event is the name; OpenAI: NULL, or "[DONE]"
 * with data NULL. */
int tg_proto__write_event(tg_proto_stream_t *s, const char *event, json_t *data);

/* Ends the stream with the client's error event (no check). code is returned. */
int tg_proto__fail(tg_proto_stream_t *s, int code, tg_proto_errtype_t type, const char *message);

/* tg_proto__fail with the upstream's error from a TG_PROTO_EV_ERROR event
 * (type api, "upstream error" when it carried none): TG_PROTO_EUPSTREAM. */
int tg_proto__fail_upstream(tg_proto_stream_t *s, const tg_proto_event_t *ev);

/* Records normalized usage from the upstream (raw JSON text copied). */
int tg_proto__set_usage(tg_proto_stream_t *s, const tg_proto_usage_t *u);

/* ---- the adapter vtable ------------------------------------------------- */

typedef struct tg_proto_adapter {
    tg_proto_kind_t pa_kind;
    const char *pa_name;
    const char *pa_path;
    const char *pa_auth_prefix;  /* "Authorization: Bearer ", "x-api-key: " */
    const char *pa_extra_header; /* or NULL */
    int (*pa_parse_request)(tg_pool_t *pool, json_t *root, tg_proto_request_t *out, char *err, size_t errlen);
    json_t *(*pa_write_request)(const tg_proto_request_t *rq, char *err, size_t errlen, int *rc);
    /* vendor: whose usage names an OpenAI answer has (never NULL) */
    int (*pa_parse_response)(const tg_proto_vendor_t *vendor, tg_pool_t *pool, json_t *root,
                             tg_proto_response_t *out, char *err, size_t errlen);
    json_t *(*pa_write_response)(const tg_proto_response_t *rs, char *err, size_t errlen, int *rc);
    /* root may be NULL (a body that is not JSON); fills type/message/param/code */
    int (*pa_parse_error)(tg_pool_t *pool, int status, json_t *root, tg_proto_errinfo_t *out);
    json_t *(*pa_write_error)(const tg_proto_errinfo_t *e);
    int (*pa_errtype_status)(tg_proto_errtype_t t);
    /* stream decoding: init state, one upstream SSE event, upstream EOF */
    void (*pa_dec_init)(tg_proto_stream_t *s);
    void (*pa_dec_free)(tg_proto_stream_t *s);
    int (*pa_dec_event)(tg_proto_stream_t *s, const char *event, const char *data, size_t len);
    int (*pa_dec_eof)(tg_proto_stream_t *s);
    /* stream encoding: one IR event into client events via tg_proto__write_event */
    int (*pa_enc_event)(tg_proto_stream_t *s, const tg_proto_event_t *ev);
    /* appends the client's stream error event (unchecked) */
    int (*pa_enc_error)(tg_proto_stream_t *s, const tg_proto_errinfo_t *e, tg_buf_t *out);
    /* frees the encoder's own state (tg_proto_stream_destroy); may be NULL */
    void (*pa_enc_free)(tg_proto_stream_t *s);
} tg_proto_adapter_t;

extern const tg_proto_adapter_t tg_proto__openai;
extern const tg_proto_adapter_t tg_proto__anthropic;
extern const tg_proto_adapter_t tg_proto__responses;
extern const tg_proto_adapter_t *const tg_proto__adapters[TG_PROTO_NKINDS];

/* ---- shared helpers (proto.c) ------------------------------------------- */

/* Copies s into the pool (NULL stays NULL). NULL on no memory. */
const char *tg_proto__strdup(tg_pool_t *pool, const char *s);
/* v as compact JSON text in the pool; NULL on no memory. */
const char *tg_proto__dump(tg_pool_t *pool, json_t *v);
/* Array of n zeroed elements of size sz in the pool (n 0: a valid pointer). */
void *tg_proto__array(tg_pool_t *pool, size_t n, size_t sz);
/* Sets key to a new value, taking its reference; NULL value: no memory. */
int tg_proto__set(json_t *o, const char *key, json_t *v);
/* JSON text -> tree (object or array); NULL and *rc on failure. */
json_t *tg_proto__load(const char *text, const char *what, char *err, size_t errlen, int *rc);
/* Appends compact JSON of v. */
int tg_proto__append_json(tg_buf_t *out, json_t *v);

/* Appends prefix, v as compact JSON and the blank line that ends an SSE
 * event. Takes the reference of v; v NULL returns TG_PROTO_ENOMEM. */
int tg_proto__append_sse(tg_buf_t *out, const char *prefix, json_t *v);
/* Reads an integer count in [0, TG_PROTO_COUNT_MAX] at key of o (absent or
 * null: 0). Anything else (a fraction, a sign, a string, past the maximum)
 * is 0 and sets *bad when bad is not NULL: agent/usage.c's rule. */
int64_t tg_proto__count(json_t *o, const char *key, int *bad);

/* OpenAI's image URL into an IMAGE block: a data: URL becomes base64 with
 * its media type, any other URL stays a URL. 0 or TG_PROTO_ENOMEM. */
int tg_proto__image_url(tg_pool_t *pool, const char *url, tg_proto_block_t *bl);
/* temperature and top_p (OpenAI's and the Responses API's). 0 or EINVALID. */
int tg_proto__sampling(json_t *root, tg_proto_request_t *rq, char *err, size_t errlen);
/* tool_choice "auto" / "required" / "none". 0 or EINVALID. */
int tg_proto__tool_choice_word(const char *v, tg_proto_request_t *rq, char *err, size_t errlen);

/* A field path for error messages ("messages[2].content[0]"), cut to fit. */
#define TG_PROTO_PATHLEN 160
void tg_proto__path(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Error type names shared by both protocols' bodies. */
const char *tg_proto__anthropic_errname(tg_proto_errtype_t t);

#endif
