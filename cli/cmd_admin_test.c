/* cmd_admin_test.c: unit tests of tollctl's admin plumbing that needs no
 * control plane: flag parsing, money amounts in and out (exact to the
 * nano-unit, refusing what does not fit), and the time formats --since and
 * --until accept. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "base/tg_base.h"
#include "cli/cmd_admin.h"
#include "cli/tollctl_int.h"

static void expect_amount_err(const char *in, const char *want)
{
    char err[TG_ERRLEN] = "";
    long long n = 7;
    assert_int_equal(tc_parse_amount(in, &n, err, sizeof err), -1);
    assert_int_equal(n, 7); /* unchanged */
    if (strstr(err, want) == NULL) fail_msg("'%s': got '%s', want '%s'", in, err, want);
}

static void test_amounts(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    long long n = 0;
    assert_int_equal(tc_parse_amount("12.50", &n, err, sizeof err), 0);
    assert_int_equal(n, 12500000000LL);
    assert_int_equal(tc_parse_amount("-0.000000001", &n, err, sizeof err), 0);
    assert_int_equal(n, -1);
    assert_int_equal(tc_parse_amount(".5", &n, err, sizeof err), 0);
    assert_int_equal(n, 500000000);
    assert_int_equal(tc_parse_amount("+3", &n, err, sizeof err), 0);
    assert_int_equal(n, 3000000000LL);
    assert_int_equal(tc_parse_amount("9223372035.999999999", &n, err, sizeof err), 0);
    assert_int_equal(n, 9223372035999999999LL);
    /* the whole int64 nano-unit range (9223372036 was refused as "not a decimal") */
    assert_int_equal(tc_parse_amount("9223372036", &n, err, sizeof err), 0);
    assert_int_equal(n, 9223372036000000000LL);
    assert_int_equal(tc_parse_amount("9223372036.854775807", &n, err, sizeof err), 0);
    assert_int_equal(n, INT64_MAX);
    assert_int_equal(tc_parse_amount("-9223372036.854775808", &n, err, sizeof err), 0);
    assert_int_equal(n, INT64_MIN);
    assert_string_equal(err, "");
    expect_amount_err("9223372036.854775808", "'9223372036.854775808' is too large");
    expect_amount_err("99999999999999999999999999999999999999", "is too large");
    expect_amount_err("1.0000000001", "not a decimal amount with at most 9 decimals"); /* 10 decimals */
    expect_amount_err("12,50", "not a decimal amount");
    expect_amount_err("", "not a decimal amount");
    expect_amount_err("-", "not a decimal amount");
    expect_amount_err("1e9", "not a decimal amount");
}

static void expect_nano(const char *in, const char *want)
{
    char buf[64];
    tc_nano(in, buf, sizeof buf);
    assert_string_equal(buf, want);
}

static void test_nano_display(void **state)
{
    (void)state;
    expect_nano("12500000000", "12.50");
    expect_nano("1", "0.000000001");
    expect_nano("-1", "-0.000000001");
    expect_nano("0", "0.00");
    expect_nano("", "0.00");
    expect_nano(NULL, "0.00");
    expect_nano("-12345678901", "-12.345678901");
    expect_nano("100000000000", "100.00");
    expect_nano("9223372036854775807", "9223372036.854775807");
}

static void test_times(void **state)
{
    (void)state;
    long long us = 0, now = (long long)time(NULL) * 1000000LL;
    assert_int_equal(tc_parse_time("2026-11-24T00:00:00Z", &us), 0);
    assert_int_equal(us, 1795478400LL * 1000000);
    assert_int_equal(tc_parse_time("2026-11-24T00:00:00", &us), 0);
    assert_int_equal(us, 1795478400LL * 1000000);
    assert_int_equal(tc_parse_time("2026-11-24", &us), 0);
    assert_int_equal(us, 1795478400LL * 1000000);
    assert_int_equal(tc_parse_time("1700000000", &us), 0);
    assert_int_equal(us, 1700000000LL * 1000000);
    assert_int_equal(tc_parse_time("24h", &us), 0);
    assert_true(us <= now - 86399LL * 1000000 && us >= now - 86402LL * 1000000);
    assert_int_equal(tc_parse_time("7d", &us), 0);
    assert_true(us <= now - 7 * 86399LL * 1000000);
    assert_int_equal(tc_parse_time("90m", &us), 0);
    assert_int_equal(tc_parse_time("yesterday", &us), -1);
    assert_int_equal(tc_parse_time("2026-13-01", &us), -1);
    assert_int_equal(tc_parse_time("2026-11-24T00:00:00+01:00", &us), -1);
    assert_int_equal(tc_parse_time("h", &us), -1);
    assert_int_equal(tc_parse_time("", &us), -1);
}

static void test_flags(void **state)
{
    (void)state;
    tc_t c;
    char a0[] = "acc_1", a1[] = "--name", a2[] = "acme", a3[] = "--bucket=credit:USD", a4[] = "--bucket",
         a5[] = "wallet:EUR", a6[] = "--json", a7[] = "--postpaid";
    char *argv[] = {a0, a1, a2, a3, a4, a5, a6, a7};
    assert_int_equal(tc_parse(&c, "account update", 8, argv, "name= bucket= postpaid", 1), TOLLCTL_OK);
    assert_string_equal(tc_pos(&c, 0), "acc_1");
    assert_null(tc_pos(&c, 1));
    assert_string_equal(tc_get(&c, "name"), "acme");
    assert_string_equal(tc_nth(&c, "bucket", 0), "credit:USD");
    assert_string_equal(tc_nth(&c, "bucket", 1), "wallet:EUR");
    assert_null(tc_nth(&c, "bucket", 2));
    assert_true(tc_flag(&c, "postpaid"));
    assert_true(c.tc_json);
    assert_null(tc_get(&c, "server"));
    tc_done(&c);

    char b0[] = "--colour", b1[] = "x", b2[] = "y", b3[] = "--name";
    char *bad1[] = {b0};
    char *bad2[] = {b1, b2};
    char *bad3[] = {b3};
    assert_int_equal(tc_parse(&c, "account list", 1, bad1, "name=", 1), TOLLCTL_USAGE); /* unknown */
    assert_int_equal(tc_parse(&c, "account get", 2, bad2, "", 1), TOLLCTL_USAGE);      /* 2 positionals */
    assert_int_equal(tc_parse(&c, "account create", 1, bad3, "name=", 0), TOLLCTL_USAGE); /* no value */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_amounts),
        cmocka_unit_test(test_nano_display),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_flags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
