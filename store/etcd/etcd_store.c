/* etcd_store.c: the tg_store backend for an etcd 3.4+ cluster, over libcurl
 * (Debian libcurl4-openssl-dev) to etcd's v3 JSON gateway, JSON by jansson.
 *
 * Every call is one POST (/v3/kv/range, put, deleterange, txn, compaction,
 * /v3/lease/{grant,keepalive,revoke}, /v3/maintenance/status) with keys and values in base64 and
 * int64s as JSON strings. Requests go to the endpoint that last answered;
 * on a transport error they move to the next one, round after round with a
 * doubling backoff (50 ms .. 1 s), so_retries rounds in all.
 *
 * Retries are safe only when a repeat cannot change the outcome:
 *   - a request that was never sent (connect refused/timed out, DNS): any op;
 *   - reads (range, status), lease keepalive/grant/revoke: always (a
 *     duplicate grant leaves an orphan lease that expires by itself);
 *   - put, delete, txn, compaction that were sent and got no answer (or
 *     etcd's "request timed out"): never. They fail with TG_STORE_EUNKNOWN:
 *     the write may have been applied; the caller reads to find out.
 *
 * Watches: one thread per watch holds a streaming POST /v3/watch (a chunked
 * response of newline-separated JSON objects) on its own curl multi handle,
 * so cancelling wakes it at once (curl_multi_wakeup). When the stream ends
 * (etcd restarted, endpoint down) the thread reconnects, to the next endpoint
 * after a backoff, asking for start_revision = last delivered + 1; events at
 * or below the last delivered revision are dropped, so a reconnect neither
 * misses nor repeats one. etcd answers a start revision under its compaction
 * point with canceled + compact_revision, which becomes ECOMPACTED.
 *
 * Auth: with so_username, /v3/auth/authenticate gives a token sent as the
 * Authorization header; an "invalid auth token" answer re-authenticates once.
 * TLS: https:// endpoints with so_ca_file, so_cert_file and so_key_file. */
#include <jansson.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/tg_b64.h"
#include "base/tg_log.h"
#include "store/store_int.h"

#define MAX_RESPONSE ((size_t)512 << 20) /* a range of many 1 MiB values */

typedef struct estore {
    struct tg_store es_base;
    char **es_eps; /* endpoint URLs without a trailing '/' */
    size_t es_neps;
    atomic_int es_cur; /* the endpoint that last answered */
    char *es_user, *es_pass, *es_ca, *es_cert, *es_key;
    long es_timeout_ms, es_connect_ms;
    int es_retries;
    pthread_mutex_t es_mu; /* guards the handle pool and the token */
    CURL **es_pool;
    size_t es_npool, es_cappool;
    char *es_token; /* "Authorization: <token>" header line, or NULL */
} estore_t;

/* ---- JSON helpers ------------------------------------------------------------- */

/* A base64 JSON string of n bytes; NULL on allocation failure. */
static json_t *jb64(const void *p, size_t n)
{
    char *b = tg_malloc(TG_B64_ENCLEN(n));
    if (!b)
        return NULL;
    tg_b64_encode(p, n, b);
    json_t *j = json_string(b);
    tg_free(b);
    return j;
}

/* An int64 as etcd's gateway writes it: a JSON string. */
static json_t *jnum(int64_t v)
{
    char b[24];
    snprintf(b, sizeof(b), "%lld", (long long)v);
    return json_string(b);
}

/* Reads an int64 field that may be a string or a number; missing = 0. */
static int64_t jint(const json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_string(v))
        return (int64_t)strtoll(json_string_value(v), NULL, 10);
    return 0;
}

/* Decodes a base64 field into a tg_malloc'd buffer (*out, *len); missing =
 * empty. Returns 0 or -1 on bad base64 / no memory. */
static int jbytes(const json_t *o, const char *name, uint8_t **out, size_t *len)
{
    json_t *v = json_object_get(o, name);
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    size_t n = strlen(s);
    *out = tg_malloc(n / 4 * 3 + 1);
    if (!*out)
        return -1;
    long d = tg_b64_decode(s, n, *out);
    if (d < 0) {
        tg_free(*out);
        *out = NULL;
        return -1;
    }
    *len = (size_t)d;
    return 0;
}

