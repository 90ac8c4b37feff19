/* tg_rpc: a small gRPC library over the gRPC C core (libgrpc 1.51).
 *
 * Tollgate speaks gRPC in two places: the control plane serves AdminService
 * and AgentService, and the agent and the tollctl CLI call them. This module
 * is everything those need and nothing more: payloads are bytes (serialized
 * protobuf; helpers at the end pack and unpack protobuf-c messages), handlers
 * are registered by full method path ("/tollgate.v1.AdminService/CreateAccount"),
 * and the subtle parts of the C core (batches, completion queues, tags, call
 * references, shutdown order) stay inside.
 *
 * SERVER THREADING MODEL
 *   - A server owns one completion queue and so_threads threads that drain it
 *     (default 4). Every handler runs on one of those threads, synchronously.
 *     A unary handler may block (store I/O) but then occupies a thread: size
 *     so_threads for the blocking you expect.
 *   - A server-streaming handler runs once when the call arrives. It may send
 *     a few messages and return a status, or return TG_RPC_KEEP and keep the
 *     call: then any thread (a store-watch thread, a worker) sends messages
 *     with tg_rpc_call_send() and ends the stream with tg_rpc_call_finish().
 *     A kept stream costs no thread.
 *   - When the client goes away (cancel, deadline, connection lost) or the
 *     server shuts down, the on_cancel callback registered for a kept stream
 *     runs once, on a server thread; the holder must then call
 *     tg_rpc_call_finish() (sends fail from then on with TG_RPC_ECANCELLED).
 *   - Thread-safe: tg_rpc_call_send, tg_rpc_call_finish, tg_rpc_call_cancelled,
 *     tg_rpc_server_port. Handler-only (the thread running the handler, before
 *     it returns): the tg_rpc_call_* accessors for metadata, peer, method,
 *     deadline, pool, headers/trailers, errorf and on_cancel.
 *   - Do not hold a lock that your on_cancel callback takes while calling
 *     tg_rpc_call_send with a timeout: the server threads that would make
 *     room may all be waiting for that lock in on_cancel.
 *   - Flow control: each stream has a send queue bounded by
 *     so_stream_queue_bytes. A message leaves the queue when the gRPC
 *     transport accepts it (HTTP/2 window permitting), so a slow client fills
 *     the queue and tg_rpc_call_send() waits (up to its timeout) or, with
 *     timeout 0 or when called on a server thread, fails with TG_RPC_EFULL
 *     rather than grow memory.
 *
 * CLIENT THREADING MODEL
 *   - A channel is thread-safe: any number of threads may call tg_rpc_unary()
 *     and open readers on it at once. Each call has its own completion queue
 *     and is driven by the calling thread (no hidden threads in this module;
 *     the gRPC core has its own I/O threads).
 *   - A reader (client side of a server stream) belongs to one thread, except
 *     tg_rpc_reader_cancel(), which any thread may call until destroy starts.
 *
 * ERRORS: functions return 0 (or a documented positive value) or a negative
 * TG_RPC_E* code, with a sentence in the caller's err buffer (first error
 * wins, see base/tg_base.h). gRPC status codes (TG_RPC_CODE_*) are a separate,
 * non-negative vocabulary: what a call ended with.
 *
 * MEMORY: every allocation of this module goes through tg_malloc & co.
 * (counted, fault-injectable); memory the gRPC core allocates is released by
 * the destroy functions. grpc_init()/grpc_shutdown() are called by servers
 * and channels themselves, so a process that destroys all of them leaves
 * nothing behind (ASan's leak check is clean).
 */
#ifndef TG_RPC_H
#define TG_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "base/tg_base.h"

/* ---- errors and status codes ------------------------------------------- */

enum tg_rpc_error {
    TG_RPC_ENOMEM = -1,     /* allocation failed */
    TG_RPC_EINVAL = -2,     /* bad argument (NULL, bad method path, bad key) */
    TG_RPC_ESTATE = -3,     /* wrong state (server already started, ...) */
    TG_RPC_EBIND = -4,      /* could not listen on the address */
    TG_RPC_ETLS = -5,       /* TLS credentials could not be made */
    TG_RPC_ECALL = -6,      /* the gRPC core refused an operation */
    TG_RPC_ESTATUS = -7,    /* the call ended with a non-OK status */
    TG_RPC_ETIMEDOUT = -8,  /* nothing arrived within the timeout */
    TG_RPC_ECANCELLED = -9, /* the call is cancelled or finished */
    TG_RPC_EFULL = -10,     /* the stream's send queue is full */
    TG_RPC_EPROTO = -11,    /* a message does not parse as the expected type */
    TG_RPC_ESTOPPED = -12,  /* stopped on request (tg_rpc_cancel_signal) */
    TG_RPC_ELAST = -13      /* sentinel: append new codes above */
};

