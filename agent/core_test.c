/* core_test.c: unit tests of the agent's socket-free parts: the request
 * scanner and rewrite, the SSE splitter and event readers, answers and
 * usage numbers (read by structure, strictly),
 * globs and CIDRs, the circuit breaker, weighted pick and backoff. */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "agent/agent_int.h"
#include "proto/tg_proto.h"

static int scan(const char *s, tg_scan_t *sc, char *err)
{
    err[0] = '\0';
    return tg_agent_scan(s, strlen(s), sc, err, TG_ERRLEN);
}

static void test_scan_fields(void **st)
{
    (void)st;
    tg_scan_t sc;
    char err[TG_ERRLEN];
    const char *b = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi \\u00e9\"}],"
                    "\"model\" : \"gpt-4o\",\"stream\":true,\"max_tokens\":77,\"x\":{\"model\":1}}";
    assert_int_equal(scan(b, &sc, err), 0);
    assert_string_equal(sc.sc_model, "gpt-4o");
    assert_int_equal(sc.sc_stream, 1);
    assert_int_equal(sc.sc_include_usage, 0);
    assert_int_equal(sc.sc_max_tokens, 77);
    assert_memory_equal(b + sc.sc_model_val.sp_off, "\"gpt-4o\"", 8);
    assert_int_equal(sc.sc_model_val.sp_len, 8);
    assert_int_equal(b[sc.sc_close], '}');
    assert_int_equal(sc.sc_close, strlen(b) - 1);

    /* escapes in the model are decoded */
    assert_int_equal(scan("{\"model\":\"a\\/b\\u0041\"}", &sc, err), 0);
    assert_string_equal(sc.sc_model, "a/bA");
    /* include_usage */
    assert_int_equal(scan("{\"stream\":true,\"stream_options\":{\"include_usage\":true}}", &sc, err), 0);
    assert_int_equal(sc.sc_include_usage, 1);
}

static void test_scan_errors(void **st)
{
    (void)st;
    tg_scan_t sc;
    char err[TG_ERRLEN];
    assert_int_equal(scan("{\"model\":\"x\",}", &sc, err), TG_AGENT_EJSON);
    assert_non_null(strstr(err, "at byte 13"));
    assert_int_equal(scan("{\"model\":\"x\"", &sc, err), TG_AGENT_EJSON);
    assert_non_null(strstr(err, "end of input"));
    assert_int_equal(scan("[1]", &sc, err), TG_AGENT_EJSON);
    assert_int_equal(scan("{\"a\":tru}", &sc, err), TG_AGENT_EJSON);
    assert_int_equal(scan("{\"a\":01}", &sc, err), TG_AGENT_EJSON);
    assert_int_equal(scan("{\"a\":\"\x01\"}", &sc, err), TG_AGENT_EJSON);
    assert_int_equal(scan("{\"a\":\"\xc3\x28\"}", &sc, err), TG_AGENT_EJSON);
    assert_int_equal(scan("{\"a\":\"\\ud800\"}", &sc, err), 0); /* a lone surrogate is valid JSON */
    assert_int_equal(scan("{} x", &sc, err), TG_AGENT_EJSON);
    assert_int_equal(scan("", &sc, err), TG_AGENT_EJSON);
    assert_int_equal(scan("{\"model\":5}", &sc, err), TG_AGENT_EREQUEST);
    assert_non_null(strstr(err, "must be a string"));
    assert_int_equal(scan("{\"stream\":\"yes\"}", &sc, err), TG_AGENT_EREQUEST);
    assert_int_equal(scan("{\"stream_options\":[]}", &sc, err), TG_AGENT_EREQUEST);
    /* a second model, also when spelled with an escape, is refused */
    assert_int_equal(scan("{\"model\":\"a\",\"model\":\"b\"}", &sc, err), TG_AGENT_EREQUEST);
    assert_int_equal(scan("{\"model\":\"a\",\"mod\\u0065l\":\"b\"}", &sc, err), TG_AGENT_EREQUEST);
    /* a repeated output cap is refused (upstreams keep the last copy, so
     * the gateway must never bill against the first), escapes included */
    assert_int_equal(scan("{\"max_tokens\":1,\"max_tokens\":4000}", &sc, err), TG_AGENT_EREQUEST);
    assert_non_null(strstr(err, "max_tokens appears twice"));
    assert_int_equal(scan("{\"max_output_tokens\":1,\"max_output_t\\u006fkens\":9}", &sc, err),
                     TG_AGENT_EREQUEST);
    assert_int_equal(scan("{\"max_completion_tokens\":null,\"max_completion_tokens\":9}", &sc, err),
                     TG_AGENT_EREQUEST);
    /* different cap names: the largest bounds what is billed */
    assert_int_equal(scan("{\"max_tokens\":1,\"max_completion_tokens\":4000}", &sc, err), 0);
    assert_int_equal(sc.sc_max_tokens, 4000);
    assert_int_equal(scan("{\"max_completion_tokens\":4000,\"max_tokens\":1}", &sc, err), 0);
    assert_int_equal(sc.sc_max_tokens, 4000);
    assert_int_equal(scan("{\"max_tokens\":\"x\",\"max_output_tokens\":7}", &sc, err), 0);
    assert_int_equal(sc.sc_max_tokens, 7);
    /* nesting is bounded, not a stack overflow */
    char deep[2000];
    memset(deep, '[', sizeof deep);
    memcpy(deep, "{\"a\":", 5);
    deep[sizeof deep - 1] = '\0';
    assert_int_equal(scan(deep, &sc, err), TG_AGENT_EJSON);
    assert_non_null(strstr(err, "nesting"));
}

