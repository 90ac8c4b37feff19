/* metrics.c: the agent's Prometheus counters. Each worker owns a table of
 * series keyed by (model, channel), written only by that worker with
 * relaxed atomics (no lock, no contention: a counter add is a plain add on
 * x86); GET /metrics sums the workers' tables. A series is created on first
 * use and never removed; its key is published with a release store so a
 * reader on another worker sees it whole. Past TG_METRICS_SLOTS series per
 * worker, new (model, channel) pairs count under model="other". */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "agent/agent_int.h"

#define TG_METRICS_SLOTS 1024
#define NB 16

static const double bounds[NB] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                  0.25,   0.5,   1,      2.5,   5,    10,   30,    60};

typedef struct series {
    _Atomic(char *) se_key;     /* "model\0channel\0", published last */
    atomic_ullong se_code[3];   /* client status 2xx/3xx, 4xx, 5xx */
    atomic_ullong se_upstream_errors;
    atomic_ullong se_fallbacks;
    atomic_ullong se_lat[NB + 1];
    atomic_ullong se_lat_sum_us;
    atomic_ullong se_ttft[NB + 1];
    atomic_ullong se_ttft_sum_us;
    atomic_ullong se_ttft_n;
} series_t;

struct tg_metrics {
    series_t m_s[TG_METRICS_SLOTS];
};

tg_metrics_t *tg_metrics_create(void)
{
    return tg_calloc(1, sizeof(tg_metrics_t));
}

void tg_metrics_destroy(tg_metrics_t *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < TG_METRICS_SLOTS; i++)
        tg_free(atomic_load(&m->m_s[i].se_key));
    tg_free(m);
}

static uint64_t hash(const char *a, const char *b)
{
    uint64_t h = 1469598103934665603ull;
    for (; *a; a++)
        h = (h ^ (unsigned char)*a) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
    for (; *b; b++)
        h = (h ^ (unsigned char)*b) * 1099511628211ull;
    return h;
}

static series_t *find(tg_metrics_t *m, const char *model, const char *channel)
{
    size_t la = strlen(model), lb = strlen(channel);
    size_t i = hash(model, channel) & (TG_METRICS_SLOTS - 1);
    for (size_t probe = 0; probe < TG_METRICS_SLOTS; probe++, i = (i + 1) & (TG_METRICS_SLOTS - 1)) {
        series_t *s = &m->m_s[i];
        char *k = atomic_load_explicit(&s->se_key, memory_order_relaxed);
        if (!k) {
            if (probe > TG_METRICS_SLOTS / 2)
                break; /* keep a table that is half full fast: overflow below */
            char *nk = tg_malloc(la + lb + 2);
            if (!nk)
                return NULL;
            memcpy(nk, model, la + 1);
            memcpy(nk + la + 1, channel, lb + 1);
            atomic_store_explicit(&s->se_key, nk, memory_order_release);
            return s;
        }
        if (strcmp(k, model) == 0 && strcmp(k + strlen(k) + 1, channel) == 0)
            return s;
    }
    return strcmp(model, "other") == 0 ? NULL : find(m, "other", "other");
}

