#!/usr/bin/env python3
"""The reference for the robustness protocols of `mae eval` (tests/cli/eval_robustness.rs), from
pip-installed parts: torchvision's ImageFolder, the official eval transform, timm's
VisionTransformer under the official key names (= models_vit.py), and the class lists of timm's
package data read through timm (`pkgutil.get_data('timm.data', '_info/...')`).

subset: `mae eval --class_subset NAME` -- each class folder's target is the position of its wnid
  in the subset's list; imagenet-a / imagenet-r take the 1000-way logits at the subset's indices
  (timm's validate.py: `output = output[:, valid_labels]`) before the loss and
  timm.utils.accuracy; engine_finetune.evaluate's averages (loss: mean of the batch means).
  Prints the official `* Acc@1 ... Acc@5 ... loss ...` line.
imagenet_c: `mae eval --imagenet_c DIR` -- the top-1 count of every <corruption>/<severity> set
  (ImageFolder targets mapped by wnid to the 1000 indices), then the table. Prints JSON.
mce: the table of a JSON file {"sets": {"<corruption>/<severity>": {"images", "correct"}}} --
  google-research/augmix imagenet.py's compute_mce (errors over the 15 corruptions, each mean over
  the severities divided by AlexNet's) and the unnormalised mean. Prints JSON.

usage: robustness_reference.py subset --resume CKPT --data_path DIR --class_subset NAME
           [--model vit_tiny_patch4] [--input_size 32] [--batch_size 4]
       robustness_reference.py imagenet_c --resume CKPT --imagenet_c DIR [--model ...] [--input_size 32]
       robustness_reference.py mce TABLE.json
"""
import argparse
import json
import os
import pkgutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "fixtures")]

CORRUPTIONS = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
]
# Raw AlexNet errors taken from https://github.com/hendrycks/robustness (augmix imagenet.py)
ALEXNET_ERR = [
    0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360,
    0.866816, 0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840,
    0.606500,
]
SUBSETS = {"imagenet-1k": "imagenet", "imagenet-a": "imagenet_a", "imagenet-r": "imagenet_r"}


def timm_info(name):
    return pkgutil.get_data("timm.data", f"_info/{name}").decode().split()


def model_of(args):
    import torch
    from make_parity_fixtures import timm_vit

    model = timm_vit(args.model, args.input_size, True, 1000)
    model.load_state_dict(torch.load(args.resume, map_location="cpu")["model"], strict=True)
    return model.eval()


def folder(root, subset, input_size):
    """ImageFolder whose targets are the positions of the class folders' wnids in the subset."""
    from official import build_eval_transform
    from torchvision import datasets

    wnids = timm_info(f"{SUBSETS[subset]}_synsets.txt")
    ds = datasets.ImageFolder(root, transform=build_eval_transform(input_size))
    ds.target_transform = lambda t: wnids.index(ds.classes[t])
    return ds


def evaluate(model, ds, batch_size, valid_labels):
    import torch
    from timm.utils import accuracy

    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    criterion = torch.nn.CrossEntropyLoss()
    loss_sum, acc1_sum, acc5_sum, n, batches = 0.0, 0.0, 0.0, 0, 0
    with torch.no_grad():
        for images, target in loader:
            output = model(images)
            if valid_labels is not None:
                output = output[:, valid_labels]
            loss = criterion(output, target)
            acc1, acc5 = accuracy(output, target, topk=(1, 5))
            loss_sum += loss.item()
            acc1_sum += acc1.item() * images.shape[0]
            acc5_sum += acc5.item() * images.shape[0]
            n += images.shape[0]
            batches += 1
    return acc1_sum / n, acc5_sum / n, loss_sum / batches, n


def subset_main(args):
    model = model_of(args)
    valid_labels = None
    if args.class_subset != "imagenet-1k":
        valid_labels = [int(i) for i in timm_info(f"{SUBSETS[args.class_subset]}_indices.txt")]
    ds = folder(os.path.join(args.data_path, "val"), args.class_subset, args.input_size)
    acc1, acc5, loss, _ = evaluate(model, ds, args.batch_size, valid_labels)
    print("* Acc@1 {:.3f} Acc@5 {:.3f} loss {:.3f}".format(acc1, acc5, loss))


def table(sets):
    """augmix compute_mce over the sets' errors; the unnormalised mean over the same 15."""
    import numpy as np

    errs = {c: [1 - sets[f"{c}/{s}"]["correct"] / sets[f"{c}/{s}"]["images"] for s in range(1, 6)]
            for c in CORRUPTIONS}
    mce = 0.0
    for i, c in enumerate(CORRUPTIONS):
        mce += 100 * np.mean(errs[c]) / ALEXNET_ERR[i] / 15
    mean = 100 * np.mean([np.mean(errs[c]) for c in CORRUPTIONS])
    return {"mce": float(mce), "mean_error": float(mean),
            "top1_error": {c: [100 * e for e in errs[c]] for c in CORRUPTIONS}}


def imagenet_c_main(args):
    model = model_of(args)
    sets = {}
    for c in sorted(os.listdir(args.imagenet_c)):
        for s in range(1, 6):
            ds = folder(os.path.join(args.imagenet_c, c, str(s)), "imagenet-1k", args.input_size)
            acc1, _, _, n = evaluate(model, ds, args.batch_size, None)
            sets[f"{c}/{s}"] = {"images": n, "correct": round(acc1 * n / 100)}
    print(json.dumps({"sets": sets, **table(sets)}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["subset", "imagenet_c", "mce"])
    p.add_argument("table", nargs="?")
    p.add_argument("--resume")
    p.add_argument("--data_path")
    p.add_argument("--imagenet_c")
    p.add_argument("--class_subset", choices=list(SUBSETS))
    p.add_argument("--model", default="vit_tiny_patch4")
    p.add_argument("--input_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=4)
    args = p.parse_args()
    if args.mode == "mce":
        print(json.dumps(table(json.load(open(args.table))["sets"])))
    elif args.mode == "subset":
        subset_main(args)
    else:
        imagenet_c_main(args)


if __name__ == "__main__":
    main()
