/* lease.h: the agent's spend leases: budget held locally per account bucket,
 * so a request is pre-authorized with no network hop.
 *
 * The control plane grants each agent a hold on each bucket it spends from
 * (AgentService.Lease, controlplane/lease.c): the sum of every agent's hold
 * plus the settled spend never exceeds the bucket's budget. Here, per
 * bucket, the agent tracks the free part of its hold:
 *
 *     free = base - reserved - spent
 *
 * where `reserved` is the sum of the estimates of its requests in flight,
 * `spent` the costs of its finished requests, and `base` moves only with
 * grants (up) and returns (down). A request reserves its upper estimate
 * from `free` (tg_lease_reserve) and, when it ends, gives the reservation
 * back and adds its actual cost (tg_lease_release). A lease thread refills
 * before the free part runs dry (sized from the spend velocity), renews
 * before the hold expires, hands back what sits idle, and everything on
 * tg_lease_tab_destroy. Each request to the control plane also declares
 * what the agent owes (costs of records not yet acknowledged plus its
 * reservations), so a restarted agent or a lapsed hold is re-based exactly.
 *
 * Without a control plane (a snapshot file), the table is its own
 * authority: the snapshot's balance is the budget for the process's life.
 *
 * Rate limits (a key's, a project's) use the same table (billing/tg_billing.h "rate
 * windows"): a scope per key or project and minute whose units are requests or
 * tokens. Nothing acknowledges them, so what the agent admitted stays
 * owed (counted in its hold) until the minute ends; the entry is then
 * neither renewed nor refilled, and dropped a minute later.
 *
 * Threads: every function may be called from any thread (one mutex; the
 * lease RPCs run on the table's own thread, never under the mutex).
 * Times are CLOCK_REALTIME microseconds, as the control plane's.
 */
#ifndef TG_AGENT_LEASE_H
#define TG_AGENT_LEASE_H

#include <stddef.h>
#include <stdint.h>

#include "tollgate/v1/agent.pb-c.h"

typedef struct tg_lease_tab tg_lease_tab_t;

/* tg_lease_reserve's answers. */
enum {
    TG_LEASE_OK = 0,        /* reserved */
    TG_LEASE_WAIT = 1,      /* a refill is on its way: ask again (tg_lease_reserve) shortly */
    TG_LEASE_DENIED = -1,   /* the control plane has no budget left for this request */
    TG_LEASE_OFFLINE = -2,  /* no live lease and the control plane cannot be reached: fail closed */
};

/* Sends one LeaseRequest (the table fills everything but the proof) and
 * returns 0 with the answer's numbers in *out (its strings are not kept:
 * the caller may leave them NULL), or a negative code with err set.
 * Called on the lease thread only. */
typedef int (*tg_lease_rpc_fn)(void *arg, Tollgate__V1__LeaseRequest *q, Tollgate__V1__LeaseResponse *out,
                               char *err, size_t errlen);

/* The budget of (account, bucket) when there is no control plane: sets
 * *budget (balance - floor, from the current snapshot) and *currency.
 * Returns 0, or -1 when the account or bucket is unknown. */
typedef int (*tg_lease_local_fn)(void *arg, const char *account_id, const char *bucket, int64_t *budget);

/* Creates a table. With rpc set, budget comes from the control plane;
 * otherwise local(arg, ...) gives it. Starts the lease thread. Returns NULL
 * when out of memory or the thread cannot start. Free with
 * tg_lease_tab_destroy. */
tg_lease_tab_t *tg_lease_tab_create(tg_lease_rpc_fn rpc, tg_lease_local_fn local, void *arg);

/* Hands the free part of every hold back (best effort, bounded by a few
 * seconds), stops the thread and frees. Accepts NULL. */
void tg_lease_tab_destroy(tg_lease_tab_t *t);

/* Adds nano to what the agent owes on (account, bucket): the cost of
 * spooled records not yet acknowledged (at start, from the outbox). */
void tg_lease_owed(tg_lease_tab_t *t, const char *account_id, const char *bucket, int64_t nano);

/* Reserves nano on (account, bucket) for one request. *ticket is the
 * caller's: 0 before the first call, kept between a TG_LEASE_WAIT and the
 * next call (it names the refill the request waits for). offline: what the
 * policy lets an agent spend on a scope once its lease lapsed with the
 * control plane unreachable (0: fail closed); spent from until a lease
 * request succeeds again; on a rate window (billing/tg_billing.h) it caps
 * everything this agent admitted in the window, leased or not. Returns TG_LEASE_OK (release it with
 * tg_lease_release), TG_LEASE_WAIT (not reserved: call again after a few
 * milliseconds), TG_LEASE_DENIED or TG_LEASE_OFFLINE (not reserved).
 * now_us: the current time. */
int tg_lease_reserve(tg_lease_tab_t *t, const char *account_id, const char *bucket, int64_t nano, uint64_t *ticket,
                     int64_t offline, int64_t now_us);

/* A request that reserved `reserved` on (account, bucket) ended having cost
 * `cost` (0 when nothing was served). Can't fail. */
void tg_lease_release(tg_lease_tab_t *t, const char *account_id, const char *bucket, int64_t reserved, int64_t cost);

/* A cost given to tg_lease_release will never be charged after all (the
 * answer was withheld and its record turned into a zero-cost receipt, or
 * no record could be spooled): spent and owed on (account, bucket) go
 * down by nano (not below 0), so the free part gets it back. Can't fail. */
void tg_lease_refund(tg_lease_tab_t *t, const char *account_id, const char *bucket, int64_t nano);

/* The control plane acknowledged records costing nano on (account,
 * bucket): they are settled, the hold no longer owes them. */
void tg_lease_acked(tg_lease_tab_t *t, const char *account_id, const char *bucket, int64_t nano);

/* A view of one bucket for metrics and tests. */
typedef struct tg_lease_info {
    int64_t li_free;       /* free part now (0 when lapsed) */
    int64_t li_reserved;   /* in flight */
    int64_t li_owed;       /* unacknowledged spend */
    int64_t li_expires_us; /* the hold's expiry as granted; 0 none */
    uint64_t li_rpcs;      /* lease requests sent for it */
    /* what the last lease answer said was left (LeaseResponse.balance_nano:
     * a scope's limit less its settled spend, a bucket's settled balance;
     * the local authority: the snapshot's budget, nothing ever settled) */
    int64_t li_left_nano;
    int64_t li_floor_nano; /* how low li_left_nano may go (LeaseResponse.floor_nano) */
    int64_t li_left_at_us; /* when that answer came; 0: never answered */
    int64_t li_avail_nano; /* what the last answer said nobody holds (LeaseResponse.available_nano) */
} tg_lease_info_t;

/* Fills *info for (account, bucket). Returns 0, or -1 when the table has
 * no entry for it. */
int tg_lease_info(tg_lease_tab_t *t, const char *account_id, const char *bucket, tg_lease_info_t *info);

/* Lease requests sent and failed since start (metrics). */
void tg_lease_counts(tg_lease_tab_t *t, uint64_t *sent, uint64_t *failed);

#endif
