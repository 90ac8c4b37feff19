/* responses.c: the OpenAI Responses API adapter, client side only: a
 * /v1/responses request read into the IR, the IR answer written as a
 * Responses object, and the IR stream written in the Responses event
 * grammar (response.created ... response.completed). It is what lets a
 * Responses client (Codex CLI, the openai SDK's client.responses) use a
 * channel that speaks only chat completions (DeepSeek, Qwen, Kimi, GLM):
 * the agent writes the IR as a chat request to the channel and converts
 * the channel's answer back here.
 *
 * Stateless only: previous_response_id, conversation, background and
 * item_reference need the stored state of OpenAI's own server and are
 * refused (EUNSUPPORTED, the field named); a channel that speaks Responses
 * itself is passed through by the agent and never comes here. Only function
 * tools convert; any other tool type is refused with its name.
 *
 * Never an upstream: writing a Responses request, reading a Responses
 * answer and decoding a Responses stream fail with EUNSUPPORTED.
 *
 * The stream encoder keeps what response.completed must repeat (every
 * output item, the open item's text or arguments): the Responses grammar
 * carries the whole answer in its last event. Reasoning (thinking) blocks
 * are not shown to a Responses client (they are billed as output). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "proto/proto_int.h"

/* ---- small helpers ------------------------------------------------------- */

static int bad(char *err, size_t errlen, const char *path, const char *what)
{
    return tg_errf(err, errlen, TG_PROTO_EINVALID, "%s: %s", path, what);
}

/* A message being built: its blocks grow by doubling, from the pool. */
typedef struct msgcap {
    size_t mc_cap;
} msgcap_t;

static tg_proto_block_t *add_block(tg_pool_t *pool, tg_proto_message_t *m, msgcap_t *c)
{
    if (m->ms_nblocks == c->mc_cap) {
        size_t cap = c->mc_cap ? 2 * c->mc_cap : 4;
        tg_proto_block_t *b = tg_proto__array(pool, cap, sizeof *b);
        if (!b)
            return NULL;
        if (m->ms_nblocks)
            memcpy(b, m->ms_blocks, m->ms_nblocks * sizeof *b);
        m->ms_blocks = b;
        c->mc_cap = cap;
    }
    tg_proto_block_t *b = &m->ms_blocks[m->ms_nblocks++];
    memset(b, 0, sizeof *b);
    return b;
}

/* The message to append to: the last one when it has this role (and, for a
 * user message, holds tool results exactly when `results` says so), else a
 * new one. */
static tg_proto_message_t *message_for(tg_proto_request_t *rq, msgcap_t *caps, tg_proto_role_t role, int results)
{
    if (rq->rq_nmsgs) {
        tg_proto_message_t *m = &rq->rq_msgs[rq->rq_nmsgs - 1];
        if (m->ms_role == role &&
            (role == TG_PROTO_ROLE_ASSISTANT ||
             (m->ms_nblocks && (m->ms_blocks[0].bl_type == TG_PROTO_BLOCK_TOOL_RESULT) == results)))
            return m;
    }
    tg_proto_message_t *m = &rq->rq_msgs[rq->rq_nmsgs];
    caps[rq->rq_nmsgs++].mc_cap = 0;
    m->ms_role = role;
    return m;
}

/* An input_image part: image_url (a data: URL becomes base64); file_id
 * needs OpenAI's file store. */
static int parse_image(tg_pool_t *pool, json_t *part, tg_proto_block_t *bl, const char *path, char *err,
                       size_t errlen)
{
    const char *url = json_string_value(json_object_get(part, "image_url"));
    if (!url) {
        if (json_object_get(part, "file_id"))
            return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED,
                           "%s.file_id: images by file id need OpenAI's file store; send image_url", path);
        return bad(err, errlen, path, "image_url: expected a string");
    }
    return tg_proto__image_url(pool, url, bl);
}

/* Content parts (or a string) appended as TEXT / IMAGE blocks through add. */
typedef tg_proto_block_t *(*adder_t)(void *arg);

