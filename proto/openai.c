/* openai.c: the OpenAI chat completions adapter: request, answer and error
 * bodies to and from the IR, and its stream decoder (chunks -> IR events,
 * blocks synthesized from deltas) and encoder (IR events -> chunks).
 *
 * OpenAI has no content blocks: a choice's delta carries content,
 * reasoning_content and tool_calls[] by index, and only finish_reason says a
 * call is complete. So the decoder opens a block when a delta of a new kind
 * arrives and closes it when another kind starts or the choice finishes. A
 * tool call that starts while another is open (parallel calls, interleaved by
 * some providers) is held, its own fragments only, and sent whole in index
 * order when the open one closes: a block once closed cannot be reopened in
 * the Anthropic grammar. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "proto/proto_int.h"

/* ---- small readers ------------------------------------------------------- */

static int bad(char *err, size_t errlen, const char *path, const char *what)
{
    return tg_errf(err, errlen, TG_PROTO_EINVALID, "%s: %s", path, what);
}

/* Text of content that is a string or an array of text parts, joined with
 * "\n"; NULL content gives "". */
static const char *join_text(tg_pool_t *pool, json_t *content, const char *path, char *err, size_t errlen,
                             int *rc)
{
    if (!content || json_is_null(content))
        return "";
    if (json_is_string(content))
        return tg_proto__strdup(pool, json_string_value(content));
    if (!json_is_array(content)) {
        *rc = bad(err, errlen, path, "expected a string or an array of parts");
        return NULL;
    }
    tg_buf_t b;
    tg_buf_init(&b, (size_t)1 << 30);
    size_t i;
    json_t *p;
    json_array_foreach(content, i, p)
    {
        const char *t = json_string_value(json_object_get(p, "type"));
        json_t *text = json_object_get(p, "text");
        if (!t || strcmp(t, "text") != 0 || !json_is_string(text)) {
            tg_buf_free(&b);
            *rc = tg_errf(err, errlen, TG_PROTO_EINVALID, "%s[%zu]: expected a text part", path, i);
            return NULL;
        }
        if ((i && tg_buf_append(&b, "\n", 1)) || tg_buf_puts(&b, json_string_value(text))) {
            tg_buf_free(&b);
            *rc = TG_PROTO_ENOMEM;
            return NULL;
        }
    }
    const char *r = tg_pool_strndup(pool, b.b_data ? b.b_data : "", b.b_len);
    tg_buf_free(&b);
    if (!r)
        *rc = TG_PROTO_ENOMEM;
    return r;
}

/* An image_url part into an IMAGE block: data: URLs become base64. */
static int parse_image(tg_pool_t *pool, json_t *part, tg_proto_block_t *bl, const char *path, char *err,
                       size_t errlen)
{
    json_t *iu = json_object_get(part, "image_url");
    const char *url = json_string_value(json_is_object(iu) ? json_object_get(iu, "url") : iu);
    if (!url)
        return bad(err, errlen, path, "image_url.url: expected a string");
    return tg_proto__image_url(pool, url, bl);
}

/* ---- usage --------------------------------------------------------------- */

/* The first of the vendor's own cache-read members that u holds as an
 * integer, or NULL. */
static const char *own_cache_name(const tg_proto_vendor_t *v, json_t *u)
{
    for (size_t i = 0; i < sizeof v->vd_cache_read / sizeof v->vd_cache_read[0]; i++)
        if (v->vd_cache_read[i] && json_is_integer(json_object_get(u, v->vd_cache_read[i])))
            return v->vd_cache_read[i];
    return NULL;
}

/* prompt_tokens INCLUDE cached tokens: taken out once here. Cache reads
 * under the vendor's row (vendor.c): OpenAI's
 * prompt_tokens_details.cached_tokens before or after its own names
 * (DeepSeek's prompt_cache_hit_tokens, Kimi's cached_tokens). */
static int parse_usage(const tg_proto_vendor_t *v, tg_pool_t *pool, json_t *u, tg_proto_usage_t *out)
{
    memset(out, 0, sizeof *out);
    if (!json_is_object(u))
        return 0;
    out->us_present = 1;
    json_t *pd = json_object_get(u, "prompt_tokens_details");
    int details = v->vd_details != TG_PROTO_DETAILS_NO && json_is_integer(json_object_get(pd, "cached_tokens"));
    const char *own = own_cache_name(v, u);
    int *bad = &out->us_invalid;
    int64_t cached = details && (v->vd_details == TG_PROTO_DETAILS_FIRST || !own) ? tg_proto__count(pd, "cached_tokens", bad)
                     : own                                                         ? tg_proto__count(u, own, bad)
                                                                                   : 0;
    int64_t prompt = tg_proto__count(u, "prompt_tokens", bad);
    if (!json_is_integer(json_object_get(u, "prompt_tokens")) && own && v->vd_cache_miss) {
        /* hits + misses, each at most TG_PROTO_COUNT_MAX: the sum is a count only within it */
        prompt = tg_proto__count(u, own, bad) + tg_proto__count(u, v->vd_cache_miss, bad);
        if (prompt > TG_PROTO_COUNT_MAX) {
            *bad = 1;
            prompt = 0;
        }
    }
    if (cached > prompt)
        cached = prompt;
    out->us_input = prompt - cached;
    out->us_cache_read = cached;
    out->us_output = tg_proto__count(u, "completion_tokens", bad);
    json_t *cd = json_object_get(u, "completion_tokens_details");
    out->us_reasoning = json_is_object(cd) ? tg_proto__count(cd, "reasoning_tokens", bad) : 0;
    if (pool && !(out->us_raw = tg_proto__dump(pool, u)))
        return TG_PROTO_ENOMEM;
    return 0;
}

static json_t *write_usage(const tg_proto_usage_t *u)
{
    int64_t prompt = u->us_input + u->us_cache_read + u->us_cache_write;
    return json_pack("{sI sI sI s{sI} s{sI}}", "prompt_tokens", (json_int_t)prompt, "completion_tokens",
                     (json_int_t)u->us_output, "total_tokens", (json_int_t)(prompt + u->us_output),
                     "prompt_tokens_details", "cached_tokens", (json_int_t)u->us_cache_read,
                     "completion_tokens_details", "reasoning_tokens", (json_int_t)u->us_reasoning);
}

/* ---- stop reasons -------------------------------------------------------- */

static tg_proto_stop_t parse_finish(const char *f)
{
    if (!f)
        return TG_PROTO_STOP_NONE;
    if (!strcmp(f, "stop"))
        return TG_PROTO_STOP_END_TURN;
    if (!strcmp(f, "length"))
        return TG_PROTO_STOP_MAX_TOKENS;
    if (!strcmp(f, "tool_calls") || !strcmp(f, "function_call"))
        return TG_PROTO_STOP_TOOL_USE;
    if (!strcmp(f, "content_filter"))
        return TG_PROTO_STOP_REFUSAL;
    return TG_PROTO_STOP_END_TURN;
}

/* tool_calls exactly when a call was sent. */
static const char *finish_name(tg_proto_stop_t st, int tools)
{
    if (tools)
        return "tool_calls";
    switch (st) {
    case TG_PROTO_STOP_MAX_TOKENS: return "length";
    case TG_PROTO_STOP_REFUSAL: return "content_filter";
    case TG_PROTO_STOP_NONE:
    case TG_PROTO_STOP_END_TURN:
    case TG_PROTO_STOP_STOP_SEQUENCE:
    case TG_PROTO_STOP_TOOL_USE:
    case TG_PROTO_STOP_PAUSE_TURN: break;
    }
    return "stop";
}

