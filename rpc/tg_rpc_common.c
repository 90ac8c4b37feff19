/* tg_rpc_common.c: the parts of rpc/ that servers and clients share: error
 * and status names, deadline and clock helpers, byte-buffer and metadata
 * conversions between Tollgate's types and the gRPC core's. */
#include <string.h>

#include "rpc/rpc_int.h"

const char *tg_rpc_strerror(int code)
{
    switch ((enum tg_rpc_error)code) {
    case TG_RPC_ENOMEM: return "TG_RPC_ENOMEM: out of memory";
    case TG_RPC_EINVAL: return "TG_RPC_EINVAL: invalid argument";
    case TG_RPC_ESTATE: return "TG_RPC_ESTATE: not allowed in this state";
    case TG_RPC_EBIND: return "TG_RPC_EBIND: cannot listen on the address";
    case TG_RPC_ETLS: return "TG_RPC_ETLS: bad TLS credentials";
    case TG_RPC_ECALL: return "TG_RPC_ECALL: the gRPC core refused the operation";
    case TG_RPC_ESTATUS: return "TG_RPC_ESTATUS: the call ended with a non-OK status";
    case TG_RPC_ETIMEDOUT: return "TG_RPC_ETIMEDOUT: timed out";
    case TG_RPC_ECANCELLED: return "TG_RPC_ECANCELLED: the call is cancelled or finished";
    case TG_RPC_EFULL: return "TG_RPC_EFULL: the stream's send queue is full";
    case TG_RPC_EPROTO: return "TG_RPC_EPROTO: malformed message";
    case TG_RPC_ESTOPPED: return "TG_RPC_ESTOPPED: stopped on request";
    case TG_RPC_ELAST: break;
    }
    return code == 0 ? "success" : "unknown tg_rpc error";
}

const char *tg_rpc_code_name(int code)
{
    if (code < 0 || code > TG_RPC_CODE_UNAUTHENTICATED)
        return "UNKNOWN_CODE";
    switch ((enum tg_rpc_code)code) {
    case TG_RPC_CODE_OK: return "OK";
    case TG_RPC_CODE_CANCELLED: return "CANCELLED";
    case TG_RPC_CODE_UNKNOWN: return "UNKNOWN";
    case TG_RPC_CODE_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case TG_RPC_CODE_DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case TG_RPC_CODE_NOT_FOUND: return "NOT_FOUND";
    case TG_RPC_CODE_ALREADY_EXISTS: return "ALREADY_EXISTS";
    case TG_RPC_CODE_PERMISSION_DENIED: return "PERMISSION_DENIED";
    case TG_RPC_CODE_RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case TG_RPC_CODE_FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case TG_RPC_CODE_ABORTED: return "ABORTED";
    case TG_RPC_CODE_OUT_OF_RANGE: return "OUT_OF_RANGE";
    case TG_RPC_CODE_UNIMPLEMENTED: return "UNIMPLEMENTED";
    case TG_RPC_CODE_INTERNAL: return "INTERNAL";
    case TG_RPC_CODE_UNAVAILABLE: return "UNAVAILABLE";
    case TG_RPC_CODE_DATA_LOSS: return "DATA_LOSS";
    case TG_RPC_CODE_UNAUTHENTICATED: return "UNAUTHENTICATED";
    }
    return "UNKNOWN_CODE";
}

gpr_timespec rpc_deadline(int timeout_ms)
{
    if (timeout_ms <= 0)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

void rpc_abstime(struct timespec *ts, int64_t timeout_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(timeout_ms / 1000);
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

int rpc_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    int rc = pthread_condattr_init(&a);
    if (rc != 0)
        return rc;
    rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

int rpc_bb_read(grpc_byte_buffer *bb, tg_buf_t *b)
{
    grpc_byte_buffer_reader rd;
    grpc_slice s;
    int rc = 0;

    tg_buf_reset(b);
    if (!grpc_byte_buffer_reader_init(&rd, bb))
        return TG_BUF_ENOMEM;
    /* Slice by slice: no extra contiguous copy inside the core. */
    while (rc == 0 && grpc_byte_buffer_reader_next(&rd, &s)) {
        rc = tg_buf_append(b, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&rd);
    return rc;
}

grpc_byte_buffer *rpc_bb_make(const void *data, size_t len)
{
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

int rpc_md_make(grpc_metadata *out, const tg_rpc_md_t *md, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        if (md[i].md_key == NULL || md[i].md_value == NULL) {
            rpc_md_free(out, i);
            return tg_errf(err, errlen, TG_RPC_EINVAL, "metadata entry %zu: NULL key or value", i);
        }
        size_t vlen = md[i].md_len ? md[i].md_len : strlen(md[i].md_value);
        out[i].key = grpc_slice_from_copied_string(md[i].md_key);
        out[i].value = grpc_slice_from_copied_buffer(md[i].md_value, vlen);
        if (!grpc_header_key_is_legal(out[i].key) ||
            (!grpc_is_binary_header(out[i].key) && !grpc_header_nonbin_value_is_legal(out[i].value))) {
            rpc_md_free(out, i + 1);
            return tg_errf(err, errlen, TG_RPC_EINVAL,
                           "metadata '%s': illegal key or value (keys are lowercase "
                           "[a-z0-9-_.], values printable ASCII unless the key ends in -bin)",
                           md[i].md_key);
        }
    }
    return 0;
}

void rpc_md_free(grpc_metadata *md, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        grpc_slice_unref(md[i].key);
        grpc_slice_unref(md[i].value);
    }
}

void rpc_arg_int(grpc_arg *args, size_t *n, const char *key, int value)
{
    args[*n].type = GRPC_ARG_INTEGER;
    args[*n].key = (char *)key; /* the core copies; it never writes */
    args[*n].value.integer = value;
    ++*n;
}