static char *rewrite(const char *b, const char *model, int add_usage)
{
    static char out[1024];
    tg_scan_t sc;
    char err[TG_ERRLEN] = "";
    tg_buf_t buf;
    assert_int_equal(tg_agent_scan(b, strlen(b), &sc, err, sizeof err), 0);
    tg_buf_init(&buf, 4096);
    assert_int_equal(tg_agent_rewrite(b, strlen(b), &sc, model, add_usage, &buf), 0);
    assert_true(buf.b_len < sizeof out);
    memcpy(out, buf.b_data, buf.b_len);
    out[buf.b_len] = '\0';
    tg_buf_free(&buf);
    return out;
}

static void test_rewrite(void **st)
{
    (void)st;
    assert_string_equal(rewrite("{\"model\":\"cat\",\"z\":[1,2]}", "up\"x", 0),
                        "{\"model\":\"up\\\"x\",\"z\":[1,2]}");
    assert_string_equal(rewrite("{\"model\":\"cat\",\"stream\":true}", "m", 1),
                        "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    assert_string_equal(rewrite("{\"stream_options\":{\"include_obfuscation\":false},\"model\":\"c\"}", "m", 1),
                        "{\"stream_options\":{\"include_usage\":true,\"include_obfuscation\":false},\"model\":\"m\"}");
    assert_string_equal(rewrite("{\"model\":\"c\",\"stream_options\":{\"include_usage\":false}}", "m", 1),
                        "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true}}");
    assert_string_equal(rewrite("{\"model\":\"c\",\"stream_options\":null}", "m", 1),
                        "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true}}");
    assert_string_equal(rewrite("{\"model\":\"c\",\"stream_options\":{ }}", "m", 1),
                        "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true }}");
    /* the client asked already: unchanged */
    assert_string_equal(rewrite("{\"model\":\"c\",\"stream_options\":{\"include_usage\":true}}", "m", 1),
                        "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true}}");
    assert_string_equal(rewrite("{}", NULL, 1), "{\"stream_options\":{\"include_usage\":true}}");
}

typedef struct evs {
    int n;
    char ev[8][256];
} evs_t;

static int on_ev(void *arg, const char *ev, size_t n)
{
    evs_t *e = arg;
    assert_true(n < 256 && e->n < 8);
    memcpy(e->ev[e->n], ev, n);
    e->ev[e->n++][n] = '\0';
    return 0;
}

static void test_sse(void **st)
{
    (void)st;
    const char *stream = "data: {\"a\":1}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5}}\r\n\r\n"
                         "data: [DONE]\n\n";
    /* every split point gives the same events */
    for (size_t cut = 0; cut <= strlen(stream); cut++) {
        tg_sse_t s;
        evs_t e = {0};
        tg_sse_init(&s, 1024);
        assert_int_equal(tg_sse_feed(&s, stream, cut, on_ev, &e), 0);
        assert_int_equal(tg_sse_feed(&s, stream + cut, strlen(stream) - cut, on_ev, &e), 0);
        assert_int_equal(e.n, 3);
        assert_string_equal(e.ev[0], "data: {\"a\":1}\n\n");
        assert_string_equal(e.ev[2], "data: [DONE]\n\n");
        tg_sse_free(&s);
    }
    tg_chunk_t ck;
    assert_int_equal(tg_sse_chunk("data: {\"choices\":[{\"x\":1}],\"usage\":null}\n\n", 41, &ck, NULL), 0);
    assert_int_equal(ck.ck_kind, TG_CHUNK_DATA);
    assert_int_equal(ck.ck_usage_only, 0);
    const char *ev = "data: {\"id\":\"c\",\"choices\": [ ],\"usage\":{\"prompt_tokens\":5,\"d\":{\"x\":1}}}\n\n";
    assert_int_equal(tg_sse_chunk(ev, strlen(ev), &ck, NULL), 0);
    assert_int_equal(ck.ck_usage_only, 1);
    assert_int_equal(ck.ck_usage_len, strlen("{\"prompt_tokens\":5,\"d\":{\"x\":1}}"));
    assert_int_equal(tg_sse_chunk("data: [DONE]\n\n", 14, &ck, NULL), 0);
    assert_int_equal(ck.ck_kind, TG_CHUNK_DONE);
    /* a usage key below the top level is not the usage chunk; finish_reason
     * and the in-stream error are read where they belong */
    ev = "data: {\"choices\":[{\"delta\":{\"usage\":{\"prompt_tokens\":1}},\"finish_reason\":\"length\"}]}\n\n";
    assert_int_equal(tg_sse_chunk(ev, strlen(ev), &ck, NULL), 0);
    assert_null(ck.ck_usage);
    assert_string_equal(ck.ck_finish, "length");
    ev = "data: {\"x\":{\"choices\":[],\"usage\":{\"prompt_tokens\":1}}}\n\n";
    assert_int_equal(tg_sse_chunk(ev, strlen(ev), &ck, NULL), 0);
    assert_int_equal(ck.ck_usage_only, 0);
    ev = "data: {\"error\":{\"message\":\"m\"}}\n\n";
    assert_int_equal(tg_sse_chunk(ev, strlen(ev), &ck, NULL), 0);
    assert_int_equal(ck.ck_error, 1);
    assert_int_equal(tg_sse_chunk("data: {\"choices\":[}\n\n", 22, &ck, NULL), TG_AGENT_EJSON);
    /* an event too large is refused, not buffered without bound */
    tg_sse_t s;
    evs_t e = {0};
    tg_sse_init(&s, 8);
    assert_int_equal(tg_sse_feed(&s, "data: 0123456789", 16, on_ev, &e), TG_AGENT_ETOOBIG);
    tg_sse_free(&s);
}

