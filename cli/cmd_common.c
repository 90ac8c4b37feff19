/* cmd_common.c: the plumbing of tollctl's admin commands (see cmd_admin.h):
 * flags, the gRPC channel and bearer token, JSON-in/JSON-out calls through
 * pbjson, error messages a person can act on, and tables. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/tg_base.h"
#include "cli/cmd_admin.h"
#include "cli/tollctl_int.h"
#include "meter/tg_price.h"
#include "pbjson/tg_pbjson.h"

static const char COMMON_SPEC[] = "server= token-file= tls ca= cert= key= tls-name= timeout= json";

/* ---- flags --------------------------------------------------------------------- */

/* Whether name is in spec; *val gets 1 when it takes a value. */
static int in_spec(const char *spec, const char *name, int *val)
{
    size_t n = strlen(name);
    for (const char *p = spec; *p;) {
        const char *e = p;
        while (*e && *e != ' ') e++;
        size_t len = (size_t)(e - p);
        int v = len && p[len - 1] == '=';
        if ((v ? len - 1 : len) == n && strncmp(p, name, n) == 0) {
            *val = v;
            return 1;
        }
        p = *e ? e + 1 : e;
    }
    return 0;
}

int tc_parse(tc_t *c, const char *cmd, int argc, char **argv, const char *spec, int max_pos)
{
    memset(c, 0, sizeof(*c));
    c->tc_cmd = cmd;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) == 0 && a[2]) {
            char name[64];
            const char *eq = strchr(a, '=');
            int takes = 0;
            snprintf(name, sizeof name, "%.*s", (int)(eq ? eq - a - 2 : (long)strlen(a + 2)), a + 2);
            if (!in_spec(spec, name, &takes) && !in_spec(COMMON_SPEC, name, &takes)) {
                fprintf(stderr, "tollctl %s: unknown flag --%s (see tollctl help %s)\n", cmd, name, cmd);
                return TOLLCTL_USAGE;
            }
            if (c->tc_nflags == TC_MAX_ARGS) {
                fprintf(stderr, "tollctl %s: too many flags\n", cmd);
                return TOLLCTL_USAGE;
            }
            c->tc_names[c->tc_nflags] = argv[i] + 2;
            if (takes) {
                if (eq) {
                    c->tc_vals[c->tc_nflags] = eq + 1;
                } else if (i + 1 < argc) {
                    c->tc_vals[c->tc_nflags] = argv[++i];
                } else {
                    fprintf(stderr, "tollctl %s: --%s needs a value\n", cmd, name);
                    return TOLLCTL_USAGE;
                }
                /* keep only the name part in tc_names */
                if (eq) {
                    char *n = argv[i] + 2;
                    n[eq - a - 2] = '\0';
                }
            } else if (eq) {
                fprintf(stderr, "tollctl %s: --%s takes no value\n", cmd, name);
                return TOLLCTL_USAGE;
            }
            c->tc_nflags++;
        } else {
            if (c->tc_npos >= max_pos) {
                fprintf(stderr, "tollctl %s: unexpected argument '%s'\n", cmd, a);
                return TOLLCTL_USAGE;
            }
            c->tc_pos[c->tc_npos++] = a;
        }
    }
    c->tc_json = tc_flag(c, "json");
    return TOLLCTL_OK;
}

const char *tc_get(const tc_t *c, const char *name)
{
    const char *v = NULL;
    for (int i = 0; i < c->tc_nflags; i++)
        if (strcmp(c->tc_names[i], name) == 0) v = c->tc_vals[i];
    return v;
}

int tc_flag(const tc_t *c, const char *name)
{
    for (int i = 0; i < c->tc_nflags; i++)
        if (strcmp(c->tc_names[i], name) == 0) return 1;
    return 0;
}

const char *tc_nth(const tc_t *c, const char *name, int n)
{
    for (int i = 0; i < c->tc_nflags; i++)
        if (strcmp(c->tc_names[i], name) == 0 && n-- == 0) return c->tc_vals[i];
    return NULL;
}

