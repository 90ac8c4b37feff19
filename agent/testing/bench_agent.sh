#!/usr/bin/env bash
# agent/testing/bench_agent.sh PORT UPSTREAM [agent flags...]: starts
# tollgate-agent for bench/run.sh (--agent-cmd 'agent/testing/bench_agent.sh
# {port} {upstream}'): a snapshot accepting `Authorization: Bearer sk-bench`
# and routing gpt-4o-mini to UPSTREAM/v1, x-mock-scenario forwarded so the
# bench can script mockllm, full metering and the durable outbox on.
# Binary: $TG_AGENT_BIN, else $TG_BIN/agent/tollgate-agent.
# $TG_BENCH_SYNC_MS: the policy's outbox_sync_interval_ms (else the default).
set -euo pipefail
PORT=$1 UPSTREAM=$2
shift 2
BIN=${TG_AGENT_BIN:-${TG_BIN:?set TG_BIN or TG_AGENT_BIN}/agent/tollgate-agent}
DIR=$(mktemp -d /tmp/tg-bench-agent.XXXXXX)
SYNC=${TG_BENCH_SYNC_MS:+,\"outbox_sync_interval_ms\":\"$TG_BENCH_SYNC_MS\"}
HASH=$(printf '%s' sk-bench | openssl dgst -sha256 -binary | base64)
cat >"$DIR/snapshot.json" <<JSON
{"revision":"1",
 "accounts":[{"id":"acct","name":"bench","billing_mode":"BILLING_MODE_PREPAID","status":"OBJECT_STATUS_ACTIVE"}],
 "balances":[{"account_id":"acct","bucket":"credit","currency":"USD","balance_nano":"1000000000000000"}],
 "keys":[{"id":"k-bench","account_id":"acct","secret_sha256":"$HASH","status":"KEY_STATUS_ACTIVE"}],
 "channels":[{"id":"mock","name":"mock","provider":"PROVIDER_TYPE_OPENAI","base_url":"$UPSTREAM/v1",
   "credential":"sk-upstream","route_type":"ROUTE_TYPE_DIRECT"}],
 "routes":[{"model":"gpt-4o-mini","tiers":[{"targets":[{"channel_id":"mock"}]}]}],
 "price_cards":[{"id":"card","version":"1","effective_at_us":"0","currency":"USD",
   "entries":[{"model":"gpt-4o-mini","input_per_mtok_nano":"150000000","output_per_mtok_nano":"600000000"}]}],
 "policy":{"max_request_bytes":"1048576","outbox_max_records":"100000000"$SYNC}}
JSON
# Not exec: the shell stays to remove the outbox afterwards (a bench run
# spools hundreds of MB); it forwards TERM/INT to the agent.
"$BIN" --port "$PORT" --snapshot "$DIR/snapshot.json" --data-dir "$DIR/data" \
  --outbox-map-mb 4096 --forward-header x-mock-scenario "$@" &
CHILD=$!
stop() { kill "$CHILD" 2>/dev/null || true; wait "$CHILD" 2>/dev/null || true; rm -rf "$DIR"; exit 0; }
trap stop TERM INT
wait "$CHILD" || true
rm -rf "$DIR"
