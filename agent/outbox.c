/* outbox.c: the durable usage outbox, an LMDB environment in the data dir
 * holding one packed tollgate.v1.UsageRecord per completed request, keyed
 * by an 8-byte big-endian sequence (oldest first), until the control plane
 * acknowledges it.
 *
 * Records come in through the journal (journal.c, the file "journal" in
 * the same directory): a worker's loop iteration appends its records as
 * one frame with one pwrite under ob_jmu, which also hands out their
 * sequences, so frames are in sequence order. journal_apply moves frames
 * into LMDB in one write transaction, with the highest sequence moved
 * ("jseq" in the meta table) in the same transaction: the sync thread
 * every interval, and any reader (batch, scan) first, so the journal is
 * invisible to them (when a move fails, scans read the journal's records
 * after LMDB's). When the journal passes ob_rotate bytes, the sync thread
 * moves the rest, syncs LMDB and empties the file holding ob_jmu (workers'
 * appends wait for that small fsync, LMDB having been synced just before,
 * once per 32 MB of records). Opening moves what the journal holds beyond
 * jseq (a crash left it), syncs, and empties it; frames below jseq (an
 * emptying that did not reach the disk) are skipped.
 *
 * Not MDB_WRITEMAP: with it, every group sync (msync) write-protects the
 * dirty pages again, which costs TLB-flush interrupts on every worker
 * thread and a page fault at the next write (perf: ~10% of the agent's CPU
 * on 100 KB requests).
 *
 * Durability (DESIGN.md numbers: fdatasync 140-280 us, a synced LMDB
 * commit ~640 us): a journal append lands in the kernel's page cache,
 * where it survives kill -9 of the agent; LMDB is opened MDB_NOSYNC. A
 * sync thread (server.c) calls tg_outbox_sync every
 * outbox_sync_interval_ms: it moves the journal into LMDB and syncs LMDB
 * when anything was committed to it, one fsync an interval as before the
 * journal (LMDB's own integrity wants its syncs that frequent; the journal
 * needs none while moves succeed). So a power loss can take at most the
 * records of the last interval (plus the move's and the fsync's
 * duration). When moves fail (a full map, a failing disk) the journal is
 * fsynced instead, being the records' only copy; after a failed LMDB sync
 * (whose later "successes" cannot be trusted) the journal is fsynced every
 * interval and never emptied; after a failed journal fsync new records are
 * refused for good (restart on a sound disk). A batch is synced when it is
 * formed, before it is sent (a settled batch sequence must not come back
 * holding other records after a power loss). No fsync ever runs on an
 * event loop.
 *
 * "Full" is 3/4 of the map in use (every table, less LMDB's free list):
 * deleting acknowledged records, or setting refused ones aside, copies
 * pages too, and a map full to the brim could not drain.
 *
 * Threads: appends come from every worker (ob_jmu); moves are serialized
 * by ob_amu (taken before ob_jmu); LMDB serializes write transactions with
 * its own mutex. Readers (the reporter, the dump command) use their own
 * read transactions (MDB_NOTLS); a read-only open (the dump) reads the
 * journal's records beyond jseq too. A scan after a failed move holds
 * ob_amu while it calls its callback, which must not call the outbox.
 *
 * Downgrading to an agent without the journal: only after a clean stop
 * (which leaves the journal empty). */
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "agent/agent_int.h"
#include "base/tg_log.h"

#define ROTATE_BYTES ((uint64_t)32 << 20) /* journal size that makes the sync thread empty it */

