/* tg_base: error buffers, counted allocation, dynamic buffers and request
 * pools shared by every module (see tg_base.h). */
#include "base/tg_base.h"

#include <assert.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors ------------------------------------------------------------- */

int tg_errf(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err == NULL || errlen == 0 || err[0] != '\0')
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

/* ---- memory ------------------------------------------------------------- */

static atomic_long live_blocks;
static atomic_long fail_budget = -1; /* < 0: never fail */

static int may_allocate(void)
{
    long b = atomic_load(&fail_budget);
    while (b >= 0) {
        if (b == 0)
            return 0;
        if (atomic_compare_exchange_weak(&fail_budget, &b, b - 1))
            return 1;
    }
    return 1;
}

void *tg_malloc(size_t n)
{
    if (!may_allocate())
        return NULL;
    void *p = malloc(n ? n : 1);
    if (p)
        atomic_fetch_add(&live_blocks, 1);
    return p;
}

void *tg_calloc(size_t count, size_t size)
{
    if (!may_allocate())
        return NULL;
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (p)
        atomic_fetch_add(&live_blocks, 1);
    return p;
}

void *tg_realloc(void *p, size_t n)
{
    if (p == NULL)
        return tg_malloc(n);
    if (!may_allocate())
        return NULL;
    return realloc(p, n ? n : 1);
}

