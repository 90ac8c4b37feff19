/* Unit tests of mockllm's pure half: the request scan, the scenario
 * language, the token formula and the answer writers (every body and SSE
 * data line is re-parsed with jansson to prove it is valid JSON of the
 * documented shape). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <jansson.h>

#include "base/tg_base.h"
#include "tools/mockllm/mockllm.h"

static tg_mock_req_t scan_ok(const char *js) {
    tg_mock_req_t rq;
    char err[TG_ERRLEN] = "";
    int rc = tg_mock_scan(js, strlen(js), &rq, err, sizeof err);
    if (rc != 0) fail_msg("scan failed: %s", err);
    return rq;
}

static void test_scan_fields(void **state) {
    (void)state;
    tg_mock_req_t rq = scan_ok(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"abcd\"}],\"model\":\"gpt-4o\","
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_completion_tokens\":7,"
        "\"n\":3,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_w\",\"parameters\":{}}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"other\"}}],\"temperature\":0.5,\"user\":null}");
    assert_string_equal(rq.rq_model, "gpt-4o");
    assert_int_equal(rq.rq_has_model, 1);
    assert_int_equal(rq.rq_stream, 1);
    assert_int_equal(rq.rq_include_usage, 1);
    assert_int_equal(rq.rq_max_tokens, 7);
    assert_int_equal(rq.rq_n, 3);
    assert_int_equal(rq.rq_tools, 2);
    assert_string_equal(rq.rq_tool, "get_w");
    /* "user" + "abcd" + tool strings "function","get_w","function","other" */
    assert_int_equal(rq.rq_prompt_bytes, 4 + 4 + 8 + 5 + 8 + 5);
    /* the tools value verbatim, for Responses answers to echo */
    assert_string_equal(rq.rq_tools_json, "[{\"type\":\"function\",\"function\":{\"name\":\"get_w\",\"parameters\":{}}},"
                                          "{\"type\":\"function\",\"function\":{\"name\":\"other\"}}]");
}

static void test_scan_anthropic_tool_and_escapes(void **state) {
    (void)state;
    tg_mock_req_t rq = scan_ok("{\"model\":\"cl\\u0061ude\",\"system\":\"a\\nb\",\"max_tokens\":50,"
                               "\"tools\":[{\"name\":\"lookup\",\"input_schema\":{}}],"
                               "\"tool_choice\":\"none\",\"stream\":false}");
    assert_string_equal(rq.rq_model, "claude");
    assert_string_equal(rq.rq_tool, "lookup");
    assert_int_equal(rq.rq_tool_choice_none, 1);
    assert_int_equal(rq.rq_stream, 0);
    assert_int_equal(rq.rq_max_tokens, 50);
    /* decoded lengths: "a\nb" is 3 bytes, "lookup" 6 */
    assert_int_equal(rq.rq_prompt_bytes, 3 + 6);
}

static void test_scan_embeddings_inputs(void **state) {
    (void)state;
    tg_mock_req_t rq = scan_ok("{\"model\":\"e\",\"input\":[\"ab\",\"cde\",\"f\"],\"encoding_format\":\"base64\","
                               "\"dimensions\":4}");
    assert_int_equal(rq.rq_inputs, 3);
    assert_int_equal(rq.rq_base64, 1);
    assert_int_equal(rq.rq_dimensions, 4);
    assert_int_equal(rq.rq_prompt_bytes, 6);
    rq = scan_ok("{\"model\":\"e\",\"input\":\"hello\"}");
    assert_int_equal(rq.rq_inputs, 1);
    rq = scan_ok("{\"model\":\"e\",\"input\":[[1,2,3],[4]]}");
    assert_int_equal(rq.rq_inputs, 2);
    assert_int_equal(rq.rq_prompt_bytes, 0);
}

static void test_scan_nested_keys_do_not_count(void **state) {
    (void)state;
    /* "model" and "stream" deeper than the top level are someone else's. */
    tg_mock_req_t rq = scan_ok("{\"metadata\":{\"model\":\"x\",\"stream\":true,\"max_tokens\":3},\"model\":\"y\"}");
    assert_string_equal(rq.rq_model, "y");
    assert_int_equal(rq.rq_stream, 0);
    assert_int_equal(rq.rq_max_tokens, -1);
    assert_int_equal(rq.rq_n, 1);
    assert_int_equal(rq.rq_prompt_bytes, 0);
}

