/* cplink.c: the agent's link to the control plane (AgentService over
 * //rpc), on two threads of its own so no event loop ever waits on it:
 *
 *  - sync: enrolls once (--enroll-token; the agent id and its Ed25519 key
 *    are kept in the data dir), then keeps Sync open: a Snapshot replaces
 *    the configuration, an Update is applied onto a copy of the current
 *    one (objects replaced, added or deleted by id) and swapped in; a gap in
 *    revisions reopens the stream asking for a full snapshot. Reconnects
 *    with backoff when the control plane goes away; the agent keeps serving
 *    its last snapshot meanwhile (static stability).
 *  - reporter: every policy.report_interval_ms takes the batch in flight
 *    (or forms one of the oldest records, at most report_batch_max_records)
 *    from the outbox, packs a UsageBatch, signs it, sends ReportUsage and
 *    deletes the batch only after the acknowledgement; on failure it waits
 *    (backoff, at most 2 s) and resends the same batch under the same
 *    sequence.
 *
 * Several control planes (--cp A,B,C): every call (Enroll, Sync, ReportUsage,
 * Lease) goes to the current address; one that fails for want of an answer
 * (UNAVAILABLE, DEADLINE_EXCEEDED) moves everyone to the next address, in
 * order, wrapping around. Any replica serves any call: a follower forwards
 * usage reports to the settling leader (controlplane/forward.c), and spend
 * leases are store transactions any replica runs. The channels ping the
 * control plane every 2 s (a frozen or vanished one fails calls in ~4 s
 * instead of their deadline) and reconnect within 2 s once it is back. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent/server_int.h"
#include "base/tg_log.h"
#include "crypto/tg_crypto.h"
#include "rpc/tg_rpc.h"

#define M_ENROLL "/tollgate.v1.AgentService/Enroll"
#define M_SYNC "/tollgate.v1.AgentService/Sync"
#define M_REPORT "/tollgate.v1.AgentService/ReportUsage"
#define M_LEASE "/tollgate.v1.AgentService/Lease"
#define M_CHALLENGE "/tollgate.v1.AgentService/Challenge"
#define NONCE_MAX 64
#define LEASE_TIMEOUT_MS 3000
#define REPORT_TIMEOUT_MS 10000
#define CL_MAX_CP 8

struct tg_cplink {
    tg_agent_t *cl_agent;
    tg_rpc_channel_t *cl_chs[CL_MAX_CP]; /* one per --cp address */
    char cl_addrs[CL_MAX_CP][256];
    int cl_nch;
    atomic_int cl_cur;                   /* the address calls go to now */
    tg_rpc_cancel_t *cl_cancel;
    tg_crypto_key_t *cl_key;
    char *cl_ca, *cl_cert, *cl_keypem;   /* TLS to the control plane (PEM), or NULL */
    int64_t cl_ca_not_after;             /* notAfter (Unix s) of cl_ca / cl_cert; 0: none */
    int64_t cl_cert_not_after;
    char cl_token[256];
    char cl_id[128];               /* agent id, "" until enrolled */
    pthread_mutex_t cl_mu;         /* guards cl_id, cl_stop */
    pthread_cond_t cl_cv;
    int cl_stop;
    pthread_t cl_sync_thr, cl_rep_thr;
    int cl_sync_started, cl_rep_started;
    tg_snap_t *cl_snap;            /* sync thread: the snapshot last installed */
    int cl_need_full;              /* sync thread: ask for a full snapshot */
    int cl_sync_failed;            /* sync thread: the attempt ended unanswered */
    int cl_sync_got;               /* sync thread: the attempt brought a message */
    /* lease thread: the nonce the last LeaseResponse gave for the next proof,
     * good only at the address that issued it */
    uint8_t cl_nonce[NONCE_MAX];
    size_t cl_nonce_len;           /* 0: none kept */
    int cl_nonce_idx;
    /* /metrics (tg_cplink_metrics), written by the link's threads */
    atomic_int cl_m_connected;     /* a Sync stream is open and answering */
    atomic_int cl_m_sync_idx;      /* the address the Sync stream uses */
    atomic_llong cl_m_ack_us;      /* when a batch was last acknowledged, 0 never */
    atomic_ullong cl_m_report_fail; /* ReportUsage calls that failed */
    atomic_ullong cl_m_switches;   /* moves to the next --cp address */
    atomic_llong cl_m_rev;         /* revision of the installed configuration */
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Sleeps ms unless stop is asked first. Returns 1 when stopping. */
static int nap(tg_cplink_t *l, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    ts.tv_sec += ms / 1000 + ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&l->cl_mu);
    if (!l->cl_stop)
        pthread_cond_timedwait(&l->cl_cv, &l->cl_mu, &ts);
    int stop = l->cl_stop;
    pthread_mutex_unlock(&l->cl_mu);
    return stop;
}

static int stopping(tg_cplink_t *l)
{
    pthread_mutex_lock(&l->cl_mu);
    int s = l->cl_stop;
    pthread_mutex_unlock(&l->cl_mu);
    return s;
}

/* ---- several control planes ------------------------------------------------------ */

/* The channel calls go to now; *idx gets its index for link_failed. */
static tg_rpc_channel_t *link_pick(tg_cplink_t *l, int *idx)
{
    *idx = atomic_load(&l->cl_cur);
    return l->cl_chs[*idx];
}

/* A call on address idx ended with code: when the control plane did not
 * answer, everyone moves to the next address (unless a thread already
 * did). Returns 1 when the address moved. */
static int link_failed(tg_cplink_t *l, int idx, int code, const char *what, const char *why)
{
    if (l->cl_nch < 2 || (code != TG_RPC_CODE_UNAVAILABLE && code != TG_RPC_CODE_DEADLINE_EXCEEDED))
        return 0;
    int expect = idx, next = (idx + 1) % l->cl_nch;
    if (!atomic_compare_exchange_strong(&l->cl_cur, &expect, next))
        return 1; /* another thread moved on already */
    atomic_fetch_add(&l->cl_m_switches, 1);
    TG_LOG(TG_LOG_WARN, "agent", "control plane %s did not answer (%s: %s); moving to %s", l->cl_addrs[idx], what,
           why, l->cl_addrs[next]);
    return 1;
}

/* The status a failed unary call ended with (UNAVAILABLE when the call
 * never got one). */