/* ---- request ------------------------------------------------------------- */

static int parse_tool_call(tg_pool_t *pool, json_t *tc, tg_proto_block_t *bl, const char *path, char *err,
                           size_t errlen)
{
    char p[TG_PROTO_PATHLEN];
    json_t *fn = json_object_get(tc, "function");
    const char *id = json_string_value(json_object_get(tc, "id"));
    const char *name = json_string_value(json_object_get(fn, "name"));
    json_t *args = json_object_get(fn, "arguments");
    if (!id)
        return bad(err, errlen, path, "id: expected a string");
    if (!name) {
        tg_proto__path(p, sizeof p, "%s.function.name", path);
        return bad(err, errlen, p, "expected a string");
    }
    bl->bl_type = TG_PROTO_BLOCK_TOOL_USE;
    bl->bl_id = tg_proto__strdup(pool, id);
    bl->bl_name = tg_proto__strdup(pool, name);
    if (json_is_string(args) && json_string_length(args))
        bl->bl_args = tg_proto__strdup(pool, json_string_value(args));
    else if (json_is_object(args))
        bl->bl_args = tg_proto__dump(pool, args);
    else
        bl->bl_args = "{}";
    return bl->bl_id && bl->bl_name && bl->bl_args ? 0 : TG_PROTO_ENOMEM;
}

/* reasoning_details (OpenRouter's shape) carries thinking signatures and
 * redacted thinking through OpenAI-shaped hops; reasoning_content
 * (DeepSeek's) only text. */
static int parse_reasoning(tg_pool_t *pool, json_t *m, tg_proto_block_t *blocks, size_t *nb, const char *path,
                           char *err, size_t errlen)
{
    json_t *det = json_object_get(m, "reasoning_details");
    if (json_is_array(det) && json_array_size(det)) {
        size_t i;
        json_t *d;
        json_array_foreach(det, i, d)
        {
            const char *t = json_string_value(json_object_get(d, "type"));
            tg_proto_block_t *bl = &blocks[(*nb)++];
            if (t && !strcmp(t, "reasoning.encrypted")) {
                bl->bl_type = TG_PROTO_BLOCK_REDACTED_THINKING;
                bl->bl_data = tg_proto__strdup(pool, json_string_value(json_object_get(d, "data")));
                if (!bl->bl_data)
                    return tg_errf(err, errlen, TG_PROTO_EINVALID, "%s.reasoning_details[%zu].data: expected a string",
                                   path, i);
            } else {
                bl->bl_type = TG_PROTO_BLOCK_THINKING;
                const char *text = json_string_value(json_object_get(d, "text"));
                bl->bl_text = tg_proto__strdup(pool, text ? text : "");
                bl->bl_signature = tg_proto__strdup(pool, json_string_value(json_object_get(d, "signature")));
                if (!bl->bl_text)
                    return TG_PROTO_ENOMEM;
            }
        }
        return 0;
    }
    const char *rc = json_string_value(json_object_get(m, "reasoning_content"));
    if (rc && *rc) {
        tg_proto_block_t *bl = &blocks[(*nb)++];
        bl->bl_type = TG_PROTO_BLOCK_THINKING;
        if (!(bl->bl_text = tg_proto__strdup(pool, rc)))
            return TG_PROTO_ENOMEM;
    }
    return 0;
}

static int parse_user_content(tg_pool_t *pool, json_t *content, tg_proto_message_t *msg, const char *path,
                              char *err, size_t errlen)
{
    char p[TG_PROTO_PATHLEN];
    if (json_is_string(content)) {
        msg->ms_blocks = tg_proto__array(pool, 1, sizeof *msg->ms_blocks);
        if (!msg->ms_blocks)
            return TG_PROTO_ENOMEM;
        msg->ms_nblocks = 1;
        msg->ms_blocks[0].bl_type = TG_PROTO_BLOCK_TEXT;
        msg->ms_blocks[0].bl_text = tg_proto__strdup(pool, json_string_value(content));
        return msg->ms_blocks[0].bl_text ? 0 : TG_PROTO_ENOMEM;
    }
    if (!json_is_array(content))
        return bad(err, errlen, path, "expected a string or an array of parts");
    msg->ms_blocks = tg_proto__array(pool, json_array_size(content), sizeof *msg->ms_blocks);
    if (!msg->ms_blocks)
        return TG_PROTO_ENOMEM;
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        tg_proto_block_t *bl = &msg->ms_blocks[msg->ms_nblocks++];
        const char *t = json_string_value(json_object_get(part, "type"));
        tg_proto__path(p, sizeof p, "%s[%zu]", path, i);
        if (!t)
            return bad(err, errlen, p, "type: expected a string");
        if (!strcmp(t, "text")) {
            const char *text = json_string_value(json_object_get(part, "text"));
            if (!text)
                return bad(err, errlen, p, "text: expected a string");
            bl->bl_type = TG_PROTO_BLOCK_TEXT;
            if (!(bl->bl_text = tg_proto__strdup(pool, text)))
                return TG_PROTO_ENOMEM;
        } else if (!strcmp(t, "image_url")) {
            int rc = parse_image(pool, part, bl, p, err, errlen);
            if (rc)
                return rc;
        } else {
            return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "%s.type: unsupported part type '%s'", p, t);
        }
    }
    return 0;
}

static int parse_tools(tg_pool_t *pool, json_t *root, tg_proto_request_t *rq, char *err, size_t errlen)
{
    json_t *tools = json_object_get(root, "tools");
    if (!tools || json_is_null(tools))
        return 0;
    if (!json_is_array(tools))
        return bad(err, errlen, "tools", "expected an array");
    rq->rq_tools = tg_proto__array(pool, json_array_size(tools), sizeof *rq->rq_tools);
    if (!rq->rq_tools)
        return TG_PROTO_ENOMEM;
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        json_t *fn = json_object_get(t, "function");
        const char *type = json_string_value(json_object_get(t, "type"));
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (!type || strcmp(type, "function") != 0)
            return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "tools[%zu].type: only 'function' tools convert",
                           i);
        if (!name)
            return tg_errf(err, errlen, TG_PROTO_EINVALID, "tools[%zu].function.name: expected a string", i);
        tg_proto_tool_t *tl = &rq->rq_tools[rq->rq_ntools++];
        tl->tl_name = tg_proto__strdup(pool, name);
        tl->tl_description = tg_proto__strdup(pool, json_string_value(json_object_get(fn, "description")));
        json_t *params = json_object_get(fn, "parameters");
        tl->tl_schema = params ? tg_proto__dump(pool, params) : "{\"type\":\"object\",\"properties\":{}}";
        if (!tl->tl_name || !tl->tl_schema)
            return TG_PROTO_ENOMEM;
    }
    json_t *tc = json_object_get(root, "tool_choice");
    if (json_is_string(tc)) {
        int rc = tg_proto__tool_choice_word(json_string_value(tc), rq, err, errlen);
        if (rc)
            return rc;
    } else if (json_is_object(tc)) {
        const char *name = json_string_value(json_object_get(json_object_get(tc, "function"), "name"));
        if (!name)
            return bad(err, errlen, "tool_choice.function.name", "expected a string");
        rq->rq_tool_choice = TG_PROTO_TOOLS_TOOL;
        if (!(rq->rq_tool_name = tg_proto__strdup(pool, name)))
            return TG_PROTO_ENOMEM;
    } else if (tc && !json_is_null(tc)) {
        return bad(err, errlen, "tool_choice", "expected a string or an object");
    }
    json_t *par = json_object_get(root, "parallel_tool_calls");
    if (json_is_boolean(par))
        rq->rq_parallel_tools = json_is_true(par);
    return 0;
}

