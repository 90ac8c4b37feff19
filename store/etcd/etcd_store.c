/* etcd_store.c: the tg_store backend for an etcd 3.4+ cluster, over etcd's
 * native v3 gRPC API (rpc/, the gRPC C core; messages from etcd_rpc.proto by
 * protobuf-c).
 *
 * Every call is one unary RPC (etcdserverpb.KV/Range, Put, DeleteRange,
 * Txn, Compact; Lease/LeaseGrant, LeaseRevoke; Maintenance/Status) or, for
 * a lease keepalive, one request and one answer on a LeaseKeepAlive stream.
 * Keys and values travel as protobuf bytes: an earlier version spoke etcd's
 * JSON gateway, and base64 plus etcd's JSON decoding of every value took
 * ~80% of etcd's CPU under settlement (docs/PERFORMANCE.md). Requests go to
 * the endpoint that last answered; on a transport error they move to the
 * next one, round after round with a doubling backoff (50 ms .. 1 s),
 * so_retries rounds in all. Each endpoint has one gRPC channel (one HTTP/2
 * connection) that every thread shares.
 *
 * Retries are safe only when a repeat cannot change the outcome:
 *   - a request that was never sent (the endpoint's channel did not become
 *     ready within so_connect_timeout_ms): any op;
 *   - reads (range, status, a txn whose ops are all gets), lease
 *     keepalive/grant/revoke: always (a
 *     duplicate grant leaves an orphan lease that expires by itself);
 *   - put, delete, txn, compaction that were sent and got no answer (the
 *     deadline passed, the connection dropped, or etcd's "request timed
 *     out"): never. They fail with TG_STORE_EUNKNOWN: the write may have
 *     been applied; the caller reads to find out. etcd's "no leader" and
 *     "too many requests" are refused before proposing, so they are repeated.
 *
 * Watches: one thread per watch holds a Watch stream (one create request,
 * then the answers). When the stream ends (etcd restarted, endpoint down)
 * the thread reconnects, to the next endpoint after a backoff, asking for
 * start_revision = last delivered + 1; events at or below the last delivered
 * revision are dropped, so a reconnect neither misses nor repeats one. etcd
 * answers a start revision under its compaction point with canceled +
 * compact_revision, which becomes ECOMPACTED; any other cancel is another
 * stream. A stream that would wait forever ends instead: the Watch asks
 * "hasleader", so a member without a leader (minority side of a partition)
 * ends it with "no leader", and HTTP/2 keepalive pings end it on a member
 * that stopped answering or a half-open connection.
 *
 * Auth: with so_username, Auth/Authenticate gives a token sent as the
 * "token" metadata; an "invalid auth token" answer re-authenticates once.
 * TLS: https:// endpoints with so_ca_file, so_cert_file and so_key_file. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/tg_log.h"
#include "rpc/tg_rpc.h"
#include "store/etcd/etcd_rpc.pb-c.h"
#include "store/store_int.h"

#define MAX_RESPONSE ((size_t)512 << 20) /* a range of many 1 MiB values */

typedef struct estore {
    struct tg_store es_base;
    char **es_eps;            /* endpoint URLs as given, without a trailing '/' */
    tg_rpc_channel_t **es_ch; /* one channel per endpoint */
    size_t es_neps;
    atomic_int es_cur; /* the endpoint that last answered */
    char *es_user, *es_pass;
    int es_timeout_ms, es_connect_ms;
    int es_retries;
    pthread_mutex_t es_mu; /* guards the token */
    char *es_token;        /* etcd auth token, or NULL */
} estore_t;

typedef ProtobufCBinaryData bin_t;

static bin_t bin(const void *p, size_t n)
{
    return (bin_t){.len = n, .data = (uint8_t *)(n ? p : NULL)};
}

static int64_t hdr_rev(const Etcdserverpb__ResponseHeader *h)
{
    return h ? h->revision : 0;
}

/* An answer's kv into kv, its bytes in one block (as tg_store__kv_set). */
static int parse_kv(const Etcdserverpb__KeyValue *j, tg_store_kv_t *kv, char *err, size_t errlen)
{
    if (j == NULL)
        return tg_errf(err, errlen, TG_STORE_ESERVER, "etcd: an event without its kv");
    if (tg_store__kv_set(kv, j->key.data, j->key.len, j->value.data, j->value.len))
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory reading a kv");
    kv->kv_create_rev = j->create_revision;
    kv->kv_mod_rev = j->mod_revision;
    kv->kv_version = j->version;
    kv->kv_lease = j->lease;
    return 0;
}

/* A RangeResponse into res. */
static int parse_range(const Etcdserverpb__RangeResponse *j, tg_store_range_res_t *res, char *err,
                       size_t errlen)
{
    size_t n = j ? j->n_kvs : 0;
    int rc;
    if ((rc = tg_store__res_alloc(res, n)))
        return tg_errf(err, errlen, rc, "out of memory reading a range");
    for (size_t i = 0; i < n; i++) {
        if ((rc = parse_kv(j->kvs[i], &res->rs_kvs[i], err, errlen)))
            return rc;
        res->rs_n++;
    }
    res->rs_more = j ? j->more : 0;
    res->rs_count = j ? j->count : 0;
    res->rs_revision = j ? hdr_rev(j->header) : 0;
    return 0;
}

/* ---- calls -------------------------------------------------------------------- */

enum { IDEMPOTENT = 1, WRITE = 0 };

/* HTTP/2 pings on each channel while a call is open: a member that stopped
 * answering (frozen, or the connection half-open after a network fault)
 * ends the watch stream within ~2x this, and the watch moves on. etcd
 * refuses pings more often than its --grpc-keepalive-min-time (5 s). */
#define KEEPALIVE_MS 10000