struct tg_outbox {
    MDB_env *ob_env;
    MDB_dbi ob_dbi;
    MDB_dbi ob_meta;         /* "batch" -> the batch in flight; "next" -> next batch sequence;
                              * "jseq" -> the highest sequence moved from the journal */
    MDB_dbi ob_rejected;     /* records the control plane refused for good, kept for an operator */
    int ob_readonly;
    int ob_ready;             /* opened whole: close may move and empty the journal */
    int ob_has_meta;          /* read-only: the meta table exists */
    tg_journal_t *ob_journal; /* NULL: read-only and no journal file */
    pthread_mutex_t ob_jmu;   /* appends: the sequence and the frame */
    pthread_mutex_t ob_amu;   /* moves from the journal into LMDB */
    uint64_t ob_next;         /* next sequence (ob_jmu) */
    uint64_t ob_applied;      /* journal offset moved so far (ob_amu) */
    uint64_t ob_jseq;         /* highest sequence moved (ob_amu) */
    uint64_t ob_rotate;       /* ROTATE_BYTES unless a test set it */
    uint64_t ob_cap;          /* bytes the records table may take: 3/4 of the map */
    atomic_long ob_depth;     /* records held, in LMDB or the journal */
    atomic_int ob_full;       /* LMDB's map refused the journal's records: puts refused too */
    atomic_ulong ob_jwrites;  /* journal appends so far */
    unsigned long ob_jsynced; /* ob_jwrites at the last journal fsync (sync thread only) */
    atomic_ulong ob_writes;   /* LMDB commits so far (moves, batches, acknowledgements) */
    unsigned long ob_synced;  /* ob_writes at the last LMDB sync (sync thread only) */
    unsigned long ob_full_at; /* ob_writes at the last full map's nudge (sync thread only) */
    atomic_int ob_sync_broken;  /* an LMDB sync failed: the journal is never emptied again */
    atomic_int ob_jsync_broken; /* a journal fsync failed: puts refused for good */
    atomic_int ob_batch_synced; /* the batch in flight is on disk */
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

/* ---- moving the journal into LMDB ------------------------------------------ */

typedef struct {
    tg_outbox_t *mv_o;
    MDB_txn *mv_txn;
    uint64_t mv_jseq;  /* highest sequence in LMDB so far */
    unsigned mv_flags; /* MDB_APPEND; MDB_NOOVERWRITE when recovering */
    long mv_n;         /* records put */
    int mv_mdb_rc;     /* LMDB's error, when move_one failed */
} move_t;

#define MOVE_FAILED 1 /* move_one's non-zero return: see mv_mdb_rc */

static int move_one(void *arg, uint64_t seq, const void *data, size_t len)
{
    move_t *m = arg;
    if (seq <= m->mv_jseq)
        return 0; /* moved before an emptying of the journal that did not reach the disk */
    uint8_t key[8];
    put_be64(key, seq);
    MDB_val k = {8, key}, v = {len, (void *)data};
    int rc = mdb_put(m->mv_txn, m->mv_o->ob_dbi, &k, &v, m->mv_flags);
    if (rc == MDB_KEYEXIST && (m->mv_flags & MDB_NOOVERWRITE))
        rc = 0;
    if (rc != 0) {
        m->mv_mdb_rc = rc;
        return MOVE_FAILED;
    }
    m->mv_jseq = seq;
    m->mv_n++;
    return 0;
}

static int put_jseq(tg_outbox_t *o, MDB_txn *txn, uint64_t jseq)
{
    uint8_t b[8];
    put_be64(b, jseq);
    MDB_val k = {4, "jseq"}, v = {8, b};
    return mdb_put(txn, o->ob_meta, &k, &v, 0);
}

static uint64_t get_jseq(tg_outbox_t *o, MDB_txn *txn)
{
    MDB_val k = {4, "jseq"}, v;
    return mdb_get(txn, o->ob_meta, &k, &v) == 0 && v.mv_size == 8 ? get_be64(v.mv_data) : 0;
}

/* mdb_env_sync, remembering a failure for good: after a failed fsync a
 * later one may report success for pages that never reached the disk
 * (Linux marks them clean), so the journal is then never emptied. */
static int lmdb_sync(tg_outbox_t *o)
{
    int rc = mdb_env_sync(o->ob_env, 1);
    if (rc != 0)
        atomic_store(&o->ob_sync_broken, 1);
    return rc;
}

/* Whether the map in use passed its share, asked before a move puts
 * anything: the move itself may pass it (one interval's records, or a
 * backlog that waited), the next one waits. Every page in use counts
 * (records, the ones refused for good, the free list's own): a control
 * plane refusing every batch fills the map with the rejected table. */
static int over_cap(tg_outbox_t *o)
{
    MDB_envinfo info;
    MDB_stat st;
    MDB_txn *txn;
    if (mdb_env_info(o->ob_env, &info) != 0 || mdb_env_stat(o->ob_env, &st) != 0)
        return 0;
    uint64_t used = (uint64_t)info.me_last_pgno + 1;
    if (used * st.ms_psize <= o->ob_cap)
        return 0;
    /* the file reached the share: the pages on LMDB's free list are room
     * (read in a read-only transaction: LMDB opens no cursor on it in a
     * write one) */
    MDB_cursor *cur;
    MDB_val k, v;
    if (mdb_txn_begin(o->ob_env, NULL, MDB_RDONLY, &txn) != 0)
        return 1;
    if (mdb_cursor_open(txn, 0 /* the free list */, &cur) != 0) {
        mdb_txn_abort(txn);
        return 1;
    }
    for (int op = MDB_FIRST; mdb_cursor_get(cur, &k, &v, op) == 0; op = MDB_NEXT) {
        size_t n; /* an entry: the count of page numbers, then the numbers */
        if (v.mv_size < sizeof n)
            continue;
        memcpy(&n, v.mv_data, sizeof n);
        used -= n < used ? n : used;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return used * st.ms_psize > o->ob_cap;
}

/* An LMDB error moving records: a full map refuses puts until a move
 * succeeds (the reporter's acknowledgements free it), so the journal does
 * not grow past the map the operator sized. */
static int map_error(tg_outbox_t *o, int mdb_rc, char *err, size_t errlen)
{
    if (mdb_rc != MDB_MAP_FULL)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(mdb_rc));
    atomic_store(&o->ob_full, 1);
    return tg_errf(err, errlen, TG_AGENT_EFULL, "outbox: %s (records wait in the journal)",
                   mdb_strerror(mdb_rc));
}

/* Moves the journal's records beyond ob_applied into LMDB in one
 * transaction (a commit without sync, counted in ob_writes so that the
 * sync thread syncs it). With empty set, also syncs LMDB and empties the
 * journal, holding ob_jmu throughout so that nothing is appended
 * meanwhile. *due (may be NULL): whether the journal is large enough to
 * empty. 0, EFULL (the map is full: the records stay in the journal) or
 * ESYS. */
static int journal_apply(tg_outbox_t *o, int empty, int *due, char *err, size_t errlen)
{
    int rc = 0;
    if (due)
        *due = 0;
    if (o->ob_readonly || !o->ob_journal)
        return 0;
    pthread_mutex_lock(&o->ob_amu);
    pthread_mutex_lock(&o->ob_jmu);
    uint64_t end = tg_journal_end(o->ob_journal), at = o->ob_applied;
    if (!empty)
        pthread_mutex_unlock(&o->ob_jmu);
    if (end == o->ob_applied && !empty)
        goto out;
    move_t m = {o, NULL, o->ob_jseq, MDB_APPEND, 0, 0};
    if (end != o->ob_applied && over_cap(o)) {
        rc = map_error(o, MDB_MAP_FULL, err, errlen);
        goto out;
    }
    if ((rc = mdb_txn_begin(o->ob_env, NULL, 0, &m.mv_txn)) != 0) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
        goto out;
    }
    int mrc = tg_journal_read(o->ob_journal, o->ob_applied, end, move_one, &m, &at, err, errlen);
    if (mrc == 0 && at != end)
        mrc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: the journal is unsound at offset %llu",
                      (unsigned long long)at);
    if (mrc == 0 && m.mv_n && (m.mv_mdb_rc = put_jseq(o, m.mv_txn, m.mv_jseq)) != 0)
        mrc = MOVE_FAILED;
    if (mrc != 0) {
        mdb_txn_abort(m.mv_txn);
        if (mrc == MOVE_FAILED)
            rc = map_error(o, m.mv_mdb_rc, err, errlen);
        else
            rc = mrc;
        goto out;
    }
    if ((rc = mdb_txn_commit(m.mv_txn)) != 0) {
        rc = map_error(o, rc, err, errlen);
        goto out;
    }
    atomic_store(&o->ob_full, 0);
    o->ob_applied = end;
    o->ob_jseq = m.mv_jseq;
    if (m.mv_n)
        atomic_fetch_add(&o->ob_writes, 1);
    if (empty) {
        /* LMDB must hold every record on disk before the journal lets go */
        if (atomic_load(&o->ob_sync_broken)) {
            rc = tg_errf(err, errlen, TG_AGENT_ESYS,
                         "outbox: an LMDB sync failed earlier: the journal is kept");
            goto out;
        }
        if ((rc = lmdb_sync(o)) != 0) {
            rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: sync: %s", mdb_strerror(rc));
            goto out;
        }
        if ((rc = tg_journal_reset(o->ob_journal, 0, err, errlen)) != 0)
            goto out;
        o->ob_applied = 0;
    }
