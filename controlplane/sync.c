/* sync.c: the Sync stream. Every agent keeps one open; it gets a Snapshot
 * of the whole configuration at one store revision, then an Update per store
 * revision that changed anything under TG_CP_K_CONFIG, and a Heartbeat when
 * idle.
 *
 * One store watch feeds every stream: the watch thread turns each revision's
 * events into one packed SyncMessage{update} and sends it, without waiting,
 * to every stream that is exactly at the update's from_revision. A stream
 * whose send queue is full (a slow agent) or that fell out of step is marked
 * for a fresh snapshot, which the resnap thread builds at the revision the
 * watch has delivered up to, sends (it may wait there), then catches up from
 * a ring of recent updates under the lock, so no update is lost in between.
 * New streams go the same way, unless the agent already has the current
 * revision (then a heartbeat confirms it) or the ring still holds the updates
 * after its revision. On ECOMPACTED the watch restarts at the current
 * revision and every stream gets a snapshot.
 *
 * Messages are assembled from the stored values without unpacking them: a
 * protobuf embedded message is its bytes behind a tag and a length, so a
 * snapshot of a million objects is one pass of memcpy. Only price cards are
 * unpacked, to keep for each card the version in effect now and the
 * scheduled later ones.
 *
 * Balances do not churn the stream: every settlement and every spend-lease
 * grant rewrites a Balance, and agents need balances only to refuse at once
 * a bucket with nothing left (their spend leases say the rest). So a
 * Balance change goes out only when it crosses zero (budget left or not,
 * floor included) or when that balance was last sent BALANCE_REFRESH_US
 * ago; a revision whose every change is held back sends nothing, and the
 * next update starts from the last revision sent, so an agent still sees
 * an unbroken chain. Snapshots always carry the current balances.
 *
 * Stream ownership: a stream is in as_streams while open; whoever removes it
 * under as_mu finishes the call. The resnap thread marks the stream it works
 * on (SNAPPING) and works without the lock; a cancel meanwhile only marks it
 * dead, and the resnap thread finishes it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/tg_log.h"
#include "controlplane/agentside.h"
#include "tollgate/v1/admin.pb-c.h"
#include "tollgate/v1/agent.pb-c.h"

#define RING_MAX_ENTRIES 4096
#define RING_MAX_BYTES (64u << 20)
/* Updates older than this leave the ring: an agent away longer takes a
 * snapshot. Without it the ring filled over hours with balance refreshes
 * (one per balance every 10 s) and the control plane's memory crept until
 * the 4096 entries were reached (docs/PERFORMANCE.md, "Soak"). */
#define RING_MAX_AGE_US (10LL * 60 * 1000000)
#define PAGE_KEYS 10000
#define SNAP_SEND_TIMEOUT_MS 30000
#define INFO_EVERY_US (30LL * 1000000)
#define BALANCE_REFRESH_US (10LL * 1000000)
#define BAL_CHAINS 4096

enum { SS_ACTIVE = 1, SS_NEED_SNAP, SS_SNAPPING };

typedef struct sync_stream {
    struct sync_stream *ss_next;
    tg_rpc_call_t *ss_call;
    char ss_agent[64];
    int ss_state;
    int ss_dead;             /* cancelled while SNAPPING */
    int ss_revoked;          /* ... because its agent was revoked */
    int64_t ss_rev;          /* revision the agent has */
    int64_t ss_last_send_us;
    int64_t ss_info_us;      /* last AgentInfo write */
} sync_stream_t;

typedef struct ring_ent {
    int64_t re_from, re_to;
    int64_t re_at;   /* when it was pushed */
    uint8_t *re_msg; /* packed SyncMessage */
    size_t re_len;
} ring_ent_t;

typedef struct sync_ring {
    ring_ent_t r_v[RING_MAX_ENTRIES];
    size_t r_head, r_n; /* oldest at r_head */
    size_t r_bytes;
} sync_ring_t;

/* ---- protobuf wire helpers ---------------------------------------------------- */

static int put_varint(tg_buf_t *b, uint64_t v)
{
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return tg_buf_append(b, tmp, n);
}

static int put_bytes(tg_buf_t *b, int field, const void *p, size_t n)
{
    int rc = put_varint(b, ((uint64_t)field << 3) | 2);
    if (rc == 0)
        rc = put_varint(b, n);
    if (rc == 0 && n > 0)
        rc = tg_buf_append(b, p, n);
    return rc;
}

static int put_int(tg_buf_t *b, int field, int64_t v)
{
    int rc = put_varint(b, (uint64_t)field << 3);
    return rc == 0 ? put_varint(b, (uint64_t)v) : rc;
}

/* Which object a config key holds: its ConfigChange field (Snapshot field
 * is one more), or 0 for keys agents do not get. *rest gets the part after
 * the type prefix. */
static int key_field(const uint8_t *key, size_t len, const char **rest, size_t *restlen)
{
    static const struct {
        const char *p;
        int f;
    } map[] = {{"account/", 2}, {"balance/", 3}, {"project/", 4}, {"key/", 5},    {"channel/", 6},
               {"route/", 7},   {"price/", 8},   {"run/", 9},     {"policy", 10}};
    size_t pl = strlen(TG_CP_K_CONFIG);
    if (len < pl || memcmp(key, TG_CP_K_CONFIG, pl) != 0)
        return 0;
    key += pl;
    len -= pl;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        size_t ml = strlen(map[i].p);
        if (len >= ml && memcmp(key, map[i].p, ml) == 0) {
            if (map[i].f == 10 && len != ml)
                return 0;
            *rest = (const char *)key + ml;
            *restlen = len - ml;
            return map[i].f;
        }
    }
    return 0;
}

