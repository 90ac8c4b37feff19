/* usage.c: the numbers of a provider's usage object, read strictly, and
 * held to what the request allowed. A provider (or anything pretending to
 * be one) decides what a client is charged, so a count is believed only as
 * a plain non-negative integer of at most 2^53 (2500000000.0 and 1e+30 are
 * refused, not read as 2500000000 or 1), and never past the request's own
 * output cap. Cache reads are read under the channel's vendor's row
 * (proto/vendor.c: DeepSeek's prompt_cache_hit_tokens, Kimi's
 * cached_tokens, OpenAI's prompt_tokens_details.cached_tokens; an
 * OPENAI_COMPATIBLE channel all three). Input is not clamped (providers
 * add input the gateway cannot see: search and file tools, stored
 * prompts); receipt.c flags input far past its own count instead. */
#include <string.h>

#include "agent/agent_int.h"
#include "agent/json.h"
#include "proto/tg_proto.h"

_Static_assert(TG_USAGE_MAX == TG_PROTO_COUNT_MAX, "one maximum count in both usage readers");

/* One count at the cursor into *v (null leaves it). Non-counts set *bad. */
static int one_count(tg_json_t *j, long *v, int *bad)
{
    uint64_t x;
    int t = tg_json_peek(j);
    if (t == TG_JSON_NULL)
        return tg_json_skip(j);
    if (t != TG_JSON_NUMBER) {
        *bad = 1;
        return tg_json_skip(j);
    }
    int rc = tg_json_uint(j, (uint64_t)TG_USAGE_MAX, &x);
    if (rc == TG_AGENT_ERANGE) {
        *bad = 1;
        return 0;
    }
    if (rc == 0)
        *v = (long)x;
    return rc;
}

/* The counts as read: [0] under the chat names, [1] under the Responses
 * names. */
typedef struct counts {
    long c_prompt[2], c_compl[2], c_cached[2], c_reason[2];
    long c_vcached[2]; /* under the vendor's own names for cache reads (vd_cache_read) */
    long c_vmiss;   /* and for the uncached prompt (vd_cache_miss) */
    const tg_proto_vendor_t *c_vendor;
    int c_bad;
} counts_t;

/* One member of a *_details object. */
typedef struct detail {
    const char *d_name; /* cached_tokens or reasoning_tokens */
    long *d_v;
    int *d_bad;
} detail_t;

static int detail_member(tg_json_t *j, const char *name, void *arg)
{
    detail_t *d = arg;
    return strcmp(name, d->d_name) == 0 ? one_count(j, d->d_v, d->d_bad) : tg_json_skip(j);
}

static int usage_member(tg_json_t *j, const char *name, void *arg)
{
    counts_t *c = arg;
    const tg_proto_vendor_t *v = c->c_vendor;
    static const char *const names[][2] = {{"prompt_tokens", "input_tokens"},
                                           {"completion_tokens", "output_tokens"},
                                           {"prompt_tokens_details", "input_tokens_details"},
                                           {"completion_tokens_details", "output_tokens_details"}};
    /* the channel's vendor's own names (proto/vendor.c), never another's */
    for (int k = 0; k < 2; k++)
        if (v->vd_cache_read[k] && strcmp(name, v->vd_cache_read[k]) == 0)
            return one_count(j, &c->c_vcached[k], &c->c_bad);
    if (v->vd_cache_miss && strcmp(name, v->vd_cache_miss) == 0)
        return one_count(j, &c->c_vmiss, &c->c_bad);
    for (int k = 0; k < 2; k++) {
        if (strcmp(name, names[0][k]) == 0)
            return one_count(j, &c->c_prompt[k], &c->c_bad);
        if (strcmp(name, names[1][k]) == 0)
            return one_count(j, &c->c_compl[k], &c->c_bad);
        if (strcmp(name, names[2][k]) == 0 && (k == 1 || v->vd_details != TG_PROTO_DETAILS_NO))
            return tg_json_members(j, detail_member, &(detail_t){"cached_tokens", &c->c_cached[k], &c->c_bad});
        if (strcmp(name, names[3][k]) == 0)
            return tg_json_members(j, detail_member, &(detail_t){"reasoning_tokens", &c->c_reason[k], &c->c_bad});
    }
    return tg_json_skip(j);
}

