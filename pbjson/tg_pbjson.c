/* tg_pbjson: descriptor-driven conversion between protobuf-c messages and
 * jansson trees (see tg_pbjson.h for the mapping). */
#include "pbjson/tg_pbjson.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/tg_b64.h"
#include "base/tg_base.h"
#include "pbpack/tg_pbpack.h"

const char *tg_pbjson_strerror(int code)
{
    switch ((enum tg_pbjson_error)code) {
    case TG_PBJSON_OK: return "ok";
    case TG_PBJSON_EINVALID: return "JSON does not match the message";
    case TG_PBJSON_ENOMEM: return "out of memory";
    case TG_PBJSON_ESYNTAX: return "not valid JSON";
    }
    return "unknown error";
}

/* ---- shared helpers ----------------------------------------------------- */

/* protobuf-c has no map flag: a map field is a repeated message whose type
 * is a generated *Entry with exactly key (1) and value (2). */
static int is_map_field(const ProtobufCFieldDescriptor *f)
{
    if (f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE)
        return 0;
    const ProtobufCMessageDescriptor *d = f->descriptor;
    size_t n = strlen(d->name);
    return n > 5 && strcmp(d->name + n - 5, "Entry") == 0 && d->n_fields == 2 &&
           d->fields[0].id == 1 && strcmp(d->fields[0].name, "key") == 0 && d->fields[1].id == 2 &&
           strcmp(d->fields[1].name, "value") == 0;
}

/* ---- to JSON -------------------------------------------------------------- */

static int redacted(const tg_pbjson_opts_t *o, const char *name)
{
    if (o == NULL || o->po_redact == NULL)
        return 0;
    for (const char *const *r = o->po_redact; *r; r++)
        if (strcmp(*r, name) == 0)
            return 1;
    return 0;
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0: no
 * overlong forms, no surrogates, nothing past U+10FFFF (RFC 3629). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (p[0] < 0x80) return 1;
    if (p[0] >= 0xC2 && p[0] <= 0xDF) len = 2;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF) len = 3;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4) len = 4;
    else return 0;
    if (n < len) return 0;
    if (p[0] == 0xE0) lo = 0xA0;      /* overlong */
    else if (p[0] == 0xED) hi = 0x9F; /* surrogates */
    else if (p[0] == 0xF0) lo = 0x90; /* overlong */
    else if (p[0] == 0xF4) hi = 0x8F; /* past U+10FFFF */
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return len;
}

/* A JSON string of s. protobuf-c does not check that string fields hold
 * UTF-8 and jansson refuses what does not (json_string returns NULL), so a
 * stored row with a cut or foreign string would read as "out of memory":
 * each byte that does not start a valid sequence becomes U+FFFD instead,
 * and the reader sees the rest of the row. NULL only when out of memory. */
static json_t *str_json(const char *s)
{
    json_t *j = json_string(s);
    if (j != NULL) return j;
    size_t n = strlen(s), k = 0;
    char *t = tg_malloc(n * 3 + 1);
    if (t == NULL) return NULL;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_seq((const unsigned char *)s + i, n - i);
        if (len == 0) {
            memcpy(t + k, "\xEF\xBF\xBD", 3); /* U+FFFD */
            k += 3;
            i++;
        } else {
            memcpy(t + k, s + i, len);
            k += len;
            i += len;
        }
    }
    j = json_stringn(t, k);
    tg_free(t);
    return j;
}

static json_t *i64_json(int64_t v)
{
    char b[32];
    snprintf(b, sizeof(b), "%" PRId64, v);
    return json_string(b);
}

static json_t *u64_json(uint64_t v)
{
    char b[32];
    snprintf(b, sizeof(b), "%" PRIu64, v);
    return json_string(b);
}

