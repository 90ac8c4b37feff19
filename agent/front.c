/* front.c: the agent's HTTP/1.1 server side (see front.h for the
 * contract). One front per event loop; every connection is a small
 * struct with three embedded events (read, write, timer) and no buffers
 * while it idles: a request's head and body live in a block allocated at
 * its first byte and freed when its response is written.
 *
 * Reads go through one 64 KiB scratch buffer per loop into http-parser,
 * whose callbacks copy the request line, headers and body out. The read
 * event stays registered for the connection's whole life (no epoll_ctl per
 * request), which is also how a client that hangs up while its answer is
 * prepared is noticed. Writes go straight to the socket; only what the
 * kernel does not take is queued, with a write event until it drains.
 *
 * States: READ (parsing a request), HANDLE (the handler owns the request),
 * ENDED (the handler ended it; its last bytes wait for the flush or the
 * socket), LINGER (an error reply went out; the rest of the client's
 * upload is read and dropped for a moment, so the client reads the reply
 * instead of a reset). A connection is freed only when its socket is
 * closed, the handler does not own it, and no front callback is on the
 * stack for it (c_depth). */
#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* embedded events: no allocation per connection for them (the layout is
 * that of the libevent the agent is built against) */
#include <event2/event_struct.h>

#include "agent/front.h"
#include "base/tg_base.h"
#include "base/tg_log.h"

#define SCRATCH (64u << 10)
#define MAX_HEADERS 128
#define H_INLINE 24                /* headers kept in the request block; SDKs send 10-20 */
#define PIPELINE_MAX (128u << 10) /* bytes read ahead while a request is handled */
#define LINGER_S 2
#define KEEP_OUT (8u << 10)       /* an idle connection keeps an output buffer this small */

enum { ST_READ, ST_HANDLE, ST_ENDED, ST_LINGER };

typedef struct fhdr {
    uint32_t h_name, h_val; /* offsets into r_head, NUL-terminated */
} fhdr_t;

typedef struct freq {
    tg_buf_t r_head;  /* target NUL name NUL value NUL ... */
    uint32_t r_target_len;
    int r_last;       /* last callback: 0 target, 1 header name, 2 header value */
    int r_hdone;      /* the head is complete: later fields are chunked trailers */
    fhdr_t *r_h;      /* r_h_in, or a heap array past H_INLINE headers */
    fhdr_t r_h_in[H_INLINE];
    size_t r_nh, r_caph;
    tg_buf_t r_body;
    int r_taken;      /* the handler took the body */
    tg_buf_t r_ohead; /* response header lines from tg_front_add_header */
} freq_t;

struct tg_front_conn {
    tg_front_t *c_f;
    tg_front_conn_t *c_prev, *c_next; /* all connections of the front */
    tg_front_conn_t *c_fnext;         /* the flush queue */
    int c_fd;
    int c_state;
    int c_depth;       /* front frames on the stack for this connection */
    int c_reject;      /* status of a request refused while parsing */
    const char *c_reject_code;
    const char *c_reject_msg; /* why, when http-parser did not say it */
    const char *c_chk;        /* this feed's bytes up to here passed the framing check */
    unsigned c_cr : 1;        /* the last framing byte was a CR */
    unsigned c_first : 1;     /* no request began yet: the accept armed the head deadline */
    unsigned c_held : 1;      /* the response's end waits for the hook's success (tg_front_hold) */
    uint64_t c_ticket;        /* what the held end waits for (tg_front_hold) */
    int64_t c_body_due_ms;    /* monotonic: the body must be in by then (fo_body_timeout_s) */
    unsigned c_streamed : 1;  /* the response's head went out as a stream */
    size_t c_end_at;          /* c_out offset where the response's end (held back for the flush) starts */
    unsigned c_crlf : 2;      /* bytes of the CR LF still due after a chunk's data */
    unsigned c_gone : 1, c_told : 1, c_keep : 1, c_ready : 1, c_chunked : 1, c_head : 1, c_http10 : 1,
        c_flushq : 1, c_reading : 1, c_linger : 1;
    http_parser c_p;
    freq_t *c_req;
    tg_buf_t c_out;    /* queued output; c_off bytes of it are written */
    size_t c_off;
    tg_buf_t c_in;     /* bytes read ahead while a request was handled */
    size_t c_in_off;   /* c_in bytes already parsed */
    tg_front_event_fn c_on_gone, c_on_drain;
    void *c_ev_arg;
    struct event c_rev, c_wev, c_tev;
    char c_peer[INET6_ADDRSTRLEN];
    struct sockaddr_storage c_addr; /* the peer (the limits' key) */
    int c_counted;     /* counted in the shared limits */
};

struct tg_front {
    struct event_base *f_base;
    tg_front_opts_t f_o;
    int f_lfd;
    struct event *f_lev;       /* the listener */
    struct event *f_pause_ev;  /* accept paused after EMFILE */
    /* The ends of responses: activated by the first end of a loop pass, so
     * it runs after the callbacks already active in the pass (one commit
     * for all of them). Same priority as the rest on purpose: libevent ends
     * a pass as soon as a callback activates a higher-priority event, which
     * made every end its own commit and its own extra epoll_wait. */
    struct event *f_flush_ev;
    const struct timeval *f_tmo; /* common timeout: fo_timeout_s */
    struct timeval f_tmo_plain;  /* the same, if libevent had no common timeout */
    const struct timeval *f_htmo; /* common timeout: fo_head_timeout_s */
    struct timeval f_htmo_plain;
    time_t f_refused_t;          /* over-cap refusals: last log line, and the count since */
    size_t f_refused;
    tg_front_conn_t *f_conns;
    tg_front_conn_t *f_flush, **f_flush_tail;
    size_t f_nconns;
    int f_stopping;
    time_t f_date_t;
    char f_date[40];
    char f_scratch[SCRATCH];
};

static const http_parser_settings settings; /* defined below the callbacks */

/* ---- connection caps (shared by the fronts of all loops) ------------------- */

/* Open connections per peer address in an open-addressing table (linear
 * probing, backward-shift deletion: no tombstones to pile up under churn).
 * The table is sized for twice the total cap, so it never fills while the
 * total cap holds; without a total cap it holds 65,536 addresses and a new
 * address past 3/4 of that is refused. */
typedef struct lim_slot {
    uint8_t ls_addr[16]; /* IPv4 as ::ffff:a.b.c.d */
    uint32_t ls_n;       /* open connections; 0: the slot is free */
} lim_slot_t;