/* The object of a deleted key, with only its identifying fields. */
static int deleted_object(int field, const char *rest, size_t rl, tg_buf_t *obj)
{
    const char *slash = memchr(rest, '/', rl);
    size_t a = slash ? (size_t)(slash - rest) : rl;
    switch (field) {
    case 3: /* Balance: account_id, bucket */
        if (put_bytes(obj, 1, rest, a) < 0)
            return -1;
        return slash ? put_bytes(obj, 2, slash + 1, rl - a - 1) : 0;
    case 8: { /* PriceCard: id, version */
        char ver[24] = {0};
        if (put_bytes(obj, 1, rest, a) < 0)
            return -1;
        if (slash && rl - a - 1 < sizeof(ver)) {
            memcpy(ver, slash + 1, rl - a - 1);
            return put_int(obj, 2, strtoll(ver, NULL, 10));
        }
        return 0;
    }
    case 10: /* GatewayPolicy: no id */
        return 0;
    default: /* id (or model, run_id) is field 1 */
        return put_bytes(obj, 1, rest, rl);
    }
}

/* ---- snapshot ------------------------------------------------------------------ */

typedef struct card_ver {
    int64_t cv_ver, cv_eff;
    uint8_t *cv_val;
    size_t cv_len;
} card_ver_t;

typedef struct card_acc {
    char ca_id[256];
    card_ver_t *ca_v;
    size_t ca_n, ca_cap;
} card_acc_t;

/* Emits the versions of the card collected so far into body. */
static int card_flush(card_acc_t *ca, int64_t now_us, tg_buf_t *body, size_t *nobj)
{
    int rc = 0;
    int64_t best = -1;
    for (size_t i = 0; i < ca->ca_n; i++)
        if (ca->ca_v[i].cv_eff <= now_us && (best < 0 || ca->ca_v[i].cv_ver > ca->ca_v[best].cv_ver))
            best = (int64_t)i;
    for (size_t i = 0; i < ca->ca_n; i++) {
        if (rc == 0 && ((int64_t)i == best || ca->ca_v[i].cv_eff > now_us)) {
            rc = put_bytes(body, 9, ca->ca_v[i].cv_val, ca->ca_v[i].cv_len);
            (*nobj)++;
        }
        tg_free(ca->ca_v[i].cv_val);
    }
    ca->ca_n = 0;
    ca->ca_id[0] = '\0';
    return rc;
}

static int card_add(card_acc_t *ca, const char *rest, size_t rl, const tg_store_kv_t *kv,
                    int64_t now_us, tg_buf_t *body, size_t *nobj)
{
    const char *slash = memchr(rest, '/', rl);
    size_t idl = slash ? (size_t)(slash - rest) : rl;
    int rc = 0;
    if (idl >= sizeof(ca->ca_id))
        return 0;
    if (strlen(ca->ca_id) != idl || memcmp(ca->ca_id, rest, idl) != 0) {
        rc = card_flush(ca, now_us, body, nobj);
        memcpy(ca->ca_id, rest, idl);
        ca->ca_id[idl] = '\0';
    }
    if (rc < 0)
        return rc;
    ProtobufCMessage *m = NULL;
    if (tg_rpc_pb_unpack(&tollgate__v1__price_card__descriptor, kv->kv_val, kv->kv_val_len, &m, NULL,
                         0) < 0)
        return 0; /* not a card: skip it rather than fail every snapshot */
    if (ca->ca_n == ca->ca_cap) {
        size_t nc = ca->ca_cap ? ca->ca_cap * 2 : 8;
        card_ver_t *v = tg_realloc(ca->ca_v, nc * sizeof(*v));
        if (v == NULL) {
            tg_rpc_pb_free(m);
            return TG_BUF_ENOMEM;
        }
        ca->ca_v = v;
        ca->ca_cap = nc;
    }
    card_ver_t *cv = &ca->ca_v[ca->ca_n];
    cv->cv_ver = ((Tollgate__V1__PriceCard *)m)->version;
    cv->cv_eff = ((Tollgate__V1__PriceCard *)m)->effective_at_us;
    tg_rpc_pb_free(m);
    cv->cv_val = tg_malloc(kv->kv_val_len ? kv->kv_val_len : 1);
    if (cv->cv_val == NULL)
        return TG_BUF_ENOMEM;
    memcpy(cv->cv_val, kv->kv_val, kv->kv_val_len);
    cv->cv_len = kv->kv_val_len;
    ca->ca_n++;
    return 0;
}

