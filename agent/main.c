/* main.c: the tollgate-agent command: flags, signals, run. SIGTERM and
 * SIGINT stop the loops; SIGHUP re-reads the --snapshot file and swaps the
 * configuration in (the swap is atomic; in-flight requests finish on the
 * configuration they started with). Signals are taken by one thread with
 * sigwait, so no handler runs on a loop. At start the open-files soft
 * limit is raised to the hard limit (nginx's worker_rlimit_nofile): every
 * open stream holds two descriptors, the client's and the upstream's. */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/tg_agent.h"
#include "base/tg_base.h"
#include "base/tg_log.h"
#include "checkcfg/tg_checkcfg.h"

/* Client headers that must not reach an upstream whatever the operator
 * asks: the client's credentials, hop-by-hop headers (RFC 9110 7.6.1) and
 * what the agent's own request frames. */
static int never_forwarded(const char *name)
{
    static const char *const names[] = {"authorization", "x-api-key", "proxy-authorization", "cookie",
                                        "connection", "keep-alive", "proxy-connection", "te", "trailer",
                                        "transfer-encoding", "upgrade", "host", "content-length",
                                        "content-type", "expect"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i]) == 0)
            return 1;
    return 0;
}

static const char usage[] =
    "usage: tollgate-agent [flags]\n"
    "  --host ADDR            listen address (default 127.0.0.1)\n"
    "  --port N               listen port; 0 picks a free one (default 8080)\n"
    "  --threads N            worker event loops (default 1)\n"
    "  --snapshot FILE        configuration: a packed tollgate.v1.Snapshot or its JSON\n"
    "  --data-dir DIR         state directory; the last snapshot is kept here\n"
    "  --max-body BYTES       hard cap of a request body (default 16777216)\n"
    "  --region NAME          recorded in usage records\n"
    "  --log-level LEVEL      debug, info, warn or error (default info)\n"
    "  --insecure-upstream    do not verify upstream TLS certificates (tests only)\n"
    "  --upstream-ca PEM      verify HTTPS upstreams against these roots instead of the system's\n"
    "                         (a private CA in front of self-hosted models)\n"
    "  --upstream-client lean|curl  the HTTP client of upstream calls: lean (default; HTTP/1.1 and\n"
    "                         TLS, built in) or curl (libcurl, as before). A proxy variable set at\n"
    "                         start (https_proxy, ...) means curl either way\n"
    "  --log-records          also log each usage record as a JSON line (comp \"usage\")\n"
    "  --no-spend-control     benchmark baseline only: serve without pre-authorization; refused with --cp\n"
    "  --outbox-map-mb N      LMDB map size of the usage outbox (default 1024)\n"
    "  --cp HOST:PORT[,HOST:PORT...]  control plane replicas (gRPC), tried in order, the next when one\n"
    "                         does not answer: Sync configuration, report usage, spend leases\n"
    "  --enroll-token TOKEN   first start: enroll with the control plane (id and key kept in --data-dir)\n"
    "  --enroll-token-file F  the same, read from a file (or the TG_AGENT_ENROLL_TOKEN environment variable):\n"
    "                         unlike the flag, not visible in ps\n"
    "  --cp-tls               TLS to the control plane with the system's roots\n"
    "  --cp-ca PEM            TLS, trusting these roots; --cp-cert PEM --cp-key PEM: mTLS client identity;\n"
    "                         --cp-tls-name NAME: the server name expected when not the host of --cp\n"
    "  --forward-header NAME  copy this client header to upstream requests (repeatable, 8 max; never\n"
    "                         credentials, cookies, hop-by-hop or framing headers)\n"
    "  --metrics-listen HOST:PORT  where /metrics, /healthz and /readyz are served (default\n"
    "                         127.0.0.1:0, a free port, printed; \"off\": none). Never the public port\n"
    "  --cors-origin ORIGIN   a browser origin allowed to call the API (CORS; repeatable, 8 max;\n"
    "                         \"*\": any). Default none: no CORS headers, preflights refused\n"
    "  --head-timeout S       seconds a client has to send a whole request head (default 30)\n"
    "  --body-timeout S       seconds a client has to send a whole request body after its head (default 300)\n"
    "  --max-conns N          open client connections in all; over it: 503 and close\n"
    "                         (default: half the open-files limit, an open stream holds 2)\n"
    "  --max-conns-per-ip N   open client connections from one address (default 0: no cap;\n"
    "                         behind a load balancer every connection comes from it)\n"
    "  --check-config[=offline]  check the flags, the files they name (readable, certificates load, the\n"
    "                         key matches, expiry, enrollment) and that each --cp address accepts a\n"
    "                         connection (not with =offline); print \"config ok\" and exit 0, or name\n"
    "                         each problem and its fix and exit 1\n"
    "\n"
    "       tollgate-agent outbox-dump --data-dir DIR [--limit N] [--rejected]\n"
    "  prints the usage records waiting in DIR's outbox (or, --rejected, those the\n"
    "  control plane refused for good), one JSON object a line\n";

