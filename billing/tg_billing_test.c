/* tg_billing_test.c: the shared pricing rule: price-entry lookup (moved
 * from controlplane/agentside_test.c), the card version in effect (a model
 * dropped by the next version is unpriced, overlapping cards resolve the
 * same whatever their order), the limits an entry must keep, the cost of a record with the
 * per-request fee, rates and rounding, errors past the limits instead of a
 * capped number, and the route type -> bucket map. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "base/tg_base.h"
#include "billing/tg_billing.h"
#include "meter/tg_price.h"

static void test_lookup(void **state)
{
    (void)state;
    Tollgate__V1__PriceEntry glob = TOLLGATE__V1__PRICE_ENTRY__INIT, exact = glob, direct = glob;
    glob.model = "gpt-4o*";
    exact.model = "gpt-4o-mini";
    direct.model = "gpt-4o-mini";
    direct.route_type = TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_DIRECT;
    Tollgate__V1__PriceEntry *pes[] = {&glob, &exact, &direct};
    Tollgate__V1__PriceCard card = TOLLGATE__V1__PRICE_CARD__INIT;
    card.entries = pes;
    card.n_entries = 3;
    assert_ptr_equal(tg_billing_lookup(&card, "gpt-4o-mini", 1), &direct);
    assert_ptr_equal(tg_billing_lookup(&card, "gpt-4o-mini", 2), &exact);
    assert_ptr_equal(tg_billing_lookup(&card, "gpt-4o-2024", 2), &glob);
    assert_null(tg_billing_lookup(&card, "claude-3", 1));
    assert_null(tg_billing_lookup(NULL, "x", 1));
    assert_null(tg_billing_lookup(&card, NULL, 1));
    /* a glob for one route type beats nothing, but not an exact "any" */
    Tollgate__V1__PriceEntry gpooled = TOLLGATE__V1__PRICE_ENTRY__INIT;
    gpooled.model = "gpt-*";
    gpooled.route_type = TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED;
    Tollgate__V1__PriceEntry *pes2[] = {&gpooled, &exact};
    card.entries = pes2;
    card.n_entries = 2;
    assert_ptr_equal(tg_billing_lookup(&card, "gpt-4o-mini", 2), &exact);
    assert_ptr_equal(tg_billing_lookup(&card, "gpt-3.5", 2), &gpooled);
    assert_null(tg_billing_lookup(&card, "gpt-3.5", 1));
    /* a tie keeps the first entry */
    Tollgate__V1__PriceEntry twin = exact;
    Tollgate__V1__PriceEntry *pes3[] = {&exact, &twin};
    card.entries = pes3;
    assert_ptr_equal(tg_billing_lookup(&card, "gpt-4o-mini", 1), &exact);
}

static Tollgate__V1__PriceCard mkcard(const char *id, int64_t version, int64_t eff, const char *cur,
                                      Tollgate__V1__PriceEntry **e, size_t n)
{
    Tollgate__V1__PriceCard c = TOLLGATE__V1__PRICE_CARD__INIT;
    c.id = (char *)id;
    c.version = version;
    c.effective_at_us = eff;
    c.currency = (char *)cur;
    c.entries = e;
    c.n_entries = n;
    return c;
}

static void test_select_version_in_effect(void **state)
{
    (void)state;
    Tollgate__V1__PriceEntry m1 = TOLLGATE__V1__PRICE_ENTRY__INIT, x1 = m1, m2 = m1;
    m1.model = "m";
    m1.input_per_mtok_nano = 1;
    x1.model = "x";
    x1.input_per_mtok_nano = 5;
    m2.model = "m";
    m2.input_per_mtok_nano = 2;
    Tollgate__V1__PriceEntry *e1[] = {&m1, &x1}, *e2[] = {&m2};
    Tollgate__V1__PriceCard v1 = mkcard("std", 1, 10, "USD", e1, 2), v2 = mkcard("std", 2, 20, "USD", e2, 1);
    Tollgate__V1__PriceCard *cards[] = {&v2, &v1}; /* any order */
    const Tollgate__V1__PriceEntry *pe = NULL;
    assert_null(tg_billing_select(cards, 2, "m", 1, "USD", 5, &pe)); /* nothing in effect yet */
    assert_null(pe);
    assert_ptr_equal(tg_billing_select(cards, 2, "x", 1, "USD", 15, &pe), &v1);
    assert_ptr_equal(pe, &x1);
    assert_ptr_equal(tg_billing_select(cards, 2, "m", 1, "USD", 25, &pe), &v2);
    assert_ptr_equal(pe, &m2);
    /* version 2 dropped x: unpriced, not priced by version 1 */
    assert_null(tg_billing_select(cards, 2, "x", 1, "USD", 25, &pe));
    assert_null(pe);
    /* another currency, or no cards */
    assert_null(tg_billing_select(cards, 2, "m", 1, "EUR", 25, &pe));
    assert_ptr_equal(tg_billing_select(cards, 2, "m", 1, "", 25, &pe), &v2);
    assert_null(tg_billing_select(NULL, 0, "m", 1, "", 25, &pe));
    assert_null(tg_billing_select(cards, 2, NULL, 1, "", 25, &pe));
}

