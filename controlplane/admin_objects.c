/* admin_objects.c: AdminService's configuration objects: accounts (with
 * their balance records), projects, API keys, channels, model routes, run
 * budgets, the gateway policy and alert rules. Each write validates its input (naming the
 * field), checks references and name uniqueness with compares inside the
 * same store transaction as the change and its audit event, so a concurrent
 * delete or duplicate cannot slip between the check and the write. Updates
 * merge the fields named by update_mask (through the JSON mapping, which
 * handles every field type alike) and honour expected_revision. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/admin_int.h"
#include "pbjson/tg_pbjson.h"

#define MSG(x) ((ProtobufCMessage *)(x))

/* ---- object types -------------------------------------------------------------- */

typedef struct objtype {
    const char *ot_name;    /* "account": audit object type, messages */
    const char *ot_prefix;  /* store prefix */
    const ProtobufCMessageDescriptor *ot_desc;
    const char *ot_id;      /* id field name */
    const char *const *ot_immutable; /* fields an update may not change */
    const char *ot_unmasked_skip;    /* field an empty mask leaves alone */
    void (*ot_fix)(ProtobufCMessage *m); /* redaction on reads */
} objtype_t;

static void fix_channel(ProtobufCMessage *m)
{
    Tollgate__V1__Channel *c = (Tollgate__V1__Channel *)m;
    c->has_credential = c->credential[0] != '\0' || c->credential_ref[0] != '\0';
    if (c->credential[0]) tg_cp_pb_set_str(&c->credential, "");
}

static void fix_key(ProtobufCMessage *m)
{
    Tollgate__V1__ApiKey *k = (Tollgate__V1__ApiKey *)m;
    /* the hash of a 256-bit secret reveals nothing, but admin reads have no
     * use for it: only agents (snapshots) get it */
    tg_free(k->secret_sha256.data);
    k->secret_sha256.data = NULL;
    k->secret_sha256.len = 0;
}

static const char *const imm_account[] = {"id", "created_at_us", "updated_at_us", "revision", NULL};
static const char *const imm_project[] = {"id", "account_id", "created_at_us", "updated_at_us",
                                          "revision", NULL};
static const char *const imm_key[] = {"id", "account_id", "secret_sha256", "display_prefix",
                                      "status", "status_reason", "created_at_us", "updated_at_us",
                                      "revision", NULL};
static const char *const imm_channel[] = {"id", "has_credential", "created_at_us", "updated_at_us",
                                          "revision", NULL};

static const objtype_t T_ACCOUNT = {"account", TG_CP_K_ACCOUNT, &tollgate__v1__account__descriptor,
                                    "id", imm_account, NULL, NULL};
static const objtype_t T_PROJECT = {"project", TG_CP_K_PROJECT, &tollgate__v1__project__descriptor,
                                    "id", imm_project, NULL, NULL};
static const objtype_t T_KEY = {"key", TG_CP_K_KEY, &tollgate__v1__api_key__descriptor, "id",
                                imm_key, NULL, fix_key};
static const objtype_t T_CHANNEL = {"channel", TG_CP_K_CHANNEL, &tollgate__v1__channel__descriptor,
                                    "id", imm_channel, "credential", fix_channel};
static const objtype_t T_ROUTE = {"route", TG_CP_K_ROUTE, &tollgate__v1__model_route__descriptor,
                                  "model", NULL, NULL, NULL};
static void fix_rule(ProtobufCMessage *m)
{
    /* the signing secret is shown once, by CreateAlertRule */
    tg_cp_pb_set_str(&((Tollgate__V1__AlertRule *)m)->webhook_secret, "");
}

static const char *const imm_rule[] = {"id", "account_id", "webhook_secret", "created_at_us",
                                       "updated_at_us", "revision", NULL};
static const objtype_t T_RULE = {"alert_rule", TG_CP_K_ALERT_RULE,
                                 &tollgate__v1__alert_rule__descriptor, "id", imm_rule, NULL,
                                 fix_rule};
static const objtype_t T_RUN = {"run_budget", TG_CP_K_RUN, &tollgate__v1__run_budget__descriptor,
                                "run_id", NULL, NULL, NULL};

static const char *str_field(const ProtobufCMessage *m, const char *name)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
    return f ? *(char *const *)((const char *)m + f->offset) : "";
}

static int in_list(const char *const *l, const char *s)
{
    for (; l && *l; l++)
        if (strcmp(*l, s) == 0) return 1;
    return 0;
}

static char *okey(cp_actx_t *a, const objtype_t *t, const char *id)
{
    return cp_fmt(a, "%s%s", t->ot_prefix, id);
}

static int new_id(cp_actx_t *a, const char *prefix, char *out, size_t outlen)
{
    if (tg_crypto_new_id(prefix, out, outlen) != 0)
        return cp_fail(a, TG_RPC_CODE_INTERNAL, "cannot make an id: no randomness");
    return TG_RPC_CODE_OK;
}

/* Reads the object id of type t: OK with *out, or NOT_FOUND/other failure. */
static int load(cp_actx_t *a, const objtype_t *t, const char *id, ProtobufCMessage **out,
                int64_t *rev)
{
    int code = TG_RPC_CODE_OK, rc;
    if (!id || !id[0]) return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "id: required");
    if (strlen(id) > 512) return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "id: too long");
    rc = cp_read(a, okey(a, t, id), t->ot_desc, out, rev, &code);
    if (rc < 0) return code;
    if (rc == 1) return cp_fail(a, TG_RPC_CODE_NOT_FOUND, "%s '%s' not found", t->ot_name, id);
    tg_cp_pb_set_i64(*out, "revision", *rev);
    return TG_RPC_CODE_OK;
}

/* The reply for a read or write of one object: redacted copy of m. */
static int reply_obj(cp_actx_t *a, const objtype_t *t, ProtobufCMessage *m, tg_buf_t *reply)
{
    if (t->ot_fix) t->ot_fix(m);
    return cp_reply(a, m, reply);
}

/* Makes `m` (any allocator) into a tg_rpc_pb_unpack'ed copy. */
static int renormalize(cp_actx_t *a, ProtobufCMessage *m, ProtobufCMessage **out)
{
    tg_buf_t b;
    char err[TG_ERRLEN] = "";
    int rc;
    tg_buf_init(&b, TG_STORE_MAX_VALUE);
    rc = tg_rpc_pb_pack(m, &b, err, sizeof err);
    if (rc == 0) rc = tg_rpc_pb_unpack(m->descriptor, b.b_data, b.b_len, out, err, sizeof err);
    tg_buf_free(&b);
    if (rc != 0) return cp_fail(a, TG_RPC_CODE_INTERNAL, "%s", err);
    return TG_RPC_CODE_OK;
}

/* cur with the fields named by mask taken from upd (all writable fields
 * when the mask is empty), into *out (tg_rpc_pb_free). */
static int merge(cp_actx_t *a, const objtype_t *t, const ProtobufCMessage *cur,
                 const ProtobufCMessage *upd, char **mask, size_t nmask, ProtobufCMessage **out)
{
    tg_pbjson_opts_t o = {TG_PBJSON_DEFAULTS, NULL};
    json_t *cj = tg_pbjson_to_json(cur, &o), *uj = tg_pbjson_to_json(upd, &o);
    ProtobufCMessage *m = NULL;
    char err[TG_ERRLEN] = "";
    int code = TG_RPC_CODE_OK;
    const ProtobufCMessageDescriptor *d = t->ot_desc;

    *out = NULL;
    if (!cj || !uj) {
        code = cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < (nmask ? nmask : d->n_fields); i++) {
        const char *name = nmask ? mask[i] : d->fields[i].name;
        json_t *v;
        if (nmask) {
            if (!protobuf_c_message_descriptor_get_field_by_name(d, name)) {
                code = cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT,
                               "update_mask[%zu]: no field '%s' in %s", i, name, t->ot_name);
                goto done;
            }
            if (in_list(t->ot_immutable, name)) {
                code = cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT,
                               "update_mask[%zu]: '%s' cannot be changed", i, name);
                goto done;
            }
        } else if (in_list(t->ot_immutable, name) ||
                   (t->ot_unmasked_skip && strcmp(name, t->ot_unmasked_skip) == 0) ||
                   strcmp(name, t->ot_id) == 0) {
            continue;
        }
        v = json_object_get(uj, name);
        if (v) json_object_set(cj, name, v);
        else json_object_del(cj, name);
    }
    if (tg_pbjson_from_json(d, cj, &m, err, sizeof err) != 0) {
        code = cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "%s: %s", t->ot_name, err);
        goto done;
    }
    code = renormalize(a, m, out);
    protobuf_c_message_free_unpacked(m, NULL);