int cp_snapshot_build(tg_store_t *store, int64_t rev, int64_t now_us, tg_buf_t *out, size_t *nkeys,
                      char *err, size_t errlen)
{
    uint8_t end[64], next[TG_STORE_MAX_KEY + 1];
    size_t endlen = tg_store_prefix_end(TG_CP_K_CONFIG, strlen(TG_CP_K_CONFIG), end);
    size_t nextlen = strlen(TG_CP_K_CONFIG), nobj = 0;
    tg_store_range_res_t res;
    tg_buf_t body;
    card_acc_t ca;
    int rc = 0;

    memset(&ca, 0, sizeof(ca));
    memset(&res, 0, sizeof(res));
    tg_buf_init(&body, (size_t)4 << 30);
    memcpy(next, TG_CP_K_CONFIG, nextlen);
    if ((rc = put_int(&body, 1, rev)) < 0 || (rc = put_int(&body, 2, now_us)) < 0)
        goto nomem;
    for (;;) {
        tg_store_range_req_t rq = {.rq_key = next, .rq_key_len = nextlen, .rq_end = end,
                                   .rq_end_len = endlen, .rq_limit = PAGE_KEYS, .rq_revision = rev};
        rc = tg_store_range(store, &rq, &res, err, errlen);
        if (rc < 0)
            goto fail;
        for (size_t i = 0; i < res.rs_n; i++) {
            const tg_store_kv_t *kv = &res.rs_kvs[i];
            const char *rest;
            size_t rl;
            int f = key_field(kv->kv_key, kv->kv_key_len, &rest, &rl);
            if (f == 0)
                continue;
            if (f == 8)
                rc = card_add(&ca, rest, rl, kv, now_us, &body, &nobj);
            else {
                rc = put_bytes(&body, f + 1, kv->kv_val, kv->kv_val_len);
                nobj++;
            }
            if (rc < 0)
                goto nomem;
        }
        if (!res.rs_more || res.rs_n == 0)
            break;
        tg_store_range_next(&res, next, &nextlen);
        tg_store_range_res_free(&res);
    }
    if ((rc = card_flush(&ca, now_us, &body, &nobj)) < 0)
        goto nomem;
    if ((rc = put_bytes(out, 1, body.b_data, body.b_len)) < 0)
        goto nomem;
    if (nkeys != NULL)
        *nkeys = nobj;
    goto fail;
nomem:
    rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "no memory for a snapshot of %zu objects", nobj);
fail:
    card_flush(&ca, now_us, &body, &nobj);
    tg_free(ca.ca_v);
    tg_store_range_res_free(&res);
    tg_buf_free(&body);
    return rc;
}

/* ---- AgentInfo bookkeeping ------------------------------------------------------ */

static void agent_touch(tg_cp_t *cp, const char *agent_id, int connected, int64_t snap_rev)
{
    char key[TG_STORE_MAX_KEY], err[TG_ERRLEN] = "";
    ProtobufCMessage *m = NULL;
    tg_buf_t val;
    tg_buf_init(&val, 4096);
    snprintf(key, sizeof(key), TG_CP_K_AGENT "%s", agent_id);
    if (tg_cp_get_pb(cp, key, &tollgate__v1__agent_info__descriptor, &m, NULL, err, sizeof(err)) == 0 &&
        m != NULL) {
        Tollgate__V1__AgentInfo *ai = (Tollgate__V1__AgentInfo *)m;
        ai->last_seen_at_us = tg_cp_now_us();
        ai->connected = connected != 0;
        if (snap_rev > 0)
            ai->snapshot_revision = snap_rev;
        if (tg_rpc_pb_pack(m, &val, err, sizeof(err)) == 0)
            tg_store_put(cp->cp_store, key, strlen(key), val.b_data, val.b_len, 0, NULL, err,
                         sizeof(err));
    }
    if (err[0])
        TG_LOG(TG_LOG_DEBUG, "cp.sync", "agent %s info not updated: %s", agent_id, err);
    tg_rpc_pb_free(m);
    tg_buf_free(&val);
}

/* ---- stream list (as_mu held) ---------------------------------------------------- */

static sync_stream_t *unlink_call(tg_cp_agent_side_t *as, tg_rpc_call_t *call)
{
    for (sync_stream_t **pp = &as->as_streams; *pp; pp = &(*pp)->ss_next)
        if ((*pp)->ss_call == call) {
            sync_stream_t *s = *pp;
            *pp = s->ss_next;
            atomic_fetch_sub(&as->as_cp->cp_m_sync_streams, 1);
            return s;
        }
    return NULL;
}

static void ring_clear(sync_ring_t *r)
{
    for (size_t i = 0; i < r->r_n; i++)
        tg_free(r->r_v[(r->r_head + i) % RING_MAX_ENTRIES].re_msg);
    r->r_head = r->r_n = r->r_bytes = 0;
}

static void ring_push(sync_ring_t *r, int64_t from, int64_t to, tg_buf_t *msg)
{
    int64_t now = tg_cp_now_us();
    while (r->r_n > 0 && (r->r_n == RING_MAX_ENTRIES || r->r_bytes + msg->b_len > RING_MAX_BYTES ||
                          now - r->r_v[r->r_head].re_at > RING_MAX_AGE_US)) {
        ring_ent_t *e = &r->r_v[r->r_head];
        r->r_bytes -= e->re_len;
        tg_free(e->re_msg);
        r->r_head = (r->r_head + 1) % RING_MAX_ENTRIES;
        r->r_n--;
    }
    ring_ent_t *e = &r->r_v[(r->r_head + r->r_n) % RING_MAX_ENTRIES];
    e->re_msg = (uint8_t *)tg_buf_steal(msg, &e->re_len);
    if (e->re_msg == NULL)
        return;
    /* the buffer grew by doubling: keep only the message */
    uint8_t *fit = e->re_len > 0 ? tg_realloc(e->re_msg, e->re_len) : NULL;
    if (fit != NULL)
        e->re_msg = fit;
    e->re_at = now;
    e->re_from = from;
    e->re_to = to;
    r->r_bytes += e->re_len;
    r->r_n++;
}

/* Sends the ring's updates after s->ss_rev (non-blocking). Returns 0 when
 * s is now at cfg_rev, -1 when it needs a snapshot, TG_RPC_ECANCELLED. */
