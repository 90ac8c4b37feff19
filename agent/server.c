/* server.c: the agent's threads and event loops. Each worker owns a
 * libevent loop, an HTTP front (front.c) on its own SO_REUSEPORT listener
 * and a libcurl multi handle driven by the same loop through the
 * multi_socket API (curl tells us which fds and timeouts to watch; the
 * loop calls curl_multi_socket_action when they fire). A request is
 * handled start to end on the worker that accepted it (request.c);
 * nothing here blocks. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event_struct.h> /* sockev_t embeds its event */

#include "agent/server_int.h"
#include "base/tg_log.h"
#include "billing/tg_billing.h"
#include "crypto/tg_crypto.h"
#include "pbjson/tg_pbjson.h"

/* ---- curl multi_socket glue ----------------------------------------------- */

typedef struct sockev {
    struct event se_ev; /* embedded: a change of the watched events reassigns it, no allocation */
    worker_t *se_w;
    short se_kind;      /* the events watched now */
} sockev_t;

static void check_done(worker_t *w)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(w->w_multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        req_t *rq = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&rq);
        tg_req_curl_done(rq, m->data.result);
    }
}

static void on_sock(evutil_socket_t fd, short what, void *arg)
{
    worker_t *w = arg;
    int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(w->w_multi, fd, flags, &running);
    check_done(w);
}

