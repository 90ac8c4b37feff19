/* tg_rpc_server.c: the gRPC server side of rpc/: method registration,
 * completion-queue threads, the life of one call (request, handler, queued
 * writes, status, close) and graceful shutdown.
 *
 * How a call lives. For every method a few grpc_server_request_registered_call
 * requests wait on the one completion queue (plus one grpc_server_request_call
 * that answers UNIMPLEMENTED for unknown methods). When one completes, a
 * server thread re-arms it, starts RECV_CLOSE_ON_SERVER (which completes when
 * the call is over, and says whether it was cancelled: that is how a stream
 * learns its client left), copies the metadata and runs the handler.
 * Everything sent goes through one path, pump(): a queue of messages, at most
 * one send batch in flight, the status riding with the last message. A call
 * is freed when its references drop to zero: one for the handler or the
 * holder of a kept stream, one for the close op, one for a send in flight.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "rpc/rpc_int.h"

/* Requests kept waiting per method: a burst of calls is matched without
 * waiting for a thread to re-arm. */
#define REQUESTS_PER_METHOD 2
#define REPLY_MAX ((size_t)64 << 20)

enum tag_kind { TAG_NEW, TAG_CLOSE, TAG_SEND, TAG_SHUTDOWN };

typedef struct tag {
    enum tag_kind t_kind;
    struct tg_rpc_call *t_call; /* NULL for TAG_SHUTDOWN */
} tag_t;

typedef struct method {
    struct method *m_next;
    char *m_path;
    void *m_handle; /* from grpc_server_register_method */
    int m_stream;
    tg_rpc_unary_fn m_unary;
    tg_rpc_stream_fn m_streamfn;
    void *m_arg;
    atomic_int m_missing; /* requests arm() failed to make */
} method_t;

typedef struct qmsg {
    struct qmsg *q_next;
    grpc_byte_buffer *q_bb;
    size_t q_len;
} qmsg_t;

struct tg_rpc_server {
    char *s_addr, *s_cert, *s_key, *s_ca;
    int s_nthreads;
    size_t s_queue_max;
    int s_max_msg;
    int s_keepalive; /* ms; <= 0: off */
    method_t *s_methods;
    grpc_server *s_gs;
    grpc_completion_queue *s_cq;
    pthread_t *s_threads;
    int s_started_threads;
    int s_port;
    int s_started;
    int s_shut;            /* tg_rpc_server_shutdown ran */
    atomic_int s_stopping; /* no more requests are armed */
    atomic_int s_missing;  /* requests to re-arm, all methods */
    atomic_int s_unreg_missing;
    atomic_int s_live; /* calls received and not yet freed */
    tag_t s_tshutdown;
    int s_shutdown_done;
    pthread_mutex_t s_mu;
    pthread_cond_t s_cv;
};

struct tg_rpc_call {
    tg_rpc_server_t *c_srv;
    method_t *c_m; /* NULL: unregistered method */
    grpc_call *c_gc;
    gpr_timespec c_deadline;
    grpc_metadata_array c_reqmd;
    grpc_byte_buffer *c_payload;
    grpc_call_details c_details;
    tag_t c_tnew, c_tclose, c_tsend;
    int c_close_cancelled; /* out of RECV_CLOSE_ON_SERVER */

    tg_pool_t *c_pool;
    tg_rpc_md_t *c_md; /* request metadata copied into the pool */
    size_t c_nmd;
    const char *c_method;
    char *c_peer, *c_identity;
    int c_identity_done;

    pthread_mutex_t c_mu;
    pthread_cond_t c_cv; /* senders waiting for queue room */
    int c_refs;
    grpc_metadata *c_hdr, *c_trl;
    size_t c_nhdr, c_ntrl;
    int c_hdr_sent;
    int c_code;
    char *c_msg; /* from tg_rpc_call_errorf, tg_malloc'd */
    grpc_slice c_status;
    int c_status_set;
    qmsg_t *c_qhead, *c_qtail;
    size_t c_qbytes;
    grpc_byte_buffer *c_sending;
    int c_inflight, c_finishing, c_status_sent, c_cancelled, c_closed, c_held;
    void (*c_on_cancel)(tg_rpc_call_t *, void *);
    void *c_on_cancel_arg;
    int c_cancel_fired;
};

/* Set on server threads: a send there must never wait, since the thread
 * that would drain the queue may be this one. */
static _Thread_local int on_server_thread;

/* ---- call lifetime ------------------------------------------------------ */

static void drop_queue(tg_rpc_call_t *c)
{
    while (c->c_qhead) {
        qmsg_t *q = c->c_qhead;
        c->c_qhead = q->q_next;
        grpc_byte_buffer_destroy(q->q_bb);
        tg_free(q);
    }
    c->c_qtail = NULL;
    c->c_qbytes = 0;
}

