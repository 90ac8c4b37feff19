/* backup.c: `tollgate-cp backup` and `tollgate-cp restore`.
 *
 * backup --to DIR copies a replica's data dir while it serves: the ledger
 * and the embedded store are copied with LMDB's own hot copy
 * (mdb_env_copy2 with MDB_CP_COMPACT: one read transaction, so a
 * consistent snapshot of each file, free pages left out), opened read-only
 * beside the running tollgate-cp (LMDB's lock file coordinates the two
 * processes; the store's flock is the daemon's and is not taken). The order
 * makes the two copies agree: settled.rev first, then the ledger, then the
 * store, so the store copy is never older than the ledger copy. A batch
 * settled between the two copies is in the store's settled log (kept for
 * --settled-retention-s) and the restored replica's tailer appends it, as
 * after a crash. The signing key is copied too, and a MANIFEST names the
 * ledger's head (seq and chain hash) after the copy was verified.
 *
 * On etcd the store is the cluster's, not this replica's: backup copies the
 * ledger and the key, and the store is backed up with `etcdctl snapshot
 * save` (docs/OPERATIONS.md, "Backup and restore").
 *
 * The backup directory is made 0700 (it holds the signing key, and the
 * store holds the peer secret), fsync'd with its store/ when complete, and
 * removed again when the backup fails.
 *
 * restore --from DIR --data-dir D refuses a data dir that holds any file it
 * would write (ledger, settled.rev, signing key) or a store, copies the
 * backup into D/.restore, verifies the whole hash chain and the MANIFEST's
 * head, checks that the store opens, and only then moves the files into
 * place (link + unlink: never over a file): the store first and the ledger
 * last, so a ledger in D means the restore finished, then fsyncs the
 * directories. A corrupt backup leaves D as it was; a failure while moving
 * names what was already moved.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controlplane/cp.h"
#include "crypto/tg_crypto.h"

#define MANIFEST "MANIFEST"
#define KEY_FILE "cp-signing-key.pem"

/* ---- small file helpers ------------------------------------------------------------ */

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Copies src to dst (mode kept, fsync'd). A missing src is 1 (nothing
 * copied), 0 on success, -1 with err set. */
static int copy_file(const char *src, const char *dst, char *err, size_t errlen)
{
    char buf[65536];
    struct stat st;
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, rc = -1;
    if (in < 0)
        return errno == ENOENT ? 1 : tg_errf(err, errlen, -1, "cannot read %s: %s", src, strerror(errno));
    if (fstat(in, &st) != 0 ||
        (out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 0777)) < 0) {
        tg_errf(err, errlen, -1, "cannot write %s: %s", dst, strerror(errno));
        goto done;
    }
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n == 0)
            break;
        if (n < 0 || write(out, buf, (size_t)n) != n) {
            tg_errf(err, errlen, -1, "copying %s to %s: %s", src, dst, strerror(errno));
            goto done;
        }
    }
    if (fsync(out) != 0) {
        tg_errf(err, errlen, -1, "fsync %s: %s", dst, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    if (out >= 0)
        close(out);
    close(in);
    return rc;
}

/* fsyncs a directory, so the names just created or moved in it survive a
 * crash. 0, or -1 with err set. */
static int fsync_dir(const char *dir, char *err, size_t errlen)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;
    if (fd < 0 || fsync(fd) != 0)
        rc = tg_errf(err, errlen, -1, "fsync %s: %s", dir, strerror(errno));
    if (fd >= 0)
        close(fd);
    return rc;
}

/* out (PATH_MAX bytes) = a/b. The callers' directories were checked to be
 * well under PATH_MAX (path_ok), so this never cuts; "" if it would. */
static void pj(char *out, const char *a, const char *b)
{
    if (snprintf(out, PATH_MAX, "%s/%s", a, b) >= PATH_MAX)
        out[0] = '\0';
}

/* Whether a directory flag leaves room for the names joined to it. */
static int path_ok(const char *dir)
{
    return strlen(dir) < PATH_MAX - 64;
}

/* Whether dir is absent or empty. */
static int empty_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int empty = 1;
    if (d == NULL)
        return errno == ENOENT;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            empty = 0;
    closedir(d);
    return empty;
}

/* ---- hot copy ------------------------------------------------------------------------ */

