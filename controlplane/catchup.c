/* catchup.c: a replica that fell behind the settled-log retention copies
 * the ledger rows it lacks from a peer, over gRPC, and verifies them
 * against its own chain before it applies anything newer.
 *
 * Every replica appends the same settled log in the same order, so their
 * ledgers are one chain (the same rows, seqs and hashes). A replica that
 * was stopped longer than --settled-retention-s (or a new one) finds the log
 * starting after the last batch it applied (tail.c, fill_gap); it then asks
 * a peer (ReplicaService.CopyLedger, api/tollgate/v1/replica.proto) for the
 * rows after its own head, a page at a time, and appends each page with
 * tg_ledger_append_copy: a row lands only at the next seq and only when the
 * chain hash computed here from the row's bytes equals the peer's. That
 * catches accidental damage (a bit flipped in transit or on the peer's
 * disk) and a peer whose chain diverged: the page is refused whole (nothing
 * of it is stored) and the next peer is tried. It does not stop a dishonest
 * peer: the chain hash is unkeyed SHA-256, so a peer holding the secret can
 * make up rows that chain from our head; only the signed checkpoint
 * (tg/checkpoint) binds the chain to the leader's key. Paged unary calls instead of one stream: no thread or queue per
 * copy on the serving replica, bounded memory on both sides, and a copy
 * that breaks off resumes from the ledger's head.
 *
 * Who may copy: the ledger is every customer's receipts, so the caller
 * proves it is a replica of this cluster with the peer secret, a random
 * value the first replica that needs it puts in the shared store
 * (TG_CP_K_PEER_SECRET, outside tg/config/ so agents never see it); every
 * replica reads it from there, so there is nothing to configure. Whoever can
 * read the store can read it, and can read everything else already. With
 * TLS on the replicas the copy runs over it (--peer-ca, as forwarding);
 * without TLS the secret is sent only to a loopback peer, never in clear
 * over a network.
 *
 * Test hook: TG_CP_TEST_TAMPER_COPY=1 on a serving replica flips one bit
 * of the first row of every page it serves (tests/e2e/cp_catchup).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/tg_log.h"
#include "controlplane/agentside.h"
#include "crypto/tg_crypto.h"
#include "tollgate/v1/replica.pb-c.h"
#include "tollgate/v1/usage.pb-c.h"

#define M_COPY "/tollgate.v1.ReplicaService/CopyLedger"
#define PEER_MD "tg-peer-secret"
#define PAGE_ROWS 1000
#define PAGE_ROWS_MAX 2000
#define PAGE_BYTES (3u << 20)

/* ---- the peer secret ------------------------------------------------------------ */

/* The cluster's peer secret (64 hex digits) into out, creating it in the
 * store when no replica has yet. 0 or a negative store code with err set. */
static int peer_secret(tg_cp_agent_side_t *as, char out[65], char *err, size_t errlen)
{
    tg_cp_t *cp = as->as_cp;
    pthread_mutex_lock(&as->as_mu);
    snprintf(out, 65, "%s", as->as_peer_secret);
    pthread_mutex_unlock(&as->as_mu);
    if (out[0])
        return 0;
    for (int attempt = 0; attempt < 3; attempt++) {
        tg_store_kv_t *kv = NULL;
        int rc = tg_store_get(cp->cp_store, TG_CP_K_PEER_SECRET, strlen(TG_CP_K_PEER_SECRET), &kv, NULL, err,
                              errlen);
        if (rc < 0)
            return rc;
        if (kv != NULL) {
            int ok = kv->kv_val_len == 64;
            if (ok)
                memcpy(out, kv->kv_val, 64), out[64] = '\0';
            tg_store_kv_free(kv);
            if (!ok)
                return tg_errf(err, errlen, TG_STORE_ECORRUPT, "%s: not 64 hex digits", TG_CP_K_PEER_SECRET);
            pthread_mutex_lock(&as->as_mu);
            snprintf(as->as_peer_secret, sizeof(as->as_peer_secret), "%s", out);
            pthread_mutex_unlock(&as->as_mu);
            return 0;
        }
        uint8_t r[32];
        char hex[65];
        if (tg_crypto_random(r, sizeof(r)) != 0)
            return tg_errf(err, errlen, TG_STORE_EINVAL, "no entropy for the peer secret");
        tg_crypto_hex(r, sizeof(r), hex);
        /* absent only: of two replicas creating it at once, one wins and
         * both read that one on the next round */
        if ((rc = tg_cp_put_if(cp, TG_CP_K_PEER_SECRET, 0, hex, 64, err, errlen)) < 0)
            return rc;
    }
    return tg_errf(err, errlen, TG_STORE_EUNKNOWN, "%s: could not be read or created", TG_CP_K_PEER_SECRET);
}