static int catch_up(tg_cp_agent_side_t *as, sync_stream_t *s)
{
    sync_ring_t *r = as->as_ring;
    size_t i = 0;
    if (s->ss_rev == as->as_cfg_rev)
        return 0;
    while (i < r->r_n && r->r_v[(r->r_head + i) % RING_MAX_ENTRIES].re_from != s->ss_rev)
        i++;
    if (i == r->r_n)
        return -1;
    for (; i < r->r_n; i++) {
        ring_ent_t *e = &r->r_v[(r->r_head + i) % RING_MAX_ENTRIES];
        int rc = tg_rpc_call_send(s->ss_call, e->re_msg, e->re_len, 0);
        if (rc == TG_RPC_ECANCELLED)
            return rc;
        if (rc < 0)
            return -1;
        s->ss_rev = e->re_to;
        s->ss_last_send_us = tg_cp_now_us();
    }
    return 0;
}

static void finish_stream(tg_cp_agent_side_t *as, sync_stream_t *s, int code, const char *msg,
                          int touch)
{
    tg_rpc_call_finish(s->ss_call, code, msg);
    if (touch)
        agent_touch(as->as_cp, s->ss_agent, 0, 0);
    tg_free(s);
}

/* Unlinks call's stream and returns it for the caller to finish; one being
 * snapshotted is marked dead (and revoked) for the resnap thread instead,
 * and NULL returned, as when it is gone already. */
static sync_stream_t *take_call(tg_cp_agent_side_t *as, tg_rpc_call_t *call, int revoked)
{
    pthread_mutex_lock(&as->as_mu);
    sync_stream_t *s = NULL;
    for (sync_stream_t *p = as->as_streams; p; p = p->ss_next)
        if (p->ss_call == call)
            s = p;
    if (s != NULL && s->ss_state == SS_SNAPPING) {
        s->ss_dead = 1;
        s->ss_revoked |= revoked;
        s = NULL;
    } else if (s != NULL) {
        unlink_call(as, call);
    }
    pthread_mutex_unlock(&as->as_mu);
    return s;
}

static void on_cancel(tg_rpc_call_t *call, void *arg)
{
    tg_cp_agent_side_t *as = arg;
    sync_stream_t *s = take_call(as, call, 0);
    if (s != NULL)
        finish_stream(as, s, TG_RPC_CODE_CANCELLED, "client left", 1);
}

/* ---- the handler ---------------------------------------------------------------------- */

int cp_sync_handler(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, void *arg)
{
    tg_cp_agent_side_t *as = arg;
    tg_cp_t *cp = as->as_cp;
    char err[TG_ERRLEN] = "";
    ProtobufCMessage *m = NULL;
    sync_stream_t *s = NULL;

    if (tg_rpc_pb_unpack(&tollgate__v1__sync_request__descriptor, req, req_len, &m, err,
                         sizeof(err)) < 0)
        return tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT, "%s", err);
    const Tollgate__V1__SyncRequest *sr = (const Tollgate__V1__SyncRequest *)m;
    int code = cp_verify_proof(cp, sr->proof, tg_cp_now_us(), err, sizeof(err));
    if (code != TG_RPC_CODE_OK) {
        tg_rpc_pb_free(m);
        return tg_rpc_call_errorf(call, code, "%s", err);
    }
    s = tg_calloc(1, sizeof(*s));
    if (s == NULL) {
        tg_rpc_pb_free(m);
        return tg_rpc_call_errorf(call, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory");
    }
    s->ss_call = call;
    snprintf(s->ss_agent, sizeof(s->ss_agent), "%s", sr->proof->agent_id);
    s->ss_rev = sr->have_revision;
    s->ss_last_send_us = tg_cp_now_us();
    s->ss_info_us = s->ss_last_send_us;
    tg_rpc_pb_free(m);

    int current = 0;
    pthread_mutex_lock(&as->as_mu);
    /* cp_stopping: tg_cp_agent_side_resign closes streams under as_mu after
     * setting it, so no stream is added behind its back */
    if (as->as_stop || atomic_load(&cp->cp_stopping)) {
        pthread_mutex_unlock(&as->as_mu);
        tg_free(s);
        return tg_rpc_call_errorf(call, TG_RPC_CODE_UNAVAILABLE, "control plane shutting down");
    }
    s->ss_state = SS_NEED_SNAP;
    if (s->ss_rev > 0 && as->as_cfg_rev > 0) {
        int rc = catch_up(as, s);
        if (rc == 0) {
            s->ss_state = SS_ACTIVE;
            current = 1;
        }
    }
    int64_t rev = as->as_cfg_rev, have = s->ss_rev;
    char agent[sizeof(s->ss_agent)];
    memcpy(agent, s->ss_agent, sizeof(agent));
    s->ss_next = as->as_streams;
    as->as_streams = s;
    atomic_fetch_add(&cp->cp_m_sync_streams, 1);
    pthread_cond_broadcast(&as->as_cv);
    pthread_mutex_unlock(&as->as_mu);
    tg_rpc_call_on_cancel(call, on_cancel, as);
    /* read after the stream is listed: a revocation committed before this
     * read is seen here, one committed after it reaches end_revoked */
    err[0] = '\0'; /* tg_errf keeps a first message */
    if (cp_agent_revoked(cp, agent, err, sizeof(err)) == TG_RPC_CODE_PERMISSION_DENIED) {
        sync_stream_t *gone = take_call(as, call, 1);
        if (gone != NULL)
            finish_stream(as, gone, TG_RPC_CODE_PERMISSION_DENIED, err, 1);
        TG_LOG(TG_LOG_INFO, "cp.sync", "refused the Sync stream of revoked agent %s", agent);
        return TG_RPC_KEEP;
    }
    if (current) {
        /* the agent is up to date: a heartbeat tells it so at once */
        Tollgate__V1__Heartbeat hb = TOLLGATE__V1__HEARTBEAT__INIT;
        Tollgate__V1__SyncMessage sm = TOLLGATE__V1__SYNC_MESSAGE__INIT;
        hb.revision = rev;
        hb.sent_at_us = tg_cp_now_us();
        sm.message_case = TOLLGATE__V1__SYNC_MESSAGE__MESSAGE_HEARTBEAT;
        sm.heartbeat = &hb;
        tg_rpc_call_send_pb(call, &sm.base, 0);
        agent_touch(cp, agent, 1, rev);
    }
    /* s may be gone already (a failed send finishes it): only locals here */
    TG_LOG(TG_LOG_INFO, "cp.sync", "agent %s opened Sync (have %" PRId64 ", current %" PRId64 ")",
           agent, have, rev);
    return TG_RPC_KEEP;
}

