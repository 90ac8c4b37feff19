#!/usr/bin/env bash
# bench/mockllm_peak.sh: how fast mockllm alone is (it must never be a
# benchmark's bottleneck). For --threads 1 and 2, runs wrk against the ~1 KB
# chat request (bench/wrk/chat_small.lua) RUNS times and prints a markdown
# table of medians: requests/s, mockllm CPU us per request, p50/p99.
# Usage: bench/mockllm_peak.sh [RUNS=3] [SECS=5] [CONNS=64]
# mockllm from $MOCKLLM or $TG_BIN/tools/mockllm/mockllm. 127.0.0.1 only;
# the server is stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-3} SECS=${2:-5} CONNS=${3:-64}
MOCKLLM=${MOCKLLM:-${TG_BIN:-$(cd "$ROOT" && bazel info bazel-bin 2>/dev/null)}/tools/mockllm/mockllm}
[ -x "$MOCKLLM" ] || { echo "mockllm_peak.sh: $MOCKLLM not built" >&2; exit 1; }
OUT=$(mktemp)
PID=
trap '[ -z "$PID" ] || kill "$PID" 2>/dev/null; rm -f "$OUT"' EXIT
HZ=$(getconf CLK_TCK)
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "| mockllm threads | wrk | requests/s | mockllm CPU us/request | p50 us | p99 us |"
echo "|---|---|---|---|---|---|"
for th in 1 2; do
  "$MOCKLLM" --port 0 --threads "$th" --record-max 0 >"$OUT" 2>&1 &
  PID=$!
  port=
  for _ in $(seq 50); do port=$(sed -n 's/^mockllm listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$OUT"); [ -n "$port" ] && break; sleep 0.1; done
  [ -n "$port" ] || { echo "mockllm did not start" >&2; exit 1; }
  rps=() cpu=() p50=() p99=()
  for _ in $(seq "$RUNS"); do
    t0=$(sed 's/^.*) //' "/proc/$PID/stat" | awk '{print $12 + $13}')
    line=$(timeout $((SECS + 30)) wrk -t"$th" -c"$CONNS" -d"${SECS}s" -s "$ROOT/bench/wrk/chat_small.lua" "http://127.0.0.1:$port" | grep '^BENCH ')
    t1=$(sed 's/^.*) //' "/proc/$PID/stat" | awk '{print $12 + $13}')
    grep -q 'non2xx=0 sockerr=0' <<<"$line" || { echo "errors: $line" >&2; exit 1; }
    n=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")
    rps+=("$(sed 's/.*rps=\([0-9.]*\).*/\1/' <<<"$line")")
    cpu+=("$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$n" 'BEGIN{printf "%.1f", t*1e6/hz/n}')")
    p50+=("$(sed 's/.*p50_us=\([0-9]*\).*/\1/' <<<"$line")")
    p99+=("$(sed 's/.*p99_us=\([0-9]*\).*/\1/' <<<"$line")")
  done
  printf '| %s | -t%s -c%s | %.0f | %s | %s | %s |\n' "$th" "$th" "$CONNS" \
    "$(printf '%s\n' "${rps[@]}" | median)" "$(printf '%s\n' "${cpu[@]}" | median)" \
    "$(printf '%s\n' "${p50[@]}" | median)" "$(printf '%s\n' "${p99[@]}" | median)"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
done
echo
echo "Medians of $RUNS runs of ${SECS} s; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores."
