/* sse.c: server-sent events as they pass through the agent. The splitter
 * cuts the upstream byte stream at event boundaries so each event can be
 * forwarded (or hidden: the extra usage chunk the gateway asked for on the
 * client's behalf) the moment it is complete; the readers walk an event's
 * data with json.h's cursor and take each field only where the protocol
 * puts it (a chat chunk's top-level usage and choices[i].delta, a
 * Responses event's top-level type and response.usage). */
#include <jansson.h>
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
    int bad = tg_json_peek(&j) != TG_JSON_OBJECT || tg_json_members(&j, resp_member, &c) != 0 ||
              tg_json_end(&j) != 0;
    /* Finality comes from the type (the data's, else the event: line) even
     * when the data does not parse: the stream still ended, and only its
     * usage is lost (the caller counts locally). */
    re->re_final = strcmp(re->re_type, "response.completed") == 0 ||
                   strcmp(re->re_type, "response.incomplete") == 0 || strcmp(re->re_type, "response.failed") == 0;
    if (bad)
        return TG_AGENT_EJSON;
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
    const struct tg_proto_vendor *ac_vendor;
    walk_t ac_walk;
    long ac_choices;
} answer_ctx_t;

static int answer_member(tg_json_t *j, const char *name, void *arg)
{
    answer_ctx_t *c = arg;
    tg_answer_t *an = c->ac_an;
    if (strcmp(name, "usage") == 0 && !an->an_usage) {
        /* its counts in this pass: the object is walked once */
        int t = tg_json_peek(j);
        size_t s = j->j_pos;
        int rc = tg_agent_usage_read(j, c->ac_vendor, &an->an_counts, &an->an_counts_rc);
        if (rc == 0 && t == TG_JSON_OBJECT) {
            an->an_usage = j->j_p + s;
            an->an_usage_len = j->j_pos - s;
        }
        return rc;
    }
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

int tg_agent_answer(const char *body, size_t len, int kind, const struct tg_proto_vendor *vendor,
                    tg_answer_t *an, tg_buf_t *text, char *err, size_t errlen)
{
    tg_json_t j;
    int rc;
    memset(an, 0, sizeof *an);
    an->an_images = -1;
    an->an_counts_rc = TG_AGENT_EJSON;
    answer_ctx_t c = {an, kind, vendor, {"message", text, an->an_finish, sizeof an->an_finish}, -1};
    tg_json_init(&j, body, len, err, errlen);
    if (tg_json_peek(&j) != TG_JSON_OBJECT)
        return tg_errf(err, errlen, TG_AGENT_EJSON, "the answer is not a JSON object");
    if ((rc = tg_json_members(&j, answer_member, &c)) != 0)
        return rc;
    return tg_json_end(&j);
}

/* ---- an answer turned into a stream ------------------------------------------ *
 * An upstream that ignored stream: true answers with JSON. Its client
 * asked for SSE, so the answer is re-cut as the stream it would have been:
 * one chunk per choice's whole delta (tool calls with their index), the
 * usage chunk when the client asked for it, [DONE]; or, for Responses, the
 * one final event carrying the whole response. */

typedef struct span {
    size_t s_at, s_len; /* s_len 0: absent */
} span_t;

/* Appends body[s] with line breaks (whitespace between tokens of valid
 * JSON: inside strings they are escaped) turned into spaces, so it fits
 * one data line. */
static int put_span(tg_buf_t *out, const char *body, span_t s)
{
    size_t run = s.s_at, end = s.s_at + s.s_len;
    for (size_t i = s.s_at; i < end; i++) {
        if (body[i] != '\n' && body[i] != '\r')
            continue;
        if (tg_buf_append(out, body + run, i - run) || tg_buf_append(out, " ", 1))
            return TG_AGENT_ETOOBIG;
        run = i + 1;
    }
    return tg_buf_append(out, body + run, end - run) ? TG_AGENT_ETOOBIG : 0;
}

static int value_span(tg_json_t *j, span_t *s)
{
    tg_json_peek(j);
    s->s_at = j->j_pos;
    int rc = tg_json_skip(j);
    s->s_len = j->j_pos - s->s_at;
    return rc;
}

typedef struct conv {
    const char *cv_body;
    tg_buf_t *cv_out;
    span_t cv_index, cv_finish, cv_content;
    long cv_calls;
} conv_t;

static int conv_call(tg_json_t *j, conv_t *c)
{
    span_t s;
    int rc = value_span(j, &s);
    if (rc || c->cv_body[s.s_at] != '{')
        return rc;
    /* the element's members, with the index a stream's tool call carries */
    if (tg_buf_printf(c->cv_out, "%s{\"index\":%ld", c->cv_calls ? "," : "", c->cv_calls))
        return TG_AGENT_ETOOBIG;
    c->cv_calls++;
    tg_json_t in;
    tg_json_init(&in, c->cv_body + s.s_at + 1, s.s_len - 1, NULL, 0);
    if (tg_json_peek(&in) != TG_JSON_END && c->cv_body[s.s_at + 1 + in.j_pos] != '}' &&
        tg_buf_append(c->cv_out, ",", 1))
        return TG_AGENT_ETOOBIG;
    return put_span(c->cv_out, c->cv_body, (span_t){s.s_at + 1, s.s_len - 1});
}

static int conv_message(tg_json_t *j, const char *name, void *arg)
{
    conv_t *c = arg;
    int rc;
    if (strcmp(name, "content") == 0)
        return value_span(j, &c->cv_content);
    if (strcmp(name, "tool_calls") != 0 || tg_json_peek(j) != TG_JSON_ARRAY)
        return tg_json_skip(j);
    if (tg_buf_puts(c->cv_out, ",\"tool_calls\":[") || (rc = tg_json_enter(j)) != 0)
        return TG_AGENT_ETOOBIG;
    while ((rc = tg_json_next(j, NULL, 0)) == 1)
        if ((rc = conv_call(j, c)) != 0)
            return rc;
    return rc ? rc : (tg_buf_puts(c->cv_out, "]") ? TG_AGENT_ETOOBIG : 0);
}

static int conv_choice(tg_json_t *j, const char *name, void *arg)
{
    conv_t *c = arg;
    if (strcmp(name, "index") == 0)
        return value_span(j, &c->cv_index);
    if (strcmp(name, "finish_reason") == 0)
        return value_span(j, &c->cv_finish);
    if (strcmp(name, "message") == 0)
        return tg_json_members(j, conv_message, c);
    return tg_json_skip(j);
}

typedef struct conv_top {
    span_t ct_id, ct_created, ct_model, ct_choices, ct_usage, ct_status;
} conv_top_t;

static int conv_top_member(tg_json_t *j, const char *name, void *arg)
{
    conv_top_t *t = arg;
    span_t *s = strcmp(name, "id") == 0        ? &t->ct_id
                : strcmp(name, "created") == 0 ? &t->ct_created
                : strcmp(name, "model") == 0   ? &t->ct_model
                : strcmp(name, "choices") == 0 ? &t->ct_choices
                : strcmp(name, "usage") == 0   ? &t->ct_usage
                : strcmp(name, "status") == 0  ? &t->ct_status
                                               : NULL;
    return s ? value_span(j, s) : tg_json_skip(j);
}

/* The chunk head: {"id":..,"object":"chat.completion.chunk","created":..,"model":.. */
static int chunk_open(tg_buf_t *out, const char *body, const conv_top_t *t)
{
    int rc = tg_buf_puts(out, "data: {\"id\":");
    rc |= t->ct_id.s_len ? put_span(out, body, t->ct_id) : tg_buf_puts(out, "\"\"");
    rc |= tg_buf_puts(out, ",\"object\":\"chat.completion.chunk\",\"created\":");
    rc |= t->ct_created.s_len ? put_span(out, body, t->ct_created) : tg_buf_puts(out, "0");
    rc |= tg_buf_puts(out, ",\"model\":");
    rc |= t->ct_model.s_len ? put_span(out, body, t->ct_model) : tg_buf_puts(out, "\"\"");
    return rc ? TG_AGENT_ETOOBIG : 0;
}

static int chat_to_stream(const char *body, const conv_top_t *t, int include_usage, tg_buf_t *out, tg_buf_t *tail)
{
    int rc = chunk_open(out, body, t);
    rc |= tg_buf_puts(out, ",\"choices\":[");
    if (rc)
        return TG_AGENT_ETOOBIG;
    tg_json_t j;
    tg_json_init(&j, body + t->ct_choices.s_at, t->ct_choices.s_len, NULL, 0);
    long k = 0;
    if (t->ct_choices.s_len && tg_json_peek(&j) == TG_JSON_ARRAY && (rc = tg_json_enter(&j)) == 0) {
        while ((rc = tg_json_next(&j, NULL, 0)) == 1) {
            conv_t c;
            memset(&c, 0, sizeof c);
            c.cv_body = body + t->ct_choices.s_at;
            c.cv_out = out;
            /* the delta's members go straight out; the rest after them */
            if (tg_buf_printf(out, "%s{\"delta\":{\"role\":\"assistant\"", k ? "," : ""))
                return TG_AGENT_ETOOBIG;
            if ((rc = tg_json_members(&j, conv_choice, &c)) != 0)
                return rc;
            if (c.cv_content.s_len &&
                (tg_buf_puts(out, ",\"content\":") || put_span(out, c.cv_body, c.cv_content)))
                return TG_AGENT_ETOOBIG;
            if (tg_buf_puts(out, "},\"index\":") ||
                (c.cv_index.s_len ? put_span(out, c.cv_body, c.cv_index) : tg_buf_printf(out, "%ld", k)) ||
                tg_buf_puts(out, ",\"finish_reason\":") ||
                (c.cv_finish.s_len ? put_span(out, c.cv_body, c.cv_finish) : tg_buf_puts(out, "null")) ||
                tg_buf_puts(out, "}"))
                return TG_AGENT_ETOOBIG;
            k++;
        }
    }
    if (rc < 0)
        return rc;
    if (tg_buf_puts(out, "]}\n\n"))
        return TG_AGENT_ETOOBIG;
    if (include_usage && t->ct_usage.s_len) {
        if (chunk_open(out, body, t) || tg_buf_puts(out, ",\"choices\":[],\"usage\":") ||
            put_span(out, body, t->ct_usage) || tg_buf_puts(out, "}\n\n"))
            return TG_AGENT_ETOOBIG;
    }
    return tg_buf_puts(tail, "data: [DONE]\n\n") ? TG_AGENT_ETOOBIG : 0;
}

/* Appends one Responses stream event: "event: TYPE" and its data, an
 * object {"type", "sequence_number", ...fields of `extra`}. Takes extra. */
static int resp_event(tg_buf_t *b, const char *type, int *seq, json_t *extra)
{
    json_t *o = extra ? extra : json_object();
    int rc = -1;
    if (!o || json_object_set_new(o, "type", json_string(type)) != 0 ||
        json_object_set_new(o, "sequence_number", json_integer((*seq)++)) != 0)
        goto done;
    char *s = json_dumps(o, JSON_COMPACT);
    if (!s)
        goto done;
    rc = tg_buf_printf(b, "event: %s\ndata: %s\n\n", type, s) ? -1 : 0;
    free(s);
done:
    json_decref(o);
    return rc;
}

/* A whole Responses answer as the stream the API would have sent:
 * response.created (in progress, no output), for each output item its
 * added event, the text of a message as one output_text.delta (a function
 * call's arguments as one function_call_arguments.delta) with their done
 * events, the item's done event, then the final event of its status (held
 * in tail). The SDKs' stream helpers need the created event to start their
 * snapshot and the deltas to show text. Not the hot path: a tree is built. */
static int responses_to_stream(const char *body, size_t len, const char *final, tg_buf_t *out, tg_buf_t *tail)
{
    json_error_t je;
    json_t *resp = json_loadb(body, len, 0, &je);
    int seq = 0, rc = TG_AGENT_EJSON;
    if (!json_is_object(resp))
        goto done;
    json_t *started = json_deep_copy(resp);
    if (!started)
        goto nomem;
    json_object_set_new(started, "status", json_string("in_progress"));
    json_object_set_new(started, "output", json_array());
    json_object_del(started, "usage");
    if (resp_event(out, "response.created", &seq, json_pack("{s:o}", "response", started)) != 0)
        goto nomem;
    json_t *items = json_object_get(resp, "output");
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item) {
        const char *itype = json_string_value(json_object_get(item, "type"));
        const char *iid = json_string_value(json_object_get(item, "id"));
        json_t *opening = json_deep_copy(item);
        if (!opening)
            goto nomem;
        json_object_set_new(opening, "status", json_string("in_progress"));
        int is_msg = itype && strcmp(itype, "message") == 0;
        int is_call = itype && strcmp(itype, "function_call") == 0;
        if (is_msg)
            json_object_set_new(opening, "content", json_array());
        if (is_call)
            json_object_set_new(opening, "arguments", json_string(""));
        if (resp_event(out, "response.output_item.added", &seq,
                       json_pack("{s:I,s:o}", "output_index", (json_int_t)i, "item", opening)) != 0)
            goto nomem;
        if (is_msg) {
            size_t k;
            json_t *part;
            json_array_foreach(json_object_get(item, "content"), k, part) {
                const char *ptype = json_string_value(json_object_get(part, "type"));
                const char *text = json_string_value(json_object_get(part, "text"));
                json_t *empty = json_deep_copy(part);
                if (!empty)
                    goto nomem;
                if (text)
                    json_object_set_new(empty, "text", json_string(""));
                if (resp_event(out, "response.content_part.added", &seq,
                               json_pack("{s:s?,s:I,s:I,s:o}", "item_id", iid, "output_index", (json_int_t)i,
                                         "content_index", (json_int_t)k, "part", empty)) != 0)
                    goto nomem;
                if (ptype && strcmp(ptype, "output_text") == 0 && text) {
                    if (resp_event(out, "response.output_text.delta", &seq,
                                   json_pack("{s:s?,s:I,s:I,s:s}", "item_id", iid, "output_index", (json_int_t)i,
                                             "content_index", (json_int_t)k, "delta", text)) != 0 ||
                        resp_event(out, "response.output_text.done", &seq,
                                   json_pack("{s:s?,s:I,s:I,s:s}", "item_id", iid, "output_index", (json_int_t)i,
                                             "content_index", (json_int_t)k, "text", text)) != 0)
                        goto nomem;
                }
                if (resp_event(out, "response.content_part.done", &seq,
                               json_pack("{s:s?,s:I,s:I,s:O}", "item_id", iid, "output_index", (json_int_t)i,
                                         "content_index", (json_int_t)k, "part", part)) != 0)
                    goto nomem;
            }
        }
        const char *args = is_call ? json_string_value(json_object_get(item, "arguments")) : NULL;
        if (args && (resp_event(out, "response.function_call_arguments.delta", &seq,
                                json_pack("{s:s?,s:I,s:s}", "item_id", iid, "output_index", (json_int_t)i, "delta",
                                          args)) != 0 ||
                     resp_event(out, "response.function_call_arguments.done", &seq,
                                json_pack("{s:s?,s:I,s:s}", "item_id", iid, "output_index", (json_int_t)i,
                                          "arguments", args)) != 0))
            goto nomem;
        if (resp_event(out, "response.output_item.done", &seq,
                       json_pack("{s:I,s:O}", "output_index", (json_int_t)i, "item", item)) != 0)
            goto nomem;
    }
    rc = resp_event(tail, final, &seq, json_pack("{s:O}", "response", resp)) != 0 ? TG_AGENT_ETOOBIG : 0;
    goto done;
nomem:
    rc = TG_AGENT_ETOOBIG;
done:
    json_decref(resp);
    return rc;
}

int tg_sse_from_answer(const char *body, size_t len, int kind, int include_usage, tg_buf_t *out, tg_buf_t *tail)
{
    conv_top_t t;
    tg_json_t j;
    memset(&t, 0, sizeof t);
    tg_json_init(&j, body, len, NULL, 0);
    if (tg_json_peek(&j) != TG_JSON_OBJECT || tg_json_members(&j, conv_top_member, &t) != 0 ||
        tg_json_end(&j) != 0)
        return TG_AGENT_EJSON;
    if (kind == TG_ANSWER_CHAT)
        return chat_to_stream(body, &t, include_usage, out, tail);
    /* Responses: the events of its items, then the final event of its status */
    const char *type = "response.completed";
    if (t.ct_status.s_len == 12 && memcmp(body + t.ct_status.s_at, "\"incomplete\"", 12) == 0)
        type = "response.incomplete";
    else if (t.ct_status.s_len == 8 && memcmp(body + t.ct_status.s_at, "\"failed\"", 8) == 0)
        type = "response.failed";
    return responses_to_stream(body, len, type, out, tail);
}