static int parse_params(tg_pool_t *pool, json_t *root, tg_proto_request_t *rq, char *err, size_t errlen)
{
    json_t *v;
    if ((v = json_object_get(root, "n")) && json_is_integer(v) && json_integer_value(v) != 1)
        return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "n: only one choice converts");
    v = json_object_get(root, "stop");
    if (json_is_string(v)) {
        rq->rq_stop = tg_proto__array(pool, 1, sizeof *rq->rq_stop);
        if (!rq->rq_stop || !(rq->rq_stop[0] = tg_proto__strdup(pool, json_string_value(v))))
            return TG_PROTO_ENOMEM;
        rq->rq_nstop = 1;
    } else if (json_is_array(v)) {
        rq->rq_stop = tg_proto__array(pool, json_array_size(v), sizeof *rq->rq_stop);
        if (!rq->rq_stop)
            return TG_PROTO_ENOMEM;
        size_t i;
        json_t *s;
        json_array_foreach(v, i, s)
        {
            if (!json_is_string(s))
                return tg_errf(err, errlen, TG_PROTO_EINVALID, "stop[%zu]: expected a string", i);
            if (!(rq->rq_stop[rq->rq_nstop++] = tg_proto__strdup(pool, json_string_value(s))))
                return TG_PROTO_ENOMEM;
        }
    } else if (v && !json_is_null(v)) {
        return bad(err, errlen, "stop", "expected a string or an array");
    }
    int rc = tg_proto__sampling(root, rq, err, errlen);
    if (rc)
        return rc;
    const char *mt = json_object_get(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if ((v = json_object_get(root, mt)) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return bad(err, errlen, mt, "expected a positive integer");
        rq->rq_max_tokens = json_integer_value(v);
    }
    if ((v = json_object_get(root, "stream")) && !json_is_null(v)) {
        if (!json_is_boolean(v))
            return bad(err, errlen, "stream", "expected a boolean");
        rq->rq_stream = json_is_true(v);
    }
    rq->rq_include_usage = json_is_true(json_object_get(json_object_get(root, "stream_options"), "include_usage"));
    if ((v = json_object_get(root, "user")) && json_is_string(v))
        if (!(rq->rq_user = tg_proto__strdup(pool, json_string_value(v))))
            return TG_PROTO_ENOMEM;
    return 0;
}

static int oa_parse_request(tg_pool_t *pool, json_t *root, tg_proto_request_t *rq, char *err, size_t errlen)
{
    char p[TG_PROTO_PATHLEN];
    int rc = 0;
    const char *model = json_string_value(json_object_get(root, "model"));
    json_t *msgs = json_object_get(root, "messages");
    if (!model)
        return bad(err, errlen, "model", "expected a string");
    if (!json_is_array(msgs) || !json_array_size(msgs))
        return bad(err, errlen, "messages", "expected a non-empty array");
    size_t n = json_array_size(msgs);
    rq->rq_model = tg_proto__strdup(pool, model);
    rq->rq_system = tg_proto__array(pool, n, sizeof *rq->rq_system);
    rq->rq_msgs = tg_proto__array(pool, n, sizeof *rq->rq_msgs);
    if (!rq->rq_model || !rq->rq_system || !rq->rq_msgs)
        return TG_PROTO_ENOMEM;
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        tg_proto__path(p, sizeof p, "messages[%zu]", i);
        if (!role)
            return tg_errf(err, errlen, TG_PROTO_EINVALID, "%s.role: expected a string", p);
        if (!strcmp(role, "system") || !strcmp(role, "developer")) {
            char cp[TG_PROTO_PATHLEN];
            tg_proto__path(cp, sizeof cp, "%s.content", p);
            const char *t = join_text(pool, content, cp, err, errlen, &rc);
            if (!t)
                return rc ? rc : TG_PROTO_ENOMEM;
            rq->rq_system[rq->rq_nsystem++] = t;
        } else if (!strcmp(role, "user")) {
            char cp[TG_PROTO_PATHLEN];
            tg_proto__path(cp, sizeof cp, "%s.content", p);
            tg_proto_message_t *msg = &rq->rq_msgs[rq->rq_nmsgs++];
            msg->ms_role = TG_PROTO_ROLE_USER;
            if ((rc = parse_user_content(pool, content, msg, cp, err, errlen)))
                return rc;
        } else if (!strcmp(role, "assistant")) {
            json_t *tcs = json_object_get(m, "tool_calls");
            json_t *det = json_object_get(m, "reasoning_details");
            size_t cap = 2 + json_array_size(tcs) + json_array_size(det) +
                         (json_is_array(content) ? json_array_size(content) : 0);
            tg_proto_message_t *msg = &rq->rq_msgs[rq->rq_nmsgs++];
            msg->ms_role = TG_PROTO_ROLE_ASSISTANT;
            if (!(msg->ms_blocks = tg_proto__array(pool, cap, sizeof *msg->ms_blocks)))
                return TG_PROTO_ENOMEM;
            if ((rc = parse_reasoning(pool, m, msg->ms_blocks, &msg->ms_nblocks, p, err, errlen)))
                return rc;
            char cp[TG_PROTO_PATHLEN];
            tg_proto__path(cp, sizeof cp, "%s.content", p);
            const char *t = join_text(pool, content, cp, err, errlen, &rc);
            if (!t)
                return rc ? rc : TG_PROTO_ENOMEM;
            if (*t) {
                msg->ms_blocks[msg->ms_nblocks].bl_type = TG_PROTO_BLOCK_TEXT;
                msg->ms_blocks[msg->ms_nblocks++].bl_text = t;
            }
            if (tcs && !json_is_null(tcs) && !json_is_array(tcs))
                return tg_errf(err, errlen, TG_PROTO_EINVALID, "%s.tool_calls: expected an array", p);
            size_t j;
            json_t *tc;
            json_array_foreach(tcs, j, tc)
            {
                char tp[TG_PROTO_PATHLEN];
                tg_proto__path(tp, sizeof tp, "%s.tool_calls[%zu]", p, j);
                if ((rc = parse_tool_call(pool, tc, &msg->ms_blocks[msg->ms_nblocks++], tp, err, errlen)))
                    return rc;
            }
        } else if (!strcmp(role, "tool")) {
            const char *id = json_string_value(json_object_get(m, "tool_call_id"));
            if (!id)
                return tg_errf(err, errlen, TG_PROTO_EINVALID, "%s.tool_call_id: expected a string", p);
            /* consecutive tool messages answer one assistant turn: one user message */
            tg_proto_message_t *msg = rq->rq_nmsgs ? &rq->rq_msgs[rq->rq_nmsgs - 1] : NULL;
            if (!msg || msg->ms_role != TG_PROTO_ROLE_USER || !msg->ms_nblocks ||
                msg->ms_blocks[0].bl_type != TG_PROTO_BLOCK_TOOL_RESULT) {
                msg = &rq->rq_msgs[rq->rq_nmsgs++];
                msg->ms_role = TG_PROTO_ROLE_USER;
                if (!(msg->ms_blocks = tg_proto__array(pool, n - i, sizeof *msg->ms_blocks)))
                    return TG_PROTO_ENOMEM;
            }
            tg_proto_block_t *bl = &msg->ms_blocks[msg->ms_nblocks++];
            bl->bl_type = TG_PROTO_BLOCK_TOOL_RESULT;
            bl->bl_id = tg_proto__strdup(pool, id);
            char cp[TG_PROTO_PATHLEN];
            tg_proto__path(cp, sizeof cp, "%s.content", p);
            const char *t = join_text(pool, content, cp, err, errlen, &rc);
            if (!t)
                return rc ? rc : TG_PROTO_ENOMEM;
            bl->bl_parts = tg_proto__array(pool, 1, sizeof *bl->bl_parts);
            if (!bl->bl_id || !bl->bl_parts)
                return TG_PROTO_ENOMEM;
            bl->bl_nparts = 1;
            bl->bl_parts[0].bl_type = TG_PROTO_BLOCK_TEXT;
            bl->bl_parts[0].bl_text = t;
        } else {
            return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "%s.role: unsupported role '%s'", p, role);
        }
    }
    if ((rc = parse_tools(pool, root, rq, err, errlen)))
        return rc;
    return parse_params(pool, root, rq, err, errlen);
}