static int parse_parts(tg_pool_t *pool, json_t *content, int assistant, const char *path, adder_t add, void *arg,
                       char *err, size_t errlen)
{
    char p[TG_PROTO_PATHLEN];
    if (json_is_string(content)) {
        tg_proto_block_t *bl = add(arg);
        if (!bl)
            return TG_PROTO_ENOMEM;
        bl->bl_type = TG_PROTO_BLOCK_TEXT;
        bl->bl_text = tg_proto__strdup(pool, json_string_value(content));
        return bl->bl_text ? 0 : TG_PROTO_ENOMEM;
    }
    if (!json_is_array(content))
        return bad(err, errlen, path, "expected a string or an array of parts");
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        const char *t = json_string_value(json_object_get(part, "type"));
        tg_proto__path(p, sizeof p, "%s[%zu]", path, i);
        if (!t)
            return bad(err, errlen, p, "type: expected a string");
        int text = !strcmp(t, "input_text") || !strcmp(t, "output_text") || (assistant && !strcmp(t, "refusal"));
        if (!text && strcmp(t, "input_image") != 0)
            return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "%s.type: unsupported part type '%s'", p, t);
        tg_proto_block_t *bl = add(arg);
        if (!bl)
            return TG_PROTO_ENOMEM;
        if (!text) {
            int rc = parse_image(pool, part, bl, p, err, errlen);
            if (rc)
                return rc;
            continue;
        }
        const char *s = json_string_value(json_object_get(part, !strcmp(t, "refusal") ? "refusal" : "text"));
        if (!s)
            return bad(err, errlen, p, "text: expected a string");
        bl->bl_type = TG_PROTO_BLOCK_TEXT;
        if (!(bl->bl_text = tg_proto__strdup(pool, s)))
            return TG_PROTO_ENOMEM;
    }
    return 0;
}

struct msg_adder {
    tg_pool_t *ma_pool;
    tg_proto_message_t *ma_msg;
    msgcap_t *ma_cap;
};

static tg_proto_block_t *add_to_msg(void *arg)
{
    struct msg_adder *a = arg;
    return add_block(a->ma_pool, a->ma_msg, a->ma_cap);
}

struct part_adder {
    tg_pool_t *pa_pool;
    tg_proto_block_t *pa_result;
    size_t pa_cap;
};

static tg_proto_block_t *add_to_result(void *arg)
{
    struct part_adder *a = arg;
    tg_proto_block_t *r = a->pa_result;
    if (r->bl_nparts == a->pa_cap) {
        size_t cap = a->pa_cap ? 2 * a->pa_cap : 2;
        tg_proto_block_t *b = tg_proto__array(a->pa_pool, cap, sizeof *b);
        if (!b)
            return NULL;
        if (r->bl_nparts)
            memcpy(b, r->bl_parts, r->bl_nparts * sizeof *b);
        r->bl_parts = b;
        a->pa_cap = cap;
    }
    tg_proto_block_t *b = &r->bl_parts[r->bl_nparts++];
    memset(b, 0, sizeof *b);
    return b;
}

/* ---- request ------------------------------------------------------------- */

