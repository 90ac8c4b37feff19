#!/usr/bin/env bash
# bench/run.sh: the gateway benchmark. Starts mockllm (the upstream, the
# limit), an nginx proxy_pass in front of it (the baseline) and, when given,
# the Tollgate agent in front of it; drives each with the same load and
# prints a markdown table of medians over several runs, with ratios:
#
#   small     ~1 KB chat completion, 32 connections: requests/s, server CPU us/request
#   small_c1  the same, 1 connection: p50/p99 latency and the latency a proxy adds
#   big       100 KB request bodies, 8 connections: requests/s, CPU us/request
#   stream    streaming (32 tokens, 1 ms apart), 4 at a time: TTFT and total time
#   idle      M concurrent streams waiting for their first token: RSS per stream
#             (measured in the first run only)
#   tls       small, small_c1 and stream again with a TLS upstream (nginx's ssl
#             listener in front of mockllm, a test CA made here): nginx
#             proxy_pass https and the agent (--upstream-ca), connections reused
#   peers     Node gateways from npm, when installed under bench/peers
#             (npm ci --prefix bench/peers): the same rows as the agent
#
# Usage: bench/run.sh [--quick] [--runs N] [--duration SECS] [--streams M]
#                     [--idle-only] [--idle-procs P] [--no-tls] [--no-peers]
#                     [--agent-cmd 'CMD with {port} and {upstream}'] [--agent-url URL]
#   --idle-only measures the idle row alone (one run). Open files: the soft
#   limit is raised to the hard one (ulimit -Hn); a proxy holds two per open
#   stream, so when M streams do not fit in one process the idle row spreads
#   each proxy over P processes behind one port (SO_REUSEPORT: nginx workers,
#   agent instances) and sums their RSS; --idle-procs P forces P (1: try one
#   process whatever the limit, to see what breaks).
#   --agent-cmd starts the agent itself ({port}: where it must listen on
#   127.0.0.1, {upstream}: mockllm's base URL), so its CPU and memory are
#   measured; --agent-url uses an agent already running (throughput and
#   latency only). Also TG_AGENT_CMD / TG_AGENT_URL. Without either the agent
#   column says "not yet built". The TLS rows start a second agent with the
#   same command, {upstream} an https URL and `--upstream-ca PEM` appended
#   (agent/testing/bench_agent.sh passes extra flags to the agent).
# Binaries: mockllm from $MOCKLLM, else $TG_BIN/tools/mockllm/mockllm, else
# `bazel info bazel-bin`. Needs wrk, nginx, node, ss (openssl for the TLS
# rows). Binds 127.0.0.1 (the npm peers take no address: all interfaces);
# every step has a time limit; everything started is stopped on exit.
# A full run takes about 3 minutes; --quick under 1.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE="$ROOT/bench"

RUNS=3 DUR=5 STREAMS=4000 NSTREAM=400 QUICK=0 IDLE_ONLY=0 IDLE_PROCS= TLS=1 PEERS=1
AGENT_CMD=${TG_AGENT_CMD:-} AGENT_URL=${TG_AGENT_URL:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 RUNS=1 DUR=2 STREAMS=500 NSTREAM=100 ;;
    --runs) RUNS=$2; shift ;;
    --duration) DUR=$2; shift ;;
    --streams) STREAMS=$2; shift ;;
    --idle-only) IDLE_ONLY=1 RUNS=1 ;;
    --idle-procs) IDLE_PROCS=$2; shift ;;
    --no-tls) TLS=0 ;;
    --no-peers) PEERS=0 ;;
    --agent-cmd) AGENT_CMD=$2; shift ;;
    --agent-url) AGENT_URL=$2; shift ;;
    -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

for t in wrk nginx node; do
  command -v "$t" >/dev/null || { echo "bench/run.sh: $t not found" >&2; exit 1; }
done
if [ -z "${MOCKLLM:-}" ]; then
  BIN=${TG_BIN:-$(cd "$ROOT" && bazel info bazel-bin 2>/dev/null)}
  MOCKLLM="$BIN/tools/mockllm/mockllm"
fi
[ -x "$MOCKLLM" ] || { echo "bench/run.sh: $MOCKLLM not built (bazel build //tools/mockllm)" >&2; exit 1; }

