#!/usr/bin/env python3
"""The reference for `mae visualize`: demo/mae_visualize.ipynb's `run_one_image` on HuggingFace
`ViTMAEForPreTraining` with the official checkpoint mapped in (tools/fixtures/make_parity_fixtures.py).

Per image, as the demo: `Image.open(p)` (`.convert('RGB')` added for non-RGB files),
`img.resize((S, S))` (Pillow's default, bicubic), `np.array(img) / 255.`, minus mean, over std
(float64), the model on `x.float()`. `torch.manual_seed(SEED)` once, then per image the noise the
official forward draws, `torch.rand(1, L)`, passed to HF's `noise=`. The panels are the demo's
`torch.clip((image * imagenet_std + imagenet_mean) * 255, 0, 255).int()`.

usage: visualize_reference.py CKPT MODEL SEED MASK_RATIO OUT.safetensors IMAGE...
writes imgs [N,3,S,S], mask [N,L], pred [N,L,p*p*3], reconstruction [N,3,S,S] (float32) and
panels [N,4,S,S,3] (uint8: original, masked, reconstruction, reconstruction + visible)
"""
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "fixtures")]  # reference/, fixtures/
from make_parity_fixtures import MAE, hf_mae, official_to_hf  # noqa: E402

imagenet_mean = np.array([0.485, 0.456, 0.406])
imagenet_std = np.array([0.229, 0.224, 0.225])


def unpatchify(x, p):
    """models_mae.MaskedAutoencoderViT.unpatchify: (N, L, p**2 *3) -> (N, 3, H, W)."""
    h = w = int(x.shape[1] ** 0.5)
    x = x.reshape(shape=(x.shape[0], h, w, p, p, 3))
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(shape=(x.shape[0], 3, h * p, h * p))


def show_image(image):
    return torch.clip((image * imagenet_std + imagenet_mean) * 255, 0, 255).int()


def main():
    ckpt, name, seed, mask_ratio, out, images = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
        float(sys.argv[4]), sys.argv[5], sys.argv[6:]
    size, p, _, depth, _, _, dec_depth, _ = MAE[name]
    torch.set_num_threads(os.cpu_count() or 1)
    model = hf_mae(name, mask_ratio, False)
    sd = torch.load(ckpt, map_location="cpu")["model"]
    model.load_state_dict(official_to_hf(sd, depth, dec_depth), strict=True)

    res = {k: [] for k in ["imgs", "mask", "pred", "reconstruction", "panels"]}
    torch.manual_seed(seed)
    for path in images:
        img = Image.open(path).convert("RGB").resize((size, size))
        img = np.array(img) / 255.
        img = (img - imagenet_mean) / imagenet_std

        x = torch.tensor(img).unsqueeze(dim=0)
        x = torch.einsum("nhwc->nchw", x)
        noise = torch.rand(1, (size // p) ** 2)  # as models_mae.random_masking draws it
        with torch.no_grad():
            o = model(pixel_values=x.float(), noise=noise)
        y = unpatchify(o.logits, p)
        res["imgs"].append(x.float())
        res["mask"].append(o.mask)
        res["pred"].append(o.logits)
        res["reconstruction"].append(y)

        # the demo's run_one_image from here on
        y = torch.einsum("nchw->nhwc", y).detach().cpu()
        mask = o.mask.detach().unsqueeze(-1).repeat(1, 1, p ** 2 * 3)
        mask = torch.einsum("nchw->nhwc", unpatchify(mask, p)).detach().cpu()
        x = torch.einsum("nchw->nhwc", x)
        im_masked = x * (1 - mask)
        im_paste = x * (1 - mask) + y * mask
        res["panels"].append(torch.stack([show_image(t[0]) for t in (x, im_masked, y, im_paste)])[None].to(torch.uint8))
    save_file({k: torch.cat(v).contiguous() for k, v in res.items()}, out)


if __name__ == "__main__":
    main()