/* One input item. */
static int parse_item(tg_pool_t *pool, json_t *it, size_t i, tg_proto_request_t *rq, msgcap_t *caps, char *err,
                      size_t errlen)
{
    char p[TG_PROTO_PATHLEN], cp[TG_PROTO_PATHLEN];
    tg_proto__path(p, sizeof p, "input[%zu]", i);
    if (!json_is_object(it))
        return bad(err, errlen, p, "expected an object");
    const char *type = json_string_value(json_object_get(it, "type"));
    const char *role = json_string_value(json_object_get(it, "role"));
    if (!type && role)
        type = "message";
    if (!type)
        return bad(err, errlen, p, "type: expected a string");
    int rc;
    if (!strcmp(type, "message")) {
        json_t *content = json_object_get(it, "content");
        tg_proto__path(cp, sizeof cp, "%s.content", p);
        if (!role)
            return bad(err, errlen, p, "role: expected a string");
        if (!strcmp(role, "system") || !strcmp(role, "developer")) {
            /* system text: its text parts joined */
            tg_proto_message_t tmp = {0};
            msgcap_t c = {0};
            struct msg_adder a = {pool, &tmp, &c};
            if ((rc = parse_parts(pool, content, 0, cp, add_to_msg, &a, err, errlen)))
                return rc;
            tg_buf_t b;
            tg_buf_init(&b, (size_t)1 << 30);
            for (size_t j = 0; j < tmp.ms_nblocks; j++) {
                if (tmp.ms_blocks[j].bl_type != TG_PROTO_BLOCK_TEXT) {
                    tg_buf_free(&b);
                    return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "%s[%zu]: a %s message carries text only",
                                   cp, j, role);
                }
                if ((j && tg_buf_append(&b, "\n", 1)) || tg_buf_puts(&b, tmp.ms_blocks[j].bl_text)) {
                    tg_buf_free(&b);
                    return TG_PROTO_ENOMEM;
                }
            }
            const char *t = tg_pool_strndup(pool, b.b_data ? b.b_data : "", b.b_len);
            tg_buf_free(&b);
            if (!t)
                return TG_PROTO_ENOMEM;
            rq->rq_system[rq->rq_nsystem++] = t;
            return 0;
        }
        int assistant = !strcmp(role, "assistant");
        if (!assistant && strcmp(role, "user") != 0)
            return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "%s.role: unsupported role '%s'", p, role);
        tg_proto_message_t *m =
            message_for(rq, caps, assistant ? TG_PROTO_ROLE_ASSISTANT : TG_PROTO_ROLE_USER, 0);
        struct msg_adder a = {pool, m, &caps[m - rq->rq_msgs]};
        return parse_parts(pool, content, assistant, cp, add_to_msg, &a, err, errlen);
    }
    if (!strcmp(type, "function_call")) {
        const char *id = json_string_value(json_object_get(it, "call_id"));
        const char *name = json_string_value(json_object_get(it, "name"));
        const char *args = json_string_value(json_object_get(it, "arguments"));
        if (!id || !name || !args)
            return bad(err, errlen, p, "a function_call needs call_id, name and arguments (strings)");
        tg_proto_message_t *m = message_for(rq, caps, TG_PROTO_ROLE_ASSISTANT, 0);
        tg_proto_block_t *bl = add_block(pool, m, &caps[m - rq->rq_msgs]);
        if (!bl)
            return TG_PROTO_ENOMEM;
        bl->bl_type = TG_PROTO_BLOCK_TOOL_USE;
        bl->bl_id = tg_proto__strdup(pool, id);
        bl->bl_name = tg_proto__strdup(pool, name);
        bl->bl_args = tg_proto__strdup(pool, *args ? args : "{}");
        return bl->bl_id && bl->bl_name && bl->bl_args ? 0 : TG_PROTO_ENOMEM;
    }
    if (!strcmp(type, "function_call_output")) {
        const char *id = json_string_value(json_object_get(it, "call_id"));
        json_t *out = json_object_get(it, "output");
        if (!id)
            return bad(err, errlen, p, "call_id: expected a string");
        tg_proto_message_t *m = message_for(rq, caps, TG_PROTO_ROLE_USER, 1);
        tg_proto_block_t *bl = add_block(pool, m, &caps[m - rq->rq_msgs]);
        if (!bl)
            return TG_PROTO_ENOMEM;
        bl->bl_type = TG_PROTO_BLOCK_TOOL_RESULT;
        if (!(bl->bl_id = tg_proto__strdup(pool, id)))
            return TG_PROTO_ENOMEM;
        tg_proto__path(cp, sizeof cp, "%s.output", p);
        struct part_adder a = {pool, bl, 0};
        return parse_parts(pool, out, 0, cp, add_to_result, &a, err, errlen);
    }
    if (!strcmp(type, "reasoning"))
        return 0; /* a chat channel cannot take reasoning back: dropped */
    if (!strcmp(type, "item_reference"))
        return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED,
                       "%s: item_reference needs stored responses; this model's channel is stateless "
                       "(send the items themselves)",
                       p);
    return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "%s.type: unsupported item type '%s'", p, type);
}

