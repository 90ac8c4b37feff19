#!/usr/bin/env bash
# Quickstart: builds Tollgate and runs the whole gateway on this machine: the
# control plane (tollgate-cp on its embedded LMDB store), an edge agent
# (tollgate-agent) enrolled with it, and the upstream emulator (tools/mockllm)
# standing in for the providers. It configures a demo account with tollctl,
# sends a request and a stream through the agent, waits for them to settle and
# prints the two ledger rows, the balances and the environment for an OpenAI
# SDK. Everything binds 127.0.0.1 on free ports; all state lives in one
# directory that is printed (a second run starts clean). Ctrl-C or SIGTERM
# stops everything.
#
#   deploy/quickstart.sh               # install deps, build, run, keep running
#   deploy/quickstart.sh --no-wait     # the same, then stop (used by a test)
#   deploy/quickstart.sh --no-install  # skip deploy/install-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

wait_forever=1
install=1
for a in "$@"; do
  case "$a" in
    --no-wait) wait_forever=0 ;;
    --no-install) install=0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "quickstart: unknown option '$a' (try --help)" >&2; exit 2 ;;
  esac
done

PROG=quickstart
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

# ---- install, build ---------------------------------------------------------------

if [ "$install" = 1 ]; then
  STEP="installing dependencies"
  deploy/install-deps.sh || fail "deploy/install-deps.sh failed"
fi
for t in curl jq od; do command -v "$t" >/dev/null || { STEP="checking tools"; fail "'$t' is missing: run deploy/install-deps.sh"; }; done

umask 077
STATE=$(mktemp -d /tmp/tollgate-quickstart.XXXXXX)
echo "state directory: $STATE"

build_binaries

# ---- the upstream emulator and the control plane -------------------------------------

