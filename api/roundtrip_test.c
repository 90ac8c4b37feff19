/* Round-trips every message of package tollgate.v1: each field (recursively,
 * repeated fields with two elements, one member per oneof) is set to a value
 * that differs from its default, the message is packed and unpacked, and the
 * re-packed bytes must equal the first encoding. Walking protobuf-c's
 * descriptors means a message added to api/ is covered without new code. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "tollgate/v1/admin.pb-c.h"
#include "tollgate/v1/agent.pb-c.h"
#include "tollgate/v1/common.pb-c.h"
#include "tollgate/v1/config.pb-c.h"
#include "tollgate/v1/replica.pb-c.h"
#include "tollgate/v1/usage.pb-c.h"
#include "api/testing/pbfill.h"

#define all_messages tg_pbfill_all
#define N_MESSAGES tg_pbfill_count

static void test_every_message_round_trips(void **state)
{
    (void)state;
    assert_true(N_MESSAGES > 50);
    for (size_t i = 0; i < N_MESSAGES; i++) {
        const ProtobufCMessageDescriptor *d = all_messages[i];
        ProtobufCMessage *m = tg_pbfill_message(d, (unsigned)i);
        size_t n = protobuf_c_message_get_packed_size(m);
        if (d->n_fields > 0 && n == 0)
            fail_msg("%s packs to nothing", d->name);
        uint8_t *a = malloc(n + 1);
        assert_int_equal(protobuf_c_message_pack(m, a), n);

        ProtobufCMessage *u = protobuf_c_message_unpack(d, NULL, n, a);
        if (u == NULL)
            fail_msg("%s: unpack failed", d->name);
        assert_true(protobuf_c_message_check(u));
        size_t n2 = protobuf_c_message_get_packed_size(u);
        uint8_t *b = malloc(n2 + 1);
        assert_int_equal(protobuf_c_message_pack(u, b), n2);
        if (n != n2 || memcmp(a, b, n) != 0)
            fail_msg("%s: re-encoding differs (%zu vs %zu bytes)", d->name, n, n2);

        /* A truncated encoding must be rejected, never misread. */
        if (n > 1) {
            ProtobufCMessage *t = protobuf_c_message_unpack(d, NULL, n - 1, a);
            protobuf_c_message_free_unpacked(t, NULL); /* may parse if the cut ends a field */
        }
        free(a);
        free(b);
        protobuf_c_message_free_unpacked(u, NULL);
        protobuf_c_message_free_unpacked(m, NULL);
    }
}

/* The receipt fields DESIGN.md requires are present on UsageRecord. */
static void test_usage_record_carries_receipt_fields(void **state)
{
    (void)state;
    const char *required[] = {
        "record_id", "request_id", "agent_id", "region", "started_at_us", "key_id",
        "project_id", "account_id", "run_id", "client_ip", "requested_model",
        "route_model", "attempts", "channel_id", "upstream_model", "fallback_used",
        "route_type", "bucket", "usage", "price_version", "unit_prices", "cost_nano",
        "upstream_cost_nano", "client_status", "finish_reason", "stream",
    };
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        if (protobuf_c_message_descriptor_get_field_by_name(&tollgate__v1__usage_record__descriptor,
                                                            required[i]) == NULL)
            fail_msg("UsageRecord lacks %s", required[i]);
    }
    const char *attempt[] = {"channel_id", "upstream_model", "http_status", "error_class",
                             "latency_us", "ttft_us", "decision"};
    for (size_t i = 0; i < sizeof(attempt) / sizeof(attempt[0]); i++)
        assert_non_null(protobuf_c_message_descriptor_get_field_by_name(&tollgate__v1__attempt__descriptor,
                                                                        attempt[i]));
}

/* A signed batch keeps the exact signed bytes, whatever they contain. */
static void test_signed_batch_keeps_bytes(void **state)
{
    (void)state;
    Tollgate__V1__UsageRecord rec = TOLLGATE__V1__USAGE_RECORD__INIT;
    rec.record_id = "agent-1:42";
    rec.cost_nano = 1234567890123LL;
    Tollgate__V1__UsageRecord *recs[] = {&rec};
    Tollgate__V1__UsageBatch batch = TOLLGATE__V1__USAGE_BATCH__INIT;
    batch.agent_id = "agent-1";
    batch.sequence = 7;
    batch.n_records = 1;
    batch.records = recs;
    uint8_t buf[256];
    size_t n = tollgate__v1__usage_batch__pack(&batch, buf);

    Tollgate__V1__SignedUsageBatch sb = TOLLGATE__V1__SIGNED_USAGE_BATCH__INIT;
    sb.batch.data = buf;
    sb.batch.len = n;
    uint8_t out[512];
    size_t m = tollgate__v1__signed_usage_batch__pack(&sb, out);
    Tollgate__V1__SignedUsageBatch *u = tollgate__v1__signed_usage_batch__unpack(NULL, m, out);
    assert_non_null(u);
    assert_int_equal(u->batch.len, n);
    assert_memory_equal(u->batch.data, buf, n);
    Tollgate__V1__UsageBatch *ub = tollgate__v1__usage_batch__unpack(NULL, u->batch.len, u->batch.data);
    assert_non_null(ub);
    assert_int_equal(ub->sequence, 7);
    assert_int_equal(ub->n_records, 1);
    assert_string_equal(ub->records[0]->record_id, "agent-1:42");
    assert_int_equal(ub->records[0]->cost_nano, 1234567890123LL);
    tollgate__v1__usage_batch__free_unpacked(ub, NULL);
    tollgate__v1__signed_usage_batch__free_unpacked(u, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_message_round_trips),
        cmocka_unit_test(test_usage_record_carries_receipt_fields),
        cmocka_unit_test(test_signed_batch_keeps_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
