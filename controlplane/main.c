/* main.c: the tollgate-cp daemon. Reads flags (each also from a TG_CP_*
 * environment variable; a flag wins), opens the store, this replica's
 * ledger and signing key, serves AdminService and AgentService over gRPC
 * and health/metrics over HTTP, and on SIGTERM or SIGINT shuts down in
 * order (stop accepting calls, let calls in flight finish, stop the agent
 * side's threads, close the ledger and the store) and exits 0.
 *
 * Its first line on stdout is machine-readable, so a supervisor or a test
 * that started it on port 0 learns the ports:
 *   tollgate-cp grpc=127.0.0.1:PORT http=127.0.0.1:PORT
 * Logs are JSON lines on stderr (base/tg_log.h). */
#include <errno.h>
#include <event2/event.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/tg_log.h"
#include "checkcfg/tg_checkcfg.h"
#include "crypto/tg_crypto.h"
#include "controlplane/admin_int.h"
#include "controlplane/agentside.h" /* cp_agent_side_free */

static const char USAGE[] =
    "usage: tollgate-cp [flags]   (each flag also reads the TG_CP_* variable shown)\n"
    "  --listen HOST:PORT        gRPC address (TG_CP_LISTEN, default 127.0.0.1:7443; port 0 picks one)\n"
    "  --http HOST:PORT          health and metrics (TG_CP_HTTP, default 127.0.0.1:7444)\n"
    "  --data-dir DIR            ledger, signing key, default store (TG_CP_DATA_DIR, default ./tollgate-cp-data)\n"
    "  --store SPEC              lmdb:PATH or etcd:URL,URL (TG_CP_STORE, default lmdb:DATA_DIR/store)\n"
    "  --store-ca PEM --store-cert PEM --store-key PEM   etcd over https: roots, client identity\n"
    "                            (TG_CP_STORE_CA, TG_CP_STORE_CERT, TG_CP_STORE_KEY)\n"
    "  --admin-tokens FILE       admin bearer tokens, 'name role token' per line (TG_CP_ADMIN_TOKENS)\n"
    "  --enroll-token TOKEN      agents' enrollment token (TG_CP_ENROLL_TOKEN)\n"
    "  --enroll-token-file FILE  the same, read from a file (TG_CP_ENROLL_TOKEN_FILE)\n"
    "  --tls-cert PEM --tls-key PEM   serve gRPC over TLS (TG_CP_TLS_CERT, TG_CP_TLS_KEY)\n"
    "  --client-ca PEM           require client certificates signed by it: mTLS (TG_CP_CLIENT_CA)\n"
    "                            (plaintext on a --listen that is not loopback is warned about;\n"
    "                            TG_CP_REQUIRE_TLS=1 refuses it)\n"
    "  --node-id NAME            this replica's name (TG_CP_NODE_ID, default HOST:PID)\n"
    "  --advertise HOST:PORT     where the other replicas reach this one's gRPC port (TG_CP_ADVERTISE,\n"
    "                            default the --listen host, or this host's name for a wildcard, and the bound port)\n"
    "  --peer-ca PEM             roots that verify the other replicas' certificates when forwarding\n"
    "                            (TG_CP_PEER_CA, default --client-ca, else the system roots)\n"
    "  --threads N               gRPC handler threads (TG_CP_THREADS, default 8)\n"
    "  --heartbeat-ms MS         Sync heartbeat period (TG_CP_HEARTBEAT_MS, default 5000)\n"
    "  --settled-retention-s S   settled batches and their dedup markers kept in the store\n"
    "                            (TG_CP_SETTLED_RETENTION_S, default 60 on lmdb, 3600 on etcd)\n"
    "  --store-history-s S       lmdb: revision history kept for watches (TG_CP_STORE_HISTORY_S,\n"
    "                            default 120; etcd: use its --auto-compaction-* flags)\n"
    "  --lease-ttl-ms MS         spend leases expire this long after their last renewal (TG_CP_LEASE_TTL_MS, default 30000)\n"
    "  --log-level LEVEL         debug, info, warn or error (TG_CP_LOG_LEVEL, default info)\n"
    "  --check-config[=offline]  check the flags and environment, the files they name (readable, certificates\n"
    "                            load, keys match, expiry) and that the store answers (not with =offline);\n"
    "                            print \"config ok\" and exit 0, or name each problem and its fix and exit 1\n"
    "  --legacy-agent-proofs on|off  accept agents older than proof nonces (their proof has none), logged\n"
    "                            once per agent and counted (TG_CP_LEGACY_AGENT_PROOFS, default on in this\n"
    "                            release; upgrade control planes, then agents, then turn it off)\n"
    "  --accept-ledger-gap on|off    let a replica whose ledger lacks rows no peer could supply run for\n"
    "                            leader anyway (TG_CP_ACCEPT_LEDGER_GAP, default off)\n"
    "  --ledger-min-free-mb MB   settlement pauses (agents keep their records) while the file system of\n"
    "                            --data-dir has less free; 0 checks nothing (TG_CP_LEDGER_MIN_FREE_MB, default 64)\n"
    "  --settled-compression zstd|none  settled batches written to the store's settled log compressed, or\n"
    "                            not (TG_CP_SETTLED_COMPRESSION; this release reads both; default zstd on the\n"
    "                            embedded store, none on etcd: set zstd once every replica runs this release)\n"
    "Signals: SIGTERM/SIGINT shut down gracefully; SIGHUP re-reads --admin-tokens.\n"
    "Subcommands: tollgate-cp backup --to DIR [--data-dir D] [--store SPEC]   hot copy, chain verified\n"
    "             tollgate-cp restore --from DIR [--data-dir D] [--store SPEC] verify, then put in place\n";

