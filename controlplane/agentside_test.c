/* agentside_test.c: unit tests of the agent side's pure parts: the identity
 * proof bytes and their verification with real Ed25519 keys, the cost
 * rounding rule, the route-type -> bucket map, price entry lookup, marker
 * keys, and the ledger row a LedgerEntry becomes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "controlplane/agentside.h"
#include "tollgate/v1/admin.pb-c.h"
#include "tollgate/v1/agent.pb-c.h"

static void test_proof_message(void **state)
{
    (void)state;
    tg_buf_t b;
    tg_buf_init(&b, 1024);
    assert_int_equal(cp_proof_message("agt_X", 0x0102030405060708LL, &b), 0);
    const char *want = "tollgate-agent-v1agt_X";
    assert_int_equal(b.b_len, strlen(want) + 8);
    assert_memory_equal(b.b_data, want, strlen(want));
    const uint8_t be[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    assert_memory_equal(b.b_data + strlen(want), be, 8);
    tg_buf_free(&b);
}

static void test_verify_raw(void **state)
{
    (void)state;
    tg_crypto_key_t *k = NULL;
    uint8_t pub[32], sig[64];
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_crypto_key_generate(&k, err, sizeof(err)), 0);
    tg_crypto_key_public(k, pub);
    const char *msg = "a usage batch";
    assert_int_equal(tg_crypto_sign(k, msg, strlen(msg), sig), 0);
    assert_int_equal(cp_verify_raw(pub, 32, msg, strlen(msg), sig, 64), 0);
    /* one flipped bit anywhere fails */
    sig[10] ^= 1;
    assert_int_not_equal(cp_verify_raw(pub, 32, msg, strlen(msg), sig, 64), 0);
    sig[10] ^= 1;
    assert_int_not_equal(cp_verify_raw(pub, 32, "a usage batcH", strlen(msg), sig, 64), 0);
    assert_int_not_equal(cp_verify_raw(pub, 31, msg, strlen(msg), sig, 64), 0);
    assert_int_not_equal(cp_verify_raw(pub, 32, msg, strlen(msg), sig, 63), 0);
    tg_crypto_key_free(k);
}

static void test_price_cost(void **state)
{
    (void)state;
    Tollgate__V1__PriceEntry pe = TOLLGATE__V1__PRICE_ENTRY__INIT;
    pe.input_per_mtok_nano = 2500000000LL;  /* $2.50 / 1M */
    pe.output_per_mtok_nano = 10000000000LL; /* $10 / 1M */
    /* 1000 in, 500 out at 1.0x: 2500 + 5000 = 7500 micro = 7,500,000 nano */
    assert_int_equal(cp_price_cost(&pe, 1000, 500, 0, 0, 0, 0), 7500000);
    assert_int_equal(cp_price_cost(&pe, 1000, 500, 0, 0, 0, 1000000), 7500000);
    /* rate 1.5x */
    assert_int_equal(cp_price_cost(&pe, 1000, 500, 0, 0, 0, 1500000), 11250000);
    /* rounding: 1 token at 1 nano/Mtok = 1e-6 nano -> 0; half up at 0.5 */
    Tollgate__V1__PriceEntry one = TOLLGATE__V1__PRICE_ENTRY__INIT;
    one.input_per_mtok_nano = 1;
    assert_int_equal(cp_price_cost(&one, 1, 0, 0, 0, 0, 0), 0);
    assert_int_equal(cp_price_cost(&one, 499999, 0, 0, 0, 0, 0), 0);
    assert_int_equal(cp_price_cost(&one, 500000, 0, 0, 0, 0, 0), 1);
    assert_int_equal(cp_price_cost(&one, 1500000, 0, 0, 0, 0, 0), 2);
    /* per request and per image are whole nano, scaled by the rate */
    Tollgate__V1__PriceEntry fl = TOLLGATE__V1__PRICE_ENTRY__INIT;
    fl.per_request_nano = 1000;
    fl.per_image_nano = 40000000;
    assert_int_equal(cp_price_cost(&fl, 0, 0, 0, 0, 2, 0), 80001000);
    assert_int_equal(cp_price_cost(&fl, 0, 0, 0, 0, 0, 500000), 500);
    /* huge values do not overflow the intermediate, and clamp */
    Tollgate__V1__PriceEntry big = TOLLGATE__V1__PRICE_ENTRY__INIT;
    big.output_per_mtok_nano = INT64_MAX;
    assert_int_equal(cp_price_cost(&big, 0, INT64_MAX, 0, 0, 0, 0), INT64_MAX);
    assert_int_equal(cp_price_cost(&big, 0, 1000000, 0, 0, 0, 0), INT64_MAX);
    /* negative counts count as zero */
    assert_int_equal(cp_price_cost(&pe, -5, 0, 0, 0, 0, 0), 0);
    assert_int_equal(cp_price_cost(NULL, 5, 5, 0, 0, 0, 0), 0);
}

