/* mockllm: an HTTP/1.1 server that behaves like the OpenAI and Anthropic
 * APIs (answers, streams, usage and failures) so the gateway's tests and
 * benchmarks run offline and deterministically. See README.md for the
 * endpoints, the scenario language and the token formula.
 *
 * Design: libevent's loop with raw non-blocking sockets and evbuffers, not
 * evhttp and not bufferevents: reads and writes happen at once in the
 * callback that produced them ("eager writes"), so a request costs one
 * read() and one write() and the emulator stays far cheaper than anything
 * it measures. --threads N runs N loops, each with its own SO_REUSEPORT
 * listener. Shared state (recorded requests, per-key counters for
 * fail-first) sits behind one mutex, touched once per request. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/thread.h>

#include "base/tg_base.h"
#include "tools/mockllm/mockllm.h"

/* ---- configuration and shared state -------------------------------------- */

#define HEAD_MAX (64 * 1024) /* request line + headers */
#define MAX_HDRS 64
#define MAX_KEYS 4096 /* distinct scenario keys counted; later keys share the last slot */

/* A recorded request, kept raw (one copy, no formatting on the hot path)
 * and rendered as JSON only when GET /_mock/requests asks. */
typedef struct rec {
    char r_key[TG_MOCK_KEY_MAX];
    char r_id[32];
    long r_ordinal;
    long r_at_ms;
    size_t r_head_len;  /* request line and headers */
    size_t r_body_len;  /* body bytes received */
    size_t r_body_kept; /* of which kept (--record-body-max) */
    char r_bytes[];     /* head, then the kept body */
} rec_t;

typedef struct keyctr {
    char k_key[TG_MOCK_KEY_MAX];
    long k_count; /* requests received with this key */
} keyctr_t;

#define MAX_MODEL_SCN 32

/* --model-scenario MODEL=S: the listener scenario for one model. */
typedef struct model_scn {
    char ms_model[TG_MOCK_MODEL_MAX];
    tg_mock_scn_t ms_scn; /* listener defaults with S applied */
} model_scn_t;

typedef struct srv {
    const char *sv_host;
    int sv_port;
    int sv_threads;
    tg_mock_scn_t sv_scn;      /* listener defaults (--scenario) */
    model_scn_t sv_model_scn[MAX_MODEL_SCN]; /* --model-scenario, applied over sv_scn */
    int sv_nmodel_scn;
    const char *sv_api_key;    /* --api-key: the only accepted key, or NULL = any */
    long sv_record_max;        /* --record-max */
    size_t sv_record_body_max; /* --record-body-max */
    size_t sv_max_body;        /* --max-body */
    long sv_idle_close_ms;     /* --idle-close: silently close keep-alive connections idle this long */
    pthread_mutex_t sv_mu;     /* guards everything below */
    rec_t **sv_recs;           /* ring of sv_record_max entries (NULL = empty slot) */
    long sv_rec_next;          /* total entries ever recorded */
    unsigned long sv_rec_seq;
    keyctr_t *sv_keys;
    int sv_nkeys;
    long sv_total;
    struct timespec sv_t0;
} srv_t;

typedef struct worker worker_t;
typedef struct conn conn_t;

struct worker {
    srv_t *w_srv;
    int w_idx;
    int w_lfd;
    struct event_base *w_base;
    struct event w_accept;
    pthread_t w_thread;
    unsigned long w_seq; /* requests answered, for ids */
    conn_t *w_conns;     /* open connections, freed at shutdown */
};

/* A header of a request, as offsets into its head. */
typedef struct hdr {
    size_t h_name, h_nlen, h_val, h_vlen;
} hdr_t;

/* A parsed request head; offsets point into hd_base. */
typedef struct head {
    const char *hd_base;
    size_t hd_len;
    hdr_t hd_hdrs[MAX_HDRS];
    int hd_n;
    size_t hd_meth_len, hd_target, hd_target_len;
    int hd_minor; /* HTTP/1.x */
} head_t;

enum { ST_HEAD = 0, ST_BODY, ST_CHUNKED };

struct conn {
    worker_t *c_w;
    conn_t *c_prev, *c_next;
    int c_fd;
    struct event c_rev, c_wev, c_timer;
    struct evbuffer *c_in, *c_out, *c_tmp;
    int c_state;
    int c_busy;        /* a request is being answered (timers pending or hung) */
    int c_close_after; /* close once c_out drains */
    /* the request being read */
    tg_buf_t c_head;   /* request line and headers, copied out of c_in */
    head_t c_h;
    int c_keepalive;
    size_t c_clen;
    tg_buf_t c_chunked; /* a decoded chunked body */
    long c_chunk_left;  /* bytes left in the current chunk; -1 = expecting a size line */
    /* the answer being produced */
    tg_mock_req_t c_rq;
    tg_mock_scn_t c_scn;
    tg_mock_gen_t c_gen;
    char c_id[32];
    int c_stream;
    long c_step, c_steps;
    int c_waited;      /* the delay before c_step has passed */
    int c_held;        /* c_out holds an answer that waits for c_timer */
    int c_in_process;  /* process_input is on the stack */
    int c_dead;        /* closed while c_in_process: destroy on the way out */
    long c_ordinal;    /* the request's ordinal within its scenario key */
};

static srv_t g_srv;
static worker_t *g_workers;

static long now_ms(const srv_t *s) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - s->sv_t0.tv_sec) * 1000 + (t.tv_nsec - s->sv_t0.tv_nsec) / 1000000;
}

/* ---- connection lifetime -------------------------------------------------- */

static void conn_destroy(conn_t *c) {
    worker_t *w = c->c_w;
    event_del(&c->c_rev);
    event_del(&c->c_wev);
    event_del(&c->c_timer);
    close(c->c_fd);
    evbuffer_free(c->c_in);
    evbuffer_free(c->c_out);
    evbuffer_free(c->c_tmp);
    tg_buf_free(&c->c_head);
    tg_buf_free(&c->c_chunked);
    if (c->c_prev) c->c_prev->c_next = c->c_next;
    else w->w_conns = c->c_next;
    if (c->c_next) c->c_next->c_prev = c->c_prev;
    tg_free(c);
}

/* Closes the connection; inside process_input the free waits until it
 * unwinds (a request body still points into c_in). */
