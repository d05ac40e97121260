#!/usr/bin/env python3
"""CPU forward time of timm's vit_base_patch16 as models_vit builds it (batch 8, 224², eval,
no_grad): the reference for examples/bench_vit.rs. Usage: parity_bench_vit.py [batch] [iters]"""
import sys
import time
from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 8
iters = int(sys.argv[2]) if len(sys.argv) > 2 else 5
model = VisionTransformer(
    patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True,
    global_pool="avg", fc_norm=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
).eval()
x = torch.randn(batch, 3, 224, 224)
print("threads:", torch.get_num_threads())
for fused in [False, True, False, True]:
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(iters):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    times.sort()
    name = "sdpa" if fused else "math"
    print(f"timm {name}: median {times[len(times) // 2]:.3f} s, min {times[0]:.3f} s (batch {batch}, {iters} runs)")
