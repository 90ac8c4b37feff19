/* agentsvc.c: AgentService on the control plane (Enroll, Sync, ReportUsage,
 * Lease), agent identity proofs, and the agent side's start and stop.
 *
 * Identity: an agent enrolls once with the operator's enrollment token and
 * its Ed25519 public key and gets an id (AgentInfo under TG_CP_K_AGENT). From
 * then on it proves who it is with signatures only: usage batches are signed
 * whole (a resent batch is deduplicated, so replaying one charges nothing),
 * and Sync/Lease carry an AgentProof, a signature over "tollgate-agent-v2" ||
 * agent_id || timestamp_us (8 bytes big-endian) || nonce. The nonce is one
 * this replica issued (Challenge, or the previous LeaseResponse) and the
 * proof consumes it (nonce.c), so a captured proof opens nothing, even
 * within its timestamp's +-5 minutes. Why a per-replica nonce and not a
 * counter in the store: docs/ARCHITECTURE.md, "Agent proofs". For one
 * release, --legacy-agent-proofs (default on) still accepts an old agent's
 * proof without a nonce ("tollgate-agent-v1" || agent_id || timestamp_us,
 * +-5 minutes), logged once per agent and counted, so control planes can be
 * upgraded before their agents.
 *
 * Revocation (AdminService.RevokeAgent, admin.c) is a key of its own beside
 * AgentInfo (TG_CP_K_AGENT_REVOKED): a revoked agent's proofs and batches
 * verify and are then refused with PERMISSION_DENIED naming the revocation
 * (cp_agent_revoked), and every replica's Sync watch ends its stream.
 */
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "base/tg_log.h"
#include "controlplane/agentside.h"
#include "tollgate/v1/admin.pb-c.h"
#include "tollgate/v1/agent.pb-c.h"

#define PROOF_WINDOW_US (5LL * 60 * 1000000)
#define PROOF_DOMAIN "tollgate-agent-v2"
#define PROOF_DOMAIN_V1 "tollgate-agent-v1" /* agents older than nonces (--legacy-agent-proofs) */

/* ---- proofs ---------------------------------------------------------------------- */

int cp_proof_message(const char *agent_id, int64_t ts_us, const uint8_t *nonce, size_t nonce_len,
                     tg_buf_t *out)
{
    uint8_t be[8];
    for (int i = 0; i < 8; i++)
        be[i] = (uint8_t)((uint64_t)ts_us >> (56 - 8 * i));
    int rc = nonce_len > 0 ? tg_buf_append(out, PROOF_DOMAIN, sizeof(PROOF_DOMAIN) - 1)
                           : tg_buf_append(out, PROOF_DOMAIN_V1, sizeof(PROOF_DOMAIN_V1) - 1);
    if (rc == 0)
        rc = tg_buf_append(out, agent_id, strlen(agent_id));
    if (rc == 0)
        rc = tg_buf_append(out, be, sizeof(be));
    if (rc == 0 && nonce_len > 0)
        rc = tg_buf_append(out, nonce, nonce_len);
    return rc;
}

int cp_verify_raw(const uint8_t *pub, size_t publen, const void *data, size_t n, const uint8_t *sig,
                  size_t siglen)
{
    tg_crypto_key_t *k = NULL;
    if (pub == NULL || publen != TG_ED25519_PUBLIC_LEN || sig == NULL)
        return TG_CRYPTO_EBADSIG;
    if (tg_crypto_key_from_public(pub, &k, NULL, 0) != 0)
        return TG_CRYPTO_EFORMAT;
    int rc = tg_crypto_verify(k, data, n, sig, siglen);
    tg_crypto_key_free(k);
    return rc;
}

