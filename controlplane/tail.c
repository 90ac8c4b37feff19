/* tail.c: every replica's copy of the ledger. The settling leader writes
 * each settled batch as one value under TG_CP_K_SETTLED (settle.c); this
 * thread watches that prefix from the last revision it applied (persisted in
 * <data dir>/settled.rev) and appends each batch's rows to this replica's
 * LMDB ledger, which is idempotent by record id: the leader's own direct
 * append, a replay after a restart and this tailer never double a row.
 *
 * On ECOMPACTED (or the first start) it reads the whole settled-log range at
 * one revision, then watches from there. On the leader it also deletes
 * settled-log entries older than cp_settled_retention_s (never past what
 * this replica applied) and the batch markers written with them. A replica
 * that was away longer than that (or a new one) finds the log starting
 * after the last batch it applied: before applying anything it copies the
 * missing rows from a peer over gRPC, verifying each against its own chain
 * (catchup.c), then reads the log on.
 *
 * Settlement pauses while this replica's ledger cannot take rows: when an
 * append fails (a full disk) and while the data dir's file system has less
 * than --ledger-min-free-mb free (checked every second, so the disk
 * normally never fills under an append). The leader then refuses batches
 * with UNAVAILABLE naming the disk and the fix, and agents keep them in
 * their outboxes; the tailer retries every second and settlement resumes
 * by itself. A batch committed just before a failed append stays in the
 * settled log (its balance moved with its rows there) and is appended on
 * the retry; its agent is not acknowledged until then.
 *
 * The revision file holds "<revision> <settled seq>" applied; it is written
 * without fsync, at most every 100 ms, when the log goes idle, and when the
 * tailer stops: an older file replays batches the ledger already holds
 * (idempotent), and it never trails a batch old enough for retention to
 * delete (the kernel writes it back within seconds; retention waits for
 * --settled-retention-s), so its seq is safe for fill_gap.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "base/tg_log.h"
#include "controlplane/agentside.h"
#include "tollgate/v1/admin.pb-c.h"

#define RETAIN_EVERY_US (retain_every_us())
/* Retention runs every 10 s, or every TG_CP_RETAIN_EVERY_MS (tests). */
static int64_t retain_every_us(void)
{
    const char *e = getenv("TG_CP_RETAIN_EVERY_MS");
    long ms = e ? strtol(e, NULL, 10) : 0;
    return ms > 0 ? (int64_t)ms * 1000 : 10LL * 1000000;
}

/* settled batches appended together: one ledger transaction (one fsync)
 * for everything the watch has ready, up to this many */
#define TAIL_MAX_EVENTS 64

/* Reads "<rev> <seq>" (an older file has the revision only: *known 0; no
 * file: nothing applied yet, known). */
static int64_t rev_load(const char *path, uint64_t *seq, int *known)
{
    char buf[64] = {0}, *end;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *seq = 0;
    *known = 1;
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    int64_t rev = strtoll(buf, &end, 10);
    while (*end == ' ')
        end++;
    if (*end >= '0' && *end <= '9')
        *seq = strtoull(end, NULL, 10);
    else
        *known = 0;
    return rev;
}

static void rev_save(const char *path, int64_t rev, uint64_t seq)
{
    char tmp[sizeof(((tg_cp_agent_side_t *)0)->as_tail_path) + 8], buf[64];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int n = snprintf(buf, sizeof(buf), "%" PRId64 " %" PRIu64 "\n", rev, seq);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    ssize_t w = write(fd, buf, (size_t)n);
    close(fd);
    if (w == n)
        rename(tmp, path);
}

/* settled.rev is rewritten at most this often (when the log goes idle, and
 * when the tailer stops):
 * a file write and rename per append cost ~2% of settlement's CPU, and a
 * stale file only replays batches the ledger holds (idempotent by id) */
#define REV_SAVE_EVERY_US 100000

/* Records that the settled log is applied up to revision rev and (when
 * not 0) batch seq. */