struct tg_front_limits {
    pthread_mutex_t lm_mu;
    size_t lm_max, lm_per_ip;
    size_t lm_open;
    lim_slot_t *lm_tab;
    size_t lm_cap, lm_used; /* slots; slots in use */
};

static void addr_key(const struct sockaddr_storage *ss, uint8_t k[16])
{
    memset(k, 0, 16);
    if (ss->ss_family == AF_INET) {
        k[10] = k[11] = 0xff;
        memcpy(k + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        memcpy(k, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    }
}

static size_t addr_hash(const uint8_t k[16], size_t cap)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 16; i++)
        h = (h ^ k[i]) * 1099511628211ull;
    return (size_t)(h ^ (h >> 29)) & (cap - 1);
}

/* The slot of k, or the free slot where it would go. */
static size_t lim_find(const tg_front_limits_t *l, const uint8_t k[16])
{
    size_t i = addr_hash(k, l->lm_cap);
    while (l->lm_tab[i].ls_n && memcmp(l->lm_tab[i].ls_addr, k, 16) != 0)
        i = (i + 1) & (l->lm_cap - 1);
    return i;
}

int tg_front_limits_create(size_t max_conns, size_t max_per_ip, tg_front_limits_t **out, char *err,
                           size_t errlen)
{
    *out = NULL;
    tg_front_limits_t *l = tg_calloc(1, sizeof *l);
    if (!l)
        return tg_errf(err, errlen, -1, "out of memory");
    l->lm_max = max_conns;
    l->lm_per_ip = max_per_ip;
    if (max_per_ip) {
        size_t want = max_conns && max_conns < (1u << 24) ? max_conns * 2 : 1u << 16;
        l->lm_cap = 64;
        while (l->lm_cap < want)
            l->lm_cap <<= 1;
        if (!(l->lm_tab = tg_calloc(l->lm_cap, sizeof *l->lm_tab))) {
            tg_free(l);
            return tg_errf(err, errlen, -1, "out of memory for the per-address connection table");
        }
    }
    pthread_mutex_init(&l->lm_mu, NULL);
    *out = l;
    return 0;
}

void tg_front_limits_destroy(tg_front_limits_t *l)
{
    if (!l)
        return;
    pthread_mutex_destroy(&l->lm_mu);
    tg_free(l->lm_tab);
    tg_free(l);
}

size_t tg_front_limits_open(tg_front_limits_t *l)
{
    if (!l)
        return 0;
    pthread_mutex_lock(&l->lm_mu);
    size_t n = l->lm_open;
    pthread_mutex_unlock(&l->lm_mu);
    return n;
}

/* Counts a new connection from ss. Returns 0, or the reason it is over a
 * cap (a static string). */
static const char *limits_take(tg_front_limits_t *l, const struct sockaddr_storage *ss)
{
    const char *why = NULL;
    pthread_mutex_lock(&l->lm_mu);
    if (l->lm_max && l->lm_open >= l->lm_max) {
        why = "the gateway's connection cap";
    } else if (l->lm_tab) {
        uint8_t k[16];
        addr_key(ss, k);
        size_t i = lim_find(l, k);
        lim_slot_t *e = &l->lm_tab[i];
        if (e->ls_n >= l->lm_per_ip) {
            why = "the per-address connection cap";
        } else if (!e->ls_n && (l->lm_used + 1) * 4 > l->lm_cap * 3) {
            why = "the per-address table's size";
        } else {
            if (!e->ls_n) {
                memcpy(e->ls_addr, k, 16);
                l->lm_used++;
            }
            e->ls_n++;
        }
    }
    if (!why)
        l->lm_open++;
    pthread_mutex_unlock(&l->lm_mu);
    return why;
}

static void limits_give(tg_front_limits_t *l, const struct sockaddr_storage *ss)
{
    pthread_mutex_lock(&l->lm_mu);
    l->lm_open--;
    if (l->lm_tab) {
        uint8_t k[16];
        addr_key(ss, k);
        size_t i = lim_find(l, k), mask = l->lm_cap - 1;
        if (l->lm_tab[i].ls_n && --l->lm_tab[i].ls_n == 0) {
            /* backward-shift: move later members of the probe run into the hole */
            l->lm_used--;
            size_t j = i;
            for (;;) {
                j = (j + 1) & mask;
                if (!l->lm_tab[j].ls_n)
                    break;
                size_t home = addr_hash(l->lm_tab[j].ls_addr, l->lm_cap);
                /* j may move to i when its home is not in (i, j] */
                if (((j - home) & mask) >= ((j - i) & mask)) {
                    l->lm_tab[i] = l->lm_tab[j];
                    l->lm_tab[j].ls_n = 0;
                    i = j;
                }
            }
        }
    }
    pthread_mutex_unlock(&l->lm_mu);
}

/* ---- lifecycle ------------------------------------------------------------ */

static void req_free(freq_t *r)
{
    if (!r)
        return;
    if (r->r_h != r->r_h_in)
        tg_free(r->r_h);
    tg_buf_free(&r->r_head);
    tg_buf_free(&r->r_body);
    tg_buf_free(&r->r_ohead);
    tg_free(r);
}

static void conn_free(tg_front_conn_t *c)
{
    tg_front_t *f = c->c_f;
    if (c->c_fd >= 0) {
        event_del(&c->c_rev);
        event_del(&c->c_wev);
        close(c->c_fd);
    }
    event_del(&c->c_tev);
    if (c->c_prev)
        c->c_prev->c_next = c->c_next;
    else
        f->f_conns = c->c_next;
    if (c->c_next)
        c->c_next->c_prev = c->c_prev;
    f->f_nconns--;
    if (c->c_counted)
        limits_give(f->f_o.fo_limits, &c->c_addr);
    req_free(c->c_req);
    tg_buf_free(&c->c_out);
    tg_buf_free(&c->c_in);
    tg_free(c);
}

/* Frees c when nothing holds it any more. */
static void conn_release(tg_front_conn_t *c)
{
    if (c->c_depth == 0 && c->c_gone && c->c_state != ST_HANDLE && !c->c_flushq)
        conn_free(c);
}

/* The socket is done (EOF, error, timeout, or we close it). A handler
 * that owns the request hears of it from the timer event, never from
 * inside one of its own calls into the front. */
static void conn_lost(tg_front_conn_t *c)
{
    if (c->c_gone)
        return;
    c->c_gone = 1;
    event_del(&c->c_rev);
    event_del(&c->c_wev);
    event_del(&c->c_tev);
    close(c->c_fd);
    c->c_fd = -1;
    if (c->c_state == ST_HANDLE)
        event_active(&c->c_tev, EV_TIMEOUT, 1);
}

