/* billing.c: the card version in effect and its price entry for a model,
 * the limits an entry must keep, the cost of a record through
 * tg_price_cost, and the bucket a route type pays from (tg_billing.h). The agent and the
 * control plane both link this file, so their costs agree to the nano-unit. */
#include <fnmatch.h>
#include <stdio.h>
#include <string.h>

#include "base/tg_base.h"
#include "billing/tg_billing.h"
#include "meter/tg_price.h"

const char *tg_billing_strerror(int code)
{
    switch ((code > 0 || code < TG_BILLING_ELAST) ? TG_BILLING_ELAST : code) {
    case TG_BILLING_OK: return "ok";
    case TG_BILLING_EINVAL: return "no price entry";
    case TG_BILLING_ERANGE: return "price input out of range";
    case TG_BILLING_EOVERFLOW: return "cost overflows int64 nano-units";
    case TG_BILLING_ELAST: return "unknown error code";
    }
    return "unknown error code";
}

const Tollgate__V1__PriceEntry *tg_billing_lookup(const Tollgate__V1__PriceCard *card, const char *model,
                                                  int route_type)
{
    const Tollgate__V1__PriceEntry *best = NULL;
    int best_score = -1;
    if (card == NULL || model == NULL)
        return NULL;
    for (size_t i = 0; i < card->n_entries; i++) {
        const Tollgate__V1__PriceEntry *pe = card->entries[i];
        if (pe == NULL || pe->model == NULL)
            continue;
        int exact = strcmp(pe->model, model) == 0;
        if (!exact && fnmatch(pe->model, model, 0) != 0)
            continue;
        int rt = (int)pe->route_type;
        if (rt != 0 && rt != route_type)
            continue;
        /* exact model beats a glob, then a matching route type beats "any" */
        int score = exact * 2 + (rt != 0);
        if (score > best_score) {
            best = pe;
            best_score = score;
        }
    }
    return best;
}

/* How well entry pe matches (tg_billing_lookup's order): exact model 2,
 * a specific route type 1. */
static int entry_score(const Tollgate__V1__PriceEntry *pe, const char *model)
{
    return (strcmp(pe->model, model) == 0) * 2 + (pe->route_type != 0);
}

/* Whether another version of pc's card is also in effect at t and newer. */
static int superseded(Tollgate__V1__PriceCard *const *cards, size_t n, const Tollgate__V1__PriceCard *pc,
                      int64_t t_us)
{
    for (size_t j = 0; j < n; j++) {
        const Tollgate__V1__PriceCard *o = cards[j];
        if (o != NULL && o != pc && o->effective_at_us <= t_us && o->version > pc->version &&
            o->id != NULL && pc->id != NULL && strcmp(o->id, pc->id) == 0)
            return 1;
    }
    return 0;
}

const Tollgate__V1__PriceCard *tg_billing_select(Tollgate__V1__PriceCard *const *cards, size_t n,
                                                 const char *model, int route_type, const char *currency,
                                                 int64_t t_us, const Tollgate__V1__PriceEntry **entry)
{
    const Tollgate__V1__PriceCard *best = NULL;
    const Tollgate__V1__PriceEntry *best_pe = NULL;
    int best_score = -1;
    *entry = NULL;
    if (cards == NULL || model == NULL)
        return NULL;
    /* a snapshot holds a few versions per card: quadratic is fine here */
    for (size_t i = 0; i < n; i++) {
        const Tollgate__V1__PriceCard *pc = cards[i];
        if (pc == NULL || pc->effective_at_us > t_us)
            continue;
        if (currency && *currency && pc->currency && *pc->currency && strcmp(currency, pc->currency) != 0)
            continue;
        if (superseded(cards, n, pc, t_us))
            continue; /* only the version in effect counts, even if it lacks the model */
        const Tollgate__V1__PriceEntry *pe = tg_billing_lookup(pc, model, route_type);
        if (pe == NULL)
            continue;
        int score = entry_score(pe, model);
        if (score > best_score ||
            (score == best_score && strcmp(pc->id ? pc->id : "", best->id ? best->id : "") < 0)) {
            best = pc;
            best_pe = pe;
            best_score = score;
        }
    }
    *entry = best_pe;
    return best;
}

