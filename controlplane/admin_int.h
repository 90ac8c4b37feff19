/* admin_int.h: internals of the control plane's admin side (admin*.c,
 * auth.c, audit.c, http.c, cp_util.c), beside the sources. cp.h is the
 * contract with the agent side; this header is what the admin files share
 * among themselves, and what their unit tests reach.
 *
 * The shape of every AdminService call (admin.c):
 *   1. auth: the bearer token in `authorization` metadata is hashed and
 *      compared in constant time with --admin-tokens (auth.c); the method's
 *      required role is checked (UNAUTHENTICATED / PERMISSION_DENIED);
 *   2. the request is unpacked and handed to the method's handler with an
 *      admin context (cp_actx_t) naming the caller;
 *   3. a write builds a write plan (cp_wr_t): store compares, each with the
 *      gRPC status and message to return when it does not hold, plus puts
 *      and deletes; cp_wr_commit adds the audit event and runs it all as ONE
 *      store transaction, so a change and its audit entry commit together or
 *      not at all.
 */
#ifndef TG_CP_ADMIN_INT_H
#define TG_CP_ADMIN_INT_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/cp.h"
#include "tollgate/v1/admin.pb-c.h"

/* ---- auth.c -------------------------------------------------------------- */

/* Parses an admin-token file's text: one token per line, `name role token`,
 * '#' starts a comment, blank lines are skipped; role is admin, pricing or
 * reader; a token written `sha256:<64 hex>` is kept as that hash (so the file
 * need not hold the secret). Names are unique, [A-Za-z0-9._@-]{1,63};
 * literal tokens are at least 16 characters. On success *out (tg_free) holds
 * *n tokens. Errors: -1 with "line N: ..." in err. */
int tg_cp_tokens_parse(const char *text, tg_cp_admin_token_t **out, size_t *n, char *err,
                       size_t errlen);

/* Reads and parses the file at path (as tg_cp_tokens_parse). */
int tg_cp_tokens_load(const char *path, tg_cp_admin_token_t **out, size_t *n, char *err,
                      size_t errlen);

/* Looks up the bearer value of an `authorization` header ("Bearer
 * <token>", scheme case-insensitive): every configured token is compared in
 * constant time. Returns 0 with a copy of the matching token in *out, 1 when
 * none matches, 2 when no tokens are configured. Safe against a concurrent
 * tg_cp_tokens_reload. */
int tg_cp_auth_lookup(tg_cp_t *cp, const char *authz, tg_cp_admin_token_t *out);

/* Replaces cp's tokens with those of the file at path (SIGHUP), atomically
 * for callers of tg_cp_auth_lookup; on error the old tokens stay. Returns 0
 * or -1 with err set. */
int tg_cp_tokens_reload(tg_cp_t *cp, const char *path, char *err, size_t errlen);

/* "admin", "pricing", "reader" (or "unknown"). */
const char *tg_cp_role_name(int role);

/* ---- admin context and write plans (admin.c) ----------------------------- */

typedef struct cp_actx {
    tg_cp_t *ax_cp;
    tg_rpc_call_t *ax_call;
    tg_pool_t *ax_pool;                   /* the call's pool */
    tg_cp_admin_token_t ax_token;         /* the caller (a copy: tokens may be reloaded) */
    Tollgate__V1__Actor ax_actor;         /* token name, role, peer */
    const char *ax_method;                /* short method name, "CreateAccount" */
} cp_actx_t;

#define CP_WR_MAX_CMPS 48
#define CP_WR_MAX_OPS 72

typedef struct cp_wr {
    tg_pool_t *wr_pool;
    tg_store_cmp_t wr_cmps[CP_WR_MAX_CMPS];
    int wr_cmp_code[CP_WR_MAX_CMPS];     /* status when compare i does not hold */
    const char *wr_cmp_msg[CP_WR_MAX_CMPS];
    size_t wr_ncmp;
    tg_store_op_t wr_ops[CP_WR_MAX_OPS];
    size_t wr_nops;
    int wr_overflow;                     /* too many compares/ops were added */
    /* the audit event */
    const char *wr_otype;                /* "account" */
    const char *wr_oid;
    const char *wr_before;               /* JSON, secrets redacted, or NULL */
    const char *wr_after;
} cp_wr_t;

