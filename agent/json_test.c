/* json_test.c: unit tests of the JSON cursor (json.h): validation, walking
 * members at the right depth, escaped names, strict counts, limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "agent/json.h"
#include "agent/tg_agent.h"

static int valid(const char *s)
{
    char err[TG_ERRLEN] = "";
    return tg_json_valid(s, strlen(s), err, sizeof err);
}

static void test_valid(void **st)
{
    (void)st;
    static const char *const good[] = {"{}", "[]", " {\"a\":[1,-2.5e+3,true,false,null,\"x\\u00e9\\ud83d\\ude00\"]} ",
                                       "0", "\"\"", "[[[[]]]]", "\"\\ud800\"", "\"\\udc00x\\ud83d\"", "{\"a\":{\"b\":{}},\"c\":[{}]}"};
    static const char *const bad[] = {"", "{", "{\"a\"}", "{\"a\":1,}", "[1,]", "[,1]", "01", "1.", "-", "1e",
                                      "{\"a\":1}{", "tru", "\"\x01\"", "\"\xc3\x28\"", "\"\\ud800\\u12\"", "\"\\x\"",
                                      "{1:2}", "[1 2]", "{\"a\" 1}", "\"abc"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_int_equal(valid(good[i]), 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(valid(bad[i]), TG_AGENT_EJSON);
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_json_valid("{\"a\":x}", 7, err, sizeof err), TG_AGENT_EJSON);
    assert_non_null(strstr(err, "at byte 5"));
    /* nesting: 256 deep is fine, 257 is refused */
    char deep[600];
    memset(deep, '[', 256);
    memset(deep + 256, ']', 256);
    deep[512] = '\0';
    assert_int_equal(valid(deep), 0);
    memset(deep, '[', 257);
    memset(deep + 257, ']', 257);
    deep[514] = '\0';
    assert_int_equal(valid(deep), TG_AGENT_EJSON);
}

/* tg_json_skip as it was (peek, enter and next per token, scalars alone),
 * the reference the state-machine skip must match: same result, same
 * error text, same cursor position and depth. */
static int skip_ref(tg_json_t *j)
{
    int base = j->j_depth, rc;
    for (;;) {
        int t = tg_json_peek(j);
        if (t == TG_JSON_OBJECT || t == TG_JSON_ARRAY)
            rc = tg_json_enter(j);
        else
            rc = tg_json_skip(j); /* a scalar: one token either way */
        if (rc)
            return rc;
        while (j->j_depth > base) {
            rc = tg_json_next(j, NULL, 0);
            if (rc < 0)
                return rc;
            if (rc == 1)
                break;
        }
        if (j->j_depth == base)
            return 0;
    }
}

static void same_skip(const char *s, size_t n)
{
    char e1[TG_ERRLEN] = "", e2[TG_ERRLEN] = "";
    tg_json_t a, b;
    tg_json_init(&a, s, n, e1, sizeof e1);
    tg_json_init(&b, s, n, e2, sizeof e2);
    int ra = tg_json_skip(&a), rb = skip_ref(&b);
    if (ra != rb || strcmp(e1, e2) != 0 || a.j_pos != b.j_pos || a.j_depth != b.j_depth)
        fail_msg("skip of %.*s: %d '%s' at %zu depth %d; reference %d '%s' at %zu depth %d", (int)n, s, ra, e1,
                 a.j_pos, a.j_depth, rb, e2, b.j_pos, b.j_depth);
}

/* Every document below, and each of its one-byte deletions and one-byte
 * replacements by a structural character, skips as the reference does. */
