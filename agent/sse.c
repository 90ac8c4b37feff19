/* sse.c: server-sent events as they pass through the agent. The splitter
 * cuts the upstream byte stream at event boundaries so each event can be
 * forwarded (or hidden: the extra usage chunk the gateway asked for on the
 * client's behalf) the moment it is complete; the readers walk an event's
 * data with json.h's cursor and take each field only where the protocol
 * puts it (a chat chunk's top-level usage and choices[i].delta, a
 * Responses event's top-level type and response.usage). */
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"
#include "agent/json.h"

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

/* The JSON of an event's data line: after "data:" and one optional space,
 * to the end of that line. 0 when the event has no data line. */
static int data_line(const char *ev, size_t n, const char **d, size_t *dn)
{
    for (size_t i = 0; i + 5 <= n; i++) {
        if ((i == 0 || ev[i - 1] == '\n') && memcmp(ev + i, "data:", 5) == 0) {
            size_t s = i + 5, e;
            if (s < n && ev[s] == ' ')
                s++;
            for (e = s; e < n && ev[e] != '\n' && ev[e] != '\r'; e++)
                ;
            *d = ev + s;
            *dn = e - s;
            return 1;
        }
    }
    return 0;
}

/* The event's `event:` line value into out (NUL-terminated), "" if none. */
static void event_name(const char *ev, size_t n, char *out, size_t outlen)
{
    out[0] = '\0';
    if (n < 6 || memcmp(ev, "event:", 6) != 0)
        return;
    size_t s = 6, e;
    while (s < n && ev[s] == ' ')
        s++;
    for (e = s; e < n && ev[e] != '\n' && ev[e] != '\r'; e++)
        ;
    size_t k = e - s < outlen - 1 ? e - s : outlen - 1;
    memcpy(out, ev + s, k);
    out[k] = '\0';
}

/* The string value at the cursor appended to text (when text is set and
 * the value is a string), else skipped. */
static int take_text(tg_json_t *j, tg_buf_t *text)
{
    if (!text || tg_json_peek(j) != TG_JSON_STRING)
        return tg_json_skip(j);
    size_t at = j->j_pos;
    int rc = tg_json_string(j, text);
    if (rc != TG_AGENT_ETOOBIG)
        return rc;
    /* past text's cap the count stays partial; the walk goes on */
    j->j_pos = at;
    return tg_json_skip(j);
}

/* The value at the cursor, an object or null: points *p at an object's
 * bytes. */
static int object_span(tg_json_t *j, const char **p, size_t *n)
{
    int t = tg_json_peek(j);
    size_t s = j->j_pos;
    int rc = tg_json_skip(j);
    if (rc == 0 && t == TG_JSON_OBJECT) {
        *p = j->j_p + s;
        *n = j->j_pos - s;
    }
    return rc;
}

/* ---- chat: choices[i].{delta,message}.{content,tool_calls[k].function.arguments} */

typedef struct walk {
    const char *w_inner;  /* "delta" (chunk) or "message" (answer) */
    tg_buf_t *w_text;     /* produced text; NULL: not wanted */
    char *w_finish;       /* first finish_reason */
    size_t w_finlen;
} walk_t;

static int fn_member(tg_json_t *j, const char *name, void *arg)
{
    return strcmp(name, "arguments") == 0 ? take_text(j, arg) : tg_json_skip(j);
}

static int call_member(tg_json_t *j, const char *name, void *arg)
{
    return strcmp(name, "function") == 0 ? tg_json_members(j, fn_member, arg) : tg_json_skip(j);
}

static int message_member(tg_json_t *j, const char *name, void *arg)
{
    walk_t *w = arg;
    if (strcmp(name, "content") == 0)
        return take_text(j, w->w_text);
    if (strcmp(name, "tool_calls") == 0)
        return tg_json_objects(j, call_member, w->w_text, NULL);
    return tg_json_skip(j);
}

static int choice_member(tg_json_t *j, const char *name, void *arg)
{
    walk_t *w = arg;
    if (strcmp(name, "finish_reason") == 0 && !w->w_finish[0] && tg_json_peek(j) == TG_JSON_STRING)
        return tg_json_string_to(j, w->w_finish, w->w_finlen, NULL);
    if (strcmp(name, w->w_inner) == 0)
        return tg_json_members(j, message_member, w);
    return tg_json_skip(j);
}

typedef struct chunk_ctx {
    tg_chunk_t *cc_ck;
    walk_t cc_walk;
    long cc_choices; /* elements of "choices"; -1: none yet */
} chunk_ctx_t;

