/* bpe.c: one encoding's rank table and the byte-pair merge.
 *
 * The table maps a token's bytes to its id (= its rank) with open addressing
 * on a 64-bit multiplicative hash (8-byte slots, see rank_slot_t). Two-byte tokens also sit in a direct
 * 64K table, which starts every merge without hashing.
 *
 * The merge is tiktoken's: repeatedly join the adjacent pair whose joined
 * bytes have the lowest rank, the leftmost on ties, until no joined pair is
 * a token. tiktoken rescans all pairs after each join (quadratic). Short
 * pieces do the same here (it is fastest for them); longer ones keep the
 * parts in a linked list and the candidate pairs in a binary heap keyed by
 * (rank, position), dropping stale entries when popped: the same joins in
 * the same order, in O(n log n). Very long pieces use buckets per rank
 * instead of the heap (merge_huge), the same order again, with sequential
 * memory access.
 */
#include <stdlib.h>
#include <string.h>

#include "base/tg_b64.h"
#include "base/tg_base.h"
#include "meter/tg_meter_int.h"

#define NO_RANK UINT32_MAX
#define SMALL_PIECE 16 /* pieces up to this many bytes use the quadratic scan */
#define STACK_PIECE 512 /* longer pieces up to this use stack scratch for the heap merge */
#define HUGE_PIECE 4096 /* longer pieces use the bucket queue (merge_huge) */

static inline uint64_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 29);
}

static inline uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = n * 0x9E3779B97F4A7C15ull, w;
    while (n >= 8) {
        memcpy(&w, p, 8);
        h = mix((h ^ w) * 0xbf58476d1ce4e5b9ull);
        p += 8;
        n -= 8;
    }
    w = 0;
    memcpy(&w, p, n);
    return mix((h ^ w) * 0x94d049bb133111ebull);
}

/* The slot tag of p[0..n): the bytes themselves when they fit 32 bits (so
 * a match is exact without reading the token), else 32 bits of the hash. */
static inline uint32_t key_tag(const uint8_t *p, size_t n, uint64_t h)
{
    uint32_t t = 0;
    if (n > 4)
        return (uint32_t)(h >> 32);
    memcpy(&t, p, n);
    return t;
}

static inline uint32_t lookup(const bpe_enc_t *e, const uint8_t *p, size_t n)
{
    if (n > e->be_maxlen)
        return NO_RANK;
    uint64_t h = hash_bytes(p, n);
    uint32_t tag = key_tag(p, n, h), i = (uint32_t)h & e->be_mask;
    uint32_t want = (uint32_t)n << 24;
    for (;;) {
        const rank_slot_t *s = &e->be_slots[i];
        if (s->rs_meta == 0)
            return NO_RANK;
        if (s->rs_tag == tag && (s->rs_meta & 0xFF000000u) == want) {
            uint32_t id = (s->rs_meta & 0xFFFFFFu) - 1;
            if (n <= 4 || memcmp(e->be_blob + e->be_off[id], p, n) == 0)
                return id;
        }
        i = (i + 1) & e->be_mask;
    }
}

/* ---- loading ------------------------------------------------------------ */

