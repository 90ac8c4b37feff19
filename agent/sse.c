/* sse.c: server-sent events as they pass through the agent, and the usage
 * numbers in OpenAI answers. The splitter cuts the upstream byte stream at
 * event boundaries so each event can be forwarded (or hidden: the extra
 * usage chunk the gateway asked for on the client's behalf) the moment it
 * is complete; the scanners here look for a few bytes, they never build a
 * JSON tree. */
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"

void tg_sse_init(tg_sse_t *s, size_t max_event)
{
    tg_buf_init(&s->ss_pending, max_event);
}

void tg_sse_free(tg_sse_t *s)
{
    tg_buf_free(&s->ss_pending);
}

/* Offset just past the first blank line in p[0..n), or 0 when none. */
static size_t event_end(const char *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] != '\n')
            continue;
        if (p[i + 1] == '\n')
            return i + 2;
        if (p[i + 1] == '\r' && i + 2 < n && p[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

int tg_sse_feed(tg_sse_t *s, const char *p, size_t n, int (*on_event)(void *, const char *, size_t),
                void *arg)
{
    int rc;
    if (s->ss_pending.b_len) {
        /* An event is split across reads: finish it in the buffer. Look only
         * from a little before the old end so the scan stays linear. */
        size_t old = s->ss_pending.b_len;
        if (tg_buf_append(&s->ss_pending, p, n))
            return TG_AGENT_ETOOBIG;
        size_t from = old > 2 ? old - 2 : 0;
        size_t e = event_end(s->ss_pending.b_data + from, s->ss_pending.b_len - from);
        if (!e)
            return 0;
        e += from;
        size_t used = e - old; /* bytes of p consumed */
        if ((rc = on_event(arg, s->ss_pending.b_data, e)) != 0)
            return rc;
        tg_buf_reset(&s->ss_pending);
        p += used;
        n -= used;
    }
    while (n) {
        size_t e = event_end(p, n);
        if (!e)
            break;
        if ((rc = on_event(arg, p, e)) != 0)
            return rc;
        p += e;
        n -= e;
    }
    if (n && tg_buf_append(&s->ss_pending, p, n))
        return TG_AGENT_ETOOBIG;
    return 0;
}

/* Finds `"name"` followed by ':' at any depth; returns the offset of the
 * value's first byte or -1. A textual search: good enough for the fixed
 * shapes of provider answers, and it never mistakes a string's content for
 * a key because a key is followed by a colon outside quotes only. */
static long find_key(const char *p, size_t n, const char *name)
{
    size_t k = strlen(name);
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
            continue;
        }
        if (c != '"')
            continue;
        if (i + k + 1 < n && memcmp(p + i + 1, name, k) == 0 && p[i + k + 1] == '"') {
            size_t j = i + k + 2;
            while (j < n && (p[j] == ' ' || p[j] == '\t' || p[j] == '\n' || p[j] == '\r'))
                j++;
            if (j < n && p[j] == ':') {
                j++;
                while (j < n && (p[j] == ' ' || p[j] == '\t' || p[j] == '\n' || p[j] == '\r'))
                    j++;
                return (long)j;
            }
        }
        in_str = 1;
    }
    return -1;
}

/* Length of the object or array starting at p[0] ('{' or '['), 0 if it
 * does not close within n. */
static size_t span_len(const char *p, size_t n)
{
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0)
                return i + 1;
        }
    }
    return 0;
}

int tg_sse_classify(const char *ev, size_t evlen, const char **usage, size_t *usage_len)
{
    const char *d = NULL;
    for (size_t i = 0; i + 5 <= evlen; i++) {
        if ((i == 0 || ev[i - 1] == '\n') && memcmp(ev + i, "data:", 5) == 0) {
            d = ev + i + 5;
            break;
        }
    }
    if (!d)
        return 0;
    size_t n = evlen - (size_t)(d - ev);
    while (n && *d == ' ') {
        d++;
        n--;
    }
    if (n >= 6 && memcmp(d, "[DONE]", 6) == 0)
        return 2;
    long c = find_key(d, n, "choices");
    if (c < 0 || d[c] != '[')
        return 0;
    size_t j = (size_t)c + 1;
    while (j < n && (d[j] == ' ' || d[j] == '\n'))
        j++;
    if (j >= n || d[j] != ']')
        return 0;
    long u = find_key(d, n, "usage");
    if (u < 0 || d[u] != '{')
        return 0;
    size_t ul = span_len(d + u, n - (size_t)u);
    if (!ul)
        return 0;
    *usage = d + u;
    *usage_len = ul;
    return 1;
}

