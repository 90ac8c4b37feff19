/* json.c: the depth-aware JSON cursor (json.h). One validating pass over
 * the text with no tree and no allocation: containers are entered and left
 * by the caller, everything else is skipped with the same grammar checks,
 * so the bytes the gateway reads are the ones a JSON parser downstream
 * reads (escaped names decode: "\u0075sage" is "usage"). */
#include <stdio.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TG_JSON_AVX2 1
#endif

#include "agent/json.h"
#include "agent/tg_agent.h"
#include "base/tg_utf8.h"

static int fail(tg_json_t *j, const char *what)
{
    if (j->j_pos >= j->j_len)
        return tg_errf(j->j_err, j->j_errlen, TG_AGENT_EJSON,
                       "malformed JSON at byte %zu: unexpected end of input, %s", j->j_pos, what);
    unsigned char c = (unsigned char)j->j_p[j->j_pos];
    if (c >= 0x20 && c < 0x7f)
        return tg_errf(j->j_err, j->j_errlen, TG_AGENT_EJSON, "malformed JSON at byte %zu: unexpected '%c', %s",
                       j->j_pos, c, what);
    return tg_errf(j->j_err, j->j_errlen, TG_AGENT_EJSON, "malformed JSON at byte %zu: unexpected byte 0x%02x, %s",
                   j->j_pos, c, what);
}

/* Whitespace. The position is kept in a local: j_p is a char pointer, so
 * a loop on j->j_pos would store and reload it at every byte. */
static inline void ws(tg_json_t *j)
{
    const char *p = j->j_p;
    size_t i = j->j_pos, n = j->j_len;
    if (i < n && (unsigned char)p[i] > ' ')
        return; /* the usual case: a token right here */
    while (i < n && (p[i] == ' ' || p[i] == '\n' || p[i] == '\r' || p[i] == '\t'))
        i++;
    j->j_pos = i;
}

void tg_json_init(tg_json_t *j, const char *p, size_t n, char *err, size_t errlen)
{
    memset(j, 0, sizeof *j);
    j->j_p = p ? p : "";
    j->j_len = p ? n : 0;
    j->j_err = err;
    j->j_errlen = err ? errlen : 0;
}

int tg_json_peek(tg_json_t *j)
{
    ws(j);
    if (j->j_pos >= j->j_len)
        return TG_JSON_END;
    switch (j->j_p[j->j_pos]) {
    case '{': return TG_JSON_OBJECT;
    case '[': return TG_JSON_ARRAY;
    case '"': return TG_JSON_STRING;
    case 't': return TG_JSON_TRUE;
    case 'f': return TG_JSON_FALSE;
    case 'n': return TG_JSON_NULL;
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9': return TG_JSON_NUMBER;
    default: return TG_JSON_BAD;
    }
}

/* ---- strings ------------------------------------------------------------ */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static size_t put_utf8(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Reads \uXXXX at j_pos (after the backslash-u). */
static int hex4(tg_json_t *j, uint32_t *cp)
{
    if (j->j_len - j->j_pos < 4)
        return fail(j, "expected 4 hex digits after \\u");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(j->j_p[j->j_pos]);
        if (h < 0)
            return fail(j, "expected a hex digit in \\u escape");
        v = (v << 4) | (uint32_t)h;
        j->j_pos++;
    }
    *cp = v;
    return 0;
}

/* Whether the cursor is at a low-surrogate escape (\uDC00..\uDFFF); *lo
 * gets it. Moves nothing and reports no error: a high surrogate without
 * one is decoded alone. */
static int low_escape(const tg_json_t *j, uint32_t *lo)
{
    uint32_t v = 0;
    if (j->j_len - j->j_pos < 6 || j->j_p[j->j_pos] != '\\' || j->j_p[j->j_pos + 1] != 'u')
        return 0;
    for (size_t i = 2; i < 6; i++) {
        int h = hexval(j->j_p[j->j_pos + i]);
        if (h < 0)
            return 0;
        v = (v << 4) | (uint32_t)h;
    }
    *lo = v;
    return v >= 0xdc00 && v <= 0xdfff;
}