static void arm_timer(tg_front_conn_t *c, const struct timeval *tv)
{
    if (!c->c_gone)
        event_add(&c->c_tev, tv);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A body's timer: the time between reads (fo_timeout_s), but never past
 * the whole body's deadline, which reads do not move. */
static void arm_body_timer(tg_front_conn_t *c)
{
    tg_front_t *f = c->c_f;
    int64_t left = c->c_body_due_ms - mono_ms();
    if (left >= (int64_t)f->f_o.fo_timeout_s * 1000) {
        arm_timer(c, f->f_tmo);
        return;
    }
    if (left < 0)
        left = 0;
    struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
    arm_timer(c, &tv);
}

/* ---- output --------------------------------------------------------------- */

static size_t out_pending(const tg_front_conn_t *c)
{
    return c->c_out.b_len - c->c_off;
}

static void after_write(tg_front_conn_t *c);

/* Writes queued output. Returns 0 (all written, or the rest waits for the
 * write event) or -1 (the connection is lost). */
/* The output timeout runs from the client's last progress: armed when
 * a queue forms and again whenever the client took bytes, not on every
 * write we add (a client that takes nothing is cut even while a stream
 * keeps adding to its queue). */
static void out_timer(tg_front_conn_t *c, int progressed)
{
    if (progressed || !event_pending(&c->c_tev, EV_TIMEOUT, NULL))
        arm_timer(c, c->c_f->f_tmo);
}

static int out_send(tg_front_conn_t *c)
{
    int progressed = 0;
    while (out_pending(c) > 0) {
        ssize_t n = send(c->c_fd, c->c_out.b_data + c->c_off, out_pending(c), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->c_off += (size_t)n;
            progressed = 1;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!event_pending(&c->c_wev, EV_WRITE, NULL))
                event_add(&c->c_wev, NULL);
            out_timer(c, progressed);
            return 0;
        }
        conn_lost(c);
        return -1;
    }
    /* all out: keep a small buffer for the next response, none while a
     * stream is open (it may idle for minutes; its writes go straight to
     * the socket) */
    if (c->c_out.b_cap > KEEP_OUT || (c->c_streamed && c->c_state == ST_HANDLE)) {
        tg_buf_free(&c->c_out);
        tg_buf_init(&c->c_out, SIZE_MAX);
    } else {
        tg_buf_reset(&c->c_out);
    }
    c->c_off = 0;
    if (event_pending(&c->c_wev, EV_WRITE, NULL))
        event_del(&c->c_wev);
    if (c->c_state == ST_HANDLE)
        event_del(&c->c_tev);
    return 0;
}

/* Sends iov now when nothing is queued, queueing what the socket does not
 * take; appends to the queue otherwise. Returns 0 or -1 (lost). */
static int out_writev(tg_front_conn_t *c, struct iovec *iov, int niov)
{
    if (c->c_gone)
        return -1;
    size_t total = 0, done = 0;
    for (int i = 0; i < niov; i++)
        total += iov[i].iov_len;
    if (out_pending(c) == 0) {
        for (;;) {
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
            ssize_t n = sendmsg(c->c_fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n >= 0) {
                done = (size_t)n;
                break;
            }
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_lost(c);
            return -1;
        }
        if (done == total)
            return 0;
    }
    size_t skip = done;
    for (int i = 0; i < niov; i++) {
        size_t l = iov[i].iov_len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        if (tg_buf_append(&c->c_out, (const char *)iov[i].iov_base + skip, l - skip) != 0) {
            TG_LOG(TG_LOG_ERROR, "front", "out of memory queueing %zu bytes for %s: connection closed", l - skip,
                   c->c_peer);
            conn_lost(c);
            return -1;
        }
        skip = 0;
    }
    if (!event_pending(&c->c_wev, EV_WRITE, NULL))
        event_add(&c->c_wev, NULL);
    out_timer(c, done > 0);
    return 0;
}

static void flush_enqueue(tg_front_conn_t *c)
{
    tg_front_t *f = c->c_f;
    if (c->c_flushq)
        return;
    c->c_flushq = 1;
    c->c_fnext = NULL;
    *f->f_flush_tail = c;
    f->f_flush_tail = &c->c_fnext;
    if (f->f_flush == c && !event_pending(f->f_flush_ev, EV_TIMEOUT, NULL))
        event_active(f->f_flush_ev, EV_TIMEOUT, 1);
}

/* ---- input ---------------------------------------------------------------- */

static void dispatch(tg_front_conn_t *c);
static void reject(tg_front_conn_t *c);

/* Appends read-ahead bytes, first dropping what was parsed already. */
static int in_append(tg_front_conn_t *c, const char *p, size_t n)
{
    if (c->c_in_off) {
        memmove(c->c_in.b_data, c->c_in.b_data + c->c_in_off, c->c_in.b_len - c->c_in_off);
        c->c_in.b_len -= c->c_in_off;
        c->c_in_off = 0;
    }
    return tg_buf_append(&c->c_in, p, n);
}

/* The framing bytes (everything but body data) from..to, as strict
 * http-parser would check them: every line ends in CR LF, and a chunk's
 * data is followed by CR LF. Returns 0 or -1 (c_reject set). */
static int check_framing(tg_front_conn_t *c, const char *from, const char *to)
{
    for (const char *p = from; p < to; p++) {
        if (!c->c_crlf && !c->c_cr) {
            /* the bytes between line ends need no look: straight to the
             * next CR or LF */
            while (p < to && *p != '\r' && *p != '\n')
                p++;
            if (p == to)
                break;
        }
        char b = *p;
        const char *bad = NULL;
        if (c->c_crlf == 2)
            bad = b == '\r' ? NULL : "no CR LF after a chunk's data";
        else if (c->c_crlf == 1 || c->c_cr)
            bad = b == '\n' ? NULL : "a CR not followed by LF";
        else if (b == '\n')
            bad = "a line ended by a bare LF (HTTP wants CR LF)";
        if (bad) {
            c->c_reject = 400;
            c->c_reject_code = "malformed_http";
            c->c_reject_msg = bad;
            return -1;
        }
        if (c->c_crlf)
            c->c_crlf--;
        c->c_cr = b == '\r';
    }
    return 0;
}

/* Feeds bytes to the parser: a complete request is dispatched (bytes
 * after it wait in c_in), a malformed one refused. from_in: data is the
 * unparsed part of c_in itself, which is then consumed in place (a deep
 * pipeline is parsed once, not copied once per request). */