/* ---- resnap thread ------------------------------------------------------------------ */

static void *resnap_main(void *arg)
{
    pthread_setname_np(pthread_self(), "cp-sync-snap");
    tg_cp_agent_side_t *as = arg;
    tg_cp_t *cp = as->as_cp;
    tg_buf_t msg;
    tg_buf_init(&msg, (size_t)4 << 30);
    for (;;) {
        sync_stream_t *s = NULL;
        pthread_mutex_lock(&as->as_mu);
        while (!as->as_stop) {
            for (sync_stream_t *p = as->as_streams; p && s == NULL; p = p->ss_next)
                if (p->ss_state == SS_NEED_SNAP)
                    s = p;
            if (s != NULL || as->as_cfg_rev == 0) {
                if (s != NULL && as->as_cfg_rev > 0)
                    break;
                s = NULL;
            }
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&as->as_cv, &as->as_mu, &ts);
        }
        if (as->as_stop) {
            pthread_mutex_unlock(&as->as_mu);
            break;
        }
        s->ss_state = SS_SNAPPING;
        int64_t rev = as->as_cfg_rev;
        pthread_mutex_unlock(&as->as_mu);

        char err[TG_ERRLEN] = "";
        size_t nobj = 0;
        int64_t t0 = tg_cp_now_us();
        tg_buf_reset(&msg);
        /* the watch may have been down when its agent was revoked (it
         * reopens at the current revision): never send a revoked agent a
         * snapshot, which carries channel credentials */
        int rc = cp_agent_revoked(cp, s->ss_agent, err, sizeof(err));
        if (rc == TG_RPC_CODE_PERMISSION_DENIED) {
            pthread_mutex_lock(&as->as_mu);
            unlink_call(as, s->ss_call);
            pthread_mutex_unlock(&as->as_mu);
            TG_LOG(TG_LOG_INFO, "cp.sync", "ended the Sync stream of revoked agent %s (at its snapshot)",
                   s->ss_agent);
            finish_stream(as, s, TG_RPC_CODE_PERMISSION_DENIED, err, 1);
            continue;
        }
        if (rc == 0)
            rc = cp_snapshot_build(cp->cp_store, rev, t0, &msg, &nobj, err, sizeof(err));
        if (rc == 0)
            rc = tg_rpc_call_send(s->ss_call, msg.b_data, msg.b_len, SNAP_SEND_TIMEOUT_MS);
        else
            TG_LOG(TG_LOG_WARN, "cp.sync", "snapshot at %" PRId64 " failed: %s", rev, err);
        int snapped = rc == 0;
        pthread_mutex_lock(&as->as_mu);
        if (rc == 0) {
            s->ss_rev = rev;
            s->ss_last_send_us = tg_cp_now_us();
            rc = catch_up(as, s);
        }
        int dead = s->ss_dead || rc == TG_RPC_ECANCELLED || rc == TG_RPC_EFULL;
        if (dead) {
            unlink_call(as, s->ss_call);
        } else {
            /* -1: the ring lost its place meanwhile; a store error: retry */
            s->ss_state = rc == 0 ? SS_ACTIVE : SS_NEED_SNAP;
        }
        pthread_mutex_unlock(&as->as_mu);
        if (dead && s->ss_revoked) {
            err[0] = '\0'; /* may hold the snapshot's error; tg_errf keeps a first message */
            if (cp_agent_revoked(cp, s->ss_agent, err, sizeof(err)) != TG_RPC_CODE_PERMISSION_DENIED)
                snprintf(err, sizeof(err), "agent %s was revoked", s->ss_agent);
            finish_stream(as, s, TG_RPC_CODE_PERMISSION_DENIED, err, 1);
            continue;
        }
        if (dead) {
            finish_stream(as, s, TG_RPC_CODE_UNAVAILABLE, "stream too slow or gone", 1);
            continue;
        }
        if (snapped) {
            TG_LOG(TG_LOG_INFO, "cp.sync", "snapshot at %" PRId64 " to agent %s: %zu objects, %zu bytes, %" PRId64 " us",
                   rev, s->ss_agent, nobj, msg.b_len, tg_cp_now_us() - t0);
            agent_touch(cp, s->ss_agent, 1, rev);
        } else if (rc != 0) {
            cp_sleep(as, 200);
        }
    }
    tg_buf_free(&msg);
    return NULL;
}

