/* path_fuzz.c: the two-sided libFuzzer target (nginx's oss-fuzz target does
 * this for proxy_pass): one input is a client's request and an upstream's
 * reply, and both go through the whole request path of a real agent in
 * this process: the front, auth, the body scan and rewrite, routing, the
 * protocol converters, curl to the upstream, the SSE and usage readers,
 * pricing, the outbox and the answer.
 *
 * The agent (tg_agent_create, spend control off, no control plane) runs on
 * a thread of its own with a snapshot of two channels, OpenAI and
 * Anthropic, whose base URL is a small upstream on another thread: it reads
 * one request and answers the input's reply bytes, then closes. Input:
 *   byte 0: bits 0-1 the endpoint (chat, Responses, Anthropic messages,
 *           embeddings), bit 2 a stream, bit 3 the reply as raw HTTP (else
 *           wrapped in a 200 head of the matching content type);
 *   bytes 1-2: the length L of the client's JSON body (big-endian);
 *   then the body, then the reply.
 * The client's head is fixed (a valid key, Connection: close), so inputs
 * reach the upstream. Checked besides "no sanitizer report": every answer
 * starts with a status line, a Content-Length answer carries that many
 * bytes, and the agent answers within 8 s. The data dir (outbox) is
 * emptied by recreating the agent every 2000 inputs, and removed at exit. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "agent/tg_agent.h"
#include "base/tg_b64.h"
#include "base/tg_base.h"
#include "base/tg_log.h"
#include "crypto/tg_crypto.h"
#include "tests/fuzz/fuzz.h"

#define KEY "tg-path-fuzz-client-key-0123456789"
#define RECREATE_EVERY 2000

static tg_agent_t *g_agent;
static pthread_t g_run, g_up;
static int g_up_fd = -1, g_up_port;
static char g_dir[256];
static long g_execs;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *g_reply;
static size_t g_reply_len;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the upstream: one request in, the input's reply out, close ---- */

