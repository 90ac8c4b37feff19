/* sse_fuzz.c: libFuzzer target for the SSE splitter and the stream event
 * readers (sse.c). The first byte picks an event size limit and how the
 * bytes are cut into reads; the rest is what an upstream sent. The events
 * must not depend on how the bytes were cut (fed at once or in pieces);
 * each event goes through tg_sse_chunk and tg_sse_resp_event, whose usage
 * pointers must lie inside the event and be valid JSON. The same bytes as
 * a JSON answer go through tg_agent_answer and tg_sse_from_answer, whose
 * events must read back as the stream the client asked for; the usage
 * counts the answer's one pass reads must be tg_agent_usage_parse's of
 * the usage object's text, under the same vendor's names.
 */
#include <stdint.h>
#include <string.h>

#include "agent/agent_int.h"
#include "agent/json.h"
#include "proto/tg_proto.h"
#include "tests/fuzz/fuzz.h"

typedef struct evs {
    tg_buf_t e_all; /* every event, each followed by a separator byte */
    long e_count;
} evs_t;

static void within(const char *ev, size_t evlen, const char *p, size_t n)
{
    if (p == NULL)
        return;
    TG_FUZZ_CHECK(p >= ev && n <= evlen && (size_t)(p - ev) <= evlen - n);
    TG_FUZZ_CHECK(tg_json_valid(p, n, NULL, 0) == 0);
    tg_usage_t u = {-1, -1, -1, -1};
    (void)tg_agent_usage_parse(p, n, NULL, &u);
}

static int on_event(void *arg, const char *ev, size_t evlen)
{
    evs_t *e = arg;
    TG_FUZZ_CHECK(evlen > 0);
    if (tg_buf_append(&e->e_all, ev, evlen) == 0)
        (void)tg_buf_append(&e->e_all, "\xff", 1);
    e->e_count++;

    tg_buf_t text;
    tg_buf_init(&text, 256);
    tg_chunk_t ck;
    int rc = tg_sse_chunk(ev, evlen, &ck, &text);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_AGENT_EJSON);
    if (rc == 0)
        within(ev, evlen, ck.ck_usage, ck.ck_usage_len);
    else
        TG_FUZZ_CHECK(ck.ck_kind == TG_CHUNK_NONE);
    TG_FUZZ_CHECK(text.b_len <= 256);
    tg_resp_event_t re;
    tg_buf_reset(&text);
    rc = tg_sse_resp_event(ev, evlen, &re, &text);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_AGENT_EJSON);
    TG_FUZZ_CHECK(memchr(re.re_type, '\0', sizeof re.re_type) != NULL);
    if (rc == 0)
        within(ev, evlen, re.re_usage, re.re_usage_len);
    else
        TG_FUZZ_CHECK(re.re_usage == NULL);
    tg_buf_free(&text);
    return 0;
}

/* Splits with a limit; returns tg_sse_feed's first error. */
static int split(const char *p, size_t n, size_t max, unsigned step, evs_t *e)
{
    tg_sse_t s;
    tg_sse_init(&s, max);
    tg_buf_init(&e->e_all, 1 << 22);
    e->e_count = 0;
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0;) {
        size_t k = step ? (size_t)(1 + (p[off] & 0xff) % step) : n - off;
        if (k > n - off)
            k = n - off;
        rc = tg_sse_feed(&s, p + off, k, on_event, e);
        off += k;
    }
    tg_sse_free(&s);
    return rc;
}

static void answer(const char *p, size_t n, int kind, int include_usage, const tg_proto_vendor_t *vendor)
{
    tg_answer_t an;
    tg_buf_t text;
    tg_buf_init(&text, 1024);
    int rc = tg_agent_answer(p, n, kind, vendor, &an, &text, NULL, 0);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_AGENT_EJSON);
    if (rc == 0)
        within(p, n, an.an_usage, an.an_usage_len);
    if (rc == 0 && an.an_usage) {
        tg_usage_t u = {-2, -2, -2, -2};
        int v = tg_agent_usage_parse(an.an_usage, an.an_usage_len, vendor, &u);
        TG_FUZZ_CHECK(v == an.an_counts_rc);
        if (v != TG_AGENT_EJSON)
            TG_FUZZ_CHECK(memcmp(&u, &an.an_counts, sizeof u) == 0);
    }
    tg_buf_free(&text);

    tg_buf_t out, tail;
    tg_buf_init(&out, 1 << 22);
    tg_buf_init(&tail, 1 << 22);
    rc = tg_sse_from_answer(p, n, kind, include_usage, &out, &tail);
    if (rc == 0 && kind == TG_ANSWER_CHAT) {
        /* the re-cut stream: chunks that read as chunks, then [DONE] */
        evs_t e;
        TG_FUZZ_CHECK(split(out.b_data ? out.b_data : "", out.b_len, 1 << 22, 0, &e) == 0);
        tg_buf_free(&e.e_all);
        tg_chunk_t ck;
        TG_FUZZ_CHECK(tg_sse_chunk(tail.b_data ? tail.b_data : "", tail.b_len, &ck, NULL) == 0);
        TG_FUZZ_CHECK(ck.ck_kind == TG_CHUNK_DONE);
    } else if (rc == 0 && kind == TG_ANSWER_RESPONSES && tail.b_len > 0) {
        tg_resp_event_t re;
        TG_FUZZ_CHECK(tg_sse_resp_event(tail.b_data, tail.b_len, &re, NULL) == 0);
        TG_FUZZ_CHECK(re.re_final);
    }
    tg_buf_free(&out);
    tg_buf_free(&tail);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t max = (data[0] & 0x80) ? 64 : 1 << 20;
    unsigned step = 1 + (data[0] & 0x3f);
    const char *p = (const char *)data + 1;
    size_t n = size - 1;

    evs_t whole, cut;
    int r1 = split(p, n, max, 0, &whole);
    int r2 = split(p, n, max, step, &cut);
    TG_FUZZ_CHECK(r1 == 0 || r1 == TG_AGENT_ETOOBIG);
    if (r1 == 0 && r2 == 0) {
        TG_FUZZ_CHECK(whole.e_count == cut.e_count);
        TG_FUZZ_CHECK(whole.e_all.b_len == cut.e_all.b_len);
        TG_FUZZ_CHECK(whole.e_all.b_len == 0 || memcmp(whole.e_all.b_data, cut.e_all.b_data, whole.e_all.b_len) == 0);
    }
    tg_buf_free(&whole.e_all);
    tg_buf_free(&cut.e_all);

    /* the vendor row from the first byte's high bits (0 and 9-15: OPENAI_COMPATIBLE's) */
    const tg_proto_vendor_t *vendor = tg_proto_vendor_or_compatible(data[0] >> 4);
    answer(p, n, TG_ANSWER_CHAT, data[0] & 0x40, vendor);
    answer(p, n, TG_ANSWER_RESPONSES, 0, vendor);
    return 0;
}
