/* vendor.c: the upstream providers the gateway knows, one row each: the
 * wire protocol its channels speak, whether it serves /v1/responses
 * itself, and where its chat usage reports cache reads. The row is chosen
 * by the channel's provider type, never guessed from the field names an
 * answer happens to carry: a DeepSeek channel reads DeepSeek's names, an
 * OpenAI-compatible one OpenAI's alone (an unknown vendor's top-level
 * "cached_tokens" may mean anything; naming its type is what makes its
 * cache reads cheaper). Row numbers are api/tollgate/v1/common.proto's
 * ProviderType values (agent/convert.c asserts they agree). */
#include <stddef.h>

#include "proto/tg_proto.h"

static const tg_proto_vendor_t vendors[TG_PROTO_NVENDORS] = {
    [TG_PROTO_VENDOR_OPENAI] = {"openai", TG_PROTO_OPENAI, 1, NULL, NULL, 1},
    [TG_PROTO_VENDOR_ANTHROPIC] = {"anthropic", TG_PROTO_ANTHROPIC, 0, NULL, NULL, 0},
    /* Gemini's OpenAI endpoint: OpenAI's prompt_tokens_details */
    [TG_PROTO_VENDOR_GEMINI] = {"gemini", TG_PROTO_OPENAI, 0, NULL, NULL, 1},
    [TG_PROTO_VENDOR_OPENAI_COMPATIBLE] = {"openai_compatible", TG_PROTO_OPENAI, 0, NULL, NULL, 1},
    /* prompt_tokens = hit + miss; newer answers repeat the hits in
     * prompt_tokens_details, read when the own name is absent */
    [TG_PROTO_VENDOR_DEEPSEEK] = {"deepseek", TG_PROTO_OPENAI, 0, "prompt_cache_hit_tokens",
                                  "prompt_cache_miss_tokens", 1},
    [TG_PROTO_VENDOR_QWEN] = {"qwen", TG_PROTO_OPENAI, 0, NULL, NULL, 1},
    /* Moonshot v1 reports cached_tokens beside prompt_tokens; Kimi K2
     * answers may carry prompt_tokens_details as well */
    [TG_PROTO_VENDOR_KIMI] = {"kimi", TG_PROTO_OPENAI, 0, "cached_tokens", NULL, 1},
    [TG_PROTO_VENDOR_GLM] = {"glm", TG_PROTO_OPENAI, 0, NULL, NULL, 1},
};

const tg_proto_vendor_t *tg_proto_vendor(int provider)
{
    if (provider <= 0 || provider >= TG_PROTO_NVENDORS)
        return NULL;
    return &vendors[provider];
}

const tg_proto_vendor_t *tg_proto_vendor_or_openai(int provider)
{
    const tg_proto_vendor_t *v = tg_proto_vendor(provider);
    return v ? v : &vendors[TG_PROTO_VENDOR_OPENAI];
}
