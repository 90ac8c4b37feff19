/* ratelimit_test.c: the arithmetic of a key's rate limits: the minute
 * windows and their scope ids (billing/), the reset, Retry-After and
 * remaining numbers and their OpenAI and Anthropic formats (ratelimit.h),
 * and a rate window on the lease table: a slice admits up to the limit, a
 * request sent stays counted after its release, tokens are trued up to the
 * usage, and the next minute starts afresh; with the control plane gone,
 * the offline allowance counts what the agent admitted under leases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <pthread.h>

#include "agent/lease.h"
#include "agent/ratelimit.h"
#include "billing/tg_billing.h"

#define MIN_US TG_BILLING_RATE_WINDOW_US

static void test_windows_and_ids(void **state)
{
    (void)state;
    char id[200], key[64];
    int64_t start = 0, end = 0, s2 = 0;
    int what = -1;
    int64_t t = 1767225600LL * 1000000 + 61 * 1000000 + 5; /* 2026-01-01T00:01:01.000005Z */
    assert_int_equal(tg_billing_rate_scope(TG_BILLING_RATE_KEY, "key_1", TG_BILLING_RATE_REQUESTS, t, id, sizeof id, &start, &end), 0);
    assert_int_equal(start, 1767225600LL * 1000000 + MIN_US);
    assert_int_equal(end, start + MIN_US);
    assert_string_equal(id, "key/key_1/rpm/1767225660000000");
    assert_int_equal(tg_billing_rate_parse(id, NULL, key, sizeof key, &what, &s2), 0);
    assert_string_equal(key, "key_1");
    assert_int_equal(what, TG_BILLING_RATE_REQUESTS);
    assert_int_equal(s2, start);
    /* the last microsecond of a minute is in it; the next starts the next */
    assert_int_equal(tg_billing_rate_scope(TG_BILLING_RATE_KEY, "k", TG_BILLING_RATE_TOKENS, end - 1, id, sizeof id, &s2, NULL), 0);
    assert_int_equal(s2, start);
    assert_int_equal(tg_billing_rate_scope(TG_BILLING_RATE_KEY, "k", TG_BILLING_RATE_TOKENS, end, id, sizeof id, &s2, NULL), 0);
    assert_int_equal(s2, end);
    assert_string_equal(id, "key/k/tpm/1767225720000000");
    assert_int_equal(tg_billing_rate_parse(id, NULL, key, sizeof key, &what, &s2), 0);
    assert_int_equal(what, TG_BILLING_RATE_TOKENS);
    /* not rate scopes: spend windows, runs, a start inside a minute, junk */
    assert_int_equal(tg_billing_rate_parse("key/k/day/1767225600000000", NULL, key, sizeof key, &what, &s2),
                     TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_parse("run/r1", NULL, key, sizeof key, &what, &s2), TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_parse("key/k/rpm/1767225600000001", NULL, key, sizeof key, &what, &s2),
                     TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_parse("key/k/rpm/", NULL, key, sizeof key, &what, &s2), TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_parse("key/k/rpm/12x", NULL, key, sizeof key, &what, &s2), TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_parse("key//rpm/0", NULL, key, sizeof key, &what, &s2), TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_parse("key/k/rpm/99999999999999999999999", NULL, key, sizeof key, &what, &s2),
                     TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_parse("key/a-very-long-key-id/rpm/0", NULL, key, 8, &what, &s2), TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_scope(TG_BILLING_RATE_KEY, "k", 2, t, id, sizeof id, NULL, NULL), TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_scope(TG_BILLING_RATE_KEY, "k", 0, -1, id, sizeof id, NULL, NULL), TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_scope(TG_BILLING_RATE_KEY, "k", 0, t, id, 8, NULL, NULL), TG_BILLING_ERANGE);
    assert_int_equal(tg_billing_rate_scope(2, "k", 0, t, id, sizeof id, NULL, NULL), TG_BILLING_EINVAL);
    /* a project's windows: the same minutes, its own ids, told apart on parse */
    int owner = -1;
    assert_int_equal(
        tg_billing_rate_scope(TG_BILLING_RATE_PROJECT, "p1", TG_BILLING_RATE_TOKENS, t, id, sizeof id, &s2, NULL), 0);
    assert_string_equal(id, "project/p1/tpm/1767225660000000");
    assert_int_equal(tg_billing_rate_parse(id, &owner, key, sizeof key, &what, &s2), 0);
    assert_int_equal(owner, TG_BILLING_RATE_PROJECT);
    assert_string_equal(key, "p1");
    assert_int_equal(what, TG_BILLING_RATE_TOKENS);
    assert_int_equal(s2, start);
    assert_int_equal(tg_billing_rate_parse("key/k/rpm/0", &owner, key, sizeof key, &what, &s2), 0);
    assert_int_equal(owner, TG_BILLING_RATE_KEY);
    assert_int_equal(tg_billing_rate_parse("project/p/day/1767225600000000", &owner, key, sizeof key, &what, &s2),
                     TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_parse("account/a/rpm/0", &owner, key, sizeof key, &what, &s2), TG_BILLING_EINVAL);
    assert_int_equal(tg_billing_rate_parse("project//rpm/0", &owner, key, sizeof key, &what, &s2), TG_BILLING_EINVAL);
}

