/* store.c: the tg_store front. Parses the spec, picks the backend, checks
 * every argument against the documented limits (so both backends fail the
 * same way on bad input, before anything is sent or written), resolves
 * prefix flags into range ends, and implements the reader side of watches. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "store/store_int.h"

const char *tg_store_strerror(int code)
{
    switch ((enum tg_store_err)code) {
    case TG_STORE_OK: return "ok";
    case TG_STORE_EINVAL: return "invalid argument";
    case TG_STORE_ETOOBIG: return "key, value or transaction too large";
    case TG_STORE_ENOMEM: return "out of memory";
    case TG_STORE_EIO: return "storage I/O error";
    case TG_STORE_ECORRUPT: return "data files corrupt or not a store";
    case TG_STORE_EFULL: return "store full (map size limit reached)";
    case TG_STORE_ECOMPACTED: return "revision compacted: resync";
    case TG_STORE_EFUTURE: return "revision is in the future";
    case TG_STORE_ENOLEASE: return "lease not found";
    case TG_STORE_EUNAVAIL: return "store unavailable";
    case TG_STORE_EUNKNOWN: return "outcome unknown";
    case TG_STORE_ESERVER: return "server error";
    case TG_STORE_EAUTH: return "authentication failed";
    case TG_STORE_ELOCKED: return "store locked by another process";
    case TG_STORE_EAGAIN: return "no event yet";
    case TG_STORE_ECLOSED: return "closed";
    case TG_STORE_ELAST: return "unknown error";
    }
    return "unknown error";
}

size_t tg_store_prefix_end(const void *key, size_t key_len, uint8_t *buf)
{
    const uint8_t *k = key;
    for (size_t i = key_len; i > 0; i--) {
        if (k[i - 1] < 0xff) {
            memcpy(buf, k, i - 1);
            buf[i - 1] = (uint8_t)(k[i - 1] + 1);
            return i;
        }
    }
    buf[0] = 0; /* empty or all 0xFF: every key from here on */
    return 1;
}

/* ---- argument checks ---------------------------------------------------------- */

static int check_key(const void *key, size_t len, const char *what, char *err, size_t errlen)
{
    if (len == 0 || !key)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "%s is empty: keys are 1..%d bytes", what,
                       TG_STORE_MAX_KEY);
    if (len > TG_STORE_MAX_KEY)
        return tg_errf(err, errlen, TG_STORE_ETOOBIG, "%s is %zu bytes, over the %d-byte key limit", what,
                       len, TG_STORE_MAX_KEY);
    return 0;
}

static int check_end(const void *end, size_t len, char *err, size_t errlen)
{
    if (len && !end)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "range end is NULL with length %zu", len);
    if (len > TG_STORE_MAX_KEY)
        return tg_errf(err, errlen, TG_STORE_ETOOBIG, "range end is %zu bytes, over the %d-byte key limit",
                       len, TG_STORE_MAX_KEY);
    return 0;
}

static int check_val(const void *val, size_t len, char *err, size_t errlen)
{
    if (len && !val)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "value is NULL with length %zu", len);
    if (len > TG_STORE_MAX_VALUE)
        return tg_errf(err, errlen, TG_STORE_ETOOBIG, "value is %zu bytes, over the %d-byte value limit", len,
                       TG_STORE_MAX_VALUE);
    return 0;
}

static int check_rev(int64_t rev, char *err, size_t errlen)
{
    if (rev < 0)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "revision %lld is negative", (long long)rev);
    return 0;
}

/* ---- open / close ------------------------------------------------------------- */

