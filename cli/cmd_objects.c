/* cmd_objects.c: tollctl's configuration commands: account, project, key,
 * channel, route, alert rule, budget and policy. One driver serves every object type
 * (create/get/list/update/delete): an object is a JSON document, taken from
 * --file and/or built from flags, sent through pbjson, so the field names,
 * enum names and error paths are the API's own. An update sends only the
 * fields given (their names become the update_mask). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/tg_base.h"
#include "cli/cmd_admin.h"
#include "cli/tollctl_int.h"
#include "tollgate/v1/admin.pb-c.h"

typedef struct objcmd {
    const char *oc_name;    /* "account" */
    const char *oc_type;    /* "Account": CreateAccount, GetAccount, ... */
    const char *oc_field;   /* request field holding the object */
    const char *oc_id;      /* the object's id field ("id", "model") */
    const char *oc_create;  /* "create" or "put" */
    const ProtobufCMessageDescriptor *oc_obj;         /* the object */
    const ProtobufCMessageDescriptor *oc_create_req;  /* CreateXRequest / PutXRequest */
    const ProtobufCMessageDescriptor *oc_create_resp; /* what create answers */
    const ProtobufCMessageDescriptor *oc_update_req;  /* NULL: no update verb */
    const ProtobufCMessageDescriptor *oc_list_resp;   /* NULL: no list verb */
    const char *oc_list_field;                        /* "accounts" */
    const tc_col_t *oc_cols;
    const char *oc_spec; /* flags this object's verbs accept */
    /* fills obj from flags; returns 0 or -1 after printing why */
    int (*oc_flags)(const tc_t *c, json_t *obj);
    const char *oc_usage;
} objcmd_t;

static void set_str(json_t *o, const char *k, const char *v)
{
    if (v) json_object_set_new(o, k, json_string(v));
}

static void set_list(const tc_t *c, json_t *o, const char *k, const char *flag)
{
    const char *v;
    json_t *a = NULL;
    for (int i = 0; (v = tc_nth(c, flag, i)); i++) {
        if (!a) a = json_array();
        json_array_append_new(a, json_string(v));
    }
    if (a) json_object_set_new(o, k, a);
}

/* ---- renderers ---------------------------------------------------------------------- */

static void r_buckets(const json_t *o, char *buf, size_t len)
{
    const json_t *b = json_object_get(o, "buckets"), *x;
    size_t i, k = 0;
    buf[0] = '\0';
    json_array_foreach(b, i, x) {
        k += (size_t)snprintf(buf + k, k < len ? len - k : 0, "%s%s:%s", i ? "," : "",
                              json_string_value(json_object_get(x, "name")),
                              json_string_value(json_object_get(x, "currency")));
        if (k >= len) break;
    }
}

static void r_targets(const json_t *o, char *buf, size_t len)
{
    const json_t *tiers = json_object_get(o, "tiers"), *t, *x;
    size_t i, j, k = 0;
    buf[0] = '\0';
    json_array_foreach(tiers, i, t) {
        json_array_foreach(json_object_get(t, "targets"), j, x) {
            const char *um = json_string_value(json_object_get(x, "upstream_model"));
            k += (size_t)snprintf(buf + k, k < len ? len - k : 0, "%s%s%s%s", k ? (j ? "," : " | ") : "",
                                  json_string_value(json_object_get(x, "channel_id")),
                                  um && *um ? "->" : "", um ? um : "");
            if (k >= len) return;
        }
    }
}

static const tc_col_t ACCOUNT_COLS[] = {{"ID", "id", NULL},           {"NAME", "name", NULL},
                                        {"BILLING", "billing_mode", NULL}, {"STATUS", "status", NULL},
                                        {"BUCKETS", NULL, r_buckets},      {"REVISION", "revision", NULL},
                                        {NULL, NULL, NULL}};
static const tc_col_t PROJECT_COLS[] = {{"ID", "id", NULL},         {"ACCOUNT", "account_id", NULL},
                                        {"NAME", "name", NULL},     {"STATUS", "status", NULL},
                                        {"REVISION", "revision", NULL}, {NULL, NULL, NULL}};
static const tc_col_t KEY_COLS[] = {{"ID", "id", NULL},
                                    {"PREFIX", "display_prefix", NULL},
                                    {"ACCOUNT", "account_id", NULL},
                                    {"PROJECT", "project_id", NULL},
                                    {"NAME", "name", NULL},
                                    {"STATUS", "status", NULL},
                                    {"REASON", "status_reason", NULL},
                                    {NULL, NULL, NULL}};