int tg_billing_entry_check(const Tollgate__V1__PriceEntry *pe, char *err, size_t errlen)
{
    if (pe == NULL)
        return tg_errf(err, errlen, TG_BILLING_EINVAL, "no price entry");
    const struct {
        const char *name;
        int64_t v;
    } prices[] = {{"input_per_mtok_nano", pe->input_per_mtok_nano},
                  {"output_per_mtok_nano", pe->output_per_mtok_nano},
                  {"cache_read_per_mtok_nano", pe->cache_read_per_mtok_nano},
                  {"cache_write_per_mtok_nano", pe->cache_write_per_mtok_nano},
                  {"per_image_nano", pe->per_image_nano},
                  {"per_request_nano", pe->per_request_nano}};
    for (size_t i = 0; i < sizeof(prices) / sizeof(prices[0]); i++)
        if (prices[i].v < 0 || prices[i].v > TG_PRICE_MAX_PRICE)
            return tg_errf(err, errlen, TG_BILLING_ERANGE,
                           "%s: %lld is outside 0..%lld nano-units (at most 1,000,000 currency units)",
                           prices[i].name, (long long)prices[i].v, (long long)TG_PRICE_MAX_PRICE);
    if (pe->rate_ppm < 0 || pe->rate_ppm > (int64_t)TG_PRICE_MAX_RATE_PPM)
        return tg_errf(err, errlen, TG_BILLING_ERANGE,
                       "rate_ppm: %lld is outside 0..%u ppm (0 means 1.0x, the most is %ux)",
                       (long long)pe->rate_ppm, TG_PRICE_MAX_RATE_PPM, TG_PRICE_MAX_RATE_PPM / 1000000u);
    return 0;
}

/* A count as tg_price wants it; negative is ERANGE (tg_price checks the
 * upper limits). */
static int count(const char *what, int64_t n, uint64_t *out, char *err, size_t errlen)
{
    if (n < 0)
        return tg_errf(err, errlen, TG_BILLING_ERANGE, "%s count %lld is negative", what, (long long)n);
    *out = (uint64_t)n;
    return 0;
}

int tg_billing_cost(const Tollgate__V1__PriceEntry *pe, const Tollgate__V1__TokenUsage *u, int64_t rate_ppm,
                    int64_t *cost, char *err, size_t errlen)
{
    tg_price_usage_t pu = {0, 0, 0, 0, 0};
    int rc;
    if (pe == NULL)
        return tg_errf(err, errlen, TG_BILLING_EINVAL, "no price entry to price with");
    if (u != NULL &&
        ((rc = count("input token", u->input_tokens, &pu.pu_input, err, errlen)) != 0 ||
         (rc = count("output token", u->output_tokens, &pu.pu_output, err, errlen)) != 0 ||
         (rc = count("cache-read token", u->cache_read_tokens, &pu.pu_cache_read, err, errlen)) != 0 ||
         (rc = count("cache-write token", u->cache_write_tokens, &pu.pu_cache_write, err, errlen)) != 0 ||
         (rc = count("image", u->images, &pu.pu_images, err, errlen)) != 0))
        return rc;
    if (rate_ppm == 0)
        rate_ppm = TG_BILLING_RATE_DEFAULT_PPM;
    if (rate_ppm < 0 || rate_ppm > (int64_t)TG_PRICE_MAX_RATE_PPM)
        return tg_errf(err, errlen, TG_BILLING_ERANGE, "rate %lld ppm is outside 0..%u ppm",
                       (long long)rate_ppm, TG_PRICE_MAX_RATE_PPM);
    tg_price_card_t pc = {pe->input_per_mtok_nano,
                          pe->output_per_mtok_nano,
                          pe->cache_read_per_mtok_nano,
                          pe->cache_write_per_mtok_nano,
                          pe->per_image_nano,
                          pe->per_request_nano,
                          (uint32_t)rate_ppm};
    rc = tg_price_cost(&pc, &pu, cost, err, errlen);
    if (rc == TG_PRICE_ERANGE)
        return TG_BILLING_ERANGE;
    if (rc != 0)
        return TG_BILLING_EOVERFLOW;
    return 0;
}