const char *tc_pos(const tc_t *c, int i)
{
    return i < c->tc_npos ? c->tc_pos[i] : NULL;
}

const char *tc_need_pos(const tc_t *c, int i, const char *what)
{
    const char *p = tc_pos(c, i);
    if (!p) fprintf(stderr, "tollctl %s: missing %s (see tollctl help)\n", c->tc_cmd, what);
    return p;
}

/* ---- connection ------------------------------------------------------------------ */

static char *slurp(const char *path, size_t max)
{
    tg_buf_t b;
    char chunk[4096];
    size_t n;
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) return NULL;
    tg_buf_init(&b, max);
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (tg_buf_append(&b, chunk, n) != 0) {
            if (f != stdin) fclose(f);
            tg_buf_free(&b);
            errno = EFBIG;
            return NULL;
        }
    if (f != stdin) fclose(f);
    return b.b_data ? tg_buf_steal(&b, NULL) : tg_strdup("");
}

int tc_connect(tc_t *c)
{
    const char *server = tc_get(c, "server"), *tf = tc_get(c, "token-file");
    const char *to = tc_get(c, "timeout");
    tg_rpc_channel_opts_t o = {0};
    char err[TG_ERRLEN] = "";
    char *ca = NULL, *cert = NULL, *key = NULL;
    int rc = TOLLCTL_FAIL;

    if (!server) server = getenv("TOLLGATE_SERVER");
    if (!server || !*server) server = "127.0.0.1:7443";
    snprintf(c->tc_target, sizeof c->tc_target, "%s", server);
    c->tc_timeout_ms = 15000;
    if (to) {
        char *end;
        long s = strtol(to, &end, 10);
        if (*end || s < 1 || s > 3600) {
            fprintf(stderr, "tollctl %s: --timeout %s: expected seconds from 1 to 3600\n", c->tc_cmd, to);
            return TOLLCTL_USAGE;
        }
        c->tc_timeout_ms = (int)s * 1000;
    }
    if (tf) {
        if (!(c->tc_token = slurp(tf, 4096))) {
            fprintf(stderr, "tollctl %s: cannot read --token-file %s: %s\n", c->tc_cmd, tf, strerror(errno));
            return TOLLCTL_FAIL;
        }
        for (size_t n = strlen(c->tc_token); n && isspace((unsigned char)c->tc_token[n - 1]);)
            c->tc_token[--n] = '\0';
    } else if (getenv("TOLLGATE_TOKEN") && *getenv("TOLLGATE_TOKEN")) {
        c->tc_token = tg_strdup(getenv("TOLLGATE_TOKEN"));
    }
    if (!c->tc_token || !*c->tc_token) {
        fprintf(stderr, "tollctl %s: no admin token: set TOLLGATE_TOKEN or pass --token-file FILE\n",
                c->tc_cmd);
        return TOLLCTL_USAGE;
    }
    /* TOLLGATE_CA / _CERT / _KEY stand in for the flags: `ledger query
     * --key` is the API key filter, so an mTLS key can only come from the
     * environment there */
    const char *fca = tc_get(c, "ca") ? tc_get(c, "ca") : getenv("TOLLGATE_CA");
    const char *fcert = tc_get(c, "cert") ? tc_get(c, "cert") : getenv("TOLLGATE_CERT");
    const char *fkey = getenv("TOLLGATE_KEY");
    if (tc_get(c, "key") && strcmp(c->tc_cmd, "ledger query") && strcmp(c->tc_cmd, "ledger export"))
        fkey = tc_get(c, "key");
    if ((fca && *fca && !(ca = slurp(fca, 1 << 20))) || (fcert && *fcert && !(cert = slurp(fcert, 1 << 20))) ||
        (fkey && *fkey && !(key = slurp(fkey, 1 << 20)))) {
        fprintf(stderr, "tollctl %s: cannot read a TLS file: %s\n", c->tc_cmd, strerror(errno));
        goto done;
    }
    o.co_tls = tc_flag(c, "tls") || ca || cert;
    o.co_root_pem = ca;
    o.co_cert_pem = cert;
    o.co_key_pem = key;
    o.co_tls_name = tc_get(c, "tls-name");
    if (!(c->tc_ch = tg_rpc_channel_create(c->tc_target, &o, err, sizeof err))) {
        fprintf(stderr, "tollctl %s: %s\n", c->tc_cmd, err);
        goto done;
    }
    rc = TOLLCTL_OK;
done:
    tg_free(ca);
    tg_free(cert);
    tg_free(key);
    return rc;
}

