#!/usr/bin/env bash
# Runs rpc_bench against rpc/'s C server (in-process) and against the
# grpc-js baseline server (rpc/testing/echo_server_node.mjs), same client,
# same run, and prints a markdown table. Usage: rpc/testing/bench.sh [calls] [stream]
# (TG_BIN: bazel-bin directory holding rpc/testing/rpc_bench.)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${TG_BIN:-bazel-bin}/rpc/testing/rpc_bench
CALLS=${1:-20000}
STREAM=${2:-200000}
echo "| server | unary p50 us | unary p99 us | unary calls/s (1 thread) | unary calls/s (8 threads) | stream msgs/s (100 B) |"
echo "|---|---|---|---|---|---|"
"$BIN" --calls "$CALLS" --stream "$STREAM" --label "rpc/ (C core)"
out=$(mktemp)
node rpc/testing/echo_server_node.mjs >"$out" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 1 100); do grep -qE '^[0-9]+$' "$out" && break; sleep 0.1; done
port=$(head -n1 "$out")
"$BIN" --target "127.0.0.1:$port" --calls "$CALLS" --stream "$STREAM" --label "@grpc/grpc-js server"
