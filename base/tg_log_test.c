/* Unit tests for tg_log: level filtering and well-formed, escaped JSON lines. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "base/tg_log.h"

/* Runs the logger with stderr redirected to a pipe; returns what it wrote. */
static void capture(char *out, size_t cap, void (*fn)(void))
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    int saved = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(p[1]);
    ssize_t n = read(p[0], out, cap - 1);
    out[n > 0 ? n : 0] = '\0';
    close(p[0]);
}

static void log_some(void)
{
    tg_log_set_level(TG_LOG_INFO);
    TG_LOG(TG_LOG_DEBUG, "cp", "hidden %d", 1);
    static const char *const kv[] = {"agent", "a\"1", "batch", "7", NULL};
    tg_log_kv(TG_LOG_WARN, "settle", kv, "line\none \"quoted\" \\ %s", "x");
}

static void test_levels_and_escaping(void **state)
{
    (void)state;
    char buf[4096];
    capture(buf, sizeof(buf), log_some);
    assert_null(strstr(buf, "hidden"));
    assert_non_null(strstr(buf, "\"level\":\"warn\",\"comp\":\"settle\""));
    assert_non_null(strstr(buf, "\"msg\":\"line\\none \\\"quoted\\\" \\\\ x\""));
    assert_non_null(strstr(buf, "\"agent\":\"a\\\"1\",\"batch\":\"7\"}\n"));
    assert_int_equal(strncmp(buf, "{\"ts\":\"20", 9), 0);
    assert_int_equal(tg_log_parse_level("warn"), TG_LOG_WARN);
    assert_int_equal(tg_log_parse_level("loud"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_levels_and_escaping)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
