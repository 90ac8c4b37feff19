/* json.h: tg_json_, the agent's one JSON reader: a depth-aware pull cursor
 * over JSON text. Every place on the hot path that reads client or provider
 * JSON (the request scanner, usage, stream chunks, Responses events) walks
 * the text with it, so a key counts only where the protocol puts it (the
 * top-level "usage" of an answer, choices[i].delta.content of a chunk),
 * never where the same name happens to appear deeper (a tool's JSON schema
 * with a property named "usage"). It validates as it goes (RFC 8259,
 * UTF-8, nesting at most TG_JSON_MAX_DEPTH) and builds no tree: the caller
 * steps into the containers it cares about and skips the rest in one pass.
 *
 * Use:
 *   tg_json_t j;
 *   tg_json_init(&j, text, len, err, errlen);
 *   if (tg_json_peek(&j) != TG_JSON_OBJECT || tg_json_enter(&j)) ...
 *   char name[32];
 *   while ((rc = tg_json_next(&j, name, sizeof name)) == 1) {
 *       if (strcmp(name, "usage") == 0) ...read or enter the value...
 *       else if ((rc = tg_json_skip(&j)) != 0) break;
 *   }
 *   rc < 0: malformed; rc == 0: the object ended, the cursor is past '}'.
 * After tg_json_next returns 1 the caller must consume that value (skip,
 * enter and iterate to its end, read a string or a number) before the next
 * call. Errors return TG_AGENT_EJSON and write "malformed JSON at byte N:
 * ..." into err (first error wins; err may be NULL). The cursor does not
 * own the text and cannot allocate (strings go into the caller's tg_buf_t).
 * Reentrant; a cursor belongs to one thread.
 */
#ifndef TG_AGENT_JSON_H
#define TG_AGENT_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "base/tg_base.h"

#define TG_JSON_MAX_DEPTH 256

/* What the value at the cursor is (tg_json_peek). */
enum tg_json_type {
    TG_JSON_END = 0, /* no value: end of the text */
    TG_JSON_OBJECT,
    TG_JSON_ARRAY,
    TG_JSON_STRING,
    TG_JSON_NUMBER,
    TG_JSON_TRUE,
    TG_JSON_FALSE,
    TG_JSON_NULL,
    TG_JSON_BAD /* a byte no JSON value starts with */
};

typedef struct tg_json {
    const char *j_p;    /* the text, not owned */
    size_t j_len;
    size_t j_pos;       /* the next byte */
    int j_depth;        /* containers entered and not yet left */
    char *j_err;        /* the caller's error buffer, may be NULL */
    size_t j_errlen;
    uint64_t j_arr[TG_JSON_MAX_DEPTH / 64];  /* bit d: container at depth d is an array */
    uint64_t j_more[TG_JSON_MAX_DEPTH / 64]; /* bit d: it has had a member */
} tg_json_t;

/* Points the cursor at p[0..n). err (errlen bytes) gets the first error. */
void tg_json_init(tg_json_t *j, const char *p, size_t n, char *err, size_t errlen);

/* Skips whitespace and says what value starts at the cursor. Can't fail. */
int tg_json_peek(tg_json_t *j);

/* Steps into the object or array at the cursor. 0 or TG_AGENT_EJSON (not a
 * container, or deeper than TG_JSON_MAX_DEPTH). */
int tg_json_enter(tg_json_t *j);

/* The next member of the innermost container entered: returns 1 with the
 * cursor at its value (for an object, its name decoded into name[0..
 * namelen), "" when it does not fit; name may be NULL for arrays), 0 when
 * the container ended (the cursor is past its closing bracket, one level
 * up), or TG_AGENT_EJSON. */
int tg_json_next(tg_json_t *j, char *name, size_t namelen);

/* In the object just entered (or being iterated), moves to the member
 * named `name`, skipping the others: 1 at its value, 0 when the object
 * ended without it (cursor past '}'), or TG_AGENT_EJSON. A name repeated
 * later in the object is not looked at. */
int tg_json_find(tg_json_t *j, const char *name);

/* Validates and steps over the value at the cursor. 0 or TG_AGENT_EJSON. */
int tg_json_skip(tg_json_t *j);

/* Decodes the string at the cursor (escapes resolved, UTF-8 checked; a
 * surrogate escape that is not half of a pair, valid in RFC 8259, decodes
 * to U+FFFD) and appends its bytes to out (NULL: validate only). 0, TG_AGENT_EJSON (also
 * when the value is not a string) or TG_AGENT_ETOOBIG (out's limit). */
int tg_json_string(tg_json_t *j, tg_buf_t *out);

/* The same into out[0..outlen), NUL-terminated; *trunc (may be NULL) is
 * set when it did not fit (out then holds a prefix). */
int tg_json_string_to(tg_json_t *j, char *out, size_t outlen, int *trunc);

/* Reads a count strictly: the value must be a JSON number written as a
 * non-negative integer (digits only: no sign, fraction or exponent) no
 * larger than max. Returns 0 and *v; TG_AGENT_ERANGE for any other number
 * (2500000000.0, 1e+30, -1, 0.5, past max: the cursor is past it), or
 * TG_AGENT_EJSON when the value is not a number. */
int tg_json_uint(tg_json_t *j, uint64_t max, uint64_t *v);

/* After the top-level value: 0 when only whitespace is left, else
 * TG_AGENT_EJSON. */
int tg_json_end(tg_json_t *j);

/* Called for each member of an object with the cursor at its value; must
 * consume the value (skip it, read it or walk it). Non-zero stops the walk
 * and is returned. */
typedef int (*tg_json_member_fn)(tg_json_t *j, const char *name, void *arg);

/* Walks the object at the cursor, calling fn for each member (names longer
 * than 63 bytes come as ""). Any other value is skipped. 0, fn's first
 * non-zero return, or TG_AGENT_EJSON. */
int tg_json_members(tg_json_t *j, tg_json_member_fn fn, void *arg);

/* Walks the array at the cursor: tg_json_members on each element that is
 * an object, other elements skipped; *count (may be NULL) gets the number
 * of elements, or -1 when the value is not an array (it is skipped). Same
 * returns as tg_json_members. */
int tg_json_objects(tg_json_t *j, tg_json_member_fn fn, void *arg, long *count);

/* Validates p[0..n) as exactly one JSON value. 0 or TG_AGENT_EJSON. */
int tg_json_valid(const char *p, size_t n, char *err, size_t errlen);

#endif
