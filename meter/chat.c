/* chat.c: token estimate of an OpenAI chat completions request, following
 * the OpenAI cookbook "How to count tokens with tiktoken" (messages: 3 per
 * message, +1 per name, 3 to prime the reply; tools: the function-calling
 * constants of its num_tokens_for_tools). The request is parsed with jansson:
 * this runs once per request before the upstream call and costs far less
 * than the tokenizing itself. */
#include <jansson.h>
#include <string.h>

#include "base/tg_base.h"
#include "meter/tg_meter_int.h"

typedef struct chat_ctx {
    const tg_meter_t *cc_m;
    tg_meter_encoding_t cc_enc;
    char *cc_err;
    size_t cc_errlen;
} chat_ctx_t;

static int count_str(chat_ctx_t *c, const char *s, size_t n, uint64_t *acc)
{
    uint64_t k = 0;
    int rc = tg_meter_count(c->cc_m, c->cc_enc, s, n, TG_METER_SPECIAL_TEXT, &k, c->cc_err,
                            c->cc_errlen);
    *acc += k;
    return rc;
}

static int count_jstr(chat_ctx_t *c, const json_t *v, uint64_t *acc)
{
    return json_is_string(v) ? count_str(c, json_string_value(v), json_string_length(v), acc) : 0;
}

/* Content given as an array of parts: text parts count, images are tallied. */
static int count_parts(chat_ctx_t *c, const json_t *parts, uint64_t *acc, uint32_t *images)
{
    size_t i;
    json_t *p;
    int rc;
    json_array_foreach(parts, i, p)
    {
        const char *type = json_string_value(json_object_get(p, "type"));
        if (json_is_string(p)) {
            if ((rc = count_jstr(c, p, acc)) != 0)
                return rc;
        } else if (type && (strcmp(type, "text") == 0 || strcmp(type, "input_text") == 0)) {
            if ((rc = count_jstr(c, json_object_get(p, "text"), acc)) != 0)
                return rc;
        } else if (type && (strcmp(type, "image_url") == 0 || strcmp(type, "input_image") == 0)) {
            (*images)++;
        }
    }
    return 0;
}

/* An assistant's tool_calls: the name and arguments strings of each call. */
static int count_tool_calls(chat_ctx_t *c, const json_t *calls, uint64_t *acc)
{
    size_t i;
    json_t *t;
    int rc;
    json_array_foreach(calls, i, t)
    {
        json_t *f = json_object_get(t, "function");
        if ((rc = count_jstr(c, json_object_get(f, "name"), acc)) != 0 ||
            (rc = count_jstr(c, json_object_get(f, "arguments"), acc)) != 0)
            return rc;
    }
    return 0;
}

/* Counts "a:b" or "a:b:d", first stripping one trailing '.' from the last
 * part, as the cookbook does with descriptions. */
static int count_line(chat_ctx_t *c, const char *a, const char *b, const char *d, uint64_t *acc)
{
    tg_buf_t buf;
    const char *last = d ? d : b;
    size_t ll = strlen(last);
    int rc;
    if (ll && last[ll - 1] == '.')
        ll--;
    tg_buf_init(&buf, (size_t)1 << 30);
    if (tg_buf_puts(&buf, a) != 0 || tg_buf_append(&buf, ":", 1) != 0 ||
        (d && (tg_buf_puts(&buf, b) != 0 || tg_buf_append(&buf, ":", 1) != 0)) ||
        tg_buf_append(&buf, last, ll) != 0) {
        tg_buf_free(&buf);
        return tg_errf(c->cc_err, c->cc_errlen, TG_METER_ENOMEM, "out of memory counting tools");
    }
    rc = count_str(c, buf.b_data ? buf.b_data : "", buf.b_len, acc);
    tg_buf_free(&buf);
    return rc;
}

static const char *str_or(const json_t *v, const char *dflt)
{
    return json_is_string(v) ? json_string_value(v) : dflt;
}

/* Tool definitions, cookbook constants: func_init 7 (o200k models) or 10
 * (cl100k models), prop_init 3, prop_key 3, enum_init -3, enum_item 3,
 * func_end 12 once after all functions. */
