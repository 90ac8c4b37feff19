/* admin_alerts.c: AdminService's reads of raised alerts: ListAlerts (pages
 * of TG_CP_K_ALERT with filters) and WatchAlerts (a server stream of every
 * alert after an id, as they are raised). Alert ids are "alt_" + the
 * 16-digit sequence of their store key, so key order is raise order and
 * "after this id" is a key range. Rules are written by admin_objects.c and
 * evaluated by alerts.c on the leader; a watcher on any replica sees the
 * leader's alerts by polling the store (every 200 ms: alerts are rare, and
 * polling needs no watch plumbing per stream). */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controlplane/admin_int.h"

#define WATCH_POLL_MS 200
#define WATCH_SEND_TIMEOUT_MS 30000

/* The store key suffix of an alert id ("alt_0000000000000042" ->
 * "0000000000000042"), or NULL for an id that is not one. */
static const char *alert_suffix(const char *id)
{
    size_t n = strlen(id);
    if (n != 20 || strncmp(id, "alt_", 4) != 0) return NULL;
    for (size_t i = 4; i < n; i++)
        if (id[i] < '0' || id[i] > '9') return NULL;
    return id + 4;
}

typedef struct alert_filter {
    const char *af_rule, *af_account, *af_scope_id;
    int af_kind;
    int64_t af_since, af_until;
} alert_filter_t;

static int alert_keep(const alert_filter_t *f, const Tollgate__V1__Alert *a)
{
    if (f->af_rule && f->af_rule[0] && strcmp(a->rule_id, f->af_rule) != 0) return 0;
    if (f->af_account && f->af_account[0] && strcmp(a->account_id, f->af_account) != 0) return 0;
    if (f->af_scope_id && f->af_scope_id[0] && strcmp(a->scope_id, f->af_scope_id) != 0) return 0;
    if (f->af_kind && (int)a->kind != f->af_kind) return 0;
    if (f->af_since && a->at_us < f->af_since) return 0;
    if (f->af_until && a->at_us >= f->af_until) return 0;
    return 1;
}

/* ---- ListAlerts ---------------------------------------------------------------------- */

typedef struct list_walk {
    alert_filter_t lw_f;
    Tollgate__V1__Alert **lw_v;
    size_t lw_n, lw_max;
    int lw_more;
} list_walk_t;

static int list_step(cp_actx_t *a, const tg_store_kv_t *kv, const char *suffix, size_t len, void *arg)
{
    list_walk_t *w = arg;
    ProtobufCMessage *m = NULL;
    (void)a;
    (void)suffix;
    (void)len;
    if (tg_rpc_pb_unpack(&tollgate__v1__alert__descriptor, kv->kv_val, kv->kv_val_len, &m, NULL, 0) != 0)
        return CP_SCAN_GO;
    if (!alert_keep(&w->lw_f, (Tollgate__V1__Alert *)m)) {
        tg_rpc_pb_free(m);
        return CP_SCAN_GO;
    }
    if (w->lw_n == w->lw_max) {
        w->lw_more = 1;
        tg_rpc_pb_free(m);
        return CP_SCAN_STOP;
    }
    w->lw_v[w->lw_n++] = (Tollgate__V1__Alert *)m;
    return CP_SCAN_GO;
}

