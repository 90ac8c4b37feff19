#!/usr/bin/env bash
# Quickstart: builds Tollgate and runs it on this machine with the upstream
# emulator (tools/mockllm) standing in for OpenAI/Anthropic, sends requests,
# and shows what came back. Everything binds 127.0.0.1; all state lives in one
# directory that is printed (a second run starts clean). Ctrl-C or SIGTERM
# stops everything.
#
#   deploy/quickstart.sh             # install deps, build, run, keep running
#   deploy/quickstart.sh --no-wait   # the same, then stop (used by a test)
#   deploy/quickstart.sh --no-install  # skip deploy/install-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

wait_forever=1
install=1
for a in "$@"; do
  case "$a" in
    --no-wait) wait_forever=0 ;;
    --no-install) install=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "quickstart: unknown option '$a' (try --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

[ "$install" = 1 ] && deploy/install-deps.sh

say "building"
bazel build --keep_going //... 2>&1 | tail -n 3 || true
BIN=$(bazel info bazel-bin 2>/dev/null)
MOCK="$BIN/tools/mockllm/mockllm"
TOLLCTL="$BIN/cli/tollctl"
[ -x "$MOCK" ] || { echo "quickstart: $MOCK was not built" >&2; exit 1; }

STATE=$(mktemp -d /tmp/tollgate-quickstart.XXXXXX)
echo "state directory: $STATE"

pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "quickstart: stopped (state kept in $STATE)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a server that prints "... 127.0.0.1:PORT" on its first stdout line;
# sets $PORT.
start_server() {
  local log="$1"; shift
  "$@" >"$log" 2>&1 &
  pids+=($!)
  local i
  for i in $(seq 1 100); do
    PORT=$(grep -m1 -oE '127\.0\.0\.1:[0-9]+' "$log" | head -n1 | cut -d: -f2 || true)
    [ -n "$PORT" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  echo "quickstart: $1 did not start:" >&2; cat "$log" >&2; return 1
}

say "starting the upstream emulator (mockllm)"
start_server "$STATE/mockllm.log" "$MOCK" --port 0
MOCK_PORT=$PORT
echo "mockllm on http://127.0.0.1:$MOCK_PORT"

say "a chat completion, straight to the emulator"
curl -sS "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" \
  -H 'content-type: application/json' -H 'authorization: Bearer sk-upstream-demo' \
  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to Tollgate."}]}'
echo

say "a streamed one"
curl -sS -N "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" \
  -H 'content-type: application/json' -H 'authorization: Bearer sk-upstream-demo' \
  -d '{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Stream please."}]}' \
  > "$STATE/stream.txt"
n=$(grep -c '^data:' "$STATE/stream.txt" || true)
grep '^data:' "$STATE/stream.txt" | head -n 2
echo "... ($n events in all; the last ones carry the finish reason, the usage and [DONE]) ..."
grep '^data:' "$STATE/stream.txt" | tail -n 3

if [ -x "$TOLLCTL" ]; then
  say "counting the prompt locally, exactly as tiktoken would (tollctl tokens)"
  printf 'Say hello to Tollgate.' | "$TOLLCTL" tokens --model gpt-4o-mini
fi

say "what the emulator received (its recording endpoint)"
curl -sS "http://127.0.0.1:$MOCK_PORT/_mock/requests" > "$STATE/recorded.json"
if command -v jq >/dev/null; then jq -c '.requests[] | {method, path, model: (.body | fromjson? | .model)}' "$STATE/recorded.json" 2>/dev/null || cut -c1-600 "$STATE/recorded.json"; else cut -c1-600 "$STATE/recorded.json"; fi
echo

cat <<EOT

The edge agent (tollgate-agent) and the control plane's end-to-end flow are
being built (issues 6 and 7); until they land, this quickstart runs the
upstream emulator. Point an OpenAI SDK at it:
EOT
echo "export OPENAI_BASE_URL=http://127.0.0.1:$MOCK_PORT/v1 OPENAI_API_KEY=sk-upstream-demo"
echo "export ANTHROPIC_BASE_URL=http://127.0.0.1:$MOCK_PORT ANTHROPIC_API_KEY=sk-upstream-demo"

if [ "$wait_forever" = 1 ]; then
  say "running; Ctrl-C stops everything"
  wait
fi