static void call_free(tg_rpc_call_t *c)
{
    if (c->c_gc)
        atomic_fetch_sub(&c->c_srv->s_live, 1);
    drop_queue(c);
    if (c->c_sending)
        grpc_byte_buffer_destroy(c->c_sending);
    if (c->c_payload)
        grpc_byte_buffer_destroy(c->c_payload);
    grpc_metadata_array_destroy(&c->c_reqmd);
    grpc_call_details_destroy(&c->c_details);
    if (c->c_gc)
        grpc_call_unref(c->c_gc);
    rpc_md_free(c->c_hdr, c->c_nhdr);
    rpc_md_free(c->c_trl, c->c_ntrl);
    tg_free(c->c_hdr);
    tg_free(c->c_trl);
    if (c->c_status_set)
        grpc_slice_unref(c->c_status);
    if (c->c_peer)
        gpr_free(c->c_peer);
    tg_free(c->c_identity);
    tg_free(c->c_msg);
    tg_pool_destroy(c->c_pool);
    pthread_mutex_destroy(&c->c_mu);
    pthread_cond_destroy(&c->c_cv);
    tg_free(c);
}

/* Drops one reference; the caller holds c_mu, which this releases. */
static void unref_unlock(tg_rpc_call_t *c)
{
    int last = --c->c_refs == 0;
    pthread_mutex_unlock(&c->c_mu);
    if (last)
        call_free(c);
}

/* Starts the next send batch if none is in flight: the next queued message,
 * and the status once finishing and the queue is empty (with the last
 * message when possible: a unary reply is one batch). c_mu held. */
static void pump(tg_rpc_call_t *c)
{
    grpc_op ops[3];
    size_t n = 0;
    int with_status = 0;

    if (c->c_inflight || c->c_cancelled || c->c_status_sent)
        return;
    memset(ops, 0, sizeof ops);
    if (c->c_qhead) {
        qmsg_t *q = c->c_qhead;
        c->c_qhead = q->q_next;
        if (!c->c_qhead)
            c->c_qtail = NULL;
        c->c_qbytes -= q->q_len;
        c->c_sending = q->q_bb;
        tg_free(q);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->c_sending;
        /* More is queued behind it: let the transport coalesce the writes.
         * The last queued message goes without the hint, which flushes. */
        if (c->c_qhead)
            ops[n].flags = GRPC_WRITE_BUFFER_HINT;
        n++;
        pthread_cond_broadcast(&c->c_cv); /* room in the queue */
    }
    if (c->c_finishing && !c->c_qhead) {
        if (!c->c_status_set) {
            const char *m = c->c_msg                      ? c->c_msg
                            : c->c_code == TG_RPC_CODE_OK ? ""
                                                          : tg_rpc_code_name(c->c_code);
            c->c_status = grpc_slice_from_copied_string(m);
            c->c_status_set = 1;
        }
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = (grpc_status_code)c->c_code;
        ops[n].data.send_status_from_server.status_details = &c->c_status;
        ops[n].data.send_status_from_server.trailing_metadata = c->c_trl;
        ops[n].data.send_status_from_server.trailing_metadata_count = c->c_ntrl;
        n++;
        with_status = 1;
    }
    if (n == 0)
        return;
    if (!c->c_hdr_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n].data.send_initial_metadata.metadata = c->c_hdr;
        ops[n].data.send_initial_metadata.count = c->c_nhdr;
        n++;
        c->c_hdr_sent = 1;
    }
    grpc_call_error e = grpc_call_start_batch(c->c_gc, ops, n, &c->c_tsend, NULL);
    if (e != GRPC_CALL_OK) {
        /* The core refuses only on misuse or a dead call: give up sending;
         * the close op still completes and frees the call. */
        fprintf(stderr, "tg_rpc: %s: send batch refused: %s\n", c->c_method, grpc_call_error_to_string(e));
        if (c->c_sending)
            grpc_byte_buffer_destroy(c->c_sending);
        c->c_sending = NULL;
        c->c_cancelled = 1;
        drop_queue(c);
        grpc_call_cancel(c->c_gc, NULL);
        return;
    }
    c->c_inflight = 1;
    c->c_refs++;
    if (with_status)
        c->c_status_sent = 1;
}

/* Marks the end of the caller's hold and sends the status (after queued
 * messages). c_mu held; releases it. */
static void finish_unlock(tg_rpc_call_t *c, int code, const char *message)
{
    if (c->c_finishing) { /* a second finish: a caller bug, but harmless */
        pthread_mutex_unlock(&c->c_mu);
        return;
    }
    if (code < 0 || code > TG_RPC_CODE_UNAUTHENTICATED) {
        code = TG_RPC_CODE_INTERNAL;
        message = "handler returned an invalid status code";
    }
    c->c_finishing = 1;
    c->c_code = code;
    if (message) {
        tg_free(c->c_msg);
        c->c_msg = tg_strdup(message); /* NULL on no memory: the code name is sent */
    }
    pump(c);
    c->c_held = 0;
    unref_unlock(c);
}

void tg_rpc_call_finish(tg_rpc_call_t *c, int code, const char *message)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->c_mu);
    finish_unlock(c, code, message);
}

/* ---- requests ----------------------------------------------------------- */

