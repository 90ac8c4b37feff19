/* check.c: the client stream grammars as two small state machines. Every
 * event a converter writes passes here first; a violation ends the stream
 * with an error event instead (stream.c). tg_proto_stream_check runs the same
 * machines over a whole SSE text, for tests and fixtures.
 *
 * Anthropic: message_start (usage.input_tokens a count) first; then blocks
 * whose indices run 0, 1, 2... without gaps, one open at a time:
 * content_block_start (a tool_use with its id and name), deltas of the
 * block's own kind (text_delta; input_json_delta; thinking_delta or
 * signature_delta; none for redacted_thinking), content_block_stop; then one
 * message_delta whose stop_reason is tool_use exactly when a tool_use block
 * was sent, with usage; then message_stop. ping anywhere after the start.
 * In passthrough (ck_pass: the upstream's own events, checked before their
 * bytes go out) block types and events this file does not know are
 * accepted (server tools, later additions: their deltas too), and the
 * stop_reason rule is one way: tool_use needs a tool_use block, and beside
 * one only a stop that cut it short (max_tokens, pause_turn, refusal,
 * stop_sequence) or tool_use itself, never end_turn.
 *
 * OpenAI: every chunk a chat.completion.chunk with the first chunk's id; the
 * first delta carries role "assistant"; tool-call indices 0, 1, 2... each
 * first seen with id, type "function" and function.name, later deltas with
 * neither id nor name; one finish_reason, tool_calls exactly when a call was
 * sent; after it only the usage chunk (choices: [], only when asked, required
 * then); data: [DONE] last.
 *
 * Responses: every event's data.type is its name and its sequence_number
 * grows; response.created (status in_progress) first, response.in_progress
 * before any item; output items indexed 0, 1, 2... one open at a time:
 * output_item.added, then for a message content parts 0..n each
 * content_part.added, output_text.delta..., output_text.done,
 * content_part.done, and for a function_call (call_id and name given)
 * function_call_arguments.delta... and .done once; output_item.done (status
 * completed); then response.completed (status completed) or
 * response.incomplete (status incomplete, incomplete_details.reason) with
 * every item in response.output and usage. An error event ends any of the
 * three streams anywhere. */
#include <stdio.h>
#include <string.h>

#include "proto/proto_int.h"

#define DEFAULT_MAX_EVENT_CHECK ((size_t)64 << 20)

enum { AN_INIT, AN_MESSAGE, AN_BLOCK, AN_DELTA_SENT, AN_DONE };
enum { OA_INIT, OA_STREAMING, OA_FINISHED, OA_USAGE, OA_DONE };
enum { RS_INIT, RS_RESPONSE, RS_ITEM, RS_DONE };

void tg_proto__check_init(tg_proto_check_t *c, tg_proto_kind_t kind, int include_usage)
{
    memset(c, 0, sizeof *c);
    c->ck_kind = kind;
    c->ck_open = -1;
    c->ck_include_usage = include_usage;
    c->ck_seq = -1;
}

int tg_proto__check_complete(const tg_proto_check_t *c)
{
    if (c->ck_kind == TG_PROTO_RESPONSES)
        return c->ck_state == RS_DONE;
    return c->ck_kind == TG_PROTO_ANTHROPIC ? c->ck_state == AN_DONE : c->ck_state == OA_DONE;
}

#define FAIL(...)                                                                                                  \
    do {                                                                                                           \
        char m_[256];                                                                                              \
        snprintf(m_, sizeof m_, __VA_ARGS__);                                                                      \
        return tg_errf(err, errlen, TG_PROTO_EGRAMMAR, "event %d (%s): %s", c->ck_events, name, m_);                \
    } while (0)

static int nonempty(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) && json_string_length(v) > 0;
}

static int block_type(const char *t)
{
    if (!t)
        return -1;
    if (!strcmp(t, "text"))
        return TG_PROTO_BLOCK_TEXT;
    if (!strcmp(t, "tool_use"))
        return TG_PROTO_BLOCK_TOOL_USE;
    if (!strcmp(t, "thinking"))
        return TG_PROTO_BLOCK_THINKING;
    if (!strcmp(t, "redacted_thinking"))
        return TG_PROTO_BLOCK_REDACTED_THINKING;
    return -1;
}

static int delta_fits(int block, const char *dt)
{
    if (!dt)
        return 0;
    switch (block) {
    case -1: return 1; /* a block type only passthrough accepts: its deltas are its own */
    case TG_PROTO_BLOCK_TEXT: return !strcmp(dt, "text_delta") || !strcmp(dt, "citations_delta");
    case TG_PROTO_BLOCK_TOOL_USE: return !strcmp(dt, "input_json_delta");
    case TG_PROTO_BLOCK_THINKING: return !strcmp(dt, "thinking_delta") || !strcmp(dt, "signature_delta");
    default: break;
    }
    return 0;
}

