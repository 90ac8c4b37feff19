/* Unit tests for tg_crypto: RFC 8032 and FIPS 180 vectors, tamper
 * detection, key files (persisted, private, corrupt), identifiers, secrets. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "base/tg_base.h"
#include "crypto/tg_crypto.h"

static void test_sha256_vector(void **state)
{
    (void)state;
    uint8_t h[32];
    char hex[65];
    tg_crypto_sha256("abc", 3, h);
    tg_crypto_hex(h, 32, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    uint8_t back[32];
    assert_int_equal(tg_crypto_unhex(hex, back, 32), 0);
    assert_memory_equal(back, h, 32);
    assert_int_equal(tg_crypto_unhex("zz", back, 1), TG_CRYPTO_EFORMAT);
    assert_int_equal(tg_crypto_unhex("abc", back, 1), TG_CRYPTO_EFORMAT);
}

/* RFC 8032 section 7.1, test 2 (one-byte message 0x72). */
static void test_ed25519_rfc8032(void **state)
{
    (void)state;
    uint8_t seed[32], pub[32], want_pub[32], sig[64], want_sig[64];
    assert_int_equal(tg_crypto_unhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb", seed, 32), 0);
    assert_int_equal(tg_crypto_unhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", want_pub, 32), 0);
    assert_int_equal(tg_crypto_unhex("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
                                     "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
                                     want_sig, 64), 0);
    char err[TG_ERRLEN] = "";
    tg_crypto_key_t *k = NULL;
    assert_int_equal(tg_crypto_key_from_seed(seed, &k, err, sizeof(err)), 0);
    tg_crypto_key_public(k, pub);
    assert_memory_equal(pub, want_pub, 32);
    const uint8_t msg[] = {0x72};
    assert_int_equal(tg_crypto_sign(k, msg, 1, sig), 0);
    assert_memory_equal(sig, want_sig, 64);

    tg_crypto_key_t *v = NULL;
    assert_int_equal(tg_crypto_key_from_public(pub, &v, err, sizeof(err)), 0);
    assert_int_equal(tg_crypto_verify(v, msg, 1, sig, 64), 0);
    sig[10] ^= 1;
    assert_int_equal(tg_crypto_verify(v, msg, 1, sig, 64), TG_CRYPTO_EBADSIG);
    sig[10] ^= 1;
    const uint8_t other[] = {0x73};
    assert_int_equal(tg_crypto_verify(v, other, 1, sig, 64), TG_CRYPTO_EBADSIG);
    assert_int_equal(tg_crypto_verify(v, msg, 1, sig, 63), TG_CRYPTO_EBADSIG);
    assert_int_equal(tg_crypto_sign(v, msg, 1, sig), TG_CRYPTO_EARG); /* verify-only */
    tg_crypto_key_free(v);
    tg_crypto_key_free(k);
    tg_crypto_key_free(NULL);
}

static void test_key_file_persists(void **state)
{
    (void)state;
    char dir[] = "/tmp/tg-crypto-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/agent.key", dir);
    char err[TG_ERRLEN] = "";
    tg_crypto_key_t *a = NULL, *b = NULL;
    assert_int_equal(tg_crypto_key_load_or_create(path, &a, err, sizeof(err)), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(tg_crypto_key_load_or_create(path, &b, err, sizeof(err)), 0);
    uint8_t pa[32], pb[32], sig[64];
    tg_crypto_key_public(a, pa);
    tg_crypto_key_public(b, pb);
    assert_memory_equal(pa, pb, 32);
    assert_int_equal(tg_crypto_sign(b, "batch", 5, sig), 0);
    assert_int_equal(tg_crypto_verify(a, "batch", 5, sig, 64), 0);
    tg_crypto_key_free(a);
    tg_crypto_key_free(b);

    /* A corrupt key file is refused with the path in the message. */
    FILE *f = fopen(path, "w");
    fputs("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n", f);
    fclose(f);
    err[0] = '\0';
    tg_crypto_key_t *c = NULL;
    assert_int_equal(tg_crypto_key_load_or_create(path, &c, err, sizeof(err)), TG_CRYPTO_EFORMAT);
    assert_null(c);
    assert_non_null(strstr(err, path));

    /* A directory that does not exist is an I/O error, not a crash. */
    char bad[300];
    snprintf(bad, sizeof(bad), "%s/missing/dir/key.pem", dir);
    err[0] = '\0';
    assert_int_equal(tg_crypto_key_load_or_create(bad, &c, err, sizeof(err)), TG_CRYPTO_EIO);
    assert_non_null(strstr(err, "missing/dir"));
    unlink(path);
    rmdir(dir);
}

static void test_ids_sort_and_differ(void **state)
{
    (void)state;
    char a[64], b[64];
    assert_int_equal(tg_crypto_new_id("acct_", a, sizeof(a)), 0);
    usleep(2000);
    assert_int_equal(tg_crypto_new_id("acct_", b, sizeof(b)), 0);
    assert_int_equal(strlen(a), 5 + 26);
    assert_true(strncmp(a, "acct_", 5) == 0);
    assert_true(strcmp(a, b) < 0); /* later id sorts after */
    assert_true(a[5] <= '7');      /* first digit holds 3 bits */
    assert_int_equal(tg_crypto_new_id("x", a, 20), TG_CRYPTO_EARG);

    char s1[64], s2[64];
    assert_int_equal(tg_crypto_new_secret("tg-", s1, sizeof(s1)), 0);
    assert_int_equal(tg_crypto_new_secret("tg-", s2, sizeof(s2)), 0);
    assert_int_equal(strlen(s1), 3 + 43);
    assert_string_not_equal(s1, s2);
    for (const char *p = s1 + 3; *p; p++)
        assert_true((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'));
    assert_true(tg_crypto_equal(s1, s1, 46));
    assert_false(tg_crypto_equal(s1, s2, 46));
    assert_string_equal(tg_crypto_strerror(TG_CRYPTO_EBADSIG), "signature does not verify");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vector),
        cmocka_unit_test(test_ed25519_rfc8032),
        cmocka_unit_test(test_key_file_persists),
        cmocka_unit_test(test_ids_sort_and_differ),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
