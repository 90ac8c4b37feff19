#!/usr/bin/env bash
# Cluster: the production topology on this machine in one command. Three
# etcd members, two tollgate-cp replicas on that etcd (one settles, the
# other forwards agents' usage reports to it), two tollgate-agents as two
# "regions" (r1 enrolled with cp1, r2 with cp2; each is given both
# addresses, its own first), and the upstream emulator (tools/mockllm). A CA
# made here with OpenSSL signs every certificate: mTLS on every link
# (agent <-> control plane, tollctl <-> control plane, control plane <->
# control plane, control plane <-> etcd, etcd <-> etcd). The quickstart's
# demo configuration (deploy/lib.sh). Prints every endpoint and the SDK
# lines. Everything binds 127.0.0.1 on free ports; state in one directory.
#
#   deploy/cluster.sh               # build, run, keep running (Ctrl-C stops)
#   deploy/cluster.sh stop          # stops a cluster started by another shell
#   deploy/cluster.sh --no-wait     # a test: load on both agents, kill -9 the
#                                   # settling leader and an etcd member, check
#                                   # every answer settled exactly once, stop;
#                                   # exits non-zero when anything is off
#   deploy/cluster.sh --no-install  # skip deploy/install-deps.sh
# TG_BIN=DIR uses binaries already built there (bazel-bin) instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."

PROG=cluster
POINTER="${TMPDIR:-/tmp}/tollgate-cluster.pid"
wait_forever=1
install=1
for a in "$@"; do
  case "$a" in
    --no-wait) wait_forever=0 ;;
    --no-install) install=0 ;;
    stop)
      pid=$(cat "$POINTER" 2>/dev/null || true)
      if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then echo "cluster: none running"; exit 0; fi
      kill -TERM "$pid"
      for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || { echo "cluster: stopped"; exit 0; }; sleep 0.1; done
      echo "cluster: pid $pid did not stop within 20 s" >&2; exit 1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "cluster: unknown option '$a' (try --help)" >&2; exit 2 ;;
  esac
done

# shellcheck source=deploy/lib.sh
. deploy/lib.sh

