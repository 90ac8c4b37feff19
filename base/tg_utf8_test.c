/* Unit tests for tg_utf8: cuts on character boundaries, invalid bytes
 * replaced, and every output valid UTF-8. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "base/tg_utf8.h"

static int valid(const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        size_t k = tg_utf8_seq((const unsigned char *)s + i, n - i);
        if (!k)
            return 0;
        i += k;
    }
    return 1;
}

static void test_cut_on_boundary(void **state)
{
    (void)state;
    char out[8];
    /* "aé€" is 1 + 2 + 3 bytes; 5 bytes of room (6 with the NUL) cut before € */
    assert_int_equal(tg_utf8_clean(out, 6, "a\xc3\xa9\xe2\x82\xac", 6), 3);
    assert_string_equal(out, "a\xc3\xa9");
    assert_int_equal(tg_utf8_clean(out, 7, "a\xc3\xa9\xe2\x82\xac", 6), 6);
    /* a source already cut mid-character (what "%.120s" did) */
    assert_int_equal(tg_utf8_clean(out, sizeof out, "ab\xe2\x82", 4), 5);
    assert_string_equal(out, "ab\xef\xbf\xbd");
    assert_int_equal(tg_utf8_clean(out, 0, "x", 1), 0);
    assert_int_equal(tg_utf8_clean(out, 1, "x", 1), 0);
    assert_string_equal(out, "");
}

static void test_invalid_replaced(void **state)
{
    (void)state;
    static const char *const bad[] = {"\x80", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xff",
                                      "ok\xc3(", "\xe2\x82\xe2\x82\xac"};
    char out[64];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tg_utf8_clean(out, sizeof out, bad[i], strlen(bad[i]));
        assert_true(valid(out));
        assert_non_null(strstr(out, "\xef\xbf\xbd"));
    }
    tg_utf8_clean(out, sizeof out, "ok\xc3(", 4);
    assert_string_equal(out, "ok\xef\xbf\xbd(");
    /* a NUL ends the copy */
    assert_int_equal(tg_utf8_clean(out, sizeof out, "a\0b", 3), 1);
    /* every byte value alone, and every pair, comes out valid */
    for (int a = 0; a < 256; a++)
        for (int b = 1; b < 256; b += 7) {
            char in[2] = {(char)a, (char)b};
            tg_utf8_clean(out, 5, in, 2);
            assert_true(valid(out));
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cut_on_boundary),
        cmocka_unit_test(test_invalid_replaced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