static void set_applied(tg_cp_agent_side_t *as, int64_t rev, uint64_t seq)
{
    pthread_mutex_lock(&as->as_mu);
    if (rev > as->as_tail_rev)
        as->as_tail_rev = rev;
    if (seq > as->as_tail_seq)
        as->as_tail_seq = seq;
    if (seq > 0)
        as->as_tail_seq_known = 1;
    seq = as->as_tail_seq;
    rev = as->as_tail_rev;
    cp_pending_prune(as, as->as_tail_rev);
    pthread_cond_broadcast(&as->as_cv);
    pthread_mutex_unlock(&as->as_mu);
    int64_t now = tg_cp_now_us();
    as->as_tail_dirty = 1;
    if (now - as->as_tail_saved_us >= REV_SAVE_EVERY_US) {
        rev_save(as->as_tail_path, rev, seq);
        as->as_tail_saved_us = now;
        as->as_tail_dirty = 0;
    }
}

/* Writes what set_applied left unsaved, when the log is idle: the file
 * then names every batch older than ~200 ms, so it never trails a batch
 * retention could delete (fill_gap trusts its seq). */
static void save_idle(tg_cp_agent_side_t *as)
{
    if (!as->as_tail_dirty)
        return;
    pthread_mutex_lock(&as->as_mu);
    int64_t rev = as->as_tail_rev;
    uint64_t seq = as->as_tail_seq;
    pthread_mutex_unlock(&as->as_mu);
    rev_save(as->as_tail_path, rev, seq);
    as->as_tail_saved_us = tg_cp_now_us();
    as->as_tail_dirty = 0;
}

/* ---- a ledger that cannot be written ---------------------------------------- */

/* The pause is logged when it begins or changes, then every 30 s. */
#define STUCK_LOG_EVERY_US (30LL * 1000000)

/* Sets (why non-NULL) or clears one of the two reasons (slot is
 * as_stuck_append or as_stuck_space) and logs the change. Tail thread. */
static void stuck_note(tg_cp_agent_side_t *as, char *slot, const char *why)
{
    int changed, any;
    int64_t now = tg_cp_now_us();
    pthread_mutex_lock(&as->as_mu);
    changed = why ? strcmp(slot, why) != 0 : slot[0] != '\0';
    snprintf(slot, TG_ERRLEN, "%s", why ? why : "");
    any = as->as_stuck_append[0] != '\0' || as->as_stuck_space[0] != '\0';
    atomic_store(&as->as_stuck, any);
    pthread_cond_broadcast(&as->as_cv); /* an ack waiting for this ledger gives up (cp_tail_wait) */
    pthread_mutex_unlock(&as->as_mu);
    if (why && (changed || now - as->as_stuck_logged_us >= STUCK_LOG_EVERY_US)) {
        TG_LOG(TG_LOG_ERROR, "cp.tail", "%s", why);
        as->as_stuck_logged_us = now;
    } else if (!why && changed && !any) {
        TG_LOG(TG_LOG_INFO, "cp.tail", "the ledger takes rows again: settlement resumes");
    }
}

/* An append failed with err: pause settlement until one succeeds. */
static void stuck_append(tg_cp_agent_side_t *as, const char *err)
{
    const char *dir = as->as_cp->cp_data_dir ? as->as_cp->cp_data_dir : ".";
    char why[TG_ERRLEN * 4]; /* err and the path twice; stuck_note keeps TG_ERRLEN */
    snprintf(why, sizeof(why),
             "settlement paused: this replica's ledger cannot be written (%s); if its disk is full, free space "
             "on the file system of --data-dir %s (df -h %s). Retried every second; settlement resumes by "
             "itself and agents keep their records meanwhile",
             err, dir, dir);
    stuck_note(as, as->as_stuck_append, why);
}

/* Once a second: pauses settlement while the data dir's file system has
 * less than --ledger-min-free-mb free (to unprivileged users, as the
 * control plane may not run as root), resumes when it has again. */
