#!/usr/bin/env python3
"""Training end to end, `mae` against the same recipe in PyTorch (tools/reference/mae_recipe.py):
s/it and images/s of the training loop of `pretrain`, `finetune` and `linprobe`, measured on the
second of two epochs (the first warms up), the two implementations run alternately ROUNDS times
with the same flags and the same intra-op threads (OMP_NUM_THREADS=--threads, default: every
core), on an ImageFolder of the first N Fashion-MNIST training images as PNGs (and the first
1,000 test images as its val/; --dataset fashion_mnist reads the IDX files instead) at 32 px with
the mini models and the official defaults otherwise (fine-tuning: RandAugment, RandomErasing
0.25, DropPath 0.1, label smoothing 0.1, layer decay 0.75).

  tools/bench/bench_train.py [--recipes pretrain finetune linprobe] [--rounds 2] [--subset 8192]
                             [--batch_size 128] [--num_workers 2] [--threads N] [--fused_optimizer]
                             [--dataset imagefolder|fashion_mnist] [--json OUT]

--fused_optimizer gives both sides AdamW's fused kernel (pretrain and finetune; linprobe's LARS
has none).

Prints a markdown table with the ratio (PyTorch s/it over mae s/it: above 1, mae is faster) and
the CPU with its bf16 flags.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"pretrain": "mae_vit_mini_patch4", "finetune": "vit_mini_patch4", "linprobe": "vit_mini_patch4"}


def cpu_name():
    info = open("/proc/cpuinfo").read()
    name = re.search(r"model name\s*:\s*(.*)", info)
    flags = [f for f in ("amx_bf16", "avx512_bf16") if f in info]
    return f"{name.group(1) if name else 'unknown'} ({os.cpu_count()} cores; {', '.join(flags) or 'no bf16 flags'})"


def imagefolder(subset):
    """target/bench_train/fashion_mnist_png_N: train/ (the first N training images) and val/ (the
    first 1,000 test images) as grey PNGs, one folder per class, written once."""
    sys.path.insert(0, str(ROOT / "tools" / "reference"))
    from mae_recipe import FASHION_MNIST_ROOT, read_idx
    from PIL import Image

    root = ROOT / "target" / "bench_train" / f"fashion_mnist_png_{subset}"
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for split, prefix, n in (("train", "train", subset), ("val", "t10k", 1000)):
        images = read_idx(FASHION_MNIST_ROOT, f"{prefix}-images-idx3-ubyte")[:n]
        labels = read_idx(FASHION_MNIST_ROOT, f"{prefix}-labels-idx1-ubyte")[:n]
        for i, (img, label) in enumerate(zip(images, labels)):
            d = root / split / f"class{label}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(d / f"{i:05d}.png")
    (root / "done").write_text("")
    return root


def flags(recipe, a, out):
    data = ["--dataset", "fashion_mnist"] if a.data_path is None else \
        ["--dataset", "imagefolder", "--data_path", str(a.data_path)]
    f = data + ["--input_size", "32", "--device", "cpu", "--num_workers", str(a.num_workers),
         "--train_subset", str(a.subset), "--batch_size", str(a.batch_size), "--epochs", "2", "--warmup_epochs", "1",
         "--model", MODELS[recipe], "--output_dir", str(out), "--seed", "0"]
    if a.fused_optimizer and recipe != "linprobe":
        f += ["--fused_optimizer"]
    if recipe == "pretrain":
        f += ["--norm_pix_loss", "--blr", "1.5e-4"]
    else:
        f += ["--nb_classes", "10"]
    return f


def run(impl, recipe, a, out):
    if impl == "mae":
        cmd = [str(ROOT / "target" / "release" / "mae"), recipe]
    else:
        cmd = [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "tools" / "reference" / "mae_recipe.py"), recipe]
    cmd += flags(recipe, a, out)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}")
    t = re.findall(r"Epoch: \[1\]\s+Total time: \S+ \(([0-9.]+) s / it", p.stdout)
    if not t:
        sys.exit(f"no 'Epoch: [1] Total time' line in the output of {' '.join(cmd)}")
    return float(t[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["pretrain", "finetune", "linprobe"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--subset", type=int, default=8192)
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--fused_optimizer", action="store_true")
    ap.add_argument("--dataset", choices=["imagefolder", "fashion_mnist"], default="imagefolder")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if not (ROOT / "target" / "release" / "mae").exists():
        sys.exit("target/release/mae is missing: cargo build --release first")
    a.data_path = imagefolder(a.subset) if a.dataset == "imagefolder" else None
    rows = []
    print(f"| recipe | mae s/it | PyTorch s/it | mae img/s | PyTorch img/s | mae speed |")
    print("|---|---|---|---|---|---|")
    for recipe in a.recipes:
        times = {"mae": [], "torch": []}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(a.rounds):
                for impl in ("torch", "mae") if r % 2 else ("mae", "torch"):
                    times[impl].append(run(impl, recipe, a, Path(tmp) / f"{impl}{r}"))
        m, t = statistics.median(times["mae"]), statistics.median(times["torch"])
        print(f"| {recipe} | {m:.3f} | {t:.3f} | {a.batch_size / m:.0f} | {a.batch_size / t:.0f} | {t / m:.2f}× |",
              flush=True)
        rows.append(dict(recipe=recipe, mae=times["mae"], torch=times["torch"], speed=t / m))
    print(f"\n{cpu_name()}; batch {a.batch_size}, {a.subset} images, --num_workers {a.num_workers}, "
          f"{'an ImageFolder of PNGs' if a.data_path else 'the IDX files'}, {a.threads} threads each{', AdamW fused' if a.fused_optimizer else ''}, median of {a.rounds} alternating runs, second epoch")
    if a.json:
        a.json.write_text(json.dumps(dict(cpu=cpu_name(), batch_size=a.batch_size, subset=a.subset, rows=rows),
                                     indent=1) + "\n")


if __name__ == "__main__":
    main()