/* Maps etcd's error answer (gRPC status message and code) to a store code.
 * RESOURCE_EXHAUSTED is three things in etcd: the quota alarm ("database
 * space exceeded": EFULL, gone once an operator compacts and disarms), an
 * apply backlog ("too many requests": EUNAVAIL, refused before it is
 * proposed, see is_refused) and gRPC's own message size limit ("larger than
 * max": ETOOBIG). Only a request that can never succeed is ETOOBIG or
 * EINVAL: callers drop such a request for good. "too many operations in txn
 * request" cannot come from a request within TG_STORE_MAX_TXN_OPS (the front
 * refuses larger ones) unless etcd's --max-txn-ops is set below it: that is
 * the server's configuration, ESERVER, and the request is worth repeating
 * once it is fixed. */
static int etcd_code(const char *msg, int grpc)
{
    if (strstr(msg, "compacted"))
        return TG_STORE_ECOMPACTED;
    if (strstr(msg, "future revision"))
        return TG_STORE_EFUTURE;
    if (strstr(msg, "lease not found"))
        return TG_STORE_ENOLEASE;
    if (strstr(msg, "database space exceeded"))
        return TG_STORE_EFULL;
    if (strstr(msg, "too many requests"))
        return TG_STORE_EUNAVAIL;
    if (strstr(msg, "too many operations"))
        return TG_STORE_ESERVER;
    if (strstr(msg, "request is too large") || strstr(msg, "larger than max"))
        return TG_STORE_ETOOBIG;
    if (strstr(msg, "duplicate key") || strstr(msg, "too large lease TTL"))
        return TG_STORE_EINVAL;
    if (grpc == TG_RPC_CODE_UNAUTHENTICATED || grpc == TG_RPC_CODE_PERMISSION_DENIED ||
        strstr(msg, "authentication failed") || strstr(msg, "permission denied") ||
        strstr(msg, "user name is empty") || strstr(msg, "auth token"))
        return TG_STORE_EAUTH;
    if (grpc == TG_RPC_CODE_UNAVAILABLE || grpc == TG_RPC_CODE_DEADLINE_EXCEEDED)
        return TG_STORE_EUNAVAIL;
    return TG_STORE_ESERVER;
}

/* An EUNAVAIL answer etcd gives before proposing the request, so that even
 * a write is safe to repeat: "no leader" and "too many requests" (the
 * applied index lags the committed one; etcd checks it first). */
