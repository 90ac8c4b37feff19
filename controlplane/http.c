/* http.c: the control plane's small HTTP port for operations: /healthz
 * (the process is up), /readyz (the store answers and the process is not
 * shutting down) and /metrics (Prometheus text format). libevent's evhttp on
 * its own thread: this port carries a probe every few seconds, not traffic,
 * so simplicity wins over the hot-path tricks the agent needs. */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "controlplane/admin_int.h"

struct tg_cp_http {
    tg_cp_t *h_cp;
    struct event_base *h_base;
    struct evhttp *h_http;
    pthread_t h_thread;
    int h_started;
};

static void send_text(struct evhttp_request *req, int code, const char *reason, tg_buf_t *b)
{
    struct evbuffer *out = evbuffer_new();
    if (!out) return;
    evbuffer_add(out, b->b_data ? b->b_data : "", b->b_len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, code, reason, out);
    evbuffer_free(out);
}

static void metric(tg_buf_t *b, const char *name, const char *type, const char *help, int64_t v)
{
    tg_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %" PRId64 "\n", name, help, name, type, name, v);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    tg_cp_http_t *h = arg;
    tg_cp_t *cp = h->h_cp;
    const char *uri = evhttp_request_get_uri(req);
    tg_buf_t b;
    tg_buf_init(&b, 1 << 20);
    if (strcmp(uri, "/healthz") == 0) {
        tg_buf_puts(&b, "ok\n");
        send_text(req, 200, "OK", &b);
    } else if (strcmp(uri, "/readyz") == 0) {
        char err[TG_ERRLEN] = "";
        int64_t rev;
        if (atomic_load(&cp->cp_stopping)) {
            tg_buf_puts(&b, "shutting down\n");
            send_text(req, 503, "Service Unavailable", &b);
        } else if (tg_store_revision(cp->cp_store, &rev, err, sizeof err) != 0) {
            tg_buf_printf(&b, "store: %s\n", err);
            send_text(req, 503, "Service Unavailable", &b);
        } else {
            tg_buf_printf(&b, "ready (store revision %" PRId64 ")\n", rev);
            send_text(req, 200, "OK", &b);
        }
    } else if (strcmp(uri, "/metrics") == 0) {
        char err[TG_ERRLEN] = "";
        int64_t rev = 0;
        tg_ledger_stat_t st = {0};
        int store_up = tg_store_revision(cp->cp_store, &rev, err, sizeof err) == 0;
        if (cp->cp_ledger) tg_ledger_stat(cp->cp_ledger, &st, err, sizeof err);
        metric(&b, "tollgate_cp_up", "gauge", "1 while the control plane runs", 1);
        metric(&b, "tollgate_cp_is_leader", "gauge", "1 while this replica settles",
               atomic_load(&cp->cp_is_leader));
        {
            /* whom this replica sees settling: every replica names the same
             * node, so "no series with value 1" anywhere means no leader */
            char leader[256], esc[512];
            size_t k = 0;
            tg_cp_leader_name(cp, leader, sizeof leader);
            for (const char *p = leader; *p && k + 2 < sizeof esc; p++) {
                if (*p == '"' || *p == '\\') esc[k++] = '\\';
                esc[k++] = *p == '\n' ? ' ' : *p;
            }
            esc[k] = '\0';
            tg_buf_printf(&b, "# HELP tollgate_cp_leader the settling leader as this replica sees it "
                              "(1 with its node id; 0 with node=\"\" while none is known)\n"
                              "# TYPE tollgate_cp_leader gauge\ntollgate_cp_leader{node=\"%s\"} %d\n",
                          esc, leader[0] ? 1 : 0);
            int64_t at = atomic_load(&cp->cp_m_settled_at_us);
            metric(&b, "tollgate_cp_settled_age_seconds", "gauge",
                   "seconds since a settled batch last reached this replica's ledger (-1: none since start)",
                   at ? (tg_cp_now_us() - at) / 1000000 : -1);
        }
        metric(&b, "tollgate_cp_usage_forwarded_total", "counter",
               "usage reports this follower forwarded to the settling leader",
               atomic_load(&cp->cp_m_forwarded));
        metric(&b, "tollgate_cp_usage_forward_failures_total", "counter",
               "forwarded usage reports the leader did not answer",
               atomic_load(&cp->cp_m_forward_fail));
        metric(&b, "tollgate_cp_legacy_proofs_total", "counter",
               "agent proofs without a nonce (agents older than nonces) accepted by --legacy-agent-proofs",
               atomic_load(&cp->cp_m_legacy_proofs));
        metric(&b, "tollgate_cp_admin_calls_total", "counter", "AdminService calls received",
               atomic_load(&cp->cp_m_admin_calls));
        metric(&b, "tollgate_cp_batches_settled_total", "counter", "usage batches settled",
               atomic_load(&cp->cp_m_batches));
        metric(&b, "tollgate_cp_records_settled_total", "counter", "usage records settled",
               atomic_load(&cp->cp_m_records));
        metric(&b, "tollgate_cp_duplicate_batches_total", "counter",
               "resent batches answered from their dedup marker",
               atomic_load(&cp->cp_m_dup_batches));
        metric(&b, "tollgate_cp_cost_mismatches_total", "counter",
               "records whose recomputed cost differed from the agent's",
               atomic_load(&cp->cp_m_mismatches));
        metric(&b, "tollgate_cp_unbilled_records_total", "counter",
               "records with a cost settled unbilled: no account or bucket to debit",
               atomic_load(&cp->cp_m_unbilled));
        metric(&b, "tollgate_cp_settle_groups_total", "counter",
               "settlement transactions (each commits one or more batches)",
               atomic_load(&cp->cp_m_groups));
        metric(&b, "tollgate_cp_settle_conflicts_total", "counter",
               "settlement transactions retried after a failed compare",
               atomic_load(&cp->cp_m_conflicts));
        metric(&b, "tollgate_cp_settle_early_checks_total", "counter",
               "batches whose record ids were checked against the ledger before the commit lock",
               atomic_load(&cp->cp_m_early_checks));
        metric(&b, "tollgate_cp_settle_early_pending_duplicates_total", "counter",
               "records of early-checked batches found settled by a commit after their check",
               atomic_load(&cp->cp_m_early_pending_dups));
        metric(&b, "tollgate_cp_sync_streams", "gauge", "open agent Sync streams",
               atomic_load(&cp->cp_m_sync_streams));
        metric(&b, "tollgate_cp_ledger_exports", "gauge", "ledger exports streaming now",
               atomic_load(&tg_cp_exports_running));
        metric(&b, "tollgate_cp_store_up", "gauge",
               "1 when the store (etcd or LMDB) answered this scrape's revision read, 0 when it did not", store_up);
        metric(&b, "tollgate_cp_store_revision", "gauge", "current store revision", rev);
        if (cp->cp_m_cert_not_after || cp->cp_m_ca_not_after) {
            int64_t now = tg_cp_now_us() / 1000000;
            tg_buf_puts(&b, "# HELP tollgate_cp_cert_expiry_seconds seconds until a certificate of the gRPC port "
                            "expires (negative: expired): cert=\"server\" (--tls-cert), \"client_ca\" (--client-ca)\n"
                            "# TYPE tollgate_cp_cert_expiry_seconds gauge\n");
            if (cp->cp_m_cert_not_after)
                tg_buf_printf(&b, "tollgate_cp_cert_expiry_seconds{cert=\"server\"} %" PRId64 "\n",
                              cp->cp_m_cert_not_after - now);
            if (cp->cp_m_ca_not_after)
                tg_buf_printf(&b, "tollgate_cp_cert_expiry_seconds{cert=\"client_ca\"} %" PRId64 "\n",
                              cp->cp_m_ca_not_after - now);
        }
        metric(&b, "tollgate_cp_ledger_rows", "gauge", "rows in this replica's ledger",
               (int64_t)st.ls_rows);
        metric(&b, "tollgate_cp_ledger_head_seq", "gauge", "newest ledger sequence number",
               (int64_t)st.ls_head_seq);
        send_text(req, 200, "OK", &b);
    } else {
        tg_buf_puts(&b, "not found: try /healthz, /readyz or /metrics\n");
        send_text(req, 404, "Not Found", &b);
    }
    tg_buf_free(&b);
}

