/* admin_test.c: unit tests of the admin side's pure parts: the admin-token
 * file parser and bearer matching, page tokens, CSV escaping and rows,
 * RFC 3339 times, and the validators' messages (each names the field). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "controlplane/admin_int.h"

/* ---- token files ------------------------------------------------------------------ */

static void test_tokens_parse(void **state)
{
    (void)state;
    tg_cp_admin_token_t *t = NULL;
    size_t n = 0;
    char err[TG_ERRLEN] = "";
    const char *text = "# admin tokens\n"
                       "\n"
                       "ops   admin   tg-admin-0123456789abcdef  # the operator\n"
                       "bot pricing sha256:"
                       "0000000000000000000000000000000000000000000000000000000000000001\r\n"
                       "\tviewer reader reader-token-0123456789\n";
    assert_int_equal(tg_cp_tokens_parse(text, &t, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(t[0].at_name, "ops");
    assert_int_equal(t[0].at_role, TG_CP_ROLE_ADMIN);
    assert_int_equal(t[1].at_role, TG_CP_ROLE_PRICING);
    assert_int_equal(t[1].at_sha256[31], 1);
    assert_int_equal(t[1].at_sha256[0], 0);
    assert_string_equal(t[2].at_name, "viewer");
    assert_int_equal(t[2].at_role, TG_CP_ROLE_READER);
    {
        uint8_t h[32];
        tg_crypto_sha256("tg-admin-0123456789abcdef", 25, h);
        assert_memory_equal(h, t[0].at_sha256, 32);
    }
    /* bearer matching, constant-time compare over every token */
    {
        tg_cp_t cp;
        tg_cp_admin_token_t got;
        memset(&cp, 0, sizeof cp);
        assert_int_equal(tg_cp_auth_lookup(&cp, "Bearer tg-admin-0123456789abcdef", &got), 2);
        cp.cp_tokens = t;
        cp.cp_ntokens = n;
        assert_int_equal(tg_cp_auth_lookup(&cp, "Bearer tg-admin-0123456789abcdef", &got), 0);
        assert_string_equal(got.at_name, "ops");
        assert_int_equal(tg_cp_auth_lookup(&cp, "bearer reader-token-0123456789", &got), 0);
        assert_string_equal(got.at_name, "viewer");
        assert_int_equal(tg_cp_auth_lookup(&cp, "Bearer tg-admin-0123456789abcdeF", &got), 1);
        assert_int_equal(tg_cp_auth_lookup(&cp, "tg-admin-0123456789abcdef", &got), 1);
        assert_int_equal(tg_cp_auth_lookup(&cp, "Bearer ", &got), 1);
        assert_int_equal(tg_cp_auth_lookup(&cp, NULL, &got), 1);
    }
    tg_free(t);
}

static void expect_parse_error(const char *text, const char *want)
{
    tg_cp_admin_token_t *t = NULL;
    size_t n = 0;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_cp_tokens_parse(text, &t, &n, err, sizeof err), -1);
    assert_null(t);
    if (!strstr(err, want)) fail_msg("error '%s' does not contain '%s'", err, want);
}

static void test_tokens_errors(void **state)
{
    (void)state;
    expect_parse_error("ops admin\n", "line 1: expected 'name role token'");
    expect_parse_error("ops admin tok-0123456789abcdef extra\n", "line 1: expected");
    expect_parse_error("\nops root tok-0123456789abcdef\n", "line 2: role 'root' must be admin, pricing or reader");
    expect_parse_error("o/ps admin tok-0123456789abcdef\n", "token name 'o/ps'");
    expect_parse_error("ops admin short\n", "shorter than 16 characters");
    expect_parse_error("ops admin sha256:abcd\n", "64 hex digits");
    expect_parse_error("a admin tok-0123456789abcdef\na reader tok-0123456789abcdeg\n",
                       "line 2: token name 'a' is used twice");
}

/* ---- page tokens, CSV, time ---------------------------------------------------------- */

static void test_page_tokens(void **state)
{
    (void)state;
    char tok[128], id[64];
    assert_int_equal(tg_cp_page_token_encode("acc_01ABC", tok, sizeof tok), 0);
    assert_string_equal(tok, "p16163635f3031414243");
    assert_int_equal(tg_cp_page_token_decode(tok, id, sizeof id), 0);
    assert_string_equal(id, "acc_01ABC");
    assert_int_equal(tg_cp_page_token_decode("garbage", id, sizeof id), -1);
    assert_int_equal(tg_cp_page_token_decode("p1", id, sizeof id), -1);
    assert_int_equal(tg_cp_page_token_decode("p1abc", id, sizeof id), -1);   /* odd */
    assert_int_equal(tg_cp_page_token_decode("p1zz", id, sizeof id), -1);    /* not hex */
    assert_int_equal(tg_cp_page_token_decode("p10a41", id, sizeof id), -1);  /* control byte */
    assert_int_equal(tg_cp_page_token_encode("acc_01ABC", tok, 10), -1);     /* too small */
    assert_int_equal(tg_cp_page_size(0), 100);
    assert_int_equal(tg_cp_page_size(7), 7);
    assert_int_equal(tg_cp_page_size(100000), 1000);
}

static void test_csv(void **state)
{
    (void)state;
    tg_buf_t b;
    tg_buf_init(&b, 4096);
    assert_int_equal(tg_cp_csv_field(&b, "plain"), 0);
    tg_buf_puts(&b, "|");
    assert_int_equal(tg_cp_csv_field(&b, "a,b"), 0);
    tg_buf_puts(&b, "|");
    assert_int_equal(tg_cp_csv_field(&b, "say \"hi\""), 0);
    tg_buf_puts(&b, "|");
    assert_int_equal(tg_cp_csv_field(&b, "line\nbreak"), 0);
    tg_buf_puts(&b, "|");
    assert_int_equal(tg_cp_csv_field(&b, NULL), 0);
    assert_string_equal(b.b_data, "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"line\nbreak\"|");
    tg_buf_free(&b);
}

static void test_csv_row(void **state)
{
    (void)state;
    tg_buf_t b;
    tg_ledger_row_t row;
    memset(&row, 0, sizeof row);
    row.lr_seq = 7;
    row.lr_settled_us = 1795500000123456LL;
    row.lr_kind = TG_LEDGER_USAGE;
    row.lr_record_id = "r-1";
    row.lr_account_id = "acc_1";
    row.lr_model = "gpt-4o, mini";
    row.lr_route_type = "pooled";
    row.lr_bucket = "wallet";
    row.lr_currency = "USD";
    row.lr_cost_nano = 1500;
    row.lr_upstream_cost_nano = 900;
    row.lr_input_tokens = 10;
    row.lr_output_tokens = 20;
    row.lr_price_version = 3;
    tg_buf_init(&b, 4096);
    assert_int_equal(tg_cp_csv_row(&b, &row, NULL), 0);
    assert_string_equal(b.b_data, "7,2026-11-24T06:00:00.123456Z,usage,r-1,acc_1,,,,\"gpt-4o, mini\","
                                  ",,pooled,wallet,USD,1500,0,900,10,20,3\n");
    tg_buf_free(&b);
}

static void test_rfc3339(void **state)
{
    (void)state;
    char s[32];
    tg_cp_rfc3339(0, s);
    assert_string_equal(s, "1970-01-01T00:00:00.000000Z");
    tg_cp_rfc3339(1795500000123456LL, s);
    assert_string_equal(s, "2026-11-24T06:00:00.123456Z");
    tg_cp_rfc3339(-1, s);
    assert_string_equal(s, "1969-12-31T23:59:59.999999Z");
}

/* ---- validation --------------------------------------------------------------------------- */

static void expect_invalid(int rc, const char *err, const char *want)
{
    assert_int_equal(rc, -1);
    if (strcmp(err, want) != 0) fail_msg("got '%s', want '%s'", err, want);
}

static void test_validate_account(void **state)
{
    (void)state;
    Tollgate__V1__Account a = TOLLGATE__V1__ACCOUNT__INIT;
    Tollgate__V1__BucketSpec b0 = TOLLGATE__V1__BUCKET_SPEC__INIT, b1 = TOLLGATE__V1__BUCKET_SPEC__INIT;
    Tollgate__V1__BucketSpec *bs[] = {&b0, &b1};
    Tollgate__V1__RouteBucket rb = TOLLGATE__V1__ROUTE_BUCKET__INIT, *rbs[] = {&rb};
    char err[TG_ERRLEN] = "";

    expect_invalid(tg_cp_validate_account(&a, err, sizeof err), err, "account.name: required");
    a.name = "acme";
    err[0] = '\0';
    expect_invalid(tg_cp_validate_account(&a, err, sizeof err), err,
                   "account.buckets: at least one bucket is required");
    b0.name = "credit";
    b0.currency = "USD";
    b1.name = "wallet";
    b1.currency = "usd$";
    a.buckets = bs;
    a.n_buckets = 2;
    err[0] = '\0';
    expect_invalid(tg_cp_validate_account(&a, err, sizeof err), err,
                   "account.buckets[1].currency: must be a 3-letter code or a unit name");
    b1.currency = "credits"; /* a unit name */
    err[0] = '\0';
    assert_int_equal(tg_cp_validate_account(&a, err, sizeof err), 0);
    b1.name = "credit";
    err[0] = '\0';
    expect_invalid(tg_cp_validate_account(&a, err, sizeof err), err,
                   "account.buckets[1].name: 'credit' is used twice");
    b1.name = "wallet";
    b1.credit_limit_nano = 5;
    a.billing_mode = TOLLGATE__V1__BILLING_MODE__BILLING_MODE_PREPAID;
    err[0] = '\0';
    expect_invalid(tg_cp_validate_account(&a, err, sizeof err), err,
                   "account.buckets[1].credit_limit_nano: only postpaid accounts have a credit limit");
    a.billing_mode = TOLLGATE__V1__BILLING_MODE__BILLING_MODE_POSTPAID;
    rb.route_type = TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED;
    rb.bucket = "promo";
    a.route_buckets = rbs;
    a.n_route_buckets = 1;
    err[0] = '\0';
    expect_invalid(tg_cp_validate_account(&a, err, sizeof err), err,
                   "account.route_buckets[0].bucket: no bucket 'promo' in this account");
    rb.bucket = "wallet";
    err[0] = '\0';
    assert_int_equal(tg_cp_validate_account(&a, err, sizeof err), 0);
}

static void test_validate_route_and_card(void **state)
{
    (void)state;
    Tollgate__V1__ModelRoute r = TOLLGATE__V1__MODEL_ROUTE__INIT;
    Tollgate__V1__RouteTier t = TOLLGATE__V1__ROUTE_TIER__INIT, *ts[] = {&t};
    Tollgate__V1__RouteTarget x = TOLLGATE__V1__ROUTE_TARGET__INIT, *xs[] = {&x};
    Tollgate__V1__PriceCard c = TOLLGATE__V1__PRICE_CARD__INIT;
    Tollgate__V1__PriceEntry e0 = TOLLGATE__V1__PRICE_ENTRY__INIT, e1 = TOLLGATE__V1__PRICE_ENTRY__INIT;
    Tollgate__V1__PriceEntry *es[] = {&e0, &e1};
    char err[TG_ERRLEN] = "";

    r.model = "gpt-4o";
    expect_invalid(tg_cp_validate_route(&r, err, sizeof err), err,
                   "route.tiers: at least one tier is required");
    r.tiers = ts;
    r.n_tiers = 1;
    t.targets = xs;
    t.n_targets = 1;
    err[0] = '\0';
    expect_invalid(tg_cp_validate_route(&r, err, sizeof err), err,
                   "route.tiers[0].targets[0].channel_id: required");
    x.channel_id = "ch_1";
    r.encoding = "p50k";
    err[0] = '\0';
    expect_invalid(tg_cp_validate_route(&r, err, sizeof err), err,
                   "route.encoding: must be cl100k_base, o200k_base or empty");
    r.encoding = "o200k_base";
    err[0] = '\0';
    assert_int_equal(tg_cp_validate_route(&r, err, sizeof err), 0);
    {
        /* more targets than one transaction may check */
        Tollgate__V1__RouteTarget *many[33];
        for (int i = 0; i < 33; i++) many[i] = &x;
        t.targets = many;
        t.n_targets = 33;
        err[0] = '\0';
        expect_invalid(tg_cp_validate_route(&r, err, sizeof err), err,
                       "route.tiers: at most 32 targets in all tiers together (got 33)");
        t.targets = xs;
        t.n_targets = 1;
    }

    c.id = "std/1";
    err[0] = '\0';
    expect_invalid(tg_cp_validate_price_card(&c, err, sizeof err), err,
                   "card.id: must be 1-64 characters of A-Z a-z 0-9 . _ : -");
    c.id = "std";
    c.currency = "USD";
    c.entries = es;
    c.n_entries = 2;
    e0.model = "gpt-4o*";
    e1.model = "gpt-4o*";
    err[0] = '\0';
    expect_invalid(tg_cp_validate_price_card(&c, err, sizeof err), err,
                   "card.entries[1]: model 'gpt-4o*' with this route type is already priced by "
                   "entries[0]");
    e1.route_type = TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_DIRECT;
    err[0] = '\0';
    assert_int_equal(tg_cp_validate_price_card(&c, err, sizeof err), 0);
    /* billing's own limits, so a card accepted here always prices */
    e1.rate_ppm = 999999999999LL;
    expect_invalid(tg_cp_validate_price_card(&c, err, sizeof err), err,
                   "card.entries[1].rate_ppm: 999999999999 is outside 0..1000000000 ppm (0 means 1.0x, "
                   "the most is 1000x)");
    e1.rate_ppm = 0;
    e0.output_per_mtok_nano = 9000000000000000000LL;
    err[0] = '\0';
    expect_invalid(tg_cp_validate_price_card(&c, err, sizeof err), err,
                   "card.entries[0].output_per_mtok_nano: 9000000000000000000 is outside "
                   "0..1000000000000000 nano-units (at most 1,000,000 currency units)");
    e0.output_per_mtok_nano = 0;
}

static void test_cidr_and_currency(void **state)
{
    (void)state;
    assert_true(tg_cp_valid_cidr("10.0.0.0/8"));
    assert_true(tg_cp_valid_cidr("192.168.1.1"));
    assert_true(tg_cp_valid_cidr("::1/128"));
    assert_true(tg_cp_valid_cidr("2001:db8::/32"));
    assert_false(tg_cp_valid_cidr("10.0.0.0/33"));
    assert_false(tg_cp_valid_cidr("10.0.0/8"));
    assert_false(tg_cp_valid_cidr("::1/129"));
    assert_false(tg_cp_valid_cidr("10.0.0.0/"));
    assert_false(tg_cp_valid_cidr(""));
    assert_true(tg_cp_valid_currency("USD"));
    assert_true(tg_cp_valid_currency("credits"));
    assert_false(tg_cp_valid_currency("usd")); /* a mis-cased code, not a unit */
    assert_false(tg_cp_valid_currency("US"));
    assert_false(tg_cp_valid_currency("Credits"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokens_parse),
        cmocka_unit_test(test_tokens_errors),
        cmocka_unit_test(test_page_tokens),
        cmocka_unit_test(test_csv),
        cmocka_unit_test(test_csv_row),
        cmocka_unit_test(test_rfc3339),
        cmocka_unit_test(test_validate_account),
        cmocka_unit_test(test_validate_route_and_card),
        cmocka_unit_test(test_cidr_and_currency),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
