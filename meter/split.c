/* split.c: the pre-tokenizers of cl100k_base and o200k_base, written by hand.
 *
 * Each function returns where the piece starting at byte i ends, exactly
 * where tiktoken's regex (fancy-regex, leftmost-first alternation with
 * backtracking) would end its match at i. The alternatives are tried in the
 * regex's order; the comments quote each one. Input is valid UTF-8 (meter.c
 * replaces ill-formed bytes first). Every function runs in time linear in
 * the piece it returns (plus one character of look-ahead), so a whole text
 * splits in linear time.
 *
 * cl100k_base: '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|
 *              ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+
 * o200k_base:  [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|
 *              [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|
 *              \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * ((?i) folds with Unicode simple case folding, so 's also matches 'S and
 * U+017F LATIN SMALL LETTER LONG S.)
 */
#include <pthread.h>
#include <string.h>

#include "base/tg_base.h"
#include "meter/tg_meter_int.h"

extern const uint8_t tg_meter_data_unicode_classes[];
extern const uint64_t tg_meter_data_unicode_classes_len;

/* ---- Unicode classes ---------------------------------------------------- */

#define UC_BLOCKS (0x110000 >> 8)
static uint16_t uc_stage1[UC_BLOCKS];
static const uint8_t *uc_blocks;
static uint8_t uc_ascii[128];
static int uc_status = 1; /* 1: not loaded, 0: ok, <0: error */
static pthread_once_t uc_once = PTHREAD_ONCE_INIT;

static void uc_load(void)
{
    const uint8_t *d = tg_meter_data_unicode_classes;
    uint64_t len = tg_meter_data_unicode_classes_len;
    uint32_t nblocks;

    uc_status = TG_METER_EDATA;
    if (len < 12 + sizeof uc_stage1 || memcmp(d, "TGUC0001", 8) != 0)
        return;
    nblocks = (uint32_t)d[8] | (uint32_t)d[9] << 8 | (uint32_t)d[10] << 16 | (uint32_t)d[11] << 24;
    if (len != 12 + sizeof uc_stage1 + (uint64_t)nblocks * 256)
        return;
    for (size_t b = 0; b < UC_BLOCKS; b++) {
        uc_stage1[b] = (uint16_t)(d[12 + 2 * b] | d[13 + 2 * b] << 8);
        if (uc_stage1[b] >= nblocks)
            return;
    }
    uc_blocks = d + 12 + sizeof uc_stage1;
    for (int c = 0; c < 128; c++)
        uc_ascii[c] = uc_blocks[(size_t)uc_stage1[0] * 256 + (size_t)c];
    uc_status = 0;
}

int tg_meter_uc_init(char *err, size_t errlen)
{
    pthread_once(&uc_once, uc_load);
    if (uc_status != 0)
        return tg_errf(err, errlen, TG_METER_EDATA,
                       "the embedded Unicode class table is corrupt: rebuild after "
                       "meter/tools/fetch-ranks.sh");
    return 0;
}

/* Decodes the code point at s[i] (valid UTF-8) and its length. */
static inline uint32_t dec(const uint8_t *s, size_t i, size_t *l)
{
    uint8_t b = s[i];
    if (b < 0x80) {
        *l = 1;
        return b;
    }
    if (b < 0xE0) {
        *l = 2;
        return (uint32_t)(b & 0x1F) << 6 | (s[i + 1] & 0x3F);
    }
    if (b < 0xF0) {
        *l = 3;
        return (uint32_t)(b & 0x0F) << 12 | (uint32_t)(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F);
    }
    *l = 4;
    return (uint32_t)(b & 0x07) << 18 | (uint32_t)(s[i + 1] & 0x3F) << 12 |
           (uint32_t)(s[i + 2] & 0x3F) << 6 | (s[i + 3] & 0x3F);
}

static inline unsigned cls(uint32_t c)
{
    if (c < 128)
        return uc_ascii[c];
    return uc_blocks[(size_t)uc_stage1[c >> 8] * 256 + (c & 0xFF)];
}

/* End of the run of characters from i whose class has a bit of `mask`. */
static size_t run_in(const uint8_t *s, size_t n, size_t i, unsigned mask)
{
    while (i < n) {
        size_t l;
        if (s[i] < 0x80) {
            if (!(uc_ascii[s[i]] & mask))
                break;
            i++;
            continue;
        }
        if (!(cls(dec(s, i, &l)) & mask))
            break;
        i += l;
    }
    return i;
}

/* End of the run of characters from i whose class has no bit of `mask`. */
static size_t run_out(const uint8_t *s, size_t n, size_t i, unsigned mask)
{
    while (i < n) {
        size_t l;
        if (s[i] < 0x80) {
            if (uc_ascii[s[i]] & mask)
                break;
            i++;
            continue;
        }
        if (cls(dec(s, i, &l)) & mask)
            break;
        i += l;
    }
    return i;
}

static inline uint8_t lower(uint8_t b)
{
    return b >= 'A' && b <= 'Z' ? (uint8_t)(b + 32) : b;
}

/* Bytes matched by (?i:s|t|re|ve|m|ll|d) at s[a], 0 when none. */
static size_t contraction(const uint8_t *s, size_t n, size_t a)
{
    if (a >= n)
        return 0;
    switch (lower(s[a])) {
    case 's':
    case 't':
    case 'm':
    case 'd':
        return 1;
    case 'r':
    case 'v':
        return a + 1 < n && lower(s[a + 1]) == 'e' ? 2 : 0;
    case 'l':
        return a + 1 < n && lower(s[a + 1]) == 'l' ? 2 : 0;
    case 0xC5: /* U+017F folds to s */
        return a + 1 < n && s[a + 1] == 0xBF ? 2 : 0;
    default:
        return 0;
    }
}

