/* tg_rpc_client.c: the gRPC client side of rpc/: channels (insecure, TLS,
 * mTLS), unary calls, readers for server streams, and tg_rpc_stream_run, the
 * reconnect loop with capped exponential backoff that keeps an agent's Sync
 * stream alive across control-plane restarts.
 *
 * Every call gets its own completion queue and is driven by the calling
 * thread, so channels are freely shared between threads and nothing here
 * starts threads of its own. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "rpc/rpc_int.h"

#define REPLY_MAX_DEFAULT ((size_t)4 << 20)

struct tg_rpc_channel {
    grpc_channel *ch_gc;
    size_t ch_max_msg;
};

/* ---- channel ------------------------------------------------------------ */

tg_rpc_channel_t *tg_rpc_channel_create(const char *target, const tg_rpc_channel_opts_t *opts, char *err,
                                        size_t errlen)
{
    tg_rpc_channel_opts_t o = {0};
    grpc_channel_credentials *creds = NULL;
    tg_rpc_channel_t *ch = NULL;
    grpc_arg args[10];
    size_t n = 0;

    if (opts)
        o = *opts;
    if (!target || !*target) {
        tg_errf(err, errlen, TG_RPC_EINVAL, "channel: empty target");
        return NULL;
    }
    if ((o.co_cert_pem == NULL) != (o.co_key_pem == NULL)) {
        tg_errf(err, errlen, TG_RPC_ETLS, "channel %s: give both a client certificate and key", target);
        return NULL;
    }
    ch = tg_calloc(1, sizeof *ch);
    if (!ch) {
        tg_errf(err, errlen, TG_RPC_ENOMEM, "out of memory creating a channel to %s", target);
        return NULL;
    }
    grpc_init(); /* balanced in tg_rpc_channel_destroy */
    if (o.co_tls || o.co_root_pem || o.co_cert_pem) {
        grpc_ssl_pem_key_cert_pair pair = {o.co_key_pem, o.co_cert_pem};
        creds = grpc_ssl_credentials_create(o.co_root_pem, o.co_cert_pem ? &pair : NULL, NULL, NULL);
    } else {
        creds = grpc_insecure_credentials_create();
    }
    if (!creds) {
        tg_errf(err, errlen, TG_RPC_ETLS, "channel %s: TLS credentials refused", target);
        tg_free(ch);
        grpc_shutdown();
        return NULL;
    }
    memset(args, 0, sizeof args);
    if (o.co_reconnect_min_ms > 0) {
        /* gRPC core reads MIN_RECONNECT_BACKOFF as the time one connection
         * attempt (TCP, TLS, HTTP/2 settings) may take: at 100 ms a TLS
         * handshake on a loaded machine timed out and the agent left a
         * healthy control plane. Never under 2 s; the backoff between
         * attempts stays co_reconnect_min_ms. */
        rpc_arg_int(args, &n, GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
                    o.co_reconnect_min_ms > 2000 ? o.co_reconnect_min_ms : 2000);
        rpc_arg_int(args, &n, GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, o.co_reconnect_min_ms);
    }
    if (o.co_reconnect_max_ms > 0)
        rpc_arg_int(args, &n, GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, o.co_reconnect_max_ms);
    if (o.co_keepalive_ms > 0) {
        int ka = o.co_keepalive_ms < 1000 ? 1000 : o.co_keepalive_ms;
        rpc_arg_int(args, &n, GRPC_ARG_KEEPALIVE_TIME_MS, ka);
        rpc_arg_int(args, &n, GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ka < 20000 ? ka : 20000);
        /* Keep pinging on a quiet stream (core default: 2 pings, then
         * silence until data flows). */
        rpc_arg_int(args, &n, GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    }
    ch->ch_max_msg = o.co_max_message_bytes > 0 ? (size_t)o.co_max_message_bytes : REPLY_MAX_DEFAULT;
    rpc_arg_int(args, &n, GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, (int)ch->ch_max_msg);
    if (o.co_tls_name) {
        args[n].type = GRPC_ARG_STRING;
        args[n].key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
        args[n].value.string = (char *)o.co_tls_name;
        n++;
    }
    grpc_channel_args cargs = {n, args};
    /* Never NULL: on a bad target the core returns a channel whose calls all
     * fail, which the first call reports. */
    ch->ch_gc = grpc_channel_create(target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    return ch;
}

void tg_rpc_channel_destroy(tg_rpc_channel_t *ch)
{
    if (!ch)
        return;
    grpc_channel_destroy(ch->ch_gc);
    tg_free(ch);
    grpc_shutdown();
}

/* ---- unary -------------------------------------------------------------- */

void tg_rpc_result_free(tg_rpc_result_t *res)
{
    if (!res)
        return;
    tg_free(res->rs_message);
    tg_free(res->rs_data);
    for (size_t i = 0; i < res->rs_nmd; i++) {
        tg_free((void *)res->rs_md[i].md_key);
        tg_free((void *)res->rs_md[i].md_value);
    }
    tg_free(res->rs_md);
    memset(res, 0, sizeof *res);
}

const char *tg_rpc_result_metadata(const tg_rpc_result_t *res, const char *key)
{
    for (size_t i = 0; res && i < res->rs_nmd; i++)
        if (strcmp(res->rs_md[i].md_key, key) == 0)
            return res->rs_md[i].md_value;
    return NULL;
}

/* Appends copies of a metadata array to res. Returns 0 or -1. */
static int copy_md(tg_rpc_result_t *res, const grpc_metadata_array *a)
{
    if (a->count == 0)
        return 0;
    tg_rpc_md_t *m = tg_realloc(res->rs_md, (res->rs_nmd + a->count) * sizeof *m);
    if (!m)
        return -1;
    res->rs_md = m;
    for (size_t i = 0; i < a->count; i++) {
        const grpc_metadata *g = &a->metadata[i];
        char *k = tg_strndup((const char *)GRPC_SLICE_START_PTR(g->key), GRPC_SLICE_LENGTH(g->key));
        char *v = tg_malloc(GRPC_SLICE_LENGTH(g->value) + 1);
        if (!k || !v) {
            tg_free(k);
            tg_free(v);
            return -1;
        }
        memcpy(v, GRPC_SLICE_START_PTR(g->value), GRPC_SLICE_LENGTH(g->value));
        v[GRPC_SLICE_LENGTH(g->value)] = '\0';
        m[res->rs_nmd] = (tg_rpc_md_t){k, v, GRPC_SLICE_LENGTH(g->value)};
        res->rs_nmd++;
    }
    return 0;
}

static int check_method(const char *method, char *err, size_t errlen)
{
    if (!method || method[0] != '/' || !strchr(method + 1, '/'))
        return tg_errf(err, errlen, TG_RPC_EINVAL, "method path '%s' must look like /package.Service/Method",
                       method ? method : "(null)");
    return 0;
}

/* Drains and destroys a completion queue nothing is pending on. */
static void cq_destroy(grpc_completion_queue *cq)
{
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
}

int tg_rpc_channel_ready(tg_rpc_channel_t *ch, int timeout_ms)
{
    if (!ch)
        return 0;
    grpc_connectivity_state st = grpc_channel_check_connectivity_state(ch->ch_gc, 1);
    if (st == GRPC_CHANNEL_READY)
        return 1;
    gpr_timespec dl = rpc_deadline(timeout_ms > 0 ? timeout_ms : 1);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    for (;;) {
        /* completes on a state change (success) or at the deadline */
        grpc_channel_watch_connectivity_state(ch->ch_gc, st, dl, cq, NULL);
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        st = grpc_channel_check_connectivity_state(ch->ch_gc, 1);
        if (st == GRPC_CHANNEL_READY || !ev.success)
            break;
    }
    cq_destroy(cq);
    return st == GRPC_CHANNEL_READY;
}

int tg_rpc_unary(tg_rpc_channel_t *ch, const char *method, const tg_rpc_md_t *md, size_t nmd, const void *req,
                 size_t req_len, int timeout_ms, tg_rpc_result_t *res, char *err, size_t errlen)
{
    int rc = 0;
    grpc_metadata *gmd = NULL;
    grpc_completion_queue *cq = NULL;
    grpc_call *call = NULL;
    grpc_byte_buffer *sbb = NULL, *rbb = NULL;
    grpc_metadata_array imd, tmd;
    grpc_status_code st = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    tg_buf_t reply;

    grpc_metadata_array_init(&imd);
    grpc_metadata_array_init(&tmd);
    tg_buf_init(&reply, ch ? ch->ch_max_msg : 0);
    if (res)
        memset(res, 0, sizeof *res);
    if (!ch || !res || (!req && req_len) || (!md && nmd)) {
        rc = tg_errf(err, errlen, TG_RPC_EINVAL, "unary call: NULL channel, result or data");
        goto fail;
    }
    if ((rc = check_method(method, err, errlen)) != 0)
        goto fail;
    gmd = tg_calloc(nmd ? nmd : 1, sizeof *gmd);
    if (!gmd) {
        rc = tg_errf(err, errlen, TG_RPC_ENOMEM, "out of memory calling %s", method);
        goto fail;
    }
    if ((rc = rpc_md_make(gmd, md, nmd, err, errlen)) != 0) {
        tg_free(gmd);
        gmd = NULL;
        goto fail;
    }

    cq = grpc_completion_queue_create_for_next(NULL);
    grpc_slice ms = grpc_slice_from_copied_string(method);
    call = grpc_channel_create_call(ch->ch_gc, NULL, GRPC_PROPAGATE_DEFAULTS, cq, ms, NULL,
                                    rpc_deadline(timeout_ms), NULL);
    grpc_slice_unref(ms);
    sbb = rpc_bb_make(req ? req : "", req_len);

    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.metadata = gmd;
    ops[0].data.send_initial_metadata.count = nmd;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = sbb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &imd;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &rbb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &tmd;
    ops[5].data.recv_status_on_client.status = &st;
    ops[5].data.recv_status_on_client.status_details = &details;
    grpc_call_error e = grpc_call_start_batch(call, ops, 6, call, NULL);
    if (e != GRPC_CALL_OK) {
        rc = tg_errf(err, errlen, TG_RPC_ECALL, "%s: gRPC refused the call: %s", method,
                     grpc_call_error_to_string(e));
        goto fail;
    }
    /* The call's deadline bounds this wait: the core ends the batch then. */
    grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);

    res->rs_code = (int)st;
    res->rs_message = tg_strndup((const char *)GRPC_SLICE_START_PTR(details), GRPC_SLICE_LENGTH(details));
    if (!res->rs_message || copy_md(res, &imd) != 0 || copy_md(res, &tmd) != 0) {
        rc = tg_errf(err, errlen, TG_RPC_ENOMEM, "%s: out of memory reading the reply", method);
        goto fail;
    }
    if (st == GRPC_STATUS_OK) {
        if (rbb && rpc_bb_read(rbb, &reply) != 0) {
            rc = tg_errf(err, errlen, TG_RPC_ENOMEM, "%s: reply too large or out of memory", method);
            goto fail;
        }
        res->rs_len = reply.b_len;
        res->rs_data = (uint8_t *)tg_buf_steal(&reply, NULL);
        if (!res->rs_data)
            res->rs_data = (uint8_t *)tg_calloc(1, 1); /* empty reply */
        if (!res->rs_data) {
            rc = tg_errf(err, errlen, TG_RPC_ENOMEM, "%s: out of memory", method);
            goto fail;
        }
    } else {
        rc =
            tg_errf(err, errlen, TG_RPC_ESTATUS, "%s: %s: %s", method, tg_rpc_code_name(st), res->rs_message);
    }
fail:
    if (call)
        grpc_call_unref(call);
    if (cq)
        cq_destroy(cq);
    if (gmd) {
        rpc_md_free(gmd, nmd);
        tg_free(gmd);
    }
    if (sbb)
        grpc_byte_buffer_destroy(sbb);
    if (rbb)
        grpc_byte_buffer_destroy(rbb);
    grpc_metadata_array_destroy(&imd);
    grpc_metadata_array_destroy(&tmd);
    grpc_slice_unref(details);
    tg_buf_free(&reply);
    return rc;
}

/* ---- reader (client side of a server stream) --------------------------- */

/* Tags: the reader has at most one batch of each kind in flight. */
enum { R_SEND = 1, R_MSG, R_STATUS };

struct tg_rpc_reader {
    grpc_completion_queue *r_cq;
    grpc_call *r_call;
    grpc_metadata *r_md; /* kept until the send batch completes */
    size_t r_nmd;
    grpc_byte_buffer *r_sbb, *r_rbb;
    grpc_metadata_array r_imd, r_tmd;
    grpc_status_code r_st;
    grpc_slice r_details;
    int r_pending; /* batches in flight */
    int r_msg_pending, r_imd_asked, r_status_done, r_ended;
    char *r_message;
    char *r_method; /* copied: error messages name it */
};

/* Handles one completion. */
static void reader_event(tg_rpc_reader_t *r, grpc_event ev)
{
    switch ((intptr_t)ev.tag) {
    case R_SEND:
        rpc_md_free(r->r_md, r->r_nmd);
        tg_free(r->r_md);
        r->r_md = NULL;
        r->r_nmd = 0;
        grpc_byte_buffer_destroy(r->r_sbb);
        r->r_sbb = NULL;
        break;
    case R_MSG: r->r_msg_pending = 0; break;
    case R_STATUS:
        r->r_status_done = 1;
        tg_free(r->r_message);
        r->r_message =
            tg_strndup((const char *)GRPC_SLICE_START_PTR(r->r_details), GRPC_SLICE_LENGTH(r->r_details));
        break;
    }
    r->r_pending--;
}

int tg_rpc_reader_open(tg_rpc_channel_t *ch, const char *method, const tg_rpc_md_t *md, size_t nmd,
                       const void *req, size_t req_len, int timeout_ms, tg_rpc_reader_t **out, char *err,
                       size_t errlen)
{
    int rc;
    tg_rpc_reader_t *r = NULL;

    if (out)
        *out = NULL;
    if (!ch || !out || (!req && req_len) || (!md && nmd))
        return tg_errf(err, errlen, TG_RPC_EINVAL, "stream: NULL channel, out or data");
    if ((rc = check_method(method, err, errlen)) != 0)
        return rc;
    r = tg_calloc(1, sizeof *r);
    if (!r || !(r->r_md = tg_calloc(nmd ? nmd : 1, sizeof *r->r_md))) {
        tg_free(r);
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "out of memory opening %s", method);
    }
    if ((rc = rpc_md_make(r->r_md, md, nmd, err, errlen)) != 0) {
        tg_free(r->r_md);
        tg_free(r);
        return rc;
    }
    r->r_nmd = nmd;
    if (!(r->r_method = tg_strdup(method))) {
        rpc_md_free(r->r_md, nmd);
        tg_free(r->r_md);
        tg_free(r);
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "out of memory opening %s", method);
    }
    r->r_details = grpc_empty_slice();
    r->r_st = GRPC_STATUS_UNKNOWN;
    grpc_metadata_array_init(&r->r_imd);
    grpc_metadata_array_init(&r->r_tmd);
    r->r_cq = grpc_completion_queue_create_for_next(NULL);
    grpc_slice ms = grpc_slice_from_copied_string(method);
    r->r_call = grpc_channel_create_call(ch->ch_gc, NULL, GRPC_PROPAGATE_DEFAULTS, r->r_cq, ms, NULL,
                                         rpc_deadline(timeout_ms), NULL);
    grpc_slice_unref(ms);
    r->r_sbb = rpc_bb_make(req ? req : "", req_len);

    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.metadata = r->r_md;
    ops[0].data.send_initial_metadata.count = r->r_nmd;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = r->r_sbb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    grpc_call_error e = grpc_call_start_batch(r->r_call, ops, 3, (void *)(intptr_t)R_SEND, NULL);
    if (e == GRPC_CALL_OK) {
        r->r_pending++;
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        ops[0].data.recv_status_on_client.trailing_metadata = &r->r_tmd;
        ops[0].data.recv_status_on_client.status = &r->r_st;
        ops[0].data.recv_status_on_client.status_details = &r->r_details;
        e = grpc_call_start_batch(r->r_call, ops, 1, (void *)(intptr_t)R_STATUS, NULL);
        if (e == GRPC_CALL_OK)
            r->r_pending++;
    }
    if (e != GRPC_CALL_OK) {
        rc = tg_errf(err, errlen, TG_RPC_ECALL, "%s: gRPC refused the call: %s", method,
                     grpc_call_error_to_string(e));
        tg_rpc_reader_destroy(r);
        return rc;
    }
    *out = r;
    return 0;
}

