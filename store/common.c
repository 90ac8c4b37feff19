/* common.c: the parts of tg_store every backend shares: key order and range
 * matching, result allocation and freeing, and the watch queue a backend
 * pushes events into and a reader drains (with an eventfd so an event loop
 * can poll it). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "store/store_int.h"

/* The result frees live here, not in store.c: the backends (which
 * store.c's library depends on) free results too. */
void tg_store_range_res_free(tg_store_range_res_t *res)
{
    if (!res)
        return;
    for (size_t i = 0; i < res->rs_n; i++)
        tg_free((void *)res->rs_kvs[i].kv_key);
    tg_free(res->rs_kvs);
    memset(res, 0, sizeof(*res));
}

void tg_store_txn_res_free(tg_store_txn_res_t *res)
{
    if (!res)
        return;
    for (size_t i = 0; i < res->tx_n; i++)
        tg_store_range_res_free(&res->tx_res[i].or_range);
    tg_free(res->tx_res);
    memset(res, 0, sizeof(*res));
}

int tg_store__keycmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

int tg_store__in_range(const uint8_t *key, size_t klen, const uint8_t *start, size_t slen, const uint8_t *end,
                       size_t elen)
{
    if (elen == 0)
        return tg_store__keycmp(key, klen, start, slen) == 0;
    if (tg_store__keycmp(key, klen, start, slen) < 0)
        return 0;
    if (elen == 1 && end[0] == 0) /* "\0": no upper bound */
        return 1;
    return tg_store__keycmp(key, klen, end, elen) < 0;
}

int tg_store__res_alloc(tg_store_range_res_t *res, size_t n)
{
    if (n == 0)
        return 0;
    res->rs_kvs = tg_calloc(n, sizeof(*res->rs_kvs));
    return res->rs_kvs ? 0 : TG_STORE_ENOMEM;
}

int tg_store__kv_set(tg_store_kv_t *kv, const void *key, size_t klen, const void *val, size_t vlen)
{
    uint8_t *b = tg_malloc(klen + vlen + 1);
    if (!b)
        return TG_STORE_ENOMEM;
    if (klen) /* an empty key from etcd is (NULL, 0) */
        memcpy(b, key, klen);
    if (vlen)
        memcpy(b + klen, val, vlen);
    b[klen + vlen] = 0;
    kv->kv_key = b;
    kv->kv_key_len = klen;
    kv->kv_val = vlen ? b + klen : NULL;
    kv->kv_val_len = vlen;
    return 0;
}

/* ---- watch queue ------------------------------------------------------------ */

/* Must hold w_mu. Makes the eventfd readable. */
static void signal_ready(tg_store_watch_t *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->w_efd, &one, sizeof(one));
    (void)n; /* EAGAIN means the counter is already non-zero: readable */
    pthread_cond_broadcast(&w->w_cond);
}

int tg_store__watch_push(tg_store_watch_t *w, int type, const tg_store_kv_t *kv)
{
    int rc = 0;
    pthread_mutex_lock(&w->w_mu);
    if (w->w_fail)
        goto done; /* the reader will see the error; nothing more is queued */
    if (w->w_qlen >= TG_STORE_WATCH_QMAX) {
        w->w_fail = TG_STORE_ECOMPACTED;
        snprintf(w->w_failmsg, sizeof(w->w_failmsg),
                 "watch fell behind: more than %d events unread; resync and watch again",
                 TG_STORE_WATCH_QMAX);
        signal_ready(w);
        goto done;
    }
    /* the event and its bytes in one block */
    size_t klen = kv->kv_key_len, vlen = type == TG_STORE_EV_PUT ? kv->kv_val_len : 0;
    tg_store_event_t *ev = tg_malloc(sizeof(*ev) + klen + vlen + 1);
    tg_store_evnode_t *node = ev ? tg_malloc(sizeof(*node)) : NULL;
    if (!node) {
        tg_free(ev);
        w->w_fail = TG_STORE_ENOMEM;
        snprintf(w->w_failmsg, sizeof(w->w_failmsg), "out of memory queueing a watch event");
        signal_ready(w);
        rc = TG_STORE_ENOMEM;
        goto done;
    }
    uint8_t *b = (uint8_t *)(ev + 1);
    ev->ev_type = type;
    ev->ev_kv = *kv;
    if (klen)
        memcpy(b, kv->kv_key, klen);
    if (vlen)
        memcpy(b + klen, kv->kv_val, vlen);
    b[klen + vlen] = 0;
    ev->ev_kv.kv_key = b;
    ev->ev_kv.kv_val = vlen ? b + klen : NULL;
    ev->ev_kv.kv_val_len = vlen;
    node->en_ev = ev;
    node->en_next = NULL;
    if (w->w_tail)
        w->w_tail->en_next = node;
    else
        w->w_head = node;
    w->w_tail = node;
    w->w_qlen++;
    signal_ready(w);
done:
    pthread_mutex_unlock(&w->w_mu);
    return rc;
}

void tg_store__watch_fail(tg_store_watch_t *w, int code, const char *fmt, ...)
{
    pthread_mutex_lock(&w->w_mu);
    if (!w->w_fail) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->w_failmsg, sizeof(w->w_failmsg), fmt, ap);
        va_end(ap);
        w->w_fail = code;
        signal_ready(w);
    }
    pthread_mutex_unlock(&w->w_mu);
}

void tg_store__watch_set_connected(tg_store_watch_t *w, int connected)
{
    pthread_mutex_lock(&w->w_mu);
    w->w_connected = connected;
    pthread_mutex_unlock(&w->w_mu);
}