/* The counts c read, as *t: 0, TG_AGENT_ERANGE (a count was not one) or
 * TG_AGENT_EJSON (neither main count: *t is not to be kept). */
static int counts_verdict(counts_t *c, tg_usage_t *t)
{
    long own = c->c_vcached[0] >= 0 ? c->c_vcached[0] : c->c_vcached[1];
    t->us_prompt = c->c_prompt[0] >= 0 ? c->c_prompt[0] : c->c_prompt[1];
    if (t->us_prompt < 0 && own >= 0 && c->c_vmiss >= 0) {
        /* DeepSeek: hits + misses, a count only within the maximum (proto/openai.c: the same rule) */
        if (own <= TG_USAGE_MAX - c->c_vmiss)
            t->us_prompt = own + c->c_vmiss;
        else
            c->c_bad = 1;
    }
    t->us_completion = c->c_compl[0] >= 0 ? c->c_compl[0] : c->c_compl[1];
    long details = c->c_cached[0] >= 0 ? c->c_cached[0] : c->c_cached[1];
    if (c->c_vendor->vd_details == TG_PROTO_DETAILS_FIRST)
        t->us_cached = details >= 0 ? details : own;
    else
        t->us_cached = own >= 0 ? own : details;
    t->us_reasoning = c->c_reason[0] >= 0 ? c->c_reason[0] : c->c_reason[1];
    if (!c->c_bad && t->us_prompt < 0 && t->us_completion < 0)
        return TG_AGENT_EJSON;
    return c->c_bad ? TG_AGENT_ERANGE : 0;
}

static void counts_init(counts_t *c, const tg_proto_vendor_t *vendor)
{
    static const counts_t none = {{-1, -1}, {-1, -1}, {-1, -1}, {-1, -1}, {-1, -1}, -1, NULL, 0};
    *c = none;
    c->c_vendor = vendor ? vendor : tg_proto_vendor_or_compatible(0);
}

int tg_agent_usage_parse(const char *json, size_t len, const tg_proto_vendor_t *vendor, tg_usage_t *u)
{
    counts_t c;
    tg_json_t j;
    tg_usage_t t;
    counts_init(&c, vendor);
    tg_json_init(&j, json, len, NULL, 0);
    if (tg_json_peek(&j) != TG_JSON_OBJECT || tg_json_members(&j, usage_member, &c) != 0 || tg_json_end(&j) != 0)
        return TG_AGENT_EJSON;
    int v = counts_verdict(&c, &t);
    /* *u changes only with a usage the caller keeps: a stream's later
     * {"total_tokens":N} must not wipe the counts of an earlier chunk. */
    if (v != TG_AGENT_EJSON)
        *u = t;
    return v;
}

int tg_agent_usage_read(tg_json_t *j, const tg_proto_vendor_t *vendor, tg_usage_t *u, int *verdict)
{
    counts_t c;
    tg_usage_t t;
    *verdict = TG_AGENT_EJSON;
    if (tg_json_peek(j) != TG_JSON_OBJECT)
        return tg_json_skip(j);
    counts_init(&c, vendor);
    int rc = tg_json_members(j, usage_member, &c);
    if (rc != 0)
        return rc;
    *verdict = counts_verdict(&c, &t);
    if (*verdict != TG_AGENT_EJSON)
        *u = t;
    return 0;
}

int tg_agent_usage_clamp(tg_usage_t *u, long max_out)
{
    int clamped = 0;
    if (max_out >= 0 && u->us_completion > max_out) {
        u->us_completion = max_out;
        clamped = 1;
    }
    if (u->us_reasoning > u->us_completion && u->us_completion >= 0)
        u->us_reasoning = u->us_completion;
    if (u->us_cached > u->us_prompt && u->us_prompt >= 0)
        u->us_cached = u->us_prompt;
    return clamped;
}