static void check_space(tg_cp_agent_side_t *as)
{
    tg_cp_t *cp = as->as_cp;
    const char *dir = cp->cp_data_dir ? cp->cp_data_dir : ".";
    struct statvfs sv;
    int64_t now = tg_cp_now_us();
    if (cp->cp_ledger_min_free <= 0 || now - as->as_space_checked_us < 1000000)
        return;
    as->as_space_checked_us = now;
    if (statvfs(dir, &sv) != 0)
        return; /* an append that fails says why */
    unsigned long long avail = (unsigned long long)sv.f_bavail * sv.f_frsize;
    if (avail >= (unsigned long long)cp->cp_ledger_min_free) {
        stuck_note(as, as->as_stuck_space, NULL);
        return;
    }
    char why[TG_ERRLEN];
    snprintf(why, sizeof(why),
             "settlement paused: the file system of --data-dir %s (the ledger's) has %llu bytes free, below "
             "--ledger-min-free-mb %" PRId64 "; free space there (df -h %s). Settlement resumes by itself "
             "and agents keep their records meanwhile",
             dir, avail, cp->cp_ledger_min_free / (1024 * 1024), dir);
    /* the count changes as the disk fills: log when the state changes,
     * then every STUCK_LOG_EVERY_US with the count of the moment */
    pthread_mutex_lock(&as->as_mu);
    int was = as->as_stuck_space[0] != '\0';
    if (was)
        snprintf(as->as_stuck_space, TG_ERRLEN, "%s", why);
    pthread_mutex_unlock(&as->as_mu);
    if (!was) {
        stuck_note(as, as->as_stuck_space, why);
    } else if (now - as->as_stuck_logged_us >= STUCK_LOG_EVERY_US) {
        TG_LOG(TG_LOG_ERROR, "cp.tail", "%s", why);
        as->as_stuck_logged_us = now;
    }
}

int cp_ledger_stuck(tg_cp_agent_side_t *as, char *why, size_t whylen)
{
    if (!atomic_load(&as->as_stuck))
        return 0;
    pthread_mutex_lock(&as->as_mu);
    const char *w = as->as_stuck_append[0] ? as->as_stuck_append : as->as_stuck_space;
    int stuck = w[0] != '\0';
    if (stuck && why != NULL)
        snprintf(why, whylen, "%s", w);
    pthread_mutex_unlock(&as->as_mu);
    return stuck;
}

/* Appends the settled batches kvs[0..n) in one ledger append. */
static int apply(tg_cp_agent_side_t *as, const tg_store_kv_t *const *kvs, size_t n)
{
    char err[TG_ERRLEN] = "";
    const uint8_t *vals[TAIL_MAX_EVENTS];
    size_t lens[TAIL_MAX_EVENTS];
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        vals[i] = kvs[i]->kv_val;
        lens[i] = kvs[i]->kv_val_len;
    }
    int rc = cp_ledger_apply(as->as_cp, vals, lens, n, err, sizeof(err));
    if (rc < 0)
        stuck_append(as, err);
    else if (atomic_load(&as->as_stuck))
        stuck_note(as, as->as_stuck_append, NULL);
    return rc;
}

/* The <seq> of a TG_CP_K_SETTLED key, 0 if it is not one. */
static uint64_t seq_of(const tg_store_kv_t *kv)
{
    char buf[24] = {0};
    size_t pl = strlen(TG_CP_K_SETTLED);
    if (kv->kv_key_len <= pl || kv->kv_key_len - pl >= sizeof(buf))
        return 0;
    memcpy(buf, kv->kv_key + pl, kv->kv_key_len - pl);
    return strtoull(buf, NULL, 10);
}

/* Like apply, but batches this replica settled itself come from the stash
 * (rows already built) instead of being unpacked again. */
