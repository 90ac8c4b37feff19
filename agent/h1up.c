/* h1up.c: the lean HTTP/1.1 upstream client (h1up.h is its manual). A
 * call goes DNS (skipped for IP literals, localhost and cached names) ->
 * TCP connect -> TLS handshake (https) -> send -> read, or straight to send
 * on an idle pooled connection; the response is parsed by http-parser as it
 * arrives, straight from the loop's scratch buffer. One timer per call
 * bounds the connect and the whole call; the same event also runs a
 * failure found inside tg_h1_start, so callbacks always come from the
 * loop. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event_struct.h> /* events embedded in the call and the connection */
#include <event2/util.h>
#include <http_parser.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "agent/h1up.h"
#include "base/tg_base.h"

#define SCRATCH (64u << 10)   /* one read; a waiting call holds no buffer of its own */
#define HEAD_MAX (64u << 10)  /* response head bytes */
#define SITES 32              /* hosts remembered: address, TLS session */
#define DNS_TTL_MS 60000
#define ADDRS 4               /* a name's addresses kept, tried in order */
#define DEF_CONNECT_MS 5000
#define DEF_MAX_IDLE 64
#define IDLE_AGE_MS 60000  /* a pooled connection idle longer is not reused (a NAT may have dropped it silently) */
/* A pooled connection idle at least this long is peeked at before reuse
 * (conn_alive: one more recv per request). One idle for less, under load
 * nearly all of them, goes without: its close or unsolicited answer would
 * have to come within milliseconds of its last answer, and a close is
 * covered anyway by the stale retry. */
#define PEEK_AFTER_MS 10
#define MSGLEN 160

/* ---- the response: http-parser and the caller's callbacks -------------- */

typedef struct resp {
    http_parser rp_p;
    const tg_h1_handler_t *rp_hh;
    void *rp_arg;
    /* The head's fields as records (name length, value length, name,
     * value), handed over only once the whole head parsed: a head that
     * turns out malformed shows no field. Freed at the head's end. */
    char *rp_fb;
    size_t rp_fl, rp_fcap;
    size_t rp_rec;        /* offset of the open record */
    size_t rp_nl, rp_vl;  /* its name and value lengths so far */
    int rp_inrec, rp_inval;
    size_t rp_head;       /* head bytes so far */
    char rp_ctype[96];
    int rp_final;         /* the final head was handed over */
    int rp_complete;      /* the final response ended */
    int rp_stop;          /* hh_body said TG_H1_STOP */
    int rp_paused;        /* hh_body said TG_H1_PAUSE: bytes go to rp_held */
    int rp_cancelled;     /* tg_h1_cancel from inside a callback: no further callback */
    tg_buf_t rp_held;
    const char *rp_why;   /* why a callback failed the parse */
} resp_t;

static int fb_add(resp_t *r, const void *s, size_t n)
{
    r->rp_head += n;
    if (r->rp_head > HEAD_MAX) {
        r->rp_why = "the response head passed 64 KB";
        return -1;
    }
    if (r->rp_fl + n > r->rp_fcap) {
        size_t cap = r->rp_fcap ? r->rp_fcap : 512;
        while (cap < r->rp_fl + n)
            cap *= 2;
        char *nb = tg_realloc(r->rp_fb, cap);
        if (!nb) {
            r->rp_why = "out of memory reading the response head";
            return -1;
        }
        r->rp_fb = nb;
        r->rp_fcap = cap;
    }
    memcpy(r->rp_fb + r->rp_fl, s, n);
    r->rp_fl += n;
    return 0;
}

static void rec_close(resp_t *r)
{
    if (!r->rp_inrec)
        return;
    size_t len[2] = {r->rp_nl, r->rp_vl};
    memcpy(r->rp_fb + r->rp_rec, len, sizeof len);
    r->rp_inrec = r->rp_inval = 0;
}

static int rp_begin(http_parser *p)
{
    resp_t *r = p->data;
    if (r->rp_cancelled)
        return -1;
    r->rp_fl = 0;
    r->rp_inrec = r->rp_inval = 0;
    r->rp_ctype[0] = '\0';
    return 0;
}

static int rp_field(http_parser *p, const char *at, size_t n)
{
    resp_t *r = p->data;
    if (r->rp_cancelled)
        return -1;
    if (r->rp_inval)
        rec_close(r);
    if (!r->rp_inrec) {
        size_t len[2] = {0, 0};
        r->rp_rec = r->rp_fl;
        if (fb_add(r, len, sizeof len) != 0)
            return -1;
        r->rp_nl = r->rp_vl = 0;
        r->rp_inrec = 1;
    }
    r->rp_nl += n;
    return fb_add(r, at, n);
}

static int rp_value(http_parser *p, const char *at, size_t n)
{
    resp_t *r = p->data;
    if (r->rp_cancelled)
        return -1;
    r->rp_inval = 1;
    r->rp_vl += n;
    return fb_add(r, at, n);
}

/* Hands the head's fields over, values without surrounding blanks, and
 * keeps its Content-Type. */
static void fields_out(resp_t *r)
{
    for (size_t off = 0; off < r->rp_fl && !r->rp_cancelled;) {
        size_t len[2];
        memcpy(len, r->rp_fb + off, sizeof len);
        const char *name = r->rp_fb + off + sizeof len, *v = name + len[0];
        size_t nl = len[0], vl = len[1];
        off += sizeof len + nl + vl;
        while (vl && (*v == ' ' || *v == '\t')) {
            v++;
            vl--;
        }
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            vl--;
        if (nl == 12 && strncasecmp(name, "content-type", 12) == 0) {
            size_t n = vl < sizeof r->rp_ctype - 1 ? vl : sizeof r->rp_ctype - 1;
            memcpy(r->rp_ctype, v, n);
            r->rp_ctype[n] = '\0';
        }
        if (r->rp_hh->hh_field)
            r->rp_hh->hh_field(r->rp_arg, name, nl, v, vl);
    }
}

