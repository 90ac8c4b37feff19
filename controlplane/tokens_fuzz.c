/* tokens_fuzz.c: libFuzzer target for the admin-token file (auth.c:
 * tg_cp_tokens_parse) and the bearer lookup that uses what it parsed
 * (tg_cp_auth_lookup). The input up to its first NUL byte is the file's
 * text, the rest an `authorization` header value.
 *
 * Checked besides "no sanitizer report": the parse gives 0, or -1 with a
 * "line N: ..." message that never quotes a token (the third word of a
 * line); parsed names are 1-63 characters of the allowed set and unique,
 * roles are one of the three; every literal token of a parsed file is
 * found again by "Bearer <token>" with its own hash; any header value
 * gives 0 (with the hash of its bearer value), 1, or 2 for an empty file. */
#include <stdio.h>
#include <string.h>

#include "base/tg_base.h"
#include "controlplane/admin_int.h"
#include "crypto/tg_crypto.h"
#include "tests/fuzz/fuzz.h"

static int name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("._@-", ch) != NULL);
}

/* The words of each line as the parser sees them (comment cut, CR kept
 * out): calls fn with the first three words of every line with three. */
static void third_words(const char *text, void (*fn)(size_t line, const char **w, const size_t *n, void *arg),
                        void *arg)
{
    const char *line = text;
    size_t lineno = 0;
    while (line != NULL && *line) {
        lineno++;
        const char *end = strchr(line, '\n'), *hash = NULL;
        size_t len = end ? (size_t)(end - line) : strlen(line);
        hash = memchr(line, '#', len);
        if (hash)
            len = (size_t)(hash - line);
        if (len && line[len - 1] == '\r')
            len--;
        size_t i = 0, k = 0, wn[3];
        const char *w[3];
        while (i < len && k < 3) {
            while (i < len && (line[i] == ' ' || line[i] == '\t'))
                i++;
            size_t s = i;
            while (i < len && line[i] != ' ' && line[i] != '\t')
                i++;
            if (i > s) {
                w[k] = line + s;
                wn[k++] = i - s;
            }
        }
        if (k == 3)
            fn(lineno, w, wn, arg);
        line = end ? end + 1 : NULL;
    }
}

/* The error ("line N: ...") may quote line N's bad name or role, never
 * its token (unless the token's text is part of the name or role). */
static void not_in_err(size_t line, const char **w, const size_t *n, void *arg)
{
    size_t eline = 0;
    if (sscanf(arg, "line %zu:", &eline) != 1 || eline != line || n[2] < 16 || strncmp(w[2], "sha256:", 7) == 0 || memmem(w[0], n[0], w[2], n[2]) != NULL ||
        memmem(w[1], n[1], w[2], n[2]) != NULL)
        return;
    /* the name or role as the message quotes it ('name'): a token that is
     * its tail plus the closing quote is the name's text, not the token's */
    for (int q = 0; q < 2; q++) {
        char quoted[1100];
        if (n[q] + 2 < sizeof quoted) {
            int len = snprintf(quoted, sizeof quoted, "'%.*s'", (int)n[q], w[q]);
            if (len > 0 && memmem(quoted, (size_t)len, w[2], n[2]) != NULL)
                return;
        }
    }
    if (memmem(arg, strlen(arg), w[2], n[2]) != NULL)
        fprintf(stderr, "token %.*s quoted in: %s\n", (int)n[2], w[2], (const char *)arg);
    TG_FUZZ_CHECK(memmem(arg, strlen(arg), w[2], n[2]) == NULL);
}

typedef struct found {
    tg_cp_t *f_cp;
} found_t;

static void lookup_back(size_t line, const char **ws, const size_t *ns, void *arg)
{
    (void)line;
    found_t *f = arg;
    const char *w = ws[2];
    size_t n = ns[2];
    if (n < 16 || strncmp(w, "sha256:", 7) == 0)
        return;
    char authz[600];
    if (n > sizeof authz - 8)
        return;
    tg_cp_admin_token_t got;
    uint8_t h[32];
    snprintf(authz, sizeof authz, "Bearer %.*s", (int)n, w);
    tg_crypto_sha256(w, n, h);
    TG_FUZZ_CHECK(tg_cp_auth_lookup(f->f_cp, authz, &got) == 0);
    TG_FUZZ_CHECK(memcmp(got.at_sha256, h, 32) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = tg_malloc(size + 1);
    TG_FUZZ_CHECK(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    size_t tl = strlen(text);
    const char *authz = tl < size ? text + tl + 1 : NULL;

    tg_cp_admin_token_t *t = NULL;
    size_t n = 0;
    char err[TG_ERRLEN] = "";
    int rc = tg_cp_tokens_parse(text, &t, &n, err, sizeof err);
    TG_FUZZ_CHECK(rc == 0 || rc == -1);
    if (rc != 0) {
        TG_FUZZ_CHECK(t == NULL && n == 0 && err[0] != '\0');
        third_words(text, not_in_err, err);
        tg_free(text);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(t[i].at_name);
        TG_FUZZ_CHECK(nl >= 1 && nl <= 63);
        for (size_t k = 0; k < nl; k++)
            TG_FUZZ_CHECK(name_char(t[i].at_name[k]));
        TG_FUZZ_CHECK(t[i].at_role >= TG_CP_ROLE_READER && t[i].at_role <= TG_CP_ROLE_ADMIN);
        for (size_t j = 0; j < i; j++)
            TG_FUZZ_CHECK(strcmp(t[i].at_name, t[j].at_name) != 0);
    }
    tg_cp_t cp;
    memset(&cp, 0, sizeof cp);
    cp.cp_tokens = t;
    cp.cp_ntokens = n;
    found_t f = {&cp};
    third_words(text, lookup_back, &f);
    if (authz != NULL) {
        tg_cp_admin_token_t got;
        int lr = tg_cp_auth_lookup(&cp, authz, &got);
        TG_FUZZ_CHECK(lr == 0 || lr == 1 || lr == 2);
        TG_FUZZ_CHECK((lr == 2) == (n == 0));
        if (lr == 0) {
            const char *b = authz + 7;
            while (*b == ' ')
                b++;
            uint8_t h[32];
            tg_crypto_sha256(b, strlen(b), h);
            TG_FUZZ_CHECK(memcmp(got.at_sha256, h, 32) == 0);
        }
    }
    tg_free(t);
    tg_free(text);
    return 0;
}
