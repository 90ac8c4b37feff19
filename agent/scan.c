/* scan.c: the request scanner and body rewrite. One validating pass over a
 * chat request finds the few top-level fields the gateway acts on (model,
 * stream, stream_options, max_tokens) and remembers where their values sit,
 * so the upstream body is the client's bytes with two small splices instead
 * of a re-serialized tree (DESIGN.md: a jansson tree of 1 KB costs 14-25 us;
 * this pass costs about a byte compare per byte). Unknown fields pass
 * through untouched by construction. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"

#define MAX_DEPTH 256

typedef struct scanner {
    const char *s_p;
    size_t s_len;
    size_t s_pos;
    int s_depth;
    char *s_err;
    size_t s_errlen;
    tg_buf_t *s_sink; /* string(): decoded bytes go here instead (when set) */
} scanner_t;

static int fail(scanner_t *s, const char *what)
{
    if (s->s_pos >= s->s_len)
        return tg_errf(s->s_err, s->s_errlen, TG_AGENT_EJSON,
                       "malformed JSON at byte %zu: unexpected end of input, %s", s->s_pos, what);
    unsigned char c = (unsigned char)s->s_p[s->s_pos];
    if (c >= 0x20 && c < 0x7f)
        return tg_errf(s->s_err, s->s_errlen, TG_AGENT_EJSON,
                       "malformed JSON at byte %zu: unexpected '%c', %s", s->s_pos, c, what);
    return tg_errf(s->s_err, s->s_errlen, TG_AGENT_EJSON,
                   "malformed JSON at byte %zu: unexpected byte 0x%02x, %s", s->s_pos, c, what);
}

static void ws(scanner_t *s)
{
    while (s->s_pos < s->s_len) {
        char c = s->s_p[s->s_pos];
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t')
            break;
        s->s_pos++;
    }
}

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

/* Length of a valid UTF-8 sequence at p (max n bytes), 0 when invalid. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t k;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((k == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (k == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return k;
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

/* Reads \uXXXX at s_pos (after the backslash-u). */
static int hex4(scanner_t *s, uint32_t *cp)
{
    if (s->s_len - s->s_pos < 4)
        return fail(s, "expected 4 hex digits after \\u");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s->s_p[s->s_pos]);
        if (h < 0)
            return fail(s, "expected a hex digit in \\u escape");
        v = (v << 4) | (uint32_t)h;
        s->s_pos++;
    }
    *cp = v;
    return 0;
}

/* Scans a string starting at its opening quote. When out is not NULL the
 * decoded bytes go there (truncated to outlen-1, NUL-terminated); *trunc is
 * set when they did not fit. */