static int rp_headers(http_parser *p)
{
    resp_t *r = p->data;
    if (r->rp_cancelled)
        return -1;
    rec_close(r);
    if (p->status_code < 100 || p->status_code > 599 || p->status_code == 101) {
        r->rp_why = p->status_code == 101 ? "the upstream switched protocols (HTTP 101)"
                                          : "the response status is out of range";
        return -1;
    }
    if (p->status_code < 200)
        return 1; /* 1xx: no body (whatever its head says); the final head follows */
    fields_out(r);
    tg_free(r->rp_fb);
    r->rp_fb = NULL;
    r->rp_fl = r->rp_fcap = 0;
    r->rp_final = 1;
    if (!r->rp_cancelled && r->rp_hh->hh_head)
        r->rp_hh->hh_head(r->rp_arg, p->status_code, r->rp_ctype);
    if (r->rp_cancelled)
        return -1;
    /* http-parser 2.9 reads a body for 204 and 304 when the head
     * names a length or chunked; they have none (RFC 9112 6.3), so the call
     * would wait for bytes that never come. 1: no body. */
    return p->status_code == 204 || p->status_code == 304;
}

static int rp_body(http_parser *p, const char *at, size_t n)
{
    resp_t *r = p->data;
    if (r->rp_cancelled)
        return -1;
    if (!r->rp_final)
        return 0; /* a 1xx head's body, if it had one */
    if (!r->rp_paused && !r->rp_held.b_len) {
        int rc = r->rp_hh->hh_body ? r->rp_hh->hh_body(r->rp_arg, at, n) : TG_H1_TAKEN;
        if (r->rp_cancelled)
            return -1;
        if (rc == TG_H1_TAKEN)
            return 0;
        if (rc != TG_H1_PAUSE) {
            r->rp_stop = 1;
            return -1;
        }
        r->rp_paused = 1;
    }
    if (tg_buf_append(&r->rp_held, at, n) != 0) {
        r->rp_why = "out of memory holding a paused response";
        return -1;
    }
    return 0;
}

static int rp_done(http_parser *p)
{
    resp_t *r = p->data;
    if (r->rp_cancelled)
        return -1;
    if (!r->rp_final)
        return 0; /* the end of a 1xx */
    r->rp_complete = 1;
    http_parser_pause(p, 1); /* anything after it is not ours to parse */
    return 0;
}

static const http_parser_settings rp_settings = {
    .on_message_begin = rp_begin,
    .on_header_field = rp_field,
    .on_header_value = rp_value,
    .on_headers_complete = rp_headers,
    .on_body = rp_body,
    .on_message_complete = rp_done,
};

static void resp_init(resp_t *r, const tg_h1_handler_t *hh, void *arg)
{
    tg_free(r->rp_fb);
    tg_buf_free(&r->rp_held);
    memset(r, 0, sizeof *r);
    http_parser_init(&r->rp_p, HTTP_RESPONSE);
    r->rp_p.data = r;
    r->rp_hh = hh;
    r->rp_arg = arg;
    tg_buf_init(&r->rp_held, 16u << 20);
}

static void resp_free(resp_t *r)
{
    tg_free(r->rp_fb);
    r->rp_fb = NULL;
    tg_buf_free(&r->rp_held);
}

/* Feeds n bytes (n == 0: EOF). Returns 0 (more wanted), 1 (complete) or
 * -1 (malformed, stopped) with msg set. *used: the bytes parsed. */
static int resp_feed(resp_t *r, const char *data, size_t n, size_t *used, char *msg, size_t msglen)
{
    size_t u = http_parser_execute(&r->rp_p, &rp_settings, data, n);
    if (used)
        *used = u;
    enum http_errno e = HTTP_PARSER_ERRNO(&r->rp_p);
    if (r->rp_complete)
        return 1;
    if (r->rp_stop) {
        snprintf(msg, msglen, "the answer was refused while it was read");
        return -1;
    }
    if (e != HPE_OK) {
        snprintf(msg, msglen, "malformed HTTP response: %s", r->rp_why ? r->rp_why : http_errno_description(e));
        return -1;
    }
    return 0;
}

struct tg_h1_parse {
    resp_t pp_r;
};

tg_h1_parse_t *tg_h1_parse_new(const tg_h1_handler_t *hh, void *arg)
{
    tg_h1_parse_t *p = tg_calloc(1, sizeof *p);
    if (p)
        resp_init(&p->pp_r, hh, arg);
    return p;
}

int tg_h1_parse_feed(tg_h1_parse_t *p, const char *data, size_t n, char *msg, size_t msglen)
{
    return resp_feed(&p->pp_r, data, n, NULL, msg, msglen);
}

void tg_h1_parse_free(tg_h1_parse_t *p)
{
    if (!p)
        return;
    resp_free(&p->pp_r);
    tg_free(p);
}

/* ---- the client: sites, connections, calls ------------------------------- */

typedef union addr {
    struct sockaddr a_sa;
    struct sockaddr_in a_in4;
    struct sockaddr_in6 a_in6;
} addr_t;

static socklen_t addr_len(const addr_t *a)
{
    return a->a_sa.sa_family == AF_INET6 ? sizeof a->a_in6 : sizeof a->a_in4;
}

typedef struct site {
    char *s_key;                  /* "https://host:port"; NULL: free slot */
    addr_t s_addr[ADDRS];
    int s_naddr;                  /* 0: no address known (or all failed) */
    int64_t s_until_ms;           /* the addresses are good until then */
    SSL_SESSION *s_sess;          /* to resume the next TLS connection */
} site_t;

typedef struct conn conn_t;

struct tg_h1 {
    struct event_base *h_base;
    char *h_ca;
    int h_insecure;
    int h_max_idle;
    SSL_CTX *h_ssl;               /* made on first https use */
    struct evdns_base *h_dns;     /* made on first name to resolve */
    conn_t *h_idle;               /* most recently used first */
    int h_nidle;
    long h_opened;
    site_t h_sites[SITES];
    unsigned h_site_next;
    char h_scratch[SCRATCH];
};

struct conn {
    tg_h1_t *k_h;
    conn_t *k_prev, *k_next;      /* the idle list */
    int k_idle;
    int64_t k_idle_ms;            /* when it went idle */
    struct event k_ev;
    short k_watch;                /* events watched now (EV_READ | EV_WRITE); 0: none */
    int k_fd;
    SSL *k_ssl;
    char *k_key;
    tg_h1_call_t *k_call;         /* NULL while idle */
};