int bpe_enc_load(bpe_enc_t *e, tg_meter_encoding_t id, const char *text, size_t len, char *err,
                 size_t errlen)
{
    const uint8_t *s = (const uint8_t *)text, *end = s + len;
    uint32_t ntok = 0, nslots = 1;
    int rc = 0;

    memset(e, 0, sizeof *e);
    e->be_id = id;
    for (size_t i = 0; i < len; i++)
        ntok += s[i] == '\n';
    while (nslots * 4 < ntok * 5u) /* load factor at most 4/5: see rank_slot_t */
        nslots <<= 1;
    /* base64 is 4/3 the size of the bytes, so len bounds the blob */
    e->be_blob = tg_malloc(len + 8);
    e->be_off = tg_malloc(((size_t)ntok + 1) * sizeof *e->be_off);
    e->be_slots = tg_calloc(nslots, sizeof *e->be_slots);
    e->be_pair = tg_malloc(65536 * sizeof *e->be_pair);
    if (!e->be_blob || !e->be_off || !e->be_slots || !e->be_pair) {
        rc = tg_errf(err, errlen, TG_METER_ENOMEM, "out of memory loading %s",
                     tg_meter_encoding_name(id));
        goto fail;
    }
    e->be_mask = nslots - 1;
    for (int b = 0; b < 256; b++)
        e->be_byte[b] = NO_RANK;
    for (int b = 0; b < 65536; b++)
        e->be_pair[b] = NO_RANK;

    uint32_t off = 0;
    for (uint32_t rank = 0; rank < ntok; rank++) {
        const uint8_t *sp = memchr(s, ' ', (size_t)(end - s));
        const uint8_t *nl = sp ? memchr(sp, '\n', (size_t)(end - sp)) : NULL;
        uint32_t r = 0;
        long n = sp && nl ? tg_b64_decode((const char *)s, (size_t)(sp - s), e->be_blob + off) : -1;
        for (const uint8_t *d = sp ? sp + 1 : nl; d && d < nl; d++)
            r = r * 10 + (uint32_t)(*d - '0');
        if (n <= 0 || n > 255 || r != rank || rank >= 0xFFFFFF) {
            rc = tg_errf(err, errlen, TG_METER_EDATA,
                         "embedded %s ranks are corrupt near rank %u: rebuild after "
                         "meter/tools/fetch-ranks.sh",
                         tg_meter_encoding_name(id), rank);
            goto fail;
        }
        e->be_off[rank] = off;
        if ((uint32_t)n > e->be_maxlen)
            e->be_maxlen = (uint32_t)n;
        if (n == 1)
            e->be_byte[e->be_blob[off]] = rank;
        if (n == 2)
            e->be_pair[e->be_blob[off] << 8 | e->be_blob[off + 1]] = rank;
        off += (uint32_t)n;
        s = nl + 1;
    }
    e->be_off[ntok] = off;
    e->be_ntok = ntok;
    for (int b = 0; b < 256; b++) {
        if (e->be_byte[b] == NO_RANK) {
            rc = tg_errf(err, errlen, TG_METER_EDATA, "embedded %s ranks miss byte 0x%02x",
                         tg_meter_encoding_name(id), b);
            goto fail;
        }
    }
    for (uint32_t t = 0; t < ntok; t++) {
        const uint8_t *p = e->be_blob + e->be_off[t];
        size_t n = e->be_off[t + 1] - e->be_off[t];
        uint64_t h = hash_bytes(p, n);
        uint32_t i = (uint32_t)h & e->be_mask;
        while (e->be_slots[i].rs_meta != 0)
            i = (i + 1) & e->be_mask;
        e->be_slots[i].rs_tag = key_tag(p, n, h);
        e->be_slots[i].rs_meta = (uint32_t)n << 24 | (t + 1);
    }
    return 0;

fail:
    bpe_enc_free(e);
    return rc;
}

void bpe_enc_free(bpe_enc_t *e)
{
    if (!e)
        return;
    tg_free(e->be_blob);
    tg_free(e->be_off);
    tg_free(e->be_slots);
    tg_free(e->be_pair);
    e->be_pair = NULL;
    e->be_blob = NULL;
    e->be_off = NULL;
    e->be_slots = NULL;
}

/* ---- merging ------------------------------------------------------------ */

/* tiktoken's loop for short pieces: parts[k] is a part's start and the rank
 * of joining it with the next part. */
static int merge_small(const bpe_enc_t *e, const uint8_t *p, size_t n, bpe_sink_t *sink)
{
    uint32_t start[SMALL_PIECE + 1], rank[SMALL_PIECE + 1], ids[SMALL_PIECE];
    size_t np = n + 1; /* parts incl. the end sentinel */

    for (size_t i = 0; i + 1 < n; i++) {
        start[i] = (uint32_t)i;
        rank[i] = e->be_pair[p[i] << 8 | p[i + 1]];
    }
    start[n - 1] = (uint32_t)(n - 1);
    rank[n - 1] = NO_RANK;
    start[n] = (uint32_t)n;
    rank[n] = NO_RANK;
    for (;;) {
        uint32_t best = NO_RANK;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < np; i++) {
            if (rank[i] < best) {
                best = rank[i];
                bi = i;
            }
        }
        if (best == NO_RANK)
            break;
        /* join part bi with bi+1, then re-rank bi-1 and bi */
        memmove(start + bi + 1, start + bi + 2, (np - bi - 2) * sizeof *start);
        memmove(rank + bi + 1, rank + bi + 2, (np - bi - 2) * sizeof *rank);
        np--;
        rank[bi] = bi + 2 < np ? lookup(e, p + start[bi], start[bi + 2] - start[bi]) : NO_RANK;
        if (bi > 0)
            rank[bi - 1] = bi + 1 < np ? lookup(e, p + start[bi - 1], start[bi + 1] - start[bi - 1])
                                       : NO_RANK;
    }
    for (size_t i = 0; i + 1 < np; i++)
        ids[i] = lookup(e, p + start[i], start[i + 1] - start[i]);
    return sink->bs_emit(sink, ids, np - 1);
}

