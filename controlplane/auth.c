/* auth.c: admin bearer tokens. The --admin-tokens file names each token and
 * its role; only SHA-256 hashes are kept in memory, and a presented token is
 * hashed and compared with every configured hash in constant time, so
 * neither the secret nor timing reveals which prefix matched. */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "base/tg_log.h"
#include "controlplane/admin_int.h"

const char *tg_cp_role_name(int role)
{
    switch (role) {
    case TG_CP_ROLE_ADMIN: return "admin";
    case TG_CP_ROLE_PRICING: return "pricing";
    case TG_CP_ROLE_READER: return "reader";
    default: return "unknown";
    }
}

static int parse_role(const char *s)
{
    if (strcmp(s, "admin") == 0) return TG_CP_ROLE_ADMIN;
    if (strcmp(s, "pricing") == 0) return TG_CP_ROLE_PRICING;
    if (strcmp(s, "reader") == 0) return TG_CP_ROLE_READER;
    return 0;
}

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63) return 0;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("._@-", *p)) return 0;
    return 1;
}

/* Splits the next whitespace-separated word of *p (modified in place). */
static char *word(char **p)
{
    char *s = *p, *w;
    while (*s == ' ' || *s == '\t') s++;
    if (!*s) return NULL;
    w = s;
    while (*s && *s != ' ' && *s != '\t') s++;
    if (*s) *s++ = '\0';
    *p = s;
    return w;
}

int tg_cp_tokens_parse(const char *text, tg_cp_admin_token_t **out, size_t *n, char *err,
                       size_t errlen)
{
    tg_cp_admin_token_t *toks = NULL, *t;
    size_t cnt = 0, cap = 0, lineno = 0;
    char *copy = tg_strdup(text ? text : ""), *line, *next;
    int rc = -1;
    *out = NULL;
    *n = 0;
    if (!copy) return tg_errf(err, errlen, -1, "admin tokens: out of memory");
    for (line = copy; line; line = next) {
        char *p, *name, *role, *tok, *extra, *hash;
        lineno++;
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if ((hash = strchr(line, '#'))) *hash = '\0';
        p = line;
        if (strlen(p) && p[strlen(p) - 1] == '\r') p[strlen(p) - 1] = '\0';
        name = word(&p);
        if (!name) continue;
        role = word(&p);
        tok = role ? word(&p) : NULL;
        extra = tok ? word(&p) : NULL;
        if (!tok || extra) {
            tg_errf(err, errlen, -1, "line %zu: expected 'name role token'", lineno);
            goto fail;
        }
        if (!name_ok(name)) {
            tg_errf(err, errlen, -1,
                    "line %zu: token name '%s' must be 1-63 characters of A-Z a-z 0-9 . _ @ -",
                    lineno, name);
            goto fail;
        }
        if (!parse_role(role)) {
            tg_errf(err, errlen, -1, "line %zu: role '%s' must be admin, pricing or reader",
                    lineno, role);
            goto fail;
        }
        for (size_t i = 0; i < cnt; i++)
            if (strcmp(toks[i].at_name, name) == 0) {
                tg_errf(err, errlen, -1, "line %zu: token name '%s' is used twice", lineno, name);
                goto fail;
            }
        if (cnt == cap) {
            size_t nc = cap ? cap * 2 : 8;
            tg_cp_admin_token_t *nt = tg_realloc(toks, nc * sizeof(*nt));
            if (!nt) {
                tg_errf(err, errlen, -1, "admin tokens: out of memory");
                goto fail;
            }
            toks = nt;
            cap = nc;
        }
        t = &toks[cnt];
        memset(t, 0, sizeof(*t));
        snprintf(t->at_name, sizeof(t->at_name), "%s", name);
        t->at_role = parse_role(role);
        if (strncmp(tok, "sha256:", 7) == 0) {
            if (strlen(tok + 7) != 64 || tg_crypto_unhex(tok + 7, t->at_sha256, 32) != 0) {
                tg_errf(err, errlen, -1, "line %zu: sha256: must be followed by 64 hex digits",
                        lineno);
                goto fail;
            }
        } else {
            if (strlen(tok) < 16) {
                tg_errf(err, errlen, -1,
                        "line %zu: token of '%s' is shorter than 16 characters", lineno, name);
                goto fail;
            }
            tg_crypto_sha256(tok, strlen(tok), t->at_sha256);
        }
        cnt++;
    }
    *out = toks;
    *n = cnt;
    toks = NULL;
    rc = 0;
fail:
    /* the copy held secrets: wipe before freeing */
    memset(copy, 0, strlen(text ? text : ""));
    tg_free(copy);
    tg_free(toks);
    return rc;
}

