/* replay.c: main() for a fuzz target's regression test. Feeds every file of
 * the corpus directories named on the command line to the target's
 * LLVMFuzzerTestOneInput, once each, as one cmocka test, so tests/run.sh
 * counts it like every other C suite. A crash (the sanitizers abort) or a
 * failed assertion in the target fails the test; so does an empty corpus.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int g_argc;
static char **g_argv;

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return -1;
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    if (buf == NULL) { fclose(f); return -1; }
    size_t r;
    while ((r = fread(buf + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) {
            uint8_t *nb = realloc(buf, cap * 2);
            if (nb == NULL) { free(buf); fclose(f); return -1; }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    /* an exact-size copy, so ASan sees a read one past the input */
    uint8_t *exact = malloc(len ? len : 1);
    if (exact == NULL) { free(buf); return -1; }
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

static int replay_dir(const char *dir, long *files)
{
    DIR *d = opendir(dir);
    if (d == NULL) { fprintf(stderr, "replay: cannot open %s\n", dir); return -1; }
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (replay_file(path) != 0) { fprintf(stderr, "replay: cannot read %s\n", path); rc = -1; }
        (*files)++;
    }
    closedir(d);
    return rc;
}

static void test_replay_corpus(void **st)
{
    (void)st;
    long files = 0;
    for (int i = 1; i < g_argc; i++)
        assert_int_equal(replay_dir(g_argv[i], &files), 0);
    printf("replayed %ld corpus files\n", files);
    assert_true(files > 0);
}

int main(int argc, char **argv)
{
    g_argc = argc;
    g_argv = argv;
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_replay_corpus)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
