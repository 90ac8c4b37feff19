/* Unit tests for tg_pbjson: every tollgate.v1 message survives JSON and back
 * byte for byte; bad input names the field; redaction hides secrets; a
 * string that is not UTF-8 comes out with U+FFFD instead of failing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "api/testing/pbfill.h"
#include "base/tg_base.h"
#include "pbjson/tg_pbjson.h"
#include "tollgate/v1/admin.pb-c.h"
#include "tollgate/v1/agent.pb-c.h"
#include "tollgate/v1/config.pb-c.h"

static void test_every_message_round_trips_through_json(void **state)
{
    (void)state;
    for (size_t i = 0; i < tg_pbfill_count; i++) {
        const ProtobufCMessageDescriptor *d = tg_pbfill_all[i];
        ProtobufCMessage *m = tg_pbfill_message(d, (unsigned)i);
        char *text = tg_pbjson_dumps(m, NULL);
        assert_non_null(text);
        ProtobufCMessage *back = NULL;
        char err[TG_ERRLEN] = "";
        int rc = tg_pbjson_loads(d, text, strlen(text), &back, err, sizeof(err));
        if (rc != 0)
            fail_msg("%s: %s\n%s", d->name, err, text);
        size_t n1 = protobuf_c_message_get_packed_size(m), n2 = protobuf_c_message_get_packed_size(back);
        uint8_t *a = malloc(n1 + 1), *b = malloc(n2 + 1);
        protobuf_c_message_pack(m, a);
        protobuf_c_message_pack(back, b);
        if (n1 != n2 || memcmp(a, b, n1) != 0)
            fail_msg("%s: differs after JSON round trip\n%s", d->name, text);
        free(a);
        free(b);
        free(text);
        protobuf_c_message_free_unpacked(back, NULL);
        protobuf_c_message_free_unpacked(m, NULL);
    }
}

static ProtobufCMessage *load_ok(const ProtobufCMessageDescriptor *d, const char *json)
{
    ProtobufCMessage *m = NULL;
    char err[TG_ERRLEN] = "";
    int rc = tg_pbjson_loads(d, json, strlen(json), &m, err, sizeof(err));
    if (rc != 0)
        fail_msg("unexpected error: %s", err);
    return m;
}

static void expect_error(const ProtobufCMessageDescriptor *d, const char *json, int code, const char *needle)
{
    ProtobufCMessage *m = (ProtobufCMessage *)1;
    char err[TG_ERRLEN] = "";
    int rc = tg_pbjson_loads(d, json, strlen(json), &m, err, sizeof(err));
    assert_int_equal(rc, code);
    assert_null(m);
    if (strstr(err, needle) == NULL)
        fail_msg("error '%s' lacks '%s'", err, needle);
}

static void test_operator_friendly_input(void **state)
{
    (void)state;
    const char *json = "{\"model\":\"gpt-4o\",\"tiers\":[{\"targets\":[{\"channelId\":\"ch1\",\"upstream_model\":"
                       "\"gpt-4o-2024\",\"weight\":3}]}],\"policy\":{\"max_attempts\":4,\"retry_on_429\":true},"
                       "\"native_protocol\":\"openai\",\"default_max_output_tokens\":\"4096\",\"labels\":{\"team\":\"ml\"}}";
    Tollgate__V1__ModelRoute *r = (Tollgate__V1__ModelRoute *)load_ok(&tollgate__v1__model_route__descriptor, json);
    assert_string_equal(r->model, "gpt-4o");
    assert_int_equal(r->n_tiers, 1);
    assert_string_equal(r->tiers[0]->targets[0]->channel_id, "ch1"); /* camelCase accepted */
    assert_int_equal(r->tiers[0]->targets[0]->weight, 3);
    assert_int_equal(r->policy->max_attempts, 4);
    assert_true(r->policy->retry_on_429);
    assert_int_equal(r->native_protocol, TOLLGATE__V1__CLIENT_PROTOCOL__CLIENT_PROTOCOL_OPENAI); /* short enum name */
    assert_int_equal(r->default_max_output_tokens, 4096);                                        /* int64 as string */
    assert_int_equal(r->n_labels, 1);
    assert_string_equal(r->labels[0]->value, "ml");

    /* Output: int64 as a string, enums by full name, defaults skipped. */
    char *out = tg_pbjson_dumps(&r->base, NULL);
    assert_non_null(strstr(out, "\"default_max_output_tokens\":\"4096\""));
    assert_non_null(strstr(out, "\"native_protocol\":\"CLIENT_PROTOCOL_OPENAI\""));
    assert_null(strstr(out, "deprecated_at_us"));
    free(out);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* Large nano amounts survive exactly (no double rounding). */
    Tollgate__V1__BalanceChangeRequest *b = (Tollgate__V1__BalanceChangeRequest *)load_ok(
        &tollgate__v1__balance_change_request__descriptor, "{\"amount_nano\":\"9223372036854775807\"}");
    assert_int_equal(b->amount_nano, INT64_MAX);
    protobuf_c_message_free_unpacked(&b->base, NULL);
}

