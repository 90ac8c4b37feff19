/* tg_log: one JSON line per event on stderr (see tg_log.h). */
#include "base/tg_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int min_level = TG_LOG_INFO;

void tg_log_set_level(int level)
{
    atomic_store(&min_level, level);
}

int tg_log_parse_level(const char *name)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

int tg_log_enabled(int level)
{
    return level >= atomic_load(&min_level);
}

/* Appends s to line[*o..cap) as JSON string content (without quotes). */
static void put_escaped(char *line, size_t cap, size_t *o, const char *s)
{
    for (; *s && *o + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            line[(*o)++] = '\\';
            line[(*o)++] = (char)c;
        } else if (c == '\n') {
            line[(*o)++] = '\\';
            line[(*o)++] = 'n';
        } else if (c < 0x20) {
            *o += (size_t)snprintf(line + *o, cap - *o, "\\u%04x", c);
        } else {
            line[(*o)++] = (char)c;
        }
    }
}

static void put_raw(char *line, size_t cap, size_t *o, const char *s)
{
    size_t n = strlen(s);
    if (*o + n >= cap)
        n = cap - *o - 1;
    memcpy(line + *o, s, n);
    *o += n;
}

void tg_log_kv(int level, const char *comp, const char *const *kv, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    if (!tg_log_enabled(level))
        return;
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%06ldZ", (long)tv.tv_usec);

    char line[8192];
    const size_t cap = sizeof(line) - 2; /* room for "}\n" */
    size_t o = 0;
    put_raw(line, cap, &o, "{\"ts\":\"");
    put_raw(line, cap, &o, ts);
    put_raw(line, cap, &o, "\",\"level\":\"");
    put_raw(line, cap, &o, names[level < 0 ? 0 : level > 3 ? 3 : level]);
    put_raw(line, cap, &o, "\",\"comp\":\"");
    put_escaped(line, cap, &o, comp ? comp : "");
    put_raw(line, cap, &o, "\",\"msg\":\"");
    put_escaped(line, cap, &o, msg);
    put_raw(line, cap, &o, "\"");
    for (; kv && kv[0] && kv[1]; kv += 2) {
        put_raw(line, cap, &o, ",\"");
        put_escaped(line, cap, &o, kv[0]);
        put_raw(line, cap, &o, "\":\"");
        put_escaped(line, cap, &o, kv[1]);
        put_raw(line, cap, &o, "\"");
    }
    line[o++] = '}';
    line[o++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, o);
    (void)w; /* nowhere to report a failed log write */
}