/* Heap entries are (rank << 32 | start position): one integer compare
 * orders by rank, then leftmost. A 4-ary heap: half the depth of a binary
 * one, and the four children share a cache line. */
typedef uint64_t heap_ent_t;
#define HE(rank, pos) ((uint64_t)(rank) << 32 | (pos))

static inline void heap_down(heap_ent_t *h, size_t n, size_t i, heap_ent_t v)
{
    for (;;) {
        size_t c = 4 * i + 1, m = c;
        if (c >= n)
            break;
        for (size_t k = c + 1; k < c + 4 && k < n; k++)
            if (h[k] < h[m])
                m = k;
        if (h[m] >= v)
            break;
        h[i] = h[m];
        i = m;
    }
    h[i] = v;
}

static inline void heap_push(heap_ent_t *h, size_t *n, heap_ent_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t up = (i - 1) / 4;
        if (v >= h[up])
            break;
        h[i] = h[up];
        i = up;
    }
    h[i] = v;
}

static inline heap_ent_t heap_pop(heap_ent_t *h, size_t *n)
{
    heap_ent_t top = h[0];
    if (--*n > 0)
        heap_down(h, *n, 0, h[*n]);
    return top;
}

/* The heap merge. Parts are identified by their start byte; nxt/prv link the
 * live ones; rk[x] is the current rank of joining part x with its next. */
static int merge_large(const bpe_enc_t *e, const uint8_t *p, size_t n, bpe_sink_t *sink)
{
    uint32_t s_nxt[STACK_PIECE], s_prv[STACK_PIECE], s_rk[STACK_PIECE];
    heap_ent_t s_h[3 * STACK_PIECE];
    int big = n > STACK_PIECE;
    uint32_t *nxt = big ? tg_malloc(n * sizeof *nxt) : s_nxt;
    uint32_t *prv = big ? tg_malloc(n * sizeof *prv) : s_prv;
    uint32_t *rk = big ? tg_malloc(n * sizeof *rk) : s_rk;
    heap_ent_t *h = big ? tg_malloc(3 * n * sizeof *h) : s_h;
    uint32_t ids[256];
    size_t hn = 0, nid = 0;
    int rc = 0;

    if (!nxt || !prv || !rk || !h) {
        rc = TG_METER_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        nxt[i] = (uint32_t)(i + 1); /* n marks the end */
        prv[i] = (uint32_t)(i - 1); /* wraps for 0: never read */
        rk[i] = i + 1 < n ? e->be_pair[p[i] << 8 | p[i + 1]] : NO_RANK;
        if (rk[i] != NO_RANK)
            h[hn++] = HE(rk[i], i);
    }
    for (size_t i = hn / 4 + 1; i-- > 0;) /* heapify in O(n) */
        if (i < hn)
            heap_down(h, hn, i, h[i]);
    while (hn > 0) {
        heap_ent_t t = heap_pop(h, &hn);
        uint32_t x = (uint32_t)t;
        if (rk[x] != (uint32_t)(t >> 32))
            continue; /* stale: x was re-ranked or absorbed since */
        uint32_t y = nxt[x], z = nxt[y];
        nxt[x] = z;
        if (z < n)
            prv[z] = x;
        rk[y] = NO_RANK; /* y is gone */
        /* x now spans [x, z); re-rank x with z, and x's previous part with x */
        rk[x] = z < n ? lookup(e, p + x, nxt[z] - x) : NO_RANK;
        if (rk[x] != NO_RANK)
            heap_push(h, &hn, HE(rk[x], x));
        if (x > 0) {
            uint32_t w = prv[x];
            rk[w] = lookup(e, p + w, z - w);
            if (rk[w] != NO_RANK)
                heap_push(h, &hn, HE(rk[w], w));
        }
    }
    for (uint32_t x = 0; x < n; x = nxt[x]) {
        ids[nid++] = lookup(e, p + x, nxt[x] - x);
        if (nid == sizeof ids / sizeof ids[0]) {
            if ((rc = sink->bs_emit(sink, ids, nid)) != 0)
                goto done;
            nid = 0;
        }
    }
    if (nid)
        rc = sink->bs_emit(sink, ids, nid);
done:
    if (big) {
        tg_free(nxt);
        tg_free(prv);
        tg_free(rk);
        tg_free(h);
    }
    return rc;
}

/* ---- very long pieces: a bucket queue ---------------------------------- */

/* For a long piece (a hostile run of one character, a huge block of
 * whitespace) the heap is the cost: every pop walks a tree of millions of
 * entries, most of them cache misses. The same (rank, position) order comes
 * from one bucket per distinct rank holding its positions, and a small heap
 * of the distinct ranks. Positions mostly arrive in increasing order (merges
 * sweep left to right), so a bucket is usually consumed front to back with
 * no sorting; one that received an out-of-order position is sorted before
 * its next pop. Pops read memory sequentially. */