/* Name of a TG_RPC_E* code ("TG_RPC_ETIMEDOUT: ..."). Never NULL. */
const char *tg_rpc_strerror(int code);

/* gRPC status codes: same numbers as grpc_status_code, so callers never
 * include the gRPC headers. */
enum tg_rpc_code {
    TG_RPC_CODE_OK = 0,
    TG_RPC_CODE_CANCELLED = 1,
    TG_RPC_CODE_UNKNOWN = 2,
    TG_RPC_CODE_INVALID_ARGUMENT = 3,
    TG_RPC_CODE_DEADLINE_EXCEEDED = 4,
    TG_RPC_CODE_NOT_FOUND = 5,
    TG_RPC_CODE_ALREADY_EXISTS = 6,
    TG_RPC_CODE_PERMISSION_DENIED = 7,
    TG_RPC_CODE_RESOURCE_EXHAUSTED = 8,
    TG_RPC_CODE_FAILED_PRECONDITION = 9,
    TG_RPC_CODE_ABORTED = 10,
    TG_RPC_CODE_OUT_OF_RANGE = 11,
    TG_RPC_CODE_UNIMPLEMENTED = 12,
    TG_RPC_CODE_INTERNAL = 13,
    TG_RPC_CODE_UNAVAILABLE = 14,
    TG_RPC_CODE_DATA_LOSS = 15,
    TG_RPC_CODE_UNAUTHENTICATED = 16
};

/* The status code's name: "INVALID_ARGUMENT" for 3; "UNKNOWN_CODE" for a
 * number outside 0..16. Never NULL. */
const char *tg_rpc_code_name(int code);

/* One metadata entry (a header). Keys are lowercase ASCII; keys ending in
 * "-bin" carry binary values. md_len 0 means strlen(md_value). */
typedef struct tg_rpc_md {
    const char *md_key;   /* e.g. "authorization" */
    const char *md_value; /* e.g. "Bearer tg-..." */
    size_t md_len;        /* bytes in md_value; 0: NUL-terminated */
} tg_rpc_md_t;

/* ---- server ------------------------------------------------------------- */

typedef struct tg_rpc_server tg_rpc_server_t;
/* One call on the server side: context for the handler, and for streams the
 * handle that sends messages and finishes. */
typedef struct tg_rpc_call tg_rpc_call_t;

typedef struct tg_rpc_server_opts {
    const char *so_addr;          /* "127.0.0.1:0" (NULL: that); port 0 picks one */
    int so_threads;               /* completion-queue threads; 0: 4 */
    const char *so_cert_pem;      /* TLS server certificate chain (PEM); NULL: insecure */
    const char *so_key_pem;       /* its private key (PEM) */
    const char *so_client_ca_pem; /* mTLS: require client certs signed by these roots */
    size_t so_stream_queue_bytes; /* per-stream send queue bound; 0: 1 MiB */
    int so_max_message_bytes;     /* largest message received; 0: 4 MiB */
    int so_keepalive_ms;          /* ping clients this often to find dead ones
                                   * (a vanished agent without a TCP reset);
                                   * 0: 60000, < 0: off. Clients may ping
                                   * every >= 1 s (co_keepalive_ms) */
} tg_rpc_server_opts_t;

/* A unary handler. req/req_len is the request (valid during the call). Append
 * the reply to `reply`. Return TG_RPC_CODE_OK, or a status code, ideally
 * through tg_rpc_call_errorf() so the client reads why. A reply is sent only
 * with OK. Runs on a server thread. */
typedef int (*tg_rpc_unary_fn)(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, tg_buf_t *reply,
                               void *arg);

/* Returned by a stream handler that keeps the call (see below). */
#define TG_RPC_KEEP 1000