static int parse_tools(tg_pool_t *pool, json_t *root, tg_proto_request_t *rq, char *err, size_t errlen)
{
    json_t *tools = json_object_get(root, "tools");
    if (tools && !json_is_null(tools)) {
        if (!json_is_array(tools))
            return bad(err, errlen, "tools", "expected an array");
        rq->rq_tools = tg_proto__array(pool, json_array_size(tools), sizeof *rq->rq_tools);
        if (!rq->rq_tools)
            return TG_PROTO_ENOMEM;
        size_t i;
        json_t *t;
        json_array_foreach(tools, i, t)
        {
            const char *type = json_string_value(json_object_get(t, "type"));
            const char *name = json_string_value(json_object_get(t, "name"));
            if (!type)
                return tg_errf(err, errlen, TG_PROTO_EINVALID, "tools[%zu].type: expected a string", i);
            if (strcmp(type, "function") != 0)
                return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED,
                               "tools[%zu]: the '%s' tool is not available on this model's channel "
                               "(chat completions): only function tools convert",
                               i, type);
            if (!name)
                return tg_errf(err, errlen, TG_PROTO_EINVALID, "tools[%zu].name: expected a string", i);
            tg_proto_tool_t *tl = &rq->rq_tools[rq->rq_ntools++];
            tl->tl_name = tg_proto__strdup(pool, name);
            tl->tl_description = tg_proto__strdup(pool, json_string_value(json_object_get(t, "description")));
            json_t *params = json_object_get(t, "parameters");
            tl->tl_schema = params && !json_is_null(params) ? tg_proto__dump(pool, params)
                                                            : "{\"type\":\"object\",\"properties\":{}}";
            if (!tl->tl_name || !tl->tl_schema)
                return TG_PROTO_ENOMEM;
        }
    }
    json_t *tc = json_object_get(root, "tool_choice");
    if (json_is_string(tc)) {
        int rc = tg_proto__tool_choice_word(json_string_value(tc), rq, err, errlen);
        if (rc)
            return rc;
    } else if (json_is_object(tc)) {
        const char *type = json_string_value(json_object_get(tc, "type"));
        const char *name = json_string_value(json_object_get(tc, "name"));
        if (!type || strcmp(type, "function") != 0)
            return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "tool_choice.type: only 'function' converts");
        if (!name)
            return bad(err, errlen, "tool_choice.name", "expected a string");
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
    int rc = tg_proto__sampling(root, rq, err, errlen);
    if (rc)
        return rc;
    if ((v = json_object_get(root, "max_output_tokens")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return bad(err, errlen, "max_output_tokens", "expected a positive integer");
        rq->rq_max_tokens = json_integer_value(v);
    }
    if ((v = json_object_get(root, "stream")) && !json_is_null(v)) {
        if (!json_is_boolean(v))
            return bad(err, errlen, "stream", "expected a boolean");
        rq->rq_stream = json_is_true(v);
    }
    json_t *md = json_object_get(root, "metadata");
    if (md && !json_is_null(md)) {
        const char *k;
        json_t *mv;
        if (!json_is_object(md))
            return bad(err, errlen, "metadata", "expected an object");
        json_object_foreach(md, k, mv)
        {
            if (!json_is_string(mv))
                return tg_errf(err, errlen, TG_PROTO_EINVALID, "metadata.%s: expected a string", k);
        }
    }
    /* the end user: user (or safety_identifier), else metadata.user_id */
    const char *user = json_string_value(json_object_get(root, "user"));
    if (!user)
        user = json_string_value(json_object_get(root, "safety_identifier"));
    if (!user)
        user = json_string_value(json_object_get(md, "user_id"));
    if (user && !(rq->rq_user = tg_proto__strdup(pool, user)))
        return TG_PROTO_ENOMEM;
    json_t *fmt = json_object_get(json_object_get(root, "text"), "format");
    const char *ft = json_string_value(json_object_get(fmt, "type"));
    if (ft && strcmp(ft, "text") != 0)
        return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED,
                       "text.format.type: '%s' is not converted to a chat completions channel", ft);
    return 0;
}

/* Fields that need OpenAI's stored state. */
static int refuse_stateful(json_t *root, char *err, size_t errlen)
{
    static const char *const keys[] = {"previous_response_id", "conversation"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(root, keys[i]);
        if (v && !json_is_null(v))
            return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED,
                           "%s: this model's channel speaks chat completions and keeps no stored responses; "
                           "send the whole conversation in input (stateless requests only)",
                           keys[i]);
    }
    if (json_is_true(json_object_get(root, "background")))
        return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED,
                       "background: background responses need stored responses; this model's channel is "
                       "stateless");
    return 0;
}

static int rs_parse_request(tg_pool_t *pool, json_t *root, tg_proto_request_t *rq, char *err, size_t errlen)
{
    int rc = refuse_stateful(root, err, errlen);
    if (rc)
        return rc;
    const char *model = json_string_value(json_object_get(root, "model"));
    json_t *input = json_object_get(root, "input");
    json_t *instr = json_object_get(root, "instructions");
    if (!model)
        return bad(err, errlen, "model", "expected a string");
    if (!json_is_string(input) && !json_is_array(input))
        return bad(err, errlen, "input", "expected a string or an array of items");
    if (instr && !json_is_null(instr) && !json_is_string(instr))
        return bad(err, errlen, "instructions", "expected a string");
    size_t n = json_is_array(input) ? json_array_size(input) : 1;
    msgcap_t *caps = tg_proto__array(pool, n, sizeof *caps);
    rq->rq_model = tg_proto__strdup(pool, model);
    rq->rq_system = tg_proto__array(pool, n + 1, sizeof *rq->rq_system);
    rq->rq_msgs = tg_proto__array(pool, n, sizeof *rq->rq_msgs);
    if (!rq->rq_model || !rq->rq_system || !rq->rq_msgs || !caps)
        return TG_PROTO_ENOMEM;
    if (json_is_string(instr) && json_string_length(instr))
        if (!(rq->rq_system[rq->rq_nsystem++] = tg_proto__strdup(pool, json_string_value(instr))))
            return TG_PROTO_ENOMEM;
    if (json_is_string(input)) {
        tg_proto_message_t *m = message_for(rq, caps, TG_PROTO_ROLE_USER, 0);
        struct msg_adder a = {pool, m, &caps[0]};
        if ((rc = parse_parts(pool, input, 0, "input", add_to_msg, &a, err, errlen)))
            return rc;
    } else {
        size_t i;
        json_t *it;
        json_array_foreach(input, i, it)
        {
            if ((rc = parse_item(pool, it, i, rq, caps, err, errlen)))
                return rc;
        }
    }
    if (!rq->rq_nmsgs)
        return bad(err, errlen, "input", "no user or assistant item to answer");
    if ((rc = parse_tools(pool, root, rq, err, errlen)))
        return rc;
    return parse_params(pool, root, rq, err, errlen);
}

