/* tg_meter: exact BPE token counting for OpenAI's cl100k_base and o200k_base
 * encodings, and token estimates of chat requests.
 *
 * The token ids are exactly those of OpenAI's tiktoken for every input (the
 * tests compare against the npm `tiktoken` package, OpenAI's Rust core built
 * to WASM): the same pre-tokenization split as each encoding's regex (written
 * by hand here, no regex engine), the same byte-pair merges by rank, and the
 * same special tokens. Unlike tiktoken, the merge is O(n log n) in the length
 * of a piece, so one hostile 1 MB run of a single character counts in
 * milliseconds.
 *
 * Input bytes: UTF-8. Invalid UTF-8 is not an error: each maximal ill-formed
 * subsequence counts as U+FFFD (the WHATWG decoding that Node's TextDecoder
 * and Buffer.toString use), so the ids of any byte string are tiktoken's ids
 * of the JavaScript string that decoding yields.
 *
 * Thread safety: a tg_meter_t is immutable after tg_meter_create(); any
 * number of threads may encode with one at the same time. The rank tables
 * are embedded in the binary at build time (meter/README.md).
 *
 * Errors: functions return 0 or a negative TG_METER_E* code and write a
 * sentence into the caller's (err, errlen), first error wins (tg_base.h).
 */
#ifndef TG_METER_H
#define TG_METER_H

#include <stddef.h>
#include <stdint.h>

enum {
    TG_METER_OK = 0,
    TG_METER_ENOMEM = -1,    /* an allocation failed */
    TG_METER_EENCODING = -2, /* unknown encoding name */
    TG_METER_ESPECIAL = -3,  /* the text holds a special token and the caller rejects them */
    TG_METER_EDATA = -4,     /* the embedded rank data is corrupt (a build problem) */
    TG_METER_EJSON = -5,     /* a chat request is not valid JSON or not the expected shape */
    TG_METER_EMODEL = -6,    /* a model name the map does not know (no estimate wanted) */
    TG_METER_ETOOBIG = -7,   /* input larger than TG_METER_MAX_INPUT */
    TG_METER_ELAST = -8      /* sentinel: keep last */
};

/* Largest input one call accepts: 1 GiB. */
#define TG_METER_MAX_INPUT ((size_t)1 << 30)

/* Names a TG_METER_E* code (0 gives "ok"). Never NULL. */
const char *tg_meter_strerror(int code);

/* ---- encodings ---------------------------------------------------------- */

typedef enum tg_meter_encoding {
    TG_METER_CL100K_BASE = 0, /* gpt-4, gpt-3.5-turbo, text-embedding-3-* */
    TG_METER_O200K_BASE = 1,  /* gpt-4o, gpt-4.1, gpt-5, o1, o3, o4 */
    TG_METER_NENCODINGS = 2
} tg_meter_encoding_t;

/* Looks up an encoding by name ("cl100k_base" or "o200k_base").
 * Returns 0 and sets *out, or TG_METER_EENCODING with a message naming the
 * accepted names. */
int tg_meter_encoding_from_name(const char *name, tg_meter_encoding_t *out, char *err,
                                size_t errlen);
/* The encoding's name; "?" for an invalid value. Static storage. */
const char *tg_meter_encoding_name(tg_meter_encoding_t enc);

/* ---- the tokenizer ------------------------------------------------------ */

typedef struct tg_meter tg_meter_t;

/* Creates a tokenizer; each encoding is loaded from the embedded data on
 * first use (tens of milliseconds, 10-20 MB each; a failed load is reported
 * by the call that needed it and retried by the next).
 * Returns NULL on failure (TG_METER_ENOMEM, TG_METER_EDATA in err).
 * Free with tg_meter_destroy(). */
tg_meter_t *tg_meter_create(char *err, size_t errlen);
/* Frees everything. Accepts NULL. */
void tg_meter_destroy(tg_meter_t *m);

/* What to do with special tokens such as <|endoftext|> in the text. */
typedef enum tg_meter_special {
    TG_METER_SPECIAL_REJECT = 0, /* fail with TG_METER_ESPECIAL (tiktoken's encode() default) */
    TG_METER_SPECIAL_ALLOW = 1,  /* encode each as its special id (allowed_special="all") */
    TG_METER_SPECIAL_TEXT = 2    /* treat them as ordinary text (encode_ordinary) */
} tg_meter_special_t;

/* A growable array of token ids. Zero-initialize, pass to tg_meter_encode,
 * free with tg_meter_ids_free(). */
