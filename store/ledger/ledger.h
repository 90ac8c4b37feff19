/* tg_ledger: the control plane's ledger of settled usage, top-ups and
 * adjustments, stored in one LMDB file.
 *
 * What it is
 *   An append-only table of rows. A row is the caller's serialized record
 *   (opaque bytes: the packed api/ UsageRecord; the ledger never parses it)
 *   plus a plain C struct of the fields the ledger indexes and sums (ids,
 *   models, channel, bucket, amounts, tokens). Each appended row gets the next
 *   ledger sequence number (1, 2, 3, ...) and a hash:
 *       hash(row) = SHA-256(hash(previous row) || seq || canonical bytes)
 *   so any change to a stored row, or a removed row, breaks the chain and
 *   tg_ledger_verify() names the first broken row. tg_ledger_head() returns
 *   (seq, hash) of the newest row: signing that pair signs the whole history
 *   (the checkpoint hook for later work).
 *
 *   Appends are batched: one LMDB write transaction (one fsync) per call.
 *   A row whose record id is already in the ledger is not appended again and
 *   is reported as a duplicate, so a resent batch is a no-op.
 *
 *   Queries filter by any combination of account, project, key, run, model,
 *   channel, route type, kind and a settled-time range. Rows come back in
 *   ledger order (seq: the order they were settled in), read through the
 *   most selective secondary index, a page at a time with an opaque cursor
 *   string. Sums total the amounts and tokens of every matching row. Export
 *   streams every matching row to a callback without holding them in
 *   memory.
 *
 * Threads
 *   A tg_ledger_t may be shared by threads: appends serialize on LMDB's
 *   writer lock, queries run in parallel read transactions and never block
 *   appends (LMDB MVCC). A row passed to a callback lives in the memory map
 *   and is valid only until the callback returns; the callback must not call
 *   the ledger that is calling it (it may copy the row and act later).
 *   Do not use a ledger across fork(); open it again in the child.
 *
 * Caveats (LMDB)
 *   - Every query, sum or export page holds one reader slot (default 126 per
 *     file, lo_max_readers) for its duration. While a reader is open, pages
 *     freed by later appends or retention cannot be reused, so the file
 *     grows: exports therefore renew their read transaction every page
 *     instead of holding one for the whole walk.
 *   - The memory map has a size. When a write fills it the ledger doubles it
 *     (up to lo_map_max) and retries the batch; at the maximum the append
 *     fails with TG_LEDGER_EFULL and nothing of the batch is written. A
 *     resize waits until no transaction of this process is open, and while
 *     it waits new calls wait behind it: a callback that blocks (a slow
 *     stream client) stalls the whole ledger during a resize. Callbacks
 *     should copy or buffer rows, not wait on the network.
 *   - LMDB does not checksum its pages. tg_ledger_open rejects files that are
 *     not LMDB, not a ledger, or shorter than their own metadata says
 *     (truncated); damage inside a row is what tg_ledger_verify is for.
 *
 * Errors: every function returns 0 or a negative TG_LEDGER_E* code and writes
 * a sentence into the caller's err buffer (errlen bytes, first error wins,
 * see base/tg_base.h); tg_ledger_strerror names a code.
 */
#ifndef TG_LEDGER_H
#define TG_LEDGER_H

#include <stddef.h>
#include <stdint.h>

/* Error codes: append-only, the last is a sentinel. */
enum {
    TG_LEDGER_EINVAL = -1,    /* bad argument, row, filter or cursor */
    TG_LEDGER_ENOMEM = -2,    /* allocation failed */
    TG_LEDGER_EIO = -3,       /* the OS failed a file operation (disk full, permissions) */
    TG_LEDGER_EFULL = -4,     /* the memory map is at lo_map_max and full */
    TG_LEDGER_ECORRUPT = -5,  /* the file is not a ledger, truncated or damaged */
    TG_LEDGER_ETAMPER = -6,   /* the hash chain is broken (verify) */
    TG_LEDGER_EOVERFLOW = -7, /* a sum does not fit in int64 */
    TG_LEDGER_EREADERS = -8,  /* no free reader slot (raise lo_max_readers) */
    TG_LEDGER_ELMDB = -9,     /* any other LMDB failure; the message has LMDB's text */
    TG_LEDGER_ELAST = -10     /* sentinel, not an error */
};

/* Names an error code ("invalid argument", ...). Never NULL. */
const char *tg_ledger_strerror(int code);

/* What a row records. Stored in the row and usable as a filter. */
typedef enum tg_ledger_kind {
    TG_LEDGER_USAGE = 1,     /* settled request: cost debited from a bucket */
    TG_LEDGER_TOPUP = 2,     /* money added to a bucket */
    TG_LEDGER_ADJUSTMENT = 3 /* manual correction, refund, invoice settlement */
} tg_ledger_kind_t;