static int string(scanner_t *s, char *out, size_t outlen, int *trunc)
{
    size_t o = 0;
    char tmp[4];
    s->s_pos++; /* the quote */
    for (;;) {
        if (s->s_pos >= s->s_len)
            return fail(s, "unterminated string");
        if (!out && !s->s_sink) {
            /* Validation only (most strings): skip plain ASCII fast. */
            const unsigned char *p = (const unsigned char *)s->s_p + s->s_pos;
            const unsigned char *e = (const unsigned char *)s->s_p + s->s_len;
            while (p < e && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
                p++;
            s->s_pos = (size_t)(p - (const unsigned char *)s->s_p);
            if (s->s_pos >= s->s_len)
                return fail(s, "unterminated string");
        }
        unsigned char c = (unsigned char)s->s_p[s->s_pos];
        size_t n = 0;
        const char *src = tmp;
        if (c == '"') {
            s->s_pos++;
            break;
        }
        if (c < 0x20)
            return fail(s, "control character in string");
        if (c == '\\') {
            s->s_pos++;
            if (s->s_pos >= s->s_len)
                return fail(s, "unterminated escape");
            char e = s->s_p[s->s_pos++];
            switch (e) {
            case '"': tmp[0] = '"'; n = 1; break;
            case '\\': tmp[0] = '\\'; n = 1; break;
            case '/': tmp[0] = '/'; n = 1; break;
            case 'b': tmp[0] = '\b'; n = 1; break;
            case 'f': tmp[0] = '\f'; n = 1; break;
            case 'n': tmp[0] = '\n'; n = 1; break;
            case 'r': tmp[0] = '\r'; n = 1; break;
            case 't': tmp[0] = '\t'; n = 1; break;
            case 'u': {
                uint32_t cp, lo;
                int rc = hex4(s, &cp);
                if (rc)
                    return rc;
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (s->s_len - s->s_pos < 2 || s->s_p[s->s_pos] != '\\' || s->s_p[s->s_pos + 1] != 'u')
                        return fail(s, "expected a low surrogate escape");
                    s->s_pos += 2;
                    if ((rc = hex4(s, &lo)) != 0)
                        return rc;
                    if (lo < 0xdc00 || lo > 0xdfff)
                        return fail(s, "expected a low surrogate escape");
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                    return fail(s, "lone low surrogate escape");
                }
                n = put_utf8(tmp, cp);
                break;
            }
            default:
                s->s_pos--;
                return fail(s, "invalid escape");
            }
        } else if (c < 0x80) {
            src = s->s_p + s->s_pos;
            n = 1;
            s->s_pos++;
        } else {
            n = utf8_len((const unsigned char *)s->s_p + s->s_pos, s->s_len - s->s_pos);
            if (n == 0)
                return fail(s, "invalid UTF-8 in string");
            src = s->s_p + s->s_pos;
            s->s_pos += n;
        }
        if (s->s_sink) {
            if (tg_buf_append(s->s_sink, src, n))
                return tg_errf(s->s_err, s->s_errlen, TG_AGENT_ETOOBIG, "decoded string too large");
        } else if (out) {
            if (o + n < outlen) {
                memcpy(out + o, src, n);
                o += n;
            } else {
                *trunc = 1;
            }
        }
    }
    if (out)
        out[o] = '\0';
    return 0;
}

static int number(scanner_t *s)
{
    size_t p = s->s_pos;
    const char *b = s->s_p;
    size_t n = s->s_len;
    if (p < n && b[p] == '-')
        p++;
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
        if (p >= n || b[p] < '0' || b[p] > '9')
            goto bad;
        while (p < n && b[p] >= '0' && b[p] <= '9')
            p++;
    }
    if (p < n && (b[p] == 'e' || b[p] == 'E')) {
        p++;
        if (p < n && (b[p] == '+' || b[p] == '-'))
            p++;
        if (p >= n || b[p] < '0' || b[p] > '9')
            goto bad;
        while (p < n && b[p] >= '0' && b[p] <= '9')
            p++;
    }
    s->s_pos = p;
    return 0;
bad:
    s->s_pos = p;
    return fail(s, "invalid number");
}

static int literal(scanner_t *s, const char *word)
{
    size_t n = strlen(word);
    if (s->s_len - s->s_pos < n || memcmp(s->s_p + s->s_pos, word, n) != 0)
        return fail(s, "expected a value");
    s->s_pos += n;
    return 0;
}

static int value(scanner_t *s);

