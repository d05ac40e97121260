#!/usr/bin/env bash
# Training data pipeline throughput: examples/bench_data.rs (the crop-as-data loader) against
# torchvision's DataLoader (tools/bench/bench_data.py), same folder (tools/fixtures/make_bench_images.py: 300
# ImageNet-like JPEGs), same transform (RandomResizedCrop(224, scale 0.2-1, bicubic),
# RandomHorizontalFlip, ToTensor, Normalize), same batch size and number of worker threads /
# processes, a warm-up of two batches excluded. The two sides run alternately ROUNDS times; prints each run,
# then per worker count the median images/s of each side and their ratio.
#
# usage: tools/bench/bench_data.sh [--quick] [WORKERS...]      (default workers: 1 2)
#   normal: 5 rounds of 3 timed epochs (~2-3 min on 2 idle cores); --quick: 2 rounds of 1 epoch
#   (~30 s of CPU; longer when other jobs load the machine)
# env: BATCH (64), DATA (target/bench_data), MODE (crop; or closure: whole-image decode)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=5 EPOCHS=3
if [ "${1:-}" = "--quick" ]; then ROUNDS=2 EPOCHS=1; shift; fi
[ $# -gt 0 ] && WORKERS=("$@") || WORKERS=(1 2)
BATCH=${BATCH:-64} DATA=${DATA:-target/bench_data} MODE=${MODE:-crop}
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run tools/setup.sh first" >&2; exit 1; }
cargo build --release --quiet --example bench_data
$PY tools/fixtures/make_bench_images.py "$DATA" >/dev/null
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
echo "== data pipeline: $(find "$DATA/train" -name '*.jpg' | wc -l) JPEGs, batch $BATCH, $ROUNDS rounds x $EPOCHS epochs; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  for w in "${WORKERS[@]}"; do
    target/release/examples/bench_data "$DATA" --mode "$MODE" --batch_size "$BATCH" --num_workers "$w" --epochs "$EPOCHS" | tee -a "$LOG"
    $PY tools/bench/bench_data.py "$DATA" --batch_size "$BATCH" --num_workers "$w" --epochs "$EPOCHS" | tee -a "$LOG"
  done
done
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
$PY - "$LOG" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for w in sorted({r["num_workers"] for r in runs}):
    med = {s: statistics.median(r["images_per_s"] for r in runs if r["num_workers"] == w and r["side"] == s)
           for s in sorted({r["side"] for r in runs})}
    rust = next(v for s, v in med.items() if s.startswith("rust"))
    print(f"workers {w}: " + ", ".join(f"{s} {v:.1f} images/s" for s, v in med.items())
          + f"; ratio {rust / med['torchvision']:.2f}x (median of {len(runs) // 2 // len({r['num_workers'] for r in runs})} runs each)")
PY
