#!/usr/bin/env bash
# The Fashion-MNIST accuracy table of docs/fashion_mnist_accuracy.md: fine-tuning from the MAE
# checkpoint vs from scratch, linear probing of the MAE encoder vs a random one (same recipe,
# epochs and training subset for each pair). Usage: tools/finetune_fashion_mnist.sh MAE.pth OUT_DIR
# Environment: SUBSET (training images, 10000), FT_EPOCHS (3), LP_EPOCHS (2), RUNS (which runs).
set -euo pipefail
CKPT=$1
OUT=$2
MAE=${MAE:-target/release/mae}
SUBSET=${SUBSET:-10000}
mkdir -p "$OUT"
common=(--dataset fashion_mnist --model vit_mini_patch4 --input_size 32 --nb_classes 10
        --device cpu --num_workers 1 --train_subset "$SUBSET")
ft=(finetune "${common[@]}" --batch_size 128 --epochs "${FT_EPOCHS:-3}" --warmup_epochs 1 --aa none)
lp=(linprobe "${common[@]}" --batch_size 256 --epochs "${LP_EPOCHS:-2}" --warmup_epochs 1)
run() {
    local name=$1; shift
    local t0=$SECONDS
    "$MAE" "$@" --output_dir "$OUT/$name" > "$OUT/$name.out" 2>&1
    echo "$name $((SECONDS - t0)) s: $*" >> "$OUT/times.txt"
}
for r in ${RUNS:-finetune_mae finetune_scratch linprobe_mae linprobe_random}; do
    case $r in
        finetune_mae) run finetune_mae "${ft[@]}" --finetune "$CKPT" ;;
        finetune_scratch) run finetune_scratch "${ft[@]}" ;;
        linprobe_mae) run linprobe_mae "${lp[@]}" --finetune "$CKPT" ;;
        linprobe_random) run linprobe_random "${lp[@]}" ;;
    esac
done