void tc_done(tc_t *c)
{
    tg_rpc_channel_destroy(c->tc_ch);
    c->tc_ch = NULL;
    if (c->tc_token) memset(c->tc_token, 0, strlen(c->tc_token));
    tg_free(c->tc_token);
    c->tc_token = NULL;
}

/* ---- calls --------------------------------------------------------------------------- */

/* The status a call ended with, as a person should read it. */
static void report(const tc_t *c, int code, const char *msg)
{
    if (code == TG_RPC_CODE_UNAVAILABLE || code == TG_RPC_CODE_DEADLINE_EXCEEDED) {
        const char *why = strcasestr(msg, "connection refused") ? "connection refused"
                          : code == TG_RPC_CODE_DEADLINE_EXCEEDED ? "no answer before the timeout"
                                                                  : msg;
        /* a server that speaks TLS (or wants a client certificate) closes a
         * connection whose handshake does not fit: say so */
        if (strcasestr(msg, "socket closed") || strcasestr(msg, "handshake") || strcasestr(msg, "ssl")) {
            fprintf(stderr,
                    "tollctl: cannot reach the control plane at %s: the connection was closed while it "
                    "was set up (TLS mismatch? check --tls, --ca, --cert and --key)\n",
                    c->tc_target);
            return;
        }
        if (strstr(msg, "connect") || code == TG_RPC_CODE_DEADLINE_EXCEEDED) {
            fprintf(stderr, "tollctl: cannot reach the control plane at %s: %s (is tollgate-cp running?)\n",
                    c->tc_target, why);
            return;
        }
    }
    if (code == TG_RPC_CODE_UNAUTHENTICATED) {
        fprintf(stderr, "tollctl: %s\n", msg);
        return;
    }
    /* the server's messages are written for people: pass them through */
    fprintf(stderr, "tollctl: %s\n", msg[0] ? msg : tg_rpc_code_name(code));
}

/* Builds the request message from JSON. NULL after printing why. */
static ProtobufCMessage *build(const tc_t *c, const ProtobufCMessageDescriptor *d, json_t *req)
{
    ProtobufCMessage *m = NULL;
    char err[TG_ERRLEN] = "";
    if (tg_pbjson_from_json(d, req, &m, err, sizeof err) != 0) {
        fprintf(stderr, "tollctl %s: %s\n", c->tc_cmd, err);
        return NULL;
    }
    return m;
}

static int pack(const ProtobufCMessage *m, tg_buf_t *b)
{
    return tg_rpc_pb_pack(m, b, NULL, 0);
}

static void auth_md(const tc_t *c, tg_rpc_md_t *md, char *buf, size_t len)
{
    snprintf(buf, len, "Bearer %s", c->tc_token);
    md->md_key = "authorization";
    md->md_value = buf;
    md->md_len = 0;
}

