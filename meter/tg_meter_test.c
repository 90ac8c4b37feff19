/* Unit tests of tg_meter: known ids, count == encode, special-token modes,
 * UTF-8 repair, ids that decode back to the input, long runs, allocation
 * failures, concurrent first use, the model map, and chat counting by the
 * cookbook rules. Exactness against tiktoken itself is tested end to end
 * (tests/e2e/meter_exact.test.mjs). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "base/tg_base.h"
#include "meter/tg_meter.h"

static tg_meter_t *M;

static int setup(void **state)
{
    (void)state;
    char err[TG_ERRLEN] = "";
    M = tg_meter_create(err, sizeof err);
    return M ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    tg_meter_destroy(M);
    return 0;
}

static uint64_t count(tg_meter_encoding_t e, const char *s)
{
    uint64_t n = 0;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_meter_count(M, e, s, strlen(s), TG_METER_SPECIAL_TEXT, &n, err, sizeof err), 0);
    return n;
}

static void assert_ids(tg_meter_encoding_t e, const char *s, tg_meter_special_t sp,
                       const uint32_t *want, size_t nwant)
{
    tg_meter_ids_t ids = {0};
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_meter_encode(M, e, s, strlen(s), sp, &ids, err, sizeof err), 0);
    assert_int_equal(ids.ids_n, nwant);
    for (size_t i = 0; i < nwant; i++)
        assert_int_equal(ids.ids_v[i], want[i]);
    tg_meter_ids_free(&ids);
}

/* Concatenates the bytes of the ids into out; returns the length. */
static size_t decode(tg_meter_encoding_t e, const tg_meter_ids_t *ids, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < ids->ids_n; i++) {
        size_t l;
        const char *p = tg_meter_token_bytes(M, e, ids->ids_v[i], &l);
        assert_non_null(p);
        assert_true(o + l <= cap);
        memcpy(out + o, p, l);
        o += l;
    }
    return o;
}

static void test_known_ids(void **state)
{
    (void)state;
    /* ids as tiktoken gives them (checked with the npm package) */
    const uint32_t hw_cl[] = {9906, 1917}, hw_o2[] = {13225, 2375};
    assert_ids(TG_METER_CL100K_BASE, "Hello world", TG_METER_SPECIAL_TEXT, hw_cl, 2);
    assert_ids(TG_METER_O200K_BASE, "Hello world", TG_METER_SPECIAL_TEXT, hw_o2, 2);
    assert_ids(TG_METER_CL100K_BASE, "", TG_METER_SPECIAL_TEXT, NULL, 0);
    const uint32_t eot_cl[] = {64, 100257, 65}, eot_o2[] = {64, 199999, 65};
    assert_ids(TG_METER_CL100K_BASE, "a<|endoftext|>b", TG_METER_SPECIAL_ALLOW, eot_cl, 3);
    assert_ids(TG_METER_O200K_BASE, "a<|endoftext|>b", TG_METER_SPECIAL_ALLOW, eot_o2, 3);
    assert_true(count(TG_METER_CL100K_BASE, "a<|endoftext|>b") > 3); /* as text */
}

static void test_special_reject_keeps_ids(void **state)
{
    (void)state;
    tg_meter_ids_t ids = {0};
    char err[TG_ERRLEN] = "";
    const char *t = "x <|fim_prefix|>";
    assert_int_equal(tg_meter_encode(M, TG_METER_CL100K_BASE, "hi", 2, TG_METER_SPECIAL_REJECT,
                                     &ids, err, sizeof err),
                     0);
    assert_int_equal(ids.ids_n, 1);
    assert_int_equal(tg_meter_encode(M, TG_METER_CL100K_BASE, t, strlen(t), TG_METER_SPECIAL_REJECT,
                                     &ids, err, sizeof err),
                     TG_METER_ESPECIAL);
    assert_int_equal(ids.ids_n, 1); /* unchanged */
    assert_non_null(strstr(err, "<|fim_prefix|> at byte 2"));
    /* <|fim_prefix|> is not special in o200k_base: plain text there */
    err[0] = '\0';
    assert_int_equal(tg_meter_encode(M, TG_METER_O200K_BASE, t, strlen(t), TG_METER_SPECIAL_REJECT,
                                     &ids, err, sizeof err),
                     0);
    tg_meter_ids_free(&ids);
    tg_meter_ids_free(NULL);
}