static long num_at(const char *p, size_t n, const char *name)
{
    long at = find_key(p, n, name);
    if (at < 0 || (size_t)at >= n || p[at] < '0' || p[at] > '9')
        return -1;
    long v = 0;
    for (size_t i = (size_t)at; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
        if (v > (long)1e15)
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* The value of the first of two alternative keys: OpenAI's chat and
 * embeddings name the counts prompt_/completion_tokens, the Responses and
 * Images APIs input_/output_tokens. */
static long num_either(const char *p, size_t n, const char *a, const char *b)
{
    long v = num_at(p, n, a);
    return v >= 0 ? v : num_at(p, n, b);
}

static long detail(const char *json, size_t len, const char *a, const char *b, const char *name)
{
    long d = find_key(json, len, a);
    if (d < 0 || json[d] != '{')
        d = find_key(json, len, b);
    if (d < 0 || json[d] != '{')
        return -1;
    size_t l = span_len(json + d, len - (size_t)d);
    return num_at(json + d, l, name);
}

int tg_agent_usage_parse(const char *json, size_t len, tg_usage_t *u)
{
    u->us_prompt = num_either(json, len, "prompt_tokens", "input_tokens");
    u->us_completion = num_either(json, len, "completion_tokens", "output_tokens");
    u->us_cached = detail(json, len, "prompt_tokens_details", "input_tokens_details", "cached_tokens");
    u->us_reasoning = detail(json, len, "completion_tokens_details", "output_tokens_details", "reasoning_tokens");
    return (u->us_prompt < 0 && u->us_completion < 0) ? TG_AGENT_EJSON : 0;
}

long tg_agent_count_array(const char *json, size_t len, const char *key)
{
    long at = find_key(json, len, key);
    if (at < 0 || json[at] != '[')
        return -1;
    const char *p = json + at;
    size_t n = len - (size_t)at;
    long count = 0;
    int depth = 0, in_str = 0, empty = 1;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            continue;
        if (depth == 1 && empty && c != ']')
            empty = 0, count = 1;
        if (c == '"')
            in_str = 1;
        else if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']') {
            if (--depth == 0)
                return count;
        } else if (c == ',' && depth == 1)
            count++;
    }
    return -1;
}

int tg_agent_find_usage(const char *body, size_t len, const char **p, size_t *n)
{
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\n' || body[i] == '\r' || body[i] == '\t'))
        i++;
    if (i >= len || body[i] != '{')
        return TG_AGENT_EJSON;
    /* The usage object of a chat answer is top-level; nested "usage" keys
     * (none in the OpenAI shapes) would be found first only if they came
     * earlier, which the API's field order rules out. */
    long u = find_key(body + i, len - i, "usage");
    if (u < 0 || body[i + (size_t)u] != '{')
        return 0;
    size_t l = span_len(body + i + u, len - i - (size_t)u);
    if (!l)
        return TG_AGENT_EJSON;
    *p = body + i + u;
    *n = l;
    return 1;
}

int tg_agent_collect_key(const char *json, size_t n, const char *key, tg_buf_t *out)
{
    size_t at = 0;
    while (at < n) {
        long v = find_key(json + at, n - at, key);
        if (v < 0)
            break;
        size_t pos = at + (size_t)v;
        if (json[pos] != '"') {
            at = pos;
            continue;
        }
        size_t used = 0;
        int rc = tg_agent_json_decode(json + pos, n - pos, out, &used);
        if (rc == TG_AGENT_ETOOBIG)
            return rc;
        if (rc)
            break;
        at = pos + used;
    }
    return 0;
}

int tg_agent_collect_text(const char *json, size_t n, tg_buf_t *out)
{
    int rc = tg_agent_collect_key(json, n, "content", out);
    return rc ? rc : tg_agent_collect_key(json, n, "arguments", out);
}
