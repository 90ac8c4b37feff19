/* chat.c: token estimate of an OpenAI chat completions request, following
 * the OpenAI cookbook "How to count tokens with tiktoken" (messages: 3 per
 * message, +1 per name, 3 to prime the reply; tools: the function-calling
 * constants of its num_tokens_for_tools).
 *
 * This runs on the agent's hot path (a pre-estimate before the upstream
 * call), so it builds no JSON tree: jsmn (Debian's header-only scanner, in
 * strict mode) splits the body into a flat token array in one pass, and the
 * walk below reads the few fields it needs straight from the body, copying a
 * string only when it holds escapes. */
#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>
#include <stdio.h>
#include <string.h>

#include "base/tg_base.h"
#include "meter/tg_meter_int.h"

typedef struct chat_ctx {
    const tg_meter_t *cc_m;
    tg_meter_encoding_t cc_enc;
    const char *cc_js;  /* the body */
    jsmntok_t *cc_t;    /* its tokens */
    int cc_n;
    tg_buf_t cc_buf;    /* scratch for unescaped strings */
    char *cc_err;
    size_t cc_errlen;
} chat_ctx_t;

/* ---- walking jsmn's flat token array ------------------------------------ */

/* Index just past the value at i and everything inside it. */
static int skip(const chat_ctx_t *c, int i)
{
    int end = c->cc_t[i].end;
    for (i++; i < c->cc_n && c->cc_t[i].start < end; i++)
        ;
    return i;
}

static int is_type(const chat_ctx_t *c, int i, jsmntype_t type)
{
    return i >= 0 && i < c->cc_n && c->cc_t[i].type == type;
}

/* Whether token i is a string whose raw bytes are `key`. */
static int key_is(const chat_ctx_t *c, int i, const char *key)
{
    size_t l = strlen(key);
    return is_type(c, i, JSMN_STRING) && (size_t)(c->cc_t[i].end - c->cc_t[i].start) == l &&
           memcmp(c->cc_js + c->cc_t[i].start, key, l) == 0;
}

/* Index of the value of `key` in the object at i, or -1. */
static int get(const chat_ctx_t *c, int obj, const char *key)
{
    if (!is_type(c, obj, JSMN_OBJECT))
        return -1;
    int j = obj + 1;
    for (int k = 0; k < c->cc_t[obj].size; k++) {
        if (key_is(c, j, key))
            return j + 1;
        j = skip(c, j + 1);
    }
    return -1;
}

static void put_utf8(tg_buf_t *b, uint32_t cp, int *rc)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12);
        u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18);
        u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    if (tg_buf_append(b, u, n) != 0)
        *rc = TG_METER_ENOMEM;
}