static int call_code(int rc, const tg_rpc_result_t *res)
{
    return rc == 0 ? TG_RPC_CODE_OK : res->rs_code != TG_RPC_CODE_OK ? res->rs_code : TG_RPC_CODE_UNAVAILABLE;
}

const char *tg_cplink_agent_id(tg_cplink_t *l, char *buf, size_t n)
{
    pthread_mutex_lock(&l->cl_mu);
    snprintf(buf, n, "%s", l->cl_id);
    pthread_mutex_unlock(&l->cl_mu);
    return buf;
}

/* ---- identity ---------------------------------------------------------------- */

static int read_id(const char *dir, char *out, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/agent_id", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t k = fread(out, 1, n - 1, f);
    fclose(f);
    while (k && (out[k - 1] == '\n' || out[k - 1] == ' '))
        k--;
    out[k] = '\0';
    return k ? 0 : -1;
}

static int write_id(const char *dir, const char *id)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/agent_id", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    int ok = fprintf(f, "%s\n", id) > 0;
    ok &= fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok &= fclose(f) == 0;
    return ok && rename(tmp, path) == 0 ? 0 : -1;
}

/* Enrolls until it succeeds or stop. Returns 0 or 1 (stopping). */
static int enroll(tg_cplink_t *l)
{
    tg_agent_t *a = l->cl_agent;
    uint8_t pub[TG_ED25519_PUBLIC_LEN];
    tg_crypto_key_public(l->cl_key, pub);
    char host[256] = "agent";
    gethostname(host, sizeof host - 1);
    Tollgate__V1__EnrollRequest rq = TOLLGATE__V1__ENROLL_REQUEST__INIT;
    rq.enrollment_token = l->cl_token;
    rq.name = host;
    rq.region = (char *)a->a_opts.ao_region;
    rq.public_key.data = pub;
    rq.public_key.len = sizeof pub;
    rq.version = "tollgate-agent/0.1";
    for (int attempt = 0;; attempt++) {
        char err[TG_ERRLEN] = "";
        tg_rpc_result_t res;
        ProtobufCMessage *reply = NULL;
        int idx;
        tg_rpc_channel_t *ch = link_pick(l, &idx);
        int rc = tg_rpc_unary_pb(ch, M_ENROLL, NULL, 0, &rq.base, &tollgate__v1__enroll_response__descriptor,
                                 &reply, 10000, &res, err, sizeof err);
        int moved = rc != 0 && link_failed(l, idx, call_code(rc, &res), "Enroll", err);
        tg_rpc_result_free(&res);
        if (rc == 0) {
            Tollgate__V1__EnrollResponse *r = (Tollgate__V1__EnrollResponse *)reply;
            if (write_id(a->a_opts.ao_data_dir, r->agent_id) != 0)
                TG_LOG(TG_LOG_ERROR, "agent", "cannot write %s/agent_id: %s", a->a_opts.ao_data_dir,
                       strerror(errno));
            pthread_mutex_lock(&l->cl_mu);
            snprintf(l->cl_id, sizeof l->cl_id, "%s", r->agent_id);
            pthread_mutex_unlock(&l->cl_mu);
            TG_LOG(TG_LOG_INFO, "agent", "enrolled as %s", r->agent_id);
            tg_rpc_pb_free(reply);
            return 0;
        }
        TG_LOG(TG_LOG_WARN, "agent", "enroll failed (retrying): %s", err);
        if (nap(l, moved ? 50 : attempt < 4 ? 200 << attempt : 2000))
            return 1;
    }
}

/* A nonce for one proof at address idx: a fresh one from Challenge (the
 * control plane consumes it with the proof, so a captured proof is useless).
 * 0, or the call's status code (UNAVAILABLE when it got none) with err set. */
static int challenge(tg_cplink_t *l, tg_rpc_channel_t *ch, uint8_t *nonce, size_t *len, char *err, size_t errlen)
{
    Tollgate__V1__ChallengeRequest q = TOLLGATE__V1__CHALLENGE_REQUEST__INIT;
    ProtobufCMessage *reply = NULL;
    tg_rpc_result_t res;
    q.agent_id = l->cl_id;
    int rc = tg_rpc_unary_pb(ch, M_CHALLENGE, NULL, 0, &q.base, &tollgate__v1__challenge_response__descriptor,
                             &reply, LEASE_TIMEOUT_MS, &res, err, errlen);
    int code = call_code(rc, &res);
    tg_rpc_result_free(&res);
    if (code == TG_RPC_CODE_UNIMPLEMENTED) {
        /* a control plane older than this agent: it takes the old proof
         * (no nonce), so agents can be upgraded before control planes */
        static atomic_int warned;
        if (!atomic_exchange(&warned, 1))
            TG_LOG(TG_LOG_WARN, "agent", "the control plane has no Challenge (older than this agent): signing "
                                         "proofs without a nonce, replayable for 5 minutes, until it is upgraded");
        *len = 0;
        err[0] = '\0';
        return TG_RPC_CODE_OK;
    }
    if (code == TG_RPC_CODE_OK) {
        const Tollgate__V1__ChallengeResponse *r = (const Tollgate__V1__ChallengeResponse *)reply;
        if (r->nonce.len == 0 || r->nonce.len > NONCE_MAX)
            code = tg_errf(err, errlen, TG_RPC_CODE_INTERNAL, "Challenge: a nonce of %zu bytes", r->nonce.len);
        else
            memcpy(nonce, r->nonce.data, *len = r->nonce.len);
    }
    tg_rpc_pb_free(reply);
    return code;
}

static int proof(tg_cplink_t *l, Tollgate__V1__AgentProof *p, const uint8_t *nonce, size_t nonce_len,
                 uint8_t sig[TG_ED25519_SIG_LEN], char *msgbuf, size_t msglen)
{
    int64_t ts = now_us();
    size_t idl = strlen(l->cl_id);
    if (17 + idl + 8 + nonce_len > msglen)
        return -1;
    /* v1 (no nonce) only for a control plane without Challenge */
    memcpy(msgbuf, nonce_len ? "tollgate-agent-v2" : "tollgate-agent-v1", 17);
    memcpy(msgbuf + 17, l->cl_id, idl);
    for (int i = 0; i < 8; i++)
        msgbuf[17 + idl + i] = (char)((uint64_t)ts >> (56 - 8 * i));
    memcpy(msgbuf + 17 + idl + 8, nonce, nonce_len);
    if (tg_crypto_sign(l->cl_key, msgbuf, 17 + idl + 8 + nonce_len, sig) != 0)
        return -1;
    p->agent_id = l->cl_id;
    p->timestamp_us = ts;
    p->signature.data = sig;
    p->signature.len = TG_ED25519_SIG_LEN;
    p->nonce.data = (uint8_t *)nonce;
    p->nonce.len = nonce_len;
    return 0;
}

