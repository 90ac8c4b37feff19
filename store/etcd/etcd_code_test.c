/* etcd_code_test.c: the etcd backend's error mapping, table-driven, with
 * the (gRPC code, message) pairs etcd 3.4 sends (its
 * etcdserver/api/v3rpc/rpctypes/error.go strings) and grpc-go's own size
 * limit. What a code means to callers matters: ETOOBIG and EINVAL make
 * settlement reject a batch for good, so only requests that can never
 * succeed may map there; EUNAVAIL with is_refused() is repeated even for a
 * write. etcd_code() is static, so the test includes etcd_store.c whole. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "store/etcd/etcd_store.c"

typedef struct {
    int grpc;
    const char *msg;
    int want;
    int refused; /* is_refused(): safe to repeat a write */
} code_case_t;

static const code_case_t CASES[] = {
    /* the quota alarm: recoverable once an operator frees space */
    {TG_RPC_CODE_RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", TG_STORE_EFULL, 0},
    /* apply lags commit: refused before proposing, transient */
    {TG_RPC_CODE_RESOURCE_EXHAUSTED, "etcdserver: too many requests", TG_STORE_EUNAVAIL, 1},
    /* grpc-go's message size limit, either side */
    {TG_RPC_CODE_RESOURCE_EXHAUSTED, "grpc: received message larger than max (2097152 vs. 1572864)",
     TG_STORE_ETOOBIG, 0},
    {TG_RPC_CODE_RESOURCE_EXHAUSTED, "grpc: trying to send message larger than max (2097152 vs. 1572864)",
     TG_STORE_ETOOBIG, 0},
    {TG_RPC_CODE_INVALID_ARGUMENT, "etcdserver: request is too large", TG_STORE_ETOOBIG, 0},
    /* within our own 128: etcd's --max-txn-ops is set lower (its configuration) */
    {TG_RPC_CODE_INVALID_ARGUMENT, "etcdserver: too many operations in txn request", TG_STORE_ESERVER, 0},
    {TG_RPC_CODE_INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request", TG_STORE_EINVAL, 0},
    {TG_RPC_CODE_OUT_OF_RANGE, "etcdserver: too large lease TTL", TG_STORE_EINVAL, 0},
    {TG_RPC_CODE_OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted", TG_STORE_ECOMPACTED, 0},
    {TG_RPC_CODE_OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision", TG_STORE_EFUTURE, 0},
    {TG_RPC_CODE_NOT_FOUND, "etcdserver: requested lease not found", TG_STORE_ENOLEASE, 0},
    {TG_RPC_CODE_UNAVAILABLE, "etcdserver: no leader", TG_STORE_EUNAVAIL, 1},
    {TG_RPC_CODE_UNAVAILABLE, "etcdserver: not leader", TG_STORE_EUNAVAIL, 0},
    {TG_RPC_CODE_UNAVAILABLE, "etcdserver: leader changed", TG_STORE_EUNAVAIL, 0},
    {TG_RPC_CODE_UNAVAILABLE, "etcdserver: request timed out", TG_STORE_EUNAVAIL, 0},
    {TG_RPC_CODE_UNAVAILABLE, "etcdserver: request timed out, possibly due to previous leader failure",
     TG_STORE_EUNAVAIL, 0},
    {TG_RPC_CODE_UNAVAILABLE, "etcdserver: server stopped", TG_STORE_EUNAVAIL, 0},
    {TG_RPC_CODE_UNAVAILABLE, "etcdserver: unhealthy cluster", TG_STORE_EUNAVAIL, 0},
    {TG_RPC_CODE_DEADLINE_EXCEEDED, "context deadline exceeded", TG_STORE_EUNAVAIL, 0},
    {TG_RPC_CODE_INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password",
     TG_STORE_EAUTH, 0},
    {TG_RPC_CODE_INVALID_ARGUMENT, "etcdserver: user name is empty", TG_STORE_EAUTH, 0},
    {TG_RPC_CODE_PERMISSION_DENIED, "etcdserver: permission denied", TG_STORE_EAUTH, 0},
    {TG_RPC_CODE_UNAUTHENTICATED, "etcdserver: invalid auth token", TG_STORE_EAUTH, 0},
    {TG_RPC_CODE_DATA_LOSS, "etcdserver: corrupt cluster", TG_STORE_ESERVER, 0},
    {TG_RPC_CODE_INVALID_ARGUMENT, "etcdserver: key is not provided", TG_STORE_ESERVER, 0},
};

static void test_codes(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const code_case_t *c = &CASES[i];
        int got = etcd_code(c->msg, c->grpc);
        if (got != c->want || is_refused(c->msg) != c->refused)
            fail_msg("\"%s\" (gRPC %d): code %d refused %d, want %d refused %d", c->msg, c->grpc, got,
                     is_refused(c->msg), c->want, c->refused);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_codes)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