/* ---- watch thread --------------------------------------------------------------------- */

static int watch_open(tg_cp_agent_side_t *as, tg_store_watch_t **w, char *err, size_t errlen)
{
    int64_t rev = 0;
    int rc = tg_store_revision(as->as_cp->cp_store, &rev, err, errlen);
    if (rc < 0)
        return rc;
    rc = tg_store_watch(as->as_cp->cp_store, TG_CP_K_CONFIG, strlen(TG_CP_K_CONFIG), NULL, 0, 1,
                        rev + 1, w, err, errlen);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&as->as_mu);
    as->as_cfg_rev = rev;
    ring_clear(as->as_ring);
    for (sync_stream_t *s = as->as_streams; s; s = s->ss_next)
        if (s->ss_state == SS_ACTIVE)
            s->ss_state = SS_NEED_SNAP;
    pthread_cond_broadcast(&as->as_cv);
    pthread_mutex_unlock(&as->as_mu);
    return 0;
}

/* ---- balances held back (see the file comment) --------------------------------------- */

typedef struct bal_sent {
    struct bal_sent *bs_next;
    char *bs_key;
    int bs_positive;    /* budget left when last sent */
    int64_t bs_sent_us;
} bal_sent_t;

static bal_sent_t *bal_chain[BAL_CHAINS]; /* the watch thread's alone */

static size_t bal_hash(const void *k, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ ((const uint8_t *)k)[i]) * 1099511628211ull;
    return (size_t)(h & (BAL_CHAINS - 1));
}

/* Whether a Balance event should go to the agents now (and notes it). */
static int balance_news(const tg_store_event_t *ev, int64_t now)
{
    const tg_store_kv_t *kv = &ev->ev_kv;
    if (kv->kv_key_len < strlen(TG_CP_K_BALANCE) || memcmp(kv->kv_key, TG_CP_K_BALANCE, strlen(TG_CP_K_BALANCE)) != 0)
        return 1; /* not a balance */
    if (ev->ev_type == TG_STORE_EV_DELETE)
        return 1;
    Tollgate__V1__Balance *b = tollgate__v1__balance__unpack(NULL, kv->kv_val_len, kv->kv_val);
    if (b == NULL)
        return 1;
    int positive = b->balance_nano + (b->credit_limit_nano > 0 ? b->credit_limit_nano : 0) > 0;
    tollgate__v1__balance__free_unpacked(b, NULL);
    size_t c = bal_hash(kv->kv_key, kv->kv_key_len);
    bal_sent_t *e;
    for (e = bal_chain[c]; e != NULL; e = e->bs_next)
        if (strlen(e->bs_key) == kv->kv_key_len && memcmp(e->bs_key, kv->kv_key, kv->kv_key_len) == 0)
            break;
    if (e == NULL) {
        if ((e = tg_calloc(1, sizeof(*e))) == NULL || (e->bs_key = tg_malloc(kv->kv_key_len + 1)) == NULL) {
            tg_free(e);
            return 1;
        }
        memcpy(e->bs_key, kv->kv_key, kv->kv_key_len);
        e->bs_key[kv->kv_key_len] = '\0';
        e->bs_next = bal_chain[c];
        bal_chain[c] = e;
    } else if (e->bs_positive == positive && now - e->bs_sent_us < BALANCE_REFRESH_US) {
        return 0;
    }
    e->bs_positive = positive;
    e->bs_sent_us = now;
    return 1;
}

static void bal_sent_clear(void)
{
    for (size_t c = 0; c < BAL_CHAINS; c++)
        while (bal_chain[c] != NULL) {
            bal_sent_t *e = bal_chain[c];
            bal_chain[c] = e->bs_next;
            tg_free(e->bs_key);
            tg_free(e);
        }
}

/* Appends one event as a ConfigChange to upd (field 3 of Update). */
static int add_change(tg_buf_t *upd, const tg_store_event_t *ev, tg_buf_t *tmp)
{
    const char *rest;
    size_t rl;
    int f = key_field(ev->ev_kv.kv_key, ev->ev_kv.kv_key_len, &rest, &rl);
    if (f == 0)
        return 0;
    tg_buf_reset(tmp);
    int rc = 0;
    if (ev->ev_type == TG_STORE_EV_DELETE) {
        tg_buf_t obj;
        tg_buf_init(&obj, TG_STORE_MAX_KEY * 2);
        rc = put_int(tmp, 1, 1);
        if (rc == 0)
            rc = deleted_object(f, rest, rl, &obj);
        if (rc == 0)
            rc = put_bytes(tmp, f, obj.b_data, obj.b_len);
        tg_buf_free(&obj);
    } else {
        rc = put_bytes(tmp, f, ev->ev_kv.kv_val, ev->ev_kv.kv_val_len);
    }
    if (rc == 0)
        rc = put_bytes(upd, 3, tmp->b_data, tmp->b_len);
    return rc < 0 ? rc : 1;
}

