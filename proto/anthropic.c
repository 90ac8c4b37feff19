/* anthropic.c: the Anthropic Messages adapter: request, answer and error
 * bodies to and from the IR, and its stream decoder (events -> IR events,
 * block indices renumbered, server-tool blocks skipped) and encoder (IR
 * events -> message_start .. message_stop). The IR is close to this
 * protocol's own shape, so both directions are mostly one-to-one. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "proto/proto_int.h"

#define ANTHROPIC_VERSION "2023-06-01"

static int bad(char *err, size_t errlen, const char *path, const char *what)
{
    return tg_errf(err, errlen, TG_PROTO_EINVALID, "%s: %s", path, what);
}

/* ---- usage and stop reasons ---------------------------------------------- */

/* input_tokens EXCLUDE cache reads and writes already: nothing to take out. */
static void read_usage(json_t *u, tg_proto_usage_t *out)
{
    out->us_present = 1;
    out->us_input = tg_proto__count(u, "input_tokens", &out->us_invalid);
    out->us_cache_read = tg_proto__count(u, "cache_read_input_tokens", &out->us_invalid);
    out->us_cache_write = tg_proto__count(u, "cache_creation_input_tokens", &out->us_invalid);
    out->us_output = tg_proto__count(u, "output_tokens", &out->us_invalid);
}

static json_t *write_usage(const tg_proto_usage_t *u)
{
    return json_pack("{sI sI sI sI}", "input_tokens", (json_int_t)u->us_input, "cache_creation_input_tokens",
                     (json_int_t)u->us_cache_write, "cache_read_input_tokens", (json_int_t)u->us_cache_read,
                     "output_tokens", (json_int_t)u->us_output);
}

static tg_proto_stop_t parse_stop(const char *s)
{
    if (!s)
        return TG_PROTO_STOP_NONE;
    if (!strcmp(s, "max_tokens") || !strcmp(s, "model_context_window_exceeded"))
        return TG_PROTO_STOP_MAX_TOKENS;
    if (!strcmp(s, "stop_sequence"))
        return TG_PROTO_STOP_STOP_SEQUENCE;
    if (!strcmp(s, "tool_use"))
        return TG_PROTO_STOP_TOOL_USE;
    if (!strcmp(s, "refusal"))
        return TG_PROTO_STOP_REFUSAL;
    if (!strcmp(s, "pause_turn"))
        return TG_PROTO_STOP_PAUSE_TURN;
    return TG_PROTO_STOP_END_TURN;
}

/* tool_use exactly when a tool block was sent (never end_turn beside a call:
 * LiteLLM #34692, nor tool_use without one). */
static const char *stop_name(tg_proto_stop_t st, int tools)
{
    if (tools)
        return "tool_use";
    switch (st) {
    case TG_PROTO_STOP_MAX_TOKENS: return "max_tokens";
    case TG_PROTO_STOP_STOP_SEQUENCE: return "stop_sequence";
    case TG_PROTO_STOP_REFUSAL: return "refusal";
    case TG_PROTO_STOP_PAUSE_TURN: return "pause_turn";
    case TG_PROTO_STOP_NONE:
    case TG_PROTO_STOP_END_TURN:
    case TG_PROTO_STOP_TOOL_USE: break;
    }
    return "end_turn";
}

/* ---- blocks -------------------------------------------------------------- */

static int is_known_unconvertible(const char *t)
{
    static const char *const names[] = {"document", "search_result", "server_tool_use", "web_search_tool_result",
                                        "web_fetch_tool_result", "code_execution_tool_result", "container_upload",
                                        "mcp_tool_use", "mcp_tool_result"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(t, names[i]))
            return 1;
    return 0;
}

static int parse_block(tg_pool_t *pool, json_t *b, tg_proto_block_t *bl, const char *path, int depth, char *err,
                       size_t errlen);

static int parse_text(tg_pool_t *pool, json_t *b, const char *key, const char **out, const char *path, char *err,
                      size_t errlen)
{
    const char *t = json_string_value(json_object_get(b, key));
    if (!t)
        return tg_errf(err, errlen, TG_PROTO_EINVALID, "%s.%s: expected a string", path, key);
    *out = tg_proto__strdup(pool, t);
    return *out ? 0 : TG_PROTO_ENOMEM;
}

