/* agentside.h: internals of the control plane's agent side, shared by
 * agentsvc.c (AgentService handlers, start/stop), sync.c (Sync streams fed by
 * one config watch), settle.c (exactly-once settlement, top-ups,
 * checkpoints), tail.c (settled log -> LMDB ledger, retention) and leader.c
 * (leader election through a store lease). Not a public header: the admin
 * side sees only cp.h.
 *
 * Threads owned by the agent side (all stopped by tg_cp_agent_side_stop):
 *   sync watch   one store watch on TG_CP_K_CONFIG, fans every change out to
 *                every open Sync stream, sends heartbeats;
 *   sync resnap  builds fresh snapshots for streams that fell behind;
 *   tail         tails TG_CP_K_SETTLED into this replica's ledger; on the
 *                leader also deletes settled-log entries past retention;
 *   leader       campaigns for TG_CP_K_LEADER and keeps the lease alive.
 *
 * The settled log value (TG_CP_K_SETTLED/<seq>) is a packed LedgerPage
 * (api/tollgate/v1/admin.proto), stored as is or as one zstd frame of it
 * (settled.c), whose `entries` are the batch's LedgerEntry rows: reusing
 * the public message keeps the internal log readable with the public
 * descriptors (tollctl, pbjson) and needs no extra .proto.
 */
#ifndef TG_CP_AGENTSIDE_H
#define TG_CP_AGENTSIDE_H

#include <pthread.h>
#include <stdint.h>

#include "controlplane/cp.h"

struct Tollgate__V1__LedgerEntry;

/* ---- shared state ----------------------------------------------------------- */

struct sync_stream;  /* sync.c */
struct sync_ring;    /* sync.c */

