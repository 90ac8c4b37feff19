/* Unit tests for tg_proto: golden conversions of the recorded-shape fixtures
 * in proto/testdata (request, answer and stream, each direction), the peers'
 * bugs named in proto/README.md one test each, usage and error mappings,
 * streams fed in every split, and allocation failures.
 *
 * Goldens: `TG_PROTO_GOLDEN_DIR=$PWD/proto/testdata bazel run
 * //proto:proto_test` rewrites the expected files instead of comparing
 * (review the diff before committing it). JSON goldens compare as JSON,
 * stream goldens byte for byte with "created" set to 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proto/proto_int.h"

/* ---- helpers --------------------------------------------------------------- */

static char *read_file(const char *name, size_t *len)
{
    char path[256];
    snprintf(path, sizeof path, "proto/testdata/%s", name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return b;
}

static int updating(char *path, size_t len, const char *name)
{
    const char *dir = getenv("TG_PROTO_GOLDEN_DIR");
    if (!dir || !*dir)
        return 0;
    snprintf(path, len, "%s/%s", dir, name);
    return 1;
}

/* The earlier of "created":123 and "created_at":123, or NULL; *klen the
 * key's length with its colon. */
static const char *next_created(const char *p, size_t *klen)
{
    const char *a = strstr(p, "\"created\":"), *b = strstr(p, "\"created_at\":");
    if (b && (!a || b < a)) {
        *klen = 13;
        return b;
    }
    *klen = 10;
    return a;
}

/* "created":123 -> "created":0 (and created_at), so outputs compare across
 * seconds. */
static void zero_created(tg_buf_t *b)
{
    tg_buf_t o;
    tg_buf_init(&o, b->b_max);
    const char *p = b->b_data ? b->b_data : "", *end = p + b->b_len;
    while (p < end) {
        size_t klen;
        const char *k = next_created(p, &klen);
        if (!k) {
            assert_int_equal(tg_buf_append(&o, p, (size_t)(end - p)), 0);
            break;
        }
        k += klen;
        assert_int_equal(tg_buf_append(&o, p, (size_t)(k - p)), 0);
        assert_int_equal(tg_buf_puts(&o, "0"), 0);
        while (k < end && *k >= '0' && *k <= '9')
            k++;
        p = k;
    }
    tg_buf_free(b);
    *b = o;
}

static void golden_json(const char *name, const char *out, size_t len)
{
    char path[512];
    json_t *got = json_loadb(out, len, 0, NULL);
    assert_non_null(got);
    json_object_del(got, "created");
    json_object_del(got, "created_at");
    if (updating(path, sizeof path, name)) {
        assert_int_equal(json_dump_file(got, path, JSON_INDENT(2)), 0);
        json_decref(got);
        return;
    }
    size_t n;
    char *want_text = read_file(name, &n);
    json_t *want = json_loadb(want_text, n, 0, NULL);
    assert_non_null(want);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_INDENT(2));
        print_error("%s differs; got:\n%s\n", name, g);
        free(g);
        fail();
    }
    json_decref(got);
    json_decref(want);
    free(want_text);
}

static void golden_text(const char *name, const char *out, size_t len)
{
    char path[512];
    if (updating(path, sizeof path, name)) {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(out, 1, len, f), len);
        fclose(f);
        return;
    }
    size_t n;
    char *want = read_file(name, &n);
    if (n != len || memcmp(want, out, n) != 0) {
        print_error("%s differs; got:\n%.*s\n", name, (int)len, out);
        fail();
    }
    free(want);
}

static void convert_request(const char *in, tg_proto_kind_t from, tg_proto_kind_t to, const char *want)
{
    size_t n;
    char *body = read_file(in, &n);
    tg_pool_t *pool = tg_pool_create(0);
    tg_proto_request_t rq;
    char err[TG_ERRLEN] = "";
    int rc = tg_proto_parse_request(from, pool, body, n, &rq, err, sizeof err);
    if (rc)
        fail_msg("parse %s: %s", in, err);
    if (to == TG_PROTO_ANTHROPIC && !rq.rq_max_tokens)
        rq.rq_max_tokens = 4096;
    tg_buf_t out;
    tg_buf_init(&out, 1 << 20);
    rc = tg_proto_write_request(to, &rq, &out, err, sizeof err);
    if (rc)
        fail_msg("write %s: %s", in, err);
    golden_json(want, out.b_data, out.b_len);
    tg_buf_free(&out);
    tg_pool_destroy(pool);
    free(body);
}

static void convert_response(const char *in, tg_proto_kind_t from, tg_proto_kind_t to, const char *want)
{
    size_t n;
    char *body = read_file(in, &n);
    tg_pool_t *pool = tg_pool_create(0);
    tg_proto_response_t rs;
    char err[TG_ERRLEN] = "";
    if (tg_proto_parse_response(from, pool, body, n, &rs, err, sizeof err))
        fail_msg("parse %s: %s", in, err);
    tg_buf_t out;
    tg_buf_init(&out, 1 << 20);
    if (tg_proto_write_response(to, &rs, &out, err, sizeof err))
        fail_msg("write %s: %s", in, err);
    golden_json(want, out.b_data, out.b_len);
    tg_buf_free(&out);
    tg_pool_destroy(pool);
    free(body);
}

/* Converts data fed in pieces: cuts[] are the piece lengths (0-terminated;
 * NULL: whole). Returns the output (created zeroed) and the last rc. */
static int stream_convert(const tg_proto_stream_opts_t *o, const char *data, size_t len, const size_t *cuts,
                          tg_buf_t *out, char *err, size_t errlen)
{
    tg_proto_stream_t *s;
    assert_int_equal(tg_proto_stream_create(o, &s, err, errlen), 0);
    tg_buf_init(out, 1 << 22);
    size_t at = 0;
    int rc = 0;
    for (size_t i = 0; cuts && cuts[i] && at < len && !rc; i++) {
        size_t k = cuts[i] < len - at ? cuts[i] : len - at;
        rc = tg_proto_stream_feed(s, data + at, k, out, err, errlen);
        at += k;
    }
    if (!rc && at < len)
        rc = tg_proto_stream_feed(s, data + at, len - at, out, err, errlen);
    if (!rc)
        rc = tg_proto_stream_finish(s, out, err, errlen);
    tg_proto_stream_destroy(s);
    zero_created(out);
    return rc;
}

static tg_proto_stream_opts_t opts(tg_proto_kind_t from, tg_proto_kind_t to)
{
    tg_proto_stream_opts_t o = {.so_from = from, .so_to = to, .so_prompt_tokens = 1190, .so_include_usage = 1};
    return o;
}

/* Converts a fixture whole, byte by byte and in 64 random splits, and
 * checks that all give the same bytes, that pass the client grammar. */
static void stream_all_splits(const tg_proto_stream_opts_t *o, const char *data, size_t len, tg_buf_t *whole)
{
    char err[TG_ERRLEN] = "";
    int rc = stream_convert(o, data, len, NULL, whole, err, sizeof err);
    if (rc)
        fail_msg("convert: %s", err);
    char why[TG_ERRLEN] = "";
    if (tg_proto_stream_check(o->so_to, whole->b_data, whole->b_len, o->so_include_usage, why, sizeof why))
        fail_msg("output breaks the grammar: %s\n%s", why, whole->b_data);
    size_t *cuts = calloc(len + 1, sizeof *cuts);
    assert_non_null(cuts);
    for (size_t i = 0; i < len; i++)
        cuts[i] = 1;
    tg_buf_t b;
    assert_int_equal(stream_convert(o, data, len, cuts, &b, err, sizeof err), 0);
    assert_int_equal(b.b_len, whole->b_len);
    assert_memory_equal(b.b_data, whole->b_data, b.b_len);
    tg_buf_free(&b);
    srand(7);
    for (int round = 0; round < 64; round++) {
        size_t i = 0, left = len;
        while (left) {
            size_t k = 1 + (size_t)rand() % (round % 2 ? 7 : 300);
            if (k > left)
                k = left;
            cuts[i++] = k;
            left -= k;
        }
        cuts[i] = 0;
        assert_int_equal(stream_convert(o, data, len, cuts, &b, err, sizeof err), 0);
        assert_int_equal(b.b_len, whole->b_len);
        assert_memory_equal(b.b_data, whole->b_data, b.b_len);
        tg_buf_free(&b);
    }
    free(cuts);
}

static void convert_stream(const char *in, tg_proto_kind_t from, tg_proto_kind_t to, const char *want)
{
    size_t n;
    char *data = read_file(in, &n);
    tg_proto_stream_opts_t o = opts(from, to);
    tg_buf_t out;
    stream_all_splits(&o, data, n, &out);
    golden_text(want, out.b_data, out.b_len);
    tg_buf_free(&out);
    free(data);
}

/* Converts an inline SSE text; returns rc, output in *out. */
static int sse(tg_proto_kind_t from, tg_proto_kind_t to, int include_usage, const char *text, tg_buf_t *out,
               char *err, size_t errlen)
{
    tg_proto_stream_opts_t o = opts(from, to);
    o.so_include_usage = include_usage;
    return stream_convert(&o, text, strlen(text), NULL, out, err, errlen);
}