int cp_verify_proof(tg_cp_t *cp, const Tollgate__V1__AgentProof *proof, int64_t now_us, char *err,
                    size_t errlen)
{
    ProtobufCMessage *m = NULL;
    char key[TG_STORE_MAX_KEY];
    tg_buf_t msg;
    int code = TG_RPC_CODE_OK;

    tg_buf_init(&msg, 1024);
    if (proof == NULL || proof->agent_id[0] == '\0')
        return tg_errf(err, errlen, TG_RPC_CODE_UNAUTHENTICATED, "proof: missing agent id");
    if (proof->timestamp_us < now_us - PROOF_WINDOW_US || proof->timestamp_us > now_us + PROOF_WINDOW_US)
        return tg_errf(err, errlen, TG_RPC_CODE_UNAUTHENTICATED,
                       "proof: timestamp %" PRId64 " is more than 5 minutes from the control "
                       "plane's clock (%" PRId64 ")",
                       proof->timestamp_us, now_us);
    if (snprintf(key, sizeof(key), TG_CP_K_AGENT "%s", proof->agent_id) >= (int)sizeof(key))
        return tg_errf(err, errlen, TG_RPC_CODE_UNAUTHENTICATED, "proof: agent id too long");
    if (proof->nonce.len == 0 && !cp->cp_legacy_proofs)
        return tg_errf(err, errlen, TG_RPC_CODE_UNAUTHENTICATED,
                       "proof: nonce required (the agent must sign a nonce from Challenge: upgrade the agent; "
                       "or run the control plane with --legacy-agent-proofs=on until it is)");
    if (tg_cp_get_pb(cp, key, &tollgate__v1__agent_info__descriptor, &m, NULL, err, errlen) < 0)
        return TG_RPC_CODE_UNAVAILABLE;
    if (m == NULL)
        return tg_errf(err, errlen, TG_RPC_CODE_UNAUTHENTICATED, "unknown agent %s", proof->agent_id);
    const Tollgate__V1__AgentInfo *ai = (const Tollgate__V1__AgentInfo *)m;
    if (cp_proof_message(proof->agent_id, proof->timestamp_us, proof->nonce.data, proof->nonce.len, &msg) != 0) {
        code = tg_errf(err, errlen, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory");
        goto fail;
    }
    if (cp_verify_raw(ai->public_key.data, ai->public_key.len, msg.b_data, msg.b_len,
                      proof->signature.data, proof->signature.len) != 0)
        code = tg_errf(err, errlen, TG_RPC_CODE_UNAUTHENTICATED, "bad proof signature for agent %s",
                       proof->agent_id);
    else if (proof->nonce.len == 0) {
        /* an agent older than nonces, accepted for one release: its proof
         * can be replayed within the window, as before nonces */
        atomic_fetch_add(&cp->cp_m_legacy_proofs, 1);
        if (cp->cp_agent != NULL && cp_nonce_legacy_first(cp->cp_agent, proof->agent_id))
            TG_LOG(TG_LOG_WARN, "cp",
                   "agent %s signs the old proof without a nonce (accepted by --legacy-agent-proofs): upgrade it; "
                   "tollgate_cp_legacy_proofs_total counts such proofs",
                   proof->agent_id);
    }
    /* consumed only by a proof that verified: nobody can burn another
     * agent's nonce, and of two uses of one proof only the first passes */
    else if (cp->cp_agent == NULL ||
             cp_nonce_consume(cp->cp_agent, proof->agent_id, proof->nonce.data, proof->nonce.len, now_us) != 0)
        code = tg_errf(err, errlen, TG_RPC_CODE_UNAUTHENTICATED,
                       "proof: nonce already used, expired or not issued by this replica (a replayed proof is "
                       "refused): ask Challenge for a new one");
    /* a revoked agent proves who it is, and is refused for it */
    if (code == TG_RPC_CODE_OK)
        code = cp_agent_revoked(cp, proof->agent_id, err, errlen);
fail:
    tg_buf_free(&msg);
    tg_rpc_pb_free(m);
    return code;
}

/* ---- revocation --------------------------------------------------------------------- */

void cp_revoked_why(const char *agent_id, const Tollgate__V1__AgentRevocation *r, char *out, size_t outlen)
{
    char when[32] = "?";
    time_t t = (time_t)(r->revoked_at_us / 1000000);
    struct tm tm;
    if (gmtime_r(&t, &tm) != NULL)
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(out, outlen,
             "agent %s was revoked at %s by %s%s%s: its Sync, Lease and ReportUsage calls are refused "
             "(enroll a new agent with a new key to serve from this host again)",
             agent_id, when, r->revoked_by[0] ? r->revoked_by : "an admin", r->reason[0] ? ": " : "", r->reason);
}

int cp_agent_revoked(tg_cp_t *cp, const char *agent_id, char *err, size_t errlen)
{
    char key[TG_STORE_MAX_KEY], why[TG_ERRLEN];
    ProtobufCMessage *m = NULL;
    if (snprintf(key, sizeof(key), TG_CP_K_AGENT_REVOKED "%s", agent_id) >= (int)sizeof(key))
        return tg_errf(err, errlen, TG_RPC_CODE_INVALID_ARGUMENT, "agent id too long");
    if (tg_cp_get_pb(cp, key, &tollgate__v1__agent_revocation__descriptor, &m, NULL, err, errlen) < 0)
        return TG_RPC_CODE_UNAVAILABLE;
    if (m == NULL)
        return TG_RPC_CODE_OK;
    cp_revoked_why(agent_id, (const Tollgate__V1__AgentRevocation *)m, why, sizeof(why));
    tg_rpc_pb_free(m);
    return tg_errf(err, errlen, TG_RPC_CODE_PERMISSION_DENIED, "%s", why);
}

/* ---- handlers --------------------------------------------------------------------- */

static int token_ok(const char *want, const char *got)
{
    uint8_t a[32], b[32];
    if (want == NULL || want[0] == '\0' || got == NULL)
        return 0;
    /* hash both so the comparison takes the same time whatever the lengths */
    tg_crypto_sha256(want, strlen(want), a);
    tg_crypto_sha256(got, strlen(got), b);
    return tg_crypto_equal(a, b, sizeof(a));
}

static int enroll(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, tg_buf_t *reply, void *arg)
{
    tg_cp_t *cp = arg;
    char err[TG_ERRLEN] = "", id[64], key[TG_STORE_MAX_KEY];
    ProtobufCMessage *m = NULL;
    tg_crypto_key_t *k = NULL;
    tg_buf_t val;
    int code = TG_RPC_CODE_OK;

    tg_buf_init(&val, 4096);
    if (tg_rpc_pb_unpack(&tollgate__v1__enroll_request__descriptor, req, req_len, &m, err,
                         sizeof(err)) < 0) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT, "%s", err);
        goto fail;
    }
    const Tollgate__V1__EnrollRequest *er = (const Tollgate__V1__EnrollRequest *)m;
    if (!token_ok(cp->cp_enroll_token, er->enrollment_token)) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_UNAUTHENTICATED, "bad enrollment token");
        goto fail;
    }
    size_t nl = strlen(er->name);
    if (nl == 0 || nl > 128) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT, "name: must be 1..128 bytes");
        goto fail;
    }
    if (strlen(er->region) > 128 || strlen(er->version) > 128) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT,
                                  "region, version: at most 128 bytes");
        goto fail;
    }
    if (er->public_key.len != TG_ED25519_PUBLIC_LEN ||
        tg_crypto_key_from_public(er->public_key.data, &k, NULL, 0) != 0) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT,
                                  "public_key: must be a 32-byte Ed25519 public key (got %zu bytes)",
                                  er->public_key.len);
        goto fail;
    }
    /* a revoked agent's key (RevokeAgent indexes it) enrolls no more */
    uint8_t kh[32];
    char hex[65];
    tg_store_kv_t *rk = NULL;
    tg_crypto_sha256(er->public_key.data, er->public_key.len, kh);
    tg_crypto_hex(kh, sizeof(kh), hex);
    snprintf(key, sizeof(key), TG_CP_K_REVOKED_KEY "%s", hex);
    if (tg_store_get(cp->cp_store, key, strlen(key), &rk, NULL, err, sizeof(err)) < 0) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_UNAVAILABLE, "checking the key failed: %s", err);
        goto fail;
    }
    if (rk != NULL) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_PERMISSION_DENIED,
                                  "public_key: the key of revoked agent %.*s cannot enroll again: generate a new "
                                  "key (empty the agent's data dir's agent_id and agent_key.pem) and enroll that",
                                  (int)rk->kv_val_len, (const char *)rk->kv_val);
        tg_store_kv_free(rk);
        goto fail;
    }
    if (tg_crypto_new_id("agt_", id, sizeof(id)) != 0) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INTERNAL, "no entropy for an agent id");
        goto fail;
    }
    Tollgate__V1__AgentInfo ai = TOLLGATE__V1__AGENT_INFO__INIT;
    ai.agent_id = id;
    ai.name = er->name;
    ai.region = er->region;
    ai.public_key = er->public_key;
    ai.version = er->version;
    ai.enrolled_at_us = tg_cp_now_us();
    snprintf(key, sizeof(key), TG_CP_K_AGENT "%s", id);
    if (tg_rpc_pb_pack(&ai.base, &val, err, sizeof(err)) < 0 ||
        tg_store_put(cp->cp_store, key, strlen(key), val.b_data, val.b_len, 0, NULL, err,
                     sizeof(err)) < 0) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_UNAVAILABLE, "storing the agent failed: %s", err);
        goto fail;
    }
    Tollgate__V1__EnrollResponse resp = TOLLGATE__V1__ENROLL_RESPONSE__INIT;
    resp.agent_id = id;
    resp.enrolled_at_us = ai.enrolled_at_us;
    if (tg_rpc_pb_pack(&resp.base, reply, err, sizeof(err)) < 0) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INTERNAL, "%s", err);
        goto fail;
    }
    TG_LOG(TG_LOG_INFO, "cp.agent", "enrolled agent %s (%s, region %s)", id, er->name, er->region);