static json_t *rs_write_request(const tg_proto_request_t *rq, char *err, size_t errlen, int *rc)
{
    (void)rq;
    *rc = tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "the Responses API is a client protocol only");
    return NULL;
}

static int rs_parse_response(const tg_proto_vendor_t *vendor, tg_pool_t *pool, json_t *root,
    tg_proto_response_t *out, char *err, size_t errlen)
{
    (void)vendor; /* usage in its own protocol's names */
    (void)pool, (void)root, (void)out;
    return tg_errf(err, errlen, TG_PROTO_EUNSUPPORTED, "the Responses API is a client protocol only");
}

/* ---- response ------------------------------------------------------------ */

/* "resp_<id>", the chat id's own characters kept when they are tame. */
static void response_id(const char *up, char *buf, size_t len)
{
    size_t k = (size_t)snprintf(buf, len, "resp_");
    for (const char *p = up ? up : ""; *p && k + 1 < len; p++)
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
            *p == '-')
            buf[k++] = *p;
    if (k == 5 && k + 8 < len)
        k += (size_t)snprintf(buf + k, len - k, "tollgate");
    buf[k] = '\0';
}

static json_t *write_usage(const tg_proto_usage_t *u, int64_t prompt_fallback)
{
    int64_t in = u->us_input + u->us_cache_read + u->us_cache_write;
    if (!u->us_present && !in)
        in = prompt_fallback;
    return json_pack("{sI s{sI} sI s{sI} sI}", "input_tokens", (json_int_t)in, "input_tokens_details",
                     "cached_tokens", (json_int_t)u->us_cache_read, "output_tokens", (json_int_t)u->us_output,
                     "output_tokens_details", "reasoning_tokens", (json_int_t)u->us_reasoning, "total_tokens",
                     (json_int_t)(in + u->us_output));
}

static json_t *message_item(const char *id, const char *status, const char *text, size_t len)
{
    json_t *content = text ? json_pack("[{ss ss# s[] s[]}]", "type", "output_text", "text", text, len,
                                       "annotations", "logprobs")
                           : json_array();
    return content ? json_pack("{ss ss ss ss so}", "id", id, "type", "message", "status", status, "role",
                               "assistant", "content", content)
                   : NULL;
}

static json_t *call_item(const char *id, const char *status, const char *call_id, const char *name,
                         const char *args, size_t len)
{
    return json_pack("{ss ss ss ss ss ss#}", "id", id, "type", "function_call", "status", status, "call_id",
                     call_id ? call_id : "", "name", name ? name : "", "arguments", args ? args : "",
                     args ? len : 0);
}

/* completed, or incomplete with its reason */
static const char *status_of(tg_proto_stop_t stop, const char **reason)
{
    *reason = NULL;
    if (stop == TG_PROTO_STOP_MAX_TOKENS)
        *reason = "max_output_tokens";
    else if (stop == TG_PROTO_STOP_REFUSAL)
        *reason = "content_filter";
    return *reason ? "incomplete" : "completed";
}

/* The response object; output taken (its reference). */
static json_t *response_object(const char *id, int64_t created, const char *model, const char *status,
                               const char *reason, json_t *output, json_t *usage)
{
    json_t *inc = reason ? json_pack("{ss}", "reason", reason) : json_null();
    return json_pack("{ss ss sI ss sn so ss so ss so sb s[] sn}", "id", id, "object", "response", "created_at",
                     (json_int_t)created, "status", status, "error", "incomplete_details", inc, "model",
                     model ? model : "", "output", output, "tool_choice", "auto", "usage", usage ? usage : json_null(),
                     "parallel_tool_calls", 1, "tools", "previous_response_id");
}

