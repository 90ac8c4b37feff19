/* tg_ledger core: opening and checking the file, write transactions with
 * map growth, batched idempotent appends with the SHA-256 chain,
 * retention in small chunks, chain verification, the head (checkpoint
 * hook) and statistics. Queries live in ledger_query.c, the row codec in
 * ledger_codec.c. See ledger.h for the contract, ledger_int.h for the
 * layout. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/tg_base.h"
#include "base/tg_log.h"
#include "store/ledger/ledger_int.h"

#define DEF_MAP_SIZE ((size_t)4 << 30)
#define DEF_MAP_MAX ((size_t)64 << 30)
#define DEF_READERS 126
#define VERIFY_CHUNK 65536

const char *tg_ledger_strerror(int code)
{
    switch (code) {
    case 0: return "success";
    case TG_LEDGER_EINVAL: return "invalid argument";
    case TG_LEDGER_ENOMEM: return "out of memory";
    case TG_LEDGER_EIO: return "I/O error";
    case TG_LEDGER_EFULL: return "ledger full (map at its maximum size)";
    case TG_LEDGER_ECORRUPT: return "ledger file corrupt or not a ledger";
    case TG_LEDGER_ETAMPER: return "ledger hash chain broken";
    case TG_LEDGER_EOVERFLOW: return "sum overflows int64";
    case TG_LEDGER_EREADERS: return "no free LMDB reader slot";
    case TG_LEDGER_ELMDB: return "LMDB error";
    case TG_LEDGER_ELAST: return "unknown ledger error";
    }
    return "unknown ledger error";
}

/* ---- LMDB helpers -------------------------------------------------------- */

int tgl_lmdb_err(const tg_ledger_t *l, int rc, const char *what, char *err, size_t errlen)
{
    const char *path = l && l->path ? l->path : "?";
    int code;
    /* a commit whose meta page the full disk cut short leaves LMDB refusing
     * every transaction until the environment is reopened: settlement
     * would stay stuck while saying it resumes by itself */
    if (rc == MDB_PANIC) {
        TG_LOG(TG_LOG_ERROR, "ledger",
               "ledger %s: %s: %s: a write the full disk cut short left LMDB refusing every write until the "
               "process restarts; exiting (status %d): restart tollgate-cp after freeing space (df -h)",
               path, what, mdb_strerror(rc), TG_LMDB_PANIC_EXIT);
        _exit(TG_LMDB_PANIC_EXIT);
    }
    switch (rc) {
    case MDB_MAP_FULL: code = TG_LEDGER_EFULL; break;
    case MDB_READERS_FULL: code = TG_LEDGER_EREADERS; break;
    case MDB_INVALID:
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_VERSION_MISMATCH:
    case MDB_INCOMPATIBLE: code = TG_LEDGER_ECORRUPT; break;
    case ENOMEM: code = TG_LEDGER_ENOMEM; break;
    default: code = rc > 0 ? TG_LEDGER_EIO : TG_LEDGER_ELMDB; break;
    }
    return tg_errf(err, errlen, code, "ledger %s: %s: %s", path, what, mdb_strerror(rc));
}

/* LMDB's own codes sit in -30800..-30780, far from TG_LEDGER_E* (-1..-10)
 * and positive errno values, so one int carries either kind. */
static int is_lmdb_rc(int rc)
{
    return rc > 0 || rc <= MDB_KEYEXIST;
}

/* Another process grew the map: adopt its size (needs no open txn here). */
static int adopt_mapsize(tg_ledger_t *l)
{
    pthread_rwlock_wrlock(&l->maplock);
    int rc = mdb_env_set_mapsize(l->env, 0);
    pthread_rwlock_unlock(&l->maplock);
    return rc;
}

static int txn_begin(tg_ledger_t *l, unsigned flags, MDB_txn **txn)
{
    for (int tries = 0;; tries++) {
        pthread_rwlock_rdlock(&l->maplock);
        int rc = mdb_txn_begin(l->env, NULL, flags, txn);
        if (rc == 0)
            return 0;
        pthread_rwlock_unlock(&l->maplock);
        if (rc != MDB_MAP_RESIZED || tries >= 3)
            return rc;
        if ((rc = adopt_mapsize(l)) != 0)
            return rc;
    }
}

int tgl_read_begin(tg_ledger_t *l, MDB_txn **txn, char *err, size_t errlen)
{
    int rc = txn_begin(l, MDB_RDONLY, txn);
    return rc ? tgl_lmdb_err(l, rc, "begin read transaction", err, errlen) : 0;
}

void tgl_read_end(tg_ledger_t *l, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&l->maplock);
}

/* Doubles the map, up to map_max. */
static int grow_map(tg_ledger_t *l, char *err, size_t errlen)
{
    MDB_envinfo info;
    int ret = 0;
    pthread_rwlock_wrlock(&l->maplock);
    mdb_env_info(l->env, &info);
    if (info.me_mapsize >= l->map_max) {
        ret = tg_errf(err, errlen, TG_LEDGER_EFULL,
                      "ledger %s: full at its maximum map size of %zu bytes; raise lo_map_max "
                      "or run retention (nothing of this write was stored)",
                      l->path, l->map_max);
        goto done;
    }
    size_t next = info.me_mapsize > l->map_max / 2 ? l->map_max : info.me_mapsize * 2;
    int rc = mdb_env_set_mapsize(l->env, next);
    if (rc)
        ret = tgl_lmdb_err(l, rc, "grow the memory map", err, errlen);
done:
    pthread_rwlock_unlock(&l->maplock);
    return ret;
}

/* A write transaction body: returns 0, a TG_LEDGER_E* code (message
 * written) or a raw LMDB/errno code (the runner writes the message). It is
 * re-run from scratch after the map grows, so it must reset its outputs. */
typedef int (*write_body)(tg_ledger_t *l, MDB_txn *txn, void *ctx, char *err, size_t errlen);