/* Sends msg to every active stream at `from`; marks the others. */
static void fan_out(tg_cp_agent_side_t *as, int64_t from, int64_t to, tg_buf_t *msg)
{
    sync_stream_t *dead = NULL;
    int64_t now = tg_cp_now_us();
    pthread_mutex_lock(&as->as_mu);
    for (sync_stream_t **pp = &as->as_streams; *pp;) {
        sync_stream_t *s = *pp;
        if (s->ss_state == SS_ACTIVE) {
            int rc = s->ss_rev == from ? tg_rpc_call_send(s->ss_call, msg->b_data, msg->b_len, 0) : -1;
            if (rc == TG_RPC_ECANCELLED) {
                *pp = s->ss_next;
                atomic_fetch_sub(&as->as_cp->cp_m_sync_streams, 1);
                s->ss_next = dead;
                dead = s;
                continue;
            }
            if (rc == 0) {
                s->ss_rev = to;
                s->ss_last_send_us = now;
            } else {
                s->ss_state = SS_NEED_SNAP; /* slow (EFULL) or out of step */
                pthread_cond_broadcast(&as->as_cv);
            }
        }
        pp = &s->ss_next;
    }
    as->as_cfg_rev = to;
    ring_push(as->as_ring, from, to, msg);
    pthread_mutex_unlock(&as->as_mu);
    while (dead) {
        sync_stream_t *s = dead;
        dead = s->ss_next;
        finish_stream(as, s, TG_RPC_CODE_CANCELLED, "client left", 1);
    }
}

/* A put under TG_CP_K_AGENT_REVOKED (RevokeAgent, on any replica): ends
 * that agent's streams here with PERMISSION_DENIED naming the revocation
 * (its reconnects are refused by cp_verify_proof). A stream being
 * snapshotted is marked dead; the resnap thread ends it. */
static void end_revoked(tg_cp_agent_side_t *as, const tg_store_event_t *ev)
{
    size_t pl = strlen(TG_CP_K_AGENT_REVOKED);
    char agent[64], why[TG_ERRLEN];
    ProtobufCMessage *m = NULL;
    if (ev->ev_type != TG_STORE_EV_PUT || ev->ev_kv.kv_key_len <= pl ||
        ev->ev_kv.kv_key_len - pl >= sizeof(agent) || memcmp(ev->ev_kv.kv_key, TG_CP_K_AGENT_REVOKED, pl) != 0)
        return;
    memcpy(agent, (const char *)ev->ev_kv.kv_key + pl, ev->ev_kv.kv_key_len - pl);
    agent[ev->ev_kv.kv_key_len - pl] = '\0';
    if (tg_rpc_pb_unpack(&tollgate__v1__agent_revocation__descriptor, ev->ev_kv.kv_val, ev->ev_kv.kv_val_len, &m,
                         NULL, 0) < 0)
        return;
    cp_revoked_why(agent, (const Tollgate__V1__AgentRevocation *)m, why, sizeof(why));
    tg_rpc_pb_free(m);
    sync_stream_t *gone = NULL;
    pthread_mutex_lock(&as->as_mu);
    for (sync_stream_t **pp = &as->as_streams; *pp;) {
        sync_stream_t *s = *pp;
        if (strcmp(s->ss_agent, agent) != 0) {
            pp = &s->ss_next;
        } else if (s->ss_state == SS_SNAPPING) {
            s->ss_dead = s->ss_revoked = 1;
            pp = &s->ss_next;
        } else {
            *pp = s->ss_next;
            atomic_fetch_sub(&as->as_cp->cp_m_sync_streams, 1);
            s->ss_next = gone;
            gone = s;
        }
    }
    pthread_mutex_unlock(&as->as_mu);
    while (gone) {
        sync_stream_t *s = gone;
        gone = s->ss_next;
        TG_LOG(TG_LOG_INFO, "cp.sync", "ended the Sync stream of revoked agent %s", agent);
        finish_stream(as, s, TG_RPC_CODE_PERMISSION_DENIED, why, 1);
    }
}

/* Heartbeats to idle streams; AgentInfo refresh every INFO_EVERY_US. */
static void heartbeats(tg_cp_agent_side_t *as)
{
    char touch[16][64];
    size_t nt = 0;
    tg_buf_t hb;
    int64_t now = tg_cp_now_us(), period = (int64_t)as->as_cp->cp_heartbeat_ms * 1000;
    sync_stream_t *dead = NULL;
    tg_buf_init(&hb, 256);
    pthread_mutex_lock(&as->as_mu);
    tg_buf_t inner;
    tg_buf_init(&inner, 64);
    put_int(&inner, 1, as->as_cfg_rev);
    put_int(&inner, 2, now);
    put_bytes(&hb, 3, inner.b_data, inner.b_len);
    tg_buf_free(&inner);
    for (sync_stream_t **pp = &as->as_streams; *pp;) {
        sync_stream_t *s = *pp;
        if (s->ss_state == SS_ACTIVE && now - s->ss_last_send_us >= period) {
            int rc = tg_rpc_call_send(s->ss_call, hb.b_data, hb.b_len, 0);
            if (rc == TG_RPC_ECANCELLED) {
                *pp = s->ss_next;
                atomic_fetch_sub(&as->as_cp->cp_m_sync_streams, 1);
                s->ss_next = dead;
                dead = s;
                continue;
            }
            if (rc == 0)
                s->ss_last_send_us = now;
        }
        if (s->ss_state == SS_ACTIVE && now - s->ss_info_us >= INFO_EVERY_US && nt < 16) {
            s->ss_info_us = now;
            snprintf(touch[nt++], sizeof(touch[0]), "%s", s->ss_agent);
        }
        pp = &s->ss_next;
    }
    pthread_mutex_unlock(&as->as_mu);
    tg_buf_free(&hb);
    while (dead) {
        sync_stream_t *s = dead;
        dead = s->ss_next;
        finish_stream(as, s, TG_RPC_CODE_CANCELLED, "client left", 1);
    }
    for (size_t i = 0; i < nt; i++)
        agent_touch(as->as_cp, touch[i], 1, 0);
}

