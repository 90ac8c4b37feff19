/* tg_ledger codec: the canonical bytes of a row (what is stored and what
 * the hash chain covers), their decoding straight from the memory map, and
 * the order-preserving integer encodings used in index keys. The layout is
 * described in ledger_int.h; changing it means a new TGL_FORMAT. */
#include <string.h>

#include "base/tg_base.h"
#include "store/ledger/ledger_int.h"

#define NSTR TGL_NSTR
#define NINT 7

const char *const tgl_ix_names[TGL_IX_N] = {"i_account", "i_project", "i_key",
                                            "i_run",     "i_model",   "i_channel"};

static const char *nz(const char *s)
{
    return s ? s : "";
}

const char *tgl_row_field(const tg_ledger_row_t *r, int ix)
{
    switch (ix) {
    case TGL_IX_ACCOUNT: return nz(r->lr_account_id);
    case TGL_IX_PROJECT: return nz(r->lr_project_id);
    case TGL_IX_KEY: return nz(r->lr_key_id);
    case TGL_IX_RUN: return nz(r->lr_run_id);
    case TGL_IX_MODEL: return nz(r->lr_model);
    case TGL_IX_CHANNEL: return nz(r->lr_channel_id);
    }
    return "";
}

const char *tgl_filter_field(const tg_ledger_filter_t *f, int ix)
{
    switch (ix) {
    case TGL_IX_ACCOUNT: return nz(f->lf_account_id);
    case TGL_IX_PROJECT: return nz(f->lf_project_id);
    case TGL_IX_KEY: return nz(f->lf_key_id);
    case TGL_IX_RUN: return nz(f->lf_run_id);
    case TGL_IX_MODEL: return nz(f->lf_model);
    case TGL_IX_CHANNEL: return nz(f->lf_channel_id);
    }
    return "";
}

/* The string fields in encoding order, as pointers to the row's members so
 * decode can fill them. */
static void str_slots(tg_ledger_row_t *r, const char ***s)
{
    s[0] = &r->lr_record_id;
    s[1] = &r->lr_agent_id;
    s[2] = &r->lr_account_id;
    s[3] = &r->lr_project_id;
    s[4] = &r->lr_key_id;
    s[5] = &r->lr_run_id;
    s[6] = &r->lr_model;
    s[7] = &r->lr_upstream_model;
    s[8] = &r->lr_channel_id;
    s[9] = &r->lr_route_type;
    s[10] = &r->lr_bucket;
    s[11] = &r->lr_currency;
}

static const char *const str_names[NSTR] = {
    "record id", "agent id", "account id", "project id", "key id", "run id", "model",
    "upstream model", "channel id", "route type", "bucket", "currency"};

static void int_slots(tg_ledger_row_t *r, int64_t **v)
{
    v[0] = &r->lr_settled_us;
    v[1] = &r->lr_request_us;
    v[2] = &r->lr_cost_nano;
    v[3] = &r->lr_upstream_cost_nano;
    v[4] = &r->lr_input_tokens;
    v[5] = &r->lr_output_tokens;
    v[6] = &r->lr_price_version;
}

int tgl_row_check(const tg_ledger_row_t *r, size_t i, size_t lens[NSTR], char *err, size_t errlen)
{
    /* The slot helpers take a mutable row; they only read through it here. */
    tg_ledger_row_t *m = (tg_ledger_row_t *)r;
    const char **s[NSTR];
    str_slots(m, s);
    size_t idlen = lens[0] = r->lr_record_id ? strlen(r->lr_record_id) : 0;
    if (idlen == 0 || idlen > TG_LEDGER_ID_MAX)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL,
                       "ledger row %zu: record id must be 1..%d bytes (got %zu)", i,
                       TG_LEDGER_ID_MAX, idlen);
    for (int k = 1; k < NSTR; k++) {
        size_t n = lens[k] = strlen(nz(*s[k]));
        if (n > TG_LEDGER_FIELD_MAX)
            return tg_errf(err, errlen, TG_LEDGER_EINVAL,
                           "ledger row %zu (record %s): %s is %zu bytes, the limit is %d", i,
                           r->lr_record_id, str_names[k], n, TG_LEDGER_FIELD_MAX);
    }
    if (r->lr_kind != TG_LEDGER_USAGE && r->lr_kind != TG_LEDGER_TOPUP &&
        r->lr_kind != TG_LEDGER_ADJUSTMENT)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL,
                       "ledger row %zu (record %s): unknown kind %d", i, r->lr_record_id,
                       (int)r->lr_kind);
    if (r->lr_input_tokens < 0 || r->lr_output_tokens < 0)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL,
                       "ledger row %zu (record %s): token counts must not be negative", i,
                       r->lr_record_id);
    if (r->lr_record_len > TG_LEDGER_RECORD_MAX || (r->lr_record_len && !r->lr_record))
        return tg_errf(err, errlen, TG_LEDGER_EINVAL,
                       "ledger row %zu (record %s): record bytes must be 0..%d long and present",
                       i, r->lr_record_id, TG_LEDGER_RECORD_MAX);
    return 0;
}