static void conn_free(conn_t *c) {
    if (c->c_in_process) {
        c->c_dead = 1;
        event_del(&c->c_rev);
        event_del(&c->c_wev);
        event_del(&c->c_timer);
        return;
    }
    conn_destroy(c);
}

/* Writes what c_out holds now. Returns 0, or -1 when the connection was
 * closed and freed (the caller must not touch c again). */
static int conn_flush(conn_t *c) {
    while (evbuffer_get_length(c->c_out) > 0) {
        int n = evbuffer_write(c->c_out, c->c_fd);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                event_add(&c->c_wev, NULL);
                return 0;
            }
            conn_free(c);
            return -1;
        }
    }
    event_del(&c->c_wev);
    if (c->c_close_after) {
        conn_free(c);
        return -1;
    }
    return 0;
}

static int process_input(conn_t *c);
static void arm(conn_t *c, long ms);

/* The answer is complete: go on with pipelined requests. Returns like
 * conn_flush. */
static int answer_done(conn_t *c) {
    c->c_busy = 0;
    if (!c->c_keepalive) c->c_close_after = 1;
    else if (c->c_w->w_srv->sv_idle_close_ms > 0) arm(c, c->c_w->w_srv->sv_idle_close_ms);
    if (conn_flush(c) < 0) return -1;
    return c->c_in_process ? 0 : process_input(c);
}

/* ---- request helpers ------------------------------------------------------ */

/* The value of header `name` (any case), or NULL; *len gets its length. */
static const char *header_of(const head_t *hd, const char *name, size_t *len) {
    size_t nl = strlen(name);
    for (int i = 0; i < hd->hd_n; i++) {
        const hdr_t *h = &hd->hd_hdrs[i];
        if (h->h_nlen == nl && strncasecmp(hd->hd_base + h->h_name, name, nl) == 0) {
            *len = h->h_vlen;
            return hd->hd_base + h->h_val;
        }
    }
    *len = 0;
    return NULL;
}

static const char *header(const conn_t *c, const char *name, size_t *len) {
    return header_of(&c->c_h, name, len);
}

static int token_eq(const char *v, size_t n, const char *want) {
    return strlen(want) == n && strncasecmp(v, want, n) == 0;
}

/* Parses the head b[0..len) (ending with the blank line). Returns 0 or -1
 * (malformed). */
static int parse_head(head_t *hd, const char *b, size_t len) {
    const char *end = b + len, *p, *eol;
    hd->hd_base = b;
    hd->hd_len = len;
    eol = memchr(b, '\r', len);
    if (!eol) return -1;
    p = memchr(b, ' ', (size_t)(eol - b));
    if (!p || p == b) return -1;
    hd->hd_meth_len = (size_t)(p - b);
    hd->hd_target = hd->hd_meth_len + 1;
    p = memchr(b + hd->hd_target, ' ', (size_t)(eol - b - (long)hd->hd_target));
    if (!p) return -1;
    hd->hd_target_len = (size_t)(p - b) - hd->hd_target;
    if (eol - p != 9 || memcmp(p + 1, "HTTP/1.", 7) != 0) return -1;
    hd->hd_minor = p[8] - '0';
    hd->hd_n = 0;
    p = eol + 2;
    while (p < end && *p != '\r') {
        const char *colon, *v, *ve;
        hdr_t *h;
        eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol) return -1;
        colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon || colon == p) return -1;
        if (hd->hd_n == MAX_HDRS) return -1;
        v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t')) v++;
        ve = eol;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        h = &hd->hd_hdrs[hd->hd_n++];
        h->h_name = (size_t)(p - b);
        h->h_nlen = (size_t)(colon - p);
        h->h_val = (size_t)(v - b);
        h->h_vlen = (size_t)(ve - v);
        p = eol + 2;
    }
    return 0;
}

/* ---- responses ------------------------------------------------------------ */

static int is_anthropic_path(const char *path, size_t n) {
    return n >= 12 && memcmp(path, "/v1/messages", 12) == 0;
}

/* Appends a status line and headers to c_out; clen < 0 means chunked. */
static void head(conn_t *c, int status, const char *ctype, long clen, const char *extra) {
    struct evbuffer *o = c->c_out;
    evbuffer_add_printf(o, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nx-request-id: req_%s\r\n"
                           "request-id: req_%s\r\n",
                        status, tg_mock_reason(status), ctype, c->c_id, c->c_id);
    if (c->c_ordinal > 0) evbuffer_add_printf(o, "x-mock-ordinal: %ld\r\n", c->c_ordinal);
    if (extra) evbuffer_add(o, extra, strlen(extra));
    if (!c->c_keepalive) {
        static const char cc[] = "Connection: close\r\n";
        evbuffer_add(o, cc, sizeof cc - 1);
    }
    if (clen >= 0) evbuffer_add_printf(o, "Content-Length: %ld\r\n\r\n", clen);
    else {
        static const char te[] = "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n";
        evbuffer_add(o, te, sizeof te - 1);
    }
}

/* Moves c_tmp into c_out behind a full head. */
static void reply_tmp(conn_t *c, int status, const char *extra) {
    head(c, status, "application/json", (long)evbuffer_get_length(c->c_tmp), extra);
    evbuffer_add_buffer(c->c_out, c->c_tmp);
}

static void reply_error(conn_t *c, int anthropic, int status, const char *msg, const char *extra) {
    char rid[40];
    snprintf(rid, sizeof rid, "req_%s", c->c_id);
    evbuffer_drain(c->c_tmp, evbuffer_get_length(c->c_tmp));
    tg_mock_write_error(c->c_tmp, anthropic, status, msg, rid);
    reply_tmp(c, status, extra);
}

/* Moves c_tmp into c_out as one HTTP chunk. */
static void chunk_tmp(conn_t *c) {
    size_t n = evbuffer_get_length(c->c_tmp);
    if (n == 0) return;
    evbuffer_add_printf(c->c_out, "%zx\r\n", n);
    evbuffer_add_buffer(c->c_out, c->c_tmp);
    evbuffer_add(c->c_out, "\r\n", 2);
}

/* ---- recording and counters ---------------------------------------------- */

