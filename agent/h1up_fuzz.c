/* h1up_fuzz.c: libFuzzer target for the lean upstream client's response
 * parser (h1up.h's tg_h1_parse_*). The input is a response as a server
 * would send it, then EOF. It is fed twice: whole, and cut into pieces
 * whose sizes come from the input's first byte; both must give the same
 * transcript (fields, head, body bytes, outcome), a head at most once, its
 * status 200-599, and body bytes only after the head. See docs/FUZZING.md. */
#include <string.h>

#include "agent/h1up.h"
#include "base/tg_base.h"
#include "tests/fuzz/fuzz.h"

typedef struct seen {
    tg_buf_t s_log;
    int s_heads;
} seen_t;

static void on_field(void *arg, const char *name, size_t nl, const char *value, size_t vl)
{
    seen_t *s = arg;
    TG_FUZZ_CHECK(s->s_heads == 0);
    tg_buf_append(&s->s_log, "F", 1);
    tg_buf_append(&s->s_log, name, nl);
    tg_buf_append(&s->s_log, ":", 1);
    tg_buf_append(&s->s_log, value, vl);
}

static void on_head(void *arg, int status, const char *ctype)
{
    seen_t *s = arg;
    TG_FUZZ_CHECK(status >= 200 && status <= 599);
    TG_FUZZ_CHECK(ctype != NULL);
    s->s_heads++;
    tg_buf_printf(&s->s_log, "H%d %s|", status, ctype);
}

static int on_body(void *arg, const char *data, size_t n)
{
    seen_t *s = arg;
    TG_FUZZ_CHECK(s->s_heads == 1);
    tg_buf_append(&s->s_log, data, n); /* pieces are joined: the bytes, not the cuts, must agree */
    return TG_H1_TAKEN;
}

static const tg_h1_handler_t hh = {.hh_field = on_field, .hh_head = on_head, .hh_body = on_body};

/* Feeds data in pieces of `step` bytes (0: whole), then EOF; the outcome
 * goes into the log. */
static void run(const uint8_t *data, size_t size, size_t step, seen_t *s)
{
    char msg[200];
    tg_buf_init(&s->s_log, 64u << 20);
    s->s_heads = 0;
    tg_h1_parse_t *p = tg_h1_parse_new(&hh, s);
    TG_FUZZ_CHECK(p != NULL);
    int rc = 0;
    size_t off = 0;
    while (rc == 0 && off < size) {
        size_t n = step && size - off > step ? step : size - off;
        rc = tg_h1_parse_feed(p, (const char *)data + off, n, msg, sizeof msg);
        off += n;
    }
    if (rc == 0)
        rc = tg_h1_parse_feed(p, NULL, 0, msg, sizeof msg);
    if (rc == 1)
        TG_FUZZ_CHECK(s->s_heads == 1);
    tg_buf_printf(&s->s_log, "|=%d", rc);
    tg_h1_parse_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > (256u << 10))
        return 0;
    size_t step = (size_t)(data[0] % 13) + 1;
    data++;
    size--;
    seen_t a, b;
    run(data, size, 0, &a);
    run(data, size, step, &b);
    TG_FUZZ_CHECK(a.s_log.b_len == b.s_log.b_len);
    TG_FUZZ_CHECK(a.s_log.b_len == 0 || memcmp(a.s_log.b_data, b.s_log.b_data, a.s_log.b_len) == 0);
    tg_buf_free(&a.s_log);
    tg_buf_free(&b.s_log);
    return 0;
}
