/* store_int.h: what the tg_store front (store.c) and its backends
 * (store/lmdb, store/etcd) share, and nothing a store user needs.
 *
 * The front validates every argument and limit, turns prefix flags into range
 * ends, and only then calls a backend, so a backend sees normalized requests:
 * every range is (key, end) with end_len 0 for a single key. Watches are a
 * queue owned by the front (common.c); a backend only pushes events into it
 * from its own thread, in revision order. */
#ifndef TG_STORE_INT_H
#define TG_STORE_INT_H

#include <pthread.h>

#include "base/tg_base.h"
#include "store/store.h"

/* More queued, unread events than this end a watch with ECOMPACTED. */
#define TG_STORE_WATCH_QMAX 1000000

typedef struct tg_store_backend {
    const char *b_name;
    void (*b_close)(tg_store_t *s);
    int (*b_revision)(tg_store_t *s, int64_t *rev, char *err, size_t errlen);
    int (*b_range)(tg_store_t *s, const tg_store_range_req_t *req, tg_store_range_res_t *res, char *err,
                   size_t errlen);
    /* res is never NULL and zeroed */
    int (*b_txn)(tg_store_t *s, const tg_store_cmp_t *cmps, size_t ncmp, const tg_store_op_t *success,
                 size_t nsuccess, const tg_store_op_t *failure, size_t nfailure, tg_store_txn_res_t *res,
                 char *err, size_t errlen);
    int (*b_compact)(tg_store_t *s, int64_t rev, char *err, size_t errlen);
    int (*b_lease_grant)(tg_store_t *s, int64_t ttl, int64_t *id, char *err, size_t errlen);
    int (*b_lease_keepalive)(tg_store_t *s, int64_t id, int64_t *ttl, char *err, size_t errlen);
    int (*b_lease_revoke)(tg_store_t *s, int64_t id, char *err, size_t errlen);
    /* starts delivering into w (fields below set by the front) */
    int (*b_watch_start)(tg_store_t *s, tg_store_watch_t *w, char *err, size_t errlen);
    /* stops delivering; after it returns the backend never touches w */
    void (*b_watch_stop)(tg_store_t *s, tg_store_watch_t *w);
} tg_store_backend_t;

/* Every backend's store struct starts with this. */
struct tg_store {
    const tg_store_backend_t *s_backend;
};

typedef struct tg_store_evnode {
    struct tg_store_evnode *en_next;
    tg_store_event_t *en_ev;
} tg_store_evnode_t;

struct tg_store_watch {
    tg_store_t *w_store;
    uint8_t *w_key; /* normalized range */
    size_t w_key_len;
    uint8_t *w_end;
    size_t w_end_len;
    int64_t w_start_rev; /* as asked; 0 = after now */
    void *w_priv;        /* the backend's */

    pthread_mutex_t w_mu; /* guards everything below */
    pthread_cond_t w_cond;
    tg_store_evnode_t *w_head, *w_tail;
    size_t w_qlen;
    int w_efd;  /* eventfd: readable while w_head or w_fail */
    int w_fail; /* final error code, 0 = none */
    char w_failmsg[TG_ERRLEN];
    int64_t w_next_rev; /* reader side: next revision to hand out */
    int w_connected;    /* the backend's feed is live (see tg_store_watch_connected) */
};

/* 1 when key is inside the normalized range (start, end). */
int tg_store__in_range(const uint8_t *key, size_t klen, const uint8_t *start, size_t slen, const uint8_t *end,
                       size_t elen);

/* Compares two byte strings as etcd orders keys (memcmp, shorter first). */
int tg_store__keycmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);

/* Queues a copy of the event (type, kv) on w. Returns 0, or ENOMEM (then the
 * watch is failed). Past TG_STORE_WATCH_QMAX the watch fails with
 * ECOMPACTED and the event is dropped. Thread-safe. */
int tg_store__watch_push(tg_store_watch_t *w, int type, const tg_store_kv_t *kv);

/* Ends w with a final error the reader sees after the queued events. */
void tg_store__watch_fail(tg_store_watch_t *w, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Marks the backend's feed for w live (1) or reconnecting (0). */
void tg_store__watch_set_connected(tg_store_watch_t *w, int connected);

/* Allocates the kvs array of a range result (n entries, zeroed). */
int tg_store__res_alloc(tg_store_range_res_t *res, size_t n);

/* Copies key/value bytes into kv (one tg_malloc block owned by kv_key). */
int tg_store__kv_set(tg_store_kv_t *kv, const void *key, size_t klen, const void *val, size_t vlen);

/* Backend constructors, called by tg_store_open with the part after "xxx:". */
int tg_store_lmdb_open(tg_store_t **out, const char *path, const tg_store_opts_t *opts, char *err,
                       size_t errlen);
int tg_store_etcd_open(tg_store_t **out, const char *urls, const tg_store_opts_t *opts, char *err,
                       size_t errlen);

#endif