/* Counts a request for its key; returns its 1-based ordinal within the key. */
static long count_request(srv_t *s, const char *key) {
    long n;
    int i;
    pthread_mutex_lock(&s->sv_mu);
    for (i = 0; i < s->sv_nkeys; i++)
        if (strcmp(s->sv_keys[i].k_key, key) == 0) break;
    if (i == s->sv_nkeys) {
        if (s->sv_nkeys < MAX_KEYS) {
            snprintf(s->sv_keys[i].k_key, TG_MOCK_KEY_MAX, "%s", key);
            s->sv_keys[i].k_count = 0;
            s->sv_nkeys++;
        } else {
            i = MAX_KEYS - 1;
        }
    }
    n = ++s->sv_keys[i].k_count;
    s->sv_total++;
    pthread_mutex_unlock(&s->sv_mu);
    return n;
}

/* Keeps a raw copy of the request in the ring (rendered on GET). */
static void record(conn_t *c, const char *body, size_t blen, long ordinal) {
    srv_t *s = c->c_w->w_srv;
    size_t keep = blen < s->sv_record_body_max ? blen : s->sv_record_body_max;
    rec_t *r, *old;
    if (s->sv_record_max <= 0) return;
    r = tg_malloc(sizeof *r + c->c_h.hd_len + keep);
    if (!r) return;
    snprintf(r->r_key, sizeof r->r_key, "%s", c->c_scn.sc_key);
    snprintf(r->r_id, sizeof r->r_id, "%s", c->c_id);
    r->r_ordinal = ordinal;
    r->r_at_ms = now_ms(s);
    r->r_head_len = c->c_h.hd_len;
    r->r_body_len = blen;
    r->r_body_kept = keep;
    memcpy(r->r_bytes, c->c_h.hd_base, c->c_h.hd_len);
    if (keep) memcpy(r->r_bytes + c->c_h.hd_len, body, keep);
    pthread_mutex_lock(&s->sv_mu);
    old = s->sv_recs[s->sv_rec_next % s->sv_record_max];
    s->sv_recs[s->sv_rec_next % s->sv_record_max] = r;
    s->sv_rec_next++;
    pthread_mutex_unlock(&s->sv_mu);
    tg_free(old);
}

/* Appends the JSON entry of a recorded request. */
static void render(struct evbuffer *e, const rec_t *r) {
    head_t hd;
    const char *t;
    size_t qmark;
    if (parse_head(&hd, r->r_bytes, r->r_head_len) < 0) return; /* parsed before: can't fail */
    t = hd.hd_base + hd.hd_target;
    for (qmark = 0; qmark < hd.hd_target_len && t[qmark] != '?'; qmark++) {}
    evbuffer_add_printf(e, "{\"id\":\"req_%s\",\"key\":", r->r_id);
    tg_mock_json_str(e, r->r_key, strlen(r->r_key));
    evbuffer_add_printf(e, ",\"ordinal\":%ld,\"at_ms\":%ld,\"method\":", r->r_ordinal, r->r_at_ms);
    tg_mock_json_str(e, hd.hd_base, hd.hd_meth_len);
    evbuffer_add_printf(e, ",\"path\":");
    tg_mock_json_str(e, t, qmark);
    evbuffer_add_printf(e, ",\"headers\":{");
    for (int i = 0; i < hd.hd_n; i++) {
        char name[128];
        const hdr_t *h = &hd.hd_hdrs[i];
        size_t nl = h->h_nlen < sizeof name ? h->h_nlen : sizeof name - 1;
        for (size_t k = 0; k < nl; k++) {
            char ch = hd.hd_base[h->h_name + k];
            name[k] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        }
        if (i) evbuffer_add(e, ",", 1);
        tg_mock_json_str(e, name, nl);
        evbuffer_add(e, ":", 1);
        tg_mock_json_str(e, hd.hd_base + h->h_val, h->h_vlen);
    }
    evbuffer_add_printf(e, "},\"body_bytes\":%zu,\"body\":", r->r_body_len);
    tg_mock_json_str(e, r->r_bytes + r->r_head_len, r->r_body_kept);
    evbuffer_add(e, "}", 1);
}

/* Reads query parameter "key" of target into out (percent-decoded). Returns
 * 1 when present. */
static int query_key(const char *t, size_t n, char *out, size_t outlen) {
    const char *q = memchr(t, '?', n), *end = t + n;
    if (!q) return 0;
    for (const char *p = q + 1; p < end;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if (e - p >= 4 && memcmp(p, "key=", 4) == 0) {
            size_t o = 0;
            for (const char *x = p + 4; x < e && o + 1 < outlen; x++) {
                if (*x == '%' && e - x >= 3) {
                    char hx[3] = {x[1], x[2], 0};
                    out[o++] = (char)strtol(hx, NULL, 16);
                    x += 2;
                } else {
                    out[o++] = *x == '+' ? ' ' : *x;
                }
            }
            out[o] = '\0';
            return 1;
        }
        p = e + 1;
    }
    return 0;
}

static void admin_requests(conn_t *c, int del) {
    srv_t *s = c->c_w->w_srv;
    char key[TG_MOCK_KEY_MAX];
    int has_key = query_key(c->c_h.hd_base + c->c_h.hd_target, c->c_h.hd_target_len, key, sizeof key);
    long count = 0, first;
    int n = 0;
    pthread_mutex_lock(&s->sv_mu);
    if (has_key) {
        for (int i = 0; i < s->sv_nkeys; i++)
            if (strcmp(s->sv_keys[i].k_key, key) == 0) {
                count = s->sv_keys[i].k_count;
                if (del) s->sv_keys[i].k_count = 0;
            }
    } else {
        count = s->sv_total;
        if (del) {
            s->sv_nkeys = 0;
            s->sv_total = 0;
        }
    }
    evbuffer_add_printf(c->c_tmp, "{\"count\":%ld,\"requests\":[", count);
    first = s->sv_record_max > 0 && s->sv_rec_next > s->sv_record_max
                ? s->sv_rec_next - s->sv_record_max : 0;
    for (long i = first; i < s->sv_rec_next; i++) {
        rec_t **slot = &s->sv_recs[i % s->sv_record_max];
        if (!*slot || (has_key && strcmp((*slot)->r_key, key) != 0)) continue;
        if (del) {
            tg_free(*slot);
            *slot = NULL;
            continue;
        }
        if (n++) evbuffer_add(c->c_tmp, ",", 1);
        render(c->c_tmp, *slot);
    }
    pthread_mutex_unlock(&s->sv_mu);
    evbuffer_add_printf(c->c_tmp, "]}");
    reply_tmp(c, 200, NULL);
}