static int apply_events(tg_cp_agent_side_t *as, const tg_store_kv_t *const *kvs, size_t n)
{
    cp_apply_item_t items[TAIL_MAX_EVENTS];
    int taken[TAIL_MAX_EVENTS];
    char err[TG_ERRLEN] = "";
    if (n == 0)
        return 0;
    uint64_t seqs[TAIL_MAX_EVENTS];
    pthread_mutex_lock(&as->as_mu);
    for (size_t i = 0; i < n; i++) {
        memset(&items[i], 0, sizeof(items[i]));
        items[i].ai_val = kvs[i]->kv_val;
        items[i].ai_len = kvs[i]->kv_val_len;
        seqs[i] = seq_of(kvs[i]);
        taken[i] = seqs[i] > 0 && cp_stash_take(as, seqs[i], kvs[i]->kv_val, kvs[i]->kv_val_len,
                                                &items[i].ai_rows, &items[i].ai_nrows);
        if (!taken[i])
            items[i].ai_rows = NULL;
    }
    pthread_mutex_unlock(&as->as_mu);
    size_t ntaken = 0;
    for (size_t i = 0; i < n; i++)
        ntaken += taken[i] != 0;
    TG_LOG(TG_LOG_DEBUG, "cp.tail", "appending %zu settled batches (%zu with rows built here)", n, ntaken);
    int rc = cp_ledger_apply_items(as->as_cp, items, n, err, sizeof(err));
    if (rc < 0)
        stuck_append(as, err);
    else if (atomic_load(&as->as_stuck))
        stuck_note(as, as->as_stuck_append, NULL);
    pthread_mutex_lock(&as->as_mu);
    for (size_t i = 0; i < n; i++)
        if (taken[i])
            cp_stash_release(as, seqs[i], rc == 0);
    pthread_cond_broadcast(&as->as_cv);
    pthread_mutex_unlock(&as->as_mu);
    return rc;
}

/* The last TG_CP_K_SETTLED seq used, read at revision at: 0 when none. */
static uint64_t last_seq_at(tg_store_t *st, int64_t at)
{
    tg_store_range_req_t rq = {.rq_key = TG_CP_K_SETTLED_SEQ, .rq_key_len = strlen(TG_CP_K_SETTLED_SEQ),
                               .rq_limit = 1, .rq_revision = at};
    tg_store_range_res_t res;
    char buf[24] = {0}, err[TG_ERRLEN] = "";
    uint64_t seq = 0;
    if (tg_store_range(st, &rq, &res, err, sizeof(err)) < 0) {
        /* 0: no gap is seen this time; the next full read looks again */
        TG_LOG(TG_LOG_WARN, "cp.tail", "reading %s for the gap check failed: %s", TG_CP_K_SETTLED_SEQ, err);
        return 0;
    }
    if (res.rs_n == 1 && res.rs_kvs[0].kv_val_len < sizeof(buf)) {
        memcpy(buf, res.rs_kvs[0].kv_val, res.rs_kvs[0].kv_val_len);
        seq = strtoull(buf, NULL, 10);
    }
    tg_store_range_res_free(&res);
    return seq;
}

/* Before the first page of a full read is applied: when the log starts
 * after the batch this replica applied last (retention deleted what it
 * missed), copy the missing rows from a peer. first is the page's first
 * batch (NULL: the log is empty; it then ends at the store's last seq).
 * Only on etcd: on the embedded store this process is the only tailer and
 * retention never deletes past what it applied. */
static int fill_gap(tg_cp_agent_side_t *as, const tg_store_kv_t *first, int64_t at, char *err, size_t errlen)
{
    tg_cp_t *cp = as->as_cp;
    ProtobufCMessage *m = NULL;
    const char *first_id = NULL;
    int found = 0, rc = 0;
    if (cp->cp_store_spec == NULL || strncmp(cp->cp_store_spec, "etcd:", 5) != 0)
        return 0;
    pthread_mutex_lock(&as->as_mu);
    uint64_t applied = as->as_tail_seq;
    int known = as->as_tail_seq_known;
    pthread_mutex_unlock(&as->as_mu);
    uint64_t start = first ? seq_of(first) : last_seq_at(cp->cp_store, at) + 1;
    if (!known || start <= applied + 1)
        return 0;
    /* the first batch the log holds may be one this ledger has already */
    if (first != NULL && cp_settled_unpack(first->kv_val, first->kv_val_len, &m, NULL, 0) == 0 &&
        ((Tollgate__V1__LedgerPage *)m)->n_entries > 0) {
        first_id = ((Tollgate__V1__LedgerPage *)m)->entries[0]->entry_id;
        const char *ids[1] = {first_id};
        tg_ledger_has(cp->cp_ledger, ids, 1, &found, NULL, 0);
    }
    if (!found) {
        /* ledger queries here would miss rows until the copy is done */
        atomic_store(&cp->cp_ledger_gap, 1);
        TG_LOG(TG_LOG_WARN, "cp.tail",
               "the settled log starts at batch %" PRIu64 " but this replica applied up to %" PRIu64
               " (retention deleted the rest): copying the missing ledger rows from a peer",
               start, applied);
        rc = cp_catchup(as, start - 1, first_id, err, errlen);
        if (rc == 0) {
            atomic_store(&cp->cp_ledger_gap, 0);
        } else if (cp->cp_accept_gap) {
            /* the operator's choice: go on without those rows for good */
            TG_LOG(TG_LOG_ERROR, "cp.tail",
                   "%s; --accept-ledger-gap=on: applying newer batches without them (this ledger lacks them "
                   "for good)",
                   err);
            atomic_store(&cp->cp_ledger_gap, 0);
            rc = 0;
        }
    }
    tg_rpc_pb_free(m);
    return rc;
}