typedef struct tg_cp_agent_side {
    tg_cp_t *as_cp;
    pthread_mutex_t as_mu;   /* guards the fields marked (mu) */
    pthread_cond_t as_cv;    /* signalled on stop and on work for the threads */
    int as_stop;             /* (mu) 1 once stop began */
    /* sync.c */
    struct sync_stream *as_streams;   /* (mu) open, kept Sync streams */
    struct sync_ring *as_ring;        /* (mu) recent updates, for catch-up */
    int64_t as_cfg_rev;               /* (mu) revision of the config the watch delivered */
    int as_resnap_pending;            /* (mu) streams wait for a fresh snapshot */
    pthread_t as_watch_thr, as_resnap_thr;
    int as_watch_started, as_resnap_started;
    /* settle.c: one settlement transaction at a time on the leader; batches
     * that arrive meanwhile queue and go together in the next one */
    pthread_mutex_t as_settle_mu;
    pthread_mutex_t as_gmu;           /* guards the group-commit queue */
    pthread_cond_t as_gcv;            /* a group was committed or failed */
    struct settle_job *as_gq_head, *as_gq_tail; /* (gmu) batches waiting */
    int as_gleading;                  /* (gmu) a group commit is under way */
    struct settle_group *as_gfree;    /* (gmu) groups kept for the next leader */
    uint64_t as_settled_seq;          /* (settle_mu) last TG_CP_K_SETTLED seq used */
    int64_t as_settled_seq_modrev;    /* (settle_mu) its mod_rev; -1: read it again */
    int as_commit_unclear;            /* (settle_mu) a group commit failed without a clear
                                       * answer: read the seq key before the next group */
    int64_t as_commit_unclear_from;   /* (settle_mu) the seq key's mod_rev before it */
    /* leader.c */
    pthread_t as_leader_thr;
    int as_leader_started;
    int64_t as_lease;                 /* the lease we campaign with, 0 none */
    int64_t as_leader_create_rev;     /* (mu) create_rev of our leader key (fencing) */
    int as_settle_ready;              /* (mu) leader and ledger caught up */
    struct cp_pending *as_pending;    /* (mu) committed ids the ledger lacks yet, or
                                       * that an early check (as_early) may have missed */
    struct cp_early *as_early;        /* (mu) batches checked against the ledger before
                                       * the commit lock, with the tail revision then */
    int64_t as_pending_lost;          /* (mu) last commit whose ids the pending set lacks
                                       * (no memory, or a commit of unclear outcome) */
    struct cp_stash *as_stash;        /* (mu) rows the leader built, for its tailer */
    char as_leader_name[256];         /* (mu) current leader's node id, "" unknown */
    char as_leader_addr[256];         /* (mu) its advertised gRPC address, "" unknown */
    int64_t as_leader_seen_rev;       /* (mu) create_rev of the leader key as_leader_addr is for */
    int as_resign;                    /* (mu) graceful stop began: campaign no more */
    int as_published;                 /* (leader thread) tg/replica/<me> put on as_lease */
    char as_advertise[256];           /* (mu) this replica's address for peers, "" not yet */
    /* forward.c: the channel to the leader, for ReportUsage on a follower */
    struct cp_fwd_ch *as_fwd;         /* (mu) NULL until first needed */
    /* nonce.c: outstanding proof nonces (own lock) */
    struct cp_nonces *as_nonces;
    /* alerts.c: the alert engine (evaluation and webhook threads) */
    struct cp_alerts *as_alerts;
    /* tail.c */
    pthread_t as_tail_thr;
    int as_tail_started;
    int64_t as_tail_rev;              /* (mu) settled log applied up to this revision */
    uint64_t as_tail_seq;             /* (mu) and up to this TG_CP_K_SETTLED <seq> */
    int as_tail_seq_known;            /* (mu) 0: an older settled.rev without the seq */
    char as_tail_path[1024];          /* file persisting as_tail_rev and as_tail_seq */
    /* catchup.c */
    char as_peer_secret[65];          /* (mu) the cluster's peer secret, "" until read */
    int as_catching_up;               /* (mu) copying a peer's ledger now */
    int64_t as_tail_saved_us;         /* (tail thread) when it was last written */
    int as_tail_dirty;                /* (tail thread) applied more than it says */
    /* tail.c: settlement pauses while this replica's ledger cannot take
     * rows (an append failed, or its disk is below --ledger-min-free-mb);
     * each is "" when fine, else the sentence settlement answers with */
    atomic_int as_stuck;              /* 1 while either below is set (read without the lock) */
    char as_stuck_append[TG_ERRLEN];  /* (mu) the last append failed */
    char as_stuck_space[TG_ERRLEN];   /* (mu) too little free space */
    int64_t as_stuck_logged_us;       /* (tail thread) when the pause was last logged */
    int64_t as_space_checked_us;      /* (tail thread) when free space was last looked at */
} tg_cp_agent_side_t;

/* ---- agentsvc.c --------------------------------------------------------------- */

struct Tollgate__V1__AgentRevocation;
/* Whether agent_id was revoked (AdminService.RevokeAgent: a key under
 * TG_CP_K_AGENT_REVOKED). Returns TG_RPC_CODE_OK when it was not;
 * PERMISSION_DENIED with the sentence its calls are refused with (who, when,
 * why, and the fix) when it was; UNAVAILABLE when the store cannot say. */
int cp_agent_revoked(tg_cp_t *cp, const char *agent_id, char *err, size_t errlen);
/* That sentence, for revocation r of agent_id, into out. Can't fail. */
void cp_revoked_why(const char *agent_id, const struct Tollgate__V1__AgentRevocation *r, char *out, size_t outlen);

/* The bytes an agent signs to prove its identity: "tollgate-agent-v2" ||
 * agent_id || timestamp_us (8 bytes big-endian) || nonce, appended to out;
 * with nonce_len 0 the old agents' "tollgate-agent-v1" || agent_id ||
 * timestamp_us (--legacy-agent-proofs). Returns 0 or TG_BUF_E*. */
int cp_proof_message(const char *agent_id, int64_t ts_us, const uint8_t *nonce, size_t nonce_len,
                     tg_buf_t *out);

/* Checks an AgentProof: the agent exists, timestamp within +-5 minutes of
 * now_us, signature valid, and its nonce one this replica issued to the
 * agent and not used yet (it is consumed). A proof without a nonce (an
 * agent older than nonces) passes on the timestamp alone while
 * cp->cp_legacy_proofs is set, and is counted. Returns TG_RPC_CODE_OK or
 * UNAUTHENTICATED (or UNAVAILABLE on store errors) with the reason in err. */
