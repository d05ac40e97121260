#!/usr/bin/env bash
# Start-up and checkpoint loading, Rust against PyTorch on this machine: fresh processes, Rust
# and Python alternating in every round, medians and ratios at the end.
#
#   load     serialization::load (owned, CRC-checked)       vs torch.load(weights_only=True)
#   mapped   serialization::load_mapped (copy-on-write views of the file, CRC-checked: every page
#            read once) vs torch.load(mmap=True) (returns before reading any data), and
#            mmap=True + clone of every tensor (the data actually read in)
#   model    load_mapped + build the ViT without random init + adopt its tensors (what `mae eval`
#            does before its first image) vs timm ViT (random init) + torch.load + load_state_dict
#   eval     `mae eval` fp32 and bf16 vs tools/reference/eval_reference.py (main_finetune.py --eval),
#            process start to the printed `* Acc@1` line, ViT-B/16 on a small image folder
# Times are seconds; peak RSS is MiB above the process's baseline (runtime loaded, before the
# load), against the file size. The examples print their own lines (examples/bench_load.rs,
# tools/bench/bench_load.py).
#
# usage: tools/bench/bench_load.sh [--quick] [ROUNDS]
#   --quick  one round, ViT-B/16 checkpoint only, 8 images (< 1 min on an idle 2-core machine)
#   full     ROUNDS (default 5) rounds; the load rows also on the MAE ViT-L/16 fp32 parity
#            fixture (1.3 GB) when target/fixtures/parity has it (cargo test --test models)
set -euo pipefail
cd "$(dirname "$0")/../.."
QUICK=0
if [ "${1:-}" = --quick ]; then QUICK=1; shift; fi
ROUNDS=${1:-$([ $QUICK = 1 ] && echo 1 || echo 5)}
IMAGES=$([ $QUICK = 1 ] && echo 8 || echo 16)
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run tools/setup.sh first" >&2; exit 1; }
cargo build --release --quiet --bin mae --example bench_load
$PY tools/fixtures/make_eval_fixture.py target/fixtures/eval >/dev/null   # ViT-B/16 checkpoint, 38 images
BASE=target/fixtures/eval/vit_base_patch16_eval.pth
LARGE=target/fixtures/parity/mae_vit_large_patch16.pth
CKPTS=("$BASE")
if [ $QUICK = 0 ] && [ -f "$LARGE" ]; then CKPTS+=("$LARGE"); fi

# The image folder: the first IMAGES files of the fixture's val/, class folders kept.
DATA=target/bench_load/data$IMAGES
if [ ! -d "$DATA/val" ]; then
    find target/fixtures/eval/val -type f | sort | head -n "$IMAGES" | while read -r f; do
        c=$(basename "$(dirname "$f")")
        mkdir -p "$DATA/val/$c"
        cp "$f" "$DATA/val/$c/"
    done
fi
OUT=target/bench_load/results.txt
: >"$OUT"
echo "== $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $ROUNDS round(s), $IMAGES images"

# runs a command; appends "name seconds peak_above_mb file_mb" (eval: wall seconds, peak RSS)
measure() {
    local line
    line=$("$@" | tail -n 1)
    echo "   $line"
    awk -v ck="$ck" '{for (i = 2; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]}
        print $1 "@" ck, v["load_s"], v["peak_above_mb"], v["file_mb"]}' <<<"$line" >>"$OUT"
}
eval_run() { # name, command...
    local name=$1 t
    shift
    t=$(mktemp)
    /usr/bin/time -f "%e %M" -o "$t" "$@" >"$t.out" 2>&1 || { cat "$t.out" >&2; exit 1; }
    grep -q "^\* Acc@1" "$t.out" || { cat "$t.out" >&2; exit 1; }
    read -r wall rss <"$t"
    echo "   $name: ${wall} s, peak RSS $((rss / 1024)) MiB; $(grep '^\* Acc@1' "$t.out")"
    echo "$name@eval $wall $((rss / 1024)) 0" >>"$OUT"
    rm -f "$t" "$t.out"
}
EVAL=(--resume "$BASE" --data_path "$DATA" --batch_size 16 --num_workers 2 --device cpu)
for r in $(seq "$ROUNDS"); do
    echo "-- round $r"
    for ck in "${CKPTS[@]}"; do
        ckname=$(basename "$ck" .pth)
        ck=$ckname measure target/release/examples/bench_load "$ck" load
        ck=$ckname measure target/release/examples/bench_load "$ck" mapped
        ck=$ckname measure $PY tools/bench/bench_load.py "$ck" load
        ck=$ckname measure $PY tools/bench/bench_load.py "$ck" mmap
        ck=$ckname measure $PY tools/bench/bench_load.py "$ck" mmap_touch
    done
    ck=$(basename "$BASE" .pth) measure target/release/examples/bench_load "$BASE" model
    ck=$(basename "$BASE" .pth) measure $PY tools/bench/bench_load.py "$BASE" model
    eval_run "mae-eval-fp32" target/release/mae eval "${EVAL[@]}"
    eval_run "reference-fp32" $PY tools/reference/eval_reference.py "${EVAL[@]}"
    eval_run "mae-eval-bf16" target/release/mae eval "${EVAL[@]}" --precision bf16
done
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
$PY - "$OUT" <<'PYEOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, s, mb, file_mb = line.split()
    rows[name].append((float(s), float(mb), float(file_mb)))
med = {k: (statistics.median(a for a, _, _ in v), statistics.median(b for _, b, _ in v), v[0][2])
       for k, v in rows.items()}
print(f"{'median of ' + str(len(next(iter(rows.values())))) + ' run(s)':42} {'seconds':>9} {'peak MiB':>9}")
for k, (s, mb, f) in med.items():
    extra = f"  ({mb / f:.2f}x the {f:.0f} MiB file above baseline)" if f else "  (process peak RSS)"
    print(f"{k:42} {s:9.3f} {mb:9.0f}{extra}")
def ratio(a, b, what):
    if a in med and b in med:
        print(f"ratio {what:58} {med[a][0] / med[b][0]:.2f}")
for ck in sorted({k.split("@")[1] for k in med if "@" in k and not k.endswith("@eval")}):
    ratio(f"rust-load@{ck}", f"py-load@{ck}", f"rust load / torch.load, {ck}")
    ratio(f"rust-mapped@{ck}", f"py-load@{ck}", f"rust load_mapped / torch.load, {ck}")
    ratio(f"rust-mapped@{ck}", f"py-mmap@{ck}", f"rust load_mapped / torch.load(mmap=True), {ck}")
    ratio(f"rust-model@{ck}", f"py-model@{ck}", f"rust model+load / python model+load, {ck}")
ratio("reference-fp32@eval", "mae-eval-fp32@eval", "eval end to end: reference / mae eval fp32 (speed-up)")
ratio("reference-fp32@eval", "mae-eval-bf16@eval", "eval end to end: reference fp32 / mae eval bf16")
PYEOF