/* Reads every settled batch at one revision; *rev gets that revision. */
static int full_read(tg_cp_agent_side_t *as, int64_t *rev, char *err, size_t errlen)
{
    uint8_t end[64], next[TG_STORE_MAX_KEY + 1];
    size_t endlen = tg_store_prefix_end(TG_CP_K_SETTLED, strlen(TG_CP_K_SETTLED), end);
    size_t nextlen = strlen(TG_CP_K_SETTLED), n = 0;
    tg_store_range_res_t res;
    int64_t at = 0;
    int rc = 0;
    memset(&res, 0, sizeof(res));
    memcpy(next, TG_CP_K_SETTLED, nextlen);
    for (;;) {
        tg_store_range_req_t rq = {.rq_key = next, .rq_key_len = nextlen, .rq_end = end,
                                   .rq_end_len = endlen, .rq_limit = TAIL_MAX_EVENTS, .rq_revision = at};
        rc = tg_store_range(as->as_cp->cp_store, &rq, &res, err, errlen);
        if (rc < 0)
            break;
        if (at == 0) {
            at = res.rs_revision;
            if ((rc = fill_gap(as, res.rs_n ? &res.rs_kvs[0] : NULL, at, err, errlen)) < 0)
                goto fail;
        }
        for (size_t i = 0; i < res.rs_n; i += TAIL_MAX_EVENTS) {
            const tg_store_kv_t *kvs[TAIL_MAX_EVENTS];
            size_t k = 0;
            for (; k < TAIL_MAX_EVENTS && i + k < res.rs_n; k++)
                kvs[k] = &res.rs_kvs[i + k];
            if ((rc = apply(as, kvs, k)) < 0)
                goto fail;
            set_applied(as, 0, seq_of(kvs[k - 1]));
        }
        n += res.rs_n;
        if (!res.rs_more || res.rs_n == 0)
            break;
        tg_store_range_next(&res, next, &nextlen);
        tg_store_range_res_free(&res);
        if (as->as_stop)
            goto fail;
    }
    if (rc == 0) {
        *rev = at;
        TG_LOG(TG_LOG_INFO, "cp.tail", "read the settled log at revision %" PRId64 ": %zu batches", at, n);
    }
fail:
    tg_store_range_res_free(&res);
    return rc;
}

/* When settled batch `key` was settled (its first row), or INT64_MAX. */
static int64_t settled_at(tg_store_t *st, const tg_store_kv_t *k)
{
    tg_store_kv_t *kv = NULL;
    ProtobufCMessage *m = NULL;
    int64_t at = INT64_MAX;
    if (tg_store_get(st, k->kv_key, k->kv_key_len, &kv, NULL, NULL, 0) == 0 && kv != NULL &&
        cp_settled_unpack(kv->kv_val, kv->kv_val_len, &m, NULL, 0) == 0 &&
        ((Tollgate__V1__LedgerPage *)m)->n_entries > 0)
        at = ((Tollgate__V1__LedgerPage *)m)->entries[0]->settled_at_us;
    tg_rpc_pb_free(m);
    tg_store_kv_free(kv);
    return at;
}