/* Whether a token file's text holds a token not written as sha256:. */
static int has_literal(const char *text)
{
    for (const char *line = text; line && *line;) {
        const char *end = strchr(line, '\n');
        char buf[512], *p = buf, *w;
        int k = 0;
        snprintf(buf, sizeof buf, "%.*s", (int)(end ? end - line : (long)strlen(line)), line);
        if ((w = strchr(buf, '#'))) *w = '\0';
        while ((w = word(&p)) != NULL)
            if (++k == 3 && strncmp(w, "sha256:", 7) != 0) return 1;
        line = end ? end + 1 : NULL;
    }
    return 0;
}

int tg_cp_tokens_load(const char *path, tg_cp_admin_token_t **out, size_t *n, char *err,
                      size_t errlen)
{
    tg_buf_t b;
    char chunk[4096];
    size_t got;
    int rc;
    FILE *f = fopen(path, "r");
    *out = NULL;
    *n = 0;
    if (!f) return tg_errf(err, errlen, -1, "cannot open admin tokens file %s: %s", path, strerror(errno));
    tg_buf_init(&b, 1 << 20);
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (tg_buf_append(&b, chunk, got) != 0) {
            fclose(f);
            tg_buf_free(&b);
            return tg_errf(err, errlen, -1, "admin tokens file %s: larger than 1 MiB", path);
        }
    {
        struct stat st;
        char inner[TG_ERRLEN] = "";
        rc = tg_cp_tokens_parse(b.b_data ? b.b_data : "", out, n, inner, sizeof inner);
        if (rc != 0) tg_errf(err, errlen, rc, "admin tokens file %s: %s", path, inner);
        /* literal tokens readable by others are worth a warning; a file of
         * sha256: hashes only is not secret */
        if (rc == 0 && fstat(fileno(f), &st) == 0 && (st.st_mode & 077) && b.b_data &&
            has_literal(b.b_data))
            TG_LOG(TG_LOG_WARN, "cp",
                   "admin tokens file %s holds literal tokens and is readable by group or others "
                   "(chmod 600, or write the tokens as sha256:<hex>)",
                   path);
    }
    fclose(f);
    if (b.b_data) memset(b.b_data, 0, b.b_len);
    tg_buf_free(&b);
    return rc;
}

/* Guards cp->cp_tokens/cp_ntokens against a reload (one control plane per
 * process, like the method bindings). */
static pthread_rwlock_t tokens_lock = PTHREAD_RWLOCK_INITIALIZER;

int tg_cp_auth_lookup(tg_cp_t *cp, const char *authz, tg_cp_admin_token_t *out)
{
    uint8_t h[32];
    int rc = 1;
    pthread_rwlock_rdlock(&tokens_lock);
    if (cp->cp_ntokens == 0) {
        rc = 2;
        goto done;
    }
    if (!authz || strncasecmp(authz, "bearer ", 7) != 0) goto done;
    authz += 7;
    while (*authz == ' ') authz++;
    if (!*authz) goto done;
    tg_crypto_sha256(authz, strlen(authz), h);
    for (size_t i = 0; i < cp->cp_ntokens; i++)
        if (tg_crypto_equal(h, cp->cp_tokens[i].at_sha256, 32) && rc != 0) {
            *out = cp->cp_tokens[i];
            rc = 0; /* keep comparing: the time does not depend on which matched */
        }
done:
    pthread_rwlock_unlock(&tokens_lock);
    return rc;
}

int tg_cp_tokens_reload(tg_cp_t *cp, const char *path, char *err, size_t errlen)
{
    tg_cp_admin_token_t *nt = NULL, *old;
    size_t n = 0;
    if (tg_cp_tokens_load(path, &nt, &n, err, errlen) != 0) return -1;
    pthread_rwlock_wrlock(&tokens_lock);
    old = cp->cp_tokens;
    cp->cp_tokens = nt;
    cp->cp_ntokens = n;
    pthread_rwlock_unlock(&tokens_lock);
    tg_free(old);
    return 0;
}
