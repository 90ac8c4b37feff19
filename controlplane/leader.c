/* leader.c: which replica settles. Replicas campaign for TG_CP_K_LEADER with
 * a store lease (TTL 3 s, kept alive every second): a transaction puts the
 * key, attached to the lease, only if it does not exist. The winner first
 * waits until its tailer has applied the settled log up to the last settled
 * batch (so its ledger, which settlement reads to skip duplicate records, is
 * complete), and only then settles. A failed keepalive steps down at once;
 * the key then disappears with the lease (at most its TTL) and another
 * replica wins the next campaign round (every 500 ms).
 *
 * Fencing: settlement transactions compare TG_CP_K_LEADER's create_revision
 * with the one this replica created, so a replica that lost its lease while
 * paused (GC, SIGSTOP, network) can never commit a settlement.
 *
 * On the embedded LMDB store there is one replica; the same code makes it
 * leader on its first round (LMDB implements leases too).
 *
 * Discovery: each replica puts its advertised gRPC address (--advertise)
 * under TG_CP_K_REPLICA<node id> on the same lease, and a follower reads the
 * leader's whenever the leader key changes (its create_revision), so it can
 * forward usage reports there (forward.c). The keys vanish with the lease.
 *
 * Graceful stop (tg_cp_agent_side_resign): the thread leaves its loop and
 * the lease is revoked, which deletes the leader key at once: the next
 * replica's campaign round (<= 500 ms) wins without waiting for the TTL.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/tg_log.h"
#include "controlplane/agentside.h"

#define LEASE_TTL_S 3
#define KEEPALIVE_MS 1000
#define CAMPAIGN_MS 500
#define CATCHUP_MS 60000

static void set_state(tg_cp_agent_side_t *as, int ready, int64_t create_rev, const char *name)
{
    pthread_mutex_lock(&as->as_mu);
    as->as_settle_ready = ready;
    as->as_leader_create_rev = create_rev;
    snprintf(as->as_leader_name, sizeof(as->as_leader_name), "%s", name ? name : "");
    pthread_mutex_unlock(&as->as_mu);
    atomic_store(&as->as_cp->cp_is_leader, ready);
}

/* 1 once the thread should leave: stop or graceful resign. */
static int halted(tg_cp_agent_side_t *as)
{
    pthread_mutex_lock(&as->as_mu);
    int h = as->as_stop || as->as_resign;
    pthread_mutex_unlock(&as->as_mu);
    return h;
}

/* Puts TG_CP_K_REPLICA<me> = the advertised address on our lease (once per
 * lease). A failure is logged and retried next round: only forwarding to
 * this replica waits for it. */
static void publish(tg_cp_agent_side_t *as)
{
    tg_cp_t *cp = as->as_cp;
    char key[TG_STORE_MAX_KEY], err[TG_ERRLEN] = "", addr[256];
    pthread_mutex_lock(&as->as_mu);
    snprintf(addr, sizeof(addr), "%s", as->as_advertise);
    pthread_mutex_unlock(&as->as_mu);
    if (as->as_published || as->as_lease == 0 || !addr[0])
        return;
    snprintf(key, sizeof(key), TG_CP_K_REPLICA "%s", cp->cp_node_id ? cp->cp_node_id : "cp");
    if (tg_store_put(cp->cp_store, key, strlen(key), addr, strlen(addr), as->as_lease, NULL, err,
                     sizeof(err)) < 0) {
        TG_LOG(TG_LOG_WARN, "cp.leader", "publishing this replica's address: %s", err);
        return;
    }
    as->as_published = 1;
}

/* A follower learns the leader's address when the leader key changed. */
static void resolve(tg_cp_agent_side_t *as, const char *holder, int64_t holder_rev)
{
    tg_cp_t *cp = as->as_cp;
    char key[TG_STORE_MAX_KEY], err[TG_ERRLEN] = "", addr[256] = "";
    pthread_mutex_lock(&as->as_mu);
    int known = holder_rev != 0 && holder_rev == as->as_leader_seen_rev && as->as_leader_addr[0];
    pthread_mutex_unlock(&as->as_mu);
    if (known)
        return;
    if (holder[0]) {
        tg_store_kv_t *kv = NULL;
        snprintf(key, sizeof(key), TG_CP_K_REPLICA "%s", holder);
        if (tg_store_get(cp->cp_store, key, strlen(key), &kv, NULL, err, sizeof(err)) < 0)
            TG_LOG(TG_LOG_WARN, "cp.leader", "reading the leader's address: %s", err);
        else if (kv != NULL)
            snprintf(addr, sizeof(addr), "%.*s", (int)kv->kv_val_len, (const char *)kv->kv_val);
        tg_store_kv_free(kv);
    }
    pthread_mutex_lock(&as->as_mu);
    int changed = strcmp(addr, as->as_leader_addr) != 0;
    snprintf(as->as_leader_addr, sizeof(as->as_leader_addr), "%s", addr);
    as->as_leader_seen_rev = addr[0] ? holder_rev : 0; /* not found yet: look again next round */
    pthread_mutex_unlock(&as->as_mu);
    if (changed && addr[0])
        TG_LOG(TG_LOG_INFO, "cp.leader", "the settling leader is %s at %s", holder, addr);
}

