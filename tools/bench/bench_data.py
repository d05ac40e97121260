"""The reference side of tools/bench/bench_data.sh: torchvision's training data pipeline as
main_pretrain.py builds it (ImageFolder, PIL decode, RandomResizedCrop(224, scale=(0.2, 1.0),
bicubic), RandomHorizontalFlip, ToTensor, Normalize(ImageNet); DataLoader(shuffle, batch_size,
num_workers, drop_last=True, persistent_workers)). A warm-up of two batches (worker start-up,
page cache) is excluded; prints one JSON line with the images/s of the timed epochs.

usage: python tools/bench/bench_data.py DATA_PATH [--batch_size 64] [--num_workers 2] [--epochs 3]
"""
import argparse
import json
import time

import torch
import torchvision.datasets as datasets
import torchvision.transforms as transforms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data_path")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--input_size", type=int, default=224)
    args = p.parse_args()
    transform_train = transforms.Compose([
        transforms.RandomResizedCrop(args.input_size, scale=(0.2, 1.0), interpolation=3),  # 3 is bicubic
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    dataset = datasets.ImageFolder(f"{args.data_path}/train", transform=transform_train)
    loader = torch.utils.data.DataLoader(
        dataset, shuffle=True, batch_size=args.batch_size, num_workers=args.num_workers,
        pin_memory=False, drop_last=True, persistent_workers=args.num_workers > 0)
    for k, _ in enumerate(loader):  # warm-up: worker start-up, page cache (two batches)
        if k == 1:
            break
    n, t0 = 0, time.perf_counter()
    for _ in range(args.epochs):
        for images, _ in loader:
            n += images.shape[0]
    dt = time.perf_counter() - t0
    print(json.dumps({"side": "torchvision", "images": n, "seconds": round(dt, 3),
                      "images_per_s": round(n / dt, 1), "num_workers": args.num_workers,
                      "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