static int is_refused(const char *msg)
{
    return strstr(msg, "no leader") != NULL || strstr(msg, "too many requests") != NULL;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* The token metadata into md (a copy in *tok to free); returns how many. */
static size_t token_md(estore_t *es, tg_rpc_md_t *md, char **tok)
{
    pthread_mutex_lock(&es->es_mu);
    *tok = es->es_token ? tg_strdup(es->es_token) : NULL;
    pthread_mutex_unlock(&es->es_mu);
    if (*tok == NULL)
        return 0;
    md->md_key = "token";
    md->md_value = *tok;
    md->md_len = 0;
    return 1;
}

static int authenticate(estore_t *es, char *err, size_t errlen);

/* One request to endpoint ep, answered as tg_rpc_unary answers (0 and the
 * answer in res, or TG_RPC_ESTATUS with res's code and message). stream:
 * the method is a stream (LeaseKeepAlive) taking one request and giving
 * one answer; no answer in time is DEADLINE_EXCEEDED. */
static int exchange(estore_t *es, int ep, const char *method, int stream, const tg_buf_t *body,
                    tg_rpc_result_t *res, char *cerr, size_t cerrlen)
{
    tg_rpc_md_t md;
    char *tok = NULL;
    size_t nmd = token_md(es, &md, &tok);
    if (!stream) {
        int r = tg_rpc_unary(es->es_ch[ep], method, &md, nmd, body->b_data, body->b_len, es->es_timeout_ms,
                             res, cerr, cerrlen);
        tg_free(tok);
        return r;
    }
    tg_rpc_reader_t *rd = NULL;
    tg_buf_t msg;
    const char *smsg = "no answer in time";
    memset(res, 0, sizeof(*res));
    tg_buf_init(&msg, MAX_RESPONSE);
    int r = tg_rpc_reader_open(es->es_ch[ep], method, &md, nmd, body->b_data, body->b_len, es->es_timeout_ms,
                               &rd, cerr, cerrlen);
    tg_free(tok);
    if (r == 0)
        r = tg_rpc_reader_next(rd, es->es_timeout_ms, &msg, cerr, cerrlen);
    if (r == 1) {
        res->rs_len = msg.b_len;
        res->rs_data = (uint8_t *)tg_buf_steal(&msg, NULL);
        r = res->rs_data != NULL || msg.b_len == 0 ? 0 : TG_RPC_ENOMEM;
    } else if (r == 0 || r == TG_RPC_ESTATUS || r == TG_RPC_ETIMEDOUT) {
        int code = r == TG_RPC_ESTATUS ? tg_rpc_reader_status(rd, &smsg) : TG_RPC_CODE_DEADLINE_EXCEEDED;
        res->rs_code = code > 0 ? code : TG_RPC_CODE_DEADLINE_EXCEEDED;
        res->rs_message = tg_strdup(smsg);
        r = res->rs_message ? TG_RPC_ESTATUS : TG_RPC_ENOMEM;
    }
    tg_rpc_reader_destroy(rd);
    tg_buf_free(&msg);
    return r;
}

/* Calls method with req; on OK *out is the answer parsed as desc (free it
 * with tg_rpc_pb_free). idem: IDEMPOTENT or WRITE, see the retry rules at
 * the top; stream as for exchange(). */
static int call(estore_t *es, const char *method, int stream, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *desc, int idem, ProtobufCMessage **out, char *err,
                size_t errlen)
{
    tg_buf_t body;
    char last[TG_ERRLEN] = "no endpoint tried", cerr[TG_ERRLEN];
    int rc = TG_STORE_EUNAVAIL, reauthed = 0;
    *out = NULL;
    tg_buf_init(&body, TG_STORE_MAX_TXN_BYTES * 2);
    if (tg_rpc_pb_pack(req, &body, cerr, sizeof(cerr)) < 0) {
        tg_buf_free(&body);
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory encoding a request");
    }
    int rounds = es->es_retries;
    long backoff = 50;
    for (int round = 0; round < rounds; round++) {
        if (round) {
            sleep_ms(backoff);
            backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
        }
        int start = atomic_load(&es->es_cur);
        for (size_t i = 0; i < es->es_neps; i++) {
            int ep = (int)((start + i) % es->es_neps);
            if (!tg_rpc_channel_ready(es->es_ch[ep], es->es_connect_ms)) {
                snprintf(last, sizeof(last), "%.200s: not connected within %d ms", es->es_eps[ep],
                         es->es_connect_ms);
                continue; /* nothing was sent: next endpoint */
            }
            tg_rpc_result_t res;
            cerr[0] = 0;
            int r = exchange(es, ep, method, stream, &body, &res, cerr, sizeof(cerr));
            if (r == 0) {
                int was = atomic_exchange(&es->es_cur, ep);
                if (was != ep) /* operators see every failover (issue 15) */
                    TG_LOG(TG_LOG_WARN, "store.etcd",
                           "etcd endpoint changed: %s answers now, %s did not (%s)", es->es_eps[ep],
                           es->es_eps[was], last);
                r = tg_rpc_pb_unpack(desc, res.rs_data, res.rs_len, out, cerr, sizeof(cerr));
                tg_rpc_result_free(&res);
                rc = r < 0 ? tg_errf(err, errlen, TG_STORE_ESERVER, "etcd %s answered %s: %s", es->es_eps[ep],
                                     method, cerr)
                           : 0;
                goto done;
            }
            if (r != TG_RPC_ESTATUS) {
                tg_rpc_result_free(&res);
                rc = tg_errf(err, errlen, r == TG_RPC_ENOMEM ? TG_STORE_ENOMEM : TG_STORE_EIO, "etcd %s: %s",
                             es->es_eps[ep], cerr);
                goto done;
            }
            const char *msg = res.rs_message ? res.rs_message : "";
            int code = etcd_code(msg, res.rs_code);
            if (res.rs_code == TG_RPC_CODE_UNAUTHENTICATED && es->es_user && !reauthed &&
                strstr(msg, "token")) {
                /* the token expired: the request was refused, so repeat it */
                tg_rpc_result_free(&res);
                reauthed = 1;
                if ((rc = authenticate(es, err, errlen)))
                    goto done;
                i--;
                continue;
            }
            if (code == TG_STORE_EUNAVAIL) {
                snprintf(last, sizeof(last), "%.200s: %s: %.300s", es->es_eps[ep],
                         tg_rpc_code_name(res.rs_code), msg);
                int refused = is_refused(msg);
                tg_rpc_result_free(&res);
                if (idem == WRITE && !refused) {
                    rc = tg_errf(err, errlen, TG_STORE_EUNKNOWN,
                                 "etcd: %s; the request was sent and no answer came: it may or may not "
                                 "have been applied",
                                 last);
                    goto done;
                }
                continue;
            }
            rc = tg_errf(err, errlen, code, "etcd %s: %s", es->es_eps[ep], msg);
            tg_rpc_result_free(&res);
            goto done;
        }
    }
    rc = tg_errf(err, errlen, TG_STORE_EUNAVAIL,
                 "etcd unavailable: no endpoint answered after %d rounds over %zu endpoints "
                 "(last: %s)",
                 rounds, es->es_neps, last);
done:
    tg_buf_free(&body);
    return rc;
}

static int authenticate(estore_t *es, char *err, size_t errlen)
{
    Etcdserverpb__AuthenticateRequest rq = ETCDSERVERPB__AUTHENTICATE_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    rq.name = es->es_user;
    rq.password = es->es_pass ? es->es_pass : "";
    pthread_mutex_lock(&es->es_mu);
    tg_free(es->es_token); /* the authenticate call itself needs none */
    es->es_token = NULL;
    pthread_mutex_unlock(&es->es_mu);
    int rc = call(es, "/etcdserverpb.Auth/Authenticate", 0, &rq.base,
                  &etcdserverpb__authenticate_response__descriptor, IDEMPOTENT, &m, err, errlen);
    if (rc)
        return rc == TG_STORE_EAUTH
                   ? tg_errf(err, errlen, rc, "etcd: authentication as '%s' failed", es->es_user)
                   : rc;
    Etcdserverpb__AuthenticateResponse *a = (Etcdserverpb__AuthenticateResponse *)m;
    char *tok = a->token && a->token[0] ? tg_strdup(a->token) : NULL;
    int none = a->token == NULL || a->token[0] == '\0';
    tg_rpc_pb_free(m);
    if (none)
        return tg_errf(err, errlen, TG_STORE_EAUTH, "etcd: authenticate answered no token");
    if (!tok)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory");
    pthread_mutex_lock(&es->es_mu);
    es->es_token = tok;
    pthread_mutex_unlock(&es->es_mu);
    return 0;
}

/* ---- requests ------------------------------------------------------------------ */

static int e_revision(tg_store_t *s, int64_t *rev, char *err, size_t errlen)
{
    Etcdserverpb__StatusRequest rq = ETCDSERVERPB__STATUS_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    int rc = call((estore_t *)s, "/etcdserverpb.Maintenance/Status", 0, &rq.base,
                  &etcdserverpb__status_response__descriptor, IDEMPOTENT, &m, err, errlen);
    if (!rc)
        *rev = hdr_rev(((Etcdserverpb__StatusResponse *)m)->header);
    tg_rpc_pb_free(m);
    return rc;
}

static int e_range(tg_store_t *s, const tg_store_range_req_t *req, tg_store_range_res_t *res, char *err,
                   size_t errlen)
{
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    rq.key = bin(req->rq_key, req->rq_key_len);
    rq.range_end = bin(req->rq_end, req->rq_end_len);
    rq.limit = req->rq_limit;
    rq.revision = req->rq_revision;
    rq.keys_only = req->rq_keys_only != 0;
    int rc = call((estore_t *)s, "/etcdserverpb.KV/Range", 0, &rq.base,
                  &etcdserverpb__range_response__descriptor, IDEMPOTENT, &m, err, errlen);
    if (!rc)
        rc = parse_range((Etcdserverpb__RangeResponse *)m, res, err, errlen);
    tg_rpc_pb_free(m);
    return rc;
}

/* One op's request messages, pointing at the op's bytes. */
typedef struct op_msgs {
    Etcdserverpb__RequestOp ro;
    Etcdserverpb__PutRequest put;
    Etcdserverpb__DeleteRangeRequest del;
    Etcdserverpb__RangeRequest get;
} op_msgs_t;

static void op_fill(const tg_store_op_t *o, op_msgs_t *m)
{
    etcdserverpb__request_op__init(&m->ro);
    if (o->op_type == TG_STORE_OP_PUT) {
        etcdserverpb__put_request__init(&m->put);
        m->put.key = bin(o->op_key, o->op_key_len);
        m->put.value = bin(o->op_val, o->op_val_len);
        m->put.lease = o->op_lease;
        m->ro.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
        m->ro.request_put = &m->put;
    } else if (o->op_type == TG_STORE_OP_DELETE) {
        etcdserverpb__delete_range_request__init(&m->del);
        m->del.key = bin(o->op_key, o->op_key_len);
        m->del.range_end = bin(o->op_end, o->op_end_len);
        m->ro.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
        m->ro.request_delete_range = &m->del;
    } else {
        etcdserverpb__range_request__init(&m->get);
        m->get.key = bin(o->op_key, o->op_key_len);
        m->get.range_end = bin(o->op_end, o->op_end_len);
        m->get.limit = o->op_limit;
        m->ro.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
        m->ro.request_range = &m->get;
    }
}

/* A TxnResponse into res, for the branch it says ran (success or failure
 * ops). */
static int parse_txn(const Etcdserverpb__TxnResponse *ans, const tg_store_op_t *success, size_t nsuccess,
                     const tg_store_op_t *failure, size_t nfailure, tg_store_txn_res_t *res, char *err,
                     size_t errlen)
{
    int rc;
    res->tx_succeeded = ans->succeeded;
    res->tx_revision = hdr_rev(ans->header);
    const tg_store_op_t *ops = res->tx_succeeded ? success : failure;
    size_t n = res->tx_succeeded ? nsuccess : nfailure;
    if (n && ans->n_responses != n)
        return tg_errf(err, errlen, TG_STORE_ESERVER, "etcd txn: %zu responses for %zu ops", ans->n_responses,
                       n);
    if (n && !(res->tx_res = tg_calloc(n, sizeof(*res->tx_res))))
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory reading a txn");
    res->tx_n = n;
    for (size_t i = 0; i < n; i++) {
        const Etcdserverpb__ResponseOp *r = ans->responses[i];
        res->tx_res[i].or_type = ops[i].op_type;
        if (ops[i].op_type == TG_STORE_OP_DELETE) {
            res->tx_res[i].or_deleted =
                r->response_case == ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE
                    ? r->response_delete_range->deleted
                    : 0;
        } else if (ops[i].op_type == TG_STORE_OP_GET) {
            /* another kind of answer is not "absent": the reader would act on it */
            if (r->response_case != ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE)
                return tg_errf(err, errlen, TG_STORE_ESERVER, "etcd txn: op %zu is a get, its answer is not a range",
                               i);
            if ((rc = parse_range(r->response_range, &res->tx_res[i].or_range, err, errlen)))
                return rc;
            res->tx_res[i].or_range.rs_revision = res->tx_revision;
        }
    }
    return 0;
}

/* Our compare ops (EQ, NE, LT, GT) in etcd's CompareResult order. */
static const int RESULTS[] = {
    ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL, ETCDSERVERPB__COMPARE__COMPARE_RESULT__NOT_EQUAL,
    ETCDSERVERPB__COMPARE__COMPARE_RESULT__LESS, ETCDSERVERPB__COMPARE__COMPARE_RESULT__GREATER};

static int e_txn(tg_store_t *s, const tg_store_cmp_t *cmps, size_t ncmp, const tg_store_op_t *success,
                 size_t nsuccess, const tg_store_op_t *failure, size_t nfailure, tg_store_txn_res_t *res,
                 char *err, size_t errlen)
{
    estore_t *es = (estore_t *)s;
    ProtobufCMessage *ans = NULL;
    int rc = 0;
    /* one put or delete: the plain calls (what an etcd user would see) */
    if (ncmp == 0 && nsuccess == 1 && success[0].op_type != TG_STORE_OP_GET) {
        const tg_store_op_t *o = &success[0];
        int put = o->op_type == TG_STORE_OP_PUT;
        op_msgs_t m;
        op_fill(o, &m);
        res->tx_res = tg_calloc(1, sizeof(*res->tx_res));
        if (!res->tx_res)
            return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory encoding a write");
        if (put)
            rc = call(es, "/etcdserverpb.KV/Put", 0, &m.put.base, &etcdserverpb__put_response__descriptor,
                      WRITE, &ans, err, errlen);
        else
            rc = call(es, "/etcdserverpb.KV/DeleteRange", 0, &m.del.base,
                      &etcdserverpb__delete_range_response__descriptor, WRITE, &ans, err, errlen);
        if (rc)
            goto done;
        res->tx_n = 1;
        res->tx_res[0].or_type = o->op_type;
        res->tx_succeeded = 1;
        if (put) {
            res->tx_revision = hdr_rev(((Etcdserverpb__PutResponse *)ans)->header);
        } else {
            res->tx_res[0].or_deleted = ((Etcdserverpb__DeleteRangeResponse *)ans)->deleted;
            res->tx_revision = hdr_rev(((Etcdserverpb__DeleteRangeResponse *)ans)->header);
        }
        goto done;
    }
    Etcdserverpb__TxnRequest rq = ETCDSERVERPB__TXN_REQUEST__INIT;
    Etcdserverpb__Compare *cv = tg_calloc(ncmp ? ncmp : 1, sizeof(*cv));
    Etcdserverpb__Compare **cp = tg_calloc(ncmp ? ncmp : 1, sizeof(*cp));
    op_msgs_t *om = tg_calloc(nsuccess + nfailure + 1, sizeof(*om));
    Etcdserverpb__RequestOp **rp = tg_calloc(nsuccess + nfailure + 1, sizeof(*rp));
    if (!cv || !cp || !om || !rp) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory encoding a txn");
        goto txn_done;
    }
    for (size_t i = 0; i < ncmp; i++) {
        const tg_store_cmp_t *c = &cmps[i];
        Etcdserverpb__Compare *e = &cv[i];
        etcdserverpb__compare__init(e);
        e->key = bin(c->c_key, c->c_key_len);
        e->result = RESULTS[c->c_op];
        switch (c->c_target) {
        case TG_STORE_CMP_VALUE:
            e->target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE;
            e->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE;
            e->value = bin(c->c_val, c->c_val_len);
            break;
        case TG_STORE_CMP_VERSION:
            e->target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION;
            e->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION;
            e->version = c->c_num;
            break;
        case TG_STORE_CMP_CREATE_REV:
            e->target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE;
            e->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
            e->create_revision = c->c_num;
            break;
        default:
            e->target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD;
            e->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
            e->mod_revision = c->c_num;
            break;
        }
        cp[i] = e;
    }
    for (size_t i = 0; i < nsuccess + nfailure; i++) {
        op_fill(i < nsuccess ? &success[i] : &failure[i - nsuccess], &om[i]);
        rp[i] = &om[i].ro;
    }
    rq.n_compare = ncmp;
    rq.compare = cp;
    rq.n_success = nsuccess;
    rq.success = rp;
    rq.n_failure = nfailure;
    rq.failure = rp + nsuccess;
    /* a txn whose ops only read (compares read too) changes nothing: repeating it is safe */
    int idem = IDEMPOTENT;
    for (size_t i = 0; i < nsuccess + nfailure; i++)
        if ((i < nsuccess ? &success[i] : &failure[i - nsuccess])->op_type != TG_STORE_OP_GET)
            idem = WRITE;
    rc = call(es, "/etcdserverpb.KV/Txn", 0, &rq.base, &etcdserverpb__txn_response__descriptor, idem, &ans,
              err, errlen);
    if (!rc)
        rc = parse_txn((Etcdserverpb__TxnResponse *)ans, success, nsuccess, failure, nfailure, res, err,
                       errlen);
txn_done:
    tg_free(cv);
    tg_free(cp);
    tg_free(om);
    tg_free(rp);
done:
    tg_rpc_pb_free(ans);
    return rc;
}

