/* nonce.c: single-use nonces that make AgentProofs unreplayable.
 *
 * A replica hands an agent a nonce (AgentService.Challenge, or
 * LeaseResponse.next_nonce) and the agent signs it into its next proof; the
 * first proof that carries it consumes it. A captured proof is therefore
 * good for nothing: its nonce is gone, on this replica and on every other
 * (which never issued it).
 *
 * Issuing keeps no state: a nonce is expiry_us (8 bytes big-endian) ||
 * 16 random bytes || the first 16 bytes of HMAC-SHA256(this process's
 * random key, expiry || random || agent id), so it proves by itself that
 * this replica issued it to that agent and until when. Only USED nonces
 * are remembered (until they expire), and only after the proof carrying
 * one verified, so the set is bounded by authenticated traffic: nobody can
 * evict or crowd out other agents' nonces by calling Challenge, which
 * needs no proof. The key and the set are this process's memory: no store
 * write per proof, nothing shared between replicas, and a restart makes
 * every outstanding nonce fail (an agent then asks for a new one), so
 * restarts never reopen an old proof.
 */
#include <stdlib.h>
#include <string.h>

#include "controlplane/agentside.h"
#include "crypto/tg_crypto.h"

#define NONCE_TTL_US (5LL * 60 * 1000000)
#define USED_BUCKETS 4096u
#define PRUNE_EVERY_US 1000000
#define LEGACY_SEEN 4096u /* agents remembered as having sent an old proof */
#define MAC_LEN 16

typedef struct used_nonce {
    uint8_t un_rand[16];
    int64_t un_expires_us;
    struct used_nonce *un_next;
} used_nonce_t;

struct cp_nonces {
    uint8_t nc_key[32]; /* HMAC key, set once at init */
    pthread_mutex_t nc_mu;
    used_nonce_t *nc_used[USED_BUCKETS]; /* (mu) nonces consumed and not yet expired */
    int64_t nc_pruned_us;                /* (mu) when expired ones were last dropped */
    uint8_t nc_legacy[LEGACY_SEEN][16];  /* (mu) agents that sent a v1 proof, logged once */
    uint32_t nc_nlegacy;                 /* (mu) */
};

int cp_nonces_init(tg_cp_agent_side_t *as)
{
    struct cp_nonces *n = tg_calloc(1, sizeof(*n));
    if (n == NULL)
        return -1;
    if (tg_crypto_random(n->nc_key, sizeof(n->nc_key)) != 0) {
        tg_free(n);
        return -1;
    }
    pthread_mutex_init(&n->nc_mu, NULL);
    as->as_nonces = n;
    return 0;
}

void cp_nonces_free(tg_cp_agent_side_t *as)
{
    struct cp_nonces *n = as->as_nonces;
    if (n == NULL)
        return;
    for (uint32_t b = 0; b < USED_BUCKETS; b++)
        for (used_nonce_t *u = n->nc_used[b], *next; u != NULL; u = next) {
            next = u->un_next;
            tg_free(u);
        }
    pthread_mutex_destroy(&n->nc_mu);
    memset(n->nc_key, 0, sizeof(n->nc_key));
    tg_free(n);
    as->as_nonces = NULL;
}

static void agent_digest(const char *agent_id, uint8_t out[16])
{
    uint8_t h[32];
    tg_crypto_sha256(agent_id, strlen(agent_id), h);
    memcpy(out, h, 16);
}

/* HMAC-SHA256(key, nonce's first 24 bytes || agent id), first MAC_LEN
 * bytes. An agent id is at most 128 bytes (longer ones never get here). */
static void nonce_mac(const struct cp_nonces *n, const uint8_t head[24], const char *agent_id, uint8_t out[MAC_LEN])
{
    uint8_t msg[24 + 256], mac[TG_SHA256_LEN];
    size_t idl = strnlen(agent_id, 256);
    memcpy(msg, head, 24);
    memcpy(msg + 24, agent_id, idl);
    tg_crypto_hmac_sha256(n->nc_key, sizeof n->nc_key, msg, 24 + idl, mac);
    memcpy(out, mac, MAC_LEN);
}

int cp_nonce_issue(tg_cp_agent_side_t *as, const char *agent_id, int64_t now_us, uint8_t out[CP_NONCE_LEN],
                   int64_t *expires_us)
{
    struct cp_nonces *n = as->as_nonces;
    int64_t exp = now_us + NONCE_TTL_US;
    if (n == NULL || tg_crypto_random(out + 8, 16) != 0)
        return -1;
    for (int k = 0; k < 8; k++)
        out[k] = (uint8_t)((uint64_t)exp >> (56 - 8 * k));
    nonce_mac(n, out, agent_id, out + 24);
    if (expires_us)
        *expires_us = exp;
    return 0;
}

/* Drops used nonces that expired (mu held). */
static void prune(struct cp_nonces *n, int64_t now_us)
{
    for (uint32_t b = 0; b < USED_BUCKETS; b++)
        for (used_nonce_t **pp = &n->nc_used[b]; *pp != NULL;) {
            used_nonce_t *u = *pp;
            if (u->un_expires_us <= now_us) {
                *pp = u->un_next;
                tg_free(u);
            } else {
                pp = &u->un_next;
            }
        }
    n->nc_pruned_us = now_us;
}

int cp_nonce_consume(tg_cp_agent_side_t *as, const char *agent_id, const uint8_t *nonce, size_t len,
                     int64_t now_us)
{
    struct cp_nonces *n = as->as_nonces;
    uint8_t mac[MAC_LEN];
    int64_t exp = 0;
    int ok = 1;
    if (n == NULL || nonce == NULL || len != CP_NONCE_LEN)
        return -1;
    for (int k = 0; k < 8; k++)
        exp = (int64_t)((uint64_t)exp << 8 | nonce[k]);
    if (exp <= now_us || exp > now_us + NONCE_TTL_US)
        return -1;
    nonce_mac(n, nonce, agent_id, mac);
    if (!tg_crypto_equal(mac, nonce + 24, MAC_LEN))
        return -1; /* not issued here, or not to this agent, or altered */
    uint32_t b = ((uint32_t)nonce[8] << 8 | nonce[9]) % USED_BUCKETS;
    pthread_mutex_lock(&n->nc_mu);
    if (now_us - n->nc_pruned_us >= PRUNE_EVERY_US)
        prune(n, now_us);
    for (used_nonce_t *u = n->nc_used[b]; u != NULL && ok; u = u->un_next)
        ok = memcmp(u->un_rand, nonce + 8, 16) != 0;
    if (ok) {
        used_nonce_t *u = tg_calloc(1, sizeof(*u));
        if (u == NULL) {
            ok = 0; /* cannot remember it: refuse rather than allow a replay */
        } else {
            memcpy(u->un_rand, nonce + 8, 16);
            u->un_expires_us = exp;
            u->un_next = n->nc_used[b];
            n->nc_used[b] = u;
        }
    }
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