static int parse_block(tg_pool_t *pool, json_t *b, tg_proto_block_t *bl, const char *path, int depth, char *err,
                       size_t errlen)
{
    const char *t = json_string_value(json_object_get(b, "type"));
    if (!t)
        return bad(err, errlen, path, "type: expected a string");
    if (!strcmp(t, "text")) {
        bl->bl_type = TG_PROTO_BLOCK_TEXT;
        return parse_text(pool, b, "text", &bl->bl_text, path, err, errlen);
    }
    if (!strcmp(t, "image")) {
        json_t *src = json_object_get(b, "source");
        const char *st = json_string_value(json_object_get(src, "type"));
        bl->bl_type = TG_PROTO_BLOCK_IMAGE;
        char sp[TG_PROTO_PATHLEN];
        tg_proto__path(sp, sizeof sp, "%s.source", path);
        if (st && !strcmp(st, "base64")) {
            int rc = parse_text(pool, src, "media_type", &bl->bl_media_type, sp, err, errlen);
            return rc ? rc : parse_text(pool, src, "data", &bl->bl_data, sp, err, errlen);
        }
        if (st && !strcmp(st, "url"))
            return parse_text(pool, src, "url", &bl->bl_url, sp, err, errlen);
        return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "%s.source.type: expected 'base64' or 'url'", path);
    }
    if (depth == 0 && !strcmp(t, "tool_use")) {
        bl->bl_type = TG_PROTO_BLOCK_TOOL_USE;
        int rc = parse_text(pool, b, "id", &bl->bl_id, path, err, errlen);
        if (!rc)
            rc = parse_text(pool, b, "name", &bl->bl_name, path, err, errlen);
        json_t *in = json_object_get(b, "input");
        if (!rc && !json_is_object(in))
            rc = bad(err, errlen, path, "input: expected an object");
        if (!rc && !(bl->bl_args = tg_proto__dump(pool, in)))
            rc = TG_PROTO_ENOMEM;
        return rc;
    }
    if (depth == 0 && !strcmp(t, "tool_result")) {
        bl->bl_type = TG_PROTO_BLOCK_TOOL_RESULT;
        int rc = parse_text(pool, b, "tool_use_id", &bl->bl_id, path, err, errlen);
        if (rc)
            return rc;
        bl->bl_is_error = json_is_true(json_object_get(b, "is_error"));
        json_t *c = json_object_get(b, "content");
        if (json_is_string(c)) {
            if (!(bl->bl_parts = tg_proto__array(pool, 1, sizeof *bl->bl_parts)))
                return TG_PROTO_ENOMEM;
            bl->bl_nparts = 1;
            bl->bl_parts[0].bl_type = TG_PROTO_BLOCK_TEXT;
            bl->bl_parts[0].bl_text = tg_proto__strdup(pool, json_string_value(c));
            return bl->bl_parts[0].bl_text ? 0 : TG_PROTO_ENOMEM;
        }
        if (c && !json_is_array(c))
            return bad(err, errlen, path, "content: expected a string or an array of blocks");
        if (!(bl->bl_parts = tg_proto__array(pool, json_array_size(c), sizeof *bl->bl_parts)))
            return TG_PROTO_ENOMEM;
        size_t i;
        json_t *p;
        json_array_foreach(c, i, p)
        {
            char pp[TG_PROTO_PATHLEN];
            tg_proto__path(pp, sizeof pp, "%s.content[%zu]", path, i);
            if ((rc = parse_block(pool, p, &bl->bl_parts[bl->bl_nparts++], pp, depth + 1, err, errlen)))
                return rc;
        }
        return 0;
    }
    if (depth == 0 && !strcmp(t, "thinking")) {
        bl->bl_type = TG_PROTO_BLOCK_THINKING;
        int rc = parse_text(pool, b, "thinking", &bl->bl_text, path, err, errlen);
        bl->bl_signature = tg_proto__strdup(pool, json_string_value(json_object_get(b, "signature")));
        return rc;
    }
    if (depth == 0 && !strcmp(t, "redacted_thinking")) {
        bl->bl_type = TG_PROTO_BLOCK_REDACTED_THINKING;
        return parse_text(pool, b, "data", &bl->bl_data, path, err, errlen);
    }
    if (is_known_unconvertible(t))
        return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "%s.type: block type '%s' does not convert", path, t);
    return tg_errf(err, errlen, TG_PROTO_EINVALID, "%s.type: unknown block type '%s'", path, t);
}

static json_t *write_block(const tg_proto_block_t *b, char *err, size_t errlen, int *rc)
{
    json_t *v = NULL;
    switch (b->bl_type) {
    case TG_PROTO_BLOCK_TEXT: v = json_pack("{ss ss}", "type", "text", "text", b->bl_text ? b->bl_text : ""); break;
    case TG_PROTO_BLOCK_IMAGE:
        if (b->bl_url)
            v = json_pack("{ss s{ss ss}}", "type", "image", "source", "type", "url", "url", b->bl_url);
        else
            v = json_pack("{ss s{ss ss ss}}", "type", "image", "source", "type", "base64", "media_type",
                          b->bl_media_type ? b->bl_media_type : "image/png", "data", b->bl_data ? b->bl_data : "");
        break;
    case TG_PROTO_BLOCK_TOOL_USE: {
        json_t *in = tg_proto__load(b->bl_args && *b->bl_args ? b->bl_args : "{}", "tool_use.input", err, errlen, rc);
        if (!in)
            return NULL;
        if (!json_is_object(in)) {
            json_decref(in);
            *rc = tg_errf(err, errlen, TG_PROTO_EINVALID, "tool call %s: arguments are not a JSON object",
                          b->bl_id ? b->bl_id : "");
            return NULL;
        }
        v = json_pack("{ss ss ss so}", "type", "tool_use", "id", b->bl_id ? b->bl_id : "", "name",
                      b->bl_name ? b->bl_name : "", "input", in);
        break;
    }
    case TG_PROTO_BLOCK_TOOL_RESULT: {
        json_t *parts = json_array();
        for (size_t i = 0; parts && i < b->bl_nparts; i++) {
            json_t *p = write_block(&b->bl_parts[i], err, errlen, rc);
            if (!p || json_array_append_new(parts, p))
                parts = (json_decref(parts), NULL);
        }
        if (!parts)
            return NULL;
        v = json_pack("{ss ss so}", "type", "tool_result", "tool_use_id", b->bl_id ? b->bl_id : "", "content",
                      parts);
        if (v && b->bl_is_error && tg_proto__set(v, "is_error", json_true()))
            v = (json_decref(v), NULL);
        break;
    }
    case TG_PROTO_BLOCK_THINKING:
        v = json_pack("{ss ss ss}", "type", "thinking", "thinking", b->bl_text ? b->bl_text : "", "signature",
                      b->bl_signature ? b->bl_signature : "");
        break;
    case TG_PROTO_BLOCK_REDACTED_THINKING:
        v = json_pack("{ss ss}", "type", "redacted_thinking", "data", b->bl_data ? b->bl_data : "");
        break;
    case TG_PROTO_NBLOCKS: break;
    }
    if (!v && !*rc)
        *rc = tg_errf(err, errlen, TG_PROTO_ENOMEM, "out of memory writing a block");
    return v;
}