# ---- open files --------------------------------------------------------------
# An open stream holds one descriptor in the Node client and in mockllm, two
# in a proxy (client + upstream). Everything started here inherits the hard
# limit as its soft limit; FD_RESERVE covers listeners, epoll, logs, LMDB.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[ "$NOFILE" != unlimited ] || NOFILE=1048576
FD_RESERVE=64
PER_PROC=$(((NOFILE - FD_RESERVE) / 2)) # streams one proxy process may hold
if [ $((STREAMS + FD_RESERVE)) -gt "$NOFILE" ]; then
  echo "bench/run.sh: --streams $STREAMS: the client and mockllm hold one file each, the open-files limit is $NOFILE" >&2
  exit 2
fi
if [ -z "$IDLE_PROCS" ]; then
  # Spread only when needed, with 10% headroom: SO_REUSEPORT spreads
  # connections by hash, not evenly.
  IDLE_PROCS=1
  [ "$STREAMS" -le "$PER_PROC" ] || IDLE_PROCS=$(((STREAMS * 10 + PER_PROC * 9 - 1) / (PER_PROC * 9)))
fi

TMP=$(mktemp -d /tmp/tg-bench.XXXXXX)
chmod 755 "$TMP"
STARTED=()
# stop_pids PID...: TERM, then KILL whatever of them and their children is
# left after 30 s (a proxy may take seconds to let go of thousands of
# streams; a wrapper shell killed first would leave its child behind).
stop_pids() {
  local p all=("$@")
  for p in "$@"; do
    all+=($(pgrep -P "$p" || true))
    kill "$p" 2>/dev/null || true
  done
  for p in "${all[@]}"; do
    for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
cleanup() {
  stop_pids "${STARTED[@]}"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CLK_TCK=$(getconf CLK_TCK)
RESULTS="$TMP/results.tsv"
: >"$RESULTS"

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# Waits (bounded) until something accepts on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench/run.sh: nothing listening on port $1 after 10 s" >&2
  return 1
}

# CPU ticks used so far by the given pids: "user+system user".
cpu_ticks() {
  local sum=0 usr=0 p t
  for p in "$@"; do
    # fields after the ")" that closes the command name: utime is the 12th
    t=$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13, $12}')
    sum=$((sum + ${t% *})) usr=$((usr + ${t#* }))
  done
  echo "$sum $usr"
}

# record SCENARIO TARGET METRIC VALUE: one line of the raw results, with the
# run it belongs to (report.mjs pairs the targets' values run by run).
RUN=1
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$RUN" >>"$RESULTS"; }

# ---- start the upstream and the proxies --------------------------------------
"$MOCKLLM" --port 0 --record-max 0 >"$TMP/mock.out" 2>&1 &
MOCK_PID=$!
STARTED+=("$MOCK_PID")
MOCK_PORT=$("$HERE/mock_port.sh" "$TMP/mock.out") ||
  { echo "bench/run.sh: mockllm did not start: $(cat "$TMP/mock.out")" >&2; exit 1; }
UPSTREAM="http://127.0.0.1:$MOCK_PORT"

# start_nginx NAME PORT WORKERS [reuseport] [MODE]: nginx in $TMP/NAME; sets
# NGINX_PID. MODE plain (default): proxy_pass to mockllm; tlsterm: the TLS
# upstream (an ssl listener in front of mockllm); tlsproxy: proxy_pass https
# to that terminator, its certificate verified, connections and sessions
# reused.
start_nginx() {
  local dir="$TMP/$1" port=$2 workers=$3 reuse=${4:-} mode=${5:-plain}
  local ssl="" up="server 127.0.0.1:$MOCK_PORT;" pass="http://mockllm" pssl=""
  mkdir -p "$dir"
  if [ "$mode" = tlsterm ]; then
    ssl="ssl"
    pssl="ssl_certificate $TMP/tls/srv.pem; ssl_certificate_key $TMP/tls/srv.key;"
  elif [ "$mode" = tlsproxy ]; then
    up="server 127.0.0.1:$TLS_PORT;"
    pass="https://mockllm"
    pssl="proxy_ssl_verify on; proxy_ssl_trusted_certificate $TMP/tls/ca.pem; proxy_ssl_name localhost; proxy_ssl_session_reuse on;"
  fi
  cat >"$dir/nginx.conf" <<EOF
# Generated by bench/run.sh: $workers worker(s), keep-alive upstream, no
# buffering of streams, nothing logged per request, every open file the
# hard limit allows (a stream holds two: client and upstream). nginx starts
# closing connections that have not sent a request yet once fewer than
# 1/16 of worker_connections are free ("worker_connections are not enough,
# reusing connections"): worker_connections is set 1/16 above the open-files
# limit so that the files, not that rule, are the limit (it warns at start).
worker_processes $workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $((NOFILE + NOFILE / 15 + 64)); }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  client_max_body_size 64m;
  client_body_buffer_size 1m;
  keepalive_requests 10000000;
  upstream mockllm { $up keepalive 512; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$port backlog=4096 $reuse $ssl;
    $pssl
    location / {
      proxy_pass $pass;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 700s;
    }
  }
}
EOF
  nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout" 2>&1 &
  NGINX_PID=$!
  STARTED+=("$NGINX_PID")
  wait_port "$port" || { cat "$dir/stdout" "$dir/error.log" >&2; exit 1; }
}

NGINX_PORT=$(free_port)
start_nginx nginx "$NGINX_PORT" 1
NGINX_WORKERS=$( (pgrep -P "$NGINX_PID" || true) | tr '\n' ' ')
[ -n "$NGINX_WORKERS" ] || { echo "bench/run.sh: no nginx worker" >&2; exit 1; }

TARGETS=(direct nginx)
declare -A URL PIDS
URL[direct]="http://127.0.0.1:$MOCK_PORT"; PIDS[direct]="$MOCK_PID"
URL[nginx]="http://127.0.0.1:$NGINX_PORT"; PIDS[nginx]="$NGINX_WORKERS"
AGENT_NOTE="not yet built"
if [ -n "$AGENT_CMD" ]; then
  AGENT_PORT=$(free_port)
  cmd=${AGENT_CMD//\{port\}/$AGENT_PORT}
  cmd=${cmd//\{upstream\}/$UPSTREAM}
  AGENT_RUN=$cmd
  bash -c "exec $cmd" >"$TMP/agent.out" 2>&1 &
  AGENT_PID=$!
  STARTED+=("$AGENT_PID")
  wait_port "$AGENT_PORT" || { cat "$TMP/agent.out" >&2; exit 1; }
  TARGETS+=(agent)
  URL[agent]="http://127.0.0.1:$AGENT_PORT"; PIDS[agent]="$AGENT_PID $( (pgrep -P "$AGENT_PID" || true) | tr '\n' ' ')"
  AGENT_NOTE="started: $AGENT_CMD"
elif [ -n "$AGENT_URL" ]; then
  TARGETS+=(agent)
  URL[agent]="$AGENT_URL"; PIDS[agent]=""
  AGENT_NOTE="external: $AGENT_URL (no CPU or memory figures)"
fi

# ---- peers: Node gateways from npm, when installed under bench/peers -------
# Each is pointed at mockllm the way its own documentation says; HDRS holds
# the request headers a peer needs besides the bench's own (one a line).
declare -A HDRS
PEER_TARGETS=() PEER_NOTES=()
PEER_DIR=${TG_PEERS_DIR:-$HERE/peers}/node_modules
# start_peer NAME URL-SUFFIX CMD...: a peer on a free port ({port} in CMD).
start_peer() {
  local name=$1 suffix=$2 port pid
  shift 2
  port=$(free_port)
  local args=("${@//\{port\}/$port}")
  (cd "$TMP" && exec "${args[@]}") >"$TMP/$name.out" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  if ! wait_port "$port"; then
    echo "bench/run.sh: peer $name did not start: $(tail -5 "$TMP/$name.out")" >&2
    return 0
  fi
  TARGETS+=("$name")
  PEER_TARGETS+=("$name")
  URL[$name]="http://127.0.0.1:$port$suffix"
  PIDS[$name]=$pid
}
if [ "$PEERS" = 1 ]; then
  pk="$PEER_DIR/@portkey-ai/gateway"
  if [ -f "$pk/build/start-server.js" ]; then
    # the OpenAI provider at a custom host, x-mock-scenario passed on
    HDRS[portkey]="x-portkey-provider: openai
x-portkey-custom-host: $UPSTREAM/v1
x-portkey-forward-headers: x-mock-scenario"
    NODE_ENV=production start_peer portkey "" node "$pk/build/start-server.js" --port={port} --headless
    PEER_NOTES+=("portkey = @portkey-ai/gateway $(node -p "require('$pk/package.json').version")")
  fi
  np="$PEER_DIR/@nullplatform/llm-gateway"
  if [ -f "$np/dist/cli.js" ]; then
    # its OpenAI adapter serves /openai/v1/chat/completions; one model, the
    # client's model name passed through (bypassModel)
    printf '%s\n' "server: {host: 127.0.0.1, port: PORT}" "logging: {level: error}" "monitoring: {enabled: false}" \
      "models:" "  - name: gpt-4o-mini" "    isDefault: true" \
      "    provider: {type: openai, config: {apiKey: sk-bench, baseUrl: \"$UPSTREAM/v1\", bypassModel: true}}" \
      >"$TMP/llmgw.tmpl"
    start_peer llmgw /openai sh -c 'sed "s/PORT/{port}/" llmgw.tmpl >llmgw.yaml && exec node "$0" start -c llmgw.yaml' \
      "$np/dist/cli.js"
    PEER_NOTES+=("llmgw = @nullplatform/llm-gateway $(node -p "require('$np/package.json').version")")
  fi
fi

# ---- TLS upstream: a test CA, nginx's ssl listener in front of mockllm -----
TLS_TARGETS=()
if [ "$TLS" = 1 ] && command -v openssl >/dev/null; then
  mkdir -p "$TMP/tls"
  (
    cd "$TMP/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
      -keyout ca.key -out ca.pem
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
      -keyout srv.key -out srv.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >ext.cnf
    openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out srv.pem
  ) >"$TMP/tls.out" 2>&1 || { echo "bench/run.sh: openssl: $(tail -3 "$TMP/tls.out")" >&2; exit 1; }
  TLS_PORT=$(free_port)
  start_nginx tlsterm "$TLS_PORT" 1 "" tlsterm
  p=$(free_port)
  start_nginx nginx-tls "$p" 1 "" tlsproxy
  TARGETS+=(nginx_tls)
  TLS_TARGETS+=(nginx_tls)
  URL[nginx_tls]="http://127.0.0.1:$p"; PIDS[nginx_tls]=$( (pgrep -P "$NGINX_PID" || true) | tr '\n' ' ')
  if [ -n "$AGENT_CMD" ]; then
    p=$(free_port)
    cmd=${AGENT_CMD//\{port\}/$p}
    cmd="${cmd//\{upstream\}/https://127.0.0.1:$TLS_PORT} --upstream-ca $TMP/tls/ca.pem"
    bash -c "exec $cmd" >"$TMP/agent_tls.out" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    wait_port "$p" || { cat "$TMP/agent_tls.out" >&2; exit 1; }
    TARGETS+=(agent_tls)
    TLS_TARGETS+=(agent_tls)
    URL[agent_tls]="http://127.0.0.1:$p"; PIDS[agent_tls]="$pid $( (pgrep -P "$pid" || true) | tr '\n' ' ')"
  fi
fi
is_tls() { case " ${TLS_TARGETS[*]} " in *" $1 "*) return 0 ;; esac; return 1; }

# ---- one measurement of each kind ------------------------------------------
# wrk_run SCENARIO TARGET CONNS SCRIPT
wrk_run() {
  local scn=$1 tgt=$2 conns=$3 script=$4 out before after line req h hargs=()
  while IFS= read -r h; do [ -z "$h" ] || hargs+=(-H "$h"); done <<<"${HDRS[$tgt]:-}"
  # shellcheck disable=SC2086
  before=$([ -n "${PIDS[$tgt]}" ] && cpu_ticks ${PIDS[$tgt]} || echo 0 0)
  out=$(timeout $((DUR + 30)) wrk -t1 -c"$conns" -d"${DUR}s" "${hargs[@]}" -s "$HERE/wrk/$script" "${URL[$tgt]}" 2>&1) || {
    echo "wrk failed on $tgt: $out" >&2; record "$scn" "$tgt" error 1; return 0; }
  # shellcheck disable=SC2086
  after=$([ -n "${PIDS[$tgt]}" ] && cpu_ticks ${PIDS[$tgt]} || echo 0 0)
  line=$(grep '^BENCH ' <<<"$out" || true)
  if [ -z "$line" ] || ! grep -q 'non2xx=0 sockerr=0' <<<"$line"; then
    echo "bench/run.sh: $scn on $tgt had errors: $out" >&2
    [ ! -f "$TMP/$tgt.out" ] || { echo "bench/run.sh: $tgt's log ends:" >&2; tail -5 "$TMP/$tgt.out" >&2; }
    record "$scn" "$tgt" error 1
    return 0
  fi
  req=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")
  record "$scn" "$tgt" rps "$(sed 's/.*rps=\([0-9.]*\).*/\1/' <<<"$line")"
  record "$scn" "$tgt" p50_us "$(sed 's/.*p50_us=\([0-9]*\).*/\1/' <<<"$line")"
  record "$scn" "$tgt" p99_us "$(sed 's/.*p99_us=\([0-9]*\).*/\1/' <<<"$line")"
  if [ -n "${PIDS[$tgt]}" ] && [ "$req" -gt 0 ]; then
    record "$scn" "$tgt" cpu_us_per_req "$(awk -v t=$((${after% *} - ${before% *})) -v hz="$CLK_TCK" -v n="$req" 'BEGIN{printf "%.1f", t*1e6/hz/n}')"
    record "$scn" "$tgt" user_us_per_req "$(awk -v t=$((${after#* } - ${before#* })) -v hz="$CLK_TCK" -v n="$req" 'BEGIN{printf "%.1f", t*1e6/hz/n}')"
  fi
}

# A peer's extra headers as the JSON object stream_client.mjs reads.
hdrs_json() {
  node -e 'const o={};for(const l of process.argv[1].split("\n")){const i=l.indexOf(":");if(i>0)o[l.slice(0,i).trim()]=l.slice(i+1).trim()}console.log(JSON.stringify(o))' "${HDRS[$1]:-}"
}

stream_run() {
  local tgt=$1 out kv
  out=$(BENCH_HEADERS=$(hdrs_json "$tgt") timeout 120 node "$HERE/stream_client.mjs" latency "${URL[$tgt]}" "$NSTREAM" 4 'tokens=32;itl=1' 2>&1) || {
    echo "stream client failed on $tgt: $out" >&2; record stream "$tgt" error 1; return 0; }
  for kv in $(grep '^BENCH ' <<<"$out" | cut -d' ' -f2-); do
    case "${kv%%=*}" in ttft_p50_us|ttft_p99_us|total_p50_us|total_p99_us) record stream "$tgt" "${kv%%=*}" "${kv#*=}" ;; esac
  done
}

# Open files of the given pids, summed.
fd_count() {
  local n=0 p
  for p in "$@"; do n=$((n + $( { ls "/proc/$p/fd" 2>/dev/null || true; } | wc -l))); done
  echo "$n"
}

# idle_measure TARGET URL PIDS PROCS: one idle-stream measurement, then
# (bounded, 120 s) the time the target takes to let go of the streams after
# the client closed them all: the next rows must not share the CPU with it.
idle_measure() {
  local tgt=$1 url=$2 pids=$3 procs=$4 out fds0 t0 rel=
  # shellcheck disable=SC2086
  fds0=$(fd_count $pids)
  out=$(BENCH_HEADERS=$(hdrs_json "$tgt") timeout $((60 + STREAMS / 100)) node "$HERE/stream_client.mjs" idle "$url" "$STREAMS" "$(tr -s ' ' ',' <<<"$pids")" 2>&1) || {
    echo "idle client failed on $tgt ($procs process(es)): $out" >&2; record idle "$tgt" error 1; return 0; }
  echo "bench/run.sh: idle $tgt ($procs process(es)): $out" >&2
  record idle "$tgt" bytes_per_stream "$(sed -n 's/^BENCH .*bytes_per_stream=\([-0-9]*\).*/\1/p' <<<"$out")"
  record idle "$tgt" open_s "$(sed -n 's/^BENCH .*open_s=\([0-9.]*\).*/\1/p' <<<"$out")"
  record idle "$tgt" procs "$procs"
  t0=$(date +%s%N)
  for _ in $(seq 600); do
    # shellcheck disable=SC2086
    [ "$(fd_count $pids)" -gt $((fds0 + 16)) ] || { rel=$((($(date +%s%N) - t0) / 1000000)); break; }
    sleep 0.2
  done
  if [ -n "$rel" ]; then
    echo "bench/run.sh: idle $tgt: streams let go in $((rel / 1000)).$((rel % 1000 / 100)) s" >&2
    record idle "$tgt" release_s "$((rel / 1000)).$((rel % 1000 / 100))"
  else
    echo "bench/run.sh: idle $tgt: still holding the streams' files 120 s after the client closed them" >&2
    record idle "$tgt" release_s 120
  fi
}

# The idle row. mockllm holds one file per stream: always one process. A
# proxy spread over IDLE_PROCS processes: a second nginx with that many
# workers on a SO_REUSEPORT listener, or IDLE_PROCS-1 more agents started
# with the same command on the agent's port (tollgate-agent listens with
# SO_REUSEPORT), each warmed up for 1 s, stopped afterwards.
idle_run() {
  local tgt=$1 port pids extra=() p base
  [ -n "${PIDS[$tgt]}" ] || return 0
  if [ "$tgt" = direct ] || [ "$IDLE_PROCS" = 1 ]; then
    idle_measure "$tgt" "${URL[$tgt]}" "${PIDS[$tgt]}" 1
    return 0
  fi
  if [ "$tgt" = nginx ]; then
    port=$(free_port)
    start_nginx nginx-idle "$port" "$IDLE_PROCS" reuseport
    extra=("$NGINX_PID")
    pids=$( (pgrep -P "$NGINX_PID" || true) | tr '\n' ' ')
  else
    port=$AGENT_PORT
    base=$(ss -Hltn "sport = :$port" | wc -l)
    for _ in $(seq 2 "$IDLE_PROCS"); do
      bash -c "exec $AGENT_RUN" >>"$TMP/agent-idle.out" 2>&1 &
      extra+=("$!")
      STARTED+=("$!")
    done
    for _ in $(seq 100); do
      [ "$(ss -Hltn "sport = :$port" | wc -l)" -ge $((base + IDLE_PROCS - 1)) ] && break
      sleep 0.1
    done
    [ "$(ss -Hltn "sport = :$port" | wc -l)" -ge $((base + IDLE_PROCS - 1)) ] || {
      echo "bench/run.sh: $((IDLE_PROCS - 1)) more agent(s) did not listen on port $port (SO_REUSEPORT?): $(tail -5 "$TMP/agent-idle.out")" >&2
      stop_pids "${extra[@]}"; record idle "$tgt" error 1; return 0; }
    pids="${PIDS[$tgt]}"
    for p in "${extra[@]}"; do pids="$pids $p $( (pgrep -P "$p" || true) | tr '\n' ' ')"; done
  fi
  timeout 30 wrk -t1 -c16 -d1s -s "$HERE/wrk/chat_small.lua" "http://127.0.0.1:$port" >/dev/null 2>&1 || true
  idle_measure "$tgt" "http://127.0.0.1:$port" "$pids" "$IDLE_PROCS"
  stop_pids "${extra[@]}"
}

echo "bench/run.sh: mockllm $UPSTREAM, nginx ${URL[nginx]}, agent: $AGENT_NOTE" >&2
echo "bench/run.sh: $RUNS run(s) x ${DUR}s, $STREAMS idle streams (proxies over $IDLE_PROCS process(es); open files $NOFILE: $PER_PROC streams a proxy process), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for tgt in "${TARGETS[@]}"; do # warm up connections and caches
  timeout 30 wrk -t1 -c8 -d1s -s "$HERE/wrk/chat_small.lua" "${URL[$tgt]}" >/dev/null 2>&1 || true
done
# Scenario by scenario, every target back to back: this VM's speed drifts
# by a third over minutes (docs/PERFORMANCE.md, session 9), so the values
# compared with each other are measured seconds apart, and report.mjs
# gives the median of each run's own ratio beside the ratio of medians.
for run in $(seq "$RUNS"); do
  RUN=$run
  echo "bench/run.sh: run $run/$RUNS" >&2
  if [ "$IDLE_ONLY" = 0 ]; then
    for tgt in "${TARGETS[@]}"; do wrk_run small "$tgt" 32 chat_small.lua; done
    for tgt in "${TARGETS[@]}"; do wrk_run small_c1 "$tgt" 1 chat_small.lua; done
    for tgt in "${TARGETS[@]}"; do is_tls "$tgt" || wrk_run big "$tgt" 8 chat_100k.lua; done
    for tgt in "${TARGETS[@]}"; do stream_run "$tgt"; done
  fi
  # Once only: freed connection memory stays in the process (malloc keeps
  # it), so a second idle run would measure reuse, not growth.
  if [ "$run" = 1 ]; then
    for tgt in "${TARGETS[@]}"; do is_tls "$tgt" || idle_run "$tgt"; done
  fi
done

echo "bench/run.sh: done, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
BENCH_PEERS="${PEER_TARGETS[*]}" BENCH_PEER_NOTES="$(IFS=';'; echo "${PEER_NOTES[*]}")" \
  node "$HERE/report.mjs" "$RESULTS" "$AGENT_NOTE" "$RUNS" "$DUR" "$STREAMS" "$NSTREAM" "$NOFILE"
