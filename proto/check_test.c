/* Unit tests for the stream grammar checkers (check.c), each rule broken
 * once, and for the SSE splitter (line ends, comments, multi-line data). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "proto/proto_int.h"

#define EV(name, json) "event: " name "\ndata: " json "\n\n"
#define START EV("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":0}}}")
#define BSTART(i, cb) EV("content_block_start", "{\"type\":\"content_block_start\",\"index\":" #i ",\"content_block\":" cb "}")
#define TEXT "{\"type\":\"text\",\"text\":\"\"}"
#define TOOL "{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}"
#define DELTA(i, d) EV("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":" #i ",\"delta\":" d "}")
#define TD "{\"type\":\"text_delta\",\"text\":\"x\"}"
#define JD "{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}"
#define BSTOP(i) EV("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":" #i "}")
#define MDELTA(sr) EV("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"" sr "\"},\"usage\":{\"output_tokens\":1}}")
#define MSTOP EV("message_stop", "{\"type\":\"message_stop\"}")

static void an(const char *text, int want, const char *why)
{
    char err[TG_ERRLEN] = "";
    int rc = tg_proto_stream_check(TG_PROTO_ANTHROPIC, text, strlen(text), 0, err, sizeof err);
    if (rc != want || (why && !strstr(err, why)))
        fail_msg("rc %d, err '%s', wanted %d '%s'", rc, err, want, why ? why : "");
}

static void test_anthropic_valid(void **state)
{
    (void)state;
    an(START BSTART(0, TEXT) DELTA(0, TD) BSTOP(0) BSTART(1, TOOL) DELTA(1, JD) BSTOP(1) MDELTA("tool_use") MSTOP, 0,
       NULL);
    an(START EV("ping", "{\"type\":\"ping\"}") MDELTA("end_turn") MSTOP, 0, NULL);
    /* an error ends a stream anywhere */
    an(START BSTART(0, TEXT) EV("error", "{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"x\"}}"), 0,
       NULL);
}

static void test_anthropic_violations(void **state)
{
    (void)state;
    an(BSTART(0, TEXT), TG_PROTO_EGRAMMAR, "event 1 (content_block_start): before message_start");
    an(MDELTA("end_turn"), TG_PROTO_EGRAMMAR, "before message_start");
    an(START START, TG_PROTO_EGRAMMAR, "message_start twice");
    an(START BSTART(0, TEXT) BSTART(1, TEXT), TG_PROTO_EGRAMMAR, "index 1 while block 0 is open");
    an(START BSTART(1, TEXT), TG_PROTO_EGRAMMAR, "index 1 where 0 comes next");
    an(START BSTART(0, TEXT) BSTOP(0) BSTART(2, TEXT), TG_PROTO_EGRAMMAR, "index 2 where 1 comes next");
    an(START BSTART(0, TEXT) DELTA(0, JD), TG_PROTO_EGRAMMAR, "input_json_delta in a block of another kind");
    an(START BSTART(0, TOOL) DELTA(0, TD), TG_PROTO_EGRAMMAR, "text_delta in a block of another kind");
    an(START BSTART(0, TEXT) DELTA(1, TD), TG_PROTO_EGRAMMAR, "delta for index 1, open block 0");
    an(START DELTA(0, TD), TG_PROTO_EGRAMMAR, "delta for index 0, open block -1");
    an(START BSTART(0, TEXT) BSTOP(1), TG_PROTO_EGRAMMAR, "stop for index 1");
    an(START BSTART(0, TEXT) MDELTA("end_turn"), TG_PROTO_EGRAMMAR, "message_delta while block 0 is open");
    an(START BSTART(0, TOOL) BSTOP(0) MDELTA("end_turn"), TG_PROTO_EGRAMMAR, "stop_reason end_turn beside a tool_use");
    an(START MDELTA("tool_use"), TG_PROTO_EGRAMMAR, "stop_reason tool_use without a tool_use");
    an(START MSTOP, TG_PROTO_EGRAMMAR, "message_stop before message_delta");
    an(START MDELTA("end_turn") MDELTA("end_turn"), TG_PROTO_EGRAMMAR, "message_delta twice");
    an(START MDELTA("end_turn") BSTART(0, TEXT), TG_PROTO_EGRAMMAR, "a block after message_delta");
    an(START MDELTA("end_turn") MSTOP MSTOP, TG_PROTO_EGRAMMAR, "after message_stop");
    an(START BSTART(0, "{\"type\":\"tool_use\",\"id\":\"t\",\"input\":{}}"), TG_PROTO_EGRAMMAR,
       "tool_use without its id and name");
    an(EV("message_start", "{\"type\":\"message_start\",\"message\":{\"usage\":{}}}"), TG_PROTO_EGRAMMAR,
       "input_tokens missing");
    an(EV("message_stop", "{\"type\":\"message_start\"}"), TG_PROTO_EGRAMMAR, "does not match the event name");
    an(START BSTART(0, TEXT), TG_PROTO_EGRAMMAR, "the stream ends before message_stop");
    an("event: message_start\ndata: {nope\n\n", TG_PROTO_EJSON, "data is not JSON");
}