done:
    json_decref(cj);
    json_decref(uj);
    return code;
}

/* Fails with INVALID_ARGUMENT "<what>: <reason>" from a validator. */
static int invalid(cp_actx_t *a, const char *err)
{
    return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "%s", err);
}

/* "must exist" compare on another object: INVALID_ARGUMENT naming field. */
static void must_exist(cp_actx_t *a, cp_wr_t *w, const char *key, const char *field,
                       const char *what, const char *id)
{
    cp_wr_cmp(w, key, TG_STORE_CMP_VERSION, TG_STORE_GT, 0, TG_RPC_CODE_INVALID_ARGUMENT,
              cp_fmt(a, "%s: no %s '%s'", field, what, id));
}

static int exists(cp_actx_t *a, const char *key, int *code)
{
    tg_store_kv_t *kv = NULL;
    char err[TG_ERRLEN] = "";
    int rc = tg_store_get(a->ax_cp->cp_store, key, strlen(key), &kv, NULL, err, sizeof err);
    if (rc != 0) {
        *code = cp_fail(a, tg_cp_store_code(rc), "store: %s", err);
        return -1;
    }
    rc = kv != NULL;
    tg_store_kv_free(kv);
    return rc;
}

/* ---- generic get / update / delete ----------------------------------------------- */

static int do_get(cp_actx_t *a, const objtype_t *t, const char *id, tg_buf_t *reply)
{
    ProtobufCMessage *m = NULL;
    int64_t rev;
    int code = load(a, t, id, &m, &rev);
    if (code == TG_RPC_CODE_OK) code = reply_obj(a, t, m, reply);
    tg_rpc_pb_free(m);
    return code;
}

/* Type-specific part of an update: validate nu, add compares and ops. */
typedef int (*upd_hook)(cp_actx_t *a, cp_wr_t *w, ProtobufCMessage *cur, ProtobufCMessage *nu);

static int stale(cp_actx_t *a, const objtype_t *t, const char *id, int64_t expected, int64_t rev)
{
    return cp_fail(a, TG_RPC_CODE_FAILED_PRECONDITION,
                   "%s '%s' is at revision %lld, not the expected %lld: re-read it and retry",
                   t->ot_name, id, (long long)rev, (long long)expected);
}

static int do_update(cp_actx_t *a, const objtype_t *t, const ProtobufCMessage *upd, char **mask,
                     size_t nmask, int64_t expected, upd_hook hook, tg_buf_t *reply)
{
    ProtobufCMessage *cur = NULL, *nu = NULL;
    int64_t rev = 0, nrev = 0;
    const char *id;
    cp_wr_t w;
    int code;

    if (!upd) return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "%s: required", t->ot_name);
    id = str_field(upd, t->ot_id);
    if ((code = load(a, t, id, &cur, &rev)) != TG_RPC_CODE_OK) goto done;
    if (expected && expected != rev) {
        code = stale(a, t, id, expected, rev);
        goto done;
    }
    if ((code = merge(a, t, cur, upd, mask, nmask, &nu)) != TG_RPC_CODE_OK) goto done;
    tg_cp_pb_set_i64(nu, "updated_at_us", tg_cp_now_us());
    tg_cp_pb_set_i64(nu, "revision", 0);
    cp_wr_init(&w, a->ax_pool);
    if ((code = hook(a, &w, cur, nu)) != TG_RPC_CODE_OK) goto done;
    cp_wr_cmp(&w, okey(a, t, id), TG_STORE_CMP_MOD_REV, TG_STORE_EQ, rev,
              TG_RPC_CODE_FAILED_PRECONDITION,
              cp_fmt(a, "%s '%s' changed while this update ran: re-read it and retry", t->ot_name,
                     id));
    if (cp_wr_put_pb(&w, okey(a, t, id), nu) != 0) {
        code = cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "%s: too large", t->ot_name);
        goto done;
    }
    {
        /* audit the redacted views (secrets never reach the log) */
        cp_wr_audit(&w, t->ot_name, id, cur, nu);
    }
    if ((code = cp_wr_commit(a, &w, &nrev)) != TG_RPC_CODE_OK) goto done;
    tg_cp_pb_set_i64(nu, "revision", nrev);
    code = reply_obj(a, t, nu, reply);
done:
    tg_rpc_pb_free(cur);
    tg_rpc_pb_free(nu);
    return code;
}

typedef int (*del_hook)(cp_actx_t *a, cp_wr_t *w, ProtobufCMessage *cur);

static int do_delete(cp_actx_t *a, const objtype_t *t, const Tollgate__V1__DeleteRequest *q,
                     del_hook hook, tg_buf_t *reply)
{
    ProtobufCMessage *cur = NULL;
    Tollgate__V1__DeleteResponse r = TOLLGATE__V1__DELETE_RESPONSE__INIT;
    int64_t rev = 0;
    cp_wr_t w;
    int code;
    if ((code = load(a, t, q->id, &cur, &rev)) != TG_RPC_CODE_OK) goto done;
    if (q->expected_revision && q->expected_revision != rev) {
        code = stale(a, t, q->id, q->expected_revision, rev);
        goto done;
    }
    cp_wr_init(&w, a->ax_pool);
    if (hook && (code = hook(a, &w, cur)) != TG_RPC_CODE_OK) goto done;
    cp_wr_cmp(&w, okey(a, t, q->id), TG_STORE_CMP_MOD_REV, TG_STORE_EQ, rev,
              TG_RPC_CODE_FAILED_PRECONDITION,
              cp_fmt(a, "%s '%s' changed while this delete ran: re-read it and retry", t->ot_name,
                     q->id));
    cp_wr_del(&w, okey(a, t, q->id), 0);
    cp_wr_audit(&w, t->ot_name, q->id, cur, NULL);
    if ((code = cp_wr_commit(a, &w, &r.revision)) != TG_RPC_CODE_OK) goto done;
    r.deleted = 1;
    code = cp_reply(a, &r.base, reply);
done:
    tg_rpc_pb_free(cur);
    return code;
}

/* Counts objects under prefix whose string field `field` equals v; first
 * gets the first one's id. Returns the count, or -1 (the call failed, its
 * status in *code). */
typedef struct ref_walk {
    const ProtobufCMessageDescriptor *rw_d;
    const char *rw_field, *rw_value;
    char *rw_first;
    size_t rw_firstlen;
    int rw_found;
} ref_walk_t;

static int ref_step(cp_actx_t *a, const tg_store_kv_t *kv, const char *suffix, size_t len, void *arg)
{
    ref_walk_t *w = arg;
    ProtobufCMessage *m = NULL;
    (void)a;
    (void)suffix;
    (void)len;
    if (tg_rpc_pb_unpack(w->rw_d, kv->kv_val, kv->kv_val_len, &m, NULL, 0) != 0) return CP_SCAN_GO;
    if (strcmp(str_field(m, w->rw_field), w->rw_value) == 0 && !w->rw_found++)
        snprintf(w->rw_first, w->rw_firstlen, "%s", str_field(m, "id"));
    tg_rpc_pb_free(m);
    return CP_SCAN_GO;
}

static int count_refs(cp_actx_t *a, const char *prefix, const ProtobufCMessageDescriptor *d,
                      const char *field, const char *v, char *first, size_t firstlen, int *code)
{
    ref_walk_t w = {d, field, v, first, firstlen, 0};
    *code = cp_scan(a, prefix, NULL, 0, 0, ref_step, &w);
    return *code == TG_RPC_CODE_OK ? w.rw_found : -1;
}

/* ---- accounts ---------------------------------------------------------------------- */