/* kv JSON -> kv with its bytes in one block (as tg_store__kv_set). */
static int parse_kv(const json_t *j, tg_store_kv_t *kv, char *err, size_t errlen)
{
    uint8_t *k = NULL, *v = NULL;
    size_t kl = 0, vl = 0;
    int rc = 0;
    if (!json_is_object(j) || jbytes(j, "key", &k, &kl) || jbytes(j, "value", &v, &vl)) {
        rc = tg_errf(err, errlen, TG_STORE_ESERVER, "etcd: malformed kv in the answer");
        goto done;
    }
    if (tg_store__kv_set(kv, k, kl, v, vl)) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory reading a kv");
        goto done;
    }
    kv->kv_create_rev = jint(j, "create_revision");
    kv->kv_mod_rev = jint(j, "mod_revision");
    kv->kv_version = jint(j, "version");
    kv->kv_lease = jint(j, "lease");
done:
    tg_free(k);
    tg_free(v);
    return rc;
}

/* A RangeResponse body into res. */
static int parse_range(const json_t *j, tg_store_range_res_t *res, char *err, size_t errlen)
{
    json_t *kvs = json_object_get(j, "kvs");
    size_t n = json_is_array(kvs) ? json_array_size(kvs) : 0;
    int rc;
    if ((rc = tg_store__res_alloc(res, n)))
        return tg_errf(err, errlen, rc, "out of memory reading a range");
    for (size_t i = 0; i < n; i++) {
        if ((rc = parse_kv(json_array_get(kvs, i), &res->rs_kvs[i], err, errlen)))
            return rc;
        res->rs_n++;
    }
    json_t *more = json_object_get(j, "more");
    res->rs_more = json_is_true(more);
    res->rs_count = jint(j, "count");
    res->rs_revision = jint(json_object_get(j, "header"), "revision");
    return 0;
}

/* ---- HTTP --------------------------------------------------------------------- */

static size_t on_body(char *p, size_t sz, size_t n, void *arg)
{
    tg_buf_t *b = arg;
    return tg_buf_append(b, p, sz * n) ? 0 : sz * n;
}

static CURL *handle_get(estore_t *es)
{
    CURL *h = NULL;
    pthread_mutex_lock(&es->es_mu);
    if (es->es_npool)
        h = es->es_pool[--es->es_npool];
    pthread_mutex_unlock(&es->es_mu);
    return h ? h : curl_easy_init();
}

static void handle_put(estore_t *es, CURL *h)
{
    pthread_mutex_lock(&es->es_mu);
    if (es->es_npool == es->es_cappool) {
        size_t nc = es->es_cappool ? es->es_cappool * 2 : 8;
        CURL **n = tg_realloc(es->es_pool, nc * sizeof(*n));
        if (n) {
            es->es_pool = n;
            es->es_cappool = nc;
        }
    }
    if (es->es_npool < es->es_cappool) {
        es->es_pool[es->es_npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&es->es_mu);
    if (h)
        curl_easy_cleanup(h);
}

/* Options every request shares: TLS, timeouts, keepalive. */
static void set_common(estore_t *es, CURL *h)
{
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, es->es_connect_ms);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    if (es->es_ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, es->es_ca);
    if (es->es_cert)
        curl_easy_setopt(h, CURLOPT_SSLCERT, es->es_cert);
    if (es->es_key)
        curl_easy_setopt(h, CURLOPT_SSLKEY, es->es_key);
}

/* Builds the header list (JSON content, token). NULL on no memory. */
static struct curl_slist *headers(estore_t *es)
{
    struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: application/json");
    pthread_mutex_lock(&es->es_mu);
    if (hl && es->es_token) {
        struct curl_slist *n = curl_slist_append(hl, es->es_token);
        if (!n) {
            curl_slist_free_all(hl);
            hl = NULL;
        } else {
            hl = n;
        }
    }
    pthread_mutex_unlock(&es->es_mu);
    return hl;
}

enum { IDEMPOTENT = 1, WRITE = 0 };

