/* tg_billing: the one pricing rule the agent and the control plane share.
 *
 * The agent prices every request it serves and reports the cost; the
 * control plane recomputes it at settlement and flags a record whose cost
 * differs (cost_mismatch). They agree to the nano-unit only if both run the
 * same code, so the three decisions that make a cost live here, over the
 * tollgate.v1 protobuf types both sides hold:
 *   - which card version is in effect and which of its entries prices a
 *     model (tg_billing_select, tg_billing_lookup),
 *   - whether an entry can be applied at all (tg_billing_entry_check: the
 *     control plane refuses a card at publish time by this same test),
 *   - the cost of a record from that entry, its normalized TokenUsage and a
 *     rate (tg_billing_cost, over meter/tg_price.h's tg_price_cost: one
 *     half-up rounding of the exact 128-bit value, per-request fee included),
 *   - which of an account's buckets pays for a route type (tg_billing_bucket).
 *
 * Money is int64 nano-units (1e-9 of the currency), prices per 1M tokens,
 * per image and per request, rates in parts per million; meter/tg_price.h
 * has the arithmetic and its limits, billing/README.md the rule in words.
 *
 * Caveats:
 *   - Pure functions over caller-owned messages: thread-safe, no allocation.
 *     A returned pointer points into the caller's message and is valid as
 *     long as that message is.
 *   - The usage must already be normalized: input_tokens excludes the
 *     cache-read and cache-write tokens, output_tokens includes reasoning.
 *   - A cost past the limits is an error, never a capped or wrapped number:
 *     the caller decides (the agent logs and charges nothing, the control
 *     plane flags the record).
 */
#ifndef TG_BILLING_H
#define TG_BILLING_H

#include <stddef.h>
#include <stdint.h>

#include "tollgate/v1/config.pb-c.h"
#include "tollgate/v1/usage.pb-c.h"

/* Error codes: 0 or one of these; tg_billing_strerror names them. */
enum {
    TG_BILLING_OK = 0,
    TG_BILLING_EINVAL = -900,    /* no price entry (NULL) */
    TG_BILLING_ERANGE = -901,    /* a count, price or rate negative or past its limit */
    TG_BILLING_EOVERFLOW = -902, /* the cost does not fit int64 nano-units */
    TG_BILLING_ELAST = -903      /* sentinel: append new codes above */
};

/* The rate a PriceEntry.rate_ppm or Channel.cost_rate_ppm of 0 means: 1.0x. */
#define TG_BILLING_RATE_DEFAULT_PPM 1000000

/* Names a TG_BILLING_E* code (0 gives "ok"). Never NULL; static storage. */
const char *tg_billing_strerror(int code);

/* The entry of `card` that prices `model` on `route_type` (a
 * TOLLGATE__V1__ROUTE_TYPE__* value): entries whose model equals `model`
 * or is an fnmatch(3) glob matching it, and whose route type is
 * `route_type` or UNSPECIFIED (any). Among those an exact model beats a
 * glob, then a matching route type beats UNSPECIFIED; on a tie the first
 * entry in card order wins.
 *   card        in: the card; NULL finds nothing
 *   model       in: the model to price (the route's model, else the
 *               requested one); NULL finds nothing
 *   route_type  in: the route type of the channel that served
 * Returns the entry (owned by card, valid while card is) or NULL when no
 * entry matches. Can't fail otherwise. */
const Tollgate__V1__PriceEntry *tg_billing_lookup(const Tollgate__V1__PriceCard *card, const char *model,
                                                  int route_type);

/* The entry of the snapshot's cards that prices `model` at time `t_us`:
 * for each card id, only the version in effect at t_us (the highest
 * version whose effective_at_us <= t_us) is looked at, with
 * tg_billing_lookup; a model that version does not list is unpriced by that
 * card, whatever earlier versions said. Cards of another currency are
 * skipped (an empty currency on either side matches any). When several
 * cards price the model (the control plane refuses two cards with the same
 * exact entry, but globs may overlap), the better entry wins (exact model,
 * then matching route type, as in tg_billing_lookup), then the card whose
 * id sorts first (strcmp): deterministic whatever the array's order.
 *   cards, n    in: every stored version of every card (any order); NULL
 *               entries are skipped
 *   model       in: the model to price; NULL finds nothing
 *   route_type  in: the serving channel's route type
 *   currency    in: the paying bucket's currency, or NULL/"" for any
 *   t_us        in: the request's start time
 *   entry       out: the entry (owned by the returned card), NULL when none
 * Returns the card version that prices the model (owned by the caller's
 * array) or NULL when none does: the request is unpriced. Can't fail
 * otherwise. */