fail:
    tg_crypto_key_free(k);
    tg_buf_free(&val);
    tg_rpc_pb_free(m);
    return code;
}

static int report_usage(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, tg_buf_t *reply,
                        void *arg)
{
    char err[TG_ERRLEN] = "";
    /* a follower hands the batch to the leader (forward.c) */
    int code = cp_forward_report(arg, call, req, req_len, reply, err, sizeof(err));
    if (code == CP_NOT_FORWARDED)
        code = cp_report_usage(arg, req, req_len, reply, err, sizeof(err));
    /* this replica is up but no leader settles yet (an election, or the
     * leader unreachable from here): the trailer tells the agent to wait
     * here rather than move on, since every replica forwards to the same
     * leader (leader_gate and forward.c both word it so) */
    if (code == TG_RPC_CODE_UNAVAILABLE && strncmp(err, "not the settling leader", 23) == 0)
        tg_rpc_call_add_trailer(call, "tg-no-leader", "1");
    if (code != TG_RPC_CODE_OK)
        return tg_rpc_call_errorf(call, code, "%s", err[0] ? err : tg_rpc_code_name(code));
    return code;
}

static int lease(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, tg_buf_t *reply, void *arg)
{
    char err[TG_ERRLEN] = "";
    ProtobufCMessage *m = NULL;
    if (tg_rpc_pb_unpack(&tollgate__v1__lease_request__descriptor, req, req_len, &m, err,
                         sizeof(err)) < 0)
        return tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT, "%s", err);
    const Tollgate__V1__LeaseRequest *q = (const Tollgate__V1__LeaseRequest *)m;
    int code = q->proof == NULL ? tg_errf(err, sizeof(err), TG_RPC_CODE_UNAUTHENTICATED, "proof: required")
                                : cp_verify_proof(arg, q->proof, tg_cp_now_us(), err, sizeof(err));
    if (code == TG_RPC_CODE_OK)
        code = cp_lease(arg, q, reply, err, sizeof(err));
    tg_rpc_pb_free(m);
    if (code != TG_RPC_CODE_OK)
        return tg_rpc_call_errorf(call, code, "%s", err[0] ? err : tg_rpc_code_name(code));
    return code;
}