static json_t *value_to_json(const ProtobufCFieldDescriptor *f, const void *slot, const tg_pbjson_opts_t *o)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)slot);
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)slot);
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
        return i64_json(*(const int64_t *)slot);
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
        return u64_json(*(const uint64_t *)slot);
    case PROTOBUF_C_TYPE_FLOAT:
        return json_real(*(const float *)slot);
    case PROTOBUF_C_TYPE_DOUBLE:
        return json_real(*(const double *)slot);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)slot);
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)slot;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        return ev ? json_string(ev->name) : json_integer(v);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)slot;
        return str_json(s ? s : "");
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = slot;
        char *t = tg_malloc(TG_B64_ENCLEN(b->len));
        if (t == NULL)
            return NULL;
        tg_b64_encode(b->data, b->len, t);
        json_t *j = json_string(t);
        tg_free(t);
        return j;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(ProtobufCMessage *const *)slot;
        return m ? tg_pbjson_to_json(m, o) : json_null();
    }
    }
    return NULL;
}

/* 1 when a singular field holds its default (and so is skipped). */
static int is_default(const ProtobufCFieldDescriptor *f, const void *slot)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)slot;
        return s == NULL || s[0] == '\0';
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)slot)->len == 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(ProtobufCMessage *const *)slot == NULL;
    default: {
        static const char zero[8];
        return memcmp(slot, zero, tg_pbpack_elem_size(f->type)) == 0;
    }
    }
}