/* ---- request ------------------------------------------------------------- */

static int parse_system(tg_pool_t *pool, json_t *sys, tg_proto_request_t *rq, char *err, size_t errlen)
{
    if (!sys || json_is_null(sys))
        return 0;
    if (json_is_string(sys)) {
        rq->rq_system = tg_proto__array(pool, 1, sizeof *rq->rq_system);
        if (!rq->rq_system || !(rq->rq_system[0] = tg_proto__strdup(pool, json_string_value(sys))))
            return TG_PROTO_ENOMEM;
        rq->rq_nsystem = 1;
        return 0;
    }
    if (!json_is_array(sys))
        return bad(err, errlen, "system", "expected a string or an array of text blocks");
    if (!(rq->rq_system = tg_proto__array(pool, json_array_size(sys), sizeof *rq->rq_system)))
        return TG_PROTO_ENOMEM;
    size_t i;
    json_t *b;
    json_array_foreach(sys, i, b)
    {
        const char *t = json_string_value(json_object_get(b, "type"));
        const char *text = json_string_value(json_object_get(b, "text"));
        if (!t || strcmp(t, "text") != 0 || !text)
            return tg_errf(err, errlen, TG_PROTO_EINVALID, "system[%zu]: expected a text block", i);
        if (!(rq->rq_system[rq->rq_nsystem++] = tg_proto__strdup(pool, text)))
            return TG_PROTO_ENOMEM;
    }
    return 0;
}

static int parse_tools(tg_pool_t *pool, json_t *root, tg_proto_request_t *rq, char *err, size_t errlen)
{
    json_t *tools = json_object_get(root, "tools");
    if (tools && !json_is_array(tools))
        return bad(err, errlen, "tools", "expected an array");
    if (!(rq->rq_tools = tg_proto__array(pool, json_array_size(tools), sizeof *rq->rq_tools)))
        return TG_PROTO_ENOMEM;
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        const char *type = json_string_value(json_object_get(t, "type"));
        const char *name = json_string_value(json_object_get(t, "name"));
        json_t *schema = json_object_get(t, "input_schema");
        if (type && strcmp(type, "custom") != 0)
            return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "tools[%zu].type: server tool '%s' does not convert",
                           i, type);
        if (!name)
            return tg_errf(err, errlen, TG_PROTO_EINVALID, "tools[%zu].name: expected a string", i);
        if (!json_is_object(schema))
            return tg_errf(err, errlen, TG_PROTO_EINVALID, "tools[%zu].input_schema: expected an object", i);
        tg_proto_tool_t *tl = &rq->rq_tools[rq->rq_ntools++];
        tl->tl_name = tg_proto__strdup(pool, name);
        tl->tl_description = tg_proto__strdup(pool, json_string_value(json_object_get(t, "description")));
        tl->tl_schema = tg_proto__dump(pool, schema);
        if (!tl->tl_name || !tl->tl_schema)
            return TG_PROTO_ENOMEM;
    }
    json_t *tc = json_object_get(root, "tool_choice");
    if (!tc || json_is_null(tc))
        return 0;
    const char *type = json_string_value(json_object_get(tc, "type"));
    if (!type)
        return bad(err, errlen, "tool_choice.type", "expected a string");
    if (!strcmp(type, "auto"))
        rq->rq_tool_choice = TG_PROTO_TOOLS_AUTO;
    else if (!strcmp(type, "any"))
        rq->rq_tool_choice = TG_PROTO_TOOLS_ANY;
    else if (!strcmp(type, "none"))
        rq->rq_tool_choice = TG_PROTO_TOOLS_NONE;
    else if (!strcmp(type, "tool")) {
        rq->rq_tool_choice = TG_PROTO_TOOLS_TOOL;
        const char *name = json_string_value(json_object_get(tc, "name"));
        if (!name)
            return bad(err, errlen, "tool_choice.name", "expected a string");
        if (!(rq->rq_tool_name = tg_proto__strdup(pool, name)))
            return TG_PROTO_ENOMEM;
    } else
        return tg_errf(err, errlen, TG_PROTO_EINVALID, "tool_choice.type: unknown value '%s'", type);
    json_t *dis = json_object_get(tc, "disable_parallel_tool_use");
    if (json_is_boolean(dis))
        rq->rq_parallel_tools = !json_is_true(dis);
    return 0;
}

