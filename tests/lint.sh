#!/usr/bin/env bash
# Source checks that need no compiler (curl's checksrc idea), run as one suite
# by tests/run.sh:
#  1. banned functions: sprintf, vsprintf, strcpy, strcat, gets, atoi, atol,
#     atoll, strtok (unbounded or error-blind; use snprintf, memcpy with a
#     length, strtol with end checks, strtok_r);
#  2. every C source and header opens with a comment saying what it is for.
# Prints each finding and "lint: N problems"; exits non-zero when N > 0.
set -uo pipefail
cd "$(dirname "$0")/.."
problems=0
mapfile -t files < <(git ls-files '*.c' '*.h' 2>/dev/null; git ls-files --others --exclude-standard '*.c' '*.h' 2>/dev/null)
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  case "$f" in third_party/*) continue ;; esac
  # Strip comments and string literals crudely before matching calls.
  hits=$(sed -e 's://.*$::' -e 's:"[^"]*"::g' "$f" |
         grep -nE '(^|[^A-Za-z0-9_.>])(sprintf|vsprintf|strcpy|strcat|gets|atoi|atol|atoll|strtok)[[:space:]]*\(' || true)
  if [ -n "$hits" ]; then
    while IFS= read -r h; do echo "$f:${h%%:*}: banned function: ${h#*:}"; problems=$((problems + 1)); done <<< "$hits"
  fi
  first=$(grep -m1 -vE '^[[:space:]]*$' "$f" || true)
  case "$first" in
    /\**|//*) ;;
    *) echo "$f:1: does not open with a comment saying what the file is for"; problems=$((problems + 1)) ;;
  esac
done
echo "lint: $problems problems in ${#files[@]} files"
[ "$problems" = 0 ]
