#!/usr/bin/env python3
"""Rust against the PyTorch reference, same machine, same run, alternating one step at a time.

Driven by tools/bench/bench.sh (CPU) and tools/bench/gpu_bench.sh (CUDA). Each ROW is
TASK:MODEL:BATCH:PRECISION[:ADAMW], ADAMW one of single, foreach, fused (torch.optim.AdamW's
foreach=False / foreach=True / fused=True; default: torch's own choice, foreach on CUDA, single on
the CPU):
- forward:vit_base_patch16:8:bf16 — models_vit eval forward (no_grad) against timm's
  VisionTransformer(global_pool='avg', fc_norm=True) (the official models_vit), under
  torch.autocast(device, dtype) for bf16/fp16;
- pretrain:mae_vit_base_patch16:8:fp32 — one pre-training step as engine_pretrain runs it
  (forward under autocast, backward, AdamW(0.9, 0.95) over timm's weight-decay groups, zero_grad;
  fp16 through torch.amp.GradScaler) against HF ViTMAEForPreTraining in the official config
  (tools/fixtures/make_parity_fixtures.py: hf_mae);
- finetune:vit_mini_patch4:128:fp32 — one fine-tuning step as engine_finetune runs it (train
  forward with drop path 0.1, LabelSmoothingCrossEntropy(0.1) on float32 logits, backward, AdamW
  (0.9, 0.999) over util/lr_decay.param_groups_lrd (weight decay 0.05, layer decay 0.75),
  zero_grad) against timm's VisionTransformer(drop_path_rate=0.1) and timm's loss;
- adamw:vit_large_patch16:0:fp32:fused — the optimizer step alone (AdamW(0.9, 0.95) over timm's
  weight-decay groups of the model's parameters, with fixed random gradients; BATCH is unused).
The Rust side is target/release/examples/bench_step (a server: one timed step per stdin line).
Every round runs one step of each, alternating who goes first; the table gives the medians and
the median over rounds of the per-round speed ratio (PyTorch time / Rust time: > 1 is Rust faster),
which is less exposed to the load of a shared machine drifting between rounds, and the ratio of
the fastest step of each side (load only ever adds time).

--parity instead runs each row's eval forward once on shared random weights and inputs (Rust reads
them from safetensors) and prints the relative error of Rust against PyTorch on the same device
(fp32 with TF32 off; must be <= 1e-5, else the exit status is 1).

Usage: bench_models.py [--device cpu|cuda] [--rounds N] [--parity] [--peak_tflops T] [--out DIR] ROW...
"""
import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, os.path.join(TOOLS, "fixtures"))
sys.path.insert(0, os.path.join(TOOLS, "reference"))
from make_parity_fixtures import MAE, VIT, hf_mae, hf_to_official, official_to_hf, randomize, timm_vit  # noqa: E402

import torch  # noqa: E402