enum { ST_DNS, ST_CONNECT, ST_TLS, ST_SEND, ST_READ };

struct tg_h1_call {
    tg_h1_t *c_h;
    const tg_h1_handler_t *c_hh;
    void *c_arg;
    char *c_key;                  /* "scheme://host:port", then host after its NUL */
    const char *c_host;
    int c_port, c_tls, c_literal;
    char *c_out;                  /* head (plain) or head + body (TLS): kept for a retry until a byte came */
    size_t c_outlen;
    const char *c_body;           /* the caller's (plain only) */
    size_t c_bodylen;
    size_t c_sent;
    int c_body_sent;
    int c_state;
    conn_t *c_conn;
    int c_reused, c_retried, c_got_byte, c_keep;
    int c_broken;                 /* the send failed after the answer began: never pooled */
    struct evdns_getaddrinfo_request *c_dns;
    addr_t c_addr[ADDRS];         /* a name's addresses: the next is tried when a connect fails */
    int c_naddr, c_ai;
    struct event c_timer;
    int64_t c_t0_ms;
    uint32_t c_connect_ms, c_total_ms;
    int c_instart;                /* inside tg_h1_start: failures wait for the loop */
    int c_fail_pending;
    tg_h1_result_t c_fail_res;
    int c_incb, c_cancelled;
    resp_t c_rp;
    char c_msg[MSGLEN];
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static site_t *site_get(tg_h1_t *h, const char *key, int create)
{
    for (int i = 0; i < SITES; i++)
        if (h->h_sites[i].s_key && strcmp(h->h_sites[i].s_key, key) == 0)
            return &h->h_sites[i];
    if (!create)
        return NULL;
    site_t *s = &h->h_sites[h->h_site_next++ % SITES];
    char *k = tg_strdup(key);
    if (!k)
        return NULL;
    tg_free(s->s_key);
    if (s->s_sess)
        SSL_SESSION_free(s->s_sess);
    memset(s, 0, sizeof *s);
    s->s_key = k;
    return s;
}

static void on_conn_ev(evutil_socket_t fd, short what, void *arg);

static void conn_watch(conn_t *k, short what)
{
    if (k->k_watch == what)
        return;
    if (k->k_watch)
        event_del(&k->k_ev);
    k->k_watch = 0;
    if (!what)
        return;
    event_assign(&k->k_ev, k->k_h->h_base, k->k_fd, what | EV_PERSIST, on_conn_ev, k);
    if (event_add(&k->k_ev, NULL) == 0)
        k->k_watch = what;
}

static void idle_unlink(conn_t *k)
{
    tg_h1_t *h = k->k_h;
    if (!k->k_idle)
        return;
    if (k->k_prev)
        k->k_prev->k_next = k->k_next;
    else
        h->h_idle = k->k_next;
    if (k->k_next)
        k->k_next->k_prev = k->k_prev;
    k->k_prev = k->k_next = NULL;
    k->k_idle = 0;
    h->h_nidle--;
}

/* Closes k. `clean`: a healthy close (an idle one dropped, a response that
 * ended without keep-alive): the TLS close_notify goes first, unwaited,
 * because OpenSSL marks a session freed without it not resumable and the
 * next connection to the site would do a full handshake. Not after an
 * error, where the session may be the problem. */
static void conn_close(conn_t *k, int clean)
{
    if (!k)
        return;
    idle_unlink(k);
    conn_watch(k, 0);
    event_del(&k->k_ev); /* an event_active'd one too */
    if (k->k_ssl && clean) {
        ERR_clear_error();
        (void)SSL_shutdown(k->k_ssl); /* one try, never waited for */
        ERR_clear_error();
    }
    if (k->k_ssl)
        SSL_free(k->k_ssl);
    if (k->k_fd >= 0)
        close(k->k_fd);
    tg_free(k->k_key);
    tg_free(k);
}

static void conn_idle(conn_t *k)
{
    tg_h1_t *h = k->k_h;
    k->k_call = NULL;
    while (h->h_nidle >= h->h_max_idle && h->h_idle) {
        conn_t *old = h->h_idle;
        while (old->k_next)
            old = old->k_next;
        conn_close(old, 1);
    }
    k->k_next = h->h_idle;
    if (h->h_idle)
        h->h_idle->k_prev = k;
    h->h_idle = k;
    k->k_idle = 1;
    k->k_idle_ms = mono_ms();
    h->h_nidle++;
    conn_watch(k, EV_READ); /* the server's close shows as readable */
}

/* 1 when idle connection k can carry a request: nothing readable on it.
 * Readable means the server closed it or sent what nobody asked for (an
 * unsolicited 408 before its close must not be read as the next answer).
 * A TLS record that is not data (a session ticket, a key update) is
 * consumed and keeps it. */
static int conn_alive(conn_t *k)
{
    char b;
    if (k->k_ssl && SSL_has_pending(k->k_ssl))
        return 0;
    ssize_t n = recv(k->k_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK;
    if (n == 0 || !k->k_ssl)
        return 0;
    ERR_clear_error();
    int x = SSL_read(k->k_ssl, k->k_h->h_scratch, sizeof k->k_h->h_scratch);
    int alive = x <= 0 && SSL_get_error(k->k_ssl, x) == SSL_ERROR_WANT_READ;
    ERR_clear_error();
    return alive;
}

/* An idle connection became readable. */
static void idle_readable(conn_t *k)
{
    if (!conn_alive(k))
        conn_close(k, 1);
}

enum { DROP, KEEP, CLOSE }; /* a call's connection: closed after an error, pooled, closed cleanly */

/* Frees the call; its connection is dropped, pooled or closed cleanly
 * (conn_close) as `how` says. */
static void call_free(tg_h1_call_t *c, int how)
{
    event_del(&c->c_timer);
    if (c->c_dns) {
        struct evdns_getaddrinfo_request *d = c->c_dns;
        c->c_dns = NULL;
        evdns_getaddrinfo_cancel(d);
    }
    if (c->c_conn) {
        if (how == KEEP)
            conn_idle(c->c_conn);
        else
            conn_close(c->c_conn, how == CLOSE);
    }
    resp_free(&c->c_rp);
    tg_free(c->c_out);
    tg_free(c->c_key);
    tg_free(c);
}

/* Ends the call and tells the caller. Returns 1 (the call is gone, or
 * waits for the loop to end it). */
static int finish(tg_h1_call_t *c, tg_h1_result_t res, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int finish(tg_h1_call_t *c, tg_h1_result_t res, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->c_msg, sizeof c->c_msg, fmt, ap);
    va_end(ap);
    if (c->c_instart) {
        /* no callback from inside tg_h1_start: the loop runs it */
        c->c_fail_pending = 1;
        c->c_fail_res = res;
        event_active(&c->c_timer, EV_TIMEOUT, 1);
        return 1;
    }
    const tg_h1_handler_t *hh = c->c_hh;
    void *arg = c->c_arg;
    char msg[MSGLEN];
    memcpy(msg, c->c_msg, sizeof msg);
    /* an answer that ended before the whole request went (an early 413)
     * may leave a TLS record half written: no close_notify after it */
    call_free(c, res != TG_H1_OK ? DROP : c->c_keep ? KEEP : c->c_body_sent ? CLOSE : DROP);
    hh->hh_done(arg, res, msg);
    return 1;
}

/* Ends a call whose failure waited for the loop (finish inside
 * tg_h1_start). Its message is copied out first: finish formats into
 * c_msg, and a buffer formatted into itself is undefined behaviour. */
static int finish_pending(tg_h1_call_t *c)
{
    char msg[MSGLEN];
    memcpy(msg, c->c_msg, sizeof msg);
    c->c_fail_pending = 0;
    return finish(c, c->c_fail_res, "%s", msg);
}

static void arm(tg_h1_call_t *c)
{
    int64_t el = mono_ms() - c->c_t0_ms;
    int64_t left = c->c_total_ms ? (int64_t)c->c_total_ms - el : INT64_MAX;
    if (c->c_state < ST_SEND && (int64_t)c->c_connect_ms - el < left)
        left = (int64_t)c->c_connect_ms - el;
    if (left == INT64_MAX) {
        event_del(&c->c_timer);
        return;
    }
    if (left < 0)
        left = 0;
    struct timeval tv = {left / 1000, (left % 1000) * 1000};
    evtimer_add(&c->c_timer, &tv);
}

/* The request is not needed again once it went whole and a response byte
 * came (no retry after that). */
static void drop_out(tg_h1_call_t *c)
{
    if (c->c_got_byte && c->c_body_sent) {
        tg_free(c->c_out);
        c->c_out = NULL;
    }
}

static int do_send(tg_h1_call_t *c);
static int do_read(tg_h1_call_t *c);
static int connect_new(tg_h1_call_t *c);

/* The request failed before any response byte: on a reused connection
 * (the server closed it while idle) it goes once more on a new one. */
static int failed_early(tg_h1_call_t *c, tg_h1_result_t res, const char *what)
{
    if (c->c_reused && !c->c_got_byte && !c->c_retried) {
        conn_close(c->c_conn, 0);
        c->c_conn = NULL;
        c->c_reused = 0;
        c->c_retried = 1;
        c->c_sent = 0;
        c->c_body_sent = 0;
        resp_init(&c->c_rp, c->c_hh, c->c_arg);
        return connect_new(c);
    }
    if (c->c_got_byte)
        return finish(c, TG_H1_CUT, "%s after the response began", what);
    return finish(c, res, "%s", what);
}

static int connected(tg_h1_call_t *c);

static int do_tls(tg_h1_call_t *c)
{
    conn_t *k = c->c_conn;
    ERR_clear_error();
    int r = SSL_do_handshake(k->k_ssl);
    if (r == 1) {
        c->c_state = ST_SEND;
        arm(c);
        return do_send(c);
    }
    int e = SSL_get_error(k->k_ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        conn_watch(k, e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE);
        return 0;
    }
    long vr = SSL_get_verify_result(k->k_ssl);
    if ((vr == X509_V_ERR_HOSTNAME_MISMATCH || vr == X509_V_ERR_IP_ADDRESS_MISMATCH) && !c->c_h->h_insecure)
        return finish(c, TG_H1_CONNECT, "SSL certificate problem: %s: the certificate is not for %s",
                      X509_verify_cert_error_string(vr), c->c_host);
    if (vr != X509_V_OK && !c->c_h->h_insecure)
        return finish(c, TG_H1_CONNECT, "SSL certificate problem: %s", X509_verify_cert_error_string(vr));
    unsigned long le = ERR_get_error();
    char es[120] = "the connection closed during the handshake";
    if (le)
        ERR_error_string_n(le, es, sizeof es);
    else if (e == SSL_ERROR_SYSCALL && errno)
        snprintf(es, sizeof es, "%s", strerror(errno));
    return finish(c, TG_H1_CONNECT, "TLS connect error with %s port %d: %s", c->c_host, c->c_port, es);
}

static int new_session(SSL *ssl, SSL_SESSION *sess)
{
    conn_t *k = SSL_get_app_data(ssl);
    site_t *s = k ? site_get(k->k_h, k->k_key, 1) : NULL;
    if (!s)
        return 0;
    if (s->s_sess)
        SSL_SESSION_free(s->s_sess);
    s->s_sess = sess;
    return 1;
}

static SSL_CTX *ssl_ctx(tg_h1_t *h, char *msg, size_t msglen)
{
    if (h->h_ssl)
        return h->h_ssl;
    SSL_CTX *x = SSL_CTX_new(TLS_client_method());
    if (!x) {
        snprintf(msg, msglen, "out of memory for TLS");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(x, TLS1_2_VERSION);
    /* an idle TLS connection frees its record buffers (32+ KB) */
    SSL_CTX_set_mode(x, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* one read takes every record the socket holds, not two reads a record
     * (header, then body); SSL_has_pending covers what it read ahead */
    SSL_CTX_set_read_ahead(x, 1);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    SSL_CTX_set_options(x, SSL_OP_IGNORE_UNEXPECTED_EOF); /* a close without close_notify is an EOF */
#endif
    SSL_CTX_set_session_cache_mode(x, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(x, new_session);
    SSL_CTX_set_verify(x, h->h_insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    int ok = h->h_ca ? SSL_CTX_load_verify_locations(x, h->h_ca, NULL) : SSL_CTX_set_default_verify_paths(x);
    if (ok != 1) {
        snprintf(msg, msglen, "cannot load the upstream CA roots%s%s", h->h_ca ? " from " : "", h->h_ca ? h->h_ca : "");
        ERR_clear_error();
        SSL_CTX_free(x);
        return NULL;
    }
    h->h_ssl = x;
    return x;
}

static int connected(tg_h1_call_t *c)
{
    conn_t *k = c->c_conn;
    if (!c->c_tls) {
        c->c_state = ST_SEND;
        arm(c);
        return do_send(c);
    }
    char msg[MSGLEN];
    SSL_CTX *x = ssl_ctx(c->c_h, msg, sizeof msg);
    if (!x)
        return finish(c, TG_H1_CONNECT, "%s", msg);
    if (!(k->k_ssl = SSL_new(x)) || SSL_set_fd(k->k_ssl, k->k_fd) != 1)
        return finish(c, TG_H1_CONNECT, "out of memory for TLS");
    SSL_set_app_data(k->k_ssl, k);
    if (!c->c_literal)
        SSL_set_tlsext_host_name(k->k_ssl, c->c_host);
    if (!c->c_h->h_insecure) {
        int ok = c->c_literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(k->k_ssl), c->c_host)
                              : SSL_set1_host(k->k_ssl, c->c_host);
        if (ok != 1)
            return finish(c, TG_H1_CONNECT, "cannot check the certificate for host %s", c->c_host);
    }
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_set_alpn_protos(k->k_ssl, alpn, sizeof alpn - 1);
    site_t *s = site_get(c->c_h, c->c_key, 0);
    if (s && s->s_sess)
        SSL_set_session(k->k_ssl, s->s_sess);
    SSL_set_connect_state(k->k_ssl);
    c->c_state = ST_TLS;
    return do_tls(c);
}

static int connect_failed(tg_h1_call_t *c, int e);

static int tcp_connect(tg_h1_call_t *c, const struct sockaddr *sa, socklen_t alen)
{
    int one = 1;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return finish(c, TG_H1_CONNECT, "cannot open a socket: %s", strerror(errno));
    conn_t *k = tg_calloc(1, sizeof *k);
    if (!k || !(k->k_key = tg_strdup(c->c_key))) {
        tg_free(k);
        close(fd);
        return finish(c, TG_H1_CONNECT, "out of memory for a connection");
    }
    k->k_h = c->c_h;
    k->k_fd = fd;
    k->k_call = c;
    event_assign(&k->k_ev, k->k_h->h_base, fd, EV_READ | EV_PERSIST, on_conn_ev, k);
    c->c_conn = k;
    c->c_h->h_opened++;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->c_state = ST_CONNECT;
    if (connect(fd, sa, alen) == 0)
        return connected(c);
    if (errno != EINPROGRESS)
        return connect_failed(c, errno);
    conn_watch(k, EV_WRITE);
    return 0;
}

static int try_addr(tg_h1_call_t *c)
{
    return tcp_connect(c, &c->c_addr[c->c_ai].a_sa, addr_len(&c->c_addr[c->c_ai]));
}

/* A connect failed with errno e: a name's next address is tried; when all
 * failed, the cached ones are forgotten (the next call asks DNS again). */
static int connect_failed(tg_h1_call_t *c, int e)
{
    conn_close(c->c_conn, 0);
    c->c_conn = NULL;
    if (c->c_ai + 1 < c->c_naddr) {
        c->c_ai++;
        return try_addr(c);
    }
    site_t *s = c->c_naddr ? site_get(c->c_h, c->c_key, 0) : NULL;
    if (s)
        s->s_naddr = 0;
    return finish(c, TG_H1_CONNECT, "Failed to connect to %s port %d: %s", c->c_host, c->c_port, strerror(e));
}

static void on_dns(int result, struct evutil_addrinfo *res, void *arg)
{
    if (result == EVUTIL_EAI_CANCEL)
        return; /* call_free cancelled it */
    tg_h1_call_t *c = arg;
    c->c_dns = NULL;
    if (result != 0 || !res) {
        if (res)
            evutil_freeaddrinfo(res);
        finish(c, TG_H1_CONNECT, "Could not resolve host: %s (%s)", c->c_host, evutil_gai_strerror(result));
        return;
    }
    c->c_naddr = c->c_ai = 0;
    for (struct evutil_addrinfo *ai = res; ai && c->c_naddr < ADDRS; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) || ai->ai_addrlen > sizeof(addr_t))
            continue;
        addr_t *a = &c->c_addr[c->c_naddr++];
        memset(a, 0, sizeof *a);
        memcpy(a, ai->ai_addr, ai->ai_addrlen);
        a->a_in4.sin_port = htons((uint16_t)c->c_port); /* same offset in sockaddr_in6 */
    }
    evutil_freeaddrinfo(res);
    if (!c->c_naddr) {
        finish(c, TG_H1_CONNECT, "Could not resolve host: %s (no IPv4 or IPv6 address)", c->c_host);
        return;
    }
    site_t *s = site_get(c->c_h, c->c_key, 1);
    if (s) {
        memcpy(s->s_addr, c->c_addr, sizeof s->s_addr);
        s->s_naddr = c->c_naddr;
        s->s_until_ms = mono_ms() + DNS_TTL_MS;
    }
    try_addr(c);
}

/* A new connection: the address from the literal, the cache, or DNS. */
static int connect_new(tg_h1_call_t *c)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    c->c_state = ST_DNS;
    arm(c);
    if (inet_pton(AF_INET, c->c_host, &s4->sin_addr) == 1 || strcasecmp(c->c_host, "localhost") == 0) {
        if (!c->c_literal)
            s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)c->c_port);
        return tcp_connect(c, (struct sockaddr *)s4, sizeof *s4);
    }
    if (inet_pton(AF_INET6, c->c_host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)c->c_port);
        return tcp_connect(c, (struct sockaddr *)s6, sizeof *s6);
    }
    site_t *s = site_get(c->c_h, c->c_key, 0);
    if (s && s->s_naddr && s->s_until_ms > mono_ms()) {
        memcpy(c->c_addr, s->s_addr, sizeof c->c_addr);
        c->c_naddr = s->s_naddr;
        c->c_ai = 0;
        return try_addr(c);
    }
    if (!c->c_h->h_dns &&
        !(c->c_h->h_dns = evdns_base_new(c->c_h->h_base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                                             EVDNS_BASE_DISABLE_WHEN_INACTIVE)))
        return finish(c, TG_H1_CONNECT, "Could not resolve host: %s (no resolver)", c->c_host);
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
    int instart = c->c_instart;
    c->c_instart = 1; /* a hosts-file answer comes back inside the call */
    c->c_dns = evdns_getaddrinfo(c->c_h->h_dns, c->c_host, NULL, &hints, on_dns, c);
    c->c_instart = instart;
    if (c->c_fail_pending && !instart) {
        event_del(&c->c_timer);
        return finish_pending(c);
    }
    return c->c_fail_pending;
}

