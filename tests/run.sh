#!/usr/bin/env bash
# The one test command: installs dependencies, builds everything (gcc, and a
# clang compile check), runs every C unit test (cmocka, under ASan+UBSan; the
# fuzz targets' corpus replays are among them), each libFuzzer target for a
# few seconds, and
# every end-to-end test (node --test against real processes), prints each
# failure and a last line "N passed, N failed" that sums all suites.
# Exits non-zero on any failure: a suite's own counts, and also the exit
# status of `bazel test` and of `node --test` (a failing `after` hook fails
# the run without a failing test; it counts as one failure in the last line).
# The end-to-end suites that move money (agent_outbox, cp_agent,
# cp_settle_rules, cp_settled_compression, agent_revoke, faults_ledger_disk) run twice: against the gcc binaries and against the
# ASan+UBSan build, where a leak or memory error at exit is a non-zero exit
# code the tests assert on.
#
# Environment: TG_SKIP_DEPS=1 skips deploy/install-deps.sh; TG_SKIP_CLANG=1
# skips the clang build; TG_E2E_FILTER=regex runs only matching e2e files;
# TG_ONLY=c|e2e runs one half; TG_SKIP_ASAN_E2E=1 skips the ASan e2e pass;
# TG_SKIP_FUZZ=1 skips the short libFuzzer runs, TG_FUZZ_SECONDS sets their
# length (default 8 s per target).
# Logs go to a fresh directory (printed), never to fixed /tmp paths.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/tg-run.XXXXXX")
echo "tests/run.sh: logs in $LOGDIR"

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
"${BAZEL[@]}" build --keep_going //... >"$LOGDIR/gcc-build.log" 2>&1
rc=$?
tail -n 5 "$LOGDIR/gcc-build.log"
if [ $rc != 0 ]; then
  tail -n 60 "$LOGDIR/gcc-build.log"
  failed=$((failed + 1)); note_fail "bazel build //... (gcc) failed"
fi
TG_BIN=$("${BAZEL[@]}" info bazel-bin 2>/dev/null)
export TG_BIN TG_ROOT="$ROOT"

if [ "${TG_SKIP_CLANG:-0}" != 1 ]; then
  section "build (clang-14, -Werror)"
  if "${BAZEL[@]}" build --keep_going --config=clang //... >"$LOGDIR/clang-build.log" 2>&1; then
    passed=$((passed + 1)); echo "clang build: ok"
  else
    tail -n 40 "$LOGDIR/clang-build.log"
    failed=$((failed + 1)); note_fail "bazel build --config=clang //... failed"
  fi
fi

