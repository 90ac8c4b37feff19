/* batch_fuzz.c: libFuzzer target for the first thing the control plane
 * does with an agent's bytes: ReportUsage's SignedUsageBatch decode, the
 * Ed25519 check over the batch, the UsageBatch decode and the signer
 * match (settle.c: cp_batch_unpack_signed, cp_batch_open), then the
 * batch's marker key. The first byte picks how the rest is used:
 *   even: the rest is the whole SignedUsageBatch, checked with a fixed
 *         agent key (the fuzzer cannot forge a signature, so what opens
 *         must carry one made by the seeds, over bytes it did not change);
 *   odd:  the rest is the UsageBatch; the target signs it with the agent
 *         key (so the decode behind the signature is reached), names the
 *         batch's own agent_id as signer (or "agent-1" when it has none)
 *         and checks that it opens exactly when the bytes decode, that a
 *         flipped signature bit or another agent's key gives
 *         UNAUTHENTICATED, and that another signer name gives
 *         INVALID_ARGUMENT.
 * Every answer is OK, INVALID_ARGUMENT or UNAUTHENTICATED with a message. */
#include <string.h>

#include "base/tg_base.h"
#include "controlplane/agentside.h"
#include "crypto/tg_crypto.h"
#include "rpc/tg_rpc.h"
#include "tests/fuzz/fuzz.h"
#include "tollgate/v1/usage.pb-c.h"

static tg_crypto_key_t *g_key, *g_other;
static uint8_t g_pub[32], g_other_pub[32];

static void keys(void)
{
    uint8_t seed[32];
    memset(seed, 7, sizeof seed);
    TG_FUZZ_CHECK(tg_crypto_key_from_seed(seed, &g_key, NULL, 0) == 0);
    seed[0] = 8;
    TG_FUZZ_CHECK(tg_crypto_key_from_seed(seed, &g_other, NULL, 0) == 0);
    tg_crypto_key_public(g_key, g_pub);
    tg_crypto_key_public(g_other, g_other_pub);
}

/* Unpacks and opens packed signed bytes; returns the code, and *batch on OK. */
static int open_bytes(const uint8_t *p, size_t n, const uint8_t *pub, Tollgate__V1__UsageBatch **batch,
                      tg_pool_t *pool)
{
    char err[512] = "";
    Tollgate__V1__SignedUsageBatch *sb = NULL;
    int code = cp_batch_unpack_signed(pool, p, n, &sb, err, sizeof err);
    TG_FUZZ_CHECK(code == TG_RPC_CODE_OK || code == TG_RPC_CODE_INVALID_ARGUMENT);
    TG_FUZZ_CHECK((code == TG_RPC_CODE_OK) == (sb != NULL));
    if (code != TG_RPC_CODE_OK) {
        TG_FUZZ_CHECK(err[0] != '\0');
        return code;
    }
    TG_FUZZ_CHECK(sb->agent_id[0] != '\0');
    code = cp_batch_open(pool, sb, pub, 32, batch, err, sizeof err);
    TG_FUZZ_CHECK(code == TG_RPC_CODE_OK || code == TG_RPC_CODE_INVALID_ARGUMENT ||
                  code == TG_RPC_CODE_UNAUTHENTICATED);
    TG_FUZZ_CHECK((code == TG_RPC_CODE_OK) == (*batch != NULL));
    if (code != TG_RPC_CODE_OK) {
        TG_FUZZ_CHECK(err[0] != '\0');
        return code;
    }
    /* what opened was signed by this key, and names its signer */
    TG_FUZZ_CHECK(sb->signature.len == TG_ED25519_SIG_LEN);
    TG_FUZZ_CHECK(memcmp(pub, g_pub, 32) == 0);
    TG_FUZZ_CHECK(tg_crypto_verify(g_key, sb->batch.data, sb->batch.len, sb->signature.data, sb->signature.len) ==
                  0);
    TG_FUZZ_CHECK(strcmp((*batch)->agent_id, sb->agent_id) == 0);
    char key[512];
    int kn = cp_batch_key((*batch)->agent_id, (*batch)->sequence, key, sizeof key);
    TG_FUZZ_CHECK(kn < 0 || (size_t)kn == strlen(key));
    return code;
}