/* Text of blocks of one type joined (NULL when there is none). */
static char *joined(const tg_proto_block_t *b, size_t n, tg_proto_block_type_t type)
{
    tg_buf_t buf;
    tg_buf_init(&buf, (size_t)1 << 30);
    int any = 0;
    for (size_t i = 0; i < n; i++) {
        if (b[i].bl_type != type || !b[i].bl_text)
            continue;
        if (tg_buf_puts(&buf, b[i].bl_text)) {
            tg_buf_free(&buf);
            return NULL;
        }
        any = 1;
    }
    if (!any)
        return NULL;
    if (!buf.b_data)
        return tg_strdup("");
    return tg_buf_steal(&buf, NULL);
}

static json_t *image_part(const tg_proto_block_t *b)
{
    if (b->bl_url)
        return json_pack("{ss s{ss}}", "type", "image_url", "image_url", "url", b->bl_url);
    tg_buf_t u;
    tg_buf_init(&u, (size_t)1 << 30);
    if (tg_buf_printf(&u, "data:%s;base64,%s", b->bl_media_type ? b->bl_media_type : "image/png",
                      b->bl_data ? b->bl_data : "")) {
        tg_buf_free(&u);
        return NULL;
    }
    json_t *r = json_pack("{ss s{ss}}", "type", "image_url", "image_url", "url", u.b_data);
    tg_buf_free(&u);
    return r;
}

/* Thinking with a signature or redacted thinking rides in reasoning_details. */
static json_t *reasoning_details(const tg_proto_block_t *b, size_t n)
{
    int need = 0;
    for (size_t i = 0; i < n; i++)
        if ((b[i].bl_type == TG_PROTO_BLOCK_THINKING && b[i].bl_signature) ||
            b[i].bl_type == TG_PROTO_BLOCK_REDACTED_THINKING)
            need = 1;
    if (!need)
        return json_null();
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        json_t *d = NULL;
        if (b[i].bl_type == TG_PROTO_BLOCK_THINKING) {
            d = json_pack("{ss ss}", "type", "reasoning.text", "text", b[i].bl_text ? b[i].bl_text : "");
            if (d && b[i].bl_signature && tg_proto__set(d, "signature", json_string(b[i].bl_signature)))
                d = (json_decref(d), NULL);
        } else if (b[i].bl_type == TG_PROTO_BLOCK_REDACTED_THINKING) {
            d = json_pack("{ss ss}", "type", "reasoning.encrypted", "data", b[i].bl_data ? b[i].bl_data : "");
        } else {
            continue;
        }
        if (!d || json_array_append_new(a, d))
            a = (json_decref(a), NULL);
    }
    return a;
}

static json_t *tool_call(const tg_proto_block_t *b)
{
    return json_pack("{ss ss s{ss ss}}", "id", b->bl_id ? b->bl_id : "", "type", "function", "function", "name",
                     b->bl_name ? b->bl_name : "", "arguments", b->bl_args ? b->bl_args : "{}");
}

/* The assistant message of a request or an answer. */
static json_t *assistant_message(const tg_proto_block_t *b, size_t n)
{
    json_t *m = json_pack("{ss}", "role", "assistant");
    if (!m)
        return NULL;
    char *text = joined(b, n, TG_PROTO_BLOCK_TEXT);
    char *think = joined(b, n, TG_PROTO_BLOCK_THINKING);
    int rc = tg_proto__set(m, "content", text ? json_string(text) : json_null());
    if (!rc && think)
        rc = tg_proto__set(m, "reasoning_content", json_string(think));
    tg_free(text);
    tg_free(think);
    json_t *det = rc ? NULL : reasoning_details(b, n);
    if (!rc && !json_is_null(det))
        rc = tg_proto__set(m, "reasoning_details", det);
    json_t *tcs = json_array();
    for (size_t i = 0; !rc && tcs && i < n; i++)
        if (b[i].bl_type == TG_PROTO_BLOCK_TOOL_USE && json_array_append_new(tcs, tool_call(&b[i])))
            rc = TG_PROTO_ENOMEM;
    if (!rc && tcs && json_array_size(tcs))
        rc = tg_proto__set(m, "tool_calls", tcs);
    else
        json_decref(tcs);
    if (rc || !tcs)
        return json_decref(m), NULL;
    return m;
}

/* A user message: its tool results first, one role "tool" message each
 * (OpenAI wants them right after the assistant's calls), then the rest.
 * OpenAI tool messages carry text only, and no is_error (README). */
static int user_messages(json_t *msgs, const tg_proto_message_t *msg)
{
    json_t *parts = json_array();
    if (!parts)
        return TG_PROTO_ENOMEM;
    int rc = 0, only_text = 1;
    for (size_t i = 0; !rc && i < msg->ms_nblocks; i++) {
        const tg_proto_block_t *b = &msg->ms_blocks[i];
        json_t *v = NULL;
        if (b->bl_type == TG_PROTO_BLOCK_TOOL_RESULT) {
            char *t = joined(b->bl_parts, b->bl_nparts, TG_PROTO_BLOCK_TEXT);
            v = json_pack("{ss ss ss}", "role", "tool", "tool_call_id", b->bl_id ? b->bl_id : "", "content",
                          t ? t : "");
            tg_free(t);
            if (!v || json_array_append_new(msgs, v))
                rc = TG_PROTO_ENOMEM;
            continue;
        }
        if (b->bl_type == TG_PROTO_BLOCK_TEXT)
            v = json_pack("{ss ss}", "type", "text", "text", b->bl_text ? b->bl_text : "");
        else if (b->bl_type == TG_PROTO_BLOCK_IMAGE)
            v = image_part(b), only_text = 0;
        else
            continue;
        if (!v || json_array_append_new(parts, v))
            rc = TG_PROTO_ENOMEM;
    }
    if (!rc && json_array_size(parts)) {
        json_t *content = parts;
        if (only_text && json_array_size(parts) == 1)
            content = json_incref(json_object_get(json_array_get(parts, 0), "text")), json_decref(parts);
        json_t *m = json_pack("{ss so}", "role", "user", "content", content);
        return !m || json_array_append_new(msgs, m) ? TG_PROTO_ENOMEM : 0;
    }
    json_decref(parts);
    return rc;
}