static void test_usage(void **st)
{
    (void)st;
    const char *b = "{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"\\\"usage\\\":{}\"}}],"
                    "\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":16,\"total_tokens\":136,"
                    "\"prompt_tokens_details\":{\"cached_tokens\":100},"
                    "\"completion_tokens_details\":{\"reasoning_tokens\":4}}}";
    tg_answer_t an;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_agent_answer(b, strlen(b), TG_ANSWER_CHAT, NULL, &an, NULL, err, sizeof err), 0);
    assert_non_null(an.an_usage);
    tg_usage_t u;
    assert_int_equal(tg_agent_usage_parse(an.an_usage, an.an_usage_len, NULL, &u), 0);
    assert_int_equal(u.us_prompt, 120);
    assert_int_equal(u.us_completion, 16);
    assert_int_equal(u.us_cached, 100);
    assert_int_equal(u.us_reasoning, 4);
    /* the answer's own pass read the same counts (what upstream.c keeps) */
    assert_int_equal(an.an_counts_rc, 0);
    assert_memory_equal(&an.an_counts, &u, sizeof u);
    /* its verdicts are tg_agent_usage_parse's: a count that is not one, no main count */
    const char *bad = "{\"usage\":{\"prompt_tokens\":1.5,\"completion_tokens\":3},\"id\":1}";
    assert_int_equal(tg_agent_answer(bad, strlen(bad), TG_ANSWER_CHAT, NULL, &an, NULL, NULL, 0), 0);
    assert_int_equal(an.an_counts_rc, TG_AGENT_ERANGE);
    assert_int_equal(an.an_counts.us_completion, 3);
    const char *none = "{\"usage\":{\"total_tokens\":5}}";
    assert_int_equal(tg_agent_answer(none, strlen(none), TG_ANSWER_CHAT, NULL, &an, NULL, NULL, 0), 0);
    assert_non_null(an.an_usage);
    assert_int_equal(an.an_counts_rc, TG_AGENT_EJSON);
    /* a malformed usage object fails the answer, as it did when skipped */
    const char *torn = "{\"usage\":{\"prompt_tokens\":1,}}";
    assert_int_equal(tg_agent_answer(torn, strlen(torn), TG_ANSWER_CHAT, NULL, &an, NULL, NULL, 0),
                     TG_AGENT_EJSON);
    assert_int_equal(tg_agent_answer("{\"usage\":null}", 14, TG_ANSWER_CHAT, NULL, &an, NULL, NULL, 0), 0);
    assert_null(an.an_usage);
    assert_int_equal(tg_agent_answer("{\"id\":1}", 8, TG_ANSWER_CHAT, NULL, &an, NULL, NULL, 0), 0);
    assert_null(an.an_usage);
    assert_int_equal(tg_agent_answer("nope", 4, TG_ANSWER_CHAT, NULL, &an, NULL, NULL, 0), TG_AGENT_EJSON);
    /* malformed after a valid start, or trailing bytes: not an answer */
    assert_int_equal(tg_agent_answer("{\"id\":1,", 8, TG_ANSWER_CHAT, NULL, &an, NULL, NULL, 0),
                     TG_AGENT_EJSON);
    assert_int_equal(tg_agent_answer("{\"id\":1} x", 10, TG_ANSWER_CHAT, NULL, &an, NULL, NULL, 0),
                     TG_AGENT_EJSON);
}

/* Issue 14: a nested "usage" (a tool schema echoed in a Responses answer,
 * an extra object in a chat answer) before the top-level one is not the
 * usage. */