static void test_select_overlap(void **state)
{
    (void)state;
    Tollgate__V1__PriceEntry ea = TOLLGATE__V1__PRICE_ENTRY__INIT, eb = ea, glob = ea;
    ea.model = "m";
    eb.model = "m";
    glob.model = "m*";
    Tollgate__V1__PriceEntry *pa[] = {&ea}, *pb[] = {&eb}, *pg[] = {&glob};
    Tollgate__V1__PriceCard a = mkcard("a", 1, 0, "USD", pa, 1), b = mkcard("b", 1, 0, "USD", pb, 1),
                            g = mkcard("0glob", 1, 0, "USD", pg, 1);
    Tollgate__V1__PriceCard *ab[] = {&a, &b}, *ba[] = {&b, &a}, *gba[] = {&g, &b, &a};
    const Tollgate__V1__PriceEntry *pe;
    /* same entry in two cards: the card whose id sorts first, in any order */
    assert_ptr_equal(tg_billing_select(ab, 2, "m", 1, "USD", 1, &pe), &a);
    assert_ptr_equal(tg_billing_select(ba, 2, "m", 1, "USD", 1, &pe), &a);
    /* an exact entry beats a glob of a card that sorts first */
    assert_ptr_equal(tg_billing_select(gba, 3, "m", 1, "USD", 1, &pe), &a);
    assert_ptr_equal(tg_billing_select(gba, 3, "m2", 1, "USD", 1, &pe), &g);
}

static void test_entry_check(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    Tollgate__V1__PriceEntry e = TOLLGATE__V1__PRICE_ENTRY__INIT;
    e.model = "m";
    assert_int_equal(tg_billing_entry_check(&e, err, sizeof err), 0);
    e.input_per_mtok_nano = TG_PRICE_MAX_PRICE;
    e.per_request_nano = TG_PRICE_MAX_PRICE;
    e.rate_ppm = TG_PRICE_MAX_RATE_PPM;
    assert_int_equal(tg_billing_entry_check(&e, err, sizeof err), 0);
    e.rate_ppm = 999999999999LL;
    assert_int_equal(tg_billing_entry_check(&e, err, sizeof err), TG_BILLING_ERANGE);
    assert_non_null(strstr(err, "rate_ppm: 999999999999 is outside"));
    e.rate_ppm = 0;
    err[0] = 0;
    e.output_per_mtok_nano = 9000000000000000000LL;
    assert_int_equal(tg_billing_entry_check(&e, err, sizeof err), TG_BILLING_ERANGE);
    assert_non_null(strstr(err, "output_per_mtok_nano: 9000000000000000000 is outside"));
    e.output_per_mtok_nano = -1;
    err[0] = 0;
    assert_int_equal(tg_billing_entry_check(&e, err, sizeof err), TG_BILLING_ERANGE);
    assert_int_equal(tg_billing_entry_check(NULL, err, sizeof err), TG_BILLING_EINVAL);
    /* what passes the check prices without a range error */
    Tollgate__V1__PriceEntry ok = TOLLGATE__V1__PRICE_ENTRY__INIT;
    ok.model = "m";
    ok.per_image_nano = TG_PRICE_MAX_PRICE;
    ok.rate_ppm = TG_PRICE_MAX_RATE_PPM;
    int64_t cost = 0;
    assert_int_equal(tg_billing_cost(&ok, NULL, ok.rate_ppm, &cost, err, sizeof err), 0);
}