static void on_curl_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker_t *w = arg;
    int running;
    w->w_in_curl_timer = 1;
    curl_multi_socket_action(w->w_multi, CURL_SOCKET_TIMEOUT, 0, &running);
    w->w_in_curl_timer = 0;
    check_done(w);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *sockp)
{
    (void)e;
    worker_t *w = userp;
    sockev_t *se = sockp;
    if (what == CURL_POLL_REMOVE) {
        if (se) {
            event_del(&se->se_ev);
            tg_free(se);
            curl_multi_assign(w->w_multi, s, NULL);
        }
        return 0;
    }
    short kind = EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (se && se->se_kind == kind)
        return 0; /* unchanged: no epoll_ctl */
    if (!se) {
        se = tg_calloc(1, sizeof *se);
        if (!se)
            return -1;
        se->se_w = w;
        curl_multi_assign(w->w_multi, s, se);
    } else {
        event_del(&se->se_ev);
    }
    se->se_kind = 0; /* set once watched: a failed assign is retried on the next call */
    if (event_assign(&se->se_ev, w->w_base, s, kind, on_sock, w) != 0 || event_add(&se->se_ev, NULL) != 0)
        return -1;
    se->se_kind = kind;
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    worker_t *w = userp;
    if (timeout_ms <= 0) {
        evtimer_del(w->w_curl_timer);
        /* 0: "now" (a transfer was added, a paused one resumed): run it in
         * this pass over the ready events instead of a zero timer, which
         * costs another epoll_wait round before curl sends the request.
         * Asked from inside the timer's own run, a zero timer instead: an
         * event re-activated in its callback runs again before the loop
         * polls, so a curl that keeps asking for 0 without progress would
         * starve every socket of this worker (the client's drain included) */
        if (timeout_ms == 0 && !w->w_in_curl_timer) {
            event_active(w->w_curl_timer, EV_TIMEOUT, 1);
        } else if (timeout_ms == 0) {
            struct timeval zero = {0, 0};
            evtimer_add(w->w_curl_timer, &zero);
        }
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(w->w_curl_timer, &tv);
    return 0;
}

/* ---- the outbox commit of one loop iteration ------------------------------- */

/* Records of the requests finished in one loop iteration are committed in
 * one LMDB write transaction (DESIGN.md: one transaction per request costs
 * 15-30 us). The front writes the last bytes of every response only after
 * its before_flush hook, which is this commit, so a client never sees the
 * end of an answer whose record is not in the outbox. The commit event
 * covers records without a client reply (a client that hung up). The loop
 * has one priority: see tg_front's f_flush_ev for why. */
static void pend_drop(worker_t *w, size_t n)
{
    if (n == 0)
        return; /* w_pend may be NULL: no pointer arithmetic on it (path_fuzz, UBSan) */
    for (size_t i = 0; i < n; i++) {
        tg_free((void *)w->w_pend[i].oi_data);
        tg_free(w->w_pend_meta[i].pd_id);
    }
    memmove(w->w_pend, w->w_pend + n, (w->w_npend - n) * sizeof *w->w_pend);
    memmove(w->w_pend_meta, w->w_pend_meta + n, (w->w_npend - n) * sizeof *w->w_pend_meta);
    w->w_npend -= n;
}

int tg_worker_commit(worker_t *w)
{
    tg_agent_t *a = w->w_agent;
    char err[TG_ERRLEN] = "";
    w->w_commit_failed = 0;
    if (w->w_npend) {
        if (tg_outbox_put_many(a->a_outbox, w->w_pend, w->w_npend, err, sizeof err) == 0) {
            pend_drop(w, w->w_npend);
            atomic_store(&a->a_outbox_failing, 0);
        } else {
            /* Not in the outbox: the answers waiting on this commit fail
             * (the client is not told "done" for an unrecorded request);
             * the records stay here and are retried, bounded. */
            w->w_commit_failed = 1;
            TG_LOG(TG_LOG_ERROR, "usage", "outbox commit failed (%zu records kept in memory, retried in 1 s): %s",
                   w->w_npend, err);
            if (w->w_npend > TG_WORKER_KEEP) {
                size_t lost = w->w_npend - TG_WORKER_KEEP;
                for (size_t i = 0; i < lost; i++) {
                    const char *kv[] = {"request_id", w->w_pend_meta[i].pd_id, NULL};
                    tg_log_kv(TG_LOG_ERROR, "usage", kv, "usage record LOST: the outbox refuses it (%s)", err);
                }
                pend_drop(w, lost);
            }
            w->w_npend_failed = w->w_npend;
            atomic_store(&a->a_outbox_failing, 1);
            struct timeval retry = {1, 0};
            event_add(w->w_commit_ev, &retry);
        }
    }
    return w->w_commit_failed ? -1 : 0;
}

/* The front's hook: commits what this iteration queued. Whether a held
 * answer fails is decided per answer (held_failed): a commit that failed
 * earlier and succeeds now (it carries the earlier records too) fails
 * nobody. */
static int before_flush(void *arg)
{
    worker_t *w = arg;
    /* a ticket that could not be noted fails every held answer of this
     * flush (the safe side), once */
    w->w_fail_all = w->w_unspooled_lost;
    w->w_unspooled_lost = 0;
    /* after a failed commit, a flush that queued nothing new (the answers
     * refused before their upstream call) leaves the retry to its timer:
     * a client retrying against a full disk does not rerun the failing
     * write and its log line at every refusal */
    if (w->w_commit_failed && w->w_npend == w->w_npend_failed)
        return 0;
    tg_worker_commit(w);
    return 0;
}

static void on_commit(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tg_worker_commit(arg);
}

/* The answer is withheld, so its record must not bill it: the record
 * becomes a zero-cost receipt (usage kept) and the lease gets the cost
 * back. Run before the record's next commit attempt. */
static void withhold(worker_t *w, size_t i)
{
    static const char reason[] = "answer withheld: its usage record could not be committed to the outbox";
    tg_pend_t *pd = &w->w_pend_meta[i];
    void *rec = NULL;
    size_t n = 0;
    int64_t cost = 0;
    const char *kv[] = {"request_id", pd->pd_id, NULL};
    int rc = tg_outbox_withhold(w->w_pend[i].oi_data, w->w_pend[i].oi_len, reason, &rec, &n, &cost);
    if (rc != 0) {
        /* kept as it is (the client was still failed): logged so an
         * operator can credit it */
        tg_log_kv(TG_LOG_ERROR, "usage", kv, "withheld answer's record could not be made a receipt (%s): it "
                                             "will bill the answer", tg_agent_strerror(rc));
        return;
    }
    if (pd->pd_charged > 0) {
        /* the bucket's lease, and every limit scope the record reserved on */
        tg_lease_refund(w->w_agent->a_leases, pd->pd_acct, pd->pd_bucket, pd->pd_charged);
        Tollgate__V1__UsageRecord *orig =
            tollgate__v1__usage_record__unpack(NULL, w->w_pend[i].oi_len, w->w_pend[i].oi_data);
        for (size_t k = 0; orig && k < orig->n_lease_scopes; k++)
            tg_lease_refund(w->w_agent->a_leases, pd->pd_acct, orig->lease_scopes[k], pd->pd_charged);
        if (orig)
            tollgate__v1__usage_record__free_unpacked(orig, NULL);
    }
    tg_free((void *)w->w_pend[i].oi_data);
    w->w_pend[i] = (tg_outbox_item_t){rec, n};
    pd->pd_charged = 0;
    tg_log_kv(TG_LOG_WARN, "usage", kv, "answer withheld: its record stays as a zero-cost receipt (cost %lld "
                                        "not charged)", (long long)cost);
}

/* The front asks, per held answer still connected, after the commit:
 * fails it when its record is still queued (the commit failed) or could
 * not be spooled at all. */
static int held_failed(void *arg, uint64_t ticket)
{
    worker_t *w = arg;
    if (ticket == 0)
        return 0;
    if (w->w_fail_all)
        return 1;
    for (size_t i = 0; i < w->w_nunspooled; i++) {
        if (w->w_unspooled[i] == ticket) {
            w->w_unspooled[i] = w->w_unspooled[--w->w_nunspooled];
            return 1;
        }
    }
    for (size_t i = 0; i < w->w_npend; i++) {
        if (w->w_pend_meta[i].pd_ticket == ticket) {
            withhold(w, i);
            w->w_pend_meta[i].pd_ticket = 0;
            return 1;
        }
    }
    return 0;
}

void tg_worker_unspooled(worker_t *w, uint64_t ticket)
{
    if (ticket == 0)
        return;
    if (w->w_nunspooled == w->w_capunspooled) {
        size_t cap = w->w_capunspooled ? w->w_capunspooled * 2 : 16;
        uint64_t *p = tg_realloc(w->w_unspooled, cap * sizeof *p);
        if (!p) {
            w->w_unspooled_lost = 1;
            return;
        }
        w->w_unspooled = p;
        w->w_capunspooled = cap;
    }
    w->w_unspooled[w->w_nunspooled++] = ticket;
}

int tg_worker_spool(worker_t *w, void *data, size_t len, const tg_spool_info_t *si)
{
    if (w->w_npend == w->w_cappend) {
        size_t cap = w->w_cappend ? w->w_cappend * 2 : 64;
        tg_outbox_item_t *p = tg_realloc(w->w_pend, cap * sizeof *p);
        if (p)
            w->w_pend = p;
        tg_pend_t *q = p ? tg_realloc(w->w_pend_meta, cap * sizeof *q) : NULL;
        if (q)
            w->w_pend_meta = q;
        if (!p || !q) {
            tg_free(data);
            return TG_AGENT_ENOMEM;
        }
        w->w_cappend = cap;
    }
    const char *acct = si->si_acct ? si->si_acct : "", *bucket = si->si_bucket ? si->si_bucket : "";
    size_t li = strlen(si->si_request_id) + 1, la = strlen(acct) + 1, lb = strlen(bucket) + 1;
    char *id = tg_malloc(li + la + lb);
    if (!id) {
        tg_free(data);
        return TG_AGENT_ENOMEM;
    }
    memcpy(id, si->si_request_id, li);
    memcpy(id + li, acct, la);
    memcpy(id + li + la, bucket, lb);
    w->w_pend[w->w_npend] = (tg_outbox_item_t){data, len};
    w->w_pend_meta[w->w_npend++] = (tg_pend_t){id, id + li, id + li + la, si->si_charged, si->si_ticket};
    if (w->w_npend == 1 || !event_pending(w->w_commit_ev, EV_TIMEOUT, NULL))
        event_active(w->w_commit_ev, EV_TIMEOUT, 0);
    return 0;
}

/* ---- the metrics listener ------------------------------------------------------ */

/* /metrics names channels and models: it is served on its own address
 * (loopback by default), never on the public port. One small front on
 * worker 0's loop; a scrape sums every worker's relaxed counters. */
static int metrics_listen(tg_agent_t *a, char *err, size_t errlen)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->a_opts.ao_metrics_port)};
    if (inet_pton(AF_INET, a->a_opts.ao_metrics_host, &sa.sin_addr) != 1)
        return tg_errf(err, errlen, TG_AGENT_EUSAGE, "--metrics-listen %s: not an IPv4 address",
                       a->a_opts.ao_metrics_host);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t sl = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        int e = errno;
        close(fd);
        return tg_errf(err, errlen, TG_AGENT_ESYS, "--metrics-listen %s:%d: %s", a->a_opts.ao_metrics_host,
                       a->a_opts.ao_metrics_port, strerror(e));
    }
    a->a_mport = ntohs(sa.sin_port);
    worker_t *w = &a->a_workers[0];
    tg_front_opts_t fo = {
        .fo_max_body = 4096,
        .fo_max_head = 16u << 10,
        .fo_timeout_s = 30,
        .fo_head_timeout_s = 10,
        .fo_handler = tg_req_handle_ops,
        .fo_arg = w,
    };
    return tg_front_create(w->w_base, fd, &fo, &w->w_mfront, err, errlen); /* owns fd */
}