/* Arms one request for method m (NULL: unregistered methods). Failure only
 * means one fewer waiting request; it is logged. */
static void arm(tg_rpc_server_t *srv, method_t *m)
{
    if (atomic_load(&srv->s_stopping))
        return;
    tg_rpc_call_t *c = tg_calloc(1, sizeof *c);
    if (!c)
        goto fail;
    c->c_srv = srv;
    c->c_m = m;
    c->c_tnew = (tag_t){TAG_NEW, c};
    c->c_tclose = (tag_t){TAG_CLOSE, c};
    c->c_tsend = (tag_t){TAG_SEND, c};
    grpc_metadata_array_init(&c->c_reqmd);
    grpc_call_details_init(&c->c_details);
    pthread_mutex_init(&c->c_mu, NULL);
    if (rpc_cond_init(&c->c_cv) != 0) {
        pthread_mutex_destroy(&c->c_mu);
        grpc_metadata_array_destroy(&c->c_reqmd);
        grpc_call_details_destroy(&c->c_details);
        tg_free(c);
        c = NULL;
        goto fail;
    }
    grpc_call_error e;
    if (m)
        e = grpc_server_request_registered_call(srv->s_gs, m->m_handle, &c->c_gc, &c->c_deadline, &c->c_reqmd,
                                                &c->c_payload, srv->s_cq, srv->s_cq, &c->c_tnew);
    else
        e = grpc_server_request_call(srv->s_gs, &c->c_gc, &c->c_details, &c->c_reqmd, srv->s_cq, srv->s_cq,
                                     &c->c_tnew);
    if (e != GRPC_CALL_OK) {
        call_free(c);
        c = NULL;
        goto fail;
    }
    return;
fail:
    /* Without this request the method would take one call fewer at a time
     * (none, eventually): count it, and rearm() retries within a second. */
    atomic_fetch_add(m ? &m->m_missing : &srv->s_unreg_missing, 1);
    atomic_fetch_add(&srv->s_missing, 1);
}

/* Re-arms the requests that arm() could not make. */
static void rearm(tg_rpc_server_t *srv)
{
    for (method_t *m = srv->s_methods;; m = m->m_next) {
        atomic_int *miss = m ? &m->m_missing : &srv->s_unreg_missing;
        int n = atomic_exchange(miss, 0);
        atomic_fetch_sub(&srv->s_missing, n);
        while (n-- > 0)
            arm(srv, m); /* counts itself again if it fails */
        if (!m)
            break;
    }
}

/* Copies request metadata into the call's pool so accessors hand out
 * NUL-terminated strings. Returns 0 or -1 (no memory). */
static int copy_metadata(tg_rpc_call_t *c)
{
    c->c_nmd = c->c_reqmd.count;
    if (c->c_nmd == 0)
        return 0;
    c->c_md = tg_pool_calloc(c->c_pool, c->c_nmd * sizeof *c->c_md);
    if (!c->c_md)
        return -1;
    for (size_t i = 0; i < c->c_nmd; i++) {
        grpc_metadata *g = &c->c_reqmd.metadata[i];
        c->c_md[i].md_key =
            tg_pool_strndup(c->c_pool, (const char *)GRPC_SLICE_START_PTR(g->key), GRPC_SLICE_LENGTH(g->key));
        char *v = tg_pool_alloc(c->c_pool, GRPC_SLICE_LENGTH(g->value) + 1);
        if (!c->c_md[i].md_key || !v)
            return -1;
        memcpy(v, GRPC_SLICE_START_PTR(g->value), GRPC_SLICE_LENGTH(g->value));
        v[GRPC_SLICE_LENGTH(g->value)] = '\0';
        c->c_md[i].md_value = v;
        c->c_md[i].md_len = GRPC_SLICE_LENGTH(g->value);
    }
    return 0;
}

