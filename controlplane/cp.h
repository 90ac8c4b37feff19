/* cp.h: the control plane's internal contract, shared by its two halves.
 *
 *   admin side  (main.c, admin*.c, auth.c, audit.c, http.c):  the daemon,
 *               AdminService, admin-token auth, the audit log, /metrics.
 *   agent side  (agentsvc.c, sync.c, settle.c, leader.c, tail.c):
 *               AgentService (Enroll, Sync, ReportUsage, Lease), exactly-once
 *               settlement, the settled-log tailer into the LMDB ledger,
 *               leader election, checkpoints.
 *
 * Everything the control plane knows lives in the store (store/store.h) under
 * the key schema below, as packed tollgate.v1 protobuf values, except the
 * ledger's bulk, which each replica keeps in its own LMDB ledger
 * (store/ledger/ledger.h) fed from the store's settled log. So any replica can
 * serve Sync and reads, and the one elected leader settles.
 *
 * Money moves in exactly one way: a store transaction that (1) checks the
 * dedup marker is absent and the touched balances are unchanged since read
 * (mod_revision compares), (2) writes the new balances, the dedup marker and
 * one SettledBatch value under TG_CP_K_SETTLED. Usage batches and operator
 * top-ups/adjustments both take this path (settle.c), so a ledger row exists
 * for every balance movement and the sum of a key's rows equals its balance
 * movements to the nano-unit. The leader appends what it committed to its
 * own ledger at once; every replica's tailer (tail.c) appends the settled log
 * in revision order; the ledger is idempotent by record id, so both paths and
 * any replay are harmless.
 */
#ifndef TG_CP_H
#define TG_CP_H

#include <stdatomic.h>
#include <stdint.h>

#include "crypto/tg_crypto.h"
#include "rpc/tg_rpc.h"
#include "store/ledger/ledger.h"
#include "store/store.h"

/* ---- store key schema ----------------------------------------------------
 * ids are tg_crypto_new_id() strings; <seq> and <version> are 20-digit
 * zero-padded decimals so keys sort numerically. Values are packed protobuf
 * of the type named. */
#define TG_CP_K_ROOT "tg/"
#define TG_CP_K_CONFIG "tg/config/"                 /* everything pushed to agents */
#define TG_CP_K_ACCOUNT "tg/config/account/"        /* <id> -> Account */
#define TG_CP_K_PROJECT "tg/config/project/"        /* <id> -> Project */
#define TG_CP_K_KEY "tg/config/key/"                /* <id> -> ApiKey */
#define TG_CP_K_CHANNEL "tg/config/channel/"        /* <id> -> Channel (with credential) */
#define TG_CP_K_ROUTE "tg/config/route/"            /* <model> -> ModelRoute */
#define TG_CP_K_PRICE "tg/config/price/"            /* <card id>/<version> -> PriceCard */
#define TG_CP_K_RUN "tg/config/run/"                /* <run id> -> RunBudget */
#define TG_CP_K_POLICY "tg/config/policy"           /* -> GatewayPolicy */
#define TG_CP_K_BALANCE "tg/config/balance/"        /* <account id>/<bucket> -> Balance */
#define TG_CP_K_NAME "tg/index/name/"               /* <type>/<name> -> id (uniqueness) */
#define TG_CP_K_KEYHASH "tg/index/keyhash/"         /* <hex sha256> -> key id */
#define TG_CP_K_PRICE_GUARD "tg/index/price-guard"  /* last published card key: publishes compare it */
#define TG_CP_K_AGENT "tg/agent/"                   /* <agent id> -> AgentInfo */
#define TG_CP_K_REVOKED_KEY "tg/index/revoked-key/" /* <hex sha256(public key)> -> revoked agent id: Enroll
                                                      * refuses that key */
#define TG_CP_K_AGENT_REVOKED "tg/config/agent-revoked/" /* <agent id> -> AgentRevocation: under tg/config/ so
                                                      * every replica's Sync watch sees it and ends that agent's
                                                      * stream; never sent to agents (sync.c key_field) */
#define TG_CP_K_BATCH "tg/settle/batch/"            /* <agent id>/<seq> -> ReportUsageResponse (dedup + the ack) */
#define TG_CP_K_AGENT_SEQ "tg/settle/agent-seq/"   /* <agent id> -> highest settled batch sequence (decimal) */
#define TG_CP_K_IDEM "tg/settle/idem/"              /* <account id>/<idempotency key> -> BalanceChangeResponse */
#define TG_CP_K_SETTLED "tg/settle/log/"            /* <seq> -> SettledBatch (internal, see settle.c) */
#define TG_CP_K_SETTLED_SEQ "tg/settle/seq"         /* last <seq> used in TG_CP_K_SETTLED */
#define TG_CP_K_AUDIT "tg/audit/"                   /* <seq> -> AuditEvent */
#define TG_CP_K_AUDIT_SEQ "tg/audit-seq"            /* last audit <seq> */
#define TG_CP_K_LEADER "tg/leader"                  /* node id, attached to the leader's lease */
#define TG_CP_K_REPLICA "tg/replica/"               /* <node id> -> its advertised gRPC address (text),
                                                     * attached to that replica's lease */