/* Deletes the batch markers (TG_CP_K_BATCH) written before revision cut:
 * a marker is written in the transaction that writes its batch's
 * settled-log entry, so these are the markers of batches retention has
 * removed from the log. A resend of such a batch is settled again, and
 * every record in it is found in the ledger by its id: counted as a
 * duplicate, never charged twice (settle.c's mark_duplicates). Keys-only
 * pages (each from the last key of the previous one; only deletes happen
 * behind it); deletes in transactions of up to 128.
 * Returns the number deleted, or a negative store code. */
static int64_t retain_markers(tg_cp_t *cp, int64_t cut, char *err, size_t errlen)
{
    uint8_t end[64], next[TG_STORE_MAX_KEY + 1];
    size_t endlen = tg_store_prefix_end(TG_CP_K_BATCH, strlen(TG_CP_K_BATCH), end), nextlen = 0;
    int64_t deleted = 0;
    for (int more = 1; more;) {
        tg_store_range_res_t res;
        tg_store_range_req_t rq = {.rq_key = nextlen ? (const void *)next : TG_CP_K_BATCH,
                                   .rq_key_len = nextlen ? nextlen : strlen(TG_CP_K_BATCH), .rq_end = end,
                                   .rq_end_len = endlen, .rq_limit = 1000, .rq_keys_only = 1};
        int rc = tg_store_range(cp->cp_store, &rq, &res, err, errlen);
        if (rc < 0)
            return rc;
        tg_store_op_t ops[TG_STORE_MAX_TXN_OPS];
        size_t n = 0;
        for (size_t i = 0; i <= res.rs_n && rc == 0; i++) {
            if (i < res.rs_n && res.rs_kvs[i].kv_mod_rev < cut)
                ops[n++] = (tg_store_op_t){.op_type = TG_STORE_OP_DELETE, .op_key = res.rs_kvs[i].kv_key,
                                           .op_key_len = res.rs_kvs[i].kv_key_len};
            if (n > 0 && (n == TG_STORE_MAX_TXN_OPS || i == res.rs_n)) {
                rc = tg_store_txn(cp->cp_store, NULL, 0, ops, n, NULL, 0, NULL, err, errlen);
                deleted += rc == 0 ? (int64_t)n : 0;
                n = 0;
            }
        }
        more = rc == 0 && res.rs_more && tg_store_range_next(&res, next, &nextlen) == 0;
        tg_store_range_res_free(&res);
        if (rc < 0)
            return rc;
    }
    return deleted;
}

/* Leader only: deletes settled batches older than the retention window,
 * never one this replica's tailer has not applied yet, then their batch
 * markers (retain_markers), so neither grows without bound.
 * Keys are seq-ordered and seqs are given in settlement order, so settle
 * times (and revisions) increase along the keys: a keys-only page and a
 * binary search with a few value reads find the cut, and one ranged delete
 * removes the rest. */