struct Tollgate__V1__AgentProof;

/* ---- nonce.c: single-use proof nonces ----------------------------------------- */

#define CP_NONCE_LEN 40 /* expiry (8) || random (16) || MAC (16) */

/* Creates / frees as->as_nonces (init: 0, or -1 on no memory). */
int cp_nonces_init(tg_cp_agent_side_t *as);
void cp_nonces_free(tg_cp_agent_side_t *as);
/* A fresh nonce for agent_id into out, valid 5 minutes (*expires_us, may be
 * NULL). 0, or -1 without entropy or a table. Thread-safe. */
int cp_nonce_issue(tg_cp_agent_side_t *as, const char *agent_id, int64_t now_us, uint8_t out[CP_NONCE_LEN],
                   int64_t *expires_us);
/* Consumes nonce if this replica issued it to agent_id, it has not expired
 * and was not used: 0; else -1 (and nothing changes). Thread-safe. */
int cp_nonce_consume(tg_cp_agent_side_t *as, const char *agent_id, const uint8_t *nonce, size_t len,
                     int64_t now_us);
/* 1 the first time agent_id is passed here (its old, nonce-less proof is
 * logged then), else 0. Thread-safe. */
int cp_nonce_legacy_first(tg_cp_agent_side_t *as, const char *agent_id);
/* ---- lease.c: spend leases ---------------------------------------------------- */

struct Tollgate__V1__LeaseRequest;
struct Tollgate__V1__Balance;
struct Tollgate__V1__Account;

/* AgentService.Lease after the proof was verified: grants, renews or takes
 * back the agent's hold on q's bucket (see lease.c for the rule) and packs
 * the LeaseResponse into reply. Returns TG_RPC_CODE_OK or a code with err
 * set (INVALID_ARGUMENT naming the field, NOT_FOUND for an unknown account
 * or bucket, UNAVAILABLE when the store is, ABORTED under contention). */
int cp_lease(tg_cp_t *cp, const struct Tollgate__V1__LeaseRequest *q, tg_buf_t *reply, char *err,
             size_t errlen);
/* How low a's balance b may go: 0 prepaid, -credit_limit postpaid. */
int64_t cp_lease_floor(const struct Tollgate__V1__Account *a, const struct Tollgate__V1__Balance *b);
/* Settlement of agent_id's records costing `cost` on b: the same amount
 * leaves the agent's hold (it was reserved there), and reserved_nano is
 * recomputed. Can't fail. */
void cp_lease_consume(struct Tollgate__V1__Balance *b, const char *agent_id, int64_t cost, int64_t now_us);

int cp_verify_proof(tg_cp_t *cp, const struct Tollgate__V1__AgentProof *proof, int64_t now_us,
                    char *err, size_t errlen);

/* Verifies an Ed25519 signature with a raw 32-byte public key. 0 or
 * TG_CRYPTO_E*. */
int cp_verify_raw(const uint8_t *pub, size_t publen, const void *data, size_t n,
                  const uint8_t *sig, size_t siglen);

/* ---- sync.c -------------------------------------------------------------------- */

int cp_sync_start(tg_cp_agent_side_t *as, char *err, size_t errlen);
void cp_sync_stop(tg_cp_agent_side_t *as);
/* Ends every open Sync stream with UNAVAILABLE (a stream being snapshotted
 * is marked and ended by the resnap thread). Thread-safe; the threads keep
 * running. */
void cp_sync_close_streams(tg_cp_agent_side_t *as);
int cp_sync_handler(tg_rpc_call_t *call, const uint8_t *req, size_t req_len, void *arg);

/* Appends a packed Snapshot of everything under TG_CP_K_CONFIG at store
 * revision rev (> 0) to out, keeping for every price card the version in
 * effect at now_us and the scheduled later ones. *nkeys (may be NULL) gets
 * the number of objects. Returns 0 or a negative TG_STORE_E* / TG_BUF_E*
 * with err set. Used by Sync and bench/cp. */
