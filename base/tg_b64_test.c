/* Unit tests for tg_b64: round trips of every byte value
 * and every length mod 3, RFC 4648 vectors, and rejection of bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "base/tg_b64.h"

static void test_vectors(void **state)
{
    (void)state;
    static const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    char enc[32];
    uint8_t dec[32];
    for (size_t i = 0; i < 7; i++) {
        size_t n = tg_b64_encode((const uint8_t *)in[i], strlen(in[i]), enc);
        assert_string_equal(enc, out[i]);
        assert_int_equal(n, strlen(out[i]));
        long d = tg_b64_decode(enc, n, dec);
        assert_int_equal(d, (long)strlen(in[i]));
        assert_memory_equal(dec, in[i], (size_t)d);
    }
}

static void test_all_bytes(void **state)
{
    (void)state;
    uint8_t src[258], dec[258];
    char enc[TG_B64_ENCLEN(258)];
    for (int i = 0; i < 256; i++)
        src[i] = (uint8_t)i;
    src[256] = 0;
    src[257] = 0xff;
    for (size_t n = 0; n <= 258; n++) {
        size_t e = tg_b64_encode(src, n, enc);
        assert_int_equal(tg_b64_decode(enc, e, dec), (long)n);
        assert_memory_equal(dec, src, n);
    }
}

static void test_rejects(void **state)
{
    (void)state;
    uint8_t dec[16];
    assert_int_equal(tg_b64_decode("Zm9", 3, dec), -1);      /* not a multiple of 4 */
    assert_int_equal(tg_b64_decode("Zm9v\n", 5, dec), -1);   /* whitespace */
    assert_int_equal(tg_b64_decode("Zm=v", 4, dec), -1);     /* padding inside */
    assert_int_equal(tg_b64_decode("Zh==", 4, dec), -1);     /* stray bits */
    assert_int_equal(tg_b64_decode("Zm9=Zm9v", 8, dec), -1); /* padding before the end */
    assert_int_equal(tg_b64_decode("Zm-v", 4, dec), -1);     /* url alphabet */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_all_bytes),
        cmocka_unit_test(test_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