int tc_call(tc_t *c, const char *method, const ProtobufCMessageDescriptor *req_d, json_t *req,
            const ProtobufCMessageDescriptor *resp_d, json_t **out)
{
    char path[160], err[TG_ERRLEN] = "", authz[4200];
    tg_rpc_result_t res;
    tg_rpc_md_t md;
    tg_buf_t b;
    ProtobufCMessage *m = build(c, req_d, req), *r = NULL;
    tg_pbjson_opts_t o = {TG_PBJSON_DEFAULTS, NULL};
    int rc = TOLLCTL_FAIL;

    json_decref(req);
    *out = NULL;
    if (!m) return TOLLCTL_USAGE;
    tg_buf_init(&b, 64 << 20);
    memset(&res, 0, sizeof res);
    if (pack(m, &b) != 0) {
        fprintf(stderr, "tollctl %s: request too large\n", c->tc_cmd);
        goto done;
    }
    snprintf(path, sizeof path, "/tollgate.v1.AdminService/%s", method);
    auth_md(c, &md, authz, sizeof authz);
    if (tg_rpc_unary(c->tc_ch, path, &md, 1, b.b_data ? b.b_data : "", b.b_len, c->tc_timeout_ms,
                     &res, err, sizeof err) != 0) {
        if (res.rs_code != TG_RPC_CODE_OK && res.rs_message) report(c, res.rs_code, res.rs_message);
        else fprintf(stderr, "tollctl %s: %s\n", c->tc_cmd, err);
        goto done;
    }
    if (tg_rpc_pb_unpack(resp_d, res.rs_data, res.rs_len, &r, err, sizeof err) != 0) {
        fprintf(stderr, "tollctl %s: bad reply: %s\n", c->tc_cmd, err);
        goto done;
    }
    /* NULL only when out of memory: bad UTF-8 in a row reads as U+FFFD */
    if (!(*out = tg_pbjson_to_json(r, &o))) {
        fprintf(stderr, "tollctl %s: out of memory\n", c->tc_cmd);
        goto done;
    }
    /* output-only warnings of a write (PublishPriceCard, PutRoute) */
    json_t *ws = json_object_get(*out, "warnings");
    for (size_t i = 0; json_is_array(ws) && i < json_array_size(ws); i++)
        fprintf(stderr, "tollctl %s: warning: %s\n", c->tc_cmd, json_string_value(json_array_get(ws, i)));
    rc = TOLLCTL_OK;
done:
    tg_rpc_pb_free(r);
    protobuf_c_message_free_unpacked(m, NULL);
    tg_rpc_result_free(&res);
    tg_buf_free(&b);
    return rc;
}

int tc_stream_text(tc_t *c, const char *method, const ProtobufCMessageDescriptor *req_d, json_t *req,
                   const ProtobufCMessageDescriptor *resp_d, const char *field)
{
    char path[160], err[TG_ERRLEN] = "", authz[4200];
    tg_rpc_md_t md;
    tg_buf_t b, msg;
    tg_rpc_reader_t *rd = NULL;
    ProtobufCMessage *m = build(c, req_d, req);
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(resp_d, field);
    int rc = TOLLCTL_FAIL;

    json_decref(req);
    if (!m) return TOLLCTL_USAGE;
    tg_buf_init(&b, 1 << 20);
    tg_buf_init(&msg, 16 << 20);
    if (!f || pack(m, &b) != 0) goto done;
    snprintf(path, sizeof path, "/tollgate.v1.AdminService/%s", method);
    auth_md(c, &md, authz, sizeof authz);
    if (tg_rpc_reader_open(c->tc_ch, path, &md, 1, b.b_data ? b.b_data : "", b.b_len, 0, &rd, err,
                           sizeof err) != 0) {
        fprintf(stderr, "tollctl %s: %s\n", c->tc_cmd, err);
        goto done;
    }
    for (;;) {
        ProtobufCMessage *r = NULL;
        int n = tg_rpc_reader_next(rd, c->tc_timeout_ms * 4, &msg, err, sizeof err);
        if (n == 0) {
            rc = TOLLCTL_OK;
            break;
        }
        if (n == TG_RPC_ESTATUS) {
            const char *why = "";
            report(c, tg_rpc_reader_status(rd, &why), why);
            break;
        }
        if (n < 0) {
            fprintf(stderr, "tollctl %s: %s\n", c->tc_cmd,
                    n == TG_RPC_ETIMEDOUT ? "the control plane stopped sending" : err);
            break;
        }
        if (tg_rpc_pb_unpack(resp_d, msg.b_data, msg.b_len, &r, err, sizeof err) != 0) {
            fprintf(stderr, "tollctl %s: bad reply: %s\n", c->tc_cmd, err);
            break;
        }
        fputs(*(char **)((char *)r + f->offset), stdout);
        tg_rpc_pb_free(r);
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "tollctl %s: writing stdout: %s\n", c->tc_cmd, strerror(errno));
        rc = TOLLCTL_FAIL;
    }