static int check_anthropic(tg_proto_check_t *c, const char *name, json_t *d, char *err, size_t errlen)
{
    const char *type = json_string_value(json_object_get(d, "type"));
    if (!type || strcmp(type, name) != 0)
        FAIL("data.type '%s' does not match the event name", type ? type : "(none)");
    if (!strcmp(name, "error")) {
        c->ck_state = AN_DONE;
        return 0;
    }
    if (c->ck_state == AN_DONE)
        FAIL("after message_stop");
    if (!strcmp(name, "ping")) {
        if (c->ck_state == AN_INIT)
            FAIL("before message_start");
        return 0;
    }
    if (!strcmp(name, "message_start")) {
        if (c->ck_state != AN_INIT)
            FAIL("message_start twice");
        json_t *u = json_object_get(json_object_get(d, "message"), "usage");
        if (!json_is_integer(json_object_get(u, "input_tokens")))
            FAIL("message.usage.input_tokens missing");
        c->ck_state = AN_MESSAGE;
        return 0;
    }
    if (c->ck_state == AN_INIT)
        FAIL("before message_start");
    json_t *jidx = json_object_get(d, "index");
    int idx = json_is_integer(jidx) ? (int)json_integer_value(jidx) : -1;
    if (!strcmp(name, "content_block_start")) {
        if (c->ck_state == AN_BLOCK)
            FAIL("index %d while block %d is open", idx, c->ck_open);
        if (c->ck_state != AN_MESSAGE)
            FAIL("a block after message_delta");
        if (idx != c->ck_next)
            FAIL("index %d where %d comes next", idx, c->ck_next);
        json_t *cb = json_object_get(d, "content_block");
        int bt = block_type(json_string_value(json_object_get(cb, "type")));
        if (bt < 0 && !c->ck_pass)
            FAIL("unknown content_block.type");
        if (bt == TG_PROTO_BLOCK_TOOL_USE) {
            if (!nonempty(cb, "id") || !nonempty(cb, "name"))
                FAIL("tool_use without its id and name");
            c->ck_tool_sent = 1;
        }
        c->ck_open = idx;
        c->ck_open_type = bt;
        c->ck_next++;
        c->ck_state = AN_BLOCK;
        return 0;
    }
    if (!strcmp(name, "content_block_delta")) {
        if (c->ck_state != AN_BLOCK || idx != c->ck_open)
            FAIL("delta for index %d, open block %d", idx, c->ck_open);
        const char *dt = json_string_value(json_object_get(json_object_get(d, "delta"), "type"));
        if (!delta_fits(c->ck_open_type, dt))
            FAIL("%s in a block of another kind", dt ? dt : "untyped delta");
        return 0;
    }
    if (!strcmp(name, "content_block_stop")) {
        if (c->ck_state != AN_BLOCK || idx != c->ck_open)
            FAIL("stop for index %d, open block %d", idx, c->ck_open);
        c->ck_open = -1;
        c->ck_state = AN_MESSAGE;
        return 0;
    }
    if (!strcmp(name, "message_delta")) {
        if (c->ck_state == AN_BLOCK)
            FAIL("message_delta while block %d is open", c->ck_open);
        if (c->ck_state != AN_MESSAGE)
            FAIL("message_delta twice");
        const char *sr = json_string_value(json_object_get(json_object_get(d, "delta"), "stop_reason"));
        if (!sr)
            FAIL("delta.stop_reason missing");
        int tool_stop = !strcmp(sr, "tool_use");
        if (c->ck_pass ? (tool_stop && !c->ck_tool_sent) || (c->ck_tool_sent && !strcmp(sr, "end_turn"))
                       : c->ck_tool_sent != tool_stop)
            FAIL("stop_reason %s %s a tool_use block", sr, c->ck_tool_sent ? "beside" : "without");
        if (!json_is_object(json_object_get(d, "usage")))
            FAIL("usage missing");
        c->ck_state = AN_DELTA_SENT;
        return 0;
    }
    if (!strcmp(name, "message_stop")) {
        if (c->ck_state != AN_DELTA_SENT)
            FAIL("message_stop before message_delta");
        c->ck_state = AN_DONE;
        return 0;
    }
    if (c->ck_pass)
        return 0; /* an event type added after this file: passed as it came */
    FAIL("unknown event");
}

