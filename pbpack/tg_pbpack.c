/* tg_pbpack: one-pass protobuf-c packing, byte-identical to protobuf-c's
 * own (see tg_pbpack.h). The rules mirror protobuf-c 1.4's pack(): fields
 * in descriptor order, a proto3 field left out when it is "zeroish" (0,
 * false, an empty or NULL string, empty bytes, a NULL message), a oneof
 * member written when its case names it, repeated scalars packed when the
 * descriptor says so, negative int32 and enum values as 10-byte varints. */
#include "pbpack/tg_pbpack.h"

#include <stdint.h>
#include <string.h>

enum { UNSUPPORTED = 1 }; /* a shape left to protobuf-c */

/* Room for n more bytes at b_data + b_len (the fast path skips the call). */
static inline int room(tg_buf_t *b, size_t n)
{
    return b->b_len + n < b->b_cap ? 0 : tg_buf_reserve(b, n);
}

/* Whether the buffer has room for up to `bound` more bytes (and its NUL):
 * callers test a tag's and a value's longest encoding first and measure
 * them only when it has not (the reserve then asks for what they take). */
#define MAX_VARINT 10
static inline int fits(const tg_buf_t *b, size_t bound)
{
    return b->b_len + bound < b->b_cap;
}

static inline size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline void put_varint(tg_buf_t *b, uint64_t v)
{
    uint8_t *p = (uint8_t *)b->b_data + b->b_len;
    size_t i = 0;
    while (v >= 0x80) {
        p[i++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[i++] = (uint8_t)v;
    b->b_len += i;
}

static inline void put_fixed(tg_buf_t *b, uint64_t v, size_t n)
{
    uint8_t *p = (uint8_t *)b->b_data + b->b_len;
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    b->b_len += n;
}

static inline size_t elem_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64: case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    default:
        return 4;
    }
}

size_t tg_pbpack_elem_size(ProtobufCType t)
{
    return elem_size(t);
}

/* A scalar's wire type (0 varint, 1 fixed64, 5 fixed32) and its value as
 * written: the varint's value, or the fixed bytes as an integer. */
static int scalar(ProtobufCType t, const void *p, uint64_t *v)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_ENUM: {
        int32_t x;
        memcpy(&x, p, 4);
        *v = (uint64_t)(int64_t)x; /* negative: sign-extended, 10 bytes */
        return 0;
    }
    case PROTOBUF_C_TYPE_SINT32: {
        int32_t x;
        memcpy(&x, p, 4);
        *v = ((uint32_t)x << 1) ^ -((uint32_t)x >> 31);
        return 0;
    }
    case PROTOBUF_C_TYPE_UINT32: {
        uint32_t x;
        memcpy(&x, p, 4);
        *v = x;
        return 0;
    }
    case PROTOBUF_C_TYPE_SINT64: {
        int64_t x;
        memcpy(&x, p, 8);
        *v = ((uint64_t)x << 1) ^ -((uint64_t)x >> 63);
        return 0;
    }
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_UINT64:
        memcpy(v, p, 8);
        return 0;
    case PROTOBUF_C_TYPE_BOOL:
        *v = *(const protobuf_c_boolean *)p ? 1 : 0;
        return 0;
    case PROTOBUF_C_TYPE_FIXED32: case PROTOBUF_C_TYPE_SFIXED32: case PROTOBUF_C_TYPE_FLOAT: {
        uint32_t x;
        memcpy(&x, p, 4);
        *v = x;
        return 5;
    }
    default: /* FIXED64, SFIXED64, DOUBLE */
        memcpy(v, p, 8);
        return 1;
    }
}

static size_t scalar_len(int wt, uint64_t v)
{
    return wt == 0 ? varint_len(v) : wt == 5 ? 4 : 8;
}

static int pack_msg(const ProtobufCMessage *m, tg_buf_t *b);

/* One value of field f (tag and all): a scalar, string, bytes or message
 * (a NULL string or message is written empty, as protobuf-c does). */
