/* tg_ledger internals shared by the ledger's source files (not a public
 * header): the handle, the on-disk layout, the row codec and the helpers
 * that run LMDB transactions under the map-resize lock.
 *
 * On-disk layout (one LMDB file, named databases):
 *   meta      "format" -> TGL_FORMAT; "head" -> seq(8) hash(32);
 *             "anchor" -> seq(8) hash(32) of the last row retention deleted;
 *             "horizon" -> int64 retention horizon (settled time, us);
 *             "bshift" -> u8 log2 of rows per bucket, fixed at creation
 *   rows      seq(8, big-endian) -> hash(32) || canonical row bytes
 *   ids       record id -> seq(8)
 *   buckets   bucket(4) -> min settled time(8) max settled time(8)
 *   i_account, i_project, i_key, i_run, i_model, i_channel:
 *             bucket(4) field value NUL first seq(8) -> seq(8) x n: a
 *             posting list of the rows of one append batch that share
 *             the value in that bucket (n <= TGL_LIST_MAX; the key's seq is
 *             <= every seq in the list). Empty values are not indexed.
 * A bucket is a run of 2^bshift consecutive seqs (4096 by default). Index
 * keys lead with the bucket so a batch's inserts land in the newest
 * bucket's few pages instead of all over a tree that grows with the
 * ledger: that keeps appends flat as the ledger grows (a batch dirties
 * pages in proportion to the bucket, not to the whole index). A query
 * seeks once per bucket, skipping buckets whose time range cannot match.
 * Posting lists turn the rows of a batch that share an account, model,
 * channel... into one index put instead of one per row.
 * Times are stored big-endian with the sign bit flipped so byte order is
 * numeric order.
 *
 * Canonical row bytes (what is hashed after prev hash and seq):
 *   u8 version(1) u8 kind, 7 x i64 big-endian (settled, request, cost,
 *   upstream cost, input tokens, output tokens, price version),
 *   12 strings as u8 length + bytes + NUL (record id, agent, account,
 *   project, key, run, model, upstream model, channel, route type, bucket,
 *   currency), u32 big-endian record length + record bytes.
 */
#ifndef TG_LEDGER_INT_H
#define TG_LEDGER_INT_H

#include <lmdb.h>
#include <openssl/evp.h>
#include <pthread.h>

#include "store/ledger/ledger.h"

#define TGL_FORMAT "tollgate-ledger-1"
#define TGL_ROW_VERSION 1
#define TGL_HASH 32
#define TGL_BSHIFT_DEFAULT 12
#define TGL_LIST_MAX 128 /* seqs per posting list: 1 KiB, stays inside a page */
#define TGL_IXKEY_MAX (4 + TG_LEDGER_FIELD_MAX + 1 + 8)

/* The indexed string fields, in this order. */
enum { TGL_IX_ACCOUNT, TGL_IX_PROJECT, TGL_IX_KEY, TGL_IX_RUN, TGL_IX_MODEL, TGL_IX_CHANNEL, TGL_IX_N };

struct tg_ledger {
    MDB_env *env;
    MDB_dbi meta, rows, ids, buckets;
    MDB_dbi ix[TGL_IX_N];
    /* mdb_env_set_mapsize needs no transaction open in this process: every
     * transaction holds this lock shared, a resize holds it exclusive. */
    pthread_rwlock_t maplock;
    size_t map_max;
    unsigned bshift; /* log2 rows per bucket */
    char *path;
    EVP_MD *sha256; /* fetched once: implicit fetches cost per row */
};

/* Names of the index databases, indexed by TGL_IX_*. */
extern const char *const tgl_ix_names[TGL_IX_N];

/* ---- codec (ledger_codec.c) ---------------------------------------------- */

/* The indexed field of a row / a filter, by TGL_IX_*; never NULL ("" when
 * unset). */
const char *tgl_row_field(const tg_ledger_row_t *r, int ix);
const char *tgl_filter_field(const tg_ledger_filter_t *f, int ix);

#define TGL_NSTR 12 /* string fields in a row */
/* Checks a row against the limits; returns 0 or TG_LEDGER_EINVAL naming
 * row number i. lens gets the string lengths it measured (for
 * tgl_row_size_lens and the id key). */
int tgl_row_check(const tg_ledger_row_t *r, size_t i, size_t lens[TGL_NSTR], char *err, size_t errlen);

/* Bytes of a checked row's canonical encoding; lens gets the string
 * lengths for tgl_row_encode (measured once per row). */
size_t tgl_row_size(const tg_ledger_row_t *r, size_t lens[TGL_NSTR]);
/* The same from lengths tgl_row_check measured: no string is read again. */
size_t tgl_row_size_lens(const tg_ledger_row_t *r, const size_t lens[TGL_NSTR]);
/* Writes the canonical encoding (exactly tgl_row_size bytes) to out. */
void tgl_row_encode(const tg_ledger_row_t *r, const size_t lens[TGL_NSTR], unsigned char *out);
/* Decodes a stored value (hash || canonical bytes) into *r, pointing into
 * val. Returns 0, or -1 when the bytes are malformed. */
int tgl_row_decode(const void *val, size_t len, uint64_t seq, tg_ledger_row_t *r);

/* hash = SHA-256(prev || seq big-endian || enc). md is a SHA-256 fetched at
 * open, ctx a reusable context. Returns 0 or -1 (OpenSSL failed). */
int tgl_chain_hash(EVP_MD_CTX *ctx, const EVP_MD *md, const unsigned char prev[TGL_HASH], uint64_t seq,
                   const void *enc, size_t len, unsigned char out[TGL_HASH]);

void tgl_put_u64(unsigned char *p, uint64_t v);
uint64_t tgl_get_u64(const unsigned char *p);
/* Order-preserving encoding of a signed time. */
void tgl_put_time(unsigned char *p, int64_t t);
int64_t tgl_get_time(const unsigned char *p);

/* ---- transactions (ledger.c) -------------------------------------------- */

/* Maps an LMDB code to a TG_LEDGER_E* code with a message naming what was
 * being done and the file. */
int tgl_lmdb_err(const tg_ledger_t *l, int rc, const char *what, char *err, size_t errlen);

/* Begins a read transaction under the shared map lock. On success the
 * caller ends it with tgl_read_end. */
int tgl_read_begin(tg_ledger_t *l, MDB_txn **txn, char *err, size_t errlen);
void tgl_read_end(tg_ledger_t *l, MDB_txn *txn);

/* Builds an index key: bucket, value, NUL, seq. Returns its length. */
size_t tgl_ix_key(unsigned char *out, uint32_t bucket, const char *value, uint64_t seq);

/* Reads meta "head"/"anchor" (zeros when absent). */
int tgl_meta_pos(MDB_txn *txn, MDB_dbi meta, const char *name, uint64_t *seq,
                 unsigned char hash[TGL_HASH]);

#endif
