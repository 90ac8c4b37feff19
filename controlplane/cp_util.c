/* cp_util.c: small helpers both halves of the control plane share (cp.h)
 * and the admin side's pure utilities (admin_int.h): sequence strings, time,
 * typed store reads, store-error to gRPC-status mapping, protobuf-c field
 * setters, page tokens, CSV escaping and RFC 3339 timestamps. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "controlplane/admin_int.h"

void tg_cp_seqstr(uint64_t v, char buf[21])
{
    snprintf(buf, 21, "%020" PRIu64, v);
}

int tg_cp_loopback(const char *addr)
{
    return strncmp(addr, "127.", 4) == 0 || strncmp(addr, "localhost:", 10) == 0 || strncmp(addr, "[::1]:", 6) == 0;
}

int64_t tg_cp_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int tg_cp_put_if(tg_cp_t *cp, const char *key, int64_t modrev, const void *val, size_t len, char *err,
                 size_t errlen)
{
    tg_store_cmp_t cmp = {.c_key = key, .c_key_len = strlen(key), .c_target = TG_STORE_CMP_MOD_REV,
                          .c_op = TG_STORE_EQ, .c_num = modrev};
    tg_store_op_t op = {.op_type = TG_STORE_OP_PUT, .op_key = key, .op_key_len = strlen(key), .op_val = val,
                        .op_val_len = len};
    tg_store_txn_res_t tres;
    memset(&tres, 0, sizeof(tres));
    int rc = tg_store_txn(cp->cp_store, &cmp, 1, &op, 1, NULL, 0, &tres, err, errlen);
    int ok = rc == 0 && tres.tx_succeeded;
    tg_store_txn_res_free(&tres);
    return rc < 0 ? rc : ok;
}

int tg_cp_get_pb(tg_cp_t *cp, const char *key, const ProtobufCMessageDescriptor *d,
                 ProtobufCMessage **out, int64_t *mod_rev, char *err, size_t errlen)
{
    tg_store_kv_t *kv = NULL;
    int rc;
    *out = NULL;
    if (mod_rev) *mod_rev = 0;
    rc = tg_store_get(cp->cp_store, key, strlen(key), &kv, NULL, err, errlen);
    if (rc != 0) return rc;
    if (!kv) return 1;
    if (mod_rev) *mod_rev = kv->kv_mod_rev;
    rc = tg_rpc_pb_unpack(d, kv->kv_val, kv->kv_val_len, out, err, errlen);
    if (rc != 0) tg_errf(err, errlen, rc, "store key %s: not a %s", key, d->name);
    tg_store_kv_free(kv);
    return rc;
}

int tg_cp_store_code(int store_err)
{
    switch (store_err) {
    case 0: return TG_RPC_CODE_OK;
    case TG_STORE_EINVAL: return TG_RPC_CODE_INVALID_ARGUMENT;
    case TG_STORE_ETOOBIG: return TG_RPC_CODE_RESOURCE_EXHAUSTED;
    case TG_STORE_EFULL: return TG_RPC_CODE_RESOURCE_EXHAUSTED;
    case TG_STORE_EUNAVAIL: return TG_RPC_CODE_UNAVAILABLE;
    case TG_STORE_EUNKNOWN: return TG_RPC_CODE_UNAVAILABLE;
    case TG_STORE_ECOMPACTED: return TG_RPC_CODE_ABORTED;
    case TG_STORE_ECLOSED: return TG_RPC_CODE_UNAVAILABLE;
    case TG_STORE_EIO: return TG_RPC_CODE_UNAVAILABLE; /* a full disk: retry once it has room */
    default: return TG_RPC_CODE_INTERNAL;
    }
}

/* ---- protobuf-c helpers --------------------------------------------------- */

int tg_cp_pb_set_str(char **slot, const char *v)
{
    char *n = tg_strdup(v ? v : "");
    if (!n) return -1;
    if (*slot && *slot != protobuf_c_empty_string) tg_free(*slot);
    *slot = n;
    return 0;
}

void tg_cp_pb_set_i64(ProtobufCMessage *m, const char *name, int64_t v)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
    if (f && f->type == PROTOBUF_C_TYPE_INT64 && f->label != PROTOBUF_C_LABEL_REPEATED)
        *(int64_t *)((char *)m + f->offset) = v;
}

/* ---- page tokens ---------------------------------------------------------- */

int tg_cp_page_token_encode(const char *id, char *out, size_t outlen)
{
    size_t n = strlen(id);
    if (outlen < 2 * n + 3) return -1;
    out[0] = 'p';
    out[1] = '1';
    tg_crypto_hex((const uint8_t *)id, n, out + 2);
    return 0;
}

int tg_cp_page_token_decode(const char *tok, char *out, size_t outlen)
{
    size_t n = strlen(tok);
    if (n < 4 || tok[0] != 'p' || tok[1] != '1' || (n - 2) % 2 != 0) return -1;
    n = (n - 2) / 2;
    if (n + 1 > outlen || n > TG_STORE_MAX_KEY / 2) return -1;
    if (tg_crypto_unhex(tok + 2, (uint8_t *)out, n) != 0) return -1;
    out[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20) return -1; /* ids never hold control bytes */
    return 0;
}

size_t tg_cp_page_size(uint32_t asked)
{
    if (asked == 0) return 100;
    return asked > 1000 ? 1000 : asked;
}

/* ---- CSV and time ----------------------------------------------------------- */

int tg_cp_csv_field(tg_buf_t *b, const char *field)
{
    const char *s = field ? field : "";
    int rc;
    if (!strpbrk(s, ",\"\r\n")) return tg_buf_puts(b, s);
    if ((rc = tg_buf_puts(b, "\"")) != 0) return rc;
    for (const char *p = s; *p; p++) {
        if (*p == '"' && (rc = tg_buf_puts(b, "\"")) != 0) return rc;
        if ((rc = tg_buf_append(b, p, 1)) != 0) return rc;
    }
    return tg_buf_puts(b, "\"");
}

void tg_cp_rfc3339(int64_t us, char out[32])
{
    struct tm tm;
    time_t s = (time_t)(us >= 0 ? us / 1000000 : (us - 999999) / 1000000);
    int64_t frac = us - (int64_t)s * 1000000;
    char date[24];
    gmtime_r(&s, &tm);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 32, "%.19s.%06dZ", date, (int)frac);
}

const char *tg_cp_route_type_name(int rt)
{
    switch (rt) {
    case 1: return "direct";
    case 2: return "pooled";
    default: return "";
    }
}
