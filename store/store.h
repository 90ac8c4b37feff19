/* tg_store: the control plane's key-value store, with etcd v3 semantics.
 *
 * One interface, two backends picked by the spec given to tg_store_open():
 *
 *   "lmdb:/path/to/dir"   embedded LMDB, one node, no server (the default).
 *   "etcd:http://127.0.0.1:2379,http://10.0.0.2:2379"
 *                         an etcd 3.4+ cluster through its v3 JSON gateway,
 *                         several endpoints with failover; https:// URLs use
 *                         TLS (CA and client certificate in tg_store_opts_t).
 *
 * The model is etcd's: a sorted map of binary keys to binary values, one
 * global revision that every change increases by one (all the changes of one
 * transaction share a revision), and per key its create_revision,
 * mod_revision and version (1 on creation, +1 per put, the key is gone when
 * deleted). Watches deliver every put and delete after a given revision in
 * revision order; compaction discards history older than a revision, after
 * which a watch or a read from before it fails with TG_STORE_ECOMPACTED and
 * the caller must resync (read everything at the current revision, then
 * watch from that revision + 1). Leases carry a TTL; keys put with a lease are
 * deleted when it expires or is revoked.
 *
 * Keys and values are bytes with a length: they may hold NUL and 0xFF. Keys
 * are 1..TG_STORE_MAX_KEY bytes, values 0..TG_STORE_MAX_VALUE bytes, and a
 * transaction holds at most TG_STORE_MAX_TXN_OPS operations and
 * TG_STORE_MAX_TXN_BYTES bytes of keys and values (etcd's default request
 * limit is 1.5 MiB and 128 operations: these limits keep every request under
 * it; the key limit comes from LMDB, whose keys are at most 511 bytes, less
 * the 8-byte lease id the lease index puts in front). Past a limit a call
 * fails with TG_STORE_ETOOBIG and changes nothing.
 *
 * Ranges: a (key, end) pair as in etcd. end_len 0 means the single key;
 * otherwise every key with key <= k < end; an end of one NUL byte means
 * "every key >= key". The prefix flags of the request structs compute end
 * from the key (tg_store_prefix_end()).
 *
 * Threads: a tg_store_t may be used from any number of threads at once. A
 * watch is read by one thread at a time; its events are produced by a thread
 * the backend owns (LMDB: the writer leading the group commit, right after
 * the commit; etcd: one thread per watch,
 * which reconnects and resumes on its own). tg_store_watch_fd() gives a file
 * descriptor that is readable while events wait, so a libevent loop (the
 * control plane's Sync streams) can poll it and drain with timeout 0.
 *
 * An etcd watch whose endpoints are all down waits and reconnects on its own
 * and resumes without loss or repeat; tg_store_watch_connected() says
 * whether it is live.
 *
 * Errors: every function returns 0 or a negative TG_STORE_E* code and writes
 * a sentence into err (first error wins, see base/tg_base.h).
 *
 * Fork: do not use a store or watch in a child after fork(); open a new one.
 */
#ifndef TG_STORE_H
#define TG_STORE_H

#include <stddef.h>
#include <stdint.h>

#define TG_STORE_MAX_KEY 500                 /* bytes in a key (LMDB's key limit is 511) */
#define TG_STORE_MAX_VALUE (1024 * 1024)     /* bytes in a value */
#define TG_STORE_MAX_TXN_OPS 128             /* compares, and ops per branch, in one txn */
#define TG_STORE_MAX_TXN_BYTES (1280 * 1024) /* key+value bytes in one txn */

enum tg_store_err {
    TG_STORE_OK = 0,
    TG_STORE_EINVAL = -1,     /* bad argument, spec or option */
    TG_STORE_ETOOBIG = -2,    /* key, value or transaction over its limit */
    TG_STORE_ENOMEM = -3,     /* out of memory */
    TG_STORE_EIO = -4,        /* the storage failed (LMDB or disk error) */
    TG_STORE_ECORRUPT = -5,   /* data files corrupt, truncated or foreign */
    TG_STORE_EFULL = -6,      /* LMDB map reached its configured maximum */
    TG_STORE_ECOMPACTED = -7, /* revision compacted (or watcher fell behind): resync */
    TG_STORE_EFUTURE = -8,    /* revision is newer than the store's */
    TG_STORE_ENOLEASE = -9,   /* lease not found or expired */
    TG_STORE_EUNAVAIL = -10,  /* no endpoint reachable or answering in time */
    TG_STORE_EUNKNOWN = -11,  /* a write's outcome is unknown (sent, no answer) */
    TG_STORE_ESERVER = -12,   /* the server refused the request */
    TG_STORE_EAUTH = -13,     /* authentication failed */
    TG_STORE_ELOCKED = -14,   /* LMDB store already open in another process */
    TG_STORE_EAGAIN = -15,    /* no watch event within the timeout */
    TG_STORE_ECLOSED = -16,   /* the watch or store is closed */
    TG_STORE_ELAST = -17      /* sentinel, not an error */
};

