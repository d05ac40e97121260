#!/usr/bin/env python3
"""Reference for tests/training/linprobe_steps.rs: linear probing iterations as main_linprobe.py
runs them (timm ViT under the official keys, the head replaced by BatchNorm1d(affine=False,
eps=1e-6) + Linear, everything but the head frozen, util/lars.py's LARS and the official lr
function (official.py), CrossEntropyLoss), on one process (CPU, GradScaler disabled).

Usage: linprobe_reference.py OUT.safetensors
Writes init.KEY (the whole state_dict, head.0.* / head.1.* included), the batches, per-iteration
lr and loss, and the state_dict after (after.KEY), plus the state_dict key order (keys.txt beside).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "fixtures")]  # reference/, fixtures/
from make_parity_fixtures import randomize, save_io, timm_vit  # noqa: E402
from official import LARS, adjust_learning_rate  # noqa: E402

import torch  # noqa: E402


class Args:
    lr, min_lr, warmup_epochs, epochs = 0.4, 0.0, 1, 3


ITERS, BATCH, CLASSES, EPOCH, WEIGHT_DECAY = 3, 8, 10, 1, 0.05


def main(out):
    gen = torch.Generator().manual_seed(5)
    model = timm_vit("vit_tiny_patch4", 32, False, CLASSES)
    model.load_state_dict(randomize(model.state_dict(), gen))
    # for linear prob only: hack: revise model's head with BN
    model.head = torch.nn.Sequential(torch.nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6), model.head)
    # freeze all but the head
    for _, p in model.named_parameters():
        p.requires_grad = False
    for _, p in model.head.named_parameters():
        p.requires_grad = True
    tensors = {f"init.{k}": v.clone() for k, v in model.state_dict().items()}
    with open(out + ".keys.txt", "w") as f:
        f.write("\n".join(model.state_dict().keys()) + "\n")
    optimizer = LARS(model.head.parameters(), lr=Args.lr, weight_decay=WEIGHT_DECAY)
    criterion = torch.nn.CrossEntropyLoss()
    model.train(True)
    optimizer.zero_grad()
    lrs, losses = [], []
    for it in range(ITERS):
        adjust_learning_rate(optimizer, it / ITERS + EPOCH, Args)
        x = torch.randn(BATCH, 3, 32, 32, generator=gen)
        y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
        tensors[f"batch{it}.images"], tensors[f"batch{it}.target"] = x, y
        loss = criterion(model(x), y)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        lrs.append(max(g["lr"] for g in optimizer.param_groups))
    tensors["lr"] = torch.tensor(lrs, dtype=torch.float64)
    tensors["loss"] = torch.tensor(losses, dtype=torch.float64)
    tensors.update({f"after.{k}": v for k, v in model.state_dict().items()})
    tensors.update({f"mu.{i}": optimizer.state[p]["mu"] for i, p in enumerate(model.head.parameters())})
    save_io(out, tensors)


if __name__ == "__main__":
    main(sys.argv[1])