static int e_compact(tg_store_t *s, int64_t rev, char *err, size_t errlen)
{
    Etcdserverpb__CompactionRequest rq = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    rq.revision = rev;
    rq.physical = 1;
    int rc = call((estore_t *)s, "/etcdserverpb.KV/Compact", 0, &rq.base,
                  &etcdserverpb__compaction_response__descriptor, WRITE, &m, err, errlen);
    tg_rpc_pb_free(m);
    return rc;
}

static int e_lease_grant(tg_store_t *s, int64_t ttl, int64_t *id, char *err, size_t errlen)
{
    Etcdserverpb__LeaseGrantRequest rq = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    rq.ttl = ttl;
    int rc = call((estore_t *)s, "/etcdserverpb.Lease/LeaseGrant", 0, &rq.base,
                  &etcdserverpb__lease_grant_response__descriptor, IDEMPOTENT, &m, err, errlen);
    if (!rc) {
        Etcdserverpb__LeaseGrantResponse *a = (Etcdserverpb__LeaseGrantResponse *)m;
        if (a->error && a->error[0])
            rc = tg_errf(err, errlen, TG_STORE_ESERVER, "etcd lease grant: %s", a->error);
        else if ((*id = a->id) <= 0)
            rc = tg_errf(err, errlen, TG_STORE_ESERVER, "etcd lease grant: no lease id");
    }
    tg_rpc_pb_free(m);
    return rc;
}