static int challenge(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, tg_buf_t *reply, void *arg)
{
    tg_cp_t *cp = arg;
    char err[TG_ERRLEN] = "";
    ProtobufCMessage *m = NULL;
    uint8_t nonce[CP_NONCE_LEN];
    int code = TG_RPC_CODE_OK;
    if (tg_rpc_pb_unpack(&tollgate__v1__challenge_request__descriptor, req, req_len, &m, err, sizeof(err)) < 0)
        return tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT, "%s", err);
    const Tollgate__V1__ChallengeRequest *q = (const Tollgate__V1__ChallengeRequest *)m;
    Tollgate__V1__ChallengeResponse resp = TOLLGATE__V1__CHALLENGE_RESPONSE__INIT;
    if (q->agent_id[0] == '\0' || strlen(q->agent_id) > 128) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT, "agent_id: required, at most 128 bytes");
        goto fail;
    }
    if (cp_nonce_issue(cp->cp_agent, q->agent_id, tg_cp_now_us(), nonce, &resp.expires_at_us) != 0) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INTERNAL, "no entropy for a nonce");
        goto fail;
    }
    resp.nonce.data = nonce;
    resp.nonce.len = sizeof(nonce);
    if (tg_rpc_pb_pack(&resp.base, reply, err, sizeof(err)) < 0)
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INTERNAL, "%s", err);
fail:
    tg_rpc_pb_free(m);
    return code;
}