static void feed(tg_front_conn_t *c, const char *data, size_t n, int from_in)
{
    c->c_chk = data;
    size_t used = http_parser_execute(&c->c_p, &settings, data, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->c_p);
    if (c->c_gone)
        return; /* e.g. the 100 Continue could not be written */
    if (!c->c_reject && (e == HPE_OK || e == HPE_PAUSED))
        check_framing(c, c->c_chk, data + used);
    if (from_in) {
        c->c_in_off += used;
        if (c->c_in_off == c->c_in.b_len) {
            tg_buf_reset(&c->c_in);
            c->c_in_off = 0;
        }
    }
    if (c->c_reject || (e != HPE_OK && e != HPE_PAUSED)) {
        if (!c->c_reject) {
            c->c_reject = 400;
            c->c_reject_code = "malformed_http";
        }
        reject(c);
        return;
    }
    if (!c->c_ready)
        return; /* more to come */
    if (!from_in && used < n && in_append(c, data + used, n - used) != 0) {
        conn_lost(c);
        return;
    }
    dispatch(c);
}

static int reading_ahead(const tg_front_conn_t *c)
{
    return c->c_state == ST_HANDLE || c->c_state == ST_ENDED;
}

static void read_more(tg_front_conn_t *c)
{
    tg_front_t *f = c->c_f;
    for (int i = 0; i < 16 && !c->c_gone; i++) {
        if (reading_ahead(c) && !c->c_linger && c->c_in.b_len - c->c_in_off >= PIPELINE_MAX) {
            /* a client far ahead of us: stop reading until its request
             * is answered (checked before the read, so the read-ahead
             * never passes PIPELINE_MAX + SCRATCH) */
            event_del(&c->c_rev);
            c->c_reading = 0;
            return;
        }
        ssize_t n = recv(c->c_fd, f->f_scratch, SCRATCH, 0);
        if (n > 0) {
            if (c->c_state == ST_READ) {
                /* A body's timeout runs between reads; a head has one
                 * deadline (armed at its first byte, or at the accept)
                 * that reads do not move: one byte a minute cannot hold
                 * a connection (slowloris). */
                if (c->c_req && c->c_req->r_hdone)
                    arm_body_timer(c);
                feed(c, f->f_scratch, (size_t)n, 0);
            } else if (c->c_state == ST_LINGER || c->c_linger) {
                /* the rest of a refused upload: dropped */
            } else if (in_append(c, f->f_scratch, (size_t)n) != 0) {
                conn_lost(c); /* out of memory: the bytes cannot be kept */
                return;
            }
            if ((size_t)n < SCRATCH)
                return;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        conn_lost(c); /* EOF or error */
        return;
    }
}

/* ---- events --------------------------------------------------------------- */

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tg_front_conn_t *c = arg;
    c->c_depth++;
    read_more(c);
    c->c_depth--;
    conn_release(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tg_front_conn_t *c = arg;
    if (c->c_flushq) {
        /* the end of its response is queued: it goes out with the flush,
         * after the hook, never before */
        event_del(&c->c_wev);
        return;
    }
    c->c_depth++;
    if (out_send(c) == 0 && out_pending(c) == 0)
        after_write(c);
    c->c_depth--;
    conn_release(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tg_front_conn_t *c = arg;
    c->c_depth++;
    if (c->c_gone) {
        if (c->c_state == ST_HANDLE && !c->c_told) {
            c->c_told = 1;
            if (c->c_on_gone)
                c->c_on_gone(c, c->c_ev_arg);
        }
    } else {
        /* idle keep-alive, a request not sent in time, output not taken
         * in time, or the end of a linger */
        conn_lost(c);
        if (c->c_state == ST_HANDLE) {
            c->c_told = 1;
            event_del(&c->c_tev);
            if (c->c_on_gone)
                c->c_on_gone(c, c->c_ev_arg);
        }
    }
    c->c_depth--;
    conn_release(c);
}

static int put_head(tg_front_conn_t *c, int status, long long clen);

/* The hook failed (the usage record is not committed): the held end of
 * c's response is replaced by an error, and the connection closes after
 * it. A stream keeps what went out and gets an error event but no
 * terminating chunk, so the client sees a broken stream, not a short one. */
static void fail_end(tg_front_conn_t *c)
{
    static const char err[] = "{\"error\":{\"message\":\"The gateway could not record this request's usage, so "
                              "it withholds the answer. Try again later.\",\"type\":\"server_error\","
                              "\"param\":null,\"code\":\"usage_not_recorded\"}}";
    c->c_out.b_len = c->c_end_at;
    c->c_keep = 0;
    int rc = 0;
    if (c->c_streamed) {
        char ev[sizeof err + 16];
        int n = snprintf(ev, sizeof ev, "data: %s\n\n", err);
        if (c->c_chunked)
            rc |= tg_buf_printf(&c->c_out, "%x\r\n", n);
        rc |= tg_buf_append(&c->c_out, ev, (size_t)n);
        if (c->c_chunked)
            rc |= tg_buf_append(&c->c_out, "\r\n", 2);
    } else {
        rc |= put_head(c, 503, (long long)(sizeof err));
        rc |= tg_buf_append(&c->c_out, err, sizeof err - 1);
        rc |= tg_buf_append(&c->c_out, "\n", 1);
    }
    TG_LOG(TG_LOG_ERROR, "front", "answer to %s withheld: its usage record is not committed", c->c_peer);
    if (rc)
        conn_lost(c);
}

/* Writes the ends of the responses of this loop iteration, after the
 * before_flush hook (the usage records' commit). */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tg_front_t *f = arg;
    int failed = f->f_o.fo_before_flush && f->f_o.fo_before_flush(f->f_o.fo_flush_arg) != 0;
    /* Only what was queued before the hook ran: a pipelined request
     * answered while this batch is written queues anew and waits for the
     * next run of the hook. */
    tg_front_conn_t *c, *batch = f->f_flush;
    f->f_flush = NULL;
    f->f_flush_tail = &f->f_flush;
    while ((c = batch) != NULL) {
        batch = c->c_fnext;
        c->c_flushq = 0;
        c->c_depth++;
        if (c->c_held && !c->c_gone &&
            (failed || (f->f_o.fo_held_failed && f->f_o.fo_held_failed(f->f_o.fo_flush_arg, c->c_ticket))))
            fail_end(c);
        c->c_held = 0; /* a hold covers one response's end */
        if (!c->c_gone && out_send(c) == 0 && out_pending(c) == 0)
            after_write(c);
        c->c_depth--;
        conn_release(c);
    }
}

static void conn_new(tg_front_t *f, int fd, const struct sockaddr_storage *ss);

static void on_resume_accept(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tg_front_t *f = arg;
    if (!f->f_stopping && f->f_lev)
        event_add(f->f_lev, NULL);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    (void)what;
    tg_front_t *f = arg;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            conn_new(f, fd, &ss);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* out of descriptors: stop accepting for a moment instead of
             * spinning on a listener that stays readable */
            TG_LOG(TG_LOG_WARN, "front", "accept: %s (%zu connections open); pausing accepts 100 ms",
                   strerror(errno), f->f_nconns);
            struct timeval tv = {0, 100000};
            event_del(f->f_lev);
            evtimer_add(f->f_pause_ev, &tv);
        }
        return;
    }
}