#if TG_JSON_AVX2
/* plain_run, 32 bytes at a time, on CPUs with AVX2 (asked at run time:
 * x86-64's baseline is SSE2). Returns the first stop byte's position, or
 * where fewer than 32 bytes are left. */
__attribute__((target("avx2"))) static size_t plain_run_avx2(const char *p, size_t pos, size_t len)
{
    const __m256i quote = _mm256_set1_epi8('"'), bslash = _mm256_set1_epi8('\\'),
                  space = _mm256_set1_epi8(0x20);
    while (len - pos >= 32) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(p + pos));
        __m256i stop =
            _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(x, quote), _mm256_cmpeq_epi8(x, bslash)),
                            _mm256_cmpgt_epi8(space, x));
        unsigned m = (unsigned)_mm256_movemask_epi8(stop);
        if (m)
            return pos + (size_t)__builtin_ctz(m);
        pos += 32;
    }
    return pos;
}
#endif

/* Skips bytes while none of them ends a plain run (a quote, a backslash,
 * a control byte or a non-ASCII byte): 32 at a time with AVX2 when the
 * CPU has it and 64 or more bytes are left, then 16 at a time with SSE2
 * (x86-64's baseline; a signed compare below 0x20 catches the control and
 * the non-ASCII bytes at once), then 8 at a time with the classic "has a zero byte" / "has a
 * byte below n" word tricks. Returns the position of that first byte
 * (little-endian GCC/clang; elsewhere of the word that holds it), or of
 * the last few bytes; the caller's byte loop goes on from there. A 100 KB
 * prompt is one long run: 2.9 instructions a byte with words alone, 1.1
 * with SSE2, 0.5 with AVX2 (callgrind). */
static size_t plain_run(const char *p, size_t pos, size_t len)
{
#if TG_JSON_AVX2
    if (len - pos >= 64 && __builtin_cpu_supports("avx2"))
        pos = plain_run_avx2(p, pos, len);
#endif
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    while (len - pos >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(p + pos));
        __m128i stop = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
                                    _mm_cmplt_epi8(x, space));
        unsigned m = (unsigned)_mm_movemask_epi8(stop);
        if (m)
            return pos + (size_t)__builtin_ctz(m);
        pos += 16;
    }
#endif
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    while (len - pos >= 8) {
        uint64_t x;
        memcpy(&x, p + pos, 8);
        uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
        uint64_t stop = (((q - ones) & ~q) | ((b - ones) & ~b) | (x - ones * 0x20) | x) & highs;
        if (stop) {
#if defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            /* the lowest flagged byte is exact (no borrow reaches it
             * from plain bytes below): the stop byte itself */
            pos += (size_t)__builtin_ctzll(stop) >> 3;
#endif
            break;
        }
        pos += 8;
    }
    return pos;
}

/* Scans the string at the cursor (its opening quote). Decoded bytes go to
 * sink (when set), else to out[0..outlen) (when set: truncated, NUL-
 * terminated, *trunc set when they did not fit). */
