/* Unit tests for tg_base: first-error-wins messages, counted and failing
 * allocations, buffer limits, pool lifetimes and cleanups. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "base/tg_base.h"

static void test_errf_first_wins(void **state)
{
    (void)state;
    char err[32] = "";
    assert_int_equal(tg_errf(err, sizeof(err), -7, "inner %d", 1), -7);
    assert_int_equal(tg_errf(err, sizeof(err), -8, "outer"), -8);
    assert_string_equal(err, "inner 1");
    assert_int_equal(tg_errf(NULL, 0, -3, "ignored"), -3);
    char small[4] = "";
    tg_errf(small, sizeof(small), -1, "truncated message");
    assert_string_equal(small, "tru");
}

static void test_alloc_counts_and_fails(void **state)
{
    (void)state;
    long live = tg_alloc_live();
    char *a = tg_strdup("hello");
    assert_string_equal(a, "hello");
    assert_int_equal(tg_alloc_live(), live + 1);
    tg_alloc_fail_after(1);
    char *b = tg_malloc(10);
    assert_non_null(b);
    assert_null(tg_malloc(10));
    assert_null(tg_strndup("x", 1));
    tg_alloc_fail_after(-1);
    tg_free(a);
    tg_free(b);
    tg_free(NULL);
    assert_int_equal(tg_alloc_live(), live);
}

/* putu / putx print what printf's %llu / %llx print, edges included */
static void test_buf_numbers(void **state)
{
    (void)state;
    const unsigned long long v[] = {0, 1, 9, 10, 15, 16, 255, 1000, 4294967296ull, 18446744073709551615ull};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        tg_buf_t b, p;
        tg_buf_init(&b, 100);
        tg_buf_init(&p, 100);
        assert_int_equal(tg_buf_putu(&b, v[i]), 0);
        assert_int_equal(tg_buf_puts(&b, " "), 0);
        assert_int_equal(tg_buf_putx(&b, v[i]), 0);
        assert_int_equal(tg_buf_printf(&p, "%llu %llx", v[i], v[i]), 0);
        assert_string_equal(b.b_data, p.b_data);
        tg_buf_free(&b);
        tg_buf_free(&p);
    }
    char d[24], want[24];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        snprintf(want, sizeof want, "%llu", v[i]);
        assert_int_equal(tg_fmt_u64(d, v[i]), strlen(want));
        assert_string_equal(d, want);
        snprintf(want, sizeof want, "%016llx", v[i]);
        tg_fmt_hex(d, v[i], 16);
        assert_string_equal(d, want);
        snprintf(want, sizeof want, "%02llx", v[i] & 0xff);
        tg_fmt_hex(d, v[i], 2);
        assert_string_equal(d, want);
    }
    tg_buf_t s;
    tg_buf_init(&s, 3);
    assert_int_equal(tg_buf_putu(&s, 1234), TG_BUF_ETOOBIG);
    assert_int_equal(s.b_len, 0);
    tg_buf_free(&s);
}

static void test_buf_limits(void **state)
{
    (void)state;
    tg_buf_t b;
    tg_buf_init(&b, 10);
    assert_int_equal(tg_buf_puts(&b, "12345"), 0);
    assert_int_equal(tg_buf_printf(&b, "%d", 6789), 0);
    assert_string_equal(b.b_data, "123456789");
    assert_int_equal(tg_buf_puts(&b, "ab"), TG_BUF_ETOOBIG);
    assert_string_equal(b.b_data, "123456789");
    assert_int_equal(tg_buf_puts(&b, "a"), 0);
    assert_int_equal(b.b_len, 10);
    tg_buf_reset(&b);
    assert_int_equal(b.b_len, 0);
    tg_alloc_fail_after(0);
    tg_buf_t c;
    tg_buf_init(&c, 100);
    assert_int_equal(tg_buf_puts(&c, "x"), TG_BUF_ENOMEM);
    tg_alloc_fail_after(-1);
    /* An unbounded buffer (max SIZE_MAX) grows normally: no wrap in max + 1. */
    tg_buf_t u;
    tg_buf_init(&u, SIZE_MAX);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(tg_buf_puts(&u, "0123456789"), 0);
    assert_int_equal(u.b_len, 10000);
    assert_true(u.b_cap >= 10001);
    assert_int_equal(tg_buf_append(&u, "x", SIZE_MAX), TG_BUF_ETOOBIG);
    tg_buf_free(&u);

    size_t n;
    char *s = tg_buf_steal(&b, &n);
    assert_non_null(s);
    tg_free(s);
    tg_buf_free(&b);
    tg_buf_free(&c);
}

static int cleaned;
static void on_cleanup(void *p)
{
    cleaned = cleaned * 10 + *(int *)p;
}

static void test_pool(void **state)
{
    (void)state;
    long live = tg_alloc_live();
    tg_pool_t *p = tg_pool_create(128);
    assert_non_null(p);
    static int one = 1, two = 2;
    assert_int_equal(tg_pool_cleanup(p, on_cleanup, &one), 0);
    assert_int_equal(tg_pool_cleanup(p, on_cleanup, &two), 0);
    for (int i = 0; i < 100; i++) {
        char *s = tg_pool_strndup(p, "abcdefgh", 4);
        assert_string_equal(s, "abcd");
        assert_int_equal((uintptr_t)s % _Alignof(max_align_t), 0);
    }
    unsigned char *big = tg_pool_calloc(p, 1000);
    assert_non_null(big);
    assert_int_equal(big[999], 0);
    cleaned = 0;
    tg_pool_reset(p);
    assert_int_equal(cleaned, 21); /* newest first */
    assert_non_null(tg_pool_alloc(p, 16));
    tg_pool_destroy(p);
    tg_pool_destroy(NULL);
    assert_int_equal(tg_alloc_live(), live);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errf_first_wins),
        cmocka_unit_test(test_alloc_counts_and_fails),
        cmocka_unit_test(test_buf_limits),
        cmocka_unit_test(test_buf_numbers),
        cmocka_unit_test(test_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
