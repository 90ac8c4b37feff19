/* nonce.c: single-use nonces that make AgentProofs unreplayable.
 *
 * A replica hands an agent a nonce (AgentService.Challenge, or
 * LeaseResponse.next_nonce) and the agent signs it into its next proof; the
 * first proof that carries it consumes it. A captured proof is therefore
 * good for nothing: its nonce is gone, on this replica and on every other
 * (which never issued it). The table is this replica's memory only: no
 * store write per proof, nothing shared between replicas, and a restart
 * forgets every outstanding nonce (an agent then asks for a new one), so
 * leader changes and restarts never reopen an old proof.
 *
 * Layout: a ring of NONCE_SLOTS slots. A nonce is the slot's index (4 bytes
 * big-endian) and 16 random bytes, so a lookup is one slot, and the slot
 * also holds a digest of the agent id the nonce was issued for and its
 * expiry. Issuing more than NONCE_SLOTS nonces within NONCE_TTL reuses the
 * oldest slots: those nonces fail and their agents ask again.
 */
#include <string.h>

#include "controlplane/agentside.h"
#include "crypto/tg_crypto.h"

#define NONCE_SLOTS 65536u
#define NONCE_TTL_US (5LL * 60 * 1000000)
#define LEGACY_SEEN 4096u /* agents remembered as having sent an old proof */

typedef struct nonce_slot {
    uint8_t ns_rand[16];  /* 0s: free */
    uint8_t ns_agent[16]; /* SHA-256(agent id), first 16 bytes */
    int64_t ns_expires_us;
} nonce_slot_t;

struct cp_nonces {
    pthread_mutex_t nc_mu;
    uint32_t nc_next; /* (mu) the slot the next nonce takes */
    nonce_slot_t nc_slots[NONCE_SLOTS];
    uint8_t nc_legacy[LEGACY_SEEN][16]; /* (mu) agents that sent a v1 proof, logged once */
    uint32_t nc_nlegacy;                /* (mu) */
};

int cp_nonces_init(tg_cp_agent_side_t *as)
{
    struct cp_nonces *n = tg_calloc(1, sizeof(*n));
    if (n == NULL)
        return -1;
    pthread_mutex_init(&n->nc_mu, NULL);
    as->as_nonces = n;
    return 0;
}

void cp_nonces_free(tg_cp_agent_side_t *as)
{
    if (as->as_nonces == NULL)
        return;
    pthread_mutex_destroy(&as->as_nonces->nc_mu);
    tg_free(as->as_nonces);
    as->as_nonces = NULL;
}

static void agent_digest(const char *agent_id, uint8_t out[16])
{
    uint8_t h[32];
    tg_crypto_sha256(agent_id, strlen(agent_id), h);
    memcpy(out, h, 16);
}

int cp_nonce_issue(tg_cp_agent_side_t *as, const char *agent_id, int64_t now_us, uint8_t out[CP_NONCE_LEN],
                   int64_t *expires_us)
{
    struct cp_nonces *n = as->as_nonces;
    nonce_slot_t s;
    if (n == NULL || tg_crypto_random(s.ns_rand, sizeof(s.ns_rand)) != 0)
        return -1;
    s.ns_rand[0] |= 1; /* never all zeros: that marks a free slot */
    agent_digest(agent_id, s.ns_agent);
    s.ns_expires_us = now_us + NONCE_TTL_US;
    pthread_mutex_lock(&n->nc_mu);
    uint32_t i = n->nc_next++ % NONCE_SLOTS;
    n->nc_slots[i] = s;
    pthread_mutex_unlock(&n->nc_mu);
    for (int k = 0; k < 4; k++)
        out[k] = (uint8_t)(i >> (24 - 8 * k));
    memcpy(out + 4, s.ns_rand, sizeof(s.ns_rand));
    if (expires_us)
        *expires_us = s.ns_expires_us;
    return 0;
}

int cp_nonce_consume(tg_cp_agent_side_t *as, const char *agent_id, const uint8_t *nonce, size_t len,
                     int64_t now_us)
{
    struct cp_nonces *n = as->as_nonces;
    uint8_t digest[16];
    if (n == NULL || nonce == NULL || len != CP_NONCE_LEN)
        return -1;
    uint32_t i = (uint32_t)nonce[0] << 24 | (uint32_t)nonce[1] << 16 | (uint32_t)nonce[2] << 8 | nonce[3];
    if (i >= NONCE_SLOTS)
        return -1;
    agent_digest(agent_id, digest);
    pthread_mutex_lock(&n->nc_mu);
    nonce_slot_t *s = &n->nc_slots[i];
    int ok = s->ns_expires_us > now_us && tg_crypto_equal(s->ns_rand, nonce + 4, 16) &&
             tg_crypto_equal(s->ns_agent, digest, 16);
    if (ok)
        memset(s, 0, sizeof(*s)); /* single use */
    pthread_mutex_unlock(&n->nc_mu);
    return ok ? 0 : -1;
}

int cp_nonce_legacy_first(tg_cp_agent_side_t *as, const char *agent_id)
{
    struct cp_nonces *n = as->as_nonces;
    uint8_t digest[16];
    int first = 1;
    if (n == NULL)
        return 0;
    agent_digest(agent_id, digest);
    pthread_mutex_lock(&n->nc_mu);
    for (uint32_t i = 0; i < n->nc_nlegacy && first; i++)
        first = memcmp(n->nc_legacy[i], digest, 16) != 0;
    if (first && n->nc_nlegacy < LEGACY_SEEN)
        memcpy(n->nc_legacy[n->nc_nlegacy++], digest, 16);
    else if (first)
        first = 0; /* more old agents than remembered: the counter still counts them */
    pthread_mutex_unlock(&n->nc_mu);
    return first;
}