static int chunk_member(tg_json_t *j, const char *name, void *arg)
{
    chunk_ctx_t *c = arg;
    if (strcmp(name, "choices") == 0 && c->cc_choices < 0)
        return tg_json_objects(j, choice_member, &c->cc_walk, &c->cc_choices);
    if (strcmp(name, "usage") == 0 && !c->cc_ck->ck_usage)
        return object_span(j, &c->cc_ck->ck_usage, &c->cc_ck->ck_usage_len);
    c->cc_ck->ck_error |= strcmp(name, "error") == 0;
    return tg_json_skip(j);
}

int tg_sse_chunk(const char *ev, size_t evlen, tg_chunk_t *ck, tg_buf_t *text)
{
    const char *d;
    size_t dn;
    memset(ck, 0, sizeof *ck);
    if (!data_line(ev, evlen, &d, &dn))
        return 0;
    if (dn >= 6 && memcmp(d, "[DONE]", 6) == 0) {
        ck->ck_kind = TG_CHUNK_DONE;
        return 0;
    }
    chunk_ctx_t c = {ck, {"delta", text, ck->ck_finish, sizeof ck->ck_finish}, -1};
    tg_json_t j;
    tg_json_init(&j, d, dn, NULL, 0);
    if (tg_json_peek(&j) != TG_JSON_OBJECT || tg_json_members(&j, chunk_member, &c) != 0 || tg_json_end(&j) != 0) {
        memset(ck, 0, sizeof *ck);
        return TG_AGENT_EJSON;
    }
    ck->ck_kind = TG_CHUNK_DATA;
    ck->ck_usage_only = c.cc_choices == 0 && ck->ck_usage;
    return 0;
}

/* ---- Responses events: top-level type, delta, response.usage ------------ */

typedef struct resp_ctx {
    tg_resp_event_t *rc_re;
    const char *rc_resp;   /* the "response" object */
    size_t rc_resp_len;
    size_t rc_delta;       /* offset of the "delta" string; 0: none */
} resp_ctx_t;

static int resp_member(tg_json_t *j, const char *name, void *arg)
{
    resp_ctx_t *c = arg;
    if (strcmp(name, "type") == 0 && tg_json_peek(j) == TG_JSON_STRING)
        return tg_json_string_to(j, c->rc_re->re_type, sizeof c->rc_re->re_type, NULL);
    if (strcmp(name, "response") == 0 && !c->rc_resp)
        return object_span(j, &c->rc_resp, &c->rc_resp_len);
    if (strcmp(name, "delta") == 0 && !c->rc_delta && tg_json_peek(j) == TG_JSON_STRING)
        c->rc_delta = j->j_pos; /* decoded once the type is known */
    return tg_json_skip(j);
}

int tg_sse_resp_event(const char *ev, size_t evlen, tg_resp_event_t *re, tg_buf_t *text)
{
    const char *d;
    size_t dn;
    memset(re, 0, sizeof *re);
    event_name(ev, evlen, re->re_type, sizeof re->re_type);
    if (!data_line(ev, evlen, &d, &dn))
        return 0;
    resp_ctx_t c = {re, NULL, 0, 0};
    tg_json_t j;
    tg_json_init(&j, d, dn, NULL, 0);
    if (tg_json_peek(&j) != TG_JSON_OBJECT || tg_json_members(&j, resp_member, &c) != 0 || tg_json_end(&j) != 0)
        return TG_AGENT_EJSON;
    re->re_final = strcmp(re->re_type, "response.completed") == 0 ||
                   strcmp(re->re_type, "response.incomplete") == 0 || strcmp(re->re_type, "response.failed") == 0;
    if (re->re_final && c.rc_resp) {
        tg_json_t r;
        tg_json_init(&r, c.rc_resp, c.rc_resp_len, NULL, 0);
        if (tg_json_enter(&r) == 0 && tg_json_find(&r, "usage") == 1)
            object_span(&r, &re->re_usage, &re->re_usage_len);
    }
    if (c.rc_delta && (strcmp(re->re_type, "response.output_text.delta") == 0 ||
                       strcmp(re->re_type, "response.function_call_arguments.delta") == 0)) {
        tg_json_init(&j, d + c.rc_delta, dn - c.rc_delta, NULL, 0);
        return take_text(&j, text) == TG_AGENT_EJSON ? TG_AGENT_EJSON : 0;
    }
    return 0;
}

/* ---- answers -------------------------------------------------------------- */

/* Appends every string under the value at the cursor (any depth) to out,
 * except the values of members that name a kind or an id rather than
 * text. */
static int all_strings(tg_json_t *j, tg_buf_t *out);