#define OA_CHUNK(delta, finish)                                                                                    \
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{"    \
    "\"index\":0,\"delta\":" delta ",\"finish_reason\":" finish "}]}\n\n"
#define OA_ROLE OA_CHUNK("{\"role\":\"assistant\",\"content\":\"\"}", "null")
#define OA_TOOL(idx, rest) OA_CHUNK("{\"tool_calls\":[{\"index\":" #idx "," rest "}]}", "null")

/* ---- golden conversions ---------------------------------------------------- */

static void test_golden_requests(void **state)
{
    (void)state;
    convert_request("anthropic_request.json", TG_PROTO_ANTHROPIC, TG_PROTO_OPENAI, "anthropic_request.to_openai.json");
    convert_request("openai_request.json", TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC, "openai_request.to_anthropic.json");
    /* and back: what a second hop would send */
    convert_request("anthropic_request.to_openai.json", TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC,
                    "anthropic_request.roundtrip.json");
    /* a Responses client on a chat channel (and on an Anthropic one) */
    convert_request("responses_request.json", TG_PROTO_RESPONSES, TG_PROTO_OPENAI, "responses_request.to_openai.json");
    convert_request("responses_request.json", TG_PROTO_RESPONSES, TG_PROTO_ANTHROPIC,
                    "responses_request.to_anthropic.json");
}

static void test_golden_responses(void **state)
{
    (void)state;
    convert_response("openai_response.json", TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC, "openai_response.to_anthropic.json");
    convert_response("anthropic_response.json", TG_PROTO_ANTHROPIC, TG_PROTO_OPENAI, "anthropic_response.to_openai.json");
    convert_response("openai_response.json", TG_PROTO_OPENAI, TG_PROTO_RESPONSES, "openai_response.to_responses.json");
    convert_response("anthropic_response.json", TG_PROTO_ANTHROPIC, TG_PROTO_RESPONSES,
                     "anthropic_response.to_responses.json");
}

static void test_golden_streams(void **state)
{
    (void)state;
    convert_stream("openai_stream.sse", TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC, "openai_stream.to_anthropic.sse");
    convert_stream("anthropic_stream.sse", TG_PROTO_ANTHROPIC, TG_PROTO_OPENAI, "anthropic_stream.to_openai.sse");
    convert_stream("anthropic_stream.sse", TG_PROTO_ANTHROPIC, TG_PROTO_ANTHROPIC, "anthropic_stream.to_anthropic.sse");
    convert_stream("openai_stream.sse", TG_PROTO_OPENAI, TG_PROTO_OPENAI, "openai_stream.to_openai.sse");
    convert_stream("openai_stream.sse", TG_PROTO_OPENAI, TG_PROTO_RESPONSES, "openai_stream.to_responses.sse");
    convert_stream("anthropic_stream.sse", TG_PROTO_ANTHROPIC, TG_PROTO_RESPONSES, "anthropic_stream.to_responses.sse");
}

/* ---- peers' bugs ------------------------------------------------------------- */

/* LiteLLM #25561: name and arguments in one chunk; the arguments survive and
 * the block start carries id and name. */
static void test_name_and_arguments_in_one_chunk(void **state)
{
    (void)state;
    tg_buf_t out;
    char err[TG_ERRLEN] = "";
    int rc = sse(TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC, 0,
                 OA_ROLE OA_TOOL(0, "\"id\":\"call_9\",\"type\":\"function\",\"function\":{\"name\":\"f\","
                                    "\"arguments\":\"{\\\"a\\\":1}\"}")
                     OA_CHUNK("{}", "\"tool_calls\"") "data: [DONE]\n\n",
                 &out, err, sizeof err);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out.b_data, "\"content_block\":{\"type\":\"tool_use\",\"id\":\"call_9\",\"name\":\"f\""));
    assert_non_null(strstr(out.b_data, "{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}"));
    tg_buf_free(&out);
}

/* LiteLLM #34692: a tool call with finish_reason "stop" is still tool_use;
 * finish "tool_calls" without a call is end_turn. */
static void test_stop_reason_follows_tool_blocks(void **state)
{
    (void)state;
    tg_buf_t out;
    char err[TG_ERRLEN] = "";
    assert_int_equal(sse(TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC, 0,
                         OA_ROLE OA_TOOL(0, "\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\","
                                            "\"arguments\":\"{}\"}") OA_CHUNK("{}", "\"stop\"") "data: [DONE]\n\n",
                         &out, err, sizeof err),
                     0);
    assert_non_null(strstr(out.b_data, "\"stop_reason\":\"tool_use\""));
    assert_null(strstr(out.b_data, "end_turn"));
    tg_buf_free(&out);
    assert_int_equal(sse(TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC, 0,
                         OA_ROLE OA_CHUNK("{\"content\":\"hi\"}", "null") OA_CHUNK("{}", "\"tool_calls\"")
                             "data: [DONE]\n\n",
                         &out, err, sizeof err),
                     0);
    assert_non_null(strstr(out.b_data, "\"stop_reason\":\"end_turn\""));
    tg_buf_free(&out);
}

/* LiteLLM #15307, new-api #4321 / #5102: parallel calls interleaved chunk by
 * chunk stay separate blocks, in index order, with their own ids and
 * arguments. */
static void test_parallel_interleaved_calls(void **state)
{
    (void)state;
    tg_buf_t out;
    char err[TG_ERRLEN] = "";
    assert_int_equal(
        sse(TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC, 0,
            OA_ROLE OA_TOOL(0, "\"id\":\"A\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":\"}")
                OA_TOOL(1, "\"id\":\"B\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{\\\"y\\\":\"}")
                    OA_TOOL(2, "\"id\":\"C\",\"type\":\"function\",\"function\":{\"name\":\"h\",\"arguments\":\"\"}")
                        OA_TOOL(0, "\"function\":{\"arguments\":\"1}\"}") OA_TOOL(1, "\"function\":{\"arguments\":\"2}\"}")
                            OA_TOOL(2, "\"function\":{\"arguments\":\"{}\"}") OA_CHUNK("{}", "\"tool_calls\"")
                                "data: [DONE]\n\n",
            &out, err, sizeof err),
        0);
    const char *a = strstr(out.b_data, "\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"A\",\"name\":\"f\"");
    const char *b = strstr(out.b_data, "\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"B\",\"name\":\"g\"");
    const char *c = strstr(out.b_data, "\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"C\",\"name\":\"h\"");
    assert_true(a && b && c && a < b && b < c);
    /* A streamed live; B and C held and sent whole */
    assert_non_null(strstr(a, "\"partial_json\":\"{\\\"x\\\":\""));
    assert_true(strstr(a, "\"partial_json\":\"1}\"") < b);
    assert_non_null(strstr(b, "\"partial_json\":\"{\\\"y\\\":2}\""));
    assert_non_null(strstr(c, "\"partial_json\":\"{}\""));
    tg_buf_free(&out);
}

/* Anthropic upstream, OpenAI client: calls keep indices 0, 1 and their ids;
 * the first delta of each has id, type and name, later ones only arguments
 * (the grammar checker asserts the rest). */
static void test_openai_tool_indices_stable(void **state)
{
    (void)state;
    size_t n;
    char *data = read_file("anthropic_stream.sse", &n);
    tg_proto_stream_opts_t o = opts(TG_PROTO_ANTHROPIC, TG_PROTO_OPENAI);
    tg_buf_t out;
    stream_all_splits(&o, data, n, &out);
    assert_non_null(strstr(out.b_data, "{\"index\":0,\"id\":\"toolu_01A\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\""));
    assert_non_null(strstr(out.b_data, "{\"index\":1,\"id\":\"toolu_01B\",\"type\":\"function\""));
    assert_non_null(strstr(out.b_data, "\"finish_reason\":\"tool_calls\""));
    assert_non_null(strstr(out.b_data, "\"choices\":[],\"usage\":{\"prompt_tokens\":1204,"));
    tg_buf_free(&out);
    free(data);
}

/* Portkey #457: every system prompt kept, in order, both ways. */
static void test_multiple_system_prompts(void **state)
{
    (void)state;
    const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"one\"},"
                       "{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"system\",\"content\":\"two\"},"
                       "{\"role\":\"developer\",\"content\":\"three\"}]}";
    tg_pool_t *pool = tg_pool_create(0);
    tg_proto_request_t rq;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_proto_parse_request(TG_PROTO_OPENAI, pool, body, strlen(body), &rq, err, sizeof err), 0);
    assert_int_equal(rq.rq_nsystem, 3);
    assert_string_equal(rq.rq_system[2], "three");
    rq.rq_max_tokens = 10;
    tg_buf_t out;
    tg_buf_init(&out, 1 << 16);
    assert_int_equal(tg_proto_write_request(TG_PROTO_ANTHROPIC, &rq, &out, err, sizeof err), 0);
    assert_non_null(strstr(out.b_data, "\"system\":[{\"type\":\"text\",\"text\":\"one\"},{\"type\":\"text\",\"text\":\"two\"},"
                                       "{\"type\":\"text\",\"text\":\"three\"}]"));
    tg_proto_request_t back;
    assert_int_equal(tg_proto_parse_request(TG_PROTO_ANTHROPIC, pool, out.b_data, out.b_len, &back, err, sizeof err), 0);
    tg_buf_reset(&out);
    assert_int_equal(tg_proto_write_request(TG_PROTO_OPENAI, &back, &out, err, sizeof err), 0);
    assert_non_null(strstr(out.b_data, "{\"role\":\"system\",\"content\":\"one\"},{\"role\":\"system\",\"content\":\"two\"},"
                                       "{\"role\":\"system\",\"content\":\"three\"}"));
    tg_buf_free(&out);
    tg_pool_destroy(pool);
}

/* claude-code-router #866: thinking signatures and redacted thinking come
 * back unchanged, through an OpenAI-shaped hop too. */