/* ---- spend leases --------------------------------------------------------------- */

int tg_cplink_lease(tg_cplink_t *l, Tollgate__V1__LeaseRequest *q, Tollgate__V1__LeaseResponse *out, char *err,
                    size_t errlen)
{
    char id[128];
    uint8_t sig[TG_ED25519_SIG_LEN], nonce[NONCE_MAX];
    char msg[256];
    size_t nlen = 0;
    Tollgate__V1__AgentProof p = TOLLGATE__V1__AGENT_PROOF__INIT;
    ProtobufCMessage *reply = NULL;
    tg_rpc_result_t res;
    int rc = 0, idx;
    if (l == NULL || !tg_cplink_agent_id(l, id, sizeof id)[0])
        return tg_errf(err, errlen, TG_AGENT_EUSAGE, "not enrolled with the control plane yet");
    /* two tries: the kept nonce may be gone (the replica restarted, or the
     * call moved to another address); the second asks Challenge */
    for (int attempt = 0; attempt < 2; attempt++) {
        tg_rpc_channel_t *ch = link_pick(l, &idx);
        if (l->cl_nonce_len > 0 && l->cl_nonce_idx == idx && attempt == 0) {
            nlen = l->cl_nonce_len;
            memcpy(nonce, l->cl_nonce, nlen);
        } else {
            int code = challenge(l, ch, nonce, &nlen, err, errlen);
            if (code != TG_RPC_CODE_OK) {
                link_failed(l, idx, code, "Challenge", err);
                return TG_AGENT_ESYS;
            }
        }
        l->cl_nonce_len = 0; /* single use, whatever the answer */
        /* proof() signs as cl_id, which only enrollment writes, before this */
        if (proof(l, &p, nonce, nlen, sig, msg, sizeof msg) != 0)
            return tg_errf(err, errlen, TG_AGENT_ESYS, "signing the lease proof failed");
        q->proof = &p;
        err[0] = '\0';
        rc = tg_rpc_unary_pb(ch, M_LEASE, NULL, 0, &q->base, &tollgate__v1__lease_response__descriptor, &reply,
                             LEASE_TIMEOUT_MS, &res, err, errlen);
        q->proof = NULL;
        int retry = rc != 0 && res.rs_code == TG_RPC_CODE_UNAUTHENTICATED && res.rs_message &&
                    strstr(res.rs_message, "nonce") != NULL;
        if (rc != 0)
            link_failed(l, idx, call_code(rc, &res), "Lease", err);
        tg_rpc_result_free(&res);
        if (!retry)
            break;
    }
    if (rc != 0) {
        tg_rpc_pb_free(reply);
        return rc < 0 ? rc : TG_AGENT_ESYS;
    }
    const Tollgate__V1__LeaseResponse *r = (const Tollgate__V1__LeaseResponse *)reply;
    if (r->next_nonce.len > 0 && r->next_nonce.len <= NONCE_MAX) {
        memcpy(l->cl_nonce, r->next_nonce.data, r->next_nonce.len);
        l->cl_nonce_len = r->next_nonce.len;
        l->cl_nonce_idx = idx;
    }
    out->granted_nano = r->granted_nano;
    out->expires_at_us = r->expires_at_us;
    out->hold_nano = r->hold_nano;
    out->available_nano = r->available_nano;
    out->balance_nano = r->balance_nano;
    out->floor_nano = r->floor_nano;
    out->restarted = r->restarted;
    out->free_nano = r->free_nano;
    tg_rpc_pb_free(reply);
    return 0;
}

/* ---- sync ---------------------------------------------------------------------- */

static int sync_request(void *arg, tg_buf_t *req)
{
    tg_cplink_t *l = arg;
    Tollgate__V1__SyncRequest r = TOLLGATE__V1__SYNC_REQUEST__INIT;
    Tollgate__V1__AgentProof p = TOLLGATE__V1__AGENT_PROOF__INIT;
    uint8_t sig[TG_ED25519_SIG_LEN], nonce[NONCE_MAX];
    char msg[256], err[TG_ERRLEN] = "";
    size_t nlen = 0;
    int idx = atomic_load(&l->cl_m_sync_idx);
    int code = challenge(l, l->cl_chs[idx], nonce, &nlen, err, sizeof err);
    if (code != TG_RPC_CODE_OK) {
        /* ends this run; sync_main moves on or backs off as for a failed stream */
        TG_LOG(TG_LOG_WARN, "agent", "Challenge for Sync at %s failed: %s", l->cl_addrs[idx], err);
        l->cl_sync_failed = code == TG_RPC_CODE_UNAVAILABLE || code == TG_RPC_CODE_DEADLINE_EXCEEDED
                                ? code : TG_RPC_CODE_UNAVAILABLE;
        return -1;
    }
    if (proof(l, &p, nonce, nlen, sig, msg, sizeof msg) != 0)
        return -1;
    r.proof = &p;
    r.have_revision = l->cl_snap && !l->cl_need_full ? l->cl_snap->revision : 0;
    l->cl_need_full = 0;
    return tg_rpc_pb_pack(&r.base, req, NULL, 0) == 0 ? 0 : -1;
}

/* Installs snap (packed into bytes) and keeps it as the base for updates. */
static int install(tg_cplink_t *l, tg_snap_t *snap)
{
    char err[TG_ERRLEN] = "";
    size_t n = tollgate__v1__snapshot__get_packed_size(snap);
    uint8_t *buf = tg_malloc(n ? n : 1);
    if (!buf)
        return -1;
    tollgate__v1__snapshot__pack(snap, buf);
    int rc = tg_agent_set_snapshot(l->cl_agent, buf, n, err, sizeof err);
    if (rc == 0) {
        atomic_store(&l->cl_m_rev, snap->revision);
        tg_snap_t *copy = tollgate__v1__snapshot__unpack(NULL, n, buf);
        if (l->cl_snap)
            tollgate__v1__snapshot__free_unpacked(l->cl_snap, NULL);
        l->cl_snap = copy;
    } else {
        TG_LOG(TG_LOG_ERROR, "agent", "snapshot from the control plane refused: %s", err);
    }
    tg_free(buf);
    return rc;
}

