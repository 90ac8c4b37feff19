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

#include <math.h>

#include "api/testing/pbfill.h"
#include "pbpack/testdata/alltypes.pb-c.h"
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
    if (n)
        assert_int_equal(b.b_data[n], '\0');
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

/* ---- every scalar type at its edges (pbpack/testdata/alltypes.proto) ---- */

static void test_every_scalar_type_at_its_edges(void **state)
{
    (void)state;
    static const int64_t ints[] = {0, 1, -1, 127, 128, -128, 16383, 16384, INT32_MAX, INT32_MIN,
                                   (int64_t)INT32_MAX + 1, INT64_MAX, INT64_MIN, -2};
    static const double reals[] = {0.0, -0.0, 1.5, -2.25, 1e300, -1e-300, INFINITY, NAN};
    char longstr[300];
    memset(longstr, 'q', sizeof longstr - 1);
    longstr[sizeof longstr - 1] = '\0';
    uint8_t raw[3] = {0, 0xff, 7};
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
        int64_t v = ints[k];
        double r = reals[k % (sizeof reals / sizeof reals[0])];
        Tgtest__Inner in = TGTEST__INNER__INIT, in2 = TGTEST__INNER__INIT;
        in.s = k % 2 ? longstr : "inner";
        in.z = v;
        int32_t r_i32[3] = {(int32_t)v, -1, 0};
        int64_t r_s64[3] = {v, INT64_MIN, 1};
        uint32_t r_f32[2] = {(uint32_t)v, 0};
        double r_db[3] = {r, 0.0, -0.0};
        protobuf_c_boolean r_b[3] = {1, 0, 1};
        Tgtest__Color r_color[3] = {(Tgtest__Color)(int32_t)v, TGTEST__COLOR__COLOR_RED, (Tgtest__Color)-1};
        int64_t r_unp[2] = {v, (int64_t)(0 - (uint64_t)v)};
        char *r_str[3] = {"a", "", k % 2 ? longstr : "b"}; /* protobuf-c sizes no NULL element */
        ProtobufCBinaryData r_by[2] = {{sizeof raw, raw}, {0, NULL}};
        Tgtest__Inner *r_inner[3] = {&in2, &in, &in2}; /* nor a NULL element here */
        Tgtest__All m = TGTEST__ALL__INIT;
        m.i32 = (int32_t)v;
        m.i64 = v;
        m.u32 = (uint32_t)v;
        m.u64 = (uint64_t)v;
        m.s32 = (int32_t)v;
        m.s64 = v;
        m.f32 = (uint32_t)v;
        m.f64 = (uint64_t)v;
        m.sf32 = (int32_t)v;
        m.sf64 = v;
        m.fl = isfinite(r) && fabs(r) > 1e30 ? (float)(r > 0 ? 1e30 : -1e30) : (float)r; /* in float range */
        m.db = r;
        m.b = (protobuf_c_boolean)(v & 1);
        m.color = (Tgtest__Color)(int32_t)v; /* negative and unknown values too */
        m.str = k % 3 == 0 ? NULL : k % 3 == 1 ? "" : longstr;
        m.by = (ProtobufCBinaryData){k % 2 ? sizeof raw : 0, raw};
        m.inner = k % 4 == 3 ? NULL : &in;
        size_t nr = k % 4; /* 0..3 elements each, so empty arrays come too */
        m.n_r_i32 = nr < 3 ? nr : 3, m.r_i32 = r_i32;
        m.n_r_s64 = nr < 3 ? nr : 3, m.r_s64 = r_s64;
        m.n_r_f32 = nr < 2 ? nr : 2, m.r_f32 = r_f32;
        m.n_r_db = nr < 3 ? nr : 3, m.r_db = r_db;
        m.n_r_b = nr < 3 ? nr : 3, m.r_b = r_b;
        m.n_r_color = nr < 3 ? nr : 3, m.r_color = r_color;
        m.n_r_i64_unpacked = nr < 2 ? nr : 2, m.r_i64_unpacked = r_unp;
        m.n_r_str = nr < 3 ? nr : 3, m.r_str = r_str;
        m.n_r_by = nr < 2 ? nr : 2, m.r_by = r_by;
        m.n_r_inner = nr < 3 ? nr : 3, m.r_inner = r_inner;
        /* the oneof: none, each member (scalars written even at 0; a NULL
         * string or message left out) */
        switch (k % 7) {
        case 0: m.pick_case = TGTEST__ALL__PICK__NOT_SET; break;
        case 1: m.pick_case = TGTEST__ALL__PICK_O_STR; m.o_str = "pick"; break;
        case 2: m.pick_case = TGTEST__ALL__PICK_O_STR; m.o_str = NULL; break;
        case 3: m.pick_case = TGTEST__ALL__PICK_O_INNER; m.o_inner = &in; break;
        case 4: m.pick_case = TGTEST__ALL__PICK_O_S32; m.o_s32 = 0; break;
        case 5: m.pick_case = TGTEST__ALL__PICK_O_DB; m.o_db = r; break;
        default: m.pick_case = TGTEST__ALL__PICK_O_INNER; m.o_inner = NULL; break;
        }
        same_bytes(&m.base);
    }
}

/* Every allocation that fails, and every size limit short of the whole:
 * the error, and the buffer's bytes and length as they were. */
static void test_failures_leave_the_buffer(void **state)
{
    (void)state;
    ProtobufCMessage *m = tg_pbfill_message(&tollgate__v1__usage_batch__descriptor, 2);
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *want = malloc(n);
    assert_non_null(want);
    protobuf_c_message_pack(m, want);
    int done = 0;
    for (long k = 0; k < 64 && !done; k++) {
        tg_buf_t b;
        tg_buf_init(&b, SIZE_MAX);
        assert_int_equal(tg_buf_puts(&b, "x"), 0); /* 64 bytes allocated before the hook */
        tg_alloc_fail_after(k);
        int rc = tg_pbpack(m, &b);
        tg_alloc_fail_after(-1);
        if (rc == 0) {
            assert_int_equal(b.b_len, n + 1);
            assert_memory_equal(b.b_data + 1, want, n);
            done = 1;
        } else {
            assert_int_equal(rc, TG_BUF_ENOMEM);
            assert_int_equal(b.b_len, 1);
            assert_string_equal(b.b_data, "x");
        }
        tg_buf_free(&b);
    }
    assert_true(done);
    for (size_t max = 0; max < n; max += (max < 300 ? 1 : 97)) {
        tg_buf_t b;
        tg_buf_init(&b, max);
        assert_int_equal(tg_pbpack(m, &b), TG_BUF_ETOOBIG);
        assert_int_equal(b.b_len, 0);
        tg_buf_free(&b);
    }
    free(want);
    protobuf_c_message_free_unpacked(m, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_message_every_pattern),
        cmocka_unit_test(test_long_nested_lengths),
        cmocka_unit_test(test_too_big_leaves_the_buffer),
        cmocka_unit_test(test_unknown_fields_fall_back),
        cmocka_unit_test(test_every_scalar_type_at_its_edges),
        cmocka_unit_test(test_failures_leave_the_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