static int check_tool_calls(tg_proto_check_t *c, const char *name, json_t *tcs, char *err, size_t errlen)
{
    size_t i;
    json_t *tc;
    json_array_foreach(tcs, i, tc)
    {
        json_t *jidx = json_object_get(tc, "index");
        if (!json_is_integer(jidx))
            FAIL("tool_calls[%zu].index missing", i);
        int idx = (int)json_integer_value(jidx);
        json_t *fn = json_object_get(tc, "function");
        if (idx == c->ck_next) {
            const char *type = json_string_value(json_object_get(tc, "type"));
            if (!nonempty(tc, "id") || !type || strcmp(type, "function") != 0 || !nonempty(fn, "name"))
                FAIL("tool call %d opened without id, type and function.name", idx);
            c->ck_next++;
            c->ck_tool_sent = 1;
        } else if (idx >= 0 && idx < c->ck_next) {
            if (json_object_get(tc, "id") || json_object_get(fn, "name"))
                FAIL("tool call %d repeats its id or name", idx);
        } else {
            FAIL("tool call index %d where %d comes next", idx, c->ck_next);
        }
    }
    return 0;
}

static int check_openai(tg_proto_check_t *c, const char *event, json_t *d, char *err, size_t errlen)
{
    const char *name = event ? event : "chunk";
    if (c->ck_state == OA_DONE)
        FAIL("after the end");
    if (event) { /* [DONE] */
        if (c->ck_state != OA_FINISHED && c->ck_state != OA_USAGE)
            FAIL("[DONE] before a finish_reason");
        if (c->ck_include_usage && c->ck_state != OA_USAGE)
            FAIL("[DONE] without the usage chunk that was asked for");
        c->ck_state = OA_DONE;
        return 0;
    }
    if (json_is_object(json_object_get(d, "error"))) {
        c->ck_state = OA_DONE;
        return 0;
    }
    const char *obj = json_string_value(json_object_get(d, "object"));
    const char *id = json_string_value(json_object_get(d, "id"));
    if (!obj || strcmp(obj, "chat.completion.chunk") != 0)
        FAIL("object is not chat.completion.chunk");
    if (!id)
        FAIL("id missing");
    if (c->ck_state == OA_INIT)
        snprintf(c->ck_id, sizeof c->ck_id, "%s", id);
    else if (strncmp(c->ck_id, id, sizeof c->ck_id - 1) != 0)
        FAIL("id changed from '%s'", c->ck_id);
    json_t *choices = json_object_get(d, "choices");
    if (!json_is_array(choices))
        FAIL("choices missing");
    if (!json_array_size(choices)) {
        if (c->ck_state != OA_FINISHED)
            FAIL("a usage chunk before the finish_reason or twice");
        if (!c->ck_include_usage)
            FAIL("a usage chunk the client did not ask for");
        if (!json_is_object(json_object_get(d, "usage")))
            FAIL("usage chunk without usage");
        c->ck_state = OA_USAGE;
        return 0;
    }
    if (c->ck_state != OA_INIT && c->ck_state != OA_STREAMING)
        FAIL("a choice after the finish_reason");
    json_t *ch = json_array_get(choices, 0);
    json_t *dl = json_object_get(ch, "delta");
    if (json_array_size(choices) != 1 || json_integer_value(json_object_get(ch, "index")) != 0 || !json_is_object(dl))
        FAIL("expected one choice 0 with a delta");
    const char *role = json_string_value(json_object_get(dl, "role"));
    if (c->ck_state == OA_INIT && (!role || strcmp(role, "assistant") != 0))
        FAIL("the first delta has no role \"assistant\"");
    c->ck_state = OA_STREAMING;
    int rc = check_tool_calls(c, name, json_object_get(dl, "tool_calls"), err, errlen);
    if (rc)
        return rc;
    json_t *fin = json_object_get(ch, "finish_reason");
    if (fin && !json_is_null(fin)) {
        const char *f = json_string_value(fin);
        if (!f)
            FAIL("finish_reason is not a string");
        if (c->ck_tool_sent != !strcmp(f, "tool_calls"))
            FAIL("finish_reason %s %s a tool call", f, c->ck_tool_sent ? "beside" : "without");
        c->ck_state = OA_FINISHED;
    }
    return 0;
}


/* Responses: the open item must be the event's (item_id, output_index). */
static int rs_same_item(tg_proto_check_t *c, json_t *d)
{
    const char *id = json_string_value(json_object_get(d, "item_id"));
    json_t *oi = json_object_get(d, "output_index");
    return c->ck_state == RS_ITEM && id && !strncmp(id, c->ck_id, sizeof c->ck_id - 1) && json_is_integer(oi) &&
           json_integer_value(oi) == c->ck_open;
}