#define TG_CP_K_CHECKPOINT "tg/checkpoint"          /* -> LedgerCheckpoint (latest signed) */
#define TG_CP_K_PEER_SECRET "tg/cluster/peer-secret" /* 64 hex digits: replicas' ReplicaService credential */
#define TG_CP_K_ALERT_RULE "tg/alert/rule/"         /* <id> -> AlertRule (not under tg/config/: agents never see it) */
#define TG_CP_K_ALERT "tg/alert/log/"               /* <16-digit seq> -> Alert */
#define TG_CP_K_ALERT_SEQ "tg/alert/seq"            /* last alert <seq> (decimal) */
#define TG_CP_K_ALERT_FIRED "tg/alert/fired/"       /* <rule id>/<what> -> alert id: once per threshold and window */
#define TG_CP_K_ALERT_OUT "tg/alert/out/"           /* <alert id>/<webhook index> -> delivery state (alerts.c) */
#define TG_CP_K_LIMIT "tg/limit/"                   /* <scope id> -> Balance: a key/project window's or run's
                                                      * remaining budget and its spend leases (lease.c) */

/* Admin token roles. */
enum tg_cp_role { TG_CP_ROLE_READER = 1, TG_CP_ROLE_PRICING = 2, TG_CP_ROLE_ADMIN = 3 };

typedef struct tg_cp_admin_token {
    char at_name[64];        /* shown in the audit log */
    int at_role;             /* enum tg_cp_role */
    uint8_t at_sha256[32];   /* SHA-256 of the bearer token */
} tg_cp_admin_token_t;

/* Fault injection for exactly-once tests: the process _exit(99)s at the
 * named point when TG_CP_CRASH_AT equals it ("after_commit": the settlement
 * transaction committed, nothing acknowledged yet). */
#define TG_CP_CRASH_AFTER_COMMIT "after_commit"

typedef struct tg_cp {
    /* configuration (main.c) */
    const char *cp_node_id;         /* this replica's name: --node-id, default host:pid */
    const char *cp_data_dir;        /* ledger, signing key, lmdb store by default */
    const char *cp_store_spec;      /* "lmdb:PATH" or "etcd:URL,URL" */
    const char *cp_enroll_token;    /* agents present it to Enroll */
    const char *cp_crash_at;        /* TG_CP_CRASH_AT, or NULL */
    tg_cp_admin_token_t *cp_tokens; /* from --admin-tokens FILE */
    size_t cp_ntokens;
    int cp_heartbeat_ms;            /* Sync heartbeat period, default 5000 */
    int cp_settled_retention_s;     /* settled batches and their markers kept in the store (s) */
    int cp_lease_ttl_ms;            /* spend leases expire this long after their last grant, default 30000 */
    int cp_legacy_proofs;           /* --legacy-agent-proofs: accept old agents' proofs without a nonce */
    int cp_accept_gap;              /* --accept-ledger-gap: campaign for leader with a ledger gap */
    int cp_settled_zstd;            /* --settled-compression zstd: settled-log values compressed */
    int64_t cp_ledger_min_free;     /* --ledger-min-free-mb in bytes: settlement pauses below; 0 off */
    tg_rpc_channel_opts_t cp_peer_tls; /* how this replica calls a peer (TLS roots, client cert) */
    /* resources */
    tg_store_t *cp_store;
    tg_ledger_t *cp_ledger;
    tg_crypto_key_t *cp_key;        /* this replica's Ed25519 key: signs checkpoints */
    tg_rpc_server_t *cp_rpc;
    /* state */
    atomic_int cp_is_leader;        /* 1 while this replica holds the leader lease */
    atomic_int cp_stopping;
    atomic_int cp_ledger_gap;       /* 1 while the ledger lacks rows retention deleted (catchup.c) */
    struct tg_cp_agent_side *cp_agent; /* owned by the agent side */
    /* where the next limit-retention pass starts (cp_lease_gc, tail thread
     * only): the key after the last one read; length 0 = the prefix start */
    uint8_t cp_gc_from[TG_STORE_MAX_KEY + 1];
    size_t cp_gc_from_len;
    /* metrics (Prometheus counters, see http.c) */
    atomic_llong cp_m_batches;      /* batches settled */
    atomic_llong cp_m_records;      /* records settled */
    atomic_llong cp_m_dup_batches;  /* resent batches answered from the marker */
    atomic_llong cp_m_mismatches;   /* records whose cost was recomputed differently */
    atomic_llong cp_m_unbilled;     /* records with a cost but no account/bucket to debit */
    atomic_llong cp_m_groups;       /* settlement transactions (group commits) of batches */
    atomic_llong cp_m_conflicts;    /* settlement transactions whose compare failed (retried) */
    atomic_llong cp_m_early_checks; /* batches whose ledger duplicate check ran before the commit lock */
    atomic_llong cp_m_early_pending_dups; /* their records found among the commits after that check */
    atomic_llong cp_m_sync_streams; /* open Sync streams */
    atomic_llong cp_m_admin_calls;
    atomic_llong cp_m_forwarded;    /* ReportUsage calls a follower forwarded to the leader */
    atomic_llong cp_m_forward_fail; /* of those, the ones that failed to reach it */
    atomic_llong cp_m_legacy_proofs; /* old agents' proofs without a nonce accepted */
    atomic_llong cp_m_settled_at_us; /* when a settlement last committed (the leader) or was
                                      * applied from the settled log (any replica); 0 never */
    int64_t cp_m_cert_not_after;    /* notAfter (Unix s) of --tls-cert, --client-ca; 0: none */
    int64_t cp_m_ca_not_after;
} tg_cp_t;