static int string(tg_json_t *j, tg_buf_t *sink, char *out, size_t outlen, int *trunc)
{
    size_t o = 0;
    char tmp[4];
    if (j->j_pos >= j->j_len || j->j_p[j->j_pos] != '"')
        return fail(j, "expected a string");
    j->j_pos++;
    for (;;) {
        if (j->j_pos >= j->j_len)
            return fail(j, "unterminated string");
        unsigned char c = (unsigned char)j->j_p[j->j_pos];
        const char *src = tmp;
        size_t n;
        if (c == '"') {
            j->j_pos++;
            break;
        }
        if (c < 0x20)
            return fail(j, "control character in string");
        if (c == '\\') {
            j->j_pos++;
            if (j->j_pos >= j->j_len)
                return fail(j, "unterminated escape");
            char e = j->j_p[j->j_pos++];
            switch (e) {
            case '"': case '\\': case '/': tmp[0] = e; n = 1; break;
            case 'b': tmp[0] = '\b'; n = 1; break;
            case 'f': tmp[0] = '\f'; n = 1; break;
            case 'n': tmp[0] = '\n'; n = 1; break;
            case 'r': tmp[0] = '\r'; n = 1; break;
            case 't': tmp[0] = '\t'; n = 1; break;
            case 'u': {
                uint32_t cp = 0, lo = 0;
                int rc = hex4(j, &cp);
                if (rc)
                    return rc;
                /* A surrogate that is not half of a pair is valid JSON
                 * (RFC 8259 allows it; JSON.parse takes it): it decodes to
                 * U+FFFD, so the decoded bytes stay UTF-8. */
                if (cp >= 0xd800 && cp <= 0xdbff && low_escape(j, &lo)) {
                    j->j_pos += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                } else if (cp >= 0xd800 && cp <= 0xdfff) {
                    cp = 0xfffd;
                }
                n = put_utf8(tmp, cp);
                break;
            }
            default:
                j->j_pos--;
                return fail(j, "invalid escape");
            }
        } else if (c < 0x80) {
            /* a run of plain bytes in one copy */
            const unsigned char *q = (const unsigned char *)j->j_p;
            size_t s = j->j_pos, e = plain_run(j->j_p, s, j->j_len), end = j->j_len;
            while (e < end && q[e] != '"' && q[e] != '\\' && q[e] >= 0x20 && q[e] < 0x80)
                e++;
            j->j_pos = e;
            src = j->j_p + s;
            n = e - s;
        } else {
            n = tg_utf8_seq((const unsigned char *)j->j_p + j->j_pos, j->j_len - j->j_pos);
            if (n == 0)
                return fail(j, "invalid UTF-8 in string");
            src = j->j_p + j->j_pos;
            j->j_pos += n;
        }
        if (sink) {
            if (tg_buf_append(sink, src, n))
                return tg_errf(j->j_err, j->j_errlen, TG_AGENT_ETOOBIG, "decoded string too large");
        } else if (out) {
            size_t k = o + n < outlen ? n : (outlen > o + 1 ? outlen - o - 1 : 0);
            if (k < n && (unsigned char)src[0] >= 0x80)
                k = 0; /* one character: whole or not at all */
            memcpy(out + o, src, k);
            o += k;
            if (k < n && trunc)
                *trunc = 1;
        }
    }
    if (out && outlen)
        out[o] = '\0';
    return 0;
}

int tg_json_string(tg_json_t *j, tg_buf_t *out)
{
    ws(j);
    return string(j, out, NULL, 0, NULL);
}

int tg_json_string_to(tg_json_t *j, char *out, size_t outlen, int *trunc)
{
    ws(j);
    if (trunc)
        *trunc = 0;
    return string(j, NULL, out, outlen, trunc);
}

/* ---- numbers and literals ----------------------------------------------- */

/* Steps over a number; *is_int gets whether it is digits only (no sign,
 * fraction or exponent). */
static int number(tg_json_t *j, int *is_int)
{
    size_t p = j->j_pos;
    const char *b = j->j_p;
    size_t n = j->j_len;
    *is_int = 1;
    if (p < n && b[p] == '-') {
        p++;
        *is_int = 0;
    }
    if (p >= n)
        goto bad;
    if (b[p] == '0') {
        p++;
    } else if (b[p] >= '1' && b[p] <= '9') {
        while (p < n && b[p] >= '0' && b[p] <= '9')
            p++;
    } else {
        goto bad;
    }
    if (p < n && b[p] == '.') {
        p++;
        *is_int = 0;
        if (p >= n || b[p] < '0' || b[p] > '9')
            goto bad;
        while (p < n && b[p] >= '0' && b[p] <= '9')
            p++;
    }
    if (p < n && (b[p] == 'e' || b[p] == 'E')) {
        p++;
        *is_int = 0;
        if (p < n && (b[p] == '+' || b[p] == '-'))
            p++;
        if (p >= n || b[p] < '0' || b[p] > '9')
            goto bad;
        while (p < n && b[p] >= '0' && b[p] <= '9')
            p++;
    }
    j->j_pos = p;
    return 0;
bad:
    j->j_pos = p;
    return fail(j, "invalid number");
}