static int run_write(tg_ledger_t *l, write_body body, void *ctx, const char *what, char *err,
                     size_t errlen)
{
    for (;;) {
        MDB_txn *txn;
        int rc = txn_begin(l, 0, &txn);
        if (rc)
            return tgl_lmdb_err(l, rc, "begin write transaction", err, errlen);
        rc = body(l, txn, ctx, err, errlen);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        pthread_rwlock_unlock(&l->maplock);
        if (rc == MDB_MAP_FULL) {
            if ((rc = grow_map(l, err, errlen)) != 0)
                return rc;
            continue;
        }
        if (rc && is_lmdb_rc(rc))
            return tgl_lmdb_err(l, rc, what, err, errlen);
        return rc;
    }
}

int tgl_meta_pos(MDB_txn *txn, MDB_dbi meta, const char *name, uint64_t *seq,
                 unsigned char hash[TGL_HASH])
{
    MDB_val k = {strlen(name), (void *)name}, v;
    int rc = mdb_get(txn, meta, &k, &v);
    *seq = 0;
    memset(hash, 0, TGL_HASH);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (v.mv_size != 8 + TGL_HASH)
        return MDB_CORRUPTED;
    *seq = tgl_get_u64(v.mv_data);
    memcpy(hash, (unsigned char *)v.mv_data + 8, TGL_HASH);
    return 0;
}

static int put_pos(MDB_txn *txn, MDB_dbi meta, const char *name, uint64_t seq,
                   const unsigned char hash[TGL_HASH])
{
    unsigned char b[8 + TGL_HASH];
    tgl_put_u64(b, seq);
    memcpy(b + 8, hash, TGL_HASH);
    MDB_val k = {strlen(name), (void *)name}, v = {sizeof(b), b};
    return mdb_put(txn, meta, &k, &v, 0);
}

/* Retention horizon; INT64_MIN when never set. */
static int get_horizon(MDB_txn *txn, MDB_dbi meta, int64_t *h)
{
    MDB_val k = {7, "horizon"}, v;
    int rc = mdb_get(txn, meta, &k, &v);
    *h = INT64_MIN;
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (v.mv_size != 8)
        return MDB_CORRUPTED;
    *h = tgl_get_time(v.mv_data);
    return 0;
}

/* ---- open / close ------------------------------------------------------- */

static int open_dbs(tg_ledger_t *l, MDB_txn *txn, unsigned bshift, char *err, size_t errlen)
{
    MDB_dbi main;
    MDB_stat st;
    int rc = mdb_dbi_open(txn, "meta", 0, &l->meta);
    int fresh = 0;
    if (rc == MDB_NOTFOUND) {
        /* No ledger here: only an empty LMDB file may become one. */
        if ((rc = mdb_dbi_open(txn, NULL, 0, &main)) != 0 || (rc = mdb_stat(txn, main, &st)) != 0)
            return tgl_lmdb_err(l, rc, "read the main database", err, errlen);
        if (st.ms_entries != 0)
            return tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                           "ledger %s: an LMDB file that is not a Tollgate ledger (no meta "
                           "database); refusing to write into it",
                           l->path);
        fresh = 1;
        rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &l->meta);
    }
    if (rc == MDB_INCOMPATIBLE)
        return tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                       "ledger %s: an LMDB file that is not a Tollgate ledger", l->path);
    if (rc)
        return tgl_lmdb_err(l, rc, "open the meta database", err, errlen);

    MDB_val k = {6, "format"}, v = {strlen(TGL_FORMAT), TGL_FORMAT};
    unsigned char bs = (unsigned char)bshift;
    MDB_val bk = {6, "bshift"}, bv = {1, &bs};
    if (fresh) {
        if ((rc = mdb_put(txn, l->meta, &k, &v, 0)) != 0 ||
            (rc = mdb_put(txn, l->meta, &bk, &bv, 0)) != 0)
            return tgl_lmdb_err(l, rc, "write the format record", err, errlen);
        l->bshift = bshift;
    } else {
        rc = mdb_get(txn, l->meta, &k, &v);
        if (rc == MDB_NOTFOUND || (rc == 0 && (v.mv_size != strlen(TGL_FORMAT) ||
                                               memcmp(v.mv_data, TGL_FORMAT, v.mv_size) != 0)))
            return tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                           "ledger %s: unknown format (expected \"%s\"); not a ledger this "
                           "version can read",
                           l->path, TGL_FORMAT);
        if (rc)
            return tgl_lmdb_err(l, rc, "read the format record", err, errlen);
        rc = mdb_get(txn, l->meta, &bk, &bv);
        if (rc == 0 && (bv.mv_size != 1 || *(unsigned char *)bv.mv_data > 40))
            rc = MDB_CORRUPTED;
        if (rc)
            return tgl_lmdb_err(l, rc, "read the bucket size", err, errlen);
        l->bshift = *(unsigned char *)bv.mv_data;
    }

    unsigned cr = fresh ? MDB_CREATE : 0;
    struct {
        const char *name;
        MDB_dbi *dbi;
        unsigned flags;
    } dbs[3 + TGL_IX_N] = {{"rows", &l->rows, 0}, {"ids", &l->ids, 0}, {"buckets", &l->buckets, 0}};
    for (int i = 0; i < TGL_IX_N; i++) {
        dbs[3 + i].name = tgl_ix_names[i];
        dbs[3 + i].dbi = &l->ix[i];
        dbs[3 + i].flags = 0;
    }
    for (int i = 0; i < 3 + TGL_IX_N; i++) {
        rc = mdb_dbi_open(txn, dbs[i].name, dbs[i].flags | cr, dbs[i].dbi);
        if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE)
            return tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                           "ledger %s: database \"%s\" is missing or has the wrong type", l->path,
                           dbs[i].name);
        if (rc)
            return tgl_lmdb_err(l, rc, "open a database", err, errlen);
    }
    return 0;
}

/* LMDB maps the file: a file shorter than its last page would fault on
 * access, so refuse it up front. */