static json_t *oa_write_request(const tg_proto_request_t *rq, char *err, size_t errlen, int *rcp)
{
    int rc = 0;
    json_t *root = json_pack("{ss}", "model", rq->rq_model ? rq->rq_model : "");
    json_t *msgs = json_array();
    if (!root || !msgs || tg_proto__set(root, "messages", msgs))
        goto nomem;
    for (size_t i = 0; i < rq->rq_nsystem; i++)
        if (json_array_append_new(msgs, json_pack("{ss ss}", "role", "system", "content", rq->rq_system[i])))
            goto nomem;
    for (size_t i = 0; i < rq->rq_nmsgs; i++) {
        const tg_proto_message_t *m = &rq->rq_msgs[i];
        if (m->ms_role == TG_PROTO_ROLE_USER)
            rc = user_messages(msgs, m);
        else if (json_array_append_new(msgs, assistant_message(m->ms_blocks, m->ms_nblocks)))
            rc = TG_PROTO_ENOMEM;
        if (rc)
            goto fail;
    }
    if (rq->rq_ntools) {
        json_t *tools = json_array();
        if (!tools || tg_proto__set(root, "tools", tools))
            goto nomem;
        for (size_t i = 0; i < rq->rq_ntools; i++) {
            const tg_proto_tool_t *t = &rq->rq_tools[i];
            json_t *schema = tg_proto__load(t->tl_schema, "tools[].input_schema", err, errlen, &rc);
            if (!schema)
                goto fail;
            json_t *fn = json_pack("{ss so}", "name", t->tl_name, "parameters", schema);
            if (!fn || (t->tl_description && tg_proto__set(fn, "description", json_string(t->tl_description))) ||
                json_array_append_new(tools, json_pack("{ss so}", "type", "function", "function", fn)))
                goto nomem;
        }
        if (rq->rq_parallel_tools >= 0 &&
            tg_proto__set(root, "parallel_tool_calls", json_boolean(rq->rq_parallel_tools)))
            goto nomem;
    }
    json_t *tc = NULL;
    switch (rq->rq_tool_choice) {
    case TG_PROTO_TOOLS_UNSET: break;
    case TG_PROTO_TOOLS_AUTO: tc = json_string("auto"); break;
    case TG_PROTO_TOOLS_ANY: tc = json_string("required"); break;
    case TG_PROTO_TOOLS_NONE: tc = json_string("none"); break;
    case TG_PROTO_TOOLS_TOOL:
        tc = json_pack("{ss s{ss}}", "type", "function", "function", "name", rq->rq_tool_name ? rq->rq_tool_name : "");
        break;
    }
    if (rq->rq_tool_choice != TG_PROTO_TOOLS_UNSET && tg_proto__set(root, "tool_choice", tc))
        goto nomem;
    if (rq->rq_nstop) {
        json_t *st = json_array();
        if (!st || tg_proto__set(root, "stop", st))
            goto nomem;
        for (size_t i = 0; i < rq->rq_nstop; i++)
            if (json_array_append_new(st, json_string(rq->rq_stop[i])))
                goto nomem;
    }
    if ((rq->rq_has_temperature && tg_proto__set(root, "temperature", json_real(rq->rq_temperature))) ||
        (rq->rq_has_top_p && tg_proto__set(root, "top_p", json_real(rq->rq_top_p))) ||
        (rq->rq_max_tokens > 0 && tg_proto__set(root, "max_tokens", json_integer(rq->rq_max_tokens))) ||
        (rq->rq_stream && tg_proto__set(root, "stream", json_true())) ||
        (rq->rq_stream && tg_proto__set(root, "stream_options", json_pack("{sb}", "include_usage", 1))) ||
        (rq->rq_user && tg_proto__set(root, "user", json_string(rq->rq_user))))
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

static int oa_parse_response(const tg_proto_vendor_t *vendor, tg_pool_t *pool, json_t *root,
                             tg_proto_response_t *rs, char *err, size_t errlen)
{
    int rc;
    json_t *choices = json_object_get(root, "choices");
    json_t *c0 = json_array_get(choices, 0);
    json_t *m = json_object_get(c0, "message");
    if (!json_is_object(m))
        return bad(err, errlen, "choices[0].message", "expected an object");
    rs->rs_id = tg_proto__strdup(pool, json_string_value(json_object_get(root, "id")));
    rs->rs_model = tg_proto__strdup(pool, json_string_value(json_object_get(root, "model")));
    json_t *tcs = json_object_get(m, "tool_calls");
    json_t *content = json_object_get(m, "content");
    size_t cap = 3 + json_array_size(tcs) + json_array_size(json_object_get(m, "reasoning_details"));
    if (!(rs->rs_blocks = tg_proto__array(pool, cap, sizeof *rs->rs_blocks)))
        return TG_PROTO_ENOMEM;
    if ((rc = parse_reasoning(pool, m, rs->rs_blocks, &rs->rs_nblocks, "choices[0].message", err, errlen)))
        return rc;
    const char *t = join_text(pool, content, "choices[0].message.content", err, errlen, &rc);
    if (!t)
        return rc ? rc : TG_PROTO_ENOMEM;
    if (*t) {
        rs->rs_blocks[rs->rs_nblocks].bl_type = TG_PROTO_BLOCK_TEXT;
        rs->rs_blocks[rs->rs_nblocks++].bl_text = t;
    }
    const char *refusal = json_string_value(json_object_get(m, "refusal"));
    if (refusal && *refusal) {
        rs->rs_blocks[rs->rs_nblocks].bl_type = TG_PROTO_BLOCK_TEXT;
        if (!(rs->rs_blocks[rs->rs_nblocks++].bl_text = tg_proto__strdup(pool, refusal)))
            return TG_PROTO_ENOMEM;
    }
    size_t j;
    json_t *tc;
    json_array_foreach(tcs, j, tc)
    {
        char tp[TG_PROTO_PATHLEN];
        tg_proto__path(tp, sizeof tp, "choices[0].message.tool_calls[%zu]", j);
        if ((rc = parse_tool_call(pool, tc, &rs->rs_blocks[rs->rs_nblocks++], tp, err, errlen)))
            return rc;
    }
    rs->rs_stop = parse_finish(json_string_value(json_object_get(c0, "finish_reason")));
    if (refusal && *refusal)
        rs->rs_stop = TG_PROTO_STOP_REFUSAL;
    return parse_usage(vendor, pool, json_object_get(root, "usage"), &rs->rs_usage);
}

static int has_tool(const tg_proto_block_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b[i].bl_type == TG_PROTO_BLOCK_TOOL_USE)
            return 1;
    return 0;
}

static json_t *oa_write_response(const tg_proto_response_t *rs, char *err, size_t errlen, int *rc)
{
    json_t *msg = assistant_message(rs->rs_blocks, rs->rs_nblocks);
    json_t *root =
        msg ? json_pack("{ss ss sI ss s[{si so ss}]}", "id", rs->rs_id ? rs->rs_id : "", "object", "chat.completion",
                        "created", (json_int_t)time(NULL), "model", rs->rs_model ? rs->rs_model : "", "choices",
                        "index", 0, "message", msg, "finish_reason",
                        finish_name(rs->rs_stop, has_tool(rs->rs_blocks, rs->rs_nblocks)))
            : NULL;
    if (root && tg_proto__set(root, "usage", write_usage(&rs->rs_usage)))
        root = (json_decref(root), NULL);
    if (!root)
        *rc = tg_errf(err, errlen, TG_PROTO_ENOMEM, "out of memory writing the answer");
    return root;
}

/* ---- errors -------------------------------------------------------------- */

