#!/usr/bin/env python3
"""PyTorch's own CPU mixed precision on a parity-fixture ViT, the reference for
tests/models/autocast.rs: timm VisionTransformer (tools/fixtures/make_parity_fixtures.py's
`timm_vit`, official keys) with the weights of the fixture TAG (`vit_state_dict`), run on
DIR/TAG_io.safetensors' `imgs` under `torch.no_grad()` in float32 and under
`torch.autocast('cpu', dtype=torch.bfloat16)`; logits written as float32 to OUT.

usage: amp_reference.py DIR NAME TAG IMG NUM_CLASSES GLOBAL_POOL(0|1) OUT
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "fixtures")]  # reference/, fixtures/


def main():
    import torch
    from safetensors.torch import load_file, save_file

    from make_parity_fixtures import timm_vit, vit_state_dict

    d, name, tag, img, num_classes, gp, out = sys.argv[1:8]
    torch.set_num_threads(os.cpu_count() or 1)
    model = timm_vit(name, int(img), gp == "1", int(num_classes))
    model.load_state_dict(vit_state_dict(d, tag), strict=True)
    x = load_file(os.path.join(d, tag + "_io.safetensors"))["imgs"]
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x)
    assert bf16.dtype == torch.bfloat16, bf16.dtype
    save_file({"fp32": fp32.contiguous(), "bf16": bf16.float().contiguous()}, out)


if __name__ == "__main__":
    main()
