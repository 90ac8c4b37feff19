/* scan.c: the request scanner and body rewrite. One validating pass over a
 * chat request finds the few top-level fields the gateway acts on (model,
 * stream, stream_options, max_tokens) and remembers where their values sit,
 * so the upstream body is the client's bytes with two small splices instead
 * of a re-serialized tree (DESIGN.md: a jansson tree of 1 KB costs 14-25 us;
 * this pass costs about a byte compare per byte). Unknown fields pass
 * through untouched by construction. The walk is json.h's cursor, the one
 * JSON reader of the agent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"
#include "agent/json.h"

/* A member value that must be a boolean (or null): 1 true, 0 false/null,
 * TG_AGENT_EREQUEST otherwise. *span gets where it sits. */
static int boolean(tg_json_t *j, const char *what, tg_span_t *span, char *err, size_t errlen)
{
    int t = tg_json_peek(j);
    size_t vs = j->j_pos;
    int rc = tg_json_skip(j);
    if (rc)
        return rc;
    if (span) {
        span->sp_off = vs;
        span->sp_len = j->j_pos - vs;
    }
    if (t == TG_JSON_TRUE)
        return 1;
    if (t == TG_JSON_FALSE || t == TG_JSON_NULL)
        return 0;
    return tg_errf(err, errlen, TG_AGENT_EREQUEST, "%s must be a boolean", what);
}

/* Scans stream_options' members for include_usage. */
static int stream_options(tg_json_t *j, tg_scan_t *sc, char *err, size_t errlen)
{
    size_t start = j->j_pos;
    int rc;
    char name[32];
    sc->sc_so_is_object = 1;
    sc->sc_so_empty = 1;
    if ((rc = tg_json_enter(j)) != 0)
        return rc;
    while ((rc = tg_json_next(j, name, sizeof name)) == 1) {
        sc->sc_so_empty = 0;
        if (strcmp(name, "include_usage") == 0) {
            if (sc->sc_iu_val.sp_len)
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "stream_options.include_usage appears twice");
            if ((rc = boolean(j, "stream_options.include_usage", &sc->sc_iu_val, err, errlen)) < 0)
                return rc;
            sc->sc_include_usage = rc;
        } else if ((rc = tg_json_skip(j)) != 0) {
            return rc;
        }
    }
    if (rc < 0)
        return rc;
    sc->sc_so_val.sp_off = start;
    sc->sc_so_val.sp_len = j->j_pos - start;
    return 0;
}

/* A non-negative integer member (max_tokens, n): its value, or -1 when it
 * is something else (the upstream judges that). */
static int count(tg_json_t *j, long *out)
{
    uint64_t v;
    if (tg_json_peek(j) != TG_JSON_NUMBER)
        return tg_json_skip(j);
    int rc = tg_json_uint(j, (uint64_t)1 << 53, &v);
    if (rc == TG_AGENT_ERANGE)
        return 0;
    if (rc == 0)
        *out = (long)v;
    return rc;
}

/* The output-cap members, by the name each endpoint uses. */
static const char *const cap_names[] = {"max_tokens", "max_completion_tokens", "max_output_tokens"};

/* Index of name in cap_names, or -1. */
static int cap_key(const char *name)
{
    for (int i = 0; i < (int)(sizeof cap_names / sizeof cap_names[0]); i++)
        if (strcmp(name, cap_names[i]) == 0)
            return i;
    return -1;
}

int tg_agent_scan(const char *body, size_t len, tg_scan_t *sc, char *err, size_t errlen)
{
    tg_json_t j;
    int rc, cap;
    int seen_stream = 0;
    unsigned seen_cap = 0;
    char name[32];
    memset(sc, 0, sizeof *sc);
    sc->sc_max_tokens = -1;
    sc->sc_n = 1;
    tg_json_init(&j, body, len, err, errlen);
    if (tg_json_peek(&j) != TG_JSON_OBJECT)
        return tg_errf(err, errlen, TG_AGENT_EJSON, "malformed JSON at byte %zu: the body must be a JSON object",
                       j.j_pos);
    if ((rc = tg_json_enter(&j)) != 0)
        return rc;
    while ((rc = tg_json_next(&j, name, sizeof name)) == 1) {
        size_t vs = j.j_pos;
        sc->sc_members++;
        if (strcmp(name, "model") == 0) {
            if (sc->sc_model_val.sp_len)
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"model\" appears twice");
            if (tg_json_peek(&j) != TG_JSON_STRING) {
                if ((rc = tg_json_skip(&j)) != 0)
                    return rc;
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"model\" must be a string");
            }
            int trunc = 0;
            if ((rc = tg_json_string_to(&j, sc->sc_model, sizeof sc->sc_model, &trunc)) != 0)
                return rc;
            if (trunc)
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"model\" is longer than %d bytes",
                               TG_AGENT_MODEL_MAX - 1);
            sc->sc_model_val.sp_off = vs;
            sc->sc_model_val.sp_len = j.j_pos - vs;
        } else if (strcmp(name, "stream") == 0) {
            if (seen_stream++)
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"stream\" appears twice");
            if ((rc = boolean(&j, "\"stream\"", NULL, err, errlen)) < 0)
                return rc;
            sc->sc_stream = rc;
        } else if (strcmp(name, "stream_options") == 0) {
            if (sc->sc_so_val.sp_len)
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"stream_options\" appears twice");
            int t = tg_json_peek(&j);
            if (t == TG_JSON_OBJECT) {
                if ((rc = stream_options(&j, sc, err, errlen)) != 0)
                    return rc;
            } else {
                if ((rc = tg_json_skip(&j)) != 0)
                    return rc;
                if (t != TG_JSON_NULL)
                    return tg_errf(err, errlen, TG_AGENT_EREQUEST, "\"stream_options\" must be an object");
                sc->sc_so_val.sp_off = vs;
                sc->sc_so_val.sp_len = 4;
            }
        } else if ((cap = cap_key(name)) >= 0) {
            /* A repeated cap is refused: upstreams disagree on which copy
             * counts (JSON.parse keeps the last), so the gateway could bill
             * against a cap the upstream never applied. Different cap names:
             * the largest, since a provider may honour any of them. */
            if (seen_cap & (1u << cap))
                return tg_errf(err, errlen, TG_AGENT_EREQUEST, "%s appears twice", cap_names[cap]);
            seen_cap |= 1u << cap;
            long v = -1;
            if ((rc = count(&j, &v)) != 0)
                return rc;
            if (v > sc->sc_max_tokens)
                sc->sc_max_tokens = v;
        } else if (strcmp(name, "n") == 0) {
            long v = -1;
            if ((rc = count(&j, &v)) != 0)
                return rc;
            if (v >= 1)
                sc->sc_n = v;
        } else if ((rc = tg_json_skip(&j)) != 0) {
            return rc;
        }
    }
    if (rc < 0)
        return rc;
    sc->sc_close = j.j_pos - 1;
    return tg_json_end(&j);
}

int tg_agent_json_decode(const char *p, size_t n, tg_buf_t *out, size_t *used)
{
    tg_json_t j;
    tg_json_init(&j, p, n, NULL, 0);
    if (n == 0 || p[0] != '"')
        return TG_AGENT_EJSON;
    int rc = tg_json_string(&j, out);
    *used = j.j_pos;
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