out:
    if (due)
        *due = o->ob_applied >= o->ob_rotate;
    if (empty)
        pthread_mutex_unlock(&o->ob_jmu);
    pthread_mutex_unlock(&o->ob_amu);
    return rc;
}

typedef struct {
    uint64_t js_after; /* records at or below it are in LMDB already */
    size_t js_left;
    int (*js_fn)(void *, uint64_t, const void *, size_t);
    void *js_arg;
} jscan_t;

#define JSCAN_ENOUGH INT32_MIN /* jscan_one's stop, not an error */

static int jscan_one(void *arg, uint64_t seq, const void *data, size_t len)
{
    jscan_t *js = arg;
    if (seq <= js->js_after)
        return 0;
    if (js->js_left == 0)
        return JSCAN_ENOUGH;
    js->js_left--;
    return js->js_fn(js->js_arg, seq, data, len);
}

/* Calls fn for up to max journal records above `after` (the ones a failed
 * move or a read-only open leaves out of LMDB), oldest first, from offset
 * `from`. Writable: the caller holds ob_amu (the read buffer is the
 * mover's), so fn must not call into the outbox. */
static int journal_scan(tg_outbox_t *o, uint64_t from, uint64_t after, size_t max,
                        int (*fn)(void *, uint64_t, const void *, size_t), void *arg, char *err,
                        size_t errlen)
{
    jscan_t js = {after, max, fn, arg};
    uint64_t end;
    if (!o->ob_journal || max == 0)
        return 0;
    if (!o->ob_readonly)
        pthread_mutex_lock(&o->ob_jmu);
    end = tg_journal_end(o->ob_journal);
    if (!o->ob_readonly)
        pthread_mutex_unlock(&o->ob_jmu);
    int rc = tg_journal_read(o->ob_journal, from, end, jscan_one, &js, NULL, err, errlen);
    return rc == JSCAN_ENOUGH ? 0 : rc;
}

