/* meter_batch: drives the tokenizer for the exactness tests and the
 * benchmark, many documents per process.
 *
 *   meter_batch            reads records from stdin, each a header line
 *                          "<encoding> <allow|reject|text> <nbytes>\n" and
 *                          then nbytes of raw text; writes one line per record:
 *                          "<count> <id> <id> ...", or "ERR <message>".
 *   meter_batch --bench <encoding> <file> [repeats]
 *                          counts the file's tokens `repeats` times (default
 *                          3) in one thread and prints JSON: bytes, tokens,
 *                          the best run's CPU seconds, MB/s and tokens/s.
 *   meter_batch --chat-bench <file> [repeats]
 *                          counts the chat request in <file> (JSON) `repeats`
 *                          times (default 20000) and prints JSON: its prompt
 *                          tokens and the CPU microseconds per count.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/tg_base.h"
#include "meter/tg_meter.h"

/* CPU time of this thread: the machine is shared, so wall time measures the
 * neighbours as much as the tokenizer; the benchmark compares CPU time. */
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *p = NULL;
    long n;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        goto fail;
    p = tg_malloc((size_t)n + 1);
    if (!p || fread(p, 1, (size_t)n, f) != (size_t)n)
        goto fail;
    fclose(f);
    *len = (size_t)n;
    return p;
fail:
    tg_free(p);
    fclose(f);
    return NULL;
}

static int bench(tg_meter_t *m, const char *encname, const char *path, int reps)
{
    char err[TG_ERRLEN] = "";
    tg_meter_encoding_t enc;
    size_t len;
    uint64_t count = 0;
    double best = 1e99;
    char *text;

    if (tg_meter_encoding_from_name(encname, &enc, err, sizeof err) != 0) {
        fprintf(stderr, "meter_batch: %s\n", err);
        return 2;
    }
    if (!(text = read_file(path, &len))) {
        fprintf(stderr, "meter_batch: cannot read %s: %s\n", path, strerror(errno));
        return 1;
    }
    /* load the encoding first: the benchmark times counting, not loading */
    tg_meter_count(m, enc, "x", 1, TG_METER_SPECIAL_TEXT, &count, NULL, 0);
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        if (tg_meter_count(m, enc, text, len, TG_METER_SPECIAL_TEXT, &count, err, sizeof err) != 0) {
            fprintf(stderr, "meter_batch: %s\n", err);
            tg_free(text);
            return 1;
        }
        double dt = now() - t0;
        if (dt < best)
            best = dt;
    }
    printf("{\"encoding\":\"%s\",\"bytes\":%zu,\"tokens\":%llu,\"seconds\":%.6f,\"mb_per_s\":%.3f,"
           "\"tokens_per_s\":%.0f}\n",
           encname, len, (unsigned long long)count, best, (double)len / 1e6 / best,
           (double)count / best);
    tg_free(text);
    return 0;
}

/* "<count> <id> <id> ...\n", formatted by hand: the tests print millions. */
static void print_ids(const tg_meter_ids_t *ids)
{
    char buf[65536];
    size_t o = (size_t)snprintf(buf, sizeof buf, "%zu", ids->ids_n);
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
        buf[o++] = ' ';
        while (t)
            buf[o++] = tmp[--t];
    }
    buf[o++] = '\n';
    fwrite(buf, 1, o, stdout);
}

static int chat_bench(tg_meter_t *m, const char *path, int reps)
{
    char err[TG_ERRLEN] = "";
    tg_meter_chat_t c;
    size_t len;
    char *body = read_file(path, &len);
    if (!body) {
        fprintf(stderr, "meter_batch: cannot read %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (tg_meter_chat_count(m, body, len, NULL, &c, err, sizeof err) != 0) { /* loads too */
        fprintf(stderr, "meter_batch: %s\n", err);
        tg_free(body);
        return 1;
    }
    double t0 = now();
    for (int r = 0; r < reps; r++)
        tg_meter_chat_count(m, body, len, NULL, &c, NULL, 0);
    double us = (now() - t0) / reps * 1e6;
    printf("{\"bytes\":%zu,\"prompt_tokens\":%llu,\"estimate\":%d,\"us_per_request\":%.2f}\n", len,
           (unsigned long long)c.mc_prompt_tokens, c.mc_estimate, us);
    tg_free(body);
    return 0;
}

static int batch(tg_meter_t *m)
{
    char line[256], err[TG_ERRLEN];
    char *buf = NULL;
    size_t cap = 0;
    tg_meter_ids_t ids = {0};
    int rc = 0;

    while (fgets(line, sizeof line, stdin)) {
        char encname[64], mode[16];
        unsigned long long n;
        tg_meter_encoding_t enc;
        tg_meter_special_t sp;
        if (sscanf(line, "%63s %15s %llu", encname, mode, &n) != 3) {
            fprintf(stderr, "meter_batch: bad header line: %s", line);
            rc = 2;
            break;
        }
        if (n + 1 > cap) {
            char *p = tg_realloc(buf, n + 1);
            if (!p) {
                rc = 1;
                break;
            }
            buf = p;
            cap = n + 1;
        }
        if (fread(buf, 1, n, stdin) != n) {
            fprintf(stderr, "meter_batch: short record\n");
            rc = 2;
            break;
        }
        sp = strcmp(mode, "allow") == 0    ? TG_METER_SPECIAL_ALLOW
             : strcmp(mode, "reject") == 0 ? TG_METER_SPECIAL_REJECT
                                           : TG_METER_SPECIAL_TEXT;
        err[0] = '\0';
        ids.ids_n = 0;
        if (tg_meter_encoding_from_name(encname, &enc, err, sizeof err) != 0 ||
            tg_meter_encode(m, enc, buf, n, sp, &ids, err, sizeof err) != 0) {
            printf("ERR %s\n", err);
            continue;
        }
        print_ids(&ids);
    }
    fflush(stdout);
    tg_meter_ids_free(&ids);
    tg_free(buf);
    return rc;
}

int main(int argc, char **argv)
{
    char err[TG_ERRLEN] = "";
    tg_meter_t *m = tg_meter_create(err, sizeof err);
    int rc;
    if (!m) {
        fprintf(stderr, "meter_batch: %s\n", err);
        return 1;
    }
    if (argc >= 3 && strcmp(argv[1], "--chat-bench") == 0)
        rc = chat_bench(m, argv[2], argc >= 4 ? (int)strtol(argv[3], NULL, 10) : 20000);
    else if (argc >= 4 && strcmp(argv[1], "--bench") == 0)
        rc = bench(m, argv[2], argv[3], argc >= 5 ? (int)strtol(argv[4], NULL, 10) : 3);
    else
        rc = batch(m);
    tg_meter_destroy(m);
    return rc;
}
