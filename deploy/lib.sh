# deploy/lib.sh: what deploy/quickstart.sh and deploy/cluster.sh share:
# named steps that say where a failure happened and show the logs worth
# reading, children started and stopped in order, tollctl calls that echo
# themselves, and the demo configuration (an account, channels to the
# emulator, routes, a price card, an API key). Sourced, never run; the
# sourcing script sets PROG (its name in messages) first.

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
  echo "$PROG: FAILED at step '$STEP': $*" >&2
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
      echo "$PROG: ${names[$i]} did not stop within 12 s: killing it" >&2
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
  for ((i = 0; i < n; i++)); do wait "${pids[$i]}" 2>/dev/null || true; done
  [ -n "${POINTER:-}" ] && rm -f "$POINTER"  # cluster.sh: the pid file for "cluster.sh stop"
  [ -n "$STATE" ] && echo "$PROG: stopped (state kept in $STATE)"
  return 0
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" != 0 ] && [ "$reported" = 0 ]; then
    # set -e stopped the script on a command that failed without fail()
    echo "$PROG: FAILED at step '$STEP' (exit $rc)" >&2
    tail_logs "${STEP_LOGS[@]}"
  fi
  stop_all
  exit "$rc"
}
on_signal() {
  trap - EXIT INT TERM
  echo ""
  echo "$PROG: stopping"
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

# start_cp_lmdb NODE_ID: tokens (ADMIN_TOKEN, ENROLL_TOKEN, their files in
# $STATE) and a control plane on its embedded LMDB store in $STATE/cp, free
# ports on 127.0.0.1 (log cp.log); sets CP_GRPC and CP_HTTP.
start_cp_lmdb() {
  ADMIN_TOKEN="tg-admin-$(rand_hex 16)"
  ENROLL_TOKEN="tg-enroll-$(rand_hex 16)"
  printf '# name role token\n%s admin %s\n' "$1" "$ADMIN_TOKEN" >"$STATE/admin-tokens"
  printf '%s\n' "$ENROLL_TOKEN" >"$STATE/enroll-token"
  mkdir -p "$STATE/cp"
  start_server tollgate-cp cp.log '^tollgate-cp grpc=' "$CP" \
    --listen 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$STATE/cp" --store "lmdb:$STATE/cp/store" \
    --admin-tokens "$STATE/admin-tokens" --enroll-token-file "$STATE/enroll-token" \
    --node-id "$1" --heartbeat-ms 1000
  CP_GRPC=$(sed -E 's/.*grpc=[0-9.]+:([0-9]+).*/\1/' <<<"$LINE")
  CP_HTTP=$(sed -E 's/.*http=[0-9.]+:([0-9]+).*/\1/' <<<"$LINE")
}

# tc ARGS...: tollctl against the control plane at $TC_SERVER (TLS files,
# if any, from TOLLGATE_CA / TOLLGATE_CERT / TOLLGATE_KEY); prints what is
# run, keeps its stdout in $OUT (and stderr in tollctl.log).
tc() {
  echo "\$ tollctl $*"
  echo "\$ tollctl $*" >>"$STATE/tollctl.log"
  OUT=$(TOLLGATE_SERVER="$TC_SERVER" TOLLGATE_TOKEN="$ADMIN_TOKEN" \
        "$TOLLCTL" "$@" 2>>"$STATE/tollctl.log") || fail "tollctl $1 $2 failed"
}

# nano-units -> decimal currency units (9 decimals)
money() {
  local n=$1 sign=""
  if [ "${n#-}" != "$n" ]; then sign="-"; n=${n#-}; fi
  printf '%s%d.%09d' "$sign" $((n / 1000000000)) $((n % 1000000000))
}

rand_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# run_until_stopped MESSAGE: says MESSAGE and waits; returns never: a child
# that exits (none should) fails the run with its log shown, and a signal
# runs on_signal.
run_until_stopped() {
  say "running; $1"
  local i
  while :; do
    wait -n 2>/dev/null || true
    for ((i = 0; i < ${#pids[@]}; i++)); do
      if ! kill -0 "${pids[$i]}" 2>/dev/null; then
        STEP="running"
        case "${names[$i]}" in tollgate-cp) STEP_LOGS=(cp.log) ;; tollgate-agent) STEP_LOGS=(agent.log) ;;
          *) STEP_LOGS=("${names[$i]}.log") ;; esac
        fail "${names[$i]} exited unexpectedly"
      fi
    done
  done
}

# build_binaries: bazel builds the four programs (or, with TG_BIN set, takes
# them from that bazel-bin); sets MOCK, CP, TOLLCTL and AGENT.
build_binaries() {
  if [ -n "${TG_BIN:-}" ]; then
    BIN=$TG_BIN
  else
    step "building (bazel build)" build.log
    bazel build //tools/mockllm //controlplane:tollgate-cp //cli:tollctl //agent:tollgate-agent \
      >"$STATE/build.log" 2>&1 || fail "the build failed"
    tail -n 1 "$STATE/build.log"
    BIN=$(bazel info bazel-bin 2>/dev/null) || fail "bazel info bazel-bin failed"
  fi
  MOCK="$BIN/tools/mockllm/mockllm"
  CP="$BIN/controlplane/tollgate-cp"
  TOLLCTL="$BIN/cli/tollctl"
  AGENT="$BIN/agent/tollgate-agent"
  local b
  for b in "$MOCK" "$CP" "$TOLLCTL" "$AGENT"; do [ -x "$b" ] || fail "$b was not built"; done
}

# ---- the demo configuration ---------------------------------------------------------

# demo_configure MOCK_URL: the demo configuration through the admin API (tc):
# an account with prepaid 'credit' and 'wallet' buckets, three channels to
# the emulator at MOCK_URL (direct, pooled, Anthropic), routes for $MODEL,
# $CLAUDE and $EMBED, a price card and an API key. Sets ACCOUNT, CH_DIRECT,
# CH_POOLED, CH_ANTHROPIC and API_KEY (also kept in $STATE/api-key).
demo_configure() {
  local MOCK_BASE="$1"

  step "an account with prepaid 'credit' and 'wallet' buckets, topped up" tollctl.log cp.log
  tc account create --name demo --bucket credit:USD --bucket wallet:USD --json
  ACCOUNT=$(jq -r .id <<<"$OUT")
  echo "account $ACCOUNT"
  tc topup --account "$ACCOUNT" --bucket credit --amount 10 --currency USD --idempotency-key "$PROG-credit" --reason "$PROG"
  echo "$OUT"
  tc topup --account "$ACCOUNT" --bucket wallet --amount 5 --currency USD --idempotency-key "$PROG-wallet" --reason "$PROG"
  echo "$OUT"

  step "two channels to the emulator: one direct, one pooled (fake upstream credentials)" tollctl.log cp.log
  printf 'sk-fake-direct-%s' "$(rand_hex 8)" >"$STATE/credential-direct"
  printf 'sk-fake-pooled-%s' "$(rand_hex 8)" >"$STATE/credential-pooled"
  tc channel create --name mock-direct --provider openai --base-url "$MOCK_BASE/v1" \
    --route-type direct --credential-file "$STATE/credential-direct" --json
  CH_DIRECT=$(jq -r .id <<<"$OUT")
  tc channel create --name mock-pooled --provider openai --base-url "$MOCK_BASE/v1" \
    --route-type pooled --cost-rate-ppm 700000 --credential-file "$STATE/credential-pooled" --json
  CH_POOLED=$(jq -r .id <<<"$OUT")
  printf 'sk-ant-fake-%s' "$(rand_hex 8)" >"$STATE/credential-anthropic"
  tc channel create --name mock-anthropic --provider anthropic --base-url "$MOCK_BASE/v1" \
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
{"id":"standard","currency":"USD","note":"$PROG","entries":[
 {"model":"$MODEL","input_per_mtok_nano":"150000000","output_per_mtok_nano":"600000000",
  "cache_read_per_mtok_nano":"75000000"},
 {"model":"$CLAUDE","input_per_mtok_nano":"3000000000","output_per_mtok_nano":"15000000000",
  "cache_read_per_mtok_nano":"300000000","cache_write_per_mtok_nano":"3750000000"},
 {"model":"$EMBED","input_per_mtok_nano":"20000000"}]}
EOF
  tc price publish --file "$STATE/price-card.json"
  echo "$OUT"

  step "an API key for the account (the secret is shown once)" tollctl.log cp.log
  tc key create --account "$ACCOUNT" --name "$PROG" --expose-cost --json
  API_KEY=$(jq -r .secret <<<"$OUT")
  if [ -z "$API_KEY" ] || [ "$API_KEY" = null ]; then fail "no secret in the key create answer"; fi
  printf '%s\n' "$API_KEY" >"$STATE/api-key"
  echo "key $(jq -r '.key.id // .id' <<<"$OUT"), secret kept in $STATE/api-key"
}