static void account_defaults(Tollgate__V1__Account *ac)
{
    if (!ac->billing_mode) ac->billing_mode = TOLLGATE__V1__BILLING_MODE__BILLING_MODE_PREPAID;
    if (!ac->status) ac->status = TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_ACTIVE;
}

static void put_balance(cp_actx_t *a, cp_wr_t *w, const char *acc, const Tollgate__V1__BucketSpec *b,
                        int64_t balance, int64_t reserved)
{
    Tollgate__V1__Balance bal = TOLLGATE__V1__BALANCE__INIT;
    bal.account_id = (char *)acc;
    bal.bucket = b->name;
    bal.currency = b->currency;
    bal.balance_nano = balance;
    bal.reserved_nano = reserved;
    bal.credit_limit_nano = b->credit_limit_nano;
    bal.updated_at_us = tg_cp_now_us();
    cp_wr_put_pb(w, cp_fmt(a, "%s%s/%s", TG_CP_K_BALANCE, acc, b->name), &bal.base);
}

static int create_account(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__CreateAccountRequest *q = (const Tollgate__V1__CreateAccountRequest *)reqm;
    Tollgate__V1__Account *ac = q->account;
    char id[48], err[TG_ERRLEN] = "";
    int64_t now = tg_cp_now_us(), rev;
    cp_wr_t w;
    int code;
    if (!ac) return invalid(a, "account: required");
    if ((code = new_id(a, "acc_", id, sizeof id)) != TG_RPC_CODE_OK) return code;
    if (tg_cp_pb_set_str(&ac->id, id) != 0) return cp_fail(a, TG_RPC_CODE_INTERNAL, "no memory");
    ac->created_at_us = ac->updated_at_us = now;
    ac->revision = 0;
    account_defaults(ac);
    if (tg_cp_validate_account(ac, err, sizeof err) != 0) return invalid(a, err);
    cp_wr_init(&w, a->ax_pool);
    cp_wr_cmp(&w, cp_fmt(a, "%saccount/%s", TG_CP_K_NAME, ac->name), TG_STORE_CMP_VERSION,
              TG_STORE_EQ, 0, TG_RPC_CODE_ALREADY_EXISTS,
              cp_fmt(a, "account.name: an account named '%s' already exists", ac->name));
    cp_wr_put_pb(&w, okey(a, &T_ACCOUNT, id), &ac->base);
    cp_wr_put(&w, cp_fmt(a, "%saccount/%s", TG_CP_K_NAME, ac->name), id, strlen(id));
    for (size_t i = 0; i < ac->n_buckets; i++) put_balance(a, &w, id, ac->buckets[i], 0, 0);
    cp_wr_audit(&w, "account", id, NULL, &ac->base);
    if ((code = cp_wr_commit(a, &w, &rev)) != TG_RPC_CODE_OK) return code;
    ac->revision = rev;
    return cp_reply(a, &ac->base, reply);
}

static const Tollgate__V1__BucketSpec *find_bucket(const Tollgate__V1__Account *ac, const char *n)
{
    for (size_t i = 0; i < ac->n_buckets; i++)
        if (strcmp(ac->buckets[i]->name, n) == 0) return ac->buckets[i];
    return NULL;
}

static int account_hook(cp_actx_t *a, cp_wr_t *w, ProtobufCMessage *curm, ProtobufCMessage *num)
{
    Tollgate__V1__Account *cur = (Tollgate__V1__Account *)curm, *nu = (Tollgate__V1__Account *)num;
    char err[TG_ERRLEN] = "";
    int code = TG_RPC_CODE_OK;
    account_defaults(nu);
    if (tg_cp_validate_account(nu, err, sizeof err) != 0) return invalid(a, err);
    if (nu->billing_mode != cur->billing_mode)
        return invalid(a, "account.billing_mode: cannot change once the account exists");
    for (size_t i = 0; i < cur->n_buckets; i++)
        if (!find_bucket(nu, cur->buckets[i]->name))
            return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT,
                           "account.buckets: bucket '%s' cannot be removed (it has a balance "
                           "record and ledger history)",
                           cur->buckets[i]->name);
    for (size_t i = 0; i < nu->n_buckets; i++) {
        const Tollgate__V1__BucketSpec *b = nu->buckets[i], *old = find_bucket(cur, b->name);
        const char *bkey = cp_fmt(a, "%s%s/%s", TG_CP_K_BALANCE, nu->id, b->name);
        if (!old) {
            cp_wr_cmp(w, bkey, TG_STORE_CMP_VERSION, TG_STORE_EQ, 0, TG_RPC_CODE_ABORTED,
                      "a balance appeared for a new bucket: retry");
            put_balance(a, w, nu->id, b, 0, 0);
        } else if (strcmp(old->currency, b->currency) != 0) {
            return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT,
                           "account.buckets[%zu].currency: cannot change from %s to %s", i,
                           old->currency, b->currency);
        } else if (old->credit_limit_nano != b->credit_limit_nano) {
            /* the Balance keeps a copy of the limit for settlement */
            ProtobufCMessage *bm = NULL;
            int64_t brev;
            int rc = cp_read(a, bkey, &tollgate__v1__balance__descriptor, &bm, &brev, &code);
            if (rc < 0) return code;
            if (rc == 0) {
                Tollgate__V1__Balance *bal = (Tollgate__V1__Balance *)bm;
                cp_wr_cmp(w, bkey, TG_STORE_CMP_MOD_REV, TG_STORE_EQ, brev, TG_RPC_CODE_ABORTED,
                          "the balance moved while the credit limit changed: retry");
                put_balance(a, w, nu->id, b, bal->balance_nano, bal->reserved_nano);
                tg_rpc_pb_free(bm);
            } else {
                put_balance(a, w, nu->id, b, 0, 0);
            }
        }
    }
    if (strcmp(cur->name, nu->name) != 0) {
        const char *nk = cp_fmt(a, "%saccount/%s", TG_CP_K_NAME, nu->name);
        cp_wr_cmp(w, nk, TG_STORE_CMP_VERSION, TG_STORE_EQ, 0, TG_RPC_CODE_ALREADY_EXISTS,
                  cp_fmt(a, "account.name: an account named '%s' already exists", nu->name));
        cp_wr_del(w, cp_fmt(a, "%saccount/%s", TG_CP_K_NAME, cur->name), 0);
        cp_wr_put(w, nk, nu->id, strlen(nu->id));
    }
    return TG_RPC_CODE_OK;
}

static int update_account(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__UpdateAccountRequest *q = (const Tollgate__V1__UpdateAccountRequest *)reqm;
    return do_update(a, &T_ACCOUNT, MSG(q->account), q->update_mask, q->n_update_mask,
                     q->expected_revision, account_hook, reply);
}

static int account_del_hook(cp_actx_t *a, cp_wr_t *w, ProtobufCMessage *curm)
{
    Tollgate__V1__Account *cur = (Tollgate__V1__Account *)curm;
    char first[128] = "";
    int code = TG_RPC_CODE_OK, n;
    n = count_refs(a, TG_CP_K_PROJECT, &tollgate__v1__project__descriptor, "account_id", cur->id,
                   first, sizeof first, &code);
    if (n < 0) return code;
    if (n > 0)
        return cp_fail(a, TG_RPC_CODE_FAILED_PRECONDITION,
                       "account '%s' still has %d project(s) (e.g. '%s'): delete them first",
                       cur->id, n, first);
    n = count_refs(a, TG_CP_K_KEY, &tollgate__v1__api_key__descriptor, "account_id", cur->id, first,
                   sizeof first, &code);
    if (n < 0) return code;
    if (n > 0)
        return cp_fail(a, TG_RPC_CODE_FAILED_PRECONDITION,
                       "account '%s' still has %d key(s) (e.g. '%s'): delete them first", cur->id,
                       n, first);
    for (size_t i = 0; i < cur->n_buckets; i++) {
        const char *bkey = cp_fmt(a, "%s%s/%s", TG_CP_K_BALANCE, cur->id, cur->buckets[i]->name);
        ProtobufCMessage *bm = NULL;
        int64_t brev;
        int rc = cp_read(a, bkey, &tollgate__v1__balance__descriptor, &bm, &brev, &code);
        if (rc < 0) return code;
        if (rc == 0) {
            Tollgate__V1__Balance *bal = (Tollgate__V1__Balance *)bm;
            int64_t v = bal->balance_nano, r = bal->reserved_nano;
            tg_rpc_pb_free(bm);
            if (v != 0 || r != 0)
                return cp_fail(a, TG_RPC_CODE_FAILED_PRECONDITION,
                               "account '%s': bucket '%s' holds %lld nano (%lld reserved): "
                               "bring it to zero with an adjustment first",
                               cur->id, cur->buckets[i]->name, (long long)v, (long long)r);
            cp_wr_cmp(w, bkey, TG_STORE_CMP_MOD_REV, TG_STORE_EQ, brev, TG_RPC_CODE_ABORTED,
                      "a balance moved while the account was being deleted: retry");
        }
    }
    cp_wr_del(w, cp_fmt(a, "%s%s/", TG_CP_K_BALANCE, cur->id), 1);
    cp_wr_del(w, cp_fmt(a, "%saccount/%s", TG_CP_K_NAME, cur->name), 0);
    return TG_RPC_CODE_OK;
}

