/* h1up.h: a lean HTTP/1.1 client for the agent's upstream calls, beside
 * libcurl (docs/ARCHITECTURE.md says why: per request libcurl cost 43% of
 * the agent's user-space instructions and two poll() calls no option turns
 * off). It runs on one libevent loop (a worker's) and never blocks it:
 *
 *   - one tg_h1_t per loop holds a keep-alive pool of idle connections
 *     keyed by scheme, host and port (an idle connection that becomes
 *     readable, the server's close or an unsolicited answer, is dropped,
 *     and checked again, without waiting, just before reuse; one idle for
 *     over 60 s is not reused; at most ho_max_idle are kept; a healthy
 *     TLS close sends close_notify so its session stays resumable), a
 *     scratch read buffer (a waiting call holds none of its own),
 *     a small DNS cache (up to 4 addresses a name for 60 s, tried in
 *     order when a connect fails; a name whose addresses all failed is
 *     asked again) and, on first use, the resolver (libevent's evdns:
 *     /etc/resolv.conf, /etc/hosts; IP literals and `localhost` need none)
 *     and the TLS context (OpenSSL: system roots or ho_ca_file, SNI,
 *     hostname verification, session reuse per host, ALPN http/1.1,
 *     SSL_MODE_RELEASE_BUFFERS, read-ahead).
 *   - a call writes its request in one write when it can (writev of head
 *     and body; one SSL_write over TLS), parses the response with
 *     http-parser (1xx heads skipped; 204 and 304 have no body whatever
 *     their head says; Content-Length, chunked and close-delimited
 *     bodies; anything malformed ends the call with
 *     TG_H1_MALFORMED) and hands the caller the final head's fields, then
 *     the head's end, then the body's bytes, then the end. The response
 *     is read while the body is still going, so an upstream that answers
 *     early (413) and closes is reported with that answer, as libcurl
 *     does, not as a send failure.
 *   - a request that fails on a reused connection before any response byte
 *     (the server closed it while it sat idle) is sent again once on a new
 *     connection.
 *
 * Callbacks run on the loop, never from inside tg_h1_start, tg_h1_resume
 * or tg_h1_cancel. After hh_done the call is gone; after tg_h1_cancel, even
 * from inside a callback, no further callback comes. */
#ifndef TG_AGENT_H1UP_H
#define TG_AGENT_H1UP_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

typedef struct tg_h1 tg_h1_t;           /* one per event loop */
typedef struct tg_h1_call tg_h1_call_t; /* one request in flight */

/* How a call ended. */
typedef enum tg_h1_result {
    TG_H1_OK = 0,
    TG_H1_TIMEOUT,   /* connect or total time passed */
    TG_H1_CONNECT,   /* no connection: DNS, TCP, TLS, or nothing came back */
    TG_H1_ABORTED,   /* hh_body said TG_H1_STOP */
    TG_H1_MALFORMED, /* the response is not HTTP/1.x */
    TG_H1_CUT,       /* the connection broke after the response began */
} tg_h1_result_t;

/* What hh_body did with the bytes. */
enum {
    TG_H1_TAKEN = 0, /* consumed */
    TG_H1_PAUSE = 1, /* not consumed: kept and handed again after tg_h1_resume */
    TG_H1_STOP = -1, /* end the call (TG_H1_ABORTED) */
};

typedef struct tg_h1_handler {
    /* a field of the final response head (1xx heads are not shown); name
     * and value are not NUL-terminated, the value without surrounding
     * blanks */
    void (*hh_field)(void *arg, const char *name, size_t nl, const char *value, size_t vl);
    /* the final head ended: its status and Content-Type ("" when none) */
    void (*hh_head)(void *arg, int status, const char *ctype);
    /* body bytes, decoded (chunked framing removed); TG_H1_TAKEN,
     * TG_H1_PAUSE or TG_H1_STOP */
    int (*hh_body)(void *arg, const char *data, size_t n);
    /* the end: result and a short message for people ("" with TG_H1_OK) */
    void (*hh_done)(void *arg, tg_h1_result_t res, const char *msg);
} tg_h1_handler_t;

