#!/usr/bin/env bash
# Clones HEAD of this repository into a new, empty temporary folder (nothing beside it: no
# .venv, no target/, no folders next to the checkout) and runs README's test command there, as a
# new user would. Prints the test summary and the exit status.
# Usage: tools/fresh_clone_check.sh [--keep]   (--keep leaves the clone for inspection)
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
KEEP=${1:-}
# README's test command, read off README.md so that this check and .ci/run cannot drift apart
CMD=$(grep -m1 -E '^tools/setup.sh && cargo test' README.md)
[ -n "$CMD" ] || { echo "README.md has no 'tools/setup.sh && cargo test' line" >&2; exit 2; }
grep -qxF "$CMD" .ci/run || { echo ".ci/run does not run README's test command: $CMD" >&2; exit 2; }

PARENT=$(mktemp -d "${TMPDIR:-/tmp}/mae-fresh-clone.XXXXXX")
[ "$KEEP" = "--keep" ] || trap 'rm -rf "$PARENT"' EXIT
git clone --quiet --no-hardlinks "$SRC" "$PARENT/mae" || exit 2
cd "$PARENT/mae"
echo "[fresh-clone] $(git log --oneline -1) in $PARENT/mae (beside it: $(ls -A "$PARENT" | tr '\n' ' '))"
echo "[fresh-clone] running: $CMD"
start=$SECONDS
CI=true bash -c "$CMD" > "$PARENT/test.log" 2>&1
rc=$?
grep -E '^(test result:|     Running|error(\[|:)|failures:|    [a-z_:]+$)' "$PARENT/test.log" | tail -n 80
[ "$KEEP" = "--keep" ] && echo "[fresh-clone] log: $PARENT/test.log"
echo "[fresh-clone] $(grep -c '^test result: ok' "$PARENT/test.log") test binaries ok, $(grep -c '^test result: FAILED' "$PARENT/test.log") failed; $(grep -oE '[0-9]+ passed' "$PARENT/test.log" | awk '{s+=$1} END {print s}') tests passed"
echo "[fresh-clone] exit status $rc after $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
exit $rc