static int container(scanner_t *s, char close)
{
    if (++s->s_depth > MAX_DEPTH)
        return fail(s, "nesting deeper than 256");
    s->s_pos++;
    ws(s);
    if (s->s_pos < s->s_len && s->s_p[s->s_pos] == close) {
        s->s_pos++;
        s->s_depth--;
        return 0;
    }
    for (;;) {
        int rc;
        ws(s);
        if (close == '}') {
            if (s->s_pos >= s->s_len || s->s_p[s->s_pos] != '"')
                return fail(s, "expected a member name");
            if ((rc = string(s, NULL, 0, NULL)) != 0)
                return rc;
            ws(s);
            if (s->s_pos >= s->s_len || s->s_p[s->s_pos] != ':')
                return fail(s, "expected ':'");
            s->s_pos++;
            ws(s);
        }
        if ((rc = value(s)) != 0)
            return rc;
        ws(s);
        if (s->s_pos < s->s_len && s->s_p[s->s_pos] == ',') {
            s->s_pos++;
            continue;
        }
        if (s->s_pos < s->s_len && s->s_p[s->s_pos] == close) {
            s->s_pos++;
            s->s_depth--;
            return 0;
        }
        return fail(s, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int value(scanner_t *s)
{
    if (s->s_pos >= s->s_len)
        return fail(s, "expected a value");
    switch (s->s_p[s->s_pos]) {
    case '{': return container(s, '}');
    case '[': return container(s, ']');
    case '"': return string(s, NULL, 0, NULL);
    case 't': return literal(s, "true");
    case 'f': return literal(s, "false");
    case 'n': return literal(s, "null");
    default: return number(s);
    }
}

/* Reads a member name, decoded (escapes too: "mod\\u0065l" is "model", so a
 * client cannot smuggle a second model past the duplicate check); names
 * longer than the buffer match nothing we look for. */
static int member_name(scanner_t *s, char *name, size_t n)
{
    int trunc = 0;
    int rc = string(s, name, n, &trunc);
    if (rc == 0 && trunc)
        name[0] = '\0';
    return rc;
}

/* Scans stream_options' members for include_usage. */
static int stream_options(scanner_t *s, tg_scan_t *sc)
{
    size_t start = s->s_pos;
    sc->sc_so_is_object = 1;
    sc->sc_so_empty = 1;
    s->s_depth++;
    s->s_pos++;
    ws(s);
    if (s->s_pos < s->s_len && s->s_p[s->s_pos] == '}') {
        s->s_pos++;
        goto done;
    }
    sc->sc_so_empty = 0;
    for (;;) {
        int rc;
        ws(s);
        if (s->s_pos >= s->s_len || s->s_p[s->s_pos] != '"')
            return fail(s, "expected a member name");
        char name[32];
        if ((rc = member_name(s, name, sizeof name)) != 0)
            return rc;
        ws(s);
        if (s->s_pos >= s->s_len || s->s_p[s->s_pos] != ':')
            return fail(s, "expected ':'");
        s->s_pos++;
        ws(s);
        size_t vs = s->s_pos;
        if ((rc = value(s)) != 0)
            return rc;
        if (strcmp(name, "include_usage") == 0) {
            if (sc->sc_iu_val.sp_len)
                return tg_errf(s->s_err, s->s_errlen, TG_AGENT_EREQUEST,
                               "stream_options.include_usage appears twice");
            size_t vl = s->s_pos - vs;
            if (vl == 4 && memcmp(s->s_p + vs, "true", 4) == 0)
                sc->sc_include_usage = 1;
            else if (!(vl == 5 && memcmp(s->s_p + vs, "false", 5) == 0) &&
                     !(vl == 4 && memcmp(s->s_p + vs, "null", 4) == 0))
                return tg_errf(s->s_err, s->s_errlen, TG_AGENT_EREQUEST,
                               "stream_options.include_usage must be a boolean");
            sc->sc_iu_val.sp_off = vs;
            sc->sc_iu_val.sp_len = vl;
        }
        ws(s);
        if (s->s_pos < s->s_len && s->s_p[s->s_pos] == ',') {
            s->s_pos++;
            continue;
        }
        if (s->s_pos < s->s_len && s->s_p[s->s_pos] == '}') {
            s->s_pos++;
            break;
        }
        return fail(s, "expected ',' or '}'");
    }
done:
    s->s_depth--;
    sc->sc_so_val.sp_off = start;
    sc->sc_so_val.sp_len = s->s_pos - start;
    return 0;
}

static int read_long(const char *p, size_t n, long *out)
{
    char tmp[32];
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    char *end;
    long v = strtol(tmp, &end, 10);
    if (*end != '\0' || v < 0)
        return -1;
    *out = v;
    return 0;
}

int tg_agent_scan(const char *body, size_t len, tg_scan_t *sc, char *err, size_t errlen)
{
    scanner_t s = {body, len, 0, 0, err, errlen, NULL};
    int rc;
    int seen_stream = 0;
    memset(sc, 0, sizeof *sc);
    sc->sc_max_tokens = -1;
    sc->sc_n = 1;
    ws(&s);
    if (s.s_pos >= len || body[s.s_pos] != '{')
        return fail(&s, "the body must be a JSON object");
    s.s_depth = 1;
    s.s_pos++;
    ws(&s);
    if (s.s_pos < len && body[s.s_pos] == '}') {
        sc->sc_close = s.s_pos++;
        goto tail;
    }
    for (;;) {
        ws(&s);
        if (s.s_pos >= len || body[s.s_pos] != '"')
            return fail(&s, "expected a member name");
        char name[32];
        if ((rc = member_name(&s, name, sizeof name)) != 0)
            return rc;
        ws(&s);
        if (s.s_pos >= len || body[s.s_pos] != ':')
            return fail(&s, "expected ':'");
        s.s_pos++;
        ws(&s);
        size_t vs = s.s_pos;
        sc->sc_members++;
        if (strcmp(name, "model") == 0) {
            if (sc->sc_model_val.sp_len)
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"model\" appears twice");
            if (s.s_pos >= len || body[s.s_pos] != '"') {
                if ((rc = value(&s)) != 0)
                    return rc;
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"model\" must be a string");
            }
            int trunc = 0;
            if ((rc = string(&s, sc->sc_model, sizeof sc->sc_model, &trunc)) != 0)
                return rc;
            if (trunc)
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"model\" is longer than %d bytes",
                               TG_AGENT_MODEL_MAX - 1);
            sc->sc_model_val.sp_off = vs;
            sc->sc_model_val.sp_len = s.s_pos - vs;
        } else if (strcmp(name, "stream") == 0) {
            if (seen_stream++)
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"stream\" appears twice");
            if ((rc = value(&s)) != 0)
                return rc;
            size_t vl = s.s_pos - vs;
            if (vl == 4 && memcmp(body + vs, "true", 4) == 0)
                sc->sc_stream = 1;
            else if (!(vl == 5 && memcmp(body + vs, "false", 5) == 0) &&
                     !(vl == 4 && memcmp(body + vs, "null", 4) == 0))
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"stream\" must be a boolean");
        } else if (strcmp(name, "stream_options") == 0) {
            if (sc->sc_so_val.sp_len)
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"stream_options\" appears twice");
            if (s.s_pos < len && body[s.s_pos] == '{') {
                if ((rc = stream_options(&s, sc)) != 0)
                    return rc;
            } else {
                if ((rc = value(&s)) != 0)
                    return rc;
                if (!(s.s_pos - vs == 4 && memcmp(body + vs, "null", 4) == 0))
                    return tg_errf(err, errlen, TG_AGENT_EREQUEST,
                                   "\"stream_options\" must be an object");
                sc->sc_so_val.sp_off = vs;
                sc->sc_so_val.sp_len = 4;
            }
        } else if (strcmp(name, "max_tokens") == 0 || strcmp(name, "max_completion_tokens") == 0 ||
                   strcmp(name, "max_output_tokens") == 0) {
            /* the output cap, for the pre-authorization: the largest when
             * several are given (a provider may honour any of them) */
            if ((rc = value(&s)) != 0)
                return rc;
            long v;
            if (read_long(body + vs, s.s_pos - vs, &v) == 0 && v > sc->sc_max_tokens)
                sc->sc_max_tokens = v;
        } else if (strcmp(name, "n") == 0) {
            if ((rc = value(&s)) != 0)
                return rc;
            long v;
            if (read_long(body + vs, s.s_pos - vs, &v) == 0 && v > 0)
                sc->sc_n = v;
        } else {
            if ((rc = value(&s)) != 0)
                return rc;
        }
        ws(&s);
        if (s.s_pos < len && body[s.s_pos] == ',') {
            s.s_pos++;
            continue;
        }
        if (s.s_pos < len && body[s.s_pos] == '}') {
            sc->sc_close = s.s_pos++;
            break;
        }
        return fail(&s, "expected ',' or '}'");
    }