/* ---- budget scopes (lease.c): shared by settlement, leases and the admin reads ---- */

/* A budget scope besides the buckets: a key's or project's spend limit in
 * one window, or a run budget (billing/tg_billing.h names them). Its state
 * is a Balance under TG_CP_K_LIMIT<id>: balance_nano is what is left of
 * the limit after settled spend, holds are the agents' leases on it,
 * credit_limit_nano the limit that state was computed with (a changed
 * limit moves the remainder by the difference). */
typedef struct cp_scope {
    char cs_id[256];          /* scope id */
    char cs_key[TG_STORE_MAX_KEY];
    char cs_kind[8];          /* "key", "project", "run" */
    char cs_obj[128];         /* the key, project or run id */
    char cs_account[128];
    char cs_currency[16];
    int cs_window;            /* TOLLGATE__V1__LIMIT_WINDOW__*; 0 for a run */
    int64_t cs_start, cs_end; /* the window; 0 and INT64_MAX for total and runs */
    int64_t cs_limit;
    int cs_action;
    int cs_rate;              /* a rate window (requests or tokens): nothing settles it */
} cp_scope_t;

struct Tollgate__V1__SpendLimit;
struct Tollgate__V1__RunBudget;

/* Loads the key, project or account obj (kind "key", "project", "account")
 * and points *lims / *nl at its spend limits and *acct at its account id.
 * *m owns them (free with tg_rpc_pb_free); *m is NULL and *nl 0 when the
 * object does not exist or kind is another. Returns 0 or a negative store
 * error (err filled). */
int cp_limits_of(tg_cp_t *cp, const char *kind, const char *obj, struct ProtobufCMessage **m,
                 struct Tollgate__V1__SpendLimit ***lims, size_t *nl, const char **acct, char *err, size_t errlen);
/* Fills s for a key's, project's or account's (kind "key", "project",
 * "account") limit l in the window that
 * holds t_us in the account's zone tz_us. Returns 0 or -1 (an unknown
 * window). */
int cp_scope_of_limit(const char *kind, const char *obj, const char *account, const struct Tollgate__V1__SpendLimit *l,
                      int64_t t_us, int64_t tz_us, cp_scope_t *s);
/* The offset east of UTC of account_id's time_zone (tg_billing_tz); 0 for
 * UTC, an unknown account or a zone that does not parse. */
int64_t cp_account_tz(tg_cp_t *cp, const char *account_id);
/* Fills s for run budget b (no cap: -1). */
int cp_scope_of_run(const struct Tollgate__V1__RunBudget *b, cp_scope_t *s);
/* Resolves a scope id an agent leases against the configuration. Returns
 * TG_RPC_CODE_OK, NOT_FOUND (no such key, project, run or limit),
 * INVALID_ARGUMENT (malformed id, or a window start that is not one) or
 * UNAVAILABLE, with err set. */
int cp_scope_resolve(tg_cp_t *cp, const char *id, const char *account, cp_scope_t *s, char *err, size_t errlen);
/* The state of scope s from its stored Balance (NULL: none yet): fills
 * *fresh when b is NULL, and applies a changed limit to either. Returns the
 * message to use (b, or fresh). */
