/* tollctl tokens: counts the tokens of stdin with meter/'s tokenizer, so an
 * operator can check a disputed count without a control plane. The count
 * is exactly tiktoken's for the encoding (meter/README.md). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/tg_base.h"
#include "cli/tollctl_int.h"
#include "meter/tg_meter.h"

void usage_tokens(void)
{
    printf("usage: tollctl tokens (--encoding cl100k_base|o200k_base | --model NAME)\n"
           "                      [--ids] [--special text|allow|reject]\n\n"
           "Reads text from stdin and prints its token count; with --ids a second\n"
           "line holds the token ids, space-separated.\n"
           "  --encoding E   cl100k_base or o200k_base\n"
           "  --model NAME   pick the encoding from the model (gpt-4o -> o200k_base,\n"
           "                 gpt-4 -> cl100k_base, ...); models without a public\n"
           "                 tokenizer (claude-*, gemini-*, ...) print an estimate\n"
           "                 and say so on stderr\n"
           "  --special M    special tokens such as <|endoftext|>: counted as text\n"
           "                 (default, as the API sees user text), allowed as\n"
           "                 special ids, or rejected with an error\n"
           "Invalid UTF-8 counts as U+FFFD per ill-formed sequence.\n");
}

/* Reads all of stdin into b. Returns 0 or -1 with a message printed. */
static int read_stdin(tg_buf_t *b)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "tollctl tokens: reading stdin: %s\n", strerror(errno));
            return -1;
        }
        int rc = tg_buf_append(b, chunk, (size_t)n);
        if (rc != 0) {
            fprintf(stderr, "tollctl tokens: %s\n",
                    rc == TG_BUF_ETOOBIG ? "stdin is larger than the 1 GiB limit"
                                         : "out of memory reading stdin");
            return -1;
        }
    }
}

/* Prints the ids space-separated on one line, formatting by hand: a large
 * input has millions of ids. */
static void print_ids(const tg_meter_ids_t *ids)
{
    char buf[65536];
    size_t o = 0;
    for (size_t i = 0; i < ids->ids_n; i++) {
        char tmp[12];
        int t = 0;
        uint32_t v = ids->ids_v[i];
        do {
            tmp[t++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        if (o + 13 > sizeof buf) {
            fwrite(buf, 1, o, stdout);
            o = 0;
        }
        if (i)
            buf[o++] = ' ';
        while (t)
            buf[o++] = tmp[--t];
    }
    buf[o++] = '\n';
    fwrite(buf, 1, o, stdout);
}

int cmd_tokens(int argc, char **argv)
{
    const char *encname = NULL, *model = NULL, *special = "text";
    int want_ids = 0, rc = TOLLCTL_USAGE;
    char err[TG_ERRLEN] = "";
    tg_meter_encoding_t enc = TG_METER_CL100K_BASE;
    tg_meter_model_t mm = {TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000, NULL};
    tg_meter_special_t sp = TG_METER_SPECIAL_TEXT;
    tg_meter_t *m = NULL;
    tg_meter_ids_t ids = {0};
    tg_buf_t in;
    uint64_t count = 0;

    tg_buf_init(&in, TG_METER_MAX_INPUT);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_val = i + 1 < argc;
        if (strcmp(a, "--ids") == 0) {
            want_ids = 1;
        } else if (strcmp(a, "--encoding") == 0 || strcmp(a, "--model") == 0 ||
                   strcmp(a, "--special") == 0) {
            if (!has_val) {
                fprintf(stderr, "tollctl tokens: %s needs a value\n", a);
                goto done;
            }
            if (a[2] == 'e')
                encname = argv[++i];
            else if (a[2] == 'm')
                model = argv[++i];
            else
                special = argv[++i];
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage_tokens();
            rc = TOLLCTL_OK;
            goto done;
        } else {
            fprintf(stderr, "tollctl tokens: unknown flag '%s' (see tollctl help tokens)\n", a);
            goto done;
        }
    }
    if (encname && model) {
        fprintf(stderr, "tollctl tokens: give --encoding or --model, not both\n");
        goto done;
    }
    if (!encname && !model) {
        fprintf(stderr, "tollctl tokens: --encoding cl100k_base|o200k_base or --model NAME "
                        "is required\n");
        goto done;
    }
    if (encname && tg_meter_encoding_from_name(encname, &enc, err, sizeof err) != 0) {
        fprintf(stderr, "tollctl tokens: %s\n", err);
        goto done;
    }
    if (model) {
        if (tg_meter_model_lookup(model, 1, &mm, err, sizeof err) != 0) {
            fprintf(stderr, "tollctl tokens: %s\n", err);
            goto done;
        }
        enc = mm.mm_encoding;
    }
    if (strcmp(special, "text") == 0)
        sp = TG_METER_SPECIAL_TEXT;
    else if (strcmp(special, "allow") == 0)
        sp = TG_METER_SPECIAL_ALLOW;
    else if (strcmp(special, "reject") == 0)
        sp = TG_METER_SPECIAL_REJECT;
    else {
        fprintf(stderr, "tollctl tokens: unknown --special '%s': use text, allow or reject\n",
                special);
        goto done;
    }

    rc = TOLLCTL_FAIL;
    if (read_stdin(&in) != 0)
        goto done;
    if (!(m = tg_meter_create(err, sizeof err))) {
        fprintf(stderr, "tollctl tokens: %s\n", err);
        goto done;
    }
    const char *text = in.b_data ? in.b_data : "";
    int mrc = want_ids ? tg_meter_encode(m, enc, text, in.b_len, sp, &ids, err, sizeof err)
                       : tg_meter_count(m, enc, text, in.b_len, sp, &count, err, sizeof err);
    if (mrc != 0) {
        fprintf(stderr, "tollctl tokens: %s\n", err);
        goto done;
    }
    if (want_ids)
        count = ids.ids_n;
    if (mm.mm_kind == TG_METER_MODEL_ESTIMATE) {
        uint64_t est = (uint64_t)(((unsigned __int128)count * mm.mm_scale_ppm + 999999) / 1000000);
        fprintf(stderr,
                "tollctl tokens: '%s' has no public tokenizer: %llu is an estimate "
                "(%s count %llu x %u.%06u)\n",
                model, (unsigned long long)est, tg_meter_encoding_name(enc),
                (unsigned long long)count, mm.mm_scale_ppm / 1000000, mm.mm_scale_ppm % 1000000);
        count = est;
    }
    printf("%llu\n", (unsigned long long)count);
    if (want_ids)
        print_ids(&ids);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "tollctl tokens: writing stdout: %s\n", strerror(errno));
        goto done;
    }
    rc = TOLLCTL_OK;
done:
    tg_meter_ids_free(&ids);
    tg_meter_destroy(m);
    tg_buf_free(&in);
    return rc;
}
