/* server_int.h: the structs shared by server.c (threads, loops, curl glue,
 * configuration swap, breakers) and the request files (request_int.h: one
 * client request from its first byte to its receipt). Internal to agent/. */
#ifndef TG_AGENT_SERVER_INT_H
#define TG_AGENT_SERVER_INT_H

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>

#include "agent/agent_int.h"
#include "agent/front.h"
#include "agent/h1up.h"
#include "agent/lease.h"
#include "meter/tg_meter.h"

typedef struct req req_t;
typedef struct worker worker_t;

/* What the worker keeps beside a queued record (tg_worker_spool). */
typedef struct tg_pend {
    char *pd_id;          /* the request id; one block with the two below */
    const char *pd_acct;  /* account and bucket its cost was added to on the lease */
    const char *pd_bucket;
    int64_t pd_charged;   /* that cost (0: none) */
    uint64_t pd_ticket;   /* the held answer waiting on this record; 0: none */
} tg_pend_t;

/* What a request hands over with its record. */
typedef struct tg_spool_info {
    const char *si_request_id;
    uint64_t si_ticket;      /* its held answer's ticket; 0: none (nobody waits) */
    const char *si_acct;     /* lease account and bucket charged, and the cost (0: none) */
    const char *si_bucket;
    int64_t si_charged;
} tg_spool_info_t;

/* A known API key's secret seen lately and its SHA-256 (auth.c): a client
 * that reuses its key costs a compare, not a digest. Wiped when the worker
 * is freed. */
enum { TG_KEYMEMO_SLOTS = 16, TG_KEYMEMO_SECRET = 96 };
typedef struct tg_keymemo {
    uint8_t km_len; /* 0: empty slot */
    char km_secret[TG_KEYMEMO_SECRET];
    uint8_t km_hash[32];
} tg_keymemo_t;

struct worker {
    tg_agent_t *w_agent;
    int w_idx;
    pthread_t w_thread;
    struct event_base *w_base;
    tg_front_t *w_front;
    tg_front_t *w_mfront; /* worker 0 only: the metrics listener (--metrics-listen) */
    CURLM *w_multi;
    struct event *w_curl_timer;
    int w_in_curl_timer; /* on_curl_timer is running (timer_cb: no event_active then) */
    struct event *w_stop_ev;
    struct event *w_drain_ev;
    int w_draining;
    int w_drain_ticks;
    tg_cfg_t *w_cfg;   /* this worker's reference to the current config */
    long w_cfg_gen;    /* generation it was taken at */
    uint64_t w_rng;    /* xorshift state for weighted picks */
    uint64_t w_seq;    /* requests started here */
    req_t *w_live;     /* requests in flight (doubly linked) */
    tg_metrics_t *w_metrics; /* this worker's series (NULL if out of memory) */
    struct event *w_commit_ev;  /* commits the records queued below */
    tg_outbox_item_t *w_pend;   /* packed records waiting for this iteration's commit */
    tg_pend_t *w_pend_meta;     /* beside each: request id, held answer, lease charge */
    size_t w_npend, w_cappend;
    int w_commit_failed;        /* the last commit failed */
    size_t w_npend_failed;      /* ... with this many records: a flush with no new ones does not retry it */
    uint64_t w_ticket;          /* the last ticket given to a held answer (tg_front_hold) */
    uint64_t *w_unspooled;      /* tickets of held answers whose record could not be spooled */
    size_t w_nunspooled, w_capunspooled;
    int w_unspooled_lost;       /* one of those could not be noted: fail every held answer once */
    int w_fail_all;             /* ... in this flush (before_flush moves the flag here) */
    CURL *w_idle[32];  /* easy handles kept for reuse (curl_easy_reset) */
    int w_nidle;
    tg_h1_t *w_h1;     /* the lean upstream client (h1up.h): its connection pool */
    tg_keymemo_t w_keymemo[TG_KEYMEMO_SLOTS];
};

typedef struct brk_slot {
    char *bk_id;
    tg_brk_t bk_brk;
} brk_slot_t;

struct tg_agent {
    tg_agent_opts_t a_opts;
    int a_port;
    int a_mport;            /* the metrics listener's port; 0: none */
    int a_nworkers;
    worker_t *a_workers;
    int a_stop_pipe[2];
    int a_curl_inited;
    int a_no_env_proxy;     /* no *_proxy variable was set at start: transfers skip curl's lookup */
    int a_lock_fd;          /* DATA_DIR/agent.lock, flock'ed: one agent per data dir; -1 without */
    uint64_t a_id_base;     /* random, makes request ids unique across restarts */
    pthread_mutex_t a_cfg_mu;
    tg_cfg_t *a_cfg;        /* current configuration (one reference) */
    atomic_long a_cfg_gen;  /* bumped at every swap */
    tg_outbox_t *a_outbox;  /* NULL without a data dir */
    atomic_int a_outbox_failing; /* a worker's last commit failed: new requests are refused before the upstream call */
    pthread_t a_sync_thread;
    int a_sync_running;
    pthread_mutex_t a_sync_mu;
    pthread_cond_t a_sync_cv;
    int a_sync_stop;
    struct tg_cplink *a_cplink; /* NULL without --cp */
    tg_lease_tab_t *a_leases;   /* spend leases (pre-authorization); never NULL once created */
    tg_meter_t *a_meter;    /* local token counts when a provider reports none; may be NULL */
    tg_front_limits_t *a_limits; /* connection caps shared by the workers' fronts */
    pthread_mutex_t a_brk_mu;
    brk_slot_t *a_brk;
    size_t a_nbrk, a_capbrk;
};