/* Copies the LMDB environment at src (a file when nosubdir, else a
 * directory) to dst, compacted, from one read transaction of its own. */
static int lmdb_copy(const char *src, const char *dst, int nosubdir, char *err, size_t errlen)
{
    MDB_env *env = NULL;
    int rc = mdb_env_create(&env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(env, 32);
    if (rc == 0)
        rc = mdb_env_set_maxreaders(env, 512);
    if (rc == 0)
        rc = mdb_env_open(env, src, MDB_RDONLY | MDB_NOTLS | (nosubdir ? MDB_NOSUBDIR : 0), 0644);
    if (rc != 0) {
        tg_errf(err, errlen, -1, "cannot open %s: %s", src, mdb_strerror(rc));
        goto done;
    }
    /* the daemon may grow its map meanwhile: adopt the new size and retry */
    for (int i = 0; i < 5; i++) {
        rc = mdb_env_copy2(env, dst, MDB_CP_COMPACT);
        if (rc != MDB_MAP_RESIZED)
            break;
        mdb_env_set_mapsize(env, 0);
    }
    if (rc != 0)
        tg_errf(err, errlen, -1, "copying %s to %s: %s", src, dst, mdb_strerror(rc));
done:
    if (env)
        mdb_env_close(env);
    return rc == 0 ? 0 : -1;
}

/* Verifies the ledger file at path end to end; fills its head. */
static int ledger_check(const char *path, uint64_t *rows, uint64_t *seq, unsigned char hash[32], char *err,
                        size_t errlen)
{
    tg_ledger_t *l = NULL;
    tg_ledger_stat_t st;
    char inner[TG_ERRLEN] = "";
    int rc = tg_ledger_open(path, NULL, &l, inner, sizeof(inner));
    if (rc == 0)
        rc = tg_ledger_stat(l, &st, inner, sizeof(inner));
    if (rc == 0 && st.ls_rows > 0)
        rc = tg_ledger_verify(l, 0, 0, NULL, inner, sizeof(inner));
    if (rc == 0)
        rc = tg_ledger_head(l, seq, hash, inner, sizeof(inner));
    if (rc == 0)
        *rows = st.ls_rows;
    tg_ledger_close(l);
    if (rc != 0)
        return tg_errf(err, errlen, rc, "%s", inner);
    return 0;
}

/* The batch seq a settled.rev file names (its second number), 0 if it
 * names none (absent, or from before the seq was recorded). */
static uint64_t rev_file_seq(const char *path)
{
    char buf[64] = {0}, *end;
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    strtoll(buf, &end, 10);
    while (*end == ' ')
        end++;
    return *end >= '0' && *end <= '9' ? strtoull(end, NULL, 10) : 0;
}

/* A number stored as decimal text (TG_CP_K_SETTLED_SEQ, or the tail of a
 * TG_CP_K_SETTLED key). */
static uint64_t text_u64(const void *p, size_t n)
{
    char buf[24] = {0};
    if (n >= sizeof(buf))
        return 0;
    memcpy(buf, p, n);
    return strtoull(buf, NULL, 10);
}

/* Whether the embedded store copied at dir still holds every settled batch
 * after seq (what settled.rev, copied before the ledger, says the ledger
 * copy has): with a short --settled-retention-s, retention can delete a
 * batch settled between the ledger copy and the store copy, whose balance
 * movement the store copy has and no ledger row would record. 0, or -1
 * with err set. */
static int settled_covered(const char *dir, uint64_t seq, char *err, size_t errlen)
{
    tg_store_t *st = NULL;
    tg_store_opts_t so;
    tg_store_range_res_t res;
    uint8_t end[64];
    char spec[PATH_MAX + 8];
    uint64_t first = 0, last = 0;
    int rc;
    memset(&so, 0, sizeof(so));
    memset(&res, 0, sizeof(res));
    if (snprintf(spec, sizeof(spec), "lmdb:%s", dir) >= (int)sizeof(spec))
        return tg_errf(err, errlen, -1, "%s: path too long", dir);
    if ((rc = tg_store_open(&st, spec, &so, err, errlen)) != 0)
        return -1;
    size_t endlen = tg_store_prefix_end(TG_CP_K_SETTLED, strlen(TG_CP_K_SETTLED), end);
    tg_store_range_req_t rq = {.rq_key = TG_CP_K_SETTLED, .rq_key_len = strlen(TG_CP_K_SETTLED),
                               .rq_end = end, .rq_end_len = endlen, .rq_limit = 1};
    if ((rc = tg_store_range(st, &rq, &res, err, errlen)) == 0 && res.rs_n == 1)
        first = text_u64(res.rs_kvs[0].kv_key + strlen(TG_CP_K_SETTLED),
                         res.rs_kvs[0].kv_key_len - strlen(TG_CP_K_SETTLED));
    tg_store_range_res_free(&res);
    tg_store_range_req_t lq = {.rq_key = TG_CP_K_SETTLED_SEQ, .rq_key_len = strlen(TG_CP_K_SETTLED_SEQ),
                               .rq_limit = 1};
    if (rc == 0 && (rc = tg_store_range(st, &lq, &res, err, errlen)) == 0 && res.rs_n == 1)
        last = text_u64(res.rs_kvs[0].kv_val, res.rs_kvs[0].kv_val_len);
    tg_store_range_res_free(&res);
    tg_store_close(st);
    if (rc != 0)
        return -1;
    /* the log holds first..last; an empty log: everything up to last deleted */
    uint64_t held_from = first ? first : last + 1;
    if (held_from > seq + 1)
        return tg_errf(err, errlen, -1,
                       "the store copy's settled log starts at batch %" PRIu64 " but the ledger copy may end at "
                       "batch %" PRIu64 ": retention deleted batches settled between the two copies; rerun "
                       "with a longer --settled-retention-s",
                       held_from, seq);
    return 0;
}

/* ---- flags ----------------------------------------------------------------------------- */

typedef struct bflags {
    const char *bf_dir;   /* --to / --from */
    const char *bf_data;  /* --data-dir */
    const char *bf_store; /* --store */
} bflags_t;

static int parse(const char *cmd, const char *dirflag, int argc, char **argv, bflags_t *f)
{
    f->bf_dir = NULL;
    f->bf_data = getenv("TG_CP_DATA_DIR") && *getenv("TG_CP_DATA_DIR") ? getenv("TG_CP_DATA_DIR")
                                                                       : "tollgate-cp-data";
    f->bf_store = getenv("TG_CP_STORE") && *getenv("TG_CP_STORE") ? getenv("TG_CP_STORE") : NULL;
    for (int i = 1; i < argc; i++) {
        const char **to = strcmp(argv[i], dirflag) == 0         ? &f->bf_dir
                          : strcmp(argv[i], "--data-dir") == 0 ? &f->bf_data
                          : strcmp(argv[i], "--store") == 0    ? &f->bf_store
                                                                : NULL;
        if (to == NULL || i + 1 >= argc) {
            fprintf(stderr,
                    "tollgate-cp %s: %s %s\nusage: tollgate-cp %s %s DIR [--data-dir DIR] [--store SPEC]\n", cmd,
                    to ? "a value is missing after" : "unknown flag", argv[i], cmd, dirflag);
            return -1;
        }
        *to = argv[++i];
    }
    if (f->bf_dir == NULL) {
        fprintf(stderr, "tollgate-cp %s: %s DIR is required\n", cmd, dirflag);
        return -1;
    }
    if (!path_ok(f->bf_dir) || !path_ok(f->bf_data) || (f->bf_store && !path_ok(f->bf_store))) {
        fprintf(stderr, "tollgate-cp %s: a directory path is too long\n", cmd);
        return -1;
    }
    return 0;
}

/* The embedded store's directory, or "" when the store is etcd. */
static int store_dir(const bflags_t *f, char *out, size_t outlen)
{
    if (f->bf_store == NULL)
        return snprintf(out, outlen, "%s/store", f->bf_data) < (int)outlen ? 0 : -1;
    if (strncmp(f->bf_store, "lmdb:", 5) == 0)
        return snprintf(out, outlen, "%s", f->bf_store + 5) < (int)outlen ? 0 : -1;
    out[0] = '\0';
    return 0;
}

/* ---- backup ----------------------------------------------------------------------------- */

/* Removes what a backup or a restore's staging puts in dir, and dir (which
 * was empty or absent before). */
static void remove_backup(const char *dir)
{
    static const char *left[] = {"ledger", "ledger-lock", "settled.rev", KEY_FILE, MANIFEST, "store/data.mdb",
                                 "store/lock.mdb", "store/tollgate.lock", "store"};
    char p[PATH_MAX];
    for (size_t i = 0; i < sizeof(left) / sizeof(left[0]); i++) {
        pj(p, dir, left[i]);
        if (unlink(p) != 0 && errno == EISDIR)
            rmdir(p);
        rmdir(p);
    }
    rmdir(dir);
}

int tg_cp_backup_main(int argc, char **argv)
{
    bflags_t f;
    char err[TG_ERRLEN] = "", src[PATH_MAX], dst[PATH_MAX], sdir[PATH_MAX], hex[65];
    uint64_t rows = 0, seq = 0;
    unsigned char hash[32];
    if (parse("backup", "--to", argc, argv, &f) != 0)
        return 2;
    if (store_dir(&f, sdir, sizeof(sdir)) != 0) {
        fprintf(stderr, "tollgate-cp backup: --store path too long\n");
        return 2;
    }
    pj(src, f.bf_data, "ledger");
    if (!exists(src)) {
        fprintf(stderr, "tollgate-cp backup: no ledger at %s: is --data-dir (TG_CP_DATA_DIR) the replica's?\n", src);
        return 1;
    }
    if (!empty_dir(f.bf_dir)) {
        fprintf(stderr, "tollgate-cp backup: %s is not empty: back up into a new directory\n", f.bf_dir);
        return 1;
    }
    if (mkdir(f.bf_dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "tollgate-cp backup: cannot create %s: %s\n", f.bf_dir, strerror(errno));
        return 1;
    }
    /* it holds the signing key and the store (with the peer secret): the
     * owner's only, also when the operator made the directory */
    if (chmod(f.bf_dir, 0700) != 0) {
        fprintf(stderr, "tollgate-cp backup: cannot make %s private (chmod 0700): %s\n", f.bf_dir, strerror(errno));
        return 1;
    }
    /* settled.rev first: what it says is applied is in the ledger copied next */
    pj(src, f.bf_data, "settled.rev");
    pj(dst, f.bf_dir, "settled.rev");
    if (copy_file(src, dst, err, sizeof(err)) < 0)
        goto fail;
    pj(src, f.bf_data, "ledger");
    pj(dst, f.bf_dir, "ledger");
    if (lmdb_copy(src, dst, 1, err, sizeof(err)) != 0)
        goto fail;
    if (sdir[0]) {
        pj(dst, f.bf_dir, "store");
        if (mkdir(dst, 0700) != 0) {
            tg_errf(err, sizeof(err), -1, "cannot create %s: %s", dst, strerror(errno));
            goto fail;
        }
        if (lmdb_copy(sdir, dst, 0, err, sizeof(err)) != 0)
            goto fail;
        /* settled.rev without a seq (older): nothing to compare with */
        pj(src, f.bf_dir, "settled.rev");
        uint64_t applied = rev_file_seq(src);
        if (applied > 0 && settled_covered(dst, applied, err, sizeof(err)) != 0)
            goto fail;
        static const char *opened[] = {"store/lock.mdb", "store/tollgate.lock"}; /* by the check */
        for (size_t i = 0; i < sizeof(opened) / sizeof(opened[0]); i++) {
            pj(src, f.bf_dir, opened[i]);
            unlink(src);
        }
        if (fsync_dir(dst, err, sizeof(err)) != 0)
            goto fail;
    }
    pj(src, f.bf_data, KEY_FILE);
    pj(dst, f.bf_dir, KEY_FILE);
    if (copy_file(src, dst, err, sizeof(err)) < 0)
        goto fail;
    /* the copy, not the original, is what must verify */
    pj(dst, f.bf_dir, "ledger");
    if (ledger_check(dst, &rows, &seq, hash, err, sizeof(err)) != 0)
        goto fail;
    pj(dst, f.bf_dir, "ledger-lock");
    unlink(dst); /* LMDB's lock file of the check: not part of the backup */
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", hash[i]);
    pj(dst, f.bf_dir, MANIFEST);
    FILE *m = fopen(dst, "w");
    if (m == NULL || fprintf(m, "tollgate-cp backup 1\ncreated_at_us %" PRId64 "\nledger_rows %" PRIu64
                                "\nledger_head_seq %" PRIu64 "\nledger_head_hash %s\nstore %s\n",
                             tg_cp_now_us(), rows, seq, hex, sdir[0] ? "lmdb" : "etcd (not copied)") < 0 ||
        fflush(m) != 0 || fsync(fileno(m)) != 0) {
        tg_errf(err, sizeof(err), -1, "cannot write %s: %s", dst, strerror(errno));
        if (m)
            fclose(m);
        goto fail;
    }
    fclose(m);
    if (fsync_dir(f.bf_dir, err, sizeof(err)) != 0)
        goto fail;
    printf("backup %s: ledger %" PRIu64 " rows, head %" PRIu64 " %s (chain verified)%s\n", f.bf_dir, rows, seq,
           hex, sdir[0] ? ", store copied" : "; the store is etcd: take `etcdctl snapshot save` too");
    return 0;
fail:
    remove_backup(f.bf_dir);
    fprintf(stderr, "tollgate-cp backup: %s; the partial backup was removed\n", err);
    return 1;
}

/* ---- restore ---------------------------------------------------------------------------- */

/* The MANIFEST's head: 0, or -1 when it is missing or unreadable. */
static int manifest_head(const char *dir, uint64_t *seq, char hex[65])
{
    char path[PATH_MAX], line[256];
    int got = 0;
    pj(path, dir, MANIFEST);
    FILE *m = fopen(path, "r");
    if (m == NULL)
        return -1;
    while (fgets(line, sizeof(line), m) != NULL) {
        if (sscanf(line, "ledger_head_seq %" SCNu64, seq) == 1)
            got |= 1;
        if (sscanf(line, "ledger_head_hash %64s", hex) == 1 && strlen(hex) == 64)
            got |= 2;
    }
    fclose(m);
    return got == 3 ? 0 : -1;
}

int tg_cp_restore_main(int argc, char **argv)
{
    bflags_t f;
    char err[TG_ERRLEN] = "", src[PATH_MAX], dst[PATH_MAX], stage[PATH_MAX], sdir[PATH_MAX];
    char want_hex[65] = "", hex[65];
    uint64_t rows = 0, seq = 0, want_seq = 0;
    unsigned char hash[32];
    /* moved in this order: the ledger last, so a ledger in the data dir
     * means the restore finished */
    static const char *files[] = {"settled.rev", KEY_FILE, "ledger"};
    char moved[128] = ""; /* names moved into place so far */
    if (parse("restore", "--from", argc, argv, &f) != 0)
        return 2;
    if (store_dir(&f, sdir, sizeof(sdir)) != 0) {
        fprintf(stderr, "tollgate-cp restore: --store path too long\n");
        return 2;
    }
    pj(src, f.bf_dir, "ledger");
    if (!exists(src) || manifest_head(f.bf_dir, &want_seq, want_hex) != 0) {
        fprintf(stderr, "tollgate-cp restore: %s is not a backup (no ledger or MANIFEST from tollgate-cp backup)\n",
                f.bf_dir);
        return 1;
    }
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        pj(dst, f.bf_data, files[i]);
        if (exists(dst)) {
            fprintf(stderr,
                    "tollgate-cp restore: %s already holds %s; stop the replica and move its data dir away first "
                    "(restore never overwrites)\n",
                    f.bf_data, files[i]);
            return 1;
        }
    }
    if (sdir[0] && !empty_dir(sdir)) {
        fprintf(stderr,
                "tollgate-cp restore: %s already holds a store; stop the replica and move it away first (restore "
                "never overwrites)\n",
                sdir);
        return 1;
    }
    if ((mkdir(f.bf_data, 0700) != 0 && errno != EEXIST)) {
        fprintf(stderr, "tollgate-cp restore: cannot create %s: %s\n", f.bf_data, strerror(errno));
        return 1;
    }
    pj(stage, f.bf_data, ".restore");
    if (!empty_dir(stage) || (mkdir(stage, 0700) != 0 && errno != EEXIST)) {
        fprintf(stderr, "tollgate-cp restore: %s is left from an earlier restore: remove it\n", stage);
        return 1;
    }
    /* everything into the staging dir first */
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        pj(src, f.bf_dir, files[i]);
        pj(dst, stage, files[i]);
        if (copy_file(src, dst, err, sizeof(err)) < 0)
            goto fail;
    }
    pj(src, f.bf_dir, "store/data.mdb");
    int with_store = sdir[0] && exists(src);
    if (with_store) {
        pj(dst, stage, "store");
        if (mkdir(dst, 0700) != 0 && errno != EEXIST) {
            tg_errf(err, sizeof(err), -1, "cannot create %s: %s", dst, strerror(errno));
            goto fail;
        }
        pj(dst, stage, "store/data.mdb");
        if (copy_file(src, dst, err, sizeof(err)) < 0)
            goto fail;
    }
    /* the chain, end to end, and the head the backup recorded */
    pj(dst, stage, "ledger");
    if (ledger_check(dst, &rows, &seq, hash, err, sizeof(err)) != 0) {
        char inner[TG_ERRLEN];
        snprintf(inner, sizeof(inner), "%s", err);
        err[0] = '\0';
        tg_errf(err, sizeof(err), -1, "the backup's ledger does not verify (%s): refusing it", inner);
        goto fail;
    }
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", hash[i]);
    if (seq != want_seq || strcmp(hex, want_hex) != 0) {
        tg_errf(err, sizeof(err), -1,
                "the backup's ledger ends at row %" PRIu64 " (%s) but its MANIFEST says row %" PRIu64
                " (%s): refusing it",
                seq, hex, want_seq, want_hex);
        goto fail;
    }
    if (with_store) {
        tg_store_t *st = NULL;
        tg_store_opts_t so;
        char spec[PATH_MAX + 8];
        memset(&so, 0, sizeof(so));
        if (snprintf(spec, sizeof(spec), "lmdb:%s/store", stage) >= (int)sizeof(spec))
            spec[0] = '\0';
        if (tg_store_open(&st, spec, &so, err, sizeof(err)) != 0) {
            char inner[TG_ERRLEN];
            snprintf(inner, sizeof(inner), "%s", err);
            err[0] = '\0';
            tg_errf(err, sizeof(err), -1, "the backup's store does not open (%s): refusing it", inner);
            goto fail;
        }
        tg_store_close(st);
    }
    /* verified: into place, the store first and the ledger last; link +
     * unlink never replaces a file that appeared meanwhile */
    if (with_store) {
        pj(src, stage, "store/data.mdb");
        pj(dst, sdir, "data.mdb");
        if ((mkdir(sdir, 0700) != 0 && errno != EEXIST) || link(src, dst) != 0 || unlink(src) != 0 ||
            fsync_dir(sdir, err, sizeof(err)) != 0) {
            if (err[0] == '\0')
                tg_errf(err, sizeof(err), -1, "moving %s to %s: %s", src, dst, strerror(errno));
            goto fail;
        }
        snprintf(moved, sizeof(moved), " %s", "store/data.mdb");
    }
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        pj(src, stage, files[i]);
        pj(dst, f.bf_data, files[i]);
        if (!exists(src))
            continue;
        if (link(src, dst) != 0 || unlink(src) != 0) {
            tg_errf(err, sizeof(err), -1, "moving %s to %s: %s", src, dst, strerror(errno));
            goto fail;
        }
        size_t ml = strlen(moved);
        snprintf(moved + ml, sizeof(moved) - ml, " %s", files[i]);
    }
    if (fsync_dir(f.bf_data, err, sizeof(err)) != 0)
        goto fail;
    remove_backup(stage);
    printf("restored %s into %s: ledger %" PRIu64 " rows, head %" PRIu64 " %s (chain verified)%s\n", f.bf_dir,
           f.bf_data, rows, seq, hex, with_store ? ", store restored" : "; restore the etcd store from its snapshot");
    return 0;
fail:
    remove_backup(stage);
    if (moved[0])
        fprintf(stderr,
                "tollgate-cp restore: %s; already moved into place:%s (under %s and the store dir %s): remove them "
                "before running it again\n",
                err, moved, f.bf_data, sdir);
    else
        fprintf(stderr, "tollgate-cp restore: %s; %s is unchanged\n", err, f.bf_data);
    return 1;
}