static int feed(tg_h1_call_t *c, const char *data, size_t n);

/* The send broke. An upstream may answer early (413, 400) and close
 * before it took the whole body: what it said is the answer, as with
 * libcurl, so what came is read before the send is called failed. */
static int send_failed(tg_h1_call_t *c, const char *what)
{
    conn_t *k = c->c_conn;
    ssize_t n = -1;
    if (!c->c_got_byte) {
        if (k->k_ssl) {
            ERR_clear_error();
            int x = SSL_read(k->k_ssl, c->c_h->h_scratch, SCRATCH);
            n = x > 0 ? x : -1;
            ERR_clear_error();
        } else {
            n = recv(k->k_fd, c->c_h->h_scratch, SCRATCH, MSG_DONTWAIT);
        }
    }
    if (n > 0 && feed(c, c->c_h->h_scratch, (size_t)n))
        return 1;
    if (!c->c_got_byte)
        return failed_early(c, TG_H1_CONNECT, what);
    c->c_broken = 1;
    c->c_state = ST_READ; /* the rest of the answer, to its end or the connection's */
    return do_read(c);
}

static int do_send(tg_h1_call_t *c)
{
    conn_t *k = c->c_conn;
    size_t total = c->c_outlen + (c->c_tls ? 0 : c->c_bodylen);
    while (c->c_sent < total) {
        ssize_t w;
        if (k->k_ssl) {
            ERR_clear_error();
            int r = SSL_write(k->k_ssl, c->c_out + c->c_sent, (int)(c->c_outlen - c->c_sent));
            if (r <= 0) {
                int e = SSL_get_error(k->k_ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    /* an early answer is read meanwhile */
                    conn_watch(k, e == SSL_ERROR_WANT_READ ? EV_READ : EV_READ | EV_WRITE);
                    return 0;
                }
                return send_failed(c, "Send failure over TLS");
            }
            w = r;
        } else {
            struct iovec iov[2];
            int n = 0;
            if (c->c_sent < c->c_outlen)
                iov[n++] = (struct iovec){c->c_out + c->c_sent, c->c_outlen - c->c_sent};
            size_t bs = c->c_sent > c->c_outlen ? c->c_sent - c->c_outlen : 0;
            if (bs < c->c_bodylen)
                iov[n++] = (struct iovec){(char *)c->c_body + bs, c->c_bodylen - bs};
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
            w = sendmsg(k->k_fd, &mh, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    conn_watch(k, EV_READ | EV_WRITE); /* an early answer is read meanwhile */
                    return 0;
                }
                char what[100];
                snprintf(what, sizeof what, "Send failure: %s", strerror(errno));
                return send_failed(c, what);
            }
        }
        c->c_sent += (size_t)w;
    }
    c->c_body_sent = 1;
    drop_out(c);
    c->c_state = ST_READ;
    conn_watch(k, EV_READ);
    return 0;
}

