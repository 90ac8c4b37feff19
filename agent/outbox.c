/* outbox.c: the durable usage outbox, an LMDB environment in the data dir
 * holding one packed tollgate.v1.UsageRecord per completed request, keyed
 * by an 8-byte big-endian sequence (oldest first), until the control plane
 * acknowledges it.
 *
 * Not MDB_WRITEMAP: with it, every group sync (msync) write-protects the
 * dirty pages again, which costs TLB-flush interrupts on every worker
 * thread and a page fault at the next write (perf: ~10% of the agent's CPU
 * on 100 KB requests). A commit's pwrite is amortized over the loop
 * iteration's records instead.
 *
 * Durability (DESIGN.md numbers: fdatasync 140-280 us, a synced LMDB
 * commit ~640 us): the environment is opened MDB_NOSYNC, so a commit is a
 * few microseconds and lands in the kernel's page cache, where it survives
 * kill -9 of the agent. A sync thread (server.c) calls tg_outbox_sync every
 * outbox_sync_interval_ms when something was written, so a power loss can
 * take at most the records of the last interval (plus the fsync's own
 * duration). No fsync ever runs on an event loop.
 *
 * Threads: puts come from every worker; LMDB serializes write transactions
 * with its own mutex (held for the few microseconds of a put). Readers (the
 * reporter, the dump command) use their own read transactions (MDB_NOTLS). */
#include <errno.h>
#include <lmdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "agent/agent_int.h"

struct tg_outbox {
    MDB_env *ob_env;
    MDB_dbi ob_dbi;
    MDB_dbi ob_meta;         /* "batch" -> the batch in flight; "next" -> next batch sequence */
    MDB_dbi ob_rejected;     /* records the control plane refused for good, kept for an operator */
    atomic_ullong ob_next;   /* next sequence */
    atomic_long ob_depth;    /* records held */
    atomic_ulong ob_writes;  /* puts so far (the sync thread compares) */
    unsigned long ob_synced; /* ob_writes at the last sync (sync thread only) */
};

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

int tg_outbox_open(const char *dir, size_t map_bytes, int readonly, tg_outbox_t **out, char *err, size_t errlen)
{
    int rc;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    *out = NULL;
    tg_outbox_t *o = tg_calloc(1, sizeof *o);
    if (!o)
        return tg_errf(err, errlen, TG_AGENT_ENOMEM, "out of memory opening the outbox");
    if (!readonly && mkdir(dir, 0700) != 0 && errno != EEXIST) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox %s: %s", dir, strerror(errno));
        goto fail;
    }
    if ((rc = mdb_env_create(&o->ob_env)) != 0 || (rc = mdb_env_set_mapsize(o->ob_env, map_bytes)) != 0 ||
        (rc = mdb_env_set_maxdbs(o->ob_env, 4)) != 0 ||
        (rc = mdb_env_open(o->ob_env, dir, MDB_NOTLS | (readonly ? MDB_RDONLY : MDB_NOSYNC), 0600)) != 0) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox %s: %s", dir, mdb_strerror(rc));
        goto fail;
    }
    if ((rc = mdb_txn_begin(o->ob_env, NULL, readonly ? MDB_RDONLY : 0, &txn)) != 0 ||
        (rc = mdb_dbi_open(txn, "records", readonly ? 0 : MDB_CREATE, &o->ob_dbi)) != 0 ||
        (!readonly && (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &o->ob_meta)) != 0) ||
        (!readonly && (rc = mdb_dbi_open(txn, "rejected", MDB_CREATE, &o->ob_rejected)) != 0)) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox %s: %s", dir, mdb_strerror(rc));
        goto fail;
    }
    MDB_stat st;
    mdb_stat(txn, o->ob_dbi, &st);
    atomic_init(&o->ob_depth, (long)st.ms_entries);
    atomic_init(&o->ob_writes, 0);
    uint64_t next = 1;
    MDB_val k, v;
    if (mdb_cursor_open(txn, o->ob_dbi, &cur) == 0 && mdb_cursor_get(cur, &k, &v, MDB_LAST) == 0 && k.mv_size == 8)
        next = get_be64(k.mv_data) + 1;
    atomic_init(&o->ob_next, next);
    if (cur)
        mdb_cursor_close(cur);
    cur = NULL;
    if ((rc = mdb_txn_commit(txn)) != 0) {
        txn = NULL;
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox %s: %s", dir, mdb_strerror(rc));
        goto fail;
    }
    *out = o;
    return 0;
fail:
    if (txn)
        mdb_txn_abort(txn);
    tg_outbox_close(o);
    return rc;
}