/* Names a TG_STORE_E* code ("ok" for 0). Can't fail. */
const char *tg_store_strerror(int code);

typedef struct tg_store tg_store_t;             /* an open store */
typedef struct tg_store_watch tg_store_watch_t; /* one watch */

/* Options; zero everywhere picks the defaults. */
typedef struct tg_store_opts {
    const char *so_username;   /* etcd: user for /v3/auth (with password) */
    const char *so_password;   /* etcd: password */
    const char *so_ca_file;    /* etcd: CA bundle for https endpoints */
    const char *so_cert_file;  /* etcd: client certificate (PEM) */
    const char *so_key_file;   /* etcd: client key (PEM) */
    int so_timeout_ms;         /* etcd: per request, default 5000 */
    int so_connect_timeout_ms; /* etcd: per connect, default 1000 */
    int so_retries;            /* etcd: attempts over the endpoints, default 3 */
    size_t so_map_size;        /* lmdb: initial map size, default 64 MiB */
    size_t so_map_size_max;    /* lmdb: growth limit, default 16 GiB */
    int so_nosync;             /* lmdb: 1 = no fsync per commit (tests only) */
    int so_lease_tick_ms;      /* lmdb: lease expiry check period, default 100 */
    int64_t so_history_revs;   /* lmdb: revisions of history kept (watch and
                                  old reads), older ones compacted on their own;
                                  default 100000, < 0 = never (etcd: use its
                                  --auto-compaction-* flags) */
    int64_t so_history_s;      /* lmdb: also compact history older than this
                                  many seconds (etcd's periodic mode); 0 = no
                                  time bound (default). With both set, the
                                  smaller history wins */
} tg_store_opts_t;

/* One key-value pair. The bytes belong to whatever holds the kv (a result
 * struct or an event) and live until that is freed. */
typedef struct tg_store_kv {
    const uint8_t *kv_key; /* key bytes */
    size_t kv_key_len;
    const uint8_t *kv_val; /* value bytes (NULL when len 0 or keys-only) */
    size_t kv_val_len;
    int64_t kv_create_rev; /* revision that created the key */
    int64_t kv_mod_rev;    /* revision of the last change */
    int64_t kv_version;    /* puts since creation (1 on create) */
    int64_t kv_lease;      /* attached lease id, 0 if none */
} tg_store_kv_t;

/* ---- open / close --------------------------------------------------------- */

/* Opens the store named by spec (see above). opts may be NULL. The LMDB
 * directory is created if missing. On success *out is the store, to close
 * with tg_store_close(). Errors: EINVAL (spec), ECORRUPT (data files),
 * ELOCKED (lmdb dir used by another process), EIO, EUNAVAIL/EAUTH (etcd:
 * when username is set, authentication is done here), ENOMEM. */
int tg_store_open(tg_store_t **out, const char *spec, const tg_store_opts_t *opts, char *err, size_t errlen);

/* Closes the store; watches must be cancelled first. Accepts NULL. */
void tg_store_close(tg_store_t *s);

/* "lmdb" or "etcd". */
const char *tg_store_backend(const tg_store_t *s);

/* The store's current revision into *rev. */
int tg_store_revision(tg_store_t *s, int64_t *rev, char *err, size_t errlen);

/* ---- reads ---------------------------------------------------------------- */

typedef struct tg_store_range_req {
    const void *rq_key; /* first key (inclusive) */
    size_t rq_key_len;
    const void *rq_end; /* end (exclusive), see "Ranges" above */
    size_t rq_end_len;
    int rq_prefix;       /* 1: every key starting with rq_key; rq_end ignored */
    int64_t rq_limit;    /* at most this many kvs, 0 = no limit */
    int64_t rq_revision; /* read as of this revision, 0 = current */
    int rq_keys_only;    /* 1: leave values out */
} tg_store_range_req_t;

typedef struct tg_store_range_res {
    tg_store_kv_t *rs_kvs; /* rs_n kvs in key order */
    size_t rs_n;
    int rs_more;         /* 1: more kvs in the range than the limit let through */
    int64_t rs_count;    /* kvs in the whole range */
    int64_t rs_revision; /* store revision the read saw */
} tg_store_range_res_t;