/* ---- the data dir's lock ---------------------------------------------------- */

/* One agent per data dir: two would share the outbox's sequence numbers
 * and batch marks, and lose records (MDB_KEYEXIST, reused batches). An
 * flock on DATA_DIR/agent.lock, held for the process's life (the kernel
 * drops it when the process dies, kill -9 included); the file holds the
 * holder's pid, for the refusal's message. outbox-dump does not lock: it
 * opens the outbox read-only beside a running agent. */
static int lock_data_dir(tg_agent_t *a, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/agent.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "--data-dir %s: cannot open %s: %s", dir, path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        close(fd);
        if (e == EWOULDBLOCK)
            return tg_errf(err, errlen, TG_AGENT_ESYS,
                           "--data-dir %s is in use by another tollgate-agent (pid %s): one agent per data dir", dir,
                           pid[0] ? pid : "unknown");
        return tg_errf(err, errlen, TG_AGENT_ESYS, "--data-dir %s: cannot lock %s: %s", dir, path, strerror(e));
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n)
        TG_LOG(TG_LOG_WARN, "agent", "cannot write the pid into %s: %s", path, strerror(errno));
    a->a_lock_fd = fd;
    return 0;
}

/* ---- workers -------------------------------------------------------------- */

/* Graceful stop: close the listener (no new connections), let the
 * requests in flight finish and their responses drain, then leave the loop; after the drain bound
 * (10 s) whatever is left is cut. Checked every 50 ms. */
#define DRAIN_MS 10000

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker_t *w = arg;
    /* done when no request is in flight and no response is still being
     * written to a slow client */
    if ((!w->w_live && tg_front_nconns(w->w_front) == 0 && tg_front_nconns(w->w_mfront) == 0) || ++w->w_drain_ticks * 50 >= DRAIN_MS) {
        if (w->w_live)
            TG_LOG(TG_LOG_WARN, "agent", "worker %d: drain bound reached, cutting requests in flight", w->w_idx);
        event_base_loopexit(w->w_base, NULL);
    }
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker_t *w = arg;
    if (w->w_draining)
        return;
    w->w_draining = 1;
    event_del(w->w_stop_ev);
    tg_front_stop_accepting(w->w_front);
    tg_front_stop_accepting(w->w_mfront);
    struct timeval tv = {0, 50000};
    if (!(w->w_drain_ev = event_new(w->w_base, -1, EV_PERSIST, on_drain, w)) || event_add(w->w_drain_ev, &tv) != 0)
        event_base_loopexit(w->w_base, NULL);
}

static int listen_socket(const char *host, int port, char *err, size_t errlen)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return tg_errf(err, errlen, TG_AGENT_EUSAGE, "--host %s: not an IPv4 address", host);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    /* Accepted sockets inherit TCP_NODELAY: a stream's head and its first
     * event must not wait for the client's delayed ACK (Nagle). */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1024) != 0) {
        int e = errno;
        close(fd);
        return tg_errf(err, errlen, TG_AGENT_ESYS, "listen on %s:%d: %s", host, port, strerror(e));
    }
    return fd;
}

static void worker_free(worker_t *w)
{
    tg_req_abort_all(w);
    if (w->w_commit_ev)
        tg_worker_commit(w);
    tg_front_destroy(w->w_front);
    w->w_front = NULL;
    tg_front_destroy(w->w_mfront);
    w->w_mfront = NULL;
    while (w->w_nidle > 0)
        curl_easy_cleanup(w->w_idle[--w->w_nidle]);
    if (w->w_multi)
        curl_multi_cleanup(w->w_multi);
    tg_h1_free(w->w_h1);
    w->w_h1 = NULL;
    if (w->w_curl_timer)
        event_free(w->w_curl_timer);
    if (w->w_stop_ev)
        event_free(w->w_stop_ev);
    if (w->w_drain_ev)
        event_free(w->w_drain_ev);
    if (w->w_commit_ev)
        event_free(w->w_commit_ev);
    pend_drop(w, w->w_npend);
    tg_crypto_wipe(w->w_keymemo, sizeof w->w_keymemo); /* API key secrets */
    tg_free(w->w_pend);
    tg_free(w->w_pend_meta);
    tg_free(w->w_unspooled);
    if (w->w_base)
        event_base_free(w->w_base);
    tg_cfg_unref(w->w_cfg);
    w->w_cfg = NULL;
    tg_metrics_destroy(w->w_metrics);
    w->w_metrics = NULL;
}