/* A server-streaming handler: runs once when the call arrives, with its one
 * request. Either send messages with tg_rpc_call_send() (on this thread a
 * send never waits: TG_RPC_EFULL past the queue bound) and return a status
 * code (the stream ends with it after queued messages are written; the call
 * must not be touched afterwards), or return TG_RPC_KEEP: the caller keeps
 * the call and must end it exactly once with tg_rpc_call_finish(), from any
 * thread, usually after tg_rpc_call_on_cancel() told it the client left.
 * The handler may publish the call to other threads before it returns: the
 * call stays valid until the handler returns even if one of them finishes
 * it meanwhile (then sends fail with TG_RPC_ECANCELLED). */
typedef int (*tg_rpc_stream_fn)(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, void *arg);

/* Creates a server (not yet listening). opts may be NULL (insecure,
 * 127.0.0.1:0). The PEM strings are copied. Returns NULL with err set on bad
 * TLS options or no memory. Destroy with tg_rpc_server_destroy(). */
tg_rpc_server_t *tg_rpc_server_create(const tg_rpc_server_opts_t *opts, char *err, size_t errlen);

/* Registers a handler for a full method path ("/pkg.Service/Method"); the
 * path is copied, arg is passed to fn. Before tg_rpc_server_start only.
 * Errors: TG_RPC_EINVAL (bad path, duplicate), TG_RPC_ESTATE, TG_RPC_ENOMEM. */
int tg_rpc_server_add_unary(tg_rpc_server_t *srv, const char *method, tg_rpc_unary_fn fn, void *arg,
                            char *err, size_t errlen);
int tg_rpc_server_add_stream(tg_rpc_server_t *srv, const char *method, tg_rpc_stream_fn fn, void *arg,
                             char *err, size_t errlen);

/* Binds, listens and starts the threads. Methods nobody registered answer
 * UNIMPLEMENTED. Errors: TG_RPC_EBIND (address in use, bad address),
 * TG_RPC_ESTATE (started twice), TG_RPC_ENOMEM. */
int tg_rpc_server_start(tg_rpc_server_t *srv, char *err, size_t errlen);

/* The port actually bound (useful with port 0); 0 before start. */
int tg_rpc_server_port(const tg_rpc_server_t *srv);

/* Graceful shutdown: stops accepting calls and connections, lets calls in
 * flight finish for up to grace_ms, then cancels the rest (kept streams get
 * on_cancel and must be finished by their holders), waits for every call to
 * be released and joins the threads. Idempotent; call from a thread that is
 * not a server thread. Can't fail. */
void tg_rpc_server_shutdown(tg_rpc_server_t *srv, int grace_ms);

/* Shuts down (grace 5 s) if not done yet, and frees everything. Accepts
 * NULL. */
void tg_rpc_server_destroy(tg_rpc_server_t *srv);

/* ---- server call: context ---------------------------------------------- */

/* The full method path, e.g. "/tollgate.v1.AdminService/CreateAccount". */
const char *tg_rpc_call_method(const tg_rpc_call_t *call);

/* The first value of request metadata `key` (lowercase), NUL-terminated, or
 * NULL when absent; *len (may be NULL) gets its byte count (binary "-bin"
 * values may hold NULs). Valid until the call ends. */
const char *tg_rpc_call_metadata(const tg_rpc_call_t *call, const char *key, size_t *len);

/* Number of request metadata entries, and entry i (0-based): returns 0 and
 * fills the pointers, or TG_RPC_EINVAL when i is out of range. */
size_t tg_rpc_call_metadata_count(const tg_rpc_call_t *call);
int tg_rpc_call_metadata_at(const tg_rpc_call_t *call, size_t i, tg_rpc_md_t *out);

/* The peer address as gRPC writes it, e.g. "ipv4:127.0.0.1:53122". Not
 * authenticated: use tg_rpc_call_peer_identity() for that. Never NULL. */
const char *tg_rpc_call_peer(const tg_rpc_call_t *call);

/* The verified client certificate's common name on an mTLS connection, else
 * NULL. */
const char *tg_rpc_call_peer_identity(const tg_rpc_call_t *call);

/* Milliseconds left before the client's deadline: > 0, <= 0 when it passed,
 * or INT64_MAX when the client set none. */
int64_t tg_rpc_call_deadline_ms(const tg_rpc_call_t *call);

/* 1 once the call is cancelled (client cancel, deadline, connection lost,
 * server shutdown), else 0. Thread-safe. Useful in a long handler. */