/* Limits on a row's parts, checked by tg_ledger_append. */
#define TG_LEDGER_ID_MAX 128         /* record id bytes, at least 1 */
#define TG_LEDGER_FIELD_MAX 255      /* any other string field, bytes */
#define TG_LEDGER_RECORD_MAX 1048576 /* opaque record bytes */

/* One ledger row. On append the caller fills everything above lr_seq;
 * strings are NUL-terminated, NULL means "" (only lr_record_id is
 * required). On read (callbacks) every field is filled and every pointer
 * points into the memory map, valid until the callback returns. */
typedef struct tg_ledger_row {
    tg_ledger_kind_t lr_kind; /* usage, top-up or adjustment */
    const char *lr_record_id; /* unique id, 1..TG_LEDGER_ID_MAX bytes: the dedup key */
    int64_t lr_settled_us;    /* when the control plane settled it, unix microseconds */
    int64_t lr_request_us;    /* when the request was made, unix microseconds */
    const char *lr_agent_id;  /* edge agent that reported it */
    const char *lr_account_id;
    const char *lr_project_id;
    const char *lr_key_id;
    const char *lr_run_id;         /* run (task) id, "" when none */
    const char *lr_model;          /* catalog model the client requested */
    const char *lr_upstream_model; /* model the upstream channel served */
    const char *lr_channel_id;
    const char *lr_route_type; /* e.g. "official", "pooled": decides the bucket */
    const char *lr_bucket;     /* balance bucket paid from, e.g. "credit", "wallet" */
    const char *lr_currency;   /* bucket currency, e.g. "USD" */
    int64_t lr_cost_nano;      /* amount moved on the bucket, nano-units (1e-9) */
    int64_t lr_upstream_cost_nano; /* what the operator pays upstream, nano-units */
    int64_t lr_input_tokens;       /* >= 0 */
    int64_t lr_output_tokens;      /* >= 0 */
    int64_t lr_price_version;      /* price card version used */
    const void *lr_record;         /* opaque serialized record (may be NULL if lr_record_len 0) */
    size_t lr_record_len;          /* <= TG_LEDGER_RECORD_MAX */
    /* Filled on read; ignored on append. */
    uint64_t lr_seq;            /* ledger sequence number, from 1 */
    unsigned char lr_hash[32];  /* SHA-256 chain hash of this row */
} tg_ledger_row_t;

typedef struct tg_ledger tg_ledger_t;

/* Options for tg_ledger_open. Zero fields take the defaults. */
typedef struct tg_ledger_opts {
    size_t lo_map_size;  /* initial map size, bytes (default 4 GiB: address space
                            only, the file grows with its data; a large start
                            makes resizes, which pause all calls, rare) */
    size_t lo_map_max;   /* the map never grows past this (default 64 GiB) */
    unsigned lo_max_readers; /* concurrent read transactions (default 126) */
    int lo_nosync;       /* 1: commit without fsync (survives a process crash,
                            not a power loss). Default 0: every append is
                            fsync'd before it returns. */
    unsigned lo_bucket_shift; /* index bucket = 2^shift consecutive rows (default
                                 12; 1..30). Fixed when the file is created,
                                 ignored when it exists. Tests use small ones. */
} tg_ledger_opts_t;

/* Opens the ledger file at path (one file plus path-lock beside it),
 * creating it when absent. opts may be NULL (defaults).
 * Errors: EINVAL (bad path/opts), EIO (cannot create/open: the message has
 * the OS reason), ECORRUPT (not an LMDB file, an LMDB file that is not a
 * ledger, a newer format, or a file shorter than its metadata: truncated),
 * ENOMEM. On success *out is the ledger; close it with tg_ledger_close. */
int tg_ledger_open(const char *path, const tg_ledger_opts_t *opts, tg_ledger_t **out, char *err,
                   size_t errlen);

/* Closes the ledger; every committed append is already durable. No call may
 * be running on it. Accepts NULL. */
void tg_ledger_close(tg_ledger_t *l);

/* ---- append ------------------------------------------------------------- */

/* What happened to one row of a batch. */
typedef enum tg_ledger_row_status {
    TG_LEDGER_ROW_NEW = 0,       /* appended with a new seq */
    TG_LEDGER_ROW_DUPLICATE = 1, /* same record id and same contents already stored: no-op */
    TG_LEDGER_ROW_CONFLICT = 2,  /* same record id, different contents: not appended
                                    (the stored row wins; this is a caller bug) */
    TG_LEDGER_ROW_EXPIRED = 3    /* settled before the retention horizon (the newest
                                    row retention deleted): not appended, its id
                                    may already have been deleted */
} tg_ledger_row_status_t;