static const tc_col_t CHANNEL_COLS[] = {{"ID", "id", NULL},
                                        {"NAME", "name", NULL},
                                        {"PROVIDER", "provider", NULL},
                                        {"ROUTE", "route_type", NULL},
                                        {"BASE_URL", "base_url", NULL},
                                        {"CREDENTIAL", "has_credential", NULL},
                                        {"STATUS", "status", NULL},
                                        {NULL, NULL, NULL}};
static const tc_col_t ROUTE_COLS[] = {{"MODEL", "model", NULL},
                                      {"ALIASES", "aliases", NULL},
                                      {"TARGETS (tier | tier)", NULL, r_targets},
                                      {"ENCODING", "encoding", NULL},
                                      {"REVISION", "revision", NULL},
                                      {NULL, NULL, NULL}};

static const tc_col_t ALERT_COLS[] = {{"ID", "id", NULL},
                                      {"NAME", "name", NULL},
                                      {"KIND", "kind", NULL},
                                      {"SCOPE", "scope", NULL},
                                      {"SCOPE_ID", "scope_id", NULL},
                                      {"ACTION", "action", NULL},
                                      {"DISABLED", "disabled", NULL},
                                      {NULL, NULL, NULL}};

/* ---- flags -> object -------------------------------------------------------------------- */

static int account_flags(const tc_t *c, json_t *o)
{
    const char *v;
    json_t *bs = NULL;
    set_str(o, "name", tc_get(c, "name"));
    set_str(o, "status", tc_get(c, "status"));
    if (tc_flag(c, "postpaid")) set_str(o, "billing_mode", "postpaid");
    if (tc_flag(c, "prepaid")) set_str(o, "billing_mode", "prepaid");
    for (int i = 0; (v = tc_nth(c, "bucket", i)); i++) {
        /* name:CURRENCY[:credit limit in currency units] */
        char name[64], cur[64], lim[64] = "";
        json_t *b;
        if (sscanf(v, "%63[^:]:%63[^:]:%63s", name, cur, lim) < 2) {
            fprintf(stderr, "tollctl %s: --bucket %s: expected NAME:CURRENCY[:CREDIT_LIMIT]\n", c->tc_cmd, v);
            json_decref(bs);
            return -1;
        }
        b = json_pack("{s:s, s:s}", "name", name, "currency", cur);
        if (lim[0]) {
            long long nano;
            char s[32], aerr[TG_ERRLEN] = "";
            if (tc_parse_amount(lim, &nano, aerr, sizeof aerr) != 0) {
                fprintf(stderr, "tollctl %s: --bucket %s: bad credit limit: %s\n", c->tc_cmd, v, aerr);
                json_decref(b);
                json_decref(bs);
                return -1;
            }
            snprintf(s, sizeof s, "%lld", nano);
            json_object_set_new(b, "credit_limit_nano", json_string(s));
        }
        if (!bs) bs = json_array();
        json_array_append_new(bs, b);
    }
    if (bs) json_object_set_new(o, "buckets", bs);
    return 0;
}

/* --rpm / --tpm of a key or a project: its rate_limit. */
static int rate_flags(const tc_t *c, json_t *o, const char *obj)
{
    char upd[32];
    snprintf(upd, sizeof upd, "%s update", obj);
    if (strcmp(c->tc_cmd, upd) == 0 && !tc_get(c, "rpm") != !tc_get(c, "tpm")) {
        /* an update replaces the rate limit as a whole: one flag alone
         * would silently make the other limit 0 (unlimited) */
        fprintf(stderr,
                "tollctl %s update: %s without %s would set the other limit to 0 (unlimited): the rate limit is "
                "replaced as a whole, so give both (--rpm N --tpm N, 0: unlimited; `tollctl %s get ID` shows the "
                "current ones)\n",
                obj, tc_get(c, "rpm") ? "--rpm" : "--tpm", tc_get(c, "rpm") ? "--tpm" : "--rpm", obj);
        return -1;
    }
    if (tc_get(c, "rpm") || tc_get(c, "tpm")) {
        /* the rate limit is one message: both numbers are set (0: unlimited),
         * the server refuses a negative one naming the field */
        json_t *rl = json_object();
        set_str(rl, "requests_per_minute", tc_get(c, "rpm") ? tc_get(c, "rpm") : "0");
        set_str(rl, "tokens_per_minute", tc_get(c, "tpm") ? tc_get(c, "tpm") : "0");
        json_object_set_new(o, "rate_limit", rl);
    }
    return 0;
}