struct Tollgate__V1__Balance *cp_scope_state(const cp_scope_t *s, struct Tollgate__V1__Balance *b,
                                             struct Tollgate__V1__Balance *fresh);


/* A key limit with LIMIT_ACTION_PAUSE_KEY was reached (what is left cannot
 * cover a waiting request, or settlement took it to zero): pauses the key
 * (status PAUSED, the reason naming the limit) unless it is already paused
 * or revoked. Agents refuse it once Sync brings the change. Best effort:
 * failures are logged (the limit still blocks by itself). */
void cp_scope_pause_key(tg_cp_t *cp, const cp_scope_t *s);

/* Pauses key key_id (status PAUSED, status_reason = reason) by a
 * compare-and-swap on its config value, unless it is already paused or
 * revoked; why names the cause in the log. Agents refuse it with 403
 * key_paused once Sync brings the change (~ms). Returns 1 when this call
 * paused it, 0 when there was nothing to do (paused, revoked, no such key),
 * -1 on store failure or contention (logged). Used by limit actions
 * (cp_scope_pause_key) and alert rules (alerts.c). */
int cp_key_pause(tg_cp_t *cp, const char *key_id, const char *reason, const char *why);

/* Leader retention: deletes the state of key and project limit windows
 * that ended more than a day ago, and of rate windows (a minute each) five
 * minutes after they ended. A call reads at most max_states states (the
 * tail passes CP_LEASE_GC_STATES), starting where the previous call stopped
 * (cp->cp_gc_from) and wrapping to the prefix start after its end, so
 * every state is looked at within (states / max_states) passes. Call from
 * one thread only. Returns how many were deleted, or -1 with err set. A
 * record settling later than that for an old window counts against a fresh
 * state (docs/SPEND.md). */
#define CP_LEASE_GC_STATES 20000
int cp_lease_gc(tg_cp_t *cp, size_t max_states, char *err, size_t errlen);

/* The sum of b's holds (spend leases) that are live at now_us. */
int64_t cp_lease_reserved(const struct Tollgate__V1__Balance *b, int64_t now_us);

/* ---- agent side: implemented in agentsvc.c, settle.c, leader.c ----------- */

/* Registers AgentService's methods on cp->cp_rpc (before it starts).
 * Returns 0 or a TG_RPC_E* code with err set. */
int tg_cp_agentsvc_register(tg_cp_t *cp, char *err, size_t errlen);

/* Starts the agent side's threads: the config watch that feeds Sync streams,
 * leader election, the settled-log tailer, retention. Returns 0 or a negative
 * code with err set. */
int tg_cp_agent_side_start(tg_cp_t *cp, char *err, size_t errlen);

/* Stops those threads, finishes open Sync streams (UNAVAILABLE, "control
 * plane shutting down"), releases the leader lease. Idempotent. */
void tg_cp_agent_side_stop(tg_cp_t *cp);

/* The first step of a graceful stop, before the RPC server drains: gives up
 * the leader lease at once (another replica takes over within its next
 * campaign round, ~0.5 s, instead of the lease TTL), so /metrics stops
 * saying leader, and ends the open Sync streams (agents reconnect to another
 * replica) so the server's drain does not wait its grace for them. Set
 * cp_stopping first: new Sync calls are then refused. Idempotent; call
 * tg_cp_agent_side_stop after it as before. */
void tg_cp_agent_side_resign(tg_cp_t *cp);

/* Sets the HOST:PORT at which the other replicas reach this one's gRPC port
 * (published under TG_CP_K_REPLICA<node id>, so followers can forward usage
 * reports to the leader). Any thread, any time after tg_cp_agentsvc_register
 * (the port is known only once the server listens). Can't fail. */
void tg_cp_agent_side_advertise(tg_cp_t *cp, const char *addr);

/* The settling leader's node id as this replica last saw it (the leader
 * thread reads it every campaign round, 500 ms), copied into name; "" while
 * none is known. Returns 1 when it is this replica. Any thread. */
int tg_cp_leader_name(tg_cp_t *cp, char *name, size_t namelen);

/* A top-up or adjustment through the settlement path: validates, applies
 * once per (account, idempotency key), writes the ledger row and answers.
 * kind is TOLLGATE__V1__LEDGER_KIND__LEDGER_KIND_TOPUP or _ADJUSTMENT.
 * On success returns TG_RPC_CODE_OK with *resp packed into `reply`;
 * otherwise a TG_RPC_CODE_* with the reason in err (INVALID_ARGUMENT naming
 * the field, NOT_FOUND, FAILED_PRECONDITION for a prepaid bucket that would
 * go below zero, UNAVAILABLE when this replica is not the leader). */