/* One repeated field of the snapshot being rebuilt: pointers into the old
 * snapshot and into the update (both alive while the new one is packed). */
typedef struct plist {
    void **pl_v;
    size_t pl_n, pl_cap;
} plist_t;

static int plist_init(plist_t *p, void **v, size_t n)
{
    p->pl_cap = n + 16;
    p->pl_n = n;
    p->pl_v = tg_malloc(p->pl_cap * sizeof *p->pl_v);
    if (!p->pl_v)
        return -1;
    if (n)
        memcpy(p->pl_v, v, n * sizeof *v);
    return 0;
}

/* Replaces the element with the same key, appends, or (del) removes it. */
static int plist_apply(plist_t *p, void *obj, int del, int (*same)(const void *, const void *))
{
    for (size_t i = 0; i < p->pl_n; i++) {
        if (!same(p->pl_v[i], obj))
            continue;
        if (del)
            p->pl_v[i] = p->pl_v[--p->pl_n];
        else
            p->pl_v[i] = obj;
        return 0;
    }
    if (del)
        return 0;
    if (p->pl_n == p->pl_cap) {
        void **nv = tg_realloc(p->pl_v, (p->pl_cap * 2) * sizeof *nv);
        if (!nv)
            return -1;
        p->pl_v = nv;
        p->pl_cap *= 2;
    }
    p->pl_v[p->pl_n++] = obj;
    return 0;
}