typedef struct {
    uint64_t pc_after, pc_last;
    long pc_n;
} pending_t;

static int pending_one(void *arg, uint64_t seq, const void *data, size_t len)
{
    (void)data;
    (void)len;
    pending_t *p = arg;
    if (seq > p->pc_after) {
        p->pc_n++;
        p->pc_last = seq;
    }
    return 0;
}

/* Opening: what a crash left in the journal beyond jseq goes into LMDB
 * (duplicates of records there skipped), LMDB is synced, the journal
 * emptied. When the map is full the records stay in the journal (cut
 * after its last whole frame, where appends go on) and count as held;
 * *pending and *last say how many and the highest sequence. */
static int journal_recover(tg_outbox_t *o, long *pending, uint64_t *last, char *err, size_t errlen)
{
    MDB_txn *txn;
    uint64_t at = 0;
    *pending = 0;
    *last = 0;
    int full = tg_journal_end(o->ob_journal) > 0 && over_cap(o);
    int rc = mdb_txn_begin(o->ob_env, NULL, 0, &txn);
    if (rc != 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
    move_t m = {o, txn, get_jseq(o, txn), MDB_NOOVERWRITE, 0, 0};
    uint64_t jseq0 = m.mv_jseq;
    o->ob_jseq = jseq0;
    int mrc = 0;
    if (full) {
        m.mv_mdb_rc = MDB_MAP_FULL;
        mrc = MOVE_FAILED;
    }
    if (mrc == 0)
        mrc =
            tg_journal_read(o->ob_journal, 0, tg_journal_end(o->ob_journal), move_one, &m, NULL, err, errlen);
    if (mrc == 0 && m.mv_n && (m.mv_mdb_rc = put_jseq(o, txn, m.mv_jseq)) != 0)
        mrc = MOVE_FAILED;
    if (mrc == 0 && (rc = mdb_txn_commit(txn)) != 0) {
        txn = NULL;
        m.mv_mdb_rc = rc;
        mrc = MOVE_FAILED;
    }
    if (mrc != 0) {
        if (txn)
            mdb_txn_abort(txn);
        if (mrc != MOVE_FAILED || m.mv_mdb_rc != MDB_MAP_FULL)
            return mrc == MOVE_FAILED
                       ? tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: recovering the journal: %s",
                                 mdb_strerror(m.mv_mdb_rc))
                       : mrc;
        /* full: the records wait in the journal */
        pending_t p = {jseq0, 0, 0};
        if ((rc = tg_journal_read(o->ob_journal, 0, tg_journal_end(o->ob_journal), pending_one, &p, &at, err,
                                  errlen)) != 0 ||
            (rc = tg_journal_reset(o->ob_journal, at, err, errlen)) != 0)
            return rc;
        /* what a killed process left unsynced: on disk now, both */
        if ((rc = mdb_env_sync(o->ob_env, 1)) != 0)
            return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: sync: %s", mdb_strerror(rc));
        if ((rc = tg_journal_sync(o->ob_journal)) != 0)
            return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox journal: fsync: %s", strerror(errno));
        atomic_store(&o->ob_full, 1);
        o->ob_jseq = jseq0;
        *pending = p.pc_n;
        *last = p.pc_last;
        TG_LOG(TG_LOG_ERROR, "usage",
               "outbox: the map is full: %ld records wait in the journal until acknowledged "
               "ones free it (or restart with a larger --outbox-map-mb)",
               p.pc_n);
        return 0;
    }
    if ((rc = mdb_env_sync(o->ob_env, 1)) != 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: recovering the journal: %s", mdb_strerror(rc));
    o->ob_jseq = m.mv_jseq;
    if (m.mv_n)
        TG_LOG(TG_LOG_INFO, "usage", "outbox: records recovered from the journal: %ld", m.mv_n);
    return tg_journal_reset(o->ob_journal, 0, err, errlen);
}

int tg_outbox_open(const char *dir, size_t map_bytes, int readonly, tg_outbox_t **out, char *err, size_t errlen)
{
    int rc;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    char jpath[4096];
    *out = NULL;
    tg_outbox_t *o = tg_calloc(1, sizeof *o);
    if (!o)
        return tg_errf(err, errlen, TG_AGENT_ENOMEM, "out of memory opening the outbox");
    pthread_mutex_init(&o->ob_jmu, NULL);
    pthread_mutex_init(&o->ob_amu, NULL);
    o->ob_readonly = readonly;
    o->ob_rotate = ROTATE_BYTES;
    /* a quarter of the map kept free: deleting acknowledged records
     * copies pages too, and a map full to the brim could never drain */
    o->ob_cap = (uint64_t)map_bytes / 4 * 3;
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
    if ((size_t)snprintf(jpath, sizeof jpath, "%s/journal", dir) >= sizeof jpath) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox %s: path too long", dir);
        goto fail;
    }
    if ((rc = tg_journal_open(jpath, readonly, &o->ob_journal, err, errlen)) != 0)
        goto fail;
    if ((rc = mdb_txn_begin(o->ob_env, NULL, readonly ? MDB_RDONLY : 0, &txn)) != 0 ||
        (rc = mdb_dbi_open(txn, "records", readonly ? 0 : MDB_CREATE, &o->ob_dbi)) != 0 ||
        (!readonly && (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &o->ob_meta)) != 0) ||
        (!readonly && (rc = mdb_dbi_open(txn, "rejected", MDB_CREATE, &o->ob_rejected)) != 0)) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox %s: %s", dir, mdb_strerror(rc));
        goto fail;
    }
    if (readonly)
        o->ob_has_meta = mdb_dbi_open(txn, "meta", 0, &o->ob_meta) == 0;
    if ((rc = mdb_txn_commit(txn)) != 0) {
        txn = NULL;
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox %s: %s", dir, mdb_strerror(rc));
        goto fail;
    }
    txn = NULL;
    long pending = 0;
    uint64_t jlast = 0;
    if (!readonly && (rc = journal_recover(o, &pending, &jlast, err, errlen)) != 0)
        goto fail;
    if ((rc = mdb_txn_begin(o->ob_env, NULL, MDB_RDONLY, &txn)) != 0) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox %s: %s", dir, mdb_strerror(rc));
        goto fail;
    }
    MDB_stat st;
    mdb_stat(txn, o->ob_dbi, &st);
    atomic_init(&o->ob_depth, (long)st.ms_entries + pending);
    atomic_init(&o->ob_writes, 0);
    atomic_init(&o->ob_jwrites, 0);
    if (readonly && o->ob_has_meta)
        o->ob_jseq = get_jseq(o, txn);
    o->ob_next = (jlast > o->ob_jseq ? jlast : o->ob_jseq) + 1;
    MDB_val k, v;
    if (mdb_cursor_open(txn, o->ob_dbi, &cur) == 0 && mdb_cursor_get(cur, &k, &v, MDB_LAST) == 0 &&
        k.mv_size == 8 && get_be64(k.mv_data) >= o->ob_next)
        o->ob_next = get_be64(k.mv_data) + 1;
    if (cur)
        mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    MDB_envinfo info;
    if (mdb_env_info(o->ob_env, &info) == 0) /* LMDB keeps a larger existing map */
        o->ob_cap = (uint64_t)info.me_mapsize / 4 * 3;
    atomic_init(&o->ob_batch_synced, 1); /* the open synced (recovery), or an older agent did */
    o->ob_ready = 1;
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
    if (o->ob_env && o->ob_ready) {
        char err[TG_ERRLEN] = "";
        /* everything into LMDB, synced, the journal empty; failing that,
         * the journal on disk */
        if (journal_apply(o, 1, NULL, err, sizeof err) != 0) {
            TG_LOG(TG_LOG_ERROR, "usage", "outbox: closing: %s (the journal keeps the records)", err);
            if (o->ob_journal)
                tg_journal_sync(o->ob_journal);
        }
        if (!o->ob_readonly && atomic_load(&o->ob_writes) != o->ob_synced)
            lmdb_sync(o);
    }
    if (o->ob_env)
        mdb_env_close(o->ob_env);
    tg_journal_close(o->ob_journal);
    pthread_mutex_destroy(&o->ob_jmu);
    pthread_mutex_destroy(&o->ob_amu);
    tg_free(o);
}

