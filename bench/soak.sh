#!/usr/bin/env bash
# Soak test (not run in CI): a real control plane (embedded LMDB store), an
# edge agent enrolled with it and the upstream emulator (mockllm), configured
# as deploy/quickstart.sh does, plus a channel to a dead port (mockllm
# --refuse) and its route. bench/soak_load.mjs drives steady load through the
# agent with the openai SDK for --minutes N: streams, plain chat, requests the
# upstream fails (x-mock-scenario status=500, forwarded by the agent) and
# requests to the dead channel. Every 10 s it samples the anonymous RSS and
# open files of the agent and the control plane, the agent's outbox depth
# (/metrics: tollgate_agent_outbox_records) and the disk use of the store,
# the ledger and the agent's data directory, into a CSV; at the end
# bench/soak_summary.mjs prints first vs last 5 minutes per series and a
# "flat" verdict per series (the rule is in that file and in its output).
#
#   bench/soak.sh                      # 30 minutes, 20 requests/s, 8 in flight
#   bench/soak.sh --minutes 2 --rate 10
#   TG_BIN=$(bazel info bazel-bin) bench/soak.sh   # take the binaries, no build
#
# Everything binds 127.0.0.1 on free ports; state in a temp directory that is
# printed and kept (the CSV is soak.csv there, also copied to --csv PATH);
# everything started is stopped on exit, Ctrl-C or SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=30
rate=20
conc=8
csv_out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --conc) conc="$2"; shift 2 ;;
    --csv) csv_out="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "soak: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$minutes" =~ ^[1-9][0-9]*$ ]]; then echo "soak: --minutes wants a whole number >= 1" >&2; exit 2; fi

PROG=soak
# shellcheck source=deploy/lib.sh
. deploy/lib.sh
for t in curl jq node du; do command -v "$t" >/dev/null || { STEP="checking tools"; fail "'$t' is missing"; }; done

umask 077
STATE=$(mktemp -d /tmp/tollgate-soak.XXXXXX)
echo "state directory: $STATE"
build_binaries

step "starting the upstream emulator and a refusing port" mockllm.log dead.log
start_server mockllm mockllm.log 'listening on 127\.0\.0\.1:[0-9]+' "$MOCK" --host 127.0.0.1 --port 0 --record-max 0
MOCK_PORT=${LINE##*:}
start_server dead-port dead.log 'refusing on 127\.0\.0\.1:[0-9]+' "$MOCK" --refuse --host 127.0.0.1 --port 0
DEAD_PORT=${LINE##*:}

step "starting the control plane (embedded LMDB store)" cp.log
start_cp_lmdb soak
CP_PID=${pids[-1]}
TC_SERVER="127.0.0.1:$CP_GRPC"

step "configuring (account, channels, routes, price card, key; log in setup.log)" setup.log tollctl.log
demo_configure "http://127.0.0.1:$MOCK_PORT" >>"$STATE/setup.log"
tc topup --account "$ACCOUNT" --bucket credit --amount 1000 --currency USD --idempotency-key soak-more --reason soak >>"$STATE/setup.log"
printf 'sk-fake-dead-%s' "$(rand_hex 8)" >"$STATE/credential-dead"
tc channel create --name dead-port --provider openai --base-url "http://127.0.0.1:$DEAD_PORT/v1" \
  --route-type direct --credential-file "$STATE/credential-dead" --json >>"$STATE/setup.log"
CH_DEAD=$(jq -r .id <<<"$OUT")
tc route put gpt-dead --channel "$CH_DEAD=gpt-dead" --encoding o200k_base >>"$STATE/setup.log"
jq '.entries += [{"model":"gpt-dead","input_per_mtok_nano":"150000000","output_per_mtok_nano":"600000000"}]' \
  "$STATE/price-card.json" >"$STATE/price-card-2.json"
tc price publish --file "$STATE/price-card-2.json" >>"$STATE/setup.log"

step "starting the agent (forwards x-mock-scenario)" agent.log cp.log
start_server tollgate-agent agent.log '^tollgate-agent listening on 127\.0\.0\.1:[0-9]+' "$AGENT" \
  --host 127.0.0.1 --port 0 --data-dir "$STATE/agent" --metrics-listen 127.0.0.1:0 \
  --cp "127.0.0.1:$CP_GRPC" --enroll-token "$ENROLL_TOKEN" --forward-header x-mock-scenario
AGENT_PID=${pids[-1]}
AGENT_URL="http://127.0.0.1:${LINE##*:}"
METRICS=""
for ((i = 0; i < 150; i++)); do
  METRICS=$(grep -m1 -oE 'metrics on 127\.0\.0\.1:[0-9]+' "$STATE/agent.log" | grep -oE '[0-9]+$' || true)
  [ -n "$METRICS" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "$AGENT_URL/readyz")" = 200 ] && break
  kill -0 "$AGENT_PID" 2>/dev/null || fail "tollgate-agent exited"
  sleep 0.1
done
[ -n "$METRICS" ] || fail "the agent did not print its metrics address"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$AGENT_URL/readyz")" = 200 ] || fail "the agent was not ready within 15 s"
METRICS_URL="http://127.0.0.1:$METRICS/metrics"
echo "agent $AGENT_URL (pid $AGENT_PID), metrics $METRICS_URL, control plane pid $CP_PID"

# ---- load and sampling ------------------------------------------------------------------

rss_anon() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }
nfds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
outbox() {
  curl -s --max-time 5 "$METRICS_URL" | awk '$1 == "tollgate_agent_outbox_records" {print $2; f = 1} END {if (!f) print -1}'
}
dub() { du -sb "$1" 2>/dev/null | cut -f1; }
counter() { jq -r ".$1 // 0" "$STATE/load.json" 2>/dev/null || echo 0; }