static int64_t cost_of(const Tollgate__V1__PriceEntry *pe, int64_t in, int64_t out, int64_t cr, int64_t cw,
                       int64_t img, int64_t rate)
{
    Tollgate__V1__TokenUsage u = TOLLGATE__V1__TOKEN_USAGE__INIT;
    u.input_tokens = in;
    u.output_tokens = out;
    u.cache_read_tokens = cr;
    u.cache_write_tokens = cw;
    u.images = img;
    int64_t c = -1;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_billing_cost(pe, &u, rate, &c, err, sizeof err), 0);
    return c;
}

static void test_cost(void **state)
{
    (void)state;
    Tollgate__V1__PriceEntry pe = TOLLGATE__V1__PRICE_ENTRY__INIT;
    pe.input_per_mtok_nano = 2500000000LL;   /* $2.50 / 1M */
    pe.output_per_mtok_nano = 10000000000LL; /* $10 / 1M */
    /* 1000 in, 500 out at 1.0x: 2500 + 5000 = 7500 micro = 7,500,000 nano */
    assert_int_equal(cost_of(&pe, 1000, 500, 0, 0, 0, 0), 7500000);
    assert_int_equal(cost_of(&pe, 1000, 500, 0, 0, 0, 1000000), 7500000);
    assert_int_equal(cost_of(&pe, 1000, 500, 0, 0, 0, 1500000), 11250000);
    /* reasoning tokens are part of output: not priced again */
    Tollgate__V1__TokenUsage u = TOLLGATE__V1__TOKEN_USAGE__INIT;
    u.input_tokens = 1000;
    u.output_tokens = 500;
    u.reasoning_tokens = 400;
    int64_t c = -1;
    assert_int_equal(tg_billing_cost(&pe, &u, 0, &c, NULL, 0), 0);
    assert_int_equal(c, 7500000);
    /* rounding: 1 token at 1 nano/Mtok = 1e-6 nano -> 0; half up at 0.5 */
    Tollgate__V1__PriceEntry one = TOLLGATE__V1__PRICE_ENTRY__INIT;
    one.input_per_mtok_nano = 1;
    assert_int_equal(cost_of(&one, 1, 0, 0, 0, 0, 0), 0);
    assert_int_equal(cost_of(&one, 499999, 0, 0, 0, 0, 0), 0);
    assert_int_equal(cost_of(&one, 500000, 0, 0, 0, 0, 0), 1);
    assert_int_equal(cost_of(&one, 1500000, 0, 0, 0, 0, 0), 2);
}

static void test_per_request_fee(void **state)
{
    (void)state;
    /* per request and per image are whole nano, scaled by the rate */
    Tollgate__V1__PriceEntry fl = TOLLGATE__V1__PRICE_ENTRY__INIT;
    fl.per_request_nano = 1000;
    fl.per_image_nano = 40000000;
    assert_int_equal(cost_of(&fl, 0, 0, 0, 0, 2, 0), 80001000);
    assert_int_equal(cost_of(&fl, 0, 0, 0, 0, 0, 500000), 500);
    /* no usage at all still pays the fee */
    int64_t c = -1;
    assert_int_equal(tg_billing_cost(&fl, NULL, 0, &c, NULL, 0), 0);
    assert_int_equal(c, 1000);
    /* the fee rounds with the tokens, once: 0.4 + 0.4 = 0.8 -> 1 */
    Tollgate__V1__PriceEntry mix = TOLLGATE__V1__PRICE_ENTRY__INIT;
    mix.input_per_mtok_nano = 1;
    mix.per_request_nano = 1;
    assert_int_equal(cost_of(&mix, 1000000, 0, 0, 0, 0, 400000), 1);
    /* the same as meter's tg_price_cost with the fee as pc_request, at the
     * platform rate and at a channel's cost rate */
    Tollgate__V1__PriceEntry pe = TOLLGATE__V1__PRICE_ENTRY__INIT;
    pe.input_per_mtok_nano = 150000000;
    pe.output_per_mtok_nano = 600000000;
    pe.cache_read_per_mtok_nano = 75000000;
    pe.cache_write_per_mtok_nano = 300000000;
    pe.per_image_nano = 7;
    pe.per_request_nano = 1234567;
    pe.rate_ppm = 1200000;
    const uint32_t rates[] = {1200000, 650001, 1};
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
        tg_price_card_t pc = {150000000, 600000000, 75000000, 300000000, 7, 1234567, rates[i]};
        tg_price_usage_t pu = {12345, 678, 9000, 11, 3};
        int64_t want = -1;
        assert_int_equal(tg_price_cost(&pc, &pu, &want, NULL, 0), 0);
        assert_int_equal(cost_of(&pe, 12345, 678, 9000, 11, 3, rates[i]), want);
    }
}

