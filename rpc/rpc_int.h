/* rpc_int.h: what the rpc/ sources share and callers never see: the gRPC
 * core headers, time conversions, byte-buffer copies and the CLOCK_MONOTONIC
 * condition variables every wait in this module uses. */
#ifndef TG_RPC_INT_H
#define TG_RPC_INT_H

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <time.h>

#include "rpc/tg_rpc.h"

/* A gRPC deadline timeout_ms from now; <= 0 means none. */
gpr_timespec rpc_deadline(int timeout_ms);

/* An absolute CLOCK_MONOTONIC time timeout_ms from now, for
 * pthread_cond_timedwait on a condition made by rpc_cond_init. */
void rpc_abstime(struct timespec *ts, int64_t timeout_ms);
int rpc_cond_init(pthread_cond_t *cv);

/* Copies a byte buffer into b (reset first). Returns 0 or TG_BUF_E*. */
int rpc_bb_read(grpc_byte_buffer *bb, tg_buf_t *b);

/* A byte buffer holding a copy of data (never NULL: the core aborts on
 * out-of-memory). Destroy with grpc_byte_buffer_destroy. */
grpc_byte_buffer *rpc_bb_make(const void *data, size_t len);

/* Fills md (count entries, zeroed by the caller) with copied slices of the
 * caller's entries; rpc_md_free unrefs them. Returns 0 or TG_RPC_EINVAL for
 * an illegal key or value, with err set. */
int rpc_md_make(grpc_metadata *out, const tg_rpc_md_t *md, size_t n, char *err, size_t errlen);
void rpc_md_free(grpc_metadata *md, size_t n);

/* Appends the integer channel argument key=value at args[*n] and counts it;
 * the caller sized args. key must outlive the channel args' use. */
void rpc_arg_int(grpc_arg *args, size_t *n, const char *key, int value);

#endif