static void test_usage_top_level_only(void **st)
{
    (void)st;
    const char *r = "{\"id\":\"resp_1\",\"tools\":[{\"type\":\"function\",\"name\":\"f\",\"parameters\":"
                    "{\"type\":\"object\",\"properties\":{\"usage\":{\"type\":\"object\",\"properties\":"
                    "{\"input_tokens\":{\"type\":\"integer\"}}}}}}],"
                    "\"usage\":{\"input_tokens\":50000,\"output_tokens\":50000}}";
    tg_answer_t an;
    tg_usage_t u;
    assert_int_equal(tg_agent_answer(r, strlen(r), TG_ANSWER_RESPONSES, NULL, &an, NULL, NULL, 0), 0);
    assert_int_equal(tg_agent_usage_parse(an.an_usage, an.an_usage_len, NULL, &u), 0);
    assert_int_equal(u.us_prompt, 50000);
    assert_int_equal(u.us_completion, 50000);
    assert_int_equal(an.an_counts_rc, 0);
    assert_int_equal(an.an_counts.us_prompt, 50000);
    const char *c = "{\"meta\":{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}},"
                    "\"usage\":{\"prompt_tokens\":50000,\"completion_tokens\":50000}}";
    assert_int_equal(tg_agent_answer(c, strlen(c), TG_ANSWER_CHAT, NULL, &an, NULL, NULL, 0), 0);
    assert_int_equal(tg_agent_usage_parse(an.an_usage, an.an_usage_len, NULL, &u), 0);
    assert_int_equal(u.us_prompt, 50000);
    /* the name written with escapes is the same name */
    const char *e = "{\"\\u0075sage\":{\"prompt_tokens\":7}}";
    assert_int_equal(tg_agent_answer(e, strlen(e), TG_ANSWER_CHAT, NULL, &an, NULL, NULL, 0), 0);
    assert_non_null(an.an_usage);
    /* Responses stream: only response.usage of a final event counts */
    const char *ev = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"tools\":"
                     "[{\"parameters\":{\"usage\":{\"input_tokens\":1}}}],\"usage\":{\"input_tokens\":9,"
                     "\"output_tokens\":8}}}\n\n";
    tg_resp_event_t re;
    assert_int_equal(tg_sse_resp_event(ev, strlen(ev), &re, NULL), 0);
    assert_int_equal(re.re_final, 1);
    assert_int_equal(tg_agent_usage_parse(re.re_usage, re.re_usage_len, NULL, &u), 0);
    assert_int_equal(u.us_prompt, 9);
    assert_int_equal(u.us_completion, 8);
    /* a final event whose data does not parse is still final (no usage) */
    const char *cut = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"x\"\n\n";
    assert_int_equal(tg_sse_resp_event(cut, strlen(cut), &re, NULL), TG_AGENT_EJSON);
    assert_int_equal(re.re_final, 1);
    assert_null(re.re_usage);
    const char *inc = "event: response.incomplete\ndata: {broken\n\n";
    assert_int_equal(tg_sse_resp_event(inc, strlen(inc), &re, NULL), TG_AGENT_EJSON);
    assert_int_equal(re.re_final, 1);
    /* a lone surrogate in the text is valid JSON: the usage is read */
    const char *lone = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":"
                       "[{\"content\":[{\"text\":\"a\\ud83d\"}]}],\"usage\":{\"input_tokens\":4,\"output_tokens\":2}}}\n\n";
    assert_int_equal(tg_sse_resp_event(lone, strlen(lone), &re, NULL), 0);
    assert_int_equal(re.re_final, 1);
    assert_non_null(re.re_usage);
}

/* Issue 14: counts are read strictly and held to the request's bounds. */
/* Each vendor's own names for cache reads (proto/vendor.c), and only its
 * own: a DeepSeek channel reads prompt_cache_hit_tokens, a Kimi channel
 * the top-level cached_tokens, Qwen, GLM and Gemini channels OpenAI's
 * prompt_tokens_details.cached_tokens. OPENAI_COMPATIBLE (and no channel)
 * reads all three, details first, as agents did before the vendor types:
 * a channel typed then is billed the same after the upgrade. */
