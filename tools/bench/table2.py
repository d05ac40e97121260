#!/usr/bin/env python3
"""The paper's Table 2 (wall-clock pre-training time): `mae pretrain`'s step time of the encoder with
mask tokens ("encoder w/ [M]", 8-block decoder) against MAE with an 8-block and a 1-block decoder,
on the same batch, data and machine.

Each variant is a short `mae pretrain` run on an ImageFolder of ImageNet-like JPEGs
(tools/fixtures/make_bench_images.py): 2 epochs of STEPS iterations, the second epoch's
`Total time (s / it)` kept (the first warms up). The variants run one after the other, ROUNDS
times in turn, so a slow drift of the machine touches them alike; the medians give the speed-ups,
printed beside the paper's and beside the FLOPs ratio that `mae pretrain` prints at start.

  tools/bench/table2.py [--model mae_vit_large_patch16] [--batch_size 8] [--steps 3] [--rounds 3]
                        [--threads 2] [--device cpu] [--json OUT]

A CPU run is valid for these ratios: the variants are compute-bound on the same kernels. On a GPU,
pass --device cuda (and a larger --batch_size).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAPER = {  # Table 2: speed-up of MAE over encoder w/ [M] (8-block decoder)
    "mae_vit_large_patch16": {"dec8": 2.8, "dec1": 3.7},
    "mae_vit_huge_patch14": {"dec8": 3.5, "dec1": 4.1},
}
VARIANTS = [
    ("encoder w/ [M], decoder 8", "encmask", ["--encoder_mask_token"]),
    ("MAE, decoder 8", "dec8", []),
    ("MAE, decoder 1", "dec1", ["--decoder_depth", "1"]),
]


def cpu_name():
    info = open("/proc/cpuinfo").read()
    name = re.search(r"model name\s*:\s*(.*)", info)
    flags = [f for f in ("amx_bf16", "avx512_bf16") if f in info]
    return f"{name.group(1) if name else 'unknown'} ({os.cpu_count()} cores; {', '.join(flags) or 'no bf16 flags'})"


def run(mae, model, flags, a, data, out):
    cmd = [mae, "pretrain", "--model", model, "--data_path", str(data), "--batch_size", str(a.batch_size),
           "--train_subset", str(a.batch_size * a.steps), "--epochs", "2", "--warmup_epochs", "0",
           "--num_workers", "1", "--device", a.device, "--output_dir", "", "--log_dir", "", "--norm_pix_loss",
           "--blr", "1.5e-4"] + flags
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    step = re.findall(r"Epoch: \[1\] Total time: \S+ \(([0-9.]+) s / it\)", p.stdout)
    gflops = re.search(r"encoder ([0-9.]+), decoder ([0-9.]+), total ([0-9.]+)", p.stdout)
    if not step or not gflops:
        sys.exit(f"no step time or FLOPs line in the output of {' '.join(cmd)}")
    return float(step[0]), [float(x) for x in gflops.groups()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mae_vit_large_patch16")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    mae = str(ROOT / "target" / "release" / "mae")
    if not Path(mae).exists():
        sys.exit(f"{mae} is missing: cargo build --release first")
    data = ROOT / "target" / "bench_images"
    subprocess.run([sys.executable, str(ROOT / "tools" / "fixtures" / "make_bench_images.py"), str(data),
                    "--count", str(max(300, a.batch_size * a.steps))], check=True, capture_output=True)
    times = {tag: [] for _, tag, _ in VARIANTS}
    flops = {}
    with tempfile.TemporaryDirectory() as out:
        for r in range(a.rounds):
            for label, tag, flags in VARIANTS:
                t, f = run(mae, a.model, flags, a, data, out)
                times[tag].append(t)
                flops[tag] = f
                print(f"round {r + 1}: {label}: {t:.3f} s/it", flush=True)
    med = {tag: statistics.median(v) for tag, v in times.items()}
    paper = PAPER.get(a.model, {})
    print(f"\n{a.model}, batch {a.batch_size}, {a.device}, {a.threads} threads, {cpu_name()}")
    print("| variant | s/it (median of {}) | speed-up over w/ [M] | paper | GFLOPs/image | FLOPs ratio |".format(a.rounds))
    print("|---|---|---|---|---|---|")
    rows = []
    for label, tag, _ in VARIANTS:
        speed = med["encmask"] / med[tag]
        fr = flops["encmask"][2] / flops[tag][2]
        p = paper.get(tag)
        print(f"| {label} | {med[tag]:.3f} | {speed:.2f}× | {f'{p}×' if p else '—'} | {flops[tag][2]:.1f} | {fr:.2f}× |")
        rows.append(dict(variant=label, tag=tag, s_per_it=times[tag], median=med[tag], speedup=speed,
                         paper=p, gflops=flops[tag], flops_ratio=fr))
    if a.json:
        a.json.write_text(json.dumps(dict(model=a.model, batch_size=a.batch_size, device=a.device,
                                          threads=a.threads, cpu=cpu_name(), rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