static void test_formats(void **state)
{
    (void)state;
    char v[40];
    struct {
        int64_t us;
        const char *want;
    } d[] = {
        {0, "0s"},           {-5, "0s"},           {1, "1ms"},            {250000, "250ms"},
        {999000, "999ms"},   {999001, "1s"},       {1000000, "1s"},       {1500000, "1.5s"},
        {1230000, "1.23s"},  {59999000, "59.999s"}, {60000000, "1m0s"},   {360000000, "6m0s"},
        {61500000, "1m1.5s"}, {3600000000LL, "1h0m0s"}, {3723004000LL, "1h2m3.004s"},
    };
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) {
        assert_int_equal(tg_rate_fmt_duration(d[i].us, v, sizeof v), 0);
        assert_string_equal(v, d[i].want);
    }
    assert_int_equal(tg_rate_fmt_duration(1500000, v, 4), -1);
    assert_string_equal(v, "");
    assert_int_equal(tg_rate_fmt_time(1767225660LL * 1000000 + 999999, v, sizeof v), 0);
    assert_string_equal(v, "2026-01-01T00:01:00Z");
    assert_int_equal(tg_rate_fmt_time(0, v, sizeof v), 0);
    assert_string_equal(v, "1970-01-01T00:00:00Z");
    assert_int_equal(tg_rate_fmt_time(1767225660LL * 1000000, v, 10), -1);
    /* Retry-After: whole seconds, rounded up, at least 1 */
    assert_int_equal(tg_rate_retry_after(0, 12 * 1000000), 12);
    assert_int_equal(tg_rate_retry_after(0, 12 * 1000000 + 1), 13);
    assert_int_equal(tg_rate_retry_after(0, 1), 1);
    assert_int_equal(tg_rate_retry_after(5000000, 5000000), 1);
    assert_int_equal(tg_rate_retry_after(6000000, 5000000), 1);
    /* remaining: the free slice plus what nobody holds, within 0..limit */
    assert_int_equal(tg_rate_remaining(20, 3, 10), 13);
    assert_int_equal(tg_rate_remaining(20, 0, 0), 0);
    assert_int_equal(tg_rate_remaining(20, -4, 2), 2);
    assert_int_equal(tg_rate_remaining(20, 15, 15), 20);
}

/* ---- a rate window on the lease table (its local authority) ------------------------ */

static int64_t g_rpm = 5, g_tpm = 1000;

