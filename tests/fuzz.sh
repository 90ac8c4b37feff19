#!/usr/bin/env bash
# Runs one libFuzzer target for a while: tests/fuzz.sh TARGET SECONDS
# TARGET is a label (//agent:json_fuzz) or a short name (json_fuzz);
# `tests/fuzz.sh list` prints them all. Builds it with --config=fuzz
# (clang-14, ASan, UBSan), then runs it on one core with the checked-in seed
# corpus (<package>/fuzz_corpus/<name without _fuzz>/, read only) and a
# working corpus kept across runs in $TG_FUZZ_WORK/<name> (default
# ~/.cache/tollgate-fuzz), so time adds up over sessions. A crash leaves its
# input as $TG_FUZZ_WORK/<name>/crash-*; fix the parser, copy the input into
# the seed corpus (the gcc replay test then keeps it fixed). Exits non-zero
# on a finding. Extra arguments after SECONDS go to libFuzzer.
set -uo pipefail
cd "$(dirname "$0")/.."
targets() { bazel query 'attr(tags, "\bfuzz\b", kind(cc_binary, //...))' 2>/dev/null; }
if [ "${1:-}" = list ]; then targets; exit 0; fi
if [ $# -lt 2 ]; then echo "usage: tests/fuzz.sh TARGET SECONDS [libFuzzer args] | tests/fuzz.sh list" >&2; exit 2; fi
t=$1 secs=$2; shift 2
case "$t" in
  //*) label=$t ;;
  *) label=$(targets | grep -E ":$t\$" | head -n1) ;;
esac
[ -n "$label" ] || { echo "tests/fuzz.sh: no fuzz target $t (tests/fuzz.sh list)" >&2; exit 2; }
pkg=${label#//}; pkg=${pkg%%:*}; name=${label##*:}
seed="$pkg/fuzz_corpus/${name%_fuzz}"
work="${TG_FUZZ_WORK:-$HOME/.cache/tollgate-fuzz}/$name"
mkdir -p "$work/corpus"
bazel build --config=fuzz "$label" >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log"; exit 1; }
bin="$(bazel info --config=fuzz bazel-bin 2>/dev/null)/$pkg/$name"
echo "tests/fuzz.sh: $label for ${secs}s (seeds $seed, working corpus $work/corpus)"
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$work/" "$@" "$work/corpus" "$seed"
