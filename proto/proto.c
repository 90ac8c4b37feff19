/* proto.c: the tg_proto front: error names, protocol facts, the dispatch of
 * whole-body conversions to the adapters, the count_tokens text, and the
 * small jansson helpers the adapters share. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/tg_utf8.h"
#include "proto/proto_int.h"

const tg_proto_adapter_t *const tg_proto__adapters[TG_PROTO_NKINDS] = {
    [TG_PROTO_OPENAI] = &tg_proto__openai,
    [TG_PROTO_ANTHROPIC] = &tg_proto__anthropic,
    [TG_PROTO_RESPONSES] = &tg_proto__responses,
};

/* ---- names and protocol facts ------------------------------------------- */

const char *tg_proto_strerror(int code)
{
    switch ((enum tg_proto_error)code) {
    case TG_PROTO_OK: return "success";
    case TG_PROTO_EJSON: return "malformed JSON";
    case TG_PROTO_EINVALID: return "invalid field";
    case TG_PROTO_EUNSUPPORTED: return "not expressible in the target protocol";
    case TG_PROTO_ENOMEM: return "out of memory";
    case TG_PROTO_ETOOBIG: return "too large";
    case TG_PROTO_EGRAMMAR: return "stream grammar violated";
    case TG_PROTO_EUPSTREAM: return "upstream stream failed";
    case TG_PROTO_ELAST: break;
    }
    return "unknown error";
}

static const tg_proto_adapter_t *adapter(tg_proto_kind_t kind)
{
    if ((unsigned)kind >= TG_PROTO_NKINDS)
        return NULL;
    return tg_proto__adapters[kind];
}

const char *tg_proto_name(tg_proto_kind_t kind)
{
    const tg_proto_adapter_t *a = adapter(kind);
    return a ? a->pa_name : "unknown";
}

const char *tg_proto_path(tg_proto_kind_t kind)
{
    const tg_proto_adapter_t *a = adapter(kind);
    return a ? a->pa_path : "/";
}

int tg_proto_auth_header(tg_proto_kind_t kind, const char *credential, char *buf, size_t len)
{
    const tg_proto_adapter_t *a = adapter(kind);
    if (!len)
        return TG_PROTO_ETOOBIG;
    const char *pre = a ? a->pa_auth_prefix : "Authorization: Bearer ", *cred = credential ? credential : "";
    size_t pl = strlen(pre), cl = strlen(cred);
    if (pl + cl >= len) {
        buf[0] = '\0';
        return TG_PROTO_ETOOBIG;
    }
    memcpy(buf, pre, pl);
    memcpy(buf + pl, cred, cl + 1);
    return 0;
}

const char *tg_proto_extra_header(tg_proto_kind_t kind)
{
    const tg_proto_adapter_t *a = adapter(kind);
    return a ? a->pa_extra_header : NULL;
}

/* ---- error types ---------------------------------------------------------- */

tg_proto_errtype_t tg_proto_errtype_from_status(int status)
{
    switch (status) {
    case 401: return TG_PROTO_ERR_AUTHENTICATION;
    case 402: return TG_PROTO_ERR_BILLING;
    case 403: return TG_PROTO_ERR_PERMISSION;
    case 404: return TG_PROTO_ERR_NOT_FOUND;
    case 413: return TG_PROTO_ERR_REQUEST_TOO_LARGE;
    case 429: return TG_PROTO_ERR_RATE_LIMIT;
    case 503:
    case 529: return TG_PROTO_ERR_OVERLOADED;
    default: break;
    }
    return status >= 500 ? TG_PROTO_ERR_API : TG_PROTO_ERR_INVALID_REQUEST;
}

int tg_proto_errtype_status(tg_proto_kind_t kind, tg_proto_errtype_t type)
{
    const tg_proto_adapter_t *a = adapter(kind);
    if (!a || (unsigned)type >= TG_PROTO_NERRTYPES)
        return 500;
    return a->pa_errtype_status(type);
}