/* Starts an empty plan whose strings live in pool. */
void cp_wr_init(cp_wr_t *w, tg_pool_t *pool);

/* Adds "key's target <op> num must hold, else fail the call with code and
 * msg" (msg is copied). */
void cp_wr_cmp(cp_wr_t *w, const char *key, int target, int op, int64_t num, int code,
               const char *msg);

/* Adds a put of m, packed, under key; a put of raw bytes; a delete (prefix 1:
 * every key starting with key). Keys and values are copied into the pool. */
int cp_wr_put_pb(cp_wr_t *w, const char *key, const ProtobufCMessage *m);
void cp_wr_put(cp_wr_t *w, const char *key, const void *val, size_t len);
void cp_wr_del(cp_wr_t *w, const char *key, int prefix);

/* Names the changed object and its before/after states (either may be NULL)
 * for the audit event; the JSON is made here with secrets redacted. */
void cp_wr_audit(cp_wr_t *w, const char *otype, const char *oid, const ProtobufCMessage *before,
                 const ProtobufCMessage *after);

/* Runs the plan plus its audit event as one store transaction (audit.c).
 * Returns TG_RPC_CODE_OK with *rev the revision of the change, or a status
 * code with the message set on the call: the failing compare's code and
 * message, UNAVAILABLE/INTERNAL for store errors, ABORTED after repeated
 * contention on the audit sequence. */
int cp_wr_commit(cp_actx_t *a, cp_wr_t *w, int64_t *rev);

/* The audit event's share of someone else's transaction (a balance change
 * commits its audit event with the money, in settlement's transaction). */
typedef struct cp_audit_slot {
    char au_key[64];  /* TG_CP_K_AUDIT<seq> */
    char au_seq[21];  /* the new counter value */
    tg_buf_t au_buf;  /* the packed AuditEvent; the caller inits and frees it */
} cp_audit_slot_t;

/* Reads the audit counter and fills *cmp (the counter unchanged) and ops[0..2)
 * (put the event of w's otype/oid/before/after, put the counter); they point
 * into s and w until the next call. Hold cp_audit_lock from the first fill
 * to the commit: writers of this replica then never race for a seq. Returns
 * TG_RPC_CODE_OK or a code with the reason in err. */
int cp_audit_fill(cp_actx_t *a, const cp_wr_t *w, cp_audit_slot_t *s, tg_store_cmp_t *cmp,
                  tg_store_op_t *ops, char *err, size_t errlen);
void cp_audit_lock(void);
void cp_audit_unlock(void);

/* Fails the call: sets its status message, returns code. */
int cp_fail(cp_actx_t *a, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A string from the call's pool, printf-formatted. Never NULL (aborts the
 * process on no memory: a pool failure leaves nothing sensible to do). */
