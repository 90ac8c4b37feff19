#!/usr/bin/env bash
# Installs everything Tollgate needs to build, test and benchmark on a fresh
# Debian 12 machine: the Debian packages (build tools, system libraries that
# Bazel links with linkopts, etcd, nginx, wrk, prometheus) and the npm test clients pinned
# by package-lock.json. Idempotent: a second run changes nothing and is quick.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(
  bazel-bootstrap            # the build (Bazel 4.2.3)
  gcc clang-14 libclang-rt-14-dev  # two compilers; clang's sanitizer runtime
  libgrpc-dev                # gRPC C core (rpc/)
  libprotobuf-c-dev protobuf-c-compiler protobuf-compiler  # api/ codegen
  libcurl4-openssl-dev       # upstream calls through proxies or --upstream-client curl; alert webhooks
  libssl-dev                 # Ed25519 signatures, SHA-256, TLS
  liblmdb-dev lmdb-utils     # embedded store, ledger, outbox
  libisal-dev                # CRC-32 of the agent's outbox journal frames (ISA-L)
  zlib1g-dev                 # zlib's CRC-32, the journal test's reference
  libzstd-dev                # the control plane's settled-log values (zstd frames)
  libevent-dev               # agent and mockllm event loops
  libhttp-parser-dev         # the agent front's HTTP/1.1 request parser
  libjansson-dev libjsmn-dev libyajl-dev  # JSON (tree where needed, scanners on hot paths)
  libpcre2-dev               # regex where a hand-written scanner is not worth it
  libcmocka-dev              # C unit tests
  etcd-server etcd-client    # cluster store, tested against a real etcd
  nginx wrk                  # benchmark baseline and load generator
  ca-certificates curl jq    # quickstart and scripts
  openssl procps             # test certificates (openssl CLI), pgrep in bench/run.sh
  prometheus                 # deploy/monitoring: promtool and a real Prometheus in the e2e test
)

# Node (end-to-end tests with the official SDKs): the machine image ships its
# own Node 20 + npm; Debian's would conflict with it, so only install when absent.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || DEBS+=(nodejs npm)

missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# nginx and prometheus are only a benchmark baseline and a test's tool:
# never leave the packaged services running.
for svc in nginx prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

# npm test clients, exactly as locked. Skip when node_modules already matches.
stamp=node_modules/.tollgate-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "install-deps: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

# The tokenizer's rank files come from the npm tiktoken packages (meter/).
if [ -x meter/tools/fetch-ranks.sh ]; then
  meter/tools/fetch-ranks.sh
fi
echo "install-deps: ok"
