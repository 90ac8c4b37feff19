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

MODEL=gpt-4o-mini
CLAUDE=claude-sonnet-4-5
EMBED=text-embedding-3-small
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# ---- steps, failures, cleanup -------------------------------------------------

STEP="starting"
STEP_LOGS=()     # logs (names in $STATE) worth showing when this step fails
STATE=""
names=()         # name of each child, same index as pids
pids=()
stopped=0
reported=0       # fail() has said what went wrong

# step "what" [log...]: names the step being run (and the logs it writes).
step() { STEP="$1"; shift; STEP_LOGS=("$@"); say "$STEP"; }

tail_logs() {
  local l
  [ -n "$STATE" ] || return 0
  for l in "$@"; do
    [ -s "$STATE/$l" ] || continue
    echo "--- last lines of $STATE/$l:" >&2
    # (bazel's sandbox debug lines, "<time>: src/main/tools/...", say nothing)
    grep -vE '^[0-9.]+: src/main/tools/' "$STATE/$l" | tail -n 20 >&2
  done
}

fail() {
  echo "" >&2
  echo "quickstart: FAILED at step '$STEP': $*" >&2
  tail_logs "${STEP_LOGS[@]}"
  reported=1
  exit 1
}

# Stops the children newest first (agent, control plane, emulator): TERM, up to
# 12 s for a graceful exit, then KILL; waits for every one.
stop_all() {
  [ "$stopped" = 1 ] && return 0
  stopped=1
  local i n=${#pids[@]} t
  for ((i = n - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for ((t = 0; t < 120; t++)); do
    local alive=0
    for ((i = 0; i < n; i++)); do kill -0 "${pids[$i]}" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for ((i = 0; i < n; i++)); do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "quickstart: ${names[$i]} did not stop within 12 s: killing it" >&2
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
  for ((i = 0; i < n; i++)); do wait "${pids[$i]}" 2>/dev/null || true; done
  [ -n "$STATE" ] && echo "quickstart: stopped (state kept in $STATE)"
  return 0
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" != 0 ] && [ "$reported" = 0 ]; then
    # set -e stopped the script on a command that failed without fail()
    echo "quickstart: FAILED at step '$STEP' (exit $rc)" >&2
    tail_logs "${STEP_LOGS[@]}"
  fi
  stop_all
  exit "$rc"
}
on_signal() {
  trap - EXIT INT TERM
  echo ""
  echo "quickstart: stopping"
  stop_all
  exit 0
}
trap on_exit EXIT
trap on_signal INT TERM

# start_server NAME LOG REGEX CMD...: starts CMD in the background (stdout and
# stderr to $STATE/LOG) and waits up to 15 s for a line matching REGEX;
# sets $LINE to that line.
start_server() {
  local name="$1" log="$STATE/$2" re="$3"; shift 3
  "$@" >"$log" 2>&1 &
  pids+=($!)
  names+=("$name")
  local i
  for ((i = 0; i < 150; i++)); do
    LINE=$(grep -m1 -E "$re" "$log" || true)
    [ -n "$LINE" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || fail "$name exited at start"
    sleep 0.1
  done
  fail "$name did not report its address within 15 s"
}

# tc ARGS...: tollctl against the control plane started here; prints what is
# run, keeps its stdout in $OUT (and stderr in tollctl.log).
tc() {
  echo "\$ tollctl $*"
  echo "\$ tollctl $*" >>"$STATE/tollctl.log"
  OUT=$(TOLLGATE_SERVER="127.0.0.1:$CP_GRPC" TOLLGATE_TOKEN="$ADMIN_TOKEN" \
        "$TOLLCTL" "$@" 2>>"$STATE/tollctl.log") || fail "tollctl $1 $2 failed"
}

# nano-units -> decimal currency units (9 decimals)
money() {
  local n=$1 sign=""
  if [ "${n#-}" != "$n" ]; then sign="-"; n=${n#-}; fi
  printf '%s%d.%09d' "$sign" $((n / 1000000000)) $((n % 1000000000))
}

rand_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# ---- install, build ---------------------------------------------------------------

if [ "$install" = 1 ]; then
  STEP="installing dependencies"
  deploy/install-deps.sh || fail "deploy/install-deps.sh failed"
fi
for t in curl jq od; do command -v "$t" >/dev/null || { STEP="checking tools"; fail "'$t' is missing: run deploy/install-deps.sh"; }; done

umask 077
STATE=$(mktemp -d /tmp/tollgate-quickstart.XXXXXX)
echo "state directory: $STATE"

step "building (bazel build)" build.log
bazel build //tools/mockllm //controlplane:tollgate-cp //cli:tollctl //agent:tollgate-agent \
  >"$STATE/build.log" 2>&1 || fail "the build failed"
tail -n 1 "$STATE/build.log"
BIN=$(bazel info bazel-bin 2>/dev/null) || fail "bazel info bazel-bin failed"
MOCK="$BIN/tools/mockllm/mockllm"
CP="$BIN/controlplane/tollgate-cp"
TOLLCTL="$BIN/cli/tollctl"
AGENT="$BIN/agent/tollgate-agent"
for b in "$MOCK" "$CP" "$TOLLCTL" "$AGENT"; do [ -x "$b" ] || fail "$b was not built"; done

# ---- the upstream emulator and the control plane -------------------------------------

step "starting the upstream emulator (mockllm)" mockllm.log
start_server mockllm mockllm.log 'listening on 127\.0\.0\.1:[0-9]+' "$MOCK" --host 127.0.0.1 --port 0
MOCK_PORT=${LINE##*:}
echo "mockllm on http://127.0.0.1:$MOCK_PORT"

step "starting the control plane (tollgate-cp, embedded LMDB store)" cp.log
ADMIN_TOKEN="tg-admin-$(rand_hex 16)"
ENROLL_TOKEN="tg-enroll-$(rand_hex 16)"
printf '# name role token\nquickstart admin %s\n' "$ADMIN_TOKEN" >"$STATE/admin-tokens"
printf '%s\n' "$ENROLL_TOKEN" >"$STATE/enroll-token"
mkdir -p "$STATE/cp"
start_server tollgate-cp cp.log '^tollgate-cp grpc=' "$CP" \
  --listen 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$STATE/cp" --store "lmdb:$STATE/cp/store" \
  --admin-tokens "$STATE/admin-tokens" --enroll-token-file "$STATE/enroll-token" \
  --node-id quickstart --heartbeat-ms 1000
CP_GRPC=$(sed -E 's/.*grpc=[0-9.]+:([0-9]+).*/\1/' <<<"$LINE")
CP_HTTP=$(sed -E 's/.*http=[0-9.]+:([0-9]+).*/\1/' <<<"$LINE")
echo "tollgate-cp gRPC on 127.0.0.1:$CP_GRPC, HTTP on 127.0.0.1:$CP_HTTP (admin token in $STATE/admin-tokens)"

# ---- configuration through the admin API ------------------------------------------

step "an account with prepaid 'credit' and 'wallet' buckets, topped up" tollctl.log cp.log
tc account create --name demo --bucket credit:USD --bucket wallet:USD --json
ACCOUNT=$(jq -r .id <<<"$OUT")
echo "account $ACCOUNT"
tc topup --account "$ACCOUNT" --bucket credit --amount 10 --currency USD --idempotency-key quickstart-credit --reason quickstart
echo "$OUT"
tc topup --account "$ACCOUNT" --bucket wallet --amount 5 --currency USD --idempotency-key quickstart-wallet --reason quickstart
echo "$OUT"

step "two channels to the emulator: one direct, one pooled (fake upstream credentials)" tollctl.log cp.log
printf 'sk-fake-direct-%s' "$(rand_hex 8)" >"$STATE/credential-direct"
printf 'sk-fake-pooled-%s' "$(rand_hex 8)" >"$STATE/credential-pooled"
tc channel create --name mock-direct --provider openai --base-url "http://127.0.0.1:$MOCK_PORT/v1" \
  --route-type direct --credential-file "$STATE/credential-direct" --json
CH_DIRECT=$(jq -r .id <<<"$OUT")
tc channel create --name mock-pooled --provider openai --base-url "http://127.0.0.1:$MOCK_PORT/v1" \
  --route-type pooled --cost-rate-ppm 700000 --credential-file "$STATE/credential-pooled" --json
CH_POOLED=$(jq -r .id <<<"$OUT")
printf 'sk-ant-fake-%s' "$(rand_hex 8)" >"$STATE/credential-anthropic"
tc channel create --name mock-anthropic --provider anthropic --base-url "http://127.0.0.1:$MOCK_PORT/v1" \
  --route-type direct --credential-file "$STATE/credential-anthropic" --json
CH_ANTHROPIC=$(jq -r .id <<<"$OUT")
echo "channels: mock-direct $CH_DIRECT (ROUTE_TYPE_DIRECT), mock-pooled $CH_POOLED (ROUTE_TYPE_POOLED),"
echo "          mock-anthropic $CH_ANTHROPIC (Anthropic Messages API, ROUTE_TYPE_DIRECT)"

step "a route for $MODEL: primary tier mock-direct, backup tier mock-pooled" tollctl.log cp.log
tc route put "$MODEL" --channel "$CH_DIRECT=$MODEL-2024-07-18" --fallback "$CH_POOLED=$MODEL" --encoding o200k_base
echo "$OUT"
step "a route for $CLAUDE on the Anthropic channel, and $EMBED for embeddings" tollctl.log cp.log
tc route put "$CLAUDE" --channel "$CH_ANTHROPIC=$CLAUDE"
echo "$OUT"
tc route put "$EMBED" --channel "$CH_DIRECT=$EMBED" --encoding cl100k_base
echo "$OUT"

step "a price card (USD per million tokens): $MODEL 0.15 in / 0.60 out, $CLAUDE 3 / 15 (cache 0.30 read, 3.75 write), $EMBED 0.02" tollctl.log cp.log
cat >"$STATE/price-card.json" <<EOF
{"id":"standard","currency":"USD","note":"quickstart","entries":[
 {"model":"$MODEL","input_per_mtok_nano":"150000000","output_per_mtok_nano":"600000000",
  "cache_read_per_mtok_nano":"75000000"},
 {"model":"$CLAUDE","input_per_mtok_nano":"3000000000","output_per_mtok_nano":"15000000000",
  "cache_read_per_mtok_nano":"300000000","cache_write_per_mtok_nano":"3750000000"},
 {"model":"$EMBED","input_per_mtok_nano":"20000000"}]}
EOF
tc price publish --file "$STATE/price-card.json"
echo "$OUT"

step "an API key for the account (the secret is shown once)" tollctl.log cp.log
tc key create --account "$ACCOUNT" --name quickstart --expose-cost --json
API_KEY=$(jq -r .secret <<<"$OUT")
if [ -z "$API_KEY" ] || [ "$API_KEY" = null ]; then fail "no secret in the key create answer"; fi
printf '%s\n' "$API_KEY" >"$STATE/api-key"
echo "key $(jq -r '.key.id // .id' <<<"$OUT"), secret kept in $STATE/api-key"

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

if [ "$wait_forever" = 1 ]; then
  say "running; Ctrl-C stops everything"
  # Returns when a child exits (none should) or a signal runs on_signal.
  while :; do
    wait -n 2>/dev/null || true
    for ((i = 0; i < ${#pids[@]}; i++)); do
      if ! kill -0 "${pids[$i]}" 2>/dev/null; then
        STEP="running"
        case "${names[$i]}" in mockllm) STEP_LOGS=(mockllm.log) ;; tollgate-cp) STEP_LOGS=(cp.log) ;; *) STEP_LOGS=(agent.log) ;; esac
        fail "${names[$i]} exited unexpectedly"
      fi
    done
  done
fi
stop_all