typedef struct tg_ledger_result {
    tg_ledger_row_status_t ar_status;
    uint64_t ar_seq; /* seq of the new row, or of the stored row for a duplicate or
                        conflict; 0 for expired */
} tg_ledger_result_t;

/* Appends n rows (n >= 1, order kept) in one write transaction, fsync'd
 * unless lo_nosync. Rows whose record id is already stored (or appears
 * earlier in the same batch) are not appended (see tg_ledger_row_status).
 * res, when not NULL, has n entries and gets each row's outcome; *appended,
 * when not NULL, gets the count of new rows.
 * All or nothing: on error no row of the batch is stored.
 * Errors: EINVAL (names the first bad row: empty/long id, long field,
 * unknown kind, negative tokens, oversized record), EFULL, EIO, EREADERS,
 * ELMDB, ENOMEM. */
int tg_ledger_append(tg_ledger_t *l, const tg_ledger_row_t *rows, size_t n, tg_ledger_result_t *res,
                     size_t *appended, char *err, size_t errlen);

/* Appends rows copied from another ledger whose chain this one continues
 * (a replica catching up from a peer): row i must become seq first_seq + i
 * (so first_seq is this ledger's head + 1), must be new (its id not
 * stored), and the chain hash computed here must equal hashes[i], the
 * peer's. One write transaction; all or nothing.
 * Errors: ETAMPER (a row out of place, already stored, or whose hash
 * differs: the copy was altered or the chains diverged; the message names
 * the row), and those of tg_ledger_append. */
int tg_ledger_append_copy(tg_ledger_t *l, const tg_ledger_row_t *rows, size_t n, uint64_t first_seq,
                          const unsigned char (*hashes)[32], char *err, size_t errlen);

/* ---- query -------------------------------------------------------------- */

/* Which rows a query, sum or export visits. NULL or "" string fields match
 * anything; lf_kind 0 matches any kind; the time range is on lr_settled_us,
 * [lf_from_us, lf_to_us), and lf_to_us 0 means no upper bound. Start from
 * tg_ledger_filter_init. */
typedef struct tg_ledger_filter {
    const char *lf_account_id; /* indexed */
    const char *lf_project_id; /* indexed */
    const char *lf_key_id;     /* indexed */
    const char *lf_run_id;     /* indexed */
    const char *lf_model;      /* indexed: requested model */
    const char *lf_channel_id; /* indexed */
    const char *lf_route_type; /* filter only */
    int lf_kind;               /* 0 or a tg_ledger_kind_t; filter only */
    int64_t lf_from_us;        /* inclusive (INT64_MIN after init) */
    int64_t lf_to_us;          /* exclusive, 0 = unbounded */
} tg_ledger_filter_t;

/* Sets every field to "match anything". Can't fail. */
void tg_ledger_filter_init(tg_ledger_filter_t *f);

/* Called once per matching row, in ledger order (ascending seq). row is valid
 * until the callback returns. Return 0 to continue, non-zero to stop (the
 * query then returns 0). */
typedef int (*tg_ledger_row_cb)(const tg_ledger_row_t *row, void *arg);

/* Size of a cursor string, NUL included. */
#define TG_LEDGER_CURSOR_LEN 24

/* A cursor that starts a walk just after row seq (0: from the start), in
 * out (TG_LEDGER_CURSOR_LEN bytes). Can't fail. */
void tg_ledger_cursor_at(uint64_t seq, char out[TG_LEDGER_CURSOR_LEN]);

/* One page: calls cb for up to limit (>= 1) matching rows after the
 * position in cursor_in (NULL or "" = from the start), inside one read
 * transaction. cursor_out (TG_LEDGER_CURSOR_LEN bytes) gets the position to
 * pass as the next cursor_in, or "" when the walk is complete (a page that
 * ends exactly at the last row may still return a cursor: the next page is
 * then empty). The cursor is a position in ledger order, so a walk returns
 * every row present when it began exactly once, and rows appended during
 * the walk come after the cursor: a walk may include them, never twice.
 * *rows_out (may be NULL) gets the count passed to cb.
 * Errors: EINVAL (bad filter or a cursor this ledger did not make), EREADERS,
 * ECORRUPT (an index points at a missing or undecodable row), ELMDB. */
int tg_ledger_query(tg_ledger_t *l, const tg_ledger_filter_t *f, const char *cursor_in, size_t limit,
                    tg_ledger_row_cb cb, void *arg, char *cursor_out, size_t *rows_out, char *err,
                    size_t errlen);

/* Streams every matching row to cb, in order, one page (read transaction)
 * of page_rows rows at a time (0 picks 4096), so memory stays flat and
 * writers are never held back by a long reader. Each page is its own
 * snapshot: rows appended during the export may be included (after the
 * rows that existed when it began), none twice. Stops early, returning 0,
 * when cb returns non-zero. *rows_out (may be NULL) gets the count.
 * Errors: as tg_ledger_query. */
