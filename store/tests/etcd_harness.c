/* etcd_harness.c: a real etcd for the conformance suite (see the header). */
#include "store/tests/etcd_harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int harness_free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || getsockname(fd, (struct sockaddr *)&a, &len)) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

int harness_tmpdir(char *buf, size_t len, const char *tag)
{
    const char *base = getenv("TEST_TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    if ((size_t)snprintf(buf, len, "%s/tg-%s-XXXXXX", base, tag) >= len)
        return -1;
    return mkdtemp(buf) ? 0 : -1;
}

void harness_rmdir(const char *dir)
{
    pid_t p = fork();
    if (p == 0) {
        execlp("rm", "rm", "-rf", dir, (char *)NULL);
        _exit(127);
    }
    if (p > 0)
        waitpid(p, NULL, 0);
}

static int connect_ok(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* etcd listens before it has a leader: wait for a linearizable read. */
static int status_ok(etcd_proc_t *e)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "curl -s -m 1 -o /dev/null -w '%%{http_code}' -X POST -d '{\"key\":\"AA==\"}' "
             "%s/v3/kv/range | grep -q 200",
             e->ep_url);
    return system(cmd) == 0;
}

static int wait_up(etcd_proc_t *e)
{
    for (int i = 0; i < 400; i++) { /* 20 s */
        int st;
        if (waitpid(e->ep_pid, &st, WNOHANG) == e->ep_pid) {
            fprintf(stderr, "etcd exited during startup; see %s/etcd.log\n", e->ep_dir);
            e->ep_pid = 0;
            return -1;
        }
        if (connect_ok(e->ep_client) && status_ok(e))
            return 0;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "etcd did not answer within 20 s; see %s/etcd.log\n", e->ep_dir);
    return -1;
}

static int launch(etcd_proc_t *e)
{
    char data[600], log[600], lc[64], peer[64];
    snprintf(data, sizeof(data), "%s/data", e->ep_dir);
    snprintf(log, sizeof(log), "%s/etcd.log", e->ep_dir);
    snprintf(lc, sizeof(lc), "http://127.0.0.1:%d", e->ep_client);
    snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", e->ep_peer);
    pid_t p = fork();
    if (p < 0)
        return -1;
    if (p == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl("/usr/bin/etcd", "etcd", "--name", e->ep_name, "--data-dir", data, "--listen-client-urls", lc,
              "--advertise-client-urls", lc, "--listen-peer-urls", peer, "--initial-advertise-peer-urls",
              peer, "--initial-cluster", e->ep_cluster, "--initial-cluster-token", e->ep_token, "--log-level",
              "warn", "--auth-token-ttl", "1", (char *)NULL);
        _exit(127);
    }
    e->ep_pid = p;
    return 0;
}

/* Fresh dir and ports; name, token and cluster are set by the caller. */
static int prepare(etcd_proc_t *e)
{
    memset(e, 0, sizeof(*e));
    if (harness_tmpdir(e->ep_dir, sizeof(e->ep_dir), "etcd"))
        return -1;
    e->ep_client = harness_free_port();
    e->ep_peer = harness_free_port();
    if (e->ep_client <= 0 || e->ep_peer <= 0 || e->ep_client == e->ep_peer)
        return -1;
    snprintf(e->ep_url, sizeof(e->ep_url), "http://127.0.0.1:%d", e->ep_client);
    return 0;
}

int etcd_start(etcd_proc_t *e)
{
    if (prepare(e))
        return -1;
    snprintf(e->ep_name, sizeof(e->ep_name), "default");
    snprintf(e->ep_token, sizeof(e->ep_token), "tg-%d", e->ep_client);
    snprintf(e->ep_cluster, sizeof(e->ep_cluster), "default=http://127.0.0.1:%d", e->ep_peer);
    return launch(e) ? -1 : wait_up(e);
}

int etcd_cluster_start(etcd_proc_t *nodes, int n)
{
    char cluster[512] = "";
    size_t used = 0;
    if (n < 1 || n > 5)
        return -1;
    for (int i = 0; i < n; i++) {
        if (prepare(&nodes[i]))
            return -1;
        snprintf(nodes[i].ep_name, sizeof(nodes[i].ep_name), "n%d", i);
        used += (size_t)snprintf(cluster + used, sizeof(cluster) - used, "%sn%d=http://127.0.0.1:%d",
                                 i ? "," : "", i, nodes[i].ep_peer);
    }
    for (int i = 0; i < n; i++) {
        snprintf(nodes[i].ep_cluster, sizeof(nodes[i].ep_cluster), "%s", cluster);
        snprintf(nodes[i].ep_token, sizeof(nodes[i].ep_token), "tg-%d", nodes[0].ep_client);
    }
    for (int i = 0; i < n; i++) /* all at once: each waits for a quorum */
        if (launch(&nodes[i]))
            return -1;
    for (int i = 0; i < n; i++)
        if (wait_up(&nodes[i]))
            return -1;
    return 0;
}

int etcd_restart(etcd_proc_t *e)
{
    return launch(e) ? -1 : wait_up(e);
}

void etcd_kill(etcd_proc_t *e)
{
    if (e->ep_pid > 0) {
        kill(e->ep_pid, SIGKILL);
        waitpid(e->ep_pid, NULL, 0);
        e->ep_pid = 0;
    }
}

void etcd_stop(etcd_proc_t *e)
{
    if (e->ep_pid > 0) {
        kill(e->ep_pid, SIGTERM);
        for (int i = 0; i < 100; i++) {
            if (waitpid(e->ep_pid, NULL, WNOHANG) == e->ep_pid) {
                e->ep_pid = 0;
                break;
            }
            struct timespec ts = {0, 50 * 1000000L};
            nanosleep(&ts, NULL);
        }
        etcd_kill(e);
    }
    if (e->ep_dir[0])
        harness_rmdir(e->ep_dir);
}
