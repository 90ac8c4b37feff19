/* request_fuzz.c: libFuzzer target for the request converters
 * (tg_proto_parse_request, openai.c, anthropic.c and responses.c). The
 * first byte picks the client's protocol; the rest is its body. A parse
 * returns one of its documented codes; a parsed request is written in every
 * protocol (each write returns 0 or a documented code; Responses is a
 * client-side protocol only, so writing it is EUNSUPPORTED), every written body is JSON, and
 * one written in the protocol it was read from parses again (unless every
 * message was empty: the writers drop empty messages).
 */
#include <jansson.h>
#include <stdint.h>

#include "proto/tg_proto.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    tg_proto_kind_t kind = data[0] % 3 == 2 ? TG_PROTO_RESPONSES : (data[0] & 1) ? TG_PROTO_ANTHROPIC : TG_PROTO_OPENAI;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;

    tg_pool_t *pool = tg_pool_create(4096);
    TG_FUZZ_CHECK(pool != NULL);
    tg_proto_request_t rq;
    char err[256] = "";
    int rc = tg_proto_parse_request(kind, pool, body, len, &rq, err, sizeof err);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_PROTO_EJSON || rc == TG_PROTO_EINVALID || rc == TG_PROTO_EUNSUPPORTED);
    if (rc != 0) {
        TG_FUZZ_CHECK(err[0] != '\0');
        tg_pool_destroy(pool);
        return 0;
    }
    tg_buf_t text;
    tg_buf_init(&text, 1 << 22);
    (void)tg_proto_count_text(&rq, &text);
    tg_buf_free(&text);

    for (int to = 0; to < TG_PROTO_NKINDS; to++) {
        tg_buf_t out;
        tg_buf_init(&out, 1 << 24);
        char werr[256] = "";
        rc = tg_proto_write_request((tg_proto_kind_t)to, &rq, &out, werr, sizeof werr);
        TG_FUZZ_CHECK(rc == 0 || rc == TG_PROTO_EINVALID ||
                      (to == TG_PROTO_RESPONSES && rc == TG_PROTO_EUNSUPPORTED));
        if (rc == 0) {
            json_error_t je;
            json_t *v = json_loadb(out.b_data, out.b_len, 0, &je);
            TG_FUZZ_CHECK(v != NULL);
            json_decref(v);
            /* the writers drop messages without blocks (README), so a
             * request of only empty messages writes "messages": [] */
            size_t full = 0;
            for (size_t i = 0; i < rq.rq_nmsgs; i++)
                full += rq.rq_msgs[i].ms_nblocks > 0;
            if (to == (int)kind && full > 0) {
                tg_proto_request_t again;
                char perr[256] = "";
                int prc = tg_proto_parse_request(kind, pool, out.b_data, out.b_len, &again, perr, sizeof perr);
                if (prc != 0)
                    fprintf(stderr, "re-parse of the written request: %s\n", perr);
                TG_FUZZ_CHECK(prc == 0);
            }
        }
        tg_buf_free(&out);
    }
    tg_pool_destroy(pool);
    return 0;
}