static int on_eof(tg_h1_call_t *c)
{
    char msg[MSGLEN];
    int rc = resp_feed(&c->c_rp, NULL, 0, NULL, msg, sizeof msg);
    if (rc == 1) {
        c->c_keep = 0;
        return do_read(c); /* held bytes first, then the end */
    }
    if (!c->c_got_byte)
        return failed_early(c, TG_H1_CONNECT, "Empty reply from server");
    if (rc < 0 && !c->c_rp.rp_final)
        return finish(c, TG_H1_MALFORMED, "%s", msg);
    return finish(c, TG_H1_CUT, "the connection closed before the response ended");
}

static int feed(tg_h1_call_t *c, const char *data, size_t n)
{
    char msg[MSGLEN];
    size_t used = 0;
    c->c_got_byte = 1; /* no retry from here on */
    drop_out(c);
    c->c_incb = 1;
    int rc = resp_feed(&c->c_rp, data, n, &used, msg, sizeof msg);
    c->c_incb = 0;
    if (c->c_cancelled) {
        call_free(c, DROP);
        return 1;
    }
    if (rc < 0)
        return finish(c, c->c_rp.rp_stop ? TG_H1_ABORTED : TG_H1_MALFORMED, "%s", msg);
    if (rc == 1)
        c->c_keep = used == n && c->c_state == ST_READ && !c->c_broken && http_should_keep_alive(&c->c_rp.rp_p);
    return 0;
}