/* A request completed: a new call. Runs its handler on this thread. */
static void on_new(tg_rpc_call_t *c, int ok)
{
    tg_rpc_server_t *srv = c->c_srv;
    tg_buf_t req, reply;
    int code;

    if (!ok) { /* the server is shutting down: no call came */
        call_free(c);
        return;
    }
    atomic_fetch_add(&srv->s_live, 1);
    arm(srv, c->c_m);
    tg_buf_init(&req, (size_t)srv->s_max_msg);
    tg_buf_init(&reply, REPLY_MAX);

    /* Three references: the holder's (dropped by finish; for a kept
     * stream that is the application's), the close op's, and this
     * function's own, so the call outlives a handler that published it to
     * a thread which finished it before the handler returned. */
    c->c_refs = 3;
    c->c_held = 1;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->c_close_cancelled;
    if (grpc_call_start_batch(c->c_gc, &op, 1, &c->c_tclose, NULL) != GRPC_CALL_OK) {
        /* Cannot happen on a fresh call; if it does, drop the call. */
        grpc_call_cancel(c->c_gc, NULL);
        call_free(c);
        return;
    }

    c->c_pool = tg_pool_create(1024); /* metadata and peer: small; many Sync streams stay open */
    if (c->c_m) {
        c->c_method = c->c_m->m_path;
    } else {
        char *m = grpc_slice_to_c_string(c->c_details.method);
        c->c_method = c->c_pool ? tg_pool_strndup(c->c_pool, m, strlen(m)) : NULL;
        gpr_free(m);
        c->c_deadline = c->c_details.deadline;
    }
    if (!c->c_pool || !c->c_method || copy_metadata(c) != 0) {
        pthread_mutex_lock(&c->c_mu);
        finish_unlock(c, TG_RPC_CODE_RESOURCE_EXHAUSTED, "server out of memory");
        goto done;
    }
    if (!c->c_m) {
        tg_rpc_call_errorf(c, TG_RPC_CODE_UNIMPLEMENTED, "unknown method %s", c->c_method);
        pthread_mutex_lock(&c->c_mu);
        finish_unlock(c, TG_RPC_CODE_UNIMPLEMENTED, NULL);
        goto done;
    }
    if (!c->c_payload) {
        pthread_mutex_lock(&c->c_mu);
        finish_unlock(c, TG_RPC_CODE_INVALID_ARGUMENT, "the call carried no request message");
        goto done;
    }
    if (rpc_bb_read(c->c_payload, &req) != 0) {
        pthread_mutex_lock(&c->c_mu);
        finish_unlock(c, TG_RPC_CODE_RESOURCE_EXHAUSTED, "request too large or out of memory");
        goto done;
    }
    grpc_byte_buffer_destroy(c->c_payload);
    c->c_payload = NULL;
    const uint8_t *rq = req.b_data ? (const uint8_t *)req.b_data : (const uint8_t *)"";

    if (!c->c_m->m_stream) {
        code = c->c_m->m_unary(c, rq, req.b_len, &reply, c->c_m->m_arg);
        pthread_mutex_lock(&c->c_mu);
        if (code == TG_RPC_CODE_OK && !c->c_cancelled) {
            qmsg_t *q = tg_malloc(sizeof *q);
            if (!q) {
                finish_unlock(c, TG_RPC_CODE_RESOURCE_EXHAUSTED, "server out of memory");
                goto done;
            }
            q->q_bb = rpc_bb_make(reply.b_data ? reply.b_data : "", reply.b_len);
            q->q_len = reply.b_len;
            q->q_next = NULL;
            c->c_qhead = c->c_qtail = q;
        }
        finish_unlock(c, code, NULL);
    } else {
        code = c->c_m->m_streamfn(c, rq, req.b_len, c->c_m->m_arg);
        if (code != TG_RPC_KEEP) {
            pthread_mutex_lock(&c->c_mu);
            finish_unlock(c, code, NULL);
        }
        /* else: the holder keeps its reference until tg_rpc_call_finish. */
    }
done:
    tg_buf_free(&req);
    tg_buf_free(&reply);
    pthread_mutex_lock(&c->c_mu);
    /* The client left before the handler registered on_cancel: on_close
     * found no callback then, so run it now that the handler is done. */
    void (*fn)(tg_rpc_call_t *, void *) = NULL;
    if (c->c_closed && c->c_cancelled && c->c_held && !c->c_finishing && c->c_on_cancel &&
        !c->c_cancel_fired) {
        c->c_cancel_fired = 1;
        fn = c->c_on_cancel;
    }
    pthread_mutex_unlock(&c->c_mu);
    if (fn)
        fn(c, c->c_on_cancel_arg);
    pthread_mutex_lock(&c->c_mu);
    unref_unlock(c);
}

/* RECV_CLOSE_ON_SERVER completed: the call is over on the wire. */
static void on_close(tg_rpc_call_t *c)
{
    void (*fn)(tg_rpc_call_t *, void *) = NULL;

    pthread_mutex_lock(&c->c_mu);
    c->c_closed = 1;
    if (c->c_close_cancelled || !c->c_status_sent) {
        c->c_cancelled = 1;
        drop_queue(c);
        pthread_cond_broadcast(&c->c_cv);
    }
    if (c->c_held && !c->c_finishing && c->c_on_cancel && !c->c_cancel_fired) {
        c->c_cancel_fired = 1;
        fn = c->c_on_cancel;
    }
    pthread_mutex_unlock(&c->c_mu);
    /* The close op's reference keeps c alive while fn runs. */
    if (fn)
        fn(c, c->c_on_cancel_arg);
    pthread_mutex_lock(&c->c_mu);
    unref_unlock(c);
}

static void on_send(tg_rpc_call_t *c, int ok)
{
    pthread_mutex_lock(&c->c_mu);
    c->c_inflight = 0;
    if (c->c_sending)
        grpc_byte_buffer_destroy(c->c_sending);
    c->c_sending = NULL;
    if (!ok) { /* the stream is gone */
        c->c_cancelled = 1;
        drop_queue(c);
        pthread_cond_broadcast(&c->c_cv);
    } else {
        pump(c);
    }
    unref_unlock(c);
}