/* ---- answering ------------------------------------------------------------ */

static void on_timer(evutil_socket_t fd, short ev, void *arg);

static void arm(conn_t *c, long ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(&c->c_timer, &tv);
}

/* Delay before stream step `step`: TTFT before the preamble (which goes out
 * with the first token), the inter-token delay between tokens. */
static long step_delay(const conn_t *c, long step) {
    if (step == 0) return c->c_scn.sc_ttft_ms;
    if (step >= 2 && step < c->c_steps - 1) return c->c_scn.sc_itl_ms;
    return 0;
}

/* Writes stream steps until a delay or the end. Returns like conn_flush. */
static int stream_pump(conn_t *c) {
    while (c->c_step < c->c_steps) {
        long d = step_delay(c, c->c_step);
        if (d > 0 && !c->c_waited) {
            c->c_waited = 1;
            arm(c, d);
            return conn_flush(c);
        }
        c->c_waited = 0;
        if (c->c_scn.sc_disconnect >= 0 && c->c_step == c->c_scn.sc_disconnect + 1) {
            /* Cut mid-stream: no final chunk, the connection just ends. */
            c->c_close_after = 1;
            return conn_flush(c);
        }
        if (c->c_scn.sc_error_after >= 0 && c->c_step == c->c_scn.sc_error_after + 1) {
            /* The provider's in-stream error event, then a clean end. */
            tg_mock_write_stream_error(c->c_tmp, &c->c_gen, c->c_step);
            chunk_tmp(c);
            break;
        }
        tg_mock_write_step(c->c_tmp, &c->c_gen, c->c_step);
        chunk_tmp(c);
        c->c_step++;
    }
    evbuffer_add(c->c_out, "0\r\n\r\n", 5);
    return answer_done(c);
}

/* Writes the whole non-streaming answer (after its delay). */
static int finish_json(conn_t *c) {
    tg_mock_write_json(c->c_tmp, &c->c_gen);
    if (c->c_scn.sc_disconnect >= 0) {
        /* Announce the full length, send half, then close. */
        size_t n = evbuffer_get_length(c->c_tmp);
        head(c, 200, "application/json", (long)n, NULL);
        evbuffer_remove_buffer(c->c_tmp, c->c_out, n / 2);
        evbuffer_drain(c->c_tmp, evbuffer_get_length(c->c_tmp));
        c->c_close_after = 1;
        return conn_flush(c);
    }
    reply_tmp(c, 200, NULL);
    return answer_done(c);
}

static void on_timer(evutil_socket_t fd, short ev, void *arg) {
    conn_t *c = arg;
    (void)fd;
    (void)ev;
    if (!c->c_busy) {
        /* --idle-close: drop the idle keep-alive connection without a word,
         * the race a pooling client must survive. */
        conn_free(c);
        return;
    }
    if (c->c_held) {
        c->c_held = 0;
        answer_done(c);
    } else if (c->c_stream) {
        if (c->c_busy == 2) {
            /* the latency passed: send the head, then the stream */
            c->c_busy = 1;
            head(c, 200, "text/event-stream; charset=utf-8", -1, NULL);
        }
        stream_pump(c);
    } else {
        finish_json(c);
    }
}