json_t *tg_pbjson_to_json(const ProtobufCMessage *m, const tg_pbjson_opts_t *o)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    int defaults = o && (o->po_flags & TG_PBJSON_DEFAULTS);
    json_t *obj = json_object();
    if (obj == NULL)
        return NULL;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const void *slot = base + f->offset;
        json_t *v = NULL;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            if (*(const uint32_t *)(base + f->quantifier_offset) != f->id)
                continue;
        } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
                   f->type != PROTOBUF_C_TYPE_MESSAGE) {
            if (!*(const protobuf_c_boolean *)(base + f->quantifier_offset))
                continue;
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            if (n == 0 && !defaults)
                continue;
            const char *arr = *(char *const *)slot;
            if (redacted(o, f->name)) {
                v = json_string("<redacted>");
            } else if (is_map_field(f)) {
                v = json_object();
                for (size_t k = 0; v && k < n; k++) {
                    const ProtobufCMessage *e = ((ProtobufCMessage *const *)arr)[k];
                    const ProtobufCMessageDescriptor *ed = e->descriptor;
                    json_t *key = value_to_json(&ed->fields[0], (const char *)e + ed->fields[0].offset, o);
                    json_t *val = value_to_json(&ed->fields[1], (const char *)e + ed->fields[1].offset, o);
                    const char *ks = key && json_is_string(key) ? json_string_value(key) : NULL;
                    char kb[32];
                    if (key && json_is_integer(key)) {
                        snprintf(kb, sizeof(kb), "%" JSON_INTEGER_FORMAT, json_integer_value(key));
                        ks = kb;
                    } else if (key && json_is_boolean(key)) {
                        ks = json_is_true(key) ? "true" : "false";
                    }
                    if (ks == NULL || val == NULL || json_object_set_new(v, ks, val) != 0) {
                        json_decref(key);
                        json_decref(v);
                        v = NULL;
                        break;
                    }
                    json_decref(key);
                }
            } else {
                v = json_array();
                size_t sz = tg_pbpack_elem_size(f->type);
                for (size_t k = 0; v && k < n; k++) {
                    json_t *e = value_to_json(f, arr + k * sz, o);
                    if (e == NULL || json_array_append_new(v, e) != 0) {
                        json_decref(v);
                        v = NULL;
                    }
                }
            }
        } else {
            if (!defaults && !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && is_default(f, slot))
                continue;
            v = redacted(o, f->name) ? json_string("<redacted>") : value_to_json(f, slot, o);
        }
        if (v == NULL || json_object_set_new(obj, f->name, v) != 0) {
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

char *tg_pbjson_dumps(const ProtobufCMessage *m, const tg_pbjson_opts_t *o)
{
    json_t *j = tg_pbjson_to_json(m, o);
    if (j == NULL)
        return NULL;
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return s;
}

/* ---- from JSON ------------------------------------------------------------ */

typedef struct {
    char *err;
    size_t errlen;
    char path[512];
} ctx_t;

static int bad(ctx_t *c, const char *what)
{
    return tg_errf(c->err, c->errlen, TG_PBJSON_EINVALID, "%s: %s", c->path[0] ? c->path : "(top)", what);
}

/* Appends ".name" or "[i]" to the path; returns the old length to restore. */
static size_t path_push(ctx_t *c, const char *name, long idx)
{
    size_t old = strlen(c->path);
    size_t room = sizeof(c->path) - old;
    if (name)
        snprintf(c->path + old, room, "%s%s", old ? "." : "", name);
    else
        snprintf(c->path + old, room, "[%ld]", idx);
    return old;
}

static void path_pop(ctx_t *c, size_t old)
{
    c->path[old] = '\0';
}

/* snake_case name of a lowerCamelCase key, for matching. */
static void camel_to_snake(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    for (; *in && o + 2 < outlen; in++) {
        if (isupper((unsigned char)*in)) {
            out[o++] = '_';
            out[o++] = (char)tolower((unsigned char)*in);
        } else {
            out[o++] = *in;
        }
    }
    out[o] = '\0';
}

static int json_to_i64(ctx_t *c, const json_t *j, int64_t lo, int64_t hi, int64_t *out)
{
    if (json_is_integer(j)) {
        json_int_t v = json_integer_value(j);
        if (v < lo || v > hi)
            return bad(c, "integer out of range");
        *out = v;
        return 0;
    }
    if (json_is_string(j)) {
        const char *s = json_string_value(j);
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (s[0] == '\0' || *end != '\0' || errno || v < lo || v > hi)
            return bad(c, "expected an integer (a number or a decimal string)");
        *out = v;
        return 0;
    }
    return bad(c, "expected an integer");
}

static int json_to_u64(ctx_t *c, const json_t *j, uint64_t hi, uint64_t *out)
{
    if (json_is_integer(j)) {
        json_int_t v = json_integer_value(j);
        if (v < 0 || (uint64_t)v > hi)
            return bad(c, "integer out of range");
        *out = (uint64_t)v;
        return 0;
    }
    if (json_is_string(j)) {
        const char *s = json_string_value(j);
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (s[0] == '\0' || s[0] == '-' || *end != '\0' || errno || v > hi)
            return bad(c, "expected a non-negative integer");
        *out = v;
        return 0;
    }
    return bad(c, "expected a non-negative integer");
}

static int enum_from_json(ctx_t *c, const ProtobufCEnumDescriptor *e, const json_t *j, int *out)
{
    if (json_is_integer(j)) {
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(e, (int)json_integer_value(j));
        if (v == NULL)
            return bad(c, "unknown enum number");
        *out = v->value;
        return 0;
    }
    if (!json_is_string(j))
        return bad(c, "expected an enum name");
    const char *s = json_string_value(j);
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value_by_name(e, s);
    if (v) {
        *out = v->value;
        return 0;
    }
    /* Short names: the part after the values' common prefix, any case. */
    size_t slen = strlen(s);
    for (unsigned i = 0; i < e->n_values; i++) {
        const char *n = e->values[i].name;
        size_t nlen = strlen(n);
        if (nlen > slen && n[nlen - slen - 1] == '_' && strcasecmp(n + nlen - slen, s) == 0) {
            *out = e->values[i].value;
            return 0;
        }
    }
    char msg[400];
    size_t o = (size_t)snprintf(msg, sizeof(msg), "unknown value '%s'; use one of:", s);
    for (unsigned i = 0; i < e->n_values && o < sizeof(msg); i++)
        o += (size_t)snprintf(msg + o, sizeof(msg) - o, " %s", e->values[i].name);
    return bad(c, msg);
}

static int message_from_json(ctx_t *c, const ProtobufCMessageDescriptor *d, const json_t *j,
                             ProtobufCMessage **out);

static int value_from_json(ctx_t *c, const ProtobufCFieldDescriptor *f, const json_t *j, void *slot)
{
    int64_t i;
    uint64_t u;
    int rc;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
        if ((rc = json_to_i64(c, j, INT32_MIN, INT32_MAX, &i)))
            return rc;
        *(int32_t *)slot = (int32_t)i;
        return 0;
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
        if ((rc = json_to_u64(c, j, UINT32_MAX, &u)))
            return rc;
        *(uint32_t *)slot = (uint32_t)u;
        return 0;
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
        if ((rc = json_to_i64(c, j, INT64_MIN, INT64_MAX, &i)))
            return rc;
        *(int64_t *)slot = i;
        return 0;
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
        if ((rc = json_to_u64(c, j, UINT64_MAX, &u)))
            return rc;
        *(uint64_t *)slot = u;
        return 0;
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        if (!json_is_number(j))
            return bad(c, "expected a number");
        if (f->type == PROTOBUF_C_TYPE_FLOAT)
            *(float *)slot = (float)json_number_value(j);
        else
            *(double *)slot = json_number_value(j);
        return 0;
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(j))
            return bad(c, "expected true or false");
        *(protobuf_c_boolean *)slot = json_is_true(j);
        return 0;
    case PROTOBUF_C_TYPE_ENUM:
        return enum_from_json(c, f->descriptor, j, (int *)slot);
    case PROTOBUF_C_TYPE_STRING: {
        if (!json_is_string(j))
            return bad(c, "expected a string");
        char *s = strdup(json_string_value(j)); /* freed by protobuf-c's default allocator */
        if (s == NULL)
            return tg_errf(c->err, c->errlen, TG_PBJSON_ENOMEM, "out of memory");
        *(char **)slot = s;
        return 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        if (!json_is_string(j))
            return bad(c, "expected a base64 string");
        const char *s = json_string_value(j);
        size_t n = strlen(s);
        if (n % 4 != 0)
            return bad(c, "base64 length must be a multiple of 4");
        uint8_t *data = malloc(n / 4 * 3 + 1); /* freed by protobuf-c's default allocator */
        if (data == NULL)
            return tg_errf(c->err, c->errlen, TG_PBJSON_ENOMEM, "out of memory");
        long len = tg_b64_decode(s, n, data);
        if (len < 0) {
            free(data);
            return bad(c, "invalid base64 (standard alphabet, padded, no whitespace)");
        }
        ProtobufCBinaryData *b = slot;
        b->data = data;
        b->len = (size_t)len;
        return 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        if (json_is_null(j))
            return 0;
        return message_from_json(c, f->descriptor, j, (ProtobufCMessage **)slot);
    }
    return bad(c, "unsupported field type");
}

