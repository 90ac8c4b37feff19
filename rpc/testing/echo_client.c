/* echo_client: rpc/'s client as a command, so tests can point it at an
 * independent gRPC server (rpc/testing/echo_server_node.mjs, @grpc/grpc-js)
 * and check unary calls, metadata, statuses, deadlines, streams and the
 * reconnect loop. Prints one JSON object per line on stdout.
 *
 *   echo_client --target HOST:PORT [--timeout MS] [--md KEY=VALUE]... CMD ARGS
 *     say TEXT [DELAY_MS [ECHO_HEADER]]  {"rc":..,"code":..,"message":..,"text":..,
 *                                         "header":..,"deadline_ms":..,"trailer":..}
 *     fail CODE MESSAGE                 {"rc":..,"code":..,"message":..}
 *     count N                           {"rc":..,"code":..,"messages":..,"in_order":..}
 *     watch NAME K                      tg_rpc_stream_run on Watch: {"msg":TEXT,"index":I}
 *                                       per message, {"status":CODE,"delay_ms":D} per
 *                                       attempt; exits 0 after K messages whose text is NAME
 * Exit status: 0 when the command ran (whatever the gRPC status), 2 on usage
 * errors, 1 on local failures. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/testdata/echo.pb-c.h"
#include "rpc/tg_rpc.h"

#define MAX_MD 8

/* A whole decimal int from a command-line argument, or exit 2 saying which. */
static int arg_int(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (s[0] == '\0' || *end != '\0' || errno || v < INT_MIN || v > INT_MAX) {
        fprintf(stderr, "not a whole number: '%s'\n", s);
        exit(2);
    }
    return (int)v;
}

