/* billing_fuzz.c: libFuzzer target for the pricing arithmetic
 * (tg_billing_cost over meter/tg_price.h). The input gives six prices, five
 * counts and a rate (each raw, within its limit, at its limit +-, or small);
 * the target computes the exact cost with __int128 and one half-up
 * rounding, and the library must agree to the nano-unit: the same cost,
 * TG_BILLING_ERANGE exactly when an input is outside its limit, and
 * TG_BILLING_EOVERFLOW exactly when the cost passes INT64_MAX.
 */
#include <stdint.h>
#include <string.h>

#include "billing/tg_billing.h"
#include "meter/tg_price.h"
#include "tests/fuzz/fuzz.h"

typedef __int128 i128;

/* Draws a value from 8 input bytes: raw, within 0..limit, near the limit
 * (limit-2..limit+1), or small. */
static int64_t draw(const uint8_t **p, size_t *n, int64_t limit)
{
    uint64_t r = 0;
    for (int i = 0; i < 8; i++) {
        r = r << 8 | (*n ? **p : 0);
        if (*n) {
            (*p)++;
            (*n)--;
        }
    }
    uint64_t v = r >> 2;
    switch (r & 3) {
    case 0: return (int64_t)r;
    case 1: return (int64_t)(v % ((uint64_t)limit + 1));
    case 2: return limit + 1 - (int64_t)(v % 4);
    default: return (int64_t)(v % 2000);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data;
    size_t n = size;
    Tollgate__V1__PriceEntry pe = TOLLGATE__V1__PRICE_ENTRY__INIT;
    Tollgate__V1__TokenUsage u = TOLLGATE__V1__TOKEN_USAGE__INIT;
    const int64_t MP = TG_PRICE_MAX_PRICE, MT = (int64_t)TG_PRICE_MAX_TOKENS, MI = (int64_t)TG_PRICE_MAX_IMAGES;
    pe.input_per_mtok_nano = draw(&p, &n, MP);
    pe.output_per_mtok_nano = draw(&p, &n, MP);
    pe.cache_read_per_mtok_nano = draw(&p, &n, MP);
    pe.cache_write_per_mtok_nano = draw(&p, &n, MP);
    pe.per_image_nano = draw(&p, &n, MP);
    pe.per_request_nano = draw(&p, &n, MP);
    u.input_tokens = draw(&p, &n, MT);
    u.output_tokens = draw(&p, &n, MT);
    u.cache_read_tokens = draw(&p, &n, MT);
    u.cache_write_tokens = draw(&p, &n, MT);
    u.images = draw(&p, &n, MI);
    u.reasoning_tokens = draw(&p, &n, MT);
    int64_t rate = draw(&p, &n, TG_PRICE_MAX_RATE_PPM);

    int64_t cost = -7;
    char err[256] = "";
    int rc = tg_billing_cost(&pe, &u, rate, &cost, err, sizeof err);

    int64_t prices[6] = {pe.input_per_mtok_nano, pe.output_per_mtok_nano, pe.cache_read_per_mtok_nano,
                         pe.cache_write_per_mtok_nano, pe.per_image_nano, pe.per_request_nano};
    int64_t counts[4] = {u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens};
    int64_t r = rate ? rate : TG_BILLING_RATE_DEFAULT_PPM;
    int range = r < 0 || r > (int64_t)TG_PRICE_MAX_RATE_PPM || u.images < 0 || u.images > MI;
    for (int i = 0; i < 6; i++)
        range |= prices[i] < 0 || prices[i] > MP;
    for (int i = 0; i < 4; i++)
        range |= counts[i] < 0 || counts[i] > MT;
    if (range) {
        TG_FUZZ_CHECK(rc == TG_BILLING_ERANGE);
        TG_FUZZ_CHECK(cost == -7 && err[0] != '\0');
        return 0;
    }
    i128 sum = 0;
    for (int i = 0; i < 4; i++)
        sum += (i128)counts[i] * prices[i];
    sum += (i128)1000000 * ((i128)u.images * pe.per_image_nano + pe.per_request_nano);
    i128 exact = (sum * r + (i128)500000000000) / (i128)1000000000000;
    if (exact > INT64_MAX) {
        TG_FUZZ_CHECK(rc == TG_BILLING_EOVERFLOW);
        TG_FUZZ_CHECK(cost == -7);
        return 0;
    }
    if (rc != 0)
        fprintf(stderr, "tg_billing_cost: %d %s\n", rc, err);
    TG_FUZZ_CHECK(rc == 0);
    TG_FUZZ_CHECK((i128)cost == exact);
    return 0;
}
