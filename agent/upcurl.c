/* upcurl.c: the libcurl transport of an upstream call, for what the lean
 * client (uplean.c) does not take: proxies from the environment, and
 * --upstream-client curl. It sets up an easy handle on the worker's multi
 * handle (server.c drives it on the loop) and turns curl's header lines,
 * write callbacks and CURLcode into upstream.c's tg_req_up_* calls. */
#include <string.h>

#include "agent/request_int.h"

struct up_curl {
    struct curl_slist *uc_hdrs;
    char uc_err[CURL_ERROR_SIZE];
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    size_t n = size * nmemb;
    int rc = tg_req_up_body(arg, data, n);
    return rc == UP_TAKEN ? n : rc == UP_PAUSE ? CURL_WRITEFUNC_PAUSE : 0;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    req_t *rq = arg;
    size_t n = size * nmemb;
    if (n > 5 && strncmp(data, "HTTP/", 5) == 0) {
        tg_req_up_begin(rq);
        return n;
    }
    if (n <= 2 && (data[0] == '\r' || data[0] == '\n')) {
        long st = 0;
        curl_easy_getinfo(rq->rq_call, CURLINFO_RESPONSE_CODE, &st);
        if (st >= 200) {
            char *ct = NULL;
            curl_easy_getinfo(rq->rq_call, CURLINFO_CONTENT_TYPE, &ct);
            tg_req_up_head(rq, (int)st, ct);
        }
        return n;
    }
    const char *colon = memchr(data, ':', n);
    if (!colon)
        return n;
    size_t kl = (size_t)(colon - data);
    const char *v = colon + 1;
    size_t vl = n - kl - 1;
    while (vl && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
        vl--;
    tg_req_up_field(rq, data, kl, v, vl);
    return n;
}

void tg_req_curl_done(req_t *rq, CURLcode res)
{
    char msg[CURL_ERROR_SIZE];
    snprintf(msg, sizeof msg, "%s", rq->rq_curl && rq->rq_curl->uc_err[0] ? rq->rq_curl->uc_err : curl_easy_strerror(res));
    int kind = res == CURLE_OK                  ? UP_OK
               : res == CURLE_OPERATION_TIMEDOUT ? UP_TIMEOUT
               : res == CURLE_WRITE_ERROR        ? UP_ABORTED
                                                 : UP_CONNECT;
    tg_req_curl_drop(rq);
    tg_req_up_done(rq, kind, msg);
}

int tg_req_curl_start(req_t *rq, const up_req_t *u)
{
    worker_t *w = rq->rq_w;
    const tg_agent_opts_t *ao = &w->w_agent->a_opts;
    if (!rq->rq_curl && !(rq->rq_curl = tg_pool_calloc(rq->rq_pool, sizeof *rq->rq_curl)))
        return -1;
    struct up_curl *uc = rq->rq_curl;
    uc->uc_err[0] = '\0';
    struct curl_slist *n;
    /* the fields, one line each */
    for (const char *p = u->ur_fields, *end = u->ur_fields + u->ur_fields_len; p < end;) {
        const char *nl = memchr(p, '\r', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        char *line = tg_pool_strndup(rq->rq_pool, p, len);
        if (!line || !(n = curl_slist_append(uc->uc_hdrs, line)))
            return -1;
        uc->uc_hdrs = n;
        p += len + 2;
    }
    if (!(n = curl_slist_append(uc->uc_hdrs, "Expect:"))) /* no 100-continue round trip */
        return -1;
    uc->uc_hdrs = n;
    CURL *e = w->w_nidle ? w->w_idle[--w->w_nidle] : curl_easy_init();
    if (!e)
        return -1;
    rq->rq_tx = UP_CURL;
    rq->rq_call = e;
    curl_easy_setopt(e, CURLOPT_URL, u->ur_url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, u->ur_body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)u->ur_body_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, uc->uc_hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, rq);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, rq);
    curl_easy_setopt(e, CURLOPT_PRIVATE, rq);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, uc->uc_err);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    /* curl allocates its receive buffer per transfer and keeps it until the
     * end: an open stream waiting for tokens pays a page of it (16 KB
     * default, first page touched). Stream events are small, so a stream
     * reads with 1 KB; a buffered answer keeps the default. */
    if (rq->rq_scan.sc_stream)
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 1024L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)u->ur_connect_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)u->ur_total_ms);
    if (w->w_agent->a_no_env_proxy) {
        curl_easy_setopt(e, CURLOPT_PROXY, "");
        curl_easy_setopt(e, CURLOPT_NOPROXY, "");
    }
    if (ao->ao_upstream_ca) {
        /* instead of the system's roots: Debian's libcurl also loads its
         * built-in CA path unless told not to */
        curl_easy_setopt(e, CURLOPT_CAINFO, ao->ao_upstream_ca);
        curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
    }
    if (ao->ao_insecure_upstream) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    return curl_multi_add_handle(w->w_multi, e) == CURLM_OK ? 0 : -1;
}

void tg_req_curl_drop(req_t *rq)
{
    worker_t *w = rq->rq_w;
    CURL *e = rq->rq_tx == UP_CURL ? rq->rq_call : NULL;
    if (e) {
        curl_multi_remove_handle(w->w_multi, e);
        /* Kept for the next attempt on this worker: saves the handle's
         * allocations (connections live in the multi handle either way). */
        if (w->w_nidle < (int)(sizeof w->w_idle / sizeof w->w_idle[0])) {
            curl_easy_reset(e);
            w->w_idle[w->w_nidle++] = e;
        } else {
            curl_easy_cleanup(e);
        }
        rq->rq_call = NULL;
    }
    if (rq->rq_curl && rq->rq_curl->uc_hdrs) {
        curl_slist_free_all(rq->rq_curl->uc_hdrs);
        rq->rq_curl->uc_hdrs = NULL;
    }
    rq->rq_tx = UP_NONE;
}

void tg_req_curl_resume(req_t *rq)
{
    /* curl replays what it held through on_body; if that fails (an event
     * past its cap) it drops the bytes and goes on, so the stream would
     * have a hole: end the attempt here instead */
    CURLcode rc = curl_easy_pause(rq->rq_call, CURLPAUSE_CONT);
    if (rc != CURLE_OK && rq->rq_call && rq->rq_tx == UP_CURL)
        tg_req_curl_done(rq, rc);
}

int tg_req_curl_sent(req_t *rq)
{
    curl_off_t sent = 0;
    return curl_easy_getinfo(rq->rq_call, CURLINFO_SIZE_UPLOAD_T, &sent) == CURLE_OK &&
           sent == (curl_off_t)rq->rq_upbody.b_len;
}
