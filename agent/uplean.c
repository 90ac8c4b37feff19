/* uplean.c: the lean transport of an upstream call: the worker's HTTP/1.1
 * client (h1up.h) for http:// and https:// channels, its callbacks turned
 * into upstream.c's tg_req_up_* calls. A URL it does not serve goes to
 * libcurl (upcurl.c). */
#include "agent/request_int.h"

static void on_field(void *arg, const char *name, size_t nl, const char *value, size_t vl)
{
    tg_req_up_field(arg, name, nl, value, vl);
}

static void on_head(void *arg, int status, const char *ctype)
{
    tg_req_up_head(arg, status, ctype);
}

static int on_body(void *arg, const char *data, size_t n)
{
    int rc = tg_req_up_body(arg, data, n);
    return rc == UP_TAKEN ? TG_H1_TAKEN : rc == UP_PAUSE ? TG_H1_PAUSE : TG_H1_STOP;
}

static void on_done(void *arg, tg_h1_result_t res, const char *msg)
{
    req_t *rq = arg;
    static const int kind[] = {
        [TG_H1_OK] = UP_OK,           [TG_H1_TIMEOUT] = UP_TIMEOUT,     [TG_H1_CONNECT] = UP_CONNECT,
        [TG_H1_ABORTED] = UP_ABORTED, [TG_H1_MALFORMED] = UP_MALFORMED, [TG_H1_CUT] = UP_CUT,
    };
    rq->rq_call = NULL; /* the call is gone */
    rq->rq_tx = UP_NONE;
    tg_req_up_done(rq, kind[res], msg);
}

static const tg_h1_handler_t handler = {
    .hh_field = on_field,
    .hh_head = on_head,
    .hh_body = on_body,
    .hh_done = on_done,
};

int tg_req_lean_start(req_t *rq, const up_req_t *u)
{
    tg_h1_req_t hr = {
        .hr_method = "POST",
        .hr_url = u->ur_url,
        .hr_fields = u->ur_fields,
        .hr_fields_len = u->ur_fields_len,
        .hr_body = u->ur_body,
        .hr_body_len = u->ur_body_len,
        .hr_connect_ms = u->ur_connect_ms,
        .hr_total_ms = u->ur_total_ms,
    };
    tg_h1_call_t *c = NULL;
    char err[TG_ERRLEN];
    if (tg_h1_start(rq->rq_w->w_h1, &hr, &handler, rq, &c, err, sizeof err) != 0)
        return tg_req_curl_start(rq, u);
    rq->rq_tx = UP_LEAN;
    rq->rq_call = c;
    return 0;
}

void tg_req_lean_drop(req_t *rq)
{
    if (rq->rq_tx == UP_LEAN)
        tg_h1_cancel(rq->rq_call);
    rq->rq_call = NULL;
    rq->rq_tx = UP_NONE;
}

void tg_req_lean_resume(req_t *rq)
{
    tg_h1_resume(rq->rq_call);
}

int tg_req_lean_sent(req_t *rq)
{
    return tg_h1_body_sent(rq->rq_call);
}