static int check_responses(tg_proto_check_t *c, const char *name, json_t *d, char *err, size_t errlen)
{
    const char *type = json_string_value(json_object_get(d, "type"));
    if (!type || strcmp(type, name) != 0)
        FAIL("data.type '%s' does not match the event name", type ? type : "(none)");
    json_t *sq = json_object_get(d, "sequence_number");
    if (!json_is_integer(sq) || json_integer_value(sq) <= c->ck_seq)
        FAIL("sequence_number missing or not increasing (last %lld)", (long long)c->ck_seq);
    c->ck_seq = json_integer_value(sq);
    if (!strcmp(name, "error")) {
        c->ck_state = RS_DONE;
        return 0;
    }
    if (c->ck_state == RS_DONE)
        FAIL("after the response's end");
    json_t *resp = json_object_get(d, "response");
    const char *rstatus = json_string_value(json_object_get(resp, "status"));
    if (!strcmp(name, "response.created")) {
        if (c->ck_state != RS_INIT)
            FAIL("response.created twice");
        if (!nonempty(resp, "id") || !rstatus || strcmp(rstatus, "in_progress") != 0)
            FAIL("response without its id or status in_progress");
        c->ck_state = RS_RESPONSE;
        return 0;
    }
    if (c->ck_state == RS_INIT)
        FAIL("before response.created");
    if (!strcmp(name, "response.in_progress")) {
        if (c->ck_next || c->ck_state != RS_RESPONSE)
            FAIL("response.in_progress after an item");
        return 0;
    }
    json_t *jidx = json_object_get(d, "output_index");
    int idx = json_is_integer(jidx) ? (int)json_integer_value(jidx) : -1;
    if (!strcmp(name, "response.output_item.added")) {
        if (c->ck_state == RS_ITEM)
            FAIL("output_index %d while item %d is open", idx, c->ck_open);
        if (idx != c->ck_next)
            FAIL("output_index %d where %d comes next", idx, c->ck_next);
        json_t *item = json_object_get(d, "item");
        const char *it = json_string_value(json_object_get(item, "type"));
        if (!nonempty(item, "id"))
            FAIL("item without its id");
        if (it && !strcmp(it, "function_call")) {
            if (!nonempty(item, "call_id") || !nonempty(item, "name"))
                FAIL("function_call without its call_id and name");
            c->ck_open_type = TG_PROTO_BLOCK_TOOL_USE;
        } else if (it && !strcmp(it, "message")) {
            c->ck_open_type = TG_PROTO_BLOCK_TEXT;
        } else {
            FAIL("unknown item.type");
        }
        snprintf(c->ck_id, sizeof c->ck_id, "%s", json_string_value(json_object_get(item, "id")));
        c->ck_open = idx;
        c->ck_parts = 0;
        c->ck_part_open = 0;
        c->ck_args_done = 0;
        c->ck_state = RS_ITEM;
        return 0;
    }
    if (!strcmp(name, "response.output_item.done")) {
        if (c->ck_state != RS_ITEM || idx != c->ck_open)
            FAIL("output_item.done for %d, open item %d", idx, c->ck_open);
        if (c->ck_part_open)
            FAIL("output_item.done while content part %d is open", c->ck_parts);
        if (c->ck_open_type == TG_PROTO_BLOCK_TOOL_USE && !c->ck_args_done)
            FAIL("output_item.done before function_call_arguments.done");
        json_t *item = json_object_get(d, "item");
        const char *st = json_string_value(json_object_get(item, "status"));
        if (!st || strcmp(st, "completed") != 0)
            FAIL("item.status is not completed");
        if (c->ck_open_type == TG_PROTO_BLOCK_TOOL_USE)
            c->ck_tool_sent = 1;
        c->ck_next++;
        c->ck_open = -1;
        c->ck_state = RS_RESPONSE;
        return 0;
    }
    if (!strncmp(name, "response.content_part.", 22) || !strncmp(name, "response.output_text.", 21)) {
        if (!rs_same_item(c, d) || c->ck_open_type != TG_PROTO_BLOCK_TEXT)
            FAIL("not for the open message item");
        json_t *ci = json_object_get(d, "content_index");
        if (!json_is_integer(ci) || json_integer_value(ci) != c->ck_parts)
            FAIL("content_index where %d is the part", c->ck_parts);
        if (!strcmp(name, "response.content_part.added")) {
            if (c->ck_part_open)
                FAIL("a part while part %d is open", c->ck_parts);
            c->ck_part_open = 1;
            return 0;
        }
        if (!c->ck_part_open)
            FAIL("no content part is open");
        if (!strcmp(name, "response.content_part.done")) {
            c->ck_part_open = 0;
            c->ck_parts++;
            return 0;
        }
        if (!strcmp(name, "response.output_text.delta") || !strcmp(name, "response.output_text.done"))
            return 0;
        FAIL("unknown event");
    }
    if (!strncmp(name, "response.function_call_arguments.", 33)) {
        if (!rs_same_item(c, d) || c->ck_open_type != TG_PROTO_BLOCK_TOOL_USE)
            FAIL("not for the open function_call item");
        if (c->ck_args_done)
            FAIL("after function_call_arguments.done");
        if (!strcmp(name + 33, "done"))
            c->ck_args_done = 1;
        else if (strcmp(name + 33, "delta") != 0)
            FAIL("unknown event");
        return 0;
    }
    int completed = !strcmp(name, "response.completed");
    if (completed || !strcmp(name, "response.incomplete")) {
        if (c->ck_state == RS_ITEM)
            FAIL("the end while item %d is open", c->ck_open);
        if (!rstatus || strcmp(rstatus, completed ? "completed" : "incomplete") != 0)
            FAIL("response.status '%s'", rstatus ? rstatus : "(none)");
        if (!completed && !json_is_string(json_object_get(json_object_get(resp, "incomplete_details"), "reason")))
            FAIL("incomplete_details.reason missing");
        if (json_array_size(json_object_get(resp, "output")) != (size_t)c->ck_next)
            FAIL("response.output has %zu items, %d were sent", json_array_size(json_object_get(resp, "output")),
                 c->ck_next);
        if (!json_is_object(json_object_get(resp, "usage")))
            FAIL("usage missing");
        c->ck_state = RS_DONE;
        return 0;
    }
    FAIL("unknown event");
}