static void test_thinking_signatures(void **state)
{
    (void)state;
    size_t n;
    char *body = read_file("anthropic_request.json", &n);
    tg_pool_t *pool = tg_pool_create(0);
    tg_proto_request_t rq, back;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_proto_parse_request(TG_PROTO_ANTHROPIC, pool, body, n, &rq, err, sizeof err), 0);
    tg_buf_t out;
    tg_buf_init(&out, 1 << 20);
    assert_int_equal(tg_proto_write_request(TG_PROTO_OPENAI, &rq, &out, err, sizeof err), 0);
    assert_int_equal(tg_proto_parse_request(TG_PROTO_OPENAI, pool, out.b_data, out.b_len, &back, err, sizeof err), 0);
    const tg_proto_block_t *b = back.rq_msgs[1].ms_blocks;
    assert_int_equal(b[0].bl_type, TG_PROTO_BLOCK_THINKING);
    assert_string_equal(b[0].bl_signature, "EqQBCkgIARABGAIiQL2sig==");
    assert_string_equal(b[0].bl_text, "I need both cities' weather.");
    assert_int_equal(b[1].bl_type, TG_PROTO_BLOCK_REDACTED_THINKING);
    assert_string_equal(b[1].bl_data, "EmwKAhgBEgy3redacted==");
    tg_buf_reset(&out);
    back.rq_max_tokens = 1024;
    assert_int_equal(tg_proto_write_request(TG_PROTO_ANTHROPIC, &back, &out, err, sizeof err), 0);
    assert_non_null(strstr(out.b_data, "{\"type\":\"thinking\",\"thinking\":\"I need both cities' weather.\","
                                       "\"signature\":\"EqQBCkgIARABGAIiQL2sig==\"},{\"type\":\"redacted_thinking\","
                                       "\"data\":\"EmwKAhgBEgy3redacted==\"}"));
    tg_buf_free(&out);
    /* in a stream, Anthropic to Anthropic: signature_delta intact */
    char *data = read_file("anthropic_stream.sse", &n);
    tg_proto_stream_opts_t o = opts(TG_PROTO_ANTHROPIC, TG_PROTO_ANTHROPIC);
    assert_int_equal(stream_convert(&o, data, n, NULL, &out, err, sizeof err), 0);
    assert_non_null(strstr(out.b_data, "{\"type\":\"signature_delta\",\"signature\":\"EqQBCkgIARABGAIiQL2sig==\"}"));
    tg_buf_free(&out);
    free(data);
    free(body);
    tg_pool_destroy(pool);
}

/* A three-turn tool chain with is_error: OpenAI gets each result as a tool
 * message right after the calls; back in Anthropic they are one user turn. */
static void test_three_turn_tool_chain(void **state)
{
    (void)state;
    size_t n;
    char *body = read_file("anthropic_request.json", &n);
    tg_pool_t *pool = tg_pool_create(0);
    tg_proto_request_t rq;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_proto_parse_request(TG_PROTO_ANTHROPIC, pool, body, n, &rq, err, sizeof err), 0);
    assert_int_equal(rq.rq_nmsgs, 5);
    const tg_proto_block_t *r = &rq.rq_msgs[2].ms_blocks[1];
    assert_int_equal(r->bl_type, TG_PROTO_BLOCK_TOOL_RESULT);
    assert_true(r->bl_is_error);
    assert_string_equal(r->bl_parts[0].bl_text, "weather service timeout");
    assert_false(rq.rq_msgs[2].ms_blocks[0].bl_is_error);
    tg_buf_t out;
    tg_buf_init(&out, 1 << 20);
    assert_int_equal(tg_proto_write_request(TG_PROTO_OPENAI, &rq, &out, err, sizeof err), 0);
    json_t *root = json_loadb(out.b_data, out.b_len, 0, NULL);
    json_t *msgs = json_object_get(root, "messages");
    /* system x2, user, assistant, tool, tool, assistant, tool, user */
    assert_int_equal(json_array_size(msgs), 9);
    static const char *const roles[] = {"system", "system", "user", "assistant", "tool", "tool", "assistant", "tool", "user"};
    for (size_t i = 0; i < 9; i++)
        assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, i), "role")), roles[i]);
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 5), "tool_call_id")), "toolu_01B");
    json_decref(root);
    tg_buf_free(&out);
    free(body);
    tg_pool_destroy(pool);
}

/* Images as base64 and by URL, both ways. */
static void test_images(void **state)
{
    (void)state;
    size_t n;
    char *body = read_file("openai_request.json", &n);
    tg_pool_t *pool = tg_pool_create(0);
    tg_proto_request_t rq;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_proto_parse_request(TG_PROTO_OPENAI, pool, body, n, &rq, err, sizeof err), 0);
    const tg_proto_block_t *b = rq.rq_msgs[0].ms_blocks;
    assert_int_equal(b[1].bl_type, TG_PROTO_BLOCK_IMAGE);
    assert_string_equal(b[1].bl_media_type, "image/jpeg");
    assert_string_equal(b[1].bl_data, "/9j/4AAQSkZJRgABAQ==");
    assert_null(b[1].bl_url);
    assert_string_equal(b[2].bl_url, "https://example.com/oslo.jpg");
    tg_buf_t out;
    tg_buf_init(&out, 1 << 20);
    assert_int_equal(tg_proto_write_request(TG_PROTO_ANTHROPIC, &rq, &out, err, sizeof err), 0);
    assert_non_null(strstr(out.b_data, "{\"type\":\"base64\",\"media_type\":\"image/jpeg\",\"data\":\"/9j/4AAQSkZJRgABAQ==\"}"));
    assert_non_null(strstr(out.b_data, "{\"type\":\"url\",\"url\":\"https://example.com/oslo.jpg\"}"));
    tg_proto_request_t back;
    assert_int_equal(tg_proto_parse_request(TG_PROTO_ANTHROPIC, pool, out.b_data, out.b_len, &back, err, sizeof err), 0);
    tg_buf_reset(&out);
    assert_int_equal(tg_proto_write_request(TG_PROTO_OPENAI, &back, &out, err, sizeof err), 0);
    assert_non_null(strstr(out.b_data, "\"url\":\"data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ==\""));
    tg_buf_free(&out);
    free(body);
    tg_pool_destroy(pool);
}

/* ---- usage, stop reasons, errors -------------------------------------------- */

/* OpenAI prompt_tokens include cached tokens, Anthropic input_tokens do not:
 * normalized once, and written back so no cache token counts twice. */
static void test_usage_normalized_once(void **state)
{
    (void)state;
    tg_pool_t *pool = tg_pool_create(0);
    tg_proto_response_t rs;
    char err[TG_ERRLEN] = "";
    size_t n;
    char *body = read_file("openai_response.json", &n);
    assert_int_equal(tg_proto_parse_response(TG_PROTO_OPENAI, pool, body, n, &rs, err, sizeof err), 0);
    assert_true(rs.rs_usage.us_present);
    assert_int_equal(rs.rs_usage.us_input, 1200 - 1024);
    assert_int_equal(rs.rs_usage.us_cache_read, 1024);
    assert_int_equal(rs.rs_usage.us_cache_write, 0);
    assert_int_equal(rs.rs_usage.us_output, 40);
    assert_non_null(strstr(rs.rs_usage.us_raw, "\"cached_tokens\":1024"));
    free(body);
    body = read_file("anthropic_response.json", &n);
    assert_int_equal(tg_proto_parse_response(TG_PROTO_ANTHROPIC, pool, body, n, &rs, err, sizeof err), 0);
    assert_int_equal(rs.rs_usage.us_input, 150);
    assert_int_equal(rs.rs_usage.us_cache_read, 1024);
    assert_int_equal(rs.rs_usage.us_cache_write, 30);
    tg_buf_t out;
    tg_buf_init(&out, 1 << 16);
    assert_int_equal(tg_proto_write_response(TG_PROTO_OPENAI, &rs, &out, err, sizeof err), 0);
    assert_non_null(strstr(out.b_data, "\"prompt_tokens\":1204,\"completion_tokens\":88,\"total_tokens\":1292,"
                                       "\"prompt_tokens_details\":{\"cached_tokens\":1024}"));
    tg_buf_free(&out);
    free(body);
    tg_pool_destroy(pool);
}

/* An OpenAI chat answer "ok" whose usage is completion_tokens 5 and `usage`
 * (members without the braces). */
static void oa_answer(char *body, size_t n, const char *usage)
{
    snprintf(body, n,
             "{\"id\":\"x\",\"model\":\"m\",\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},"
             "\"finish_reason\":\"stop\"}],\"usage\":{\"completion_tokens\":5,%s}}",
             usage);
}

/* proto/vendor.c: each vendor's usage names, and only its own, in JSON
 * answers and in streams. */
