#!/usr/bin/env python3
"""Reference for tests/training/bf16.rs: MAE pre-training steps under
`torch.autocast('cpu', dtype=torch.bfloat16)`, and the same steps in float32, as
tools/reference/pretrain_reference.py runs them (HF ViTMAE under the official keys, torch.optim.AdamW over
timm's weight-decay groups, util/lr_sched.py, the same initial weights, batches and seeded
masking noise). Only the forward (and so the loss) runs under autocast, as in
engine_pretrain.py; backward and AdamW run outside it, on float32 weights.

Usage: amp_train_reference.py OUT.safetensors
Writes init.KEY, batches, and for PREC in fp32, bf16: PREC.loss (per iteration, float64),
PREC.w.KEY (weights after the steps), PREC.m.KEY / PREC.v.KEY (AdamW moments), and PREC.dtypes
(1 when every weight, gradient and moment is float32).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "fixtures")]  # reference/, fixtures/
from make_parity_fixtures import save_io  # noqa: E402
from official import adamw_state, adjust_learning_rate, state_by_name  # noqa: E402
from pretrain_reference import SEED, Args, init_and_batches, model_and_optimizer, to_official  # noqa: E402

STEPS, EPOCH = 2, 1  # optimizer steps (accum_iter 1) in the warm-up epoch of the 4-epoch schedule


def run(init, batches, dtype):
    import torch

    model, optimizer = model_and_optimizer(init, False)
    torch.manual_seed(SEED)
    optimizer.zero_grad()
    losses, fp32 = [], True
    for data_iter_step, samples in enumerate(batches):
        adjust_learning_rate(optimizer, data_iter_step / len(batches) + EPOCH, Args)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(pixel_values=samples).loss
        fp32 &= loss.dtype == torch.float32
        losses.append(loss.item())
        loss.backward()
        fp32 &= all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad()
    state = state_by_name(model, optimizer)
    fp32 &= all(p.dtype == torch.float32 for p in model.parameters())
    fp32 &= all(s[k].dtype == torch.float32 for s in state.values() for k in ("exp_avg", "exp_avg_sq"))
    out = {"loss": torch.tensor(losses, dtype=torch.float64), "dtypes": torch.tensor([float(fp32)])}
    out.update(adamw_state(model, state, to_official))
    return out


def main():
    import torch

    torch.set_num_threads(1)
    out_path = sys.argv[1]
    # the initial weights and batches of tools/reference/pretrain_reference.py
    init, batches = init_and_batches()
    batches = batches[:STEPS]
    io = {"batches": batches}
    io.update({"init." + k: v for k, v in init.items()})
    for prec, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        io.update({f"{prec}.{k}": v for k, v in run(init, list(batches), dtype).items()})
    save_io(out_path, io)


if __name__ == "__main__":
    main()