/* ---- projects ---------------------------------------------------------------------- */

static int create_project(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__CreateProjectRequest *q = (const Tollgate__V1__CreateProjectRequest *)reqm;
    Tollgate__V1__Project *p = q->project;
    char id[48], err[TG_ERRLEN] = "";
    int64_t rev;
    cp_wr_t w;
    int code;
    if (!p) return invalid(a, "project: required");
    if (tg_cp_validate_project(p, err, sizeof err) != 0) return invalid(a, err);
    if ((code = new_id(a, "prj_", id, sizeof id)) != TG_RPC_CODE_OK) return code;
    if (tg_cp_pb_set_str(&p->id, id) != 0) return cp_fail(a, TG_RPC_CODE_INTERNAL, "no memory");
    p->created_at_us = p->updated_at_us = tg_cp_now_us();
    p->revision = 0;
    if (!p->status) p->status = TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_ACTIVE;
    cp_wr_init(&w, a->ax_pool);
    must_exist(a, &w, okey(a, &T_ACCOUNT, p->account_id), "project.account_id", "account",
               p->account_id);
    cp_wr_cmp(&w, cp_fmt(a, "%sproject/%s/%s", TG_CP_K_NAME, p->account_id, p->name),
              TG_STORE_CMP_VERSION, TG_STORE_EQ, 0, TG_RPC_CODE_ALREADY_EXISTS,
              cp_fmt(a, "project.name: account '%s' already has a project named '%s'",
                     p->account_id, p->name));
    cp_wr_put_pb(&w, okey(a, &T_PROJECT, id), &p->base);
    cp_wr_put(&w, cp_fmt(a, "%sproject/%s/%s", TG_CP_K_NAME, p->account_id, p->name), id,
              strlen(id));
    cp_wr_audit(&w, "project", id, NULL, &p->base);
    if ((code = cp_wr_commit(a, &w, &rev)) != TG_RPC_CODE_OK) return code;
    p->revision = rev;
    return cp_reply(a, &p->base, reply);
}

static int project_hook(cp_actx_t *a, cp_wr_t *w, ProtobufCMessage *curm, ProtobufCMessage *num)
{
    Tollgate__V1__Project *cur = (Tollgate__V1__Project *)curm, *nu = (Tollgate__V1__Project *)num;
    char err[TG_ERRLEN] = "";
    if (tg_cp_validate_project(nu, err, sizeof err) != 0) return invalid(a, err);
    if (strcmp(cur->name, nu->name) != 0) {
        const char *nk = cp_fmt(a, "%sproject/%s/%s", TG_CP_K_NAME, nu->account_id, nu->name);
        cp_wr_cmp(w, nk, TG_STORE_CMP_VERSION, TG_STORE_EQ, 0, TG_RPC_CODE_ALREADY_EXISTS,
                  cp_fmt(a, "project.name: account '%s' already has a project named '%s'",
                         nu->account_id, nu->name));
        cp_wr_del(w, cp_fmt(a, "%sproject/%s/%s", TG_CP_K_NAME, cur->account_id, cur->name), 0);
        cp_wr_put(w, nk, nu->id, strlen(nu->id));
    }
    return TG_RPC_CODE_OK;
}

static int update_project(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__UpdateProjectRequest *q = (const Tollgate__V1__UpdateProjectRequest *)reqm;
    return do_update(a, &T_PROJECT, MSG(q->project), q->update_mask, q->n_update_mask,
                     q->expected_revision, project_hook, reply);
}

static int project_del_hook(cp_actx_t *a, cp_wr_t *w, ProtobufCMessage *curm)
{
    Tollgate__V1__Project *cur = (Tollgate__V1__Project *)curm;
    char first[128] = "";
    int code = TG_RPC_CODE_OK;
    int n = count_refs(a, TG_CP_K_KEY, &tollgate__v1__api_key__descriptor, "project_id", cur->id,
                       first, sizeof first, &code);
    if (n < 0) return code;
    if (n > 0)
        return cp_fail(a, TG_RPC_CODE_FAILED_PRECONDITION,
                       "project '%s' still has %d key(s) (e.g. '%s'): delete them first", cur->id,
                       n, first);
    cp_wr_del(w, cp_fmt(a, "%sproject/%s/%s", TG_CP_K_NAME, cur->account_id, cur->name), 0);
    return TG_RPC_CODE_OK;
}

/* ---- keys ------------------------------------------------------------------------------ */

/* A key's project must exist and belong to the key's account. */
static int check_key_project(cp_actx_t *a, cp_wr_t *w, const Tollgate__V1__ApiKey *k)
{
    ProtobufCMessage *pm = NULL;
    int64_t prev;
    int code = TG_RPC_CODE_OK, rc;
    if (!k->project_id[0]) return TG_RPC_CODE_OK;
    rc = cp_read(a, okey(a, &T_PROJECT, k->project_id), &tollgate__v1__project__descriptor, &pm,
                 &prev, &code);
    if (rc < 0) return code;
    if (rc == 1) return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "key.project_id: no project '%s'",
                                k->project_id);
    if (strcmp(((Tollgate__V1__Project *)pm)->account_id, k->account_id) != 0)
        code = cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT,
                       "key.project_id: project '%s' belongs to account '%s', not '%s'",
                       k->project_id, ((Tollgate__V1__Project *)pm)->account_id, k->account_id);
    tg_rpc_pb_free(pm);
    if (code == TG_RPC_CODE_OK)
        must_exist(a, w, okey(a, &T_PROJECT, k->project_id), "key.project_id", "project",
                   k->project_id);
    return code;
}