/* The stream ended (no more messages): wait for the status. */
static int reader_end(tg_rpc_reader_t *r, char *err, size_t errlen)
{
    while (!r->r_status_done)
        reader_event(r, grpc_completion_queue_next(r->r_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL));
    r->r_ended = 1;
    if (r->r_st == GRPC_STATUS_OK)
        return 0;
    return tg_errf(err, errlen, TG_RPC_ESTATUS, "%s: %s: %s", r->r_method, tg_rpc_code_name(r->r_st),
                   r->r_message ? r->r_message : "");
}

int tg_rpc_reader_next(tg_rpc_reader_t *r, int timeout_ms, tg_buf_t *msg, char *err, size_t errlen)
{
    if (!r || !msg)
        return tg_errf(err, errlen, TG_RPC_EINVAL, "reader_next: NULL argument");
    if (r->r_ended)
        return reader_end(r, err, errlen);
    if (!r->r_msg_pending) {
        grpc_op ops[2];
        size_t n = 0;
        memset(ops, 0, sizeof ops);
        if (!r->r_imd_asked) {
            ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
            ops[n].data.recv_initial_metadata.recv_initial_metadata = &r->r_imd;
            n++;
        }
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n].data.recv_message.recv_message = &r->r_rbb;
        n++;
        grpc_call_error e = grpc_call_start_batch(r->r_call, ops, n, (void *)(intptr_t)R_MSG, NULL);
        if (e != GRPC_CALL_OK)
            return tg_errf(err, errlen, TG_RPC_ECALL, "%s: cannot read: %s", r->r_method,
                           grpc_call_error_to_string(e));
        r->r_imd_asked = 1;
        r->r_msg_pending = 1;
        r->r_pending++;
    }
    gpr_timespec deadline =
        timeout_ms < 0 ? gpr_inf_future(GPR_CLOCK_MONOTONIC) : rpc_deadline(timeout_ms ? timeout_ms : 1);
    while (r->r_msg_pending) {
        grpc_event ev = grpc_completion_queue_next(r->r_cq, deadline, NULL);
        if (ev.type == GRPC_QUEUE_TIMEOUT)
            return tg_errf(err, errlen, TG_RPC_ETIMEDOUT, "%s: no message within %d ms", r->r_method,
                           timeout_ms);
        reader_event(r, ev);
    }
    if (!r->r_rbb)
        return reader_end(r, err, errlen);
    int rc = rpc_bb_read(r->r_rbb, msg);
    grpc_byte_buffer_destroy(r->r_rbb);
    r->r_rbb = NULL;
    if (rc != 0) {
        grpc_call_cancel(r->r_call, NULL);
        return tg_errf(err, errlen, TG_RPC_ENOMEM,
                       "%s: message larger than %zu bytes or out of memory; stream cancelled", r->r_method,
                       msg->b_max);
    }
    return 1;
}