static int put_many(tg_outbox_t *o, const tg_outbox_item_t *items, size_t n, uint64_t *first, char *err,
                    size_t errlen)
{
    if (n == 0)
        return 0;
    if (o->ob_readonly)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: opened read-only");
    if (atomic_load(&o->ob_jsync_broken))
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox journal: an fsync failed; records are refused");
    if (atomic_load(&o->ob_full))
        return tg_errf(err, errlen, TG_AGENT_EFULL,
                       "outbox: full (LMDB's map): records wait in the journal until "
                       "acknowledged ones free it");
    pthread_mutex_lock(&o->ob_jmu);
    uint64_t s = o->ob_next;
    int rc = tg_journal_append(o->ob_journal, s, items, n, err, errlen);
    if (rc == 0)
        o->ob_next += n;
    pthread_mutex_unlock(&o->ob_jmu);
    if (rc != 0)
        return rc;
    atomic_fetch_add(&o->ob_depth, (long)n);
    atomic_fetch_add(&o->ob_jwrites, 1);
    if (first)
        *first = s;
    return 0;
}

int tg_outbox_put(tg_outbox_t *o, const void *data, size_t len, uint64_t *seq, char *err, size_t errlen)
{
    tg_outbox_item_t it = {data, len};
    return put_many(o, &it, 1, seq, err, errlen);
}