static int e_lease_keepalive(tg_store_t *s, int64_t id, int64_t *ttl, char *err, size_t errlen)
{
    Etcdserverpb__LeaseKeepAliveRequest rq = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    rq.id = id;
    int rc = call((estore_t *)s, "/etcdserverpb.Lease/LeaseKeepAlive", 1, &rq.base,
                  &etcdserverpb__lease_keep_alive_response__descriptor, IDEMPOTENT, &m, err, errlen);
    if (!rc && (*ttl = ((Etcdserverpb__LeaseKeepAliveResponse *)m)->ttl) <= 0) /* TTL 0 = no lease */
        rc = tg_errf(err, errlen, TG_STORE_ENOLEASE, "lease %lld not found (expired or revoked)",
                     (long long)id);
    tg_rpc_pb_free(m);
    return rc;
}

static int e_lease_revoke(tg_store_t *s, int64_t id, char *err, size_t errlen)
{
    Etcdserverpb__LeaseRevokeRequest rq = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    rq.id = id;
    int rc = call((estore_t *)s, "/etcdserverpb.Lease/LeaseRevoke", 0, &rq.base,
                  &etcdserverpb__lease_revoke_response__descriptor, IDEMPOTENT, &m, err, errlen);
    tg_rpc_pb_free(m);
    return rc;
}