static uint8_t *pack_signed(const uint8_t *batch, size_t n, const char *agent, const uint8_t sig[64], size_t *len)
{
    Tollgate__V1__SignedUsageBatch sb = TOLLGATE__V1__SIGNED_USAGE_BATCH__INIT;
    sb.agent_id = (char *)agent;
    sb.batch.data = (uint8_t *)batch;
    sb.batch.len = n;
    sb.signature.data = (uint8_t *)sig;
    sb.signature.len = 64;
    *len = tollgate__v1__signed_usage_batch__get_packed_size(&sb);
    uint8_t *out = tg_malloc(*len ? *len : 1);
    TG_FUZZ_CHECK(out != NULL);
    TG_FUZZ_CHECK(tollgate__v1__signed_usage_batch__pack(&sb, out) == *len);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (g_key == NULL)
        keys();
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    tg_pool_t *pool = tg_pool_create(16384);
    TG_FUZZ_CHECK(pool != NULL);
    Tollgate__V1__UsageBatch *b = NULL;
    if ((data[0] & 1) == 0) {
        (void)open_bytes(p, n, g_pub, &b, pool);
        tg_pool_destroy(pool);
        return 0;
    }
    /* the signed path: which agent does the batch name? */
    Tollgate__V1__UsageBatch *plain = tollgate__v1__usage_batch__unpack(NULL, n, p);
    char agent[256] = "agent-1";
    if (plain != NULL && plain->agent_id[0] != '\0' && strlen(plain->agent_id) < sizeof agent)
        snprintf(agent, sizeof agent, "%s", plain->agent_id);
    int named = plain != NULL && strcmp(plain->agent_id, agent) == 0;
    uint8_t sig[64];
    TG_FUZZ_CHECK(tg_crypto_sign(g_key, p, n, sig) == 0);
    size_t sl;
    uint8_t *s = pack_signed(p, n, agent, sig, &sl);
    int code = open_bytes(s, sl, g_pub, &b, pool);
    if (plain == NULL)
        TG_FUZZ_CHECK(code == TG_RPC_CODE_INVALID_ARGUMENT);
    else
        TG_FUZZ_CHECK(code == (named ? TG_RPC_CODE_OK : TG_RPC_CODE_INVALID_ARGUMENT));
    if (code == TG_RPC_CODE_OK)
        TG_FUZZ_CHECK(b->sequence == plain->sequence && b->n_records == plain->n_records);
    /* another agent's key, a flipped bit: never opens */
    b = NULL;
    TG_FUZZ_CHECK(open_bytes(s, sl, g_other_pub, &b, pool) == TG_RPC_CODE_UNAUTHENTICATED);
    tg_free(s);
    sig[data[0] % 64] ^= (uint8_t)(1u << (data[0] >> 1 & 7));
    s = pack_signed(p, n, agent, sig, &sl);
    TG_FUZZ_CHECK(open_bytes(s, sl, g_pub, &b, pool) == TG_RPC_CODE_UNAUTHENTICATED);
    tg_free(s);
    /* the right signature under another signer's name */
    TG_FUZZ_CHECK(tg_crypto_sign(g_key, p, n, sig) == 0);
    s = pack_signed(p, n, "someone-else", sig, &sl);
    code = open_bytes(s, sl, g_pub, &b, pool);
    TG_FUZZ_CHECK(code == (plain != NULL && strcmp(plain->agent_id, "someone-else") == 0 ? TG_RPC_CODE_OK
                                                                                          : TG_RPC_CODE_INVALID_ARGUMENT));
    tg_free(s);
    if (plain != NULL)
        tollgate__v1__usage_batch__free_unpacked(plain, NULL);
    tg_pool_destroy(pool);
    return 0;
}
