/* lease.c: the agent's spend leases (see lease.h for the model).
 *
 * One entry per (account, bucket) in a short list under one mutex: a
 * request's reserve and release are a few additions, no allocation after
 * the entry exists. The lease thread is the only one that talks to the
 * control plane; requests that find too little free budget take a ticket
 * (the number of the next lease request, which will carry their need) and
 * ask again after a few milliseconds, so no worker ever blocks.
 *
 * Sizing: a refill asks for what waits now plus ten seconds of spend at
 * the recent velocity (an EWMA of cost per second), at least eight times
 * the largest recent request; the control plane caps it by what is left
 * and shares a tight budget among the agents that hold it. A refill starts
 * in the background when the free part falls under three seconds of spend.
 * An idle hold is handed back after IDLE_RETURN_US; a hold is renewed a
 * third of the way to its expiry, and not used at all in the last quarter
 * (the control plane's clock may run ahead of ours).
 */
#include "agent/lease.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/tg_base.h"
#include "base/tg_log.h"
#include "billing/tg_billing.h"

#define REFILL_HORIZON_S 10
#define LOW_WATER_S 3
#define MIN_SLICES 8
#define IDLE_RETURN_US (30LL * 1000000)
#define RATE_IDLE_RETURN_US (5LL * 1000000) /* a rate window's slice: a minute's allowance is short-lived */
#define RETRY_MIN_US (100LL * 1000)
#define RETRY_MAX_US (5LL * 1000000)
#define STOP_RETURN_US (3LL * 1000000)
#define WAITER_RETRY_US (200LL * 1000)  /* a request waiting for a lease: its retry after a failure */
#define REFILL_PAUSE_US (1000LL * 1000) /* after a refill that got less than asked */
#define NCHAIN 1024                     /* hash chains; entries of idle scopes are pruned */
#define PRUNE_IDLE_US (300LL * 1000000) /* an entry holding nothing, unused this long, goes */
#define RATE_PRUNE_US (60LL * 1000000)  /* a rate window's entry goes this long after its minute */

typedef struct lent {
    struct lent *le_next;
    char *le_acct, *le_bucket;
    int64_t le_base, le_res, le_spent, le_owed;
    int64_t le_expires;       /* the hold's expiry as granted; 0: none */
    int64_t le_valid_until;   /* use it until then */
    int64_t le_granted_at;
    int le_started;           /* a request of this process was answered (later ones are not resets) */
    uint64_t le_sent, le_done;/* lease requests sent / answered (or failed) */
    uint64_t le_want;         /* a waiter needs request number le_want */
    int le_inflight;
    int64_t le_need_sum, le_need_max; /* what waits, for the next request */
    int64_t le_last_need;     /* largest recent reservation, for sizing */
    int le_failed;            /* the last request failed */
    int64_t le_avail_after;   /* the control plane's budget left after the last answer */
    int64_t le_retry_at;
    int64_t le_failed_at;
    int64_t le_refill_at;     /* no background refill before then */
    int64_t le_backoff;
    int64_t le_rate;          /* nano per second, EWMA */
    int64_t le_rate_t, le_rate_acc;
    int64_t le_last_use;
    uint64_t le_rpcs;
    int64_t le_offline_used;  /* reserved under the offline allowance since the control plane went away */
    int64_t le_left, le_floor;/* the last answer's balance_nano and floor_nano (the key holder's view) */
    int64_t le_left_at;       /* when it came; 0: never */
    int64_t le_end;           /* a rate window (billing/tg_billing.h): its end; 0 for budgets */
} lent_t;

