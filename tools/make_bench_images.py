"""A folder of ImageNet-like JPEGs for the data-pipeline benchmark (tools/bench_data.sh).

Random crops and rescales of the sample photos in tests/data/images (or --src), saved by Pillow
at JPEG quality 90, 4:2:0, mostly 500x375 / 375x500 / 500x333 as ImageNet's are, in an
ImageFolder layout (OUT/train/<photo>/<n>.jpg). Deterministic (seed 0); skips if OUT/train
already holds --count images.

usage: python tools/make_bench_images.py OUT [--count 300] [--src DIR]
"""
import argparse
import random
from pathlib import Path

from PIL import Image

SIZES = [(500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (450, 500), (640, 480)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "data" / "images")
    args = p.parse_args()
    train = args.out / "train"
    if train.exists() and len(list(train.glob("*/*.jpg"))) == args.count:
        print(f"{train}: {args.count} images already there")
        return
    photos = sorted(f for f in args.src.iterdir() if f.suffix in (".png", ".jpg"))
    rng = random.Random(0)
    for n in range(args.count):
        src = photos[n % len(photos)]
        img = Image.open(src).convert("RGB")
        w, h = img.size
        # a crop of 60-100% of each side, then resized to an ImageNet size (up or down)
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        size = SIZES[rng.randrange(len(SIZES))]
        out = img.crop((x, y, x + cw, y + ch)).resize(size, Image.BICUBIC)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        d = train / src.stem
        d.mkdir(parents=True, exist_ok=True)
        out.save(d / f"{n:04d}.jpg", quality=90)
    print(f"{train}: {args.count} JPEGs from {len(photos)} photos")


if __name__ == "__main__":
    main()
