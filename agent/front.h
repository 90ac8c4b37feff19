/* front.h: the agent's HTTP/1.1 server side, one tg_front_t per event
 * loop. It accepts on the loop's SO_REUSEPORT listener, parses requests
 * with the nodejs http-parser (Debian's libhttp-parser: a streaming,
 * allocation-free parser with years of fuzzing behind it, which rejects
 * request smuggling shapes such as Content-Length with chunked), and
 * writes replies eagerly: straight to the socket from the caller, queued
 * only when the kernel's buffer is full. It replaced evhttp, whose own
 * per-request work was the largest share of a small request's CPU.
 *
 * A request is handed to the handler whole (head and body). The handler
 * ends it exactly once: tg_front_reply(), tg_front_stream_end() or
 * tg_front_abandon(); it must not touch the connection after that. The
 * bytes that end a response are written after the loop's before_flush
 * hook ran (the agent commits its usage records there), still in the
 * same loop iteration, so a client never sees the end of a response
 * whose record is not committed; when the hook fails, a held response's
 * end is replaced by an error (tg_front_hold). */
#ifndef TG_AGENT_FRONT_H
#define TG_AGENT_FRONT_H

#include <event2/event.h>
#include <stddef.h>

typedef struct tg_front tg_front_t;
typedef struct tg_front_conn tg_front_conn_t;

/* A complete request arrived on c. */
typedef void (*tg_front_handler_fn)(tg_front_conn_t *c, void *arg);
/* c's client went away (gone) or its queued output drained (drain). */
typedef void (*tg_front_event_fn)(tg_front_conn_t *c, void *arg);

/* Connection caps shared by the fronts of every loop (the agent's
 * workers): at most lm_max_conns open client connections in all, and at
 * most lm_max_per_ip from one peer address. A connection over a cap is
 * answered 503 (OpenAI error shape, best effort: one non-blocking write)
 * and closed at once; refusals are logged at most once a second per
 * front. Thread-safe (a mutex, taken on accept and on close only). */
typedef struct tg_front_limits tg_front_limits_t;
/* 0 in either cap: no cap of that kind. Returns 0 and *out (free with
 * tg_front_limits_destroy, after every front that uses it), or -1 with
 * err filled (out of memory). */
int tg_front_limits_create(size_t max_conns, size_t max_per_ip, tg_front_limits_t **out, char *err,
                           size_t errlen);
/* Accepts NULL. */
void tg_front_limits_destroy(tg_front_limits_t *l);
/* Open connections counted now (all fronts). */
size_t tg_front_limits_open(tg_front_limits_t *l);

typedef struct tg_front_opts {
    size_t fo_max_body;        /* larger bodies get a 413 (OpenAI error JSON) */
    size_t fo_max_head;        /* request line + headers; larger: 431 */
    int fo_timeout_s;          /* to send the body (between reads), or to take queued output; idle keep-alive */
    int fo_head_timeout_s;     /* the whole request head, from the connection's accept (first request) or
                                * the request's first byte (later ones), not re-armed by reads; 0: 30 */
    int fo_body_timeout_s;     /* the whole body, from the end of its head, not re-armed by reads
                                * (a slow upload cannot hold a connection forever); 0: 300 */
    tg_front_limits_t *fo_limits; /* shared caps; NULL: none */
    tg_front_handler_fn fo_handler;
    void *fo_arg;
    int (*fo_before_flush)(void *arg); /* runs before response ends are written; -1: held ones fail */
    int (*fo_held_failed)(void *arg, uint64_t ticket); /* then, per held response whose client is
                                        still there: non-zero fails it (its ticket's record is not
                                        committed); NULL: only fo_before_flush decides */
    void *fo_flush_arg;
} tg_front_opts_t;

/* Serves listen_fd (non-blocking, listening; the front closes it) on
 * base. *out is freed with tg_front_destroy. Returns 0 or a negative
 * code with err filled. */
int tg_front_create(struct event_base *base, int listen_fd, const tg_front_opts_t *o, tg_front_t **out,
                    char *err, size_t errlen);