const Tollgate__V1__PriceCard *tg_billing_select(Tollgate__V1__PriceCard *const *cards, size_t n,
                                                 const char *model, int route_type, const char *currency,
                                                 int64_t t_us, const Tollgate__V1__PriceEntry **entry);

/* Whether `pe` can price requests: every price (per 1M tokens, per image,
 * per request) within 0..TG_PRICE_MAX_PRICE and rate_ppm within
 * 0..TG_PRICE_MAX_RATE_PPM (meter/tg_price.h), the limits tg_billing_cost
 * enforces. The control plane calls it for every entry it publishes, so a
 * card that was accepted never fails pricing for its prices.
 *   pe   in: the entry; NULL is TG_BILLING_EINVAL
 *   err  out: "<field>: <value> is outside 0..<limit> (<meaning>)", the
 *        field named as in the .proto (rate_ppm, input_per_mtok_nano...)
 * Returns 0, TG_BILLING_EINVAL or TG_BILLING_ERANGE. */
int tg_billing_entry_check(const Tollgate__V1__PriceEntry *pe, char *err, size_t errlen);

/* The cost of one record in nano-units, rounded once, half up:
 *   (sum of tokens x price per 1M / 1e6 + images x per_image_nano
 *    + per_request_nano) x rate_ppm / 1e6
 * Pass the entry's rate_ppm for the platform price charged, the channel's
 * cost_rate_ppm for the upstream cost.
 *   pe        in: the price entry (tg_billing_lookup); NULL is TG_BILLING_EINVAL
 *   usage     in: normalized counts; NULL means zero usage (the
 *             per-request fee alone). reasoning_tokens is not priced
 *             (it is part of output_tokens)
 *   rate_ppm  in: parts per million; 0 means TG_BILLING_RATE_DEFAULT_PPM
 *   cost      out: the cost (>= 0); unchanged on error
 *   err       out: the detail of an error (may be NULL), naming the input
 * Returns 0, TG_BILLING_EINVAL, TG_BILLING_ERANGE (a negative count, price
 * or rate, or one past meter/tg_price.h's TG_PRICE_MAX_*) or
 * TG_BILLING_EOVERFLOW (the cost exceeds INT64_MAX nano-units). */
int tg_billing_cost(const Tollgate__V1__PriceEntry *pe, const Tollgate__V1__TokenUsage *usage,
                    int64_t rate_ppm, int64_t *cost, char *err, size_t errlen);

/* The upper estimate of a request's cost, reserved before its first attempt
 * (pre-authorization): input_max tokens at the highest of the entry's
 * input, cache-read and cache-write prices (the provider decides how much
 * of the prompt is cached), output_max tokens at the output price, images
 * at per_image_nano, plus the per-request fee, at rate_ppm, with
 * tg_billing_cost's rounding. Rounding is monotonic, so the cost of any
 * usage within these maxima (input + cache tokens <= input_max, output <=
 * output_max, images <= images) is <= the estimate.
 *   pe          in: the price entry; NULL is TG_BILLING_EINVAL
 *   input_max   in: prompt tokens at most (a local count, or its byte
 *               length: a byte-level BPE never makes more tokens than bytes)
 *   output_max  in: the output cap (max_tokens or the route's default)
 *   images      in: images at most
 *   rate_ppm    in: as for tg_billing_cost
 *   nano        out: the estimate; unchanged on error
 * Returns what tg_billing_cost returns (ERANGE for counts past the limits:
 * such a request cannot be pre-authorized). */
int tg_billing_estimate(const Tollgate__V1__PriceEntry *pe, int64_t input_max, int64_t output_max, int64_t images,
                        int64_t rate_ppm, int64_t *nano, char *err, size_t errlen);

/* ---- budget scopes beyond buckets ------------------------------------------------
 * A key's or project's spend limit counts spend in a calendar window; a
 * run's budget counts all the run's spend. Each (limit, window) is a scope
 * with its own remaining budget and spend leases, named by a scope id both
 * sides derive the same way:
 *   key/<key id>/<day|week|month|total>/<window start, us>
 *   project/<project id>/<window>/<window start, us>
 *   run/<run id>
 * Windows are calendar windows in the account's time zone: a day from
 * 00:00, an ISO week from Monday 00:00, a calendar month from the 1st
 * 00:00; total never resets (start 0). A zone is UTC or a fixed offset. */