static int oa_parse_error(tg_pool_t *pool, int status, json_t *root, tg_proto_errinfo_t *out)
{
    json_t *e = json_object_get(root, "error");
    if (!json_is_object(e))
        return 0;
    const char *type = json_string_value(json_object_get(e, "type"));
    const char *code = json_string_value(json_object_get(e, "code"));
    if ((type && !strcmp(type, "insufficient_quota")) || (code && !strcmp(code, "insufficient_quota")))
        out->pe_type = TG_PROTO_ERR_BILLING;
    else if (status == 0 && type && !strcmp(type, "server_error"))
        out->pe_type = TG_PROTO_ERR_API;
    out->pe_message = tg_proto__strdup(pool, json_string_value(json_object_get(e, "message")));
    out->pe_param = tg_proto__strdup(pool, json_string_value(json_object_get(e, "param")));
    out->pe_code = tg_proto__strdup(pool, code);
    return 0;
}

/* OpenAI's own type names (the agent's, too: request.c). */
static const char *oa_errname(tg_proto_errtype_t t)
{
    switch (t) {
    case TG_PROTO_ERR_INVALID_REQUEST:
    case TG_PROTO_ERR_AUTHENTICATION:
    case TG_PROTO_ERR_NOT_FOUND:
    case TG_PROTO_ERR_REQUEST_TOO_LARGE: return "invalid_request_error";
    case TG_PROTO_ERR_PERMISSION: return "permission_error";
    case TG_PROTO_ERR_RATE_LIMIT: return "rate_limit_error";
    case TG_PROTO_ERR_BILLING: return "insufficient_quota";
    case TG_PROTO_ERR_API:
    case TG_PROTO_ERR_OVERLOADED:
    case TG_PROTO_NERRTYPES: break;
    }
    return "server_error";
}

static const char *oa_default_code(tg_proto_errtype_t t)
{
    switch (t) {
    case TG_PROTO_ERR_AUTHENTICATION: return "invalid_api_key";
    case TG_PROTO_ERR_REQUEST_TOO_LARGE: return "request_too_large";
    case TG_PROTO_ERR_BILLING: return "insufficient_quota";
    case TG_PROTO_ERR_OVERLOADED: return "overloaded";
    case TG_PROTO_ERR_INVALID_REQUEST:
    case TG_PROTO_ERR_PERMISSION:
    case TG_PROTO_ERR_NOT_FOUND:
    case TG_PROTO_ERR_RATE_LIMIT:
    case TG_PROTO_ERR_API:
    case TG_PROTO_NERRTYPES: break;
    }
    return NULL;
}

static json_t *oa_write_error(const tg_proto_errinfo_t *e)
{
    const char *code = e->pe_code ? e->pe_code : oa_default_code(e->pe_type);
    return json_pack("{s{ss ss so so}}", "error", "message", e->pe_message ? e->pe_message : "", "type",
                     oa_errname(e->pe_type), "param", e->pe_param ? json_string(e->pe_param) : json_null(), "code",
                     code ? json_string(code) : json_null());
}

static int oa_errtype_status(tg_proto_errtype_t t)
{
    switch (t) {
    case TG_PROTO_ERR_INVALID_REQUEST: return 400;
    case TG_PROTO_ERR_AUTHENTICATION: return 401;
    case TG_PROTO_ERR_BILLING: return 402;
    case TG_PROTO_ERR_PERMISSION: return 403;
    case TG_PROTO_ERR_NOT_FOUND: return 404;
    case TG_PROTO_ERR_REQUEST_TOO_LARGE: return 413;
    case TG_PROTO_ERR_RATE_LIMIT: return 429;
    case TG_PROTO_ERR_OVERLOADED: return 503;
    case TG_PROTO_ERR_API:
    case TG_PROTO_NERRTYPES: break;
    }
    return 500;
}

/* ---- stream decoder: OpenAI chunks -> IR events -------------------------- */

static void dec_init(tg_proto_stream_t *s)
{
    tg_proto_oa_dec_t *d = &s->st_dec.oa;
    memset(d, 0, sizeof *d);
    d->od_open = -1;
}

/* Makes od_tools hold index idx. Returns 0 or TG_PROTO_ENOMEM. */
static int tools_grow(tg_proto_stream_t *s, int idx)
{
    tg_proto_oa_dec_t *d = &s->st_dec.oa;
    if (idx < d->od_cap)
        return 0;
    int cap = d->od_cap ? d->od_cap : 4;
    while (cap <= idx)
        cap *= 2;
    if (cap > TG_PROTO_MAX_TOOLS)
        cap = TG_PROTO_MAX_TOOLS;
    tg_proto_oa_tool_t *t = tg_realloc(d->od_tools, (size_t)cap * sizeof *t);
    if (!t)
        return TG_PROTO_ENOMEM;
    for (int i = d->od_cap; i < cap; i++) {
        memset(&t[i], 0, sizeof t[i]);
        tg_buf_init(&t[i].ot_args, s->st_opts.so_max_event);
    }
    d->od_tools = t;
    d->od_cap = cap;
    return 0;
}

static void dec_free(tg_proto_stream_t *s)
{
    tg_proto_oa_dec_t *d = &s->st_dec.oa;
    for (int i = 0; i < d->od_cap; i++) {
        tg_free(d->od_tools[i].ot_id);
        tg_free(d->od_tools[i].ot_name);
        tg_buf_free(&d->od_tools[i].ot_args);
    }
    tg_free(d->od_tools);
}

static int emit(tg_proto_stream_t *s, tg_proto_event_type_t type, int index)
{
    tg_proto_event_t ev = {.ev_type = type, .ev_index = index};
    return tg_proto__emit(s, &ev);
}

static int close_open(tg_proto_stream_t *s)
{
    tg_proto_oa_dec_t *d = &s->st_dec.oa;
    if (d->od_open < 0)
        return 0;
    if (d->od_open_kind == TG_PROTO_BLOCK_TOOL_USE)
        d->od_tools[d->od_open_tool].ot_state = 3;
    int idx = d->od_open;
    d->od_open = -1;
    return emit(s, TG_PROTO_EV_BLOCK_STOP, idx);
}

static int open_block(tg_proto_stream_t *s, tg_proto_block_type_t kind, int tool)
{
    tg_proto_oa_dec_t *d = &s->st_dec.oa;
    int rc = close_open(s);
    if (rc)
        return rc;
    tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_BLOCK_START, .ev_index = d->od_next, .ev_block = kind};
    if (kind == TG_PROTO_BLOCK_TOOL_USE) {
        ev.ev_id = d->od_tools[tool].ot_id;
        ev.ev_name = d->od_tools[tool].ot_name;
        d->od_tools[tool].ot_state = 1;
    }
    d->od_open = d->od_next++;
    d->od_open_kind = kind;
    d->od_open_tool = tool;
    return tg_proto__emit(s, &ev);
}

static int delta(tg_proto_stream_t *s, tg_proto_delta_t kind, const char *t, size_t n)
{
    tg_proto_event_t ev = {
        .ev_type = TG_PROTO_EV_DELTA, .ev_index = s->st_dec.oa.od_open, .ev_delta = kind, .ev_text = t, .ev_len = n};
    return n ? tg_proto__emit(s, &ev) : 0;
}

/* Text or thinking: continues the open block of that kind or opens one. */
static int text_delta(tg_proto_stream_t *s, tg_proto_block_type_t kind, json_t *v)
{
    tg_proto_oa_dec_t *d = &s->st_dec.oa;
    if (!json_is_string(v) || !json_string_length(v))
        return 0;
    int rc = 0;
    if (d->od_open < 0 || d->od_open_kind != (int)kind)
        rc = open_block(s, kind, -1);
    if (!rc)
        rc = delta(s, kind == TG_PROTO_BLOCK_TEXT ? TG_PROTO_DELTA_TEXT : TG_PROTO_DELTA_THINKING,
                   json_string_value(v), json_string_length(v));
    return rc;
}

