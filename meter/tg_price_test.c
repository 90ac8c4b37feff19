/* Unit and property tests of tg_price: known values, the single half-up
 * rounding, and, over many random cases from a fixed seed, costs that are
 * never negative, monotonic in every count and in the rate, equal to an
 * independent multi-limb computation, and that sum like a ledger to the
 * nano-unit; the documented limits hold and are enforced. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "base/tg_base.h"
#include "meter/tg_price.h"

/* ---- a reference computation with 32-bit limbs (no __int128) ----------- */

typedef struct big {
    uint32_t l[8]; /* little-endian base 2^32 */
} big_t;

static void big_muladd(big_t *b, uint64_t mul, uint64_t add)
{
    /* b = b * mul + add, with mul split into 32-bit halves */
    big_t r = {{0}};
    uint32_t m[2] = {(uint32_t)mul, (uint32_t)(mul >> 32)};
    for (int j = 0; j < 2; j++) {
        uint64_t carry = 0;
        for (int i = 0; i + j < 8; i++) {
            uint64_t t = (uint64_t)b->l[i] * m[j] + r.l[i + j] + carry;
            r.l[i + j] = (uint32_t)t;
            carry = t >> 32;
        }
    }
    uint64_t carry = add;
    for (int i = 0; i < 8 && carry; i++) {
        uint64_t t = (uint64_t)r.l[i] + (uint32_t)carry;
        r.l[i] = (uint32_t)t;
        carry = (carry >> 32) + (t >> 32);
    }
    *b = r;
}

static void big_add(big_t *a, const big_t *b)
{
    uint64_t carry = 0;
    for (int i = 0; i < 8; i++) {
        uint64_t t = (uint64_t)a->l[i] + b->l[i] + carry;
        a->l[i] = (uint32_t)t;
        carry = t >> 32;
    }
}

/* b / d (d < 2^32), remainder in *rem. */
static void big_divsmall(big_t *b, uint32_t d, uint32_t *rem)
{
    uint64_t r = 0;
    for (int i = 7; i >= 0; i--) {
        uint64_t cur = r << 32 | b->l[i];
        b->l[i] = (uint32_t)(cur / d);
        r = cur % d;
    }
    *rem = (uint32_t)r;
}

/* Reference: round_half_up((sum t_i p_i + (img p_img + p_req) 1e6) * rate / 1e12);
 * returns -1 when it does not fit int64. */
static int64_t ref_cost(const tg_price_card_t *c, const tg_price_usage_t *u)
{
    big_t s = {{0}}, t;
    const uint64_t cnt[6] = {u->pu_input, u->pu_output, u->pu_cache_read, u->pu_cache_write,
                             u->pu_images, 1};
    const int64_t pr[6] = {c->pc_input, c->pc_output, c->pc_cache_read, c->pc_cache_write,
                           c->pc_image, c->pc_request};
    for (int k = 0; k < 6; k++) {
        memset(&t, 0, sizeof t);
        big_muladd(&t, 1, cnt[k]);
        big_muladd(&t, (uint64_t)pr[k], 0);
        if (k >= 4)
            big_muladd(&t, 1000000, 0);
        big_add(&s, &t);
    }
    big_muladd(&s, c->pc_rate_ppm, 500000000000ull); /* + den/2: half up */
    uint32_t r1, r2;
    big_divsmall(&s, 1000000, &r1);
    big_divsmall(&s, 1000000, &r2);
    for (int i = 2; i < 8; i++)
        if (s.l[i])
            return -1;
    uint64_t v = (uint64_t)s.l[1] << 32 | s.l[0];
    return v > (uint64_t)INT64_MAX ? -1 : (int64_t)v;
}

/* ---- deterministic random numbers --------------------------------------- */

static uint64_t rs = 0x5eed2026ull;
static uint64_t rnd(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}
/* A value in 0..max, log-uniform so small and huge magnitudes both occur. */
static uint64_t rnd_upto(uint64_t max)
{
    int bits = (int)(rnd() % 64) + 1;
    uint64_t v = bits == 64 ? rnd() : rnd() & ((1ull << bits) - 1);
    return v > max ? v % (max + 1) : v;
}