static int outbox_dump(int argc, char **argv)
{
    const char *dir = NULL;
    long limit = 0;
    int rejected = 0;
    char err[TG_ERRLEN] = "";
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--rejected") == 0)
            rejected = 1;
        else if (strcmp(argv[i], "--data-dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc)
            limit = strtol(argv[++i], NULL, 10);
        else {
            fputs(usage, stderr);
            return 2;
        }
    }
    if (!dir) {
        fputs(usage, stderr);
        return 2;
    }
    long n = tg_agent_outbox_dump(dir, stdout, limit, rejected, err, sizeof err);
    if (n < 0) {
        fprintf(stderr, "tollgate-agent outbox-dump: %s\n", err);
        return 1;
    }
    return 0;
}

/* Raises RLIMIT_NOFILE's soft limit to the hard one and logs what the
 * process may hold: the usual soft default (1024) would stop the agent at
 * ~500 open streams. The hard limit itself is the operator's (systemd
 * LimitNOFILE=, ulimit -Hn). */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    unsigned long long was = (unsigned long long)rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            TG_LOG(TG_LOG_WARN, "agent", "open files: cannot raise the soft limit %llu to the hard limit %llu", was,
                   (unsigned long long)rl.rlim_max);
            return;
        }
    }
    TG_LOG(TG_LOG_INFO, "agent", "open files: limit %llu (soft limit was %llu); an open stream holds 2",
           (unsigned long long)rl.rlim_cur, was);
}

/* ---- --check-config ------------------------------------------------------------ */

/* Whether HOST:PORT accepts a TCP connection within 2 s; 0 or -1 with the
 * reason in why. */
static int reachable(const char *addr, char *why, size_t n)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int fd = -1, rc = -1, e;
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    if (host[0] == '[') { /* [v6]:port */
        memmove(host, host + 1, strlen(host));
        host[strcspn(host, "]")] = '\0';
    }
    if ((e = getaddrinfo(host, colon + 1, &hints, &ai)) != 0) {
        snprintf(why, n, "%s", gai_strerror(e));
        return -1;
    }
    if ((fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
        snprintf(why, n, "socket: %s", strerror(errno));
        goto done;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        snprintf(why, n, "%s", strerror(errno));
        goto done;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    socklen_t sl = sizeof e;
    if (poll(&p, 1, 2000) != 1) {
        snprintf(why, n, "no answer within 2 s");
        goto done;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) != 0 || e != 0) {
        snprintf(why, n, "%s", strerror(e));
        goto done;
    }
    rc = 0;
done:
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return rc;
}

/* Checks what tg_agent_create would load, without serving: the parsed
 * options, the files they name, the data directory and enrollment, and,
 * unless offline, that each --cp address accepts a connection. Prints
 * "config ok" and returns 0, or returns 1 after naming each problem. */
