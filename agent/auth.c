/* auth.c: who sends a request and whether the key's own policy admits it:
 * the API key (Bearer or x-api-key -> SHA-256 -> the snapshot's key), its
 * and its account's status and expiry, the client IP (X-Forwarded-For only
 * through trusted proxies) against the key's IP allowlist, the model
 * allowlist globs, and the run's budget envelope (X-Tollgate-Run). */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "agent/request_int.h"
#include "crypto/tg_crypto.h"

/* ---- the front: auth, policy, dispatch ------------------------------------------ */

/* Walks one X-Forwarded-For value right to left, each address into
 * rq_ip. Returns 1 when the walk is over (an address that is not a
 * trusted proxy, or one that does not parse: the last good one stands),
 * 0 when every address of the value was a trusted proxy. */
static int xff_walk(req_t *rq, const char *xff)
{
    size_t end = strlen(xff);
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        char one[64];
        size_t s = start, e = end;
        while (s < e && (xff[s] == ' ' || xff[s] == '\t'))
            s++;
        while (e > s && (xff[e - 1] == ' ' || xff[e - 1] == '\t'))
            e--;
        tg_ip_t ip;
        if (e - s == 0 || e - s >= sizeof one)
            return 1;
        memcpy(one, xff + s, e - s);
        one[e - s] = '\0';
        if (tg_agent_ip_parse(one, &ip) != 0)
            return 1;
        memcpy(rq->rq_ip, one, e - s + 1);
        if (!tg_cfg_trusted_proxy(rq->rq_cfg, &ip))
            return 1;
        end = start ? start - 1 : 0;
    }
    return 0;
}

/* Client address: the peer, or from X-Forwarded-For when the peer is a
 * trusted proxy: the rightmost address that is not itself a trusted
 * proxy, as nginx's realip module takes it. Every X-Forwarded-For line
 * counts, read as one list in order (RFC 9110 5.3): a proxy that adds its
 * own line after the client's must not let the client's line decide. */
void tg_req_client_ip(req_t *rq)
{
    const char *peer = tg_front_peer(rq->rq_c);
    size_t pl = strnlen(peer, sizeof rq->rq_ip - 1);
    memcpy(rq->rq_ip, peer, pl);
    rq->rq_ip[pl] = '\0';
    tg_ip_t ip;
    if (!tg_cfg_trusted_proxies(rq->rq_cfg) || tg_agent_ip_parse(rq->rq_ip, &ip) != 0 ||
        !tg_cfg_trusted_proxy(rq->rq_cfg, &ip))
        return;
    const char *xff[128]; /* the front keeps at most 128 header lines */
    size_t n = tg_front_header_all(rq->rq_c, "X-Forwarded-For", xff, 128);
    if (n > 128)
        n = 128;
    while (n > 0 && !xff_walk(rq, xff[--n]))
        ;
}

int tg_req_model_allowed(const tg_key_t *k, const char *model)
{
    if (!k->n_model_allowlist)
        return 1;
    for (size_t i = 0; i < k->n_model_allowlist; i++)
        if (tg_agent_glob(k->model_allowlist[i], model))
            return 1;
    return 0;
}

/* The memo slot of a secret (a cheap mix of its length and last 16
 * bytes), or NULL when the secret is too long or empty to be kept. */
static tg_keymemo_t *memo_slot(worker_t *w, const char *secret, size_t n)
{
    if (n == 0 || n > TG_KEYMEMO_SECRET)
        return NULL;
    uint32_t mix = 2166136261u; /* FNV-1a */
    mix = (mix ^ (uint32_t)n) * 16777619u;
    for (size_t i = n > 16 ? n - 16 : 0; i < n; i++)
        mix = (mix ^ (unsigned char)secret[i]) * 16777619u;
    return &w->w_keymemo[mix % TG_KEYMEMO_SLOTS];
}

/* Authenticates and checks the key's own policy. Returns 0, or sends the
 * error and returns -1. */
