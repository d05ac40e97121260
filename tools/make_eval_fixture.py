#!/usr/bin/env python3
"""Fixture for `mae eval`: a small ImageFolder of real photos and a classifier that tells them apart.

OUT/val/<class>/...: four classes (astronaut, cat, coffee, rocket) made from tests/data/images by
crops, flips and re-encodings: the original files (PNG, baseline and progressive JPEG), JPEGs of
crops at several qualities, flipped PNGs, crops smaller than the 256 resize (up-sampled), a
portrait crop, a grayscale JPEG and an RGBA PNG. With --copies K the set is written K times
(K-1 re-cropped), for throughput runs.

OUT/vit_base_patch16_eval.pth: `torch.save({'model': state_dict})` of timm's
VisionTransformer(global_pool='avg', fc_norm=True) = the official models_vit.vit_base_patch16
(official key names), 1000 classes, random weights except the head: 1000 random rows, rows 0-3 pulled a little toward
their class's mean feature (computed through the official eval transform), so that Acc@1 (79%)
and Acc@5 (87%) differ and are neither 0 nor 100, with a loss of a few units.

usage: make_eval_fixture.py OUT_DIR [--copies K] [--folder_only]
(skips the work when OUT_DIR/stamp matches; --folder_only writes no checkpoint)
"""
import argparse
import hashlib
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = os.path.join(HERE, "..", "tests", "data", "images")
CLASSES = {  # class: source photos
    "astronaut": ["astronaut.png"],
    "cat": ["chelsea.png", "chelsea_q90.jpg"],
    "coffee": ["coffee.png", "coffee_q75_progressive.jpg"],
    "rocket": ["rocket.jpg"],
}
NB_CLASSES = 1000


def write_folder(val, copies):
    from PIL import Image, ImageOps

    for cls, sources in CLASSES.items():
        d = os.path.join(val, cls)
        os.makedirs(d, exist_ok=True)
        for copy in range(copies):
            for s in sources:
                src = os.path.join(IMAGES, s)
                stem = f"{os.path.splitext(s)[0]}_{copy}"
                if copy == 0:
                    shutil.copy(src, os.path.join(d, f"{stem}_orig{os.path.splitext(s)[1]}"))
                img = Image.open(src).convert("RGB")
                w, h = img.size
                o = copy * 7  # later copies crop a little differently
                img.crop((w // 8 + o, h // 10, w - w // 10, h - h // 8 + o)).save(
                    os.path.join(d, f"{stem}_crop.jpg"), quality=90)
                ImageOps.mirror(img).save(os.path.join(d, f"{stem}_flip.png"))
                img.crop((w // 4, o, w // 4 + min(w // 2, h // 2), h - o)).save(
                    os.path.join(d, f"{stem}_portrait.jpg"), quality=80)
                img.crop((w // 3, h // 3, w // 3 + 150 + o, h // 3 + 120)).save(
                    os.path.join(d, f"{stem}_small.png"))
            if copy == 0:
                img = Image.open(os.path.join(IMAGES, sources[0]))
                img.convert("L").save(os.path.join(d, "gray.jpg"), quality=85)
                rgba = img.convert("RGBA")
                rgba.putalpha(Image.linear_gradient("L").resize(img.size))
                rgba.save(os.path.join(d, "alpha.png"))


def official_eval_transform(input_size=224):
    """util/datasets.build_transform(is_train=False, args)."""
    import PIL
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision import transforms

    crop_pct = 224 / 256 if input_size <= 224 else 1.0
    size = int(input_size / crop_pct)
    return transforms.Compose([
        transforms.Resize(size, interpolation=PIL.Image.BICUBIC),
        transforms.CenterCrop(input_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


def write_checkpoint(val, path):
    import torch
    from torchvision import datasets

    sys.path.insert(0, HERE)
    from make_parity_fixtures import randomize, timm_vit

    torch.manual_seed(0)
    model = timm_vit("vit_base_patch16", 224, True, NB_CLASSES)
    sd = randomize(model.state_dict(), torch.Generator().manual_seed(1))
    model.load_state_dict(sd, strict=True)
    ds = datasets.ImageFolder(val, transform=official_eval_transform())
    with torch.no_grad():
        feats = torch.stack([model.forward_head(model.forward_features(ds[i][0][None]), pre_logits=True)[0]
                             for i in range(len(ds))])
    targets = torch.tensor(ds.targets)
    mu = feats.mean(0)
    means = torch.stack([feats[targets == c].mean(0) for c in range(len(ds.classes))]) - mu
    norm = means.norm(dim=1).mean()
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(NB_CLASSES, feats.shape[1], generator=gen)
    w = w / w.norm(dim=1, keepdim=True) * norm  # confusers
    # a weak pull of each class row toward its class mean: Acc@1 79%, Acc@5 87%, loss 2.8
    w[: len(ds.classes)] += 0.2 * means / means.norm(dim=1, keepdim=True) * norm
    logits = (feats - mu) @ w.T
    scale = 2.0 / logits.std()
    sd["head.weight"] = (w * scale).contiguous()
    sd["head.bias"] = (-(mu @ w.T) * scale).contiguous()
    torch.save({"model": sd}, path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--copies", type=int, default=1)
    p.add_argument("--folder_only", action="store_true")
    args = p.parse_args()
    h = hashlib.sha256(open(__file__, "rb").read()).hexdigest() + f" {args.copies} {args.folder_only}"
    stamp = os.path.join(args.out, "stamp")
    if os.path.exists(stamp) and open(stamp).read().strip() == h:
        return
    shutil.rmtree(args.out, ignore_errors=True)
    val = os.path.join(args.out, "val")
    write_folder(val, args.copies)
    if not args.folder_only:
        write_checkpoint(val, os.path.join(args.out, "vit_base_patch16_eval.pth"))
    with open(stamp, "w") as f:
        f.write(h + "\n")
    print(f"[fixtures] wrote {args.out}")


if __name__ == "__main__":
    main()