static void test_skip_matches_reference(void **st)
{
    (void)st;
    static const char *const docs[] = {
        " {\"a\":[1,-2.5e+3,true,false,null,\"x\\u00e9\"]} ", "[[[[]]]]", "{\"a\":{\"b\":{}},\"c\":[{}]}",
        "{\"id\":\"c\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"a\",\"content\":\"hi\"}}],\"u\":{\"p\":2}}",
        "[1,[2,{\"k\":[3,{}]}],\"s\\\"q\"]", "\"plain string\"", "12.5e-3", "{}", "[]", "null"};
    static const char subs[] = "{}[],:\" \\01-tnx\n";
    char buf[256];
    for (size_t d = 0; d < sizeof docs / sizeof docs[0]; d++) {
        const char *s = docs[d];
        size_t n = strlen(s);
        same_skip(s, n);
        for (size_t i = 0; i < n; i++) {
            memcpy(buf, s, i); /* without byte i */
            memcpy(buf + i, s + i + 1, n - i - 1);
            same_skip(buf, n - 1);
            same_skip(s, i); /* cut at i */
            for (size_t k = 0; k < sizeof subs - 1; k++) {
                memcpy(buf, s, n);
                buf[i] = subs[k];
                same_skip(buf, n);
            }
        }
    }
    /* nesting past the limit fails at the same byte */
    char deep[600];
    memset(deep, '[', 300);
    memset(deep + 300, ']', 300);
    same_skip(deep, 600);
    memset(deep, '{', 1);
    same_skip(deep, 600);
}

/* Lone surrogate escapes are valid JSON (JSON.parse takes them): each
 * decodes to U+FFFD; a pair still decodes to its character. */
