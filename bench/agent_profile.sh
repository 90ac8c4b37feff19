#!/usr/bin/env bash
# bench/agent_profile.sh: per-request costs of the agent that hold on a busy
# machine (counts, not times): user-space instructions (callgrind), system
# calls (strace -c) and heap per open stream (massif). Starts mockllm and the
# agent (agent/testing/bench_agent.sh: metering, the durable outbox and spend
# control on), warms up, measures under wrk with the ~1 KB chat request
# (bench/wrk/chat_small.lua) and prints one line per figure.
#
# Usage: bench/agent_profile.sh MODE [CONNS] [SECONDS]
#   cg       callgrind over all agent threads: instructions per request
#            (zeroed after a 3 s warm-up, dumped after the load); the
#            profile stays in $OUT/cg.out.1 for callgrind_annotate
#   strace   strace -c -f on the agent: system calls per request, by call
#   massif   massif heap profile while CONNS streams wait for their first
#            token (stream_client.mjs idle): bytes per stream by allocation
#            site, in $OUT/massif.out
#   perf     perf at full speed (no tracer slowing the agent, so loop
#            iterations batch as they do in the bench): system calls per
#            request by call (perf trace -s), then a cycles profile with
#            call graphs in $OUT/perf.data (perf report -i ...)
# CONNS defaults to 1 (massif: 300 streams), SECONDS to 10.
# Binaries: $TG_AGENT_BIN (else $TG_BIN/agent/tollgate-agent) and
# $TG_BIN/tools/mockllm/mockllm. $TG_AGENT_ARGS: extra agent flags (e.g.
# "--upstream-client curl" to profile libcurl's path). $TG_PROFILE_SCRIPT:
# the load's wrk script under bench/wrk (default chat_small.lua; e.g.
# chat_100k.lua for 100 KB bodies). Needs valgrind, strace, wrk, node.
# Output files go to $OUT (default: a new temp directory, printed).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:?usage: bench/agent_profile.sh cg|strace|massif [CONNS] [SECONDS]}
CONNS=${2:-} SECS=${3:-10}
BIN=${TG_BIN:-$(cd "$ROOT" && bazel info bazel-bin 2>/dev/null)}
AGENT=${TG_AGENT_BIN:-$BIN/agent/tollgate-agent}
OUT=${OUT:-$(mktemp -d /tmp/tg-profile.XXXXXX)}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

"$BIN/tools/mockllm/mockllm" --port 0 --record-max 0 >"$OUT/mock.out" 2>&1 &
PIDS+=("$!")
MPORT=$("$ROOT/bench/mock_port.sh" "$OUT/mock.out") || { echo "agent_profile.sh: mockllm did not start" >&2; exit 1; }

# the agent under the tool: bench_agent.sh execs TG_AGENT_BIN, here a wrapper
case "$MODE" in
  cg) TOOL="valgrind --tool=callgrind --callgrind-out-file=$OUT/cg.out" ;;
  massif) TOOL="valgrind --tool=massif --massif-out-file=$OUT/massif.out --threshold=0.5 --detailed-freq=1" ;;
  strace|perf) TOOL="" ;;
  *) echo "agent_profile.sh: unknown mode $MODE" >&2; exit 2 ;;
esac
printf '#!/bin/sh\nexec %s %s "$@"\n' "$TOOL" "$AGENT" >"$OUT/agent.sh"
chmod +x "$OUT/agent.sh"
PORT=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
# shellcheck disable=SC2086 # TG_AGENT_ARGS: flags, split on blanks
TG_AGENT_BIN="$OUT/agent.sh" "$ROOT/agent/testing/bench_agent.sh" "$PORT" "http://127.0.0.1:$MPORT" ${TG_AGENT_ARGS:-} >"$OUT/agent.out" 2>&1 &
WRAP=$!
PIDS+=("$WRAP")
for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
APID=$(pgrep -P "$WRAP" | head -1)
URL="http://127.0.0.1:$PORT"
LOAD() { wrk -t1 -c"${CONNS:-1}" -d"$1" -s "$ROOT/bench/wrk/${TG_PROFILE_SCRIPT:-chat_small.lua}" "$URL"; }
requests() { sed -n 's/^BENCH requests=\([0-9]*\).*/\1/p' "$OUT/wrk.out"; }
echo "agent_profile.sh: $MODE, agent pid $APID, load $(cut -d' ' -f1-3 /proc/loadavg), files in $OUT"