/* Reads a range into *res (zeroed first). For the next page, read again with
 * rq_key = the last key + one NUL byte (tg_store_range_next() builds it), the
 * same end, and rq_revision = the first page's rs_revision for a consistent
 * view. Errors: EINVAL, ETOOBIG (key), ECOMPACTED, EFUTURE, EIO, EUNAVAIL.
 * Free with tg_store_range_res_free(). */
int tg_store_range(tg_store_t *s, const tg_store_range_req_t *req, tg_store_range_res_t *res, char *err,
                   size_t errlen);

/* Frees what a range result holds and zeroes it. Accepts NULL. */
void tg_store_range_res_free(tg_store_range_res_t *res);

/* The start key of the page after res: its last key + NUL, into buf (size
 * TG_STORE_MAX_KEY + 1); *len gets its length. Returns 0, or EINVAL when res
 * is empty. */
int tg_store_range_next(const tg_store_range_res_t *res, uint8_t *buf, size_t *len);

/* One key at the current revision: *kv is a copy (free with
 * tg_store_kv_free) or NULL when the key does not exist. rev (may be NULL)
 * gets the store revision. */
int tg_store_get(tg_store_t *s, const void *key, size_t key_len, tg_store_kv_t **kv, int64_t *rev, char *err,
                 size_t errlen);

/* Frees a kv from tg_store_get or tg_store_kv_dup. Accepts NULL. */
void tg_store_kv_free(tg_store_kv_t *kv);

/* A deep copy of kv in one block; NULL on allocation failure. */
tg_store_kv_t *tg_store_kv_dup(const tg_store_kv_t *kv);

/* ---- writes --------------------------------------------------------------- */

/* Sets key to value. lease 0 = none, else the key is deleted with the
 * lease. *rev (may be NULL) gets the revision of the change. Errors: EINVAL,
 * ETOOBIG, ENOLEASE, EFULL, EIO, EUNAVAIL, EUNKNOWN (etcd: sent, no answer;
 * it may have been applied). */
int tg_store_put(tg_store_t *s, const void *key, size_t key_len, const void *val, size_t val_len,
                 int64_t lease, int64_t *rev, char *err, size_t errlen);

/* Deletes key, or with prefix = 1 every key starting with it. *deleted (may
 * be NULL) gets how many kvs went, *rev (may be NULL) the store revision
 * after (unchanged when nothing was deleted). Errors as tg_store_put. */
int tg_store_delete(tg_store_t *s, const void *key, size_t key_len, int prefix, int64_t *deleted,
                    int64_t *rev, char *err, size_t errlen);

/* ---- transactions --------------------------------------------------------- */

enum tg_store_target {
    TG_STORE_CMP_VALUE = 0,  /* compare c_val with the value */
    TG_STORE_CMP_VERSION,    /* compare c_num with the version (0 = missing) */
    TG_STORE_CMP_CREATE_REV, /* compare c_num with create_revision */
    TG_STORE_CMP_MOD_REV     /* compare c_num with mod_revision */
};

enum tg_store_cmp_op { TG_STORE_EQ = 0, TG_STORE_NE, TG_STORE_LT, TG_STORE_GT };

/* One comparison: the key's <target> <op> the given value. As in etcd, a
 * VALUE comparison on a missing key is false whatever the op; the numeric
 * targets of a missing key are 0. */
typedef struct tg_store_cmp {
    const void *c_key;
    size_t c_key_len;
    int c_target; /* enum tg_store_target */
    int c_op;     /* enum tg_store_cmp_op: key's target <op> operand */
    int64_t c_num;
    const void *c_val;
    size_t c_val_len;
} tg_store_cmp_t;

enum tg_store_op_type { TG_STORE_OP_PUT = 1, TG_STORE_OP_DELETE, TG_STORE_OP_GET };

typedef struct tg_store_op {
    int op_type; /* enum tg_store_op_type */
    const void *op_key;
    size_t op_key_len;
    const void *op_end; /* DELETE/GET: range end, see "Ranges" */
    size_t op_end_len;
    int op_prefix;      /* DELETE/GET: 1 = every key starting with op_key */
    const void *op_val; /* PUT: value */
    size_t op_val_len;
    int64_t op_lease; /* PUT: lease id or 0 */
    int64_t op_limit; /* GET: 0 = no limit */
} tg_store_op_t;

typedef struct tg_store_op_res {
    int or_type;                   /* the op's type */
    tg_store_range_res_t or_range; /* GET: what it read */
    int64_t or_deleted;            /* DELETE: kvs deleted */
} tg_store_op_res_t;

typedef struct tg_store_txn_res {
    int tx_succeeded;          /* 1: every compare held and `success` ran */
    int64_t tx_revision;       /* store revision after the transaction */
    tg_store_op_res_t *tx_res; /* one per op of the branch that ran */
    size_t tx_n;
} tg_store_txn_res_t;