step "load for $minutes min: $rate requests/s, up to $conc in flight (mix: 4 stream, 4 chat, 1 upstream 500, 1 dead channel per 10)" load.log agent.log cp.log
secs=$((minutes * 60))
LOAD_AVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average at start: $LOAD_AVG_START"
node bench/soak_load.mjs "$AGENT_URL/v1" "$API_KEY" "$rate" "$conc" "$((secs + 30))" "$STATE/load.json" >"$STATE/load.log" 2>&1 &
pids+=($!)
names+=(soak_load)
LOAD_PID=$!

CSV="$STATE/soak.csv"
echo "t_s,agent_rss_anon_kb,cp_rss_anon_kb,agent_fds,cp_fds,outbox_records,store_bytes,ledger_bytes,agent_dir_bytes,sent,stream_ok,chat_ok,fail_expected,dead_expected,unexpected,loadavg1" >"$CSV"
t0=$(date +%s)
next=$t0
while :; do
  now=$(date +%s)
  t=$((now - t0))
  for p in "$AGENT_PID" "$CP_PID" "$LOAD_PID"; do
    kill -0 "$p" 2>/dev/null || { STEP_LOGS=(agent.log cp.log load.log); fail "process $p exited during the soak (at ${t} s)"; }
  done
  printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$t" \
    "$(rss_anon "$AGENT_PID")" "$(rss_anon "$CP_PID")" "$(nfds "$AGENT_PID")" "$(nfds "$CP_PID")" "$(outbox)" \
    "$(dub "$STATE/cp/store")" "$(dub "$STATE/cp/ledger")" "$(dub "$STATE/agent")" \
    "$(counter sent)" "$(counter stream_ok)" "$(counter chat_ok)" "$(counter fail_expected)" \
    "$(counter dead_expected)" "$(counter unexpected)" "$(cut -d' ' -f1 /proc/loadavg)" >>"$CSV"
  if [ $((t % 60)) -lt 10 ]; then echo "  $(tail -n 1 "$CSV")"; fi
  [ "$t" -ge "$secs" ] && break
  next=$((next + 10))
  sleep $((next - $(date +%s) > 0 ? next - $(date +%s) : 0))
done
LOAD_AVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
kill -TERM "$LOAD_PID" 2>/dev/null || true
wait "$LOAD_PID" 2>/dev/null || true

step "summary" load.log
echo "load average at start: $LOAD_AVG_START; at end: $LOAD_AVG_END"
echo "requests: $(jq -c . "$STATE/load.json")"
node bench/soak_summary.mjs "$CSV"
[ -n "$csv_out" ] && cp "$CSV" "$csv_out"
echo "CSV: $CSV"
unexpected=$(counter unexpected)
[ "$unexpected" = 0 ] || echo "soak: $unexpected requests failed unexpectedly (last: $(jq -r .last_unexpected "$STATE/load.json"))"
STEP="stopping"
stop_all