typedef struct tg_h1_opts {
    const char *ho_ca_file; /* PEM roots for https; NULL: the system's */
    int ho_insecure;        /* no certificate or host check (tests only) */
    int ho_max_idle;        /* idle connections kept; 0: 64 */
} tg_h1_opts_t;

typedef struct tg_h1_req {
    const char *hr_method;   /* "POST" */
    const char *hr_url;      /* http://host[:port]/path or https://...; [v6] literals too */
    const char *hr_fields;   /* "Name: value\r\n" lines (Host and Content-Length are added; a
                              * Host, Content-Length, Transfer-Encoding or Connection line here
                              * is left out) */
    size_t hr_fields_len;
    const char *hr_body;     /* the caller's: kept until the response head came (tg_h1_body_sent) */
    size_t hr_body_len;
    uint32_t hr_connect_ms;  /* DNS, TCP and TLS; 0: 5000 */
    uint32_t hr_total_ms;    /* the whole call; 0: no limit */
} tg_h1_req_t;

/* A client for loop base with options o (copied; ho_ca_file is read on
 * first https use, so it must stay readable). Returns 0 with *out (free
 * with tg_h1_free) or -1 (out of memory) with err set. */
int tg_h1_new(struct event_base *base, const tg_h1_opts_t *o, tg_h1_t **out, char *err, size_t errlen);

/* Closes the idle connections and frees h. Every call must have ended or
 * been cancelled. Accepts NULL. */
void tg_h1_free(tg_h1_t *h);

/* Starts a call; its callbacks go to hh with arg. Returns 0 with *out (the
 * call, until hh_done or tg_h1_cancel), or -1 with err set (a URL it does
 * not serve, out of memory): then no callback comes. The head is copied;
 * r->hr_body is not. */
int tg_h1_start(tg_h1_t *h, const tg_h1_req_t *r, const tg_h1_handler_t *hh, void *arg, tg_h1_call_t **out,
                char *err, size_t errlen);

/* After hh_body said TG_H1_PAUSE: reading goes on (the kept bytes first),
 * from the loop. Can't fail. */
void tg_h1_resume(tg_h1_call_t *c);

/* Ends the call without a callback; its connection is closed, never
 * reused. Can't fail; accepts NULL. */
void tg_h1_cancel(tg_h1_call_t *c);

/* 1 once the caller's body is not needed any more (the caller may free
 * it): the whole body was written and it cannot go again, that is, a
 * response byte came, or the connection was new, or it is https (the body
 * was copied). Until then a failure on a reused connection may send it
 * again on a new one. */
int tg_h1_body_sent(const tg_h1_call_t *c);

/* Idle connections in the pool, and connections opened since tg_h1_new
 * (for tests and metrics). */
int tg_h1_idle(const tg_h1_t *h);
long tg_h1_opened(const tg_h1_t *h);

/* The response side alone, for the fuzz target and tests: feeds n bytes
 * (n == 0: the server closed) of a response to a parser made by
 * tg_h1_parse_new, with the callbacks hh (hh_done is not used). Returns 0
 * (more wanted), 1 (the response is complete) or -1 (malformed, or
 * TG_H1_STOP) with msg set. tg_h1_parse_new returns NULL when out of
 * memory; the caller frees what it returns with tg_h1_parse_free (which
 * accepts NULL). */
typedef struct tg_h1_parse tg_h1_parse_t;
tg_h1_parse_t *tg_h1_parse_new(const tg_h1_handler_t *hh, void *arg);
int tg_h1_parse_feed(tg_h1_parse_t *p, const char *data, size_t n, char *msg, size_t msglen);
void tg_h1_parse_free(tg_h1_parse_t *p);

#endif