int tg_proto__check(tg_proto_check_t *c, const char *event, json_t *data, char *err, size_t errlen)
{
    c->ck_events++;
    if (c->ck_kind != TG_PROTO_OPENAI) {
        const char *name = event ? event : "";
        if (!json_is_object(data))
            FAIL("data is not an object");
        if (c->ck_kind == TG_PROTO_RESPONSES)
            return check_responses(c, name, data, err, errlen);
        return check_anthropic(c, name, data, err, errlen);
    }
    return check_openai(c, event, data, err, errlen);
}

/* ---- a whole stream --------------------------------------------------------- */

struct whole {
    tg_proto_check_t w_check;
    char *w_err;
    size_t w_errlen;
};

static int on_event(void *arg, const char *event, const char *data, size_t len)
{
    struct whole *w = arg;
    tg_proto_check_t *c = &w->w_check;
    if (c->ck_kind == TG_PROTO_OPENAI && len == 6 && !memcmp(data, "[DONE]", 6))
        return tg_proto__check(c, "[DONE]", NULL, w->w_err, w->w_errlen);
    json_error_t je;
    json_t *v = json_loadb(data, len, 0, &je);
    if (!v)
        return tg_errf(w->w_err, w->w_errlen, TG_PROTO_EJSON, "event %d (%s): data is not JSON: %s",
                       c->ck_events + 1, event[0] ? event : "chunk", je.text);
    int rc = tg_proto__check(c, c->ck_kind != TG_PROTO_OPENAI ? event : NULL, v, w->w_err, w->w_errlen);
    json_decref(v);
    return rc;
}

int tg_proto_stream_check(tg_proto_kind_t kind, const char *sse, size_t len, int include_usage, char *err,
                          size_t errlen)
{
    struct whole w = {.w_err = err, .w_errlen = errlen};
    tg_proto_sse_t p;
    tg_proto__check_init(&w.w_check, kind, include_usage);
    tg_proto__sse_init(&p, DEFAULT_MAX_EVENT_CHECK);
    int rc = tg_proto__sse_feed(&p, sse, len, on_event, &w, err, errlen);
    if (!rc)
        rc = tg_proto__sse_feed(&p, "\n\n", 2, on_event, &w, err, errlen);
    tg_proto__sse_free(&p);
    if (!rc && !tg_proto__check_complete(&w.w_check))
        rc = tg_errf(err, errlen, TG_PROTO_EGRAMMAR, "the stream ends before %s",
                     kind == TG_PROTO_ANTHROPIC ? "message_stop"
                     : kind == TG_PROTO_RESPONSES ? "response.completed" : "[DONE]");
    return rc;
}