static void peer_text(const struct sockaddr_storage *ss, char out[INET6_ADDRSTRLEN])
{
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, out, INET6_ADDRSTRLEN);
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, out, INET6_ADDRSTRLEN);
}

/* A connection over a cap: one best-effort 503, then the close. Logged
 * at most once a second per front, with the count since the last line. */
static void refuse_conn(tg_front_t *f, int fd, const struct sockaddr_storage *ss, const char *why)
{
    static const char body[] = "{\"error\":{\"message\":\"Too many open connections: try again later.\","
                               "\"type\":\"server_error\",\"param\":null,\"code\":\"too_many_connections\"}}\n";
    char msg[300];
    int n = snprintf(msg, sizeof msg,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\nRetry-After: 1\r\n\r\n%s",
                     sizeof body - 1, body);
    if (n > 0 && (size_t)n < sizeof msg && send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* best effort: the close says it too */
    }
    close(fd);
    f->f_refused++;
    struct timeval now;
    event_base_gettimeofday_cached(f->f_base, &now);
    if (now.tv_sec != f->f_refused_t) {
        char peer[INET6_ADDRSTRLEN] = "?";
        peer_text(ss, peer);
        TG_LOG(TG_LOG_WARN, "front", "refused %zu connection(s) over %s (last from %s; %zu open here)",
               f->f_refused, why, peer, f->f_nconns);
        f->f_refused_t = now.tv_sec;
        f->f_refused = 0;
    }
}

static void conn_new(tg_front_t *f, int fd, const struct sockaddr_storage *ss)
{
    const char *why = f->f_o.fo_limits ? limits_take(f->f_o.fo_limits, ss) : NULL;
    if (why) {
        refuse_conn(f, fd, ss, why);
        return;
    }
    tg_front_conn_t *c = tg_calloc(1, sizeof *c);
    if (!c) {
        if (f->f_o.fo_limits)
            limits_give(f->f_o.fo_limits, ss);
        close(fd);
        return;
    }
    c->c_addr = *ss;
    c->c_counted = f->f_o.fo_limits != NULL;
    c->c_f = f;
    c->c_fd = fd;
    c->c_state = ST_READ;
    c->c_keep = 1;
    c->c_first = 1;
    tg_buf_init(&c->c_out, SIZE_MAX);
    tg_buf_init(&c->c_in, PIPELINE_MAX + SCRATCH);
    peer_text(ss, c->c_peer);
    http_parser_init(&c->c_p, HTTP_REQUEST);
    c->c_p.data = c;
    event_assign(&c->c_rev, f->f_base, fd, EV_READ | EV_PERSIST, on_read, c);
    event_assign(&c->c_wev, f->f_base, fd, EV_WRITE | EV_PERSIST, on_write, c);
    evtimer_assign(&c->c_tev, f->f_base, on_timer, c);
    c->c_next = f->f_conns;
    if (f->f_conns)
        f->f_conns->c_prev = c;
    f->f_conns = c;
    f->f_nconns++;
    event_add(&c->c_rev, NULL);
    c->c_reading = 1;
    arm_timer(c, f->f_htmo); /* the first request's head is due within the head deadline of the accept */
}

/* ---- parser callbacks ----------------------------------------------------- */

static freq_t *req_of(http_parser *p)
{
    tg_front_conn_t *c = p->data;
    return c->c_req;
}

static int too_big(http_parser *p)
{
    tg_front_conn_t *c = p->data;
    c->c_reject = 431;
    c->c_reject_code = "request_header_too_large";
    return -1;
}

static int on_begin(http_parser *p)
{
    tg_front_conn_t *c = p->data;
    tg_front_t *f = c->c_f;
    if (!c->c_req) {
        if (!(c->c_req = tg_calloc(1, sizeof *c->c_req))) {
            c->c_reject = 503;
            c->c_reject_code = "out_of_memory";
            return -1;
        }
        c->c_req->r_h = c->c_req->r_h_in;
        c->c_req->r_caph = H_INLINE;
        tg_buf_init(&c->c_req->r_head, f->f_o.fo_max_head);
        tg_buf_init(&c->c_req->r_body, f->f_o.fo_max_body);
        tg_buf_init(&c->c_req->r_ohead, 64u << 10);
        if (c->c_state == ST_READ && !c->c_first)
            arm_timer(c, f->f_htmo); /* a keep-alive request's head: due within the deadline of its first byte */
        c->c_first = 0;
    }
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    return tg_buf_append(&req_of(p)->r_head, at, n) == 0 ? 0 : too_big(p);
}

/* Terminates the target or the header in progress. */
static int close_field(http_parser *p)
{
    freq_t *r = req_of(p);
    tg_buf_t *h = &r->r_head;
    if (r->r_last == 0)
        r->r_target_len = (uint32_t)h->b_len;
    if (r->r_last == 2) {
        /* trailing blanks are not part of a value */
        uint32_t v = r->r_h[r->r_nh - 1].h_val;
        while (h->b_len > v && (h->b_data[h->b_len - 1] == ' ' || h->b_data[h->b_len - 1] == '\t'))
            h->b_len--;
    }
    if (tg_buf_append(h, "", 1) != 0)
        return too_big(p);
    if (r->r_last == 1) { /* a header without a value */
        r->r_h[r->r_nh - 1].h_val = (uint32_t)h->b_len;
        if (tg_buf_append(h, "", 1) != 0)
            return too_big(p);
    }
    return 0;
}