static int worker_init(tg_agent_t *a, worker_t *w, int idx, int fd, char *err, size_t errlen)
{
    w->w_agent = a;
    w->w_idx = idx;
    w->w_rng = ((uint64_t)time(NULL) << 16) ^ (uint64_t)(idx + 1) * 0x9e3779b97f4a7c15ull;
    w->w_metrics = tg_metrics_create();
    if (!(w->w_base = event_base_new()) || !(w->w_commit_ev = event_new(w->w_base, -1, 0, on_commit, w)) ||
        !(w->w_multi = curl_multi_init()) || !(w->w_curl_timer = evtimer_new(w->w_base, on_curl_timer, w)) ||
        !(w->w_stop_ev = event_new(w->w_base, a->a_stop_pipe[0], EV_READ | EV_PERSIST, on_stop, w))) {
        close(fd);
        return tg_errf(err, errlen, TG_AGENT_ENOMEM, "worker %d: out of memory", idx);
    }
    event_add(w->w_stop_ev, NULL);
    tg_front_opts_t fo = {
        .fo_max_body = a->a_opts.ao_max_body,
        .fo_max_head = 64u << 10,
        .fo_timeout_s = 120,
        .fo_head_timeout_s = a->a_opts.ao_head_timeout_s,
        .fo_body_timeout_s = a->a_opts.ao_body_timeout_s,
        .fo_limits = a->a_limits,
        .fo_handler = tg_req_handle,
        .fo_arg = w,
        .fo_before_flush = before_flush,
        .fo_held_failed = held_failed,
        .fo_flush_arg = w,
    };
    int rc = tg_front_create(w->w_base, fd, &fo, &w->w_front, err, errlen); /* owns fd from here */
    if (rc)
        return rc;
    tg_h1_opts_t ho = {.ho_ca_file = a->a_opts.ao_upstream_ca, .ho_insecure = a->a_opts.ao_insecure_upstream};
    if ((rc = tg_h1_new(w->w_base, &ho, &w->w_h1, err, errlen)) != 0)
        return TG_AGENT_ENOMEM;
    curl_multi_setopt(w->w_multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(w->w_multi, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt(w->w_multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(w->w_multi, CURLMOPT_TIMERDATA, w);
    /* Connection reuse: keep enough idle upstream connections for a busy
     * channel; HTTP/2 upstreams multiplex on one. */
    curl_multi_setopt(w->w_multi, CURLMOPT_MAXCONNECTS, 256L);
    curl_multi_setopt(w->w_multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    return 0;
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    event_base_dispatch(w->w_base);
    return NULL;
}

/* ---- configuration swap ---------------------------------------------------- */

/* The worker's view of the current configuration. It holds one reference
 * and checks a generation counter per request; only when it changed does
 * it take the agent's mutex (once per swap per worker), so the request
 * path never waits on configuration in steady state. */
tg_cfg_t *tg_worker_cfg(worker_t *w)
{
    tg_agent_t *a = w->w_agent;
    long gen = atomic_load_explicit(&a->a_cfg_gen, memory_order_acquire);
    if (gen != w->w_cfg_gen) {
        pthread_mutex_lock(&a->a_cfg_mu);
        tg_cfg_t *c = a->a_cfg;
        if (c)
            tg_cfg_ref(c);
        gen = atomic_load_explicit(&a->a_cfg_gen, memory_order_relaxed);
        pthread_mutex_unlock(&a->a_cfg_mu);
        tg_cfg_unref(w->w_cfg);
        w->w_cfg = c;
        w->w_cfg_gen = gen;
    }
    return w->w_cfg;
}

static int write_file_atomic(const char *dir, const char *name, const void *data, size_t len, char *err,
                             size_t errlen)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "%s: %s", tmp, strerror(errno));
    const char *p = data;
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, p + off, len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            close(fd);
            unlink(tmp);
            return tg_errf(err, errlen, TG_AGENT_ESYS, "%s: %s", tmp, strerror(e));
        }
        off += (size_t)n;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return tg_errf(err, errlen, TG_AGENT_ESYS, "%s: %s", path, strerror(e));
    }
    return 0;
}

int tg_agent_read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    tg_buf_t b;
    tg_buf_init(&b, (size_t)1 << 30);
    FILE *f = fopen(path, "rb");
    if (!f)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "%s: %s", path, strerror(errno));
    char chunk[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (tg_buf_append(&b, chunk, n)) {
            rc = tg_errf(err, errlen, TG_AGENT_ENOMEM, "%s: too large or out of memory", path);
            break;
        }
    }
    if (!rc && ferror(f))
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "%s: read error", path);
    fclose(f);
    if (rc) {
        tg_buf_free(&b);
        return rc;
    }
    *out = tg_buf_steal(&b, len);
    if (!*out) {
        *out = tg_strdup("");
        *len = 0;
    }
    return *out ? 0 : TG_AGENT_ENOMEM;
}

int tg_agent_set_snapshot(tg_agent_t *a, const void *data, size_t len, char *err, size_t errlen)
{
    tg_cfg_t *c = NULL;
    int rc = tg_cfg_load(data, len, &c, err, errlen);
    if (rc)
        return rc;
    /* Keep the packed form in the data dir so a restart serves without the
     * control plane (static stability). */
    if (a->a_opts.ao_data_dir) {
        const tg_snap_t *s = tg_cfg_snapshot(c);
        size_t n = tollgate__v1__snapshot__get_packed_size(s);
        uint8_t *buf = tg_malloc(n ? n : 1);
        if (!buf) {
            tg_cfg_unref(c);
            return tg_errf(err, errlen, TG_AGENT_ENOMEM, "out of memory packing the snapshot");
        }
        tollgate__v1__snapshot__pack(s, buf);
        rc = write_file_atomic(a->a_opts.ao_data_dir, "snapshot.pb", buf, n, err, errlen);
        tg_free(buf);
        if (rc) {
            tg_cfg_unref(c);
            return rc;
        }
    }
    pthread_mutex_lock(&a->a_cfg_mu);
    tg_cfg_t *old = a->a_cfg;
    a->a_cfg = c;
    atomic_fetch_add_explicit(&a->a_cfg_gen, 1, memory_order_release);
    pthread_mutex_unlock(&a->a_cfg_mu);
    tg_cfg_unref(old);
    TG_LOG(TG_LOG_INFO, "agent", "configuration revision %lld installed (%zu keys, %zu routes, %zu channels)",
           (long long)tg_cfg_snapshot(c)->revision, tg_cfg_snapshot(c)->n_keys, tg_cfg_snapshot(c)->n_routes,
           tg_cfg_snapshot(c)->n_channels);
    return 0;
}