static json_t *rs_write_response(const tg_proto_response_t *rs, char *err, size_t errlen, int *rc)
{
    char id[160], item[200];
    response_id(rs->rs_id, id, sizeof id);
    json_t *output = json_array();
    for (size_t i = 0; output && i < rs->rs_nblocks; i++) {
        const tg_proto_block_t *b = &rs->rs_blocks[i];
        json_t *v = NULL;
        if (b->bl_type == TG_PROTO_BLOCK_TEXT) {
            snprintf(item, sizeof item, "msg_%s_%zu", id + 5, i);
            v = message_item(item, "completed", b->bl_text ? b->bl_text : "", b->bl_text ? strlen(b->bl_text) : 0);
        } else if (b->bl_type == TG_PROTO_BLOCK_TOOL_USE) {
            snprintf(item, sizeof item, "fc_%s_%zu", id + 5, i);
            v = call_item(item, "completed", b->bl_id, b->bl_name, b->bl_args, b->bl_args ? strlen(b->bl_args) : 0);
        } else {
            continue; /* reasoning is not shown to a Responses client */
        }
        if (!v || json_array_append_new(output, v))
            output = (json_decref(output), NULL);
    }
    const char *reason;
    const char *status = status_of(rs->rs_stop, &reason);
    json_t *r = output ? response_object(id, (int64_t)time(NULL), rs->rs_model, status, reason, output,
                                         write_usage(&rs->rs_usage, 0))
                       : NULL;
    if (!r)
        *rc = tg_errf(err, errlen, TG_PROTO_ENOMEM, "out of memory writing the answer");
    return r;
}

/* ---- errors: OpenAI's shape -------------------------------------------- */

static int rs_parse_error(tg_pool_t *pool, int status, json_t *root, tg_proto_errinfo_t *out)
{
    return tg_proto__openai.pa_parse_error(pool, status, root, out);
}

static json_t *rs_write_error(const tg_proto_errinfo_t *e)
{
    return tg_proto__openai.pa_write_error(e);
}

static int rs_errtype_status(tg_proto_errtype_t t)
{
    return tg_proto__openai.pa_errtype_status(t);
}

/* ---- never an upstream stream ------------------------------------------- */

static void dec_init(tg_proto_stream_t *s)
{
    (void)s;
}

static void dec_free(tg_proto_stream_t *s)
{
    (void)s;
}

static int dec_event(tg_proto_stream_t *s, const char *event, const char *data, size_t len)
{
    (void)event, (void)data, (void)len;
    return tg_proto__fail(s, TG_PROTO_EUNSUPPORTED, TG_PROTO_ERR_API, "a Responses upstream stream is not decoded");
}

static int dec_eof(tg_proto_stream_t *s)
{
    return dec_event(s, NULL, NULL, 0);
}

/* ---- stream encoder: IR events -> Responses events ----------------------- */

/* data gets "type": name first and the next sequence_number. */
static int write_ev(tg_proto_stream_t *s, const char *name, json_t *data)
{
    tg_proto_rs_enc_t *r = s->st_enc.en_rs;
    json_t *v = data && r ? json_pack("{ss sI}", "type", name, "sequence_number", (json_int_t)r->re_seq++) : NULL;
    if (v && json_object_update(v, data))
        v = (json_decref(v), NULL);
    json_decref(data);
    return tg_proto__write_event(s, name, v);
}

static json_t *snapshot(tg_proto_stream_t *s, const char *status, const char *reason, json_t *usage)
{
    tg_proto_rs_enc_t *r = s->st_enc.en_rs;
    json_t *out = json_deep_copy(r->re_items);
    return out ? response_object(r->re_id, s->st_enc.en_created, s->st_enc.en_model, status, reason, out, usage)
               : (json_decref(usage), NULL);
}

static int enc_start(tg_proto_stream_t *s, const tg_proto_event_t *ev)
{
    tg_proto_enc_t *e = &s->st_enc;
    tg_proto_rs_enc_t *r = tg_calloc(1, sizeof *r);
    if (!r || !(r->re_items = json_array())) {
        tg_free(r);
        return tg_proto__fail(s, TG_PROTO_ENOMEM, TG_PROTO_ERR_API, "out of memory converting the stream");
    }
    tg_buf_init(&r->re_acc, (size_t)1 << 30);
    e->en_rs = r;
    r->re_skip = 1;
    e->en_created = (int64_t)time(NULL);
    response_id(ev->ev_id, r->re_id, sizeof r->re_id);
    snprintf(e->en_model, sizeof e->en_model, "%s", s->st_opts.so_model ? s->st_opts.so_model : ev->ev_name ? ev->ev_name : "");
    int rc = write_ev(s, "response.created", json_pack("{so}", "response", snapshot(s, "in_progress", NULL, NULL)));
    return rc ? rc : write_ev(s, "response.in_progress", json_pack("{so}", "response", snapshot(s, "in_progress", NULL, NULL)));
}

