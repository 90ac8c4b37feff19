/* Request scanning, the scenario language and the token formula of mockllm:
 * the pure functions that decide what an answer contains. The scan is one
 * validating yajl pass with callbacks (no JSON tree), because the emulator
 * must stay far cheaper than the gateway it measures. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

#include "base/tg_base.h"
#include "tools/mockllm/mockllm.h"

const char *tg_mock_strerror(int code) {
    switch ((int)code) {
    case 0: return "ok";
    case TG_MOCK_EJSON: return "request body is not valid JSON";
    case TG_MOCK_ESCENARIO: return "bad scenario";
    case TG_MOCK_ENOMEM: return "out of memory";
    case TG_MOCK_EHTTP: return "malformed HTTP request";
    case TG_MOCK_ETOOBIG: return "request too large";
    case TG_MOCK_ESYS: return "system call failed";
    case TG_MOCK_EUSAGE: return "bad command line";
    case TG_MOCK_ELAST: return "unknown error";
    }
    return "unknown error";
}

/* ---- scan --------------------------------------------------------------- */

/* The keys the scan acts on; everything else is K_OTHER. */
enum key {
    K_OTHER = 0, K_MODEL, K_STREAM, K_STREAM_OPTIONS, K_INCLUDE_USAGE, K_MAX_TOKENS,
    K_N, K_TOOLS, K_TOOL_CHOICE, K_INPUT, K_DIMENSIONS, K_ENCODING_FORMAT,
    K_RESPONSE_FORMAT, K_MESSAGES, K_PROMPT, K_SYSTEM, K_INSTRUCTIONS, K_NAME, K_FUNCTION
};

static const struct {
    const char *name;
    enum key key;
} keys[] = {
    {"model", K_MODEL}, {"stream", K_STREAM}, {"stream_options", K_STREAM_OPTIONS},
    {"include_usage", K_INCLUDE_USAGE}, {"max_tokens", K_MAX_TOKENS},
    {"max_completion_tokens", K_MAX_TOKENS}, {"max_output_tokens", K_MAX_TOKENS},
    {"n", K_N}, {"tools", K_TOOLS}, {"tool_choice", K_TOOL_CHOICE}, {"input", K_INPUT},
    {"dimensions", K_DIMENSIONS}, {"encoding_format", K_ENCODING_FORMAT},
    {"response_format", K_RESPONSE_FORMAT}, {"messages", K_MESSAGES}, {"prompt", K_PROMPT},
    {"system", K_SYSTEM}, {"instructions", K_INSTRUCTIONS}, {"name", K_NAME},
    {"function", K_FUNCTION},
};

#define MAX_LVL 4 /* deeper levels are only counted, never inspected */

typedef struct scan {
    tg_mock_req_t *rq;
    int lvl;                    /* open containers */
    int started;                /* saw the top-level '{' */
    enum key k[MAX_LVL + 1];    /* key in effect at each level (1..MAX_LVL) */
    int is_arr[MAX_LVL + 1];    /* the container at that level is an array */
    int tool_idx;               /* index of the tools[] element being read */
    yajl_handle h;              /* for the offsets of the "tools" value */
    size_t tools_at;            /* where the top-level "tools" value starts */
    const char *body;
} scan_t;

static enum key lookup(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strlen(keys[i].name) == n && memcmp(keys[i].name, s, n) == 0) return keys[i].key;
    return K_OTHER;
}

static int is_prompt_key(enum key k) {
    return k == K_MESSAGES || k == K_INPUT || k == K_PROMPT || k == K_SYSTEM ||
           k == K_INSTRUCTIONS || k == K_TOOLS;
}

/* Called when any value (scalar or container) begins at the current level:
 * counts array elements of "tools" and "input". Returns 0 to abort. */
static int value_begins(scan_t *s) {
    if (!s->started) return 0; /* the top level must be an object */
    if (s->lvl == 2 && s->is_arr[2]) {
        if (s->k[1] == K_TOOLS) s->tool_idx = s->rq->rq_tools++;
        else if (s->k[1] == K_INPUT) s->rq->rq_inputs++;
    }
    return 1;
}

static int cb_null(void *ctx) { return value_begins(ctx); }

static int cb_bool(void *ctx, int v) {
    scan_t *s = ctx;
    if (!value_begins(s)) return 0;
    if (s->lvl == 1 && s->k[1] == K_STREAM) s->rq->rq_stream = v;
    if (s->lvl == 2 && s->k[1] == K_STREAM_OPTIONS && s->k[2] == K_INCLUDE_USAGE)
        s->rq->rq_include_usage = v;
    return 1;
}