static int an_parse_request(tg_pool_t *pool, json_t *root, tg_proto_request_t *rq, char *err, size_t errlen)
{
    int rc;
    const char *model = json_string_value(json_object_get(root, "model"));
    json_t *mt = json_object_get(root, "max_tokens");
    json_t *msgs = json_object_get(root, "messages");
    if (!model)
        return bad(err, errlen, "model", "Field required");
    if (!mt)
        return bad(err, errlen, "max_tokens", "Field required");
    if (!json_is_integer(mt) || json_integer_value(mt) < 1)
        return bad(err, errlen, "max_tokens", "expected a positive integer");
    if (!json_is_array(msgs))
        return bad(err, errlen, "messages", "Field required (an array)");
    rq->rq_model = tg_proto__strdup(pool, model);
    rq->rq_max_tokens = json_integer_value(mt);
    if (!rq->rq_model)
        return TG_PROTO_ENOMEM;
    if ((rc = parse_system(pool, json_object_get(root, "system"), rq, err, errlen)))
        return rc;
    if (!(rq->rq_msgs = tg_proto__array(pool, json_array_size(msgs), sizeof *rq->rq_msgs)))
        return TG_PROTO_ENOMEM;
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        char p[TG_PROTO_PATHLEN];
        tg_proto__path(p, sizeof p, "messages[%zu]", i);
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *c = json_object_get(m, "content");
        tg_proto_message_t *msg = &rq->rq_msgs[rq->rq_nmsgs++];
        if (role && !strcmp(role, "user"))
            msg->ms_role = TG_PROTO_ROLE_USER;
        else if (role && !strcmp(role, "assistant"))
            msg->ms_role = TG_PROTO_ROLE_ASSISTANT;
        else
            return tg_errf(err, errlen, TG_PROTO_EINVALID, "%s.role: expected 'user' or 'assistant'", p);
        if (json_is_string(c)) {
            if (!(msg->ms_blocks = tg_proto__array(pool, 1, sizeof *msg->ms_blocks)))
                return TG_PROTO_ENOMEM;
            msg->ms_nblocks = 1;
            msg->ms_blocks[0].bl_type = TG_PROTO_BLOCK_TEXT;
            if (!(msg->ms_blocks[0].bl_text = tg_proto__strdup(pool, json_string_value(c))))
                return TG_PROTO_ENOMEM;
            continue;
        }
        if (!json_is_array(c))
            return tg_errf(err, errlen, TG_PROTO_EINVALID, "%s.content: expected a string or an array of blocks", p);
        if (!(msg->ms_blocks = tg_proto__array(pool, json_array_size(c), sizeof *msg->ms_blocks)))
            return TG_PROTO_ENOMEM;
        size_t j;
        json_t *b;
        json_array_foreach(c, j, b)
        {
            char bp[TG_PROTO_PATHLEN];
            tg_proto__path(bp, sizeof bp, "%s.content[%zu]", p, j);
            if ((rc = parse_block(pool, b, &msg->ms_blocks[msg->ms_nblocks++], bp, 0, err, errlen)))
                return rc;
        }
    }
    if ((rc = parse_tools(pool, root, rq, err, errlen)))
        return rc;
    json_t *v = json_object_get(root, "stop_sequences");
    if (v && !json_is_array(v))
        return bad(err, errlen, "stop_sequences", "expected an array");
    if (!(rq->rq_stop = tg_proto__array(pool, json_array_size(v), sizeof *rq->rq_stop)))
        return TG_PROTO_ENOMEM;
    json_t *s;
    json_array_foreach(v, i, s)
    {
        if (!json_is_string(s))
            return tg_errf(err, errlen, TG_PROTO_EINVALID, "stop_sequences[%zu]: expected a string", i);
        if (!(rq->rq_stop[rq->rq_nstop++] = tg_proto__strdup(pool, json_string_value(s))))
            return TG_PROTO_ENOMEM;
    }
    if ((v = json_object_get(root, "temperature"))) {
        if (!json_is_number(v))
            return bad(err, errlen, "temperature", "expected a number");
        rq->rq_has_temperature = 1;
        rq->rq_temperature = json_number_value(v);
    }
    if ((v = json_object_get(root, "top_p"))) {
        if (!json_is_number(v))
            return bad(err, errlen, "top_p", "expected a number");
        rq->rq_has_top_p = 1;
        rq->rq_top_p = json_number_value(v);
    }
    if ((v = json_object_get(root, "stream"))) {
        if (!json_is_boolean(v))
            return bad(err, errlen, "stream", "expected a boolean");
        rq->rq_stream = json_is_true(v);
    }
    const char *user = json_string_value(json_object_get(json_object_get(root, "metadata"), "user_id"));
    if (user && !(rq->rq_user = tg_proto__strdup(pool, user)))
        return TG_PROTO_ENOMEM;
    json_t *th = json_object_get(root, "thinking");
    const char *tht = json_string_value(json_object_get(th, "type"));
    if (tht && !strcmp(tht, "enabled"))
        rq->rq_thinking_budget = tg_proto__count(th, "budget_tokens", NULL);
    return 0;
}

/* Adjacent messages of one role are merged (an OpenAI tool message and the
 * user message after it become one user turn); empty ones are dropped. */
