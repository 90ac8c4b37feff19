#!/usr/bin/env bash
# The one test command: installs dependencies, builds everything (gcc, and a
# clang compile check), runs every C unit test (cmocka, under ASan+UBSan) and
# every end-to-end test (node --test against real processes), prints each
# failure and a last line "N passed, N failed" that sums all suites.
# Exits non-zero on any failure.
#
# Environment: TG_SKIP_DEPS=1 skips deploy/install-deps.sh; TG_SKIP_CLANG=1
# skips the clang build; TG_E2E_FILTER=regex runs only matching e2e files;
# TG_ONLY=c|e2e runs one half.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

passed=0
failed=0
failures=()
note_fail() { failures+=("$1"); }

if [ "${TG_SKIP_DEPS:-0}" != 1 ]; then
  deploy/install-deps.sh || { echo "tests/run.sh: deploy/install-deps.sh failed"; echo "0 passed, 1 failed"; exit 1; }
fi

BAZEL=(bazel)
section() { printf '\n==== %s ====\n' "$*"; }

# ---- source lint -------------------------------------------------------------
section "lint (banned functions, file headers)"
if tests/lint.sh; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); note_fail "tests/lint.sh found problems"
fi

# ---- build ----------------------------------------------------------------
section "build (gcc)"
"${BAZEL[@]}" build --keep_going //... >/tmp/tg-gcc-build.log 2>&1
rc=$?
tail -n 5 /tmp/tg-gcc-build.log
if [ $rc != 0 ]; then
  tail -n 60 /tmp/tg-gcc-build.log
  failed=$((failed + 1)); note_fail "bazel build //... (gcc) failed"
fi
TG_BIN=$("${BAZEL[@]}" info bazel-bin 2>/dev/null)
export TG_BIN TG_ROOT="$ROOT"

if [ "${TG_SKIP_CLANG:-0}" != 1 ]; then
  section "build (clang-14, -Werror)"
  if "${BAZEL[@]}" build --keep_going --config=clang //... >/tmp/tg-clang-build.log 2>&1; then
    passed=$((passed + 1)); echo "clang build: ok"
  else
    tail -n 40 /tmp/tg-clang-build.log
    failed=$((failed + 1)); note_fail "bazel build --config=clang //... failed"
  fi
fi

# ---- C unit tests under ASan + UBSan ---------------------------------------
if [ "${TG_ONLY:-}" != e2e ]; then
  section "C unit tests (cmocka, ASan+UBSan)"
  "${BAZEL[@]}" test --keep_going --config=asan //... 2>&1 | grep -E '^(//|Executed|FAIL|ERROR)' || true
  LOGS=$("${BAZEL[@]}" info --config=asan bazel-testlogs 2>/dev/null)
  for t in $("${BAZEL[@]}" query 'tests(//...)' 2>/dev/null); do
    rel=${t#//}; rel=${rel/://}
    log="$LOGS/$rel/test.log"
    if [ ! -f "$log" ]; then
      failed=$((failed + 1)); note_fail "$t: did not run (build failure?)"; continue
    fi
    # cmocka prints "[  PASSED  ] N test(s)." and "[  FAILED  ] N test(s)".
    p=$(grep -aoE '\[  PASSED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
    f=$(grep -aoE '\[  FAILED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
    if [ -f "$LOGS/$rel/test.xml" ] && grep -q 'failures="[1-9]\|errors="[1-9]' "$LOGS/$rel/test.xml" && [ "$f" = 0 ]; then
      f=1  # crashed (sanitizer abort, timeout) before cmocka's summary
    fi
    [ "$p" = 0 ] && [ "$f" = 0 ] && f=1
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$f" != 0 ]; then
      note_fail "$t: $f failed (log: $log)"
      grep -aE '\[  FAILED  \]|ERROR|runtime error|AddressSanitizer|LeakSanitizer' "$log" | head -n 20
    fi
  done
fi

# ---- end-to-end tests --------------------------------------------------------
if [ "${TG_ONLY:-}" != c ]; then
  section "end-to-end tests (node --test)"
  mapfile -t files < <(find tests/e2e -name '*.test.mjs' | sort | grep -E "${TG_E2E_FILTER:-.}")
  if ((${#files[@]})); then
    tap=$(mktemp)
    node --test --test-concurrency=2 --test-timeout=300000 \
      --test-reporter=spec --test-reporter-destination=stdout \
      --test-reporter=tap --test-reporter-destination="$tap" "${files[@]}"
    p=$(awk '/^# pass /{print $3}' "$tap" | tail -n1)
    f=$(awk '/^# fail /{print $3}' "$tap" | tail -n1)
    c=$(awk '/^# cancelled /{print $3}' "$tap" | tail -n1)
    p=${p:-0}; f=$(( ${f:-0} + ${c:-0} ))
    if [ "$p" = 0 ] && [ "$f" = 0 ]; then f=1; fi
    passed=$((passed + p)); failed=$((failed + f))
    [ "$f" != 0 ] && note_fail "node e2e: $f failed (see the spec output above)"
    rm -f "$tap"
  fi
fi

section "summary"
for x in "${failures[@]}"; do echo "FAILED: $x"; done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
