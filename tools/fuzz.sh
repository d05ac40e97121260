#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/fuzz_targets/*.rs) one after the other with libFuzzer, on the
# seed corpora of tools/fixtures/make_fuzz_corpus.py, and prints each one's final stats.
#   tools/fuzz.sh                 30 s per target: a cheap check after any change to a parser
#   tools/fuzz.sh -runs=1000000   one million executions per target (docs/RELIABILITY.md's run
#                                 sets each target's count: TARGETS=X tools/fuzz.sh -runs=N)
#   TARGETS="pth image" tools/fuzz.sh -max_total_time=600
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz). A crash, timeout or
# OOM leaves its input in fuzz/artifacts/TARGET/ and stops the script (exit status 1).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=${TARGETS:-"pickle pth safetensors idx image"}
LIMIT=${*:--max_total_time=30}
[ -d fuzz/corpus/pth ] || .venv/bin/python tools/fixtures/make_fuzz_corpus.py
# libtorch's libraries for the fuzz binaries (the crate's own binaries carry an rpath)
export LD_LIBRARY_PATH="$PWD/.libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo +nightly fuzz build -O
mkdir -p fuzz/logs
for t in $TARGETS; do
    mkdir -p "fuzz/corpus/$t.work"
    echo "== $t"
    status=0
    cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t.work" "fuzz/corpus/$t" -- \
        -rss_limit_mb=2048 -timeout=5 -print_final_stats=1 $LIMIT > "fuzz/logs/$t.log" 2>&1 || status=$?
    # libFuzzer separates '#N' from INITED/DONE with a tab; the DONE line has the final coverage
    grep -aE '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)|SUMMARY|Done )' "fuzz/logs/$t.log" || true
    [ "$status" -eq 0 ] || { tail -40 "fuzz/logs/$t.log"; echo "$t: libFuzzer found a failure (fuzz/artifacts/$t)"; exit 1; }
done