int tg_outbox_put_many(tg_outbox_t *o, const tg_outbox_item_t *items, size_t n, char *err, size_t errlen)
{
    return put_many(o, items, n, NULL, err, errlen);
}

long tg_outbox_depth(tg_outbox_t *o)
{
    return atomic_load(&o->ob_depth);
}

/* A full map whose records were acknowledged stays full while every move
 * fails: LMDB reuses a transaction's freed pages from the second commit
 * after it, and a failed move commits nothing. One small commit (jseq
 * rewritten) after the reporter's lets the next move use them. */
static void full_nudge(tg_outbox_t *o)
{
    MDB_txn *txn;
    pthread_mutex_lock(&o->ob_amu); /* before LMDB's writer lock, as moves take them */
    if (mdb_txn_begin(o->ob_env, NULL, 0, &txn) == 0) {
        if (put_jseq(o, txn, o->ob_jseq) != 0)
            mdb_txn_abort(txn);
        else if (mdb_txn_commit(txn) == 0)
            atomic_fetch_add(&o->ob_writes, 1);
    }
    pthread_mutex_unlock(&o->ob_amu);
}

int tg_outbox_sync(tg_outbox_t *o, char *err, size_t errlen)
{
    int due = 0;
    if (o->ob_readonly)
        return 0;
    unsigned long jw = atomic_load(&o->ob_jwrites);
    int rc = journal_apply(o, 0, &due, err, errlen);
    unsigned long w = atomic_load(&o->ob_writes);
    if (rc == TG_AGENT_EFULL && w != o->ob_full_at) {
        full_nudge(o);
        o->ob_full_at = w = atomic_load(&o->ob_writes);
    }
    int lsync = 0; /* LMDB holds the moved records on disk */
    if (w != o->ob_synced) {
        int src = lmdb_sync(o);
        if (src == 0) {
            o->ob_synced = w;
            lsync = 1;
        } else if (rc == 0) {
            rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: sync: %s", mdb_strerror(src));
        }
    } else {
        lsync = 1;
    }
    if (rc == 0 && lsync && !atomic_load(&o->ob_sync_broken)) {
        o->ob_jsynced = jw; /* moved and synced: the journal need not be */
    } else if (jw != o->ob_jsynced && !atomic_load(&o->ob_jsync_broken)) {
        /* the records stay in the journal: it is their durable copy; a
         * failed fsync is not retried into a false success */
        if (tg_journal_sync(o->ob_journal) == 0)
            o->ob_jsynced = jw;
        else
            atomic_store(&o->ob_jsync_broken, 1);
    }
    if (atomic_load(&o->ob_jsync_broken) && rc == 0)
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox journal: an fsync failed: records are refused");
    /* LMDB was just synced: the sync under the lock (workers' appends
     * wait) writes the last moments' pages only */
    if (rc == 0 && due && !atomic_load(&o->ob_sync_broken))
        rc = journal_apply(o, 1, NULL, err, errlen);
    return rc;
}