static const ProtobufCFieldDescriptor *find_field(const ProtobufCMessageDescriptor *d, const char *key)
{
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(d, key);
    if (f == NULL) {
        char snake[256];
        camel_to_snake(key, snake, sizeof(snake));
        f = protobuf_c_message_descriptor_get_field_by_name(d, snake);
    }
    return f;
}

static int map_from_json(ctx_t *c, const ProtobufCFieldDescriptor *f, const json_t *j, char *base)
{
    if (!json_is_object(j))
        return bad(c, "expected an object (a map)");
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    size_t n = json_object_size(j);
    ProtobufCMessage **arr = calloc(n ? n : 1, sizeof(*arr));
    if (arr == NULL)
        return tg_errf(c->err, c->errlen, TG_PBJSON_ENOMEM, "out of memory");
    *(void **)(base + f->offset) = arr;
    const char *key;
    json_t *val;
    size_t k = 0;
    json_object_foreach((json_t *)j, key, val) {
        ProtobufCMessage *e = calloc(1, ed->sizeof_message);
        if (e == NULL)
            return tg_errf(c->err, c->errlen, TG_PBJSON_ENOMEM, "out of memory");
        ed->message_init(e);
        arr[k++] = e;
        *(size_t *)(base + f->quantifier_offset) = k;
        size_t old = path_push(c, key, 0);
        json_t *kj = json_string(key); /* integer keys parse from their decimal string */
        int rc = kj ? value_from_json(c, &ed->fields[0], kj, (char *)e + ed->fields[0].offset) : TG_PBJSON_ENOMEM;
        json_decref(kj);
        if (rc == 0)
            rc = value_from_json(c, &ed->fields[1], val, (char *)e + ed->fields[1].offset);
        path_pop(c, old);
        if (rc)
            return rc;
    }
    return 0;
}