#define CH(delta, fin) "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":" delta ",\"finish_reason\":" fin "}]}\n\n"
#define ROLE CH("{\"role\":\"assistant\"}", "null")
#define TC(i, rest) CH("{\"tool_calls\":[{\"index\":" #i rest "}]}", "null")
#define OPEN(i) TC(i, ",\"id\":\"t" #i "\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}")
#define ARGS(i) TC(i, ",\"function\":{\"arguments\":\"{}\"}")
#define USAGE "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"
#define DONE "data: [DONE]\n\n"

static void oa(const char *text, int usage, int want, const char *why)
{
    char err[TG_ERRLEN] = "";
    int rc = tg_proto_stream_check(TG_PROTO_OPENAI, text, strlen(text), usage, err, sizeof err);
    if (rc != want || (why && !strstr(err, why)))
        fail_msg("rc %d, err '%s', wanted %d '%s'", rc, err, want, why ? why : "");
}

static void test_openai_valid(void **state)
{
    (void)state;
    oa(ROLE CH("{\"content\":\"x\"}", "null") CH("{}", "\"stop\"") DONE, 0, 0, NULL);
    oa(ROLE OPEN(0) ARGS(0) OPEN(1) ARGS(1) ARGS(0) CH("{}", "\"tool_calls\"") USAGE DONE, 1, 0, NULL);
    oa(ROLE "data: {\"error\":{\"message\":\"x\",\"type\":\"server_error\"}}\n\n", 0, 0, NULL);
}

static void test_openai_violations(void **state)
{
    (void)state;
    oa(CH("{\"content\":\"x\"}", "null"), 0, TG_PROTO_EGRAMMAR, "the first delta has no role");
    oa(ROLE OPEN(1), 0, TG_PROTO_EGRAMMAR, "tool call index 1 where 0 comes next");
    oa(ROLE TC(0, ",\"function\":{\"arguments\":\"{}\"}"), 0, TG_PROTO_EGRAMMAR,
       "tool call 0 opened without id, type and function.name");
    oa(ROLE TC(0, ",\"id\":\"t\",\"type\":\"function\",\"function\":{\"arguments\":\"\"}"), 0, TG_PROTO_EGRAMMAR,
       "opened without id");
    oa(ROLE OPEN(0) OPEN(0), 0, TG_PROTO_EGRAMMAR, "tool call 0 repeats its id or name");
    oa(ROLE CH("{}", "\"tool_calls\""), 0, TG_PROTO_EGRAMMAR, "finish_reason tool_calls without a tool call");
    oa(ROLE OPEN(0) CH("{}", "\"stop\""), 0, TG_PROTO_EGRAMMAR, "finish_reason stop beside a tool call");
    oa(ROLE CH("{}", "\"stop\"") CH("{\"content\":\"x\"}", "null"), 0, TG_PROTO_EGRAMMAR,
       "a choice after the finish_reason");
    oa(ROLE CH("{}", "\"stop\"") DONE, 1, TG_PROTO_EGRAMMAR, "[DONE] without the usage chunk");
    oa(ROLE CH("{}", "\"stop\"") USAGE DONE, 0, TG_PROTO_EGRAMMAR, "a usage chunk the client did not ask for");
    oa(ROLE USAGE, 1, TG_PROTO_EGRAMMAR, "a usage chunk before the finish_reason");
    oa(ROLE DONE, 0, TG_PROTO_EGRAMMAR, "[DONE] before a finish_reason");
    oa(ROLE CH("{}", "\"stop\"") DONE DONE, 0, TG_PROTO_EGRAMMAR, "after the end");
    oa(ROLE CH("{}", "\"stop\""), 0, TG_PROTO_EGRAMMAR, "the stream ends before [DONE]");
    oa(ROLE "data: {\"id\":\"other\",\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\n", 0, TG_PROTO_EGRAMMAR,
       "id changed");
    oa("data: {\"id\":\"c\",\"object\":\"chat.completion\",\"choices\":[]}\n\n", 0, TG_PROTO_EGRAMMAR,
       "object is not chat.completion.chunk");
}