static int cb_int(void *ctx, long long v) {
    scan_t *s = ctx;
    if (!value_begins(s)) return 0;
    if (s->lvl != 1) return 1;
    if (v < 0) v = 0;
    if (v > 1000000000LL) v = 1000000000LL;
    switch (s->k[1]) {
    case K_MAX_TOKENS: s->rq->rq_max_tokens = (long)v; break;
    case K_N: s->rq->rq_n = v < 1 ? 1 : (v > 128 ? 128 : (int)v); break;
    case K_DIMENSIONS: s->rq->rq_dimensions = v > 4096 ? 4096 : (int)v; break;
    default: break;
    }
    return 1;
}

static int cb_double(void *ctx, double v) {
    (void)v;
    return value_begins(ctx);
}

static int cb_string(void *ctx, const unsigned char *v, size_t n) {
    scan_t *s = ctx;
    tg_mock_req_t *rq = s->rq;
    if (!value_begins(s)) return 0;
    if (s->lvl >= 1 && is_prompt_key(s->k[1])) rq->rq_prompt_bytes += (long)n;
    if (s->lvl == 1) {
        switch (s->k[1]) {
        case K_MODEL: {
            size_t m = n < TG_MOCK_MODEL_MAX - 1 ? n : TG_MOCK_MODEL_MAX - 1;
            memcpy(rq->rq_model, v, m);
            rq->rq_model[m] = '\0';
            rq->rq_has_model = 1;
            break;
        }
        case K_INPUT: rq->rq_inputs = 1; break;
        case K_TOOL_CHOICE: rq->rq_tool_choice_none = n == 4 && memcmp(v, "none", 4) == 0; break;
        case K_ENCODING_FORMAT: rq->rq_base64 = n == 6 && memcmp(v, "base64", 6) == 0; break;
        case K_RESPONSE_FORMAT: rq->rq_base64 = n == 8 && memcmp(v, "b64_json", 8) == 0; break;
        default: break;
        }
    }
    /* The first tool's name: tools[0].name (Anthropic, Responses) or
     * tools[0].function.name (Chat Completions). */
    if (s->k[1] == K_TOOLS && s->tool_idx == 0 && rq->rq_tool[0] == '\0' &&
        ((s->lvl == 3 && s->k[3] == K_NAME) ||
         (s->lvl == 4 && s->k[3] == K_FUNCTION && s->k[4] == K_NAME))) {
        size_t m = n < TG_MOCK_TOOL_MAX - 1 ? n : TG_MOCK_TOOL_MAX - 1;
        memcpy(rq->rq_tool, v, m);
        rq->rq_tool[m] = '\0';
    }
    return 1;
}

static int open_container(scan_t *s, int arr) {
    if (s->lvl == 0 && !s->started) {
        if (arr) return 0;
        s->started = 1;
    } else if (!value_begins(s)) {
        return 0;
    } else if (s->lvl == 0) {
        return 0; /* a second top-level value */
    }
    if (s->lvl == 1 && s->k[1] == K_TOOLS)
        s->tools_at = yajl_get_bytes_consumed(s->h) - 1;
    s->lvl++;
    if (s->lvl <= MAX_LVL) {
        s->k[s->lvl] = K_OTHER;
        s->is_arr[s->lvl] = arr;
    }
    return 1;
}

static int cb_start_map(void *ctx) { return open_container(ctx, 0); }
static int cb_start_array(void *ctx) { return open_container(ctx, 1); }

static int cb_end(void *ctx) {
    scan_t *s = ctx;
    if (s->lvl == 2 && s->k[1] == K_TOOLS) {
        size_t end = yajl_get_bytes_consumed(s->h), n = end - s->tools_at;
        if (end > s->tools_at && n < TG_MOCK_TOOLS_JSON_MAX) {
            memcpy(s->rq->rq_tools_json, s->body + s->tools_at, n);
            s->rq->rq_tools_json[n] = '\0';
        }
    }
    s->lvl--;
    return 1;
}

static int cb_key(void *ctx, const unsigned char *v, size_t n) {
    scan_t *s = ctx;
    if (s->lvl >= 1 && s->lvl <= MAX_LVL) s->k[s->lvl] = lookup(v, n);
    return 1;
}

static const yajl_callbacks callbacks = {
    cb_null, cb_bool, cb_int, cb_double, NULL, cb_string,
    cb_start_map, cb_key, cb_end, cb_start_array, cb_end,
};

