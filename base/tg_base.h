/* tg_base: the few things every Tollgate module shares.
 *
 *  - Errors: a function returns 0 or a negative code from its module's own
 *    enum, and writes a sentence a user can act on into a caller's buffer
 *    (char *err, size_t errlen). The first error written wins, so the
 *    innermost, most precise cause survives as the call unwinds.
 *  - Memory: long-lived allocations go through tg_malloc & co., which count
 *    live blocks and can be told to fail (tests prove every path that
 *    allocates fails cleanly). Request-scoped memory comes from a tg_pool_t,
 *    freed at once when the request ends.
 *  - tg_buf_t: a growable byte buffer created with its maximum size.
 *
 * Thread safety: the allocation wrappers and counters may be called from any
 * thread. A tg_buf_t or tg_pool_t belongs to one thread at a time.
 */
#ifndef TG_BASE_H
#define TG_BASE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- errors ------------------------------------------------------------- */

/* Size that fits every error message the project writes. */
#define TG_ERRLEN 512

/* The exit status of a daemon whose LMDB environment (store or ledger)
 * went into MDB_PANIC: it refuses every write until reopened, so the
 * process logs why and exits for its supervisor to restart it. */
#define TG_LMDB_PANIC_EXIT 75

/* Writes a formatted message into err unless it already holds one (first
 * error wins). err may be NULL or errlen 0: then nothing is written.
 * Returns `code` so a caller can write: return tg_errf(err, n, -X, "...").
 * Can't fail. */
int tg_errf(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- memory ------------------------------------------------------------- */

/* malloc/calloc/realloc/strdup/strndup that count live blocks and honour
 * tg_alloc_fail_after(). Each returns NULL on failure and changes nothing;
 * the caller owns the result and frees it with tg_free(). tg_free(NULL) is a
 * no-op. */
void *tg_malloc(size_t n);
void *tg_calloc(size_t count, size_t size);
void *tg_realloc(void *p, size_t n);
char *tg_strdup(const char *s);
char *tg_strndup(const char *s, size_t n);
void tg_free(void *p);

/* Live blocks allocated through the wrappers and not yet freed. */
long tg_alloc_live(void);

/* Test hook: the next n allocations succeed, every one after fails, until
 * called again with n < 0 (never fail, the default). */
void tg_alloc_fail_after(long n);

/* ---- dynamic buffer ----------------------------------------------------- */

typedef struct tg_buf {
    char *b_data; /* bytes, always NUL-terminated when b_len > 0 */
    size_t b_len; /* bytes in use, not counting the NUL */
    size_t b_cap; /* bytes allocated; never more than b_max + 1 (code
                   * that hands a buffer its memory keeps to that) */
    size_t b_max; /* hard limit on b_len; appends past it fail */
} tg_buf_t;

enum {
    TG_BUF_ENOMEM = -1, /* allocation failed */
    TG_BUF_ETOOBIG = -2 /* the append would pass b_max */
};

/* Starts an empty buffer that may grow to max bytes. Allocates nothing
 * until the first append. Release with tg_buf_free(). */
void tg_buf_init(tg_buf_t *b, size_t max);
/* Appends n bytes. Returns 0, TG_BUF_ENOMEM or TG_BUF_ETOOBIG; on error the
 * buffer is unchanged. */
int tg_buf_append(tg_buf_t *b, const void *p, size_t n);
int tg_buf_puts(tg_buf_t *b, const char *s);
/* Append v in decimal (putu) or lower-case hex (putx): what "%llu" and
 * "%llx" print, without printf's parsing (the hot path's heads). */
int tg_buf_putu(tg_buf_t *b, unsigned long long v);
int tg_buf_putx(tg_buf_t *b, unsigned long long v);
int tg_buf_printf(tg_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int tg_buf_vprintf(tg_buf_t *b, const char *fmt, va_list ap);
/* v in decimal into out (at least 21 bytes), NUL-terminated; returns the
 * number of digits. For the hot path, where snprintf's parsing costs
 * more than the number. */
size_t tg_fmt_u64(char *out, unsigned long long v);
/* The low 4 * width bits of v as exactly width lower-case hex digits
 * (zero-padded), NUL-terminated: out holds width + 1 bytes. */
void tg_fmt_hex(char *out, unsigned long long v, int width);
/* Makes room for n more bytes (and the NUL) without changing the content,
 * for writers that fill b_data + b_len themselves and then advance b_len
 * (and write the NUL). Returns 0, TG_BUF_ENOMEM or TG_BUF_ETOOBIG. */
int tg_buf_reserve(tg_buf_t *b, size_t n);
/* Empties the buffer, keeping its memory. */
void tg_buf_reset(tg_buf_t *b);
/* Hands the bytes to the caller (who frees them with tg_free) and leaves the
 * buffer empty. Returns NULL when the buffer never allocated. */
char *tg_buf_steal(tg_buf_t *b, size_t *len);
/* Frees the memory; the buffer may be reused after tg_buf_init. */
void tg_buf_free(tg_buf_t *b);

/* ---- request pool ------------------------------------------------------- */

/* A pool hands out memory that lives until tg_pool_destroy frees it all at
 * once; cleanup hooks run then, newest first. Not thread-safe. */
typedef struct tg_pool tg_pool_t;

/* Creates a pool whose chunks are chunk_size bytes (0 picks 4096).
 * Returns NULL on allocation failure. Destroy with tg_pool_destroy. */
tg_pool_t *tg_pool_create(size_t chunk_size);
/* Memory aligned for any type, valid until the pool is destroyed or reset;
 * NULL on failure. Never freed piecemeal. */
void *tg_pool_alloc(tg_pool_t *pool, size_t n);
void *tg_pool_calloc(tg_pool_t *pool, size_t n);
char *tg_pool_strndup(tg_pool_t *pool, const char *s, size_t n);
/* Registers fn(data) to run at destroy/reset. Returns 0 or -1 (no memory:
 * fn is not registered). */
int tg_pool_cleanup(tg_pool_t *pool, void (*fn)(void *), void *data);
/* Runs the cleanups and frees all but the first chunk, for reuse. */
void tg_pool_reset(tg_pool_t *pool);
/* Runs the cleanups and frees everything. Accepts NULL. */
void tg_pool_destroy(tg_pool_t *pool);

#endif