static int count_tools(chat_ctx_t *c, const json_t *tools, int legacy, uint64_t *acc)
{
    const int64_t func_init = c->cc_enc == TG_METER_O200K_BASE ? 7 : 10;
    int64_t total = 0;
    size_t i;
    json_t *t;
    int rc;

    if (!json_is_array(tools) || json_array_size(tools) == 0)
        return 0;
    json_array_foreach(tools, i, t)
    {
        json_t *f = legacy ? t : json_object_get(t, "function");
        uint64_t k = 0;
        const char *key;
        json_t *prop;
        if (!json_is_object(f))
            return tg_errf(c->cc_err, c->cc_errlen, TG_METER_EJSON,
                           "tools[%zu] has no \"function\" object", i);
        total += func_init;
        if ((rc = count_line(c, str_or(json_object_get(f, "name"), ""),
                             str_or(json_object_get(f, "description"), ""), NULL, &k)) != 0)
            return rc;
        json_t *props = json_object_get(json_object_get(f, "parameters"), "properties");
        if (json_is_object(props) && json_object_size(props) > 0) {
            total += 3;
            json_object_foreach(props, key, prop)
            {
                json_t *en = json_object_get(prop, "enum");
                total += 3;
                if (json_is_array(en)) {
                    size_t j;
                    json_t *item;
                    total -= 3;
                    json_array_foreach(en, j, item)
                    {
                        total += 3;
                        if ((rc = count_jstr(c, item, &k)) != 0)
                            return rc;
                    }
                }
                if ((rc = count_line(c, key, str_or(json_object_get(prop, "type"), ""),
                                     str_or(json_object_get(prop, "description"), ""), &k)) != 0)
                    return rc;
            }
        }
        total += (int64_t)k;
    }
    total += 12;
    *acc += total > 0 ? (uint64_t)total : 0;
    return 0;
}

static uint64_t scale(uint64_t v, uint32_t ppm)
{
    if (ppm == 1000000)
        return v;
    return (uint64_t)(((unsigned __int128)v * ppm + 999999) / 1000000);
}

int tg_meter_chat_count(const tg_meter_t *m, const char *body, size_t len,
                        const char *model_override, tg_meter_chat_t *out, char *err,
                        size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    tg_meter_model_t mm;
    uint64_t msg = 0, tools = 0;
    int rc = 0;
    size_t i;
    json_t *mv;

    memset(out, 0, sizeof *out);
    if (!root) {
        rc = tg_errf(err, errlen, TG_METER_EJSON, "chat request is not JSON: %s at line %d",
                     jerr.text, jerr.line);
        goto done;
    }
    const char *model = model_override ? model_override : str_or(json_object_get(root, "model"), "");
    tg_meter_model_lookup(model, 1, &mm, NULL, 0);
    chat_ctx_t c = {m, mm.mm_encoding, err, errlen};
    json_t *messages = json_object_get(root, "messages");
    if (!json_is_array(messages)) {
        rc = tg_errf(err, errlen, TG_METER_EJSON, "chat request has no \"messages\" array");
        goto done;
    }
    json_array_foreach(messages, i, mv)
    {
        const char *key;
        json_t *v;
        if (!json_is_object(mv)) {
            rc = tg_errf(err, errlen, TG_METER_EJSON, "messages[%zu] is not an object", i);
            goto done;
        }
        msg += 3;
        json_object_foreach(mv, key, v)
        {
            if (json_is_string(v))
                rc = count_jstr(&c, v, &msg);
            else if (json_is_array(v) && strcmp(key, "tool_calls") == 0)
                rc = count_tool_calls(&c, v, &msg);
            else if (json_is_array(v))
                rc = count_parts(&c, v, &msg, &out->mc_images);
            if (rc != 0)
                goto done;
            if (strcmp(key, "name") == 0)
                msg += 1;
        }
    }
    msg += 3; /* every reply is primed with <|start|>assistant<|message|> */
    if ((rc = count_tools(&c, json_object_get(root, "tools"), 0, &tools)) != 0 ||
        (rc = count_tools(&c, json_object_get(root, "functions"), 1, &tools)) != 0)
        goto done;
    out->mc_encoding = mm.mm_encoding;
    out->mc_estimate = mm.mm_kind == TG_METER_MODEL_ESTIMATE;
    out->mc_message_tokens = scale(msg, mm.mm_scale_ppm);
    out->mc_tool_tokens = scale(tools, mm.mm_scale_ppm);
    out->mc_prompt_tokens = out->mc_message_tokens + out->mc_tool_tokens;
done:
    json_decref(root);
    return rc;
}