static json_t *an_write_request(const tg_proto_request_t *rq, char *err, size_t errlen, int *rcp)
{
    int rc = 0;
    if (rq->rq_max_tokens <= 0) {
        *rcp = bad(err, errlen, "max_tokens", "the Anthropic Messages API requires it (set rq_max_tokens)");
        return NULL;
    }
    json_t *root = json_pack("{ss sI}", "model", rq->rq_model ? rq->rq_model : "", "max_tokens",
                             (json_int_t)rq->rq_max_tokens);
    json_t *msgs = json_array();
    if (!root || !msgs || tg_proto__set(root, "messages", msgs))
        goto nomem;
    if (rq->rq_nsystem) {
        json_t *sys = json_array();
        if (!sys || tg_proto__set(root, "system", sys))
            goto nomem;
        for (size_t i = 0; i < rq->rq_nsystem; i++)
            if (json_array_append_new(sys, json_pack("{ss ss}", "type", "text", "text", rq->rq_system[i])))
                goto nomem;
    }
    json_t *content = NULL;
    int last_role = -1;
    for (size_t i = 0; i < rq->rq_nmsgs; i++) {
        const tg_proto_message_t *m = &rq->rq_msgs[i];
        if (!m->ms_nblocks)
            continue;
        if ((int)m->ms_role != last_role) {
            content = json_array();
            json_t *jm = json_pack("{ss so}", "role", m->ms_role == TG_PROTO_ROLE_USER ? "user" : "assistant",
                                   "content", content);
            if (!jm || json_array_append_new(msgs, jm))
                goto nomem;
            last_role = (int)m->ms_role;
        }
        for (size_t j = 0; j < m->ms_nblocks; j++) {
            json_t *b = write_block(&m->ms_blocks[j], err, errlen, &rc);
            if (!b)
                goto fail;
            if (json_array_append_new(content, b))
                goto nomem;
        }
    }
    if (rq->rq_ntools) {
        json_t *tools = json_array();
        if (!tools || tg_proto__set(root, "tools", tools))
            goto nomem;
        for (size_t i = 0; i < rq->rq_ntools; i++) {
            const tg_proto_tool_t *t = &rq->rq_tools[i];
            json_t *schema = tg_proto__load(t->tl_schema, "tools[].parameters", err, errlen, &rc);
            if (!schema)
                goto fail;
            json_t *jt = json_pack("{ss so}", "name", t->tl_name, "input_schema", schema);
            if (!jt || (t->tl_description && tg_proto__set(jt, "description", json_string(t->tl_description))) ||
                json_array_append_new(tools, jt))
                goto nomem;
        }
    }
    if (rq->rq_tool_choice != TG_PROTO_TOOLS_UNSET || (rq->rq_ntools && rq->rq_parallel_tools == 0)) {
        static const char *const names[] = {"auto", "auto", "any", "tool", "none"};
        json_t *tc = json_pack("{ss}", "type", names[rq->rq_tool_choice]);
        if (!tc || tg_proto__set(root, "tool_choice", tc))
            goto nomem;
        if (rq->rq_tool_choice == TG_PROTO_TOOLS_TOOL &&
            tg_proto__set(tc, "name", json_string(rq->rq_tool_name ? rq->rq_tool_name : "")))
            goto nomem;
        if (rq->rq_parallel_tools == 0 && rq->rq_tool_choice != TG_PROTO_TOOLS_NONE &&
            tg_proto__set(tc, "disable_parallel_tool_use", json_true()))
            goto nomem;
    }
    if (rq->rq_nstop) {
        json_t *st = json_array();
        if (!st || tg_proto__set(root, "stop_sequences", st))
            goto nomem;
        for (size_t i = 0; i < rq->rq_nstop; i++)
            if (json_array_append_new(st, json_string(rq->rq_stop[i])))
                goto nomem;
    }
    if ((rq->rq_has_temperature && tg_proto__set(root, "temperature", json_real(rq->rq_temperature))) ||
        (rq->rq_has_top_p && tg_proto__set(root, "top_p", json_real(rq->rq_top_p))) ||
        (rq->rq_stream && tg_proto__set(root, "stream", json_true())) ||
        (rq->rq_user && tg_proto__set(root, "metadata", json_pack("{ss}", "user_id", rq->rq_user))) ||
        (rq->rq_thinking_budget > 0 &&
         tg_proto__set(root, "thinking",
                       json_pack("{ss sI}", "type", "enabled", "budget_tokens", (json_int_t)rq->rq_thinking_budget))))
        goto nomem;
    return root;
nomem:
    rc = tg_errf(err, errlen, TG_PROTO_ENOMEM, "out of memory writing the request");
fail:
    json_decref(root);
    *rcp = rc;
    return NULL;
}

/* ---- response ------------------------------------------------------------ */

static int an_parse_response(const tg_proto_vendor_t *vendor, tg_pool_t *pool, json_t *root,
    tg_proto_response_t *rs, char *err, size_t errlen)
{
    (void)vendor; /* usage in its own protocol's names */
    json_t *content = json_object_get(root, "content");
    if (!json_is_array(content))
        return bad(err, errlen, "content", "expected an array");
    rs->rs_id = tg_proto__strdup(pool, json_string_value(json_object_get(root, "id")));
    rs->rs_model = tg_proto__strdup(pool, json_string_value(json_object_get(root, "model")));
    if (!(rs->rs_blocks = tg_proto__array(pool, json_array_size(content), sizeof *rs->rs_blocks)))
        return TG_PROTO_ENOMEM;
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        char p[TG_PROTO_PATHLEN];
        tg_proto__path(p, sizeof p, "content[%zu]", i);
        const char *t = json_string_value(json_object_get(b, "type"));
        if (t && is_known_unconvertible(t))
            continue; /* server tools: the client cannot act on them */
        int rc = parse_block(pool, b, &rs->rs_blocks[rs->rs_nblocks++], p, 0, err, errlen);
        if (rc)
            return rc;
    }
    rs->rs_stop = parse_stop(json_string_value(json_object_get(root, "stop_reason")));
    rs->rs_stop_sequence = tg_proto__strdup(pool, json_string_value(json_object_get(root, "stop_sequence")));
    json_t *u = json_object_get(root, "usage");
    if (json_is_object(u)) {
        read_usage(u, &rs->rs_usage);
        if (!(rs->rs_usage.us_raw = tg_proto__dump(pool, u)))
            return TG_PROTO_ENOMEM;
    }
    return 0;
}

static json_t *an_write_response(const tg_proto_response_t *rs, char *err, size_t errlen, int *rc)
{
    json_t *content = json_array();
    int tools = 0;
    for (size_t i = 0; content && i < rs->rs_nblocks; i++) {
        json_t *b = write_block(&rs->rs_blocks[i], err, errlen, rc);
        tools |= rs->rs_blocks[i].bl_type == TG_PROTO_BLOCK_TOOL_USE;
        if (!b || json_array_append_new(content, b)) {
            json_decref(content);
            return NULL;
        }
    }
    json_t *root = content ? json_pack("{ss ss ss ss so ss so so}", "id", rs->rs_id ? rs->rs_id : "", "type",
                                       "message", "role", "assistant", "model", rs->rs_model ? rs->rs_model : "",
                                       "content", content, "stop_reason", stop_name(rs->rs_stop, tools),
                                       "stop_sequence",
                                       rs->rs_stop_sequence && rs->rs_stop == TG_PROTO_STOP_STOP_SEQUENCE
                                           ? json_string(rs->rs_stop_sequence)
                                           : json_null(),
                                       "usage", write_usage(&rs->rs_usage))
                           : NULL;
    if (!root && !*rc)
        *rc = tg_errf(err, errlen, TG_PROTO_ENOMEM, "out of memory writing the answer");
    return root;
}