/* Routes the request in c_head + body. Returns like conn_flush. */
static int dispatch(conn_t *c, const char *body, size_t blen) {
    srv_t *s = c->c_w->w_srv;
    const char *m = c->c_h.hd_base, *t = c->c_h.hd_base + c->c_h.hd_target, *v;
    size_t plen, vn;
    int anth, post, get, del, rc;
    char err[TG_ERRLEN] = "", scan_err[TG_ERRLEN] = "";
    long ordinal, delay;
    int scan_rc;

    event_del(&c->c_timer); /* an idle-close timer from the previous answer */
    for (plen = 0; plen < c->c_h.hd_target_len && t[plen] != '?'; plen++) {}
    post = c->c_h.hd_meth_len == 4 && memcmp(m, "POST", 4) == 0;
    get = c->c_h.hd_meth_len == 3 && memcmp(m, "GET", 3) == 0;
    del = c->c_h.hd_meth_len == 6 && memcmp(m, "DELETE", 6) == 0;
    anth = is_anthropic_path(t, plen);
    snprintf(c->c_id, sizeof c->c_id, "mock%02x%08lx", c->c_w->w_idx & 0xff, ++c->c_w->w_seq);
    c->c_ordinal = 0;

#define PATH_IS(lit) (plen == sizeof(lit) - 1 && memcmp(t, lit, plen) == 0)
    /* -- admin -- */
    if (PATH_IS("/_mock/health")) {
        evbuffer_add_printf(c->c_tmp, "{\"ok\":true}");
        reply_tmp(c, 200, NULL);
        return answer_done(c);
    }
    if (PATH_IS("/_mock/requests") && (get || del)) {
        admin_requests(c, del);
        return answer_done(c);
    }

    /* -- which endpoint -- */
    tg_mock_proto_t proto;
    if (PATH_IS("/v1/chat/completions") && post) proto = TG_MOCK_CHAT;
    else if (PATH_IS("/v1/messages") && post) proto = TG_MOCK_MESSAGES;
    else if (PATH_IS("/v1/messages/count_tokens") && post) proto = TG_MOCK_COUNT;
    else if (PATH_IS("/v1/responses") && post) proto = TG_MOCK_RESPONSES;
    else if (PATH_IS("/v1/embeddings") && post) proto = TG_MOCK_EMBEDDINGS;
    else if (PATH_IS("/v1/images/generations") && post) proto = TG_MOCK_IMAGES;
    else if (PATH_IS("/v1/models") && get) proto = TG_MOCK_MODELS;
    else {
        snprintf(err, sizeof err, "mockllm: no route for %.*s %.*s", (int)c->c_h.hd_meth_len, m,
                 (int)plen, t);
        reply_error(c, anth, 404, err, NULL);
        return answer_done(c);
    }
#undef PATH_IS

    /* -- the body, scanned first: a --model-scenario depends on the model -- */
    memset(&c->c_rq, 0, sizeof c->c_rq);
    c->c_rq.rq_n = 1;
    c->c_rq.rq_max_tokens = -1;
    scan_rc = post ? tg_mock_scan(body ? body : "", blen, &c->c_rq, scan_err, sizeof scan_err) : 0;

    /* -- scenario: listener defaults, the model's, then the header -- */
    c->c_scn = s->sv_scn;
    for (int i = 0; scan_rc == 0 && i < s->sv_nmodel_scn; i++)
        if (strcmp(s->sv_model_scn[i].ms_model, c->c_rq.rq_model) == 0)
            c->c_scn = s->sv_model_scn[i].ms_scn;
    v = header(c, "x-mock-scenario", &vn);
    if (v && tg_mock_scn_parse(&c->c_scn, v, vn, err, sizeof err) < 0) {
        reply_error(c, anth, 400, err, NULL);
        return answer_done(c);
    }
    if (c->c_scn.sc_close) c->c_keepalive = 0;
    ordinal = count_request(s, c->c_scn.sc_key);
    record(c, body, blen, ordinal);
    c->c_ordinal = ordinal;

    /* -- credentials -- */
    {
        size_t an, kn;
        const char *auth = header(c, "authorization", &an), *xk = header(c, "x-api-key", &kn);
        int ok = auth != NULL || xk != NULL;
        if (ok && s->sv_api_key) {
            size_t kl = strlen(s->sv_api_key);
            ok = (xk && kn == kl && memcmp(xk, s->sv_api_key, kl) == 0) ||
                 (auth && an == kl + 7 && strncasecmp(auth, "Bearer ", 7) == 0 &&
                  memcmp(auth + 7, s->sv_api_key, kl) == 0);
        }
        if (!ok) {
            reply_error(c, anth, 401,
                        auth || xk ? "Incorrect API key provided."
                                   : "You didn't provide an API key (Authorization: Bearer or x-api-key).",
                        NULL);
            return answer_done(c);
        }
    }
    if (anth && !header(c, "anthropic-version", &vn)) {
        reply_error(c, 1, 400, "anthropic-version: header is required", NULL);
        return answer_done(c);
    }

    /* -- the body -- */
    if (scan_rc < 0) {
        reply_error(c, anth, 400, scan_err, NULL);
        return answer_done(c);
    }
    if (post && proto != TG_MOCK_MODELS && !c->c_rq.rq_has_model) {
        reply_error(c, anth, 400, anth ? "model: Field required" : "you must provide a model parameter",
                    NULL);
        return answer_done(c);
    }

    /* -- scripted failures -- */
    delay = c->c_scn.sc_latency_ms;
    if (c->c_scn.sc_hang) {
        c->c_busy = 1; /* never answered; freed when the client hangs up */
        return 0;
    }
    if (c->c_scn.sc_status != 0 && c->c_scn.sc_status != 200 &&
        (c->c_scn.sc_fail_first == 0 || ordinal <= c->c_scn.sc_fail_first)) {
        char hdrs[320] = "";
        int st = c->c_scn.sc_status;
        long ra = c->c_scn.sc_retry_after_ms;
        size_t hl = 0;
        if (ra >= 0)
            hl = (size_t)snprintf(hdrs, sizeof hdrs, "retry-after: %ld\r\nretry-after-ms: %ld\r\n",
                                  (ra + 999) / 1000, ra);
        if (c->c_scn.sc_location[0])
            snprintf(hdrs + hl, sizeof hdrs - hl, "location: %s\r\n", c->c_scn.sc_location);
        snprintf(err, sizeof err, "mockllm: scripted failure %d (request %ld of key '%s')", st,
                 ordinal, c->c_scn.sc_key);
        reply_error(c, anth, st, err, hdrs);
        if (delay > 0) {
            /* The error waits in c_out (nothing flushes a busy connection). */
            c->c_busy = 1;
            c->c_held = 1;
            arm(c, delay);
            return 0;
        }
        return answer_done(c);
    }

    /* -- success -- */
    memset(&c->c_gen, 0, sizeof c->c_gen);
    c->c_gen.gn_proto = proto;
    c->c_gen.gn_id = c->c_id;
    c->c_gen.gn_model = c->c_rq.rq_model;
    c->c_gen.gn_req = &c->c_rq;
    c->c_gen.gn_scn = &c->c_scn;
    c->c_gen.gn_created = (long)time(NULL);
    c->c_gen.gn_anthropic = header(c, "anthropic-version", &vn) != NULL;
    tg_mock_plan(&c->c_rq, &c->c_scn, &c->c_gen.gn_plan);
    c->c_stream = c->c_rq.rq_stream && !c->c_scn.sc_ignore_stream &&
                  (proto == TG_MOCK_CHAT || proto == TG_MOCK_MESSAGES || proto == TG_MOCK_RESPONSES);
    c->c_step = 0;
    c->c_waited = 0;
    if (c->c_stream) {
        c->c_steps = tg_mock_stream_steps(&c->c_gen);
        if (delay > 0) {
            c->c_busy = 2; /* the head waits for the latency */
            arm(c, delay);
            return 0;
        }
        c->c_busy = 1;
        head(c, 200, "text/event-stream; charset=utf-8", -1, NULL);
        rc = stream_pump(c);
        return rc;
    }
    {
        long toks = c->c_gen.gn_plan.pl_output;
        if (proto == TG_MOCK_CHAT || proto == TG_MOCK_MESSAGES || proto == TG_MOCK_RESPONSES)
            delay += c->c_scn.sc_ttft_ms + (toks > 1 ? (toks - 1) * c->c_scn.sc_itl_ms : 0);
    }
    if (delay > 0) {
        c->c_busy = 1;
        arm(c, delay);
        return 0;
    }
    return finish_json(c);
}

/* ---- reading -------------------------------------------------------------- */

/* Decodes as much of a chunked body as c_in holds. Returns 1 when complete,
 * 0 when more bytes are needed, -1 on a malformed or oversized body. */