/* Atomically: if every compare holds, runs the success ops, else the failure
 * ops, in order. A put on the same key twice in one txn is EINVAL (as etcd).
 * *res (may be NULL) is zeroed first; free with tg_store_txn_res_free().
 * Errors as tg_store_put; EUNKNOWN means the txn was sent and no answer came:
 * it may or may not have applied, read to find out (it is never retried). */
int tg_store_txn(tg_store_t *s, const tg_store_cmp_t *cmps, size_t ncmp, const tg_store_op_t *success,
                 size_t nsuccess, const tg_store_op_t *failure, size_t nfailure, tg_store_txn_res_t *res,
                 char *err, size_t errlen);

/* Frees what a txn result holds and zeroes it. Accepts NULL. */
void tg_store_txn_res_free(tg_store_txn_res_t *res);

/* ---- compaction ----------------------------------------------------------- */

/* Discards history before rev: reads and watches from an older revision then
 * fail with ECOMPACTED. Errors: ECOMPACTED (rev already compacted), EFUTURE,
 * EIO, EUNAVAIL. */
int tg_store_compact(tg_store_t *s, int64_t rev, char *err, size_t errlen);

/* ---- leases --------------------------------------------------------------- */

/* Grants a lease of ttl_s seconds (>= 1; etcd may raise a small TTL to its
 * minimum) into *id. */
int tg_store_lease_grant(tg_store_t *s, int64_t ttl_s, int64_t *id, char *err, size_t errlen);

/* Renews lease id for its full TTL; *ttl_s (may be NULL) gets it. Errors:
 * ENOLEASE when it expired or never existed. */
int tg_store_lease_keepalive(tg_store_t *s, int64_t id, int64_t *ttl_s, char *err, size_t errlen);

/* Revokes lease id, deleting its keys (one revision). ENOLEASE if unknown. */
int tg_store_lease_revoke(tg_store_t *s, int64_t id, char *err, size_t errlen);

/* ---- watches -------------------------------------------------------------- */

enum tg_store_ev_type { TG_STORE_EV_PUT = 1, TG_STORE_EV_DELETE };

/* One change. ev_kv.kv_mod_rev is its revision; a delete carries the key and
 * its revision only. */
typedef struct tg_store_event {
    int ev_type; /* enum tg_store_ev_type */
    tg_store_kv_t ev_kv;
} tg_store_event_t;

/* Watches key (end_len 0), [key, end) or, with prefix = 1, every key starting
 * with key, delivering every change with revision >= start_rev (0 = changes
 * after now) in revision order, each exactly once, across etcd reconnects.
 * A start_rev older than the compaction point is reported by
 * tg_store_watch_next as ECOMPACTED. Cancel with tg_store_watch_cancel(). */
int tg_store_watch(tg_store_t *s, const void *key, size_t key_len, const void *end, size_t end_len,
                   int prefix, int64_t start_rev, tg_store_watch_t **out, char *err, size_t errlen);

/* Waits up to timeout_ms (0 = don't wait, < 0 = forever) for the next event:
 * returns 0 with *ev (free with tg_store_event_free), EAGAIN when none came,
 * ECOMPACTED when the watch cannot continue (start revision compacted, or
 * more than 1,000,000 events piled up unread): resync and watch again. */
int tg_store_watch_next(tg_store_watch_t *w, int timeout_ms, tg_store_event_t **ev, char *err, size_t errlen);

/* A descriptor readable while events (or a final error) wait. Valid until
 * the watch is cancelled; do not read or close it. */
int tg_store_watch_fd(const tg_store_watch_t *w);

/* The revision the watch will deliver next (last delivered + 1). */
int64_t tg_store_watch_next_rev(const tg_store_watch_t *w);

/* 1 while the watch's feed is live: always for LMDB; for etcd while its
 * stream is established (0 while it reconnects, e.g. every endpoint down).
 * Events are not lost while it is 0, only late. */
int tg_store_watch_connected(const tg_store_watch_t *w);

/* Stops the watch and frees it with its queued events. Accepts NULL. */
void tg_store_watch_cancel(tg_store_watch_t *w);

/* Frees an event. Accepts NULL. */
void tg_store_event_free(tg_store_event_t *ev);

/* ---- helpers -------------------------------------------------------------- */

/* The etcd range end for a prefix: the prefix with its last byte below 0xFF
 * incremented and the bytes after it dropped; one NUL byte ("every key")
 * when there is none. buf holds at least key_len bytes (>= 1); returns the
 * end's length. */
size_t tg_store_prefix_end(const void *key, size_t key_len, uint8_t *buf);

#endif