static int do_read(tg_h1_call_t *c)
{
    conn_t *k = c->c_conn;
    resp_t *r = &c->c_rp;
    if (r->rp_held.b_len && !r->rp_paused) {
        c->c_incb = 1;
        int rc = c->c_hh->hh_body(c->c_arg, r->rp_held.b_data, r->rp_held.b_len);
        c->c_incb = 0;
        if (c->c_cancelled) {
            call_free(c, DROP);
            return 1;
        }
        if (rc == TG_H1_PAUSE)
            r->rp_paused = 1;
        else if (rc != TG_H1_TAKEN)
            return finish(c, TG_H1_ABORTED, "the answer was refused while it was read");
        else
            tg_buf_free(&r->rp_held);
    }
    if (r->rp_paused) {
        conn_watch(k, 0); /* the server's window closes until tg_h1_resume */
        return 0;
    }
    if (r->rp_complete)
        return finish(c, TG_H1_OK, "%s", "");
    if (c->c_state == ST_READ)
        conn_watch(k, EV_READ);
    for (;;) {
        ssize_t n;
        if (k->k_ssl) {
            ERR_clear_error();
            errno = 0;
            int x = SSL_read(k->k_ssl, c->c_h->h_scratch, SCRATCH);
            if (x <= 0) {
                int e = SSL_get_error(k->k_ssl, x);
                if (e == SSL_ERROR_WANT_READ)
                    return 0;
                if (e == SSL_ERROR_WANT_WRITE) {
                    conn_watch(k, EV_READ | EV_WRITE);
                    return 0;
                }
                if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && !ERR_peek_error() && !errno))
                    return on_eof(c);
                unsigned long le = ERR_get_error();
                char es[120] = "connection reset";
                if (le)
                    ERR_error_string_n(le, es, sizeof es);
                else if (errno)
                    snprintf(es, sizeof es, "%s", strerror(errno));
                char what[160];
                snprintf(what, sizeof what, "TLS receive failure: %s", es);
                return failed_early(c, TG_H1_CONNECT, what);
            }
            n = x;
        } else {
            n = recv(k->k_fd, c->c_h->h_scratch, SCRATCH, 0);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return 0;
                char what[100];
                snprintf(what, sizeof what, "Recv failure: %s", strerror(errno));
                return failed_early(c, TG_H1_CONNECT, what);
            }
            if (n == 0)
                return on_eof(c);
        }
        if (feed(c, c->c_h->h_scratch, (size_t)n))
            return 1;
        if (r->rp_complete || r->rp_paused)
            return do_read(c);
        if (!k->k_ssl && (size_t)n < SCRATCH)
            return 0; /* drained: the next bytes come with the next event */
    }
}