#define SAME_ID(T)                                                                                 \
    static int same_##T(const void *a, const void *b)                                              \
    {                                                                                              \
        return strcmp(((const Tollgate__V1__##T *)a)->id, ((const Tollgate__V1__##T *)b)->id) == 0; \
    }
SAME_ID(Account)
SAME_ID(Project)
SAME_ID(ApiKey)
SAME_ID(Channel)
static int same_route(const void *a, const void *b)
{
    return strcmp(((const tg_route_t *)a)->model, ((const tg_route_t *)b)->model) == 0;
}
static int same_balance(const void *a, const void *b)
{
    const tg_balance_t *x = a, *y = b;
    return strcmp(x->account_id, y->account_id) == 0 && strcmp(x->bucket, y->bucket) == 0;
}
static int same_card(const void *a, const void *b)
{
    const Tollgate__V1__PriceCard *x = a, *y = b;
    return strcmp(x->id, y->id) == 0 && x->version == y->version;
}
static int same_run(const void *a, const void *b)
{
    return strcmp(((const Tollgate__V1__RunBudget *)a)->run_id, ((const Tollgate__V1__RunBudget *)b)->run_id) == 0;
}

enum { L_ACC, L_BAL, L_PRJ, L_KEY, L_CHAN, L_ROUTE, L_CARD, L_RUN, L_N };

static int apply_update(tg_cplink_t *l, const Tollgate__V1__Update *u)
{
    tg_snap_t *old = l->cl_snap;
    plist_t pl[L_N] = {{0}};
    int rc = -1;
    if (plist_init(&pl[L_ACC], (void **)old->accounts, old->n_accounts) ||
        plist_init(&pl[L_BAL], (void **)old->balances, old->n_balances) ||
        plist_init(&pl[L_PRJ], (void **)old->projects, old->n_projects) ||
        plist_init(&pl[L_KEY], (void **)old->keys, old->n_keys) ||
        plist_init(&pl[L_CHAN], (void **)old->channels, old->n_channels) ||
        plist_init(&pl[L_ROUTE], (void **)old->routes, old->n_routes) ||
        plist_init(&pl[L_CARD], (void **)old->price_cards, old->n_price_cards) ||
        plist_init(&pl[L_RUN], (void **)old->run_budgets, old->n_run_budgets))
        goto done;
    Tollgate__V1__GatewayPolicy *policy = old->policy;
    for (size_t i = 0; i < u->n_changes; i++) {
        const Tollgate__V1__ConfigChange *c = u->changes[i];
        int d = c->deleted, r = 0;
        switch (c->object_case) {
        case TOLLGATE__V1__CONFIG_CHANGE__OBJECT_ACCOUNT: r = plist_apply(&pl[L_ACC], c->account, d, same_Account); break;
        case TOLLGATE__V1__CONFIG_CHANGE__OBJECT_BALANCE: r = plist_apply(&pl[L_BAL], c->balance, d, same_balance); break;
        case TOLLGATE__V1__CONFIG_CHANGE__OBJECT_PROJECT: r = plist_apply(&pl[L_PRJ], c->project, d, same_Project); break;
        case TOLLGATE__V1__CONFIG_CHANGE__OBJECT_KEY: r = plist_apply(&pl[L_KEY], c->key, d, same_ApiKey); break;
        case TOLLGATE__V1__CONFIG_CHANGE__OBJECT_CHANNEL: r = plist_apply(&pl[L_CHAN], c->channel, d, same_Channel); break;
        case TOLLGATE__V1__CONFIG_CHANGE__OBJECT_ROUTE: r = plist_apply(&pl[L_ROUTE], c->route, d, same_route); break;
        case TOLLGATE__V1__CONFIG_CHANGE__OBJECT_PRICE_CARD: r = plist_apply(&pl[L_CARD], c->price_card, d, same_card); break;
        case TOLLGATE__V1__CONFIG_CHANGE__OBJECT_RUN_BUDGET: r = plist_apply(&pl[L_RUN], c->run_budget, d, same_run); break;
        case TOLLGATE__V1__CONFIG_CHANGE__OBJECT_POLICY: policy = d ? NULL : c->policy; break;
        default: break;
        }
        if (r)
            goto done;
    }
    tg_snap_t s = *old;
    s.revision = u->revision;
    s.generated_at_us = now_us();
    s.accounts = (Tollgate__V1__Account **)pl[L_ACC].pl_v;
    s.n_accounts = pl[L_ACC].pl_n;
    s.balances = (Tollgate__V1__Balance **)pl[L_BAL].pl_v;
    s.n_balances = pl[L_BAL].pl_n;
    s.projects = (Tollgate__V1__Project **)pl[L_PRJ].pl_v;
    s.n_projects = pl[L_PRJ].pl_n;
    s.keys = (Tollgate__V1__ApiKey **)pl[L_KEY].pl_v;
    s.n_keys = pl[L_KEY].pl_n;
    s.channels = (Tollgate__V1__Channel **)pl[L_CHAN].pl_v;
    s.n_channels = pl[L_CHAN].pl_n;
    s.routes = (Tollgate__V1__ModelRoute **)pl[L_ROUTE].pl_v;
    s.n_routes = pl[L_ROUTE].pl_n;
    s.price_cards = (Tollgate__V1__PriceCard **)pl[L_CARD].pl_v;
    s.n_price_cards = pl[L_CARD].pl_n;
    s.run_budgets = (Tollgate__V1__RunBudget **)pl[L_RUN].pl_v;
    s.n_run_budgets = pl[L_RUN].pl_n;
    s.policy = policy;
    rc = install(l, &s); /* packs s before old is freed */
done:
    for (int i = 0; i < L_N; i++)
        tg_free(pl[i].pl_v);
    return rc;
}

static int on_sync_message(void *arg, const uint8_t *data, size_t len)
{
    tg_cplink_t *l = arg;
    l->cl_sync_got = 1;
    atomic_store(&l->cl_m_connected, 1);
    Tollgate__V1__SyncMessage *m = tollgate__v1__sync_message__unpack(NULL, len, data);
    if (!m) {
        TG_LOG(TG_LOG_ERROR, "agent", "Sync: a message that does not unpack; asking for a full snapshot");
        l->cl_need_full = 1;
        return 1;
    }
    int stop = 0;
    if (m->message_case == TOLLGATE__V1__SYNC_MESSAGE__MESSAGE_SNAPSHOT) {
        install(l, m->snapshot);
    } else if (m->message_case == TOLLGATE__V1__SYNC_MESSAGE__MESSAGE_UPDATE) {
        const Tollgate__V1__Update *u = m->update;
        if (!l->cl_snap || u->from_revision != l->cl_snap->revision) {
            TG_LOG(TG_LOG_WARN, "agent", "Sync: update from revision %lld but we have %lld: full snapshot",
                   (long long)u->from_revision, (long long)(l->cl_snap ? l->cl_snap->revision : 0));
            l->cl_need_full = 1;
            stop = 1;
        } else if (apply_update(l, u) != 0) {
            l->cl_need_full = 1;
            stop = 1;
        }
    }
    tollgate__v1__sync_message__free_unpacked(m, NULL);
    return stop || stopping(l);
}

static int on_sync_status(void *arg, int code, const char *message, int next_delay_ms)
{
    tg_cplink_t *l = arg;
    atomic_store(&l->cl_m_connected, 0);
    if (l->cl_nch > 1 && (code == TG_RPC_CODE_UNAVAILABLE || code == TG_RPC_CODE_DEADLINE_EXCEEDED)) {
        /* sync_main moves to the next address and reconnects there */
        l->cl_sync_failed = code;
        TG_LOG(TG_LOG_WARN, "agent", "Sync ended (%s: %s); serving revision %lld meanwhile", tg_rpc_code_name(code),
               message, (long long)(l->cl_snap ? l->cl_snap->revision : 0));
        return 1;
    }
    if (code != TG_RPC_CODE_OK)
        TG_LOG(TG_LOG_WARN, "agent", "Sync ended (%s: %s); again in %d ms, serving revision %lld meanwhile",
               tg_rpc_code_name(code), message, next_delay_ms, (long long)(l->cl_snap ? l->cl_snap->revision : 0));
    return stopping(l);
}

static void *sync_main(void *arg)
{
    tg_cplink_t *l = arg;
    if (!l->cl_id[0] && enroll(l) != 0)
        return NULL;
    int fails = 0;
    while (!stopping(l)) {
        char err[TG_ERRLEN] = "";
        int idx;
        tg_rpc_channel_t *ch = link_pick(l, &idx);
        atomic_store(&l->cl_m_sync_idx, idx);
        l->cl_sync_failed = 0;
        l->cl_sync_got = 0;
        tg_rpc_stream_opts_t o = {0};
        o.sr_method = M_SYNC;
        o.sr_request = sync_request;
        o.sr_on_message = on_sync_message;
        o.sr_on_status = on_sync_status;
        o.sr_arg = l;
        o.sr_backoff = (tg_rpc_backoff_t){.bo_initial_ms = 100, .bo_max_ms = 2000};
        o.sr_max_message_bytes = 256u << 20;
        o.sr_cancel = l->cl_cancel;
        int rc = tg_rpc_stream_run(ch, &o, err, sizeof err);
        atomic_store(&l->cl_m_connected, 0);
        if (rc == TG_RPC_ESTOPPED)
            break;
        if (rc == 0 && l->cl_sync_failed) {
            fails = l->cl_sync_got ? 0 : fails + 1;
            int moved = link_failed(l, idx, l->cl_sync_failed, "Sync", tg_rpc_code_name(l->cl_sync_failed));
            /* all addresses down: back off, at most 2 s */
            if (nap(l, moved && fails < 2 ? 50 : fails < 5 ? 100 << fails : 2000))
                break;
            continue;
        }
        if (rc < 0) {
            TG_LOG(TG_LOG_ERROR, "agent", "Sync: %s", err);
            if (nap(l, 1000))
                break;
        }
    }
    return NULL;
}

/* ---- reporter -------------------------------------------------------------------- */

typedef struct collect {
    tg_outbox_batch_t *co_b;
    Tollgate__V1__UsageRecord **co_recs;
    char **co_ids; /* each record's own agent_id, put back before freeing */
    size_t co_n;
} collect_t;

static int collect_one(void *arg, uint64_t seq, const void *data, size_t len)
{
    collect_t *c = arg;
    if (seq > c->co_b->ob_last)
        return 1;
    if (seq < c->co_b->ob_first || c->co_n >= c->co_b->ob_count)
        return 0;
    Tollgate__V1__UsageRecord *r = tollgate__v1__usage_record__unpack(NULL, len, data);
    if (!r)
        return -1;
    c->co_recs[c->co_n++] = r;
    return 0;
}

/* The records are settled (or refused for good): the spend leases that
 * reserved their cost owe it no more. */
static void acked(tg_agent_t *a, Tollgate__V1__UsageRecord **recs, size_t n)
{
    for (size_t i = 0; a->a_leases && i < n; i++) {
        if (recs[i]->cost_nano <= 0 || !recs[i]->bucket[0])
            continue;
        tg_lease_acked(a->a_leases, recs[i]->account_id, recs[i]->bucket, recs[i]->cost_nano);
        for (size_t j = 0; j < recs[i]->n_lease_scopes; j++)
            tg_lease_acked(a->a_leases, recs[i]->account_id, recs[i]->lease_scopes[j], recs[i]->cost_nano);
    }
}

/* Sends the batch in flight (or a new one). Returns 1 sent, 0 nothing to
 * send, -1 failed (retry later). */
/* *hint: 1 when a failure moved to the next address, 2 when the control
 * plane answered that no leader settles yet. */
static int report_once(tg_cplink_t *l, size_t max, int *hint)
{
    tg_agent_t *a = l->cl_agent;
    char err[TG_ERRLEN] = "";
    tg_outbox_batch_t b;
    int rc = tg_outbox_batch(a->a_outbox, max, &b, err, sizeof err);
    if (rc <= 0) {
        if (rc < 0)
            TG_LOG(TG_LOG_ERROR, "agent", "reporter: %s", err);
        return rc < 0 ? -1 : 0;
    }
    size_t cap = b.ob_count ? (size_t)b.ob_count : 1;
    collect_t c = {&b, tg_calloc(cap, sizeof *c.co_recs), tg_calloc(cap, sizeof(char *)), 0};
    tg_buf_t packed, signedb;
    tg_buf_init(&packed, (size_t)1 << 30);
    tg_buf_init(&signedb, (size_t)1 << 30);
    int out = -1;
    ProtobufCMessage *reply = NULL;
    if (!c.co_recs || !c.co_ids)
        goto done;
    /* the batch is LMDB's first ob_count records: no more are read (a
     * scan past them would go on into the journal when a move failed) */
    if (tg_outbox_scan(a->a_outbox, (size_t)b.ob_count, collect_one, &c, err, sizeof err) < 0) {
        TG_LOG(TG_LOG_ERROR, "agent", "reporter: batch %llu: a record does not unpack", (unsigned long long)b.ob_seq);
        goto done;
    }
    if (c.co_n != b.ob_count) { /* its acknowledgement would delete records never sent */
        TG_LOG(TG_LOG_ERROR, "agent",
               "reporter: batch %llu: the outbox holds %zu of its %llu records; not sent",
               (unsigned long long)b.ob_seq, c.co_n, (unsigned long long)b.ob_count);
        goto done;
    }
    Tollgate__V1__UsageBatch ub = TOLLGATE__V1__USAGE_BATCH__INIT;
    ub.agent_id = l->cl_id;
    ub.sequence = b.ob_seq;
    ub.created_at_us = now_us();
    ub.records = c.co_recs;
    ub.n_records = c.co_n;
    for (size_t i = 0; i < c.co_n; i++) {
        c.co_ids[i] = c.co_recs[i]->agent_id;
        c.co_recs[i]->agent_id = l->cl_id; /* records spooled before enrollment have none */
    }
    if (tg_rpc_pb_pack(&ub.base, &packed, err, sizeof err) != 0)
        goto done;
    uint8_t sig[TG_ED25519_SIG_LEN];
    if (tg_crypto_sign(l->cl_key, packed.b_data, packed.b_len, sig) != 0) {
        TG_LOG(TG_LOG_ERROR, "agent", "reporter: signing failed");
        goto done;
    }
    Tollgate__V1__SignedUsageBatch sb = TOLLGATE__V1__SIGNED_USAGE_BATCH__INIT;
    sb.batch.data = (uint8_t *)packed.b_data;
    sb.batch.len = packed.b_len;
    sb.signature.data = sig;
    sb.signature.len = sizeof sig;
    sb.agent_id = l->cl_id;
    tg_rpc_result_t res;
    int idx;
    tg_rpc_channel_t *ch = link_pick(l, &idx);
    rc = tg_rpc_unary_pb(ch, M_REPORT, NULL, 0, &sb.base, &tollgate__v1__report_usage_response__descriptor,
                         &reply, REPORT_TIMEOUT_MS, &res, err, sizeof err);
    int code = res.rs_code;
    if (rc != 0) {
        atomic_fetch_add(&l->cl_m_report_fail, 1);
        if (tg_rpc_result_metadata(&res, "tg-no-leader") != NULL)
            *hint = 2; /* the replica answered: stay, a leader is being elected */
        else if (link_failed(l, idx, call_code(rc, &res), "ReportUsage", err))
            *hint = 1;
    }
    tg_rpc_result_free(&res);
    if (rc != 0 && (code == TG_RPC_CODE_INVALID_ARGUMENT || code == TG_RPC_CODE_FAILED_PRECONDITION)) {
        /* Resending cannot help, and would block every later batch: keep
         * the records aside (outbox "rejected" table) and say so loudly. */
        TG_LOG(TG_LOG_ERROR, "agent", "batch %llu (%zu records) REJECTED by the control plane, kept aside: %s",
               (unsigned long long)b.ob_seq, c.co_n, err);
        if (tg_outbox_batch_done(a->a_outbox, &b, 1, err, sizeof err) == 0) {
            out = 1;
            acked(a, c.co_recs, c.co_n); /* never settled: the spend lease owes them no more */
        }
        goto done;
    }
    if (rc != 0) {
        TG_LOG(TG_LOG_WARN, "agent", "ReportUsage batch %llu (%zu records) failed, will resend: %s",
               (unsigned long long)b.ob_seq, c.co_n, err);
        goto done;
    }
    Tollgate__V1__ReportUsageResponse *r = (Tollgate__V1__ReportUsageResponse *)reply;
    TG_LOG(TG_LOG_INFO, "agent", "batch %llu acknowledged: %u settled, %u duplicate records%s",
           (unsigned long long)b.ob_seq, r->settled, r->duplicate_records, r->duplicate_batch ? " (duplicate batch)" : "");
    if (tg_outbox_batch_done(a->a_outbox, &b, 0, err, sizeof err) != 0) {
        TG_LOG(TG_LOG_ERROR, "agent", "reporter: %s", err);
        goto done;
    }
    acked(a, c.co_recs, c.co_n);
    atomic_store(&l->cl_m_ack_us, now_us());
    out = 1;
done:
    tg_rpc_pb_free(reply);
    for (size_t i = 0; c.co_recs && i < c.co_n; i++) {
        if (c.co_ids[i])
            c.co_recs[i]->agent_id = c.co_ids[i];
        tollgate__v1__usage_record__free_unpacked(c.co_recs[i], NULL);
    }
    tg_free(c.co_recs);
    tg_free(c.co_ids);
    tg_buf_free(&packed);
    tg_buf_free(&signedb);
    return out;
}

static void *report_main(void *arg)
{
    tg_cplink_t *l = arg;
    int fails = 0;
    for (;;) {
        uint32_t interval = 200, batch = 1000;
        tg_cfg_t *c = NULL;
        tg_agent_t *a = l->cl_agent;
        pthread_mutex_lock(&a->a_cfg_mu);
        if ((c = a->a_cfg) != NULL)
            tg_cfg_ref(c);
        pthread_mutex_unlock(&a->a_cfg_mu);
        if (c) {
            const Tollgate__V1__GatewayPolicy *p = tg_cfg_snapshot(c)->policy;
            if (p && p->report_interval_ms)
                interval = p->report_interval_ms;
            if (p && p->report_batch_max_records)
                batch = p->report_batch_max_records;
            tg_cfg_unref(c);
        }
        char id[128];
        int rc = 0, hint = 0;
        if (tg_cplink_agent_id(l, id, sizeof id)[0]) {
            while ((rc = report_once(l, batch, &hint)) == 1 && !stopping(l))
                fails = 0;
        }
        int wait = (int)interval;
        if (rc < 0) {
            /* backoff while no control plane settles: at most 2 s, so
             * settlement resumes within 2 s of a leader; at once on the
             * next address; every 250 ms while a live replica waits for
             * an election (~3.5 s after a leader crashed) */
            fails++;
            wait = hint == 2 ? 250 : hint == 1 && fails <= l->cl_nch ? 50 : fails < 3 ? 250 << fails : 2000;
        }
        if (nap(l, wait))
            break;
    }
    return NULL;
}

/* ---- start / stop ------------------------------------------------------------------ */

int tg_cplink_start(tg_agent_t *a, const char *target, const char *token, tg_cplink_t **out, char *err,
                    size_t errlen)
{
    int rc;
    char path[4096];
    *out = NULL;
    if (!a->a_opts.ao_data_dir || !a->a_outbox)
        return tg_errf(err, errlen, TG_AGENT_EUSAGE, "--cp needs --data-dir (agent id, key and outbox live there)");
    tg_cplink_t *l = tg_calloc(1, sizeof *l);
    if (!l)
        return tg_errf(err, errlen, TG_AGENT_ENOMEM, "out of memory");
    l->cl_agent = a;
    pthread_mutex_init(&l->cl_mu, NULL);
    pthread_cond_init(&l->cl_cv, NULL);
    snprintf(l->cl_token, sizeof l->cl_token, "%s", token ? token : "");
    snprintf(path, sizeof path, "%s/agent_key.pem", a->a_opts.ao_data_dir);
    if ((rc = tg_crypto_key_load_or_create(path, &l->cl_key, err, errlen)) != 0) {
        rc = TG_AGENT_ESYS;
        goto fail;
    }
    if (read_id(a->a_opts.ao_data_dir, l->cl_id, sizeof l->cl_id) != 0 && !l->cl_token[0]) {
        rc = tg_errf(err, errlen, TG_AGENT_EUSAGE,
                     "not enrolled yet (%s/agent_id missing): give --enroll-token", a->a_opts.ao_data_dir);
        goto fail;
    }
    size_t flen;
    if ((a->a_opts.ao_cp_ca && (rc = tg_agent_read_file(a->a_opts.ao_cp_ca, &l->cl_ca, &flen, err, errlen)) != 0) ||
        (a->a_opts.ao_cp_cert &&
         (rc = tg_agent_read_file(a->a_opts.ao_cp_cert, &l->cl_cert, &flen, err, errlen)) != 0) ||
        (a->a_opts.ao_cp_key &&
         (rc = tg_agent_read_file(a->a_opts.ao_cp_key, &l->cl_keypem, &flen, err, errlen)) != 0))
        goto fail;
    if (!!l->cl_cert != !!l->cl_keypem) {
        rc = tg_errf(err, errlen, TG_AGENT_EUSAGE, "--cp-cert and --cp-key go together (mTLS)");
        goto fail;
    }
    {
        char why[TG_ERRLEN] = "";
        if (l->cl_ca && tg_crypto_cert_not_after(l->cl_ca, strlen(l->cl_ca), &l->cl_ca_not_after, why, sizeof why)) {
            rc = tg_errf(err, errlen, TG_AGENT_EUSAGE, "--cp-ca %s: %s", a->a_opts.ao_cp_ca, why);
            goto fail;
        }
        if (l->cl_cert &&
            tg_crypto_cert_not_after(l->cl_cert, strlen(l->cl_cert), &l->cl_cert_not_after, why, sizeof why)) {
            rc = tg_errf(err, errlen, TG_AGENT_EUSAGE, "--cp-cert %s: %s", a->a_opts.ao_cp_cert, why);
            goto fail;
        }
    }
    for (const char *p = target; p && *p;) {
        size_t n = strcspn(p, ",");
        while (n && (*p == ' ')) {
            p++;
            n--;
        }
        while (n && p[n - 1] == ' ')
            n--;
        if (n == 0 || n >= sizeof l->cl_addrs[0] || l->cl_nch == CL_MAX_CP) {
            rc = tg_errf(err, errlen, TG_AGENT_EUSAGE, "--cp %s: expected 1 to %d addresses HOST:PORT,HOST:PORT", target,
                         CL_MAX_CP);
            goto fail;
        }
        snprintf(l->cl_addrs[l->cl_nch], sizeof l->cl_addrs[0], "%.*s", (int)n, p);
        tg_rpc_channel_opts_t co = {0};
        co.co_tls = a->a_opts.ao_cp_tls || l->cl_ca || l->cl_cert;
        co.co_root_pem = l->cl_ca;
        co.co_cert_pem = l->cl_cert;
        co.co_key_pem = l->cl_keypem;
        co.co_tls_name = a->a_opts.ao_cp_tls_name;
        co.co_reconnect_min_ms = 100; /* the core's default grows to 120 s */
        co.co_reconnect_max_ms = 2000;
        co.co_keepalive_ms = 2000;    /* the server accepts pings every >= 1 s */
        co.co_max_message_bytes = 256 << 20;
        if (!(l->cl_chs[l->cl_nch] = tg_rpc_channel_create(l->cl_addrs[l->cl_nch], &co, err, errlen))) {
            rc = tg_errf(err, errlen, TG_AGENT_ESYS, "cannot reach the control plane at %s", l->cl_addrs[l->cl_nch]);
            goto fail;
        }
        l->cl_nch++;
        p += strcspn(p, ",");
        if (*p == ',')
            p++;
    }
    if (l->cl_nch == 0) {
        rc = tg_errf(err, errlen, TG_AGENT_EUSAGE, "--cp: no address given");
        goto fail;
    }
    if (!(l->cl_cancel = tg_rpc_cancel_create())) {
        rc = tg_errf(err, errlen, TG_AGENT_ENOMEM, "out of memory");
        goto fail;
    }
    if (pthread_create(&l->cl_sync_thr, NULL, sync_main, l) != 0) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "cannot start the sync thread");
        goto fail;
    }
    l->cl_sync_started = 1;
    if (pthread_create(&l->cl_rep_thr, NULL, report_main, l) != 0) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "cannot start the reporter thread");
        goto fail;
    }
    l->cl_rep_started = 1;
    *out = l;
    return 0;