/* ---- watches ------------------------------------------------------------------- */

typedef struct ewatch {
    estore_t *ew_es;
    tg_store_watch_t *ew_w;
    pthread_t ew_thr;
    pthread_mutex_t ew_mu;      /* guards ew_reader and the stop wait */
    pthread_cond_t ew_cv;       /* signalled on stop */
    tg_rpc_reader_t *ew_reader; /* the stream open now, or NULL */
    atomic_int ew_stop;
    int ew_done;     /* the watch ended for good (compacted, canceled) */
    int ew_created;  /* this stream's create was answered */
    int64_t ew_next; /* next revision to deliver */
} ewatch_t;

/* One WatchResponse from the stream. Returns 0, or -1 to end the stream. */
static int watch_msg(ewatch_t *ew, const uint8_t *p, size_t n)
{
    ProtobufCMessage *m = NULL;
    char err[TG_ERRLEN] = "";
    int rc = 0;
    if (tg_rpc_pb_unpack(&etcdserverpb__watch_response__descriptor, p, n, &m, err, sizeof(err)) < 0)
        return -1; /* garbage: reconnect */
    const Etcdserverpb__WatchResponse *r = (const Etcdserverpb__WatchResponse *)m;
    if (r->canceled) {
        if (r->compact_revision > 0)
            tg_store__watch_fail(ew->ew_w, TG_STORE_ECOMPACTED,
                                 "watch from revision %lld: etcd compacted up to %lld; resync and "
                                 "watch from the current revision",
                                 (long long)ew->ew_next, (long long)r->compact_revision);
        else /* the member's reason (no leader, auth): another stream, maybe on another member */
            TG_LOG(TG_LOG_WARN, "store.etcd", "etcd canceled the watch from revision %lld: %s; watching again",
                   (long long)ew->ew_next,
                   r->cancel_reason && r->cancel_reason[0] ? r->cancel_reason : "no reason");
        ew->ew_done = r->compact_revision > 0;
        rc = -1;
        goto done;
    }
    if (r->created) {
        ew->ew_created = 1;
        tg_store__watch_set_connected(ew->ew_w, 1);
    }
    int64_t floor = ew->ew_next, top = 0;
    for (size_t i = 0; i < r->n_events; i++) {
        const Etcdserverpb__Event *e = r->events[i];
        const Etcdserverpb__KeyValue *kv = e->kv;
        if (kv == NULL || kv->mod_revision == INT64_MAX) {
            /* no kv, or no revision can follow it (found by etcd_fuzz: top + 1
             * overflowed): a garbled answer, reconnect */
            rc = -1;
            goto done;
        }
        int type = e->type == ETCDSERVERPB__EVENT__EVENT_TYPE__DELETE ? TG_STORE_EV_DELETE : TG_STORE_EV_PUT;
        if (kv->mod_revision >= floor) { /* below: already delivered before a reconnect */
            tg_store_kv_t k = {.kv_key = kv->key.data,
                               .kv_key_len = kv->key.len,
                               .kv_val = kv->value.data,
                               .kv_val_len = kv->value.len,
                               .kv_create_rev = kv->create_revision,
                               .kv_mod_rev = kv->mod_revision,
                               .kv_version = kv->version,
                               .kv_lease = kv->lease};
            tg_store__watch_push(ew->ew_w, type, &k);
        }
        if (kv->mod_revision > top)
            top = kv->mod_revision;
    }
    if (top >= ew->ew_next)
        ew->ew_next = top + 1;
done:
    tg_rpc_pb_free(m);
    return rc;
}

/* Waits ms, waking early on stop. */
static void watch_sleep(ewatch_t *ew, long ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&ew->ew_mu);
    while (!atomic_load(&ew->ew_stop) && pthread_cond_timedwait(&ew->ew_cv, &ew->ew_mu, &dl) == 0)
        ;
    pthread_mutex_unlock(&ew->ew_mu);
}

/* One stream on endpoint ep until it ends; returns 1 if it made progress. */
static int watch_stream(ewatch_t *ew, int ep)
{
    estore_t *es = ew->ew_es;
    tg_store_watch_t *w = ew->ew_w;
    Etcdserverpb__WatchRequest rq = ETCDSERVERPB__WATCH_REQUEST__INIT;
    Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    char err[TG_ERRLEN] = "";
    tg_rpc_md_t md[2];
    char *tok = NULL;
    tg_rpc_reader_t *r = NULL;
    tg_buf_t body, msg;
    int64_t before = ew->ew_next;
    cr.key = bin(w->w_key, w->w_key_len);
    cr.range_end = bin(w->w_end, w->w_end_len);
    cr.start_revision = ew->ew_next;
    rq.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    rq.create_request = &cr;
    tg_buf_init(&body, TG_STORE_MAX_KEY * 4);
    tg_buf_init(&msg, MAX_RESPONSE);
    ew->ew_created = 0;
    if (tg_rpc_pb_pack(&rq.base, &body, err, sizeof(err)) < 0) {
        tg_store__watch_fail(w, TG_STORE_ENOMEM, "out of memory in the etcd watch thread");
        ew->ew_done = 1;
        goto done;
    }
    if (!tg_rpc_channel_ready(es->es_ch[ep], es->es_connect_ms))
        goto done;
    size_t nmd = token_md(es, &md[0], &tok);
    /* a member that loses its leader (a minority partition) ends the
     * stream with "no leader" instead of silently delivering nothing */
    md[nmd++] = (tg_rpc_md_t){.md_key = "hasleader", .md_value = "true"};
    int rc = tg_rpc_reader_open(es->es_ch[ep], "/etcdserverpb.Watch/Watch", md, nmd, body.b_data, body.b_len,
                                0, &r, err, sizeof(err));
    tg_free(tok);
    if (rc < 0)
        goto done;
    pthread_mutex_lock(&ew->ew_mu);
    ew->ew_reader = r;
    if (atomic_load(&ew->ew_stop))
        tg_rpc_reader_cancel(r);
    pthread_mutex_unlock(&ew->ew_mu);
    /* no timeout: stopping cancels the stream, which ends the wait */
    while ((rc = tg_rpc_reader_next(r, -1, &msg, err, sizeof(err))) == 1)
        if (atomic_load(&ew->ew_stop) || watch_msg(ew, (const uint8_t *)msg.b_data, msg.b_len))
            break;
    pthread_mutex_lock(&ew->ew_mu);
    ew->ew_reader = NULL;
    pthread_mutex_unlock(&ew->ew_mu);
    tg_rpc_reader_destroy(r);
done:
    tg_buf_free(&body);
    tg_buf_free(&msg);
    return ew->ew_created && ew->ew_next != before;
}