static int limit_of(void *arg, const char *account_id, const char *scope, int64_t *budget)
{
    (void)arg;
    char key[64];
    int what;
    int64_t start;
    if (strcmp(account_id, "acct") != 0 || tg_billing_rate_parse(scope, NULL, key, sizeof key, &what, &start) != 0)
        return -1;
    *budget = what == TG_BILLING_RATE_TOKENS ? g_tpm : g_rpm;
    return 0;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Reserves like a request does with an offline allowance: polls while the
 * answer is WAIT (bounded). */
static int reserve_off(tg_lease_tab_t *t, const char *scope, int64_t n, int64_t offline)
{
    uint64_t ticket = 0;
    for (int i = 0; i < 2000; i++) {
        int rc = tg_lease_reserve(t, "acct", scope, n, &ticket, offline, now_us());
        if (rc != TG_LEASE_WAIT)
            return rc;
        usleep(1000);
    }
    return TG_LEASE_WAIT;
}

static int reserve(tg_lease_tab_t *t, const char *scope, int64_t n)
{
    return reserve_off(t, scope, n, 0);
}

static void test_window_on_leases(void **state)
{
    (void)state;
    char rpm[200], tpm[200], next[200];
    int64_t now = now_us();
    /* the window of the next minute too, as if the clock had moved on */
    assert_int_equal(tg_billing_rate_scope(TG_BILLING_RATE_KEY, "k1", TG_BILLING_RATE_REQUESTS, now, rpm, sizeof rpm, NULL, NULL), 0);
    assert_int_equal(tg_billing_rate_scope(TG_BILLING_RATE_KEY, "k1", TG_BILLING_RATE_TOKENS, now, tpm, sizeof tpm, NULL, NULL), 0);
    assert_int_equal(tg_billing_rate_scope(TG_BILLING_RATE_KEY, "k1", TG_BILLING_RATE_REQUESTS, now + MIN_US, next, sizeof next, NULL, NULL),
                     0);
    tg_lease_tab_t *t = tg_lease_tab_create(NULL, limit_of, NULL);
    assert_non_null(t);
    /* five requests fit, the sixth does not; one refused upstream before
     * any attempt gives its place back, one sent keeps it */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(reserve(t, rpm, 1), TG_LEASE_OK);
        tg_lease_release(t, "acct", rpm, 1, 1);
    }
    assert_int_equal(reserve(t, rpm, 1), TG_LEASE_OK);
    assert_int_equal(reserve(t, rpm, 1), TG_LEASE_DENIED);
    tg_lease_release(t, "acct", rpm, 1, 0); /* not sent */
    assert_int_equal(reserve(t, rpm, 1), TG_LEASE_OK);
    tg_lease_release(t, "acct", rpm, 1, 1);
    assert_int_equal(reserve(t, rpm, 1), TG_LEASE_DENIED);
    tg_lease_info_t li;
    assert_int_equal(tg_lease_info(t, "acct", rpm, &li), 0);
    assert_int_equal(tg_rate_remaining(g_rpm, li.li_free, li.li_avail_nano), 0);
    assert_int_equal(li.li_owed, 5); /* admitted, and never acknowledged */
    /* tokens: the estimate is held, the usage replaces it */
    assert_int_equal(reserve(t, tpm, 600), TG_LEASE_OK);
    assert_int_equal(reserve(t, tpm, 600), TG_LEASE_DENIED);
    tg_lease_release(t, "acct", tpm, 600, 250);
    assert_int_equal(tg_lease_info(t, "acct", tpm, &li), 0);
    assert_int_equal(tg_rate_remaining(g_tpm, li.li_free, li.li_avail_nano), 750);
    assert_int_equal(reserve(t, tpm, 700), TG_LEASE_OK);
    tg_lease_release(t, "acct", tpm, 700, 700);
    assert_int_equal(reserve(t, tpm, 100), TG_LEASE_DENIED); /* 950 counted */
    assert_int_equal(reserve(t, tpm, 50), TG_LEASE_OK);
    tg_lease_release(t, "acct", tpm, 50, 50);
    /* the next minute is a scope of its own: the whole limit again */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(reserve(t, next, 1), TG_LEASE_OK);
        tg_lease_release(t, "acct", next, 1, 1);
    }
    assert_int_equal(reserve(t, next, 1), TG_LEASE_DENIED);
    tg_lease_tab_destroy(t);
}

/* ---- the control plane going away mid-window -------------------------------------- */

#define OFF_TTL_US 400000LL
static int g_cp_up = 1;
static int64_t g_cp_asked = -1, g_cp_kept = -1; /* the first request's requested_nano, the last keep_nano */
static pthread_mutex_t g_cp_mu = PTHREAD_MUTEX_INITIALIZER;

/* A control plane that lets this agent hold 9 of the window's 10 (another
 * agent holds the rest), while it answers, and grants what is asked and
 * more. */