static int put_value(const ProtobufCFieldDescriptor *f, const void *p, tg_buf_t *b)
{
    uint64_t tag = (uint64_t)f->id << 3;
    const void *data = NULL;
    size_t n = 0;
    int rc;
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING:
        data = *(char *const *)p;
        n = data ? strlen(data) : 0;
        break;
    case PROTOBUF_C_TYPE_BYTES:
        data = ((const ProtobufCBinaryData *)p)->data;
        n = ((const ProtobufCBinaryData *)p)->len;
        break;
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        if (!fits(b, MAX_VARINT + 1) && (rc = room(b, varint_len(tag | 2) + 1)) != 0)
            return rc;
        put_varint(b, tag | 2);
        size_t at = b->b_len++; /* a one-byte length, widened below if need be */
        rc = sub ? pack_msg(sub, b) : 0;
        if (rc)
            return rc;
        size_t len = b->b_len - at - 1, vl = varint_len(len);
        if (vl > 1) {
            if ((rc = room(b, vl - 1)) != 0)
                return rc;
            memmove(b->b_data + at + vl, b->b_data + at + 1, len);
            size_t end = b->b_len + vl - 1;
            b->b_len = at;
            put_varint(b, len);
            b->b_len = end;
        } else {
            b->b_data[at] = (char)len;
        }
        return 0;
    }
    default: {
        uint64_t v;
        int wt = scalar(f->type, p, &v);
        if (!fits(b, 2 * MAX_VARINT) &&
            (rc = room(b, varint_len(tag | (uint64_t)wt) + scalar_len(wt, v))) != 0)
            return rc;
        put_varint(b, tag | (uint64_t)wt);
        if (wt == 0)
            put_varint(b, v);
        else
            put_fixed(b, v, wt == 5 ? 4 : 8);
        return 0;
    }
    }
    if ((n > b->b_cap || !fits(b, 2 * MAX_VARINT + n)) &&
        (rc = room(b, varint_len(tag | 2) + varint_len(n) + n)) != 0)
        return rc;
    put_varint(b, tag | 2);
    put_varint(b, n);
    if (n)
        memcpy(b->b_data + b->b_len, data, n);
    b->b_len += n;
    return 0;
}

/* protobuf-c's field_is_zeroish */
static int zeroish(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_BOOL:
        return *(const protobuf_c_boolean *)p == 0;
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)p == 0;
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)p == 0;
    case PROTOBUF_C_TYPE_STRING:
        return *(char *const *)p == NULL || **(char *const *)p == '\0';
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len == 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(const void *const *)p == NULL;
    default:
        return elem_size(f->type) == 8 ? *(const uint64_t *)p == 0 : *(const uint32_t *)p == 0;
    }
}

static int put_repeated(const ProtobufCFieldDescriptor *f, size_t count, const char *arr, tg_buf_t *b)
{
    size_t es = elem_size(f->type);
    if (!(f->flags & PROTOBUF_C_FIELD_FLAG_PACKED)) {
        for (size_t i = 0; i < count; i++) {
            int rc = put_value(f, arr + i * es, b);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_BYTES || f->type == PROTOBUF_C_TYPE_MESSAGE)
        return UNSUPPORTED;
    uint64_t v;
    size_t payload = 0;
    int rc;
    for (size_t i = 0; i < count; i++) {
        int wt = scalar(f->type, arr + i * es, &v);
        payload += scalar_len(wt, v);
    }
    uint64_t tag = ((uint64_t)f->id << 3) | 2;
    if ((rc = room(b, varint_len(tag) + varint_len(payload) + payload)) != 0)
        return rc;
    put_varint(b, tag);
    put_varint(b, payload);
    for (size_t i = 0; i < count; i++) {
        int wt = scalar(f->type, arr + i * es, &v);
        if (wt == 0)
            put_varint(b, v);
        else
            put_fixed(b, v, wt == 5 ? 4 : 8);
    }
    return 0;
}

static int pack_msg(const ProtobufCMessage *m, tg_buf_t *b)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (m->n_unknown_fields)
        return UNSUPPORTED;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *p = (const char *)m + f->offset;
        int rc = 0;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            if (*(const uint32_t *)((const char *)m + f->quantifier_offset) != f->id)
                continue;
            if ((f->type == PROTOBUF_C_TYPE_MESSAGE || f->type == PROTOBUF_C_TYPE_STRING) &&
                (*(const void *const *)p == NULL || *(const void *const *)p == f->default_value))
                continue;
            rc = put_value(f, p, b);
        } else if (f->label == PROTOBUF_C_LABEL_NONE) {
            if (zeroish(f, p))
                continue;
            rc = put_value(f, p, b);
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t count = *(const size_t *)((const char *)m + f->quantifier_offset);
            if (count == 0)
                continue;
            rc = put_repeated(f, count, *(char *const *)p, b);
        } else {
            return UNSUPPORTED; /* proto2's required and optional */
        }
        if (rc)
            return rc;
    }
    return 0;
}

int tg_pbpack(const ProtobufCMessage *m, tg_buf_t *out)
{
    size_t start = out->b_len;
    int rc = pack_msg(m, out);
    if (rc == UNSUPPORTED) {
        out->b_len = start;
        size_t n = protobuf_c_message_get_packed_size(m);
        if ((rc = tg_buf_reserve(out, n)) == 0) {
            protobuf_c_message_pack(m, (uint8_t *)out->b_data + start);
            out->b_len = start + n;
        }
    }
    if (rc) {
        out->b_len = start;
        if (out->b_data)
            out->b_data[start] = '\0';
        return rc;
    }
    if (out->b_data)
        out->b_data[out->b_len] = '\0';
    return 0;
}