static int project_flags(const tc_t *c, json_t *o)
{
    set_str(o, "account_id", tc_get(c, "account"));
    set_str(o, "name", tc_get(c, "name"));
    set_str(o, "status", tc_get(c, "status"));
    return rate_flags(c, o, "project");
}

static int key_flags(const tc_t *c, json_t *o)
{
    set_str(o, "account_id", tc_get(c, "account"));
    set_str(o, "project_id", tc_get(c, "project"));
    set_str(o, "name", tc_get(c, "name"));
    set_list(c, o, "model_allowlist", "model-allow");
    set_list(c, o, "ip_allowlist", "ip-allow");
    set_list(c, o, "allowed_route_types", "route-type");
    set_list(c, o, "tags", "tag");
    if (tc_flag(c, "expose-cost")) json_object_set_new(o, "expose_cost", json_true());
    if (rate_flags(c, o, "key") != 0)
        return -1;
    if (tc_get(c, "expires")) {
        long long us;
        char s[32];
        if (tc_parse_time(tc_get(c, "expires"), &us) != 0) {
            fprintf(stderr, "tollctl %s: --expires %s: expected a time (2026-12-31, RFC 3339)\n",
                    c->tc_cmd, tc_get(c, "expires"));
            return -1;
        }
        snprintf(s, sizeof s, "%lld", us);
        set_str(o, "expires_at_us", s);
    }
    return 0;
}

static int channel_flags(const tc_t *c, json_t *o)
{
    set_str(o, "name", tc_get(c, "name"));
    set_str(o, "provider", tc_get(c, "provider"));
    set_str(o, "brand", tc_get(c, "brand"));
    set_str(o, "base_url", tc_get(c, "base-url"));
    set_str(o, "route_type", tc_get(c, "route-type"));
    set_str(o, "status", tc_get(c, "status"));
    set_str(o, "cost_rate_ppm", tc_get(c, "cost-rate-ppm"));
    set_str(o, "credential_ref", tc_get(c, "credential-ref"));
    set_str(o, "credential", tc_get(c, "credential"));
    if (tc_get(c, "weight")) json_object_set_new(o, "weight", json_integer(strtol(tc_get(c, "weight"), NULL, 10)));
    if (tc_get(c, "credential-file")) {
        /* keeps the secret out of the shell history and `ps` */
        FILE *f = fopen(tc_get(c, "credential-file"), "r");
        char line[4096] = "";
        size_t n;
        if (!f || !fgets(line, sizeof line, f)) {
            fprintf(stderr, "tollctl %s: cannot read --credential-file %s\n", c->tc_cmd,
                    tc_get(c, "credential-file"));
            if (f) fclose(f);
            return -1;
        }
        fclose(f);
        n = strlen(line);
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        set_str(o, "credential", line);
        memset(line, 0, sizeof line);
    }
    return 0;
}

static int route_flags(const tc_t *c, json_t *o)
{
    const char *ch;
    json_t *targets = NULL;
    set_str(o, "model", tc_get(c, "model"));
    set_str(o, "encoding", tc_get(c, "encoding"));
    set_list(c, o, "aliases", "alias");
    /* --channel ID[=UPSTREAM_MODEL], repeated: one tier of targets; a
     * --fallback CHANNEL adds a second tier */
    for (int i = 0; (ch = tc_nth(c, "channel", i)); i++) {
        const char *eq = strchr(ch, '=');
        json_t *t = json_object();
        json_object_set_new(t, "channel_id", eq ? json_stringn(ch, (size_t)(eq - ch)) : json_string(ch));
        if (eq) set_str(t, "upstream_model", eq + 1);
        if (!targets) targets = json_array();
        json_array_append_new(targets, t);
    }
    if (targets) {
        json_t *tiers = json_array();
        json_array_append_new(tiers, json_pack("{s:o}", "targets", targets));
        for (int i = 0; (ch = tc_nth(c, "fallback", i)); i++) {
            const char *eq = strchr(ch, '=');
            json_t *t = json_object();
            json_object_set_new(t, "channel_id", eq ? json_stringn(ch, (size_t)(eq - ch)) : json_string(ch));
            if (eq) set_str(t, "upstream_model", eq + 1);
            json_array_append_new(tiers, json_pack("{s:[o]}", "targets", t));
        }
        json_object_set_new(o, "tiers", tiers);
    }
    return 0;
}