/* Reads a whole file (at most 1 GiB) into *out (NUL-terminated; tg_free it)
 * and *len. Returns 0, or TG_AGENT_ESYS / TG_AGENT_ENOMEM naming the path. */
int tg_agent_read_file(const char *path, char **out, size_t *len, char *err, size_t errlen);

/* Queues a packed record (taking ownership of data, a tg_malloc block) for
 * the worker's next outbox commit, which runs before any socket write of
 * this loop iteration; si says who waits for it. Returns 0 or
 * TG_AGENT_ENOMEM (data freed; call tg_worker_unspooled). */
int tg_worker_spool(worker_t *w, void *data, size_t len, const tg_spool_info_t *si);
/* A held answer (ticket) whose record could not be spooled: its end fails
 * at the next flush (503 usage_not_recorded) like one whose commit failed.
 * Can't fail (when it cannot note the ticket, the next flush fails every
 * held answer instead). */
void tg_worker_unspooled(worker_t *w, uint64_t ticket);
/* Commits what is queued now (the commit event's body, the front's
 * before-flush hook; also at shutdown). A failed commit keeps the records
 * queued (at most TG_WORKER_KEEP; past that the oldest are logged as LOST,
 * each with its request id) and retries a second later; the front then
 * asks for each held answer whether its own record is still queued
 * (fo_held_failed): such an answer fails, and its record becomes the
 * zero-cost receipt of a withheld answer (tg_outbox_withhold) before it
 * is retried, its cost refunded to the lease. Returns 0, or -1 when the
 * commit failed. */
int tg_worker_commit(worker_t *w);
#define TG_WORKER_KEEP 10000

/* The worker's current configuration (NULL before any snapshot). */
tg_cfg_t *tg_worker_cfg(worker_t *w);

int tg_agent_brk_allow(tg_agent_t *a, const char *chan, const tg_brk_conf_t *c, int64_t now_ms);
void tg_agent_brk_record(tg_agent_t *a, const char *chan, const tg_brk_conf_t *c, int ok, int64_t now_ms);
/* Appends the breakers' series to a /metrics page: each channel's state
 * (0 closed, 1 open, 2 half-open; an open breaker turns half-open at the
 * next request after its open time) and how often it opened. */
void tg_agent_brk_metrics(tg_agent_t *a, tg_buf_t *out);

/* cplink.c: enrollment, Sync and the reporter (threads of their own). */
typedef struct tg_cplink tg_cplink_t;
int tg_cplink_start(tg_agent_t *a, const char *target, const char *token, tg_cplink_t **out, char *err,
                    size_t errlen);
/* Stops the threads and frees. Accepts NULL. */
void tg_cplink_stop(tg_cplink_t *l);
/* Stops the sync and reporter threads (joined) but keeps the channels, so
 * tg_cplink_lease still works (the lease table's last returns). Accepts
 * NULL; tg_cplink_stop afterwards frees. */
void tg_cplink_quiesce(tg_cplink_t *l);
/* One AgentService.Lease call (proof added here), from the lease thread:
 * the answer's numbers into *out (strings left alone). 0 or a negative
 * code with err set. */
int tg_cplink_lease(tg_cplink_t *l, Tollgate__V1__LeaseRequest *q, Tollgate__V1__LeaseResponse *out, char *err,
                    size_t errlen);
/* Appends the control-plane link's series to a /metrics answer (Prometheus
 * text): the spend-lease counters (tg_lease_counts), and with --cp the Sync
 * stream's state and address, the age of the last acknowledged batch,
 * report failures, address moves and the installed config revision. Any
 * thread; reads atomics only. Can't fail (a full buffer drops the rest). */
void tg_cplink_metrics(tg_agent_t *a, tg_buf_t *out);

/* The request files (request_int.h): tg_req_handle and tg_req_handle_ops in
 * request.c, tg_req_curl_done in upcurl.c, tg_req_abort_all in
 * finish.c. */
void tg_req_handle(tg_front_conn_t *c, void *worker);
/* The metrics listener's handler: /metrics, /healthz, /readyz. */
void tg_req_handle_ops(tg_front_conn_t *c, void *worker);
/* A curl transfer of rq ended with res (server.c's multi glue). */
void tg_req_curl_done(req_t *rq, CURLcode res);
/* Frees every request still in flight (shutdown): the loop is stopped. */
void tg_req_abort_all(worker_t *w);

#endif