/* ---- errors -------------------------------------------------------------- */

static int an_parse_error(tg_pool_t *pool, int status, json_t *root, tg_proto_errinfo_t *out)
{
    (void)status;
    json_t *e = json_object_get(root, "error");
    if (!json_is_object(e))
        return 0;
    const char *type = json_string_value(json_object_get(e, "type"));
    for (int t = 0; type && t < TG_PROTO_NERRTYPES; t++)
        if (!strcmp(type, tg_proto__anthropic_errname((tg_proto_errtype_t)t)))
            out->pe_type = (tg_proto_errtype_t)t;
    out->pe_message = tg_proto__strdup(pool, json_string_value(json_object_get(e, "message")));
    return 0;
}

static json_t *an_write_error(const tg_proto_errinfo_t *e)
{
    return json_pack("{ss s{ss ss}}", "type", "error", "error", "type", tg_proto__anthropic_errname(e->pe_type),
                     "message", e->pe_message ? e->pe_message : "");
}

static int an_errtype_status(tg_proto_errtype_t t)
{
    switch (t) {
    case TG_PROTO_ERR_INVALID_REQUEST: return 400;
    case TG_PROTO_ERR_AUTHENTICATION: return 401;
    case TG_PROTO_ERR_BILLING: return 402;
    case TG_PROTO_ERR_PERMISSION: return 403;
    case TG_PROTO_ERR_NOT_FOUND: return 404;
    case TG_PROTO_ERR_REQUEST_TOO_LARGE: return 413;
    case TG_PROTO_ERR_RATE_LIMIT: return 429;
    case TG_PROTO_ERR_OVERLOADED: return 529;
    case TG_PROTO_ERR_API:
    case TG_PROTO_NERRTYPES: break;
    }
    return 500;
}

/* ---- stream decoder: Anthropic events -> IR events ----------------------- */

static void dec_init(tg_proto_stream_t *s)
{
    memset(&s->st_dec.an, 0, sizeof s->st_dec.an);
    s->st_dec.an.ad_open = -1;
    s->st_dec.an.ad_up_open = -1;
}

static void dec_free(tg_proto_stream_t *s)
{
    (void)s;
}

/* Usage arrives in message_start and, cumulative, in message_delta: merged,
 * the raw object too. message_start's output_tokens is a running count (1):
 * the output is final only once message_delta's usage came (final). */
static int merge_usage(tg_proto_stream_t *s, json_t *u, int final)
{
    if (!json_is_object(u))
        return 0;
    if (final)
        s->st_dec.an.ad_final_usage = 1;
    json_t *raw = s->st_raw ? json_loads(s->st_raw, 0, NULL) : NULL;
    if (!raw && !(raw = json_object()))
        return TG_PROTO_ENOMEM;
    json_object_update(raw, u);
    tg_proto_usage_t us = {0};
    read_usage(raw, &us);
    us.us_running = !s->st_dec.an.ad_final_usage;
    char *text = json_dumps(raw, JSON_COMPACT);
    json_decref(raw);
    us.us_raw = text;
    int rc = text ? tg_proto__set_usage(s, &us) : TG_PROTO_ENOMEM;
    free(text); /* jansson's */
    return rc;
}

static int dec_delta(tg_proto_stream_t *s, tg_proto_delta_t kind, json_t *v)
{
    if (!json_is_string(v) || !json_string_length(v))
        return 0;
    tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_DELTA, .ev_index = s->st_dec.an.ad_open, .ev_delta = kind,
                           .ev_text = json_string_value(v), .ev_len = json_string_length(v)};
    return tg_proto__emit(s, &ev);
}

static int dec_block_start(tg_proto_stream_t *s, json_t *cb)
{
    tg_proto_an_dec_t *d = &s->st_dec.an;
    const char *t = json_string_value(json_object_get(cb, "type"));
    tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_BLOCK_START, .ev_index = d->ad_next};
    if (!t)
        t = "";
    if (!strcmp(t, "text"))
        ev.ev_block = TG_PROTO_BLOCK_TEXT;
    else if (!strcmp(t, "thinking"))
        ev.ev_block = TG_PROTO_BLOCK_THINKING;
    else if (!strcmp(t, "redacted_thinking")) {
        json_t *data = json_object_get(cb, "data");
        ev.ev_block = TG_PROTO_BLOCK_REDACTED_THINKING;
        ev.ev_text = json_string_value(data);
        ev.ev_len = json_string_length(data);
    } else if (!strcmp(t, "tool_use")) {
        ev.ev_block = TG_PROTO_BLOCK_TOOL_USE;
        ev.ev_id = json_string_value(json_object_get(cb, "id"));
        ev.ev_name = json_string_value(json_object_get(cb, "name"));
    } else {
        d->ad_skip = 1; /* server tools and later types: nothing a client of the other protocol can use */
        return 0;
    }
    d->ad_skip = 0;
    d->ad_open = d->ad_next++;
    int rc = tg_proto__emit(s, &ev);
    if (!rc && ev.ev_block == TG_PROTO_BLOCK_TEXT)
        rc = dec_delta(s, TG_PROTO_DELTA_TEXT, json_object_get(cb, "text"));
    if (!rc && ev.ev_block == TG_PROTO_BLOCK_THINKING) {
        rc = dec_delta(s, TG_PROTO_DELTA_THINKING, json_object_get(cb, "thinking"));
        if (!rc)
            rc = dec_delta(s, TG_PROTO_DELTA_SIGNATURE, json_object_get(cb, "signature"));
    }
    json_t *in = json_object_get(cb, "input");
    if (!rc && ev.ev_block == TG_PROTO_BLOCK_TOOL_USE && json_object_size(in)) {
        char *text = json_dumps(in, JSON_COMPACT);
        tg_proto_event_t de = {.ev_type = TG_PROTO_EV_DELTA, .ev_index = d->ad_open, .ev_delta = TG_PROTO_DELTA_JSON,
                               .ev_text = text, .ev_len = text ? strlen(text) : 0};
        rc = text ? tg_proto__emit(s, &de) : tg_proto__fail(s, TG_PROTO_ENOMEM, TG_PROTO_ERR_API, "out of memory");
        free(text); /* jansson's */
    }
    return rc;
}

