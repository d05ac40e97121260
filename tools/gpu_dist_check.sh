#!/usr/bin/env bash
# The NCCL checks of docs/DISTRIBUTED.md, on a CUDA machine (one GPU is enough), sized for about
# a minute:
#  1. world-size-1 NCCL: `mae pretrain --dist_backend nccl` as rank 0 of 1 (RANK/WORLD_SIZE set,
#     as torchrun would): the init all-reduce, the parameter broadcast, then 6 pre-training
#     steps whose gradients go through ProcessGroupNCCL's all-reduce;
#  2. the same steps in one process without a launcher: the weights must agree (rel. err.);
#  3. 2 ranks on that GPU with --dist_backend gloo (CUDA tensors through Gloo) and --batch_size 4,
#     against 1 process with --batch_size 8 (rel. err. reported).
#
# The GPU machine has no Rust: build the NCCL binary here and carry it over:
#   tools/setup.sh && cargo build --release --features nccl      # target/release/mae
#   tools/gpu_dist_check.sh                                       # there
# libtorch: LD_LIBRARY_PATH gets /opt/torch/.venv/lib/python3.12/site-packages/torch/lib and the
# torch/lib of the python found (.venv/bin/python, else python3; it needs torch and Pillow).
# Results: $OUT if set, else target/gpu_dist_check: log.txt, summary.md, the runs' output dirs.
#
# usage: tools/gpu_dist_check.sh [--cpu-dry-run]   (--cpu-dry-run: gloo on the CPU, no NCCL)
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda BACKEND=nccl
case ${1:-} in
    --cpu-dry-run) DEVICE=cpu BACKEND=gloo ;;
    "") ;;
    *) echo "usage: tools/gpu_dist_check.sh [--cpu-dry-run]" >&2; exit 2 ;;
esac
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
MAE=${MAE:-target/release/mae}
[ -x "$MAE" ] || { echo "$MAE is missing: cargo build --release --features nccl (and carry it)" >&2; exit 1; }
TORCH_LIB=$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || exit 1
export LD_LIBRARY_PATH="/opt/torch/.venv/lib/python3.12/site-packages/torch/lib:$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
OUT=${OUT:-target/gpu_dist_check}
rm -rf "$OUT/runs" && mkdir -p "$OUT/runs"
LOG="$OUT/log.txt"; : > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
nvidia-smi -L 2>/dev/null | tee -a "$LOG"

# 48 PNGs in two classes (no dataset on the GPU machine)
DATA="$OUT/runs/data"
$PY - "$DATA" <<'PY' || exit 1
import sys, os
from PIL import Image
for i in range(48):
    d = os.path.join(sys.argv[1], "train", f"class{i % 2}")
    os.makedirs(d, exist_ok=True)
    Image.frombytes("RGB", (40, 36), bytes((x * 7 + i * 31) % 256 for x in range(40 * 36 * 3))).save(f"{d}/{i:03}.png")
PY

free_port() { $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ARGS=(pretrain --data_path "$DATA" --model mae_vit_tiny_patch4 --input_size 32 --epochs 1 --warmup_epochs 1
      --blr 1e-1 --num_workers 2 --device "$DEVICE" --seed 3 --dist_timeout 120)
run_rank() { # rank world port backend batch out [extra env]
    RANK=$1 WORLD_SIZE=$2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$3 \
        timeout 300 "$MAE" "${ARGS[@]}" --dist_backend "$4" --batch_size "$5" --output_dir "$6"
}
compare() { $PY - "$1" "$2" <<'PY'
import sys, torch
a = torch.load(sys.argv[1], weights_only=True)["model"]; b = torch.load(sys.argv[2], weights_only=True)["model"]
def drop_k(k, t):  # the key third of qkv.bias has a round-off gradient (softmax ignores it)
    if k.endswith("qkv.bias"):
        d = t.shape[0] // 3; return torch.cat([t[:d], t[2 * d:]])
    return t
err = max(((drop_k(k, a[k]) - drop_k(k, b[k])).double().norm() / drop_k(k, a[k]).double().norm().clamp_min(1e-12)).item() for k in a)
print(f"{err:.2e}")
PY
}

status=0
say "## 1. world size 1, --dist_backend $BACKEND, 6 steps of 8"
t0=$SECONDS
if run_rank 0 1 "$(free_port)" "$BACKEND" 8 "$OUT/runs/nccl1" >> "$LOG" 2>&1; then
    say "ok ($((SECONDS - t0)) s): $(grep -m1 'distributed init' "$LOG")"
    say "   $(grep 'Averaged stats' "$LOG" | tail -1)"
else say "FAILED (see $LOG)"; status=1; fi

say "## 2. the same in one process (no launcher)"
if timeout 300 "$MAE" "${ARGS[@]}" --batch_size 8 --output_dir "$OUT/runs/single8" >> "$LOG" 2>&1; then
    e=$(compare "$OUT/runs/single8/checkpoint-0.pth" "$OUT/runs/nccl1/checkpoint-0.pth")
    say "weights, world-1 $BACKEND vs one process: max rel. err. $e"
else say "FAILED (see $LOG)"; status=1; fi

say "## 3. 2 ranks on one device, gloo, --batch_size 4, vs one process with --batch_size 8"
port=$(free_port)
run_rank 1 2 "$port" gloo 4 "$OUT/runs/gloo2" >> "$LOG.rank1" 2>&1 &
pid1=$!
if run_rank 0 2 "$port" gloo 4 "$OUT/runs/gloo2" >> "$LOG" 2>&1 && wait $pid1; then
    e=$(compare "$OUT/runs/single8/checkpoint-0.pth" "$OUT/runs/gloo2/checkpoint-0.pth")
    say "weights, 2 ranks × 4 vs 1 × 8: max rel. err. $e"
else say "FAILED (see $LOG, $LOG.rank1)"; status=1; fi

grep -E '^(##|ok|weights|FAILED|   Averaged)' "$LOG" > "$OUT/summary.md"
exit $status