static int reasoning_details_delta(tg_proto_stream_t *s, json_t *det)
{
    size_t i;
    json_t *e;
    int rc = 0;
    json_array_foreach(det, i, e)
    {
        const char *type = json_string_value(json_object_get(e, "type"));
        if (type && !strcmp(type, "reasoning.encrypted")) {
            const char *data = json_string_value(json_object_get(e, "data"));
            if (!data)
                continue;
            if ((rc = open_block(s, TG_PROTO_BLOCK_REDACTED_THINKING, -1)))
                return rc;
            /* the data rides in the start event; the block has no deltas */
            continue;
        }
        if ((rc = text_delta(s, TG_PROTO_BLOCK_THINKING, json_object_get(e, "text"))))
            return rc;
        json_t *sig = json_object_get(e, "signature");
        if (json_is_string(sig) && json_string_length(sig)) {
            if (s->st_dec.oa.od_open < 0 || s->st_dec.oa.od_open_kind != TG_PROTO_BLOCK_THINKING)
                if ((rc = open_block(s, TG_PROTO_BLOCK_THINKING, -1)))
                    return rc;
            if ((rc = delta(s, TG_PROTO_DELTA_SIGNATURE, json_string_value(sig), json_string_length(sig))))
                return rc;
        }
    }
    return 0;
}

static int tool_delta(tg_proto_stream_t *s, json_t *tc, size_t pos)
{
    tg_proto_oa_dec_t *d = &s->st_dec.oa;
    json_t *jidx = json_object_get(tc, "index");
    json_int_t idx = json_is_integer(jidx) ? json_integer_value(jidx) : (json_int_t)pos;
    if (idx < 0 || idx >= TG_PROTO_MAX_TOOLS)
        return tg_proto__fail(s, TG_PROTO_EUNSUPPORTED, TG_PROTO_ERR_API, "upstream tool call index out of range");
    if (tools_grow(s, (int)idx))
        return tg_proto__fail(s, TG_PROTO_ENOMEM, TG_PROTO_ERR_API, "out of memory");
    tg_proto_oa_tool_t *t = &d->od_tools[idx];
    json_t *fn = json_object_get(tc, "function");
    json_t *args = json_object_get(fn, "arguments");
    const char *a = json_is_string(args) ? json_string_value(args) : "";
    size_t alen = json_is_string(args) ? json_string_length(args) : 0;
    if (t->ot_state == 0) {
        /* the first delta of a call: id and name, and arguments in the same
         * chunk are kept (LiteLLM #25561) */
        const char *id = json_string_value(json_object_get(tc, "id"));
        const char *name = json_string_value(json_object_get(fn, "name"));
        char gen[48];
        if (!id) {
            snprintf(gen, sizeof gen, "call_tg_%d", (int)idx);
            id = gen;
        }
        t->ot_id = tg_strdup(id);
        t->ot_name = tg_strdup(name ? name : "");
        if (!t->ot_id || !t->ot_name)
            return tg_proto__fail(s, TG_PROTO_ENOMEM, TG_PROTO_ERR_API, "out of memory");
        if (idx >= d->od_ntools)
            d->od_ntools = (int)idx + 1;
        if (d->od_open >= 0 && d->od_open_kind == TG_PROTO_BLOCK_TOOL_USE) {
            t->ot_state = 2; /* another call is open: hold this one */
        } else {
            int rc = open_block(s, TG_PROTO_BLOCK_TOOL_USE, (int)idx);
            if (rc)
                return rc;
        }
    }
    switch (t->ot_state) {
    case 1: return delta(s, TG_PROTO_DELTA_JSON, a, alen);
    case 2:
        if (tg_buf_append(&t->ot_args, a, alen))
            return tg_proto__fail(s, TG_PROTO_ETOOBIG, TG_PROTO_ERR_API, "tool call arguments too large");
        return 0;
    default: break;
    }
    return tg_proto__fail(s, TG_PROTO_EGRAMMAR, TG_PROTO_ERR_API,
                          "upstream sent tool call arguments after the call's block closed");
}

/* Sends the held calls, whole, in index order. */
static int flush_held(tg_proto_stream_t *s)
{
    tg_proto_oa_dec_t *d = &s->st_dec.oa;
    int rc = close_open(s);
    for (int i = 0; !rc && i < d->od_ntools; i++) {
        tg_proto_oa_tool_t *t = &d->od_tools[i];
        if (t->ot_state != 2)
            continue;
        if (!(rc = open_block(s, TG_PROTO_BLOCK_TOOL_USE, i)))
            rc = delta(s, TG_PROTO_DELTA_JSON, t->ot_args.b_data ? t->ot_args.b_data : "", t->ot_args.b_len);
        if (!rc)
            rc = close_open(s);
    }
    return rc;
}

static int dec_end(tg_proto_stream_t *s)
{
    tg_proto_oa_dec_t *d = &s->st_dec.oa;
    int rc = flush_held(s);
    if (rc)
        return rc;
    tg_proto_stop_t stop = s->st_stop;
    if (d->od_refusal && stop == TG_PROTO_STOP_END_TURN)
        stop = TG_PROTO_STOP_REFUSAL;
    tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_END, .ev_stop = stop, .ev_usage = &s->st_usage};
    return tg_proto__emit(s, &ev);
}

static int dec_event(tg_proto_stream_t *s, const char *event, const char *data, size_t len)
{
    tg_proto_oa_dec_t *d = &s->st_dec.oa;
    (void)event;
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        if (!d->od_finished)
            return tg_proto__fail(s, TG_PROTO_EUPSTREAM, TG_PROTO_ERR_API, "upstream stream ended without a finish_reason");
        return dec_end(s);
    }
    json_error_t je;
    json_t *c = json_loadb(data, len, 0, &je);
    if (!json_is_object(c)) {
        json_decref(c);
        return tg_proto__fail(s, TG_PROTO_EJSON, TG_PROTO_ERR_API, "upstream sent a malformed stream event");
    }
    int rc = 0;
    json_t *e = json_object_get(c, "error");
    if (json_is_object(e)) {
        tg_proto_errinfo_t info = {.pe_type = TG_PROTO_ERR_API,
                                   .pe_message = json_string_value(json_object_get(e, "message"))};
        tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_ERROR, .ev_error = &info};
        rc = tg_proto__emit(s, &ev);
        json_decref(c);
        return rc ? rc : TG_PROTO_EUPSTREAM;
    }
    if (!d->od_started) {
        d->od_started = 1;
        tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_START,
                               .ev_id = json_string_value(json_object_get(c, "id")),
                               .ev_name = json_string_value(json_object_get(c, "model"))};
        if ((rc = tg_proto__emit(s, &ev)))
            goto out;
    }
    json_t *u = json_object_get(c, "usage");
    if (json_is_object(u)) {
        tg_proto_usage_t us;
        parse_usage(s->st_opts.so_vendor ? s->st_opts.so_vendor : tg_proto_vendor_or_compatible(0), NULL, u, &us);
        char *raw = json_dumps(u, JSON_COMPACT);
        us.us_raw = raw;
        rc = tg_proto__set_usage(s, &us);
        free(raw); /* jansson's */
        if (rc)
            goto out;
    }
    json_t *choices = json_object_get(c, "choices");
    size_t i;
    json_t *ch;
    json_array_foreach(choices, i, ch)
    {
        json_t *ci = json_object_get(ch, "index");
        if (json_is_integer(ci) && json_integer_value(ci) != 0)
            continue; /* n > 1 is refused at the request */
        json_t *dl = json_object_get(ch, "delta");
        if (d->od_finished) {
            /* some providers repeat an empty choice beside the usage */
            if (!json_string_length(json_object_get(dl, "content")) &&
                !json_string_length(json_object_get(dl, "reasoning_content")) &&
                !json_array_size(json_object_get(dl, "tool_calls")))
                continue;
            rc = tg_proto__fail(s, TG_PROTO_EGRAMMAR, TG_PROTO_ERR_API, "upstream sent content after finish_reason");
            goto out;
        }
        json_t *det = json_object_get(dl, "reasoning_details");
        if (json_is_array(det))
            rc = reasoning_details_delta(s, det);
        else
            rc = text_delta(s, TG_PROTO_BLOCK_THINKING, json_object_get(dl, "reasoning_content"));
        if (!rc)
            rc = text_delta(s, TG_PROTO_BLOCK_TEXT, json_object_get(dl, "content"));
        json_t *ref = json_object_get(dl, "refusal");
        if (!rc && json_is_string(ref) && json_string_length(ref)) {
            d->od_refusal = 1;
            rc = text_delta(s, TG_PROTO_BLOCK_TEXT, ref);
        }
        size_t j;
        json_t *tc;
        json_array_foreach(json_object_get(dl, "tool_calls"), j, tc)
        {
            if (rc)
                break;
            rc = tool_delta(s, tc, j);
        }
        if (rc)
            goto out;
        const char *fin = json_string_value(json_object_get(ch, "finish_reason"));
        if (fin) {
            d->od_finished = 1;
            s->st_stop = parse_finish(fin);
            if ((rc = flush_held(s)))
                goto out;
        }
    }