static int check_config(const tg_agent_opts_t *o, int offline)
{
    tg_checkcfg_t c = {.cc_prog = "tollgate-agent"};
    struct in_addr ia;
    char path[4096];
    if (inet_pton(AF_INET, o->ao_host, &ia) != 1)
        tg_checkcfg_problem(&c, "--host %s: not an IPv4 address: give 0.0.0.0 or 127.0.0.1", o->ao_host);
    if (o->ao_metrics_host && inet_pton(AF_INET, o->ao_metrics_host, &ia) != 1)
        tg_checkcfg_problem(&c, "--metrics-listen %s: not an IPv4 address: give 127.0.0.1:PORT", o->ao_metrics_host);
    if (o->ao_snapshot)
        tg_checkcfg_readable(&c, "--snapshot", o->ao_snapshot);
    if (o->ao_data_dir)
        tg_checkcfg_dir(&c, "--data-dir", o->ao_data_dir, 0);
    if (!o->ao_cp && !o->ao_snapshot && !o->ao_data_dir)
        tg_checkcfg_problem(&c, "no configuration source: give --cp (with --data-dir) or --snapshot");
    if (!o->ao_cp) {
        if (o->ao_cp_tls || o->ao_cp_ca || o->ao_cp_cert || o->ao_cp_key)
            tg_checkcfg_problem(&c, "--cp-tls/--cp-ca/--cp-cert/--cp-key without --cp: give the control plane's "
                                    "addresses");
        return tg_checkcfg_done(&c);
    }
    if (o->ao_spend_off)
        tg_checkcfg_problem(&c, "--no-spend-control is refused with --cp: drop it (a benchmark baseline only)");
    if (!o->ao_data_dir)
        tg_checkcfg_problem(&c, "--cp needs --data-dir: the agent id, its key and the usage outbox live there");
    snprintf(path, sizeof path, "%s/agent_id", o->ao_data_dir ? o->ao_data_dir : ".");
    if (o->ao_data_dir && access(path, R_OK) != 0 && !(o->ao_enroll_token && *o->ao_enroll_token))
        tg_checkcfg_problem(&c, "not enrolled yet (%s missing) and no enrollment token: give --enroll-token-file "
                                "FILE or TG_AGENT_ENROLL_TOKEN", path);
    if (!!o->ao_cp_cert != !!o->ao_cp_key)
        tg_checkcfg_problem(&c, "--cp-cert and --cp-key go together (the mTLS client identity): give both");
    else if (o->ao_cp_cert)
        tg_checkcfg_cert(&c, "--cp-cert/--cp-key", o->ao_cp_cert, o->ao_cp_key);
    if (o->ao_cp_ca)
        tg_checkcfg_cert(&c, "--cp-ca", o->ao_cp_ca, NULL);
    int n = 0;
    for (const char *p = o->ao_cp; *p; n++) {
        size_t len = strcspn(p, ",");
        char addr[256], why[256] = "";
        snprintf(addr, sizeof addr, "%.*s", (int)(len < sizeof addr ? len : sizeof addr - 1), p);
        int bad = c.cc_problems;
        tg_checkcfg_addr(&c, "--cp", addr, 1);
        if (c.cc_problems == bad && !offline && reachable(addr, why, sizeof why) != 0)
            tg_checkcfg_problem(&c, "--cp %s: %s: start the control plane or fix the address "
                                    "(--check-config=offline skips this)", addr, why);
        p += len;
        if (*p == ',')
            p++;
    }
    if (n > 8)
        tg_checkcfg_problem(&c, "--cp: %d addresses, at most 8: list fewer", n);
    return tg_checkcfg_done(&c);
}

typedef struct sigctx {
    tg_agent_t *sg_agent;
    const char *sg_snapshot;
    sigset_t sg_set;
} sigctx_t;

static void reload(sigctx_t *c)
{
    char err[TG_ERRLEN] = "";
    FILE *f = fopen(c->sg_snapshot, "rb");
    if (!f) {
        TG_LOG(TG_LOG_ERROR, "agent", "SIGHUP: cannot open %s", c->sg_snapshot);
        return;
    }
    tg_buf_t b;
    tg_buf_init(&b, (size_t)1 << 30);
    char chunk[65536];
    size_t n;
    int bad = 0;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        bad |= tg_buf_append(&b, chunk, n);
    fclose(f);
    if (bad)
        TG_LOG(TG_LOG_ERROR, "agent", "SIGHUP: %s is too large", c->sg_snapshot);
    else if (tg_agent_set_snapshot(c->sg_agent, b.b_data ? b.b_data : "", b.b_len, err, sizeof err) != 0)
        TG_LOG(TG_LOG_ERROR, "agent", "SIGHUP: snapshot refused, keeping the running one: %s", err);
    tg_buf_free(&b);
}

static void *signals(void *arg)
{
    sigctx_t *c = arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&c->sg_set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            if (c->sg_snapshot)
                reload(c);
            continue;
        }
        tg_agent_stop(c->sg_agent);
        return NULL;
    }
}