static void rnd_case(tg_price_card_t *c, tg_price_usage_t *u, int realistic)
{
    uint64_t tmax = realistic ? 2000000 : TG_PRICE_MAX_TOKENS;
    uint64_t pmax = realistic ? 200000000000ull : (uint64_t)TG_PRICE_MAX_PRICE;
    c->pc_input = (int64_t)rnd_upto(pmax);
    c->pc_output = (int64_t)rnd_upto(pmax);
    c->pc_cache_read = (int64_t)rnd_upto(pmax);
    c->pc_cache_write = (int64_t)rnd_upto(pmax);
    c->pc_image = (int64_t)rnd_upto(realistic ? 100000000 : (uint64_t)TG_PRICE_MAX_PRICE);
    /* a third of the cards have no per-request fee, as most real ones */
    c->pc_request = rnd() % 3 == 0 ? 0
                                   : (int64_t)rnd_upto(realistic ? 10000000
                                                                 : (uint64_t)TG_PRICE_MAX_PRICE);
    c->pc_rate_ppm = (uint32_t)rnd_upto(realistic ? 3000000 : TG_PRICE_MAX_RATE_PPM);
    u->pu_input = rnd_upto(tmax);
    u->pu_output = rnd_upto(tmax);
    u->pu_cache_read = rnd_upto(tmax);
    u->pu_cache_write = rnd_upto(tmax);
    u->pu_images = rnd_upto(realistic ? 16 : TG_PRICE_MAX_IMAGES);
}

#define NCASES 200000

/* ---- tests --------------------------------------------------------------- */