DTYPE = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PARITY_LIMIT = 1e-5  # fp32
VIT = dict(VIT, vit_mini_patch4=(4, 128, 6, 4))  # src/models_vit.rs, the Fashion-MNIST encoder
ADAMW = {None: {}, "single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def parse_row(s):
    try:
        task, model, batch, precision, *impl = s.split(":")
        impl = impl[0] if impl else None
        assert task in ("forward", "pretrain", "finetune", "adamw") and precision in DTYPE and impl in ADAMW
        assert len(s.split(":")) <= 5 and model in (MAE if task == "pretrain" else VIT)
        return task, model, int(batch), precision, impl
    except (ValueError, AssertionError):
        sys.exit(f"bad row {s!r}: expected TASK:MODEL:BATCH:PREC[:ADAMW], TASK forward, finetune or adamw "
                 f"with MODEL in {list(VIT)}, or pretrain with MODEL in {list(MAE)}; PREC in {list(DTYPE)}; "
                 f"ADAMW in single, foreach, fused")


def img_size(model):
    return 32 if model.endswith("_patch4") else 224


# --------------------------------------------------------------------------
# FLOPs, counted analytically (docs/PERFORMANCE.md): a matmul of an [n, k] by a [k, m] is 2nkm.
def vit_blocks_flops(tokens, dim, depth):
    # qkv 3D², proj D², fc1 + fc2 8D² per token; q·kᵀ and attn·v 2T²D each
    return depth * (2 * tokens * 12 * dim * dim + 4 * tokens * tokens * dim)


def flops_per_image(task, model):
    img = img_size(model)
    if task == "adamw":
        return 0
    if task in ("forward", "finetune"):
        patch, dim, depth, _ = VIT[model]
        L = (img // patch) ** 2
        fwd = 2 * L * 3 * patch * patch * dim + vit_blocks_flops(L + 1, dim, depth) + 2 * dim * 1000
        return fwd if task == "forward" else 3 * fwd
    _, patch, dim, depth, _, ddim, ddepth, _ = MAE[model]
    L = (img // patch) ** 2
    keep = 1 + int(L * (1 - 0.75))  # cls token + visible patches
    fwd = (2 * L * 3 * patch * patch * dim + vit_blocks_flops(keep, dim, depth)
           + 2 * keep * dim * ddim + vit_blocks_flops(L + 1, ddim, ddepth) + 2 * L * ddim * 3 * patch * patch)
    return 3 * fwd  # forward + backward (twice the forward)


# --------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device, precision):
    return nullcontext() if precision == "fp32" else torch.autocast(device.type, dtype=DTYPE[precision])


def reference(task, model_name, device):
    if task == "forward":
        return timm_vit(model_name, img_size(model_name), global_pool=True).to(device).eval()
    return hf_mae(model_name, 0.75, False).to(device).train()


def finetune_model(model_name, device):
    """models_vit as main_finetune builds it (drop_path 0.1), in train mode."""
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    patch, dim, depth, heads = VIT[model_name]
    return VisionTransformer(
        img_size=img_size(model_name), patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
        mlp_ratio=4, qkv_bias=True, num_classes=1000, global_pool="avg", fc_norm=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), drop_path_rate=0.1).to(device).train()


def torch_stepper(task, model_name, batch, precision, device, impl):
    from timm.optim import param_groups_weight_decay

    img = img_size(model_name)
    x = torch.randn(batch, 3, img, img, device=device)
    if task == "forward":
        model = reference(task, model_name, device)

        def step():
            with torch.no_grad(), autocast(device, precision):
                model(x)
        return step
    if task == "adamw":
        model = reference("forward", model_name, device)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1.5e-4, betas=(0.9, 0.95),
                                **ADAMW[impl])
        return opt.step
    if task == "finetune":
        from official import param_groups_lrd
        from timm.loss import LabelSmoothingCrossEntropy

        model = finetune_model(model_name, device)
        groups, _ = param_groups_lrd(model, 0.05, model.no_weight_decay(), 0.75)
        opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999), **ADAMW[impl])
        criterion = LabelSmoothingCrossEntropy(0.1)
        target = torch.randint(0, 1000, (batch,), device=device)
        forward = lambda: criterion(model(x).float(), target)  # noqa: E731
    else:
        model = reference(task, model_name, device)
        opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1.5e-4, betas=(0.9, 0.95),
                                **ADAMW[impl])
        forward = lambda: model(pixel_values=x).loss  # noqa: E731
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def step():
        with autocast(device, precision):
            loss = forward()
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        opt.zero_grad()
    return step


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def rust_cmd(rust, task, model, batch, precision, impl, device):
    return [rust, "--task", task, "--model", model, "--batch", str(batch), "--precision", precision,
            "--device", str(device)] + (["--adamw", impl] if impl else [])