int tg_billing_estimate(const Tollgate__V1__PriceEntry *pe, int64_t input_max, int64_t output_max, int64_t images,
                        int64_t rate_ppm, int64_t *nano, char *err, size_t errlen)
{
    if (pe == NULL)
        return tg_errf(err, errlen, TG_BILLING_EINVAL, "no price entry to price with");
    /* the prompt at the dearest of the three input prices */
    Tollgate__V1__PriceEntry top = *pe;
    if (top.cache_read_per_mtok_nano > top.input_per_mtok_nano)
        top.input_per_mtok_nano = top.cache_read_per_mtok_nano;
    if (top.cache_write_per_mtok_nano > top.input_per_mtok_nano)
        top.input_per_mtok_nano = top.cache_write_per_mtok_nano;
    Tollgate__V1__TokenUsage u = TOLLGATE__V1__TOKEN_USAGE__INIT;
    u.input_tokens = input_max;
    u.output_tokens = output_max;
    u.images = images;
    return tg_billing_cost(&top, &u, rate_ppm, nano, err, errlen);
}

/* Days since 1970-01-01 of a civil date (proleptic Gregorian); Howard
 * Hinnant's days_from_civil. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int64_t *m)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yoe + era * 400 + (*m <= 2);
}

#define DAY_US (86400LL * 1000000)

int tg_billing_tz(const char *tz, int64_t *offset_us)
{
    unsigned hh, mm;
    int n = 0;
    if (tz == NULL || tz[0] == '\0' || strcmp(tz, "UTC") == 0) {
        *offset_us = 0;
        return 0;
    }
    if ((tz[0] != '+' && tz[0] != '-') || sscanf(tz + 1, "%2u:%2u%n", &hh, &mm, &n) != 2 || tz[1 + n] != '\0' ||
        n != 5 || mm >= 60 || hh * 60 + mm > 14 * 60)
        return TG_BILLING_EINVAL;
    *offset_us = (tz[0] == '-' ? -1 : 1) * (int64_t)(hh * 60 + mm) * 60 * 1000000;
    return 0;
}

static int window_utc(int window, int64_t t_us, int64_t *start_us, int64_t *end_us);

int tg_billing_window(int window, int64_t t_us, int64_t offset_us, int64_t *start_us, int64_t *end_us)
{
    /* the zone's wall clock runs offset_us ahead: its window, in UTC instants */
    int rc = window_utc(window, t_us + offset_us, start_us, end_us);
    if (rc == 0 && window != TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_TOTAL) {
        *start_us -= offset_us;
        *end_us -= offset_us;
    }
    return rc;
}

static int window_utc(int window, int64_t t_us, int64_t *start_us, int64_t *end_us)
{
    int64_t day = t_us >= 0 ? t_us / DAY_US : -((-t_us + DAY_US - 1) / DAY_US);
    int64_t y, m;
    switch (window) {
    case TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_DAY:
        *start_us = day * DAY_US;
        *end_us = *start_us + DAY_US;
        return 0;
    case TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_WEEK: {
        /* 1970-01-01 was a Thursday: Monday is day 4 of that week */
        int64_t dow = ((day % 7) + 7 + 3) % 7; /* 0 = Monday */
        *start_us = (day - dow) * DAY_US;
        *end_us = *start_us + 7 * DAY_US;
        return 0;
    }
    case TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_MONTH:
        civil_from_days(day, &y, &m);
        *start_us = days_from_civil(y, m, 1) * DAY_US;
        *end_us = (m == 12 ? days_from_civil(y + 1, 1, 1) : days_from_civil(y, m + 1, 1)) * DAY_US;
        return 0;
    case TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_TOTAL:
        *start_us = 0;
        *end_us = INT64_MAX;
        return 0;
    default:
        return TG_BILLING_EINVAL;
    }
}

const char *tg_billing_window_name(int window)
{
    switch (window) {
    case TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_DAY: return "day";
    case TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_WEEK: return "week";
    case TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_MONTH: return "month";
    case TOLLGATE__V1__LIMIT_WINDOW__LIMIT_WINDOW_TOTAL: return "total";
    default: return NULL;
    }
}

