/* forward.c: any replica settles for any agent. Only the leader commits
 * settlements (leader.c), so a follower that receives ReportUsage passes the
 * request bytes to the leader over gRPC and hands the leader's answer back.
 * The batch is signed by the agent and verified by the leader, so the
 * follower adds nothing to trust; exactly-once stays the leader's marker and
 * record-id checks, whatever path a resend takes.
 *
 * Why forwarding and not a redirect the agent follows (docs/ARCHITECTURE.md,
 * "Any replica serves any agent"): the agent then needs to reach only one
 * replica (a load balancer or a DNS name is enough), replicas' addresses and
 * certificates stay inside the control plane's network, and the agent has one
 * failover rule (its --cp list) instead of two.
 *
 * The leader's address comes from the store: every replica publishes its
 * advertised address under TG_CP_K_REPLICA<node id> on its lease, and the
 * leader thread resolves the holder of TG_CP_K_LEADER (as_leader_addr). One
 * channel to the current leader is kept, reference-counted so a leader change
 * never closes a channel a call is still using. */
#include <stdio.h>
#include <string.h>

#include "base/tg_log.h"
#include "controlplane/agentside.h"

#define FWD_MD "tg-forwarded" /* set on a forwarded call: never forwarded again */
#define FWD_MAX_MS 10000

struct cp_fwd_ch {
    int fc_refs; /* (as_mu) holders: as_fwd itself and calls in flight */
    tg_rpc_channel_t *fc_ch;
    char fc_addr[256];
};

static void fwd_unref(tg_cp_agent_side_t *as, struct cp_fwd_ch *f)
{
    pthread_mutex_lock(&as->as_mu);
    int last = --f->fc_refs == 0;
    pthread_mutex_unlock(&as->as_mu);
    if (last) {
        tg_rpc_channel_destroy(f->fc_ch);
        tg_free(f);
    }
}

/* as_mu held: the channel to addr, referenced for the caller; NULL on no
 * memory or a channel that cannot be made (err set). */
static struct cp_fwd_ch *fwd_get(tg_cp_agent_side_t *as, const char *addr, char *err, size_t errlen)
{
    struct cp_fwd_ch *f = as->as_fwd;
    if (f != NULL && strcmp(f->fc_addr, addr) == 0) {
        f->fc_refs++;
        return f;
    }
    struct cp_fwd_ch *nf = tg_calloc(1, sizeof(*nf));
    if (nf == NULL) {
        tg_errf(err, errlen, TG_RPC_ENOMEM, "no memory for a channel to the leader");
        return NULL;
    }
    tg_rpc_channel_opts_t o = as->as_cp->cp_peer_tls;
    o.co_reconnect_min_ms = 100; /* a leader that restarts is found again at once */
    o.co_reconnect_max_ms = 1000;
    o.co_keepalive_ms = 2000; /* a frozen leader fails calls in ~4 s, not at the deadline */
    o.co_max_message_bytes = 64 << 20;
    nf->fc_ch = tg_rpc_channel_create(addr, &o, err, errlen);
    if (nf->fc_ch == NULL) {
        tg_free(nf);
        return NULL;
    }
    snprintf(nf->fc_addr, sizeof(nf->fc_addr), "%s", addr);
    nf->fc_refs = 2; /* as_fwd and the caller */
    if (f != NULL && --f->fc_refs == 0) {
        /* nobody uses the old one: closing it is quick (no call pending) */
        tg_rpc_channel_destroy(f->fc_ch);
        tg_free(f);
    }
    as->as_fwd = nf;
    TG_LOG(TG_LOG_INFO, "cp.forward", "forwarding usage reports to the leader %s at %s",
           as->as_leader_name, addr);
    return nf;
}

int cp_forward_report(tg_cp_t *cp, tg_rpc_call_t *call, const uint8_t *req, size_t req_len,
                      tg_buf_t *reply, char *err, size_t errlen)
{
    tg_cp_agent_side_t *as = cp->cp_agent;
    const char *me = cp->cp_node_id ? cp->cp_node_id : "cp";
    char leader[256], addr[256];
    if (as == NULL || tg_rpc_call_metadata(call, FWD_MD, NULL) != NULL)
        return CP_NOT_FORWARDED;
    pthread_mutex_lock(&as->as_mu);
    int ready = as->as_settle_ready;
    snprintf(leader, sizeof(leader), "%s", as->as_leader_name);
    snprintf(addr, sizeof(addr), "%s", as->as_leader_addr);
    struct cp_fwd_ch *f = NULL;
    if (!ready && leader[0] && strcmp(leader, me) != 0 && addr[0] && !as->as_stop)
        f = fwd_get(as, addr, err, errlen);
    pthread_mutex_unlock(&as->as_mu);
    if (f == NULL)
        return err[0] ? TG_RPC_CODE_UNAVAILABLE : CP_NOT_FORWARDED;

    int64_t left = tg_rpc_call_deadline_ms(call);
    int timeout = left > FWD_MAX_MS + 250 ? FWD_MAX_MS : (int)(left - 250);
    if (timeout < 500)
        timeout = 500;
    tg_rpc_md_t md = {FWD_MD, me, 0};
    tg_rpc_result_t res;
    char cerr[TG_ERRLEN] = "";
    atomic_fetch_add(&cp->cp_m_forwarded, 1);
    int rc = tg_rpc_unary(f->fc_ch, "/tollgate.v1.AgentService/ReportUsage", &md, 1, req, req_len,
                          timeout, &res, cerr, sizeof(cerr));
    int code = TG_RPC_CODE_OK;
    if (rc == 0) {
        if (tg_buf_append(reply, res.rs_data, res.rs_len) != 0)
            code = tg_errf(err, errlen, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory for the leader's answer");
    } else if (res.rs_code == TG_RPC_CODE_OK || res.rs_code == TG_RPC_CODE_UNAVAILABLE ||
               res.rs_code == TG_RPC_CODE_DEADLINE_EXCEEDED || res.rs_code == TG_RPC_CODE_CANCELLED) {
        /* the leader is gone, frozen or stepping down: the agent resends
         * (here or elsewhere) once a leader is elected */
        atomic_fetch_add(&cp->cp_m_forward_fail, 1);
        code = tg_errf(err, errlen, TG_RPC_CODE_UNAVAILABLE,
                       "not the settling leader, and the leader %s at %s did not answer: %s", leader, addr,
                       res.rs_message && res.rs_message[0] ? res.rs_message : cerr);
    } else {
        code = tg_errf(err, errlen, res.rs_code, "%s", res.rs_message ? res.rs_message : "");
    }
    tg_rpc_result_free(&res);
    fwd_unref(as, f);
    return code;
}

void cp_forward_free(tg_cp_agent_side_t *as)
{
    pthread_mutex_lock(&as->as_mu);
    struct cp_fwd_ch *f = as->as_fwd;
    as->as_fwd = NULL;
    pthread_mutex_unlock(&as->as_mu);
    if (f != NULL)
        fwd_unref(as, f);
}