const char *tg_proto__anthropic_errname(tg_proto_errtype_t t)
{
    switch (t) {
    case TG_PROTO_ERR_INVALID_REQUEST: return "invalid_request_error";
    case TG_PROTO_ERR_AUTHENTICATION: return "authentication_error";
    case TG_PROTO_ERR_PERMISSION: return "permission_error";
    case TG_PROTO_ERR_NOT_FOUND: return "not_found_error";
    case TG_PROTO_ERR_REQUEST_TOO_LARGE: return "request_too_large";
    case TG_PROTO_ERR_RATE_LIMIT: return "rate_limit_error";
    case TG_PROTO_ERR_API: return "api_error";
    case TG_PROTO_ERR_OVERLOADED: return "overloaded_error";
    case TG_PROTO_ERR_BILLING: return "billing_error";
    case TG_PROTO_NERRTYPES: break;
    }
    return "api_error";
}

/* ---- jansson helpers ---------------------------------------------------- */

void tg_proto__path(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    (void)n; /* a cut path still names the field's start */
}

const char *tg_proto__strdup(tg_pool_t *pool, const char *s)
{
    if (!s)
        return NULL;
    return tg_pool_strndup(pool, s, strlen(s));
}

const char *tg_proto__dump(tg_pool_t *pool, json_t *v)
{
    char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!t)
        return NULL;
    const char *r = tg_proto__strdup(pool, t);
    free(t); /* jansson's allocation */
    return r;
}

void *tg_proto__array(tg_pool_t *pool, size_t n, size_t sz)
{
    if (n && sz > SIZE_MAX / n)
        return NULL;
    return tg_pool_calloc(pool, n ? n * sz : 1);
}

int tg_proto__set(json_t *o, const char *key, json_t *v)
{
    if (!v)
        return TG_PROTO_ENOMEM;
    return json_object_set_new(o, key, v) ? TG_PROTO_ENOMEM : 0;
}

json_t *tg_proto__load(const char *text, const char *what, char *err, size_t errlen, int *rc)
{
    json_error_t je;
    json_t *v = json_loads(text ? text : "", 0, &je);
    if (!v) {
        *rc = tg_errf(err, errlen, TG_PROTO_EINVALID, "%s: not valid JSON (%s)", what, je.text);
        return NULL;
    }
    return v;
}

struct dump_ctx {
    tg_buf_t *dc_out;
    int dc_rc;
};

static int dump_cb(const char *b, size_t n, void *arg)
{
    struct dump_ctx *dc = arg;
    int rc = tg_buf_append(dc->dc_out, b, n);
    if (rc)
        dc->dc_rc = rc == TG_BUF_ENOMEM ? TG_PROTO_ENOMEM : TG_PROTO_ETOOBIG;
    return rc ? -1 : 0;
}

int tg_proto__append_json(tg_buf_t *out, json_t *v)
{
    size_t len = out->b_len;
    struct dump_ctx dc = {out, 0};
    if (json_dump_callback(v, dump_cb, &dc, JSON_COMPACT | JSON_ENCODE_ANY) != 0) {
        out->b_len = len;
        if (out->b_data)
            out->b_data[len] = '\0';
        return dc.dc_rc ? dc.dc_rc : TG_PROTO_ENOMEM;
    }
    return 0;
}

int tg_proto__append_sse(tg_buf_t *out, const char *prefix, json_t *v)
{
    if (!v)
        return TG_PROTO_ENOMEM;
    int rc = tg_buf_puts(out, prefix) ? TG_PROTO_ETOOBIG : tg_proto__append_json(out, v);
    json_decref(v);
    if (!rc && tg_buf_puts(out, "\n\n"))
        rc = TG_PROTO_ETOOBIG;
    return rc;
}

int64_t tg_proto__count(json_t *o, const char *key, int *bad)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > TG_PROTO_COUNT_MAX) {
        if (bad)
            *bad = 1;
        return 0;
    }
    return json_integer_value(v);
}

int tg_proto__image_url(tg_pool_t *pool, const char *url, tg_proto_block_t *bl)
{
    bl->bl_type = TG_PROTO_BLOCK_IMAGE;
    const char *b64 = strstr(url, ";base64,");
    if (strncmp(url, "data:", 5) == 0 && b64) {
        bl->bl_media_type = tg_pool_strndup(pool, url + 5, (size_t)(b64 - url - 5));
        bl->bl_data = tg_proto__strdup(pool, b64 + 8);
        return bl->bl_media_type && bl->bl_data ? 0 : TG_PROTO_ENOMEM;
    }
    bl->bl_url = tg_proto__strdup(pool, url);
    return bl->bl_url ? 0 : TG_PROTO_ENOMEM;
}