static void *loop_main(void *arg)
{
    tg_cp_http_t *h = arg;
    event_base_dispatch(h->h_base);
    return NULL;
}

tg_cp_http_t *tg_cp_http_start(tg_cp_t *cp, const char *addr, int *port, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    struct evhttp_bound_socket *sock;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    tg_cp_http_t *h;
    long p;
    char *end;

    if (!colon || (size_t)(colon - addr) >= sizeof host) {
        tg_errf(err, errlen, -1, "--http %s: expected HOST:PORT", addr);
        return NULL;
    }
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535) {
        tg_errf(err, errlen, -1, "--http %s: bad port", addr);
        return NULL;
    }
    evthread_use_pthreads(); /* event_base_loopexit from the main thread */
    if (!(h = tg_calloc(1, sizeof(*h)))) {
        tg_errf(err, errlen, -1, "out of memory");
        return NULL;
    }
    h->h_cp = cp;
    if (!(h->h_base = event_base_new()) || !(h->h_http = evhttp_new(h->h_base))) {
        tg_errf(err, errlen, -1, "http: cannot create the event loop");
        goto fail;
    }
    evhttp_set_gencb(h->h_http, on_request, h);
    evhttp_set_allowed_methods(h->h_http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    if (!(sock = evhttp_bind_socket_with_handle(h->h_http, host, (uint16_t)p))) {
        tg_errf(err, errlen, -1, "--http %s: cannot listen (address in use or invalid)", addr);
        goto fail;
    }
    if (getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss, &sl) == 0)
        *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    if (pthread_create(&h->h_thread, NULL, loop_main, h) != 0) {
        tg_errf(err, errlen, -1, "http: cannot start its thread");
        goto fail;
    }
    h->h_started = 1;
    return h;
fail:
    tg_cp_http_stop(h);
    return NULL;
}

void tg_cp_http_stop(tg_cp_http_t *h)
{
    if (!h) return;
    if (h->h_started) {
        event_base_loopexit(h->h_base, NULL);
        pthread_join(h->h_thread, NULL);
    }
    if (h->h_http) evhttp_free(h->h_http);
    if (h->h_base) event_base_free(h->h_base);
    tg_free(h);
}