static int read_chunked(conn_t *c) {
    for (;;) {
        if (c->c_chunk_left < 0) {
            size_t n;
            char line[32], *end;
            struct evbuffer_ptr p = evbuffer_search_eol(c->c_in, NULL, &n, EVBUFFER_EOL_CRLF);
            if (p.pos < 0) return evbuffer_get_length(c->c_in) > 1024 ? -1 : 0;
            if ((size_t)p.pos >= sizeof line) return -1;
            evbuffer_remove(c->c_in, line, (size_t)p.pos);
            evbuffer_drain(c->c_in, n);
            line[p.pos] = '\0';
            errno = 0;
            long sz = strtol(line, &end, 16);
            if (end == line || errno || sz < 0) return -1;
            if (sz == 0) {
                /* trailers: expect the final CRLF (no trailer support) */
                c->c_chunk_left = -2;
            } else {
                c->c_chunk_left = sz;
            }
        }
        if (c->c_chunk_left == -2) {
            if (evbuffer_get_length(c->c_in) < 2) return 0;
            evbuffer_drain(c->c_in, 2);
            return 1;
        }
        size_t have = evbuffer_get_length(c->c_in);
        size_t take = have < (size_t)c->c_chunk_left ? have : (size_t)c->c_chunk_left;
        if (take > 0) {
            if (tg_buf_append(&c->c_chunked, evbuffer_pullup(c->c_in, (ssize_t)take), take) < 0)
                return -1;
            evbuffer_drain(c->c_in, take);
            c->c_chunk_left -= (long)take;
        }
        if (c->c_chunk_left > 0) return 0;
        if (evbuffer_get_length(c->c_in) < 2) {
            c->c_chunk_left = 0; /* wait for the CRLF after the data */
            return 0;
        }
        evbuffer_drain(c->c_in, 2);
        c->c_chunk_left = -1;
    }
}

/* Fails the connection with a plain HTTP error and closes it. */
static int fatal(conn_t *c, int status, const char *msg) {
    c->c_keepalive = 0;
    c->c_close_after = 1;
    if (!c->c_id[0]) snprintf(c->c_id, sizeof c->c_id, "mock%02x%08lx", c->c_w->w_idx & 0xff, 0UL);
    reply_error(c, 0, status, msg, NULL);
    return conn_flush(c);
}

static int process_loop(conn_t *c, srv_t *s);

/* Handles every complete request in c_in, until one needs to wait. */
static int process_input(conn_t *c) {
    srv_t *s = c->c_w->w_srv;
    int rc = 0;
    c->c_in_process = 1;
    rc = process_loop(c, s);
    c->c_in_process = 0;
    if (c->c_dead) {
        conn_destroy(c);
        return -1;
    }
    return rc;
}

