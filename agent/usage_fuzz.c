/* usage_fuzz.c: libFuzzer target for the usage reader (usage.c). The
 * first 4 bytes are a max_out for tg_agent_usage_clamp (the 4th byte's high
 * bits pick the channel's vendor row), the rest a usage
 * object. Every count read is -1 (absent) or within [0, TG_USAGE_MAX]; a
 * refused object leaves the previous numbers as they were; after the
 * clamp the completion is within max_out, reasoning within the completion
 * and cached tokens within the prompt.
 */
#include <stdint.h>
#include <string.h>

#include "agent/agent_int.h"
#include "proto/tg_proto.h"
#include "tests/fuzz/fuzz.h"

static void count_ok(long v)
{
    TG_FUZZ_CHECK(v == -1 || (v >= 0 && v <= TG_USAGE_MAX));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    long max_out = (long)((uint32_t)data[0] << 16 | (uint32_t)data[1] << 8 | data[2]) - (data[3] & 1 ? 1 : 0);
    if (data[3] & 2)
        max_out = -1;
    const char *p = (const char *)data + 4;
    size_t n = size - 4;

    /* the vendor row from the high bits (0 and 9-15: OPENAI_COMPATIBLE's) */
    const tg_proto_vendor_t *vendor = tg_proto_vendor_or_compatible(data[3] >> 4);
    tg_usage_t before = {7, 5, 3, 2}, u = before;
    int rc = tg_agent_usage_parse(p, n, vendor, &u);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_AGENT_ERANGE || rc == TG_AGENT_EJSON);
    if (rc == TG_AGENT_EJSON) {
        TG_FUZZ_CHECK(memcmp(&u, &before, sizeof u) == 0);
        return 0;
    }
    tg_usage_t fresh = {-1, -1, -1, -1};
    (void)tg_agent_usage_parse(p, n, vendor, &fresh);
    count_ok(fresh.us_prompt);
    count_ok(fresh.us_completion);
    count_ok(fresh.us_cached);
    count_ok(fresh.us_reasoning);

    int clamped = tg_agent_usage_clamp(&fresh, max_out);
    TG_FUZZ_CHECK(clamped == 0 || clamped == 1);
    if (max_out >= 0)
        TG_FUZZ_CHECK(fresh.us_completion <= max_out);
    if (fresh.us_completion >= 0)
        TG_FUZZ_CHECK(fresh.us_reasoning <= fresh.us_completion);
    if (fresh.us_prompt >= 0)
        TG_FUZZ_CHECK(fresh.us_cached <= fresh.us_prompt);
    return 0;
}