/* \p{N}{1,3} at i (s[i] is a number). */
static size_t digits3(const uint8_t *s, size_t n, size_t i)
{
    size_t l;
    dec(s, i, &l);
    i += l;
    for (int k = 1; k < 3 && i < n; k++) {
        if (!(cls(dec(s, i, &l)) & UC_N))
            break;
        i += l;
    }
    return i;
}

/* \s*[\r\n]+ | \s+(?!\S) | \s+ at i (s[i] is white space). */
static size_t split_ws(const uint8_t *s, size_t n, size_t i)
{
    size_t j = i, last_nl = SIZE_MAX, last = i, nch = 0;
    while (j < n) {
        size_t l;
        uint32_t c = dec(s, j, &l);
        if (!(cls(c) & UC_WS))
            break;
        if (c == '\r' || c == '\n')
            last_nl = j;
        last = j;
        j += l;
        nch++;
    }
    if (last_nl != SIZE_MAX)
        return last_nl + 1; /* \s* backtracks to the last newline */
    if (j == n)
        return j; /* (?!\S) holds at the end */
    if (nch >= 2)
        return last; /* leave one space to join the next word */
    return j;
}

/* ` ?[^\s\p{L}\p{N}]+` then a trailing run of `tail` bytes; 0 if no match.
 * c/k: the code point at i and its class. */
static size_t punct(const uint8_t *s, size_t n, size_t i, uint32_t c, unsigned k, int slash)
{
    size_t j = i;
    if (c == ' ' && i + 1 < n) {
        size_t l;
        if (!(cls(dec(s, i + 1, &l)) & (UC_WS | UC_L | UC_N)))
            j = i + 1;
    }
    if (j == i && (k & (UC_WS | UC_L | UC_N)))
        return 0;
    j = run_out(s, n, j, UC_WS | UC_L | UC_N);
    while (j < n && (s[j] == '\r' || s[j] == '\n' || (slash && s[j] == '/')))
        j++;
    return j;
}

size_t split_cl100k(const uint8_t *s, size_t n, size_t i)
{
    size_t l, l2, r;
    uint32_t c = dec(s, i, &l);
    unsigned k = cls(c);

    /* '(?i:[sdmt]|ll|ve|re) */
    if (c == '\'' && (r = contraction(s, n, i + 1)) != 0)
        return i + 1 + r;
    /* [^\r\n\p{L}\p{N}]?+\p{L}+ */
    if (k & UC_L)
        return run_in(s, n, i + l, UC_L);
    if (!(k & UC_N) && c != '\r' && c != '\n' && i + l < n &&
        (cls(dec(s, i + l, &l2)) & UC_L))
        return run_in(s, n, i + l + l2, UC_L);
    /* \p{N}{1,3} */
    if (k & UC_N)
        return digits3(s, n, i);
    /*  ?[^\s\p{L}\p{N}]++[\r\n]* */
    if ((r = punct(s, n, i, c, k, 0)) != 0)
        return r;
    return split_ws(s, n, i);
}

/* The contraction suffix (?i:'s|'t|'re|'ve|'m|'ll|'d)? after a word. */
static size_t contr_opt(const uint8_t *s, size_t n, size_t r)
{
    size_t m;
    if (r < n && s[r] == '\'' && (m = contraction(s, n, r + 1)) != 0)
        return r + 1 + m;
    return r;
}

/* [UP]*[LO]+ contraction? from p; 0 when it does not match. */
static size_t word1(const uint8_t *s, size_t n, size_t p)
{
    size_t q = run_in(s, n, p, UC_UP), l, best = 0, j;
    if (q < n && (cls(dec(s, q, &l)) & UC_LO))
        return contr_opt(s, n, run_in(s, n, q, UC_LO));
    /* [UP]* gives back characters until [LO]+ can take the last one that
     * is also in LO (Lm, Lo, M are in both). */
    for (j = p; j < q; j += l)
        if (cls(dec(s, j, &l)) & UC_LO)
            best = j + l;
    return best ? contr_opt(s, n, best) : 0;
}

/* [UP]+[LO]* contraction? from p; 0 when it does not match. */
static size_t word2(const uint8_t *s, size_t n, size_t p)
{
    size_t l;
    if (p >= n || !(cls(dec(s, p, &l)) & UC_UP))
        return 0;
    return contr_opt(s, n, run_in(s, n, run_in(s, n, p, UC_UP), UC_LO));
}

size_t split_o200k(const uint8_t *s, size_t n, size_t i)
{
    size_t l, r;
    uint32_t c = dec(s, i, &l);
    unsigned k = cls(c);
    /* [^\r\n\p{L}\p{N}]? may take c as a prefix; each alternative first
     * tries with it, then without, before the next alternative. */
    int pre = c != '\r' && c != '\n' && !(k & (UC_L | UC_N)) && i + l < n;

    if (pre && (r = word1(s, n, i + l)) != 0)
        return r;
    if ((r = word1(s, n, i)) != 0)
        return r;
    if (pre && (r = word2(s, n, i + l)) != 0)
        return r;
    if ((r = word2(s, n, i)) != 0)
        return r;
    if (k & UC_N)
        return digits3(s, n, i);
    /*  ?[^\s\p{L}\p{N}]+[\r\n/]* */
    if ((r = punct(s, n, i, c, k, 1)) != 0)
        return r;
    return split_ws(s, n, i);
}