int tg_proto__sampling(json_t *root, tg_proto_request_t *rq, char *err, size_t errlen)
{
    json_t *v;
    if ((v = json_object_get(root, "temperature")) && !json_is_null(v)) {
        if (!json_is_number(v))
            return tg_errf(err, errlen, TG_PROTO_EINVALID, "temperature: expected a number");
        rq->rq_has_temperature = 1;
        rq->rq_temperature = json_number_value(v);
    }
    if ((v = json_object_get(root, "top_p")) && !json_is_null(v)) {
        if (!json_is_number(v))
            return tg_errf(err, errlen, TG_PROTO_EINVALID, "top_p: expected a number");
        rq->rq_has_top_p = 1;
        rq->rq_top_p = json_number_value(v);
    }
    return 0;
}

int tg_proto__tool_choice_word(const char *v, tg_proto_request_t *rq, char *err, size_t errlen)
{
    if (!strcmp(v, "auto"))
        rq->rq_tool_choice = TG_PROTO_TOOLS_AUTO;
    else if (!strcmp(v, "required"))
        rq->rq_tool_choice = TG_PROTO_TOOLS_ANY;
    else if (!strcmp(v, "none"))
        rq->rq_tool_choice = TG_PROTO_TOOLS_NONE;
    else
        return tg_errf(err, errlen, TG_PROTO_EINVALID, "tool_choice: unknown value '%s'", v);
    return 0;
}

/* ---- whole-body conversions --------------------------------------------- */

static json_t *load_body(const char *body, size_t len, char *err, size_t errlen, int *rc)
{
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        *rc = tg_errf(err, errlen, TG_PROTO_EJSON, "malformed JSON at byte %d: %s", je.position, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        *rc = tg_errf(err, errlen, TG_PROTO_EINVALID, "body: expected an object");
        return NULL;
    }
    return root;
}

int tg_proto_parse_request(tg_proto_kind_t kind, tg_pool_t *pool, const char *body, size_t len,
                           tg_proto_request_t *out, char *err, size_t errlen)
{
    const tg_proto_adapter_t *a = adapter(kind);
    int rc = 0;
    if (!a)
        return tg_errf(err, errlen, TG_PROTO_EINVALID, "unknown protocol %d", (int)kind);
    json_t *root = load_body(body, len, err, errlen, &rc);
    if (!root)
        return rc;
    memset(out, 0, sizeof *out);
    out->rq_parallel_tools = -1;
    rc = a->pa_parse_request(pool, root, out, err, errlen);
    json_decref(root);
    return rc;
}

static int finish_write(json_t *root, int rc, tg_buf_t *out, char *err, size_t errlen)
{
    if (!root)
        return rc ? rc : tg_errf(err, errlen, TG_PROTO_ENOMEM, "out of memory writing JSON");
    rc = tg_proto__append_json(out, root);
    json_decref(root);
    if (rc)
        return tg_errf(err, errlen, rc, "output passed its maximum of %zu bytes", out->b_max);
    return 0;
}

int tg_proto_write_request(tg_proto_kind_t kind, const tg_proto_request_t *rq, tg_buf_t *out, char *err,
                           size_t errlen)
{
    const tg_proto_adapter_t *a = adapter(kind);
    int rc = 0;
    if (!a)
        return tg_errf(err, errlen, TG_PROTO_EINVALID, "unknown protocol %d", (int)kind);
    json_t *root = a->pa_write_request(rq, err, errlen, &rc);
    return finish_write(root, rc, out, err, errlen);
}

int tg_proto_parse_response(tg_proto_kind_t kind, tg_pool_t *pool, const char *body, size_t len,
                            tg_proto_response_t *out, char *err, size_t errlen)
{
    return tg_proto_parse_response_vendor(kind, NULL, pool, body, len, out, err, errlen);
}

int tg_proto_parse_response_vendor(tg_proto_kind_t kind, const tg_proto_vendor_t *vendor, tg_pool_t *pool,
                                 const char *body, size_t len, tg_proto_response_t *out, char *err,
                                 size_t errlen)
{
    const tg_proto_adapter_t *a = adapter(kind);
    int rc = 0;
    if (!a)
        return tg_errf(err, errlen, TG_PROTO_EINVALID, "unknown protocol %d", (int)kind);
    json_t *root = load_body(body, len, err, errlen, &rc);
    if (!root)
        return rc;
    memset(out, 0, sizeof *out);
    rc = a->pa_parse_response(vendor ? vendor : tg_proto_vendor_or_compatible(0), pool, root,
                              out, err, errlen);
    json_decref(root);
    return rc;
}