typedef struct tg_meter_ids {
    uint32_t *ids_v;  /* the ids, ids_n of them */
    size_t ids_n;     /* ids in use */
    size_t ids_cap;   /* ids allocated */
} tg_meter_ids_t;

/* Frees the array and zeroes it. Accepts NULL. */
void tg_meter_ids_free(tg_meter_ids_t *ids);

/* Appends the token ids of text[0..len) to *ids (which keeps what it held).
 * Returns 0, TG_METER_ENOMEM, TG_METER_ESPECIAL (the text holds a special
 * token and special is REJECT; *ids is then unchanged) or TG_METER_ETOOBIG. */
int tg_meter_encode(const tg_meter_t *m, tg_meter_encoding_t enc, const char *text, size_t len,
                    tg_meter_special_t special, tg_meter_ids_t *ids, char *err, size_t errlen);

/* Counts the tokens of text[0..len) without storing them; same ids as
 * tg_meter_encode. Returns 0 and sets *count, or an error as above. */
int tg_meter_count(const tg_meter_t *m, tg_meter_encoding_t enc, const char *text, size_t len,
                   tg_meter_special_t special, uint64_t *count, char *err, size_t errlen);

/* The bytes of token id (not NUL-terminated) and their length; NULL for an
 * id the encoding does not have. Valid as long as m. */
const char *tg_meter_token_bytes(const tg_meter_t *m, tg_meter_encoding_t enc, uint32_t id,
                                 size_t *len);

/* ---- models ------------------------------------------------------------- */

/* How a model's tokens can be counted. */
typedef enum tg_meter_model_kind {
    TG_METER_MODEL_EXACT = 0,    /* an OpenAI model: its encoding is public */
    TG_METER_MODEL_ESTIMATE = 1, /* no public tokenizer (claude-*, gemini-*, ...): counted with
                                    o200k_base and scaled; an estimate, never a billable count */
} tg_meter_model_kind_t;

typedef struct tg_meter_model {
    tg_meter_model_kind_t mm_kind;   /* exact or estimate */
    tg_meter_encoding_t mm_encoding; /* encoding used to count */
    uint32_t mm_scale_ppm;           /* estimate = ceil(count x scale / 1e6); 1e6 when exact */
    const char *mm_family;           /* matched family ("gpt-4o", "claude", ...), static */
} tg_meter_model_t;

/* Maps a model name to how its tokens are counted, by the longest matching
 * family prefix (gpt-4o, gpt-4.1, gpt-5, o1, o3, o4 -> o200k_base; gpt-4,
 * gpt-3.5 -> cl100k_base; claude-, gemini-, deepseek-, qwen, kimi/moonshot,
 * glm -> estimates; see meter/README.md for the table and the scale factors).
 * A name may carry a "provider/" prefix, which is ignored. Unknown names:
 * returns TG_METER_EMODEL when allow_estimate is 0, else an o200k_base
 * estimate with scale 1e6 and family "unknown". */
int tg_meter_model_lookup(const char *model, int allow_estimate, tg_meter_model_t *out, char *err,
                          size_t errlen);

/* ---- chat requests ------------------------------------------------------ */

/* Token count of an OpenAI chat request, as a pre-estimate of the prompt. */
typedef struct tg_meter_chat {
    uint64_t mc_prompt_tokens;  /* messages + overheads + tools (after any estimate scale) */
    uint64_t mc_message_tokens; /* of which: message contents, roles, names, overheads */
    uint64_t mc_tool_tokens;    /* of which: tool/function definitions */
    uint32_t mc_images;         /* image_url parts seen (not counted as tokens) */
    int mc_estimate;            /* 1 when the model has no public tokenizer: an estimate */
    tg_meter_encoding_t mc_encoding; /* encoding used */
} tg_meter_chat_t;

/* Counts the prompt tokens of a chat completions request body (JSON: model,
 * messages[], optional tools[] or functions[]), following OpenAI's cookbook
 * rules ("How to count tokens with tiktoken"): 3 tokens per message, the
 * tokens of every string field of the message (role, content, name, ...),
 * 1 more when a name is present, 3 to prime the reply; content given as an
 * array of parts counts its text parts; tool definitions are counted with the
 * cookbook's function-calling rules (meter/README.md). model_override, when
 * not NULL, replaces the body's "model". Special tokens in contents count as
 * text. Returns 0, TG_METER_EJSON (with the reason), TG_METER_ENOMEM. */
int tg_meter_chat_count(const tg_meter_t *m, const char *body, size_t len,
                        const char *model_override, tg_meter_chat_t *out, char *err,
                        size_t errlen);

#endif