static int enc_block_start(tg_proto_stream_t *s, const tg_proto_event_t *ev)
{
    tg_proto_rs_enc_t *r = s->st_enc.en_rs;
    size_t oi = json_array_size(r->re_items);
    tg_buf_reset(&r->re_acc);
    r->re_skip = 0;
    r->re_tool = ev->ev_block == TG_PROTO_BLOCK_TOOL_USE;
    if (r->re_tool) {
        snprintf(r->re_item, sizeof r->re_item, "fc_%s_%zu", r->re_id + 5, oi);
        tg_free(r->re_call_id);
        tg_free(r->re_name);
        r->re_call_id = tg_strdup(ev->ev_id ? ev->ev_id : "");
        r->re_name = tg_strdup(ev->ev_name ? ev->ev_name : "");
        if (!r->re_call_id || !r->re_name)
            return tg_proto__fail(s, TG_PROTO_ENOMEM, TG_PROTO_ERR_API, "out of memory converting the stream");
        return write_ev(s, "response.output_item.added",
                        json_pack("{sI so}", "output_index", (json_int_t)oi, "item",
                                  call_item(r->re_item, "in_progress", r->re_call_id, r->re_name, "", 0)));
    }
    if (ev->ev_block != TG_PROTO_BLOCK_TEXT) {
        r->re_skip = 1; /* thinking: not shown */
        return 0;
    }
    snprintf(r->re_item, sizeof r->re_item, "msg_%s_%zu", r->re_id + 5, oi);
    int rc = write_ev(s, "response.output_item.added",
                      json_pack("{sI so}", "output_index", (json_int_t)oi, "item",
                                message_item(r->re_item, "in_progress", NULL, 0)));
    return rc ? rc
              : write_ev(s, "response.content_part.added",
                         json_pack("{ss sI si s{ss ss s[] s[]}}", "item_id", r->re_item, "output_index",
                                   (json_int_t)oi, "content_index", 0, "part", "type", "output_text", "text", "",
                                   "annotations", "logprobs"));
}

static int enc_delta(tg_proto_stream_t *s, const tg_proto_event_t *ev)
{
    tg_proto_rs_enc_t *r = s->st_enc.en_rs;
    if (r->re_skip || (ev->ev_delta != TG_PROTO_DELTA_TEXT && ev->ev_delta != TG_PROTO_DELTA_JSON))
        return 0;
    size_t oi = json_array_size(r->re_items);
    if (tg_buf_append(&r->re_acc, ev->ev_text, ev->ev_len))
        return tg_proto__fail(s, TG_PROTO_ETOOBIG, TG_PROTO_ERR_API, "the answer passed its maximum");
    if (r->re_tool)
        return write_ev(s, "response.function_call_arguments.delta",
                        json_pack("{ss sI ss#}", "item_id", r->re_item, "output_index", (json_int_t)oi, "delta",
                                  ev->ev_text, ev->ev_len));
    return write_ev(s, "response.output_text.delta",
                    json_pack("{ss sI si ss# s[]}", "item_id", r->re_item, "output_index", (json_int_t)oi,
                              "content_index", 0, "delta", ev->ev_text, ev->ev_len, "logprobs"));
}

static int enc_block_stop(tg_proto_stream_t *s)
{
    tg_proto_rs_enc_t *r = s->st_enc.en_rs;
    if (r->re_skip)
        return 0;
    r->re_skip = 1;
    size_t oi = json_array_size(r->re_items);
    const char *acc = r->re_acc.b_data ? r->re_acc.b_data : "";
    size_t n = r->re_acc.b_len;
    json_t *item;
    int rc;
    if (r->re_tool) {
        item = call_item(r->re_item, "completed", r->re_call_id, r->re_name, acc, n);
        rc = write_ev(s, "response.function_call_arguments.done",
                      json_pack("{ss sI ss ss#}", "item_id", r->re_item, "output_index", (json_int_t)oi, "name",
                                r->re_name, "arguments", acc, n));
    } else {
        item = message_item(r->re_item, "completed", acc, n);
        rc = write_ev(s, "response.output_text.done",
                      json_pack("{ss sI si ss# s[]}", "item_id", r->re_item, "output_index", (json_int_t)oi,
                                "content_index", 0, "text", acc, n, "logprobs"));
        if (!rc)
            rc = write_ev(s, "response.content_part.done",
                          json_pack("{ss sI si s{ss ss# s[] s[]}}", "item_id", r->re_item, "output_index",
                                    (json_int_t)oi, "content_index", 0, "part", "type", "output_text", "text", acc,
                                    n, "annotations", "logprobs"));
    }
    if (rc) {
        json_decref(item);
        return rc;
    }
    if (!item || json_array_append(r->re_items, item)) {
        json_decref(item);
        return tg_proto__fail(s, TG_PROTO_ENOMEM, TG_PROTO_ERR_API, "out of memory converting the stream");
    }
    return write_ev(s, "response.output_item.done", json_pack("{sI so}", "output_index", (json_int_t)oi, "item", item));
}