struct tg_lease_tab {
    pthread_mutex_t lt_mu;
    pthread_cond_t lt_cv;
    pthread_t lt_thr;
    int lt_stop;
    tg_lease_rpc_fn lt_rpc;
    tg_lease_local_fn lt_local;
    void *lt_arg;
    lent_t *lt_chain[NCHAIN]; /* entries by hash of (account, scope) */
    size_t lt_n;
    int64_t lt_pruned_at;
    uint64_t lt_sent, lt_failed;
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static size_t chain_of(const char *acct, const char *bucket)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a over both, a 0 between */
    for (const char *p = acct; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h *= 1099511628211ull;
    for (const char *p = bucket; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return (size_t)(h & (NCHAIN - 1));
}

/* (mu) */
static lent_t *find(tg_lease_tab_t *t, const char *acct, const char *bucket, int create)
{
    size_t c = chain_of(acct, bucket);
    for (lent_t *e = t->lt_chain[c]; e != NULL; e = e->le_next)
        if (strcmp(e->le_acct, acct) == 0 && strcmp(e->le_bucket, bucket) == 0)
            return e;
    if (!create)
        return NULL;
    lent_t *e = tg_calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    e->le_acct = tg_strdup(acct);
    e->le_bucket = tg_strdup(bucket);
    if (e->le_acct == NULL || e->le_bucket == NULL) {
        tg_free(e->le_acct);
        tg_free(e->le_bucket);
        tg_free(e);
        return NULL;
    }
    /* a rate window's scope is used for its minute only: never renewed
     * after it, and dropped a minute later (nothing settles it) */
    char kid[160];
    int what;
    int64_t start;
    if (tg_billing_rate_parse(bucket, NULL, kid, sizeof kid, &what, &start) == 0)
        e->le_end = start + TG_BILLING_RATE_WINDOW_US;
    e->le_next = t->lt_chain[c];
    t->lt_chain[c] = e;
    t->lt_n++;
    return e;
}

static int live(const lent_t *e, int64_t now)
{
    return e->le_valid_until > now;
}

static int64_t free_of(const lent_t *e, int64_t now)
{
    int64_t f = e->le_base - e->le_res - e->le_spent;
    return live(e, now) && f > 0 ? f : 0;
}

/* (mu) Folds the spend since the last tick into the velocity. */
static void rate_tick(lent_t *e, int64_t now)
{
    if (e->le_rate_t == 0) {
        e->le_rate_t = now;
        return;
    }
    int64_t dt = now - e->le_rate_t;
    if (dt < 1000000)
        return;
    __int128 r = (__int128)e->le_rate_acc * 1000000 / dt;
    int64_t inst = r > INT64_MAX / 4 ? INT64_MAX / 4 : (int64_t)r;
    e->le_rate = (e->le_rate * 3 + inst) / 4;
    e->le_rate_acc = 0;
    e->le_rate_t = now;
}

static int64_t sat_mul(int64_t a, int64_t b)
{
    __int128 r = (__int128)a * b;
    return r > INT64_MAX / 4 ? INT64_MAX / 4 : (int64_t)r;
}

/* (mu) Whether e needs a lease request now, and what it asks. */
static int due(const lent_t *e, int64_t now)
{
    if (e->le_inflight)
        return 0;
    /* a request waits: retried soon after a failure, whatever the backoff
     * (a request that started in a rate window just ended too) */
    if (e->le_want > e->le_sent)
        return now >= e->le_retry_at || now >= e->le_failed_at + WAITER_RETRY_US;
    if (e->le_end != 0 && now >= e->le_end)
        return 0; /* a rate window that ended: neither renewed nor refilled */
    if (now < e->le_retry_at)
        return 0;
    int active = e->le_res > 0 || e->le_owed > 0 || e->le_base - e->le_spent > 0;
    if (!active)
        return 0;
    if (e->le_expires == 0)
        return 0; /* nothing granted yet and nobody waits */
    if (now >= e->le_granted_at + (e->le_expires - e->le_granted_at) / 3)
        return 1; /* renew */
    int64_t low = sat_mul(e->le_rate, LOW_WATER_S);
    if (e->le_last_use > now - IDLE_RETURN_US && free_of(e, now) < low && now >= e->le_refill_at)
        return 1; /* refill before it runs dry (not again at once when the scope had less to give) */
    return 0;
}

/* The local authority (no control plane): the same rule as
 * controlplane/lease.c with one agent and nothing ever settled. */
static int local_rpc(tg_lease_tab_t *t, Tollgate__V1__LeaseRequest *q, Tollgate__V1__LeaseResponse *r,
                     char *err, size_t errlen)
{
    int64_t budget = 0;
    /* a limit scope travels in q->scope (exchange), a bucket in q->bucket */
    const char *what = q->scope != NULL && q->scope[0] ? q->scope : q->bucket;
    if (t->lt_local == NULL || t->lt_local(t->lt_arg, q->account_id, what, &budget) != 0)
        return tg_errf(err, errlen, -1, "no balance for %s/%s in the configuration", q->account_id, what);
    int restarted = q->reset;
    int64_t left = budget - q->unsettled_nano;
    int64_t kept = restarted ? 0 : q->keep_nano;
    if (kept > left)
        kept = left > 0 ? left : 0;
    int64_t base = q->unsettled_nano + kept;
    int64_t room = left - kept, want = q->requested_nano > q->need_nano ? q->requested_nano : q->need_nano;
    int64_t g = want <= 0 || room <= 0 ? 0 : want < room ? want : room;
    r->free_nano = kept + g;
    r->granted_nano = g;
    r->hold_nano = base + g;
    r->expires_at_us = now_us() + 3600LL * 1000000;
    r->available_nano = room - g;
    /* nothing settles here: what is left is the whole budget, and the
     * agent's spend stays owed (the key holder's view subtracts it) */
    r->balance_nano = budget;
    r->floor_nano = 0;
    r->restarted = restarted;
    return 0;
}

/* (mu held on entry and exit; dropped around the call) One lease request
 * for e: a refill, renewal or return (return_all: everything free). */
static void exchange(tg_lease_tab_t *t, lent_t *e, int64_t now, int return_all)
{
    Tollgate__V1__LeaseRequest q = TOLLGATE__V1__LEASE_REQUEST__INIT;
    char acct[256], bucket[256], err[TG_ERRLEN] = "";
    rate_tick(e, now);
    int64_t fr = free_of(e, now);
    int64_t ret = 0;
    /* a rate window is small and shared by every agent for a minute: a
     * slice sized like a budget's (16 requests' worth, 20 s of velocity,
     * back after 30 s idle) would strand it in one agent, so there the
     * agent keeps and asks for its velocity until the next low-water
     * refill, at least one request (the largest lately), and an idle slice
     * goes back after 5 s */
    int rate = e->le_end != 0;
    int64_t horizon = rate ? LOW_WATER_S : REFILL_HORIZON_S, slices_of = rate ? 1 : MIN_SLICES;
    if (return_all) {
        ret = fr;
    } else if (e->le_last_use < now - (rate ? RATE_IDLE_RETURN_US : IDLE_RETURN_US)) {
        ret = fr; /* idle: all of it goes back */
    } else {
        int64_t keep = sat_mul(e->le_rate, rate ? horizon : 2 * horizon);
        int64_t floor = sat_mul(e->le_last_need, rate ? 1 : 2 * slices_of);
        if (keep < floor)
            keep = floor;
        if (fr > keep && e->le_want <= e->le_sent)
            ret = fr - keep;
    }
    if (!live(e, now))
        ret = 0; /* a lapsed hold is re-based below, nothing to return */
    int64_t want = 0;
    if (!return_all) {
        int64_t low = sat_mul(e->le_rate, LOW_WATER_S);
        if (e->le_need_sum > 0 || (ret == 0 && fr < low && e->le_last_use > now - IDLE_RETURN_US)) {
            want = sat_mul(e->le_rate, horizon);
            int64_t slices = sat_mul(e->le_last_need > e->le_need_max ? e->le_last_need : e->le_need_max, slices_of);
            if (want < slices)
                want = slices;
            if (want < e->le_need_sum)
                want = e->le_need_sum;
        }
    }
    snprintf(acct, sizeof(acct), "%s", e->le_acct);
    snprintf(bucket, sizeof(bucket), "%s", e->le_bucket);
    q.account_id = acct;
    /* a bucket's name has no '/'; a limit scope's id always has */
    if (strchr(bucket, '/')) {
        q.scope = bucket;
        q.bucket = "";
    } else {
        q.bucket = bucket;
    }
    q.requested_nano = want;
    q.keep_nano = fr - ret;
    q.need_nano = e->le_need_max;
    q.spend_rate_nano_per_s = e->le_rate;
    /* a hold that lapsed here is re-based as new (the control plane may
     * still hold it for a moment: nothing of it must come back to life) */
    q.reset = !e->le_started || !live(e, now);
    q.unsettled_nano = e->le_owed + e->le_res;
    int64_t res0 = e->le_res, spent0 = e->le_spent, need0 = e->le_need_max;
    e->le_base -= ret; /* not spent from any more, whatever the answer */
    e->le_need_sum = e->le_need_max = 0;
    e->le_inflight = 1;
    uint64_t gen = ++e->le_sent;
    e->le_rpcs++;
    t->lt_sent++;
    Tollgate__V1__LeaseResponse resp = TOLLGATE__V1__LEASE_RESPONSE__INIT, *r = &resp;
    pthread_mutex_unlock(&t->lt_mu);
    int rc = t->lt_rpc != NULL ? t->lt_rpc(t->lt_arg, &q, r, err, sizeof(err)) : -1;
    pthread_mutex_lock(&t->lt_mu);
    if (t->lt_rpc == NULL)
        rc = local_rpc(t, &q, r, err, sizeof(err));
    e->le_inflight = 0;
    e->le_done = gen;
    now = now_us();
    if (rc != 0) {
        e->le_failed = 1;
        t->lt_failed++;
        e->le_backoff = e->le_backoff ? e->le_backoff * 2 : RETRY_MIN_US;
        if (e->le_backoff > RETRY_MAX_US)
            e->le_backoff = RETRY_MAX_US;
        e->le_retry_at = now + e->le_backoff;
        e->le_failed_at = now;
        TG_LOG(TG_LOG_WARN, "agent.lease", "lease %s/%s: request failed (retry in %lld ms): %s", acct, bucket,
               (long long)(e->le_backoff / 1000), err);
        return;
    }
    e->le_failed = 0;
    e->le_offline_used = 0; /* the control plane answers again: what was spent offline is owed now */
    e->le_backoff = 0;
    e->le_retry_at = 0;
    /* the control plane says what the free part was when the request
     * left (what it kept of it, plus the grant); since then the agent
     * spent and reserved from the old one, which comes out of it */
    e->le_base = r->free_nano + res0 + spent0;
    e->le_started = 1;
    e->le_expires = r->expires_at_us;
    e->le_granted_at = now;
    int64_t ttl = r->expires_at_us - now;
    e->le_valid_until = ttl > 0 ? r->expires_at_us - ttl / 4 : 0;
    e->le_avail_after = r->available_nano;
    /* a scope that gave less than asked is not asked again in the background
     * for a while: an exhausted budget would otherwise be asked in a tight
     * loop, starving every other scope's requests on this thread */
    e->le_refill_at = r->granted_nano < want ? now + REFILL_PAUSE_US : 0;
    e->le_left = r->balance_nano;
    e->le_floor = r->floor_nano;
    e->le_left_at = now;
    if (r->granted_nano < need0)
        TG_LOG(TG_LOG_INFO, "agent.lease", "lease %s/%s: %lld of %lld nano granted (%lld left in the bucket)", acct,
               bucket, (long long)r->granted_nano, (long long)want, (long long)r->available_nano);
}

static void free_entry(lent_t *e)
{
    tg_free(e->le_acct);
    tg_free(e->le_bucket);
    tg_free(e);
}

/* (mu) Drops the entries of scopes that hold nothing and were not used for
 * PRUNE_IDLE_US (a key's limit window of yesterday, a finished run): their
 * hold at the control plane is zero or lapses by itself. */
static void prune(tg_lease_tab_t *t, int64_t now)
{
    for (size_t c = 0; c < NCHAIN; c++)
        for (lent_t **pp = &t->lt_chain[c]; *pp != NULL;) {
            lent_t *e = *pp;
            int gone = e->le_end != 0 ? now >= e->le_end + RATE_PRUNE_US
                                      : e->le_res == 0 && e->le_owed == 0 && e->le_want <= e->le_sent &&
                                            free_of(e, now) == 0 && e->le_last_use < now - PRUNE_IDLE_US;
            if (!e->le_inflight && gone) {
                *pp = e->le_next;
                free_entry(e);
                t->lt_n--;
            } else {
                pp = &e->le_next;
            }
        }
}

static void *lease_main(void *arg)
{
    tg_lease_tab_t *t = arg;
    pthread_mutex_lock(&t->lt_mu);
    while (!t->lt_stop) {
        int64_t now = now_us();
        lent_t *pick = NULL;
        if (now - t->lt_pruned_at > 1000000) {
            prune(t, now);
            t->lt_pruned_at = now;
        }
        for (size_t c = 0; c < NCHAIN && pick == NULL; c++)
            for (lent_t *e = t->lt_chain[c]; e != NULL && pick == NULL; e = e->le_next)
                if (due(e, now))
                    pick = e;
        if (pick != NULL) {
            exchange(t, pick, now, 0);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&t->lt_cv, &t->lt_mu, &ts);
    }
    pthread_mutex_unlock(&t->lt_mu);
    return NULL;
}

tg_lease_tab_t *tg_lease_tab_create(tg_lease_rpc_fn rpc, tg_lease_local_fn local, void *arg)
{
    tg_lease_tab_t *t = tg_calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    pthread_mutex_init(&t->lt_mu, NULL);
    pthread_cond_init(&t->lt_cv, NULL);
    t->lt_rpc = rpc;
    t->lt_local = local;
    t->lt_arg = arg;
    if (pthread_create(&t->lt_thr, NULL, lease_main, t) != 0) {
        pthread_mutex_destroy(&t->lt_mu);
        pthread_cond_destroy(&t->lt_cv);
        tg_free(t);
        return NULL;
    }
    return t;
}

void tg_lease_tab_destroy(tg_lease_tab_t *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->lt_mu);
    t->lt_stop = 1;
    pthread_cond_broadcast(&t->lt_cv);
    pthread_mutex_unlock(&t->lt_mu);
    pthread_join(t->lt_thr, NULL);
    /* graceful stop: what is free goes back now rather than at expiry */
    pthread_mutex_lock(&t->lt_mu);
    int64_t until = now_us() + STOP_RETURN_US;
    for (size_t c = 0; c < NCHAIN; c++)
        for (lent_t *e = t->lt_chain[c]; e != NULL; e = e->le_next) {
            int64_t now = now_us();
            if (t->lt_rpc != NULL && now < until && free_of(e, now) > 0)
                exchange(t, e, now, 1);
        }
    for (size_t c = 0; c < NCHAIN; c++)
        while (t->lt_chain[c] != NULL) {
            lent_t *e = t->lt_chain[c];
            t->lt_chain[c] = e->le_next;
            free_entry(e);
        }
    pthread_mutex_unlock(&t->lt_mu);
    pthread_mutex_destroy(&t->lt_mu);
    pthread_cond_destroy(&t->lt_cv);
    tg_free(t);
}

void tg_lease_owed(tg_lease_tab_t *t, const char *account_id, const char *bucket, int64_t nano)
{
    pthread_mutex_lock(&t->lt_mu);
    lent_t *e = find(t, account_id, bucket, 1);
    if (e != NULL)
        e->le_owed += nano;
    pthread_mutex_unlock(&t->lt_mu);
}

int tg_lease_reserve(tg_lease_tab_t *t, const char *account_id, const char *bucket, int64_t nano, uint64_t *ticket,
                     int64_t offline, int64_t now)
{
    int rc;
    pthread_mutex_lock(&t->lt_mu);
    lent_t *e = find(t, account_id, bucket, 1);
    if (e == NULL) {
        rc = TG_LEASE_OFFLINE; /* out of memory: fail closed */
        goto out;
    }
    e->le_last_use = now;
    if (nano > e->le_last_need)
        e->le_last_need = nano;
    if (free_of(e, now) >= nano) {
        e->le_res += nano;
        rc = TG_LEASE_OK;
        if (due(e, now))
            pthread_cond_signal(&t->lt_cv);
        goto out;
    }
    if (e->le_failed && !live(e, now) && (*ticket == 0 || e->le_done >= *ticket)) {
        /* the control plane is away (its last answer failed) and the lease
         * lapsed: no waiting for it, only the policy's offline allowance
         * may be spent (the lease thread keeps trying meanwhile) */
        /* on a rate window the allowance is for the whole window: what
         * this agent admitted in it under leases counts too (owed is never
         * acknowledged there), or it could admit the limit again on top */
        int64_t counted = e->le_end != 0 ? e->le_owed + e->le_res : e->le_offline_used;
        if (offline > 0 && counted + nano <= offline) {
            e->le_offline_used += nano;
            e->le_res += nano;
            rc = TG_LEASE_OK;
        } else {
            rc = TG_LEASE_OFFLINE;
        }
        goto out;
    }
    if (*ticket != 0 && e->le_done >= *ticket) {
        /* the request that carried this need was answered, still short */
        if (e->le_failed || free_of(e, now) + e->le_avail_after < nano) {
            rc = e->le_failed ? TG_LEASE_OFFLINE : TG_LEASE_DENIED;
            goto out;
        }
        *ticket = 0; /* budget is left: take a new ticket and ask again */
    }
    if (*ticket == 0) {
        *ticket = e->le_sent + 1;
        if (e->le_want < *ticket)
            e->le_want = *ticket;
        e->le_need_sum += nano;
        if (nano > e->le_need_max)
            e->le_need_max = nano;
        pthread_cond_signal(&t->lt_cv);
    }
    rc = TG_LEASE_WAIT;
out:
    pthread_mutex_unlock(&t->lt_mu);
    return rc;
}

void tg_lease_release(tg_lease_tab_t *t, const char *account_id, const char *bucket, int64_t reserved, int64_t cost)
{
    pthread_mutex_lock(&t->lt_mu);
    lent_t *e = find(t, account_id, bucket, 1);
    if (e != NULL) {
        e->le_res -= reserved;
        if (e->le_res < 0)
            e->le_res = 0;
        if (cost > 0) {
            e->le_spent += cost;
            e->le_owed += cost;
            e->le_rate_acc += cost;
        }
    }
    pthread_mutex_unlock(&t->lt_mu);
}

void tg_lease_refund(tg_lease_tab_t *t, const char *account_id, const char *bucket, int64_t nano)
{
    if (nano <= 0)
        return;
    pthread_mutex_lock(&t->lt_mu);
    lent_t *e = find(t, account_id, bucket, 0);
    if (e != NULL) {
        e->le_spent = e->le_spent > nano ? e->le_spent - nano : 0;
        e->le_owed = e->le_owed > nano ? e->le_owed - nano : 0;
    }
    pthread_mutex_unlock(&t->lt_mu);
}

void tg_lease_acked(tg_lease_tab_t *t, const char *account_id, const char *bucket, int64_t nano)
{
    pthread_mutex_lock(&t->lt_mu);
    lent_t *e = find(t, account_id, bucket, 0);
    if (e != NULL) {
        e->le_owed -= nano;
        if (e->le_owed < 0)
            e->le_owed = 0;
    }
    pthread_mutex_unlock(&t->lt_mu);
}

int tg_lease_info(tg_lease_tab_t *t, const char *account_id, const char *bucket, tg_lease_info_t *info)
{
    pthread_mutex_lock(&t->lt_mu);
    lent_t *e = find(t, account_id, bucket, 0);
    if (e != NULL) {
        info->li_free = free_of(e, now_us());
        info->li_reserved = e->le_res;
        info->li_owed = e->le_owed;
        info->li_expires_us = e->le_expires;
        info->li_rpcs = e->le_rpcs;
        info->li_left_nano = e->le_left;
        info->li_floor_nano = e->le_floor;
        info->li_left_at_us = e->le_left_at;
        info->li_avail_nano = e->le_avail_after;
    }
    pthread_mutex_unlock(&t->lt_mu);
    return e != NULL ? 0 : -1;
}

void tg_lease_counts(tg_lease_tab_t *t, uint64_t *sent, uint64_t *failed)
{
    pthread_mutex_lock(&t->lt_mu);
    *sent = t->lt_sent;
    *failed = t->lt_failed;
    pthread_mutex_unlock(&t->lt_mu);
}
