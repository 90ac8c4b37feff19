/* snapshot_bench.c: how big a Sync snapshot of N API keys is, how long the
 * control plane takes to build it (cp_snapshot_build: a paginated read of
 * everything under tg/config/ at one revision, assembled without unpacking),
 * and how long an agent takes to apply it (unpack the SyncMessage with
 * protobuf-c and index every key by its secret hash, as the agent's auth
 * lookup needs), with the memory the unpacked snapshot holds.
 *
 *   snapshot_bench [--keys 1000000] [--store lmdb:DIR | etcd:URL]
 *
 * The store is filled first (LMDB without fsync by default: the load is not
 * what is measured), 128 puts per transaction; 1,000 accounts with their
 * balances and one price card come with the keys.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "controlplane/agentside.h"
#include "tollgate/v1/agent.pb-c.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kb(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

typedef struct kv_batch {
    char keys[TG_STORE_MAX_TXN_OPS][96];
    tg_buf_t vals[TG_STORE_MAX_TXN_OPS];
    tg_store_op_t ops[TG_STORE_MAX_TXN_OPS];
    size_t n;
} kv_batch_t;

static int flush(tg_store_t *st, kv_batch_t *b)
{
    char err[TG_ERRLEN] = "";
    if (b->n == 0)
        return 0;
    for (size_t i = 0; i < b->n; i++)
        b->ops[i] = (tg_store_op_t){.op_type = TG_STORE_OP_PUT, .op_key = b->keys[i],
                                    .op_key_len = strlen(b->keys[i]), .op_val = b->vals[i].b_data,
                                    .op_val_len = b->vals[i].b_len};
    int rc = tg_store_txn(st, NULL, 0, b->ops, b->n, NULL, 0, NULL, err, sizeof(err));
    if (rc < 0)
        fprintf(stderr, "snapshot_bench: load: %s\n", err);
    for (size_t i = 0; i < b->n; i++)
        tg_buf_reset(&b->vals[i]);
    b->n = 0;
    return rc;
}

static int add(tg_store_t *st, kv_batch_t *b, const char *key, const ProtobufCMessage *m)
{
    char err[TG_ERRLEN];
    snprintf(b->keys[b->n], sizeof(b->keys[0]), "%s", key);
    if (tg_rpc_pb_pack(m, &b->vals[b->n], err, sizeof(err)) < 0)
        return -1;
    b->n++;
    return b->n == TG_STORE_MAX_TXN_OPS ? flush(st, b) : 0;
}

/* A small open-addressing index of 32-byte hashes: what an agent builds to
 * find a key by the SHA-256 of the presented secret. */
static size_t index_keys(Tollgate__V1__Snapshot *s)
{
    size_t cap = 1;
    while (cap < s->n_keys * 2)
        cap <<= 1;
    Tollgate__V1__ApiKey **slots = calloc(cap, sizeof(*slots));
    size_t placed = 0;
    if (slots == NULL)
        return 0;
    for (size_t i = 0; i < s->n_keys; i++) {
        const uint8_t *h = s->keys[i]->secret_sha256.data;
        if (s->keys[i]->secret_sha256.len != 32)
            continue;
        uint64_t x;
        memcpy(&x, h, sizeof(x));
        for (size_t j = x & (cap - 1);; j = (j + 1) & (cap - 1))
            if (slots[j] == NULL) {
                slots[j] = s->keys[i];
                placed++;
                break;
            }
    }
    free(slots);
    return placed;
}

