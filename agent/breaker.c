/* breaker.c: the per-channel circuit breaker and the route arithmetic
 * (weighted pick, backoff). Pure functions of their inputs and a clock
 * value, so the unit tests drive time by hand.
 *
 * Breaker rules: CLOSED counts outcomes; it OPENs after bc_consecutive
 * failures in a row, or when the window's error rate reaches bc_rate_ppm
 * with at least bc_min_requests in it. OPEN refuses everything for
 * bc_open_ms, then turns HALF_OPEN, which lets one probe out at a time; a
 * failed probe re-opens it, bc_probes successes close it. */
#include "agent/agent_int.h"

void tg_brk_conf_fill(tg_brk_conf_t *c)
{
    if (!c->bc_consecutive)
        c->bc_consecutive = 5;
    if (!c->bc_window_ms)
        c->bc_window_ms = 10000;
    if (!c->bc_min_requests)
        c->bc_min_requests = 20;
    if (!c->bc_open_ms)
        c->bc_open_ms = 5000;
    if (!c->bc_probes)
        c->bc_probes = 1;
}

void tg_brk_init(tg_brk_t *b)
{
    *b = (tg_brk_t){0};
}

static void open_it(tg_brk_t *b, int64_t now_ms)
{
    b->br_state = TG_BRK_OPEN;
    b->br_opened_ms = now_ms;
    b->br_probe_ok = 0;
    b->br_probe_inflight = 0;
    b->br_opens++;
}

int tg_brk_allow(tg_brk_t *b, const tg_brk_conf_t *c, int64_t now_ms)
{
    if (b->br_state == TG_BRK_OPEN) {
        if (now_ms - b->br_opened_ms < c->bc_open_ms)
            return 0;
        b->br_state = TG_BRK_HALF_OPEN;
        b->br_probe_ok = 0;
        b->br_probe_inflight = 0;
    }
    if (b->br_state == TG_BRK_HALF_OPEN) {
        if (b->br_probe_inflight)
            return 0;
        b->br_probe_inflight = 1;
    }
    return 1;
}

void tg_brk_record(tg_brk_t *b, const tg_brk_conf_t *c, int ok, int64_t now_ms)
{
    if (b->br_state == TG_BRK_HALF_OPEN) {
        b->br_probe_inflight = 0;
        if (!ok) {
            open_it(b, now_ms);
            return;
        }
        if (++b->br_probe_ok >= c->bc_probes) {
            b->br_state = TG_BRK_CLOSED;
            b->br_fails_in_row = 0;
            b->br_win_start_ms = now_ms;
            b->br_win_total = b->br_win_fail = 0;
        }
        return;
    }
    if (b->br_state == TG_BRK_OPEN)
        return; /* a straggler admitted before it opened */
    if (now_ms - b->br_win_start_ms >= c->bc_window_ms) {
        b->br_win_start_ms = now_ms;
        b->br_win_total = b->br_win_fail = 0;
    }
    b->br_win_total++;
    if (ok) {
        b->br_fails_in_row = 0;
        return;
    }
    b->br_win_fail++;
    if (++b->br_fails_in_row >= c->bc_consecutive) {
        open_it(b, now_ms);
        return;
    }
    if (c->bc_rate_ppm && b->br_win_total >= c->bc_min_requests &&
        (uint64_t)b->br_win_fail * 1000000u >= (uint64_t)c->bc_rate_ppm * b->br_win_total)
        open_it(b, now_ms);
}

int tg_agent_pick(const uint32_t *weights, int n, uint64_t r)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += weights[i];
    if (!total)
        return -1;
    uint64_t x = r % total;
    for (int i = 0; i < n; i++) {
        if (x < weights[i])
            return i;
        x -= weights[i];
    }
    return -1; /* not reached */
}

uint32_t tg_agent_backoff(uint32_t initial_ms, uint32_t max_ms, unsigned retry, int64_t retry_after_ms)
{
    uint64_t b = initial_ms;
    for (unsigned i = 0; i < retry && b < max_ms; i++)
        b *= 2;
    if (retry_after_ms > 0 && (uint64_t)retry_after_ms > b)
        b = (uint64_t)retry_after_ms;
    if (max_ms && b > max_ms)
        b = max_ms;
    return (uint32_t)b;
}