static void on_conn_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    conn_t *k = arg;
    tg_h1_call_t *c = k->k_call;
    if (!c) {
        idle_readable(k);
        return;
    }
    switch (c->c_state) {
    case ST_CONNECT: {
        int e = 0;
        socklen_t el = sizeof e;
        if (getsockopt(k->k_fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0)
            e = errno;
        if (e) {
            connect_failed(c, e);
            return;
        }
        connected(c);
        return;
    }
    case ST_TLS:
        do_tls(c);
        return;
    case ST_SEND:
        if ((k->k_ssl || (what & EV_WRITE)) && do_send(c))
            return;
        /* do_send may have failed on a reused connection and gone again on
         * a new one: k can be freed, so only the call's state and c_conn */
        if (c->c_state == ST_SEND && (what & EV_READ))
            do_read(c); /* an answer before the whole body went */
        return;
    default:
        do_read(c);
        return;
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tg_h1_call_t *c = arg;
    if (c->c_fail_pending) {
        finish_pending(c);
        return;
    }
    int64_t el = mono_ms() - c->c_t0_ms;
    if (c->c_state < ST_SEND && (!c->c_total_ms || el < (int64_t)c->c_total_ms))
        finish(c, TG_H1_TIMEOUT, "Connection timed out after %lld milliseconds", (long long)el);
    else
        finish(c, TG_H1_TIMEOUT, "Operation timed out after %lld milliseconds", (long long)el);
}

/* ---- the public calls ------------------------------------------------------- */

int tg_h1_new(struct event_base *base, const tg_h1_opts_t *o, tg_h1_t **out, char *err, size_t errlen)
{
    tg_h1_t *h = tg_calloc(1, sizeof *h);
    if (!h || (o->ho_ca_file && !(h->h_ca = tg_strdup(o->ho_ca_file)))) {
        tg_free(h);
        return tg_errf(err, errlen, -1, "out of memory for the upstream client");
    }
    h->h_base = base;
    h->h_insecure = o->ho_insecure;
    h->h_max_idle = o->ho_max_idle > 0 ? o->ho_max_idle : DEF_MAX_IDLE;
    *out = h;
    return 0;
}

void tg_h1_free(tg_h1_t *h)
{
    if (!h)
        return;
    while (h->h_idle)
        conn_close(h->h_idle, 1);
    for (int i = 0; i < SITES; i++) {
        tg_free(h->h_sites[i].s_key);
        if (h->h_sites[i].s_sess)
            SSL_SESSION_free(h->h_sites[i].s_sess);
    }
    if (h->h_ssl)
        SSL_CTX_free(h->h_ssl);
    if (h->h_dns)
        evdns_base_free(h->h_dns, 0);
    tg_free(h->h_ca);
    tg_free(h);
}

/* Splits an http(s) URL: host (brackets off), port, path. 0 or -1. */
static int split_url(const char *url, int *tls, char *host, size_t hostlen, int *port, const char **path)
{
    const char *p;
    if (strncasecmp(url, "http://", 7) == 0) {
        *tls = 0;
        p = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        *tls = 1;
        p = url + 8;
    } else {
        return -1;
    }
    const char *hs = p, *he;
    if (*p == '[') {
        hs = ++p;
        if (!(he = strchr(p, ']')))
            return -1;
        p = he + 1;
    } else {
        he = p + strcspn(p, ":/?#@");
        p = he;
    }
    if (*p == '@' || he == hs || (size_t)(he - hs) >= hostlen)
        return -1;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    *port = *tls ? 443 : 80;
    if (*p == ':') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v < 1 || v > 65535)
            return -1;
        *port = (int)v;
        p = end;
    }
    if (*p && *p != '/' && *p != '?')
        return -1;
    *path = *p ? p : "/";
    return 0;
}

/* Appends the caller's "Name: value\r\n" lines but those that frame the
 * request, which the client writes itself (a second Content-Length would
 * make the request ambiguous). 0 or -1 (out of memory). */
static int append_fields(tg_buf_t *b, const char *f, size_t n)
{
    static const char *const framing[] = {"host", "content-length", "transfer-encoding", "connection"};
    for (const char *p = f, *end = f + n; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        const char *colon = memchr(p, ':', len);
        size_t namel = colon ? (size_t)(colon - p) : 0;
        int skip = 0;
        for (size_t i = 0; i < sizeof framing / sizeof framing[0] && !skip; i++)
            skip = namel == strlen(framing[i]) && strncasecmp(p, framing[i], namel) == 0;
        if (!skip && tg_buf_append(b, p, len) != 0)
            return -1;
        p += len;
    }
    return 0;
}