int tg_store_open(tg_store_t **out, const char *spec, const tg_store_opts_t *opts, char *err, size_t errlen)
{
    tg_store_opts_t zero;
    if (!out || !spec)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "tg_store_open: out and spec are required");
    *out = NULL;
    if (!opts) {
        memset(&zero, 0, sizeof(zero));
        opts = &zero;
    }
    if (opts->so_timeout_ms < 0 || opts->so_connect_timeout_ms < 0 || opts->so_retries < 0 ||
        opts->so_lease_tick_ms < 0)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "store options: negative timeout or count");
    if (strncmp(spec, "lmdb:", 5) == 0) {
        if (!spec[5])
            return tg_errf(err, errlen, TG_STORE_EINVAL, "store spec 'lmdb:' needs a directory");
        return tg_store_lmdb_open(out, spec + 5, opts, err, errlen);
    }
    if (strncmp(spec, "etcd:", 5) == 0) {
        if (!spec[5])
            return tg_errf(err, errlen, TG_STORE_EINVAL,
                           "store spec 'etcd:' needs endpoint URLs, e.g. etcd:http://127.0.0.1:2379");
        return tg_store_etcd_open(out, spec + 5, opts, err, errlen);
    }
    return tg_errf(err, errlen, TG_STORE_EINVAL, "store spec '%.64s' must start with 'lmdb:' or 'etcd:'",
                   spec);
}

void tg_store_close(tg_store_t *s)
{
    if (s)
        s->s_backend->b_close(s);
}

const char *tg_store_backend(const tg_store_t *s)
{
    return s->s_backend->b_name;
}

int tg_store_revision(tg_store_t *s, int64_t *rev, char *err, size_t errlen)
{
    if (!s || !rev)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "tg_store_revision: NULL argument");
    return s->s_backend->b_revision(s, rev, err, errlen);
}

/* ---- reads ---------------------------------------------------------------- */

int tg_store_range(tg_store_t *s, const tg_store_range_req_t *req, tg_store_range_res_t *res, char *err,
                   size_t errlen)
{
    uint8_t endbuf[TG_STORE_MAX_KEY];
    int rc;
    if (!s || !req || !res)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "tg_store_range: NULL argument");
    memset(res, 0, sizeof(*res));
    if ((rc = check_key(req->rq_key, req->rq_key_len, "range key", err, errlen)) ||
        (rc = check_end(req->rq_end, req->rq_end_len, err, errlen)) ||
        (rc = check_rev(req->rq_revision, err, errlen)))
        return rc;
    if (req->rq_limit < 0)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "range limit %lld is negative",
                       (long long)req->rq_limit);
    tg_store_range_req_t n = *req;
    if (n.rq_prefix) {
        n.rq_end_len = tg_store_prefix_end(n.rq_key, n.rq_key_len, endbuf);
        n.rq_end = endbuf;
        n.rq_prefix = 0;
    }
    rc = s->s_backend->b_range(s, &n, res, err, errlen);
    if (rc)
        tg_store_range_res_free(res);
    return rc;
}

int tg_store_range_next(const tg_store_range_res_t *res, uint8_t *buf, size_t *len)
{
    if (!res || res->rs_n == 0)
        return TG_STORE_EINVAL;
    const tg_store_kv_t *last = &res->rs_kvs[res->rs_n - 1];
    memcpy(buf, last->kv_key, last->kv_key_len);
    buf[last->kv_key_len] = 0;
    *len = last->kv_key_len + 1;
    return 0;
}

tg_store_kv_t *tg_store_kv_dup(const tg_store_kv_t *kv)
{
    tg_store_kv_t *c = tg_malloc(sizeof(*c) + kv->kv_key_len + kv->kv_val_len + 1);
    if (!c)
        return NULL;
    uint8_t *b = (uint8_t *)(c + 1);
    *c = *kv;
    memcpy(b, kv->kv_key, kv->kv_key_len);
    if (kv->kv_val_len)
        memcpy(b + kv->kv_key_len, kv->kv_val, kv->kv_val_len);
    b[kv->kv_key_len + kv->kv_val_len] = 0;
    c->kv_key = b;
    c->kv_val = kv->kv_val_len ? b + kv->kv_key_len : NULL;
    return c;
}

void tg_store_kv_free(tg_store_kv_t *kv)
{
    tg_free(kv);
}