/* ---- serving: CopyLedger ----------------------------------------------------------- */

typedef struct page {
    Tollgate__V1__CopiedRow *pg_rows;
    Tollgate__V1__CopiedRow **pg_ptrs;
    size_t pg_n, pg_cap, pg_bytes;
} page_t;

static int page_row(const tg_ledger_row_t *r, void *arg)
{
    page_t *p = arg;
    if (p->pg_n == p->pg_cap || (p->pg_n > 0 && p->pg_bytes + r->lr_record_len > PAGE_BYTES))
        return 1;
    Tollgate__V1__CopiedRow *c = &p->pg_rows[p->pg_n];
    tollgate__v1__copied_row__init(c);
    c->seq = r->lr_seq;
    c->entry.data = tg_malloc(r->lr_record_len ? r->lr_record_len : 1);
    c->hash.data = tg_malloc(32);
    if (c->entry.data == NULL || c->hash.data == NULL) {
        tg_free(c->entry.data);
        tg_free(c->hash.data);
        return -1;
    }
    memcpy(c->entry.data, r->lr_record, r->lr_record_len);
    c->entry.len = r->lr_record_len;
    memcpy(c->hash.data, r->lr_hash, 32);
    c->hash.len = 32;
    p->pg_ptrs[p->pg_n++] = c;
    p->pg_bytes += r->lr_record_len + 64;
    return 0;
}

