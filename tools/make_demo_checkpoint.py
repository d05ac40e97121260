"""Write the demo checkpoint that README's first command inspects.

A vit_base_patch16 classifier (global pool, 1000 classes) with random weights, saved exactly as
the official main_finetune.py / util/misc.py save_model does: {'model', 'epoch', 'args'} with the
official state_dict keys (timm's VisionTransformer names are the official ones).

usage: make_demo_checkpoint.py OUT.pth
"""
import argparse
import os
import sys
from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
        qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        global_pool="avg", fc_norm=True, num_classes=1000,
    )
    args = argparse.Namespace(model="vit_base_patch16", batch_size=64, epochs=100, blr=5e-4,
                              layer_decay=0.65, drop_path=0.1, global_pool=True, nb_classes=1000)
    tmp = out + ".tmp"
    torch.save({"model": model.state_dict(), "epoch": 99, "args": args}, tmp)
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