/* ---- the outbox's group sync ------------------------------------------------ */

/* Every outbox_sync_interval_ms (default 5) moves the records appended to
 * the outbox's journal into LMDB and fsyncs it (tg_outbox_sync): many
 * records per fsync, and never an fsync on a loop. The bound on what a
 * power loss can take is therefore one interval plus one move and one
 * fsync. */
static void *sync_main(void *arg)
{
    tg_agent_t *a = arg;
    int failing = 0;
    pthread_mutex_lock(&a->a_sync_mu);
    while (!a->a_sync_stop) {
        uint32_t ms = 5;
        tg_cfg_t *c = NULL;
        pthread_mutex_lock(&a->a_cfg_mu);
        if ((c = a->a_cfg) != NULL)
            tg_cfg_ref(c);
        pthread_mutex_unlock(&a->a_cfg_mu);
        if (c) {
            const Tollgate__V1__GatewayPolicy *p = tg_cfg_snapshot(c)->policy;
            if (p && p->outbox_sync_interval_ms)
                ms = p->outbox_sync_interval_ms;
            tg_cfg_unref(c);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&a->a_sync_cv, &a->a_sync_mu, &ts);
        pthread_mutex_unlock(&a->a_sync_mu);
        char err[TG_ERRLEN] = "";
        /* logged when it starts failing and when it works again, not at
         * every interval */
        int src = tg_outbox_sync(a->a_outbox, err, sizeof err);
        if (src == TG_AGENT_EFULL) {
            if (!failing)
                TG_LOG(TG_LOG_ERROR, "agent",
                       "outbox full: %s (new requests are refused until acknowledgements free it)", err);
            failing = 1;
        } else if (src != 0) {
            if (!failing)
                TG_LOG(TG_LOG_ERROR, "agent",
                       "outbox sync failing: %s (records since the last sync may not be power-safe)", err);
            failing = 1;
        } else if (failing) {
            TG_LOG(TG_LOG_INFO, "agent", "outbox sync works again");
            failing = 0;
        }
        pthread_mutex_lock(&a->a_sync_mu);
    }
    pthread_mutex_unlock(&a->a_sync_mu);
    return NULL;
}

static int dump_one(void *arg, uint64_t seq, const void *data, size_t len)
{
    FILE *out = ((void **)arg)[0];
    long *n = ((void **)arg)[1];
    Tollgate__V1__UsageRecord *r = tollgate__v1__usage_record__unpack(NULL, len, data);
    if (!r) {
        fprintf(out, "{\"seq\":%llu,\"error\":\"record does not unpack\"}\n", (unsigned long long)seq);
    } else {
        char *j = tg_pbjson_dumps(&r->base, NULL);
        fprintf(out, "{\"seq\":%llu,\"record\":%s}\n", (unsigned long long)seq, j ? j : "null");
        free(j);
        tollgate__v1__usage_record__free_unpacked(r, NULL);
    }
    (*n)++;
    return 0;
}

long tg_agent_outbox_dump(const char *data_dir, FILE *out, long limit, int rejected, char *err, size_t errlen)
{
    char path[4096];
    tg_outbox_t *o = NULL;
    snprintf(path, sizeof path, "%s/outbox", data_dir);
    int rc = tg_outbox_open(path, (size_t)1 << 30, 1, &o, err, errlen);
    if (rc)
        return rc;
    long n = 0;
    void *arg[2] = {out, &n};
    rc = tg_outbox_scan_table(o, rejected, limit > 0 ? (size_t)limit : (size_t)-1, dump_one, arg, err, errlen);
    tg_outbox_close(o);
    return rc ? rc : n;
}

/* ---- the agent -------------------------------------------------------------- */

/* ---- spend leases ---------------------------------------------------------------- */

static int lease_rpc(void *arg, Tollgate__V1__LeaseRequest *q, Tollgate__V1__LeaseResponse *out, char *err,
                     size_t errlen)
{
    tg_agent_t *a = arg;
    return tg_cplink_lease(a->a_cplink, q, out, err, errlen);
}

/* A limit scope's limit from the snapshot (key, project and account
 * windows, run budgets: billing/tg_billing.h ids). 0 or -1. */