void tg_outbox_set_rotate(tg_outbox_t *o, uint64_t bytes)
{
    o->ob_rotate = bytes;
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
    char merr[TG_ERRLEN] = "";
    /* a move that fails (a full map, a failing disk) leaves records in the
     * journal: read below, after LMDB's, holding ob_amu from before the
     * LMDB snapshot so that no move or emptying comes between the two */
    int moved = rejected || journal_apply(o, 0, NULL, merr, sizeof merr) == 0;
    int journal = !rejected && (o->ob_readonly || !moved);
    int locked = journal && !o->ob_readonly;
    uint64_t from = 0;
    if (locked) {
        pthread_mutex_lock(&o->ob_amu);
        from = o->ob_applied;
    }
    int rc = mdb_txn_begin(o->ob_env, NULL, MDB_RDONLY, &txn);
    if (rc != 0) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
        goto out;
    }
    if (rejected && (rc = mdb_dbi_open(txn, "rejected", 0, &dbi)) != 0) {
        mdb_txn_abort(txn);
        rc = rc == MDB_NOTFOUND ? 0 : tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
        goto out;
    }
    if ((rc = mdb_cursor_open(txn, dbi, &cur)) != 0) {
        mdb_txn_abort(txn);
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
        goto out;
    }
    /* the journal's records at or below this are in LMDB (the same
     * snapshot's jseq) */
    uint64_t after = journal && (!o->ob_readonly || o->ob_has_meta) ? get_jseq(o, txn) : 0;
    MDB_val k, v;
    size_t n = 0;
    for (int op = MDB_FIRST; n < max && mdb_cursor_get(cur, &k, &v, op) == 0; op = MDB_NEXT, n++) {
        if (k.mv_size != 8)
            continue;
        uint64_t seq = get_be64(k.mv_data);
        after = seq > after ? seq : after;
        if ((rc = fn(arg, seq, v.mv_data, v.mv_size)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (rc == 0 && journal && n < max)
        rc = journal_scan(o, from, after, max - n, fn, arg, err, errlen);
out:
    if (locked)
        pthread_mutex_unlock(&o->ob_amu);
    return rc;
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
    char merr[TG_ERRLEN] = "";
    /* a move that fails (the sync thread says why) leaves the journal's
     * records for a later batch; LMDB's still go out, and free the map */
    (void)journal_apply(o, 0, NULL, merr, sizeof merr);
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
        /* formed, but its sync failed: on disk before it goes out */
        if (!atomic_load(&o->ob_batch_synced)) {
            if ((rc = lmdb_sync(o)) != 0)
                return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: sync: %s", mdb_strerror(rc));
            atomic_store(&o->ob_batch_synced, 1);
        }
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
    if ((rc = mdb_put(txn, o->ob_meta, &k, &v, 0)) != 0 ||
        (rc = mdb_put(txn, o->ob_meta, &nk, &nv, 0)) != 0) {
        mdb_txn_abort(txn);
    } else if ((rc = mdb_txn_commit(txn)) == 0) {
        atomic_store(&o->ob_batch_synced, 0);
        atomic_fetch_add(&o->ob_writes, 1);
        /* on disk before it is sent: a batch sequence the control plane
         * has settled must never come back after a power loss holding
         * other records (it would answer from the settled one, and the
         * agent would drop records never charged). The reporter's
         * thread, once a batch. */
        if ((rc = lmdb_sync(o)) == 0)
            atomic_store(&o->ob_batch_synced, 1);
    }
    if (rc != 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox: %s", mdb_strerror(rc));
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
