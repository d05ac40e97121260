#!/usr/bin/env python3
"""torch.optim.AdamW's three implementations and torch.amp.GradScaler on fixed gradients, the
reference of tests/training/optim_kernels.rs.

  optim_reference.py OUT.safetensors

Writes, for parameters of several shapes in two groups (different lr and weight decay, like the
layer-decay groups of fine-tuning) and STEPS steps of seeded gradients:
  p{i}, g{s}_{i}                      the initial parameters and the gradient of step s
  {impl}.p{i}, {impl}.m{i}, {impl}.v{i}, {impl}.step{i}
                                      after STEPS steps of AdamW(foreach=False) / (foreach=True) /
                                      (fused=True), impl = single / foreach / fused
and for GradScaler("cpu", init_scale=2**16, growth_interval=2) around the single-tensor AdamW,
with loss = sum(p * G_s) so that the unscaled gradient is G_s, whose step 2 holds an inf and
step 4 a NaN:
  amp.G{s}_{i}, amp.p{i}, amp.scale (the scale after each step), amp.skipped (1 where the
  optimizer step was skipped)
"""
import sys

import torch
from safetensors.torch import save_file

SHAPES = [(4, 3), (7,), (2, 3, 5), (1,), (16, 8)]
GROUPS = [dict(idx=[0, 1, 3], lr=1e-3, weight_decay=0.0), dict(idx=[2, 4], lr=2.5e-3, weight_decay=0.05)]
STEPS = 5
AMP_STEPS = 7
BETAS = (0.9, 0.999)


def optimizer(params, impl):
    groups = [dict(params=[params[i] for i in g["idx"]], lr=g["lr"], weight_decay=g["weight_decay"])
              for g in GROUPS]
    kw = dict(single=dict(foreach=False), foreach=dict(foreach=True), fused=dict(fused=True))[impl]
    return torch.optim.AdamW(groups, lr=1e-3, betas=BETAS, **kw)


def main(out):
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[torch.randn(s, generator=g) * (0.1 + s_i) for s in SHAPES] for s_i in range(STEPS)]
    res = {f"p{i}": t for i, t in enumerate(init)}
    for s_i, gs in enumerate(grads):
        res.update({f"g{s_i}_{i}": t for i, t in enumerate(gs)})

    for impl in ("single", "foreach", "fused"):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = optimizer(params, impl)
        for gs in grads:
            for p, gr in zip(params, gs):
                p.grad = gr.clone()
            opt.step()
            opt.zero_grad()
        for i, p in enumerate(params):
            st = opt.state[p]
            res[f"{impl}.p{i}"] = p.detach().clone()
            res[f"{impl}.m{i}"] = st["exp_avg"].clone()
            res[f"{impl}.v{i}"] = st["exp_avg_sq"].clone()
            res[f"{impl}.step{i}"] = st["step"].reshape(1).float().clone()

    # GradScaler: inf at step 2, NaN at step 4, growth after 2 good steps
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = optimizer(params, "single")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=2)
    scales, skipped = [], []
    for s_i in range(AMP_STEPS):
        G = [torch.randn(s, generator=g) for s in SHAPES]
        if s_i == 2:
            G[2][1, 0, 3] = float("inf")
        if s_i == 4:
            G[4][5, 2] = float("nan")
        res.update({f"amp.G{s_i}_{i}": t for i, t in enumerate(G)})
        loss = sum((p * gr).sum() for p, gr in zip(params, G))
        before = [p.detach().clone() for p in params]
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # as the official NativeScalerWithGradNormCount does
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        skipped.append(float(all(torch.equal(b, p) for b, p in zip(before, params))))
        scales.append(scaler.get_scale())
    res.update({f"amp.p{i}": p.detach().clone() for i, p in enumerate(params)})
    res["amp.scale"] = torch.tensor(scales, dtype=torch.float64)
    res["amp.skipped"] = torch.tensor(skipped, dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in res.items()}, out)
    print("skipped", skipped, "scales", scales)


if __name__ == "__main__":
    main(sys.argv[1])