static int copy_ledger(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, tg_buf_t *reply, void *arg)
{
    tg_cp_t *cp = arg;
    tg_cp_agent_side_t *as = cp->cp_agent;
    char err[TG_ERRLEN] = "", want[65], cursor[TG_LEDGER_CURSOR_LEN], next[TG_LEDGER_CURSOR_LEN];
    ProtobufCMessage *m = NULL;
    page_t p = {0};
    size_t glen = 0;
    int code = TG_RPC_CODE_OK;
    const char *got = tg_rpc_call_metadata(call, PEER_MD, &glen);
    if (peer_secret(as, want, err, sizeof(err)) < 0)
        return tg_rpc_call_errorf(call, TG_RPC_CODE_UNAVAILABLE, "reading the peer secret: %s", err);
    if (got == NULL || glen != 64 || !tg_crypto_equal(got, want, 64))
        return tg_rpc_call_errorf(call, TG_RPC_CODE_UNAUTHENTICATED,
                                  PEER_MD ": missing or wrong (only replicas of this cluster copy the ledger)");
    if (tg_rpc_pb_unpack(&tollgate__v1__copy_ledger_request__descriptor, req, req_len, &m, err, sizeof(err)) < 0)
        return tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT, "%s", err);
    const Tollgate__V1__CopyLedgerRequest *q = (const Tollgate__V1__CopyLedgerRequest *)m;
    Tollgate__V1__CopyLedgerPage resp = TOLLGATE__V1__COPY_LEDGER_PAGE__INIT;
    tg_ledger_stat_t st;
    uint8_t head[32];
    if (q->from_seq == 0) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INVALID_ARGUMENT, "from_seq: rows start at 1");
        goto fail;
    }
    if (tg_ledger_stat(cp->cp_ledger, &st, err, sizeof(err)) < 0) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_UNAVAILABLE, "ledger: %s", err);
        goto fail;
    }
    if (st.ls_first_seq > 0 && q->from_seq < st.ls_first_seq) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_OUT_OF_RANGE,
                                  "from_seq: this replica's ledger starts at row %" PRIu64 " (ledger retention)",
                                  st.ls_first_seq);
        goto fail;
    }
    /* applied first: every batch up to it is in the rows read after */
    pthread_mutex_lock(&as->as_mu);
    resp.applied_settled_seq = as->as_tail_seq;
    pthread_mutex_unlock(&as->as_mu);
    p.pg_cap = q->max_rows == 0 ? 500 : q->max_rows > PAGE_ROWS_MAX ? PAGE_ROWS_MAX : q->max_rows;
    p.pg_rows = tg_calloc(p.pg_cap, sizeof(*p.pg_rows));
    p.pg_ptrs = tg_calloc(p.pg_cap, sizeof(*p.pg_ptrs));
    if (p.pg_rows == NULL || p.pg_ptrs == NULL) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_RESOURCE_EXHAUSTED, "no memory for a page");
        goto fail;
    }
    tg_ledger_filter_t all;
    tg_ledger_filter_init(&all);
    tg_ledger_cursor_at(q->from_seq - 1, cursor);
    if (tg_ledger_query(cp->cp_ledger, &all, cursor, p.pg_cap, page_row, &p, next, NULL, err, sizeof(err)) < 0 ||
        tg_ledger_head(cp->cp_ledger, &resp.head_seq, head, err, sizeof(err)) < 0) {
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_UNAVAILABLE, "ledger: %s", err);
        goto fail;
    }
    if (p.pg_n > 0 && getenv("TG_CP_TEST_TAMPER_COPY") && strcmp(getenv("TG_CP_TEST_TAMPER_COPY"), "1") == 0 &&
        p.pg_rows[0].entry.len > 0)
        p.pg_rows[0].entry.data[p.pg_rows[0].entry.len - 1] ^= 1;
    resp.rows = p.pg_ptrs;
    resp.n_rows = p.pg_n;
    resp.head_hash.data = head;
    resp.head_hash.len = sizeof(head);
    if (tg_rpc_pb_pack(&resp.base, reply, err, sizeof(err)) < 0)
        code = tg_rpc_call_errorf(call, TG_RPC_CODE_INTERNAL, "%s", err);
fail:
    for (size_t i = 0; i < p.pg_n; i++) {
        tg_free(p.pg_rows[i].entry.data);
        tg_free(p.pg_rows[i].hash.data);
    }
    tg_free(p.pg_rows);
    tg_free(p.pg_ptrs);
    tg_rpc_pb_free(m);
    return code;
}

int cp_catchup_register(tg_cp_t *cp, char *err, size_t errlen)
{
    return tg_rpc_server_add_unary(cp->cp_rpc, M_COPY, copy_ledger, cp, err, errlen);
}

/* ---- copying: the replica behind ------------------------------------------------- */

/* Appends one page (its rows continue this ledger at from). 0, or a
 * negative ledger code with err set (TG_LEDGER_ETAMPER: refused). */