int tg_mock_scan(const char *body, size_t len, tg_mock_req_t *rq, char *err, size_t errlen) {
    int rc = 0;
    scan_t s;
    yajl_handle h = NULL;

    memset(rq, 0, sizeof *rq);
    rq->rq_max_tokens = -1;
    rq->rq_n = 1;
    memset(&s, 0, sizeof s);
    s.rq = rq;
    s.tool_idx = -1;

    h = yajl_alloc(&callbacks, NULL, &s);
    s.h = h;
    s.body = body;
    if (h == NULL) {
        rc = tg_errf(err, errlen, TG_MOCK_ENOMEM, "cannot allocate a JSON parser");
        goto fail;
    }
    if (yajl_parse(h, (const unsigned char *)body, len) != yajl_status_ok ||
        yajl_complete_parse(h) != yajl_status_ok || !s.started) {
        unsigned char *m = yajl_get_error(h, 0, (const unsigned char *)body, len);
        rc = tg_errf(err, errlen, TG_MOCK_EJSON, "request body is not a JSON object: %s",
                     s.started || m == NULL ? (m ? (const char *)m : "parse error")
                                            : "expected '{'");
        if (m) yajl_free_error(h, m);
        goto fail;
    }
fail:
    if (h) yajl_free(h);
    return rc;
}

/* ---- scenarios ---------------------------------------------------------- */

void tg_mock_scn_init(tg_mock_scn_t *sc) {
    memset(sc, 0, sizeof *sc);
    sc->sc_tokens = -1;
    sc->sc_prompt = -1;
    sc->sc_retry_after_ms = -1;
    sc->sc_disconnect = -1;
    sc->sc_error_after = -1;
}

/* Parses a decimal integer in [0, 1e9] from v[0..n). Returns 0 or -1. */
static int parse_num(const char *v, size_t n, int *out) {
    long x = 0;
    if (n == 0 || n > 10) return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)v[i])) return -1;
        x = x * 10 + (v[i] - '0');
    }
    if (x > 1000000000L) return -1;
    *out = (int)x;
    return 0;
}

static int item_is(const char *name, size_t n, const char *want) {
    return strlen(want) == n && memcmp(name, want, n) == 0;
}

/* Applies one "name[=value]" item. Returns 0 or -1 (unknown or bad). */
static int apply_item(tg_mock_scn_t *sc, const char *name, size_t nn, const char *val,
                      size_t vn, int has_val) {
    static const struct {
        const char *name;
        size_t off;
    } nums[] = {
        {"latency", offsetof(tg_mock_scn_t, sc_latency_ms)},
        {"ttft", offsetof(tg_mock_scn_t, sc_ttft_ms)},
        {"itl", offsetof(tg_mock_scn_t, sc_itl_ms)},
        {"tokens", offsetof(tg_mock_scn_t, sc_tokens)},
        {"prompt", offsetof(tg_mock_scn_t, sc_prompt)},
        {"cached", offsetof(tg_mock_scn_t, sc_cached)},
        {"cache_write", offsetof(tg_mock_scn_t, sc_cache_write)},
        {"cache-write", offsetof(tg_mock_scn_t, sc_cache_write)},
        {"reasoning", offsetof(tg_mock_scn_t, sc_reasoning)},
        {"status", offsetof(tg_mock_scn_t, sc_status)},
        {"retry-after-ms", offsetof(tg_mock_scn_t, sc_retry_after_ms)},
        {"fail-first", offsetof(tg_mock_scn_t, sc_fail_first)},
        {"disconnect", offsetof(tg_mock_scn_t, sc_disconnect)},
        {"error-after", offsetof(tg_mock_scn_t, sc_error_after)},
    };
    static const struct {
        const char *name;
        size_t off;
    } flags[] = {
        {"hang", offsetof(tg_mock_scn_t, sc_hang)},
        {"malformed", offsetof(tg_mock_scn_t, sc_malformed)},
        {"no-usage", offsetof(tg_mock_scn_t, sc_no_usage)},
        {"zero-usage", offsetof(tg_mock_scn_t, sc_zero_usage)},
        {"running-usage", offsetof(tg_mock_scn_t, sc_running_usage)},
        {"usage-on-finish", offsetof(tg_mock_scn_t, sc_usage_on_finish)},
        {"no-tool", offsetof(tg_mock_scn_t, sc_no_tool)},
        {"close", offsetof(tg_mock_scn_t, sc_close)},
        {"nested-usage", offsetof(tg_mock_scn_t, sc_nested_usage)},
        {"ignore-stream", offsetof(tg_mock_scn_t, sc_ignore_stream)},
        {"ignore-max-tokens", offsetof(tg_mock_scn_t, sc_ignore_max)},
        {"lone-surrogate", offsetof(tg_mock_scn_t, sc_lone_surrogate)},
        {"malformed-final", offsetof(tg_mock_scn_t, sc_malformed_final)},
    };
    int v = 0;

    if (item_is(name, nn, "key")) {
        if (!has_val || vn == 0 || vn >= TG_MOCK_KEY_MAX) return -1;
        memcpy(sc->sc_key, val, vn);
        sc->sc_key[vn] = '\0';
        return 0;
    }
    if (item_is(name, nn, "report-output")) {
        if (!has_val || vn == 0 || vn >= sizeof sc->sc_report_output) return -1;
        memcpy(sc->sc_report_output, val, vn);
        sc->sc_report_output[vn] = '\0';
        return 0;
    }
    if (item_is(name, nn, "location")) {
        if (!has_val || vn == 0 || vn >= sizeof sc->sc_location) return -1;
        memcpy(sc->sc_location, val, vn);
        sc->sc_location[vn] = '\0';
        return 0;
    }
    if (item_is(name, nn, "usage-shape")) {
        static const char *const shapes[] = {"openai", "deepseek", "kimi", "qwen", "glm", "gemini"};
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            if (has_val && vn == strlen(shapes[i]) && memcmp(val, shapes[i], vn) == 0) {
                sc->sc_usage_shape = (int)i;
                return 0;
            }
        return -1;
    }
    if (item_is(name, nn, "retry-after")) {
        if (!has_val || parse_num(val, vn, &v) < 0 || v > 86400) return -1;
        sc->sc_retry_after_ms = v * 1000;
        return 0;
    }
    if (item_is(name, nn, "disconnect") && !has_val) {
        sc->sc_disconnect = 1;
        return 0;
    }
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        if (!item_is(name, nn, nums[i].name)) continue;
        if (!has_val || parse_num(val, vn, &v) < 0) return -1;
        if (nums[i].off == offsetof(tg_mock_scn_t, sc_status) && v != 0 && (v < 200 || v > 599))
            return -1;
        memcpy((char *)sc + nums[i].off, &v, sizeof v);
        return 0;
    }
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        if (!item_is(name, nn, flags[i].name)) continue;
        if (has_val && parse_num(val, vn, &v) < 0) return -1;
        if (!has_val) v = 1;
        memcpy((char *)sc + flags[i].off, &v, sizeof v);
        return 0;
    }
    return -1;
}