static int create_key(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__CreateKeyRequest *q = (const Tollgate__V1__CreateKeyRequest *)reqm;
    Tollgate__V1__ApiKey *k = q->key;
    Tollgate__V1__CreateKeyResponse r = TOLLGATE__V1__CREATE_KEY_RESPONSE__INIT;
    char id[48], secret[96], hex[65], prefix[16], err[TG_ERRLEN] = "";
    uint8_t *h;
    int64_t rev;
    cp_wr_t w;
    int code;
    if (!k) return invalid(a, "key: required");
    if (tg_cp_validate_key(k, err, sizeof err) != 0) return invalid(a, err);
    if ((code = new_id(a, "key_", id, sizeof id)) != TG_RPC_CODE_OK) return code;
    if (tg_crypto_new_secret("tg-", secret, sizeof secret) != 0)
        return cp_fail(a, TG_RPC_CODE_INTERNAL, "cannot make a secret: no randomness");
    h = tg_malloc(32);
    if (!h) return cp_fail(a, TG_RPC_CODE_INTERNAL, "no memory");
    tg_crypto_sha256(secret, strlen(secret), h);
    tg_crypto_hex(h, 32, hex);
    tg_free(k->secret_sha256.data);
    k->secret_sha256.data = h;
    k->secret_sha256.len = 32;
    snprintf(prefix, sizeof prefix, "%.12s", secret); /* "tg-" + 9 characters */
    if (tg_cp_pb_set_str(&k->id, id) != 0 || tg_cp_pb_set_str(&k->display_prefix, prefix) != 0 ||
        tg_cp_pb_set_str(&k->status_reason, "") != 0)
        return cp_fail(a, TG_RPC_CODE_INTERNAL, "no memory");
    k->status = TOLLGATE__V1__KEY_STATUS__KEY_STATUS_ACTIVE;
    k->created_at_us = k->updated_at_us = tg_cp_now_us();
    k->revision = 0;
    cp_wr_init(&w, a->ax_pool);
    must_exist(a, &w, okey(a, &T_ACCOUNT, k->account_id), "key.account_id", "account",
               k->account_id);
    if ((code = check_key_project(a, &w, k)) != TG_RPC_CODE_OK) return code;
    cp_wr_cmp(&w, cp_fmt(a, "%s%s", TG_CP_K_KEYHASH, hex), TG_STORE_CMP_VERSION, TG_STORE_EQ, 0,
              TG_RPC_CODE_ABORTED, "secret collision (astronomically unlikely): retry");
    cp_wr_put_pb(&w, okey(a, &T_KEY, id), &k->base);
    cp_wr_put(&w, cp_fmt(a, "%s%s", TG_CP_K_KEYHASH, hex), id, strlen(id));
    cp_wr_audit(&w, "key", id, NULL, &k->base);
    code = cp_wr_commit(a, &w, &rev);
    if (code == TG_RPC_CODE_OK) {
        k->revision = rev;
        fix_key(&k->base);
        r.key = k;
        r.secret = secret;
        code = cp_reply(a, &r.base, reply);
    }
    memset(secret, 0, sizeof secret);
    return code;
}

static int key_hook(cp_actx_t *a, cp_wr_t *w, ProtobufCMessage *curm, ProtobufCMessage *num)
{
    Tollgate__V1__ApiKey *nu = (Tollgate__V1__ApiKey *)num;
    char err[TG_ERRLEN] = "";
    (void)curm;
    if (tg_cp_validate_key(nu, err, sizeof err) != 0) return invalid(a, err);
    return check_key_project(a, w, nu);
}

static int update_key(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__UpdateKeyRequest *q = (const Tollgate__V1__UpdateKeyRequest *)reqm;
    return do_update(a, &T_KEY, MSG(q->key), q->update_mask, q->n_update_mask,
                     q->expected_revision, key_hook, reply);
}

static int key_del_hook(cp_actx_t *a, cp_wr_t *w, ProtobufCMessage *curm)
{
    Tollgate__V1__ApiKey *k = (Tollgate__V1__ApiKey *)curm;
    char hex[65];
    if (k->secret_sha256.len == 32) {
        tg_crypto_hex(k->secret_sha256.data, 32, hex);
        cp_wr_del(w, cp_fmt(a, "%s%s", TG_CP_K_KEYHASH, hex), 0);
    }
    return TG_RPC_CODE_OK;
}

static int set_key_status(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__SetKeyStatusRequest *q = (const Tollgate__V1__SetKeyStatusRequest *)reqm;
    ProtobufCMessage *cur = NULL, *nu = NULL;
    Tollgate__V1__ApiKey *k;
    int64_t rev = 0, nrev;
    cp_wr_t w;
    int code;
    if (q->status < TOLLGATE__V1__KEY_STATUS__KEY_STATUS_ACTIVE ||
        q->status > TOLLGATE__V1__KEY_STATUS__KEY_STATUS_REVOKED)
        return invalid(a, "status: must be active, paused or revoked");
    if (strlen(q->reason) > 512) return invalid(a, "reason: at most 512 characters");
    if ((code = load(a, &T_KEY, q->id, &cur, &rev)) != TG_RPC_CODE_OK) goto done;
    if (((Tollgate__V1__ApiKey *)cur)->status == TOLLGATE__V1__KEY_STATUS__KEY_STATUS_REVOKED &&
        q->status != TOLLGATE__V1__KEY_STATUS__KEY_STATUS_REVOKED) {
        code = cp_fail(a, TG_RPC_CODE_FAILED_PRECONDITION,
                       "key '%s' is revoked: revocation is permanent, create a new key", q->id);
        goto done;
    }
    if ((code = renormalize(a, cur, &nu)) != TG_RPC_CODE_OK) goto done;
    k = (Tollgate__V1__ApiKey *)nu;
    k->status = q->status;
    if (tg_cp_pb_set_str(&k->status_reason, q->reason) != 0) {
        code = cp_fail(a, TG_RPC_CODE_INTERNAL, "no memory");
        goto done;
    }
    k->updated_at_us = tg_cp_now_us();
    k->revision = 0;
    cp_wr_init(&w, a->ax_pool);
    cp_wr_cmp(&w, okey(a, &T_KEY, q->id), TG_STORE_CMP_MOD_REV, TG_STORE_EQ, rev,
              TG_RPC_CODE_ABORTED, cp_fmt(a, "key '%s' changed meanwhile: retry", q->id));
    cp_wr_put_pb(&w, okey(a, &T_KEY, q->id), nu);
    cp_wr_audit(&w, "key", q->id, cur, nu);
    if ((code = cp_wr_commit(a, &w, &nrev)) != TG_RPC_CODE_OK) goto done;
    k->revision = nrev;
    code = reply_obj(a, &T_KEY, nu, reply);
done:
    tg_rpc_pb_free(cur);
    tg_rpc_pb_free(nu);
    return code;
}

/* ---- channels ------------------------------------------------------------------------ */

static int create_channel(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__CreateChannelRequest *q = (const Tollgate__V1__CreateChannelRequest *)reqm;
    Tollgate__V1__Channel *c = q->channel;
    char id[48], err[TG_ERRLEN] = "";
    int64_t rev;
    cp_wr_t w;
    int code;
    if (!c) return invalid(a, "channel: required");
    if (!c->status) c->status = TOLLGATE__V1__OBJECT_STATUS__OBJECT_STATUS_ACTIVE;
    if (tg_cp_validate_channel(c, 1, err, sizeof err) != 0) return invalid(a, err);
    if ((code = new_id(a, "ch_", id, sizeof id)) != TG_RPC_CODE_OK) return code;
    if (tg_cp_pb_set_str(&c->id, id) != 0) return cp_fail(a, TG_RPC_CODE_INTERNAL, "no memory");
    c->created_at_us = c->updated_at_us = tg_cp_now_us();
    c->revision = 0;
    c->has_credential = 0;
    cp_wr_init(&w, a->ax_pool);
    cp_wr_cmp(&w, cp_fmt(a, "%schannel/%s", TG_CP_K_NAME, c->name), TG_STORE_CMP_VERSION,
              TG_STORE_EQ, 0, TG_RPC_CODE_ALREADY_EXISTS,
              cp_fmt(a, "channel.name: a channel named '%s' already exists", c->name));
    cp_wr_put_pb(&w, okey(a, &T_CHANNEL, id), &c->base);
    cp_wr_put(&w, cp_fmt(a, "%schannel/%s", TG_CP_K_NAME, c->name), id, strlen(id));
    cp_wr_audit(&w, "channel", id, NULL, &c->base);
    if ((code = cp_wr_commit(a, &w, &rev)) != TG_RPC_CODE_OK) return code;
    c->revision = rev;
    return reply_obj(a, &T_CHANNEL, &c->base, reply);
}

static int channel_hook(cp_actx_t *a, cp_wr_t *w, ProtobufCMessage *curm, ProtobufCMessage *num)
{
    Tollgate__V1__Channel *cur = (Tollgate__V1__Channel *)curm, *nu = (Tollgate__V1__Channel *)num;
    char err[TG_ERRLEN] = "";
    nu->has_credential = 0;
    if (tg_cp_validate_channel(nu, 0, err, sizeof err) != 0) return invalid(a, err);
    if (strcmp(cur->name, nu->name) != 0) {
        const char *nk = cp_fmt(a, "%schannel/%s", TG_CP_K_NAME, nu->name);
        cp_wr_cmp(w, nk, TG_STORE_CMP_VERSION, TG_STORE_EQ, 0, TG_RPC_CODE_ALREADY_EXISTS,
                  cp_fmt(a, "channel.name: a channel named '%s' already exists", nu->name));
        cp_wr_del(w, cp_fmt(a, "%schannel/%s", TG_CP_K_NAME, cur->name), 0);
        cp_wr_put(w, nk, nu->id, strlen(nu->id));
    }
    return TG_RPC_CODE_OK;
}