case "$MODE" in
  cg)
    LOAD 3s >/dev/null
    callgrind_control -z "$APID" >/dev/null 2>&1
    LOAD "${SECS}s" >"$OUT/wrk.out"
    callgrind_control -d "$APID" >/dev/null 2>&1
    n=$(requests)
    ir=$(callgrind_annotate "$OUT/cg.out.1" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
    echo "requests=$n instructions=$ir instructions_per_request=$((ir / n))"
    ;;
  strace)
    LOAD 2s >/dev/null
    timeout $((SECS + 5)) strace -c -f -p "$APID" -o "$OUT/strace.out" 2>"$OUT/strace.err" &
    st=$!
    sleep 1
    LOAD "${SECS}s" >"$OUT/wrk.out"
    kill -INT "$st" 2>/dev/null || true
    wait "$st" 2>/dev/null || true
    n=$(requests)
    # calls column: the 4th field, or the 3rd when strace printed no usecs/call
    awk -v n="$n" 'NR > 2 && $NF != "total" && $NF ~ /^[a-z_0-9]+$/ {
        c = ($4 ~ /^[0-9]+$/) ? $4 : $3; t += c; printf "%-16s %8d  %6.2f/request\n", $NF, c, c / n }
      END { printf "%-16s %8d  %6.2f/request (%d requests)\n", "TOTAL", t, t / n, n }' "$OUT/strace.out" | sort -k2 -nr
    ;;
  perf)
    LOAD 2s >/dev/null
    LOAD "$((SECS + 3))s" >"$OUT/wrk.out" &
    wl=$!
    sleep 1
    # in-kernel tracepoint counts (cheap, unlike perf trace or strace); the
    # client's answers (one send per 1 KB request) count the requests
    ev=""
    for c in sendto sendmsg recvfrom read epoll_wait epoll_ctl pwrite64 pwritev writev write lseek fdatasync futex accept4 close; do
      ev="$ev -e syscalls:sys_enter_$c"
    done
    ev="$ev -e raw_syscalls:sys_enter -e page-faults -e context-switches"
    # shellcheck disable=SC2086 # ev: perf flags
    perf stat -x, $ev -p "$APID" -o "$OUT/stat.out" -- sleep "$((SECS / 2))" >/dev/null 2>&1 || true
    perf record -g -o "$OUT/perf.data" -p "$APID" -- sleep "$((SECS / 2))" >/dev/null 2>&1 || true
    wait "$wl"
    awk -F, '$3 ~ /sys_enter/ { n = $3; sub(/.*sys_enter_?/, "", n); if (n == "") n = "ALL"; c[n] = $1 }
      $3 ~ /^(page-faults|context-switches)$/ { c[$3] = $1 }
      END { r = c["sendto"]; for (k in c) printf "%-12s %9d  %6.2f/request\n", k, c[k], c[k] / r
            printf "(%d requests: the client answers, one sendto each)\n", r }' "$OUT/stat.out" | sort -k2 -nr
    perf report -i "$OUT/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -40
    ;;
  massif)
    wrk -t1 -c8 -d1s -s "$ROOT/bench/wrk/chat_small.lua" "$URL" >/dev/null
    node "$ROOT/bench/stream_client.mjs" idle "$URL" "${CONNS:-300}" "$APID"
    kill "$WRAP"
    for _ in $(seq 600); do kill -0 "$APID" 2>/dev/null || break; sleep 0.1; done
    echo "agent_profile.sh: heap tree at the peak: ms_print $OUT/massif.out"
    ;;
esac