static void retain(tg_cp_agent_side_t *as)
{
    tg_cp_t *cp = as->as_cp;
    char err[TG_ERRLEN] = "";
    int64_t horizon = tg_cp_now_us() - (int64_t)cp->cp_settled_retention_s * 1000000;
    int64_t applied, marker_cut = 0;
    uint8_t end[64];
    size_t endlen = tg_store_prefix_end(TG_CP_K_SETTLED, strlen(TG_CP_K_SETTLED), end);
    pthread_mutex_lock(&as->as_mu);
    applied = as->as_tail_rev;
    pthread_mutex_unlock(&as->as_mu);
    for (int round = 0; round < 20 && !as->as_stop; round++) {
        tg_store_range_res_t res;
        tg_store_range_req_t rq = {.rq_key = TG_CP_K_SETTLED, .rq_key_len = strlen(TG_CP_K_SETTLED),
                                   .rq_end = end, .rq_end_len = endlen, .rq_limit = 1000,
                                   .rq_keys_only = 1};
        if (tg_store_range(cp->cp_store, &rq, &res, err, sizeof(err)) < 0)
            break;
        size_t lo = 0, hi = res.rs_n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (res.rs_kvs[mid].kv_mod_rev <= applied && settled_at(cp->cp_store, &res.rs_kvs[mid]) < horizon)
                lo = mid + 1;
            else
                hi = mid;
        }
        int more = lo == res.rs_n && res.rs_more;
        /* markers older than the first entry kept (everything up to the
         * read's revision when none is) */
        marker_cut = lo < res.rs_n ? res.rs_kvs[lo].kv_mod_rev : more ? 0 : res.rs_revision + 1;
        if (lo > 0) {
            uint8_t stop[TG_STORE_MAX_KEY + 1];
            size_t stoplen = 0;
            const void *e = stop;
            if (lo < res.rs_n) {
                e = res.rs_kvs[lo].kv_key;
                stoplen = res.rs_kvs[lo].kv_key_len;
            } else {
                tg_store_range_next(&res, stop, &stoplen);
            }
            tg_store_op_t op = {.op_type = TG_STORE_OP_DELETE, .op_key = res.rs_kvs[0].kv_key,
                                .op_key_len = res.rs_kvs[0].kv_key_len, .op_end = e,
                                .op_end_len = stoplen};
            if (tg_store_txn(cp->cp_store, NULL, 0, &op, 1, NULL, 0, NULL, err, sizeof(err)) < 0)
                more = 0, marker_cut = 0;
            else
                TG_LOG(TG_LOG_INFO, "cp.tail", "retention: deleted %zu settled batches", lo);
        }
        tg_store_range_res_free(&res);
        if (!more)
            break;
    }
    if (marker_cut > 0 && !as->as_stop) {
        int64_t n = retain_markers(cp, marker_cut, err, sizeof(err));
        if (n > 0)
            TG_LOG(TG_LOG_INFO, "cp.tail", "retention: deleted %" PRId64 " batch markers", n);
    }
    if (!as->as_stop) {
        int n = cp_lease_gc(cp, CP_LEASE_GC_STATES, err, sizeof(err));
        if (n > 0)
            TG_LOG(TG_LOG_INFO, "cp.tail", "retention: deleted %d ended limit windows", n);
    }
    if (err[0])
        TG_LOG(TG_LOG_WARN, "cp.tail", "retention: %s", err);
}

