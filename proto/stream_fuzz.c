/* stream_fuzz.c: libFuzzer target for the stream converters (stream.c,
 * check.c). The first byte picks the upstream's and the client's protocol,
 * include_usage, a small event limit and how the bytes are cut into reads;
 * the rest is whatever the upstream sent. Whatever it was, what the client
 * got after tg_proto_stream_finish must pass tg_proto_stream_check: a
 * complete stream, or one ended by an error event.
 */
#include <stdint.h>

#include "proto/tg_proto.h"
#include "tests/fuzz/fuzz.h"

/* feed and finish return 0 or one of the codes that end a stream with the
 * client's error event */
static void rc_ok(int rc, const char *err)
{
    int ok = rc == 0 || rc == TG_PROTO_EGRAMMAR || rc == TG_PROTO_EUPSTREAM || rc == TG_PROTO_EJSON ||
             rc == TG_PROTO_ETOOBIG || rc == TG_PROTO_EUNSUPPORTED;
    if (!ok)
        fprintf(stderr, "unexpected %d (%s): %s\n", rc, tg_proto_strerror(rc), err);
    TG_FUZZ_CHECK(ok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    tg_proto_stream_opts_t o = {0};
    o.so_from = (data[0] & 1) ? TG_PROTO_ANTHROPIC : TG_PROTO_OPENAI;
    o.so_to = (data[0] & 2) ? TG_PROTO_ANTHROPIC : TG_PROTO_OPENAI;
    o.so_include_usage = (data[0] >> 2) & 1;
    o.so_max_event = (data[0] & 8) ? 512 : 0;
    o.so_prompt_tokens = 11;
    o.so_model = (data[0] & 16) ? "client-model" : NULL;
    unsigned step = (unsigned)(data[0] >> 5); /* 0: one read */
    const char *p = (const char *)data + 1;
    size_t n = size - 1;

    tg_proto_stream_t *s;
    char err[256] = "";
    TG_FUZZ_CHECK(tg_proto_stream_create(&o, &s, err, sizeof err) == 0);
    tg_buf_t out;
    tg_buf_init(&out, (size_t)1 << 26);
    int rc = 0;
    for (size_t off = 0; off < n;) {
        size_t k = step ? (size_t)(1 + (unsigned char)p[off] % (step * 8)) : n - off;
        if (k > n - off)
            k = n - off;
        rc = tg_proto_stream_feed(s, p + off, k, &out, err, sizeof err);
        rc_ok(rc, err);
        off += k;
    }
    rc = tg_proto_stream_finish(s, &out, err, sizeof err);
    rc_ok(rc, err);
    TG_FUZZ_CHECK(tg_proto_stream_done(s));
    tg_proto_usage_t u;
    tg_proto_stop_t stop;
    tg_proto_stream_result(s, &u, &stop);

    char cerr[256] = "";
    int crc = tg_proto_stream_check(o.so_to, out.b_data ? out.b_data : "", out.b_len, o.so_include_usage, cerr,
                                    sizeof cerr);
    if (crc != 0)
        fprintf(stderr, "client stream not grammatical: %s\n", cerr);
    TG_FUZZ_CHECK(crc == 0);
    tg_buf_free(&out);
    tg_proto_stream_destroy(s);
    return 0;
}