static int string_member(tg_json_t *j, const char *name, void *arg)
{
    static const char *const not_text[] = {"type", "role", "id", "call_id", "status", "detail", "format", "name"};
    for (size_t i = 0; i < sizeof not_text / sizeof not_text[0]; i++)
        if (strcmp(name, not_text[i]) == 0)
            return tg_json_skip(j);
    return all_strings(j, arg);
}

static int all_strings(tg_json_t *j, tg_buf_t *out)
{
    int t = tg_json_peek(j), rc;
    if (t == TG_JSON_STRING)
        return take_text(j, out);
    if (t == TG_JSON_OBJECT)
        return tg_json_members(j, string_member, out);
    if (t != TG_JSON_ARRAY)
        return tg_json_skip(j);
    if ((rc = tg_json_enter(j)) != 0)
        return rc;
    while ((rc = tg_json_next(j, NULL, 0)) == 1)
        if ((rc = all_strings(j, out)) != 0)
            return rc;
    return rc;
}

static int prompt_member(tg_json_t *j, const char *name, void *arg)
{
    if (strcmp(name, "input") == 0 || strcmp(name, "prompt") == 0 || strcmp(name, "instructions") == 0)
        return all_strings(j, arg);
    return tg_json_skip(j);
}

int tg_agent_prompt_text(const char *body, size_t len, tg_buf_t *out)
{
    tg_json_t j;
    tg_json_init(&j, body, len, NULL, 0);
    if (tg_json_peek(&j) != TG_JSON_OBJECT)
        return TG_AGENT_EJSON;
    return tg_json_members(&j, prompt_member, out);
}

/* A Responses answer's output[i]: the text of output_text parts and the
 * arguments of function calls. */
static int part_member(tg_json_t *j, const char *name, void *arg)
{
    return strcmp(name, "text") == 0 ? take_text(j, arg) : tg_json_skip(j);
}

static int output_member(tg_json_t *j, const char *name, void *arg)
{
    if (strcmp(name, "arguments") == 0)
        return take_text(j, arg);
    if (strcmp(name, "content") == 0)
        return tg_json_objects(j, part_member, arg, NULL);
    return tg_json_skip(j);
}

typedef struct answer_ctx {
    tg_answer_t *ac_an;
    int ac_kind;
    walk_t ac_walk;
    long ac_choices;
} answer_ctx_t;

static int answer_member(tg_json_t *j, const char *name, void *arg)
{
    answer_ctx_t *c = arg;
    tg_answer_t *an = c->ac_an;
    if (strcmp(name, "usage") == 0 && !an->an_usage)
        return object_span(j, &an->an_usage, &an->an_usage_len);
    if (c->ac_kind == TG_ANSWER_CHAT && strcmp(name, "choices") == 0 && c->ac_choices < 0)
        return tg_json_objects(j, choice_member, &c->ac_walk, &c->ac_choices);
    if (c->ac_kind == TG_ANSWER_RESPONSES && strcmp(name, "output") == 0)
        return tg_json_objects(j, output_member, c->ac_walk.w_text, NULL);
    if (c->ac_kind == TG_ANSWER_RESPONSES && strcmp(name, "status") == 0 && !an->an_finish[0] &&
        tg_json_peek(j) == TG_JSON_STRING)
        return tg_json_string_to(j, an->an_finish, sizeof an->an_finish, NULL);
    if (c->ac_kind == TG_ANSWER_IMAGES && strcmp(name, "data") == 0 && an->an_images < 0 &&
        tg_json_peek(j) == TG_JSON_ARRAY) {
        int rc = tg_json_enter(j);
        an->an_images = 0;
        while (rc == 0 && (rc = tg_json_next(j, NULL, 0)) == 1 && (rc = tg_json_skip(j)) == 0)
            an->an_images++;
        return rc;
    }
    return tg_json_skip(j);
}

int tg_agent_answer(const char *body, size_t len, int kind, tg_answer_t *an, tg_buf_t *text, char *err,
                    size_t errlen)
{
    tg_json_t j;
    int rc;
    memset(an, 0, sizeof *an);
    an->an_images = -1;
    answer_ctx_t c = {an, kind, {"message", text, an->an_finish, sizeof an->an_finish}, -1};
    tg_json_init(&j, body, len, err, errlen);
    if (tg_json_peek(&j) != TG_JSON_OBJECT)
        return tg_errf(err, errlen, TG_AGENT_EJSON, "the answer is not a JSON object");
    if ((rc = tg_json_members(&j, answer_member, &c)) != 0)
        return rc;
    return tg_json_end(&j);
}
