/* price.c: the cost of a request with 128-bit intermediates and one
 * rounding (tg_price.h), checked ledger addition, and exact decimal
 * conversion of amounts. */
#include <stdio.h>
#include <string.h>

#include "base/tg_base.h"
#include "meter/tg_price.h"

typedef unsigned __int128 u128;

const char *tg_price_strerror(int code)
{
    switch ((code > 0 || code < TG_PRICE_ELAST) ? TG_PRICE_ELAST : code) {
    case TG_PRICE_OK:
        return "ok";
    case TG_PRICE_ERANGE:
        return "price input out of range";
    case TG_PRICE_EOVERFLOW:
        return "amount overflows int64 nano-units";
    case TG_PRICE_ESYNTAX:
        return "not a decimal amount";
    case TG_PRICE_ELAST:
        return "unknown error code";
    }
    return "unknown error code";
}

static int check_price(const char *what, int64_t p, char *err, size_t errlen)
{
    if (p < 0 || p > TG_PRICE_MAX_PRICE)
        return tg_errf(err, errlen, TG_PRICE_ERANGE,
                       "%s price %lld is outside 0..%lld nano-units", what, (long long)p,
                       (long long)TG_PRICE_MAX_PRICE);
    return 0;
}

static int check_count(const char *what, uint64_t n, uint64_t max, char *err, size_t errlen)
{
    if (n > max)
        return tg_errf(err, errlen, TG_PRICE_ERANGE, "%s count %llu is above the limit %llu",
                       what, (unsigned long long)n, (unsigned long long)max);
    return 0;
}

int tg_price_cost(const tg_price_card_t *c, const tg_price_usage_t *u, int64_t *cost, char *err,
                  size_t errlen)
{
    int rc;
    if ((rc = check_price("input", c->pc_input, err, errlen)) != 0 ||
        (rc = check_price("output", c->pc_output, err, errlen)) != 0 ||
        (rc = check_price("cache-read", c->pc_cache_read, err, errlen)) != 0 ||
        (rc = check_price("cache-write", c->pc_cache_write, err, errlen)) != 0 ||
        (rc = check_price("image", c->pc_image, err, errlen)) != 0 ||
        (rc = check_price("per-request", c->pc_request, err, errlen)) != 0 ||
        (rc = check_count("input token", u->pu_input, TG_PRICE_MAX_TOKENS, err, errlen)) != 0 ||
        (rc = check_count("output token", u->pu_output, TG_PRICE_MAX_TOKENS, err, errlen)) != 0 ||
        (rc = check_count("cache-read token", u->pu_cache_read, TG_PRICE_MAX_TOKENS, err,
                          errlen)) != 0 ||
        (rc = check_count("cache-write token", u->pu_cache_write, TG_PRICE_MAX_TOKENS, err,
                          errlen)) != 0 ||
        (rc = check_count("image", u->pu_images, TG_PRICE_MAX_IMAGES, err, errlen)) != 0)
        return rc;
    if (c->pc_rate_ppm > TG_PRICE_MAX_RATE_PPM)
        return tg_errf(err, errlen, TG_PRICE_ERANGE, "rate %u ppm is above the limit %u ppm",
                       c->pc_rate_ppm, TG_PRICE_MAX_RATE_PPM);

    /* In units of 1e-6 nano: each term < 2^40 x 1e15 < 1.2e27; images
     * < 2^20 x 1e15 x 1e6 < 1.1e27; the request fee <= 1e15 x 1e6 = 1e21;
     * the sum < 6e27, times the rate (<= 1e9) < 6e36 < 2^128 (3.4e38). */
    u128 sum = (u128)u->pu_input * (uint64_t)c->pc_input +
               (u128)u->pu_output * (uint64_t)c->pc_output +
               (u128)u->pu_cache_read * (uint64_t)c->pc_cache_read +
               (u128)u->pu_cache_write * (uint64_t)c->pc_cache_write +
               (u128)u->pu_images * (uint64_t)c->pc_image * 1000000u +
               (u128)(uint64_t)c->pc_request * 1000000u;
    const u128 den = (u128)1000000 * 1000000; /* per 1M tokens, and ppm */
    u128 q = (sum * c->pc_rate_ppm + den / 2) / den; /* half up, once */
    if (q > (u128)INT64_MAX)
        return tg_errf(err, errlen, TG_PRICE_EOVERFLOW,
                       "the cost exceeds %lld nano-units (int64)", (long long)INT64_MAX);
    *cost = (int64_t)q;
    return 0;
}

int tg_price_add(int64_t *acc, int64_t v, char *err, size_t errlen)
{
    int64_t r;
    if (__builtin_add_overflow(*acc, v, &r))
        return tg_errf(err, errlen, TG_PRICE_EOVERFLOW,
                       "adding %lld to %lld overflows int64 nano-units", (long long)v,
                       (long long)*acc);
    *acc = r;
    return 0;
}

#define TOO_LARGE "'%s' is too large: an amount is at most 9223372036.854775807 (int64 nano-units)"

int tg_price_from_decimal(const char *s, int64_t *nano, char *err, size_t errlen)
{
    const char *p = s ? s : "";
    int neg = 0, digits = 0, frac = -1;
    u128 v = 0;
    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    for (; *p; p++) {
        if (*p == '.' && frac < 0) {
            frac = 0;
            continue;
        }
        if (*p < '0' || *p > '9' || frac >= 9)
            return tg_errf(err, errlen, TG_PRICE_ESYNTAX,
                           "'%s' is not a decimal amount with at most 9 decimals", s ? s : "");
        v = v * 10 + (unsigned)(*p - '0');
        digits++;
        if (frac >= 0)
            frac++;
        if (v > ((u128)1 << 100))
            return tg_errf(err, errlen, TG_PRICE_EOVERFLOW, TOO_LARGE, s);
    }
    if (digits == 0)
        return tg_errf(err, errlen, TG_PRICE_ESYNTAX, "'%s' is not a decimal amount", s ? s : "");
    for (int k = frac < 0 ? 0 : frac; k < 9; k++)
        v *= 10;
    if (v > (u128)INT64_MAX + (unsigned)neg)
        return tg_errf(err, errlen, TG_PRICE_EOVERFLOW, TOO_LARGE, s);
    *nano = neg ? (int64_t)(0 - (uint64_t)v) : (int64_t)v;
    return 0;
}

char *tg_price_format(int64_t nano, char *buf, size_t bufsize)
{
    uint64_t a = nano < 0 ? 0 - (uint64_t)nano : (uint64_t)nano;
    snprintf(buf, bufsize, "%s%llu.%09llu", nano < 0 ? "-" : "",
             (unsigned long long)(a / 1000000000u), (unsigned long long)(a % 1000000000u));
    return buf;
}
