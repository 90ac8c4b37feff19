/* vendor.c: the upstream providers the gateway knows, one row each: the
 * wire protocol its channels speak, whether it serves /v1/responses
 * itself, and where its chat usage reports cache reads. The row is chosen
 * by the channel's provider type: a DeepSeek channel reads DeepSeek's
 * names, a Kimi channel Kimi's. OPENAI_COMPATIBLE keeps what every
 * OpenAI-shaped channel read before the vendor types existed (OpenAI's
 * details first, then DeepSeek's prompt_cache_hit_tokens and Kimi's
 * top-level cached_tokens), so a channel typed then is billed the same
 * after an agent upgrade; it is also the row of a provider type this
 * build does not know. Row numbers are api/tollgate/v1/common.proto's
 * ProviderType values (agent/convert.c asserts they agree). */
#include <stddef.h>

#include "proto/tg_proto.h"

static const tg_proto_vendor_t vendors[TG_PROTO_NVENDORS] = {
    [TG_PROTO_VENDOR_OPENAI] = {"openai", TG_PROTO_OPENAI, 1, {NULL, NULL}, NULL, TG_PROTO_DETAILS_FIRST},
    [TG_PROTO_VENDOR_ANTHROPIC] = {"anthropic", TG_PROTO_ANTHROPIC, 0, {NULL, NULL}, NULL, TG_PROTO_DETAILS_NO},
    /* Gemini's OpenAI endpoint: OpenAI's prompt_tokens_details */
    [TG_PROTO_VENDOR_GEMINI] = {"gemini", TG_PROTO_OPENAI, 0, {NULL, NULL}, NULL, TG_PROTO_DETAILS_FIRST},
    /* the legacy row: every name main's readers took, details first */
    [TG_PROTO_VENDOR_OPENAI_COMPATIBLE] = {"openai_compatible", TG_PROTO_OPENAI, 0,
                                           {"prompt_cache_hit_tokens", "cached_tokens"},
                                           "prompt_cache_miss_tokens", TG_PROTO_DETAILS_FIRST},
    /* prompt_tokens = hit + miss; newer answers repeat the hits in
     * prompt_tokens_details, read when the own name is absent */
    [TG_PROTO_VENDOR_DEEPSEEK] = {"deepseek", TG_PROTO_OPENAI, 0, {"prompt_cache_hit_tokens", NULL},
                                  "prompt_cache_miss_tokens", TG_PROTO_DETAILS_AFTER},
    [TG_PROTO_VENDOR_QWEN] = {"qwen", TG_PROTO_OPENAI, 0, {NULL, NULL}, NULL, TG_PROTO_DETAILS_FIRST},
    /* Moonshot v1 reports cached_tokens beside prompt_tokens; Kimi K2
     * answers may carry prompt_tokens_details as well */
    [TG_PROTO_VENDOR_KIMI] = {"kimi", TG_PROTO_OPENAI, 0, {"cached_tokens", NULL}, NULL, TG_PROTO_DETAILS_AFTER},
    [TG_PROTO_VENDOR_GLM] = {"glm", TG_PROTO_OPENAI, 0, {NULL, NULL}, NULL, TG_PROTO_DETAILS_FIRST},
};

const tg_proto_vendor_t *tg_proto_vendor(int provider)
{
    if (provider <= 0 || provider >= TG_PROTO_NVENDORS)
        return NULL;
    return &vendors[provider];
}

const tg_proto_vendor_t *tg_proto_vendor_or_compatible(int provider)
{
    const tg_proto_vendor_t *v = tg_proto_vendor(provider);
    return v ? v : &vendors[TG_PROTO_VENDOR_OPENAI_COMPATIBLE];
}
