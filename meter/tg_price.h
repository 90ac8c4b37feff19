/* tg_price: integer money and the cost of one request.
 *
 * Money is int64 nano-units: 1e-9 of the bucket's currency (USD 2.50 is
 * 2500000000). A price card holds the official prices per 1M tokens (input,
 * output, cache read, cache write) and per image, and a rate in parts per
 * million, plus a flat fee per request: the price charged is official x
 * rate / 1e6 (1000000 = the
 * official price, 800000 = 20% off, 1500000 = 50% markup); the rate applies
 * to the per-request fee too, like the per-image price. The same function
 * prices a channel's upstream cost: pass the channel's cost rate.
 *
 * One rounding, once per request: the exact cost is the rational number
 *     (sum over kinds of count x price_per_1M / 1e6 + images x image_price
 *      + request_fee) x rate / 1e6
 * computed with 128-bit integers (no intermediate rounding), then rounded to
 * the nearest nano-unit, halves up. So a request's cost is within half a
 * nano-unit of exact, and a ledger that sums request costs sums integers:
 * exact to the nano-unit.
 *
 * Limits (checked; past them a call fails with TG_PRICE_ERANGE, never wraps):
 * token counts <= TG_PRICE_MAX_TOKENS each, images <= TG_PRICE_MAX_IMAGES,
 * prices (the per-request fee included) 0..TG_PRICE_MAX_PRICE, rate <= TG_PRICE_MAX_RATE_PPM; within them
 * the 128-bit intermediate cannot overflow (README.md has the arithmetic),
 * and a result above INT64_MAX nano-units fails with TG_PRICE_EOVERFLOW.
 *
 * Plain structs, no protobuf: the agent and the control plane both link it.
 * Thread safety: pure functions.
 */
#ifndef TG_PRICE_H
#define TG_PRICE_H

#include <stddef.h>
#include <stdint.h>

enum {
    TG_PRICE_OK = 0,
    TG_PRICE_ERANGE = -1,    /* an input is negative or past its documented limit */
    TG_PRICE_EOVERFLOW = -2, /* the result does not fit int64 nano-units */
    TG_PRICE_ESYNTAX = -3,   /* a decimal amount does not parse */
    TG_PRICE_ELAST = -4      /* sentinel: keep last */
};

#define TG_PRICE_MAX_TOKENS ((uint64_t)1 << 40)     /* ~1.1e12 tokens of one kind */
#define TG_PRICE_MAX_IMAGES ((uint64_t)1 << 20)     /* images in one request */
#define TG_PRICE_MAX_PRICE ((int64_t)1000000000000000) /* 1e15 nano = 1e6 units per 1M tokens */
#define TG_PRICE_MAX_RATE_PPM ((uint32_t)1000000000)   /* 1000x */

/* Names a TG_PRICE_E* code (0 gives "ok"). Never NULL. */
const char *tg_price_strerror(int code);

typedef struct tg_price_card {
    int64_t pc_input;       /* nano-units per 1M input tokens (not cached) */
    int64_t pc_output;      /* nano-units per 1M output tokens (reasoning included) */
    int64_t pc_cache_read;  /* nano-units per 1M cache-read input tokens */
    int64_t pc_cache_write; /* nano-units per 1M cache-write input tokens */
    int64_t pc_image;       /* nano-units per image */
    int64_t pc_request;     /* nano-units per request, flat (0..TG_PRICE_MAX_PRICE) */
    uint32_t pc_rate_ppm;   /* charged = official x rate / 1e6 */
} tg_price_card_t;

typedef struct tg_price_usage {
    uint64_t pu_input;       /* input tokens at the input price (cache tokens excluded) */
    uint64_t pu_output;      /* output tokens, reasoning included */
    uint64_t pu_cache_read;  /* input tokens read from the prompt cache */
    uint64_t pu_cache_write; /* input tokens written to the prompt cache */
    uint64_t pu_images;      /* images priced per image */
} tg_price_usage_t;

/* The cost of one request in nano-units, rounded once (half up).
 * Returns 0 and sets *cost (>= 0), TG_PRICE_ERANGE (an input past its
 * limit; the message names it) or TG_PRICE_EOVERFLOW; *cost is unchanged
 * on error. */
int tg_price_cost(const tg_price_card_t *card, const tg_price_usage_t *usage, int64_t *cost,
                  char *err, size_t errlen);

/* Adds v to *acc, as a ledger sums costs. Returns 0, or TG_PRICE_EOVERFLOW
 * and leaves *acc unchanged. */
int tg_price_add(int64_t *acc, int64_t v, char *err, size_t errlen);

/* Parses a decimal amount of currency units ("2.5", "-0.000000001",
 * "1000") into nano-units, exactly: at most 9 decimals. Returns 0,
 * TG_PRICE_ESYNTAX or TG_PRICE_EOVERFLOW. */
int tg_price_from_decimal(const char *s, int64_t *nano, char *err, size_t errlen);

/* Writes nano as a decimal with 9 decimals ("2.500000000") into buf, which
 * should hold 32 bytes. Returns buf. Can't fail (truncates to bufsize). */
char *tg_price_format(int64_t nano, char *buf, size_t bufsize);

#endif