static void test_scan_rejects_bad_json(void **state) {
    static const char *bad[] = {"", "{", "[1,2]", "\"str\"", "{\"a\":1} x", "{\"a\":}", "{\"a\":1}{}", "{'a':1}"};
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tg_mock_req_t rq;
        char err[TG_ERRLEN] = "";
        assert_int_equal(tg_mock_scan(bad[i], strlen(bad[i]), &rq, err, sizeof err), TG_MOCK_EJSON);
        assert_non_null(strstr(err, "not a JSON object"));
    }
}

static void test_scenario_parse(void **state) {
    tg_mock_scn_t sc;
    char err[TG_ERRLEN] = "";
    const char *t = " latency=10; ttft=20,itl=3;tokens=5;prompt=0;cached=2;cache-write=1;reasoning=4;"
                    "status=429;retry-after=2;key=abc;no-usage;malformed;hang;disconnect=3;no-tool ";
    (void)state;
    tg_mock_scn_init(&sc);
    assert_int_equal(tg_mock_scn_parse(&sc, t, strlen(t), err, sizeof err), 0);
    assert_int_equal(sc.sc_latency_ms, 10);
    assert_int_equal(sc.sc_ttft_ms, 20);
    assert_int_equal(sc.sc_itl_ms, 3);
    assert_int_equal(sc.sc_tokens, 5);
    assert_int_equal(sc.sc_prompt, 0);
    assert_int_equal(sc.sc_cached, 2);
    assert_int_equal(sc.sc_cache_write, 1);
    assert_int_equal(sc.sc_reasoning, 4);
    assert_int_equal(sc.sc_status, 429);
    assert_int_equal(sc.sc_retry_after_ms, 2000);
    assert_string_equal(sc.sc_key, "abc");
    assert_int_equal(sc.sc_no_usage, 1);
    assert_int_equal(sc.sc_malformed, 1);
    assert_int_equal(sc.sc_hang, 1);
    assert_int_equal(sc.sc_disconnect, 3);
    assert_int_equal(sc.sc_no_tool, 1);
    const char *more = "nested-usage;ignore-stream;report-output=2500000000.0;lone-surrogate;malformed-final;"
                       "location=http://x.example/v1";
    assert_int_equal(tg_mock_scn_parse(&sc, more, strlen(more), err, sizeof err), 0);
    assert_int_equal(sc.sc_nested_usage, 1);
    assert_int_equal(sc.sc_ignore_stream, 1);
    assert_string_equal(sc.sc_report_output, "2500000000.0");
    assert_int_equal(sc.sc_lone_surrogate, 1);
    assert_int_equal(sc.sc_malformed_final, 1);
    assert_string_equal(sc.sc_location, "http://x.example/v1");
}

static void test_scenario_overlay_and_defaults(void **state) {
    tg_mock_scn_t sc;
    char err[TG_ERRLEN] = "";
    (void)state;
    tg_mock_scn_init(&sc);
    assert_int_equal(tg_mock_scn_parse(&sc, "tokens=9;latency=5", 18, err, sizeof err), 0);
    assert_int_equal(tg_mock_scn_parse(&sc, "tokens=2;fail-first=3", 21, err, sizeof err), 0);
    assert_int_equal(sc.sc_tokens, 2);     /* overridden */
    assert_int_equal(sc.sc_latency_ms, 5); /* kept */
    assert_int_equal(sc.sc_fail_first, 3);
    assert_int_equal(sc.sc_status, 500); /* fail-first without status fails with 500 */
    assert_int_equal(tg_mock_scn_parse(&sc, "disconnect", 10, err, sizeof err), 0);
    assert_int_equal(sc.sc_disconnect, 1);
}

static void test_scenario_rejects(void **state) {
    static const char *bad[] = {"bogus", "tokens", "tokens=-1", "tokens=abc", "status=99",
                                "status=600", "retry-after=x", "key=", "latency=99999999999",
                                "hang=yes"};
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tg_mock_scn_t sc;
        char err[TG_ERRLEN] = "";
        tg_mock_scn_init(&sc);
        assert_int_equal(tg_mock_scn_parse(&sc, bad[i], strlen(bad[i]), err, sizeof err),
                         TG_MOCK_ESCENARIO);
        assert_non_null(strstr(err, bad[i]));
    }
}

