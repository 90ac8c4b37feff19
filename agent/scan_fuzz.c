/* scan_fuzz.c: libFuzzer target for the request scanner and body rewrite
 * (scan.c). The first byte picks the model written in and whether
 * include_usage is forced; the rest is the client's body. When the scan
 * accepts it, the rewritten body must be valid JSON that scans again with
 * the new model (when it had one), the same stream flag, output cap and n, and (when asked)
 * include_usage set. Every span the scan reports lies inside the body.
 */
#include <stdint.h>
#include <string.h>

#include "agent/agent_int.h"
#include "agent/json.h"
#include "tests/fuzz/fuzz.h"

static const char *const models[] = {"gpt-4o-mini", "a\"b\\c\n\x01", "caf\xc3\xa9/\xf0\x9f\x98\x80", ""};

static void span_in(tg_span_t sp, size_t len)
{
    TG_FUZZ_CHECK(sp.sp_len <= len && sp.sp_off <= len - sp.sp_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *model = models[data[0] & 3];
    int add_usage = (data[0] >> 2) & 1;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;

    tg_scan_t sc;
    char err[128] = "";
    int rc = tg_agent_scan(body, len, &sc, err, sizeof err);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_AGENT_EJSON || rc == TG_AGENT_EREQUEST);
    if (rc != 0) {
        TG_FUZZ_CHECK(err[0] != '\0');
        return 0;
    }
    TG_FUZZ_CHECK(tg_json_valid(body, len, NULL, 0) == 0);
    span_in(sc.sc_model_val, len);
    span_in(sc.sc_so_val, len);
    span_in(sc.sc_iu_val, len);
    TG_FUZZ_CHECK(sc.sc_close < len && body[sc.sc_close] == '}');
    TG_FUZZ_CHECK(memchr(sc.sc_model, '\0', sizeof sc.sc_model) != NULL);

    tg_buf_t out;
    tg_buf_init(&out, 4 * len + 4096);
    rc = tg_agent_rewrite(body, len, &sc, model, add_usage, &out);
    TG_FUZZ_CHECK(rc == 0);
    char err2[128] = "";
    TG_FUZZ_CHECK(tg_json_valid(out.b_data, out.b_len, err2, sizeof err2) == 0);
    tg_scan_t sc2;
    rc = tg_agent_scan(out.b_data, out.b_len, &sc2, err2, sizeof err2);
    TG_FUZZ_CHECK(rc == 0);
    /* a body without "model" keeps none (the request is refused anyway) */
    TG_FUZZ_CHECK(strcmp(sc2.sc_model, sc.sc_model_val.sp_len ? model : "") == 0);
    TG_FUZZ_CHECK(sc2.sc_stream == sc.sc_stream);
    TG_FUZZ_CHECK(sc2.sc_max_tokens == sc.sc_max_tokens);
    TG_FUZZ_CHECK(sc2.sc_n == sc.sc_n);
    if (add_usage)
        TG_FUZZ_CHECK(sc2.sc_include_usage == 1);
    else
        TG_FUZZ_CHECK(sc2.sc_include_usage == sc.sc_include_usage);
    tg_buf_free(&out);
    return 0;
}