static void test_known_values(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    int64_t cost = -1;
    /* USD 2.50 / 1M input, 10.00 / 1M output, 1.25 cache read, 3.125 write */
    tg_price_card_t c = {2500000000, 10000000000, 1250000000, 3125000000, 0, 0, 1000000};
    tg_price_usage_t u = {1000, 500, 0, 0, 0};
    assert_int_equal(tg_price_cost(&c, &u, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 7500000); /* USD 0.0075 */
    c.pc_rate_ppm = 800000;          /* 20% off */
    assert_int_equal(tg_price_cost(&c, &u, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 6000000);
    tg_price_usage_t u2 = {0, 0, 2000, 1000, 0};
    c.pc_rate_ppm = 1000000;
    assert_int_equal(tg_price_cost(&c, &u2, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 2500000 + 3125000);
    tg_price_card_t img = {0, 0, 0, 0, 3000000, 0, 1500000}; /* USD 0.003 per image, +50% */
    tg_price_usage_t u3 = {0, 0, 0, 0, 3};
    assert_int_equal(tg_price_cost(&img, &u3, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 13500000);
    tg_price_usage_t zero = {0};
    assert_int_equal(tg_price_cost(&c, &zero, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 0);
}

static void test_rounds_once_half_up(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    int64_t cost = -1;
    tg_price_card_t c = {1, 1, 0, 0, 0, 0, 1000000}; /* 1 nano per 1M tokens */
    tg_price_usage_t half = {500000, 0, 0, 0, 0}, below = {499999, 0, 0, 0, 0};
    assert_int_equal(tg_price_cost(&c, &half, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 1); /* exactly 0.5 rounds up */
    assert_int_equal(tg_price_cost(&c, &below, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 0);
    /* 0.4 + 0.4 = 0.8 -> 1: rounding the parts first would give 0 */
    tg_price_usage_t parts = {400000, 400000, 0, 0, 0};
    assert_int_equal(tg_price_cost(&c, &parts, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 1);
    /* the rate applies before rounding: 0.5 x 0.999999 < 0.5 -> 0 */
    c.pc_rate_ppm = 999999;
    assert_int_equal(tg_price_cost(&c, &half, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 0);
}

static void test_per_request_fee(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    int64_t cost = -1;
    /* USD 2.50 / 1M input, 10.00 / 1M output and 1000 nano per request */
    tg_price_card_t c = {2500000000, 10000000000, 0, 0, 0, 1000, 1000000};
    tg_price_usage_t u = {1000, 500, 0, 0, 0}, zero = {0};
    assert_int_equal(tg_price_cost(&c, &u, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 7500000 + 1000);
    /* a request that used nothing still pays the fee, at the rate */
    c.pc_rate_ppm = 500000;
    assert_int_equal(tg_price_cost(&c, &zero, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 500);
    /* the fee is rounded with the rest, once (1 nano per 1M input tokens,
     * a fee of 1 nano) */
    tg_price_card_t one = {1, 0, 0, 0, 0, 1, 500000};
    tg_price_usage_t some = {800000, 0, 0, 0, 0};
    assert_int_equal(tg_price_cost(&one, &zero, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 1); /* 0.5: half up */
    one.pc_rate_ppm = 400000;  /* fee 0.4 + tokens 0.32 = 0.72 -> 1; apart both -> 0 */
    assert_int_equal(tg_price_cost(&one, &some, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 1);
    assert_int_equal(tg_price_cost(&one, &zero, &cost, err, sizeof err), 0);
    assert_int_equal(cost, 0); /* 0.4 alone rounds down */
    /* the fee at its limit, with the largest rate: fits and is exact */
    tg_price_card_t max = {0, 0, 0, 0, 0, TG_PRICE_MAX_PRICE, TG_PRICE_MAX_RATE_PPM};
    assert_int_equal(tg_price_cost(&max, &zero, &cost, err, sizeof err), 0);
    assert_int_equal(cost, TG_PRICE_MAX_PRICE * 1000);
}

static void test_matches_reference_and_never_negative(void **state)
{
    (void)state;
    char err[TG_ERRLEN];
    int ok = 0, over = 0;
    for (int i = 0; i < NCASES; i++) {
        tg_price_card_t c;
        tg_price_usage_t u;
        int64_t cost = -1;
        rnd_case(&c, &u, i % 2);
        err[0] = '\0';
        int rc = tg_price_cost(&c, &u, &cost, err, sizeof err);
        int64_t want = ref_cost(&c, &u);
        if (want < 0) {
            assert_int_equal(rc, TG_PRICE_EOVERFLOW);
            assert_non_null(strstr(err, "exceeds"));
            over++;
        } else {
            assert_int_equal(rc, 0);
            assert_true(cost >= 0);
            assert_int_equal(cost, want);
            ok++;
        }
    }
    /* both outcomes were exercised */
    assert_true(ok > NCASES / 4);
    assert_true(over > 100);
}

static void test_monotonic(void **state)
{
    (void)state;
    for (int i = 0; i < NCASES; i++) {
        tg_price_card_t c;
        tg_price_usage_t u, v;
        int64_t a, b;
        rnd_case(&c, &u, 1);
        v = u;
        uint64_t *f[5] = {&v.pu_input, &v.pu_output, &v.pu_cache_read, &v.pu_cache_write,
                          &v.pu_images};
        int k = (int)(rnd() % 7);
        if (k < 5)
            *f[k] += rnd_upto(k == 4 ? 4 : 100000);
        assert_int_equal(tg_price_cost(&c, &u, &a, NULL, 0), 0);
        if (k == 5) { /* a higher rate never lowers the cost */
            c.pc_rate_ppm += (uint32_t)rnd_upto(1000000);
        } else if (k == 6) { /* nor does a higher per-request fee */
            c.pc_request += (int64_t)rnd_upto(1000000);
        }
        assert_int_equal(tg_price_cost(&c, &v, &b, NULL, 0), 0);
        assert_true(b >= a);
    }
}

static void test_ledger_sum_exact(void **state)
{
    (void)state;
    int64_t ledger = 0;
    unsigned __int128 wide = 0;
    for (int i = 0; i < NCASES; i++) {
        tg_price_card_t c;
        tg_price_usage_t u;
        int64_t cost;
        rnd_case(&c, &u, 1);
        assert_int_equal(tg_price_cost(&c, &u, &cost, NULL, 0), 0);
        assert_int_equal(tg_price_add(&ledger, cost, NULL, 0), 0);
        wide += (unsigned __int128)ref_cost(&c, &u);
    }
    assert_true(wide == (unsigned __int128)ledger);
    assert_true(ledger > 0);
}

static void test_limits(void **state)
{
    (void)state;
    char err[TG_ERRLEN];
    int64_t cost = 42;
    /* everything at its limit: the 128-bit intermediate holds, the result
     * does not fit int64: a clear error, never a wrapped number */
    tg_price_card_t c = {TG_PRICE_MAX_PRICE, TG_PRICE_MAX_PRICE, TG_PRICE_MAX_PRICE,
                         TG_PRICE_MAX_PRICE, TG_PRICE_MAX_PRICE, TG_PRICE_MAX_PRICE,
                         TG_PRICE_MAX_RATE_PPM};
    tg_price_usage_t u = {TG_PRICE_MAX_TOKENS, TG_PRICE_MAX_TOKENS, TG_PRICE_MAX_TOKENS,
                          TG_PRICE_MAX_TOKENS, TG_PRICE_MAX_IMAGES};
    err[0] = '\0';
    assert_int_equal(tg_price_cost(&c, &u, &cost, err, sizeof err), TG_PRICE_EOVERFLOW);
    assert_int_equal(cost, 42);
    /* largest token counts with a price that fits: exact */
    tg_price_card_t small = {8000000, 0, 0, 0, 0, 0, 1000000};
    tg_price_usage_t big = {TG_PRICE_MAX_TOKENS, 0, 0, 0, 0};
    assert_int_equal(tg_price_cost(&small, &big, &cost, NULL, 0), 0);
    assert_int_equal(cost, ref_cost(&small, &big));
    /* past each limit: ERANGE naming the input */
    struct {
        tg_price_card_t c;
        tg_price_usage_t u;
        const char *word;
    } bad[] = {
        {{-1, 0, 0, 0, 0, 0, 1000000}, {0}, "input price -1"},
        {{0, TG_PRICE_MAX_PRICE + 1, 0, 0, 0, 0, 1000000}, {0}, "output price"},
        {{0, 0, -5, 0, 0, 0, 1000000}, {0}, "cache-read price"},
        {{0, 0, 0, 0, -1, 0, 1000000}, {0}, "image price"},
        {{0, 0, 0, 0, 0, -1, 1000000}, {0}, "per-request price -1"},
        {{0, 0, 0, 0, 0, TG_PRICE_MAX_PRICE + 1, 1000000}, {0}, "per-request price"},
        {{0, 0, 0, 0, 0, 0, TG_PRICE_MAX_RATE_PPM + 1}, {0}, "rate"},
        {{0, 0, 0, 0, 0, 0, 1000000}, {TG_PRICE_MAX_TOKENS + 1, 0, 0, 0, 0}, "input token count"},
        {{0, 0, 0, 0, 0, 0, 1000000}, {0, 0, 0, TG_PRICE_MAX_TOKENS + 1, 0}, "cache-write token"},
        {{0, 0, 0, 0, 0, 0, 1000000}, {0, 0, 0, 0, TG_PRICE_MAX_IMAGES + 1}, "image count"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(tg_price_cost(&bad[i].c, &bad[i].u, &cost, err, sizeof err),
                         TG_PRICE_ERANGE);
        assert_non_null(strstr(err, bad[i].word));
    }
}

static void test_add_overflow(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    int64_t acc = INT64_MAX - 5;
    assert_int_equal(tg_price_add(&acc, 5, err, sizeof err), 0);
    assert_int_equal(acc, INT64_MAX);
    assert_int_equal(tg_price_add(&acc, 1, err, sizeof err), TG_PRICE_EOVERFLOW);
    assert_int_equal(acc, INT64_MAX);
    assert_non_null(strstr(err, "overflows"));
    acc = INT64_MIN;
    assert_int_equal(tg_price_add(&acc, -1, NULL, 0), TG_PRICE_EOVERFLOW);
}

static void test_decimal(void **state)
{
    (void)state;
    char err[TG_ERRLEN], buf[32];
    int64_t v;
    const struct {
        const char *s;
        int rc;
        int64_t v;
    } cases[] = {
        {"2.5", 0, 2500000000},
        {"0.000000001", 0, 1},
        {"1000", 0, 1000000000000},
        {"-0.25", 0, -250000000},
        {"+3.", 0, 3000000000},
        {".5", 0, 500000000},
        {"9223372036.854775807", 0, INT64_MAX},
        {"-9223372036.854775808", 0, INT64_MIN},
        {"9223372036.854775808", TG_PRICE_EOVERFLOW, 0},
        {"99999999999999999999999999999999999999", TG_PRICE_EOVERFLOW, 0},
        {"1.0000000001", TG_PRICE_ESYNTAX, 0},
        {"abc", TG_PRICE_ESYNTAX, 0},
        {"", TG_PRICE_ESYNTAX, 0},
        {"1.2.3", TG_PRICE_ESYNTAX, 0},
        {"-", TG_PRICE_ESYNTAX, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        v = 7;
        err[0] = '\0';
        assert_int_equal(tg_price_from_decimal(cases[i].s, &v, err, sizeof err), cases[i].rc);
        if (cases[i].rc == 0)
            assert_int_equal(v, cases[i].v);
        else
            assert_true(err[0] != '\0' && v == 7);
    }
    assert_string_equal(tg_price_format(2500000000, buf, sizeof buf), "2.500000000");
    assert_string_equal(tg_price_format(-1, buf, sizeof buf), "-0.000000001");
    assert_string_equal(tg_price_format(INT64_MIN, buf, sizeof buf), "-9223372036.854775808");
    for (int i = 0; i < 10000; i++) { /* format and parse are inverse */
        int64_t x = (int64_t)rnd(), y;
        assert_int_equal(tg_price_from_decimal(tg_price_format(x, buf, sizeof buf), &y, NULL, 0), 0);
        assert_int_equal(x, y);
    }
}

static void test_strerror(void **state)
{
    (void)state;
    for (int c = 0; c >= TG_PRICE_ELAST; c--)
        assert_non_null(tg_price_strerror(c));
    assert_string_equal(tg_price_strerror(TG_PRICE_EOVERFLOW), "amount overflows int64 nano-units");
    assert_string_equal(tg_price_strerror(-99), "unknown error code");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_values),
        cmocka_unit_test(test_rounds_once_half_up),
        cmocka_unit_test(test_per_request_fee),
        cmocka_unit_test(test_matches_reference_and_never_negative),
        cmocka_unit_test(test_monotonic),
        cmocka_unit_test(test_ledger_sum_exact),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_add_overflow),
        cmocka_unit_test(test_decimal),
        cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