static int append_page(tg_cp_t *cp, const Tollgate__V1__CopyLedgerPage *pg, uint64_t from, char *err,
                       size_t errlen)
{
    size_t n = pg->n_rows;
    tg_ledger_row_t *rows = tg_calloc(n, sizeof(*rows));
    unsigned char(*hashes)[32] = tg_calloc(n, 32);
    ProtobufCMessage **ents = tg_calloc(n, sizeof(*ents));
    int rc = 0;
    if (rows == NULL || hashes == NULL || ents == NULL) {
        rc = tg_errf(err, errlen, TG_LEDGER_ENOMEM, "no memory for %zu copied rows", n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const Tollgate__V1__CopiedRow *c = pg->rows[i];
        if (c->seq != from + i || c->hash.len != 32) {
            rc = tg_errf(err, errlen, TG_LEDGER_ETAMPER, "copied row %zu: seq %" PRIu64 " (want %" PRIu64
                         ") or a hash of %zu bytes", i, c->seq, from + i, c->hash.len);
            goto done;
        }
        if (tg_rpc_pb_unpack(&tollgate__v1__ledger_entry__descriptor, c->entry.data, c->entry.len, &ents[i], NULL,
                             0) < 0) {
            rc = tg_errf(err, errlen, TG_LEDGER_ETAMPER, "copied row %" PRIu64 ": not a LedgerEntry", c->seq);
            goto done;
        }
        cp_row_from_entry((const Tollgate__V1__LedgerEntry *)ents[i], c->entry.data, c->entry.len, &rows[i]);
        memcpy(hashes[i], c->hash.data, 32);
    }
    rc = tg_ledger_append_copy(cp->cp_ledger, rows, n, from, (const unsigned char(*)[32])hashes, err, errlen);
done:
    for (size_t i = 0; ents != NULL && i < n; i++)
        tg_rpc_pb_free(ents[i]);
    tg_free(ents);
    tg_free(hashes);
    tg_free(rows);
    return rc;
}

/* Copies from the peer at addr until it has nothing more. Returns the rows
 * copied (>= 0) or a negative code with err set. */
static int64_t copy_from(tg_cp_agent_side_t *as, const char *peer, const char *addr, const char *secret, char *err,
                         size_t errlen)
{
    tg_cp_t *cp = as->as_cp;
    tg_rpc_channel_opts_t o = cp->cp_peer_tls;
    o.co_max_message_bytes = 64 << 20;
    /* the secret is a bearer credential: never in clear off this host */
    if (!o.co_tls && o.co_root_pem == NULL && !tg_cp_loopback(addr))
        return tg_errf(err, errlen, -1,
                       "not sending the peer secret in clear to %s: run the replicas with TLS (--tls-cert, "
                       "--tls-key; --peer-ca)",
                       addr);
    tg_rpc_channel_t *ch = tg_rpc_channel_create(addr, &o, err, errlen);
    int64_t copied = 0;
    if (ch == NULL)
        return -1;
    while (!as->as_stop) {
        uint64_t head = 0;
        uint8_t hh[32];
        ProtobufCMessage *reply = NULL;
        tg_rpc_result_t res;
        if (tg_ledger_head(cp->cp_ledger, &head, hh, err, errlen) < 0) {
            copied = -1;
            break;
        }
        Tollgate__V1__CopyLedgerRequest q = TOLLGATE__V1__COPY_LEDGER_REQUEST__INIT;
        q.from_seq = head + 1;
        q.max_rows = PAGE_ROWS;
        tg_rpc_md_t md = {PEER_MD, secret, 0};
        int rc = tg_rpc_unary_pb(ch, M_COPY, &md, 1, &q.base, &tollgate__v1__copy_ledger_page__descriptor, &reply,
                                 15000, &res, err, errlen);
        if (rc != 0) {
            if (res.rs_message && res.rs_message[0]) {
                err[0] = '\0';
                tg_errf(err, errlen, -1, "%s: %s", tg_rpc_code_name(res.rs_code), res.rs_message);
            }
            tg_rpc_result_free(&res);
            copied = -1;
            break;
        }
        tg_rpc_result_free(&res);
        const Tollgate__V1__CopyLedgerPage *pg = (const Tollgate__V1__CopyLedgerPage *)reply;
        if (pg->n_rows == 0) {
            /* the peer had nothing after our head: every batch it had
             * applied before this read is in our ledger now */
            pthread_mutex_lock(&as->as_mu);
            if (pg->applied_settled_seq > as->as_tail_seq)
                as->as_tail_seq = pg->applied_settled_seq;
            as->as_tail_seq_known = 1;
            pthread_mutex_unlock(&as->as_mu);
            tg_rpc_pb_free(reply);
            break;
        }
        rc = append_page(cp, pg, head + 1, err, errlen);
        if (rc == 0)
            copied += (int64_t)pg->n_rows;
        TG_LOG(TG_LOG_DEBUG, "cp.catchup", "copied rows %" PRIu64 "..%" PRIu64 " from %s", head + 1,
               head + pg->n_rows, peer);
        tg_rpc_pb_free(reply);
        if (rc < 0) {
            copied = rc;
            break;
        }
    }
    tg_rpc_channel_destroy(ch);
    return copied;
}

int cp_catchup(tg_cp_agent_side_t *as, uint64_t need, const char *first_id, char *err, size_t errlen)
{
    tg_cp_t *cp = as->as_cp;
    const char *me = cp->cp_node_id ? cp->cp_node_id : "cp";
    char secret[65], why[TG_ERRLEN + 300] = "";
    uint8_t end[64];
    size_t pl = strlen(TG_CP_K_REPLICA), endlen = tg_store_prefix_end(TG_CP_K_REPLICA, pl, end);
    tg_store_range_res_t res;
    tg_store_range_req_t rq = {.rq_key = TG_CP_K_REPLICA, .rq_key_len = pl, .rq_end = end, .rq_end_len = endlen,
                               .rq_limit = 64};
    int rc = peer_secret(as, secret, err, errlen);
    if (rc < 0)
        return rc;
    if ((rc = tg_store_range(cp->cp_store, &rq, &res, err, errlen)) < 0)
        return rc;
    pthread_mutex_lock(&as->as_mu);
    as->as_catching_up = 1;
    pthread_mutex_unlock(&as->as_mu);
    rc = -1;
    for (size_t i = 0; i < res.rs_n && rc != 0 && !as->as_stop; i++) {
        char peer[256], addr[256], perr[TG_ERRLEN] = "";
        const tg_store_kv_t *kv = &res.rs_kvs[i];
        snprintf(peer, sizeof(peer), "%.*s", (int)(kv->kv_key_len - pl), (const char *)kv->kv_key + pl);
        snprintf(addr, sizeof(addr), "%.*s", (int)kv->kv_val_len, (const char *)kv->kv_val);
        if (strcmp(peer, me) == 0 || !addr[0])
            continue;
        int64_t n = copy_from(as, peer, addr, secret, perr, sizeof(perr));
        if (n < 0) {
            TG_LOG(TG_LOG_ERROR, "cp.catchup", "copying the ledger from peer %s at %s failed%s: %s", peer, addr,
                   n == TG_LEDGER_ETAMPER ? " (the copy does not verify against this replica's chain: refused)"
                       : "",
                   perr);
            snprintf(why, sizeof(why), "%s: %s", peer, perr);
            continue;
        }
        int found = 0;
        if (first_id != NULL) {
            const char *ids[1] = {first_id};
            tg_ledger_has(cp->cp_ledger, ids, 1, &found, NULL, 0);
        }
        pthread_mutex_lock(&as->as_mu);
        int covered = found || as->as_tail_seq >= need;
        pthread_mutex_unlock(&as->as_mu);
        uint64_t head = 0;
        uint8_t hh[32];
        char hex[65];
        tg_ledger_head(cp->cp_ledger, &head, hh, NULL, 0);
        tg_crypto_hex(hh, sizeof(hh), hex);
        if (covered) {
            TG_LOG(TG_LOG_INFO, "cp.catchup",
                   "caught up from peer %s: copied %" PRId64 " ledger rows, each verified against the chain; "
                   "head %" PRIu64 " %s",
                   peer, n, head, hex);
            rc = 0;
        } else {
            snprintf(why, sizeof(why), "%s is behind too (copied %" PRId64 " rows, head %" PRIu64 ")", peer, n, head);
        }
    }
    tg_store_range_res_free(&res);
    pthread_mutex_lock(&as->as_mu);
    as->as_catching_up = 0;
    pthread_mutex_unlock(&as->as_mu);
    if (rc != 0)
        return tg_errf(err, errlen, TG_STORE_EUNKNOWN,
                       "no peer could supply the ledger rows up to settled batch %" PRIu64
                       " that retention deleted: restore this replica from a backup (docs/OPERATIONS.md) or "
                       "start it with --accept-ledger-gap=on to go on without them; until then it retries and "
                       "does not run for leader (%s)",
                       need, why[0] ? why : "no other replica is registered");
    return 0;
}