static int list_alerts(cp_actx_t *a, const ProtobufCMessage *reqm, tg_buf_t *reply)
{
    const Tollgate__V1__ListAlertsRequest *q = (const Tollgate__V1__ListAlertsRequest *)reqm;
    Tollgate__V1__ListAlertsResponse r = TOLLGATE__V1__LIST_ALERTS_RESPONSE__INIT;
    list_walk_t w;
    char after[64] = "", tok[64] = "";
    const char *from = NULL;
    int code;
    memset(&w, 0, sizeof w);
    w.lw_f = (alert_filter_t){q->rule_id, q->account_id, q->scope_id, (int)q->kind, q->since_us, q->until_us};
    if (q->page_token[0]) {
        if (tg_cp_page_token_decode(q->page_token, after, sizeof after) != 0 || !alert_suffix(after))
            return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT, "page_token: not a token of this server");
        from = alert_suffix(after);
    } else if (q->after_id[0]) {
        if (!(from = alert_suffix(q->after_id)))
            return cp_fail(a, TG_RPC_CODE_INVALID_ARGUMENT,
                           "after_id: '%.64s' is not an alert id (alt_ and 16 digits)", q->after_id);
    }
    w.lw_max = tg_cp_page_size(q->page_size);
    if (!(w.lw_v = tg_calloc(w.lw_max, sizeof(*w.lw_v))))
        return cp_fail(a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory");
    /* from + its NUL: the first key after it */
    code = cp_scan(a, TG_CP_K_ALERT, from, from ? strlen(from) + 1 : 0, 0, list_step, &w);
    if (code == TG_RPC_CODE_OK) {
        r.alerts = w.lw_v;
        r.n_alerts = w.lw_n;
        if (w.lw_more && w.lw_n > 0) {
            tg_cp_page_token_encode(w.lw_v[w.lw_n - 1]->id, tok, sizeof tok);
            r.next_page_token = tok;
        }
        code = cp_reply(a, &r.base, reply);
    }
    for (size_t i = 0; i < w.lw_n; i++) tg_rpc_pb_free(&w.lw_v[i]->base);
    tg_free(w.lw_v);
    return code;
}

/* ---- WatchAlerts ------------------------------------------------------------------------ */

typedef struct watch_job {
    tg_cp_t *wj_cp;
    tg_rpc_call_t *wj_call;
    alert_filter_t wj_f;
    ProtobufCMessage *wj_req; /* WatchAlertsRequest: the filter's strings */
    char wj_last[32];         /* key suffix of the last alert seen; "" none */
} watch_job_t;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Sends the alerts after wj_last; 0, or -1 when the client is gone. */
static int watch_round(watch_job_t *j)
{
    char start[TG_STORE_MAX_KEY], err[TG_ERRLEN] = "";
    uint8_t end[64];
    tg_store_range_res_t res;
    int n = snprintf(start, sizeof start, "%s%s", TG_CP_K_ALERT, j->wj_last);
    size_t start_len = (size_t)n + (j->wj_last[0] ? 1 : 0); /* past the last one: its key + NUL */
    size_t end_len = tg_store_prefix_end(TG_CP_K_ALERT, strlen(TG_CP_K_ALERT), end);
    tg_store_range_req_t rq = {.rq_key = start, .rq_key_len = start_len, .rq_end = end, .rq_end_len = end_len,
                               .rq_limit = 256};
    if (tg_store_range(j->wj_cp->cp_store, &rq, &res, err, sizeof err) < 0) return 0; /* next round */
    for (size_t i = 0; i < res.rs_n; i++) {
        const tg_store_kv_t *kv = &res.rs_kvs[i];
        ProtobufCMessage *m = NULL;
        size_t sl = kv->kv_key_len - strlen(TG_CP_K_ALERT);
        if (sl >= sizeof j->wj_last) continue;
        memcpy(j->wj_last, (const char *)kv->kv_key + strlen(TG_CP_K_ALERT), sl);
        j->wj_last[sl] = '\0';
        if (tg_rpc_pb_unpack(&tollgate__v1__alert__descriptor, kv->kv_val, kv->kv_val_len, &m, NULL, 0) != 0)
            continue;
        int rc = alert_keep(&j->wj_f, (Tollgate__V1__Alert *)m)
                     ? tg_rpc_call_send_pb(j->wj_call, m, WATCH_SEND_TIMEOUT_MS)
                     : 0;
        tg_rpc_pb_free(m);
        if (rc != 0) {
            tg_store_range_res_free(&res);
            return -1;
        }
    }
    tg_store_range_res_free(&res);
    return 0;
}