struct Tollgate__V1__BalanceChangeRequest;
struct Tollgate__V1__Actor;
struct Tollgate__V1__LedgerEntry;

/* Writes a caller adds to a balance change's own transaction, so they land
 * or fail with the money (the admin side's audit event). tx_fill runs under
 * the settlement lock before every attempt with the entry about to be
 * committed; it fills at most TG_CP_TXN_EXTRA_MAX compares into cmps and
 * puts into ops (*ncmp, *nops), whose memory stays the filler's until
 * tg_cp_balance_change returns. Returns TG_RPC_CODE_OK or a code with err
 * set (the change is then not made). */
#define TG_CP_TXN_EXTRA_MAX 4
typedef struct tg_cp_txn_extra {
    int (*tx_fill)(void *arg, const struct Tollgate__V1__LedgerEntry *entry, tg_store_cmp_t *cmps,
                   size_t *ncmp, tg_store_op_t *ops, size_t *nops, char *err, size_t errlen);
    void *tx_arg;
} tg_cp_txn_extra_t;

/* extra may be NULL. */
int tg_cp_balance_change(tg_cp_t *cp, const struct Tollgate__V1__BalanceChangeRequest *req, int kind,
                         const struct Tollgate__V1__Actor *actor, const tg_cp_txn_extra_t *extra,
                         tg_buf_t *reply, char *err, size_t errlen);

/* The latest signed checkpoint of this replica's ledger head, packed
 * LedgerCheckpoint appended to reply. Returns TG_RPC_CODE_OK or a code with
 * err set. */
int tg_cp_checkpoint(tg_cp_t *cp, tg_buf_t *reply, char *err, size_t errlen);

/* ---- admin side: implemented in admin*.c, audit.c ------------------------- */

/* Registers AdminService's methods on cp->cp_rpc (before it starts). */
int tg_cp_admin_register(tg_cp_t *cp, char *err, size_t errlen);

/* ---- shared helpers (cp_util.c, admin side owns it) ----------------------- */

/* Zero-padded 20-digit decimal of v into buf (21 bytes). */
void tg_cp_seqstr(uint64_t v, char buf[21]);

/* Microseconds since the epoch. */
int64_t tg_cp_now_us(void);
/* Whether a HOST:PORT address is on the loopback interface. */
int tg_cp_loopback(const char *addr);

/* Reads key and unpacks it as type d into *out (tg_rpc_pb_free); *mod_rev
 * (may be NULL) gets its mod revision. Returns 0, 1 when absent (*out NULL),
 * or a negative TG_STORE_E* / TG_RPC_EPROTO code with err set. */
struct ProtobufCMessageDescriptor;
struct ProtobufCMessage;
/* Puts val under key if the key's mod revision is still modrev (0: the key
 * must be absent): the read-modify-write step of lease grants, key pauses
 * and alert bookkeeping. Returns 1 written, 0 the key moved meanwhile (read
 * it again), or a negative TG_STORE_E* code with err set (TG_STORE_EUNKNOWN:
 * sent, outcome unknown). */
int tg_cp_put_if(tg_cp_t *cp, const char *key, int64_t modrev, const void *val, size_t len, char *err,
                 size_t errlen);
int tg_cp_get_pb(tg_cp_t *cp, const char *key, const struct ProtobufCMessageDescriptor *d,
                 struct ProtobufCMessage **out, int64_t *mod_rev, char *err, size_t errlen);

/* Maps a TG_STORE_E* code to the gRPC status a caller should see. */
int tg_cp_store_code(int store_err);

/* The ledger row contract between settlement (writer) and the admin side's
 * QueryLedger/ExportLedger/GetRunReceipt (readers): lr_record holds a packed
 * tollgate.v1.LedgerEntry (usage rows carry their UsageRecord inside it);
 * lr_kind is the LedgerKind number; lr_route_type is this function's name of
 * the RouteType: "direct", "pooled" (or "" for unspecified). */
const char *tg_cp_route_type_name(int route_type);

/* backup.c: the `tollgate-cp backup --to DIR` and `tollgate-cp restore
 * --from DIR` subcommands (argv[0] is the subcommand's name). They print
 * what they did on stdout, the reason on stderr, and return the process's
 * exit code: 0 done, 1 refused or failed (a failed backup is removed; a
 * restore that failed while moving files names those it moved), 2 usage. */
int tg_cp_backup_main(int argc, char **argv);
int tg_cp_restore_main(int argc, char **argv);

#endif