int main(int argc, char **argv)
{
    tg_agent_opts_t o;
    tg_agent_opts_default(&o);
    char err[TG_ERRLEN] = "";
    static char enroll_buf[512];
    int check = 0;
    o.ao_enroll_token = getenv("TG_AGENT_ENROLL_TOKEN"); /* a flag below wins */
    if (argc > 1 && strcmp(argv[1], "outbox-dump") == 0)
        return outbox_dump(argc, argv);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(a, "--check-config") == 0 || strcmp(a, "--check-config=offline") == 0) {
            check = a[14] ? 2 : 1;
            continue;
        } else if (strcmp(a, "--insecure-upstream") == 0) {
            o.ao_insecure_upstream = 1;
            continue;
        } else if (strcmp(a, "--no-spend-control") == 0) {
            o.ao_spend_off = 1;
            continue;
        } else if (strcmp(a, "--cp-tls") == 0) {
            o.ao_cp_tls = 1;
            continue;
        } else if (strcmp(a, "--log-records") == 0) {
            o.ao_log_records = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "tollgate-agent: %s needs a value\n%s", a, usage);
            return 2;
        }
        i++;
        if (strcmp(a, "--host") == 0) {
            o.ao_host = v;
        } else if (strcmp(a, "--port") == 0) {
            long p = strtol(v, &end, 10);
            if (*end || p < 0 || p > 65535)
                goto bad;
            o.ao_port = (int)p;
        } else if (strcmp(a, "--threads") == 0) {
            long t = strtol(v, &end, 10);
            if (*end || t < 1 || t > 256)
                goto bad;
            o.ao_threads = (int)t;
        } else if (strcmp(a, "--snapshot") == 0) {
            o.ao_snapshot = v;
        } else if (strcmp(a, "--data-dir") == 0) {
            o.ao_data_dir = v;
        } else if (strcmp(a, "--max-body") == 0) {
            long long m = strtoll(v, &end, 10);
            if (*end || m < 1024 || m > (1LL << 31))
                goto bad;
            o.ao_max_body = (size_t)m;
        } else if (strcmp(a, "--outbox-map-mb") == 0) {
            long mb = strtol(v, &end, 10);
            if (*end || mb < 1 || mb > (1L << 20))
                goto bad;
            o.ao_outbox_map = (size_t)mb << 20;
        } else if (strcmp(a, "--cors-origin") == 0) {
            if (o.ao_ncors >= 8 || !*v || strpbrk(v, "\r\n ,"))
                goto bad;
            o.ao_cors[o.ao_ncors++] = v;
        } else if (strcmp(a, "--metrics-listen") == 0) {
            if (strcmp(v, "off") == 0) {
                o.ao_metrics_host = NULL;
                continue;
            }
            static char mhost[64];
            const char *colon = strrchr(v, ':');
            long p = colon ? strtol(colon + 1, &end, 10) : -1;
            if (!colon || colon == v || (size_t)(colon - v) >= sizeof mhost || !colon[1] || *end || p < 0 ||
                p > 65535)
                goto bad;
            memcpy(mhost, v, (size_t)(colon - v));
            mhost[colon - v] = '\0';
            o.ao_metrics_host = mhost;
            o.ao_metrics_port = (int)p;
        } else if (strcmp(a, "--head-timeout") == 0 || strcmp(a, "--body-timeout") == 0) {
            long t = strtol(v, &end, 10);
            if (*end || t < 1 || t > 3600)
                goto bad;
            if (strcmp(a, "--head-timeout") == 0)
                o.ao_head_timeout_s = (int)t;
            else
                o.ao_body_timeout_s = (int)t;
        } else if (strcmp(a, "--max-conns") == 0 || strcmp(a, "--max-conns-per-ip") == 0) {
            long n = strtol(v, &end, 10);
            if (*end || n < 0 || n > (1L << 24))
                goto bad;
            if (strcmp(a, "--max-conns") == 0)
                o.ao_max_conns = n;
            else
                o.ao_max_conns_per_ip = n;
        } else if (strcmp(a, "--cp") == 0) {
            o.ao_cp = v;
        } else if (strcmp(a, "--enroll-token") == 0) {
            o.ao_enroll_token = v;
        } else if (strcmp(a, "--enroll-token-file") == 0) {
            FILE *f = fopen(v, "r");
            if (!f || !fgets(enroll_buf, sizeof enroll_buf, f)) {
                fprintf(stderr, "tollgate-agent: --enroll-token-file %s: cannot read it\n", v);
                if (f)
                    fclose(f);
                return 2;
            }
            fclose(f);
            enroll_buf[strcspn(enroll_buf, "\r\n")] = '\0';
            o.ao_enroll_token = enroll_buf;
        } else if (strcmp(a, "--upstream-client") == 0) {
            if (strcmp(v, "lean") != 0 && strcmp(v, "curl") != 0) {
                fprintf(stderr, "tollgate-agent: --upstream-client %s: use lean or curl\n", v);
                return 2;
            }
            o.ao_upstream_curl = strcmp(v, "curl") == 0;
        } else if (strcmp(a, "--upstream-ca") == 0) {
            FILE *f = fopen(v, "r");
            if (!f) {
                fprintf(stderr, "tollgate-agent: --upstream-ca %s: cannot read it (%s)\n", v, strerror(errno));
                return 2;
            }
            fclose(f);
            o.ao_upstream_ca = v;
        } else if (strcmp(a, "--cp-ca") == 0) {
            o.ao_cp_ca = v;
        } else if (strcmp(a, "--cp-cert") == 0) {
            o.ao_cp_cert = v;
        } else if (strcmp(a, "--cp-key") == 0) {
            o.ao_cp_key = v;
        } else if (strcmp(a, "--cp-tls-name") == 0) {
            o.ao_cp_tls_name = v;
        } else if (strcmp(a, "--forward-header") == 0) {
            if (o.ao_nforward >= 8 || !*v || strpbrk(v, ":\r\n "))
                goto bad;
            if (never_forwarded(v)) {
                fprintf(stderr, "tollgate-agent: --forward-header %s: the gateway never forwards this header "
                        "(the client's credentials, hop-by-hop and framing headers: docs/SECURITY.md)\n", v);
                return 2;
            }
            o.ao_forward[o.ao_nforward++] = v;
        } else if (strcmp(a, "--region") == 0) {
            o.ao_region = v;
        } else if (strcmp(a, "--log-level") == 0) {
            int l = tg_log_parse_level(v);
            if (l < 0)
                goto bad;
            tg_log_set_level(l);
        } else {
            fprintf(stderr, "tollgate-agent: unknown flag %s\n%s", a, usage);
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "tollgate-agent: bad value for %s: %s\n", a, v);
        return 2;
    }

    if (check)
        return check_config(&o, check == 2);

    /* Keep freed memory instead of returning it to the kernel at every
     * request: a 100 KB prompt otherwise costs brk() calls and page faults
     * per request (perf). Bounded: at most 64 MiB held back. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    raise_nofile();

    sigctx_t sc = {.sg_snapshot = o.ao_snapshot};
    sigemptyset(&sc.sg_set);
    sigaddset(&sc.sg_set, SIGTERM);
    sigaddset(&sc.sg_set, SIGINT);
    sigaddset(&sc.sg_set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sc.sg_set, NULL); /* every thread inherits it */
    signal(SIGPIPE, SIG_IGN);

    tg_agent_t *agent = NULL;
    int rc = tg_agent_create(&o, &agent, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "tollgate-agent: %s\n", err);
        return 1;
    }
    sc.sg_agent = agent;
    pthread_t sig_thread;
    if (pthread_create(&sig_thread, NULL, signals, &sc) != 0) {
        fprintf(stderr, "tollgate-agent: cannot start the signal thread\n");
        tg_agent_destroy(agent);
        return 1;
    }
    if (tg_agent_metrics_port(agent))
        printf("tollgate-agent metrics on %s:%d\n", o.ao_metrics_host, tg_agent_metrics_port(agent));
    printf("tollgate-agent listening on %s:%d\n", o.ao_host, tg_agent_port(agent));
    fflush(stdout);
    rc = tg_agent_run(agent, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "tollgate-agent: %s\n", err);
    /* The signal thread is blocked in sigwait unless it stopped us; wake it. */
    pthread_kill(sig_thread, SIGTERM);
    pthread_join(sig_thread, NULL);
    tg_agent_destroy(agent);
    TG_LOG(TG_LOG_INFO, "agent", "stopped");
    return rc ? 1 : 0;
}