int tg_rpc_reader_status(const tg_rpc_reader_t *r, const char **message)
{
    int ended = r && r->r_ended;
    if (message)
        *message = ended && r->r_message ? r->r_message : "";
    return ended ? (int)r->r_st : -1;
}

void tg_rpc_reader_cancel(tg_rpc_reader_t *r)
{
    if (r && r->r_call)
        grpc_call_cancel(r->r_call, NULL);
}

void tg_rpc_reader_destroy(tg_rpc_reader_t *r)
{
    if (!r)
        return;
    if (!r->r_status_done)
        grpc_call_cancel(r->r_call, NULL);
    /* Every batch in flight completes after a cancel; wait for them, since
     * they write into r. */
    while (r->r_pending > 0)
        reader_event(r, grpc_completion_queue_next(r->r_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL));
    grpc_call_unref(r->r_call);
    cq_destroy(r->r_cq);
    rpc_md_free(r->r_md, r->r_nmd);
    tg_free(r->r_md);
    if (r->r_sbb)
        grpc_byte_buffer_destroy(r->r_sbb);
    if (r->r_rbb)
        grpc_byte_buffer_destroy(r->r_rbb);
    grpc_metadata_array_destroy(&r->r_imd);
    grpc_metadata_array_destroy(&r->r_tmd);
    grpc_slice_unref(r->r_details);
    tg_free(r->r_message);
    tg_free(r->r_method);
    tg_free(r);
}