static void test_invalid_utf8_is_replacement(void **state)
{
    (void)state;
    const char *bad[] = {"a\xff\x62", "\xc0\x80", "\xe0\x80\x80x", "\xed\xa0\x80", "\xf0\x9f\x98",
                         "\xf4\x90\x80\x80", "x\xe2\x82"};
    const char *good[] = {"a\xef\xbf\xbd\x62", "\xef\xbf\xbd\xef\xbf\xbd",
                          "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdx",
                          "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", "\xef\xbf\xbd",
                          "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", "x\xef\xbf\xbd"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (int e = 0; e < TG_METER_NENCODINGS; e++) {
            tg_meter_ids_t a = {0}, b = {0};
            assert_int_equal(tg_meter_encode(M, e, bad[i], strlen(bad[i]), TG_METER_SPECIAL_TEXT,
                                             &a, NULL, 0),
                             0);
            assert_int_equal(tg_meter_encode(M, e, good[i], strlen(good[i]), TG_METER_SPECIAL_TEXT,
                                             &b, NULL, 0),
                             0);
            assert_int_equal(a.ids_n, b.ids_n);
            assert_memory_equal(a.ids_v, b.ids_v, a.ids_n * sizeof *a.ids_v);
            tg_meter_ids_free(&a);
            tg_meter_ids_free(&b);
        }
    }
}

static uint64_t rs = 12345;
static uint32_t rnd(void)
{
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rs >> 33);
}

static void test_count_equals_encode_and_roundtrip(void **state)
{
    (void)state;
    static const char *frag[] = {"hello", " world", "'s", "\n\n", "  ", "中文", "123456", "!!",
                                 "\xcc\x81", "\xf0\x9f\x98\x80", "\t", "'LL", "Ab", "\xc3\xa9"};
    char text[4096], back[8192];
    for (int round = 0; round < 2000; round++) {
        size_t n = 0;
        while (n < sizeof text - 16 && rnd() % 64) {
            const char *f = frag[rnd() % (sizeof frag / sizeof frag[0])];
            memcpy(text + n, f, strlen(f));
            n += strlen(f);
        }
        for (int e = 0; e < TG_METER_NENCODINGS; e++) {
            tg_meter_ids_t ids = {0};
            uint64_t c = 0;
            assert_int_equal(tg_meter_encode(M, e, text, n, TG_METER_SPECIAL_TEXT, &ids, NULL, 0), 0);
            assert_int_equal(tg_meter_count(M, e, text, n, TG_METER_SPECIAL_TEXT, &c, NULL, 0), 0);
            assert_int_equal(c, ids.ids_n);
            size_t bl = decode(e, &ids, back, sizeof back);
            assert_int_equal(bl, n);
            assert_memory_equal(back, text, n);
            tg_meter_ids_free(&ids);
        }
    }
}

static void test_long_run_of_one_char(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    char *t = tg_malloc(n), *back = tg_malloc(n);
    assert_non_null(t);
    assert_non_null(back);
    memset(t, 'a', n);
    for (int e = 0; e < TG_METER_NENCODINGS; e++) {
        tg_meter_ids_t ids = {0};
        assert_int_equal(tg_meter_encode(M, e, t, n, TG_METER_SPECIAL_TEXT, &ids, NULL, 0), 0);
        assert_true(ids.ids_n > 0 && ids.ids_n < n / 2);
        assert_int_equal(decode(e, &ids, back, n), n);
        assert_memory_equal(back, t, n);
        tg_meter_ids_free(&ids);
    }
    tg_free(t);
    tg_free(back);
}

static void test_alloc_failures_are_clean(void **state)
{
    (void)state;
    const char *t = "Allocation failures: a long piece of one character follows. "
                    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
                    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
                    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
                    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
                    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
                    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
                    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
                    "\xff invalid byte";
    int succeeded = 0;
    for (long k = 0; k < 40 && !succeeded; k++) {
        long live = tg_alloc_live();
        char err[TG_ERRLEN] = "";
        tg_alloc_fail_after(k);
        tg_meter_t *m = tg_meter_create(err, sizeof err);
        tg_meter_ids_t ids = {0};
        int rc = m ? tg_meter_encode(m, TG_METER_O200K_BASE, t, strlen(t), TG_METER_SPECIAL_TEXT,
                                     &ids, err, sizeof err)
                   : TG_METER_ENOMEM;
        tg_alloc_fail_after(-1);
        if (rc == 0)
            succeeded = 1;
        else {
            assert_int_equal(rc, TG_METER_ENOMEM);
            assert_non_null(strstr(err, "out of memory"));
        }
        tg_meter_ids_free(&ids);
        tg_meter_destroy(m);
        assert_int_equal(tg_alloc_live(), live);
    }
    assert_true(succeeded);
}