int cp_leader_check(tg_cp_agent_side_t *as, int64_t *create_rev, char *name, size_t namelen)
{
    pthread_mutex_lock(&as->as_mu);
    int ready = as->as_settle_ready;
    *create_rev = as->as_leader_create_rev;
    snprintf(name, namelen, "%s", as->as_leader_name);
    pthread_mutex_unlock(&as->as_mu);
    return ready;
}

/* One campaign round: 1 won (create_rev set), 0 lost (name of the holder),
 * negative on a store error. */
static int campaign(tg_cp_agent_side_t *as, int64_t *create_rev, char *holder, size_t hlen,
                    int64_t *holder_rev, char *err, size_t errlen)
{
    tg_cp_t *cp = as->as_cp;
    const char *me = cp->cp_node_id ? cp->cp_node_id : "cp";
    tg_store_cmp_t cmp = {.c_key = TG_CP_K_LEADER, .c_key_len = strlen(TG_CP_K_LEADER),
                          .c_target = TG_STORE_CMP_VERSION, .c_op = TG_STORE_EQ, .c_num = 0};
    tg_store_op_t put = {.op_type = TG_STORE_OP_PUT, .op_key = TG_CP_K_LEADER,
                         .op_key_len = strlen(TG_CP_K_LEADER), .op_val = me,
                         .op_val_len = strlen(me), .op_lease = as->as_lease};
    tg_store_op_t get = {.op_type = TG_STORE_OP_GET, .op_key = TG_CP_K_LEADER,
                         .op_key_len = strlen(TG_CP_K_LEADER)};
    tg_store_txn_res_t res;
    int rc = tg_store_txn(cp->cp_store, &cmp, 1, &put, 1, &get, 1, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (res.tx_succeeded) {
        *create_rev = res.tx_revision;
        rc = 1;
    } else {
        holder[0] = '\0';
        if (res.tx_n == 1 && res.tx_res[0].or_range.rs_n == 1) {
            const tg_store_kv_t *kv = &res.tx_res[0].or_range.rs_kvs[0];
            snprintf(holder, hlen, "%.*s", (int)kv->kv_val_len, (const char *)kv->kv_val);
            *holder_rev = kv->kv_create_rev;
            /* our own key from before a restart with the same node id and a
             * lease we no longer hold: it expires by itself */
        }
        rc = 0;
    }
    tg_store_txn_res_free(&res);
    return rc;
}

static void *leader_main(void *arg)
{
    pthread_setname_np(pthread_self(), "cp-leader");
    tg_cp_agent_side_t *as = arg;
    tg_cp_t *cp = as->as_cp;
    const char *me = cp->cp_node_id ? cp->cp_node_id : "cp";
    int gap_logged = 0;
    while (!halted(as)) {
        char err[TG_ERRLEN] = "", holder[256] = "";
        int64_t create_rev = 0, holder_rev = 0;
        if (as->as_lease == 0) {
            as->as_published = 0;
            if (tg_store_lease_grant(cp->cp_store, LEASE_TTL_S, &as->as_lease, err, sizeof(err)) < 0) {
                as->as_lease = 0;
                TG_LOG(TG_LOG_WARN, "cp.leader", "lease grant: %s", err);
                cp_wait(as, CAMPAIGN_MS, 1);
                continue;
            }
        }
        publish(as);
        if (atomic_load(&cp->cp_ledger_gap) && !cp->cp_accept_gap) {
            /* a leader must apply every settled batch first; with rows
             * missing it would stall settlement, then step down, forever */
            if (!gap_logged++)
                TG_LOG(TG_LOG_WARN, "cp.leader",
                       "%s does not run for leader while its ledger lacks rows a peer must supply "
                       "(--accept-ledger-gap=on overrides)", me);
            if (tg_store_lease_keepalive(cp->cp_store, as->as_lease, NULL, err, sizeof(err)) < 0)
                as->as_lease = 0;
            cp_wait(as, CAMPAIGN_MS, 1);
            continue;
        }
        gap_logged = 0;
        int rc = campaign(as, &create_rev, holder, sizeof(holder), &holder_rev, err, sizeof(err));
        if (rc == TG_STORE_ENOLEASE) {
            as->as_lease = 0;
            continue;
        }
        if (rc <= 0) {
            if (rc < 0)
                TG_LOG(TG_LOG_WARN, "cp.leader", "campaign: %s", err);
            set_state(as, 0, 0, holder);
            if (rc == 0)
                resolve(as, holder, holder_rev);
            /* keep our lease alive so the next round can use it */
            if (tg_store_lease_keepalive(cp->cp_store, as->as_lease, NULL, err, sizeof(err)) < 0)
                as->as_lease = 0;
            cp_wait(as, CAMPAIGN_MS, 1);
            continue;
        }
        /* won: catch the ledger up to the last settled batch, then settle */
        TG_LOG(TG_LOG_INFO, "cp.leader", "%s won the leader lease (revision %" PRId64 "); catching up",
               me, create_rev);
        set_state(as, 0, create_rev, me);
        tg_store_kv_t *kv = NULL;
        int64_t need = 0;
        if (tg_store_get(cp->cp_store, TG_CP_K_SETTLED_SEQ, strlen(TG_CP_K_SETTLED_SEQ), &kv, NULL, err,
                         sizeof(err)) == 0 && kv != NULL)
            need = kv->kv_mod_rev;
        tg_store_kv_free(kv);
        int ok = 1;
        int64_t t0 = tg_cp_now_us();
        while (!halted(as) && cp_tail_wait(as, need, KEEPALIVE_MS, NULL, 0) < 0) {
            if (tg_store_lease_keepalive(cp->cp_store, as->as_lease, NULL, err, sizeof(err)) < 0 ||
                tg_cp_now_us() - t0 > (int64_t)CATCHUP_MS * 1000) {
                ok = 0;
                break;
            }
        }
        if (ok && !halted(as)) {
            pthread_mutex_lock(&as->as_settle_mu);
            as->as_settled_seq_modrev = -1; /* read the log's tail afresh */
            pthread_mutex_unlock(&as->as_settle_mu);
            set_state(as, 1, create_rev, me);
            TG_LOG(TG_LOG_INFO, "cp.leader", "%s is the settling leader (ledger caught up in %" PRId64 " ms)",
                   me, (tg_cp_now_us() - t0) / 1000);
            while (!cp_wait(as, KEEPALIVE_MS, 1)) {
                publish(as); /* the address may be set after we won */
                if (tg_store_lease_keepalive(cp->cp_store, as->as_lease, NULL, err, sizeof(err)) < 0) {
                    ok = 0;
                    break;
                }
            }
        }
        set_state(as, 0, 0, "");
        if (!ok) {
            TG_LOG(TG_LOG_WARN, "cp.leader", "%s steps down: %s", me, err[0] ? err : "catch-up too slow");
            if (as->as_lease != 0)
                tg_store_lease_revoke(cp->cp_store, as->as_lease, NULL, 0);
            as->as_lease = 0;
        }
    }
    return NULL;
}

int cp_leader_start(tg_cp_agent_side_t *as, char *err, size_t errlen)
{
    if (pthread_create(&as->as_leader_thr, NULL, leader_main, as) != 0)
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "cannot start the leader thread");
    as->as_leader_started = 1;
    return 0;
}