static int process_loop(conn_t *c, srv_t *s) {
    while (!c->c_busy && !c->c_close_after) {
        if (c->c_state == ST_HEAD) {
            struct evbuffer_ptr p = evbuffer_search(c->c_in, "\r\n\r\n", 4, NULL);
            size_t v;
            const char *te, *ex, *cl;
            if (p.pos < 0) {
                /* Skip blank lines between requests, as RFC 9112 allows. */
                while (evbuffer_get_length(c->c_in) >= 2 &&
                       memcmp(evbuffer_pullup(c->c_in, 2), "\r\n", 2) == 0)
                    evbuffer_drain(c->c_in, 2);
                if (evbuffer_get_length(c->c_in) > HEAD_MAX)
                    return fatal(c, 431, "request headers too large");
                return 0;
            }
            tg_buf_reset(&c->c_head);
            if (tg_buf_append(&c->c_head, evbuffer_pullup(c->c_in, p.pos + 4), (size_t)p.pos + 4) < 0)
                return fatal(c, 431, "request headers too large");
            evbuffer_drain(c->c_in, (size_t)p.pos + 4);
            if (parse_head(&c->c_h, c->c_head.b_data, c->c_head.b_len) < 0)
                return fatal(c, 400, "malformed HTTP request");
            c->c_keepalive = c->c_h.hd_minor >= 1;
            te = header(c, "transfer-encoding", &v);
            if (te && token_eq(te, v, "chunked")) {
                c->c_state = ST_CHUNKED;
                c->c_chunk_left = -1;
                tg_buf_reset(&c->c_chunked);
            } else {
                cl = header(c, "content-length", &v);
                c->c_clen = 0;
                if (cl) {
                    char num[24], *end;
                    if (v == 0 || v >= sizeof num) return fatal(c, 400, "bad Content-Length");
                    memcpy(num, cl, v);
                    num[v] = '\0';
                    errno = 0;
                    long long n = strtoll(num, &end, 10);
                    if (*end || errno || n < 0) return fatal(c, 400, "bad Content-Length");
                    if ((unsigned long long)n > s->sv_max_body)
                        return fatal(c, 413, "request body too large");
                    c->c_clen = (size_t)n;
                }
                c->c_state = ST_BODY;
            }
            {
                const char *conn_h = header(c, "connection", &v);
                if (conn_h && token_eq(conn_h, v, "close")) c->c_keepalive = 0;
                if (conn_h && token_eq(conn_h, v, "keep-alive")) c->c_keepalive = 1;
            }
            ex = header(c, "expect", &v);
            if (ex && token_eq(ex, v, "100-continue")) {
                evbuffer_add(c->c_out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                if (conn_flush(c) < 0) return -1;
            }
        }
        if (c->c_state == ST_CHUNKED) {
            int r = read_chunked(c);
            if (r < 0) return fatal(c, 400, "malformed or oversized chunked body");
            if (r == 0) return 0;
            c->c_state = ST_HEAD;
            if (dispatch(c, c->c_chunked.b_data, c->c_chunked.b_len) < 0 || c->c_dead) return -1;
            continue;
        }
        if (evbuffer_get_length(c->c_in) < c->c_clen) return 0;
        {
            const char *body = c->c_clen ? (const char *)evbuffer_pullup(c->c_in, (ssize_t)c->c_clen) : NULL;
            size_t n = c->c_clen;
            c->c_state = ST_HEAD;
            /* dispatch reads the body synchronously; drain it afterwards (a
             * closed connection is only destroyed when process_input unwinds). */
            int r = dispatch(c, body, n);
            evbuffer_drain(c->c_in, n);
            if (r < 0 || c->c_dead) return -1;
        }
    }
    return 0;
}

static void on_read(evutil_socket_t fd, short ev, void *arg) {
    conn_t *c = arg;
    srv_t *s = c->c_w->w_srv;
    (void)ev;
    /* read() straight into reserved space: evbuffer_read would ask
     * FIONREAD first, one more system call per request. */
    for (int i = 0; i < 8; i++) {
        struct evbuffer_iovec v;
        ssize_t n;
        if (evbuffer_reserve_space(c->c_in, 65536, &v, 1) < 1) {
            conn_free(c);
            return;
        }
        n = read(fd, v.iov_base, v.iov_len);
        if (n == 0) {
            conn_free(c); /* the client hung up (also ends a hang) */
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            conn_free(c);
            return;
        }
        v.iov_len = (size_t)n;
        evbuffer_commit_space(c->c_in, &v, 1);
        if ((size_t)n < 65536) break;
    }
    if (!c->c_busy) event_del(&c->c_timer); /* a request is arriving: not idle */
    if (c->c_busy) {
        /* Pipelined bytes wait; stop reading if a client floods a busy connection. */
        if (evbuffer_get_length(c->c_in) > s->sv_max_body + HEAD_MAX) event_del(&c->c_rev);
        return;
    }
    process_input(c);
}

static void on_write(evutil_socket_t fd, short ev, void *arg) {
    conn_t *c = arg;
    (void)fd;
    (void)ev;
    conn_flush(c);
}

static void on_accept(evutil_socket_t lfd, short ev, void *arg) {
    worker_t *w = arg;
    (void)ev;
    for (int i = 0; i < 64; i++) {
        int one = 1, fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        conn_t *c;
        if (fd < 0) return; /* EAGAIN, or EMFILE: try again on the next wakeup */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c = tg_calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->c_w = w;
        c->c_fd = fd;
        c->c_in = evbuffer_new();
        c->c_out = evbuffer_new();
        c->c_tmp = evbuffer_new();
        tg_buf_init(&c->c_head, HEAD_MAX);
        tg_buf_init(&c->c_chunked, w->w_srv->sv_max_body);
        c->c_next = w->w_conns;
        if (w->w_conns) w->w_conns->c_prev = c;
        w->w_conns = c;
        event_assign(&c->c_rev, w->w_base, fd, EV_READ | EV_PERSIST, on_read, c);
        event_assign(&c->c_wev, w->w_base, fd, EV_WRITE | EV_PERSIST, on_write, c);
        evtimer_assign(&c->c_timer, w->w_base, on_timer, c);
        if (!c->c_in || !c->c_out || !c->c_tmp) {
            conn_free(c);
            continue;
        }
        event_add(&c->c_rev, NULL);
    }
}

/* ---- startup -------------------------------------------------------------- */

static void *worker_main(void *arg) {
    worker_t *w = arg;
    event_base_dispatch(w->w_base);
    return NULL;
}

static void on_signal(evutil_socket_t sig, short ev, void *arg) {
    (void)sig;
    (void)ev;
    (void)arg;
    for (int i = 0; i < g_srv.sv_threads; i++) event_base_loopexit(g_workers[i].w_base, NULL);
}

/* Opens a socket bound to host:port; listens unless `refuse`. Returns the
 * fd or a negative code with the reason in err. */
static int open_listener(const char *host, int port, int reuseport, int refuse, char *err,
                         size_t errlen) {
    struct sockaddr_in a;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return tg_errf(err, errlen, TG_MOCK_ESYS, "socket: %s", strerror(errno));
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        close(fd);
        return tg_errf(err, errlen, TG_MOCK_EUSAGE, "--host %s: not an IPv4 address", host);
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || (!refuse && listen(fd, 4096) < 0)) {
        int e = errno;
        close(fd);
        return tg_errf(err, errlen, TG_MOCK_ESYS, "bind/listen %s:%d: %s", host, port, strerror(e));
    }
    return fd;
}

static int bound_port(int fd) {
    struct sockaddr_in a;
    socklen_t l = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &l) < 0) return -1;
    return ntohs(a.sin_port);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: mockllm [--host 127.0.0.1] [--port 0] [--threads 1] [--scenario S]\n"
            "               [--model-scenario MODEL=S]...\n"
            "               [--api-key K] [--record-max 1000] [--record-body-max 1048576]\n"
            "               [--max-body 67108864] [--idle-close MS] [--refuse]\n"
            "Prints 'mockllm listening on HOST:PORT' (or 'mockllm refusing on HOST:PORT'\n"
            "with --refuse: the port is bound but never accepts) as its first line.\n"
            "See tools/mockllm/README.md for endpoints and scenarios.\n");
}