static void observe_hist(atomic_ullong *h, atomic_ullong *sum, int64_t us)
{
    double s = (double)us / 1e6;
    int b = 0;
    while (b < NB && s > bounds[b])
        b++;
    atomic_fetch_add_explicit(&h[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(sum, (unsigned long long)(us > 0 ? us : 0), memory_order_relaxed);
}

void tg_metrics_observe(tg_metrics_t *m, const char *model, const char *channel, int status, int64_t latency_us,
                        int64_t ttft_us, int upstream_errors, int fallback)
{
    series_t *s = m ? find(m, model, channel) : NULL;
    if (!s)
        return;
    int c = status >= 500 ? 2 : status >= 400 ? 1 : 0;
    atomic_fetch_add_explicit(&s->se_code[c], 1, memory_order_relaxed);
    if (upstream_errors > 0)
        atomic_fetch_add_explicit(&s->se_upstream_errors, (unsigned long long)upstream_errors, memory_order_relaxed);
    if (fallback)
        atomic_fetch_add_explicit(&s->se_fallbacks, 1, memory_order_relaxed);
    observe_hist(s->se_lat, &s->se_lat_sum_us, latency_us);
    if (ttft_us > 0) {
        observe_hist(s->se_ttft, &s->se_ttft_sum_us, ttft_us);
        atomic_fetch_add_explicit(&s->se_ttft_n, 1, memory_order_relaxed);
    }
}

/* Sums series with the same key across workers. O(workers x slots^2) in
 * the worst case, fine for a scrape every few seconds. */
typedef struct sum {
    const char *su_key;
    unsigned long long su_code[3], su_uperr, su_fb, su_lat[NB + 1], su_lat_sum, su_ttft[NB + 1], su_ttft_sum,
        su_ttft_n;
} sum_t;

static void label(tg_buf_t *out, const char *name, const char *key, const char *extra)
{
    const char *model = key, *channel = key + strlen(key) + 1;
    tg_buf_printf(out, "%s{model=", name);
    tg_agent_json_str(out, model, strlen(model)); /* JSON escaping is Prometheus-compatible for \\ \" */
    tg_buf_puts(out, ",channel=");
    tg_agent_json_str(out, channel, strlen(channel));
    tg_buf_printf(out, "%s}", extra ? extra : "");
}

static void hist(tg_buf_t *out, const char *name, const char *key, const unsigned long long *h,
                 unsigned long long sum_us, unsigned long long n)
{
    unsigned long long cum = 0;
    char extra[64], full[96];
    snprintf(full, sizeof full, "%s_bucket", name);
    for (int b = 0; b <= NB; b++) {
        cum += h[b];
        if (b < NB)
            snprintf(extra, sizeof extra, ",le=\"%g\"", bounds[b]);
        else
            snprintf(extra, sizeof extra, ",le=\"+Inf\"");
        label(out, full, key, extra);
        tg_buf_printf(out, " %llu\n", cum);
    }
    snprintf(full, sizeof full, "%s_sum", name);
    label(out, full, key, NULL);
    tg_buf_printf(out, " %.6f\n", (double)sum_us / 1e6);
    snprintf(full, sizeof full, "%s_count", name);
    label(out, full, key, NULL);
    tg_buf_printf(out, " %llu\n", n);
}

int tg_metrics_render(tg_metrics_t *const *ms, int n, long outbox_depth, tg_buf_t *out)
{
    size_t cap = (size_t)n * TG_METRICS_SLOTS, used = 0;
    sum_t *s = tg_calloc(cap ? cap : 1, sizeof *s);
    if (!s)
        return TG_AGENT_ENOMEM;
    for (int w = 0; w < n; w++) {
        for (size_t i = 0; i < TG_METRICS_SLOTS; i++) {
            series_t *se = &ms[w]->m_s[i];
            const char *k = atomic_load_explicit(&se->se_key, memory_order_acquire);
            if (!k)
                continue;
            sum_t *d = NULL;
            for (size_t j = 0; j < used && !d; j++)
                if (strcmp(s[j].su_key, k) == 0 &&
                    strcmp(s[j].su_key + strlen(s[j].su_key) + 1, k + strlen(k) + 1) == 0)
                    d = &s[j];
            if (!d) {
                d = &s[used++];
                d->su_key = k;
            }
            for (int c = 0; c < 3; c++)
                d->su_code[c] += atomic_load_explicit(&se->se_code[c], memory_order_relaxed);
            d->su_uperr += atomic_load_explicit(&se->se_upstream_errors, memory_order_relaxed);
            d->su_fb += atomic_load_explicit(&se->se_fallbacks, memory_order_relaxed);
            for (int b = 0; b <= NB; b++) {
                d->su_lat[b] += atomic_load_explicit(&se->se_lat[b], memory_order_relaxed);
                d->su_ttft[b] += atomic_load_explicit(&se->se_ttft[b], memory_order_relaxed);
            }
            d->su_lat_sum += atomic_load_explicit(&se->se_lat_sum_us, memory_order_relaxed);
            d->su_ttft_sum += atomic_load_explicit(&se->se_ttft_sum_us, memory_order_relaxed);
            d->su_ttft_n += atomic_load_explicit(&se->se_ttft_n, memory_order_relaxed);
        }
    }
    static const char *codes[3] = {",code=\"2xx\"", ",code=\"4xx\"", ",code=\"5xx\""};
    tg_buf_puts(out, "# HELP tollgate_agent_requests_total Client requests by catalog model, serving channel and status class.\n"
                     "# TYPE tollgate_agent_requests_total counter\n");
    for (size_t j = 0; j < used; j++)
        for (int c = 0; c < 3; c++) {
            label(out, "tollgate_agent_requests_total", s[j].su_key, codes[c]);
            tg_buf_printf(out, " %llu\n", s[j].su_code[c]);
        }
    tg_buf_puts(out, "# HELP tollgate_agent_upstream_errors_total Failed upstream attempts (retried or not).\n"
                     "# TYPE tollgate_agent_upstream_errors_total counter\n");
    for (size_t j = 0; j < used; j++) {
        label(out, "tollgate_agent_upstream_errors_total", s[j].su_key, NULL);
        tg_buf_printf(out, " %llu\n", s[j].su_uperr);
    }
    tg_buf_puts(out, "# HELP tollgate_agent_fallbacks_total Requests served by a later route tier.\n"
                     "# TYPE tollgate_agent_fallbacks_total counter\n");
    for (size_t j = 0; j < used; j++) {
        label(out, "tollgate_agent_fallbacks_total", s[j].su_key, NULL);
        tg_buf_printf(out, " %llu\n", s[j].su_fb);
    }
    tg_buf_puts(out, "# HELP tollgate_agent_request_seconds Time from the request to its last byte.\n"
                     "# TYPE tollgate_agent_request_seconds histogram\n");
    for (size_t j = 0; j < used; j++) {
        unsigned long long total = s[j].su_code[0] + s[j].su_code[1] + s[j].su_code[2];
        hist(out, "tollgate_agent_request_seconds", s[j].su_key, s[j].su_lat, s[j].su_lat_sum, total);
    }
    tg_buf_puts(out, "# HELP tollgate_agent_ttft_seconds Time from the request to the first byte sent to the client.\n"
                     "# TYPE tollgate_agent_ttft_seconds histogram\n");
    for (size_t j = 0; j < used; j++)
        hist(out, "tollgate_agent_ttft_seconds", s[j].su_key, s[j].su_ttft, s[j].su_ttft_sum, s[j].su_ttft_n);
    tg_buf_printf(out, "# HELP tollgate_agent_outbox_records Usage records waiting in the outbox.\n"
                       "# TYPE tollgate_agent_outbox_records gauge\n"
                       "tollgate_agent_outbox_records %ld\n",
                  outbox_depth);
    tg_free(s);
    return 0;
}