int tg_cp_agentsvc_register(tg_cp_t *cp, char *err, size_t errlen)
{
    tg_cp_agent_side_t *as = cp->cp_agent;
    if (as == NULL) {
        as = tg_calloc(1, sizeof(*as));
        if (as == NULL)
            return tg_errf(err, errlen, TG_RPC_ENOMEM, "no memory for the agent side");
        as->as_cp = cp;
        pthread_mutex_init(&as->as_mu, NULL);
        pthread_cond_init(&as->as_cv, NULL);
        pthread_mutex_init(&as->as_settle_mu, NULL);
        pthread_mutex_init(&as->as_gmu, NULL);
        pthread_cond_init(&as->as_gcv, NULL);
        as->as_settled_seq_modrev = -1;
        if (cp_nonces_init(as) != 0) {
            tg_free(as);
            return tg_errf(err, errlen, TG_RPC_ENOMEM, "no memory for the nonce table");
        }
        cp->cp_agent = as;
    }
    int rc = tg_rpc_server_add_unary(cp->cp_rpc, "/tollgate.v1.AgentService/Enroll", enroll, cp, err,
                                     errlen);
    if (rc == 0)
        rc = tg_rpc_server_add_stream(cp->cp_rpc, "/tollgate.v1.AgentService/Sync", cp_sync_handler,
                                      as, err, errlen);
    if (rc == 0)
        rc = tg_rpc_server_add_unary(cp->cp_rpc, "/tollgate.v1.AgentService/ReportUsage",
                                     report_usage, cp, err, errlen);
    if (rc == 0)
        rc = tg_rpc_server_add_unary(cp->cp_rpc, "/tollgate.v1.AgentService/Lease", lease, cp, err,
                                     errlen);
    if (rc == 0)
        rc = tg_rpc_server_add_unary(cp->cp_rpc, "/tollgate.v1.AgentService/Challenge", challenge, cp, err,
                                     errlen);
    if (rc == 0)
        rc = cp_catchup_register(cp, err, errlen); /* ReplicaService: peers' ledger copies */
    return rc;
}

/* ---- lifecycle -------------------------------------------------------------------- */

int cp_sleep(tg_cp_agent_side_t *as, int ms)
{
    return cp_wait(as, ms, 0);
}

int cp_wait(tg_cp_agent_side_t *as, int ms, int or_resign)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&as->as_mu);
    if (!as->as_stop && !(or_resign && as->as_resign))
        pthread_cond_timedwait(&as->as_cv, &as->as_mu, &ts);
    int stop = as->as_stop || (or_resign && as->as_resign);
    pthread_mutex_unlock(&as->as_mu);
    return stop;
}

/* The heap's free pages go back to the kernel once a minute. With the trim
 * threshold above (256 MiB) glibc never gives them back by itself, and in
 * the 30-minute soak the control plane's anonymous RSS crept ~10 kB a
 * minute while the memory in use stayed flat: the allocator placing chunks
 * over ever more of the free part of its one arena, each page touched once
 * staying resident (measured with malloc_stats and heaptrack:
 * docs/PERFORMANCE.md, "Soak"). malloc_trim also releases free pages
 * inside the heap (madvise), not only its top; once a minute its cost (a
 * walk of the free lists under the arena lock, and page faults when the
 * pages are used again) is noise, unlike the mmap per batch the
 * thresholds avoid. */
