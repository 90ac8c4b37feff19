/* lease_test.c: the agent's spend-lease table against a local authority
 * (no control plane): reservations wait for the first lease, fit within
 * the budget, are refused past it, come back when released, and what was
 * spent stays spent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <pthread.h>

#include "agent/lease.h"

static int64_t g_budget;

static int budget_of(void *arg, const char *account_id, const char *bucket, int64_t *budget)
{
    (void)arg;
    if (strcmp(account_id, "acct") != 0 || strcmp(bucket, "wallet") != 0)
        return -1;
    *budget = g_budget;
    return 0;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Reserves like a request does: polls while the answer is WAIT (bounded). */
static int reserve(tg_lease_tab_t *t, const char *acct, int64_t nano)
{
    uint64_t ticket = 0;
    for (int i = 0; i < 2000; i++) {
        int rc = tg_lease_reserve(t, acct, "wallet", nano, &ticket, 0, now_us());
        if (rc != TG_LEASE_WAIT)
            return rc;
        usleep(1000);
    }
    return TG_LEASE_WAIT;
}

static void test_within_budget(void **state)
{
    (void)state;
    g_budget = 1000;
    tg_lease_tab_t *t = tg_lease_tab_create(NULL, budget_of, NULL);
    assert_non_null(t);
    /* the first reservation waits for the first lease, then fits */
    uint64_t ticket = 0;
    assert_int_equal(tg_lease_reserve(t, "acct", "wallet", 300, &ticket, 0, now_us()), TG_LEASE_WAIT);
    assert_int_equal(reserve(t, "acct", 300), TG_LEASE_OK);
    assert_int_equal(reserve(t, "acct", 300), TG_LEASE_OK);
    assert_int_equal(reserve(t, "acct", 300), TG_LEASE_OK);
    /* 900 reserved: a fourth does not fit the budget of 1000 */
    assert_int_equal(reserve(t, "acct", 300), TG_LEASE_DENIED);
    /* a request that cost 100 of its 300 gives 200 back: the next fits */
    tg_lease_release(t, "acct", "wallet", 300, 100);
    assert_int_equal(reserve(t, "acct", 300), TG_LEASE_OK);
    /* spent stays spent: all released at cost 0, 100 is gone for good */
    tg_lease_release(t, "acct", "wallet", 300, 0);
    tg_lease_release(t, "acct", "wallet", 300, 0);
    tg_lease_release(t, "acct", "wallet", 300, 0);
    assert_int_equal(reserve(t, "acct", 900), TG_LEASE_OK);
    tg_lease_release(t, "acct", "wallet", 900, 0);
    assert_int_equal(reserve(t, "acct", 901), TG_LEASE_DENIED);
    tg_lease_info_t li;
    assert_int_equal(tg_lease_info(t, "acct", "wallet", &li), 0);
    assert_int_equal(li.li_reserved, 0);
    assert_int_equal(li.li_owed, 100); /* no control plane ever acknowledges it */
    tg_lease_tab_destroy(t);
}

static void test_unknown_bucket_fails_closed(void **state)
{
    (void)state;
    g_budget = 1000;
    tg_lease_tab_t *t = tg_lease_tab_create(NULL, budget_of, NULL);
    assert_non_null(t);
    assert_int_equal(reserve(t, "nobody", 1), TG_LEASE_OFFLINE);
    tg_lease_tab_destroy(t);
}

static void test_owed_at_start_is_held(void **state)
{
    (void)state;
    g_budget = 1000;
    tg_lease_tab_t *t = tg_lease_tab_create(NULL, budget_of, NULL);
    assert_non_null(t);
    /* records spooled by an earlier run, not yet settled: 600 of the 1000 */
    tg_lease_owed(t, "acct", "wallet", 600);
    assert_int_equal(reserve(t, "acct", 500), TG_LEASE_DENIED);
    assert_int_equal(reserve(t, "acct", 400), TG_LEASE_OK);
    tg_lease_tab_destroy(t);
}

/* ---- against a fake control plane with controlplane/lease.c's rule ---------- */

#define TTL_US 3000000LL
static int64_t cp_budget, cp_hold, cp_exp, cp_other;
static int cp_up = 1;
static pthread_mutex_t cp_mu = PTHREAD_MUTEX_INITIALIZER;

/* hold = owed + the part of keep that is left + grant; a waiting need is
 * met from the room beside what the agent keeps */
