/* echo_server: serves the Echo test service (rpc/testdata/echo.proto) so an
 * independent gRPC client can test rpc/. Binds 127.0.0.1:0 unless --addr
 * says otherwise, prints the bound port on its own line on stdout, and on
 * SIGTERM or SIGINT shuts down gracefully (in-flight calls get --grace-ms,
 * default 2000, then streams are cancelled) and exits 0.
 *
 *   echo_server [--addr HOST:PORT] [--threads N] [--grace-ms MS]
 *               [--cert PEM_FILE --key PEM_FILE [--client-ca PEM_FILE]]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/testing/echo_service.h"

static char *slurp(const char *path)
{
    tg_buf_t b;
    char chunk[4096];
    size_t n;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    tg_buf_init(&b, 1 << 20);
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (tg_buf_append(&b, chunk, n) != 0)
            break;
    fclose(f);
    return tg_buf_steal(&b, NULL);
}

static int usage(void)
{
    fprintf(stderr, "usage: echo_server [--addr HOST:PORT] [--threads N] [--grace-ms MS] "
                    "[--cert PEM --key PEM [--client-ca PEM]]\n");
    return 2;
}

int main(int argc, char **argv)
{
    tg_rpc_server_opts_t o = {0};
    char err[TG_ERRLEN] = "";
    const char *cert = NULL, *key = NULL, *ca = NULL;
    char *cert_pem = NULL, *key_pem = NULL, *ca_pem = NULL;
    int grace = 2000, rc = 1, sig;
    tg_echo_t *echo = NULL;
    tg_rpc_server_t *srv = NULL;
    sigset_t set;

    for (int i = 1; i < argc; i += 2) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return usage();
        if (strcmp(argv[i], "--addr") == 0)
            o.so_addr = v;
        else if (strcmp(argv[i], "--threads") == 0)
            o.so_threads = (int)strtol(v, NULL, 10);
        else if (strcmp(argv[i], "--grace-ms") == 0)
            grace = (int)strtol(v, NULL, 10);
        else if (strcmp(argv[i], "--cert") == 0)
            cert = v;
        else if (strcmp(argv[i], "--key") == 0)
            key = v;
        else if (strcmp(argv[i], "--client-ca") == 0)
            ca = v;
        else
            return usage();
    }
    if ((cert && !(cert_pem = slurp(cert))) || (key && !(key_pem = slurp(key))) ||
        (ca && !(ca_pem = slurp(ca)))) {
        fprintf(stderr, "echo_server: cannot read a PEM file\n");
        goto done;
    }
    o.so_cert_pem = cert_pem;
    o.so_key_pem = key_pem;
    o.so_client_ca_pem = ca_pem;

    /* Block the signals before any thread starts, so only sigwait sees them. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    if (!(echo = tg_echo_create("echo_server")) || !(srv = tg_rpc_server_create(&o, err, sizeof err)) ||
        tg_echo_register(echo, srv, err, sizeof err) != 0 || tg_rpc_server_start(srv, err, sizeof err) != 0) {
        fprintf(stderr, "echo_server: %s\n", err[0] ? err : "out of memory");
        goto done;
    }
    printf("%d\n", tg_rpc_server_port(srv));
    fflush(stdout);
    if (sigwait(&set, &sig) != 0)
        goto done;
    fprintf(stderr, "echo_server: signal %d, shutting down (grace %d ms)\n", sig, grace);
    tg_rpc_server_shutdown(srv, grace);
    rc = 0;
done:
    tg_rpc_server_destroy(srv);
    tg_echo_destroy(echo);
    tg_free(cert_pem);
    tg_free(key_pem);
    tg_free(ca_pem);
    return rc;
}