/* The offset of an Account.time_zone: "" or "UTC" is 0, "+HH:MM" or
 * "-HH:MM" (at most 14:00) its signed microseconds. Returns 0, or
 * TG_BILLING_EINVAL (anything else: names such as "Europe/Paris" are not
 * supported). */
int tg_billing_tz(const char *tz, int64_t *offset_us);

/* The start and end (exclusive; INT64_MAX for total), as UTC instants, of
 * the window of kind `window` (a TOLLGATE__V1__LIMIT_WINDOW__* value) that
 * holds t_us, in the zone offset_us east of UTC (tg_billing_tz). Returns 0,
 * or TG_BILLING_EINVAL for an unknown window (nothing set). */
int tg_billing_window(int window, int64_t t_us, int64_t offset_us, int64_t *start_us, int64_t *end_us);

/* The name of a window kind: "day", "week", "month", "total", or NULL. */
const char *tg_billing_window_name(int window);

/* Writes the scope id of a key's (kind "key") or project's (kind
 * "project") limit `window` at t_us in the zone offset_us, or of a run (kind "run": window and
 * t_us ignored) into out. Returns 0, or TG_BILLING_EINVAL (unknown window)
 * or TG_BILLING_ERANGE (out too small). */
int tg_billing_scope(const char *kind, const char *id, int window, int64_t t_us, int64_t offset_us, char *out,
                     size_t outlen);

/* ---- rate windows: a key's or a project's RateLimit across agents ----------------
 * The requests-per-minute and tokens-per-minute limits of a key
 * (ApiKey.rate_limit) and of a project (Project.rate_limit: every key of
 * the project together) are scopes too, leased like budgets (docs/SPEND.md,
 * "Rate limits"), one per UTC minute (the window of a limit is the minute
 * that holds the request's start, by the agent's clock):
 *   key/<key id>/rpm/<minute start, us>           requests
 *   key/<key id>/tpm/<minute start, us>           tokens
 *   project/<project id>/rpm|tpm/<minute start>   the same, for a project
 * Nothing settles them: an agent's hold counts what it admitted, and the
 * window's scope is simply not used after its minute. */
#define TG_BILLING_RATE_WINDOW_US (60LL * 1000000)

enum { TG_BILLING_RATE_REQUESTS = 0, TG_BILLING_RATE_TOKENS = 1 };
enum { TG_BILLING_RATE_KEY = 0, TG_BILLING_RATE_PROJECT = 1 }; /* whose limit */

/* Writes the scope id of the rate window `what` (TG_BILLING_RATE_REQUESTS
 * or _TOKENS) of key or project `id` (owner TG_BILLING_RATE_KEY or
 * _PROJECT) holding t_us into out, and the window's start and end
 * (exclusive) into *start_us / *end_us (either may be NULL). Returns 0,
 * TG_BILLING_EINVAL (unknown owner or `what`, negative t_us) or
 * TG_BILLING_ERANGE (out too small). */
int tg_billing_rate_scope(int owner, const char *id, int what, int64_t t_us, char *out, size_t outlen,
                          int64_t *start_us, int64_t *end_us);

/* Reads a rate scope id: *owner (may be NULL), the key's or project's id
 * into id (idlen bytes with the 0), *what and the window's *start_us.
 * Returns 0, or TG_BILLING_EINVAL when scope is not a rate scope id (a
 * spend scope, a start that is not a minute's, an id too long): nothing
 * useful is left in the outputs. */
int tg_billing_rate_parse(const char *scope, int *owner, char *id, size_t idlen, int *what, int64_t *start_us);

/* The bucket of account `a` that pays for `route_type`: the account's
 * route_buckets override (the last one for the route type), else DIRECT ->
 * "credit", POOLED -> "wallet", else (no route type) the account's only
 * bucket when it has exactly one. The name must be one of a->buckets.
 * Returns the bucket's name (owned by a, valid while a is), or NULL when
 * the account (NULL included) has no such bucket. Can't fail otherwise. */
const char *tg_billing_bucket(const Tollgate__V1__Account *a, int route_type);

#endif