/* Maps etcd's error answer to a store code. */
static int etcd_code(const char *msg, int grpc)
{
    if (strstr(msg, "compacted"))
        return TG_STORE_ECOMPACTED;
    if (strstr(msg, "future revision"))
        return TG_STORE_EFUTURE;
    if (strstr(msg, "lease not found"))
        return TG_STORE_ENOLEASE;
    if (strstr(msg, "too large") || strstr(msg, "too many operations"))
        return TG_STORE_ETOOBIG;
    if (strstr(msg, "duplicate key"))
        return TG_STORE_EINVAL;
    if (grpc == 16 || grpc == 7 || strstr(msg, "authentication failed") || strstr(msg, "permission denied") ||
        strstr(msg, "user name is empty") || strstr(msg, "auth token"))
        return TG_STORE_EAUTH;
    if (grpc == 14)
        return TG_STORE_EUNAVAIL;
    return TG_STORE_ESERVER;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int authenticate(estore_t *es, char *err, size_t errlen);

/* POSTs body to path; on 200 *out is the parsed answer (json_decref it).
 * idem: IDEMPOTENT or WRITE, see the retry rules at the top. */
static int call(estore_t *es, const char *path, json_t *body, int idem, json_t **out, char *err,
                size_t errlen)
{
    char *payload = json_dumps(body, JSON_COMPACT);
    tg_buf_t resp;
    char url[1024], cerr[CURL_ERROR_SIZE];
    char last[TG_ERRLEN] = "no endpoint tried";
    int rc = TG_STORE_EUNAVAIL, reauthed = 0;
    *out = NULL;
    tg_buf_init(&resp, MAX_RESPONSE);
    if (!payload)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory encoding a request");
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
            CURL *h = handle_get(es);
            struct curl_slist *hl = headers(es);
            if (!h || !hl) {
                if (h)
                    handle_put(es, h);
                curl_slist_free_all(hl);
                rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for a request");
                goto done;
            }
            snprintf(url, sizeof(url), "%s%s", es->es_eps[ep], path);
            tg_buf_reset(&resp);
            cerr[0] = 0;
            curl_easy_reset(h);
            set_common(es, h);
            curl_easy_setopt(h, CURLOPT_URL, url);
            curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, payload);
            curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, es->es_timeout_ms);
            curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
            curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);
            curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
            CURLcode cc = curl_easy_perform(h);
            long status = 0, sent = 0;
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
            curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &sent);
            curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
            curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
            handle_put(es, h);
            curl_slist_free_all(hl);
            if (cc != CURLE_OK) {
                snprintf(last, sizeof(last), "%.200s: %.300s", url, cerr[0] ? cerr : curl_easy_strerror(cc));
                if (sent > 0 && idem == WRITE) {
                    rc = tg_errf(err, errlen, TG_STORE_EUNKNOWN,
                                 "etcd: %s; the request was sent and no answer came: it may or "
                                 "may not have been applied",
                                 last);
                    goto done;
                }
                continue; /* never sent, or safe to repeat: next endpoint */
            }
            json_error_t je;
            json_t *j = json_loadb(resp.b_data ? resp.b_data : "", resp.b_len, 0, &je);
            if (!j) {
                rc = tg_errf(err, errlen, TG_STORE_ESERVER,
                             "etcd %s answered HTTP %ld with a body that is not JSON: %s", url, status,
                             je.text);
                goto done;
            }
            if (status == 200) {
                int was = atomic_exchange(&es->es_cur, ep);
                if (was != ep) /* operators see every failover (issue 15) */
                    TG_LOG(TG_LOG_WARN, "store.etcd", "etcd endpoint changed: %s answers now, %s did not (%s)",
                           es->es_eps[ep], es->es_eps[was], last);
                *out = j;
                rc = 0;
                goto done;
            }
            json_t *m = json_object_get(j, "message");
            if (!m)
                m = json_object_get(j, "error");
            const char *msg = json_is_string(m) ? json_string_value(m) : "(no message)";
            int grpc = (int)jint(j, "code");
            int code = etcd_code(msg, grpc);
            if (grpc == 16 && es->es_user && !reauthed && strstr(msg, "token")) {
                /* the token expired: the request was refused, so repeat it */
                json_decref(j);
                reauthed = 1;
                if ((rc = authenticate(es, err, errlen)))
                    goto done;
                i--;
                continue;
            }
            if (code == TG_STORE_EUNAVAIL) {
                snprintf(last, sizeof(last), "%.200s: %.300s", url, msg);
                /* "no leader" is refused before it is proposed: safe to repeat */
                int refused = strstr(msg, "no leader") != NULL;
                json_decref(j);
                if (idem == WRITE && !refused) {
                    rc = tg_errf(err, errlen, TG_STORE_EUNKNOWN,
                                 "etcd: %s; the write may or may not have been applied", last);
                    goto done;
                }
                continue;
            }
            rc = tg_errf(err, errlen, code, "etcd %s: %s", url, msg);
            json_decref(j);
            goto done;
        }
    }
    rc = tg_errf(err, errlen, TG_STORE_EUNAVAIL,
                 "etcd unavailable: no endpoint answered after %d rounds over %zu endpoints "
                 "(last: %s)",
                 rounds, es->es_neps, last);
done:
    tg_buf_free(&resp);
    free(payload); /* json_dumps allocates with malloc */
    return rc;
}

