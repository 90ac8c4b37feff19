/* etcd_fuzz.c: libFuzzer target for what the etcd backend reads from etcd's
 * JSON gateway: range answers (kvs with base64 keys and values, int64s as
 * strings or numbers), txn answers, the watch stream (newline-separated
 * JSON objects cut anywhere by the transport) and error answers. Those
 * readers are static in etcd_store.c, so the target includes the file
 * whole (and links neither the etcd library nor a server). The first
 * byte picks the reader, the second is a parameter, the rest the answer.
 *
 * Checked besides "no sanitizer report": a range answer gives 0 with one
 * kv per entry of "kvs" whose key and value encode back to the base64 sent,
 * or ESERVER/ENOMEM with a message; a txn answer gives as many results as
 * the branch has ops, or an error; a watch stream queues only events at or
 * above the revision asked for, never lowers the next revision and never
 * queues more than TG_STORE_WATCH_QMAX; the error mapping gives a store code. */
#include <sys/eventfd.h>
#include <unistd.h>

#include "store/etcd/etcd_store.c"
#include "tests/fuzz/fuzz.h"

/* kv's bytes encode back to what the JSON object o held under name. */
static void same_b64(const json_t *o, const char *name, const uint8_t *p, size_t n)
{
    json_t *v = json_object_get(o, name);
    const char *want = json_is_string(v) ? json_string_value(v) : "";
    char *enc = tg_malloc(TG_B64_ENCLEN(n));
    TG_FUZZ_CHECK(enc != NULL);
    tg_b64_encode(p, n, enc);
    TG_FUZZ_CHECK(strcmp(enc, want) == 0);
    tg_free(enc);
}

static void range(const json_t *j)
{
    char err[TG_ERRLEN] = "";
    tg_store_range_res_t res;
    memset(&res, 0, sizeof res);
    int rc = parse_range(j, &res, err, sizeof err);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_STORE_ESERVER || rc == TG_STORE_ENOMEM);
    if (rc != 0) {
        TG_FUZZ_CHECK(err[0] != '\0');
    } else {
        json_t *kvs = json_object_get(j, "kvs");
        TG_FUZZ_CHECK(res.rs_n == (json_is_array(kvs) ? json_array_size(kvs) : 0));
        for (size_t i = 0; i < res.rs_n; i++) {
            const tg_store_kv_t *kv = &res.rs_kvs[i];
            same_b64(json_array_get(kvs, i), "key", kv->kv_key, kv->kv_key_len);
            same_b64(json_array_get(kvs, i), "value", kv->kv_val, kv->kv_val_len);
        }
    }
    tg_store_range_res_free(&res);
}

static void txn(const json_t *j, uint8_t shape)
{
    static const tg_store_op_t ops[] = {
        {.op_type = TG_STORE_OP_GET}, {.op_type = TG_STORE_OP_PUT}, {.op_type = TG_STORE_OP_DELETE},
        {.op_type = TG_STORE_OP_GET}};
    size_t ns = shape & 3, nf = (shape >> 2) & 3;
    char err[TG_ERRLEN] = "";
    tg_store_txn_res_t res;
    memset(&res, 0, sizeof res);
    int rc = parse_txn(j, ops, ns, ops + 1, nf, &res, err, sizeof err);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_STORE_ESERVER || rc == TG_STORE_ENOMEM);
    if (rc == 0)
        TG_FUZZ_CHECK(res.tx_n == (res.tx_succeeded ? ns : nf));
    else
        TG_FUZZ_CHECK(err[0] != '\0');
    tg_store_txn_res_free(&res);
}

static void watch(const char *p, size_t n, uint8_t cut)
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
    tg_buf_init(&ew.ew_line, (size_t)8 << 20);
    /* the transport cuts the stream where it likes: twice here */
    size_t a = n ? (size_t)cut * n / 255 : 0;
    int64_t before = ew.ew_next;
    if (on_watch((char *)p, 1, a, &ew) == a) {
        TG_FUZZ_CHECK(ew.ew_next >= before);
        (void)on_watch((char *)p + a, 1, n - a, &ew);
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
    tg_buf_free(&ew.ew_line);
    close(w.w_efd);
    pthread_cond_destroy(&w.w_cond);
    pthread_mutex_destroy(&w.w_mu);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const char *p = (const char *)data + 2;
    size_t n = size - 2;
    int kind = data[0] % 4;
    if (kind == 2) {
        watch(p, n, data[1]);
        return 0;
    }
    if (kind == 3) {
        char *msg = tg_malloc(n + 1);
        TG_FUZZ_CHECK(msg != NULL);
        memcpy(msg, p, n);
        msg[n] = '\0';
        int code = etcd_code(msg, data[1]);
        TG_FUZZ_CHECK(code < 0);
        tg_free(msg);
        return 0;
    }
    json_error_t je;
    json_t *j = json_loadb(p, n, 0, &je);
    if (j == NULL)
        return 0;
    if (kind == 0)
        range(j);
    else
        txn(j, data[1]);
    json_decref(j);
    return 0;
}