char *tg_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *d = tg_malloc(len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

char *tg_strdup(const char *s)
{
    return tg_strndup(s, strlen(s));
}

void tg_free(void *p)
{
    if (p == NULL)
        return;
    atomic_fetch_sub(&live_blocks, 1);
    free(p);
}

long tg_alloc_live(void)
{
    return atomic_load(&live_blocks);
}

void tg_alloc_fail_after(long n)
{
    atomic_store(&fail_budget, n < 0 ? -1 : n);
}

/* ---- dynamic buffer ----------------------------------------------------- */

void tg_buf_init(tg_buf_t *b, size_t max)
{
    b->b_data = NULL;
    b->b_len = 0;
    b->b_cap = 0;
    b->b_max = max;
}

static int buf_reserve(tg_buf_t *b, size_t extra)
{
    /* The + 1 for the NUL must not wrap: a buffer never holds SIZE_MAX bytes. */
    if (extra > b->b_max || b->b_len > b->b_max - extra || b->b_len + extra == SIZE_MAX)
        return TG_BUF_ETOOBIG;
    size_t need = b->b_len + extra + 1;
    if (need <= b->b_cap)
        return 0;
    size_t cap = b->b_cap ? b->b_cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (b->b_max < SIZE_MAX && cap > b->b_max + 1)
        cap = b->b_max + 1;
    char *d = tg_realloc(b->b_data, cap);
    if (d == NULL)
        return TG_BUF_ENOMEM;
    b->b_data = d;
    b->b_cap = cap;
    return 0;
}

int tg_buf_reserve(tg_buf_t *b, size_t n)
{
    return buf_reserve(b, n);
}

int tg_buf_append(tg_buf_t *b, const void *p, size_t n)
{
    /* room for n and the NUL already: the common case, without
     * buf_reserve's overflow checks (which b_cap <= b_max + 1 makes safe) */
    assert(b->b_cap == 0 || b->b_cap - 1 <= b->b_max);
    if (b->b_cap - b->b_len <= n) {
        int rc = buf_reserve(b, n);
        if (rc)
            return rc;
    }
    if (n)
        memcpy(b->b_data + b->b_len, p, n);
    b->b_len += n;
    b->b_data[b->b_len] = '\0';
    return 0;
}

int tg_buf_puts(tg_buf_t *b, const char *s)
{
    return tg_buf_append(b, s, strlen(s));
}

size_t tg_fmt_u64(char *out, unsigned long long v)
{
    char d[24];
    size_t i = sizeof d;
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(out, d + i, sizeof d - i);
    out[sizeof d - i] = '\0';
    return sizeof d - i;
}

void tg_fmt_hex(char *out, unsigned long long v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        out[i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    }
    out[width] = '\0';
}

static int buf_put_digits(tg_buf_t *b, unsigned long long v, unsigned base)
{
    char d[24];
    size_t i = sizeof d;
    do {
        d[--i] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    return tg_buf_append(b, d + i, sizeof d - i);
}

int tg_buf_putu(tg_buf_t *b, unsigned long long v)
{
    return buf_put_digits(b, v, 10);
}

int tg_buf_putx(tg_buf_t *b, unsigned long long v)
{
    return buf_put_digits(b, v, 16);
}

int tg_buf_vprintf(tg_buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return TG_BUF_ENOMEM;
    int rc = buf_reserve(b, (size_t)n);
    if (rc)
        return rc;
    vsnprintf(b->b_data + b->b_len, (size_t)n + 1, fmt, ap);
    b->b_len += (size_t)n;
    return 0;
}

int tg_buf_printf(tg_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = tg_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void tg_buf_reset(tg_buf_t *b)
{
    b->b_len = 0;
    if (b->b_data)
        b->b_data[0] = '\0';
}

char *tg_buf_steal(tg_buf_t *b, size_t *len)
{
    char *d = b->b_data;
    if (len)
        *len = b->b_len;
    b->b_data = NULL;
    b->b_len = b->b_cap = 0;
    return d;
}

void tg_buf_free(tg_buf_t *b)
{
    tg_free(b->b_data);
    b->b_data = NULL;
    b->b_len = b->b_cap = 0;
}

/* ---- request pool ------------------------------------------------------- */

typedef struct pool_chunk {
    struct pool_chunk *c_next;
    size_t c_size; /* usable bytes in c_mem */
    size_t c_used;
    _Alignas(max_align_t) unsigned char c_mem[];
} pool_chunk_t;

typedef struct pool_cleanup {
    struct pool_cleanup *pc_next;
    void (*pc_fn)(void *);
    void *pc_data;
} pool_cleanup_t;

struct tg_pool {
    pool_chunk_t *p_chunks; /* newest first; the last one is the first chunk */
    pool_cleanup_t *p_cleanups;
    size_t p_chunk_size;
};

static pool_chunk_t *chunk_new(size_t size)
{
    pool_chunk_t *c = tg_malloc(sizeof(*c) + size);
    if (c) {
        c->c_next = NULL;
        c->c_size = size;
        c->c_used = 0;
    }
    return c;
}

tg_pool_t *tg_pool_create(size_t chunk_size)
{
    tg_pool_t *p = tg_malloc(sizeof(*p));
    if (p == NULL)
        return NULL;
    p->p_chunk_size = chunk_size ? chunk_size : 4096;
    p->p_cleanups = NULL;
    p->p_chunks = chunk_new(p->p_chunk_size);
    if (p->p_chunks == NULL) {
        tg_free(p);
        return NULL;
    }
    return p;
}

void *tg_pool_alloc(tg_pool_t *pool, size_t n)
{
    const size_t align = _Alignof(max_align_t);
    n = (n + align - 1) & ~(align - 1);
    if (n == 0)
        n = align;
    pool_chunk_t *c = pool->p_chunks;
    if (c->c_size - c->c_used < n) {
        /* Large requests get a chunk of their own behind the current one, so
         * the current chunk's free space is not wasted. */
        size_t size = n > pool->p_chunk_size / 4 ? n : pool->p_chunk_size;
        pool_chunk_t *nc = chunk_new(size);
        if (nc == NULL)
            return NULL;
        if (size == n) {
            nc->c_next = c->c_next;
            c->c_next = nc;
            nc->c_used = n;
            return nc->c_mem;
        }
        nc->c_next = c;
        pool->p_chunks = c = nc;
    }
    void *r = c->c_mem + c->c_used;
    c->c_used += n;
    return r;
}

void *tg_pool_calloc(tg_pool_t *pool, size_t n)
{
    void *p = tg_pool_alloc(pool, n);
    if (p)
        memset(p, 0, n);
    return p;
}

char *tg_pool_strndup(tg_pool_t *pool, const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *d = tg_pool_alloc(pool, len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

int tg_pool_cleanup(tg_pool_t *pool, void (*fn)(void *), void *data)
{
    pool_cleanup_t *c = tg_pool_alloc(pool, sizeof(*c));
    if (c == NULL)
        return -1;
    c->pc_fn = fn;
    c->pc_data = data;
    c->pc_next = pool->p_cleanups;
    pool->p_cleanups = c;
    return 0;
}

static void pool_run_cleanups(tg_pool_t *pool)
{
    /* A cleanup may not allocate from the pool, so detach the list first. */
    pool_cleanup_t *c = pool->p_cleanups;
    pool->p_cleanups = NULL;
    for (; c; c = c->pc_next)
        c->pc_fn(c->pc_data);
}

void tg_pool_reset(tg_pool_t *pool)
{
    pool_run_cleanups(pool);
    pool_chunk_t *c = pool->p_chunks;
    while (c->c_next) {
        pool_chunk_t *n = c->c_next;
        tg_free(c);
        c = n;
    }
    c->c_used = 0;
    pool->p_chunks = c;
}

void tg_pool_destroy(tg_pool_t *pool)
{
    if (pool == NULL)
        return;
    pool_run_cleanups(pool);
    pool_chunk_t *c = pool->p_chunks;
    while (c) {
        pool_chunk_t *n = c->c_next;
        tg_free(c);
        c = n;
    }
    tg_free(pool);
}