int cp_snapshot_build(tg_store_t *store, int64_t rev, int64_t now_us, tg_buf_t *out,
                      size_t *nkeys, char *err, size_t errlen);

/* ---- settle.c ------------------------------------------------------------------ */

/* The price entry, the bucket and the cost of a record: billing/tg_billing.h. */

/* Marker keys: TG_CP_K_BATCH<agent>/<seq 20 digits>, TG_CP_K_IDEM<account>/<key>. */
int cp_batch_key(const char *agent_id, uint64_t seq, char *out, size_t outlen);
/* ReportUsage's first steps, which read the agent's bytes before anything
 * else: unpacks a SignedUsageBatch into pool (*out lives in the pool) and
 * checks it names an agent. TG_RPC_CODE_OK or INVALID_ARGUMENT with err. */
struct Tollgate__V1__SignedUsageBatch;
struct Tollgate__V1__UsageBatch;
int cp_batch_unpack_signed(tg_pool_t *pool, const uint8_t *req, size_t req_len,
                           struct Tollgate__V1__SignedUsageBatch **out, char *err, size_t errlen);
/* Then, with the agent's registered public key: verifies the signature over
 * the batch bytes (UNAUTHENTICATED), unpacks the UsageBatch into pool and
 * checks it names the signer (INVALID_ARGUMENT). TG_RPC_CODE_OK and *out. */
int cp_batch_open(tg_pool_t *pool, const struct Tollgate__V1__SignedUsageBatch *sb, const uint8_t *pub,
                  size_t publen, struct Tollgate__V1__UsageBatch **out, char *err, size_t errlen);
int cp_idem_key(const char *account_id, const char *idem, char *out, size_t outlen);

int cp_report_usage(tg_cp_t *cp, const uint8_t *req, size_t req_len, tg_buf_t *reply, char *err,
                    size_t errlen);
/* Frees the settlement groups kept for reuse (agent side shutdown). */
void cp_settle_free_groups(tg_cp_agent_side_t *as);

/* Fills a ledger row from a LedgerEntry and its packed bytes (the row's
 * strings point into e and packed). */
void cp_row_from_entry(const struct Tollgate__V1__LedgerEntry *e, const uint8_t *packed,
                       size_t packed_len, tg_ledger_row_t *row);

/* The packed size of usage entry e whose record is already packed (rec,
 * rlen), written at out when out is not NULL: the bytes protobuf-c packs
 * for e (settle.c, "records packed once"). SIZE_MAX when e has a field this
 * writer leaves to protobuf-c (top-up and adjustment fields). Can't fail. */
size_t cp_entry_pack_fast(const struct Tollgate__V1__LedgerEntry *e, const uint8_t *rec, size_t rlen,
                          uint8_t *out);

/* Appends k packed LedgerPages (settled-log values) to the ledger in one
 * append (one fsync). 0 or a negative code with err set. */
int cp_ledger_apply(tg_cp_t *cp, const uint8_t *const *vals, const size_t *lens, size_t k,
                    char *err, size_t errlen);

/* Rows a settlement on this replica built for settled-log entry st_seq
 * (offered just before the commit). The settling call owns them and takes
 * them back only when no tailer is appending them. */
typedef struct cp_stash {
    struct cp_stash *st_next;
    uint64_t st_seq;
    const void *st_val; /* the settled-log value it was built with */
    size_t st_len;
    const tg_ledger_row_t *st_rows;
    size_t st_n;
    int st_state; /* 0 ready, 1 being appended by the tailer, 2 appended */
} cp_stash_t;

/* as_mu held. Take: 1 and the rows when a ready stash for seq with exactly
 * the value val/len exists (it
 * is then the tailer's until released), else 0. Release: after the append
 * (appended 1) or its failure (0: ready again). Broadcast as_cv after. */
int cp_stash_take(tg_cp_agent_side_t *as, uint64_t seq, const void *val, size_t len,
                  const tg_ledger_row_t **rows, size_t *n);
void cp_stash_release(tg_cp_agent_side_t *as, uint64_t seq, int appended);

/* One settled batch for cp_ledger_apply_items: its packed value, or the
 * rows already built for it (from the stash). */
