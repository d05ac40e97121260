"""Seed corpora of the fuzz targets (fuzz/fuzz_targets/*.rs), written into fuzz/corpus/TARGET/:
real files, small enough to mutate fast.

  pickle       the data.pkl of each checkpoint below, and pickles of every protocol (0-5)
  pth          torch.save of tiny models: fp32/fp16/bf16, views and shared storages, a training
               checkpoint (model, optimizer, epoch, args), timm's containers, DDP prefixes, the
               legacy (non-zip) format
  safetensors  safetensors.torch.save_file of the same tensors, every dtype, with metadata
  idx          the first Fashion-MNIST images and labels (IDX, unsigned bytes)
  image        the repo's photos cut to 64x48 as JPEG with each chroma subsampling Pillow
               writes (4:4:4, 4:2:2, 4:2:0, grey), progressive, CMYK, and PNG (RGB, RGBA, L,
               P, 16-bit); plus chelsea_q90.jpg as it is

    .venv/bin/python tools/make_fuzz_corpus.py
"""
import gzip
import io
import os
import pickle
import sys
import zipfile
from collections import OrderedDict

import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def target(name):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    return d


def tiny_state_dicts():
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    sd = lin.state_dict()
    base = torch.randn(4, 6)
    views = OrderedDict([("w", base), ("w_t", base.t()), ("w_slice", base[1:3, 2:]),
                         ("w_col", base[:, 1])])
    dtypes = OrderedDict([("f16", torch.randn(3, 2).half()), ("bf16", torch.randn(5).bfloat16()),
                          ("f64", torch.randn(2).double()), ("i64", torch.arange(4)),
                          ("i32", torch.arange(3, dtype=torch.int32)),
                          ("i16", torch.arange(2, dtype=torch.int16)),
                          ("i8", torch.tensor([-1, 2], dtype=torch.int8)),
                          ("u8", torch.tensor([1, 255], dtype=torch.uint8)),
                          ("b", torch.tensor([True, False])), ("scalar", torch.tensor(2.5)),
                          ("empty", torch.zeros(0, 2))])
    return {"linear": sd, "views": views, "dtypes": dtypes}


def pth_files():
    sds = tiny_state_dicts()
    sd = sds["linear"]
    opt = torch.optim.AdamW([torch.nn.Parameter(t.clone()) for t in sd.values()], lr=0.1)
    opt.zero_grad()
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    objs = {
        "model_linear": {"model": sd},
        "model_views": {"model": sds["views"]},
        "model_dtypes": {"model": sds["dtypes"]},
        "train": {"model": sd, "optimizer": opt.state_dict(), "epoch": 3,
                  "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                             "growth_interval": 2000, "_growth_tracker": 0},
                  "args": {"lr": 0.001, "model": "mae_vit_tiny_patch4", "norm_pix_loss": False}},
        "state_dict": {"state_dict": sd, "epoch": 1},
        "ema": {"state_dict_ema": sd, "state_dict": sd},
        "bare": sd,
        "ddp": OrderedDict(("module." + k, v) for k, v in sd.items()),
        "nested": {"a": [1, 2.5, "x", None, True, (1, 2)], "b": {"c": sds["views"]}},
    }
    out = {}
    for name, obj in objs.items():
        buf = io.BytesIO()
        torch.save(obj, buf)
        out[name] = buf.getvalue()
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=False)
        out[name + "_legacy"] = buf.getvalue()
    return out


def main():
    pths = pth_files()
    d = target("pth")
    for name, data in pths.items():
        open(os.path.join(d, name + ".pth"), "wb").write(data)

    d = target("pickle")
    for name, data in pths.items():
        if data[:2] == b"PK":
            z = zipfile.ZipFile(io.BytesIO(data))
            pkl = [n for n in z.namelist() if n.endswith("data.pkl")][0]
            open(os.path.join(d, name + ".pkl"), "wb").write(z.read(pkl))
    value = {"a": [1, -2, 2**40, 1.5, "s", b"by", None, True, (1, (2,))], "b": {1: 2},
             "c": OrderedDict(x=1), "d": set([1]), "e": frozenset([2]), "f": bytearray(b"z")}
    for proto in range(0, 6):
        open(os.path.join(d, f"proto{proto}.pkl"), "wb").write(pickle.dumps(value, protocol=proto))

    d = target("safetensors")
    for name, sd in tiny_state_dicts().items():
        sd = {k: v.contiguous().clone() for k, v in sd.items()}
        save_file(sd, os.path.join(d, name + ".safetensors"), metadata={"format": "pt"})

    d = target("idx")
    fm = "/usr/share/datasets/fashion-mnist"
    for split in ("train", "t10k"):
        for kind, n_header in (("images-idx3", 16), ("labels-idx1", 8)):
            raw = gzip.open(f"{fm}/{split}-{kind}-ubyte.gz").read()
            n = 3
            header = bytearray(raw[:n_header])
            header[4:8] = n.to_bytes(4, "big")
            per = 28 * 28 if kind.startswith("images") else 1
            data = bytes(header) + raw[n_header:n_header + n * per]
            open(os.path.join(d, f"{split}-{kind}"), "wb").write(data)

    d = target("image")
    photos = os.path.join(ROOT, "tests", "data", "images")
    open(os.path.join(d, "chelsea_q90.jpg"), "wb").write(
        open(os.path.join(photos, "chelsea_q90.jpg"), "rb").read())
    for photo in ("chelsea.png", "coffee.png", "rocket.jpg"):
        img = Image.open(os.path.join(photos, photo)).convert("RGB")
        img = img.resize((64, 48), Image.BICUBIC)
        stem = photo.split(".")[0]
        for sub, label in ((0, "444"), (1, "422"), (2, "420")):
            img.save(os.path.join(d, f"{stem}_{label}.jpg"), quality=85, subsampling=sub)
        img.save(os.path.join(d, f"{stem}_progressive.jpg"), quality=75, progressive=True)
        img.convert("L").save(os.path.join(d, f"{stem}_grey.jpg"), quality=85)
        img.convert("CMYK").save(os.path.join(d, f"{stem}_cmyk.jpg"), quality=85)
        img.save(os.path.join(d, f"{stem}.png"))
        img.convert("RGBA").save(os.path.join(d, f"{stem}_rgba.png"))
        img.convert("L").save(os.path.join(d, f"{stem}_l.png"))
        img.convert("P").save(os.path.join(d, f"{stem}_p.png"))
        img.convert("I;16").save(os.path.join(d, f"{stem}_16.png"))
    # 4:4:0 (vertical chroma subsampling) is not a Pillow option: libjpeg-turbo's cjpeg is not
    # here either, so it comes from turbojpeg in the data_pipeline tests, not this corpus
    for t in sorted(os.listdir(OUT)):
        files = os.listdir(os.path.join(OUT, t))
        size = sum(os.path.getsize(os.path.join(OUT, t, f)) for f in files)
        print(f"{t}: {len(files)} files, {size} bytes")


if __name__ == "__main__":
    sys.exit(main())