int tg_json_uint(tg_json_t *j, uint64_t max, uint64_t *v)
{
    if (tg_json_peek(j) != TG_JSON_NUMBER)
        return fail(j, "expected a number");
    size_t s = j->j_pos;
    int is_int, rc;
    if ((rc = number(j, &is_int)) != 0)
        return rc;
    if (!is_int)
        return TG_AGENT_ERANGE;
    uint64_t x = 0;
    for (size_t i = s; i < j->j_pos; i++) {
        unsigned d = (unsigned)(j->j_p[i] - '0');
        if (d > max || x > (max - d) / 10)
            return TG_AGENT_ERANGE;
        x = x * 10 + d;
    }
    *v = x;
    return 0;
}

static int literal(tg_json_t *j, const char *word)
{
    size_t n = strlen(word);
    if (j->j_len - j->j_pos < n || memcmp(j->j_p + j->j_pos, word, n) != 0)
        return fail(j, "expected a value");
    j->j_pos += n;
    return 0;
}

/* ---- containers ---------------------------------------------------------- */

static int bit(const uint64_t *set, int d)
{
    return (int)(set[d >> 6] >> (d & 63) & 1);
}

static void set_bit(uint64_t *set, int d, int on)
{
    if (on)
        set[d >> 6] |= 1ull << (d & 63);
    else
        set[d >> 6] &= ~(1ull << (d & 63));
}

int tg_json_enter(tg_json_t *j)
{
    int t = tg_json_peek(j);
    if (t != TG_JSON_OBJECT && t != TG_JSON_ARRAY)
        return fail(j, "expected an object or an array");
    if (j->j_depth >= TG_JSON_MAX_DEPTH)
        return fail(j, "nesting deeper than 256");
    int d = j->j_depth++;
    set_bit(j->j_arr, d, t == TG_JSON_ARRAY);
    set_bit(j->j_more, d, 0);
    j->j_pos++;
    return 0;
}

int tg_json_next(tg_json_t *j, char *name, size_t namelen)
{
    if (j->j_depth <= 0)
        return fail(j, "not inside an object or an array");
    int d = j->j_depth - 1;
    int arr = bit(j->j_arr, d);
    char close = arr ? ']' : '}';
    int rc;
    ws(j);
    if (j->j_pos < j->j_len && j->j_p[j->j_pos] == close) {
        j->j_pos++;
        j->j_depth--;
        return 0;
    }
    if (bit(j->j_more, d)) {
        if (j->j_pos >= j->j_len || j->j_p[j->j_pos] != ',')
            return fail(j, arr ? "expected ',' or ']'" : "expected ',' or '}'");
        j->j_pos++;
        ws(j);
    }
    set_bit(j->j_more, d, 1);
    if (arr)
        return tg_json_peek(j) == TG_JSON_END ? fail(j, "expected a value") : 1;
    if (j->j_pos >= j->j_len || j->j_p[j->j_pos] != '"')
        return fail(j, "expected a member name");
    int trunc = 0;
    char scratch[1];
    if (!name || !namelen) {
        name = scratch;
        namelen = sizeof scratch;
    }
    /* the usual name: plain ASCII up to its quote (decoded as it stands;
     * one that does not fit comes back empty, as string() truncates it) */
    size_t s = j->j_pos + 1, e = plain_run(j->j_p, s, j->j_len);
    const unsigned char *q = (const unsigned char *)j->j_p;
    while (e < j->j_len && q[e] != '"' && q[e] != '\\' && q[e] >= 0x20 && q[e] < 0x80)
        e++;
    if (e < j->j_len && q[e] == '"') {
        size_t nl = e - s < namelen ? e - s : 0;
        memcpy(name, j->j_p + s, nl);
        name[nl] = '\0';
        j->j_pos = e + 1;
    } else {
        if ((rc = string(j, NULL, name, namelen, &trunc)) != 0)
            return rc;
        if (trunc)
            name[0] = '\0';
    }
    ws(j);
    if (j->j_pos >= j->j_len || j->j_p[j->j_pos] != ':')
        return fail(j, "expected ':'");
    j->j_pos++;
    ws(j);
    return 1;
}

int tg_json_find(tg_json_t *j, const char *name)
{
    char got[64];
    int rc;
    while ((rc = tg_json_next(j, got, sizeof got)) == 1) {
        if (strcmp(got, name) == 0)
            return 1;
        if ((rc = tg_json_skip(j)) != 0)
            return rc;
    }
    return rc;
}