int tg_cp_leader_name(tg_cp_t *cp, char *name, size_t namelen)
{
    tg_cp_agent_side_t *as = cp->cp_agent;
    int me = 0;
    if (namelen)
        name[0] = '\0';
    if (as == NULL)
        return 0;
    pthread_mutex_lock(&as->as_mu);
    snprintf(name, namelen, "%s", as->as_leader_name);
    me = as->as_settle_ready;
    pthread_mutex_unlock(&as->as_mu);
    return me;
}

void tg_cp_agent_side_advertise(tg_cp_t *cp, const char *addr)
{
    tg_cp_agent_side_t *as = cp->cp_agent;
    if (as == NULL)
        return;
    pthread_mutex_lock(&as->as_mu);
    snprintf(as->as_advertise, sizeof(as->as_advertise), "%s", addr ? addr : "");
    pthread_cond_broadcast(&as->as_cv);
    pthread_mutex_unlock(&as->as_mu);
}

void cp_leader_stop(tg_cp_agent_side_t *as)
{
    if (as->as_leader_started)
        pthread_join(as->as_leader_thr, NULL);
    as->as_leader_started = 0;
    set_state(as, 0, 0, "");
    /* revoking deletes the leader key at once: another replica takes over
     * without waiting for the TTL */
    if (as->as_lease != 0) {
        char err[TG_ERRLEN] = "";
        if (tg_store_lease_revoke(as->as_cp->cp_store, as->as_lease, err, sizeof(err)) < 0)
            TG_LOG(TG_LOG_WARN, "cp.leader", "revoking the lease: %s (it lapses within %d s)", err,
                   LEASE_TTL_S);
        else
            TG_LOG(TG_LOG_INFO, "cp.leader", "lease revoked: leader key and address released");
        as->as_lease = 0;
    }
}
