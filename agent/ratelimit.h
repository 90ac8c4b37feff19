/* ratelimit.h: the arithmetic and wire formats of rate limits on the agent
 * (ApiKey.rate_limit and Project.rate_limit: requests and tokens per UTC
 * minute).
 *
 * The limits are enforced on spend leases (lease.h) over one scope per key or project
 * and minute (billing/tg_billing.h "rate windows"); request.c's side of it
 * is in ratelimit.c. What is here has no state and no locks: the numbers a
 * response reports (remaining, reset) and their formats, as OpenAI and
 * Anthropic send them:
 *
 *   OpenAI     x-ratelimit-{limit,remaining,reset}-{requests,tokens};
 *              reset as a duration until the window resets ("1s", "6m0s",
 *              "250ms", "1.5s")
 *   Anthropic  anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset};
 *              reset as the RFC 3339 time it resets ("2026-01-01T00:01:00Z")
 *
 * and Retry-After in whole seconds. Every function can be called from any
 * thread. */
#ifndef TG_AGENT_RATELIMIT_H
#define TG_AGENT_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

/* Writes the time until a window resets, us microseconds (rounded up to
 * the millisecond; negative is 0), as OpenAI's reset headers do (Go's
 * duration format): "0s", "250ms", "1s", "1.5s", "6m0s", "1h0m0s". Returns
 * 0, or -1 when out is too small (out is then empty when outlen > 0). */
int tg_rate_fmt_duration(int64_t us, char *out, size_t outlen);

/* Writes the instant t_us as RFC 3339 UTC to the second (a window's
 * reset is a whole minute): "2026-01-01T00:01:00Z". Returns 0, or -1 (out
 * too small, or a time gmtime cannot show). */
int tg_rate_fmt_time(int64_t t_us, char *out, size_t outlen);

/* Retry-After for a request refused in a window that ends at end_us: the
 * whole seconds until then, rounded up, at least 1. */
int64_t tg_rate_retry_after(int64_t now_us, int64_t end_us);

/* What a response reports as remaining of a limit: what this agent may
 * still admit in the window as of its last lease answer (its free slice
 * plus what no agent holds), within 0..limit. */
int64_t tg_rate_remaining(int64_t limit, int64_t free_part, int64_t unheld);

#endif
