/* cmd_admin.h: what tollctl's admin commands share (cmd_common.c): flag
 * parsing, the connection to the control plane, calls whose requests and
 * replies travel as JSON (built with pbjson from the api/ descriptors, so
 * `--file x.json` and `--json` use exactly the proto3 JSON mapping), and the
 * people-facing output: aligned tables and "field: value" listings.
 *
 * Connection settings, for every admin command:
 *   --server HOST:PORT   or TOLLGATE_SERVER (default 127.0.0.1:7443)
 *   --token-file FILE    or TOLLGATE_TOKEN (the admin bearer token)
 *   --tls, --ca FILE, --cert FILE --key FILE, --tls-name NAME   TLS / mTLS
 *   --timeout SECONDS    per call (default 15)
 *   --json               machine-readable output (proto3 JSON) */
#ifndef TOLLCTL_CMD_ADMIN_H
#define TOLLCTL_CMD_ADMIN_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "rpc/tg_rpc.h"

#define TC_MAX_ARGS 128

typedef struct tc {
    const char *tc_cmd;          /* "account create", for messages */
    /* parsed flags, in order: --name value (value NULL for a bare flag) */
    const char *tc_names[TC_MAX_ARGS];
    const char *tc_vals[TC_MAX_ARGS];
    int tc_nflags;
    const char *tc_pos[TC_MAX_ARGS]; /* positional arguments after the verb */
    int tc_npos;
    int tc_json;
    /* connection */
    char tc_target[256];
    char *tc_token;
    tg_rpc_channel_t *tc_ch;
    int tc_timeout_ms;
} tc_t;

/* Parses argv (flags anywhere) against spec: space-separated flag names,
 * "name=" for a flag with a value, "name" for a bare flag; the connection
 * flags are always allowed. Positionals beyond max_pos are an error.
 * Returns TOLLCTL_OK or TOLLCTL_USAGE (message printed). */
int tc_parse(tc_t *c, const char *cmd, int argc, char **argv, const char *spec, int max_pos);

/* The last value of --name, or NULL; tc_flag: whether --name was given;
 * tc_nth: the i-th value of a repeatable flag (NULL past the end). */
const char *tc_get(const tc_t *c, const char *name);
int tc_flag(const tc_t *c, const char *name);
const char *tc_nth(const tc_t *c, const char *name, int i);

/* Positional i or NULL. tc_need_pos prints "usage" naming `what` and
 * returns NULL when it is missing. */
const char *tc_pos(const tc_t *c, int i);
const char *tc_need_pos(const tc_t *c, int i, const char *what);

/* Opens the channel and reads the token. Returns TOLLCTL_OK or FAIL. */
int tc_connect(tc_t *c);

/* Frees what tc_parse/tc_connect made. */
void tc_done(tc_t *c);

/* Calls method with req (a JSON object turned into req_d; the reference is
 * stolen) and, on success, sets *out to the reply as JSON (with default
 * values present; json_decref it). Returns TOLLCTL_OK, or FAIL after
 * printing the server's message (or "cannot reach the control plane ..."). */
int tc_call(tc_t *c, const char *method, const ProtobufCMessageDescriptor *req_d, json_t *req,
            const ProtobufCMessageDescriptor *resp_d, json_t **out);

/* Opens a server stream and writes each reply's string field `field` to
 * stdout as it arrives (ExportLedger's CSV). Returns TOLLCTL_OK or FAIL. */
int tc_stream_text(tc_t *c, const char *method, const ProtobufCMessageDescriptor *req_d, json_t *req,
                   const ProtobufCMessageDescriptor *resp_d, const char *field);

/* Reads a JSON object from FILE ("-" is stdin). NULL after printing why. */
json_t *tc_read_json_file(const tc_t *c, const char *path);

/* Output. A column: title and JSON field (dotted path "actor.token_name"),
 * or a renderer that writes the cell into buf. */
typedef struct tc_col {
    const char *col_title;
    const char *col_field;
    void (*col_render)(const json_t *obj, char *buf, size_t len);
} tc_col_t;

/* Prints rows (a JSON array of objects) as an aligned table; cols ends with
 * a NULL title. */
void tc_print_table(const json_t *rows, const tc_col_t *cols);

/* Prints an object: pretty JSON with --json, else "field: value" lines. */
void tc_print_obj(const tc_t *c, const json_t *obj);

/* A JSON value as display text: enums shortened ("KEY_STATUS_PAUSED" ->
 * "paused"), arrays/objects as compact JSON. */
void tc_cell(const json_t *v, char *buf, size_t len);

/* Formats nano-units as a decimal ("12.5", "-0.000000001"). */
void tc_nano(const char *nano, char *buf, size_t len);

/* Parses "12.50" (currency units, at most 9 decimals, up to
 * +-9223372036.854775807: the int64 nano-unit range) into nano-units.
 * Returns 0, or -1 with the reason in err ("'x' is not a decimal amount
 * with at most 9 decimals", "'x' is too large: ..."). */
int tc_parse_amount(const char *s, long long *nano, char *err, size_t errlen);

/* Parses a time: RFC 3339 ("2026-11-24T10:00:00Z"), a date ("2026-11-24",
 * UTC midnight), Unix seconds, or an age ("90m", "24h", "7d" ago), into
 * Unix microseconds. Returns 0 or -1. */
int tc_parse_time(const char *s, long long *us);

/* Adds the list flags (--page-size, --page-token) to a request. */
void tc_page_flags(const tc_t *c, json_t *req);

/* Prints "(more: --page-token T)" to stderr when the reply has a token. */
void tc_more(const json_t *reply);

/* The commands (cmd_objects.c, cmd_money.c). */
int cmd_account(int argc, char **argv);
int cmd_project(int argc, char **argv);
int cmd_key(int argc, char **argv);
/* tollctl key limits KEY: the key's and its project's spend limits in their
 * current windows (cmd_money.c). */
int cmd_key_limits(int argc, char **argv);
int cmd_channel(int argc, char **argv);
int cmd_route(int argc, char **argv);
int cmd_alert(int argc, char **argv);
int cmd_budget(int argc, char **argv);
int cmd_policy(int argc, char **argv);
int cmd_price(int argc, char **argv);
int cmd_topup(int argc, char **argv);
int cmd_adjust(int argc, char **argv);
int cmd_balance(int argc, char **argv);
int cmd_ledger(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_agents(int argc, char **argv);
int cmd_audit(int argc, char **argv);
int cmd_whoami(int argc, char **argv);
/* Usage text for `tollctl help <command>`, on stdout. */
void usage_admin(void);
void usage_account(void);
void usage_project(void);
void usage_key(void);
void usage_channel(void);
void usage_route(void);
void usage_alert(void);
void usage_price(void);
void usage_money(void);
void usage_ledger(void);
void usage_run(void);

#endif