static void test_errors_not_caps(void **state)
{
    (void)state;
    char err[TG_ERRLEN];
    int64_t c = 42;
    Tollgate__V1__TokenUsage u = TOLLGATE__V1__TOKEN_USAGE__INIT;
    Tollgate__V1__PriceEntry pe = TOLLGATE__V1__PRICE_ENTRY__INIT;
    assert_int_equal(tg_billing_cost(NULL, &u, 0, &c, err, sizeof err), TG_BILLING_EINVAL);
    /* a price past tg_price's limit: ERANGE naming it, never INT64_MAX */
    pe.output_per_mtok_nano = INT64_MAX;
    u.output_tokens = 1000000;
    err[0] = '\0';
    assert_int_equal(tg_billing_cost(&pe, &u, 0, &c, err, sizeof err), TG_BILLING_ERANGE);
    assert_non_null(strstr(err, "output price"));
    /* within the limits but the result does not fit int64 */
    pe.output_per_mtok_nano = TG_PRICE_MAX_PRICE;
    u.output_tokens = (int64_t)TG_PRICE_MAX_TOKENS;
    assert_int_equal(tg_billing_cost(&pe, &u, 0, &c, err, sizeof err), TG_BILLING_EOVERFLOW);
    /* a fee past its limit, a negative fee */
    Tollgate__V1__PriceEntry fee = TOLLGATE__V1__PRICE_ENTRY__INIT;
    Tollgate__V1__TokenUsage z = TOLLGATE__V1__TOKEN_USAGE__INIT;
    fee.per_request_nano = TG_PRICE_MAX_PRICE + 1;
    err[0] = '\0'; /* the first error wins: clear it */
    assert_int_equal(tg_billing_cost(&fee, &z, 0, &c, err, sizeof err), TG_BILLING_ERANGE);
    assert_non_null(strstr(err, "per-request"));
    fee.per_request_nano = -1;
    assert_int_equal(tg_billing_cost(&fee, &z, 0, &c, err, sizeof err), TG_BILLING_ERANGE);
    /* negative counts and rates, a rate past the limit */
    fee.per_request_nano = 0;
    z.images = -1;
    err[0] = '\0'; /* the first error wins: clear it */
    assert_int_equal(tg_billing_cost(&fee, &z, 0, &c, err, sizeof err), TG_BILLING_ERANGE);
    assert_non_null(strstr(err, "image count -1"));
    z.images = 0;
    z.cache_read_tokens = (int64_t)TG_PRICE_MAX_TOKENS + 1;
    assert_int_equal(tg_billing_cost(&fee, &z, 0, &c, err, sizeof err), TG_BILLING_ERANGE);
    z.cache_read_tokens = 0;
    assert_int_equal(tg_billing_cost(&fee, &z, -1, &c, err, sizeof err), TG_BILLING_ERANGE);
    assert_int_equal(tg_billing_cost(&fee, &z, (int64_t)TG_PRICE_MAX_RATE_PPM + 1, &c, err, sizeof err),
                     TG_BILLING_ERANGE);
    assert_int_equal(tg_billing_cost(&fee, &z, (int64_t)1 << 33, &c, err, sizeof err), TG_BILLING_ERANGE);
    assert_int_equal(c, 42); /* unchanged on every error */
}