static void test_bucket_for(void **state)
{
    (void)state;
    Tollgate__V1__Account a = TOLLGATE__V1__ACCOUNT__INIT;
    Tollgate__V1__BucketSpec credit = TOLLGATE__V1__BUCKET_SPEC__INIT, wallet = credit, vip = credit;
    credit.name = "credit";
    wallet.name = "wallet";
    vip.name = "vip";
    Tollgate__V1__BucketSpec *bs[] = {&credit, &wallet, &vip};
    a.buckets = bs;
    a.n_buckets = 3;
    assert_string_equal(cp_bucket_for(&a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_DIRECT), "credit");
    assert_string_equal(cp_bucket_for(&a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED), "wallet");
    assert_null(cp_bucket_for(&a, 0));
    Tollgate__V1__RouteBucket rb = TOLLGATE__V1__ROUTE_BUCKET__INIT;
    rb.route_type = TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED;
    rb.bucket = "vip";
    Tollgate__V1__RouteBucket *rbs[] = {&rb};
    a.route_buckets = rbs;
    a.n_route_buckets = 1;
    assert_string_equal(cp_bucket_for(&a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED), "vip");
    /* a map naming a bucket the account lacks pays from nothing */
    rb.bucket = "gone";
    assert_null(cp_bucket_for(&a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED));
    a.n_buckets = 1; /* only credit: no route type means the only bucket */
    a.n_route_buckets = 0;
    assert_string_equal(cp_bucket_for(&a, 0), "credit");
    assert_null(cp_bucket_for(&a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED));
    assert_null(cp_bucket_for(NULL, 1));
}

static void test_price_lookup(void **state)
{
    (void)state;
    Tollgate__V1__PriceEntry glob = TOLLGATE__V1__PRICE_ENTRY__INIT, exact = glob, direct = glob;
    glob.model = "gpt-4o*";
    exact.model = "gpt-4o-mini";
    direct.model = "gpt-4o-mini";
    direct.route_type = TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_DIRECT;
    Tollgate__V1__PriceEntry *pes[] = {&glob, &exact, &direct};
    Tollgate__V1__PriceCard card = TOLLGATE__V1__PRICE_CARD__INIT;
    card.entries = pes;
    card.n_entries = 3;
    assert_ptr_equal(cp_price_lookup(&card, "gpt-4o-mini", 1), &direct);
    assert_ptr_equal(cp_price_lookup(&card, "gpt-4o-mini", 2), &exact);
    assert_ptr_equal(cp_price_lookup(&card, "gpt-4o-2024", 2), &glob);
    assert_null(cp_price_lookup(&card, "claude-3", 1));
    assert_null(cp_price_lookup(NULL, "x", 1));
}

static void test_marker_keys(void **state)
{
    (void)state;
    char k[128];
    assert_int_equal(cp_batch_key("agt_1", 42, k, sizeof(k)),
                     (int)strlen("tg/settle/batch/agt_1/00000000000000000042"));
    assert_string_equal(k, "tg/settle/batch/agt_1/00000000000000000042");
    assert_true(cp_batch_key("agt_1", 42, k, 10) < 0);
    assert_true(cp_idem_key("acc_1", "topup-7", k, sizeof(k)) > 0);
    assert_string_equal(k, "tg/settle/idem/acc_1/topup-7");
    /* seq keys sort numerically */
    char a[128], b[128];
    cp_batch_key("agt_1", 9, a, sizeof(a));
    cp_batch_key("agt_1", 10, b, sizeof(b));
    assert_true(strcmp(a, b) < 0);
}

static void test_row_from_entry(void **state)
{
    (void)state;
    Tollgate__V1__UsageRecord r = TOLLGATE__V1__USAGE_RECORD__INIT;
    Tollgate__V1__TokenUsage u = TOLLGATE__V1__TOKEN_USAGE__INIT;
    u.input_tokens = 10;
    u.output_tokens = 20;
    r.usage = &u;
    r.key_id = "key_1";
    r.project_id = "prj_1";
    r.requested_model = "gpt-4o";
    r.route_type = TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED;
    r.upstream_cost_nano = 77;
    r.started_at_us = 5;
    r.price_version = 3;
    Tollgate__V1__LedgerEntry e = TOLLGATE__V1__LEDGER_ENTRY__INIT;
    e.kind = TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_USAGE;
    e.entry_id = "rec_1";
    e.amount_nano = -123;
    e.settled_at_us = 9;
    e.record = &r;
    tg_ledger_row_t row;
    cp_row_from_entry(&e, (const uint8_t *)"x", 1, &row);
    assert_int_equal(row.lr_kind, TG_LEDGER_USAGE);
    assert_string_equal(row.lr_record_id, "rec_1");
    assert_int_equal(row.lr_cost_nano, 123);
    assert_int_equal(row.lr_upstream_cost_nano, 77);
    assert_string_equal(row.lr_route_type, "pooled");
    assert_int_equal(row.lr_request_us, 5);
    assert_int_equal(row.lr_input_tokens, 10);
    assert_int_equal(row.lr_output_tokens, 20);
    assert_int_equal(row.lr_price_version, 3);
    /* a top-up credits: the debit column is negative */
    Tollgate__V1__LedgerEntry t = TOLLGATE__V1__LEDGER_ENTRY__INIT;
    t.kind = TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_TOPUP;
    t.entry_id = "top_1";
    t.amount_nano = 1000;
    cp_row_from_entry(&t, NULL, 0, &row);
    assert_int_equal(row.lr_kind, TG_LEDGER_TOPUP);
    assert_int_equal(row.lr_cost_nano, -1000);
    assert_int_equal(row.lr_request_us, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proof_message), cmocka_unit_test(test_verify_raw),
        cmocka_unit_test(test_price_cost),    cmocka_unit_test(test_bucket_for),
        cmocka_unit_test(test_price_lookup),  cmocka_unit_test(test_marker_keys),
        cmocka_unit_test(test_row_from_entry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