# free_port: a port nothing listens on now (the kernel's pick, released).
free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# metric URL NAME: the first value of series NAME (labels ignored) on URL/metrics.
metric() { curl -sf "$1/metrics" 2>/dev/null | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {print $2; exit}'; }

# decimal currency units (9 decimals at most) -> nano-units
nano() {
  local v=${1%% *} i f
  i=${v%%.*}; f=${v#*.}; [ "$f" = "$v" ] && f=""
  f=$(printf '%-9s' "$f" | tr ' ' 0)
  echo $((10#$i * 1000000000 + 10#$f))
}

if [ "$install" = 1 ]; then
  STEP="installing dependencies"
  deploy/install-deps.sh || fail "deploy/install-deps.sh failed"
fi
for t in curl jq od openssl node /usr/bin/etcd; do
  command -v "$t" >/dev/null || { STEP="checking tools"; fail "'$t' is missing: run deploy/install-deps.sh"; }
done

umask 077
STATE=$(mktemp -d /tmp/tollgate-cluster.XXXXXX)
echo "state directory: $STATE"
echo $$ >"$POINTER"

build_binaries

# ---- certificates ------------------------------------------------------------------

step "a CA and certificates (OpenSSL, EC P-256, 2 days): etcd, cp1, cp2, agent-r1, agent-r2, operator" openssl.log
PKI="$STATE/pki"
mkdir -p "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=tollgate-cluster CA" \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt" >>"$STATE/openssl.log" 2>&1 || fail "openssl: the CA"
# cert NAME: NAME.crt / NAME.key signed by the CA, valid for 127.0.0.1 and
# localhost as a server and as a client (one certificate per process).
cert() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$1" \
    -keyout "$PKI/$1.key" -out "$PKI/$1.csr" >>"$STATE/openssl.log" 2>&1 || fail "openssl: $1's request"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$PKI/$1.ext"
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 2 \
    -extfile "$PKI/$1.ext" -out "$PKI/$1.crt" >>"$STATE/openssl.log" 2>&1 || fail "openssl: signing $1"
  rm -f "$PKI/$1.csr" "$PKI/$1.ext"
}
for n in etcd cp1 cp2 agent-r1 agent-r2 operator; do cert "$n"; done
ls "$PKI"

# ---- etcd ---------------------------------------------------------------------------

step "three etcd members (client and peer TLS, client certificates required)" etcd1.log etcd2.log etcd3.log
declare -a ETCD_C ETCD_P
for m in 1 2 3; do ETCD_C[$m]=$(free_port); ETCD_P[$m]=$(free_port); done
CLUSTER="e1=https://127.0.0.1:${ETCD_P[1]},e2=https://127.0.0.1:${ETCD_P[2]},e3=https://127.0.0.1:${ETCD_P[3]}"
ETCD_URLS="https://127.0.0.1:${ETCD_C[1]},https://127.0.0.1:${ETCD_C[2]},https://127.0.0.1:${ETCD_C[3]}"
for m in 1 2 3; do
  "/usr/bin/etcd" --name "e$m" --data-dir "$STATE/etcd$m" \
    --listen-client-urls "https://127.0.0.1:${ETCD_C[$m]}" --advertise-client-urls "https://127.0.0.1:${ETCD_C[$m]}" \
    --listen-peer-urls "https://127.0.0.1:${ETCD_P[$m]}" --initial-advertise-peer-urls "https://127.0.0.1:${ETCD_P[$m]}" \
    --initial-cluster "$CLUSTER" --initial-cluster-token "tollgate-$$" --initial-cluster-state new \
    --cert-file "$PKI/etcd.crt" --key-file "$PKI/etcd.key" --trusted-ca-file "$PKI/ca.crt" --client-cert-auth \
    --peer-cert-file "$PKI/etcd.crt" --peer-key-file "$PKI/etcd.key" --peer-trusted-ca-file "$PKI/ca.crt" \
    --peer-client-cert-auth --auto-compaction-mode periodic --auto-compaction-retention 10m \
    --log-level warn >"$STATE/etcd$m.log" 2>&1 &
  pids+=($!); names+=("etcd$m")
done
ETCD_PIDS=("${pids[@]}")
ecurl() { curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/cp1.crt" --key "$PKI/cp1.key" "$@"; }
ok=0
for ((i = 0; i < 200; i++)); do
  h=0
  for m in 1 2 3; do ecurl "https://127.0.0.1:${ETCD_C[$m]}/health" 2>/dev/null | grep -q '"health":"true"' && h=$((h + 1)); done
  [ "$h" = 3 ] && { ok=1; break; }
  sleep 0.1
done
[ "$ok" = 1 ] || fail "the etcd members did not report healthy within 20 s"
echo "etcd members healthy: $ETCD_URLS"

# ---- the upstream emulator and the control planes -------------------------------------

step "starting the upstream emulator (mockllm)" mockllm.log
start_server mockllm mockllm.log 'listening on 127\.0\.0\.1:[0-9]+' "$MOCK" --host 127.0.0.1 --port 0
MOCK_PORT=${LINE##*:}

ADMIN_TOKEN="tg-admin-$(rand_hex 16)"
printf '# name role token\ncluster admin %s\n' "$ADMIN_TOKEN" >"$STATE/admin-tokens"
printf 'tg-enroll-%s\n' "$(rand_hex 16)" >"$STATE/enroll-token"
declare -A CPG CPH CPPID
# start_cp N: replica cpN on the etcd cluster, mTLS on its gRPC port.
# Every replica here is this build, so the settled log is compressed
# (--settled-compression zstd; docs/OPERATIONS.md says why etcd's default
# is none while older replicas may tail it).
start_cp() {
  mkdir -p "$STATE/cp$1"
  start_server "cp$1" "cp$1.log" '^tollgate-cp grpc=' "$CP" \
    --listen 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$STATE/cp$1" --node-id "cp$1" \
    --store "etcd:$ETCD_URLS" --store-ca "$PKI/ca.crt" --store-cert "$PKI/cp$1.crt" --store-key "$PKI/cp$1.key" \
    --tls-cert "$PKI/cp$1.crt" --tls-key "$PKI/cp$1.key" --client-ca "$PKI/ca.crt" \
    --admin-tokens "$STATE/admin-tokens" --enroll-token-file "$STATE/enroll-token" --heartbeat-ms 1000 \
    --settled-compression zstd
  CPG[$1]=$(sed -E 's/.*grpc=[0-9.]+:([0-9]+).*/\1/' <<<"$LINE")
  CPH[$1]=$(sed -E 's/.*http=[0-9.]+:([0-9]+).*/\1/' <<<"$LINE")
  CPPID[$1]=${pids[-1]}
}
step "control plane cp1 (tollgate-cp on etcd, mTLS), waiting until it settles" cp1.log
start_cp 1
for ((i = 0; i < 150; i++)); do [ "$(metric "http://127.0.0.1:${CPH[1]}" tollgate_cp_is_leader)" = 1 ] && break; sleep 0.1; done
[ "$(metric "http://127.0.0.1:${CPH[1]}" tollgate_cp_is_leader)" = 1 ] || fail "cp1 did not become the settling leader"
step "control plane cp2 (a second replica: follows, forwards usage to the leader)" cp2.log
start_cp 2
# the page read whole before grep: `curl | grep -q` under pipefail fails
# whenever grep's early exit meets a curl still writing (SIGPIPE)
names_cp1() {
  local m
  m=$(curl -sf "http://127.0.0.1:${CPH[2]}/metrics") || return 1
  grep -q 'tollgate_cp_leader{node="cp1"} 1' <<<"$m"
}
for ((i = 0; i < 150; i++)); do names_cp1 && break; sleep 0.1; done
names_cp1 || fail "cp2 does not name cp1 as the leader"
echo "cp1 settles; cp2 names it as the leader"

# ---- configuration through the admin API (mTLS as the operator) -------------------------

TC_SERVER="127.0.0.1:${CPG[1]}"
export TOLLGATE_CA="$PKI/ca.crt" TOLLGATE_CERT="$PKI/operator.crt" TOLLGATE_KEY="$PKI/operator.key"
demo_configure "http://127.0.0.1:$MOCK_PORT"

# ---- the agents: two regions ------------------------------------------------------------

declare -A AGENT_URL AGENT_MURL
# start_agent R FIRST SECOND: region rR, enrolled with cpFIRST, --cp lists both.
start_agent() {
  start_server "agent-r$1" "agent-r$1.log" '^tollgate-agent listening on 127\.0\.0\.1:[0-9]+' "$AGENT" \
    --host 127.0.0.1 --port 0 --metrics-listen 127.0.0.1:0 --data-dir "$STATE/agent-r$1" --region "r$1" \
    --cp "127.0.0.1:${CPG[$2]},127.0.0.1:${CPG[$3]}" --enroll-token-file "$STATE/enroll-token" \
    --cp-ca "$PKI/ca.crt" --cp-cert "$PKI/agent-r$1.crt" --cp-key "$PKI/agent-r$1.key"
  AGENT_URL[$1]="http://127.0.0.1:${LINE##*:}"
  local m
  m=$(grep -m1 -oE 'metrics on 127\.0\.0\.1:[0-9]+' "$STATE/agent-r$1.log")
  AGENT_MURL[$1]="http://127.0.0.1:${m##*:}"
  for ((i = 0; i < 150; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "${AGENT_URL[$1]}/readyz")" = 200 ] && return 0
    sleep 0.1
  done
  fail "agent r$1 did not receive its configuration (/readyz) within 15 s"
}
step "agent r1 (enrolled with cp1; --cp cp1,cp2) and agent r2 (enrolled with cp2; --cp cp2,cp1), mTLS" agent-r1.log agent-r2.log cp1.log cp2.log
start_agent 1 1 2
start_agent 2 2 1
for r in 1 2; do
  echo "agent r$r on ${AGENT_URL[$r]}: $(curl -sf "${AGENT_MURL[$r]}/metrics" | grep -m1 '^tollgate_agent_cp_connected')"
done

# chat R FILE: one chat completion through agent rR; appends
# "STATUS REQUEST_ID COST" to FILE (one curl, nothing else forked: the load
# loops below are bounded by process starts on a small machine).
chat() {
  curl -sS -m 20 -o /dev/null -w '%{http_code} %header{x-request-id} %header{x-tollgate-cost}\n' \
    "${AGENT_URL[$1]}/v1/chat/completions" -H "authorization: Bearer $API_KEY" -H 'content-type: application/json' \
    -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello from region r$1.\"}]}" \
    >>"$2" 2>/dev/null || echo "000 - -" >>"$2"
}
step "a chat completion through each region" agent-r1.log agent-r2.log
: >"$STATE/answers"
for r in 1 2; do
  chat "$r" "$STATE/answers"
  read -r st id cost < <(tail -n 1 "$STATE/answers")
  [ "$st" = 200 ] || fail "region r$r answered HTTP $st"
  echo "r$r: HTTP $st, x-request-id $id, x-tollgate-cost $cost"
done

# ---- how to use it ---------------------------------------------------------------------------

STEP="ready"
say "Tollgate cluster runs (all on 127.0.0.1, mTLS; state in $STATE)"
for m in 1 2 3; do echo "  etcd e$m              https://127.0.0.1:${ETCD_C[$m]} (peer ${ETCD_P[$m]})"; done
echo "  mockllm (upstream)   http://127.0.0.1:$MOCK_PORT"
for n in 1 2; do
  echo "  tollgate-cp cp$n gRPC 127.0.0.1:${CPG[$n]}"
  echo "  tollgate-cp cp$n HTTP http://127.0.0.1:${CPH[$n]}"
done
for r in 1 2; do
  echo "  agent r$r            ${AGENT_URL[$r]}"
  echo "  agent r$r metrics    ${AGENT_MURL[$r]}"
done
echo "  certificates         $PKI (ca.crt signs them all)"
echo "  logs                 $STATE/*.log"
echo ""
echo "Point an OpenAI SDK at region r1 (or r2: ${AGENT_URL[2]}/v1):"
echo "export OPENAI_BASE_URL=${AGENT_URL[1]}/v1 OPENAI_API_KEY=$API_KEY"
echo "Point an Anthropic SDK (or Claude Code) at it:"
echo "export ANTHROPIC_BASE_URL=${AGENT_URL[1]} ANTHROPIC_API_KEY=$API_KEY"
echo ""
echo "Operate it with tollctl ($TOLLCTL), over mTLS:"
echo "export TOLLGATE_SERVER=127.0.0.1:${CPG[1]} TOLLGATE_TOKEN=$ADMIN_TOKEN"
echo "export TOLLGATE_CA=$PKI/ca.crt TOLLGATE_CERT=$PKI/operator.crt TOLLGATE_KEY=$PKI/operator.key"
echo "etcdctl --endpoints=$ETCD_URLS --cacert=$PKI/ca.crt --cert=$PKI/operator.crt --key=$PKI/operator.key endpoint status -w table"

[ "$wait_forever" = 1 ] && run_until_stopped "Ctrl-C (or deploy/cluster.sh stop) stops everything"

# ---- --no-wait: failover under load, exactly once ------------------------------------------

step "load on both regions (3 clients each); then kill -9 of the settling leader and of an etcd member" agent-r1.log agent-r2.log cp1.log cp2.log
declare -A ON
for r in 1 2; do
  ON[$r]=$(curl -sf "${AGENT_MURL[$r]}/metrics" | sed -nE 's/^tollgate_agent_cp_connected\{cp="([^"]*)"\} 1$/\1/p')
  echo "agent r$r is connected to ${ON[$r]:-nothing}"
done
[ -n "${ON[1]}" ] && [ -n "${ON[2]}" ] && [ "${ON[1]}" != "${ON[2]}" ] ||
  fail "the agents are not on both replicas (r1: '${ON[1]}', r2: '${ON[2]}')"
load() { # load R END_EPOCH_S
  while ((EPOCHSECONDS < $2)); do chat "$1" "$STATE/answers-r$1"; done
}
: >"$STATE/answers-r1"; : >"$STATE/answers-r2"
end=$(( $(date +%s) + 9 ))
LOADERS=()
for r in 1 2; do for ((k = 0; k < 3; k++)); do load "$r" "$end" & LOADERS+=($!); done; done
sleep 3
LEADER=""
for n in 1 2; do [ "$(metric "http://127.0.0.1:${CPH[$n]}" tollgate_cp_is_leader)" = 1 ] && LEADER=$n; done
[ -n "$LEADER" ] || fail "no replica says it is the settling leader"
SURV=$((3 - LEADER))
echo "kill -9 cp$LEADER (the settling leader, pid ${CPPID[$LEADER]}) and etcd member e1 (pid ${ETCD_PIDS[0]})"
t0=$(date +%s%N)
kill -KILL "${CPPID[$LEADER]}" "${ETCD_PIDS[0]}"
for ((i = 0; i < 200; i++)); do
  [ "$(metric "http://127.0.0.1:${CPH[$SURV]}" tollgate_cp_is_leader)" = 1 ] && break
  sleep 0.1
done
[ "$(metric "http://127.0.0.1:${CPH[$SURV]}" tollgate_cp_is_leader)" = 1 ] || fail "cp$SURV did not take over within 20 s"
echo "cp$SURV settles after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
wait "${LOADERS[@]}" || true
cat "$STATE/answers-r1" "$STATE/answers-r2" >>"$STATE/answers"
n1=$(grep -c '^200 ' "$STATE/answers-r1" || true); n2=$(grep -c '^200 ' "$STATE/answers-r2" || true)
bad=$(grep -vc '^200 ' "$STATE/answers" || true)
echo "answers under load in 9 s: r1 $n1, r2 $n2 (HTTP 200); others: $bad"
[ "$n1" -gt 0 ] && [ "$n2" -gt 0 ] || fail "a region served nothing under load"

step "every answer's usage settles exactly once (ledger of cp$SURV)" agent-r1.log agent-r2.log cp$SURV.log tollctl.log
TC_SERVER="127.0.0.1:${CPG[$SURV]}"
grep '^200 ' "$STATE/answers" | awk '{print $2}' | sort >"$STATE/answer-ids"
want_n=$(wc -l <"$STATE/answer-ids")
want_sum=0
while read -r st id cost; do [ "$st" = 200 ] && want_sum=$((want_sum + $(nano "$cost"))); done <"$STATE/answers"
# ledger_rows: every usage row of the account as "request_id amount_nano region", in $STATE/rows
ledger_rows() {
  local token="" page
  : >"$STATE/rows"
  for ((p = 0; p < 100; p++)); do
    page=$(TOLLGATE_SERVER="$TC_SERVER" TOLLGATE_TOKEN="$ADMIN_TOKEN" "$TOLLCTL" ledger query --account "$ACCOUNT" \
      --kind usage --page-size 1000 ${token:+--page-token "$token"} --json 2>>"$STATE/tollctl.log") || return 1
    jq -r '.entries[] | "\(.record.request_id) \(.amount_nano) \(.record.region)"' <<<"$page" >>"$STATE/rows"
    token=$(jq -r '.next_page_token // empty' <<<"$page")
    [ -z "$token" ] && return 0
  done
}
for ((i = 0; i < 60; i++)); do
  ledger_rows || true
  [ "$(wc -l <"$STATE/rows")" -ge "$want_n" ] && break
  sleep 0.5
done
rows=$(wc -l <"$STATE/rows")
awk '{print $1}' "$STATE/rows" | sort >"$STATE/row-ids"
dups=$(uniq -d "$STATE/row-ids" | wc -l)
missing=$(comm -23 "$STATE/answer-ids" "$STATE/row-ids" | wc -l)
extra=$(comm -13 "$STATE/answer-ids" <(sort -u "$STATE/row-ids") | wc -l)
got_sum=$(awk '{s += -$2} END {printf "%d", s}' "$STATE/rows")
regions=$(awk '{print $3}' "$STATE/rows" | sort | uniq -c | tr -s ' ' | tr '\n' ',')
echo "answers: $want_n; ledger usage rows: $rows (by region:${regions%,}); duplicated: $dups; missing: $missing; without an answer: $extra"
echo "sum of the answers' x-tollgate-cost: $(money "$want_sum") USD; sum of the ledger rows: $(money "$got_sum") USD"
[ "$rows" = "$want_n" ] && [ "$dups" = 0 ] && [ "$missing" = 0 ] && [ "$extra" = 0 ] ||
  fail "usage did not settle exactly once (see above)"
[ "$want_sum" = "$got_sum" ] || fail "the ledger's sum differs from the answers' costs by $((got_sum - want_sum)) nano-units"
for r in 1 2; do grep -q " r$r\$" "$STATE/rows" || fail "no settled row from region r$r"; done
tc balance "$ACCOUNT"
echo "$OUT"
credit=$(jq -r '.balances[] | select(.bucket == "credit") | .balance_nano' <<<"$(TOLLGATE_SERVER="$TC_SERVER" \
  TOLLGATE_TOKEN="$ADMIN_TOKEN" "$TOLLCTL" balance "$ACCOUNT" --json 2>>"$STATE/tollctl.log")" 2>/dev/null || true)
if [ -n "$credit" ] && [ "$credit" != null ]; then
  [ "$credit" = $((10000000000 - want_sum)) ] || fail "credit balance $credit, want $((10000000000 - want_sum))"
  echo "credit moved by exactly the sum: 10.000000000 - $(money "$want_sum") = $(money "$credit") USD"
fi
say "exactly once: $want_n answers, $rows ledger rows, sums equal to the nano-unit, both regions settled through cp$SURV"
stop_all