out:
    json_decref(c);
    return rc;
}

static int dec_eof(tg_proto_stream_t *s)
{
    if (s->st_dec.oa.od_finished)
        return dec_end(s); /* finish_reason but no [DONE]: a normal end */
    return tg_proto__fail(s, TG_PROTO_EUPSTREAM, TG_PROTO_ERR_API, "upstream stream ended before its end");
}

/* ---- stream encoder: IR events -> OpenAI chunks -------------------------- */

static json_t *chunk(tg_proto_stream_t *s, json_t *dl, const char *finish)
{
    tg_proto_enc_t *e = &s->st_enc;
    if (!dl)
        return NULL;
    return json_pack("{ss ss sI ss s[{si so so}]}", "id", e->en_id, "object", "chat.completion.chunk", "created",
                     (json_int_t)e->en_created, "model", e->en_model, "choices", "index", 0, "delta", dl,
                     "finish_reason", finish ? json_string(finish) : json_null());
}

static int enc_event(tg_proto_stream_t *s, const tg_proto_event_t *ev)
{
    tg_proto_enc_t *e = &s->st_enc;
    json_t *dl = NULL;
    switch (ev->ev_type) {
    case TG_PROTO_EV_START:
        e->en_created = (int64_t)time(NULL);
        snprintf(e->en_id, sizeof e->en_id, "%s", ev->ev_id ? ev->ev_id : "chatcmpl-tollgate");
        snprintf(e->en_model, sizeof e->en_model, "%s",
                 s->st_opts.so_model ? s->st_opts.so_model : ev->ev_name ? ev->ev_name : "");
        return tg_proto__write_event(s, NULL, chunk(s, json_pack("{ss ss}", "role", "assistant", "content", ""), NULL));
    case TG_PROTO_EV_BLOCK_START:
        if (ev->ev_block == TG_PROTO_BLOCK_TOOL_USE) {
            e->en_tool_index = e->en_ntools++;
            dl = json_pack("{s[{si ss ss s{ss ss}}]}", "tool_calls", "index", e->en_tool_index, "id",
                           ev->ev_id ? ev->ev_id : "", "type", "function", "function", "name",
                           ev->ev_name ? ev->ev_name : "", "arguments", "");
        } else if (ev->ev_block == TG_PROTO_BLOCK_REDACTED_THINKING) {
            dl = json_pack("{s[{ss ss#}]}", "reasoning_details", "type", "reasoning.encrypted", "data",
                           ev->ev_text ? ev->ev_text : "", ev->ev_text ? ev->ev_len : 0);
        } else {
            return 0; /* text and thinking open implicitly */
        }
        return tg_proto__write_event(s, NULL, chunk(s, dl, NULL));
    case TG_PROTO_EV_DELTA:
        switch (ev->ev_delta) {
        case TG_PROTO_DELTA_TEXT: dl = json_pack("{ss#}", "content", ev->ev_text, ev->ev_len); break;
        case TG_PROTO_DELTA_THINKING: dl = json_pack("{ss#}", "reasoning_content", ev->ev_text, ev->ev_len); break;
        case TG_PROTO_DELTA_SIGNATURE:
            dl = json_pack("{s[{ss ss ss#}]}", "reasoning_details", "type", "reasoning.text", "text", "", "signature",
                           ev->ev_text, ev->ev_len);
            break;
        case TG_PROTO_DELTA_JSON:
            dl = json_pack("{s[{si s{ss#}}]}", "tool_calls", "index", e->en_tool_index, "function", "arguments",
                           ev->ev_text, ev->ev_len);
            break;
        }
        return tg_proto__write_event(s, NULL, chunk(s, dl, NULL));
    case TG_PROTO_EV_BLOCK_STOP: return 0;
    case TG_PROTO_EV_END: {
        int rc = tg_proto__write_event(s, NULL, chunk(s, json_object(), finish_name(ev->ev_stop, e->en_ntools > 0)));
        if (!rc && s->st_opts.so_include_usage) {
            tg_proto_usage_t zero = {0};
            json_t *u = write_usage(ev->ev_usage ? ev->ev_usage : &zero);
            json_t *c = u ? json_pack("{ss ss sI ss s[] so}", "id", e->en_id, "object", "chat.completion.chunk",
                                      "created", (json_int_t)e->en_created, "model", e->en_model, "choices",
                                      "usage", u)
                          : NULL;
            rc = tg_proto__write_event(s, NULL, c);
        }
        if (!rc)
            rc = tg_proto__write_event(s, "[DONE]", NULL);
        return rc;
    }
    case TG_PROTO_EV_ERROR: break;
    }
    return tg_proto__fail_upstream(s, ev);
}

static int enc_error(tg_proto_stream_t *s, const tg_proto_errinfo_t *e, tg_buf_t *out)
{
    (void)s;
    return tg_proto__append_sse(out, "data: ", oa_write_error(e));
}

const tg_proto_adapter_t tg_proto__openai = {
    .pa_kind = TG_PROTO_OPENAI,
    .pa_name = "openai",
    .pa_path = "/v1/chat/completions",
    .pa_auth_prefix = "Authorization: Bearer ",
    .pa_extra_header = NULL,
    .pa_parse_request = oa_parse_request,
    .pa_write_request = oa_write_request,
    .pa_parse_response = oa_parse_response,
    .pa_write_response = oa_write_response,
    .pa_parse_error = oa_parse_error,
    .pa_write_error = oa_write_error,
    .pa_errtype_status = oa_errtype_status,
    .pa_dec_init = dec_init,
    .pa_dec_free = dec_free,
    .pa_dec_event = dec_event,
    .pa_dec_eof = dec_eof,
    .pa_enc_event = enc_event,
    .pa_enc_error = enc_error,
};