tail:
    ws(&s);
    if (s.s_pos != len)
        return fail(&s, "expected the end of the body after the object");
    return 0;
}

int tg_agent_json_decode(const char *p, size_t n, tg_buf_t *out, size_t *used)
{
    scanner_t s = {p, n, 0, 0, NULL, 0, out};
    if (n == 0 || p[0] != '"')
        return TG_AGENT_EJSON;
    int rc = string(&s, NULL, 0, NULL);
    *used = s.s_pos;
    return rc;
}

/* ---- rewrite ------------------------------------------------------------- */

int tg_agent_json_str(tg_buf_t *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (tg_buf_append(out, "\"", 1))
        return TG_BUF_ENOMEM;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (tg_buf_append(out, s + run, i - run))
            return TG_BUF_ENOMEM;
        run = i + 1;
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            if (tg_buf_append(out, esc, 2))
                return TG_BUF_ENOMEM;
        } else if (tg_buf_append(out, esc, 6)) {
            return TG_BUF_ENOMEM;
        }
    }
    if (tg_buf_append(out, s + run, n - run) || tg_buf_append(out, "\"", 1))
        return TG_BUF_ENOMEM;
    return 0;
}

typedef struct edit {
    size_t e_off;  /* where the replaced bytes start */
    size_t e_len;  /* how many are replaced (0: insert) */
    int e_kind;    /* what goes there */
} edit_t;