static void serve_one(int fd)
{
    char buf[65536];
    size_t got = 0, need = 0;
    int64_t until = now_ms() + 2000;
    /* the request: its head, then Content-Length bytes */
    while (now_ms() < until && got < sizeof buf) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t r = recv(fd, buf + got, sizeof buf - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
        char *end = memmem(buf, got, "\r\n\r\n", 4);
        if (end == NULL)
            continue;
        if (need == 0) {
            const char *cl = memmem(buf, (size_t)(end - buf), "Content-Length: ", 16);
            need = (size_t)(end - buf) + 4 + (cl ? strtoul(cl + 16, NULL, 10) : 0);
        }
        if (got >= need)
            break;
    }
    pthread_mutex_lock(&g_mu);
    size_t off = 0;
    while (off < g_reply_len) {
        ssize_t w = send(fd, g_reply + off, g_reply_len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    pthread_mutex_unlock(&g_mu);
    shutdown(fd, SHUT_WR);
    /* let curl read it all before the close */
    struct pollfd p = {fd, POLLIN, 0};
    (void)poll(&p, 1, 50);
    close(fd);
}

static void *upstream(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(g_up_fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        serve_one(fd);
    }
}

/* ---- the agent ---- */

static void *run(void *arg)
{
    char err[512];
    (void)tg_agent_run(arg, err, sizeof err);
    return NULL;
}

static void write_snapshot(const char *path)
{
    uint8_t h[32];
    char b64[TG_B64_ENCLEN(32)];
    tg_crypto_sha256(KEY, strlen(KEY), h);
    tg_b64_encode(h, sizeof h, b64);
    FILE *f = fopen(path, "w");
    TG_FUZZ_CHECK(f != NULL);
    fprintf(f,
            "{\"revision\":\"1\","
            "\"accounts\":[{\"id\":\"acct\",\"name\":\"a\",\"billing_mode\":\"BILLING_MODE_PREPAID\","
            "\"status\":\"OBJECT_STATUS_ACTIVE\"}],"
            "\"balances\":[{\"account_id\":\"acct\",\"bucket\":\"credit\",\"currency\":\"USD\","
            "\"balance_nano\":\"1000000000000000\"}],"
            "\"keys\":[{\"id\":\"k\",\"account_id\":\"acct\",\"secret_sha256\":\"%s\",\"status\":\"KEY_STATUS_ACTIVE\"}],"
            "\"channels\":["
            "{\"id\":\"oai\",\"name\":\"oai\",\"provider\":\"PROVIDER_TYPE_OPENAI\",\"base_url\":\"http://127.0.0.1:%d/v1\","
            "\"credential\":\"sk-upstream-fuzz\",\"route_type\":\"ROUTE_TYPE_DIRECT\",\"first_byte_timeout_ms\":2000,"
            "\"request_timeout_ms\":3000},"
            "{\"id\":\"anth\",\"name\":\"anth\",\"provider\":\"PROVIDER_TYPE_ANTHROPIC\",\"base_url\":\"http://127.0.0.1:%d/v1\","
            "\"credential\":\"sk-upstream-fuzz\",\"route_type\":\"ROUTE_TYPE_DIRECT\",\"first_byte_timeout_ms\":2000,"
            "\"request_timeout_ms\":3000}],"
            "\"routes\":["
            "{\"model\":\"gpt-4o\",\"tiers\":[{\"targets\":[{\"channel_id\":\"oai\"}]}]},"
            "{\"model\":\"claude-x\",\"tiers\":[{\"targets\":[{\"channel_id\":\"anth\"}]}]},"
            "{\"model\":\"text-embedding-3-small\",\"tiers\":[{\"targets\":[{\"channel_id\":\"oai\"}]}]}],"
            "\"price_cards\":[{\"id\":\"card\",\"version\":\"1\",\"effective_at_us\":\"0\",\"currency\":\"USD\","
            "\"entries\":[{\"model\":\"*\",\"input_per_mtok_nano\":\"1000000000\",\"output_per_mtok_nano\":\"2000000000\"}]}]}",
            b64, g_up_port, g_up_port);
    TG_FUZZ_CHECK(fclose(f) == 0);
}

static void agent_up(void)
{
    char err[512], path[300], cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s/data", g_dir);
    TG_FUZZ_CHECK(system(cmd) == 0);
    snprintf(path, sizeof path, "%s/snapshot.json", g_dir);
    write_snapshot(path);
    snprintf(cmd, sizeof cmd, "%s/data", g_dir);
    tg_agent_opts_t o;
    tg_agent_opts_default(&o);
    o.ao_port = 0;
    o.ao_snapshot = path;
    o.ao_data_dir = cmd;
    o.ao_spend_off = 1;
    o.ao_metrics_host = NULL;
    o.ao_outbox_map = (size_t)256 << 20;
    int rc = tg_agent_create(&o, &g_agent, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "path_fuzz: %s\n", err);
    TG_FUZZ_CHECK(rc == 0);
    TG_FUZZ_CHECK(pthread_create(&g_run, NULL, run, g_agent) == 0);
}

static void agent_down(void)
{
    tg_agent_stop(g_agent);
    pthread_join(g_run, NULL);
    tg_agent_destroy(g_agent);
    g_agent = NULL;
}

/* At exit (libFuzzer's -max_total_time, the end of a replay): the agent
 * stops and its directory goes. */
static void teardown(void)
{
    char cmd[300];
    agent_down();
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "path_fuzz: could not remove %s\n", g_dir);
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    tg_log_set_level(TG_LOG_ERROR);
    const char *tmp = getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(g_dir, sizeof g_dir, "%s/tg-path-fuzz.XXXXXX", tmp);
    TG_FUZZ_CHECK(mkdtemp(g_dir) != NULL);
    atexit(teardown);
    g_up_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    TG_FUZZ_CHECK(bind(g_up_fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(g_up_fd, 64) == 0);
    TG_FUZZ_CHECK(getsockname(g_up_fd, (struct sockaddr *)&a, &al) == 0);
    g_up_port = ntohs(a.sin_port);
    TG_FUZZ_CHECK(pthread_create(&g_up, NULL, upstream, NULL) == 0);
    /* first an agent that serves nothing: its destroy frees empty queues
     * (a NULL + 0 in pend_drop, found by this target) */
    agent_up();
    agent_down();
    agent_up();
}

/* ---- one input ---- */

static const char *const PATHS[] = {"/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/embeddings"};

static void set_reply(const uint8_t *p, size_t n, int raw, int stream)
{
    pthread_mutex_lock(&g_mu);
    tg_free(g_reply);
    char head[160];
    int hl = raw ? 0
                 : snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nConnection: close\r\n\r\n",
                            stream ? "text/event-stream" : "application/json");
    g_reply = tg_malloc((size_t)hl + n + 1);
    TG_FUZZ_CHECK(g_reply != NULL);
    memcpy(g_reply, head, (size_t)hl);
    if (n)
        memcpy(g_reply + hl, p, n);
    g_reply_len = (size_t)hl + n;
    pthread_mutex_unlock(&g_mu);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    if (g_agent == NULL)
        setup();
    if (++g_execs % RECREATE_EVERY == 0) {
        agent_down();
        agent_up();
    }
    size_t bl = (size_t)data[1] << 8 | data[2];
    if (bl > size - 3)
        bl = size - 3;
    const uint8_t *body = data + 3, *reply = body + bl;
    size_t rl = size - 3 - bl;
    int stream = (data[0] >> 2) & 1;
    set_reply(reply, rl, (data[0] >> 3) & 1, stream);

    char head[512];
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer " KEY "\r\n"
                      "anthropic-version: 2023-06-01\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      PATHS[data[0] & 3], bl);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)tg_agent_port(g_agent))};
    int fd = -1, connected = 0;
    /* libFuzzer's SIGALRM can interrupt a connect that waits (seen: EINTR
     * once in ~600,000 inputs; likely a SYN resent after a second because
     * it met one of the agent's TIME_WAIT sockets: the agent closes each
     * connection first, about a thousand a second). Interrupted: try
     * again, a few times. */
    for (int tries = 0; tries < 5 && !connected; tries++) {
        if (fd >= 0)
            close(fd);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        connected = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        if (!connected && errno != EINTR)
            break;
    }
    if (!connected) {
        /* the harness's own socket: say why (a full table of open files, no
         * free local port) before the check stops the run */
        fprintf(stderr, "path_fuzz: connecting to the agent on port %d after %ld inputs: %s\n",
                tg_agent_port(g_agent), g_execs, strerror(errno));
        TG_FUZZ_CHECK(!"connect to the agent");
    }
    TG_FUZZ_CHECK(send(fd, head, (size_t)hl, MSG_NOSIGNAL) == hl);
    if (bl)
        (void)send(fd, body, bl, MSG_NOSIGNAL);
    static char out[1 << 20];
    size_t got = 0;
    int closed = 0;
    int64_t until = now_ms() + 8000;
    while (!closed && now_ms() < until) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t r = recv(fd, out + got, sizeof out - 1 - got, 0);
        if (r <= 0 || got + (size_t)r >= sizeof out - 1)
            closed = 1;
        if (r > 0)
            got += (size_t)r;
    }
    close(fd);
    TG_FUZZ_CHECK(closed);
    out[got] = '\0';
    TG_FUZZ_CHECK(got >= 12 && memcmp(out, "HTTP/1.1 ", 9) == 0);
    char *end = strstr(out, "\r\n\r\n");
    TG_FUZZ_CHECK(end != NULL);
    const char *cl = strcasestr(out, "\r\ncontent-length: ");
    if (cl != NULL && cl < end)
        TG_FUZZ_CHECK(strtoul(cl + 18, NULL, 10) == got - (size_t)(end + 4 - out));
    return 0;
}