typedef struct bucket {
    uint32_t *bk_pos;    /* positions; bk_pos[bk_head..bk_len) are pending */
    uint32_t bk_head, bk_len, bk_cap;
    uint32_t bk_rank;
    uint8_t bk_active;   /* in the rank heap */
    uint8_t bk_unsorted; /* pending positions may be out of order */
} bucket_t;

typedef struct bqueue {
    bucket_t *bq_b;    /* buckets, bq_nb used */
    uint32_t bq_nb, bq_capb;
    uint32_t *bq_map;  /* rank -> bucket index + 1, open addressing */
    uint32_t bq_mask;
    uint32_t *bq_heap; /* indices of active buckets, min-heap by rank */
    uint32_t bq_hn, bq_hcap;
} bqueue_t;

static void bq_free(bqueue_t *q)
{
    for (uint32_t i = 0; i < q->bq_nb; i++)
        tg_free(q->bq_b[i].bk_pos);
    tg_free(q->bq_b);
    tg_free(q->bq_map);
    tg_free(q->bq_heap);
}

static inline uint32_t rank_slot(uint32_t rank, uint32_t mask)
{
    return (uint32_t)(((uint64_t)rank * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

/* Index of the bucket for rank, created if new; -1 when out of memory. */
static long bq_bucket(bqueue_t *q, uint32_t rank)
{
    uint32_t i = rank_slot(rank, q->bq_mask);
    while (q->bq_map[i]) {
        if (q->bq_b[q->bq_map[i] - 1].bk_rank == rank)
            return q->bq_map[i] - 1;
        i = (i + 1) & q->bq_mask;
    }
    if (q->bq_nb == q->bq_capb) {
        uint32_t cap = q->bq_capb * 2;
        bucket_t *b = tg_realloc(q->bq_b, cap * sizeof *b);
        uint32_t *h = tg_realloc(q->bq_heap, cap * sizeof *h);
        if (b)
            q->bq_b = b;
        if (h)
            q->bq_heap = h;
        if (!b || !h)
            return -1;
        q->bq_capb = q->bq_hcap = cap;
    }
    if ((q->bq_nb + 1) * 2 > q->bq_mask + 1) { /* keep the map at most half full */
        uint32_t mask = q->bq_mask * 2 + 1;
        uint32_t *m = tg_calloc((size_t)mask + 1, sizeof *m);
        if (!m)
            return -1;
        for (uint32_t k = 0; k < q->bq_nb; k++) {
            uint32_t j = rank_slot(q->bq_b[k].bk_rank, mask);
            while (m[j])
                j = (j + 1) & mask;
            m[j] = k + 1;
        }
        tg_free(q->bq_map);
        q->bq_map = m;
        q->bq_mask = mask;
        i = rank_slot(rank, mask);
        while (q->bq_map[i])
            i = (i + 1) & mask;
    }
    memset(&q->bq_b[q->bq_nb], 0, sizeof q->bq_b[0]);
    q->bq_b[q->bq_nb].bk_rank = rank;
    q->bq_map[i] = q->bq_nb + 1;
    return q->bq_nb++;
}

static void bq_heap_down(bqueue_t *q, uint32_t i)
{
    uint32_t v = q->bq_heap[i], r = q->bq_b[v].bk_rank;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= q->bq_hn)
            break;
        if (c + 1 < q->bq_hn && q->bq_b[q->bq_heap[c + 1]].bk_rank < q->bq_b[q->bq_heap[c]].bk_rank)
            c++;
        if (q->bq_b[q->bq_heap[c]].bk_rank >= r)
            break;
        q->bq_heap[i] = q->bq_heap[c];
        i = c;
    }
    q->bq_heap[i] = v;
}

static int bq_push(bqueue_t *q, uint32_t rank, uint32_t pos)
{
    long bi = bq_bucket(q, rank);
    if (bi < 0)
        return TG_METER_ENOMEM;
    bucket_t *b = &q->bq_b[bi];
    if (b->bk_len == b->bk_cap) {
        uint32_t cap = b->bk_cap ? b->bk_cap * 2 : 64;
        uint32_t *p = tg_realloc(b->bk_pos, cap * sizeof *p);
        if (!p)
            return TG_METER_ENOMEM;
        b->bk_pos = p;
        b->bk_cap = cap;
    }
    if (b->bk_len > b->bk_head && pos < b->bk_pos[b->bk_len - 1])
        b->bk_unsorted = 1;
    b->bk_pos[b->bk_len++] = pos;
    if (!b->bk_active) {
        uint32_t i = q->bq_hn++;
        b->bk_active = 1;
        while (i > 0 && q->bq_b[q->bq_heap[(i - 1) / 2]].bk_rank > rank) {
            q->bq_heap[i] = q->bq_heap[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        q->bq_heap[i] = (uint32_t)bi;
    }
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Pops the least (rank, position); returns 0 when the queue is empty. */
static int bq_pop(bqueue_t *q, uint32_t *rank, uint32_t *pos)
{
    if (q->bq_hn == 0)
        return 0;
    bucket_t *b = &q->bq_b[q->bq_heap[0]];
    if (b->bk_unsorted) {
        qsort(b->bk_pos + b->bk_head, b->bk_len - b->bk_head, sizeof *b->bk_pos, cmp_u32);
        b->bk_unsorted = 0;
    }
    *rank = b->bk_rank;
    *pos = b->bk_pos[b->bk_head++];
    if (b->bk_head == b->bk_len) { /* empty: leave the heap, keep the memory */
        b->bk_head = b->bk_len = 0;
        b->bk_active = 0;
        q->bq_heap[0] = q->bq_heap[--q->bq_hn];
        if (q->bq_hn)
            bq_heap_down(q, 0);
    }
    return 1;
}

/* merge_large's algorithm with the bucket queue instead of the heap. */
static int merge_huge(const bpe_enc_t *e, const uint8_t *p, size_t n, bpe_sink_t *sink)
{
    uint32_t *nxt = tg_malloc(n * sizeof *nxt), *prv = tg_malloc(n * sizeof *prv);
    uint32_t *rk = tg_malloc(n * sizeof *rk);
    uint32_t ids[256], r, x;
    bqueue_t q = {0};
    size_t nid = 0;
    int rc = 0;

    q.bq_capb = q.bq_hcap = 64;
    q.bq_mask = 255;
    q.bq_b = tg_malloc(q.bq_capb * sizeof *q.bq_b);
    q.bq_heap = tg_malloc(q.bq_hcap * sizeof *q.bq_heap);
    q.bq_map = tg_calloc(q.bq_mask + 1, sizeof *q.bq_map);
    if (!nxt || !prv || !rk || !q.bq_b || !q.bq_heap || !q.bq_map) {
        rc = TG_METER_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        nxt[i] = (uint32_t)(i + 1);
        prv[i] = (uint32_t)(i - 1);
        rk[i] = i + 1 < n ? e->be_pair[p[i] << 8 | p[i + 1]] : NO_RANK;
        if (rk[i] != NO_RANK && (rc = bq_push(&q, rk[i], (uint32_t)i)) != 0)
            goto done;
    }
    while (bq_pop(&q, &r, &x)) {
        if (rk[x] != r)
            continue; /* stale */
        uint32_t y = nxt[x], z = nxt[y];
        nxt[x] = z;
        if (z < n)
            prv[z] = x;
        rk[y] = NO_RANK;
        rk[x] = z < n ? lookup(e, p + x, nxt[z] - x) : NO_RANK;
        if (rk[x] != NO_RANK && (rc = bq_push(&q, rk[x], x)) != 0)
            goto done;
        if (x > 0) {
            uint32_t w = prv[x];
            rk[w] = lookup(e, p + w, z - w);
            if (rk[w] != NO_RANK && (rc = bq_push(&q, rk[w], w)) != 0)
                goto done;
        }
    }
    for (x = 0; x < n; x = nxt[x]) {
        ids[nid++] = lookup(e, p + x, nxt[x] - x);
        if (nid == sizeof ids / sizeof ids[0]) {
            if ((rc = sink->bs_emit(sink, ids, nid)) != 0)
                goto done;
            nid = 0;
        }
    }
    if (nid)
        rc = sink->bs_emit(sink, ids, nid);
done:
    bq_free(&q);
    tg_free(nxt);
    tg_free(prv);
    tg_free(rk);
    return rc;
}

int bpe_piece(const bpe_enc_t *e, const uint8_t *p, size_t n, bpe_sink_t *sink)
{
    uint32_t id;
    if (n == 1)
        return sink->bs_emit(sink, &e->be_byte[p[0]], 1);
    if ((id = lookup(e, p, n)) != NO_RANK)
        return sink->bs_emit(sink, &id, 1);
    if (n <= SMALL_PIECE)
        return merge_small(e, p, n, sink);
    if (n <= HUGE_PIECE)
        return merge_large(e, p, n, sink);
    return merge_huge(e, p, n, sink);
}