static void test_plan_formula(void **state) {
    tg_mock_req_t rq;
    tg_mock_scn_t sc;
    tg_mock_plan_t pl;
    (void)state;
    memset(&rq, 0, sizeof rq);
    rq.rq_max_tokens = -1;
    rq.rq_n = 1;
    tg_mock_scn_init(&sc);
    rq.rq_prompt_bytes = 0;
    tg_mock_plan(&rq, &sc, &pl);
    assert_int_equal(pl.pl_prompt, 1); /* at least one */
    assert_int_equal(pl.pl_output, TG_MOCK_DEFAULT_TOKENS);
    assert_int_equal(pl.pl_truncated, 0);
    rq.rq_prompt_bytes = 9;
    tg_mock_plan(&rq, &sc, &pl);
    assert_int_equal(pl.pl_prompt, 3); /* ceil(9/4) */
    rq.rq_prompt_bytes = 8;
    tg_mock_plan(&rq, &sc, &pl);
    assert_int_equal(pl.pl_prompt, 2);
    rq.rq_max_tokens = 4;
    tg_mock_plan(&rq, &sc, &pl);
    assert_int_equal(pl.pl_output, 4);
    assert_int_equal(pl.pl_truncated, 1);
    rq.rq_max_tokens = 16; /* equal to the answer: not truncated */
    tg_mock_plan(&rq, &sc, &pl);
    assert_int_equal(pl.pl_truncated, 0);
    sc.sc_prompt = 10;
    sc.sc_cached = 7;
    sc.sc_cache_write = 5; /* clamped to what is left: 3 */
    tg_mock_plan(&rq, &sc, &pl);
    assert_int_equal(pl.pl_cached, 7);
    assert_int_equal(pl.pl_cache_write, 3);
    sc.sc_prompt = 0; /* an explicit zero stays zero */
    tg_mock_plan(&rq, &sc, &pl);
    assert_int_equal(pl.pl_prompt, 0);
    assert_int_equal(pl.pl_cached, 0);
    rq.rq_tools = 1;
    snprintf(rq.rq_tool, sizeof(rq.rq_tool), "%s", "f");
    tg_mock_plan(&rq, &sc, &pl);
    assert_int_equal(pl.pl_tool, 1);
    sc.sc_no_tool = 1;
    tg_mock_plan(&rq, &sc, &pl);
    assert_int_equal(pl.pl_tool, 0);
}

/* ---- writers -------------------------------------------------------------- */

static char *drain(struct evbuffer *b) {
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    assert_non_null(s);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    return s;
}

static json_t *parse(const char *s) {
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    if (!j) fail_msg("invalid JSON (%s) in: %s", e.text, s);
    return j;
}

typedef struct fixture {
    tg_mock_req_t rq;
    tg_mock_scn_t sc;
    tg_mock_gen_t g;
} fixture_t;

static void fixture(fixture_t *f, tg_mock_proto_t proto, const char *body, const char *scn) {
    char err[TG_ERRLEN] = "";
    f->rq = scan_ok(body);
    tg_mock_scn_init(&f->sc);
    assert_int_equal(tg_mock_scn_parse(&f->sc, scn, strlen(scn), err, sizeof err), 0);
    memset(&f->g, 0, sizeof f->g);
    f->g.gn_proto = proto;
    f->g.gn_id = "abc";
    f->g.gn_model = f->rq.rq_model;
    f->g.gn_req = &f->rq;
    f->g.gn_scn = &f->sc;
    f->g.gn_created = 1700000000;
    tg_mock_plan(&f->rq, &f->sc, &f->g.gn_plan);
}

static void test_chat_json(void **state) {
    fixture_t f;
    struct evbuffer *b = evbuffer_new();
    char *s;
    json_t *j;
    (void)state;
    fixture(&f, TG_MOCK_CHAT, "{\"model\":\"m\\\"q\",\"messages\":[{\"role\":\"user\",\"content\":\"12345678\"}]}",
            "tokens=3;cached=2;reasoning=1");
    assert_int_equal(tg_mock_write_json(b, &f.g), 0);
    s = drain(b);
    j = parse(s);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "m\"q");
    assert_string_equal(json_string_value(json_object_get(j, "id")), "chatcmpl-abc");
    json_t *msg = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
    assert_string_equal(json_string_value(json_object_get(msg, "content")), "Hello from the");
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 3); /* ceil(12/4) */
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 4);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens")), 2);
    json_decref(j);
    free(s);
    evbuffer_free(b);
}