static void *watch_thread(void *arg)
{
    ewatch_t *ew = arg;
    estore_t *es = ew->ew_es;
    tg_store_watch_t *w = ew->ew_w;
    long backoff = 100;
    int ep = atomic_load(&es->es_cur);
    while (!atomic_load(&ew->ew_stop) && !ew->ew_done) {
        int progress = watch_stream(ew, ep);
        tg_store__watch_set_connected(w, 0);
        if (atomic_load(&ew->ew_stop) || ew->ew_done)
            break;
        /* the stream ended: next endpoint, after a backoff unless it made progress */
        if (!progress) {
            int was = ep;
            ep = (ep + 1) % (int)es->es_neps;
            if (ep != was)
                TG_LOG(TG_LOG_WARN, "store.etcd", "etcd watch moves from endpoint %s to %s", es->es_eps[was],
                       es->es_eps[ep]);
            if (es->es_user) { /* the token may have expired: get a fresh one */
                char aerr[TG_ERRLEN] = "";
                (void)authenticate(es, aerr, sizeof(aerr));
            }
            watch_sleep(ew, backoff);
            backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
        } else {
            backoff = 100;
        }
    }
    return NULL;
}

static void ewatch_free(ewatch_t *ew)
{
    pthread_cond_destroy(&ew->ew_cv);
    pthread_mutex_destroy(&ew->ew_mu);
    tg_free(ew);
}

static int e_watch_start(tg_store_t *s, tg_store_watch_t *w, char *err, size_t errlen)
{
    estore_t *es = (estore_t *)s;
    int rc;
    ewatch_t *ew = tg_calloc(1, sizeof(*ew));
    if (!ew)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for a watch");
    ew->ew_es = es;
    ew->ew_w = w;
    pthread_mutex_init(&ew->ew_mu, NULL);
    pthread_cond_init(&ew->ew_cv, NULL);
    ew->ew_next = w->w_start_rev;
    if (!ew->ew_next) {
        /* "after now" pinned to a revision, so a reconnect keeps the meaning */
        int64_t cur;
        if ((rc = e_revision(s, &cur, err, errlen)))
            goto fail;
        ew->ew_next = cur + 1;
    }
    pthread_mutex_lock(&w->w_mu);
    w->w_next_rev = ew->ew_next;
    pthread_mutex_unlock(&w->w_mu);
    w->w_priv = ew;
    if (pthread_create(&ew->ew_thr, NULL, watch_thread, ew) != 0) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "cannot start a watch thread");
        goto fail;
    }
    return 0;
fail:
    ewatch_free(ew);
    w->w_priv = NULL;
    return rc;
}

static void e_watch_stop(tg_store_t *s, tg_store_watch_t *w)
{
    ewatch_t *ew = w->w_priv;
    (void)s;
    if (!ew)
        return;
    pthread_mutex_lock(&ew->ew_mu);
    atomic_store(&ew->ew_stop, 1);
    if (ew->ew_reader)
        tg_rpc_reader_cancel(ew->ew_reader);
    pthread_cond_broadcast(&ew->ew_cv);
    pthread_mutex_unlock(&ew->ew_mu);
    pthread_join(ew->ew_thr, NULL);
    ewatch_free(ew);
    w->w_priv = NULL;
}

/* ---- open / close -------------------------------------------------------------- */

static void e_close(tg_store_t *s)
{
    estore_t *es = (estore_t *)s;
    for (size_t i = 0; i < es->es_neps; i++) {
        tg_free(es->es_eps[i]);
        if (es->es_ch)
            tg_rpc_channel_destroy(es->es_ch[i]);
    }
    tg_free(es->es_eps);
    tg_free(es->es_ch);
    tg_free(es->es_user);
    tg_free(es->es_pass);
    tg_free(es->es_token);
    pthread_mutex_destroy(&es->es_mu);
    tg_free(es);
}

static const tg_store_backend_t etcd_backend = {
    .b_name = "etcd",
    .b_close = e_close,
    .b_revision = e_revision,
    .b_range = e_range,
    .b_txn = e_txn,
    .b_compact = e_compact,
    .b_lease_grant = e_lease_grant,
    .b_lease_keepalive = e_lease_keepalive,
    .b_lease_revoke = e_lease_revoke,
    .b_watch_start = e_watch_start,
    .b_watch_stop = e_watch_stop,
};

static int dup_opt(char **dst, const char *src)
{
    if (!src)
        return 0;
    *dst = tg_strdup(src);
    return *dst ? 0 : -1;
}