static int check_length(tg_ledger_t *l, char *err, size_t errlen)
{
    MDB_envinfo info;
    MDB_stat st;
    struct stat fs;
    int fd;
    mdb_env_info(l->env, &info);
    mdb_env_stat(l->env, &st);
    if (mdb_env_get_fd(l->env, &fd) != 0 || fstat(fd, &fs) != 0)
        return tg_errf(err, errlen, TG_LEDGER_EIO, "ledger %s: cannot stat: %s", l->path,
                       strerror(errno));
    unsigned long long need = ((unsigned long long)info.me_last_pgno + 1) * st.ms_psize;
    if ((unsigned long long)fs.st_size < need)
        return tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                       "ledger %s: truncated: the file has %lld bytes but its metadata "
                       "needs %llu",
                       l->path, (long long)fs.st_size, need);
    return 0;
}

int tg_ledger_open(const char *path, const tg_ledger_opts_t *opts, tg_ledger_t **out, char *err,
                   size_t errlen)
{
    tg_ledger_opts_t o = {0};
    tg_ledger_t *l = NULL;
    MDB_txn *txn = NULL;
    struct stat fs;
    int ret = 0, rc;
    int lock_ok = 0;

    if (out)
        *out = NULL;
    if (!path || !*path || !out)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger: open needs a path and an out handle");
    if (opts)
        o = *opts;
    if (!o.lo_map_size)
        o.lo_map_size = DEF_MAP_SIZE;
    if (!o.lo_map_max)
        o.lo_map_max = DEF_MAP_MAX;
    if (!o.lo_max_readers)
        o.lo_max_readers = DEF_READERS;
    if (o.lo_bucket_shift > 30)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger %s: lo_bucket_shift must be 0..30",
                       path);
    if (o.lo_map_max < o.lo_map_size)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL,
                       "ledger %s: lo_map_max (%zu) is below lo_map_size (%zu)", path,
                       o.lo_map_max, o.lo_map_size);
    if (stat(path, &fs) == 0) {
        if (!S_ISREG(fs.st_mode))
            return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger %s: not a regular file", path);
        /* LMDB would silently start a new database in an empty file; an
         * empty ledger file means it was truncated, and losing a ledger
         * silently is worse than refusing to start. */
        if (fs.st_size == 0)
            return tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                           "ledger %s: the file is empty (truncated?); move it away to start a "
                           "new ledger",
                           path);
    }

    if ((l = tg_calloc(1, sizeof(*l))) == NULL || (l->path = tg_strdup(path)) == NULL) {
        ret = tg_errf(err, errlen, TG_LEDGER_ENOMEM, "ledger %s: out of memory", path);
        goto fail;
    }
    l->map_max = o.lo_map_max;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* Writer preference: a map resize must not starve behind readers. */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    rc = pthread_rwlock_init(&l->maplock, &ra);
    pthread_rwlockattr_destroy(&ra);
    if (rc) {
        ret = tg_errf(err, errlen, TG_LEDGER_ENOMEM, "ledger %s: cannot create a lock", path);
        goto fail;
    }
    lock_ok = 1;
    if ((l->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL) {
        ret = tg_errf(err, errlen, TG_LEDGER_ENOMEM, "ledger %s: OpenSSL has no SHA-256", path);
        goto fail;
    }
    if ((rc = mdb_env_create(&l->env)) != 0 || (rc = mdb_env_set_maxdbs(l->env, 16)) != 0 ||
        (rc = mdb_env_set_maxreaders(l->env, o.lo_max_readers)) != 0 ||
        (rc = mdb_env_set_mapsize(l->env, o.lo_map_size)) != 0) {
        ret = tgl_lmdb_err(l, rc, "create the environment", err, errlen);
        goto fail;
    }
    /* NOSUBDIR: the ledger is one file (plus path-lock). NOTLS: read
     * transactions are not tied to threads. Without NOSYNC every commit is
     * fdatasync'd (data pages, then the meta page) before it returns. */
    unsigned flags = MDB_NOSUBDIR | MDB_NOTLS | (o.lo_nosync ? MDB_NOSYNC : 0);
    rc = mdb_env_open(l->env, path, flags, 0644);
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) {
        ret = tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                      "ledger %s: not an LMDB file, or its header is damaged (%s)", path,
                      mdb_strerror(rc));
        goto fail;
    }
    if (rc) {
        ret = tgl_lmdb_err(l, rc, "open", err, errlen);
        goto fail;
    }
    if ((ret = check_length(l, err, errlen)) != 0)
        goto fail;
    /* Free reader slots left by processes that died mid-read: they would
     * pin old pages (the file grows) and use up lo_max_readers. */
    int dead = 0;
    mdb_reader_check(l->env, &dead);
    if ((rc = mdb_txn_begin(l->env, NULL, 0, &txn)) != 0) {
        ret = tgl_lmdb_err(l, rc, "begin the open transaction", err, errlen);
        goto fail;
    }
    if ((ret = open_dbs(l, txn, o.lo_bucket_shift ? o.lo_bucket_shift : TGL_BSHIFT_DEFAULT, err,
                        errlen)) != 0)
        goto fail;
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc) {
        ret = tgl_lmdb_err(l, rc, "commit the open transaction", err, errlen);
        goto fail;
    }
    *out = l;
    return 0;
fail:
    if (txn)
        mdb_txn_abort(txn);
    if (l) {
        if (l->env)
            mdb_env_close(l->env);
        if (lock_ok)
            pthread_rwlock_destroy(&l->maplock);
        EVP_MD_free(l->sha256);
        tg_free(l->path);
        tg_free(l);
    }
    return ret;
}

void tg_ledger_close(tg_ledger_t *l)
{
    if (!l)
        return;
    mdb_env_close(l->env);
    pthread_rwlock_destroy(&l->maplock);
    EVP_MD_free(l->sha256);
    tg_free(l->path);
    tg_free(l);
}

/* ---- append ------------------------------------------------------------- */