done:
    tg_rpc_reader_destroy(rd);
    protobuf_c_message_free_unpacked(m, NULL);
    tg_buf_free(&b);
    tg_buf_free(&msg);
    return rc;
}

json_t *tc_read_json_file(const tc_t *c, const char *path)
{
    json_error_t je;
    char *text = slurp(path, 16 << 20);
    json_t *j;
    if (!text) {
        fprintf(stderr, "tollctl %s: cannot read %s: %s\n", c->tc_cmd, path, strerror(errno));
        return NULL;
    }
    j = json_loads(text, 0, &je);
    tg_free(text);
    if (!j) {
        fprintf(stderr, "tollctl %s: %s:%d:%d: %s\n", c->tc_cmd, path, je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        fprintf(stderr, "tollctl %s: %s: expected a JSON object\n", c->tc_cmd, path);
        json_decref(j);
        return NULL;
    }
    return j;
}

/* ---- output ---------------------------------------------------------------------------- */

static const char *const ENUM_PREFIXES[] = {
    "BILLING_MODE_", "OBJECT_STATUS_", "KEY_STATUS_", "ROUTE_TYPE_", "PROVIDER_TYPE_",
    "LEDGER_KIND_", "LIMIT_WINDOW_", "CLIENT_PROTOCOL_", NULL};

void tc_cell(const json_t *v, char *buf, size_t len)
{
    buf[0] = '\0';
    if (!v || json_is_null(v)) return;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        for (int i = 0; ENUM_PREFIXES[i]; i++) {
            size_t n = strlen(ENUM_PREFIXES[i]);
            if (strncmp(s, ENUM_PREFIXES[i], n) == 0) {
                size_t k = 0;
                for (const char *p = s + n; *p && k + 1 < len; p++) buf[k++] = (char)tolower((unsigned char)*p);
                buf[k] = '\0';
                if (strcmp(buf, "unspecified") == 0) buf[0] = '\0';
                return;
            }
        }
        snprintf(buf, len, "%s", s);
    } else if (json_is_integer(v)) {
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else if (json_is_true(v) || json_is_false(v)) {
        snprintf(buf, len, "%s", json_is_true(v) ? "yes" : "no");
    } else if (json_is_real(v)) {
        snprintf(buf, len, "%g", json_real_value(v));
    } else {
        char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
        snprintf(buf, len, "%s", s && strcmp(s, "[]") && strcmp(s, "{}") ? s : "");
        free(s);
    }
}

/* A dotted path "a.b" inside obj. */
static const json_t *dig(const json_t *obj, const char *path)
{
    char part[64];
    const json_t *v = obj;
    while (v && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        snprintf(part, sizeof part, "%.*s", (int)n, path);
        v = json_is_object(v) ? json_object_get(v, part) : NULL;
        path += n + (dot ? 1 : 0);
    }
    return v;
}

#define CELL 512

void tc_print_table(const json_t *rows, const tc_col_t *cols)
{
    size_t ncol = 0, nrow = json_array_size(rows), w[32] = {0};
    char *cells;
    while (cols[ncol].col_title && ncol < 32) ncol++;
    cells = tg_calloc((nrow ? nrow : 1) * ncol, CELL);
    if (!cells) return;
    for (size_t k = 0; k < ncol; k++) w[k] = strlen(cols[k].col_title);
    for (size_t i = 0; i < nrow; i++)
        for (size_t k = 0; k < ncol; k++) {
            char *cell = cells + (i * ncol + k) * CELL;
            const json_t *o = json_array_get(rows, i);
            if (cols[k].col_render) cols[k].col_render(o, cell, CELL);
            else tc_cell(dig(o, cols[k].col_field), cell, CELL);
            if (strlen(cell) > w[k]) w[k] = strlen(cell);
        }
    for (size_t k = 0; k < ncol; k++)
        printf("%-*s%s", k + 1 < ncol ? (int)w[k] : 0, cols[k].col_title, k + 1 < ncol ? "  " : "\n");
    for (size_t i = 0; i < nrow; i++)
        for (size_t k = 0; k < ncol; k++)
            printf("%-*s%s", k + 1 < ncol ? (int)w[k] : 0, cells + (i * ncol + k) * CELL,
                   k + 1 < ncol ? "  " : "\n");
    tg_free(cells);
}

void tc_print_obj(const tc_t *c, const json_t *obj)
{
    const char *k;
    json_t *v;
    size_t w = 0;
    if (c->tc_json) {
        char *s = json_dumps(obj, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (s) puts(s);
        free(s);
        return;
    }
    json_object_foreach((json_t *)obj, k, v) if (strlen(k) > w) w = strlen(k);
    json_object_foreach((json_t *)obj, k, v)
    {
        char cell[4096];
        tc_cell(v, cell, sizeof cell);
        if (!cell[0] || strcmp(cell, "0") == 0 || strcmp(cell, "no") == 0) continue; /* defaults */
        printf("%-*s  %s\n", (int)w + 1, k, cell);
    }
}

void tc_nano(const char *nano, char *buf, size_t len)
{
    char padded[48], d[48];
    const char *s = nano && *nano ? nano : "0";
    int neg = s[0] == '-';
    size_t n, dot;
    if (neg) s++;
    n = strlen(s);
    if (n < 10) { /* at least one digit before the point */
        snprintf(padded, sizeof padded, "%.*s%s", (int)(10 - n), "0000000000", s);
        s = padded;
        n = 10;
    }
    snprintf(d, sizeof d, "%.*s.%s", (int)(n - 9), s, s + n - 9);
    /* trim trailing zeros, keep at least two decimals */
    dot = (size_t)(strchr(d, '.') - d);
    n = strlen(d);
    while (n > dot + 3 && d[n - 1] == '0') d[--n] = '\0';
    snprintf(buf, len, "%s%s", neg && strcmp(d, "0.00") != 0 ? "-" : "", d);
}

int tc_parse_amount(const char *s, long long *nano, char *err, size_t errlen)
{
    int64_t v = 0;
    /* meter's exact parser: the whole int64 nano-unit range, one message
     * for what is not a decimal and another for what is too large */
    if (tg_price_from_decimal(s, &v, err, errlen) != 0) return -1;
    *nano = v;
    return 0;
}

int tc_parse_time(const char *s, long long *us)
{
    struct tm tm;
    const char *end;
    char *e;
    size_t n = strlen(s);
    if (n == 0) return -1;
    if (n > 1 && strchr("mhd", s[n - 1]) && isdigit((unsigned char)s[0])) {
        long long v = strtoll(s, &e, 10);
        long long unit = s[n - 1] == 'm' ? 60 : s[n - 1] == 'h' ? 3600 : 86400;
        if (e != s + n - 1 || v < 0) return -1;
        *us = ((long long)time(NULL) - v * unit) * 1000000LL;
        return 0;
    }
    if (strspn(s, "0123456789") == n) {
        *us = strtoll(s, NULL, 10) * 1000000LL;
        return 0;
    }
    memset(&tm, 0, sizeof tm);
    end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!end) {
        memset(&tm, 0, sizeof tm);
        end = strptime(s, "%Y-%m-%d", &tm);
        if (!end || *end) return -1;
    } else if (*end == 'Z' && end[1] == '\0') {
        end++;
    }
    if (*end) return -1;
    *us = (long long)timegm(&tm) * 1000000LL;
    return 0;
}

void tc_page_flags(const tc_t *c, json_t *req)
{
    if (tc_get(c, "page-size"))
        json_object_set_new(req, "page_size", json_integer(strtol(tc_get(c, "page-size"), NULL, 10)));
    if (tc_get(c, "page-token")) json_object_set_new(req, "page_token", json_string(tc_get(c, "page-token")));
}

void tc_more(const json_t *reply)
{
    const char *t = json_string_value(json_object_get(reply, "next_page_token"));
    if (t && *t) fprintf(stderr, "(more: --page-token %s)\n", t);
}