static int authenticate(estore_t *es, char *err, size_t errlen)
{
    json_t *body = json_pack("{s:s, s:s}", "name", es->es_user, "password", es->es_pass ? es->es_pass : "");
    json_t *ans = NULL;
    int rc;
    if (!body)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory");
    pthread_mutex_lock(&es->es_mu);
    tg_free(es->es_token); /* the authenticate call itself needs none */
    es->es_token = NULL;
    pthread_mutex_unlock(&es->es_mu);
    rc = call(es, "/v3/auth/authenticate", body, IDEMPOTENT, &ans, err, errlen);
    json_decref(body);
    if (rc)
        return rc == TG_STORE_EAUTH
                   ? tg_errf(err, errlen, rc, "etcd: authentication as '%s' failed", es->es_user)
                   : rc;
    json_t *tok = json_object_get(ans, "token");
    if (!json_is_string(tok)) {
        json_decref(ans);
        return tg_errf(err, errlen, TG_STORE_EAUTH, "etcd: authenticate answered no token");
    }
    size_t n = strlen(json_string_value(tok)) + 32;
    char *line = tg_malloc(n);
    if (!line) {
        json_decref(ans);
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory");
    }
    snprintf(line, n, "Authorization: %s", json_string_value(tok));
    json_decref(ans);
    pthread_mutex_lock(&es->es_mu);
    es->es_token = line;
    pthread_mutex_unlock(&es->es_mu);
    return 0;
}

/* ---- requests ------------------------------------------------------------------ */

/* Sets key (and range_end when given) on o. 0 or -1 (no memory). */
static int set_span(json_t *o, const void *key, size_t klen, const void *end, size_t elen)
{
    if (json_object_set_new(o, "key", jb64(key, klen)))
        return -1;
    if (elen && json_object_set_new(o, "range_end", jb64(end, elen)))
        return -1;
    return 0;
}

static int e_revision(tg_store_t *s, int64_t *rev, char *err, size_t errlen)
{
    json_t *body = json_object(), *ans = NULL;
    if (!body)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory");
    int rc = call((estore_t *)s, "/v3/maintenance/status", body, IDEMPOTENT, &ans, err, errlen);
    json_decref(body);
    if (!rc)
        *rev = jint(json_object_get(ans, "header"), "revision");
    json_decref(ans);
    return rc;
}

static int e_range(tg_store_t *s, const tg_store_range_req_t *req, tg_store_range_res_t *res, char *err,
                   size_t errlen)
{
    json_t *body = json_object(), *ans = NULL;
    int rc;
    if (!body || set_span(body, req->rq_key, req->rq_key_len, req->rq_end, req->rq_end_len) ||
        (req->rq_limit && json_object_set_new(body, "limit", jnum(req->rq_limit))) ||
        (req->rq_revision && json_object_set_new(body, "revision", jnum(req->rq_revision))) ||
        (req->rq_keys_only && json_object_set_new(body, "keys_only", json_true()))) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory encoding a range");
        goto done;
    }
    if ((rc = call((estore_t *)s, "/v3/kv/range", body, IDEMPOTENT, &ans, err, errlen)))
        goto done;
    rc = parse_range(ans, res, err, errlen);
done:
    json_decref(body);
    json_decref(ans);
    return rc;
}

static const char *TARGETS[] = {"VALUE", "VERSION", "CREATE", "MOD"};
static const char *RESULTS[] = {"EQUAL", "NOT_EQUAL", "LESS", "GREATER"};
static const char *NUMFIELD[] = {NULL, "version", "create_revision", "mod_revision"};

/* The JSON of one op's request body (PutRequest, DeleteRangeRequest,
 * RangeRequest); NULL on no memory. */
static json_t *op_body(const tg_store_op_t *o)
{
    json_t *b = json_object();
    if (!b || set_span(b, o->op_key, o->op_key_len, o->op_end, o->op_end_len))
        goto fail;
    if (o->op_type == TG_STORE_OP_PUT) {
        if (json_object_set_new(b, "value", jb64(o->op_val, o->op_val_len)) ||
            (o->op_lease && json_object_set_new(b, "lease", jnum(o->op_lease))))
            goto fail;
    } else if (o->op_type == TG_STORE_OP_GET) {
        if (o->op_limit && json_object_set_new(b, "limit", jnum(o->op_limit)))
            goto fail;
    }
    return b;
fail:
    json_decref(b);
    return NULL;
}