int cp_heap_trim(void)
{
    static int64_t last_us;
    int64_t now = tg_cp_now_us();
    if (now - last_us < 60LL * 1000000)
        return 0;
    last_us = now;
    malloc_trim(0);
    return 1;
}

int tg_cp_agent_side_start(tg_cp_t *cp, char *err, size_t errlen)
{
    tg_cp_agent_side_t *as = cp->cp_agent;
    if (as == NULL)
        return tg_errf(err, errlen, TG_RPC_ESTATE, "tg_cp_agentsvc_register was not called");
    if (cp->cp_heartbeat_ms <= 0)
        cp->cp_heartbeat_ms = 5000;
    /* Settlement moves buffers of a few hundred KB per batch (the batch,
     * its settled-log value, watch events). Above glibc's default mmap
     * threshold each one is a fresh mmap, page faults and an munmap: keep
     * them in the heap instead (measured: see docs/PERFORMANCE.md). */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    /* One malloc arena: a batch's buffers are allocated on one gRPC thread
     * and freed on another (or by the tailer), and with an arena per
     * thread their pages kept being faulted in afresh (perf: ~10% of the
     * control plane's samples in page faults under memmove); measured
     * 100.6-110.0k -> 106.5-117.3k records/s (docs/PERFORMANCE.md). */
    mallopt(M_ARENA_MAX, 1);
    if (cp->cp_settled_retention_s <= 0)
        cp->cp_settled_retention_s = 3600;
    if (cp->cp_lease_ttl_ms <= 0)
        cp->cp_lease_ttl_ms = 30000;
    int rc = cp_tail_start(as, err, errlen);
    if (rc == 0)
        rc = cp_sync_start(as, err, errlen);
    if (rc == 0)
        rc = cp_leader_start(as, err, errlen);
    if (rc == 0)
        rc = cp_alerts_start(as, err, errlen);
    if (rc < 0)
        tg_cp_agent_side_stop(cp);
    return rc;
}

void tg_cp_agent_side_stop(tg_cp_t *cp)
{
    tg_cp_agent_side_t *as = cp->cp_agent;
    if (as == NULL)
        return;
    pthread_mutex_lock(&as->as_mu);
    as->as_stop = 1;
    pthread_cond_broadcast(&as->as_cv);
    pthread_mutex_unlock(&as->as_mu);
    cp_alerts_stop(as);
    cp_leader_stop(as);
    cp_sync_stop(as);
    cp_tail_stop(as);
    pthread_mutex_lock(&as->as_mu);
    cp_pending_prune(as, INT64_MAX);
    pthread_mutex_unlock(&as->as_mu);
    atomic_store(&cp->cp_is_leader, 0);
    /* as stays allocated: the RPC server may still deliver a late Sync call
     * or cancel to it (it then answers UNAVAILABLE); cp_agent_side_free
     * releases it once the server is destroyed */
}

void tg_cp_agent_side_resign(tg_cp_t *cp)
{
    tg_cp_agent_side_t *as = cp->cp_agent;
    if (as == NULL)
        return;
    pthread_mutex_lock(&as->as_mu);
    as->as_resign = 1;
    pthread_cond_broadcast(&as->as_cv);
    pthread_mutex_unlock(&as->as_mu);
    cp_leader_stop(as); /* joins the leader thread, revokes the lease */
    cp_sync_close_streams(as);
}

void cp_agent_side_free(tg_cp_t *cp)
{
    tg_cp_agent_side_t *as = cp->cp_agent;
    if (as == NULL)
        return;
    tg_cp_agent_side_stop(cp);
    cp_forward_free(as);
    cp_alerts_free(as);
    cp_nonces_free(as);
    cp_settle_free_groups(as);
    cp->cp_agent = NULL;
    pthread_mutex_destroy(&as->as_settle_mu);
    pthread_cond_destroy(&as->as_gcv);
    pthread_mutex_destroy(&as->as_gmu);
    pthread_cond_destroy(&as->as_cv);
    pthread_mutex_destroy(&as->as_mu);
    tg_free(as);
}