int tg_ledger_export(tg_ledger_t *l, const tg_ledger_filter_t *f, size_t page_rows,
                     tg_ledger_row_cb cb, void *arg, size_t *rows_out, char *err, size_t errlen);

/* Totals of the matching rows. */
typedef struct tg_ledger_sum {
    uint64_t ls_rows;
    int64_t ls_cost_nano;
    int64_t ls_upstream_cost_nano;
    int64_t ls_input_tokens;
    int64_t ls_output_tokens;
} tg_ledger_sum_t;

/* Sums every matching row in one read transaction (a consistent snapshot).
 * Errors: as tg_ledger_query, plus EOVERFLOW when a total leaves int64. */
int tg_ledger_sum(tg_ledger_t *l, const tg_ledger_filter_t *f, tg_ledger_sum_t *out, char *err,
                  size_t errlen);

/* Looks a row up by record id and, when found, passes it to cb.
 * Returns 0 and sets *found (1 or 0). Errors: EINVAL, EREADERS, ECORRUPT,
 * ELMDB. */
int tg_ledger_get(tg_ledger_t *l, const char *record_id, tg_ledger_row_cb cb, void *arg, int *found,
                  char *err, size_t errlen);

/* Which of n record ids the ledger holds, in one read transaction (the
 * settlement duplicate check of a whole batch: one transaction instead of
 * one per id). found[i] gets 1 or 0; an empty or over-long id is 0.
 * Returns 0, or EINVAL, EREADERS, ECORRUPT, ELMDB (found[] then undefined). */
int tg_ledger_has(tg_ledger_t *l, const char *const *ids, size_t n, int *found, char *err,
                  size_t errlen);

/* ---- integrity ---------------------------------------------------------- */

/* The checkpoint hook: the newest row's seq and chain hash (seq 0 and the
 * hash of the anchor, all zero for an empty ledger, when there are no rows).
 * Signing (seq, hash) commits to every row up to seq.
 * Errors: EREADERS, ELMDB, ECORRUPT. */
int tg_ledger_head(tg_ledger_t *l, uint64_t *seq, unsigned char hash[32], char *err, size_t errlen);

/* Recomputes the chain over rows [from_seq, to_seq] (from_seq 0 = the first
 * stored row, to_seq 0 = the head) and checks each stored hash, that no seq
 * is missing, and that the head record matches the last row. The first row
 * is linked to the previous stored row, or to the retention anchor.
 * Returns 0 when intact; TG_LEDGER_ETAMPER with *bad_seq (may be NULL) set
 * to the first broken row and a message naming its seq and record id.
 * Errors: EINVAL (range outside the stored rows), ETAMPER, EREADERS,
 * ELMDB. */
int tg_ledger_verify(tg_ledger_t *l, uint64_t from_seq, uint64_t to_seq, uint64_t *bad_seq,
                     char *err, size_t errlen);

/* ---- retention ---------------------------------------------------------- */

/* Deletes the oldest rows, in seq order, while their settled time is before
 * before_us: the row, its record id and its index entries. Works in write
 * transactions of at most chunk_rows rows (0 picks 1000) so appends wait
 * for one chunk at most. Deletion stops at the first row that is not old
 * enough, so the remaining rows stay one unbroken chain; the last deleted
 * row's (seq, hash) is kept as the anchor that verify starts from.
 * The horizon becomes the newest settled time deleted, plus 1 us: later
 * appends of rows settled before it are reported EXPIRED (their ids may be
 * gone, so they could not be deduplicated). *deleted (may be NULL) gets the
 * count.
 * Errors: EIO, EFULL (deleting also needs free pages), EREADERS, ELMDB. */
int tg_ledger_retain(tg_ledger_t *l, int64_t before_us, size_t chunk_rows, uint64_t *deleted,
                     char *err, size_t errlen);

/* ---- statistics --------------------------------------------------------- */

typedef struct tg_ledger_stat {
    uint64_t ls_rows;      /* rows stored */
    uint64_t ls_first_seq; /* oldest stored row, 0 when empty */
    uint64_t ls_head_seq;  /* newest row ever appended, 0 when none */
    int64_t ls_horizon_us; /* retention horizon, INT64_MIN when none */
    size_t ls_map_size;    /* current memory map size, bytes */
    size_t ls_map_used;    /* bytes of the map in use */
} tg_ledger_stat_t;

/* Fills *st. Errors: EREADERS, ELMDB. */
int tg_ledger_stat(tg_ledger_t *l, tg_ledger_stat_t *st, char *err, size_t errlen);

#endif