typedef struct flag {
    const char *f_name; /* "--listen" */
    const char *f_env;  /* "TG_CP_LISTEN" */
    const char *f_val;
} flag_t;

enum {
    F_LISTEN, F_HTTP, F_DATA, F_STORE, F_TOKENS, F_ENROLL, F_ENROLL_FILE, F_CERT, F_KEY, F_CA,
    F_NODE, F_THREADS, F_HEARTBEAT, F_RETENTION, F_HISTORY, F_LEASE_TTL, F_LOGLEVEL, F_ADVERTISE,
    F_PEER_CA, F_STORE_CA, F_STORE_CERT, F_STORE_KEY, F_LEGACY_PROOFS, F_ACCEPT_GAP, F_MIN_FREE, F_COMPRESS, F_COUNT
};

static flag_t flags[F_COUNT] = {
    {"--listen", "TG_CP_LISTEN", "127.0.0.1:7443"},
    {"--http", "TG_CP_HTTP", "127.0.0.1:7444"},
    {"--data-dir", "TG_CP_DATA_DIR", "tollgate-cp-data"},
    {"--store", "TG_CP_STORE", NULL},
    {"--admin-tokens", "TG_CP_ADMIN_TOKENS", NULL},
    {"--enroll-token", "TG_CP_ENROLL_TOKEN", NULL},
    {"--enroll-token-file", "TG_CP_ENROLL_TOKEN_FILE", NULL},
    {"--tls-cert", "TG_CP_TLS_CERT", NULL},
    {"--tls-key", "TG_CP_TLS_KEY", NULL},
    {"--client-ca", "TG_CP_CLIENT_CA", NULL},
    {"--node-id", "TG_CP_NODE_ID", NULL},
    {"--threads", "TG_CP_THREADS", "8"},
    {"--heartbeat-ms", "TG_CP_HEARTBEAT_MS", "5000"},
    {"--settled-retention-s", "TG_CP_SETTLED_RETENTION_S", NULL}, /* by store, below */
    {"--store-history-s", "TG_CP_STORE_HISTORY_S", "120"},
    {"--lease-ttl-ms", "TG_CP_LEASE_TTL_MS", "30000"},
    {"--log-level", "TG_CP_LOG_LEVEL", "info"},
    {"--advertise", "TG_CP_ADVERTISE", NULL},
    {"--peer-ca", "TG_CP_PEER_CA", NULL},
    {"--store-ca", "TG_CP_STORE_CA", NULL},
    {"--store-cert", "TG_CP_STORE_CERT", NULL},
    {"--store-key", "TG_CP_STORE_KEY", NULL},
    {"--legacy-agent-proofs", "TG_CP_LEGACY_AGENT_PROOFS", "on"},
    {"--accept-ledger-gap", "TG_CP_ACCEPT_LEDGER_GAP", "off"},
    {"--ledger-min-free-mb", "TG_CP_LEDGER_MIN_FREE_MB", "64"},
    {"--settled-compression", "TG_CP_SETTLED_COMPRESSION", NULL}, /* by store, below */
};