int tg_store_get(tg_store_t *s, const void *key, size_t key_len, tg_store_kv_t **kv, int64_t *rev, char *err,
                 size_t errlen)
{
    tg_store_range_res_t res;
    tg_store_range_req_t req = {.rq_key = key, .rq_key_len = key_len};
    if (!kv)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "tg_store_get: kv is NULL");
    *kv = NULL;
    int rc = tg_store_range(s, &req, &res, err, errlen);
    if (rc)
        return rc;
    if (res.rs_n) {
        *kv = tg_store_kv_dup(&res.rs_kvs[0]);
        if (!*kv)
            rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory copying a kv");
    }
    if (rev)
        *rev = res.rs_revision;
    tg_store_range_res_free(&res);
    return rc;
}

/* ---- writes and transactions ------------------------------------------------- */

/* Checks one branch and writes it normalized into out (prefix ends in ends,
 * one TG_STORE_MAX_KEY slot per op). Adds key/value bytes to *bytes. */
static int norm_ops(const tg_store_op_t *ops, size_t n, tg_store_op_t *out, uint8_t *ends, size_t *bytes,
                    char *err, size_t errlen)
{
    int rc;
    if (n && !ops)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "txn: op list is NULL with %zu ops", n);
    if (n > TG_STORE_MAX_TXN_OPS)
        return tg_errf(err, errlen, TG_STORE_ETOOBIG, "txn: %zu ops, over the limit of %d", n,
                       TG_STORE_MAX_TXN_OPS);
    for (size_t i = 0; i < n; i++) {
        const tg_store_op_t *o = &ops[i];
        out[i] = *o;
        if ((rc = check_key(o->op_key, o->op_key_len, "txn op key", err, errlen)))
            return rc;
        *bytes += o->op_key_len;
        switch (o->op_type) {
        case TG_STORE_OP_PUT:
            if ((rc = check_val(o->op_val, o->op_val_len, err, errlen)))
                return rc;
            if (o->op_lease < 0)
                return tg_errf(err, errlen, TG_STORE_EINVAL, "txn: negative lease id");
            *bytes += o->op_val_len;
            out[i].op_end = NULL;
            out[i].op_end_len = 0;
            break;
        case TG_STORE_OP_DELETE:
        case TG_STORE_OP_GET:
            if ((rc = check_end(o->op_end, o->op_end_len, err, errlen)))
                return rc;
            if (o->op_limit < 0)
                return tg_errf(err, errlen, TG_STORE_EINVAL, "txn: negative get limit");
            if (o->op_prefix) {
                uint8_t *e = ends + i * TG_STORE_MAX_KEY;
                out[i].op_end_len = tg_store_prefix_end(o->op_key, o->op_key_len, e);
                out[i].op_end = e;
                out[i].op_prefix = 0;
            }
            *bytes += out[i].op_end_len;
            break;
        default:
            return tg_errf(err, errlen, TG_STORE_EINVAL, "txn: op %zu has unknown type %d", i, o->op_type);
        }
    }
    /* as etcd: a key may be written once per transaction */
    for (size_t i = 0; i < n; i++) {
        if (out[i].op_type != TG_STORE_OP_PUT)
            continue;
        for (size_t j = 0; j < n; j++) {
            if (j == i || out[j].op_type == TG_STORE_OP_GET)
                continue;
            if (out[j].op_type == TG_STORE_OP_PUT && j < i)
                continue; /* pair already checked */
            if (tg_store__in_range(out[i].op_key, out[i].op_key_len, out[j].op_key, out[j].op_key_len,
                                   out[j].op_end, out[j].op_end_len))
                return tg_errf(err, errlen, TG_STORE_EINVAL,
                               "txn: key written twice in one transaction (ops %zu and %zu)", i, j);
        }
    }
    if (*bytes > TG_STORE_MAX_TXN_BYTES)
        return tg_errf(err, errlen, TG_STORE_ETOOBIG,
                       "txn: %zu bytes of keys and values, over the %d-byte limit", *bytes,
                       TG_STORE_MAX_TXN_BYTES);
    return 0;
}