static void test_vendor_usage(void **state)
{
    (void)state;
    static const struct {
        int vendor;
        const char *usage;
        int64_t input, cache_read;
    } cases[] = {
        {TG_PROTO_VENDOR_DEEPSEEK, "\"prompt_tokens\":100,\"prompt_cache_hit_tokens\":64,\"prompt_cache_miss_tokens\":36", 36, 64},
        {TG_PROTO_VENDOR_DEEPSEEK, "\"prompt_cache_hit_tokens\":64,\"prompt_cache_miss_tokens\":36", 36, 64},
        {TG_PROTO_VENDOR_DEEPSEEK, "\"prompt_tokens\":100,\"prompt_cache_hit_tokens\":64,"
                                   "\"prompt_tokens_details\":{\"cached_tokens\":10}", 36, 64},
        {TG_PROTO_VENDOR_KIMI, "\"prompt_tokens\":100,\"cached_tokens\":30", 70, 30},
        {TG_PROTO_VENDOR_QWEN, "\"prompt_tokens\":100,\"prompt_tokens_details\":{\"cached_tokens\":20}", 80, 20},
        {TG_PROTO_VENDOR_GLM, "\"prompt_tokens\":100,\"prompt_tokens_details\":{\"cached_tokens\":21}", 79, 21},
        {TG_PROTO_VENDOR_GEMINI, "\"prompt_tokens\":100,\"prompt_tokens_details\":{\"cached_tokens\":22}", 78, 22},
        {TG_PROTO_VENDOR_OPENAI, "\"prompt_tokens\":100,\"prompt_tokens_details\":{\"cached_tokens\":23}", 77, 23},
        /* OPENAI_COMPATIBLE: every name agents read before the vendor types, details first */
        {TG_PROTO_VENDOR_OPENAI_COMPATIBLE, "\"prompt_tokens\":100,\"prompt_cache_hit_tokens\":64", 36, 64},
        {TG_PROTO_VENDOR_OPENAI_COMPATIBLE, "\"prompt_tokens\":100,\"cached_tokens\":30", 70, 30},
        {TG_PROTO_VENDOR_OPENAI_COMPATIBLE, "\"prompt_tokens\":100,\"prompt_cache_hit_tokens\":64,"
                                            "\"prompt_tokens_details\":{\"cached_tokens\":10}", 90, 10},
        /* another vendor's names are not read: all of it is input */
        {TG_PROTO_VENDOR_QWEN, "\"prompt_tokens\":100,\"cached_tokens\":30", 100, 0},
        {TG_PROTO_VENDOR_KIMI, "\"prompt_tokens\":100,\"prompt_cache_hit_tokens\":64", 100, 0},
        {TG_PROTO_VENDOR_OPENAI, "\"prompt_tokens\":100,\"prompt_cache_hit_tokens\":64", 100, 0},
    };
    tg_pool_t *pool = tg_pool_create(0);
    char err[TG_ERRLEN] = "";
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const tg_proto_vendor_t *v = tg_proto_vendor(cases[i].vendor);
        assert_non_null(v);
        assert_int_equal(v->vd_proto, TG_PROTO_OPENAI);
        char body[512];
        oa_answer(body, sizeof body, cases[i].usage);
        tg_proto_response_t rs;
        assert_int_equal(tg_proto_parse_response_vendor(TG_PROTO_OPENAI, v, pool, body, strlen(body), &rs, err, sizeof err), 0);
        assert_int_equal(rs.rs_usage.us_input, cases[i].input);
        assert_int_equal(rs.rs_usage.us_cache_read, cases[i].cache_read);
        assert_int_equal(rs.rs_usage.us_output, 5);
        /* the same usage in an OpenAI stream's usage chunk */
        char sse[1024];
        snprintf(sse, sizeof sse,
                 "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,"
                 "\"delta\":{\"role\":\"assistant\",\"content\":\"ok\"},\"finish_reason\":null}]}\n\n"
                 "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,"
                 "\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
                 "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],"
                 "\"usage\":{\"completion_tokens\":5,%s}}\n\ndata: [DONE]\n\n",
                 cases[i].usage);
        tg_proto_stream_opts_t so = {.so_from = TG_PROTO_OPENAI, .so_to = TG_PROTO_ANTHROPIC, .so_vendor = v};
        tg_proto_stream_t *st;
        assert_int_equal(tg_proto_stream_create(&so, &st, err, sizeof err), 0);
        tg_buf_t out;
        tg_buf_init(&out, 1 << 16);
        assert_int_equal(tg_proto_stream_feed(st, sse, strlen(sse), &out, err, sizeof err), 0);
        assert_int_equal(tg_proto_stream_finish(st, &out, err, sizeof err), 0);
        tg_proto_usage_t u;
        tg_proto_stream_result(st, &u, NULL);
        assert_int_equal(u.us_input, cases[i].input);
        assert_int_equal(u.us_cache_read, cases[i].cache_read);
        char want[64];
        snprintf(want, sizeof want, "\"cache_read_input_tokens\":%lld", (long long)cases[i].cache_read);
        /* in the closing message_delta (message_start's usage says 0 cache reads) */
        const char *md = strstr(out.b_data, "event: message_delta");
        assert_non_null(md);
        assert_non_null(strstr(md, want));
        assert_int_equal(tg_proto_stream_check(TG_PROTO_ANTHROPIC, out.b_data, out.b_len, 0, err, sizeof err), 0);
        tg_buf_free(&out);
        tg_proto_stream_destroy(st);
    }
    assert_null(tg_proto_vendor(0));
    assert_null(tg_proto_vendor(TG_PROTO_NVENDORS));
    assert_int_equal(tg_proto_vendor(TG_PROTO_VENDOR_ANTHROPIC)->vd_proto, TG_PROTO_ANTHROPIC);
    assert_true(tg_proto_vendor(TG_PROTO_VENDOR_OPENAI)->vd_responses);
    assert_false(tg_proto_vendor(TG_PROTO_VENDOR_DEEPSEEK)->vd_responses);
    assert_string_equal(tg_proto_vendor_or_compatible(99)->vd_name, "openai_compatible");
    assert_false(tg_proto_vendor_or_compatible(99)->vd_responses);
    tg_pool_destroy(pool);
}

/* One rule for counts in both usage readers (agent/usage.c): an integer in
 * [0, 2^53], a sum of two within it too; anything else makes the usage
 * invalid (us_invalid: counted locally), never a wrapped or clamped number. */
static void test_usage_counts_bounded(void **state)
{
    (void)state;
    static const struct {
        const char *usage;
        int invalid;
        int64_t input, cache_read;
    } cases[] = {
        {"\"prompt_cache_hit_tokens\":9007199254740992,\"prompt_cache_miss_tokens\":9007199254740992", 1, 0, 0},
        {"\"prompt_cache_hit_tokens\":9223372036854775807,\"prompt_cache_miss_tokens\":9223372036854775807", 1, 0, 0},
        {"\"prompt_tokens\":null,\"prompt_cache_hit_tokens\":7,\"prompt_cache_miss_tokens\":3", 0, 3, 7},
        {"\"prompt_tokens\":10.5,\"prompt_cache_hit_tokens\":7", 1, 0, 0},
        {"\"prompt_tokens\":-10,\"prompt_cache_hit_tokens\":7", 1, 0, 0},
        {"\"prompt_tokens\":9007199254740993", 1, 0, 0},
        {"\"prompt_tokens\":9007199254740992,\"prompt_cache_hit_tokens\":7", 0, 9007199254740985, 7},
    };
    tg_pool_t *pool = tg_pool_create(0);
    char err[TG_ERRLEN] = "";
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[512];
        oa_answer(body, sizeof body, cases[i].usage);
        tg_proto_response_t rs;
        assert_int_equal(tg_proto_parse_response_vendor(TG_PROTO_OPENAI, tg_proto_vendor(TG_PROTO_VENDOR_DEEPSEEK), pool,
                                                        body, strlen(body), &rs, err, sizeof err), 0);
        assert_int_equal(rs.rs_usage.us_invalid, cases[i].invalid);
        if (!cases[i].invalid) {
            assert_int_equal(rs.rs_usage.us_input, cases[i].input);
            assert_int_equal(rs.rs_usage.us_cache_read, cases[i].cache_read);
        }
        assert_true(rs.rs_usage.us_input >= 0 && rs.rs_usage.us_input <= TG_PROTO_COUNT_MAX);
    }
    const char *an = "{\"id\":\"m\",\"model\":\"c\",\"content\":[],\"stop_reason\":\"end_turn\","
                     "\"usage\":{\"input_tokens\":1.5,\"output_tokens\":1}}";
    tg_proto_response_t rs;
    assert_int_equal(tg_proto_parse_response(TG_PROTO_ANTHROPIC, pool, an, strlen(an), &rs, err, sizeof err), 0);
    assert_true(rs.rs_usage.us_invalid);
    tg_pool_destroy(pool);
}

/* An Anthropic passthrough stream and an empty output buffer for it. */
static tg_proto_stream_t *pass_stream(tg_buf_t *out)
{
    char err[TG_ERRLEN] = "";
    tg_proto_stream_opts_t so = {.so_from = TG_PROTO_ANTHROPIC, .so_to = TG_PROTO_ANTHROPIC, .so_passthrough = 1};
    tg_proto_stream_t *st = NULL;
    assert_int_equal(tg_proto_stream_create(&so, &st, err, sizeof err), 0);
    tg_buf_init(out, 1 << 16);
    return st;
}

/* Anthropic to Anthropic with so_passthrough: the client's bytes are the
 * upstream's (spacing, unknown members and events, comments, CRLF), cut
 * anywhere, while usage and stop are read and the grammar checked. */
