/* tg_agent: tollgate-agent, the edge data plane. An HTTP server that speaks
 * the OpenAI API to unchanged official SDKs, authenticates each request
 * against a configuration snapshot, chooses a route, calls the upstream
 * channel (retrying and falling back) and streams the answer back.
 *
 * Threads: N workers, each with its own libevent loop, its own SO_REUSEPORT
 * listener (the kernel spreads connections) and its own libcurl multi
 * handle driven by that same loop (multi_socket API), so a request lives on
 * one thread from its first byte to its last, and no call on a loop blocks.
 *
 * Configuration: an immutable snapshot (tollgate.v1.Snapshot) turned into
 * lookup tables, swapped atomically (tg_agent_set_snapshot). A request holds
 * a reference to the tables it started with; nothing on the request path
 * takes a lock to read configuration.
 *
 * See agent/README.md for the request lifecycle, the retry/fallback/breaker
 * rules and the flags.
 */
#ifndef TG_AGENT_H
#define TG_AGENT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- errors ------------------------------------------------------------- */

enum tg_agent_error {
    TG_AGENT_OK = 0,
    TG_AGENT_EJSON = -700,     /* a body is not valid JSON */
    TG_AGENT_EREQUEST = -701,  /* valid JSON, but a field has the wrong type */
    TG_AGENT_ENOMEM = -702,    /* allocation failed */
    TG_AGENT_ETOOBIG = -703,   /* over a size limit */
    TG_AGENT_ECONFIG = -704,   /* the snapshot is inconsistent or unreadable */
    TG_AGENT_ESYS = -705,      /* a system call failed (socket, bind, thread, file) */
    TG_AGENT_EUSAGE = -706,    /* bad command line */
    TG_AGENT_EFULL = -707,     /* the usage outbox is full */
    TG_AGENT_ERANGE = -708,    /* a number is not a count the gateway accepts */
    TG_AGENT_ELAST = -709      /* sentinel, not an error */
};

/* Names an error code. Never NULL. */
const char *tg_agent_strerror(int code);

/* ---- the daemon --------------------------------------------------------- */

typedef struct tg_agent tg_agent_t;

/* Start-up options (flags of tollgate-agent). */
typedef struct tg_agent_opts {
    const char *ao_host;       /* listen address, "127.0.0.1" */
    int ao_port;               /* 0: the kernel picks (printed on stdout) */
    int ao_threads;            /* worker loops; >= 1 */
    const char *ao_snapshot;   /* --snapshot FILE: packed Snapshot or JSON */
    const char *ao_data_dir;   /* --data-dir: the last snapshot is kept here */
    size_t ao_max_body;        /* hard request-body cap of the HTTP front */
    const char *ao_region;     /* recorded in usage records */
    int ao_insecure_upstream;  /* test only: skip TLS verification upstream */
    const char *ao_upstream_ca; /* PEM roots for HTTPS upstreams; NULL: the system's */
    int ao_upstream_curl;      /* --upstream-client curl: libcurl for every upstream call, not the lean client */
    int ao_log_records;        /* also write each usage record as a JSON log line */
    int ao_spend_off;          /* benchmark baseline only: serve without pre-authorization (no --cp) */
    size_t ao_outbox_map;      /* LMDB map size of the outbox (bytes) */
    const char *ao_cp;         /* control plane gRPC address ("127.0.0.1:7443"); NULL: none */
    const char *ao_enroll_token; /* first start: enrollment token for the control plane */
    /* TLS to the control plane: roots (PEM file; with ao_cp_tls and none,
     * the system's), a client certificate and key for mTLS, the expected
     * server name when it is not the host of --cp */
    int ao_cp_tls;
    const char *ao_cp_ca, *ao_cp_cert, *ao_cp_key, *ao_cp_tls_name;
    const char *ao_forward[8]; /* client headers copied to upstream requests */
    int ao_nforward;
    int ao_head_timeout_s;     /* the whole request head must arrive within this (default 30) */
    int ao_body_timeout_s;     /* the whole request body must arrive within this after its head (default 300) */
    long ao_max_conns;         /* open client connections, all workers; 0: half the open-files limit */
    long ao_max_conns_per_ip;  /* open client connections from one address; 0: no cap (default) */
    const char *ao_metrics_host; /* /metrics, /healthz, /readyz listen here (IPv4); NULL: not served */
    int ao_metrics_port;       /* 0: the kernel picks (printed on stdout) */
    const char *ao_cors[8];    /* browser origins allowed (CORS); "*": any; none: no CORS headers */
    int ao_ncors;
} tg_agent_opts_t;

/* Fills *o with defaults: 127.0.0.1:8080, 1 thread, 16 MiB body cap,
 * metrics on 127.0.0.1 at a port the kernel picks. */
void tg_agent_opts_default(tg_agent_opts_t *o);

/* Creates the agent: loads the snapshot (the --snapshot file, else the one
 * persisted in the data dir), binds the listeners. Returns 0 and *out (free
 * with tg_agent_destroy), or a negative code with the reason in err. */
int tg_agent_create(const tg_agent_opts_t *o, tg_agent_t **out, char *err, size_t errlen);

/* The port the listeners are bound to. */
int tg_agent_port(const tg_agent_t *a);
/* The port of the metrics listener, or 0 when there is none. */
int tg_agent_metrics_port(const tg_agent_t *a);

/* Runs the worker loops until tg_agent_stop; returns 0 or TG_AGENT_ESYS. */
int tg_agent_run(tg_agent_t *a, char *err, size_t errlen);

/* Asks every loop to finish its in-flight work and return. Async-signal
 * safe (writes to a pipe). */
void tg_agent_stop(tg_agent_t *a);

/* Installs a new snapshot from bytes: packed protobuf, or JSON when the
 * first non-space byte is '{'. The new tables are built off the request
 * path and swapped in atomically; in-flight requests finish on the old
 * ones. Returns 0 or TG_AGENT_ECONFIG/ENOMEM with the reason in err; on
 * error the running configuration is unchanged. Thread-safe. */
int tg_agent_set_snapshot(tg_agent_t *a, const void *data, size_t len, char *err, size_t errlen);

/* Prints the records waiting in the outbox of data_dir, oldest first, one
 * JSON object per line ({"seq":N,"record":{...}}), at most limit (<= 0: all).
 * With rejected set: the records the control plane refused for good.
 * Opens the outbox read-only, so it works beside a running agent. Returns
 * the number printed, or a negative code with the reason in err. */
long tg_agent_outbox_dump(const char *data_dir, FILE *out, long limit, int rejected, char *err, size_t errlen);

/* Stops (if running) and frees everything. Accepts NULL. */
void tg_agent_destroy(tg_agent_t *a);

#endif