int tg_store_txn(tg_store_t *s, const tg_store_cmp_t *cmps, size_t ncmp, const tg_store_op_t *success,
                 size_t nsuccess, const tg_store_op_t *failure, size_t nfailure, tg_store_txn_res_t *res,
                 char *err, size_t errlen)
{
    tg_store_txn_res_t local;
    tg_store_op_t *ns = NULL, *nf = NULL;
    uint8_t *ends = NULL;
    size_t bytes = 0;
    int rc = 0;
    if (!res)
        res = &local;
    memset(res, 0, sizeof(*res));
    if (!s)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "tg_store_txn: store is NULL");
    if (ncmp > TG_STORE_MAX_TXN_OPS)
        return tg_errf(err, errlen, TG_STORE_ETOOBIG, "txn: %zu compares, over the limit of %d", ncmp,
                       TG_STORE_MAX_TXN_OPS);
    if (ncmp && !cmps)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "txn: compare list is NULL");
    if (nsuccess > TG_STORE_MAX_TXN_OPS || nfailure > TG_STORE_MAX_TXN_OPS)
        return tg_errf(err, errlen, TG_STORE_ETOOBIG, "txn: %zu ops, over the limit of %d",
                       nsuccess > nfailure ? nsuccess : nfailure, TG_STORE_MAX_TXN_OPS);
    for (size_t i = 0; i < ncmp; i++) {
        const tg_store_cmp_t *c = &cmps[i];
        if ((rc = check_key(c->c_key, c->c_key_len, "compare key", err, errlen)))
            return rc;
        if (c->c_target < TG_STORE_CMP_VALUE || c->c_target > TG_STORE_CMP_MOD_REV || c->c_op < TG_STORE_EQ ||
            c->c_op > TG_STORE_GT)
            return tg_errf(err, errlen, TG_STORE_EINVAL, "txn: compare %zu has a bad target or op", i);
        if (c->c_target == TG_STORE_CMP_VALUE) {
            if ((rc = check_val(c->c_val, c->c_val_len, err, errlen)))
                return rc;
            bytes += c->c_val_len;
        }
        bytes += c->c_key_len;
    }
    /* room for computed prefix ends, only when a branch has prefix ops */
    size_t ps = 0, pf = 0;
    for (size_t i = 0; success && i < nsuccess; i++)
        ps += success[i].op_prefix != 0;
    for (size_t i = 0; failure && i < nfailure; i++)
        pf += failure[i].op_prefix != 0;
    ns = tg_calloc(nsuccess + 1, sizeof(*ns));
    nf = tg_calloc(nfailure + 1, sizeof(*nf));
    ends = ps + pf ? tg_malloc((nsuccess * !!ps + nfailure * !!pf) * TG_STORE_MAX_KEY) : NULL;
    if (!ns || !nf || (ps + pf && !ends)) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for a transaction");
        goto fail;
    }
    size_t bs = bytes, bf = bytes;
    if ((rc = norm_ops(success, nsuccess, ns, ends, &bs, err, errlen)) ||
        (rc = norm_ops(failure, nfailure, nf, ends ? ends + nsuccess * !!ps * TG_STORE_MAX_KEY : NULL, &bf,
                       err, errlen)))
        goto fail;
    rc = s->s_backend->b_txn(s, cmps, ncmp, ns, nsuccess, nf, nfailure, res, err, errlen);
fail:
    if (rc || res == &local)
        tg_store_txn_res_free(res);
    tg_free(ns);
    tg_free(nf);
    tg_free(ends);
    return rc;
}