int tg_req_authenticate(req_t *rq)
{
    const char *auth = tg_front_header(rq->rq_c, "Authorization");
    const char *secret = NULL;
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
        secret = auth + 7;
    else if (!auth)
        secret = tg_front_header(rq->rq_c, "x-api-key");
    while (secret && *secret == ' ')
        secret++;
    if (!secret || !*secret) {
        tg_req_fail(rq, 401, "invalid_request_error", "missing_api_key", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'.");
        return -1;
    }
    /* SHA-256 of the secret: the worker's memo of recent valid keys skips
     * the digest for a client that reuses its key (constant-time compare) */
    uint8_t h[32];
    size_t sl = strlen(secret);
    tg_keymemo_t *m = memo_slot(rq->rq_w, secret, sl);
    int hit = m && m->km_len == sl && tg_crypto_equal(m->km_secret, secret, sl);
    if (hit)
        memcpy(h, m->km_hash, 32);
    else
        tg_crypto_sha256(secret, sl, h);
    const tg_key_t *k = tg_cfg_key(rq->rq_cfg, h);
    if (!k || k->status == TOLLGATE__V1__KEY_STATUS__KEY_STATUS_REVOKED) {
        char shown[12];
        size_t n = strlen(secret);
        snprintf(shown, sizeof shown, "%.*s", (int)(n > 6 ? 6 : n), secret);
        tg_req_fail(rq, 401, "invalid_request_error", "invalid_api_key", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     k ? "This API key was revoked%s%s." : "Incorrect API key provided: %s...%s",
                     k ? (k->status_reason && *k->status_reason ? ": " : "") : shown,
                     k ? (k->status_reason ? k->status_reason : "") : "");
        return -1;
    }
    if (m && !hit) {
        /* only secrets of known keys are kept: not a provider key pasted by
         * mistake, nor a prober's guesses */
        memcpy(m->km_secret, secret, sl);
        memcpy(m->km_hash, h, 32);
        m->km_len = (uint8_t)sl;
    }
    rq->rq_key = k;
    rq->rq_acct = tg_cfg_account(rq->rq_cfg, k->account_id);
    if (!rq->rq_acct) {
        tg_req_fail(rq, 403, "permission_error", "account_not_found", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "This API key's account is not in the gateway's configuration; ask the operator.");
        return -1;
    }
    /* The run's budget envelope, when the operator set one for this run
     * (and, if it names a project or key, for this one). */
    const Tollgate__V1__RunBudget *rb = rq->rq_run ? tg_cfg_run(rq->rq_cfg, rq->rq_run) : NULL;
    if (rb && strcmp(rb->account_id, k->account_id) == 0 && (!rb->key_id[0] || strcmp(rb->key_id, k->id) == 0) &&
        (!rb->project_id[0] || strcmp(rb->project_id, k->project_id) == 0)) {
        if (rb->expires_at_us && now_us() >= rb->expires_at_us) {
            tg_req_fail(rq, 403, "permission_error", "run_expired", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "The run `%s` has expired: its budget no longer admits requests.", rb->run_id);
            return -1;
        }
        rq->rq_runb = rb;
    }
    if (k->expires_at_us && now_us() >= k->expires_at_us) {
        tg_req_fail(rq, 401, "invalid_request_error", "expired_api_key", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "This API key expired.");
        return -1;
    }
    /* the key holder's own view shows a paused key's status rather than
     * refusing it (keyview.c) */
    if (!rq->rq_view && (k->status == TOLLGATE__V1__KEY_STATUS__KEY_STATUS_PAUSED ||
        (rq->rq_acct && rq->rq_acct->status != TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_UNSPECIFIED &&
         rq->rq_acct->status != TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_ACTIVE))) {
        tg_req_fail(rq, 403, "permission_error", "key_paused", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                     "This API key is paused%s%s.", k->status_reason && *k->status_reason ? ": " : "",
                     k->status_reason ? k->status_reason : "");
        return -1;
    }
    if (k->n_ip_allowlist) {
        tg_ip_t ip;
        int ok = 0;
        if (tg_agent_ip_parse(rq->rq_ip, &ip) == 0)
            for (size_t i = 0; i < k->n_ip_allowlist && !ok; i++)
                ok = tg_agent_cidr_match(k->ip_allowlist[i], &ip) == 1;
        if (!ok) {
            tg_req_fail(rq, 403, "permission_error", "ip_not_allowed", TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY,
                         "Requests from %s are not allowed for this API key.", rq->rq_ip);
            return -1;
        }
    }
    return 0;
}