int tg_rpc_call_cancelled(tg_rpc_call_t *call);

/* A memory pool that lives as long as the call. Handler thread only. */
tg_pool_t *tg_rpc_call_pool(tg_rpc_call_t *call);

/* Adds response metadata: headers go with the first message (or status),
 * trailers with the status. Key and value are copied. Handler thread, before
 * the first send. Errors: TG_RPC_EINVAL (illegal key or value),
 * TG_RPC_ESTATE (headers already sent), TG_RPC_ENOMEM. */
int tg_rpc_call_add_header(tg_rpc_call_t *call, const char *key, const char *value);
int tg_rpc_call_add_trailer(tg_rpc_call_t *call, const char *key, const char *value);

/* Sets the status message the client will read and returns `code`, so a
 * handler writes: return tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT,
 * "name: must not be empty"); The first message set wins. */
int tg_rpc_call_errorf(tg_rpc_call_t *call, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- server call: streaming -------------------------------------------- */

/* Queues one message (data is copied). Waits up to timeout_ms (< 0: no
 * limit) while the queue is full; never waits on a server thread.
 * Thread-safe. Errors: TG_RPC_ECANCELLED (client gone, or already
 * finished), TG_RPC_EFULL (still full at the timeout), TG_RPC_ENOMEM,
 * TG_RPC_EINVAL (a unary call). */
int tg_rpc_call_send(tg_rpc_call_t *call, const void *data, size_t len, int timeout_ms);

/* Ends a kept stream with a status (message may be NULL) once the queued
 * messages are written; releases the caller's hold: `call` must not be used
 * after this returns. Exactly once per kept stream, from any thread, also
 * after the client left (then nothing is sent). Can't fail. */
void tg_rpc_call_finish(tg_rpc_call_t *call, int code, const char *message);

/* Registers fn(call, arg) to run once when a kept stream is cancelled
 * (client gone, deadline, server shutdown) before it was finished. Runs on a
 * server thread and may race with the holder's own tg_rpc_call_finish():
 * `call` stays valid during fn, but fn must finish it only if the holder has
 * not (typically: remove it from a locked list; finish if it was there).
 * If the client left before fn was registered, fn runs right after the
 * handler returns TG_RPC_KEEP. Handler thread only. */
void tg_rpc_call_on_cancel(tg_rpc_call_t *call, void (*fn)(tg_rpc_call_t *call, void *arg), void *arg);

/* ---- client ------------------------------------------------------------- */

typedef struct tg_rpc_channel tg_rpc_channel_t;

typedef struct tg_rpc_channel_opts {
    int co_tls;               /* 1: TLS (also implied by co_root_pem) */
    const char *co_root_pem;  /* trusted roots (PEM); NULL with co_tls: system roots */
    const char *co_cert_pem;  /* mTLS client certificate chain (PEM), or NULL */
    const char *co_key_pem;   /* its private key */
    const char *co_tls_name;  /* expected server name if not the target host */
    int co_reconnect_min_ms;  /* gRPC reconnect backoff bounds; 0: core */
    int co_reconnect_max_ms;  /*   defaults (1 s .. 120 s); a connection
                               *   attempt may take max(2 s, min) */
    int co_keepalive_ms;      /* HTTP/2 ping interval to detect a dead server
                               * on an idle stream; 0: off; >= 1000 */
    int co_max_message_bytes; /* largest message received; 0: 4 MiB */
} tg_rpc_channel_opts_t;

/* A channel to target ("127.0.0.1:7443", "dns:///cp.example:443"). It
 * connects lazily and reconnects on its own. opts may be NULL (insecure).
 * Returns NULL with err set. Destroy with tg_rpc_channel_destroy(). */
tg_rpc_channel_t *tg_rpc_channel_create(const char *target, const tg_rpc_channel_opts_t *opts, char *err,
                                        size_t errlen);
/* Closes the channel (calls still running on it fail). Accepts NULL. */
void tg_rpc_channel_destroy(tg_rpc_channel_t *ch);

/* Connects ch if it is not connected and waits up to timeout_ms for it to
 * be ready. Returns 1 when ready, 0 when not within the timeout (nothing was
 * sent on it then: a caller that must know whether a write went out checks
 * this before the call). Thread-safe. */
int tg_rpc_channel_ready(tg_rpc_channel_t *ch, int timeout_ms);

/* What a unary call brought back. Free with tg_rpc_result_free(). */
typedef struct tg_rpc_result {
    int rs_code;        /* TG_RPC_CODE_* the call ended with */
    char *rs_message;   /* status message ("" when none) */
    uint8_t *rs_data;   /* reply bytes (NULL unless rs_code is OK) */
    size_t rs_len;      /* bytes in rs_data */
    tg_rpc_md_t *rs_md; /* response headers then trailers; strings owned */
    size_t rs_nmd;      /* entries in rs_md */
} tg_rpc_result_t;

/* Frees what a result holds and zeroes it. Accepts NULL. */
void tg_rpc_result_free(tg_rpc_result_t *res);

/* The first response header or trailer named key, or NULL. */
const char *tg_rpc_result_metadata(const tg_rpc_result_t *res, const char *key);

/* A unary call: sends req with metadata md[0..nmd), waits at most
 * timeout_ms (<= 0: no deadline) and fills *res (zeroed first; free it with
 * tg_rpc_result_free in every case). Returns 0 when the status is OK,
 * TG_RPC_ESTATUS when the server (or the core: DEADLINE_EXCEEDED,
 * UNAVAILABLE) ended it otherwise, with "CODE: message" in err, or
 * TG_RPC_EINVAL/ENOMEM/ECALL. Thread-safe. */
int tg_rpc_unary(tg_rpc_channel_t *ch, const char *method, const tg_rpc_md_t *md, size_t nmd, const void *req,
                 size_t req_len, int timeout_ms, tg_rpc_result_t *res, char *err, size_t errlen);

/* ---- client: server streams -------------------------------------------- */

typedef struct tg_rpc_reader tg_rpc_reader_t;

/* Starts a server-streaming call. timeout_ms <= 0: no deadline (a Sync
 * stream lives for hours). Returns the reader in *out (destroy with
 * tg_rpc_reader_destroy) or a negative code; connection errors surface at
 * the first tg_rpc_reader_next(). */
int tg_rpc_reader_open(tg_rpc_channel_t *ch, const char *method, const tg_rpc_md_t *md, size_t nmd,
                       const void *req, size_t req_len, int timeout_ms, tg_rpc_reader_t **out, char *err,
                       size_t errlen);

/* Waits up to timeout_ms (< 0: no limit) for the next message and puts it
 * in msg (reset first). Returns 1 with a message, 0 when the stream ended
 * with status OK, TG_RPC_ETIMEDOUT (nothing yet: the stream goes on; call
 * again), TG_RPC_ESTATUS (ended otherwise: see tg_rpc_reader_status),
 * TG_RPC_ENOMEM (message larger than msg's maximum: the stream is cancelled). */
int tg_rpc_reader_next(tg_rpc_reader_t *r, int timeout_ms, tg_buf_t *msg, char *err, size_t errlen);

/* After next returned 0 or TG_RPC_ESTATUS: the status code and message
 * (valid until destroy); -1 and "" before. */
int tg_rpc_reader_status(const tg_rpc_reader_t *r, const char **message);

/* Cancels the call: the server sees the client leave, and next returns
 * TG_RPC_ESTATUS with CANCELLED. Any thread, until destroy starts. */
void tg_rpc_reader_cancel(tg_rpc_reader_t *r);

/* Cancels if still open, waits for the core to let go, frees. Accepts NULL. */
void tg_rpc_reader_destroy(tg_rpc_reader_t *r);

/* ---- client: a stream that survives server restarts ------------------- */

/* A cancel token: lets another thread stop tg_rpc_stream_run (and wake its
 * backoff sleep). tg_rpc_cancel_signal is thread-safe. */
typedef struct tg_rpc_cancel tg_rpc_cancel_t;
tg_rpc_cancel_t *tg_rpc_cancel_create(void); /* NULL on no memory; free with _destroy */
void tg_rpc_cancel_signal(tg_rpc_cancel_t *c);
int tg_rpc_cancel_signalled(tg_rpc_cancel_t *c);
void tg_rpc_cancel_destroy(tg_rpc_cancel_t *c); /* accepts NULL */

/* Capped exponential backoff with jitter: attempt n (0-based) waits
 * min(max_ms, initial_ms * multiplier^n) scaled by a uniform factor in
 * [1 - jitter, 1 + jitter], capped at max_ms. */
typedef struct tg_rpc_backoff {
    int bo_initial_ms;    /* first delay; 0: 100 */
    int bo_max_ms;        /* cap; 0: 30000 */
    double bo_multiplier; /* growth; 0: 2.0 */
    double bo_jitter;     /* 0..1; 0: 0.2 (use a tiny value for none) */
} tg_rpc_backoff_t;

/* The delay before reconnect attempt `attempt`; *seed is a PRNG state the
 * caller keeps. b may be NULL (defaults). Can't fail. */
int tg_rpc_backoff_delay_ms(const tg_rpc_backoff_t *b, int attempt, uint64_t *seed);

typedef struct tg_rpc_stream_opts {
    const char *sr_method;    /* full method path */
    const tg_rpc_md_t *sr_md; /* metadata sent on every attempt */
    size_t sr_nmd;
    /* Builds the request for each attempt (e.g. Sync asks "from version V"),
     * appending to req. Return 0, or nonzero to stop the run. NULL: send
     * sr_req as is. */
    int (*sr_request)(void *arg, tg_buf_t *req);
    const void *sr_req; /* the fixed request when sr_request is NULL */
    size_t sr_req_len;
    /* Each message received. Return 0 to go on, nonzero to stop. */
    int (*sr_on_message)(void *arg, const uint8_t *data, size_t len);
    /* Each time an attempt ends, with its status and the delay before the
     * next one. Return 0 to reconnect, nonzero to stop. May be NULL
     * (always reconnect). */
    int (*sr_on_status)(void *arg, int code, const char *message, int next_delay_ms);
    void *sr_arg;
    tg_rpc_backoff_t sr_backoff; /* reset after an attempt that got a message */
    size_t sr_max_message_bytes; /* 0: 4 MiB */
    tg_rpc_cancel_t *sr_cancel;  /* optional: stops the run from another thread */
} tg_rpc_stream_opts_t;

/* Runs a server-streaming call and reopens it whenever it ends (server gone,
 * restarted, stream finished), waiting a backoff delay between attempts.
 * Blocks until a callback asks to stop (returns 0) or sr_cancel is
 * signalled (returns TG_RPC_ESTOPPED). Other errors: TG_RPC_EINVAL,
 * TG_RPC_ENOMEM. */
int tg_rpc_stream_run(tg_rpc_channel_t *ch, const tg_rpc_stream_opts_t *opts, char *err, size_t errlen);

/* ---- protobuf-c helpers ------------------------------------------------- */

struct ProtobufCMessage;
struct ProtobufCMessageDescriptor;

/* Appends msg, serialized, to out. Errors: TG_RPC_ENOMEM (or out's maximum
 * passed), TG_RPC_EINVAL. */
int tg_rpc_pb_pack(const struct ProtobufCMessage *msg, tg_buf_t *out, char *err, size_t errlen);

/* Parses data as a message of type desc into *out (allocated through
 * tg_malloc; free with tg_rpc_pb_free). Errors: TG_RPC_EPROTO naming the
 * type, TG_RPC_EINVAL. */
int tg_rpc_pb_unpack(const struct ProtobufCMessageDescriptor *desc, const void *data, size_t len,
                     struct ProtobufCMessage **out, char *err, size_t errlen);

/* Frees a message from tg_rpc_pb_unpack. Accepts NULL. */
void tg_rpc_pb_free(struct ProtobufCMessage *msg);

/* tg_rpc_unary with protobuf-c messages: packs req, and when the status is
 * OK parses the reply as reply_desc into *reply (free with tg_rpc_pb_free;
 * NULL otherwise). res is filled as by tg_rpc_unary (status, message,
 * metadata; free it in every case). Errors: those of tg_rpc_unary, plus
 * TG_RPC_EPROTO when the reply does not parse. Thread-safe. */
int tg_rpc_unary_pb(tg_rpc_channel_t *ch, const char *method, const tg_rpc_md_t *md, size_t nmd,
                    const struct ProtobufCMessage *req, const struct ProtobufCMessageDescriptor *reply_desc,
                    struct ProtobufCMessage **reply, int timeout_ms, tg_rpc_result_t *res, char *err,
                    size_t errlen);

/* tg_rpc_call_send of a packed message. Same errors, plus TG_RPC_EINVAL. */
int tg_rpc_call_send_pb(tg_rpc_call_t *call, const struct ProtobufCMessage *msg, int timeout_ms);

#endif