static int hex4(const char *p, uint32_t *v)
{
    *v = 0;
    for (int k = 0; k < 4; k++) {
        char h = p[k];
        int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                                              : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

/* The decoded bytes of string token i: in place when it has no escapes,
 * else in cc_buf. A lone surrogate escape becomes U+FFFD (as a JavaScript
 * string would reach tiktoken). Returns 0, TG_METER_EJSON or ENOMEM. */
static int str_of(chat_ctx_t *c, int i, const char **s, size_t *n)
{
    const char *p = c->cc_js + c->cc_t[i].start, *end = c->cc_js + c->cc_t[i].end;
    int rc = 0;
    if (!memchr(p, '\\', (size_t)(end - p))) {
        *s = p;
        *n = (size_t)(end - p);
        return 0;
    }
    tg_buf_reset(&c->cc_buf);
    while (p < end && rc == 0) {
        const char *bs = memchr(p, '\\', (size_t)(end - p));
        size_t lit = bs ? (size_t)(bs - p) : (size_t)(end - p);
        if (tg_buf_append(&c->cc_buf, p, lit) != 0)
            return TG_METER_ENOMEM;
        p += lit;
        if (!bs)
            break;
        if (p + 1 >= end)
            goto bad;
        char e = p[1], ch = 0;
        p += 2;
        switch (e) {
        case '"': ch = '"'; break;
        case '\\': ch = '\\'; break;
        case '/': ch = '/'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            uint32_t v, lo;
            if (end - p < 4 || hex4(p, &v) != 0)
                goto bad;
            p += 4;
            if (v >= 0xD800 && v <= 0xDBFF && end - p >= 6 && p[0] == '\\' && p[1] == 'u' &&
                hex4(p + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
                v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            } else if (v >= 0xD800 && v <= 0xDFFF) {
                v = 0xFFFD;
            }
            put_utf8(&c->cc_buf, v, &rc);
            continue;
        }
        default:
            goto bad;
        }
        if (tg_buf_append(&c->cc_buf, &ch, 1) != 0)
            return TG_METER_ENOMEM;
    }
    if (rc != 0)
        return rc;
    *s = c->cc_buf.b_data ? c->cc_buf.b_data : "";
    *n = c->cc_buf.b_len;
    return 0;
bad:
    return tg_errf(c->cc_err, c->cc_errlen, TG_METER_EJSON,
                   "chat request is not JSON: bad escape in the string at byte %d",
                   c->cc_t[i].start);
}

/* ---- counting ------------------------------------------------------------ */

static int count_bytes(chat_ctx_t *c, const char *s, size_t n, uint64_t *acc)
{
    uint64_t k = 0;
    int rc = tg_meter_count(c->cc_m, c->cc_enc, s, n, TG_METER_SPECIAL_TEXT, &k, c->cc_err,
                            c->cc_errlen);
    *acc += k;
    return rc;
}

/* Counts the string at i; anything else counts nothing. */
static int count_str(chat_ctx_t *c, int i, uint64_t *acc)
{
    const char *s;
    size_t n;
    int rc;
    if (!is_type(c, i, JSMN_STRING))
        return 0;
    if ((rc = str_of(c, i, &s, &n)) != 0)
        return rc;
    return count_bytes(c, s, n, acc);
}

/* Content given as an array of parts: text parts count, images are tallied. */
static int count_parts(chat_ctx_t *c, int arr, uint64_t *acc, uint32_t *images)
{
    int j = arr + 1, rc;
    for (int k = 0; k < c->cc_t[arr].size; k++, j = skip(c, j)) {
        int type = get(c, j, "type");
        if (is_type(c, j, JSMN_STRING)) {
            if ((rc = count_str(c, j, acc)) != 0)
                return rc;
        } else if (key_is(c, type, "text") || key_is(c, type, "input_text")) {
            if ((rc = count_str(c, get(c, j, "text"), acc)) != 0)
                return rc;
        } else if (key_is(c, type, "image_url") || key_is(c, type, "input_image")) {
            (*images)++;
        }
    }
    return 0;
}

/* An assistant's tool_calls: the name and arguments strings of each call. */
static int count_tool_calls(chat_ctx_t *c, int arr, uint64_t *acc)
{
    int j = arr + 1, rc;
    for (int k = 0; k < c->cc_t[arr].size; k++, j = skip(c, j)) {
        int f = get(c, j, "function");
        if ((rc = count_str(c, get(c, f, "name"), acc)) != 0 ||
            (rc = count_str(c, get(c, f, "arguments"), acc)) != 0)
            return rc;
    }
    return 0;
}

/* Counts "a:b" or "a:b:d" (string tokens; -1 = empty), first stripping one
 * trailing '.' from the last part, as the cookbook does with descriptions. */
static int count_line(chat_ctx_t *c, int a, int b, int d, int three, uint64_t *acc)
{
    tg_buf_t line;
    const int parts[3] = {a, b, d};
    int np = three ? 3 : 2, rc = 0;
    tg_buf_init(&line, (size_t)1 << 30);
    for (int k = 0; k < np && rc == 0; k++) {
        const char *s = "";
        size_t n = 0;
        if (k > 0 && tg_buf_append(&line, ":", 1) != 0)
            rc = TG_METER_ENOMEM;
        if (rc == 0 && is_type(c, parts[k], JSMN_STRING))
            rc = str_of(c, parts[k], &s, &n);
        if (rc == 0 && k == np - 1 && n && s[n - 1] == '.')
            n--;
        if (rc == 0 && tg_buf_append(&line, s, n) != 0)
            rc = TG_METER_ENOMEM;
    }
    if (rc == TG_METER_ENOMEM)
        tg_errf(c->cc_err, c->cc_errlen, rc, "out of memory counting tools");
    if (rc == 0)
        rc = count_bytes(c, line.b_data ? line.b_data : "", line.b_len, acc);
    tg_buf_free(&line);
    return rc;
}

/* Tool definitions, cookbook constants: func_init 7 (o200k models) or 10
 * (cl100k models), prop_init 3, prop_key 3, enum_init -3, enum_item 3,
 * func_end 12 once after all functions. */
static int count_tools(chat_ctx_t *c, int tools, int legacy, uint64_t *acc)
{
    const int64_t func_init = c->cc_enc == TG_METER_O200K_BASE ? 7 : 10;
    int64_t total = 0;
    int j, rc;

    if (!is_type(c, tools, JSMN_ARRAY) || c->cc_t[tools].size == 0)
        return 0;
    j = tools + 1;
    for (int k = 0; k < c->cc_t[tools].size; k++, j = skip(c, j)) {
        int f = legacy ? j : get(c, j, "function");
        uint64_t n = 0;
        if (!is_type(c, f, JSMN_OBJECT))
            return tg_errf(c->cc_err, c->cc_errlen, TG_METER_EJSON,
                           "tools[%d] has no \"function\" object", k);
        total += func_init;
        if ((rc = count_line(c, get(c, f, "name"), get(c, f, "description"), -1, 0, &n)) != 0)
            return rc;
        int props = get(c, get(c, f, "parameters"), "properties");
        if (is_type(c, props, JSMN_OBJECT) && c->cc_t[props].size > 0) {
            int p = props + 1;
            total += 3;
            for (int q = 0; q < c->cc_t[props].size; q++, p = skip(c, p + 1)) {
                int en = get(c, p + 1, "enum");
                total += 3;
                if (is_type(c, en, JSMN_ARRAY)) {
                    int e = en + 1;
                    total -= 3;
                    for (int r = 0; r < c->cc_t[en].size; r++, e = skip(c, e)) {
                        total += 3;
                        if ((rc = count_str(c, e, &n)) != 0)
                            return rc;
                    }
                }
                if ((rc = count_line(c, p, get(c, p + 1, "type"), get(c, p + 1, "description"),
                                     1, &n)) != 0)
                    return rc;
            }
        }
        total += (int64_t)n;
    }
    total += 12;
    *acc += total > 0 ? (uint64_t)total : 0;
    return 0;
}

static uint64_t scale(uint64_t v, uint32_t ppm)
{
    if (ppm == 1000000)
        return v;
    return (uint64_t)(((unsigned __int128)v * ppm + 999999) / 1000000);
}

int tg_meter_chat_count(const tg_meter_t *m, const char *body, size_t len,
                        const char *model_override, tg_meter_chat_t *out, char *err,
                        size_t errlen)
{
    chat_ctx_t c = {m, TG_METER_O200K_BASE, body, NULL, 0, {0}, err, errlen};
    jsmntok_t stack_toks[512];
    jsmn_parser jp;
    tg_meter_model_t mm;
    uint64_t msg = 0, tools = 0;
    char model[256] = "";
    int rc = 0, n;

    memset(out, 0, sizeof *out);
    tg_buf_init(&c.cc_buf, TG_METER_MAX_INPUT);
    if (len > TG_METER_MAX_INPUT || len > (size_t)0x7fffffff) {
        rc = tg_errf(err, errlen, TG_METER_ETOOBIG, "chat request of %zu bytes is too large", len);
        goto done;
    }
    jsmn_init(&jp);
    n = jsmn_parse(&jp, body, len, NULL, 0); /* counts the tokens and checks the syntax */
    if (n < 0) {
        rc = tg_errf(err, errlen, TG_METER_EJSON,
                     "chat request is not JSON: %s near byte %u",
                     n == JSMN_ERROR_PART ? "truncated" : "invalid", jp.pos);
        goto done;
    }
    c.cc_t = n <= (int)(sizeof stack_toks / sizeof stack_toks[0]) ? stack_toks
                                                                   : tg_malloc((size_t)n * sizeof *c.cc_t);
    if (!c.cc_t) {
        rc = tg_errf(err, errlen, TG_METER_ENOMEM, "out of memory parsing the chat request");
        goto done;
    }
    jsmn_init(&jp);
    c.cc_n = jsmn_parse(&jp, body, len, c.cc_t, (unsigned)n);
    if (c.cc_n < 0) { /* only this pass sees unclosed objects and arrays */
        rc = tg_errf(err, errlen, TG_METER_EJSON, "chat request is not JSON: %s near byte %u",
                     c.cc_n == JSMN_ERROR_PART ? "truncated" : "invalid", jp.pos);
        goto done;
    }
    if (c.cc_n < 1 || c.cc_t[0].type != JSMN_OBJECT) {
        rc = tg_errf(err, errlen, TG_METER_EJSON, "chat request is not JSON: not an object");
        goto done;
    }
    if (model_override) {
        snprintf(model, sizeof model, "%s", model_override);
    } else {
        int mi = get(&c, 0, "model");
        const char *s;
        size_t sl;
        if (is_type(&c, mi, JSMN_STRING) && (rc = str_of(&c, mi, &s, &sl)) == 0)
            snprintf(model, sizeof model, "%.*s", (int)(sl < 255 ? sl : 255), s);
        if (rc != 0)
            goto done;
    }
    tg_meter_model_lookup(model, 1, &mm, NULL, 0);
    c.cc_enc = mm.mm_encoding;
    int messages = get(&c, 0, "messages");
    if (!is_type(&c, messages, JSMN_ARRAY)) {
        rc = tg_errf(err, errlen, TG_METER_EJSON, "chat request has no \"messages\" array");
        goto done;
    }
    int j = messages + 1;
    for (int k = 0; k < c.cc_t[messages].size; k++, j = skip(&c, j)) {
        if (!is_type(&c, j, JSMN_OBJECT)) {
            rc = tg_errf(err, errlen, TG_METER_EJSON, "messages[%d] is not an object", k);
            goto done;
        }
        msg += 3;
        int f = j + 1;
        for (int q = 0; q < c.cc_t[j].size; q++, f = skip(&c, f + 1)) {
            int v = f + 1;
            if (is_type(&c, v, JSMN_STRING))
                rc = count_str(&c, v, &msg);
            else if (is_type(&c, v, JSMN_ARRAY) && key_is(&c, f, "tool_calls"))
                rc = count_tool_calls(&c, v, &msg);
            else if (is_type(&c, v, JSMN_ARRAY))
                rc = count_parts(&c, v, &msg, &out->mc_images);
            if (rc != 0)
                goto done;
            if (key_is(&c, f, "name"))
                msg += 1;
        }
    }
    msg += 3; /* every reply is primed with <|start|>assistant<|message|> */
    if ((rc = count_tools(&c, get(&c, 0, "tools"), 0, &tools)) != 0 ||
        (rc = count_tools(&c, get(&c, 0, "functions"), 1, &tools)) != 0)
        goto done;
    out->mc_encoding = mm.mm_encoding;
    out->mc_estimate = mm.mm_kind == TG_METER_MODEL_ESTIMATE;
    out->mc_message_tokens = scale(msg, mm.mm_scale_ppm);
    out->mc_tool_tokens = scale(tools, mm.mm_scale_ppm);
    out->mc_prompt_tokens = out->mc_message_tokens + out->mc_tool_tokens;
done:
    if (c.cc_t != stack_toks)
        tg_free(c.cc_t);
    tg_buf_free(&c.cc_buf);
    return rc;
}