int tg_proto_write_response(tg_proto_kind_t kind, const tg_proto_response_t *rs, tg_buf_t *out, char *err,
                            size_t errlen)
{
    const tg_proto_adapter_t *a = adapter(kind);
    int rc = 0;
    if (!a)
        return tg_errf(err, errlen, TG_PROTO_EINVALID, "unknown protocol %d", (int)kind);
    json_t *root = a->pa_write_response(rs, err, errlen, &rc);
    return finish_write(root, rc, out, err, errlen);
}

int tg_proto_parse_error(tg_proto_kind_t kind, tg_pool_t *pool, int status, const char *body, size_t len,
                         tg_proto_errinfo_t *out)
{
    const tg_proto_adapter_t *a = adapter(kind);
    memset(out, 0, sizeof *out);
    out->pe_type = tg_proto_errtype_from_status(status);
    json_t *root = body && len ? json_loadb(body, len, 0, NULL) : NULL;
    int rc = a ? a->pa_parse_error(pool, status, json_is_object(root) ? root : NULL, out) : 0;
    json_decref(root);
    if (rc)
        return rc;
    if (!out->pe_message) {
        char text[1024];
        if (body && len)
            tg_utf8_clean(text, sizeof text, body, len);
        else
            snprintf(text, sizeof text, "upstream answered HTTP %d", status);
        out->pe_message = tg_proto__strdup(pool, text);
        if (!out->pe_message)
            return TG_PROTO_ENOMEM;
    }
    return 0;
}

int tg_proto_write_error(tg_proto_kind_t kind, const tg_proto_errinfo_t *e, tg_buf_t *out)
{
    const tg_proto_adapter_t *a = adapter(kind);
    if (!a)
        return TG_PROTO_EINVALID;
    json_t *root = a->pa_write_error(e);
    if (!root)
        return TG_PROTO_ENOMEM;
    int rc = tg_proto__append_json(out, root);
    json_decref(root);
    return rc;
}

/* ---- count_tokens text --------------------------------------------------- */

static int put(tg_buf_t *out, const char *s)
{
    if (!s || !*s)
        return 0;
    if (out->b_len && tg_buf_append(out, "\n", 1))
        return TG_PROTO_ETOOBIG;
    return tg_buf_puts(out, s) ? TG_PROTO_ETOOBIG : 0;
}

static int put_block(tg_buf_t *out, const tg_proto_block_t *b)
{
    int rc = 0;
    switch (b->bl_type) {
    case TG_PROTO_BLOCK_TEXT:
    case TG_PROTO_BLOCK_THINKING: return put(out, b->bl_text);
    case TG_PROTO_BLOCK_TOOL_USE:
        if ((rc = put(out, b->bl_name)))
            return rc;
        return put(out, b->bl_args);
    case TG_PROTO_BLOCK_TOOL_RESULT:
        for (size_t i = 0; i < b->bl_nparts && !rc; i++)
            rc = put_block(out, &b->bl_parts[i]);
        return rc;
    case TG_PROTO_BLOCK_IMAGE:
    case TG_PROTO_BLOCK_REDACTED_THINKING:
    case TG_PROTO_NBLOCKS: break;
    }
    return 0;
}

int tg_proto_count_text(const tg_proto_request_t *rq, tg_buf_t *out)
{
    size_t len = out->b_len;
    int rc = 0;
    for (size_t i = 0; i < rq->rq_nsystem && !rc; i++)
        rc = put(out, rq->rq_system[i]);
    for (size_t i = 0; i < rq->rq_nmsgs && !rc; i++)
        for (size_t j = 0; j < rq->rq_msgs[i].ms_nblocks && !rc; j++)
            rc = put_block(out, &rq->rq_msgs[i].ms_blocks[j]);
    for (size_t i = 0; i < rq->rq_ntools && !rc; i++) {
        rc = put(out, rq->rq_tools[i].tl_name);
        if (!rc)
            rc = put(out, rq->rq_tools[i].tl_description);
        if (!rc)
            rc = put(out, rq->rq_tools[i].tl_schema);
    }
    if (rc) {
        out->b_len = len;
        if (out->b_data)
            out->b_data[len] = '\0';
    }
    return rc;
}