static int message_from_json(ctx_t *c, const ProtobufCMessageDescriptor *d, const json_t *j,
                             ProtobufCMessage **out)
{
    if (!json_is_object(j))
        return bad(c, "expected an object");
    ProtobufCMessage *m = calloc(1, d->sizeof_message);
    if (m == NULL)
        return tg_errf(c->err, c->errlen, TG_PBJSON_ENOMEM, "out of memory");
    d->message_init(m);
    *out = m; /* freed by the caller on error too, partially filled */
    char *base = (char *)m;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)j, key, val) {
        const ProtobufCFieldDescriptor *f = find_field(d, key);
        size_t old = path_push(c, key, 0);
        int rc = 0;
        if (f == NULL) {
            rc = bad(c, "unknown field");
        } else if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t *which = (uint32_t *)(base + f->quantifier_offset);
            if (*which != 0 && *which != f->id)
                rc = bad(c, "only one member of a oneof may be set");
            else if (json_is_null(val))
                rc = 0;
            else {
                /* the case first: a member message filled part-way before
                 * a failure is then freed with the message (pbjson_fuzz
                 * found the leak) */
                *which = f->id;
                rc = value_from_json(c, f, val, base + f->offset);
            }
        } else if (is_map_field(f)) {
            rc = map_from_json(c, f, val, base);
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            if (!json_is_array(val)) {
                rc = bad(c, "expected an array");
            } else {
                size_t n = json_array_size(val), sz = tg_pbpack_elem_size(f->type);
                char *arr = calloc(n ? n : 1, sz);
                if (arr == NULL) {
                    rc = tg_errf(c->err, c->errlen, TG_PBJSON_ENOMEM, "out of memory");
                } else {
                    /* Zeroed slots are safe for protobuf-c to free, so the
                     * count is set first and a failure part-way frees all. */
                    *(void **)(base + f->offset) = arr;
                    *(size_t *)(base + f->quantifier_offset) = n;
                    for (size_t k = 0; k < n && rc == 0; k++) {
                        size_t o2 = path_push(c, NULL, (long)k);
                        json_t *el = json_array_get(val, k);
                        /* null unsets a singular message; an element of an
                         * array must be one (a NULL element crashed packing:
                         * pbjson_fuzz) */
                        if (f->type == PROTOBUF_C_TYPE_MESSAGE && json_is_null(el))
                            rc = bad(c, "expected an object, not null");
                        else
                            rc = value_from_json(c, f, el, arr + k * sz);
                        path_pop(c, o2);
                    }
                }
            }
        } else {
            if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
                f->type != PROTOBUF_C_TYPE_MESSAGE)
                *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
            rc = value_from_json(c, f, val, base + f->offset);
        }
        path_pop(c, old);
        if (rc)
            return rc;
    }
    return 0;
}

int tg_pbjson_from_json(const ProtobufCMessageDescriptor *d, const json_t *j, ProtobufCMessage **out,
                        char *err, size_t errlen)
{
    ctx_t c = {.err = err, .errlen = errlen, .path = ""};
    ProtobufCMessage *m = NULL;
    *out = NULL;
    int rc = message_from_json(&c, d, j, &m);
    if (rc) {
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
        return rc;
    }
    *out = m;
    return 0;
}

int tg_pbjson_loads(const ProtobufCMessageDescriptor *d, const char *text, size_t len, ProtobufCMessage **out,
                    char *err, size_t errlen)
{
    json_error_t je;
    *out = NULL;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (j == NULL)
        return tg_errf(err, errlen, TG_PBJSON_ESYNTAX, "invalid JSON at line %d, column %d: %s", je.line,
                       je.column, je.text);
    int rc = tg_pbjson_from_json(d, j, out, err, errlen);
    json_decref(j);
    return rc;
}