/* ---- SSE splitter ------------------------------------------------------------------ */

struct seen {
    char buf[512];
};

static int collect(void *arg, const char *event, const char *data, size_t len)
{
    struct seen *s = arg;
    size_t n = strlen(s->buf);
    snprintf(s->buf + n, sizeof s->buf - n, "[%s|%.*s]", event, (int)len, data);
    return 0;
}

static void test_sse_splitter(void **state)
{
    (void)state;
    const char *in = ": comment\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\n"
                     "data: x\rid: 7\r\r"
                     "retry: 5\n\nevent: b\ndata\n\n";
    size_t n = strlen(in);
    /* whole, and byte by byte (a CR LF split between calls is one line end) */
    for (int mode = 0; mode < 2; mode++) {
        struct seen s = {""};
        tg_proto_sse_t p;
        tg_proto__sse_init(&p, 1 << 16);
        if (mode == 0)
            assert_int_equal(tg_proto__sse_feed(&p, in, n, collect, &s, NULL, 0), 0);
        else
            for (size_t i = 0; i < n; i++)
                assert_int_equal(tg_proto__sse_feed(&p, in + i, 1, collect, &s, NULL, 0), 0);
        assert_string_equal(s.buf, "[a|one\ntwo][|x][b|]");
        tg_proto__sse_free(&p);
    }
    /* an event past the maximum */
    struct seen s = {""};
    tg_proto_sse_t p;
    tg_proto__sse_init(&p, 8);
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_proto__sse_feed(&p, "data: 0123456789\n\n", 18, collect, &s, err, sizeof err), TG_PROTO_ETOOBIG);
    tg_proto__sse_free(&p);
}

static void test_strerror(void **state)
{
    (void)state;
    for (int c = TG_PROTO_ELAST + 1; c <= TG_PROTO_EJSON; c++)
        assert_string_not_equal(tg_proto_strerror(c), "unknown error");
    assert_string_equal(tg_proto_strerror(TG_PROTO_ELAST), "unknown error");
    char h[128];
    assert_int_equal(tg_proto_auth_header(TG_PROTO_ANTHROPIC, "sk-1", h, sizeof h), 0);
    assert_string_equal(h, "x-api-key: sk-1");
    assert_int_equal(tg_proto_auth_header(TG_PROTO_OPENAI, "sk-1", h, sizeof h), 0);
    assert_string_equal(h, "Authorization: Bearer sk-1");
    assert_int_equal(tg_proto_auth_header(TG_PROTO_OPENAI, "sk-1", h, 8), TG_PROTO_ETOOBIG);
    assert_string_equal(tg_proto_extra_header(TG_PROTO_ANTHROPIC), "anthropic-version: 2023-06-01");
    assert_null(tg_proto_extra_header(TG_PROTO_OPENAI));
    assert_string_equal(tg_proto_path(TG_PROTO_ANTHROPIC), "/v1/messages");
    assert_string_equal(tg_proto_path(TG_PROTO_OPENAI), "/v1/chat/completions");
    /* a converted stream stays small (10,000 open streams per agent): the
     * tool table is allocated only when a call arrives */
    assert_true(sizeof(tg_proto_stream_t) < 1536);
}

/* ---- Responses ------------------------------------------------------------ */