enum { ED_MODEL, ED_SO_NEW, ED_SO_NULL, ED_IU_TRUE, ED_IU_INSERT };

int tg_agent_rewrite(const char *body, size_t len, const tg_scan_t *sc, const char *model,
                     int add_usage, tg_buf_t *out)
{
    edit_t ed[2];
    int n = 0;
    if (sc->sc_model_val.sp_len && model)
        ed[n++] = (edit_t){sc->sc_model_val.sp_off, sc->sc_model_val.sp_len, ED_MODEL};
    if (add_usage && !sc->sc_include_usage) {
        if (!sc->sc_so_val.sp_len)
            ed[n++] = (edit_t){sc->sc_close, 0, ED_SO_NEW};
        else if (!sc->sc_so_is_object)
            ed[n++] = (edit_t){sc->sc_so_val.sp_off, sc->sc_so_val.sp_len, ED_SO_NULL};
        else if (sc->sc_iu_val.sp_len)
            ed[n++] = (edit_t){sc->sc_iu_val.sp_off, sc->sc_iu_val.sp_len, ED_IU_TRUE};
        else
            ed[n++] = (edit_t){sc->sc_so_val.sp_off + 1, 0, ED_IU_INSERT};
    }
    if (n == 2 && ed[1].e_off < ed[0].e_off) {
        edit_t t = ed[0];
        ed[0] = ed[1];
        ed[1] = t;
    }
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        if (tg_buf_append(out, body + at, ed[i].e_off - at))
            return TG_AGENT_ENOMEM;
        int rc = 0;
        switch (ed[i].e_kind) {
        case ED_MODEL:
            rc = tg_agent_json_str(out, model, strlen(model));
            break;
        case ED_SO_NEW:
            rc = tg_buf_puts(out, sc->sc_members ? ",\"stream_options\":{\"include_usage\":true}"
                                                 : "\"stream_options\":{\"include_usage\":true}");
            break;
        case ED_SO_NULL:
            rc = tg_buf_puts(out, "{\"include_usage\":true}");
            break;
        case ED_IU_TRUE:
            rc = tg_buf_puts(out, "true");
            break;
        case ED_IU_INSERT:
            rc = tg_buf_puts(out, sc->sc_so_empty ? "\"include_usage\":true" : "\"include_usage\":true,");
            break;
        }
        if (rc)
            return TG_AGENT_ENOMEM;
        at = ed[i].e_off + ed[i].e_len;
    }
    if (tg_buf_append(out, body + at, len - at))
        return TG_AGENT_ENOMEM;
    return 0;
}