static int update_channel(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__UpdateChannelRequest *q = (const Tollgate__V1__UpdateChannelRequest *)reqm;
    return do_update(a, &T_CHANNEL, MSG(q->channel), q->update_mask, q->n_update_mask,
                     q->expected_revision, channel_hook, reply);
}

/* Whether any route names channel id; fills the first route's model. */
typedef struct route_walk {
    const char *uw_channel;
    char *uw_model;
    size_t uw_mlen;
} route_walk_t;

static int route_step(cp_actx_t *a, const tg_store_kv_t *kv, const char *suffix, size_t len,
                      void *arg)
{
    route_walk_t *w = arg;
    ProtobufCMessage *m = NULL;
    Tollgate__V1__ModelRoute *r;
    int found = 0;
    (void)a;
    (void)suffix;
    (void)len;
    if (tg_rpc_pb_unpack(&tollgate__v1__model_route__descriptor, kv->kv_val, kv->kv_val_len, &m,
                         NULL, 0) != 0)
        return CP_SCAN_GO;
    r = (Tollgate__V1__ModelRoute *)m;
    for (size_t t = 0; t < r->n_tiers && !found; t++)
        for (size_t j = 0; j < r->tiers[t]->n_targets && !found; j++)
            found = strcmp(r->tiers[t]->targets[j]->channel_id, w->uw_channel) == 0;
    if (found) snprintf(w->uw_model, w->uw_mlen, "%s", r->model);
    tg_rpc_pb_free(m);
    return found ? CP_SCAN_STOP : CP_SCAN_GO;
}

static int channel_in_routes(cp_actx_t *a, const char *id, char *model, size_t mlen, int *code)
{
    route_walk_t w = {id, model, mlen};
    model[0] = '\0';
    *code = cp_scan(a, TG_CP_K_ROUTE, NULL, 0, 0, route_step, &w);
    return *code != TG_RPC_CODE_OK ? -1 : model[0] != '\0';
}

static int channel_del_hook(cp_actx_t *a, cp_wr_t *w, ProtobufCMessage *curm)
{
    Tollgate__V1__Channel *c = (Tollgate__V1__Channel *)curm;
    char model[160] = "";
    int code = TG_RPC_CODE_OK;
    int n = channel_in_routes(a, c->id, model, sizeof model, &code);
    if (n < 0) return code;
    if (n > 0)
        return cp_fail(a, TG_RPC_CODE_FAILED_PRECONDITION,
                       "channel '%s' is used by route '%s': change the route first", c->id, model);
    cp_wr_del(w, cp_fmt(a, "%schannel/%s", TG_CP_K_NAME, c->name), 0);
    return TG_RPC_CODE_OK;
}

/* ---- routes ------------------------------------------------------------------------------ */

static int put_route(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__PutRouteRequest *q = (const Tollgate__V1__PutRouteRequest *)reqm;
    Tollgate__V1__ModelRoute *r = q->route;
    ProtobufCMessage *cur = NULL;
    char err[TG_ERRLEN] = "", **saved_warnings = r ? r->warnings : NULL;
    size_t saved_nwarnings = r ? r->n_warnings : 0;
    const char *warning = NULL;
    int64_t rev = 0, nrev;
    cp_wr_t w;
    int code = TG_RPC_CODE_OK, rc;
    if (!r) return invalid(a, "route: required");
    if (tg_cp_validate_route(r, err, sizeof err) != 0) return invalid(a, err);
    rc = cp_read(a, okey(a, &T_ROUTE, r->model), T_ROUTE.ot_desc, &cur, &rev, &code);
    if (rc < 0) return code;
    if (q->expected_revision && q->expected_revision != rev) {
        code = stale(a, &T_ROUTE, r->model, q->expected_revision, rev);
        goto done;
    }
    cp_wr_init(&w, a->ax_pool);
    for (size_t t = 0; t < r->n_tiers; t++)
        for (size_t i = 0; i < r->tiers[t]->n_targets; i++) {
            const char *ch = r->tiers[t]->targets[i]->channel_id;
            const char *field = cp_fmt(a, "route.tiers[%zu].targets[%zu].channel_id", t, i);
            int e = exists(a, okey(a, &T_CHANNEL, ch), &code);
            if (e < 0) goto done;
            if (!e) {
                code = cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "%s: no channel '%s'", field, ch);
                goto done;
            }
            must_exist(a, &w, okey(a, &T_CHANNEL, ch), field, "channel", ch);
        }
    r->created_at_us = cur ? ((Tollgate__V1__ModelRoute *)cur)->created_at_us : tg_cp_now_us();
    r->updated_at_us = tg_cp_now_us();
    r->revision = 0;
    cp_wr_cmp(&w, okey(a, &T_ROUTE, r->model), TG_STORE_CMP_MOD_REV, TG_STORE_EQ, rev,
              TG_RPC_CODE_FAILED_PRECONDITION,
              cp_fmt(a, "route '%s' changed while this write ran: re-read it and retry", r->model));
    /* warnings are output only: never stored; the request's own are put
     * back before the request is freed */
    saved_warnings = r->warnings;
    saved_nwarnings = r->n_warnings;
    r->warnings = NULL;
    r->n_warnings = 0;
    cp_wr_put_pb(&w, okey(a, &T_ROUTE, r->model), &r->base);
    cp_wr_audit(&w, "route", r->model, cur, &r->base);
    if ((code = cp_wr_commit(a, &w, &nrev)) != TG_RPC_CODE_OK) goto done;
    if ((code = cp_price_route_warning(a, r->model, &warning)) != TG_RPC_CODE_OK) goto done;
    r->revision = nrev;
    r->warnings = (char **)&warning;
    r->n_warnings = warning ? 1 : 0;
    code = cp_reply(a, &r->base, reply);
done:
    r->warnings = saved_warnings;
    r->n_warnings = saved_nwarnings;
    tg_rpc_pb_free(cur);
    return code;
}

/* ---- run budgets and policy ------------------------------------------------------------- */

static int put_run_budget(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__PutRunBudgetRequest *q = (const Tollgate__V1__PutRunBudgetRequest *)reqm;
    Tollgate__V1__RunBudget *b = q->budget;
    ProtobufCMessage *cur = NULL;
    char err[TG_ERRLEN] = "";
    int64_t rev = 0, nrev;
    cp_wr_t w;
    int code = TG_RPC_CODE_OK, rc;
    if (!b) return invalid(a, "budget: required");
    if (tg_cp_validate_run_budget(b, err, sizeof err) != 0) return invalid(a, err);
    rc = cp_read(a, okey(a, &T_RUN, b->run_id), T_RUN.ot_desc, &cur, &rev, &code);
    if (rc < 0) return code;
    b->created_at_us = cur ? ((Tollgate__V1__RunBudget *)cur)->created_at_us : tg_cp_now_us();
    b->revision = 0;
    cp_wr_init(&w, a->ax_pool);
    must_exist(a, &w, okey(a, &T_ACCOUNT, b->account_id), "budget.account_id", "account",
               b->account_id);
    if (b->project_id[0])
        must_exist(a, &w, okey(a, &T_PROJECT, b->project_id), "budget.project_id", "project",
                   b->project_id);
    if (b->key_id[0])
        must_exist(a, &w, okey(a, &T_KEY, b->key_id), "budget.key_id", "key", b->key_id);
    cp_wr_cmp(&w, okey(a, &T_RUN, b->run_id), TG_STORE_CMP_MOD_REV, TG_STORE_EQ, rev,
              TG_RPC_CODE_ABORTED, "the run budget changed meanwhile: retry");
    cp_wr_put_pb(&w, okey(a, &T_RUN, b->run_id), &b->base);
    cp_wr_audit(&w, "run_budget", b->run_id, cur, &b->base);
    if ((code = cp_wr_commit(a, &w, &nrev)) == TG_RPC_CODE_OK) {
        b->revision = nrev;
        code = cp_reply(a, &b->base, reply);
    }
    tg_rpc_pb_free(cur);
    return code;
}