fail:
    tg_cplink_stop(l);
    return rc;
}

void tg_cplink_quiesce(tg_cplink_t *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->cl_mu);
    l->cl_stop = 1;
    pthread_cond_broadcast(&l->cl_cv);
    pthread_mutex_unlock(&l->cl_mu);
    if (l->cl_cancel)
        tg_rpc_cancel_signal(l->cl_cancel);
    if (l->cl_sync_started)
        pthread_join(l->cl_sync_thr, NULL);
    if (l->cl_rep_started)
        pthread_join(l->cl_rep_thr, NULL);
    l->cl_sync_started = l->cl_rep_started = 0;
}

void tg_cplink_stop(tg_cplink_t *l)
{
    if (!l)
        return;
    tg_cplink_quiesce(l);
    for (int i = 0; i < l->cl_nch; i++)
        tg_rpc_channel_destroy(l->cl_chs[i]);
    tg_rpc_cancel_destroy(l->cl_cancel);
    tg_crypto_key_free(l->cl_key);
    tg_free(l->cl_ca);
    tg_free(l->cl_cert);
    if (l->cl_keypem) {
        memset(l->cl_keypem, 0, strlen(l->cl_keypem)); /* a private key: not left in freed memory */
        tg_free(l->cl_keypem);
    }
    if (l->cl_snap)
        tollgate__v1__snapshot__free_unpacked(l->cl_snap, NULL);
    pthread_mutex_destroy(&l->cl_mu);
    pthread_cond_destroy(&l->cl_cv);
    tg_free(l);
}