/* ---- cancel token ------------------------------------------------------- */

struct tg_rpc_cancel {
    pthread_mutex_t k_mu;
    pthread_cond_t k_cv;
    int k_signalled;
    tg_rpc_reader_t *k_reader; /* the attempt to cancel, if any */
};

tg_rpc_cancel_t *tg_rpc_cancel_create(void)
{
    tg_rpc_cancel_t *c = tg_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    pthread_mutex_init(&c->k_mu, NULL);
    if (rpc_cond_init(&c->k_cv) != 0) {
        pthread_mutex_destroy(&c->k_mu);
        tg_free(c);
        return NULL;
    }
    return c;
}

void tg_rpc_cancel_signal(tg_rpc_cancel_t *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->k_mu);
    c->k_signalled = 1;
    if (c->k_reader)
        tg_rpc_reader_cancel(c->k_reader);
    pthread_cond_broadcast(&c->k_cv);
    pthread_mutex_unlock(&c->k_mu);
}

int tg_rpc_cancel_signalled(tg_rpc_cancel_t *c)
{
    if (!c)
        return 0;
    pthread_mutex_lock(&c->k_mu);
    int s = c->k_signalled;
    pthread_mutex_unlock(&c->k_mu);
    return s;
}

void tg_rpc_cancel_destroy(tg_rpc_cancel_t *c)
{
    if (!c)
        return;
    pthread_mutex_destroy(&c->k_mu);
    pthread_cond_destroy(&c->k_cv);
    tg_free(c);
}

