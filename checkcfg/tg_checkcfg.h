/* tg_checkcfg: the checks a daemon's --check-config runs before an operator
 * starts it for real (tollgate-cp, tollgate-agent; systemd's ExecStartPre
 * can run them too). Each check that fails prints one line on stderr,
 * "PROG: config: WHAT: WHY: FIX", and counts a problem; a warning prints
 * "PROG: config: warning: ..." and counts nothing. tg_checkcfg_done prints
 * "config ok" on stdout when nothing failed.
 *
 * Nothing here creates, opens for writing or changes a file. Not thread
 * safe: one checker belongs to one thread (main's). */
#ifndef TG_CHECKCFG_H
#define TG_CHECKCFG_H

#include <stdint.h>

typedef struct tg_checkcfg {
    const char *cc_prog; /* "tollgate-cp": the prefix of every line */
    int cc_problems;     /* problems counted so far */
} tg_checkcfg_t;

/* Prints a problem (fmt should end with the fix) and counts it. */
void tg_checkcfg_problem(tg_checkcfg_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints a warning; counts nothing. */
void tg_checkcfg_warn(tg_checkcfg_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* HOST:PORT with a port from min_port (0 or 1) to 65535. */
void tg_checkcfg_addr(tg_checkcfg_t *c, const char *flag, const char *v, int min_port);

/* path can be read by this user. */
void tg_checkcfg_readable(tg_checkcfg_t *c, const char *flag, const char *path);

/* A directory the daemon creates or writes: it is a writable directory,
 * or the nearest ancestor that exists is (parents 1: the daemon creates
 * missing parents too), or its parent is (parents 0). */
void tg_checkcfg_dir(tg_checkcfg_t *c, const char *flag, const char *dir, int parents);

/* cert is a PEM certificate, not expired (a warning within 14 days of its
 * end); key, when not NULL, a PEM private key that matches it. */
void tg_checkcfg_cert(tg_checkcfg_t *c, const char *flag, const char *cert, const char *key);

/* Prints "config ok" (stdout) and returns 0 when no problem was counted;
 * else prints how many (stderr) and returns 1: main's exit status. */
int tg_checkcfg_done(tg_checkcfg_t *c);

#endif