static void test_stream_passthrough(void **state)
{
    (void)state;
    const char *up =
        ": a comment\r\n"
        "event: message_start\r\n"
        "data: {\"type\": \"message_start\", \"message\": {\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\","
        "\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"x_vendor\":1,"
        "\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":7,\"cache_creation_input_tokens\":2,\"output_tokens\":1}}}\r\n\r\n"
        "event: ping\ndata: {\"type\": \"ping\"}\n\n"
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi  there\"}}\n\n"
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0   }\n\n"
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},"
        "\"usage\":{\"output_tokens\":3}}\n\n"
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    size_t n = strlen(up);
    char err[TG_ERRLEN] = "";
    for (size_t cut = 1; cut <= n; cut += (cut < 40 ? 1 : 97)) {
        tg_buf_t out;
        tg_proto_stream_t *st = pass_stream(&out);
        for (size_t i = 0; i < n; i += cut)
            assert_int_equal(tg_proto_stream_feed(st, up + i, i + cut < n ? cut : n - i, &out, err, sizeof err), 0);
        assert_true(tg_proto_stream_done(st));
        assert_int_equal(tg_proto_stream_finish(st, &out, err, sizeof err), 0);
        assert_int_equal(out.b_len, n);
        assert_memory_equal(out.b_data, up, n);
        tg_proto_usage_t u;
        tg_proto_stop_t stop;
        tg_proto_stream_result(st, &u, &stop);
        assert_int_equal(u.us_input, 10);
        assert_int_equal(u.us_cache_read, 7);
        assert_int_equal(u.us_cache_write, 2);
        assert_int_equal(u.us_output, 3);
        assert_false(u.us_running); /* message_delta's usage came: final */
        assert_int_equal(stop, TG_PROTO_STOP_END_TURN);
        tg_buf_free(&out);
        tg_proto_stream_destroy(st);
    }
    /* a grammar violation (a delta with no block open) ends it with the
     * client's error event in place of the bad event; an upstream error
     * event passes as it came; a cut at the reservation writes the end */
    const char *start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\","
                        "\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n";
    const char *bad = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
                      "\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n";
    const char *uperr = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n";
    const char *open_block = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
                             "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
    for (int k = 0; k < 3; k++) {
        tg_buf_t out;
        tg_proto_stream_t *st = pass_stream(&out);
        assert_int_equal(tg_proto_stream_feed(st, start, strlen(start), &out, err, sizeof err), 0);
        assert_memory_equal(out.b_data, start, strlen(start));
        /* message_start's output_tokens is a running count until message_delta: each
         * end below (violation, upstream error, cut) leaves it marked so */
        tg_proto_usage_t ru;
        tg_proto_stream_result(st, &ru, NULL);
        assert_true(ru.us_present && ru.us_running);
        assert_int_equal(ru.us_output, 1);
        if (k == 0) {
            assert_int_equal(tg_proto_stream_feed(st, bad, strlen(bad), &out, err, sizeof err), TG_PROTO_EGRAMMAR);
            assert_null(strstr(out.b_data, "text_delta"));
            assert_non_null(strstr(out.b_data + strlen(start), "event: error"));
        } else if (k == 1) {
            assert_int_equal(tg_proto_stream_feed(st, uperr, strlen(uperr), &out, err, sizeof err), TG_PROTO_EUPSTREAM);
            assert_string_equal(out.b_data + strlen(start), uperr);
        } else {
            assert_int_equal(tg_proto_stream_feed(st, open_block, strlen(open_block), &out, err, sizeof err), 0);
            assert_int_equal(tg_proto_stream_end(st, TG_PROTO_STOP_MAX_TOKENS, NULL, &out, err, sizeof err), 0);
            assert_non_null(strstr(out.b_data, "\"stop_reason\":\"max_tokens\""));
            assert_int_equal(tg_proto_stream_check(TG_PROTO_ANTHROPIC, out.b_data, out.b_len, 0, err, sizeof err), 0);
        }
        assert_true(tg_proto_stream_done(st));
        tg_buf_free(&out);
        tg_proto_stream_destroy(st);
    }
    tg_proto_stream_opts_t mixed = {.so_from = TG_PROTO_OPENAI, .so_to = TG_PROTO_ANTHROPIC, .so_passthrough = 1};
    tg_proto_stream_t *st = NULL;
    assert_int_equal(tg_proto_stream_create(&mixed, &st, err, sizeof err), TG_PROTO_EINVALID);
    assert_null(st);
}

/* Passthrough bytes that belong to no event leave with the feed that
 * brought them: a keep-alive comment, the LF of a CR LF split across reads
 * (also after message_stop); a line cut by the EOF is never forwarded. */
static void test_stream_passthrough_idle_bytes(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    const char *start = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\","
                        "\"model\":\"c\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\r\n\r";
    const char *stop = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},"
                       "\"usage\":{\"output_tokens\":1}}\n\nevent: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r";
    const char *feeds[] = {start, "\n", ": keep-alive\n\n", "\n", stop, "\n"};
    tg_proto_stream_opts_t so = {.so_from = TG_PROTO_ANTHROPIC, .so_to = TG_PROTO_ANTHROPIC, .so_passthrough = 1};
    tg_proto_stream_t *st;
    assert_int_equal(tg_proto_stream_create(&so, &st, err, sizeof err), 0);
    tg_buf_t out;
    tg_buf_init(&out, 1 << 16);
    size_t sent = 0;
    for (size_t i = 0; i < sizeof feeds / sizeof feeds[0]; i++) {
        assert_int_equal(tg_proto_stream_feed(st, feeds[i], strlen(feeds[i]), &out, err, sizeof err), 0);
        sent += strlen(feeds[i]);
        assert_int_equal(out.b_len, sent); /* every byte out in the feed that brought it */
    }
    assert_true(tg_proto_stream_done(st));
    assert_int_equal(tg_proto_stream_finish(st, &out, err, sizeof err), 0);
    assert_int_equal(out.b_len, sent);
    tg_buf_free(&out);
    tg_proto_stream_destroy(st);

    /* the EOF cuts a line: it is not forwarded, the stream ends with the error event */
    assert_int_equal(tg_proto_stream_create(&so, &st, err, sizeof err), 0);
    tg_buf_init(&out, 1 << 16);
    const char *cut = "event: ping\ndata: {\"type\":\"ping\"}\ndata: {\"cut_by_eof";
    assert_int_equal(tg_proto_stream_feed(st, start, strlen(start), &out, err, sizeof err), 0);
    assert_int_equal(tg_proto_stream_feed(st, "\n", 1, &out, err, sizeof err), 0);
    assert_int_equal(tg_proto_stream_feed(st, cut, strlen(cut), &out, err, sizeof err), 0);
    assert_int_equal(out.b_len, strlen(start) + 1);
    assert_int_equal(tg_proto_stream_finish(st, &out, err, sizeof err), TG_PROTO_EUPSTREAM);
    assert_non_null(strstr(out.b_data, "event: ping\ndata: {\"type\":\"ping\"}\n")); /* its whole lines count */
    assert_null(strstr(out.b_data, "cut_by_eof"));
    assert_non_null(strstr(out.b_data + strlen(start) + 1, "event: error"));
    tg_buf_free(&out);
    tg_proto_stream_destroy(st);
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* Passthrough checks the upstream's own events, not their re-encoding:
 * a gapped index, end_turn beside a tool_use block, a second message_delta
 * end the stream with the client's error event in place of the bad event;
 * a server-tool block and an unknown event pass as they came. */
static void test_stream_passthrough_checks_upstream(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    const char *start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\","
                        "\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n";
#define BSTART(i, t) "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":" #i \
                     ",\"content_block\":" t "}\n\n"
#define BSTOP(i) "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":" #i "}\n\n"
#define MDELTA(sr) "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"" sr "\"}," \
                   "\"usage\":{\"output_tokens\":3}}\n\n"
#define MSTOP "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
#define TEXT "{\"type\":\"text\",\"text\":\"\"}"
#define TOOL "{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}"
#define SRV "{\"type\":\"server_tool_use\",\"id\":\"s\",\"name\":\"web_search\",\"input\":{}}"
    static const struct {
        const char *body, *bad; /* bad: the event replaced by the error event, or NULL */
    } cases[] = {
        {BSTART(1, TEXT), BSTART(1, TEXT)},                                 /* index 0 skipped */
        {BSTART(0, TOOL) BSTOP(0) MDELTA("end_turn"), MDELTA("end_turn")}, /* end_turn beside tool_use */
        {BSTART(0, TEXT) BSTOP(0) MDELTA("end_turn") MDELTA("end_turn"), NULL},
        {BSTART(0, SRV) BSTOP(0) BSTART(1, TEXT) BSTOP(1) "event: vendor_news\ndata: {\"type\":\"vendor_news\"}\n\n"
         MDELTA("end_turn") MSTOP, NULL},                                   /* passes whole */
        {BSTART(0, TOOL) BSTOP(0) MDELTA("max_tokens") MSTOP, NULL},        /* a tool cut short */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tg_buf_t out;
        tg_proto_stream_t *st = pass_stream(&out);
        assert_int_equal(tg_proto_stream_feed(st, start, strlen(start), &out, err, sizeof err), 0);
        int rc = tg_proto_stream_feed(st, cases[i].body, strlen(cases[i].body), &out, err, sizeof err);
        int ok = i >= 3;
        if (ok) {
            assert_int_equal(rc, 0);
            assert_true(tg_proto_stream_done(st));
            assert_int_equal(out.b_len, strlen(start) + strlen(cases[i].body)); /* byte for byte */
        } else {
            assert_int_equal(rc, TG_PROTO_EGRAMMAR);
            assert_non_null(strstr(out.b_data, "event: error"));
            assert_int_equal(count_of(out.b_data, "event: message_delta"), i == 2 ? 1 : 0);
            if (cases[i].bad)
                assert_null(strstr(out.b_data + strlen(start), cases[i].bad));
        }
        tg_buf_free(&out);
        tg_proto_stream_destroy(st);
    }
#undef BSTART
#undef BSTOP
#undef MDELTA
#undef MSTOP
#undef TEXT
#undef TOOL
#undef SRV
}

/* The reservation cut in passthrough follows the bytes the client has: an
 * open server-tool block (skipped by the decoder) or a text block after one
 * closes with the upstream's own index; after the upstream's message_delta
 * only message_stop follows. */