struct append_ctx {
    const tg_ledger_row_t *rows;
    size_t n;
    tg_ledger_result_t *res;
    size_t appended;
    EVP_MD_CTX *md;
    unsigned char *scratch; /* encoding of a row whose id is already stored */
    size_t scratch_cap;
    struct posting *post; /* TGL_IX_N partitions of n entries, one per index */
    size_t npost[TGL_IX_N];
    struct slot *tab; /* grouping table, tabn slots */
    size_t tabn;
    /* tg_ledger_append_copy: row i must become seq copy_first + i with
     * chain hash copy_hashes[i]; NULL for a plain append */
    const unsigned char (*copy_hashes)[32];
    uint64_t copy_first;
    size_t (*lens)[TGL_NSTR]; /* per row: its string lengths (tgl_row_check) */
};

/* One index entry to write: row seq has this value (in the index whose
 * partition of the postings array holds it). Chained per value. */
struct posting {
    const char *value;
    uint64_t seq;
    uint32_t next; /* next posting with the same value, UINT32_MAX at the end */
};

/* A value's chain in the grouping hash table. */
struct slot {
    const char *value; /* NULL: free */
    uint32_t head, tail;
};

static uint32_t str_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    while (*s)
        h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

/* Writes one index's postings (in seq order), grouped by value and bucket
 * into lists of up to TGL_LIST_MAX seqs: one put per group instead of one
 * per row. Grouping hashes rather than sorts (a sort cost more than the
 * puts it saved). tab has tabn (a power of two > n) slots. */
