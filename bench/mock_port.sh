#!/usr/bin/env bash
# bench/mock_port.sh FILE: the port mockllm listens on, from the
# "mockllm listening on 127.0.0.1:PORT" line it writes to FILE (its output);
# waits up to 10 s for it, exits 1 without it.
for _ in $(seq 100); do
  port=$(sed -n 's/^mockllm listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$1" 2>/dev/null)
  [ -n "$port" ] && { echo "$port"; exit 0; }
  sleep 0.1
done
exit 1