static void json_str(const char *s)
{
    putchar('"');
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

typedef struct watch_state {
    const char *name;
    int want, seen;
} watch_state_t;

static int on_watch_message(void *arg, const uint8_t *data, size_t len)
{
    watch_state_t *w = arg;
    ProtobufCMessage *m = NULL;
    if (tg_rpc_pb_unpack(&tollgate__test__v1__say_reply__descriptor, data, len, &m, NULL, 0) != 0)
        return 1;
    Tollgate__Test__V1__SayReply *r = (Tollgate__Test__V1__SayReply *)m;
    printf("{\"msg\":");
    json_str(r->text);
    printf(",\"index\":%d}\n", r->index);
    fflush(stdout);
    int stop = strcmp(r->text, w->name) == 0 && ++w->seen >= w->want;
    tg_rpc_pb_free(m);
    return stop;
}

static int on_watch_status(void *arg, int code, const char *message, int delay)
{
    (void)arg;
    printf("{\"status\":%d,\"message\":", code);
    json_str(message);
    printf(",\"delay_ms\":%d}\n", delay);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    const char *target = NULL;
    int timeout = 5000, i, rc = 1;
    tg_rpc_md_t md[MAX_MD];
    char *mdbuf[MAX_MD];
    size_t nmd = 0;
    char err[TG_ERRLEN] = "";
    tg_rpc_channel_t *ch = NULL;
    tg_rpc_result_t res = {0};
    tg_buf_t req;
    ProtobufCMessage *m = NULL;

    tg_buf_init(&req, 1 << 20);
    for (i = 1; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (strcmp(argv[i], "--target") == 0) {
            target = argv[i + 1];
        } else if (strcmp(argv[i], "--timeout") == 0) {
            timeout = arg_int(argv[i + 1]);
        } else if (strcmp(argv[i], "--md") == 0 && nmd < MAX_MD) {
            char *eq = strchr(argv[i + 1], '=');
            if (!eq)
                goto usage;
            mdbuf[nmd] = tg_strndup(argv[i + 1], (size_t)(eq - argv[i + 1]));
            md[nmd] = (tg_rpc_md_t){mdbuf[nmd], eq + 1, 0};
            nmd++;
        } else {
            goto usage;
        }
    }
    if (!target || i >= argc)
        goto usage;
    const char *cmd = argv[i++];
    if (!(ch = tg_rpc_channel_create(target, NULL, err, sizeof err)))
        goto done;

    if (strcmp(cmd, "say") == 0 && i < argc) {
        Tollgate__Test__V1__SayRequest q = TOLLGATE__TEST__V1__SAY_REQUEST__INIT;
        q.text = argv[i];
        q.delay_ms = i + 1 < argc ? arg_int(argv[i + 1]) : 0;
        q.echo_header = i + 2 < argc ? argv[i + 2] : "";
        if (tg_rpc_pb_pack(&q.base, &req, err, sizeof err) != 0)
            goto done;
        int r = tg_rpc_unary(ch, "/tollgate.test.v1.Echo/Say", md, nmd, req.b_data, req.b_len, timeout, &res,
                             err, sizeof err);
        if (r != 0 && r != TG_RPC_ESTATUS)
            goto done;
        printf("{\"rc\":%d,\"code\":%d,\"message\":", r, res.rs_code);
        json_str(res.rs_message);
        if (r == 0) {
            if (tg_rpc_pb_unpack(&tollgate__test__v1__say_reply__descriptor, res.rs_data, res.rs_len, &m, err,
                                 sizeof err) != 0)
                goto done;
            Tollgate__Test__V1__SayReply *p = (Tollgate__Test__V1__SayReply *)m;
            printf(",\"text\":");
            json_str(p->text);
            printf(",\"header\":");
            json_str(p->header_value);
            printf(",\"deadline_ms\":%lld,\"trailer\":", (long long)p->deadline_ms);
            json_str(tg_rpc_result_metadata(&res, "x-echo-trailer"));
        }
        printf("}\n");
        rc = 0;
    } else if (strcmp(cmd, "fail") == 0 && i + 1 < argc) {
        Tollgate__Test__V1__FailRequest q = TOLLGATE__TEST__V1__FAIL_REQUEST__INIT;
        q.code = arg_int(argv[i]);
        q.message = argv[i + 1];
        if (tg_rpc_pb_pack(&q.base, &req, err, sizeof err) != 0)
            goto done;
        int r = tg_rpc_unary(ch, "/tollgate.test.v1.Echo/Fail", md, nmd, req.b_data, req.b_len, timeout, &res,
                             err, sizeof err);
        if (r != 0 && r != TG_RPC_ESTATUS)
            goto done;
        printf("{\"rc\":%d,\"code\":%d,\"message\":", r, res.rs_code);
        json_str(res.rs_message);
        printf("}\n");
        rc = 0;
    } else if (strcmp(cmd, "count") == 0 && i < argc) {
        Tollgate__Test__V1__CountRequest q = TOLLGATE__TEST__V1__COUNT_REQUEST__INIT;
        tg_rpc_reader_t *r = NULL;
        tg_buf_t msg;
        int n = 0, in_order = 1, x;
        q.n = arg_int(argv[i]);
        if (tg_rpc_pb_pack(&q.base, &req, err, sizeof err) != 0)
            goto done;
        if (tg_rpc_reader_open(ch, "/tollgate.test.v1.Echo/Count", md, nmd, req.b_data, req.b_len, timeout,
                               &r, err, sizeof err) != 0)
            goto done;
        tg_buf_init(&msg, 1 << 20);
        while ((x = tg_rpc_reader_next(r, -1, &msg, NULL, 0)) == 1) {
            ProtobufCMessage *one = NULL;
            if (tg_rpc_pb_unpack(&tollgate__test__v1__say_reply__descriptor, msg.b_data, msg.b_len, &one,
                                 NULL, 0) != 0 ||
                ((Tollgate__Test__V1__SayReply *)one)->index != n)
                in_order = 0;
            tg_rpc_pb_free(one);
            n++;
        }
        const char *message;
        int code = tg_rpc_reader_status(r, &message);
        printf("{\"rc\":%d,\"code\":%d,\"messages\":%d,\"in_order\":%s}\n", x, code, n,
               in_order ? "true" : "false");
        tg_rpc_reader_destroy(r);
        tg_buf_free(&msg);
        rc = 0;
    } else if (strcmp(cmd, "watch") == 0 && i + 1 < argc) {
        watch_state_t w = {argv[i], arg_int(argv[i + 1]), 0};
        Tollgate__Test__V1__CountRequest q = TOLLGATE__TEST__V1__COUNT_REQUEST__INIT;
        if (tg_rpc_pb_pack(&q.base, &req, err, sizeof err) != 0)
            goto done;
        tg_rpc_stream_opts_t o = {.sr_method = "/tollgate.test.v1.Echo/Watch",
                                  .sr_md = md,
                                  .sr_nmd = nmd,
                                  .sr_req = req.b_data,
                                  .sr_req_len = req.b_len,
                                  .sr_on_message = on_watch_message,
                                  .sr_on_status = on_watch_status,
                                  .sr_arg = &w,
                                  .sr_backoff = {.bo_initial_ms = 50, .bo_max_ms = 1000}};
        rc = tg_rpc_stream_run(ch, &o, err, sizeof err) == 0 ? 0 : 1;
    } else {
        goto usage;
    }
done:
    if (rc == 1)
        fprintf(stderr, "echo_client: %s\n", err[0] ? err : "failed");
    tg_rpc_pb_free(m);
    tg_rpc_result_free(&res);
    tg_buf_free(&req);
    tg_rpc_channel_destroy(ch);
    for (size_t k = 0; k < nmd; k++)
        tg_free(mdbuf[k]);
    return rc;
usage:
    fprintf(stderr, "usage: echo_client --target HOST:PORT [--timeout MS] [--md K=V]... "
                    "say TEXT [DELAY [HEADER]] | fail CODE MSG | count N | watch NAME K\n");
    rc = 2;
    goto done;
}