static void *serve(void *arg)
{
    tg_rpc_server_t *srv = arg;
    on_server_thread = 1;
    for (;;) {
        /* Wake at least once a second to re-arm requests lost to an
         * allocation failure. */
        grpc_event ev = grpc_completion_queue_next(srv->s_cq, rpc_deadline(1000), NULL);
        if (atomic_load(&srv->s_missing) > 0)
            rearm(srv);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        tag_t *t = ev.tag;
        switch (t->t_kind) {
        case TAG_NEW: on_new(t->t_call, ev.success); break;
        case TAG_CLOSE: on_close(t->t_call); break;
        case TAG_SEND: on_send(t->t_call, ev.success); break;
        case TAG_SHUTDOWN:
            pthread_mutex_lock(&srv->s_mu);
            srv->s_shutdown_done = 1;
            pthread_cond_broadcast(&srv->s_cv);
            pthread_mutex_unlock(&srv->s_mu);
            break;
        }
    }
    return NULL;
}

/* ---- server ------------------------------------------------------------- */

static char *dup_opt(const char *s, int *failed)
{
    if (!s)
        return NULL;
    char *d = tg_strdup(s);
    if (!d)
        *failed = 1;
    return d;
}

tg_rpc_server_t *tg_rpc_server_create(const tg_rpc_server_opts_t *opts, char *err, size_t errlen)
{
    tg_rpc_server_opts_t o = {0};
    int nomem = 0;
    if (opts)
        o = *opts;
    if ((o.so_cert_pem == NULL) != (o.so_key_pem == NULL)) {
        tg_errf(err, errlen, TG_RPC_ETLS, "TLS server: give both a certificate and a key");
        return NULL;
    }
    if (o.so_client_ca_pem && !o.so_cert_pem) {
        tg_errf(err, errlen, TG_RPC_ETLS, "mTLS needs a server certificate and key too");
        return NULL;
    }
    if (o.so_threads < 0 || o.so_threads > 256 || o.so_max_message_bytes < 0) {
        tg_errf(err, errlen, TG_RPC_EINVAL, "server options: bad thread count or message size");
        return NULL;
    }
    tg_rpc_server_t *srv = tg_calloc(1, sizeof *srv);
    if (!srv)
        goto nomem;
    grpc_init(); /* balanced by grpc_shutdown in tg_rpc_server_destroy */
    srv->s_addr = dup_opt(o.so_addr ? o.so_addr : "127.0.0.1:0", &nomem);
    srv->s_cert = dup_opt(o.so_cert_pem, &nomem);
    srv->s_key = dup_opt(o.so_key_pem, &nomem);
    srv->s_ca = dup_opt(o.so_client_ca_pem, &nomem);
    srv->s_nthreads = o.so_threads ? o.so_threads : 4;
    srv->s_queue_max = o.so_stream_queue_bytes ? o.so_stream_queue_bytes : ((size_t)1 << 20);
    srv->s_max_msg = o.so_max_message_bytes ? o.so_max_message_bytes : 4 << 20;
    srv->s_keepalive = o.so_keepalive_ms ? o.so_keepalive_ms : 60000;
    srv->s_tshutdown = (tag_t){TAG_SHUTDOWN, NULL};
    pthread_mutex_init(&srv->s_mu, NULL);
    if (rpc_cond_init(&srv->s_cv) != 0)
        nomem = 1;
    if (nomem) {
        tg_rpc_server_destroy(srv);
        goto nomem;
    }
    return srv;
nomem:
    tg_errf(err, errlen, TG_RPC_ENOMEM, "out of memory creating the gRPC server");
    return NULL;
}

static int add_method(tg_rpc_server_t *srv, const char *path, int stream, tg_rpc_unary_fn u,
                      tg_rpc_stream_fn s, void *arg, char *err, size_t errlen)
{
    if (!srv || !path || (stream ? !s : !u))
        return tg_errf(err, errlen, TG_RPC_EINVAL, "add handler: NULL server, path or handler");
    if (srv->s_started)
        return tg_errf(err, errlen, TG_RPC_ESTATE, "add handler %s: server already started", path);
    const char *slash = path[0] == '/' ? strchr(path + 1, '/') : NULL;
    if (!slash || slash == path + 1 || slash[1] == '\0' || strchr(slash + 1, '/'))
        return tg_errf(err, errlen, TG_RPC_EINVAL, "method path '%s' must look like /package.Service/Method",
                       path);
    for (method_t *m = srv->s_methods; m; m = m->m_next)
        if (strcmp(m->m_path, path) == 0)
            return tg_errf(err, errlen, TG_RPC_EINVAL, "method %s registered twice", path);
    method_t *m = tg_calloc(1, sizeof *m);
    if (!m || !(m->m_path = tg_strdup(path))) {
        tg_free(m);
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "out of memory registering %s", path);
    }
    m->m_stream = stream;
    m->m_unary = u;
    m->m_streamfn = s;
    m->m_arg = arg;
    m->m_next = srv->s_methods;
    srv->s_methods = m;
    return 0;
}