int tg_billing_scope(const char *kind, const char *id, int window, int64_t t_us, int64_t offset_us, char *out,
                     size_t outlen)
{
    int n;
    if (strcmp(kind, "run") == 0) {
        n = snprintf(out, outlen, "run/%s", id);
    } else {
        int64_t start, end;
        const char *name = tg_billing_window_name(window);
        if (name == NULL || tg_billing_window(window, t_us, offset_us, &start, &end) != 0)
            return TG_BILLING_EINVAL;
        n = snprintf(out, outlen, "%s/%s/%s/%lld", kind, id, name, (long long)start);
    }
    return n < 0 || (size_t)n >= outlen ? TG_BILLING_ERANGE : 0;
}

static const char *const RATE_OWNER[2] = {"key", "project"};

int tg_billing_rate_scope(int owner, const char *id, int what, int64_t t_us, char *out, size_t outlen,
                          int64_t *start_us, int64_t *end_us)
{
    if ((owner != TG_BILLING_RATE_KEY && owner != TG_BILLING_RATE_PROJECT) ||
        (what != TG_BILLING_RATE_REQUESTS && what != TG_BILLING_RATE_TOKENS) || t_us < 0)
        return TG_BILLING_EINVAL;
    int64_t start = t_us - t_us % TG_BILLING_RATE_WINDOW_US;
    int n = snprintf(out, outlen, "%s/%s/%s/%lld", RATE_OWNER[owner], id,
                     what == TG_BILLING_RATE_TOKENS ? "tpm" : "rpm", (long long)start);
    if (n < 0 || (size_t)n >= outlen)
        return TG_BILLING_ERANGE;
    if (start_us)
        *start_us = start;
    if (end_us)
        *end_us = start + TG_BILLING_RATE_WINDOW_US;
    return 0;
}

int tg_billing_rate_parse(const char *scope, int *owner, char *id_out, size_t idlen, int *what, int64_t *start_us)
{
    int o;
    if (strncmp(scope, "key/", 4) == 0)
        o = TG_BILLING_RATE_KEY;
    else if (strncmp(scope, "project/", 8) == 0)
        o = TG_BILLING_RATE_PROJECT;
    else
        return TG_BILLING_EINVAL;
    const char *id = scope + strlen(RATE_OWNER[o]) + 1, *slash = strchr(id, '/');
    if (slash == NULL || slash == id || (size_t)(slash - id) >= idlen)
        return TG_BILLING_EINVAL;
    const char *w = slash + 1;
    if (strncmp(w, "rpm/", 4) == 0)
        *what = TG_BILLING_RATE_REQUESTS;
    else if (strncmp(w, "tpm/", 4) == 0)
        *what = TG_BILLING_RATE_TOKENS;
    else
        return TG_BILLING_EINVAL;
    int64_t start = 0;
    const char *d = w + 4;
    if (*d == '\0')
        return TG_BILLING_EINVAL;
    for (; *d; d++) {
        if (*d < '0' || *d > '9' || start > (INT64_MAX - 9) / 10)
            return TG_BILLING_EINVAL;
        start = start * 10 + (*d - '0');
    }
    if (start % TG_BILLING_RATE_WINDOW_US != 0)
        return TG_BILLING_EINVAL;
    memcpy(id_out, id, (size_t)(slash - id));
    id_out[slash - id] = '\0';
    *start_us = start;
    if (owner)
        *owner = o;
    return 0;
}

const char *tg_billing_bucket(const Tollgate__V1__Account *a, int route_type)
{
    const char *name = NULL;
    if (a == NULL)
        return NULL;
    for (size_t i = 0; i < a->n_route_buckets; i++)
        if ((int)a->route_buckets[i]->route_type == route_type)
            name = a->route_buckets[i]->bucket;
    if (name == NULL) {
        if (route_type == TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_DIRECT)
            name = "credit";
        else if (route_type == TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED)
            name = "wallet";
        else if (a->n_buckets == 1) /* no route type: the only bucket there is */
            name = a->buckets[0]->name;
        else
            return NULL;
    }
    for (size_t i = 0; i < a->n_buckets; i++)
        if (a->buckets[i]->name != NULL && strcmp(a->buckets[i]->name, name) == 0)
            return a->buckets[i]->name;
    return NULL;
}