static int alert_flags(const tc_t *c, json_t *o)
{
    const char *v;
    json_t *a = NULL;
    set_str(o, "name", tc_get(c, "name"));
    set_str(o, "scope", tc_get(c, "scope"));
    set_str(o, "scope_id", tc_get(c, "scope-id"));
    set_str(o, "kind", tc_get(c, "kind"));
    set_str(o, "action", tc_get(c, "action"));
    set_str(o, "velocity_limit", tc_get(c, "velocity"));
    for (int i = 0; (v = tc_nth(c, "threshold", i)); i++) {
        if (!a) a = json_array();
        json_array_append_new(a, json_integer(strtoll(v, NULL, 10)));
    }
    if (a) json_object_set_new(o, "thresholds_pct", a);
    if (tc_get(c, "rate")) json_object_set_new(o, "rate_pct", json_integer(strtoll(tc_get(c, "rate"), NULL, 10)));
    if (tc_get(c, "window"))
        json_object_set_new(o, "window_s", json_integer(strtoll(tc_get(c, "window"), NULL, 10)));
    if (tc_get(c, "min-requests"))
        json_object_set_new(o, "min_requests", json_integer(strtoll(tc_get(c, "min-requests"), NULL, 10)));
    a = NULL;
    for (int i = 0; (v = tc_nth(c, "webhook", i)); i++) {
        if (!a) a = json_array();
        json_array_append_new(a, json_pack("{s:s}", "url", v));
    }
    if (a) json_object_set_new(o, "webhooks", a);
    if (tc_flag(c, "disable")) json_object_set_new(o, "disabled", json_true());
    if (tc_flag(c, "enable")) json_object_set_new(o, "disabled", json_false());
    return 0;
}

/* ---- the driver ---------------------------------------------------------------------------- */

static int verb_usage(const objcmd_t *oc)
{
    fprintf(stderr, "%s", oc->oc_usage);
    return TOLLCTL_USAGE;
}

