/* meter_fuzz.c: libFuzzer target for the tokenizer (split.c, bpe.c) and
 * the chat-request counter (chat.c) on arbitrary bytes. The first byte
 * picks the encoding (bit 0) and what runs (bits 1-2: tokens, chat
 * request, chat request counted for a Claude model); the rest is the text.
 *
 * Tokens: encoding as ordinary text succeeds; the count equals the number
 * of ids; the ids' bytes put together give the input back whenever it is
 * valid UTF-8 (invalid bytes become U+FFFD by design, meter/README.md);
 * with special tokens rejected, the call gives the same ids or
 * TG_METER_ESPECIAL; allowed, it succeeds with at most as many ids. Chat:
 * 0 or TG_METER_EJSON, never another code; the prompt is the sum of its
 * message and tool parts; an exact model is no estimate. */
#include <stdint.h>
#include <string.h>

#include "base/tg_base.h"
#include "base/tg_utf8.h"
#include "meter/tg_meter.h"
#include "tests/fuzz/fuzz.h"

static tg_meter_t *g_meter;

static int valid_utf8(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = tg_utf8_seq(p + i, n - i);
        if (k == 0)
            return 0;
        i += k;
    }
    return 1;
}

static void tokens(tg_meter_encoding_t enc, const char *text, size_t n)
{
    char err[256] = "";
    tg_meter_ids_t ids = {0}, rej = {0}, all = {0};
    uint64_t count = 0;
    TG_FUZZ_CHECK(tg_meter_encode(g_meter, enc, text, n, TG_METER_SPECIAL_TEXT, &ids, err, sizeof err) == 0);
    TG_FUZZ_CHECK(tg_meter_count(g_meter, enc, text, n, TG_METER_SPECIAL_TEXT, &count, err, sizeof err) == 0);
    TG_FUZZ_CHECK(count == ids.ids_n);
    if (valid_utf8((const uint8_t *)text, n)) {
        size_t off = 0;
        for (size_t i = 0; i < ids.ids_n; i++) {
            size_t tl = 0;
            const char *tb = tg_meter_token_bytes(g_meter, enc, ids.ids_v[i], &tl);
            TG_FUZZ_CHECK(tb != NULL && off + tl <= n && memcmp(text + off, tb, tl) == 0);
            off += tl;
        }
        TG_FUZZ_CHECK(off == n);
    }
    int rc = tg_meter_encode(g_meter, enc, text, n, TG_METER_SPECIAL_REJECT, &rej, err, sizeof err);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_METER_ESPECIAL);
    if (rc == 0)
        TG_FUZZ_CHECK(rej.ids_n == ids.ids_n &&
                      (ids.ids_n == 0 || memcmp(rej.ids_v, ids.ids_v, ids.ids_n * sizeof *ids.ids_v) == 0));
    else
        TG_FUZZ_CHECK(rej.ids_n == 0);
    TG_FUZZ_CHECK(tg_meter_encode(g_meter, enc, text, n, TG_METER_SPECIAL_ALLOW, &all, err, sizeof err) == 0);
    TG_FUZZ_CHECK(all.ids_n <= ids.ids_n);
    tg_meter_ids_free(&ids);
    tg_meter_ids_free(&rej);
    tg_meter_ids_free(&all);
}

static void chat(const char *body, size_t n, const char *model)
{
    char err[256] = "";
    tg_meter_chat_t c;
    memset(&c, 0, sizeof c);
    int rc = tg_meter_chat_count(g_meter, body, n, model, &c, err, sizeof err);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_METER_EJSON);
    if (rc != 0) {
        TG_FUZZ_CHECK(err[0] != '\0');
        return;
    }
    TG_FUZZ_CHECK(c.mc_prompt_tokens == c.mc_message_tokens + c.mc_tool_tokens);
    if (model != NULL)
        TG_FUZZ_CHECK(c.mc_estimate == (strncmp(model, "claude", 6) == 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    if (size < 1)
        return 0;
    if (g_meter == NULL) {
        g_meter = tg_meter_create(err, sizeof err);
        TG_FUZZ_CHECK(g_meter != NULL);
    }
    tg_meter_encoding_t enc = data[0] & 1 ? TG_METER_O200K_BASE : TG_METER_CL100K_BASE;
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    switch ((data[0] >> 1) & 3) {
    case 0:
    case 1: tokens(enc, text, n); break;
    case 2: chat(text, n, enc == TG_METER_O200K_BASE ? "gpt-4o" : NULL); break;
    default: chat(text, n, "claude-3-5-sonnet"); break;
    }
    return 0;
}