static json_t *ops_json(const tg_store_op_t *ops, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        const char *name = ops[i].op_type == TG_STORE_OP_PUT      ? "request_put"
                           : ops[i].op_type == TG_STORE_OP_DELETE ? "request_delete_range"
                                                                  : "request_range";
        json_t *b = op_body(&ops[i]);
        json_t *w = b ? json_object() : NULL;
        if (!w || json_object_set_new(w, name, b) || json_array_append_new(a, w)) {
            if (!w)
                json_decref(b);
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* A TxnResponse body into res, for the branch it says ran (success or
 * failure ops). */
static int parse_txn(const json_t *ans, const tg_store_op_t *success, size_t nsuccess, const tg_store_op_t *failure,
                     size_t nfailure, tg_store_txn_res_t *res, char *err, size_t errlen)
{
    int rc;
    res->tx_succeeded = json_is_true(json_object_get(ans, "succeeded"));
    res->tx_revision = jint(json_object_get(ans, "header"), "revision");
    const tg_store_op_t *ops = res->tx_succeeded ? success : failure;
    size_t n = res->tx_succeeded ? nsuccess : nfailure;
    json_t *rl = json_object_get(ans, "responses");
    if (n && json_array_size(rl) != n)
        return tg_errf(err, errlen, TG_STORE_ESERVER, "etcd txn: %zu responses for %zu ops", json_array_size(rl),
                       n);
    if (n && !(res->tx_res = tg_calloc(n, sizeof(*res->tx_res))))
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory reading a txn");
    res->tx_n = n;
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(rl, i);
        res->tx_res[i].or_type = ops[i].op_type;
        if (ops[i].op_type == TG_STORE_OP_DELETE) {
            res->tx_res[i].or_deleted = jint(json_object_get(r, "response_delete_range"), "deleted");
        } else if (ops[i].op_type == TG_STORE_OP_GET) {
            json_t *rr = json_object_get(r, "response_range");
            if ((rc = parse_range(rr, &res->tx_res[i].or_range, err, errlen)))
                return rc;
            res->tx_res[i].or_range.rs_revision = res->tx_revision;
        }
    }
    return 0;
}

static int e_txn(tg_store_t *s, const tg_store_cmp_t *cmps, size_t ncmp, const tg_store_op_t *success,
                 size_t nsuccess, const tg_store_op_t *failure, size_t nfailure, tg_store_txn_res_t *res,
                 char *err, size_t errlen)
{
    estore_t *es = (estore_t *)s;
    json_t *body = NULL, *ans = NULL;
    int rc = 0;
    /* one put or delete: the plain endpoints (what an etcd user would see) */
    if (ncmp == 0 && nsuccess == 1 && success[0].op_type != TG_STORE_OP_GET) {
        const tg_store_op_t *o = &success[0];
        int put = o->op_type == TG_STORE_OP_PUT;
        body = op_body(o);
        res->tx_res = tg_calloc(1, sizeof(*res->tx_res));
        if (!body || !res->tx_res) {
            rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory encoding a write");
            goto done;
        }
        if ((rc = call(es, put ? "/v3/kv/put" : "/v3/kv/deleterange", body, WRITE, &ans, err, errlen)))
            goto done;
        res->tx_n = 1;
        res->tx_res[0].or_type = o->op_type;
        res->tx_res[0].or_deleted = jint(ans, "deleted");
        res->tx_succeeded = 1;
        res->tx_revision = jint(json_object_get(ans, "header"), "revision");
        goto done;
    }
    body = json_object();
    json_t *cl = json_array(), *sj = ops_json(success, nsuccess), *fj = ops_json(failure, nfailure);
    if (!body || !cl || !sj || !fj || json_object_set_new(body, "compare", cl) ||
        json_object_set_new(body, "success", sj) || json_object_set_new(body, "failure", fj)) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory encoding a txn");
        goto done;
    }
    for (size_t i = 0; i < ncmp; i++) {
        const tg_store_cmp_t *c = &cmps[i];
        json_t *cj = json_object();
        if (!cj || json_array_append_new(cl, cj) || set_span(cj, c->c_key, c->c_key_len, NULL, 0) ||
            json_object_set_new(cj, "target", json_string(TARGETS[c->c_target])) ||
            json_object_set_new(cj, "result", json_string(RESULTS[c->c_op])) ||
            (c->c_target == TG_STORE_CMP_VALUE
                 ? json_object_set_new(cj, "value", jb64(c->c_val, c->c_val_len))
                 : json_object_set_new(cj, NUMFIELD[c->c_target], jnum(c->c_num)))) {
            rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory encoding a txn");
            goto done;
        }
    }
    if ((rc = call(es, "/v3/kv/txn", body, WRITE, &ans, err, errlen)))
        goto done;
    rc = parse_txn(ans, success, nsuccess, failure, nfailure, res, err, errlen);
done:
    json_decref(body);
    json_decref(ans);
    return rc;
}