static void test_stream_passthrough_cut(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    const char *start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\","
                        "\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n";
    const char *srv = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
                      "\"content_block\":{\"type\":\"server_tool_use\",\"id\":\"s\",\"name\":\"web_search\",\"input\":{}}}\n\n";
    const char *srv_stop = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
    const char *text1 = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,"
                        "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
                        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,"
                        "\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n";
    const char *text1_stop = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n";
    const char *delta = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},"
                        "\"usage\":{\"output_tokens\":5}}\n\n";
    static const struct {
        int parts; /* how many of the upstream's pieces before the cut */
        const char *want_tail;
    } cases[] = {
        {2, "{\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta"}, /* server tool open */
        {4, "{\"type\":\"content_block_stop\",\"index\":1}\n\nevent: message_delta"}, /* text after it open */
        {6, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"},                /* after message_delta */
    };
    const char *pieces[] = {start, srv, srv_stop, text1, text1_stop, delta};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tg_buf_t out;
        tg_proto_stream_t *st = pass_stream(&out);
        for (int k = 0; k < cases[i].parts; k++)
            assert_int_equal(tg_proto_stream_feed(st, pieces[k], strlen(pieces[k]), &out, err, sizeof err), 0);
        size_t before = out.b_len;
        assert_int_equal(tg_proto_stream_end(st, TG_PROTO_STOP_MAX_TOKENS, NULL, &out, err, sizeof err), 0);
        assert_non_null(strstr(out.b_data + before, cases[i].want_tail));
        assert_int_equal(count_of(out.b_data, "event: message_delta"), 1);
        assert_int_equal(count_of(out.b_data, "event: message_stop"), 1);
        assert_int_equal(count_of(out.b_data, "event: content_block_start"), count_of(out.b_data, "event: content_block_stop"));
        assert_true(tg_proto_stream_done(st));
        tg_buf_free(&out);
        tg_proto_stream_destroy(st);
    }
}

static void test_stop_reasons(void **state)
{
    (void)state;
    static const struct {
        const char *an, *oa, *an_back;
    } map[] = {
        {"end_turn", "stop", "end_turn"},          {"max_tokens", "length", "max_tokens"},
        {"stop_sequence", "stop", "end_turn"},     {"refusal", "content_filter", "refusal"},
        {"pause_turn", "stop", "end_turn"},        {"tool_use", "stop", "end_turn"}, /* no tool block */
    };
    tg_pool_t *pool = tg_pool_create(0);
    char err[TG_ERRLEN] = "";
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"id\":\"m\",\"model\":\"c\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}],\"stop_reason\":\"%s\","
                 "\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}",
                 map[i].an);
        tg_proto_response_t rs, back;
        assert_int_equal(tg_proto_parse_response(TG_PROTO_ANTHROPIC, pool, body, strlen(body), &rs, err, sizeof err), 0);
        tg_buf_t out;
        tg_buf_init(&out, 1 << 16);
        assert_int_equal(tg_proto_write_response(TG_PROTO_OPENAI, &rs, &out, err, sizeof err), 0);
        char want[64];
        snprintf(want, sizeof want, "\"finish_reason\":\"%s\"", map[i].oa);
        if (!strstr(out.b_data, want))
            fail_msg("%s: %s", map[i].an, out.b_data);
        assert_int_equal(tg_proto_parse_response(TG_PROTO_OPENAI, pool, out.b_data, out.b_len, &back, err, sizeof err), 0);
        tg_buf_reset(&out);
        assert_int_equal(tg_proto_write_response(TG_PROTO_ANTHROPIC, &back, &out, err, sizeof err), 0);
        snprintf(want, sizeof want, "\"stop_reason\":\"%s\"", map[i].an_back);
        if (!strstr(out.b_data, want))
            fail_msg("%s back: %s", map[i].an, out.b_data);
        tg_buf_free(&out);
    }
    tg_pool_destroy(pool);
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        tg_proto_errtype_t t;
        const char *an;
        int an_status, oa_status;
    } map[] = {
        {TG_PROTO_ERR_INVALID_REQUEST, "invalid_request_error", 400, 400},
        {TG_PROTO_ERR_AUTHENTICATION, "authentication_error", 401, 401},
        {TG_PROTO_ERR_PERMISSION, "permission_error", 403, 403},
        {TG_PROTO_ERR_NOT_FOUND, "not_found_error", 404, 404},
        {TG_PROTO_ERR_REQUEST_TOO_LARGE, "request_too_large", 413, 413},
        {TG_PROTO_ERR_RATE_LIMIT, "rate_limit_error", 429, 429},
        {TG_PROTO_ERR_API, "api_error", 500, 500},
        {TG_PROTO_ERR_OVERLOADED, "overloaded_error", 529, 503},
        {TG_PROTO_ERR_BILLING, "billing_error", 402, 402},
    };
    tg_pool_t *pool = tg_pool_create(0);
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        assert_int_equal(tg_proto_errtype_status(TG_PROTO_ANTHROPIC, map[i].t), map[i].an_status);
        assert_int_equal(tg_proto_errtype_status(TG_PROTO_OPENAI, map[i].t), map[i].oa_status);
        assert_int_equal(tg_proto_errtype_from_status(map[i].an_status), map[i].t);
        char body[256];
        snprintf(body, sizeof body, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"m%zu\"}}", map[i].an, i);
        tg_proto_errinfo_t e;
        assert_int_equal(tg_proto_parse_error(TG_PROTO_ANTHROPIC, pool, 400, body, strlen(body), &e), 0);
        assert_int_equal(e.pe_type, map[i].t);
        tg_buf_t out;
        tg_buf_init(&out, 4096);
        assert_int_equal(tg_proto_write_error(TG_PROTO_ANTHROPIC, &e, &out), 0);
        assert_string_equal(out.b_data, body);
        tg_buf_reset(&out);
        assert_int_equal(tg_proto_write_error(TG_PROTO_OPENAI, &e, &out), 0);
        assert_non_null(strstr(out.b_data, "{\"error\":{\"message\":\"m"));
        tg_proto_errinfo_t back;
        assert_int_equal(
            tg_proto_parse_error(TG_PROTO_OPENAI, pool, map[i].oa_status, out.b_data, out.b_len, &back), 0);
        assert_int_equal(back.pe_type, map[i].t);
        tg_buf_free(&out);
    }
    /* OpenAI's 429 insufficient_quota is a billing error; a non-JSON body
     * keeps its text */
    const char *q = "{\"error\":{\"message\":\"You exceeded your current quota\",\"type\":\"insufficient_quota\","
                    "\"param\":null,\"code\":\"insufficient_quota\"}}";
    tg_proto_errinfo_t e;
    assert_int_equal(tg_proto_parse_error(TG_PROTO_OPENAI, pool, 429, q, strlen(q), &e), 0);
    assert_int_equal(e.pe_type, TG_PROTO_ERR_BILLING);
    assert_int_equal(tg_proto_errtype_status(TG_PROTO_ANTHROPIC, e.pe_type), 402);
    assert_int_equal(tg_proto_parse_error(TG_PROTO_ANTHROPIC, pool, 502, "<html>bad gateway", 17, &e), 0);
    assert_int_equal(e.pe_type, TG_PROTO_ERR_API);
    assert_string_equal(e.pe_message, "<html>bad gateway");
    tg_pool_destroy(pool);
}

/* ---- validation names the field ---------------------------------------------- */

static void test_field_errors(void **state)
{
    (void)state;
    static const struct {
        tg_proto_kind_t k;
        const char *body, *err;
        int rc;
    } cases[] = {
        {TG_PROTO_ANTHROPIC,
         "{\"model\":\"c\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\","
         "\"content\":\"b\"},{\"role\":\"user\",\"content\":[{\"type\":\"foo\"}]}]}",
         "messages[2].content[0].type: unknown block type 'foo'", TG_PROTO_EINVALID},
        {TG_PROTO_ANTHROPIC, "{\"model\":\"c\",\"messages\":[]}", "max_tokens: Field required", TG_PROTO_EINVALID},
        {TG_PROTO_ANTHROPIC,
         "{\"model\":\"c\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"document\"}]}]}",
         "messages[0].content[0].type: block type 'document' does not convert", TG_PROTO_EUNSUPPORTED},
        {TG_PROTO_ANTHROPIC,
         "{\"model\":\"c\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
         "\"tool_use_id\":\"t\",\"content\":[{\"type\":\"text\"}]}]}]}",
         "messages[0].content[0].content[0].text: expected a string", TG_PROTO_EINVALID},
        {TG_PROTO_OPENAI, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\"}]}]}",
         "messages[0].content[0].type: unsupported part type 'input_audio'", TG_PROTO_EUNSUPPORTED},
        {TG_PROTO_OPENAI, "{\"model\":\"m\",\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}",
         "messages[0].tool_call_id: expected a string", TG_PROTO_EINVALID},
        {TG_PROTO_OPENAI, "{\"model\":\"m\",\"n\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         "n: only one choice converts", TG_PROTO_EUNSUPPORTED},
        {TG_PROTO_OPENAI, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"model\":\"n\"}", NULL,
         TG_PROTO_EJSON},
    };
    tg_pool_t *pool = tg_pool_create(0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[TG_ERRLEN] = "";
        tg_proto_request_t rq;
        int rc = tg_proto_parse_request(cases[i].k, pool, cases[i].body, strlen(cases[i].body), &rq, err, sizeof err);
        if (rc != cases[i].rc || (cases[i].err && strcmp(err, cases[i].err) != 0))
            fail_msg("case %zu: rc %d (%s), err '%s'", i, rc, tg_proto_strerror(rc), err);
    }
    /* Anthropic upstream without max_tokens: the writer says so */
    const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    tg_proto_request_t rq;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_proto_parse_request(TG_PROTO_OPENAI, pool, body, strlen(body), &rq, err, sizeof err), 0);
    tg_buf_t out;
    tg_buf_init(&out, 4096);
    assert_int_equal(tg_proto_write_request(TG_PROTO_ANTHROPIC, &rq, &out, err, sizeof err), TG_PROTO_EINVALID);
    assert_int_equal(out.b_len, 0);
    tg_buf_free(&out);
    tg_pool_destroy(pool);
}

/* ---- stream failures ------------------------------------------------------------ */

/* An upstream cut before its end: the client gets its protocol's error
 * event, and the grammar still holds (an error ends a stream anywhere). */