static int scope_limit(tg_cfg_t *c, const char *account_id, const char *scope, int64_t *limit)
{
    char kind[16], id[160], win[16];
    long long start;
    int n = 0, what, owner;
    int64_t rstart;
    const tg_snap_t *s = tg_cfg_snapshot(c);
    if (tg_billing_rate_parse(scope, &owner, id, sizeof id, &what, &rstart) == 0) {
        /* a key's or project's rate window: its limit, per agent (nothing shared) */
        const Tollgate__V1__RateLimit *rl = NULL;
        if (owner == TG_BILLING_RATE_PROJECT) {
            const Tollgate__V1__Project *p = tg_cfg_project(c, id);
            if (p && strcmp(p->account_id, account_id) == 0)
                rl = p->rate_limit;
        } else {
            for (size_t i = 0; i < s->n_keys && !rl; i++)
                if (strcmp(s->keys[i]->id, id) == 0 && strcmp(s->keys[i]->account_id, account_id) == 0)
                    rl = s->keys[i]->rate_limit;
        }
        if (!rl)
            return -1;
        *limit = what == TG_BILLING_RATE_TOKENS ? rl->tokens_per_minute : rl->requests_per_minute;
        return *limit > 0 ? 0 : -1;
    }
    if (strncmp(scope, "run/", 4) == 0) {
        const Tollgate__V1__RunBudget *b = tg_cfg_run(c, scope + 4);
        if (!b || strcmp(b->account_id, account_id) != 0 || b->max_spend_nano <= 0)
            return -1;
        *limit = b->max_spend_nano;
        return 0;
    }
    if (sscanf(scope, "%15[a-z]/%159[^/]/%15[a-z]/%lld%n", kind, id, win, &start, &n) != 4 || scope[n])
        return -1;
    Tollgate__V1__SpendLimit **l = NULL;
    size_t nl = 0;
    if (strcmp(kind, "key") == 0) {
        for (size_t i = 0; i < s->n_keys; i++) /* by id: only here, once per lease */
            if (strcmp(s->keys[i]->id, id) == 0 && strcmp(s->keys[i]->account_id, account_id) == 0) {
                l = s->keys[i]->spend_limits;
                nl = s->keys[i]->n_spend_limits;
            }
    } else if (strcmp(kind, "project") == 0) {
        const Tollgate__V1__Project *p = tg_cfg_project(c, id);
        if (p && strcmp(p->account_id, account_id) == 0) {
            l = p->spend_limits;
            nl = p->n_spend_limits;
        }
    } else if (strcmp(kind, "account") == 0 && strcmp(id, account_id) == 0) {
        const tg_account_t *ac = tg_cfg_account(c, id);
        if (ac) {
            l = ac->spend_limits;
            nl = ac->n_spend_limits;
        }
    }
    for (size_t i = 0; i < nl; i++) {
        const char *wn = tg_billing_window_name((int)l[i]->window);
        if (wn && strcmp(wn, win) == 0) {
            *limit = l[i]->limit_nano;
            return 0;
        }
    }
    return -1;
}

/* Without a control plane the snapshot's balance, or the scope's limit, is
 * the budget. */
static int lease_local(void *arg, const char *account_id, const char *bucket, int64_t *budget)
{
    tg_agent_t *a = arg;
    tg_cfg_t *c;
    pthread_mutex_lock(&a->a_cfg_mu);
    if ((c = a->a_cfg) != NULL)
        tg_cfg_ref(c);
    pthread_mutex_unlock(&a->a_cfg_mu);
    int rc = -1;
    if (c && strchr(bucket, '/')) {
        rc = scope_limit(c, account_id, bucket, budget);
    } else if (c) {
        const tg_account_t *acct = tg_cfg_account(c, account_id);
        const tg_balance_t *b = acct ? tg_cfg_balance(c, account_id, bucket) : NULL;
        if (b) {
            *budget = b->balance_nano - tg_cfg_floor(acct, b);
            rc = 0;
        }
    }
    tg_cfg_unref(c);
    return rc;
}

/* What the spooled records still owe the spend leases (their cost is held
 * until the control plane acknowledges them), summed per bucket at start. */
static int owed_one(void *arg, uint64_t seq, const void *data, size_t len)
{
    (void)seq;
    tg_agent_t *a = arg;
    Tollgate__V1__UsageRecord *r = tollgate__v1__usage_record__unpack(NULL, len, data);
    if (r == NULL)
        return 0; /* the reporter says so when it sends it */
    if (r->cost_nano > 0 && r->bucket[0]) {
        tg_lease_owed(a->a_leases, r->account_id, r->bucket, r->cost_nano);
        for (size_t i = 0; i < r->n_lease_scopes; i++)
            tg_lease_owed(a->a_leases, r->account_id, r->lease_scopes[i], r->cost_nano);
    }
    tollgate__v1__usage_record__free_unpacked(r, NULL);
    return 0;
}

static int owed_from_outbox(tg_agent_t *a, char *err, size_t errlen)
{
    return tg_outbox_scan(a->a_outbox, SIZE_MAX, owed_one, a, err, errlen);
}

void tg_agent_opts_default(tg_agent_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->ao_host = "127.0.0.1";
    o->ao_port = 8080;
    o->ao_threads = 1;
    o->ao_max_body = 16u << 20;
    o->ao_region = "";
    o->ao_outbox_map = (size_t)1 << 30;
    o->ao_metrics_host = "127.0.0.1";
}