step "starting the upstream emulator (mockllm)" mockllm.log
start_server mockllm mockllm.log 'listening on 127\.0\.0\.1:[0-9]+' "$MOCK" --host 127.0.0.1 --port 0
MOCK_PORT=${LINE##*:}
echo "mockllm on http://127.0.0.1:$MOCK_PORT"

step "starting the control plane (tollgate-cp, embedded LMDB store)" cp.log
start_cp_lmdb quickstart
echo "tollgate-cp gRPC on 127.0.0.1:$CP_GRPC, HTTP on 127.0.0.1:$CP_HTTP (admin token in $STATE/admin-tokens)"

# ---- configuration through the admin API ------------------------------------------

TC_SERVER="127.0.0.1:$CP_GRPC"
demo_configure "http://127.0.0.1:$MOCK_PORT"

# ---- the edge agent ------------------------------------------------------------------

step "starting the edge agent (tollgate-agent), enrolled with the control plane" agent.log cp.log
start_server tollgate-agent agent.log '^tollgate-agent listening on 127\.0\.0\.1:[0-9]+' "$AGENT" \
  --host 127.0.0.1 --port 0 --data-dir "$STATE/agent" \
  --cp "127.0.0.1:$CP_GRPC" --enroll-token "$ENROLL_TOKEN"
AGENT_PORT=${LINE##*:}
AGENT_URL="http://127.0.0.1:$AGENT_PORT"
ready=0
for ((i = 0; i < 150; i++)); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "$AGENT_URL/readyz")" = 200 ]; then ready=1; break; fi
  kill -0 "${pids[-1]}" 2>/dev/null || fail "tollgate-agent exited"
  sleep 0.1
done
[ "$ready" = 1 ] || fail "the agent did not receive its configuration (/readyz) within 15 s"
grep -hoE '"msg":"(enrolled as [^"]*|configuration revision [^"]*)"' "$STATE/agent.log" | cut -d'"' -f4
echo "agent on $AGENT_URL: ready"

# ---- requests through the agent ------------------------------------------------------

step "a chat completion through the agent" agent.log mockllm.log
code=$(curl -sS -o "$STATE/reply.json" -D "$STATE/reply.headers" -w '%{http_code}' \
  "$AGENT_URL/v1/chat/completions" -H "authorization: Bearer $API_KEY" -H 'content-type: application/json' \
  -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello to Tollgate.\"}]}") \
  || fail "curl failed"
[ "$code" = 200 ] || fail "HTTP $code: $(cat "$STATE/reply.json")"
grep -iE '^x-(request-id|tollgate-[a-z]+):' "$STATE/reply.headers" | tr -d '\r'
cat "$STATE/reply.json"; echo

step "a streamed one" agent.log mockllm.log
code=$(curl -sS -N -o "$STATE/stream.txt" -w '%{http_code}' \
  "$AGENT_URL/v1/chat/completions" -H "authorization: Bearer $API_KEY" -H 'content-type: application/json' \
  -d "{\"model\":\"$MODEL\",\"stream\":true,\"stream_options\":{\"include_usage\":true},\"messages\":[{\"role\":\"user\",\"content\":\"Stream please.\"}]}") \
  || fail "curl failed"
[ "$code" = 200 ] || fail "HTTP $code: $(cat "$STATE/stream.txt")"
n=$(grep -c '^data:' "$STATE/stream.txt" || true)
grep -m1 '^data:' "$STATE/stream.txt"
echo "... ($n events in all; the last ones carry the finish reason, the usage and [DONE]) ..."
grep '^data:' "$STATE/stream.txt" | tail -n 3
printf 'streamed text: '
sed -n 's/^data: //p' "$STATE/stream.txt" | grep -v '^\[DONE\]' | jq -rj '.choices[0].delta.content // empty'
echo

step "an Anthropic Messages request for $CLAUDE, and an embedding" agent.log mockllm.log
code=$(curl -sS -o "$STATE/messages.json" -w '%{http_code}' "$AGENT_URL/v1/messages" \
  -H "x-api-key: $API_KEY" -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
  -d "{\"model\":\"$CLAUDE\",\"max_tokens\":64,\"messages\":[{\"role\":\"user\",\"content\":\"Hello, Claude.\"}]}") \
  || fail "curl failed"
[ "$code" = 200 ] || fail "HTTP $code: $(cat "$STATE/messages.json")"
cat "$STATE/messages.json"; echo
code=$(curl -sS -o "$STATE/embedding.json" -w '%{http_code}' "$AGENT_URL/v1/embeddings" \
  -H "authorization: Bearer $API_KEY" -H 'content-type: application/json' \
  -d "{\"model\":\"$EMBED\",\"input\":\"Tollgate\"}") || fail "curl failed"
[ "$code" = 200 ] || fail "HTTP $code: $(cat "$STATE/embedding.json")"
jq -c '{object, model, usage, dimensions: (.data[0].embedding | length)}' "$STATE/embedding.json"

echo ""
echo "what the emulator received (model rewritten, the channel's credential injected):"
curl -sS "http://127.0.0.1:$MOCK_PORT/_mock/requests" | jq -r \
  '.requests[] | "  \(.method) \(.path) model=\(.body | fromjson? | .model) authorization=\(.headers.authorization)"' \
  || true

# ---- settlement, ledger, balances ------------------------------------------------------

step "waiting for the agent's signed usage report to settle" agent.log cp.log tollctl.log
rows=0
for ((i = 0; i < 100; i++)); do
  OUT=$(TOLLGATE_SERVER="127.0.0.1:$CP_GRPC" TOLLGATE_TOKEN="$ADMIN_TOKEN" \
        "$TOLLCTL" ledger query --account "$ACCOUNT" --kind usage --json 2>>"$STATE/tollctl.log") || OUT='{}'
  rows=$(jq '.entries | length' <<<"$OUT" 2>/dev/null || echo 0)
  [ "$rows" -ge 4 ] && break
  sleep 0.2
done
[ "$rows" -ge 4 ] || fail "only $rows of 4 usage rows settled within 20 s"
echo "4 usage rows settled"

step "the ledger: one row per request" tollctl.log
echo "\$ tollctl ledger query --account $ACCOUNT --kind usage"
row() { printf '%-22s %-23s %-14s %-18s %-7s %6s %7s %14s\n' "$@"; }
row MODEL UPSTREAM_MODEL CHANNEL ROUTE_TYPE BUCKET IN_TOK OUT_TOK COST_USD
declare -A chname=(["$CH_DIRECT"]=mock-direct ["$CH_POOLED"]=mock-pooled ["$CH_ANTHROPIC"]=mock-anthropic)
while IFS=$'\t' read -r model up ch rt bucket in out amount; do
  row "$model" "$up" "${chname[$ch]:-$ch}" "$rt" "$bucket" "$in" "$out" "$(money "${amount#-}")"
done < <(jq -r '.entries[] | [.record.requested_model, .record.upstream_model, .record.channel_id,
  .record.route_type, .bucket, .record.usage.input_tokens, .record.usage.output_tokens, .amount_nano] | @tsv' <<<"$OUT")

step "the balances" tollctl.log
tc balance "$ACCOUNT"
echo "$OUT"

# ---- how to use it ---------------------------------------------------------------------

STEP="ready"
say "Tollgate runs (all on 127.0.0.1; state in $STATE)"
echo "  mockllm (upstream)  http://127.0.0.1:$MOCK_PORT"
echo "  tollgate-cp gRPC    127.0.0.1:$CP_GRPC"
echo "  tollgate-cp HTTP    http://127.0.0.1:$CP_HTTP"
echo "  tollgate-agent      $AGENT_URL"
echo "  logs                $STATE/*.log"
echo ""
echo "Point an OpenAI SDK at the agent:"
echo "export OPENAI_BASE_URL=$AGENT_URL/v1 OPENAI_API_KEY=$API_KEY"
echo "Point an Anthropic SDK (or Claude Code) at it:"
echo "export ANTHROPIC_BASE_URL=$AGENT_URL ANTHROPIC_API_KEY=$API_KEY"
echo "(either SDK can call either model: $MODEL, $CLAUDE, and $EMBED for embeddings)"
echo ""
echo "Operate it with tollctl ($TOLLCTL):"
echo "export TOLLGATE_SERVER=127.0.0.1:$CP_GRPC TOLLGATE_TOKEN=$ADMIN_TOKEN"

[ "$wait_forever" = 1 ] && run_until_stopped "Ctrl-C stops everything"
stop_all