static int e_compact(tg_store_t *s, int64_t rev, char *err, size_t errlen)
{
    json_t *body = json_pack("{s:o, s:b}", "revision", jnum(rev), "physical", 1), *ans = NULL;
    if (!body)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory");
    int rc = call((estore_t *)s, "/v3/kv/compaction", body, WRITE, &ans, err, errlen);
    json_decref(body);
    json_decref(ans);
    return rc;
}

static int e_lease_grant(tg_store_t *s, int64_t ttl, int64_t *id, char *err, size_t errlen)
{
    json_t *body = json_pack("{s:o}", "TTL", jnum(ttl)), *ans = NULL;
    if (!body)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory");
    int rc = call((estore_t *)s, "/v3/lease/grant", body, IDEMPOTENT, &ans, err, errlen);
    json_decref(body);
    if (!rc) {
        json_t *e = json_object_get(ans, "error");
        if (json_is_string(e) && json_string_length(e))
            rc = tg_errf(err, errlen, TG_STORE_ESERVER, "etcd lease grant: %s", json_string_value(e));
        else if ((*id = jint(ans, "ID")) <= 0)
            rc = tg_errf(err, errlen, TG_STORE_ESERVER, "etcd lease grant: no lease id");
    }
    json_decref(ans);
    return rc;
}

static int e_lease_keepalive(tg_store_t *s, int64_t id, int64_t *ttl, char *err, size_t errlen)
{
    json_t *body = json_pack("{s:o}", "ID", jnum(id)), *ans = NULL;
    if (!body)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory");
    int rc = call((estore_t *)s, "/v3/lease/keepalive", body, IDEMPOTENT, &ans, err, errlen);
    json_decref(body);
    if (!rc) {
        /* a streamed answer: {"result": {...}}; TTL 0 or missing = no lease */
        json_t *r = json_object_get(ans, "result");
        *ttl = jint(r ? r : ans, "TTL");
        if (*ttl <= 0)
            rc = tg_errf(err, errlen, TG_STORE_ENOLEASE, "lease %lld not found (expired or revoked)",
                         (long long)id);
    }
    json_decref(ans);
    return rc;
}

static int e_lease_revoke(tg_store_t *s, int64_t id, char *err, size_t errlen)
{
    json_t *body = json_pack("{s:o}", "ID", jnum(id)), *ans = NULL;
    if (!body)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory");
    int rc = call((estore_t *)s, "/v3/lease/revoke", body, IDEMPOTENT, &ans, err, errlen);
    json_decref(body);
    json_decref(ans);
    return rc;
}

/* ---- watches ------------------------------------------------------------------- */

typedef struct ewatch {
    estore_t *ew_es;
    tg_store_watch_t *ew_w;
    pthread_t ew_thr;
    CURLM *ew_multi;
    atomic_int ew_stop;
    int ew_done;      /* the watch ended for good (compacted, canceled) */
    int64_t ew_next;  /* next revision to deliver */
    tg_buf_t ew_line; /* a partial JSON line */
} ewatch_t;

