#!/usr/bin/env python3
"""Reference for tests/training/pretrain_steps.rs: MAE pre-training steps in PyTorch, as the
official engine_pretrain.train_one_epoch runs them on one process (CPU, GradScaler disabled).

Model: HuggingFace ViTMAEForPreTraining as the tiny official config, weights mapped to/from the
official key names (tools/fixtures/make_parity_fixtures.py). Optimiser: torch.optim.AdamW(betas=(0.9,
0.95)) over timm's param_groups_weight_decay (the semantics of timm 0.3.2 add_weight_decay for
these parameters). Learning rate: util/lr_sched.adjust_learning_rate (official.py).
Masking noise: torch.rand(N, L) from the global generator seeded with torch.manual_seed(seed)
before the epoch, drawn in the forward as the official random_masking does.

Usage: pretrain_reference.py OUT.safetensors
Writes the initial weights (init.KEY), the batches, and for each case TAG: per-iteration lr and
loss (float64), the weights (TAG.w.KEY), AdamW moments (TAG.m.KEY, TAG.v.KEY) and step count
after the epoch, all under the official key names.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "fixtures")]  # reference/, fixtures/
from make_parity_fixtures import MAE, hf_mae, hf_to_official, official_to_hf, randomize, save_io  # noqa: E402
from official import adamw_state, adjust_learning_rate, state_by_name  # noqa: E402

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


def to_official(sd):
    """The HF model's names -> the official ones."""
    return hf_to_official(sd, DEPTH, DEC_DEPTH)


def init_and_batches():
    """The initial weights (official keys; pos embeds the sin-cos tables) and 6 batches of BATCH."""
    import torch

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    init = to_official(hf_mae(NAME, 0.75, False).state_dict())
    init = randomize(init, gen, keep=("pos_embed", "decoder_pos_embed"))
    img = MAE[NAME][0]
    return init, torch.randn(6, BATCH, 3, img, img, generator=gen)


def model_and_optimizer(init, norm_pix_loss):
    """HF ViTMAE loaded with `init` in train mode, and main_pretrain's AdamW over its groups."""
    import torch
    from timm.optim import param_groups_weight_decay

    model = hf_mae(NAME, 0.75, norm_pix_loss)
    model.load_state_dict(official_to_hf(init, DEPTH, DEC_DEPTH), strict=True)
    model.train()
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, WEIGHT_DECAY), lr=LR, betas=(0.9, 0.95))
    return model, optimizer


def run_case(init, batches, accum_iter, norm_pix_loss, epoch):
    import torch

    model, optimizer = model_and_optimizer(init, norm_pix_loss)
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
    state = state_by_name(model, optimizer)
    out = {
        "lr": torch.tensor(lrs, dtype=torch.float64),
        "loss": torch.tensor(losses, dtype=torch.float64),
    }
    out.update(adamw_state(model, state, to_official))
    out["step"] = next(iter(state.values()))["step"].reshape(1)
    return out


def main():
    import torch

    torch.set_num_threads(1)
    out_path = sys.argv[1]
    init, batches = init_and_batches()
    io = {"batches": batches}
    io.update({"init." + k: v for k, v in init.items()})
    for tag, steps, accum_iter, npl, epoch in CASES:
        res = run_case(init, list(batches[: steps * accum_iter]), accum_iter, npl, epoch)
        io.update({f"{tag}.{k}": v for k, v in res.items()})
    save_io(out_path, io)


if __name__ == "__main__":
    main()