char *cp_fmt(cp_actx_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reads key as type d: 0 with *out (tg_rpc_pb_free) and *mod_rev, 1 when
 * absent, or a negative code after failing the call (status in *code). */
int cp_read(cp_actx_t *a, const char *key, const ProtobufCMessageDescriptor *d,
            ProtobufCMessage **out, int64_t *mod_rev, int *code);

/* Packs m into reply; returns OK or INTERNAL. */
int cp_reply(cp_actx_t *a, const ProtobufCMessage *m, tg_buf_t *reply);

/* ---- generic protobuf-c helpers (cp_util.c) -------------------------------- */

/* Replaces a string field of a message that came from tg_rpc_pb_unpack
 * (the old value is freed with tg_free, the new one tg_strdup'd). Returns 0
 * or -1 on no memory. */
int tg_cp_pb_set_str(char **slot, const char *v);

/* Sets an int64 field named `name` when the message has one. */
void tg_cp_pb_set_i64(ProtobufCMessage *m, const char *name, int64_t v);

/* Page tokens of store-ordered lists: "p1" + hex of the last id returned.
 * encode writes into out (2*strlen(id)+3 bytes); decode writes the id into
 * out (outlen) and returns 0, or -1 for a token this server did not make. */
int tg_cp_page_token_encode(const char *id, char *out, size_t outlen);
int tg_cp_page_token_decode(const char *tok, char *out, size_t outlen);

/* The page size a request asked for: 0 -> 100, capped at 1000. */
size_t tg_cp_page_size(uint32_t asked);

/* Appends field, CSV-escaped (RFC 4180: quoted when it holds a comma, quote,
 * CR or LF; quotes doubled), to b. Returns 0 or a TG_BUF_E* code. */
int tg_cp_csv_field(tg_buf_t *b, const char *field);

/* Appends the CSV line of one ledger row (ExportLedger's columns: seq,
 * settled_at, kind, entry_id, account, project, key, run, model,
 * upstream_model, channel, route_type, bucket, currency, amount_nano,
 * cost_nano, upstream_cost_nano, input_tokens, output_tokens,
 * price_version) to b; e (may be NULL) is the row's LedgerEntry. Returns 0
 * or TG_BUF_ENOMEM. (admin_ledger.c) */
int tg_cp_csv_row(tg_buf_t *b, const tg_ledger_row_t *row, const Tollgate__V1__LedgerEntry *e);

/* RFC 3339 UTC time with microseconds, "2026-11-24T05:31:02.123456Z", into
 * out (32 bytes). */
void tg_cp_rfc3339(int64_t us, char out[32]);

/* ---- validation (admin_valid.c): pure, unit-tested ------------------------- */

/* Each returns 0, or -1 with "path: reason" in err (path names the field,
 * e.g. "account.buckets[1].currency"). They check shapes and ranges only;
 * references to other objects are checked against the store by admin*.c. */
int tg_cp_valid_currency(const char *c);
int tg_cp_valid_name(const char *s, size_t max);   /* printable, no control chars, 1..max */
int tg_cp_valid_ident(const char *s, size_t max);  /* [A-Za-z0-9._:-]{1,max} */
int tg_cp_valid_cidr(const char *s);
int tg_cp_validate_account(const Tollgate__V1__Account *a, char *err, size_t errlen);
int tg_cp_validate_project(const Tollgate__V1__Project *p, char *err, size_t errlen);
int tg_cp_validate_key(const Tollgate__V1__ApiKey *k, char *err, size_t errlen);
int tg_cp_validate_channel(const Tollgate__V1__Channel *c, int creating, char *err,
                           size_t errlen);
int tg_cp_validate_route(const Tollgate__V1__ModelRoute *r, char *err, size_t errlen);
int tg_cp_validate_price_card(const Tollgate__V1__PriceCard *c, char *err, size_t errlen);
int tg_cp_validate_run_budget(const Tollgate__V1__RunBudget *b, char *err, size_t errlen);
int tg_cp_validate_policy(const Tollgate__V1__GatewayPolicy *p, char *err, size_t errlen);
/* An alert rule: a known scope ("rule.scope: unknown scope 'x'"), a kind
 * that scope admits, thresholds 1..100, http(s) webhook URLs, pause_key only
 * on a key scope. */
int tg_cp_validate_alert_rule(const Tollgate__V1__AlertRule *r, char *err, size_t errlen);
int tg_cp_valid_alert_scope(const char *s);      /* account, project, key, run, channel */
int tg_cp_valid_webhook_url(const char *u);      /* http:// or https:// with a host, no spaces */

/* ---- method tables ---------------------------------------------------------- */

/* Who may call a method. */
enum cp_need { CP_NEED_READ = 1, CP_NEED_PRICING = 2, CP_NEED_ADMIN = 3 };

typedef int (*cp_handler_fn)(cp_actx_t *a, const ProtobufCMessage *req, tg_buf_t *reply);

typedef struct cp_method {
    const char *m_name;                       /* "CreateAccount" */
    const ProtobufCMessageDescriptor *m_req;  /* request type */
    int m_need;                               /* enum cp_need */
    const char *m_action;                     /* "create accounts", for PERMISSION_DENIED */
    cp_handler_fn m_fn;                       /* unary handler, or NULL for m_stream */
    tg_rpc_stream_fn m_stream;                /* server stream (ExportLedger) */
} cp_method_t;

/* Each admin*.c file exports its table, ended by an entry with m_name NULL. */
extern const cp_method_t tg_cp_objects_methods[];  /* admin_objects.c */
extern const cp_method_t tg_cp_price_methods[];    /* admin_price.c */
extern const cp_method_t tg_cp_ledger_methods[];   /* admin_ledger.c */
extern const cp_method_t tg_cp_misc_methods[];     /* admin.c */
extern const cp_method_t tg_cp_alert_methods[];    /* admin_alerts.c: ListAlerts, WatchAlerts */

/* What a registered method's handler gets as its arg: stream handlers
 * (m_stream) read the control plane and their table entry from it. */
typedef struct cp_binding {
    tg_cp_t *b_cp;
    const cp_method_t *b_m;
} cp_binding_t;

/* Stream handlers authenticate themselves through this (same rules as the
 * unary wrapper). Returns OK with *a filled, or the failing status. */
int cp_stream_begin(tg_cp_t *cp, tg_rpc_call_t *call, const cp_method_t *m, cp_actx_t *a);

/* Walks the keys under prefix in key order, from prefix + from (from_len
 * bytes; from NULL: the first key), reading 256 at a time, and calls fn for
 * each with the key's bytes after the prefix. fn returns CP_SCAN_GO to go
 * on, CP_SCAN_STOP to end the walk, or a failure status (the call's message
 * already set). Returns OK or a failure status. */
enum { CP_SCAN_GO = 0, CP_SCAN_STOP = -1 };
typedef int (*cp_scan_fn)(cp_actx_t *a, const tg_store_kv_t *kv, const char *suffix,
                          size_t suffix_len, void *arg);
int cp_scan(cp_actx_t *a, const char *prefix, const char *from, size_t from_len, int keys_only,
            cp_scan_fn fn, void *arg);

/* Lists the objects stored under prefix as a page of a List*Response of
 * type resp (its first repeated field gets the objects, next_page_token the
 * token). keep (may be NULL) filters; fix (may be NULL) edits each object
 * before it is returned (redaction). Every object's revision field gets its
 * key's mod_revision. Returns a status code (the call's message set on
 * failure). */
typedef int (*cp_keep_fn)(const ProtobufCMessage *m, const void *arg);
int cp_list(cp_actx_t *a, const char *prefix, const ProtobufCMessageDescriptor *d,
            uint32_t page_size, const char *page_token, cp_keep_fn keep, const void *keep_arg,
            void (*fix)(ProtobufCMessage *m), const ProtobufCMessageDescriptor *resp,
            tg_buf_t *reply);

/* Sets *warning (a pool string) when no price card in effect now prices
 * model for a direct or pooled channel, else NULL (admin_price.c; PutRoute
 * returns it in the reply's warnings). Returns a status code. */
int cp_price_route_warning(cp_actx_t *a, const char *model, const char **warning);

/* QueryAudit (audit.c). */
int cp_query_audit(cp_actx_t *a, const ProtobufCMessage *req, tg_buf_t *reply);

/* Export threads still running (main waits for 0 before closing the
 * ledger). */
extern atomic_int tg_cp_exports_running;

/* The health and metrics HTTP server (http.c): /healthz, /readyz,
 * /metrics on addr ("127.0.0.1:0" picks a port, written to *port), served
 * by its own thread. Returns NULL with err set. Stop with tg_cp_http_stop
 * (accepts NULL). */
typedef struct tg_cp_http tg_cp_http_t;
tg_cp_http_t *tg_cp_http_start(tg_cp_t *cp, const char *addr, int *port, char *err, size_t errlen);
void tg_cp_http_stop(tg_cp_http_t *h);

/* Redaction list for audit JSON and responses. */
extern const char *const tg_cp_redact[];

#endif