static void test_errors_name_the_field(void **state)
{
    (void)state;
    const ProtobufCMessageDescriptor *route = &tollgate__v1__model_route__descriptor;
    expect_error(route, "{\"modle\":\"x\"}", TG_PBJSON_EINVALID, "modle: unknown field");
    expect_error(route, "{\"tiers\":[{\"targets\":[{\"weight\":1},{\"weight\":\"heavy\"}]}]}", TG_PBJSON_EINVALID,
                 "tiers[0].targets[1].weight: expected");
    expect_error(route, "{\"tiers\":[{\"targets\":[{\"weight\":-1}]}]}", TG_PBJSON_EINVALID, "weight");
    expect_error(route, "{\"native_protocol\":\"grpc\"}", TG_PBJSON_EINVALID,
                 "unknown value 'grpc'; use one of: CLIENT_PROTOCOL_UNSPECIFIED");
    expect_error(route, "{\"model\":\"x\",", TG_PBJSON_ESYNTAX, "line 1");
    expect_error(route, "[1,2]", TG_PBJSON_EINVALID, "expected an object");
    expect_error(route, "{\"labels\":[\"a\"]}", TG_PBJSON_EINVALID, "labels: expected an object");
    expect_error(&tollgate__v1__api_key__descriptor, "{\"secret_sha256\":\"abc\"}", TG_PBJSON_EINVALID,
                 "secret_sha256: base64");
    expect_error(&tollgate__v1__api_key__descriptor, "{\"secret_sha256\":\"QU J\"}", TG_PBJSON_EINVALID,
                 "secret_sha256: invalid base64");
    expect_error(&tollgate__v1__api_key__descriptor, "{\"expires_at_us\":\"12x\"}", TG_PBJSON_EINVALID,
                 "expires_at_us: expected an integer");
    expect_error(&tollgate__v1__sync_message__descriptor, "{\"heartbeat\":{},\"update\":{}}", TG_PBJSON_EINVALID,
                 "only one member of a oneof");
    expect_error(&tollgate__v1__price_card__descriptor, "{\"entries\":[null]}", TG_PBJSON_EINVALID,
                 "entries[0]: expected an object, not null");
}

static void test_redaction(void **state)
{
    (void)state;
    Tollgate__V1__Channel ch = TOLLGATE__V1__CHANNEL__INIT;
    ch.name = "openai-main";
    ch.credential = "sk-live-secret";
    static const char *const redact[] = {"credential", NULL};
    tg_pbjson_opts_t o = {.po_flags = 0, .po_redact = redact};
    char *s = tg_pbjson_dumps(&ch.base, &o);
    assert_null(strstr(s, "sk-live-secret"));
    assert_non_null(strstr(s, "\"credential\":\"<redacted>\""));
    free(s);
    tg_pbjson_opts_t all = {.po_flags = TG_PBJSON_DEFAULTS, .po_redact = NULL};
    s = tg_pbjson_dumps(&ch.base, &all);
    assert_non_null(strstr(s, "\"weight\":0"));
    free(s);
}

static void test_invalid_utf8_replaced(void **state)
{
    (void)state;
    /* a message cut mid-character, a stray byte, an overlong '/', a
     * surrogate, a map key with a bad byte: the row still reads */
    Tollgate__V1__ModelRoute r = TOLLGATE__V1__MODEL_ROUTE__INIT;
    Tollgate__V1__ModelRoute__LabelsEntry le = TOLLGATE__V1__MODEL_ROUTE__LABELS_ENTRY__INIT;
    Tollgate__V1__ModelRoute__LabelsEntry *les[] = {&le};
    r.model = "caf\xc3\xa9 \xe2\x82";
    r.replacement_model = "a\xff" "b\xc0\xaf" "c\xed\xa0\x80" "d";
    r.encoding = "ok \xe2\x82\xac \xf0\x9f\x98\x80";
    le.key = "k\x80";
    le.value = "v";
    r.labels = les;
    r.n_labels = 1;
    char *s = tg_pbjson_dumps(&r.base, NULL);
    assert_non_null(s);
    assert_non_null(strstr(s, "\"model\":\"caf\xc3\xa9 \xef\xbf\xbd\xef\xbf\xbd\""));
    assert_non_null(strstr(s, "\"replacement_model\":\"a\xef\xbf\xbd" "b\xef\xbf\xbd\xef\xbf\xbd" "c"
                              "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "d\""));
    assert_non_null(strstr(s, "\"encoding\":\"ok \xe2\x82\xac \xf0\x9f\x98\x80\"")); /* valid: unchanged */
    assert_non_null(strstr(s, "\"k\xef\xbf\xbd\":\"v\""));
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_message_round_trips_through_json),
        cmocka_unit_test(test_operator_friendly_input),
        cmocka_unit_test(test_errors_name_the_field),
        cmocka_unit_test(test_redaction),
        cmocka_unit_test(test_invalid_utf8_replaced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
