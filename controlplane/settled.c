/* settled.c: the bytes of a settled-log value (TG_CP_K_SETTLED/<seq>).
 *
 * A value is a packed LedgerPage, stored either as is or as one zstd frame
 * of it. Settlement compresses the pages it writes when
 * --settled-compression is zstd: a page repeats the same account, key,
 * model, channel and agent strings in every entry, so it shrinks several
 * times, and every byte of it is otherwise written to the store twice
 * (LMDB's value and its log; etcd's WAL and bbolt), sent to each replica's
 * tailer, and read by retention. Readers take both forms, told apart by the
 * first four bytes: zstd's magic number, which no packed LedgerPage starts
 * with (a page is empty or starts with field 1's tag, 0x0A). A frame
 * carries its page's size and a checksum (RFC 8878), so a damaged value is
 * refused rather than read as other amounts. */
#include <stdio.h>
#include <string.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "base/tg_log.h"
#include "controlplane/agentside.h"

#define ZSTD_LEVEL 1 /* measured: docs/PERFORMANCE.md, issue 18 session 8 */

int cp_settled_is_zstd(const uint8_t *val, size_t len)
{
    static const uint8_t magic[4] = {0x28, 0xB5, 0x2F, 0xFD};
    return len >= 4 && memcmp(val, magic, 4) == 0;
}

void *cp_settled_zctx_new(void)
{
    ZSTD_CCtx *zc = ZSTD_createCCtx();
    if (zc != NULL && (ZSTD_isError(ZSTD_CCtx_setParameter(zc, ZSTD_c_compressionLevel, ZSTD_LEVEL)) ||
                       ZSTD_isError(ZSTD_CCtx_setParameter(zc, ZSTD_c_checksumFlag, 1)) ||
                       ZSTD_isError(ZSTD_CCtx_setParameter(zc, ZSTD_c_contentSizeFlag, 1)))) {
        ZSTD_freeCCtx(zc);
        zc = NULL;
    }
    return zc;
}

void cp_settled_zctx_free(void *zc)
{
    ZSTD_freeCCtx(zc);
}

int cp_settled_pack(void *zc, const uint8_t *page, size_t len, tg_buf_t *out, int *packed, char *err,
                    size_t errlen)
{
    *packed = 0;
    tg_buf_reset(out);
    /* stored as is when there is no context (out of memory) or nothing to
     * gain: a frame is made only when it fits in fewer bytes than the page */
    if (zc == NULL || len == 0)
        return 0;
    if (tg_buf_reserve(out, len) < 0)
        return tg_errf(err, errlen, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory for the settled value");
    size_t n = ZSTD_compress2(zc, out->b_data, len, page, len);
    if (ZSTD_isError(n) && ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall)
        return 0;
    if (ZSTD_isError(n))
        return tg_errf(err, errlen, TG_RPC_CODE_INTERNAL, "compressing the settled value: %s",
                       ZSTD_getErrorName(n));
    if (n >= len)
        return 0;
    out->b_len = n;
    out->b_data[n] = '\0';
    *packed = 1;
    return 0;
}

int cp_settled_page(const uint8_t *val, size_t len, tg_buf_t *scratch, const uint8_t **page, size_t *plen,
                    char *err, size_t errlen)
{
    if (!cp_settled_is_zstd(val, len)) {
        *page = val;
        *plen = len;
        return 0;
    }
    /* one whole frame and nothing after it, with its size and (bit 2 of the
     * frame header descriptor, RFC 8878 3.1.1.1.1) a checksum */
    unsigned long long n = ZSTD_getFrameContentSize(val, len);
    if (n == ZSTD_CONTENTSIZE_ERROR || n == ZSTD_CONTENTSIZE_UNKNOWN || len < 5 || !(val[4] & 0x04) ||
        ZSTD_findFrameCompressedSize(val, len) != len)
        return tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                       "settled value: not one whole zstd frame with its size and checksum");
    if (n > CP_SETTLED_PAGE_MAX)
        return tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                       "settled value: a page of %llu bytes, over the %d-byte limit", n, CP_SETTLED_PAGE_MAX);
    tg_buf_reset(scratch);
    if (tg_buf_reserve(scratch, (size_t)n) < 0)
        return tg_errf(err, errlen, TG_LEDGER_ENOMEM, "no memory for a settled page of %llu bytes", n);
    size_t got = ZSTD_decompress(scratch->b_data, (size_t)n, val, len);
    if (ZSTD_isError(got) || got != n)
        return tg_errf(err, errlen, TG_LEDGER_ECORRUPT, "settled value: %s",
                       ZSTD_isError(got) ? ZSTD_getErrorName(got) : "frame shorter than its stated size");
    scratch->b_len = got;
    scratch->b_data[got] = '\0';
    *page = (const uint8_t *)scratch->b_data;
    *plen = got;
    return 0;
}