/* Checks that every SSE data line of every step is JSON (or [DONE]) and
 * returns the concatenated stream. */
static char *stream_all(fixture_t *f, int *events) {
    struct evbuffer *b = evbuffer_new();
    long steps = tg_mock_stream_steps(&f->g);
    char *s, *line, *save = NULL;
    for (long i = 0; i < steps; i++) assert_int_equal(tg_mock_write_step(b, &f->g, i), 0);
    s = drain(b);
    evbuffer_free(b);
    char *copy = strdup(s);
    *events = 0;
    for (line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "data: ", 6) != 0) continue;
        (*events)++;
        if (strcmp(line + 6, "[DONE]") == 0) continue;
        json_decref(parse(line + 6));
    }
    free(copy);
    return s;
}

static void test_chat_stream(void **state) {
    fixture_t f;
    int events;
    char *s;
    (void)state;
    fixture(&f, TG_MOCK_CHAT, "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}", "tokens=4");
    s = stream_all(&f, &events);
    assert_int_equal(events, 1 + 4 + 1 + 1 + 1); /* role, tokens, finish, usage, [DONE] */
    assert_non_null(strstr(s, "\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":4"));
    assert_non_null(strstr(s, "data: [DONE]\n\n"));
    free(s);
    fixture(&f, TG_MOCK_CHAT, "{\"model\":\"m\",\"stream\":true}", "tokens=4");
    s = stream_all(&f, &events);
    assert_int_equal(events, 1 + 4 + 1 + 1);
    assert_null(strstr(s, "usage"));
    free(s);
}

static void test_messages_stream_sequence(void **state) {
    fixture_t f;
    int events;
    char *s;
    (void)state;
    fixture(&f, TG_MOCK_MESSAGES, "{\"model\":\"c\",\"stream\":true,\"max_tokens\":2,\"tools\":[{\"name\":\"t\"}]}",
            "prompt=10;cached=3;cache_write=2");
    s = stream_all(&f, &events);
    const char *order[] = {"event: message_start", "event: content_block_start", "event: ping",
                           "event: content_block_delta", "event: content_block_delta",
                           "event: content_block_stop", "event: message_delta", "event: message_stop"};
    const char *p = s;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        p = strstr(p, order[i]);
        if (!p) fail_msg("missing %s in %s", order[i], s);
        p++;
    }
    assert_non_null(strstr(s, "\"input_tokens\":5,\"cache_creation_input_tokens\":2,\"cache_read_input_tokens\":3"));
    assert_non_null(strstr(s, "\"stop_reason\":\"tool_use\""));
    assert_non_null(strstr(s, "\"input_json_delta\""));
    free(s);
}

static void test_messages_thinking(void **state) {
    fixture_t f;
    int events;
    char *s;
    struct evbuffer *b = evbuffer_new();
    (void)state;
    fixture(&f, TG_MOCK_MESSAGES, "{\"model\":\"c\",\"stream\":true}", "reasoning=2;tokens=2");
    assert_int_equal(tg_mock_stream_steps(&f.g), 1 + 2 + 2 + 1);
    s = stream_all(&f, &events);
    const char *order[] = {"\"type\":\"thinking\",\"thinking\":\"\"", "\"thinking_delta\",\"thinking\":\"Hello\"",
                           "\"thinking_delta\",\"thinking\":\" from\"", "\"signature_delta\"",
                           "\"content_block_stop\",\"index\":0", "\"content_block_start\",\"index\":1",
                           "\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"",
                           "\"content_block_stop\",\"index\":1", "\"output_tokens\":4"};
    const char *p = s;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        p = strstr(p, order[i]);
        if (!p) fail_msg("missing %s in %s", order[i], s);
        p++;
    }
    free(s);
    assert_int_equal(tg_mock_write_json(b, &f.g), 0);
    s = drain(b);
    json_t *j = parse(s), *content = json_object_get(j, "content");
    assert_int_equal(json_array_size(content), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(content, 0), "thinking")), "Hello from");
    assert_string_equal(json_string_value(json_object_get(json_array_get(content, 1), "text")), "Hello from");
    json_decref(j);
    free(s);
    evbuffer_free(b);
}