static int on_hfield(http_parser *p, const char *at, size_t n)
{
    freq_t *r = req_of(p);
    if (memchr(at, ' ', n) || memchr(at, '\t', n)) {
        /* "Transfer-Encoding : chunked": lenient http-parser takes it, a
         * proxy in front may not (RFC 9112 5.1: reject) */
        tg_front_conn_t *c = p->data;
        c->c_reject = 400;
        c->c_reject_code = "malformed_http";
        c->c_reject_msg = "whitespace in a header name";
        return -1;
    }
    if (r->r_hdone)
        return 0; /* a chunked trailer: never a request header (a proxy checked only the head) */
    if (r->r_last != 1) {
        if (close_field(p) != 0)
            return -1;
        if (r->r_nh == MAX_HEADERS)
            return too_big(p);
        if (r->r_nh == r->r_caph) {
            size_t cap = r->r_caph * 2 > MAX_HEADERS ? MAX_HEADERS : r->r_caph * 2;
            fhdr_t *h = tg_malloc(cap * sizeof(*h));
            if (!h)
                return too_big(p);
            memcpy(h, r->r_h, r->r_nh * sizeof(*h));
            if (r->r_h != r->r_h_in)
                tg_free(r->r_h);
            r->r_h = h;
            r->r_caph = cap;
        }
        r->r_h[r->r_nh++] = (fhdr_t){(uint32_t)r->r_head.b_len, 0};
        r->r_last = 1;
    }
    return tg_buf_append(&r->r_head, at, n) == 0 ? 0 : too_big(p);
}

static int on_hvalue(http_parser *p, const char *at, size_t n)
{
    freq_t *r = req_of(p);
    if (r->r_hdone)
        return 0;
    if (r->r_last != 2) {
        if (tg_buf_append(&r->r_head, "", 1) != 0)
            return too_big(p);
        r->r_h[r->r_nh - 1].h_val = (uint32_t)r->r_head.b_len;
        r->r_last = 2;
    }
    return tg_buf_append(&r->r_head, at, n) == 0 ? 0 : too_big(p);
}