/* A piece long enough for the bucket-queue merge, under allocation failures:
 * every failure is ENOMEM and frees what it took. */
static void test_alloc_failures_long_piece(void **state)
{
    (void)state;
    size_t n = 9000;
    char *t = tg_malloc(n);
    assert_non_null(t);
    for (size_t i = 0; i < n; i++)
        t[i] = "ab"[i % 7 == 0];
    int succeeded = 0;
    for (long k = 0; k < 400 && !succeeded; k++) {
        long live = tg_alloc_live();
        tg_meter_ids_t ids = {0};
        char err[TG_ERRLEN] = "";
        tg_alloc_fail_after(k);
        int rc = tg_meter_encode(M, TG_METER_CL100K_BASE, t, n, TG_METER_SPECIAL_TEXT, &ids, err,
                                 sizeof err);
        tg_alloc_fail_after(-1);
        if (rc == 0)
            succeeded = 1;
        else
            assert_int_equal(rc, TG_METER_ENOMEM);
        tg_meter_ids_free(&ids);
        assert_int_equal(tg_alloc_live(), live);
    }
    assert_true(succeeded);
    tg_free(t);
}

typedef struct thr {
    tg_meter_t *t_m;
    uint64_t t_count;
} thr_t;

static void *thr_run(void *arg)
{
    thr_t *t = arg;
    const char *s = "Concurrent first use loads the encoding once. 同时加载。";
    tg_meter_count(t->t_m, TG_METER_O200K_BASE, s, strlen(s), TG_METER_SPECIAL_TEXT, &t->t_count,
                   NULL, 0);
    return NULL;
}