int tg_mock_scn_parse(tg_mock_scn_t *sc, const char *text, size_t len, char *err, size_t errlen) {
    size_t i = 0;
    while (i < len) {
        size_t b = i, e, eq;
        while (i < len && text[i] != ';' && text[i] != ',') i++;
        e = i++;
        while (b < e && isspace((unsigned char)text[b])) b++;
        while (e > b && isspace((unsigned char)text[e - 1])) e--;
        if (b == e) continue;
        for (eq = b; eq < e && text[eq] != '='; eq++) {}
        if (apply_item(sc, text + b, eq - b, text + eq + 1, eq < e ? e - eq - 1 : 0, eq < e) < 0)
            return tg_errf(err, errlen, TG_MOCK_ESCENARIO,
                           "x-mock-scenario: unknown or bad item '%.*s' (see tools/mockllm/README.md)",
                           (int)(e - b), text + b);
    }
    if (sc->sc_fail_first > 0 && sc->sc_status == 0) sc->sc_status = 500;
    return 0;
}

/* ---- the token formula -------------------------------------------------- */

void tg_mock_plan(const tg_mock_req_t *rq, const tg_mock_scn_t *sc, tg_mock_plan_t *pl) {
    memset(pl, 0, sizeof *pl);
    pl->pl_prompt = sc->sc_prompt >= 0 ? sc->sc_prompt : (rq->rq_prompt_bytes + 3) / 4;
    if (pl->pl_prompt < 1 && sc->sc_prompt < 0) pl->pl_prompt = 1;
    pl->pl_cached = sc->sc_cached < pl->pl_prompt ? sc->sc_cached : pl->pl_prompt;
    pl->pl_cache_write = sc->sc_cache_write < pl->pl_prompt - pl->pl_cached
                             ? sc->sc_cache_write
                             : pl->pl_prompt - pl->pl_cached;
    pl->pl_output = sc->sc_tokens >= 0 ? sc->sc_tokens : TG_MOCK_DEFAULT_TOKENS;
    if (rq->rq_max_tokens >= 0 && rq->rq_max_tokens < pl->pl_output && !sc->sc_ignore_max) {
        pl->pl_output = rq->rq_max_tokens;
        pl->pl_truncated = 1;
    }
    pl->pl_reasoning = sc->sc_reasoning;
    pl->pl_n = rq->rq_n < 1 ? 1 : rq->rq_n;
    pl->pl_tool = rq->rq_tools > 0 && rq->rq_tool[0] != '\0' && !rq->rq_tool_choice_none &&
                  !sc->sc_no_tool;
}