static void *tail_main(void *arg)
{
    pthread_setname_np(pthread_self(), "cp-tail");
    tg_cp_agent_side_t *as = arg;
    tg_store_watch_t *w = NULL;
    int64_t rev, last_retain = tg_cp_now_us();
    pthread_mutex_lock(&as->as_mu);
    rev = as->as_tail_rev;
    pthread_mutex_unlock(&as->as_mu);
    while (!as->as_stop) {
        char err[TG_ERRLEN] = "";
        if (w == NULL) {
            /* also while the log is read or the watch cannot open: a disk
             * below the floor pauses settlement from the start */
            check_space(as);
            if (rev == 0) {
                if (full_read(as, &rev, err, sizeof(err)) < 0) {
                    TG_LOG(TG_LOG_WARN, "cp.tail", "reading the settled log: %s", err);
                    rev = 0;
                    cp_sleep(as, 2000);
                    continue;
                }
                set_applied(as, rev, 0);
            }
            if (tg_store_watch(as->as_cp->cp_store, TG_CP_K_SETTLED, strlen(TG_CP_K_SETTLED), NULL, 0,
                               1, rev + 1, &w, err, sizeof(err)) < 0) {
                TG_LOG(TG_LOG_WARN, "cp.tail", "watching the settled log: %s", err);
                w = NULL;
                cp_sleep(as, 500);
                continue;
            }
        }
        check_space(as);
        int64_t t0 = tg_cp_now_us();
        if (cp_heap_trim()) {
            /* malloc_trim walks the whole heap under its lock: allocating
             * threads wait meanwhile */
            int64_t took = tg_cp_now_us() - t0;
            if (took > 10000)
                TG_LOG(TG_LOG_WARN, "cp.tail", "malloc_trim took %" PRId64 " ms (allocations waited meanwhile)",
                       took / 1000);
        }
        if (atomic_load(&as->as_cp->cp_is_leader) && tg_cp_now_us() - last_retain >= RETAIN_EVERY_US) {
            retain(as);
            last_retain = tg_cp_now_us();
        }
        tg_store_event_t *evs[TAIL_MAX_EVENTS];
        const tg_store_kv_t *kvs[TAIL_MAX_EVENTS];
        size_t nev = 0, nkv = 0;
        int rc = tg_store_watch_next(w, 200, &evs[0], err, sizeof(err));
        if (rc == TG_STORE_EAGAIN) {
            save_idle(as);
            continue;
        }
        if (rc < 0) {
            tg_store_watch_cancel(w);
            w = NULL;
            if (rc == TG_STORE_ECOMPACTED || rc == TG_STORE_EFUTURE) {
                TG_LOG(TG_LOG_WARN, "cp.tail", "settled-log watch: %s; re-reading the whole log", err);
                rev = 0;
            } else {
                cp_sleep(as, 200);
            }
            continue;
        }
        /* take whatever else is ready too (events come in revision order) */
        nev = 1;
        while (nev < TAIL_MAX_EVENTS && tg_store_watch_next(w, 0, &evs[nev], err, sizeof(err)) == 0)
            nev++;
        err[0] = '\0';
        for (size_t i = 0; i < nev; i++)
            if (evs[i]->ev_type == TG_STORE_EV_PUT)
                kvs[nkv++] = &evs[i]->ev_kv;
        int64_t last = evs[nev - 1]->ev_kv.kv_mod_rev;
        uint64_t last_seq = nkv > 0 ? seq_of(kvs[nkv - 1]) : 0;
        rc = apply_events(as, kvs, nkv);
        for (size_t i = 0; i < nev; i++)
            tg_store_event_free(evs[i]);
        if (rc < 0) {
            /* the ledger refused (disk full?): re-watch from the last applied */
            tg_store_watch_cancel(w);
            w = NULL;
            cp_sleep(as, 1000);
            continue;
        }
        rev = last;
        set_applied(as, rev, last_seq);
    }
    tg_store_watch_cancel(w);
    if (rev > 0)
        rev_save(as->as_tail_path, rev, as->as_tail_seq);
    return NULL;
}

int cp_tail_wait(tg_cp_agent_side_t *as, int64_t rev, int timeout_ms, char *stuck, size_t stucklen)
{
    int64_t deadline = tg_cp_now_us() + (int64_t)timeout_ms * 1000;
    int ok;
    pthread_mutex_lock(&as->as_mu);
    while (!(ok = as->as_tail_rev >= rev) && !as->as_stop && tg_cp_now_us() < deadline) {
        if (stuck != NULL && as->as_stuck_append[0] != '\0') {
            /* an append failed: this one will not be in the ledger soon */
            snprintf(stuck, stucklen, "%s", as->as_stuck_append);
            pthread_mutex_unlock(&as->as_mu);
            return -2;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&as->as_cv, &as->as_mu, &ts);
    }
    pthread_mutex_unlock(&as->as_mu);
    return ok ? 0 : -1;
}

int cp_tail_start(tg_cp_agent_side_t *as, char *err, size_t errlen)
{
    const char *dir = as->as_cp->cp_data_dir ? as->as_cp->cp_data_dir : ".";
    if (snprintf(as->as_tail_path, sizeof(as->as_tail_path), "%s/settled.rev", dir) >=
        (int)sizeof(as->as_tail_path))
        return tg_errf(err, errlen, TG_RPC_EINVAL, "data dir path too long");
    as->as_tail_rev = rev_load(as->as_tail_path, &as->as_tail_seq, &as->as_tail_seq_known);
    if (pthread_create(&as->as_tail_thr, NULL, tail_main, as) != 0)
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "cannot start the settled-log tailer: %s",
                       strerror(errno));
    as->as_tail_started = 1;
    return 0;
}

void cp_tail_stop(tg_cp_agent_side_t *as)
{
    if (as->as_tail_started)
        pthread_join(as->as_tail_thr, NULL);
    as->as_tail_started = 0;
}
