/* lease_test.c: the agent's spend-lease table against a local authority
 * (no control plane): reservations wait for the first lease, fit within
 * the budget, are refused past it, come back when released, and what was
 * spent stays spent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_within_budget),
        cmocka_unit_test(test_unknown_bucket_fails_closed),
        cmocka_unit_test(test_owed_at_start_is_held),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