int tg_h1_start(tg_h1_t *h, const tg_h1_req_t *r, const tg_h1_handler_t *hh, void *arg, tg_h1_call_t **out,
                char *err, size_t errlen)
{
    char host[256];
    int tls = 0, port = 0;
    const char *path;
    if (split_url(r->hr_url, &tls, host, sizeof host, &port, &path) != 0)
        return tg_errf(err, errlen, -1, "the lean upstream client does not serve the URL %.100s", r->hr_url);
    tg_h1_call_t *c = tg_calloc(1, sizeof *c);
    if (!c)
        return tg_errf(err, errlen, -1, "out of memory starting an upstream call");
    /* an IPv6 literal has a colon, an IPv4 one starts with a digit (a name
     * may too, but most do not): inet_pton only where it can say yes */
    struct in6_addr a6;
    struct in_addr a4;
    int v6 = strchr(host, ':') != NULL && inet_pton(AF_INET6, host, &a6) == 1;
    int literal = v6 || (host[0] >= '0' && host[0] <= '9' && inet_pton(AF_INET, host, &a4) == 1);
    size_t kl = strlen(host) + 32;
    tg_buf_t head;
    tg_buf_init(&head, SIZE_MAX);
    int def = port == (tls ? 443 : 80);
    /* the head's size known closely: one allocation */
    size_t guess = 96 + strlen(path) + kl + r->hr_fields_len + (tls ? r->hr_body_len : 0);
    if (!(c->c_key = tg_malloc(kl * 2)) || tg_buf_reserve(&head, guess) != 0 ||
        tg_buf_puts(&head, r->hr_method ? r->hr_method : "POST") != 0 || tg_buf_puts(&head, " ") != 0 ||
        tg_buf_puts(&head, path) != 0 || tg_buf_puts(&head, " HTTP/1.1\r\nHost: ") != 0 ||
        (v6 && tg_buf_puts(&head, "[") != 0) || tg_buf_puts(&head, host) != 0 || (v6 && tg_buf_puts(&head, "]") != 0) ||
        (!def && (tg_buf_puts(&head, ":") != 0 || tg_buf_putu(&head, (unsigned)port) != 0)) ||
        tg_buf_append(&head, "\r\n", 2) != 0 || append_fields(&head, r->hr_fields, r->hr_fields_len) != 0 ||
        tg_buf_puts(&head, "Content-Length: ") != 0 || tg_buf_putu(&head, r->hr_body_len) != 0 ||
        tg_buf_puts(&head, "\r\n\r\n") != 0 ||
        (tls && tg_buf_append(&head, r->hr_body, r->hr_body_len) != 0)) {
        tg_buf_free(&head);
        tg_free(c->c_key);
        tg_free(c);
        return tg_errf(err, errlen, -1, "out of memory starting an upstream call");
    }
    /* "scheme://host:port", then the host alone (kl: host + 32 each) */
    size_t hl = strlen(host), n = tls ? 8 : 7;
    memcpy(c->c_key, tls ? "https://" : "http://", n);
    memcpy(c->c_key + n, host, hl);
    n += hl;
    c->c_key[n++] = ':';
    n += tg_fmt_u64(c->c_key + n, (unsigned)port);
    memcpy(c->c_key + n + 1, host, hl + 1);
    c->c_host = c->c_key + n + 1;
    c->c_h = h;
    c->c_hh = hh;
    c->c_arg = arg;
    c->c_port = port;
    c->c_tls = tls;
    c->c_literal = literal;
    c->c_out = tg_buf_steal(&head, &c->c_outlen);
    c->c_body = tls ? NULL : r->hr_body;
    c->c_bodylen = tls ? 0 : r->hr_body_len;
    c->c_connect_ms = r->hr_connect_ms ? r->hr_connect_ms : DEF_CONNECT_MS;
    c->c_total_ms = r->hr_total_ms;
    c->c_t0_ms = mono_ms();
    resp_init(&c->c_rp, hh, arg);
    evtimer_assign(&c->c_timer, h->h_base, on_timer, c);
    c->c_instart = 1;
    *out = c;
    /* a pooled connection to the same place, most recently used first */
    int64_t now = mono_ms();
    for (conn_t *k = h->h_idle, *next; k; k = next) {
        next = k->k_next;
        if (strcmp(k->k_key, c->c_key) != 0)
            continue;
        /* bytes OpenSSL already holds never wake the idle watcher: checked
         * always (no system call) */
        if (now - k->k_idle_ms > IDLE_AGE_MS || (k->k_ssl && SSL_has_pending(k->k_ssl)) ||
            (now - k->k_idle_ms >= PEEK_AFTER_MS && !conn_alive(k))) {
            conn_close(k, 1);
        } else {
            idle_unlink(k);
            k->k_call = c;
            c->c_conn = k;
            c->c_reused = 1;
            c->c_state = ST_SEND;
            arm(c);
            do_send(c);
            c->c_instart = 0;
            return 0;
        }
    }
    connect_new(c);
    c->c_instart = 0;
    return 0;
}

void tg_h1_resume(tg_h1_call_t *c)
{
    if (!c || !c->c_rp.rp_paused)
        return;
    c->c_rp.rp_paused = 0;
    if (!c->c_conn)
        return;
    if (c->c_state == ST_SEND)
        conn_watch(c->c_conn, EV_READ | EV_WRITE); /* the pause stopped the send too */
    event_active(&c->c_conn->k_ev, EV_READ, 1);
}

void tg_h1_cancel(tg_h1_call_t *c)
{
    if (!c)
        return;
    if (c->c_incb) {
        c->c_cancelled = 1; /* freed when the callback returns */
        c->c_rp.rp_cancelled = 1; /* and the parser calls nothing more meanwhile */
        return;
    }
    call_free(c, DROP);
}

int tg_h1_body_sent(const tg_h1_call_t *c)
{
    /* a plain request on a reused connection may go again (failed_early)
     * until a response byte came, and that sends the caller's body again */
    return c && c->c_body_sent && (c->c_got_byte || !c->c_reused || c->c_tls);
}

int tg_h1_idle(const tg_h1_t *h)
{
    return h->h_nidle;
}

long tg_h1_opened(const tg_h1_t *h)
{
    return h->h_opened;
}