/* Publishes the current attempt's reader (NULL: none). Returns the
 * signalled flag, so an attempt started after a signal is cancelled. */
static int cancel_attach(tg_rpc_cancel_t *c, tg_rpc_reader_t *r)
{
    if (!c)
        return 0;
    pthread_mutex_lock(&c->k_mu);
    c->k_reader = r;
    int s = c->k_signalled;
    if (s && r)
        tg_rpc_reader_cancel(r);
    pthread_mutex_unlock(&c->k_mu);
    return s;
}

/* Sleeps ms, or less if c is signalled. Returns 1 when signalled. */
static int cancel_sleep(tg_rpc_cancel_t *c, int ms)
{
    struct timespec ts;
    if (!c) {
        ts.tv_sec = ms / 1000;
        ts.tv_nsec = (long)(ms % 1000) * 1000000L;
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        return 0;
    }
    rpc_abstime(&ts, ms);
    pthread_mutex_lock(&c->k_mu);
    while (!c->k_signalled)
        if (pthread_cond_timedwait(&c->k_cv, &c->k_mu, &ts) == ETIMEDOUT)
            break;
    int s = c->k_signalled;
    pthread_mutex_unlock(&c->k_mu);
    return s;
}

/* ---- reconnecting stream ------------------------------------------------ */