static int dec_event(tg_proto_stream_t *s, const char *event, const char *data, size_t len)
{
    tg_proto_an_dec_t *d = &s->st_dec.an;
    json_t *v = json_loadb(data, len, 0, NULL);
    if (!json_is_object(v)) {
        json_decref(v);
        return tg_proto__fail(s, TG_PROTO_EJSON, TG_PROTO_ERR_API, "upstream sent a malformed stream event");
    }
    const char *type = json_string_value(json_object_get(v, "type"));
    if (!type)
        type = event;
    int rc = 0;
    if (!strcmp(type, "message_start")) {
        json_t *m = json_object_get(v, "message");
        d->ad_started = 1;
        rc = merge_usage(s, json_object_get(m, "usage"), 0);
        tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_START,
                               .ev_id = json_string_value(json_object_get(m, "id")),
                               .ev_name = json_string_value(json_object_get(m, "model")),
                               .ev_usage = s->st_usage.us_present ? &s->st_usage : NULL};
        if (!rc)
            rc = tg_proto__emit(s, &ev);
    } else if (!strcmp(type, "content_block_start")) {
        json_t *ix = json_object_get(v, "index");
        d->ad_up_open = json_is_integer(ix) && json_integer_value(ix) >= 0 && json_integer_value(ix) < INT_MAX
                            ? (int)json_integer_value(ix)
                            : d->ad_next;
        rc = dec_block_start(s, json_object_get(v, "content_block"));
    } else if (!strcmp(type, "content_block_delta")) {
        json_t *dl = json_object_get(v, "delta");
        const char *dt = json_string_value(json_object_get(dl, "type"));
        if (d->ad_skip || !dt)
            rc = 0;
        else if (!strcmp(dt, "text_delta"))
            rc = dec_delta(s, TG_PROTO_DELTA_TEXT, json_object_get(dl, "text"));
        else if (!strcmp(dt, "input_json_delta"))
            rc = dec_delta(s, TG_PROTO_DELTA_JSON, json_object_get(dl, "partial_json"));
        else if (!strcmp(dt, "thinking_delta"))
            rc = dec_delta(s, TG_PROTO_DELTA_THINKING, json_object_get(dl, "thinking"));
        else if (!strcmp(dt, "signature_delta"))
            rc = dec_delta(s, TG_PROTO_DELTA_SIGNATURE, json_object_get(dl, "signature"));
    } else if (!strcmp(type, "content_block_stop")) {
        d->ad_up_open = -1;
        if (d->ad_skip) {
            d->ad_skip = 0;
        } else {
            tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_BLOCK_STOP, .ev_index = d->ad_open};
            d->ad_open = -1;
            rc = tg_proto__emit(s, &ev);
        }
    } else if (!strcmp(type, "message_delta")) {
        json_t *dl = json_object_get(v, "delta");
        d->ad_delta_seen = 1;
        tg_proto_stop_t st = parse_stop(json_string_value(json_object_get(dl, "stop_reason")));
        if (st != TG_PROTO_STOP_NONE)
            s->st_stop = st;
        const char *seq = json_string_value(json_object_get(dl, "stop_sequence"));
        if (seq) {
            tg_free(s->st_stop_seq);
            if (!(s->st_stop_seq = tg_strdup(seq)))
                rc = TG_PROTO_ENOMEM;
        }
        if (!rc)
            rc = merge_usage(s, json_object_get(v, "usage"), 1);
    } else if (!strcmp(type, "message_stop")) {
        d->ad_ended = 1;
        tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_END, .ev_stop = s->st_stop, .ev_stop_seq = s->st_stop_seq,
                               .ev_usage = &s->st_usage};
        rc = tg_proto__emit(s, &ev);
    } else if (!strcmp(type, "error")) {
        json_t *e = json_object_get(v, "error");
        tg_proto_errinfo_t info = {.pe_type = TG_PROTO_ERR_API,
                                   .pe_message = json_string_value(json_object_get(e, "message"))};
        const char *et = json_string_value(json_object_get(e, "type"));
        for (int t = 0; et && t < TG_PROTO_NERRTYPES; t++)
            if (!strcmp(et, tg_proto__anthropic_errname((tg_proto_errtype_t)t)))
                info.pe_type = (tg_proto_errtype_t)t;
        tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_ERROR, .ev_error = &info};
        rc = tg_proto__emit(s, &ev);
        if (!rc)
            rc = TG_PROTO_EUPSTREAM;
    }
    /* ping and unknown events: nothing */
    json_decref(v);
    if (rc == TG_PROTO_ENOMEM)
        return tg_proto__fail(s, rc, TG_PROTO_ERR_API, "out of memory");
    return rc;
}

static int dec_eof(tg_proto_stream_t *s)
{
    return tg_proto__fail(s, TG_PROTO_EUPSTREAM, TG_PROTO_ERR_API, "upstream stream ended before message_stop");
}