static void *watch_main(void *arg)
{
    watch_job_t *j = arg;
    int gone = 0;
    while (!atomic_load(&j->wj_cp->cp_stopping) && !tg_rpc_call_cancelled(j->wj_call)) {
        if (watch_round(j) != 0) {
            gone = 1;
            break;
        }
        sleep_ms(WATCH_POLL_MS);
    }
    if (gone || tg_rpc_call_cancelled(j->wj_call))
        tg_rpc_call_finish(j->wj_call, TG_RPC_CODE_CANCELLED, "watch ended: client gone or slow");
    else
        tg_rpc_call_finish(j->wj_call, TG_RPC_CODE_UNAVAILABLE, "control plane shutting down");
    tg_rpc_pb_free(j->wj_req);
    tg_free(j);
    atomic_fetch_sub(&tg_cp_exports_running, 1);
    return NULL;
}

static int watch_alerts(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, void *arg)
{
    const cp_binding_t *b = arg;
    cp_actx_t a;
    char err[TG_ERRLEN] = "";
    watch_job_t *j;
    pthread_t th;
    pthread_attr_t at;
    int code = cp_stream_begin(b->b_cp, call, b->b_m, &a);
    if (code != TG_RPC_CODE_OK) return code;
    if (!(j = tg_calloc(1, sizeof(*j)))) return cp_fail(&a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory");
    if (tg_rpc_pb_unpack(&tollgate__v1__watch_alerts_request__descriptor, req, req_len, &j->wj_req, err,
                         sizeof err) != 0) {
        tg_free(j);
        return cp_fail(&a, TG_RPC_CODE_INVALID_ARGUMENT, "request: %s", err);
    }
    const Tollgate__V1__WatchAlertsRequest *q = (const Tollgate__V1__WatchAlertsRequest *)j->wj_req;
    j->wj_f = (alert_filter_t){q->rule_id, q->account_id, NULL, 0, 0, 0};
    if (q->after_id[0]) {
        const char *s = alert_suffix(q->after_id);
        if (!s) {
            tg_rpc_pb_free(j->wj_req);
            tg_free(j);
            return cp_fail(&a, TG_RPC_CODE_INVALID_ARGUMENT,
                           "after_id: '%.64s' is not an alert id (alt_ and 16 digits)", q->after_id);
        }
        snprintf(j->wj_last, sizeof j->wj_last, "%s", s);
    } else if (!q->from_start) {
        /* only new alerts: start after the last raised so far */
        tg_store_kv_t *kv = NULL;
        if (tg_store_get(b->b_cp->cp_store, TG_CP_K_ALERT_SEQ, strlen(TG_CP_K_ALERT_SEQ), &kv, NULL, err,
                         sizeof err) != 0) {
            tg_rpc_pb_free(j->wj_req);
            tg_free(j);
            return cp_fail(&a, TG_RPC_CODE_UNAVAILABLE, "store: %s", err);
        }
        if (kv) {
            char num[32];
            snprintf(num, sizeof num, "%.*s", (int)(kv->kv_val_len < 31 ? kv->kv_val_len : 31),
                     (const char *)kv->kv_val);
            snprintf(j->wj_last, sizeof j->wj_last, "%016" PRIu64, (uint64_t)strtoull(num, NULL, 10));
            tg_store_kv_free(kv);
        }
    }
    j->wj_cp = b->b_cp;
    j->wj_call = call;
    atomic_fetch_add(&tg_cp_exports_running, 1);
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &at, watch_main, j) != 0) {
        pthread_attr_destroy(&at);
        atomic_fetch_sub(&tg_cp_exports_running, 1);
        tg_rpc_pb_free(j->wj_req);
        tg_free(j);
        return cp_fail(&a, TG_RPC_CODE_RESOURCE_EXHAUSTED, "cannot start a watch thread");
    }
    pthread_attr_destroy(&at);
    return TG_RPC_KEEP;
}

const cp_method_t tg_cp_alert_methods[] = {
    {"ListAlerts", &tollgate__v1__list_alerts_request__descriptor, CP_NEED_READ, "read alerts", list_alerts, NULL},
    {"WatchAlerts", &tollgate__v1__watch_alerts_request__descriptor, CP_NEED_READ, "watch alerts", NULL,
     watch_alerts},
    {NULL, NULL, 0, NULL, NULL, NULL},
};