/* A PEM file's contents into *out (tg_free it); NULL path leaves NULL. */
static int read_pem(const char *path, const char *what, char **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!path)
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "etcd %s %s: %s", what, path, strerror(errno));
    tg_buf_t b;
    char chunk[4096];
    size_t n;
    int rc = 0;
    tg_buf_init(&b, (size_t)1 << 20);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if (tg_buf_append(&b, chunk, n)) {
            rc = tg_errf(err, errlen, TG_STORE_EINVAL, "etcd %s %s: larger than 1 MiB", what, path);
            break;
        }
    fclose(f);
    if (rc == 0 && !(*out = tg_buf_steal(&b, NULL)))
        rc = tg_errf(err, errlen, TG_STORE_EINVAL, "etcd %s %s: empty", what, path);
    tg_buf_free(&b);
    return rc;
}

/* The gRPC target of an endpoint URL: its host:port (etcd's 2379 when the
 * URL names none). */
static int ep_target(const char *url, char *out, size_t outlen)
{
    const char *h = strstr(url, "://") + 3;
    size_t len = strcspn(h, "/");
    int has_port = len > 0 && h[len - 1] != ']' && memchr(h, ':', len) != NULL &&
                   (h[0] != '[' || memchr(h, ']', len) != NULL);
    if (h[0] == '[') { /* [v6]:port */
        const char *rb = memchr(h, ']', len);
        has_port = rb != NULL && rb + 1 < h + len && rb[1] == ':';
    }
    int n = snprintf(out, outlen, "%.*s%s", (int)len, h, has_port ? "" : ":2379");
    return n > 0 && (size_t)n < outlen ? 0 : -1;
}

int tg_store_etcd_open(tg_store_t **out, const char *urls, const tg_store_opts_t *opts, char *err,
                       size_t errlen)
{
    int rc = 0;
    char *ca = NULL, *cert = NULL, *key = NULL;
    estore_t *es = tg_calloc(1, sizeof(*es));
    if (!es)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory opening etcd");
    es->es_base.s_backend = &etcd_backend;
    pthread_mutex_init(&es->es_mu, NULL);
    es->es_timeout_ms = opts->so_timeout_ms ? opts->so_timeout_ms : 5000;
    es->es_connect_ms = opts->so_connect_timeout_ms ? opts->so_connect_timeout_ms : 1000;
    if (es->es_connect_ms > es->es_timeout_ms)
        es->es_connect_ms = es->es_timeout_ms;
    es->es_retries = opts->so_retries ? opts->so_retries : 3;
    if (dup_opt(&es->es_user, opts->so_username) || dup_opt(&es->es_pass, opts->so_password)) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory opening etcd");
        goto fail;
    }
    if ((rc = read_pem(opts->so_ca_file, "CA file", &ca, err, errlen)) ||
        (rc = read_pem(opts->so_cert_file, "certificate file", &cert, err, errlen)) ||
        (rc = read_pem(opts->so_key_file, "key file", &key, err, errlen)))
        goto fail;
    size_t n = 1;
    for (const char *p = urls; *p; p++)
        n += *p == ',';
    es->es_eps = tg_calloc(n, sizeof(*es->es_eps));
    es->es_ch = tg_calloc(n, sizeof(*es->es_ch));
    if (!es->es_eps || !es->es_ch) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory opening etcd");
        goto fail;
    }
    for (const char *p = urls; *p;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        while (len && p[len - 1] == '/')
            len--;
        int tls = len > 8 && strncmp(p, "https://", 8) == 0;
        if (!((len > 7 && strncmp(p, "http://", 7) == 0) || tls) || len > 900) {
            rc = tg_errf(err, errlen, TG_STORE_EINVAL,
                         "etcd endpoint '%.*s' must be an http:// or https:// URL",
                         (int)(len > 100 ? 100 : len), p);
            goto fail;
        }
        char target[1024];
        if (!(es->es_eps[es->es_neps] = tg_strndup(p, len)) ||
            ep_target(es->es_eps[es->es_neps], target, sizeof(target))) {
            tg_free(es->es_eps[es->es_neps]);
            es->es_eps[es->es_neps] = NULL;
            rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory opening etcd");
            goto fail;
        }
        tg_rpc_channel_opts_t co = {.co_tls = tls,
                                    .co_root_pem = tls ? ca : NULL,
                                    .co_cert_pem = tls ? cert : NULL,
                                    .co_key_pem = tls ? key : NULL,
                                    /* a restarted member is found again within a second */
                                    .co_reconnect_min_ms = 100,
                                    .co_reconnect_max_ms = 1000,
                                    .co_keepalive_ms = KEEPALIVE_MS,
                                    .co_max_message_bytes = (int)MAX_RESPONSE};
        char cerr[TG_ERRLEN] = "";
        es->es_ch[es->es_neps] = tg_rpc_channel_create(target, &co, cerr, sizeof(cerr));
        es->es_neps++;
        if (!es->es_ch[es->es_neps - 1]) {
            rc = tg_errf(err, errlen, TG_STORE_EINVAL, "etcd endpoint %s: %s", es->es_eps[es->es_neps - 1],
                         cerr);
            goto fail;
        }
        p += len;
        while (*p == '/')
            p++;
        if (*p == ',')
            p++;
    }
    if (!es->es_neps) {
        rc = tg_errf(err, errlen, TG_STORE_EINVAL, "etcd: no endpoint in '%s'", urls);
        goto fail;
    }
    if (es->es_user && (rc = authenticate(es, err, errlen)))
        goto fail;
    int64_t rev;
    if ((rc = e_revision(&es->es_base, &rev, err, errlen))) /* reachable now, or say so */
        goto fail;
    tg_free(ca);
    tg_free(cert);
    tg_free(key);
    *out = &es->es_base;
    return 0;
fail:
    tg_free(ca);
    tg_free(cert);
    tg_free(key);
    e_close(&es->es_base);
    return rc;
}