int tg_store_put(tg_store_t *s, const void *key, size_t key_len, const void *val, size_t val_len,
                 int64_t lease, int64_t *rev, char *err, size_t errlen)
{
    tg_store_txn_res_t res;
    tg_store_op_t op = {.op_type = TG_STORE_OP_PUT,
                        .op_key = key,
                        .op_key_len = key_len,
                        .op_val = val,
                        .op_val_len = val_len,
                        .op_lease = lease};
    int rc = tg_store_txn(s, NULL, 0, &op, 1, NULL, 0, &res, err, errlen);
    if (!rc && rev)
        *rev = res.tx_revision;
    tg_store_txn_res_free(&res);
    return rc;
}

int tg_store_delete(tg_store_t *s, const void *key, size_t key_len, int prefix, int64_t *deleted,
                    int64_t *rev, char *err, size_t errlen)
{
    tg_store_txn_res_t res;
    tg_store_op_t op = {
        .op_type = TG_STORE_OP_DELETE, .op_key = key, .op_key_len = key_len, .op_prefix = prefix};
    int rc = tg_store_txn(s, NULL, 0, &op, 1, NULL, 0, &res, err, errlen);
    if (!rc) {
        if (deleted)
            *deleted = res.tx_n ? res.tx_res[0].or_deleted : 0;
        if (rev)
            *rev = res.tx_revision;
    }
    tg_store_txn_res_free(&res);
    return rc;
}

/* ---- compaction and leases ----------------------------------------------------- */

int tg_store_compact(tg_store_t *s, int64_t rev, char *err, size_t errlen)
{
    if (!s || rev <= 0)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "compact: revision must be > 0");
    return s->s_backend->b_compact(s, rev, err, errlen);
}

int tg_store_lease_grant(tg_store_t *s, int64_t ttl_s, int64_t *id, char *err, size_t errlen)
{
    if (!s || !id || ttl_s < 1 || ttl_s > 9000000000LL)
        return tg_errf(err, errlen, TG_STORE_EINVAL,
                       "lease grant: TTL must be 1..9e9 seconds and id non-NULL");
    return s->s_backend->b_lease_grant(s, ttl_s, id, err, errlen);
}

int tg_store_lease_keepalive(tg_store_t *s, int64_t id, int64_t *ttl_s, char *err, size_t errlen)
{
    int64_t t;
    if (!s || id <= 0)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "lease keepalive: lease id must be > 0");
    return s->s_backend->b_lease_keepalive(s, id, ttl_s ? ttl_s : &t, err, errlen);
}

int tg_store_lease_revoke(tg_store_t *s, int64_t id, char *err, size_t errlen)
{
    if (!s || id <= 0)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "lease revoke: lease id must be > 0");
    return s->s_backend->b_lease_revoke(s, id, err, errlen);
}

/* ---- watches ------------------------------------------------------------------ */

int tg_store_watch(tg_store_t *s, const void *key, size_t key_len, const void *end, size_t end_len,
                   int prefix, int64_t start_rev, tg_store_watch_t **out, char *err, size_t errlen)
{
    uint8_t endbuf[TG_STORE_MAX_KEY];
    tg_store_watch_t *w = NULL;
    int rc;
    if (!s || !out)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "tg_store_watch: NULL argument");
    *out = NULL;
    if ((rc = check_key(key, key_len, "watch key", err, errlen)) ||
        (rc = check_end(end, end_len, err, errlen)) || (rc = check_rev(start_rev, err, errlen)))
        return rc;
    if (prefix) {
        end_len = tg_store_prefix_end(key, key_len, endbuf);
        end = endbuf;
    }
    w = tg_calloc(1, sizeof(*w));
    if (!w)
        return tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for a watch");
    w->w_efd = -1;
    w->w_key = tg_malloc(key_len + end_len + 1);
    if (!w->w_key) {
        rc = tg_errf(err, errlen, TG_STORE_ENOMEM, "out of memory for a watch");
        goto fail;
    }
    memcpy(w->w_key, key, key_len);
    w->w_key_len = key_len;
    w->w_end = w->w_key + key_len;
    if (end_len)
        memcpy(w->w_end, end, end_len);
    w->w_end_len = end_len;
    w->w_store = s;
    w->w_start_rev = start_rev;
    w->w_next_rev = start_rev;
    w->w_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->w_efd < 0) {
        rc = tg_errf(err, errlen, TG_STORE_EIO, "watch: eventfd: %s", strerror(errno));
        goto fail;
    }
    pthread_mutex_init(&w->w_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->w_cond, &ca);
    pthread_condattr_destroy(&ca);
    rc = s->s_backend->b_watch_start(s, w, err, errlen);
    if (rc) {
        while (w->w_head) { /* events replayed before the failure */
            tg_store_evnode_t *n = w->w_head;
            w->w_head = n->en_next;
            tg_free(n->en_ev);
            tg_free(n);
        }
        pthread_mutex_destroy(&w->w_mu);
        pthread_cond_destroy(&w->w_cond);
        goto fail;
    }
    *out = w;
    return 0;