static void *watch_main(void *arg)
{
    pthread_setname_np(pthread_self(), "cp-sync-watch");
    tg_cp_agent_side_t *as = arg;
    tg_store_watch_t *w = NULL;
    tg_store_event_t *carry = NULL;
    tg_buf_t upd, msg, tmp;
    int64_t last_hb = 0;
    tg_buf_init(&upd, (size_t)1 << 30);
    tg_buf_init(&msg, (size_t)1 << 30);
    tg_buf_init(&tmp, TG_STORE_MAX_VALUE * 2);
    while (!as->as_stop) {
        char err[TG_ERRLEN] = "";
        if (w == NULL && watch_open(as, &w, err, sizeof(err)) < 0) {
            TG_LOG(TG_LOG_WARN, "cp.sync", "config watch: %s", err);
            w = NULL;
            cp_sleep(as, 500);
            continue;
        }
        int64_t now = tg_cp_now_us();
        if (now - last_hb >= 100000) {
            heartbeats(as);
            last_hb = now;
        }
        tg_store_event_t *ev = carry;
        carry = NULL;
        int rc = ev ? 0 : tg_store_watch_next(w, 100, &ev, err, sizeof(err));
        if (rc == TG_STORE_EAGAIN)
            continue;
        if (rc < 0) {
            TG_LOG(TG_LOG_WARN, "cp.sync", "config watch restarts (%s): every stream gets a snapshot", err);
            tg_store_watch_cancel(w);
            w = NULL;
            if (rc != TG_STORE_ECOMPACTED)
                cp_sleep(as, 200);
            continue;
        }
        /* one Update per revision: every event of ev's revision */
        int64_t rev = ev->ev_kv.kv_mod_rev, from;
        pthread_mutex_lock(&as->as_mu);
        from = as->as_cfg_rev;
        pthread_mutex_unlock(&as->as_mu);
        tg_buf_reset(&upd);
        put_int(&upd, 1, from);
        put_int(&upd, 2, rev);
        int nch = 0, bad = 0;
        while (ev != NULL) {
            end_revoked(as, ev);
            int a = balance_news(ev, now) ? add_change(&upd, ev, &tmp) : 0;
            bad |= a < 0;
            nch += a > 0;
            tg_store_event_free(ev);
            ev = NULL;
            if (tg_store_watch_next(w, 0, &ev, err, sizeof(err)) != 0)
                break;
            if (ev->ev_kv.kv_mod_rev != rev) {
                carry = ev;
                break;
            }
        }
        if (bad) {
            TG_LOG(TG_LOG_ERROR, "cp.sync", "update at %" PRId64 " too large: streams resnapshot", rev);
            tg_store_watch_cancel(w);
            w = NULL;
            tg_store_event_free(carry);
            carry = NULL;
            continue;
        }
        if (nch == 0)
            continue; /* nothing for the agents (balances held back): the chain goes on from `from` */
        tg_buf_reset(&msg);
        put_bytes(&msg, 2, upd.b_data, upd.b_len);
        fan_out(as, from, rev, &msg);
    }
    tg_store_event_free(carry);
    tg_store_watch_cancel(w);
    bal_sent_clear();
    tg_buf_free(&upd);
    tg_buf_free(&msg);
    tg_buf_free(&tmp);
    return NULL;
}

/* ---- start / stop ----------------------------------------------------------------------- */

int cp_sync_start(tg_cp_agent_side_t *as, char *err, size_t errlen)
{
    as->as_ring = tg_calloc(1, sizeof(*as->as_ring));
    if (as->as_ring == NULL)
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "no memory for the sync ring");
    if (pthread_create(&as->as_watch_thr, NULL, watch_main, as) != 0)
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "cannot start the config watch thread");
    as->as_watch_started = 1;
    if (pthread_create(&as->as_resnap_thr, NULL, resnap_main, as) != 0)
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "cannot start the snapshot thread");
    as->as_resnap_started = 1;
    return 0;
}

void cp_sync_stop(tg_cp_agent_side_t *as)
{
    if (as->as_watch_started)
        pthread_join(as->as_watch_thr, NULL);
    if (as->as_resnap_started)
        pthread_join(as->as_resnap_thr, NULL);
    as->as_watch_started = as->as_resnap_started = 0;
    cp_sync_close_streams(as);
    if (as->as_ring != NULL) {
        ring_clear(as->as_ring);
        tg_free(as->as_ring);
        as->as_ring = NULL;
    }
}

void cp_sync_close_streams(tg_cp_agent_side_t *as)
{
    sync_stream_t *all = NULL;
    pthread_mutex_lock(&as->as_mu);
    /* a stream being snapshotted belongs to the resnap thread until it is
     * sent: mark it, and that thread finishes it (as on_cancel does) */
    for (sync_stream_t **pp = &as->as_streams; *pp;) {
        sync_stream_t *s = *pp;
        if (s->ss_state == SS_SNAPPING) {
            s->ss_dead = 1;
            pp = &s->ss_next;
            continue;
        }
        *pp = s->ss_next;
        s->ss_next = all;
        all = s;
        atomic_fetch_sub(&as->as_cp->cp_m_sync_streams, 1);
    }
    pthread_mutex_unlock(&as->as_mu);
    while (all) {
        sync_stream_t *s = all;
        all = s->ss_next;
        finish_stream(as, s, TG_RPC_CODE_UNAVAILABLE, "control plane shutting down", 0);
    }
}