static void test_cut_streams(void **state)
{
    (void)state;
    size_t n;
    char *data = read_file("anthropic_stream.sse", &n);
    char err[TG_ERRLEN] = "";
    tg_buf_t out;
    tg_proto_stream_opts_t o = opts(TG_PROTO_ANTHROPIC, TG_PROTO_OPENAI);
    assert_int_equal(stream_convert(&o, data, n / 2, NULL, &out, err, sizeof err), TG_PROTO_EUPSTREAM);
    assert_non_null(strstr(out.b_data, "data: {\"error\":{\"message\":\"upstream stream ended before message_stop\""));
    assert_int_equal(tg_proto_stream_check(TG_PROTO_OPENAI, out.b_data, out.b_len, 1, err, sizeof err), 0);
    tg_buf_free(&out);
    free(data);
    data = read_file("openai_stream.sse", &n);
    o = opts(TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC);
    err[0] = '\0';
    assert_int_equal(stream_convert(&o, data, n / 2, NULL, &out, err, sizeof err), TG_PROTO_EUPSTREAM);
    assert_string_equal(err, "upstream stream ended before its end");
    assert_non_null(strstr(out.b_data, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\","));
    assert_int_equal(tg_proto_stream_check(TG_PROTO_ANTHROPIC, out.b_data, out.b_len, 0, err, sizeof err), 0);
    tg_buf_free(&out);
    free(data);
    /* finish_reason but no [DONE]: a normal end */
    assert_int_equal(sse(TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC, 0, OA_ROLE OA_CHUNK("{\"content\":\"x\"}", "\"length\""),
                         &out, err, sizeof err),
                     0);
    assert_non_null(strstr(out.b_data, "\"stop_reason\":\"max_tokens\""));
    assert_non_null(strstr(out.b_data, "event: message_stop"));
    tg_buf_free(&out);
}

/* An upstream error event mid-stream becomes the client's error event. */
static void test_upstream_error_event(void **state)
{
    (void)state;
    tg_buf_t out;
    char err[TG_ERRLEN] = "";
    int rc = sse(TG_PROTO_ANTHROPIC, TG_PROTO_OPENAI, 0,
                 "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\","
                 "\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n"
                 "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
                 &out, err, sizeof err);
    assert_int_equal(rc, TG_PROTO_EUPSTREAM);
    assert_non_null(strstr(out.b_data, "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\""));
    tg_buf_free(&out);
}

/* A converter that would break the client grammar ends the stream with an
 * error event instead: an upstream that opens a block while another is open,
 * re-encoded for an Anthropic client. */
static void test_grammar_violation_becomes_error(void **state)
{
    (void)state;
    tg_buf_t out;
    char err[TG_ERRLEN] = "";
    int rc = sse(TG_PROTO_ANTHROPIC, TG_PROTO_ANTHROPIC, 0,
                 "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\","
                 "\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n"
                 "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
                 "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
                 "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
                 &out, err, sizeof err);
    assert_int_equal(rc, TG_PROTO_EGRAMMAR);
    assert_non_null(strstr(err, "index 1 while block 0 is open"));
    const char *e = strstr(out.b_data, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\"");
    assert_non_null(e);
    assert_null(strstr(out.b_data, "\"index\":1")); /* the bad event never left */
    assert_int_equal(tg_proto_stream_check(TG_PROTO_ANTHROPIC, out.b_data, out.b_len, 0, err, sizeof err), 0);
    tg_buf_free(&out);
}

/* The agent's reservation stop: the open block closed, max_tokens, the end. */
static void test_stream_end_at_reservation(void **state)
{
    (void)state;
    tg_proto_stream_opts_t o = opts(TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC);
    tg_proto_stream_t *s;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_proto_stream_create(&o, &s, err, sizeof err), 0);
    tg_buf_t out;
    tg_buf_init(&out, 1 << 16);
    const char *in = OA_ROLE OA_CHUNK("{\"content\":\"partial\"}", "null");
    assert_int_equal(tg_proto_stream_feed(s, in, strlen(in), &out, err, sizeof err), 0);
    tg_proto_usage_t u = {.us_present = 1, .us_input = 1190, .us_output = 7};
    assert_int_equal(tg_proto_stream_end(s, TG_PROTO_STOP_MAX_TOKENS, &u, &out, err, sizeof err), 0);
    assert_true(tg_proto_stream_done(s));
    assert_int_equal(tg_proto_stream_feed(s, in, strlen(in), &out, err, sizeof err), 0); /* no-op */
    assert_non_null(strstr(out.b_data, "\"stop_reason\":\"max_tokens\""));
    assert_int_equal(tg_proto_stream_check(TG_PROTO_ANTHROPIC, out.b_data, out.b_len, 0, err, sizeof err), 0);
    tg_proto_usage_t got;
    tg_proto_stop_t stop;
    tg_proto_stream_result(s, &got, &stop);
    assert_int_equal(got.us_output, 7);
    assert_int_equal(stop, TG_PROTO_STOP_MAX_TOKENS);
    tg_proto_stream_destroy(s);
    tg_buf_free(&out);
}


/* ---- the Responses API as a client protocol ------------------------------ */

static int parse_rs(const char *body, char *err, size_t errlen)
{
    tg_pool_t *pool = tg_pool_create(0);
    tg_proto_request_t rq;
    int rc = tg_proto_parse_request(TG_PROTO_RESPONSES, pool, body, strlen(body), &rq, err, errlen);
    tg_pool_destroy(pool);
    return rc;
}

/* Stateless only, function tools only, each refusal naming its field. */
static void test_responses_refusals(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    assert_int_equal(parse_rs("{\"model\":\"m\",\"input\":\"hi\",\"previous_response_id\":\"resp_1\"}", err, sizeof err),
                     TG_PROTO_EUNSUPPORTED);
    assert_non_null(strstr(err, "previous_response_id"));
    err[0] = '\0';
    assert_int_equal(parse_rs("{\"model\":\"m\",\"input\":\"hi\",\"tools\":[{\"type\":\"function\",\"name\":\"f\"},"
                              "{\"type\":\"web_search_preview\"}]}",
                              err, sizeof err),
                     TG_PROTO_EUNSUPPORTED);
    assert_non_null(strstr(err, "tools[1]: the 'web_search_preview' tool"));
    err[0] = '\0';
    assert_int_equal(parse_rs("{\"model\":\"m\",\"input\":[{\"type\":\"item_reference\",\"id\":\"msg_1\"}]}", err,
                              sizeof err),
                     TG_PROTO_EUNSUPPORTED);
    assert_non_null(strstr(err, "input[0]: item_reference"));
    err[0] = '\0';
    assert_int_equal(parse_rs("{\"model\":\"m\",\"input\":\"hi\",\"conversation\":\"conv_1\"}", err, sizeof err),
                     TG_PROTO_EUNSUPPORTED);
    err[0] = '\0';
    assert_int_equal(parse_rs("{\"model\":\"m\",\"input\":3}", err, sizeof err), TG_PROTO_EINVALID);
    assert_non_null(strstr(err, "input:"));
    err[0] = '\0';
    assert_int_equal(parse_rs("{\"model\":\"m\",\"input\":\"hi\",\"max_output_tokens\":0}", err, sizeof err),
                     TG_PROTO_EINVALID);
    assert_int_equal(parse_rs("{\"model\":\"m\",\"input\":\"hi\",\"store\":true,\"max_output_tokens\":5}", err,
                              sizeof err),
                     0);
    /* an upstream it never is */
    tg_proto_request_t rq = {0};
    tg_buf_t out;
    tg_buf_init(&out, 1 << 16);
    assert_int_equal(tg_proto_write_request(TG_PROTO_RESPONSES, &rq, &out, err, sizeof err), TG_PROTO_EUNSUPPORTED);
    tg_buf_free(&out);
    /* errors in OpenAI's shape and statuses */
    assert_int_equal(tg_proto_errtype_status(TG_PROTO_RESPONSES, TG_PROTO_ERR_OVERLOADED), 503);
}

/* The reservation stop ends a converted Responses stream with
 * response.incomplete (max_output_tokens), the open item closed. */
static void test_responses_end_at_reservation(void **state)
{
    (void)state;
    tg_proto_stream_opts_t o = opts(TG_PROTO_OPENAI, TG_PROTO_RESPONSES);
    tg_proto_stream_t *s;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_proto_stream_create(&o, &s, err, sizeof err), 0);
    tg_buf_t out;
    tg_buf_init(&out, 1 << 16);
    const char *in = OA_ROLE OA_CHUNK("{\"content\":\"partial\"}", "null");
    assert_int_equal(tg_proto_stream_feed(s, in, strlen(in), &out, err, sizeof err), 0);
    assert_int_equal(tg_proto_stream_end(s, TG_PROTO_STOP_MAX_TOKENS, NULL, &out, err, sizeof err), 0);
    assert_true(tg_proto_stream_done(s));
    assert_non_null(strstr(out.b_data, "event: response.incomplete"));
    assert_non_null(strstr(out.b_data, "\"incomplete_details\":{\"reason\":\"max_output_tokens\"}"));
    assert_non_null(strstr(out.b_data, "\"input_tokens\":1190")); /* the local count: no usage came */
    if (tg_proto_stream_check(TG_PROTO_RESPONSES, out.b_data, out.b_len, 0, err, sizeof err))
        fail_msg("%s\n%s", err, out.b_data);
    tg_proto_stream_destroy(s);
    tg_buf_free(&out);
}