/* One JSON object from the stream. Returns 0, or -1 to end the stream. */
static int watch_msg(ewatch_t *ew, const char *p, size_t n)
{
    json_error_t je;
    json_t *j = json_loadb(p, n, 0, &je);
    int rc = 0;
    if (!j)
        return -1; /* garbage: reconnect */
    json_t *r = json_object_get(j, "result");
    if (!r) {
        json_t *e = json_object_get(j, "error");
        json_t *m = json_object_get(e, "message");
        (void)m; /* a stream error (e.g. server shutting down): reconnect */
        rc = -1;
        goto done;
    }
    if (json_is_true(json_object_get(r, "canceled"))) {
        int64_t cr = jint(r, "compact_revision");
        if (cr > 0)
            tg_store__watch_fail(ew->ew_w, TG_STORE_ECOMPACTED,
                                 "watch from revision %lld: etcd compacted up to %lld; resync and "
                                 "watch from the current revision",
                                 (long long)ew->ew_next, (long long)cr);
        else {
            json_t *why = json_object_get(r, "cancel_reason");
            tg_store__watch_fail(ew->ew_w, TG_STORE_ESERVER, "etcd canceled the watch: %s",
                                 json_is_string(why) ? json_string_value(why) : "no reason");
        }
        ew->ew_done = 1;
        rc = -1;
        goto done;
    }
    if (json_is_true(json_object_get(r, "created")))
        tg_store__watch_set_connected(ew->ew_w, 1);
    json_t *evs = json_object_get(r, "events");
    int64_t floor = ew->ew_next, top = 0;
    for (size_t i = 0; i < json_array_size(evs); i++) {
        json_t *e = json_array_get(evs, i);
        tg_store_kv_t kv;
        char err[TG_ERRLEN] = "";
        memset(&kv, 0, sizeof(kv));
        if (parse_kv(json_object_get(e, "kv"), &kv, err, sizeof(err))) {
            rc = -1;
            goto done;
        }
        if (kv.kv_mod_rev == INT64_MAX) {
            /* no revision can follow it (found by etcd_fuzz: top + 1
             * overflowed): a garbled answer, reconnect */
            tg_free((void *)kv.kv_key);
            rc = -1;
            goto done;
        }
        json_t *t = json_object_get(e, "type");
        int type = json_is_string(t) && strcmp(json_string_value(t), "DELETE") == 0 ? TG_STORE_EV_DELETE
                                                                                    : TG_STORE_EV_PUT;
        if (kv.kv_mod_rev >= floor) /* below: already delivered before a reconnect */
            tg_store__watch_push(ew->ew_w, type, &kv);
        if (kv.kv_mod_rev > top)
            top = kv.kv_mod_rev;
        tg_free((void *)kv.kv_key);
    }
    if (top >= ew->ew_next)
        ew->ew_next = top + 1;
done:
    json_decref(j);
    return rc;
}

static size_t on_watch(char *p, size_t sz, size_t n, void *arg)
{
    ewatch_t *ew = arg;
    size_t len = sz * n;
    if (atomic_load(&ew->ew_stop))
        return 0;
    if (tg_buf_append(&ew->ew_line, p, len))
        return 0; /* a line over the limit: drop the stream, reconnect */
    char *s = ew->ew_line.b_data;
    size_t used = 0;
    for (;;) {
        char *nl = memchr(s + used, '\n', ew->ew_line.b_len - used);
        if (!nl)
            break;
        size_t ln = (size_t)(nl - (s + used));
        if (ln && watch_msg(ew, s + used, ln))
            return 0;
        used += ln + 1;
    }
    if (used) {
        size_t rest = ew->ew_line.b_len - used;
        memmove(s, s + used, rest);
        ew->ew_line.b_len = rest;
        s[rest] = 0;
    }
    return len;
}

/* Waits ms on the multi handle, waking early on cancel. */
static void watch_sleep(ewatch_t *ew, long ms)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (atomic_load(&ew->ew_stop))
            return;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        long el = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
        if (el >= ms)
            return;
        curl_multi_poll(ew->ew_multi, NULL, 0, (int)(ms - el), NULL);
    }
}

static void *watch_thread(void *arg)
{
    ewatch_t *ew = arg;
    estore_t *es = ew->ew_es;
    tg_store_watch_t *w = ew->ew_w;
    long backoff = 100;
    int ep = atomic_load(&es->es_cur);
    while (!atomic_load(&ew->ew_stop) && !ew->ew_done) {
        json_t *cr = json_object(), *body = json_object();
        char *payload = NULL;
        if (cr && body && !set_span(cr, w->w_key, w->w_key_len, w->w_end, w->w_end_len) &&
            !json_object_set_new(cr, "start_revision", jnum(ew->ew_next)) &&
            !json_object_set(body, "create_request", cr))
            payload = json_dumps(body, JSON_COMPACT);
        json_decref(cr);
        json_decref(body);
        CURL *h = payload ? curl_easy_init() : NULL;
        struct curl_slist *hl = h ? headers(es) : NULL;
        if (!hl) {
            if (h)
                curl_easy_cleanup(h);
            free(payload);
            tg_store__watch_fail(w, TG_STORE_ENOMEM, "out of memory in the etcd watch thread");
            break;
        }
        char url[1024];
        snprintf(url, sizeof(url), "%s/v3/watch", es->es_eps[ep]);
        tg_buf_reset(&ew->ew_line);
        set_common(es, h);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, payload);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_watch);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, ew);
        curl_multi_add_handle(ew->ew_multi, h);
        int running = 1, got = 0;
        int64_t before = ew->ew_next;
        while (running && !atomic_load(&ew->ew_stop)) {
            curl_multi_perform(ew->ew_multi, &running);
            if (running)
                curl_multi_poll(ew->ew_multi, NULL, 0, 1000, NULL);
        }
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        got = status == 200;
        curl_multi_remove_handle(ew->ew_multi, h);
        curl_easy_cleanup(h);
        curl_slist_free_all(hl);
        free(payload);
        tg_store__watch_set_connected(w, 0);
        if (atomic_load(&ew->ew_stop) || ew->ew_done)
            break;
        /* the stream ended: next endpoint, after a backoff unless it made progress */
        if (!got || ew->ew_next == before) {
            int was = ep;
            ep = (ep + 1) % (int)es->es_neps;
            if (ep != was)
                TG_LOG(TG_LOG_WARN, "store.etcd", "etcd watch moves from endpoint %s to %s (HTTP %ld)",
                       es->es_eps[was], es->es_eps[ep], status);
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

static int e_watch_start(tg_store_t *s, tg_store_watch_t *w, char *err, size_t errlen)
{
    estore_t *es = (estore_t *)s;
    int rc;
    ewatch_t *ew = tg_calloc(1, sizeof(*ew));
    if (!ew)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for a watch");
    ew->ew_es = es;
    ew->ew_w = w;
    tg_buf_init(&ew->ew_line, (size_t)8 << 20);
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
    ew->ew_multi = curl_multi_init();
    if (!ew->ew_multi) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for a watch");
        goto fail;
    }
    w->w_priv = ew;
    if (pthread_create(&ew->ew_thr, NULL, watch_thread, ew) != 0) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "cannot start a watch thread");
        goto fail;
    }
    return 0;
