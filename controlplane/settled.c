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
#include <string.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "controlplane/agentside.h"
#include "tollgate/v1/admin.pb-c.h"

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

int cp_settled_unpack(const uint8_t *val, size_t len, ProtobufCMessage **out, char *err, size_t errlen)
{
    tg_buf_t scratch;
    const uint8_t *pg;
    size_t pglen;
    *out = NULL;
    tg_buf_init(&scratch, CP_SETTLED_PAGE_MAX);
    /* unpacking copies what the message needs: scratch goes at once */
    int rc = cp_settled_page(val, len, &scratch, &pg, &pglen, err, errlen);
    if (rc == 0)
        rc = tg_rpc_pb_unpack(&tollgate__v1__ledger_page__descriptor, pg, pglen, out, err, errlen);
    tg_buf_free(&scratch);
    return rc;
}