static void test_bucket(void **state)
{
    (void)state;
    Tollgate__V1__Account a = TOLLGATE__V1__ACCOUNT__INIT;
    Tollgate__V1__BucketSpec credit = TOLLGATE__V1__BUCKET_SPEC__INIT, wallet = credit, vip = credit;
    credit.name = "credit";
    wallet.name = "wallet";
    vip.name = "vip";
    Tollgate__V1__BucketSpec *bs[] = {&credit, &wallet, &vip};
    a.buckets = bs;
    a.n_buckets = 3;
    assert_string_equal(tg_billing_bucket(&a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_DIRECT), "credit");
    assert_string_equal(tg_billing_bucket(&a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED), "wallet");
    assert_null(tg_billing_bucket(&a, 0));
    Tollgate__V1__RouteBucket rb = TOLLGATE__V1__ROUTE_BUCKET__INIT;
    rb.route_type = TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED;
    rb.bucket = "vip";
    Tollgate__V1__RouteBucket *rbs[] = {&rb};
    a.route_buckets = rbs;
    a.n_route_buckets = 1;
    assert_string_equal(tg_billing_bucket(&a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED), "vip");
    /* a map naming a bucket the account lacks pays from nothing */
    rb.bucket = "gone";
    assert_null(tg_billing_bucket(&a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED));
    a.n_buckets = 1; /* only credit: no route type means the only bucket */
    a.n_route_buckets = 0;
    assert_string_equal(tg_billing_bucket(&a, 0), "credit");
    assert_null(tg_billing_bucket(&a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED));
    assert_null(tg_billing_bucket(NULL, 1));
}

/* The estimate bounds the cost of every usage within its maxima, however
 * the prompt splits into input, cache-read and cache-write tokens. */
static void test_estimate_bounds_cost(void **state)
{
    (void)state;
    Tollgate__V1__PriceEntry pe = TOLLGATE__V1__PRICE_ENTRY__INIT;
    pe.input_per_mtok_nano = 3000000000LL;      /* $3 */
    pe.output_per_mtok_nano = 15000000000LL;    /* $15 */
    pe.cache_read_per_mtok_nano = 300000000LL;  /* $0.30 */
    pe.cache_write_per_mtok_nano = 3750000000LL; /* $3.75: dearer than input */
    pe.per_request_nano = 7;
    pe.per_image_nano = 1000;
    int64_t est = -1;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_billing_estimate(&pe, 1000, 200, 1, 1500000, &est, err, sizeof err), 0);
    /* (1000 x 3.75 + 200 x 15) micro + 1000 + 7 nano, x 1.5 */
    assert_int_equal(est, (3750000 + 3000000 + 1007) * 3 / 2 + 1);
    for (int64_t cw = 0; cw <= 1000; cw += 250)
        for (int64_t cr = 0; cr + cw <= 1000; cr += 250)
            for (int64_t out = 0; out <= 200; out += 199) {
                Tollgate__V1__TokenUsage u = TOLLGATE__V1__TOKEN_USAGE__INIT;
                u.cache_write_tokens = cw;
                u.cache_read_tokens = cr;
                u.input_tokens = 1000 - cw - cr;
                u.output_tokens = out;
                u.images = 1;
                int64_t c = -1;
                assert_int_equal(tg_billing_cost(&pe, &u, 1500000, &c, NULL, 0), 0);
                assert_true(c <= est);
            }
    /* the full prompt at the dearest price is exactly the estimate */
    Tollgate__V1__TokenUsage u = TOLLGATE__V1__TOKEN_USAGE__INIT;
    u.cache_write_tokens = 1000;
    u.output_tokens = 200;
    u.images = 1;
    int64_t c = -1;
    assert_int_equal(tg_billing_cost(&pe, &u, 1500000, &c, NULL, 0), 0);
    assert_int_equal(c, est);
    /* past the limits: refused, never capped */
    assert_int_equal(tg_billing_estimate(&pe, 1000, (int64_t)1 << 50, 0, 0, &est, NULL, 0), TG_BILLING_ERANGE);
    assert_int_equal(tg_billing_estimate(NULL, 1, 1, 0, 0, &est, NULL, 0), TG_BILLING_EINVAL);
}