static int fake_cp(void *arg, Tollgate__V1__LeaseRequest *q, Tollgate__V1__LeaseResponse *r, char *err, size_t errlen)
{
    (void)arg;
    pthread_mutex_lock(&cp_mu);
    int64_t t = now_us();
    if (!cp_up) {
        pthread_mutex_unlock(&cp_mu);
        snprintf(err, errlen, "unreachable");
        return -1;
    }
    int restarted = q->reset || cp_exp <= t;
    int64_t left = cp_budget - cp_other - q->unsettled_nano;
    int64_t kept = restarted ? 0 : q->keep_nano;
    if (kept > left)
        kept = left > 0 ? left : 0;
    int64_t room = left - kept, need = q->need_nano > kept ? q->need_nano - kept : 0;
    int64_t want = q->requested_nano > need ? q->requested_nano : need;
    int64_t g = want <= 0 || room <= 0 ? 0 : want < room ? want : room;
    cp_hold = q->unsettled_nano + kept + g;
    cp_exp = t + TTL_US;
    r->granted_nano = g;
    r->free_nano = kept + g;
    r->hold_nano = cp_hold;
    r->expires_at_us = cp_exp;
    r->available_nano = room - g;
    r->restarted = restarted;
    pthread_mutex_unlock(&cp_mu);
    return 0;
}

static int reserve_at(tg_lease_tab_t *t, int64_t nano)
{
    uint64_t ticket = 0;
    for (int i = 0; i < 3000; i++) {
        int rc = tg_lease_reserve(t, "acct", "wallet", nano, &ticket, 0, now_us());
        if (rc != TG_LEASE_WAIT)
            return rc;
        usleep(1000);
    }
    return TG_LEASE_WAIT;
}

/* What the agent holds free counts toward a request that needs more: the
 * control plane grants only what is missing (a request bigger than the
 * first slice used to be refused with budget left). */
static void test_free_part_counts_toward_need(void **state)
{
    (void)state;
    cp_budget = 1000, cp_hold = 0, cp_exp = 0, cp_other = 0, cp_up = 1;
    tg_lease_tab_t *t = tg_lease_tab_create(fake_cp, NULL, NULL);
    assert_non_null(t);
    assert_int_equal(reserve_at(t, 100), TG_LEASE_OK);
    tg_lease_release(t, "acct", "wallet", 100, 100);
    /* 900 of the 1000 are left; the agent holds some of it free */
    assert_int_equal(reserve_at(t, 850), TG_LEASE_OK);
    tg_lease_release(t, "acct", "wallet", 850, 850);
    assert_int_equal(reserve_at(t, 60), TG_LEASE_DENIED); /* 50 left */
    tg_lease_tab_destroy(t);
}

/* A hold that lapsed here but is still live at the control plane (the
 * control plane was away for longer than the agent's use-by time, shorter
 * than its TTL) must not come back to life beside a new grant: what the
 * agent then spends plus what another agent is granted stays within the
 * budget. */
static void test_lapsed_hold_is_rebased(void **state)
{
    (void)state;
    cp_budget = 1000, cp_hold = 0, cp_exp = 0, cp_other = 0, cp_up = 1;
    tg_lease_tab_t *t = tg_lease_tab_create(fake_cp, NULL, NULL);
    assert_non_null(t);
    int64_t t0 = now_us();
    assert_int_equal(reserve_at(t, 100), TG_LEASE_OK);
    tg_lease_release(t, "acct", "wallet", 100, 0);
    pthread_mutex_lock(&cp_mu);
    cp_up = 0;
    pthread_mutex_unlock(&cp_mu);
    while (now_us() - t0 < 2400000) /* past 3/4 of the TTL, not the TTL */
        usleep(10000);
    pthread_mutex_lock(&cp_mu);
    cp_up = 1;
    pthread_mutex_unlock(&cp_mu);
    while (now_us() - t0 < 2900000)
        usleep(10000);
    pthread_mutex_lock(&cp_mu);
    cp_other = cp_budget - cp_hold; /* another agent takes all the rest */
    int64_t other = cp_other;
    pthread_mutex_unlock(&cp_mu);
    int64_t spent = 0;
    while (spent <= 5000 && reserve_at(t, 100) == TG_LEASE_OK) {
        tg_lease_release(t, "acct", "wallet", 100, 100);
        spent += 100;
    }
    assert_true(spent + other <= cp_budget);
    tg_lease_tab_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_within_budget),
        cmocka_unit_test(test_unknown_bucket_fails_closed),
        cmocka_unit_test(test_owed_at_start_is_held),
        cmocka_unit_test(test_free_part_counts_toward_need),
        cmocka_unit_test(test_lapsed_hold_is_rebased),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
