#!/usr/bin/env python3
"""PyTorch side of examples/bench_amp.rs: timm's vit_base_patch16 as models_vit builds it
(global pool, fc_norm), eval forward under torch.no_grad() at 224², in float32 or under
torch.autocast('cpu', dtype=torch.bfloat16). Driven line by line over stdin so that the Rust
bench can alternate with it in the same run: each line `fp32` or `bf16` runs one forward and
prints its seconds. Usage: bench_amp.py BATCH (prints `ready threads N` after the warm-up)."""
import sys
import time
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 8
model = VisionTransformer(
    patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True,
    global_pool="avg", fc_norm=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
).eval()
x = torch.randn(batch, 3, 224, 224)
ctx = {"fp32": nullcontext, "bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}


def forward(precision):
    with torch.no_grad(), ctx[precision]():
        t = time.perf_counter()
        model(x)
        return time.perf_counter() - t


for p in ctx:
    forward(p)  # warm-up
print(f"ready threads {torch.get_num_threads()}", flush=True)
for line in sys.stdin:
    print(f"{forward(line.strip()):.6f}", flush=True)