int tg_rpc_server_add_unary(tg_rpc_server_t *srv, const char *method, tg_rpc_unary_fn fn, void *arg,
                            char *err, size_t errlen)
{
    return add_method(srv, method, 0, fn, NULL, arg, err, errlen);
}

int tg_rpc_server_add_stream(tg_rpc_server_t *srv, const char *method, tg_rpc_stream_fn fn, void *arg,
                             char *err, size_t errlen)
{
    return add_method(srv, method, 1, NULL, fn, arg, err, errlen);
}

static grpc_server_credentials *server_creds(tg_rpc_server_t *srv)
{
    if (!srv->s_cert)
        return grpc_insecure_server_credentials_create();
    grpc_ssl_pem_key_cert_pair pair = {srv->s_key, srv->s_cert};
    return grpc_ssl_server_credentials_create_ex(
        srv->s_ca, &pair, 1,
        srv->s_ca ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                  : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
}

int tg_rpc_server_start(tg_rpc_server_t *srv, char *err, size_t errlen)
{
    int rc = 0;
    if (!srv)
        return tg_errf(err, errlen, TG_RPC_EINVAL, "start: NULL server");
    if (srv->s_started)
        return tg_errf(err, errlen, TG_RPC_ESTATE, "server already started");
    srv->s_started = 1;

    grpc_arg args[8];
    size_t na = 0;
    memset(args, 0, sizeof args);
    rpc_arg_int(args, &na, GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, srv->s_max_msg);
    /* A second server on the same port would silently share it. */
    rpc_arg_int(args, &na, GRPC_ARG_ALLOW_REUSEPORT, 0);
    if (srv->s_keepalive > 0) {
        /* Our pings find agents that vanished without a reset, so their
         * Sync streams end (on_cancel) instead of lingering for hours. */
        rpc_arg_int(args, &na, GRPC_ARG_KEEPALIVE_TIME_MS, srv->s_keepalive);
        rpc_arg_int(args, &na, GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                    srv->s_keepalive < 20000 ? srv->s_keepalive : 20000);
        rpc_arg_int(args, &na, GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    }
    /* Let clients' keepalive pings through (core default: one per 5 min
     * on a quiet connection, else GOAWAY "too many pings"). */
    rpc_arg_int(args, &na, GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
    grpc_channel_args cargs = {na, args};
    srv->s_gs = grpc_server_create(&cargs, NULL);
    srv->s_cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(srv->s_gs, srv->s_cq, NULL);
    for (method_t *m = srv->s_methods; m; m = m->m_next) {
        m->m_handle = grpc_server_register_method(srv->s_gs, m->m_path, NULL,
                                                  GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        if (!m->m_handle) {
            rc = tg_errf(err, errlen, TG_RPC_EINVAL, "gRPC refused to register %s", m->m_path);
            goto fail;
        }
    }
    grpc_server_credentials *creds = server_creds(srv);
    if (!creds) {
        rc = tg_errf(err, errlen, TG_RPC_ETLS, "TLS server credentials refused (bad PEM?)");
        goto fail;
    }
    srv->s_port = grpc_server_add_http2_port(srv->s_gs, srv->s_addr, creds);
    grpc_server_credentials_release(creds);
    if (srv->s_port == 0) {
        rc = tg_errf(err, errlen, TG_RPC_EBIND,
                     "cannot listen on %s (address in use, bad address or bad TLS key/cert)", srv->s_addr);
        goto fail;
    }
    grpc_server_start(srv->s_gs);
    for (method_t *m = srv->s_methods; m; m = m->m_next)
        for (int i = 0; i < REQUESTS_PER_METHOD; i++)
            arm(srv, m);
    arm(srv, NULL);
    srv->s_threads = tg_calloc((size_t)srv->s_nthreads, sizeof *srv->s_threads);
    if (!srv->s_threads) {
        rc = tg_errf(err, errlen, TG_RPC_ENOMEM, "out of memory starting server threads");
        goto fail;
    }
    for (int i = 0; i < srv->s_nthreads; i++) {
        int e = pthread_create(&srv->s_threads[i], NULL, serve, srv);
        if (e != 0) {
            rc = tg_errf(err, errlen, TG_RPC_ENOMEM, "cannot start a server thread: %s", strerror(e));
            goto fail;
        }
        srv->s_started_threads++;
    }
    return 0;
fail:
    /* Leave a state tg_rpc_server_destroy can take apart. */
    srv->s_port = 0;
    if (srv->s_started_threads == 0 && srv->s_gs) {
        /* No thread drains the queue: do the shutdown handshake here. */
        atomic_store(&srv->s_stopping, 1);
        grpc_server_shutdown_and_notify(srv->s_gs, srv->s_cq, &srv->s_tshutdown);
        grpc_server_cancel_all_calls(srv->s_gs);
        grpc_completion_queue_shutdown(srv->s_cq);
        for (;;) {
            grpc_event ev = grpc_completion_queue_next(srv->s_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
            if (ev.type == GRPC_QUEUE_SHUTDOWN)
                break;
            tag_t *t = ev.tag;
            if (ev.type == GRPC_OP_COMPLETE && t->t_kind == TAG_NEW)
                call_free(t->t_call);
        }
        srv->s_shut = 1;
        srv->s_shutdown_done = 1;
    }
    return rc;
}

int tg_rpc_server_port(const tg_rpc_server_t *srv)
{
    return srv ? srv->s_port : 0;
}

void tg_rpc_server_shutdown(tg_rpc_server_t *srv, int grace_ms)
{
    if (!srv || srv->s_shut || !srv->s_started)
        return;
    srv->s_shut = 1;
    atomic_store(&srv->s_stopping, 1);
    grpc_server_shutdown_and_notify(srv->s_gs, srv->s_cq, &srv->s_tshutdown);

    struct timespec ts;
    rpc_abstime(&ts, grace_ms > 0 ? grace_ms : 0);
    pthread_mutex_lock(&srv->s_mu);
    while (!srv->s_shutdown_done)
        if (pthread_cond_timedwait(&srv->s_cv, &srv->s_mu, &ts) == ETIMEDOUT)
            break;
    int done = srv->s_shutdown_done;
    pthread_mutex_unlock(&srv->s_mu);
    if (!done) {
        /* Grace is over: cancel what is left. Kept streams see on_cancel and
         * their holders finish them; only then can the core let go. */
        grpc_server_cancel_all_calls(srv->s_gs);
        pthread_mutex_lock(&srv->s_mu);
        while (!srv->s_shutdown_done) {
            rpc_abstime(&ts, 5000);
            if (pthread_cond_timedwait(&srv->s_cv, &srv->s_mu, &ts) == ETIMEDOUT)
                fprintf(stderr,
                        "tg_rpc: shutdown still waiting for %d call(s): a handler still "
                        "running, or a kept stream nobody finished (tg_rpc_call_finish)\n",
                        atomic_load(&srv->s_live));
        }
        pthread_mutex_unlock(&srv->s_mu);
    }
    grpc_completion_queue_shutdown(srv->s_cq);
    for (int i = 0; i < srv->s_started_threads; i++)
        pthread_join(srv->s_threads[i], NULL);
    srv->s_started_threads = 0;
}

void tg_rpc_server_destroy(tg_rpc_server_t *srv)
{
    if (!srv)
        return;
    tg_rpc_server_shutdown(srv, 5000);
    if (srv->s_gs)
        grpc_server_destroy(srv->s_gs);
    if (srv->s_cq)
        grpc_completion_queue_destroy(srv->s_cq);
    while (srv->s_methods) {
        method_t *m = srv->s_methods;
        srv->s_methods = m->m_next;
        tg_free(m->m_path);
        tg_free(m);
    }
    tg_free(srv->s_threads);
    tg_free(srv->s_addr);
    tg_free(srv->s_cert);
    tg_free(srv->s_key);
    tg_free(srv->s_ca);
    pthread_mutex_destroy(&srv->s_mu);
    pthread_cond_destroy(&srv->s_cv);
    tg_free(srv);
    grpc_shutdown();
}

/* ---- call accessors ----------------------------------------------------- */

const char *tg_rpc_call_method(const tg_rpc_call_t *c)
{
    return c->c_method;
}

const char *tg_rpc_call_metadata(const tg_rpc_call_t *c, const char *key, size_t *len)
{
    for (size_t i = 0; i < c->c_nmd; i++)
        if (strcmp(c->c_md[i].md_key, key) == 0) {
            if (len)
                *len = c->c_md[i].md_len;
            return c->c_md[i].md_value;
        }
    return NULL;
}

size_t tg_rpc_call_metadata_count(const tg_rpc_call_t *c)
{
    return c->c_nmd;
}

int tg_rpc_call_metadata_at(const tg_rpc_call_t *c, size_t i, tg_rpc_md_t *out)
{
    if (i >= c->c_nmd || !out)
        return TG_RPC_EINVAL;
    *out = c->c_md[i];
    return 0;
}

const char *tg_rpc_call_peer(const tg_rpc_call_t *c)
{
    tg_rpc_call_t *m = (tg_rpc_call_t *)c; /* computed once, on first use */
    if (!m->c_peer)
        m->c_peer = grpc_call_get_peer(m->c_gc);
    return m->c_peer ? m->c_peer : "unknown";
}

const char *tg_rpc_call_peer_identity(const tg_rpc_call_t *c)
{
    tg_rpc_call_t *m = (tg_rpc_call_t *)c;
    if (m->c_identity_done)
        return m->c_identity;
    m->c_identity_done = 1;
    grpc_auth_context *ctx = grpc_call_auth_context(m->c_gc);
    if (!ctx)
        return NULL;
    if (grpc_auth_context_peer_is_authenticated(ctx)) {
        grpc_auth_property_iterator it =
            grpc_auth_context_find_properties_by_name(ctx, GRPC_X509_CN_PROPERTY_NAME);
        const grpc_auth_property *p = grpc_auth_property_iterator_next(&it);
        if (p)
            m->c_identity = tg_strndup(p->value, p->value_length);
    }
    grpc_auth_context_release(ctx);
    return m->c_identity;
}

int64_t tg_rpc_call_deadline_ms(const tg_rpc_call_t *c)
{
    gpr_timespec d = c->c_deadline;
    if (d.tv_sec == INT64_MAX)
        return INT64_MAX;
    if (gpr_time_cmp(d, gpr_inf_future(d.clock_type)) == 0)
        return INT64_MAX;
    gpr_timespec left = gpr_time_sub(d, gpr_now(d.clock_type));
    return (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
}

int tg_rpc_call_cancelled(tg_rpc_call_t *c)
{
    pthread_mutex_lock(&c->c_mu);
    int r = c->c_cancelled;
    pthread_mutex_unlock(&c->c_mu);
    return r;
}

tg_pool_t *tg_rpc_call_pool(tg_rpc_call_t *c)
{
    return c->c_pool;
}

static int add_md(tg_rpc_call_t *c, int trailer, const char *key, const char *value)
{
    grpc_metadata g;
    tg_rpc_md_t in = {key, value, 0};
    int rc;

    if (!key || !value)
        return TG_RPC_EINVAL;
    memset(&g, 0, sizeof g);
    if ((rc = rpc_md_make(&g, &in, 1, NULL, 0)) != 0)
        return rc;
    pthread_mutex_lock(&c->c_mu);
    grpc_metadata **arr = trailer ? &c->c_trl : &c->c_hdr;
    size_t *n = trailer ? &c->c_ntrl : &c->c_nhdr;
    if (!trailer && c->c_hdr_sent) {
        rc = TG_RPC_ESTATE;
    } else if (c->c_status_sent) {
        rc = TG_RPC_ESTATE;
    } else {
        grpc_metadata *na = tg_realloc(*arr, (*n + 1) * sizeof **arr);
        if (!na) {
            rc = TG_RPC_ENOMEM;
        } else {
            na[*n] = g;
            *arr = na;
            ++*n;
        }
    }
    pthread_mutex_unlock(&c->c_mu);
    if (rc != 0)
        rpc_md_free(&g, 1);
    return rc;
}

int tg_rpc_call_add_header(tg_rpc_call_t *c, const char *key, const char *value)
{
    return add_md(c, 0, key, value);
}

int tg_rpc_call_add_trailer(tg_rpc_call_t *c, const char *key, const char *value)
{
    return add_md(c, 1, key, value);
}

int tg_rpc_call_errorf(tg_rpc_call_t *c, int code, const char *fmt, ...)
{
    char buf[TG_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&c->c_mu);
    if (!c->c_msg)
        c->c_msg = tg_strdup(buf);
    pthread_mutex_unlock(&c->c_mu);
    return code;
}

void tg_rpc_call_on_cancel(tg_rpc_call_t *c, void (*fn)(tg_rpc_call_t *, void *), void *arg)
{
    pthread_mutex_lock(&c->c_mu);
    c->c_on_cancel = fn;
    c->c_on_cancel_arg = arg;
    pthread_mutex_unlock(&c->c_mu);
}

/* ---- streaming ---------------------------------------------------------- */

int tg_rpc_call_send(tg_rpc_call_t *c, const void *data, size_t len, int timeout_ms)
{
    int rc = 0;
    struct timespec ts;

    if (!c || (!data && len) || !c->c_m || !c->c_m->m_stream)
        return TG_RPC_EINVAL;
    qmsg_t *q = tg_malloc(sizeof *q);
    if (!q)
        return TG_RPC_ENOMEM;
    q->q_bb = rpc_bb_make(data ? data : "", len);
    q->q_len = len;
    q->q_next = NULL;
    if (timeout_ms > 0)
        rpc_abstime(&ts, timeout_ms);

    pthread_mutex_lock(&c->c_mu);
    /* One message larger than the bound still goes when the queue is empty. */
    while (!c->c_cancelled && !c->c_finishing && c->c_qbytes > 0 &&
           c->c_qbytes + len > c->c_srv->s_queue_max) {
        if (timeout_ms == 0 || on_server_thread) {
            rc = TG_RPC_EFULL;
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&c->c_cv, &c->c_mu);
        } else if (pthread_cond_timedwait(&c->c_cv, &c->c_mu, &ts) == ETIMEDOUT) {
            rc = TG_RPC_EFULL;
            break;
        }
    }
    if (rc == 0 && (c->c_cancelled || c->c_finishing))
        rc = TG_RPC_ECANCELLED;
    if (rc == 0) {
        if (c->c_qtail)
            c->c_qtail->q_next = q;
        else
            c->c_qhead = q;
        c->c_qtail = q;
        c->c_qbytes += len;
        q = NULL;
        pump(c);
    }
    pthread_mutex_unlock(&c->c_mu);
    if (q) {
        grpc_byte_buffer_destroy(q->q_bb);
        tg_free(q);
    }
    return rc;
}