static int get_policy(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    ProtobufCMessage *m = NULL;
    Tollgate__V1__GatewayPolicy empty = TOLLGATE__V1__GATEWAY_POLICY__INIT;
    int64_t rev = 0;
    int code = TG_RPC_CODE_OK, rc;
    (void)reqm;
    rc = cp_read(a, TG_CP_K_POLICY, &tollgate__v1__gateway_policy__descriptor, &m, &rev, &code);
    if (rc < 0) return code;
    if (rc == 1) return cp_reply(a, &empty.base, reply); /* nothing set: agent defaults */
    ((Tollgate__V1__GatewayPolicy *)m)->revision = rev;
    code = cp_reply(a, m, reply);
    tg_rpc_pb_free(m);
    return code;
}

static int put_policy(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__PutPolicyRequest *q = (const Tollgate__V1__PutPolicyRequest *)reqm;
    Tollgate__V1__GatewayPolicy *p = q->policy;
    ProtobufCMessage *cur = NULL;
    char err[TG_ERRLEN] = "";
    int64_t rev = 0, nrev;
    cp_wr_t w;
    int code = TG_RPC_CODE_OK, rc;
    if (!p) return invalid(a, "policy: required");
    if (tg_cp_validate_policy(p, err, sizeof err) != 0) return invalid(a, err);
    rc = cp_read(a, TG_CP_K_POLICY, &tollgate__v1__gateway_policy__descriptor, &cur, &rev, &code);
    if (rc < 0) return code;
    p->revision = 0;
    cp_wr_init(&w, a->ax_pool);
    cp_wr_cmp(&w, TG_CP_K_POLICY, TG_STORE_CMP_MOD_REV, TG_STORE_EQ, rev, TG_RPC_CODE_ABORTED,
              "the policy changed meanwhile: retry");
    cp_wr_put_pb(&w, TG_CP_K_POLICY, &p->base);
    cp_wr_audit(&w, "policy", "policy", cur, &p->base);
    if ((code = cp_wr_commit(a, &w, &nrev)) == TG_RPC_CODE_OK) {
        p->revision = nrev;
        code = cp_reply(a, &p->base, reply);
    }
    tg_rpc_pb_free(cur);
    return code;
}

/* ---- alert rules ------------------------------------------------------------------------ */

/* The rule's scope object must exist (compared in the transaction); its
 * account becomes the rule's owner. A run scope names a run id, which needs
 * no object: its budget's account is taken when one exists. */
static int check_rule_scope(cp_actx_t *a, cp_wr_t *w, Tollgate__V1__AlertRule *r)
{
    static const struct { const char *s, *prefix, *what; const ProtobufCMessageDescriptor *d; } t[] = {
        {"account", TG_CP_K_ACCOUNT, "account", &tollgate__v1__account__descriptor},
        {"project", TG_CP_K_PROJECT, "project", &tollgate__v1__project__descriptor},
        {"key", TG_CP_K_KEY, "key", &tollgate__v1__api_key__descriptor},
        {"channel", TG_CP_K_CHANNEL, "channel", &tollgate__v1__channel__descriptor},
        {"run", TG_CP_K_RUN, "run budget", &tollgate__v1__run_budget__descriptor},
    };
    ProtobufCMessage *m = NULL;
    int64_t rev;
    int code = TG_RPC_CODE_OK, rc;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        const char *key, *acct;
        if (strcmp(t[i].s, r->scope) != 0) continue;
        key = cp_fmt(a, "%s%s", t[i].prefix, r->scope_id);
        rc = cp_read(a, key, t[i].d, &m, &rev, &code);
        if (rc < 0) return code;
        if (rc == 1) {
            if (strcmp(r->scope, "run") == 0) return TG_RPC_CODE_OK;
            return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "rule.scope_id: no %s '%s'", t[i].what,
                           r->scope_id);
        }
        acct = strcmp(r->scope, "account") == 0 ? str_field(m, "id")
               : strcmp(r->scope, "channel") == 0 ? ""
                                                   : str_field(m, "account_id");
        if (tg_cp_pb_set_str(&r->account_id, acct) != 0)
            code = cp_fail(a, TG_RPC_CODE_INTERNAL, "no memory");
        tg_rpc_pb_free(m);
        if (code == TG_RPC_CODE_OK && strcmp(r->scope, "run") != 0)
            must_exist(a, w, key, "rule.scope_id", t[i].what, r->scope_id);
        return code;
    }
    return invalid(a, "rule.scope: unknown scope");
}

/* Delivery state on writes is the server's: a new webhook starts clean, one
 * whose URL was there keeps its state. */
static void rule_webhook_state(Tollgate__V1__AlertRule *nu, const Tollgate__V1__AlertRule *cur)
{
    for (size_t i = 0; i < nu->n_webhooks; i++) {
        Tollgate__V1__Webhook *h = nu->webhooks[i];
        const Tollgate__V1__Webhook *o = NULL;
        for (size_t j = 0; cur && j < cur->n_webhooks && !o; j++)
            if (strcmp(cur->webhooks[j]->url, h->url) == 0) o = cur->webhooks[j];
        h->status = o ? o->status : TOLLGATE__V1__WEBHOOK_STATUS__WEBHOOK_STATUS_UNSPECIFIED;
        h->consecutive_failures = o ? o->consecutive_failures : 0;
        h->last_attempt_at_us = o ? o->last_attempt_at_us : 0;
        h->last_success_at_us = o ? o->last_success_at_us : 0;
        tg_cp_pb_set_str(&h->last_error, o ? o->last_error : "");
    }
}

static int create_alert_rule(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__CreateAlertRuleRequest *q =
        (const Tollgate__V1__CreateAlertRuleRequest *)reqm;
    Tollgate__V1__AlertRule *r = q->rule;
    Tollgate__V1__CreateAlertRuleResponse resp = TOLLGATE__V1__CREATE_ALERT_RULE_RESPONSE__INIT;
    char id[48], secret[96], err[TG_ERRLEN] = "";
    int64_t rev;
    cp_wr_t w;
    int code;
    if (!r) return invalid(a, "rule: required");
    if (tg_cp_validate_alert_rule(r, err, sizeof err) != 0) return invalid(a, err);
    if ((code = new_id(a, "alr_", id, sizeof id)) != TG_RPC_CODE_OK) return code;
    if (tg_crypto_new_secret("whsec_", secret, sizeof secret) != 0)
        return cp_fail(a, TG_RPC_CODE_INTERNAL, "cannot make a secret: no randomness");
    if (tg_cp_pb_set_str(&r->id, id) != 0 || tg_cp_pb_set_str(&r->webhook_secret, secret) != 0)
        return cp_fail(a, TG_RPC_CODE_INTERNAL, "no memory");
    r->created_at_us = r->updated_at_us = tg_cp_now_us();
    r->revision = 0;
    rule_webhook_state(r, NULL);
    cp_wr_init(&w, a->ax_pool);
    if ((code = check_rule_scope(a, &w, r)) != TG_RPC_CODE_OK) goto done;
    cp_wr_put_pb(&w, okey(a, &T_RULE, id), &r->base);
    cp_wr_audit(&w, "alert_rule", id, NULL, &r->base);
    if ((code = cp_wr_commit(a, &w, &rev)) != TG_RPC_CODE_OK) goto done;
    r->revision = rev;
    fix_rule(&r->base);
    resp.rule = r;
    resp.webhook_secret = secret;
    code = cp_reply(a, &resp.base, reply);
done:
    memset(secret, 0, sizeof secret);
    return code;
}