int tg_rpc_backoff_delay_ms(const tg_rpc_backoff_t *b, int attempt, uint64_t *seed)
{
    double initial = b && b->bo_initial_ms > 0 ? b->bo_initial_ms : 100;
    double max = b && b->bo_max_ms > 0 ? b->bo_max_ms : 30000;
    double mult = b && b->bo_multiplier >= 1.0 ? b->bo_multiplier : 2.0;
    double jitter = b && b->bo_jitter > 0 ? b->bo_jitter : 0.2;
    if (jitter > 1.0)
        jitter = 1.0;

    double d = initial;
    for (int i = 0; i < attempt && d < max; i++)
        d *= mult;
    if (d > max)
        d = max;
    /* xorshift64*: a few bits of jitter so agents restarted together do not
     * reconnect together; no need for a strong generator. */
    uint64_t x = *seed ? *seed : 0x9e3779b97f4a7c15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *seed = x;
    double u = (double)((x * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0; /* [0,1) */
    d *= 1.0 - jitter + 2.0 * jitter * u;
    if (d > max)
        d = max;
    return d < 1.0 ? 1 : (int)d;
}

int tg_rpc_stream_run(tg_rpc_channel_t *ch, const tg_rpc_stream_opts_t *o, char *err, size_t errlen)
{
    int rc = 0, attempt = 0;
    tg_buf_t req, msg;
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&rc;

    if (!ch || !o || !o->sr_method || !o->sr_on_message)
        return tg_errf(err, errlen, TG_RPC_EINVAL, "stream_run: NULL channel, method or callback");
    tg_buf_init(&req, ch->ch_max_msg);
    tg_buf_init(&msg, o->sr_max_message_bytes ? o->sr_max_message_bytes : ch->ch_max_msg);
    for (;;) {
        tg_rpc_reader_t *r = NULL;
        const void *rq = o->sr_req;
        size_t rqlen = o->sr_req_len;
        int got = 0, stop = 0, n, code;
        const char *message;
        char aerr[TG_ERRLEN] = "";

        if (tg_rpc_cancel_signalled(o->sr_cancel)) {
            rc = tg_errf(err, errlen, TG_RPC_ESTOPPED, "%s: stopped", o->sr_method);
            break;
        }
        if (o->sr_request) {
            tg_buf_reset(&req);
            if (o->sr_request(o->sr_arg, &req) != 0)
                break;
            rq = req.b_data;
            rqlen = req.b_len;
        }
        rc = tg_rpc_reader_open(ch, o->sr_method, o->sr_md, o->sr_nmd, rq, rqlen, 0, &r, err, errlen);
        if (rc != 0)
            break;
        cancel_attach(o->sr_cancel, r);
        while ((n = tg_rpc_reader_next(r, -1, &msg, aerr, sizeof aerr)) == 1) {
            got = 1;
            if (o->sr_on_message(o->sr_arg, (const uint8_t *)(msg.b_data ? msg.b_data : ""), msg.b_len) !=
                0) {
                stop = 1;
                break;
            }
        }
        cancel_attach(o->sr_cancel, NULL);
        if (stop) {
            tg_rpc_reader_destroy(r);
            break;
        }
        code = tg_rpc_reader_status(r, &message);
        if (code < 0) { /* a local failure (ENOMEM): report it as the core would */
            code = TG_RPC_CODE_RESOURCE_EXHAUSTED;
            message = aerr;
        }
        if (got)
            attempt = 0; /* it worked for a while: start backoff over */
        int delay = tg_rpc_backoff_delay_ms(&o->sr_backoff, attempt++, &seed);
        if (attempt > 64)
            attempt = 64; /* the cap is reached long before */
        stop = o->sr_on_status && o->sr_on_status(o->sr_arg, code, message, delay) != 0;
        tg_rpc_reader_destroy(r);
        if (stop)
            break;
        if (cancel_sleep(o->sr_cancel, delay)) {
            rc = tg_errf(err, errlen, TG_RPC_ESTOPPED, "%s: stopped", o->sr_method);
            break;
        }
    }
    tg_buf_free(&req);
    tg_buf_free(&msg);
    return rc;
}