/* An upstream error and a cut stream become the Responses error event. */
static void test_responses_stream_errors(void **state)
{
    (void)state;
    tg_buf_t out;
    char err[TG_ERRLEN] = "";
    int rc = sse(TG_PROTO_OPENAI, TG_PROTO_RESPONSES, 0,
                 OA_ROLE OA_CHUNK("{\"content\":\"x\"}", "null") "data: {\"error\":{\"message\":\"boom\"}}\n\n", &out,
                 err, sizeof err);
    assert_int_equal(rc, TG_PROTO_EUPSTREAM);
    assert_non_null(strstr(out.b_data, "event: error\ndata: {\"type\":\"error\""));
    assert_non_null(strstr(out.b_data, "boom"));
    assert_int_equal(tg_proto_stream_check(TG_PROTO_RESPONSES, out.b_data, out.b_len, 0, err, sizeof err), 0);
    tg_buf_free(&out);
    rc = sse(TG_PROTO_OPENAI, TG_PROTO_RESPONSES, 0, OA_ROLE OA_CHUNK("{\"content\":\"x\"}", "null"), &out, err,
             sizeof err);
    assert_int_equal(rc, TG_PROTO_EUPSTREAM);
    assert_int_equal(tg_proto_stream_check(TG_PROTO_RESPONSES, out.b_data, out.b_len, 0, err, sizeof err), 0);
    tg_buf_free(&out);
}

/* The agent's view: usage normalized with the raw object, events counted. */
static void count_text(void *arg, const tg_proto_event_t *ev)
{
    if (ev->ev_type == TG_PROTO_EV_DELTA && ev->ev_delta == TG_PROTO_DELTA_TEXT)
        *(size_t *)arg += ev->ev_len;
}

static void test_stream_result(void **state)
{
    (void)state;
    size_t n, text = 0;
    char *data = read_file("openai_stream.sse", &n);
    tg_proto_stream_opts_t o = opts(TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC);
    o.so_on_event = count_text;
    o.so_arg = &text;
    tg_proto_stream_t *s;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_proto_stream_create(&o, &s, err, sizeof err), 0);
    tg_buf_t out;
    tg_buf_init(&out, 1 << 20);
    assert_int_equal(tg_proto_stream_feed(s, data, n, &out, err, sizeof err), 0);
    assert_int_equal(tg_proto_stream_finish(s, &out, err, sizeof err), 0);
    tg_proto_usage_t u;
    tg_proto_stop_t stop;
    tg_proto_stream_result(s, &u, &stop);
    assert_true(u.us_present);
    assert_int_equal(u.us_input, 176);
    assert_int_equal(u.us_cache_read, 1024);
    assert_int_equal(u.us_output, 40);
    assert_non_null(strstr(u.us_raw, "\"prompt_tokens\":1200"));
    assert_int_equal(stop, TG_PROTO_STOP_TOOL_USE);
    assert_int_equal(text, strlen("Checking both cities."));
    tg_proto_stream_destroy(s);
    tg_buf_free(&out);
    free(data);
}


/* Whatever an upstream sends, the client's stream is grammatical: complete,
 * or ended by an error event. Fixtures with random bytes changed, lines
 * dropped or repeated, in all four directions. */
static void test_mutated_streams_stay_grammatical(void **state)
{
    (void)state;
    static const char *const files[] = {"openai_stream.sse", "anthropic_stream.sse"};
    static const char alphabet[] = "{}[]\":,0123456789abcdefghijklmnopqrstuvwxyz_ \n";
    int failed = 0, whole = 0;
    srand(11);
    for (int f = 0; f < 2; f++) {
        size_t n;
        char *orig = read_file(files[f], &n);
        char *data = malloc(2 * n + 1);
        assert_non_null(data);
        for (int round = 0; round < 600; round++) {
            size_t len = n;
            memcpy(data, orig, n);
            int kind = round % 3;
            if (kind == 0) { /* change a few bytes */
                for (int k = 0; k < 1 + round % 3; k++)
                    data[(size_t)rand() % len] = alphabet[(size_t)rand() % (sizeof alphabet - 1)];
            } else { /* drop (1) or repeat (2) one event */
                size_t at = (size_t)rand() % len;
                const char *st = at ? strstr(orig + at, "\n\n") : orig;
                const char *en = st ? strstr(st + 2, "\n\n") : NULL;
                if (!st || !en)
                    continue;
                size_t a = (size_t)(st - orig) + (at ? 2 : 0), b = (size_t)(en - orig) + 2;
                if (kind == 1) {
                    memmove(data + a, orig + b, n - b);
                    len = n - (b - a);
                } else {
                    memcpy(data + b, orig + a, b - a);
                    memcpy(data + b + (b - a), orig + b, n - b);
                    len = n + (b - a);
                }
            }
            for (int to = 0; to < 2; to++) {
                tg_proto_stream_opts_t o = opts(f == 0 ? TG_PROTO_OPENAI : TG_PROTO_ANTHROPIC, (tg_proto_kind_t)to);
                tg_buf_t out;
                char err[TG_ERRLEN] = "", why[TG_ERRLEN] = "";
                int rc = stream_convert(&o, data, len, NULL, &out, err, sizeof err);
                assert_true(rc <= 0);
                rc ? failed++ : whole++;
                if (tg_proto_stream_check((tg_proto_kind_t)to, out.b_data ? out.b_data : "", out.b_len, 1, why,
                                          sizeof why))
                    fail_msg("round %d %s -> %d: %s (rc %d %s)\n%.*s\n---\n%s", round, files[f], to, why, rc, err,
                             (int)len, data, out.b_data);
                tg_buf_free(&out);
            }
        }
        free(data);
        free(orig);
    }
    print_message("mutated streams: %d ended by an error event, %d complete\n", failed, whole);
    assert_true(failed > 100 && whole > 100);
}

/* ---- count_tokens text, allocation failures ----------------------------------- */

static void test_count_text(void **state)
{
    (void)state;
    const char *body = "{\"model\":\"c\",\"max_tokens\":5,\"system\":\"sys\",\"messages\":[{\"role\":\"user\",\"content\":"
                       "[{\"type\":\"text\",\"text\":\"hello\"},{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"u\"}}]},"
                       "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{\"a\":1}}]}],"
                       "\"tools\":[{\"name\":\"f\",\"description\":\"does f\",\"input_schema\":{\"type\":\"object\"}}]}";
    tg_pool_t *pool = tg_pool_create(0);
    tg_proto_request_t rq;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_proto_parse_request(TG_PROTO_ANTHROPIC, pool, body, strlen(body), &rq, err, sizeof err), 0);
    tg_buf_t out;
    tg_buf_init(&out, 1 << 16);
    assert_int_equal(tg_proto_count_text(&rq, &out), 0);
    assert_string_equal(out.b_data, "sys\nhello\nf\n{\"a\":1}\nf\ndoes f\n{\"type\":\"object\"}");
    tg_buf_free(&out);
    tg_buf_init(&out, 8);
    assert_int_equal(tg_proto_count_text(&rq, &out), TG_PROTO_ETOOBIG);
    assert_int_equal(out.b_len, 0);
    tg_buf_free(&out);
    tg_pool_destroy(pool);
}

/* Every allocation the converter makes through tg_ fails in turn: each run
 * fails cleanly or succeeds, and nothing leaks. */
static void test_alloc_failures(void **state)
{
    (void)state;
    size_t n;
    char *data = read_file("openai_stream.sse", &n);
    long base = tg_alloc_live();
    for (long k = 0; k < 200; k++) {
        tg_proto_stream_opts_t o = opts(TG_PROTO_OPENAI, TG_PROTO_ANTHROPIC);
        tg_proto_stream_t *s = NULL;
        char err[TG_ERRLEN] = "";
        tg_buf_t out;
        tg_buf_init(&out, 1 << 20);
        tg_alloc_fail_after(k);
        if (tg_proto_stream_create(&o, &s, err, sizeof err) == 0) {
            if (tg_proto_stream_feed(s, data, n, &out, err, sizeof err) == 0)
                tg_proto_stream_finish(s, &out, err, sizeof err);
            tg_proto_stream_destroy(s);
        }
        tg_alloc_fail_after(-1);
        tg_buf_free(&out);
        assert_int_equal(tg_alloc_live(), base);
    }
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_requests),
        cmocka_unit_test(test_golden_responses),
        cmocka_unit_test(test_golden_streams),
        cmocka_unit_test(test_name_and_arguments_in_one_chunk),
        cmocka_unit_test(test_stop_reason_follows_tool_blocks),
        cmocka_unit_test(test_parallel_interleaved_calls),
        cmocka_unit_test(test_openai_tool_indices_stable),
        cmocka_unit_test(test_multiple_system_prompts),
        cmocka_unit_test(test_thinking_signatures),
        cmocka_unit_test(test_three_turn_tool_chain),
        cmocka_unit_test(test_images),
        cmocka_unit_test(test_usage_normalized_once),
        cmocka_unit_test(test_vendor_usage),
        cmocka_unit_test(test_stream_passthrough),
        cmocka_unit_test(test_usage_counts_bounded),
        cmocka_unit_test(test_stream_passthrough_idle_bytes),
        cmocka_unit_test(test_stream_passthrough_cut),
        cmocka_unit_test(test_stream_passthrough_checks_upstream),
        cmocka_unit_test(test_stop_reasons),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_field_errors),
        cmocka_unit_test(test_cut_streams),
        cmocka_unit_test(test_upstream_error_event),
        cmocka_unit_test(test_grammar_violation_becomes_error),
        cmocka_unit_test(test_stream_end_at_reservation),
        cmocka_unit_test(test_responses_refusals),
        cmocka_unit_test(test_responses_end_at_reservation),
        cmocka_unit_test(test_responses_stream_errors),
        cmocka_unit_test(test_stream_result),
        cmocka_unit_test(test_mutated_streams_stay_grammatical),
        cmocka_unit_test(test_count_text),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