/* Graceful stop: the listener closes, idle connections close, busy ones
 * close after their response. */
void tg_front_stop_accepting(tg_front_t *f);
/* Closes every connection and frees. Requests in flight must have been
 * ended. Accepts NULL. */
void tg_front_destroy(tg_front_t *f);
/* Open client connections. */
size_t tg_front_nconns(const tg_front_t *f);

/* What the front refuses while parsing, beyond http-parser (Debian builds
 * it lenient, HTTP_PARSER_STRICT=0): a line not ended by CR LF (bare LF or
 * bare CR) in the head, a chunk-size line or the trailers; anything but
 * CR LF after a chunk's data; a blank or tab in a header name
 * ("Transfer-Encoding : chunked"); HTTP/1.1 without Host. Each gets 400
 * in the OpenAI error shape and the connection closes. */

/* ---- the request: valid from the handler call until it is ended ---- */
const char *tg_front_method(const tg_front_conn_t *c); /* "GET", "POST", ... */
/* The request target (path and query) and its length. */
const char *tg_front_target(const tg_front_conn_t *c, size_t *len);
/* The first header called name (any case), NUL-terminated, or NULL. */
const char *tg_front_header(const tg_front_conn_t *c, const char *name);
/* Every header line called name (any case), in the order received: the
 * first max values go into out. Returns how many lines there are (may
 * be more than max). */
size_t tg_front_header_all(const tg_front_conn_t *c, const char *name, const char **out, size_t max);
/* The peer's address as text ("127.0.0.1", "::1"). */
const char *tg_front_peer(const tg_front_conn_t *c);
/* Takes the body: the caller owns the returned block (tg_free; never
 * NULL, NUL-terminated, *len bytes before the NUL). A second call, or a
 * failed allocation, gives NULL. */
char *tg_front_body_take(tg_front_conn_t *c, size_t *len);
/* Callbacks for this request: gone is called at most once, when the
 * client closes or errs before the request is ended (the handler must
 * still end it; tg_front_abandon is the natural call); drain when output
 * queued beyond the socket drained. Either may be NULL. */
void tg_front_set_events(tg_front_conn_t *c, tg_front_event_fn gone, tg_front_event_fn drain, void *arg);
/* Bytes of response queued because the socket would block. */
size_t tg_front_pending(const tg_front_conn_t *c);

/* ---- the response ---- */
/* Adds a header to the response head (CR and LF in values become
 * spaces). Returns 0 or -1 (out of memory). */
int tg_front_add_header(tg_front_conn_t *c, const char *name, const char *value);
/* A whole response with Content-Length; ends the request. */
void tg_front_reply(tg_front_conn_t *c, int status, const void *body, size_t len);
/* A streamed response (chunked; HTTP/1.0: raw until close). Returns 0, or
 * -1 when the client is gone (writes are then discarded). */
int tg_front_stream_start(tg_front_conn_t *c, int status);
int tg_front_stream_write(tg_front_conn_t *c, const void *data, size_t len);
/* The end of the stream, after tail (len bytes, may be 0: the stream's
 * last event, held back so that it too goes out only after the flush
 * hook); ends the request. */
void tg_front_stream_end(tg_front_conn_t *c, const void *tail, size_t len);
/* Marks the response of c's request as held: its end goes out only when
 * the before_flush hook that precedes it returns 0 and fo_held_failed(arg,
 * ticket) returns 0 (the agent: this answer's own usage record, named by
 * ticket, is committed; another answer's failed record does not fail it).
 * The hold covers this request only. When either fails, the end that was queued is
 * replaced: a whole reply by 503 `usage_not_recorded` (OpenAI error
 * shape), a stream by an SSE error event without the terminating chunk;
 * the connection then closes, so a client never takes a truncated stream
 * or an unrecorded answer for a complete one. Call it before the reply or
 * the stream's end. */
void tg_front_hold(tg_front_conn_t *c, uint64_t ticket);
/* Ends the request without (more of) a reply: the connection closes. */
void tg_front_abandon(tg_front_conn_t *c);

#endif