def bench_row(args, row, device):
    proc = subprocess.Popen(rust_cmd(args.rust, *row, device), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    ready = proc.stdout.readline().split()  # ready threads N params P
    if len(ready) < 5 or ready[0] != "ready":
        proc.kill()
        sys.exit(f"bench_step {row} failed to start (exit {proc.wait()})")
    step = torch_stepper(*row[:4], device, row[4])
    for _ in range(2):
        step()  # warm-up, as the Rust side

    def rust_step():
        proc.stdin.write("step\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            sys.exit(f"bench_step {row} ended (exit {proc.wait()})")
        return float(line)

    rust_t, torch_t = [], []
    for r in range(args.rounds):
        if r % 2 == 0:
            rust_t.append(rust_step())
            torch_t.append(timed(step, device))
        else:
            torch_t.append(timed(step, device))
            rust_t.append(rust_step())
    proc.stdin.close()
    proc.wait()
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ratio = statistics.median(p / q for p, q in zip(torch_t, rust_t))
    return dict(row=row, rust=statistics.median(rust_t), torch=statistics.median(torch_t), ratio=ratio,
                best=min(torch_t) / min(rust_t),
                threads=(ready[2], torch.get_num_threads()))


def label(row):
    task, model, batch, precision, impl = row
    if task == "adamw":
        return f"{model} AdamW step alone, {impl or 'torch default'}"
    what = {"forward": "eval forward", "pretrain": "pre-training step", "finetune": "fine-tuning step"}[task]
    return f"{model} {what}, batch {batch}, {precision}" + (f", AdamW {impl}" if impl else "")


def print_bench(results, args):
    mfu = args.peak_tflops is not None
    head = ("| measurement | rust s/it | pytorch s/it | rust img/s | pytorch img/s | speed rust/pytorch "
            "| best-of speed |")
    if mfu:
        head += " rust TFLOP/s | rust MFU | pytorch MFU |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for res in results:
        task, model, batch = res["row"][:3]
        ips = ("–", "–") if task == "adamw" else (f"{batch / res['rust']:.1f}", f"{batch / res['torch']:.1f}")
        line = (f"| {label(res['row'])} | {res['rust']:.4f} | {res['torch']:.4f} | {ips[0]} | "
                f"{ips[1]} | {res['ratio']:.3f} | {res['best']:.3f} |")
        if mfu and task != "adamw":
            fl = flops_per_image(task, model) * batch
            tf_r, tf_t = fl / res["rust"] / 1e12, fl / res["torch"] / 1e12
            line += f" {tf_r:.3g} | {100 * tf_r / args.peak_tflops:.1f} % | {100 * tf_t / args.peak_tflops:.1f} % |"
        lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------
# parity: same weights, same input (and masking noise), one eval forward each
def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def parity_row(args, row, device):
    from safetensors.torch import load_file, save_file

    task, model_name, batch, precision, _ = row
    if task in ("finetune", "adamw"):
        task, row = "forward", ("forward",) + tuple(row[1:])  # parity of the model's eval forward
    gen = torch.Generator().manual_seed(0)
    model = reference(task, model_name, torch.device("cpu")).eval()
    img = img_size(model_name)
    x = torch.rand(batch, 3, img, img, generator=gen) * 4 - 2
    io = {"x": x}
    if task == "forward":
        sd = randomize(model.state_dict(), gen)
        model.load_state_dict(sd)
    else:
        _, _, _, depth, _, _, ddepth, _ = MAE[model_name]
        sd = randomize(hf_to_official(model.state_dict(), depth, ddepth), gen, keep=("pos_embed", "decoder_pos_embed"))
        model.load_state_dict(official_to_hf(sd, depth, ddepth))
        io["noise"] = torch.rand(batch, (img // MAE[model_name][1]) ** 2, generator=gen)
    tag = f"parity_{task}_{model_name}_{precision}"
    paths = [os.path.join(args.out, f"{tag}_{k}.safetensors") for k in ("weights", "inputs", "rust")]
    save_file({k: v.contiguous() for k, v in sd.items()}, paths[0])
    save_file(io, paths[1])
    cmd = rust_cmd(args.rust, *row, device) + ["--weights", paths[0], "--inputs", paths[1], "--dump", paths[2]]
    if device.type == "cuda":
        cmd += ["--cudnn", "false"]
    subprocess.run(cmd, check=True)
    rust = load_file(paths[2])
    model = model.to(device)
    with torch.no_grad(), autocast(device, precision):
        if task == "forward":
            errs = {"out": rel_err(rust["out"], model(x.to(device)).float())}
        else:
            o = model(pixel_values=x.to(device), noise=io["noise"].to(device))
            errs = {"loss": rel_err(rust["loss"], o.loss.float().reshape(1)),
                    "pred": rel_err(rust["pred"], o.logits.float()),
                    "mask": rel_err(rust["mask"], o.mask.float())}
    for p in paths:
        os.remove(p)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    worst = max(errs.values())
    ok = worst <= PARITY_LIMIT if precision == "fp32" else math.isfinite(worst)
    return dict(row=row, errs=errs, ok=ok)


def print_parity(results):
    lines = ["| parity (eval forward, same weights and input) | rel. err. rust vs pytorch | limit | ok |",
             "|---|---|---|---|"]
    for res in results:
        errs = ", ".join(f"{k} {v:.2e}" for k, v in res["errs"].items())
        limit = f"{PARITY_LIMIT:.0e}" if res["row"][3] == "fp32" else "reported"
        lines.append(f"| {label(res['row']).replace('pre-training step', 'MAE forward')} | {errs} | {limit} | "
                     f"{'yes' if res['ok'] else 'NO'} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", type=parse_row)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parity", action="store_true")
    ap.add_argument("--peak_tflops", type=float, help="for the MFU columns (H100 bf16 dense: ~790)")
    ap.add_argument("--rust", default=os.path.join(ROOT, "target/release/examples/bench_step"))
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench"))
    ap.add_argument("--table", help="also write the markdown table to this file")
    args = ap.parse_args()
    if not os.access(args.rust, os.X_OK):
        sys.exit(f"{args.rust} is missing: cargo build --release --example bench_step")
    os.makedirs(args.out, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        # fp32 means fp32: no TF32 in matmuls or convolutions (libtorch's own default for matmuls)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    print(f"# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
          f"{'parity' if args.parity else f'{args.rounds} rounds'}", flush=True)
    results = []
    for row in args.rows:
        t = time.perf_counter()
        res = parity_row(args, row, device) if args.parity else bench_row(args, row, device)
        results.append(res)
        # the row as soon as it is measured, so that a run cut short still leaves it in the log
        last = (print_parity if args.parity else lambda r: print_bench(r, args))([res]).splitlines()[-1]
        print(f"# {time.perf_counter() - t:.0f} s: {last}", flush=True)
    table = print_parity(results) if args.parity else print_bench(results, args)
    print(table, flush=True)
    if args.table:
        with open(args.table, "w") as f:
            f.write(table + "\n")
    if args.parity and not all(r["ok"] for r in results):
        sys.exit("parity: fp32 relative error above 1e-5 (see the table)")


if __name__ == "__main__":
    main()
