#!/usr/bin/env bash
# Performance of the port against the PyTorch reference on this machine: every row runs Rust and
# PyTorch in the same run, alternating, and reports medians and ratios; the last thing printed is
# a markdown table to paste into docs/PERFORMANCE.md.
#
# Rows measured here (tools/bench/bench_models.py driving examples/bench_step.rs, one step at a time):
#   vit_base_patch16 eval forward, fp32 and bf16 autocast, batch 8 and 32 (timm VisionTransformer)
#   mae_vit_base_patch16 pre-training step (forward + backward + AdamW), fp32 and bf16 autocast
#   (HF ViTMAEForPreTraining in the official config + torch.optim.AdamW)
# Rows of the other drivers, called when present (their output is included as they print it):
#   tools/bench/bench_data.sh  data pipeline images/s, Rust against torchvision's DataLoader
#   tools/bench/bench_load.sh  checkpoint load time and RSS, eval end to end, Rust against Python
#
# usage: tools/bench/bench.sh [--quick] [--rounds N] [--no-build]
#   --quick     tiny models (vit_tiny_patch4 / mae_vit_tiny_patch4 at 32 px), 2 rounds, and the
#               drivers' own --quick: well under 2 min on 2 busy cores; tests/cli/bench.rs runs it
#   --rounds N  rounds per row (default 5; quick 2)
#   --no-build  use the existing target/release/examples/bench_step
# Results also go to $OUT (default target/bench): models.md, bench_data.md, bench_load.md, table.md.
# Threads: both sides use libtorch's default (the physical cores); set OMP_NUM_THREADS to fix it.
set -euo pipefail
cd "$(dirname "$0")/../.."

QUICK=0 ROUNDS="" BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "tools/bench/bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
[ "$BUILD" = 1 ] && cargo build --release --quiet --example bench_step

if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-2}
    ROWS=(forward:vit_tiny_patch4:8:fp32 forward:vit_tiny_patch4:8:bf16
          pretrain:mae_vit_tiny_patch4:8:fp32 pretrain:mae_vit_tiny_patch4:8:bf16
          finetune:vit_tiny_patch4:8:fp32 adamw:vit_tiny_patch4:0:fp32:fused)
else
    ROUNDS=${ROUNDS:-5}
    ROWS=(forward:vit_base_patch16:8:fp32 forward:vit_base_patch16:8:bf16
          forward:vit_base_patch16:32:fp32 forward:vit_base_patch16:32:bf16
          pretrain:mae_vit_base_patch16:8:fp32 pretrain:mae_vit_base_patch16:8:bf16
          finetune:vit_mini_patch4:128:fp32 adamw:vit_base_patch16:0:fp32:single
          adamw:vit_base_patch16:0:fp32:foreach adamw:vit_base_patch16:0:fp32:fused)
fi

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
HEADER="$(date -u '+%Y-%m-%d %H:%M UTC'), ${CPU:-unknown CPU}, $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
CMD="tools/bench/bench.sh --rounds $ROUNDS"
[ "$QUICK" = 1 ] && CMD+=" --quick"
HEADER+=", command: $CMD"
echo "## mae benchmark: $HEADER"
LOAD_BEFORE=$(loadavg)
echo "## load average before: $LOAD_BEFORE"

echo "### forward, pre-training and fine-tuning steps, AdamW step (tools/bench/bench_models.py, $ROUNDS rounds)"
$PY tools/bench/bench_models.py --rounds "$ROUNDS" --out "$OUT" --table "$OUT/models.md" "${ROWS[@]}"

# Hooks: the other drivers print their own medians and ratios; a missing one is marked, a failing
# one makes this script fail at the end (after everything else ran).
FAILED=0
hook() { # NAME WHAT
    local script=tools/bench/$1.sh md=$OUT/$1.md
    echo "### $2 ($script)"
    if [ ! -f "$script" ]; then
        echo "| $2 | not measured: hook waiting for $script |" | tee "$md"
        return
    fi
    local args=()
    [ "$QUICK" = 1 ] && args+=(--quick)
    if bash "$script" "${args[@]}" | tee "$md.log"; then # stdout kept; stderr only shown
        # for the table: their markdown lines if any, else their summary (what follows their last
        # "== load average after" line), else everything they printed
        if grep -q '^|' "$md.log"; then
            grep '^|' "$md.log" > "$md"
        elif grep -q '^== load average after' "$md.log"; then
            awk '/^== load average after/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$md.log" > "$md"
        else
            cp "$md.log" "$md"
        fi
    else
        local rc=$?
        echo "| $2 | FAILED: $script exited with status $rc (output above) |" | tee "$md"
        FAILED=1
    fi
}
hook bench_data "data pipeline images/s"
hook bench_load "checkpoint load time, RSS, eval end to end"

LOAD_AFTER=$(loadavg)
{
    echo "Measured $HEADER; load average before $LOAD_BEFORE, after $LOAD_AFTER."
    echo "Speed ratio = PyTorch time / Rust time, median over rounds (> 1: Rust is faster)."
    echo
    cat "$OUT/models.md"
    for h in bench_data bench_load; do echo; cat "$OUT/$h.md"; done
} > "$OUT/table.md"
echo
echo "## markdown table (also in $OUT/table.md)"
cat "$OUT/table.md"
exit "$FAILED"
