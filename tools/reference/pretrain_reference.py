#!/usr/bin/env python3
"""Reference for tests/parity_pretrain.rs: MAE pre-training steps in PyTorch, as the official
engine_pretrain.train_one_epoch runs them on one process (CPU, GradScaler disabled).

Model: HuggingFace ViTMAEForPreTraining as the tiny official config, weights mapped to/from the
official key names (tools/fixtures/make_parity_fixtures.py). Optimiser: torch.optim.AdamW(betas=(0.9,
0.95)) over timm's param_groups_weight_decay (the semantics of timm 0.3.2 add_weight_decay for
these parameters). Learning rate: util/lr_sched.adjust_learning_rate, restated below.
Masking noise: torch.rand(N, L) from the global generator seeded with torch.manual_seed(seed)
before the epoch, drawn in the forward as the official random_masking does.

Usage: pretrain_reference.py OUT.safetensors
Writes the initial weights (init.KEY), the batches, and for each case TAG: per-iteration lr and
loss (float64), the weights (TAG.w.KEY), AdamW moments (TAG.m.KEY, TAG.v.KEY) and step count
after the epoch, all under the official key names.
"""
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "fixtures")]  # reference/, fixtures/
from make_parity_fixtures import MAE, hf_mae, hf_to_official, official_to_hf, randomize, save_io  # noqa: E402

NAME = "mae_vit_tiny_patch4"
DEPTH, DEC_DEPTH = MAE[NAME][3], MAE[NAME][6]
# (tag, optimizer steps, accum_iter, norm_pix_loss, epoch): the schedule has epochs=4,
# warmup_epochs=2, so epoch 1 is in the warmup and epoch 3 on the cosine.
CASES = [
    ("s1_a1_pix0_e1", 1, 1, False, 1),
    ("s3_a1_pix0_e1", 3, 1, False, 1),
    ("s3_a1_pix1_e3", 3, 1, True, 3),
    ("s3_a2_pix0_e3", 3, 2, False, 3),
    ("s3_a2_pix1_e1", 3, 2, True, 1),
]
LR, MIN_LR, WARMUP_EPOCHS, EPOCHS, WEIGHT_DECAY, SEED, BATCH = 1e-3, 1e-5, 2, 4, 0.05, 7, 4


class Args:
    lr, min_lr, warmup_epochs, epochs = LR, MIN_LR, WARMUP_EPOCHS, EPOCHS


def adjust_learning_rate(optimizer, epoch, args):
    """util/lr_sched.py"""
    if epoch < args.warmup_epochs:
        lr = args.lr * epoch / args.warmup_epochs
    else:
        lr = args.min_lr + (args.lr - args.min_lr) * 0.5 * \
            (1. + math.cos(math.pi * (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs)))
    for param_group in optimizer.param_groups:
        if "lr_scale" in param_group:
            param_group["lr"] = lr * param_group["lr_scale"]
        else:
            param_group["lr"] = lr
    return lr


def run_case(init, batches, accum_iter, norm_pix_loss, epoch):
    import torch
    from timm.optim import param_groups_weight_decay

    model = hf_mae(NAME, 0.75, norm_pix_loss)
    model.load_state_dict(official_to_hf(init, DEPTH, DEC_DEPTH), strict=True)
    model.train()
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, WEIGHT_DECAY), lr=LR, betas=(0.9, 0.95))
    torch.manual_seed(SEED)
    optimizer.zero_grad()
    lrs, losses = [], []
    for data_iter_step, samples in enumerate(batches):
        if data_iter_step % accum_iter == 0:
            adjust_learning_rate(optimizer, data_iter_step / len(batches) + epoch, Args)
        loss = model(pixel_values=samples).loss
        losses.append(loss.item())
        loss /= accum_iter
        loss.backward()
        if (data_iter_step + 1) % accum_iter == 0:
            optimizer.step()
            optimizer.zero_grad()
        lrs.append(optimizer.param_groups[0]["lr"])
    named = dict(model.named_parameters())
    state = {n: optimizer.state[p] for n, p in named.items() if p in optimizer.state}
    out = {
        "lr": torch.tensor(lrs, dtype=torch.float64),
        "loss": torch.tensor(losses, dtype=torch.float64),
    }
    for k, v in hf_to_official(model.state_dict(), DEPTH, DEC_DEPTH).items():
        out["w." + k] = v
    for short, key in [("m", "exp_avg"), ("v", "exp_avg_sq")]:
        for k, v in hf_to_official({n: s[key] for n, s in state.items()}, DEPTH, DEC_DEPTH).items():
            out[f"{short}.{k}"] = v
    out["step"] = next(iter(state.values()))["step"].reshape(1)
    return out


def main():
    import torch

    torch.set_num_threads(1)
    out_path = sys.argv[1]
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    init = hf_to_official(hf_mae(NAME, 0.75, False).state_dict(), DEPTH, DEC_DEPTH)
    init = randomize(init, gen, keep=("pos_embed", "decoder_pos_embed"))
    img = MAE[NAME][0]
    batches = torch.randn(6, BATCH, 3, img, img, generator=gen)
    io = {"batches": batches}
    io.update({"init." + k: v for k, v in init.items()})
    for tag, steps, accum_iter, npl, epoch in CASES:
        res = run_case(init, list(batches[: steps * accum_iter]), accum_iter, npl, epoch)
        io.update({f"{tag}.{k}": v for k, v in res.items()})
    save_io(out_path, io)


if __name__ == "__main__":
    main()
