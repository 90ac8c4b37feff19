/* pbfill: builds protobuf-c messages whose every field holds a value that
 * differs from its default (recursively; repeated fields get two elements;
 * one member per oneof), by walking the descriptors. Test support for the
 * round-trip tests of api/ and pbjson/. */
#include "api/testing/pbfill.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pbpack/tg_pbpack.h"
#include "tollgate/v1/admin.pb-c.h"
#include "tollgate/v1/agent.pb-c.h"
#include "tollgate/v1/common.pb-c.h"
#include "tollgate/v1/config.pb-c.h"
#include "tollgate/v1/replica.pb-c.h"
#include "tollgate/v1/usage.pb-c.h"

static ProtobufCMessage *fill_message(const ProtobufCMessageDescriptor *d, unsigned depth, unsigned seed);

/* Writes one non-default value of field f into slot. */
static void fill_value(const ProtobufCFieldDescriptor *f, void *slot, unsigned depth, unsigned seed)
{
    uint64_t v = (uint64_t)f->id * 1000003u + seed + 1;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
        *(int32_t *)slot = -(int32_t)(v % 100000) - 1;
        break;
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
        *(uint32_t *)slot = (uint32_t)(v % 4000000000u) + 1;
        break;
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
        *(int64_t *)slot = -(int64_t)(v * 7919u) - 1; /* negative: exercises 10-byte varints */
        break;
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
        *(uint64_t *)slot = UINT64_MAX - v;
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        *(float *)slot = (float)v + 0.5f;
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        *(double *)slot = (double)v + 0.25;
        break;
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)slot = 1;
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *e = f->descriptor;
        if (e->n_values < 2) {
            *(int *)slot = e->values[0].value;
            break;
        }
        *(int *)slot = e->values[1 + seed % (e->n_values - 1)].value;
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        char *s = malloc(48);
        snprintf(s, 48, "%s-\xc3\xa9-%u", f->name, seed); /* UTF-8 included */
        *(char **)slot = s;
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData *b = slot;
        b->len = 33;
        b->data = malloc(b->len);
        for (size_t i = 0; i < b->len; i++)
            b->data[i] = (uint8_t)(i * 37 + seed); /* includes 0x00 and 0xff */
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        *(ProtobufCMessage **)slot = fill_message(f->descriptor, depth + 1, seed + 1);
        break;
    }
}

static ProtobufCMessage *fill_message(const ProtobufCMessageDescriptor *d, unsigned depth, unsigned seed)
{
    ProtobufCMessage *m = calloc(1, d->sizeof_message);
    d->message_init(m);
    if (depth > 6)
        return m; /* no recursive messages today; a guard if one appears */
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        char *base = (char *)m;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t *which = (uint32_t *)(base + f->quantifier_offset);
            if (*which != 0)
                continue; /* one member per oneof */
            *which = f->id;
        } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL &&
                   f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE) {
            *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t sz = tg_pbpack_elem_size(f->type);
            void *arr = calloc(2, sz);
            for (unsigned k = 0; k < 2; k++)
                fill_value(f, (char *)arr + k * sz, depth, seed + k);
            *(size_t *)(base + f->quantifier_offset) = 2;
            *(void **)(base + f->offset) = arr;
        } else {
            fill_value(f, base + f->offset, depth, seed);
        }
    }
    return m;
}

ProtobufCMessage *tg_pbfill_message(const ProtobufCMessageDescriptor *d, unsigned seed)
{
    return fill_message(d, 0, seed);
}

const ProtobufCMessageDescriptor *const tg_pbfill_all[] = {
#include "api/descriptor_list.inc"
};
const size_t tg_pbfill_count = sizeof(tg_pbfill_all) / sizeof(tg_pbfill_all[0]);
