/* tg_checkcfg: the --check-config checks shared by the daemons (see
 * tg_checkcfg.h). */
#include "checkcfg/tg_checkcfg.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/tg_base.h"
#include "crypto/tg_crypto.h"

static void vline(const tg_checkcfg_t *c, const char *kind, const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: config: %s", c->cc_prog, kind);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void tg_checkcfg_problem(tg_checkcfg_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline(c, "", fmt, ap);
    va_end(ap);
    c->cc_problems++;
}

void tg_checkcfg_warn(tg_checkcfg_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline(c, "warning: ", fmt, ap);
    va_end(ap);
}

void tg_checkcfg_addr(tg_checkcfg_t *c, const char *flag, const char *v, int min_port)
{
    const char *colon = strrchr(v, ':');
    char *end = NULL;
    long p = colon && colon[1] ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || colon == v || !end || *end || p < min_port || p > 65535)
        tg_checkcfg_problem(c, "%s %s: not HOST:PORT with a port from %d to 65535: write it as 127.0.0.1:7443",
                            flag, v, min_port);
}

void tg_checkcfg_readable(tg_checkcfg_t *c, const char *flag, const char *path)
{
    if (access(path, R_OK) != 0)
        tg_checkcfg_problem(c, "%s %s: cannot read it (%s): fix the path or give the service user read access",
                            flag, path, strerror(errno));
}

void tg_checkcfg_dir(tg_checkcfg_t *c, const char *flag, const char *dir, int parents)
{
    char p[PATH_MAX];
    struct stat st;
    int up = 0;
    snprintf(p, sizeof p, "%s", dir);
    while (stat(p, &st) != 0 && (parents || up++ == 0)) {
        char *slash = strrchr(p, '/');
        if (!slash) {
            snprintf(p, sizeof p, ".");
            break;
        }
        slash[slash == p ? 1 : 0] = '\0';
    }
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode) || access(p, W_OK | X_OK) != 0)
        tg_checkcfg_problem(c, "%s %s: %s is not a writable directory: create it and give it to the service user "
                               "(chown), or point %s elsewhere (systemd: ReadWritePaths=)",
                            flag, dir, p, flag);
}

void tg_checkcfg_cert(tg_checkcfg_t *c, const char *flag, const char *cert, const char *key)
{
    char err[TG_ERRLEN] = "";
    int64_t na = 0, now = (int64_t)time(NULL);
    if (tg_crypto_tls_files_check(cert, key, &na, err, sizeof err) != 0)
        tg_checkcfg_problem(c, "%s: %s: give a PEM certificate%s", flag, err,
                            key ? " and the PEM key it was issued for" : "");
    else if (na < now)
        tg_checkcfg_problem(c, "%s %s: the certificate expired %lld s ago: renew it", flag, cert,
                            (long long)(now - na));
    else if (na - now < 14 * 86400)
        tg_checkcfg_warn(c, "%s %s expires in %lld day(s): renew it soon", flag, cert,
                         (long long)((na - now) / 86400));
}

int tg_checkcfg_done(tg_checkcfg_t *c)
{
    if (c->cc_problems) {
        fprintf(stderr, "%s: config has %d problem(s)\n", c->cc_prog, c->cc_problems);
        return 1;
    }
    printf("config ok\n");
    return 0;
}