void tg_outbox_close(tg_outbox_t *o)
{
    if (!o)
        return;
    if (o->ob_env) {
        if (atomic_load(&o->ob_writes) != o->ob_synced)
            mdb_env_sync(o->ob_env, 1);
        mdb_env_close(o->ob_env);
    }
    tg_free(o);
}

int tg_outbox_put(tg_outbox_t *o, const void *data, size_t len, uint64_t *seq, char *err, size_t errlen)
{
    MDB_txn *txn;
    uint8_t key[8];
    int rc = mdb_txn_begin(o->ob_env, NULL, 0, &txn);
    if (rc != 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
    /* Taken inside the write transaction, so keys are committed in order. */
    uint64_t s = atomic_fetch_add(&o->ob_next, 1);
    put_be64(key, s);
    MDB_val k = {8, key}, v = {len, (void *)data};
    if ((rc = mdb_put(txn, o->ob_dbi, &k, &v, MDB_APPEND)) != 0)
        mdb_txn_abort(txn); /* a failed commit frees the transaction itself */
    else
        rc = mdb_txn_commit(txn);
    if (rc != 0) {
        return tg_errf(err, errlen, rc == MDB_MAP_FULL ? TG_AGENT_EFULL : TG_AGENT_ESYS, "outbox: %s",
                       mdb_strerror(rc));
    }
    atomic_fetch_add(&o->ob_depth, 1);
    atomic_fetch_add(&o->ob_writes, 1);
    if (seq)
        *seq = s;
    return 0;
}

int tg_outbox_put_many(tg_outbox_t *o, const tg_outbox_item_t *items, size_t n, char *err, size_t errlen)
{
    MDB_txn *txn;
    uint8_t key[8];
    if (n == 0)
        return 0;
    int rc = mdb_txn_begin(o->ob_env, NULL, 0, &txn);
    if (rc != 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
    uint64_t s = atomic_fetch_add(&o->ob_next, n);
    for (size_t i = 0; i < n && rc == 0; i++) {
        put_be64(key, s + i);
        MDB_val k = {8, key}, v = {items[i].oi_len, (void *)items[i].oi_data};
        rc = mdb_put(txn, o->ob_dbi, &k, &v, MDB_APPEND);
    }
    if (rc != 0)
        mdb_txn_abort(txn);
    else
        rc = mdb_txn_commit(txn);
    if (rc != 0)
        return tg_errf(err, errlen, rc == MDB_MAP_FULL ? TG_AGENT_EFULL : TG_AGENT_ESYS, "outbox: %s",
                       mdb_strerror(rc));
    atomic_fetch_add(&o->ob_depth, (long)n);
    atomic_fetch_add(&o->ob_writes, 1);
    return 0;
}

long tg_outbox_depth(tg_outbox_t *o)
{
    return atomic_load(&o->ob_depth);
}

int tg_outbox_sync(tg_outbox_t *o)
{
    unsigned long w = atomic_load(&o->ob_writes);
    if (w == o->ob_synced)
        return 0;
    int rc = mdb_env_sync(o->ob_env, 1);
    if (rc == 0)
        o->ob_synced = w;
    return rc == 0 ? 0 : TG_AGENT_ESYS;
}

int tg_outbox_scan(tg_outbox_t *o, size_t max, int (*fn)(void *, uint64_t, const void *, size_t), void *arg,
                   char *err, size_t errlen)
{
    return tg_outbox_scan_table(o, 0, max, fn, arg, err, errlen);
}

int tg_outbox_scan_table(tg_outbox_t *o, int rejected, size_t max,
                         int (*fn)(void *, uint64_t, const void *, size_t), void *arg, char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_dbi dbi = o->ob_dbi;
    int rc = mdb_txn_begin(o->ob_env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
    if (rejected && (rc = mdb_dbi_open(txn, "rejected", 0, &dbi)) != 0) {
        mdb_txn_abort(txn);
        return rc == MDB_NOTFOUND ? 0 : tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
    }
    if ((rc = mdb_cursor_open(txn, dbi, &cur)) != 0) {
        mdb_txn_abort(txn);
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
    }
    MDB_val k, v;
    size_t n = 0;
    int out = 0;
    for (int op = MDB_FIRST; n < max && mdb_cursor_get(cur, &k, &v, op) == 0; op = MDB_NEXT, n++) {
        if (k.mv_size != 8)
            continue;
        if ((out = fn(arg, get_be64(k.mv_data), v.mv_data, v.mv_size)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return out;
}

/* ---- batches ------------------------------------------------------------------ */

/* A batch, once formed, is written down (its sequence and record range)
 * before it is sent, and resent exactly as it was until acknowledged: the
 * control plane deduplicates by (agent, sequence), so a resend after a
 * crash must carry the same records under the same sequence. */
int tg_outbox_batch(tg_outbox_t *o, size_t max, tg_outbox_batch_t *b, char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    int rc = mdb_txn_begin(o->ob_env, NULL, 0, &txn);
    if (rc != 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
    MDB_val k = {5, "batch"}, v;
    if ((rc = mdb_get(txn, o->ob_meta, &k, &v)) == 0 && v.mv_size == 32) {
        const uint8_t *p = v.mv_data;
        b->ob_seq = get_be64(p);
        b->ob_first = get_be64(p + 8);
        b->ob_last = get_be64(p + 16);
        b->ob_count = get_be64(p + 24);
        mdb_txn_abort(txn);
        return 1;
    }
    uint64_t next = 1;
    MDB_val nk = {4, "next"}, nv;
    if (mdb_get(txn, o->ob_meta, &nk, &nv) == 0 && nv.mv_size == 8)
        next = get_be64(nv.mv_data);
    b->ob_count = 0;
    if ((rc = mdb_cursor_open(txn, o->ob_dbi, &cur)) == 0) {
        MDB_val rk, rv;
        for (int op = MDB_FIRST; b->ob_count < max && mdb_cursor_get(cur, &rk, &rv, op) == 0; op = MDB_NEXT) {
            if (rk.mv_size != 8)
                continue;
            uint64_t s = get_be64(rk.mv_data);
            if (b->ob_count == 0)
                b->ob_first = s;
            b->ob_last = s;
            b->ob_count++;
        }
        mdb_cursor_close(cur);
    }
    if (b->ob_count == 0) {
        mdb_txn_abort(txn);
        return 0;
    }
    b->ob_seq = next;
    uint8_t buf[32], nb[8];
    put_be64(buf, b->ob_seq);
    put_be64(buf + 8, b->ob_first);
    put_be64(buf + 16, b->ob_last);
    put_be64(buf + 24, b->ob_count);
    put_be64(nb, next + 1);
    v = (MDB_val){32, buf};
    nv = (MDB_val){8, nb};
    if ((rc = mdb_put(txn, o->ob_meta, &k, &v, 0)) != 0 || (rc = mdb_put(txn, o->ob_meta, &nk, &nv, 0)) != 0)
        mdb_txn_abort(txn);
    else
        rc = mdb_txn_commit(txn);
    if (rc != 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
    atomic_fetch_add(&o->ob_writes, 1);
    return 1;
}

int tg_outbox_batch_done(tg_outbox_t *o, const tg_outbox_batch_t *b, int rejected, char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = mdb_txn_begin(o->ob_env, NULL, 0, &txn);
    if (rc == 0 && (rc = mdb_cursor_open(txn, o->ob_dbi, &cur)) != 0)
        mdb_txn_abort(txn);
    if (rc != 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
    MDB_val k, v;
    long gone = 0;
    while (mdb_cursor_get(cur, &k, &v, MDB_FIRST) == 0 && k.mv_size == 8 && get_be64(k.mv_data) <= b->ob_last) {
        if (rejected && (rc = mdb_put(txn, o->ob_rejected, &k, &v, 0)) != 0)
            break;
        if ((rc = mdb_cursor_del(cur, 0)) != 0)
            break;
        gone++;
    }
    mdb_cursor_close(cur);
    MDB_val bk = {5, "batch"};
    if (rc == 0 && (rc = mdb_del(txn, o->ob_meta, &bk, NULL)) == MDB_NOTFOUND)
        rc = 0;
    if (rc != 0)
        mdb_txn_abort(txn);
    else
        rc = mdb_txn_commit(txn);
    if (rc != 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
    atomic_fetch_sub(&o->ob_depth, gone);
    atomic_fetch_add(&o->ob_writes, 1);
    return 0;
}

/* ---- withheld answers ------------------------------------------------------- */

int tg_outbox_withhold(const void *in, size_t len, const char *reason, void **out, size_t *outlen, int64_t *cost)
{
    int rc = 0;
    uint8_t *buf = NULL;
    Tollgate__V1__UsageRecord *r = tollgate__v1__usage_record__unpack(NULL, len, in);
    if (!r)
        return TG_AGENT_EJSON;
    char *msg0 = r->error_message;
    *cost = r->cost_nano;
    r->client_status = 503;
    r->error_class = TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY;
    r->error_message = (char *)reason;
    r->answer_withheld = 1;
    r->cost_nano = 0;
    size_t n = tollgate__v1__usage_record__get_packed_size(r);
    if (!(buf = tg_malloc(n ? n : 1))) {
        rc = TG_AGENT_ENOMEM;
        goto done;
    }
    tollgate__v1__usage_record__pack(r, buf);
    *out = buf;
    *outlen = n;
done:
    r->error_message = msg0; /* the unpacker's, freed with it */
    tollgate__v1__usage_record__free_unpacked(r, NULL);
    return rc;
}