int tg_agent_create(const tg_agent_opts_t *o, tg_agent_t **out, char *err, size_t errlen)
{
    int rc = 0;
    char *data = NULL;
    size_t len = 0;
    *out = NULL;
    if (o->ao_threads < 1 || o->ao_threads > 256)
        return tg_errf(err, errlen, TG_AGENT_EUSAGE, "--threads %d: want 1..256", o->ao_threads);
    tg_agent_t *a = tg_calloc(1, sizeof *a);
    if (!a)
        return tg_errf(err, errlen, TG_AGENT_ENOMEM, "out of memory");
    a->a_opts = *o;
    a->a_stop_pipe[0] = a->a_stop_pipe[1] = -1;
    a->a_lock_fd = -1;
    pthread_mutex_init(&a->a_cfg_mu, NULL);
    pthread_mutex_init(&a->a_brk_mu, NULL);
    pthread_mutex_init(&a->a_sync_mu, NULL);
    pthread_cond_init(&a->a_sync_cv, NULL);
    atomic_init(&a->a_cfg_gen, 0);
    if (tg_crypto_random(&a->a_id_base, sizeof a->a_id_base) != 0)
        a->a_id_base = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "curl_global_init failed");
        goto fail;
    }
    a->a_curl_inited = 1;
    /* curl looks for proxy variables in the environment at every transfer
     * (getenv scans): when none is set at start, transfers say so */
    static const char *const proxy_env[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                                            "all_proxy", "ALL_PROXY"};
    a->a_no_env_proxy = 1;
    for (size_t i = 0; i < sizeof proxy_env / sizeof proxy_env[0]; i++)
        if (getenv(proxy_env[i]))
            a->a_no_env_proxy = 0;
    /* The tokenizer loads each encoding on first use (tens of ms): do it
     * now, not on a loop in the middle of a request. */
    char merr[TG_ERRLEN] = "";
    if ((a->a_meter = tg_meter_create(merr, sizeof merr)) != NULL) {
        uint64_t cnt;
        for (int e = 0; e < TG_METER_NENCODINGS; e++)
            if (tg_meter_count(a->a_meter, (tg_meter_encoding_t)e, "warm up", 7, TG_METER_SPECIAL_TEXT, &cnt, merr,
                               sizeof merr) != 0)
                TG_LOG(TG_LOG_WARN, "agent", "tokenizer %s unavailable: %s",
                       tg_meter_encoding_name((tg_meter_encoding_t)e), merr);
    } else {
        TG_LOG(TG_LOG_WARN, "agent", "no local tokenizer (%s): missing provider usage will count as 0", merr);
    }
    if (o->ao_data_dir && mkdir(o->ao_data_dir, 0700) != 0 && errno != EEXIST) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "--data-dir %s: %s", o->ao_data_dir, strerror(errno));
        goto fail;
    }
    if (o->ao_data_dir && (rc = lock_data_dir(a, o->ao_data_dir, err, errlen)) != 0)
        goto fail;
    if (o->ao_snapshot) {
        if ((rc = tg_agent_read_file(o->ao_snapshot, &data, &len, err, errlen)) != 0)
            goto fail;
    } else if (o->ao_data_dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/snapshot.pb", o->ao_data_dir);
        if (access(path, R_OK) == 0 && (rc = tg_agent_read_file(path, &data, &len, err, errlen)) != 0)
            goto fail;
    }
    if (data && (rc = tg_agent_set_snapshot(a, data, len, err, errlen)) != 0)
        goto fail;
    if (o->ao_data_dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/outbox", o->ao_data_dir);
        if ((rc = tg_outbox_open(path, o->ao_outbox_map, 0, &a->a_outbox, err, errlen)) != 0)
            goto fail;
        if (tg_outbox_depth(a->a_outbox))
            TG_LOG(TG_LOG_INFO, "agent", "outbox holds %ld records from before", tg_outbox_depth(a->a_outbox));
        if (pthread_create(&a->a_sync_thread, NULL, sync_main, a) != 0) {
            rc = tg_errf(err, errlen, TG_AGENT_ESYS, "cannot start the outbox sync thread");
            goto fail;
        }
        a->a_sync_running = 1;
    } else {
        TG_LOG(TG_LOG_WARN, "agent", "no --data-dir: usage records are not kept durably");
    }
    if (o->ao_spend_off && o->ao_cp) {
        rc = tg_errf(err, errlen, TG_AGENT_EUSAGE,
                     "--no-spend-control is a benchmark baseline: it cannot be used with --cp");
        goto fail;
    }
    if (o->ao_spend_off)
        TG_LOG(TG_LOG_WARN, "agent", "--no-spend-control: requests are served WITHOUT pre-authorization "
                                     "(a benchmark baseline; never in production)");
    if (!(a->a_leases = tg_lease_tab_create(o->ao_cp ? lease_rpc : NULL, lease_local, a))) {
        rc = tg_errf(err, errlen, TG_AGENT_ENOMEM, "cannot start the spend-lease thread");
        goto fail;
    }
    if (a->a_outbox && (rc = owed_from_outbox(a, err, errlen)) != 0)
        goto fail;
    if (o->ao_cp && (rc = tg_cplink_start(a, o->ao_cp, o->ao_enroll_token, &a->a_cplink, err, errlen)) != 0)
        goto fail;
    if (!data)
        TG_LOG(TG_LOG_WARN, "agent", "no snapshot yet: /readyz answers 503 and API requests 503");
    if (pipe2(a->a_stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        rc = tg_errf(err, errlen, TG_AGENT_ESYS, "pipe: %s", strerror(errno));
        goto fail;
    }
    /* Connection caps: by default half the open-files limit (a stream
     * holds a client and an upstream descriptor), so a connection flood
     * meets a clean 503 instead of EMFILE for everyone. */
    size_t max_conns = (size_t)o->ao_max_conns;
    struct rlimit rl;
    if (!max_conns && getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        max_conns = rl.rlim_cur / 2 > 64 ? (size_t)rl.rlim_cur / 2 : 64;
    if ((rc = tg_front_limits_create(max_conns, (size_t)o->ao_max_conns_per_ip, &a->a_limits, err, errlen)) != 0) {
        rc = TG_AGENT_ENOMEM;
        goto fail;
    }
    a->a_workers = tg_calloc((size_t)o->ao_threads, sizeof *a->a_workers);
    if (!a->a_workers) {
        rc = tg_errf(err, errlen, TG_AGENT_ENOMEM, "out of memory");
        goto fail;
    }
    a->a_nworkers = o->ao_threads;
    a->a_port = o->ao_port;
    for (int i = 0; i < o->ao_threads; i++) {
        int fd = listen_socket(o->ao_host, a->a_port, err, errlen);
        if (fd < 0) {
            rc = fd;
            goto fail;
        }
        if (a->a_port == 0) {
            struct sockaddr_in sa;
            socklen_t sl = sizeof sa;
            getsockname(fd, (struct sockaddr *)&sa, &sl);
            a->a_port = ntohs(sa.sin_port);
        }
        if ((rc = worker_init(a, &a->a_workers[i], i, fd, err, errlen)) != 0)
            goto fail;
    }
    if (o->ao_metrics_host && (rc = metrics_listen(a, err, errlen)) != 0)
        goto fail;
    tg_free(data);
    *out = a;
    return 0;
fail:
    tg_free(data);
    tg_agent_destroy(a);
    return rc;
}

int tg_agent_port(const tg_agent_t *a)
{
    return a->a_port;
}

int tg_agent_metrics_port(const tg_agent_t *a)
{
    return a->a_mport;
}

int tg_agent_run(tg_agent_t *a, char *err, size_t errlen)
{
    int started = 0, rc = 0;
    for (int i = 1; i < a->a_nworkers; i++) {
        if (pthread_create(&a->a_workers[i].w_thread, NULL, worker_main, &a->a_workers[i]) != 0) {
            rc = tg_errf(err, errlen, TG_AGENT_ESYS, "pthread_create failed");
            tg_agent_stop(a);
            break;
        }
        started = i;
    }
    if (rc == 0)
        worker_main(&a->a_workers[0]);
    for (int i = 1; i <= started; i++)
        pthread_join(a->a_workers[i].w_thread, NULL);
    return rc;
}

void tg_agent_stop(tg_agent_t *a)
{
    if (a && a->a_stop_pipe[1] >= 0) {
        ssize_t n = write(a->a_stop_pipe[1], "x", 1);
        (void)n;
    }
}

void tg_agent_destroy(tg_agent_t *a)
{
    if (!a)
        return;
    /* the reporter first (it tells the lease table of acks), then the lease
     * table (it hands free budget back through the link), then the link */
    tg_cplink_quiesce(a->a_cplink);
    tg_lease_tab_destroy(a->a_leases);
    tg_cplink_stop(a->a_cplink);
    for (int i = 0; i < a->a_nworkers; i++)
        worker_free(&a->a_workers[i]);
    tg_free(a->a_workers);
    tg_front_limits_destroy(a->a_limits);
    if (a->a_sync_running) {
        pthread_mutex_lock(&a->a_sync_mu);
        a->a_sync_stop = 1;
        pthread_cond_signal(&a->a_sync_cv);
        pthread_mutex_unlock(&a->a_sync_mu);
        pthread_join(a->a_sync_thread, NULL);
    }
    tg_outbox_close(a->a_outbox);
    pthread_mutex_destroy(&a->a_sync_mu);
    pthread_cond_destroy(&a->a_sync_cv);
    for (size_t i = 0; i < a->a_nbrk; i++)
        tg_free(a->a_brk[i].bk_id);
    tg_free(a->a_brk);
    if (a->a_stop_pipe[0] >= 0)
        close(a->a_stop_pipe[0]);
    if (a->a_stop_pipe[1] >= 0)
        close(a->a_stop_pipe[1]);
    tg_cfg_unref(a->a_cfg);
    tg_meter_destroy(a->a_meter);
    if (a->a_lock_fd >= 0)
        close(a->a_lock_fd); /* last: the outbox is closed */
    pthread_mutex_destroy(&a->a_cfg_mu);
    pthread_mutex_destroy(&a->a_brk_mu);
    if (a->a_curl_inited)
        curl_global_cleanup();
    tg_free(a);
}

/* ---- breakers ------------------------------------------------------------------ */

/* Breakers outlive snapshots (a config push must not close an open
 * breaker), so they live in the agent, keyed by channel id, shared by the
 * workers behind one mutex held for a few instructions per attempt. */
static tg_brk_t *brk_find(tg_agent_t *a, const char *id)
{
    for (size_t i = 0; i < a->a_nbrk; i++)
        if (strcmp(a->a_brk[i].bk_id, id) == 0)
            return &a->a_brk[i].bk_brk;
    if (a->a_nbrk == a->a_capbrk) {
        size_t cap = a->a_capbrk ? a->a_capbrk * 2 : 16;
        brk_slot_t *n = tg_realloc(a->a_brk, cap * sizeof *n);
        if (!n)
            return NULL;
        a->a_brk = n;
        a->a_capbrk = cap;
    }
    char *dup = tg_strdup(id);
    if (!dup)
        return NULL;
    brk_slot_t *s = &a->a_brk[a->a_nbrk++];
    s->bk_id = dup;
    tg_brk_init(&s->bk_brk);
    return &s->bk_brk;
}

int tg_agent_brk_allow(tg_agent_t *a, const char *chan, const tg_brk_conf_t *c, int64_t now_ms)
{
    pthread_mutex_lock(&a->a_brk_mu);
    tg_brk_t *b = brk_find(a, chan);
    int ok = b ? tg_brk_allow(b, c, now_ms) : 1;
    pthread_mutex_unlock(&a->a_brk_mu);
    return ok;
}

void tg_agent_brk_record(tg_agent_t *a, const char *chan, const tg_brk_conf_t *c, int ok, int64_t now_ms)
{
    pthread_mutex_lock(&a->a_brk_mu);
    tg_brk_t *b = brk_find(a, chan);
    if (b)
        tg_brk_record(b, c, ok, now_ms);
    pthread_mutex_unlock(&a->a_brk_mu);
}

void tg_agent_brk_metrics(tg_agent_t *a, tg_buf_t *out)
{
    tg_buf_puts(out, "# HELP tollgate_agent_breaker_state Circuit breaker of a channel: 0 closed, 1 open, "
                     "2 half-open.\n"
                     "# TYPE tollgate_agent_breaker_state gauge\n");
    pthread_mutex_lock(&a->a_brk_mu);
    for (size_t i = 0; i < a->a_nbrk; i++) {
        tg_buf_puts(out, "tollgate_agent_breaker_state{channel=");
        tg_agent_json_str(out, a->a_brk[i].bk_id, strlen(a->a_brk[i].bk_id));
        tg_buf_printf(out, "} %d\n", a->a_brk[i].bk_brk.br_state);
    }
    tg_buf_puts(out, "# HELP tollgate_agent_breaker_opens_total Times a channel's circuit breaker opened.\n"
                     "# TYPE tollgate_agent_breaker_opens_total counter\n");
    for (size_t i = 0; i < a->a_nbrk; i++) {
        tg_buf_puts(out, "tollgate_agent_breaker_opens_total{channel=");
        tg_agent_json_str(out, a->a_brk[i].bk_id, strlen(a->a_brk[i].bk_id));
        tg_buf_printf(out, "} %llu\n", (unsigned long long)a->a_brk[i].bk_brk.br_opens);
    }
    pthread_mutex_unlock(&a->a_brk_mu);
}
