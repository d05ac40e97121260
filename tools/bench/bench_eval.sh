#!/usr/bin/env bash
# Evaluation throughput, same machine, same run: `mae eval` against the reference Python pipeline
# (tools/reference/eval_reference.py: torchvision ImageFolder + DataLoader + timm ViT-B/16) on one folder of
# real photos (tools/fixtures/make_eval_fixture.py --copies K), same batch size, workers and device.
# Each prints its own images/s (data loading + forward, after the model is loaded). A second
# round with the tiny test ViT at 32 px (Resize(36), CenterCrop(32)) is bound by decoding and
# resizing the photos: it compares the data pipelines.
#
# usage: tools/bench/bench_eval.sh [COPIES=4] [BATCH=16] [WORKERS=2] [DEVICE=cpu]
set -euo pipefail
cd "$(dirname "$0")/../.."
COPIES=${1:-4} BATCH=${2:-16} WORKERS=${3:-2} DEVICE=${4:-cpu}
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run tools/setup.sh first" >&2; exit 1; }
cargo build --release --quiet
$PY tools/fixtures/make_eval_fixture.py target/fixtures/eval                       # the checkpoint
$PY tools/fixtures/make_eval_fixture.py target/bench_eval --copies "$COPIES" --folder_only
CKPT=target/fixtures/eval/vit_base_patch16_eval.pth
N=$(find target/bench_eval/val -type f | wc -l)
ARGS=(--resume "$CKPT" --data_path target/bench_eval --batch_size "$BATCH" --num_workers "$WORKERS" --device "$DEVICE")
echo "== $N images, batch $BATCH, $WORKERS workers, $DEVICE; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "-- mae eval"
/usr/bin/time -f "   wall %e s (process)" target/release/mae eval "${ARGS[@]}" | grep -E "Total time|\* Acc"
echo "-- reference (torchvision + timm)"
/usr/bin/time -f "   wall %e s (process)" $PY tools/reference/eval_reference.py "${ARGS[@]}" | grep -E "images/s|\* Acc"
echo "-- data-bound round: vit_tiny_patch4 at 32 px (parity fixture; tools/fixtures/make_parity_fixtures.py . tiny)"
$PY tools/fixtures/make_parity_fixtures.py target/fixtures/parity tiny
TINY=(--resume target/fixtures/parity/vit_tiny_patch4.pth --model vit_tiny_patch4 --nb_classes 10 --input_size 32
      --data_path target/bench_eval --batch_size "$BATCH" --num_workers "$WORKERS" --device "$DEVICE")
echo "-- mae eval"
target/release/mae eval "${TINY[@]}" | grep -E "Total time"
echo "-- reference (torchvision + timm)"
$PY tools/reference/eval_reference.py "${TINY[@]}" | grep -E "images/s"
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