/* Windows are UTC calendar windows; both sides name a scope alike. */
static void test_windows_and_scopes(void **state)
{
    (void)state;
    int64_t s, e;
    /* 2026-12-07T04:30:00Z (a Monday) */
    const int64_t t = 1796617800LL * 1000000;
    assert_int_equal(tg_billing_window(TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_DAY, t, 0, &s, &e), 0);
    assert_int_equal(s, 1796601600LL * 1000000); /* 2026-12-07T00:00Z */
    assert_int_equal(e - s, 86400LL * 1000000);
    assert_int_equal(tg_billing_window(TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_WEEK, t, 0, &s, &e), 0);
    assert_int_equal(s, 1796601600LL * 1000000); /* Monday 2026-12-07 */
    assert_int_equal(tg_billing_window(TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_WEEK, t + 6 * 86400LL * 1000000, 0, &s, &e), 0);
    assert_int_equal(s, 1796601600LL * 1000000); /* Sunday: same week */
    assert_int_equal(tg_billing_window(TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_WEEK, 1796601600LL * 1000000 - 1, 0, &s, &e), 0);
    assert_int_equal(s, 1795996800LL * 1000000); /* a microsecond before Monday 00:00: the week before */
    assert_int_equal(tg_billing_window(TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_MONTH, t, 0, &s, &e), 0);
    assert_int_equal(s, 1796083200LL * 1000000); /* 2026-12-01T00:00Z */
    assert_int_equal(e, 1798761600LL * 1000000); /* 2027-01-01T00:00Z */
    /* February of a leap year */
    assert_int_equal(tg_billing_window(TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_MONTH, 1709251199LL * 1000000, 0, &s, &e), 0);
    assert_int_equal(s, 1706745600LL * 1000000); /* 2024-02-01 */
    assert_int_equal(e, 1709251200LL * 1000000); /* 2024-03-01 */
    assert_int_equal(tg_billing_window(TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_TOTAL, t, 0, &s, &e), 0);
    assert_int_equal(s, 0);
    assert_int_equal(tg_billing_window(0, t, 0, &s, &e), TG_BILLING_EINVAL);
    char id[128];
    assert_int_equal(tg_billing_scope("key", "key_1", TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_DAY, t, 0, id, sizeof id), 0);
    assert_string_equal(id, "key/key_1/day/1796601600000000");
    assert_int_equal(tg_billing_scope("run", "r-9", 0, 0, 0, id, sizeof id), 0);
    /* a zone east of UTC: 04:30Z is 12:30 at +08:00, its day began at 16:00Z the day before */
    int64_t tz;
    assert_int_equal(tg_billing_tz("+08:00", &tz), 0);
    assert_int_equal(tz, 8 * 3600LL * 1000000);
    assert_int_equal(tg_billing_window(TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_DAY, t, tz, &s, &e), 0);
    assert_int_equal(s, (1796601600LL - 8 * 3600) * 1000000);
    /* west: at -05:30 04:30Z is 23:00 the day before */
    assert_int_equal(tg_billing_tz("-05:30", &tz), 0);
    assert_int_equal(tg_billing_window(TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_DAY, t, tz, &s, &e), 0);
    assert_int_equal(s, (1796601600LL - 86400 + 5 * 3600 + 1800) * 1000000);
    assert_int_equal(tg_billing_tz("UTC", &tz), 0);
    assert_int_equal(tz, 0);
    assert_int_equal(tg_billing_tz("Europe/Paris", &tz), TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_tz("+15:00", &tz), TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_tz("+8:00", &tz), TG_BILLING_EINVAL);
    assert_string_equal(id, "run/r-9");
    assert_int_equal(tg_billing_scope("key", "k", TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_DAY, t, 0, id, 8), TG_BILLING_ERANGE);
}

static void test_strerror(void **state)
{
    (void)state;
    assert_string_equal(tg_billing_strerror(0), "ok");
    for (int c = TG_BILLING_EINVAL; c > TG_BILLING_ELAST; c--)
        assert_string_not_equal(tg_billing_strerror(c), "unknown error code");
    assert_string_equal(tg_billing_strerror(TG_BILLING_ELAST), "unknown error code");
    assert_string_equal(tg_billing_strerror(5), "unknown error code");
    assert_string_equal(tg_billing_strerror(-1), "unknown error code");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup),          cmocka_unit_test(test_select_version_in_effect),
        cmocka_unit_test(test_select_overlap),  cmocka_unit_test(test_entry_check),          cmocka_unit_test(test_cost),
        cmocka_unit_test(test_per_request_fee), cmocka_unit_test(test_errors_not_caps),
        cmocka_unit_test(test_bucket),          cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_estimate_bounds_cost),
        cmocka_unit_test(test_windows_and_scopes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
