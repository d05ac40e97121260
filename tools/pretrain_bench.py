#!/usr/bin/env python3
"""Pre-training step time, Rust (examples/bench_pretrain.rs) against the PyTorch reference
(HF ViTMAEForPreTraining as the official config + torch.optim.AdamW over timm's groups), in
the same run, alternating, with the same thread count.

Usage: pretrain_bench.py [MODEL BATCH ITERS]...   (default: mae_vit_mini_patch4 128 10,
mae_vit_base_patch16 8 3). Set OMP_NUM_THREADS to fix the threads of both.
Environment: ROUNDS (alternations, 2); PRECISION=bf16 runs both forwards under bf16 autocast
(torch.autocast('cpu', torch.bfloat16), `--precision bf16`); ZERO_GRAD_AB=1 also times Rust with
the gradients zeroed instead of set to None (MAE_ZERO_GRAD=zeros, the port before f625fb0).
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_parity_fixtures import MAE, hf_mae  # noqa: E402

MAE.setdefault("mae_vit_mini_patch4", (32, 4, 128, 6, 4, 64, 4, 4))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_step_time(name, batch, iters):
    import torch
    from timm.optim import param_groups_weight_decay

    model = hf_mae(name, 0.75, False).train()
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    img = MAE[name][0]
    x = torch.randn(batch, 3, img, img)
    bf16 = os.environ.get("PRECISION", "fp32") == "bf16"
    times = []
    for i in range(iters + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(pixel_values=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i > 0:
            times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def main():
    import torch

    rest = sys.argv[1:] or ["mae_vit_mini_patch4", "128", "10", "mae_vit_base_patch16", "8", "3"]
    runs = [(rest[i], int(rest[i + 1]), int(rest[i + 2])) for i in range(0, len(rest), 3)]
    subprocess.run(["cargo", "build", "--release", "--example", "bench_pretrain"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target/release/examples/bench_pretrain")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    precision = os.environ.get("PRECISION", "fp32")
    variants = [{}] + ([{"MAE_ZERO_GRAD": "zeros"}] if os.environ.get("ZERO_GRAD_AB") == "1" else [])
    print(f"load average {os.getloadavg()}", flush=True)
    for name, batch, iters in runs:
        for _ in range(int(os.environ.get("ROUNDS", "2"))):  # alternate to spread the noise of a shared machine
            for env in variants:
                out = subprocess.run([exe, name, str(batch), str(iters), precision], check=True,
                                     capture_output=True, text=True, env={**os.environ, **env})
                print(out.stdout.strip(), flush=True)
            t = torch_step_time(name, batch, iters)
            print(f"torch {name} batch {batch} {precision}: median {t:.4f} s/step, {batch / t:.1f} img/s ({iters} steps)", flush=True)
    print(f"load average {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
