/* tg_echo: the test service behind rpc/testdata/echo.proto, implemented on
 * rpc/ the way the control plane's services will be: unary handlers that
 * read metadata and return statuses, a stream fed by its own thread with
 * blocking sends (Count), and streams pushed by one shared ticker thread,
 * like a store watch (Watch). Used by the unit tests and echo_server.
 *
 * Order of teardown: shut the server down first (its kept streams are
 * finished through on_cancel or by their threads), then tg_echo_destroy. */
#ifndef TG_ECHO_SERVICE_H
#define TG_ECHO_SERVICE_H

#include "rpc/tg_rpc.h"

typedef struct tg_echo tg_echo_t;

typedef struct tg_echo_stats {
    int es_active;      /* Watch streams open now */
    int es_cancelled;   /* streams whose client left before they ended */
    int es_count_done;  /* Count streams that sent every message */
    int es_say_running; /* Say handlers running now */
} tg_echo_stats_t;

/* Creates the service and starts its ticker thread. `name` (copied, may be
 * NULL) prefixes Watch replies' text so tests tell two servers apart.
 * Returns NULL on failure. Destroy with tg_echo_destroy. */
tg_echo_t *tg_echo_create(const char *name);

/* Registers /tollgate.test.v1.Echo/{Say,Count,Watch,Fail,Stats}. */
int tg_echo_register(tg_echo_t *e, tg_rpc_server_t *srv, char *err, size_t errlen);

/* A snapshot of the counters. Thread-safe. */
tg_echo_stats_t tg_echo_stats(tg_echo_t *e);

/* Stops the ticker, finishes Watch streams still open, joins Count threads,
 * frees. Accepts NULL. */
void tg_echo_destroy(tg_echo_t *e);

#endif