static void test_usage_vendor_cache(void **st)
{
    (void)st;
    tg_usage_t u;
    const tg_proto_vendor_t *ds = tg_proto_vendor(TG_PROTO_VENDOR_DEEPSEEK);
    const tg_proto_vendor_t *kimi = tg_proto_vendor(TG_PROTO_VENDOR_KIMI);
    const tg_proto_vendor_t *compat = tg_proto_vendor(TG_PROTO_VENDOR_OPENAI_COMPATIBLE);
    const char *dsu = "{\"prompt_tokens\":100,\"completion_tokens\":5,\"total_tokens\":105,"
                      "\"prompt_cache_hit_tokens\":60,\"prompt_cache_miss_tokens\":40}";
    assert_int_equal(tg_agent_usage_parse(dsu, strlen(dsu), ds, &u), 0);
    assert_int_equal(u.us_prompt, 100);
    assert_int_equal(u.us_cached, 60);
    /* the legacy OPENAI_COMPATIBLE row reads DeepSeek's names */
    assert_int_equal(tg_agent_usage_parse(dsu, strlen(dsu), compat, &u), 0);
    assert_int_equal(u.us_cached, 60);
    assert_int_equal(tg_agent_usage_parse(dsu, strlen(dsu), NULL, &u), 0);
    assert_int_equal(u.us_cached, 60);
    /* another vendor's names are not read */
    assert_int_equal(tg_agent_usage_parse(dsu, strlen(dsu), kimi, &u), 0);
    assert_int_equal(u.us_cached, -1);
    /* and so in an answer's one pass, under the channel's vendor */
    char ans[256];
    tg_answer_t an;
    snprintf(ans, sizeof ans, "{\"id\":\"x\",\"usage\":%s}", dsu);
    assert_int_equal(tg_agent_answer(ans, strlen(ans), TG_ANSWER_CHAT, ds, &an, NULL, NULL, 0), 0);
    assert_int_equal(an.an_counts.us_cached, 60);
    assert_int_equal(tg_agent_answer(ans, strlen(ans), TG_ANSWER_CHAT, kimi, &an, NULL, NULL, 0), 0);
    assert_int_equal(an.an_counts.us_cached, -1);
    /* DeepSeek without prompt_tokens: hits + misses */
    const char *dsnp = "{\"completion_tokens\":5,\"prompt_cache_hit_tokens\":7,\"prompt_cache_miss_tokens\":3}";
    assert_int_equal(tg_agent_usage_parse(dsnp, strlen(dsnp), ds, &u), 0);
    assert_int_equal(u.us_prompt, 10);
    assert_int_equal(u.us_cached, 7);
    /* the vendor's own name wins over the details it may repeat */
    const char *both = "{\"prompt_tokens\":100,\"completion_tokens\":5,\"prompt_cache_hit_tokens\":60,"
                       "\"prompt_tokens_details\":{\"cached_tokens\":20}}";
    assert_int_equal(tg_agent_usage_parse(both, strlen(both), ds, &u), 0);
    assert_int_equal(u.us_cached, 60);
    assert_int_equal(tg_agent_usage_parse(both, strlen(both), compat, &u), 0);
    assert_int_equal(u.us_cached, 20);
    const char *ku = "{\"prompt_tokens\":100,\"completion_tokens\":5,\"cached_tokens\":30}";
    assert_int_equal(tg_agent_usage_parse(ku, strlen(ku), kimi, &u), 0);
    assert_int_equal(u.us_cached, 30);
    assert_int_equal(tg_agent_usage_parse(ku, strlen(ku), compat, &u), 0);
    assert_int_equal(u.us_cached, 30);
    assert_int_equal(tg_agent_usage_parse(ku, strlen(ku), ds, &u), 0);
    assert_int_equal(u.us_cached, -1);
    const int details[] = {TG_PROTO_VENDOR_OPENAI, TG_PROTO_VENDOR_GEMINI, TG_PROTO_VENDOR_OPENAI_COMPATIBLE,
                           TG_PROTO_VENDOR_QWEN, TG_PROTO_VENDOR_GLM, TG_PROTO_VENDOR_KIMI, TG_PROTO_VENDOR_DEEPSEEK};
    const char *oa = "{\"prompt_tokens\":100,\"completion_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":25}}";
    for (size_t i = 0; i < sizeof details / sizeof details[0]; i++) {
        assert_int_equal(tg_agent_usage_parse(oa, strlen(oa), tg_proto_vendor(details[i]), &u), 0);
        assert_int_equal(u.us_cached, 25);
    }
    const char *bad = "{\"prompt_tokens\":100,\"completion_tokens\":5,\"prompt_cache_hit_tokens\":1e9}";
    assert_int_equal(tg_agent_usage_parse(bad, strlen(bad), ds, &u), TG_AGENT_ERANGE);
    /* hits + misses past the maximum count is not a count; null prompt_tokens is absent */
    const char *big = "{\"completion_tokens\":5,\"prompt_cache_hit_tokens\":9007199254740992,"
                      "\"prompt_cache_miss_tokens\":9007199254740992}";
    assert_int_equal(tg_agent_usage_parse(big, strlen(big), ds, &u), TG_AGENT_ERANGE);
    assert_true(u.us_prompt == -1 || (u.us_prompt >= 0 && u.us_prompt <= TG_USAGE_MAX));
    const char *nul = "{\"prompt_tokens\":null,\"completion_tokens\":5,\"prompt_cache_hit_tokens\":7,"
                      "\"prompt_cache_miss_tokens\":3}";
    assert_int_equal(tg_agent_usage_parse(nul, strlen(nul), ds, &u), 0);
    assert_int_equal(u.us_prompt, 10);
}

/* Every ProviderType value has a vendor row, and no row lacks a value: an
 * appended type without its row (or a row without its type) fails here. */