# ---- C unit tests under ASan + UBSan ---------------------------------------
if [ "${TG_ONLY:-}" != e2e ]; then
  section "C unit tests (cmocka, ASan+UBSan)"
  LOGS=$("${BAZEL[@]}" info --config=asan bazel-testlogs 2>/dev/null)
  tests=$("${BAZEL[@]}" query 'tests(//...)' 2>/dev/null)
  # a log an earlier run left must not stand in for this run's
  for t in $tests; do
    rel=${t#//}; rel=${rel/://}
    rm -f "$LOGS/$rel/test.log" "$LOGS/$rel/test.xml"
  done
  "${BAZEL[@]}" test --keep_going --config=asan //... >"$LOGDIR/asan-test.log" 2>&1
  brc=$?
  grep -E '^(//|Executed|FAIL|ERROR)' "$LOGDIR/asan-test.log"
  cfail=0
  for t in $tests; do
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
    passed=$((passed + p)); failed=$((failed + f)); cfail=$((cfail + f))
    if [ "$f" != 0 ]; then
      note_fail "$t: $f failed (log: $log)"
      grep -aE '\[  FAILED  \]|ERROR|runtime error|AddressSanitizer|LeakSanitizer' "$log" | head -n 20
    fi
  done
  if [ $brc != 0 ] && [ $cfail = 0 ]; then
    failed=$((failed + 1)); note_fail "bazel test --config=asan //... exited $brc (log: $LOGDIR/asan-test.log)"
  fi
fi

# ---- fuzz targets, briefly --------------------------------------------------
# Each libFuzzer target (tests/fuzz.sh list) runs TG_FUZZ_SECONDS (default 8)
# from its seed corpus only, with a throwaway working corpus: a finding is one
# failure, a clean run one pass. Their corpora were replayed above as
# ordinary gcc tests (<target>_replay). TG_SKIP_FUZZ=1 skips this.
if [ "${TG_ONLY:-}" != e2e ] && [ "${TG_SKIP_FUZZ:-0}" != 1 ]; then
  section "fuzz targets (libFuzzer, ${TG_FUZZ_SECONDS:-8}s each)"
  mapfile -t fuzzers < <(tests/fuzz.sh list)
  if ((${#fuzzers[@]})) && ! "${BAZEL[@]}" build --config=fuzz "${fuzzers[@]}" >"$LOGDIR/fuzz-build.log" 2>&1; then
    tail -n 40 "$LOGDIR/fuzz-build.log"
    failed=$((failed + 1)); note_fail "bazel build --config=fuzz (fuzz targets) failed"
  else
    for t in "${fuzzers[@]}"; do
      name=${t##*:}
      if TG_FUZZ_WORK="$LOGDIR/fuzz" tests/fuzz.sh "$t" "${TG_FUZZ_SECONDS:-8}" >"$LOGDIR/fuzz-$name.log" 2>&1; then
        passed=$((passed + 1)); echo "$t: $(grep -aoE 'Done [0-9]+ runs in [0-9]+ second' "$LOGDIR/fuzz-$name.log"), no finding"
      else
        failed=$((failed + 1)); note_fail "$t: fuzz finding (log: $LOGDIR/fuzz-$name.log, input in $LOGDIR/fuzz/$name/)"
        grep -aE 'ERROR|fuzz check failed|runtime error|Test unit written' "$LOGDIR/fuzz-$name.log" | head -n 5
      fi
    done
  fi
fi

# ---- end-to-end tests --------------------------------------------------------
# Runs node --test on the files given, against the binaries in $1; counts
# TAP's totals and fails on node's exit status too.
run_e2e() {
  local bin=$1 label=$2; shift 2
  local tap="$LOGDIR/e2e-$label.tap" rc p f c
  mkdir -p "$LOGDIR/e2e-logs-$label"
  TG_BIN=$bin TG_E2E_LOGDIR="$LOGDIR/e2e-logs-$label" node --test --test-concurrency=2 --test-timeout=300000 \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$tap" "$@"
  rc=$?
  p=$(awk '/^# pass /{print $3}' "$tap" | tail -n1)
  f=$(awk '/^# fail /{print $3}' "$tap" | tail -n1)
  c=$(awk '/^# cancelled /{print $3}' "$tap" | tail -n1)
  p=${p:-0}; f=$(( ${f:-0} + ${c:-0} ))
  if [ "$p" = 0 ] && [ "$f" = 0 ]; then f=1; fi
  if [ $rc != 0 ] && [ "$f" = 0 ]; then
    f=1; note_fail "node e2e ($label): node --test exited $rc with no failing test (a failing hook?)"
  fi
  passed=$((passed + p)); failed=$((failed + f))
  [ "$f" != 0 ] && note_fail "node e2e ($label): $f failed (see the spec output above; TAP: $tap)"
  return 0
}

if [ "${TG_ONLY:-}" != c ]; then
  section "end-to-end tests (node --test)"
  mapfile -t files < <(find tests/e2e -name '*.test.mjs' | sort | grep -E "${TG_E2E_FILTER:-.}")
  if ((${#files[@]})); then
    run_e2e "$TG_BIN" gcc "${files[@]}"
  fi
  # The agent's upstream calls go through its lean HTTP/1.1 client by
  # default; libcurl still serves proxies and --upstream-client curl, so the
  # upstream-heavy files run again on it (plain and TLS upstreams, host name
  # checks, faults of the answer, connection reuse, and agent_openai's
  # stream pause and resume, client gone and first-byte timeout: ~5 s).
  mapfile -t upcurl < <(printf '%s\n' "${files[@]}" | grep -E '/agent_(upstream_pool|upstream_tls|json|openai)\.test\.mjs$')
  if ((${#upcurl[@]})); then
    section "end-to-end tests of upstream calls through libcurl (--upstream-client curl)"
    TG_UPSTREAM_CLIENT=curl run_e2e "$TG_BIN" curl "${upcurl[@]}"
  fi
  # Credentials never in logs or receipts (docs/SECURITY.md): every line the
  # agents and control planes of the suite wrote (their records included:
  # the agent tests run with --log-records) is searched for the suite's
  # test credentials: the admin and enrollment tokens, every upstream
  # channel credential (all spelled sk-upstream-*, or sk-from-a-file),
  # every client API key of the agent tests (sk-tg-*: a 9-character display
  # prefix may show, never more), and any secret the control plane made
  # (tg- and 43 base-62 characters).
  section "credentials in the e2e logs"
  leaks="$LOGDIR/e2e-credential-leaks.txt"
  grep -rnoE 'tg-admin-e2e-token-0123456789|enroll-e2e-secret|sk-upstream[A-Za-z0-9_-]*|sk-from-a-file|sk-tg-[a-z][a-z-]{3,}|tg-[0-9A-Za-z]{43}' \
    "$LOGDIR/e2e-logs-gcc" >"$leaks" 2>/dev/null
  nlogs=$(find "$LOGDIR/e2e-logs-gcc" -name '*.log' 2>/dev/null | wc -l)
  if [ "$nlogs" = 0 ]; then
    echo "no daemon logs (TG_E2E_FILTER left no test that starts one): nothing to search"
  elif [ ! -s "$leaks" ]; then
    passed=$((passed + 1)); echo "no test credential in $nlogs daemon logs of the e2e suite"
  else
    failed=$((failed + 1))
    note_fail "test credentials in the e2e logs ($nlogs logs; matches in $leaks)"
    head -n 10 "$leaks"
  fi
  mapfile -t money < <(printf '%s\n' "${files[@]}" | grep -E '/(agent_outbox|cp_agent|cp_settle_rules|cp_settled_compression|agent_revoke|faults_ledger_disk)\.test\.mjs$')
  if [ "${TG_SKIP_ASAN_E2E:-0}" != 1 ] && ((${#money[@]})); then
    section "end-to-end tests that move money, against the ASan+UBSan build"
    if "${BAZEL[@]}" build --config=asan //agent:tollgate-agent //controlplane:tollgate-cp //cli:tollctl \
        //tools/mockllm:mockllm >"$LOGDIR/asan-build.log" 2>&1; then
      run_e2e "$("${BAZEL[@]}" info --config=asan bazel-bin 2>/dev/null)" asan "${money[@]}"
    else
      tail -n 40 "$LOGDIR/asan-build.log"
      failed=$((failed + 1)); note_fail "bazel build --config=asan (e2e binaries) failed"
    fi
  fi
fi

section "summary"
for x in "${failures[@]}"; do echo "FAILED: $x"; done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