typedef struct cp_apply_item {
    const uint8_t *ai_val;
    size_t ai_len;
    const tg_ledger_row_t *ai_rows; /* non-NULL: use these, not ai_val */
    size_t ai_nrows;
} cp_apply_item_t;

/* Appends the items' rows, in order, in one ledger append. */
int cp_ledger_apply_items(tg_cp_t *cp, const cp_apply_item_t *items, size_t k, char *err,
                          size_t errlen);

/* Forgets the pending (committed, not yet appended) record ids of commits
 * at revisions <= rev. as_mu held; the tailer calls it. */
void cp_pending_prune(tg_cp_agent_side_t *as, int64_t rev);

/* ---- settled.c: settled-log values ---------------------------------------------- */

/* Pages are built up to TG_STORE_MAX_VALUE bytes; a compressed value may
 * say up to this many (room for larger pages later, a bound for damage). */
#define CP_SETTLED_PAGE_MAX (16 * 1024 * 1024)

/* 1 when the value is a zstd frame (else it is the packed page itself). */
int cp_settled_is_zstd(const uint8_t *val, size_t len);
/* A compression context for cp_settled_pack, kept by its one user thread
 * at a time; NULL when out of memory. Free with cp_settled_zctx_free. */
void *cp_settled_zctx_new(void);
void cp_settled_zctx_free(void *zc);
/* Compresses the packed page into out (emptied first; its memory is kept
 * for the next call): *packed 1, or 0 when the frame would not be smaller
 * than the page (then the page is to be stored as is, out empty).
 * Returns 0, or a TG_RPC_CODE with err set. */
int cp_settled_pack(void *zc, const uint8_t *page, size_t len, tg_buf_t *out, int *packed, char *err,
                    size_t errlen);
/* The packed LedgerPage of a stored value: *page points into val when it
 * is stored as is, else into scratch (the caller's, emptied and filled;
 * valid until its next use). Returns 0, or TG_LEDGER_ECORRUPT (not one
 * whole frame with its size and checksum, bytes after it, a checksum that
 * fails, or a page over CP_SETTLED_PAGE_MAX) / TG_LEDGER_ENOMEM with err
 * set. */
int cp_settled_page(const uint8_t *val, size_t len, tg_buf_t *scratch, const uint8_t **page, size_t *plen,
                    char *err, size_t errlen);
/* The stored value unpacked: *out a LedgerPage (free with tg_rpc_pb_free).
 * Returns 0, or a negative code with err set (cp_settled_page's, or
 * tg_rpc_pb_unpack's when the page is not a LedgerPage). */
int cp_settled_unpack(const uint8_t *val, size_t len, struct ProtobufCMessage **out, char *err,
                      size_t errlen);

/* ---- tail.c -------------------------------------------------------------------- */

int cp_tail_start(tg_cp_agent_side_t *as, char *err, size_t errlen);
void cp_tail_stop(tg_cp_agent_side_t *as);
/* Waits until the tailer applied the settled log up to rev (bounded by
 * timeout_ms). Returns 0, or -1 on timeout/stop. With stuck != NULL it
 * also returns -2 as soon as the ledger cannot be written, the reason
 * (cp_ledger_stuck) in stuck. */
int cp_tail_wait(tg_cp_agent_side_t *as, int64_t rev, int timeout_ms, char *stuck, size_t stucklen);
/* 1 while this replica's ledger cannot take rows (an append failed and was
 * not retried successfully yet, or its file system is below
 * --ledger-min-free-mb), with the sentence to answer in why (a
 * UNAVAILABLE status: settlement pauses, agents keep their records); 0
 * when it can. Any thread. */
int cp_ledger_stuck(tg_cp_agent_side_t *as, char *why, size_t whylen);

/* ---- catchup.c: a replica behind the settled-log retention ------------------- */

/* Registers ReplicaService.CopyLedger on cp's server. 0 or a negative code. */
int cp_catchup_register(tg_cp_t *cp, char *err, size_t errlen);
/* Copies the ledger rows this replica lacks from a peer (the replicas under
 * TG_CP_K_REPLICA), each page appended only where it continues this chain
 * with the peer's hashes, until the copy covers settled-log seq `need`
 * (as_tail_seq >= need afterwards) or holds record `first_id` (may be
 * NULL). Tries every peer; a copy that does not verify is refused and the
 * next peer tried. Tailer thread. 0, or a negative code with err set. */