static void test_concurrent_first_use(void **state)
{
    (void)state;
    tg_meter_t *m = tg_meter_create(NULL, 0);
    pthread_t th[4];
    thr_t t[4];
    for (int i = 0; i < 4; i++) {
        t[i] = (thr_t){m, 0};
        assert_int_equal(pthread_create(&th[i], NULL, thr_run, &t[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_true(t[i].t_count > 5);
        assert_int_equal(t[i].t_count, t[0].t_count);
    }
    tg_meter_destroy(m);
}

static void test_encoding_names_and_errors(void **state)
{
    (void)state;
    tg_meter_encoding_t e;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_meter_encoding_from_name("o200k_base", &e, err, sizeof err), 0);
    assert_int_equal(e, TG_METER_O200K_BASE);
    assert_string_equal(tg_meter_encoding_name(e), "o200k_base");
    assert_int_equal(tg_meter_encoding_from_name("p50k", &e, err, sizeof err), TG_METER_EENCODING);
    assert_string_equal(err, "unknown encoding 'p50k': use cl100k_base or o200k_base");
    for (int c = 0; c >= TG_METER_ELAST; c--)
        assert_non_null(tg_meter_strerror(c));
    assert_string_equal(tg_meter_strerror(-100), "unknown error code");
    size_t l;
    assert_null(tg_meter_token_bytes(M, TG_METER_CL100K_BASE, 100256, &l)); /* a gap */
    assert_non_null(tg_meter_token_bytes(M, TG_METER_CL100K_BASE, 100276, &l));
    assert_int_equal(l, strlen("<|endofprompt|>"));
}

static void test_model_map(void **state)
{
    (void)state;
    const struct {
        const char *model;
        tg_meter_model_kind_t kind;
        tg_meter_encoding_t enc;
        uint32_t ppm;
    } cases[] = {
        {"gpt-4o", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
        {"gpt-4o-mini-2024-07-18", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
        {"gpt-4.1-mini", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
        {"gpt-5-nano", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
        {"o1", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
        {"o4-mini", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
        {"azure/gpt-4o", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
        {"gpt-4", TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000},
        {"gpt-4-0613", TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000},
        {"gpt-3.5-turbo", TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000},
        {"text-embedding-3-small", TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000},
        {"claude-sonnet-4-5", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1200000},
        {"anthropic/claude-3-haiku", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1200000},
        {"gemini-2.5-pro", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1100000},
        {"qwen2.5-72b-instruct", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1100000},
        {"deepseek-chat", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1100000},
        {"o10-unknown", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1000000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tg_meter_model_t mm;
        assert_int_equal(tg_meter_model_lookup(cases[i].model, 1, &mm, NULL, 0), 0);
        assert_int_equal(mm.mm_kind, cases[i].kind);
        assert_int_equal(mm.mm_encoding, cases[i].enc);
        assert_int_equal(mm.mm_scale_ppm, cases[i].ppm);
    }
    char err[TG_ERRLEN] = "";
    tg_meter_model_t mm;
    assert_int_equal(tg_meter_model_lookup("mystery-1", 0, &mm, err, sizeof err), TG_METER_EMODEL);
    assert_non_null(strstr(err, "unknown model 'mystery-1'"));
}

static void test_chat_messages(void **state)
{
    (void)state;
    const char *body =
        "{\"model\":\"gpt-4o\",\"messages\":["
        "{\"role\":\"system\",\"content\":\"You are a helpful assistant.\"},"
        "{\"role\":\"user\",\"name\":\"example_user\",\"content\":\"New synergies will help drive top-line growth.\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is in this image?\"},"
        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x/y.png\"}}]}]}";
    tg_meter_chat_t c;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_meter_chat_count(M, body, strlen(body), NULL, &c, err, sizeof err), 0);
    tg_meter_encoding_t o = TG_METER_O200K_BASE;
    uint64_t want = 3 + count(o, "system") + count(o, "You are a helpful assistant.") + 3 +
                    count(o, "user") + count(o, "example_user") + 1 +
                    count(o, "New synergies will help drive top-line growth.") + 3 +
                    count(o, "user") + count(o, "What is in this image?") + 3;
    assert_int_equal(c.mc_prompt_tokens, want);
    assert_int_equal(c.mc_message_tokens, want);
    assert_int_equal(c.mc_tool_tokens, 0);
    assert_int_equal(c.mc_images, 1);
    assert_int_equal(c.mc_estimate, 0);
    assert_int_equal(c.mc_encoding, TG_METER_O200K_BASE);
    /* the same request for gpt-4 counts with cl100k_base */
    assert_int_equal(tg_meter_chat_count(M, body, strlen(body), "gpt-4", &c, err, sizeof err), 0);
    assert_int_equal(c.mc_encoding, TG_METER_CL100K_BASE);
    /* and for a Claude model it is a flagged estimate, scaled up */
    assert_int_equal(tg_meter_chat_count(M, body, strlen(body), "claude-3-5-sonnet", &c, err,
                                         sizeof err),
                     0);
    assert_int_equal(c.mc_estimate, 1);
    assert_int_equal(c.mc_prompt_tokens, (want * 12 + 9) / 10);
}

static void test_chat_tools(void **state)
{
    (void)state;
    const char *body =
        "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"Weather?\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"description\":\"Get the weather.\",\"parameters\":{\"type\":\"object\",\"properties\":{"
        "\"city\":{\"type\":\"string\",\"description\":\"City name.\"},"
        "\"unit\":{\"type\":\"string\",\"description\":\"Unit\",\"enum\":[\"c\",\"f\"]}}}}}]}";
    tg_meter_chat_t c;
    char err[TG_ERRLEN] = "";
    assert_int_equal(tg_meter_chat_count(M, body, strlen(body), NULL, &c, err, sizeof err), 0);
    tg_meter_encoding_t o = TG_METER_O200K_BASE;
    /* cookbook: func_init 7, name:desc (trailing '.' dropped), prop_init 3,
     * per property prop_key 3 + "name:type:desc", enum_init -3 + 3 per item
     * + item tokens, func_end 12 */
    uint64_t tools = 7 + count(o, "get_weather:Get the weather") + 3 + 3 +
                     count(o, "city:string:City name") + 3 - 3 + 3 + count(o, "c") + 3 +
                     count(o, "f") + count(o, "unit:string:Unit") + 12;
    uint64_t msgs = 3 + count(o, "user") + count(o, "Weather?") + 3;
    assert_int_equal(c.mc_tool_tokens, tools);
    assert_int_equal(c.mc_message_tokens, msgs);
    assert_int_equal(c.mc_prompt_tokens, tools + msgs);
    /* cl100k models use func_init 10 */
    assert_int_equal(tg_meter_chat_count(M, body, strlen(body), "gpt-4", &c, err, sizeof err), 0);
    tg_meter_encoding_t cl = TG_METER_CL100K_BASE;
    assert_int_equal(c.mc_tool_tokens, 10 + count(cl, "get_weather:Get the weather") + 3 + 3 +
                                           count(cl, "city:string:City name") + 3 - 3 + 3 +
                                           count(cl, "c") + 3 + count(cl, "f") +
                                           count(cl, "unit:string:Unit") + 12);
}

static void test_chat_escapes_and_big_requests(void **state)
{
    (void)state;
    tg_meter_chat_t c;
    char err[TG_ERRLEN] = "";
    tg_meter_encoding_t o = TG_METER_O200K_BASE;
    /* escapes decode before counting; a lone surrogate counts as U+FFFD */
    const char *body = "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":"
                       "\"line\\none \\\"q\\\" caf\\u00e9 \\ud83d\\ude00 \\ud800x\\t\\/\"},"
                       "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\","
                       "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}]}";
    assert_int_equal(tg_meter_chat_count(M, body, strlen(body), NULL, &c, err, sizeof err), 0);
    uint64_t want = 3 + count(o, "user") + count(o, "line\none \"q\" caf\xc3\xa9 \xf0\x9f\x98\x80 \xef\xbf\xbdx\t/") +
                    3 + count(o, "assistant") + count(o, "f") + count(o, "{}") + 3;
    assert_int_equal(c.mc_prompt_tokens, want);
    /* more JSON tokens than the stack array holds */
    tg_buf_t b;
    tg_buf_init(&b, 1 << 20);
    assert_int_equal(tg_buf_puts(&b, "{\"model\":\"gpt-4\",\"messages\":["), 0);
    for (int i = 0; i < 300; i++)
        assert_int_equal(tg_buf_printf(&b, "%s{\"role\":\"user\",\"content\":\"message %d\"}",
                                       i ? "," : "", i), 0);
    assert_int_equal(tg_buf_puts(&b, "]}"), 0);
    assert_int_equal(tg_meter_chat_count(M, b.b_data, b.b_len, NULL, &c, err, sizeof err), 0);
    uint64_t w2 = 3;
    char line[32];
    for (int i = 0; i < 300; i++) {
        snprintf(line, sizeof line, "message %d", i);
        w2 += 3 + count(TG_METER_CL100K_BASE, "user") + count(TG_METER_CL100K_BASE, line);
    }
    assert_int_equal(c.mc_prompt_tokens, w2);
    tg_buf_free(&b);
}

static void test_chat_bad_json(void **state)
{
    (void)state;
    const struct {
        const char *body, *msg;
    } cases[] = {
        {"{\"model\":", "not JSON: truncated"},
        {"{\"model\": x}", "not JSON: invalid"},
        {"[1,2]", "not JSON: not an object"},
        {"{\"messages\":[{\"content\":\"bad \\q escape\"}]}", "not JSON: invalid"},
        {"{\"model\":\"gpt-4o\"}", "no \"messages\" array"},
        {"{\"messages\":[1]}", "messages[0] is not an object"},
        {"{\"messages\":[],\"tools\":[{\"type\":\"function\"}]}", "tools[0] has no \"function\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tg_meter_chat_t c;
        char err[TG_ERRLEN] = "";
        assert_int_equal(tg_meter_chat_count(M, cases[i].body, strlen(cases[i].body), NULL, &c, err,
                                             sizeof err),
                         TG_METER_EJSON);
        assert_non_null(strstr(err, cases[i].msg));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_ids),
        cmocka_unit_test(test_special_reject_keeps_ids),
        cmocka_unit_test(test_invalid_utf8_is_replacement),
        cmocka_unit_test(test_count_equals_encode_and_roundtrip),
        cmocka_unit_test(test_long_run_of_one_char),
        cmocka_unit_test(test_alloc_failures_are_clean),
        cmocka_unit_test(test_alloc_failures_long_piece),
        cmocka_unit_test(test_concurrent_first_use),
        cmocka_unit_test(test_encoding_names_and_errors),
        cmocka_unit_test(test_model_map),
        cmocka_unit_test(test_chat_messages),
        cmocka_unit_test(test_chat_tools),
        cmocka_unit_test(test_chat_escapes_and_big_requests),
        cmocka_unit_test(test_chat_bad_json),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