static int enc_end(tg_proto_stream_t *s, const tg_proto_event_t *ev)
{
    tg_proto_usage_t zero = {0};
    const char *reason;
    const char *status = status_of(ev->ev_stop, &reason);
    json_t *usage = write_usage(ev->ev_usage ? ev->ev_usage : &zero, s->st_opts.so_prompt_tokens);
    const char *name = reason ? "response.incomplete" : "response.completed";
    return write_ev(s, name, usage ? json_pack("{so}", "response", snapshot(s, status, reason, usage)) : NULL);
}

static int enc_event(tg_proto_stream_t *s, const tg_proto_event_t *ev)
{
    if (ev->ev_type == TG_PROTO_EV_START)
        return enc_start(s, ev);
    if (!s->st_enc.en_rs && ev->ev_type != TG_PROTO_EV_ERROR)
        return tg_proto__fail(s, TG_PROTO_EGRAMMAR, TG_PROTO_ERR_API, "an event before the start");
    switch (ev->ev_type) {
    case TG_PROTO_EV_BLOCK_START: return enc_block_start(s, ev);
    case TG_PROTO_EV_DELTA: return enc_delta(s, ev);
    case TG_PROTO_EV_BLOCK_STOP: return enc_block_stop(s);
    case TG_PROTO_EV_END: return enc_end(s, ev);
    case TG_PROTO_EV_START:
    case TG_PROTO_EV_ERROR: break;
    }
    return tg_proto__fail_upstream(s, ev);
}

/* event: error with the Responses members (type, code, message, param) and
 * an "error" object too: the openai SDK raises an event whose data has one. */
static int enc_error(tg_proto_stream_t *s, const tg_proto_errinfo_t *e, tg_buf_t *out)
{
    json_t *inner = rs_write_error(e);
    json_t *body = json_object_get(inner, "error");
    tg_proto_rs_enc_t *r = s->st_enc.en_rs;
    json_t *v = body ? json_pack("{ss sO sO sO sI sO}", "type", "error", "code", json_object_get(body, "code"),
                                 "message", json_object_get(body, "message"), "param",
                                 json_object_get(body, "param"), "sequence_number",
                                 (json_int_t)(r ? r->re_seq++ : 0), "error", body)
                     : NULL;
    json_decref(inner);
    return tg_proto__append_sse(out, "event: error\ndata: ", v);
}

static void enc_free(tg_proto_stream_t *s)
{
    tg_proto_rs_enc_t *r = s->st_enc.en_rs;
    if (!r)
        return;
    json_decref(r->re_items);
    tg_buf_free(&r->re_acc);
    tg_free(r->re_call_id);
    tg_free(r->re_name);
    tg_free(r);
    s->st_enc.en_rs = NULL;
}

const tg_proto_adapter_t tg_proto__responses = {
    .pa_kind = TG_PROTO_RESPONSES,
    .pa_name = "responses",
    .pa_path = "/v1/responses",
    .pa_auth_prefix = "Authorization: Bearer ",
    .pa_extra_header = NULL,
    .pa_parse_request = rs_parse_request,
    .pa_write_request = rs_write_request,
    .pa_parse_response = rs_parse_response,
    .pa_write_response = rs_write_response,
    .pa_parse_error = rs_parse_error,
    .pa_write_error = rs_write_error,
    .pa_errtype_status = rs_errtype_status,
    .pa_dec_init = dec_init,
    .pa_dec_free = dec_free,
    .pa_dec_event = dec_event,
    .pa_dec_eof = dec_eof,
    .pa_enc_event = enc_event,
    .pa_enc_error = enc_error,
    .pa_enc_free = enc_free,
};