static void test_surrogates(void **st)
{
    (void)st;
    static const char *const cases[][2] = {
        {"\"a\\ud83db\"", "a\xef\xbf\xbd" "b"},
        {"\"\\udc00\"", "\xef\xbf\xbd"},
        {"\"\\ud83d\\u0041\"", "\xef\xbf\xbd" "A"},
        {"\"\\ud83d\\ud83d\\ude00\"", "\xef\xbf\xbd\xf0\x9f\x98\x80"},
        {"\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tg_json_t j;
        tg_buf_t out;
        tg_buf_init(&out, 64);
        tg_json_init(&j, cases[i][0], strlen(cases[i][0]), NULL, 0);
        assert_int_equal(tg_json_string(&j, &out), 0);
        assert_int_equal(j.j_pos, strlen(cases[i][0]));
        assert_int_equal(out.b_len, strlen(cases[i][1]));
        assert_memory_equal(out.b_data, cases[i][1], out.b_len);
        tg_buf_free(&out);
    }
}

static void test_walk(void **st)
{
    (void)st;
    const char *s = "{\"a\":{\"usage\":1},\"l\":[{\"usage\":2},3],\"\\u0075sage\":{\"n\":4},\"z\":0}";
    tg_json_t j;
    char name[16];
    int rc, seen = 0;
    tg_json_init(&j, s, strlen(s), NULL, 0);
    assert_int_equal(tg_json_peek(&j), TG_JSON_OBJECT);
    assert_int_equal(tg_json_enter(&j), 0);
    while ((rc = tg_json_next(&j, name, sizeof name)) == 1) {
        if (strcmp(name, "usage") == 0) {
            seen++;
            assert_int_equal(tg_json_enter(&j), 0);
            assert_int_equal(tg_json_find(&j, "n"), 1);
            uint64_t v = 0;
            assert_int_equal(tg_json_uint(&j, 100, &v), 0);
            assert_int_equal(v, 4);
            assert_int_equal(tg_json_next(&j, name, sizeof name), 0);
        } else {
            assert_int_equal(tg_json_skip(&j), 0);
        }
    }
    assert_int_equal(rc, 0);
    assert_int_equal(seen, 1);
    assert_int_equal(j.j_depth, 0);
    assert_int_equal(tg_json_end(&j), 0);
    /* find stops at the end of the object */
    tg_json_init(&j, "{\"a\":1}", 7, NULL, 0);
    assert_int_equal(tg_json_enter(&j), 0);
    assert_int_equal(tg_json_find(&j, "b"), 0);
    /* a name longer than the buffer matches nothing */
    tg_json_init(&j, "{\"usage_and_more_than_16\":1}", 28, NULL, 0);
    assert_int_equal(tg_json_enter(&j), 0);
    assert_int_equal(tg_json_next(&j, name, sizeof name), 1);
    assert_string_equal(name, "");
}

static void test_strings_numbers(void **st)
{
    (void)st;
    tg_json_t j;
    tg_buf_t b;
    tg_buf_init(&b, 64);
    tg_json_init(&j, "\"a\\\"b\\n\\u00e9\"", 14, NULL, 0);
    assert_int_equal(tg_json_string(&j, &b), 0);
    assert_int_equal(b.b_len, 6);
    assert_memory_equal(b.b_data, "a\"b\n\xc3\xa9", 6);
    tg_buf_free(&b);
    char small[4];
    int trunc = 0;
    tg_json_init(&j, "\"abcdef\"", 8, NULL, 0);
    assert_int_equal(tg_json_string_to(&j, small, sizeof small, &trunc), 0);
    assert_string_equal(small, "abc");
    assert_int_equal(trunc, 1);
    tg_buf_init(&b, 2);
    tg_json_init(&j, "\"abcdef\"", 8, NULL, 0);
    assert_int_equal(tg_json_string(&j, &b), TG_AGENT_ETOOBIG);
    tg_buf_free(&b);
    static const struct {
        const char *t;
        int rc;
        uint64_t v;
    } nums[] = {{"0", 0, 0},
                {"42", 0, 42},
                {"9007199254740992", 0, 9007199254740992ull},
                {"9007199254740993", TG_AGENT_ERANGE, 0},
                {"99999999999999999999999", TG_AGENT_ERANGE, 0},
                {"2500000000.0", TG_AGENT_ERANGE, 0},
                {"1e+30", TG_AGENT_ERANGE, 0},
                {"-1", TG_AGENT_ERANGE, 0},
                {"0.5", TG_AGENT_ERANGE, 0},
                {"\"1\"", TG_AGENT_EJSON, 0},
                {"1e", TG_AGENT_EJSON, 0}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        uint64_t v = 0;
        tg_json_init(&j, nums[i].t, strlen(nums[i].t), NULL, 0);
        assert_int_equal(tg_json_uint(&j, (uint64_t)1 << 53, &v), nums[i].rc);
        if (nums[i].rc == 0)
            assert_true(v == nums[i].v);
        if (nums[i].rc == TG_AGENT_ERANGE)
            assert_int_equal(j.j_pos, strlen(nums[i].t)); /* stepped over */
    }
}

/* Plain runs are skipped 32, 16 and 8 bytes at a time: a byte that ends
 * one (quote, backslash, control, non-ASCII) is found at every offset of
 * a block (40 bytes follow it, so a wide block may hold it anywhere), and
 * the bytes next to the stops' values (space, DEL) do not end one. */
static void test_plain_runs(void **st)
{
    (void)st;
    static const char *const stops[] = {"\\n",  "\x01", "\xc3\xa9", "\\\\", "\\\"",
                                        "\x1f", "\x7f", " ",        "\xff"};
    static const char *const decoded[] = {"\n", "", "\xc3\xa9", "\\", "\"", "", "\x7f", " ", ""};
    for (size_t k = 0; k < sizeof stops / sizeof stops[0]; k++)
        for (size_t at = 0; at < 100; at++) {
            static const char tail[] = "abcdefghijklmnopqrstuvwxyz0123456789ABCD"; /* 40 */
            char text[256], want[256];
            memset(want, 'x', at);
            snprintf(want + at, sizeof want - at, "%s%s", decoded[k], tail);
            memset(text, 'x', at + 1);
            text[0] = '"';
            snprintf(text + at + 1, sizeof text - at - 1, "%s%s\"", stops[k], tail);
            tg_json_t j;
            tg_buf_t b;
            tg_buf_init(&b, 256);
            tg_json_init(&j, text, strlen(text), NULL, 0);
            int rc = tg_json_string(&j, &b);
            if (k == 1 || k == 5 || k == 8) { /* a raw control byte, a byte that is no UTF-8: refused */
                assert_int_equal(rc, TG_AGENT_EJSON);
            } else {
                assert_int_equal(rc, 0);
                assert_int_equal(b.b_len, strlen(want));
                assert_memory_equal(b.b_data, want, b.b_len);
                assert_int_equal(j.j_pos, strlen(text));
            }
            tg_buf_free(&b);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid), cmocka_unit_test(test_surrogates), cmocka_unit_test(test_skip_matches_reference),
        cmocka_unit_test(test_walk),
        cmocka_unit_test(test_strings_numbers), cmocka_unit_test(test_plain_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