static int put_postings(tg_ledger_t *l, MDB_txn *txn, int ix, struct posting *p, size_t n,
                        struct slot *tab, size_t tabn)
{
    unsigned char key[TGL_IXKEY_MAX], list[TGL_LIST_MAX * 8];
    memset(tab, 0, tabn * sizeof(*tab));
    for (size_t i = 0; i < n; i++) {
        size_t h = str_hash(p[i].value) & (tabn - 1);
        while (tab[h].value && strcmp(tab[h].value, p[i].value) != 0)
            h = (h + 1) & (tabn - 1);
        p[i].next = UINT32_MAX;
        if (!tab[h].value) {
            tab[h].value = p[i].value;
            tab[h].head = (uint32_t)i;
        } else {
            p[tab[h].tail].next = (uint32_t)i;
        }
        tab[h].tail = (uint32_t)i;
    }
    for (size_t h = 0; h < tabn; h++) {
        uint32_t i = tab[h].value ? tab[h].head : UINT32_MAX;
        while (i != UINT32_MAX) {
            uint32_t b = (uint32_t)(p[i].seq >> l->bshift), first = i;
            size_t cnt = 0;
            while (i != UINT32_MAX && cnt < TGL_LIST_MAX && (p[i].seq >> l->bshift) == b) {
                tgl_put_u64(list + 8 * cnt++, p[i].seq);
                i = p[i].next;
            }
            MDB_val k = {tgl_ix_key(key, b, p[first].value, p[first].seq), key},
                    v = {8 * cnt, list};
            int rc = mdb_put(txn, l->ix[ix], &k, &v, 0);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Widens bucket b's settled-time range to include [lo, hi]. */
static int widen_bucket(tg_ledger_t *l, MDB_txn *txn, uint32_t b, int64_t lo, int64_t hi)
{
    unsigned char bk[4] = {(unsigned char)(b >> 24), (unsigned char)(b >> 16),
                           (unsigned char)(b >> 8), (unsigned char)b};
    unsigned char bv[16];
    MDB_val k = {4, bk}, v;
    int rc = mdb_get(txn, l->buckets, &k, &v);
    if (rc == 0 && v.mv_size == 16) {
        int64_t olo = tgl_get_time(v.mv_data), ohi = tgl_get_time((unsigned char *)v.mv_data + 8);
        if (olo <= lo && ohi >= hi)
            return 0;
        lo = olo < lo ? olo : lo;
        hi = ohi > hi ? ohi : hi;
    } else if (rc != 0 && rc != MDB_NOTFOUND) {
        return rc;
    }
    tgl_put_time(bv, lo);
    tgl_put_time(bv + 8, hi);
    v.mv_size = 16;
    v.mv_data = bv;
    return mdb_put(txn, l->buckets, &k, &v, 0);
}

/* A stored row with the same id: duplicate when its bytes are identical. */
static int classify_existing(tg_ledger_t *l, MDB_txn *txn, struct append_ctx *a,
                             const tg_ledger_row_t *r, uint64_t seq, tg_ledger_row_status_t *st,
                             char *err, size_t errlen)
{
    unsigned char sk[8];
    tgl_put_u64(sk, seq);
    MDB_val k = {8, sk}, v;
    int rc = mdb_get(txn, l->rows, &k, &v);
    if (rc == MDB_NOTFOUND)
        return tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                       "ledger %s: record %s points at row %llu, which is missing", l->path,
                       r->lr_record_id, (unsigned long long)seq);
    if (rc)
        return rc;
    size_t lens[TGL_NSTR], sz = tgl_row_size(r, lens);
    if (sz > a->scratch_cap) {
        unsigned char *p = tg_realloc(a->scratch, sz);
        if (!p)
            return tg_errf(err, errlen, TG_LEDGER_ENOMEM, "ledger %s: out of memory", l->path);
        a->scratch = p;
        a->scratch_cap = sz;
    }
    tgl_row_encode(r, lens, a->scratch);
    *st = (v.mv_size == TGL_HASH + sz &&
           memcmp((unsigned char *)v.mv_data + TGL_HASH, a->scratch, sz) == 0)
              ? TG_LEDGER_ROW_DUPLICATE
              : TG_LEDGER_ROW_CONFLICT;
    return 0;
}

static int append_body(tg_ledger_t *l, MDB_txn *txn, void *ctx, char *err, size_t errlen)
{
    struct append_ctx *a = ctx;
    uint64_t seq;
    unsigned char prev[TGL_HASH];
    int64_t horizon;
    int rc;

    uint32_t cur_b = 0;
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    a->appended = 0;
    memset(a->npost, 0, sizeof(a->npost));
    if ((rc = tgl_meta_pos(txn, l->meta, "head", &seq, prev)) != 0 ||
        (rc = get_horizon(txn, l->meta, &horizon)) != 0)
        return rc;
    for (size_t i = 0; i < a->n; i++) {
        const tg_ledger_row_t *r = &a->rows[i];
        tg_ledger_result_t out = {TG_LEDGER_ROW_NEW, 0};
        MDB_val idk = {a->lens[i][0], (void *)r->lr_record_id}, idv;
        unsigned char sk[8];

        /* The id insert doubles as the dedup lookup (one B-tree descent):
         * MDB_NOOVERWRITE hands back the stored seq when the id exists. A
         * row older than the horizon is only looked up, never inserted. */
        tgl_put_u64(sk, seq + 1);
        idv.mv_size = 8;
        idv.mv_data = sk;
        if (r->lr_settled_us < horizon)
            rc = mdb_get(txn, l->ids, &idk, &idv);
        else
            rc = mdb_put(txn, l->ids, &idk, &idv, MDB_NOOVERWRITE);
        if (a->copy_hashes && r->lr_settled_us < horizon)
            return tg_errf(err, errlen, TG_LEDGER_ETAMPER,
                           "ledger %s: copied row %llu (record %s) was settled before this ledger's retention "
                           "horizon (rows that old were deleted here): refused",
                           l->path, (unsigned long long)(a->copy_first + i), r->lr_record_id);
        if (a->copy_hashes && (rc == MDB_KEYEXIST ||
                               (rc == 0 && seq + 1 != a->copy_first + i)))
            return tg_errf(err, errlen, TG_LEDGER_ETAMPER,
                           "ledger %s: copied row %llu (record %s) does not continue this ledger (head %llu%s)",
                           l->path, (unsigned long long)(a->copy_first + i), r->lr_record_id,
                           (unsigned long long)seq, rc == MDB_KEYEXIST ? ", record already stored" : "");
        if (rc == MDB_KEYEXIST || (rc == 0 && r->lr_settled_us < horizon)) {
            if (idv.mv_size != 8)
                return MDB_CORRUPTED;
            out.ar_seq = tgl_get_u64(idv.mv_data);
            if ((rc = classify_existing(l, txn, a, r, out.ar_seq, &out.ar_status, err, errlen)))
                return rc;
        } else if (rc == MDB_NOTFOUND) {
            out.ar_status = TG_LEDGER_ROW_EXPIRED;
        } else if (rc != 0) {
            return rc;
        } else {
            /* Reserve the value in place and encode straight into the map. */
            const size_t *lens = a->lens[i];
            size_t sz = tgl_row_size_lens(r, lens);
            unsigned char *p;
            MDB_val k = {8, sk}, v = {TGL_HASH + sz, NULL};
            seq++;
            if ((rc = mdb_put(txn, l->rows, &k, &v, MDB_RESERVE | MDB_APPEND)) != 0)
                return rc;
            p = v.mv_data;
            tgl_row_encode(r, lens, p + TGL_HASH);
            if (tgl_chain_hash(a->md, l->sha256, prev, seq, p + TGL_HASH, sz, p) != 0)
                return tg_errf(err, errlen, TG_LEDGER_ENOMEM, "ledger %s: SHA-256 failed",
                               l->path);
            if (a->copy_hashes && memcmp(p, a->copy_hashes[i], TGL_HASH) != 0)
                return tg_errf(err, errlen, TG_LEDGER_ETAMPER,
                               "ledger %s: copied row %llu (record %s): its chain hash differs from the one "
                               "computed here (the copy was altered, or the chains diverged)",
                               l->path, (unsigned long long)seq, r->lr_record_id);
            memcpy(prev, p, TGL_HASH);
            for (int ix = 0; ix < TGL_IX_N; ix++) {
                const char *fv = tgl_row_field(r, ix);
                if (*fv)
                    a->post[(size_t)ix * a->n + a->npost[ix]++] =
                        (struct posting){fv, seq, UINT32_MAX};
            }
            out.ar_seq = seq;
            a->appended++;
            /* Bucket time ranges: one put per bucket the batch touches. */
            uint32_t b = (uint32_t)(seq >> l->bshift);
            if (lo <= hi && b != cur_b && (rc = widen_bucket(l, txn, cur_b, lo, hi)) != 0)
                return rc;
            if (lo > hi || b != cur_b) {
                cur_b = b;
                lo = INT64_MAX;
                hi = INT64_MIN;
            }
            lo = r->lr_settled_us < lo ? r->lr_settled_us : lo;
            hi = r->lr_settled_us > hi ? r->lr_settled_us : hi;
        }
        if (a->res)
            a->res[i] = out;
    }
    if (lo <= hi && (rc = widen_bucket(l, txn, cur_b, lo, hi)) != 0)
        return rc;
    for (int ix = 0; ix < TGL_IX_N; ix++)
        if ((rc = put_postings(l, txn, ix, a->post + (size_t)ix * a->n, a->npost[ix], a->tab,
                               a->tabn)) != 0)
            return rc;
    if (a->appended && (rc = put_pos(txn, l->meta, "head", seq, prev)) != 0)
        return rc;
    return 0;
}

static int append_rows(tg_ledger_t *l, const tg_ledger_row_t *rows, size_t n, tg_ledger_result_t *res,
                       size_t *appended, const unsigned char (*hashes)[32], uint64_t first, char *err,
                       size_t errlen)
{
    struct append_ctx a = {.rows = rows, .n = n, .res = res, .copy_hashes = hashes, .copy_first = first};
    int ret;
    if (appended)
        *appended = 0;
    if (!l || !rows || n == 0)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger: append needs a ledger and rows");
    if (n > UINT32_MAX / 4)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger %s: batch of %zu rows is too large",
                       l->path, n);
    /* each row's string lengths, measured once here for the check, the id
     * key and the encoding (strlen was ~5% of settlement's CPU when each
     * of the three measured them again) */
    if ((a.lens = tg_malloc(n * sizeof(*a.lens))) == NULL)
        return tg_errf(err, errlen, TG_LEDGER_ENOMEM, "ledger %s: out of memory", l->path);
    for (size_t i = 0; i < n; i++)
        if ((ret = tgl_row_check(&rows[i], i, a.lens[i], err, errlen)) != 0) {
            tg_free(a.lens);
            return ret;
        }
    for (a.tabn = 16; a.tabn <= n; a.tabn *= 2)
        ;
    a.tabn *= 2; /* load factor <= 1/2 */
    if ((a.md = EVP_MD_CTX_new()) == NULL ||
        (a.post = tg_malloc(n * TGL_IX_N * sizeof(struct posting))) == NULL ||
        (a.tab = tg_malloc(a.tabn * sizeof(struct slot))) == NULL) {
        ret = tg_errf(err, errlen, TG_LEDGER_ENOMEM, "ledger %s: out of memory", l->path);
        goto out;
    }
    ret = run_write(l, append_body, &a, "append", err, errlen);
    if (ret == 0 && appended)
        *appended = a.appended;
out:
    EVP_MD_CTX_free(a.md);
    tg_free(a.post);
    tg_free(a.tab);
    tg_free(a.scratch);
    tg_free(a.lens);
    return ret;
}

int tg_ledger_append(tg_ledger_t *l, const tg_ledger_row_t *rows, size_t n, tg_ledger_result_t *res,
                     size_t *appended, char *err, size_t errlen)
{
    return append_rows(l, rows, n, res, appended, NULL, 0, err, errlen);
}

int tg_ledger_append_copy(tg_ledger_t *l, const tg_ledger_row_t *rows, size_t n, uint64_t first_seq,
                          const unsigned char (*hashes)[32], char *err, size_t errlen)
{
    if (!hashes)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger: a copy needs its rows' hashes");
    return append_rows(l, rows, n, NULL, NULL, hashes, first_seq, err, errlen);
}

/* ---- retention ---------------------------------------------------------- */

struct retain_ctx {
    int64_t before;
    size_t chunk;
    uint64_t deleted;
    int done;
    unsigned char *copy;
    size_t copy_cap;
};

/* Drops index entries of the deleted rows [first, cutoff): every list in
 * an older bucket goes; lists in cutoff's bucket lose their seqs below
 * cutoff (retention deletes a seq prefix, so nothing else is affected). */
static int trim_index(tg_ledger_t *l, MDB_txn *txn, int ix, uint64_t first, uint64_t cutoff)
{
    MDB_cursor *cur;
    unsigned char bk[4], list[TGL_LIST_MAX * 8];
    uint32_t b0 = (uint32_t)(first >> l->bshift), cb = (uint32_t)(cutoff >> l->bshift);
    int rc = mdb_cursor_open(txn, l->ix[ix], &cur);
    if (rc)
        return rc;
    bk[0] = (unsigned char)(b0 >> 24);
    bk[1] = (unsigned char)(b0 >> 16);
    bk[2] = (unsigned char)(b0 >> 8);
    bk[3] = (unsigned char)b0;
    MDB_val k = {4, bk}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0) {
        const unsigned char *kb = k.mv_data;
        uint32_t b = (uint32_t)kb[0] << 24 | (uint32_t)kb[1] << 16 | (uint32_t)kb[2] << 8 | kb[3];
        size_t n = v.mv_size / 8, keep = 0;
        if (b > cb || k.mv_size < 13 || v.mv_size % 8 || n > TGL_LIST_MAX)
            break;
        if (b == cb) {
            for (size_t i = 0; i < n; i++) {
                uint64_t s = tgl_get_u64((unsigned char *)v.mv_data + 8 * i);
                if (s >= cutoff)
                    memcpy(list + 8 * keep++, (unsigned char *)v.mv_data + 8 * i, 8);
            }
        }
        if (keep == 0) {
            rc = mdb_cursor_del(cur, 0);
        } else if (keep < n) {
            /* The key lives in the page the put rewrites: pass a copy. */
            unsigned char kc[TGL_IXKEY_MAX];
            if (k.mv_size > sizeof(kc)) {
                rc = MDB_CORRUPTED;
                break;
            }
            memcpy(kc, k.mv_data, k.mv_size);
            MDB_val kk = {k.mv_size, kc}, nv = {8 * keep, list};
            rc = mdb_cursor_put(cur, &kk, &nv, MDB_CURRENT);
        }
        if (rc == 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int retain_body(tg_ledger_t *l, MDB_txn *txn, void *ctx, char *err, size_t errlen)
{
    struct retain_ctx *c = ctx;
    MDB_cursor *cur = NULL;
    uint64_t aseq, first = 0;
    int64_t newest = INT64_MIN; /* newest settled time deleted in this chunk */
    unsigned char ahash[TGL_HASH];
    int64_t horizon;
    int rc;

    c->deleted = 0;
    c->done = 0;
    if ((rc = tgl_meta_pos(txn, l->meta, "anchor", &aseq, ahash)) != 0 ||
        (rc = get_horizon(txn, l->meta, &horizon)) != 0 ||
        (rc = mdb_cursor_open(txn, l->rows, &cur)) != 0)
        goto out;
    while (c->deleted < c->chunk) {
        MDB_val k, v;
        tg_ledger_row_t r;
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        if (rc == MDB_NOTFOUND) {
            c->done = 1;
            rc = 0;
            break;
        }
        if (rc)
            goto out;
        /* Work on a copy: the deletes below may move the pages it lives in. */
        if (v.mv_size > c->copy_cap) {
            unsigned char *p = tg_realloc(c->copy, v.mv_size);
            if (!p) {
                rc = tg_errf(err, errlen, TG_LEDGER_ENOMEM, "ledger %s: out of memory", l->path);
                goto out;
            }
            c->copy = p;
            c->copy_cap = v.mv_size;
        }
        memcpy(c->copy, v.mv_data, v.mv_size);
        uint64_t seq = k.mv_size == 8 ? tgl_get_u64(k.mv_data) : 0;
        if (tgl_row_decode(c->copy, v.mv_size, seq, &r) != 0) {
            rc = tg_errf(err, errlen, TG_LEDGER_ECORRUPT,
                         "ledger %s: row %llu cannot be decoded; retention stopped", l->path,
                         (unsigned long long)seq);
            goto out;
        }
        if (r.lr_settled_us >= c->before) {
            c->done = 1;
            break;
        }
        uint32_t b = (uint32_t)(seq >> l->bshift);
        MDB_val idk = {strlen(r.lr_record_id), (void *)r.lr_record_id};
        rc = mdb_del(txn, l->ids, &idk, NULL);
        /* The bucket's entry goes with its last row. */
        if ((rc == 0 || rc == MDB_NOTFOUND) && ((seq + 1) >> l->bshift) != b) {
            unsigned char bk[4] = {(unsigned char)(b >> 24), (unsigned char)(b >> 16),
                                   (unsigned char)(b >> 8), (unsigned char)b};
            MDB_val k4 = {4, bk};
            rc = mdb_del(txn, l->buckets, &k4, NULL);
        }
        if ((rc != 0 && rc != MDB_NOTFOUND) || (rc = mdb_cursor_del(cur, 0)) != 0)
            goto out;
        if (c->deleted == 0)
            first = seq;
        if (r.lr_settled_us > newest)
            newest = r.lr_settled_us;
        aseq = seq;
        memcpy(ahash, r.lr_hash, TGL_HASH);
        c->deleted++;
    }
    if (c->deleted && (rc = put_pos(txn, l->meta, "anchor", aseq, ahash)) != 0)
        goto out;
    for (int ix = 0; c->deleted && ix < TGL_IX_N; ix++)
        if ((rc = trim_index(l, txn, ix, first, aseq + 1)) != 0)
            goto out;
    /* Only a row settled no later than the newest deleted one can have lost
     * its id; the horizon stops there (not at before_us, which may be far
     * in the future and would refuse every new row). */
    int64_t h = newest == INT64_MAX ? INT64_MAX : newest + 1;
    if (c->deleted && h > horizon) {
        unsigned char hb[8];
        tgl_put_time(hb, h);
        MDB_val hk = {7, "horizon"}, hv = {8, hb};
        rc = mdb_put(txn, l->meta, &hk, &hv, 0);
    }
out:
    if (cur)
        mdb_cursor_close(cur);
    return rc;
}

int tg_ledger_retain(tg_ledger_t *l, int64_t before_us, size_t chunk_rows, uint64_t *deleted,
                     char *err, size_t errlen)
{
    struct retain_ctx c = {before_us, chunk_rows ? chunk_rows : 1000, 0, 0, NULL, 0};
    uint64_t total = 0;
    int ret = 0;
    if (deleted)
        *deleted = 0;
    if (!l)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger: retain needs a ledger");
    /* One short write transaction per chunk: appends interleave. */
    do {
        if ((ret = run_write(l, retain_body, &c, "retention", err, errlen)) != 0)
            break;
        total += c.deleted;
    } while (!c.done);
    tg_free(c.copy);
    if (deleted)
        *deleted = total;
    return ret;
}

/* ---- head, verify, stat ------------------------------------------------- */

int tg_ledger_head(tg_ledger_t *l, uint64_t *seq, unsigned char hash[32], char *err, size_t errlen)
{
    MDB_txn *txn;
    int ret = tgl_read_begin(l, &txn, err, errlen);
    if (ret)
        return ret;
    int rc = tgl_meta_pos(txn, l->meta, "head", seq, hash);
    if (rc)
        ret = tgl_lmdb_err(l, rc, "read the head", err, errlen);
    tgl_read_end(l, txn);
    return ret;
}

static int tamper(tg_ledger_t *l, uint64_t seq, uint64_t *bad, const char *id, const char *why,
                  char *err, size_t errlen)
{
    if (bad)
        *bad = seq;
    return tg_errf(err, errlen, TG_LEDGER_ETAMPER, "ledger %s: hash chain broken at row %llu%s%s%s: %s",
                   l->path, (unsigned long long)seq, id ? " (record " : "", id ? id : "",
                   id ? ")" : "", why);
}

/* Bounds of the stored rows: first and last seq (0, 0 when empty). */
static int row_bounds(MDB_txn *txn, MDB_dbi rows, uint64_t *first, uint64_t *last)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, rows, &cur);
    *first = *last = 0;
    if (rc)
        return rc;
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    if (rc == 0 && k.mv_size == 8)
        *first = tgl_get_u64(k.mv_data);
    if (rc == 0)
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    if (rc == 0 && k.mv_size == 8)
        *last = tgl_get_u64(k.mv_data);
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Checks rows [from, to] starting from hash prev; on return prev is the
 * hash of row `to`. One read transaction; the caller chunks. */
static int verify_span(tg_ledger_t *l, MDB_txn *txn, EVP_MD_CTX *md, uint64_t from, uint64_t to,
                       unsigned char prev[TGL_HASH], uint64_t *bad, char *err, size_t errlen)
{
    MDB_cursor *cur;
    unsigned char sk[8];
    MDB_val k = {8, sk}, v;
    int rc = mdb_cursor_open(txn, l->rows, &cur), ret = 0;
    if (rc)
        return tgl_lmdb_err(l, rc, "verify", err, errlen);
    tgl_put_u64(sk, from);
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (uint64_t seq = from; seq <= to; seq++) {
        tg_ledger_row_t r;
        unsigned char h[TGL_HASH];
        if (rc == MDB_NOTFOUND || (rc == 0 && (k.mv_size != 8 || tgl_get_u64(k.mv_data) != seq))) {
            ret = tamper(l, seq, bad, NULL, "the row is missing", err, errlen);
            goto out;
        }
        if (rc) {
            ret = tgl_lmdb_err(l, rc, "verify", err, errlen);
            goto out;
        }
        if (tgl_row_decode(v.mv_data, v.mv_size, seq, &r) != 0) {
            ret = tamper(l, seq, bad, NULL, "the row cannot be decoded", err, errlen);
            goto out;
        }
        if (tgl_chain_hash(md, l->sha256, prev, seq, (unsigned char *)v.mv_data + TGL_HASH,
                           v.mv_size - TGL_HASH, h) != 0) {
            ret = tg_errf(err, errlen, TG_LEDGER_ENOMEM, "ledger %s: SHA-256 failed", l->path);
            goto out;
        }
        if (memcmp(h, r.lr_hash, TGL_HASH) != 0) {
            ret = tamper(l, seq, bad, r.lr_record_id,
                         "its stored hash does not match its contents and the previous row", err,
                         errlen);
            goto out;
        }
        memcpy(prev, h, TGL_HASH);
        if (seq < to)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
out:
    mdb_cursor_close(cur);
    return ret;
}

int tg_ledger_verify(tg_ledger_t *l, uint64_t from_seq, uint64_t to_seq, uint64_t *bad_seq,
                     char *err, size_t errlen)
{
    MDB_txn *txn = NULL;
    EVP_MD_CTX *md = NULL;
    uint64_t first, last, hseq, aseq;
    unsigned char hhash[TGL_HASH], ahash[TGL_HASH], prev[TGL_HASH];
    int ret, rc;

    if (bad_seq)
        *bad_seq = 0;
    if (!l)
        return tg_errf(err, errlen, TG_LEDGER_EINVAL, "ledger: verify needs a ledger");
    if ((md = EVP_MD_CTX_new()) == NULL)
        return tg_errf(err, errlen, TG_LEDGER_ENOMEM, "ledger %s: out of memory", l->path);
    if ((ret = tgl_read_begin(l, &txn, err, errlen)) != 0)
        goto fail;
    if ((rc = row_bounds(txn, l->rows, &first, &last)) != 0 ||
        (rc = tgl_meta_pos(txn, l->meta, "head", &hseq, hhash)) != 0 ||
        (rc = tgl_meta_pos(txn, l->meta, "anchor", &aseq, ahash)) != 0) {
        ret = tgl_lmdb_err(l, rc, "verify", err, errlen);
        goto fail;
    }
    if (last != hseq && !(first == 0 && hseq == aseq)) {
        ret = tamper(l, last > hseq ? hseq + 1 : last + 1, bad_seq, NULL,
                     last > hseq ? "rows exist past the head record"
                                 : "rows up to the head record are missing",
                     err, errlen);
        goto fail;
    }
    if (first == 0) { /* no rows: the head must be the anchor (or nothing) */
        if (hseq != aseq || memcmp(hhash, ahash, TGL_HASH) != 0)
            ret = tamper(l, hseq, bad_seq, NULL, "the head does not match the retention anchor",
                         err, errlen);
        goto fail;
    }
    uint64_t from = from_seq ? from_seq : first, to = to_seq ? to_seq : last;
    if (from < first || to > last || from > to) {
        ret = tg_errf(err, errlen, TG_LEDGER_EINVAL,
                      "ledger %s: verify range %llu..%llu is outside the stored rows %llu..%llu",
                      l->path, (unsigned long long)from, (unsigned long long)to,
                      (unsigned long long)first, (unsigned long long)last);
        goto fail;
    }
    if (from == first) {
        if (aseq == first - 1) {
            memcpy(prev, ahash, TGL_HASH); /* all zero when first == 1 and nothing was deleted */
        } else {
            ret = tamper(l, first, bad_seq, NULL,
                         "earlier rows are gone and no retention anchor links to this one", err,
                         errlen);
            goto fail;
        }
    } else {
        unsigned char sk[8];
        MDB_val k = {8, sk}, v;
        tgl_put_u64(sk, from - 1);
        rc = mdb_get(txn, l->rows, &k, &v);
        if (rc || v.mv_size < TGL_HASH) {
            ret = tamper(l, from - 1, bad_seq, NULL, "the row is missing", err, errlen);
            goto fail;
        }
        memcpy(prev, v.mv_data, TGL_HASH);
    }
    /* Chunked so a long verify does not pin old pages for its whole run. */
    for (uint64_t s = from; s <= to;) {
        uint64_t e = to - s >= VERIFY_CHUNK ? s + VERIFY_CHUNK - 1 : to;
        if ((ret = verify_span(l, txn, md, s, e, prev, bad_seq, err, errlen)) != 0)
            goto fail;
        s = e + 1;
        if (s <= to) {
            tgl_read_end(l, txn);
            txn = NULL;
            if ((ret = tgl_read_begin(l, &txn, err, errlen)) != 0)
                goto fail;
        }
    }
    if (to == last && to == hseq && memcmp(prev, hhash, TGL_HASH) != 0)
        ret = tamper(l, to, bad_seq, NULL, "the head record's hash does not match the last row",
                     err, errlen);
fail:
    if (txn)
        tgl_read_end(l, txn);
    EVP_MD_CTX_free(md);
    return ret;
}

int tg_ledger_stat(tg_ledger_t *l, tg_ledger_stat_t *st, char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_stat ms;
    MDB_envinfo info;
    unsigned char h[TGL_HASH];
    uint64_t last;
    memset(st, 0, sizeof(*st));
    int ret = tgl_read_begin(l, &txn, err, errlen), rc;
    if (ret)
        return ret;
    if ((rc = mdb_stat(txn, l->rows, &ms)) != 0 ||
        (rc = row_bounds(txn, l->rows, &st->ls_first_seq, &last)) != 0 ||
        (rc = tgl_meta_pos(txn, l->meta, "head", &st->ls_head_seq, h)) != 0 ||
        (rc = get_horizon(txn, l->meta, &st->ls_horizon_us)) != 0) {
        ret = tgl_lmdb_err(l, rc, "stat", err, errlen);
    } else {
        st->ls_rows = ms.ms_entries;
        mdb_env_info(l->env, &info);
        st->ls_map_size = info.me_mapsize;
        st->ls_map_used = (info.me_last_pgno + 1) * (size_t)ms.ms_psize;
    }
    tgl_read_end(l, txn);
    return ret;
}