int main(int argc, char **argv)
{
    long nkeys = 1000000;
    const char *spec = NULL;
    char dir[] = "/tmp/tg-snapbench-XXXXXX", specbuf[256], err[TG_ERRLEN] = "";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--keys") == 0)
            nkeys = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--store") == 0)
            spec = argv[i + 1];
    }
    if (spec == NULL) {
        if (mkdtemp(dir) == NULL)
            return 1;
        snprintf(specbuf, sizeof(specbuf), "lmdb:%s", dir);
        spec = specbuf;
    }
    tg_store_opts_t so = {.so_nosync = 1, .so_map_size = (size_t)1 << 30, .so_timeout_ms = 30000};
    tg_store_t *st = NULL;
    if (tg_store_open(&st, spec, &so, err, sizeof(err)) < 0) {
        fprintf(stderr, "snapshot_bench: %s\n", err);
        return 1;
    }
    kv_batch_t *b = calloc(1, sizeof(*b));
    for (int i = 0; i < TG_STORE_MAX_TXN_OPS; i++)
        tg_buf_init(&b->vals[i], 1 << 20);

    double t0 = now_s();
    char key[96], id[64], acct[64], name[64];
    uint8_t hash[32];
    Tollgate__V1__BucketSpec credit = TOLLGATE__V1__BUCKET_SPEC__INIT, wallet = credit;
    credit.name = "credit";
    credit.currency = "USD";
    wallet.name = "wallet";
    wallet.currency = "USD";
    Tollgate__V1__BucketSpec *bs[] = {&credit, &wallet};
    for (long a = 0; a < 1000; a++) {
        Tollgate__V1__Account ac = TOLLGATE__V1__ACCOUNT__INIT;
        snprintf(acct, sizeof(acct), "acc_%06ld", a);
        snprintf(name, sizeof(name), "account %ld", a);
        ac.id = acct;
        ac.name = name;
        ac.billing_mode = TOLLGATE__V1__BILLING_MODE__BILLING_MODE_PREPAID;
        ac.buckets = bs;
        ac.n_buckets = 2;
        snprintf(key, sizeof(key), TG_CP_K_ACCOUNT "%s", acct);
        if (add(st, b, key, &ac.base) < 0)
            return 1;
        for (int k = 0; k < 2; k++) {
            Tollgate__V1__Balance bl = TOLLGATE__V1__BALANCE__INIT;
            bl.account_id = acct;
            bl.bucket = bs[k]->name;
            bl.currency = "USD";
            bl.balance_nano = 100000000000LL;
            snprintf(key, sizeof(key), TG_CP_K_BALANCE "%s/%s", acct, bs[k]->name);
            if (add(st, b, key, &bl.base) < 0)
                return 1;
        }
    }
    for (long i = 0; i < nkeys; i++) {
        Tollgate__V1__ApiKey k = TOLLGATE__V1__API_KEY__INIT;
        char prefix[16];
        snprintf(id, sizeof(id), "key_%012ld", i);
        snprintf(acct, sizeof(acct), "acc_%06ld", i % 1000);
        snprintf(name, sizeof(name), "service key %ld", i);
        tg_crypto_sha256(id, strlen(id), hash);
        snprintf(prefix, sizeof(prefix), "tg-%02x%02x%02x", hash[0], hash[1], hash[2]);
        k.id = id;
        k.account_id = acct;
        k.name = name;
        k.secret_sha256.data = hash;
        k.secret_sha256.len = 32;
        k.display_prefix = prefix;
        k.status = TOLLGATE__V1__KEY_STATUS__KEY_STATUS_ACTIVE;
        k.created_at_us = 1795000000000000LL + i;
        snprintf(key, sizeof(key), TG_CP_K_KEY "%s", id);
        if (add(st, b, key, &k.base) < 0)
            return 1;
    }
    if (flush(st, b) < 0)
        return 1;
    int64_t rev = 0;
    tg_store_revision(st, &rev, err, sizeof(err));
    double t_load = now_s() - t0;

    /* build */
    tg_buf_t snap;
    tg_buf_init(&snap, (size_t)4 << 30);
    size_t nobj = 0;
    double c0 = cpu_s();
    t0 = now_s();
    if (cp_snapshot_build(st, rev, 0, &snap, &nobj, err, sizeof(err)) < 0) {
        fprintf(stderr, "snapshot_bench: build: %s\n", err);
        return 1;
    }
    double t_build = now_s() - t0, c_build = cpu_s() - c0;

    /* apply: what an agent does with the bytes */
    long rss0 = rss_kb();
    c0 = cpu_s();
    t0 = now_s();
    Tollgate__V1__SyncMessage *sm =
        tollgate__v1__sync_message__unpack(NULL, snap.b_len, (const uint8_t *)snap.b_data);
    double t_unpack = now_s() - t0, c_unpack = cpu_s() - c0;
    if (sm == NULL || sm->message_case != TOLLGATE__V1__SYNC_MESSAGE__MESSAGE_SNAPSHOT) {
        fprintf(stderr, "snapshot_bench: the snapshot does not parse\n");
        return 1;
    }
    size_t placed = index_keys(sm->snapshot);
    double t_apply = now_s() - t0, c_apply = cpu_s() - c0;
    long rss1 = rss_kb();
    printf("store=%s keys=%ld objects=%zu revision=%" PRId64 " load=%.1fs\n", tg_store_backend(st), nkeys,
           nobj, rev, t_load);
    printf("snapshot: %.1f MB (%.0f bytes/object); build %.2f s wall, %.2f s CPU (%.0f objects per CPU-second)\n",
           snap.b_len / 1e6, (double)snap.b_len / (double)nobj, t_build, c_build, (double)nobj / c_build);
    printf("agent apply: unpack %.2f s wall / %.2f s CPU, + index: %.2f s wall / %.2f s CPU; %zu keys "
           "indexed; the unpacked snapshot holds %.0f MB (%.0f bytes/object)\n",
           t_unpack, c_unpack, t_apply, c_apply, placed, (rss1 - rss0) / 1024.0,
           (rss1 - rss0) * 1024.0 / (double)nobj);
    if (placed != (size_t)nkeys || sm->snapshot->n_accounts != 1000 || sm->snapshot->n_balances != 2000) {
        fprintf(stderr, "snapshot_bench: expected %ld keys, 1000 accounts, 2000 balances\n", nkeys);
        return 1;
    }
    tollgate__v1__sync_message__free_unpacked(sm, NULL);
    tg_buf_free(&snap);
    for (int i = 0; i < TG_STORE_MAX_TXN_OPS; i++)
        tg_buf_free(&b->vals[i]);
    free(b);
    tg_store_close(st);
    if (spec == specbuf) {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "snapshot_bench: could not remove %s\n", dir);
    }
    return 0;
}