static void test_responses_and_others_are_json(void **state) {
    static const struct {
        tg_mock_proto_t proto;
        const char *body;
    } cases[] = {
        {TG_MOCK_RESPONSES, "{\"model\":\"r\",\"input\":\"hi\"}"},
        {TG_MOCK_RESPONSES, "{\"model\":\"r\",\"input\":\"hi\",\"tools\":[{\"type\":\"function\",\"name\":\"f\"}]}"},
        {TG_MOCK_EMBEDDINGS, "{\"model\":\"e\",\"input\":[\"a\",\"b\"]}"},
        {TG_MOCK_EMBEDDINGS, "{\"model\":\"e\",\"input\":\"a\",\"encoding_format\":\"base64\"}"},
        {TG_MOCK_IMAGES, "{\"model\":\"i\",\"prompt\":\"cat\",\"n\":2}"},
        {TG_MOCK_COUNT, "{\"model\":\"c\",\"messages\":[]}"},
        {TG_MOCK_MODELS, "{}"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fixture_t f;
        struct evbuffer *b = evbuffer_new();
        fixture(&f, cases[i].proto, cases[i].body, "");
        assert_int_equal(tg_mock_write_json(b, &f.g), 0);
        char *s = drain(b);
        json_decref(parse(s));
        free(s);
        evbuffer_free(b);
    }
    fixture_t f;
    int events;
    fixture(&f, TG_MOCK_RESPONSES, "{\"model\":\"r\",\"input\":\"hi\",\"stream\":true}", "tokens=2");
    char *s = stream_all(&f, &events);
    assert_int_equal(events, 4 + 2 + 4);
    assert_non_null(strstr(s, "\"sequence_number\":9,\"response\""));
    free(s);
}

static void test_stream_error_events(void **state) {
    static const tg_mock_proto_t protos[] = {TG_MOCK_CHAT, TG_MOCK_MESSAGES, TG_MOCK_RESPONSES};
    static const char *const want[] = {"\"type\":\"server_error\"", "\"overloaded_error\"",
                                       "\"code\":\"server_error\""};
    (void)state;
    for (size_t i = 0; i < 3; i++) {
        fixture_t f;
        struct evbuffer *b = evbuffer_new();
        fixture(&f, protos[i], "{\"model\":\"m\",\"stream\":true}", "error-after=2");
        assert_int_equal(f.sc.sc_error_after, 2);
        assert_int_equal(tg_mock_write_stream_error(b, &f.g, 3), 0);
        char *s = drain(b);
        char *data = strstr(s, "data: ");
        assert_non_null(data);
        *strchr(data, '\n') = '\0';
        json_decref(parse(data + 6));
        assert_non_null(strstr(data, want[i]));
        free(s);
        evbuffer_free(b);
    }
}

static void test_zero_and_running_usage(void **state) {
    fixture_t f;
    int events;
    char *s;
    (void)state;
    fixture(&f, TG_MOCK_CHAT, "{\"model\":\"m\",\"stream\":true}", "tokens=3;prompt=7;running-usage");
    s = stream_all(&f, &events);
    /* role chunk 0, then 1, 2, 3 tokens, and the finish chunk at 3 */
    assert_non_null(strstr(s, "\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1,"));
    assert_non_null(strstr(s, "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,"));
    free(s);
    fixture(&f, TG_MOCK_MESSAGES, "{\"model\":\"m\"}", "tokens=3;prompt=7;zero-usage");
    struct evbuffer *b = evbuffer_new();
    tg_mock_write_json(b, &f.g);
    s = drain(b);
    assert_non_null(strstr(s, "\"text\":\"Hello from the\""));
    assert_non_null(strstr(s, "\"input_tokens\":0,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":0"));
    free(s);
    evbuffer_free(b);
}

/* usage-shape=: each vendor's names for cache reads, in JSON and streams. */
static void test_usage_shapes(void **state) {
    static const struct {
        const char *shape, *want, *absent;
    } cases[] = {
        {"deepseek", "\"prompt_cache_hit_tokens\":3,\"prompt_cache_miss_tokens\":7,", "prompt_tokens_details"},
        {"kimi", "\"total_tokens\":12,\"cached_tokens\":3}", "prompt_tokens_details"},
        {"qwen", "\"prompt_tokens_details\":{\"cached_tokens\":3}}", "audio_tokens"},
        {"glm", "\"prompt_tokens_details\":{\"cached_tokens\":3}}", "audio_tokens"},
        {"gemini", "\"prompt_tokens_details\":{\"cached_tokens\":3}}", "audio_tokens"},
        {"openai", "\"prompt_tokens_details\":{\"cached_tokens\":3,\"audio_tokens\":0}", "cache_hit"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char scn[96];
        fixture_t f;
        int events;
        snprintf(scn, sizeof scn, "tokens=2;prompt=10;cached=3;usage-shape=%s", cases[i].shape);
        fixture(&f, TG_MOCK_CHAT, "{\"model\":\"m\"}", scn);
        struct evbuffer *b = evbuffer_new();
        tg_mock_write_json(b, &f.g);
        char *s = drain(b);
        json_decref(parse(s));
        assert_non_null(strstr(s, cases[i].want));
        assert_null(strstr(s, cases[i].absent));
        free(s);
        evbuffer_free(b);
        fixture(&f, TG_MOCK_CHAT, "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}", scn);
        s = stream_all(&f, &events);
        assert_non_null(strstr(s, cases[i].want));
        free(s);
    }
    tg_mock_scn_t sc;
    char err[128];
    tg_mock_scn_init(&sc);
    assert_int_not_equal(tg_mock_scn_parse(&sc, "usage-shape=mistral", 19, err, sizeof err), 0);
}

static void test_malformed_is_not_json(void **state) {
    fixture_t f;
    struct evbuffer *b = evbuffer_new();
    json_error_t e;
    (void)state;
    fixture(&f, TG_MOCK_CHAT, "{\"model\":\"m\"}", "malformed");
    tg_mock_write_json(b, &f.g);
    char *s = drain(b);
    assert_null(json_loads(s, 0, &e));
    free(s);
    evbuffer_free(b);
}

static void test_error_shapes(void **state) {
    struct evbuffer *b = evbuffer_new();
    (void)state;
    assert_int_equal(tg_mock_write_error(b, 0, 429, "slow \"down\"", "req_1"), 0);
    char *s = drain(b);
    json_t *j = parse(s), *e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "message")), "slow \"down\"");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "requests");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "rate_limit_exceeded");
    assert_true(json_is_null(json_object_get(e, "param")));
    json_decref(j);
    free(s);
    assert_int_equal(tg_mock_write_error(b, 1, 529, NULL, "req_2"), 0);
    s = drain(b);
    j = parse(s);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "error");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "type")), "overloaded_error");
    assert_string_equal(json_string_value(json_object_get(j, "request_id")), "req_2");
    json_decref(j);
    free(s);
    evbuffer_free(b);
}

