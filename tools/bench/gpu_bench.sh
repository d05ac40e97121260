#!/usr/bin/env bash
# One CUDA run (sized for under 8 minutes on an H100) of the port against PyTorch on the same card:
#  1. parity of the eval forward, same weights and inputs (tools/bench/bench_models.py --parity):
#     vit_base_patch16 (timm) and mae_vit_base_patch16 (HF ViTMAE, same masking noise), fp32 with
#     TF32 off (rel. err. <= 1e-5 or the script fails) and bf16 / fp16 autocast (reported);
#  2. throughput, Rust and PyTorch alternating one step at a time: MAE ViT-L/16 pre-training step
#     (batch 64, bf16 and fp16 with GradScaler) and ViT-B/16, ViT-L/16 eval forward (batch 64,
#     bf16, fp16, fp32), with model FLOPs utilisation against PEAK_TFLOPS (default 790, H100 bf16
#     dense; FLOPs counted analytically, docs/PERFORMANCE.md);
#  3. the AdamW step alone on ViT-B/16 and ViT-L/16 parameters: single-tensor, foreach (CUDA's
#     default in torch and here) and fused (--fused_optimizer), each against torch.optim.AdamW of
#     the same kind.
#
# The GPU machine has no Rust and no internet: build here, carry the binary over, run there:
#   cargo build --release --example bench_step      # target/release/examples/bench_step
#   tools/bench/gpu_bench.sh                        # there; or --cpu-dry-run here
# Python: .venv/bin/python when present, else python3 (torch 2.11, timm, transformers).
# libtorch: LD_LIBRARY_PATH gets /opt/torch/.venv/lib/python3.12/site-packages/torch/lib and the
# torch/lib of that python (the binary's rpath points at this checkout's .venv).
# Results: $OUT if set, else target/gpu_bench: parity.md, throughput.md, optim.md, table.md, log.txt.
#
# usage: tools/bench/gpu_bench.sh [--cpu-dry-run] [--rounds N]
#   --cpu-dry-run  the same code paths on the CPU with the tiny test models and 2 rounds
set -uo pipefail
cd "$(dirname "$0")/../.."

DRY=0 ROUNDS=""
while [ $# -gt 0 ]; do
    case $1 in
        --cpu-dry-run) DRY=1 ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "tools/bench/gpu_bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
RUST=target/release/examples/bench_step
[ -x "$RUST" ] || { echo "$RUST is missing: cargo build --release --example bench_step (and carry it)" >&2; exit 1; }
TORCH_LIB=$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || exit 1
export LD_LIBRARY_PATH="/opt/torch/.venv/lib/python3.12/site-packages/torch/lib:$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$RUST" --help >/dev/null || { echo "$RUST does not start: libtorch not on LD_LIBRARY_PATH ($LD_LIBRARY_PATH)?" >&2; exit 1; }
OUT=${OUT:-target/gpu_bench}
mkdir -p "$OUT"
rm -f "$OUT"/parity.md "$OUT"/throughput.md "$OUT"/optim.md "$OUT"/table.md
PEAK=${PEAK_TFLOPS:-790}

if [ "$DRY" = 1 ]; then
    DEVICE=cpu ROUNDS=${ROUNDS:-2}
    VIT_B=vit_tiny_patch4 VIT_L=vit_tiny_patch4 MAE_B=mae_vit_tiny_patch4 MAE_L=mae_vit_tiny_patch4 B=8 PB=4
else
    DEVICE=cuda ROUNDS=${ROUNDS:-10}
    VIT_B=vit_base_patch16 VIT_L=vit_large_patch16 MAE_B=mae_vit_base_patch16 MAE_L=mae_vit_large_patch16 B=64 PB=8
    $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")' || exit 1
fi
PARITY=()
for p in fp32 bf16 fp16; do PARITY+=("forward:$VIT_B:$PB:$p" "pretrain:$MAE_B:$PB:$p"); done
THROUGHPUT=("pretrain:$MAE_L:$B:bf16" "pretrain:$MAE_L:$B:fp16")
for m in "$VIT_B" "$VIT_L"; do for p in bf16 fp16 fp32; do THROUGHPUT+=("forward:$m:$B:$p"); done; done
# the optimizer step alone, torch.optim.AdamW's three implementations (foreach is CUDA's default)
OPTIM=()
for m in "$VIT_B" "$VIT_L"; do for k in single foreach fused; do OPTIM+=("adamw:$m:0:fp32:$k"); done; done

{
    echo "## mae GPU benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c 'import torch, timm, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__, "transformers", transformers.__version__)'
    echo "## 1. parity"
    timeout 200 $PY tools/bench/bench_models.py --parity --device "$DEVICE" --rust "$RUST" --out "$OUT" \
        --table "$OUT/parity.md" "${PARITY[@]}"
    PARITY_RC=$?
    echo "## 2. throughput ($ROUNDS rounds)"
    timeout 270 $PY tools/bench/bench_models.py --device "$DEVICE" --rounds "$ROUNDS" --peak_tflops "$PEAK" \
        --rust "$RUST" --out "$OUT" --table "$OUT/throughput.md" "${THROUGHPUT[@]}"
    BENCH_RC=$?
    echo "## 3. AdamW step alone ($ROUNDS rounds)"
    timeout 120 $PY tools/bench/bench_models.py --device "$DEVICE" --rounds "$ROUNDS" \
        --rust "$RUST" --out "$OUT" --table "$OUT/optim.md" "${OPTIM[@]}"
    OPTIM_RC=$?
    {
        GPU=$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
        echo "Device $DEVICE${GPU:+ ($GPU)}, $(date -u '+%Y-%m-%d'), tools/bench/gpu_bench.sh$([ "$DRY" = 1 ] && echo ' --cpu-dry-run'); MFU against $PEAK TFLOP/s."
        echo
        cat "$OUT/parity.md" 2>/dev/null || echo "| parity | FAILED (exit $PARITY_RC) |"
        echo
        cat "$OUT/throughput.md" 2>/dev/null || echo "| throughput | FAILED (exit $BENCH_RC) |"
        echo
        cat "$OUT/optim.md" 2>/dev/null || echo "| AdamW step | FAILED (exit $OPTIM_RC) |"
    } > "$OUT/table.md"
    echo
    echo "## markdown table (also in $OUT/table.md)"
    cat "$OUT/table.md"
    [ "$PARITY_RC" = 0 ] && [ "$BENCH_RC" = 0 ] && [ "$OPTIM_RC" = 0 ]
} 2>&1 | tee "$OUT/log.txt"
