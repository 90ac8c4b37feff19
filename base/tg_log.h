/* tg_log: structured logs for Tollgate's daemons, one JSON object per line
 * on stderr:
 *   {"ts":"2026-11-24T05:31:02.123456Z","level":"info","comp":"cp","msg":"..."}
 * plus any "key":"value" pairs the caller adds. The level is checked before
 * anything is formatted (Redis's rule), so a disabled debug line costs one
 * comparison. Lines are written with one write(2), so concurrent threads
 * never interleave inside a line. Thread-safe. */
#ifndef TG_LOG_H
#define TG_LOG_H

enum tg_log_level { TG_LOG_DEBUG = 0, TG_LOG_INFO = 1, TG_LOG_WARN = 2, TG_LOG_ERROR = 3 };

/* Sets the minimum level written (default TG_LOG_INFO). */
void tg_log_set_level(int level);

/* Parses "debug", "info", "warn" or "error"; returns the level or -1. */
int tg_log_parse_level(const char *name);

/* 1 when `level` would be written. */
int tg_log_enabled(int level);

/* Writes one line. comp names the component ("cp", "agent", "settle").
 * kv is NULL or a NULL-terminated list of alternating keys and values
 * (strings) added as fields. msg is printf-formatted. Can't fail (a line
 * that does not fit 8 KiB is truncated). */
void tg_log_kv(int level, const char *comp, const char *const *kv, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define TG_LOG(level, comp, ...)                                                                   \
    do {                                                                                           \
        if (tg_log_enabled(level))                                                                 \
            tg_log_kv((level), (comp), NULL, __VA_ARGS__);                                         \
    } while (0)

#endif