size_t tgl_row_size_lens(const tg_ledger_row_t *r, const size_t lens[NSTR])
{
    size_t n = 2 + 8 * NINT + 4 + r->lr_record_len;
    for (int k = 0; k < NSTR; k++)
        n += 2 + lens[k];
    return n;
}

size_t tgl_row_size(const tg_ledger_row_t *r, size_t lens[NSTR])
{
    tg_ledger_row_t *m = (tg_ledger_row_t *)r;
    const char **s[NSTR];
    str_slots(m, s);
    size_t n = 2 + 8 * NINT + 4 + r->lr_record_len;
    for (int k = 0; k < NSTR; k++)
        n += 2 + (lens[k] = strlen(nz(*s[k])));
    return n;
}

void tgl_put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

uint64_t tgl_get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

void tgl_put_time(unsigned char *p, int64_t t)
{
    tgl_put_u64(p, (uint64_t)t ^ 0x8000000000000000ULL);
}

int64_t tgl_get_time(const unsigned char *p)
{
    return (int64_t)(tgl_get_u64(p) ^ 0x8000000000000000ULL);
}

void tgl_row_encode(const tg_ledger_row_t *r, const size_t lens[NSTR], unsigned char *out)
{
    tg_ledger_row_t *m = (tg_ledger_row_t *)r;
    const char **s[NSTR];
    int64_t *v[NINT];
    str_slots(m, s);
    int_slots(m, v);
    unsigned char *p = out;
    *p++ = TGL_ROW_VERSION;
    *p++ = (unsigned char)r->lr_kind;
    for (int k = 0; k < NINT; k++, p += 8)
        tgl_put_u64(p, (uint64_t)*v[k]);
    for (int k = 0; k < NSTR; k++) {
        const char *str = nz(*s[k]);
        size_t n = lens[k];
        *p++ = (unsigned char)n;
        memcpy(p, str, n);
        p += n;
        *p++ = '\0';
    }
    uint32_t rl = (uint32_t)r->lr_record_len;
    p[0] = (unsigned char)(rl >> 24);
    p[1] = (unsigned char)(rl >> 16);
    p[2] = (unsigned char)(rl >> 8);
    p[3] = (unsigned char)rl;
    p += 4;
    if (rl)
        memcpy(p, r->lr_record, rl);
}

int tgl_row_decode(const void *val, size_t len, uint64_t seq, tg_ledger_row_t *r)
{
    const unsigned char *p = val, *end = p + len;
    const char **s[NSTR];
    int64_t *v[NINT];
    memset(r, 0, sizeof(*r));
    str_slots(r, s);
    int_slots(r, v);
    if (len < TGL_HASH + 2 + 8 * NINT)
        return -1;
    memcpy(r->lr_hash, p, TGL_HASH);
    p += TGL_HASH;
    if (p[0] != TGL_ROW_VERSION)
        return -1;
    r->lr_kind = (tg_ledger_kind_t)p[1];
    p += 2;
    for (int k = 0; k < NINT; k++, p += 8)
        *v[k] = (int64_t)tgl_get_u64(p);
    for (int k = 0; k < NSTR; k++) {
        if (end - p < 2)
            return -1;
        size_t n = *p++;
        if ((size_t)(end - p) < n + 1 || p[n] != '\0' || memchr(p, '\0', n))
            return -1;
        *s[k] = (const char *)p;
        p += n + 1;
    }
    if (end - p < 4)
        return -1;
    size_t rl = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
    p += 4;
    if ((size_t)(end - p) != rl)
        return -1;
    r->lr_record = rl ? p : NULL;
    r->lr_record_len = rl;
    r->lr_seq = seq;
    return 0;
}

int tgl_chain_hash(EVP_MD_CTX *ctx, const EVP_MD *md, const unsigned char prev[TGL_HASH], uint64_t seq,
                   const void *enc, size_t len, unsigned char out[TGL_HASH])
{
    unsigned char sb[8];
    unsigned int olen = 0;
    tgl_put_u64(sb, seq);
    if (EVP_DigestInit_ex(ctx, md, NULL) != 1 ||
        EVP_DigestUpdate(ctx, prev, TGL_HASH) != 1 || EVP_DigestUpdate(ctx, sb, 8) != 1 ||
        EVP_DigestUpdate(ctx, enc, len) != 1 || EVP_DigestFinal_ex(ctx, out, &olen) != 1 ||
        olen != TGL_HASH)
        return -1;
    return 0;
}

size_t tgl_ix_key(unsigned char *out, uint32_t bucket, const char *value, uint64_t seq)
{
    size_t n = strlen(value);
    out[0] = (unsigned char)(bucket >> 24);
    out[1] = (unsigned char)(bucket >> 16);
    out[2] = (unsigned char)(bucket >> 8);
    out[3] = (unsigned char)bucket;
    memcpy(out + 4, value, n);
    out[4 + n] = '\0';
    tgl_put_u64(out + 5 + n, seq);
    return 13 + n;
}