static char *slurp(const char *path, size_t max, char *err, size_t errlen)
{
    tg_buf_t b;
    char chunk[4096];
    size_t n;
    FILE *f = fopen(path, "rb");
    if (!f) {
        tg_errf(err, errlen, -1, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    tg_buf_init(&b, max);
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (tg_buf_append(&b, chunk, n) != 0) {
            tg_errf(err, errlen, -1, "%s: larger than %zu bytes", path, max);
            fclose(f);
            tg_buf_free(&b);
            return NULL;
        }
    fclose(f);
    if (!b.b_data) return tg_strdup("");
    return tg_buf_steal(&b, NULL);
}

static int parse_int(const char *name, const char *v, long lo, long hi, long *out)
{
    char *end;
    long x;
    errno = 0;
    x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "tollgate-cp: %s %s: expected a number from %ld to %ld\n", name, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_onoff(const char *name, const char *v, int *out)
{
    if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0) {
        fprintf(stderr, "tollgate-cp: %s %s: expected on or off\n", name, v);
        return -1;
    }
    *out = strcmp(v, "on") == 0;
    return 0;
}

static int mkdirs(const char *dir)
{
    char p[PATH_MAX];
    size_t n = (size_t)snprintf(p, sizeof p, "%s", dir);
    if (n >= sizeof p) return -1;
    for (size_t i = 1; i <= n; i++)
        if (p[i] == '/' || p[i] == '\0') {
            char c = p[i];
            p[i] = '\0';
            if (mkdir(p, 0700) != 0 && errno != EEXIST) return -1;
            p[i] = c;
        }
    return 0;
}

/* Trailing whitespace (a newline) of a token file is not part of the token. */
static void chomp(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) s[--n] = '\0';
}

/* ---- --check-config ------------------------------------------------------------ */

/* Checks what main() would load, without serving: flags and environment
 * (already parsed by main), files, certificates, directories, and, unless
 * offline, that the store answers. Prints "config ok" and returns 0, or
 * returns 1 after naming each problem. */
static int check_config(int offline)
{
    const char *store = flags[F_STORE].f_val;
    tg_checkcfg_t c = {.cc_prog = "tollgate-cp"};
    tg_checkcfg_addr(&c, "--listen", flags[F_LISTEN].f_val, 0);
    tg_checkcfg_addr(&c, "--http", flags[F_HTTP].f_val, 0);
    if (flags[F_ADVERTISE].f_val) tg_checkcfg_addr(&c, "--advertise", flags[F_ADVERTISE].f_val, 1);
    tg_checkcfg_dir(&c, "--data-dir", flags[F_DATA].f_val, 1);
    if (flags[F_TOKENS].f_val) {
        char err[TG_ERRLEN] = "";
        tg_cp_admin_token_t *t = NULL;
        size_t n = 0;
        if (tg_cp_tokens_load(flags[F_TOKENS].f_val, &t, &n, err, sizeof err) != 0)
            tg_checkcfg_problem(&c, "--admin-tokens: %s: write one 'name role token' a line (role admin, operator or "
                                    "reader)", err);
        else if (n == 0)
            tg_checkcfg_problem(&c, "--admin-tokens %s holds no token: every admin call would be refused; add one",
                                flags[F_TOKENS].f_val);
        tg_free(t);
    } else {
        tg_checkcfg_problem(&c, "no --admin-tokens (TG_CP_ADMIN_TOKENS): every admin call would be refused; give "
                                "a file of 'name role token' lines");
    }
    if (flags[F_ENROLL_FILE].f_val) tg_checkcfg_readable(&c, "--enroll-token-file", flags[F_ENROLL_FILE].f_val);
    if (!flags[F_ENROLL].f_val && !flags[F_ENROLL_FILE].f_val)
        tg_checkcfg_warn(&c, "no --enroll-token-file (TG_CP_ENROLL_TOKEN_FILE): no new agent can enroll");
    if (flags[F_CERT].f_val) tg_checkcfg_cert(&c, "--tls-cert/--tls-key", flags[F_CERT].f_val, flags[F_KEY].f_val);
    if (flags[F_CA].f_val) tg_checkcfg_cert(&c, "--client-ca", flags[F_CA].f_val, NULL);
    if (flags[F_PEER_CA].f_val) tg_checkcfg_cert(&c, "--peer-ca", flags[F_PEER_CA].f_val, NULL);
    if (!!flags[F_STORE_CERT].f_val != !!flags[F_STORE_KEY].f_val)
        tg_checkcfg_problem(&c, "--store-cert and --store-key go together (etcd client certificate)");
    if (flags[F_STORE_CERT].f_val && flags[F_STORE_KEY].f_val)
        tg_checkcfg_cert(&c, "--store-cert/--store-key", flags[F_STORE_CERT].f_val, flags[F_STORE_KEY].f_val);
    if (flags[F_STORE_CA].f_val) tg_checkcfg_cert(&c, "--store-ca", flags[F_STORE_CA].f_val, NULL);
    if (store && strncmp(store, "etcd:", 5) != 0 && strncmp(store, "lmdb:", 5) != 0) {
        tg_checkcfg_problem(&c, "--store %s: expected lmdb:PATH or etcd:URL[,URL...]", store);
    } else if (store && strncmp(store, "lmdb:", 5) == 0) {
        tg_checkcfg_dir(&c, "--store", store + 5, 1);
    } else if (store && c.cc_problems == 0 && !offline) {
        /* the etcd cluster answers with these TLS files (tg_store_open only
         * parses; the revision read is the first request) */
        char err[TG_ERRLEN] = "";
        int64_t rev = 0;
        tg_store_t *st = NULL;
        tg_store_opts_t o;
        memset(&o, 0, sizeof o);
        o.so_ca_file = flags[F_STORE_CA].f_val;
        o.so_cert_file = flags[F_STORE_CERT].f_val;
        o.so_key_file = flags[F_STORE_KEY].f_val;
        o.so_retries = 1;
        o.so_timeout_ms = 3000;
        if (tg_store_open(&st, store, &o, err, sizeof err) != 0 || tg_store_revision(st, &rev, err, sizeof err) != 0)
            tg_checkcfg_problem(&c, "--store %s: %s: start etcd or fix the endpoints and "
                                    "--store-ca/--store-cert/--store-key (--check-config=offline skips this)",
                                store, err);
        tg_store_close(st);
    }
    return tg_checkcfg_done(&c);
}

int main(int argc, char **argv)
{
    tg_cp_t cp;
    tg_rpc_server_opts_t so = {0};
    tg_cp_http_t *http = NULL;
    char err[TG_ERRLEN] = "", node[300], store_spec[PATH_MAX + 16], path[PATH_MAX];
    char *cert = NULL, *key = NULL, *ca = NULL, *peer_ca = NULL, *enroll = NULL;
    int rc = 1, http_port = 0, agent_started = 0, sig, check = 0;
    long threads, heartbeat, retention, history, lease_ttl, min_free;
    tg_store_opts_t sto;
    sigset_t set;

    memset(&cp, 0, sizeof cp);
    if (argc > 1 && strcmp(argv[1], "backup") == 0) return tg_cp_backup_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "restore") == 0) return tg_cp_restore_main(argc - 1, argv + 1);
    for (int i = 0; i < F_COUNT; i++) {
        const char *e = getenv(flags[i].f_env);
        if (e && *e) flags[i].f_val = e;
    }
    for (int i = 1; i < argc; i++) {
        int found = 0;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (strcmp(argv[i], "--check-config") == 0 || strcmp(argv[i], "--check-config=offline") == 0) {
            check = argv[i][14] ? 2 : 1;
            continue;
        }
        for (int k = 0; k < F_COUNT; k++) {
            size_t fl = strlen(flags[k].f_name);
            if (strncmp(argv[i], flags[k].f_name, fl) == 0 && argv[i][fl] == '=') {
                flags[k].f_val = argv[i] + fl + 1;
                found = 1;
            } else if (strcmp(argv[i], flags[k].f_name) == 0) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "tollgate-cp: %s needs a value\n%s", argv[i], USAGE);
                    return 2;
                }
                flags[k].f_val = argv[++i];
                found = 1;
            }
            if (found) break;
        }
        if (!found) {
            fprintf(stderr, "tollgate-cp: unknown flag %s\n%s", argv[i], USAGE);
            return 2;
        }
    }
    {
        int lvl = tg_log_parse_level(flags[F_LOGLEVEL].f_val);
        if (lvl < 0) {
            fprintf(stderr, "tollgate-cp: --log-level %s: expected debug, info, warn or error\n",
                    flags[F_LOGLEVEL].f_val);
            return 2;
        }
        tg_log_set_level(lvl);
    }
    if (parse_int("--threads", flags[F_THREADS].f_val, 1, 256, &threads) ||
        parse_int("--heartbeat-ms", flags[F_HEARTBEAT].f_val, 100, 3600000, &heartbeat) ||
        parse_int("--store-history-s", flags[F_HISTORY].f_val, 1, 86400 * 365, &history) ||
        parse_int("--lease-ttl-ms", flags[F_LEASE_TTL].f_val, 1000, 3600000, &lease_ttl) ||
        parse_onoff("--legacy-agent-proofs", flags[F_LEGACY_PROOFS].f_val, &cp.cp_legacy_proofs) ||
        parse_onoff("--accept-ledger-gap", flags[F_ACCEPT_GAP].f_val, &cp.cp_accept_gap) ||
        parse_int("--ledger-min-free-mb", flags[F_MIN_FREE].f_val, 0, 1024 * 1024, &min_free))
        return 2;
    /* an older replica cannot read zstd values: on etcd, where older
     * replicas may still tail the log during an upgrade, the operator turns
     * it on (docs/OPERATIONS.md, "Compressed settled log") */
    if (!flags[F_COMPRESS].f_val) {
        const char *st = flags[F_STORE].f_val;
        flags[F_COMPRESS].f_val = st && strncmp(st, "etcd:", 5) == 0 ? "none" : "zstd";
    }
    if (strcmp(flags[F_COMPRESS].f_val, "zstd") != 0 && strcmp(flags[F_COMPRESS].f_val, "none") != 0) {
        fprintf(stderr, "tollgate-cp: --settled-compression %s: expected zstd or none\n", flags[F_COMPRESS].f_val);
        return 2;
    }
    cp.cp_settled_zstd = strcmp(flags[F_COMPRESS].f_val, "zstd") == 0;
    cp.cp_ledger_min_free = (int64_t)min_free * 1024 * 1024;
    /* one replica on LMDB: the settled log's only reader is this process's
     * tailer, so a short window keeps the store small; etcd replicas that
     * fall behind catch up from it, so it is longer there */
    if (!flags[F_RETENTION].f_val) {
        const char *st = flags[F_STORE].f_val;
        flags[F_RETENTION].f_val = st && strncmp(st, "etcd:", 5) == 0 ? "3600" : "60";
    }
    if (parse_int("--settled-retention-s", flags[F_RETENTION].f_val, 1, 86400 * 365, &retention)) return 2;
    if (!!flags[F_CERT].f_val != !!flags[F_KEY].f_val) {
        fprintf(stderr, "tollgate-cp: --tls-cert and --tls-key go together\n");
        return 2;
    }
    if (flags[F_CA].f_val && !flags[F_CERT].f_val) {
        fprintf(stderr, "tollgate-cp: --client-ca (mTLS) needs --tls-cert and --tls-key\n");
        return 2;
    }
    if (!flags[F_CERT].f_val && !tg_cp_loopback(flags[F_LISTEN].f_val)) {
        /* agents' Sync carries the channels' upstream credentials */
        if (getenv("TG_CP_REQUIRE_TLS") && strcmp(getenv("TG_CP_REQUIRE_TLS"), "1") == 0) {
            fprintf(stderr, "tollgate-cp: --listen %s is not a loopback address and serves plaintext: give "
                            "--tls-cert and --tls-key (TG_CP_REQUIRE_TLS=1 refuses plaintext there)\n",
                    flags[F_LISTEN].f_val);
            return 2;
        }
        fprintf(stderr, "tollgate-cp: WARNING: --listen %s is not a loopback address and serves PLAINTEXT gRPC: "
                        "agents' configuration (with the channels' upstream credentials), admin tokens and usage "
                        "cross the network unencrypted. Give --tls-cert/--tls-key (and --client-ca for mTLS); "
                        "TG_CP_REQUIRE_TLS=1 makes this an error.\n",
                flags[F_LISTEN].f_val);
    }

    if (check) return check_config(check == 2);

    /* Block the signals before any thread starts, so only sigwait sees them. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (flags[F_NODE].f_val) {
        snprintf(node, sizeof node, "%s", flags[F_NODE].f_val);
    } else {
        char host[256] = "localhost";
        gethostname(host, sizeof host - 1);
        snprintf(node, sizeof node, "%s:%d", host, (int)getpid());
    }
    cp.cp_node_id = node;
    cp.cp_data_dir = flags[F_DATA].f_val;
    cp.cp_heartbeat_ms = (int)heartbeat;
    cp.cp_settled_retention_s = (int)retention;
    cp.cp_lease_ttl_ms = (int)lease_ttl;
    cp.cp_crash_at = getenv("TG_CP_CRASH_AT");
    if (mkdirs(cp.cp_data_dir) != 0) {
        TG_LOG(TG_LOG_ERROR, "cp", "cannot create --data-dir %s: %s", cp.cp_data_dir,
               strerror(errno));
        goto done;
    }
    if (flags[F_STORE].f_val) snprintf(store_spec, sizeof store_spec, "%s", flags[F_STORE].f_val);
    else snprintf(store_spec, sizeof store_spec, "lmdb:%s/store", cp.cp_data_dir);
    cp.cp_store_spec = store_spec;

    if (flags[F_TOKENS].f_val) {
        if (tg_cp_tokens_load(flags[F_TOKENS].f_val, &cp.cp_tokens, &cp.cp_ntokens, err,
                              sizeof err) != 0) {
            TG_LOG(TG_LOG_ERROR, "cp", "%s", err);
            goto done;
        }
        if (cp.cp_ntokens == 0) TG_LOG(TG_LOG_WARN, "cp", "--admin-tokens file holds no tokens");
    } else {
        TG_LOG(TG_LOG_WARN, "cp", "no --admin-tokens: every admin call will be refused");
    }
    if (flags[F_ENROLL].f_val) {
        enroll = tg_strdup(flags[F_ENROLL].f_val);
    } else if (flags[F_ENROLL_FILE].f_val) {
        if (!(enroll = slurp(flags[F_ENROLL_FILE].f_val, 4096, err, sizeof err))) {
            TG_LOG(TG_LOG_ERROR, "cp", "--enroll-token-file: %s", err);
            goto done;
        }
        chomp(enroll);
    }
    cp.cp_enroll_token = enroll;
    if ((flags[F_CERT].f_val && !(cert = slurp(flags[F_CERT].f_val, 1 << 20, err, sizeof err))) ||
        (flags[F_KEY].f_val && !(key = slurp(flags[F_KEY].f_val, 1 << 20, err, sizeof err))) ||
        (flags[F_CA].f_val && !(ca = slurp(flags[F_CA].f_val, 1 << 20, err, sizeof err))) ||
        (flags[F_PEER_CA].f_val && !(peer_ca = slurp(flags[F_PEER_CA].f_val, 1 << 20, err, sizeof err)))) {
        TG_LOG(TG_LOG_ERROR, "cp", "TLS: %s", err);
        goto done;
    }
    /* a follower calls the leader as a client: TLS when replicas serve it,
     * with this replica's own certificate when they require client ones */
    if ((cert && tg_crypto_cert_not_after(cert, strlen(cert), &cp.cp_m_cert_not_after, err, sizeof err) != 0) ||
        (ca && tg_crypto_cert_not_after(ca, strlen(ca), &cp.cp_m_ca_not_after, err, sizeof err) != 0)) {
        TG_LOG(TG_LOG_ERROR, "cp", "TLS: --tls-cert / --client-ca: %s", err);
        goto done;
    }
    if (cert) {
        cp.cp_peer_tls.co_tls = 1;
        cp.cp_peer_tls.co_root_pem = peer_ca ? peer_ca : ca;
        if (ca) {
            cp.cp_peer_tls.co_cert_pem = cert;
            cp.cp_peer_tls.co_key_pem = key;
        }
    }

    memset(&sto, 0, sizeof sto);
    sto.so_history_s = history; /* lmdb only */
    sto.so_ca_file = flags[F_STORE_CA].f_val; /* etcd only */
    sto.so_cert_file = flags[F_STORE_CERT].f_val;
    sto.so_key_file = flags[F_STORE_KEY].f_val;
    if (tg_store_open(&cp.cp_store, store_spec, &sto, err, sizeof err) != 0) {
        TG_LOG(TG_LOG_ERROR, "cp", "store %s: %s", store_spec, err);
        goto done;
    }
    snprintf(path, sizeof path, "%s/ledger", cp.cp_data_dir);
    if (tg_ledger_open(path, NULL, &cp.cp_ledger, err, sizeof err) != 0) {
        TG_LOG(TG_LOG_ERROR, "cp", "ledger %s: %s", path, err);
        goto done;
    }
    snprintf(path, sizeof path, "%s/cp-signing-key.pem", cp.cp_data_dir);
    if (tg_crypto_key_load_or_create(path, &cp.cp_key, err, sizeof err) != 0) {
        TG_LOG(TG_LOG_ERROR, "cp", "signing key: %s", err);
        goto done;
    }

    so.so_addr = flags[F_LISTEN].f_val;
    so.so_threads = (int)threads;
    so.so_cert_pem = cert;
    so.so_key_pem = key;
    so.so_client_ca_pem = ca;
    if (!(cp.cp_rpc = tg_rpc_server_create(&so, err, sizeof err)) ||
        tg_cp_admin_register(&cp, err, sizeof err) != 0 ||
        tg_cp_agentsvc_register(&cp, err, sizeof err) != 0) {
        TG_LOG(TG_LOG_ERROR, "cp", "gRPC server: %s", err);
        goto done;
    }
    if (tg_cp_agent_side_start(&cp, err, sizeof err) != 0) {
        TG_LOG(TG_LOG_ERROR, "cp", "agent side: %s", err);
        goto done;
    }
    agent_started = 1;
    if (tg_rpc_server_start(cp.cp_rpc, err, sizeof err) != 0) {
        TG_LOG(TG_LOG_ERROR, "cp", "--listen %s: %s", so.so_addr, err);
        goto done;
    }
    if (!(http = tg_cp_http_start(&cp, flags[F_HTTP].f_val, &http_port, err, sizeof err))) {
        TG_LOG(TG_LOG_ERROR, "cp", "%s", err);
        goto done;
    }
    {
        char gh[256], hh[256];
        const char *gc = strrchr(so.so_addr, ':'), *hc = strrchr(flags[F_HTTP].f_val, ':');
        snprintf(gh, sizeof gh, "%.*s", (int)(gc - so.so_addr), so.so_addr);
        snprintf(hh, sizeof hh, "%.*s", (int)(hc - flags[F_HTTP].f_val), flags[F_HTTP].f_val);
        /* the log line first: whoever waits for the port line (scripts,
         * tests) then also finds what it says */
        TG_LOG(TG_LOG_INFO, "cp",
               "serving: grpc %s:%d (%s), http %s:%d, store %s, node %s, %zu admin token(s)", gh,
               tg_rpc_server_port(cp.cp_rpc), cert ? (ca ? "mTLS" : "TLS") : "plaintext", hh,
               http_port, store_spec, node, cp.cp_ntokens);
        printf("tollgate-cp grpc=%s:%d http=%s:%d\n", gh, tg_rpc_server_port(cp.cp_rpc), hh,
               http_port);
        if (flags[F_ADVERTISE].f_val) {
            snprintf(path, sizeof path, "%s", flags[F_ADVERTISE].f_val);
        } else {
            char host[256] = "localhost";
            int wild = !gh[0] || strcmp(gh, "0.0.0.0") == 0 || strcmp(gh, "[::]") == 0 || strcmp(gh, "::") == 0;
            if (wild) gethostname(host, sizeof host - 1);
            snprintf(path, sizeof path, "%s:%d", wild ? host : gh, tg_rpc_server_port(cp.cp_rpc));
        }
        tg_cp_agent_side_advertise(&cp, path);
        fflush(stdout);
    }

    /* SIGHUP re-reads --admin-tokens (rotation without a restart); SIGTERM
     * and SIGINT stop */
    for (;;) {
        if (sigwait(&set, &sig) != 0) sig = SIGTERM;
        if (sig != SIGHUP) break;
        if (!flags[F_TOKENS].f_val) {
            TG_LOG(TG_LOG_WARN, "cp", "SIGHUP: no --admin-tokens file to reload");
        } else if (tg_cp_tokens_reload(&cp, flags[F_TOKENS].f_val, err, sizeof err) != 0) {
            TG_LOG(TG_LOG_ERROR, "cp", "SIGHUP: %s; the previous tokens stay in force", err);
            err[0] = '\0';
        } else {
            TG_LOG(TG_LOG_INFO, "cp", "SIGHUP: reloaded %zu admin token(s) from %s", cp.cp_ntokens,
                   flags[F_TOKENS].f_val);
        }
    }
    TG_LOG(TG_LOG_INFO, "cp", "%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    atomic_store(&cp.cp_stopping, 1);
    /* hand over first: the leader key goes now (another replica settles
     * within its next campaign round) and Sync streams end, so agents move
     * on while calls in flight drain */
    tg_cp_agent_side_resign(&cp);
    tg_rpc_server_shutdown(cp.cp_rpc, 3000);
    /* exports run on their own threads and read the ledger: wait (bounded)
     * for them to see the cancelled calls before the ledger closes */
    for (int i = 0; i < 1000 && atomic_load(&tg_cp_exports_running) > 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    rc = atomic_load(&tg_cp_exports_running) > 0 ? 1 : 0;
done:
    if (agent_started) tg_cp_agent_side_stop(&cp);
    tg_cp_http_stop(http);
    tg_rpc_server_destroy(cp.cp_rpc);
    /* after the server: a late call or cancel may still reach the agent side */
    cp_agent_side_free(&cp);
    if (rc == 0 || atomic_load(&tg_cp_exports_running) == 0) {
        tg_ledger_close(cp.cp_ledger);
        tg_store_close(cp.cp_store);
    }
    tg_crypto_key_free(cp.cp_key);
    tg_free(cp.cp_tokens);
    tg_free(cert);
    if (key) memset(key, 0, strlen(key));
    tg_free(key);
    tg_free(ca);
    tg_free(peer_ca);
    tg_free(enroll);
    libevent_global_shutdown();
    if (rc == 0) TG_LOG(TG_LOG_INFO, "cp", "stopped");
    return rc;
}