int cp_catchup(tg_cp_agent_side_t *as, uint64_t need, const char *first_id, char *err, size_t errlen);

/* ---- alerts.c ------------------------------------------------------------------- */

struct Tollgate__V1__UsageRecord;

/* Starts the alert engine's two threads (evaluation, webhook delivery);
 * both act only while this replica is the leader. 0 or a negative code
 * with err set. Stop with cp_alerts_stop (joins them; idempotent), free
 * with cp_alerts_free once no settlement can call cp_alerts_note. */
int cp_alerts_start(tg_cp_agent_side_t *as, char *err, size_t errlen);
void cp_alerts_stop(tg_cp_agent_side_t *as);
void cp_alerts_free(tg_cp_agent_side_t *as);

/* Settlement's hook, after a group committed on the leader: copies a few
 * fields of each record (not dup[i]) into the engine's queue and wakes it.
 * No store access; returns at once while no alert rule is enabled. Safe
 * from any thread. */
void cp_alerts_note(tg_cp_agent_side_t *as, const struct Tollgate__V1__UsageRecord *const *recs, const int *dup,
                    size_t n);

/* The webhook signature header's value, Stripe's scheme: `t=<t>,v1=<hex
 * HMAC-SHA256(secret, "<t>.<body>")>` into out (~90 bytes). Can't fail
 * (an empty v1 when out of memory). */
void cp_alerts_sign(const char *secret, int64_t t, const char *body, size_t len, char *out, size_t outlen);

/* ---- forward.c ----------------------------------------------------------------- */

/* Returned by cp_forward_report when the call is not for forwarding. */
#define CP_NOT_FORWARDED (-1)

/* On a follower that knows the leader's address, sends ReportUsage's
 * request bytes to the leader unchanged (they are signed by the agent, so
 * the follower adds no trust) and copies its reply into `reply`. Returns the
 * leader's status code (with its message in err), UNAVAILABLE when the leader
 * cannot be reached, or CP_NOT_FORWARDED when this replica should answer
 * itself: it is the leader or becoming it, no leader or address is known, or
 * the call was already forwarded once (no loops while replicas disagree).
 * Runs on a gRPC thread; blocks at most ~10 s (the call's own deadline). */
int cp_forward_report(tg_cp_t *cp, tg_rpc_call_t *call, const uint8_t *req, size_t req_len,
                      tg_buf_t *reply, char *err, size_t errlen);
/* Drops the channel to the leader. After the RPC server is destroyed. */
void cp_forward_free(tg_cp_agent_side_t *as);

/* ---- leader.c ------------------------------------------------------------------ */

int cp_leader_start(tg_cp_agent_side_t *as, char *err, size_t errlen);
void cp_leader_stop(tg_cp_agent_side_t *as);
/* Copies the settle fencing state: 1 when this replica may settle now
 * (*create_rev gets the leader key's create revision), else 0 with the
 * leader's name (maybe "") in name. */
int cp_leader_check(tg_cp_agent_side_t *as, int64_t *create_rev, char *name, size_t namelen);

/* Stops the agent side (if running) and frees it; only after the RPC server
 * is destroyed. Accepts a cp without one. */
void cp_agent_side_free(tg_cp_t *cp);

/* Gives the heap's free pages back to the kernel, at most once a minute
 * (agentsvc.c says why); returns 1 when it trimmed, 0 when it was not
 * time yet. The tail thread calls it: static state, one caller. */
int cp_heap_trim(void);

/* Waits on as_cv up to ms milliseconds or until stop; returns as_stop. */
int cp_sleep(tg_cp_agent_side_t *as, int ms);
/* The same, also woken by a graceful resign when or_resign (the leader
 * thread); returns 1 once stop (or that resign) began. */
int cp_wait(tg_cp_agent_side_t *as, int ms, int or_resign);

#endif