#define RE(name, seq, rest) "event: " name "\ndata: {\"type\":\"" name "\",\"sequence_number\":" #seq rest "}\n\n"
#define RCREATED RE("response.created", 0, ",\"response\":{\"id\":\"r\",\"status\":\"in_progress\",\"output\":[]}")
#define RADD(seq, i, item) RE("response.output_item.added", seq, ",\"output_index\":" #i ",\"item\":" item)
#define RMSG "{\"id\":\"m\",\"type\":\"message\",\"status\":\"in_progress\",\"content\":[]}"
#define RFC "{\"id\":\"f\",\"type\":\"function_call\",\"call_id\":\"c\",\"name\":\"n\",\"arguments\":\"\"}"
#define RITEM(seq, i, id) ",\"item_id\":\"" id "\",\"output_index\":" #i
#define RPART(name, seq, i) RE(name, seq, RITEM(seq, i, "m") ",\"content_index\":0")
#define RDONE(seq, i, id) RE("response.output_item.done", seq, ",\"output_index\":" #i ",\"item\":{\"id\":\"" id "\",\"status\":\"completed\"}")
#define RARGS(name, seq, i) RE(name, seq, RITEM(seq, i, "f"))
#define REND(seq, n) RE("response.completed", seq, ",\"response\":{\"status\":\"completed\",\"output\":" n ",\"usage\":{}}")

static void rs(const char *text, int want, const char *why)
{
    char err[TG_ERRLEN] = "";
    int rc = tg_proto_stream_check(TG_PROTO_RESPONSES, text, strlen(text), 0, err, sizeof err);
    if (rc != want || (why && !strstr(err, why)))
        fail_msg("rc %d, err '%s', wanted %d '%s'", rc, err, want, why ? why : "");
}

static void test_responses_grammar(void **state)
{
    (void)state;
    rs(RCREATED RADD(1, 0, RMSG) RPART("response.content_part.added", 2, 0) RPART("response.output_text.delta", 3, 0)
           RPART("response.output_text.done", 4, 0) RPART("response.content_part.done", 5, 0) RDONE(6, 0, "m")
               RADD(7, 1, RFC) RARGS("response.function_call_arguments.delta", 8, 1)
                   RARGS("response.function_call_arguments.done", 9, 1) RDONE(10, 1, "f") REND(11, "[{},{}]"),
       0, NULL);
    rs(RADD(1, 0, RMSG), TG_PROTO_EGRAMMAR, "before response.created");
    rs(RCREATED RADD(0, 0, RMSG), TG_PROTO_EGRAMMAR, "sequence_number");
    rs(RCREATED RADD(1, 1, RMSG), TG_PROTO_EGRAMMAR, "output_index 1 where 0 comes next");
    rs(RCREATED RADD(1, 0, RMSG) RADD(2, 1, RMSG), TG_PROTO_EGRAMMAR, "while item 0 is open");
    rs(RCREATED RADD(1, 0, RMSG) RPART("response.output_text.delta", 2, 0), TG_PROTO_EGRAMMAR, "no content part");
    rs(RCREATED RADD(1, 0, RFC) RDONE(2, 0, "f"), TG_PROTO_EGRAMMAR, "before function_call_arguments.done");
    rs(RCREATED RADD(1, 0, RMSG) RARGS("response.function_call_arguments.delta", 2, 0), TG_PROTO_EGRAMMAR,
       "not for the open function_call");
    rs(RCREATED RADD(1, 0, RMSG) REND(2, "[]"), TG_PROTO_EGRAMMAR, "the end while item 0 is open");
    rs(RCREATED REND(1, "[{}]"), TG_PROTO_EGRAMMAR, "response.output has 1 items, 0 were sent");
    rs(RCREATED RADD(1, 0, "{\"id\":\"f\",\"type\":\"function_call\"}"), TG_PROTO_EGRAMMAR, "without its call_id");
    rs(RCREATED, TG_PROTO_EGRAMMAR, "the stream ends before response.completed");
    rs(RCREATED RE("error", 1, ",\"message\":\"x\""), 0, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_anthropic_valid),
        cmocka_unit_test(test_responses_grammar),  cmocka_unit_test(test_anthropic_violations),
        cmocka_unit_test(test_openai_valid),     cmocka_unit_test(test_openai_violations),
        cmocka_unit_test(test_sse_splitter),     cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
