#!/usr/bin/env bash
# bench/fsync_tail.sh: where the one-connection tail comes from. p50 and p99
# at one connection (wrk --latency, the ~1 KB chat request) of nginx
# proxy_pass and of the agent (its outbox synced every 5 ms, the default),
# each alone and with an unrelated process beside it that writes 4 KB and
# fdatasyncs a file of its own every 5 ms (what the agent's sync thread
# does to the disk). If nginx's tail with that neighbour is the agent's
# alone, the tail is the machine's answer to an fsync, not the agent's code.
#
# Usage: bench/fsync_tail.sh [ROUNDS] [SECONDS]  (default 3 rounds of 5 s,
# interleaved). Binaries from $TG_BIN (else `bazel info bazel-bin`). Needs
# nginx, wrk, node.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3} SECS=${2:-5}
BIN=${TG_BIN:-$(cd "$ROOT" && bazel info bazel-bin 2>/dev/null)}
TMP=$(mktemp -d /tmp/tg-fsync-tail.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

"$BIN/tools/mockllm/mockllm" --port 0 --record-max 0 >"$TMP/mock.out" 2>&1 &
PIDS+=("$!")
MPORT=$("$ROOT/bench/mock_port.sh" "$TMP/mock.out")
NPORT=$(free_port)
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $TMP/nginx/nginx.pid; error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $TMP/nginx/b; proxy_temp_path $TMP/nginx/p;
  fastcgi_temp_path $TMP/nginx/f; uwsgi_temp_path $TMP/nginx/u; scgi_temp_path $TMP/nginx/s;
  upstream m { server 127.0.0.1:$MPORT; keepalive 64; }
  server { listen 127.0.0.1:$NPORT; location / { proxy_pass http://m; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; } } }
CONF
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx/stdout" 2>&1 &
PIDS+=("$!")
declare -A PORT=([nginx]=$NPORT)
PORT[agent]=$(free_port)
TG_BIN=$BIN "$ROOT/agent/testing/bench_agent.sh" "${PORT[agent]}" "http://127.0.0.1:$MPORT" >"$TMP/agent.out" 2>&1 &
PIDS+=("$!")
TARGETS=(nginx agent)
for t in "${TARGETS[@]}"; do
  wait_port "${PORT[$t]}" || { echo "fsync_tail.sh: $t did not start" >&2; exit 1; }
  wrk -t1 -c1 -d2s -s "$ROOT/bench/wrk/chat_small.lua" "http://127.0.0.1:${PORT[$t]}" >/dev/null
done
# the neighbour: 4 KB written and fdatasynced every 5 ms for S seconds
neighbour() {
  node -e '
    const fs = require("fs"); const fd = fs.openSync(process.argv[1], "w"); const b = Buffer.alloc(4096, 120);
    const end = Date.now() + 1000 * Number(process.argv[2]);
    const tick = () => { fs.writeSync(fd, b); fs.fdatasyncSync(fd); if (Date.now() < end) setTimeout(tick, 5); };
    tick();' "$TMP/neighbour.dat" "$1"
}
echo "fsync_tail.sh: $ROUNDS rounds of ${SECS}s at one connection, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-18s %-10s %10s %10s %s\n' target neighbour p50 p99 load
for r in $(seq "$ROUNDS"); do
  for mode in none fsync; do
    for t in "${TARGETS[@]}"; do
      nb=""
      if [ "$mode" = fsync ]; then neighbour $((SECS + 1)) & nb=$!; fi
      out=$(wrk -t1 -c1 -d"${SECS}s" --latency -s "$ROOT/bench/wrk/chat_small.lua" "http://127.0.0.1:${PORT[$t]}")
      [ -n "$nb" ] && wait "$nb"
      printf '%-18s %-10s %10s %10s %s\n' "$t" "$mode" "$(awk '/ 50%/{print $2}' <<<"$out")" \
        "$(awk '/ 99%/{print $2}' <<<"$out")" "$(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
