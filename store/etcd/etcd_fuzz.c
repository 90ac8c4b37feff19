/* etcd_fuzz.c: libFuzzer target for what the etcd backend reads from etcd's
 * gRPC answers: range answers (kvs with binary keys and values), txn
 * answers, watch answers and error messages. Those readers are static in
 * etcd_store.c, so the target includes the file whole (and links no
 * server). The first byte picks the reader, the second is a parameter, the
 * rest the answer's protobuf bytes (or the error message).
 *
 * Checked besides "no sanitizer report": a range answer gives 0 with one
 * kv per entry of kvs holding the same key and value bytes, or ESERVER/ENOMEM
 * with a message; a txn answer gives as many results as the branch has ops,
 * or an error; a watch answer queues only events at or above the revision
 * asked for, never lowers the next revision and never queues more than
 * TG_STORE_WATCH_QMAX; the error mapping gives a store code. */
#include <sys/eventfd.h>
#include <unistd.h>

#include "store/etcd/etcd_store.c"
#include "tests/fuzz/fuzz.h"

static void range(const uint8_t *p, size_t n)
{
    char err[TG_ERRLEN] = "";
    ProtobufCMessage *m = NULL;
    tg_store_range_res_t res;
    memset(&res, 0, sizeof res);
    if (tg_rpc_pb_unpack(&etcdserverpb__range_response__descriptor, p, n, &m, err, sizeof err) < 0)
        return;
    const Etcdserverpb__RangeResponse *j = (const Etcdserverpb__RangeResponse *)m;
    int rc = parse_range(j, &res, err, sizeof err);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_STORE_ESERVER || rc == TG_STORE_ENOMEM);
    if (rc != 0) {
        TG_FUZZ_CHECK(err[0] != '\0');
    } else {
        TG_FUZZ_CHECK(res.rs_n == j->n_kvs);
        for (size_t i = 0; i < res.rs_n; i++) {
            const tg_store_kv_t *kv = &res.rs_kvs[i];
            TG_FUZZ_CHECK(kv->kv_key_len == j->kvs[i]->key.len);
            TG_FUZZ_CHECK(kv->kv_val_len == j->kvs[i]->value.len);
            TG_FUZZ_CHECK(kv->kv_key_len == 0 ||
                          memcmp(kv->kv_key, j->kvs[i]->key.data, kv->kv_key_len) == 0);
            TG_FUZZ_CHECK(kv->kv_val_len == 0 ||
                          memcmp(kv->kv_val, j->kvs[i]->value.data, kv->kv_val_len) == 0);
        }
    }
    tg_store_range_res_free(&res);
    tg_rpc_pb_free(m);
}

static void txn(const uint8_t *p, size_t n, uint8_t shape)
{
    static const tg_store_op_t ops[] = {{.op_type = TG_STORE_OP_GET},
                                        {.op_type = TG_STORE_OP_PUT},
                                        {.op_type = TG_STORE_OP_DELETE},
                                        {.op_type = TG_STORE_OP_GET}};
    size_t ns = shape & 3, nf = (shape >> 2) & 3;
    char err[TG_ERRLEN] = "";
    ProtobufCMessage *m = NULL;
    tg_store_txn_res_t res;
    memset(&res, 0, sizeof res);
    if (tg_rpc_pb_unpack(&etcdserverpb__txn_response__descriptor, p, n, &m, err, sizeof err) < 0)
        return;
    int rc = parse_txn((const Etcdserverpb__TxnResponse *)m, ops, ns, ops + 1, nf, &res, err, sizeof err);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_STORE_ESERVER || rc == TG_STORE_ENOMEM);
    if (rc == 0)
        TG_FUZZ_CHECK(res.tx_n == (res.tx_succeeded ? ns : nf));
    else
        TG_FUZZ_CHECK(err[0] != '\0');
    tg_store_txn_res_free(&res);
    tg_rpc_pb_free(m);
}

static void watch(const uint8_t *p, size_t n, uint8_t cut)
{
    tg_store_watch_t w;
    ewatch_t ew;
    memset(&w, 0, sizeof w);
    memset(&ew, 0, sizeof ew);
    pthread_mutex_init(&w.w_mu, NULL);
    pthread_cond_init(&w.w_cond, NULL);
    w.w_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    TG_FUZZ_CHECK(w.w_efd >= 0);
    ew.ew_w = &w;
    ew.ew_next = 5;
    /* two answers on one stream: the bytes cut in two */
    size_t a = n ? (size_t)cut * n / 255 : 0;
    int64_t before = ew.ew_next;
    if (watch_msg(&ew, p, a) == 0) {
        TG_FUZZ_CHECK(ew.ew_next >= before);
        (void)watch_msg(&ew, p + a, n - a);
    }
    TG_FUZZ_CHECK(ew.ew_next >= before);
    TG_FUZZ_CHECK(w.w_qlen <= TG_STORE_WATCH_QMAX);
    for (tg_store_evnode_t *e = w.w_head, *next; e != NULL; e = next) {
        next = e->en_next;
        TG_FUZZ_CHECK(e->en_ev->ev_kv.kv_mod_rev >= before);
        TG_FUZZ_CHECK(e->en_ev->ev_type == TG_STORE_EV_PUT || e->en_ev->ev_type == TG_STORE_EV_DELETE);
        tg_free(e->en_ev);
        tg_free(e);
    }
    close(w.w_efd);
    pthread_cond_destroy(&w.w_cond);
    pthread_mutex_destroy(&w.w_mu);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const uint8_t *p = data + 2;
    size_t n = size - 2;
    switch (data[0] % 4) {
    case 0: range(p, n); break;
    case 1: txn(p, n, data[1]); break;
    case 2: watch(p, n, data[1]); break;
    default: {
        char *msg = tg_malloc(n + 1);
        TG_FUZZ_CHECK(msg != NULL);
        memcpy(msg, p, n);
        msg[n] = '\0';
        TG_FUZZ_CHECK(etcd_code(msg, data[1]) < 0);
        tg_free(msg);
        break;
    }
    }
    return 0;
}