static void test_json_str_escapes(void **state) {
    struct evbuffer *b = evbuffer_new();
    (void)state;
    assert_int_equal(tg_mock_json_str(b, "a\"b\\c\n\x01\xc3\xa9", 9), 0);
    char *s = drain(b);
    assert_string_equal(s, "\"a\\\"b\\\\c\\u000a\\u0001\xc3\xa9\"");
    free(s);
    evbuffer_free(b);
    assert_string_equal(tg_mock_strerror(TG_MOCK_EJSON), "request body is not valid JSON");
    assert_string_equal(tg_mock_token(0), "Hello");
    assert_string_equal(tg_mock_token(9), " from");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_fields),
        cmocka_unit_test(test_scan_anthropic_tool_and_escapes),
        cmocka_unit_test(test_scan_embeddings_inputs),
        cmocka_unit_test(test_scan_nested_keys_do_not_count),
        cmocka_unit_test(test_scan_rejects_bad_json),
        cmocka_unit_test(test_scenario_parse),
        cmocka_unit_test(test_scenario_overlay_and_defaults),
        cmocka_unit_test(test_scenario_rejects),
        cmocka_unit_test(test_plan_formula),
        cmocka_unit_test(test_chat_json),
        cmocka_unit_test(test_chat_stream),
        cmocka_unit_test(test_messages_stream_sequence),
        cmocka_unit_test(test_messages_thinking),
        cmocka_unit_test(test_responses_and_others_are_json),
        cmocka_unit_test(test_stream_error_events),
        cmocka_unit_test(test_zero_and_running_usage),
        cmocka_unit_test(test_usage_shapes),
        cmocka_unit_test(test_malformed_is_not_json),
        cmocka_unit_test(test_error_shapes),
        cmocka_unit_test(test_json_str_escapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
