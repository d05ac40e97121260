#!/usr/bin/env python3
"""The reference for `mae eval`: what `main_finetune.py --eval` runs, from pip-installed parts.

torchvision ImageFolder(data_path/val) + the official eval transform (util/datasets.py
build_transform(is_train=False)) + a SequentialSampler DataLoader, timm's VisionTransformer
under the official key names (= models_vit.py), and engine_finetune.evaluate's loop: autocast on
CUDA, CrossEntropyLoss, timm.utils.accuracy, MetricLogger averages (loss: mean of the batch
means; acc: weighted by batch size). Prints the official `* Acc@1 ... Acc@5 ... loss ...` line
and `images/s` (data loading and forward, after the model is loaded).

usage: eval_reference.py --resume CKPT --data_path DIR [--model vit_base_patch16]
       [--batch_size 64] [--input_size 224] [--nb_classes 1000] [--cls_token]
       [--num_workers 10] [--device cpu|cuda] [--save_logits OUT.safetensors]
"""
import argparse
import os
import sys
import time

import torch
from timm.utils import accuracy
from torchvision import datasets

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "fixtures")]  # reference/, fixtures/
from make_parity_fixtures import timm_vit  # noqa: E402
from official import build_eval_transform  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--resume", required=True)
    p.add_argument("--data_path", required=True)
    p.add_argument("--model", default="vit_base_patch16")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--nb_classes", type=int, default=1000)
    p.add_argument("--cls_token", action="store_false", dest="global_pool")
    p.add_argument("--num_workers", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save_logits")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(args.device)

    dataset_val = datasets.ImageFolder(os.path.join(args.data_path, "val"),
                                       transform=build_eval_transform(args.input_size))
    data_loader_val = torch.utils.data.DataLoader(
        dataset_val, sampler=torch.utils.data.SequentialSampler(dataset_val),
        batch_size=args.batch_size, num_workers=args.num_workers,
        pin_memory=device.type == "cuda", drop_last=False)

    model = timm_vit(args.model, args.input_size, args.global_pool, args.nb_classes)
    model.load_state_dict(torch.load(args.resume, map_location="cpu")["model"], strict=True)
    model.to(device).eval()

    criterion = torch.nn.CrossEntropyLoss()
    loss_sum, acc1_sum, acc5_sum, n, batches, logits = 0.0, 0.0, 0.0, 0, 0, []
    start = time.time()
    with torch.no_grad():
        for images, target in data_loader_val:
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            with torch.autocast("cuda", enabled=device.type == "cuda"):
                output = model(images)
                loss = criterion(output, target)
            acc1, acc5 = accuracy(output, target, topk=(1, 5))
            batch_size = images.shape[0]
            loss_sum += loss.item()
            acc1_sum += acc1.item() * batch_size
            acc5_sum += acc5.item() * batch_size
            n += batch_size
            batches += 1
            logits.append(output.float().cpu())
    elapsed = time.time() - start
    print(f"reference: {n} images in {elapsed:.2f} s, {n / elapsed:.2f} images/s")
    print("* Acc@1 {:.3f} Acc@5 {:.3f} loss {:.3f}".format(acc1_sum / n, acc5_sum / n, loss_sum / batches))
    if args.save_logits:
        from safetensors.torch import save_file

        save_file({"logits": torch.cat(logits).contiguous(),
                   "targets": torch.tensor(dataset_val.targets)}, args.save_logits)


if __name__ == "__main__":
    main()