static int on_headers_done(http_parser *p)
{
    tg_front_conn_t *c = p->data;
    if (close_field(p) != 0)
        return -1;
    c->c_req->r_hdone = 1;
    /* the head is in: the body's timeout runs between reads, within one
     * deadline for the whole body */
    c->c_body_due_ms = mono_ms() + (int64_t)c->c_f->f_o.fo_body_timeout_s * 1000;
    arm_body_timer(c);
    if (p->http_major == 1 && p->http_minor >= 1 && !tg_front_header(c, "Host")) {
        c->c_reject = 400;
        c->c_reject_code = "malformed_http";
        c->c_reject_msg = "an HTTP/1.1 request without Host (RFC 9112 3.2)";
        return -1;
    }
    if (p->content_length != UINT64_MAX && (p->flags & F_CONTENTLENGTH) &&
        p->content_length > c->c_f->f_o.fo_max_body) {
        c->c_reject = 413;
        c->c_reject_code = "request_too_large";
        return -1;
    }
    const char *ex = tg_front_header(c, "Expect");
    if (ex && strcasecmp(ex, "100-continue") == 0 && p->http_major == 1 && p->http_minor >= 1) {
        struct iovec iov = {(void *)"HTTP/1.1 100 Continue\r\n\r\n", 25};
        out_writev(c, &iov, 1);
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    tg_front_conn_t *c = p->data;
    if (check_framing(c, c->c_chk, at) != 0)
        return -1;
    c->c_chk = at + n;
    if ((p->flags & F_CHUNKED) && p->content_length == 0)
        c->c_crlf = 2; /* this chunk's data is all in: CR LF must follow */
    int rc = tg_buf_append(&c->c_req->r_body, at, n);
    if (rc == 0)
        return 0;
    c->c_reject = rc == TG_BUF_ETOOBIG ? 413 : 503;
    c->c_reject_code = rc == TG_BUF_ETOOBIG ? "request_too_large" : "out_of_memory";
    return -1;
}

static int on_complete(http_parser *p)
{
    tg_front_conn_t *c = p->data;
    c->c_ready = 1;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_begin,
    .on_url = on_url,
    .on_header_field = on_hfield,
    .on_header_value = on_hvalue,
    .on_headers_complete = on_headers_done,
    .on_body = on_body,
    .on_message_complete = on_complete,
};

/* ---- requests --------------------------------------------------------------- */

static void dispatch(tg_front_conn_t *c)
{
    tg_front_t *f = c->c_f;
    c->c_ready = 0;
    c->c_state = ST_HANDLE;
    c->c_told = 0;
    c->c_keep = http_should_keep_alive(&c->c_p) && !f->f_stopping;
    c->c_head = c->c_p.method == HTTP_HEAD;
    c->c_http10 = c->c_p.http_major == 1 && c->c_p.http_minor == 0;
    c->c_chunked = 0;
    c->c_held = 0;
    c->c_streamed = 0;
    c->c_on_gone = c->c_on_drain = NULL;
    event_del(&c->c_tev);
    c->c_depth++;
    f->f_o.fo_handler(c, f->f_o.fo_arg);
    c->c_depth--;
}

/* The response is fully written: the next request, or the close. */
static void after_write(tg_front_conn_t *c)
{
    tg_front_t *f = c->c_f;
    if (c->c_state == ST_HANDLE) {
        if (c->c_on_drain)
            c->c_on_drain(c, c->c_ev_arg);
        return;
    }
    if (c->c_state != ST_ENDED)
        return;
    if (c->c_linger) {
        /* an error reply went out mid-upload: read and drop the rest for
         * a moment so the client sees the reply, not a reset */
        c->c_state = ST_LINGER;
        tg_buf_free(&c->c_in);
        c->c_in_off = 0;
        if (!c->c_reading) {
            event_add(&c->c_rev, NULL);
            c->c_reading = 1;
        }
        shutdown(c->c_fd, SHUT_WR);
        struct timeval tv = {LINGER_S, 0};
        arm_timer(c, &tv);
        return;
    }
    if (!c->c_keep || f->f_stopping) {
        conn_lost(c);
        return;
    }
    req_free(c->c_req);
    c->c_req = NULL;
    c->c_state = ST_READ;
    c->c_held = 0; /* the next request starts unheld, even one the front refuses itself */
    http_parser_pause(&c->c_p, 0);
    arm_timer(c, f->f_tmo);
    if (!c->c_reading) {
        event_add(&c->c_rev, NULL);
        c->c_reading = 1;
    }
    if (c->c_in.b_len > c->c_in_off)
        feed(c, c->c_in.b_data + c->c_in_off, c->c_in.b_len - c->c_in_off, 1);
}

/* A request the front refuses itself, in the OpenAI error shape; the
 * connection closes after it. */
static void reject(tg_front_conn_t *c)
{
    int status = c->c_reject ? c->c_reject : 400;
    char msg[300];
    if (status == 413)
        snprintf(msg, sizeof msg, "The request body is larger than this gateway accepts (%zu bytes).",
                 c->c_f->f_o.fo_max_body);
    else if (status == 431)
        snprintf(msg, sizeof msg, "The request head is larger than this gateway accepts (%zu bytes, %d headers).",
                 c->c_f->f_o.fo_max_head, MAX_HEADERS);
    else if (status == 400)
        snprintf(msg, sizeof msg, "Malformed HTTP request: %s.",
                 c->c_reject_msg ? c->c_reject_msg : http_errno_description(HTTP_PARSER_ERRNO(&c->c_p)));
    else
        snprintf(msg, sizeof msg, "The gateway is out of memory.");
    char body[512];
    int n = snprintf(body, sizeof body,
                     "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\",\"param\":null,"
                     "\"code\":\"%s\"}}\n",
                     msg, c->c_reject_code ? c->c_reject_code : "bad_request");
    if (n < 0 || (size_t)n >= sizeof body)
        n = 0;
    TG_LOG(TG_LOG_INFO, "front", "refused a request from %s: %d %s", c->c_peer, status, msg);
    c->c_state = ST_HANDLE;
    c->c_keep = 0;
    c->c_linger = 1;
    c->c_held = 0; /* the front's own refusal waits for no record */
    c->c_head = 0;
    c->c_http10 = 0;
    if (!c->c_req)
        on_begin(&c->c_p);
    if (c->c_req)
        tg_front_add_header(c, "Content-Type", "application/json");
    c->c_depth++;
    tg_front_reply(c, status, body, (size_t)n);
    c->c_depth--;
}

/* ---- the handler's side ------------------------------------------------------- */

const char *tg_front_method(const tg_front_conn_t *c)
{
    return http_method_str((enum http_method)c->c_p.method);
}

const char *tg_front_target(const tg_front_conn_t *c, size_t *len)
{
    *len = c->c_req ? c->c_req->r_target_len : 0;
    return c->c_req && c->c_req->r_head.b_data ? c->c_req->r_head.b_data : "";
}

/* 1 when header i is called name (nl bytes): a name ends one byte (its
 * NUL) before its value begins, so most names are told apart by length
 * alone (a request asks for ~10 names across ~5 headers). */
static int header_is(const freq_t *r, size_t i, const char *name, size_t nl)
{
    const fhdr_t *h = &r->r_h[i];
    return h->h_val > h->h_name && (size_t)(h->h_val - h->h_name - 1) == nl &&
           strncasecmp(r->r_head.b_data + h->h_name, name, nl) == 0;
}

const char *tg_front_header(const tg_front_conn_t *c, const char *name)
{
    const freq_t *r = c->c_req;
    if (!r)
        return NULL;
    size_t nl = strlen(name);
    for (size_t i = 0; i < r->r_nh; i++)
        if (header_is(r, i, name, nl))
            return r->r_head.b_data + r->r_h[i].h_val;
    return NULL;
}

size_t tg_front_header_all(const tg_front_conn_t *c, const char *name, const char **out, size_t max)
{
    const freq_t *r = c->c_req;
    size_t n = 0, nl = strlen(name);
    for (size_t i = 0; r && i < r->r_nh; i++)
        if (header_is(r, i, name, nl)) {
            if (n < max)
                out[n] = r->r_head.b_data + r->r_h[i].h_val;
            n++;
        }
    return n;
}

const char *tg_front_peer(const tg_front_conn_t *c)
{
    return c->c_peer;
}

char *tg_front_body_take(tg_front_conn_t *c, size_t *len)
{
    *len = 0;
    if (!c->c_req)
        return NULL;
    tg_buf_t *b = &c->c_req->r_body;
    if (c->c_req->r_taken)
        return NULL;
    char *p = tg_buf_steal(b, len);
    c->c_req->r_taken = 1;
    if (!p)
        p = tg_strdup("");
    return p;
}

void tg_front_set_events(tg_front_conn_t *c, tg_front_event_fn gone, tg_front_event_fn drain, void *arg)
{
    c->c_on_gone = gone;
    c->c_on_drain = drain;
    c->c_ev_arg = arg;
    if (gone && c->c_gone && !c->c_told)
        event_active(&c->c_tev, EV_TIMEOUT, 1); /* it went before we asked */
}

size_t tg_front_pending(const tg_front_conn_t *c)
{
    return out_pending(c);
}

int tg_front_add_header(tg_front_conn_t *c, const char *name, const char *value)
{
    if (!c->c_req)
        return -1;
    tg_buf_t *o = &c->c_req->r_ohead;
    size_t at = o->b_len;
    /* a response has a handful: one allocation for them, not 64 doubled */
    if (!o->b_cap && tg_buf_reserve(o, 512) != 0)
        return -1;
    if (tg_buf_puts(o, name) || tg_buf_append(o, ": ", 2) || tg_buf_puts(o, value) || tg_buf_append(o, "\r\n", 2)) {
        o->b_len = at;
        return -1;
    }
    for (size_t i = at + strlen(name) + 2; i < o->b_len - 2; i++)
        if (o->b_data[i] == '\r' || o->b_data[i] == '\n')
            o->b_data[i] = ' ';
    return 0;
}

/* The status line and the headers, into the output queue. clen < 0: a
 * stream. */
static int put_head(tg_front_conn_t *c, int status, long long clen)
{
    tg_front_t *f = c->c_f;
    struct timeval now;
    event_base_gettimeofday_cached(f->f_base, &now);
    if (now.tv_sec != f->f_date_t) {
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        strftime(f->f_date, sizeof f->f_date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        f->f_date_t = now.tv_sec;
    }
    const char *reason = http_status_str((enum http_status)status);
    if (!reason || reason[0] == '<')
        reason = "Status";
    tg_buf_t *o = &c->c_out;
    int rc = tg_buf_puts(o, "HTTP/1.1 ");
    rc |= tg_buf_putu(o, (unsigned)status);
    rc |= tg_buf_puts(o, " ");
    rc |= tg_buf_puts(o, reason);
    rc |= tg_buf_puts(o, "\r\nDate: ");
    rc |= tg_buf_puts(o, f->f_date);
    rc |= tg_buf_puts(o, "\r\n");
    if (clen >= 0) {
        rc |= tg_buf_puts(o, "Content-Length: ");
        rc |= tg_buf_putu(o, (unsigned long long)clen);
        rc |= tg_buf_puts(o, "\r\n");
    }
    else if (c->c_chunked)
        rc |= tg_buf_puts(o, "Transfer-Encoding: chunked\r\n");
    if (!c->c_keep)
        rc |= tg_buf_puts(o, "Connection: close\r\n");
    else if (c->c_http10)
        rc |= tg_buf_puts(o, "Connection: keep-alive\r\n");
    if (c->c_req && c->c_req->r_ohead.b_len)
        rc |= tg_buf_append(o, c->c_req->r_ohead.b_data, c->c_req->r_ohead.b_len);
    rc |= tg_buf_append(o, "\r\n", 2);
    return rc ? -1 : 0;
}

/* The handler is done with c. */
static void end_request(tg_front_conn_t *c)
{
    c->c_state = ST_ENDED;
    c->c_on_gone = c->c_on_drain = NULL;
    if (c->c_gone) {
        conn_release(c);
        return;
    }
    flush_enqueue(c);
}

void tg_front_reply(tg_front_conn_t *c, int status, const void *body, size_t len)
{
    c->c_end_at = c->c_out.b_len;
    if (!c->c_gone) {
        if (put_head(c, status, (long long)len) != 0 ||
            (!c->c_head && len && tg_buf_append(&c->c_out, body, len) != 0)) {
            TG_LOG(TG_LOG_ERROR, "front", "out of memory writing a %zu-byte reply to %s", len, c->c_peer);
            conn_lost(c);
        }
    }
    end_request(c);
}

int tg_front_stream_start(tg_front_conn_t *c, int status)
{
    if (c->c_gone)
        return -1;
    c->c_chunked = !c->c_http10;
    c->c_streamed = 1;
    if (c->c_http10)
        c->c_keep = 0; /* the end of the stream is the close */
    if (put_head(c, status, -1) != 0) {
        conn_lost(c);
        return -1;
    }
    /* the head is out: its header lines are not needed again (a stream's
     * failed end keeps the head it sent) */
    if (c->c_req)
        tg_buf_free(&c->c_req->r_ohead);
    return out_send(c);
}

int tg_front_stream_write(tg_front_conn_t *c, const void *data, size_t len)
{
    if (c->c_gone)
        return -1;
    if (len == 0 || c->c_head)
        return 0;
    char size[20];
    int k = snprintf(size, sizeof size, "%zx\r\n", len);
    struct iovec iov[3] = {{size, (size_t)k}, {(void *)data, len}, {(void *)"\r\n", 2}};
    if (!c->c_chunked)
        return out_writev(c, &iov[1], 1);
    return out_writev(c, iov, 3);
}

void tg_front_stream_end(tg_front_conn_t *c, const void *tail, size_t len)
{
    c->c_end_at = c->c_out.b_len;
    if (!c->c_gone && !c->c_head) {
        int rc = 0;
        if (len && c->c_chunked)
            rc |= tg_buf_putx(&c->c_out, len) | tg_buf_puts(&c->c_out, "\r\n");
        if (len)
            rc |= tg_buf_append(&c->c_out, tail, len);
        if (len && c->c_chunked)
            rc |= tg_buf_append(&c->c_out, "\r\n", 2);
        if (c->c_chunked)
            rc |= tg_buf_append(&c->c_out, "0\r\n\r\n", 5);
        if (rc)
            conn_lost(c);
    }
    end_request(c);
}

void tg_front_hold(tg_front_conn_t *c, uint64_t ticket)
{
    c->c_held = 1;
    c->c_ticket = ticket;
}

void tg_front_abandon(tg_front_conn_t *c)
{
    conn_lost(c);
    end_request(c);
}

/* ---- the front ------------------------------------------------------------------ */

int tg_front_create(struct event_base *base, int listen_fd, const tg_front_opts_t *o, tg_front_t **out,
                    char *err, size_t errlen)
{
    *out = NULL;
    tg_front_t *f = tg_calloc(1, sizeof *f);
    if (!f) {
        close(listen_fd);
        return tg_errf(err, errlen, -1, "out of memory");
    }
    f->f_base = base;
    f->f_o = *o;
    if (!f->f_o.fo_max_head)
        f->f_o.fo_max_head = 64u << 10;
    if (f->f_o.fo_timeout_s <= 0)
        f->f_o.fo_timeout_s = 120;
    f->f_lfd = listen_fd;
    f->f_flush_tail = &f->f_flush;
    f->f_tmo_plain = (struct timeval){f->f_o.fo_timeout_s, 0};
    f->f_tmo = event_base_init_common_timeout(base, &f->f_tmo_plain);
    if (!f->f_tmo)
        f->f_tmo = &f->f_tmo_plain;
    if (f->f_o.fo_head_timeout_s <= 0)
        f->f_o.fo_head_timeout_s = 30;
    if (f->f_o.fo_body_timeout_s <= 0)
        f->f_o.fo_body_timeout_s = 300;
    f->f_htmo_plain = (struct timeval){f->f_o.fo_head_timeout_s, 0};
    f->f_htmo = event_base_init_common_timeout(base, &f->f_htmo_plain);
    if (!f->f_htmo)
        f->f_htmo = &f->f_htmo_plain;
    if (!(f->f_lev = event_new(base, listen_fd, EV_READ | EV_PERSIST, on_accept, f)) ||
        !(f->f_pause_ev = evtimer_new(base, on_resume_accept, f)) ||
        !(f->f_flush_ev = event_new(base, -1, 0, on_flush, f)) || event_add(f->f_lev, NULL) != 0) {
        tg_front_destroy(f);
        return tg_errf(err, errlen, -1, "out of memory creating the HTTP front");
    }
    *out = f;
    return 0;
}

void tg_front_stop_accepting(tg_front_t *f)
{
    if (!f || f->f_stopping)
        return;
    f->f_stopping = 1;
    if (f->f_lev) {
        event_free(f->f_lev);
        f->f_lev = NULL;
    }
    evtimer_del(f->f_pause_ev);
    if (f->f_lfd >= 0) {
        close(f->f_lfd);
        f->f_lfd = -1;
    }
    /* idle connections close now; a connection with a request on its way
     * in is served, then closed */
    tg_front_conn_t *c = f->f_conns, *next;
    for (; c; c = next) {
        next = c->c_next;
        if (c->c_state == ST_READ && !c->c_req) {
            conn_lost(c);
            conn_release(c);
        } else {
            c->c_keep = 0;
        }
    }
}

void tg_front_destroy(tg_front_t *f)
{
    if (!f)
        return;
    while (f->f_conns) {
        f->f_conns->c_depth = 0;
        f->f_conns->c_state = ST_ENDED;
        conn_free(f->f_conns);
    }
    if (f->f_lev)
        event_free(f->f_lev);
    if (f->f_pause_ev)
        event_free(f->f_pause_ev);
    if (f->f_flush_ev)
        event_free(f->f_flush_ev);
    if (f->f_lfd >= 0)
        close(f->f_lfd);
    tg_free(f);
}

size_t tg_front_nconns(const tg_front_t *f)
{
    return f ? f->f_nconns : 0;
}