static int fake_cp(void *arg, Tollgate__V1__LeaseRequest *q, Tollgate__V1__LeaseResponse *r, char *err,
                   size_t errlen)
{
    (void)arg;
    pthread_mutex_lock(&g_cp_mu);
    int up = g_cp_up;
    if (g_cp_asked < 0)
        g_cp_asked = q->requested_nano;
    g_cp_kept = q->keep_nano;
    pthread_mutex_unlock(&g_cp_mu);
    if (!up) {
        snprintf(err, errlen, "unreachable");
        return -1;
    }
    int64_t free_part = 9 - q->unsettled_nano > 0 ? 9 - q->unsettled_nano : 0;
    if (free_part > q->keep_nano + q->requested_nano + 4)
        free_part = q->keep_nano + q->requested_nano + 4;
    r->granted_nano = free_part;
    r->free_nano = free_part;
    r->hold_nano = q->unsettled_nano + free_part;
    r->expires_at_us = now_us() + OFF_TTL_US;
    r->available_nano = 0;
    return 0;
}

/* An agent that admitted 9 requests under leases, then lost the control
 * plane, admits 1 more offline with an allowance of the limit (10), not 10
 * more. */
static void test_offline_counts_admitted(void **state)
{
    (void)state;
    char rpm[200];
    assert_int_equal(tg_billing_rate_scope(TG_BILLING_RATE_KEY, "k1", TG_BILLING_RATE_REQUESTS, now_us(), rpm, sizeof rpm, NULL, NULL), 0);
    tg_lease_tab_t *t = tg_lease_tab_create(fake_cp, NULL, NULL);
    assert_non_null(t);
    for (int i = 0; i < 9; i++) {
        assert_int_equal(reserve_off(t, rpm, 1, 10), TG_LEASE_OK);
        tg_lease_release(t, "acct", rpm, 1, 1);
    }
    pthread_mutex_lock(&g_cp_mu);
    g_cp_up = 0;
    pthread_mutex_unlock(&g_cp_mu);
    usleep(OFF_TTL_US + 100000); /* the slice lapses */
    int admitted = 0, rc;
    while (admitted < 20 && (rc = reserve_off(t, rpm, 1, 10)) == TG_LEASE_OK) {
        tg_lease_release(t, "acct", rpm, 1, 1);
        admitted++;
    }
    assert_int_equal(admitted, 1);
    assert_int_equal(rc, TG_LEASE_OFFLINE);
    tg_lease_tab_destroy(t);
}

/* A rate window's slice stays small, so other agents are not refused while
 * this one sits on the window: the first lease asks for the request alone
 * (a budget asks for 8 of them), and a renewal keeps one request's worth
 * and returns the rest of a larger grant. */
static void test_rate_slice_is_small(void **state)
{
    (void)state;
    char rpm[200];
    pthread_mutex_lock(&g_cp_mu);
    g_cp_up = 1, g_cp_asked = -1, g_cp_kept = -1;
    pthread_mutex_unlock(&g_cp_mu);
    assert_int_equal(tg_billing_rate_scope(TG_BILLING_RATE_KEY, "k2", TG_BILLING_RATE_REQUESTS, now_us(), rpm, sizeof rpm, NULL, NULL), 0);
    tg_lease_tab_t *t = tg_lease_tab_create(fake_cp, NULL, NULL);
    assert_non_null(t);
    assert_int_equal(reserve(t, rpm, 1), TG_LEASE_OK); /* granted 1 + 4 */
    tg_lease_release(t, "acct", rpm, 1, 1);
    usleep(OFF_TTL_US / 3); /* a renewal (at a third of the TTL): waited for, bounded (a busy machine) */
    int64_t asked = -1, kept = -1;
    for (int i = 0; i < 300 && kept != 1; i++) {
        usleep(10000);
        pthread_mutex_lock(&g_cp_mu);
        asked = g_cp_asked, kept = g_cp_kept;
        pthread_mutex_unlock(&g_cp_mu);
    }
    assert_int_equal(asked, 1);
    assert_int_equal(kept, 1);
    tg_lease_tab_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_windows_and_ids),
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_window_on_leases),
        cmocka_unit_test(test_offline_counts_admitted),
        cmocka_unit_test(test_rate_slice_is_small),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