static int rule_hook(cp_actx_t *a, cp_wr_t *w, ProtobufCMessage *curm, ProtobufCMessage *num)
{
    Tollgate__V1__AlertRule *nu = (Tollgate__V1__AlertRule *)num;
    const Tollgate__V1__AlertRule *cur = (const Tollgate__V1__AlertRule *)curm;
    char err[TG_ERRLEN] = "";
    if (tg_cp_validate_alert_rule(nu, err, sizeof err) != 0) return invalid(a, err);
    rule_webhook_state(nu, cur);
    if (strcmp(cur->scope, nu->scope) != 0 || strcmp(cur->scope_id, nu->scope_id) != 0)
        return check_rule_scope(a, w, nu);
    return TG_RPC_CODE_OK;
}

static int update_alert_rule(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__UpdateAlertRuleRequest *q =
        (const Tollgate__V1__UpdateAlertRuleRequest *)reqm;
    return do_update(a, &T_RULE, MSG(q->rule), q->update_mask, q->n_update_mask,
                     q->expected_revision, rule_hook, reply);
}

/* ---- get / list / delete wrappers ----------------------------------------------------- */

#define GETTER(fn, type)                                                                           \
    static int fn(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)                     \
    {                                                                                              \
        return do_get(a, &type, ((const Tollgate__V1__GetRequest *)reqm)->id, reply);              \
    }
GETTER(get_account, T_ACCOUNT)
GETTER(get_project, T_PROJECT)
GETTER(get_key, T_KEY)
GETTER(get_channel, T_CHANNEL)
GETTER(get_route, T_ROUTE)
GETTER(get_run_budget, T_RUN)
GETTER(get_alert_rule, T_RULE)

#define DELETER(fn, type, hook)                                                                    \
    static int fn(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)                     \
    {                                                                                              \
        return do_delete(a, &type, (const Tollgate__V1__DeleteRequest *)reqm, hook, reply);        \
    }
DELETER(delete_account, T_ACCOUNT, account_del_hook)
DELETER(delete_project, T_PROJECT, project_del_hook)
DELETER(delete_key, T_KEY, key_del_hook)
DELETER(delete_channel, T_CHANNEL, channel_del_hook)
DELETER(delete_route, T_ROUTE, NULL)
DELETER(delete_alert_rule, T_RULE, NULL)

/* List filters: account_id and project_id where the object has them. */
static int keep_owner(const ProtobufCMessage *m, const void *arg)
{
    const Tollgate__V1__ListRequest *q = arg;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (q->account_id[0] && protobuf_c_message_descriptor_get_field_by_name(d, "account_id") &&
        strcmp(str_field(m, "account_id"), q->account_id) != 0)
        return 0;
    if (q->project_id[0] && protobuf_c_message_descriptor_get_field_by_name(d, "project_id") &&
        strcmp(str_field(m, "project_id"), q->project_id) != 0)
        return 0;
    return 1;
}

#define LISTER(fn, type, respd)                                                                    \
    static int fn(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)                     \
    {                                                                                              \
        const Tollgate__V1__ListRequest *q = (const Tollgate__V1__ListRequest *)reqm;              \
        return cp_list(a, type.ot_prefix, type.ot_desc, q->page_size, q->page_token, keep_owner,   \
                       q, type.ot_fix, &respd, reply);                                             \
    }
LISTER(list_accounts, T_ACCOUNT, tollgate__v1__list_accounts_response__descriptor)
LISTER(list_projects, T_PROJECT, tollgate__v1__list_projects_response__descriptor)
LISTER(list_keys, T_KEY, tollgate__v1__list_keys_response__descriptor)
LISTER(list_channels, T_CHANNEL, tollgate__v1__list_channels_response__descriptor)
LISTER(list_routes, T_ROUTE, tollgate__v1__list_routes_response__descriptor)
LISTER(list_alert_rules, T_RULE, tollgate__v1__list_alert_rules_response__descriptor)

#define GETQ &tollgate__v1__get_request__descriptor
#define LISTQ &tollgate__v1__list_request__descriptor
#define DELQ &tollgate__v1__delete_request__descriptor

const cp_method_t tg_cp_objects_methods[] = {
    {"CreateAccount", &tollgate__v1__create_account_request__descriptor, CP_NEED_ADMIN,
     "create accounts", create_account, NULL},
    {"GetAccount", GETQ, CP_NEED_READ, "read accounts", get_account, NULL},
    {"ListAccounts", LISTQ, CP_NEED_READ, "list accounts", list_accounts, NULL},
    {"UpdateAccount", &tollgate__v1__update_account_request__descriptor, CP_NEED_ADMIN,
     "update accounts", update_account, NULL},
    {"DeleteAccount", DELQ, CP_NEED_ADMIN, "delete accounts", delete_account, NULL},
    {"CreateProject", &tollgate__v1__create_project_request__descriptor, CP_NEED_ADMIN,
     "create projects", create_project, NULL},
    {"GetProject", GETQ, CP_NEED_READ, "read projects", get_project, NULL},
    {"ListProjects", LISTQ, CP_NEED_READ, "list projects", list_projects, NULL},
    {"UpdateProject", &tollgate__v1__update_project_request__descriptor, CP_NEED_ADMIN,
     "update projects", update_project, NULL},
    {"DeleteProject", DELQ, CP_NEED_ADMIN, "delete projects", delete_project, NULL},
    {"CreateKey", &tollgate__v1__create_key_request__descriptor, CP_NEED_ADMIN, "create keys",
     create_key, NULL},
    {"GetKey", GETQ, CP_NEED_READ, "read keys", get_key, NULL},
    {"ListKeys", LISTQ, CP_NEED_READ, "list keys", list_keys, NULL},
    {"UpdateKey", &tollgate__v1__update_key_request__descriptor, CP_NEED_ADMIN, "update keys",
     update_key, NULL},
    {"DeleteKey", DELQ, CP_NEED_ADMIN, "delete keys", delete_key, NULL},
    {"SetKeyStatus", &tollgate__v1__set_key_status_request__descriptor, CP_NEED_ADMIN,
     "change key status", set_key_status, NULL},
    {"CreateChannel", &tollgate__v1__create_channel_request__descriptor, CP_NEED_ADMIN,
     "create channels", create_channel, NULL},
    {"GetChannel", GETQ, CP_NEED_READ, "read channels", get_channel, NULL},
    {"ListChannels", LISTQ, CP_NEED_READ, "list channels", list_channels, NULL},
    {"UpdateChannel", &tollgate__v1__update_channel_request__descriptor, CP_NEED_ADMIN,
     "update channels", update_channel, NULL},
    {"DeleteChannel", DELQ, CP_NEED_ADMIN, "delete channels", delete_channel, NULL},
    {"PutRoute", &tollgate__v1__put_route_request__descriptor, CP_NEED_PRICING, "write routes",
     put_route, NULL},
    {"GetRoute", GETQ, CP_NEED_READ, "read routes", get_route, NULL},
    {"ListRoutes", LISTQ, CP_NEED_READ, "list routes", list_routes, NULL},
    {"DeleteRoute", DELQ, CP_NEED_PRICING, "delete routes", delete_route, NULL},
    {"PutRunBudget", &tollgate__v1__put_run_budget_request__descriptor, CP_NEED_ADMIN,
     "write run budgets", put_run_budget, NULL},
    {"GetRunBudget", GETQ, CP_NEED_READ, "read run budgets", get_run_budget, NULL},
    {"GetPolicy", GETQ, CP_NEED_READ, "read the policy", get_policy, NULL},
    {"PutPolicy", &tollgate__v1__put_policy_request__descriptor, CP_NEED_ADMIN,
     "write the policy", put_policy, NULL},
    {"CreateAlertRule", &tollgate__v1__create_alert_rule_request__descriptor, CP_NEED_ADMIN,
     "create alert rules", create_alert_rule, NULL},
    {"GetAlertRule", GETQ, CP_NEED_READ, "read alert rules", get_alert_rule, NULL},
    {"ListAlertRules", LISTQ, CP_NEED_READ, "list alert rules", list_alert_rules, NULL},
    {"UpdateAlertRule", &tollgate__v1__update_alert_rule_request__descriptor, CP_NEED_ADMIN,
     "update alert rules", update_alert_rule, NULL},
    {"DeleteAlertRule", DELQ, CP_NEED_ADMIN, "delete alert rules", delete_alert_rule, NULL},
    {NULL, NULL, 0, NULL, NULL, NULL},
};