/* One scalar at the cursor. */
static int scalar(tg_json_t *j)
{
    int is_int;
    switch (tg_json_peek(j)) {
    case TG_JSON_STRING: return string(j, NULL, NULL, 0, NULL);
    case TG_JSON_NUMBER: return number(j, &is_int);
    case TG_JSON_TRUE: return literal(j, "true");
    case TG_JSON_FALSE: return literal(j, "false");
    case TG_JSON_NULL: return literal(j, "null");
    default: return fail(j, "expected a value");
    }
}

/* Steps over one value with the checks tg_json_enter and tg_json_next make
 * (same errors at the same bytes), as one state machine: no call per token
 * and no copy of member names, so a skipped subtree costs about a scan. */
int tg_json_skip(tg_json_t *j)
{
    enum { VALUE, FIRST_VALUE, MEMBER, FIRST_MEMBER, AFTER } st = VALUE;
    const char *p = j->j_p;
    size_t n = j->j_len;
    int base = j->j_depth, rc;
    for (;;) {
        ws(j);
        int at = j->j_pos < n;
        char c = at ? p[j->j_pos] : '\0';
        switch (st) {
        case FIRST_VALUE:
            if (at && c == ']')
                goto close;
            /* fall through */
        case VALUE:
            if (at && (c == '{' || c == '[')) {
                if (j->j_depth >= TG_JSON_MAX_DEPTH)
                    return fail(j, "nesting deeper than 256");
                set_bit(j->j_arr, j->j_depth++, c == '[');
                j->j_pos++;
                st = c == '[' ? FIRST_VALUE : FIRST_MEMBER;
                continue;
            }
            if ((rc = scalar(j)) != 0)
                return rc;
            break;
        case FIRST_MEMBER:
            if (at && c == '}')
                goto close;
            /* fall through */
        case MEMBER:
            if (!at || c != '"')
                return fail(j, "expected a member name");
            if ((rc = string(j, NULL, NULL, 0, NULL)) != 0)
                return rc;
            ws(j);
            if (j->j_pos >= n || p[j->j_pos] != ':')
                return fail(j, "expected ':'");
            j->j_pos++;
            st = VALUE;
            continue;
        case AFTER: {
            int arr = bit(j->j_arr, j->j_depth - 1);
            if (at && c == (arr ? ']' : '}'))
                goto close;
            if (!at || c != ',')
                return fail(j, arr ? "expected ',' or ']'" : "expected ',' or '}'");
            j->j_pos++;
            st = arr ? VALUE : MEMBER;
            continue;
        }
        }
        goto ended;
    close:
        j->j_pos++;
        j->j_depth--;
    ended:
        if (j->j_depth == base)
            return 0;
        st = AFTER;
    }
}

int tg_json_members(tg_json_t *j, tg_json_member_fn fn, void *arg)
{
    char name[64];
    int rc;
    if (tg_json_peek(j) != TG_JSON_OBJECT)
        return tg_json_skip(j);
    if ((rc = tg_json_enter(j)) != 0)
        return rc;
    while ((rc = tg_json_next(j, name, sizeof name)) == 1)
        if ((rc = fn(j, name, arg)) != 0)
            return rc;
    return rc;
}

int tg_json_objects(tg_json_t *j, tg_json_member_fn fn, void *arg, long *count)
{
    int rc;
    long n = 0;
    if (count)
        *count = -1;
    if (tg_json_peek(j) != TG_JSON_ARRAY)
        return tg_json_skip(j);
    if ((rc = tg_json_enter(j)) != 0)
        return rc;
    while ((rc = tg_json_next(j, NULL, 0)) == 1) {
        n++;
        if ((rc = tg_json_members(j, fn, arg)) != 0)
            return rc;
    }
    if (count)
        *count = n;
    return rc;
}

int tg_json_end(tg_json_t *j)
{
    return tg_json_peek(j) == TG_JSON_END ? 0 : fail(j, "expected the end of the text after the value");
}

int tg_json_valid(const char *p, size_t n, char *err, size_t errlen)
{
    tg_json_t j;
    tg_json_init(&j, p, n, err, errlen);
    int rc = tg_json_skip(&j);
    return rc ? rc : tg_json_end(&j);
}