static void test_vendor_rows_follow_provider_type(void **st)
{
    (void)st;
    const ProtobufCEnumDescriptor *d = &tollgate__v1__provider_type__descriptor;
    assert_int_equal(d->n_values, TG_PROTO_NVENDORS);
    for (unsigned i = 0; i < d->n_values; i++) {
        int v = d->values[i].value;
        if (v == TOLLGATE__V1__PROVIDER_TYPE__PROVIDER_TYPE_UNSPECIFIED) {
            assert_null(tg_proto_vendor(v));
            continue;
        }
        assert_non_null(tg_proto_vendor(v));
        /* the row's name is the enum's lower-case name (tollctl --provider) */
        char want[64];
        snprintf(want, sizeof want, "%s", d->values[i].name + strlen("PROVIDER_TYPE_"));
        for (char *p = want; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        assert_string_equal(tg_proto_vendor(v)->vd_name, want);
    }
}

static void test_usage_strict(void **st)
{
    (void)st;
    static const char *const bad[] = {
        "{\"prompt_tokens\":1,\"completion_tokens\":2500000000.0}",
        "{\"prompt_tokens\":1,\"completion_tokens\":1e+30}",
        "{\"prompt_tokens\":-5,\"completion_tokens\":1}",
        "{\"prompt_tokens\":1.5,\"completion_tokens\":1}",
        "{\"prompt_tokens\":9007199254740993,\"completion_tokens\":1}",
        "{\"prompt_tokens\":\"12\",\"completion_tokens\":1}",
        "{\"prompt_tokens\":1,\"completion_tokens_details\":{\"reasoning_tokens\":1E3}}",
    };
    tg_usage_t u;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(tg_agent_usage_parse(bad[i], strlen(bad[i]), NULL, &u), TG_AGENT_ERANGE);
    const char *ok = "{\"prompt_tokens\":9007199254740992,\"completion_tokens\":null,\"output_tokens\":3}";
    assert_int_equal(tg_agent_usage_parse(ok, strlen(ok), NULL, &u), 0);
    assert_int_equal(u.us_prompt, 9007199254740992L);
    assert_int_equal(u.us_completion, 3);
    /* a usage without counts changes nothing: an earlier chunk's counts stay */
    const char *total = "{\"total_tokens\":50}";
    assert_int_equal(tg_agent_usage_parse(total, strlen(total), NULL, &u), TG_AGENT_EJSON);
    assert_int_equal(u.us_prompt, 9007199254740992L);
    assert_int_equal(u.us_completion, 3);
    assert_int_equal(tg_agent_usage_parse("[1]", 3, NULL, &u), TG_AGENT_EJSON);
    assert_int_equal(u.us_completion, 3);
    u = (tg_usage_t){5000, 2500000000L, 100, 2500000000L};
    assert_int_equal(tg_agent_usage_clamp(&u, 100), 1);
    assert_int_equal(u.us_completion, 100);
    assert_int_equal(u.us_reasoning, 100);
    assert_int_equal(u.us_prompt, 5000);
    assert_int_equal(u.us_cached, 100);
    assert_int_equal(tg_agent_usage_clamp(&u, 100), 0);
    assert_int_equal(tg_agent_usage_clamp(&u, -1), 0);
    u = (tg_usage_t){50, 10, 80, 0}; /* cached tokens stay within the prompt */
    assert_int_equal(tg_agent_usage_clamp(&u, -1), 0);
    assert_int_equal(u.us_cached, 50);
}

/* The Responses and Images names of the counts, and the images of data[]. */
static void test_usage_other_endpoints(void **st)
{
    (void)st;
    const char *r = "{\"input_tokens\":100,\"input_tokens_details\":{\"cached_tokens\":40},"
                    "\"output_tokens\":16,\"output_tokens_details\":{\"reasoning_tokens\":9},\"total_tokens\":116}";
    tg_usage_t u;
    assert_int_equal(tg_agent_usage_parse(r, strlen(r), NULL, &u), 0);
    assert_int_equal(u.us_prompt, 100);
    assert_int_equal(u.us_completion, 16);
    assert_int_equal(u.us_cached, 40);
    assert_int_equal(u.us_reasoning, 9);
    const char *e = "{\"prompt_tokens\":7,\"total_tokens\":7}";
    assert_int_equal(tg_agent_usage_parse(e, strlen(e), NULL, &u), 0);
    assert_int_equal(u.us_prompt, 7);
    assert_int_equal(u.us_completion, -1);
    assert_int_equal(u.us_cached, -1);
    const char *img = "{\"created\":1,\"data\":[{\"b64_json\":\"a,]}\"},{\"url\":\"u\"} , {\"x\":[1,2]}],"
                      "\"usage\":{\"input_tokens\":3}}";
    tg_answer_t an;
    assert_int_equal(tg_agent_answer(img, strlen(img), TG_ANSWER_IMAGES, NULL, &an, NULL, NULL, 0), 0);
    assert_int_equal(an.an_images, 3);
    assert_int_equal(tg_agent_answer("{\"data\":[ ]}", 12, TG_ANSWER_IMAGES, NULL, &an, NULL, NULL, 0), 0);
    assert_int_equal(an.an_images, 0);
    assert_int_equal(tg_agent_answer("{\"data\":null}", 13, TG_ANSWER_IMAGES, NULL, &an, NULL, NULL, 0), 0);
    assert_int_equal(an.an_images, -1);
    assert_int_equal(tg_agent_answer("{\"data\":[{}", 11, TG_ANSWER_IMAGES, NULL, &an, NULL, NULL, 0),
                     TG_AGENT_EJSON);
    tg_buf_t b;
    tg_buf_init(&b, 1024);
    const char *ev = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\","
                     "\"delta\":\" world\"}\n\n";
    tg_resp_event_t re;
    assert_int_equal(tg_sse_resp_event(ev, strlen(ev), &re, &b), 0);
    assert_string_equal(re.re_type, "response.output_text.delta");
    assert_int_equal(re.re_final, 0);
    assert_string_equal(b.b_data, " world");
    tg_buf_reset(&b);
    const char *ans = "{\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"hi\"}]},"
                      "{\"type\":\"function_call\",\"arguments\":\"{}\"}],\"status\":\"completed\"}";
    assert_int_equal(tg_agent_answer(ans, strlen(ans), TG_ANSWER_RESPONSES, NULL, &an, &b, NULL, 0), 0);
    assert_string_equal(b.b_data, "hi{}");
    assert_string_equal(an.an_finish, "completed");
    tg_buf_reset(&b);
    const char *req = "{\"model\":\"m\",\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_text\","
                      "\"text\":\"a\"}]}],\"instructions\":\"b\",\"tools\":[{\"description\":\"no\"}]}";
    assert_int_equal(tg_agent_prompt_text(req, strlen(req), &b), 0);
    assert_string_equal(b.b_data, "ab");
    tg_buf_free(&b);
}

static void test_collect_text(void **st)
{
    (void)st;
    tg_buf_t b;
    tg_buf_init(&b, 1024);
    tg_chunk_t ck;
    const char *ev = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi \\\"there\\\" \\u00e9\\n\"}}]}\n\n";
    assert_int_equal(tg_sse_chunk(ev, strlen(ev), &ck, &b), 0);
    assert_string_equal(b.b_data, "Hi \"there\" \xc3\xa9\n");
    tg_buf_reset(&b);
    const char *ans = "{\"choices\":[{\"message\":{\"content\":null,\"tool_calls\":[{\"function\":"
                      "{\"arguments\":\"{\\\"a\\\":1}\"}}]}},{\"message\":{\"content\":\"two\"}}],"
                      "\"tools\":[{\"content\":\"not produced\"}]}";
    tg_answer_t an;
    assert_int_equal(tg_agent_answer(ans, strlen(ans), TG_ANSWER_CHAT, NULL, &an, &b, NULL, 0), 0);
    assert_string_equal(b.b_data, "{\"a\":1}two");
    tg_buf_free(&b);
    size_t used;
    tg_buf_init(&b, 4);
    assert_int_equal(tg_agent_json_decode("\"abcdef\"", 8, &b, &used), TG_AGENT_ETOOBIG);
    tg_buf_free(&b);
}

static void test_glob_cidr(void **st)
{
    (void)st;
    assert_true(tg_agent_glob("gpt-4o*", "gpt-4o-mini"));
    assert_true(tg_agent_glob("gpt-4o*", "gpt-4o"));
    assert_false(tg_agent_glob("gpt-4o*", "gpt-4"));
    assert_true(tg_agent_glob("*-mini", "o3-mini"));
    assert_true(tg_agent_glob("g?t*o", "gpt-4o"));
    assert_true(tg_agent_glob("*", ""));
    assert_false(tg_agent_glob("a*b*c", "abxbxcx"));
    assert_true(tg_agent_glob("a*b*c", "abxbxc"));

    tg_ip_t ip;
    assert_int_equal(tg_agent_ip_parse("10.1.2.3", &ip), 0);
    assert_int_equal(tg_agent_cidr_match("10.0.0.0/8", &ip), 1);
    assert_int_equal(tg_agent_cidr_match("10.1.2.0/30", &ip), 1);
    assert_int_equal(tg_agent_cidr_match("10.1.2.4/30", &ip), 0);
    assert_int_equal(tg_agent_cidr_match("10.1.2.3", &ip), 1);
    assert_int_equal(tg_agent_cidr_match("0.0.0.0/0", &ip), 1);
    assert_int_equal(tg_agent_cidr_match("::ffff:10.1.2.3/128", &ip), 1);
    assert_int_equal(tg_agent_cidr_match("2001:db8::/32", &ip), 0);
    assert_int_equal(tg_agent_cidr_match("10.0.0.0/33", &ip), -1);
    assert_int_equal(tg_agent_cidr_match("nonsense/8", &ip), -1);
    assert_int_equal(tg_agent_ip_parse("2001:db8:1::5", &ip), 0);
    assert_int_equal(tg_agent_cidr_match("2001:db8::/32", &ip), 1);
    assert_int_equal(tg_agent_cidr_match("2001:db9::/32", &ip), 0);
    assert_int_equal(tg_agent_cidr_match("2001:db8:1::/47", &ip), 1);
    assert_int_equal(tg_agent_cidr_match("10.0.0.0/8", &ip), 0);
    assert_int_equal(tg_agent_ip_parse("300.1.1.1", &ip), -1);
}

static void test_breaker(void **st)
{
    (void)st;
    tg_brk_conf_t c = {.bc_consecutive = 3, .bc_open_ms = 1000, .bc_probes = 2};
    tg_brk_conf_fill(&c);
    tg_brk_t b;
    tg_brk_init(&b);
    int64_t t = 100000;
    /* two failures, a success: still closed (not in a row) */
    for (int i = 0; i < 2; i++) {
        assert_true(tg_brk_allow(&b, &c, t));
        tg_brk_record(&b, &c, 0, t);
    }
    assert_true(tg_brk_allow(&b, &c, t));
    tg_brk_record(&b, &c, 1, t);
    for (int i = 0; i < 3; i++) {
        assert_true(tg_brk_allow(&b, &c, t));
        tg_brk_record(&b, &c, 0, t);
    }
    assert_int_equal(b.br_state, TG_BRK_OPEN);
    assert_false(tg_brk_allow(&b, &c, t + 999));
    /* half-open: one probe at a time; a failed probe re-opens */
    assert_true(tg_brk_allow(&b, &c, t + 1000));
    assert_int_equal(b.br_state, TG_BRK_HALF_OPEN);
    assert_false(tg_brk_allow(&b, &c, t + 1000));
    tg_brk_record(&b, &c, 0, t + 1001);
    assert_int_equal(b.br_state, TG_BRK_OPEN);
    assert_false(tg_brk_allow(&b, &c, t + 1500));
    /* two good probes close it */
    assert_true(tg_brk_allow(&b, &c, t + 2001));
    tg_brk_record(&b, &c, 1, t + 2002);
    assert_int_equal(b.br_state, TG_BRK_HALF_OPEN);
    assert_true(tg_brk_allow(&b, &c, t + 2003));
    tg_brk_record(&b, &c, 1, t + 2004);
    assert_int_equal(b.br_state, TG_BRK_CLOSED);
    assert_int_equal(b.br_opens, 2);

    /* error rate: 50% over >= 4 requests, never 3 in a row */
    tg_brk_conf_t r = {.bc_consecutive = 100, .bc_rate_ppm = 500000, .bc_min_requests = 4, .bc_window_ms = 1000};
    tg_brk_conf_fill(&r);
    tg_brk_init(&b);
    int pattern[] = {1, 0, 1, 0};
    for (int i = 0; i < 4; i++) {
        assert_true(tg_brk_allow(&b, &r, t));
        tg_brk_record(&b, &r, pattern[i], t);
    }
    assert_int_equal(b.br_state, TG_BRK_OPEN);
    /* outside the window the count restarts */
    tg_brk_init(&b);
    tg_brk_record(&b, &r, 0, t);
    tg_brk_record(&b, &r, 0, t);
    tg_brk_record(&b, &r, 1, t + 1000);
    tg_brk_record(&b, &r, 1, t + 1000);
    tg_brk_record(&b, &r, 0, t + 1001);
    tg_brk_record(&b, &r, 1, t + 1001);
    assert_int_equal(b.br_state, TG_BRK_CLOSED);
}

static void test_pick_backoff(void **st)
{
    (void)st;
    uint32_t w[] = {1, 0, 3};
    int hits[3] = {0};
    for (uint64_t r = 0; r < 400; r++)
        hits[tg_agent_pick(w, 3, r)]++;
    assert_int_equal(hits[0], 100);
    assert_int_equal(hits[1], 0);
    assert_int_equal(hits[2], 300);
    uint32_t z[] = {0, 0};
    assert_int_equal(tg_agent_pick(z, 2, 7), -1);
    assert_int_equal(tg_agent_backoff(100, 1000, 0, 0), 100);
    assert_int_equal(tg_agent_backoff(100, 1000, 2, 0), 400);
    assert_int_equal(tg_agent_backoff(100, 1000, 9, 0), 1000);
    assert_int_equal(tg_agent_backoff(100, 1000, 0, 700), 700);
    assert_int_equal(tg_agent_backoff(100, 1000, 0, 5000), 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_fields), cmocka_unit_test(test_scan_errors),
        cmocka_unit_test(test_rewrite),     cmocka_unit_test(test_sse),
        cmocka_unit_test(test_usage),       cmocka_unit_test(test_collect_text),
        cmocka_unit_test(test_usage_other_endpoints),
        cmocka_unit_test(test_usage_top_level_only), cmocka_unit_test(test_usage_strict),
        cmocka_unit_test(test_usage_vendor_cache),
        cmocka_unit_test(test_vendor_rows_follow_provider_type),
        cmocka_unit_test(test_glob_cidr),
        cmocka_unit_test(test_breaker),     cmocka_unit_test(test_pick_backoff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