/* The object from --file (if any) with the flags on top. NULL on error. */
static json_t *object_of(const tc_t *c, const objcmd_t *oc)
{
    json_t *o = tc_get(c, "file") ? tc_read_json_file(c, tc_get(c, "file")) : json_object();
    if (o && oc->oc_flags(c, o) != 0) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

static void print_deleted(const tc_t *c, const objcmd_t *oc, const char *id, const json_t *r)
{
    if (c->tc_json) tc_print_obj(c, r);
    else printf("deleted %s %s (revision %s)\n", oc->oc_name, id,
                json_string_value(json_object_get(r, "revision")));
}

static void print_key_created(const tc_t *c, const json_t *r)
{
    const json_t *k = json_object_get(r, "key");
    if (c->tc_json) {
        tc_print_obj(c, r);
        return;
    }
    printf("created key %s (%s) for account %s\n", json_string_value(json_object_get(k, "id")),
           json_string_value(json_object_get(k, "display_prefix")),
           json_string_value(json_object_get(k, "account_id")));
    printf("secret (shown only now, store it safely):\n%s\n",
           json_string_value(json_object_get(r, "secret")));
}

static int run_obj(const objcmd_t *oc, int argc, char **argv)
{
    char cmd[64], method[64];
    const char *verb = argc > 1 ? argv[1] : NULL, *id = NULL;
    const ProtobufCMessageDescriptor *reqd = NULL, *respd = oc->oc_obj;
    json_t *req = NULL, *r = NULL;
    int is_list = 0, is_delete = 0;
    tc_t c;
    int rc;

    if (!verb || verb[0] == '-' || strcmp(verb, "help") == 0) return verb_usage(oc);
    snprintf(cmd, sizeof cmd, "%s %s", oc->oc_name, verb);
    if ((rc = tc_parse(&c, cmd, argc - 2, argv + 2, oc->oc_spec, 1)) != TOLLCTL_OK) return rc;
    rc = TOLLCTL_USAGE;
    if (strcmp(verb, oc->oc_create) == 0) {
        json_t *o = object_of(&c, oc);
        if (!o) goto done;
        if (tc_pos(&c, 0) && !json_object_get(o, oc->oc_id)) set_str(o, oc->oc_id, tc_pos(&c, 0));
        req = json_pack("{s:o}", oc->oc_field, o);
        if (tc_get(&c, "expected-revision"))
            set_str(req, "expected_revision", tc_get(&c, "expected-revision"));
        snprintf(method, sizeof method, "%s%s", strcmp(verb, "put") == 0 ? "Put" : "Create", oc->oc_type);
        reqd = oc->oc_create_req;
        respd = oc->oc_create_resp;
    } else if (strcmp(verb, "get") == 0) {
        if (!(id = tc_need_pos(&c, 0, "the id"))) goto done;
        req = json_pack("{s:s}", "id", id);
        snprintf(method, sizeof method, "Get%s", oc->oc_type);
        reqd = &tollgate__v1__get_request__descriptor;
    } else if (strcmp(verb, "list") == 0 && oc->oc_list_resp) {
        req = json_object();
        tc_page_flags(&c, req);
        set_str(req, "account_id", tc_get(&c, "account"));
        set_str(req, "project_id", tc_get(&c, "project"));
        snprintf(method, sizeof method, "List%ss", oc->oc_type);
        reqd = &tollgate__v1__list_request__descriptor;
        respd = oc->oc_list_resp;
        is_list = 1;
    } else if (strcmp(verb, "update") == 0 && oc->oc_update_req) {
        json_t *o, *mask = json_array();
        const char *k;
        json_t *v;
        if (!(id = tc_need_pos(&c, 0, "the id")) || !(o = object_of(&c, oc))) {
            json_decref(mask);
            goto done;
        }
        json_object_foreach(o, k, v) if (strcmp(k, oc->oc_id) != 0) json_array_append_new(mask, json_string(k));
        if (json_array_size(mask) == 0) {
            fprintf(stderr, "tollctl %s: nothing to change: give flags or --file\n", cmd);
            json_decref(o);
            json_decref(mask);
            goto done;
        }
        set_str(o, oc->oc_id, id);
        req = json_pack("{s:o, s:o}", oc->oc_field, o, "update_mask", mask);
        if (tc_get(&c, "expected-revision"))
            set_str(req, "expected_revision", tc_get(&c, "expected-revision"));
        snprintf(method, sizeof method, "Update%s", oc->oc_type);
        reqd = oc->oc_update_req;
    } else if (strcmp(verb, "delete") == 0) {
        if (!(id = tc_need_pos(&c, 0, "the id"))) goto done;
        req = json_pack("{s:s}", "id", id);
        if (tc_get(&c, "expected-revision"))
            set_str(req, "expected_revision", tc_get(&c, "expected-revision"));
        snprintf(method, sizeof method, "Delete%s", oc->oc_type);
        reqd = &tollgate__v1__delete_request__descriptor;
        respd = &tollgate__v1__delete_response__descriptor;
        is_delete = 1;
    } else if (strcmp(oc->oc_name, "key") == 0 &&
               (strcmp(verb, "pause") == 0 || strcmp(verb, "resume") == 0 || strcmp(verb, "revoke") == 0)) {
        if (!(id = tc_need_pos(&c, 0, "the key id"))) goto done;
        req = json_pack("{s:s, s:s}", "id", id, "status",
                        verb[0] == 'p' ? "paused" : verb[2] == 's' ? "active" : "revoked");
        set_str(req, "reason", tc_get(&c, "reason"));
        snprintf(method, sizeof method, "SetKeyStatus");
        reqd = &tollgate__v1__set_key_status_request__descriptor;
    } else {
        fprintf(stderr, "tollctl %s: unknown verb '%s'\n", oc->oc_name, verb);
        verb_usage(oc);
        goto done;
    }
    if ((rc = tc_connect(&c)) != TOLLCTL_OK) {
        json_decref(req);
        goto done;
    }
    if ((rc = tc_call(&c, method, reqd, req, respd, &r)) != TOLLCTL_OK) goto done;
    if (is_list) {
        if (c.tc_json) tc_print_obj(&c, r);
        else tc_print_table(json_object_get(r, oc->oc_list_field), oc->oc_cols);
        tc_more(r);
    } else if (is_delete) {
        print_deleted(&c, oc, id, r);
    } else if (respd == &tollgate__v1__create_key_response__descriptor) {
        print_key_created(&c, r);
    } else if (respd == &tollgate__v1__create_alert_rule_response__descriptor && !c.tc_json) {
        const json_t *ru = json_object_get(r, "rule");
        printf("created alert rule %s (%s on %s %s)\n", json_string_value(json_object_get(ru, "id")),
               json_string_value(json_object_get(ru, "kind")), json_string_value(json_object_get(ru, "scope")),
               json_string_value(json_object_get(ru, "scope_id")));
        printf("webhook signing secret (shown only now, store it safely):\n%s\n",
               json_string_value(json_object_get(r, "webhook_secret")));
    } else {
        tc_print_obj(&c, r);
    }
done:
    json_decref(r);
    tc_done(&c);
    return rc;
}

#define CONN "  common: --server HOST:PORT --token-file F --json --tls --ca F --cert F --key F --timeout S\n"

static const objcmd_t ACCOUNT = {
    "account", "Account", "account", "id", "create", &tollgate__v1__account__descriptor,
    &tollgate__v1__create_account_request__descriptor, &tollgate__v1__account__descriptor,
    &tollgate__v1__update_account_request__descriptor, &tollgate__v1__list_accounts_response__descriptor,
    "accounts", ACCOUNT_COLS,
    "name= bucket= postpaid prepaid status= file= expected-revision= page-size= page-token=", account_flags,
    "usage: tollctl account create --name N --bucket NAME:CUR[:LIMIT]... [--postpaid] [--file a.json]\n"
    "       tollctl account get ID | list | delete ID\n"
    "       tollctl account update ID [--name N] [--status active|paused|disabled] [--file a.json]\n"
    "                              [--expected-revision R]   (only the fields given change)\n" CONN};

static const objcmd_t PROJECT = {
    "project", "Project", "project", "id", "create", &tollgate__v1__project__descriptor,
    &tollgate__v1__create_project_request__descriptor, &tollgate__v1__project__descriptor,
    &tollgate__v1__update_project_request__descriptor, &tollgate__v1__list_projects_response__descriptor,
    "projects", PROJECT_COLS,
    "account= name= status= rpm= tpm= file= expected-revision= page-size= page-token=", project_flags,
    "usage: tollctl project create --account ACC --name N [--rpm N] [--tpm N] [--file p.json]\n"
    "       tollctl project get ID | list [--account ACC] | delete ID\n"
    "       tollctl project update ID [--name N] [--status S] [--rpm N --tpm N] [--file p.json]\n"
    "  --rpm/--tpm: requests / tokens per minute for all the project's keys together, across all\n"
    "  agents (0: unlimited; an update replaces both)\n" CONN};

static const objcmd_t KEY = {
    "key", "Key", "key", "id", "create", &tollgate__v1__api_key__descriptor,
    &tollgate__v1__create_key_request__descriptor, &tollgate__v1__create_key_response__descriptor,
    &tollgate__v1__update_key_request__descriptor, &tollgate__v1__list_keys_response__descriptor, "keys",
    KEY_COLS,
    "account= project= name= model-allow= ip-allow= route-type= tag= expires= expose-cost rpm= tpm= reason= file= "
    "expected-revision= page-size= page-token=",
    key_flags,
    "usage: tollctl key create --account ACC [--project PRJ] [--name N] [--model-allow GLOB]...\n"
    "                          [--ip-allow CIDR]... [--route-type direct|pooled]... [--expires TIME]\n"
    "                          [--expose-cost] [--rpm N] [--tpm N] [--file k.json]   (prints the secret once)\n"
    "       tollctl key get ID | list [--account ACC] [--project PRJ] | delete ID\n"
    "       tollctl key pause ID [--reason R] | resume ID | revoke ID [--reason R]\n"
    "       tollctl key limits ID     spend limits: spent, held by agents, remaining, reset time\n"
    "       tollctl key update ID [--name N] [--model-allow G]... [--rpm N --tpm N] [--file k.json]\n"
    "  --rpm/--tpm: requests / tokens per minute across all agents (0: unlimited; the rate\n"
    "  limit is replaced as a whole, so an update must give both)\n" CONN};

static const objcmd_t CHANNEL = {
    "channel", "Channel", "channel", "id", "create", &tollgate__v1__channel__descriptor,
    &tollgate__v1__create_channel_request__descriptor, &tollgate__v1__channel__descriptor,
    &tollgate__v1__update_channel_request__descriptor, &tollgate__v1__list_channels_response__descriptor,
    "channels", CHANNEL_COLS,
    "name= provider= brand= base-url= route-type= status= cost-rate-ppm= weight= credential= "
    "credential-file= credential-ref= file= expected-revision= page-size= page-token=",
    channel_flags,
    "usage: tollctl channel create --name N --provider openai|anthropic|gemini|deepseek|qwen|kimi|glm|openai_compatible\n"
    "                              --base-url URL --route-type direct|pooled [--cost-rate-ppm PPM]\n"
    "                              [--credential-file F | --credential-ref env:NAME] [--file c.json]\n"
    "       tollctl channel get ID | list | delete ID\n"
    "       tollctl channel update ID [--credential-file F] [--weight W] [--file c.json]\n"
    "  credentials are write-only: reads show has_credential only\n" CONN};

static const objcmd_t ROUTE = {
    "route", "Route", "route", "model", "put", &tollgate__v1__model_route__descriptor,
    &tollgate__v1__put_route_request__descriptor, &tollgate__v1__model_route__descriptor, NULL,
    &tollgate__v1__list_routes_response__descriptor, "routes", ROUTE_COLS,
    "model= channel= fallback= alias= encoding= file= expected-revision= page-size= page-token=", route_flags,
    "usage: tollctl route put MODEL --channel CH[=UPSTREAM_MODEL]... [--fallback CH[=UPSTREAM]]...\n"
    "                         [--alias A]... [--encoding o200k_base] [--expected-revision R]\n"
    "       tollctl route put --file route.json     (a ModelRoute as JSON: tiers, policy, ...)\n"
    "       tollctl route get MODEL | list | delete MODEL\n" CONN};

static const objcmd_t ALERT = {
    "alert", "AlertRule", "rule", "id", "create", &tollgate__v1__alert_rule__descriptor,
    &tollgate__v1__create_alert_rule_request__descriptor, &tollgate__v1__create_alert_rule_response__descriptor,
    &tollgate__v1__update_alert_rule_request__descriptor, &tollgate__v1__list_alert_rules_response__descriptor,
    "rules", ALERT_COLS,
    "name= scope= scope-id= kind= threshold= velocity= rate= window= min-requests= action= webhook= disable "
    "enable file= expected-revision= page-size= page-token= account= project=",
    alert_flags,
    "usage: tollctl alert create --scope account|project|key|run|channel --scope-id ID --kind K\n"
    "                            [--threshold PCT]... [--velocity N] [--rate PCT] [--window S]\n"
    "                            [--min-requests N] [--action notify|pause_key] [--webhook URL]...\n"
    "                            [--name N] [--file rule.json]   (prints the webhook secret once)\n"
    "         kinds: spend_threshold (--threshold 50 --threshold 80 ...), token_velocity and\n"
    "         spend_velocity (--velocity per minute), channel_error_rate and fallback_rate\n"
    "         (--rate PCT), failed_with_usage\n"
    "       tollctl alert get ID | list [--account ACC] | delete ID\n"
    "       tollctl alert update ID [--threshold P]... [--webhook URL]... [--disable|--enable]\n" CONN};

int cmd_account(int argc, char **argv) { return run_obj(&ACCOUNT, argc, argv); }
int cmd_project(int argc, char **argv) { return run_obj(&PROJECT, argc, argv); }
int cmd_key(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "limits") == 0)
        return cmd_key_limits(argc, argv);
    return run_obj(&KEY, argc, argv);
}
int cmd_channel(int argc, char **argv) { return run_obj(&CHANNEL, argc, argv); }
int cmd_route(int argc, char **argv) { return run_obj(&ROUTE, argc, argv); }
int cmd_alert(int argc, char **argv) { return run_obj(&ALERT, argc, argv); }

/* `tollctl help <command>` */
void usage_account(void) { fputs(ACCOUNT.oc_usage, stdout); }
void usage_project(void) { fputs(PROJECT.oc_usage, stdout); }
void usage_key(void) { fputs(KEY.oc_usage, stdout); }
void usage_channel(void) { fputs(CHANNEL.oc_usage, stdout); }
void usage_route(void) { fputs(ROUTE.oc_usage, stdout); }
void usage_alert(void) { fputs(ALERT.oc_usage, stdout); }