fail:
    if (ew->ew_multi)
        curl_multi_cleanup(ew->ew_multi);
    tg_buf_free(&ew->ew_line);
    tg_free(ew);
    w->w_priv = NULL;
    return rc;
}

static void e_watch_stop(tg_store_t *s, tg_store_watch_t *w)
{
    ewatch_t *ew = w->w_priv;
    (void)s;
    if (!ew)
        return;
    atomic_store(&ew->ew_stop, 1);
    curl_multi_wakeup(ew->ew_multi);
    pthread_join(ew->ew_thr, NULL);
    curl_multi_cleanup(ew->ew_multi);
    tg_buf_free(&ew->ew_line);
    tg_free(ew);
    w->w_priv = NULL;
}

/* ---- open / close -------------------------------------------------------------- */

static void e_close(tg_store_t *s)
{
    estore_t *es = (estore_t *)s;
    for (size_t i = 0; i < es->es_neps; i++)
        tg_free(es->es_eps[i]);
    tg_free(es->es_eps);
    for (size_t i = 0; i < es->es_npool; i++)
        curl_easy_cleanup(es->es_pool[i]);
    tg_free(es->es_pool);
    tg_free(es->es_user);
    tg_free(es->es_pass);
    tg_free(es->es_ca);
    tg_free(es->es_cert);
    tg_free(es->es_key);
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

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int dup_opt(char **dst, const char *src)
{
    if (!src)
        return 0;
    *dst = tg_strdup(src);
    return *dst ? 0 : -1;
}

int tg_store_etcd_open(tg_store_t **out, const char *urls, const tg_store_opts_t *opts, char *err,
                       size_t errlen)
{
    int rc = 0;
    pthread_once(&curl_once, curl_init);
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
    if (dup_opt(&es->es_user, opts->so_username) || dup_opt(&es->es_pass, opts->so_password) ||
        dup_opt(&es->es_ca, opts->so_ca_file) || dup_opt(&es->es_cert, opts->so_cert_file) ||
        dup_opt(&es->es_key, opts->so_key_file)) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory opening etcd");
        goto fail;
    }
    size_t n = 1;
    for (const char *p = urls; *p; p++)
        n += *p == ',';
    es->es_eps = tg_calloc(n, sizeof(*es->es_eps));
    if (!es->es_eps) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory opening etcd");
        goto fail;
    }
    for (const char *p = urls; *p;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        while (len && p[len - 1] == '/')
            len--;
        if (!((len > 7 && strncmp(p, "http://", 7) == 0) || (len > 8 && strncmp(p, "https://", 8) == 0)) ||
            len > 900) {
            rc = tg_errf(err, errlen, TG_STORE_EINVAL,
                         "etcd endpoint '%.*s' must be an http:// or https:// URL",
                         (int)(len > 100 ? 100 : len), p);
            goto fail;
        }
        if (!(es->es_eps[es->es_neps] = tg_strndup(p, len))) {
            rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory opening etcd");
            goto fail;
        }
        es->es_neps++;
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
    *out = &es->es_base;
    return 0;
fail:
    e_close(&es->es_base);
    return rc;
}