static int parse_long(const char *v, long lo, long hi, long *out) {
    char *end;
    long x;
    errno = 0;
    x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

int main(int argc, char **argv) {
    srv_t *s = &g_srv;
    char err[TG_ERRLEN] = "";
    int refuse = 0, rc = 1, port;
    long v;
    struct event *sigint = NULL, *sigterm = NULL;

    memset(s, 0, sizeof *s);
    s->sv_host = "127.0.0.1";
    s->sv_threads = 1;
    s->sv_record_max = 1000;
    s->sv_record_body_max = 1 << 20;
    s->sv_max_body = 64u << 20;
    tg_mock_scn_init(&s->sv_scn);
    clock_gettime(CLOCK_MONOTONIC, &s->sv_t0);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int need = 1;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--refuse") == 0) {
            refuse = 1;
            need = 0;
        } else if (!val) {
            fprintf(stderr, "mockllm: %s needs a value\n", a);
            usage(stderr);
            return 2;
        } else if (strcmp(a, "--host") == 0) {
            s->sv_host = val;
        } else if (strcmp(a, "--port") == 0 && parse_long(val, 0, 65535, &v) == 0) {
            s->sv_port = (int)v;
        } else if (strcmp(a, "--threads") == 0 && parse_long(val, 1, 64, &v) == 0) {
            s->sv_threads = (int)v;
        } else if (strcmp(a, "--scenario") == 0) {
            if (tg_mock_scn_parse(&s->sv_scn, val, strlen(val), err, sizeof err) < 0) {
                fprintf(stderr, "mockllm: --scenario: %s\n", err);
                return 2;
            }
        } else if (strcmp(a, "--model-scenario") == 0) {
            const char *eq = strchr(val, '=');
            model_scn_t *ms = &s->sv_model_scn[s->sv_nmodel_scn];
            if (!eq || eq == val || (size_t)(eq - val) >= TG_MOCK_MODEL_MAX ||
                s->sv_nmodel_scn == MAX_MODEL_SCN) {
                fprintf(stderr, "mockllm: --model-scenario wants MODEL=SCENARIO (at most %d)\n",
                        MAX_MODEL_SCN);
                return 2;
            }
            snprintf(ms->ms_model, sizeof ms->ms_model, "%.*s", (int)(eq - val), val);
            ms->ms_scn = s->sv_scn; /* so put --scenario first to combine them */
            if (tg_mock_scn_parse(&ms->ms_scn, eq + 1, strlen(eq + 1), err, sizeof err) < 0) {
                fprintf(stderr, "mockllm: --model-scenario: %s\n", err);
                return 2;
            }
            s->sv_nmodel_scn++;
        } else if (strcmp(a, "--api-key") == 0) {
            s->sv_api_key = val;
        } else if (strcmp(a, "--record-max") == 0 && parse_long(val, 0, 10000000, &v) == 0) {
            s->sv_record_max = v;
        } else if (strcmp(a, "--record-body-max") == 0 && parse_long(val, 0, 1L << 30, &v) == 0) {
            s->sv_record_body_max = (size_t)v;
        } else if (strcmp(a, "--idle-close") == 0 && parse_long(val, 0, 86400000L, &v) == 0) {
            s->sv_idle_close_ms = v;
        } else if (strcmp(a, "--max-body") == 0 && parse_long(val, 0, 1L << 31, &v) == 0) {
            s->sv_max_body = (size_t)v;
        } else {
            fprintf(stderr, "mockllm: bad option or value: %s %s\n", a, val);
            usage(stderr);
            return 2;
        }
        i += need;
    }
    signal(SIGPIPE, SIG_IGN);

    if (refuse) {
        /* A bound socket that never listens: connects get ECONNREFUSED, and no
         * other process can take the port while we hold it. */
        int fd = open_listener(s->sv_host, s->sv_port, 0, 1, err, sizeof err);
        sigset_t set;
        int sig;
        if (fd < 0) {
            fprintf(stderr, "mockllm: %s\n", err);
            return 1;
        }
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        printf("mockllm refusing on %s:%d\n", s->sv_host, bound_port(fd));
        fflush(stdout);
        sigwait(&set, &sig);
        close(fd);
        return 0;
    }

    if (evthread_use_pthreads() < 0) {
        fprintf(stderr, "mockllm: evthread_use_pthreads failed\n");
        return 1;
    }
    pthread_mutex_init(&s->sv_mu, NULL);
    s->sv_recs = s->sv_record_max > 0 ? tg_calloc((size_t)s->sv_record_max, sizeof(rec_t *)) : NULL;
    s->sv_keys = tg_calloc(MAX_KEYS, sizeof(keyctr_t));
    g_workers = tg_calloc((size_t)s->sv_threads, sizeof(worker_t));
    if ((s->sv_record_max > 0 && !s->sv_recs) || !s->sv_keys || !g_workers) {
        fprintf(stderr, "mockllm: out of memory\n");
        goto fail;
    }
    port = s->sv_port;
    for (int i = 0; i < s->sv_threads; i++) {
        worker_t *w = &g_workers[i];
        w->w_srv = s;
        w->w_idx = i;
        w->w_lfd = open_listener(s->sv_host, port, s->sv_threads > 1, 0, err, sizeof err);
        if (w->w_lfd < 0) {
            fprintf(stderr, "mockllm: %s\n", err);
            goto fail;
        }
        if (i == 0) port = bound_port(w->w_lfd);
        {
            /* Precise timers (timerfd): itl=1 must mean 1 ms, not epoll's
             * rounded-up millisecond plus scheduling slack. */
            struct event_config *cfg = event_config_new();
            if (cfg) {
                event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
                w->w_base = event_base_new_with_config(cfg);
                event_config_free(cfg);
            }
        }
        if (!w->w_base) {
            fprintf(stderr, "mockllm: event_base_new failed\n");
            goto fail;
        }
        event_assign(&w->w_accept, w->w_base, w->w_lfd, EV_READ | EV_PERSIST, on_accept, w);
        event_add(&w->w_accept, NULL);
    }
    sigint = evsignal_new(g_workers[0].w_base, SIGINT, on_signal, NULL);
    sigterm = evsignal_new(g_workers[0].w_base, SIGTERM, on_signal, NULL);
    if (!sigint || !sigterm) goto fail;
    evsignal_add(sigint, NULL);
    evsignal_add(sigterm, NULL);
    printf("mockllm listening on %s:%d\n", s->sv_host, port);
    fflush(stdout);
    for (int i = 1; i < s->sv_threads; i++)
        if (pthread_create(&g_workers[i].w_thread, NULL, worker_main, &g_workers[i]) != 0) {
            fprintf(stderr, "mockllm: pthread_create failed\n");
            s->sv_threads = i;
            on_signal(0, 0, NULL);
            break;
        }
    worker_main(&g_workers[0]);
    for (int i = 1; i < s->sv_threads; i++) pthread_join(g_workers[i].w_thread, NULL);
    rc = 0;
fail:
    if (sigint) event_free(sigint);
    if (sigterm) event_free(sigterm);
    for (int i = 0; g_workers && i < s->sv_threads; i++) {
        worker_t *w = &g_workers[i];
        while (w->w_conns) conn_destroy(w->w_conns);
        if (w->w_base) {
            event_del(&w->w_accept);
            event_base_free(w->w_base);
        }
        if (w->w_lfd > 0) close(w->w_lfd);
    }
    for (long i = 0; s->sv_recs && i < s->sv_record_max; i++) tg_free(s->sv_recs[i]);
    tg_free(s->sv_recs);
    tg_free(s->sv_keys);
    tg_free(g_workers);
    libevent_global_shutdown();
    return rc;
}