static int on_etcd(const tg_cp_t *cp)
{
    return cp->cp_store_spec != NULL && strncmp(cp->cp_store_spec, "etcd:", 5) == 0;
}

int cp_settled_zstd_now(tg_cp_agent_side_t *as)
{
    const tg_cp_t *cp = as->as_cp;
    if (cp->cp_settled_zstd != CP_ZSTD_AUTO)
        return cp->cp_settled_zstd == CP_ZSTD_ON;
    /* the embedded store has one reader of its log: this process */
    return !on_etcd(cp) || atomic_load(&as->as_zstd_ok) > 0;
}

void cp_settled_zstd_check(tg_cp_agent_side_t *as)
{
    tg_cp_t *cp = as->as_cp;
    char err[TG_ERRLEN] = "", missing[TG_STORE_MAX_KEY] = "";
    tg_store_range_res_t reps, reads;
    if (cp->cp_settled_zstd != CP_ZSTD_AUTO || !on_etcd(cp))
        return;
    memset(&reps, 0, sizeof(reps));
    memset(&reads, 0, sizeof(reads));
    tg_store_range_req_t rq = {.rq_key = TG_CP_K_REPLICA,
                               .rq_key_len = strlen(TG_CP_K_REPLICA),
                               .rq_prefix = 1,
                               .rq_limit = 1000,
                               .rq_keys_only = 1};
    tg_store_range_req_t dq = {.rq_key = TG_CP_K_REPLICA_READS,
                               .rq_key_len = strlen(TG_CP_K_REPLICA_READS),
                               .rq_prefix = 1,
                               .rq_limit = 1000};
    if (tg_store_range(cp->cp_store, &rq, &reps, err, sizeof(err)) < 0 ||
        tg_store_range(cp->cp_store, &dq, &reads, err, sizeof(err)) < 0) {
        TG_LOG(TG_LOG_DEBUG, "cp.settle", "reading which replicas read zstd: %s", err);
        goto done;
    }
    /* every registered replica (one that never registered sends no usage
     * and leads nothing) must announce it; more than a page of replicas:
     * plain, to be safe */
    int ok = reps.rs_n > 0 && !reps.rs_more && !reads.rs_more;
    size_t pl = strlen(TG_CP_K_REPLICA), dl = strlen(TG_CP_K_REPLICA_READS);
    for (size_t i = 0; ok && i < reps.rs_n; i++) {
        const tg_store_kv_t *r = &reps.rs_kvs[i];
        int found = 0;
        for (size_t j = 0; !found && j < reads.rs_n; j++) {
            const tg_store_kv_t *d = &reads.rs_kvs[j];
            found = d->kv_key_len - dl == r->kv_key_len - pl &&
                    memcmp(d->kv_key + dl, r->kv_key + pl, r->kv_key_len - pl) == 0 &&
                    d->kv_val_len == strlen(CP_READS_ZSTD) &&
                    memcmp(d->kv_val, CP_READS_ZSTD, d->kv_val_len) == 0;
        }
        if (!found) {
            ok = 0;
            snprintf(missing, sizeof(missing), "%.*s", (int)(r->kv_key_len - pl),
                     (const char *)r->kv_key + pl);
        }
    }
    if (!missing[0] && !ok)
        snprintf(missing, sizeof(missing), "%s", "(none registered)");
    /* logged when the answer changes, or names another replica */
    int was = atomic_exchange(&as->as_zstd_ok, ok);
    if (ok && was != 1)
        TG_LOG(TG_LOG_INFO, "cp.settle",
               "settled log: written compressed from now on (every replica reads zstd)");
    if (!ok && (was != 0 || strcmp(missing, as->as_zstd_why) != 0))
        TG_LOG(TG_LOG_INFO, "cp.settle",
               "settled log: written plain (replica %s does not say it reads zstd: older than this release?)",
               missing);
    snprintf(as->as_zstd_why, sizeof(as->as_zstd_why), "%s", ok ? "" : missing);
done:
    tg_store_range_res_free(&reps);
    tg_store_range_res_free(&reads);
}