/* ---- stream encoder: IR events -> Anthropic events ----------------------- */

/* data gets "type": name first, as the API writes it. */
static int write_ev(tg_proto_stream_t *s, const char *name, json_t *data)
{
    json_t *v = data ? json_pack("{ss}", "type", name) : NULL;
    if (v && json_object_update(v, data))
        v = (json_decref(v), NULL);
    json_decref(data);
    return tg_proto__write_event(s, name, v);
}

static int enc_event(tg_proto_stream_t *s, const tg_proto_event_t *ev)
{
    tg_proto_enc_t *e = &s->st_enc;
    json_t *v = NULL;
    switch (ev->ev_type) {
    case TG_PROTO_EV_START: {
        tg_proto_usage_t u = {0};
        if (ev->ev_usage)
            u = *ev->ev_usage;
        else
            u.us_input = s->st_opts.so_prompt_tokens; /* OpenAI reports usage only at the end */
        json_t *usage = write_usage(&u);
        const char *model = s->st_opts.so_model ? s->st_opts.so_model : ev->ev_name ? ev->ev_name : "";
        v = usage ? json_pack("{s{ss ss ss ss s[] sn sn so}}", "message", "id", ev->ev_id ? ev->ev_id : "msg_tollgate",
                              "type", "message", "role", "assistant", "model", model, "content", "stop_reason",
                              "stop_sequence", "usage", usage)
                  : NULL;
        return write_ev(s, "message_start", v);
    }
    case TG_PROTO_EV_BLOCK_START: {
        json_t *cb = NULL;
        switch (ev->ev_block) {
        case TG_PROTO_BLOCK_TEXT: cb = json_pack("{ss ss}", "type", "text", "text", ""); break;
        case TG_PROTO_BLOCK_THINKING:
            cb = json_pack("{ss ss ss}", "type", "thinking", "thinking", "", "signature", "");
            break;
        case TG_PROTO_BLOCK_REDACTED_THINKING:
            cb = json_pack("{ss ss#}", "type", "redacted_thinking", "data", ev->ev_text ? ev->ev_text : "",
                           ev->ev_text ? ev->ev_len : 0);
            break;
        case TG_PROTO_BLOCK_TOOL_USE:
            e->en_ntools++;
            cb = json_pack("{ss ss ss s{}}", "type", "tool_use", "id", ev->ev_id ? ev->ev_id : "", "name",
                           ev->ev_name ? ev->ev_name : "", "input");
            break;
        case TG_PROTO_BLOCK_IMAGE:
        case TG_PROTO_BLOCK_TOOL_RESULT:
        case TG_PROTO_NBLOCKS:
            return tg_proto__fail(s, TG_PROTO_EGRAMMAR, TG_PROTO_ERR_API, "a stream cannot carry this block type");
        }
        v = cb ? json_pack("{si so}", "index", ev->ev_index, "content_block", cb) : NULL;
        return write_ev(s, "content_block_start", v);
    }
    case TG_PROTO_EV_DELTA: {
        static const char *const types[] = {"text_delta", "thinking_delta", "signature_delta", "input_json_delta"};
        static const char *const keys[] = {"text", "thinking", "signature", "partial_json"};
        v = json_pack("{si s{ss ss#}}", "index", ev->ev_index, "delta", "type", types[ev->ev_delta], keys[ev->ev_delta],
                      ev->ev_text, ev->ev_len);
        return write_ev(s, "content_block_delta", v);
    }
    case TG_PROTO_EV_BLOCK_STOP: return write_ev(s, "content_block_stop", json_pack("{si}", "index", ev->ev_index));
    case TG_PROTO_EV_END: {
        tg_proto_usage_t u = {0};
        if (ev->ev_usage)
            u = *ev->ev_usage;
        if (!u.us_present)
            u.us_input = s->st_opts.so_prompt_tokens;
        json_t *usage = write_usage(&u);
        json_t *seq = ev->ev_stop_seq && ev->ev_stop == TG_PROTO_STOP_STOP_SEQUENCE && !e->en_ntools
                          ? json_string(ev->ev_stop_seq)
                          : json_null();
        v = usage ? json_pack("{s{ss so} so}", "delta", "stop_reason", stop_name(ev->ev_stop, e->en_ntools > 0),
                              "stop_sequence", seq, "usage", usage)
                  : NULL;
        int rc = write_ev(s, "message_delta", v);
        return rc ? rc : write_ev(s, "message_stop", json_object());
    }
    case TG_PROTO_EV_ERROR: break;
    }
    return tg_proto__fail_upstream(s, ev);
}

static int enc_error(tg_proto_stream_t *s, const tg_proto_errinfo_t *e, tg_buf_t *out)
{
    (void)s;
    return tg_proto__append_sse(out, "event: error\ndata: ", an_write_error(e));
}

const tg_proto_adapter_t tg_proto__anthropic = {
    .pa_kind = TG_PROTO_ANTHROPIC,
    .pa_name = "anthropic",
    .pa_path = "/v1/messages",
    .pa_auth_prefix = "x-api-key: ",
    .pa_extra_header = "anthropic-version: " ANTHROPIC_VERSION,
    .pa_parse_request = an_parse_request,
    .pa_write_request = an_write_request,
    .pa_parse_response = an_parse_response,
    .pa_write_response = an_write_response,
    .pa_parse_error = an_parse_error,
    .pa_write_error = an_write_error,
    .pa_errtype_status = an_errtype_status,
    .pa_dec_init = dec_init,
    .pa_dec_free = dec_free,
    .pa_dec_event = dec_event,
    .pa_dec_eof = dec_eof,
    .pa_enc_event = enc_event,
    .pa_enc_error = enc_error,
};
