#!/usr/bin/env bash
# Derives the tokenizer data that meter/ embeds at build time, from the npm
# `tiktoken` package installed by package-lock.json (the same package the
# exactness tests compare against), and checks every result's SHA-256:
#   meter/data/cl100k_base.tiktoken, o200k_base.tiktoken  OpenAI's canonical
#       rank files, rebuilt byte for byte from tiktoken/encoders/*.json
#       (the hashes below are the ones OpenAI publishes for its files);
#   meter/data/unicode_classes.bin  the regex character classes per code
#       point (Node's ICU, pinned to tiktoken's Unicode version).
# Idempotent: when every file exists with the right hash it does nothing.
# Run by deploy/install-deps.sh; safe to run by hand.
set -euo pipefail
cd "$(dirname "$0")/../.."

declare -A WANT=(
  [cl100k_base.tiktoken]=223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7
  [o200k_base.tiktoken]=446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d
  [unicode_classes.bin]=ad83ba8d1987f610fb921d3d5c30be00bb9c93cd3fe8a938d6e49fe557f8b078
)
ok() { [ -f "meter/data/$1" ] && [ "$(sha256sum "meter/data/$1" | cut -d' ' -f1)" = "${WANT[$1]}" ]; }

mkdir -p meter/data
[ -f node_modules/tiktoken/encoders/cl100k_base.json ] || {
  echo "fetch-ranks: node_modules/tiktoken is missing: run npm ci (deploy/install-deps.sh)" >&2; exit 1; }
for enc in cl100k_base o200k_base; do
  ok "$enc.tiktoken" && continue
  echo "fetch-ranks: converting node_modules/tiktoken/encoders/$enc.json"
  node meter/tools/gen-ranks.mjs "node_modules/tiktoken/encoders/$enc.json" "meter/data/$enc.tiktoken"
done
if ! ok unicode_classes.bin; then
  echo "fetch-ranks: generating unicode_classes.bin"
  node meter/tools/gen-unicode.mjs meter/data/unicode_classes.bin
fi
bad=0
for f in "${!WANT[@]}"; do
  if ! ok "$f"; then
    echo "fetch-ranks: meter/data/$f: SHA-256 $(sha256sum "meter/data/$f" | cut -d' ' -f1), expected ${WANT[$f]}" >&2
    bad=1
  fi
done
if [ $bad = 1 ]; then
  echo "fetch-ranks: checksum mismatch: the npm tiktoken package or Node's ICU differ from the pinned ones (see meter/README.md)" >&2
  exit 1
fi
echo "fetch-ranks: meter/data ok"
