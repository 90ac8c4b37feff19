/* json_fuzz.c: libFuzzer target for the agent's JSON cursor (json.c).
 * Arbitrary bytes go through tg_json_valid and through a full walk with
 * the pull API (enter/next, string decoding, strict integers, find,
 * members); both must agree on whether the text is one JSON value. Each
 * decoded string must be valid UTF-8 (lone surrogate escapes become
 * U+FFFD). Differential check: whatever jansson accepts (and is nested at
 * most 256 deep, no NUL byte) the cursor must accept too. See docs/FUZZING.md.
 */
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "agent/agent_int.h"
#include "agent/json.h"
#include "base/tg_utf8.h"
#include "tests/fuzz/fuzz.h"

static void check_utf8(const tg_buf_t *b)
{
    size_t i = 0;
    while (i < b->b_len) {
        size_t n = tg_utf8_seq((const unsigned char *)b->b_data + i, b->b_len - i);
        if (n == 0 && b->b_data[i] == '\0')
            n = 1; /* "\u0000" decodes to a NUL byte */
        TG_FUZZ_CHECK(n > 0);
        i += n;
    }
}

/* Walks the value at the cursor with the pull API. 0 or an error code. */
static int walk(tg_json_t *j, tg_buf_t *s)
{
    int rc;
    switch (tg_json_peek(j)) {
    case TG_JSON_OBJECT:
    case TG_JSON_ARRAY: {
        int obj = tg_json_peek(j) == TG_JSON_OBJECT;
        if ((rc = tg_json_enter(j)) != 0)
            return rc;
        char name[16];
        while ((rc = tg_json_next(j, obj ? name : NULL, sizeof name)) == 1)
            if ((rc = walk(j, s)) != 0)
                return rc;
        return rc;
    }
    case TG_JSON_STRING:
        tg_buf_reset(s);
        rc = tg_json_string(j, s);
        if (rc == 0)
            check_utf8(s);
        return rc;
    case TG_JSON_NUMBER: {
        uint64_t v;
        rc = tg_json_uint(j, UINT64_MAX, &v);
        return rc == TG_AGENT_ERANGE ? 0 : rc;
    }
    default:
        return tg_json_skip(j);
    }
}

static int member(tg_json_t *j, const char *name, void *arg)
{
    (void)name;
    char out[8];
    int trunc;
    if (tg_json_peek(j) == TG_JSON_STRING)
        return tg_json_string_to(j, out, sizeof out, &trunc);
    if (tg_json_peek(j) == TG_JSON_ARRAY)
        return tg_json_objects(j, member, arg, NULL);
    return tg_json_skip(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    char err[128] = "";
    int valid = tg_json_valid(p, size, err, sizeof err);
    TG_FUZZ_CHECK(valid == 0 || valid == TG_AGENT_EJSON);

    tg_buf_t s;
    tg_buf_init(&s, 1 << 20);
    tg_json_t j;
    tg_json_init(&j, p, size, NULL, 0);
    int rc = walk(&j, &s);
    if (rc == 0)
        rc = tg_json_end(&j);
    tg_buf_free(&s);
    TG_FUZZ_CHECK((rc == 0) == (valid == 0));

    /* the callback walkers and find must not read past the text */
    tg_json_init(&j, p, size, NULL, 0);
    (void)tg_json_members(&j, member, NULL);
    tg_json_init(&j, p, size, NULL, 0);
    if (tg_json_peek(&j) == TG_JSON_OBJECT && tg_json_enter(&j) == 0 && tg_json_find(&j, "usage") == 1)
        (void)tg_json_skip(&j);

    /* jansson stops at a NUL byte outside a string ("4\0" loads as 4) */
    json_error_t je;
    json_t *t = memchr(p, 0, size) ? NULL : json_loadb(p, size, JSON_DECODE_ANY, &je);
    if (t != NULL) {
        TG_FUZZ_CHECK(valid == 0 || strstr(err, "deeper") != NULL);
        json_decref(t);
    }
    return 0;
}