/* ---- metrics ------------------------------------------------------------------------ */

void tg_cplink_metrics(tg_agent_t *a, tg_buf_t *out)
{
    tg_cplink_t *l = a->a_cplink;
    uint64_t sent = 0, failed = 0;
    if (a->a_leases)
        tg_lease_counts(a->a_leases, &sent, &failed);
    tg_buf_printf(out,
                  "# HELP tollgate_agent_lease_requests_total Spend-lease requests sent to the control plane.\n"
                  "# TYPE tollgate_agent_lease_requests_total counter\n"
                  "tollgate_agent_lease_requests_total %llu\n"
                  "# HELP tollgate_agent_lease_failures_total Spend-lease requests that failed.\n"
                  "# TYPE tollgate_agent_lease_failures_total counter\n"
                  "tollgate_agent_lease_failures_total %llu\n",
                  (unsigned long long)sent, (unsigned long long)failed);
    if (l == NULL)
        return;
    int64_t ack = atomic_load(&l->cl_m_ack_us);
    int cur = atomic_load(&l->cl_m_sync_idx);
    tg_buf_printf(out,
                  "# HELP tollgate_agent_cp_connected 1 while the Sync stream to the control plane (cp) is open.\n"
                  "# TYPE tollgate_agent_cp_connected gauge\n"
                  "tollgate_agent_cp_connected{cp=\"%s\"} %d\n"
                  "# HELP tollgate_agent_cp_last_ack_age_seconds Seconds since the control plane last acknowledged "
                  "a usage batch (-1: none since start).\n"
                  "# TYPE tollgate_agent_cp_last_ack_age_seconds gauge\n"
                  "tollgate_agent_cp_last_ack_age_seconds %.3f\n"
                  "# HELP tollgate_agent_cp_report_failures_total Usage reports that failed (resent later).\n"
                  "# TYPE tollgate_agent_cp_report_failures_total counter\n"
                  "tollgate_agent_cp_report_failures_total %llu\n"
                  "# HELP tollgate_agent_cp_switches_total Moves to the next --cp address after one did not answer.\n"
                  "# TYPE tollgate_agent_cp_switches_total counter\n"
                  "tollgate_agent_cp_switches_total %llu\n"
                  "# HELP tollgate_agent_config_revision Store revision of the configuration installed.\n"
                  "# TYPE tollgate_agent_config_revision gauge\n"
                  "tollgate_agent_config_revision %lld\n",
                  l->cl_addrs[cur], atomic_load(&l->cl_m_connected), ack ? (double)(now_us() - ack) / 1e6 : -1.0,
                  (unsigned long long)atomic_load(&l->cl_m_report_fail),
                  (unsigned long long)atomic_load(&l->cl_m_switches), (long long)atomic_load(&l->cl_m_rev));
    if (!l->cl_ca_not_after && !l->cl_cert_not_after)
        return;
    tg_buf_puts(out, "# HELP tollgate_agent_cert_expiry_seconds Seconds until a certificate of the control-plane link "
                     "expires (negative: expired): cert=\"ca\" (--cp-ca), \"client\" (--cp-cert).\n"
                     "# TYPE tollgate_agent_cert_expiry_seconds gauge\n");
    if (l->cl_ca_not_after)
        tg_buf_printf(out, "tollgate_agent_cert_expiry_seconds{cert=\"ca\"} %lld\n",
                      (long long)(l->cl_ca_not_after - now_us() / 1000000));
    if (l->cl_cert_not_after)
        tg_buf_printf(out, "tollgate_agent_cert_expiry_seconds{cert=\"client\"} %lld\n",
                      (long long)(l->cl_cert_not_after - now_us() / 1000000));
}