fail:
    if (w->w_efd >= 0)
        close(w->w_efd);
    tg_free(w->w_key);
    tg_free(w);
    return rc;
}

int tg_store_watch_next(tg_store_watch_t *w, int timeout_ms, tg_store_event_t **ev, char *err, size_t errlen)
{
    struct timespec dl;
    int rc = 0;
    if (!w || !ev)
        return tg_errf(err, errlen, TG_STORE_EINVAL, "tg_store_watch_next: NULL argument");
    *ev = NULL;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    if (timeout_ms > 0) {
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&w->w_mu);
    while (!w->w_head && !w->w_fail && timeout_ms != 0) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&w->w_cond, &w->w_mu);
        } else if (pthread_cond_timedwait(&w->w_cond, &w->w_mu, &dl) == ETIMEDOUT) {
            break;
        }
    }
    if (w->w_head) {
        tg_store_evnode_t *n = w->w_head;
        w->w_head = n->en_next;
        if (!w->w_head)
            w->w_tail = NULL;
        w->w_qlen--;
        *ev = n->en_ev;
        tg_free(n);
        w->w_next_rev = (*ev)->ev_kv.kv_mod_rev + 1;
    } else if (w->w_fail) {
        rc = tg_errf(err, errlen, w->w_fail, "%s", w->w_failmsg);
    } else {
        rc = TG_STORE_EAGAIN;
    }
    if (!w->w_head && !w->w_fail) {
        uint64_t v;
        ssize_t r = read(w->w_efd, &v, sizeof(v)); /* drain: no longer readable */
        (void)r;
    }
    pthread_mutex_unlock(&w->w_mu);
    return rc;
}

int tg_store_watch_fd(const tg_store_watch_t *w)
{
    return w->w_efd;
}

int tg_store_watch_connected(const tg_store_watch_t *w)
{
    tg_store_watch_t *m = (tg_store_watch_t *)w;
    pthread_mutex_lock(&m->w_mu);
    int c = m->w_connected;
    pthread_mutex_unlock(&m->w_mu);
    return c;
}

int64_t tg_store_watch_next_rev(const tg_store_watch_t *w)
{
    tg_store_watch_t *m = (tg_store_watch_t *)w;
    pthread_mutex_lock(&m->w_mu);
    int64_t r = m->w_next_rev;
    pthread_mutex_unlock(&m->w_mu);
    return r;
}

void tg_store_watch_cancel(tg_store_watch_t *w)
{
    if (!w)
        return;
    w->w_store->s_backend->b_watch_stop(w->w_store, w);
    while (w->w_head) {
        tg_store_evnode_t *n = w->w_head;
        w->w_head = n->en_next;
        tg_free(n->en_ev);
        tg_free(n);
    }
    close(w->w_efd);
    pthread_mutex_destroy(&w->w_mu);
    pthread_cond_destroy(&w->w_cond);
    tg_free(w->w_key);
    tg_free(w);
}

void tg_store_event_free(tg_store_event_t *ev)
{
    tg_free(ev);
}
