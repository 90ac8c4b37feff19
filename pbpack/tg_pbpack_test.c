/* tg_pbpack against protobuf-c: every message of api/ (pbfill: every field
 * set, recursively), then with fields zeroed in different patterns (the
 * fields proto3 leaves out), oneof cases cleared, long strings deep inside
 * (length prefixes of two and three bytes), appended after other bytes, and
 * out of room: the bytes must be protobuf-c's, exactly. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "api/testing/pbfill.h"
#include "pbpack/tg_pbpack.h"
#include "tollgate/v1/usage.pb-c.h"

/* protobuf-c's bytes and ours must agree, alone and after a prefix */
static void same_bytes(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *want = malloc(n ? n : 1);
    assert_non_null(want);
    assert_int_equal(protobuf_c_message_pack(m, want), n);
    tg_buf_t b;
    tg_buf_init(&b, SIZE_MAX);
    assert_int_equal(tg_pbpack(m, &b), 0);
    if (b.b_len != n || (n && memcmp(b.b_data, want, n) != 0))
        fail_msg("%s: %zu bytes packed, protobuf-c packs %zu (or they differ)", m->descriptor->name, b.b_len, n);
    tg_buf_reset(&b);
    assert_int_equal(tg_buf_puts(&b, "prefix"), 0);
    assert_int_equal(tg_pbpack(m, &b), 0);
    assert_int_equal(b.b_len, n + 6);
    assert_memory_equal(b.b_data, "prefix", 6);
    if (n)
        assert_memory_equal(b.b_data + 6, want, n);
    tg_buf_free(&b);
    free(want);
}

/* Sets field f of m to its zero (proto3 leaves it out), freeing what it
 * held so free_unpacked stays exact. Repeated fields keep their elements. */
static void zero_field(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    char *p = (char *)m + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t *c = (uint32_t *)((char *)m + f->quantifier_offset);
        if (*c == f->id && f->type != PROTOBUF_C_TYPE_MESSAGE && f->type != PROTOBUF_C_TYPE_STRING &&
            f->type != PROTOBUF_C_TYPE_BYTES) {
            *c = 0; /* a scalar member: no longer set at all */
        }
        return;
    }
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING:
        if (*(char **)p)
            **(char **)p = '\0';
        break;
    case PROTOBUF_C_TYPE_BYTES:
        ((ProtobufCBinaryData *)p)->len = 0;
        break;
    case PROTOBUF_C_TYPE_MESSAGE:
        if (*(ProtobufCMessage **)p) {
            protobuf_c_message_free_unpacked(*(ProtobufCMessage **)p, NULL);
            *(ProtobufCMessage **)p = NULL;
        }
        break;
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64: case PROTOBUF_C_TYPE_DOUBLE:
        memset(p, 0, 8);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        memset(p, 0, sizeof(protobuf_c_boolean));
        break;
    default:
        memset(p, 0, 4);
        break;
    }
}

/* Zeroes the fields whose index i has (i + pattern) % 3 == 0, recursively
 * into the messages that stay (pattern 3: every field). */
static void zero_some(ProtobufCMessage *m, unsigned pattern)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (pattern == 3 || (i + pattern) % 3 == 0) {
            zero_field(m, f);
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE && f->label != PROTOBUF_C_LABEL_REPEATED) {
            ProtobufCMessage *sub = *(ProtobufCMessage **)((char *)m + f->offset);
            int set = !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
                      *(uint32_t *)((char *)m + f->quantifier_offset) == f->id;
            if (sub && set)
                zero_some(sub, pattern);
        }
    }
}

static void test_every_message_every_pattern(void **state)
{
    (void)state;
    assert_true(tg_pbfill_count > 50);
    for (size_t i = 0; i < tg_pbfill_count; i++)
        for (unsigned seed = 0; seed < 3; seed++)
            for (unsigned pattern = 0; pattern < 5; pattern++) {
                ProtobufCMessage *m = tg_pbfill_message(tg_pbfill_all[i], seed);
                assert_non_null(m);
                if (pattern < 4)
                    zero_some(m, pattern);
                same_bytes(m);
                protobuf_c_message_free_unpacked(m, NULL);
            }
}

static char *text(size_t n, char c)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* A batch whose records hold long strings: record and batch lengths of two
 * and three varint bytes, widened after the record was written. */
static void test_long_nested_lengths(void **state)
{
    (void)state;
    const size_t sizes[] = {100, 126, 127, 128, 300, 16383, 16384, 70000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        Tollgate__V1__UsageBatch *b =
            (Tollgate__V1__UsageBatch *)tg_pbfill_message(&tollgate__v1__usage_batch__descriptor, (unsigned)k);
        assert_non_null(b);
        assert_true(b->n_records > 0);
        Tollgate__V1__UsageRecord *r = b->records[0];
        free(r->error_message);
        r->error_message = text(sizes[k], 'e');
        if (r->n_attempts) {
            free(r->attempts[0]->error_message);
            r->attempts[0]->error_message = text(sizes[k] / 2, 'a');
        }
        same_bytes(&b->base);
        protobuf_c_message_free_unpacked(&b->base, NULL);
    }
}

/* Out of room: an error, and the buffer as it was. */
static void test_too_big_leaves_the_buffer(void **state)
{
    (void)state;
    ProtobufCMessage *m = tg_pbfill_message(&tollgate__v1__usage_record__descriptor, 1);
    size_t n = protobuf_c_message_get_packed_size(m);
    tg_buf_t b;
    tg_buf_init(&b, n - 1 + 2);
    assert_int_equal(tg_buf_puts(&b, "ab"), 0);
    assert_int_equal(tg_pbpack(m, &b), TG_BUF_ETOOBIG);
    assert_int_equal(b.b_len, 2);
    assert_string_equal(b.b_data, "ab");
    tg_buf_free(&b);
    tg_buf_init(&b, n);
    assert_int_equal(tg_pbpack(m, &b), 0);
    assert_int_equal(b.b_len, n);
    tg_buf_free(&b);
    protobuf_c_message_free_unpacked(m, NULL);
}

/* A message carrying unknown fields goes through protobuf-c: still equal. */
static void test_unknown_fields_fall_back(void **state)
{
    (void)state;
    uint8_t wire[] = {0x0a, 0x02, 'i', 'd', 0xf8, 0x3e, 0x07}; /* record_id "id", then field 999 = 7 */
    Tollgate__V1__UsageRecord *r = tollgate__v1__usage_record__unpack(NULL, sizeof wire, wire);
    assert_non_null(r);
    assert_int_equal(r->base.n_unknown_fields, 1);
    same_bytes(&r->base);
    tg_buf_t b;
    tg_buf_init(&b, SIZE_MAX);
    assert_int_equal(tg_pbpack(&r->base, &b), 0);
    assert_int_equal(b.b_len, sizeof wire);
    assert_memory_equal(b.b_data, wire, sizeof wire);
    tg_buf_free(&b);
    tollgate__v1__usage_record__free_unpacked(r, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_message_every_pattern),
        cmocka_unit_test(test_long_nested_lengths),
        cmocka_unit_test(test_too_big_leaves_the_buffer),
        cmocka_unit_test(test_unknown_fields_fall_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
